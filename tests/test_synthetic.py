"""The built-in synthetic task: determinism, layout, ground truth, idempotence, CLI."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from coevo.data import DataError, list_images, make_synthetic_dataset, render_scene
from coevo.data.synthetic import OUTLINE_B, RAMPS_A, RAMPS_B

SMALL = dict(size=32, n_train=4, n_test=3)
FOLDERS = ("trainA", "trainB", "testA", "testB", "testA_gt_B", "testB_gt_A")


def _files(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    return make_synthetic_dataset(tmp_path_factory.mktemp("s") / "synth", seed=0, **SMALL)


def test_layout_and_meta(synth):
    assert sorted(p.name for p in synth.iterdir()) == sorted(FOLDERS + ("meta.json",))
    for d in FOLDERS:
        names = [p.name for p in list_images(synth / d)]
        assert names == [f"{i:04d}.png" for i in range(4 if d.startswith("train") else 3)]
    with Image.open(synth / "trainA" / "0000.png") as im:
        assert im.size == (32, 32) and im.mode == "RGB"
    meta = json.loads((synth / "meta.json").read_text())
    assert {k: meta[k] for k in ("seed", "size", "n_train", "n_test")} == {"seed": 0, "size": 32, "n_train": 4, "n_test": 3}
    assert meta["version"] >= 1 and meta["counts"]["testA_gt_B"] == 3 and meta["description"]
    assert not list(synth.parent.glob(".*partial"))  # temporary folder cleaned up


def test_byte_identical_and_seed_dependent(synth, tmp_path):
    again = make_synthetic_dataset(tmp_path / "again", seed=0, **SMALL)
    assert _files(again) == _files(synth)
    other = make_synthetic_dataset(tmp_path / "other", seed=1, **SMALL)
    a, b = _files(synth), _files(other)
    assert all(a[k] != b[k] for k in a if k.endswith(".png"))


def test_ground_truth_matches_scenes(synth):
    for split, gt, src, dst in (("testA", "testA_gt_B", "A", "B"), ("testB", "testB_gt_A", "B", "A")):
        for i in range(3):
            scene = render_scene(0, split, i, size=32)
            name = f"{i:04d}.png"
            assert np.array_equal(np.asarray(Image.open(synth / split / name)), scene[src])
            assert np.array_equal(np.asarray(Image.open(synth / gt / name)), scene[dst])


def test_train_domains_unpaired():
    a = render_scene(0, "trainA", 0, size=32)
    b = render_scene(0, "trainB", 0, size=32)
    # trainB image 0 is not the B rendering of trainA's scene 0.
    assert not np.array_equal(a["B"], b["B"])


def _near(img: np.ndarray, stops) -> np.ndarray:
    """Pixels whose colour lies within rounding distance of the piecewise-linear colour ramp ``stops``."""
    x = img.reshape(-1, 3).astype(float)
    best = np.full(len(x), np.inf)
    colours = [np.array(c, dtype=float) for _, c in stops]
    for p0, p1 in zip(colours[:-1], colours[1:]):
        d = p1 - p0
        t = np.clip((x - p0) @ d / (d @ d), 0, 1)
        best = np.minimum(best, np.linalg.norm(x - p0 - t[:, None] * d, axis=1))
    return (best <= 1.5).reshape(img.shape[:2])


def _curve(stops) -> np.ndarray:
    L = np.linspace(0, 1, 256)
    return np.stack([np.interp(L, [s for s, _ in stops], [c[k] for _, c in stops]) for k in range(3)], -1)


def test_classes_are_identifiable_from_colour():
    """The translation is well-posed only if each domain's classes never share a colour."""
    for ramps in ([RAMPS_A[k] for k in range(3)], [RAMPS_B[k] for k in range(3)] + [OUTLINE_B]):
        curves = [_curve(r) for r in ramps]
        for c in curves:
            assert np.all(np.diff(c, axis=0) >= 0)  # monotone: brightness is recoverable
        for i in range(len(curves)):
            for j in range(i + 1, len(curves)):
                gap = np.linalg.norm(curves[i][:, None] - curves[j][None], axis=-1).min()
                assert gap > 25


