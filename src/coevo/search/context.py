"""Everything a fitness evaluation needs, computed once per search.

The official code reloaded four checkpoints and re-ran the full teacher on
every validation image for every candidate. Here the evaluation batch, the
teacher's outputs and their perceptual embeddings are computed once and held
in a :class:`SearchContext`; a candidate then costs one forward of its slim
network, one of the partner's slim network (cycle term) and one of the
perceptual metric.

Names: ``G_A`` (the paper's G_AB) maps domain A to B, ``G_B`` maps B to A.
For ``G_A`` the inputs are the domain-A evaluation images, its outputs live in
domain B and are judged with ``D_A`` (the discriminator of domain B images) or,
for a teacher without discriminators and the ``teacher-features`` metric, in the
features of ``G_B``'s encoder (the teacher network that reads domain B), and the
cycle goes back through ``G_B``.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..models import NLayerDiscriminator, ResnetGenerator, load_discriminator, load_generator
from ..models.teacher import TeacherPaths
from ..models.unet import UnetGenerator
from ..evaluation.perceptual import Embedding, PerceptualMetric, build_perceptual, resolve_perceptual
from ..core.limits import image_side_ok, image_side_rule
from ..core.precision import autocast
from ..errors import ConfigError
from ..prune import BudgetError, count_macs, filter_importance, min_macs, teacher_budget

if TYPE_CHECKING:
    from ..deploy.latency import LatencyTable

log = logging.getLogger(__name__)

DIRECTIONS: Tuple[str, str] = ("G_A", "G_B")
PARTNER: Dict[str, str] = {"G_A": "G_B", "G_B": "G_A"}
# MACs are priced and reported for one 1x3x256x256 forward in the published
# convention; the ratio to the teacher does not depend on the size.
MACS_SIZE = 256
MACS_CONVENTION = "published"

def macs_side(arch) -> int:
    """The side MACs are priced at for ``arch``: :data:`MACS_SIZE`, or a U-Net's own size multiple where that is
    larger (a 9-level U-Net runs at multiples of 512 only); the MACs of a U-Net are its own layer table's."""
    from ..models.family import size_multiple

    return max(MACS_SIZE, size_multiple(arch))


_EVAL_STREAM = 3  # rng stream tag for picking evaluation images (distinct from coevo.data's tags)


@dataclass
class Budget:
    """The compute constraint: ``max_macs`` (None in reward and latency mode) at ``size`` x ``size``.

    Latency mode (``search.compute=latency``): ``max_ms`` caps the latency a
    :class:`~coevo.deploy.latency.LatencyTable` predicts, ``teacher_ms`` is the teacher's.
    """

    teacher_macs: int
    max_macs: Optional[int]
    macs_ratio: Optional[float]
    size: int = MACS_SIZE
    convention: str = MACS_CONVENTION
    latency_table: Optional["LatencyTable"] = None
    max_ms: Optional[float] = None
    teacher_ms: Optional[float] = None
    # the fewest channels any group keeps: search.min_channels, raised by search.width_floor=uniform
    min_channels: int = 1

    @property
    def kind(self) -> str:
        return "latency" if self.latency_table is not None else "macs" if self.max_macs is not None else "none"


@dataclass
class DirectionContext:
    """One generator's side of the search.

    ``inputs``: evaluation images of the source domain, NCHW in [-1, 1];
    ``target``: the metric's embedding of ``teacher(inputs)``; ``teacher_output``:
    ``teacher(inputs)`` itself (what the trained fitness distils towards).
    """

    name: str
    teacher: ResnetGenerator
    inputs: torch.Tensor
    target: Embedding
    metric: PerceptualMetric
    importance: Dict[str, np.ndarray]
    teacher_output: Optional[torch.Tensor] = None
    # the network candidates take their weights from (search.fitness=supernet: the supernet's); None: the teacher
    weights: Optional[ResnetGenerator] = None

    @property
    def partner(self) -> str:
        return PARTNER[self.name]

    @property
    def source(self) -> ResnetGenerator:
        """The full-width network a genome's slim network is cut from."""
        return self.teacher if self.weights is None else self.weights


