"""The frontier benchmark's statistics (benchmarks/frontier.py): what its verdicts claim is what its numbers say."""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

SPEC = importlib.util.spec_from_file_location("frontier", Path(__file__).parents[1] / "benchmarks" / "frontier.py")
frontier = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(frontier)


def record(method, budget, seed, a, b, kind="macs"):
    return {"method": method, "budget": budget, "seed": seed, "kind": kind, "cell": f"{method}_{budget:g}_s{seed}",
            "macs_ratio": {"G_A": budget, "G_B": budget},
            "after_finetune": {"G_A": {"psnr": a}, "G_B": {"psnr": b}},
            "before_finetune": {"G_A": {"psnr": a - 3}, "G_B": {"psnr": b - 3}}}


def cells(method, budget, values_a, values_b, kind="macs"):
    return [record(method, budget, s, a, b, kind) for s, (a, b) in enumerate(zip(values_a, values_b))]


def test_summary_is_mean_and_sample_std_over_seeds_with_per_seed_numbers():
    s = frontier.summarise(cells("l1", 0.1, [10.0, 11.0, 12.0], [20.0, 20.0, 20.0]))["l1@0.1"]
    assert s["per_seed"]["G_A"] == [10.0, 11.0, 12.0] and s["per_seed"]["mean"] == [15.0, 15.5, 16.0]
    assert s["psnr_mean"]["G_A"] == 11.0 and s["psnr_std"]["G_A"] == 1.0  # ddof=1
    assert s["psnr_std"]["G_B"] == 0.0 and s["seeds"] == [0, 1, 2]
    assert s["before_per_seed"] == [12.0, 12.5, 13.0] and s["before_mean"] == 12.5


@pytest.mark.parametrize("gap, beats", [(1.0, True), (0.3, False), (-1.0, False)])
def test_coevo_beats_only_by_more_than_the_pooled_seed_std_in_both_directions(gap, beats):
    base = [10.0, 10.5, 11.0]  # std 0.5 in every cell
    recs = (cells("coevo", 0.05, [v + gap for v in base], [v + gap for v in base])
            + cells("l1", 0.05, base, base) + cells("random", 0.05, base, base))
    v = frontier.verdicts(frontier.summarise(recs))["0.05"]
    assert math.isclose(v["l1"]["G_A"]["margin_db"], gap) and math.isclose(v["l1"]["G_A"]["pooled_std_db"], 0.5)
    assert v["beats_both_baselines"] is beats


def test_one_direction_behind_is_not_a_win():
    base = [10.0, 10.5, 11.0]
    recs = (cells("coevo", 0.1, [v + 2 for v in base], base) + cells("l1", 0.1, base, base)
            + cells("random", 0.1, base, base))
    v = frontier.verdicts(frontier.summarise(recs))["0.1"]
    assert v["l1"]["G_A"]["beats"] and not v["l1"]["G_B"]["beats"] and not v["beats_both_baselines"]


def test_a_missing_baseline_or_a_single_seed_claims_nothing():
    assert not frontier.verdicts(frontier.summarise(cells("coevo", 0.1, [12.0] * 3, [12.0] * 3)
                                                    + cells("l1", 0.1, [10.0] * 3, [10.0] * 3)))["0.1"][
        "beats_both_baselines"]
    one = frontier.verdicts(frontier.summarise(cells("coevo", 0.1, [12.0], [12.0]) + cells("l1", 0.1, [10.0], [10.0])
                                               + cells("random", 0.1, [10.0], [10.0])))["0.1"]
    assert not one["beats_both_baselines"]


def test_latency_verdict_needs_the_measured_speedup_and_reports_the_psnr_margin():
    recs = (cells("coevo-latency", 0.25, [12.0, 12.2, 12.4], [20.0] * 3, "latency")
            + cells("coevo-mac", 0.25, [11.0, 11.2, 11.4], [20.0] * 3, "latency"))
    summary = frontier.summarise(recs)
    speed = {"speedup_by_cell": {"coevo-latency@0.25": {"mean": 3.7}, "coevo-mac@0.25": {"mean": 3.6}}}
    v = frontier.latency_verdict(summary, speed, 0.25)
    assert v["speedup_target"] == 3.8 and v["speedup_met"] is False
    assert v["psnr_latency_minus_mac"]["G_A"]["better"] and v["psnr_latency_minus_mac"]["G_A"]["beyond_std"]
    assert not v["psnr_latency_minus_mac"]["G_B"]["better"]
    speed["speedup_by_cell"]["coevo-latency@0.25"]["mean"] = 3.9
    assert frontier.latency_verdict(summary, speed, 0.25)["speedup_met"] is True
