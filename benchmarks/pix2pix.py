"""pix2pix on the built-in paired task: the issue's goal, measured per seed.

Runs the demo config (``configs/pix2pix.yaml``: a pix2pix teacher trained on the built-in paired set,
one-population search at 25% of its MACs, fine-tuning, export for the cpu target, bench) end to end for
each seed, as ``coevo demo --task pix2pix`` does (:func:`coevo.search.pix2pix.compress_pix2pix`). A seed
whose run finished is read, an interrupted one resumed. Then the teachers (eager PyTorch) and the
deployed artifacts of all seeds are timed again side by side, interleaved in one process at the bench
size, so every seed's speed-up comes from the same conditions.

    nice -n 5 python benchmarks/pix2pix.py --threads 1          # this CPU: about 8 minutes per seed

Writes ``pix2pix_cpu.json`` into --out: per seed the MAC ratio, teacher and student test PSNR to the
paired target, the gap, the student's PSNR to the teacher, the INT8 check and the deployed artifact's
speed-up against the eager teacher; the machine and its load. The goal (issue 20): within 1 dB of the
teacher's PSNR at <= 25% of its MACs, the deployed CPU artifact >= 3x faster than the eager teacher.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Dict, List, Sequence

ROOT = Path(__file__).resolve().parents[1]
GOAL = {"max_macs_ratio": 0.25, "max_psnr_gap_db": 1.0, "min_speedup_vs_teacher_eager": 3.0}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (and ONNX Runtime's when timing)")
    p.add_argument("--config", type=Path, default=ROOT / "configs" / "pix2pix.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for every seed (recorded in the results)")
    p.add_argument("--repeats", type=int, default=30, help="timed rounds of the final interleaved timing")
    p.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "work" / "pix2pix")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    return p.parse_args(argv)


def run_seed(args: argparse.Namespace, seed: int) -> Dict:
    """The demo pipeline for ``seed`` in ``work/seed_N`` (resumed when interrupted); its records."""
    from coevo.config import load_config
    from coevo.search.pix2pix import PIX2PIX_MARKER, compress_pix2pix

    out = args.work / f"seed_{seed}"
    if not (out / "compress.json").is_file():
        cfg = load_config(args.config, [*args.overrides, f"seed={seed}", f"threads={args.threads}"])
        t0 = time.perf_counter()
        compress_pix2pix(cfg, out, resume=(out / PIX2PIX_MARKER).is_file())
        print(f"seed {seed}: pipeline done in {(time.perf_counter() - t0) / 60:.1f} min", flush=True)
    else:
        print(f"seed {seed}: finished run read from {out}", flush=True)
    read = lambda name: json.loads((out / name).read_text())  # noqa: E731
    return {"dir": out, "compress": read("compress.json"), "report": read("report.json"),
            "finetune": read("finetune/finetune.json"), "teacher": read("teacher/summary.json"),
            "search": read("search/search.json")}


def time_all(runs: Dict[int, Dict], args: argparse.Namespace, size: int) -> Dict[int, Dict]:
    """Every seed's teacher (eager) and deployed student, interleaved in one benchmark_models call."""
    from coevo.deploy.bench import benchmark_models
    from coevo.models.io import load_generator
    from coevo.models.pix2pix import find_pix2pix_teacher, load_pix2pix_generator

    models, only, backends = {}, {}, ["eager"]
    for seed, run in runs.items():
        deployed = run["report"]["deployed"]
        models[f"teacher s{seed}"] = load_pix2pix_generator(find_pix2pix_teacher(run["compress"]["teacher"]["path"]).G)
        only[f"teacher s{seed}"] = ["eager"]
        models[f"coevo s{seed} deployed"] = load_generator(deployed["path"], trust=True)  # written by this script
        only[f"coevo s{seed} deployed"] = [deployed["backend"]]
        if deployed["backend"] not in backends:
            backends.append(deployed["backend"])
    results = benchmark_models(models, size=size, batch=1, threads=args.threads, backends=backends, warmup=5,
                               repeats=args.repeats, seed=0, only=only)
    by = {r.name: r for r in results}
    out = {}
    for seed, run in runs.items():
        t, s = by[f"teacher s{seed}"], by[f"coevo s{seed} deployed"]
        out[seed] = {"backend": s.backend, "teacher_eager_ms": t.latency_ms_median, "deployed_ms": s.latency_ms_median,
                     "speedup_vs_teacher_eager": t.latency_ms_median / s.latency_ms_median}
    return out


