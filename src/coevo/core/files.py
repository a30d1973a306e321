"""Writing files so that a crash or a kill never leaves a half-written one.

Every file coevo writes goes through :func:`atomic_path`: the writer fills a
temporary file ``.<name>.<random>.tmp`` in the target's folder, which then
replaces the target in one ``os.replace``. A reader sees the old file or the
new one, never a mix. A kill during the write leaves only the temporary file;
:func:`remove_orphan_temps` deletes those when a run is resumed.

    with atomic_path(out / "G_A.onnx") as tmp:
        torch.onnx.export(model, example, str(tmp))
"""
from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, List, Union

from ..errors import CoevoError

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
TEMP_SUFFIX = ".tmp"
# mkstemp makes owner-only (0600) files; what coevo writes gets the usual mode (0666 minus the umask),
# like any file the user's tools write: exported models are meant to be shared.
_UMASK = os.umask(0)
os.umask(_UMASK)
_FILE_MODE = 0o666 & ~_UMASK


class NotAFileError(CoevoError, ValueError):
    """A path coevo should read as a file that is something else: a folder, a named pipe (FIFO), a device
    or a socket. The message names the path."""


_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def regular_file(path: PathLike, what: str = "file") -> Path:
    """``path`` when it is a regular file (links followed); raise otherwise. Every reader calls it first.

    The check is a ``stat``, made before any ``open``: opening a FIFO blocks until something writes
    to it (forever), and a device such as /dev/zero never ends. Raises ``FileNotFoundError`` for a
    missing path, :class:`NotAFileError` for a folder, FIFO, device or socket, and ``OSError``
    (``ELOOP``, naming the path) for a symbolic link loop. ``what`` names the file in messages
    (``"image"``, ``"config"``).
    """
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, f"{what} not found", os.fspath(path)) from None
    except OSError as e:
        if e.filename is None:
            e.filename = os.fspath(path)
        raise
    if stat.S_ISREG(mode):
        return path
    kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
    raise NotAFileError(f"{what} {path} is {kind}, not a regular file; give a regular file "
                        "(coevo reads no pipes, devices or sockets)" if kind != "a folder" else
                        f"{what} {path} is a folder; give a file")


@contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; when the block succeeds it replaces ``path``.

    Parent folders are created. If the block raises (or is interrupted), the
    temporary file is deleted and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if tmp.exists():
            os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def atomic_torch_save(obj: Any, path: PathLike) -> Path:
    """``torch.save(obj)`` through :func:`atomic_path`: never a truncated checkpoint.

    Serialised in memory first and written by Python, so a full disk is always an ``OSError``
    (ENOSPC) naming ``path``: torch's own writer, given a file name or a file object, turns some
    write failures into an opaque "unexpected pos" RuntimeError.
    """
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            f.write(buffer.getbuffer())
    except OSError as e:
        if e.filename is None:
            e.filename = os.fspath(path)
        raise
    return Path(path)


def atomic_save_figure(fig: Any, path: PathLike, **savefig_kwargs: Any) -> Path:
    """``fig.savefig`` (matplotlib) through :func:`atomic_path`; the format follows the suffix of ``path``."""
    fmt = Path(path).suffix.lstrip(".").lower() or "png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt, **savefig_kwargs)
    return Path(path)


# The marker every run folder coevo creates holds (see coevo.core.runs); a built-in data set is marked by
# its meta.json. Only inside such folders, or in coevo's own temporary folders, does coevo delete.
RUN_MARKER = ".coevo-run"
PARTIAL_SUFFIX = ".partial"


def coevo_owns(folder: PathLike) -> bool:
    """True for a folder coevo made: a run folder (its ``.coevo-run`` marker) or a built-in data set
    (``meta.json`` written by :mod:`coevo.data.synthetic`)."""
    folder = Path(folder)
    if (folder / RUN_MARKER).is_file():
        return True
    try:
        return json.loads((folder / "meta.json").read_text()).get("generator") == "coevo.synthetic"
    except (OSError, ValueError, AttributeError):
        return False


def remove_owned(path: PathLike, owner: PathLike | None = None) -> None:
    """Delete ``path`` (folder or file): the one deletion of coevo's own outputs.

    Allowed only for an entry strictly inside ``owner`` when :func:`coevo_owns` ``owner``, or,
    without ``owner``, for a temporary folder coevo made (``.<name>.<random>.partial``).
    Anything else raises ``PermissionError`` naming the path: a bug, never a user's folder lost.
    """
    path = Path(path)
    if owner is not None:
        owner_real, real = Path(owner).resolve(), path.parent.resolve() / path.name
        ok = owner_real in real.parents and coevo_owns(owner)
    else:
        ok = path.name.startswith(".") and path.name.endswith(PARTIAL_SUFFIX)
    if not ok:
        raise PermissionError(f"coevo will not delete {path}: it is not inside a folder coevo made")
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def is_orphan_temp(path: Path) -> bool:
    """A temporary file of :func:`atomic_path` (``.<name>.<random>.tmp``)."""
    return path.name.startswith(".") and path.name.endswith(TEMP_SUFFIX) and path.is_file()


def remove_orphan_temps(folder: PathLike) -> List[Path]:
    """Delete the temporary files a killed write left anywhere under ``folder``; return them.

    Call it only on a folder no other process is writing to (a run being resumed).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = [p for p in sorted(folder.rglob(f".*{TEMP_SUFFIX}")) if is_orphan_temp(p)]
    for p in removed:
        p.unlink()
    if removed:
        log.info("removed %d temporary file(s) left by an interrupted write in %s: %s", len(removed), folder,
                 ", ".join(str(p.relative_to(folder)) for p in removed))
    return removed
