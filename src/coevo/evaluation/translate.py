"""Apply a generator to image files and write the translations as PNGs.

Works with any module :func:`coevo.load_generator` returns (eager, torch.export, ONNX incl. INT8, TorchScript):
each takes and returns NCHW RGB tensors in [-1, 1] (a 1-channel generator: the images' luma; its
1-channel output is written as gray RGB).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from PIL import Image
from torch import nn

from ..core.guards import check_finite
from ..data.errors import DataError
from ..core.files import PathLike
from ..core.limits import MAX_IMAGE_SIDE, MIN_SIZE, SIZE_MULTIPLE, check_image_side

log = logging.getLogger(__name__)

# Larger images are refused at their own size (a forward pass of this size needs
# tens of GB): the user resizes them with --size.
MAX_SIDE = MAX_IMAGE_SIDE
MAX_PIXELS = MAX_SIDE * MAX_SIDE


def input_images(path: PathLike) -> List[Path]:
    """One image file, or every image directly inside a folder (sorted by name)."""
    from ..data import list_images

    path = Path(path)
    if path.is_dir():
        return list_images(path)
    if not path.exists():
        if path.is_symlink():  # a link loop or a link to nothing: the OS error says which
            from ..core.files import regular_file

            regular_file(path, "input")
        raise DataError(f"input not found: {path}; give an image file or a folder of images")
    return [path]


def target_size(img: Image.Image, size: Optional[int], path: PathLike = "image") -> Tuple[int, int]:
    """``(width, height)`` the generator gets: ``size`` x ``size``, or the image's own size
    rounded down to multiples of 4."""
    if size is not None:
        return size, size
    w, h = img.size
    w4, h4 = w - w % SIZE_MULTIPLE, h - h % SIZE_MULTIPLE
    if w4 < MIN_SIZE or h4 < MIN_SIZE:
        raise DataError(f"{path} is {w}x{h} pixels; it must be at least "
                        f"{MIN_SIZE}x{MIN_SIZE} pixels (or pass --size)")
    if w4 * h4 > MAX_PIXELS:
        raise DataError(f"{path} is {w}x{h} pixels, more than coevo translates in one piece at its own size "
                        f"({MAX_SIDE}x{MAX_SIDE}); pass --size (e.g. --size 1024) to resize the inputs")
    return w4, h4


def _output_names(paths: Sequence[Path]) -> Dict[Path, str]:
    names: Dict[str, Path] = {}
    for p in paths:
        name = f"{p.stem}.png"
        if name in names:
            raise DataError(f"{names[name]} and {p} would both be written as {name}; rename one of them")
        names[name] = p
    return {p: n for n, p in names.items()}


def _listed(items: Sequence, k: int = 5) -> str:
    shown = ", ".join(str(i) for i in items[:k])
    return shown + (f" and {len(items) - k} more" if len(items) > k else "")


@dataclass
class TranslationPlan:
    """What :func:`run_translation` will write, checked before anything is written.

    ``targets``: input image -> output PNG, in input order. ``skipped``: unreadable
    inputs left out (with ``skip_bad``) and why. ``size``: as for :func:`translate_images`.
    """

    out_dir: Path
    targets: Dict[Path, Path]
    skipped: List[Tuple[Path, str]] = field(default_factory=list)
    size: Optional[int] = None
    direction: Optional[str] = None  # AtoB / BtoA: the inputs are aligned pairs (A|B); their A / B half is read


def input_half(img: Image.Image, direction: Optional[str], path: PathLike = "image") -> Image.Image:
    """``img``, or for aligned pairs (``direction`` AtoB / BtoA) its left / right half: the generator's input."""
    if direction is None:
        return img
    from ..data.aligned import split_pair

    return split_pair(img, path)[0 if direction == "AtoB" else 1]


