"""U-Net generator compatible with the reference ``--netG unet_256`` / ``unet_128`` checkpoints.

The reference ``UnetGenerator`` (junyanz/pytorch-CycleGAN-and-pix2pix) nests one
``UnetSkipConnectionBlock`` per down-sampling; every block but the outermost returns
``torch.cat([x, self.model(x)], 1)``. :class:`UnetGenerator` keeps that nesting (one
:class:`UnetBlock` per level, each with a ``model`` Sequential at the same indices) so the
state_dict keys and shapes match the reference's, and takes every prunable width from a
:class:`UnetArch`, so full and slim networks are one class.

Levels are numbered from the outside in, 1..``num_downs``. Level ``i`` holds two convolutions:

* ``down{i}``: 4x4 stride-2 conv, preceded by LeakyReLU(0.2) (not at level 1) and followed by
  the norm (not at levels 1 and ``num_downs``). Its output channels are the group ``down{i}``.
* ``up{i}``: 4x4 stride-2 transposed conv preceded by ReLU; it reads the concatenation
  ``[down{i}, up{i+1}]`` (at the innermost level: ``down{num_downs}`` alone) and is followed
  by the norm (and dropout 0.5 at levels 5..num_downs-1 when trained with dropout), or by
  Tanh at level 1, whose output is the image. Its output channels are the group ``up{i}``.

So a pruned filter of ``down{i}`` removes input channels of ``down{i+1}`` and the first half of
``up{i}``'s input; a pruned filter of ``up{i+1}`` the second half of ``up{i}``'s input.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

UNET_VERSION = 1
NORMS = ("batch", "instance", "none")
MIN_DOWNS = 5  # the reference always builds the outermost, three widening and the innermost block


def unet_group_names(num_downs: int) -> List[str]:
    """Prunable channel groups in data-flow order: down1..downN, then upN..up2 (up1 is the image)."""
    return [f"down{i}" for i in range(1, num_downs + 1)] + [f"up{i}" for i in range(num_downs, 1, -1)]


def unet_full_widths(ngf: int, num_downs: int) -> Dict[str, int]:
    """Widths of the reference network: ngf, 2ngf, 4ngf, then 8ngf down to the innermost level."""
    down = {i: ngf * min(2 ** (i - 1), 8) for i in range(1, num_downs + 1)}
    widths = {f"down{i}": down[i] for i in down}
    widths.update({f"up{i}": down[i - 1] for i in range(2, num_downs + 1)})
    return {n: widths[n] for n in unet_group_names(num_downs)}


@dataclass(frozen=True)
class UnetConvSpec:
    """One convolution of the U-Net: its layer-table row.

    ``cins``: the channel groups its input is the concatenation of, in order (``(None,)``: the
    image). ``cout``: its output group (None: the image). ``scale``: its input is ``size / scale``
    pixels on a side. ``key``: state_dict prefix of the conv. ``norm_index``: index of the norm that
    follows it in its block's ``model`` (None where the reference has none).
    """

    name: str
    kind: str  # "down" (4x4 conv, stride 2, zero padding 1) | "up" (4x4 transposed, stride 2, padding 1)
    kernel: int
    cins: Tuple[Optional[str], ...]
    cout: Optional[str]
    level: int
    scale: int
    block: str
    index: int
    norm_index: Optional[int]

    @property
    def key(self) -> str:
        return f"{self.block}.model.{self.index}"

    @property
    def cin(self) -> Optional[str]:
        """The single input group (raises for a conv that reads a concatenation)."""
        if len(self.cins) != 1:
            raise ValueError(f"{self.name} reads the concatenation {self.cins}")
        return self.cins[0]

    def out_channels(self, weight_shape: Tuple[int, ...]) -> int:
        return int(weight_shape[1] if self.kind == "up" else weight_shape[0])


def block_prefix(level: int) -> str:
    """Module path of level ``level``'s block: ``model``, ``model.model.1``, ``model.model.1.model.3``..."""
    if level == 1:
        return "model"
    return "model.model.1" + ".model.3" * (level - 2)


