"""Intermediate-feature distillation against output-only distillation, on the same pair and settings.

Fine-tunes one search run's pair (default: the demo's) twice with the one recipe,
``finetune.lambda_feature`` 0 (today's output-only L1 distillation) and
``--lambda-feature``, everything else equal, and reports the held-out L1 to the
teacher (what fine-tuning selects on) and PSNR to ground truth on the test split
(reported only, never used to choose anything).

    python benchmarks/feature_distill.py --search runs/demo/search --threads 1

Writes ``feature_distill.json`` into --out.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from coevo.core.runs import prepare_run_dir


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--search", type=Path, default=Path("runs/demo/search"))
    p.add_argument("--lambda-feature", type=float, default=1.0)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--steps", type=int, default=0, help="steps per epoch (0: whole epochs)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work", type=Path, default=Path("benchmarks/work/feature_distill"))
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = p.parse_args(argv)

    from coevo import load_generator
    from coevo.deploy.timing import machine_info
    from coevo.evaluation.evaluate import translation_quality
    from coevo.train.finetune import finetune

    torch.set_num_threads(args.threads)
    # the benchmark's own scratch folder: replaced only when it carries coevo's run marker
    prepare_run_dir(args.work, force=True, command="benchmarks/feature_distill.py")
    runs = {}
    for name, lam in (("output-only", 0.0), ("output+features", args.lambda_feature)):
        sets = [f"finetune.epochs={args.epochs}", "finetune.epochs_decay=0", "finetune.sample_every=0",
                f"finetune.max_steps_per_epoch={args.steps}", f"finetune.lambda_feature={lam}"]
        t0 = time.perf_counter()
        out = finetune(args.search, args.work / name.replace("+", "_"), overrides=sets)
        seconds = time.perf_counter() - t0
        report = json.loads((out / "finetune.json").read_text())
        from coevo.config import load_config

        data = Path(load_config(out / "config.yaml").data.root)
        psnr = {}
        for g, direction in (("G_A", "AtoB"), ("G_B", "BtoA")):
            q = translation_quality(load_generator(out / f"{g}.pt"), data, direction)
            psnr[g] = q.get("psnr")
        runs[name] = {"lambda_feature": lam, "val": report["val"], "best_epoch": report["best_epoch"],
                      "test_psnr": psnr, "seconds": round(seconds, 1)}
        print(f"{name:16s} val L1 to teacher {report['val'].get('val_l1'):.4f}  test PSNR "
              f"{psnr['G_A']:.2f} / {psnr['G_B']:.2f} dB  ({seconds:.0f} s)", flush=True)
    result = {"benchmark": "feature_distill",
              "command": "python benchmarks/feature_distill.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "machine": machine_info("cpu", args.threads),
              "settings": {"search": str(args.search), "epochs": args.epochs, "steps": args.steps},
              "runs": runs}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "feature_distill.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
