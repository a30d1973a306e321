"""pix2pix (Isola et al. 2017) on paired, aligned data: teacher training and the student objective.

The reference's ``--model pix2pix`` (junyanz/pytorch-CycleGAN-and-pix2pix): a U-Net generator G
(batch norm, dropout) and a PatchGAN D that scores the input and an output side by side in
channels (``cat(real_A, ·)``: 6 channels for RGB). One step (``optimize_parameters``):

1. ``fake_B = G(real_A)``;
2. discriminator: ``0.5 * (GAN(D(real_A|fake_B), fake) + GAN(D(real_A|real_B), real))``;
3. generator, D frozen: ``GAN(D(real_A|fake_B), real) + lambda_l1 * |fake_B - real_B|``
   ``+ lambda_distill * |fake_B - T(real_A)|`` (fine-tuning a compressed student only, T the teacher).

``pix2pix.gan_mode: vanilla`` (the reference's pix2pix default) is BCE on logits, ``lsgan`` the
least-squares loss of the CycleGAN loop. There is no image pool (the reference sets pool_size 0).

Randomness: weights from ``derive_seed(seed, STREAM_INIT)``; data order and augmentation from
``(seed, epoch)``; dropout from a seeded generator (:class:`~coevo.models.dropout.SeededDropout` replaces the
generator's ``nn.Dropout`` modules while it trains and draws from it in the training steps,
:meth:`coevo.train.loop.TrainerBase._seed_dropout`; they hold no weights, so the files are the reference's)
whose state is checkpointed. A run interrupted after epoch k and resumed ends bit-identical to an
uninterrupted one. One process (torchrun is refused for pix2pix so far).

``train_pix2pix(cfg, run_dir)`` (``coevo train`` on aligned data) writes::

    config.yaml, data.json, inputs.json   the resolved config and what the run read
    checkpoint.pt        everything needed for an exact --resume
    log.jsonl            loss records (per ``train.log_every`` steps, per epoch with val PSNR/L1)
    samples/epoch_XXX.png  input | output | target on fixed training pairs
    G.pt D.pt            coevo checkpoints (architecture included)
    latest_net_G.pth latest_net_D.pth   bare state_dicts, the reference's names
    summary.json         epochs, steps, time, final losses, val and test PSNR, sizes

:func:`coevo.models.pix2pix.find_pix2pix_teacher` accepts the folder as a teacher.
"""
from __future__ import annotations

import copy
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from ..config import Config
from ..core import distributed
from ..core.files import atomic_write_text
from ..core.rng import derive_seed, torch_rng
from ..core.runlock import releasing
from ..core.runs import undo_failed_start
from ..data import make_loader
from ..errors import CheckpointError, ConfigError
from ..models.discriminator import DiscriminatorArch, NLayerDiscriminator
from ..models.dropout import SeededDropout, plain_dropout, seed_dropout  # noqa: F401  (re-exported)
from ..models.generator import fixed_rng
from ..models.io import save_discriminator, save_generator, save_reference_state_dict
from ..models.unet import MIN_DOWNS, UnetArch, UnetGenerator
from . import losses
from .common import open_run_dir
from .init import init_weights
from .loop import STREAM_DROPOUT, STREAM_INIT, LoopResult, LoopSettings, TrainerBase, TrainingError, linear_decay

log = logging.getLogger(__name__)

RECIPE = "pix2pix"
# STREAM_DROPOUT (coevo.train.loop, 11): the student's / teacher's dropout masks while training
STREAM_TEACHER_DROPOUT = 12  # the teacher's, when it runs in train mode as a distillation target
MAX_DOWNS = 8                # the reference's unet_256
# Config parts that determine a pix2pix teacher's weights: resuming with other values is refused.
PIX2PIX_SECTIONS = ("seed", "data", "model", "train", "pix2pix")


