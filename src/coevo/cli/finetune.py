"""`coevo finetune`: fine-tune the compressed pair of a search run."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from .common import add_data_arg, job_config, job_overrides


def add_parser(sub) -> None:
    p = sub.add_parser(
        "finetune",
        help="fine-tune the slim pair found by `coevo search` (CycleGAN losses + distillation)",
        description="Rebuild the search run's best genomes as narrow generators with the teacher's weights, "
                    "train them against the teacher's discriminators (fresh ones when the teacher has none) "
                    "with distillation from the teacher, "
                    "and keep the pair closest to the teacher on held-out training images (never test).",
    )
    p.add_argument("--search", required=True, metavar="RUN_DIR", help="folder of a finished `coevo search`")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run folder")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a value of the search run's config, e.g. --set finetune.epochs=3 (repeatable)")
    add_data_arg(p)
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from its checkpoint")
    p.add_argument("--force", action="store_true", help="replace RUN_DIR if it holds a run")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..config import ConfigError
    from ..train.finetune import finetune

    if args.resume and args.force:
        raise ConfigError("--resume and --force contradict each other: choose one")
    own = Path(args.out) / "config.yaml"
    config = own if args.resume and own.is_file() else Path(args.search) / "config.yaml"
    if config.is_file():  # bad --set values fail here, and the run's threads apply unless --threads says
        job_config(args, config)
    out = finetune(args.search, args.out, resume=args.resume, overrides=job_overrides(args), force=args.force)
    report = json.loads((out / "finetune.json").read_text())
    for name, m in report["models"].items():
        print(f"{name}: {m['student']['macs'] / 1e6:.1f}M MACs ({m['macs_ratio']:.1%} of the teacher), "
              f"{m['student']['params'] / 1e3:.1f}k params")
    val = report["val"].get("val_l1")
    picked = f"epoch {report['best_epoch']}" + (f", val L1 to teacher {val:.4f}" if val is not None else "")
    print(f"fine-tuned pair: {out / 'G_A.pt'}, {out / 'G_B.pt'} ({picked})")
    return 0
