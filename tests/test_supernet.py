"""Weight-sharing supernets on tiny generators: masked == slim, exact resume, the supernet fitness, fine-tuning
from the supernet, the CLI and its refusals."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from coevo.cli import main
from coevo.config import config_from_dict
from coevo.core.runs import read_jsonl
from coevo.models import (
    GeneratorArch, load_generator,
)
from coevo.models.io import safe_torch_load
from coevo.models.teacher import resolve_teacher
from coevo.prune import Genome, repair_to_budget, slim
from coevo.search import DIRECTIONS, build_context, run_search
from coevo.search.context import MACS_SIZE
from coevo.train.supernet import MaskSampler, SupernetGenerator, search_budget, train_supernet

from conftest import assert_same_tree, make_image_folder, make_teacher_folder

SEARCH = {"population": 4, "generations": 1, "eval_images": 3, "eval_size": 32, "macs_ratio": 0.3}
SUPERNET = {"steps": 4, "batch_size": 2, "random_masks": 1, "checkpoint_every": 2, "log_every": 1}


def _teacher(folder: Path, ngf: int = 4, seed: int = 0) -> Path:
    return make_teacher_folder(folder, GeneratorArch.full(ngf=ngf, n_blocks=2), seed)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("supernet_env")
    env = {"root": root, "data": make_image_folder(root / "data", n=6, size=32), "teacher": _teacher(root / "teacher")}
    env["supernet"] = train_supernet(make_cfg(env), root / "supernet", teacher=env["teacher"])
    return env


def make_cfg(env, seed=0, supernet=None, **search):
    return config_from_dict({
        "seed": seed,
        "data": {"root": str(env["data"]), "synthetic": False, "load_size": 32, "crop_size": 32},
        "search": {**SEARCH, **search},
        "supernet": {**SUPERNET, **(supernet or {})},
        "finetune": {"epochs": 1, "max_steps_per_epoch": 1},
    })


def _random_genomes(arch, n, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        genome = Genome.from_bits(arch, rng.random(Genome.all_keep(arch).n_bits) < rng.uniform(0.2, 0.9))
        out.append(repair_to_budget(genome, 10 ** 12, MACS_SIZE, rng=rng))  # only puts back one channel per group
    return out


def test_masked_supernet_equals_the_slim_network_cut_from_its_weights(tiny_generator):
    """Several masks in one batch: each copy of the batch equals slim(weights, genome) on it, and a dropped
    channel is exactly zero after its InstanceNorm and ReLU while kept channels match the slim network's."""
    genomes = _random_genomes(tiny_generator.arch, 3)
    net = SupernetGenerator(tiny_generator)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    net.use(genomes, repeat=2)
    with torch.no_grad():
        y = net(x.repeat(3, 1, 1, 1))
        stem = tiny_generator.features(x.repeat(3, 1, 1, 1), ["stem"])[0]
    for k, genome in enumerate(genomes):
        small = slim(tiny_generator, genome)
        with torch.no_grad():
            torch.testing.assert_close(y[2 * k:2 * k + 2], small(x), rtol=0, atol=1e-5)
            kept = stem[2 * k:2 * k + 2][:, genome.masks["stem"]]
            torch.testing.assert_close(kept, small.features(x, ["stem"])[0], rtol=0, atol=1e-5)
        assert torch.all(stem[2 * k:2 * k + 2][:, ~genome.masks["stem"]] == 0)
    net.use(None)  # no masks: the plain network
    with torch.no_grad():
        assert torch.equal(net(x), tiny_generator(x))
    with pytest.raises(ValueError, match="masks cover"):
        net.use(genomes, repeat=2)
        net(x)


