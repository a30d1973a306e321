"""Pieces shared by teacher training and fine-tuning: run-folder config checks, data, fixed sample images."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, Mapping, Sequence

import torch
from ..config import Config, diff_configs, dump_config, load_config
from ..data import UnpairedImageDataset, ensure_data_root
from ..data.prepare import run_data
from ..core.inputs import check_config_file, check_same_inputs, inputs_record, write_inputs
from ..core.runlock import check_not_running, lock_run_dir
from ..core.outputs import Inputs, check_outputs_apart, data_input
from ..core.runs import prepare_run_dir
from ..errors import ConfigError

log = logging.getLogger(__name__)


def open_run_dir(cfg: Config, out_dir: str | Path, resume: bool, force: bool, sections: Sequence[str],
                 command: str = "train", files: Mapping[str, Path] | None = None,
                 genomes: Mapping[str, Any] | None = None, inputs: Inputs | None = None) -> Path:
    """Create (or, for ``resume``, check) a run folder; write the resolved ``config.yaml`` and ``data.json``.

    ``cfg.data.root`` is resolved in place to an absolute folder (the run's own
    ``data/`` when unset) and the built-in set is built there when allowed.
    Resuming with a config that differs in ``sections``, or on other images,
    raises an error naming the keys or the splits: the run would no longer
    reproduce an uninterrupted one. So does an edited ``config.yaml``, or ``files``
    (e.g. the teacher's) and ``genomes`` other than the run started with (``inputs.json``,
    :mod:`coevo.core.inputs`). The folder never holds, is, or lies inside the data, ``files`` or
    other ``inputs`` (``{label: path}``), with or without ``force``.
    """
    check_outputs_apart(out_dir, {"data folder": data_input(cfg.data.root, out_dir), **(files or {}),
                                  **(inputs or {})})
    check_not_running(out_dir)  # before --force may delete it
    out = prepare_run_dir(out_dir, resume=resume, force=force, command=command)
    lock_run_dir(out)
    if resume:
        check_config_file(out)
        check_same_inputs(out, files or {}, genomes)
        old = load_config(out / "config.yaml")
        diffs = diff_configs(old, cfg, sections)
        if diffs:
            raise ConfigError(
                f"cannot resume {out}: the config differs from the run's in {', '.join(diffs)}. "
                "Resume with the run's own settings (drop these --set values), or start a new run "
                "(--force or another --out)"
            )
    run_data(cfg.data, out, resume, saved_root=old.data.root if resume else None)
    write_inputs(out, inputs_record(cfg, files or {}, genomes))
    dump_config(cfg, out / "config.yaml")  # last: a folder with it holds a run to resume
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

