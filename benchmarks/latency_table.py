"""How well a latency lookup table predicts measured latency, so that a search can budget time.

Measures a :class:`coevo.deploy.latency.LatencyTable` for a teacher architecture, then
times ``--networks`` random slim generators cut from it (widths in multiples of
8, each group kept between 1/8 and all of its channels) and compares the
prediction with the measurement: median and worst absolute relative error.
MACs are reported alongside, with the error a MAC-proportional model makes
(latency = teacher latency x MAC ratio), which is what a MAC budget assumes.

    python benchmarks/latency_table.py --threads 1                 # demo teacher: ngf 32, 6 blocks, 256 px
    python benchmarks/latency_table.py --ngf 64 --blocks 9 --threads 1

Writes ``latency_table_<target>.json`` (every network's widths, prediction and
measurement) into --out, and the table itself into --table.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ngf", type=int, default=32)
    p.add_argument("--blocks", type=int, default=6)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--target", default="cpu", choices=["cpu", "onnxruntime", "cuda"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--points", type=int, default=6, help="grid points per channel axis")
    p.add_argument("--networks", type=int, default=20)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--table", type=Path, default=None, help="where to write the table (default: --out)")
    args = p.parse_args(argv)

    from coevo.deploy.timing import machine_info
    from coevo.deploy.latency import measure_latency, measure_table, table_key
    from coevo.models.generator import GeneratorArch, ResnetGenerator
    from coevo.prune import count_macs

    torch.set_num_threads(args.threads)
    teacher = GeneratorArch.full(ngf=args.ngf, n_blocks=args.blocks)
    t0 = time.perf_counter()
    table = measure_table(teacher, size=args.size, target=args.target, threads=args.threads, points=args.points)
    table_s = time.perf_counter() - t0
    table_path = (args.table or args.out) / table_key(teacher, args.size, args.target, args.threads)
    table.save(table_path)

    rng = np.random.default_rng(args.seed)
    t_full = measure_latency(ResnetGenerator(teacher), args.size, args.target, repeats=args.repeats)
    macs_full = count_macs(teacher, args.size)
    rows = []
    for i in range(args.networks):
        widths = {}
        for name, w in teacher.widths.items():
            lo = max(1, w // 8)
            widths[name] = max(lo, int(rng.integers(lo, w + 1)) // 8 * 8)
        arch = teacher.with_widths(widths)
        measured = measure_latency(ResnetGenerator(arch), args.size, args.target, repeats=args.repeats, seed=i)
        predicted = table.predict(arch)
        mac_model = t_full * count_macs(arch, args.size) / macs_full
        rows.append({"widths": widths, "macs_ratio": count_macs(arch, args.size) / macs_full,
                     "measured_ms": measured, "predicted_ms": predicted, "mac_model_ms": mac_model,
                     "error": abs(predicted - measured) / measured,
                     "mac_model_error": abs(mac_model - measured) / measured})
        print(f"net {i:2d}: MACs {rows[-1]['macs_ratio']:.3f}  measured {measured:7.1f} ms  "
              f"predicted {predicted:7.1f} ms ({rows[-1]['error']:.1%})  MAC model {mac_model:7.1f} ms "
              f"({rows[-1]['mac_model_error']:.1%})", flush=True)
    errors = [r["error"] for r in rows]
    mac_errors = [r["mac_model_error"] for r in rows]
    result = {
        "benchmark": "latency_table",
        "command": "python benchmarks/latency_table.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine_info("cuda" if args.target == "cuda" else "cpu", args.threads),
        "teacher": {"ngf": args.ngf, "blocks": args.blocks, "size": args.size, "latency_ms": t_full},
        "table": {"path": str(table_path), "points": args.points, "measure_seconds": round(table_s, 1)},
        "median_error": statistics.median(errors), "max_error": max(errors),
        "mac_model_median_error": statistics.median(mac_errors), "mac_model_max_error": max(mac_errors),
        "networks": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"latency_table_{args.target}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"table measured in {table_s:.0f} s; prediction error over {len(rows)} slim networks: median "
          f"{result['median_error']:.1%}, max {result['max_error']:.1%} (MAC-proportional model: median "
          f"{result['mac_model_median_error']:.1%}, max {result['mac_model_max_error']:.1%})")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
