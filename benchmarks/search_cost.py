"""What one search generation costs: coevo's evaluation against the official code's way.

Both score the same populations (one per generator) of genomes at a MAC budget
on the same evaluation batch with the same fitness (discriminator-feature
perceptual distance to the teacher + cycle L1 through the other generator's
current best):

* naive, as the official GAN-Pruning code does it: for every candidate, mask
  the full-width teacher (dropped filters zeroed), mask the partner the same
  way, and recompute the teacher's output and its features;
* coevo, one real generation of :class:`coevo.search.CoevolutionSearch`
  (``step()``: re-scoring against the new partner, breeding, budget repair,
  evaluation) with everything coevo does: teacher outputs and features
  computed once per search (the one-time cost is reported), candidates run as
  physically slim networks, fitness cached by genome (elites and copies are
  free), candidate outputs cached when only the partner changed;
* coevo with no cache: the pure :func:`coevo.search.evaluate_genomes` on the
  same populations, i.e. the per-candidate speed-up alone.

Each round runs one search generation, then the naive and the cache-free
evaluations of the populations it produced, side by side; medians over
``--repeats`` rounds (successive generations) are compared. Weights are random
(seeded) unless ``--teacher`` is given: cost depends on the layer shapes, not on
the weight values.

    python benchmarks/search_cost.py --threads 1      # ngf 32, 9 blocks, 64x64, population 16
    python benchmarks/search_cost.py --population 32 --eval-images 16
    python benchmarks/search_cost.py --teacher runs/teacher_demo

Prints a table and writes ``search_cost.json`` into --out.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
import torch

from coevo.config import SearchConfig
from coevo.models import DiscriminatorArch, GeneratorArch, NLayerDiscriminator, ResnetGenerator
from coevo.prune import Genome, macs_of_genome, masked_generator
from coevo.search import DIRECTIONS, MACS_SIZE, CoevolutionSearch, Objective, evaluate_genomes, make_context
from coevo.search.context import PARTNER, SearchContext

LABELS = {"naive": "naive (official way)", "coevo": "coevo generation", "coevo_uncached": "coevo, no caches"}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", help="coevo training run or reference checkpoint folder (default: random weights)")
    p.add_argument("--ngf", type=int, default=32, help="random teacher width (default 32)")
    p.add_argument("--n-blocks", type=int, default=9, help="random teacher residual blocks (default 9)")
    p.add_argument("--ndf", type=int, default=None,
                   help="random discriminator width (default: ngf, the reference's ratio)")
    p.add_argument("--size", type=int, default=64, help="evaluation image size (default 64)")
    p.add_argument("--eval-images", type=int, default=8, help="evaluation images per domain (default 8)")
    p.add_argument("--population", type=int, default=16, help="genomes per population (default 16)")
    p.add_argument("--macs-ratio", type=float, default=0.25, help="MAC budget of the genomes (default 0.25)")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds (generations) (default 3)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results", help="output folder (default benchmarks/results)")
    return p.parse_args(argv)


def build_networks(args):
    if args.teacher:
        from coevo.models.teacher import find_teacher
        from coevo.search import load_teacher

        return load_teacher(find_teacher(args.teacher))
    torch.manual_seed(args.seed)
    arch = GeneratorArch.full(ngf=args.ngf, n_blocks=args.n_blocks)
    d_arch = DiscriminatorArch(ndf=args.ndf or args.ngf)
    return (ResnetGenerator(arch).eval(), ResnetGenerator(arch).eval(),
            NLayerDiscriminator(d_arch).eval(), NLayerDiscriminator(d_arch).eval())


def naive_generation(ctx: SearchContext, pops: Dict[str, List[Genome]], partners: Dict[str, Genome],
                     objective: Objective) -> List[float]:
    """The official code's evaluation: everything full width, everything recomputed per candidate."""
    fitness = []
    with torch.inference_mode():
        for d in DIRECTIONS:
            side = ctx[d]
            x = side.inputs
            for genome in pops[d]:
                candidate = masked_generator(side.teacher, genome)
                partner = masked_generator(ctx[PARTNER[d]].teacher, partners[d])
                y = candidate(x)
                teacher_y = side.teacher(x)  # recomputed for every candidate
                perceptual = float(side.metric(y, teacher_y).mean())
                cycle = float((partner(y) - x).abs().mean())
                fitness.append(objective.score(perceptual, cycle, 0, 0, 0).fitness)
    return fitness


def uncached_generation(ctx: SearchContext, pops: Dict[str, List[Genome]], partners: Dict[str, Genome],
                        objective: Objective) -> List[float]:
    return [t.fitness for d in DIRECTIONS for t in evaluate_genomes(ctx, d, pops[d], partners[d], objective)]


