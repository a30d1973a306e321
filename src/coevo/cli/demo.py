"""`coevo demo`: the whole job offline on the built-in data set, with a report."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from .common import add_data_arg, add_log_arg, job_config
from ..errors import ConfigError


def default_demo_config() -> Path:
    """configs/demo.yaml of the source tree (coevo is installed editable from a clone)."""
    repo = Path(__file__).resolve().parents[3] / "configs" / "demo.yaml"
    if not repo.exists():
        raise ConfigError(f"{repo} not found; run the demo from a clone of coevo or pass --config FILE")
    return repo


def add_parser(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="compress a CycleGAN on the built-in data set, offline, and write a report",
        description="Builds the synthetic data set, trains a small teacher, searches, fine-tunes, "
                    "exports and benchmarks; writes report.md/report.json and image grids into --out.",
    )
    p.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    p.add_argument("--config", default=None, help="config to use instead of configs/demo.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    add_data_arg(p)
    add_log_arg(p)
    p.add_argument("--resume", action="store_true", help="continue an interrupted demo")
    p.add_argument("--force", action="store_true", help="delete --out first if it is an earlier coevo run")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..core.files import atomic_write_text
    from ..pipeline import UNSTARTED, Pipeline
    from ..evaluation.report import build_report
    from ..core.runs import undo_unstarted_run
    from .compress import print_stage

    t0 = time.perf_counter()
    cfg = job_config(args, args.config or default_demo_config())
    pipe = Pipeline(cfg, args.out, resume=args.resume, force=args.force, on_stage=print_stage)
    with undo_unstarted_run(args.out, args.resume, UNSTARTED):
        pipe.run()
    report = build_report(pipe.out, pipe.cfg)
    minutes = (time.perf_counter() - t0) / 60
    timing = {"wall_minutes": round(minutes, 2), "resumed": bool(args.resume),
              "finetune_recipe": pipe.cfg.finetune.mode,
              "stage_seconds": {r.name: round(r.seconds, 1) for r in pipe.results}}
    atomic_write_text(pipe.out / "demo.json", json.dumps(timing, indent=2) + "\n")
    print()
    print((pipe.out / "report.md").read_text().split("\n## ")[0])
    verdict = "all targets met" if report["all_checks_pass"] else "SOME TARGETS MISSED (see checks)"
    print(f"demo finished in {minutes:.1f} min: {verdict}")
    print(f"report: {pipe.out / 'report.md'}")
    return 0
