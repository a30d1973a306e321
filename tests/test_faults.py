"""Faults end in one line ``coevo <cmd>: error: ...`` and exit code 2, never a traceback or a wrong result.

Each test drives the CLI in-process, as a user would, with a bad config value, a corrupt or
diverged checkpoint, a non-finite image or output, or a file system that refuses a write.
"""
from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from coevo.cli import main
from coevo.deploy.exported import quiet_export
from coevo.models import (
    DiscriminatorArch,
    GeneratorArch,
    NLayerDiscriminator,
    ResnetGenerator,
    save_discriminator,
    save_generator,
)

from conftest import make_image_folder

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO / "configs" / "tiny.yaml"


def fails(capsys, argv, *expected: str) -> str:
    """Run ``coevo argv``; assert exit 2 and one stderr line ``coevo <cmd>: error: ...`` holding ``expected``."""
    capsys.readouterr()  # what the test's setup printed
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert rc == 2, (rc, out, err)
    assert len(lines) == 1 and lines[0].startswith(f"coevo {argv[0]}: error: "), err
    assert "Traceback" not in out + err
    for text in expected:
        assert text in lines[0], (text, lines[0])
    return lines[0]


def snapshot(root: Path, skip: Path | None = None) -> dict:
    """Every file under ``root`` (but ``skip``) with its size and mtime: to prove nothing else changed."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*"))
            if p.is_file() and (skip is None or skip not in p.parents)}


@pytest.fixture
def image(tmp_path) -> Path:
    path = tmp_path / "in" / "a.png"
    path.parent.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)
    return path


def with_nan(model: torch.nn.Module, name: str, value: float = float("nan")) -> torch.nn.Module:
    with torch.no_grad():
        model.state_dict()[name].view(-1)[0] = value
    return model


# ----------------------------------------------------------------------------- config
@pytest.mark.parametrize("override, expected", [
    ("search.tournament_size=0", "search.tournament_size must be >= 1, got 0"),
    ("search.flip_bits=-5", "search.flip_bits must be > 0, got -5.0"),
    ("seed=-1", "seed must be >= 0, got -1"),
    ("device=bogus", "device must be cpu, cuda, cuda:N or mps, got 'bogus'"),
    ("model.ndf=0", "model.ndf must be >= 1, got 0"),
    ("data.num_workers=-1", "data.num_workers must be >= 0, got -1"),
    ("train.sample_images=0", "train.sample_images must be >= 1, got 0"),
    ("finetune.sample_images=0", "finetune.sample_images must be >= 1, got 0"),
    ("data.val_fraction=1", "data.val_fraction must be in [0, 1), got 1.0"),
    ("data.val_fraction=-0.1", "data.val_fraction must be in [0, 1), got -0.1"),
    ("search.crossover_prob=1.5", "search.crossover_prob must be in [0, 1], got 1.5"),
    ("search.mutation_prob=-0.1", "search.mutation_prob must be in [0, 1]"),
    ("train.epochs=-1", "train.epochs must be >= 0, got -1"),
    ("finetune.epochs_decay=-2", "finetune.epochs_decay must be >= 0"),
    ("train.lr=0", "train.lr must be > 0, got 0.0"),
    ("finetune.lr=-0.001", "finetune.lr must be > 0"),
    ("train.lr=.inf", "train.lr must be a finite number, got inf"),
    ("train.batch_size=0", "train.batch_size must be >= 1, got 0"),
    ("search.eval_images=0", "search.eval_images must be >= 1, got 0"),
    ("export.check_size=0", "export.check_size must be a multiple of 4"),
    ("export.check_size=4", "export.check_size must be a multiple of 4 (the generator down-samples twice), at least 8"),
    ("export.check_size=30", "export.check_size must be a multiple of 4"),
    ("export.opset=3", "export.opset must be in [7, 23], got 3"),
    ("bench.repeats=0", "bench.repeats must be >= 1, got 0"),
    ("bench.size=30", "bench.size must be a multiple of 4"),
    ("search.selection=best", "search.selection must be one of ['roulette', 'tournament'], got 'best'"),
    ("search.crossover=one_point", "search.crossover must be one of"),
    ("search.mutation=swap", "search.mutation must be one of"),
    ("search.repair=greedy", "search.repair must be one of ['importance', 'random'], got 'greedy'"),
    ("search.compute=speed", "search.compute must be one of ['budget', 'latency', 'reward'], got 'speed'"),
    ("search.perceptual=ssim", "search.perceptual must be one of"),
    ("search.lpips_net=squeeze", "search.lpips_net must be one of ['alex', 'vgg'], got 'squeeze'"),
    ("export.formats=onnx,tflite", "export.formats must be one of ['torch-export', 'onnx', 'safetensors', "
                                   "'torchscript'], got 'tflite'"),
    ("finetune.select_on=test", "finetune.select_on must be one of ['val', 'last'], got 'test'"),
    ("search.elitism=4", "search.elitism (4) must be smaller than search.population (4)"),
])
def test_bad_config_value_fails_before_any_work(tmp_path, capsys, override, expected):
    run = tmp_path / "run"
    fails(capsys, ["train", "--config", TINY_CONFIG, "--out", run, "--set", override], expected)
    assert not run.exists()


def test_compress_rejects_an_unknown_export_format_before_training(tmp_path, capsys):
    run = tmp_path / "run"
    fails(capsys, ["compress", "--config", TINY_CONFIG, "--out", run, "--set", "export.formats=tflite"],
          "export.formats", "'tflite'")
    assert not run.exists()


def test_config_path_that_is_a_folder(tmp_path, capsys):
    fails(capsys, ["train", "--config", tmp_path, "--out", tmp_path / "run"], f"config {tmp_path} is a folder")
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- checkpoints
def _coevo_payload(model: ResnetGenerator) -> dict:
    return {"format": "coevo.generator", "arch": model.arch.to_dict(),
            "state_dict": {k: v.clone() for k, v in model.state_dict().items()}}


def _set(*keys_and_value):
    """A change to a checkpoint payload: set payload[k1][k2]... to the value."""
    *keys, value = keys_and_value

    def change(payload):
        node = payload
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value
    return change


def _drop(*keys):
    def change(payload):
        node = payload
        for k in keys[:-1]:
            node = node[k]
        del node[keys[-1]]
    return change


@pytest.mark.parametrize("change, expected", [
    (_drop("state_dict"), "without state_dict"),
    (_drop("arch"), "without arch"),
    (_set("arch", [4, 2]), "unusable architecture metadata"),
    (_drop("arch", "widths"), "unusable architecture metadata (no key 'widths')"),
    (_set("arch", "ngf", "many"), "unusable architecture metadata"),
    (_set("arch", "widths", "stem", -3), "unusable architecture metadata"),
    (_set("arch", "widths", "block9.inner", 4), "unusable architecture metadata"),
    (_set("arch", "widths", [1, 2, 3]), "unusable architecture metadata"),
    (_set("arch", "in_channels", -1), "unusable architecture metadata"),
    (_set("state_dict", {"model.1.weight": "x"}), "state_dict is not a mapping of tensors"),
], ids=["no_state_dict", "no_arch", "arch_a_list", "no_widths", "ngf_a_word", "negative_width",
        "unknown_group", "widths_a_list", "negative_in_channels", "state_dict_not_tensors"])
def test_broken_coevo_checkpoint_is_named(tmp_path, capsys, tiny_generator, image, change, expected):
    payload = _coevo_payload(tiny_generator)
    change(payload)
    path = tmp_path / "broken.pt"
    torch.save(payload, path)
    fails(capsys, ["translate", "--model", path, "--input", image, "--output", tmp_path / "out"], str(path), expected)
    assert not (tmp_path / "out").exists()


def test_safetensors_with_malformed_arch_json(tmp_path, capsys, tiny_generator, image):
    from safetensors.torch import save_file

    path = tmp_path / "g.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_generator.state_dict().items()}, str(path),
              metadata={"format": "coevo.generator", "arch": "{\"ngf\": 4, "})
    fails(capsys, ["translate", "--model", path, "--input", image, "--output", tmp_path / "out"],
          str(path), "malformed architecture metadata (not JSON")


@pytest.mark.parametrize("suffix, value, kind", [(".pt", float("nan"), "NaN"), (".safetensors", float("inf"), "inf")])
def test_non_finite_generator_weights(tmp_path, capsys, tiny_generator, image, suffix, value, kind):
    path = save_generator(with_nan(tiny_generator, "model.1.weight", value), tmp_path / f"diverged{suffix}")
    line = fails(capsys, ["translate", "--model", path, "--input", image, "--output", tmp_path / "out"])
    assert line.endswith(f"{path} has {kind} in model.1.weight; the checkpoint is corrupt or came from a "
                         "diverged training run")
    assert not (tmp_path / "out").exists()


def test_non_finite_reference_checkpoint(tmp_path, capsys, tiny_generator, image):
    path = tmp_path / "latest_net_G_A.pth"
    torch.save(with_nan(tiny_generator, "model.10.conv_block.5.bias").state_dict(), path)
    fails(capsys, ["translate", "--model", path, "--input", image, "--output", tmp_path / "out"],
          f"{path} has NaN in model.10.conv_block.5.bias")


def test_prune_does_not_write_a_nan_model(tmp_path, capsys, tiny_generator):
    path = save_generator(with_nan(tiny_generator, "model.4.bias"), tmp_path / "teacher.pt")
    before = snapshot(tmp_path)
    fails(capsys, ["prune", "--generator", path, "--macs-ratio", "0.5", "--size", "32", "--out", tmp_path / "slim.pt"],
          "has NaN in model.4.bias")
    assert snapshot(tmp_path) == before


def test_discriminator_checkpoints(tmp_path, capsys, tiny_generator):
    """Broken or diverged discriminators, through `coevo evaluate --perceptual discriminator`."""
    data = make_image_folder(tmp_path / "data", n=2, size=32)
    model = save_generator(tiny_generator, tmp_path / "g.pt")
    disc = NLayerDiscriminator(DiscriminatorArch(ndf=4, n_layers=2))
    nan_d = save_discriminator(with_nan(disc, "model.0.weight"), tmp_path / "nan_D.pt")
    no_sd = tmp_path / "no_sd_D.pt"
    torch.save({"format": "coevo.discriminator", "arch": disc.arch.to_dict()}, no_sd)
    bad_arch = tmp_path / "bad_arch_D.pt"
    torch.save({"format": "coevo.discriminator", "arch": {"ndf": -4, "n_layers": 2},
                "state_dict": disc.state_dict()}, bad_arch)
    base = ["evaluate", "--model", model, "--data", data, "--no-fid", "--teacher", model,
            "--perceptual", "discriminator", "--teacher-d"]
    fails(capsys, base + [nan_d], f"{nan_d} has NaN in model.0.weight")
    fails(capsys, base + [no_sd], str(no_sd), "without state_dict")
    fails(capsys, base + [bad_arch], str(bad_arch), "unusable architecture metadata", "ndf")


# ----------------------------------------------------------------------------- non-finite outputs
@pytest.fixture
def nan_torchscript(tmp_path, tiny_generator) -> Path:
    """An exported model whose weights cannot be checked: only its outputs show the NaN."""
    model = with_nan(tiny_generator, "model.1.bias")
    path = tmp_path / "diverged.ts"
    with quiet_export():
        torch.jit.save(torch.jit.trace(model, torch.zeros(1, 3, 32, 32)), str(path))
    return path


def test_translate_stops_on_a_non_finite_output(tmp_path, capsys, nan_torchscript, image):
    out = tmp_path / "out"
    # a TorchScript file from elsewhere runs only when trusted; untrusted it is refused before anything runs
    fails(capsys, ["translate", "--model", nan_torchscript, "--input", image, "--output", out], "--trust-model")
    fails(capsys, ["translate", "--model", nan_torchscript, "--input", image, "--output", out, "--trust-model"],
          f"the output of {nan_torchscript} for {image.name} has NaN values")
    assert not out.exists() or not any(out.iterdir())  # no PNG was written


def test_evaluate_stops_on_a_non_finite_output(tmp_path, capsys, nan_torchscript, tiny_arch):
    data = make_image_folder(tmp_path / "data", n=2, size=32)
    teacher = save_generator(ResnetGenerator(tiny_arch), tmp_path / "teacher.pt")
    json_out = tmp_path / "eval.json"
    fails(capsys, ["evaluate", "--model", nan_torchscript, "--data", data, "--no-fid", "--teacher", teacher,
                   "--perceptual", "l1", "--out", json_out, "--trust-model"],
          "the model's output for", "has NaN values")
    assert not json_out.exists()  # no PSNR next to L1=nan


def test_search_stops_on_a_non_finite_fitness(tmp_path, capsys, monkeypatch):
    from coevo.search import fitness

    data = make_image_folder(tmp_path / "data", n=4, size=32)
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    arch = GeneratorArch.full(ngf=4, n_blocks=2)
    for g in ("G_A", "G_B"):
        save_generator(ResnetGenerator(arch), teacher / f"{g}.pt")
    for d in ("D_A", "D_B"):
        save_discriminator(NLayerDiscriminator(DiscriminatorArch(ndf=4, n_layers=2)), teacher / f"{d}.pt")
    monkeypatch.setattr(fitness, "perceptual_term", lambda *a, **k: float("nan"))
    run = tmp_path / "search"
    fails(capsys, ["search", "--teacher", teacher, "--out", run, "--no-progress",
                   "--set", f"data.root={data}", "--set", "data.synthetic=false", "--set", "data.load_size=32",
                   "--set", "data.crop_size=32", "--set", "search.population=2", "--set", "search.generations=1",
                   "--set", "search.eval_images=2", "--set", "search.eval_size=32"],
          "search: the perceptual term of a G_A candidate is nan")
    assert not (run / "genomes").exists()


def test_training_nan_names_the_loss_and_cites_no_missing_checkpoint(tmp_path, capsys, monkeypatch):
    from coevo.train import losses

    data = make_image_folder(tmp_path / "data", n=2, size=32)
    monkeypatch.setattr(losses, "gan_loss", lambda scores, real: scores.mean() * float("nan"))
    line = fails(capsys, ["train", "--config", TINY_CONFIG, "--out", tmp_path / "run",
                          "--set", f"data.root={data}", "--set", "data.synthetic=false",
                          "--set", "model.n_blocks=1", "--set", "train.max_steps_per_epoch=1"],
                 "train: loss 'G_A' = nan", "at epoch 1, step 1", "every input and generator output was finite",
                 "no checkpoint had been written yet", "before any update")
    assert "checkpoint.pt" not in line and "lower the learning rate" not in line


def test_finetune_nan_from_the_teacher_is_blamed_on_the_teacher(tmp_path):
    import copy

    from coevo.config import config_from_dict
    from coevo.train import CycleGANTrainer, GeneratorPair, LoopSettings, TrainingError, build_cyclegan

    nets = build_cyclegan(config_from_dict({"model": {"ngf": 4, "n_blocks": 1, "ndf": 4}}).model, seed=0)
    teacher = GeneratorPair(with_nan(copy.deepcopy(nets.G_A), "model.1.bias"), copy.deepcopy(nets.G_B))
    settings = LoopSettings(epochs=1, lambda_distill=10.0, pool_size=0, section="finetune")
    trainer = CycleGANTrainer(nets, settings, tmp_path / "run", teacher=teacher)
    x = torch.zeros(1, 3, 32, 32)
    with pytest.raises(TrainingError) as info:
        trainer.step(x, x, epoch=1)
    message = str(info.value)
    assert message.startswith("finetune: loss 'distill_A' = nan at epoch 1, step 1; the first non-finite tensor "
                              "was teacher G_A(real_A) (NaN)")
    assert "The teacher produces NaN/inf" in message and "no checkpoint had been written yet" in message


# ----------------------------------------------------------------------------- images
def _float_tiff(path: Path, value: float) -> Path:
    arr = np.full((32, 32), 0.5, dtype=np.float32)
    arr[3, 4] = value
    Image.fromarray(arr, mode="F").save(path)
    return path


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_float_image_with_non_finite_pixels_is_rejected(tmp_path, capsys, tiny_generator, value):
    from coevo.data import load_image
    from coevo.data.errors import DataError

    path = _float_tiff(tmp_path / "bad.tif", value)
    with pytest.raises(DataError, match="bad.tif"):
        load_image(path)
    model = save_generator(tiny_generator, tmp_path / "g.pt")
    fails(capsys, ["translate", "--model", model, "--input", path, "--output", tmp_path / "out"],
          str(path), "pixel(s) of 1024 in a 32-bit float image")
    assert not any((tmp_path / "out").glob("*.png"))


def test_non_finite_image_is_skipped_with_skip_bad_and_listed_by_data_check(tmp_path, capsys, caplog):
    from coevo.data import list_images

    root = make_image_folder(tmp_path / "data", n=2, size=32)
    bad = _float_tiff(root / "trainA" / "zz.tif", float("nan"))
    with caplog.at_level(logging.WARNING):
        kept = list_images(root / "trainA", skip_bad=True)
    assert bad not in kept and len(kept) == 2 and "zz.tif" in caplog.text
    assert main(["data", "check", str(root)]) == 1
    assert f"bad: {bad}: 1 NaN and 0 inf pixel(s)" in capsys.readouterr().out


def test_tiny_images_warn_on_load_and_are_listed_by_data_check(tmp_path, capsys, caplog):
    from coevo.data import load_image

    root = make_image_folder(tmp_path / "data", n=1, size=32)
    small = root / "trainB" / "thumb.png"
    Image.new("RGB", (20, 12)).save(small)
    with caplog.at_level(logging.WARNING):
        load_image(small)
        load_image(small)  # once per file, not once per epoch
    assert caplog.text.count(f"{small} is only 20x12 pixels") == 1
    assert main(["data", "check", str(root)]) == 0  # usable, but reported
    out = capsys.readouterr().out
    assert f"small: {small}: 20x12 px" in out and "1 image(s) have a side below 32 px" in out


# ----------------------------------------------------------------------------- file system
def test_output_path_under_a_regular_file(tmp_path, capsys, tiny_generator, image):
    blocker = tmp_path / "results"
    blocker.write_text("a file, not a folder")
    model = save_generator(tiny_generator, tmp_path / "g.pt")
    before = snapshot(tmp_path)
    fails(capsys, ["translate", "--model", model, "--input", image, "--output", blocker / "out"],
          "a file is in the way", str(blocker))
    fails(capsys, ["data", "synthetic", "--out", blocker / "set", "--size", "32", "--n-train", "1", "--n-test", "1"],
          "a file is in the way", str(blocker))
    assert snapshot(tmp_path) == before


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root ignores file permissions")
def test_read_only_output_folder(tmp_path, capsys, tiny_generator, image):
    locked = tmp_path / "locked"
    locked.mkdir()
    model = save_generator(tiny_generator, tmp_path / "g.pt")
    locked.chmod(0o500)
    try:
        fails(capsys, ["translate", "--model", model, "--input", image, "--output", locked / "out"],
              "permission denied", str(locked / "out"))
    finally:
        locked.chmod(0o700)
    assert not any(locked.iterdir())


@pytest.mark.parametrize("err, expected", [
    (errno.ENOSPC, "disk full while writing"),
    (errno.EACCES, "permission denied"),
    (errno.EROFS, "read-only file system"),
])
def test_write_failures_are_one_line(tmp_path, capsys, monkeypatch, tiny_generator, image, err, expected):
    """Disk full (and friends) at the moment a PNG is written; works as root too."""
    def refuse(self, fp, *args, **kwargs):
        exc = PermissionError if err == errno.EACCES else OSError
        raise exc(err, os.strerror(err), str(fp))

    model = save_generator(tiny_generator, tmp_path / "g.pt")
    monkeypatch.setattr(Image.Image, "save", refuse)
    out = tmp_path / "out"
    fails(capsys, ["translate", "--model", model, "--input", image, "--output", out], expected, str(out / "a.png"))


def test_other_os_errors_are_not_swallowed(tmp_path, monkeypatch, tiny_generator, image):
    def broken(self, fp, *args, **kwargs):
        raise OSError(errno.EIO, "Input/output error", str(fp))

    model = save_generator(tiny_generator, tmp_path / "g.pt")
    monkeypatch.setattr(Image.Image, "save", broken)
    with pytest.raises(OSError, match="Input/output error"):
        main(["translate", "--model", str(model), "--input", str(image), "--output", str(tmp_path / "out")])


# ----------------------------------------------------------------------------- inception weights
def test_inception_weights_are_read_once_and_only_with_weights_only(tmp_path, monkeypatch):
    pytest.importorskip("torch_fidelity")
    from coevo.evaluation.metrics import InceptionWeightsError, inception_extractor

    fake = tmp_path / "inception.pth"
    torch.save({"Mixed_7c.branch_pool.conv.weight": torch.zeros(192, 2048, 1, 1)}, fake)
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        assert kwargs.get("weights_only") is True, "torch.load without weights_only=True"
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    # The tensors reach torch-fidelity's network (which reports the missing ones); no file is
    # read a second time and nothing is downloaded.
    with pytest.raises(InceptionWeightsError, match="does not fit the FID Inception network"):
        inception_extractor(fake)
    assert calls == [True]


def test_inception_file_that_needs_code_is_refused(tmp_path):
    from coevo.evaluation.metrics import inception_extractor
    from coevo.models.io import CheckpointError

    evil = tmp_path / "inception.pth"
    torch.save({"Mixed_7c.branch_pool.conv.weight": torch.zeros(1), "hook": Path("x")}, evil)
    with pytest.raises(CheckpointError, match="cannot read"):
        inception_extractor(evil)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_checkpoint_on_a_full_disk_is_the_disk_full_error_naming_the_file(tmp_path, monkeypatch):
    """torch.save to a file name hides ENOSPC in an opaque RuntimeError; coevo's saves do not."""
    from contextlib import contextmanager

    from coevo.core import files
    from coevo.cli import os_error_message

    @contextmanager
    def full_disk(path):
        yield Path("/dev/full")  # every write fails with ENOSPC

    monkeypatch.setattr(files, "atomic_path", full_disk)
    target = tmp_path / "run" / "checkpoint.pt"
    with pytest.raises(OSError) as info:
        files.atomic_torch_save({"w": torch.zeros(10000)}, target)
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(target)
    assert os_error_message(info.value).startswith(f"disk full while writing {target}")
    assert not target.exists()


@pytest.mark.parametrize("room", [0, 64, 4096, 60000])
def test_checkpoint_on_a_disk_that_fills_midway_is_the_disk_full_error(tmp_path, monkeypatch, room):
    """The disk fills after ``room`` bytes of the checkpoint: always ENOSPC naming the file, never torch's
    "unexpected pos", and no file (temporary or final) is left."""
    import builtins

    from coevo.core import files

    class FillingFile:
        def __init__(self, path, mode):
            self.real, self.left = builtins.open(path, mode), room

        def write(self, data):
            data = memoryview(data).cast("B")
            if len(data) > self.left:
                self.real.write(data[:self.left])
                self.left = 0
                raise OSError(errno.ENOSPC, "No space left on device")
            self.left -= len(data)
            return self.real.write(data)

        def __getattr__(self, name):
            return getattr(self.real, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.real.close()
            return False

    monkeypatch.setattr(files, "open", FillingFile, raising=False)
    target = tmp_path / "run" / "checkpoint.pt"
    with pytest.raises(OSError) as info:
        files.atomic_torch_save({"w": torch.zeros(30000), "step": 3}, target)
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(target)
    assert list(target.parent.iterdir()) == []
