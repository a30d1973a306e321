"""Exact multiply-accumulate (MAC) and parameter counts from the architecture alone.

Nothing is run: the counts are sums of ``k*k * C_in * C_out * pixels`` over the
convolutions, so a search can price every candidate in microseconds.

Only convolutions are counted (``C_out`` outputs each needing ``k*k*C_in``
MACs per pixel); InstanceNorm, ReLU, Tanh, padding and the residual additions
are not, as in every published table. Biases are not counted either.
Two conventions differ only for the transposed (up-sampling) convolutions;
see :data:`MAC_CONVENTIONS`. Always state the convention next to a MAC figure.
"""
from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, Dict, Mapping, Sequence, Tuple, Union

import numpy as np

from ..models.generator import GeneratorArch
from ..models.topology import conv_bias, resnet_convs
from ..models.family import arch_group_names, convs_of_layout
from ..models.unet import UnetArch, unet_convs
from .groups import conv_io
from ..errors import CoevoError

if TYPE_CHECKING:  # genome.py does not import this module; keep it that way
    import torch
    from .genome import Genome

Size = Union[int, Sequence[int]]

MAC_CONVENTIONS: Dict[str, str] = {
    "published": (
        "Convolution MACs with a transposed convolution counted per OUTPUT pixel "
        "(torchprofile; the GAN Compression / CycleGAN tables). Full ngf=64, 9-block "
        "generator at 256x256: 56.80G."
    ),
    "flopcounter": (
        "Convolution MACs with a transposed convolution counted per INPUT pixel, as "
        "torch.utils.flop_counter.FlopCounterMode does (its FLOP total is 2x these MACs). "
        "Full ngf=64, 9-block generator at 256x256: 49.55G."
    ),
}

_IMAGE_IN = "<image in>"
_IMAGE_OUT = "<image out>"


class BudgetError(CoevoError, ValueError):
    """A MAC budget no genome can meet (below the MACs of the narrowest allowed network)."""


def hw(size: Size, width: int | None = None) -> Tuple[int, int]:
    """``(height, width)`` from an int (square), an ``(h, w)`` pair, or ``height`` and ``width``."""
    if isinstance(size, (tuple, list)):
        if width is not None or len(size) != 2:
            raise ValueError(f"give the image size as an int or an (height, width) pair, got {size!r}")
        h, w = size
    else:
        h, w = size, size if width is None else width
    h, w = int(h), int(w)
    if h < 1 or w < 1:
        raise ValueError(f"image size must be positive, got {h}x{w}")
    return h, w


def _check_convention(convention: str) -> None:
    if convention not in MAC_CONVENTIONS:
        raise ValueError(f"unknown MAC convention {convention!r}; choose one of {sorted(MAC_CONVENTIONS)}")


def _layer_shapes(n_blocks: int) -> Tuple[Tuple[int, str], ...]:
    """(kernel, kind) of every conv in data-flow order; kind: "same" (reflection padded, size kept),
    "down" (stride 2, zero padding 1), "up" (transposed, stride 2, output_padding 1)."""
    return tuple((spec.kernel, spec.kind) for spec in resnet_convs(n_blocks))


@lru_cache(maxsize=1024)
def mac_terms(n_blocks: int, height: int, width: int, convention: str) -> Tuple[Tuple[int, str, str], ...]:
    """``(k*k*pixels, input group, output group)`` for every conv: MACs = sum(coef * C_in * C_out)."""
    _check_convention(convention)
    terms = []
    h, w = height, width
    for (_, (cin, cout)), (k, kind) in zip(conv_io(n_blocks), _layer_shapes(n_blocks)):
        h_in, w_in = h, w
        if kind == "down":  # (n + 2*1 - 3) // 2 + 1
            h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
        elif kind == "up":  # (n - 1)*2 - 2*1 + 3 + 1
            h, w = 2 * h, 2 * w
        pixels = h_in * w_in if (kind == "up" and convention == "flopcounter") else h * w
        terms.append((k * k * pixels, cin or _IMAGE_IN, cout or _IMAGE_OUT))
    return tuple(terms)


@lru_cache(maxsize=1024)
def unet_mac_terms(num_downs: int, height: int, width: int, convention: str) -> Tuple[Tuple[int, str, str], ...]:
    """:func:`mac_terms` of a U-Net: a conv reading a concatenation gives one term per input group
    (its MACs are linear in its input channels)."""
    _check_convention(convention)
    step = 2 ** num_downs
    if height % step or width % step:
        raise ValueError(f"a {num_downs}-level U-Net needs sides that are multiples of {step}, got {height}x{width}")
    terms = []
    h, w = height, width
    for conv in convs_of_layout(("unet", num_downs)):
        h_in, w_in = h, w
        if conv.kind == "down":  # (n + 2*1 - 4) // 2 + 1
            h, w = h // 2, w // 2
        else:  # (n - 1)*2 - 2*1 + 4
            h, w = 2 * h, 2 * w
        pixels = h_in * w_in if (conv.kind == "up" and convention == "flopcounter") else h * w
        for g in conv.inputs:
            terms.append((conv.kernel * conv.kernel * pixels, g or _IMAGE_IN, conv.output or _IMAGE_OUT))
    return tuple(terms)


def _terms(layout, height: int, width: int, convention: str) -> Tuple[Tuple[int, str, str], ...]:
    """MAC terms of a ResNet (``layout``: its block count) or of an architecture of either family."""
    if isinstance(layout, UnetArch):
        return unet_mac_terms(layout.num_downs, height, width, convention)
    return mac_terms(layout if isinstance(layout, int) else layout.n_blocks, height, width, convention)


