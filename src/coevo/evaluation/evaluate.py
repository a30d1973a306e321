"""Translation quality of a generator on a data set's test split.

What is measured (all on the test split, for reporting only; never select a
model on these numbers, select on the held-out part of the training split):

* FID and KID between the translations of ``test{A|B}`` and the real images of
  the output domain. For ``AtoB`` the reals are every image of domain B
  (``trainB`` + ``testB``), as in the GAN Compression protocol (horse->zebra:
  120 translated horses against all zebras). Images are quantised to uint8 first.
* PSNR and SSIM to the exact ground truth, when the data set has it
  (``testA_gt_B/`` and ``testB_gt_A/`` with the input's file names: the built-in
  synthetic data set).
* Fidelity to a teacher, when one is given: PSNR and L1 of the output to the teacher's
  translation of the same input, and a perceptual distance (how much compression changed
  the output). A compression method is judged first by these: PSNR to ground truth also
  measures what fine-tuning added, not only what pruning removed.

Result dicts have one schema; metrics that were not computed are ``None``.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Tuple, Union

import torch
from PIL import Image
from torch import nn

from ..core.guards import check_finite
from ..models.generator import fixed_rng
from ..data.errors import DataError
from .metrics import extract_features, fid_kid_from_features, inception_extractor, psnr, ssim
from ..core.files import atomic_write_text
from ..errors import ConfigError

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
ModelLike = Union[nn.Module, PathLike]

# direction -> (input folder, output domain, ground-truth folder)
DIRECTIONS: Dict[str, Tuple[str, str, str]] = {
    "AtoB": ("testA", "B", "testA_gt_B"),
    "BtoA": ("testB", "A", "testB_gt_A"),
}

__all__ = ["DIRECTIONS", "check_request", "evaluate_generator", "translation_quality", "save_json"]


def _check_direction(direction: str) -> Tuple[str, str, str]:
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {sorted(DIRECTIONS)}, got {direction!r}")
    return DIRECTIONS[direction]


def _as_module(model: ModelLike, device: Union[str, torch.device], reference_mode: str = "eval") -> nn.Module:
    """``model`` (a module or a file) on ``device`` in ``reference_mode``."""
    from ..models.generator import set_reference_mode

    if not isinstance(model, nn.Module):
        from ..models.io import load_generator

        model = load_generator(model)
    if str(device) != "cpu":
        model = model.to(device)
    return set_reference_mode(model, reference_mode)


def _reference_batch(batch_size: int, reference_mode: str) -> int:
    """One image per forward in train mode: a BatchNorm's batch statistics would otherwise mix images,
    and the reference's test script translates one at a time."""
    return 1 if reference_mode == "train" else batch_size


def model_channels(model: nn.Module) -> Tuple[int, int]:
    """``(input, output)`` channels of a generator (1: grayscale data, see :mod:`coevo.data.images`); 3 and 3
    for a module that does not say (an exported graph without its architecture)."""
    arch = getattr(model, "arch", None)
    return int(getattr(arch, "in_channels", 3)), int(getattr(arch, "out_channels", 3))


def _image_batches(folder: Path, size: Optional[int], batch_size: int,
                   channels: int = 3) -> Iterator[Tuple[torch.Tensor, List[Path]]]:
    """Batches (NCHW in [-1, 1], paths) of consecutive same-sized images of ``folder``, in name order;
    ``channels`` 1 reads them as grayscale."""
    from ..data import SingleImageDataset

    ds = SingleImageDataset(folder, size=size, channels=channels)
    images: List[torch.Tensor] = []
    paths: List[Path] = []
    for i in range(len(ds)):
        item = ds[i]
        if images and (item["image"].shape != images[0].shape or len(images) == batch_size):
            yield torch.stack(images), paths
            images, paths = [], []
        images.append(item["image"])
        paths.append(Path(item["path"]))
    if images:
        yield torch.stack(images), paths


