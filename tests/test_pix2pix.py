"""pix2pix: the aligned data layout, the built-in paired task, pix2pix teacher files (bit-exact against the
reference's layout, 6-channel D included), training with exact resume, the student objective, evaluation.
Tiny sizes: 64 px (a 6-level U-Net), ngf/ndf 4, a handful of pairs, one thread."""
from __future__ import annotations

import functools
import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from coevo.cli import main
from coevo.config import ConfigError, load_config
from coevo.data.aligned import AlignedDataset, build_aligned_datasets, detect_layout, resolve_layout
from coevo.data.errors import DataError
from coevo.data.images import to_tensor
from coevo.data.paired_synthetic import make_paired_synthetic, render_pair
from coevo.data.synthetic import render_scene
from coevo.errors import CheckpointError
from coevo.evaluation.paired import evaluate_paired
from coevo.models.io import safe_torch_load
from coevo.models.pix2pix import (find_pix2pix_teacher, load_pix2pix_discriminator, load_pix2pix_generator,
                                  teacher_kind)
from coevo.models.unet import UnetArch, UnetGenerator
from coevo.core.runs import read_jsonl
from coevo.core.rng import torch_rng
from coevo.train.pix2pix import (Pix2PixTrainer, SeededDropout, build_pix2pix, finetune_pix2pix_student,
                                 resolve_num_downs, seed_dropout, train_pix2pix)

from conftest import assert_same_tree
from test_unet import _RefUnet, _randomise_norms


# ----------------------------------------------------------------- helpers
def write_pairs(folder, halves, size=None):
    """One aligned image per (left, right) pair of HxWx3 uint8 arrays, named 000.png..."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, (a, b) in enumerate(halves):
        Image.fromarray(np.concatenate([a, b], axis=1)).save(folder / f"{i:03d}.png")
    return folder


def inverted_pairs(n, side, seed=0):
    """Pairs whose right half is the left one inverted (255 - v): in tensors, B == -A exactly."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        a = rng.integers(0, 256, size=(side, side, 3), dtype=np.uint8)
        out.append((a, 255 - a))
    return out


def tiny_cfg(root, *extra):
    return load_config(None, [f"data.root={root}", "data.load_size=64", "data.crop_size=64", "model.ngf=4",
                              "model.ndf=4", "train.epochs=1", "train.epochs_decay=1", "train.log_every=1",
                              "train.sample_images=2", "finetune.epochs=1", "finetune.epochs_decay=0",
                              "finetune.max_steps_per_epoch=2", "finetune.log_every=1",
                              "data.synthetic_n_train=4", "data.synthetic_n_test=2", *extra])


@pytest.fixture(scope="module")
def paired_set(tmp_path_factory):
    return make_paired_synthetic(tmp_path_factory.mktemp("p2p") / "data", size=64, n_train=4, n_test=2, seed=0)


# ----------------------------------------------------------------- the aligned loader
@pytest.mark.parametrize("direction", ["AtoB", "BtoA"])
def test_aligned_pairs_split_at_the_middle_with_one_crop_and_flip(tmp_path, direction):
    rng = np.random.default_rng(1)
    left = rng.integers(0, 256, size=(40, 40, 3), dtype=np.uint8)
    right = rng.integers(0, 256, size=(40, 40, 3), dtype=np.uint8)
    write_pairs(tmp_path / "d" / "train", [(left, right)])
    plain = AlignedDataset(tmp_path / "d", "train", load_size=40, crop_size=40, direction=direction, augment=False)
    item = plain[0]
    a, b = (left, right) if direction == "AtoB" else (right, left)
    assert torch.equal(item["A"], to_tensor(Image.fromarray(a))) and torch.equal(item["B"], to_tensor(Image.fromarray(b)))

    # augmentation: the same random crop and flip of both halves (B == -A survives it, to float rounding)
    write_pairs(tmp_path / "inv" / "train", inverted_pairs(3, 40))
    ds = AlignedDataset(tmp_path / "inv", "train", load_size=40, crop_size=32, direction=direction, seed=3)
    crops = set()
    for epoch in range(4):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            it = ds[i]
            assert it["A"].shape == (3, 32, 32) and torch.allclose(it["B"], -it["A"], atol=1e-6)
            crops.add(it["A"][0, 0, :4].numpy().tobytes())
    assert len(crops) > 3  # the crops (and flips) do vary
    ds.set_epoch(2)
    again = AlignedDataset(tmp_path / "inv", "train", load_size=40, crop_size=32, direction=direction, seed=3)
    again.set_epoch(2)
    assert torch.equal(ds[1]["A"], again[1]["A"])  # a sample is a function of (seed, epoch, index)


