"""Does the search's fitness predict the end result? Rank correlation with post-fine-tune quality.

For ``--genomes`` genome pairs at one MAC budget (the L1-norm pair and random
pairs of varied shape), this computes each genome's search fitness as the search
scores it in generation 0 (perceptual distance to the teacher + cycle through the
teacher's other generator), and a "trained" fitness: the same terms after a short
L1 distillation of the slim network towards the teacher from its inherited weights
(``--trained-steps``, in the spirit of the official code, which trains every
candidate). Then every pair is fine-tuned by the one recipe (``finetune_genomes``,
shortened by ``--steps``) and judged on the held-out part of the training split
(L1 to the teacher, what fine-tuning selects on; the test split is never read).

Spearman's rank correlation between each fitness and the negated held-out L1 (so
that +1 means "the fitness ranks genomes exactly as the end result does") is
reported per direction, with the cost of each fitness per candidate.

    python benchmarks/fitness_correlation.py --teacher runs/demo/teacher --data runs/demo/data \\
        --config configs/demo.yaml --threads 1

Writes ``fitness_correlation.json`` into --out.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch

from coevo.core.runs import prepare_run_dir


def spearman(x, y) -> float:
    """Spearman's rho (average ranks for ties)."""
    def ranks(v):
        v = np.asarray(v, dtype=np.float64)
        order = np.argsort(v, kind="mergesort")
        r = np.empty(len(v))
        r[order] = np.arange(len(v))
        for val in np.unique(v):  # ties share their mean rank
            idx = np.flatnonzero(v == val)
            r[idx] = r[idx].mean()
        return r
    rx, ry = ranks(x), ranks(y)
    return float(np.corrcoef(rx, ry)[0, 1])