def _load_ground_truth(gt_dir: Path, paths: List[Path], like: torch.Tensor) -> torch.Tensor:
    """Ground-truth images for ``paths`` (same file names in ``gt_dir``), resized to ``like``'s H x W and read
    with its channels (grayscale for a 1-channel output)."""
    from ..data import load_image, to_tensor

    h, w = like.shape[-2:]
    out = []
    for p in paths:
        gt = gt_dir / p.name
        if not gt.is_file():
            raise DataError(
                f"{gt_dir} exists but holds no ground truth for {p.name}; it must hold one image per "
                f"input with the same file name (rebuild the data set, or remove {gt_dir} to skip PSNR/SSIM)"
            )
        channels = int(like.shape[1])
        img = load_image(gt, channels)
        if img.size != (w, h):
            img = img.resize((w, h), Image.BICUBIC)
        out.append(to_tensor(img, channels))
    return torch.stack(out).to(like.device)


def _mean(values: List[float]) -> Optional[float]:
    return float(sum(values) / len(values)) if values else None


@torch.inference_mode()
def _score(model: nn.Module, data_root: Path, direction: str, teacher: Optional[nn.Module],
           perceptual_metric: Optional[Callable], size: Optional[int], batch_size: int,
           device: Union[str, torch.device], extractor: Optional[nn.Module]) -> Tuple[Dict, Optional[torch.Tensor]]:
    """Translate the test inputs once; score every image; extract FID features of the translations."""
    from ..models.family import any_size

    # a U-Net sees each image padded up to its side multiple, its output cropped back to the image's size
    model, teacher = any_size(model), (None if teacher is None else any_size(teacher))
    in_dir, _, gt_name = _check_direction(direction)
    gt_dir = data_root / gt_name
    has_gt = gt_dir.is_dir()
    names: List[str] = []
    psnrs: List[float] = []
    ssims: List[float] = []
    l1s: List[float] = []
    psnrs_t: List[float] = []
    perceptuals: List[float] = []
    feats: List[torch.Tensor] = []
    for x, paths in _image_batches(data_root / in_dir, size, batch_size, model_channels(model)[0]):
        x = x.to(device)
        names_in = ", ".join(str(p) for p in paths)
        y = check_finite(model(x).float(), f"the model's output for {names_in}")
        names += [p.name for p in paths]
        if has_gt:
            gt = _load_ground_truth(gt_dir, paths, y)
            psnrs += psnr(y, gt).tolist()
            ssims += ssim(y, gt).tolist()
        if teacher is not None:
            y_t = check_finite(teacher(x).float(), f"the teacher's output for {names_in}")
            l1s += (y - y_t).abs().flatten(1).mean(dim=1).tolist()
            psnrs_t += psnr(y, y_t).tolist()
            if perceptual_metric is not None:
                perceptuals += perceptual_metric(y, y_t).flatten().tolist()
        if extractor is not None:
            feats.append(extract_features(y, extractor, batch_size, device))
    result = {
        "direction": direction,
        "data_root": str(data_root),
        "n_images": len(names),
        "size": size,
        "images": names,
        "psnr": _mean(psnrs),
        "ssim": _mean(ssims),
        "psnr_per_image": psnrs if has_gt else None,
        "ssim_per_image": ssims if has_gt else None,
        "l1_to_teacher": _mean(l1s),
        "psnr_to_teacher": _mean(psnrs_t),
        "l1_to_teacher_per_image": l1s if teacher is not None else None,
        "psnr_to_teacher_per_image": psnrs_t if teacher is not None else None,
        "perceptual_to_teacher": _mean(perceptuals),
        "perceptual": getattr(perceptual_metric, "name", None) if perceptuals else None,
    }
    if not has_gt:
        log.info("no %s in %s: PSNR/SSIM to ground truth skipped", gt_name, data_root)
    return result, (torch.cat(feats) if feats else None)


