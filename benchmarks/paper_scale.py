"""What a paper-scale job costs: the whole pipeline on an ngf-64, 9-block pair at 256x256.

Runs ``coevo compress`` (through :class:`coevo.pipeline.Pipeline`) on the built-in
set rendered at 256 px, with the generator users actually hold (ResNet-9, ngf 64,
56.8 GMACs per image) and every stage cut short: a few teacher steps, one
generation of a population of 32, a few fine-tuning steps, all exports, a short
latency benchmark. It records seconds per stage, per training step and per
search generation, then projects the cost of the full settings:

* teacher training, the CycleGAN recipe: 200 epochs of 1334 steps (horse2zebra's
  larger domain, batch 1). Users who bring the official generators skip it;
* the paper's search: population 32, 50 generations after the initial one, on
  16 evaluation images per domain at 256 px (cost scales with the image count);
* fine-tuning: ``--ft-epochs`` epochs (default 200, as the CycleGAN recipe) of 1334 steps;
* export and benchmark: as measured.

Per-step and per-generation figures come from the runs' own logs: training
steps from the difference between the second and the first epoch (no start-up
cost), generations from ``history.jsonl``.

    python benchmarks/paper_scale.py --threads 2                # this CPU (about 10 minutes)
    python benchmarks/paper_scale.py --device cuda              # a GPU (benchmarks/gpu_check.sh)

Prints a table and writes ``paper_scale_<device>.json`` into --out.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import List

import torch

from coevo.core.runs import prepare_run_dir

HORSE2ZEBRA_STEPS_PER_EPOCH = 1334  # max(|trainA| = 1067, |trainB| = 1334), batch 1
PAPER = {"population": 32, "generations": 50, "eval_images": 16, "teacher_epochs": 200}


# Settings a user might run, and what they cost by the measured rates (see project()).
PRESETS = {
    "paper": {"population": 32, "generations": 50, "eval_images": 16, "finetune_epochs": 200},
    "laptop": {"population": 16, "generations": 20, "eval_images": 4, "finetune_epochs": 5},
}


def project(result: dict, preset: dict) -> dict:
    """Hours for ``preset`` from a result's measured rates: a search generation costs in proportion
    to population x evaluation images (one forward of each candidate and of its cycle partner per
    image); a fine-tuning epoch is ``steps_per_epoch`` steps."""
    st = result["settings"]
    gens = result["search_generation_s"]
    per_gen = gens[-1] if len(gens) > 1 else gens[0]
    scale = (preset["population"] * preset["eval_images"]) / (st["population"] * st["eval_images"])
    steps = result["projection_basis"]["steps_per_epoch"]
    return {"search_h": (gens[0] + per_gen * preset["generations"]) * scale / 3600,
            "finetune_h": result["finetune_step_s"] * preset["finetune_epochs"] * steps / 3600}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--ngf", type=int, default=64)
    p.add_argument("--blocks", type=int, default=9)
    p.add_argument("--population", type=int, default=32)
    p.add_argument("--generations", type=int, default=1, help="search generations after the initial one")
    p.add_argument("--eval-images", type=int, default=4)
    p.add_argument("--steps", type=int, default=2, help="training steps per epoch (teacher and fine-tune; 2 epochs)")
    p.add_argument("--ft-epochs", type=int, default=200, help="fine-tuning epochs to project")
    p.add_argument("--n-train", type=int, default=12, help="built-in training images per domain")
    p.add_argument("--resume", action="store_true", help="finish an interrupted run in --work (stage times kept)")
    p.add_argument("--work", type=Path, default=Path("benchmarks/work/paper_scale"))
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    return p.parse_args(argv)


def job_config(args: argparse.Namespace):
    from coevo.config import load_config

    sets = [
        f"device={args.device}", f"threads={args.threads}",
        f"data.load_size={args.size}", f"data.crop_size={args.size}", f"data.synthetic_n_train={args.n_train}",
        "data.synthetic_n_test=2", "data.val_fraction=0.2",
        f"model.ngf={args.ngf}", f"model.n_blocks={args.blocks}", "model.ndf=64",
        "train.epochs=2", "train.epochs_decay=0", f"train.max_steps_per_epoch={args.steps}", "train.sample_images=1",
        f"search.population={args.population}", f"search.generations={args.generations}",
        f"search.eval_images={args.eval_images}", "search.macs_ratio=0.25", "search.channel_multiple=8",
        "finetune.epochs=2", "finetune.epochs_decay=0", f"finetune.max_steps_per_epoch={args.steps}",
        "finetune.sample_images=1",
        f"bench.size={args.size}", "bench.warmup=1", "bench.repeats=5", f"bench.threads={args.threads}",
    ]
    return load_config(None, sets)


def step_seconds(run_dir: Path, steps: int) -> float:
    """Seconds per training step: the second epoch's time over its steps (no start-up cost)."""
    epochs = [r for r in map(json.loads, (run_dir / "log.jsonl").read_text().splitlines()) if r.get("kind") == "epoch"]
    return (epochs[1]["seconds"] - epochs[0]["seconds"]) / steps


