"""Where a command may write and what ``--force`` may delete: never a command's own inputs, never user files.

Two rules, shared by every command:

* :func:`check_outputs_apart`: an output (``--out``, ``--output``) never is, holds or
  lies inside a folder the command reads from (teacher, search run, data, images,
  calibration folder), nor is or holds an input file. Paths are compared after
  resolving symbolic links, so a link to the data folder is the data folder. This
  holds with or without ``--force`` and ``--resume``: the check comes before anything
  is created or deleted.
* :func:`foreign_entries`: what a run folder holds besides the files coevo writes
  there (:data:`RUN_FILES`, the folders of :data:`RUN_FOLDERS`, stage folders and the
  built-in data set). A ``.coevo-run`` marker says a folder was a coevo run, not that
  everything in it is coevo's: ``--force`` deletes a run folder only when this list is
  empty, and names the files otherwise.

A new kind of file a command writes into its run folder belongs in :data:`RUN_FILES`
(or :data:`RUN_FOLDERS`); until it is listed, ``--force`` refuses runs holding it.
"""
from __future__ import annotations

import os
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Iterable, List, Mapping, Optional, Union

from ..errors import CoevoError
from .files import PARTIAL_SUFFIX, RUN_MARKER, PathLike, is_orphan_temp


class OutputError(CoevoError, RuntimeError):
    """An output that would write into or delete an input of the command, or that is no folder or file."""


# Files coevo writes into run folders (train, search, finetune, compress/demo, export, bench, and the
# scratch folders of benchmarks/), as fnmatch patterns on the name.
RUN_FILES = (
    "config.yaml", "data.json", "inputs.json", "stage.json", "checkpoint.pt", "log.jsonl", "summary.json",
    "finetune.json", "search.json", "teacher.json", "history.jsonl", "state.pt", "report.json", "report.md",
    "demo.json", "result.json", "export_report.json", "bench.json", "bench.png", "grid_*.png",
    "[GD]_[AB].pt", "latest_net_[GD]_[AB].pth", "latency_*.json",
    "[GD].pt", "latest_net_[GD].pth", "pix2pix.json", "compress.json",  # a pix2pix run's
    "supernet.json", "weights.json",  # a supernet run's record; a search's note of the supernet it used
    # exports are named after the generator file they come from
    "*.pt2", "*.onnx", "*.ts", "*.safetensors",
)
# Folders with fixed names and the files they hold, at any depth (sample grids, genomes, search plots,
# TensorBoard event files of --log tensorboard, one folder per stage).
RUN_FOLDERS = {"samples": ("*.png",), "genomes": ("*.json",), "plots": ("*.png",),
               "tensorboard": ("events.out.tfevents.*",),
               "deploy_data": ("*.png",)}  # a pix2pix export's input halves (INT8 calibration and check)
# Written next to the marker by coevo itself: the lock of a running job.
_BOOKKEEPING = (RUN_MARKER, ".coevo-lock")
_SHOWN = 5


class Beside:
    """A folder holding inputs that the command does not read as a whole (the folder of an image given
    alone): an output may not be it or hold it, but may be a new folder inside it."""

    def __init__(self, path: PathLike) -> None:
        self.path = Path(path)


Inputs = Mapping[str, Union[PathLike, Beside, Iterable[Union[PathLike, Beside]], None]]


def _real(path: PathLike, option: str) -> Path:
    try:
        return Path(path).resolve()
    except (OSError, RuntimeError) as e:  # a symbolic link loop
        raise OutputError(f"{option} {path} cannot be resolved ({e}); give a path without a symbolic link "
                          "loop") from None


def _as_list(given) -> List[Union[Path, Beside]]:
    if given is None:
        return []
    if isinstance(given, (str, os.PathLike, Beside)):
        given = [given]
    return [p if isinstance(p, Beside) else Path(p) for p in given if p is not None]


def _relation(out: Path, given: Union[Path, Beside], option: str) -> Optional[str]:
    """How the resolved output ``out`` meets the input ``given``: "is", "holds", "is inside" or None."""
    if isinstance(given, Beside):
        real = _real(given.path, "input")
        return None if not real.exists() else "is" if out == real else "holds" if out in real.parents else None
    real = _real(given, "input")
    places = [(real, real.is_dir())]
    if given.is_symlink():  # the link itself lives in its folder too: that folder is an input as well
        places.append((_real(given.parent, "input") / given.name, False))
    for place, is_dir in places:
        if not os.path.lexists(place):
            continue
        if out == place:
            return "is"
        if out in place.parents:
            return "holds"
        if is_dir and place in out.parents:
            return "is inside"
    return None