def plan_translation(paths: Sequence[PathLike], out_dir: PathLike, size: Optional[int] = None,
                     overwrite: bool = False, skip_bad: bool = False,
                     source: Optional[PathLike] = None, direction: Optional[str] = None) -> TranslationPlan:
    """Check every input and every output of a translation; write nothing.

    ``source``: the folder the images were listed from (``--input``), if any. ``direction``
    (``AtoB``/``BtoA``): the images are aligned pairs (pix2pix: A and B side by side) and the generator
    reads their left/right half (an odd width is an unreadable input).
    Raises :class:`~coevo.core.outputs.OutputError` when ``out_dir`` is, holds or lies inside
    ``source``, or is or holds the folder of an image (links resolved, the links' own folders
    too); :class:`DataError` when an output file exists and ``overwrite`` is False,
    when an input cannot be read and ``skip_bad`` is False (with it, such inputs are
    left out and listed in ``skipped``), or when an image is too large to translate
    at its own size (more than :data:`MAX_PIXELS`; pass ``size``).
    """
    from ..data import check_image
    from ..core.outputs import Beside, check_outputs_apart

    if size is not None:
        check_image_side(size, "--size", MIN_SIZE, error=DataError)
    paths = [Path(p) for p in paths]
    if not paths:
        raise DataError("no images to translate")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"--output {out_dir} is a file; give a folder for the translated images")
    # never into the --input folder or below it, nor among the images (or the links to them) or above them
    folders = sorted({p.absolute().parent for p in paths} | {p.resolve().parent for p in paths})
    given = [source] if source is not None and Path(source).is_dir() else []
    check_outputs_apart(out_dir, {"folder of the input images": given + [Beside(f) for f in folders]},
                        option="--output")

    if direction not in (None, "AtoB", "BtoA"):
        raise DataError(f"direction must be AtoB or BtoA, got {direction!r}")
    skipped = []
    for p in paths:
        reason = check_image(p)
        if reason is None and direction is not None:
            with Image.open(p) as im:
                if im.size[0] % 2:
                    reason = (f"{im.size[0]}x{im.size[1]} pixels: an odd width is no A|B pair "
                              "(drop --direction for whole images)")
        if reason is None and size is None:
            with Image.open(p) as im:
                target_size(input_half(im, direction, p), None, p)  # too small or too large: stop now
        if reason is not None:
            skipped.append((p, reason))
    if skipped and not skip_bad:
        raise DataError(f"cannot read {len(skipped)} of {len(paths)} input image(s): "
                        f"{_listed([f'{p} ({why})' for p, why in skipped], 3)}. Nothing was written. "
                        "Re-download or delete them, or pass --skip-bad to translate the others")
    good = [p for p in paths if p not in {s for s, _ in skipped}]
    if not good:
        raise DataError(f"none of the {len(paths)} input image(s) can be read; nothing to translate")
    names = _output_names(good)
    targets = {p: out_dir / names[p] for p in good}
    existing = [t.name for t in targets.values() if t.exists()]
    if existing and not overwrite:
        raise DataError(f"{len(existing)} output file(s) already exist in {out_dir}: {_listed(existing)}. "
                        "Pass --overwrite to replace them, or choose another --output folder")
    return TranslationPlan(out_dir, targets, skipped, size, direction)


