"""Does the search find better slim generators than one-shot baselines at the same MACs?

At one MAC budget (default 0.25 of the teacher), before any fine-tuning, three
G_A/G_B pairs are compared on held-out TRAINING-split images (the part of the
training split that coevo.data holds out for model selection: neither the
search's evaluation batch nor the test split):

* the searched pair (``--search RUN_DIR``, or a search run here);
* the L1-norm genome (Li et al. 2017) at the budget;
* random genomes at the budget: as many per generator as the search evaluated,
  the best of them chosen on the search's own evaluation batch by perceptual
  distance to the teacher (the quantity reported here, so the choice favours
  the baseline).

Reported per generator: the perceptual distance to the teacher's output (the
search's metric, lower is better), the L1 distance to the teacher's output,
and the pair's cycle L1 (x -> G_A -> G_B vs x). MACs: one 256x256 forward,
published convention.

    python benchmarks/search_quality.py --teacher runs/teacher_demo --data datasets/synthetic \\
        --config configs/demo.yaml [--search runs/search_demo]

Prints a table and writes ``search_quality.json`` into --out.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Dict, Sequence

import numpy as np
import torch

from coevo.config import config_from_dict, config_to_dict, load_config
from coevo.models.teacher import find_teacher
from coevo.prune import Genome, l1_genome_for_macs, macs_of_genome, random_genome_for_macs, slim
from coevo.search import DIRECTIONS, MACS_CONVENTION, MACS_SIZE, build_context, run_search
from coevo.search.context import PARTNER, SearchContext, split_images


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", required=True, help="coevo training run or reference checkpoint folder")
    p.add_argument("--data", required=True, help="data folder with trainA/trainB (held-out part is used)")
    p.add_argument("--config", help="config YAML (default: the search run's config.yaml, else defaults)")
    p.add_argument("--search", help="finished search run folder (default: run a search into --out/search)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for the search run here, e.g. search.generations=10")
    p.add_argument("--macs-ratio", type=float, default=0.25, help="MAC budget (default 0.25)")
    p.add_argument("--random", type=int, default=None,
                   help="random genomes per generator (default: as many as the search evaluated)")
    p.add_argument("--compare-paper", action="store_true",
                   help="also run a search with the paper's operators (roulette selection, segment-flip "
                        "mutation, no L1-norm seeding; same budget, population and generations) and compare")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's default)")
    p.add_argument("--out", default="benchmarks/results", help="output folder (default benchmarks/results)")
    return p.parse_args(argv)


# The paper's genetic operators; everything else (budget, population, generations, metric) stays the same.
PAPER_OPERATORS = ["search.selection=roulette", "search.mutation=segment_flip", "search.seed_with_l1=false"]


def load_cfg(args):
    config = args.config
    if config is None and args.search:
        config = Path(args.search) / "config.yaml"
    overrides = [f"data.root={args.data}", f"search.macs_ratio={args.macs_ratio}",
                 "search.compute=budget", *args.overrides]
    return load_config(config, overrides)


def best_random(ctx: SearchContext, direction: str, n: int, macs_ratio: float, rng: np.random.Generator) -> Genome:
    """Best of ``n`` random genomes at the budget by perceptual distance on the search's evaluation batch."""
    from coevo.search.fitness import candidate_output, perceptual_term

    best, best_d = None, float("inf")
    arch = ctx[direction].teacher.arch
    for _ in range(n):
        g = random_genome_for_macs(arch, macs_ratio, MACS_SIZE, rng)
        d = perceptual_term(ctx, direction, candidate_output(ctx, direction, g))
        if d < best_d:
            best, best_d = g, d
    return best


