"""Deployment per target: torch.export programs, INT8 ONNX with its quality check, the CUDA runner's fallback,
benchmark backends and speed-ups. Tiny models, tiny folders, CPU only (one gpu-marked test)."""
from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

import coevo.deploy.quantize as quantize
from coevo import load_generator
from coevo.deploy.backends import allowed_backends, backends_for, unavailable_reason
from coevo.deploy.bench import BenchResult, add_speedups, benchmark_models
from coevo.cli import main
from coevo.deploy.targets import DeployData, deployed_artifact, export_for_target, find_deploy_data, input_domain
from coevo.deploy.export import check_inputs, export_generator, save_torch_export
from coevo.models import GeneratorArch, ResnetGenerator
from coevo.deploy.cuda_runner import PARITY_TOLERANCE, CudaRunner
from coevo.deploy.exported import ExportedProgramGenerator, OnnxGenerator, UnsafeExportError, check_pt2_archive

from conftest import make_image_folder


@pytest.fixture
def slim_generator() -> ResnetGenerator:
    widths = {"stem": 3, "down1": 7, "trunk": 5, "block0.inner": 2, "block1.inner": 9, "up1": 6, "up2": 1}
    torch.manual_seed(1)
    return ResnetGenerator(GeneratorArch(ngf=4, n_blocks=2, widths=widths)).eval()


@pytest.fixture
def data_root(tmp_path):
    """A data set with ground truth: trainA/trainB/testA/testB and testA_gt_B/testB_gt_A (random images)."""
    return make_image_folder(tmp_path / "data", n=4, size=32,
                             splits=("trainA", "trainB", "testA", "testB", "testA_gt_B", "testB_gt_A"))


# ----------------------------------------------------------------------------- torch.export
def test_pt2_round_trip_is_dynamic_and_keeps_arch(slim_generator, tmp_path):
    report = export_generator(slim_generator, tmp_path, "G_A", formats=("torch-export",), check_size=48)["torch-export"]
    assert report["ok"] and report["dynamic"] and report["max_abs_diff"] <= 1e-4
    assert report["check_shapes"] == ["1x3x48x48", "2x3x32x48"]  # two shapes, one program
    model = load_generator(tmp_path / "G_A.pt2", trust=True)
    assert isinstance(model, ExportedProgramGenerator) and model.arch == slim_generator.arch
    x = check_inputs(40, seed=3)[1]  # 2 x 3 x 28 x 40: a third shape
    with torch.inference_mode():
        assert (model.eval()(x) - slim_generator(x)).abs().max().item() <= 1e-4


def _rewrite_member(path, suffix, edit):
    """Copy the zip at ``path`` with the member ending in ``suffix`` replaced by ``edit(text)``."""
    out = path.with_name("tampered.pt2")
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename.endswith(suffix):
                data = edit(data.decode()).encode()
            dst.writestr(info, data)
    return out


def test_pt2_archive_check_refuses_what_would_run_code(tiny_generator, tmp_path):
    path = tmp_path / "g.pt2"
    save_torch_export(tiny_generator, path)
    check_pt2_archive(path)  # coevo's own export passes
    model_json = next(n for n in zipfile.ZipFile(path).namelist() if "/models/" in n and n.endswith(".json"))
    member = model_json.split("/", 1)[1]
    calls_os = _rewrite_member(path, member, lambda t: t.replace("torch.ops.aten.conv2d.default",
                                                                 "torch.os.system", 1))
    with pytest.raises(UnsafeExportError, match="torch.os.system"):
        load_generator(calls_os, trust=True)
    pickled = _rewrite_member(path, "weights_config.json", lambda t: t.replace('"use_pickle": false',
                                                                             '"use_pickle": true', 1))
    with pytest.raises(UnsafeExportError, match="pickled"):
        load_generator(pickled, trust=True)
    guarded = _rewrite_member(path, member, lambda t: t.replace('"guards_code": []',
                                                                '"guards_code": ["__import__(\'os\')"]'))
    with pytest.raises(UnsafeExportError, match="guard code"):
        load_generator(guarded, trust=True)
    expr = _rewrite_member(path, member, lambda t: t.replace("Symbol('s", "__import__('s", 1))
    with pytest.raises(UnsafeExportError, match="shape expression"):
        load_generator(expr, trust=True)


