"""Reference-layout CycleGAN teachers beyond the RGB instance-norm ResNet, through the existing doors:
a 1-channel (grayscale) ResNet, a batch-norm ResNet and a ResNet with dropout, each a random-init folder of
``latest_net_{G,D}_{A,B}.pth`` state dicts, compressed end to end (search, fine-tune, export) to a quarter of
the MACs, then translating a folder, all at tiny sizes on one CPU thread."""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from coevo.cli import main
from coevo.models import DiscriminatorArch, GeneratorArch, NLayerDiscriminator, ResnetGenerator
from coevo.models.io import load_discriminator, load_generator

NGF, BLOCKS, SIZE = 4, 2, 32


def _randomise(net: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Non-trivial weights everywhere, BatchNorm affine parameters and running statistics included."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in itertools.chain(net.named_parameters(), net.named_buffers()):
            if t.dtype.is_floating_point:
                if name.endswith("running_var"):
                    t.copy_(torch.rand(t.shape, generator=gen) + 0.5)
                else:
                    t.copy_(torch.randn(t.shape, generator=gen) * (0.2 if t.dim() == 4 else 0.3))
    return net


def reference_teacher(folder: Path, norm: str = "instance", dropout: bool = False, channels: int = 3,
                      discriminators: bool = True, channels_B: int | None = None) -> GeneratorArch:
    """``latest_net_G_A.pth`` ... as the reference code saves them (bare state dicts, reference key names):
    ``--input_nc channels --output_nc channels_B`` (default: ``channels``). Returns G_A's architecture."""
    folder.mkdir(parents=True, exist_ok=True)
    channels_B = channels if channels_B is None else channels_B
    arch = GeneratorArch(ngf=NGF, n_blocks=BLOCKS, in_channels=channels, out_channels=channels_B, norm=norm,
                         dropout=dropout)
    back = GeneratorArch(ngf=NGF, n_blocks=BLOCKS, in_channels=channels_B, out_channels=channels, norm=norm,
                         dropout=dropout)
    for i, (name, a) in enumerate((("G_A", arch), ("G_B", back))):
        g = _randomise(ResnetGenerator(a), seed=i)
        torch.save(g.state_dict(), folder / f"latest_net_{name}.pth")
    if discriminators:  # D_A judges domain B, D_B domain A
        for i, (name, c) in enumerate((("D_A", channels_B), ("D_B", channels))):
            d = _randomise(NLayerDiscriminator(DiscriminatorArch(ndf=4, in_channels=c, norm=norm)), seed=10 + i)
            torch.save(d.state_dict(), folder / f"latest_net_{name}.pth")
    return arch


def image_folder(root: Path, n: int, gray: bool, seed: int = 0) -> Path:
    """trainA/B, testA/B of smooth random images (RGB, or grayscale PNGs of mode L)."""
    rng = np.random.default_rng(seed)
    for split in ("trainA", "trainB", "testA", "testB"):
        (root / split).mkdir(parents=True, exist_ok=True)
        for i in range(n if split.startswith("train") else 3):
            coarse = rng.integers(0, 256, size=(8, 8) if gray else (8, 8, 3), dtype=np.uint8)
            img = Image.fromarray(coarse).resize((SIZE, SIZE), Image.BICUBIC)
            img.save(root / split / f"{i:03d}.png")
    return root


def tiny_config(path: Path, data: Path, recipe: str = "gan", reference_mode: str = "eval") -> Path:
    cfg = {"seed": 0,
           "data": {"synthetic": False, "root": str(data), "load_size": SIZE, "crop_size": SIZE, "val_fraction": 0.25},
           "model": {"ngf": NGF, "n_blocks": BLOCKS, "ndf": 4, "reference_mode": reference_mode},
           "search": {"population": 4, "generations": 1, "eval_images": 3, "eval_size": SIZE, "macs_ratio": 0.25},
           "finetune": {"mode": recipe, "epochs": 1, "epochs_decay": 0, "max_steps_per_epoch": 2, "log_every": 1,
                        "pool_size": 2, "sample_images": 2},
           "export": {"formats": ["safetensors", "onnx"], "check_size": 40},
           "bench": {"size": SIZE, "warmup": 1, "repeats": 1, "threads": 1}}
    path.write_text(yaml.safe_dump(cfg))
    return path


def compress(tmp_path: Path, teacher: Path, data: Path, capsys, **cfg) -> Path:
    out = tmp_path / "run"
    argv = ["compress", "--config", str(tiny_config(tmp_path / "tiny.yaml", data, **cfg)), "--out", str(out),
            "--teacher", str(teacher)]
    assert main(argv) == 0, capsys.readouterr().err
    return out


def check_run(out: Path, arch: GeneratorArch) -> None:
    """The search met the budget, the fine-tuned students and the exports keep the teacher's kind
    (``arch``: G_A's; G_B maps back)."""
    search = json.loads((out / "search" / "search.json").read_text())
    for k in ("G_A", "G_B"):
        if k == "G_B":
            arch = GeneratorArch(ngf=arch.ngf, n_blocks=arch.n_blocks, in_channels=arch.out_channels,
                                 out_channels=arch.in_channels, norm=arch.norm, dropout=arch.dropout)
        best = search["best"][k]
        assert best["macs_ratio"] <= 0.25
        t = best["teacher_arch"]
        assert (t["in_channels"], t["out_channels"], t["norm"], t.get("dropout", False)) == \
            (arch.in_channels, arch.out_channels, arch.norm, arch.dropout)
        for f in (out / "finetune" / f"{k}.pt", out / "export" / f"{k}.safetensors"):
            s = load_generator(f).arch
            assert (s.in_channels, s.out_channels, s.norm, s.dropout) == \
                (arch.in_channels, arch.out_channels, arch.norm, arch.dropout), f
            assert s.widths != arch.widths
    assert (out / "export" / "G_A.onnx").is_file()
    bench = json.loads((out / "bench" / "bench.json").read_text())
    assert {"teacher G_A", "coevo G_A"} <= {r["name"] for r in bench["results"]}


def translate(model: Path, folder: Path, out: Path, capsys, *extra: str) -> list:
    assert main(["translate", "--model", str(model), "--input", str(folder), "--output", str(out), *extra]) == 0, \
        capsys.readouterr().err
    written = sorted(out.glob("*.png"))
    assert [p.stem for p in written] == sorted(p.stem for p in folder.glob("*.png"))
    return written


@pytest.mark.parametrize("recipe", ["gan", "distill"])
def test_one_channel_teacher_compresses_end_to_end(tmp_path, capsys, recipe):
    teacher = tmp_path / "teacher"
    arch = reference_teacher(teacher, channels=1)
    data = image_folder(tmp_path / "data", 8, gray=(recipe == "gan"))  # gray PNGs, or RGB read as their luma
    out = compress(tmp_path, teacher, data, capsys, recipe=recipe)
    check_run(out, arch)
    # the fine-tuning read grayscale images and trained the teacher's 1-channel discriminators
    finetune = json.loads((out / "finetune" / "finetune.json").read_text())
    assert finetune["recipe"] == recipe
    if recipe == "gan":
        assert finetune["discriminators"] == "teacher"
        with Image.open(next((out / "finetune" / "samples").glob("*.png"))) as grid:
            assert grid.mode == "RGB"
    report = json.loads((out / "report.json").read_text())
    for e in report["directions"].values():
        assert e["coevo"]["psnr_to_teacher"] is not None and e["coevo"]["l1_to_teacher"] >= 0
    with Image.open(out / report["directions"]["AtoB"]["grid"]) as grid:
        assert grid.mode == "RGB"
    for model in (out / "export" / "G_A.safetensors", out / "export" / "G_A.onnx"):
        written = translate(model, data / "testA", tmp_path / f"out_{model.suffix[1:]}", capsys)
        with Image.open(written[0]) as im:
            assert im.mode == "L" and im.size == (SIZE, SIZE)
    # the exported student translates as the fine-tuned one does, on the image's grayscale
    student = load_generator(out / "finetune" / "G_A.pt")
    x = torch.from_numpy(np.asarray(Image.open(data / "testA" / "000.png").convert("L"), dtype=np.float32))
    with torch.no_grad():
        y = student(x[None, None] / 127.5 - 1.0)[0, 0]
    got = np.asarray(Image.open(tmp_path / "out_safetensors" / "000.png"), dtype=np.float32) / 127.5 - 1.0
    assert np.abs(got - y.numpy()).max() <= 1.01 / 127.5


def test_one_channel_teacher_through_search_finetune_and_evaluate(tmp_path, capsys):
    """The separate doors: search, finetune --search, evaluate against the teacher (PSNR to ground truth
    of grayscale images), with a teacher given without discriminators (fine-tuning trains fresh 1-channel ones)."""
    teacher = tmp_path / "teacher"
    reference_teacher(teacher, channels=1, discriminators=False)
    data = image_folder(tmp_path / "data", 6, gray=False)
    (data / "testA_gt_B").mkdir()
    for p in (data / "testA").glob("*.png"):
        Image.open(p).convert("L").transpose(Image.FLIP_LEFT_RIGHT).save(data / "testA_gt_B" / p.name)
    cfg = str(tiny_config(tmp_path / "tiny.yaml", data))
    assert main(["search", "--config", cfg, "--teacher", str(teacher), "--out", str(tmp_path / "search")]) == 0, \
        capsys.readouterr().err
    assert main(["finetune", "--search", str(tmp_path / "search"), "--out", str(tmp_path / "ft")]) == 0, \
        capsys.readouterr().err
    assert json.loads((tmp_path / "ft" / "finetune.json").read_text())["discriminators"] == "fresh"
    capsys.readouterr()
    result = tmp_path / "eval.json"
    assert main(["evaluate", "--model", str(tmp_path / "ft" / "G_A.pt"), "--data", str(data), "--teacher",
                 str(teacher / "latest_net_G_A.pth"), "--perceptual", "l1", "--no-fid", "--out", str(result)]) == 0, \
        capsys.readouterr().err
    r = json.loads(result.read_text())
    assert r["n_images"] == 3 and 0 < r["psnr"] < 100 and 0 < r["ssim"] <= 1 and r["psnr_to_teacher"] > 0


@pytest.mark.parametrize("norm,dropout,mode", [("batch", False, "train"), ("none", True, "eval"),
                                               ("instance", True, "train")],
                         ids=["batch-norm", "norm-none-dropout", "dropout"])
def test_norm_and_dropout_teachers_compress_end_to_end(tmp_path, capsys, norm, dropout, mode):
    teacher = tmp_path / "teacher"
    arch = reference_teacher(teacher, norm=norm, dropout=dropout)
    assert load_discriminator(teacher / "latest_net_D_A.pth").arch.norm == norm  # the reference's D of that norm
    data = image_folder(tmp_path / "data", 8, gray=False)
    out = compress(tmp_path, teacher, data, capsys, recipe="gan" if norm == "batch" else "distill",
                   reference_mode=mode)
    check_run(out, arch)
    report = json.loads((out / "report.json").read_text())
    assert report["reference_mode"] == mode
    written = translate(out / "export" / "G_B.safetensors", data / "testB", tmp_path / "translated", capsys,
                        "--reference-mode", mode)
    with Image.open(written[0]) as im:
        assert im.mode == "RGB"


def test_the_teachers_channels_are_checked_by_name(tmp_path):
    from coevo.errors import CheckpointError
    from coevo.models.teacher import resolve_teacher

    def pair(folder, a_in, a_out, b_in, b_out):
        folder.mkdir()
        for name, (i, o) in (("G_A", (a_in, a_out)), ("G_B", (b_in, b_out))):
            arch = GeneratorArch(ngf=NGF, n_blocks=BLOCKS, in_channels=i, out_channels=o)
            torch.save(ResnetGenerator(arch).state_dict(), folder / f"latest_net_{name}.pth")
        return folder

    assert resolve_teacher(pair(tmp_path / "gray", 1, 1, 1, 1)).G_A.name == "latest_net_G_A.pth"  # accepted
    with pytest.raises(CheckpointError, match=r"4->4 channel generator .*1 channel \(grayscale\) or 3"):
        resolve_teacher(pair(tmp_path / "rgba", 4, 4, 4, 4))
    assert resolve_teacher(pair(tmp_path / "colourise", 1, 3, 3, 1))  # G_B reads what G_A writes: one CycleGAN
    with pytest.raises(CheckpointError, match=r"differ in architecture: .*1->3 channels.*1->3 channels"):
        resolve_teacher(pair(tmp_path / "both_ways", 1, 3, 1, 3))
    # discriminators of RGB images next to generators of grayscale data belong to another model
    folder = pair(tmp_path / "mixed", 1, 1, 1, 1)
    for name in ("D_A", "D_B"):
        torch.save(NLayerDiscriminator(DiscriminatorArch(ndf=4)).state_dict(), folder / f"latest_net_{name}.pth")
    with pytest.raises(CheckpointError, match=r"D_A .* reads 3-channel images, but the generators' domain B"):
        resolve_teacher(folder)


@pytest.mark.parametrize("norm", ["instance", "batch", "none"])
@pytest.mark.parametrize("channels", [1, 3])
def test_reference_discriminators_of_every_norm_load_exactly(tmp_path, norm, channels):
    """The reference's NLayerDiscriminator under --norm instance|batch|none: conv biases only under instance
    norm (use_bias), BatchNorm weights and running statistics at model.3/6/9, an Identity (no keys) for none."""
    d = _randomise(NLayerDiscriminator(DiscriminatorArch(ndf=4, in_channels=channels, norm=norm)), seed=3).eval()
    sd = d.state_dict()
    assert sd["model.0.weight"].shape == (4, channels, 4, 4) and "model.0.bias" in sd and "model.11.bias" in sd
    assert ("model.2.bias" in sd) == ("model.8.bias" in sd) == (norm == "instance")
    assert {k for k in sd if k.startswith("model.3.")} == (
        {f"model.3.{k}" for k in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")}
        if norm == "batch" else set())
    torch.save(sd, tmp_path / "latest_net_D_A.pth")
    loaded = load_discriminator(tmp_path / "latest_net_D_A.pth")
    assert loaded.arch == d.arch
    x = torch.rand(2, channels, SIZE, SIZE, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        assert torch.equal(loaded(x), d(x))
    assert DiscriminatorArch.from_dict(d.arch.to_dict()) == d.arch
    assert ("norm" in d.arch.to_dict()) == (norm != "instance")  # instance-norm files keep their old dict


def test_datasets_read_each_domain_with_the_teachers_channels(tmp_path):
    from coevo.data import SingleImageDataset, UnpairedImageDataset, build_datasets, domain_channels, to_image
    from coevo.config import DataConfig
    from coevo.data.errors import DataError

    data = image_folder(tmp_path / "data", 4, gray=False)
    rgb = Image.open(data / "trainA" / "000.png")
    luma = torch.from_numpy(np.asarray(rgb.convert("L"), dtype=np.float32) / 127.5 - 1.0)
    ds = UnpairedImageDataset(data, "train", load_size=SIZE, crop_size=SIZE, augment=False, channels=(1, 3))
    item = ds[0]
    assert item["A"].shape == (1, SIZE, SIZE) and item["B"].shape == (3, SIZE, SIZE)
    assert torch.equal(item["A"][0], luma)
    aug = UnpairedImageDataset(data, "train", load_size=SIZE + 4, crop_size=SIZE, channels=(1, 1)).subset([0, 1])
    assert aug[1]["A"].shape == aug[1]["B"].shape == (1, SIZE, SIZE)
    splits = build_datasets(DataConfig(root=str(data), synthetic=False, load_size=SIZE, crop_size=SIZE,
                                       val_fraction=0.25), channels=(1, 1))
    assert splits.train[0]["A"].shape[0] == splits.val[0]["B"].shape[0] == splits.test[0]["A"].shape[0] == 1
    single = SingleImageDataset(data / "testA", channels=1)
    assert single[0]["image"].shape == (1, SIZE, SIZE)
    gray_file = tmp_path / "g.png"
    to_image(single[0]["image"]).save(gray_file)  # a 1-channel tensor is written as a grayscale PNG
    with Image.open(gray_file) as im:
        assert im.mode == "L"
    assert torch.equal(SingleImageDataset(tmp_path, channels=1)[0]["image"], single[0]["image"])
    assert domain_channels(GeneratorArch(ngf=4, n_blocks=1, in_channels=1, out_channels=3)) == (1, 3)
    with pytest.raises(DataError, match="1 channel .* or 3"):
        SingleImageDataset(data / "testA", channels=4)


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_held_out_scoring_runs_teacher_and_students_alike_and_leaves_the_students_as_they_were(tmp_path, mode):
    """Fine-tuning's model selection measures fidelity with teacher and student in model.reference_mode:
    a student identical to its batch-norm, dropout teacher scores exactly 0, its BatchNorm statistics do
    not learn the held-out images, it stays in train mode, and the training's random stream is untouched."""
    from coevo.prune import Genome, slim
    from coevo.train.finetune import ValidationSelector
    from coevo.train.loop import GeneratorPair

    arch = GeneratorArch(ngf=NGF, n_blocks=BLOCKS, norm="batch", dropout=True)
    teacher = GeneratorPair(_randomise(ResnetGenerator(arch), 0).eval(), _randomise(ResnetGenerator(arch), 1).eval())
    students = [slim(getattr(teacher, k), Genome.all_keep(arch)).train() for k in ("G_A", "G_B")]
    before = [{k: v.clone() for k, v in s.state_dict().items()} for s in students]
    gen = torch.Generator().manual_seed(5)
    val_A, val_B = (torch.rand(3, 3, SIZE, SIZE, generator=gen) * 2 - 1 for _ in range(2))
    rng = torch.get_rng_state()
    selector = ValidationSelector(val_A, val_B, teacher, tmp_path, torch.device("cpu"), reference_mode=mode)
    metrics = selector.evaluate(*students)
    assert metrics["val_l1_A"] == metrics["val_l1_B"] == 0.0
    assert torch.equal(torch.get_rng_state(), rng)
    for s, b in zip(students, before):
        assert s.training and all(m.training for m in s.modules())
        assert all(m.track_running_stats for m in s.modules() if isinstance(m, torch.nn.BatchNorm2d))
        assert all(torch.equal(v, b[k]) for k, v in s.state_dict().items())
    assert not teacher.G_A.training
    with torch.no_grad():
        eval_target = teacher.G_A(val_A)
    # train mode: each image on its own batch statistics (and dropout on), unlike eval mode
    assert torch.equal(selector.target_B, eval_target) == (mode == "eval")


def test_drawing_training_samples_changes_nothing_in_a_batch_norm_dropout_run(tmp_path):
    """Sample grids run the generators as they train (batch statistics, dropout on) without learning running
    statistics from the samples or drawing from the training's random stream."""
    from types import SimpleNamespace

    from coevo.train.loop import CycleGANTrainer, GeneratorPair

    arch = GeneratorArch(ngf=NGF, n_blocks=BLOCKS, in_channels=1, out_channels=1, norm="batch", dropout=True)
    nets = GeneratorPair(_randomise(ResnetGenerator(arch), 0).train(), _randomise(ResnetGenerator(arch), 1).train())
    before = {k: v.clone() for k, v in nets.G_A.state_dict().items()}
    trainer = SimpleNamespace(nets=nets, device=torch.device("cpu"), epoch=1,
                              s=SimpleNamespace(sample_images=2, section="finetune"))
    images = {"A": torch.rand(2, 1, SIZE, SIZE) * 2 - 1, "B": torch.rand(2, 1, SIZE, SIZE) * 2 - 1}
    rng = torch.get_rng_state()
    for name in ("one.png", "two.png"):
        CycleGANTrainer.save_samples(trainer, images, tmp_path / name)
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(v, before[k]) for k, v in nets.G_A.state_dict().items())
    assert nets.G_A.training and all(m.track_running_stats for m in nets.G_A.modules()
                                     if isinstance(m, torch.nn.BatchNorm2d))
    with Image.open(tmp_path / "one.png") as a, Image.open(tmp_path / "two.png") as b:
        assert a.mode == "RGB" and a.tobytes() == b.tobytes()  # gray drawn as RGB; repeatable


def test_metrics_of_rgb_networks_see_grayscale_as_gray_rgb(tmp_path, monkeypatch):
    """LPIPS and the FID features (ImageNet networks, RGB only) read 1-channel images as 3 equal channels;
    evaluate scores a 1-channel generator against its teacher in the teacher's 1-channel discriminator."""
    pytest.importorskip("lpips")
    import torchvision

    from coevo.evaluation.evaluate import evaluate_generator
    from coevo.evaluation.metrics import extract_features
    from coevo.evaluation.perceptual import LPIPS_BACKBONES, build_perceptual

    torch.manual_seed(0)
    features = torchvision.models.alexnet().features  # a random AlexNet stands in for the ImageNet file
    path = tmp_path / "hub" / "checkpoints" / LPIPS_BACKBONES["alex"][0]
    path.parent.mkdir(parents=True)
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, path)
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    metric = build_perceptual("lpips", lpips_net="alex")
    gen = torch.Generator().manual_seed(1)
    x, y = (torch.rand(2, 1, SIZE, SIZE, generator=gen) * 2 - 1 for _ in range(2))
    d = metric(x, y)
    assert d.shape == (2,) and torch.equal(d, metric(x.repeat(1, 3, 1, 1), y.repeat(1, 3, 1, 1)))

    rgb_only = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    rgb_only.forward = (lambda f: lambda u: f(u.float()))(rgb_only.forward)
    assert torch.equal(extract_features(x, rgb_only), extract_features(x.repeat(1, 3, 1, 1), rgb_only))

    teacher = tmp_path / "teacher"
    reference_teacher(teacher, channels=1)
    data = image_folder(tmp_path / "data", 4, gray=True)
    result = evaluate_generator(teacher / "latest_net_G_B.pth", data, "AtoB", teacher=teacher / "latest_net_G_A.pth",
                                feature_extractor=rgb_only, perceptual="discriminator",
                                discriminator=teacher / "latest_net_D_A.pth", kid_subset_size=2)
    assert result["fid"] is not None and result["n_real"] == 4 + 3
    assert result["perceptual"] == "discriminator" and result["perceptual_to_teacher"] > 0


def test_a_supernet_of_a_one_channel_teacher_trains_on_grayscale_and_serves_the_search(tmp_path):
    from coevo.config import config_from_dict
    from coevo.models.teacher import resolve_teacher
    from coevo.prune import count_macs
    from coevo.search import run_search
    from coevo.train.supernet import train_supernet

    teacher = tmp_path / "teacher"
    reference_teacher(teacher, channels=1, discriminators=False)
    data = image_folder(tmp_path / "data", 6, gray=False)
    cfg = config_from_dict({
        "seed": 0, "data": {"root": str(data), "synthetic": False, "load_size": SIZE, "crop_size": SIZE},
        "search": {"population": 4, "generations": 1, "eval_images": 3, "eval_size": SIZE, "macs_ratio": 0.25,
                   "fitness": "supernet", "perceptual": "teacher-features"},
        "supernet": {"steps": 2, "batch_size": 2, "random_masks": 1, "checkpoint_every": 2, "log_every": 1}})
    supernet = train_supernet(cfg, tmp_path / "supernet", teacher=teacher)
    assert load_generator(supernet / "G_A.pt").arch.in_channels == 1
    result = run_search(cfg, tmp_path / "search", teacher=teacher, supernet=supernet, progress=False)
    assert result.summary["supernet"] == str(supernet.resolve())
    g_a = load_generator(resolve_teacher(teacher).G_A)
    assert all(count_macs(result.best[k].slim_arch(), SIZE) <= 0.25 * count_macs(g_a.arch, SIZE) for k in ("G_A", "G_B"))


def test_train_mode_measurements_and_translations_of_a_dropout_generator_repeat_exactly(tmp_path):
    """Dropout stays on in the reference's train mode; coevo draws its masks from a fixed stream, so
    evaluate and translate give the same numbers and files every time and leave the caller's stream alone."""
    from coevo.evaluation.evaluate import translation_quality
    from coevo.evaluation.translate import input_images, plan_translation, run_translation

    arch = GeneratorArch(ngf=NGF, n_blocks=BLOCKS, in_channels=1, out_channels=1, dropout=True)
    g, t = _randomise(ResnetGenerator(arch), 0), _randomise(ResnetGenerator(arch), 1)
    data = image_folder(tmp_path / "data", 2, gray=True)
    rng = torch.get_rng_state()
    runs = [translation_quality(g, data, teacher=t, reference_mode="train") for _ in range(2)]
    assert runs[0]["l1_to_teacher_per_image"] == runs[1]["l1_to_teacher_per_image"]
    assert runs[0]["l1_to_teacher"] != translation_quality(g, data, teacher=t)["l1_to_teacher"]  # dropout on
    paths = input_images(data / "testA")
    files = [run_translation(g, plan_translation(paths, tmp_path / f"t{i}"), reference_mode="train") for i in (0, 1)]
    assert [p.read_bytes() for p in files[0]] == [p.read_bytes() for p in files[1]]
    assert torch.equal(torch.get_rng_state(), rng)


def test_a_teacher_from_grayscale_to_colour_and_back_compresses_end_to_end(tmp_path, capsys):
    """--input_nc 1 --output_nc 3: G_A colours grayscale images, G_B maps colour to gray; domain A is read
    as grayscale, domain B as RGB, each discriminator with its domain's channels."""
    teacher = tmp_path / "teacher"
    arch = reference_teacher(teacher, channels=1, channels_B=3)
    data = image_folder(tmp_path / "data", 8, gray=False)
    out = compress(tmp_path, teacher, data, capsys)
    check_run(out, arch)
    # the teacher's discriminators judged each domain in its channels: D_A colour, D_B gray
    assert json.loads((out / "finetune" / "finetune.json").read_text())["discriminators"] == "teacher"
    report = json.loads((out / "report.json").read_text())
    assert all(e["macs_ratio"] <= 0.25 for e in report["directions"].values())
    for model, folder, mode in (("G_A", "testA", "RGB"), ("G_B", "testB", "L")):
        written = translate(out / "export" / f"{model}.onnx", data / folder, tmp_path / model, capsys)
        with Image.open(written[0]) as im:
            assert im.mode == mode
