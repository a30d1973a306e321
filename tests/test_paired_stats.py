"""The evidence benchmark's statistics (benchmarks/paired_stats.py) on hand-made numbers."""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

SPEC = importlib.util.spec_from_file_location("paired_stats", Path(__file__).parents[1] / "benchmarks" /
                                              "paired_stats.py")
ps = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(ps)


def test_paired_t_and_interval_by_hand():
    # differences 1, 2, 3, 4: mean 2.5, sd sqrt(5/3), se sqrt(5/12), t = 2.5 / se = 3.873, df 3
    r = ps.paired([11, 12, 13, 14], [10, 10, 10, 10])
    se = math.sqrt(5 / 12)
    assert r["mean"] == 2.5 and r["sd"] == pytest.approx(math.sqrt(5 / 3)) and r["t"] == pytest.approx(2.5 / se)
    assert r["p_t"] == pytest.approx(0.03047, abs=1e-4)  # two-sided, t = 3.873 with 3 df
    assert r["ci_low"] == pytest.approx(2.5 - 3.182446 * se, abs=1e-5)  # t(0.975, 3) = 3.182446
    assert r["ci_high"] == pytest.approx(2.5 + 3.182446 * se, abs=1e-5)
    assert r["p_wilcoxon"] == pytest.approx(0.125)  # all 4 ranks positive: exact p = 2 / 2**4


def test_pairing_matters_more_than_the_spread_of_either_arm():
    a = [10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0]
    b = [x - 0.5 + 0.01 * i for i, x in enumerate(a)]  # always about 0.5 lower, whatever the seed
    r = ps.paired(a, b)
    assert r["p_t"] < 1e-6 and r["ci_low"] > 0.4


def test_tost_claims_equivalence_only_inside_the_margin():
    tiny = [0.02, -0.01, 0.03, 0.0, -0.02, 0.01, 0.02, -0.01]
    equal = ps.paired([10 + d for d in tiny], [10.0] * 8, margin=0.15)
    assert equal["p_tost"] < 0.001 and equal["p_t"] > 0.3
    near_margin = ps.paired([10 + 0.14 + d for d in tiny], [10.0] * 8, margin=0.15)
    assert near_margin["p_tost"] > 0.05  # the interval reaches past +0.15
    noisy = ps.paired([10 + 3 * d for d in (1, -1, 2, -2, 1, -1, 0.5, -0.5)], [10.0] * 8)
    assert noisy["p_tost"] > 0.05 and noisy["p_t"] > 0.05  # neither shown


def test_constant_differences_are_certain():
    r = ps.paired([1.0, 2.0, 3.0], [0.5, 1.5, 2.5])
    assert r["p_t"] == 0.0 and r["p_tost"] == 1.0 and r["t"] == math.inf
    same = ps.paired([1.0, 2.0], [1.0, 2.0])
    assert same["p_t"] == 1.0 and same["p_tost"] == 0.0 and same["p_wilcoxon"] == 1.0


def test_holm_by_hand():
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> monotone 0.02, 0.03, 0.06, 0.06
    assert ps.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert ps.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_verdicts_and_holm_across_a_table():
    eight = range(8)
    table = ps.compare_all({
        "coevo vs l1": ([12 + 0.01 * i for i in eight], [11 + 0.012 * i for i in eight]),
        "coevo vs random": ([12 + 0.01 * i for i in eight], [12 + 0.01 * i + (0.01 if i % 2 else -0.01) for i in eight]),
        "coevo vs uniform": ([12 + (1 if i % 2 else -1) for i in eight], [12.0] * 8),
    })
    assert table["coevo vs l1"]["verdict"] == "better"
    assert table["coevo vs random"]["verdict"] == "equivalent"
    assert table["coevo vs uniform"]["verdict"] == "undecided"
    assert all(r["p_t_holm"] >= r["p_t"] for r in table.values())


def test_unpaired_input_is_refused():
    with pytest.raises(ValueError, match="equally long"):
        ps.paired([1, 2, 3], [1, 2])
