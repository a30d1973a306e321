"""finetune.mode=distill: no discriminators, a teacher cache that is exact, exact resume, the CLI and the record."""
from __future__ import annotations

import json

import pytest
import torch

from coevo.cli import main
from coevo.data import build_datasets
from coevo.models.io import safe_torch_load
from coevo.train import losses
from coevo.train.distill import DistillTrainer, cache_images, deterministic_crops, image_key
from coevo.train.finetune import _slim_pair, finetune, read_search_dir
from coevo.train.loop import LoopSettings

from test_finetune import _assert_same, _assert_same_runs, search_dir  # noqa: F401  (the fixture)

DISTILL = ["finetune.mode=distill"]


def _trainer(tmp_path, search_dir, name, cached, lambda_feature=0.0):  # noqa: F811
    cfg, teacher_paths, genomes = read_search_dir(search_dir, DISTILL + [f"finetune.lambda_feature={lambda_feature}"])
    teacher, students, discriminators = _slim_pair(teacher_paths, genomes, cfg)
    assert discriminators == "none"
    settings = LoopSettings.from_section(cfg.finetune, "finetune", cfg.seed, "cpu")
    train = deterministic_crops(build_datasets(cfg.data, seed=cfg.seed).train)
    images = cache_images(train) if cached else None
    (tmp_path / name).mkdir()
    return DistillTrainer(students, settings, tmp_path / name, teacher, cache_images=images), train


@pytest.mark.parametrize("lambda_feature", [0.0, 1.0])
def test_a_cached_step_equals_a_live_one(tmp_path, search_dir, lambda_feature):  # noqa: F811
    cached, train = _trainer(tmp_path, search_dir, "cached", True, lambda_feature)
    live, _ = _trainer(tmp_path, search_dir, "live", False, lambda_feature)
    assert cached.targets.cached and not live.targets.cached
    train.set_epoch(0)
    # every sample the distill loader makes (both flips occur) is in the cache
    flipped = 0
    for i in range(len(train)):
        item = train[i]
        flipped += int(image_key(item["A"]) != image_key(cache_images(train)["G_A"][i % len(train.A_paths)]))
        a, b = item["A"][None], item["B"][None]
        ta = cached.step(a, b, 1)
        tb = live.step(a, b, 1)
        assert ta.keys() == tb.keys() == {"distill_A", "distill_B"} | (
            {"feature_A", "feature_B"} if lambda_feature else set())
        for k in ta:
            assert ta[k] == pytest.approx(tb[k], rel=1e-6, abs=1e-7), k
    assert flipped > 0
    assert cached.targets.stats()["misses"] == 0 and cached.targets.stats()["hits"] == 2 * len(train)
    for k in ("G_A", "G_B"):
        for (n, p), (_, q) in zip(getattr(cached.nets, k).state_dict().items(),
                                  getattr(live.nets, k).state_dict().items()):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=f"{k}.{n}")


def test_distill_finetune_records_its_recipe_and_trains_no_discriminator(tmp_path, search_dir, monkeypatch):  # noqa: F811
    def no_gan(*args, **kwargs):
        raise AssertionError("distill mode computed a GAN loss")

    monkeypatch.setattr(losses, "gan_loss", no_gan)
    out = finetune(search_dir, tmp_path / "ft", overrides=DISTILL)
    report = json.loads((out / "finetune.json").read_text())
    assert report["recipe"] == "distill" and report["discriminators"] == "none"
    assert report["teacher_cache"]["cached"] and report["teacher_cache"]["misses"] == 0
    ckpt = safe_torch_load(out / "checkpoint.pt")
    assert ckpt["recipe"] == "distill" and set(ckpt["nets"]) == {"G_A", "G_B"}
    assert (out / "G_A.pt").is_file() and (out / "G_B.pt").is_file()


