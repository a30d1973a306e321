"""Latency benchmark: interleaving, baselines, reports. Tiny models, few repeats."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from coevo import save_generator
from coevo.deploy.bench import BenchResult, benchmark_models, format_table, machine_info, plot_results, save_results
from coevo.cli import main
from coevo.models import GeneratorArch, ResnetGenerator


class Recorder(nn.Module):
    """Wraps a generator and logs its name on every call, to observe the timing order."""

    def __init__(self, name: str, inner: ResnetGenerator, log: list) -> None:
        super().__init__()
        self.name, self.inner, self.log, self.arch = name, inner, log, inner.arch

    def forward(self, x):
        self.log.append(self.name)
        return self.inner(x)


@pytest.fixture
def pair(tiny_generator):
    small = ResnetGenerator(GeneratorArch.full(ngf=2, n_blocks=1)).eval()
    return {"full": tiny_generator, "small": small}


def test_interleaved_rotating_order(pair):
    calls: list = []
    models = {n: Recorder(n, m, calls) for n, m in [("a", pair["full"]), ("b", pair["small"]),
                                                      ("c", pair["full"])]}
    results = benchmark_models(models, size=32, warmup=1, repeats=3)
    assert calls[:6] == ["a", "b", "c"] * 2  # the image-to-image check of each model, then a warm-up round
    assert calls[6:] == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert [r.name for r in results] == ["a", "b", "c"]
    assert all(len(r.latencies) == 3 for r in results)


def test_results_fields_and_reports(pair, tmp_path):
    torch.set_num_threads(2)
    results = benchmark_models(pair, size=32, warmup=1, repeats=3, threads=1,
                               backends=("eager", "torchscript"))
    assert [(r.name, r.backend) for r in results] == [("full", "eager"), ("full", "torchscript"),
                                                      ("small", "eager"), ("small", "torchscript")]
    assert torch.get_num_threads() == 2  # the caller's setting is restored
    for r in results:
        assert isinstance(r, BenchResult) and r.latency_ms_median > 0 and r.latency_ms_p90 >= r.latency_ms_median
        assert r.threads == 1 and r.peak_mem_mb is None  # not measured on CPU
    assert results[0].speedup_vs_first == 1.0 and results[1].speedup_vs_first == 1.0
    full = results[0]
    assert full.params == sum(p.numel() for p in pair["full"].parameters())
    assert full.macs_published > full.macs_flopcounter > results[2].macs_published

    table = format_table(results)
    assert "published convention" in table and "| small | torchscript |" in table
    path = save_results(results, tmp_path / "bench.json", machine_info())
    data = json.loads(path.read_text())
    assert data["machine"]["torch"] == torch.__version__ and data["machine"]["cores_logical"] >= 1
    assert set(data["conventions"]["macs"]) == {"published", "flopcounter"}
    assert data["results"][3]["latencies"] == results[3].latencies
    png = plot_results(results, tmp_path / "bench.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_bench_files_and_exported_models(pair, tmp_path, capsys):
    from coevo.deploy.export import save_onnx

    full = save_generator(pair["full"], tmp_path / "full.pt")
    onnx = tmp_path / "small.onnx"
    save_onnx(pair["small"], onnx, exporter="legacy", arch=pair["small"].arch)
    out = tmp_path / "bench"
    assert main(["bench", "--model", f"teacher={full}", "--model", str(onnx), "--size", "32",
                 "--repeats", "2", "--warmup", "1", "--threads", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| teacher | eager |" in printed and "| small.onnx | onnxruntime |" in printed
    data = json.loads((out / "bench.json").read_text())
    assert [r["backend"] for r in data["results"]] == ["eager", "onnxruntime"]
    assert data["results"][1]["macs_published"] is not None  # arch read from the ONNX metadata
    assert (out / "bench.png").exists()
    assert main(["bench", "--model", str(full), "--backend", "tensorrt", "--out", str(out)]) == 2


def test_bad_arguments(pair):
    with pytest.raises(ValueError, match="unknown backends"):
        benchmark_models(pair, backends=("tvm",))
    with pytest.raises(ValueError, match="multiple of 4"):
        benchmark_models(pair, size=30)


def test_bench_labels_files_of_one_name_by_their_folders():
    from coevo.cli.bench import _named

    named = _named(["runs/teacher/G_A.pt", "runs/finetune/G_A.pt", "x/G_B.pt", "slim=y/G_A.pt"])
    assert list(named) == ["teacher/G_A.pt", "finetune/G_A.pt", "G_B.pt", "slim"]
    assert list(_named(["a/G_A.pt", "a/G_A.pt"])) == ["G_A.pt", "G_A.pt (2)"]  # one file given twice
