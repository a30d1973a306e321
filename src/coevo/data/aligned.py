"""Paired data in the reference's ``aligned`` layout (pix2pix): each image is A and B side by side.

A data set folder holds ``train/`` and ``test/`` (``val/`` optional), each with image files whose
left half is A and right half is B (the reference's ``datasets/combine_A_and_B.py`` writes them).
``data.direction`` says which half is the input: ``AtoB`` (default) translates the left half into
the right one, ``BtoA`` the reverse.

Items of :class:`AlignedDataset` are ``{"A": input, "B": target, "path": str}`` (3xHxW, RGB, [-1, 1])
with the direction already applied, as the reference's ``real_A``/``real_B``. As in the reference's
``AlignedDataset``, augmentation resizes both halves to ``load_size`` x ``load_size`` (bicubic) and
takes the SAME random crop and flip of both; every draw comes from ``(seed, epoch, index)``
(:func:`coevo.data.folder.sample_rng`), so samples replay exactly after a resume.

Checked when the dataset is made, before any training (headers only): the folder exists and holds
images, no image is unreadable, every image has an even width (two halves), and the images of a
split all have one size. Each failure is one :class:`DataError` naming the file and the fix.
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from PIL import Image
from torch.utils.data import Dataset

from ..core.files import regular_file
from .errors import DataError
from .folder import check_dataset_args, sample_rng, split_train_val
from .images import SKIP_BAD_HINT, is_image_file, list_images, load_image, to_tensor
from .root import ensure_root, synthetic_size

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

LAYOUTS = ("auto", "unaligned", "aligned")
DIRECTIONS = ("AtoB", "BtoA")
ALIGNED_SPLITS = ("train", "val", "test")
REQUIRED_SPLITS = ("train", "test")
ALIGNED_HINT = (
    "an aligned (paired, pix2pix) data set holds train/ and test/ (val/ optional), each image holding A and B "
    "side by side (the reference's datasets/combine_A_and_B.py writes them); build the built-in one with "
    "`coevo data synthetic --task pix2pix --out DIR`"
)


# ----------------------------------------------------------------------------- layout
def detect_layout(root: PathLike) -> Optional[str]:
    """``"unaligned"`` for a folder with ``trainA/``, ``"aligned"`` for one with ``train/`` and no
    ``trainA/``, None when it holds neither (missing or empty: the built-in set decides)."""
    root = Path(root)
    if (root / "trainA").is_dir():
        return "unaligned"
    if (root / "train").is_dir():
        return "aligned"
    return None


def resolve_layout(cfg) -> str:
    """The layout of a :class:`coevo.config.DataConfig`: ``data.layout`` when set, else what the folder
    holds (:func:`detect_layout`), else the built-in set's (``aligned`` for ``synthetic_task: pix2pix``)."""
    from .paired_synthetic import PAIRED_TASK

    layout = getattr(cfg, "layout", "auto")
    if layout != "auto":
        return layout
    found = detect_layout(cfg.root) if cfg.root else None
    if found is not None:
        return found
    return "aligned" if cfg.synthetic_task == PAIRED_TASK else "unaligned"


def aligned_input(path: PathLike, direction: Optional[str] = None) -> Tuple[Path, Optional[str]]:
    """What ``coevo translate --input PATH`` reads: ``(images, direction)``. An aligned data set (``train/``,
    no ``trainA/``: :func:`detect_layout`) gives its ``test/``, one of its ``train/``, ``val/``, ``test/``
    itself; their images are A|B pairs, read per ``direction`` (default AtoB). Anything else is itself,
    with ``direction`` as given (None: whole images)."""
    path = Path(path)
    if path.is_dir() and detect_layout(path) == "aligned":
        return path / "test", direction or "AtoB"
    if path.is_dir() and path.name in ALIGNED_SPLITS and detect_layout(path.parent) == "aligned":
        return path, direction or "AtoB"
    return path, direction


def _check_direction(direction: str) -> str:
    if direction not in DIRECTIONS:
        raise DataError(f"data.direction must be AtoB or BtoA, got {direction!r}")
    return direction


# ----------------------------------------------------------------------------- files
def _header_size(path: Path) -> Tuple[int, int]:
    try:
        regular_file(path, "image")
        with Image.open(path) as im:
            return im.size
    except Exception as e:  # Pillow raises many kinds for a file that is no image
        raise DataError(f"cannot read image {path}: {type(e).__name__}: {e}. Re-download or delete it, or "
                        f"{SKIP_BAD_HINT}; `coevo data check {path.parent}` lists every bad file") from None


