"""Typed configuration: YAML gives defaults, ``--set key=value`` overrides, the resolved config is dumped.

One YAML file describes a whole compression job; each stage reads its own
section. Unknown keys are errors that name the key (and the closest known one).

Example::

    cfg = load_config("configs/demo.yaml", ["train.epochs=3", "search.macs_ratio=0.2"])
    dump_config(cfg, run_dir / "config.yaml")
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import reprlib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import yaml
from .core.limits import (  # noqa: F401  (re-exported: where the config's limits were always read)
    MAX_BENCH_BATCH, MAX_IMAGE_SIDE, MAX_INT, MAX_SYNTHETIC_IMAGES, MAX_THREADS, MIN_SIZE, SIZE_MULTIPLE,
    check_image_side, image_side_ok, image_side_rule,
)
from .errors import ConfigError  # noqa: F401  (ConfigError: re-exported, coevo.config is where users look)


@dataclass
class DataConfig:
    # Folder with trainA, trainB, testA, testB. A folder you give is always used and never written
    # into. None: the built-in set in the run folder's data/ (see coevo.data.prepare.ensure_data_root).
    root: Optional[str] = None
    # unaligned: trainA/ trainB/ testA/ testB/ (CycleGAN) | aligned: train/ (val/) test/, each image A and B
    # side by side (pix2pix, coevo.data.aligned) | auto: what the folder holds (train/ without trainA/: aligned)
    layout: str = "auto"
    direction: str = "AtoB"            # aligned data: AtoB translates the left half into the right, BtoA back
    synthetic: bool = True             # build the built-in set at ``root`` when it is missing, empty or built-in
    synthetic_seed: int = 0            # the built-in set's scenes (fixed: every run seed sees the same data)
    synthetic_task: str = "snow"       # snow (the demo's) | dense (harder: more, smaller, finer-striped objects)
    #                                    | pix2pix (paired: snow scenes, A|B side by side; coevo.data.paired_synthetic)
    synthetic_n_train: int = 200
    synthetic_n_test: int = 40
    load_size: int = 64                # resize to this before cropping
    crop_size: int = 64
    flip: bool = True
    skip_bad_images: bool = False      # skip unreadable images with a warning instead of failing
    num_workers: int = 0
    val_fraction: float = 0.1          # held-out part of the training split for model selection


@dataclass
class ModelConfig:
    ngf: int = 64
    n_blocks: int = 9
    ndf: int = 64
    n_layers_d: int = 3
    # How generators run where outputs are scored (teacher and student alike): "eval", or "train" as the
    # reference's test script without --eval (BatchNorm on batch statistics, Dropout on); "auto" (the
    # default) resolves per kind of job when the config is read (resolve_reference_mode): train for
    # pix2pix (aligned data), whose published outputs come from train mode; eval for CycleGAN.
    reference_mode: str = "auto"


@dataclass
class LoopConfig:
    """The settings of the one CycleGAN loop (coevo.train.loop), shared by teacher training and fine-tuning;
    the defaults are the CycleGAN recipe's (Zhu et al. 2017), each stage overrides what differs."""

    epochs: int = 100                  # epochs at the constant learning rate
    epochs_decay: int = 100            # epochs of linear decay to zero after that
    batch_size: int = 1
    lr: float = 2e-4
    beta1: float = 0.5
    lambda_cycle: float = 10.0
    lambda_identity: float = 0.5       # times lambda_cycle
    pool_size: int = 50
    max_steps_per_epoch: int = 0       # 0: the whole epoch
    sample_every: int = 1              # epochs between sample grids
    sample_images: int = 4             # rows of the sample grids (fixed training images)
    checkpoint_every: int = 1          # epochs between checkpoints
    log_every: int = 100               # steps between log.jsonl records
    amp: str = "none"                  # none | bf16 (bfloat16 autocast; CUDA only, see coevo.core.precision)


@dataclass
class TrainConfig(LoopConfig):
    """Teacher training: the CycleGAN recipe (Zhu et al. 2017)."""

    init_gain: float = 0.02            # std of the N(0, gain) weight init (reference init_type='normal')