def test_sampler_draws_the_sandwich_within_the_budget(env):
    """Full network first, then one at the search's budget and the random ones between it and full;
    the same step draws the same masks."""
    cfg = make_cfg(env, supernet={"random_masks": 3})
    teacher = load_generator(env["teacher"] / "G_A.pt")
    budget = search_budget(teacher.arch, cfg.search)
    importance = {d: {n: np.ones(w) for n, w in teacher.arch.widths.items()} for d in DIRECTIONS}
    sampler = MaskSampler(teacher.arch, budget, cfg.search, importance, 3, seed=0)
    from coevo.prune import macs_of_genome

    masks = sampler.sample("G_A", 5)
    assert len(masks) == 5 and masks[0] == Genome.all_keep(teacher.arch)
    costs = [macs_of_genome(g, MACS_SIZE) for g in masks]
    assert costs[1] <= budget.max_macs and all(c <= budget.teacher_macs for c in costs)
    assert [g.key() for g in sampler.sample("G_A", 5)] == [g.key() for g in masks]
    assert [g.key() for g in sampler.sample("G_A", 6)] != [g.key() for g in masks]


def test_sampler_keeps_the_searchs_width_floor(env):
    """With search.width_floor=uniform every sampled mask keeps the floor the search will keep."""
    teacher = load_generator(env["teacher"] / "G_A.pt")
    importance = {d: {n: np.ones(w) for n, w in teacher.arch.widths.items()} for d in DIRECTIONS}
    floors = {}
    for floor in ("none", "uniform"):
        cfg = make_cfg(env, supernet={"random_masks": 3}, macs_ratio=0.5, width_floor=floor)
        budget = search_budget(teacher.arch, cfg.search)
        sampler = MaskSampler(teacher.arch, budget, cfg.search, importance, 3, seed=0)
        floors[floor] = (budget.min_channels,
                         min(min(g.widths().values()) for t in range(20) for g in sampler.sample("G_A", t)))
    assert floors["uniform"][0] > 1 and floors["uniform"][1] >= floors["uniform"][0]
    assert floors["none"][1] < floors["uniform"][0]  # without it, masks go narrower


def test_supernet_training_resumes_bit_identically(env, tmp_path):
    """Stopped after 2 of 4 steps and resumed: weights, optimiser states and log equal an uninterrupted run's."""
    cfg = make_cfg(env)
    stopped = train_supernet(cfg, tmp_path / "stopped", teacher=env["teacher"], stop_after=2)
    assert not (stopped / "supernet.json").exists() and (stopped / "checkpoint.pt").is_file()
    train_supernet(cfg, stopped, resume=True)
    whole = env["supernet"]
    timeless = lambda path: {k: v for k, v in safe_torch_load(path).items() if k != "elapsed"}  # wall clock
    assert_same_tree(timeless(stopped / "checkpoint.pt"), timeless(whole / "checkpoint.pt"))
    for d in DIRECTIONS:
        assert_same_tree(load_generator(stopped / f"{d}.pt").state_dict(),
                         load_generator(whole / f"{d}.pt").state_dict())
    assert read_jsonl(stopped / "log.jsonl") == read_jsonl(whole / "log.jsonl")
    record = json.loads((whole / "supernet.json").read_text())
    assert record["steps"] == 4 and record["masks_per_step"] == 3 and record["teacher_outputs_cached"]
    # trained: the weights moved away from the teacher's
    teacher = load_generator(env["teacher"] / "G_A.pt")
    assert not torch.equal(load_generator(whole / "G_A.pt").model[1].weight, teacher.model[1].weight)
    # another seed draws other images and masks
    other = train_supernet(make_cfg(env, seed=1), tmp_path / "seed1", teacher=env["teacher"])
    assert not torch.equal(load_generator(other / "G_A.pt").model[1].weight,
                           load_generator(whole / "G_A.pt").model[1].weight)


