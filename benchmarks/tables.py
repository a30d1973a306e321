"""Regenerate the README's results tables from the JSON files in benchmarks/results/.

    python benchmarks/tables.py                       # rewrite the tables in README.md
    python benchmarks/tables.py --demo runs/demo      # first copy a demo's report into results/
    python benchmarks/tables.py --check               # exit 1 if README.md is out of date

Each table sits in README.md between ``<!-- results:NAME -->`` and
``<!-- /results:NAME -->``; nothing else in the README is touched. Numbers are
never typed by hand: rerun the benchmark, then this script.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path
from typing import Callable, Dict, List

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def _load(name: str) -> Dict | None:
    path = RESULTS / name
    return json.loads(path.read_text()) if path.is_file() else None


def _machine(m: Dict) -> str:
    threads = m.get("threads")
    parts = [m.get("device_name") or m.get("cpu") or "?", f"{m.get('cores_usable', '?')} cores",
             f"torch {m.get('torch', '?')}"]
    if threads:
        parts.append(f"{threads} thread{'s' if threads != 1 else ''}")
    return ", ".join(str(p) for p in parts)


def _g(x: float) -> str:
    return f"{x / 1e9:.2f}G"


def demo_table() -> str:
    r = _load("demo_report.json")
    if r is None:
        return "_no demo report yet: run `make demo`, then `python benchmarks/tables.py --demo runs/demo`_"
    speeds = [e.get("speed") for e in r["directions"].values()]
    deployed = speeds[0]["backend"] if all(speeds) else None
    lines = [
        f"Machine: {_machine(r.get('machine', {}))}. MACs at {r['bench_size']}x{r['bench_size']}, "
        f"{r['mac_convention']}. Latency: batch 1, {r['bench_size']}x{r['bench_size']}, "
        "teacher and compressed interleaved in one run; eager PyTorch"
        + (f", and the compressed pair as `coevo export` deployed it ({deployed})" if deployed else "")
        + ". PSNR/SSIM to the exact ground truth of the test split (never used for selection).",
        "",
        "| direction | model | MACs | params | eager CPU ms (median) | eager speed-up | "
        + ("deployed ms | deployed speed-up vs teacher eager | " if deployed else "")
        + "PSNR dB | SSIM | L1 to teacher |",
        "|---|---|---|---|---|---|" + ("---|---|" if deployed else "") + "---|---|---|",
    ]
    for direction, e in r["directions"].items():
        arrow = direction.replace("to", "->")
        t, s = e["teacher"], e["coevo"]
        sp = e.get("speed")
        eager_ms = s.get("latency_ms_eager", s["latency_ms"])
        eager_x = sp["speedup_eager_vs_eager"] if sp else e["speedup"]
        dep_t = "- | 1.00x | " if deployed else ""
        dep_s = f"{sp['coevo_ms']:.1f} | {sp['speedup_vs_teacher_eager']:.2f}x | " if deployed else ""
        lines.append(f"| {arrow} | teacher {e['generator']} | {_g(t['macs'])} | {t['params'] / 1e6:.2f}M | "
                     f"{t['latency_ms']:.1f} | 1.00x | {dep_t}{t['psnr']:.2f} | {t['ssim']:.3f} | - |")
        lines.append(f"| {arrow} | coevo {e['generator']} ({e['macs_ratio']:.1%} MACs) | {_g(s['macs'])} | "
                     f"{s['params'] / 1e6:.2f}M | {eager_ms:.1f} | {eager_x:.2f}x | {dep_s}{s['psnr']:.2f} | "
                     f"{s['ssim']:.3f} | {s['l1_to_teacher']:.4f} |")
    verdict = "all targets met" if r.get("all_checks_pass") else "some targets missed"
    lines += ["", "Targets (MACs <= 25% of the teacher's, PSNR at most 1 dB below the teacher's, >= 3x faster"
              + (" on the deployed runtime against the teacher in eager PyTorch" if deployed else "")
              + f"): **{verdict}**."]
    if r.get("wall_minutes"):
        lines[-1] += f" Whole demo: {r['wall_minutes']:.1f} min."
    lines += ["", "The teacher trains for only 1000 steps to keep the demo short; the compressed pair can score "
              "above it because fine-tuning keeps training (CycleGAN losses plus distillation)."]
    return "\n".join(lines)


def inference_table() -> str:
    d = _load("inference_cpu.json")
    if d is None:
        return "_no results yet: `python benchmarks/inference.py`_"
    b = d["benchmark"]
    rows = d["results"]
    full = {r["backend"]: r for r in rows if r["name"] == "full"}
    lines = [
        f"Machine: {_machine(d['machine'])}. Full generator: ngf {b['ngf']}, {b['n_blocks']} blocks, "
        f"{b['size']}x{b['size']}, batch 1; L1-norm pruned copies at each MAC budget (`m8`: widths rounded "
        "to multiples of 8). MACs in the published convention. Medians of "
        f"{b['repeats']} interleaved rounds.",
        "",
        "| model | MACs | backend | ms (median) | speed-up | MAC reduction | speed-up / MAC reduction |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        base = full.get(r["backend"], full.get("eager"))
        red = base["macs_published"] / r["macs_published"]
        sp = base["latency_ms_median"] / r["latency_ms_median"]
        lines.append(f"| {r['name']} | {_g(r['macs_published'])} | {r['backend']} | {r['latency_ms_median']:.1f} | "
                     f"{sp:.2f}x | {red:.2f}x | {sp / red:.2f} |")
    lines += ["", "Speed-ups are against the full model on the same backend."]
    return "\n".join(lines)


def search_cost_table() -> str:
    d = _load("search_cost.json")
    if d is None:
        return "_no results yet: `python benchmarks/search_cost.py`_"
    t = d["teacher"]
    med = d["median_s"]
    lines = [
        f"One generation of {d['candidates_per_generation']} candidates ({d['population']} per generator), "
        f"{d['eval_images']} images per domain at {d['size']}x{d['size']}, genomes at <= {d['macs_ratio']} of a "
        f"ngf {t['ngf']}, {t['n_blocks']}-block teacher; torch threads {d['threads']}; medians of "
        f"{d['repeats']} generations, side by side in one run.",
        "",
        "| evaluation | s / generation | speed-up |",
        "|---|---|---|",
        f"| naive (official code: masked full network, teacher recomputed per candidate) | {med['naive']:.2f} | 1.00x |",
        f"| coevo, one real generation (slim networks, cached teacher, fitness cache) | {med['coevo']:.2f} | "
        f"{d['speedup']:.2f}x |",
        f"| coevo, no caches | {med['coevo_uncached']:.2f} | {d['speedup_no_cache']:.2f}x |",
        "",
        f"Both give the same fitness (max relative difference {d['max_relative_fitness_difference']:.1e}).",
    ]
    return "\n".join(lines)


def search_quality_table() -> str:
    d = _load("search_quality.json")
    if d is None:
        return "_no results yet: `python benchmarks/search_quality.py`_"
    n_a, n_b = d["held_out_images"]
    lines = [
        f"At <= {d['macs_ratio']} of the teacher's MACs, before fine-tuning, on {n_a}+{n_b} held-out training "
        f"images at {d['image_size']}x{d['image_size']} (neither the search's batch nor test); metric "
        f"`{d['metric']}` (the search's own, lower is better), L1 to the teacher's output, and the pair's cycle L1.",
        "",
        "| genomes | G_A perceptual | G_B perceptual | G_A L1 to teacher | G_B L1 to teacher | cycle A | cycle B | "
        "MACs ratio A / B |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in d["results"].items():
        a, b = r["G_A"], r["G_B"]
        lines.append(f"| {name} | {a['perceptual']:.3f} | {b['perceptual']:.3f} | {a['l1_to_teacher']:.4f} | "
                     f"{b['l1_to_teacher']:.4f} | {a['cycle']:.4f} | {b['cycle']:.4f} | "
                     f"{a['macs_ratio']:.3f} / {b['macs_ratio']:.3f} |")
    return "\n".join(lines)


def _frontier_module():
    from importlib import util

    spec = util.spec_from_file_location("frontier", ROOT / "benchmarks" / "frontier.py")
    mod = util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def frontier_table() -> str:
    """Per task (frontier_snow.json, frontier_dense.json): mean ± std over seeds, verdicts, latency."""
    runs = [(t, _load(f"frontier_{t}.json")) for t in ("snow", "dense")]
    runs = [(t, d) for t, d in runs if d is not None]
    if not runs:
        return "_no results yet: `python benchmarks/frontier.py --task snow` (and `--task dense`)_"
    mod = _frontier_module()
    parts = []
    for task, d in runs:
        st = d["settings"]
        s, f = st["search"], st["finetune"]
        n = d["teacher"]["scores"]["G_A"]["n_images"]
        parts.append(
            f"**{task} task** ({'the demo' + chr(39) + 's grass to snow' if task == 'snow' else 'denser structure and texture'}). "
            f"Machine: {_machine(d['machine'])}. Test split, {n} images per direction; seeds {st['seeds']}. "
            f"Search: population {s['population']}, {s['generations']} generations, re-rank of the top "
            f"{s['rerank_top']} and the L1 seed by the trained fitness ({s['trained_steps']} steps). Every pair is "
            f"fine-tuned by the same code with the same settings ({f['epochs']} + {f['epochs_decay']} decay epochs). "
            f"PSNR in dB to ground truth after fine-tuning, mean ± std over seeds (per-seed numbers in "
            f"`benchmarks/results/frontier_{task}.json`). Speed-up: eager CPU, 1 thread, 256 px, against the teacher, "
            f"interleaved.")
        parts.append(mod.format_tables(d["teacher"], d["summary"], d.get("speed") or {}))
        lines = []
        for budget, v in d["verdicts"].items():
            names = {"l1": "L1-norm", "random": "random", "coevo-proxy": "proxy-only coevo"}
            gaps = "; ".join(
                f"{names[m]}: " + ", ".join(f"{dd} {v[m][dd]['margin_db']:+.2f} ({v[m][dd]['pooled_std_db']:.2f})"
                                        for dd in ("G_A", "G_B"))
                for m in ("l1", "random", "coevo-proxy") if m in v)
            verdict = ("beats L1-norm and random beyond the pooled seed std in both directions"
                       if v["beats_both_baselines"] else
                       "does not beat both L1-norm and random beyond the pooled seed std in both directions")
            lines.append(f"- {budget} of the MACs, coevo minus {gaps} (dB; pooled seed std in brackets): "
                         f"**{verdict}.**")
        lv = d.get("latency_verdict") or {}
        if lv:
            p = lv["psnr_latency_minus_mac"]
            lines.append(
                f"- Latency budget {st['latency']:g}: the latency-aware pair's measured speed-up is "
                f"{lv['coevo_latency_speedup']:.2f}x (target {lv['speedup_target']:.2f}x: "
                f"{'met' if lv['speedup_met'] else 'missed'}), the MAC-budgeted pair's {lv['coevo_mac_speedup']:.2f}x; "
                f"PSNR latency-aware minus MAC-budgeted: G_A {p['G_A']['margin_db']:+.2f}, G_B {p['G_B']['margin_db']:+.2f} "
                f"(pooled std {p['G_A']['pooled_std_db']:.2f} / {p['G_B']['pooled_std_db']:.2f}).")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


ARM_NAMES = {"coevo": "coevo (search)", "l1": "global L1", "random": "random", "uniform": "uniform (L1)",
             "uniform-scratch": "uniform, scratch", "coevo-scratch": "coevo widths, scratch",
             "coevo-supernet": "coevo on a supernet", "coevo-floor": "coevo, width floor",
             "l1-long": "global L1, +supernet steps", "uniform-long": "uniform (L1), +supernet steps",
             "l1-supernet": "global L1 cut from the supernet", "coevo-long": "coevo (search), +supernet steps",
             "coevo-supernet-rerank": "coevo on a supernet, re-ranked (60 steps)"}


def _speedup(v: Dict | None) -> str:
    """Mean speed-up of both directions against the teacher, or '-' where it was not timed."""
    return f"{0.5 * (v['G_A']['speedup'] + v['G_B']['speedup']):.2f}x" if v and "G_A" in v and "G_B" in v else "-"


def evidence_table() -> str:
    """Per task (evidence_snow.json, evidence_dense.json): the teacher's convergence, per recipe and budget
    every arm's PSNR to the teacher and to ground truth over its seeds, and coevo's paired comparisons."""
    import numpy as np

    runs = [(t, _load(f"evidence_{t}.json")) for t in ("snow", "dense")]
    runs = [(t, d) for t, d in runs if d is not None and not d.get("tiny")]
    if not runs:
        return "_no results yet: `python benchmarks/evidence.py --task snow --recipe distill`_"
    parts = []
    for task, d in runs:
        t = d["teacher"]
        stop = t.get("stopped_by")
        how = (f"converged after {t['steps']} steps (mean held-out PSNR moved {stop['change_db']:+.3f} dB over the "
               f"last {t['rule']['window_steps']} steps)" if isinstance(stop, dict) else
               f"capped at {t['steps']} steps, not converged by the rule" if t.get("status") == "done" else
               f"still training ({t.get('steps', '?')} steps)")
        final = t.get("final") or {}
        curve = (_load(f"evidence_{task}_teacher.json") or {}).get("curve") or []
        drift = ""
        if curve:
            peaks = {k: max(curve, key=lambda p: p[k]) for k in ("psnr_AB", "psnr_BA")}
            drift = (" Along the way A->B peaked at {:.2f} dB (step {}) and B->A at {:.2f} dB (step {})"
                     .format(peaks["psnr_AB"]["psnr_AB"], peaks["psnr_AB"]["step"],
                             peaks["psnr_BA"]["psnr_BA"], peaks["psnr_BA"]["step"]))
            window, last = t["rule"]["window_steps"], curve[-1]["step"]
            now = [p["psnr"] for p in curve if p["step"] > last - window]
            before = [p["psnr"] for p in curve if last - 2 * window < p["step"] <= last - window]
            if isinstance(stop, dict):
                drift += ": at a constant learning rate the two directions trade places while their mean holds."
            elif now and before:
                drift += (f"; the mean held-out PSNR over the last {window} steps was {sum(now) / len(now):.2f} dB "
                          f"against {sum(before) / len(before):.2f} dB over the {window} before.")
            else:
                drift += "."
        parts.append(
            f"**{task} task.** Teacher ({d['settings']['config']['model']['ngf']} filters, "
            f"{d['settings']['config']['model']['n_blocks']} blocks, 64 px): {how}; held-out training PSNR "
            f"{final.get('psnr_AB', float('nan')):.2f} / {final.get('psnr_BA', float('nan')):.2f} dB (A->B / B->A); "
            f"curve `benchmarks/results/evidence_{task}_teacher.png`.{drift} MACs: {d['settings']['macs_convention']} "
            f"convention at {d['settings']['macs_size']} px, every pair within +-{d['settings']['tolerance']:.0%} of "
            f"the budget. PSNR in dB, test split, mean of both directions, mean ± std over seeds; per-seed numbers "
            f"in `benchmarks/results/evidence_{task}.json`."
            + (f" Speed-up: {d['speed']['settings']}, against the teacher." if d.get("speed") else ""))
        cells = d["cells"]
        speed = (d.get("speed") or {}).get("cells", {})
        rows = ["| recipe | budget | arm | seeds | MAC ratio (A, B) | PSNR to teacher | PSNR to ground truth | same as L1 "
                "| speed-up (seed 0) |", "|---|---|---|---|---|---|---|---|---|"]
        for recipe in sorted({c["recipe"] for c in cells}):
            for budget in sorted({float(c["budget"]) for c in cells}, key=lambda b: (b != 0.05, b != 0.02, b)):
                for arm in ARM_NAMES:
                    g = [c for c in cells if c["recipe"] == recipe and float(c["budget"]) == budget and c["arm"] == arm]
                    if not g:
                        continue
                    pt = [0.5 * (c["psnr_teacher_AB"] + c["psnr_teacher_BA"]) for c in g]
                    pg = [0.5 * (c["psnr_gt_AB"] + c["psnr_gt_BA"]) for c in g]
                    ratios = [c["macs_ratio_A"] for c in g] + [c["macs_ratio_B"] for c in g]
                    sd = lambda v: f" ± {np.std(v, ddof=1):.2f}" if len(v) > 1 else ""  # noqa: E731
                    rows.append(f"| {recipe} | {budget:g} | {ARM_NAMES[arm]} | {len(g)} | "
                                f"{min(ratios):.4f}-{max(ratios):.4f} | {np.mean(pt):.2f}{sd(pt)} | "
                                f"{np.mean(pg):.2f}{sd(pg)} | {sum(bool(c['same_as_l1']) for c in g)} | "
                                f"{_speedup(speed.get(f'{recipe} {arm}_b{budget:g}_s0'))} |")
        parts.append("\n".join(rows))
        comp = d["summary"].get("psnr_teacher", {})
        if comp:
            lines = ["| comparison (PSNR to teacher) | seeds | mean difference [95% CI] | Holm p (t) | Wilcoxon p | "
                     "TOST Holm p | verdict |", "|---|---|---|---|---|---|---|"]
            for name, c in comp.items():
                lines.append(f"| {name} | {c['n']} | {c['mean']:+.2f} [{c['ci_low']:+.2f}, {c['ci_high']:+.2f}] | "
                             f"{c['p_t_holm']:.3g} | {c['p_wilcoxon']:.3g} | {c['p_tost_holm']:.3g} | **{c['verdict']}** |")
            parts.append("\n".join(lines))
        else:
            parts.append("_No comparison yet: each needs coevo and the other arm on at least 2 common seeds._")
        held_out = held_out_comparisons(cells)
        if held_out:
            parts.append(f"The same comparisons on held-out training images ({task}), the numbers a default may be "
                         "decided on: " + held_out)
        costs = evidence_cost_table(cells)
        if costs:
            parts.append(f"What each search costs ({task}): " + costs)
        predictors = narrowest_width_table(cells)
        if predictors:
            parts.append(f"What predicts a student's fidelity ({task}): " + predictors)
    return "\n\n".join(parts)


def held_out_comparisons(cells: List[Dict]) -> str:
    """The evidence benchmark's comparisons (coevo against every arm, coevo-floor and coevo-supernet against the
    baselines and coevo), paired by seed, on each pair's L1 to the teacher on the held-out TRAINING images
    (``val_l1_teacher``, mean of both directions, x 1000, negated so that higher is better), paired t and
    Wilcoxon, Holm over the table. Empty when no pair of arms shares 2 seeds."""
    from paired_stats import compare_all

    bases = {"coevo": ["l1", "random", "uniform", "uniform-scratch", "coevo-scratch"],
             "coevo-floor": ["l1", "random", "uniform", "coevo"],
             "coevo-supernet": ["l1", "random", "uniform", "coevo", "l1-long", "uniform-long", "l1-supernet"],
             "coevo-long": ["l1-long", "uniform-long"]}
    pairs = {}
    for recipe in sorted({c["recipe"] for c in cells}):
        for budget in sorted({float(c["budget"]) for c in cells}):
            value = {(c["arm"], c["seed"]): -500.0 * (c["val_l1_teacher_AB"] + c["val_l1_teacher_BA"]) for c in cells
                     if c["recipe"] == recipe and float(c["budget"]) == budget and "val_l1_teacher_AB" in c}
            for base, others in bases.items():
                for arm in others:
                    seeds = sorted(s for (a, s) in value if a == arm and (base, s) in value)
                    if len(seeds) >= 2:
                        pairs[f"{recipe} b{budget:g}: {base} - {arm}"] = ([value[(base, s)] for s in seeds],
                                                                          [value[(arm, s)] for s in seeds])
    if not pairs:
        return ""
    stats = compare_all(pairs, margin=1.0)
    lines = ["| comparison (held-out -L1 x 1000) | seeds | mean difference [95% CI] | Holm p (t) | Wilcoxon p | "
             "better/worse (Holm p < 0.05) |", "|---|---|---|---|---|---|"]
    for name, c in stats.items():
        side = ("better" if c["mean"] > 0 else "worse") if c["p_t_holm"] < 0.05 else "-"
        lines.append(f"| {name} | {c['n']} | {c['mean']:+.2f} [{c['ci_low']:+.2f}, {c['ci_high']:+.2f}] | "
                     f"{c['p_t_holm']:.3g} | {c['p_wilcoxon']:.3g} | {side} |")
    return "\n\n" + "\n".join(lines)


def evidence_cost_table(cells: List[Dict]) -> str:
    """Per recipe, budget and searching arm: median seconds of the search, per generation, of the budget's
    supernet (charged in full: a user runs one seed) and of the fine-tuning, and the whole job against the
    proxy search's (``coevo``) at the same budget. Empty when no cell recorded its costs."""
    import numpy as np

    rows, whole = [], {}
    for recipe in sorted({c["recipe"] for c in cells}):
        for budget in sorted({float(c["budget"]) for c in cells}):
            for arm in ("coevo", "coevo-floor", "coevo-supernet", "coevo-supernet-rerank"):
                g = [c for c in cells if c["recipe"] == recipe and float(c["budget"]) == budget and c["arm"] == arm
                     and "search_seconds" in c and "finetune_seconds" in c]
                if not g:
                    continue
                search = float(np.median([c["search_seconds"] for c in g]))
                per_gen = float(np.median([c["search_seconds"] / max(1, c["search_generations"] + 1) for c in g]))
                supernet = float(np.median([c.get("supernet_seconds", 0.0) for c in g]))
                ft = float(np.median([c["finetune_seconds"] for c in g]))
                total = supernet + search + ft
                whole[(recipe, budget, arm)] = total
                base = whole.get((recipe, budget, "coevo"))
                gen = "-" if arm == "coevo-supernet-rerank" else f"{per_gen:.1f}"  # its search s hold the re-rank
                rows.append(f"| {recipe} | {budget:g} | {ARM_NAMES[arm]} | {len(g)} | {search:.0f} | {gen} | "
                            f"{supernet:.0f} | {ft:.0f} | {total / 60:.1f} | "
                            f"{'-' if base is None or arm == 'coevo' else f'{total / base:.2f}x'} |")
    if not rows:
        return ""
    return ("median seconds per cell on this machine (one process per core, 1 thread); a generation is the "
            "search's seconds over its generations + 1 (generation 0 scores the first populations; the re-ranked "
            "search's seconds include its re-rank); the "
            "supernet is trained once per budget and charged in full to every whole job.\n\n"
            "| recipe | budget | arm | cells | search s | s per generation | supernet s | fine-tune s | "
            "whole job (min) | against the proxy search |\n|---|---|---|---|---|---|---|---|---|---|\n"
            + "\n".join(rows))


