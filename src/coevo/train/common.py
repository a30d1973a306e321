"""Pieces shared by teacher training and fine-tuning: run-folder config checks, data, fixed sample images."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Dict, Sequence

import torch

from ..config import Config, ConfigError, diff_configs, dump_config, load_config
from ..data import UnpairedImageDataset, check_same_data, data_record, ensure_data_root, resolve_root
from ..data.record import RECORD_NAME, short
from ..files import atomic_write_text
from ..runs import prepare_run_dir

log = logging.getLogger(__name__)


def open_run_dir(cfg: Config, out_dir: str | Path, resume: bool, force: bool, sections: Sequence[str],
                 command: str = "train") -> Path:
    """Create (or, for ``resume``, check) a run folder; write the resolved ``config.yaml`` and ``data.json``.

    ``cfg.data.root`` is resolved in place to an absolute folder (the run's own
    ``data/`` when unset) and the built-in set is built there when allowed.
    Resuming with a config that differs in ``sections``, or on other images,
    raises an error naming the keys or the splits: the run would no longer
    reproduce an uninterrupted one.
    """
    out = prepare_run_dir(out_dir, resume=resume, force=force, command=command)
    if resume:
        old = load_config(out / "config.yaml")
        if not cfg.data.root:
            cfg.data.root = old.data.root
        diffs = diff_configs(old, cfg, sections)
        if diffs:
            raise ConfigError(
                f"cannot resume {out}: the config differs from the run's in {', '.join(diffs)}. "
                "Resume with the run's own settings (drop these --set values), or start a new run "
                "(--force or another --out)"
            )
    cfg.data.root = resolve_root(cfg.data, out)
    ensure_data_root(cfg.data)
    record = data_record(cfg.data.root, cfg.data.skip_bad_images)
    saved = out / RECORD_NAME
    if resume and saved.is_file():
        check_same_data(json.loads(saved.read_text()), record, str(out))
    log.info("data: %s", short(record))
    atomic_write_text(saved, json.dumps(record, indent=2) + "\n")
    dump_config(cfg, out / "config.yaml")
    return out


def full_train_dataset(cfg: Config):
    """All of ``trainA``/``trainB`` (augmented as configured), building the built-in set first if asked."""
    d = cfg.data
    root = ensure_data_root(d)
    return UnpairedImageDataset(root, phase="train", load_size=d.load_size, crop_size=d.crop_size,
                                flip=d.flip, skip_bad=d.skip_bad_images, seed=cfg.seed)


def fixed_images(dataset, n: int) -> Dict[str, torch.Tensor]:
    """The first ``n`` items of a non-augmented dataset as ``{"A": NCHW, "B": NCHW}`` in [-1, 1]."""
    n = min(n, len(dataset))
    items = [dataset[i] for i in range(n)]
    return {"A": torch.stack([it["A"] for it in items]), "B": torch.stack([it["B"] for it in items])}