def translation_quality(model: ModelLike, data_root: PathLike, direction: str = "AtoB",
                        teacher: Optional[ModelLike] = None, perceptual_metric: Optional[Callable] = None,
                        size: Optional[int] = None, batch_size: int = 8,
                        device: Union[str, torch.device] = "cpu", reference_mode: str = "eval") -> Dict:
    """Cheap quality numbers, no FID: PSNR/SSIM to ground truth, L1/perceptual distance to a teacher.

    Args:
        model, teacher: generators (modules or files :func:`coevo.load_generator` reads);
            inputs and outputs NCHW RGB in [-1, 1].
        data_root: folder with ``testA``/``testB`` (and ``testA_gt_B``/``testB_gt_A`` for PSNR/SSIM).
        perceptual_metric: ``metric(x, y) -> Tensor[N]`` (see :func:`coevo.evaluation.perceptual.build_perceptual`),
            applied to (model output, teacher output); ignored without a teacher.
        size: resize inputs to ``size`` x ``size``; None keeps each image's size (rounded down to a multiple of 4).
        reference_mode: ``"eval"`` or ``"train"`` for model and teacher alike (``model.reference_mode``;
            see :func:`coevo.models.generator.set_reference_mode`).

    Returns:
        dict with ``psnr``, ``ssim`` (means over images, dB and [0, 1]), ``psnr_per_image``,
        ``ssim_per_image``, ``l1_to_teacher``, ``psnr_to_teacher`` (dB, the output against the
        teacher's output, both quantised to 8 bits), their ``..._per_image`` lists,
        ``perceptual_to_teacher``, ``perceptual`` (the metric's name), ``n_images``, ``images``;
        None for what was not measured.
    """
    model = _as_module(model, device, reference_mode)
    teacher = None if teacher is None else _as_module(teacher, device, reference_mode)
    batch_size = _reference_batch(batch_size, reference_mode)
    with fixed_rng():  # dropout in train mode: the same masks every time
        result, _ = _score(model, Path(data_root), direction, teacher, perceptual_metric, size, batch_size,
                           device, extractor=None)
    return result


def check_request(data_root: PathLike, direction: str = "AtoB", size: Optional[int] = None, batch_size: int = 8,
                  measures: Optional[Tuple[bool, bool]] = None) -> None:
    """Settings and inputs that cannot work, before any weights are looked for or loaded. ``measures``:
    (FID on, a teacher given) to also refuse a request that would measure nothing (no ground truth
    either): the CLI's empty table; the library returns the image count even then."""
    data_root = Path(data_root)
    from ..core.limits import check_image_side

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"the batch size (--batch-size) must be an integer >= 1, got {batch_size!r}")
    if size is not None:
        check_image_side(size, "--size")
    in_dir, _, gt_name = _check_direction(direction)
    if not data_root.is_dir():
        raise DataError(f"data folder {data_root} does not exist or is not a folder; give a data set with "
                        f"{in_dir}/ (and trainA/trainB for FID)")
    if not (data_root / in_dir).is_dir():
        raise DataError(f"{data_root} has no {in_dir}/ folder of test inputs for {direction}")
    if measures is not None and not (any(measures) or (data_root / gt_name).is_dir()):
        raise ConfigError(f"nothing to measure: FID is off, there is no teacher and {data_root} has no ground "
                          f"truth ({gt_name}/); drop --no-fid, pass --teacher, or use a data set with ground truth")


def _real_folders(data_root: Path, domain: str) -> List[Path]:
    folders = [data_root / f"{split}{domain}" for split in ("train", "test")]
    found = [f for f in folders if f.is_dir()]
    if not found:
        raise DataError(f"FID needs real images of domain {domain}: neither {folders[0]} nor {folders[1]} exists")
    return found


def _real_batches(folders: List[Path], size: Optional[int], batch_size: int,
                  channels: int = 3) -> Iterator[torch.Tensor]:
    for folder in folders:
        for x, _ in _image_batches(folder, size, batch_size, channels):
            yield x


