"""The new user's path: data you give is data you use, recorded, never written into, checked on resume."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from coevo.cli import main
from coevo.config import load_config
from coevo.data import DataError, data_record, ensure_data_root
from coevo.pipeline import STAGES, Pipeline

from test_pipeline import TINY, tiny_config

REPO = Path(__file__).resolve().parents[1]


def make_photos(root: Path, n: int = 6, size: int = 36) -> Path:
    """Unpaired "photos" unlike the built-in scenes: smooth colour gradients with a random tint, 36 px."""
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for split in ("trainA", "trainB", "testA", "testB"):
        (root / split).mkdir(parents=True)
        for i in range(n):
            tint = rng.uniform(0.2, 1.0, size=3)
            img = np.stack([yy * tint[0], xx * tint[1], (1 - yy) * tint[2]], axis=-1)
            Image.fromarray((img * 255).astype(np.uint8)).save(root / split / f"photo_{i}.jpg", quality=95)
    return root


def snapshot(root: Path) -> dict:
    """Every file under ``root`` with its SHA-256: to prove a folder was not touched."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def cli_args(photos: Path, out: Path, *extra: str) -> list:
    sets = [a for kv in TINY + ["search.generations=1"] for a in ("--set", kv)]
    return ["compress", "--config", str(REPO / "configs" / "demo.yaml"), "--out", str(out), *sets, *extra]


@pytest.fixture(scope="module")
def user_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("user")
    photos = make_photos(base / "my photos")
    before = snapshot(photos)
    out = base / "run"
    assert main(cli_args(photos, out, "--set", f"data.root={photos}")) == 0
    return photos, before, out


def test_compress_trains_on_the_given_photos(user_run):
    photos, before, out = user_run
    record = json.loads((out / "data" / "stage.json").read_text())["data"]
    assert record["root"] == str(photos.resolve())
    assert record["builtin"] is False
    assert record["counts"] == {"trainA": 6, "trainB": 6, "testA": 6, "testB": 6}
    assert record["fingerprint_all"] == data_record(photos)["fingerprint_all"]
    # every stage read these photos: the resolved configs point at them, the search recorded them
    for stage in ("search", "teacher", "finetune"):
        assert load_config(out / stage / "config.yaml").data.root == str(photos.resolve()), stage
    assert json.loads((out / "search" / "data.json").read_text())["fingerprint_all"] == record["fingerprint_all"]
    assert not (out / "data" / "trainA").exists(), "the built-in set must not be built when photos are given"
    for stage in STAGES[1:]:
        stage_record = json.loads((out / stage / "stage.json").read_text())
        assert stage_record["data_fingerprint"] == record["fingerprint_all"], stage


def test_the_photos_are_never_written_into(user_run):
    photos, before, _ = user_run
    assert snapshot(photos) == before


def test_data_flag_is_the_same_as_data_root(user_run, tmp_path, capsys):
    photos, _, _ = user_run
    out = tmp_path / "run"
    cfg_args = ["train", "--config", str(REPO / "configs" / "demo.yaml"), "--out", str(out), "--data", str(photos),
                "--set", "train.epochs=1", "--set", "train.epochs_decay=0", "--set", "train.max_steps_per_epoch=2",
                "--set", "model.ngf=4", "--set", "model.n_blocks=1", "--set", "model.ndf=4",
                "--set", "data.load_size=32", "--set", "data.crop_size=32"]
    assert main(cfg_args) == 0
    assert json.loads((out / "data.json").read_text())["root"] == str(photos.resolve())
    assert not (out / "data").exists()


