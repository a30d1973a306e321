"""Either generator family's layer table, through one door.

The pruning code (:mod:`coevo.prune`) asks an architecture for its channel groups and for each
convolution's kind, kernel, input groups and output group; this module answers from the ResNet
table (:func:`coevo.models.topology.resnet_convs`) or the U-Net one
(:func:`coevo.models.unet.unet_convs`). A conv's input is a tuple of groups because a U-Net
up-conv reads a concatenation: its input-channel index space is those groups side by side.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import List, Mapping, Optional, Tuple, Union

from .generator import GeneratorArch, group_names
from .topology import resnet_convs
from .unet import UnetArch, unet_convs, unet_group_names

Arch = Union[GeneratorArch, UnetArch]


@dataclass(frozen=True)
class ConvIO:
    """A convolution as pruning sees it. ``inputs``: its input groups, concatenated in order
    (None: the image); ``output``: its output group (None: the image)."""

    name: str
    kind: str
    kernel: int
    inputs: Tuple[Optional[str], ...]
    output: Optional[str]


def layout_key(arch: Arch) -> Tuple[str, int]:
    """Hashable name of the layer table an architecture uses: ``("resnet", n_blocks)`` or ``("unet", num_downs)``."""
    if isinstance(arch, UnetArch):
        return ("unet", arch.num_downs)
    return ("resnet", arch.n_blocks)


def arch_group_names(arch: Arch) -> List[str]:
    """The prunable channel groups of ``arch`` in data-flow order."""
    if isinstance(arch, UnetArch):
        return unet_group_names(arch.num_downs)
    return group_names(arch.n_blocks)


@lru_cache(maxsize=128)
def convs_of_layout(key: Tuple[str, int]) -> Tuple[ConvIO, ...]:
    family, n = key
    if family == "unet":
        return tuple(ConvIO(s.name, s.kind, s.kernel, s.cins, s.cout) for s in unet_convs(n))
    return tuple(ConvIO(s.name, s.kind, s.kernel, (s.cin,), s.cout) for s in resnet_convs(n))


def arch_convs(arch: Arch) -> Tuple[ConvIO, ...]:
    """Every convolution of ``arch``'s family in data-flow order."""
    return convs_of_layout(layout_key(arch))


def arch_from_dict(d: Mapping) -> Arch:
    """A :class:`GeneratorArch` or :class:`UnetArch` from its ``to_dict`` form (by ``kind``)."""
    if isinstance(d, Mapping) and d.get("kind") == "unet_generator":
        return UnetArch.from_dict(d)
    return GeneratorArch.from_dict(d)


def describe_arch(arch: Arch) -> str:
    if isinstance(arch, UnetArch):
        return (f"a {arch.num_downs}-level {arch.in_channels}->{arch.out_channels} U-Net (ngf={arch.ngf}, "
                f"norm={arch.norm}, dropout={arch.dropout})")
    return (f"a {arch.n_blocks}-block {arch.in_channels}->{arch.out_channels} generator (ngf={arch.ngf}, "
            f"norm={arch.norm}, padding={arch.padding})")


class AnyGeneratorArch:
    """``from_dict`` of either family (by ``kind``), for readers that take an architecture class."""

    from_dict = staticmethod(arch_from_dict)
