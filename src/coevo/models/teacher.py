"""Locate the four networks of a trained CycleGAN: a coevo training run or a folder of reference checkpoints."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict

from .io import CheckpointError

# coevo run names first, then the reference names (latest_net_G_A.pth, ...).
_CANDIDATES = {
    "G_A": ["G_A.pt", "latest_net_G_A.pth"],
    "G_B": ["G_B.pt", "latest_net_G_B.pth"],
    "D_A": ["D_A.pt", "latest_net_D_A.pth"],
    "D_B": ["D_B.pt", "latest_net_D_B.pth"],
}


@dataclass
class TeacherPaths:
    """Files of a trained CycleGAN. G_A maps A->B (the paper's G_AB); D_A judges domain B images.

    Naming follows the reference code: D_A is trained against G_A, so it scores
    images of domain B; D_B scores images of domain A.
    """

    G_A: Path
    G_B: Path
    D_A: Path
    D_B: Path

    def to_dict(self) -> Dict[str, str]:
        return {k: str(Path(getattr(self, k)).resolve()) for k in ("G_A", "G_B", "D_A", "D_B")}

    @classmethod
    def from_dict(cls, d: Dict[str, str]) -> "TeacherPaths":
        return cls(**{k: Path(d[k]) for k in ("G_A", "G_B", "D_A", "D_B")})


def find_teacher(path: str | Path) -> TeacherPaths:
    """Find G_A, G_B, D_A, D_B in ``path`` (a coevo run folder or reference checkpoint folder)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(
            f"teacher folder not found: {path}. Pass a coevo training run (coevo train --out ...) "
            "or a folder holding latest_net_G_A.pth, latest_net_G_B.pth, latest_net_D_A.pth, latest_net_D_B.pth"
        )
    found, missing = {}, []
    for key, names in _CANDIDATES.items():
        hit = next((path / n for n in names if (path / n).is_file()), None)
        if hit is None:
            missing.append(" or ".join(names))
        found[key] = hit
    if missing:
        raise CheckpointError(
            f"{path} is not a complete teacher: missing {', '.join(missing)}. The search needs both "
            "generators and both discriminators (the discriminators give the offline perceptual metric)."
        )
    return TeacherPaths(**found)
