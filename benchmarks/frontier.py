"""Is the search worth it? Fine-tuned quality against MACs and latency: coevo vs L1-norm vs random.

On a built-in synthetic task (64x64, exact ground truth for every test image: ``--task snow``,
the demo's "grass to snow", or ``--task dense``, the harder one with more structure and
texture), one teacher pair is cut down by several methods, each at several budgets and seeds:

* ``coevo``: the co-evolutionary search (:func:`coevo.search.run_search`) at the MAC budget,
  its final top genomes and the L1 seed re-ranked by the trained fitness (``search.rerank_top``);
* ``coevo-proxy``: the same search's best by the proxy fitness alone (no extra search; its
  fine-tune is skipped, and the ``coevo`` result reused, when both pick the same genomes);
* ``l1``: one-shot L1-norm filter pruning (:func:`coevo.prune.l1_genome_for_macs`);
* ``random``: one random genome per generator (:func:`coevo.prune.random_genome_for_macs`,
  seeded ``numpy.random.Generator``);

and at a latency budget (``--latency 0.25``: that fraction of the teacher's eager CPU time
with one thread at 256 px, as the cached per-layer table predicts it):

* ``coevo-latency``: the search with ``search.compute=latency``;
* ``coevo-mac``: the MAC-budgeted search at the MAC ratio that the latency budget allows
  the L1 genome (so both pairs should take about the same time; measured, see below);
* ``l1-latency``: the L1 genome at the latency budget.

Every method obeys the same constraints and every pair is fine-tuned by the same code with
the same settings (:func:`coevo.train.finetune.finetune_genomes`: CycleGAN losses +
distillation, model selection on held-out training images, never on test). Each pair is
scored on the test split, both directions, right after pruning (inherited weights) and after
fine-tuning: PSNR and SSIM to the ground truth, L1 to the teacher's output. Per (method,
budget): mean and standard deviation over the seeds, per-seed numbers kept. The verdict: at
each budget, coevo's mean PSNR minus each baseline's, against the pooled seed standard
deviation (root mean of the compared cells' variances). The latency cells' pairs, and the
0.25 MAC cells', are then timed against the teacher, interleaved, eager, one thread, 256 px
(``--no-speed`` skips that). MACs: one 1x3x256x256 forward, published convention.

    python benchmarks/frontier.py --task snow --threads 1      # 3 seeds x 3 budgets + latency
    python benchmarks/frontier.py --task dense --threads 1
    python benchmarks/frontier.py --quick                      # smoke run, a few minutes

Teacher: ``--teacher DIR`` (a coevo training run, with ``--data``), else one trained in
``--work`` from ``configs/demo.yaml`` on the task's built-in set. Cells live in ``--work``
(default ``benchmarks/work/frontier-TASK``), each with a ``result.json`` written last: an
interrupted run resumes where it stopped and finished cells are skipped. Writes
``frontier_TASK.json`` (every number, settings, machine) and ``frontier_TASK.png`` into
``--out`` (``frontier_quick.*`` with ``--quick``) and prints Markdown tables.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch

from coevo.deploy.bench import machine_info
from coevo.config import Config, config_to_dict, dump_config, load_config
from coevo.evaluation.evaluate import translation_quality
from coevo.core.files import atomic_write_text
from coevo.models import load_generator
from coevo.models.teacher import TeacherPaths, find_teacher
from coevo.prune import Genome, count_params, l1_genome_for_macs, macs_ratio_of, random_genome_for_macs, slim
from coevo.search import MACS_CONVENTION, MACS_SIZE, run_search
from coevo.train.finetune import DIRECTIONS, finetune_genomes

log = logging.getLogger("frontier")

MAC_METHODS = ("coevo", "coevo-proxy", "l1", "random")
LATENCY_METHODS = ("coevo-latency", "coevo-mac", "l1-latency")
METHODS = MAC_METHODS + LATENCY_METHODS
BASELINES = ("l1", "random")
LABELS = {"coevo": "coevo search", "coevo-proxy": "coevo, proxy fitness only", "l1": "L1-norm", "random": "random",
          "coevo-latency": "coevo, latency budget", "coevo-mac": "coevo, MAC budget of equal latency",
          "l1-latency": "L1-norm, latency budget"}
COLORS = {"coevo": "tab:red", "coevo-proxy": "tab:orange", "l1": "tab:blue", "random": "tab:gray"}
EVAL = {"G_A": "AtoB", "G_B": "BtoA"}
TASKS = ("snow", "dense")
# Sections whose values shape every cell's result: a work folder made with others is refused.
RESULT_SECTIONS = ("data", "model", "search", "finetune")

# A shorter search than the paper's 32 x 50 and 2 of the demo's 6 fine-tune epochs, the same for
# every method, so 3 seeds x 3 budgets x 4 methods and the latency cells fit in ~1.5 h per task
# with one thread on the 2-core machine. Any channel count for the MAC cells (they compare how
# well each method spends MACs); the latency cells round to 8, as the demo does for CPU speed.
DEFAULTS = ["search.population=16", "search.generations=12", "search.channel_multiple=1",
            "search.rerank_top=4", "finetune.epochs=1", "finetune.epochs_decay=1"]
QUICK = ["search.population=6", "search.generations=2", "search.eval_images=4", "search.channel_multiple=1",
         "search.rerank_top=2", "search.trained_steps=3", "finetune.epochs=1", "finetune.epochs_decay=0",
         "finetune.max_steps_per_epoch=20", "finetune.log_every=10"]
QUICK_TEACHER = ["train.epochs=1", "train.epochs_decay=0", "train.max_steps_per_epoch=40"]
LATENCY_MULTIPLE = 8


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", default="snow", choices=TASKS, help="built-in task (default snow, the demo's)")
    p.add_argument("--teacher", help="coevo teacher run (default: train one in --work)")
    p.add_argument("--data", help="data folder with testA_gt_B/testB_gt_A (default: the teacher's)")
    p.add_argument("--config", default="configs/demo.yaml", help="config YAML (default configs/demo.yaml)")
    p.add_argument("--budgets", default="0.25,0.1,0.05", help="MAC ratios to the teacher (default 0.25,0.1,0.05)")
    p.add_argument("--latency", type=float, default=0.25,
                   help="latency budget, a fraction of the teacher's 1-thread CPU time (default 0.25; 0: none)")
    p.add_argument("--methods", default=",".join(METHODS), help=f"subset of {','.join(METHODS)}")
    p.add_argument("--seeds", default="0,1,2", help="seeds of data order, search, random genomes (default 0,1,2)")
    p.add_argument("--work", help="cells, searches, fine-tunes (default benchmarks/work/frontier-TASK)")
    p.add_argument("--out", default="benchmarks/results", help="output folder (default benchmarks/results)")
    p.add_argument("--quick", action="store_true", help="smoke run: tiny search and fine-tune")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override after the benchmark's defaults, e.g. search.generations=20")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's default)")
    p.add_argument("--no-speed", action="store_true", help="skip timing the pairs at the end")
    p.add_argument("--speed-repeats", type=int, default=15, help="timed rounds per model (default 15)")
    p.add_argument("--force", action="store_true", help="start over: empty --work first (keeps its teacher)")
    args = p.parse_args(argv)
    args.budgets = [float(b) for b in args.budgets.split(",") if b.strip()]
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    unknown = sorted(set(args.methods) - set(METHODS))
    if unknown:
        p.error(f"unknown method(s) {unknown}; choose from {','.join(METHODS)}")
    if not all(0.0 < b <= 1.0 for b in args.budgets):
        p.error(f"--budgets must be MAC ratios in (0, 1], got {args.budgets}")
    if not 0.0 <= args.latency <= 1.0:
        p.error(f"--latency must be a fraction in [0, 1], got {args.latency}")
    if not args.seeds:
        p.error("--seeds needs at least one seed")
    args.work = Path(args.work or f"benchmarks/work/frontier-{'quick-' if args.quick else ''}{args.task}")
    return args


# ----------------------------------------------------------------------------- setup
def read_config(args: argparse.Namespace, extra: Sequence[str] = ()) -> Config:
    settings = QUICK if args.quick else DEFAULTS
    return load_config(args.config, [*settings, f"data.synthetic_task={args.task}", *extra, *args.overrides])


def prepare_teacher(args: argparse.Namespace) -> Tuple[TeacherPaths, Path, Dict]:
    """(teacher files, data root, description): the given teacher, or one trained in --work."""
    if args.teacher:
        folder = Path(args.teacher)
        paths = find_teacher(folder)
        data = args.data
        if data is None and (folder / "config.yaml").is_file():
            data = load_config(folder / "config.yaml").data.root
        if data is None and (folder / "data" / "meta.json").is_file():
            data = folder / "data"
        if data is None:
            raise SystemExit(f"frontier: {folder} names no data folder: pass --data")
        return paths, Path(data), {"source": str(folder.resolve())}

    from coevo.data.synthetic import make_synthetic_dataset
    from coevo.core.runs import mark_run_dir, run_entries
    from coevo.train.teacher import train_teacher

    data, folder = args.work / "data", args.work / "teacher"
    cfg = read_config(args, [f"data.root={data.resolve()}", *(QUICK_TEACHER if args.quick else [])])
    args.work.mkdir(parents=True, exist_ok=True)
    if not run_entries(args.work):
        mark_run_dir(args.work, "benchmarks/frontier.py")
    if not (data / "meta.json").is_file():
        make_synthetic_dataset(data, size=cfg.data.load_size, n_train=cfg.data.synthetic_n_train,
                               n_test=cfg.data.synthetic_n_test, seed=cfg.data.synthetic_seed, task=args.task)
    if not (folder / "summary.json").is_file():
        log.info("training a %s teacher in %s (%s)", args.task, folder, "quick" if args.quick else args.config)
        train_teacher(cfg, folder, resume=(folder / "config.yaml").is_file())
    return find_teacher(folder), data, {"source": f"trained here ({folder})", "train": config_to_dict(cfg)["train"]}


def teacher_identity(paths: TeacherPaths) -> Dict:
    return {k: {"path": v, "mtime_ns": Path(v).stat().st_mtime_ns} for k, v in paths.to_dict().items()}


def prepare_work(args: argparse.Namespace, cfg: Config, paths: TeacherPaths) -> None:
    """Create --work or check that its results were made with the same settings and teacher."""
    from coevo.config import diff_configs
    from coevo.core.files import remove_owned
    from coevo.core.runs import check_removable, mark_run_dir, run_entries

    saved, teacher_file = args.work / "config.yaml", args.work / "teacher.json"
    if args.force and (args.work / "cells").exists():
        check_removable(args.work)  # only a --work this script created: never ., ~ or a folder of yours
        for name in ("cells", "config.yaml", "teacher.json"):
            if (args.work / name).exists():
                remove_owned(args.work / name)
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


def _with(cfg: Config, **values) -> Config:
    """A copy of ``cfg`` with ``section__key=value`` (or a top-level ``key=value``) replaced."""
    from coevo.config import config_from_dict

    data = config_to_dict(cfg)
    for key, value in values.items():
        section, _, name = key.rpartition("__")
        (data[section] if section else data)[name] = value
    return config_from_dict(data)


def search_genomes(cfg: Config, paths: TeacherPaths, folder: Path, proxy: bool = False) -> Tuple[Dict[str, Genome], Dict]:
    """The search in ``folder`` (run or resumed, or read back): its result, or its proxy-only best."""
    if not (folder / "search.json").is_file():
        resume = (folder / "state.pt").is_file()
        run_search(cfg, folder, teacher=Path(paths.G_A).parent, resume=resume, force=not resume, progress=False)
    summary = json.loads((folder / "search.json").read_text())
    name = "proxy_best" if proxy and (folder / "genomes" / "proxy_best_G_A.json").is_file() else "best"
    best = {d: Genome.load_json(folder / "genomes" / f"{name}_{d}.json") for d in DIRECTIONS}
    keep = ("generations", "population", "evaluations", "cache_hits", "wall_time_s", "metric", "compute")
    info = {"search": {k: summary.get(k) for k in keep}, "search_folder": str(folder), "genomes_file": name}
    if "rerank" in summary:
        info["rerank"] = {d: [{k: r.get(k) for k in ("source", "proxy_fitness", "trained_fitness", "chosen")}
                              for r in summary["rerank"]["candidates"][d]] for d in DIRECTIONS}
    if "latency" in summary:
        info["latency_budget"] = summary["latency"]
    return best, info


def latency_table(cfg: Config, teacher: Dict):
    from coevo.search.context import latency_table_for

    return latency_table_for(teacher["G_A"].arch, _with(cfg, search__compute="latency").search)


def latency_macs_ratio(cfg: Config, teacher: Dict, fraction: float) -> float:
    """The MAC ratio the latency budget allows the L1 genome (the larger of the two generators')."""
    from coevo.prune.baselines import l1_genome_for_latency

    table = latency_table(cfg, teacher)
    max_ms = fraction * table.predict(teacher["G_A"].arch)
    ratios = [macs_ratio_of(l1_genome_for_latency(teacher[d], table, max_ms, cfg.search.min_channels,
                                                  LATENCY_MULTIPLE, tied=cfg.search.tied), MACS_SIZE, MACS_CONVENTION)
              for d in DIRECTIONS]
    return round(max(ratios), 4)


def cell_genomes(method: str, budget: float, cfg: Config, paths: TeacherPaths, teacher: Dict,
                 work: Path) -> Tuple[Dict[str, Genome], Dict]:
    seed = cfg.seed
    searches = work / "searches"
    if method in ("coevo", "coevo-proxy"):
        return search_genomes(_with(cfg, search__macs_ratio=budget), paths, searches / f"macs_{budget:g}_s{seed}",
                              proxy=method == "coevo-proxy")
    if method == "l1":
        return {d: l1_genome_for_macs(teacher[d], budget, MACS_SIZE, **constraints(cfg)) for d in DIRECTIONS}, {}
    if method == "random":
        # One stream per (seed, budget), so a cell's genomes do not depend on which other cells ran.
        rng = np.random.default_rng([seed, int(round(budget * 1e6))])
        return {d: random_genome_for_macs(teacher[d].arch, budget, MACS_SIZE, rng, **constraints(cfg))
                for d in DIRECTIONS}, {"rng": f"numpy default_rng([{seed}, {int(round(budget * 1e6))}])"}
    # latency cells: `budget` is the latency fraction; channel counts rounded to 8 for CPU speed
    lat = _with(cfg, search__channel_multiple=LATENCY_MULTIPLE)
    if method == "coevo-latency":
        return search_genomes(_with(lat, search__compute="latency", search__latency_ratio=budget), paths,
                              searches / f"latency_{budget:g}_s{seed}")
    if method == "coevo-mac":
        ratio = latency_macs_ratio(cfg, teacher, budget)
        genomes, info = search_genomes(_with(lat, search__macs_ratio=ratio), paths, searches / f"maclat_{ratio:g}_s{seed}")
        return genomes, {**info, "macs_ratio_budget": ratio}
    if method == "l1-latency":
        from coevo.prune.baselines import l1_genome_for_latency

        table = latency_table(cfg, teacher)
        max_ms = budget * table.predict(teacher["G_A"].arch)
        return {d: l1_genome_for_latency(teacher[d], table, max_ms, cfg.search.min_channels, LATENCY_MULTIPLE,
                                         tied=cfg.search.tied) for d in DIRECTIONS}, {"max_ms_predicted": max_ms}
    raise ValueError(method)


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


def cell_name(method: str, budget: float, seed: int) -> str:
    return f"{method}_{budget:g}_s{seed}"


def run_cell(method: str, budget: float, seed: int, cfg: Config, paths: TeacherPaths, teacher: Dict, data: Path,
             args: argparse.Namespace, done_cells: Dict[str, Dict]) -> Dict:
    cell = args.work / "cells" / cell_name(method, budget, seed)
    done = cell / "result.json"
    if done.is_file():
        return json.loads(done.read_text())
    cfg = _with(cfg, seed=int(seed))
    cell.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    genomes, info = cell_genomes(method, budget, cfg, paths, teacher, args.work)
    t_genomes = time.perf_counter() - t0
    widths = {d: genomes[d].widths() for d in DIRECTIONS}
    base = {"method": method, "budget": budget, "seed": seed, "kind": "latency" if method in LATENCY_METHODS else "macs",
            **info, "macs_ratio": {d: macs_ratio_of(genomes[d], MACS_SIZE, MACS_CONVENTION) for d in DIRECTIONS},
            "params": {d: count_params(slim(teacher[d], genomes[d]).arch) for d in DIRECTIONS}, "widths": widths}
    twin = done_cells.get(cell_name("coevo", budget, seed))
    if method == "coevo-proxy" and twin is not None and twin["widths"] == widths and \
            all(genomes[d].to_bits().tolist() == Genome.load_json(Path(twin["search_folder"]) / "genomes" /
                                                                   f"best_{d}.json").to_bits().tolist()
                for d in DIRECTIONS):
        # the rerank kept the proxy's choice: same genomes, same seeded fine-tune, same result
        record = {**base, "same_as": twin["cell"], **{k: twin[k] for k in ("before_finetune", "after_finetune",
                                                                              "finetune", "finetune_folder")},
                  "seconds": {"genomes": round(t_genomes, 2), "finetune": 0.0}, "cell": cell.name}
        atomic_write_text(done, json.dumps(record, indent=2) + "\n")
        return record
    before = quality({d: slim(teacher[d], genomes[d]) for d in DIRECTIONS}, teacher, data)
    t0 = time.perf_counter()
    ft = cell / "finetune"
    if not (ft / "finetune.json").is_file():
        resume = (ft / "config.yaml").is_file()
        finetune_genomes(cfg, paths, genomes, ft, resume=resume, force=not resume,
                         source={"method": method, "budget": budget, "seed": seed})
    t_finetune = time.perf_counter() - t0
    report = json.loads((ft / "finetune.json").read_text())
    after = quality({d: load_generator(ft / f"{d}.pt") for d in DIRECTIONS}, teacher, data)
    record = {**base, "cell": cell.name, "finetune_folder": str(ft), "before_finetune": before, "after_finetune": after,
              "finetune": {k: report.get(k) for k in ("best_epoch", "epochs", "steps", "train_seconds", "val",
                                                      "val_before")},
              "seconds": {"genomes": round(t_genomes, 2), "finetune": round(t_finetune, 2)}}
    atomic_write_text(done, json.dumps(record, indent=2) + "\n")
    return record



# ----------------------------------------------------------------------------- statistics
def _psnr(record: Dict, direction: str, stage: str = "after_finetune") -> float:
    scores = record[stage]
    if direction == "mean":
        return 0.5 * (scores["G_A"]["psnr"] + scores["G_B"]["psnr"])
    return scores[direction]["psnr"]


def summarise(records: List[Dict]) -> Dict[str, Dict]:
    """Per (method, budget): per-seed fine-tuned PSNR (G_A, G_B, mean of both), mean and std over seeds."""
    out: Dict[str, Dict] = {}
    for r in sorted(records, key=lambda r: (r["kind"], -r["budget"], METHODS.index(r["method"]), r["seed"])):
        key = f"{r['method']}@{r['budget']:g}"
        entry = out.setdefault(key, {"method": r["method"], "budget": r["budget"], "kind": r["kind"], "seeds": [],
                                     "per_seed": {d: [] for d in (*DIRECTIONS, "mean")}, "before_per_seed": [],
                                     "macs_ratio": {d: [] for d in DIRECTIONS}})
        entry["seeds"].append(r["seed"])
        for d in (*DIRECTIONS, "mean"):
            entry["per_seed"][d].append(round(_psnr(r, d), 4))
        entry["before_per_seed"].append(round(_psnr(r, "mean", "before_finetune"), 4))
        for d in DIRECTIONS:
            entry["macs_ratio"][d].append(round(r["macs_ratio"][d], 4))
    for entry in out.values():
        for d in (*DIRECTIONS, "mean"):
            v = np.array(entry["per_seed"][d])
            entry.setdefault("psnr_mean", {})[d] = round(float(v.mean()), 4)
            entry.setdefault("psnr_std", {})[d] = round(float(v.std(ddof=1)) if len(v) > 1 else 0.0, 4)
        entry["before_mean"] = round(float(np.mean(entry["before_per_seed"])), 4)
    return out


def verdicts(summary: Dict[str, Dict]) -> Dict[str, Dict]:
    """At each MAC budget: coevo minus each baseline, per direction and on the mean of both, against
    the pooled seed std of the compared cells; ``beats`` when every margin exceeds its pooled std."""
    out = {}
    for key, c in summary.items():
        if c["method"] != "coevo" or c["kind"] != "macs":
            continue
        b = c["budget"]
        row = {}
        for m in (*BASELINES, "coevo-proxy"):
            other = summary.get(f"{m}@{b:g}")
            if other is None:
                continue
            per = {}
            for d in (*DIRECTIONS, "mean"):
                margin = c["psnr_mean"][d] - other["psnr_mean"][d]
                pooled = math.sqrt(0.5 * (c["psnr_std"][d] ** 2 + other["psnr_std"][d] ** 2))
                per[d] = {"margin_db": round(margin, 4), "pooled_std_db": round(pooled, 4),
                          "beats": bool(margin > pooled and len(c["seeds"]) > 1)}
            row[m] = per
        row["beats_both_baselines"] = all(row[m][d]["beats"] for m in BASELINES if m in row for d in DIRECTIONS) \
            and all(m in row for m in BASELINES)
        out[f"{b:g}"] = row
    return out


# ----------------------------------------------------------------------------- speed
def measure_speed(records: List[Dict], teacher: Dict, fraction: float, repeats: int) -> Dict:
    """The latency cells' fine-tuned pairs (and the 0.25 MAC cells') timed against the teacher:
    interleaved, eager, one thread, 256 px, batch 1. Medians per generator; speed-up = teacher / model."""
    from _common import time_against_teacher  # benchmarks/ is on sys.path when the scripts run

    timed = [r for r in records if r["kind"] == "latency" or (r["method"] in ("coevo", "l1") and r["budget"] == 0.25)]
    timed = [r for r in timed if "same_as" not in r]
    out = {"settings": "eager CPU, 1 thread, 256x256, batch 1, interleaved round-robin; median of "
                       f"{repeats} rounds after 3 warm-up rounds"}
    out["teacher_ms"], out["pairs"] = time_against_teacher(
        teacher, {r["cell"]: r["finetune_folder"] for r in timed}, 256, repeats, DIRECTIONS)
    groups: Dict[str, List[float]] = {}
    for r in timed:
        p = out["pairs"][r["cell"]]
        p["speedup_mean"] = round(0.5 * (p["G_A"]["speedup"] + p["G_B"]["speedup"]), 3)
        groups.setdefault(f"{r['method']}@{r['budget']:g}", []).append(p["speedup_mean"])
    out["speedup_by_cell"] = {k: {"per_seed": v, "mean": round(float(np.mean(v)), 3)} for k, v in groups.items()}
    return out


def latency_verdict(summary: Dict[str, Dict], speed: Dict, fraction: float) -> Dict:
    lat, mac = summary.get(f"coevo-latency@{fraction:g}"), summary.get(f"coevo-mac@{fraction:g}")
    if lat is None or mac is None:
        return {}
    s = speed.get("speedup_by_cell", {})
    target = round(0.95 / fraction, 3)
    out = {"speedup_target": target,
           "coevo_latency_speedup": s.get(f"coevo-latency@{fraction:g}", {}).get("mean"),
           "coevo_mac_speedup": s.get(f"coevo-mac@{fraction:g}", {}).get("mean")}
    out["speedup_met"] = out["coevo_latency_speedup"] is not None and out["coevo_latency_speedup"] >= target
    per = {}
    for d in (*DIRECTIONS, "mean"):
        margin = lat["psnr_mean"][d] - mac["psnr_mean"][d]
        pooled = math.sqrt(0.5 * (lat["psnr_std"][d] ** 2 + mac["psnr_std"][d] ** 2))
        per[d] = {"margin_db": round(margin, 4), "pooled_std_db": round(pooled, 4), "better": bool(margin > 0),
                  "beyond_std": bool(margin > pooled)}
    out["psnr_latency_minus_mac"] = per
    return out


# ----------------------------------------------------------------------------- reporting
def format_tables(teacher_scores: Dict, summary: Dict[str, Dict], speed: Dict) -> str:
    t = teacher_scores["scores"]
    lines = ["| method | budget | MACs ratio A / B | seeds | before fine-tuning, mean of both | "
             "PSNR A->B (mean ± std) | PSNR B->A | mean of both | speed-up |",
             "|---|---|---|---|---|---|---|---|---|",
             f"| teacher | 1 | 1 / 1 | - | - | {t['G_A']['psnr']:.2f} | {t['G_B']['psnr']:.2f} | "
             f"{0.5 * (t['G_A']['psnr'] + t['G_B']['psnr']):.2f} | 1.00x |"]
    by_cell = speed.get("speedup_by_cell", {}) if speed else {}
    for key, c in summary.items():
        budget = f"{c['budget']:g} of MACs" if c["kind"] == "macs" else f"{c['budget']:g} of latency"
        macs = " / ".join(f"{np.mean(c['macs_ratio'][d]):.3f}" for d in DIRECTIONS)
        cols = [f"{c['psnr_mean'][d]:.2f} ± {c['psnr_std'][d]:.2f}" for d in (*DIRECTIONS, "mean")]
        sp = by_cell.get(key, {}).get("mean")
        lines.append(f"| {LABELS[c['method']]} | {budget} | {macs} | {len(c['seeds'])} | {c['before_mean']:.2f} | "
                     f"{' | '.join(cols)} | "
                     f"{'-' if sp is None else f'{sp:.2f}x'} |")
    return "\n".join(lines)


def plot(teacher_scores: Dict, summary: Dict[str, Dict], path: Path, title: str) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FixedLocator, NullLocator

    cells = [c for c in summary.values() if c["kind"] == "macs"]
    budgets = sorted({c["budget"] for c in cells}) or [1.0]
    fig = Figure(figsize=(10, 4.4))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2, sharey=True)
    for ax, d in zip(axes, DIRECTIONS):
        ax.axhline(teacher_scores["scores"][d]["psnr"], color="black", lw=1, ls=":", label="teacher")
        for i, m in enumerate(MAC_METHODS):
            rows = sorted((c for c in cells if c["method"] == m), key=lambda c: c["budget"])
            if not rows:
                continue
            x = [c["budget"] * (1 + 0.03 * (i - 1.5)) for c in rows]  # side by side, error bars apart
            ax.errorbar(x, [c["psnr_mean"][d] for c in rows], yerr=[c["psnr_std"][d] for c in rows],
                        marker="o", capsize=3, color=COLORS[m], label=f"{LABELS[m]} (mean ± std over seeds)")
        ax.set_xscale("log")
        ax.set_xlim(min(budgets) * 0.8, max(budgets) * 1.25)
        ax.xaxis.set_major_locator(FixedLocator(budgets))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticklabels([f"{b:g}" for b in budgets])
        ax.set_xlabel("MAC budget / teacher's MACs (log scale)")
        ax.set_title(f"{title}: {EVAL[d].replace('to', ' -> ')} ({d})")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("PSNR to ground truth after fine-tuning (dB), test")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.14, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(str(path), dpi=90)
    return path


