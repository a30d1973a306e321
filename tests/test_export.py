"""Exports reproduce the eager generator at sizes other than the training size, and reload with their arch."""
from __future__ import annotations

import json

import pytest
import torch

import coevo.deploy.export as export
from coevo import load_generator, save_generator
from coevo.cli import main
from coevo.deploy.export import ExportError, OnnxGenerator, check_inputs, export_generator, load_exported
from coevo.models import GeneratorArch, ResnetGenerator


@pytest.fixture
def slim_generator() -> ResnetGenerator:
    """Uneven widths, as a pruned generator has (built directly: no dependence on coevo.prune)."""
    widths = {"stem": 3, "down1": 7, "trunk": 5, "block0.inner": 2, "block1.inner": 9, "up1": 6, "up2": 1}
    torch.manual_seed(1)
    return ResnetGenerator(GeneratorArch(ngf=4, n_blocks=2, widths=widths)).eval()


def _assert_matches(model, reloaded, size=40):
    x = check_inputs(size, seed=3)[1]  # 2 x 3 x 28 x 40: non-square, not the 32-px training size
    with torch.inference_mode():
        assert (reloaded(x) - model(x)).abs().max().item() <= 1e-4


def test_slim_export_round_trip(slim_generator, tmp_path):
    report = export_generator(slim_generator, tmp_path, "G_A", check_size=48)
    assert set(report) == {"torch-export", "onnx", "safetensors"}  # TorchScript only on request
    assert all(e["ok"] and e["max_abs_diff"] <= 1e-4 for e in report.values())
    assert report["onnx"]["exporter"] in ("dynamo", "legacy")
    on_disk = json.loads((tmp_path / "export_report.json").read_text())
    assert on_disk["G_A"]["onnx"]["max_abs_diff"] == report["onnx"]["max_abs_diff"]
    for suffix in ("pt2", "onnx", "safetensors"):
        reloaded = load_generator(tmp_path / f"G_A.{suffix}")
        assert reloaded.arch == slim_generator.arch
        _assert_matches(slim_generator, reloaded)


