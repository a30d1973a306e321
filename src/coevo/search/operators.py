"""Genetic operators on bit strings (one bit per filter, see :func:`coevo.prune.bit_layout`).

Each operator is a small object built by name from the config through a
registry, and draws every random number from the numpy ``Generator`` it is
handed, so a search is reproducible from its seed and resumable from the
generator's saved state.

Paper (Shu et al. 2019; official code): roulette selection, two-point
crossover, segment-flip mutation, one elite, and each child made by exactly one
operator with probabilities copy 0.2 / crossover 0.7 / mutation 0.1.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple, Type

import numpy as np

from ..core.registry import Registry
from ..errors import ConfigError

Bits = np.ndarray  # 1-D bool


# Operator classes by name; ``search.selection``/``crossover``/``mutation`` pick from these, and each
# class builds itself from the search config (:meth:`from_config`) with the settings it takes.
SELECTIONS: Registry[Type["Selection"]] = Registry("search.selection")
CROSSOVERS: Registry[Type["Crossover"]] = Registry("search.crossover")
MUTATIONS: Registry[Type["Mutation"]] = Registry("search.mutation")


class _FromConfig:
    @classmethod
    def from_config(cls, s):
        """The operator for search config ``s``; operators without settings ignore it."""
        return cls()


# ----------------------------------------------------------------------------- selection
class Selection(_FromConfig):
    """Picks the index of one parent from a population's fitness (higher is better)."""

    name = "base"

    def select(self, fitness: np.ndarray, rng: np.random.Generator) -> int:
        raise NotImplementedError


@SELECTIONS.register("roulette")
class RouletteSelection(Selection):
    """Fitness-proportionate selection (the paper's). Fitness is shifted to be positive if needed."""

    name = "roulette"

    def select(self, fitness: np.ndarray, rng: np.random.Generator) -> int:
        f = np.asarray(fitness, dtype=np.float64)
        if f.min() <= 0:
            f = f - f.min() + 1e-12
        p = np.cumsum(f) / f.sum()
        return int(min(np.searchsorted(p, rng.random(), side="left"), len(f) - 1))


@SELECTIONS.register("tournament")
class TournamentSelection(Selection):
    """Best of ``size`` members drawn without replacement (ties: the lower index)."""

    name = "tournament"

    @classmethod
    def from_config(cls, s) -> "TournamentSelection":
        return cls(s.tournament_size)

    def __init__(self, size: int = 3) -> None:
        if size < 1:
            raise ValueError(f"tournament size must be >= 1, got {size}")
        self.size = int(size)

    def select(self, fitness: np.ndarray, rng: np.random.Generator) -> int:
        n = len(fitness)
        entrants = np.sort(rng.choice(n, size=min(self.size, n), replace=False))
        return int(entrants[np.argmax(np.asarray(fitness)[entrants])])


# ----------------------------------------------------------------------------- crossover
class Crossover(_FromConfig):
    """Two parents -> two children of the same length."""

    name = "base"

    def __call__(self, a: Bits, b: Bits, rng: np.random.Generator) -> Tuple[Bits, Bits]:
        raise NotImplementedError


@CROSSOVERS.register("two_point")
class TwoPointCrossover(Crossover):
    """Swap the segment ``[i, j)`` between the parents (the paper's; i, j uniform, sorted)."""

    name = "two_point"

    def __call__(self, a: Bits, b: Bits, rng: np.random.Generator) -> Tuple[Bits, Bits]:
        i, j = np.sort(rng.integers(0, len(a), size=2))
        c1, c2 = a.copy(), b.copy()
        c1[i:j], c2[i:j] = b[i:j], a[i:j]
        return c1, c2


@CROSSOVERS.register("uniform")
class UniformCrossover(Crossover):
    """Each bit from either parent with probability 1/2."""

    name = "uniform"

    def __call__(self, a: Bits, b: Bits, rng: np.random.Generator) -> Tuple[Bits, Bits]:
        take = rng.random(len(a)) < 0.5
        return np.where(take, b, a), np.where(take, a, b)


