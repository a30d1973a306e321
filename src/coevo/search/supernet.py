"""Reading a trained supernet (``coevo supernet``) back for the search and for fine-tuning.

A supernet folder holds ``G_A.pt`` and ``G_B.pt`` (full-width coevo generators whose weights
serve every channel mask: a genome's network is ``slim(supernet, genome)``) and
``supernet.json`` (what it was trained from and how). Training lives in
:mod:`coevo.train.supernet`; this module only reads, so the search never imports training code.

A search that scores candidates with a supernet (``search.fitness: supernet``) records the
folder in its own ``weights.json``; fine-tuning reads that record and slices the winning
genomes out of the same weights (:func:`search_weights`).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Dict, Mapping, Optional

from ..core.files import PathLike, atomic_write_text
from ..core.inputs import file_fingerprint
from ..errors import CheckpointError
from ..models import ResnetGenerator, load_generator
from ..models.teacher import TeacherPaths, describe_arch

log = logging.getLogger(__name__)

DIRECTIONS = ("G_A", "G_B")
SUPERNET_RECORD = "supernet.json"   # in a supernet folder: what it was trained from
SUPERNET_FORMAT = "coevo.supernet"
WEIGHTS_RECORD = "weights.json"     # in a search folder: where candidates took their weights from


def supernet_files(folder: PathLike) -> Dict[str, Path]:
    """``{"supernet G_A": path, "supernet G_B": path}``: the files a run using the supernet fingerprints."""
    return {f"supernet {d}": Path(folder) / f"{d}.pt" for d in DIRECTIONS}


def read_supernet_record(folder: PathLike) -> Dict:
    """The folder's ``supernet.json``; CheckpointError naming what is missing when it holds no finished supernet."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"supernet folder not found: {folder}; train one with `coevo supernet --teacher T "
                              f"--out {folder}`")
    record_path = folder / SUPERNET_RECORD
    missing = [p.name for p in (record_path, *supernet_files(folder).values()) if not p.is_file()]
    if missing:
        raise CheckpointError(f"{folder} holds no finished supernet ({', '.join(missing)} missing); run (or "
                              "resume) `coevo supernet` into it first")
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{record_path} is unreadable ({e}); train the supernet again") from e
    if not isinstance(record, dict) or record.get("format") != SUPERNET_FORMAT:
        raise CheckpointError(f"{record_path} is not a coevo supernet record; give the --out folder of "
                              "`coevo supernet`")
    return record


def load_supernet(folder: PathLike, teacher: TeacherPaths,
                  teacher_nets: Optional[Mapping[str, ResnetGenerator]] = None) -> Dict[str, ResnetGenerator]:
    """``{"G_A": net, "G_B": net}`` of the supernet in ``folder`` (eval mode, CPU), checked against ``teacher``.

    Refused (CheckpointError, one line) when the supernet has another architecture than the
    teacher's generators (``teacher_nets``, loaded from ``teacher`` when not given) or was trained
    from other teacher weights: its weights would not stand for this teacher's sub-networks.
    """
    folder = Path(folder)
    record = read_supernet_record(folder)
    nets = {}
    for d in DIRECTIONS:
        net = load_generator(folder / f"{d}.pt")
        if not isinstance(net, ResnetGenerator):
            raise CheckpointError(f"{folder / (d + '.pt')} is not a trainable generator checkpoint")
        nets[d] = net.eval()
    for d in DIRECTIONS:
        ref = teacher_nets[d] if teacher_nets is not None else load_generator(getattr(teacher, d))
        if nets[d].arch.to_dict() != ref.arch.to_dict():
            raise CheckpointError(
                f"the supernet in {folder} has another architecture than the teacher's {d} (supernet: "
                f"{describe_arch(nets[d].arch)}; teacher: {describe_arch(ref.arch)}); train a supernet from "
                "this teacher with `coevo supernet`")
    trained_from = record.get("teacher_sha256") or {}
    for d in DIRECTIONS:
        if d in trained_from and trained_from[d] != file_fingerprint(getattr(teacher, d)):
            raise CheckpointError(
                f"the supernet in {folder} was trained from other {d} weights than the teacher's "
                f"{getattr(teacher, d)}; train a supernet from this teacher with `coevo supernet`")
    return nets


def warn_if_trained_for_other_masks(folder: PathLike, search_cfg) -> None:
    """Log a warning when the supernet sampled its masks for other search settings (budget, repair, layout)
    than ``search_cfg``: its weights still serve every mask, but were tuned for other sub-networks."""
    sampled = read_supernet_record(folder).get("sampler") or {}
    differ = [f"search.{k} {v!r} -> {getattr(search_cfg, k)!r}" for k, v in sampled.items()
              if hasattr(search_cfg, k) and getattr(search_cfg, k) != v and k != "eval_size"]
    if differ:
        log.warning("the supernet in %s was trained on masks for other search settings (%s); it was tuned for "
                    "other sub-networks than this search explores: train one with these settings for the best "
                    "ranking", folder, ", ".join(differ))


def write_weights_record(search_dir: PathLike, supernet: PathLike) -> Path:
    """Record in a search folder that its candidates took their weights from ``supernet``."""
    folder = Path(supernet).resolve()
    record = {"source": "supernet", "dir": str(folder),
              **{d: str(p.resolve()) for d, p in zip(DIRECTIONS, supernet_files(folder).values())}}
    return atomic_write_text(Path(search_dir) / WEIGHTS_RECORD, json.dumps(record, indent=2) + "\n")


def recorded_supernet(search_dir: PathLike) -> Optional[Path]:
    """The supernet folder a search folder recorded (None: candidates inherited the teacher's weights)."""
    path = Path(search_dir) / WEIGHTS_RECORD
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        return Path(record["dir"]) if record.get("source") == "supernet" else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{path} is unreadable ({e}); the search folder is damaged") from e


def search_weights(search_dir: Optional[PathLike]) -> Optional[Dict[str, Path]]:
    """``{"G_A": file, "G_B": file}`` of the supernet a search scored its candidates with, None when it
    used the teacher's weights; CheckpointError when the recorded supernet is gone."""
    if search_dir is None:
        return None
    folder = recorded_supernet(search_dir)
    return None if folder is None else supernet_weights(folder)


def supernet_weights(folder: PathLike) -> Dict[str, Path]:
    """``{"G_A": file, "G_B": file}`` of the finished supernet in ``folder``; CheckpointError naming the fix when
    it holds none."""
    read_supernet_record(folder)  # there and finished
    return {d: Path(folder) / f"{d}.pt" for d in DIRECTIONS}
