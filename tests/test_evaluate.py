"""evaluate_generator / translation_quality on tiny generators and tiny folders, and `coevo evaluate`."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from coevo.cli import main
from coevo.data import list_images, load_image, to_image, to_tensor
from coevo.evaluation.evaluate import evaluate_generator, translation_quality
from coevo.evaluation.metrics import INCEPTION_FILE, InceptionWeightsError
from coevo.models import (
    DiscriminatorArch,
    NLayerDiscriminator,
    ResnetGenerator,
    save_discriminator,
    save_generator,
)

from conftest import make_image_folder
from test_metrics import TinyFeatures


def _write_ground_truth(root: Path, model, in_dir="testA", gt_dir="testA_gt_B") -> None:
    """Ground truth = the model's own translation, saved as 8-bit PNGs: PSNR must hit the cap."""
    (root / gt_dir).mkdir()
    for p in list_images(root / in_dir):
        with torch.no_grad():
            y = model(to_tensor(load_image(p)).unsqueeze(0))
        to_image(y).save(root / gt_dir / p.name)


@pytest.fixture
def data_root(tmp_path):
    return make_image_folder(tmp_path / "data", n=3, size=32)


@pytest.fixture
def other_generator(tiny_arch):
    torch.manual_seed(1)
    return ResnetGenerator(tiny_arch).eval()


@pytest.fixture
def tiny_discriminator():
    torch.manual_seed(2)
    return NLayerDiscriminator(DiscriminatorArch(ndf=4, n_layers=2)).eval()


def test_evaluate_with_ground_truth_teacher_and_fid(data_root, tiny_generator, other_generator):
    _write_ground_truth(data_root, tiny_generator)
    r = evaluate_generator(tiny_generator, data_root, "AtoB", teacher=other_generator,
                           feature_extractor=TinyFeatures(), perceptual="l1")
    assert r["n_images"] == 3 and r["images"] == ["000.png", "001.png", "002.png"]
    assert r["psnr"] == pytest.approx(100.0) and r["psnr_per_image"] == [pytest.approx(100.0)] * 3
    assert r["ssim"] == pytest.approx(1.0, abs=1e-6) and len(r["ssim_per_image"]) == 3
    assert r["l1_to_teacher"] > 0 and r["perceptual_to_teacher"] == pytest.approx(r["l1_to_teacher"], rel=1e-5)
    assert r["perceptual"] == "l1"
    assert r["n_real"] == 6 and r["real_folders"] == ["trainB", "testB"]
    assert math.isfinite(r["fid"]) and r["fid"] > 0 and r["kid_subset_size"] == 3
    assert r["arch"]["ngf"] == 4
    json.dumps(r)  # the whole result is plain JSON


def test_psnr_ssim_to_a_different_ground_truth(data_root, tiny_generator, other_generator):
    _write_ground_truth(data_root, other_generator)
    r = translation_quality(tiny_generator, data_root, "AtoB")
    assert 0 < r["psnr"] < 100 and -1 < r["ssim"] < 1
    assert r["l1_to_teacher"] is None and r["perceptual_to_teacher"] is None


def test_fidelity_to_the_teacher(data_root, tiny_generator, other_generator):
    """PSNR and L1 of the output to the teacher's output: capped and zero for the teacher itself,
    per image, and the 8-bit PSNR of the two outputs otherwise."""
    from coevo.evaluation.metrics import psnr

    same = translation_quality(tiny_generator, data_root, "AtoB", teacher=tiny_generator)
    assert same["psnr_to_teacher"] == pytest.approx(100.0) and same["l1_to_teacher"] == 0.0
    r = translation_quality(tiny_generator, data_root, "BtoA", teacher=other_generator)
    assert len(r["psnr_to_teacher_per_image"]) == len(r["l1_to_teacher_per_image"]) == 3
    x = torch.stack([to_tensor(load_image(p)) for p in list_images(data_root / "testB")])
    with torch.no_grad():
        expected = psnr(tiny_generator(x), other_generator(x))
    assert r["psnr_to_teacher_per_image"] == pytest.approx(expected.tolist(), abs=1e-4)
    assert r["psnr_to_teacher"] == pytest.approx(float(expected.mean()), abs=1e-4) and r["l1_to_teacher"] > 0
    alone = translation_quality(tiny_generator, data_root, "AtoB")
    assert alone["psnr_to_teacher"] is None and alone["psnr_to_teacher_per_image"] is None


