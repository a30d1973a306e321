"""Teachers without discriminators: the two generators alone, in a folder or as two files.

Covers finding and naming such a teacher, the layouts coevo refuses (with messages that
say what was found), the ``auto`` perceptual metric, the ``teacher-features`` metric,
fresh discriminators for fine-tuning, and the whole `coevo compress` job on both forms.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from coevo.cli import main
from coevo.config import ConfigError, config_from_dict
from coevo.models import (
    DiscriminatorArch,
    GeneratorArch,
    NLayerDiscriminator,
    ResnetGenerator,
    load_generator,
    save_discriminator,
    save_generator,
)
from coevo.models.io import CheckpointError, save_reference_state_dict
from coevo.models.teacher import TeacherPaths, find_teacher, resolve_teacher
from coevo.evaluation.perceptual import LPIPS_BACKBONES, TeacherFeatureMetric, build_perceptual, resolve_perceptual
from coevo.search import make_context, run_search
from coevo.train.finetune import _discriminators

from conftest import make_image_folder


@pytest.fixture(autouse=True)
def _no_lpips_backbone(tmp_path, monkeypatch):
    # ``auto`` prefers LPIPS when its backbone file exists: make sure this machine's hub
    # cache does not decide which metric these tests see.
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))


def _generator(ngf=4, n_blocks=2, seed=0) -> ResnetGenerator:
    torch.manual_seed(seed)
    return ResnetGenerator(GeneratorArch.full(ngf=ngf, n_blocks=n_blocks)).eval()


def reference_pair(folder: Path, ngf=4, n_blocks=2) -> Path:
    """latest_net_G_A.pth and latest_net_G_B.pth only, as bare state_dicts (the reference's format)."""
    folder.mkdir(parents=True, exist_ok=True)
    save_reference_state_dict(_generator(ngf, n_blocks, 0), folder / "latest_net_G_A.pth")
    save_reference_state_dict(_generator(ngf, n_blocks, 1), folder / "latest_net_G_B.pth")
    return folder


def official_files(root: Path):
    """horse2zebra_pretrained/latest_net_G.pth and zebra2horse_pretrained/latest_net_G.pth, in miniature."""
    ab, ba = root / "horse2zebra_pretrained" / "latest_net_G.pth", root / "zebra2horse_pretrained" / "latest_net_G.pth"
    for i, f in enumerate((ab, ba)):
        f.parent.mkdir(parents=True)
        save_reference_state_dict(_generator(seed=i), f)
    return ab, ba


# ----------------------------------------------------------------------------- finding the teacher
def test_find_teacher_accepts_the_two_generators_alone(tmp_path):
    paths = find_teacher(reference_pair(tmp_path / "ref"))
    assert paths.G_A.name == "latest_net_G_A.pth" and paths.D_A is None and paths.D_B is None
    assert not paths.has_discriminators
    assert set(paths.to_dict()) == {"G_A", "G_B"}
    assert TeacherPaths.from_dict(paths.to_dict()) == TeacherPaths(paths.G_A.resolve(), paths.G_B.resolve())
    coevo = tmp_path / "coevo"
    coevo.mkdir()
    save_generator(_generator(), coevo / "G_A.pt")
    save_generator(_generator(), coevo / "G_B.pt")
    assert find_teacher(coevo).G_B.name == "G_B.pt" and not find_teacher(coevo).has_discriminators


def test_a_single_discriminator_is_ignored_with_a_warning(tmp_path, caplog):
    folder = reference_pair(tmp_path / "ref")
    save_discriminator(NLayerDiscriminator(DiscriminatorArch(ndf=4)), folder / "D_A.pt")
    with caplog.at_level("WARNING", logger="coevo.models.teacher"):
        paths = find_teacher(folder)
    assert not paths.has_discriminators and paths.D_A is None
    assert "D_A.pt but not D_B" in caplog.text


def test_old_teacher_json_with_four_networks_still_loads(tmp_path):
    old = {k: str(tmp_path / f"latest_net_{k}.pth") for k in ("G_A", "G_B", "D_A", "D_B")}
    paths = TeacherPaths.from_dict(old)
    assert paths.has_discriminators and paths.D_B == Path(old["D_B"])
    with pytest.raises(KeyError, match="G_B"):
        TeacherPaths.from_dict({"G_A": old["G_A"]})


def test_a_single_direction_folder_points_to_the_two_file_form(tmp_path):
    ab, _ = official_files(tmp_path)
    with pytest.raises(CheckpointError, match="--teacher-ab FILE --teacher-ba FILE"):
        find_teacher(ab.parent)


def test_resolve_teacher_from_two_files_and_its_argument_errors(tmp_path):
    ab, ba = official_files(tmp_path)
    paths = resolve_teacher(g_ab=ab, g_ba=ba)
    assert (paths.G_A, paths.G_B, paths.has_discriminators) == (ab, ba, False)
    with pytest.raises(ConfigError, match="not both"):
        resolve_teacher(tmp_path, g_ab=ab, g_ba=ba)
    with pytest.raises(ConfigError, match="--teacher-ab needs --teacher-ba"):
        resolve_teacher(g_ab=ab)
    with pytest.raises(ConfigError, match="--teacher-ba needs --teacher-ab"):
        resolve_teacher(g_ba=ba)
    with pytest.raises(FileNotFoundError, match="--teacher-ba"):
        resolve_teacher(g_ab=ab, g_ba=tmp_path / "nope.pth")


@pytest.mark.parametrize("argv, message", [
    (["--teacher", "T", "--teacher-ab", "AB", "--teacher-ba", "BA"], "not both"),
    (["--teacher-ab", "AB"], "--teacher-ab needs --teacher-ba"),
])
@pytest.mark.parametrize("command", ["search", "compress"])
def test_cli_teacher_flags_are_checked_before_any_work(command, argv, message, tmp_path, capsys):
    out = tmp_path / "run"
    extra = ["--config", str(tmp_path / "unused.yaml")] if command == "compress" else []
    assert main([command, "--out", str(out), *extra, *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"coevo {command}: error: ") and message in err and err.count("\n") == 1
    assert not out.exists()


def test_cli_search_without_any_teacher_names_both_forms(tmp_path, capsys):
    assert main(["search", "--out", str(tmp_path / "run")]) == 2
    assert "--teacher-ab FILE --teacher-ba FILE" in capsys.readouterr().err


# ----------------------------------------------------------------------------- layouts coevo refuses
def _reference_sd(n_blocks=2):
    return {k: v.clone() for k, v in _generator(n_blocks=n_blocks).state_dict().items()}


@pytest.mark.parametrize("n_blocks", [6, 9])
def test_reference_six_and_nine_block_files_load_with_their_architecture(tmp_path, n_blocks):
    path = tmp_path / "latest_net_G_A.pth"
    torch.save(_reference_sd(n_blocks), path)
    assert load_generator(path).arch == GeneratorArch.full(ngf=4, n_blocks=n_blocks)


def test_dropout_generator_loads_with_dropout(tmp_path):
    # use_dropout=True puts a Dropout after each block's ReLU: the second conv moves to conv_block.6
    sd = {k.replace(".conv_block.5.", ".conv_block.6."): v for k, v in _reference_sd().items()}
    torch.save(sd, tmp_path / "latest_net_G_A.pth")
    g = load_generator(tmp_path / "latest_net_G_A.pth")
    assert g.arch.dropout and g.arch.norm == "instance"
    assert torch.equal(g.state_dict()["model.10.conv_block.6.weight"], sd["model.10.conv_block.6.weight"])


def test_unet_generator_is_refused_by_name(tmp_path):
    sd = {"model.model.0.weight": torch.zeros(4, 3, 4, 4), "model.model.0.bias": torch.zeros(4),
          "model.model.1.model.1.weight": torch.zeros(8, 4, 4, 4)}
    torch.save(sd, tmp_path / "latest_net_G_A.pth")
    with pytest.raises(CheckpointError, match="U-Net generator"):
        load_generator(tmp_path / "latest_net_G_A.pth")


def test_discriminator_given_as_a_generator_is_refused_by_name(tmp_path):
    save_reference_state_dict(NLayerDiscriminator(DiscriminatorArch(ndf=4)), tmp_path / "latest_net_D_A.pth")
    with pytest.raises(CheckpointError, match="PatchGAN discriminator"):
        load_generator(tmp_path / "latest_net_D_A.pth")


def test_full_pickled_model_is_refused(tmp_path):
    torch.save(_generator(), tmp_path / "model.pth")  # the module itself, not its state_dict
    with pytest.raises(CheckpointError, match="pickled"):
        load_generator(tmp_path / "model.pth")


@pytest.mark.parametrize("other, found", [({"ngf": 8}, "ngf 8, 2 residual blocks"),
                                          ({"n_blocks": 3}, "ngf 4, 3 residual blocks")])
def test_mismatched_pair_is_an_error_naming_both(tmp_path, other, found):
    ab = tmp_path / "ab.pth"
    ba = tmp_path / "ba.pth"
    save_reference_state_dict(_generator(), ab)
    save_reference_state_dict(_generator(**other), ba)
    with pytest.raises(CheckpointError, match="differ in architecture") as info:
        resolve_teacher(g_ab=ab, g_ba=ba)
    msg = str(info.value)
    assert "ngf 4, 2 residual blocks" in msg and found in msg and str(ab) in msg and str(ba) in msg


# ----------------------------------------------------------------------------- the perceptual metric
def test_auto_resolves_by_what_the_teacher_and_the_machine_have(tmp_path):
    assert resolve_perceptual("auto", has_discriminators=True) == "discriminator"
    assert resolve_perceptual("auto", has_discriminators=False) == "teacher-features"
    backbone = Path(torch.hub.get_dir()) / "checkpoints" / LPIPS_BACKBONES["alex"][0]
    backbone.parent.mkdir(parents=True)
    backbone.write_bytes(b"present")  # only its presence is checked when resolving
    assert resolve_perceptual("auto", has_discriminators=False) == "lpips"
    assert resolve_perceptual("l1", has_discriminators=False) == "l1"
    with pytest.raises(ConfigError, match="auto, lpips, teacher-features or l1"):
        resolve_perceptual("discriminator", has_discriminators=False)
    with pytest.raises(ConfigError, match="unknown perceptual metric 'ssim'"):
        resolve_perceptual("ssim", has_discriminators=True)


def test_teacher_features_metric_reads_images_with_the_generator_of_their_domain():
    G_A, G_B = _generator(seed=0), _generator(seed=1)
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    search = config_from_dict({"search": {"eval_size": 32}}).search
    ctx = make_context(G_A, G_B, None, None, x, x.flip(0), search)
    assert ctx.metric_name == "teacher-features"
    # G_A's outputs are domain-B images: G_B's encoder reads them, and vice versa
    assert ctx["G_A"].metric.generator is G_B and ctx["G_B"].metric.generator is G_A
    metric = build_perceptual("teacher-features", feature_generator=G_B)
    assert isinstance(metric, TeacherFeatureMetric) and metric.layers == ["stem", "down1", "down2", "block0"]
    y = torch.rand(4, 3, 32, 32) * 2 - 1
    d = metric(x, y)
    assert d.shape == (4,) and bool((d > 0).all())
    assert torch.allclose(metric(x, x), torch.zeros(4))
    # pixel L1 is part of it; the features add to it
    assert bool((d > (x - y).abs().flatten(1).mean(1)).all())
    assert torch.allclose(metric.distance(metric.embed(x), metric.embed(y)), d)
    with pytest.raises(ValueError, match="teacher generator"):
        build_perceptual("teacher-features")


def test_generator_features_are_the_encoder_activations():
    g = _generator(n_blocks=3)
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    stem, down2, block1 = g.features(x, ["stem", "down2", "block1"])
    assert stem.shape == (1, 4, 32, 32) and down2.shape == (1, 16, 8, 8) and block1.shape == (1, 16, 8, 8)
    assert torch.equal(block1, g.model[:12](x))
    with pytest.raises(KeyError, match="block3"):
        g.features(x, ["block3"])


# ----------------------------------------------------------------------------- fine-tuning
def test_fresh_discriminators_follow_the_config_and_its_seed(tmp_path):
    paths = TeacherPaths(tmp_path / "a.pth", tmp_path / "b.pth")
    cfg = config_from_dict({"seed": 3, "model": {"ndf": 4, "n_layers_d": 2}})
    D_A, D_B, origin = _discriminators(paths, cfg)
    assert origin == "fresh" and D_A.arch == DiscriminatorArch(ndf=4, n_layers=2)
    assert not torch.equal(D_A.model[0].weight, D_B.model[0].weight)
    again = _discriminators(paths, cfg)[0]
    assert all(torch.equal(a, b) for a, b in zip(D_A.state_dict().values(), again.state_dict().values()))
    other = _discriminators(paths, config_from_dict({"seed": 4, "model": {"ndf": 4, "n_layers_d": 2}}))[0]
    assert not torch.equal(D_A.model[0].weight, other.model[0].weight)
    # the reference N(0, 0.02) initialisation, biases zero
    w, b = D_A.model[0].weight.detach(), D_A.model[0].bias.detach()
    assert abs(float(w.std()) - 0.02) < 0.01 and float(b.abs().max()) == 0


# ----------------------------------------------------------------------------- whole jobs
TINY = {
    "seed": 0,
    "data": {"synthetic": False, "load_size": 32, "crop_size": 32, "val_fraction": 0.25},
    "model": {"ngf": 4, "n_blocks": 2, "ndf": 4},
    "search": {"population": 4, "generations": 1, "eval_images": 3, "eval_size": 32, "macs_ratio": 0.5},
    "finetune": {"epochs": 1, "epochs_decay": 0, "max_steps_per_epoch": 2, "log_every": 1, "pool_size": 2,
                 "sample_images": 2},
    "export": {"formats": ["safetensors"], "check_size": 40},
    "bench": {"size": 32, "warmup": 1, "repeats": 1, "threads": 1},
}


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    root = tmp_path_factory.mktemp("g_only")
    data = make_image_folder(root / "data", n=8, size=32)
    cfg = root / "tiny.yaml"
    cfg.write_text(yaml.safe_dump({**TINY, "data": {**TINY["data"], "root": str(data)}}))
    return {"root": root, "config": cfg, "folder": reference_pair(root / "ref"),
            "files": official_files(root / "official")}


@pytest.mark.parametrize("form", ["folder", "files"])
def test_compress_a_teacher_without_discriminators(job, form, capsys):
    from coevo.config import load_config
    from coevo.evaluation.report import build_report

    out = job["root"] / f"run_{form}"
    teacher = (["--teacher", str(job["folder"])] if form == "folder" else
               ["--teacher-ab", str(job["files"][0]), "--teacher-ba", str(job["files"][1])])
    argv = ["compress", "--config", str(job["config"]), "--out", str(out), *teacher]
    assert main(argv) == 0, capsys.readouterr().err
    capsys.readouterr()
    saved = json.loads((out / "teacher" / "teacher.json").read_text())
    assert set(saved) == {"G_A", "G_B"}
    assert json.loads((out / "search" / "teacher.json").read_text()) == saved
    assert json.loads((out / "search" / "search.json").read_text())["metric"] == "teacher-features"
    assert json.loads((out / "finetune" / "finetune.json").read_text())["discriminators"] == "fresh"
    # a resume needs no teacher flags: teacher.json names the files
    assert main(["compress", "--config", str(job["config"]), "--out", str(out), "--resume"]) == 0
    assert "done in" not in capsys.readouterr().out  # every stage skipped
    report = build_report(out, load_config(out / "config.yaml"))
    assert report["search_metric"] == "teacher-features" and report["finetune_discriminators"] == "fresh"
    assert report["directions"]["AtoB"]["perceptual_metric"] == "teacher-features"
    md = (out / "report.md").read_text()
    assert "generators only" in md and "`teacher-features`" in md and "fresh discriminators" in md


def test_explicit_discriminator_metric_without_discriminators_is_one_clean_error(job, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["search", "--config", str(job["config"]), "--teacher", str(job["folder"]), "--out", str(out),
                 "--no-progress", "--set", "search.perceptual=discriminator"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("coevo search: error: ") and "auto, lpips, teacher-features or l1" in err
    assert not (out / "history.jsonl").exists()
    code = main(["compress", "--config", str(job["config"]), "--teacher", str(job["folder"]),
                 "--out", str(tmp_path / "c"), "--set", "search.perceptual=discriminator"])
    assert code == 2 and "teacher-features" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_search_with_two_files_resumes_with_no_flags(job, tmp_path, capsys):
    from coevo.config import load_config

    out = tmp_path / "search"
    cfg = load_config(job["config"], ["search.generations=2"])
    run_search(cfg, out, teacher=resolve_teacher(g_ab=job["files"][0], g_ba=job["files"][1]), progress=False,
               stop_after=1)
    assert main(["search", "--out", str(out), "--resume", "--no-progress"]) == 0
    summary = json.loads((out / "search.json").read_text())
    assert summary["generations"] == 2 and summary["metric"] == "teacher-features"
    assert summary["teacher"]["G_A"] == str(job["files"][0].resolve()) and "D_A" not in summary["teacher"]