def run_translation(model: nn.Module, plan: TranslationPlan, batch: int = 4,
                    device: str | torch.device = "cpu", source: str = "the model",
                    reference_mode: str = "eval") -> List[Path]:
    """Translate the inputs of ``plan`` with ``model``; returns the written PNGs in input order.

    Images of the same size share a forward pass of up to ``batch`` images. Each PNG
    is written atomically. ``source`` names the model in errors (its file). ``reference_mode``
    ``"train"`` runs it as the reference's test script without ``--eval`` does: in train mode
    (see :func:`coevo.models.generator.set_reference_mode`), one image per forward.
    """
    from ..data import load_image, to_image, to_tensor
    from ..core.files import atomic_path
    from ..deploy.exported import check_image_to_image

    from ..models.generator import fixed_rng, set_reference_mode

    if batch < 1:
        raise DataError(f"--batch must be >= 1, got {batch}")
    model = set_reference_mode(model.to(device), reference_mode)
    if reference_mode == "train":  # a BatchNorm's batch statistics must not mix images
        batch = 1
    size = plan.size
    # a U-Net runs at multiples of 2**num_downs: without --size each image is padded up to them (reflection)
    # and the output cropped back (coevo.models.family.PaddedToMultiple), so it keeps its size exactly
    arch = getattr(model, "arch", None)
    multiple = getattr(arch, "size_multiple", SIZE_MULTIPLE) if arch is not None else SIZE_MULTIPLE
    pad = multiple > SIZE_MULTIPLE and size is None
    if size is not None and size % multiple:
        raise DataError(f"--size {size} is not a multiple of {multiple}, which this U-Net ({source}) needs; "
                        f"pass a multiple of {multiple}, or no --size to pad each image up to one")
    if pad:
        from ..models.family import any_size

        model = any_size(model)
        log.info("no --size: each image keeps its size, padded (reflection) up to multiples of %d for the U-Net "
                 "and cropped back", multiple)
    elif size is None:
        log.info("no --size: each image keeps its size, with height and width rounded down to multiples "
                 "of %d (the generator down-samples twice)", SIZE_MULTIPLE)
    plan.out_dir.mkdir(parents=True, exist_ok=True)

    pending: List[Tuple[Path, torch.Tensor]] = []
    resized = 0
    # a 1-channel generator (--input_nc 1) reads the image's luma, as the reference's Grayscale(1) gives it;
    # a 1-channel output is written as a grayscale PNG
    channels = 1 if getattr(getattr(model, "arch", None), "in_channels", 3) == 1 else 3

    def flush() -> None:
        # The shape check runs before the first write: a file of another network writes nothing.
        out = check_image_to_image(model, torch.stack([t for _, t in pending]).to(device), source)
        check_finite(out, f"the output of {source} for {', '.join(p.name for p, _ in pending)}")
        for (p, _), t in zip(pending, out):
            with atomic_path(plan.targets[p]) as tmp:
                to_image(t).save(tmp, format="PNG")
        pending.clear()

    # Streams the inputs: consecutive images of one size share a batch, so memory stays
    # at ``batch`` images however large the folder.
    with torch.inference_mode(), fixed_rng():  # dropout in train mode: the same masks on every run
        for p in plan.targets:
            img = input_half(load_image(p, channels), plan.direction, p)
            target = img.size if pad else target_size(img, size, p)
            if img.size != target:
                resized += size is None
                img = img.resize(target, Image.BICUBIC)
            t = to_tensor(img, channels)
            if pending and (pending[0][1].shape != t.shape or len(pending) == batch):
                flush()
            pending.append((p, t))
        if pending:
            flush()
    if resized:
        log.info("%d of %d image(s) were resized by up to %d px to get there", resized, len(plan.targets),
                 SIZE_MULTIPLE - 1)
    if plan.skipped:
        log.warning("skipped %d unreadable image(s): %s", len(plan.skipped),
                    _listed([f"{p} ({why})" for p, why in plan.skipped]))
    written = list(plan.targets.values())
    log.debug("wrote %d translated image(s) to %s", len(written), plan.out_dir)  # the CLI says it
    return written


def translate_images(model: nn.Module, paths: Sequence[PathLike], out_dir: PathLike,
                     size: Optional[int] = None, batch: int = 4, device: str | torch.device = "cpu",
                     overwrite: bool = False, skip_bad: bool = False) -> List[Path]:
    """Translate each image of ``paths`` with ``model``; write ``out_dir/<stem>.png``.

    ``size``: resize every image to ``size`` x ``size`` (a multiple of 4). Without it each
    image keeps its size, resized down to the nearest multiples of 4 when needed. Images of
    the same size are batched ``batch`` at a time. Returns the written paths, in input order.

    Everything is checked before the first write (:func:`plan_translation`): inputs are
    never written over, existing outputs only with ``overwrite``, and unreadable inputs
    stop the job unless ``skip_bad`` (then they are skipped and logged).
    """
    if batch < 1:
        raise DataError(f"--batch must be >= 1, got {batch}")
    plan = plan_translation(paths, out_dir, size=size, overwrite=overwrite, skip_bad=skip_bad)
    return run_translation(model, plan, batch=batch, device=device)