@dataclass
class SearchContext:
    """Frozen inputs of every fitness evaluation (see the module docstring)."""

    directions: Dict[str, DirectionContext]
    budget: Budget
    metric_name: str
    device: torch.device
    amp: str = "none"  # search.amp: bf16 autocast of every network forward (coevo.core.precision)
    # search.fitness=trained: each candidate is first distilled towards the teacher for this
    # many Adam steps on the evaluation batch (0: the proxy fitness, inherited weights as they are)
    trained_steps: int = 0
    trained_lr: float = 1e-3
    supernet: Optional[str] = None  # search.fitness=supernet: the folder candidates take their weights from

    def __getitem__(self, name: str) -> DirectionContext:
        return self.directions[name]


def floor_channels(arch, min_channels: int, width_floor: str, max_cost: float, size: int, cost=None) -> int:
    """The fewest channels a group may keep: ``min_channels``, or with ``width_floor="uniform"`` at least the
    narrowest group of the uniformly narrow network under ``max_cost`` (:func:`coevo.prune.budget.uniform_widths`):
    on the evidence benchmark the narrowest group's width tracked the fine-tuned students' held-out fidelity,
    and a search left free leaves groups of 2-5 channels there."""
    if width_floor == "none":
        return int(min_channels)
    if width_floor != "uniform":
        raise ConfigError(f"search.width_floor must be none or uniform, got {width_floor!r}")
    from ..prune.budget import uniform_widths

    try:
        narrowest = min(uniform_widths(arch, max_cost, size, convention=MACS_CONVENTION, cost=cost).values())
    except BudgetError:
        return int(min_channels)  # nothing fits even one channel per group: the budget check says so
    return max(int(min_channels), int(narrowest))


def check_budget(arch, macs_ratio: float, min_channels: int, width_floor: str = "none") -> Budget:
    """The MAC budget for ``macs_ratio`` of ``arch``; :class:`BudgetError` up front when no genome can meet it.
    ``width_floor``: see :func:`floor_channels` (the result's ``min_channels``)."""
    side = macs_side(arch)
    teacher = count_macs(arch, side, convention=MACS_CONVENTION)
    limit = teacher_budget(arch, macs_ratio, side, MACS_CONVENTION)
    min_channels = floor_channels(arch, min_channels, width_floor, limit, side)
    floor = min_macs(arch, side, min_channels, MACS_CONVENTION)
    if floor > limit:
        raise BudgetError(
            f"search.macs_ratio={macs_ratio} asks for at most {limit / 1e9:.4f}G MACs "
            f"({side}x{side}, {MACS_CONVENTION}) of a {teacher / 1e9:.4f}G teacher, but keeping "
            f"{min_channels} channel(s) in every group already costs {floor / 1e9:.4f}G "
            f"(ratio {floor / teacher:.4f}). Raise search.macs_ratio to at least {floor / teacher:.4f} "
            "or lower search.min_channels."
        )
    return Budget(teacher_macs=teacher, max_macs=limit, macs_ratio=float(macs_ratio), size=side,
                  min_channels=int(min_channels))


def refuse_unet(arch, what: str, instead: str) -> None:
    """:class:`ConfigError` (one line) when ``arch`` is a U-Net's and ``what`` takes the ResNet generator only."""
    from ..models.unet import UnetArch

    if isinstance(arch, UnetArch):
        raise ConfigError(f"{what} takes the ResNet generator only so far, and this teacher is a "
                          f"{arch.num_downs}-level U-Net (--netG unet_{2 ** arch.num_downs}); {instead}")


_LATENCY_INSTEAD = "set search.compute=budget (a MAC budget, search.macs_ratio) for a U-Net"


