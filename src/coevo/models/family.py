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

from torch import nn

from ..core.limits import SIZE_MULTIPLE
from .generator import GeneratorArch, ResnetGenerator, group_names
from .topology import resnet_convs
from .unet import UnetArch, UnetGenerator, unet_convs, unet_group_names

Arch = Union[GeneratorArch, UnetArch]
GENERATOR_CLASSES = (ResnetGenerator, UnetGenerator)


def build_generator(arch: Arch) -> nn.Module:
    """A freshly initialised generator of ``arch``'s family (:class:`ResnetGenerator` or :class:`UnetGenerator`)."""
    return UnetGenerator(arch) if isinstance(arch, UnetArch) else ResnetGenerator(arch)


def is_generator(model) -> bool:
    """Whether ``model`` is a trainable coevo generator of either family (not an exported program)."""
    return isinstance(model, GENERATOR_CLASSES)


class PaddedToMultiple(nn.Module):
    """``model`` run on any image size: NCHW input padded at the bottom and right up to multiples of
    ``multiple`` (reflection, or replicate where a side is too short to mirror), the output cropped back.

    How a U-Net (sides multiples of 2**num_downs) translates and is evaluated at an image's own size.
    ``arch``: the wrapped model's."""

    def __init__(self, model: nn.Module, multiple: int) -> None:
        super().__init__()
        self.model, self.multiple = model, int(multiple)
        self.arch = getattr(model, "arch", None)

    def forward(self, x):
        h, w = x.shape[-2:]
        pad_h, pad_w = (-h) % self.multiple, (-w) % self.multiple
        if not pad_h and not pad_w:
            return self.model(x)
        mode = "reflect" if pad_h < h and pad_w < w else "replicate"
        return self.model(nn.functional.pad(x, (0, pad_w, 0, pad_h), mode=mode))[..., :h, :w]


def any_size(model: nn.Module) -> nn.Module:
    """``model`` itself, or wrapped in :class:`PaddedToMultiple` when its architecture (eager or exported) is a
    U-Net's: then it takes images of any size (a ResNet's inputs are rounded to multiples of 4 by the readers)."""
    arch = getattr(model, "arch", None)
    if isinstance(arch, UnetArch) and not isinstance(model, PaddedToMultiple):
        return PaddedToMultiple(model, arch.size_multiple)
    return model


def family_name(arch: Arch) -> str:
    """``resnet`` or ``unet``: the generator family, as run records name it."""
    return "unet" if isinstance(arch, UnetArch) else "resnet"


def size_multiple(arch: Arch) -> int:
    """Image sides ``arch``'s generator runs at must be multiples of this (a ResNet: 4; a U-Net: 2**num_downs)."""
    return arch.size_multiple if isinstance(arch, UnetArch) else SIZE_MULTIPLE


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
