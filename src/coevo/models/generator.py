"""ResNet generator compatible with the reference CycleGAN checkpoints.

The layer layout (an ``nn.Sequential`` called ``model``) reproduces the
reference ``ResnetGenerator`` of junyanz/pytorch-CycleGAN-and-pix2pix exactly,
so its state_dict keys and shapes match ``latest_net_G_A.pth`` and friends.
Unlike the reference, every prunable layer takes its own width from a
:class:`GeneratorArch`, so full and slim generators are one class.

Paper names -> code names: G_AB (the paper) = G_A (reference) maps domain A to
domain B; G_BA = G_B maps B to A.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Mapping, Sequence, Tuple

import torch
from torch import nn

from ..core.limits import MIN_SIZE, SIZE_MULTIPLE  # noqa: F401  (re-exported: the generator's size needs)
from .topology import NORMS, resnet_convs, unit_layers

ARCH_VERSION = 1
# How the reference's test script runs a generator: in train mode unless --eval (BatchNorm then
# normalises with the batch's statistics and Dropout stays on), or in eval mode.
REFERENCE_MODES = ("train", "eval")


def group_names(n_blocks: int) -> List[str]:
    """Names of the prunable channel groups of a generator, in data-flow order."""
    names = ["stem", "down1", "trunk"]
    names += [f"block{i}.inner" for i in range(n_blocks)]
    names += ["up1", "up2"]
    return names


def full_widths(ngf: int, n_blocks: int) -> Dict[str, int]:
    """Channel widths of the unpruned reference generator."""
    widths = {"stem": ngf, "down1": 2 * ngf, "trunk": 4 * ngf, "up1": 2 * ngf, "up2": ngf}
    for i in range(n_blocks):
        widths[f"block{i}.inner"] = 4 * ngf
    return {name: widths[name] for name in group_names(n_blocks)}


@dataclass
class GeneratorArch:
    """Everything needed to rebuild a generator: saved next to every set of weights.

    ``widths`` maps each channel group name (see :func:`group_names`) to its
    number of filters. ``ngf`` records the width of the original (teacher)
    network the widths were derived from; it does not change the layer shapes.
    ``norm`` (instance | batch | none) and ``dropout`` are the reference's ``--norm`` and
    ``--use_dropout``; both change the state_dict layout (see :mod:`coevo.models.topology`).
    """

    ngf: int = 64
    n_blocks: int = 9
    in_channels: int = 3
    out_channels: int = 3
    widths: Dict[str, int] = field(default_factory=dict)
    norm: str = "instance"
    padding: str = "reflect"
    dropout: bool = False

    def __post_init__(self) -> None:
        if self.n_blocks < 1:
            raise ValueError(f"n_blocks must be >= 1, got {self.n_blocks}")
        if self.ngf < 1:
            raise ValueError(f"ngf must be >= 1, got {self.ngf}")
        if self.in_channels < 1 or self.out_channels < 1:
            raise ValueError(f"in_channels and out_channels must be >= 1, got {self.in_channels} and "
                             f"{self.out_channels}")
        if not self.widths:
            self.widths = full_widths(self.ngf, self.n_blocks)
        expected = group_names(self.n_blocks)
        unknown = sorted(set(self.widths) - set(expected))
        missing = [n for n in expected if n not in self.widths]
        if unknown or missing:
            raise ValueError(
                f"generator widths do not match a {self.n_blocks}-block generator: "
                f"unknown groups {unknown}, missing groups {missing}"
            )
        bad = {k: v for k, v in self.widths.items() if int(v) < 1}
        if bad:
            raise ValueError(f"every channel group needs at least one filter; got {bad}")
        self.widths = {n: int(self.widths[n]) for n in expected}
        if self.norm not in NORMS:
            raise ValueError(f"unknown norm {self.norm!r}; choose one of {', '.join(NORMS)}")
        if self.padding != "reflect":
            raise ValueError("only padding='reflect' is supported")
        if not isinstance(self.dropout, bool):
            raise ValueError(f"dropout must be true or false, got {self.dropout!r}")

    @classmethod
    def full(cls, ngf: int = 64, n_blocks: int = 9) -> "GeneratorArch":
        return cls(ngf=ngf, n_blocks=n_blocks)

    @property
    def is_full(self) -> bool:
        return self.widths == full_widths(self.ngf, self.n_blocks)

    def with_widths(self, widths: Mapping[str, int]) -> "GeneratorArch":
        return GeneratorArch(self.ngf, self.n_blocks, self.in_channels, self.out_channels, dict(widths),
                             norm=self.norm, padding=self.padding, dropout=self.dropout)

    def to_dict(self) -> dict:
        return {
            "version": ARCH_VERSION,
            "kind": "resnet_generator",
            "ngf": self.ngf,
            "n_blocks": self.n_blocks,
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "widths": dict(self.widths),
            "norm": self.norm,
            "padding": self.padding,
            # only when set: a network without dropout keeps the dict (and the fingerprints, cache keys
            # and resume checks hashed from it) of files that have no such field
            **({"dropout": True} if self.dropout else {}),
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> "GeneratorArch":
        if d.get("kind", "resnet_generator") != "resnet_generator":
            raise ValueError(f"not a generator architecture: kind={d.get('kind')!r}")
        if int(d.get("version", 1)) > ARCH_VERSION:
            raise ValueError(
                f"architecture version {d['version']} is newer than this coevo understands "
                f"({ARCH_VERSION}); upgrade coevo"
            )
        return cls(
            ngf=int(d["ngf"]),
            n_blocks=int(d["n_blocks"]),
            in_channels=int(d.get("in_channels", 3)),
            out_channels=int(d.get("out_channels", 3)),
            widths={k: int(v) for k, v in d["widths"].items()},
            norm=d.get("norm", "instance"),
            padding=d.get("padding", "reflect"),
            dropout=d.get("dropout", False),  # absent when false
        )


class ResnetBlock(nn.Module):
    """Residual block: x + norm(conv(dropout(relu(norm(conv(x)))))), both convs 3x3 with reflection padding.

    ``conv_block.1`` maps trunk -> inner channels, ``conv_block.5`` (``.6`` with dropout) inner -> trunk
    (the layers of :func:`coevo.models.topology.resnet_convs`' ``block_in`` and ``block_out`` units).
    """

    def __init__(self, trunk: int, inner: int, norm: str = "instance", dropout: bool = False) -> None:
        super().__init__()
        conv1, conv2 = resnet_convs(1, dropout)[3:5]
        self.conv_block = nn.Sequential(*unit_layers(conv1, trunk, inner, norm),
                                        *unit_layers(conv2, inner, trunk, norm))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


class ResnetGenerator(nn.Module):
    """CycleGAN ResNet generator. Input and output: NCHW, RGB, values in [-1, 1].

    H and W must be divisible by 4 (two stride-2 down-samplings).
    """

    def __init__(self, arch: GeneratorArch | None = None) -> None:
        super().__init__()
        self.arch = arch if arch is not None else GeneratorArch()
        a = self.arch
        width = {**a.widths, None: None}
        layers: List[nn.Module] = []
        for spec in resnet_convs(a.n_blocks, a.dropout):  # the layer table, in data-flow order
            cin = a.in_channels if spec.cin is None else width[spec.cin]
            cout = a.out_channels if spec.cout is None else width[spec.cout]
            if spec.block is None:
                layers += unit_layers(spec, cin, cout, a.norm)
            elif spec.name.endswith("conv1"):
                layers.append(ResnetBlock(width["trunk"], cout, a.norm, a.dropout))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    # --- named access to the layers, so no caller indexes ``model`` by position ---
    def layer_index(self, name: str) -> int:
        """Index into ``self.model`` of a named conv outside the residual blocks (see :meth:`named_convs`)."""
        for spec in resnet_convs(self.arch.n_blocks):
            if spec.name == name and spec.sub is None:
                return spec.seq
        raise KeyError(name)

    def named_convs(self) -> Iterator[Tuple[str, nn.Module]]:
        """(name, conv) for every convolution in data-flow order.

        Names: stem, down1, down2, block{i}.conv1, block{i}.conv2, up1, up2, head.
        """
        for spec in resnet_convs(self.arch.n_blocks, self.arch.dropout):
            module = self.model[spec.seq]
            yield spec.name, module if spec.sub is None else module.conv_block[spec.sub]

    def named_norms(self) -> Iterator[Tuple[str, nn.Module]]:
        """(conv name, the norm layer right after it) for every conv followed by one (all but the head):
        InstanceNorm2d, BatchNorm2d or, for ``norm='none'``, the Identity in its place."""
        for spec in resnet_convs(self.arch.n_blocks, self.arch.dropout):
            if spec.tail == "tanh":
                continue
            module = self.model[spec.seq]
            yield spec.name, self.model[spec.seq + 1] if spec.sub is None else module.conv_block[spec.sub + 1]

    def features(self, x: torch.Tensor, layers: Sequence[str]) -> List[torch.Tensor]:
        """Encoder activations of ``x`` (NCHW, [-1, 1]), one per name in ``layers``, in that order.

        Names: ``stem``, ``down1``, ``down2`` (each after its ReLU) and ``block{i}`` (the
        output of residual block i). Runs the network only as far as the deepest layer asked for.
        """
        specs = resnet_convs(self.arch.n_blocks)
        fixed = {s.name: s.end for s in specs if s.name in ("stem", "down1", "down2")}
        fixed.update({f"block{s.block}": s.seq for s in specs if s.block is not None})
        index = {}
        for name in layers:
            if name in fixed:
                index[name] = fixed[name]
            else:
                raise KeyError(f"no feature layer {name!r}; choose stem, down1, down2 or block0..."
                               f"block{self.arch.n_blocks - 1}")
        wanted = {i: n for n, i in index.items()}
        out = {}
        for i, layer in enumerate(self.model[: max(index.values()) + 1]):
            x = layer(x)
            if i in wanted:
                out[wanted[i]] = x
        return [out[n] for n in layers]


def set_reference_mode(model: nn.Module, mode: str = "eval") -> nn.Module:
    """``model`` switched to the reference's test-time behaviour ``mode`` (see :data:`REFERENCE_MODES`), in place.

    ``"train"`` puts it in train mode but stops its BatchNorms from updating their running statistics:
    evaluating must not change the weights a later eval-mode use or a saved file sees. Without batch
    norm or dropout both modes give the same output.
    """
    if mode not in REFERENCE_MODES:
        raise ValueError(f"reference mode must be one of {', '.join(REFERENCE_MODES)}, got {mode!r}")
    model.train(mode == "train")
    if mode == "train":
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.track_running_stats = False  # with the buffers kept, eval mode still reads them
    return model


# The seed of the dropout masks a measurement in train reference mode draws (see :func:`scoring_mode`).
SCORING_SEED = 0


@contextmanager
def fixed_rng(seed: int = SCORING_SEED):
    """Inside: torch's global random stream seeded with ``seed``; after: the caller's stream as it was (CPU
    and every GPU in use). Dropout in train reference mode draws its masks here, so a measurement or a
    translation repeats exactly and never advances a training run's stream."""
    # torch.manual_seed reseeds every GPU too: each one in use gets its state back
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


@contextmanager
def scoring_mode(model: nn.Module, mode: str = "eval"):
    """``model`` in reference mode ``mode`` for one measurement, then exactly as it was (a student in training
    stays in train mode, its BatchNorms keep tracking running statistics).

    Unlike :func:`set_reference_mode` it leaves nothing behind: in ``"train"`` mode the BatchNorms use the
    batch's statistics without updating their running ones (held-out images must not leak into the weights),
    and Dropout draws its masks from a stream seeded with :data:`SCORING_SEED` (:func:`fixed_rng`), so a
    measurement is repeatable, a network identical to its teacher measures as identical, and the caller's
    random stream (a training run's) is not advanced.
    """
    if mode not in REFERENCE_MODES:
        raise ValueError(f"reference mode must be one of {', '.join(REFERENCE_MODES)}, got {mode!r}")
    flags = [(m, m.training) for m in model.modules()]
    norms = [(m, m.track_running_stats) for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    try:
        with fixed_rng():
            model.train(mode == "train")
            if mode == "train":
                for m, _ in norms:
                    m.track_running_stats = False
            yield model
    finally:
        for m, training in flags:
            m.training = training
        for m, track in norms:
            m.track_running_stats = track


def infer_arch_from_state_dict(state_dict: Mapping[str, torch.Tensor]) -> GeneratorArch:
    """Recover a :class:`GeneratorArch` from the shapes in a (reference or coevo) state_dict.

    Works for full and for channel-pruned generators with 1 or more blocks (the
    reference's 6- and 9-block ones included). Raises ValueError naming what was found
    for layouts coevo does not support (see :func:`_unsupported_layout`).
    """
    keys = set(state_dict)
    unsupported = _unsupported_layout(state_dict)
    if unsupported:
        raise ValueError(unsupported)
    block_ids = sorted(
        {int(k.split(".")[1]) for k in keys if k.startswith("model.") and ".conv_block." in k}
    )
    first = f"model.{block_ids[0]}.conv_block" if block_ids else ""
    # the block's second conv: conv_block.5, or conv_block.6 behind a Dropout (a 4-D weight either way;
    # without dropout conv_block.6 is the second norm, whose BatchNorm weight is 1-D)
    w6 = state_dict.get(f"{first}.6.weight")
    dropout = f"{first}.5.weight" not in keys and isinstance(w6, torch.Tensor) and w6.dim() == 4
    if "model.1.weight" not in keys or not block_ids:
        raise ValueError(
            "this state_dict is not a CycleGAN ResnetGenerator: expected keys 'model.1.weight' and "
            f"'model.N.conv_block.1.weight', found {_sample_keys(keys)}. coevo supports the ResNet "
            "generator only."
        )
    if block_ids != list(range(10, 10 + len(block_ids))):
        raise ValueError(f"unexpected residual block indices {block_ids}; expected 10, 11, ...")
    nb = len(block_ids)
    specs = resnet_convs(nb, dropout)
    norm = _infer_norm(state_dict, specs[0])
    missing = [f"{s.key}.weight" for s in specs if f"{s.key}.weight" not in keys]
    if missing:
        raise ValueError(f"this state_dict lacks {', '.join(repr(k) for k in missing[:3])} of a {nb}-block "
                         f"ResNet generator (found {_sample_keys(keys)}); the file is incomplete or of "
                         "another network")
    widths: Dict[str, int] = {}
    for s in specs:  # each group's width from its first producer
        if s.cout is not None and s.cout not in widths:
            widths[s.cout] = s.out_channels(tuple(state_dict[f"{s.key}.weight"].shape))
    stem = state_dict[f"{specs[0].key}.weight"]
    head = state_dict[f"{specs[-1].key}.weight"]
    ngf = widths["up2"] if widths["stem"] == widths["up2"] else widths["stem"]
    return GeneratorArch(
        ngf=int(ngf),
        n_blocks=nb,
        in_channels=int(stem.shape[1]),
        out_channels=int(head.shape[0]),
        widths={k: int(v) for k, v in widths.items()},
        norm=norm,
        dropout=dropout,
    )


def _infer_norm(state_dict: Mapping[str, torch.Tensor], stem) -> str:
    """The reference's ``--norm`` from the stem's keys: BatchNorm has an affine weight after the conv;
    InstanceNorm has none but its conv has a bias (running stats alone are an InstanceNorm of a torch
    before 0.4, whose loader drops them); with neither, the Identity of ``--norm none``."""
    norm_key = f"model.{stem.seq + 1}"
    if f"{norm_key}.weight" in state_dict:
        return "batch"
    if f"{stem.key}.bias" in state_dict:
        return "instance"
    if f"{norm_key}.running_mean" in state_dict:
        raise ValueError(f"{norm_key!r} has running statistics but no affine weight, and the stem conv has no "
                         "bias: neither the reference's BatchNorm (affine) nor its InstanceNorm (conv bias)")
    return "none"


def _sample_keys(keys, n: int = 4) -> str:
    keys = sorted(keys)
    return ", ".join(repr(k) for k in keys[:n]) + (f" ... ({len(keys)} keys)" if len(keys) > n else "")


def _unsupported_layout(state_dict: Mapping[str, torch.Tensor]) -> str:
    """A message naming a known layout coevo cannot load, or "" when none is recognised.

    The reference code (junyanz/pytorch-CycleGAN-and-pix2pix) can also save U-Net generators
    (``--netG unet_256``/``unet_128``: keys ``model.model.0...``) and PatchGAN
    discriminators (4x4 kernels).
    """
    keys = set(state_dict)
    if any(k.startswith("model.model.") for k in keys):
        return ("this is a U-Net generator (keys 'model.model.0...', the reference's --netG unet_256/unet_128). "
                "coevo.models.unet.infer_unet_arch reads it and coevo.load_generator returns a UnetGenerator "
                "(the reference's exact keys); coevo prune and coevo.prune prune it (channel groups, genomes, slim, "
                "MAC counts), but the search, fine-tuning and export take only the ResNet generator "
                "(--netG resnet_9blocks/resnet_6blocks, which CycleGAN uses) so far")
    w = state_dict.get("model.0.weight")
    if "model.1.weight" not in keys and isinstance(w, torch.Tensor) and w.dim() == 4 and tuple(w.shape[-2:]) == (4, 4):
        return ("this is a PatchGAN discriminator (4x4 convolutions from 'model.0.weight'), "
                "e.g. latest_net_D_A.pth, not a generator")
    return ""
