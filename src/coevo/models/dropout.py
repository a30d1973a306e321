"""Dropout whose masks come from a seeded ``torch.Generator`` while a network trains.

Plain ``nn.Dropout`` draws from torch's global random stream, which coevo never seeds nor checkpoints, so two
training runs with one seed, or a run and its resume, would draw different masks. A trainer therefore swaps
the ``nn.Dropout`` modules of the networks it trains for :class:`SeededDropout` (:func:`seed_dropout`; they hold
no weights, so state_dicts and the saved files are unchanged and load into the plain architectures) and lets them
draw from its own seeded generator during its training steps only (:func:`drawing_from`); the generator's state
goes into the run's checkpoint. Outside a step an unarmed :class:`SeededDropout` is exactly ``nn.Dropout``: a
measurement in train reference mode (:func:`coevo.models.generator.scoring_mode`, ``fixed_rng``) draws the
scoring stream's masks, as it does for any other network.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn


class SeededDropout(nn.Module):
    """``nn.Dropout`` drawing its masks from ``generator`` (not torch's global state), so that training and
    its resume replay the same masks; with ``generator`` None, exactly ``nn.Dropout(p)``. Holds no weights."""

    def __init__(self, p: float, generator: Optional[torch.Generator] = None) -> None:
        super().__init__()
        self.p, self.generator = float(p), generator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.generator is None:
            return F.dropout(x, self.p, self.training)
        if not self.training or self.p == 0.0:
            return x
        keep = torch.rand(x.shape, generator=self.generator, device=self.generator.device) >= self.p
        return x * keep.to(device=x.device, dtype=x.dtype) / (1.0 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def seed_dropout(model: nn.Module, generator: Optional[torch.Generator]) -> int:
    """Replace every ``nn.Dropout`` of ``model`` in place by a :class:`SeededDropout` on ``generator`` (None: one
    that draws from a generator only inside :func:`drawing_from`); returns how many. The state_dict does not
    change (dropout has no weights)."""
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Dropout):
                setattr(parent, name, SeededDropout(child.p, generator))
                count += 1
    return count


def plain_dropout(model: nn.Module) -> nn.Module:
    """``model`` with every :class:`SeededDropout` replaced by ``nn.Dropout`` again, in place."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, SeededDropout):
                setattr(parent, name, nn.Dropout(child.p))
    return model


def seeded_modules(*models: nn.Module) -> List[SeededDropout]:
    """The :class:`SeededDropout` modules of ``models``, in module order."""
    return [m for model in models for m in model.modules() if isinstance(m, SeededDropout)]


@contextmanager
def drawing_from(streams: Iterable[Tuple[torch.Generator, Sequence[SeededDropout]]]):
    """Inside: each ``(generator, modules)`` pair's modules draw their masks from that generator; after: they
    draw as they did before (an unarmed module: torch's global stream, like ``nn.Dropout``)."""
    saved = []
    try:
        for generator, modules in streams:
            for m in modules:
                saved.append((m, m.generator))
                m.generator = generator
        yield
    finally:
        for m, generator in reversed(saved):
            m.generator = generator


__all__ = ["SeededDropout", "drawing_from", "plain_dropout", "seed_dropout", "seeded_modules"]
