"""Datasets over image folders: unpaired A/B training data and single folders for inference.

Every random choice (the B partner, crop offsets, flips) comes from a numpy
generator seeded with ``(seed, epoch, index)``. A sample therefore depends only
on those three numbers: it is the same in every DataLoader worker, in every
process, and after a resume. Call :meth:`UnpairedImageDataset.set_epoch` before
each epoch (and create the DataLoader iterator afterwards; do not use
``persistent_workers=True``, whose workers keep their own copy of the dataset).
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from ..core.limits import SIZE_MULTIPLE, check_image_side
from .errors import DataError
from .images import LAYOUT_HINT, check_channels, list_images, load_image, to_tensor

PathLike = Union[str, os.PathLike]

# Distinct stream tags, so the sample stream, the shuffle order and the split never share numbers.
_STREAM_SAMPLE = 0
_STREAM_SHUFFLE = 1
_STREAM_SPLIT = 2


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator behind every random choice for sample ``index`` of ``epoch``."""
    return np.random.default_rng([_STREAM_SAMPLE, int(seed), int(epoch), int(index)])


def split_train_val(n: int, val_fraction: float, seed: int) -> Tuple[List[int], List[int]]:
    """Split ``range(n)`` into sorted, disjoint ``(train_indices, val_indices)``.

    ``round(n * val_fraction)`` items go to validation, at least one when
    ``val_fraction > 0`` and ``n >= 2``, and never all of them. Deterministic in ``seed``.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    n_val = int(round(n * val_fraction))
    if val_fraction > 0 and n >= 2:
        n_val = min(max(1, n_val), n - 1)
    else:
        n_val = 0 if n < 2 else n_val
    order = np.random.default_rng([_STREAM_SPLIT, int(seed)]).permutation(n)
    val = sorted(int(i) for i in order[:n_val])
    train = sorted(int(i) for i in order[n_val:])
    return train, val


def check_dataset_args(root: Path, load_size: int, crop_size: int, augment: bool, hint: str) -> None:
    """What a folder dataset checks before it lists files: positive sizes, a crop that fits in
    ``load_size`` when augmenting, and an existing ``root`` (``hint``: the layout it should hold)."""
    if crop_size < 1 or load_size < 1:
        raise DataError(f"crop_size and load_size must be positive, got {crop_size} and {load_size}")
    if augment and crop_size > load_size:
        raise DataError(f"crop_size ({crop_size}) must be <= load_size ({load_size})")
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist; {hint}")


def domain_channels(arch) -> Tuple[int, int]:
    """``(channels of domain A, channels of domain B)`` images are read with for a teacher whose G_A
    (A -> B) has architecture ``arch``: its input and output channels (1 reads grayscale, 3 RGB).
    The data of a CycleGAN follow its generators, never a flag."""
    return (check_channels(int(arch.in_channels), "the generator's input channels"),
            check_channels(int(arch.out_channels), "the generator's output channels"))


def _resize(img: Image.Image, size: Tuple[int, int]) -> Image.Image:
    """Bicubic resize to (width, height); a no-op when the size already matches."""
    return img if img.size == size else img.resize(size, Image.BICUBIC)


def _subset(paths: List[Path], indices: Optional[Sequence[int]], folder: Path) -> List[Path]:
    if indices is None:
        return paths
    indices = [int(i) for i in indices]
    bad = [i for i in indices if not 0 <= i < len(paths)]
    if bad:
        raise DataError(f"indices {bad[:5]} are out of range for the {len(paths)} images in {folder}")
    if not indices:
        raise DataError(f"an empty index subset was given for {folder}")
    return [paths[i] for i in indices]


class UnpairedImageDataset(Dataset):
    """Unpaired images of two domains: ``root/{phase}A`` and ``root/{phase}B``.

    ``len`` is ``max(len(A), len(B))`` as in the reference CycleGAN. Item ``i``
    is ``{"A": 3xHxW, "B": 3xHxW, "A_path": str, "B_path": str}``, RGB float in
    [-1, 1], with A = image ``i % len(A)``. ``channels``: how each domain is read, ``(A, B)``; a 1
    reads that domain's images as grayscale (1xHxW), as a teacher of 1-channel data needs (see
    :func:`domain_channels`).

    With augmentation (the default for ``phase="train"``): B is a random image,
    both are resized to ``load_size`` x ``load_size`` (bicubic), randomly
    cropped to ``crop_size`` and, when ``flip``, flipped horizontally with
    probability 1/2. Without it (other phases, or ``augment=False``): both are
    resized to ``crop_size`` x ``crop_size``, never flipped, and B = image ``i % len(B)``.

    ``indices_A`` / ``indices_B`` restrict each side to a subset of its sorted
    file list (see :func:`split_train_val`); with ``skip_bad`` they index the
    list that remains after bad files are dropped.
    """

    def __init__(self, root: PathLike, phase: str = "train", load_size: int = 286, crop_size: int = 256,
                 flip: bool = True, skip_bad: bool = False, seed: int = 0,
                 indices_A: Optional[Sequence[int]] = None, indices_B: Optional[Sequence[int]] = None,
                 *, augment: Optional[bool] = None, channels: Tuple[int, int] = (3, 3)) -> None:
        self.root = Path(root)
        self.channels = tuple(check_channels(int(c), f"the channels of domain {side}")
                              for side, c in zip("AB", channels))
        self.phase = phase
        self.augment = (phase == "train") if augment is None else bool(augment)
        check_dataset_args(self.root, load_size, crop_size, self.augment, LAYOUT_HINT)
        self.load_size = int(load_size)
        self.crop_size = int(crop_size)
        self.flip = bool(flip)
        self.seed = int(seed)
        self.epoch = 0
        dir_A, dir_B = self.root / f"{phase}A", self.root / f"{phase}B"
        self.A_paths = _subset(list_images(dir_A, skip_bad=skip_bad), indices_A, dir_A)
        self.B_paths = _subset(list_images(dir_B, skip_bad=skip_bad), indices_B, dir_B)

    def subset(self, indices_A: Optional[Sequence[int]] = None, indices_B: Optional[Sequence[int]] = None,
               *, augment: Optional[bool] = None) -> "UnpairedImageDataset":
        """A copy restricted to the given indices of this dataset's A and B lists (files are not re-listed)."""
        other = copy.copy(self)
        other.A_paths = _subset(self.A_paths, indices_A, self.root / f"{self.phase}A")
        other.B_paths = _subset(self.B_paths, indices_B, self.root / f"{self.phase}B")
        if augment is not None:
            other.augment = bool(augment)
            if other.augment and self.crop_size > self.load_size:
                raise DataError(f"crop_size ({self.crop_size}) must be <= load_size ({self.load_size})")
        return other

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose random draws ``__getitem__`` makes (call before each epoch)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return max(len(self.A_paths), len(self.B_paths))

    def _transform(self, img: Image.Image, rng: np.random.Generator, channels: int) -> torch.Tensor:
        if not self.augment:
            return to_tensor(_resize(img, (self.crop_size, self.crop_size)), channels)
        img = _resize(img, (self.load_size, self.load_size))
        x = int(rng.integers(0, self.load_size - self.crop_size + 1))
        y = int(rng.integers(0, self.load_size - self.crop_size + 1))
        if self.crop_size < self.load_size:
            img = img.crop((x, y, x + self.crop_size, y + self.crop_size))
        # Always draw, so the stream does not depend on ``flip``'s value.
        if rng.random() < 0.5 and self.flip:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        return to_tensor(img, channels)

    def __getitem__(self, index: int) -> Dict[str, object]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        rng = sample_rng(self.seed, self.epoch, index)
        a_path = self.A_paths[index % len(self.A_paths)]
        if self.augment:
            b_path = self.B_paths[int(rng.integers(0, len(self.B_paths)))]
        else:
            b_path = self.B_paths[index % len(self.B_paths)]
        a = self._transform(load_image(a_path, self.channels[0]), rng, self.channels[0])
        b = self._transform(load_image(b_path, self.channels[1]), rng, self.channels[1])
        return {"A": a, "B": b, "A_path": str(a_path), "B_path": str(b_path)}


