"""Fit genomes under a MAC budget: width rounding, scaling to a budget, and :func:`repair_to_budget`.

Width choices are made on the whole network at once. A genome's kept counts are
scaled by one common factor ``s`` (each group keeps ``floor(s * base)``
channels, rounded to the channel multiple and clipped to the allowed range),
and the largest ``s`` whose MACs fit the budget wins. MACs only grow with
``s``, so every step point of every group is a candidate; all of them are
priced in one vectorised pass (:class:`~coevo.prune.macs.MacTable`): exact,
deterministic, and well under a millisecond for a full ngf=64 network.
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional

import numpy as np

from ..models.family import arch_group_names
from ..models.generator import GeneratorArch
from .genome import Genome, layout_names
from .macs import BudgetError, MacTable, Size, count_macs, hw

_EPS = 1e-9  # s * base lands a hair below an integer step point in floating point


def round_to_multiple(n: np.ndarray, multiple: int) -> np.ndarray:
    """Round counts down to a multiple of ``multiple``; counts below it are left alone (rounding would empty them)."""
    n = np.asarray(n, dtype=np.int64)
    if multiple <= 1:
        return n
    return np.where(n >= multiple, (n // multiple) * multiple, n)


def round_widths(widths: Mapping[str, float], multiple: int = 1, min_channels: int = 1,
                 max_widths: Optional[Mapping[str, int]] = None, mode: str = "down") -> Dict[str, int]:
    """Round each group's width to a multiple of ``multiple`` where possible.

    ``mode``: "down" (floor) or "nearest" (for the multiple-free part). Results are
    clipped to ``[min(min_channels, max), max]`` when ``max_widths`` is given, else
    to at least ``min_channels``.
    """
    if mode not in ("down", "nearest"):
        raise ValueError(f"mode must be 'down' or 'nearest', got {mode!r}")
    offset = 0.5 if mode == "nearest" else 0.0
    out = {}
    for name, w in widths.items():
        n = int(np.floor(float(w) + offset + _EPS))
        cap = None if max_widths is None else int(max_widths[name])
        lo = int(min_channels) if cap is None else min(int(min_channels), cap)
        out[name] = max(lo, int(round_to_multiple(n if cap is None else min(n, cap), multiple)))
    return out


class WidthFitter:
    """Largest common scale of a width vector that fits a MAC budget (see the module docstring).

    Width vectors hold one entry per group of the genome's bit layout
    (:func:`~coevo.prune.genome.layout_names`); tied inner groups follow the trunk.
    """

    def __init__(self, arch: GeneratorArch, size: Size, tied: bool = False, min_channels: int = 1,
                 channel_multiple: int = 1, convention: str = "published", cost=None) -> None:
        if int(min_channels) < 1:
            raise ValueError(f"min_channels must be >= 1, got {min_channels}")
        if int(channel_multiple) < 1:
            raise ValueError(f"channel_multiple must be >= 1, got {channel_multiple}")
        self.arch, self.size, self.tied = arch, hw(size), tied
        self.min_channels, self.multiple, self.convention = int(min_channels), int(channel_multiple), convention
        self.names = layout_names(arch, tied)
        pos = {n: i for i, n in enumerate(self.names)}
        self._expand = np.array([pos["trunk" if (tied and n.endswith(".inner")) else n]
                                 for n in arch_group_names(arch)])
        self.full = np.array([arch.widths[n] for n in self.names], dtype=np.int64)
        self.lo = np.minimum(self.min_channels, self.full)
        # What the budget counts: MACs, or any table with MacTable's interface (width vectors in
        # group order -> cost), such as a measured coevo.deploy.latency.LatencyTable (milliseconds).
        self.table = MacTable(arch, size, convention) if cost is None else cost
        self.unit = "MACs" if cost is None else "ms"

    def macs(self, widths: np.ndarray) -> np.ndarray:
        """Cost (MACs, or the ``cost`` table's unit) of layout width vectors ``[..., n_layout]``."""
        return self.table(np.asarray(widths)[..., self._expand])

    def min_cost(self):
        return self.macs(self.lo)

    def min_macs(self) -> int:
        return int(self.min_cost())

    def widths_at(self, s: np.ndarray, base: np.ndarray, cap: np.ndarray, offset: float = 0.0) -> np.ndarray:
        """Widths ``max(lo, round(min(cap, floor(s * base + offset))))`` for scales ``s`` ``[S]`` -> ``[S, n_layout]``.

        ``round`` goes down to the channel multiple where that leaves at least one multiple.
        """
        raw = np.floor(np.multiply.outer(np.atleast_1d(s), base) + offset + _EPS).astype(np.int64)
        return np.maximum(round_to_multiple(np.minimum(raw, cap), self.multiple), self.lo)

    def fit(self, base: np.ndarray, cap: np.ndarray, budget: int, offset: float = 0.0,
            s_max: float | None = None) -> tuple:
        """``(s, widths)`` with the largest scale ``s <= s_max`` whose MACs are ``<= budget``.

        Raises :class:`BudgetError` when even the narrowest network (every group at
        ``min_channels``) is over the budget.
        """
        base = np.asarray(base, dtype=np.float64)
        cap = np.asarray(cap, dtype=np.int64)
        floor_cost = self.min_cost()
        if floor_cost > budget:
            h, w = self.size
            raise BudgetError(
                f"no genome fits {budget:,} {self.unit} at {h}x{w} ({self.convention}): keeping only "
                f"{self.min_channels} channel(s) per group already costs {floor_cost:,}. "
                "Raise the budget or lower min_channels"
            )
        # Every scale where some group gains a channel: s = (m - offset) / base, m = 1..cap.
        steps = [(np.arange(1, c + 1) - offset) / b for b, c in zip(base, cap) if b > 0 and c > 0]
        s_all = np.unique(np.concatenate([[0.0]] + steps))
        if s_max is not None:
            s_all = s_all[s_all <= s_max + _EPS]
        widths = self.widths_at(s_all, base, cap, offset)
        ok = np.flatnonzero(self.macs(widths) <= budget)
        best = ok[-1] if ok.size else 0  # macs grow with s; at s = 0 every group is at lo
        return float(s_all[best]), widths[best]

    def expand(self, widths: np.ndarray) -> Dict[str, int]:
        """Layout width vector -> ``{group: width}`` for every group."""
        full = np.asarray(widths)[self._expand]
        return {n: int(v) for n, v in zip(arch_group_names(self.arch), full)}


def keep_top(n: int, scores: np.ndarray, prefer: Optional[np.ndarray] = None) -> np.ndarray:
    """Mask keeping the ``n`` highest-scoring channels (ties: lower index); ``prefer``ed channels rank first."""
    order_keys = [np.arange(scores.shape[0]), -np.asarray(scores, dtype=np.float64)]
    if prefer is not None:
        order_keys.append(~prefer)
    order = np.lexsort(order_keys)
    mask = np.zeros(scores.shape[0], dtype=bool)
    mask[order[:n]] = True
    return mask


def genome_from_scores(arch: GeneratorArch, widths: Mapping[str, int], scores: Mapping[str, np.ndarray],
                       tied: bool = False, meta: Optional[Mapping] = None) -> Genome:
    """Keep the ``widths[g]`` highest-scoring channels of each layout group ``g``."""
    masks = {n: keep_top(int(widths[n]), scores[n]) for n in layout_names(arch, tied)}
    return Genome(arch, masks, tied=tied, meta=dict(meta or {}))


def random_scores(arch: GeneratorArch, rng: np.random.Generator, tied: bool = False) -> Dict[str, np.ndarray]:
    """Independent uniform scores per channel, drawn in layout order (so fixed by the rng state)."""
    return {n: rng.random(arch.widths[n]) for n in layout_names(arch, tied)}


def repair_to_budget(genome: Genome, max_macs: int, size: Size, rng: Optional[np.random.Generator] = None,
                     importance: Optional[Mapping[str, np.ndarray]] = None, min_channels: int = 1,
                     channel_multiple: int = 1, convention: str = "published", cost=None) -> Genome:
    """A genome within ``max_macs`` that keeps only channels ``genome`` keeps (plus the minimum).

    ``cost``: price genomes with this table instead of MACs (see :class:`WidthFitter`);
    ``max_macs`` is then in its unit (milliseconds for a latency table).

    1. Groups keeping fewer than ``min_channels`` get their best dropped channels back.
    2. Kept counts are rounded down to ``channel_multiple`` where possible and, when over
       the budget, all scaled down by the largest common factor that fits.
    3. Each group keeps its highest-``importance`` channels (``{group: scores}``, e.g.
       :func:`~coevo.prune.baselines.filter_importance`); without ``importance``, random ones
       drawn from ``rng``. One of the two is required.

    Deterministic given its inputs (and the rng state). Returns a new genome (a copy
    when nothing had to change). Raises :class:`BudgetError` when no genome fits.
    """
    arch, tied = genome.arch, genome.tied
    if importance is not None:
        scores = {n: np.asarray(importance[n], dtype=np.float64) for n in layout_names(arch, tied)}
    elif rng is not None:
        scores = random_scores(arch, rng, tied)
    else:
        raise ValueError("repair_to_budget needs importance scores or an rng to choose which channels to drop")
    fitter = WidthFitter(arch, size, tied, min_channels, channel_multiple, convention, cost=cost)
    masks = {n: genome.masks[n] for n in fitter.names}
    counts = np.array([np.count_nonzero(masks[n]) for n in fitter.names], dtype=np.int64)
    grown = np.maximum(counts, fitter.lo)
    _, widths = fitter.fit(grown.astype(np.float64), grown, max_macs if cost is not None else int(max_macs),
                           s_max=1.0)
    new = {}
    for n, have, want in zip(fitter.names, counts, widths):
        m = masks[n]
        new[n] = m.copy() if have == want else keep_top(int(want), scores[n], prefer=m)
    return Genome(arch, new, tied=tied, meta=dict(genome.meta))


def uniform_widths(arch: GeneratorArch, max_cost: float, size: Size, tied: bool = False,
                   convention: str = "published", cost=None) -> Dict[str, int]:
    """The uniformly narrow network under ``max_cost``: every group at one fraction of its width (rounded to
    nearest), the largest fraction that fits. ``cost``: a latency table instead of MACs (see
    :class:`WidthFitter`)."""
    fitter = WidthFitter(arch, size, tied, 1, 1, convention, cost=cost)
    _, widths = fitter.fit(fitter.full.astype(np.float64), fitter.full,
                           max_cost if cost is not None else int(max_cost), offset=0.5, s_max=1.0)
    return {n: int(w) for n, w in zip(fitter.names, widths)}


def teacher_budget(arch: GeneratorArch, macs_ratio: float, size: Size, convention: str = "published") -> int:
    """``floor(macs_ratio * MACs(arch))``; ``macs_ratio`` must be in (0, 1]."""
    if not 0.0 < float(macs_ratio) <= 1.0:
        raise ValueError(f"macs_ratio must be in (0, 1], got {macs_ratio}")
    return int(float(macs_ratio) * count_macs(arch, size, convention=convention))


__all__ = [
    "WidthFitter", "genome_from_scores", "keep_top", "random_scores",
    "repair_to_budget", "round_to_multiple", "round_widths", "teacher_budget",
]
