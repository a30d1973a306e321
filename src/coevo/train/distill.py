"""Fine-tuning by distillation only (``finetune.mode: distill``): the student pair learns the teacher's outputs.

Each step: ``lambda_distill * (|G_A(a) - T_A(a)| + |G_B(b) - T_B(b)|)`` and, when
``finetune.lambda_feature > 0``, the feature term of :class:`coevo.train.loop.FeatureAdapters`.
No discriminators, no GAN, cycle or identity terms: the teacher already solved the
translation, the student only has to reproduce it, and without an adversary the target
is fixed, so the loss (and the result between seeds) varies less.

The teacher's outputs (and its feature maps when they are used) are computed once, before
the first step, for every training image in both flips (:class:`TeacherTargets`): a step
then runs the student alone. Why per (image, flip), and why distill mode uses
deterministic crops: the data loader (:class:`coevo.data.UnpairedImageDataset`) resizes to
``data.load_size``, crops ``data.crop_size`` at a random offset and flips at random. With
``load_size == crop_size`` (the built-in tasks) only the flip is random, so two entries per
image cover every sample. With random crops there are ``(load - crop + 1)^2 * 2`` distinct
inputs per image (1,922 for 286 -> 256), a cache of them would almost never hit, and a
teacher output computed at load size and then cropped is not the output on the crop: the
generator reflection-pads every layer, so pixels near the crop's border see other context.
Measured on a snow teacher of the demo's size (ngf 32, 6 blocks, 200 steps), 64 random crops
of 16 training images: the cropped load-size output differs from the output on the crop by a
mean 0.089 (about 11 grey levels; maximum 1.86, images in [-1, 1]) at 72 -> 64 px, and 0.073
(maximum 1.94) at 286 -> 256 px: far from exact. So distill mode trains on the whole image
resized to ``crop_size`` (the evaluation's preprocessing), flipped at random, and the cache is
exact by construction.

What it saves, same machine (1 thread, a student at 0.05 of that teacher's MACs, 64 px, batch 1):
a GAN-recipe step 234 ms, a distill step with the teacher live 69 ms, from the cache 52 ms; the
cache of 180 + 180 images in both flips took 21 s to build, so it pays for itself after about
1,200 steps (the demo's fine-tuning is 1,080), and it is the whole teacher cost of longer runs.

Entries are keyed by the bytes of the input image itself, so a lookup can only return the
teacher's output for exactly that input; an input the cache does not hold (none, with the
training set above) is sent through the teacher live. The cache is built image by image
(batch 1, float32, no autocast) from the teacher and the images alone, so a resumed run
rebuilds the same cache, and a cached step equals a live one to float rounding
(``tests/test_distill.py``). It is held in memory; when it would exceed
:data:`CACHE_LIMIT_BYTES` (e.g. feature maps of thousands of 256 px images) it is skipped
and every step computes the teacher live, which gives the same result at the teacher's cost.

Checkpoints, logs, exact resume and torchrun behave as in :class:`coevo.train.loop.CycleGANTrainer`
(each rank builds the same cache); students with the reference's dropout draw their masks from the run's
seeded, checkpointed stream (:meth:`coevo.train.loop.TrainerBase._seed_dropout`).
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..core import distributed
from ..core.files import atomic_torch_save
from ..core.precision import autocast
from ..errors import CheckpointError, ConfigError
from ..models.generator import scoring_mode
from . import losses
from .curves import Curves
from .loop import (
    STREAM_DROPOUT, CycleGANTrainer, EpochHook, FeatureAdapters, GeneratorPair, LoopSettings, _forward_keeping,
    linear_decay,
)

log = logging.getLogger(__name__)

RECIPE = "distill"
CACHE_LIMIT_BYTES = 4 << 30


def image_key(image: torch.Tensor) -> bytes:
    """The cache key of one CHW image: a digest of its float32 bytes (identical input, identical key)."""
    data = image.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
    return hashlib.blake2b(data, digest_size=16).digest()


def deterministic_crops(dataset):
    """A copy of a training dataset that resizes straight to ``crop_size`` (no random crop; flips stay).

    The crop offsets are still drawn (always 0), so every other random choice of a sample
    is the one the original dataset makes.
    """
    out = dataset.subset()
    out.load_size = out.crop_size
    return out


class TeacherTargets:
    """The teacher's outputs (and feature maps at ``keep``) for training inputs: cached or live.

    ``__call__(real_A, real_B)`` returns ``(T_A(real_A), feats, T_B(real_B), feats)`` on the
    inputs' device; feature dicts map ``ResnetGenerator.model`` indices to NCHW tensors.
    """

    def __init__(self, teacher: GeneratorPair, keep: Sequence[int], device: torch.device) -> None:
        self.teacher, self.keep, self.device = teacher, list(keep), torch.device(device)
        self.cache: Dict[str, Dict[bytes, Tuple[torch.Tensor, Dict[int, torch.Tensor]]]] = {"G_A": {}, "G_B": {}}
        self.hits = 0
        self.misses = 0
        self.cached = False

    @torch.no_grad()
    def _teacher(self, k: str, x: torch.Tensor):
        return _forward_keeping(getattr(self.teacher, k), x.to(self.device).float(), self.keep)

    @torch.no_grad()
    def fill(self, images: Mapping[str, Sequence[torch.Tensor]], flips: bool = True,
             limit_bytes: int = CACHE_LIMIT_BYTES) -> bool:
        """Cache the teacher on every image (``{"G_A": [CHW...], "G_B": [...]}``) and, with ``flips``,
        its mirror image. Returns False (and caches nothing) when the cache would exceed ``limit_bytes``."""
        variants = 2 if flips else 1
        n = sum(len(v) for v in images.values()) * variants
        if n == 0:
            return False
        probe_k = "G_A" if images.get("G_A") else "G_B"
        y, feats = self._teacher(probe_k, images[probe_k][0][None])
        per_entry = (y.numel() + sum(f.numel() for f in feats.values())) * 4
        if n * per_entry > limit_bytes:
            log.warning("distill: a cache of the teacher's outputs would take %.1f GiB (%d entries), over the "
                        "%.1f GiB limit: computing the teacher live at every step", n * per_entry / 2 ** 30, n,
                        limit_bytes / 2 ** 30)
            return False
        for k, items in images.items():
            for image in items:
                for x in ([image, image.flip(-1)] if flips else [image]):
                    y, feats = self._teacher(k, x[None])
                    self.cache[k][image_key(x)] = (y[0], {i: f[0] for i, f in feats.items()})
        self.cached = True
        log.info("distill: cached the teacher's outputs%s for %d training inputs (%.1f MiB)",
                 " and features" if self.keep else "", n, n * per_entry / 2 ** 20)
        return True

    @torch.no_grad()
    def _direction(self, k: str, x: torch.Tensor):
        found = [self.cache[k].get(image_key(img)) for img in x] if self.cached else [None] * len(x)
        missing = [i for i, entry in enumerate(found) if entry is None]
        self.hits += len(x) - len(missing)
        self.misses += len(missing)
        if len(missing) == len(x):
            return self._teacher(k, x)
        if missing:  # an input the cache does not hold: through the teacher now
            y, feats = self._teacher(k, x[missing])
            for j, i in enumerate(missing):
                found[i] = (y[j], {idx: f[j] for idx, f in feats.items()})
        y = torch.stack([entry[0] for entry in found]).to(x.device)
        feats = {idx: torch.stack([entry[1][idx] for entry in found]).to(x.device) for idx in self.keep}
        return y, feats

    def __call__(self, real_A: torch.Tensor, real_B: torch.Tensor):
        target_B, feats_A = self._direction("G_A", real_A)
        target_A, feats_B = self._direction("G_B", real_B)
        return target_B, feats_A, target_A, feats_B

    def stats(self) -> Dict[str, Any]:
        return {"cached": self.cached, "entries": sum(len(v) for v in self.cache.values()),
                "hits": self.hits, "misses": self.misses}


class DistillLosses(nn.Module):
    """The step's loss terms as one module whose parameters are the students' (and adapters'):
    DDP-wrapped under torchrun. The teacher's targets come in as arguments."""

    def __init__(self, students: GeneratorPair, settings: LoopSettings,
                 adapters: Optional[FeatureAdapters] = None) -> None:
        super().__init__()
        self.G_A, self.G_B = students.G_A, students.G_B
        self.adapters = adapters
        self.s = settings

    def forward(self, real_A, real_B, target_B, t_feats_A, target_A, t_feats_B):
        s = self.s
        keep = list(self.adapters.layers.values()) if self.adapters is not None else []
        fake_B, feats_A = _forward_keeping(self.G_A, real_A, keep)
        fake_A, feats_B = _forward_keeping(self.G_B, real_B, keep)
        terms: Dict[str, torch.Tensor] = {}
        if s.lambda_distill > 0:
            terms["distill_A"] = losses.l1(fake_B, target_B) * s.lambda_distill
            terms["distill_B"] = losses.l1(fake_A, target_A) * s.lambda_distill
        if self.adapters is not None:
            terms["feature_A"] = self.adapters.loss("G_A", feats_A, t_feats_A) * s.lambda_feature
            terms["feature_B"] = self.adapters.loss("G_B", feats_B, t_feats_B) * s.lambda_feature
        outputs = {"teacher G_A(real_A)": target_B, "teacher G_B(real_B)": target_A,
                   "G_A(real_A)": fake_B, "G_B(real_B)": fake_A}
        return terms, outputs


class DistillTrainer(CycleGANTrainer):
    """Trains a student :class:`GeneratorPair` to reproduce a frozen teacher pair (see the module docstring).

    Shares the loop's epochs, logs, samples, hooks and exact resume; its checkpoint holds
    the students, the adapters, one optimizer and one schedule (``"recipe": "distill"``).
    ``cache``: build the teacher cache from ``cache_images`` (``{"G_A": [CHW...], "G_B": [...]}``).
    """

    RECIPE = RECIPE

    def __init__(self, students: GeneratorPair, settings: LoopSettings, run_dir: str | Path,
                 teacher: GeneratorPair, hook: Optional[EpochHook] = None,
                 cache_images: Optional[Mapping[str, Sequence[torch.Tensor]]] = None, flips: bool = True) -> None:
        s = self.s = settings
        if s.lambda_distill <= 0 and s.lambda_feature <= 0:
            raise ConfigError(f"{s.section}.mode=distill trains on the distillation terms alone: set "
                              f"{s.section}.lambda_distill or {s.section}.lambda_feature above 0")
        self.run_dir = Path(run_dir)
        self.device = torch.device(s.device)
        self.nets = students
        for net in (students.G_A, students.G_B):
            net.to(self.device).train()
        self.teacher = teacher
        for t in (teacher.G_A, teacher.G_B):
            t.to(self.device).eval().requires_grad_(False)
        self.hook = hook
        self.adapters = None
        if s.lambda_feature > 0:
            self.adapters = FeatureAdapters({"G_A": students.G_A, "G_B": students.G_B},
                                            {"G_A": teacher.G_A, "G_B": teacher.G_B}, s.seed).to(self.device)
        extra = list(self.adapters.parameters()) if self.adapters is not None else []
        self.opt_G = torch.optim.Adam(list(students.G_A.parameters()) + list(students.G_B.parameters()) + extra,
                                      lr=s.lr, betas=(s.beta1, 0.999))
        self.sched_G = torch.optim.lr_scheduler.LambdaLR(self.opt_G, linear_decay(s.epochs, s.epochs_decay))
        self.world, self.rank = distributed.world_size(), distributed.rank()
        self.curves = Curves(self.run_dir, s.section, s.log, enabled=self.rank == 0)
        self.batch_per_rank = s.batch_size // self.world
        keep = list(self.adapters.layers.values()) if self.adapters is not None else []
        self.targets = TeacherTargets(teacher, keep, self.device)
        if cache_images is not None:
            self.targets.fill(cache_images, flips=flips)
        self._seed_dropout("dropout", STREAM_DROPOUT, students.G_A, students.G_B)  # the reference's --use_dropout
        self.generator_losses: nn.Module = DistillLosses(students, s, self.adapters)
        if self.world > 1:
            ids = [self.device.index if self.device.index is not None else torch.cuda.current_device()] \
                if self.device.type == "cuda" else None
            self.generator_losses = DistributedDataParallel(self.generator_losses, device_ids=ids)
        self.epoch = 0
        self.global_step = 0
        self.log_records = 0
        self.seconds = 0.0
        self.last_epoch: Dict[str, float] = {}

    def step_schedulers(self) -> None:
        self.sched_G.step()

    # ------------------------------------------------------------------ checkpoint
    def state_dict(self) -> Dict[str, Any]:
        return {
            **self._progress_state(),
            "nets": {k: {n: v.detach().cpu() for n, v in getattr(self.nets, k).state_dict().items()}
                     for k in ("G_A", "G_B")},
            "optimizers": {"G": self.opt_G.state_dict()},
            "schedulers": {"G": self.sched_G.state_dict()},
            **self._rng_state(),
        }

    def save_checkpoint(self) -> None:
        extra: Dict[str, Any] = {}
        self._gather_rng(extra)  # no image pools to gather: the students, one optimizer, the dropout streams
        if not distributed.is_main():
            return
        atomic_torch_save({**self.state_dict(), **extra}, self.checkpoint_path)
        log.info("checkpoint after epoch %d (step %d): %s", self.epoch, self.global_step, self.checkpoint_path)

    def load_checkpoint(self, path: Path) -> None:
        ckpt = self._read_checkpoint(path)
        try:
            for k in ("G_A", "G_B"):
                getattr(self.nets, k).load_state_dict(ckpt["nets"][k])
            if self.adapters is not None:
                self.adapters.load_state_dict(ckpt["adapters"])
            self.opt_G.load_state_dict(ckpt["optimizers"]["G"])
            self.sched_G.load_state_dict(ckpt["schedulers"]["G"])
            self._load_rng(ckpt, path)
        except (KeyError, RuntimeError, ValueError) as e:
            raise CheckpointError(f"{path} does not fit this run's networks or settings: {e}") from e
        self._restore_progress(ckpt)

    # ------------------------------------------------------------------ one step
    def step(self, real_A: torch.Tensor, real_B: torch.Tensor, epoch: int) -> Dict[str, float]:
        """One distillation update on a batch (NCHW, [-1, 1]); returns the loss terms."""
        target_B, t_feats_A, target_A, t_feats_B = self.targets(real_A, real_B)
        with autocast(self.device, self.s.amp), self._drawing_dropout():
            terms, outputs = self.generator_losses(real_A, real_B, target_B, t_feats_A, target_A, t_feats_B)
        values = self._mean_over_ranks(terms)
        self._check_finite(values, epoch, "generator", {"real_A": real_A, "real_B": real_B, **outputs})
        self.opt_G.zero_grad(set_to_none=True)
        sum(terms.values()).backward()
        self.opt_G.step()
        self.global_step += 1
        return {k: float(v) for k, v in values.items()}

    @torch.no_grad()
    def save_samples(self, images: Mapping[str, torch.Tensor], path: Path) -> None:
        """Grid of real_A | teacher | student | real_B | teacher | student (NCHW, [-1, 1]).

        The teachers run as they make the targets (frozen, eval mode); the students as they train (BatchNorm
        on batch statistics, dropout on) but leave nothing behind: no running statistics learnt from the
        samples, no draw from the training's random stream (:func:`coevo.models.generator.scoring_mode`, as
        in :meth:`coevo.train.loop.CycleGANTrainer.save_samples`), so drawing samples never changes a run's
        result."""
        from ..evaluation.viz import save_grid

        n, t = self.nets, self.teacher
        real_A, real_B = images["A"].to(self.device), images["B"].to(self.device)
        with scoring_mode(n.G_A, "train"), scoring_mode(n.G_B, "train"):
            fake_B, fake_A = n.G_A(real_A), n.G_B(real_B)
        columns = [("real_A", real_A), ("teacher_B", t.G_A(real_A)), ("fake_B", fake_B),
                   ("real_B", real_B), ("teacher_A", t.G_B(real_B)), ("fake_A", fake_A)]
        save_grid([(k, v.cpu()) for k, v in columns], path, max_rows=self.s.sample_images,
                  title=f"{self.s.section} (distill) epoch {self.epoch}")


def cache_images(dataset) -> Dict[str, List[torch.Tensor]]:
    """Every training image of each side, as the distill dataset presents it unflipped:
    ``{"G_A": [A images], "G_B": [B images]}`` (CHW in [-1, 1])."""
    plain = dataset.subset(augment=False)
    return {"G_A": [plain[i]["A"] for i in range(len(plain.A_paths))],
            "G_B": [plain[i]["B"] for i in range(len(plain.B_paths))]}
