"""Teacher training: files, exact resume, NaN guard, run-folder rules. Tiny nets, 32 px, a few steps."""
from __future__ import annotations

import json

import pytest
import torch
import yaml

from coevo.cli import main
from coevo.config import ConfigError, config_from_dict, config_to_dict, load_config
from coevo.models import ResnetGenerator, load_discriminator, load_generator
from coevo.models.io import safe_torch_load
from coevo.models.teacher import find_teacher
from coevo.core.runs import RunDirError, read_jsonl
from coevo.train import losses
from coevo.train.loop import CycleGANTrainer, LoopSettings, TrainingError, linear_decay
from coevo.train.pool import ImagePool
from coevo.train.teacher import build_cyclegan, train_teacher

from conftest import assert_same_tree

TINY = {
    "data": {"synthetic": False, "load_size": 36, "crop_size": 32},
    "model": {"ngf": 4, "n_blocks": 1, "ndf": 4},
    # Pool of 2: it fills within the first epoch, so its random draws are exercised by the resume test.
    "train": {"epochs": 1, "epochs_decay": 1, "max_steps_per_epoch": 3, "log_every": 1, "pool_size": 2,
              "sample_images": 2},
}


def tiny_config(root, **train):
    data = {k: dict(v) for k, v in TINY.items()}
    data["data"]["root"] = str(root)
    data["train"].update(train)
    return config_from_dict(data)


def interrupt_after(monkeypatch, calls: int, exc=KeyboardInterrupt, value=None):
    """Make the ``calls``-th and later ``gan_loss`` calls raise ``exc`` (or return ``value``)."""
    real = losses.gan_loss
    count = {"n": 0}

    def patched(scores, target_is_real):
        count["n"] += 1
        if count["n"] >= calls:
            if value is not None:
                return torch.tensor(value)
            raise exc()
        return real(scores, target_is_real)

    monkeypatch.setattr(losses, "gan_loss", patched)


def count_calls(monkeypatch) -> dict:
    real = losses.gan_loss
    count = {"n": 0}

    def counted(scores, target_is_real):
        count["n"] += 1
        return real(scores, target_is_real)

    monkeypatch.setattr(losses, "gan_loss", counted)
    return count


# gan_loss calls per step: 2 for the generators, 2 for each of the 2 discriminators.
CALLS_PER_STEP = 6


def test_teacher_run_writes_everything(tmp_path, image_folder):
    cfg = tiny_config(image_folder)
    out = train_teacher(cfg, tmp_path / "run")
    for name in ("config.yaml", "checkpoint.pt", "log.jsonl", "summary.json", "samples/epoch_001.png",
                 "samples/epoch_002.png", "G_A.pt", "G_B.pt", "D_A.pt", "D_B.pt", "latest_net_G_A.pth",
                 "latest_net_G_B.pth", "latest_net_D_A.pth", "latest_net_D_B.pth"):
        assert (out / name).is_file(), name
    assert config_to_dict(load_config(out / "config.yaml")) == config_to_dict(cfg)

    paths = find_teacher(out)
    assert paths.G_A.name == "G_A.pt" and paths.D_B.name == "D_B.pt"
    G_A = load_generator(paths.G_A)
    assert isinstance(G_A, ResnetGenerator) and G_A.arch.ngf == 4 and G_A.arch.n_blocks == 1
    ref = load_generator(out / "latest_net_G_A.pth")  # the reference-named copy: same weights
    assert_same_tree(G_A.state_dict(), ref.state_dict())
    assert load_discriminator(out / "latest_net_D_A.pth").arch.ndf == 4

    records = read_jsonl(out / "log.jsonl")
    steps = [r for r in records if r["kind"] == "step"]
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5, 6] and [r["epoch"] for r in epochs] == [1, 2]
    terms = {"G_A", "G_B", "D_A", "D_B", "cycle_A", "cycle_B", "idt_A", "idt_B"}
    for r in records:
        assert terms <= set(r) and all(torch.isfinite(torch.tensor(r[t])) for t in terms)
    # Constant lr for `epochs`, then the reference's linear decay.
    assert [r["lr"] for r in epochs] == pytest.approx([2e-4, 1e-4])

    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs"] == 2 and summary["steps"] == 6
    assert summary["networks"]["G_A"]["params"] == sum(p.numel() for p in G_A.parameters())