def _straight_and_resumed(search, tmp_path, monkeypatch):
    """A distill fine-tune straight through, and the same one stopped in the middle of epoch 2 (torch's global
    stream then moved) and resumed with the run's own config."""
    straight = finetune(search, tmp_path / "straight", overrides=DISTILL)
    real = losses.l1
    count = {"n": 0}

    def interrupting(a, b):
        count["n"] += 1
        if count["n"] > 3 * 2:  # two l1 terms per step: the middle of epoch 2
            raise KeyboardInterrupt
        return real(a, b)

    monkeypatch.setattr(losses, "l1", interrupting)
    with pytest.raises(KeyboardInterrupt):
        finetune(search, tmp_path / "resumed", overrides=DISTILL)
    assert safe_torch_load(tmp_path / "resumed" / "checkpoint.pt")["epoch"] == 1
    monkeypatch.setattr(losses, "l1", real)
    torch.rand(7)
    return straight, finetune(search, tmp_path / "resumed", resume=True)


def test_interrupted_and_resumed_distill_is_bit_identical(tmp_path, search_dir, monkeypatch):  # noqa: F811
    straight, resumed = _straight_and_resumed(search_dir, tmp_path, monkeypatch)
    _assert_same_runs(straight, resumed, ("nets", "optimizers", "schedulers", "hook", "global_step", "recipe"))


def test_resuming_with_the_other_recipe_is_refused(tmp_path, search_dir):  # noqa: F811
    out = tmp_path / "ft"
    finetune(search_dir, out, overrides=DISTILL + ["finetune.epochs=1", "finetune.epochs_decay=0"])
    with pytest.raises(Exception, match="finetune.mode"):
        finetune(search_dir, out, resume=True, overrides=["finetune.mode=gan"])


def test_distill_without_any_term_is_refused(tmp_path, search_dir):  # noqa: F811
    with pytest.raises(Exception, match="lambda_distill"):
        finetune(search_dir, tmp_path / "ft", overrides=DISTILL + ["finetune.lambda_distill=0"])


def test_cli_finetune_distill(tmp_path, search_dir, capsys):  # noqa: F811
    out = tmp_path / "ft"
    assert main(["finetune", "--search", str(search_dir), "--out", str(out), "--set", "finetune.mode=distill"]) == 0
    assert json.loads((out / "finetune.json").read_text())["recipe"] == "distill"


@pytest.mark.parametrize("mode", ["gan", "distill"])
def test_scratch_init_keeps_the_widths_and_draws_new_weights(tmp_path, search_dir, mode):  # noqa: F811
    cfg, teacher_paths, genomes = read_search_dir(search_dir, [f"finetune.mode={mode}"])
    _, inherited, _ = _slim_pair(teacher_paths, genomes, cfg)
    cfg2, *_ = read_search_dir(search_dir, [f"finetune.mode={mode}", "finetune.init=scratch"])
    _, scratch, _ = _slim_pair(teacher_paths, genomes, cfg2)
    _, again, _ = _slim_pair(teacher_paths, genomes, cfg2)
    for k in ("G_A", "G_B"):
        assert getattr(scratch, k).arch == getattr(inherited, k).arch
        w_s, w_i = getattr(scratch, k).state_dict(), getattr(inherited, k).state_dict()
        assert any(not torch.equal(w_s[n], w_i[n]) for n in w_s)
        _assert_same(w_s, getattr(again, k).state_dict(), k)  # seeded: the same draw every time
    out = finetune(search_dir, tmp_path / "ft", overrides=[f"finetune.mode={mode}", "finetune.init=scratch",
                                                          "finetune.epochs=1", "finetune.epochs_decay=0"])
    assert json.loads((out / "finetune.json").read_text())["init"] == "scratch"


def test_the_report_says_which_recipe_fine_tuned():
    from coevo.evaluation.report import _teacher_line

    assert "recipe `distill`" in _teacher_line({"finetune_recipe": "distill", "finetune_discriminators": "none"})
    gan = _teacher_line({"finetune_discriminators": "teacher"})  # runs from before recipes were recorded
    assert "recipe `gan`" in gan and "the teacher's discriminators" in gan
    assert "Search fitness: `proxy`" in gan  # runs from before search.fitness was recorded
    assert "weight-sharing supernet" in _teacher_line({"search_fitness": "supernet"})