def test_search_on_the_supernet_scores_its_weights_and_is_deterministic(env, tmp_path, caplog):
    cfg = make_cfg(env, fitness="supernet")
    ctx = build_context(cfg, resolve_teacher(env["teacher"]), env["supernet"])
    weights = load_generator(env["supernet"] / "G_A.pt")
    assert torch.equal(ctx["G_A"].source.model[1].weight, weights.model[1].weight)
    assert ctx["G_A"].teacher is not ctx["G_A"].source  # targets stay the teacher's
    a = run_search(cfg, tmp_path / "a", teacher=env["teacher"], supernet=env["supernet"], progress=False)
    b = run_search(cfg, tmp_path / "b", teacher=env["teacher"], supernet=env["supernet"], progress=False)
    strip = lambda run: [{k: v for k, v in r.items() if k != "seconds"} for r in read_jsonl(run / "history.jsonl")]
    assert strip(tmp_path / "a") == strip(tmp_path / "b")
    assert a.best == b.best and a.summary["fitness"] == "supernet"
    assert a.summary["supernet"] == str(env["supernet"].resolve())
    assert json.loads((tmp_path / "a" / "weights.json").read_text())["dir"] == str(env["supernet"].resolve())
    proxy = run_search(make_cfg(env), tmp_path / "p", teacher=env["teacher"], progress=False)
    assert proxy.summary["supernet"] is None
    assert strip(tmp_path / "p")[0]["G_A"]["best"] != strip(tmp_path / "a")[0]["G_A"]["best"]
    # a supernet trained for another budget still serves, with a warning
    import logging

    with caplog.at_level(logging.WARNING, logger="coevo.search.supernet"):
        build_context(make_cfg(env, fitness="supernet", macs_ratio=0.5), resolve_teacher(env["teacher"]),
                      env["supernet"])
    assert "search.macs_ratio 0.3 -> 0.5" in caplog.text
    # resuming a finished search finds its supernet without being told
    again = run_search(cfg, tmp_path / "a", resume=True, progress=False)
    assert again.best == a.best


def test_finetune_cuts_the_students_from_the_supernet(env, tmp_path):
    from coevo.train.finetune import _slim_pair, finetune, read_search_dir

    search = tmp_path / "search"
    run_search(make_cfg(env, fitness="supernet"), search, teacher=env["teacher"], supernet=env["supernet"],
               progress=False)
    cfg, teacher, genomes = read_search_dir(search)
    from coevo.search.supernet import search_weights

    weights = search_weights(search)
    _, nets, _ = _slim_pair(teacher, genomes, cfg, weights)
    for d in DIRECTIONS:
        expected = slim(load_generator(env["supernet"] / f"{d}.pt"), genomes[d])
        assert_same_tree(getattr(nets, d).state_dict(), expected.state_dict())
    out = finetune(search, tmp_path / "ft")
    report = json.loads((out / "finetune.json").read_text())
    assert report["student_weights"]["source"] == "supernet"
    assert report["student_weights"]["G_A"] == str((env["supernet"] / "G_A.pt").resolve())
    recorded = json.loads((out / "inputs.json").read_text())["files"]
    assert "supernet G_A" in recorded and "teacher G_A" in recorded


def test_finetune_cuts_genomes_chosen_elsewhere_from_a_named_supernet(env, tmp_path):
    """source["supernet_dir"]: any pair (here the L1 baseline's) starts from the supernet's weights, not the
    teacher's; a folder without a finished supernet is refused before a run folder exists."""
    from coevo.errors import CheckpointError
    from coevo.prune.baselines import l1_genome
    from coevo.train.finetune import finetune_genomes

    cfg = make_cfg(env)
    teacher = resolve_teacher(env["teacher"])
    genomes = {d: l1_genome(load_generator(getattr(teacher, d)), 0.5) for d in DIRECTIONS}
    out = finetune_genomes(cfg, teacher, genomes, tmp_path / "ft", source={"supernet_dir": str(env["supernet"])})
    report = json.loads((out / "finetune.json").read_text())
    assert report["student_weights"]["source"] == "supernet" and report["supernet_dir"] == str(env["supernet"])
    assert "supernet G_B" in json.loads((out / "inputs.json").read_text())["files"]
    with pytest.raises(CheckpointError, match="holds no finished supernet|not found"):
        finetune_genomes(cfg, teacher, genomes, tmp_path / "ft2", source={"supernet_dir": str(tmp_path / "none")})
    assert not (tmp_path / "ft2").exists()


