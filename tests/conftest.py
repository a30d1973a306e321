"""Shared fixtures: tiny models and tiny image folders, all on CPU, all in tmp_path."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from coevo.models import GeneratorArch, ResnetGenerator


@pytest.fixture(autouse=True)
def _few_threads():
    # One thread: tiny models gain nothing from more, and on a CI machine shared with
    # other jobs torch's default (one per core) made runs 5-20x slower here.
    torch.set_num_threads(1)


def make_image_folder(root: Path, n: int = 4, size: int = 32, seed: int = 0,
                      splits=("trainA", "trainB", "testA", "testB")) -> Path:
    """Write ``n`` small random RGB PNGs into each split folder under ``root``."""
    rng = np.random.default_rng(seed)
    for split in splits:
        d = root / split
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            arr = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
            Image.fromarray(arr).save(d / f"{i:03d}.png")
    return root


@pytest.fixture
def image_folder(tmp_path) -> Path:
    return make_image_folder(tmp_path / "data")


@pytest.fixture
def tiny_arch() -> GeneratorArch:
    return GeneratorArch.full(ngf=4, n_blocks=2)


@pytest.fixture
def tiny_generator(tiny_arch) -> ResnetGenerator:
    torch.manual_seed(0)
    return ResnetGenerator(tiny_arch).eval()
