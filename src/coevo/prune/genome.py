"""Genome: which filters of a generator to keep, as one boolean mask per named channel group.

Masks index into ``genome.arch``, the architecture of the network being pruned
(usually the full teacher). Two layouts exist:

* free (default): every group is searched on its own, including each residual
  block's inner channels (``block{i}.inner``);
* tied (the layout of the paper's official code, which shares one mask between the trunk
  and every residual block's inner conv): each ``block{i}.inner`` mask
  equals the ``trunk`` mask, so the bit string is stem + down1 + trunk + up1 + up2
  (640 bits at ngf=64).

Saved as JSON: ``{"format": "coevo.genome", "version": 1, "arch": {...}, "tied": false,
"kept": {group: [kept channel indices]}, "meta": {...}}``.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from ..models.family import arch_from_dict, arch_group_names
from ..models.generator import GeneratorArch, group_names
from ..models.unet import UnetArch
from ..core.files import PathLike, atomic_write_text, regular_file
from ..errors import CoevoError

GENOME_FORMAT = "coevo.genome"
GENOME_VERSION = 1


class GenomeError(CoevoError, ValueError):
    """A genome that does not describe a valid pruning of its architecture; the message names the group."""


def _is_inner(name: str) -> bool:
    return name.endswith(".inner")


def layout_names(n_blocks, tied: bool = False) -> List[str]:
    """Groups that own bits in :meth:`Genome.to_bits`, in order (tied mode leaves out the inner groups).

    ``n_blocks``: a ResNet's block count, or an architecture of either family."""
    names = group_names(n_blocks) if isinstance(n_blocks, int) else arch_group_names(n_blocks)
    return [n for n in names if not (tied and _is_inner(n))]


def bit_layout(arch: GeneratorArch, tied: bool = False) -> Dict[str, slice]:
    """``{group: slice of the bit string}`` for :meth:`Genome.to_bits` / :meth:`Genome.from_bits`."""
    out, start = {}, 0
    for name in layout_names(arch, tied):
        out[name] = slice(start, start + arch.widths[name])
        start += arch.widths[name]
    return out


def _as_mask(name: str, value: Any, size: int) -> np.ndarray:
    arr = np.asarray(value)
    if arr.ndim != 1:
        raise GenomeError(f"group '{name}': mask must be 1-D, got shape {arr.shape}")
    if arr.dtype != np.bool_:
        if arr.size and not (np.issubdtype(arr.dtype, np.number) and np.isin(arr, (0, 1)).all()):
            raise GenomeError(
                f"group '{name}': a mask holds booleans (or 0/1), got dtype {arr.dtype}; "
                "to list kept channel indices use Genome.from_kept"
            )
    if arr.shape[0] != size:
        raise GenomeError(
            f"group '{name}': mask has {arr.shape[0]} entries but the group has {size} channels"
        )
    return np.array(arr, dtype=bool)