def macs_from_widths(widths: Mapping[str, int], n_blocks, height: int, width: int,
                     convention: str = "published", in_channels: int = 3, out_channels: int = 3) -> int:
    """MACs for a widths dict (group name -> filters) without building a :class:`GeneratorArch`.

    ``n_blocks``: a ResNet's block count, or an architecture of either family (its layer table)."""
    get = widths.__getitem__
    total = 0
    for coef, a, b in _terms(n_blocks, height, width, convention):
        ca = in_channels if a == _IMAGE_IN else get(a)
        cb = out_channels if b == _IMAGE_OUT else get(b)
        total += coef * ca * cb
    return int(total)


def count_macs(arch: GeneratorArch, height: Size, width: int | None = None,
               convention: str = "published") -> int:
    """Exact convolution MACs of one forward of a 1x``in_channels``x``height``x``width`` image.

    ``convention``: "published" (transposed conv per output pixel; 56.80G for the full
    ngf=64 9-block generator at 256x256) or "flopcounter" (per input pixel, as
    ``FlopCounterMode``/2; 49.55G). Norms, activations, padding and additions are not counted.
    """
    h, w = hw(height, width)
    return macs_from_widths(arch.widths, _layout(arch), h, w, convention, arch.in_channels, arch.out_channels)


def macs_of_genome(genome: "Genome", height: Size, width: int | None = None, convention: str = "published") -> int:
    """MACs of the slim network a :class:`~coevo.prune.Genome` describes (see :func:`count_macs`)."""
    h, w = hw(height, width)
    a = genome.arch
    return macs_from_widths(genome.widths(), _layout(a), h, w, convention, a.in_channels, a.out_channels)


def count_params(arch: Union[GeneratorArch, "torch.nn.Module"]) -> int:
    """Exact parameter count of a generator architecture (conv weights and biases, which the reference
    gives a conv only under InstanceNorm and to the head; a BatchNorm's weight and bias; InstanceNorm has
    none), or of any network given as a module (its parameters)."""
    if isinstance(arch, UnetArch):
        return _unet_params(arch)
    if not isinstance(arch, GeneratorArch):
        return sum(p.numel() for p in arch.parameters())
    ext = dict(arch.widths)
    ext[_IMAGE_IN], ext[_IMAGE_OUT] = arch.in_channels, arch.out_channels
    total = 0
    for (_, (cin, cout)), spec in zip(conv_io(arch.n_blocks), resnet_convs(arch.n_blocks)):
        c_in, c_out = ext[cin or _IMAGE_IN], ext[cout or _IMAGE_OUT]
        total += c_in * c_out * spec.kernel * spec.kernel + c_out * conv_bias(spec, arch.norm)
        if arch.norm == "batch" and spec.tail != "tanh":
            total += 2 * c_out
    return total


def _layout(arch):
    return arch if isinstance(arch, UnetArch) else arch.n_blocks


def _unet_params(arch: UnetArch) -> int:
    """Conv weights, the biases the reference gives (every conv under instance norm, the last
    up-conv always) and the batch norms' weight and bias."""
    ext = {**arch.widths, None: None}
    total = 0
    for spec in unet_convs(arch.num_downs):
        c_in = sum(arch.in_channels if g is None else ext[g] for g in spec.cins)
        c_out = arch.out_channels if spec.cout is None else ext[spec.cout]
        total += c_in * c_out * spec.kernel * spec.kernel
        total += c_out if (arch.bias or spec.cout is None) else 0
        total += 2 * c_out if (arch.norm == "batch" and spec.norm_index is not None) else 0
    return total


def min_macs(arch: GeneratorArch, size: Size, min_channels: int = 1, convention: str = "published") -> int:
    """MACs of the narrowest network allowed: every group at ``min_channels`` (or its full width if smaller)."""
    h, w = hw(size)
    widths = {n: min(int(min_channels), c) for n, c in arch.widths.items()}
    return macs_from_widths(widths, _layout(arch), h, w, convention, arch.in_channels, arch.out_channels)


class MacTable:
    """MACs of many width vectors at once (numpy), for budget searches over scales.

    Width vectors hold one int per group in :func:`group_names` order.
    """

    def __init__(self, arch: GeneratorArch, size: Size, convention: str = "published") -> None:
        h, w = hw(size)
        names = arch_group_names(arch)
        index = {n: i for i, n in enumerate(names)}
        index[_IMAGE_IN], index[_IMAGE_OUT] = len(names), len(names) + 1
        terms = _terms(_layout(arch), h, w, convention)
        self.names = names
        self._a = np.array([index[a] for _, a, _ in terms])
        self._b = np.array([index[b] for _, _, b in terms])
        self._coef = np.array([c for c, _, _ in terms], dtype=np.int64)
        self._image = np.array([arch.in_channels, arch.out_channels], dtype=np.int64)

    def __call__(self, widths: np.ndarray) -> np.ndarray:
        """``widths``: int array ``[..., n_groups]`` -> MACs ``[...]`` (int64, exact)."""
        widths = np.asarray(widths, dtype=np.int64)
        image = np.broadcast_to(self._image, widths.shape[:-1] + (2,))
        ext = np.concatenate([widths, image], axis=-1)
        return (ext[..., self._a] * ext[..., self._b]) @ self._coef
