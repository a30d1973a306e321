"""The ResNet generator's layer table: every convolution once, and everything derived from it.

One :class:`ConvSpec` per convolution, in data-flow order, says what the convolution is
(kernel, same-size / stride-2 down / transposed up), what follows it (norm and ReLU,
norm only, tanh), which channel group its input and output channels belong to, its
latency unit, the image-size divisor it runs at and where it lives in the reference
state_dict. From this one table:

* :class:`coevo.models.ResnetGenerator` builds its layers (:func:`unit_layers`) and finds
  its convolutions by name;
* :mod:`coevo.prune.groups` derives which convolutions produce and consume each channel group;
* :mod:`coevo.prune.macs` prices a network (kernel, stride and group of every convolution);
* :mod:`coevo.deploy.latency` builds and times each unit exactly as the generator builds it;
* :func:`coevo.models.generator.infer_arch_from_state_dict` reads each group's width from the
  state_dict key of one of its producers.

A second generator family adds its own table here (and its own builder); the channel groups,
MAC counts and latency units then follow from it.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Dict, List, Optional, Tuple

from torch import nn

KINDS = ("same", "down", "up")  # reflection-padded, size kept | stride 2, zero padding 1 | transposed, stride 2
TAILS = ("norm_relu", "norm", "tanh")
NORMS = ("instance", "batch", "none")  # the reference's --norm choices


@dataclass(frozen=True)
class ConvSpec:
    """One convolution of the generator and the layers that travel with it (its *unit*).

    ``cin``/``cout``: the channel group of its input / output channels (None: the image).
    ``unit``: the latency unit it is timed as. ``scale``: its input is ``size / scale`` pixels
    on a side. ``seq``: index into the generator's ``model`` Sequential of the conv (or of
    its residual block); ``sub``: index into the block's ``conv_block`` (None outside blocks).
    ``end``: index into ``model`` of the unit's last layer (for feature taps).
    ``dropout``: a Dropout(0.5) follows the unit's ReLU (the reference's ``--use_dropout``,
    inside residual blocks only), which shifts every later layer of the block by one.
    """

    name: str
    kind: str
    kernel: int
    tail: str
    cin: Optional[str]
    cout: Optional[str]
    unit: str
    scale: int
    seq: int
    sub: Optional[int]
    end: int
    dropout: bool = False

    @property
    def key(self) -> str:
        """State_dict prefix of the conv: ``model.1``, ``model.10.conv_block.5``."""
        return f"model.{self.seq}" if self.sub is None else f"model.{self.seq}.conv_block.{self.sub}"

    @property
    def block(self) -> Optional[int]:
        return int(self.name[5:].split(".")[0]) if self.name.startswith("block") else None

    def out_channels(self, weight_shape: Tuple[int, ...]) -> int:
        """Output channels from the conv's weight shape (a transposed conv stores ``[in, out, k, k]``)."""
        return int(weight_shape[1] if self.kind == "up" else weight_shape[0])


def _padding(kind: str, kernel: int) -> int:
    return kernel // 2 if kind == "same" else 0


def _n_layers(kind: str, kernel: int, tail: str, dropout: bool = False) -> int:
    return (1 if _padding(kind, kernel) else 0) + 1 + {"norm_relu": 2, "norm": 1, "tanh": 1}[tail] + int(dropout)


def norm_layer(channels: int, norm: str = "instance") -> nn.Module:
    """The reference CycleGAN's norm layers (``get_norm_layer``): InstanceNorm with affine=False and no
    running stats; BatchNorm with affine weights and running stats; for ``none`` an Identity, which
    keeps the Sequential indices (and so the state_dict keys) of the normalised networks."""
    if norm == "instance":
        return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)
    if norm == "batch":
        return nn.BatchNorm2d(channels, affine=True, track_running_stats=True)
    if norm == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {norm!r}; choose one of {NORMS}")


def conv_bias(spec: ConvSpec, norm: str) -> bool:
    """The reference gives a conv a bias only under InstanceNorm (``use_bias = norm_layer ==
    nn.InstanceNorm2d``, false for batch and for none), except the head, which always has one."""
    return spec.tail == "tanh" or norm == "instance"


