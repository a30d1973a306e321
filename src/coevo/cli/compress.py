"""`coevo compress`: teacher training (unless given), search, fine-tune, export, benchmark — resumable."""
from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser(
        "compress",
        help="run the whole pipeline: [train teacher] -> search -> fine-tune -> export -> bench",
        description="Run every stage into RUN_DIR; finished stages are skipped on --resume.",
    )
    p.add_argument("--config", required=True, help="YAML config (e.g. configs/horse2zebra.yaml)")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--teacher", help="existing teacher: coevo training run or folder of latest_net_*.pth")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set search.macs_ratio=0.2 (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run")
    p.add_argument("--force", action="store_true", help="delete RUN_DIR first if it exists")
    p.set_defaults(func=run)


def print_stage(result) -> None:
    state = "skipped (already done)" if result.skipped else f"done in {result.seconds:.1f} s"
    print(f"[{result.name}] {state} -> {result.path}", flush=True)


def run(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..pipeline import Pipeline

    cfg = load_config(args.config, args.overrides)
    pipe = Pipeline(cfg, args.out, teacher=args.teacher, resume=args.resume, force=args.force,
                    on_stage=print_stage)
    pipe.run()
    print(f"compressed pair: {pipe.dir('finetune') / 'G_A.pt'}, {pipe.dir('finetune') / 'G_B.pt'}")
    print(f"exports: {pipe.dir('export')}; benchmark: {pipe.dir('bench') / 'bench.json'}")
    return 0