@lru_cache(maxsize=64)
def unet_convs(num_downs: int) -> Tuple[UnetConvSpec, ...]:
    """The layer table of the reference U-Net with ``num_downs`` levels, in data-flow order."""
    n = int(num_downs)
    downs, ups = [], []
    for i in range(1, n + 1):
        prefix = block_prefix(i)
        outer, inner = i == 1, i == n
        cin = None if outer else f"down{i - 1}"
        downs.append(UnetConvSpec(f"down{i}", "down", 4, (cin,), f"down{i}", i, 2 ** (i - 1), prefix,
                                  0 if outer else 1, None if (outer or inner) else 2))
        up_in = (f"down{i}",) if inner else (f"down{i}", f"up{i + 1}")
        up_index = 3 if (outer or inner) else 5
        ups.append(UnetConvSpec(f"up{i}", "up", 4, up_in, None if outer else f"up{i}", i, 2 ** i, prefix,
                                up_index, None if outer else up_index + 1))
    return tuple(downs + ups[::-1])


@dataclass
class UnetArch:
    """Everything needed to rebuild a U-Net generator; saved next to its weights.

    ``widths`` maps each group of :func:`unet_group_names` to its filters; ``ngf`` is the
    teacher's base width. ``dropout`` cannot be read from weights (Dropout has no parameters).
    """

    num_downs: int = 8
    ngf: int = 64
    in_channels: int = 3
    out_channels: int = 3
    widths: Dict[str, int] = field(default_factory=dict)
    norm: str = "batch"
    dropout: bool = False

    def __post_init__(self) -> None:
        if self.num_downs < MIN_DOWNS:
            raise ValueError(f"a U-Net generator has at least {MIN_DOWNS} down-samplings, got {self.num_downs}")
        if self.ngf < 1 or self.in_channels < 1 or self.out_channels < 1:
            raise ValueError(f"ngf, in_channels and out_channels must be >= 1, got {self.ngf}, "
                             f"{self.in_channels}, {self.out_channels}")
        if self.norm not in NORMS:
            raise ValueError(f"U-Net norm must be one of {NORMS}, got {self.norm!r}")
        self.dropout = bool(self.dropout)
        if not self.widths:
            self.widths = unet_full_widths(self.ngf, self.num_downs)
        expected = unet_group_names(self.num_downs)
        unknown = sorted(set(self.widths) - set(expected))
        missing = [g for g in expected if g not in self.widths]
        if unknown or missing:
            raise ValueError(f"U-Net widths do not match a {self.num_downs}-level U-Net: unknown groups "
                             f"{unknown}, missing groups {missing}")
        bad = {k: v for k, v in self.widths.items() if int(v) < 1}
        if bad:
            raise ValueError(f"every channel group needs at least one filter; got {bad}")
        self.widths = {g: int(self.widths[g]) for g in expected}

    @property
    def bias(self) -> bool:
        """Whether the convs carry a bias (the reference: only under instance norm; the last up-conv always)."""
        return self.norm == "instance"

    @property
    def is_full(self) -> bool:
        return self.widths == unet_full_widths(self.ngf, self.num_downs)

    @property
    def size_multiple(self) -> int:
        """Image sides must be multiples of this (every level halves, and the skips must line up)."""
        return 2 ** self.num_downs

    def with_widths(self, widths: Mapping[str, int]) -> "UnetArch":
        return UnetArch(self.num_downs, self.ngf, self.in_channels, self.out_channels, dict(widths),
                        self.norm, self.dropout)

    def to_dict(self) -> dict:
        return {"version": UNET_VERSION, "kind": "unet_generator", "num_downs": self.num_downs, "ngf": self.ngf,
                "in_channels": self.in_channels, "out_channels": self.out_channels,
                "widths": dict(self.widths), "norm": self.norm, "dropout": self.dropout}

    @classmethod
    def from_dict(cls, d: Mapping) -> "UnetArch":
        if d.get("kind") != "unet_generator":
            raise ValueError(f"not a U-Net generator architecture: kind={d.get('kind')!r}")
        if int(d.get("version", 1)) > UNET_VERSION:
            raise ValueError(f"architecture version {d['version']} is newer than this coevo understands "
                             f"({UNET_VERSION}); upgrade coevo")
        return cls(num_downs=int(d["num_downs"]), ngf=int(d["ngf"]), in_channels=int(d.get("in_channels", 3)),
                   out_channels=int(d.get("out_channels", 3)),
                   widths={k: int(v) for k, v in d["widths"].items()}, norm=str(d.get("norm", "batch")),
                   dropout=bool(d.get("dropout", False)))


