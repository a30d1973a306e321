"""PatchGAN discriminator compatible with the reference CycleGAN checkpoints.

Key names and shapes match ``latest_net_D_A.pth`` (``model.0``, ``model.2``,
``model.5``, ``model.8``, ``model.11``) for ``n_layers=3``, under each of the reference's ``--norm``
choices: ``instance`` (no norm weights; the middle convs have a bias), ``batch`` (BatchNorm2d with
affine weights and running statistics at ``model.3``, ``model.6``, ``model.9``; no conv bias) and
``none`` (an Identity where the norm was; no conv bias), and for any ``--input_nc`` (1 for grayscale).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Mapping

import torch
from torch import nn


NORMS = ("instance", "batch", "none")


@dataclass
class DiscriminatorArch:
    ndf: int = 64
    n_layers: int = 3
    in_channels: int = 3
    norm: str = "instance"  # the reference's --norm: instance | batch | none

    def __post_init__(self) -> None:
        bad = {k: v for k, v in (("ndf", self.ndf), ("n_layers", self.n_layers), ("in_channels", self.in_channels))
               if v < 1}
        if bad:
            raise ValueError(f"discriminator {', '.join(bad)} must be >= 1, got {bad}")
        if self.norm not in NORMS:
            raise ValueError(f"unknown discriminator norm {self.norm!r}; choose one of {', '.join(NORMS)}")

    def to_dict(self) -> dict:
        return {"version": 1, "kind": "patch_discriminator", "ndf": self.ndf,
                "n_layers": self.n_layers, "in_channels": self.in_channels,
                # only when not the default: files and fingerprints of instance-norm discriminators unchanged
                **({"norm": self.norm} if self.norm != "instance" else {})}

    @classmethod
    def from_dict(cls, d: Mapping) -> "DiscriminatorArch":
        if d.get("kind", "patch_discriminator") != "patch_discriminator":
            raise ValueError(f"not a discriminator architecture: kind={d.get('kind')!r}")
        return cls(ndf=int(d["ndf"]), n_layers=int(d["n_layers"]), in_channels=int(d.get("in_channels", 3)),
                   norm=str(d.get("norm", "instance")))


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "none":
        return nn.Identity()
    return nn.InstanceNorm2d(channels)


class NLayerDiscriminator(nn.Module):
    """70x70 PatchGAN. Input: NCHW RGB (``in_channels`` 1: grayscale) in [-1, 1]; output: N x 1 x h x w raw
    scores (LSGAN)."""

    def __init__(self, arch: DiscriminatorArch | None = None) -> None:
        super().__init__()
        self.arch = arch if arch is not None else DiscriminatorArch()
        ndf, n_layers, norm = self.arch.ndf, self.arch.n_layers, self.arch.norm
        bias = norm == "instance"  # the reference's use_bias: a BatchNorm's shift replaces it, 'none' has none
        layers: List[nn.Module] = [nn.Conv2d(self.arch.in_channels, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers):
            prev, mult = mult, min(2 ** n, 8)
            layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, 2, 1, bias=bias),
                       _norm(norm, ndf * mult), nn.LeakyReLU(0.2, True)]
        prev, mult = mult, min(2 ** n_layers, 8)
        layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, 1, 1, bias=bias),
                   _norm(norm, ndf * mult), nn.LeakyReLU(0.2, True)]
        layers += [nn.Conv2d(ndf * mult, 1, 4, 1, 1)]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def features(self, x: torch.Tensor) -> List[torch.Tensor]:
        """Activations after every LeakyReLU (one per scale), then the final score map.

        Used as an offline perceptual space: the teacher's discriminator was
        trained to tell real images of its domain from translations.
        """
        feats: List[torch.Tensor] = []
        for layer in self.model:
            # LeakyReLU(inplace) would alter a stored tensor: clone what we keep.
            x = layer(x)
            if isinstance(layer, nn.LeakyReLU):
                feats.append(x.clone())
        feats.append(x)
        return feats


def infer_discriminator_arch(state_dict: Mapping[str, torch.Tensor]) -> DiscriminatorArch:
    if "model.0.weight" not in state_dict:
        raise ValueError(
            "this state_dict is not a PatchGAN discriminator (no 'model.0.weight'); "
            "did you pass a generator checkpoint (latest_net_G_*.pth)?"
        )
    w0 = state_dict["model.0.weight"]
    convs = sorted(int(k.split(".")[1]) for k, v in state_dict.items()
                   if k.endswith(".weight") and k.startswith("model.") and v.dim() == 4)
    n_layers = len(convs) - 2
    if n_layers < 1:
        raise ValueError(f"this state_dict has {len(convs)} convolution(s); a PatchGAN discriminator has at "
                         "least 3")
    # the reference's --norm: BatchNorm weights after the second conv; else its bias says instance (use_bias)
    after = f"model.{convs[1] + 1}"
    norm = "batch" if f"{after}.weight" in state_dict or f"{after}.running_mean" in state_dict else \
        "instance" if f"model.{convs[1]}.bias" in state_dict else "none"
    return DiscriminatorArch(ndf=int(w0.shape[0]), n_layers=n_layers, in_channels=int(w0.shape[1]), norm=norm)
