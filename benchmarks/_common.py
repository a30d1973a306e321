"""What several benchmark scripts share. The scripts run as ``python benchmarks/<name>.py``, so this
folder is on ``sys.path`` and they import it as ``from _common import ...``."""
from __future__ import annotations

import torch

from coevo.models import GeneratorArch, ResnetGenerator


def random_generator(arch: GeneratorArch, seed: int) -> ResnetGenerator:
    """A generator with N(0, 0.02) weights from a seeded generator (the CycleGAN init)."""
    model = ResnetGenerator(arch).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    return model