def narrowest_width_table(cells: List[Dict], min_cells: int = 8) -> str:
    """Spearman (95% bootstrap interval) between each cell's narrowest group width and its fidelity to the
    teacher, on the held-out TRAINING images (``val_l1_teacher``, negated: higher = better) and on the test
    split (``psnr_teacher``), per recipe, budget and direction, over every arm fine-tuned from the
    teacher's weights with the config's schedule (scratch and supernet arms start elsewhere, the long arms train
    longer). Empty when no budget has ``min_cells``."""
    from paired_stats import spearman_ci

    rows = []
    for recipe in sorted({c["recipe"] for c in cells}):
        for budget in sorted({float(c["budget"]) for c in cells}):
            g = [c for c in cells if c["recipe"] == recipe and float(c["budget"]) == budget
                 and c.get("init") == "teacher" and "finetune_epochs" not in c and "val_l1_teacher_AB" in c]
            if len(g) < min_cells:
                continue
            out = []
            for key, sign in (("val_l1_teacher", -1.0), ("psnr_teacher", 1.0)):
                for d, tag in (("G_A", "AB"), ("G_B", "BA")):
                    r = spearman_ci([min(c["widths"][d].values()) for c in g], [sign * c[f"{key}_{tag}"] for c in g])
                    out.append(f"{r['rho']:+.2f} [{r['ci95'][0]:+.2f}, {r['ci95'][1]:+.2f}]")
            arms = ", ".join(sorted({c["arm"] for c in g}))
            rows.append(f"| {recipe} | {budget:g} | {len(g)} ({arms}) | " + " | ".join(out) + " |")
    if not rows:
        return ""
    return ("Spearman between a student's narrowest group width and its fidelity to the teacher, over the "
            "cells fine-tuned from the teacher's weights by the standard schedule; held-out training images (L1, the number that "
            "decides) and test split (PSNR).\n\n"
            "| recipe | budget | cells (arms) | held-out G_A | held-out G_B | test G_A | test G_B |\n"
            "|---|---|---|---|---|---|---|\n" + "\n".join(rows))


