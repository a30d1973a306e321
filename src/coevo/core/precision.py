"""Mixed precision: optional bfloat16 autocast on CUDA (``train.amp``, ``finetune.amp``, ``search.amp``).

``none`` (the default) computes in float32 everywhere. ``bf16`` runs the
networks' forward passes under ``torch.autocast(dtype=torch.bfloat16)``;
losses and fitness terms are still reduced in float32, and bf16 needs no
gradient scaler. It is for GPUs only: :func:`coevo.config.validate` refuses it
with ``device: cpu``.
"""
from __future__ import annotations

import contextlib
from typing import ContextManager

import torch
from ..errors import ConfigError

AMP_MODES = ("none", "bf16")


def autocast(device: str | torch.device, amp: str) -> ContextManager:
    """The autocast context for ``amp`` on ``device`` (a no-op for ``none``)."""
    if amp == "none":
        return contextlib.nullcontext()
    device = torch.device(device)
    if amp != "bf16":
        raise ConfigError(f"amp must be one of {list(AMP_MODES)}, got {amp!r}")
    if device.type != "cuda":
        raise ConfigError(f"amp=bf16 needs a CUDA device, got device={device}; use amp=none")
    return torch.autocast("cuda", dtype=torch.bfloat16)