def test_aligned_bad_inputs_are_one_line_errors_naming_the_file(tmp_path):
    with pytest.raises(DataError, match="train/ and test/") as info:
        AlignedDataset(tmp_path / "nothing", "train")
    root = tmp_path / "d"
    (root / "train").mkdir(parents=True)
    with pytest.raises(DataError, match="no image files") as info:
        AlignedDataset(root, "train")
    write_pairs(root / "train", inverted_pairs(2, 8))
    Image.fromarray(np.zeros((8, 17, 3), np.uint8)).save(root / "train" / "odd.png")
    with pytest.raises(DataError, match="odd.png is 17x8 pixels: an odd width") as info:
        AlignedDataset(root, "train", load_size=8, crop_size=8)
    assert "\n" not in str(info.value)
    (root / "train" / "odd.png").unlink()
    Image.fromarray(np.zeros((10, 20, 3), np.uint8)).save(root / "train" / "zz_big.png")
    with pytest.raises(DataError, match="differ in size: zz_big.png is 20x10, 000.png is 16x8") as info:
        AlignedDataset(root, "train", load_size=8, crop_size=8)
    assert "\n" not in str(info.value)
    (root / "train" / "zz_big.png").unlink()
    (root / "train" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    with pytest.raises(DataError, match="cannot read image .*bad.png") as info:
        AlignedDataset(root, "train", load_size=8, crop_size=8)
    assert "skip_bad_images" in str(info.value) and "\n" not in str(info.value)
    assert len(AlignedDataset(root, "train", load_size=8, crop_size=8, skip_bad=True)) == 2
    with pytest.raises(DataError, match="AtoB or BtoA"):
        AlignedDataset(root, "train", load_size=8, crop_size=8, direction="AB")


def test_layout_is_detected_from_the_folder_and_checked_in_the_config(tmp_path, image_folder, paired_set):
    assert detect_layout(paired_set) == "aligned" and detect_layout(image_folder) == "unaligned"
    assert detect_layout(tmp_path / "missing") is None
    assert resolve_layout(load_config(None, [f"data.root={paired_set}"]).data) == "aligned"
    assert resolve_layout(load_config(None, [f"data.root={image_folder}"]).data) == "unaligned"
    assert resolve_layout(load_config(None, ["data.synthetic_task=pix2pix"]).data) == "aligned"
    assert resolve_layout(load_config(None, [f"data.root={paired_set}", "data.layout=unaligned"]).data) == "unaligned"
    with pytest.raises(ConfigError, match="data.layout=unaligned"):
        load_config(None, ["data.synthetic_task=pix2pix", "data.layout=unaligned"])
    with pytest.raises(ConfigError, match="data.direction"):
        load_config(None, ["data.direction=AB"])
    # an unaligned folder given as aligned data: named, with the key that fixes it
    cfg = load_config(None, [f"data.root={image_folder}", "data.layout=aligned"])
    with pytest.raises(DataError, match="set data.layout=unaligned"):
        build_aligned_datasets(cfg.data)


# ----------------------------------------------------------------- the built-in paired task
def test_paired_synthetic_task_is_deterministic_and_exact(tmp_path):
    a = make_paired_synthetic(tmp_path / "a", size=32, n_train=3, n_test=2, seed=5)
    b = make_paired_synthetic(tmp_path / "b", size=32, n_train=3, n_test=2, seed=5)
    c = make_paired_synthetic(tmp_path / "c", size=32, n_train=3, n_test=2, seed=6)
    files = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert [str(f) for f in files] == ["test/0000.png", "test/0001.png", "train/0000.png", "train/0001.png",
                                       "train/0002.png", "val/0000.png"]
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert any((a / f).read_bytes() != (c / f).read_bytes() for f in files)
    # each image is a snow scene's summer rendering | its exact winter translation
    img = np.asarray(Image.open(a / "test" / "0001.png"))
    scene = render_scene(5, "testA", 1, 32)
    assert img.shape == (32, 64, 3) and np.array_equal(img[:, :32], scene["A"]) and np.array_equal(img[:, 32:], scene["B"])
    assert np.array_equal(render_pair(5, "train", 2, 32), np.asarray(Image.open(a / "train" / "0002.png")))
    meta = json.loads((a / "meta.json").read_text())
    assert meta["task"] == "pix2pix" and meta["layout"] == "aligned" and "exact" in meta["description"]
    assert meta["counts"] == {"train": 3, "val": 1, "test": 2}
    # the same set again is reused, another one is refused without --force, a folder of yours always
    before = (a / "train" / "0000.png").stat().st_mtime_ns
    make_paired_synthetic(a, size=32, n_train=3, n_test=2, seed=5)
    assert (a / "train" / "0000.png").stat().st_mtime_ns == before
    with pytest.raises(DataError, match="--force"):
        make_paired_synthetic(a, size=32, n_train=3, n_test=2, seed=7)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "photo.jpg").write_bytes(b"x")
    with pytest.raises(DataError, match="other files"):
        make_paired_synthetic(tmp_path / "mine", size=32, n_train=3, n_test=2, seed=5, force=True)
    assert main(["data", "synthetic", "--task", "pix2pix", "--out", str(tmp_path / "cli"), "--size", "32",
                 "--n-train", "3", "--n-test", "2", "--seed", "5"]) == 0
    assert (tmp_path / "cli" / "train" / "0000.png").read_bytes() == (a / "train" / "0000.png").read_bytes()


