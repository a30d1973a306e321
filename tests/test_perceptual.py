"""Perceptual metrics: per-image distances, the embed/distance split, and the LPIPS weights check."""
from __future__ import annotations

import pytest
import torch

from coevo.config import ConfigError
from coevo.models import DiscriminatorArch, NLayerDiscriminator
from coevo.models.io import CheckpointError
from coevo.evaluation.perceptual import (
    LPIPS_BACKBONES,
    PerceptualWeightsError,
    available_metrics,
    build_perceptual,
)


@pytest.fixture
def images():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 32, 32, generator=g) * 2 - 1
    y = torch.rand(3, 3, 32, 32, generator=g) * 2 - 1
    return x, y


@pytest.fixture
def disc():
    torch.manual_seed(0)
    return NLayerDiscriminator(DiscriminatorArch(ndf=8, n_layers=3)).eval()


def test_registry_lists_the_three_metrics():
    assert {"discriminator", "lpips", "l1"} <= set(available_metrics())
    with pytest.raises(ConfigError, match="unknown perceptual metric"):
        build_perceptual("ssim")


def test_l1_is_the_mean_absolute_difference(images):
    x, y = images
    d = build_perceptual("l1")(x, y)
    assert d.shape == (3,)
    torch.testing.assert_close(d, (x - y).abs().mean(dim=(1, 2, 3)))


def test_discriminator_metric_per_image_zero_on_identical(images, disc):
    x, y = images
    metric = build_perceptual("discriminator", discriminator=disc)
    assert metric.name == "discriminator"
    d = metric(x, y)
    assert d.shape == (3,) and (d > 0).all()
    assert torch.allclose(metric(x, x), torch.zeros(3), atol=1e-6)
    # Per image: one image's distance does not depend on the others in the batch.
    torch.testing.assert_close(metric(x[:1], y[:1]), d[:1], rtol=1e-5, atol=1e-6)
    # Closer images are closer.
    assert (metric(x, x + 0.01 * (y - x)) < d).all()


def test_embed_once_then_compare_equals_direct_call(images, disc):
    x, y = images
    metric = build_perceptual("discriminator", discriminator=disc)
    with torch.no_grad():
        target = metric.embed(y)
        torch.testing.assert_close(metric.distance(metric.embed(x), target), metric(x, y))


def test_discriminator_metric_needs_a_discriminator():
    with pytest.raises(ValueError, match="discriminator"):
        build_perceptual("discriminator")


def test_missing_lpips_weights_name_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    expected = tmp_path / "hub" / "checkpoints" / LPIPS_BACKBONES["alex"][0]
    with pytest.raises(PerceptualWeightsError) as info:
        build_perceptual("lpips", lpips_net="alex")
    msg = str(info.value)
    assert str(expected) in msg and "alexnet-owt-7be5be79.pth" in msg
    assert "download.pytorch.org" in msg and "search.perceptual=discriminator" in msg
    assert isinstance(info.value, CheckpointError)  # the CLI prints it as one clean line
    with pytest.raises(PerceptualWeightsError, match="vgg16-397923af.pth"):
        build_perceptual("lpips", lpips_net="vgg")


@pytest.mark.filterwarnings("ignore:.*(pretrained|weight enum).*:UserWarning")
def test_lpips_matches_the_lpips_package_with_a_local_backbone(tmp_path, monkeypatch, images):
    lpips = pytest.importorskip("lpips")
    import torchvision

    # A random AlexNet stands in for the ImageNet file: the wiring is what is tested.
    torch.manual_seed(0)
    features = torchvision.models.alexnet().features
    path = tmp_path / "hub" / "checkpoints" / LPIPS_BACKBONES["alex"][0]
    path.parent.mkdir(parents=True)
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, path)
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))

    metric = build_perceptual("lpips", lpips_net="alex")
    assert metric.name == "lpips-alex"
    ref = lpips.LPIPS(net="alex", pnet_rand=True, verbose=False).eval()
    for i, layer in enumerate(features):
        for name, p in layer.named_parameters(recurse=False):
            slice_ = next(s for s in ref.net.children() if str(i) in dict(s.named_children()))
            getattr(dict(slice_.named_children())[str(i)], name).data.copy_(p.data)
    x, y = images
    with torch.no_grad():
        torch.testing.assert_close(metric(x, y), ref(x, y).flatten(), rtol=1e-4, atol=1e-6)
