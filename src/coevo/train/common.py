"""Pieces shared by teacher training and fine-tuning: run-folder config checks, data, fixed sample images."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, List, Sequence

import torch

from ..config import Config, ConfigError, config_to_dict, dump_config, load_config
from ..data import UnpairedImageDataset, ensure_data_root
from ..runs import prepare_run_dir

log = logging.getLogger(__name__)

# Keys that change neither the trained weights nor the schedule: they may differ on --resume.
RESUME_SAFE_KEYS = ("data.num_workers", "train.sample_every", "train.sample_images", "train.log_every",
                    "finetune.sample_every", "finetune.sample_images", "finetune.log_every")


def _flatten(d: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_differences(old: Config, new: Config, sections: Sequence[str]) -> List[str]:
    """``"key (old -> new)"`` for every key under ``sections`` (top-level names or sections) that differs."""
    a, b = _flatten(config_to_dict(old)), _flatten(config_to_dict(new))
    for flat in (a, b):  # the same folder written relative or absolute is the same data
        flat["data.root"] = str(Path(flat["data.root"]).resolve())
    diffs = []
    for key in sorted(set(a) | set(b)):
        if key.split(".")[0] not in sections or key in RESUME_SAFE_KEYS:
            continue
        if a.get(key) != b.get(key):
            diffs.append(f"{key} ({a.get(key)!r} -> {b.get(key)!r})")
    return diffs


def open_run_dir(cfg: Config, out_dir: str | Path, resume: bool, force: bool, sections: Sequence[str]) -> Path:
    """Create (or, for ``resume``, check) a run folder and write the resolved ``config.yaml``.

    Resuming with a config that differs in ``sections`` raises :class:`ConfigError`
    naming the keys: the run would no longer reproduce an uninterrupted one.
    """
    out = prepare_run_dir(out_dir, resume=resume, force=force)
    if resume:
        old = load_config(out / "config.yaml")
        diffs = config_differences(old, cfg, sections)
        if diffs:
            raise ConfigError(
                f"cannot resume {out}: the config differs from the run's in {', '.join(diffs)}. "
                "Resume with the run's own settings (drop these --set values), or start a new run "
                "(--force or another --out)"
            )
    dump_config(cfg, out / "config.yaml")
    return out


def full_train_dataset(cfg: Config):
    """All of ``trainA``/``trainB`` (augmented as configured), building the synthetic set first if asked."""
    d = cfg.data
    root = ensure_data_root(d)
    return UnpairedImageDataset(root, phase="train", load_size=d.load_size, crop_size=d.crop_size,
                                flip=d.flip, skip_bad=d.skip_bad_images, seed=cfg.seed)


def fixed_images(dataset, n: int) -> Dict[str, torch.Tensor]:
    """The first ``n`` items of a non-augmented dataset as ``{"A": NCHW, "B": NCHW}`` in [-1, 1]."""
    n = min(n, len(dataset))
    items = [dataset[i] for i in range(n)]
    return {"A": torch.stack([it["A"] for it in items]), "B": torch.stack([it["B"] for it in items])}


def param_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