# ----------------------------------------------------------------- teacher files
class _RefD(nn.Module):
    """The reference's NLayerDiscriminator (models/networks.py), restated."""

    def __init__(self, input_nc, ndf=64, n_layers=3, norm_layer=nn.BatchNorm2d):
        super().__init__()
        if type(norm_layer) == functools.partial:  # noqa: E721  (as the reference tests it)
            use_bias = norm_layer.func == nn.InstanceNorm2d
        else:
            use_bias = norm_layer == nn.InstanceNorm2d
        seq = [nn.Conv2d(input_nc, ndf, kernel_size=4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers):
            prev, mult = mult, min(2 ** n, 8)
            seq += [nn.Conv2d(ndf * prev, ndf * mult, kernel_size=4, stride=2, padding=1, bias=use_bias),
                    norm_layer(ndf * mult), nn.LeakyReLU(0.2, True)]
        prev, mult = mult, min(2 ** n_layers, 8)
        seq += [nn.Conv2d(ndf * prev, ndf * mult, kernel_size=4, stride=1, padding=1, bias=use_bias),
                norm_layer(ndf * mult), nn.LeakyReLU(0.2, True)]
        seq += [nn.Conv2d(ndf * mult, 1, kernel_size=4, stride=1, padding=1)]
        self.model = nn.Sequential(*seq)

    def forward(self, x):
        return self.model(x)


def _reference_pix2pix(folder, seed=0, num_downs=6):
    """A random reference pix2pix checkpoint folder (unet, 6 levels, batch norm, dropout; D on 6 channels)."""
    batch = functools.partial(nn.BatchNorm2d, affine=True, track_running_stats=True)
    torch.manual_seed(seed)
    g = _randomise_norms(_RefUnet(3, 3, num_downs, ngf=4, norm_layer=batch, use_dropout=True), seed)
    d = _randomise_norms(_RefD(6, ndf=4, n_layers=3, norm_layer=batch), seed + 1)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(g.state_dict(), folder / "latest_net_G.pth")
    torch.save(d.state_dict(), folder / "latest_net_D.pth")
    return g, d


def test_reference_pix2pix_teacher_loads_bit_exactly_with_its_six_channel_d(tmp_path):
    ref_g, ref_d = _reference_pix2pix(tmp_path / "t")
    assert teacher_kind(tmp_path / "t") == "pix2pix" and teacher_kind(tmp_path) is None
    paths = find_pix2pix_teacher(tmp_path / "t")
    assert paths.G.name == "latest_net_G.pth" and paths.D.name == "latest_net_D.pth"
    g = load_pix2pix_generator(paths.G, dropout=True)
    assert isinstance(g.arch, UnetArch) and (g.arch.num_downs, g.arch.ngf, g.arch.norm, g.arch.dropout) == \
        (6, 4, "batch", True)
    assert sum(isinstance(m, nn.Dropout) for m in g.modules()) == \
        sum(isinstance(m, nn.Dropout) for m in ref_g.modules()) == 1
    assert not load_pix2pix_generator(paths.G, dropout=False).arch.dropout
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        assert torch.equal(g(x), ref_g.eval()(x))
        # train mode (the reference's test script without --eval): batch statistics, the same dropout masks
        g.train(), ref_g.train()
        with torch.random.fork_rng():
            torch.manual_seed(1)
            y_ref = ref_g(x)
            torch.manual_seed(1)
            y = g(x)
        assert torch.equal(y, y_ref)
    d = load_pix2pix_discriminator(paths.D, generator=g)
    assert (d.arch.in_channels, d.arch.norm, d.arch.n_layers, d.arch.ndf) == (6, "batch", 3, 4)
    pair = torch.cat([x, torch.tanh(x * 3)], 1)
    with torch.no_grad():
        assert torch.equal(d(pair), ref_d.eval()(pair))
    # a CycleGAN discriminator (3 channels) is not this model's
    torch.save(_RefD(3, ndf=4).state_dict(), tmp_path / "d3.pth")
    with pytest.raises(CheckpointError, match=r"3 \+ 3 = 6 channels"):
        load_pix2pix_discriminator(tmp_path / "d3.pth", generator=g)
    (tmp_path / "t" / "latest_net_G.pth").unlink()
    with pytest.raises(CheckpointError, match="missing G.pt or latest_net_G.pth"):
        find_pix2pix_teacher(tmp_path / "t")


# ----------------------------------------------------------------- training
def test_num_downs_follows_the_image_size():
    assert [resolve_num_downs(0, s) for s in (64, 128, 256, 512, 96)] == [6, 7, 8, 8, 5]
    assert resolve_num_downs(7, 256) == 7
    with pytest.raises(ConfigError, match="multiple of 2\\*\\*7"):
        resolve_num_downs(7, 64)
    with pytest.raises(ConfigError, match="at least 5"):
        resolve_num_downs(0, 48)


def test_dropout_draws_from_its_own_seeded_stream():
    torch.manual_seed(0)
    g = UnetGenerator(UnetArch(num_downs=6, ngf=4, dropout=True))
    rng = torch_rng(3)
    assert seed_dropout(g, rng) == 1 and sum(isinstance(m, SeededDropout) for m in g.modules()) == 1
    assert set(g.state_dict()) == set(UnetGenerator(g.arch).state_dict())  # no weights added
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    start, global_before = rng.get_state(), torch.get_rng_state()
    with torch.no_grad():
        g.train()
        y1, y2 = g(x), g(x)
        rng.set_state(start)
        y3 = g(x)
        g.eval()
        y_eval = g(x)
    assert torch.equal(y1, y3) and not torch.equal(y1, y2)  # replayed from the state; fresh masks otherwise
    assert not torch.equal(g(x), y1) and torch.equal(g(x), y_eval)  # eval mode: no dropout
    assert torch.equal(torch.get_rng_state(), global_before)  # torch's global generator was never drawn from


def test_pix2pix_teacher_training_resumes_bit_identically(tmp_path, paired_set, monkeypatch):
    cfg = tiny_cfg(paired_set)
    nets = build_pix2pix(cfg, cfg.seed)
    assert nets.D.arch.in_channels == 6 and nets.G.arch.dropout and nets.G.arch.num_downs == 6
    straight = train_pix2pix(cfg, tmp_path / "straight")

    real_step, calls = Pix2PixTrainer.step, {"n": 0}

    def interrupt(self, *args):
        calls["n"] += 1
        if calls["n"] == 6:  # in the second epoch (4 pairs per epoch), after the first checkpoint
            raise KeyboardInterrupt
        return real_step(self, *args)

    with monkeypatch.context() as m:
        m.setattr(Pix2PixTrainer, "step", interrupt)
        with pytest.raises(KeyboardInterrupt):
            train_pix2pix(cfg, tmp_path / "resumed")
    assert safe_torch_load(tmp_path / "resumed" / "checkpoint.pt")["epoch"] == 1
    resumed = train_pix2pix(cfg, tmp_path / "resumed", resume=True)
    a, b = safe_torch_load(straight / "checkpoint.pt"), safe_torch_load(resumed / "checkpoint.pt")
    for key in ("nets", "optimizers", "schedulers", "rng", "epoch", "global_step", "log_records"):
        assert_same_tree(a[key], b[key], key)
    for name in ("G.pt", "D.pt", "latest_net_G.pth", "latest_net_D.pth"):
        assert_same_tree(safe_torch_load(straight / name), safe_torch_load(resumed / name), name)

    def losses_only(run):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in read_jsonl(run / "log.jsonl")]
    records = losses_only(straight)
    assert records == losses_only(resumed)
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert len(epochs) == 2 and {"D_fake", "D_real", "G_GAN", "G_L1", "val_psnr"} <= set(epochs[-1])
    summary = json.loads((straight / "summary.json").read_text())
    assert summary["kind"] == "pix2pix" and summary["val"]["source"] == "val/" and summary["test"]["images"] == 2
    # the run folder is a pix2pix teacher; its reference-named files load as the coevo ones do
    paths = find_pix2pix_teacher(straight)
    assert paths.G.name == "G.pt" and paths.D.name == "D.pt"
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        assert torch.equal(load_pix2pix_generator(paths.G)(x), load_pix2pix_generator(straight / "latest_net_G.pth")(x))
    assert load_pix2pix_discriminator(straight / "latest_net_D.pth", load_pix2pix_generator(paths.G)).arch.norm == "batch"