# ----------------------------------------------------------------------------- networks
def resolve_num_downs(num_downs: int, crop_size: int) -> int:
    """``pix2pix.num_downs``, or for 0 the most down-samplings ``crop_size`` allows (at most 8: unet_256 at
    256 px, 7 at 128, 6 at 64). ConfigError when the size is no multiple of ``2 ** num_downs``."""
    if num_downs:
        if crop_size % 2 ** num_downs:
            raise ConfigError(f"data.crop_size={crop_size} is not a multiple of 2**{num_downs} = {2 ** num_downs}, "
                              f"which a U-Net with pix2pix.num_downs={num_downs} needs (every level halves the "
                              "image and the skips must line up); change one of them")
        return int(num_downs)
    n = 0
    while n < MAX_DOWNS and crop_size % 2 ** (n + 1) == 0:
        n += 1
    if n < MIN_DOWNS:
        raise ConfigError(f"data.crop_size={crop_size} allows only {n} down-samplings; a U-Net needs at least "
                          f"{MIN_DOWNS}: use a multiple of {2 ** MIN_DOWNS} (e.g. 64 or 256)")
    return n


@dataclass
class Pix2PixNets:
    """The two trained networks: G maps the input to the output, D scores ``cat(input, output)``."""

    G: nn.Module
    D: NLayerDiscriminator

    def as_dict(self) -> Dict[str, nn.Module]:
        return {"G": self.G, "D": self.D}


def build_pix2pix(cfg: Config, seed: int) -> Pix2PixNets:
    """A fresh pix2pix pair for ``cfg`` (N(0, train.init_gain) weights, the same for the same seed)."""
    p = cfg.pix2pix
    arch = UnetArch(num_downs=resolve_num_downs(p.num_downs, cfg.data.crop_size), ngf=cfg.model.ngf,
                    norm=p.norm, dropout=p.dropout)
    g = torch_rng(derive_seed(seed, STREAM_INIT))
    return Pix2PixNets(
        G=init_weights(UnetGenerator(arch), g, cfg.train.init_gain),
        D=init_weights(conditional_discriminator(cfg, arch), g, cfg.train.init_gain))


def conditional_discriminator(cfg: Config, arch) -> NLayerDiscriminator:
    """A PatchGAN (``model.ndf``, ``model.n_layers_d``, ``pix2pix.norm``) on input|output channels."""
    return NLayerDiscriminator(DiscriminatorArch(ndf=cfg.model.ndf, n_layers=cfg.model.n_layers_d,
                                                 in_channels=arch.in_channels + arch.out_channels,
                                                 norm=cfg.pix2pix.norm))


def scoring_copy(model: nn.Module, mode: str) -> nn.Module:
    """A copy of ``model`` as its outputs are scored in ``mode`` (``model.reference_mode``); ``model`` is left as
    it is. In train mode its BatchNorms use the batch's statistics without updating the running ones, and its
    dropout (a :class:`~coevo.models.dropout.SeededDropout` included) draws from torch's global stream:
    run it inside :func:`coevo.models.generator.fixed_rng`, as ``coevo evaluate`` and ``coevo translate`` do,
    so every network scored this way (teacher, student, a file read back) sees the same masks."""
    from ..models.generator import set_reference_mode

    return set_reference_mode(plain_dropout(copy.deepcopy(model)), mode)


# ----------------------------------------------------------------------------- losses
def gan_loss(scores: torch.Tensor, target_is_real: bool, mode: str) -> torch.Tensor:
    """``vanilla``: BCE on logits (the reference pix2pix); ``lsgan``: MSE to 1/0 (the CycleGAN loop's)."""
    if mode == "lsgan":
        return losses.gan_loss(scores, target_is_real)
    target = torch.ones_like(scores) if target_is_real else torch.zeros_like(scores)
    return F.binary_cross_entropy_with_logits(scores, target)


@dataclass
class Pix2PixObjective:
    """The weights of the pix2pix objective (``pix2pix`` config section)."""

    gan_mode: str = "vanilla"
    lambda_l1: float = 100.0
    lambda_distill: float = 0.0   # > 0 only when a teacher is given (compressed students)
    reference_mode: str = "eval"  # how the teacher runs as a distillation target, and how outputs are scored

    @classmethod
    def from_config(cls, cfg: Config, distill: bool = False) -> "Pix2PixObjective":
        p = cfg.pix2pix
        return cls(gan_mode=p.gan_mode, lambda_l1=p.lambda_l1,
                   lambda_distill=cfg.finetune.lambda_distill if distill else 0.0,
                   reference_mode=cfg.model.reference_mode)


