"""PSNR, SSIM and FID/KID: known values, invariants, and the offline Inception rules."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from coevo.evaluation.metrics import (
    INCEPTION_FILE,
    PSNR_CAP_DB,
    InceptionWeightsError,
    compute_fid_kid,
    find_inception_weights,
    inception_extractor,
    psnr,
    quantize_uint8,
    ssim,
)
from coevo.models.io import CheckpointError


def _from_uint8(a: torch.Tensor) -> torch.Tensor:
    return a.float() / 127.5 - 1.0


def _images(n=4, size=32, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g) * 2 - 1


class TinyFeatures(nn.Module):
    """A random conv net standing in for Inception: uint8 NCHW -> N x 8."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g) * 0.3)
            self.conv.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.dtype == torch.uint8, "feature extractors receive uint8 images"
        return torch.relu(self.conv(x.float() / 127.5 - 1)).mean(dim=(2, 3))


# ----------------------------------------------------------------------------- PSNR
def test_quantize_uint8_round_trips_8bit_values():
    a = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16).expand(1, 3, 16, 16)
    assert torch.equal(quantize_uint8(_from_uint8(a)), a)


def test_psnr_identical_images_is_capped_or_inf():
    x = _images()
    assert torch.all(psnr(x, x) == PSNR_CAP_DB)
    assert torch.all(torch.isinf(psnr(x, x, max_db=None)))


def test_psnr_known_value():
    a = torch.full((2, 3, 16, 16), 100, dtype=torch.uint8)
    b = a.clone()
    b[0] += 10                       # every pixel off by 10 levels: MSE 100
    b[1, :, :8] += 10                # half the pixels: MSE 50
    got = psnr(_from_uint8(b), _from_uint8(a))
    want = torch.tensor([10 * math.log10(255 ** 2 / 100), 10 * math.log10(255 ** 2 / 50)])
    assert torch.allclose(got, want, atol=1e-4)
    assert got.shape == (2,)


def test_psnr_scores_quantised_images():
    x = _images(1)
    below_half_level = x + 0.3 / 127.5
    assert psnr(below_half_level.clamp(-1, 1), x).item() > 50  # mostly the same uint8 values


# ----------------------------------------------------------------------------- SSIM
def _reference_ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Wang et al. 2004 on uint8 values: Gaussian 11x11 window, sigma 1.5, valid positions only."""
    x = quantize_uint8(x).double()
    y = quantize_uint8(y).double()
    c = x.shape[1]
    coords = torch.arange(11, dtype=torch.float64) - 5
    g = torch.exp(-coords ** 2 / (2 * 1.5 ** 2))
    g = g / g.sum()
    w = (g[:, None] * g[None, :]).expand(c, 1, 11, 11)

    def blur(t):
        return F.conv2d(t, w, groups=c)

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mx, my = blur(x), blur(y)
    sxx, syy, sxy = blur(x * x) - mx ** 2, blur(y * y) - my ** 2, blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (sxx + syy + c2))
    return s.flatten(1).mean(dim=1)


def test_ssim_identical_is_one():
    x = _images()
    assert torch.allclose(ssim(x, x), torch.ones(4), atol=1e-6)


def test_ssim_decreases_with_noise():
    x = _images(2, 32) * 0.5
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(x.shape, generator=g)
    scores = [ssim((x + s * noise).clamp(-1, 1), x).mean().item() for s in (0.02, 0.1, 0.4)]
    assert 1.0 > scores[0] > scores[1] > scores[2]


def test_ssim_matches_reference_implementation():
    x = _images(3, 40, seed=2)
    y = (x * 0.7 + _images(3, 40, seed=3) * 0.3).clamp(-1, 1)
    assert torch.allclose(ssim(x, y).double(), _reference_ssim(x, y), atol=1e-5)


def test_metrics_reject_mismatched_shapes():
    with pytest.raises(ValueError):
        psnr(_images(2, 32), _images(2, 16))
    with pytest.raises(ValueError):
        ssim(_images(1, 8), _images(1, 8))


# ----------------------------------------------------------------------------- FID / KID
def test_fid_kid_identical_sets_are_zero():
    x = _images(16, 16)
    r = compute_fid_kid(x, x, feature_extractor=TinyFeatures(), kid_subsets=20)
    assert abs(r.fid) < 1e-4
    # The unbiased MMD estimator of a set against itself is slightly negative, not 0.
    assert -1e-3 < r.kid <= 1e-9
    assert r.n_real == r.n_fake == 16 and r.kid_subset_size == 16
    assert r.features.startswith("custom")


def test_fid_kid_grow_with_a_shift():
    real = _images(16, 16, seed=0) * 0.5
    close = (_images(16, 16, seed=1) * 0.5).clamp(-1, 1)
    far = (_images(16, 16, seed=1) * 0.5 + 0.5).clamp(-1, 1)
    ext = TinyFeatures()
    r_close = compute_fid_kid(real, close, feature_extractor=ext, kid_subsets=20)
    r_far = compute_fid_kid(real, far, feature_extractor=ext, kid_subsets=20)
    assert r_far.fid > r_close.fid > 0
    assert r_far.kid > r_close.kid


def test_fid_accepts_batches_of_different_sizes():
    real = [_images(4, 16, seed=0), _images(4, 24, seed=1)]
    fake = iter([_images(6, 16, seed=2)])
    r = compute_fid_kid(real, fake, feature_extractor=TinyFeatures(), kid_subsets=5)
    assert r.n_real == 8 and r.n_fake == 6 and math.isfinite(r.fid)


def test_kid_subsets_are_seeded():
    real, fake = _images(12, 16, seed=0), _images(12, 16, seed=1)
    a = compute_fid_kid(real, fake, feature_extractor=TinyFeatures(), kid_subset_size=5, kid_subsets=10)
    b = compute_fid_kid(real, fake, feature_extractor=TinyFeatures(), kid_subset_size=5, kid_subsets=10)
    assert a.kid == b.kid and a.kid_subset_size == 5


# ----------------------------------------------------------------------------- offline Inception
@pytest.fixture
def no_downloads(monkeypatch, tmp_path):
    """An empty torch hub and a network that fails the test if anything tries to download."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))

    def refuse(*args, **kwargs):
        raise AssertionError("tried to download")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    return tmp_path / "torch_home" / "hub" / "checkpoints"


