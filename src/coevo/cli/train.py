"""`coevo train`: train a teacher CycleGAN (when you have no trained one)."""
from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_run_arguments, apply_restart, job_config
from ..errors import ConfigError


def add_parser(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a CycleGAN teacher (G_A, G_B, D_A, D_B) from scratch",
        description="Train a CycleGAN into RUN_DIR: checkpoints, log.jsonl, sample grids, G_A.pt ... and the "
                    "reference-named latest_net_*.pth. The folder is a teacher for `coevo search --teacher`.",
    )
    add_run_arguments(p, "YAML config, e.g. configs/demo.yaml (with --resume: defaults to RUN_DIR/config.yaml)",
                      "train.epochs=5")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..core.runs import undo_unstarted_run
    from ..train.teacher import train_teacher

    if args.config is None and not args.resume:
        raise ConfigError("give --config (e.g. --config configs/demo.yaml), or --resume to continue RUN_DIR")
    if args.resume and args.force:
        raise ConfigError("--resume and --force contradict each other: choose one")
    apply_restart(args)
    if args.config is None and not args.resume:
        raise ConfigError(f"{args.out} was stopped before it wrote its config.yaml: start it again with --config "
                          "FILE --resume")
    config = args.config if args.config is not None else Path(args.out) / "config.yaml"
    cfg = job_config(args, config)
    from ..data.aligned import resolve_layout

    if resolve_layout(cfg.data) == "aligned":  # paired data: a pix2pix teacher (coevo.train.pix2pix)
        from ..train.pix2pix import train_pix2pix

        with undo_unstarted_run(args.out, args.resume, ("checkpoint.pt",)):
            out = train_pix2pix(cfg, args.out, resume=args.resume, force=args.force)
        print(f"pix2pix teacher: {out} (G.pt, D.pt, latest_net_G.pth, latest_net_D.pth; samples in "
              f"{out / 'samples'}, test PSNR in summary.json)")
        return 0
    with undo_unstarted_run(args.out, args.resume, ("checkpoint.pt",)):
        out = train_teacher(cfg, args.out, resume=args.resume, force=args.force)
    print(f"teacher: {out} (G_A.pt, G_B.pt, D_A.pt, D_B.pt; samples in {out / 'samples'})")
    return 0
