"""`coevo bench`: latency of generators side by side (interleaved), as a table, JSON and a plot."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..config import BenchConfig
from .options import add_trust_model


# coevo.deploy.backends.BACKENDS, spelled out: importing coevo.deploy.backends loads torch, and `coevo --help` must
# not (tests/test_hostile_runs.py checks that the two agree)
BACKENDS = ("eager", "torchscript", "torch-export", "onnxruntime", "onnxruntime-int8", "cuda-fp16-graph",
            "cuda-fp16-compiled", "cuda-bf16-graph", "cuda-bf16-compiled")


def add_parser(sub) -> None:
    d = BenchConfig()
    p = sub.add_parser(
        "bench",
        help="time generators side by side on CPU or CUDA, on several runtimes",
        description="Time every --model on every --backend, interleaved round-robin after warm-up; print a "
                    "table and write bench.json and bench.png into --out. The first --model (e.g. the teacher) is "
                    "the baseline: each row gets its speed-up against it on the same backend and against it in "
                    "eager PyTorch.",
    )
    p.add_argument("--latency-table", action="store_true",
                   help="instead of timing models: measure the per-layer latency table of the (first) --model's "
                        "architecture on --target with --threads (a few minutes, once per machine) for "
                        "`search.compute=latency`; saved in the search's cache and in --out")
    p.add_argument("--target", choices=["cpu", "onnxruntime", "cuda"], default=None,
                   help="--latency-table: where the table is measured: cpu (torch eager), onnxruntime (ONNX "
                        "Runtime on the CPU, fp32) or cuda (default: --device)")
    p.add_argument("--model", action="append", required=True, metavar="FILE",
                   help="generator file (repeatable); NAME=FILE sets the name shown (default: the file name)")
    p.add_argument("--size", type=int, default=d.size, help=f"square input size (default {d.size})")
    p.add_argument("--batch", type=int, default=d.batch, help=f"batch size (default {d.batch})")
    p.add_argument("--threads", type=int, default=d.threads or None,
                   help="torch and ONNX Runtime intra-op threads (default: their own default)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--backend", default="eager",
                   help=f"comma-separated subset of {','.join(BACKENDS)} (default eager). Exported files run on "
                        "the backends their format allows (.onnx: onnxruntime[-int8], .pt2: torch-export and the "
                        "cuda-* ones, .ts: torchscript); cuda-* need --device cuda, onnxruntime-int8 the CPU")
    p.add_argument("--warmup", type=int, default=d.warmup, help=f"untimed rounds first (default {d.warmup})")
    p.add_argument("--repeats", type=int, default=20, help="timed rounds (default 20)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random input (default 0)")
    p.add_argument("--out", default="bench_results", help="folder for bench.json and bench.png "
                                                          "(default ./bench_results; files in it are replaced)")
    add_trust_model(p)
    p.set_defaults(func=run)


def _label(path: Path, others) -> str:
    """The shortest tail of ``path`` (``G_A.pt``, ``finetune/G_A.pt``, ...) that no other path shares."""
    parts = path.parts
    for n in range(1, len(parts) + 1):
        tail = "/".join(parts[-n:])
        if not any(o != path and "/".join(o.parts[-n:]) == tail for o in others):
            return tail
    return str(path)


def _named(specs):
    """name -> file of the --model arguments: NAME=FILE, or the file's name, with as many of its folders
    as it takes to tell two files of one name apart (``teacher/G_A.pt`` and ``finetune/G_A.pt``)."""
    pairs = []
    for spec in specs:
        name, sep, file = spec.partition("=")
        pairs.append((name, Path(file)) if sep and name else (None, Path(spec)))
    unnamed = [p for name, p in pairs if name is None]
    models = {}
    for name, path in pairs:
        name = name or _label(path, unnamed)
        if name in models:
            name = f"{name} ({len(models) + 1})"  # the same file given twice
        models[name] = path
    return models


def run_latency_table(args: argparse.Namespace) -> int:
    from ..core.files import atomic_write_text
    from ..deploy.latency import cache_path, measure_table
    from ..models import load_generator
    from ..core.runs import writable_out_dir

    target = args.target or ("cuda" if args.device.startswith("cuda") else "cpu")
    if Path(args.model[0]).suffix.lower() == ".onnx":  # decided from the name, before loading
        from ..errors import CheckpointError

        raise CheckpointError(f"{args.model[0]} is an ONNX export; a latency table needs the generator's "
                              "PyTorch weights (.pt, .safetensors, .pt2 or latest_net_G_*.pth)")
    model = load_generator(args.model[0])  # any other file is rebuilt as a generator
    from ..search.context import refuse_unet

    refuse_unet(model.arch, "a latency table (coevo bench --latency-table)",
                "time the U-Net itself with coevo bench --model FILE")
    out = writable_out_dir(args.out, "bench", inputs={"--model file": args.model[0]})
    threads = args.threads or 1
    print(f"measuring the latency table of {args.model[0]} on {target} with {threads} thread(s) at "
          f"{args.size}px ...", flush=True)
    table = measure_table(model.arch, size=args.size, target=target, threads=threads, batch=args.batch)
    cached = cache_path(model.arch, args.size, target, threads, args.batch)
    table.save(cached)
    atomic_write_text(out / cached.name, cached.read_text())
    print(f"teacher {table.predict(model.arch):.1f} ms; table: {out / cached.name} "
          f"(and {cached}, where `search.compute=latency` finds it with search.latency_threads={threads}, "
          f"latency_size={args.size}, latency_target={target})")
    return 0


def run(args: argparse.Namespace) -> int:
    import sys

    if args.latency_table:
        return run_latency_table(args)

    from ..deploy.backends import unavailable_reason
    from ..deploy.bench import benchmark_models, check_settings, format_table, plot_results, save_results
    from ..deploy.timing import machine_info
    from ..models.io import load_generator
    from ..core.runs import writable_out_dir

    from ..config import check_device_available

    check_device_available(args.device)
    backends = [b.strip() for b in args.backend.split(",") if b.strip()]
    check_settings(size=args.size, batch=args.batch, warmup=args.warmup, repeats=args.repeats, backends=backends)
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            print("coevo bench: error: --device cuda but torch sees no CUDA device; use --device cpu",
                  file=sys.stderr)
            return 2
    skipped = {b: unavailable_reason(b, args.device) for b in backends}
    skipped = {b: why for b, why in skipped.items() if why}
    for backend, why in skipped.items():
        print(f"coevo bench: skipping backend {backend}: {why}", file=sys.stderr)
    backends = [b for b in backends if b not in skipped]
    if not backends:
        print("coevo bench: error: none of the requested backends can run here", file=sys.stderr)
        return 2
    models = _named(args.model)
    missing = [str(p) for p in models.values() if not p.exists()]
    if missing:
        raise FileNotFoundError(f"model file(s) not found: {', '.join(missing)}")
    # every model is loaded (and a refused file refused) before anything is written
    models = {name: load_generator(path, trust=args.trust_model) for name, path in models.items()}
    from ..models.family import size_multiple

    for name, model in models.items():  # a U-Net runs at multiples of 2**num_downs only
        arch = getattr(model, "arch", None)
        if arch is not None and args.size % size_multiple(arch):
            print(f"coevo bench: error: --size {args.size} is not a multiple of {size_multiple(arch)}, which the "
                  f"U-Net {name} needs; pass e.g. --size {-(-args.size // size_multiple(arch)) * size_multiple(arch)}",
                  file=sys.stderr)
            return 2
    # before the timing, not after it
    out = writable_out_dir(args.out, command="bench", inputs={"--model file": list(_named(args.model).values())})
    results = benchmark_models(models, size=args.size, batch=args.batch, threads=args.threads,
                               device=args.device, backends=backends, warmup=args.warmup,
                               repeats=args.repeats, seed=args.seed)
    save_results(results, out / "bench.json", machine_info(args.device, args.threads),
                 extra={"skipped_backends": skipped} if skipped else None)
    plot_results(results, out / "bench.png")
    print(format_table(results))
    print(f"wrote {out / 'bench.json'} and {out / 'bench.png'}")
    return 0
