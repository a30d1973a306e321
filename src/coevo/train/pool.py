"""History of generated images for the discriminator updates (Shrivastava et al. 2017).

The discriminator sees a mix of the newest fakes and older ones, which damps
oscillation. Randomness comes from the pool's own seeded ``torch.Generator``;
contents and generator state go into the training checkpoint, so a resumed run
draws exactly what an uninterrupted run would have drawn.
"""
from __future__ import annotations

from typing import Any, Dict, List

import torch


class ImagePool:
    """Buffer of up to ``size`` generated images (NCHW, [-1, 1]); ``size == 0`` passes images through."""

    def __init__(self, size: int, generator: torch.Generator) -> None:
        if size < 0:
            raise ValueError(f"pool size must be >= 0, got {size}")
        self.size = int(size)
        self.generator = generator
        self.images: List[torch.Tensor] = []

    def query(self, images: torch.Tensor) -> torch.Tensor:
        """Return a batch as large as ``images``: each item is either the new image or,
        with probability 1/2 once the pool is full, an older one it replaces."""
        if self.size == 0:
            return images
        out = []
        for image in images.detach():
            image = image.unsqueeze(0)
            if len(self.images) < self.size:
                self.images.append(image.clone())
                out.append(image)
            elif torch.rand(1, generator=self.generator).item() > 0.5:
                idx = int(torch.randint(0, self.size, (1,), generator=self.generator).item())
                out.append(self.images[idx].clone())
                self.images[idx] = image.clone()
            else:
                out.append(image)
        return torch.cat(out, 0)

    def state_dict(self) -> Dict[str, Any]:
        return {
            "size": self.size,
            "images": [im.cpu() for im in self.images],
            "rng": self.generator.get_state(),
        }

    def load_state_dict(self, state: Dict[str, Any], device: torch.device | str = "cpu") -> None:
        if int(state["size"]) != self.size:
            raise ValueError(f"pool size in checkpoint ({state['size']}) differs from {self.size}")
        self.images = [im.to(device) for im in state["images"]]
        self.generator.set_state(state["rng"])
