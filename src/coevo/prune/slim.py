"""Turn a genome into a network: physically narrower (:func:`slim`) or full width with zeros (:func:`masked_generator`).

Both give the same output (up to float rounding): a dropped filter's channel is
exactly zero after the norm and ReLU that follow it, so it contributes nothing
downstream, which is what removing it does. A BatchNorm would turn a zero channel
into its bias (or shift it by its running mean), so under ``norm='batch'`` the mask
sits after the norm; InstanceNorm (no affine) and no norm keep zeros zero, so there
it sits on the conv. BatchNorm works per channel, so its parameters and running
statistics are sliced with their channels and slim == masked in train mode too
(dropout aside: its random masks differ between the two shapes).
"""
from __future__ import annotations

import copy
from typing import Dict

import torch
from torch import nn

from ..models.family import describe_arch
from ..models.generator import ResnetGenerator
from ..models.unet import UnetArch, UnetGenerator
from .genome import Genome, GenomeError
from .groups import conv_group_map


def _describe(arch) -> str:
    return (f"a {arch.n_blocks}-block {arch.in_channels}->{arch.out_channels} generator (ngf={arch.ngf}, "
            f"norm={arch.norm}, padding={arch.padding}, dropout={arch.dropout})")


def check_genome_fits(arch, genome: Genome, where: str = "this generator") -> None:
    """GenomeError naming both architectures unless ``genome`` was cut from a network of ``arch``
    (same blocks, channels, widths, normalisation and padding)."""
    b = genome.arch
    if isinstance(arch, UnetArch) or isinstance(b, UnetArch):
        _check_unet_fits(arch, b, where)
        return
    fields = ("n_blocks", "in_channels", "out_channels", "norm", "padding", "dropout")
    if any(getattr(arch, f) != getattr(b, f) for f in fields):
        raise GenomeError(f"the genome is for {_describe(b)}, {where} is {_describe(arch)}; give a genome "
                          "made from this network")
    diff = {n: (arch.widths[n], b.widths[n]) for n in arch.widths if arch.widths[n] != b.widths[n]}
    if diff:
        raise GenomeError(
            f"the genome is for {_describe(b)}, {where} is {_describe(arch)} and its widths differ "
            f"{{group: (generator, genome)}} = {diff}; give a genome made from this network"
        )


def _check_unet_fits(arch, b, where: str) -> None:
    fields = ("num_downs", "in_channels", "out_channels", "norm", "dropout")
    if type(arch) is not type(b) or any(getattr(arch, f) != getattr(b, f) for f in fields):
        raise GenomeError(f"the genome is for {describe_arch(b)}, {where} is {describe_arch(arch)}; give a "
                          "genome made from this network")
    if arch.widths != b.widths:
        diff = {n: (arch.widths[n], b.widths[n]) for n in arch.widths if arch.widths[n] != b.widths[n]}
        raise GenomeError(f"the genome is for {describe_arch(b)}, {where} is {describe_arch(arch)} and its "
                          f"widths differ {{group: (generator, genome)}} = {diff}; give a genome made from "
                          "this network")


def _kept_index(genome: Genome, groups, device) -> torch.Tensor:
    """Kept channel indices of one group, or of a concatenation of groups (a tuple: the
    index spaces side by side, each shifted by the widths before it)."""
    if isinstance(groups, str):
        return torch.as_tensor(genome.kept(groups), dtype=torch.long, device=device)
    parts, offset = [], 0
    for g in groups:
        parts.append(torch.as_tensor(genome.kept(g), dtype=torch.long, device=device) + offset)
        offset += genome.arch.widths[g]
    return torch.cat(parts)


def _slice_norms(old: nn.Module, new: nn.Module, genome: Genome) -> None:
    """Copy the kept channels of every per-channel norm tensor not copied yet (a BatchNorm's
    affine parameters and running statistics; the step counter whole)."""
    groups = {name: g_out for name, (_, g_out) in conv_group_map(old.arch).items()}
    new_norms = dict(new.named_norms())
    for name, norm in old.named_norms():
        keep = _kept_index(genome, groups[name], next(old.parameters()).device)
        target = new_norms[name]
        for attr, t in list(norm.named_parameters(recurse=False)) + list(norm.named_buffers(recurse=False)):
            if t is None or not getattr(target, attr).is_meta:
                continue
            value = t.clone() if t.dim() == 0 else t.index_select(0, keep).contiguous()
            if isinstance(t, nn.Parameter):
                value = nn.Parameter(value, requires_grad=t.requires_grad)
            setattr(target, attr, value)


def _check_match(generator: ResnetGenerator, genome: Genome) -> None:
    check_genome_fits(generator.arch, genome)


