"""Latency lookup tables: interpolation, the MacTable-like interface, files, mismatch errors (no timing asserts)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from coevo.deploy.latency import LatencyTable, LatencyTableError, _grid, measure_table
from coevo.models.generator import GeneratorArch, group_names


@pytest.fixture(scope="module")
def table():
    return measure_table(GeneratorArch.full(ngf=4, n_blocks=2), size=16, points=2, warmup=0, repeats=1)


def widths_of(arch):
    return np.array([[arch.widths[n] for n in group_names(arch.n_blocks)]])


def test_grid_spans_one_to_full_in_multiples_of_8_when_wide():
    assert _grid(256, 4) == [1, 64, 128, 192, 256]
    assert _grid(6, 3) == [1, 2, 4, 6]


def test_prediction_is_the_calibrated_sum_of_units(table):
    teacher = GeneratorArch.from_dict(table.teacher)
    units = float(table.unit_sum(widths_of(teacher))[0])
    assert units > 0
    assert table.predict(teacher) == pytest.approx(table.scale * units + table.offset_ms)
    # on grid points the interpolation returns the measured value itself
    kind = "down1"
    g = table.grids[kind]
    assert table._interp(kind, np.array(g["cin"][-1]), np.array(g["cout"][0])) == pytest.approx(table.ms[kind][-1][0])


def test_vectorised_call_matches_predict(table):
    teacher = GeneratorArch.from_dict(table.teacher)
    rng = np.random.default_rng(0)
    archs = [teacher.with_widths({n: int(rng.integers(1, w + 1)) for n, w in teacher.widths.items()})
             for _ in range(5)]
    batch = np.concatenate([widths_of(a) for a in archs])
    assert np.allclose(table(batch), [table.predict(a) for a in archs])


def test_save_load_and_mismatch(table, tmp_path):
    path = table.save(tmp_path / "t.json")
    again = LatencyTable.load(path)
    assert again.predict(GeneratorArch.from_dict(table.teacher)) == pytest.approx(
        table.predict(GeneratorArch.from_dict(table.teacher)))
    assert again.machine["cpu"]
    with pytest.raises(LatencyTableError, match="ngf 4, 2-block"):
        table.predict(GeneratorArch.full(ngf=8, n_blocks=2))
    (tmp_path / "bad.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(LatencyTableError, match="not a coevo latency table"):
        LatencyTable.load(tmp_path / "bad.json")
    (tmp_path / "cut.json").write_text(path.read_text()[:50])
    with pytest.raises(LatencyTableError, match="measure it again"):
        LatencyTable.load(tmp_path / "cut.json")


def test_bad_targets_and_sizes():
    with pytest.raises(LatencyTableError, match="target"):
        measure_table(GeneratorArch.full(ngf=4, n_blocks=1), size=16, target="tpu")
    with pytest.raises(LatencyTableError, match="multiple of 4"):
        measure_table(GeneratorArch.full(ngf=4, n_blocks=1), size=30)


def synthetic_table(arch: GeneratorArch, size: int = 32) -> LatencyTable:
    """A latency table from a formula (0.05 ms + 1e-3 ms per channel pair): the search's logic, no timing."""
    from coevo.deploy.latency import _grid

    full = arch.widths
    inner = max(full[f"block{i}.inner"] for i in range(arch.n_blocks))
    spans = {"stem": ([3], _grid(full["stem"], 3)), "down1": (_grid(full["stem"], 3), _grid(full["down1"], 3)),
             "down2": (_grid(full["down1"], 3), _grid(full["trunk"], 3)),
             "block_in": (_grid(full["trunk"], 3), _grid(inner, 3)),
             "block_out": (_grid(inner, 3), _grid(full["trunk"], 3)),
             "up1": (_grid(full["trunk"], 3), _grid(full["up1"], 3)),
             "up2": (_grid(full["up1"], 3), _grid(full["up2"], 3)), "head": (_grid(full["up2"], 3), [3])}
    return LatencyTable("cpu", 1, size, 1, arch.to_dict(),
                        {k: {"cin": a, "cout": b} for k, (a, b) in spans.items()},
                        {k: [[0.05 + 1e-3 * i * o for o in b] for i in a] for k, (a, b) in spans.items()})


