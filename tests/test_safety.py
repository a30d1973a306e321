"""Data safety: --force deletes only coevo's own runs, inputs are never written over, nothing half-done
is left behind, and no file coevo loads can run code. Tiny models, CLI called in-process."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import coevo.evaluation.translate as translate_module
from coevo import save_generator
from coevo.cli import main
from coevo.errors import CoevoError
from coevo.models import DiscriminatorArch, NLayerDiscriminator, save_discriminator
from coevo.core.runs import RUN_MARKER, RunDirError, check_removable, prepare_run_dir


# ----------------------------------------------------------------------------- helpers
def snapshot(root: Path) -> dict:
    """Every file under ``root`` with its bytes."""
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def user_folder(path: Path) -> Path:
    """A folder of someone's own files (one of them in a subfolder)."""
    (path / "sub").mkdir(parents=True)
    (path / "thesis.tex").write_text("years of work")
    (path / "sub" / "photo.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    return path


def write_image(path: Path, size: int = 16, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
    return path


def one_error_line(capsys, command: str) -> str:
    """The CLI's stderr: exactly one line ``coevo <command>: error: ...`` and no traceback."""
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith(f"coevo {command}: error: "), lines[0]
    assert "Traceback" not in captured.err + captured.out
    return lines[0]


@pytest.fixture
def generator_file(tiny_generator, tmp_path) -> Path:
    return save_generator(tiny_generator, tmp_path / "models" / "G_A.pt")


def export_argv(model: Path, out, *extra) -> list:
    return ["export", "--run", str(model), "--out", str(out), "--formats", "safetensors", "--check-size", "8",
            *extra]


# ----------------------------------------------------------------------------- --force
def test_force_refuses_the_current_folder(generator_file, tmp_path, monkeypatch, capsys):
    work = user_folder(tmp_path / "work")
    before = snapshot(work)
    monkeypatch.chdir(work)
    assert main(export_argv(generator_file, ".", "--force")) == 2
    assert "current folder" in one_error_line(capsys, "export")
    assert snapshot(work) == before


def test_force_refuses_a_folder_coevo_did_not_create(generator_file, tmp_path, capsys):
    photos = user_folder(tmp_path / "photos")
    before = snapshot(photos)
    assert main(export_argv(generator_file, photos, "--force")) == 2
    line = one_error_line(capsys, "export")
    assert str(photos) in line and RUN_MARKER in line and "another --out" in line
    assert snapshot(photos) == before


def test_force_refuses_the_home_folder(generator_file, tmp_path, monkeypatch, capsys):
    home = user_folder(tmp_path / "home")
    (home / RUN_MARKER).write_text("{}")  # even a home folder that looks like a run
    before = snapshot(home)
    monkeypatch.setenv("HOME", str(home))
    assert main(export_argv(generator_file, home, "--force")) == 2
    assert "home folder" in one_error_line(capsys, "export")
    assert snapshot(home) == before


def test_force_refuses_a_parent_of_the_current_folder(generator_file, tmp_path, monkeypatch, capsys):
    parent = user_folder(tmp_path / "parent")
    (parent / RUN_MARKER).write_text("{}")
    (parent / "child").mkdir()
    before = snapshot(parent)
    monkeypatch.chdir(parent / "child")
    assert main(export_argv(generator_file, "..", "--force")) == 2
    assert "parent of the current folder" in one_error_line(capsys, "export")
    assert snapshot(parent) == before


def test_the_root_folder_is_never_removable():
    with pytest.raises(RunDirError, match="root folder"):
        check_removable("/")


def test_force_replaces_a_real_coevo_run(tiny_generator, generator_file, tmp_path, capsys):
    out = tmp_path / "export"
    assert main(export_argv(generator_file, out)) == 0
    assert (out / RUN_MARKER).is_file() and (out / "G_A.safetensors").is_file()
    other = save_generator(tiny_generator, tmp_path / "models" / "H.pt")
    assert main(export_argv(other, out)) == 2  # without --force: refused
    assert "--force" in one_error_line(capsys, "export")
    assert main(export_argv(other, out, "--force")) == 0
    assert sorted(p.name for p in out.iterdir()) == [RUN_MARKER, "H.safetensors", "export_report.json"]


def test_export_refuses_to_write_over_its_input(generator_file, capsys):
    assert main(export_argv(generator_file, generator_file.parent, "--force")) == 2
    assert "--run input" in one_error_line(capsys, "export")
    assert generator_file.is_file()


def test_train_and_pipeline_force_refuse_user_folders(tmp_path):
    from coevo.config import config_from_dict
    from coevo.pipeline import Pipeline
    from coevo.train.teacher import train_teacher

    photos = user_folder(tmp_path / "photos")
    before = snapshot(photos)
    cfg = config_from_dict({"data": {"root": str(tmp_path / "nowhere"), "synthetic": False}})
    with pytest.raises(RunDirError, match="did not create"):
        train_teacher(cfg, photos, force=True)
    with pytest.raises(RunDirError, match="did not create"):
        Pipeline(cfg, photos, force=True).prepare()
    with pytest.raises(RunDirError, match="holds no coevo run"):  # resuming would replace stage folders
        Pipeline(cfg, photos, resume=True).prepare()
    assert snapshot(photos) == before


def test_synthetic_force_keeps_images_it_did_not_write(tmp_path, capsys):
    mine = tmp_path / "mine"
    (mine / "trainA").mkdir(parents=True)
    write_image(mine / "trainA" / "horse.png")
    before = snapshot(mine)
    assert main(["data", "synthetic", "--out", str(mine), "--size", "16", "--n-train", "1", "--n-test", "1",
                 "--force"]) == 2
    assert "trainA" in one_error_line(capsys, "data")
    assert snapshot(mine) == before


# ----------------------------------------------------------------------------- interrupted and failed runs
def test_resume_removes_temporary_files_of_interrupted_writes(tmp_path):
    run = prepare_run_dir(tmp_path / "run", command="train")
    (run / "config.yaml").write_text("seed: 0\n")
    (run / "samples").mkdir()
    orphans = [run / ".checkpoint.pt.k2j4h1.tmp", run / "samples" / ".epoch_002.png.x9a8b7.tmp"]
    for p in orphans:
        p.write_bytes(b"half a file")
    (run / ".keep").write_text("not a temporary file")
    prepare_run_dir(run, resume=True)
    assert not any(p.exists() for p in orphans)
    assert (run / ".keep").is_file() and (run / "config.yaml").is_file()


def test_a_start_that_fails_leaves_nothing_behind(tmp_path):
    from coevo.config import config_from_dict
    from coevo.train.teacher import train_teacher

    cfg = config_from_dict({"data": {"root": str(tmp_path / "no_such_data"), "synthetic": False},
                            "model": {"ngf": 4, "n_blocks": 1, "ndf": 4}})
    with pytest.raises(CoevoError):
        train_teacher(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(CoevoError):
        train_teacher(cfg, tmp_path / "empty")
    assert list((tmp_path / "empty").iterdir()) == []


# ----------------------------------------------------------------------------- translate
@pytest.fixture
def photos(tmp_path) -> Path:
    d = tmp_path / "photos"
    d.mkdir()
    for i, name in enumerate(("a.png", "b.png", "c.png")):
        write_image(d / name, seed=i)
    return d


def translate_argv(model, source, output, *extra) -> list:
    return ["translate", "--model", str(model), "--input", str(source), "--output", str(output), *extra]


def test_translate_never_writes_over_its_inputs(generator_file, photos, capsys):
    before = snapshot(photos)
    assert main(translate_argv(generator_file, photos, photos)) == 2
    assert "folder of the input images" in one_error_line(capsys, "translate")
    assert main(translate_argv(generator_file, photos / "a.png", photos)) == 2
    assert "folder of the input images" in one_error_line(capsys, "translate")
    assert snapshot(photos) == before


def test_translate_refuses_existing_outputs_unless_overwrite(generator_file, photos, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "b.png").write_bytes(b"an earlier result")
    assert main(translate_argv(generator_file, photos, out)) == 2
    line = one_error_line(capsys, "translate")
    assert "b.png" in line and "--overwrite" in line
    assert sorted(p.name for p in out.iterdir()) == ["b.png"]  # checked before anything was written
    assert (out / "b.png").read_bytes() == b"an earlier result"
    assert main(translate_argv(generator_file, photos, out, "--overwrite")) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png", "c.png"]
    assert Image.open(out / "b.png").size == (16, 16)


def test_translate_skip_bad(generator_file, photos, tmp_path, capsys):
    (photos / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = tmp_path / "out"
    assert main(translate_argv(generator_file, photos, out)) == 2
    line = one_error_line(capsys, "translate")
    assert "broken.png" in line and "--skip-bad" in line and "data.skip_bad_images" not in line
    assert not out.exists()
    assert main(translate_argv(generator_file, photos, out, "--skip-bad")) == 0
    printed = capsys.readouterr().out
    assert "wrote 3 image(s)" in printed and "skipped 1" in printed and "broken.png" in printed
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png", "c.png"]


def test_translate_bad_arguments_and_huge_images(generator_file, photos, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    assert main(translate_argv(generator_file, photos, out, "--batch", "0")) == 2
    assert "--batch" in one_error_line(capsys, "translate")
    monkeypatch.setattr(translate_module, "MAX_PIXELS", 12 * 12)  # as if the 16 px photos were 8000 px
    assert main(translate_argv(generator_file, photos, out)) == 2
    assert "--size" in one_error_line(capsys, "translate")
    assert not out.exists()
    assert main(translate_argv(generator_file, photos, out, "--size", "8")) == 0


class Grey(nn.Module):
    """An image model that is not image-to-image: three channels in, one out."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Classifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(3, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.mean(dim=(2, 3)))


@pytest.mark.parametrize("net", [Grey, Classifier])
def test_translate_and_bench_refuse_exports_of_other_networks(net, photos, tmp_path, capsys):
    path = tmp_path / "other.ts"
    torch.jit.save(torch.jit.script(net()), str(path))
    out = tmp_path / "out"
    assert main(translate_argv(path, photos, out)) == 2  # untrusted: refused before it runs
    assert "--trust-model" in one_error_line(capsys, "translate")
    assert main(translate_argv(path, photos, out, "--trust-model")) == 2  # trusted: refused by what it returns
    assert "not an image-to-image generator" in one_error_line(capsys, "translate")
    assert not any(out.glob("*.png"))
    bench_out = tmp_path / "bench"
    assert main(["bench", "--model", str(path), "--size", "16", "--repeats", "1", "--warmup", "0",
                 "--out", str(bench_out), "--trust-model"]) == 2
    assert "not an image-to-image generator" in one_error_line(capsys, "bench")
    assert not (bench_out / "bench.json").exists()


# ----------------------------------------------------------------------------- bench and export arguments
@pytest.mark.parametrize("args, words", [
    (["--size", "30"], "multiple of 4"), (["--size", "0"], "--size"), (["--size", "4"], "at least 8"),
    (["--repeats", "0"], "--repeats"), (["--batch", "0"], "--batch"), (["--warmup", "-1"], "--warmup"),
    (["--backend", "tensorrt"], "unknown backends"),
])
def test_bench_argument_errors(generator_file, tmp_path, capsys, args, words):
    out = tmp_path / "bench"
    assert main(["bench", "--model", str(generator_file), "--out", str(out), *args]) == 2
    assert words in one_error_line(capsys, "bench")
    assert not out.exists()


def test_bench_checks_its_output_folder_before_timing(generator_file, tmp_path, capsys, monkeypatch):
    import coevo.deploy.bench

    def never(*args, **kwargs):
        raise AssertionError("timed before checking --out")

    monkeypatch.setattr(coevo.deploy.bench, "benchmark_models", never)
    taken = tmp_path / "taken"
    taken.write_text("a file, not a folder")
    assert main(["bench", "--model", str(generator_file), "--size", "16", "--out", str(taken)]) == 2
    assert "is a file" in one_error_line(capsys, "bench")
    assert taken.read_text() == "a file, not a folder"


def test_export_check_size_zero(generator_file, tmp_path, capsys):
    out = tmp_path / "export"
    assert main(["export", "--run", str(generator_file), "--out", str(out), "--check-size", "0"]) == 2
    assert "--check-size" in one_error_line(capsys, "export")
    assert not out.exists()


# ----------------------------------------------------------------------------- no file can run code
class Hostile:
    """Unpickling this would create ``path``: what a malicious checkpoint would do."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


@pytest.fixture
def hostile(tmp_path):
    """(write, created): write a hostile pickle to a path; ``created`` is the file it would make."""
    created = tmp_path / "pwned"

    def write(path: Path, wrap=lambda evil: evil) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(wrap(Hostile(created)), path)
        return path

    yield write, created
    assert not created.exists()


@pytest.mark.parametrize("name", ["G_A.pt", "latest_net_G_A.pth"])
def test_hostile_generator_file(hostile, photos, tmp_path, name, capsys):
    from coevo import load_generator

    write, created = hostile
    bare = write(tmp_path / "bare" / name)
    wrapped = write(tmp_path / "wrapped" / name,
                    lambda evil: {"format": "coevo.generator", "arch": {}, "state_dict": {"w": evil}})
    for path in (bare, wrapped):
        with pytest.raises(CoevoError, match=str(path)):
            load_generator(path)
    assert main(translate_argv(bare, photos, tmp_path / "out")) == 2
    assert str(bare) in one_error_line(capsys, "translate")
    assert main(["export", "--run", str(bare), "--out", str(tmp_path / "export")]) == 2
    one_error_line(capsys, "export")


def test_hostile_discriminator_search_state_and_training_checkpoint(hostile, tmp_path):
    from coevo.config import config_from_dict
    from coevo.models import load_discriminator
    from coevo.search.state import load_state
    from coevo.train.loop import CycleGANTrainer, LoopSettings
    from coevo.train.teacher import build_cyclegan

    write, created = hostile
    with pytest.raises(CoevoError):
        load_discriminator(write(tmp_path / "D_A.pth"))
    with pytest.raises(CoevoError):
        load_state(write(tmp_path / "search" / "state.pt"))

    cfg = config_from_dict({"model": {"ngf": 4, "n_blocks": 1, "ndf": 4}})
    run = tmp_path / "train"
    settings = LoopSettings.from_section(cfg.train, "train", cfg.seed, "cpu", 0)
    trainer = CycleGANTrainer(build_cyclegan(cfg.model, cfg.seed, cfg.train.init_gain), settings, run)
    write(trainer.checkpoint_path)
    with pytest.raises(CoevoError):
        trainer.resume()


def test_genome_json_is_not_pickle(hostile, tmp_path):
    from coevo.prune import Genome

    write, created = hostile
    with pytest.raises(CoevoError, match="JSON"):
        Genome.load_json(write(tmp_path / "best_G_A.json"))


def test_discriminator_file_given_as_generator_is_named(photos, tmp_path, capsys):
    path = save_discriminator(NLayerDiscriminator(DiscriminatorArch(ndf=4)), tmp_path / "D_A.pt")
    assert main(translate_argv(path, photos, tmp_path / "out")) == 2
    assert "discriminator" in one_error_line(capsys, "translate")


def test_prune_never_writes_over_its_input(generator_file, capsys):
    before = generator_file.read_bytes()
    assert main(["prune", "--generator", str(generator_file), "--out", str(generator_file), "--force"]) == 2
    assert "input generator" in one_error_line(capsys, "prune")
    assert generator_file.read_bytes() == before


def test_written_files_get_the_usual_permissions(tmp_path):
    """Atomic writes go through mkstemp (owner-only 0600); the result must be an ordinary file (0666 - umask)."""
    import os

    from coevo.core.files import atomic_write_text

    umask = os.umask(0)
    os.umask(umask)
    path = atomic_write_text(tmp_path / "report.json", "{}")
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_remove_owned_deletes_only_inside_coevo_folders(tmp_path):
    """The one deletion of coevo's own outputs refuses anything outside a run or built-in set."""
    from coevo.core.files import remove_owned

    user = tmp_path / "mine"
    (user / "sub").mkdir(parents=True)
    (user / "sub" / "photo.png").write_bytes(b"precious")
    with pytest.raises(PermissionError, match="not inside a folder coevo made"):
        remove_owned(user / "sub", user)
    with pytest.raises(PermissionError):
        remove_owned(user)  # not a coevo temporary folder
    run = prepare_run_dir(tmp_path / "run")
    (run / "export").mkdir()
    with pytest.raises(PermissionError):
        remove_owned(run, run)  # the owner itself is never "inside" it
    remove_owned(run / "export", run)
    assert not (run / "export").exists() and (user / "sub" / "photo.png").read_bytes() == b"precious"


def test_synthetic_set_clears_only_its_own_stale_partial_folders(tmp_path):
    """A killed `coevo data synthetic` leaves .<name>.<random>.partial; the next render of the same set
    removes it when stale, keeps a fresh one (another process may be rendering) and anything else."""
    import os
    import time

    from coevo.data.synthetic import make_synthetic_dataset

    stale, fresh = tmp_path / ".set.ab12.partial", tmp_path / ".set.cd34.partial"
    other, mine = tmp_path / ".other.ef56.partial", tmp_path / "my.partial"
    for p in (stale, fresh, other, mine):
        p.mkdir()
        (p / "x.png").write_bytes(b"x")
    old = time.time() - 2 * 3600
    for p in (stale, other):
        os.utime(p, (old, old))
    make_synthetic_dataset(tmp_path / "set", size=16, n_train=2, n_test=1)
    assert not stale.exists() and fresh.is_dir() and other.is_dir() and mine.is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([fresh.name, other.name, mine.name, "set"])
