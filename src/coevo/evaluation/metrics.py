"""Image quality metrics: PSNR and SSIM per image, FID and KID between two image sets.

Every metric here scores images the way the field does: translations are first
quantised to 8-bit (``uint8`` in [0, 255], as when they are saved to PNG), then
scored. Inputs are NCHW RGB float tensors in [-1, 1].

FID/KID features come from the FID Inception network (InceptionV3 pool3, 2048-d,
torch-fidelity's port of the TensorFlow graph of 2015-12-05, run through
torchmetrics) or from any ``nn.Module`` passed in as ``feature_extractor``.
coevo never downloads the Inception weights: without the file it raises
:class:`InceptionWeightsError` naming the file and where to put it.
"""
from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, List, Optional, Union

import torch
from torch import nn

from ..errors import CheckpointError
from ..models.io import safe_torch_load
from ..core.rng import torch_rng

log = logging.getLogger(__name__)

# The FID Inception as torch-fidelity names it (what torchmetrics' FID runs), and the
# same file under pytorch-fid's name: the 6726825d suffix is the file's hash prefix.
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_FILE_PYTORCH_FID = "pt_inception-2015-12-05-6726825d.pth"
INCEPTION_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/" + INCEPTION_FILE
)
PSNR_CAP_DB = 100.0

Images = Union[torch.Tensor, Iterable[torch.Tensor]]


class FIDUnavailableError(CheckpointError):
    """FID/KID cannot be computed here (backend package or Inception weights missing); the message says the fix."""


class InceptionWeightsError(FIDUnavailableError):
    """The FID Inception weights file is missing or unusable; the message names the file and where it goes."""


