"""Is the search worth it? Translation quality against MACs: coevo vs L1-norm vs random genomes.

On the built-in synthetic "grass to snow" set (64x64, exact ground truth for every
test image), one teacher pair is cut down to several MAC budgets by three methods:

* ``coevo``: the co-evolutionary search (:func:`coevo.search.run_search`) at the budget;
* ``l1``: one-shot L1-norm filter pruning (:func:`coevo.prune.l1_genome_for_macs`);
* ``random``: one random genome per generator (:func:`coevo.prune.random_genome_for_macs`,
  seeded ``numpy.random.Generator``).

Every method obeys the same constraints (``search.min_channels``, ``channel_multiple``,
``tied``) and every pair is fine-tuned by the same code with the same settings
(:func:`coevo.train.finetune.finetune_genomes`: CycleGAN losses + distillation, model
selection on held-out training images). Each pair is scored on the test split, both
directions, right after pruning (inherited weights) and after fine-tuning: PSNR and
SSIM to the ground truth, L1 to the teacher's output. The teacher's own scores are the
reference row. MACs: one 1x3x256x256 forward, published convention (the ratio to the
teacher does not depend on the size).

    python benchmarks/frontier.py                      # 3 methods x 0.5/0.25/0.1, ~45 min on 2 cores
    python benchmarks/frontier.py --quick              # smoke run, a few minutes
    python benchmarks/frontier.py --teacher runs/x/teacher --budgets 0.3,0.15 --set finetune.epochs=2

Teacher: ``--teacher DIR`` (a coevo training run); by default the demo's
(``runs/demo/teacher`` with ``runs/demo/data``) when that run has finished it, else a
demo teacher trained here from ``configs/demo.yaml``. Cells (method x budget) live
in ``--work``, each with a ``result.json`` written last: an interrupted run resumes
where it stopped (a search or fine-tune in progress resumes from its checkpoint) and
finished cells are skipped. Writes ``frontier.json`` (results, settings, machine) and
``frontier.png`` into ``--out`` (``frontier_quick.*`` with ``--quick``) and prints a
Markdown table.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch

from coevo.bench import machine_info
from coevo.config import Config, config_to_dict, dump_config, load_config
from coevo.evaluate import translation_quality
from coevo.models import load_generator
from coevo.files import atomic_write_text
from coevo.models.teacher import TeacherPaths, find_teacher
from coevo.prune import Genome, count_params, l1_genome_for_macs, macs_ratio_of, random_genome_for_macs, slim
from coevo.search import MACS_CONVENTION, MACS_SIZE, run_search
from coevo.train.finetune import DIRECTIONS, finetune_genomes

log = logging.getLogger("frontier")

METHODS = ("coevo", "l1", "random")
LABELS = {"coevo": "coevo search", "l1": "L1-norm", "random": "random"}
COLORS = {"coevo": "tab:red", "l1": "tab:blue", "random": "tab:gray"}
EVAL = {"G_A": "AtoB", "G_B": "BtoA"}
DEMO_TEACHER, DEMO_DATA = Path("runs/demo/teacher"), Path("runs/demo/data")
# Sections whose values shape every cell's result: a work folder made with others is refused.
RESULT_SECTIONS = ("seed", "data", "model", "search", "finetune")

# Chosen from timed --quick cells so 3 methods x 3 budgets stay under ~45 min on the shared
# 2-core machine (see benchmarks/README.md): a shorter search than the paper's 32 x 50 and 2 of
# the demo's 6 fine-tune epochs, the same for every method.
# Any channel count (the demo config rounds to multiples of 8 for CPU latency; the frontier
# compares how well each method spends MACs, so no rounding for anyone).
DEFAULTS = ["search.population=16", "search.generations=12", "search.channel_multiple=1",
            "finetune.epochs=1", "finetune.epochs_decay=1"]
QUICK = ["search.population=6", "search.generations=2", "search.eval_images=4", "search.channel_multiple=1",
         "finetune.epochs=1", "finetune.epochs_decay=0", "finetune.max_steps_per_epoch=20",
         "finetune.log_every=10"]
QUICK_TEACHER = ["train.epochs=1", "train.epochs_decay=0", "train.max_steps_per_epoch=40"]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", help="coevo teacher run (default: runs/demo/teacher if finished, else train one)")
    p.add_argument("--data", help="data folder with testA_gt_B/testB_gt_A (default: the teacher run's data.root)")
    p.add_argument("--config", default="configs/demo.yaml", help="config YAML (default configs/demo.yaml)")
    p.add_argument("--budgets", default="0.5,0.25,0.1", help="MAC ratios to the teacher (default 0.5,0.25,0.1)")
    p.add_argument("--methods", default=",".join(METHODS), help=f"subset of {','.join(METHODS)}")
    p.add_argument("--work", help="cells, searches, fine-tunes (default benchmarks/work/frontier[-quick])")
    p.add_argument("--out", default="benchmarks/results", help="output folder (default benchmarks/results)")
    p.add_argument("--seed", type=int, default=None, help="seed of data order, search and random genomes "
                                                          "(default: the config's)")
    p.add_argument("--quick", action="store_true", help="smoke run: tiny search and fine-tune")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override after the benchmark's defaults, e.g. search.generations=20")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's default)")
    p.add_argument("--force", action="store_true", help="start over: empty --work first")
    args = p.parse_args(argv)
    args.budgets = [float(b) for b in args.budgets.split(",") if b.strip()]
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(args.methods) - set(METHODS))
    if unknown:
        p.error(f"unknown method(s) {unknown}; choose from {','.join(METHODS)}")
    if not args.budgets or not all(0.0 < b <= 1.0 for b in args.budgets):
        p.error(f"--budgets must be MAC ratios in (0, 1], got {args.budgets}")
    args.work = Path(args.work or f"benchmarks/work/frontier{'-quick' if args.quick else ''}")
    return args


# ----------------------------------------------------------------------------- setup
def read_config(args: argparse.Namespace, extra: Sequence[str] = ()) -> Config:
    settings = QUICK if args.quick else DEFAULTS
    seed = [] if args.seed is None else [f"seed={args.seed}"]
    return load_config(args.config, [*settings, *seed, *extra, *args.overrides])


def prepare_teacher(args: argparse.Namespace) -> Tuple[TeacherPaths, Path, Dict]:
    """(teacher files, data root, description): the given teacher, the demo's, or one trained in --work."""
    if args.teacher or (DEMO_TEACHER / "stage.json").is_file():
        folder = Path(args.teacher or DEMO_TEACHER)
        paths = find_teacher(folder)
        data = args.data
        if data is None and args.teacher is None:
            data = DEMO_DATA
        if data is None and (folder / "config.yaml").is_file():
            data = load_config(folder / "config.yaml").data.root
        if data is None:
            raise FileNotFoundError(f"{folder} holds no config.yaml naming its data: pass --data")
        return paths, Path(data), {"source": str(folder.resolve())}

    from coevo.data.synthetic import make_synthetic_dataset
    from coevo.train.teacher import train_teacher

    data, folder = args.work / "data", args.work / "teacher"
    cfg = read_config(args, [f"data.root={data.resolve()}", *(QUICK_TEACHER if args.quick else [])])
    make_synthetic_dataset(data, size=cfg.data.load_size, n_train=cfg.data.synthetic_n_train,
                           n_test=cfg.data.synthetic_n_test, seed=cfg.seed)
    if not (folder / "summary.json").is_file():
        log.info("no finished demo teacher: training one in %s (%s)", folder, "quick" if args.quick else args.config)
        train_teacher(cfg, folder, resume=(folder / "config.yaml").is_file())
    return find_teacher(folder), data, {"source": f"trained here ({folder})", "train": config_to_dict(cfg)["train"]}