@dataclass(eq=False)
class Genome:
    """Keep-masks keyed by channel group name. See the module docstring.

    ``masks[name]`` is a bool array of length ``arch.widths[name]`` (True = keep the
    filter). In tied mode the ``block{i}.inner`` entries are the trunk's array itself.
    Equality compares ``arch``, ``tied`` and the masks (not ``meta``). Genomes are not
    hashable because the masks are mutable; use :meth:`key` for caches and sets.
    """

    arch: GeneratorArch
    masks: Dict[str, np.ndarray]
    tied: bool = False
    meta: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.tied = bool(self.tied)
        self.meta = dict(self.meta or {})
        self.masks = self._checked_masks(self.masks)

    # ------------------------------------------------------------------ construction
    def _checked_masks(self, masks: Mapping[str, Any]) -> Dict[str, np.ndarray]:
        if not isinstance(masks, Mapping):
            raise GenomeError(f"masks must be a mapping of group name -> bool array, got {type(masks).__name__}")
        arch = self.arch
        names = arch_group_names(arch)
        unknown = [k for k in masks if k not in arch.widths]
        if unknown:
            raise GenomeError(f"unknown channel group(s) {unknown} for {_family(arch)}; the groups are {names}")
        if self.tied and isinstance(arch, UnetArch):
            raise GenomeError("a U-Net has no tied layout (no residual blocks); use tied=False")
        if self.tied:
            bad = [n for n in names if _is_inner(n) and arch.widths[n] != arch.widths["trunk"]]
            if bad:
                raise GenomeError(
                    f"tied mode needs every inner group as wide as the trunk ({arch.widths['trunk']}); "
                    f"{bad} differ. Use tied=False for this architecture"
                )
        required = layout_names(arch, self.tied)
        missing = [n for n in required if n not in masks]
        if missing:
            raise GenomeError(f"missing channel group(s) {missing}; a genome needs a mask for each of {required}")
        out = {n: _as_mask(n, masks[n], arch.widths[n]) for n in required}
        if self.tied:
            trunk = out["trunk"]
            for n in names:
                if _is_inner(n):
                    if n in masks and not np.array_equal(_as_mask(n, masks[n], arch.widths[n]), trunk):
                        raise GenomeError(f"group '{n}': in tied mode its mask must equal the trunk mask")
                    out[n] = trunk
        return {n: out[n] for n in names}

    @classmethod
    def all_keep(cls, arch: GeneratorArch, tied: bool = False) -> "Genome":
        """The genome that keeps every filter (slims to an identical network)."""
        return cls(arch, {n: np.ones(c, dtype=bool) for n, c in arch.widths.items()}, tied=tied)

    @classmethod
    def from_kept(cls, arch: GeneratorArch, kept: Mapping[str, Sequence[int]], tied: bool = False,
                  meta: Optional[Mapping[str, Any]] = None) -> "Genome":
        """Build from ``{group: [kept channel indices]}``; every group must keep at least one channel.

        In tied mode the ``block{i}.inner`` entries may be left out (they follow the trunk).
        """
        if not isinstance(kept, Mapping):
            raise GenomeError(f"kept must map group name -> list of indices, got {type(kept).__name__}")
        masks = {}
        for name, indices in kept.items():
            if name not in arch.widths:
                raise GenomeError(
                    f"unknown channel group '{name}' for {_family(arch)}; the groups are {arch_group_names(arch)}"
                )
            masks[name] = _indices_to_mask(name, indices, arch.widths[name])
        genome = cls(arch, masks, tied=tied, meta=dict(meta or {}))
        genome.validate(min_channels=1)
        return genome

    @classmethod
    def from_bits(cls, arch: GeneratorArch, bits: Sequence[bool] | np.ndarray, tied: bool = False,
                  meta: Optional[Mapping[str, Any]] = None) -> "Genome":
        """Inverse of :meth:`to_bits` (layout: :func:`bit_layout`)."""
        bits = np.asarray(bits)
        layout = bit_layout(arch, tied)
        n_bits = sum(s.stop - s.start for s in layout.values())
        if bits.ndim != 1 or bits.shape[0] != n_bits:
            raise GenomeError(
                f"expected a 1-D string of {n_bits} bits for this {'tied' if tied else 'free'} layout, "
                f"got shape {bits.shape}"
            )
        return cls(arch, {n: bits[s] for n, s in layout.items()}, tied=tied, meta=dict(meta or {}))

    def copy(self) -> "Genome":
        return Genome(self.arch, {n: m.copy() for n, m in self.masks.items()}, self.tied, dict(self.meta))

    # ------------------------------------------------------------------ queries
    def kept(self, name: str) -> List[int]:
        """Kept channel indices of one group, ascending."""
        if name not in self.masks:
            raise GenomeError(f"unknown channel group '{name}'; the groups are {list(self.masks)}")
        return np.flatnonzero(self.masks[name]).tolist()

    def widths(self) -> Dict[str, int]:
        """Kept channel count per group (the slim network's widths)."""
        return {n: int(np.count_nonzero(m)) for n, m in self.masks.items()}

    def slim_arch(self) -> GeneratorArch:
        """Architecture of the slim network; raises :class:`GenomeError` when a group keeps nothing."""
        self.validate(min_channels=1)
        return self.arch.with_widths(self.widths())

    @property
    def n_bits(self) -> int:
        return sum(self.arch.widths[n] for n in layout_names(self.arch, self.tied))

    def to_bits(self) -> np.ndarray:
        """All layout masks concatenated in group order (bool, length :attr:`n_bits`)."""
        return np.concatenate([self.masks[n] for n in layout_names(self.arch, self.tied)])

    def key(self) -> bytes:
        """Hashable cache key: equal masks give equal keys (the same slim network)."""
        return np.packbits(np.concatenate(list(self.masks.values()))).tobytes()

    def validate(self, min_channels: int = 1) -> "Genome":
        """Check structure and that every group keeps ``min(min_channels, group width)`` channels or more.

        Returns ``self``; raises :class:`GenomeError` naming the offending group.
        """
        if int(min_channels) < 1:
            raise GenomeError(f"min_channels must be >= 1, got {min_channels}")
        self.masks = self._checked_masks(self.masks)
        for name, mask in self.masks.items():
            need = min(int(min_channels), mask.shape[0])
            have = int(np.count_nonzero(mask))
            if have < need:
                raise GenomeError(
                    f"group '{name}' keeps {have} of {mask.shape[0]} channels; every group must keep "
                    f"at least {need}"
                )
        return self

    # ------------------------------------------------------------------ comparison, display
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Genome):
            return NotImplemented
        return (
            self.tied == other.tied
            and self.arch == other.arch
            and self.masks.keys() == other.masks.keys()
            and all(np.array_equal(m, other.masks[n]) for n, m in self.masks.items())
        )

    __hash__ = None  # type: ignore[assignment]  # mutable masks: use key()

    def __repr__(self) -> str:
        return (
            f"Genome(ngf={self.arch.ngf}, {_family_size(self.arch)}, tied={self.tied}, "
            f"widths={self.widths()})"
        )

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> Dict[str, Any]:
        return {
            "format": GENOME_FORMAT,
            "version": GENOME_VERSION,
            "arch": self.arch.to_dict(),
            "tied": self.tied,
            "kept": {n: self.kept(n) for n in self.masks},
            "meta": dict(self.meta),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Genome":
        if not isinstance(d, Mapping) or d.get("format") != GENOME_FORMAT:
            got = d.get("format") if isinstance(d, Mapping) else type(d).__name__
            raise GenomeError(f"not a coevo genome (format {got!r}, expected {GENOME_FORMAT!r})")
        if int(d.get("version", 1)) > GENOME_VERSION:
            raise GenomeError(
                f"genome version {d['version']} is newer than this coevo understands ({GENOME_VERSION}); "
                "upgrade coevo"
            )
        for key in ("arch", "kept"):
            if key not in d:
                raise GenomeError(f"genome has no '{key}' entry")
        try:
            arch = arch_from_dict(d["arch"])
        except (KeyError, TypeError, ValueError) as e:
            raise GenomeError(f"genome architecture is invalid: {e}") from e
        return cls.from_kept(arch, d["kept"], tied=bool(d.get("tied", False)), meta=d.get("meta") or {})

    def save_json(self, path: PathLike) -> Path:
        text = json.dumps(self.to_dict(), indent=2)
        # One line per index list instead of one line per index.
        text = re.sub(r"\[[\d,\s]*\]", lambda m: json.dumps(json.loads(m.group(0))), text)
        atomic_write_text(path, text + "\n")
        return Path(path)

    @classmethod
    def load_json(cls, path: PathLike) -> "Genome":
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"genome file not found: {path}")
        regular_file(path, "genome file")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise GenomeError(f"{path} is not valid JSON: {e}") from e
        try:
            return cls.from_dict(data)
        except GenomeError as e:
            raise GenomeError(f"{path}: {e}") from e


