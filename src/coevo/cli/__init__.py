"""The ``coevo`` command. The only code in coevo that parses arguments, prints, or exits.

Each subcommand lives in its own module here with two functions:
``add_parser(subparsers)`` and ``run(args) -> int``. Modules import heavy
dependencies inside ``run`` so that ``coevo --help`` stays fast.
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import logging
import os
import re
import sys
from pathlib import Path
from typing import List, Optional

SUBCOMMANDS = [
    "data", "train", "supernet", "prune", "search", "finetune", "export",
    "translate", "compress", "demo", "bench", "evaluate",
]
# The commands that run under torchrun (one process per rank; see coevo.core.distributed).
DISTRIBUTED_COMMANDS = ("train", "supernet", "search", "finetune", "compress")


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
    (``.<name>.<random>.tmp``, see :func:`coevo.core.files.atomic_path`), else ``path``."""
    from ..core.files import TEMP_SUFFIX

    p = Path(os.fsdecode(path))
    m = re.fullmatch(r"\.(.+)\.[^.]+" + re.escape(TEMP_SUFFIX), p.name)
    return str(p.with_name(m.group(1)) if m else p)


def symlink_loop_message(where: str) -> str:
    return (f"symbolic link loop:{where} (or a folder above it) is a link that leads back to itself; "
            "fix or remove the link, or give another path")


def os_error_message(e: OSError) -> Optional[str]:
    """One line naming the path and the fix for an OS error a user can fix; None for any other."""
    path = e.filename if e.filename is not None else e.filename2
    where = f" {_target(path)}" if path is not None else ""
    if e.errno == errno.ENOSPC:
        return (f"disk full while writing{where}: free space on that disk or choose an output folder on "
                "another one; commands with --resume continue where they stopped")
    if e.errno == errno.EDQUOT:
        return f"disk quota exceeded while writing{where}: free space or choose an output folder on another disk"
    if e.errno == errno.ELOOP:
        return symlink_loop_message(where)
    if (isinstance(e, FileExistsError) and path is not None and os.path.islink(path)
            and not os.path.exists(path)):  # mkdir over a link that leads nowhere
        return (f"{where.strip()} is a symbolic link that leads nowhere (a loop or a missing target); "
                "fix or remove the link, or choose another path")
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


# torch, numpy and every C library below them take 64-bit integers; a larger option is a typo
_MAX_INT = 2 ** 63 - 1


def _out_of_range(args: argparse.Namespace) -> Optional[str]:
    """Why an integer option is out of range, or None: one rule for every option of every command."""
    for name, value in sorted(vars(args).items()):
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > _MAX_INT:
            return f"--{name.replace('_', '-')} {value} is out of range (at most {_MAX_INT})"
    return None


def peer_lost(e: BaseException) -> bool:
    """Whether ``e`` is a collective that failed because another rank of the job went away (killed,
    crashed): torch.distributed's backend and network errors, or gloo's closed connections."""
    import torch.distributed as dist

    kinds = tuple(getattr(dist, name) for name in ("DistBackendError", "DistNetworkError") if hasattr(dist, name))
    text = str(e)
    return isinstance(e, kinds) or any(s in text for s in ("Connection closed by peer", "Connection reset by peer",
                                                           "Broken pipe", "Socket Timeout"))


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    too_large = _out_of_range(args)
    if too_large is not None:
        print(f"coevo {args.command}: error: {too_large}", file=sys.stderr)
        return 2
    from ..core import distributed

    here = distributed.launch()
    if here.world_size > 1 and args.command not in DISTRIBUTED_COMMANDS:
        if here.rank == 0:
            print(f"coevo {args.command}: error: runs in one process; start it without torchrun (torchrun "
                  f"runs {', '.join(DISTRIBUTED_COMMANDS)})", file=sys.stderr)
        return 2
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    if here.rank > 0 and not args.verbose:
        level = logging.WARNING  # rank 0 tells the story; the others speak up only for problems
    rank_tag = f"[rank {here.rank}] " if here.world_size > 1 else ""
    logging.basicConfig(level=level, format=f"%(levelname)s {rank_tag}%(name)s: %(message)s")
    from ..errors import CoevoError
    from ..core.runs import apply_threads

    try:
        apply_threads(args.threads)
        distributed.init()
        with contextlib.ExitStack() as stack:
            if here.rank > 0:  # results are printed once, by rank 0
                stack.enter_context(contextlib.redirect_stdout(stack.enter_context(open(os.devnull, "w"))))
            code = int(args.func(args) or 0)
        distributed.barrier()  # end together: gloo aborts a process that tears down while a peer still talks
        return code
    except distributed.PeerError:
        return 2  # another rank failed and printed why
    except CoevoError as e:
        print(f"coevo {args.command}: error: {_one_line(str(e))}", file=sys.stderr)
        return 2
    except OSError as e:
        message = os_error_message(e)
        if message is None:  # not one a user can fix: a bug, keep the traceback
            raise
        print(f"coevo {args.command}: error: {message}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        if here.world_size > 1 and peer_lost(e):
            why = re.sub(r"^\[[^\]]*\]\s*", "", _one_line(str(e)))[:160]  # gloo prefixes its source path
            print(f"coevo {args.command}: error: rank {here.rank} lost another process of this torchrun job "
                  f"({why}); torchrun restarts the job when --max-restarts allows, else rerun "
                  "it with --resume", file=sys.stderr)
            return 2
        # Path.resolve() reports a link loop as RuntimeError (Python < 3.13; later ones raise ELOOP)
        match = re.fullmatch(r"Symlink loop from (.*)", str(e))
        if match is None:
            raise
        print(f"coevo {args.command}: error: {symlink_loop_message(' ' + match.group(1).strip(chr(39)))}",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"coevo {args.command}: interrupted; rerun with --resume to continue", file=sys.stderr)
        return 130
    finally:
        distributed.shutdown()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
