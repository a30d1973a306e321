"""`coevo finetune`: fine-tune the compressed pair of a search run, or any genome pair (e.g. L1 baselines)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ._teacher import add_teacher_arguments, teacher_from_args
from .common import add_run_arguments, apply_restart, job_config, job_overrides
from ..errors import ConfigError


def add_parser(sub) -> None:
    p = sub.add_parser(
        "finetune",
        help="fine-tune the slim pair found by `coevo search` (CycleGAN losses + distillation)",
        description="Rebuild the search run's best genomes as narrow generators with the teacher's weights, "
                    "train them against the teacher's discriminators (fresh ones when the teacher has none) "
                    "with distillation from the teacher, "
                    "and keep the pair closest to the teacher on held-out training images (never test).",
    )
    p.add_argument("--search", metavar="RUN_DIR", help="folder of a finished `coevo search` (its best pair, "
                                                         "teacher and config)")
    add_teacher_arguments(p, "instead of --search: the teacher (coevo run or folder of latest_net_G_A.pth ...), "
                             "with --genome-a and --genome-b")
    p.add_argument("--genome-a", metavar="JSON",
                   help="instead of --search: G_A's genome, e.g. from `coevo prune --method l1|random` "
                        "(fine-tuned by the same recipe as a searched pair)")
    p.add_argument("--genome-b", metavar="JSON", help="instead of --search: G_B's genome")
    add_run_arguments(p, "with --genome-a/-b: YAML config (default: built-in defaults; on --resume: the run's "
                         "config.yaml). With --search: the search run's config is used",
                      "finetune.epochs=3", set_what="a value of the search run's config")
    p.set_defaults(func=run)


def _finetune_genomes(args: argparse.Namespace, own: Path) -> Path:
    """``--teacher ... --genome-a A.json --genome-b B.json``: any pair, fine-tuned by the one recipe."""
    from ..prune import Genome
    from ..train.finetune import finetune_genomes

    from ..models.pix2pix import teacher_kind

    if args.teacher is not None and teacher_kind(args.teacher) == "pix2pix":
        return _finetune_pix2pix_genome(args, own)
    if not (args.genome_a and args.genome_b):
        raise ConfigError("give --search RUN_DIR, or --teacher (or --teacher-ab/--teacher-ba) with both "
                          "--genome-a and --genome-b")
    teacher = teacher_from_args(args)
    if teacher is None:
        raise ConfigError("--genome-a/--genome-b need the teacher they were cut from: --teacher DIR "
                          "(or --teacher-ab FILE --teacher-ba FILE)")
    genomes = {"G_A": Genome.load_json(args.genome_a), "G_B": Genome.load_json(args.genome_b)}
    cfg = job_config(args, own if args.resume and own.is_file() else args.config)
    source = {"genomes_from": {k: str(Path(f).resolve()) for k, f in (("G_A", args.genome_a), ("G_B", args.genome_b))},
              "method": {k: g.meta.get("method") for k, g in genomes.items()}}
    return finetune_genomes(cfg, teacher, genomes, args.out, resume=args.resume, force=args.force, source=source)


def _finetune_pix2pix_genome(args: argparse.Namespace, own: Path) -> Path:
    """``--teacher PIX2PIX_DIR --genome-a G.json``: the one generator's genome (e.g. `coevo prune`), fine-tuned
    by the pix2pix recipe."""
    from ..train.pix2pix import finetune_pix2pix_genome

    if not args.genome_a or args.genome_b:
        raise ConfigError("a pix2pix teacher has one generator: give its genome as --genome-a (no --genome-b)")
    cfg = job_config(args, own if args.resume and own.is_file() else args.config)
    return finetune_pix2pix_genome(cfg, args.teacher, args.genome_a, args.out, resume=args.resume, force=args.force,
                                   source={"genome_from": str(Path(args.genome_a).resolve())})


def _finetune_pix2pix(args: argparse.Namespace, config: Path) -> int:
    """The best genome of a pix2pix search, fine-tuned by the pix2pix objective plus distillation."""
    from ..core.runs import undo_unstarted_run
    from ..train.pix2pix import finetune_pix2pix

    cfg = job_config(args, config)
    with undo_unstarted_run(args.out, args.resume, ("checkpoint.pt",)):
        out = finetune_pix2pix(args.search, args.out, cfg, resume=args.resume, force=args.force)
    return _print_pix2pix(out)


def _print_pix2pix(out: Path) -> int:
    r = json.loads((out / "finetune.json").read_text())
    t = r["test"]
    print(f"G: {r['macs']['student'] / 1e6:.1f}M MACs ({r['macs_ratio']:.1%} of the teacher); test PSNR "
          f"{t['student']['psnr']:.2f} dB (teacher {t['teacher']['psnr']:.2f} dB) on {t['images']} pairs")
    print(f"fine-tuned generator: {out / 'G.pt'} (epoch {r['selected_epoch']})")
    return 0


def run(args: argparse.Namespace) -> int:
    from ..core.runs import undo_unstarted_run
    from ..train.finetune import finetune

    if args.resume and args.force:
        raise ConfigError("--resume and --force contradict each other: choose one")
    apply_restart(args)
    own = Path(args.out) / "config.yaml"
    if args.search is not None:
        if args.genome_a or args.genome_b or args.teacher or args.teacher_ab or args.teacher_ba or args.config:
            raise ConfigError("--search takes the genomes, teacher and config of the search run; drop --genome-a/-b, "
                              "--teacher* and --config, or drop --search")
        config = own if args.resume and own.is_file() else Path(args.search) / "config.yaml"
        if config.is_file():  # bad --set values fail here, and the run's threads apply unless --threads says
            job_config(args, config)
        recorded = Path(args.search) / "teacher.json"
        if recorded.is_file() and json.loads(recorded.read_text()).get("kind") == "pix2pix":
            return _finetune_pix2pix(args, config)
        with undo_unstarted_run(args.out, args.resume, ("checkpoint.pt",)):
            out = finetune(args.search, args.out, resume=args.resume, overrides=job_overrides(args), force=args.force)
    else:
        with undo_unstarted_run(args.out, args.resume, ("checkpoint.pt",)):
            out = _finetune_genomes(args, own)
    report = json.loads((out / "finetune.json").read_text())
    if report.get("kind") == "pix2pix":
        return _print_pix2pix(out)
    for name, m in report["models"].items():
        print(f"{name}: {m['student']['macs'] / 1e6:.1f}M MACs ({m['macs_ratio']:.1%} of the teacher), "
              f"{m['student']['params'] / 1e3:.1f}k params")
    val = report["val"].get("val_l1")
    picked = f"epoch {report['best_epoch']}" + (f", val L1 to teacher {val:.4f}" if val is not None else "")
    print(f"fine-tuned pair: {out / 'G_A.pt'}, {out / 'G_B.pt'} ({picked})")
    return 0