# ----------------------------------------------------------------------------- per-image metrics
def quantize_uint8(x: torch.Tensor) -> torch.Tensor:
    """NCHW float in [-1, 1] -> uint8 in [0, 255], rounded to the nearest level (as a saved PNG holds it)."""
    return ((x.detach().float().clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)


def gray_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """NCHW with 1 channel (grayscale) -> the same image as 3 equal channels; anything else unchanged.
    For networks pretrained on RGB (Inception, the LPIPS backbones) reading 1-channel data."""
    return x.repeat(1, 3, 1, 1) if x.dim() == 4 and x.shape[1] == 1 else x


def _check_pair(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.shape != y.shape or x.dim() != 4:
        raise ValueError(f"expected two NCHW tensors of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")


def psnr(x: torch.Tensor, y: torch.Tensor, max_db: Optional[float] = PSNR_CAP_DB) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per image, on 8-bit quantised images (peak 255).

    Args:
        x, y: NCHW float in [-1, 1], same shape.
        max_db: identical images have infinite PSNR; it is capped at this value
            (100 dB, i.e. an MSE below 2.6e-6 grey levels squared) so that means
            and JSON stay finite. ``None`` returns ``inf`` instead.

    Returns:
        Tensor[N] of float32.
    """
    _check_pair(x, y)
    diff = quantize_uint8(x).double() - quantize_uint8(y).double()
    mse = diff.square().flatten(1).mean(dim=1)
    out = 10.0 * torch.log10(255.0 ** 2 / mse)  # mse == 0 gives inf
    if max_db is not None:
        out = out.clamp(max=max_db)
    return out.float()


def ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Structural similarity per image on 8-bit quantised images.

    Gaussian window 11x11, sigma 1.5, K1 = 0.01, K2 = 0.03, data range 255
    (Wang et al. 2004); computed per channel (RGB, or the one of grayscale) and averaged over channels and
    over the valid (unpadded) window positions, as skimage's
    ``structural_similarity(gaussian_weights=True, use_sample_covariance=False)``.

    Args:
        x, y: NCHW float in [-1, 1], same shape, H and W >= 11.

    Returns:
        Tensor[N] of float32; 1 for identical images.
    """
    from torchmetrics.functional.image import structural_similarity_index_measure

    _check_pair(x, y)
    if min(x.shape[-2:]) < 11:
        raise ValueError(f"SSIM needs images of at least 11x11 pixels, got {tuple(x.shape[-2:])}")
    _, ssim_map = structural_similarity_index_measure(
        quantize_uint8(x).double(), quantize_uint8(y).double(), gaussian_kernel=True, sigma=1.5,
        kernel_size=11, reduction="none", data_range=255.0, k1=0.01, k2=0.03, return_full_image=True,
    )
    # torchmetrics averages over reflect-padded borders too; Wang et al.'s reference
    # and skimage average over the valid window positions only, so crop the padding.
    valid = ssim_map[..., 5:-5, 5:-5]
    return valid.flatten(1).mean(dim=1).float()


# ----------------------------------------------------------------------------- feature extractors
def _torch_fidelity_available() -> bool:
    return importlib.util.find_spec("torch_fidelity") is not None


def _hub_checkpoints() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def find_inception_weights(path: Optional[Union[str, os.PathLike]] = None) -> Path:
    """Locate the FID Inception weights without downloading anything.

    Order: ``path`` when given; else ``$TORCH_HOME/hub/checkpoints/`` holding
    ``weights-inception-2015-12-05-6726825d.pth`` (torch-fidelity's name) or
    ``pt_inception-2015-12-05-6726825d.pth`` (pytorch-fid's name).

    Raises:
        InceptionWeightsError: no such file; the message says what to place where.
    """
    if path is not None:
        path = Path(path).expanduser()
        if not path.is_file():
            raise InceptionWeightsError(
                f"Inception weights file not found: {path}. Pass the FID Inception weights "
                f"({INCEPTION_FILE}, from {INCEPTION_URL}) with --inception-weights FILE."
            )
        return path
    hub = _hub_checkpoints()
    for name in (INCEPTION_FILE, INCEPTION_FILE_PYTORCH_FID):
        if (hub / name).is_file():
            return hub / name
    raise InceptionWeightsError(
        f"FID needs the FID Inception weights {INCEPTION_FILE} and this machine has no copy "
        f"(looked in {hub}; coevo never downloads them). Download {INCEPTION_URL} on a machine "
        f"with internet and either place it at {hub / INCEPTION_FILE} (the folder is "
        f"$TORCH_HOME/hub/checkpoints) or pass --inception-weights FILE "
        f"(inception_weights=FILE in Python). pytorch-fid's {INCEPTION_FILE_PYTORCH_FID} also works. "
        "Or skip FID with --no-fid (compute_fid=False)."
    )


def inception_extractor(weights: Optional[Union[str, os.PathLike]] = None) -> nn.Module:
    """The FID Inception (pool3, 2048-d features), loaded from a local file only.

    The returned module maps uint8 NCHW images [0, 255] of any size to N x 2048
    features (it resizes to 299x299 itself, as the TF reference does).

    Raises:
        InceptionWeightsError: the weights are missing or do not fit the network.
        FIDUnavailableError: torch-fidelity is not installed.
    """
    path = find_inception_weights(weights)
    # Read once, with weights_only=True: torch-fidelity would read a path with
    # a full unpickling (a file that could run code), so it gets the tensors instead.
    state = safe_torch_load(path)
    if not isinstance(state, dict) or "Mixed_7c.branch_pool.conv.weight" not in state:
        raise InceptionWeightsError(
            f"{path} is not the FID Inception state_dict (no 'Mixed_7c.branch_pool.conv.weight'); "
            f"expected {INCEPTION_FILE} from {INCEPTION_URL}"
        )
    if not _torch_fidelity_available():
        raise FIDUnavailableError(
            "FID/KID with the Inception network needs the package torch-fidelity "
            "(pip install torch-fidelity), which torchmetrics uses for its InceptionV3; "
            "or skip FID with --no-fid (compute_fid=False)."
        )
    try:
        net = _inception_from_state_dict(state)
    except RuntimeError as e:  # load_state_dict: missing or misshapen tensors
        reason = " ".join(str(e).split())  # load_state_dict lists every key over many lines
        raise InceptionWeightsError(f"{path} does not fit the FID Inception network ({reason[:300]}); "
                                    f"expected {INCEPTION_FILE} from {INCEPTION_URL}") from e
    log.info("FID Inception weights: %s", path)
    return net


def _inception_from_state_dict(state: dict) -> nn.Module:
    """torchmetrics' NoTrainInceptionV3 with the weights ``state``, without reading or downloading a file.

    torch-fidelity's constructor takes either a path (which it unpickles in full, so a
    file could run code) or nothing, in which case it fetches its URL
    through ``load_state_dict_from_url``. That one name is swapped, for the duration
    of the constructor, for a function that returns ``state``.
    """
    import torch_fidelity.feature_extractor_inceptionv3 as fidelity_inception
    from torchmetrics.image.fid import NoTrainInceptionV3

    if not hasattr(fidelity_inception, "load_state_dict_from_url"):
        raise FIDUnavailableError(
            "this torch-fidelity version builds its InceptionV3 in a way coevo does not know, so coevo "
            "cannot hand it the weights safely; install torch-fidelity 0.3 or 0.4, or skip FID with --no-fid"
        )

    def _given(*args, **kwargs) -> dict:
        return state

    original = fidelity_inception.load_state_dict_from_url
    fidelity_inception.load_state_dict_from_url = _given
    try:
        return NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"])
    finally:
        fidelity_inception.load_state_dict_from_url = original


# ----------------------------------------------------------------------------- FID / KID
@dataclass
class FIDResult:
    """FID and KID between two image sets. ``kid`` is the mean over subsets (x1, not x1000)."""

    fid: float
    kid: float
    kid_std: float
    n_real: int
    n_fake: int
    kid_subset_size: int
    features: str

    def to_dict(self) -> dict:
        return dict(self.__dict__)


class _Precomputed(nn.Module):
    """Feeds already-extracted features through torchmetrics' FID (its update calls ``feature(x)``)."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _batches(images: Images) -> Iterable[torch.Tensor]:
    if isinstance(images, torch.Tensor):
        if images.dim() != 4:
            raise ValueError(f"expected NCHW images, got shape {tuple(images.shape)}")
        yield images
    else:
        yield from images


@torch.inference_mode()
def extract_features(images: Images, extractor: nn.Module, batch_size: int = 16,
                     device: Union[str, torch.device] = "cpu") -> torch.Tensor:
    """Quantise images to uint8 and run them through ``extractor``; returns N x D float64 features on the CPU.

    Args:
        images: NCHW float tensor in [-1, 1], or an iterable of such batches
            (batches may differ in H and W). 1-channel (grayscale) images are repeated to 3 channels,
            the gray RGB image a grayscale PNG opens as.
    """
    feats: List[torch.Tensor] = []
    for batch in _batches(images):
        for chunk in batch.split(batch_size):
            f = extractor(gray_to_rgb(quantize_uint8(chunk)).to(device))
            feats.append(f.reshape(f.shape[0], -1).double().cpu())
    if not feats:
        raise ValueError("no images to extract features from")
    return torch.cat(feats)


def fid_kid_from_features(real: torch.Tensor, fake: torch.Tensor, kid_subset_size: Optional[int] = None,
                          kid_subsets: int = 100, generator: Optional[torch.Generator] = None,
                          features: str = "custom") -> FIDResult:
    """FID (torchmetrics) and KID (polynomial-kernel MMD, torchmetrics' kernel) from N x D feature sets.

    KID subsets are drawn with ``generator`` (seed 0 when None) so results repeat.
    ``kid_subset_size`` defaults to min(1000, n_real, n_fake).
    """
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import poly_mmd

    n_real, n_fake = real.shape[0], fake.shape[0]
    if n_real < 2 or n_fake < 2:
        raise ValueError(f"FID/KID need at least 2 real and 2 fake images, got {n_real} and {n_fake}")
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature sizes differ: {real.shape[1]} (real) vs {fake.shape[1]} (fake)")
    fid_metric = FrechetInceptionDistance(feature=_Precomputed(real.shape[1]))
    fid_metric.update(real, real=True)
    fid_metric.update(fake, real=False)
    fid = float(fid_metric.compute())

    m = min(1000, n_real, n_fake) if kid_subset_size is None else int(kid_subset_size)
    if not 2 <= m <= min(n_real, n_fake):
        raise ValueError(f"kid_subset_size must be in [2, {min(n_real, n_fake)}], got {m}")
    if generator is None:
        generator = torch_rng(0)
    scores = []
    for _ in range(kid_subsets):
        r = real[torch.randperm(n_real, generator=generator)[:m]]
        f = fake[torch.randperm(n_fake, generator=generator)[:m]]
        scores.append(poly_mmd(r, f))
    kid = torch.stack(scores)
    return FIDResult(fid=fid, kid=float(kid.mean()), kid_std=float(kid.std(unbiased=False)),
                     n_real=n_real, n_fake=n_fake, kid_subset_size=m, features=features)


def compute_fid_kid(real_images: Images, fake_images: Images, feature_extractor: Optional[nn.Module] = None,
                    inception_weights: Optional[Union[str, os.PathLike]] = None,
                    kid_subset_size: Optional[int] = None, kid_subsets: int = 100, batch_size: int = 16,
                    generator: Optional[torch.Generator] = None,
                    device: Union[str, torch.device] = "cpu") -> FIDResult:
    """FID and KID between real and generated images, both quantised to uint8 first.

    Args:
        real_images, fake_images: NCHW float tensors in [-1, 1], or iterables of such batches.
        feature_extractor: any module mapping uint8 NCHW images [0, 255] to N x D
            features. None: the FID Inception (pool3, 2048-d), read from
            ``inception_weights`` or ``$TORCH_HOME/hub/checkpoints`` (see
            :func:`find_inception_weights`); never downloaded.
        kid_subset_size: images per KID subset; default min(1000, n_real, n_fake).
        generator: draws the KID subsets; seed 0 when None.

    Raises:
        InceptionWeightsError / FIDUnavailableError: no extractor given and the
            Inception network cannot be built offline (checked before any image is read).
    """
    if feature_extractor is None:
        extractor, name = inception_extractor(inception_weights), "inception-v3 pool3 (2048-d)"
    else:
        extractor, name = feature_extractor, f"custom ({type(feature_extractor).__name__})"
    extractor = extractor.to(device).eval()
    real = extract_features(real_images, extractor, batch_size, device)
    fake = extract_features(fake_images, extractor, batch_size, device)
    return fid_kid_from_features(real, fake, kid_subset_size, kid_subsets, generator, name)