def _family(arch) -> str:
    return f"a {arch.num_downs}-level U-Net" if isinstance(arch, UnetArch) else f"a {arch.n_blocks}-block generator"


def _family_size(arch) -> str:
    return f"num_downs={arch.num_downs}" if isinstance(arch, UnetArch) else f"n_blocks={arch.n_blocks}"


def _indices_to_mask(name: str, indices: Sequence[int], size: int) -> np.ndarray:
    arr = np.asarray(list(indices) if not isinstance(indices, np.ndarray) else indices)
    if arr.size == 0:
        arr = arr.astype(np.int64)  # [] reads as float64
    if arr.ndim != 1 or (arr.size and (arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer))):
        raise GenomeError(f"group '{name}': kept channels must be a list of integer indices, got {indices!r}"[:300])
    bad = arr[(arr < 0) | (arr >= size)]
    if bad.size:
        raise GenomeError(
            f"group '{name}': index {int(bad[0])} out of range; the group has {size} channels (0..{size - 1})"
        )
    uniq, counts = np.unique(arr, return_counts=True)
    if (counts > 1).any():
        raise GenomeError(f"group '{name}': duplicate indices {uniq[counts > 1].tolist()}")
    mask = np.zeros(size, dtype=bool)
    mask[arr] = True
    return mask
