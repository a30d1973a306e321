"""Populations of genomes, and the repair that keeps every genome valid and within budget."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..models import GeneratorArch
from ..prune import Genome, repair_to_budget
from .context import MACS_CONVENTION, Budget
from .fitness import FitnessTerms
from ..errors import ConfigError


@dataclass
class Candidate:
    """One genome and, once evaluated, its fitness terms (against the partner of the moment)."""

    genome: Genome
    terms: Optional[FitnessTerms] = None

    @property
    def fitness(self) -> float:
        if self.terms is None:
            raise ValueError("candidate has not been evaluated")
        return self.terms.fitness


@dataclass
class Population:
    """The genomes of one generator (``direction``: "G_A" or "G_B")."""

    direction: str
    members: List[Candidate] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.members)

    @property
    def genomes(self) -> List[Genome]:
        return [c.genome for c in self.members]

    def bits(self) -> List[np.ndarray]:
        return [c.genome.to_bits() for c in self.members]

    def fitness(self) -> np.ndarray:
        return np.array([c.fitness for c in self.members], dtype=np.float64)

    def ranking(self) -> np.ndarray:
        """Member indices, best first (ties: the earlier member)."""
        return np.argsort(-self.fitness(), kind="stable")

    def best(self) -> Candidate:
        return self.members[int(self.ranking()[0])]

    def set_terms(self, terms: Sequence[FitnessTerms]) -> None:
        for c, t in zip(self.members, terms):
            c.terms = t


class Repairer:
    """Any bit string -> a valid genome: every group keeps ``min_channels``, counts are rounded to
    ``channel_multiple`` and, in budget mode, the MACs fit ``budget.max_macs``.

    Channels are dropped by L1 importance (``mode="importance"``) or at random
    from the search's rng (``mode="random"``); either way a repaired genome only
    keeps channels its bit string kept (plus the minimum per group).
    """

    def __init__(self, arch: GeneratorArch, budget: Budget, tied: bool = False, min_channels: int = 1,
                 channel_multiple: int = 1, mode: str = "importance",
                 importance: Optional[Dict[str, np.ndarray]] = None) -> None:
        if mode not in ("importance", "random"):
            raise ConfigError(f"search.repair must be 'importance' or 'random', got {mode!r}")
        if mode == "importance" and importance is None:
            raise ValueError("importance repair needs the filter importance scores")
        self.arch, self.budget, self.tied = arch, budget, bool(tied)
        self.min_channels, self.channel_multiple = int(min_channels), int(channel_multiple)
        self.mode, self.importance = mode, importance
        # the cap in the budget's unit: MACs, or predicted milliseconds (search.compute=latency)
        self.max_macs = (budget.max_ms if budget.latency_table is not None
                         else budget.max_macs if budget.max_macs is not None else budget.teacher_macs)
        self.cost = budget.latency_table

    def __call__(self, bits: np.ndarray, rng: np.random.Generator) -> Genome:
        genome = Genome.from_bits(self.arch, np.asarray(bits, dtype=bool), tied=self.tied)
        return self.fix(genome, rng)

    def fix(self, genome: Genome, rng: np.random.Generator) -> Genome:
        fixed = repair_to_budget(
            genome, self.max_macs, self.budget.size,
            rng=rng if self.mode == "random" else None,
            importance=self.importance if self.mode == "importance" else None,
            min_channels=self.min_channels, channel_multiple=self.channel_multiple,
            convention=MACS_CONVENTION, cost=self.cost,
        )
        fixed.meta = {}
        return fixed


def initial_population(direction: str, arch: GeneratorArch, repairer: Repairer, size: int, density: float,
                       rng: np.random.Generator, seeds: Sequence[Genome] = ()) -> Population:
    """``seeds`` (e.g. the L1-norm genome) first, then random bit strings of keep probability
    ``density``, each repaired."""
    members = [Candidate(repairer.fix(g, rng)) for g in list(seeds)[:size]]
    n_bits = Genome.all_keep(arch, tied=repairer.tied).n_bits
    while len(members) < size:
        members.append(Candidate(repairer(rng.random(n_bits) < density, rng)))
    return Population(direction, members)
