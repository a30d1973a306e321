"""The one CycleGAN training loop, shared by teacher training and fine-tuning.

Naming follows the reference code (junyanz/pytorch-CycleGAN-and-pix2pix):
G_A maps A -> B (the paper's G_AB), G_B maps B -> A; D_A judges domain B
(it sees ``fake_B = G_A(real_A)``), D_B judges domain A.

One step (``optimize_parameters`` in the reference):

1. generators, with the discriminators frozen:
   LSGAN(D_A(G_A(A)), real) + LSGAN(D_B(G_B(B)), real)
   + lambda_cycle * (|G_B(G_A(A)) - A| + |G_A(G_B(B)) - B|)
   + lambda_cycle * lambda_identity * (|G_A(B) - B| + |G_B(A) - A|)    (only when in/out channels match)
   + lambda_distill * (|G_A(A) - T_A(A)| + |G_B(B) - T_B(B)|)          (fine-tuning only, T = teacher)
2. discriminators, on real images and on fakes drawn from the image pools, each halved.

Exact resume: all randomness is either derived from (seed, epoch) -- data
order and augmentation -- or held in generators whose state is checkpointed
(the image pools). A run interrupted after epoch k and resumed with the same
settings ends with bit-identical weights to an uninterrupted run.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Protocol

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..config import ConfigError
from ..data import make_loader
from ..models import NLayerDiscriminator, ResnetGenerator
from ..files import atomic_torch_save
from ..models.io import CheckpointError, safe_torch_load
from ..runs import append_jsonl, make_rng, truncate_jsonl
from ..viz import save_grid
from . import losses
from .pool import ImagePool
from ..checks import first_non_finite
from ..errors import CoevoError

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "coevo.train_checkpoint"
CHECKPOINT_VERSION = 1
CHECKPOINT_NAME = "checkpoint.pt"
LOG_NAME = "log.jsonl"


class TrainingError(CoevoError, RuntimeError):
    """Training cannot continue (e.g. a loss became NaN); the message names the step and the fix."""


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers, e.g. (seed, epoch, stream): independent streams, no global RNG."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> np.uint64(1))


# Stream ids for derive_seed, so no two uses of the run seed collide.
STREAM_INIT, STREAM_POOL_A, STREAM_POOL_B = 1, 2, 3
STREAM_FRESH_D = 4  # fine-tuning a teacher without discriminators: new ones


@dataclass
class LoopSettings:
    """What the loop needs from a config section (``train`` or ``finetune``)."""

    epochs: int
    epochs_decay: int = 0
    batch_size: int = 1
    lr: float = 2e-4
    beta1: float = 0.5
    lambda_cycle: float = 10.0
    lambda_identity: float = 0.5
    lambda_distill: float = 0.0
    pool_size: int = 50
    max_steps_per_epoch: int = 0
    sample_every: int = 1
    sample_images: int = 4
    checkpoint_every: int = 1
    log_every: int = 100
    num_workers: int = 0
    seed: int = 0
    device: str = "cpu"
    section: str = "train"        # config section name, used in error messages

    def __post_init__(self) -> None:
        s = self.section
        checks = [
            (self.epochs >= 0 and self.epochs_decay >= 0 and self.epochs + self.epochs_decay >= 1,
             f"{s}.epochs + {s}.epochs_decay must be >= 1 (both >= 0)"),
            (self.batch_size >= 1, f"{s}.batch_size must be >= 1"),
            (self.lr > 0, f"{s}.lr must be > 0"),
            (self.pool_size >= 0, f"{s}.pool_size must be >= 0"),
            (self.max_steps_per_epoch >= 0, f"{s}.max_steps_per_epoch must be >= 0 (0: whole epoch)"),
            (self.checkpoint_every >= 1, f"{s}.checkpoint_every must be >= 1"),
            (self.log_every >= 1, f"{s}.log_every must be >= 1"),
            (self.sample_every >= 0, f"{s}.sample_every must be >= 0 (0: no samples)"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    @classmethod
    def from_section(cls, section: Any, name: str, seed: int, device: str, num_workers: int = 0) -> "LoopSettings":
        """Pick the fields this loop knows from a config section dataclass."""
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in dataclasses.asdict(section).items() if k in names}
        return cls(**values, seed=seed, device=device, num_workers=num_workers, section=name)

    @property
    def total_epochs(self) -> int:
        return self.epochs + self.epochs_decay


@dataclass
class CycleGANNets:
    """The four trained networks. G_A: A->B, G_B: B->A, D_A scores domain B, D_B scores domain A."""

    G_A: ResnetGenerator
    G_B: ResnetGenerator
    D_A: NLayerDiscriminator
    D_B: NLayerDiscriminator

    def as_dict(self) -> Dict[str, nn.Module]:
        return {"G_A": self.G_A, "G_B": self.G_B, "D_A": self.D_A, "D_B": self.D_B}


@dataclass
class GeneratorPair:
    """Frozen teacher generators for distillation: targets G_A(A) and G_B(B)."""

    G_A: nn.Module
    G_B: nn.Module


@dataclass
class LoopResult:
    epochs: int                        # epochs completed
    global_step: int
    seconds: float                     # training wall time, summed over resumes
    last_epoch: Dict[str, float]       # the last epoch's log record


class EpochHook(Protocol):
    """Runs after every epoch (e.g. validation and best-model keeping); its state is checkpointed."""

    def __call__(self, epoch: int, nets: CycleGANNets) -> Dict[str, float]: ...

    def state_dict(self) -> Dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


def linear_decay(epochs: int, epochs_decay: int) -> Callable[[int], float]:
    """The reference schedule: factor 1 for ``epochs`` epochs, then linear towards 0 over ``epochs_decay``."""
    def factor(epoch: int) -> float:
        return 1.0 - max(0, epoch + 1 - epochs) / float(epochs_decay + 1)
    return factor


class CycleGANTrainer:
    """Trains a :class:`CycleGANNets` in ``run_dir`` with checkpoints, logs and sample grids.

    Files: ``checkpoint.pt`` (everything needed for exact resume), ``log.jsonl``
    (step and epoch records), ``samples/epoch_XXX.png``.
    """

    def __init__(self, nets: CycleGANNets, settings: LoopSettings, run_dir: str | Path,
                 teacher: Optional[GeneratorPair] = None, hook: Optional[EpochHook] = None) -> None:
        self.s = settings
        self.run_dir = Path(run_dir)
        self.device = torch.device(settings.device)
        self.nets = nets
        for net in nets.as_dict().values():
            net.to(self.device).train()
        self.teacher = teacher
        if teacher is not None:
            for t in (teacher.G_A, teacher.G_B):
                t.to(self.device).eval().requires_grad_(False)
        self.hook = hook
        s = settings
        self.opt_G = torch.optim.Adam(list(nets.G_A.parameters()) + list(nets.G_B.parameters()),
                                      lr=s.lr, betas=(s.beta1, 0.999))
        self.opt_D = torch.optim.Adam(list(nets.D_A.parameters()) + list(nets.D_B.parameters()),
                                      lr=s.lr, betas=(s.beta1, 0.999))
        rule = linear_decay(s.epochs, s.epochs_decay)
        self.sched_G = torch.optim.lr_scheduler.LambdaLR(self.opt_G, rule)
        self.sched_D = torch.optim.lr_scheduler.LambdaLR(self.opt_D, rule)
        # D_A learns from fake B images, D_B from fake A images.
        self.pool_fake_B = ImagePool(s.pool_size, make_rng(derive_seed(s.seed, STREAM_POOL_B)))
        self.pool_fake_A = ImagePool(s.pool_size, make_rng(derive_seed(s.seed, STREAM_POOL_A)))
        self.identity = all(g.arch.in_channels == g.arch.out_channels for g in (nets.G_A, nets.G_B))
        self.epoch = 0                 # epochs completed
        self.global_step = 0
        self.log_records = 0
        self.seconds = 0.0
        self.last_epoch: Dict[str, float] = {}

    # ------------------------------------------------------------------ paths
    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / CHECKPOINT_NAME

    @property
    def log_path(self) -> Path:
        return self.run_dir / LOG_NAME

    # ------------------------------------------------------------------ checkpoint
    def state_dict(self) -> Dict[str, Any]:
        """Only tensors, dicts, lists, numbers and strings: loadable with ``weights_only=True``."""
        return {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "section": self.s.section,
            "epoch": self.epoch,
            "total_epochs": self.s.total_epochs,
            "global_step": self.global_step,
            "log_records": self.log_records,
            "seconds": self.seconds,
            "last_epoch": dict(self.last_epoch),
            "nets": {k: {n: v.detach().cpu() for n, v in net.state_dict().items()}
                     for k, net in self.nets.as_dict().items()},
            "optimizers": {"G": self.opt_G.state_dict(), "D": self.opt_D.state_dict()},
            "schedulers": {"G": self.sched_G.state_dict(), "D": self.sched_D.state_dict()},
            "pools": {"fake_A": self.pool_fake_A.state_dict(), "fake_B": self.pool_fake_B.state_dict()},
            "hook": self.hook.state_dict() if self.hook is not None else {},
        }

    def save_checkpoint(self) -> None:
        atomic_torch_save(self.state_dict(), self.checkpoint_path)
        log.info("checkpoint after epoch %d (step %d): %s", self.epoch, self.global_step, self.checkpoint_path)

    def load_checkpoint(self, path: Path) -> None:
        ckpt = safe_torch_load(path)
        if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"{path} is not a coevo training checkpoint")
        if int(ckpt["version"]) > CHECKPOINT_VERSION:
            raise CheckpointError(f"{path} was written by a newer coevo (checkpoint version {ckpt['version']})")
        if int(ckpt["total_epochs"]) != self.s.total_epochs:
            raise CheckpointError(
                f"{path} belongs to a {ckpt['total_epochs']}-epoch run, this run has {self.s.total_epochs} "
                "epochs; resume with the original settings or start a new run"
            )
        try:
            for k, net in self.nets.as_dict().items():
                net.load_state_dict(ckpt["nets"][k])
            self.opt_G.load_state_dict(ckpt["optimizers"]["G"])
            self.opt_D.load_state_dict(ckpt["optimizers"]["D"])
            self.sched_G.load_state_dict(ckpt["schedulers"]["G"])
            self.sched_D.load_state_dict(ckpt["schedulers"]["D"])
            self.pool_fake_A.load_state_dict(ckpt["pools"]["fake_A"], self.device)
            self.pool_fake_B.load_state_dict(ckpt["pools"]["fake_B"], self.device)
        except (KeyError, RuntimeError, ValueError) as e:
            raise CheckpointError(f"{path} does not fit this run's networks or settings: {e}") from e
        if self.hook is not None:
            self.hook.load_state_dict(ckpt["hook"])
        self.epoch = int(ckpt["epoch"])
        self.global_step = int(ckpt["global_step"])
        self.log_records = int(ckpt["log_records"])
        self.seconds = float(ckpt["seconds"])
        self.last_epoch = dict(ckpt["last_epoch"])

    def resume(self) -> None:
        """Continue from ``checkpoint.pt``; log lines written after it are dropped and replayed."""
        if self.checkpoint_path.exists():
            self.load_checkpoint(self.checkpoint_path)
            log.info("resuming after epoch %d (step %d)", self.epoch, self.global_step)
        else:
            log.info("no checkpoint in %s yet: starting from the first epoch", self.run_dir)
        truncate_jsonl(self.log_path, self.log_records)

    # ------------------------------------------------------------------ one step
    def _check_finite(self, terms: Mapping[str, torch.Tensor], epoch: int, update: str,
                      tensors: Mapping[str, torch.Tensor]) -> None:
        """TrainingError before the ``update`` ("generator"/"discriminator") when a loss is NaN/inf.

        ``tensors`` are the step's inputs and outputs in data-flow order; the first
        non-finite one tells a data problem from corrupt weights from divergence.
        """
        bad = [name for name, value in terms.items() if not torch.isfinite(value).all()]
        if not bad:
            return
        s = self.s
        losses_text = ", ".join(f"'{name}' = {float(terms[name].detach()):g}" for name in bad)
        first = first_non_finite(tensors.items())
        if first is None:
            found = "every input and generator output was finite"
        else:
            found = f"the first non-finite tensor was {first[0]} ({first[1]})"
        if first is not None and first[0] in ("real_A", "real_B"):
            fix = "An input image holds NaN/inf pixels: find it with `coevo data check DIR`."
        elif first is not None and first[0].startswith("teacher"):
            fix = "The teacher produces NaN/inf on these images: its weights are corrupt or from a diverged run."
        elif self.global_step == 0:
            fix = ("The networks produced it before any update, so their starting weights are at fault, "
                   "not the learning rate: check the checkpoints they came from.")
        else:
            fix = (f"Training diverged after {self.global_step} updates: lower the learning rate (it is "
                   f"{self.opt_G.param_groups[0]['lr']:.3g}; e.g. --set {s.section}.lr={s.lr / 2:g}) and start "
                   "again with --force.")
        saved = (f"the last checkpoint {self.checkpoint_path} (after epoch {self.epoch}) is intact"
                 if self.checkpoint_path.exists() else "no checkpoint had been written yet")
        raise TrainingError(f"{s.section}: loss {losses_text} at epoch {epoch}, step {self.global_step + 1}; "
                            f"{found}. Stopped before the {update} update; {saved}. {fix}")

    def step(self, real_A: torch.Tensor, real_B: torch.Tensor, epoch: int) -> Dict[str, float]:
        """One CycleGAN update on a batch (NCHW, [-1, 1]); returns the loss terms."""
        s, n = self.s, self.nets
        n.D_A.requires_grad_(False)
        n.D_B.requires_grad_(False)
        fake_B = n.G_A(real_A)
        rec_A = n.G_B(fake_B)
        fake_A = n.G_B(real_B)
        rec_B = n.G_A(fake_A)
        g_terms = {
            "G_A": losses.gan_loss(n.D_A(fake_B), True),
            "G_B": losses.gan_loss(n.D_B(fake_A), True),
            "cycle_A": losses.l1(rec_A, real_A) * s.lambda_cycle,
            "cycle_B": losses.l1(rec_B, real_B) * s.lambda_cycle,
        }
        if self.identity and s.lambda_identity > 0:
            g_terms["idt_A"] = losses.l1(n.G_A(real_B), real_B) * s.lambda_cycle * s.lambda_identity
            g_terms["idt_B"] = losses.l1(n.G_B(real_A), real_A) * s.lambda_cycle * s.lambda_identity
        teacher_out: Dict[str, torch.Tensor] = {}
        if self.teacher is not None and s.lambda_distill > 0:
            with torch.no_grad():
                target_B, target_A = self.teacher.G_A(real_A), self.teacher.G_B(real_B)
            teacher_out = {"teacher G_A(real_A)": target_B, "teacher G_B(real_B)": target_A}
            g_terms["distill_A"] = losses.l1(fake_B, target_B) * s.lambda_distill
            g_terms["distill_B"] = losses.l1(fake_A, target_A) * s.lambda_distill
        self._check_finite(g_terms, epoch, "generator", {
            "real_A": real_A, "real_B": real_B, **teacher_out, "G_A(real_A)": fake_B, "G_B(real_B)": fake_A,
            "G_B(G_A(real_A))": rec_A, "G_A(G_B(real_B))": rec_B})
        self.opt_G.zero_grad(set_to_none=True)
        sum(g_terms.values()).backward()
        self.opt_G.step()

        n.D_A.requires_grad_(True)
        n.D_B.requires_grad_(True)
        pooled_B = self.pool_fake_B.query(fake_B.detach())
        pooled_A = self.pool_fake_A.query(fake_A.detach())
        d_terms = {
            "D_A": losses.discriminator_loss(n.D_A(real_B), n.D_A(pooled_B)),
            "D_B": losses.discriminator_loss(n.D_B(real_A), n.D_B(pooled_A)),
        }
        self._check_finite(d_terms, epoch, "discriminator",
                           {"real_A": real_A, "real_B": real_B, "pooled fake_B": pooled_B, "pooled fake_A": pooled_A})
        self.opt_D.zero_grad(set_to_none=True)
        (d_terms["D_A"] + d_terms["D_B"]).backward()
        self.opt_D.step()
        self.global_step += 1
        return {k: float(v.detach()) for k, v in {**g_terms, **d_terms}.items()}

    # ------------------------------------------------------------------ epochs
    def _loader(self, dataset: Dataset, epoch: int) -> DataLoader:
        # Order and augmentation are functions of (seed, epoch): nothing to checkpoint.
        return make_loader(dataset, batch_size=self.s.batch_size, shuffle=True, num_workers=self.s.num_workers,
                           seed=self.s.seed, epoch=epoch)

    def _log(self, record: Dict[str, Any]) -> None:
        append_jsonl(self.log_path, record)
        self.log_records += 1

    @torch.no_grad()
    def save_samples(self, images: Mapping[str, torch.Tensor], path: Path) -> None:
        """Grid of real_A | fake_B | rec_A | real_B | fake_A | rec_B (NCHW, [-1, 1])."""
        n = self.nets
        real_A, real_B = images["A"].to(self.device), images["B"].to(self.device)
        fake_B, fake_A = n.G_A(real_A), n.G_B(real_B)
        columns = [("real_A", real_A), ("fake_B", fake_B), ("rec_A", n.G_B(fake_B)),
                   ("real_B", real_B), ("fake_A", fake_A), ("rec_B", n.G_A(fake_A))]
        save_grid([(k, v.cpu()) for k, v in columns], path, max_rows=self.s.sample_images,
                  title=f"{self.s.section} epoch {self.epoch}")

    def run_epoch(self, dataset: Dataset, epoch: int) -> Dict[str, float]:
        """Train one epoch (0-based ``epoch``); returns the mean of each loss term."""
        loader = self._loader(dataset, epoch)
        steps = len(loader)
        if self.s.max_steps_per_epoch:
            steps = min(steps, self.s.max_steps_per_epoch)
        sums: Dict[str, float] = {}
        window: Dict[str, float] = {}
        in_window = 0
        bar = tqdm(total=steps, desc=f"{self.s.section} epoch {epoch + 1}/{self.s.total_epochs}",
                   disable=None, leave=False, dynamic_ncols=True)
        try:
            for i, batch in enumerate(loader):
                if i >= steps:
                    break
                terms = self.step(batch["A"].to(self.device), batch["B"].to(self.device), epoch + 1)
                for k, v in terms.items():
                    sums[k] = sums.get(k, 0.0) + v
                    window[k] = window.get(k, 0.0) + v
                in_window += 1
                if self.global_step % self.s.log_every == 0:
                    self._log({"kind": "step", "epoch": epoch + 1, "step": self.global_step,
                               "lr": self.opt_G.param_groups[0]["lr"],
                               **{k: v / in_window for k, v in window.items()}})
                    window, in_window = {}, 0
                bar.set_postfix({k: f"{v:.3f}" for k, v in terms.items()}, refresh=False)
                bar.update(1)
        finally:
            bar.close()
        return {k: v / max(steps, 1) for k, v in sums.items()}

    def fit(self, dataset: Dataset, sample_images: Optional[Mapping[str, torch.Tensor]] = None) -> LoopResult:
        """Train from ``self.epoch`` to the last epoch. ``sample_images``: {"A": NCHW, "B": NCHW} in [-1, 1]."""
        s = self.s
        for epoch in range(self.epoch, s.total_epochs):
            start = time.perf_counter()
            means = self.run_epoch(dataset, epoch)
            lr = self.opt_G.param_groups[0]["lr"]
            self.sched_G.step()
            self.sched_D.step()
            self.epoch = epoch + 1
            last = self.epoch == s.total_epochs
            record: Dict[str, Any] = {"kind": "epoch", "epoch": self.epoch, "step": self.global_step, "lr": lr,
                                      **means}
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
        return LoopResult(self.epoch, self.global_step, self.seconds, dict(self.last_epoch))

