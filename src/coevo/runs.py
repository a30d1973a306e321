"""Run folders: refuse to overwrite a user's results, JSONL logs, seeded generators."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any, Mapping, Optional

import torch


log = logging.getLogger(__name__)


class RunDirError(RuntimeError):
    """A run folder that cannot be used as asked (exists without --resume/--force, or nothing to resume)."""


def prepare_run_dir(path: str | Path, resume: bool = False, force: bool = False,
                    marker: str = "config.yaml") -> Path:
    """Create ``path`` for a new run, or check it for ``--resume``.

    A non-empty folder is never overwritten unless ``force`` is given (then it is
    emptied); ``resume`` requires an existing run (a ``marker`` file).
    """
    path = Path(path)
    if resume:
        if not (path / marker).exists():
            raise RunDirError(f"cannot resume: {path} holds no run ({marker} missing); drop --resume to start one")
        return path
    if path.exists() and any(path.iterdir()):
        if not force:
            raise RunDirError(
                f"{path} already exists and is not empty; pass --resume to continue that run, "
                "--force to overwrite it, or choose another --out"
            )
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def append_jsonl(path: str | Path, record: Mapping[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")
        f.flush()


def read_jsonl(path: str | Path) -> list:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_jsonl(path: str | Path, keep: int) -> None:
    """Keep the first ``keep`` records: after a resume, log lines past the checkpoint are replayed."""
    records = read_jsonl(path)[:keep]
    Path(path).write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))


def make_generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g


def apply_threads(threads: Optional[int]) -> None:
    """``torch.set_num_threads(threads)`` when given (>= 1); ``None`` or 0 keeps torch's default.

    torch's default is one thread per core. When other jobs share those cores,
    its OpenMP workers wait on each other and a run can become many times
    slower; a single thread then is much faster.
    """
    if threads is None or threads == 0:
        return
    if threads < 0:
        from .config import ConfigError

        raise ConfigError(f"threads must be >= 1 (or 0 for torch's default), got {threads}")
    torch.set_num_threads(int(threads))
    log.info("torch CPU threads: %d", threads)