def check_latency_budget(arch, table: "LatencyTable", latency_ratio: float, latency_ms: float,
                         min_channels: int, width_floor: str = "none") -> Budget:
    """A latency cap from ``latency_ms`` (when > 0) or ``latency_ratio`` x the teacher's predicted latency;
    :class:`BudgetError` up front when even the narrowest network is predicted slower. ``width_floor``:
    see :func:`floor_channels` (the uniform network under the latency cap)."""
    from ..prune.budget import WidthFitter

    refuse_unet(arch, "the latency budget (search.compute=latency)", _LATENCY_INSTEAD)
    table.check(arch)
    teacher_ms = table.predict(arch)
    limit = float(latency_ms) if latency_ms and latency_ms > 0 else float(latency_ratio) * teacher_ms
    min_channels = floor_channels(arch, min_channels, width_floor, limit, MACS_SIZE, cost=table)
    floor = float(WidthFitter(arch, MACS_SIZE, min_channels=min_channels, cost=table).min_cost())
    if floor > limit:
        raise BudgetError(
            f"the latency budget is {limit:.1f} ms ({table.target}, {table.threads} thread(s), {table.size}px) "
            f"against a teacher predicted at {teacher_ms:.1f} ms, but keeping {min_channels} channel(s) in every "
            f"group is already predicted at {floor:.1f} ms (ratio {floor / teacher_ms:.3f}). Raise "
            "search.latency_ratio (or search.latency_ms) or lower search.min_channels.")
    return Budget(teacher_macs=count_macs(arch, MACS_SIZE, convention=MACS_CONVENTION), max_macs=None,
                  macs_ratio=None, latency_table=table, max_ms=limit, teacher_ms=teacher_ms,
                  min_channels=int(min_channels))


def latency_table_for(arch, search_cfg) -> "LatencyTable":
    """The search's latency table: ``search.latency_table`` when given, else measured once for this teacher,
    size, target and thread count and cached in ``$COEVO_CACHE`` (default ``~/.cache/coevo``)/latency."""
    from ..deploy.latency import LatencyTable, cache_path, measure_table

    refuse_unet(arch, "the latency budget (search.compute=latency)", _LATENCY_INSTEAD)
    s = search_cfg
    if s.latency_table:
        return LatencyTable.load(s.latency_table)
    path = cache_path(arch, s.latency_size, s.latency_target, s.latency_threads)
    if path.is_file():
        log.info("latency table: %s (cached)", path)
        return LatencyTable.load(path)
    log.info("measuring a latency table for this teacher (%s, %d thread(s), %dpx): a few minutes, once",
             s.latency_target, s.latency_threads, s.latency_size)
    table = measure_table(arch, size=s.latency_size, target=s.latency_target, threads=s.latency_threads)
    table.save(path)
    log.info("latency table saved to %s", path)
    return table


def search_budget(arch, search_cfg, latency: Optional["LatencyTable"] = None) -> Budget:
    """The budget a search holds genomes to, from ``search_cfg`` (compute mode, ratio or latency cap,
    ``min_channels`` raised by ``width_floor``): :class:`BudgetError` up front when no genome can meet it.
    ``latency``: the latency table when already loaded (else read or measured by :func:`latency_table_for`).
    The search, its fail-early check and the supernet's mask sampler all price genomes with this one."""
    s = search_cfg
    if s.compute == "budget":
        return check_budget(arch, s.macs_ratio, s.min_channels, s.width_floor)
    if s.compute == "latency":
        table = latency if latency is not None else latency_table_for(arch, s)
        return check_latency_budget(arch, table, s.latency_ratio, s.latency_ms, s.min_channels, s.width_floor)
    if s.compute == "reward":
        side = macs_side(arch)
        return Budget(count_macs(arch, side, convention=MACS_CONVENTION), None, None, size=side,
                      min_channels=int(s.min_channels))
    raise ConfigError(f"search.compute must be 'budget', 'latency' or 'reward', got {s.compute!r}")