def test_cli_trains_a_supernet_and_refuses_one_of_another_teacher(env, tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({
        "data": {"root": str(env["data"]), "synthetic": False, "load_size": 32, "crop_size": 32},
        "search": {**SEARCH, "fitness": "supernet"}, "supernet": {**SUPERNET, "steps": 2}}))
    out = tmp_path / "sn"
    assert main(["supernet", "--teacher", str(env["teacher"]), "--config", str(config), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "supernet: 2 steps" in printed and (out / "G_A.pt").is_file() and (out / "supernet.json").is_file()

    # a supernet of a wider teacher is refused by the search, in one line, before any evaluation
    wide = _teacher(tmp_path / "wide", ngf=8)
    assert main(["supernet", "--teacher", str(wide), "--config", str(config), "--out", str(tmp_path / "snw")]) == 0
    capsys.readouterr()
    code = main(["search", "--teacher", str(env["teacher"]), "--config", str(config), "--supernet",
                 str(tmp_path / "snw"), "--out", str(tmp_path / "s1"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "another architecture" in err, err
    assert not (tmp_path / "s1").exists()  # nothing left behind that blocks a rerun

    # fitness=supernet without a supernet, and a folder that holds none
    code = main(["search", "--teacher", str(env["teacher"]), "--config", str(config), "--out",
                 str(tmp_path / "s2"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "needs a supernet" in err, err
    code = main(["search", "--teacher", str(env["teacher"]), "--config", str(config), "--supernet",
                 str(env["data"]), "--out", str(tmp_path / "s3"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "no finished supernet" in err, err


def test_compress_runs_the_supernet_stage_before_the_search(tmp_path):
    """search.fitness=supernet: compress trains the supernet after the teacher, the search scores on it, the
    fine-tune cuts from it; a resume skips every finished stage."""
    from coevo.pipeline import Pipeline
    from test_pipeline import tiny_config

    cfg = tiny_config("search.fitness=supernet", "search.generations=1", "supernet.steps=2",
                      "export.formats=[safetensors]")
    out = tmp_path / "run"
    seen = []
    Pipeline(cfg, out, on_stage=seen.append).run()
    assert [r.name for r in seen] == ["data", "teacher", "supernet", "search", "finetune", "export", "bench"]
    assert json.loads((out / "supernet" / "stage.json").read_text())["steps"] == 2
    supernet = (out / "supernet").resolve()
    assert json.loads((out / "search" / "search.json").read_text())["supernet"] == str(supernet)
    report = json.loads((out / "finetune" / "finetune.json").read_text())
    assert report["student_weights"]["G_B"] == str(supernet / "G_B.pt")
    again = []
    Pipeline(cfg, out, resume=True, on_stage=again.append).run()
    assert [r.name for r in again] == [r.name for r in seen] and all(r.skipped for r in again)


def test_two_processes_share_the_masks_and_train_the_same_supernet(env, tmp_path):
    """Under torchrun each rank takes part of each step's masks and the gradients are averaged, rank 0 alone
    writes. One step from the teacher: the same loss as one process, and (Adam's first step moves each weight
    by the learning rate times the sign of its gradient) the same weights wherever the gradient is not
    rounding noise; conv biases before an InstanceNorm, whose gradient is exactly that, are left out."""
    from test_distributed import torchrun

    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({
        "data": {"root": str(env["data"]), "synthetic": False, "load_size": 32, "crop_size": 32},
        "search": SEARCH, "supernet": {**SUPERNET, "steps": 1}}))
    two = tmp_path / "two"
    torchrun(["supernet", "--teacher", str(env["teacher"]), "--config", str(config), "--out", str(two)])
    one = train_supernet(make_cfg(env, supernet={"steps": 1}), tmp_path / "one", teacher=env["teacher"])
    a, b = read_jsonl(one / "log.jsonl")[0], read_jsonl(two / "log.jsonl")[0]
    assert a["step"] == b["step"] == 1
    assert a["loss_G_A"] == pytest.approx(b["loss_G_A"], rel=1e-6)
    assert a["loss_G_B"] == pytest.approx(b["loss_G_B"], rel=1e-6)
    for d in DIRECTIONS:
        w1, w2 = load_generator(one / f"{d}.pt"), load_generator(two / f"{d}.pt")
        for name, conv in w1.named_convs():
            other = dict(w2.named_convs())[name]
            torch.testing.assert_close(other.weight, conv.weight, rtol=0, atol=1e-7)
            if name == "head":  # the only conv followed by no InstanceNorm
                torch.testing.assert_close(other.bias, conv.bias, rtol=0, atol=1e-7)
