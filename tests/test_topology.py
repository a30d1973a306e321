"""The layer table (coevo.models.topology) against the real network: every consumer derives from it, so
it must describe the generator exactly (keys, kinds, kernels, unit layers, feature taps)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from coevo.deploy.latency import _unit, _units
from coevo.models import GeneratorArch, ResnetGenerator
from coevo.models.topology import group_wiring, resnet_convs
from coevo.prune.groups import channel_groups
from coevo.prune.macs import count_params

REFERENCE_KEYS_9 = {"model.1", "model.4", "model.7", "model.10.conv_block.1", "model.18.conv_block.5", "model.19",
                    "model.22", "model.26"}


@pytest.mark.parametrize("n_blocks", [1, 2, 6, 9])
def test_layer_table_matches_the_generator(n_blocks):
    arch = GeneratorArch(ngf=4, n_blocks=n_blocks)
    net = ResnetGenerator(arch)
    convs = dict(net.named_convs())
    params = dict(net.named_parameters())
    specs = resnet_convs(n_blocks)
    assert [s.name for s in specs] == list(convs)
    for s in specs:
        conv = convs[s.name]
        assert params[f"{s.key}.weight"] is conv.weight  # the state_dict key is where the conv lives
        assert isinstance(conv, nn.ConvTranspose2d) == (s.kind == "up")
        assert conv.stride == ((2, 2) if s.kind in ("down", "up") else (1, 1)) and conv.kernel_size == (s.kernel,) * 2
        width = {**arch.widths, None: None}
        assert conv.in_channels == (arch.in_channels if s.cin is None else width[s.cin])
        assert conv.out_channels == (arch.out_channels if s.cout is None else width[s.cout])
    assert count_params(arch) == sum(p.numel() for p in net.parameters())
    if n_blocks == 9:  # the reference CycleGAN's own layout
        assert REFERENCE_KEYS_9 <= {s.key for s in specs}


def test_unit_layers_are_the_generator_layers():
    arch = GeneratorArch(ngf=4, n_blocks=2)
    net = ResnetGenerator(arch)
    flat = [m for m in net.model if not hasattr(m, "conv_block")]
    blocks = [m for m in net.model if hasattr(m, "conv_block")]
    for spec, (kind, io, _) in zip(resnet_convs(2), _units(arch)):
        assert spec.unit == kind
        built = [type(m) for m in _unit(kind, *io(arch.widths))]
        if spec.block is None:
            end = spec.end - sum(1 for m in net.model[:spec.end] if hasattr(m, "conv_block"))
            start = end - len(built) + 1
            assert [type(m) for m in flat[start:end + 1]] == built
        else:
            sub = list(blocks[spec.block].conv_block)
            pad = spec.sub - 1 if spec.kind == "same" else spec.sub
            assert [type(m) for m in sub[pad:pad + len(built)]] == built


def test_unit_inputs_run_at_the_table_scale():
    """Each unit's input is ``size / scale`` on a side in the real forward."""
    arch = GeneratorArch(ngf=4, n_blocks=2)
    net = ResnetGenerator(arch).eval()
    seen = {}
    for name, conv in net.named_convs():
        conv.register_forward_hook(lambda m, inp, out, name=name: seen.update({name: inp[0].shape[-1]}))
    with torch.no_grad():
        net(torch.zeros(1, 3, 32, 32))
    for spec in resnet_convs(2):
        padded = 2 * (spec.kernel // 2) if spec.kind == "same" else 0
        assert seen[spec.name] - padded == 32 // spec.scale, spec.name


def test_groups_and_feature_taps_come_from_the_table():
    arch = GeneratorArch(ngf=4, n_blocks=3)
    wiring = group_wiring(3)
    assert wiring["trunk"] == (("down2", "block0.conv2", "block1.conv2", "block2.conv2"),
                               ("block0.conv1", "block1.conv1", "block2.conv1", "up1"))
    assert [g.name for g in channel_groups(arch)] == list(arch.widths)
    net = ResnetGenerator(arch).eval()
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    stem, down2, block2 = net.features(x, ["stem", "down2", "block2"])
    assert stem.shape[1:] == (4, 16, 16) and down2.shape[1:] == (16, 4, 4) and block2.shape[1:] == (16, 4, 4)
    assert stem.min() >= 0 and down2.min() >= 0  # taps sit after the unit's ReLU