def test_sample_grids_do_not_change_a_train_reference_mode_run(tmp_path, paired_set):
    """Sample grids run G in train reference mode (dropout on) on the scoring stream, not the training's
    seeded dropout stream: drawing them every epoch or never ends with the same weights."""
    ends = []
    for every in (1, 0):
        cfg = tiny_cfg(paired_set, "model.reference_mode=train", "pix2pix.dropout=true",
                       "train.max_steps_per_epoch=1", f"train.sample_every={every}")
        run = train_pix2pix(cfg, tmp_path / f"every{every}")
        assert (run / "samples" / "epoch_001.png").exists() == (every == 1)
        ends.append(safe_torch_load(run / "checkpoint.pt"))
    assert build_pix2pix(cfg, cfg.seed).G.arch.dropout
    for key in ("nets", "optimizers", "rng"):
        assert_same_tree(ends[0][key], ends[1][key], key)


def test_student_objective_distils_towards_the_teacher(tmp_path, paired_set):
    cfg = tiny_cfg(paired_set)
    teacher = build_pix2pix(cfg, 0).G.eval()
    student = UnetGenerator(teacher.arch.with_widths({k: max(1, v // 2) for k, v in teacher.arch.widths.items()}))
    splits = build_aligned_datasets(cfg.data, cfg.seed)
    (tmp_path / "ft").mkdir()
    out = finetune_pix2pix_student(cfg, student, teacher, splits, tmp_path / "ft")
    assert out["G"] is student and out["discriminator"] == "fresh" and out["result"].global_step == 2
    steps = [r for r in read_jsonl(tmp_path / "ft" / "log.jsonl") if r["kind"] == "step"]
    assert len(steps) == 2 and all({"G_GAN", "G_L1", "distill", "D_real", "D_fake"} <= set(r) for r in steps)
    assert out["best_epoch"] == 1 and out["val_psnr"] > 0
    assert safe_torch_load(tmp_path / "ft" / "checkpoint.pt")["recipe"] == "pix2pix"


# ----------------------------------------------------------------- evaluation
class _Negate(nn.Module):
    def forward(self, x):
        return -x


def test_evaluate_scores_the_paired_target_in_both_directions(tmp_path, paired_set, capsys):
    write_pairs(tmp_path / "inv" / "test", inverted_pairs(3, 32))
    for direction in ("AtoB", "BtoA"):
        r = evaluate_paired(_Negate(), tmp_path / "inv", direction, teacher=nn.Identity(), batch_size=2)
        assert r["n_images"] == 3 and r["psnr"] == 100.0 and r["ssim"] == pytest.approx(1.0)
        assert r["psnr_to_teacher"] < 20 and r["l1_to_teacher"] > 0.1

    cfg = tiny_cfg(paired_set, "train.epochs=1", "train.epochs_decay=0")
    run = train_pix2pix(cfg, tmp_path / "run")
    assert main(["evaluate", "--model", str(run / "G.pt"), "--data", str(paired_set), "--teacher", str(run),
                 "--out", str(tmp_path / "e.json")]) == 0
    printed = capsys.readouterr().out
    assert "PSNR to target (dB)" in printed and "PSNR to teacher (dB)" in printed
    result = json.loads((tmp_path / "e.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    assert result["psnr_to_teacher"] == 100.0 and result["n_images"] == 2
    assert result["psnr"] == pytest.approx(summary["test"]["psnr"], abs=1e-4)
    # by default train mode (the reference's test script without --eval: one image per forward, dropout from
    # the fixed scoring stream), as the run measured its test split; eval mode differs
    assert result["reference_mode"] == summary["reference_mode"] == "train"
    r = evaluate_paired(run / "G.pt", paired_set, reference_mode="eval")
    assert r["reference_mode"] == "eval" and r["psnr"] != result["psnr"]


# ----------------------------------------------------------------- search and fine-tuning of a student
@pytest.fixture(scope="module")
def pix2pix_teacher(tmp_path_factory, paired_set):
    cfg = tiny_cfg(paired_set, "train.epochs_decay=0")
    return train_pix2pix(cfg, tmp_path_factory.mktemp("teacher") / "run")


def search_cfg(root, *extra):
    return tiny_cfg(root, "search.population=4", "search.generations=2", "search.eval_images=1",
                    "search.macs_ratio=0.25", *extra)


def test_one_population_search_meets_the_budget_and_resumes_exactly(tmp_path, paired_set, pix2pix_teacher):
    from coevo.prune import Genome
    from coevo.search.pix2pix import run_pix2pix_search

    cfg = search_cfg(paired_set)
    straight = run_pix2pix_search(cfg, tmp_path / "s", pix2pix_teacher)
    summary = json.loads((straight / "search.json").read_text())
    assert summary["metric"] == "discriminator" and summary["finished"] and summary["generations"] == 2
    assert summary["best"]["macs"] <= summary["budget"]["max_macs"] and summary["best"]["macs_ratio"] <= 0.25
    assert summary["best"]["l1_target"] > 0 and summary["best"]["perceptual"] >= 0
    # aligned data: train mode by default, scored without noise (one fixed dropout stream), and said so
    assert summary["reference_mode"] == "train" and "fixed stream" in summary["scoring"]
    history = read_jsonl(straight / "history.jsonl")
    assert [r["generation"] for r in history] == [0, 1, 2]
    assert json.loads((straight / "teacher.json").read_text())["kind"] == "pix2pix"

    resumed = run_pix2pix_search(cfg, tmp_path / "r", pix2pix_teacher, stop_after=1)
    assert len(read_jsonl(resumed / "history.jsonl")) == 2
    run_pix2pix_search(cfg, resumed, resume=True)  # the teacher from the run's teacher.json
    a, b = safe_torch_load(straight / "state.pt"), safe_torch_load(resumed / "state.pt")
    for key in ("populations", "rng_state", "generation", "cache"):
        assert_same_tree(a[key], b[key], key)
    assert Genome.load_json(straight / "genomes" / "best_G.json") == Genome.load_json(resumed / "genomes" / "best_G.json")
    drop = lambda rs: [{k: v for k, v in r.items() if k != "seconds"} for r in rs]  # noqa: E731
    assert drop(history) == drop(read_jsonl(resumed / "history.jsonl"))


def test_search_without_the_d_uses_an_offline_metric(tmp_path, paired_set, pix2pix_teacher):
    import shutil

    from coevo.search.pix2pix import run_pix2pix_search

    only_g = tmp_path / "g_only"
    only_g.mkdir()
    shutil.copy(pix2pix_teacher / "latest_net_G.pth", only_g)
    run = run_pix2pix_search(search_cfg(paired_set, "search.generations=0"), tmp_path / "s", only_g)
    summary = json.loads((run / "search.json").read_text())
    assert summary["metric"] in ("teacher-features", "lpips", "l1") and summary["teacher"].keys() == {"kind", "G"}
    with pytest.raises(ConfigError, match="search.compute=latency"):
        run_pix2pix_search(search_cfg(paired_set, "search.compute=latency"), tmp_path / "lat", only_g)


def test_searched_student_is_fine_tuned_by_the_pix2pix_objective(tmp_path, paired_set, pix2pix_teacher):
    from coevo.models.io import load_generator
    from coevo.prune import Genome
    from coevo.search.pix2pix import run_pix2pix_search
    from coevo.train.pix2pix import finetune_pix2pix

    search = run_pix2pix_search(search_cfg(paired_set, "search.generations=1"), tmp_path / "s", pix2pix_teacher)
    out = finetune_pix2pix(search, tmp_path / "ft")
    record = json.loads((out / "finetune.json").read_text())
    genome = Genome.load_json(search / "genomes" / "best_G.json")
    student = load_generator(out / "G.pt")
    assert student.arch.widths == genome.widths() == record["widths"] and record["macs_ratio"] <= 0.25
    assert record["discriminator"] == "teacher" and record["steps"] == 2
    assert record["test"]["images"] == 2 and record["test"]["psnr_gap_db"] == pytest.approx(
        record["test"]["teacher"]["psnr"] - record["test"]["student"]["psnr"])
    steps = [r for r in read_jsonl(out / "log.jsonl") if r["kind"] == "step"]
    assert steps and all(r["distill"] > 0 and r["G_L1"] > 0 for r in steps)
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():  # the reference-named copy is the same network
        assert torch.equal(student(x), load_generator(out / "latest_net_G.pth")(x))


def test_cli_search_finetune_and_compress_take_a_pix2pix_teacher(tmp_path, paired_set, pix2pix_teacher, capsys):
    from coevo.models.io import load_generator

    common = ["--data", str(paired_set), "--set", "data.load_size=64", "--set", "data.crop_size=64",
              "--set", "model.ngf=4", "--set", "model.ndf=4", "--set", "search.population=4",
              "--set", "search.generations=1", "--set", "search.eval_images=1", "--set", "finetune.epochs=1",
              "--set", "finetune.max_steps_per_epoch=2", "--set", "export.formats=[safetensors]"]
    assert main(["search", "--teacher", str(pix2pix_teacher), "--out", str(tmp_path / "s"), *common]) == 0
    assert "pix2pix search: 1 generations" in capsys.readouterr().out
    assert main(["finetune", "--search", str(tmp_path / "s"), "--out", str(tmp_path / "f")]) == 0
    assert "test PSNR" in capsys.readouterr().out and (tmp_path / "f" / "G.pt").is_file()

    config = tmp_path / "c.yaml"
    config.write_text("seed: 0\n")
    # a one-shot baseline (coevo prune) fine-tuned by the same recipe
    assert main(["prune", "--method", "l1", "--generator", str(pix2pix_teacher / "latest_net_G.pth"),
                 "--out", str(tmp_path / "l1.pt")]) == 0
    assert main(["finetune", "--teacher", str(pix2pix_teacher), "--genome-a", str(tmp_path / "l1.genome.json"),
                 "--config", str(config), "--out", str(tmp_path / "f_l1"), *common]) == 0
    assert "test PSNR" in capsys.readouterr().out
    record = json.loads((tmp_path / "f_l1" / "finetune.json").read_text())
    assert record["macs_ratio"] <= 0.25 and record["genome_from"].endswith("l1.genome.json")
    assert main(["finetune", "--teacher", str(pix2pix_teacher), "--genome-a", str(tmp_path / "l1.genome.json"),
                 "--genome-b", str(tmp_path / "l1.genome.json"), "--config", str(config), "--out",
                 str(tmp_path / "x")]) == 2
    assert "a pix2pix teacher has one generator" in capsys.readouterr().err
    out = tmp_path / "c"
    assert main(["compress", "--config", str(config), "--teacher", str(pix2pix_teacher), "--out", str(out),
                 *common]) == 0
    printed = capsys.readouterr().out
    assert "pix2pix student:" in printed and "of the teacher's MACs" in printed
    summary = json.loads((out / "compress.json").read_text())
    assert summary["macs_ratio"] <= 0.25 and summary["export"]["safetensors"]["ok"]
    student = load_generator(out / "export" / "G.safetensors")
    assert student.arch.widths == summary["widths"]
    bad = tmp_path / "bad"  # a run that fails before its first checkpoint leaves nothing to resume or remove
    assert main(["compress", "--config", str(config), "--teacher", str(pix2pix_teacher), "--out", str(bad), *common,
                 "--set", "search.compute=latency"]) == 2
    assert "search.compute=latency" in capsys.readouterr().err and not bad.exists()
    before = (out / "finetune" / "G.pt").stat().st_mtime_ns
    assert main(["compress", "--config", str(config), "--out", str(out), "--resume", *common]) == 0
    assert (out / "finetune" / "G.pt").stat().st_mtime_ns == before  # finished stages are not redone


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_the_full_genome_scores_as_the_teacher_in_either_reference_mode(paired_set, pix2pix_teacher, mode):
    from coevo.prune import Genome
    from coevo.search.fitness import Objective
    from coevo.search.pix2pix import build_pix2pix_context, evaluate_pix2pix

    cfg = search_cfg(paired_set, f"model.reference_mode={mode}")
    ctx = build_pix2pix_context(cfg, find_pix2pix_teacher(pix2pix_teacher))
    assert ctx.reference_mode == mode and ctx.teacher.arch.dropout
    full = Genome.all_keep(ctx.teacher.arch)
    objective = Objective.from_config(cfg.search, images=1)
    (terms,) = evaluate_pix2pix(ctx, objective, [full])
    assert terms.perceptual == 0.0  # the same network, the same dropout masks: the teacher's output exactly
    assert terms.cycle == pytest.approx(float((ctx.teacher_output - ctx.targets).abs().mean()))
    assert evaluate_pix2pix(ctx, objective, [full]) == [terms]  # deterministic, dropout included


def test_data_check_reads_the_aligned_layout(tmp_path, paired_set, capsys):
    assert main(["data", "check", str(paired_set)]) == 0
    printed = capsys.readouterr().out
    assert all(f"{s} " in printed for s in ("train", "val", "test")) and "OK" in printed
    root = tmp_path / "d"
    write_pairs(root / "train", inverted_pairs(2, 8))
    Image.fromarray(np.zeros((8, 17, 3), np.uint8)).save(root / "train" / "odd.png")
    assert main(["data", "check", str(root)]) == 1
    printed = capsys.readouterr().out
    assert "odd.png is 17x8 pixels" in printed and "test " in printed and "missing" in printed


def test_coevo_train_on_aligned_data_trains_a_pix2pix_teacher(tmp_path, paired_set, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("seed: 0\ndata:\n  load_size: 64\n  crop_size: 64\nmodel:\n  ngf: 4\n  ndf: 4\n"
                      "train:\n  epochs: 1\n  epochs_decay: 0\n  max_steps_per_epoch: 2\n")
    out = tmp_path / "t"
    assert main(["train", "--config", str(config), "--data", str(paired_set), "--out", str(out)]) == 0
    assert "pix2pix teacher:" in capsys.readouterr().out
    assert teacher_kind(out) == "pix2pix" and json.loads((out / "data.json").read_text())["layout"] == "aligned"
    assert main(["train", "--out", str(out), "--resume"]) == 0  # a finished run: its files are rewritten alike
    assert safe_torch_load(out / "checkpoint.pt")["global_step"] == 2


# ----------------------------------------------------------------- coevo demo --task pix2pix: export, bench, report
TINY_DEMO = ["data.synthetic_n_train=6", "data.synthetic_n_test=2", "data.load_size=64", "data.crop_size=64",
             "model.ngf=4", "model.ndf=4", "train.epochs=1", "train.epochs_decay=0", "train.max_steps_per_epoch=2",
             "train.sample_every=0", "search.population=4", "search.generations=1", "search.eval_images=1",
             "finetune.epochs=1", "finetune.epochs_decay=0", "finetune.max_steps_per_epoch=2",
             "export.check_size=64", "export.calibration_images=2", "bench.size=64", "bench.warmup=1",
             "bench.repeats=2", "export.formats=[onnx]", "model.reference_mode=auto"]  # configs/pix2pix.yaml: eval (see there)


def test_demo_pix2pix_deploys_benchmarks_reports_and_resumes(tmp_path, capsys):
    out = tmp_path / "demo"
    sets = [a for s in TINY_DEMO for a in ("--set", s)]
    assert main(["demo", "--task", "pix2pix", "--out", str(out), *sets]) == 0
    printed = capsys.readouterr().out
    assert "pix2pix demo finished" in printed and "PSNR to teacher" in printed
    report = json.loads((out / "report.json").read_text())
    assert report["kind"] == "pix2pix" and report["macs_ratio"] <= 0.25 and len(report["checks"]) == 3
    # the cpu target's INT8 ONNX, calibrated and checked on input halves (and target halves) of the pairs
    deployed = report["deployed"]["backend"]
    assert deployed in ("onnxruntime-int8", "onnxruntime") and report["int8"] is not None
    assert "skipped" not in report["int8"] and report["int8"]["gt_drop_db"] is not None
    halves = sorted((out / "export" / "deploy_data" / "test_gt").iterdir())
    assert len(halves) == 2 and Image.open(halves[0]).size == (64, 64)
    rows = {(r["name"], r["backend"]) for r in json.loads((out / "bench" / "bench.json").read_text())["results"]}
    assert {("teacher G", "eager"), ("coevo G", "eager"), ("coevo G deployed", deployed)} <= rows
    assert report["speed"]["backend"] == deployed and report["speedup"] == report["speed"]["speedup_vs_teacher_eager"]
    # the built-in set is aligned: the default reference mode resolves to train, recorded where it is measured
    assert report["reference_mode"] == "train"
    ft = json.loads((out / "finetune" / "finetune.json").read_text())
    assert ft["reference_mode"] == "train" and yaml_mode(out / "search" / "config.yaml") == "train"
    assert report["teacher"]["psnr"] == pytest.approx(ft["test"]["teacher"]["psnr"], abs=1e-4)
    assert report["coevo"]["psnr"] == pytest.approx(ft["test"]["student"]["psnr"], abs=1e-4)
    summary = json.loads((out / "compress.json").read_text())
    assert summary["deployed"]["backend"] == deployed and summary["all_checks_pass"] == report["all_checks_pass"]
    before = {s: (out / s / "stage.json").stat().st_mtime_ns for s in ("export", "bench")}
    assert main(["demo", "--task", "pix2pix", "--out", str(out), "--resume", *sets]) == 0
    assert {s: (out / s / "stage.json").stat().st_mtime_ns for s in ("export", "bench")} == before
    assert json.loads((out / "report.json").read_text())["coevo"]["psnr"] == report["coevo"]["psnr"]
    from coevo.core.outputs import foreign_entries

    assert foreign_entries(out) == []  # all coevo's (built-in pairs, deploy halves): --force may replace it


def yaml_mode(path):
    return load_config(path).model.reference_mode


# ----------------------------------------------------------------- coevo translate on aligned pairs
def test_translate_reads_the_input_half_of_aligned_pairs(tmp_path, paired_set, pix2pix_teacher, capsys):
    from coevo.data.images import load_image
    from coevo.evaluation.metrics import psnr
    from coevo.evaluation.translate import input_images, plan_translation, run_translation

    model = pix2pix_teacher / "G.pt"
    out = tmp_path / "t"
    assert main(["translate", "--model", str(model), "--input", str(paired_set), "--output", str(out)]) == 0
    assert "the A halves of the pairs in" in capsys.readouterr().out
    files = sorted(out.iterdir())
    assert [f.name for f in files] == [p.name for p in sorted((paired_set / "test").iterdir())]
    assert all(Image.open(f).size == (64, 64) for f in files)  # one half, not the 128x64 pair
    # train mode by default (the reference's test script); the outputs are those coevo evaluate scores
    r = evaluate_paired(model, paired_set, reference_mode="train")
    targets = [AlignedDataset(paired_set, "test", 64, 64, augment=False)[i]["B"] for i in range(2)]
    got = [float(psnr(to_tensor(load_image(f))[None], t[None])) for f, t in zip(files, targets)]
    assert got == pytest.approx(r["psnr_per_image"], abs=1e-3)
    # model and teacher draw the same masks: a network scored against itself is its teacher exactly
    assert evaluate_paired(model, paired_set, teacher=model, reference_mode="train")["psnr_to_teacher"] == 100.0
    # a split folder of the data set is pairs too; BtoA reads the right half
    write_pairs(tmp_path / "inv" / "train", inverted_pairs(1, 8))
    write_pairs(tmp_path / "inv" / "test", inverted_pairs(2, 8))
    plan = plan_translation(input_images(tmp_path / "inv" / "test"), tmp_path / "b", size=8, direction="BtoA")
    (first, _) = run_translation(nn.Identity(), plan)
    right = np.asarray(Image.open(tmp_path / "inv" / "test" / "000.png"))[:, 8:]
    assert np.array_equal(np.asarray(Image.open(first)), right)
    # whole images of an odd width cannot be pairs: one line naming the fix
    Image.fromarray(np.zeros((64, 129, 3), np.uint8)).save(tmp_path / "odd.png")
    assert main(["translate", "--model", str(model), "--input", str(tmp_path / "odd.png"), "--output",
                 str(tmp_path / "o"), "--direction", "AtoB"]) != 0
    assert "drop --direction for whole images" in capsys.readouterr().err


def test_reference_mode_auto_resolves_per_kind_of_job_and_is_recorded(tmp_path):
    from coevo.config import Config, resolve_reference_mode

    assert load_config(None).model.reference_mode == "eval" == Config().model.reference_mode  # CycleGAN
    assert load_config(None, ["data.synthetic_task=pix2pix"]).model.reference_mode == "train"
    assert load_config(None, ["data.synthetic_task=pix2pix", "model.reference_mode=eval"]).model.reference_mode \
        == "eval"  # an explicit mode stays
    write_pairs(tmp_path / "d" / "train", inverted_pairs(1, 8))
    assert load_config(None, [f"data.root={tmp_path / 'd'}"]).model.reference_mode == "train"  # aligned folder
    cfg = Config()
    cfg.model.reference_mode = "auto"
    assert resolve_reference_mode(cfg, "pix2pix") == "train" == cfg.model.reference_mode
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  synthetic_task: pix2pix\n")
    from coevo.config import dump_config

    dump_config(load_config(path), tmp_path / "resolved.yaml")
    assert "reference_mode: train" in (tmp_path / "resolved.yaml").read_text()  # a run's config.yaml records it


def test_a_reference_unet_256_pix2pix_compresses_at_its_own_size_exports_and_translates(tmp_path, capsys):
    """The issue's reference-layout pix2pix (unet_256: 8 levels, batch norm, dropout, a 6-channel D), random
    weights, through coevo compress at 256 px (its own size) to <= 25% of the MACs, export, translate."""
    _reference_pix2pix(tmp_path / "t", num_downs=8)
    data = make_paired_synthetic(tmp_path / "d", size=256, n_train=2, n_test=1, n_val=1, seed=0)
    config = tmp_path / "c.yaml"
    config.write_text("seed: 0\n")
    sets = ["data.load_size=256", "data.crop_size=256", "model.ndf=4", "search.population=4", "search.generations=1",
            "search.eval_images=1", "finetune.epochs=1", "finetune.epochs_decay=0", "finetune.max_steps_per_epoch=1",
            "export.formats=[onnx]", "export.int8=false", "export.check_size=256", "bench.size=256",
            "bench.warmup=0", "bench.repeats=1"]
    out = tmp_path / "run"
    assert main(["compress", "--config", str(config), "--teacher", str(tmp_path / "t"), "--data", str(data),
                 "--out", str(out), *[a for x in sets for a in ("--set", x)]]) == 0
    assert "of the teacher's MACs" in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert report["macs_ratio"] <= 0.25 and report["bench_size"] == 256 and report["reference_mode"] == "train"
    assert report["deployed"]["backend"] == "onnxruntime" and (out / "export" / "G.onnx").is_file()
    assert report["coevo"]["widths"] and json.loads((out / "search" / "search.json").read_text())["eval_size"] == 256
    assert main(["translate", "--model", str(out / "export" / "G.onnx"), "--input", str(data), "--output",
                 str(tmp_path / "tr")]) == 0
    assert [Image.open(f).size for f in sorted((tmp_path / "tr").iterdir())] == [(256, 256)]