def test_no_ground_truth_no_fid(data_root, tiny_generator):
    r = evaluate_generator(tiny_generator, data_root, "BtoA", compute_fid=False, size=16)
    assert r["psnr"] is None and r["psnr_per_image"] is None and r["fid"] is None
    assert r["n_images"] == 3 and r["size"] == 16


def test_teacher_equal_to_model_is_at_distance_zero(data_root, tiny_generator, tiny_discriminator):
    r = evaluate_generator(tiny_generator, data_root, "AtoB", teacher=tiny_generator, compute_fid=False,
                           perceptual="discriminator", discriminator=tiny_discriminator)
    assert r["l1_to_teacher"] == 0.0
    assert r["perceptual"] == "discriminator" and r["perceptual_to_teacher"] == pytest.approx(0.0, abs=1e-6)


def test_discriminator_metric_separates_teachers(data_root, tiny_generator, other_generator, tiny_discriminator):
    r = evaluate_generator(tiny_generator, data_root, "AtoB", teacher=other_generator, compute_fid=False,
                           perceptual="discriminator", discriminator=tiny_discriminator)
    assert r["perceptual_to_teacher"] > 0


def test_discriminator_metric_without_discriminator_says_what_to_pass(data_root, tiny_generator):
    with pytest.raises(ValueError, match="D_A"):
        evaluate_generator(tiny_generator, data_root, "AtoB", teacher=tiny_generator, compute_fid=False)


def test_missing_inception_weights_fail_before_translating(data_root, monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))

    class Exploding(torch.nn.Module):
        def forward(self, x):
            raise AssertionError("translated before checking the Inception weights")

    with pytest.raises(InceptionWeightsError, match=INCEPTION_FILE):
        evaluate_generator(Exploding(), data_root, "AtoB")


# ----------------------------------------------------------------------------- CLI
@pytest.fixture
def teacher_dir(tmp_path, tiny_generator, other_generator, tiny_discriminator):
    d = tmp_path / "teacher"
    save_generator(tiny_generator, d / "G_A.pt")
    save_generator(other_generator, d / "G_B.pt")
    save_discriminator(tiny_discriminator, d / "D_A.pt")
    save_discriminator(tiny_discriminator, d / "D_B.pt")
    return d


def test_cli_evaluate_writes_json(data_root, tmp_path, other_generator, teacher_dir, capsys):
    _write_ground_truth(data_root, other_generator)
    model = save_generator(other_generator, tmp_path / "student.pt")
    out = tmp_path / "eval.json"
    rc = main(["evaluate", "--model", str(model), "--data", str(data_root), "--direction", "AtoB",
               "--teacher", str(teacher_dir), "--no-fid", "--out", str(out)])
    assert rc == 0
    r = json.loads(out.read_text())
    assert r["psnr"] == pytest.approx(100.0) and r["fid"] is None
    assert r["perceptual"] == "discriminator" and r["perceptual_to_teacher"] > 0
    assert r["teacher"].endswith("G_A.pt")
    printed = capsys.readouterr().out
    assert "PSNR to ground truth" in printed and "perceptual to teacher (discriminator)" in printed
    assert "PSNR to teacher (dB)" in printed and f"{r['psnr_to_teacher']:.2f}" in printed


def test_cli_evaluate_missing_inception_weights(data_root, tmp_path, tiny_generator, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    model = save_generator(tiny_generator, tmp_path / "g.pt")
    rc = main(["evaluate", "--model", str(model), "--data", str(data_root)])
    assert rc == 2
    err = capsys.readouterr().err
    assert INCEPTION_FILE in err and "--inception-weights" in err and "--no-fid" in err


def test_cli_discriminator_metric_needs_a_discriminator(data_root, tmp_path, tiny_generator, capsys):
    model = save_generator(tiny_generator, tmp_path / "g.pt")
    rc = main(["evaluate", "--model", str(model), "--data", str(data_root), "--teacher", str(model),
               "--perceptual", "discriminator", "--no-fid"])
    assert rc == 2 and "--teacher-d" in capsys.readouterr().err


def test_evaluate_builtin_synthetic_set(tmp_path, tiny_generator):
    from coevo.data import make_synthetic_dataset

    root = make_synthetic_dataset(tmp_path / "syn", size=32, n_train=2, n_test=2, seed=0)
    r = translation_quality(tiny_generator, root, "BtoA")
    assert r["n_images"] == 2 and r["psnr"] is not None and r["ssim"] is not None