@dataclass
class SearchConfig:
    """Co-evolutionary search (Shu et al. 2019); see docs/search.md.

    The paper's settings are population 32, 50 generations, roulette selection,
    one elite, operator probabilities copy/crossover/mutation 0.2/0.7/0.1 with a
    segment-flip mutation, and a compression reward. The defaults here are the
    ones measured best on the demo task (docs/search.md, "Choosing the defaults").
    """

    population: int = 32
    generations: int = 50
    selection: str = "tournament"      # tournament | roulette (paper)
    tournament_size: int = 3
    elitism: int = 1                   # best genomes copied unchanged into the next generation
    # Each child is made by exactly one operator, drawn with these probabilities
    # (normalised to sum to 1), as in the paper: copy of a selected parent,
    # crossover of two selected parents (two children), mutation of one.
    copy_prob: float = 0.2
    crossover: str = "two_point"       # two_point (paper) | uniform
    crossover_prob: float = 0.7
    mutation: str = "bit_flip"         # bit_flip | segment_flip (paper)
    mutation_prob: float = 0.1
    flip_bits: float = 4.0             # bit_flip: expected number of flipped bits per mutation
    init_density: float = 0.5          # initial keep probability per bit (then repaired to the budget)
    seed_with_l1: bool = True          # put the L1-norm genome at the budget into the first population
    repair: str = "importance"         # drop which channels to meet the budget: importance (L1 norm) | random
    tied: bool = False                 # paper layout: inner block channels tied to the trunk
    min_channels: int = 1
    # none | uniform: no group narrower than the narrowest group of the uniformly narrow network at the
    # budget (every group at one width fraction); the effective floor is recorded in search.json
    width_floor: str = "none"
    channel_multiple: int = 1          # round kept channel counts to a multiple (CPU vector width)
    # auto (discriminator when the teacher has both discriminators, else lpips when its backbone
    # file is present, else teacher-features) | discriminator | lpips | teacher-features | l1
    perceptual: str = "auto"
    lpips_net: str = "alex"            # lpips backbone: alex | vgg
    weight_perceptual: float = 1.0
    weight_cycle: float = 10.0
    compute: str = "budget"            # budget (hard MAC cap) | latency (hard cap on measured time) | reward (paper)
    macs_ratio: float = 0.25           # budget: max MACs relative to the teacher
    # latency: a cap on the latency a per-layer lookup table predicts (coevo.deploy.latency), measured once
    # per machine, target and thread count and cached (or given as latency_table). MACs stay reported.
    latency_ratio: float = 0.25        # latency: max latency relative to the teacher's
    latency_ms: float = 0.0            # latency: an absolute cap in ms instead (0: use latency_ratio)
    latency_target: str = "cpu"        # latency: cpu (torch eager) | onnxruntime (ONNX Runtime, CPU) | cuda
    latency_threads: int = 1           # latency: CPU threads the table is measured with
    latency_size: int = 256            # latency: image size the table is measured at
    latency_table: Optional[str] = None  # latency: a table file from `coevo bench --latency-table`
    weight_compute: float = 0.001      # reward: the paper's weight per dropped filter (x eval images / 500)
    eval_images: int = 16              # evaluation batch per domain, drawn from the training split
    # proxy: score the inherited weights as they are | trained: first distil each candidate towards
    # the teacher for trained_steps Adam steps (ranks genomes more like fine-tuning does, at a
    # much higher cost; measured in docs/search.md, "Does the fitness predict the end result") |
    # supernet: score the weights a supernet trained once for all masks gives each candidate
    # (the supernet stage of compress/demo, or `coevo supernet` + `coevo search --supernet`)
    fitness: str = "proxy"
    trained_steps: int = 20
    trained_lr: float = 1e-3
    # After the last generation, re-score the rerank_top best distinct genomes of each population
    # (and the L1 seed) with the trained fitness and return the best by it, at 2 (top + 1) trained
    # evaluations (0: off; measured against the proxy's own choice after fine-tuning, no consistent
    # gain: benchmarks/README.md, "frontier.py")
    rerank_top: int = 0
    # Evaluation images are resized to eval_size x eval_size. 0: the teacher's training size
    # (recorded by coevo teacher runs), else data.crop_size. The search logs what it costs.
    eval_size: int = 0
    amp: str = "none"                  # none | bf16 (bfloat16 autocast of the evaluations; CUDA only)


@dataclass
class Pix2PixConfig:
    """pix2pix (Isola et al. 2017) on aligned data (coevo.train.pix2pix): a U-Net generator and a PatchGAN
    on the 6-channel input|output pair, with the reference's defaults; the loop settings come from ``train``."""

    num_downs: int = 0                 # U-Net down-samplings; 0: log2(data.crop_size), at most 8 (unet_256 at 256 px)
    norm: str = "batch"                # batch | instance | none (generator and discriminator)
    # The reference trains with dropout unless --no_dropout; a U-Net file has no dropout key, so a reference
    # latest_net_G.pth is loaded with this value
    dropout: bool = True
    gan_mode: str = "vanilla"          # vanilla (the reference's pix2pix: BCE on logits) | lsgan
    lambda_l1: float = 100.0           # L1 to the paired target (a compressed student's distillation: finetune.lambda_distill)