def test_cycle_loss_decreases_on_a_fixed_batch():
    nets = build_cyclegan(config_from_dict(TINY).model, seed=0)
    trainer = CycleGANTrainer(nets, LoopSettings(epochs=1, lr=2e-3, pool_size=0), "unused")
    # Smooth images: a 1-block ngf-4 network can learn to reconstruct them in a few steps (noise it cannot).
    y, x = torch.meshgrid(torch.linspace(-1, 1, 32), torch.linspace(-1, 1, 32), indexing="ij")
    A, B = torch.stack([x, y, x * y])[None], torch.stack([y, -x, 0.5 * x])[None]
    first = trainer.step(A, B, 1)
    for _ in range(20):
        last = trainer.step(A, B, 1)
    assert all(torch.isfinite(torch.tensor(v)) for v in last.values())
    assert last["cycle_A"] < 0.8 * first["cycle_A"] and last["cycle_B"] < 0.8 * first["cycle_B"]


def test_same_seed_same_networks():
    model = config_from_dict(TINY).model
    a, b, c = build_cyclegan(model, 0), build_cyclegan(model, 0), build_cyclegan(model, 1)
    assert_same_tree(a.G_A.state_dict(), b.G_A.state_dict())
    assert_same_tree(a.D_B.state_dict(), b.D_B.state_dict())
    assert not torch.equal(a.G_A.model[1].weight, c.G_A.model[1].weight)
    assert not torch.equal(a.G_A.model[1].weight, a.G_B.model[1].weight)  # the two generators differ
    assert a.G_A.model[1].weight.std().item() == pytest.approx(0.02, rel=0.3)


def test_interrupted_and_resumed_run_is_bit_identical(tmp_path, image_folder, monkeypatch):
    cfg = tiny_config(image_folder)
    straight = train_teacher(cfg, tmp_path / "straight")

    # Interrupt in the middle of the second epoch (after the epoch-1 checkpoint).
    with monkeypatch.context() as m:
        interrupt_after(m, 3 * CALLS_PER_STEP + CALLS_PER_STEP + 2)
        with pytest.raises(KeyboardInterrupt):
            train_teacher(cfg, tmp_path / "resumed")
    assert safe_torch_load(tmp_path / "resumed" / "checkpoint.pt")["epoch"] == 1
    calls = count_calls(monkeypatch)
    resumed = train_teacher(cfg, tmp_path / "resumed", resume=True)
    assert calls["n"] == 3 * CALLS_PER_STEP  # only the second epoch ran again

    a, b = safe_torch_load(straight / "checkpoint.pt"), safe_torch_load(resumed / "checkpoint.pt")
    for key in ("nets", "optimizers", "schedulers", "pools", "epoch", "global_step", "log_records"):
        assert_same_tree(a[key], b[key], key)
    for name in ("G_A.pt", "G_B.pt", "D_A.pt", "D_B.pt"):
        assert_same_tree(safe_torch_load(straight / name), safe_torch_load(resumed / name), name)

    def losses_only(run):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in read_jsonl(run / "log.jsonl")]
    assert losses_only(straight) == losses_only(resumed)  # log lines past the checkpoint were replayed once


