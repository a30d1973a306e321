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
(the image pools; the dropout masks of generators with the reference's dropout,
a CycleGAN trained without --no_dropout: :meth:`TrainerBase._seed_dropout`). A run
interrupted after epoch k and resumed with the same settings ends with
bit-identical weights to an uninterrupted run.

Under torchrun (:mod:`coevo.core.distributed`) with W processes, each step's losses
are modules wrapped in ``DistributedDataParallel`` and every rank takes
``batch_size / W`` images (``batch_size`` must be a multiple of W): rank r
takes items r, r + W, ... of the permutation a one-process run draws for that
epoch, so the W shares of step k are exactly the one-process batch k. Losses are
means over images and InstanceNorm normalises each image alone, so with
``pool_size: 0`` the averaged gradients are a one-process step's up to float
rounding. What differs: each rank keeps its own image pool of ``pool_size``
fakes (its own seed stream; all pools are checkpointed), and when the training
set is not a multiple of W the sampler repeats up to W - 1 images per epoch.
Rank 0 writes checkpoints, logs and samples; logged losses are means over the
ranks. A resume with the same W is bit-identical to an uninterrupted W-process run.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Protocol, Tuple

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..config import LoopConfig
from ..core import distributed
from ..errors import ConfigError
from ..data import make_loader
from ..models import NLayerDiscriminator, ResnetGenerator
from ..models.dropout import SeededDropout, drawing_from, seed_dropout, seeded_modules
from ..models.generator import scoring_mode
from ..core.files import atomic_torch_save
from .curves import Curves
from ..errors import CheckpointError
from ..models.io import safe_torch_load
from ..core.precision import autocast
from ..core.rng import derive_seed, torch_rng
from ..core.runs import append_jsonl, truncate_jsonl
from ..evaluation.viz import save_grid
from . import losses
from .pool import ImagePool
from ..core.guards import first_non_finite
from ..errors import CoevoError

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "coevo.train_checkpoint"
CHECKPOINT_VERSION = 1
CHECKPOINT_NAME = "checkpoint.pt"
LOG_NAME = "log.jsonl"


class TrainingError(CoevoError, RuntimeError):
    """Training cannot continue (e.g. a loss became NaN); the message names the step and the fix."""


# Stream ids for derive_seed, so no two uses of the run seed collide.
STREAM_INIT, STREAM_POOL_A, STREAM_POOL_B = 1, 2, 3
STREAM_FRESH_D = 4  # fine-tuning a teacher without discriminators: new ones
STREAM_ADAPTERS = 5  # the 1x1 convolutions of feature distillation
STREAM_DROPOUT = 11  # the trained generators' dropout masks (coevo.train.pix2pix's too)


def feature_layers(n_blocks: int) -> Dict[str, int]:
    """Where feature distillation reads the generators: name -> index into ``ResnetGenerator.model``
    (the end of the down2 and up1 units, and the middle and last residual blocks)."""
    from ..models.topology import resnet_convs

    spec = {s.name: s for s in resnet_convs(n_blocks)}
    return {"down2": spec["down2"].end, f"block{n_blocks // 2}": spec[f"block{n_blocks // 2}.conv1"].seq,
            f"block{n_blocks - 1}": spec[f"block{n_blocks - 1}.conv1"].seq, "up1": spec["up1"].end}


def _channels(g: ResnetGenerator, name: str) -> int:
    return g.arch.widths["up1"] if name == "up1" else g.arch.widths["trunk"]


class FeatureAdapters(nn.Module):
    """1x1 convolutions from each student feature map to the teacher's (per generator and layer)."""

    def __init__(self, students: Mapping[str, ResnetGenerator], teachers: Mapping[str, ResnetGenerator],
                 seed: int) -> None:
        super().__init__()
        g = torch_rng(derive_seed(seed, STREAM_ADAPTERS))
        self.layers = feature_layers(students["G_A"].arch.n_blocks)
        self.maps = nn.ModuleDict()
        for k in ("G_A", "G_B"):
            for name in self.layers:
                conv = nn.Conv2d(_channels(students[k], name), _channels(teachers[k], name), 1)
                with torch.no_grad():
                    conv.weight.normal_(0.0, 0.02, generator=g)
                    conv.bias.zero_()
                self.maps[f"{k}_{name}"] = conv

    def loss(self, k: str, student: Mapping[int, torch.Tensor], teacher: Mapping[int, torch.Tensor]) -> torch.Tensor:
        """Mean over layers of the MSE between mapped student and teacher activations."""
        terms = [losses.mse(self.maps[f"{k}_{name}"](student[i]), teacher[i]) for name, i in self.layers.items()]
        return sum(terms) / len(terms)