def list_pairs(folder: PathLike, skip_bad: bool = False) -> Tuple[List[Path], Tuple[int, int]]:
    """``(images, (width, height))`` of one split folder of the aligned layout, after the checks of the
    module docstring (each failure a :class:`DataError` naming the file and the fix)."""
    folder = Path(folder)
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise DataError(f"aligned data folder {folder} {what}; {ALIGNED_HINT}")
    if not any(is_image_file(p) and not p.is_dir() for p in folder.iterdir()):
        raise DataError(f"no image files in {folder}; {ALIGNED_HINT}")
    paths = list_images(folder, skip_bad=skip_bad)
    first: Optional[Tuple[Path, Tuple[int, int]]] = None
    for p in paths:
        w, h = _header_size(p)
        if w % 2:
            raise DataError(f"aligned image {p} is {w}x{h} pixels: an odd width cannot be split into A and B "
                            "halves; each image must be A and B side by side, of equal widths (re-make it with "
                            "the reference's datasets/combine_A_and_B.py, or crop one column)")
        if first is None:
            first = (p, (w, h))
        elif (w, h) != first[1]:
            raise DataError(f"aligned images of {folder} differ in size: {p.name} is {w}x{h}, {first[0].name} is "
                            f"{first[1][0]}x{first[1][1]}; resize every pair of a split to one size (both halves "
                            "alike), or move the odd ones out")
    assert first is not None  # list_images returns at least one image
    return paths, first[1]


def split_pair(img: Image.Image, path: PathLike = "image") -> Tuple[Image.Image, Image.Image]:
    """(left half A, right half B) of an aligned image; DataError for an odd width."""
    w, h = img.size
    if w % 2:
        raise DataError(f"aligned image {path} is {w}x{h} pixels: an odd width cannot be split into A and B halves")
    half = w // 2
    return img.crop((0, 0, half, h)), img.crop((half, 0, w, h))


def _resize(img: Image.Image, size: Tuple[int, int]) -> Image.Image:
    return img if img.size == size else img.resize(size, Image.BICUBIC)


# ----------------------------------------------------------------------------- dataset
class AlignedDataset(Dataset):
    """Paired images of ``root/phase`` (``train``, ``val`` or ``test``), A and B side by side.

    ``len`` is the number of images. Item ``i`` is ``{"A": input, "B": target, "path": str}`` (see the
    module docstring; ``direction`` BtoA makes the right half the input). With augmentation (default
    for ``phase="train"``): resize both halves to ``load_size``, the same random ``crop_size`` crop and,
    when ``flip``, the same horizontal flip with probability 1/2. Without: resize to ``crop_size``.
    ``indices`` restricts the set to a subset of the sorted file list.
    """

    def __init__(self, root: PathLike, phase: str = "train", load_size: int = 286, crop_size: int = 256,
                 flip: bool = True, direction: str = "AtoB", skip_bad: bool = False, seed: int = 0,
                 indices: Optional[Sequence[int]] = None, *, augment: Optional[bool] = None) -> None:
        self.root = Path(root)
        self.phase = phase
        self.direction = _check_direction(direction)
        self.augment = (phase == "train") if augment is None else bool(augment)
        check_dataset_args(self.root, load_size, crop_size, self.augment, ALIGNED_HINT)
        self.load_size, self.crop_size, self.flip = int(load_size), int(crop_size), bool(flip)
        self.seed = int(seed)
        self.epoch = 0
        paths, self.image_size = list_pairs(self.root / phase, skip_bad=skip_bad)
        self.paths = paths if indices is None else self._subset(paths, indices)

    def _subset(self, paths: List[Path], indices: Sequence[int]) -> List[Path]:
        indices = [int(i) for i in indices]
        bad = [i for i in indices if not 0 <= i < len(paths)]
        if bad or not indices:
            raise DataError(f"indices {bad[:5] or '[]'} do not select images of the {len(paths)} in "
                            f"{self.root / self.phase}")
        return [paths[i] for i in indices]

    def subset(self, indices: Sequence[int], *, augment: Optional[bool] = None) -> "AlignedDataset":
        """A copy restricted to ``indices`` of this dataset's file list (files are not re-listed)."""
        other = copy.copy(self)
        other.paths = self._subset(self.paths, indices)
        if augment is not None:
            other.augment = bool(augment)
        return other

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Dict[str, object]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        path = self.paths[index]
        a, b = split_pair(load_image(path), path)
        if self.direction == "BtoA":
            a, b = b, a
        if not self.augment:
            side = (self.crop_size, self.crop_size)
            return {"A": to_tensor(_resize(a, side)), "B": to_tensor(_resize(b, side)), "path": str(path)}
        rng = sample_rng(self.seed, self.epoch, index)
        x = int(rng.integers(0, self.load_size - self.crop_size + 1))
        y = int(rng.integers(0, self.load_size - self.crop_size + 1))
        flip = rng.random() < 0.5 and self.flip  # always drawn: the stream does not depend on ``flip``
        out = []
        for img in (a, b):
            img = _resize(img, (self.load_size, self.load_size))
            if self.crop_size < self.load_size:
                img = img.crop((x, y, x + self.crop_size, y + self.crop_size))
            if flip:
                img = img.transpose(Image.FLIP_LEFT_RIGHT)
            out.append(to_tensor(img))
        return {"A": out[0], "B": out[1], "path": str(path)}