def make_context(G_A: ResnetGenerator, G_B: ResnetGenerator, D_A: Optional[NLayerDiscriminator],
                 D_B: Optional[NLayerDiscriminator], x_A: torch.Tensor, x_B: torch.Tensor, search_cfg,
                 device: str | torch.device = "cpu", latency: Optional["LatencyTable"] = None,
                 weights: Optional[Dict[str, ResnetGenerator]] = None, supernet: Optional[str] = None) -> SearchContext:
    """Build the context from networks and evaluation batches (NCHW, [-1, 1]) already in memory.

    ``D_A``/``D_B`` are None for a teacher without discriminators; ``search_cfg.perceptual``
    is resolved by :func:`coevo.evaluation.perceptual.resolve_perceptual` (``auto`` -> a concrete metric).
    Raises :class:`~coevo.prune.BudgetError` (budget mode) before anything is computed
    when the MAC budget is below the narrowest allowed network. ``weights``: ``{"G_A": net, "G_B": net}``
    of the teacher's architecture that candidates are cut from instead of the teacher (the supernet of
    ``search.fitness=supernet``, read from the folder ``supernet``); the targets stay the teacher's.
    """
    s = search_cfg
    if getattr(s, "fitness", "proxy") == "supernet" and weights is None:
        raise ConfigError("search.fitness=supernet needs a supernet: train one with `coevo supernet --teacher T "
                            "--out DIR` and give it to the search (--supernet DIR), or run `coevo compress`")
    from ..models.teacher import is_matching_pair

    if not is_matching_pair(G_A.arch, G_B.arch):
        from ..errors import CheckpointError
        from ..models.teacher import describe_arch

        # One budget is priced from one architecture; the reference CycleGAN's pair always matches.
        raise CheckpointError(
            f"the teacher's G_A and G_B differ in architecture (G_A: {describe_arch(G_A.arch)}; "
            f"G_B: {describe_arch(G_B.arch)}); the search needs a matching pair, as a CycleGAN trains them"
        )
    perceptual = resolve_perceptual(s.perceptual, D_A is not None and D_B is not None, s.lpips_net)
    budget = search_budget(G_A.arch, s, latency)
    device = torch.device(device)
    amp = getattr(s, "amp", "none")
    directions = {}
    shared = None  # discriminator and teacher-features depend on the output domain
    if perceptual not in ("discriminator", "teacher-features"):
        shared = build_perceptual(perceptual, lpips_net=s.lpips_net, device=device)
    # G_A's outputs are domain-B images: D_A judges them, G_B's encoder reads them (and vice versa).
    for name, teacher, disc, reader, x in (("G_A", G_A, D_A, G_B, x_A), ("G_B", G_B, D_B, G_A, x_B)):
        teacher = teacher.to(device).eval()
        metric = shared if shared is not None else build_perceptual(
            perceptual, discriminator=None if disc is None else disc.to(device).eval(),
            feature_generator=reader.to(device).eval(), device=device)
        x = x.to(device)
        # The teacher's target at the candidates' precision: the all-keep genome scores 0 either way.
        with torch.inference_mode():
            with autocast(device, amp):
                teacher_output = teacher(x)
                target = metric.embed(teacher_output)
            target = [t.float() for t in target]
        directions[name] = DirectionContext(name, teacher, x, target, metric,
                                            filter_importance(teacher, tied=s.tied), teacher_output.float(),
                                            None if weights is None else weights[name].to(device).eval())
    metric_name = directions["G_A"].metric.name
    log.info("search context: %d+%d evaluation images at %dx%d, metric %s",
             x_A.shape[0], x_B.shape[0], x_A.shape[-2], x_A.shape[-1], metric_name)
    trained = getattr(s, "fitness", "proxy") == "trained"
    return SearchContext(directions, budget, metric_name, device, amp,
                         trained_steps=int(s.trained_steps) if trained else 0, trained_lr=float(s.trained_lr),
                         supernet=None if weights is None else (str(supernet) if supernet is not None else None))


