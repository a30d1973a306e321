"""pix2pix teachers: one generator (``latest_net_G.pth``) and, optionally, its conditional PatchGAN
(``latest_net_D.pth``), as the reference's ``--model pix2pix`` writes them.

The reference pix2pix trains a U-Net (``--netG unet_256``, batch norm, dropout on unless
``--no_dropout``) and a PatchGAN that reads the input and the output side by side in channels
(``input_nc + output_nc`` = 6 for RGB), with the same ``--norm``. Both load bit-exactly through
:func:`coevo.models.io.load_generator` / :func:`~coevo.models.io.load_discriminator` (architecture
inferred from the keys); what the weights cannot tell is taken from the caller and said: dropout
in a U-Net has no key (:func:`load_pix2pix_generator`).

A teacher folder is a pix2pix one when it holds a single generator (``G.pt`` or ``latest_net_G.pth``)
and no ``G_A``/``G_B`` pair (:func:`teacher_kind`).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional

from torch import nn

from ..errors import CheckpointError

log = logging.getLogger(__name__)

_CANDIDATES = {"G": ["G.pt", "latest_net_G.pth"], "D": ["D.pt", "latest_net_D.pth"]}
_CYCLEGAN = ("G_A.pt", "latest_net_G_A.pth", "G_B.pt", "latest_net_G_B.pth")


@dataclass
class Pix2PixPaths:
    """Files of a trained pix2pix: ``G`` maps the input to the output; ``D`` (None when absent) scores
    the 6-channel concatenation input|output."""

    G: Path
    D: Optional[Path] = None

    @property
    def has_discriminator(self) -> bool:
        return self.D is not None

    def to_dict(self) -> Dict[str, str]:
        out = {"kind": "pix2pix", "G": str(Path(self.G).resolve())}
        if self.D is not None:
            out["D"] = str(Path(self.D).resolve())
        return out

    @classmethod
    def from_dict(cls, d: Dict[str, str]) -> "Pix2PixPaths":
        if not d.get("G"):
            raise KeyError(f"pix2pix teacher description lacks G (has {sorted(d)})")
        return cls(G=Path(d["G"]), D=Path(d["D"]) if d.get("D") else None)


def teacher_kind(path: str | Path) -> Optional[str]:
    """``"cyclegan"`` (a G_A/G_B pair), ``"pix2pix"`` (one generator), or None for a folder with neither."""
    path = Path(path)
    if not path.is_dir():
        return None
    if any((path / n).is_file() for n in _CYCLEGAN):
        return "cyclegan"
    if any((path / n).is_file() for n in _CANDIDATES["G"]):
        return "pix2pix"
    return None


def find_pix2pix_teacher(path: str | Path) -> Pix2PixPaths:
    """The generator and, when present, the discriminator of a pix2pix teacher folder (a coevo pix2pix
    run, ``coevo train`` on aligned data, or the reference's ``checkpoints/NAME``)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"teacher folder not found: {path}. Pass a coevo pix2pix run (coevo train on aligned "
                                "data) or a folder holding latest_net_G.pth (and latest_net_D.pth, if you have it)")
    found = {k: next((path / n for n in names if (path / n).is_file()), None) for k, names in _CANDIDATES.items()}
    if found["G"] is None:
        pair = " It holds a CycleGAN pair (G_A/G_B): that is a CycleGAN teacher." \
            if teacher_kind(path) == "cyclegan" else ""
        raise CheckpointError(f"{path} is not a pix2pix teacher: missing G.pt or latest_net_G.pth.{pair}")
    return Pix2PixPaths(G=found["G"], D=found["D"])


def _is_bare_state_dict(path: Path) -> bool:
    """True for a reference file (a bare state_dict): its architecture was inferred, not recorded."""
    from .io import EXPORTED_SUFFIXES, safe_torch_load

    if path.suffix.lower() in EXPORTED_SUFFIXES + (".safetensors",):
        return False
    obj = safe_torch_load(path)
    return isinstance(obj, dict) and "format" not in obj


def load_pix2pix_generator(path: str | Path, dropout: bool = True) -> nn.Module:
    """The generator of ``path`` (eval mode). A coevo file keeps the dropout it records; a reference U-Net
    state_dict (no key says whether it was trained with dropout) gets ``dropout`` (``pix2pix.dropout``,
    the reference's default: on), and the log says so. Weights are loaded bit-exactly either way."""
    from .io import load_generator
    from .unet import UnetArch, UnetGenerator

    path = Path(path)
    model = load_generator(path)
    arch = getattr(model, "arch", None)
    if isinstance(arch, UnetArch) and arch.dropout != bool(dropout) and _is_bare_state_dict(path):
        new_arch = arch.with_widths(arch.widths)
        new_arch.dropout = bool(dropout)
        rebuilt = UnetGenerator(new_arch)  # the Dropout modules exist only when built with dropout
        rebuilt.load_state_dict(model.state_dict(), strict=True)
        log.info("%s: a U-Net file records no dropout; taking pix2pix.dropout=%s", path, bool(dropout))
        model = rebuilt.eval()
    return model


def load_pix2pix_discriminator(path: str | Path, generator: Optional[nn.Module] = None) -> nn.Module:
    """The conditional PatchGAN of ``path`` (eval mode); with ``generator``, CheckpointError unless it reads
    the generator's input and output channels side by side (6 for RGB)."""
    from .io import load_discriminator

    d = load_discriminator(path)
    arch = getattr(generator, "arch", None)
    if arch is not None:
        want = arch.in_channels + arch.out_channels
        if d.arch.in_channels != want:
            hint = " (a CycleGAN discriminator reads the output alone)" if d.arch.in_channels == arch.out_channels \
                else ""
            raise CheckpointError(
                f"{path} reads {d.arch.in_channels}-channel images, but a pix2pix discriminator reads the input and "
                f"the output side by side: {arch.in_channels} + {arch.out_channels} = {want} channels{hint}; give "
                "the latest_net_D.pth of this model, or none")
    return d
