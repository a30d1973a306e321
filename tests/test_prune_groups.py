"""The declared channel groups must match what the network actually wires together.

Probe: perturb one output channel of one producer conv while every other conv's
output is frozen to its clean value. A change can then reach a conv's input
only through the non-conv paths (norms, ReLUs, padding, residual additions),
which is exactly the channel coupling that pruning must respect.
"""
from __future__ import annotations

from collections import defaultdict

import pytest
import torch

from coevo.models import GeneratorArch, ResnetGenerator, group_names
from coevo.prune import channel_groups, conv_group_map

from conftest import direct_edges


def _derive_groups(edges):
    """Union-find over producers that feed the same consumer input channel."""
    parent = {}

    def find(p):
        parent.setdefault(p, p)
        while parent[p] != p:
            p = parent[p]
        return p

    by_input = defaultdict(set)
    for (producer, _), targets in edges.items():
        find(producer)
        for q, _ in targets:
            by_input[q].add(producer)
    for producers in by_input.values():
        first, *rest = sorted(producers)
        for p in rest:
            parent[find(p)] = find(first)
    groups = defaultdict(lambda: (set(), set()))
    for (producer, _), targets in edges.items():
        prods, cons = groups[find(producer)]
        prods.add(producer)
        cons.update(q for q, _ in targets)
    return sorted((sorted(p), sorted(c)) for p, c in groups.values())


ARCHS = [
    GeneratorArch.full(ngf=2, n_blocks=1),
    GeneratorArch.full(ngf=2, n_blocks=3),
    # Unequal widths: a channel index can only line up with itself if the wiring is right.
    GeneratorArch(ngf=4, n_blocks=2, widths={"stem": 3, "down1": 5, "trunk": 6, "block0.inner": 2,
                                             "block1.inner": 7, "up1": 4, "up2": 2}),
]


@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: f"{a.n_blocks}blocks-{sorted(a.widths.values())}")
def test_declared_groups_match_real_data_flow(arch):
    torch.manual_seed(0)
    gen = ResnetGenerator(arch).eval()
    edges = direct_edges(gen, torch.randn(1, 3, 16, 20), "head", channels=lambda w: sorted({0, w // 2, w - 1}))
    # A producer's channel c reaches input channel c of its group's consumers (those
    # downstream of it: block 1's output skips past block 0) and nothing else.
    io = conv_group_map(arch)
    for (producer, c), targets in edges.items():
        group = io[producer][1]
        consumers = {q for q, (g_in, _) in io.items() if g_in == group}
        assert targets and targets <= {(q, c) for q in consumers}, (producer, c, targets)
    declared = sorted((sorted(g.producers), sorted(g.consumers)) for g in channel_groups(arch))
    assert _derive_groups(edges) == declared


def test_trunk_couples_down2_and_every_block_output_inner_is_free():
    arch = GeneratorArch.full(ngf=4, n_blocks=3)
    groups = {g.name: g for g in channel_groups(arch)}
    assert [g.name for g in channel_groups(arch)] == group_names(3)
    trunk = groups["trunk"]
    assert trunk.producers == ["down2", "block0.conv2", "block1.conv2", "block2.conv2"]
    assert trunk.consumers == ["block0.conv1", "block1.conv1", "block2.conv1", "up1"]
    assert trunk.coupled and trunk.size == 16
    for i in range(3):
        inner = groups[f"block{i}.inner"]
        assert (inner.producers, inner.consumers) == ([f"block{i}.conv1"], [f"block{i}.conv2"])
        assert not inner.coupled


def test_every_conv_is_indexed_once_on_each_side_and_sizes_match_shapes(tiny_generator):
    arch = tiny_generator.arch
    io = conv_group_map(arch)
    convs = dict(tiny_generator.named_convs())
    assert list(io) == list(convs)
    assert io["stem"][0] is None and io["head"][1] is None  # image channels are never pruned
    for name, (g_in, g_out) in io.items():
        conv = convs[name]
        c_in, c_out = conv.in_channels, conv.out_channels
        assert c_in == (arch.in_channels if g_in is None else arch.widths[g_in])
        assert c_out == (arch.out_channels if g_out is None else arch.widths[g_out])