def norm_layer(norm: str, channels: int) -> nn.Module:
    """The reference's norms: BatchNorm (affine, running stats), InstanceNorm (neither), or none."""
    if norm == "batch":
        return nn.BatchNorm2d(channels, affine=True, track_running_stats=True)
    if norm == "instance":
        return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)
    return nn.Identity()


class UnetBlock(nn.Module):
    """One level, laid out as the reference ``UnetSkipConnectionBlock`` (same ``model`` indices)."""

    def __init__(self, arch: UnetArch, level: int, submodule: Optional[nn.Module]) -> None:
        super().__init__()
        a, n, w = arch, arch.num_downs, arch.widths
        self.outermost = level == 1
        innermost = level == n
        cin = a.in_channels if self.outermost else w[f"down{level - 1}"]
        inner = w[f"down{level}"]
        cout = a.out_channels if self.outermost else w[f"up{level}"]
        up_in = inner if innermost else inner + w[f"up{level + 1}"]
        down = nn.Conv2d(cin, inner, kernel_size=4, stride=2, padding=1, bias=a.bias)
        if self.outermost:
            up = nn.ConvTranspose2d(up_in, cout, kernel_size=4, stride=2, padding=1)
            layers = [down, submodule, nn.ReLU(True), up, nn.Tanh()]
        elif innermost:
            up = nn.ConvTranspose2d(up_in, cout, kernel_size=4, stride=2, padding=1, bias=a.bias)
            layers = [nn.LeakyReLU(0.2, True), down, nn.ReLU(True), up, norm_layer(a.norm, cout)]
        else:
            up = nn.ConvTranspose2d(up_in, cout, kernel_size=4, stride=2, padding=1, bias=a.bias)
            layers = [nn.LeakyReLU(0.2, True), down, norm_layer(a.norm, inner), submodule, nn.ReLU(True), up,
                      norm_layer(a.norm, cout)]
            if a.dropout and level >= 5:  # the reference's ngf*8 middle blocks
                layers.append(nn.Dropout(0.5))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.outermost:
            return self.model(x)
        return torch.cat([x, self.model(x)], 1)


