"""What one search generation costs: coevo's evaluation against the official code's way.

Both evaluate the same two populations (one per generator) of genomes at a MAC
budget on the same evaluation batch with the same fitness (discriminator-feature
perceptual distance to the teacher + cycle L1 through the other generator's best):

* naive, as the official GAN-Pruning code does it: for every candidate, mask
  the full-width teacher (dropped filters zeroed), mask the partner the same
  way, and recompute the teacher's output and its features;
* coevo: teacher outputs and their features computed once per search
  (reported separately, it is not per generation), every candidate run as a
  physically slim network (:mod:`coevo.search.fitness`). The fitness cache is
  off here (a fresh evaluator each round, all genomes distinct), so the ratio
  is the per-candidate speed-up alone; in a real search elites and repeated
  genomes are free on top of it.

The two are timed alternately, ``--repeats`` times, and the medians compared.
Weights are random (seeded) unless ``--teacher`` is given: cost depends on the
layer shapes, not the weight values.

    python benchmarks/search_cost.py                         # ngf 32, 9 blocks, 64x64, population 16
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
from coevo.prune import Genome, macs_of_genome, masked_generator, random_genome_for_macs
from coevo.search import DIRECTIONS, MACS_SIZE, Evaluator, Objective, make_context
from coevo.search.context import PARTNER, SearchContext


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", help="coevo training run or reference checkpoint folder (default: random weights)")
    p.add_argument("--ngf", type=int, default=32, help="random teacher width (default 32)")
    p.add_argument("--n-blocks", type=int, default=9, help="random teacher residual blocks (default 9)")
    p.add_argument("--ndf", type=int, default=64, help="random discriminator width (default 64)")
    p.add_argument("--size", type=int, default=64, help="evaluation image size (default 64)")
    p.add_argument("--eval-images", type=int, default=8, help="evaluation images per domain (default 8)")
    p.add_argument("--population", type=int, default=16, help="genomes per population (default 16)")
    p.add_argument("--macs-ratio", type=float, default=0.25, help="MAC budget of the genomes (default 0.25)")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds of each method (default 3)")
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
    d_arch = DiscriminatorArch(ndf=args.ndf)
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


def coevo_generation(ctx: SearchContext, pops: Dict[str, List[Genome]], partners: Dict[str, Genome],
                     objective: Objective) -> List[float]:
    evaluator = Evaluator(ctx, objective, output_cache_size=0)
    return [t.fitness for d in DIRECTIONS for t in evaluator.evaluate(d, pops[d], partners[d])]


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
    objective = Objective.from_config(cfg)

    rng = np.random.default_rng(args.seed)
    pops = {d: [random_genome_for_macs(ctx[d].teacher.arch, args.macs_ratio, MACS_SIZE, rng)
                for _ in range(args.population)] for d in DIRECTIONS}
    partners = {d: pops[PARTNER[d]][0] for d in DIRECTIONS}
    mean_ratio = float(np.mean([macs_of_genome(g, MACS_SIZE) / ctx.budget.teacher_macs
                                for d in DIRECTIONS for g in pops[d]]))

    # Same fitness both ways (up to float rounding): the comparison is fair.
    check_naive = naive_generation(ctx, {d: pops[d][:2] for d in DIRECTIONS}, partners, objective)
    check_coevo = coevo_generation(ctx, {d: pops[d][:2] for d in DIRECTIONS}, partners, objective)
    max_rel_diff = float(np.max(np.abs(np.array(check_naive) - check_coevo) / np.abs(check_coevo)))

    times = {"naive": [], "coevo": []}
    for r in range(args.repeats):
        for name, fn in (("naive", naive_generation), ("coevo", coevo_generation)):
            t = time.perf_counter()
            fn(ctx, pops, partners, objective)
            times[name].append(time.perf_counter() - t)
            print(f"round {r + 1}/{args.repeats}: {name} {times[name][-1]:.2f}s", file=sys.stderr)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["naive"] / med["coevo"]
    n = 2 * args.population

    teacher = G_A.arch
    print(f"\nOne generation = {n} candidate evaluations ({args.population} per generator), "
          f"{args.eval_images} images per domain at {args.size}x{args.size}")
    print(f"teacher: ngf {teacher.ngf}, {teacher.n_blocks} blocks, {ctx.budget.teacher_macs / 1e9:.2f} GMACs "
          f"(256x256, published); genomes at <= {args.macs_ratio} of it (mean {mean_ratio:.3f}); "
          f"torch threads {torch.get_num_threads()}\n")
    print("| method | median s / generation | s / candidate | rounds |")
    print("|---|---|---|---|")
    for k in ("naive", "coevo"):
        print(f"| {k} | {med[k]:.2f} | {med[k] / n:.3f} | {', '.join(f'{t:.2f}' for t in times[k])} |")
    print(f"\nspeed-up: {ratio:.2f}x (naive / coevo, medians); coevo's one-time context build: {context_s:.2f}s; "
          f"max relative fitness difference between the two: {max_rel_diff:.1e}")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = {
        "benchmark": "search_cost",
        "teacher": {"source": args.teacher or "random", **teacher.to_dict(), "macs": ctx.budget.teacher_macs,
                    "macs_size": MACS_SIZE, "macs_convention": "published"},
        "population": args.population, "candidates_per_generation": n, "eval_images": args.eval_images,
        "size": args.size, "macs_ratio": args.macs_ratio, "mean_genome_macs_ratio": mean_ratio,
        "repeats": args.repeats, "threads": torch.get_num_threads(),
        "seconds": times, "median_s": med, "speedup": ratio, "context_build_s": context_s,
        "max_relative_fitness_difference": max_rel_diff,
        "torch": torch.__version__,
    }
    (out / "search_cost.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out / 'search_cost.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
