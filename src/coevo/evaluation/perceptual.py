"""Pluggable perceptual distances between two batches of images.

Every metric takes two NCHW RGB batches in [-1, 1] of the same shape and
returns one distance per image (``Tensor[N]``, lower is closer). 1-channel (grayscale) batches,
the images of a generator of 1-channel data, work as well: ``discriminator`` and ``teacher-features``
read them with the teacher's own 1-channel networks, ``lpips`` repeats the channel to gray RGB::

    metric = build_perceptual("discriminator", discriminator=D_A)
    d = metric(student_out, teacher_out)          # Tensor[N]

Metrics (``name`` is recorded in every result that uses one):

* ``discriminator`` -- the paper's idea made stronger: instead of comparing the
  teacher discriminator's final score (one weak scalar per patch), compare its
  intermediate activations the way LPIPS compares AlexNet's: unit-normalise
  each pixel's channel vector, squared difference summed over channels,
  spatial mean, summed over layers. Works offline: the discriminator is part
  of every trained CycleGAN. Use the discriminator of the images' domain
  (for G_A's outputs, domain B, that is D_A).
* ``lpips`` -- LPIPS (Zhang et al. 2018) on an AlexNet or VGG16 backbone. The
  lpips package ships only its linear heads; the ImageNet backbone must be in
  torch's hub cache. A missing file raises :class:`PerceptualWeightsError`
  naming the file, where to put it and where to download it, before anything
  touches the network.
* ``teacher-features`` -- needs no external weights and no discriminator: the
  same LPIPS-style distance in a teacher GENERATOR's own encoder features (after
  the stem, after each down-sampling and after the middle residual block), plus
  the mean pixel L1. Give it the teacher generator whose INPUT domain the images
  are in: for G_A's outputs (domain B images) that is G_B, whose encoder was
  trained to read domain B; G_A's own encoder reads domain A.
* ``l1`` -- mean absolute pixel difference.

A search asks for ``auto`` by default (:func:`resolve_perceptual`): ``discriminator``
when the teacher has both discriminators, else ``lpips`` when its backbone file is
on this machine, else ``teacher-features``.

Targets that are compared many times (the teacher's outputs during a search)
can be embedded once: ``e = metric.embed(y)`` then ``metric.distance(metric.embed(x), e)``
equals ``metric(x, y)``.
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch
from torch import nn

from ..models.discriminator import NLayerDiscriminator
from ..models.generator import ResnetGenerator
from ..core.registry import Registry
from ..errors import CheckpointError, ConfigError
from ..models.io import safe_torch_load

log = logging.getLogger(__name__)

Embedding = List[torch.Tensor]

# torchvision's ImageNet backbones that lpips builds on: file name in the hub
# cache and where it comes from.
LPIPS_BACKBONES: Dict[str, tuple] = {
    "alex": ("alexnet-owt-7be5be79.pth", "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"),
    "vgg": ("vgg16-397923af.pth", "https://download.pytorch.org/models/vgg16-397923af.pth"),
}


class PerceptualWeightsError(CheckpointError):
    """Pretrained weights a perceptual metric needs are not on this machine."""


def _normalise_channels(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    # Unit length per pixel across channels, so the distance measures the
    # direction of a feature vector, not its magnitude (as LPIPS does).
    return x / (x.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)


class PerceptualMetric(nn.Module):
    """Base class: ``metric(x, y) -> Tensor[N]`` for NCHW batches in [-1, 1]."""

    name: str = "base"

    def embed(self, x: torch.Tensor) -> Embedding:
        """Features of ``x`` (NCHW, [-1, 1]) that :meth:`distance` compares."""
        raise NotImplementedError

    def distance(self, ex: Embedding, ey: Embedding) -> torch.Tensor:
        """Per-image distance ``Tensor[N]`` between two embeddings."""
        raise NotImplementedError

    @torch.no_grad()
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape != y.shape:
            raise ValueError(f"perceptual metric {self.name}: shapes differ, {tuple(x.shape)} vs {tuple(y.shape)}")
        return self.distance(self.embed(x), self.embed(y))


class L1Metric(PerceptualMetric):
    """Mean absolute pixel difference per image."""

    name = "l1"

    def embed(self, x: torch.Tensor) -> Embedding:
        return [x]

    def distance(self, ex: Embedding, ey: Embedding) -> torch.Tensor:
        return (ex[0] - ey[0]).abs().flatten(1).mean(dim=1)


class DiscriminatorMetric(PerceptualMetric):
    """LPIPS-style distance in the feature space of a (frozen) PatchGAN discriminator.

    Layers: the activation after every LeakyReLU of
    :meth:`NLayerDiscriminator.features` (the final 1-channel score map is left
    out: unit-normalising one channel leaves only its sign).
    """

    name = "discriminator"

    def __init__(self, discriminator: NLayerDiscriminator) -> None:
        super().__init__()
        self.discriminator = discriminator.eval()
        for p in self.discriminator.parameters():
            p.requires_grad_(False)

    def embed(self, x: torch.Tensor) -> Embedding:
        feats = self.discriminator.features(x)[:-1]
        return [_normalise_channels(f) for f in feats]

    def distance(self, ex: Embedding, ey: Embedding) -> torch.Tensor:
        total = torch.zeros(ex[0].shape[0], dtype=ex[0].dtype, device=ex[0].device)
        for a, b in zip(ex, ey):
            total = total + (a - b).pow(2).sum(dim=1).flatten(1).mean(dim=1)
        return total


class TeacherFeatureMetric(PerceptualMetric):
    """LPIPS-style distance in a frozen teacher generator's encoder features, plus pixel L1.

    ``generator``: the teacher generator whose input domain the compared images are
    in (G_B for images of domain B). Layers: ``stem``, ``down1``, ``down2`` and the
    middle residual block (:meth:`ResnetGenerator.features`); each is unit-normalised
    per pixel across channels, squared differences are summed over channels,
    averaged over pixels and summed over layers; ``pixel_weight`` x mean |x - y| is added.
    """

    name = "teacher-features"

    def __init__(self, generator: ResnetGenerator, pixel_weight: float = 1.0) -> None:
        super().__init__()
        self.generator = generator.eval()
        for p in self.generator.parameters():
            p.requires_grad_(False)
        self.pixel_weight = float(pixel_weight)
        layers = getattr(generator, "perceptual_layers", None)  # a U-Net names its own (down1..down4)
        self.layers = list(layers) if layers else ["stem", "down1", "down2",
                                                   f"block{(generator.arch.n_blocks - 1) // 2}"]

    def embed(self, x: torch.Tensor) -> Embedding:
        return [x] + [_normalise_channels(f) for f in self.generator.features(x, self.layers)]

    def distance(self, ex: Embedding, ey: Embedding) -> torch.Tensor:
        total = self.pixel_weight * (ex[0] - ey[0]).abs().flatten(1).mean(dim=1)
        for a, b in zip(ex[1:], ey[1:]):
            total = total + (a - b).pow(2).sum(dim=1).flatten(1).mean(dim=1)
        return total


class LpipsMetric(PerceptualMetric):
    """LPIPS v0.1 (lpips package) with the torchvision backbone loaded from a local file."""

    name = "lpips"

    def __init__(self, net: str = "alex", backbone_file: Optional[Path] = None) -> None:
        super().__init__()
        path = Path(backbone_file) if backbone_file is not None else lpips_backbone_path(net)
        check_lpips_weights(net, path)  # before importing lpips/torchvision: fail fast
        import lpips

        with warnings.catch_warnings():
            # pnet_rand builds the backbone without torchvision's downloader;
            # the ImageNet weights are copied in below from the checked file.
            warnings.simplefilter("ignore")
            self.model = lpips.LPIPS(net=net, pnet_rand=True, verbose=False).eval()
        _load_backbone(self.model.net, safe_torch_load(path), path)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.name = f"lpips-{net}"

    def embed(self, x: torch.Tensor) -> Embedding:
        import lpips

        from .metrics import gray_to_rgb

        # 1-channel (grayscale) images as the gray RGB images the ImageNet backbone was trained on
        feats = self.model.net(self.model.scaling_layer(gray_to_rgb(x)))
        return [lpips.normalize_tensor(f) for f in feats]

    def distance(self, ex: Embedding, ey: Embedding) -> torch.Tensor:
        total = torch.zeros(ex[0].shape[0], dtype=ex[0].dtype, device=ex[0].device)
        for lin, a, b in zip(self.model.lins, ex, ey):
            total = total + lin((a - b).pow(2)).flatten(1).mean(dim=1)
        return total


def lpips_backbone_path(net: str) -> Path:
    """Where torch's hub cache keeps the ImageNet backbone for ``net`` ('alex' or 'vgg')."""
    if net not in LPIPS_BACKBONES:
        raise ValueError(f"lpips backbone {net!r} is not supported; choose one of {sorted(LPIPS_BACKBONES)}")
    return Path(torch.hub.get_dir()) / "checkpoints" / LPIPS_BACKBONES[net][0]