def teacher_identity(paths: TeacherPaths) -> Dict:
    return {k: {"path": v, "mtime_ns": Path(v).stat().st_mtime_ns} for k, v in paths.to_dict().items()}


def prepare_work(args: argparse.Namespace, cfg: Config, paths: TeacherPaths) -> None:
    """Create --work or check that its results were made with the same settings and teacher."""
    import shutil

    from coevo.config import diff_configs
    from coevo.runs import RUN_MARKER, check_removable, mark_run_dir, run_entries

    saved, teacher_file = args.work / "config.yaml", args.work / "teacher.json"
    if args.force and args.work.exists():
        check_removable(args.work)  # only a --work this script created: never ., ~ or a folder of yours
        teacher_kept = not args.teacher and (args.work / "teacher" / "summary.json").is_file()
        for entry in args.work.iterdir():
            if entry.name != RUN_MARKER and not (teacher_kept and entry.name in ("teacher", "data")):
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    elif saved.is_file():
        diffs = diff_configs(load_config(saved), cfg, RESULT_SECTIONS)
        if diffs:
            raise SystemExit(f"frontier: {args.work} holds results made with other settings ({', '.join(diffs)}); "
                             "rerun with the same settings, or pass --force or another --work")
        if teacher_file.is_file() and json.loads(teacher_file.read_text()) != teacher_identity(paths):
            raise SystemExit(f"frontier: {args.work} holds results of another teacher (see {teacher_file}); "
                             "pass --force or another --work")
    args.work.mkdir(parents=True, exist_ok=True)
    if not run_entries(args.work):
        mark_run_dir(args.work, "benchmarks/frontier.py")
    dump_config(cfg, saved)
    atomic_write_text(teacher_file, json.dumps(teacher_identity(paths), indent=2) + "\n")