FITNESS_GOAL = {"rho": 0.7, "fraction_of_ceiling": 0.8}  # issue 19: both directions, at 0.05 of the MACs


def fitness_table() -> str:
    """Per task, Spearman of each search fitness with the fine-tuned result, next to the noise ceiling
    (benchmarks/results/fitness_correlation_TASK/fitness_correlation.json, snow then dense)."""
    runs = [(t, _load(f"fitness_correlation_{t}/fitness_correlation.json")) for t in ("snow", "dense")]
    runs = [(t, d) for t, d in runs if d is not None]
    if not runs:
        return ("_no results yet: `python benchmarks/fitness_correlation.py` on the evidence benchmark's snow teacher "
                "(see benchmarks/README.md)_")
    return "\n\n".join(_fitness_task_table(t, d) for t, d in runs)


def _fitness_task_table(task: str, d: Dict) -> str:
    st = d["settings"]
    rows = ["| fitness | G_A Spearman [95% CI] | G_B Spearman [95% CI] | fraction of the ceiling (G_A, G_B) | "
            "ms per candidate | meets the goal |", "|---|---|---|---|---|---|"]
    names = {"narrowest width": "narrowest group width (no network run)",
             "trained": f"trained ({st.get('trained_steps')} steps from the teacher's weights)",
             "supernet, adapted": f"supernet, adapted ({st.get('adapt_steps')} steps from the supernet's weights)"}
    for kind, v in d["spearman"].items():
        rhos = [v[g]["fitness"]["rho"] for g in ("G_A", "G_B")]
        fr = [v[g].get("fraction_of_ceiling") for g in ("G_A", "G_B")]
        ok = all(r >= FITNESS_GOAL["rho"] for r in rhos) and all(f is not None and f >= FITNESS_GOAL[
            "fraction_of_ceiling"] for f in fr)
        cell = lambda g: "{:+.2f} [{:+.2f}, {:+.2f}]".format(v[g]["fitness"]["rho"], *v[g]["fitness"]["ci95"])  # noqa: E731
        rows.append(f"| {names.get(kind, kind)} | {cell('G_A')} | {cell('G_B')} | "
                    + ", ".join("-" if f is None else f"{f:.2f}" for f in fr)
                    + f" | {d['seconds_per_candidate'][kind] * 1000:.0f} | {'yes' if ok else 'no'} |")
    c = d["noise_ceiling"]
    ceiling = ", ".join("{} {:+.2f} [{:+.2f}, {:+.2f}]".format(g, c[g]["rho"], *c[g]["ci95"]) for g in c)
    sn = d.get("supernet") or {}
    trained = (f"{st['supernet_steps']} steps, trained here" if st.get("supernet_steps")
               else "the evidence benchmark's at this budget") + f", in {sn.get('train_seconds', 0) / 60:.1f} min"
    head = (f"**{task}**: {st['genomes']} genome pairs (the L1 pair and random pairs of varied shape) at "
            f"{st['macs_ratio']:g} of the MACs of the evidence benchmark's converged {task} teacher; each pair "
            f"fine-tuned with {st['seeds']} seeds by the `{st.get('recipe', 'gan')}` recipe "
            f"({st.get('finetune_epochs', '?')} epochs of at most {st.get('finetune_max_steps_per_epoch', '?')} steps), "
            f"from the {'supernet' if sn.get('finetune_from') == 'supernet' else 'teacher'}'s weights; end result: L1 "
            f"of the student's test outputs to the teacher's. Noise ceiling (seed 0 against seed 1): {ceiling}. "
            f"Supernet: {trained}. "
            f"Goal: Spearman >= {FITNESS_GOAL['rho']} in both directions and >= {FITNESS_GOAL['fraction_of_ceiling']} "
            f"of the ceiling. Machine: {_machine(d['machine'])}.")
    return head + "\n\n" + "\n".join(rows)


