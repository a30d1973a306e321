"""`coevo compress`: teacher training (unless given), search, fine-tune, export, benchmark — resumable."""
from __future__ import annotations

import argparse

from ._teacher import add_teacher_arguments, teacher_from_args
from .common import add_data_arg, add_log_arg, apply_restart, job_config


def add_parser(sub) -> None:
    p = sub.add_parser(
        "compress",
        help="run the whole pipeline: [train teacher] -> search -> fine-tune -> export -> bench -> report",
        description="Run every stage into RUN_DIR and write report.md/report.json and image grids there "
                    "(as `coevo demo` does); finished stages are skipped on --resume.",
    )
    p.add_argument("--config", required=True, help="YAML config (e.g. configs/horse2zebra.yaml)")
    p.add_argument("--out", required=True, help="run folder")
    add_teacher_arguments(p, "existing teacher: coevo training run or folder of latest_net_G_A.pth, "
                             "latest_net_G_B.pth (and latest_net_D_A.pth, latest_net_D_B.pth if you have them)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set search.macs_ratio=0.2 (repeatable)")
    add_data_arg(p)
    add_log_arg(p)
    p.add_argument("--resume", action="store_true", help="continue an interrupted run")
    p.add_argument("--force", action="store_true", help="delete RUN_DIR first if it is an earlier coevo run")
    p.set_defaults(func=run)


def print_stage(result) -> None:
    state = "skipped (already done)" if result.skipped else f"done in {result.seconds:.1f} s"
    print(f"[{result.name}] {state} -> {result.path}", flush=True)


def _is_pix2pix(args: argparse.Namespace) -> bool:
    """A pix2pix job: a pix2pix teacher folder, a pix2pix run to resume, or no teacher and aligned data."""
    from ..models.pix2pix import teacher_kind
    from ..search.pix2pix import is_pix2pix_run

    if args.teacher is not None:
        return teacher_kind(args.teacher) == "pix2pix"
    if args.teacher_ab is not None or args.teacher_ba is not None:
        return False
    if args.resume:
        return is_pix2pix_run(args.out)
    from ..data.aligned import resolve_layout

    return resolve_layout(job_config(args, args.config).data) == "aligned"


def _compress_pix2pix(args: argparse.Namespace) -> int:
    """`coevo compress` on paired data: [train] -> one-population search -> fine-tune -> export."""
    from ..core.runs import undo_unstarted_run
    from ..search.pix2pix import PIX2PIX_UNSTARTED, compress_pix2pix

    cfg = job_config(args, args.config)
    with undo_unstarted_run(args.out, args.resume, PIX2PIX_UNSTARTED):
        s = compress_pix2pix(cfg, args.out, teacher=args.teacher, resume=args.resume, force=args.force)
    t = s["test"]
    print(f"pix2pix student: {s['macs_ratio']:.1%} of the teacher's MACs; test PSNR {t['student']['psnr']:.2f} dB "
          f"(teacher {t['teacher']['psnr']:.2f} dB, gap {t['psnr_gap_db']:+.2f} dB) on {t['images']} pairs "
          f"({s['reference_mode']} mode)")
    print(f"deployed ({s['speed']['backend']}): {s['speed']['speedup_vs_teacher_eager']:.2f}x the teacher's eager "
          f"speed at {s['speed'].get('batch', 1)}x{cfg.bench.size}px")
    print(f"fine-tuned generator: {args.out}/finetune/G.pt; exports: {args.out}/export; benchmark: "
          f"{args.out}/bench/bench.json; summary: {args.out}/compress.json")
    verdict = "all targets met" if s["all_checks_pass"] else "SOME TARGETS MISSED (see checks)"
    print(f"report: {args.out}/report.md ({verdict})")
    return 0


def run(args: argparse.Namespace) -> int:
    from ..core import distributed
    from ..pipeline import UNSTARTED, Pipeline
    from ..evaluation.report import build_report
    from ..core.runs import RUN_MARKER, undo_unstarted_run

    apply_restart(args, resume_file=RUN_MARKER)
    if _is_pix2pix(args):
        return _compress_pix2pix(args)
    teacher = teacher_from_args(args)  # a wrong teacher fails before any work
    cfg = job_config(args, args.config)
    pipe = Pipeline(cfg, args.out, teacher=teacher, resume=args.resume, force=args.force,
                    on_stage=print_stage)
    with undo_unstarted_run(args.out, args.resume, UNSTARTED):
        pipe.run()
    report = distributed.on_main(build_report, pipe.out, pipe.cfg)  # the one demo writes, for any data
    print(f"compressed pair: {pipe.dir('finetune') / 'G_A.pt'}, {pipe.dir('finetune') / 'G_B.pt'}")
    print(f"exports: {pipe.dir('export')}; benchmark: {pipe.dir('bench') / 'bench.json'}")
    verdict = "all targets met" if report["all_checks_pass"] else "SOME TARGETS MISSED (see checks)"
    print(f"report: {pipe.out / 'report.md'} ({verdict})")
    return 0
