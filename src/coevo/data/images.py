"""Image files: reading any common image as 8-bit RGB, listing image folders, PIL <-> tensor.

Colour conversion rules of :func:`load_image` (every result is 8-bit RGB):

* ``RGB``: unchanged. ``1``, ``L``, ``P``, ``CMYK``, ``YCbCr``: Pillow's conversion.
* Anything with transparency (``RGBA``, ``LA``, ``PA``, ``P`` with a transparent
  colour) is composited onto white, so transparent pixels look as they do in an
  image viewer instead of showing whatever colour they happen to store.
* 16-bit integer images (``I;16*``, and ``I`` as Pillow opens 16-bit PNG/TIFF)
  are scaled from 0..65535 to 0..255 (``round(v / 257)``), never clipped.
* 32-bit float images (``F``): values in [0, 1] are scaled to 0..255; a float
  image with values above 1 is taken to be on the 0..255 scale and clipped. A float
  image with NaN or inf pixels is rejected (:class:`DataError`), never silently filled.
* The EXIF orientation tag is applied (phone photos come out upright).

For a generator of 1-channel data (the reference's ``--input_nc 1``/``--output_nc 1``) images are
read with ``channels=1``: the RGB image above, then Pillow's ``L`` (as the reference's
``transforms.Grayscale(1)``), and come out as 1xHxW tensors; :func:`to_image` writes them back as ``L``.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image, ImageOps

from ..core.files import NotAFileError, regular_file
from .errors import DataError

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

IMAGE_CHANNELS = (1, 3)  # grayscale (mode L) and RGB: what a generator's --input_nc/--output_nc may be
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
# Image formats users often have but coevo does not read: worth a warning, not silence.
_UNSUPPORTED_IMAGE_EXTENSIONS = (
    ".gif", ".ppm", ".pgm", ".pbm", ".pnm", ".heic", ".heif", ".avif", ".jp2", ".j2k",
    ".ico", ".svg", ".psd", ".dng", ".cr2", ".nef", ".arw", ".raw", ".jfif", ".exr",
)
SKIP_BAD_HINT = "pass --set data.skip_bad_images=true to skip bad files"
# Images with a shorter side are warned about: resized up to load_size they are mostly
# interpolation (thumbnails, icons, or a wrong folder).
MIN_IMAGE_SIDE = 32
_warned_small: set = set()  # paths warned about once: a data loader reads each image every epoch
LAYOUT_HINT = (
    "a data set folder holds trainA/, trainB/, testA/ and testB/, each with image files "
    f"({', '.join(e.lstrip('.') for e in IMAGE_EXTENSIONS)}) directly inside; "
    "build the built-in one with `coevo data synthetic --out DIR` or download one with "
    "`python datasets/download.py horse2zebra`"
)


def is_image_file(path: PathLike) -> bool:
    """True when the name has one of :data:`IMAGE_EXTENSIONS` (case-insensitive) and is not hidden."""
    name = os.path.basename(os.fspath(path))
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


# ----------------------------------------------------------------------------- reading
def _composite_on_white(im: Image.Image) -> Image.Image:
    rgba = im.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def _integer_to_rgb(im: Image.Image) -> Image.Image:
    arr = np.asarray(im)
    if arr.dtype.kind == "i" and arr.size and (arr.min() < 0 or arr.max() > 65535):
        log.warning("%s: 32-bit integer pixels outside 0..65535 were clipped", getattr(im, "filename", "image"))
    arr = np.clip(arr.astype(np.float64), 0, 65535)
    gray = np.floor(arr / 257.0 + 0.5).astype(np.uint8)
    return Image.fromarray(gray).convert("RGB")


def _non_finite_pixels(im: Image.Image) -> Optional[str]:
    """Why a float image cannot be used (NaN/inf pixels), or None."""
    if im.mode != "F":
        return None
    arr = np.asarray(im, dtype=np.float64)
    n_nan, n_inf = int(np.isnan(arr).sum()), int(np.isinf(arr).sum())
    if not (n_nan or n_inf):
        return None
    return f"{n_nan} NaN and {n_inf} inf pixel(s) of {arr.size} in a 32-bit float image"


def _float_to_rgb(im: Image.Image) -> Image.Image:
    reason = _non_finite_pixels(im)
    if reason is not None:
        raise DataError(reason)
    arr = np.asarray(im, dtype=np.float64)
    if arr.size and arr.max() <= 1.0:
        arr = arr * 255.0
    gray = np.floor(np.clip(arr, 0, 255) + 0.5).astype(np.uint8)
    return Image.fromarray(gray).convert("RGB")


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert a loaded Pillow image of any mode to 8-bit RGB (rules in the module docstring)."""
    mode = im.mode
    if mode == "RGB":
        return im
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in im.info):
        return _composite_on_white(im)
    if mode.startswith("I;16") or mode == "I":
        return _integer_to_rgb(im)
    if mode == "F":
        return _float_to_rgb(im)
    return im.convert("RGB")