@dataclass
class SupernetConfig:
    """The weight-sharing supernet behind ``search.fitness: supernet`` (coevo.train.supernet).

    One full-width network per generator, distilled (L1 of outputs) towards the teacher while each
    step samples channel masks of every group: the full network, one at the search's budget and
    ``random_masks`` in between (the sandwich rule), all drawn as the search draws its genomes.
    """

    steps: int = 2000                  # optimiser steps per generator
    batch_size: int = 1                # training images per step (each seen under every sampled mask)
    random_masks: int = 2              # masks between the budget and the full network, per step
    lr: float = 2e-4
    beta1: float = 0.5
    # teacher outputs of every training image and its mirror image are computed once when they take
    # at most this many megabytes (0: never; the teacher then runs on every step)
    teacher_cache_mb: float = 512.0
    checkpoint_every: int = 100        # steps between checkpoints (resume points)
    log_every: int = 50                # steps between log.jsonl records


@dataclass
class FinetuneConfig(LoopConfig):
    """Fine-tuning the slim pair: CycleGAN losses against the teacher's discriminators + distillation."""

    epochs: int = 5                    # epochs at the constant learning rate
    epochs_decay: int = 0              # epochs of linear decay to zero after that
    lambda_distill: float = 10.0       # L1 to the teacher's output; 0 disables (the paper has none)
    # Intermediate-feature distillation (GAN Compression, OMGD): the student's activations after
    # down2, the middle and last residual blocks and up1, mapped to the teacher's by learned 1x1
    # convolutions, MSE; 0 disables (the default: measured in docs/search.md).
    lambda_feature: float = 0.0
    # gan: the CycleGAN losses against discriminators, plus distillation (the paper's recipe);
    # distill: output (+ feature) distillation to the teacher only, no discriminators, the
    # teacher's outputs cached per training image and flip (coevo.train.distill)
    mode: str = "gan"
    # teacher: the students start from the teacher's surviving filters | scratch: the same widths,
    # weights drawn afresh (the control of "Rethinking the value of network pruning")
    init: str = "teacher"
    select_on: str = "val"             # model selection on the held-out training split, never test


@dataclass
class ExportConfig:
    # torchscript is opt-in (torch.jit is deprecated); torch-export (.pt2) is the PyTorch format
    formats: List[str] = field(default_factory=lambda: ["torch-export", "onnx", "safetensors"])
    check_size: int = 96               # parity check at a size other than the training size
    opset: int = 18                    # the dynamo ONNX exporter needs >= 18
    target: str = "auto"               # cpu, cuda, or auto: cuda when device is cuda (coevo.deploy.targets)
    int8: bool = True                  # cpu target: try static INT8, deployed only if it passes its check
    calibration_images: int = 32       # training images of the input domain that calibrate INT8
    cuda_dtype: str = "float16"        # cuda target: float16 or bfloat16


@dataclass
class BenchConfig:
    size: int = 256
    batch: int = 1
    threads: int = 0                   # 0: torch's default
    warmup: int = 3
    repeats: int = 15


@dataclass
class Config:
    name: str = "coevo"
    seed: int = 0
    device: str = "cpu"
    threads: int = 0                   # torch CPU threads for every stage; 0: torch's default (one per core)
    log: str = "jsonl"                 # jsonl, or tensorboard: curves in RUN/tensorboard too (coevo.train.curves)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    pix2pix: Pix2PixConfig = field(default_factory=Pix2PixConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    supernet: SupernetConfig = field(default_factory=SupernetConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)

    def __post_init__(self) -> None:
        resolve_reference_mode(self)  # a config built in Python: by the data it was built with


# The test-time mode model.reference_mode "auto" takes per kind of job: the reference's test script runs
# models in train mode unless --eval, and published pix2pix results come from it; a CycleGAN teacher
# (instance norm, no dropout) gives the same outputs either way, and coevo has always scored it in eval.
AUTO_REFERENCE_MODE = {"pix2pix": "train", "cyclegan": "eval"}


def resolve_reference_mode(cfg: "Config", kind: Optional[str] = None) -> str:
    """``cfg.model.reference_mode``, with ``auto`` replaced in ``cfg`` by :data:`AUTO_REFERENCE_MODE` of
    ``kind`` (``pix2pix`` or ``cyclegan``; None: ``pix2pix`` for aligned data, else ``cyclegan``).
    ``train`` and ``eval`` stay as they are. Resolved when a config is read, so a run's config.yaml
    records the mode it ran in."""
    if cfg.model.reference_mode == "auto":
        if kind is None:
            from .data.aligned import resolve_layout

            kind = "pix2pix" if resolve_layout(cfg.data) == "aligned" else "cyclegan"
        cfg.model.reference_mode = AUTO_REFERENCE_MODE[kind]
    return cfg.model.reference_mode