def test_nan_loss_stops_with_a_clear_error(tmp_path, image_folder, monkeypatch):
    cfg = tiny_config(image_folder)
    interrupt_after(monkeypatch, 3 * CALLS_PER_STEP + 1, value=float("nan"))
    with pytest.raises(TrainingError) as info:
        train_teacher(cfg, tmp_path / "run")
    message = str(info.value)
    assert "'G_A'" in message and "nan" in message and "step 4" in message and "epoch 2" in message
    assert "train.lr=" in message
    ckpt = safe_torch_load(tmp_path / "run" / "checkpoint.pt")  # the last good one, still readable
    assert ckpt["epoch"] == 1 and ckpt["global_step"] == 3
    assert all(torch.isfinite(v).all() for v in ckpt["nets"]["G_A"].values())


def test_run_folder_rules(tmp_path, image_folder):
    cfg = tiny_config(image_folder, epochs=1, epochs_decay=0, max_steps_per_epoch=1, sample_every=0)
    out = train_teacher(cfg, tmp_path / "run")
    with pytest.raises(RunDirError, match="already exists"):
        train_teacher(cfg, out)
    changed = tiny_config(image_folder, epochs=1, epochs_decay=0, max_steps_per_epoch=1, sample_every=0, lr=1e-3)
    with pytest.raises(ConfigError, match=r"train\.lr"):
        train_teacher(changed, out, resume=True)
    with pytest.raises(RunDirError, match="nothing|no run|holds no run"):
        train_teacher(cfg, tmp_path / "empty", resume=True)
    assert train_teacher(cfg, out, resume=True) == out  # finished run: resuming rewrites the same files
    assert train_teacher(changed, out, force=True) == out


def test_cli_train(tmp_path, image_folder, capsys):
    data = {k: dict(v) for k, v in TINY.items()}
    data["data"]["root"] = str(image_folder)
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(data))
    out = tmp_path / "run"
    args = ["train", "--config", str(config), "--out", str(out),
            "--set", "train.epochs_decay=0", "--set", "train.max_steps_per_epoch=1"]
    assert main(args) == 0
    assert load_config(out / "config.yaml").train.epochs_decay == 0
    assert main(args) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["train", "--out", str(out), "--resume"]) == 0  # the run's own config.yaml
    assert main(args[:5] + ["--set", "train.nosuch=1"]) == 2
    assert "train.nosuch" in capsys.readouterr().err


def test_linear_decay_matches_the_reference():
    rule = linear_decay(epochs=3, epochs_decay=2)
    assert [rule(e) for e in range(5)] == pytest.approx([1, 1, 1, 2 / 3, 1 / 3])


def test_pool_state_round_trip():
    def make():
        return ImagePool(3, torch.Generator().manual_seed(7))
    images = [torch.full((1, 3, 4, 4), float(i)) for i in range(12)]
    a = make()
    for im in images[:6]:
        a.query(im)
    b = make()
    b.load_state_dict(a.state_dict())
    for im in images[6:]:
        assert torch.equal(a.query(im), b.query(im))
    assert ImagePool(0, torch.Generator()).query(images[0]) is images[0]


@pytest.mark.parametrize("override, key", [("batch_size", "train.batch_size"),
                                           ("checkpoint_every", "train.checkpoint_every")])