@dataclass
class AlignedSplits:
    """The three paired datasets a pix2pix job uses (items: A input, B target, path).

    ``train``: augmented. ``val``: model selection, deterministic: ``val/`` when the folder has one,
    else ``data.val_fraction`` of ``train/`` held out (None when that is 0). ``test``: ``test/``,
    deterministic, for reporting only. ``val_source``: ``"val/"``, ``"held-out train/"`` or None.
    """

    root: Path
    train: AlignedDataset
    val: Optional[AlignedDataset]
    test: AlignedDataset
    val_source: Optional[str]


def build_aligned_datasets(cfg, seed: int = 0) -> AlignedSplits:
    """The datasets of a :class:`coevo.config.DataConfig` in the aligned layout (built-in set built first
    when allowed, :func:`ensure_aligned_root`); ``seed`` drives augmentation and the held-out split."""
    root = ensure_aligned_root(cfg)
    common = dict(load_size=cfg.load_size, crop_size=cfg.crop_size, direction=cfg.direction,
                  skip_bad=cfg.skip_bad_images, seed=seed)
    full = AlignedDataset(root, "train", flip=cfg.flip, **common)
    test = AlignedDataset(root, "test", flip=False, augment=False, **common)
    if (root / "val").is_dir():
        val = AlignedDataset(root, "val", flip=False, augment=False, **common)
        return AlignedSplits(root, full, val, test, "val/")
    train_idx, val_idx = split_train_val(len(full), cfg.val_fraction, seed)
    if not val_idx:
        return AlignedSplits(root, full, None, test, None)
    return AlignedSplits(root, full.subset(train_idx), full.subset(val_idx, augment=False), test, "held-out train/")


# ----------------------------------------------------------------------------- the data folder
def ensure_aligned_root(cfg) -> Path:
    """The aligned data folder of ``cfg`` (a DataConfig), building the built-in paired set there when
    allowed: into a missing or empty folder, or over a built-in paired set (``data.synthetic``). A
    folder with ``train/`` and ``test/`` is used as it is, never written into."""
    from .paired_synthetic import is_paired_builtin

    return ensure_root(cfg, REQUIRED_SPLITS, ALIGNED_HINT, holds="a folder with train/ and test/ of A|B pairs",
                       is_builtin=is_paired_builtin, warn_if_stale=_warn_if_stale, build=_build,
                       builtin_name="built-in paired set", note=_unaligned_note)


def _unaligned_note(root: Path) -> str:
    if (root / "trainA").is_dir():
        return " (it has trainA/: that is the unaligned CycleGAN layout; set data.layout=unaligned)"
    return ""


def _build(root: Path, cfg, force: bool) -> Path:
    from .paired_synthetic import make_paired_synthetic

    return make_paired_synthetic(root, size=synthetic_size(cfg.load_size), n_train=cfg.synthetic_n_train,
                                 n_test=cfg.synthetic_n_test, seed=cfg.synthetic_seed, force=force)