# ----------------------------------------------------------------------------- genomes
def constraints(cfg: Config) -> Dict:
    s = cfg.search
    return {"min_channels": s.min_channels, "channel_multiple": s.channel_multiple,
            "convention": MACS_CONVENTION, "tied": s.tied}


def search_genomes(cfg: Config, paths: TeacherPaths, budget: float, cell: Path) -> Tuple[Dict[str, Genome], Dict]:
    folder = cell / "search"
    if (folder / "search.json").is_file():
        summary = json.loads((folder / "search.json").read_text())
        best = {d: Genome.load_json(folder / "genomes" / f"best_{d}.json") for d in DIRECTIONS}
    else:
        resume = (folder / "state.pt").is_file()
        result = run_search(_with(cfg, search__macs_ratio=budget), folder, teacher=Path(paths.G_A).parent,
                            resume=resume, force=not resume)
        best, summary = result.best, result.summary
    keep = ("generations", "population", "evaluations", "cache_hits", "wall_time_s", "metric")
    return best, {"search": {k: summary.get(k) for k in keep},
                  "search_best": {d: {k: summary["best"][d].get(k) for k in ("fitness", "perceptual", "cycle")}
                                  for d in DIRECTIONS}}


def _with(cfg: Config, **values) -> Config:
    """A copy of ``cfg`` with ``section__key=value`` replaced."""
    from coevo.config import config_from_dict

    data = config_to_dict(cfg)
    for key, value in values.items():
        section, name = key.split("__")
        data[section][name] = value
    return config_from_dict(data)


def cell_genomes(method: str, budget: float, cfg: Config, paths: TeacherPaths, teacher: Dict,
                 cell: Path) -> Tuple[Dict[str, Genome], Dict]:
    if method == "coevo":
        return search_genomes(cfg, paths, budget, cell)
    if method == "l1":
        return {d: l1_genome_for_macs(teacher[d], budget, MACS_SIZE, **constraints(cfg)) for d in DIRECTIONS}, {}
    # One stream per budget, so a cell's genomes do not depend on which other cells ran.
    rng = np.random.default_rng([cfg.seed, int(round(budget * 1e6))])
    return {d: random_genome_for_macs(teacher[d].arch, budget, MACS_SIZE, rng, **constraints(cfg))
            for d in DIRECTIONS}, {"rng": f"numpy default_rng([{cfg.seed}, {int(round(budget * 1e6))}])"}


# ----------------------------------------------------------------------------- scoring
def quality(models: Dict[str, torch.nn.Module], teacher: Dict[str, torch.nn.Module], data: Path) -> Dict:
    """Test-split scores per generator: PSNR/SSIM to ground truth, L1 to the teacher's output."""
    out = {}
    for d in DIRECTIONS:
        r = translation_quality(models[d].eval(), data, EVAL[d], teacher=teacher[d])
        out[d] = {"direction": r["direction"], "n_images": r["n_images"], "psnr": r["psnr"], "ssim": r["ssim"],
                  "l1_to_teacher": r["l1_to_teacher"],
                  "psnr_per_image": [round(v, 3) for v in r["psnr_per_image"] or []]}
    return out


