"""`coevo demo`: the whole job offline on the built-in data set, with a report."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from .common import add_data_arg, add_log_arg, job_config
from ..errors import ConfigError


# --task -> the config the demo runs (configs/ of the source tree)
DEMO_CONFIGS = {"cyclegan": "demo.yaml", "pix2pix": "pix2pix.yaml"}


def default_demo_config(task: str = "cyclegan") -> Path:
    """configs/demo.yaml (``task`` pix2pix: configs/pix2pix.yaml) of the source tree (coevo is installed
    editable from a clone)."""
    repo = Path(__file__).resolve().parents[3] / "configs" / DEMO_CONFIGS[task]
    if not repo.exists():
        raise ConfigError(f"{repo} not found; run the demo from a clone of coevo or pass --config FILE")
    return repo


def add_parser(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="compress a CycleGAN (or --task pix2pix) on the built-in data set, offline, and write a report",
        description="Builds the synthetic data set, trains a small teacher, searches, fine-tunes, "
                    "exports and benchmarks; writes report.md/report.json (and, for CycleGAN, image grids) "
                    "into --out. --task pix2pix does the same for a pix2pix teacher on the built-in paired set.",
    )
    p.add_argument("--task", choices=sorted(DEMO_CONFIGS), default="cyclegan",
                   help="cyclegan (default; configs/demo.yaml) or pix2pix (configs/pix2pix.yaml: paired data)")
    p.add_argument("--out", default=None, help="output folder (default: runs/demo, runs/demo-pix2pix)")
    p.add_argument("--config", default=None, help="config to use instead of the task's (configs/demo.yaml)")
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
    if args.out is None:
        args.out = "runs/demo" if args.task == "cyclegan" else f"runs/demo-{args.task}"
    cfg = job_config(args, args.config or default_demo_config(args.task))
    if args.task == "pix2pix":
        return _pix2pix_demo(args, cfg, t0)
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


def _pix2pix_demo(args: argparse.Namespace, cfg, t0: float) -> int:
    """The pix2pix pipeline (coevo.search.pix2pix.compress_pix2pix) on the built-in paired set."""
    from ..core.files import atomic_write_text
    from ..core.runs import undo_unstarted_run
    from ..search.pix2pix import PIX2PIX_UNSTARTED, compress_pix2pix

    with undo_unstarted_run(args.out, args.resume, PIX2PIX_UNSTARTED):
        summary = compress_pix2pix(cfg, args.out, resume=args.resume, force=args.force)
    out = Path(args.out)
    minutes = (time.perf_counter() - t0) / 60
    atomic_write_text(out / "demo.json", json.dumps({"task": "pix2pix", "wall_minutes": round(minutes, 2),
                                                     "resumed": bool(args.resume)}, indent=2) + "\n")
    print()
    print((out / "report.md").read_text())
    verdict = "all targets met" if summary["all_checks_pass"] else "SOME TARGETS MISSED (see checks)"
    print(f"pix2pix demo finished in {minutes:.1f} min: {verdict}")
    print(f"report: {out / 'report.md'}")
    return 0