def test_latency_budget_search_keeps_every_genome_under_the_predicted_cap(tmp_path):
    import torch

    from coevo.config import config_from_dict
    from coevo.models import DiscriminatorArch, NLayerDiscriminator, ResnetGenerator, save_discriminator
    from coevo.models.io import save_generator
    from coevo.search import run_search

    from conftest import make_image_folder

    data = make_image_folder(tmp_path / "data", n=4, size=32)
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    torch.manual_seed(0)
    arch = GeneratorArch.full(ngf=4, n_blocks=2)
    for g in ("G_A", "G_B"):
        save_generator(ResnetGenerator(arch), teacher / f"{g}.pt")
    for d in ("D_A", "D_B"):
        save_discriminator(NLayerDiscriminator(DiscriminatorArch(ndf=4)), teacher / f"{d}.pt")
    table = synthetic_table(arch)
    table_file = table.save(tmp_path / "table.json")
    cfg = config_from_dict({
        "data": {"root": str(data), "synthetic": False, "load_size": 32, "crop_size": 32},
        "search": {"population": 4, "generations": 2, "eval_images": 2, "eval_size": 32, "compute": "latency",
                   "latency_ratio": 0.5, "latency_table": str(table_file)}})
    result = run_search(cfg, tmp_path / "run", teacher=teacher, progress=False)
    lat = result.summary["latency"]
    assert lat["budget_ms"] == pytest.approx(0.5 * table.predict(arch))
    for d in ("G_A", "G_B"):
        best = result.summary["best"][d]
        assert best["predicted_ms"] <= lat["budget_ms"] + 1e-9
        assert best["predicted_ms"] == pytest.approx(table.predict(arch.with_widths(best["widths"])))
        assert best["macs"] > 0  # MACs stay reported
    # an impossible latency budget fails before any evaluation, naming the keys to change
    from coevo.prune import BudgetError

    cfg.search.latency_ms = 1e-6
    with pytest.raises(BudgetError, match="search.latency_ratio"):
        run_search(cfg, tmp_path / "run2", teacher=teacher, progress=False)


def test_cli_measures_a_table_into_the_search_cache(tmp_path, monkeypatch, capsys):
    from coevo.cli import main
    from coevo.deploy.latency import cache_path
    from coevo.models import ResnetGenerator
    from coevo.models.io import save_generator

    monkeypatch.setenv("COEVO_CACHE", str(tmp_path / "cache"))
    arch = GeneratorArch.full(ngf=4, n_blocks=1)
    save_generator(ResnetGenerator(arch), tmp_path / "G.pt")
    assert main(["bench", "--latency-table", "--model", str(tmp_path / "G.pt"), "--size", "16", "--threads", "1",
                 "--out", str(tmp_path / "out")]) == 0
    cached = cache_path(arch, 16, "cpu", 1)
    assert cached.is_file() and (tmp_path / "out" / cached.name).is_file()
    assert LatencyTable.load(cached).predict(arch) > 0


def test_onnxruntime_target_measures_every_unit_in_onnx_runtime(monkeypatch):
    """target onnxruntime: units and calibration networks are exported and timed by ONNX Runtime (not eager)."""
    pytest.importorskip("onnxruntime")
    import coevo.deploy.backends as backends

    calls = []
    real = backends._ort_call
    monkeypatch.setattr(backends, "_ort_call", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    arch = GeneratorArch.full(ngf=4, n_blocks=1)
    t = measure_table(arch, size=16, target="onnxruntime", threads=1, points=1, warmup=0, repeats=1, calibration=1)
    units = sum(len(g["cin"]) * len(g["cout"]) for g in t.grids.values())
    assert t.target == "onnxruntime" and t.threads == 1 and len(calls) == units + 5  # + teacher, 3 narrowed, 1 random
    assert t.predict(arch) > 0


def test_config_accepts_the_onnxruntime_latency_target():
    from coevo.config import ConfigError, config_from_dict

    assert config_from_dict({"search": {"latency_target": "onnxruntime"}}).search.latency_target == "onnxruntime"
    with pytest.raises(ConfigError, match="latency_target"):
        config_from_dict({"search": {"latency_target": "tpu"}})
