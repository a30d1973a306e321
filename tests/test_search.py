"""Co-evolutionary search on tiny generators: determinism, resume, budget, cycle partner, cache, CLI."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from coevo.cli import main
from coevo.config import config_from_dict, load_config
from coevo.models import (
    GeneratorArch,
)
from coevo.models.io import safe_torch_load
from coevo.evaluation.perceptual import PerceptualWeightsError
from coevo.prune import BudgetError, Genome, macs_of_genome, random_genome_for_macs, slim
from coevo.core.runs import RunDirError, read_jsonl
from coevo.search import (
    DIRECTIONS,
    MACS_SIZE,
    CoevolutionSearch,
    Evaluator,
    Objective,
    build_context,
    run_search,
)
from coevo.search import fitness as fitness_module
from coevo.search.context import eval_batch, split_images
from coevo.models.teacher import find_teacher

from conftest import make_image_folder, make_teacher_folder

SEARCH = {"population": 5, "generations": 3, "eval_images": 3, "eval_size": 32}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("search_env")
    data = make_image_folder(root / "data", n=6, size=32)
    teacher = make_teacher_folder(root / "teacher", GeneratorArch.full(ngf=4, n_blocks=2))
    return {"root": root, "data": data, "teacher": teacher}


def make_cfg(env, seed=0, **search):
    return config_from_dict({
        "seed": seed,
        "data": {"root": str(env["data"]), "synthetic": False, "load_size": 32, "crop_size": 32},
        "search": {**SEARCH, **search},
    })


def history(run_dir):
    """History without wall-clock fields (the only thing allowed to differ between runs)."""
    return [{k: v for k, v in r.items() if k != "seconds"} for r in read_jsonl(Path(run_dir) / "history.jsonl")]


def best_genomes(run_dir):
    return {d: Genome.load_json(Path(run_dir) / "genomes" / f"best_{d}.json") for d in DIRECTIONS}


@pytest.fixture(scope="module")
def reference(env):
    """One uninterrupted 3-generation search, shared by several tests."""
    torch.set_num_threads(1)
    run_dir = env["root"] / "reference"
    result = run_search(make_cfg(env), run_dir, teacher=env["teacher"], progress=False)
    return run_dir, result


# ----------------------------------------------------------------------------- reproducibility
def test_same_seed_gives_the_same_search(env, reference, tmp_path):
    ref_dir, _ = reference
    again = run_search(make_cfg(env), tmp_path / "again", teacher=env["teacher"], progress=False)
    assert history(again.run_dir) == history(ref_dir)
    assert best_genomes(again.run_dir) == best_genomes(ref_dir)
    other = run_search(make_cfg(env, seed=1), tmp_path / "other", teacher=env["teacher"], progress=False)
    assert history(other.run_dir) != history(ref_dir)


def test_resume_after_interruption_equals_uninterrupted(env, reference, tmp_path):
    ref_dir, _ = reference
    run_dir = tmp_path / "resumed"
    run_search(make_cfg(env), run_dir, teacher=env["teacher"], progress=False, stop_after=1)
    assert safe_torch_load(run_dir / "state.pt")["generation"] == 1
    # A kill -9 after the history line of generation 2 but before its checkpoint:
    with open(run_dir / "history.jsonl", "a") as f:
        f.write(json.dumps({"generation": 2, "partial": True}) + "\n")
    # A new process knows only the folder: config and teacher come from it.
    cfg = load_config(run_dir / "config.yaml")
    result = run_search(cfg, run_dir, resume=True, progress=False)
    assert result.summary["generations"] == 3
    assert history(run_dir) == history(ref_dir)
    assert best_genomes(run_dir) == best_genomes(ref_dir)
    ref_summary = json.loads((ref_dir / "search.json").read_text())
    assert result.summary["best"] == ref_summary["best"]
    assert result.summary["evaluations"] == ref_summary["evaluations"]


def test_resume_needs_a_run_and_a_fresh_run_needs_an_empty_folder(env, reference, tmp_path):
    with pytest.raises(RunDirError, match="resume"):
        run_search(make_cfg(env), tmp_path / "nothing", teacher=env["teacher"], resume=True, progress=False)
    ref_dir, _ = reference
    with pytest.raises(RunDirError, match="--resume"):
        run_search(make_cfg(env), ref_dir, teacher=env["teacher"], progress=False)


# ----------------------------------------------------------------------------- budget
def test_mac_budget_holds_for_every_reported_best(env, reference):
    ref_dir, result = reference
    summary = json.loads((ref_dir / "search.json").read_text())
    budget = summary["budget_macs"]
    assert budget == int(0.25 * summary["teacher_macs"])
    records = read_jsonl(ref_dir / "history.jsonl")
    assert [r["generation"] for r in records] == [0, 1, 2, 3]
    for r in records:
        for d in DIRECTIONS:
            assert r[d]["best"]["macs"] <= budget
    for d, genome in best_genomes(ref_dir).items():
        assert macs_of_genome(genome, MACS_SIZE) <= budget
        assert summary["best"][d]["macs"] == macs_of_genome(genome, MACS_SIZE)
    state = safe_torch_load(ref_dir / "state.pt")
    arch = result.best["G_A"].arch
    for d in DIRECTIONS:
        for bits in state["populations"][d]["bits"].numpy():
            assert macs_of_genome(Genome.from_bits(arch, bits), MACS_SIZE) <= budget


def test_impossible_budget_is_an_error_before_any_evaluation(env, tmp_path, monkeypatch):
    def no_evaluation(*args, **kwargs):
        raise AssertionError("evaluated a candidate despite an impossible budget")

    monkeypatch.setattr(fitness_module.Evaluator, "evaluate", no_evaluation)
    with pytest.raises(BudgetError) as info:
        run_search(make_cfg(env, macs_ratio=0.0005), tmp_path / "run", teacher=env["teacher"], progress=False)
    msg = str(info.value)
    assert "macs_ratio=0.0005" in msg and "search.macs_ratio to at least" in msg
    assert not (tmp_path / "run" / "history.jsonl").exists()


def test_reward_mode_has_no_cap_and_rewards_dropped_filters(env, tmp_path):
    result = run_search(make_cfg(env, compute="reward", generations=1), tmp_path / "r", teacher=env["teacher"],
                        progress=False)
    assert result.summary["budget_macs"] is None
    b = result.summary["best"]["G_A"]
    # the paper's 0.001 per filter for summed losses, rescaled to mean losses over the 3 images
    assert b["fitness"] == pytest.approx(1.0 / b["quality"] + 0.001 * 3 / 500 * b["dropped"])


# ----------------------------------------------------------------------------- fitness
@pytest.fixture(scope="module")
def ctx(env):
    torch.set_num_threads(1)
    return build_context(make_cfg(env), find_teacher(env["teacher"]))


def test_eval_batch_comes_from_the_training_part_of_the_training_split(env):
    cfg = make_cfg(env)
    x_A, x_B = eval_batch(cfg)
    assert x_A.shape == x_B.shape == (3, 3, 32, 32)
    assert x_A.min() >= -1 and x_A.max() <= 1
    held_out = split_images(cfg, "val")
    for x, v in zip((x_A, x_B), held_out):
        assert len(v) >= 1
        assert not any(torch.equal(a, b) for a in x for b in v)
    again = eval_batch(cfg)
    assert torch.equal(again[0], x_A) and torch.equal(again[1], x_B)


def test_cycle_term_uses_the_partner_it_is_given(ctx):
    rng = np.random.default_rng(0)
    arch = ctx["G_A"].teacher.arch
    genome = random_genome_for_macs(arch, 0.25, MACS_SIZE, rng)
    p1 = random_genome_for_macs(arch, 0.25, MACS_SIZE, rng)
    p2 = random_genome_for_macs(arch, 0.25, MACS_SIZE, rng)
    evaluator = Evaluator(ctx, Objective())
    (t1,) = evaluator.evaluate("G_A", [genome], p1)
    (t2,) = evaluator.evaluate("G_A", [genome], p2)
    assert t1.perceptual == t2.perceptual and t1.cycle != t2.cycle
    with torch.no_grad():
        x = ctx["G_A"].inputs
        manual = (slim(ctx["G_B"].teacher, p2)(slim(ctx["G_A"].teacher, genome)(x)) - x).abs().mean()
    assert t2.cycle == pytest.approx(float(manual), rel=1e-5)


def test_search_scores_each_population_against_the_other_current_best(env, ctx, monkeypatch):
    search = CoevolutionSearch(ctx, make_cfg(env).search, seed=0)
    calls = []
    original = Evaluator.evaluate

    def spy(self, direction, genomes, partner):
        if search.generation >= 0:  # generation 0 closes the cycle through the teacher
            other = "G_B" if direction == "G_A" else "G_A"
            calls.append((direction, partner == search.best(other).genome))
        return original(self, direction, genomes, partner)

    monkeypatch.setattr(Evaluator, "evaluate", spy)
    search.run(2, progress=False)
    assert [d for d, _ in calls] == ["G_A", "G_A", "G_B", "G_B"] * 2
    assert all(ok for _, ok in calls)


def test_fitness_cache_avoids_reevaluation(env, ctx, reference):
    rng = np.random.default_rng(1)
    arch = ctx["G_A"].teacher.arch
    genomes = [random_genome_for_macs(arch, 0.25, MACS_SIZE, rng) for _ in range(3)]
    partner = Genome.all_keep(arch)
    evaluator = Evaluator(ctx, Objective())
    first = evaluator.evaluate("G_A", genomes + [genomes[0].copy()], partner)
    assert (evaluator.evaluations, evaluator.cache_hits, evaluator.forward_passes) == (3, 1, 3)
    assert evaluator.evaluate("G_A", genomes, partner) == first[:3]
    assert (evaluator.evaluations, evaluator.cache_hits) == (3, 4)
    # A new partner re-scores the cycle term only: no new candidate forward.
    evaluator.evaluate("G_A", genomes, random_genome_for_macs(arch, 0.25, MACS_SIZE, rng))
    assert (evaluator.evaluations, evaluator.forward_passes) == (6, 3)
    # In a search, elites and repeated genomes are not re-evaluated.
    _, result = reference
    s = result.summary
    scored = 2 * SEARCH["population"] * (1 + 2 * SEARCH["generations"])
    assert s["evaluations"] + s["cache_hits"] == scored
    assert s["cache_hits"] >= 2 * SEARCH["generations"]  # at least the elites


def test_missing_lpips_weights_stop_the_search_up_front(env, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    with pytest.raises(PerceptualWeightsError, match="alexnet-owt-7be5be79.pth"):
        run_search(make_cfg(env, perceptual="lpips"), tmp_path / "run", teacher=env["teacher"], progress=False)
    assert not (tmp_path / "run" / "history.jsonl").exists()


# ----------------------------------------------------------------------------- outputs and CLI
def test_cli_search_writes_the_contract_files(env, tmp_path, capsys):
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump({
        "data": {"root": str(env["data"]), "synthetic": False, "load_size": 32, "crop_size": 32},
        "search": {**SEARCH, "generations": 1},
    }))
    out = tmp_path / "run"
    argv = ["search", "--config", str(cfg_path), "--teacher", str(env["teacher"]), "--out", str(out),
            "--set", "search.population=4", "--no-progress"]
    assert main(argv) == 0
    assert "G_A: fitness" in capsys.readouterr().out
    for name in ("config.yaml", "teacher.json", "genomes/best_G_A.json", "genomes/best_G_B.json",
                 "history.jsonl", "state.pt", "search.json", "plots/fitness.png", "plots/channels.png"):
        assert (out / name).is_file(), name
    cfg = load_config(out / "config.yaml")
    assert cfg.search.population == 4 and cfg.data.root == str(env["data"])
    teacher = json.loads((out / "teacher.json").read_text())
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in teacher.values())
    summary = json.loads((out / "search.json").read_text())
    for key in ("metric", "best", "teacher_macs", "budget_macs", "seed", "wall_time_s", "evaluations",
                "cache_hits", "macs_convention"):
        assert key in summary
    assert summary["metric"] == "discriminator"
    assert {"perceptual", "cycle", "macs", "params", "fitness"} <= set(summary["best"]["G_B"])
    assert best_genomes(out)["G_A"].meta["method"] == "coevo-search"

    assert main(argv) == 2  # an existing run is never overwritten without --resume/--force
    assert "--resume" in capsys.readouterr().err
    assert main(["search", "--out", str(out), "--resume", "--no-progress"]) == 0
    assert main(argv + ["--force"]) == 0


def test_cli_impossible_budget_is_one_clean_error(env, tmp_path, capsys):
    code = main(["search", "--teacher", str(env["teacher"]), "--out", str(tmp_path / "run"), "--no-progress",
                 "--set", f"data.root={env['data']}", "--set", "data.synthetic=false",
                 "--set", "search.macs_ratio=0.0005", "--set", "search.eval_size=32"])
    assert code == 2
    assert "search.macs_ratio to at least" in capsys.readouterr().err


@pytest.mark.slow
def test_kill_9_then_resume_gives_the_uninterrupted_result(env, tmp_path):
    """A real SIGKILL in the middle of a search, then `coevo search --resume` in a new process."""
    import os
    import signal
    import subprocess
    import sys
    import time

    # The victim is asked for far more generations than it can finish, so the kill always lands
    # mid-run (never a skip); it resumes to a few generations past the kill, and the reference
    # runs uninterrupted to the same count. The generation count only says where to stop.
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump({
        "data": {"root": str(env["data"]), "synthetic": False, "load_size": 32, "crop_size": 32},
        "search": {**SEARCH, "generations": 100000},
    }))
    # Same thread count in every process (one): results are bit-identical only then.
    proc_env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

    def cli(out, *extra):
        return [sys.executable, "-m", "coevo", "--threads", "1", "search", "--config", str(cfg_path), "--teacher",
                str(env["teacher"]), "--out", str(out), "--no-progress", *extra]

    victim = subprocess.Popen(cli(tmp_path / "killed"), env=proc_env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    state = tmp_path / "killed" / "state.pt"
    deadline = time.time() + 120
    while time.time() < deadline and victim.poll() is None:
        if state.exists() and safe_torch_load(state)["generation"] >= 2:
            break
        time.sleep(0.05)
    assert victim.poll() is None, "the search process ended before it was killed"
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    stop = safe_torch_load(state)["generation"] + 3
    subprocess.run(cli(tmp_path / "killed", "--resume", "--set", f"search.generations={stop}"), env=proc_env,
                   check=True, capture_output=True)
    # The uninterrupted reference runs here, also on one thread (see _one_thread).
    run_search(load_config(cfg_path, [f"search.generations={stop}"]), tmp_path / "whole", teacher=env["teacher"],
               progress=False)
    assert history(tmp_path / "killed") == history(tmp_path / "whole")
    assert best_genomes(tmp_path / "killed") == best_genomes(tmp_path / "whole")


def test_trained_fitness_distils_each_candidate_and_is_deterministic(env, tmp_path):
    """search.fitness=trained: candidates are distilled before scoring; same seed, same result."""
    cfg = make_cfg(env, generations=1, fitness="trained", trained_steps=2)
    a = run_search(cfg, tmp_path / "a", teacher=env["teacher"], progress=False)
    b = run_search(cfg, tmp_path / "b", teacher=env["teacher"], progress=False)
    assert a.summary["fitness"] == b.summary["fitness"] == "trained" and a.summary["trained_steps"] == 2
    assert history(tmp_path / "a") == history(tmp_path / "b")
    proxy = run_search(make_cfg(env, generations=1), tmp_path / "p", teacher=env["teacher"], progress=False)
    assert proxy.summary["trained_steps"] == 0
    # distillation moves the candidates towards the teacher: the trained perceptual terms differ
    assert history(tmp_path / "a")[0]["G_A"]["best"] != history(tmp_path / "p")[0]["G_A"]["best"]


def test_rerank_picks_the_best_trained_fitness_among_the_top_and_the_l1_seed(env, tmp_path):
    """search.rerank_top: the same GA (history unchanged), then the top-k distinct genomes and the L1
    seed re-scored with the trained fitness; the chosen one is the argmax, saved as best_*.json, and a
    resumed finished search chooses the same."""
    cfg = make_cfg(env, generations=1, rerank_top=3, trained_steps=2)
    result = run_search(cfg, tmp_path / "r", teacher=env["teacher"], progress=False)
    plain = run_search(make_cfg(env, generations=1), tmp_path / "p", teacher=env["teacher"], progress=False)
    assert history(tmp_path / "r") == history(tmp_path / "p")  # the GA itself is untouched
    rerank = result.summary["rerank"]
    for d in DIRECTIONS:
        rows = rerank["candidates"][d]
        assert 2 <= len(rows) <= 4 and sum("l1 seed" in r["source"] for r in rows) == 1
        assert len({json.dumps(r["widths"], sort_keys=True) for r in rows}) <= len(rows)
        chosen = [r for r in rows if r.get("chosen")]
        assert len(chosen) == 1 and chosen[0]["trained_fitness"] == max(r["trained_fitness"] for r in rows)
        saved = Genome.load_json(tmp_path / "r" / "genomes" / f"best_{d}.json")
        assert saved.widths() == chosen[0]["widths"] == result.best[d].widths()
        assert saved.meta["chosen_by"].startswith("trained fitness")
        proxy = Genome.load_json(tmp_path / "r" / "genomes" / f"proxy_best_{d}.json")
        assert proxy.widths() == plain.best[d].widths()
        assert result.summary["best"][d]["fitness"] == chosen[0]["trained_fitness"]
    again = run_search(cfg, tmp_path / "r", teacher=env["teacher"], resume=True, progress=False)
    assert again.summary["rerank"]["candidates"] == rerank["candidates"]


def test_a_finished_search_is_re_ranked_on_resume_with_other_rerank_settings(env, tmp_path):
    """The re-rank is not checkpointed: `--resume --set search.rerank_top=...` re-ranks a finished search
    without running it again, as a run made with those settings would; trained_steps may not change under
    the trained fitness (it scores every generation there)."""
    from coevo.core.inputs import InputsChangedError

    run_search(make_cfg(env, generations=1), tmp_path / "p", teacher=env["teacher"], progress=False)
    before = history(tmp_path / "p")
    resumed = run_search(make_cfg(env, generations=1, rerank_top=2, trained_steps=3), tmp_path / "p",
                         teacher=env["teacher"], resume=True, progress=False)
    fresh = run_search(make_cfg(env, generations=1, rerank_top=2, trained_steps=3), tmp_path / "f",
                       teacher=env["teacher"], progress=False)
    assert history(tmp_path / "p") == before  # no generation ran again
    assert resumed.summary["rerank"] == fresh.summary["rerank"] and resumed.summary["rerank"]["trained_steps"] == 3
    assert {d: g.widths() for d, g in resumed.best.items()} == {d: g.widths() for d, g in fresh.best.items()}
    run_search(make_cfg(env, generations=1, fitness="trained", trained_steps=2), tmp_path / "t",
               teacher=env["teacher"], progress=False)
    with pytest.raises(InputsChangedError, match="trained_steps"):
        run_search(make_cfg(env, generations=1, fitness="trained", trained_steps=3), tmp_path / "t",
                   teacher=env["teacher"], resume=True, progress=False)


def test_width_floor_keeps_every_genome_at_least_as_wide_as_the_uniform_networks_narrowest(env, reference, tmp_path):
    from coevo.errors import ConfigError
    from coevo.prune.budget import uniform_widths
    from coevo.search.context import check_budget

    arch = reference[1].best["G_A"].arch
    budget = check_budget(arch, 0.5, 1)
    floor = min(uniform_widths(arch, budget.max_macs, budget.size).values())
    assert floor > 1 and check_budget(arch, 0.5, 1, "uniform").min_channels == floor
    assert check_budget(arch, 0.5, floor + 1, "uniform").min_channels == floor + 1  # the larger of the two

    def narrowest(run_dir):
        bits = safe_torch_load(Path(run_dir) / "state.pt")["populations"]
        return min(min(Genome.from_bits(arch, b).widths().values()) for d in DIRECTIONS for b in bits[d]["bits"].numpy())

    run_search(make_cfg(env, macs_ratio=0.5), tmp_path / "free", teacher=env["teacher"], progress=False)
    assert narrowest(tmp_path / "free") < floor  # left free, the search keeps narrower groups
    result = run_search(make_cfg(env, macs_ratio=0.5, width_floor="uniform"), tmp_path / "floor",
                        teacher=env["teacher"], progress=False)
    assert narrowest(tmp_path / "floor") >= floor
    assert all(min(g.widths().values()) >= floor for g in result.best.values())
    summary = json.loads((tmp_path / "floor" / "search.json").read_text())
    assert summary["min_channels"] == floor and summary["width_floor"] == "uniform"
    assert summary["best"]["G_A"]["macs"] <= summary["budget_macs"]
    with pytest.raises(ConfigError, match="width_floor"):
        make_cfg(env, width_floor="uniform", compute="reward")
