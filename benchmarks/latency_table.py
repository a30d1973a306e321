"""How well a latency lookup table predicts measured latency, so that a search can budget time.

Measures a :class:`coevo.deploy.latency.LatencyTable` for a teacher architecture, then
times ``--networks`` random slim generators cut from it (widths in multiples of
8, each group kept between 1/8 and all of its channels) and compares the
prediction with the measurement: median and worst absolute relative error.
MACs are reported alongside, with the errors of two MAC models: the proportional one
(latency = teacher latency x MAC ratio, which is what a MAC budget assumes) and the fairer
baseline, an affine model (latency = a + b x MACs) fitted by least squares on the same
networks and the teacher, scored leave-one-out (each network predicted from a fit without it),
so that neither side of the comparison has seen the network it predicts.

    python benchmarks/latency_table.py --reanalyse benchmarks/results/latency_table_cpu.json
                                                  # adds the affine baseline to committed timings

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


def affine_mac_baseline(macs_ratios, measured_ms, teacher_ms: float) -> dict:
    """Leave-one-out errors of ``latency = a + b * macs_ratio`` fitted on the other networks plus the
    teacher (ratio 1), and the coefficients of the fit on all of them."""
    x = np.asarray(macs_ratios, dtype=np.float64)
    y = np.asarray(measured_ms, dtype=np.float64)
    if len(x) < 3:
        raise ValueError("the affine baseline needs at least 3 networks")
    X, Y = np.append(x, 1.0), np.append(y, teacher_ms)
    preds = []
    for i in range(len(x)):
        keep = np.arange(len(X)) != i
        b, a = np.polyfit(X[keep], Y[keep], 1)
        preds.append(float(a + b * x[i]))
    b, a = np.polyfit(X, Y, 1)
    errors = np.abs(np.asarray(preds) - y) / y
    return {"intercept_ms": float(a), "slope_ms_per_teacher_macs": float(b), "loo_predicted_ms": preds,
            "loo_errors": errors.tolist(), "median_error": float(np.median(errors)), "max_error": float(errors.max())}


def reanalyse(path: Path) -> dict:
    """Add the affine baseline to a results file written before it existed (its timings unchanged)."""
    result = json.loads(path.read_text())
    rows = result["networks"]
    aff = affine_mac_baseline([r["macs_ratio"] for r in rows], [r["measured_ms"] for r in rows],
                              result["teacher"]["latency_ms"])
    for r, pred, err in zip(rows, aff["loo_predicted_ms"], aff["loo_errors"]):
        r["affine_model_ms"], r["affine_model_error"] = pred, err
    result["affine_model"] = {k: v for k, v in aff.items() if k not in ("loo_predicted_ms", "loo_errors")}
    result["affine_model_median_error"], result["affine_model_max_error"] = aff["median_error"], aff["max_error"]
    from scipy import stats

    diff = np.asarray(aff["loo_errors"]) - np.asarray([r["error"] for r in rows])  # > 0: the table is better
    result["table_vs_affine"] = {
        "median_error_difference": float(np.median(diff)), "networks_table_better": int((diff > 0).sum()),
        "networks": len(rows), "p_wilcoxon": float(stats.wilcoxon(diff).pvalue),
        "test": "paired Wilcoxon signed-rank over the networks: affine MAC error minus table error"}
    path.write_text(json.dumps(result, indent=2) + "\n")
    return result


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
    p.add_argument("--reanalyse", type=Path, default=None, metavar="RESULTS",
                   help="add the affine MAC baseline to an existing results file and stop (no timing)")
    args = p.parse_args(argv)
    if args.reanalyse:
        r = reanalyse(args.reanalyse)
        tv = r["table_vs_affine"]
        print(f"{args.reanalyse}: table median {r['median_error']:.1%}, affine MAC model (leave-one-out) median "
              f"{r['affine_model_median_error']:.1%}, proportional MAC model median {r['mac_model_median_error']:.1%}; "
              f"table better on {tv['networks_table_better']}/{tv['networks']} networks, Wilcoxon p {tv['p_wilcoxon']:.2g}")
        return 0

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
    result = reanalyse(out)
    print(f"table measured in {table_s:.0f} s; prediction error over {len(rows)} slim networks: median "
          f"{result['median_error']:.1%}, max {result['max_error']:.1%} (affine MAC model, leave-one-out: median "
          f"{result['affine_model_median_error']:.1%}, max {result['affine_model_max_error']:.1%}; "
          f"MAC-proportional: median {result['mac_model_median_error']:.1%})")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
