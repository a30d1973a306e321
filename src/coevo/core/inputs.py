"""What a run started from besides its images: its config, the teacher's files and the genomes.

The pattern of :mod:`coevo.data.record`, for the other inputs: a run folder
records them in ``inputs.json`` as it starts (the config it wrote to
``config.yaml``; a SHA-256 of every teacher file; a SHA-256 of each genome), and
``--resume`` compares. An edited ``config.yaml``, replaced teacher weights or an
edited genome are refused, naming the keys or files that differ: the result
would no longer be the one an uninterrupted run gives. A run from before this
record is resumed unchecked, and records its inputs from then on.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Dict, Mapping, Optional
from ..config import Config, config_to_dict, diff_configs, load_config
from .files import atomic_write_text
from ..errors import ConfigError

RECORD_NAME = "inputs.json"
_CHUNK = 1 << 20


class InputsChangedError(ConfigError):
    """A resume whose inputs (config.yaml, teacher files, genomes) are not those the run started with."""


def file_fingerprint(path: str | Path) -> str:
    """SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def genome_fingerprint(genome) -> str:
    """SHA-256 of a genome's architecture and kept channels (its notes, such as the method, do not count)."""
    d = genome.to_dict()
    what = {"arch": d["arch"], "tied": d["tied"], "kept": d["kept"]}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()


def teacher_files(paths) -> Dict[str, Path]:
    """``{"teacher G_A": path, ...}`` of a :class:`~coevo.models.teacher.TeacherPaths` (discriminators if any)."""
    return {f"teacher {k}": Path(p) for k, p in paths.to_dict().items() if p}


def inputs_record(cfg: Optional[Config] = None, files: Mapping[str, str | Path] = (),
                  genomes: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """``{"config": dict, "files": {label: {"path", "sha256"}}, "genomes": {name: sha256}}``."""
    record: Dict[str, Any] = {"format": "coevo.inputs"}
    if cfg is not None:
        record["config"] = config_to_dict(cfg)
    record["files"] = {label: {"path": str(Path(p).resolve()), "sha256": file_fingerprint(p)}
                       for label, p in dict(files).items()}
    if genomes:
        record["genomes"] = {k: genome_fingerprint(g) for k, g in sorted(genomes.items())}
    return record


def read_inputs(run_dir: str | Path) -> Optional[Dict[str, Any]]:
    """The run's ``inputs.json``, or None (a new run, or one from before the record)."""
    path = Path(run_dir) / RECORD_NAME
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise InputsChangedError(f"cannot resume {run_dir}: {path} is unreadable ({e}); start a new run") from e
    return record if isinstance(record, dict) else None


def write_inputs(run_dir: str | Path, record: Mapping[str, Any]) -> Path:
    return atomic_write_text(Path(run_dir) / RECORD_NAME, json.dumps(record, indent=2) + "\n")


def check_config_file(run_dir: str | Path) -> None:
    """Refuse a resume when the run's ``config.yaml`` was edited since the run wrote it (keys named)."""
    run_dir = Path(run_dir)
    saved = read_inputs(run_dir)
    if not saved or "config" not in saved or not (run_dir / "config.yaml").is_file():
        return
    changes = diff_configs(saved["config"], load_config(run_dir / "config.yaml"))
    if changes:
        raise InputsChangedError(
            f"cannot resume {run_dir}: its config.yaml was edited after the run wrote it ({', '.join(changes)}). "
            "Undo the edit to resume, or start a new run with the new settings"
        )


def check_same_inputs(run_dir: str | Path, files: Mapping[str, str | Path] = (),
                      genomes: Optional[Mapping[str, Any]] = None) -> None:
    """Refuse a resume whose input files or genomes differ from those recorded at the start (named)."""
    saved = read_inputs(run_dir)
    if not saved:
        return
    changes = []
    now = inputs_record(files=files, genomes=genomes)
    for label, old in saved.get("files", {}).items():
        new = now["files"].get(label)
        if new is None:
            continue  # not asked for this time (a resume that reads its inputs from the run)
        if new["sha256"] != old.get("sha256"):
            moved = "" if new["path"] == old.get("path") else f", was {old.get('path')}"
            changes.append(f"{label} {new['path']} has other contents than at the start{moved}")
    for name, old in saved.get("genomes", {}).items():
        new = now.get("genomes", {}).get(name)
        if new is not None and new != old:
            changes.append(f"genome {name} keeps other channels than at the start")
    if changes:
        raise InputsChangedError(
            f"cannot resume {run_dir}: {'; '.join(changes)}. Resume with the original files, or start a new run"
        )