class SingleImageDataset(Dataset):
    """Every image of one folder, in name order, for inference: ``{"image": 3xHxW, "path": str}``.

    ``image`` is RGB float in [-1, 1] (``channels`` 1: grayscale, 1xHxW). With ``size`` each image is resized
    (bicubic) to ``size`` x ``size``; without it the image keeps its size except
    that H and W are resized down to the nearest multiple of 4, which the
    generator needs. Sizes may differ between images: use ``batch_size=1``.
    """

    def __init__(self, folder: PathLike, size: Optional[int] = None, skip_bad: bool = False,
                 channels: int = 3) -> None:
        self.channels = check_channels(channels, f"images of {folder}")
        if size is not None:
            check_image_side(int(size), "image size", error=DataError)
        self.folder = Path(folder)
        self.size = None if size is None else int(size)
        self.paths = list_images(self.folder, skip_bad=skip_bad)

    def __len__(self) -> int:
        return len(self.paths)

    def _target_size(self, img: Image.Image, path: Path) -> Tuple[int, int]:
        if self.size is not None:
            return self.size, self.size
        w, h = img.size
        if w < SIZE_MULTIPLE or h < SIZE_MULTIPLE:
            raise DataError(f"image {path} is {w}x{h}; it must be at least {SIZE_MULTIPLE}x{SIZE_MULTIPLE} pixels")
        return w - w % SIZE_MULTIPLE, h - h % SIZE_MULTIPLE

    def __getitem__(self, index: int) -> Dict[str, object]:
        path = self.paths[index]
        img = load_image(path, self.channels)
        return {"image": to_tensor(_resize(img, self._target_size(img, path)), self.channels), "path": str(path)}