def test_resume_on_changed_photos_is_refused(user_run, tmp_path, capsys):
    import shutil

    photos, _, src = user_run
    copy = tmp_path / "photos"
    shutil.copytree(photos, copy)
    out = tmp_path / "run"
    shutil.copytree(src, out)
    shutil.rmtree(out / "bench")  # an unfinished stage, so that the resume has work to do
    (copy / "trainB" / "photo_0.jpg").write_bytes((copy / "trainB" / "photo_1.jpg").read_bytes())
    capsys.readouterr()
    assert main(cli_args(copy, out, "--data", str(copy), "--resume")) == 2
    err = capsys.readouterr().err
    assert "trainB: same count (6), different content" in err and "Traceback" not in err
    assert err.count("\n") == 1
    # the original photos (moved) resume fine
    assert main(cli_args(photos, out, "--data", str(photos), "--resume")) == 0


def test_builtin_set_is_built_in_the_run_folder_without_data_root(tmp_path):
    cfg = tiny_config("search.generations=1")
    assert cfg.data.root is None
    pipe = Pipeline(cfg, tmp_path / "run")
    assert pipe.data_root() == (tmp_path / "run" / "data").resolve()
    assert cfg.data.root is None  # the caller's config is never changed


def test_a_folder_with_other_files_is_never_written_into(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("precious")
    cfg = load_config(None, [f"data.root={folder}", "data.synthetic=true"])
    with pytest.raises(DataError, match="never writes into a folder of yours"):
        ensure_data_root(cfg.data)
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]


def test_an_empty_or_missing_folder_gets_the_builtin_set(tmp_path):
    for folder in (tmp_path / "missing", tmp_path / "empty"):
        if folder.name == "empty":
            folder.mkdir()
        cfg = load_config(None, [f"data.root={folder}", "data.synthetic_n_train=2", "data.synthetic_n_test=1",
                                 "data.load_size=32", "data.crop_size=32"])
        ensure_data_root(cfg.data)
        assert data_record(folder)["builtin"] is True


def test_an_empty_split_is_a_clear_error(tmp_path, capsys):
    photos = make_photos(tmp_path / "p", n=2)
    for f in (photos / "testB").iterdir():
        f.unlink()
    with pytest.raises(DataError, match="testB"):
        data_record(photos)


def test_resume_may_change_settings_of_unfinished_stages_only(user_run, tmp_path, capsys):
    import shutil

    photos, _, src = user_run
    out = tmp_path / "run"
    shutil.copytree(src, out)
    for stage in ("export", "bench"):
        shutil.rmtree(out / stage)
    capsys.readouterr()
    # search has finished: changing it is refused, naming the key and the stage
    assert main(cli_args(photos, out, "--resume", "--set", "search.population=7")) == 2
    err = capsys.readouterr().err
    assert "search.population" in err and "stage search has finished" in err
    # export has not: a new check size is fine
    assert main(cli_args(photos, out, "--resume", "--set", "export.check_size=44")) == 0
    assert load_config(out / "config.yaml").export.check_size == 44
    assert [s for s in STAGES if (out / s / "stage.json").is_file()] == list(STAGES)


def test_demo_on_your_photos_reports_them(user_run, tmp_path, capsys):
    import shutil

    photos, _, src = user_run
    out = tmp_path / "run"
    shutil.copytree(src, out)
    args = cli_args(photos, out, "--data", str(photos), "--resume")
    args[0] = "demo"
    assert main(args) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["data"]["root"] == str(photos.resolve()) and report["data"]["builtin"] is False
    assert f"Data: {photos.resolve()} (your images" in (out / "report.md").read_text()
    for entry in report["directions"].values():  # no ground truth in your photos: no PSNR check
        assert entry["psnr_delta_db"] is None and not any("psnr" in k for k in entry["checks"])


def test_a_failed_start_leaves_nothing_that_blocks_a_rerun(tmp_path, capsys):
    photos = make_photos(tmp_path / "p", n=2)
    for f in (photos / "trainA").iterdir():
        f.unlink()
    out = tmp_path / "run"
    assert main(cli_args(photos, out, "--data", str(photos))) == 2
    assert "trainA" in capsys.readouterr().err
    assert not out.exists()
    make_photos(tmp_path / "q", n=2)
    assert main(cli_args(tmp_path / "q", out, "--data", str(tmp_path / "q"), "--set", "search.generations=0")) == 0
