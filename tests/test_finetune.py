"""Fine-tuning the slim pair of a search run: architecture, held-out selection, exact resume, folder rules."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from coevo.cli import main
from coevo.config import ConfigError, config_from_dict, dump_config
from coevo.data import build_datasets
from coevo.models import ResnetGenerator, load_generator
from coevo.models.io import safe_torch_load
from coevo.models.teacher import find_teacher
from coevo.prune import Genome, l1_genome_for_macs
from coevo.core.runs import RunDirError, read_jsonl
from coevo.train import losses
from coevo.train.finetune import finetune, finetune_genomes, read_search_dir
from coevo.train.teacher import build_cyclegan, save_teacher

CALLS_PER_STEP = 6  # gan_loss calls per CycleGAN step


def tiny_config(root, **finetune_values):
    ft = {"epochs": 2, "epochs_decay": 1, "max_steps_per_epoch": 2, "log_every": 1, "pool_size": 2,
          "sample_images": 2}
    ft.update(finetune_values)
    return config_from_dict({
        "data": {"root": str(root), "synthetic": False, "load_size": 36, "crop_size": 32, "val_fraction": 0.25},
        "model": {"ngf": 4, "n_blocks": 1, "ndf": 4},
        "finetune": ft,
    })


def half_genome(arch, offset):
    """Keep every other filter of each group (offset 0 or 1), a different pruning per direction."""
    return Genome.from_kept(arch, {n: list(range(offset % 2, w, 2)) for n, w in arch.widths.items()})


@pytest.fixture
def search_dir(tmp_path, image_folder):
    """What `coevo search` leaves: config.yaml, teacher.json, genomes/best_G_{A,B}.json (teacher untrained)."""
    cfg = tiny_config(image_folder)
    teacher_dir = tmp_path / "teacher"
    teacher_dir.mkdir()
    save_teacher(build_cyclegan(cfg.model, seed=0), teacher_dir)
    out = tmp_path / "search"
    (out / "genomes").mkdir(parents=True)
    dump_config(cfg, out / "config.yaml")
    (out / "teacher.json").write_text(json.dumps(find_teacher(teacher_dir).to_dict()))
    arch = load_generator(teacher_dir / "G_A.pt").arch
    half_genome(arch, 0).save_json(out / "genomes" / "best_G_A.json")
    half_genome(arch, 1).save_json(out / "genomes" / "best_G_B.json")
    return out


def corrupt_test_split(root):
    """Unreadable test images: a run that touched the test split would fail."""
    for split in ("testA", "testB"):
        for f in (root / split).iterdir():
            f.write_bytes(b"not an image")


def test_finetune_writes_the_slim_pair(tmp_path, search_dir, image_folder):
    corrupt_test_split(image_folder)
    out = finetune(search_dir, tmp_path / "ft")
    for name in ("config.yaml", "checkpoint.pt", "log.jsonl", "finetune.json", "G_A.pt", "G_B.pt",
                 "samples/epoch_001.png", "samples/epoch_003.png"):
        assert (out / name).is_file(), name
    for k in ("G_A", "G_B"):
        genome = Genome.load_json(search_dir / "genomes" / f"best_{k}.json")
        model = load_generator(out / f"{k}.pt")
        assert isinstance(model, ResnetGenerator)
        assert model.arch.widths == genome.widths()  # physically narrow: pruned filters do not exist
        assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 3, 32, 32)

    report = json.loads((out / "finetune.json").read_text())
    assert report["epochs"] == 3 and report["steps"] == 6 and 1 <= report["best_epoch"] <= 3
    for k in ("G_A", "G_B"):
        m = report["models"][k]
        assert m["student"]["macs"] < m["teacher"]["macs"] and 0 < m["macs_ratio"] < 0.5
        assert m["student"]["params"] < m["teacher"]["params"]
    records = read_jsonl(out / "log.jsonl")
    assert {"distill_A", "distill_B", "cycle_A", "D_A"} <= set(records[0])  # distillation on by default
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2, 3] and all("val_l1" in r for r in epochs)


def test_selection_uses_the_held_out_training_images(tmp_path, search_dir, image_folder):
    corrupt_test_split(image_folder)
    out = finetune(search_dir, tmp_path / "ft")
    report = json.loads((out / "finetune.json").read_text())
    epochs = [r for r in read_jsonl(out / "log.jsonl") if r["kind"] == "epoch"]
    best = min(epochs, key=lambda r: r["val_l1"])
    assert report["best_epoch"] == best["epoch"]
    assert report["val"]["val_l1"] == pytest.approx(best["val_l1"])

    # Recompute the kept G_A's score on the data module's held-out split: it is what was selected on.
    cfg = tiny_config(image_folder)
    val = build_datasets(cfg.data, seed=cfg.seed).val
    assert report["split"]["n_val_A"] == len(val.A_paths) == 1 and report["split"]["n_train_A"] == 3
    images = torch.stack([val[i]["A"] for i in range(len(val.A_paths))])
    teacher = load_generator(json.loads((search_dir / "teacher.json").read_text())["G_A"])
    student = load_generator(out / "G_A.pt")
    with torch.no_grad():
        l1 = (student(images) - teacher(images)).abs().mean().item()
    assert l1 == pytest.approx(report["val"]["val_l1_A"], rel=1e-5)


def test_interrupted_and_resumed_finetune_is_bit_identical(tmp_path, search_dir, monkeypatch):
    straight = finetune(search_dir, tmp_path / "straight")
    real = losses.gan_loss
    count = {"n": 0}

    def interrupting(scores, target_is_real):
        count["n"] += 1
        if count["n"] > 3 * CALLS_PER_STEP:  # in the middle of epoch 2
            raise KeyboardInterrupt
        return real(scores, target_is_real)

    monkeypatch.setattr(losses, "gan_loss", interrupting)
    with pytest.raises(KeyboardInterrupt):
        finetune(search_dir, tmp_path / "resumed")
    assert safe_torch_load(tmp_path / "resumed" / "checkpoint.pt")["epoch"] == 1
    count["n"] = -10**9  # count again, never interrupt
    resumed = finetune(search_dir, tmp_path / "resumed", resume=True)
    assert count["n"] == -10**9 + 2 * 2 * CALLS_PER_STEP  # only epochs 2 and 3 ran again

    _assert_same_runs(straight, resumed, ("nets", "optimizers", "schedulers", "pools", "hook", "global_step"))


def _assert_same_runs(one, two, keys):
    """Two run folders: the checkpoint entries ``keys`` and the saved G_A.pt / G_B.pt weights are identical."""
    a, b = safe_torch_load(Path(one) / "checkpoint.pt"), safe_torch_load(Path(two) / "checkpoint.pt")
    for key in keys:
        _assert_same(a[key], b[key], key)
    for name in ("G_A.pt", "G_B.pt"):
        _assert_same(safe_torch_load(Path(one) / name)["state_dict"], safe_torch_load(Path(two) / name)["state_dict"],
                     name)


def _assert_same(a, b, path):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{path}[{i}]")
    else:
        assert a == b, path


def test_finetune_run_folder_rules(tmp_path, search_dir):
    fast = ["finetune.epochs=1", "finetune.epochs_decay=0", "finetune.max_steps_per_epoch=1",
            "finetune.sample_every=0"]
    out = finetune(search_dir, tmp_path / "ft", overrides=fast)
    with pytest.raises(RunDirError, match="already exists"):
        finetune(search_dir, out, overrides=fast)
    with pytest.raises(ConfigError, match=r"finetune\.lr"):
        finetune(search_dir, out, resume=True, overrides=fast + ["finetune.lr=0.001"])
    # the run's own config is read on resume: the --set values need not be repeated
    assert finetune(search_dir, out, resume=True) == out
    assert finetune(search_dir, out, force=True, overrides=fast) == out
    with pytest.raises(ConfigError, match="val_fraction"):
        finetune(search_dir, tmp_path / "noval", overrides=fast + ["data.val_fraction=0"])
    with pytest.raises(FileNotFoundError, match="best_G_B.json"):
        (search_dir / "genomes" / "best_G_B.json").unlink()
        finetune(search_dir, tmp_path / "incomplete")


def test_cli_finetune(tmp_path, search_dir, capsys):
    out = tmp_path / "ft"
    args = ["finetune", "--search", str(search_dir), "--out", str(out), "--set", "finetune.epochs=1",
            "--set", "finetune.epochs_decay=0", "--set", "finetune.max_steps_per_epoch=1"]
    assert main(args) == 0
    assert "MACs" in capsys.readouterr().out
    assert main(args) == 2
    assert "already exists" in capsys.readouterr().err


def test_finetune_genomes_is_the_same_recipe_for_any_genomes(tmp_path, search_dir):
    """Baseline genomes go through the code `finetune` uses: same pair in, same weights out."""
    fast = ["finetune.epochs=1", "finetune.epochs_decay=0", "finetune.max_steps_per_epoch=2",
            "finetune.sample_every=0"]
    via_search = finetune(search_dir, tmp_path / "search_ft", overrides=fast)
    cfg, teacher_paths, genomes = read_search_dir(search_dir, fast)
    direct = finetune_genomes(cfg, teacher_paths, genomes, tmp_path / "direct", source={"method": "test"})
    for name in ("G_A.pt", "G_B.pt"):
        _assert_same(safe_torch_load(via_search / name)["state_dict"], safe_torch_load(direct / name)["state_dict"],
                     name)
    report = json.loads((direct / "finetune.json").read_text())
    assert report["method"] == "test" and "search_dir" not in report
    assert json.loads((via_search / "finetune.json").read_text())["search_dir"] == str(search_dir.resolve())

    teacher = load_generator(teacher_paths.G_A)
    l1 = {k: l1_genome_for_macs(teacher, 0.3, 32) for k in ("G_A", "G_B")}
    out = finetune_genomes(cfg, teacher_paths, l1, tmp_path / "l1", source={"method": "l1", "macs_ratio": 0.3})
    for k in ("G_A", "G_B"):
        assert load_generator(out / f"{k}.pt").arch.widths == l1[k].widths()
        assert Genome.load_json(out / "genomes" / f"{k}.json").widths() == l1[k].widths()
    assert json.loads((out / "finetune.json").read_text())["models"]["G_A"]["macs_ratio"] <= 0.3
    with pytest.raises(RunDirError, match="already exists"):
        finetune_genomes(cfg, teacher_paths, l1, out)
    with pytest.raises(ValueError, match="G_B"):
        finetune_genomes(cfg, teacher_paths, {"G_A": l1["G_A"]}, tmp_path / "one")


def test_cli_finetune_any_genome_pair_by_the_same_recipe(tmp_path, search_dir, capsys):
    """`coevo prune --method l1` genomes through `coevo finetune --teacher --genome-a --genome-b`:
    the same code and settings as the searched pair, so baselines compare fairly."""
    from coevo.cli import main
    from coevo.config import dump_config, load_config

    teacher = Path(json.loads((search_dir / "teacher.json").read_text())["G_A"]).parent
    for g in ("G_A", "G_B"):
        assert main(["prune", "--generator", str(teacher / f"{g}.pt"), "--method", "l1", "--macs-ratio", "0.5",
                     "--out", str(tmp_path / f"{g}_l1.pt")]) == 0
    cfg_file = dump_config(load_config(search_dir / "config.yaml"), tmp_path / "job.yaml")
    fast = ["--set", "finetune.epochs=1", "--set", "finetune.epochs_decay=0", "--set", "finetune.max_steps_per_epoch=1"]
    base = ["finetune", "--teacher", str(teacher), "--genome-a", str(tmp_path / "G_A_l1.genome.json"),
            "--genome-b", str(tmp_path / "G_B_l1.genome.json"), "--config", str(cfg_file)]
    out = tmp_path / "ft_l1"
    assert main(base + ["--out", str(out)] + fast) == 0
    report = json.loads((out / "finetune.json").read_text())
    assert report["method"] == {"G_A": "l1", "G_B": "l1"}
    assert load_generator(out / "G_A.pt").arch.widths == Genome.load_json(tmp_path / "G_A_l1.genome.json").widths()
    # the same settings as the searched pair's fine-tuning: one config, one recipe
    searched = tmp_path / "ft_search"
    assert main(["finetune", "--search", str(search_dir), "--out", str(searched)] + fast) == 0
    assert load_config(searched / "config.yaml").finetune == load_config(out / "config.yaml").finetune
    capsys.readouterr()
    assert main(["finetune", "--genome-a", "a.json", "--genome-b", "b.json", "--out", str(tmp_path / "x")]) == 2
    assert "--teacher" in capsys.readouterr().err
    assert main(["finetune", "--search", str(search_dir), "--genome-a", "a.json", "--out", str(tmp_path / "y")]) == 2


def test_feature_distillation_trains_and_checkpoints_its_adapters(tmp_path, search_dir):
    """lambda_feature > 0: the loss has feature terms, the 1x1 adapters learn and are checkpointed."""
    fast = ["finetune.epochs=2", "finetune.epochs_decay=0", "finetune.max_steps_per_epoch=2",
            "finetune.sample_every=0", "finetune.lambda_feature=1.0"]
    out = finetune(search_dir, tmp_path / "feat", overrides=fast)
    steps = [r for r in read_jsonl(out / "log.jsonl") if r["kind"] == "epoch"]
    assert all(r["feature_A"] > 0 and r["feature_B"] > 0 for r in steps)
    ckpt = safe_torch_load(out / "checkpoint.pt")
    assert ckpt["adapters"] and any(k.startswith("maps.G_A_block") for k in ckpt["adapters"])
    assert finetune(search_dir, out, resume=True) == out  # the adapters load back from the checkpoint
    assert json.loads((out / "finetune.json").read_text())["lambda_feature"] == 1.0
    plain = finetune(search_dir, tmp_path / "plain", overrides=fast[:-1])
    assert safe_torch_load(plain / "checkpoint.pt")["adapters"] == {}
    assert "feature_A" not in [r for r in read_jsonl(plain / "log.jsonl") if r["kind"] == "epoch"][0]