# ----------------------------------------------------------------------------- cpu target: INT8
def test_find_deploy_data(data_root, tmp_path):
    a = find_deploy_data(data_root, "G_A")
    assert (a.calibration.name, a.test.name, a.ground_truth.name) == ("trainA", "testA", "testA_gt_B")
    assert find_deploy_data(data_root, "latest_net_G_B").calibration.name == "trainB"
    assert input_domain("coevo") is None and find_deploy_data(data_root, "coevo") == DeployData()
    assert find_deploy_data(data_root / "testA", "anything") == DeployData(calibration=data_root / "testA")
    assert find_deploy_data(None, "G_A") == DeployData()


def test_narrow_convs_are_the_image_facing_ones(tiny_generator, tmp_path):
    import onnx

    from coevo.deploy.export import save_onnx

    save_onnx(tiny_generator, tmp_path / "g.onnx", exporter="legacy")
    model = onnx.load(str(tmp_path / "g.onnx"))
    convs = [n.name for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose")]
    narrow = quantize.narrow_convs(model, 4)  # ngf 4: only the stem (3 in) and head (3 out) have fewer
    assert narrow == [convs[0], convs[-1]]
    assert quantize.narrow_convs(model, 1) == []


def _int8_timing(monkeypatch, fp32_ms: float, int8_ms: float):
    """Which of fp32 and INT8 is faster depends on the machine: the tests choose it."""
    import coevo.deploy.targets as targets

    calls = []

    def medians(paths, side, channels, threads):
        calls.append((sorted(paths), side, channels))
        return {"fp32": fp32_ms, "int8": int8_ms}

    monkeypatch.setattr(targets, "onnx_medians", medians)
    return calls


def test_int8_passes_its_check_and_is_deployed(slim_generator, data_root, tmp_path, monkeypatch):
    timing = _int8_timing(monkeypatch, fp32_ms=2.0, int8_ms=1.0)
    monkeypatch.setattr(quantize, "MIN_PSNR_VS_FP32_DB", 0.0)  # a tiny random model: test the logic, not the net
    monkeypatch.setattr(quantize, "MAX_GT_DROP_DB", 100.0)
    monkeypatch.setattr(quantize, "MIN_INT8_CHANNELS", 0)  # quantise every conv of these 1-9 channel layers
    report = export_for_target(slim_generator, tmp_path, "G_A", target="cpu", data=find_deploy_data(data_root, "G_A"),
                               formats=("onnx",), check_size=48, calibration_images=3)
    int8 = report["deploy"]["int8"]
    assert int8["ok"] and int8["calibration"]["calibration_inputs"] == 3
    assert int8["calibration"]["format"] == "QDQ" and int8["calibration"]["per_channel"]
    assert int8["calibration"]["fp32_nodes"] == []
    q = int8["quality"]
    assert q["n_images"] == 4 and q["ground_truth"].endswith("testA_gt_B") and q["gt_drop_db"] is not None
    assert deployed_artifact(tmp_path, "G_A") == report["deploy"]["deployed"]
    assert report["deploy"]["deployed"]["backend"] == "onnxruntime-int8"
    assert int8["faster"] and int8["speed_ms"] == {"fp32": 2.0, "int8": 1.0} and timing == [(["fp32", "int8"], 256, 3)]
    model = load_generator(tmp_path / "G_A.int8.onnx")
    assert isinstance(model, OnnxGenerator) and model.precision == "int8" and model.arch == slim_generator.arch
    x = check_inputs(48)[1]
    with torch.inference_mode():
        assert model(x).shape == x.shape


def test_int8_that_passes_but_is_slower_is_not_deployed(slim_generator, data_root, tmp_path, monkeypatch):
    _int8_timing(monkeypatch, fp32_ms=1.0, int8_ms=1.5)
    monkeypatch.setattr(quantize, "MIN_PSNR_VS_FP32_DB", 0.0)
    monkeypatch.setattr(quantize, "MAX_GT_DROP_DB", 100.0)
    report = export_for_target(slim_generator, tmp_path, "G_A", target="cpu", data=find_deploy_data(data_root, "G_A"),
                               formats=("onnx",), check_size=48, calibration_images=2)
    deploy = report["deploy"]
    assert deploy["int8"]["ok"] and not deploy["int8"]["faster"]
    assert deploy["deployed"]["precision"] == "fp32" and deployed_artifact(tmp_path, "G_A") == deploy["deployed"]
    assert (tmp_path / "G_A.int8.onnx").is_file()  # kept, not deployed


def test_onnx_medians_times_every_file(tiny_generator, tmp_path):
    from coevo.deploy.export import save_onnx
    from coevo.deploy.targets import onnx_medians

    save_onnx(tiny_generator, tmp_path / "g.onnx", exporter="legacy")
    ms = onnx_medians({"a": tmp_path / "g.onnx", "b": tmp_path / "g.onnx"}, 32, 3, 1)
    assert set(ms) == {"a", "b"} and all(v > 0 for v in ms.values())


def test_int8_that_misses_the_bound_falls_back_to_fp32(slim_generator, data_root, tmp_path, monkeypatch):
    monkeypatch.setattr(quantize, "MIN_PSNR_VS_FP32_DB", 200.0)  # no INT8 model reaches it
    report = export_for_target(slim_generator, tmp_path, "G_A", target="cpu", data=find_deploy_data(data_root, "G_A"),
                               formats=("onnx",), check_size=48, calibration_images=2)
    deploy = json.loads((tmp_path / "export_report.json").read_text())["G_A"]["deploy"]
    assert deploy == json.loads(json.dumps(report["deploy"]))
    assert not deploy["int8"]["ok"] and "PSNR to the fp32 output" in deploy["int8"]["reasons"][0]
    assert deploy["deployed"] == {"format": "onnx", "path": str(tmp_path / "G_A.onnx"), "backend": "onnxruntime",
                                  "precision": "fp32"}
    assert (tmp_path / "G_A.int8.onnx").is_file()  # kept for inspection, not deployed


def test_cpu_target_without_calibration_deploys_fp32(tiny_generator, tmp_path):
    deploy = export_for_target(tiny_generator, tmp_path, "G", target="cpu", formats=("onnx",), check_size=48)["deploy"]
    assert deploy["deployed"]["precision"] == "fp32" and "--calibration" in deploy["int8"]["skipped"]
    nothing = export_for_target(tiny_generator, tmp_path / "st", "G", formats=("safetensors",), check_size=48)
    assert nothing["deploy"]["deployed"] is None and "onnx" in nothing["deploy"]["skipped"]


def test_cli_export_calibrates_a_single_file(tiny_generator, data_root, tmp_path, capsys, monkeypatch):
    from coevo import save_generator

    _int8_timing(monkeypatch, fp32_ms=2.0, int8_ms=1.0)

    monkeypatch.setattr(quantize, "MIN_PSNR_VS_FP32_DB", 0.0)
    monkeypatch.setattr(quantize, "MAX_GT_DROP_DB", 100.0)
    ckpt = save_generator(tiny_generator, tmp_path / "G_B.pt")
    out = tmp_path / "out"
    assert main(["export", "--run", str(ckpt), "--out", str(out), "--calibration", str(data_root),
                 "--calibration-images", "2", "--check-size", "48", "--onnx-exporter", "legacy"]) == 0
    printed = capsys.readouterr().out
    assert "G_B: deploy G_B.int8.onnx (int8, bench backend onnxruntime-int8); INT8 passes" in printed
    assert {p.name for p in out.iterdir()} >= {"G_B.pt2", "G_B.onnx", "G_B.int8.onnx", "G_B.safetensors"}
    assert not (out / "G_B.ts").exists()  # TorchScript only on request
    assert main(["export", "--run", str(ckpt), "--out", str(tmp_path / "o2"), "--formats", "onnx",
                 "--check-size", "48", "--onnx-exporter", "legacy"]) == 0
    assert "INT8 is skipped and fp32 ONNX is deployed" in capsys.readouterr().out


# ----------------------------------------------------------------------------- cuda target, on a CPU
def test_cuda_target_builds_a_float16_program_and_checks_its_parity(slim_generator, tmp_path):
    deploy = export_for_target(slim_generator, tmp_path, "G_A", target="cuda", formats=("torch-export",),
                               check_size=48)["deploy"]
    fast = deploy["fast"]
    assert fast["dtype"] == "float16" and fast["channels_last"] and fast["dynamic"]
    assert fast["parity"]["measured_on"] == ("cuda" if torch.cuda.is_available() else "cpu")
    tol = PARITY_TOLERANCE[torch.float16]
    assert fast["parity"]["tolerance"] == {"max_abs_diff": tol[0], "mean_abs_diff": tol[1]}
    assert fast["parity"]["ok"] and deploy["deployed"]["backend"] == "cuda-fp16-graph"
    program = load_generator(tmp_path / "G_A.fp16.pt2", trust=True)
    assert program.dtype == torch.float16 and program.channels_last and program.arch == slim_generator.arch
    x = check_inputs(48)[0]
    with torch.inference_mode():
        y = program(x)
    assert y.dtype == torch.float32 and (y - slim_generator(x)).abs().max().item() <= tol[0]


def test_cuda_runner_falls_back_to_the_module_on_cpu(tiny_generator, caplog):
    runner = CudaRunner(tiny_generator, mode="graph")
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.inference_mode(), caplog.at_level("INFO", logger="coevo.deploy.cuda_runner"):
        assert torch.equal(runner(x), tiny_generator(x)) and torch.equal(runner(x), tiny_generator(x))
    assert sum("not CUDA" in r.message for r in caplog.records) == 1  # said once
    assert runner.arch == tiny_generator.arch and runner.eval() is runner
    with pytest.raises(ValueError, match="mode"):
        CudaRunner(tiny_generator, mode="tensorrt")


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["graph", "compile"])
def test_cuda_runner_matches_fp32_on_a_gpu(slim_generator, mode):
    """Skipped without CUDA; benchmarks/gpu_check.sh runs it on a GPU machine."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    runner = CudaRunner(slim_generator, dtype=torch.float16, mode=mode)
    tol_max, tol_mean = PARITY_TOLERANCE[torch.float16]
    with torch.inference_mode():
        for x in check_inputs(48):
            ref = slim_generator(x)
            for _ in range(3):  # capture / compile, then replays: each output its own tensor
                out = runner(x.cuda())
            d = (out.cpu() - ref).abs()
            assert out.dtype == torch.float32 and d.max() <= tol_max and d.mean() <= tol_mean


# ----------------------------------------------------------------------------- bench
def test_backend_choice_for_exported_files(slim_generator, tmp_path):
    from coevo.deploy.export import save_onnx

    save_onnx(slim_generator, tmp_path / "g.onnx", exporter="legacy")
    fp32 = load_generator(tmp_path / "g.onnx")
    assert allowed_backends(slim_generator) is None
    assert allowed_backends(fp32) == ("onnxruntime", "onnxruntime-int8")
    assert backends_for("g", fp32, ["eager", "onnxruntime-int8"], "cpu") == ["onnxruntime-int8"]
    assert backends_for("g", fp32, ["eager"], "cpu") == ["onnxruntime"]
    save_torch_export(slim_generator, tmp_path / "h.pt2", dtype=torch.float16, channels_last=True)
    fp16 = load_generator(tmp_path / "h.pt2", trust=True)
    assert backends_for("h", fp16, ["eager"], "cpu") == ["torch-export"]  # its CUDA default cannot run here
    assert backends_for("h", fp16, ["eager"], "cuda") == ["cuda-fp16-graph"]
    assert "CUDA" in unavailable_reason("cuda-fp16-graph", "cpu")
    assert "CPU only" in unavailable_reason("onnxruntime-int8", "cuda")
    assert unavailable_reason("onnxruntime-int8", "cpu") is None


def _result(name, backend, ms):
    return BenchResult(name=name, backend=backend, params=None, macs_published=None, macs_flopcounter=None,
                       latency_ms_median=ms, latency_ms_p90=ms, latencies=[ms], peak_mem_mb=None, speedup_vs_first=0)


def test_speedups_against_the_teacher_in_eager_and_on_the_same_backend():
    rows = add_speedups([_result("teacher", "eager", 100.0), _result("teacher", "onnxruntime-int8", 20.0),
                         _result("coevo", "eager", 25.0), _result("coevo int8", "onnxruntime-int8", 10.0),
                         _result("other", "torch-export", 50.0)])
    assert [r.speedup_vs_first for r in rows] == [1.0, 1.0, 4.0, 2.0, 1.0]  # torch-export: no teacher row
    assert [r.speedup_vs_first_eager for r in rows] == [1.0, 5.0, 4.0, 10.0, 2.0]
    assert {r.baseline for r in rows} == {"teacher"}
    no_eager = add_speedups([_result("teacher", "onnxruntime", 8.0), _result("coevo", "onnxruntime", 2.0)])
    assert no_eager[1].speedup_vs_first == 4.0 and no_eager[1].speedup_vs_first_eager is None


def test_bench_times_int8_on_the_fly_and_int8_files_natively(slim_generator, tiny_generator, data_root, tmp_path,
                                                             monkeypatch):
    monkeypatch.setattr(quantize, "MIN_PSNR_VS_FP32_DB", 0.0)
    monkeypatch.setattr(quantize, "MAX_GT_DROP_DB", 100.0)
    export_for_target(slim_generator, tmp_path, "G_A", target="cpu", data=find_deploy_data(data_root, "G_A"),
                      formats=("onnx",), check_size=48, calibration_images=2)
    results = benchmark_models({"teacher": tiny_generator, "coevo": tmp_path / "G_A.int8.onnx"}, size=32,
                               warmup=1, repeats=2, threads=1, backends=("eager", "onnxruntime-int8"))
    assert [(r.name, r.backend) for r in results] == [("teacher", "eager"), ("teacher", "onnxruntime-int8"),
                                                      ("coevo", "onnxruntime-int8")]
    assert results[2].speedup_vs_first_eager == pytest.approx(results[0].latency_ms_median
                                                              / results[2].latency_ms_median)


def test_cli_bench_skips_cuda_backends_without_cuda(tiny_generator, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    from coevo import save_generator

    model = save_generator(tiny_generator, tmp_path / "g.pt")
    out = tmp_path / "bench"
    assert main(["bench", "--model", str(model), "--backend", "eager,cuda-fp16-graph", "--size", "32",
                 "--repeats", "1", "--warmup", "0", "--out", str(out)]) == 0
    assert "skipping backend cuda-fp16-graph: cuda-fp16-graph needs a CUDA device" in capsys.readouterr().err
    assert json.loads((out / "bench.json").read_text())["skipped_backends"].keys() == {"cuda-fp16-graph"}
    assert main(["bench", "--model", str(model), "--backend", "cuda-fp16-compiled", "--out", str(out)]) == 2


# ----------------------------------------------------------------------------- translate
def test_translate_runs_pt2_and_int8_exports(slim_generator, data_root, tmp_path, monkeypatch):
    monkeypatch.setattr(quantize, "MIN_PSNR_VS_FP32_DB", 0.0)
    monkeypatch.setattr(quantize, "MAX_GT_DROP_DB", 100.0)
    export_for_target(slim_generator, tmp_path / "exp", "G_A", target="cpu", data=find_deploy_data(data_root, "G_A"),
                      formats=("torch-export", "onnx"), check_size=48, calibration_images=2)
    outputs = {}
    for file in ("G_A.pt2", "G_A.int8.onnx"):
        out = tmp_path / file
        assert main(["translate", "--model", str(tmp_path / "exp" / file), "--input", str(data_root / "testA"),
                     "--output", str(out), "--batch", "3"]) == 0
        outputs[file] = [np.asarray(Image.open(p), int) for p in sorted(out.iterdir())]
    assert len(outputs["G_A.pt2"]) == 4 == len(outputs["G_A.int8.onnx"])
    eager = tmp_path / "eager"
    assert main(["translate", "--model", str(tmp_path / "exp" / "G_A.onnx"), "--input", str(data_root / "testA"),
                 "--output", str(eager)]) == 0
    for pt2, ref in zip(outputs["G_A.pt2"], sorted(eager.iterdir())):
        assert np.abs(pt2 - np.asarray(Image.open(ref), int)).max() <= 1


def test_int8_quantisation_writes_nothing_into_the_working_directory(tmp_path, monkeypatch):
    # ONNX Runtime's symbolic shape inference gives up on a U-Net's dynamic sides and then saves
    # sym_shape_infer_temp.onnx (+ external data) into the working directory: the user's folder
    pytest.importorskip("onnxruntime")
    from coevo.deploy.export import save_onnx
    from coevo.models.unet import UnetArch, UnetGenerator

    torch.manual_seed(0)
    fp32 = tmp_path / "m.onnx"
    save_onnx(UnetGenerator(UnetArch(num_downs=5, ngf=4, norm="instance")).eval(), fp32, exporter="legacy")
    cwd = tmp_path / "user folder"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    calib = [np.random.default_rng(0).uniform(-1, 1, (1, 3, 32, 32)).astype(np.float32)]
    quantize.quantize_int8(fp32, tmp_path / "int8.onnx", calib)
    assert list(cwd.iterdir()) == [] and (tmp_path / "int8.onnx").is_file()