def timed_rounds(args, ctx: SearchContext, cfg: SearchConfig) -> Dict:
    objective = Objective.from_config(cfg)
    search = CoevolutionSearch(ctx, cfg, seed=args.seed)
    search.initialise()  # generation 0 is not timed: the comparison is one generation of evolution
    times: Dict[str, List[float]] = {k: [] for k in LABELS}
    hit_rates, macs_ratios, max_rel_diff = [], [], 0.0
    for r in range(args.repeats):
        partner_A = search.best("G_B").genome
        evals, hits = search.evaluator.evaluations, search.evaluator.cache_hits
        t = time.perf_counter()
        search.step()
        times["coevo"].append(time.perf_counter() - t)
        evals, hits = search.evaluator.evaluations - evals, search.evaluator.cache_hits - hits
        hit_rates.append(hits / (evals + hits))
        pops = {d: search.populations[d].genomes for d in DIRECTIONS}
        partners = {"G_A": partner_A, "G_B": search.best("G_A").genome}
        results = {}
        for name, fn in (("naive", naive_generation), ("coevo_uncached", uncached_generation)):
            t = time.perf_counter()
            results[name] = np.array(fn(ctx, pops, partners, objective))
            times[name].append(time.perf_counter() - t)
        # The same fitness all three ways (up to float rounding): the comparison is fair.
        coevo_fit = np.array([c.fitness for d in DIRECTIONS for c in search.populations[d].members])
        for fit in results.values():
            max_rel_diff = max(max_rel_diff, float(np.max(np.abs(fit - coevo_fit) / np.abs(coevo_fit))))
        macs_ratios += [macs_of_genome(g, MACS_SIZE) / ctx.budget.teacher_macs for d in DIRECTIONS for g in pops[d]]
        print(f"round {r + 1}/{args.repeats}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()),
              file=sys.stderr)
    return {"times": times, "hit_rate": float(np.mean(hit_rates)), "max_rel_diff": max_rel_diff,
            "mean_macs_ratio": float(np.mean(macs_ratios)), "max_macs_ratio": float(np.max(macs_ratios))}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    G_A, G_B, D_A, D_B = build_networks(args)
    gen = torch.Generator().manual_seed(args.seed)
    x_A = torch.rand(args.eval_images, 3, args.size, args.size, generator=gen) * 2 - 1
    x_B = torch.rand(args.eval_images, 3, args.size, args.size, generator=gen) * 2 - 1
    cfg = SearchConfig(population=args.population, macs_ratio=args.macs_ratio, perceptual="discriminator")
    t0 = time.perf_counter()
    ctx = make_context(G_A, G_B, D_A, D_B, x_A, x_B, cfg)
    context_s = time.perf_counter() - t0
    res = timed_rounds(args, ctx, cfg)
    times = res["times"]
    med = {k: statistics.median(v) for k, v in times.items()}
    speedup = med["naive"] / med["coevo"]
    n = 2 * args.population

    teacher = G_A.arch
    print(f"\nOne generation = {n} candidates ({args.population} per generator), {args.eval_images} images "
          f"per domain at {args.size}x{args.size}, torch threads {torch.get_num_threads()}")
    print(f"teacher: ngf {teacher.ngf}, {teacher.n_blocks} blocks, {ctx.budget.teacher_macs / 1e9:.2f} GMACs "
          f"(256x256, published), discriminator ndf {D_A.arch.ndf}; genomes at <= {args.macs_ratio} of the "
          f"teacher's MACs (mean {res['mean_macs_ratio']:.3f}, max {res['max_macs_ratio']:.3f})\n")
    print("| method | median s / generation | speed-up vs naive | rounds (s) |")
    print("|---|---|---|---|")
    for k, label in LABELS.items():
        print(f"| {label} | {med[k]:.2f} | {med['naive'] / med[k]:.2f}x | "
              f"{', '.join(f'{t:.2f}' for t in times[k])} |")
    print(f"\nspeed-up of one generation: {speedup:.2f}x (no caches: {med['naive'] / med['coevo_uncached']:.2f}x); "
          f"fitness cache hits {res['hit_rate']:.0%}; one-time context build {context_s:.2f}s; "
          f"max relative fitness difference to naive {res['max_rel_diff']:.1e}")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = {
        "benchmark": "search_cost",
        "teacher": {"source": args.teacher or "random", **teacher.to_dict(), "macs": ctx.budget.teacher_macs,
                    "macs_size": MACS_SIZE, "macs_convention": "published"},
        "discriminator_ndf": D_A.arch.ndf,
        "population": args.population, "candidates_per_generation": n, "eval_images": args.eval_images,
        "size": args.size, "macs_ratio": args.macs_ratio, "mean_genome_macs_ratio": res["mean_macs_ratio"],
        "repeats": args.repeats, "threads": torch.get_num_threads(),
        "seconds": times, "median_s": med, "speedup": speedup,
        "speedup_no_cache": med["naive"] / med["coevo_uncached"],
        "fitness_cache_hit_rate": res["hit_rate"], "context_build_s": context_s,
        "max_relative_fitness_difference": res["max_rel_diff"], "torch": torch.__version__,
    }
    (out / "search_cost.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out / 'search_cost.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
