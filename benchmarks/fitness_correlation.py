"""Does the search's fitness predict the end result? Rank correlation with post-fine-tune quality.

For ``--genomes`` genome pairs at one MAC budget (the L1-norm pair and random
pairs of varied shape), this computes each genome's search fitness as the search
scores it in generation 0 (perceptual distance to the teacher + cycle through the
teacher's other generator), and a "trained" fitness: the same terms after a short
L1 distillation of the slim network towards the teacher from its inherited weights
(``--trained-steps``, in the spirit of the official code, which trains every
candidate), and the supernet fitness: the proxy's terms with the weights of a
weight-sharing supernet (``coevo supernet``; ``--supernet DIR``, or trained here for
``--supernet-steps``), and the adapted supernet fitness: the supernet's weights, then
``--adapt-steps`` distillation steps before scoring (what ``search.rerank_top`` scores on a
supernet search with ``search.trained_steps`` = ``--adapt-steps``). Then every pair is fine-tuned by the one recipe
(``finetune_genomes``, shortened by ``--steps``) once per seed (``--seeds``, from the
teacher's weights or, ``--finetune-from supernet``, from the supernet's), and judged by
the L1 distance of its outputs to the teacher's on the test split (the same images for
every seed; model selection inside fine-tuning still uses the held-out training images only).

Spearman's rank correlation between each fitness and the negated test L1 (so that +1
means "the fitness ranks genomes exactly as the end result does") is reported per
direction with a 95% bootstrap interval (genomes resampled), next to the noise
ceiling: the Spearman between the two seeds' fine-tuned results, i.e. how well one
fine-tuning predicts another; a fitness cannot be expected to do better.

    python benchmarks/fitness_correlation.py --teacher runs/demo/teacher --data runs/demo/data \\
        --config configs/demo.yaml --genomes 30 --macs-ratio 0.05 --supernet-steps 2000 --threads 1

Writes ``fitness_correlation.json`` into --out: ``genomes`` lists, per direction, every genome with
its fitness under each method (higher is better) and its fine-tuned results per seed
(``finetuned``: test L1 to the teacher, LOWER is better), so every correlation can be recomputed.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

from coevo.core.runs import prepare_run_dir
from paired_stats import spearman, spearman_ci  # noqa: F401  (spearman: part of this script's interface)


ADAPTED = "supernet, adapted"  # the kind: the supernet's weights, then --adapt-steps of distillation
# arguments that never change a fine-tuning (the fitnesses', and --rescore): a --resume may change them
NOT_FINETUNING = ("trained_steps", "trained_lr", "adapt_steps", "rescore")


def same_finetunings(saved: Dict, now: Dict) -> bool:
    """Whether a work folder's settings (``benchmark_settings.json``) make the fine-tunings ``now``'s would:
    the arguments of the fitnesses alone may differ (they are recomputed on every run)."""
    strip = lambda f: {k: v for k, v in f.get("argv", {}).items() if k not in NOT_FINETUNING}  # noqa: E731
    return strip(saved) == strip(now)


def narrowest_reference(genomes: List[Dict], seed: int = 0) -> Dict:
    """A zero-cost reference "fitness": each genome's narrowest group width (more is better), ranked against
    the fine-tuned result like the fitnesses are, per direction, from the per-genome records
    (``{"direction", "widths", "finetuned": [per seed]}``) so it can be recomputed from a results file.
    Added after the first snow run showed that the narrowest group tracked the end result (and, in the
    evidence benchmark's cells, the held-out validation fidelity) better than any fitness did."""
    out = {}
    for d in ("G_A", "G_B"):
        rows = [g for g in genomes if g["direction"] == d]
        out[d] = {"fitness": spearman_ci([min(g["widths"].values()) for g in rows],
                                         [-float(np.mean(g["finetuned"])) for g in rows], seed=seed)}
    return out


def supernet_seconds(folder) -> Optional[float]:
    """The supernet's own training time (``supernet.json``, summed over its resumes), or None."""
    f = Path(folder) / "supernet.json" if folder else None
    return float(json.loads(f.read_text())["train_seconds"]) if f is not None and f.is_file() else None


def rescore(path: Path) -> Dict:
    """``--rescore``: add the narrowest-width reference to a finished results file and read the supernet's
    training time from its folder (nothing is run again)."""
    result = json.loads(Path(path).read_text())
    sn = result.get("supernet") or {}
    seconds = supernet_seconds(sn.get("dir"))
    if seconds is not None:
        sn["train_seconds"] = seconds
    ref = narrowest_reference(result["genomes"], result["settings"].get("seed", 0))
    for d, v in ref.items():
        c = result.get("noise_ceiling", {}).get(d)
        v["fraction_of_ceiling"] = v["fitness"]["rho"] / c["rho"] if c and c["rho"] > 0 else None
    result["spearman"]["narrowest width"] = ref
    result["seconds_per_candidate"]["narrowest width"] = 0.0
    Path(path).write_text(json.dumps(result, indent=2) + "\n")
    return result


def test_l1(generators: Dict[str, torch.nn.Module], teacher: Dict[str, torch.nn.Module],
            images: Dict[str, torch.Tensor]) -> Dict[str, float]:
    """Mean |G(x) - T(x)| over the test images of each generator's input domain."""
    out = {}
    with torch.inference_mode():
        for d, x in (("G_A", images["A"]), ("G_B", images["B"])):
            out[d] = float(torch.cat([(generators[d](x[i:i + 8]) - teacher[d](x[i:i + 8])).abs().flatten(1).mean(1)
                                      for i in range(0, len(x), 8)]).mean())
    return out


def test_images(cfg) -> Dict[str, torch.Tensor]:
    from coevo.data import UnpairedImageDataset

    size = cfg.data.crop_size
    ds = UnpairedImageDataset(cfg.data.root, "test", load_size=size, crop_size=size, flip=False,
                              skip_bad=cfg.data.skip_bad_images, augment=False)
    return {side: torch.stack([ds[i][side] for i in range(len(getattr(ds, f"{side}_paths")))]) for side in "AB"}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher")
    p.add_argument("--data")
    p.add_argument("--config", default="configs/demo.yaml")
    p.add_argument("--genomes", type=int, default=30)
    p.add_argument("--macs-ratio", type=float, default=0.05)
    p.add_argument("--steps", type=int, default=100, help="fine-tuning steps per epoch (2 epochs)")
    p.add_argument("--trained-steps", type=int, default=20)
    p.add_argument("--trained-lr", type=float, default=1e-3)
    p.add_argument("--adapt-steps", type=int, default=60,
                   help="distillation steps from the supernet's weights of the adapted supernet fitness (0: none)")
    p.add_argument("--supernet", type=Path, help="a `coevo supernet` folder of this teacher (else one is trained)")
    p.add_argument("--supernet-steps", type=int, default=2000, help="steps of the supernet trained here "
                                                                    "(0: no supernet fitness)")
    p.add_argument("--seeds", type=int, default=2, help="fine-tuning seeds per genome pair (2: the noise ceiling)")
    p.add_argument("--finetune-from", choices=("teacher", "supernet"), default="teacher",
                   help="weights the genomes are cut from for fine-tuning")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--recipe", choices=("gan", "distill"), default="distill",
                   help="fine-tuning recipe (finetune.mode) of every pair (default distill: the teacher cached)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config overrides for every stage (e.g. the fine-tuning's epochs)")
    p.add_argument("--resume", action="store_true",
                   help="continue in --work: finished fine-tunings and the supernet are reused (same settings only)")
    p.add_argument("--work", type=Path, default=Path("benchmarks/work/fitness_correlation"))
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--rescore", type=Path, metavar="JSON",
                   help="only add the zero-cost narrowest-width reference to this finished results file")
    args = p.parse_args(argv)
    if not args.rescore and not (args.teacher and args.data):
        p.error("--teacher and --data are required (unless --rescore)")
    if args.rescore:
        r = rescore(args.rescore)["spearman"]["narrowest width"]
        print("narrowest width: " + "; ".join(f"{d} {v['fitness']['rho']:+.2f}" for d, v in r.items()))
        return 0

    from coevo.deploy.timing import machine_info
    from coevo.config import load_config
    from coevo.models.teacher import find_teacher
    from coevo.prune import l1_genome_for_macs, random_genome_for_macs
    from coevo.prune.genome import Genome
    from coevo.search.context import MACS_CONVENTION, MACS_SIZE, build_context
    from coevo.search.fitness import Objective, evaluate_genomes
    from coevo.models import load_generator
    from coevo.train.finetune import finetune_genomes

    torch.set_num_threads(args.threads)
    sets = [f"data.root={json.dumps(str(Path(args.data).resolve()))}", f"threads={args.threads}",
            f"seed={args.seed}", "search.channel_multiple=1", f"search.macs_ratio={args.macs_ratio}",
            "finetune.epochs=2", "finetune.epochs_decay=0", f"finetune.max_steps_per_epoch={args.steps}",
            "finetune.sample_every=0", f"finetune.mode={args.recipe}", *args.overrides]
    cfg = load_config(args.config, sets)
    paths = find_teacher(args.teacher)
    ctx = build_context(cfg, paths)
    # the benchmark's own scratch folder: replaced only when it carries coevo's run marker; with --resume
    # kept when it was made with the same settings
    fingerprint = {"argv": {k: str(v) for k, v in vars(args).items() if k not in ("resume", "out", "threads")}}
    stamp = args.work / "benchmark_settings.json"
    if args.resume and stamp.is_file():
        if not same_finetunings(json.loads(stamp.read_text()), fingerprint):
            p.error(f"--resume: {args.work} was made with other settings ({stamp}); drop --resume to start again")
    else:
        prepare_run_dir(args.work, force=True, command="benchmarks/fitness_correlation.py")
    stamp.write_text(json.dumps(fingerprint, indent=1) + "\n")
    supernet, supernet_s = args.supernet, 0.0
    if supernet is None and args.supernet_steps > 0:
        from coevo.train.supernet import train_supernet

        t0 = time.perf_counter()
        sn_dir = args.work / "supernet"
        supernet = train_supernet(load_config(args.config, sets + [f"supernet.steps={args.supernet_steps}"]),
                                  sn_dir, teacher=None if (sn_dir / "config.yaml").is_file() else paths,
                                  resume=(sn_dir / "config.yaml").is_file())
        supernet_s = time.perf_counter() - t0
    sn_ctx = None
    if supernet is not None:
        sn_cfg = load_config(args.config, sets + ["search.fitness=supernet"])
        sn_ctx = build_context(sn_cfg, paths, supernet)
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

    adapted = ADAPTED if sn_ctx is not None and args.adapt_steps > 0 else None
    kinds = ("proxy", "trained") + (("supernet",) if sn_ctx is not None else ()) + ((adapted,) if adapted else ())
    fitness, cost = {k: {} for k in kinds}, {k: 0.0 for k in kinds}
    for d, partner in (("G_A", "G_B"), ("G_B", "G_A")):
        full_partner = Genome.all_keep(ctx[partner].teacher.arch)
        t0 = time.perf_counter()
        fitness["proxy"][d] = [t.to_dict() for t in evaluate_genomes(ctx, d, genomes[d], full_partner, objective)]
        cost["proxy"] += time.perf_counter() - t0
        t0 = time.perf_counter()  # search.fitness=trained: the teacher's weights, then trained_steps of distillation
        fitness["trained"][d] = [t.to_dict() for t in evaluate_genomes(
            replace(ctx, trained_steps=args.trained_steps, trained_lr=args.trained_lr), d, genomes[d], full_partner,
            objective)]
        cost["trained"] += time.perf_counter() - t0
        if sn_ctx is not None:  # generation 0 of a supernet search: the partner is the full supernet
            t0 = time.perf_counter()
            fitness["supernet"][d] = [t.to_dict() for t in evaluate_genomes(sn_ctx, d, genomes[d], full_partner,
                                                                            objective)]
            cost["supernet"] += time.perf_counter() - t0
        if adapted:  # the re-rank of a supernet search: its weights, then adapt_steps of distillation
            t0 = time.perf_counter()
            fitness[adapted][d] = [t.to_dict() for t in evaluate_genomes(
                replace(sn_ctx, trained_steps=args.adapt_steps, trained_lr=args.trained_lr), d, genomes[d],
                full_partner, objective)]
            cost[adapted] += time.perf_counter() - t0
    per_candidate = {k: v / (2 * args.genomes) for k, v in cost.items()}
    print("fitness per candidate: " + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in per_candidate.items()),
          flush=True)

    source = {}
    if args.finetune_from == "supernet":
        if supernet is None:
            p.error("--finetune-from supernet needs --supernet or --supernet-steps > 0")
        from coevo.search.supernet import write_weights_record

        record = args.work / "weights_from"  # fine-tuning reads where to cut from as a search records it
        record.mkdir(exist_ok=True)  # a --resume finds it
        write_weights_record(record, supernet)
        source = {"search_dir": str(record.resolve())}
    images = test_images(cfg)
    teacher_nets = {d: ctx[d].teacher.cpu().eval() for d in ("G_A", "G_B")}
    after = []  # after[i][seed] = {"G_A": test L1, "G_B": test L1}
    t0 = time.perf_counter()
    for i in range(args.genomes):
        after.append([])
        for s in range(args.seeds):
            run_cfg = load_config(args.config, [*sets[:2], f"seed={args.seed + s}", *sets[3:]])
            folder = args.work / f"pair{i:02d}_seed{s}"
            if (folder / "finetune.json").is_file() and all((folder / f"{d}.pt").is_file() for d in ("G_A", "G_B")):
                out = folder  # finished before a stop: reused
            else:
                out = finetune_genomes(run_cfg, paths, {"G_A": genomes["G_A"][i], "G_B": genomes["G_B"][i]},
                                       folder, resume=(folder / "checkpoint.pt").is_file(),
                                       force=folder.exists() and not (folder / "checkpoint.pt").is_file(),
                                       source=source)
            students = {d: load_generator(out / f"{d}.pt").eval() for d in ("G_A", "G_B")}
            after[i].append(test_l1(students, teacher_nets, images))
        print(f"pair {i:2d}: test L1 to teacher after fine-tuning, per seed: "
              + "; ".join(f"{a['G_A']:.4f} / {a['G_B']:.4f}" for a in after[i]), flush=True)
    finetune_s = time.perf_counter() - t0

    rho, ceiling = {}, {}
    for d in ("G_A", "G_B"):
        end = [-float(np.mean([a[d] for a in runs])) for runs in after]  # mean over seeds, negated: higher = better
        for kind in kinds:
            rho.setdefault(kind, {})[d] = {
                term: spearman_ci([f[term] if term == "fitness" else -f[term] for f in fitness[kind][d]], end,
                                  seed=args.seed)
                for term in ("fitness", "perceptual", "cycle")}
        if args.seeds >= 2:
            ceiling[d] = spearman_ci([-runs[0][d] for runs in after], [-runs[1][d] for runs in after], seed=args.seed)
            for kind in kinds:
                rho[kind][d]["fraction_of_ceiling"] = (rho[kind][d]["fitness"]["rho"] / ceiling[d]["rho"]
                                                       if ceiling[d]["rho"] > 0 else None)
    result = {
        "benchmark": "fitness_correlation",
        "command": "python benchmarks/fitness_correlation.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine_info("cpu", args.threads),
        "settings": {"genomes": args.genomes, "macs_ratio": args.macs_ratio, "recipe": args.recipe,
                     "overrides": args.overrides,
                     "finetune_epochs": cfg.finetune.epochs + cfg.finetune.epochs_decay,
                     "finetune_max_steps_per_epoch": cfg.finetune.max_steps_per_epoch,
                     "trained_steps": args.trained_steps, "trained_lr": args.trained_lr,
                     "adapt_steps": args.adapt_steps if adapted else None, "seed": args.seed,
                     "metric": ctx.metric_name, "eval_images": int(ctx["G_A"].inputs.shape[0])},
        "conventions": {"fitness": "higher is better", "finetuned": "test L1 to the teacher, lower is better; "
                        "Spearman is taken with its negation (mean over seeds)"},
        "spearman": rho,
        "noise_ceiling": ceiling,
        "seconds_per_candidate": per_candidate,
        "supernet": {"dir": str(Path(supernet).resolve()) if supernet is not None else None,
                     "train_seconds": supernet_seconds(supernet) or round(supernet_s, 1),
                     "finetune_from": args.finetune_from},
        "finetune_seconds": round(finetune_s, 1),
        "genomes": [{"direction": d, "index": i, "widths": genomes[d][i].widths(),
                     "fitness": {k: fitness[k][d][i]["fitness"] for k in kinds},
                     "terms": {k: fitness[k][d][i] for k in kinds},
                     "finetuned": [runs[d] for runs in after[i]]}
                    for d in ("G_A", "G_B") for i in range(args.genomes)],
    }
    result["settings"].update(seeds=args.seeds, supernet_steps=args.supernet_steps if args.supernet is None else None)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "fitness_correlation.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    rescore(path)  # the narrowest-width reference, from the records just written
    for kind in kinds:
        print(f"{kind:8s} Spearman of the fitness with test quality after fine-tuning: "
              + "; ".join(f"{d} {v['fitness']['rho']:+.2f} [{v['fitness']['ci95'][0]:+.2f}, "
                          f"{v['fitness']['ci95'][1]:+.2f}]" for d, v in rho[kind].items()))
    for d, c in ceiling.items():
        print(f"noise ceiling {d} (seed 0 vs seed 1): {c['rho']:+.2f} [{c['ci95'][0]:+.2f}, {c['ci95'][1]:+.2f}]")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
