"""Locate a trained CycleGAN teacher: a coevo training run, a folder of reference checkpoints,
or the two official single-direction generator files.

Most users hold only the two generators (the junyanz pretrained models ship
``horse2zebra_pretrained/latest_net_G.pth`` and ``zebra2horse_pretrained/latest_net_G.pth``,
no discriminators). The discriminators are therefore optional: without them the
search uses another perceptual metric (see :func:`coevo.evaluation.perceptual.resolve_perceptual`)
and fine-tuning trains fresh discriminators.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional

from ..errors import CheckpointError
from ..errors import ConfigError
from .unet import UnetArch

log = logging.getLogger(__name__)

# coevo run names first, then the reference names (latest_net_G_A.pth, ...).
_CANDIDATES = {
    "G_A": ["G_A.pt", "latest_net_G_A.pth"],
    "G_B": ["G_B.pt", "latest_net_G_B.pth"],
    "D_A": ["D_A.pt", "latest_net_D_A.pth"],
    "D_B": ["D_B.pt", "latest_net_D_B.pth"],
}
_GENERATORS = ("G_A", "G_B")
_DISCRIMINATORS = ("D_A", "D_B")


@dataclass
class TeacherPaths:
    """Files of a trained CycleGAN. G_A maps A->B (the paper's G_AB); D_A judges domain B images.

    Naming follows the reference code: D_A is trained against G_A, so it scores
    images of domain B; D_B scores images of domain A. ``D_A``/``D_B`` are None
    for a teacher given as its two generators only.
    """

    G_A: Path
    G_B: Path
    D_A: Optional[Path] = None
    D_B: Optional[Path] = None

    @property
    def has_discriminators(self) -> bool:
        return self.D_A is not None and self.D_B is not None

    def to_dict(self) -> Dict[str, str]:
        """Absolute paths by name; a missing discriminator is left out (not written as null)."""
        names = _GENERATORS + (_DISCRIMINATORS if self.has_discriminators else ())
        return {k: str(Path(getattr(self, k)).resolve()) for k in names}

    @classmethod
    def from_dict(cls, d: Dict[str, str]) -> "TeacherPaths":
        """Read :meth:`to_dict` back (also old teacher.json files, which always hold all four)."""
        missing = [k for k in _GENERATORS if not d.get(k)]
        if missing:
            raise KeyError(f"teacher description lacks {', '.join(missing)} (has {sorted(d)})")
        discs = {k: Path(d[k]) for k in _DISCRIMINATORS if d.get(k)}
        if len(discs) == 1:  # one discriminator is no use to any stage
            discs = {}
        return cls(**{k: Path(d[k]) for k in _GENERATORS}, **discs)


def find_teacher(path: str | Path) -> TeacherPaths:
    """Find G_A, G_B and, when present, D_A, D_B in ``path`` (a coevo run or reference checkpoint folder).

    Both generators are required; the discriminators are optional (both or none:
    a single one is ignored with a warning).
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(
            f"teacher folder not found: {path}. Pass a coevo training run (coevo train --out ...) "
            "or a folder holding latest_net_G_A.pth and latest_net_G_B.pth (latest_net_D_A.pth and "
            "latest_net_D_B.pth too, if you have them)"
        )
    found = {key: next((path / n for n in names if (path / n).is_file()), None)
             for key, names in _CANDIDATES.items()}
    missing = [" or ".join(_CANDIDATES[k]) for k in _GENERATORS if found[k] is None]
    if missing:
        hint = ""
        if (path / "latest_net_G.pth").is_file():
            hint = (f" {path / 'latest_net_G.pth'} is a single-direction reference model (e.g. "
                    "horse2zebra_pretrained); name both directions with --teacher-ab FILE --teacher-ba FILE")
        raise CheckpointError(
            f"{path} is not a teacher: missing {', '.join(missing)}. The search needs both generators "
            f"(G_A maps A->B, G_B maps B->A).{hint}"
        )
    discs = {k: found[k] for k in _DISCRIMINATORS}
    present = [k for k, v in discs.items() if v is not None]
    if len(present) == 1:
        other = "D_B" if present[0] == "D_A" else "D_A"
        log.warning("%s holds %s but not %s: ignoring it; the teacher is used without discriminators",
                    path, discs[present[0]].name, other)
        discs = {k: None for k in discs}
    return TeacherPaths(G_A=found["G_A"], G_B=found["G_B"], **discs)


def resolve_teacher(folder: Optional[str | Path] = None, g_ab: Optional[str | Path] = None,
                    g_ba: Optional[str | Path] = None) -> TeacherPaths:
    """The teacher from a folder (``--teacher``) or two generator files (``--teacher-ab``, ``--teacher-ba``).

    ``g_ab`` maps domain A to B (it becomes G_A), ``g_ba`` maps B to A (G_B); such a
    teacher has no discriminators. Checks before any work that both generators load
    as ResNet generators and share one architecture (:func:`check_generator_pair`).
    Raises :class:`~coevo.config.ConfigError` for a wrong combination of arguments.
    """
    if folder is not None and (g_ab is not None or g_ba is not None):
        raise ConfigError("give the teacher either as a folder (--teacher) or as two generator files "
                          "(--teacher-ab with --teacher-ba), not both")
    if folder is not None:
        paths = find_teacher(folder)
    elif g_ab is not None and g_ba is not None:
        for flag, f in (("--teacher-ab", g_ab), ("--teacher-ba", g_ba)):
            if not Path(f).is_file():
                raise FileNotFoundError(f"{flag}: generator file not found: {f}")
        paths = TeacherPaths(G_A=Path(g_ab), G_B=Path(g_ba))
    elif g_ab is not None or g_ba is not None:
        given, lacking = ("--teacher-ab", "--teacher-ba") if g_ab is not None else ("--teacher-ba", "--teacher-ab")
        raise ConfigError(f"{given} needs {lacking}: a CycleGAN teacher is a pair, one generator per "
                          "direction (--teacher-ab maps A->B, --teacher-ba maps B->A)")
    else:
        raise ConfigError("no teacher: give --teacher FOLDER or --teacher-ab FILE --teacher-ba FILE")
    check_generator_pair(paths)
    return paths


def describe_arch(arch) -> str:
    """``ngf 64, 9 residual blocks`` or ``U-Net, ngf 64, 8 down-samplings`` (plus norm, dropout and
    channels where not the CycleGAN default, and the widths when channel-pruned)."""
    if isinstance(arch, UnetArch):
        text = f"U-Net, ngf {arch.ngf}, {arch.num_downs} down-samplings"
    else:
        text = f"ngf {arch.ngf}, {arch.n_blocks} residual blocks"
    if arch.norm != "instance":
        text += f", {arch.norm} norm"
    if arch.dropout:
        text += ", dropout"
    if (arch.in_channels, arch.out_channels) != (3, 3):
        text += f", {arch.in_channels}->{arch.out_channels} channels"
    return text if arch.is_full else f"{text}, pruned widths {arch.widths}"


def check_generator_pair(paths: TeacherPaths):
    """Load both teacher generators; :class:`CheckpointError` unless they are generators (ResNet or U-Net) of
    one architecture (one MAC budget is priced from one architecture). Returns ``(G_A, G_B)``."""
    from .io import load_generator

    for k in _GENERATORS:  # decided from the name, before anything is loaded
        if Path(getattr(paths, k)).suffix.lower() == ".onnx":
            raise CheckpointError(f"teacher {k} {getattr(paths, k)} is an ONNX export; the search and fine-tuning "
                                  "need PyTorch weights (a state_dict, a coevo .pt, .safetensors or .pt2)")
    nets = {k: load_generator(getattr(paths, k)) for k in _GENERATORS}  # a ResnetGenerator or a UnetGenerator
    a, b = nets["G_A"].arch, nets["G_B"].arch
    # the data are read with the generators' channels (1: grayscale, 3: RGB; coevo.data.domain_channels)
    odd = [k for k, net in nets.items() if not {net.arch.in_channels, net.arch.out_channels} <= {1, 3}]
    if odd:
        arch = nets[odd[0]].arch
        raise CheckpointError(
            f"teacher {odd[0]} ({getattr(paths, odd[0])}) is a {arch.in_channels}->{arch.out_channels} channel "
            "generator (the reference's --input_nc/--output_nc); the search and fine-tuning read images as "
            "1 channel (grayscale) or 3 (RGB). coevo loads, prunes (coevo prune), exports and translates it")
    if not is_matching_pair(a, b):
        raise CheckpointError(
            f"the teacher's two generators differ in architecture: G_A ({paths.G_A}) is {describe_arch(a)}, "
            f"G_B ({paths.G_B}) is {describe_arch(b)}. A CycleGAN trains a matching pair; give the two "
            "directions of one model"
        )
    if paths.has_discriminators:
        check_discriminator_channels(paths, a)
    return nets["G_A"], nets["G_B"]


def is_matching_pair(a, b) -> bool:
    """Whether architectures ``a`` (G_A's) and ``b`` (G_B's) are the two directions of one CycleGAN: equal,
    except that G_B reads what G_A writes (``--input_nc 1 --output_nc 3`` trains a 1->3 G_A and a 3->1 G_B).
    Such a pair has equal MACs and parameters (the stem of one is the head of the other), so one budget
    prices both."""
    return a.to_dict() == dataclasses.replace(b, in_channels=b.out_channels, out_channels=b.in_channels).to_dict()


def check_discriminator_channels(paths: TeacherPaths, arch) -> None:
    """:class:`CheckpointError` unless the teacher's D_A reads images of domain B (``arch``, G_A's, output
    channels) and D_B those of domain A (its input channels): a discriminator of RGB images next to
    generators of grayscale data (or the reverse) belongs to another model."""
    from .io import load_discriminator

    for k, channels, domain in (("D_A", arch.out_channels, "B"), ("D_B", arch.in_channels, "A")):
        d = load_discriminator(getattr(paths, k))
        if d.arch.in_channels != channels:
            raise CheckpointError(
                f"teacher {k} ({getattr(paths, k)}) reads {d.arch.in_channels}-channel images, but the generators' "
                f"domain {domain} images have {channels} channel(s); give the discriminators of this model "
                "(or none: fine-tuning then trains fresh ones)")
