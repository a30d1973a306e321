"""Apply a generator to image files and write the translations as PNGs.

Works with any module :func:`coevo.load_generator` returns (eager, TorchScript or ONNX):
each takes and returns NCHW RGB tensors in [-1, 1].
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from PIL import Image
from torch import nn

from .checks import check_finite
from .data.errors import DataError
from .models.io import PathLike

log = logging.getLogger(__name__)

# The generator halves the resolution twice and doubles it twice: H and W must be multiples of 4.
SIZE_MULTIPLE = 4


def input_images(path: PathLike) -> List[Path]:
    """One image file, or every image directly inside a folder (sorted by name)."""
    from .data import list_images

    path = Path(path)
    if path.is_dir():
        return list_images(path)
    if not path.exists():
        raise DataError(f"input not found: {path}; give an image file or a folder of images")
    return [path]


def target_size(img: Image.Image, size: Optional[int], path: PathLike = "image") -> Tuple[int, int]:
    """``(width, height)`` the generator gets: ``size`` x ``size``, or the image's own size
    rounded down to multiples of 4."""
    if size is not None:
        return size, size
    w, h = img.size
    w4, h4 = w - w % SIZE_MULTIPLE, h - h % SIZE_MULTIPLE
    if w4 < SIZE_MULTIPLE or h4 < SIZE_MULTIPLE:
        raise DataError(f"{path} is {w}x{h} pixels; it must be at least "
                        f"{SIZE_MULTIPLE}x{SIZE_MULTIPLE} pixels (or pass --size)")
    return w4, h4


def _output_names(paths: Sequence[Path]) -> Dict[Path, str]:
    names: Dict[str, Path] = {}
    for p in paths:
        name = f"{p.stem}.png"
        if name in names:
            raise DataError(f"{names[name]} and {p} would both be written as {name}; rename one of them")
        names[name] = p
    return {p: n for n, p in names.items()}


def translate_images(model: nn.Module, paths: Sequence[PathLike], out_dir: PathLike,
                     size: Optional[int] = None, batch: int = 4,
                     device: str | torch.device = "cpu") -> List[Path]:
    """Translate each image of ``paths`` with ``model``; write ``out_dir/<stem>.png``.

    ``size``: resize every image to ``size`` x ``size`` (a multiple of 4). Without it each
    image keeps its size, resized down to the nearest multiples of 4 when needed. Images of
    the same size are batched ``batch`` at a time. Returns the written paths, in input order.
    """
    from .data import load_image, to_image, to_tensor

    if size is not None and (size < SIZE_MULTIPLE or size % SIZE_MULTIPLE):
        raise DataError(f"--size must be a positive multiple of {SIZE_MULTIPLE}, got {size}")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    paths = [Path(p) for p in paths]
    names = _output_names(paths)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = model.to(device).eval()
    if size is None:
        log.info("no --size: each image keeps its size, with height and width rounded down to multiples "
                 "of %d (the generator down-samples twice)", SIZE_MULTIPLE)

    pending: List[Tuple[Path, torch.Tensor]] = []
    resized = 0

    def flush() -> None:
        out = model(torch.stack([t for _, t in pending]).to(device))
        check_finite(out, f"the generator's output for {', '.join(str(p) for p, _ in pending)}")
        for (p, _), t in zip(pending, out):
            to_image(t).save(out_dir / names[p])
        pending.clear()

    # Streams the inputs: consecutive images of one size share a batch, so memory stays
    # at ``batch`` images however large the folder.
    with torch.inference_mode():
        for p in paths:
            img = load_image(p)
            target = target_size(img, size, p)
            if img.size != target:
                resized += size is None
                img = img.resize(target, Image.BICUBIC)
            t = to_tensor(img)
            if pending and (pending[0][1].shape != t.shape or len(pending) == batch):
                flush()
            pending.append((p, t))
        if pending:
            flush()
    if resized:
        log.info("%d of %d image(s) were resized by up to %d px to get there", resized, len(paths),
                 SIZE_MULTIPLE - 1)
    written = [out_dir / names[p] for p in paths]
    log.info("wrote %d translated image(s) to %s", len(written), out_dir)
    return written
