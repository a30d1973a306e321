"""Named channel groups of a ResNet generator: which filters must be kept or dropped together.

A *channel group* is one index space of feature-map channels. Its *producers*
are the convolutions whose output channels live in that space; its *consumers*
are the convolutions whose input channels do. Keeping channel ``c`` of a group
keeps filter ``c`` of every producer and input slice ``c`` of every consumer.

The residual trunk is one group because the skip connections add the output of
the second down-sampling conv and of every block's second conv channel by
channel: dropping a channel in one of them and not the others would misalign
the sum. Each block's inner channels (its first conv) feed only that block's
second conv, so they are free. ``tests/test_prune_groups.py`` checks this
declaration against the network's real data flow.

The final conv to RGB (``head``) is never pruned: its outputs are the image.

A U-Net (:mod:`coevo.models.unet`) has one group per conv output (``down{i}``, ``up{i}``);
an up-conv reads a concatenation, so it consumes two groups (:func:`conv_inputs`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Dict, List, Optional, Tuple

from ..models.family import arch_convs, arch_group_names
from ..models.generator import GeneratorArch, group_names
from ..models.topology import group_wiring, resnet_convs
from ..models.unet import UnetArch


@dataclass
class ChannelGroup:
    """One prunable channel index space.

    ``producers``/``consumers`` are conv names from
    :meth:`coevo.models.ResnetGenerator.named_convs` whose OUTPUT / INPUT
    channels this group indexes.
    """

    name: str
    size: int
    producers: List[str] = field(default_factory=list)
    consumers: List[str] = field(default_factory=list)

    @property
    def coupled(self) -> bool:
        """True when several convs write into this channel space (the residual trunk)."""
        return len(self.producers) > 1


def channel_groups(arch: GeneratorArch) -> List[ChannelGroup]:
    """The prunable channel groups of ``arch`` in :func:`coevo.models.group_names` order."""
    if isinstance(arch, UnetArch):
        wiring = {g: ([], []) for g in arch_group_names(arch)}
        for conv in arch_convs(arch):
            if conv.output is not None:
                wiring[conv.output][0].append(conv.name)
            for g in conv.inputs:
                if g is not None:
                    wiring[g][1].append(conv.name)
        return [ChannelGroup(g, arch.widths[g], p, c) for g, (p, c) in wiring.items()]
    return [
        ChannelGroup(name, arch.widths[name], list(producers), list(consumers))
        for name, (producers, consumers) in _wiring(arch.n_blocks).items()
    ]


def conv_names(n_blocks: int) -> List[str]:
    """Conv names in data-flow order, as :meth:`ResnetGenerator.named_convs` yields them
    (an architecture instead of ``n_blocks``: as its family's generator yields them)."""
    if not isinstance(n_blocks, int):
        return [conv.name for conv in arch_convs(n_blocks)]
    return [spec.name for spec in resnet_convs(n_blocks)]


def conv_group_map(arch: GeneratorArch) -> Dict[str, Tuple[Optional[str], Optional[str]]]:
    """``{conv name: (input group, output group)}`` in data-flow order.

    ``None`` marks the image side (the stem's input, the head's output): never pruned.
    A conv reading a concatenation (a U-Net up-conv) has a tuple of input groups.
    """
    if isinstance(arch, UnetArch):
        return {n: (ins if len(ins) > 1 else ins[0], out) for n, (ins, out) in conv_inputs(arch).items()}
    return dict(conv_io(arch.n_blocks))


def conv_inputs(arch) -> Dict[str, Tuple[Tuple[Optional[str], ...], Optional[str]]]:
    """``{conv name: (input groups, output group)}`` for either family: the input-channel index
    space of a conv is its input groups side by side, in this order."""
    return {conv.name: (conv.inputs, conv.output) for conv in arch_convs(arch)}


@lru_cache(maxsize=64)
def conv_io(n_blocks: int) -> Tuple[Tuple[str, Tuple[Optional[str], Optional[str]]], ...]:
    """Cached ``(conv name, (input group, output group))`` pairs; see :func:`conv_group_map`."""
    inputs: Dict[str, str] = {}
    outputs: Dict[str, str] = {}
    for group, (producers, consumers) in _wiring(n_blocks).items():
        outputs.update({conv: group for conv in producers})
        inputs.update({conv: group for conv in consumers})
    return tuple((name, (inputs.get(name), outputs.get(name))) for name in conv_names(n_blocks))


def _wiring(n_blocks: int) -> Dict[str, Tuple[Tuple[str, ...], Tuple[str, ...]]]:
    """``{group: (producer convs, consumer convs)}`` in group order, from the layer table."""
    wiring = group_wiring(n_blocks)
    return {name: wiring[name] for name in group_names(n_blocks)}
