"""Seeded random number generators, the only source of randomness in coevo (never the global torch,
numpy or random state), so every run replays from its seed.

A run seed is split into independent streams by :func:`derive_seed` (``derive_seed(seed, stream, ...)``),
and each stream becomes a numpy ``default_rng`` or a torch generator (:func:`torch_rng`).
"""
from __future__ import annotations

import numpy as np
import torch


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers, e.g. (seed, epoch, stream): independent streams, no global RNG."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def torch_rng(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A seeded ``torch.Generator`` on ``device``: pass it to every torch call that draws random numbers."""
    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g


__all__ = ["derive_seed", "torch_rng"]
