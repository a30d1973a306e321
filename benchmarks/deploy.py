"""Deployment speed: the compressed generator on its fastest verified runtime, against the teacher in eager PyTorch.

Two teacher/compressed pairs, each at 256x256, batch 1 (CUDA: batch 1 and 16):

* ``demo``: the demo's G_A pair. With a finished demo run (``--demo``, default
  ``runs/demo``) the trained teacher and compressed generators, calibrated and
  checked on the run's own data. Without one, a stand-in of the same shapes: a
  random-init ngf-32, 6-block teacher and the demo's searched widths
  (``benchmarks/results/demo_report.json``); latency depends on shapes only, but its
  INT8 quality numbers then describe random weights, and the JSON says so.
* ``full``: the full CycleGAN generator (ngf 64, 9 blocks, random N(0, 0.02) weights)
  against its L1-pruned copy at 0.25 of the MACs, widths in multiples of 8.

CPU: the compressed generator goes through ``coevo.deploy.targets.export_for_target(target="cpu")``
(ONNX, INT8 calibrated on training images, its quality check), then teacher and
compressed are timed interleaved on eager PyTorch, ONNX Runtime fp32 and INT8 (the
teacher's INT8 calibrated on the benchmark input: timing only), with the deployed file
timed as it is. An ONNX Runtime profile of the deployed model says where its time goes.
CUDA: ``target="cuda"`` (a float16 torch.export program and its parity on the GPU), timed
on eager fp32, ``cuda-fp16-graph`` and ``cuda-fp16-compiled``.

    python benchmarks/deploy.py --threads 1                  # CPU, ~5 min on the 2-core machine
    python benchmarks/deploy.py --quick                      # smoke run, tiny models, ~1 min
    python benchmarks/deploy.py --device cuda                # GPU (benchmarks/gpu_check.sh)

Writes ``deploy_{device}.json`` into --out and prints a table and the goal lines.
Goals: CPU, the deployed compressed model >= 10x faster than the teacher in
eager PyTorch; GPU, >= 10x at batch 1 against the teacher's eager fp32 and >= 1.5x
against the teacher on the same fast runtime.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch

from coevo import load_generator
from coevo.deploy.bench import BenchResult, benchmark_models, format_table, machine_info, save_results
from coevo.deploy.targets import DeployData, export_for_target, find_deploy_data
from coevo.models import GeneratorArch, ResnetGenerator
from coevo.prune import count_macs, l1_genome_for_macs, slim

from _common import random_generator  # the seeded stand-in the inference benchmark uses too

REPO = Path(__file__).resolve().parents[1]
CPU_GOAL, GPU_GOAL, GPU_SAME_RUNTIME_GOAL = 10.0, 10.0, 1.5


@dataclass
class Pair:
    name: str
    teacher: ResnetGenerator
    student: ResnetGenerator
    data: DeployData
    trained: bool
    source: str


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--demo", default=str(REPO / "runs" / "demo"), help="a finished demo run (default runs/demo)")
    p.add_argument("--quick", action="store_true", help="smoke run: tiny stand-ins at 64x64, 3 rounds")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    p.add_argument("--work", default=str(REPO / "benchmarks" / "work" / "deploy"),
                   help="exports and the 256-px data of the stand-ins (not in git)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's default)")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds (default 15 CPU, 50 CUDA, 3 quick)")
    p.add_argument("--warmup", type=int, default=None, help="untimed rounds (default 2 CPU, 10 CUDA, 1 quick)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- pairs
def synthetic_data(work: Path, size: int) -> Path:
    """The built-in task rendered at ``size`` px (32 training, 8 test images per domain), for stand-ins."""
    from coevo.data.synthetic import make_synthetic_dataset

    return make_synthetic_dataset(work / f"synthetic_{size}", size=size, n_train=32, n_test=8, seed=0)


def demo_pair(demo: Path, work: Path, seed: int, size: int) -> Pair:
    if (demo / "finetune" / "G_A.pt").is_file() and (demo / "teacher").is_dir():
        from coevo.models.teacher import find_teacher

        teacher_dir = demo / "teacher"
        teacher = (load_generator(teacher_dir / "G_A.pt") if (teacher_dir / "G_A.pt").is_file()
                   else load_generator(find_teacher(teacher_dir).G_A))
        return Pair("demo", teacher, load_generator(demo / "finetune" / "G_A.pt"),
                    find_deploy_data(demo / "data", "G_A"), True, f"trained demo run {demo}")
    report = json.loads((REPO / "benchmarks" / "results" / "demo_report.json").read_text())
    widths = report["directions"]["AtoB"]["coevo"]["widths"]
    teacher = random_generator(GeneratorArch.full(ngf=32, n_blocks=6), seed)
    student = random_generator(GeneratorArch(ngf=32, n_blocks=6, widths=widths), seed + 1)
    return Pair("demo", teacher, student, find_deploy_data(synthetic_data(work, size), "G_A"), False,
                "stand-in: random weights, the demo's shapes (no finished demo run found)")


def full_pair(work: Path, seed: int, size: int, quick: bool) -> Pair:
    ngf, blocks = (16, 3) if quick else (64, 9)
    teacher = random_generator(GeneratorArch.full(ngf=ngf, n_blocks=blocks), seed)
    student = slim(teacher, l1_genome_for_macs(teacher, 0.25, size, channel_multiple=8)).eval()
    return Pair("full", teacher, student, find_deploy_data(synthetic_data(work, size), "G_A"), False,
                f"random N(0, 0.02) ngf-{ngf} {blocks}-block teacher and its L1 slim at 0.25 of the MACs")


# ----------------------------------------------------------------------------- profiles
def ort_profile(path: Path, size: int, threads: Optional[int], runs: int = 5) -> Dict[str, Any]:
    """Where ONNX Runtime spends the time of one forward: ms per call by operator type, largest first."""
    from coevo.deploy.exported import ort_session

    with tempfile.TemporaryDirectory() as tmp:
        session = ort_session(path, threads, profile_prefix=str(Path(tmp) / "ort"))
        x = (torch.rand(1, 3, size, size) * 2 - 1).numpy()
        name = session.get_inputs()[0].name
        session.run(None, {name: x})  # warm-up, also profiled: dropped below by counting the last runs only
        for _ in range(runs):
            session.run(None, {name: x})
        events = json.loads(Path(session.end_profiling()).read_text())
    node_events = [e for e in events if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time")]
    per_type: Dict[str, float] = defaultdict(float)
    for e in node_events:
        per_type[e.get("args", {}).get("op_name", "?")] += e["dur"] / 1e3
    total = sum(per_type.values())
    calls = runs + 1
    return {"ms_per_call": {k: round(v / calls, 3) for k, v in sorted(per_type.items(), key=lambda kv: -kv[1])},
            "share": {k: round(v / total, 3) for k, v in sorted(per_type.items(), key=lambda kv: -kv[1])},
            "total_kernel_ms_per_call": round(total / calls, 2), "runs": calls}


def torch_profile(model: torch.nn.Module, size: int, runs: int = 3) -> Dict[str, Any]:
    """Where eager PyTorch spends the time of one forward: ms per call by ATen operator, top 8."""
    from torch.profiler import ProfilerActivity, profile

    x = torch.rand(1, 3, size, size) * 2 - 1
    with torch.inference_mode():
        model(x)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(runs):
                model(x)
    rows = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:8]
    total = sum(e.self_cpu_time_total for e in prof.key_averages())
    return {"ms_per_call": {e.key: round(e.self_cpu_time_total / 1e3 / runs, 2) for e in rows},
            "share": {e.key: round(e.self_cpu_time_total / total, 3) for e in rows}}


# ----------------------------------------------------------------------------- per device
def run_cpu(pair: Pair, work: Path, args: argparse.Namespace, size: int, repeats: int, warmup: int) -> Dict[str, Any]:
    out = work / f"{pair.name}_cpu"
    report = export_for_target(pair.student, out, "G_A", target="cpu", data=pair.data, formats=("onnx",),
                               check_size=96 if not args.quick else 48, threads=args.threads)
    deploy = report["deploy"]
    deployed = deploy["deployed"]
    models = {"teacher": pair.teacher, "coevo": pair.student, "coevo deployed": Path(deployed["path"])}
    only = {"coevo": ["eager", "onnxruntime"], "coevo deployed": [deployed["backend"]]}
    int8 = deploy.get("int8") or {}
    if int8.get("path") and not int8["ok"]:  # what INT8 would give, had it passed its check
        models["coevo int8, not deployed"] = Path(int8["path"])
        only["coevo int8, not deployed"] = ["onnxruntime-int8"]
    results = benchmark_models(models, size=size, batch=1, threads=args.threads, device="cpu",
                               backends=("eager", "onnxruntime", "onnxruntime-int8"), warmup=warmup,
                               repeats=repeats, seed=args.seed, only=only)
    threads = args.threads or torch.get_num_threads()
    profile = {"deployed_onnxruntime": ort_profile(Path(deployed["path"]), size, threads),
               "coevo_onnxruntime_fp32": ort_profile(Path(report["onnx"]["path"]), size, threads),
               "teacher_eager": torch_profile(pair.teacher, size)}
    return {"deploy": deploy, "results": results, "profile": profile}


def run_cuda(pair: Pair, work: Path, args: argparse.Namespace, size: int, repeats: int, warmup: int) -> Dict[str, Any]:
    out = work / f"{pair.name}_cuda"
    report = export_for_target(pair.student, out, "G_A", target="cuda", data=pair.data,
                               formats=("torch-export",), check_size=96 if not args.quick else 48)
    deploy = report["deploy"]
    deployed = Path(deploy["deployed"]["path"])
    results: List[BenchResult] = []
    for batch in (1, 16):  # compiling costs seconds per model and shape: batch 1 only
        fast = ("cuda-fp16-graph", "cuda-fp16-compiled") if batch == 1 else ("cuda-fp16-graph",)
        results += benchmark_models(
            {"teacher": pair.teacher, "coevo": pair.student, "coevo deployed": deployed}, size=size, batch=batch,
            device="cuda", backends=("eager", *fast), warmup=warmup,
            repeats=repeats, seed=args.seed,
            only={"coevo": ["eager", "cuda-fp16-compiled"], "coevo deployed": [deploy["deployed"]["backend"]]})
    return {"deploy": deploy, "results": results}


# ----------------------------------------------------------------------------- goals
def goal_lines(pair: str, results: Sequence[BenchResult], device: str) -> List[str]:
    lines = []
    for batch in sorted({r.batch for r in results}):
        rows = [r for r in results if r.batch == batch and r.name not in ("teacher", "coevo int8, not deployed")]
        if not rows:
            continue
        best = min(rows, key=lambda r: r.latency_ms_median)
        goal = CPU_GOAL if device == "cpu" else GPU_GOAL
        vs_eager = best.speedup_vs_first_eager or 0.0
        line = (f"- {pair}, batch {batch}: fastest compressed = {best.name} on {best.backend}, "
                f"{best.latency_ms_median:.2f} ms: {vs_eager:.2f}x vs the teacher in eager "
                f"({'meets' if vs_eager >= goal else 'misses'} the {goal:g}x goal), "
                f"{best.speedup_vs_first:.2f}x vs the teacher on {best.backend}")
        if device == "cuda" and batch == 1:
            line += (f" ({'meets' if best.speedup_vs_first >= GPU_SAME_RUNTIME_GOAL else 'misses'} the "
                     f"{GPU_SAME_RUNTIME_GOAL:g}x same-runtime goal)")
        lines.append(line)
    return lines


def _int8_line(pair: Pair, deploy: Dict[str, Any], results: Sequence[BenchResult]) -> str:
    int8 = deploy.get("int8") or {}
    if not int8 or int8.get("skipped"):
        return f"- {pair.name}: INT8 not built ({int8.get('skipped')})"
    q = int8["quality"]
    gt = "n/a" if q["gt_drop_db"] is None else f"{q['gt_drop_db']:+.3f} dB"
    line = (f"- {pair.name}: INT8 {q['psnr_vs_fp32_db']:.2f} dB to fp32 (worst image {q['psnr_vs_fp32_min_db']:.2f}), "
            f"ground-truth PSNR drop {gt} on {q['n_images']} test images; "
            f"{'deployed' if int8['ok'] else 'NOT deployed: ' + '; '.join(int8['reasons'])}"
            f"{'' if pair.trained else ' (random weights: quality numbers describe a stand-in)'}")
    unused = [r for r in results if r.name == "coevo int8, not deployed"]
    if unused:
        line += (f"; had it passed: {unused[0].latency_ms_median:.2f} ms, "
                 f"{unused[0].speedup_vs_first_eager:.2f}x vs the teacher in eager")
    return line


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        print("deploy.py: --device cuda but torch sees no CUDA device", file=sys.stderr)
        return 2
    size = 64 if args.quick else 256
    repeats = args.repeats or (3 if args.quick else 50 if cuda else 15)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 10 if cuda else 2)
    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    if args.threads:
        torch.set_num_threads(args.threads)

    t0 = time.time()
    pairs = [demo_pair(Path(args.demo), work, args.seed, size), full_pair(work, args.seed, size, args.quick)]
    if args.quick:
        pairs[0] = Pair("demo", random_generator(GeneratorArch.full(ngf=8, n_blocks=2), args.seed),
                        random_generator(GeneratorArch.full(ngf=4, n_blocks=2), args.seed + 1),
                        find_deploy_data(synthetic_data(work, size), "G_A"), False, "quick stand-in")
    per_pair: Dict[str, Any] = {}
    all_results: List[BenchResult] = []
    lines: List[str] = []
    for pair in pairs:
        run = (run_cuda if cuda else run_cpu)(pair, work, args, size, repeats, warmup)
        lines += goal_lines(pair.name, run["results"], args.device)
        if not cuda:
            lines.append(_int8_line(pair, run["deploy"], run["results"]))
        for r in run["results"]:
            r.name = f"{pair.name}: {r.name}"
        all_results += run["results"]
        macs = {k: count_macs(m.arch, size) for k, m in (("teacher", pair.teacher), ("coevo", pair.student))}
        per_pair[pair.name] = {"source": pair.source, "trained": pair.trained, "deploy": run["deploy"],
                               "macs_ratio": macs["coevo"] / macs["teacher"], "widths": pair.student.arch.widths,
                               "profile": run.get("profile"), "results": [asdict(r) for r in run["results"]]}
    elapsed = time.time() - t0

    settings = {"script": "benchmarks/deploy.py", "quick": args.quick, "size": size, "repeats": repeats,
                "warmup": warmup, "seconds": round(elapsed, 1), "goals": lines,
                "note": "teacher INT8 rows are calibrated on the benchmark input (timing only); the deployed "
                        "file is the one coevo.deploy.targets checked on real images"}
    path = save_results(all_results, out / f"deploy_{args.device}{'_quick' if args.quick else ''}.json",
                        machine_info(args.device, args.threads), extra={"benchmark": settings, "pairs": per_pair})
    info = machine_info(args.device, args.threads)
    print(f"\n## Deployment speed: {info['device_name']}, torch {info['torch']}, onnxruntime {info['onnxruntime']}\n")
    for pair in pairs:  # one table per pair: its teacher is the baseline of every ratio in it
        print(f"### {pair.name}: {pair.source}\n")
        print(format_table([r for r in all_results if r.name.startswith(f"{pair.name}: ")]))
    print("\n".join(lines))
    print(f"\nwrote {path} in {elapsed / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