def main(argv=None) -> int:
    args = parse_args(argv)
    from coevo.pipeline import Pipeline
    from coevo.core.runs import apply_threads

    apply_threads(args.threads or None)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("paper_scale: no CUDA device here", file=sys.stderr)
        return 2
    run = args.work / f"run_{args.device.replace(':', '')}"
    if not args.resume:  # the benchmark's own scratch folder: replaced only when it carries coevo's run marker
        prepare_run_dir(run, force=True, command="benchmarks/paper_scale.py")
    if args.resume and (run / "config.yaml").is_file():
        from coevo.config import load_config

        cfg = load_config(run / "config.yaml")  # the run's own settings
    else:
        cfg = job_config(args)
    t0 = time.perf_counter()
    stages = {r.name: round(r.seconds, 2) for r in Pipeline(cfg, run, resume=args.resume).run()}
    wall = time.perf_counter() - t0

    history = [json.loads(line) for line in (run / "search" / "history.jsonl").read_text().splitlines()]
    gen_seconds = [float(r["seconds"]) for r in history]
    per_gen = gen_seconds[-1] if len(gen_seconds) > 1 else gen_seconds[0]
    teacher_step = step_seconds(run / "teacher", args.steps)
    ft_step = step_seconds(run / "finetune", args.steps)
    from coevo.deploy.timing import machine_info

    machine = machine_info(args.device, torch.get_num_threads())
    result = {
        "benchmark": "paper_scale",
        "command": "python benchmarks/paper_scale.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine,
        "settings": {"size": args.size, "ngf": args.ngf, "blocks": args.blocks, "population": args.population,
                     "generations_run": args.generations, "eval_images": args.eval_images,
                     "train_steps_per_epoch": args.steps, "macs_ratio": 0.25},
        "stage_seconds": stages,
        "wall_seconds": round(wall, 1),
        "teacher_step_s": round(teacher_step, 3),
        "finetune_step_s": round(ft_step, 3),
        "search_generation_s": [round(s, 2) for s in gen_seconds],
        "projection_basis": {**PAPER, "steps_per_epoch": HORSE2ZEBRA_STEPS_PER_EPOCH,
                             "finetune_epochs": args.ft_epochs},
    }
    paper = {**PRESETS["paper"], "finetune_epochs": args.ft_epochs}
    projection = {"teacher_training_h": teacher_step * PAPER["teacher_epochs"] * HORSE2ZEBRA_STEPS_PER_EPOCH / 3600,
                  **project(result, paper), "export_and_bench_h": (stages["export"] + stages["bench"]) / 3600}
    projection["total_without_teacher_h"] = (projection["search_h"] + projection["finetune_h"]
                                             + projection["export_and_bench_h"])
    result["projection_hours"] = {k: round(v, 2) for k, v in projection.items()}
    result["presets"] = {name: {**preset, **{k: round(v, 2) for k, v in project(result, preset).items()}}
                         for name, preset in PRESETS.items()}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"paper_scale_{args.device.split(':')[0]}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    rows: List[tuple] = [(k, f"{v:.1f} s") for k, v in stages.items()]
    rows += [("teacher step", f"{teacher_step:.2f} s"), ("fine-tune step", f"{ft_step:.2f} s"),
             (f"search generation (P={args.population}, {args.eval_images} img)", f"{per_gen:.1f} s")]
    rows += [(f"projected {k}", f"{v:.2f} h") for k, v in projection.items()]
    width = max(len(r[0]) for r in rows)
    print(f"paper scale on {args.device} ({machine['threads']} threads), {args.size}px ngf {args.ngf}:")
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