def test_onnx_falls_back_to_legacy_exporter_and_reports_merge(tiny_generator, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("dynamo says no")

    monkeypatch.setattr(export, "_export_dynamo", broken)
    onnx_report = export_generator(tiny_generator, tmp_path, "G_B", formats=("onnx",), check_size=48)["onnx"]
    assert onnx_report["exporter"] == "legacy" and "dynamo says no" in onnx_report["fallback_reason"]
    assert onnx_report["opset"] == 17 and onnx_report["ok"]
    save_generator(tiny_generator, tmp_path / "G_B.pt")
    report = export_generator(tiny_generator, tmp_path, "other", formats=("torchscript",), check_size=48)
    assert json.loads((tmp_path / "export_report.json").read_text()).keys() == {"G_B", "other"}
    onnx_model = load_exported(tmp_path / "G_B.onnx", intra_op_num_threads=1)
    assert isinstance(onnx_model, OnnxGenerator) and onnx_model.arch == tiny_generator.arch
    assert onnx_model.providers == ["CPUExecutionProvider"]
    _assert_matches(tiny_generator, onnx_model)
    assert load_exported(report["torchscript"]["path"], trust=True).arch == tiny_generator.arch


def test_export_without_arch_metadata_loads_with_arch_none(tiny_generator, tmp_path):
    path = tmp_path / "plain.onnx"
    with export.quiet_export():
        torch.onnx.export(tiny_generator, (torch.zeros(1, 3, 32, 32),), str(path), dynamo=False,
                          input_names=["input"], output_names=["output"])
    assert load_generator(path).arch is None


def test_parity_failure_raises_with_numbers(tiny_generator, tmp_path, monkeypatch):
    real_load = export.load_exported

    class Off(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x) + 1e-3

    monkeypatch.setattr(export, "load_exported", lambda p, **kw: Off(real_load(p, **kw)))
    with pytest.raises(ExportError, match=r"torchscript max \|diff\| 1\.0\d*e-03"):
        export_generator(tiny_generator, tmp_path, "G_A", formats=("torchscript",), check_size=48)
    assert json.loads((tmp_path / "export_report.json").read_text())["G_A"]["torchscript"]["ok"] is False


def test_bad_arguments(tiny_generator, tmp_path):
    with pytest.raises(ValueError, match="unknown export formats"):
        export_generator(tiny_generator, tmp_path, "G", formats=("tflite",))
    with pytest.raises(ValueError, match="multiple of 4"):
        export_generator(tiny_generator, tmp_path, "G", check_size=50)


def test_cli_export_run_folder(tiny_generator, slim_generator, tmp_path, capsys):
    run = tmp_path / "finetune"
    save_generator(tiny_generator, run / "G_A.pt")
    save_generator(slim_generator, run / "G_B.pt")
    out = tmp_path / "export"
    argv = ["export", "--run", str(run), "--out", str(out), "--formats", "torchscript,onnx",
            "--check-size", "48", "--onnx-exporter", "legacy"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "G_A.onnx" in printed and "G_B.ts" in printed and "max |diff|" in printed
    assert {p.name for p in out.iterdir()} == {"G_A.ts", "G_A.onnx", "G_B.ts", "G_B.onnx", "export_report.json",
                                              ".coevo-run"}
    assert load_generator(out / "G_B.onnx").arch == slim_generator.arch
    assert main(argv) == 2  # non-empty --out without --force
    assert "--force" in capsys.readouterr().err
    assert main(argv[:5] + ["--formats", "safetensors", "--force"]) == 0
    assert {p.name for p in out.iterdir()} == {"G_A.safetensors", "G_B.safetensors", "export_report.json",
                                              ".coevo-run"}


def test_cli_export_reference_folder_skips_discriminators(tiny_generator, tmp_path):
    from coevo.models import DiscriminatorArch, NLayerDiscriminator

    ref = tmp_path / "ref"
    ref.mkdir()
    torch.save(tiny_generator.state_dict(), ref / "latest_net_G_A.pth")
    torch.save(NLayerDiscriminator(DiscriminatorArch(ndf=4)).state_dict(), ref / "latest_net_D_A.pth")
    out = tmp_path / "out"
    assert main(["export", "--run", str(ref), "--out", str(out), "--formats", "safetensors",
                 "--check-size", "48"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [".coevo-run", "export_report.json", "latest_net_G_A.safetensors"]


def test_export_options_are_built_once_from_the_config():
    from coevo.config import load_config
    from coevo.deploy.export import ExportOptions

    cfg = load_config(None, ["export.formats=onnx", "export.check_size=48", "seed=3", "bench.threads=2",
                             "export.int8=false"])
    assert ExportOptions.from_config(cfg, "cpu") == ExportOptions(
        formats=("onnx",), check_size=48, opset=cfg.export.opset, seed=3, target="cpu", int8=False, threads=2)


def _one_wide_slim(in_channels: int = 3) -> ResnetGenerator:
    """A teacher (ngf 4, 2 blocks) cut by a coevo.prune genome that keeps one filter of the trunk and of a block's
    inner group: the widths a random or aggressive pruning reaches."""
    from coevo.prune import Genome, slim

    torch.manual_seed(2)
    arch = GeneratorArch(ngf=4, n_blocks=2, in_channels=in_channels, out_channels=in_channels)
    teacher = ResnetGenerator(arch).eval()
    widths = arch.widths
    kept = {name: list(range(w)) for name, w in widths.items()}
    kept.update({"trunk": [5], "block0.inner": [2], "up2": [0]})
    return slim(teacher, Genome.from_kept(arch, kept)).eval()


@pytest.mark.parametrize("in_channels", [3, 1], ids=["rgb", "grayscale"])
def test_one_channel_groups_export_a_dynamic_pt2(in_channels, tmp_path):
    """A 1-wide group's InstanceNorm made torch.export keep guard code ("1 % (H/4) != 0"), which coevo's loaders
    refuse: the .pt2 must be dynamic, guard-free, and reproduce the eager network trusted and untrusted."""
    model = _one_wide_slim(in_channels)
    assert model.arch.widths["trunk"] == model.arch.widths["block0.inner"] == 1
    report = export_generator(model, tmp_path, "G", formats=("torch-export",), check_size=32)["torch-export"]
    assert report["ok"] and report["dynamic"] and report["static_shape"] is None
    g = torch.Generator().manual_seed(4)
    inputs = [torch.rand(1, in_channels, 32, 32, generator=g) * 2 - 1,
              torch.rand(2, in_channels, 24, 40, generator=g) * 2 - 1]
    trusted, untrusted = load_generator(tmp_path / "G.pt2", trust=True), load_generator(tmp_path / "G.pt2")
    assert untrusted.arch == trusted.arch == model.arch
    with torch.inference_mode():
        for x in inputs:
            for reloaded in (trusted, untrusted):
                assert (reloaded(x) - model(x)).abs().max().item() <= 1e-4


def test_pt2_with_guard_code_falls_back_to_a_static_program(tmp_path, monkeypatch, caplog):
    """Should torch still leave guard code in a dynamic program, the .pt2 is exported at the check shape (logged,
    recorded in the report) and a trusted run at another size is one line naming ONNX and the weights."""
    from coevo.deploy.exported import check_image_to_image
    from coevo.errors import CheckpointError

    monkeypatch.setattr(export, "export_friendly_norms", lambda model: 0)  # torch's own 1-channel InstanceNorm
    model = _one_wide_slim()
    with caplog.at_level("WARNING", logger="coevo.deploy.export"):
        report = export_generator(model, tmp_path, "G", formats=("torch-export",), check_size=32)["torch-export"]
    assert report["ok"] and not report["dynamic"] and report["static_shape"] == [1, 3, 32, 32]
    assert "guard code" in report["fallback_reason"] and report["check_shapes"] == ["1x3x32x32"]
    assert "ONNX" in caplog.text
    x = check_inputs(32, seed=5)[0]
    trusted = load_generator(tmp_path / "G.pt2", trust=True)
    with torch.inference_mode():
        assert (trusted(x) - model(x)).abs().max().item() <= 1e-4
        other = torch.zeros(1, 3, 40, 40)
        with pytest.raises(CheckpointError) as err:
            check_image_to_image(trusted, other, tmp_path / "G.pt2")
        assert len(str(err.value).splitlines()) == 1
        message = str(err.value)
        assert "1x3x32x32 inputs only" in message and "ONNX" in message and ".safetensors" in message
        untrusted = load_generator(tmp_path / "G.pt2")  # rebuilt from the weights: any size
        assert (untrusted(other) - model(other)).abs().max().item() <= 1e-4


def test_one_channel_float16_channels_last_program_stays_dynamic(tmp_path):
    """The CUDA target's float16 channels_last program: torch guards on a 1-channel group's channels_last strides,
    so the program is exported contiguous (still dynamic, recorded) rather than for one shape."""
    from coevo.deploy.export import save_torch_export

    model = _one_wide_slim()
    info = save_torch_export(model, tmp_path / "G.fp16.pt2", dtype=torch.float16, channels_last=True, example_size=32)
    assert info["dynamic"] and not info["channels_last"] and "guard code" in info["fallback_reason"]
    program = load_generator(tmp_path / "G.fp16.pt2", trust=True)
    assert program.dtype == torch.float16 and not program.channels_last
    x = check_inputs(40, seed=6)[1]
    with torch.inference_mode():
        assert (program(x) - model(x)).abs().max().item() < 0.05