def _variant_search_dir(tmp_path, image_folder, norm, dropout):
    """The ``search_dir`` of test_finetune with a teacher under the reference's --norm ``norm`` (and
    --use_dropout): students that keep BatchNorm running statistics or draw dropout masks as they train."""
    from coevo.config import dump_config
    from coevo.core.rng import torch_rng
    from coevo.models import ResnetGenerator, load_generator
    from coevo.models.generator import GeneratorArch
    from coevo.models.teacher import find_teacher
    from coevo.train.init import init_weights
    from coevo.train.teacher import build_cyclegan, save_teacher

    from test_finetune import half_genome, tiny_config

    cfg = tiny_config(image_folder)
    nets = build_cyclegan(cfg.model, seed=0)
    arch = GeneratorArch(ngf=cfg.model.ngf, n_blocks=cfg.model.n_blocks, norm=norm, dropout=dropout)
    g = torch_rng(1)
    nets.G_A, nets.G_B = (init_weights(ResnetGenerator(arch), g, 0.02) for _ in range(2))
    teacher_dir = tmp_path / "teacher"
    teacher_dir.mkdir()
    save_teacher(nets, teacher_dir)
    out = tmp_path / "search"
    (out / "genomes").mkdir(parents=True)
    dump_config(cfg, out / "config.yaml")
    (out / "teacher.json").write_text(json.dumps(find_teacher(teacher_dir).to_dict()))
    arch = load_generator(teacher_dir / "G_A.pt").arch
    assert (arch.norm, arch.dropout) == (norm, dropout)
    half_genome(arch, 0).save_json(out / "genomes" / "best_G_A.json")
    half_genome(arch, 1).save_json(out / "genomes" / "best_G_B.json")
    return out


@pytest.mark.parametrize("norm,dropout", [("batch", False), ("instance", True), ("batch", True)],
                         ids=["batch-norm", "dropout", "batch-norm-dropout"])
def test_drawing_sample_grids_changes_nothing_in_a_batch_norm_or_dropout_distill(tmp_path, image_folder, norm,
                                                                                 dropout):
    """The grids run the students as they train (batch statistics, dropout on) but learn no running statistics
    from the samples and draw no mask from the training's random stream: sample_every leaves the weights as
    they are (as in the CycleGAN loop and the pix2pix trainer)."""
    search = _variant_search_dir(tmp_path, image_folder, norm, dropout)
    runs = {}
    for every in (1, 0):
        runs[every] = finetune(search, tmp_path / f"every{every}",
                               overrides=DISTILL + [f"finetune.sample_every={every}"])
    assert any((runs[1] / "samples").glob("*.png")) and not any((runs[0] / "samples").glob("*.png"))
    a = safe_torch_load(runs[1] / "checkpoint.pt")
    assert any("running_mean" in n for n in a["nets"]["G_A"]) == (norm == "batch")  # buffers compared too
    _assert_same_runs(runs[1], runs[0], ("nets", "optimizers"))


def test_two_dropout_distills_with_the_same_seed_are_identical(tmp_path, image_folder):
    """The students' dropout draws from the trainer's seeded stream, never torch's global one."""
    search = _variant_search_dir(tmp_path, image_folder, "instance", True)
    runs = []
    for name in ("one", "two"):
        torch.rand(7)  # the global stream moves between the runs, as it does in one process
        runs.append(finetune(search, tmp_path / name, overrides=DISTILL))
    _assert_same_runs(runs[0], runs[1], ("nets", "optimizers", "rng"))
    # the saved students are the plain architectures: nn.Dropout, no seeded layer, no generator
    from coevo.models import load_generator
    from coevo.models.dropout import SeededDropout

    student = load_generator(runs[0] / "G_A.pt")
    assert student.arch.dropout and any(type(m) is torch.nn.Dropout for m in student.modules())
    assert not any(isinstance(m, SeededDropout) for m in student.modules())


def test_interrupted_and_resumed_dropout_distill_is_bit_identical(tmp_path, image_folder, monkeypatch):
    search = _variant_search_dir(tmp_path, image_folder, "instance", True)
    straight, resumed = _straight_and_resumed(search, tmp_path, monkeypatch)
    _assert_same_runs(straight, resumed, ("nets", "optimizers", "schedulers", "hook", "rng", "global_step"))
