"""The ``coevo`` command. The only code in coevo that parses arguments, prints, or exits.

Each subcommand lives in its own module here with two functions:
``add_parser(subparsers)`` and ``run(args) -> int``. Modules import heavy
dependencies inside ``run`` so that ``coevo --help`` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
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


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    from ..config import ConfigError
    from ..data.errors import DataError
    from ..export import ExportError
    from ..models.io import CheckpointError
    from ..prune.genome import GenomeError
    from ..prune.macs import BudgetError
    from ..runs import RunDirError, apply_threads
    from ..train.loop import TrainingError

    try:
        apply_threads(args.threads)
        return int(args.func(args) or 0)
    except (ConfigError, CheckpointError, RunDirError, DataError, GenomeError, BudgetError, ExportError,
            TrainingError, FileNotFoundError) as e:
        print(f"coevo {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"coevo {args.command}: interrupted; rerun with --resume to continue", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