def check_lpips_weights(net: str, path: Optional[Path] = None) -> Path:
    """Raise :class:`PerceptualWeightsError` unless the backbone file for ``net`` is present."""
    path = Path(path) if path is not None else lpips_backbone_path(net)
    if not path.is_file():
        filename, url = LPIPS_BACKBONES[net]
        raise PerceptualWeightsError(
            f"the lpips metric (net={net!r}) needs the ImageNet backbone weights {path}, which are missing. "
            f"Download {url} on a machine with internet and copy it to {path} "
            f"(the folder is $TORCH_HOME/hub/checkpoints, TORCH_HOME defaults to ~/.cache/torch). "
            "Or choose an offline metric: search.perceptual=discriminator (needs the teacher's "
            "discriminators), search.perceptual=teacher-features or search.perceptual=l1."
        )
    return path


def _load_backbone(net: nn.Module, state_dict: Dict[str, torch.Tensor], path: Path) -> None:
    # lpips's backbone keeps torchvision's ``features`` layers under their
    # original indices, split into slices: features.{i} -> slice{k}.{i}.
    targets = {}
    for slice_name, sl in net.named_children():
        for idx, layer in sl.named_children():
            for pname, _ in layer.named_parameters(recurse=False):
                targets[f"features.{idx}.{pname}"] = (layer, pname)
    missing = sorted(k for k in targets if k not in state_dict)
    if missing:
        raise PerceptualWeightsError(
            f"{path} does not hold the expected backbone (missing {missing[:3]}...); "
            "re-download it (see coevo.evaluation.perceptual.LPIPS_BACKBONES)"
        )
    with torch.no_grad():
        for key, (layer, pname) in targets.items():
            param = getattr(layer, pname)
            if param.shape != state_dict[key].shape:
                raise PerceptualWeightsError(
                    f"{path}: {key} has shape {tuple(state_dict[key].shape)}, expected {tuple(param.shape)}; "
                    "wrong backbone file for this lpips net"
                )
            param.copy_(state_dict[key])


