"""Baseline genomes: one-shot L1-norm filter pruning and random genomes, at a keep ratio or a MAC target.

L1-norm pruning (Li et al., "Pruning Filters for Efficient ConvNets", 2017):
a filter's importance is the L1 norm of its weights; for a group written by
several convs (the residual trunk) the norms of all its producers are summed,
since a trunk channel is kept or dropped in all of them at once.
"""
from __future__ import annotations

import logging
from typing import Dict, Optional

import numpy as np
import torch
from torch import nn

from ..models.generator import GeneratorArch, ResnetGenerator
from .budget import WidthFitter, genome_from_scores, random_scores, teacher_budget
from .genome import Genome
from .groups import channel_groups
from .macs import Size, count_macs, hw, macs_of_genome

log = logging.getLogger(__name__)


def filter_importance(generator: ResnetGenerator, tied: bool = False) -> Dict[str, np.ndarray]:
    """L1 norm of each filter (weights only), summed over a group's producers: ``{group: float64 [width]}``.

    In tied mode the trunk's score also sums the inner convs' filters, which the
    trunk bits select too.
    """
    convs = dict(generator.named_convs())
    scores: Dict[str, np.ndarray] = {}
    with torch.no_grad():
        for group in channel_groups(generator.arch):
            total = torch.zeros(group.size, dtype=torch.float64)
            for name in group.producers:
                w = convs[name].weight.detach().to("cpu", torch.float64)
                dims = (0, 2, 3) if isinstance(convs[name], nn.ConvTranspose2d) else (1, 2, 3)
                total += w.abs().sum(dim=dims)
            scores[group.name] = total.numpy()
    if tied:
        for name in list(scores):
            if name.endswith(".inner"):
                scores["trunk"] = scores["trunk"] + scores.pop(name)
    return scores


def l1_genome(generator: ResnetGenerator, keep_ratio: float, min_channels: int = 1,
              channel_multiple: int = 1, tied: bool = False) -> Genome:
    """Keep ``round(keep_ratio * width)`` filters of every group, those with the largest L1 norm.

    Counts are rounded to ``channel_multiple`` where possible and kept at ``min_channels`` or more.
    """
    if not 0.0 < float(keep_ratio) <= 1.0:
        raise ValueError(f"keep_ratio must be in (0, 1], got {keep_ratio}")
    arch = generator.arch
    # The size is unused (no budget here) but must be one the network takes: a U-Net halves it num_downs times.
    fitter = WidthFitter(arch, getattr(arch, "size_multiple", 4), tied, min_channels, channel_multiple)
    widths = fitter.widths_at(float(keep_ratio), fitter.full.astype(np.float64), fitter.full, offset=0.5)[0]
    meta = {"method": "l1", "keep_ratio": float(keep_ratio), "min_channels": int(min_channels),
            "channel_multiple": int(channel_multiple)}
    return genome_from_scores(arch, fitter.expand(widths), filter_importance(generator, tied), tied, meta)


def l1_genome_for_macs(generator: ResnetGenerator, macs_ratio: float, size: Size, min_channels: int = 1,
                       channel_multiple: int = 1, convention: str = "published", tied: bool = False) -> Genome:
    """The L1 genome with the largest uniform keep ratio whose MACs are ``<= macs_ratio`` x the generator's.

    Exact: every keep ratio where some group's count changes is tried (see
    :class:`~coevo.prune.budget.WidthFitter`). Raises ``BudgetError`` if no genome fits.
    """
    arch = generator.arch
    budget = teacher_budget(arch, macs_ratio, size, convention)
    fitter = WidthFitter(arch, size, tied, min_channels, channel_multiple, convention)
    ratio, widths = fitter.fit(fitter.full.astype(np.float64), fitter.full, budget, offset=0.5, s_max=1.0)
    meta = {"method": "l1", "keep_ratio": ratio, "macs_ratio": float(macs_ratio), "size": list(hw(size)),
            "convention": convention, "min_channels": int(min_channels),
            "channel_multiple": int(channel_multiple)}
    genome = genome_from_scores(arch, fitter.expand(widths), filter_importance(generator, tied), tied, meta)
    log.debug("l1 genome at keep ratio %.4f: %s", ratio, genome.widths())
    return genome


def l1_genome_for_latency(generator: ResnetGenerator, table, max_ms: float, min_channels: int = 1,
                          channel_multiple: int = 1, tied: bool = False) -> Genome:
    """The L1 genome with the largest uniform keep ratio whose latency, as a
    :class:`~coevo.deploy.latency.LatencyTable` predicts it, is ``<= max_ms``."""
    arch = generator.arch
    fitter = WidthFitter(arch, table.size, tied, min_channels, channel_multiple, cost=table)
    ratio, widths = fitter.fit(fitter.full.astype(np.float64), fitter.full, float(max_ms), offset=0.5, s_max=1.0)
    meta = {"method": "l1", "keep_ratio": ratio, "max_ms": float(max_ms), "latency_target": table.target,
            "size": [table.size, table.size], "min_channels": int(min_channels),
            "channel_multiple": int(channel_multiple)}
    return genome_from_scores(arch, fitter.expand(widths), filter_importance(generator, tied), tied, meta)


def random_genome_for_macs(arch: GeneratorArch, macs_ratio: float, size: Size, rng: np.random.Generator,
                           min_channels: int = 1, channel_multiple: int = 1, convention: str = "published",
                           tied: bool = False, density_range: tuple = (0.1, 1.0)) -> Genome:
    """A random genome with MACs ``<= macs_ratio`` x ``arch``'s, close to that budget.

    Each group draws a keep density from ``density_range``; the densities are then
    scaled by the largest common factor that fits the budget (groups saturate at full
    width), and the kept channels are drawn uniformly at random.
    """
    budget = teacher_budget(arch, macs_ratio, size, convention)
    fitter = WidthFitter(arch, size, tied, min_channels, channel_multiple, convention)
    lo, hi = density_range
    density = rng.uniform(lo, hi, size=len(fitter.names))
    base = density * fitter.full
    _, widths = fitter.fit(base, fitter.full, budget)
    meta = {"method": "random", "macs_ratio": float(macs_ratio), "size": list(hw(size)),
            "convention": convention, "min_channels": int(min_channels),
            "channel_multiple": int(channel_multiple)}
    return genome_from_scores(arch, fitter.expand(widths), random_scores(arch, rng, tied), tied, meta)


def macs_ratio_of(genome: Genome, size: Size, convention: str = "published",
                  teacher: Optional[GeneratorArch] = None) -> float:
    """MACs of the genome's slim network over those of ``teacher`` (default: ``genome.arch``)."""
    return macs_of_genome(genome, size, convention=convention) / count_macs(teacher or genome.arch, size,
                                                                          convention=convention)


__all__ = ["filter_importance", "l1_genome", "l1_genome_for_macs", "macs_ratio_of", "random_genome_for_macs"]