def shuffle_generator(seed: int, epoch: int) -> torch.Generator:
    """The torch generator behind the shuffle order of ``epoch``."""
    state = np.random.SeedSequence([_STREAM_SHUFFLE, int(seed), int(epoch)]).generate_state(2)
    generator = torch.Generator()
    generator.manual_seed(int(state[0]) << 32 | int(state[1]))
    return generator


class SeededDistributedSampler(DistributedSampler):
    """A DistributedSampler over the one-process loader's permutation of ``(seed, epoch)``.

    Rank ``r`` of ``W`` takes items ``r, r + W, ...`` of that permutation
    (padded, as DistributedSampler pads, to a multiple of ``W``), so with
    ``batch_size / W`` per rank the ``W`` shares of step ``k`` are batch ``k``
    of a one-process run.
    """

    def __init__(self, dataset: Dataset, replicas: int, rank: int, seed: int, epoch: int) -> None:
        super().__init__(dataset, num_replicas=replicas, rank=rank, shuffle=True, seed=seed)
        self.set_epoch(epoch)

    def __iter__(self):
        n = len(self.dataset)
        generator = shuffle_generator(self.seed, self.epoch)
        # A one-process DataLoader draws its workers' base seed from this generator before its sampler
        # draws the permutation: draw it too, so that both orders agree (tests/test_distributed.py checks).
        torch.empty((), dtype=torch.int64).random_(generator=generator)
        order = torch.randperm(n, generator=generator).tolist()
        pad = self.total_size - n
        order += (order * (pad // n + 1))[:pad]
        return iter(order[self.rank:self.total_size:self.num_replicas])


def make_loader(dataset: Dataset, batch_size: int = 1, shuffle: bool = True, num_workers: int = 0,
                seed: int = 0, epoch: int = 0, drop_last: bool = False, replicas: int = 1,
                rank: int = 0) -> DataLoader:
    """A DataLoader for ``epoch`` whose order and samples are fixed by ``(seed, epoch)``.

    Sets the dataset's epoch when it has :meth:`set_epoch` and shuffles with a
    generator seeded from ``(seed, epoch)``, so a resumed run replays the same
    batches. Build a new loader for each epoch. With ``replicas > 1`` (torchrun)
    it yields rank ``rank``'s share through :class:`SeededDistributedSampler`
    (``batch_size`` is then per rank).
    """
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)
    if replicas > 1:
        if not shuffle:
            raise ValueError("make_loader shards only shuffled data across processes")
        sampler = SeededDistributedSampler(dataset, replicas, rank, seed, epoch)
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                          generator=shuffle_generator(seed, epoch), drop_last=drop_last, persistent_workers=False)
    generator = shuffle_generator(seed, epoch) if shuffle else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                      generator=generator, drop_last=drop_last, persistent_workers=False)