def test_renderings_differ_and_follow_their_ramps():
    for i in range(6):
        s = render_scene(0, "testA", i, size=64)
        a, b = s["A"], s["B"]
        assert np.abs(a.astype(int) - b.astype(int)).mean() > 40
        obj_a = _near(a, RAMPS_A[2])
        outline = _near(b, OUTLINE_B)
        # Every A pixel is one of A's three classes; every B pixel one of B's classes or the outline.
        assert np.all(_near(a, RAMPS_A[0]) | _near(a, RAMPS_A[1]) | obj_a)
        assert np.all(_near(b, RAMPS_B[0]) | _near(b, RAMPS_B[1]) | _near(b, RAMPS_B[2]) | outline)
        assert obj_a.sum() > 20 and outline.sum() > 10
        assert not np.any(outline & obj_a)  # the outline lies outside the objects
        # ...and hugs them: every outline pixel is within 2 px of an object pixel.
        ys, xs = np.nonzero(outline)
        oy, ox = np.nonzero(obj_a)
        dist = np.sqrt((ys[:, None] - oy[None]) ** 2 + (xs[:, None] - ox[None]) ** 2).min(1)
        assert dist.max() <= 2.5


def test_reuse_mismatch_and_force(synth, tmp_path, caplog):
    before = (synth / "meta.json").stat().st_mtime_ns
    assert make_synthetic_dataset(synth, seed=0, **SMALL) == synth  # same parameters: reused
    assert (synth / "meta.json").stat().st_mtime_ns == before

    out = make_synthetic_dataset(tmp_path / "s", seed=0, **SMALL)
    with pytest.raises(DataError, match="--force"):
        make_synthetic_dataset(out, seed=2, **SMALL)
    (out / "notes.txt").write_text("keep me")
    make_synthetic_dataset(out, seed=2, force=True, **SMALL)
    assert json.loads((out / "meta.json").read_text())["seed"] == 2
    assert (out / "notes.txt").read_text() == "keep me"

    other = tmp_path / "mine"
    other.mkdir()
    (other / "photo.jpg").write_bytes(b"x")
    with pytest.raises(DataError, match="other files"):
        make_synthetic_dataset(other, **SMALL)


def test_parameter_checks(tmp_path):
    with pytest.raises(DataError, match="multiple of 4"):
        make_synthetic_dataset(tmp_path / "x", size=30)
    with pytest.raises(DataError, match="n_train"):
        make_synthetic_dataset(tmp_path / "x", n_train=0)


def test_cli_synthetic(tmp_path, capsys):
    from coevo.cli import main

    out = tmp_path / "cli"
    args = ["data", "synthetic", "--out", str(out), "--size", "32", "--n-train", "3", "--n-test", "2", "--seed", "5"]
    assert main(args) == 0
    assert "ready" in capsys.readouterr().out
    assert len(list((out / "testB_gt_A").iterdir())) == 2
    assert main(args) == 0  # idempotent
    assert main(args[:-1] + ["6"]) == 2  # other seed without --force: clean error
    assert "--force" in capsys.readouterr().err
    assert main(args[:-1] + ["6", "--force"]) == 0
    assert main(["data", "check", str(out)]) == 0


def test_dense_task_is_harder_and_keeps_exact_ground_truth(tmp_path):
    """The second built-in task: more objects, finer stripes and texture; the snow task's files are unchanged."""
    from coevo.data.synthetic import TASKS, _scene

    snow, dense = render_scene(0, "testA", 3, 64), render_scene(0, "testA", 3, 64, task="dense")
    assert not np.array_equal(snow["A"], dense["A"])
    assert np.array_equal(dense["B"], render_scene(0, "testA", 3, 64, task="dense")["B"])  # deterministic

    def detail(img):  # mean absolute difference between neighbouring pixels: texture and edges
        x = img.astype(np.float64)
        return np.abs(np.diff(x, axis=0)).mean() + np.abs(np.diff(x, axis=1)).mean()

    n = 12
    assert np.mean([detail(render_scene(0, "trainA", i, 64, "dense")["A"]) for i in range(n)]) > \
        1.2 * np.mean([detail(render_scene(0, "trainA", i, 64)["A"]) for i in range(n)])
    objects = [len(np.unique(_scene(np.random.default_rng(i), 64, TASKS["dense"])[0])) for i in range(3)]
    assert all(k == 3 for k in objects)  # sky, field and objects in every scene
    out = make_synthetic_dataset(tmp_path / "d", size=32, n_train=2, n_test=2, task="dense")
    meta = json.loads((out / "meta.json").read_text())
    assert meta["task"] == "dense"
    for name in ("0000.png", "0001.png"):  # the ground truth is the other domain's rendering of the same scene
        truth = render_scene(0, "testA", int(name[:4]), 32, "dense")["B"]
        assert np.array_equal(np.asarray(Image.open(out / "testA_gt_B" / name)), truth)
    with pytest.raises(DataError, match="unknown built-in task"):
        make_synthetic_dataset(tmp_path / "x", size=32, n_train=1, n_test=1, task="city")