def evaluate_generator(model: ModelLike, data_root: PathLike, direction: str = "AtoB",
                       teacher: Optional[ModelLike] = None, inception_weights: Optional[PathLike] = None,
                       feature_extractor: Optional[nn.Module] = None, perceptual: Optional[str] = "discriminator",
                       discriminator: Optional[Union[nn.Module, PathLike]] = None, size: Optional[int] = None,
                       batch_size: int = 8, compute_fid: bool = True, kid_subset_size: Optional[int] = None,
                       lpips_net: str = "alex", device: Union[str, torch.device] = "cpu",
                       reference_mode: str = "eval") -> Dict:
    """Full evaluation of ``model`` translating ``test{A|B}`` of ``data_root`` (see the module docstring).

    Args:
        model, teacher: generators (modules or files); NCHW RGB in [-1, 1].
        direction: ``"AtoB"`` (inputs ``testA``, reals ``trainB`` + ``testB``) or ``"BtoA"``.
        inception_weights: the FID Inception file; default ``$TORCH_HOME/hub/checkpoints``.
        feature_extractor: replaces Inception (module: uint8 NCHW -> N x D); for tests and custom spaces.
        perceptual: distance to the teacher's output: ``"discriminator"`` (needs
            ``discriminator``, the teacher's discriminator of the output domain:
            D_A for AtoB), ``"lpips"``, ``"l1"``, or None to skip. Used only with a teacher.
        size: resize inputs and reals to ``size`` x ``size``; None keeps native sizes.
        compute_fid: False skips FID/KID (no Inception weights needed).
        kid_subset_size: images per KID subset; default min(1000, n_real, n_fake).
        reference_mode: how model and teacher run, ``"eval"`` or ``"train"`` (see :func:`translation_quality`).

    Returns:
        the :func:`translation_quality` dict plus ``fid``, ``kid``, ``kid_std``, ``n_real``,
        ``real_folders``, ``fid_features``, ``kid_subset_size`` (None when FID was skipped),
        ``reference_mode`` and the model's ``arch``.

    Raises:
        coevo.evaluation.metrics.InceptionWeightsError: ``compute_fid`` without ``feature_extractor``
            and no Inception weights on disk; raised before any image is translated.
    """
    data_root = Path(data_root)
    _, out_domain, _ = _check_direction(direction)
    check_request(data_root, direction, size, batch_size)
    extractor = None
    fid_features = None
    if compute_fid:
        if feature_extractor is None:
            extractor, fid_features = inception_extractor(inception_weights), "inception-v3 pool3 (2048-d)"
        else:
            extractor, fid_features = feature_extractor, f"custom ({type(feature_extractor).__name__})"
        extractor = extractor.to(device).eval()
    model = _as_module(model, device, reference_mode)
    teacher_m = None if teacher is None else _as_module(teacher, device, reference_mode)
    batch_size = _reference_batch(batch_size, reference_mode)
    metric = None
    if teacher_m is not None and perceptual is not None:
        metric = _build_metric(perceptual, discriminator, direction, lpips_net, device)

    with fixed_rng():  # dropout in train mode: the same masks every time
        result, fake_feats = _score(model, data_root, direction, teacher_m, metric, size, batch_size, device,
                                    extractor)
    fid_part: Dict = {"fid": None, "kid": None, "kid_std": None, "n_real": None, "real_folders": None,
                      "fid_features": None, "kid_subset_size": None}
    if extractor is not None:
        folders = _real_folders(data_root, out_domain)
        # the reals as the model's outputs are: grayscale for a 1-channel generator (Inception sees gray RGB)
        reals = _real_batches(folders, size, batch_size, model_channels(model)[1])
        real_feats = extract_features(reals, extractor, batch_size, device)
        fk = fid_kid_from_features(real_feats, fake_feats, kid_subset_size=kid_subset_size,
                                   features=fid_features)
        fid_part.update(fid=fk.fid, kid=fk.kid, kid_std=fk.kid_std, n_real=fk.n_real,
                        real_folders=[f.name for f in folders], fid_features=fk.features,
                        kid_subset_size=fk.kid_subset_size)
    result.update(fid_part)
    result["reference_mode"] = reference_mode
    if isinstance(model, nn.Module) and hasattr(model, "arch"):
        result["arch"] = model.arch.to_dict()
    return result


def _build_metric(name: str, discriminator, direction: str, lpips_net: str, device) -> Callable:
    from .perceptual import build_perceptual

    if name == "discriminator":
        if discriminator is None:
            d_name = "D_A (latest_net_D_A.pth)" if direction == "AtoB" else "D_B (latest_net_D_B.pth)"
            raise ValueError(
                f"perceptual='discriminator' needs the teacher's discriminator of the output domain, "
                f"{d_name} for {direction}: pass it (--teacher-d FILE, or --teacher a teacher folder), "
                "or choose perceptual 'lpips' or 'l1'"
            )
        if not isinstance(discriminator, nn.Module):
            from ..models.io import load_discriminator

            discriminator = load_discriminator(discriminator)
    return build_perceptual(name, discriminator=discriminator, lpips_net=lpips_net, device=str(device))


def save_json(result: Dict, path: PathLike) -> Path:
    """Write an evaluation dict as indented JSON (atomically); returns the path."""
    path = Path(path)
    atomic_write_text(path, json.dumps(result, indent=2) + "\n")
    return path