def psnr_of(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """PSNR in dB per image of two NCHW batches in [-1, 1], quantised to 8 bits (:func:`coevo.evaluation.metrics.psnr`)."""
    from ..evaluation.metrics import psnr

    return psnr(output.float(), target.float())


class PairedValidation:
    """An epoch hook: mean PSNR and L1 of G's outputs to the paired targets of a held-out set (the outputs
    scored in ``reference_mode``); keeps the best epoch's generator weights (``best_state``)."""

    def __init__(self, images: Mapping[str, torch.Tensor], reference_mode: str = "eval", keep_best: bool = True) -> None:
        self.images, self.mode, self.keep_best = images, reference_mode, keep_best
        self.best_psnr = -math.inf
        self.best_epoch = 0
        self.best_state: Optional[Dict[str, torch.Tensor]] = None

    @torch.no_grad()
    def __call__(self, epoch: int, nets: Pix2PixNets) -> Dict[str, float]:
        device = next(nets.G.parameters()).device
        psnrs, l1s = [], []
        g = scoring_copy(nets.G, self.mode)
        with fixed_rng():  # dropout in train mode: the scoring stream, not the training one
            for a, b in zip(self.images["A"], self.images["B"]):  # one at a time: batch statistics in train mode
                y = g(a[None].to(device))
                psnrs.append(float(psnr_of(y, b[None].to(device))))
                l1s.append(float((y - b[None].to(device)).abs().mean()))
        record = {"val_psnr": sum(psnrs) / len(psnrs), "val_l1": sum(l1s) / len(l1s)}
        if self.keep_best and record["val_psnr"] > self.best_psnr:
            self.best_psnr, self.best_epoch = record["val_psnr"], epoch
            self.best_state = {k: v.detach().cpu().clone() for k, v in nets.G.state_dict().items()}
        return record

    def state_dict(self) -> Dict[str, Any]:
        return {"best_psnr": self.best_psnr, "best_epoch": self.best_epoch, "best_state": self.best_state or {}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best_psnr, self.best_epoch = float(state["best_psnr"]), int(state["best_epoch"])
        self.best_state = dict(state["best_state"]) or None


# ----------------------------------------------------------------------------- the trainer
Pix2PixResult = LoopResult  # epochs, global_step, seconds, last_epoch: the CycleGAN loop's result


class Pix2PixTrainer(TrainerBase):
    """Trains a :class:`Pix2PixNets` in ``run_dir`` (``checkpoint.pt``, ``log.jsonl``, ``samples/``) on
    :class:`coevo.train.loop.TrainerBase`'s scaffolding, as :class:`coevo.train.loop.CycleGANTrainer` does.
    ``teacher``: a frozen generator whose outputs the student is distilled towards
    (``objective.lambda_distill``), or None for teacher training."""

    RECIPE = RECIPE
    RECIPE_HINT = "resume it with the command that started it"

    def __init__(self, nets: Pix2PixNets, settings: LoopSettings, objective: Pix2PixObjective, run_dir: str | Path,
                 teacher: Optional[nn.Module] = None, hook: Optional[PairedValidation] = None) -> None:
        if distributed.world_size() > 1:
            raise ConfigError("pix2pix training runs in one process so far; start it without torchrun")
        if objective.gan_mode not in ("vanilla", "lsgan"):
            raise ConfigError(f"pix2pix.gan_mode must be vanilla or lsgan, got {objective.gan_mode!r}")
        self._start(nets, settings, run_dir, hook)
        self.obj = objective
        # both streams are checkpointed even without dropout (as pix2pix checkpoints always were)
        self.dropout_rng = self._seed_dropout("dropout", STREAM_DROPOUT, nets.G, always=True)
        self.teacher = teacher
        self.teacher_rng = self._seed_dropout("teacher_dropout", STREAM_TEACHER_DROPOUT,
                                              *([teacher] if teacher is not None else []), always=True)
        if teacher is not None:
            from ..models.generator import set_reference_mode

            teacher.to(self.device).requires_grad_(False)
            set_reference_mode(teacher, objective.reference_mode)  # a frozen copy: its statistics never update
        s = settings
        self.opt_G = torch.optim.Adam(nets.G.parameters(), lr=s.lr, betas=(s.beta1, 0.999))
        self.opt_D = torch.optim.Adam(nets.D.parameters(), lr=s.lr, betas=(s.beta1, 0.999))
        rule = linear_decay(s.epochs, s.epochs_decay)
        self.sched_G = torch.optim.lr_scheduler.LambdaLR(self.opt_G, rule)
        self.sched_D = torch.optim.lr_scheduler.LambdaLR(self.opt_D, rule)

    # ------------------------------------------------------------------ checkpoint
    def state_dict(self) -> Dict[str, Any]:
        """Only tensors, dicts, lists, numbers and strings: loadable with ``weights_only=True``."""
        return {
            **self._counters_state(),
            "hook": self.hook.state_dict() if self.hook is not None else {},
            **self._networks_state(),
            "rng": self._dropout_state(),  # {"dropout": ..., "teacher_dropout": ...}
        }

    def save_checkpoint(self) -> None:
        self._write_checkpoint(self.state_dict())

    def load_checkpoint(self, path: Path) -> None:
        ckpt = self._read_checkpoint(path)
        try:
            self._load_networks(ckpt)
            self._load_dropout_state(ckpt.get("rng"), path)
            self._restore_progress(ckpt)  # in here: a model-selection state that does not fit is a CheckpointError
        except (KeyError, RuntimeError, ValueError) as e:
            raise CheckpointError(f"{path} does not fit this run's networks or settings: {e}") from e

    # ------------------------------------------------------------------ one step
    def _check_finite(self, terms: Mapping[str, torch.Tensor], epoch: int, update: str) -> None:
        bad = [k for k, v in terms.items() if not torch.isfinite(v).all()]
        if not bad:
            return
        s = self.s
        values = ", ".join(f"'{k}' = {float(terms[k].detach()):g}" for k in bad)
        saved = (f"the last checkpoint {self.checkpoint_path} (after epoch {self.epoch}) is intact"
                 if self.checkpoint_path.exists() else "no checkpoint had been written yet")
        fix = ("An input image or the starting weights hold NaN/inf: check them with `coevo data check DIR`."
               if self.global_step == 0 else
               f"Training diverged after {self.global_step} updates: lower the learning rate (e.g. --set "
               f"{s.section}.lr={s.lr / 2:g}) and start again with --force.")
        raise TrainingError(f"{s.section}: loss {values} at epoch {epoch}, step {self.global_step + 1}. Stopped "
                            f"before the {update} update; {saved}. {fix}")

    def step(self, real_A: torch.Tensor, real_B: torch.Tensor, epoch: int) -> Dict[str, float]:
        """One pix2pix update on a pair batch (NCHW, [-1, 1]): D first, then G (the reference's order)."""
        n, o, mode = self.nets, self.obj, self.obj.gan_mode
        with self._drawing_dropout():
            fake_B = n.G(real_A)
        n.D.requires_grad_(True)
        d_terms = {"D_fake": gan_loss(n.D(torch.cat([real_A, fake_B.detach()], 1)), False, mode) * 0.5,
                   "D_real": gan_loss(n.D(torch.cat([real_A, real_B], 1)), True, mode) * 0.5}
        self._check_finite(d_terms, epoch, "discriminator")
        self.opt_D.zero_grad(set_to_none=True)
        sum(d_terms.values()).backward()
        self.opt_D.step()

        n.D.requires_grad_(False)
        g_terms = {"G_GAN": gan_loss(n.D(torch.cat([real_A, fake_B], 1)), True, mode),
                   "G_L1": losses.l1(fake_B, real_B) * o.lambda_l1}
        if self.teacher is not None and o.lambda_distill > 0:
            with torch.no_grad(), self._drawing_dropout():
                target = self.teacher(real_A)
            g_terms["distill"] = losses.l1(fake_B, target) * o.lambda_distill
        self._check_finite(g_terms, epoch, "generator")
        self.opt_G.zero_grad(set_to_none=True)
        sum(g_terms.values()).backward()
        self.opt_G.step()
        self.global_step += 1
        return {k: float(v.detach()) for k, v in {**d_terms, **g_terms}.items()}

    # ------------------------------------------------------------------ epochs
    @torch.no_grad()
    def save_samples(self, images: Mapping[str, torch.Tensor], path: Path) -> None:
        """Grid of input | output | target (outputs in ``reference_mode``, as :class:`PairedValidation` scores them).

        G runs as a :func:`scoring_copy`: in train mode its dropout draws from the scoring stream
        (:func:`coevo.models.generator.fixed_rng`), not the training's seeded dropout stream, and no
        BatchNorm statistics are learnt, so drawing samples never changes a run's result (as in
        :meth:`coevo.train.loop.CycleGANTrainer.save_samples`)."""
        from ..evaluation.viz import save_grid

        real_A, real_B = images["A"].to(self.device), images["B"].to(self.device)
        g = scoring_copy(self.nets.G, self.obj.reference_mode)
        with fixed_rng():
            fake_B = torch.cat([g(a[None]) for a in real_A])
        save_grid([("input", real_A.cpu()), ("output", fake_B.cpu()), ("target", real_B.cpu())], path,
                  max_rows=self.s.sample_images, title=f"{self.s.section} epoch {self.epoch}")

    def run_epoch(self, dataset: Dataset, epoch: int) -> Dict[str, float]:
        """Train one epoch (0-based ``epoch``); returns the mean of each loss term."""
        loader = make_loader(dataset, batch_size=self.s.batch_size, shuffle=True, num_workers=self.s.num_workers,
                             seed=self.s.seed, epoch=epoch)
        return self._run_steps(loader, epoch)

    def fit(self, dataset: Dataset, sample_images: Optional[Mapping[str, torch.Tensor]] = None) -> Pix2PixResult:
        """Train from ``self.epoch`` to the last epoch; checkpoints every ``checkpoint_every`` epochs and at the end."""
        s = self.s
        for epoch in range(self.epoch, s.total_epochs):
            start = time.perf_counter()
            means = self.run_epoch(dataset, epoch)
            lr = self.opt_G.param_groups[0]["lr"]
            self.sched_G.step()
            self.sched_D.step()
            self.epoch = epoch + 1
            last = self.epoch == s.total_epochs
            record: Dict[str, Any] = {"kind": "epoch", "epoch": self.epoch, "step": self.global_step, "lr": lr, **means}
            if self.hook is not None:
                record.update(self.hook(self.epoch, self.nets))
            self.seconds += time.perf_counter() - start
            record["seconds"] = round(self.seconds, 3)
            self._log(record)
            self.last_epoch = {k: v for k, v in record.items() if isinstance(v, (int, float))}
            log.info("%s epoch %d/%d: %s", s.section, self.epoch, s.total_epochs,
                     ", ".join(f"{k} {v:.4g}" for k, v in record.items()
                               if isinstance(v, float) and k not in ("lr", "seconds")))
            if sample_images is not None and s.sample_every and (self.epoch % s.sample_every == 0 or last):
                self.save_samples(sample_images, self.run_dir / "samples" / f"epoch_{self.epoch:03d}.png")
            if self.epoch % s.checkpoint_every == 0 or last:
                self.save_checkpoint()
        return Pix2PixResult(self.epoch, self.global_step, self.seconds, dict(self.last_epoch))


# ----------------------------------------------------------------------------- coevo train on aligned data
def save_pix2pix(nets: Pix2PixNets, out: Path) -> None:
    """``G.pt``, ``D.pt`` (coevo checkpoints) and ``latest_net_G.pth``, ``latest_net_D.pth`` (reference names)."""
    for name, net in nets.as_dict().items():
        net.eval()
        (save_generator if name == "G" else save_discriminator)(net, out / f"{name}.pt")
        save_reference_state_dict(net, out / f"latest_net_{name}.pth")


def _finish(nets: Pix2PixNets, out: Path, cfg: Config, result: Pix2PixResult, splits) -> None:
    from ..prune import count_macs, count_params

    save_pix2pix(nets, out)
    test = quality_on(nets.G, splits.test, cfg.model.reference_mode)
    summary = {
        "stage": "teacher", "kind": "pix2pix", "name": cfg.name,
        "epochs": result.epochs, "steps": result.global_step, "train_seconds": round(result.seconds, 2),
        "final_epoch": {k: v for k, v in result.last_epoch.items() if k not in ("epoch", "step")},
        "direction": cfg.data.direction, "image_size": cfg.data.crop_size,
        "reference_mode": cfg.model.reference_mode,
        "val": {"source": splits.val_source, "images": len(splits.val) if splits.val is not None else 0},
        "test": {"images": len(splits.test), **test},
        "mac_convention": "published (transposed conv counted per output pixel)",
        "networks": {"G": {"arch": nets.G.arch.to_dict(), "params": count_params(nets.G),
                           "macs": count_macs(nets.G.arch, cfg.data.crop_size, cfg.data.crop_size,
                                              convention="published")},
                     "D": {"arch": nets.D.arch.to_dict(), "params": count_params(nets.D)}},
        "files": {"G": "G.pt", "D": "D.pt"},
    }
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    log.info("pix2pix teacher done in %.0f s: %s (test PSNR %.2f dB)", result.seconds, out, test["psnr"])


@torch.no_grad()
def quality_on(g: nn.Module, dataset, reference_mode: str = "eval") -> Dict[str, float]:
    """Mean PSNR (dB) and L1 of ``g``'s outputs to the paired targets of ``dataset`` (one image per forward)."""
    device = next(g.parameters()).device
    psnrs, l1s = [], []
    g = scoring_copy(g, reference_mode)
    with fixed_rng():  # dropout in train mode: the masks coevo evaluate and coevo translate draw
        for i in range(len(dataset)):
            item = dataset[i]
            y = g(item["A"][None].to(device))
            b = item["B"][None].to(device)
            psnrs.append(float(psnr_of(y, b)))
            l1s.append(float((y - b).abs().mean()))
    return {"psnr": sum(psnrs) / len(psnrs), "l1": sum(l1s) / len(l1s)}


@releasing
def train_pix2pix(cfg: Config, out_dir: str | Path, resume: bool = False, force: bool = False) -> Path:
    """Train a pix2pix teacher on ``cfg.data`` (aligned layout) with ``cfg.pix2pix`` / ``cfg.train``; returns
    the run folder. ``resume`` continues an interrupted run bit-identically; ``force`` replaces a run."""
    from ..data.aligned import build_aligned_datasets, stack_pairs

    from ..config import resolve_reference_mode

    cfg = copy.deepcopy(cfg)
    resolve_reference_mode(cfg, "pix2pix")
    settings = LoopSettings.from_section(cfg.train, "train", cfg.seed, cfg.device, cfg.data.num_workers, cfg.log)
    if distributed.world_size() > 1:
        raise ConfigError("pix2pix training runs in one process so far; start it without torchrun")
    with undo_failed_start(out_dir, resume):
        out = open_run_dir(cfg, out_dir, resume, force, PIX2PIX_SECTIONS, command="train")
        splits = build_aligned_datasets(cfg.data, cfg.seed)
        nets = build_pix2pix(cfg, cfg.seed)
    samples = stack_pairs(splits.train.subset(range(len(splits.train)), augment=False), settings.sample_images)
    hook = PairedValidation(stack_pairs(splits.val), cfg.model.reference_mode, keep_best=False) \
        if splits.val is not None else None
    trainer = Pix2PixTrainer(nets, settings, Pix2PixObjective.from_config(cfg), out, hook=hook)
    if resume:
        trainer.resume()
    log.info("training pix2pix teacher: %d pairs (%s), %s, %d epoch%s, run folder %s", len(splits.train),
             cfg.data.direction, f"U-Net {nets.G.arch.num_downs} levels ngf {nets.G.arch.ngf}",
             settings.total_epochs, "" if settings.total_epochs == 1 else "s", out)
    result = trainer.fit(splits.train, samples)
    _finish(nets, out, cfg, result, splits)
    return out


# ----------------------------------------------------------------------------- compressed students
def finetune_pix2pix_student(cfg: Config, student: nn.Module, teacher: nn.Module, splits, out_dir: str | Path,
                             teacher_d: Optional[NLayerDiscriminator] = None, resume: bool = False) -> Dict[str, Any]:
    """Fine-tune a compressed pix2pix generator in ``out_dir`` (an existing, writable folder) by the pix2pix
    objective plus distillation: ``GAN(D(x|G(x))) + pix2pix.lambda_l1 * |G(x) - y| + finetune.lambda_distill
    * |G(x) - T(x)|`` with the loop settings of ``cfg.finetune`` (epochs, lr, ...).

    ``splits``: :class:`coevo.data.aligned.AlignedSplits`. ``teacher_d``: the teacher's conditional
    discriminator (trained on), else a fresh one (seeded). Model selection: the epoch with the best PSNR
    to the paired targets of ``splits.val`` (else the last). Returns ``{"G": the selected student,
    "D": the discriminator, "result": Pix2PixResult, "best_epoch", "val_psnr"}``; the caller saves them.
    """
    settings = LoopSettings.from_section(cfg.finetune, "finetune", cfg.seed, cfg.device, cfg.data.num_workers,
                                         cfg.log)
    arch = getattr(teacher, "arch", student.arch)
    if teacher_d is None:
        teacher_d = init_weights(conditional_discriminator(cfg, arch), torch_rng(derive_seed(cfg.seed, STREAM_INIT, 1)),
                                 cfg.train.init_gain)
        discriminator = "fresh"
    else:
        teacher_d = copy.deepcopy(teacher_d)
        discriminator = "teacher"
    teacher = copy.deepcopy(teacher)
    nets = Pix2PixNets(G=student, D=teacher_d)
    hook = PairedValidation(stack_val(splits), cfg.model.reference_mode) if splits.val is not None else None
    trainer = Pix2PixTrainer(nets, settings, Pix2PixObjective.from_config(cfg, distill=True), out_dir,
                             teacher=teacher, hook=hook)
    if resume:
        trainer.resume()
    result = trainer.fit(splits.train)
    if hook is not None and hook.best_state is not None:
        student.load_state_dict(hook.best_state)
    student.eval()
    return {"G": student, "D": nets.D.eval(), "result": result, "discriminator": discriminator,
            "best_epoch": hook.best_epoch if hook is not None else result.epochs,
            "val_psnr": hook.best_psnr if hook is not None else None}


def stack_val(splits) -> Dict[str, torch.Tensor]:
    from ..data.aligned import stack_pairs

    return stack_pairs(splits.val)


# Config parts that decide a fine-tuned pix2pix student: resuming with other values is refused.
FINETUNE_SECTIONS = ("seed", "data", "model", "finetune", "pix2pix")


@releasing
def finetune_pix2pix(search_dir: str | Path, out_dir: str | Path, cfg: Optional[Config] = None, resume: bool = False,
                     force: bool = False) -> Path:
    """Fine-tune the best genome of a pix2pix search run (:mod:`coevo.search.pix2pix`) into ``out_dir``.

    The student is cut from the teacher (:func:`coevo.prune.slim`: the teacher's surviving filters and
    batch-norm statistics) and trained by :func:`finetune_pix2pix_student` against the teacher's
    conditional discriminator (a fresh one when the teacher has none). ``cfg``: default, the search
    run's config. Writes config.yaml, checkpoint.pt, log.jsonl, genomes/G.json, G.pt, latest_net_G.pth,
    D.pt and finetune.json (widths, MACs against the teacher, val and test PSNR of student and teacher).
    """
    from ..models.pix2pix import Pix2PixPaths

    search_dir = Path(search_dir)
    if cfg is None:
        from ..config import load_config

        cfg = load_config(search_dir / "config.yaml")
    paths = Pix2PixPaths.from_dict(json.loads((search_dir / "teacher.json").read_text()))
    return finetune_pix2pix_genome(cfg, paths, search_dir / "genomes" / "best_G.json", out_dir, resume, force,
                                   source={"search": str(search_dir.resolve())})


def _for_teacher(genome, arch):
    """``genome`` on ``arch`` when the two differ only in dropout (no weights, so not in the channel layout:
    a genome from ``coevo prune`` of a reference file, which records no dropout); else as it is (slim checks)."""
    from ..prune import Genome

    drop = lambda a: {k: v for k, v in a.to_dict().items() if k != "dropout"}  # noqa: E731
    if type(genome.arch) is type(arch) and genome.arch != arch and isinstance(arch, UnetArch) \
            and drop(genome.arch) == drop(arch):
        return Genome(arch, {n: m.copy() for n, m in genome.masks.items()}, genome.tied, dict(genome.meta))
    return genome


@releasing
def finetune_pix2pix_genome(cfg: Config, paths, genome_file: str | Path, out_dir: str | Path, resume: bool = False,
                            force: bool = False, source: Optional[Dict[str, Any]] = None) -> Path:
    """:func:`finetune_pix2pix` for any genome of the teacher (``paths``: a
    :class:`~coevo.models.pix2pix.Pix2PixPaths` or a teacher folder), e.g. ``coevo prune --method l1|random``:
    every method is fine-tuned by the same recipe. ``source`` is recorded in finetune.json."""
    from ..data.aligned import build_aligned_datasets
    from ..models.pix2pix import Pix2PixPaths, find_pix2pix_teacher, load_pix2pix_discriminator, \
        load_pix2pix_generator
    from ..prune import Genome, slim
    from ..prune.macs import count_macs

    if not isinstance(paths, Pix2PixPaths):
        paths = find_pix2pix_teacher(paths)
    from ..config import resolve_reference_mode

    out_dir, genome_file = Path(out_dir), Path(genome_file)
    cfg = copy.deepcopy(cfg)
    resolve_reference_mode(cfg, "pix2pix")
    files = {"teacher G": paths.G, "genome": genome_file, **({"teacher D": paths.D} if paths.D else {})}
    with undo_failed_start(out_dir, resume):
        out = open_run_dir(cfg, out_dir, resume, force, FINETUNE_SECTIONS, command="finetune", files=files)
        teacher = load_pix2pix_generator(paths.G, dropout=cfg.pix2pix.dropout)
        teacher_d = load_pix2pix_discriminator(paths.D, teacher) if paths.D else None
        genome = _for_teacher(Genome.load_json(genome_file), teacher.arch)
        with torch.no_grad():
            student = slim(teacher, genome)
        splits = build_aligned_datasets(cfg.data, cfg.seed)
    genome.save_json(out / "genomes" / "G.json")
    result = finetune_pix2pix_student(cfg, student, teacher, splits, out, teacher_d=teacher_d, resume=resume)
    student, d = result["G"], result["D"]
    save_generator(student, out / "G.pt")
    save_reference_state_dict(student, out / "latest_net_G.pth")
    save_discriminator(d, out / "D.pt")
    size = cfg.data.crop_size
    mode = cfg.model.reference_mode
    student_test, teacher_test = quality_on(student, splits.test, mode), quality_on(teacher, splits.test, mode)
    macs = {k: count_macs(g.arch, size, size, convention="published") for k, g in (("student", student),
                                                                                   ("teacher", teacher))}
    record = {
        "stage": "finetune", "kind": "pix2pix", "recipe": "pix2pix GAN + lambda_l1 L1 + distillation",
        "discriminator": result["discriminator"], "epochs": result["result"].epochs,
        "steps": result["result"].global_step, "seconds": round(result["result"].seconds, 2),
        "selected_epoch": result["best_epoch"], "val_psnr": result["val_psnr"], "val_source": splits.val_source,
        "widths": genome.widths(), "macs": macs, "macs_ratio": macs["student"] / macs["teacher"],
        "image_size": size, "reference_mode": mode,
        "test": {"student": student_test, "teacher": teacher_test,
                 "psnr_gap_db": teacher_test["psnr"] - student_test["psnr"], "images": len(splits.test)},
        "teacher": paths.to_dict(), "genome": str(genome_file.resolve()), **(source or {}),
    }
    atomic_write_text(out / "finetune.json", json.dumps(record, indent=2) + "\n")
    log.info("pix2pix student: %.3f of the teacher's MACs, test PSNR %.2f dB (teacher %.2f dB): %s",
             record["macs_ratio"], student_test["psnr"], teacher_test["psnr"], out)
    return out