def paper_scale_table() -> str:
    """Measured cost of the pipeline at paper scale (ngf 64, 9 blocks, 256 px) and the projected full job."""
    runs = [(dev, _load(f"paper_scale_{dev}.json")) for dev in ("cpu", "cuda")]
    runs = [(dev, d) for dev, d in runs if d is not None]
    if not runs:
        return "_no results yet: `python benchmarks/paper_scale.py`_"
    b = runs[0][1]["projection_basis"]
    lines = [
        f"Projection: teacher {b['teacher_epochs']} epochs and fine-tuning {b['finetune_epochs']} epochs of "
        f"{b['steps_per_epoch']} steps (horse2zebra, batch 1); the paper's search, population {b['population']}, "
        f"{b['generations']} generations, {b['eval_images']} evaluation images per domain at 256 px.",
        "",
        "| machine | teacher step | fine-tune step | search generation (measured) | export + bench | "
        "projected: teacher training | search | fine-tuning |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for dev, d in runs:
        st, pr = d["settings"], d["projection_hours"]
        gen = d["search_generation_s"][-1]
        lines.append(
            f"| {_machine(d['machine'])} | {d['teacher_step_s']:.2f} s | {d['finetune_step_s']:.2f} s | "
            f"{gen:.0f} s (P={st['population']}, {st['eval_images']} images) | "
            f"{d['stage_seconds']['export'] + d['stage_seconds']['bench']:.0f} s | "
            f"{_hours(pr['teacher_training_h'])} | {_hours(pr['search_h'])} | {_hours(pr['finetune_h'])} |")
    lines += ["", "What a job costs by these measured rates (the search scales with population x images):", "",
              "| machine | settings | search | fine-tuning |", "|---|---|---|---|"]
    for dev, d in runs:
        for name, pre in d.get("presets", {}).items():
            lines.append(f"| {dev} | {name}: population {pre['population']}, {pre['generations']} generations, "
                         f"{pre['eval_images']} images; {pre['finetune_epochs']} fine-tuning epochs | "
                         f"{_hours(pre['search_h'])} | {_hours(pre['finetune_h'])} |")
    if not any(dev == "cuda" for dev, _ in runs):
        lines += ["", "GPU: not measured yet; `benchmarks/gpu_check.sh` runs `paper_scale.py --device cuda`."]
    return "\n".join(lines)


def _hours(h: float) -> str:
    if h >= 48:
        return f"{h / 24:.0f} days"
    return f"{h:.1f} h" if h >= 1 else f"{h * 60:.0f} min"


TABLES: Dict[str, Callable[[], str]] = {
    "demo": demo_table,
    "inference": inference_table,
    "search_cost": search_cost_table,
    "search_quality": search_quality_table,
    "frontier": frontier_table,
    "evidence": evidence_table,
    "fitness": fitness_table,
    "paper_scale": paper_scale_table,
}


def render(readme: str) -> str:
    for name, fn in TABLES.items():
        pattern = re.compile(rf"(<!-- results:{name} -->\n).*?(<!-- /results:{name} -->)", re.S)
        if pattern.search(readme):
            readme = pattern.sub(lambda m: m.group(1) + fn().rstrip() + "\n" + m.group(2), readme)
    return readme


def copy_demo(run_dir: Path) -> None:
    report = run_dir / "report.json"
    if not report.is_file():
        raise SystemExit(f"{report} not found: run `coevo demo --out {run_dir}` first")
    data = json.loads(report.read_text())
    stage = run_dir / "demo.json"
    if stage.is_file():
        data["wall_minutes"] = json.loads(stage.read_text()).get("wall_minutes")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "demo_report.json").write_text(json.dumps(data, indent=2) + "\n")
    for direction in ("AtoB", "BtoA"):
        grid = run_dir / f"grid_{direction}.png"
        if grid.is_file():
            shutil.copyfile(grid, RESULTS / f"demo_grid_{direction}.png")


def main(argv: List[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--readme", default=str(ROOT / "README.md"))
    p.add_argument("--demo", metavar="RUN_DIR", help="copy this demo run's report.json and grids into results/")
    p.add_argument("--check", action="store_true", help="only check that the README is up to date")
    args = p.parse_args(argv)
    if args.demo:
        copy_demo(Path(args.demo))
    path = Path(args.readme)
    old = path.read_text()
    new = render(old)
    if args.check:
        if new != old:
            print(f"{path} is out of date: run python benchmarks/tables.py", file=sys.stderr)
            return 1
        return 0
    path.write_text(new)
    print(f"updated {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