def check_outputs_apart(out: PathLike, inputs: Inputs, option: str = "--out", kind: str = "folder") -> Path:
    """Raise :class:`OutputError` when ``out`` would write into or delete one of ``inputs``.

    ``inputs``: ``{label: path or paths}`` (None values are skipped), the label naming the input
    in the message, e.g. ``{"teacher": [G_A, G_B], "data folder": root}``. A folder input may
    not be ``out``, nor lie inside it, nor hold it; a file input, or a :class:`Beside` folder,
    may not be ``out`` nor lie anywhere inside it. Inputs that do not exist are skipped.
    ``kind``: ``"folder"`` (a run or output folder) or ``"file"`` (one output file: it must not
    be a device, pipe or socket, which an atomic write would replace). Returns the resolved ``out``.
    """
    real_out = _real(out, option)
    if os.path.lexists(real_out) and not (real_out.is_dir() or real_out.is_file()):
        want = "a folder" if kind == "folder" else "a regular file"
        raise OutputError(f"{option} {out} is a device, pipe or socket, not {want}; coevo would replace it. "
                          f"Choose another {option}")
    for label, given in inputs.items():
        for path in _as_list(given):
            relation = _relation(real_out, path, option)
            if relation is None:
                continue
            where = path.path if isinstance(path, Beside) else path
            shown = "" if relation == "is" and _real(where, "input") == real_out else f" {where}"
            raise OutputError(
                f"{option} {out} {relation} the {label}{shown}: coevo never writes into or deletes its own "
                f"inputs or a folder holding them, even with --force; choose another {option}")
    return real_out


def data_input(root: Optional[PathLike], out: PathLike) -> Optional[Path]:
    """``root`` (``data.root``) as an input of a run in ``out``; None when unset or when it is the run's
    own ``out/data``, where coevo renders the built-in set (missing yet, or holding that set)."""
    if not root:
        return None
    own = _real(out, "--out") / "data"
    if _real(root, "data.root") == own and (not own.exists() or _builtin_set(own)):
        return None
    return Path(root)


def teacher_input(teacher) -> List[Path]:
    """The files of a teacher (:class:`~coevo.models.teacher.TeacherPaths`), or the folder given for it."""
    if teacher is None:
        return []
    if isinstance(teacher, (str, os.PathLike)):
        return [Path(teacher)]
    return [Path(p) for p in (teacher.G_A, teacher.G_B, teacher.D_A, teacher.D_B) if p is not None]


# ----------------------------------------------------------------------------- what --force may delete
def _listed(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatchcase(name, p) for p in patterns)


def _builtin_set(folder: Path) -> bool:
    from .files import coevo_owns

    return not (folder / RUN_MARKER).exists() and coevo_owns(folder)


def _foreign_in_data(folder: Path) -> List[Path]:
    """A run's ``data/``: the built-in set coevo rendered there, or only the data record of a run on
    your images (which are used where they are, never copied in)."""
    records = ("stage.json", "data.json")
    if not _builtin_set(folder):
        return [p for p in _entries(folder) if p.name not in records or not p.is_file()]
    from ..data.paired_synthetic import foreign_in_paired_set, is_paired_builtin
    from ..data.synthetic import foreign_in_set

    listed = foreign_in_paired_set(folder) if is_paired_builtin(folder) else foreign_in_set(folder)
    return [p for p in listed if p.name not in records or p.parent != folder]


def _entries(folder: Path) -> List[Path]:
    """The entries to judge: not the marker and lock, nor the temporary files and render folders
    (``.<name>.<random>.tmp`` / ``.partial``) that a killed write leaves and coevo cleans up."""
    return sorted(p for p in folder.iterdir() if p.name not in _BOOKKEEPING and not is_orphan_temp(p)
                  and not (p.name.startswith(".") and p.name.endswith(PARTIAL_SUFFIX) and p.is_dir()
                           and not p.is_symlink()))


def foreign_entries(folder: PathLike) -> List[Path]:
    """Everything under ``folder`` (a run folder) that coevo does not write there; empty when it is all coevo's.

    Files must match :data:`RUN_FILES`; folders are :data:`RUN_FOLDERS` holding their kind of files,
    ``data`` (see :func:`_foreign_in_data`), or folders whose entries pass the same test (stage
    folders of a pipeline, nested runs with their own marker). Links are never coevo's.
    """
    found: List[Path] = []
    for entry in _entries(Path(folder)):
        found += foreign_in_entry(entry)
    return found


def foreign_in_entry(entry: PathLike) -> List[Path]:
    """:func:`foreign_entries` for one entry of a run folder: ``[entry]`` or what it holds that is not coevo's."""
    entry = Path(entry)
    if entry.is_symlink():
        return [entry]
    if entry.is_dir():
        if entry.name in RUN_FOLDERS:
            return [p for p in sorted(entry.rglob("*")) if p.is_symlink() or not p.is_dir() and (
                not p.is_file() or not _listed(p.name, RUN_FOLDERS[entry.name]))]
        if entry.name == "data":
            return _foreign_in_data(entry)
        return foreign_entries(entry)
    if not entry.is_file() or not _listed(entry.name, RUN_FILES):
        return [entry]
    return []


def describe_foreign(folder: PathLike, found: List[Path]) -> str:
    """``a.txt, sub/b.jpg and 3 more`` for a message."""
    folder = Path(folder)
    shown = ", ".join(str(p.relative_to(folder)) for p in found[:_SHOWN])
    return shown + (f" and {len(found) - _SHOWN} more" if len(found) > _SHOWN else "")


__all__ = ["OutputError", "Beside", "check_outputs_apart", "data_input", "teacher_input", "foreign_entries",
           "foreign_in_entry", "describe_foreign", "RUN_FILES", "RUN_FOLDERS"]
