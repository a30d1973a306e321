from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from coevo.models import GeneratorArch, ResnetGenerator
from coevo.prune import (
    MAC_CONVENTIONS, Genome, MacTable, count_macs, count_params, macs_of_genome, min_macs, slim,
)


def _random_genome(arch, seed):
    rng = np.random.default_rng(seed)
    g = Genome.from_bits(arch, rng.random(Genome.all_keep(arch).n_bits) < rng.uniform(0.2, 0.9))
    for m in g.masks.values():
        m[rng.integers(m.shape[0])] = True
    return g


def _flopcounter_macs(model, h, w):
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, model.arch.in_channels, h, w))
    return counter.get_total_flops() // 2


def test_published_and_flopcounter_totals_for_the_full_generator():
    arch = GeneratorArch.full(ngf=64, n_blocks=9)
    assert count_macs(arch, 256) == 56_799_264_768  # "56.8G" of the published tables
    assert count_macs(arch, 256, convention="flopcounter") == 49_551_507_456  # FlopCounterMode: 49.55G
    assert round(count_macs(arch, 256) / 1e9, 1) == 56.8
    assert count_macs(arch, 256, 256) == count_macs(arch, (256, 256))
    assert set(MAC_CONVENTIONS) == {"published", "flopcounter"}


def test_full_generator_params():
    assert count_params(GeneratorArch.full(ngf=64, n_blocks=9)) == 11_378_179  # "11.4M"


@pytest.mark.parametrize("seed,h,w", [(0, 32, 48), (1, 36, 20), (2, 32, 32)])
def test_counts_equal_flopcounter_and_numel_for_random_genomes(seed, h, w):
    torch.manual_seed(seed)
    full = ResnetGenerator(GeneratorArch.full(ngf=8, n_blocks=1 + seed % 3))
    genome = _random_genome(full.arch, seed)
    small = slim(full, genome)
    assert count_macs(small.arch, h, w, convention="flopcounter") == _flopcounter_macs(small, h, w)
    assert macs_of_genome(genome, h, w, convention="flopcounter") == _flopcounter_macs(small, h, w)
    assert count_params(small.arch) == sum(p.numel() for p in small.parameters())


def test_published_convention_counts_transposed_convs_per_output_pixel():
    arch = GeneratorArch.full(ngf=4, n_blocks=1)
    h, w = 32, 48
    diff = count_macs(arch, h, w) - count_macs(arch, h, w, convention="flopcounter")
    up1 = 16 * 8 * 9 * (16 * 24 - 8 * 12)  # trunk -> up1 at 16x24 out, 8x12 in
    up2 = 8 * 4 * 9 * (32 * 48 - 16 * 24)
    assert diff == up1 + up2


def test_min_macs_and_mac_table():
    arch = GeneratorArch.full(ngf=8, n_blocks=2)
    ones = arch.with_widths({n: 1 for n in arch.widths})
    assert min_macs(arch, 64) == count_macs(ones, 64)
    table = MacTable(arch, (32, 48))
    vec = np.array([[arch.widths[n] for n in table.names], [1] * len(table.names)])
    assert table(vec).tolist() == [count_macs(arch, 32, 48), count_macs(ones, 32, 48)]


def test_bad_inputs():
    arch = GeneratorArch.full(ngf=4, n_blocks=1)
    with pytest.raises(ValueError, match="unknown MAC convention"):
        count_macs(arch, 64, convention="torchprofile")
    with pytest.raises(ValueError, match="positive"):
        count_macs(arch, 0)


def test_counting_is_cheap():
    arch = GeneratorArch.full(ngf=64, n_blocks=9)
    genome = Genome.all_keep(arch)
    count_macs(arch, 256)
    start = time.perf_counter()
    for _ in range(1000):
        count_macs(arch, 256)
        macs_of_genome(genome, 256)
    assert time.perf_counter() - start < 1.0  # ~15 us per pair; generous for a loaded machine