# "auto" is no metric: resolve_perceptual turns it into one of these.
PERCEPTUAL_METRICS: Registry[Callable[..., PerceptualMetric]] = Registry("perceptual metric")


def register_metric(name: str):
    """Decorator: ``factory(discriminator=, lpips_net=, feature_generator=)`` becomes metric ``name``."""
    return PERCEPTUAL_METRICS.register(name)


# Factories take the keyword arguments of build_perceptual and use the ones they need.
@register_metric("l1")
def _make_l1(discriminator=None, lpips_net="alex", feature_generator=None) -> PerceptualMetric:
    return L1Metric()


@register_metric("discriminator")
def _make_discriminator(discriminator=None, lpips_net="alex", feature_generator=None) -> PerceptualMetric:
    if discriminator is None:
        raise ValueError(
            "the 'discriminator' perceptual metric needs the teacher's discriminator of the output domain"
        )
    return DiscriminatorMetric(discriminator)


@register_metric("lpips")
def _make_lpips(discriminator=None, lpips_net="alex", feature_generator=None) -> PerceptualMetric:
    return LpipsMetric(lpips_net)


@register_metric("teacher-features")
def _make_teacher_features(discriminator=None, lpips_net="alex", feature_generator=None) -> PerceptualMetric:
    if feature_generator is None:
        raise ValueError(
            "the 'teacher-features' perceptual metric needs the teacher generator whose input domain "
            "the images are in (G_B for images of domain B)"
        )
    return TeacherFeatureMetric(feature_generator)


def available_metrics() -> Sequence[str]:
    return sorted(PERCEPTUAL_METRICS)


def resolve_perceptual(name: str, has_discriminators: bool, lpips_net: str = "alex") -> str:
    """The metric a search uses for ``search.perceptual=name``: ``auto`` becomes ``discriminator``
    when the teacher has both discriminators, else ``lpips`` when its backbone file is present,
    else ``teacher-features``. Other names are returned as they are, after checking that
    ``discriminator`` has discriminators to use (:class:`~coevo.config.ConfigError` if not)."""
    if name != "auto" and name not in PERCEPTUAL_METRICS:
        raise ConfigError(PERCEPTUAL_METRICS.unknown_message(name, extra=("auto",)))
    if name == "auto":
        if has_discriminators:
            return "discriminator"
        try:
            check_lpips_weights(lpips_net)
            return "lpips"
        except PerceptualWeightsError:
            return "teacher-features"
    if name == "discriminator" and not has_discriminators:
        raise ConfigError(
            "search.perceptual=discriminator needs the teacher's discriminators (D_A and D_B), and this "
            "teacher has only its generators; choose search.perceptual=auto, lpips, teacher-features or l1"
        )
    return name


def build_perceptual(name: str, discriminator: Optional[NLayerDiscriminator] = None,
                     lpips_net: str = "alex", device: str | torch.device = "cpu",
                     feature_generator: Optional[ResnetGenerator] = None) -> PerceptualMetric:
    """Build a metric by name ('discriminator', 'lpips', 'teacher-features', 'l1'); see the module docstring.

    ``discriminator``: the teacher discriminator of the images' domain (needed by
    'discriminator'). ``feature_generator``: the teacher generator whose input domain
    the images are in (needed by 'teacher-features'). Raises :class:`PerceptualWeightsError`
    when 'lpips' lacks its backbone file.
    """
    metric = PERCEPTUAL_METRICS.lookup(name)(discriminator=discriminator, lpips_net=lpips_net,
                                      feature_generator=feature_generator)
    log.debug("perceptual metric %s on %s", metric.name, device)
    return metric.to(device).eval()


__all__ = [
    "PerceptualMetric", "L1Metric", "DiscriminatorMetric", "LpipsMetric", "TeacherFeatureMetric",
    "PerceptualWeightsError", "build_perceptual", "resolve_perceptual", "available_metrics",
    "register_metric", "check_lpips_weights",
    "lpips_backbone_path", "LPIPS_BACKBONES",
]
