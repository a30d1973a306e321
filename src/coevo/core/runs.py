"""Run folders: created with a marker, removed only when coevo made them; JSONL logs; seeded RNGs.

Every run folder coevo creates (train, search, finetune, compress/demo, export,
bench) holds a marker file ``.coevo-run`` (JSON: command, creation time).
``--force`` deletes a folder only through :func:`remove_run_dir`, which
requires that marker and never touches the current folder, one of its parents,
the home folder or ``/``. A folder from a coevo without markers is refused too:
delete it yourself or choose another ``--out``.
"""
from __future__ import annotations

import json
import logging
import shutil
import tempfile
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, List, Mapping, Optional, Tuple

import torch

from . import distributed
from ..errors import CoevoError
from .files import RUN_MARKER, atomic_write_text, is_orphan_temp, remove_orphan_temps, remove_owned
from .outputs import Inputs, check_outputs_apart, describe_foreign, foreign_entries, foreign_in_entry
from ..errors import ConfigError



log = logging.getLogger(__name__)


class RunDirError(CoevoError, RuntimeError):
    """A run folder that cannot be used as asked (exists without --resume/--force, or nothing to resume)."""


def mark_run_dir(path: str | Path, command: str) -> Path:
    """Write the ``.coevo-run`` marker: this folder is a coevo run, and ``--force`` may delete it."""
    from .. import __version__

    record = {"format": "coevo.run", "command": command, "coevo": __version__,
              "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    job = distributed.job_id()
    if job is not None:  # a torchrun restart resumes only the runs its own job started
        record["job"] = job
    return atomic_write_text(Path(path) / RUN_MARKER, json.dumps(record, indent=2) + "\n")


def restart_flags(path: str | Path, resume: bool, force: bool,
                  resume_file: str = "config.yaml") -> Tuple[bool, bool]:
    """``(resume, force)`` for this attempt of a command that torchrun may restart (``--max-restarts``).

    The first attempt keeps the flags it was given. A restarted one never deletes a
    run its job did not start: when ``path`` holds a run whose marker names this job
    (:func:`coevo.core.distributed.job_id`), it resumes it (``resume_file`` present) or,
    killed before it could be resumed, starts it again; any other folder gets the
    first attempt's flags without ``force``.
    """
    count = distributed.restart_count()
    if count == 0:
        return resume, force
    path = Path(path)
    try:
        job = json.loads((path / RUN_MARKER).read_text()).get("job")
    except (OSError, ValueError, AttributeError):
        job = None
    if job is None or job != distributed.job_id():
        if force:
            log.warning("torchrun restart %d: ignoring --force, %s was not started by this job", count, path)
        return resume, False
    if (path / resume_file).exists():
        log.warning("torchrun restart %d: resuming %s", count, path)
        return True, False
    log.warning("torchrun restart %d: %s was started by this job but holds nothing to resume; starting it again",
                count, path)
    return False, True


def remove_killed_renders(path: str | Path) -> None:
    """Delete the temporary folders (``.<name>.<random>.partial``) of built-in sets whose rendering a kill
    interrupted inside the run folder ``path``. Only for a folder this process has locked."""
    from .files import PARTIAL_SUFFIX

    for partial in sorted(Path(path).glob(f".*{PARTIAL_SUFFIX}")):
        if partial.is_dir() and not partial.is_symlink():
            remove_owned(partial)


def unstarted_resume(path: str | Path, resume: bool, force: bool,
                     resume_file: str = "config.yaml") -> Tuple[bool, bool]:
    """``(resume, force)`` for ``--resume`` of a run stopped in its first seconds.

    A folder with coevo's marker but no ``resume_file`` yet (killed while it prepared its
    data, say) holds nothing to continue: it is started again in place, replacing only
    what coevo wrote there (:func:`remove_run_dir`). Any other case keeps the flags.
    """
    from .runlock import check_not_running

    path = Path(path)
    if not resume or (path / resume_file).exists() or not (path / RUN_MARKER).is_file():
        return resume, force
    check_not_running(path)  # a start still running in it is never touched
    remove_killed_renders(path)
    log.warning("%s was stopped before its first checkpoint: nothing to resume, starting it again", path)
    return False, True


def run_entries(path: str | Path) -> List[Path]:
    """What ``path`` holds besides the marker, the lock file and temporary files of interrupted writes."""
    from .runlock import LOCK_NAME

    path = Path(path)
    if not path.is_dir():
        return []
    return sorted(p for p in path.iterdir() if p.name not in (RUN_MARKER, LOCK_NAME) and not is_orphan_temp(p))


def check_removable(path: str | Path) -> Path:
    """Raise :class:`RunDirError` unless ``path`` is a run folder coevo created (see the module docstring)."""
    path = Path(path)
    fix = "choose another --out, or delete it yourself if you are sure"
    if path.is_symlink():
        raise RunDirError(f"will not delete {path}: it is a symbolic link; {fix}")
    real = path.resolve()
    cwd = Path.cwd().resolve()
    if real == Path(real.anchor):
        raise RunDirError(f"will not delete {path}: it is the root folder; {fix}")
    home = Path.home().resolve()
    if real == home or real in home.parents:
        where = "your home folder" if real == home else "a parent of your home folder"
        raise RunDirError(f"will not delete {path}: it is {where}; {fix}")
    if real == cwd or real in cwd.parents:
        where = "the current folder" if real == cwd else "a parent of the current folder"
        raise RunDirError(f"will not delete {path}: it is {where}; {fix}")
    if not path.is_dir():
        raise RunDirError(f"will not delete {path}: it is not a folder; {fix}")
    if not (path / RUN_MARKER).is_file():
        shown = ", ".join(p.name for p in run_entries(path)[:5])
        raise RunDirError(
            f"will not delete {path}: it holds files coevo did not create ({shown}; no {RUN_MARKER} marker, "
            f"which every coevo run folder has). Choose another --out, or delete the folder yourself "
            "if it is an old run you no longer need"
        )
    foreign = foreign_entries(path)
    if foreign:  # a marker says the folder was a run, not that everything in it is coevo's
        raise RunDirError(
            f"will not delete {path}: besides its {RUN_MARKER} marker it holds files coevo did not write "
            f"({describe_foreign(path, foreign)}). Move them out of the folder, or choose another --out"
        )
    return path


def remove_run_entry(path: str | Path, owner: str | Path) -> None:
    """Delete ``path``, an entry coevo wrote in the run folder ``owner`` (an unfinished stage folder, to
    be redone); refuses with :class:`RunDirError` when it holds files coevo does not write there."""
    path = Path(path)
    foreign = foreign_in_entry(path)
    if foreign:
        raise RunDirError(
            f"will not delete {path} to redo it: it holds files coevo did not write "
            f"({describe_foreign(path.parent, foreign)}). Move them out, or start a new run with another --out"
        )
    remove_owned(path, owner)


def remove_run_dir(path: str | Path) -> None:
    """Delete a run folder coevo created, after :func:`check_removable`; the only deletion behind ``--force``."""
    path = check_removable(path)
    log.warning("--force: deleting the previous run in %s", path)
    shutil.rmtree(path)


def prepare_run_dir(path: str | Path, resume: bool = False, force: bool = False,
                    resume_file: str = "config.yaml", command: str = "run") -> Path:
    """Create ``path`` for a new run (with its marker), or check it for ``--resume``.

    A folder holding anything is never overwritten unless ``force`` is given and
    it is a coevo run (:func:`remove_run_dir`). ``resume`` requires an existing run
    (a ``resume_file``) and deletes the temporary files of writes a kill interrupted.
    """
    path = Path(path)
    if resume:
        if not (path / resume_file).exists():
            raise RunDirError(f"cannot resume: {path} holds no run ({resume_file} missing); "
                              "drop --resume to start one")
        remove_orphan_temps(path)
        return path
    if path.exists() and not path.is_dir():
        raise RunDirError(f"{path} is a file, not a folder; choose another --out")
    if run_entries(path):
        if not force:
            raise RunDirError(
                f"{path} already exists and is not empty; pass --resume to continue that run, "
                "--force to overwrite it, or choose another --out"
            )
        remove_run_dir(path)
    path.mkdir(parents=True, exist_ok=True)
    remove_orphan_temps(path)
    mark_run_dir(path, command)
    return path


@contextmanager
def undo_failed_start(path: str | Path, resume: bool = False) -> Iterator[None]:
    """Remove what a new run wrote into ``path`` if its start (the ``with`` block) fails.

    A typo, bad data or a missing teacher then leaves nothing that blocks a plain rerun.
    Acts only when ``path`` was missing or empty as the block began (so everything in it
    comes from this start); never on ``resume``, never on a folder that held a run.
    """
    path = Path(path)
    fresh = not resume and not run_entries(path)
    existed = path.exists()
    try:
        yield
    except BaseException:
        if fresh and path.is_dir() and not path.is_symlink():
            # everything after the marker was written by this start; without one, nothing was
            if (path / RUN_MARKER).is_file():
                for entry in [e for e in path.iterdir() if e.name != RUN_MARKER]:
                    remove_owned(entry, path)
                (path / RUN_MARKER).unlink()
            if not existed and not any(path.iterdir()):
                path.rmdir()
            log.debug("start failed: removed what it wrote into %s", path)
        raise


@contextmanager
def undo_unstarted_run(path: str | Path, resume: bool = False,
                       progress: Tuple[str, ...] = ("checkpoint.pt",)) -> Iterator[None]:
    """:func:`undo_failed_start` for a whole job: an error before it wrote any of ``progress``
    (its checkpoints, relative to ``path``) removes what the new run wrote.

    Such a run holds nothing worth resuming, so a plain rerun must not be refused (a
    crop too small for the discriminator fails only at the first step, say). An
    interrupt keeps the folder: ``--resume`` then starts it again. Acts on rank 0 only.
    """
    path = Path(path)
    fresh = not resume and not run_entries(path)
    existed = path.exists()
    try:
        yield
    except Exception:
        if (fresh and distributed.is_main() and path.is_dir() and not path.is_symlink()
                and (path / RUN_MARKER).is_file() and not any((path / p).exists() for p in progress)):
            for entry in [e for e in path.iterdir() if e.name != RUN_MARKER]:
                remove_owned(entry, path)
            (path / RUN_MARKER).unlink()
            if not existed and not any(path.iterdir()):
                path.rmdir()
            log.debug("run failed before its first checkpoint: removed what it wrote into %s", path)
        raise


def writable_out_dir(path: str | Path, command: str, inputs: Optional[Inputs] = None) -> Path:
    """An output folder that files are replaced in (``coevo bench --out``): created and marked if missing.

    Refuses a folder holding any of ``inputs`` (:func:`coevo.core.outputs.check_outputs_apart`) and a
    non-empty folder without the marker of a coevo run: its files are someone's, not coevo's
    to replace. Checks that a file can be created there, so that a long job fails before it
    starts, not at its end.
    """
    check_outputs_apart(path, inputs or {})
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise RunDirError(f"--out {path} is a file, not a folder; choose another --out")
    if run_entries(path) and not (path / RUN_MARKER).is_file():
        shown = ", ".join(p.name for p in run_entries(path)[:5])
        raise RunDirError(f"--out {path} holds files coevo did not write ({shown}; no {RUN_MARKER} marker): "
                          "coevo replaces files only in its own folders. Choose a new or empty --out")
    new = not path.exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise RunDirError(f"cannot write into --out {path} ({e.strerror or e}); choose a folder you can write to") from e
    if new:
        mark_run_dir(path, command)
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
    atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))


def apply_threads(threads: Optional[int]) -> None:
    """``torch.set_num_threads(threads)`` when given (>= 1); ``None`` or 0 keeps torch's default.

    torch's default is one thread per core. When other jobs share those cores,
    its OpenMP workers wait on each other and a run can become many times
    slower; a single thread then is much faster.
    """
    if threads is None or threads == 0:
        return
    from .limits import MAX_THREADS

    if threads < 0 or threads > MAX_THREADS:
        raise ConfigError(f"threads must be >= 1 (or 0 for torch's default) and at most {MAX_THREADS}, got {threads}")
    already = torch.get_num_threads() == int(threads)
    torch.set_num_threads(int(threads))
    (log.debug if already else log.info)("torch CPU threads: %d", threads)
