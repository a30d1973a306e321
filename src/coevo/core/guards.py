"""Checks for NaN and inf: a diverged or corrupt network must stop a run, not yield numbers.

A NaN output quantises to a valid-looking image and a NaN fitness sorts anywhere, so
results built on either look plausible and are wrong. These helpers turn them into
:class:`NonFiniteError`, whose message names what held the bad values.
"""
from __future__ import annotations

from typing import Iterable, Optional, Tuple

import torch

from ..errors import CoevoError

DIVERGED_HINT = "the model's weights are corrupt or it came from a diverged training run"


class NonFiniteError(CoevoError, ValueError):
    """A tensor or number that holds NaN or inf; the message names it and the likely cause."""


def non_finite_kind(tensor: torch.Tensor) -> Optional[str]:
    """``"NaN"``, ``"inf"`` or None for a tensor (integer tensors are always finite)."""
    if not (tensor.is_floating_point() or tensor.is_complex()):
        return None
    t = tensor.detach()
    if torch.isnan(t).any():
        return "NaN"
    if torch.isinf(t).any():
        return "inf"
    return None


def first_non_finite(named: Iterable[Tuple[str, torch.Tensor]]) -> Optional[Tuple[str, str]]:
    """``(name, "NaN"|"inf")`` of the first tensor that is not finite, or None."""
    for name, tensor in named:
        kind = non_finite_kind(tensor)
        if kind is not None:
            return name, kind
    return None


def check_finite(tensor: torch.Tensor, what: str, hint: str = DIVERGED_HINT) -> torch.Tensor:
    """Return ``tensor``; raise :class:`NonFiniteError` ``"<what> has NaN values; <hint>"`` if it is not finite."""
    kind = non_finite_kind(tensor)
    if kind is not None:
        raise NonFiniteError(f"{what} has {kind} values; {hint}")
    return tensor


__all__ = ["NonFiniteError", "non_finite_kind", "first_non_finite", "check_finite", "DIVERGED_HINT"]
