"""Weight initialisation from an explicit generator (the reference's ``init_type='normal'``)."""
from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def init_weights(net: nn.Module, generator: torch.Generator, gain: float = 0.02) -> nn.Module:
    """Conv and transposed-conv weights ~ N(0, gain), biases 0; affine norm weights ~ N(1, gain).

    Draws happen in module order, so a given generator state always gives the same network.
    """
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, gain, generator=generator)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d)) and m.weight is not None:
            nn.init.normal_(m.weight, 1.0, gain, generator=generator)
            nn.init.zeros_(m.bias)
    return net