# ----------------------------------------------------------------------------- machinery
# Deeper YAML is no config: a deep enough one exhausts Python's recursion limit in any code that walks it.
MAX_YAML_DEPTH = 16
MAX_CONFIG_BYTES = 2 ** 20


def _depth(value: Any, limit: int) -> int:
    """How deeply lists and mappings nest in ``value`` (0 for a scalar), counted up to ``limit + 1``.

    Level by level, each object once per level: YAML aliases make shared (even self-containing)
    objects, and a walk along every path through them takes exponential time (the billion laughs).
    """
    depth, frontier = 0, [value]
    while depth <= limit:
        containers = {id(n): n for n in frontier if isinstance(n, (dict, list, tuple))}
        if not containers:
            return depth
        depth += 1
        frontier = [c for n in containers.values() for c in ([*n.keys(), *n.values()] if isinstance(n, dict) else n)]
    return depth


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 3, 200, 200
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 8


def _shown(value: Any) -> str:
    """``repr(value)`` for a message, cut short: a value can be a huge or self-containing structure."""
    return _REPR.repr(value)


def _load_yaml(text: str, where: str) -> Any:
    """``yaml.safe_load(text)`` with every failure a ConfigError naming ``where``: syntax errors, tags
    such as ``!!python/object`` (the safe loader refuses them) and nesting too deep to be a config."""
    try:
        data = yaml.safe_load(text)
    except RecursionError:
        raise ConfigError(f"{where} nests lists or mappings too deeply to be a config") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{where} is not valid YAML: {' '.join(str(e).split())}") from None
    if _depth(data, MAX_YAML_DEPTH) > MAX_YAML_DEPTH:
        raise ConfigError(f"{where} nests lists or mappings more than {MAX_YAML_DEPTH} levels deep; "
                          "a config needs two (section, key)")
    return data


def _coerce(value: Any, typ: Any, key: str) -> Any:
    origin = typing.get_origin(typ)
    if origin is typing.Union:  # Optional[X]
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        return None if value is None else _coerce(value, args[0], key)
    if origin in (list, List):
        (inner,) = typing.get_args(typ) or (Any,)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}' expects a list, got {_shown(value)}")
        return [_coerce(v, inner, key) for v in value]
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
            return value.lower() in ("true", "yes", "1", "on")
        raise ConfigError(f"config key '{key}' expects true/false, got {_shown(value)}")
    if typ in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"config key '{key}' expects a number, got {_shown(value)}")
        if isinstance(value, (dict, list)):
            raise ConfigError(f"config key '{key}' expects {typ.__name__}, got {_shown(value)}")
        try:
            out = typ(value)
        except (TypeError, ValueError, OverflowError):  # OverflowError: int(inf)
            raise ConfigError(f"config key '{key}' expects {typ.__name__}, got {_shown(value)}") from None
        if typ is int and isinstance(value, float) and value != int(value):
            raise ConfigError(f"config key '{key}' expects an integer, got {_shown(value)}")
        if typ is int and abs(out) > MAX_INT:  # torch and numpy take 64-bit integers
            raise ConfigError(f"config key '{key}' is out of range: {_shown(value)}")
        return out
    if typ is str:
        if isinstance(value, (dict, list)):  # str() would make a path like "{'x': 1}"
            raise ConfigError(f"config key '{key}' expects a single value, got {_shown(value)}")
        return str(value)
    return value