class UnetGenerator(nn.Module):
    """Reference U-Net generator. Input and output: NCHW, values in [-1, 1]; sides multiples of 2**num_downs."""

    def __init__(self, arch: UnetArch | None = None) -> None:
        super().__init__()
        self.arch = arch if arch is not None else UnetArch()
        block: Optional[nn.Module] = None
        for level in range(self.arch.num_downs, 0, -1):
            block = UnetBlock(self.arch, level, block)
        self.model = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    # what the teacher-features perceptual metric reads (the ResNet's stem/down1/down2/middle block)
    perceptual_layers = ("down1", "down2", "down3", "down4")

    def features(self, x: torch.Tensor, layers: Sequence[str]) -> List[torch.Tensor]:
        """Encoder activations of ``x`` (NCHW, [-1, 1]), one per name in ``layers`` (``down1``..``downN``: the
        output of that level's down-conv and its norm), in that order; runs only as deep as asked."""
        levels = {f"down{i}": i for i in range(1, self.arch.num_downs + 1)}
        unknown = [n for n in layers if n not in levels]
        if unknown:
            raise KeyError(f"no feature layer {unknown[0]!r}; choose down1...down{self.arch.num_downs}")
        out, h = {}, x
        for level in range(1, max(levels[n] for n in layers) + 1):
            block = self._block(level).model
            if level == 1:
                h = block[0](h)
            else:  # not the block's in-place LeakyReLU: h is kept as a feature
                h = block[1](nn.functional.leaky_relu(h, 0.2))
                if level < self.arch.num_downs:
                    h = block[2](h)
            out[f"down{level}"] = h
        return [out[n] for n in layers]

    def _block(self, level: int) -> UnetBlock:
        return self.get_submodule(block_prefix(level))

    def named_convs(self) -> Iterator[Tuple[str, nn.Module]]:
        """(name, conv) for every convolution in data-flow order: down1..downN, upN..up1."""
        for spec in unet_convs(self.arch.num_downs):
            yield spec.name, self._block(spec.level).model[spec.index]

    def named_norms(self) -> Iterator[Tuple[str, nn.Module]]:
        """(conv name, the norm right after it) for the convs the reference follows with a norm."""
        for spec in unet_convs(self.arch.num_downs):
            if spec.norm_index is not None:
                yield spec.name, self._block(spec.level).model[spec.norm_index]

    def named_group_outputs(self) -> Iterator[Tuple[str, nn.Module]]:
        """(conv name, the module whose output its consumers read: the norm after it, else the conv).

        A channel zeroed there stays zero in every consumer's input (LeakyReLU, ReLU, dropout and
        the concatenation keep zeros); zeroing the conv's output would not survive a batch norm.
        """
        norms = dict(self.named_norms())
        for name, conv in self.named_convs():
            yield name, norms.get(name, conv)


def is_unet_state_dict(state_dict: Mapping[str, torch.Tensor]) -> bool:
    return "model.model.0.weight" in state_dict


def infer_unet_arch(state_dict: Mapping[str, torch.Tensor], dropout: bool = False) -> UnetArch:
    """Recover a :class:`UnetArch` from a reference (or coevo) U-Net state_dict.

    Levels, widths, channels and norm come from the keys and shapes (batch norm has
    ``running_mean``; instance norm leaves no keys but gives the convs a bias; no norm neither).
    ``dropout`` has no key and is taken as given.
    """
    keys = set(state_dict)
    if not is_unet_state_dict(state_dict):
        raise ValueError("not a U-Net generator state_dict: no 'model.model.0.weight'")
    n = 1
    while f"{block_prefix(n + 1)}.model.1.weight" in keys:
        n += 1
    if n < MIN_DOWNS:
        raise ValueError(f"this U-Net generator has {n} levels (keys 'model.model.0...'); the reference builds at "
                         f"least {MIN_DOWNS}: the file is incomplete or of another network")
    specs = unet_convs(n)
    missing = [f"{s.key}.weight" for s in specs if f"{s.key}.weight" not in keys]
    if missing:
        raise ValueError(f"this U-Net generator's state_dict lacks {missing[:3]}; the file is incomplete or of "
                         "another network")
    if any(k.endswith("running_mean") for k in keys):
        norm = "batch"
    elif f"{block_prefix(2)}.model.1.bias" in keys:
        norm = "instance"
    else:
        norm = "none"
    widths: Dict[str, int] = {}
    for s in specs:
        if s.cout is not None:
            widths[s.cout] = s.out_channels(tuple(state_dict[f"{s.key}.weight"].shape))
    first, last = state_dict[f"{specs[0].key}.weight"], state_dict[f"{specs[-1].key}.weight"]
    return UnetArch(num_downs=n, ngf=int(widths["down1"]), in_channels=int(first.shape[1]),
                    out_channels=int(last.shape[1]), widths=widths, norm=norm, dropout=dropout)
