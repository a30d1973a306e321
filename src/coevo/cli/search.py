"""`coevo search`: co-evolutionary search for a slim G_A/G_B pair under a MAC budget."""
from __future__ import annotations

from pathlib import Path

from ._teacher import add_teacher_arguments, teacher_and_config
from .common import add_data_arg, add_log_arg, job_config
from ..errors import ConfigError


def add_parser(sub):
    p = sub.add_parser(
        "search",
        help="co-evolutionary search for slim generators (Shu et al. 2019) under a MAC budget",
        description="Evolve one population of channel genomes per generator. Writes best genomes, "
                    "history.jsonl, plots and search.json into --out; checkpoints every generation "
                    "(resume with --resume). MACs: 1x3x256x256, published convention.",
    )
    p.add_argument("--config", help="YAML config (default: built-in defaults; on --resume: the run's config.yaml)")
    add_teacher_arguments(p, "coevo training run or folder with latest_net_G_A.pth, latest_net_G_B.pth "
                             "(and latest_net_D_A.pth, latest_net_D_B.pth if you have them; "
                             "on --resume: the run's teacher.json)")
    p.add_argument("--out", required=True, help="run folder for the search")
    p.add_argument("--supernet", metavar="DIR",
                   help="with search.fitness=supernet: the `coevo supernet` folder of this teacher whose weights "
                        "candidates are cut from (on --resume: the run's)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set search.macs_ratio=0.2 (repeatable)")
    add_data_arg(p)
    add_log_arg(p)
    p.add_argument("--resume", action="store_true", help="continue the search in --out from its last checkpoint")
    p.add_argument("--force", action="store_true", help="delete --out first if it is an earlier coevo run")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _pix2pix_search(args, out: Path) -> int:
    """A pix2pix teacher (one generator): the one-population search of :mod:`coevo.search.pix2pix`."""
    import json

    from ..core.runs import undo_unstarted_run
    from ..search.pix2pix import run_pix2pix_search

    if args.supernet is not None:
        raise ConfigError("--supernet: the pix2pix search scores inherited weights (search.fitness=proxy) so far")
    config = args.config if args.config or not args.resume else out / "config.yaml"
    cfg = job_config(args, config)
    with undo_unstarted_run(out, args.resume, ("state.pt",)):
        run_dir = run_pix2pix_search(cfg, out, teacher=args.teacher, resume=args.resume, force=args.force)
    s = json.loads((run_dir / "search.json").read_text())
    b = s["best"]
    print(f"pix2pix search: {s['generations']} generations, metric {s['metric']}, {s['evaluations']} evaluations "
          f"({s['cache_hits']} cache hits), {s['seconds']:.1f}s")
    print(f"G: fitness {b['fitness']:.4f}  perceptual {b['perceptual']:.4f}  L1 to target {b['l1_target']:.4f}  "
          f"{b['macs'] / 1e9:.3f} GMACs ({b['macs_ratio']:.3f} of teacher)")
    print(f"best genome: {run_dir / 'genomes' / 'best_G.json'}")
    return 0


def run(args) -> int:
    from ..core.runs import undo_unstarted_run
    from ..search import run_search

    out = Path(args.out)
    from ..models.pix2pix import teacher_kind

    recorded = out / "teacher.json"
    if (args.teacher is not None and teacher_kind(args.teacher) == "pix2pix") or \
            (args.resume and recorded.is_file() and '"pix2pix"' in recorded.read_text()):
        return _pix2pix_search(args, out)
    teacher, config_path = teacher_and_config(args, "search")
    cfg = job_config(args, config_path)
    with undo_unstarted_run(out, args.resume, ("state.pt",)):
        result = run_search(cfg, out, teacher=teacher, resume=args.resume, force=args.force,
                            progress=not args.no_progress, supernet=args.supernet)
    s = result.summary
    print(f"search: {s['generations']} generations, metric {s['metric']}, "
          f"{s['evaluations']} evaluations ({s['cache_hits']} cache hits), {s['wall_time_s']:.1f}s")
    print(f"teacher: {s['teacher_macs'] / 1e9:.3f} GMACs (256x256, {s['macs_convention']})"
          + (f", budget {s['budget_macs'] / 1e9:.3f} GMACs" if s["budget_macs"] else ""))
    for d, b in s["best"].items():
        print(f"{d}: fitness {b['fitness']:.4f}  perceptual {b['perceptual']:.4f}  cycle {b['cycle']:.4f}  "
              f"{b['macs'] / 1e9:.3f} GMACs ({b['macs_ratio']:.3f} of teacher)  {b['params'] / 1e6:.3f}M params")
    print(f"best genomes: {result.run_dir / 'genomes'}")
    return 0