# ----------------------------------------------------------------------------- main
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from _common import process_setup

    process_setup(args.threads)
    start = time.perf_counter()
    paths, data, teacher_info = prepare_teacher(args)
    cfg = read_config(args, [f"data.root={data.resolve()}", "data.synthetic=false"])
    prepare_work(args, cfg, paths)
    teacher = {d: load_generator(getattr(paths, d)).eval() for d in DIRECTIONS}
    teacher_scores = {"scores": quality(teacher, teacher, data), **teacher_info,
                      "files": paths.to_dict(), "arch": teacher["G_A"].arch.to_dict(),
                      "params": {d: count_params(teacher[d].arch) for d in DIRECTIONS}}

    cells = [(m, b, s) for s in args.seeds for b in args.budgets for m in MAC_METHODS if m in args.methods]
    if args.latency:
        cells += [(m, args.latency, s) for s in args.seeds for m in LATENCY_METHODS if m in args.methods]
    records: List[Dict] = []
    done_cells: Dict[str, Dict] = {}
    for i, (method, budget, seed) in enumerate(cells, 1):
        t0 = time.perf_counter()
        log.info("cell %d/%d: %s at %g (%s), seed %d", i, len(cells), method, budget,
                 "latency" if method in LATENCY_METHODS else "MACs", seed)
        record = run_cell(method, budget, seed, cfg, paths, teacher, data, args, done_cells)
        records.append(record)
        done_cells[record["cell"]] = record
        log.info("cell %d/%d done in %.0f s: PSNR A->B %.2f, B->A %.2f after fine-tuning", i, len(cells),
                 time.perf_counter() - t0, _psnr(record, "G_A"), _psnr(record, "G_B"))
    summary = summarise(records)
    speed = {} if args.no_speed else measure_speed(records, teacher, args.latency, args.speed_repeats)
    wall = time.perf_counter() - start

    stem = "frontier_quick" if args.quick else f"frontier_{args.task}"
    out = Path(args.out)
    result = {
        "benchmark": "frontier", "version": 2, "task": args.task,
        "command": " ".join(["python benchmarks/frontier.py", *(sys.argv[1:] if argv is None else argv)]),
        "wall_time_s": round(wall, 1),
        "note": "wall time of this invocation; cells finished by an earlier one were read back, "
                "their own times are in cells[].seconds",
        "machine": machine_info("cpu"),
        "settings": {"methods": args.methods, "budgets": args.budgets, "latency": args.latency, "seeds": args.seeds,
                     "quick": args.quick, "data_root": str(data.resolve()), "macs_size": MACS_SIZE,
                     "macs_convention": MACS_CONVENTION, "constraints": constraints(cfg),
                     "latency_cells_channel_multiple": LATENCY_MULTIPLE, "search": config_to_dict(cfg)["search"],
                     "finetune": config_to_dict(cfg)["finetune"], "work": str(args.work)},
        "metrics": "test split, both directions: PSNR (dB) and SSIM to the exact ground truth "
                   "(testA_gt_B, testB_gt_A), mean |G(x) - teacher(x)| in [-1, 1] units; std over seeds with ddof=1",
        "teacher": teacher_scores,
        "summary": summary,
        "verdicts": verdicts(summary),
        "speed": speed,
        "latency_verdict": latency_verdict(summary, speed, args.latency) if args.latency else {},
        "cells": records,
    }
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / f"{stem}.json", json.dumps(result, indent=2) + "\n")
    plot(teacher_scores, summary, out / f"{stem}.png", args.task)
    print(f"\n{args.task} task, test split of {data}; MACs at {MACS_SIZE}x{MACS_SIZE}, {MACS_CONVENTION} convention; "
          f"fine-tune: {cfg.finetune.epochs}+{cfg.finetune.epochs_decay} epochs for every method; "
          f"seeds {args.seeds}\n")
    print(format_tables(teacher_scores, summary, speed))
    print(f"\ncoevo minus baselines (dB, against the pooled seed std): {json.dumps(result['verdicts'])}")
    if result["latency_verdict"]:
        print(f"latency budget: {json.dumps(result['latency_verdict'])}")
    print(f"wall time {wall / 60:.1f} min; wrote {out / (stem + '.json')} and {out / (stem + '.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