def _forward_keeping(g: nn.Module, x: torch.Tensor, indices) -> tuple:
    """``(g(x), {index: activation})``: one forward that also keeps the outputs of ``g.model[index]``."""
    kept: Dict[int, torch.Tensor] = {}
    handles = [g.model[i].register_forward_hook(lambda m, inp, out, i=i: kept.__setitem__(i, out)) for i in indices]
    try:
        y = g(x)
    finally:
        for h in handles:
            h.remove()
    return y, kept


@dataclass
class LoopSettings(LoopConfig):
    """What the loop needs: a config section's loop settings (``train`` or ``finetune``, see
    :class:`coevo.config.LoopConfig`) and what the run adds. A loop built by hand gives ``epochs``; the
    rest default to a plain run (no decay, no distillation)."""

    epochs: int
    epochs_decay: int = 0
    lambda_distill: float = 0.0
    lambda_feature: float = 0.0
    num_workers: int = 0
    seed: int = 0
    device: str = "cpu"
    section: str = "train"        # config section name, used in error messages
    log: str = "jsonl"            # jsonl | tensorboard (coevo.train.curves); log.jsonl is written either way

    def __post_init__(self) -> None:
        s = self.section
        world = distributed.world_size()
        checks = [
            (self.batch_size % world == 0,
             f"{s}.batch_size ({self.batch_size}) must be a multiple of the {world} processes torchrun started: "
             f"each takes {s}.batch_size / {world} images per step, so that together they take a one-process "
             f"run's batch (e.g. --set {s}.batch_size={world * max(1, -(-self.batch_size // world))})"),
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
    def from_section(cls, section: Any, name: str, seed: int, device: str, num_workers: int = 0,
                     log: str = "jsonl") -> "LoopSettings":
        """Pick the fields this loop knows from a config section dataclass."""
        names = {f.name for f in dataclasses.fields(cls)} - {"log"}
        values = {k: v for k, v in dataclasses.asdict(section).items() if k in names}
        return cls(**values, seed=seed, device=device, num_workers=num_workers, section=name, log=log)

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


class GeneratorLosses(nn.Module):
    """Step 1's loss terms (see the module docstring) as one module whose parameters are G_A's and G_B's.

    Under torchrun it is wrapped in DistributedDataParallel: one forward and one
    backward per step, which reduce the generators' gradients across the ranks.
    The discriminators (frozen for this update) and the teacher are read, not owned.
    ``forward(real_A, real_B)`` (NCHW, [-1, 1]) returns the loss terms and the
    tensors that produced them, in data-flow order.
    """

    def __init__(self, nets: CycleGANNets, settings: LoopSettings, identity: bool,
                 teacher: Optional[GeneratorPair] = None, adapters: Optional[FeatureAdapters] = None) -> None:
        super().__init__()
        self.G_A, self.G_B = nets.G_A, nets.G_B
        self.adapters = adapters  # trained with the generators (feature distillation), or None
        self.nets, self.teacher = nets, teacher  # plain attributes: not parameters of this module
        self.s, self.identity = settings, identity

    def forward(self, real_A: torch.Tensor, real_B: torch.Tensor):
        s, n = self.s, self.nets
        keep = list(self.adapters.layers.values()) if self.adapters is not None else []
        fake_B, feats_A = _forward_keeping(self.G_A, real_A, keep)
        rec_A = self.G_B(fake_B)
        fake_A, feats_B = _forward_keeping(self.G_B, real_B, keep)
        rec_B = self.G_A(fake_A)
        terms = {
            "G_A": losses.gan_loss(n.D_A(fake_B), True),
            "G_B": losses.gan_loss(n.D_B(fake_A), True),
            "cycle_A": losses.l1(rec_A, real_A) * s.lambda_cycle,
            "cycle_B": losses.l1(rec_B, real_B) * s.lambda_cycle,
        }
        if self.identity and s.lambda_identity > 0:
            terms["idt_A"] = losses.l1(self.G_A(real_B), real_B) * s.lambda_cycle * s.lambda_identity
            terms["idt_B"] = losses.l1(self.G_B(real_A), real_A) * s.lambda_cycle * s.lambda_identity
        outputs: Dict[str, torch.Tensor] = {}
        if self.teacher is not None and (s.lambda_distill > 0 or self.adapters is not None):
            with torch.no_grad():
                target_B, t_feats_A = _forward_keeping(self.teacher.G_A, real_A, keep)
                target_A, t_feats_B = _forward_keeping(self.teacher.G_B, real_B, keep)
            outputs = {"teacher G_A(real_A)": target_B, "teacher G_B(real_B)": target_A}
            if s.lambda_distill > 0:
                terms["distill_A"] = losses.l1(fake_B, target_B) * s.lambda_distill
                terms["distill_B"] = losses.l1(fake_A, target_A) * s.lambda_distill
            if self.adapters is not None:
                terms["feature_A"] = self.adapters.loss("G_A", feats_A, t_feats_A) * s.lambda_feature
                terms["feature_B"] = self.adapters.loss("G_B", feats_B, t_feats_B) * s.lambda_feature
        outputs.update({"G_A(real_A)": fake_B, "G_B(real_B)": fake_A, "G_B(G_A(real_A))": rec_A,
                        "G_A(G_B(real_B))": rec_B})
        return terms, outputs


class DiscriminatorLosses(nn.Module):
    """Step 2's loss terms as one module whose parameters are D_A's and D_B's (DDP-wrapped under torchrun)."""

    def __init__(self, nets: CycleGANNets) -> None:
        super().__init__()
        self.D_A, self.D_B = nets.D_A, nets.D_B

    def forward(self, real_A: torch.Tensor, real_B: torch.Tensor, pooled_A: torch.Tensor,
                pooled_B: torch.Tensor) -> Dict[str, torch.Tensor]:
        return {"D_A": losses.discriminator_loss(self.D_A(real_B), self.D_A(pooled_B)),
                "D_B": losses.discriminator_loss(self.D_B(real_A), self.D_B(pooled_A))}


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


def read_training_checkpoint(path: Path, recipe: str, total_epochs: int, recipe_hint: str) -> Dict[str, Any]:
    """A training checkpoint (weights_only) checked to be ``recipe``'s, of a run of ``total_epochs`` epochs, and
    not from a newer coevo; :class:`CheckpointError` otherwise (``recipe_hint``: the way out of a recipe clash)."""
    ckpt = safe_torch_load(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a coevo training checkpoint")
    if ckpt.get("recipe", "gan") != recipe:
        raise CheckpointError(f"{path} was written by the {ckpt.get('recipe', 'gan')} recipe, this run uses "
                              f"{recipe}; {recipe_hint}")
    if int(ckpt["version"]) > CHECKPOINT_VERSION:
        raise CheckpointError(f"{path} was written by a newer coevo (checkpoint version {ckpt['version']})")
    if int(ckpt["total_epochs"]) != total_epochs:
        raise CheckpointError(
            f"{path} belongs to a {ckpt['total_epochs']}-epoch run, this run has {total_epochs} "
            "epochs; resume with the original settings or start a new run"
        )
    return ckpt


class TrainerBase:
    """The scaffolding every trainer shares (:class:`CycleGANTrainer`, its distillation subclass and
    :class:`coevo.train.pix2pix.Pix2PixTrainer`): the run folder's files, the progress counters, the
    checkpoint header and the G/D networks, optimizers and schedules in it, log writing and resume.

    A subclass sets ``RECIPE`` (and ``RECIPE_HINT``), calls :meth:`_start` from its ``__init__`` and builds
    ``opt_G``/``opt_D`` and ``sched_G``/``sched_D`` for :meth:`_networks_state` and :meth:`_load_networks`, and
    a ``step(real_A, real_B, epoch)`` (one update, returning its loss terms) for :meth:`_run_steps`.

    Dropout: :meth:`_seed_dropout` gives the networks' dropout a seeded stream that they draw from inside
    :meth:`_drawing_dropout` (a training step) only; :meth:`_dropout_state` and :meth:`_load_dropout_state`
    carry the streams through the checkpoint (``"rng"``), so dropout runs repeat and resume exactly.
    """

    RECIPE = "gan"  # what a checkpoint's "recipe" says; a run refuses another recipe's checkpoint
    RECIPE_HINT = "resume with the run's own finetune.mode"  # the way out when the recipes clash
    world, rank = 1, 0  # one process unless a subclass says otherwise (torchrun)

    def _start(self, nets: Any, settings: LoopSettings, run_dir: str | Path, hook: Optional[Any]) -> None:
        """The settings, the run folder, the networks on the device in train mode, the hook, zero counters."""
        self.s = settings
        self.run_dir = Path(run_dir)
        self.device = torch.device(settings.device)
        self.nets = nets
        for net in nets.as_dict().values():
            net.to(self.device).train()
        self.hook = hook
        self.epoch = 0                 # epochs completed
        self.global_step = 0
        self.log_records = 0
        self.seconds = 0.0
        self.last_epoch: Dict[str, float] = {}

    # ------------------------------------------------------------------ dropout
    def _dropout_streams(self) -> Dict[str, Tuple[torch.Generator, List[SeededDropout]]]:
        """name -> (seeded generator, the :class:`SeededDropout` modules drawing from it in a step)."""
        return self.__dict__.setdefault("_dropout_stream_table", {})

    def _seed_dropout(self, name: str, stream: int, *models: nn.Module,
                      always: bool = False) -> Optional[torch.Generator]:
        """Swap the ``nn.Dropout`` of ``models`` for :class:`~coevo.models.dropout.SeededDropout` (no weights:
        state_dicts and saved files stay the plain architectures') drawing, in a training step, from a generator
        seeded by ``(seed, stream)`` (and the rank under torchrun, rank 0's being a one-process run's), checkpointed
        as ``rng[name]``. Returns the generator; None (and nothing recorded, so a checkpoint of a run without
        dropout is as it always was) when the models hold no dropout, unless ``always``."""
        for model in models:
            seed_dropout(model, None)
        modules = seeded_modules(*models)
        if not modules and not always:
            return None
        rank_part = (self.rank,) if self.rank else ()
        generator = torch_rng(derive_seed(self.s.seed, stream, *rank_part))
        self._dropout_streams()[name] = (generator, modules)
        return generator

    def _drawing_dropout(self):
        """Context of a training step's forwards: the seeded dropout draws from its stream. Outside it (epoch
        hooks, sample grids, scoring) it is plain ``nn.Dropout``: :func:`~coevo.models.generator.scoring_mode`
        gives it the scoring stream, and the training stream does not move."""
        return drawing_from(self._dropout_streams().values())

    def _dropout_state(self) -> Dict[str, Any]:
        """``{name: generator state}`` of the dropout streams (empty without any)."""
        return {name: g.get_state() for name, (g, _) in self._dropout_streams().items()}

    def _load_dropout_state(self, saved: Optional[Mapping[str, Any]], path: Path) -> None:
        """The dropout streams back from a checkpoint's ``rng`` (``saved``). A stream the checkpoint lacks (one
        written before coevo seeded this trainer's dropout) starts afresh from the seed, with a warning: the
        run goes on but does not match an uninterrupted one."""
        saved = saved or {}
        for name, (g, _) in self._dropout_streams().items():
            if name in saved:
                g.set_state(saved[name])
            else:
                log.warning("%s holds no state of the %s stream (written before coevo seeded this trainer's "
                            "dropout): it starts afresh from the run's seed, so this resumed run will not be "
                            "bit-identical to an uninterrupted one (start it again with --force for that)",
                            path, name)

    # ------------------------------------------------------------------ paths
    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / CHECKPOINT_NAME

    @property
    def log_path(self) -> Path:
        return self.run_dir / LOG_NAME

    # ------------------------------------------------------------------ checkpoint
    def _counters_state(self) -> Dict[str, Any]:
        """A checkpoint's header (format, version, recipe) and progress counters, the same for every recipe."""
        return {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "recipe": self.RECIPE,
            "section": self.s.section,
            "epoch": self.epoch,
            "total_epochs": self.s.total_epochs,
            "global_step": self.global_step,
            "log_records": self.log_records,
            "seconds": self.seconds,
            "last_epoch": dict(self.last_epoch),
        }

    def _networks_state(self) -> Dict[str, Any]:
        """The networks (on the CPU), the G and D optimizers and their schedules."""
        return {
            "nets": {k: {n: v.detach().cpu() for n, v in net.state_dict().items()}
                     for k, net in self.nets.as_dict().items()},
            "optimizers": {"G": self.opt_G.state_dict(), "D": self.opt_D.state_dict()},
            "schedulers": {"G": self.sched_G.state_dict(), "D": self.sched_D.state_dict()},
        }

    def _write_checkpoint(self, state: Mapping[str, Any]) -> None:
        atomic_torch_save(state, self.checkpoint_path)
        log.info("checkpoint after epoch %d (step %d): %s", self.epoch, self.global_step, self.checkpoint_path)

    def _read_checkpoint(self, path: Path) -> Dict[str, Any]:
        """``path`` loaded and checked to be this recipe's checkpoint of a run of this length."""
        return read_training_checkpoint(path, self.RECIPE, self.s.total_epochs, self.RECIPE_HINT)

    def _load_networks(self, ckpt: Mapping[str, Any]) -> None:
        """:meth:`_networks_state`'s part of ``ckpt`` back into the networks, optimizers and schedules."""
        for k, net in self.nets.as_dict().items():
            net.load_state_dict(ckpt["nets"][k])
        self.opt_G.load_state_dict(ckpt["optimizers"]["G"])
        self.opt_D.load_state_dict(ckpt["optimizers"]["D"])
        self.sched_G.load_state_dict(ckpt["schedulers"]["G"])
        self.sched_D.load_state_dict(ckpt["schedulers"]["D"])

    def _restore_progress(self, ckpt: Mapping[str, Any]) -> None:
        if self.hook is not None:
            self.hook.load_state_dict(ckpt["hook"])
        self.epoch = int(ckpt["epoch"])
        self.global_step = int(ckpt["global_step"])
        self.log_records = int(ckpt["log_records"])
        self.seconds = float(ckpt["seconds"])
        self.last_epoch = dict(ckpt["last_epoch"])

    def load_checkpoint(self, path: Path) -> None:
        raise NotImplementedError

    def resume(self) -> None:
        """Continue from ``checkpoint.pt``; log lines written after it are dropped and replayed."""
        if self.checkpoint_path.exists():
            self.load_checkpoint(self.checkpoint_path)
            log.info("resuming after epoch %d (step %d)", self.epoch, self.global_step)
        else:
            log.info("no checkpoint in %s yet: starting from the first epoch", self.run_dir)
        if self.rank == 0:
            truncate_jsonl(self.log_path, self.log_records)

    # ------------------------------------------------------------------ logs
    def _log(self, record: Dict[str, Any]) -> None:
        """One line of ``log.jsonl`` (rank 0 writes it; every rank counts it, for resume)."""
        if self.rank == 0:
            append_jsonl(self.log_path, record)
        self.log_records += 1

    # ------------------------------------------------------------------ epochs
    def _run_steps(self, loader: DataLoader, epoch: int) -> Dict[str, float]:
        """One epoch's steps over ``loader`` (0-based ``epoch``; at most ``max_steps_per_epoch``): a progress
        bar (rank 0's), :meth:`step` on each batch, a ``"step"`` log record (the window's mean terms and G's
        learning rate) every ``log_every`` updates. Returns the epoch's mean of each loss term."""
        steps = len(loader)
        if self.s.max_steps_per_epoch:
            steps = min(steps, self.s.max_steps_per_epoch)
        sums: Dict[str, float] = {}
        window: Dict[str, float] = {}
        in_window = 0
        bar = tqdm(total=steps, desc=f"{self.s.section} epoch {epoch + 1}/{self.s.total_epochs}",
                   disable=None if self.rank == 0 else True, leave=False, dynamic_ncols=True)
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


class CycleGANTrainer(TrainerBase):
    """Trains a :class:`CycleGANNets` in ``run_dir`` with checkpoints, logs and sample grids.

    Files: ``checkpoint.pt`` (everything needed for exact resume), ``log.jsonl``
    (step and epoch records), ``samples/epoch_XXX.png``.
    """

    def __init__(self, nets: CycleGANNets, settings: LoopSettings, run_dir: str | Path,
                 teacher: Optional[GeneratorPair] = None, hook: Optional[EpochHook] = None) -> None:
        self._start(nets, settings, run_dir, hook)
        self.teacher = teacher
        if teacher is not None:
            for t in (teacher.G_A, teacher.G_B):
                t.to(self.device).eval().requires_grad_(False)
        s = settings
        self.adapters = None
        if teacher is not None and s.lambda_feature > 0:
            self.adapters = FeatureAdapters({"G_A": nets.G_A, "G_B": nets.G_B},
                                            {"G_A": teacher.G_A, "G_B": teacher.G_B}, s.seed).to(self.device)
        extra = list(self.adapters.parameters()) if self.adapters is not None else []
        self.opt_G = torch.optim.Adam(list(nets.G_A.parameters()) + list(nets.G_B.parameters()) + extra,
                                      lr=s.lr, betas=(s.beta1, 0.999))
        self.opt_D = torch.optim.Adam(list(nets.D_A.parameters()) + list(nets.D_B.parameters()),
                                      lr=s.lr, betas=(s.beta1, 0.999))
        rule = linear_decay(s.epochs, s.epochs_decay)
        self.sched_G = torch.optim.lr_scheduler.LambdaLR(self.opt_G, rule)
        self.sched_D = torch.optim.lr_scheduler.LambdaLR(self.opt_D, rule)
        self.world, self.rank = distributed.world_size(), distributed.rank()
        self.curves = Curves(self.run_dir, settings.section, settings.log, enabled=self.rank == 0)
        self.batch_per_rank = s.batch_size // self.world  # LoopSettings checks that it divides
        # D_A learns from fake B images, D_B from fake A images. Under torchrun each rank
        # pools its own fakes, from its own stream (rank 0's is a one-process run's).
        rank_part = (self.rank,) if self.rank else ()
        self.pool_fake_B = ImagePool(s.pool_size, torch_rng(derive_seed(s.seed, STREAM_POOL_B, *rank_part)))
        self.pool_fake_A = ImagePool(s.pool_size, torch_rng(derive_seed(s.seed, STREAM_POOL_A, *rank_part)))
        self.identity = all(g.arch.in_channels == g.arch.out_channels for g in (nets.G_A, nets.G_B))
        self._seed_dropout("dropout", STREAM_DROPOUT, nets.G_A, nets.G_B)  # the reference's --use_dropout
        self.generator_losses: nn.Module = GeneratorLosses(nets, settings, self.identity, teacher, self.adapters)
        self.discriminator_losses: nn.Module = DiscriminatorLosses(nets)
        if self.world > 1:
            ids = [self.device.index if self.device.index is not None else torch.cuda.current_device()] \
                if self.device.type == "cuda" else None
            self.generator_losses = DistributedDataParallel(self.generator_losses, device_ids=ids)
            self.discriminator_losses = DistributedDataParallel(self.discriminator_losses, device_ids=ids)

    # ------------------------------------------------------------------ checkpoint
    def _progress_state(self) -> Dict[str, Any]:
        """The part of a checkpoint the CycleGAN recipes share: format, counters, adapters, the model-selection hook."""
        return {
            **self._counters_state(),
            "adapters": ({n: v.detach().cpu() for n, v in self.adapters.state_dict().items()}
                         if self.adapters is not None else {}),
            "hook": self.hook.state_dict() if self.hook is not None else {},
            "world_size": self.world,
        }

    def state_dict(self) -> Dict[str, Any]:
        """Only tensors, dicts, lists, numbers and strings: loadable with ``weights_only=True``."""
        return {**self._progress_state(), **self._networks_state(), "pools": self._pools(), **self._rng_state()}

    def _pools(self) -> Dict[str, Any]:
        return {"fake_A": self.pool_fake_A.state_dict(), "fake_B": self.pool_fake_B.state_dict()}

    def _rng_state(self) -> Dict[str, Any]:
        """``{"rng": dropout streams}`` for generators with dropout; nothing without (the checkpoint as ever)."""
        state = self._dropout_state()
        return {"rng": state} if state else {}

    def _gather_rng(self, state: Dict[str, Any]) -> None:
        """Every rank calls it: under torchrun each rank's dropout stream goes into ``state["rank_rng"]``."""
        if not self._dropout_streams():
            return
        rngs = distributed.gather_to_main(self._dropout_state())
        if self.world > 1 and distributed.is_main():
            state["rank_rng"] = rngs

    def _load_rng(self, ckpt: Mapping[str, Any], path: Path) -> None:
        if not self._dropout_streams():
            return
        rngs = ckpt.get("rank_rng") or [ckpt.get("rng")]
        # a rank the checkpoint did not know starts its stream afresh (the world-size warning says why)
        self._load_dropout_state(rngs[self.rank] if self.rank < len(rngs) else {}, path)

    def save_checkpoint(self) -> None:
        """Every rank calls it (the ranks' image pools are gathered); rank 0 writes ``checkpoint.pt``.

        The networks are saved bare (no DDP ``module.`` prefix): the file loads in one process.
        """
        pools = distributed.gather_to_main(self._pools())
        extra: Dict[str, Any] = {}
        self._gather_rng(extra)
        if not distributed.is_main():
            return
        state = self.state_dict()
        if self.world > 1:
            state["rank_pools"] = pools
        state.update(extra)
        self._write_checkpoint(state)

    def load_checkpoint(self, path: Path) -> None:
        ckpt = self._read_checkpoint(path)
        try:
            self._load_networks(ckpt)
            if self.adapters is not None:
                self.adapters.load_state_dict(ckpt["adapters"])
            saved_world = int(ckpt.get("world_size", 1))
            if saved_world != self.world:
                log.warning("%s was written by %d process(es), this run has %d: the batches are shared out "
                            "differently and the image pools do not carry over one to one, so the result will "
                            "differ from an uninterrupted run", path, saved_world, self.world)
            pools = ckpt.get("rank_pools") or [ckpt["pools"]]
            if self.rank < len(pools):  # a rank the checkpoint did not know starts with an empty pool
                self.pool_fake_A.load_state_dict(pools[self.rank]["fake_A"], self.device)
                self.pool_fake_B.load_state_dict(pools[self.rank]["fake_B"], self.device)
            self._load_rng(ckpt, path)
        except (KeyError, RuntimeError, ValueError) as e:
            raise CheckpointError(f"{path} does not fit this run's networks or settings: {e}") from e
        self._restore_progress(ckpt)

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
        with autocast(self.device, s.amp), self._drawing_dropout():
            g_terms, outputs = self.generator_losses(real_A, real_B)
        g_values = self._mean_over_ranks(g_terms)
        self._check_finite(g_values, epoch, "generator", {"real_A": real_A, "real_B": real_B, **outputs})
        self.opt_G.zero_grad(set_to_none=True)
        sum(g_terms.values()).backward()
        self.opt_G.step()

        n.D_A.requires_grad_(True)
        n.D_B.requires_grad_(True)
        # float(): under amp the fakes are bfloat16; the pools (and checkpoints) hold float32.
        pooled_B = self.pool_fake_B.query(outputs["G_A(real_A)"].detach().float())
        pooled_A = self.pool_fake_A.query(outputs["G_B(real_B)"].detach().float())
        with autocast(self.device, s.amp):
            d_terms = self.discriminator_losses(real_A, real_B, pooled_A, pooled_B)
        d_values = self._mean_over_ranks(d_terms)
        self._check_finite(d_values, epoch, "discriminator",
                           {"real_A": real_A, "real_B": real_B, "pooled fake_B": pooled_B, "pooled fake_A": pooled_A})
        self.opt_D.zero_grad(set_to_none=True)
        (d_terms["D_A"] + d_terms["D_B"]).backward()
        self.opt_D.step()
        self.global_step += 1
        return {k: float(v) for k, v in {**g_values, **d_values}.items()}

    def _mean_over_ranks(self, terms: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Detached loss values, averaged over the ranks under torchrun: the whole batch's means,
        the same on every rank (so a NaN stops every rank at the same step)."""
        if self.world == 1:
            return {k: v.detach() for k, v in terms.items()}
        values = distributed.mean(torch.stack([v.detach().float() for v in terms.values()]))
        return dict(zip(terms, values))

    # ------------------------------------------------------------------ epochs
    def step_schedulers(self) -> None:
        """The end of an epoch: every learning-rate schedule moves on."""
        self.sched_G.step()
        self.sched_D.step()

    def _loader(self, dataset: Dataset, epoch: int) -> DataLoader:
        # Order and augmentation are functions of (seed, epoch): nothing to checkpoint.
        return make_loader(dataset, batch_size=self.batch_per_rank, shuffle=True, num_workers=self.s.num_workers,
                           seed=self.s.seed, epoch=epoch, replicas=self.world, rank=self.rank)

    def _log(self, record: Dict[str, Any]) -> None:
        super()._log(record)
        if self.rank == 0 and record.get("kind") == "step":
            self.curves.scalars(self.global_step, {k: v for k, v in record.items() if k != "kind"})

    @torch.no_grad()
    def save_samples(self, images: Mapping[str, torch.Tensor], path: Path) -> None:
        """Grid of real_A | fake_B | rec_A | real_B | fake_A | rec_B (NCHW, [-1, 1]).

        The generators run as they train (BatchNorm on batch statistics, dropout on) but leave nothing behind:
        no running statistics learnt from the samples, no draw from the training's random stream
        (:func:`coevo.models.generator.scoring_mode`), so drawing samples never changes a run's result."""
        n = self.nets
        real_A, real_B = images["A"].to(self.device), images["B"].to(self.device)
        with scoring_mode(n.G_A, "train"), scoring_mode(n.G_B, "train"):
            fake_B, fake_A = n.G_A(real_A), n.G_B(real_B)
            rec_A, rec_B = n.G_B(fake_B), n.G_A(fake_A)
        columns = [("real_A", real_A), ("fake_B", fake_B), ("rec_A", rec_A),
                   ("real_B", real_B), ("fake_A", fake_A), ("rec_B", rec_B)]
        save_grid([(k, v.cpu()) for k, v in columns], path, max_rows=self.s.sample_images,
                  title=f"{self.s.section} epoch {self.epoch}")

    def run_epoch(self, dataset: Dataset, epoch: int) -> Dict[str, float]:
        """Train one epoch (0-based ``epoch``); returns the mean of each loss term."""
        return self._run_steps(self._loader(dataset, epoch), epoch)

    def fit(self, dataset: Dataset, sample_images: Optional[Mapping[str, torch.Tensor]] = None) -> LoopResult:
        """Train from ``self.epoch`` to the last epoch. ``sample_images``: {"A": NCHW, "B": NCHW} in [-1, 1].

        Under torchrun every rank calls it; rank 0 draws the samples and writes the files.
        """
        s = self.s
        if self.rank != 0:
            sample_images = None
        for epoch in range(self.epoch, s.total_epochs):
            start = time.perf_counter()
            means = self.run_epoch(dataset, epoch)
            lr = self.opt_G.param_groups[0]["lr"]
            self.step_schedulers()
            self.epoch = epoch + 1
            last = self.epoch == s.total_epochs
            record: Dict[str, Any] = {"kind": "epoch", "epoch": self.epoch, "step": self.global_step, "lr": lr,
                                      **means}
            if self.hook is not None:
                record.update(self.hook(self.epoch, self.nets))
            self.seconds += time.perf_counter() - start
            record["seconds"] = round(self.seconds, 3)
            self._log(record)
            self.curves.scalars(self.global_step, {f"epoch/{k}": v for k, v in record.items() if k != "kind"})
            self.last_epoch = {k: v for k, v in record.items() if isinstance(v, (int, float))}
            log.info("%s epoch %d/%d: %s", s.section, self.epoch, s.total_epochs,
                     ", ".join(f"{k} {v:.4g}" for k, v in record.items()
                               if isinstance(v, float) and k not in ("lr", "seconds")))
            if sample_images is not None and s.sample_every and (self.epoch % s.sample_every == 0 or last):
                png = self.run_dir / "samples" / f"epoch_{self.epoch:03d}.png"
                self.save_samples(sample_images, png)
                self.curves.image("samples", png, self.global_step)
            if self.epoch % s.checkpoint_every == 0 or last:
                self.save_checkpoint()
        self.curves.close()
        return LoopResult(self.epoch, self.global_step, self.seconds, dict(self.last_epoch))

