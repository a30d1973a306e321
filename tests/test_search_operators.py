"""Genetic operators: shapes, probabilities, determinism; budget repair; the config registry."""
from __future__ import annotations

import numpy as np
import pytest

from coevo.config import ConfigError, SearchConfig
from coevo.models import GeneratorArch
from coevo.prune import Genome, macs_of_genome
from coevo.search import (
    BitFlip,
    Breeder,
    RouletteSelection,
    SegmentFlip,
    TournamentSelection,
    TwoPointCrossover,
    UniformCrossover,
)
from coevo.search.context import MACS_SIZE, check_budget
from coevo.search.population import Repairer, initial_population

L = 200


def bits(rng, n=L, p=0.5):
    return rng.random(n) < p


def test_roulette_draws_in_proportion_to_fitness():
    rng = np.random.default_rng(0)
    fitness = np.array([1.0, 2.0, 7.0])
    counts = np.bincount([RouletteSelection().select(fitness, rng) for _ in range(20000)], minlength=3)
    np.testing.assert_allclose(counts / counts.sum(), fitness / fitness.sum(), atol=0.015)
    # Non-positive fitness is shifted, never crashes or picks out of range.
    assert 0 <= RouletteSelection().select(np.array([-1.0, 0.0, -3.0]), rng) < 3


def test_tournament_returns_the_best_entrant():
    rng = np.random.default_rng(0)
    fitness = np.arange(10, dtype=float)
    picks = [TournamentSelection(10).select(fitness, rng) for _ in range(20)]
    assert set(picks) == {9}
    counts = np.bincount([TournamentSelection(3).select(fitness, rng) for _ in range(5000)], minlength=10)
    assert counts[0] == counts[1] == 0 and counts[9] > counts[5] > counts[2]


@pytest.mark.parametrize("crossover", [TwoPointCrossover(), UniformCrossover()])
def test_crossover_only_exchanges_bits_between_parents(crossover):
    rng = np.random.default_rng(0)
    for _ in range(50):
        a, b = bits(rng), bits(rng)
        c1, c2 = crossover(a, b, rng)
        assert c1.shape == c2.shape == (L,) and c1.dtype == bool
        # At each position the children hold the parents' two bits, in some order.
        assert np.array_equal(c1.astype(int) + c2.astype(int), a.astype(int) + b.astype(int))
        assert np.array_equal(c1 | c2, a | b)


def test_two_point_crossover_swaps_one_contiguous_segment():
    rng = np.random.default_rng(3)
    a, b = np.zeros(L, bool), np.ones(L, bool)
    for _ in range(20):
        c1, _ = TwoPointCrossover()(a, b, rng)
        idx = np.flatnonzero(c1)
        assert idx.size == 0 or np.array_equal(idx, np.arange(idx[0], idx[-1] + 1))


def test_segment_flip_inverts_one_contiguous_segment():
    rng = np.random.default_rng(0)
    for _ in range(50):
        a = bits(rng)
        diff = np.flatnonzero(SegmentFlip()(a, rng) != a)
        assert diff.size == 0 or np.array_equal(diff, np.arange(diff[0], diff[-1] + 1))


def test_bit_flip_rate_matches_flip_bits():
    rng = np.random.default_rng(0)
    a = bits(rng, 1000)
    flips = [int((BitFlip(5.0)(a, rng) != a).sum()) for _ in range(400)]
    assert np.mean(flips) == pytest.approx(5.0, rel=0.1)


def test_operator_probabilities_decide_how_children_are_made():
    rng = np.random.default_rng(0)
    pop = [bits(rng) for _ in range(6)]
    fitness = np.arange(1, 7, dtype=float)
    copies = Breeder(TournamentSelection(2), TwoPointCrossover(), BitFlip(), 1.0, 0.0, 0.0)
    children = copies.breed(pop, fitness, 9, rng)
    assert len(children) == 9 and all(any(np.array_equal(c, p) for p in pop) for c in children)
    assert all(c.shape == (L,) and c.dtype == bool for c in children)
    # Mutation only: every child is one parent plus a few flips.
    mutants = Breeder(RouletteSelection(), TwoPointCrossover(), BitFlip(3.0), 0.0, 0.0, 1.0).breed(pop, fitness, 50, rng)
    assert min(min(int((c != p).sum()) for p in pop) for c in mutants) <= 3
    # Same seed, same children.
    b = Breeder(RouletteSelection(), TwoPointCrossover(), SegmentFlip())
    one = b.breed(pop, fitness, 7, np.random.default_rng(5))
    two = b.breed(pop, fitness, 7, np.random.default_rng(5))
    assert all(np.array_equal(x, y) for x, y in zip(one, two))


def test_registry_builds_operators_from_the_config_and_names_unknown_ones():
    b = Breeder.from_config(SearchConfig(selection="roulette", mutation="segment_flip", crossover="uniform"))
    assert (b.selection.name, b.crossover.name, b.mutation.name) == ("roulette", "uniform", "segment_flip")
    with pytest.raises(ConfigError, match="tournament"):
        Breeder.from_config(SearchConfig(selection="rank"))
    with pytest.raises(ConfigError, match="mutation_prob"):
        Breeder(RouletteSelection(), TwoPointCrossover(), SegmentFlip(), 0.0, 0.0, 0.0)


@pytest.mark.parametrize("tied", [False, True])
def test_repair_and_initial_population_meet_the_budget(tied):
    arch = GeneratorArch.full(ngf=8, n_blocks=2)
    budget = check_budget(arch, 0.25, min_channels=1)
    importance = {n: np.arange(arch.widths[n], dtype=float) for n in arch.widths}
    if tied:
        importance = {n: v for n, v in importance.items() if not n.endswith(".inner")}
    rng = np.random.default_rng(0)
    for mode in ("importance", "random"):
        repair = Repairer(arch, budget, tied=tied, mode=mode, importance=importance)
        n_bits = Genome.all_keep(arch, tied=tied).n_bits
        for _ in range(20):
            g = repair(rng.random(n_bits) < rng.random(), rng)
            assert macs_of_genome(g, MACS_SIZE) <= budget.max_macs
            g.validate(min_channels=1)
        pop = initial_population("G_A", arch, repair, 8, 0.5, rng, seeds=[Genome.all_keep(arch, tied=tied)])
        assert len(pop) == 8
        assert all(macs_of_genome(c.genome, MACS_SIZE) <= budget.max_macs for c in pop.members)