def unit_layers(spec: ConvSpec, cin: int, cout: int, norm: str = "instance") -> List[nn.Module]:
    """The layers of ``spec``'s unit with ``cin`` -> ``cout`` channels, exactly as the generator holds them."""
    layers: List[nn.Module] = []
    pad = _padding(spec.kind, spec.kernel)
    bias = conv_bias(spec, norm)
    if pad:
        layers.append(nn.ReflectionPad2d(pad))
    if spec.kind == "up":
        layers.append(nn.ConvTranspose2d(cin, cout, spec.kernel, stride=2, padding=1, output_padding=1, bias=bias))
    elif spec.kind == "down":
        layers.append(nn.Conv2d(cin, cout, spec.kernel, stride=2, padding=1, bias=bias))
    else:
        layers.append(nn.Conv2d(cin, cout, spec.kernel, bias=bias))
    if spec.tail in ("norm_relu", "norm"):
        layers.append(norm_layer(cout, norm))
    if spec.tail == "norm_relu":
        layers.append(nn.ReLU(True))
    elif spec.tail == "tanh":
        layers.append(nn.Tanh())
    if spec.dropout:
        layers.append(nn.Dropout(0.5))
    return layers


@lru_cache(maxsize=64)
def resnet_convs(n_blocks: int, dropout: bool = False) -> Tuple[ConvSpec, ...]:
    """The layer table of the reference ResNet generator with ``n_blocks`` residual blocks.

    ``dropout``: the blocks' first units end in a Dropout (``--use_dropout``). The norm
    (instance, batch or none) changes no index: ``none`` holds an Identity in the norm's place.
    """
    # (name, kind, kernel, tail, input group, output group, latency unit, input size divisor)
    rows = [("stem", "same", 7, "norm_relu", None, "stem", "stem", 1),
            ("down1", "down", 3, "norm_relu", "stem", "down1", "down1", 1),
            ("down2", "down", 3, "norm_relu", "down1", "trunk", "down2", 2)]
    for i in range(n_blocks):
        rows += [(f"block{i}.conv1", "same", 3, "norm_relu", "trunk", f"block{i}.inner", "block_in", 4),
                 (f"block{i}.conv2", "same", 3, "norm", f"block{i}.inner", "trunk", "block_out", 4)]
    rows += [("up1", "up", 3, "norm_relu", "trunk", "up1", "up1", 4),
             ("up2", "up", 3, "norm_relu", "up1", "up2", "up2", 2),
             ("head", "same", 7, "tanh", "up2", None, "head", 1)]
    specs, seq, sub = [], 0, 0
    for name, kind, kernel, tail, cin, cout, unit, scale in rows:
        pad = 1 if _padding(kind, kernel) else 0
        drop = dropout and name.endswith("conv1")
        size = _n_layers(kind, kernel, tail, drop)
        if name.startswith("block"):  # both units of a block live in one ResnetBlock at index seq
            specs.append(ConvSpec(name, kind, kernel, tail, cin, cout, unit, scale, seq, sub + pad, seq, drop))
            sub += size
            if name.endswith("conv2"):
                seq, sub = seq + 1, 0
        else:
            specs.append(ConvSpec(name, kind, kernel, tail, cin, cout, unit, scale, seq + pad, None,
                                  seq + size - 1))
            seq += size
    return tuple(specs)


def group_wiring(n_blocks: int) -> Dict[str, Tuple[Tuple[str, ...], Tuple[str, ...]]]:
    """``{group: (producer convs, consumer convs)}`` in data-flow order of first appearance."""
    wiring: Dict[str, Tuple[List[str], List[str]]] = {}
    for spec in resnet_convs(n_blocks):
        if spec.cout is not None:
            wiring.setdefault(spec.cout, ([], []))[0].append(spec.name)
        if spec.cin is not None:
            wiring.setdefault(spec.cin, ([], []))[1].append(spec.name)
    return {g: (tuple(p), tuple(c)) for g, (p, c) in wiring.items()}
