from __future__ import annotations

import numpy as np
import pytest
import torch

from coevo.models import GeneratorArch, ResnetGenerator
from coevo.prune import (
    BudgetError, Genome, count_macs, filter_importance, l1_genome, l1_genome_for_macs, macs_of_genome,
    min_macs, random_genome_for_macs, repair_to_budget, round_widths,
)


@pytest.fixture(scope="module")
def gen():
    torch.manual_seed(0)
    return ResnetGenerator(GeneratorArch.full(ngf=8, n_blocks=2)).eval()


def test_filter_importance_sums_the_trunk_producers(gen):
    imp = filter_importance(gen)
    convs = dict(gen.named_convs())
    trunk = sum(convs[n].weight.detach().abs().sum(dim=(1, 2, 3)).double()
                for n in ("down2", "block0.conv2", "block1.conv2"))
    np.testing.assert_allclose(imp["trunk"], trunk.numpy(), rtol=1e-5)
    up1 = convs["up1"].weight.detach().abs().sum(dim=(0, 2, 3)).double()  # ConvTranspose: [in, out, k, k]
    np.testing.assert_allclose(imp["up1"], up1.numpy(), rtol=1e-5)
    tied = filter_importance(gen, tied=True)
    assert "block0.inner" not in tied
    np.testing.assert_allclose(tied["trunk"], imp["trunk"] + imp["block0.inner"] + imp["block1.inner"])


def test_l1_genome_keeps_the_largest_filters(gen):
    genome = l1_genome(gen, 0.5)
    assert genome.widths() == {n: c // 2 for n, c in gen.arch.widths.items()}
    imp = filter_importance(gen)
    for name, mask in genome.masks.items():
        assert imp[name][mask].min() >= imp[name][~mask].max()
    assert l1_genome(gen, 1.0) == Genome.all_keep(gen.arch)
    assert set(l1_genome(gen, 0.01, min_channels=2).widths().values()) == {2}
    tied = l1_genome(gen, 0.5, tied=True)
    assert tied.tied and np.array_equal(tied.masks["block1.inner"], tied.masks["trunk"])


def test_l1_channel_multiple(gen):
    widths = l1_genome(gen, 0.6, channel_multiple=4).widths()
    assert all(w % 4 == 0 for w in widths.values()), widths
    assert round_widths({"a": 13.7, "b": 3}, multiple=4) == {"a": 12, "b": 3}
    assert round_widths({"a": 13.7}, multiple=4, max_widths={"a": 10}) == {"a": 8}


@pytest.mark.parametrize("ratio", [0.1, 0.25, 0.6])
def test_l1_for_macs_is_the_largest_uniform_ratio_under_budget(gen, ratio):
    budget = int(ratio * count_macs(gen.arch, 64))
    genome = l1_genome_for_macs(gen, ratio, 64)
    assert macs_of_genome(genome, 64) <= budget
    keep = genome.meta["keep_ratio"]
    assert l1_genome(gen, keep) == genome  # reproducible from the recorded ratio
    # The next width change up the ratio scale would break the budget.
    bigger = min(r for r in ((np.arange(1, c + 1) - 0.5) / c for c in gen.arch.widths.values())
                 for r in r if r > keep + 1e-12)
    assert macs_of_genome(l1_genome(gen, bigger), 64) > budget


@pytest.mark.parametrize("tied", [False, True])
def test_random_genomes_meet_the_budget(tied):
    arch = GeneratorArch.full(ngf=16, n_blocks=3)
    full = count_macs(arch, 64)
    for seed in range(5):
        genome = random_genome_for_macs(arch, 0.3, 64, np.random.default_rng(seed), tied=tied)
        macs = macs_of_genome(genome, 64)
        assert 0.25 * full < macs <= 0.3 * full  # close to the budget, never over it
        genome.validate()
        assert genome.tied == tied
    a = random_genome_for_macs(arch, 0.3, 64, np.random.default_rng(7))
    b = random_genome_for_macs(arch, 0.3, 64, np.random.default_rng(7))
    assert a == b


def test_repair_to_budget(gen):
    arch = gen.arch
    rng = np.random.default_rng(0)
    budget = int(0.2 * count_macs(arch, 64))
    for seed in range(5):
        bits = np.random.default_rng(seed).random(Genome.all_keep(arch).n_bits) < 0.8
        genome = Genome.from_bits(arch, bits)
        genome.masks["up2"][:] = False  # an empty group is brought back to min_channels
        fixed = repair_to_budget(genome, budget, 64, rng=rng, min_channels=2)
        assert macs_of_genome(fixed, 64) <= budget
        fixed.validate(min_channels=2)
        for name, mask in fixed.masks.items():
            if name != "up2":
                assert not (mask & ~genome.masks[name]).any()  # only drops channels
    # importance decides which channels go; same inputs give the same answer
    imp = filter_importance(gen)
    a = repair_to_budget(Genome.all_keep(arch), budget, 64, importance=imp)
    assert a == repair_to_budget(Genome.all_keep(arch), budget, 64, importance=imp)
    for name, mask in a.masks.items():
        assert imp[name][mask].min() >= imp[name][~mask].max()
    r1 = repair_to_budget(Genome.all_keep(arch), budget, 64, rng=np.random.default_rng(3))
    r2 = repair_to_budget(Genome.all_keep(arch), budget, 64, rng=np.random.default_rng(3))
    assert r1 == r2


def test_repair_keeps_genomes_within_budget_and_respects_options(gen):
    arch = gen.arch
    small = l1_genome(gen, 0.3)
    same = repair_to_budget(small, count_macs(arch, 64), 64, rng=np.random.default_rng(0))
    assert same == small and same is not small
    tied = Genome.all_keep(arch, tied=True)
    out = repair_to_budget(tied, count_macs(arch, 64) // 3, 64, rng=np.random.default_rng(0), channel_multiple=4)
    assert out.tied and np.array_equal(out.masks["block0.inner"], out.masks["trunk"])
    assert all(w % 4 == 0 for w in out.widths().values())
    with pytest.raises(ValueError, match="importance scores or an rng"):
        repair_to_budget(tied, 1, 64)


def test_impossible_budgets_raise_budget_error(gen):
    arch = gen.arch
    floor = min_macs(arch, 64, min_channels=2)
    with pytest.raises(BudgetError, match="already costs"):
        repair_to_budget(Genome.all_keep(arch), floor - 1, 64, rng=np.random.default_rng(0), min_channels=2)
    assert macs_of_genome(repair_to_budget(Genome.all_keep(arch), floor, 64, rng=np.random.default_rng(0),
                                           min_channels=2), 64) == floor
    ratio = 0.5 * min_macs(arch, 64) / count_macs(arch, 64)
    with pytest.raises(BudgetError):
        l1_genome_for_macs(gen, ratio, 64)
    with pytest.raises(BudgetError):
        random_genome_for_macs(arch, ratio, 64, np.random.default_rng(0))
    assert isinstance(BudgetError("x"), ValueError)
