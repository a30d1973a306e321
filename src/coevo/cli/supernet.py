"""`coevo supernet`: train the weight-sharing supernet pair that `search.fitness: supernet` scores candidates with."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ._teacher import add_teacher_arguments, teacher_and_config
from .common import add_run_arguments, job_config


def add_parser(sub) -> None:
    p = sub.add_parser(
        "supernet",
        help="train one weight-sharing network per generator for every channel mask (search.fitness=supernet)",
        description="From the teacher, train a full-width G_A and G_B whose weights serve every channel mask the "
                    "search may pick (distillation to the teacher; per step the full network, one at the "
                    "search's budget and supernet.random_masks in between). Writes G_A.pt, G_B.pt and "
                    "supernet.json into --out; give that folder to `coevo search --supernet`. Checkpoints "
                    "every supernet.checkpoint_every steps (resume with --resume).",
    )
    add_run_arguments(p, "YAML config (default: built-in defaults; on --resume: the run's config.yaml)",
                      "supernet.steps=500", out_help="run folder for the supernet",
                      after_config=lambda q: add_teacher_arguments(
                          q, "coevo training run or folder with latest_net_G_A.pth, latest_net_G_B.pth "
                             "(on --resume: the run's teacher.json)"))
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..core.runs import undo_unstarted_run
    from ..train.supernet import train_supernet

    out = Path(args.out)
    teacher, config_path = teacher_and_config(args, "supernet run")
    cfg = job_config(args, config_path)
    with undo_unstarted_run(out, args.resume, ("checkpoint.pt",)):
        run_dir = train_supernet(cfg, out, teacher=teacher, resume=args.resume, force=args.force)
    record = json.loads((run_dir / "supernet.json").read_text())
    l1 = ", ".join(f"{d} full {m['full']:.4f} budget {m['budget']:.4f}" for d, m in record["l1_to_teacher"].items())
    print(f"supernet: {record['steps']} steps, {record['masks_per_step']} masks per step, "
          f"{record['train_seconds']:.1f}s; L1 to the teacher: {l1}")
    print(f"supernet pair: {run_dir / 'G_A.pt'}, {run_dir / 'G_B.pt'} (give {run_dir} to `coevo search --supernet`)")
    return 0
