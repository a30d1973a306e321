"""CycleGAN losses (Zhu et al. 2017) as plain functions of tensors.

Images are NCHW in [-1, 1]; discriminator outputs are raw PatchGAN score maps.
The adversarial loss is LSGAN: mean squared error to 1 (real) or 0 (fake).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def gan_loss(scores: torch.Tensor, target_is_real: bool) -> torch.Tensor:
    """LSGAN loss of a score map against an all-ones (real) or all-zeros (fake) target."""
    target = torch.ones_like(scores) if target_is_real else torch.zeros_like(scores)
    return F.mse_loss(scores, target)


def discriminator_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """Halved so the discriminator learns at half the generator's rate (as the reference does)."""
    return 0.5 * (gan_loss(real_scores, True) + gan_loss(fake_scores, False))


def l1(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference; used for the cycle, identity and distillation terms."""
    return F.l1_loss(output, target)


def mse(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared difference; used for feature distillation (mapped student vs teacher activations)."""
    return F.mse_loss(output, target)
