"""`coevo search`: co-evolutionary search for a slim G_A/G_B pair under a MAC budget."""
from __future__ import annotations

import sys
from pathlib import Path


def add_parser(sub):
    p = sub.add_parser(
        "search",
        help="co-evolutionary search for slim generators (Shu et al. 2019) under a MAC budget",
        description="Evolve one population of channel genomes per generator. Writes best genomes, "
                    "history.jsonl, plots and search.json into --out; checkpoints every generation "
                    "(resume with --resume). MACs: 1x3x256x256, published convention.",
    )
    p.add_argument("--config", help="YAML config (default: built-in defaults; on --resume: the run's config.yaml)")
    p.add_argument("--teacher", help="coevo training run or folder with latest_net_{G_A,G_B,D_A,D_B}.pth "
                                     "(on --resume: the run's teacher.json)")
    p.add_argument("--out", required=True, help="run folder for the search")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set search.macs_ratio=0.2 (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue the search in --out from its last checkpoint")
    p.add_argument("--force", action="store_true", help="overwrite a non-empty --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..config import load_config
    from ..runs import RunDirError
    from ..search import run_search

    out = Path(args.out)
    if args.resume and args.force:
        raise RunDirError("--resume and --force contradict each other; choose one")
    if args.resume:
        if not (out / "config.yaml").exists():
            raise RunDirError(f"cannot resume: {out} holds no search (config.yaml missing); drop --resume")
        config_path = args.config or out / "config.yaml"
    else:
        if args.teacher is None:
            raise RunDirError("--teacher is required for a new search")
        config_path = args.config
    from ..prune import BudgetError, GenomeError

    cfg = load_config(config_path, args.overrides)
    if args.threads is None:  # the global --threads wins over the config's
        from ..runs import apply_threads

        apply_threads(cfg.threads)
    try:
        result = run_search(cfg, out, teacher=args.teacher, resume=args.resume, force=args.force,
                            progress=not args.no_progress)
    except (BudgetError, GenomeError) as e:
        print(f"coevo search: error: {e}", file=sys.stderr)
        return 2
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