def pick_eval_indices(train_indices: Sequence[int], k: int, seed: int, side: str = "A") -> List[int]:
    """``k`` of ``train_indices`` chosen by ``seed`` and ``side`` (all of them when there are fewer), sorted."""
    train_indices = list(train_indices)
    if k >= len(train_indices):
        return sorted(train_indices)
    rng = np.random.default_rng([_EVAL_STREAM, int(seed), "AB".index(side)])
    return sorted(int(train_indices[i]) for i in rng.choice(len(train_indices), size=k, replace=False))


def split_images(cfg, part: str = "train", k: Optional[int] = None, size: Optional[int] = None,
                 seed: Optional[int] = None, channels: Tuple[int, int] = (3, 3)) -> Tuple[torch.Tensor, torch.Tensor]:
    """``k`` images per domain (all when None) of one part of the TRAINING split, never test.

    ``part``: "train" (the part teachers and students train on; the search's
    evaluation batch) or "val" (the held-out part, as :func:`coevo.data.build_datasets`
    splits it). Images are chosen by ``seed`` (default ``cfg.seed``) and resized to
    ``size`` (default ``cfg.search.eval_size``), without crop or flip.
    Returns ``(x_A, x_B)``, NCHW in [-1, 1].
    """
    from ..data import DataError, UnpairedImageDataset, build_datasets

    d = cfg.data
    size = cfg.search.eval_size if size is None else int(size)
    seed = cfg.seed if seed is None else int(seed)
    splits = build_datasets(d, seed=seed, channels=channels)  # (A, B): 1 reads grayscale
    chosen = splits.train if part == "train" else splits.val
    if chosen is None:
        raise DataError(f"no held-out training images: data.val_fraction is {d.val_fraction}; set it above 0")
    full = UnpairedImageDataset(splits.root, "train", load_size=size, crop_size=size, flip=False,
                                skip_bad=d.skip_bad_images, augment=False, channels=channels)
    picked = {}
    for side in ("A", "B"):
        position = {p: i for i, p in enumerate(getattr(full, f"{side}_paths"))}
        pool = [position[p] for p in getattr(chosen, f"{side}_paths")]
        picked[side] = pick_eval_indices(pool, len(pool) if k is None else k, seed, side)
    subset = full.subset(picked["A"], picked["B"])
    x_A = torch.stack([subset[i]["A"] for i in range(len(picked["A"]))])
    x_B = torch.stack([subset[i]["B"] for i in range(len(picked["B"]))])
    return x_A, x_B


def eval_batch(cfg, channels: Tuple[int, int] = (3, 3)) -> Tuple[torch.Tensor, torch.Tensor]:
    """The search's evaluation batch: ``search.eval_images`` per domain from the training part of the
    training split (never the held-out part, never test), chosen by ``cfg.seed``."""
    return split_images(cfg, "train", cfg.search.eval_images, channels=channels)


def load_teacher(paths: TeacherPaths, device: str | torch.device = "cpu"):
    """``(G_A, G_B, D_A, D_B)`` in eval mode; ``D_A``/``D_B`` are None for a teacher without them."""
    nets = [load_generator(paths.G_A), load_generator(paths.G_B)]
    for n in nets:
        if not isinstance(n, (ResnetGenerator, UnetGenerator)):
            from ..errors import CheckpointError

            raise CheckpointError("the search needs the teacher as PyTorch weights, not an exported model")
    if paths.has_discriminators:
        nets += [load_discriminator(paths.D_A), load_discriminator(paths.D_B)]
    else:
        nets += [None, None]
    return tuple(None if n is None else n.to(device).eval() for n in nets)


def teacher_image_size(paths: TeacherPaths) -> Optional[int]:
    """The image size a coevo teacher run trained at (its summary.json), None when unknown."""
    summary = Path(paths.G_A).parent / "summary.json"
    try:
        info = json.loads(summary.read_text())
    except (OSError, ValueError):
        return None
    size = info.get("image_size") if info.get("stage") == "teacher" else None
    return int(size) if size else None