@torch.inference_mode()
def measure(ctx: SearchContext, pair: Dict[str, Genome], held_out: Dict[str, torch.Tensor],
            metrics: Dict[str, object]) -> Dict[str, Dict[str, float]]:
    nets = {d: slim(ctx[d].teacher, pair[d]).eval() for d in DIRECTIONS}
    out = {}
    for d in DIRECTIONS:
        x = held_out[d]
        y, t = nets[d](x), ctx[d].teacher(x)
        out[d] = {
            "perceptual": float(metrics[d](y, t).mean()),
            "l1_to_teacher": float((y - t).abs().mean()),
            "cycle": float((nets[PARTNER[d]](y) - x).abs().mean()),
            "macs": macs_of_genome(pair[d], MACS_SIZE),
            "macs_ratio": macs_of_genome(pair[d], MACS_SIZE) / ctx.budget.teacher_macs,
        }
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_cfg(args)
    out = Path(args.out)
    t0 = time.perf_counter()
    if args.search:
        run_dir = Path(args.search)
        summary = json.loads((run_dir / "search.json").read_text())
    else:
        result = run_search(cfg, out / "search", teacher=args.teacher, force=True)
        run_dir, summary = result.run_dir, result.summary
    search_s = time.perf_counter() - t0
    searched = {d: Genome.load_json(run_dir / "genomes" / f"best_{d}.json") for d in DIRECTIONS}

    ctx = build_context(cfg, find_teacher(args.teacher))
    s = cfg.search
    n_random = args.random or max(1, int(summary["evaluations"]) // 2)
    rng = np.random.default_rng(cfg.seed)
    t0 = time.perf_counter()
    pairs = {
        "coevo search": searched,
        "L1-norm": {d: l1_genome_for_macs(ctx[d].teacher, args.macs_ratio, MACS_SIZE, s.min_channels,
                                          s.channel_multiple, MACS_CONVENTION, tied=s.tied) for d in DIRECTIONS},
        f"best of {n_random} random": {d: best_random(ctx, d, n_random, args.macs_ratio, rng) for d in DIRECTIONS},
    }
    random_s = time.perf_counter() - t0
    if args.compare_paper:
        t1 = time.perf_counter()
        paper_cfg = config_from_dict(config_to_dict(cfg), PAPER_OPERATORS)
        paper = run_search(paper_cfg, out / "search_paper_operators", teacher=args.teacher, force=True)
        pairs["search, paper's operators"] = paper.best
        log_paper = {"seconds": time.perf_counter() - t1, "overrides": PAPER_OPERATORS}
    x_A, x_B = split_images(cfg, "val")
    held_out = {"G_A": x_A, "G_B": x_B}
    # Measured with the search's metric (search.perceptual=auto resolved), on new images: the
    # metric objects hold no embeddings, those are cached in the context.
    metrics = {d: ctx[d].metric for d in DIRECTIONS}
    results = {name: measure(ctx, pair, held_out, metrics) for name, pair in pairs.items()}

    print(f"\nAt <= {args.macs_ratio} of the teacher's MACs ({ctx.budget.teacher_macs / 1e9:.3f}G, 256x256, "
          f"published), before fine-tuning; {len(x_A)}+{len(x_B)} held-out training images at "
          f"{x_A.shape[-1]}x{x_A.shape[-1]}; metric: {ctx.metric_name}\n")
    print("| genomes | G_A perceptual | G_B perceptual | G_A L1 to teacher | G_B L1 to teacher | "
          "cycle A | cycle B | MACs ratio A / B |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        a, b = r["G_A"], r["G_B"]
        print(f"| {name} | {a['perceptual']:.4f} | {b['perceptual']:.4f} | {a['l1_to_teacher']:.4f} | "
              f"{b['l1_to_teacher']:.4f} | {a['cycle']:.4f} | {b['cycle']:.4f} | "
              f"{a['macs_ratio']:.3f} / {b['macs_ratio']:.3f} |")
    out.mkdir(parents=True, exist_ok=True)
    record = {
        "benchmark": "search_quality", "macs_ratio": args.macs_ratio, "teacher_macs": ctx.budget.teacher_macs,
        "macs_size": MACS_SIZE, "macs_convention": MACS_CONVENTION, "metric": ctx.metric_name,
        "held_out_images": [len(x_A), len(x_B)], "image_size": int(x_A.shape[-1]),
        "search_run": str(run_dir), "search_summary": {k: summary[k] for k in
                                                       ("generations", "population", "evaluations", "cache_hits",
                                                        "wall_time_s") if k in summary},
        "search_config": {k: getattr(s, k) for k in vars(s)},
        "paper_operators": log_paper if args.compare_paper else None,
        "random_per_generator": n_random, "seconds": {"search": search_s, "random_baseline": random_s},
        "results": results,
    }
    (out / "search_quality.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"\nwrote {out / 'search_quality.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
