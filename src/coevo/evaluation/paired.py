"""Translation quality on paired (aligned) data: PSNR/SSIM to the paired target, and to a teacher.

For pix2pix every test image holds its own ground truth: the other half of the pair
(:mod:`coevo.data.aligned`). :func:`evaluate_paired` translates the input half of every image of
one split (``test`` by default) and scores the output against the target half, and, when a teacher
is given, against the teacher's output for the same input (how far compression moved it). Model and
teacher run in one ``reference_mode`` (``eval``, or ``train`` as the reference's test script does
without ``--eval``: then one image per forward, as there).

Report test numbers only; select models on ``val/`` (or a held-out part of ``train/``).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Dict, List, Optional, Union

import torch
from torch import nn

from ..core.guards import check_finite
from .metrics import psnr, ssim

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]


def _mean(values: List[float]) -> Optional[float]:
    return float(sum(values) / len(values)) if values else None


def _module(model, device, reference_mode: str) -> nn.Module:
    from ..models.generator import set_reference_mode

    if not isinstance(model, nn.Module):
        from ..models.io import load_generator

        model = load_generator(model)
    return set_reference_mode(model.to(device), reference_mode)


@torch.inference_mode()
def evaluate_paired(model: Union[nn.Module, PathLike], data_root: PathLike, direction: str = "AtoB",
                    teacher: Union[nn.Module, PathLike, None] = None, size: Optional[int] = None,
                    split: str = "test", batch_size: int = 8, device: Union[str, torch.device] = "cpu",
                    reference_mode: str = "eval") -> Dict:
    """Score ``model`` on the pairs of ``data_root/split`` (aligned layout).

    Args:
        model, teacher: generators (modules or files :func:`coevo.load_generator` reads), NCHW in [-1, 1].
        direction: ``AtoB`` (the left half is the input, the right half the target) or ``BtoA``.
        size: side the halves are resized to; None: the images' own (square) half size. It must be a
            multiple of what the generator needs (a U-Net: 2**num_downs).
        reference_mode: ``eval`` or ``train`` for model and teacher alike (``model.reference_mode``).

    Returns:
        ``{"layout": "aligned", "split", "direction", "n_images", "images", "size", "psnr", "ssim",
        "psnr_per_image", "ssim_per_image", "psnr_to_teacher", "ssim_to_teacher", "l1_to_teacher",
        "psnr_to_teacher_per_image", "reference_mode"}``; the teacher's entries are None without one.
    """
    from ..data.aligned import AlignedDataset, list_pairs

    data_root = Path(data_root)
    model = _module(model, device, reference_mode)
    teacher_m = None if teacher is None else _module(teacher, device, reference_mode)
    if size is None:
        _, (w, h) = list_pairs(data_root / split)
        if w // 2 != h:
            raise ValueError(f"the pairs of {data_root / split} have {w // 2}x{h} halves; give a square size to "
                             "resize them to (--size)")
        size = h
    multiple = getattr(getattr(model, "arch", None), "size_multiple", 4)
    if size % multiple:
        raise ValueError(f"images of {size} px do not fit this generator, which needs sides that are multiples of "
                         f"{multiple}; give --size (e.g. {max(multiple, size - size % multiple)})")
    ds = AlignedDataset(data_root, split, load_size=size, crop_size=size, flip=False, direction=direction,
                        augment=False)
    step = 1 if reference_mode == "train" else max(1, int(batch_size))
    names: List[str] = []
    psnrs: List[float] = []
    ssims: List[float] = []
    psnrs_t: List[float] = []
    ssims_t: List[float] = []
    l1s_t: List[float] = []
    for start in range(0, len(ds), step):
        items = [ds[i] for i in range(start, min(start + step, len(ds)))]
        x = torch.stack([it["A"] for it in items]).to(device)
        target = torch.stack([it["B"] for it in items]).to(device)
        shown = ", ".join(Path(it["path"]).name for it in items)
        y = check_finite(model(x).float(), f"the model's output for {shown}")
        names += [Path(it["path"]).name for it in items]
        psnrs += psnr(y, target).tolist()
        ssims += ssim(y, target).tolist()
        if teacher_m is not None:
            y_t = check_finite(teacher_m(x).float(), f"the teacher's output for {shown}")
            psnrs_t += psnr(y, y_t).tolist()
            ssims_t += ssim(y, y_t).tolist()
            l1s_t += (y - y_t).abs().flatten(1).mean(1).tolist()
    result = {
        "layout": "aligned", "split": split, "direction": direction, "data_root": str(data_root),
        "n_images": len(names), "images": names, "size": size,
        "psnr": _mean(psnrs), "ssim": _mean(ssims), "psnr_per_image": psnrs, "ssim_per_image": ssims,
        "psnr_to_teacher": _mean(psnrs_t), "ssim_to_teacher": _mean(ssims_t), "l1_to_teacher": _mean(l1s_t),
        "psnr_to_teacher_per_image": psnrs_t if teacher_m is not None else None,
        "reference_mode": reference_mode,
    }
    if hasattr(model, "arch"):
        result["arch"] = model.arch.to_dict()
    return result