def eval_size_for(cfg, paths: TeacherPaths) -> int:
    """``search.eval_size`` when set; else the teacher's training size; else ``data.crop_size``."""
    if cfg.search.eval_size:
        return int(cfg.search.eval_size)
    size = teacher_image_size(paths) or int(cfg.data.crop_size)
    if not image_side_ok(size):
        raise ConfigError(f"the search would evaluate at {size}x{size}, which the generator cannot run: "
                            f"set search.eval_size to {image_side_rule()}")
    return size


def check_sizes_for(arch, cfg, search: bool = True) -> None:
    """:class:`ConfigError` (one line) unless ``data.crop_size`` (and with ``search``, ``search.eval_size`` and
    ``bench.size``) are multiples of the side ``arch``'s generator runs at (a U-Net: 2**num_downs; a ResNet: 4,
    as the config checks)."""
    from ..models.family import size_multiple

    m = size_multiple(arch)
    keys = [("data.crop_size", int(cfg.data.crop_size))]
    if search and cfg.search.eval_size:
        keys.append(("search.eval_size", int(cfg.search.eval_size)))
    if search:  # the pipeline's benchmark stage runs the pair at bench.size
        keys.append(("bench.size", int(cfg.bench.size)))
    for key, value in keys:
        if value % m:
            up = -(-value // m) * m
            also = " and data.load_size >= it" if key == "data.crop_size" else ""
            raise ConfigError(f"{key}={value} is not a multiple of {m}, which this {arch.num_downs}-level U-Net "
                              f"teacher needs (every level halves the image); set {key}={up}{also}, e.g. "
                              f"--set {key}={up}")


def build_context(cfg, teacher: TeacherPaths, supernet: Optional[str | Path] = None) -> SearchContext:
    """Load the teacher and the evaluation batch named by ``cfg`` and build the context.

    ``supernet``: the folder of a ``coevo supernet`` run of this teacher, read when
    ``search.fitness`` is ``supernet`` (:func:`coevo.search.supernet.load_supernet`).

    ``search.eval_size`` 0 is resolved by :func:`eval_size_for` (the teacher's training size).
    """
    if not cfg.search.eval_size:
        import copy

        cfg = copy.deepcopy(cfg)
        cfg.search.eval_size = eval_size_for(cfg, teacher)
    # A metric this teacher cannot serve fails before any network or image is read.
    resolve_perceptual(cfg.search.perceptual, teacher.has_discriminators, cfg.search.lpips_net)
    G_A, G_B, D_A, D_B = load_teacher(teacher, cfg.device)
    check_sizes_for(G_A.arch, cfg)
    if cfg.search.fitness == "supernet":
        refuse_unet(G_A.arch, "the supernet fitness (search.fitness=supernet)",
                    "set search.fitness=proxy or trained for a U-Net")
    if cfg.model.reference_mode == "train" and (G_A.arch.norm == "batch" or G_A.arch.dropout):
        # a batch of evaluation images in train mode would mix BatchNorm statistics and draw dropout
        # masks at random: the fitness must be one deterministic number per genome
        log.warning("model.reference_mode is train, but the search scores teacher and candidates in eval mode; "
                    "the report and `coevo evaluate --reference-mode train` measure train mode")
    # fail before reading any image (and measure a latency table once, for make_context too)
    latency = search_budget(G_A.arch, cfg.search).latency_table
    weights = None
    if cfg.search.fitness == "supernet" and supernet is not None:
        from .supernet import load_supernet, warn_if_trained_for_other_masks

        weights = load_supernet(supernet, teacher, {"G_A": G_A, "G_B": G_B})
        warn_if_trained_for_other_masks(supernet, cfg.search)
    from ..data import domain_channels

    x_A, x_B = eval_batch(cfg, domain_channels(G_A.arch))  # images as the teacher reads them (1: grayscale)
    return make_context(G_A, G_B, D_A, D_B, x_A, x_B, cfg.search, cfg.device, latency=latency, weights=weights,
                        supernet=None if supernet is None else str(Path(supernet).resolve()))