def run_cell(method: str, budget: float, cfg: Config, paths: TeacherPaths, teacher: Dict, data: Path,
             work: Path) -> Dict:
    cell = work / "cells" / f"{method}_{budget:g}"
    done = cell / "result.json"
    if done.is_file():
        return json.loads(done.read_text())
    cell.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    genomes, info = cell_genomes(method, budget, cfg, paths, teacher, cell)
    t_genomes = time.perf_counter() - t0
    before = quality({d: slim(teacher[d], genomes[d]) for d in DIRECTIONS}, teacher, data)

    t0 = time.perf_counter()
    ft = cell / "finetune"
    if not (ft / "finetune.json").is_file():
        resume = (ft / "config.yaml").is_file()
        finetune_genomes(cfg, paths, genomes, ft, resume=resume, force=not resume,
                         source={"method": method, "macs_ratio_budget": budget})
    t_finetune = time.perf_counter() - t0
    report = json.loads((ft / "finetune.json").read_text())
    after = quality({d: load_generator(ft / f"{d}.pt") for d in DIRECTIONS}, teacher, data)

    record = {
        "method": method, "budget": budget, **info,
        "macs_ratio": {d: macs_ratio_of(genomes[d], MACS_SIZE, MACS_CONVENTION) for d in DIRECTIONS},
        "params": {d: count_params(slim(teacher[d], genomes[d]).arch) for d in DIRECTIONS},
        "widths": {d: genomes[d].widths() for d in DIRECTIONS},
        "before_finetune": before, "after_finetune": after,
        "finetune": {k: report.get(k) for k in ("best_epoch", "epochs", "steps", "train_seconds", "val", "val_before")},
        "seconds": {"genomes": round(t_genomes, 2), "finetune": round(t_finetune, 2)},
    }
    atomic_write_text(done, json.dumps(record, indent=2) + "\n")
    return record


# ----------------------------------------------------------------------------- reporting
def _mean_psnr(scores: Dict) -> float:
    return 0.5 * (scores["G_A"]["psnr"] + scores["G_B"]["psnr"])


def format_table(teacher_scores: Dict, records: List[Dict]) -> str:
    lines = ["| method | budget | MACs ratio A / B | params A / B | PSNR A->B before -> after | "
             "PSNR B->A before -> after | SSIM A->B / B->A after | L1 to teacher A / B after |",
             "|---|---|---|---|---|---|---|---|"]
    t = teacher_scores["scores"]
    params = teacher_scores["params"]
    lines.append(f"| teacher | 1 | 1.000 / 1.000 | {params['G_A'] / 1e3:.1f}k / {params['G_B'] / 1e3:.1f}k | "
                 f"{t['G_A']['psnr']:.2f} | {t['G_B']['psnr']:.2f} | "
                 f"{t['G_A']['ssim']:.3f} / {t['G_B']['ssim']:.3f} | 0 / 0 |")
    for r in sorted(records, key=lambda r: (-r["budget"], METHODS.index(r["method"]))):
        b, a = r["before_finetune"], r["after_finetune"]
        lines.append(
            f"| {LABELS[r['method']]} | {r['budget']:g} | "
            f"{r['macs_ratio']['G_A']:.3f} / {r['macs_ratio']['G_B']:.3f} | "
            f"{r['params']['G_A'] / 1e3:.1f}k / {r['params']['G_B'] / 1e3:.1f}k | "
            f"{b['G_A']['psnr']:.2f} -> **{a['G_A']['psnr']:.2f}** | "
            f"{b['G_B']['psnr']:.2f} -> **{a['G_B']['psnr']:.2f}** | "
            f"{a['G_A']['ssim']:.3f} / {a['G_B']['ssim']:.3f} | "
            f"{a['G_A']['l1_to_teacher']:.4f} / {a['G_B']['l1_to_teacher']:.4f} |")
    return "\n".join(lines)


def plot(teacher_scores: Dict, records: List[Dict], path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FixedLocator, NullLocator

    budgets = sorted({r["budget"] for r in records}) or [1.0]
    fig = Figure(figsize=(10, 4.4))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2, sharey=True)
    for ax, d in zip(axes, DIRECTIONS):
        ax.axhline(teacher_scores["scores"][d]["psnr"], color="black", lw=1, ls=":", label="teacher")
        for m in METHODS:
            rows = sorted((r for r in records if r["method"] == m), key=lambda r: r["macs_ratio"][d])
            if not rows:
                continue
            x = [r["macs_ratio"][d] for r in rows]
            ax.plot(x, [r["before_finetune"][d]["psnr"] for r in rows], ls="--", marker="o", mfc="none",
                    color=COLORS[m], alpha=0.7, label=f"{LABELS[m]}, pruned")
            ax.plot(x, [r["after_finetune"][d]["psnr"] for r in rows], ls="-", marker="o",
                    color=COLORS[m], label=f"{LABELS[m]}, fine-tuned")
        ax.set_xscale("log")
        ax.set_xlim(min(budgets) * 0.8, max(budgets) * 1.25)
        ax.xaxis.set_major_locator(FixedLocator(budgets))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticklabels([f"{b:g}" for b in budgets])
        ax.set_xlabel("MACs / teacher's MACs (log scale)")
        ax.set_title(f"{EVAL[d].replace('to', ' -> ')} ({d})")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("PSNR to ground truth (dB), test split")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(str(path), dpi=90)
    return path