def summarise(seed: int, run: Dict, timing: Dict) -> Dict:
    rep, ft = run["report"], run["finetune"]
    gap = rep["teacher"]["psnr"] - rep["coevo"]["psnr"]
    entry = {
        "macs_ratio": rep["macs_ratio"], "teacher_macs": rep["teacher"]["macs"], "student_macs": rep["coevo"]["macs"],
        "macs_at": rep["bench_size"],
        "teacher_test_psnr_db": rep["teacher"]["psnr"], "student_test_psnr_db": rep["coevo"]["psnr"],
        "psnr_gap_db": gap, "teacher_test_ssim": rep["teacher"]["ssim"], "student_test_ssim": rep["coevo"]["ssim"],
        "student_psnr_to_teacher_db": rep["coevo"]["psnr_to_teacher"], "test_pairs": rep["test_images"],
        "reference_mode": rep["reference_mode"], "widths": rep["coevo"]["widths"],
        "deployed": {k: rep["deployed"][k] for k in ("format", "backend", "precision")}, "int8_check": rep["int8"],
        "speed": {**timing, "bench_size": rep["bench_size"], "batch": 1,
                  "in_run_bench": {k: rep["speed"][k] for k in ("teacher_eager_ms", "coevo_ms",
                                                                "speedup_vs_teacher_eager",
                                                                "speedup_vs_teacher_same_backend")}},
        "search": {"generations": run["search"]["generations"], "population": run["search"]["population"],
                   "metric": run["search"]["metric"]},
        "teacher_train_seconds": run["teacher"]["train_seconds"], "finetune_seconds": ft["seconds"],
        "pipeline_seconds": run["compress"]["seconds"],
    }
    entry["goal_met"] = {
        "macs_ratio": entry["macs_ratio"] <= GOAL["max_macs_ratio"] + 1e-9,
        "psnr_gap": gap <= GOAL["max_psnr_gap_db"],
        "speedup": timing["speedup_vs_teacher_eager"] >= GOAL["min_speedup_vs_teacher_eager"],
    }
    return entry


def main(argv: Sequence[str] | None = None) -> int:
    import torch

    from coevo.deploy.bench import machine_info
    from coevo.core.files import atomic_write_text

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    runs = {seed: run_seed(args, seed) for seed in args.seeds}
    size = next(iter(runs.values()))["report"]["bench_size"]
    timing = time_all(runs, args, size)
    seeds = {str(seed): summarise(seed, run, timing[seed]) for seed, run in runs.items()}
    gaps: List[float] = [s["psnr_gap_db"] for s in seeds.values()]
    speedups = [s["speed"]["speedup_vs_teacher_eager"] for s in seeds.values()]
    result = {
        "benchmark": "pix2pix on the built-in paired task (coevo demo --task pix2pix), per seed",
        "command": "nice -n 5 python benchmarks/pix2pix.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "config": str(args.config.relative_to(ROOT) if args.config.is_relative_to(ROOT) else args.config),
        "overrides": args.overrides, "goal": GOAL,
        "timing_note": ("teachers in eager PyTorch and the deployed students on their runtime, every seed's, "
                        f"interleaved round-robin in one process: 5 warm-up + {args.repeats} timed rounds, batch 1, "
                        f"{size}x{size}, {args.threads} thread(s); medians"),
        "machine": {**machine_info("cpu", args.threads), "cpu_count": os.cpu_count(), "python": platform.python_version(),
                    "load_average_at_end": list(os.getloadavg())},
        "seeds": seeds,
        "summary": {"max_psnr_gap_db": max(gaps), "min_speedup_vs_teacher_eager": min(speedups),
                    "max_macs_ratio": max(s["macs_ratio"] for s in seeds.values()),
                    "goal_met_every_seed": all(all(s["goal_met"].values()) for s in seeds.values())},
        "wall_minutes_this_invocation": round((time.perf_counter() - t0) / 60, 2),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "pix2pix_cpu.json"
    atomic_write_text(path, json.dumps(result, indent=2) + "\n")
    for seed, s in seeds.items():
        print(f"seed {seed}: MACs {s['macs_ratio']:.3f} of the teacher's; test PSNR teacher {s['teacher_test_psnr_db']:.2f} "
              f"dB, student {s['student_test_psnr_db']:.2f} dB (gap {s['psnr_gap_db']:+.2f} dB; "
              f"{s['student_psnr_to_teacher_db']:.2f} dB to the teacher); {s['deployed']['backend']} "
              f"{s['speed']['speedup_vs_teacher_eager']:.2f}x the eager teacher")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
