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
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import yaml


class ConfigError(ValueError):
    """A configuration value or key that coevo cannot use; the message names it."""


@dataclass
class DataConfig:
    root: str = "datasets/synthetic"   # folder with trainA, trainB, testA, testB
    synthetic: bool = True             # build the built-in data set at ``root`` if it is missing
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


@dataclass
class TrainConfig:
    """Teacher training: the CycleGAN recipe (Zhu et al. 2017)."""

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
    channel_multiple: int = 1          # round kept channel counts to a multiple (CPU vector width)
    perceptual: str = "discriminator"  # discriminator | lpips | l1
    lpips_net: str = "alex"            # lpips backbone: alex | vgg
    weight_perceptual: float = 1.0
    weight_cycle: float = 10.0
    compute: str = "budget"            # budget (hard MAC cap) | reward (paper)
    macs_ratio: float = 0.25           # budget: max MACs relative to the teacher
    weight_compute: float = 0.001      # reward: fitness per dropped filter (paper)
    eval_images: int = 16              # evaluation batch per domain, drawn from the training split
    eval_size: int = 64                # evaluation images are resized to eval_size x eval_size


@dataclass
class FinetuneConfig:
    """Fine-tuning the slim pair: CycleGAN losses against the teacher's discriminators + distillation."""

    epochs: int = 5                    # epochs at the constant learning rate
    epochs_decay: int = 0              # epochs of linear decay to zero after that
    batch_size: int = 1
    lr: float = 2e-4
    beta1: float = 0.5
    lambda_cycle: float = 10.0
    lambda_identity: float = 0.5       # times lambda_cycle
    lambda_distill: float = 10.0       # L1 to the teacher's output; 0 disables (the paper has none)
    pool_size: int = 50
    max_steps_per_epoch: int = 0       # 0: the whole epoch
    select_on: str = "val"             # model selection on the held-out training split, never test
    sample_every: int = 1              # epochs between sample grids
    sample_images: int = 4             # rows of the sample grids (fixed training images)
    checkpoint_every: int = 1          # epochs between checkpoints
    log_every: int = 100               # steps between log.jsonl records


@dataclass
class ExportConfig:
    formats: List[str] = field(default_factory=lambda: ["torchscript", "onnx", "safetensors"])
    check_size: int = 96               # parity check at a size other than the training size
    opset: int = 18                    # the dynamo ONNX exporter needs >= 18


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
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)


# ----------------------------------------------------------------------------- machinery
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
            raise ConfigError(f"config key '{key}' expects a list, got {value!r}")
        return [_coerce(v, inner, key) for v in value]
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
            return value.lower() in ("true", "yes", "1", "on")
        raise ConfigError(f"config key '{key}' expects true/false, got {value!r}")
    if typ in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"config key '{key}' expects a number, got {value!r}")
        try:
            out = typ(value)
        except (TypeError, ValueError):
            raise ConfigError(f"config key '{key}' expects {typ.__name__}, got {value!r}") from None
        if typ is int and isinstance(value, float) and value != int(value):
            raise ConfigError(f"config key '{key}' expects an integer, got {value!r}")
        return out
    if typ is str:
        return str(value)
    return value


def _apply(obj: Any, data: Dict[str, Any], prefix: str = "") -> None:
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in names:
            close = difflib.get_close_matches(key, sorted(names), n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
            raise ConfigError(f"unknown config key '{full}'{hint}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"config key '{full}' is a section; give a mapping, got {value!r}")
            _apply(current, value, prefix=f"{full}.")
        else:
            setattr(obj, key, _coerce(value, hints[key], full))


def parse_override(text: str) -> Dict[str, Any]:
    """``"search.macs_ratio=0.2"`` -> ``{"search": {"macs_ratio": 0.2}}`` (value parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value, e.g. search.macs_ratio=0.2")
    key, raw = text.split("=", 1)
    value = yaml.safe_load(raw) if raw.strip() else ""
    out: Dict[str, Any] = {}
    node = out
    parts = key.strip().split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    return out


def config_from_dict(data: Dict[str, Any] | None, overrides: Sequence[str] = ()) -> Config:
    cfg = Config()
    _apply(cfg, data or {})
    for o in overrides:
        _apply(cfg, parse_override(o))
    validate(cfg)
    return cfg


def load_config(path: Optional[str | Path] = None, overrides: Sequence[str] = ()) -> Config:
    """Read a YAML config (or the defaults when ``path`` is None) and apply ``key=value`` overrides."""
    data: Dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path} is not valid YAML: {e}") from e
        if not isinstance(data, dict):
            raise ConfigError(f"{path} must hold a mapping of sections, got {type(data).__name__}")
    return config_from_dict(data, overrides)


def config_to_dict(cfg: Config) -> Dict[str, Any]:
    return dataclasses.asdict(cfg)


def dump_config(cfg: Config, path: str | Path) -> Path:
    from .models.io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    return Path(path)


def validate(cfg: Config) -> None:
    if cfg.threads < 0:
        raise ConfigError(f"threads must be >= 1, or 0 for torch's default; got {cfg.threads}")
    s = cfg.search
    if not 0.0 < s.macs_ratio <= 1.0:
        raise ConfigError(f"search.macs_ratio must be in (0, 1], got {s.macs_ratio}")
    if s.population < 2:
        raise ConfigError(f"search.population must be >= 2, got {s.population}")
    if s.elitism >= s.population:
        raise ConfigError("search.elitism must be smaller than search.population")
    if s.min_channels < 1:
        raise ConfigError("search.min_channels must be >= 1")
    if cfg.data.crop_size % 4 or cfg.data.crop_size > cfg.data.load_size:
        raise ConfigError(
            f"data.crop_size ({cfg.data.crop_size}) must be a multiple of 4 and <= data.load_size "
            f"({cfg.data.load_size})"
        )
    if cfg.model.n_blocks < 1 or cfg.model.ngf < 1:
        raise ConfigError("model.ngf and model.n_blocks must be positive")