def trained_terms(ctx, direction: str, genome, partner_net, objective, steps: int, lr: float):
    """Fitness terms after ``steps`` of L1 distillation towards the teacher on the evaluation batch:
    ``search.fitness=trained`` (:func:`coevo.search.fitness.distil`), with a fixed partner."""
    from coevo.search.fitness import compute_terms, cycle_term, distil, perceptual_term, slim_network

    d = ctx[direction]
    net = distil(slim_network(d.teacher, genome), d.inputs, d.teacher_output, steps, lr)
    with torch.inference_mode():
        y = net(d.inputs)
    return objective.score(perceptual_term(ctx, direction, y), cycle_term(ctx, direction, y, partner_net),
                           *compute_terms(genome))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--config", default="configs/demo.yaml")
    p.add_argument("--genomes", type=int, default=20)
    p.add_argument("--macs-ratio", type=float, default=0.25)
    p.add_argument("--steps", type=int, default=100, help="fine-tuning steps per epoch (2 epochs)")
    p.add_argument("--trained-steps", type=int, default=20)
    p.add_argument("--trained-lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", type=Path, default=Path("benchmarks/work/fitness_correlation"))
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = p.parse_args(argv)

    from coevo.deploy.timing import machine_info
    from coevo.config import load_config
    from coevo.models.teacher import find_teacher
    from coevo.prune import l1_genome_for_macs, random_genome_for_macs
    from coevo.prune.genome import Genome
    from coevo.search.context import MACS_CONVENTION, MACS_SIZE, build_context
    from coevo.search.fitness import Objective, evaluate_genomes, slim_network
    from coevo.train.finetune import finetune_genomes

    torch.set_num_threads(args.threads)
    sets = [f"data.root={json.dumps(str(Path(args.data).resolve()))}", f"threads={args.threads}",
            f"seed={args.seed}", "search.channel_multiple=1", f"search.macs_ratio={args.macs_ratio}",
            "finetune.epochs=2", "finetune.epochs_decay=0", f"finetune.max_steps_per_epoch={args.steps}",
            "finetune.sample_every=0"]
    cfg = load_config(args.config, sets)
    paths = find_teacher(args.teacher)
    ctx = build_context(cfg, paths)
    objective = Objective.from_config(cfg.search, images=int(ctx["G_A"].inputs.shape[0]))
    rng = np.random.default_rng(args.seed)
    genomes: Dict[str, List[Genome]] = {}
    for d in ("G_A", "G_B"):
        t = ctx[d].teacher
        genomes[d] = [l1_genome_for_macs(t, args.macs_ratio, MACS_SIZE, convention=MACS_CONVENTION)]
        while len(genomes[d]) < args.genomes:
            lo = rng.uniform(0.02, 0.6)
            genomes[d].append(random_genome_for_macs(t.arch, args.macs_ratio, MACS_SIZE, rng,
                                                     convention=MACS_CONVENTION, density_range=(lo, 1.0)))

    fitness, cost = {"proxy": {}, "trained": {}}, {"proxy": 0.0, "trained": 0.0}
    for d, partner in (("G_A", "G_B"), ("G_B", "G_A")):
        full_partner = Genome.all_keep(ctx[partner].teacher.arch)
        t0 = time.perf_counter()
        fitness["proxy"][d] = [t.to_dict() for t in evaluate_genomes(ctx, d, genomes[d], full_partner, objective)]
        cost["proxy"] += time.perf_counter() - t0
        partner_net = slim_network(ctx[partner].teacher, full_partner)
        t0 = time.perf_counter()
        fitness["trained"][d] = [trained_terms(ctx, d, g, partner_net, objective, args.trained_steps,
                                               args.trained_lr).to_dict() for g in genomes[d]]
        cost["trained"] += time.perf_counter() - t0
    per_candidate = {k: v / (2 * args.genomes) for k, v in cost.items()}
    print(f"fitness per candidate: proxy {per_candidate['proxy'] * 1000:.0f} ms, "
          f"trained {per_candidate['trained'] * 1000:.0f} ms", flush=True)

    # the benchmark's own scratch folder: replaced only when it carries coevo's run marker
    prepare_run_dir(args.work, force=True, command="benchmarks/fitness_correlation.py")
    after = []
    t0 = time.perf_counter()
    for i in range(args.genomes):
        out = finetune_genomes(cfg, paths, {"G_A": genomes["G_A"][i], "G_B": genomes["G_B"][i]},
                               args.work / f"pair{i:02d}")
        val = json.loads((out / "finetune.json").read_text())["val"]
        after.append({"G_A": val["val_l1_A"], "G_B": val["val_l1_B"]})
        print(f"pair {i:2d}: val L1 to teacher after fine-tuning {val['val_l1_A']:.4f} / {val['val_l1_B']:.4f}",
              flush=True)
    finetune_s = time.perf_counter() - t0

    rho = {}
    for kind in ("proxy", "trained"):
        rho[kind] = {}
        for d in ("G_A", "G_B"):
            end = [-a[d] for a in after]
            rho[kind][d] = {term: spearman([f[term] if term == "fitness" else -f[term]
                                            for f in fitness[kind][d]], end)
                            for term in ("fitness", "perceptual", "cycle")}
    result = {
        "benchmark": "fitness_correlation",
        "command": "python benchmarks/fitness_correlation.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine_info("cpu", args.threads),
        "settings": {"genomes": args.genomes, "macs_ratio": args.macs_ratio, "finetune_steps": 2 * args.steps,
                     "trained_steps": args.trained_steps, "trained_lr": args.trained_lr, "seed": args.seed,
                     "metric": ctx.metric_name, "eval_images": int(ctx["G_A"].inputs.shape[0])},
        "spearman": rho,
        "seconds_per_candidate": per_candidate,
        "finetune_seconds": round(finetune_s, 1),
        "fitness": fitness,
        "after_finetune_val_l1": after,
        "widths": {d: [g.widths() for g in genomes[d]] for d in genomes},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "fitness_correlation.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    for kind in ("proxy", "trained"):
        print(f"{kind:8s} Spearman (fitness / perceptual / cycle vs held-out quality after fine-tuning): "
              + "; ".join(f"{d} {v['fitness']:+.2f} / {v['perceptual']:+.2f} / {v['cycle']:+.2f}"
                          for d, v in rho[kind].items()))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