def _bad_image_message(path: Path, reason: str) -> str:
    return (f"cannot read image {path}: {reason}. Re-download or delete it, or {SKIP_BAD_HINT}; "
            f"`coevo data check {path.parent}` lists every bad file")


def check_channels(channels: int, what: str = "images") -> int:
    """``channels`` when coevo reads images that way (1: grayscale, 3: RGB), else :class:`DataError`."""
    if isinstance(channels, bool) or channels not in IMAGE_CHANNELS:
        raise DataError(f"{what}: coevo reads images with 1 channel (grayscale, the reference's --input_nc 1) "
                        f"or 3 (RGB), not {channels!r}")
    return int(channels)


def to_mode(im: Image.Image, channels: int = 3) -> Image.Image:
    """An image of any mode as 8-bit RGB (``channels`` 3) or 8-bit grayscale ``L`` (``channels`` 1).

    Grayscale is Pillow's ``L`` of the RGB image (ITU-R 601-2 luma), as the reference's
    ``transforms.Grayscale(1)`` makes it; an ``L`` image comes back unchanged.
    """
    if check_channels(channels) == 3:
        return to_rgb(im)
    return im if im.mode == "L" else to_rgb(im).convert("L")


def load_image(path: PathLike, channels: int = 3) -> Image.Image:
    """Read ``path`` fully and return it as an 8-bit RGB :class:`PIL.Image.Image` (``channels`` 1:
    8-bit grayscale ``L``, see :func:`to_mode`).

    Raises :class:`DataError` naming the file when it is missing, not an image,
    corrupt or truncated. Pillow decodes lazily, so the pixels are loaded here,
    and truncated files fail instead of coming back half grey.
    """
    check_channels(channels)
    path = Path(path)
    try:
        regular_file(path, "image")
    except FileNotFoundError:
        raise DataError(f"image file not found: {path}") from None
    except NotAFileError as e:
        raise DataError(str(e)) from None
    try:
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
            rgb = to_mode(im, channels).copy()
    except DataError as e:  # readable, but the pixels are unusable
        raise DataError(_bad_image_message(path, str(e))) from e
    except Exception as e:  # Pillow's plugins raise OSError, SyntaxError, ValueError, zlib errors...
        raise DataError(_bad_image_message(path, f"{type(e).__name__}: {e}")) from e
    if min(rgb.size) < MIN_IMAGE_SIDE and path not in _warned_small:
        _warned_small.add(path)
        log.warning("%s is only %dx%d pixels (less than %d on a side); it will be mostly interpolation "
                    "once resized; `coevo data check` lists such images", path, *rgb.size, MIN_IMAGE_SIDE)
    return rgb


def small_images(paths: Iterable[PathLike], min_side: int = MIN_IMAGE_SIDE) -> List[Tuple[Path, Tuple[int, int]]]:
    """``(path, (width, height))`` for every readable image of ``paths`` with a side below ``min_side``.

    Reads the file headers only.
    """
    small = []
    for p in paths:
        try:
            regular_file(p)  # never open a FIFO: it blocks
            with Image.open(p) as im:
                size = im.size
        except Exception:  # unreadable files are check_image's to report
            continue
        if min(size) < min_side:
            small.append((Path(p), size))
    return small


