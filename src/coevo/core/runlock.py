"""One writer per run folder: an exclusive lock while a command works in it.

Two processes on one run folder (a second ``--resume`` while the first still
runs, or a ``--force`` over a running job) would interleave their checkpoints
and logs. train, search, finetune and compress take an advisory lock
(``flock``) on ``RUN_DIR/.coevo-lock`` as they open their folder and keep it
until they return; a second process is refused with an error naming the
folder. The kernel drops the lock when its process ends, however it ends, so a
lock left by a killed process never blocks a rerun. The file itself stays
(empty) and means nothing without a holder.

Under torchrun only rank 0 opens the run folder, so only rank 0 takes it.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Callable, Dict, Tuple, TypeVar

from ..errors import CoevoError

try:
    import fcntl
except ImportError:  # pragma: no cover - no flock (Windows): runs are not locked there
    fcntl = None

LOCK_NAME = ".coevo-lock"

# resolved folder -> (fd, (st_dev, st_ino) of the locked file); held by this process
_held: Dict[str, Tuple[int, Tuple[int, int]]] = {}

F = TypeVar("F", bound=Callable)


class RunLockedError(CoevoError, RuntimeError):
    """Another process is working in the run folder."""


def _key(path: Path) -> str:
    return os.path.realpath(path)


def _identity(fd: int) -> Tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def holds(path: str | Path) -> bool:
    """True when this process holds the lock of ``path`` (on the lock file there now)."""
    entry = _held.get(_key(Path(path)))
    if entry is None:
        return False
    try:
        st = os.stat(Path(_key(Path(path))) / LOCK_NAME, follow_symlinks=False)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == entry[1]


def lock_run_dir(path: str | Path, create: bool = True) -> bool:
    """Take the lock of the run folder ``path`` for this process; True when it holds it after the call.

    ``create=False`` only locks a lock file already there (a folder some coevo command
    worked in), so that a check never writes into a folder that is not a run. Raises
    :class:`RunLockedError` when another process holds it. Taking it again is a no-op.
    """
    if fcntl is None:
        return False
    path = Path(path)
    key = _key(path)
    if holds(path):
        return True
    release(path)  # a lock on a file that was deleted with its folder (--force) guards nothing
    flags = os.O_RDWR | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(Path(key) / LOCK_NAME, flags | (os.O_CREAT if create else 0), 0o644)
    except FileNotFoundError:
        if create:
            raise
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except (BlockingIOError, PermissionError):
        os.close(fd)
        raise RunLockedError(
            f"{path} is in use by another coevo process that is still running in it; wait for it to end "
            "(or stop it), then rerun, or choose another --out"
        ) from None
    except BaseException:
        os.close(fd)
        raise
    _held[key] = (fd, _identity(fd))
    return True


def check_not_running(path: str | Path) -> None:
    """Raise :class:`RunLockedError` when another process works in ``path``; a folder without a
    lock file (new, or not a run) is left as it is. Keeps the lock when it takes it."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink() and (path / LOCK_NAME).is_file():
        lock_run_dir(path, create=False)


def release(path: str | Path) -> None:
    """Drop this process's lock of ``path`` (nothing when it holds none)."""
    entry = _held.pop(_key(Path(path)), None)
    if entry is not None:
        os.close(entry[0])


def releasing(fn: F) -> F:
    """Decorator: the locks ``fn`` takes are released when it returns or raises (a process that
    ends drops them anyway), so that a library caller can run the folder again later."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        before = set(_held)
        try:
            return fn(*args, **kwargs)
        finally:
            for key in set(_held) - before:
                release(key)
    return wrapper  # type: ignore[return-value]
