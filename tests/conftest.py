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
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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


def make_teacher_folder(folder: Path, arch: GeneratorArch, seed: int = 0, ndf: int = 4) -> Path:
    """A (random, seeded) coevo teacher folder: G_A.pt, G_B.pt and PatchGAN D_A.pt, D_B.pt."""
    from coevo.models import DiscriminatorArch, NLayerDiscriminator, save_discriminator, save_generator

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    for name in ("G_A", "G_B"):
        save_generator(ResnetGenerator(arch), folder / f"{name}.pt")
    for name in ("D_A", "D_B"):
        save_discriminator(NLayerDiscriminator(DiscriminatorArch(ndf=ndf)), folder / f"{name}.pt")
    return folder


def assert_same_tree(a, b, path="checkpoint"):
    """Bit-identical nested dicts/lists of tensors and numbers (checkpoints, search states)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            assert_same_tree(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tree(x, y, f"{path}[{i}]")
    else:
        assert a == b, path


def direct_edges(gen, x: torch.Tensor, image_out: str, channels=range):
    """``{(producer, out channel): {(consumer, in channel), ...}}``: the real data flow of ``gen``.

    One output channel of one conv (``gen.named_convs()``) is perturbed while every other conv's
    output is frozen to its clean value, so only the convs that read that channel directly see
    a change. ``image_out`` names the conv that writes the image (not a producer of any group);
    ``channels(width)`` picks the output channels to try (default: all).
    """
    convs = dict(gen.named_convs())
    clean_in, clean_out = {}, {}

    def record(name):
        def hook(mod, inp, out):
            clean_in[name], clean_out[name] = inp[0].detach().clone(), out.detach().clone()
        return hook

    handles = [c.register_forward_hook(record(n)) for n, c in convs.items()]
    with torch.no_grad():
        gen(x)
    for h in handles:
        h.remove()
    edges = {}
    for producer in convs:
        if producer == image_out:
            continue
        for c in channels(clean_out[producer].shape[1]):
            seen = {}

            def freeze(name):
                def hook(mod, inp, out):
                    seen[name] = inp[0].detach().clone()
                    out = clean_out[name].clone()
                    if name == producer:
                        out[:, c] += 3.0 + out[:, c].abs()
                    return out
                return hook

            handles = [m.register_forward_hook(freeze(n)) for n, m in convs.items()]
            with torch.no_grad():
                gen(x)
            for h in handles:
                h.remove()
            edges[(producer, c)] = {
                (q, int(j)) for q in convs
                for j in torch.nonzero((seen[q] - clean_in[q]).abs().amax(dim=(0, 2, 3)) > 1e-6).flatten()
            }
    return edges


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