def test_bad_training_settings_are_named(tmp_path, image_folder, override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        train_teacher(tiny_config(image_folder, **{override: 0}), tmp_path / "run")
    assert not (tmp_path / "run").exists()  # refused before anything was written


# ----------------------------------------------------------------------------- dropout (reference --use_dropout)
def _dropout_trainer(run_dir, image_folder, sample_every=1):
    """A CycleGANTrainer on generators with the reference's dropout (a CycleGAN trained without --no_dropout)."""
    from coevo.core.rng import torch_rng
    from coevo.models.generator import GeneratorArch
    from coevo.train.common import full_train_dataset
    from coevo.train.init import init_weights

    cfg = tiny_config(image_folder)
    nets = build_cyclegan(cfg.model, seed=0)
    arch = GeneratorArch(ngf=cfg.model.ngf, n_blocks=cfg.model.n_blocks, dropout=True)
    g = torch_rng(1)
    nets.G_A, nets.G_B = (init_weights(ResnetGenerator(arch), g, 0.02) for _ in range(2))
    settings = LoopSettings.from_section(cfg.train, "train", cfg.seed, "cpu")
    settings.sample_every = sample_every
    run_dir.mkdir(exist_ok=True)
    dataset = full_train_dataset(cfg)
    samples = {"A": torch.rand(2, 3, 32, 32) * 2 - 1, "B": torch.rand(2, 3, 32, 32) * 2 - 1}
    return CycleGANTrainer(nets, settings, run_dir), dataset, samples


def test_two_dropout_runs_with_the_same_seed_are_identical(tmp_path, image_folder):
    """Dropout draws its masks from the trainer's seeded stream, not torch's global one: the same seed, the
    same weights, however far the global stream has moved (sample grids draw nothing from the stream)."""
    ckpts = []
    for name, every in (("one", 1), ("two", 0)):
        trainer, dataset, samples = _dropout_trainer(tmp_path / name, image_folder, every)
        torch.rand(7)  # the global stream moves between the runs, as it does in one process
        trainer.fit(dataset, samples)
        ckpts.append(safe_torch_load(tmp_path / name / "checkpoint.pt"))
    a, b = ckpts
    for key in ("nets", "optimizers", "pools", "rng"):
        assert_same_tree(a[key], b[key], key)


def test_interrupted_and_resumed_dropout_run_is_bit_identical(tmp_path, image_folder, monkeypatch):
    trainer, dataset, samples = _dropout_trainer(tmp_path / "straight", image_folder)
    trainer.fit(dataset, samples)
    with monkeypatch.context() as m:
        interrupt_after(m, 3 * CALLS_PER_STEP + CALLS_PER_STEP + 2)  # the middle of epoch 2
        trainer, dataset, samples = _dropout_trainer(tmp_path / "resumed", image_folder)
        with pytest.raises(KeyboardInterrupt):
            trainer.fit(dataset, samples)
    assert safe_torch_load(tmp_path / "resumed" / "checkpoint.pt")["epoch"] == 1
    torch.rand(7)
    trainer, dataset, samples = _dropout_trainer(tmp_path / "resumed", image_folder)
    trainer.resume()
    trainer.fit(dataset, samples)
    a, b = (safe_torch_load(tmp_path / run / "checkpoint.pt") for run in ("straight", "resumed"))
    for key in ("nets", "optimizers", "schedulers", "pools", "rng", "epoch", "global_step", "log_records"):
        assert_same_tree(a[key], b[key], key)


def test_saved_dropout_generators_are_plain_and_old_checkpoints_still_resume(tmp_path, image_folder, caplog):
    """The seeded layers hold no weights and never reach a file; a dropout run's checkpoint from before the
    stream was saved resumes with a fresh stream and a warning."""
    from coevo.models.dropout import SeededDropout
    from coevo.train.teacher import save_teacher

    trainer, dataset, samples = _dropout_trainer(tmp_path / "run", image_folder)
    assert any(isinstance(m, SeededDropout) for m in trainer.nets.G_A.modules())
    trainer.fit(dataset, samples)
    save_teacher(trainer.nets, tmp_path / "run")
    for name in ("G_A.pt", "latest_net_G_A.pth"):
        g = load_generator(tmp_path / "run" / name)
        assert any(type(m) is torch.nn.Dropout for m in g.modules()), name
        assert not any(isinstance(m, SeededDropout) for m in g.modules()), name
        assert_same_tree(g.state_dict(), trainer.nets.G_A.state_dict(), name)

    ckpt = safe_torch_load(tmp_path / "run" / "checkpoint.pt")
    del ckpt["rng"]  # as written before the dropout stream was checkpointed
    torch.save(ckpt, tmp_path / "run" / "checkpoint.pt")
    trainer, dataset, samples = _dropout_trainer(tmp_path / "run", image_folder)
    with caplog.at_level("WARNING"):
        trainer.resume()
    assert trainer.epoch == 2 and "starts afresh" in caplog.text