def test_missing_inception_weights_name_the_file(no_downloads):
    x = _images(4, 16)
    with pytest.raises(InceptionWeightsError) as e:
        compute_fid_kid(x, x)
    msg = str(e.value)
    assert INCEPTION_FILE in msg and str(no_downloads) in msg and "--inception-weights" in msg
    assert isinstance(e.value, CheckpointError)


def test_explicit_inception_path_missing(tmp_path, no_downloads):
    with pytest.raises(InceptionWeightsError, match="not found"):
        compute_fid_kid(_images(2, 16), _images(2, 16), inception_weights=tmp_path / "nope.pth")


def test_inception_weights_found_in_hub_cache(no_downloads):
    no_downloads.mkdir(parents=True)
    (no_downloads / INCEPTION_FILE).write_bytes(b"")
    assert find_inception_weights() == no_downloads / INCEPTION_FILE


def test_wrong_inception_file_is_refused(tmp_path, no_downloads):
    bad = tmp_path / "bad.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, bad)
    with pytest.raises(InceptionWeightsError, match="not the FID Inception"):
        compute_fid_kid(_images(2, 16), _images(2, 16), inception_weights=bad)


@pytest.mark.slow
def test_inception_path_offline(tmp_path, monkeypatch):
    """The real FID network wiring (uint8 in, 2048-d out), with random weights from a local file."""
    pytest.importorskip("torch_fidelity")
    from unittest import mock

    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    # Shapes from a meta-device build (no weights are read or initialised), random values.
    torch.save({}, tmp_path / "empty.pth")
    with torch.device("meta"), mock.patch.object(FeatureExtractorInceptionV3, "load_state_dict",
                                                 lambda self, sd, strict=True: None):
        shapes = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                             feature_extractor_weights_path=str(tmp_path / "empty.pth"))
    shapes = shapes.state_dict()
    g = torch.Generator().manual_seed(0)
    sd = {k: torch.ones(v.shape) if k.endswith("running_var") else
          torch.zeros(v.shape, dtype=v.dtype) if k.endswith("num_batches_tracked") else
          torch.randn(v.shape, generator=g) * 0.05 for k, v in shapes.items()}
    hub = tmp_path / "torch_home" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    torch.save(sd, hub / INCEPTION_FILE)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    net = inception_extractor()  # found in $TORCH_HOME/hub/checkpoints, nothing downloaded
    with torch.inference_mode():
        feats = net(torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8, generator=g))
    assert feats.shape == (1, 2048)
