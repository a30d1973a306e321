"""Paper mode as published, and search sizes that fit the teacher."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from coevo.config import load_config
from coevo.models.teacher import TeacherPaths
from coevo.search.fitness import PAPER_REWARD_SCALE, Objective
from coevo.search.runner import eval_size_for

REPO = Path(__file__).resolve().parents[1]


def test_reward_ranks_genomes_as_the_papers_summed_fitness():
    """500 / sum(q) + 0.001 * dropped (the paper) and coevo's mean-based reward order genomes alike."""
    rng = np.random.default_rng(0)
    n = 16
    objective = Objective(compute="reward", weight_compute=0.001, images=n)
    paper, ours = [], []
    for _ in range(200):
        q = rng.uniform(0.5, 5.0, size=n)          # per-image quality (perceptual + 10 * cycle)
        dropped = int(rng.integers(0, 3000))
        paper.append(500.0 / q.sum() + 0.001 * dropped)
        ours.append(objective.score(float(q.mean()), 0.0, 0, 0, dropped).fitness)
    assert np.argsort(paper).tolist() == np.argsort(ours).tolist()
    assert np.allclose(np.array(ours), np.array(paper) * n / PAPER_REWARD_SCALE)


def test_reward_no_longer_swamps_quality():
    """An ngf-64 pair can drop thousands of filters: the compute term stays below 1/quality."""
    objective = Objective(compute="reward", weight_compute=0.001, images=16)
    terms = objective.score(perceptual=1.0, cycle=0.2, macs=0, params=0, dropped=5000)
    assert terms.fitness - 1 / terms.quality < 1 / terms.quality


def test_paper_config_is_the_papers_setup():
    s = load_config(REPO / "configs" / "paper_search.yaml").search
    assert (s.population, s.generations, s.selection, s.elitism) == (32, 50, "roulette", 1)
    assert (s.copy_prob, s.crossover_prob, s.mutation_prob) == (0.2, 0.7, 0.1)
    assert (s.crossover, s.mutation, s.init_density, s.seed_with_l1) == ("two_point", "segment_flip", 0.5, False)
    assert s.tied and s.compute == "reward" and s.weight_compute == 0.001
    assert "configs/paper_search.yaml" in (REPO / "docs" / "search.md").read_text()


def _paths(folder: Path) -> TeacherPaths:
    return TeacherPaths.from_dict({"G_A": str(folder / "G_A.pt"), "G_B": str(folder / "G_B.pt"),
                                   "D_A": str(folder / "D_A.pt"), "D_B": str(folder / "D_B.pt")})


def test_real_configs_search_at_their_training_size(tmp_path):
    for name, size in (("horse2zebra", 256), ("cityscapes", 128), ("summer2winter_yosemite", 256)):
        cfg = load_config(REPO / "configs" / f"{name}.yaml")
        assert eval_size_for(cfg, _paths(tmp_path)) == cfg.data.crop_size == size, name


def test_eval_size_follows_a_coevo_teachers_training_size(tmp_path):
    (tmp_path / "summary.json").write_text(json.dumps({"stage": "teacher", "image_size": 48}))
    cfg = load_config(REPO / "configs" / "demo.yaml")
    assert eval_size_for(cfg, _paths(tmp_path)) == 48
    cfg = load_config(REPO / "configs" / "demo.yaml", ["search.eval_size=32"])
    assert eval_size_for(cfg, _paths(tmp_path)) == 32  # an explicit size wins
