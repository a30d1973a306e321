"""The search state saved after every generation (``state.pt``), in a plain, versioned format.

Only tensors, strings, numbers, lists and dicts are stored, so the file loads
with ``torch.load(weights_only=True)`` (:func:`coevo.models.io.safe_torch_load`).
A resumed search restores the populations with their fitness, the best
genomes, the fitness cache and the numpy generator's exact state, and so
continues exactly as the uninterrupted run would have.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict

import numpy as np
import torch

from ..core.files import atomic_torch_save
from ..errors import CheckpointError
from ..models.io import safe_torch_load

STATE_FORMAT = "coevo.search_state"
STATE_VERSION = 1


@dataclass
class PopulationState:
    """Bits ``[P, n_bits]`` of every member and its fitness row (see :meth:`FitnessTerms.to_row`)."""

    bits: np.ndarray
    terms: np.ndarray

    def to_dict(self) -> Dict[str, torch.Tensor]:
        return {"bits": torch.from_numpy(np.ascontiguousarray(self.bits, dtype=bool)),
                "terms": torch.from_numpy(np.ascontiguousarray(self.terms, dtype=np.float64))}

    @classmethod
    def from_dict(cls, d: Dict[str, torch.Tensor]) -> "PopulationState":
        return cls(d["bits"].numpy().astype(bool), d["terms"].numpy().astype(np.float64))


@dataclass
class SearchState:
    """Everything needed to continue a search after generation ``generation``."""

    generation: int
    rng_state: Dict[str, Any]
    populations: Dict[str, PopulationState]
    cache: Dict[str, Any]
    history_len: int
    elapsed_s: float
    tied: bool
    search_config: Dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "generation": int(self.generation),
            "rng_state": self.rng_state,
            "populations": {k: v.to_dict() for k, v in self.populations.items()},
            "cache": self.cache,
            "history_len": int(self.history_len),
            "elapsed_s": float(self.elapsed_s),
            "tied": bool(self.tied),
            "search_config": dict(self.search_config),
        }

    @classmethod
    def from_dict(cls, d: Dict[str, Any], source: str = "<state>") -> "SearchState":
        if not isinstance(d, dict) or d.get("format") != STATE_FORMAT:
            raise CheckpointError(f"{source} is not a coevo search state")
        if int(d.get("version", 0)) > STATE_VERSION:
            raise CheckpointError(
                f"{source}: search state version {d['version']} is newer than this coevo reads "
                f"({STATE_VERSION}); upgrade coevo"
            )
        return cls(
            generation=int(d["generation"]),
            rng_state=d["rng_state"],
            populations={k: PopulationState.from_dict(v) for k, v in d["populations"].items()},
            cache=d["cache"],
            history_len=int(d["history_len"]),
            elapsed_s=float(d["elapsed_s"]),
            tied=bool(d["tied"]),
            search_config=dict(d.get("search_config") or {}),
        )


def save_state(state: SearchState, path: str | Path) -> Path:
    """Atomic: a crash while saving leaves the previous generation's state intact."""
    atomic_torch_save(state.to_dict(), path)
    return Path(path)


def load_state(path: str | Path) -> SearchState:
    return SearchState.from_dict(safe_torch_load(path), str(path))