# ----------------------------------------------------------------------------- mutation
class Mutation(_FromConfig):
    """One parent -> one child."""

    name = "base"

    def __call__(self, bits: Bits, rng: np.random.Generator) -> Bits:
        raise NotImplementedError


@MUTATIONS.register("segment_flip")
class SegmentFlip(Mutation):
    """Invert the segment ``[i, j)`` (the paper's; on average a third of the string)."""

    name = "segment_flip"

    def __call__(self, bits: Bits, rng: np.random.Generator) -> Bits:
        i, j = np.sort(rng.integers(0, len(bits), size=2))
        out = bits.copy()
        out[i:j] = ~out[i:j]
        return out


@MUTATIONS.register("bit_flip")
class BitFlip(Mutation):
    """Flip each bit independently with probability ``flip_bits / n_bits``."""

    name = "bit_flip"

    @classmethod
    def from_config(cls, s) -> "BitFlip":
        return cls(s.flip_bits)

    def __init__(self, flip_bits: float = 4.0) -> None:
        if flip_bits <= 0:
            raise ValueError(f"flip_bits must be > 0, got {flip_bits}")
        self.flip_bits = float(flip_bits)

    def __call__(self, bits: Bits, rng: np.random.Generator) -> Bits:
        rate = min(1.0, self.flip_bits / len(bits))
        return bits ^ (rng.random(len(bits)) < rate)


# ----------------------------------------------------------------------------- breeding
@dataclass
class Breeder:
    """Makes the next generation's children from the current population.

    Each child comes from exactly one operator, drawn with probabilities
    ``(copy, crossover, mutation)``: a copy of one selected parent, the two
    children of a crossover of two selected parents, or a mutation of one.
    Elites are handled by the caller.
    """

    selection: Selection
    crossover: Crossover
    mutation: Mutation
    p_copy: float = 0.2
    p_crossover: float = 0.7
    p_mutation: float = 0.1

    def __post_init__(self) -> None:
        p = np.array([self.p_copy, self.p_crossover, self.p_mutation], dtype=np.float64)
        if (p < 0).any() or p.sum() <= 0:
            raise ConfigError(
                "search.copy_prob, crossover_prob and mutation_prob must be >= 0 and not all zero, "
                f"got {p.tolist()}"
            )
        self._cum = np.cumsum(p / p.sum())

    @classmethod
    def from_config(cls, s) -> "Breeder":
        return cls(SELECTIONS.lookup(s.selection).from_config(s),
                   CROSSOVERS.lookup(s.crossover).from_config(s),
                   MUTATIONS.lookup(s.mutation).from_config(s),
                   float(s.copy_prob), float(s.crossover_prob), float(s.mutation_prob))

    def breed(self, population: List[Bits], fitness: np.ndarray, n_children: int,
              rng: np.random.Generator) -> List[Bits]:
        """``n_children`` new bit strings; ``population[i]`` has ``fitness[i]``."""
        children: List[Bits] = []
        while len(children) < n_children:
            r = rng.random()
            if r < self._cum[0]:
                children.append(population[self.selection.select(fitness, rng)].copy())
            elif r < self._cum[1]:
                a = population[self.selection.select(fitness, rng)]
                b = population[self.selection.select(fitness, rng)]
                children.extend(self.crossover(a, b, rng))
            else:
                children.append(self.mutation(population[self.selection.select(fitness, rng)], rng))
        return children[:n_children]


__all__ = [
    "Selection", "RouletteSelection", "TournamentSelection", "Crossover", "TwoPointCrossover",
    "UniformCrossover", "Mutation", "SegmentFlip", "BitFlip", "Breeder", "SELECTIONS", "CROSSOVERS",
    "MUTATIONS",
]
