"""benchmarks/fitness_correlation.py's statistics on hand-made numbers (no network is run)."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))  # the script imports paired_stats as the scripts do
SPEC = importlib.util.spec_from_file_location("fitness_correlation", BENCH / "fitness_correlation.py")
fc = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(fc)


def test_spearman_gives_tied_values_their_mean_rank():
    assert fc.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert fc.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ties: x ranks (0.5, 0.5, 2, 3) against (0, 1, 2, 3)
    assert fc.spearman([1, 1, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486832980505138)


def _records():
    # G_A: the narrowest group orders the end result exactly (lower test L1 = better = wider bottleneck);
    # G_B: exactly the reverse
    out = []
    for i in range(6):
        out.append({"direction": "G_A", "widths": {"stem": 2 + i, "trunk": 40}, "finetuned": [0.1 - 0.01 * i] * 2})
        out.append({"direction": "G_B", "widths": {"stem": 40, "trunk": 2 + i}, "finetuned": [0.05 + 0.01 * i] * 2})
    return out


def test_the_narrowest_width_reference_ranks_like_the_fitnesses_do():
    ref = fc.narrowest_reference(_records())
    assert ref["G_A"]["fitness"]["rho"] == pytest.approx(1.0)
    assert ref["G_B"]["fitness"]["rho"] == pytest.approx(-1.0)


def test_rescore_adds_the_reference_to_a_results_file_and_keeps_the_rest(tmp_path):
    path = tmp_path / "fitness_correlation.json"
    result = {"settings": {"seed": 0}, "genomes": _records(), "spearman": {"proxy": {"G_A": {}, "G_B": {}}},
              "seconds_per_candidate": {"proxy": 0.3},
              "noise_ceiling": {"G_A": {"rho": 0.5}, "G_B": {"rho": 0.8}},
              "supernet": {"dir": str(tmp_path / "sn"), "train_seconds": 0.4}}  # timed on a resume: loading only
    (tmp_path / "sn").mkdir()
    (tmp_path / "sn" / "supernet.json").write_text(json.dumps({"train_seconds": 345.5}))
    path.write_text(json.dumps(result))
    fc.main(["--rescore", str(path)])
    out = json.loads(path.read_text())
    assert out["spearman"]["proxy"] == result["spearman"]["proxy"] and out["genomes"] == result["genomes"]
    ref = out["spearman"]["narrowest width"]
    assert ref["G_A"]["fraction_of_ceiling"] == pytest.approx(2.0)
    assert ref["G_B"]["fraction_of_ceiling"] == pytest.approx(-1.25)
    assert out["seconds_per_candidate"]["narrowest width"] == 0.0
    assert out["supernet"]["train_seconds"] == 345.5  # the supernet's own record
    with pytest.raises(SystemExit):  # a real run needs its teacher and data
        fc.main([])


def test_resume_may_change_the_fitness_arguments_but_not_the_fine_tunings():
    saved = {"argv": {"genomes": "30", "steps": "180", "trained_steps": "20"}}  # made before --adapt-steps
    assert fc.same_finetunings(saved, {"argv": {"genomes": "30", "steps": "180", "trained_steps": "60",
                                                "adapt_steps": "60", "trained_lr": "0.001", "rescore": "None"}})
    assert not fc.same_finetunings(saved, {"argv": {"genomes": "30", "steps": "100", "trained_steps": "20"}})
    assert not fc.same_finetunings(saved, {"argv": {"genomes": "31", "steps": "180"}})