def check_image(path: PathLike) -> Optional[str]:
    """Why ``path`` cannot be used as an image, or None when it reads cleanly.

    Runs Pillow's ``verify`` (chunk checksums) and then decodes the pixels
    (JPEGs at 1/8 scale, which still reads every byte), so truncated files are found,
    and float images with NaN or inf pixels too.
    """
    path = Path(path)
    try:
        regular_file(path, "image")  # a stat first: opening a FIFO would block forever
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            if im.format == "JPEG":
                im.draft("RGB", (max(1, im.width // 8), max(1, im.height // 8)))
            im.load()
            return _non_finite_pixels(im)
    except Exception as e:
        return f"{type(e).__name__}: {e}"


def find_bad_images(paths: Iterable[PathLike]) -> List[Tuple[Path, str]]:
    """``(path, reason)`` for every file of ``paths`` that :func:`check_image` rejects."""
    bad = []
    for p in paths:
        reason = check_image(p)
        if reason is not None:
            bad.append((Path(p), reason))
    return bad


# ----------------------------------------------------------------------------- folders
def _names(paths: Sequence[Path], k: int = 3) -> str:
    shown = ", ".join(p.name for p in paths[:k])
    return shown + (f" and {len(paths) - k} more" if len(paths) > k else "")


def _refuse_special_file(path: Path) -> None:
    """DataError for an image name on a FIFO, device or socket, even with skip_bad: no data set holds
    one by mistake, and reading it would block. A missing link target is a bad image like any other."""
    try:
        regular_file(path, "image")
    except FileNotFoundError:
        pass
    except NotAFileError as e:
        raise DataError(f"{e}; remove it from {path.parent}") from None


def refuse_special_files(folder: PathLike) -> None:
    """:func:`_refuse_special_file` for every image name directly inside ``folder`` (if it is one);
    for a check before any output exists, without decoding a single image."""
    folder = Path(folder)
    if folder.is_dir():
        for entry in folder.iterdir():
            if is_image_file(entry) and not entry.is_dir():
                _refuse_special_file(entry)


def list_images(folder: PathLike, skip_bad: bool = False) -> List[Path]:
    """Image files directly inside ``folder``, sorted by name.

    Other files are ignored (a warning for image formats coevo does not read,
    a debug message otherwise); hidden files such as macOS ``._x.jpg`` are ignored.
    ``skip_bad=True`` checks every image (:func:`check_image`) and drops the
    unreadable ones with one warning; otherwise files are not opened here and a
    bad one raises :class:`DataError` when it is loaded.

    Raises :class:`DataError` when ``folder`` is missing or holds no image.
    """
    folder = Path(folder)
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise DataError(f"image folder {folder} {what}; {LAYOUT_HINT}")
    images: List[Path] = []
    unsupported: List[Path] = []
    subfolders: List[Path] = []
    for entry in sorted(folder.iterdir()):
        if entry.is_dir():
            subfolders.append(entry)
        elif is_image_file(entry):
            _refuse_special_file(entry)
            images.append(entry)
        elif entry.suffix.lower() in _UNSUPPORTED_IMAGE_EXTENSIONS and not entry.name.startswith("."):
            unsupported.append(entry)
        else:
            log.debug("ignoring %s: not an image file", entry)
    if unsupported:
        log.warning("ignoring %d file(s) in %s in formats coevo does not read (%s); convert them to PNG or JPEG",
                    len(unsupported), folder, _names(unsupported))
    if not images:
        nested = f" (images must sit directly inside it, not in subfolders such as {subfolders[0].name}/)" \
            if subfolders else ""
        raise DataError(f"no image files in {folder}{nested}; {LAYOUT_HINT}")
    if skip_bad:
        bad = find_bad_images(images)
        if bad:
            bad_paths = [p for p, _ in bad]
            log.warning("skipping %d unreadable image(s) in %s: %s (first: %s)",
                        len(bad), folder, _names(bad_paths), bad[0][1])
            bad_set = set(bad_paths)
            images = [p for p in images if p not in bad_set]
            if not images:
                raise DataError(f"every image in {folder} is unreadable (first: {bad[0][0].name}: {bad[0][1]})")
    return images


# ----------------------------------------------------------------------------- tensors
def to_tensor(img: Image.Image, channels: int = 3) -> torch.Tensor:
    """PIL image -> float tensor 3xHxW, RGB, values in [-1, 1] (0 -> -1, 255 -> 1).

    ``channels`` 1: 1xHxW, the image's grayscale (:func:`to_mode`), for a generator of 1-channel data.
    """
    arr = np.asarray(to_mode(img, channels), dtype=np.float32)
    if arr.ndim == 2:
        arr = arr[..., None]
    return torch.from_numpy(arr / 127.5 - 1.0).permute(2, 0, 1).contiguous()


def to_image(tensor: torch.Tensor) -> Image.Image:
    """Tensor 3xHxW (or 1x3xHxW) in [-1, 1] -> 8-bit RGB PIL image; 1xHxW (or HxW) -> 8-bit grayscale ``L``.

    Values are clamped to [-1, 1] and rounded to the nearest level, so
    ``to_image(to_tensor(img))`` reproduces an 8-bit image exactly (either mode).
    """
    t = tensor.detach()
    if t.dim() == 4:
        if t.shape[0] != 1:
            raise ValueError(f"to_image takes one image (3xHxW or 1x3xHxW), got shape {tuple(t.shape)}")
        t = t[0]
    if t.dim() == 2:
        t = t.unsqueeze(0)
    if t.dim() != 3 or t.shape[0] not in (1, 3):
        raise ValueError(f"to_image expects 3xHxW or 1xHxW, got shape {tuple(t.shape)}")
    q = ((t.float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    if q.shape[0] == 1:
        return Image.fromarray(q[0].contiguous().numpy(), mode="L")
    return Image.fromarray(q.permute(1, 2, 0).contiguous().numpy())
