"""The ``coevo`` command. The only code in coevo that parses arguments, prints, or exits.

Each subcommand lives in its own module here with two functions:
``add_parser(subparsers)`` and ``run(args) -> int``. Modules import heavy
dependencies inside ``run`` so that ``coevo --help`` stays fast.
"""
from __future__ import annotations

import argparse
import errno
import importlib
import logging
import os
import re
import sys
from pathlib import Path
from typing import List, Optional

SUBCOMMANDS = [
    "data", "train", "prune", "search", "finetune", "export",
    "translate", "compress", "demo", "bench", "evaluate",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="coevo",
        description="Make CycleGAN generators small and fast by co-evolutionary search (Shu et al., ICCV 2019).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="torch CPU threads (default: torch's choice, usually one per core). On a "
                             "machine busy with other jobs, --threads 1 avoids a large oversubscription "
                             "slowdown")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        module = importlib.import_module(f"coevo.cli.{name}")
        module.add_parser(sub)
    return parser


def _one_line(text: str) -> str:
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def _target(path) -> str:
    """The file the user asked for when ``path`` is the temporary file of an atomic write
    (``.<name>.<random>.tmp``, see :func:`coevo.files.atomic_path`), else ``path``."""
    from ..files import TEMP_SUFFIX

    p = Path(os.fsdecode(path))
    m = re.fullmatch(r"\.(.+)\.[^.]+" + re.escape(TEMP_SUFFIX), p.name)
    return str(p.with_name(m.group(1)) if m else p)


def os_error_message(e: OSError) -> Optional[str]:
    """One line naming the path and the fix for an OS error a user can fix; None for any other."""
    path = e.filename if e.filename is not None else e.filename2
    where = f" {_target(path)}" if path is not None else ""
    if e.errno == errno.ENOSPC:
        return (f"disk full while writing{where}: free space on that disk or choose an output folder on "
                "another one; commands with --resume continue where they stopped")
    if e.errno == errno.EDQUOT:
        return f"disk quota exceeded while writing{where}: free space or choose an output folder on another disk"
    if e.errno == errno.EROFS:
        return f"read-only file system:{where}; choose an output folder on a writable disk"
    if isinstance(e, PermissionError):
        return (f"permission denied:{where}; choose an output folder you can write to, or give yourself "
                "write permission there (chmod u+rwx FOLDER)")
    if isinstance(e, NotADirectoryError) or (isinstance(e, FileExistsError) and path is not None
                                             and os.path.isfile(path)):
        return (f"a file is in the way:{where} (or a folder above it) is a file where a folder is needed; "
                "choose another path or move the file")
    if isinstance(e, IsADirectoryError):
        return f"{where.strip()} is a folder where a file is needed; give a file path"
    if isinstance(e, FileNotFoundError):
        return _one_line(str(e)) if path is None else f"no such file or folder: {where.strip()}"
    return None


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    from ..errors import CoevoError
    from ..runs import apply_threads

    try:
        apply_threads(args.threads)
        return int(args.func(args) or 0)
    except CoevoError as e:
        print(f"coevo {args.command}: error: {_one_line(str(e))}", file=sys.stderr)
        return 2
    except OSError as e:
        message = os_error_message(e)
        if message is None:  # not one a user can fix: a bug, keep the traceback
            raise
        print(f"coevo {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"coevo {args.command}: interrupted; rerun with --resume to continue", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