def slim(generator: ResnetGenerator, genome: Genome) -> ResnetGenerator:
    """A new generator of the same class whose layers keep only the genome's filters.

    Weights and biases are copied by index; ``requires_grad``, device, dtype and
    train/eval mode follow ``generator``, which is left untouched. Accepts a
    :class:`MaskedGenerator` too (slims the network inside it).
    """
    if isinstance(generator, MaskedGenerator):
        generator = generator.generator
    _check_match(generator, genome)
    arch = genome.slim_arch()
    # Built on the meta device: skipping the random init matters for big nets,
    # and every parameter is replaced below.
    with torch.device("meta"):
        new = type(generator)(arch)
    old_convs: Dict[str, nn.Module] = dict(generator.named_convs())
    new_convs: Dict[str, nn.Module] = dict(new.named_convs())
    resnet = not isinstance(generator, UnetGenerator)  # a ResNet's BatchNorms are sliced with their conv here
    old_norms: Dict[str, nn.Module] = dict(generator.named_norms()) if resnet else {}
    new_norms: Dict[str, nn.Module] = dict(new.named_norms()) if resnet else {}
    index: Dict[str, torch.Tensor] = {}
    for name, (g_in, g_out) in conv_group_map(generator.arch).items():
        conv = old_convs[name]
        w, b = conv.weight, conv.bias
        for g in (g_in, g_out):
            if g is not None and g not in index:
                index[g] = _kept_index(genome, g, w.device)
        # Conv2d weights are [out, in, k, k], ConvTranspose2d weights [in, out, k, k].
        dim_groups = (g_in, g_out) if isinstance(conv, nn.ConvTranspose2d) else (g_out, g_in)
        with torch.no_grad():
            w_new = w
            for dim, g in enumerate(dim_groups):  # dim 0 first: whole rows copy fastest
                if g is not None:
                    w_new = w_new.index_select(dim, index[g])
            w_new = w_new.clone() if w_new is w else w_new
            target = new_convs[name]
            target.weight = nn.Parameter(w_new.contiguous(), requires_grad=w.requires_grad)
            if b is not None:
                b_new = b.clone() if g_out is None else b.index_select(0, index[g_out])
                target.bias = nn.Parameter(b_new, requires_grad=b.requires_grad)
            norm = old_norms.get(name)
            if isinstance(norm, nn.BatchNorm2d):
                _slice_batch_norm(norm, new_norms[name], index[g_out])
    if isinstance(generator, UnetGenerator):
        _slice_norms(generator, new, genome)
    leftover = [n for n, t in list(new.named_parameters()) + list(new.named_buffers()) if t.is_meta]
    if leftover:
        raise RuntimeError(f"slim() does not know how to copy {leftover}; update coevo.prune.slim")
    new.train(generator.training)
    return new


def _slice_batch_norm(old: nn.BatchNorm2d, new: nn.BatchNorm2d, keep: torch.Tensor) -> None:
    """Copy the kept channels of ``old``'s affine parameters and running statistics into ``new``."""
    for name in ("weight", "bias"):
        p = getattr(old, name)
        setattr(new, name, nn.Parameter(p.index_select(0, keep).contiguous(), requires_grad=p.requires_grad))
    new.running_mean = old.running_mean.index_select(0, keep).contiguous()
    new.running_var = old.running_var.index_select(0, keep).contiguous()
    new.num_batches_tracked = old.num_batches_tracked.clone()


def _mask_output(module: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor:
    return output * module.coevo_keep


class MaskedGenerator(nn.Module):
    """A full-width generator whose dropped filters output zeros. Input/output: NCHW, [-1, 1].

    The mask multiplies each producer conv's output (bias included) in a forward
    hook, so it is enforced on every forward: training cannot make a dropped
    channel non-zero again. Its gradients are zero too. ``self.generator`` is a
    private copy whose ``state_dict`` loads into a plain :class:`ResnetGenerator`
    (the masks are non-persistent buffers); :meth:`slim` cuts it down.
    """

    def __init__(self, generator: ResnetGenerator, genome: Genome, copy_weights: bool = True) -> None:
        super().__init__()
        _check_match(generator, genome)
        genome.validate(min_channels=1)
        self.generator = copy.deepcopy(generator) if copy_weights else generator
        self.genome = genome.copy()
        convs = dict(self.generator.named_convs())
        if isinstance(self.generator, UnetGenerator):  # zeros must survive the norm: mask its output
            convs.update(self.generator.named_group_outputs())
        elif generator.arch.norm == "batch":  # see the module docstring: mask after the BatchNorm
            convs.update(self.generator.named_norms())
        ref = next(self.generator.parameters())
        for name, (_, g_out) in conv_group_map(generator.arch).items():
            if g_out is None:
                continue
            keep = torch.as_tensor(genome.masks[g_out], dtype=ref.dtype, device=ref.device).view(1, -1, 1, 1)
            conv = convs[name]
            conv.register_buffer("coevo_keep", keep, persistent=False)
            conv.register_forward_hook(_mask_output)

    @property
    def arch(self):
        return self.generator.arch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.generator(x)

    def slim(self) -> ResnetGenerator:
        return slim(self.generator, self.genome)


def masked_generator(generator: ResnetGenerator, genome: Genome, copy_weights: bool = True) -> MaskedGenerator:
    """Full-width network equal in output to ``slim(generator, genome)``; see :class:`MaskedGenerator`.

    ``copy_weights=False`` hooks ``generator`` itself (its output changes for good).
    """
    return MaskedGenerator(generator, genome, copy_weights=copy_weights)
