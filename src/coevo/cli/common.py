"""Options and config loading shared by the subcommands that run a job."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Callable, List, Optional


def add_data_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", metavar="DIR",
                   help="your data set: a folder with trainA, trainB, testA, testB (same as --set data.root=DIR). "
                        "Always used as it is and never written into. Without it, the config's data.root, or "
                        "the built-in set in the run folder")


def add_log_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--log", choices=["jsonl", "tensorboard"], default=None,
                   help="tensorboard: also write the curves and sample grids of training, search and fine-tuning "
                        "to RUN/tensorboard (needs pip install 'coevo[tensorboard]'); same as --set log=... "
                        "(default: the config's log, jsonl: log.jsonl, history.jsonl and sample PNGs only)")


def add_run_arguments(p: argparse.ArgumentParser, config_help: str, set_example: str, out_help: str = "run folder",
                      set_what: str = "a config value",
                      after_config: Optional[Callable[[argparse.ArgumentParser], None]] = None) -> None:
    """The run-folder options of a job that trains into RUN_DIR: ``--config``, (``after_config``'s options),
    ``--out RUN_DIR``, ``--set KEY=VALUE`` (its help: override ``set_what``, e.g. ``--set set_example``),
    ``--data``, ``--log``, ``--resume`` and ``--force``."""
    p.add_argument("--config", help=config_help)
    if after_config is not None:
        after_config(p)
    p.add_argument("--out", required=True, metavar="RUN_DIR", help=out_help)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help=f"override {set_what}, e.g. --set {set_example} (repeatable)")
    add_data_arg(p)
    add_log_arg(p)
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from its checkpoint")
    p.add_argument("--force", action="store_true", help="replace RUN_DIR if it holds a run")


def _check_data_arg(data: str) -> None:
    """``--data`` names the user's images: a missing folder is a typo, never a place to build the built-in set."""
    path = Path(data)
    if not path.is_dir():
        from ..data.errors import DataError

        what = "is not a folder" if path.exists() else "does not exist"
        raise DataError(f"--data {data} {what}; give a folder with trainA, trainB, testA, testB (or drop --data "
                        "to use the built-in set)")


def job_overrides(args: argparse.Namespace) -> List[str]:
    """``--set`` values plus the ones ``--data`` and the global ``--threads`` stand for (the flags win)."""
    out = list(getattr(args, "overrides", []) or [])
    if getattr(args, "data", None):
        _check_data_arg(args.data)
        out.append(f"data.root={json.dumps(str(Path(args.data).resolve()))}")
    if getattr(args, "threads", None) is not None:
        out.append(f"threads={int(args.threads)}")
    if getattr(args, "log", None):
        out.append(f"log={args.log}")
    return out


def job_config(args: argparse.Namespace, path: Optional[str | Path]):
    """The job's config: the YAML at ``path`` (defaults when None) with :func:`job_overrides`.

    Applies its CPU thread count, so ``--threads`` and the config's ``threads`` mean
    the same for every command.
    """
    from ..core import distributed
    from ..config import COMMAND_STAGES, check_resources, load_config
    from ..core.runs import apply_threads

    from ..train.curves import check_available

    cfg = load_config(path, job_overrides(args))
    check_available(cfg.log)  # a missing tensorboard package is said now, not after the teacher trained
    apply_threads(cfg.threads)
    distributed.check_launch_device(cfg.device)
    check_resources(cfg, COMMAND_STAGES.get(getattr(args, "command", None), ()))
    return cfg


def apply_restart(args: argparse.Namespace, resume_file: str = "config.yaml") -> None:
    """Set ``args.resume``/``args.force`` for this attempt of a torchrun job (:func:`coevo.core.runs.restart_flags`):
    a restarted job resumes the run it started and never deletes another. Rank 0 decides for every rank.
    A ``--resume`` of a run stopped before it wrote ``resume_file`` starts it again
    (:func:`coevo.core.runs.unstarted_resume`)."""
    from ..core import distributed
    from ..core.runs import restart_flags, unstarted_resume

    def flags():
        resume, force = restart_flags(args.out, args.resume, args.force, resume_file)
        return unstarted_resume(args.out, resume, force, resume_file)

    args.resume, args.force = distributed.on_main(flags)