def _warn_if_stale(root: Path, cfg) -> None:
    from .synthetic import read_meta

    meta = read_meta(root)
    want = {"seed": cfg.synthetic_seed, "size": synthetic_size(cfg.load_size), "n_train": cfg.synthetic_n_train,
            "n_test": cfg.synthetic_n_test}
    diff = {k: (meta.get(k), v) for k, v in want.items() if meta.get(k) != v}
    if diff:
        log.warning("the paired synthetic set in %s differs from the config (%s as found/asked); using it as it "
                    "is. Regenerate with `coevo data synthetic --task pix2pix --out %s --force` to match.", root,
                    ", ".join(f"{k}={a}/{b}" for k, (a, b) in diff.items()), root)


def _fingerprint(paths: Sequence[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.name.encode() + b"\0")
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        h.update(b"\0")
    return h.hexdigest()


def aligned_data_record(root: PathLike, skip_bad: bool = False) -> Dict:
    """``{"root", "layout": "aligned", "builtin", "counts", "fingerprint", "fingerprint_all"}`` over the
    splits present (train, val, test): what :func:`check_same_aligned` compares on resume."""
    from .paired_synthetic import is_paired_builtin

    root = Path(root).resolve()
    counts, prints = {}, {}
    for split in ALIGNED_SPLITS:
        if split in REQUIRED_SPLITS or (root / split).is_dir():
            paths, _ = list_pairs(root / split, skip_bad)
            counts[split], prints[split] = len(paths), _fingerprint(paths)
    every = hashlib.sha256("".join(prints[s] for s in sorted(prints)).encode()).hexdigest()
    return {"root": str(root), "layout": "aligned", "builtin": is_paired_builtin(root), "counts": counts,
            "fingerprint": prints, "fingerprint_all": every}


def check_same_aligned(saved: Optional[Mapping], current: Mapping, what: str) -> None:
    """DataError when ``current`` (an :func:`aligned_data_record`) is not the data ``saved`` records."""
    if not saved:
        return
    changes = []
    for split in sorted(set(saved.get("counts", {})) | set(current.get("counts", {}))):
        a, b = saved.get("counts", {}).get(split), current.get("counts", {}).get(split)
        if a != b:
            changes.append(f"{split}: {a} -> {b} images")
        elif saved.get("fingerprint", {}).get(split) != current.get("fingerprint", {}).get(split):
            changes.append(f"{split}: same count ({b}), different content")
    if changes:
        raise DataError(f"cannot resume {what}: it started on the data in {saved.get('root')} and the data in "
                        f"{current.get('root')} differs ({'; '.join(changes)}). Resume with the original images "
                        "(--data DIR / data.root), or start a new run")


def run_aligned_data(cfg, run_dir: PathLike, resume: bool = False) -> Dict:
    """:func:`coevo.data.prepare.run_data` for the aligned layout (``cfg.root`` already resolved):
    build the built-in set when allowed, record the data in ``run_dir/data.json``, and on ``resume``
    refuse other images than the run started with."""
    from ..core.files import atomic_write_text
    from .record import RECORD_NAME

    ensure_aligned_root(cfg)
    record = aligned_data_record(cfg.root, cfg.skip_bad_images)
    saved = Path(run_dir) / RECORD_NAME
    if resume and saved.is_file():
        check_same_aligned(json.loads(saved.read_text()), record, str(run_dir))
    c = record["counts"]
    log.info("data: %s (aligned, %s; %s; fingerprint %s)", record["root"],
             "built-in paired set" if record["builtin"] else "your images",
             ", ".join(f"{k} {v}" for k, v in c.items()), record["fingerprint_all"][:12])
    atomic_write_text(saved, json.dumps(record, indent=2) + "\n")
    return record


def stack_pairs(dataset: AlignedDataset, n: Optional[int] = None) -> Dict[str, torch.Tensor]:
    """The first ``n`` items (all when None) as ``{"A": NCHW, "B": NCHW}``."""
    n = len(dataset) if n is None else min(int(n), len(dataset))
    items = [dataset[i] for i in range(n)]
    return {"A": torch.stack([it["A"] for it in items]), "B": torch.stack([it["B"] for it in items])}


__all__ = ["AlignedDataset", "AlignedSplits", "ALIGNED_HINT", "DIRECTIONS", "LAYOUTS", "aligned_data_record",
           "build_aligned_datasets", "check_same_aligned", "detect_layout", "ensure_aligned_root", "list_pairs",
           "resolve_layout", "run_aligned_data", "split_pair", "stack_pairs"]
