"""Weight-sharing supernets: one network per generator whose weights serve every channel mask.

``train_supernet(cfg, out_dir, teacher)`` starts from the teacher's weights and trains each
generator at full width with channel masks applied (:class:`SupernetGenerator`): a dropped
filter's output is multiplied by zero before its InstanceNorm, so it stays exactly zero through
the norm, the ReLU and every consumer, and the masked forward equals the slim network cut from the
same weights (:func:`coevo.prune.slim`) up to float rounding. Each step, for each generator, the
batch is seen under several masks at once (one copy of the batch per mask, stacked on the batch
axis; InstanceNorm works per sample, so the copies do not mix):

* the full network, one mask at the search's budget, and ``supernet.random_masks`` masks with a
  cost drawn uniformly between the budget and the full network: the *sandwich rule*, which trains
  the largest and the smallest sub-networks on every step;
* masks drawn as the search draws its genomes (:class:`MaskSampler`): random keep bits at
  ``search.init_density``, repaired by the search's own repair (``search.repair``, MAC or latency
  budget, ``min_channels``, ``channel_multiple``, ``tied``).

The loss is the mean L1 between the masked outputs and the teacher's (distillation); the teacher's
outputs of every training image and of its mirror image are computed once when they fit
``supernet.teacher_cache_mb``. Images are the training part of the training split (never the
held-out part, never test), resized to the size the search evaluates at.

Randomness: the images, flips and masks of step ``t`` come from generators seeded by
``(seed, stream, t, generator)`` (a ``torch.Generator`` and a numpy ``Generator``, never a global
RNG), so a resumed run draws what an uninterrupted one draws, and the checkpoint (weights, Adam
states, step) makes it bit-identical at a fixed thread count.

Under torchrun every rank trains: the step's masks are dealt out to the ranks (rank r takes masks
r, r + N, ...), each scales its part of the mean loss, and the gradients are averaged in one
all-reduce, so every rank takes the same optimiser step (equal to one process's up to float
rounding); rank 0 alone writes, and the weights' digest is compared at every checkpoint.

``RUN_DIR``::

    config.yaml, inputs.json, data.json, teacher.json
    checkpoint.pt     weights, optimiser states and step, written atomically (resume point)
    log.jsonl         mean loss per generator every supernet.log_every steps
    G_A.pt, G_B.pt    the supernet weights: full-width coevo generators (architecture included)
    supernet.json     what it was trained from (teacher files and their SHA-256), sampler, losses, time
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import time
from dataclasses import fields
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from ..config import Config, SearchConfig, diff_configs, load_config
from ..core import distributed
from ..core.files import atomic_torch_save, atomic_write_text
from ..core.guards import check_finite
from ..core.inputs import InputsChangedError, file_fingerprint, teacher_files
from ..core.rng import derive_seed, torch_rng
from ..data import domain_channels
from ..core.runlock import releasing
from ..core.runs import append_jsonl, read_jsonl, truncate_jsonl, undo_failed_start
from ..errors import CheckpointError, ConfigError
from ..models import ResnetGenerator, save_generator
from ..models.io import safe_torch_load
from ..models.teacher import TeacherPaths, check_generator_pair, resolve_teacher
from ..prune import Genome, filter_importance, repair_to_budget
from ..prune.groups import conv_group_map
from ..search.context import (
    MACS_CONVENTION, MACS_SIZE, Budget, eval_size_for, refuse_unet, search_budget, split_images,
)
from ..search.supernet import DIRECTIONS, SUPERNET_FORMAT, SUPERNET_RECORD
from .common import open_run_dir

log = logging.getLogger(__name__)

# Config parts the supernet's weights depend on besides the search keys of SAMPLER_KEYS.
SUPERNET_SECTIONS = ("seed", "data", "supernet")
# The search settings that shape the masks it samples (and the image size it trains at).
SAMPLER_KEYS = ("compute", "macs_ratio", "latency_ratio", "latency_ms", "latency_target", "latency_threads",
                "latency_size", "latency_table", "tied", "min_channels", "width_floor", "channel_multiple", "repair",
                "init_density", "eval_size")
STREAM_DATA, STREAM_MASKS = 21, 22  # rng stream tags, distinct from coevo.train.loop's
HELD_STEP = 2 ** 40  # the "step" of the fixed batch and masks the finished supernet is checked on
CHECKPOINT_FORMAT = "coevo.supernet.checkpoint"


# ----------------------------------------------------------------------------- the masked network
class SupernetGenerator(nn.Module):
    """A full-width :class:`ResnetGenerator` whose producer convolutions' outputs are multiplied by
    per-sample keep masks (:meth:`use`). Without masks it is the plain network.

    Masks are applied on the convolution's output, bias included, before its InstanceNorm: a
    dropped channel is exactly zero after the norm (zero mean, zero variance: 0 / sqrt(eps)) and
    after the ReLU, the residual sums and every consumer, and the kept channels are normalised
    over themselves only, so the output equals ``slim(self.generator, genome)``'s.
    """

    def __init__(self, generator: ResnetGenerator) -> None:
        super().__init__()
        if generator.arch.norm == "batch":
            # one batch carries copies under several masks: BatchNorm's statistics would mix them
            raise ConfigError("a supernet cannot train a batch-norm generator (its masks share one batch, and "
                             "BatchNorm normalises across it); use search.fitness: proxy or trained")
        self.generator = generator
        self._keep: Dict[str, torch.Tensor] = {}
        convs = dict(generator.named_convs())
        for name, (_, group) in conv_group_map(generator.arch).items():
            if group is not None:
                convs[name].register_forward_hook(self._hook(group))

    def _hook(self, group: str):
        def apply(module, inputs, output):
            keep = self._keep.get(group)
            return output if keep is None else output * keep
        return apply

    @property
    def arch(self):
        return self.generator.arch

    def use(self, genomes: Optional[Sequence[Genome]], repeat: int = 1) -> None:
        """Mask the next forwards: a batch of ``len(genomes) * repeat`` samples, samples
        ``[k * repeat, (k + 1) * repeat)`` under ``genomes[k]``. None: no masks (full width)."""
        if not genomes:
            self._keep = {}
            return
        ref = next(self.generator.parameters())
        self._keep = {}
        for group in genomes[0].masks:
            stacked = np.stack([g.masks[group] for g in genomes]).astype(np.float32)
            keep = torch.as_tensor(stacked, device=ref.device, dtype=ref.dtype).repeat_interleave(int(repeat), 0)
            self._keep[group] = keep[:, :, None, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        keep = next(iter(self._keep.values()), None)
        if keep is not None and keep.shape[0] != x.shape[0]:
            raise ValueError(f"the masks cover {keep.shape[0]} samples, the batch holds {x.shape[0]}")
        return self.generator(x)


# ----------------------------------------------------------------------------- masks
class MaskSampler:
    """The masks of one step: the full network, one at the budget, ``n_random`` in between (see the
    module docstring). Deterministic in ``(seed, step, direction)``."""

    def __init__(self, arch, budget: Budget, search_cfg, importance: Dict[str, Dict[str, np.ndarray]],
                 n_random: int, seed: int) -> None:
        s = search_cfg
        self.arch, self.tied, self.seed, self.n_random = arch, bool(s.tied), int(seed), int(n_random)
        self.density, self.mode = float(s.init_density), s.repair
        self.min_channels, self.multiple = int(budget.min_channels), int(s.channel_multiple)
        self.importance = importance
        self.cost = budget.latency_table
        if self.cost is not None:
            self.full_cost, self.cap = float(budget.teacher_ms), float(budget.max_ms)
        else:
            self.full_cost = float(budget.teacher_macs)
            self.cap = float(budget.max_macs if budget.max_macs is not None else budget.teacher_macs)
        self.n_bits = Genome.all_keep(arch, tied=self.tied).n_bits

    def _repaired(self, direction: str, keep_prob: float, cap: float, rng: np.random.Generator) -> Genome:
        genome = Genome.from_bits(self.arch, rng.random(self.n_bits) < keep_prob, tied=self.tied)
        return repair_to_budget(genome, cap if self.cost is not None else int(cap), MACS_SIZE,
                                rng=rng if self.mode == "random" else None,
                                importance=self.importance[direction] if self.mode == "importance" else None,
                                min_channels=self.min_channels, channel_multiple=self.multiple,
                                convention=MACS_CONVENTION, cost=self.cost)

    def sample(self, direction: str, step: int) -> List[Genome]:
        rng = np.random.default_rng([STREAM_MASKS, self.seed, int(step), DIRECTIONS.index(direction)])
        masks = [Genome.all_keep(self.arch, tied=self.tied), self._repaired(direction, self.density, self.cap, rng)]
        for _ in range(self.n_random):
            cap = self.cap + rng.random() * (self.full_cost - self.cap)
            # keep bits so that the repair has a cost near the cap to trim to (MACs grow ~ width squared)
            keep_prob = min(1.0, max(self.density, math.sqrt(cap / self.full_cost)))
            masks.append(self._repaired(direction, keep_prob, cap, rng))
        return masks


# ----------------------------------------------------------------------------- data
class DistillData:
    """The training images of both domains and (when they fit) the teacher's outputs for each image
    and its mirror image. ``batch(direction, step)`` draws images and flips from ``(seed, step)``."""

    def __init__(self, cfg: Config, size: int, teachers: Dict[str, ResnetGenerator], device: torch.device) -> None:
        x_A, x_B = split_images(cfg, "train", None, size, cfg.seed, domain_channels(teachers["G_A"].arch))
        self.images = {"G_A": x_A.to(device), "G_B": x_B.to(device)}
        self.teachers, self.seed, self.flip = teachers, int(cfg.seed), bool(cfg.data.flip)
        self.batch_size = int(cfg.supernet.batch_size)
        n_bytes = 2 * sum(x.numel() * x.element_size() for x in self.images.values())
        self.cached = n_bytes <= cfg.supernet.teacher_cache_mb * 2 ** 20
        self.targets: Dict[str, torch.Tensor] = {}
        if self.cached:
            for d, x in self.images.items():
                self.targets[d] = torch.stack([self._teacher(d, x), self._teacher(d, x.flip(-1))])
        log.info("supernet data: %d+%d training images at %dx%d; teacher outputs %s", len(x_A), len(x_B), size, size,
                 f"cached ({n_bytes / 2 ** 20:.1f} MB)" if self.cached else "computed on every step")

    @torch.no_grad()
    def _teacher(self, direction: str, x: torch.Tensor, batch: int = 16) -> torch.Tensor:
        net = self.teachers[direction]
        return torch.cat([net(x[i:i + batch]) for i in range(0, len(x), batch)])

    def batch(self, direction: str, step: int) -> Tuple[torch.Tensor, torch.Tensor]:
        g = torch_rng(derive_seed(self.seed, STREAM_DATA, step, DIRECTIONS.index(direction)))
        images = self.images[direction]
        index = torch.randint(len(images), (self.batch_size,), generator=g)
        flip = (torch.rand(self.batch_size, generator=g) < 0.5) if self.flip else torch.zeros(self.batch_size,
                                                                                               dtype=torch.bool)
        index, flip = index.to(images.device), flip.to(images.device)
        x = torch.where(flip[:, None, None, None], images[index].flip(-1), images[index])
        if self.cached:
            return x, self.targets[direction][flip.long(), index]
        return x, self._teacher(direction, x)


# ----------------------------------------------------------------------------- the stage
def _sampler_settings(search_cfg) -> Dict:
    return {k: getattr(search_cfg, k) for k in SAMPLER_KEYS}


def _check_resumable(out: Path, cfg: Config) -> None:
    """Refuse a resume whose search settings would change the masks drawn (the other sections are
    compared by :func:`coevo.train.common.open_run_dir`)."""
    saved = out / "config.yaml"
    if not saved.is_file():
        return
    others = [f"search.{f.name}" for f in fields(SearchConfig) if f.name not in SAMPLER_KEYS]
    changed = diff_configs(load_config(saved), cfg, ("search",), ignore=others)
    if changed:
        raise InputsChangedError(
            f"cannot resume {out}: the search settings the masks are drawn from differ from the run's in "
            f"{', '.join(changed)}. Resume with the run's settings, or start a new run (--force or another --out)")


def _teacher_paths(out: Path, teacher) -> TeacherPaths:
    if isinstance(teacher, TeacherPaths):
        return teacher
    if teacher is not None:
        return resolve_teacher(teacher)
    saved = out / "teacher.json"
    if not saved.is_file():
        raise FileNotFoundError(f"{saved} is missing; pass --teacher (or --teacher-ab and --teacher-ba)")
    return TeacherPaths.from_dict(json.loads(saved.read_text()))


def _loss(net: SupernetGenerator, genomes: List[Genome], x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    k = len(genomes)
    net.use(genomes, repeat=x.shape[0])
    try:
        return (net(x.repeat(k, 1, 1, 1)) - target.repeat(k, 1, 1, 1)).abs().mean()
    finally:
        net.use(None)


@releasing
def train_supernet(cfg: Config, out_dir: str | Path, teacher=None, resume: bool = False, force: bool = False,
                   stop_after: Optional[int] = None) -> Path:
    """Train (or resume) the supernet pair of ``teacher`` into ``out_dir``; returns the folder.

    ``teacher``: a coevo training run, a folder of reference checkpoints or
    :class:`~coevo.models.teacher.TeacherPaths` (on resume, default: the run's teacher.json).
    ``stop_after``: stop once this many steps are done (the run stays resumable).
    """
    cfg = copy.deepcopy(cfg)  # data.root and search.eval_size are resolved below
    out = Path(out_dir)

    built = {}  # rank 0's teacher, loaded (and checked) while it prepares the folder

    def start():
        with undo_failed_start(out, resume):
            paths = _teacher_paths(out, teacher)
            built["teachers"] = _load_teacher(paths)
            cfg.search.eval_size = eval_size_for(cfg, paths)
            budget = search_budget(built["teachers"]["G_A"].arch, cfg.search)  # impossible budgets fail first
            if resume:
                _check_resumable(out, cfg)
            run = open_run_dir(cfg, out, resume, force, SUPERNET_SECTIONS, command="supernet",
                               files=teacher_files(paths))
            atomic_write_text(run / "teacher.json", json.dumps(paths.to_dict(), indent=2) + "\n")
        return run, paths, cfg, budget, _restore_point(run, resume)

    # Under torchrun rank 0 prepares the folder and reads the checkpoint; every rank trains, each on
    # its share of the step's masks, and the gradients are averaged (rank 0 alone writes).
    run, paths, cfg, budget, state = distributed.on_main(start)
    sn = cfg.supernet
    device = torch.device(cfg.device)
    teachers = {d: t.to(device) for d, t in (built.get("teachers") or _load_teacher(paths)).items()}
    arch = teachers["G_A"].arch
    importance = {d: filter_importance(teachers[d], tied=cfg.search.tied) for d in DIRECTIONS}
    sampler = MaskSampler(arch, budget, cfg.search, importance, sn.random_masks, cfg.seed)
    nets = {d: SupernetGenerator(copy.deepcopy(teachers[d])).train() for d in DIRECTIONS}
    optims = {d: torch.optim.Adam(nets[d].generator.parameters(), lr=sn.lr, betas=(sn.beta1, 0.999))
              for d in DIRECTIONS}
    step, elapsed = 0, 0.0
    if state is not None:
        for d in DIRECTIONS:
            nets[d].generator.load_state_dict(state["weights"][d])
            optims[d].load_state_dict(state["optim"][d])
        step, elapsed = int(state["step"]), float(state["elapsed"])
        log.info("resumed %s after step %d", run, step)
    data = DistillData(cfg, cfg.search.eval_size, teachers, device)
    target = sn.steps if stop_after is None else min(sn.steps, int(stop_after))
    world, rank = distributed.world_size(), distributed.rank()
    log.info("supernet: %d steps per generator, %d masks per step (full, at the budget, %d in between), "
             "batch %d%s", sn.steps, 2 + sn.random_masks, sn.random_masks, sn.batch_size,
             f", the masks shared among {world} processes" if world > 1 else "")

    def checkpoint() -> None:
        if world > 1:
            distributed.check_same(_digest(nets), f"the supernet weights after step {step}")
        distributed.on_main(atomic_torch_save, {
            "format": CHECKPOINT_FORMAT, "step": step, "elapsed": elapsed, "arch": arch.to_dict(),
            "weights": {d: nets[d].generator.state_dict() for d in DIRECTIONS},
            "optim": {d: optims[d].state_dict() for d in DIRECTIONS}}, run / "checkpoint.pt")

    sums = {d: 0.0 for d in DIRECTIONS}
    count = 0
    t0 = time.perf_counter()
    while step < target:
        for d in DIRECTIONS:
            x, y = data.batch(d, step)
            masks = sampler.sample(d, step)
            mine = masks[rank::world]
            optims[d].zero_grad(set_to_none=True)
            if mine:
                loss = _loss(nets[d], mine, x, y)
                if len(mine) != len(masks):  # this rank's part of the mean over every mask
                    loss = loss * (len(mine) * world / len(masks))
                loss.backward()
            else:
                loss = torch.zeros((), device=device)
            total = _average_gradients(nets[d].generator, loss.detach(), world)
            check_finite(total, f"the supernet's {d} distillation loss at step {step + 1}")
            optims[d].step()
            sums[d] += float(total)
        count += 1
        step += 1
        if step % sn.log_every == 0 or step == target:
            distributed.on_main(append_jsonl, run / "log.jsonl",
                                {"step": step, **{f"loss_{d}": sums[d] / count for d in DIRECTIONS}})
            sums, count = {d: 0.0 for d in DIRECTIONS}, 0
        if step % sn.checkpoint_every == 0 or step == target:
            elapsed += time.perf_counter() - t0
            t0 = time.perf_counter()
            checkpoint()
    elapsed += time.perf_counter() - t0
    if step >= sn.steps:
        distributed.on_main(_finish, run, cfg, paths, nets, data, sampler, step, elapsed, budget)
    return run


def _load_teacher(paths: TeacherPaths) -> Dict[str, ResnetGenerator]:
    G_A, G_B = check_generator_pair(paths)
    refuse_unet(G_A.arch, "the supernet (coevo supernet, search.fitness=supernet)",
                "set search.fitness=proxy or trained for a U-Net")
    if not isinstance(G_A, ResnetGenerator) or not isinstance(G_B, ResnetGenerator):
        raise CheckpointError("the supernet starts from the teacher's PyTorch weights, not an exported model")
    return {"G_A": G_A.eval(), "G_B": G_B.eval()}


def _restore_point(run: Path, resume: bool) -> Optional[Dict]:
    """The checkpoint to resume from (None: a new start), the log cut back to it."""
    ckpt_path, log_path = run / "checkpoint.pt", run / "log.jsonl"
    if resume and ckpt_path.is_file():
        state = safe_torch_load(ckpt_path)
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"{ckpt_path} is not a supernet checkpoint; start a new run")
        truncate_jsonl(log_path, sum(1 for r in read_jsonl(log_path) if r["step"] <= int(state["step"])))
        return state
    if log_path.exists():
        log_path.unlink()  # a run killed before its first checkpoint starts over
    return None


def _average_gradients(net: nn.Module, loss: torch.Tensor, world: int) -> torch.Tensor:
    """Under torchrun: every rank's gradients (and ``loss``) replaced by their mean over the ranks, in one
    all-reduce; returns the mean loss. With one process: ``loss``, gradients untouched."""
    if world <= 1:
        return loss
    params = list(net.parameters())
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in params]
                     + [loss.reshape(1).to(params[0].dtype)])
    flat = distributed.mean(flat)
    offset = 0
    for p in params:
        p.grad = flat[offset:offset + p.numel()].view_as(p).clone()
        offset += p.numel()
    return flat[-1]


def _digest(nets: Dict[str, SupernetGenerator]) -> str:
    h = hashlib.sha256()
    for d in DIRECTIONS:
        for t in nets[d].generator.state_dict().values():
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


@torch.no_grad()
def _held_l1(nets: Dict[str, SupernetGenerator], data: DistillData,
             sampler: MaskSampler) -> Dict[str, Dict[str, float]]:
    """L1 to the teacher of the full network and the step-0 budget mask on a fixed batch (a sanity figure)."""
    out = {}
    for d in DIRECTIONS:
        x, y = data.batch(d, HELD_STEP)
        full, at_budget = sampler.sample(d, HELD_STEP)[:2]
        out[d] = {"full": float(_loss(nets[d], [full], x, y)), "budget": float(_loss(nets[d], [at_budget], x, y))}
    return out


def _finish(run: Path, cfg: Config, paths: TeacherPaths, nets: Dict[str, SupernetGenerator], data: DistillData,
            sampler: MaskSampler, step: int, elapsed: float, budget: Budget) -> None:
    for d in DIRECTIONS:
        save_generator(nets[d].generator.eval(), run / f"{d}.pt", extra={"stage": "supernet", "steps": step})
    records = read_jsonl(run / "log.jsonl")
    summary = {
        "format": SUPERNET_FORMAT,
        "teacher": paths.to_dict(),
        "teacher_sha256": {d: file_fingerprint(getattr(paths, d)) for d in DIRECTIONS},
        "arch": nets["G_A"].arch.to_dict(),
        "steps": step,
        "batch_size": cfg.supernet.batch_size,
        "masks_per_step": 2 + cfg.supernet.random_masks,
        "image_size": cfg.search.eval_size,
        "teacher_outputs_cached": data.cached,
        "sampler": _sampler_settings(cfg.search),
        "budget": {"kind": budget.kind, "max_macs": budget.max_macs, "max_ms": budget.max_ms,
                   "teacher_macs": budget.teacher_macs},
        "train_seconds": round(elapsed, 2),
        "last_loss": {d: records[-1][f"loss_{d}"] for d in DIRECTIONS} if records else None,
        "l1_to_teacher": _held_l1(nets, data, sampler),
        "files": {d: f"{d}.pt" for d in DIRECTIONS},
    }
    atomic_write_text(run / SUPERNET_RECORD, json.dumps(summary, indent=2) + "\n")
    log.info("supernet done: %d steps in %.1f s; L1 to the teacher %s", step, elapsed,
             {d: {k: round(v, 4) for k, v in m.items()} for d, m in summary["l1_to_teacher"].items()})
