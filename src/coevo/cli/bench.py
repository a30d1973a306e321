"""`coevo bench`: latency of generators side by side (interleaved), as a table, JSON and a plot."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..config import BenchConfig


def add_parser(sub) -> None:
    d = BenchConfig()
    p = sub.add_parser(
        "bench",
        help="time generators side by side on CPU or CUDA",
        description="Time every --model on every --backend, interleaved round-robin after warm-up; print a "
                    "table and write bench.json and bench.png into --out. The first --model is the baseline "
                    "of the speedup column.",
    )
    p.add_argument("--model", action="append", required=True, metavar="FILE",
                   help="generator file (repeatable); NAME=FILE sets the name shown (default: the file name)")
    p.add_argument("--size", type=int, default=d.size, help=f"square input size (default {d.size})")
    p.add_argument("--batch", type=int, default=d.batch, help=f"batch size (default {d.batch})")
    p.add_argument("--threads", type=int, default=d.threads or None,
                   help="torch and ONNX Runtime intra-op threads (default: their own default)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--backend", default="eager",
                   help="comma-separated subset of eager,torchscript,onnxruntime (default eager); "
                        ".ts and .onnx files always run on their own runtime")
    p.add_argument("--warmup", type=int, default=d.warmup, help=f"untimed rounds first (default {d.warmup})")
    p.add_argument("--repeats", type=int, default=20, help="timed rounds (default 20)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random input (default 0)")
    p.add_argument("--out", default="bench_results", help="folder for bench.json and bench.png "
                                                          "(default ./bench_results; files in it are replaced)")
    p.set_defaults(func=run)


def _named(specs):
    models = {}
    for spec in specs:
        name, sep, file = spec.partition("=")
        if not sep or not name:
            name, file = Path(spec).name, spec
        if name in models:
            name = f"{name} ({len(models) + 1})"
        models[name] = Path(file)
    return models


def run(args: argparse.Namespace) -> int:
    import sys

    from ..bench import benchmark_models, check_settings, format_table, machine_info, plot_results, save_results
    from ..runs import writable_out_dir

    backends = [b.strip() for b in args.backend.split(",") if b.strip()]
    check_settings(size=args.size, batch=args.batch, warmup=args.warmup, repeats=args.repeats, backends=backends)
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            print("coevo bench: error: --device cuda but torch sees no CUDA device; use --device cpu",
                  file=sys.stderr)
            return 2
    models = _named(args.model)
    missing = [str(p) for p in models.values() if not p.exists()]
    if missing:
        raise FileNotFoundError(f"model file(s) not found: {', '.join(missing)}")
    out = writable_out_dir(args.out, command="bench")  # before the timing, not after it
    results = benchmark_models(models, size=args.size, batch=args.batch, threads=args.threads,
                               device=args.device, backends=backends, warmup=args.warmup,
                               repeats=args.repeats, seed=args.seed)
    save_results(results, out / "bench.json", machine_info(args.device, args.threads))
    plot_results(results, out / "bench.png")
    print(format_table(results))
    print(f"wrote {out / 'bench.json'} and {out / 'bench.png'}")
    return 0
