"""The headline measurement: does cutting MACs cut latency by as much?

The full CycleGAN generator (ngf 64, 9 residual blocks, 256x256) is timed side by
side with L1-pruned versions of itself at 0.5, 0.25 and 0.1 of its MACs, each built
twice: with any channel count (``channel_multiple=1``) and with every width a
multiple of 8 (the vector width CPU and GPU kernels like). Backends: eager PyTorch,
TorchScript (frozen + optimize_for_inference) and ONNX Runtime on CPU; eager and
TorchScript (and ONNX Runtime if it has a CUDA provider) at batch 1, 4, 16 on CUDA.

Weights are random with a fixed seed: latency does not depend on weight values
(no data-dependent control flow, no sparsity), only on the layer shapes.

    python benchmarks/inference.py                      # CPU, ~5-10 min on 2 cores
    python benchmarks/inference.py --quick              # tiny smoke run, ~1 min
    python benchmarks/inference.py --device cuda --out results/

Writes ``inference_{device}.json`` (results + machine info) and ``inference_{device}.png``
(latency against MACs, with the ideal line "speedup = MAC reduction") into --out, and
prints a Markdown table.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Dict, List, Sequence

import torch

from coevo.deploy.bench import BenchResult, benchmark_models, format_table, machine_info, save_results
from coevo.models import GeneratorArch, ResnetGenerator
from coevo.prune import count_macs, l1_genome_for_macs, slim

from _common import random_generator

BUDGETS = (0.5, 0.25, 0.1)
MULTIPLES = (1, 8)
GOAL_BUDGET, GOAL_EFFICIENCY = 0.25, 0.9  # eager speedup >= 0.9 x MAC reduction at 0.25 of the MACs


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--quick", action="store_true", help="tiny smoke run: ngf 16, 3 blocks, 64x64, 3 repeats")
    p.add_argument("--out", default="benchmarks/results", help="output folder (default benchmarks/results)")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds (default 15 CPU, 50 CUDA, 3 quick)")
    p.add_argument("--warmup", type=int, default=None, help="untimed rounds (default 2 CPU, 10 CUDA, 1 quick)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def build_models(ngf: int, n_blocks: int, size: int, seed: int) -> Dict[str, ResnetGenerator]:
    full = random_generator(GeneratorArch.full(ngf, n_blocks), seed)
    models = {"full": full}
    for budget in BUDGETS:
        for multiple in MULTIPLES:
            genome = l1_genome_for_macs(full, budget, size, channel_multiple=multiple)
            models[f"L1 {budget:g} m{multiple}"] = slim(full, genome).eval()
    return models


def goal_lines(results: Sequence[BenchResult]) -> List[str]:
    """Speedup against MAC reduction at the goal budget, per backend and width multiple."""
    first = {}
    lines = []
    for r in results:
        first.setdefault((r.backend, r.batch), r)
        if not r.name.startswith(f"L1 {GOAL_BUDGET:g} "):
            continue
        base = first[(r.backend, r.batch)]
        reduction = base.macs_published / r.macs_published
        eff = r.speedup_vs_first / reduction
        verdict = "meets" if eff >= GOAL_EFFICIENCY else "misses"
        lines.append(f"- {r.name}, {r.backend}, batch {r.batch}: speedup {r.speedup_vs_first:.2f}x for a "
                     f"{reduction:.2f}x MAC reduction = {eff:.2f} of ideal ({verdict} the {GOAL_EFFICIENCY:g} goal"
                     f"{' that applies to eager' if r.backend != 'eager' else ''})")
    return lines


def plot(results: Sequence[BenchResult], path: Path) -> Path:
    """Median latency against MACs (log-log), one panel per batch size; dashed: latency / MAC reduction."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullLocator

    batches = sorted({r.batch for r in results})
    fig = Figure(figsize=(6.0 * len(batches), 4.8))
    FigureCanvasAgg(fig)
    colors = {"eager": "tab:blue", "torchscript": "tab:orange", "onnxruntime": "tab:green"}
    for i, batch in enumerate(batches):
        ax = fig.add_subplot(1, len(batches), i + 1)
        rows = [r for r in results if r.batch == batch]
        for backend in dict.fromkeys(r.backend for r in rows):
            own = [r for r in rows if r.backend == backend]
            full = own[0]
            color = colors.get(backend, None)
            macs = sorted({r.macs_published for r in own})
            ax.plot([m / 1e9 for m in macs], [full.latency_ms_median * m / full.macs_published for m in macs],
                    "--", color=color, alpha=0.5, linewidth=1)
            for marker, pred in (("o", lambda r: r.name == "full" or r.name.endswith("m1")),
                                 ("s", lambda r: r.name.endswith("m8"))):
                pts = [r for r in own if pred(r)]
                ax.plot([r.macs_published / 1e9 for r in pts], [r.latency_ms_median for r in pts], marker,
                        color=color, linestyle="none",
                        label=f"{backend}, {'any width' if marker == 'o' else 'widths % 8'}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        # m8 widths land within a few % of m1's MACs: label only one of each pair
        ticks = sorted({r.macs_published / 1e9 for r in rows if not r.name.endswith("m8")})
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticks(ticks)
        ax.set_xticklabels([f"{t:.3g}" for t in ticks], rotation=45, fontsize=7)
        ax.set_xlabel("GMACs per image (published convention)")
        ax.set_ylabel("median latency per call, ms")
        ax.set_title(f"{rows[0].device}, batch {batch}, {rows[0].size}x{rows[0].size}, {rows[0].threads} threads; "
                     "dashed: ideal", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(str(path), dpi=120)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        print("inference.py: --device cuda but torch sees no CUDA device", file=sys.stderr)
        return 2
    ngf, n_blocks, size = (16, 3, 64) if args.quick else (64, 9, 256)
    repeats = args.repeats or (3 if args.quick else 50 if cuda else 15)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 10 if cuda else 2)
    backends = ("eager", "torchscript", "onnxruntime")
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        print("onnxruntime is not installed: timing eager and TorchScript only", file=sys.stderr)
        backends = backends[:2]
    batches = (1, 4, 16) if cuda else (1,)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    t0 = time.time()
    models = build_models(ngf, n_blocks, size, args.seed)
    results: List[BenchResult] = []
    for batch in batches:
        results += benchmark_models(models, size=size, batch=batch, threads=args.threads, device=args.device,
                                    backends=backends, warmup=warmup, repeats=repeats, seed=args.seed)
    elapsed = time.time() - t0

    settings = {
        "script": "benchmarks/inference.py", "quick": args.quick, "ngf": ngf, "n_blocks": n_blocks, "size": size,
        "budgets": list(BUDGETS), "channel_multiples": list(MULTIPLES), "repeats": repeats, "warmup": warmup,
        "batches": list(batches), "seconds": round(elapsed, 1),
        "weights": f"random N(0, 0.02), seed {args.seed}: latency depends on shapes, not weight values",
        "widths": {name: m.arch.widths for name, m in models.items()},
        "macs_ratio": {name: count_macs(m.arch, size) / count_macs(models["full"].arch, size)
                       for name, m in models.items()},
    }
    json_path = save_results(results, out / f"inference_{args.device}.json", machine_info(args.device, args.threads),
                             extra={"benchmark": settings})
    png_path = plot(results, out / f"inference_{args.device}.png")

    info = machine_info(args.device, args.threads)
    print(f"\n## Inference latency: {info['device_name']}, torch {info['torch']}, "
          f"onnxruntime {info['onnxruntime']}\n")
    print(f"Full generator ngf {ngf}, {n_blocks} blocks vs L1-pruned copies (m1: any width, m8: widths multiple "
          f"of 8). {warmup} warm-up + {repeats} timed rounds, all models interleaved. Speedup and MAC reduction "
          "are relative to the full model on the same backend.\n")
    print(format_table(results))
    print(f"Goal: eager speedup >= {GOAL_EFFICIENCY:g} x MAC reduction at {GOAL_BUDGET:g} of the MACs")
    print("\n".join(goal_lines(results)))
    print(f"\nwrote {json_path} and {png_path} in {elapsed / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
