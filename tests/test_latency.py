"""Latency lookup tables: interpolation, the MacTable-like interface, files, mismatch errors (no timing asserts)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from coevo.latency import LatencyTable, LatencyTableError, _grid, measure_table
from coevo.models.generator import GeneratorArch, group_names


@pytest.fixture(scope="module")
def table():
    return measure_table(GeneratorArch.full(ngf=4, n_blocks=2), size=16, points=2, warmup=0, repeats=1)


def widths_of(arch):
    return np.array([[arch.widths[n] for n in group_names(arch.n_blocks)]])


def test_grid_spans_one_to_full_in_multiples_of_8_when_wide():
    assert _grid(256, 4) == [1, 64, 128, 192, 256]
    assert _grid(6, 3) == [1, 2, 4, 6]


def test_full_network_is_predicted_as_measured_by_construction(table):
    teacher = GeneratorArch.from_dict(table.teacher)
    units = table.predict(teacher) - table.offset_ms
    assert units > 0
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