def comparison(records: List[Dict]) -> Dict:
    """Per budget: mean-of-directions PSNR after fine-tuning of coevo minus each baseline's."""
    by = {(r["method"], r["budget"]): _mean_psnr(r["after_finetune"]) for r in records}
    out = {}
    for budget in sorted({r["budget"] for r in records}, reverse=True):
        if ("coevo", budget) in by:
            out[f"{budget:g}"] = {f"coevo_minus_{m}_db": round(by["coevo", budget] - by[m, budget], 3)
                                  for m in ("l1", "random") if (m, budget) in by}
    return out


# ----------------------------------------------------------------------------- main
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    paths, data, teacher_info = prepare_teacher(args)
    cfg = read_config(args, [f"data.root={data.resolve()}", "data.synthetic=false"])
    prepare_work(args, cfg, paths)
    teacher = {d: load_generator(getattr(paths, d)).eval() for d in DIRECTIONS}
    teacher_scores = {"scores": quality(teacher, teacher, data), **teacher_info,
                      "files": paths.to_dict(), "arch": teacher["G_A"].arch.to_dict(),
                      "params": {d: count_params(teacher[d].arch) for d in DIRECTIONS}}

    cells = [(m, b) for b in args.budgets for m in args.methods]
    records = []
    for i, (method, budget) in enumerate(cells, 1):
        t0 = time.perf_counter()
        log.info("cell %d/%d: %s at %g of the MACs", i, len(cells), method, budget)
        records.append(run_cell(method, budget, cfg, paths, teacher, data, args.work))
        log.info("cell %d/%d done in %.0f s: PSNR A->B %.2f, B->A %.2f after fine-tuning", i, len(cells),
                 time.perf_counter() - t0, records[-1]["after_finetune"]["G_A"]["psnr"],
                 records[-1]["after_finetune"]["G_B"]["psnr"])
    wall = time.perf_counter() - start

    stem = "frontier_quick" if args.quick else "frontier"
    if args.seed is not None or tuple(args.methods) != METHODS:
        # a partial or re-seeded run must not overwrite the main results
        stem += f"_{'-'.join(args.methods)}_seed{cfg.seed}"
    out = Path(args.out)
    table = format_table(teacher_scores, records)
    result = {
        "benchmark": "frontier", "version": 1, "command": " ".join(["python benchmarks/frontier.py", *sys.argv[1:]])
        if argv is None else " ".join(["python benchmarks/frontier.py", *argv]),
        "wall_time_s": round(wall, 1),
        "note": "wall time of this invocation; cells finished by an earlier one were read back, "
                "their own times are in cells[].seconds",
        "machine": machine_info("cpu"),
        "settings": {"methods": args.methods, "budgets": args.budgets, "seed": cfg.seed, "quick": args.quick,
                     "data_root": str(data.resolve()), "macs_size": MACS_SIZE, "macs_convention": MACS_CONVENTION,
                     "constraints": constraints(cfg), "search": config_to_dict(cfg)["search"],
                     "finetune": config_to_dict(cfg)["finetune"], "work": str(args.work)},
        "metrics": "test split, both directions: PSNR (dB) and SSIM to the exact ground truth "
                   "(testA_gt_B, testB_gt_A), mean |G(x) - teacher(x)| in [-1, 1] units",
        "teacher": teacher_scores,
        "cells": records,
        "coevo_vs_baselines": comparison(records),
    }
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / f"{stem}.json", json.dumps(result, indent=2) + "\n")
    plot(teacher_scores, records, out / f"{stem}.png")
    print(f"\nTest split of {data} ({records[0]['after_finetune']['G_A']['n_images'] if records else 0} images "
          f"per direction); MACs at {MACS_SIZE}x{MACS_SIZE}, {MACS_CONVENTION} convention; fine-tune: "
          f"{cfg.finetune.epochs}+{cfg.finetune.epochs_decay} epochs for every method\n")
    print(table)
    print(f"\ncoevo minus baselines, mean PSNR of both directions after fine-tuning (dB): "
          f"{json.dumps(result['coevo_vs_baselines'])}")
    print(f"wall time {wall / 60:.1f} min; wrote {out / (stem + '.json')} and {out / (stem + '.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
