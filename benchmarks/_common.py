"""What several benchmark scripts share. The scripts run as ``python benchmarks/<name>.py``, so this
folder is on ``sys.path`` and they import it as ``from _common import ...``."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, Mapping, Optional, Tuple

import torch

from coevo.models import GeneratorArch, ResnetGenerator


def process_setup(threads: Optional[int] = None) -> None:
    """A long benchmark's process start: timestamped INFO logs (coevo's library code logs, the script
    prints), and ``threads`` torch threads when given (also in each spawned worker)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    if threads:
        torch.set_num_threads(int(threads))


def random_generator(arch: GeneratorArch, seed: int) -> ResnetGenerator:
    """A generator with N(0, 0.02) weights from a seeded generator (the CycleGAN init)."""
    model = ResnetGenerator(arch).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    return model


def time_against_teacher(teacher: Mapping, folders: Mapping[str, Path], size: int, repeats: int,
                         directions: Tuple[str, ...] = ("G_A", "G_B")) -> Tuple[Dict, Dict]:
    """Each fine-tuned pair (``{name: folder with G_A.pt, G_B.pt}``) timed against the teacher's generator
    of each direction: eager CPU, one thread, batch 1, every model interleaved round-robin in one run
    (coevo.deploy.bench.benchmark_models), 3 warm-up rounds, medians. Returns ``(teacher_ms, pairs)``,
    ``pairs[name][direction] = {"ms", "speedup"}`` (speed-up = teacher / model)."""
    from coevo.deploy.bench import benchmark_models
    from coevo.models import load_generator

    teacher_ms: Dict = {}
    pairs: Dict = {}
    for d in directions:
        models = {"teacher": teacher[d], **{name: load_generator(Path(f) / f"{d}.pt") for name, f in folders.items()}}
        results = benchmark_models(models, size=size, batch=1, threads=1, repeats=repeats, warmup=3)
        t_ms = results[0].latency_ms_median
        teacher_ms[d] = round(t_ms, 3)
        for r in results[1:]:
            pairs.setdefault(r.name, {})[d] = {"ms": round(r.latency_ms_median, 3),
                                               "speedup": round(t_ms / r.latency_ms_median, 3)}
    return teacher_ms, pairs