def _apply(obj: Any, data: Dict[str, Any], prefix: str = "") -> None:
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in names:
            close = difflib.get_close_matches(str(key), sorted(names), n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
            raise ConfigError(f"unknown config key '{full}'{hint}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"config key '{full}' is a section; give a mapping, got {_shown(value)}")
            _apply(current, value, prefix=f"{full}.")
        else:
            setattr(obj, key, _coerce(value, hints[key], full))


def parse_override(text: str) -> Dict[str, Any]:
    """``"search.macs_ratio=0.2"`` -> ``{"search": {"macs_ratio": 0.2}}`` (value parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value, e.g. search.macs_ratio=0.2")
    key, raw = text.split("=", 1)
    value = _load_yaml(raw, f"the value of --set {key.strip()}") if raw.strip() else ""
    out: Dict[str, Any] = {}
    node = out
    parts = key.strip().split(".")
    if len(parts) > 2 or not all(p.isidentifier() for p in parts):
        shown = key.strip() if len(key) <= 80 else key.strip()[:60] + "..."
        raise ConfigError(f"override --set {shown!r} is not a config key; keys look like search.macs_ratio "
                          "(a section and a name) or seed")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    return out


def config_from_dict(data: Dict[str, Any] | None, overrides: Sequence[str] = ()) -> Config:
    cfg = Config()
    cfg.model.reference_mode = ModelConfig().reference_mode  # "auto" until the data are known
    _apply(cfg, data or {})
    for o in overrides:
        _apply(cfg, parse_override(o))
    validate(cfg)
    resolve_reference_mode(cfg)
    return cfg


def load_config(path: Optional[str | Path] = None, overrides: Sequence[str] = ()) -> Config:
    """Read a YAML config (or the defaults when ``path`` is None) and apply ``key=value`` overrides."""
    data: Dict[str, Any] = {}
    if path is not None:
        from .core.files import NotAFileError, regular_file

        path = Path(path)
        if not path.exists():
            raise ConfigError(f"config file not found: {path}")
        if path.is_dir():
            raise ConfigError(f"config {path} is a folder; give a YAML file, e.g. {path / 'config.yaml'}")
        try:
            regular_file(path, "config")
        except NotAFileError as e:
            raise ConfigError(str(e)) from None
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"config {path} is {path.stat().st_size / 2 ** 20:.1f} MB; a config is a few KB of "
                              "YAML: give the right file")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise ConfigError(f"{path} is not a text (UTF-8) file; give a YAML config") from e
        data = _load_yaml(text, str(path))
        if data is None:
            raise ConfigError(f"config {path} is empty; give a YAML config with at least one section, "
                              "e.g. a copy of configs/demo.yaml")
        if not isinstance(data, dict):
            raise ConfigError(f"{path} must hold a mapping of sections, got {type(data).__name__}")
    return config_from_dict(data, overrides)


def config_to_dict(cfg: Config) -> Dict[str, Any]:
    return dataclasses.asdict(cfg)


def flatten(d: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    """``{"search": {"population": 32}}`` -> ``{"search.population": 32}``."""
    out: Dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


# Keys that may differ when a run is resumed: they change neither the data nor the weights
# nor the schedule (where the data lies is checked by its fingerprint, not its path;
# CPU threads change results only by float rounding).
RESUME_SAFE_KEYS = frozenset({
    "name", "threads", "log", "data.root", "data.num_workers",
    "train.sample_every", "train.sample_images", "train.log_every",
    "finetune.sample_every", "finetune.sample_images", "finetune.log_every",
})


def diff_configs(old: Config | Dict[str, Any], new: Config | Dict[str, Any],
                 sections: Optional[Sequence[str]] = None, ignore: Sequence[str] = ()) -> List[str]:
    """``"key (old -> new)"`` for every key that differs between two configs: the one config diff.

    ``sections``: only keys whose first part is listed (a section such as ``"search"``
    or a top-level key such as ``"seed"``); None: every key. Keys in
    :data:`RESUME_SAFE_KEYS` and ``ignore`` never count; a key one side lacks counts as its default.
    Every resume check uses this function.
    """
    a = flatten(old if isinstance(old, dict) else config_to_dict(old))
    b = flatten(new if isinstance(new, dict) else config_to_dict(new))
    # a key one side lacks was recorded before coevo had it: it ran as the key's default (an upgrade is no edit)
    default = flatten(config_to_dict(Config()))
    out = []
    for key in sorted(set(a) | set(b)):
        if key in RESUME_SAFE_KEYS or key in ignore or (sections is not None and key.split(".")[0] not in sections):
            continue
        was, now = a.get(key, default.get(key)), b.get(key, default.get(key))
        if was != now:
            out.append(f"{key} ({was!r} -> {now!r})")
    return out


def dump_config(cfg: Config, path: str | Path) -> Path:
    from .core.files import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    return Path(path)


# ----------------------------------------------------------------------------- validation
# validate() checks every stage's settings when a config is loaded, so that a typo fails
# before the first minute of work. Numeric rules are (test, what is allowed) per key;
# names are checked against the registries that build the objects (see _choices).
Rule = Tuple[Callable[[Any], bool], str]


def _at_least(low: float) -> Rule:
    return (lambda v: v >= low), f">= {low}"


def _above(low: float) -> Rule:
    return (lambda v: v > low), f"> {low}"


def _interval(low: float, high: float, ends: str = "[]") -> Rule:
    def ok(v: Any) -> bool:
        return (v >= low if ends[0] == "[" else v > low) and (v <= high if ends[1] == "]" else v < high)

    return ok, f"in {ends[0]}{low}, {high}{ends[1]}"


# The sections with an ``amp`` key (mixed precision, see coevo.core.precision).
AMP_SECTIONS = ("train", "finetune", "search")

_MULTIPLE_OF_4: Rule = (image_side_ok, image_side_rule())
# Sizes a generator runs at on its own (no discriminator): the check, benchmark and latency sizes.
_GENERATOR_SIDE: Rule = ((lambda v: image_side_ok(v, MIN_SIZE)), image_side_rule(MIN_SIZE))


def discriminator_min_size(n_layers: int) -> int:
    """The smallest square input (a multiple of 4) a PatchGAN discriminator with ``n_layers`` stride-2
    convolutions scores: each halves the side, and the two 4x4 convolutions after them need a side of 3
    (InstanceNorm needs more than one value per channel)."""
    side = 3 * 2 ** n_layers
    return side + (-side) % SIZE_MULTIPLE
_PROBABILITY = _interval(0, 1)

_LOOP_RULES: Dict[str, Rule] = {
    "epochs": _at_least(0), "epochs_decay": _at_least(0), "batch_size": _at_least(1), "lr": _above(0),
    "beta1": _interval(0, 1, "[)"), "lambda_cycle": _at_least(0), "lambda_identity": _at_least(0),
    "pool_size": _at_least(0), "max_steps_per_epoch": _at_least(0), "sample_every": _at_least(0),
    "sample_images": _at_least(1), "checkpoint_every": _at_least(1), "log_every": _at_least(1),
}

RULES: Dict[str, Rule] = {
    "seed": _at_least(0),
    "threads": _interval(0, MAX_THREADS),
    "data.synthetic_seed": _at_least(0),
    "data.synthetic_n_train": _interval(1, MAX_SYNTHETIC_IMAGES),
    "data.synthetic_n_test": _interval(1, MAX_SYNTHETIC_IMAGES),
    "data.load_size": _interval(4, MAX_IMAGE_SIDE),
    "data.crop_size": _MULTIPLE_OF_4,
    "data.num_workers": _at_least(0),
    "data.val_fraction": _interval(0, 1, "[)"),
    "model.ngf": _at_least(1),
    "model.n_blocks": _at_least(1),
    "model.ndf": _at_least(1),
    "model.n_layers_d": _at_least(1),
    **{f"train.{k}": r for k, r in _LOOP_RULES.items()},
    "train.init_gain": _above(0),
    "pix2pix.num_downs": ((lambda v: v == 0 or 5 <= v <= 16), "0 (from data.crop_size) or in [5, 16]"),
    "pix2pix.lambda_l1": _at_least(0),
    "search.population": _at_least(2),
    "search.generations": _at_least(0),
    "search.tournament_size": _at_least(1),
    "search.elitism": _at_least(0),
    "search.copy_prob": _PROBABILITY,
    "search.crossover_prob": _PROBABILITY,
    "search.mutation_prob": _PROBABILITY,
    "search.flip_bits": _above(0),
    "search.init_density": _interval(0, 1, "(]"),
    "search.min_channels": _at_least(1),
    "search.channel_multiple": _at_least(1),
    "search.weight_perceptual": _at_least(0),
    "search.weight_cycle": _at_least(0),
    "search.macs_ratio": _interval(0, 1, "(]"),
    "search.latency_ratio": _interval(0, 1, "(]"),
    "search.latency_ms": _at_least(0),
    "search.latency_threads": _interval(1, MAX_THREADS),
    "search.latency_size": _GENERATOR_SIDE,
    "search.weight_compute": _at_least(0),
    "search.eval_images": _at_least(1),
    "search.trained_steps": _at_least(1),
    "search.trained_lr": _above(0),
    "search.rerank_top": _at_least(0),
    "supernet.steps": _at_least(0),
    "supernet.batch_size": _at_least(1),
    "supernet.random_masks": _at_least(0),
    "supernet.lr": _above(0),
    "supernet.beta1": _interval(0, 1, "[)"),
    "supernet.teacher_cache_mb": _at_least(0),
    "supernet.checkpoint_every": _at_least(1),
    "supernet.log_every": _at_least(1),
    "search.eval_size": ((lambda v: v == 0 or _GENERATOR_SIDE[0](v)),
                         f"0 (the teacher's training size) or {_GENERATOR_SIDE[1]}"),
    **{f"finetune.{k}": r for k, r in _LOOP_RULES.items()},
    "finetune.lambda_distill": _at_least(0),
    "finetune.lambda_feature": _at_least(0),
    "export.check_size": _GENERATOR_SIDE,
    "export.opset": _interval(7, 23),  # what torch's ONNX exporters implement
    "export.calibration_images": _at_least(1),
    "bench.size": _GENERATOR_SIDE,
    "bench.batch": _interval(1, MAX_BENCH_BATCH),
    "bench.threads": _interval(0, MAX_THREADS),
    "bench.warmup": _at_least(0),
    "bench.repeats": _at_least(1),
}


def _choices() -> Dict[str, Sequence[str]]:
    """Allowed names per key. Registries are read, not copied, so a new metric or operator is accepted."""
    from .data.synthetic import TASKS
    from .deploy.targets import CUDA_DTYPES, DEPLOYERS
    from .deploy.export import WRITERS
    from .deploy.latency import LATENCY_TARGETS
    from .evaluation.perceptual import LPIPS_BACKBONES, PERCEPTUAL_METRICS
    from .core.precision import AMP_MODES
    from .search.operators import CROSSOVERS, MUTATIONS, SELECTIONS

    from .train.curves import LOGGERS

    return {
        "log": LOGGERS,
        **{f"{section}.amp": AMP_MODES for section in AMP_SECTIONS},
        "search.selection": sorted(SELECTIONS.names()),
        "search.crossover": sorted(CROSSOVERS.names()),
        "search.mutation": sorted(MUTATIONS.names()),
        "search.repair": ("importance", "random"),
        "search.compute": ("budget", "latency", "reward"),
        "search.latency_target": LATENCY_TARGETS,
        "search.fitness": ("proxy", "trained", "supernet"),
        "search.width_floor": ("none", "uniform"),
        "model.reference_mode": ("auto", "train", "eval"),
        "data.synthetic_task": (*sorted(TASKS.names()), "pix2pix"),
        "data.layout": ("auto", "unaligned", "aligned"),
        "data.direction": ("AtoB", "BtoA"),
        "pix2pix.norm": ("batch", "instance", "none"),
        "pix2pix.gan_mode": ("vanilla", "lsgan"),
        # auto: the teacher's discriminators when it has them, else a metric that needs none
        "search.perceptual": [*sorted(PERCEPTUAL_METRICS.names()), "auto"],
        "search.lpips_net": sorted(LPIPS_BACKBONES),
        "finetune.select_on": ("val", "last"),
        "finetune.mode": ("gan", "distill"),
        "finetune.init": ("teacher", "scratch"),
        "export.formats": list(WRITERS.names()),
        "export.target": [*DEPLOYERS.names(), "auto"],
        "export.cuda_dtype": sorted(CUDA_DTYPES),
    }


def _check_value(key: str, value: Any, choices: Dict[str, Sequence[str]]) -> None:
    if value is None:
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key} must be a finite number, got {value}")
    if key in RULES:
        ok, allowed = RULES[key]
        if not ok(value):
            raise ConfigError(f"{key} must be {allowed}, got {_shown(value)}")
    if key in choices:
        names = value if isinstance(value, list) else [value]
        if not names:
            raise ConfigError(f"{key} must name at least one of {list(choices[key])}")
        for name in names:
            if name not in choices[key]:
                close = difflib.get_close_matches(str(name), list(choices[key]), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ConfigError(f"{key} must be one of {list(choices[key])}, got {_shown(name)}{hint}")


def _check_relations(section: str, s: Any) -> None:
    """Rules that tie two keys of one section together."""
    if section == "data" and s.crop_size > s.load_size:
        raise ConfigError(f"data.crop_size ({s.crop_size}) must be <= data.load_size ({s.load_size})")
    if section == "data" and s.synthetic_task == "pix2pix" and s.layout == "unaligned":
        raise ConfigError("data.synthetic_task=pix2pix is the paired built-in set (aligned layout), but "
                          "data.layout=unaligned; set data.layout=aligned (or auto), or another synthetic_task")
    if section == "search":
        if s.elitism >= s.population:
            raise ConfigError(f"search.elitism ({s.elitism}) must be smaller than search.population "
                              f"({s.population})")
        if s.copy_prob + s.crossover_prob + s.mutation_prob <= 0:
            raise ConfigError("search.copy_prob, crossover_prob and mutation_prob are all 0; "
                              "at least one must be > 0")
        if s.weight_perceptual + s.weight_cycle <= 0:
            raise ConfigError("search.weight_perceptual and search.weight_cycle are both 0; "
                              "at least one must be > 0")
        if s.width_floor != "none" and s.compute == "reward":
            raise ConfigError(f"search.width_floor={s.width_floor} is drawn from the budget, and search.compute=reward "
                              "has none; set search.compute=budget (or latency), or search.width_floor=none")


def validate_section(section: str, obj: Any) -> None:
    """ConfigError naming the key, its value and what is allowed, for one section (``""``: top level)."""
    choices = _choices()
    prefix = f"{section}." if section else ""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if not dataclasses.is_dataclass(value):
            _check_value(prefix + f.name, value, choices)
    _check_relations(section, obj)


def check_device_available(device: str) -> None:
    """ConfigError unless ``device`` names a device torch has here (cpu, cuda, cuda:N, mps)."""
    if device == "cpu":
        return
    import torch

    usage = f"device must be cpu, cuda, cuda:N or mps, got {device!r}"
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise ConfigError(usage) from None
    if dev.type == "cuda":
        n = torch.cuda.device_count()
        if n == 0:
            raise ConfigError(f"device={device} but torch sees no CUDA device here; use device=cpu")
        if dev.index is not None and dev.index >= n:
            raise ConfigError(f"device={device} but this machine has {n} CUDA device(s) "
                              f"(cuda:0 to cuda:{n - 1})")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError(f"device={device} but torch has no MPS (Apple GPU) backend here; use device=cpu")
    elif dev.type != "cpu":
        raise ConfigError(usage)


def validate(cfg: Config) -> None:
    """Check every stage's settings; ConfigError names the key, its value and what is allowed."""
    validate_section("", cfg)
    for f in dataclasses.fields(cfg):
        section = getattr(cfg, f.name)
        if dataclasses.is_dataclass(section):
            validate_section(f.name, section)
    check_device_available(cfg.device)
    min_side = discriminator_min_size(cfg.model.n_layers_d)
    for key, side in (("data.crop_size", cfg.data.crop_size),):
        if side < min_side:
            raise ConfigError(f"{key}={side} is too small for the discriminator (model.n_layers_d="
                              f"{cfg.model.n_layers_d} halves it {cfg.model.n_layers_d} times); give at least "
                              f"{min_side}, or lower model.n_layers_d")
    for section in AMP_SECTIONS:
        amp = getattr(cfg, section).amp
        if amp != "none" and not str(cfg.device).startswith("cuda"):
            raise ConfigError(f"{section}.amp={amp} needs device=cuda (bfloat16 autocast is for GPUs; on a CPU "
                              f"it is slow and changes results); with device={cfg.device} set {section}.amp=none")


# The stages a command runs, for check_resources: what it will need must be here before the first one.
COMMAND_STAGES: Dict[str, Tuple[str, ...]] = {
    "train": ("train",),
    "search": ("search",),
    "finetune": ("finetune",),
    "supernet": ("supernet",),
    "compress": ("train", "supernet", "search", "finetune", "export"),
    "demo": ("train", "supernet", "search", "finetune", "export"),
}


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def check_resources(cfg: Config, stages: Sequence[str]) -> None:
    """ConfigError for a file or device the config names that the ``stages`` will need and this machine
    lacks: the search's latency table file and the CUDA device it is measured on, the LPIPS backbone,
    a CUDA export target. Checked before the first stage, so that a run never fails on one of these
    after hours of teacher training. Kept out of :func:`validate`, which reads any run's config on any
    machine (a run folder made on a GPU machine is still read on a laptop)."""
    s = cfg.search
    if "search" in stages and s.compute == "latency":
        if s.latency_table:
            from .core.files import NotAFileError, regular_file
            from .deploy.latency import LatencyTable

            try:
                regular_file(s.latency_table, "search.latency_table")
            except FileNotFoundError:
                raise ConfigError(f"search.latency_table {s.latency_table} does not exist; measure one with "
                                  "`coevo bench --latency-table`, or leave search.latency_table unset to measure "
                                  "it at the start of the search") from None
            except NotAFileError as e:
                raise ConfigError(str(e)) from None
            LatencyTable.load(s.latency_table)  # a file that is no table fails here, not after the teacher
        elif s.latency_target == "cuda" and not _cuda_available():
            raise ConfigError("search.latency_target=cuda but torch sees no CUDA device here; measure on this "
                              "machine's CPU (search.latency_target=cpu or onnxruntime), run on a GPU machine, "
                              "or give a table measured there (search.latency_table=FILE)")
    if "search" in stages and s.perceptual == "lpips":
        from .evaluation.perceptual import check_lpips_weights

        check_lpips_weights(s.lpips_net)
    if "export" in stages:
        check_export_target(cfg.export.target, cfg.device)


def check_export_target(target: str, device: str = "cpu") -> None:
    """ConfigError when the export target is cuda and this machine has no CUDA device: its float16
    program would be checked on the CPU only, so nothing would say whether it runs on the GPU."""
    if target == "cuda" and not _cuda_available():
        raise ConfigError("export target cuda needs a CUDA device to check the float16 program on, and torch "
                          "sees none here; use target cpu (--target cpu, export.target=cpu), or run the export "
                          "on the GPU machine")
