"""CycleGAN teachers whose generators are U-Nets (the reference's ``--netG unet_128`` / ``unet_256``, instance
norm) through the existing doors: compress (search + fine-tune), export, translate without --size, evaluate,
bench, prune, the distill recipe, resume, and the one-line refusals of what stays ResNet-only.

Each teacher is a random-init folder of ``latest_net_G_A.pth`` / ``latest_net_G_B.pth`` state dicts in the
reference key layout (built by the reference classes restated in tests/test_unet.py), at ngf 4, on a handful
of images at the network's own size (128 and 256 px), on one CPU thread.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from coevo.cli import main
from coevo.deploy.export import export_generator
from coevo.models import load_generator
from coevo.models.family import PaddedToMultiple, any_size
from coevo.models.unet import UnetArch, UnetGenerator
from coevo.prune import Genome, count_macs, masked_generator, slim

from conftest import make_image_folder
from test_unet import _RefUnet, _ref_norm

NGF = 4
KINDS = {"unet_128": 7, "unet_256": 8}  # name -> num_downs; the image side is 2**num_downs


def reference_unet_teacher(folder: Path, num_downs: int) -> Path:
    """latest_net_G_A.pth and latest_net_G_B.pth: bare reference-layout state dicts, as the reference saves them."""
    folder.mkdir(parents=True, exist_ok=True)
    for seed, name in enumerate(("G_A", "G_B")):
        torch.manual_seed(seed)
        net = _RefUnet(3, 3, num_downs, ngf=NGF, norm_layer=_ref_norm("instance"))
        torch.save(net.state_dict(), folder / f"latest_net_{name}.pth")
    return folder


def tiny_config(root: Path, data: Path, size: int) -> Path:
    cfg = {
        "seed": 0,
        "data": {"synthetic": False, "root": str(data), "load_size": size, "crop_size": size, "val_fraction": 0.25},
        "model": {"ndf": 4},
        "search": {"population": 4, "generations": 1, "eval_images": 2, "eval_size": size, "macs_ratio": 0.25},
        "finetune": {"epochs": 1, "epochs_decay": 0, "max_steps_per_epoch": 1, "log_every": 1, "pool_size": 2,
                     "sample_images": 1, "sample_every": 0},
        "export": {"formats": ["safetensors"], "check_size": size, "int8": False},
        "bench": {"size": size, "warmup": 1, "repeats": 1, "threads": 1},
    }
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module", params=list(KINDS))
def compressed(request, tmp_path_factory):
    """One `coevo compress` of a reference U-Net teacher, shared by the tests of its kind."""
    torch.set_num_threads(1)
    num_downs = KINDS[request.param]
    size = 2 ** num_downs
    root = tmp_path_factory.mktemp(request.param)
    data = make_image_folder(root / "data", n=4, size=size)
    # a test image of another size: the report's evaluation and grid pad it to the U-Net's multiple and crop back
    odd = np.random.default_rng(1).integers(0, 256, (size // 2 + 4, size + 12, 3), dtype=np.uint8)
    Image.fromarray(odd).save(data / "testA" / "odd.png")
    teacher = reference_unet_teacher(root / "ref", num_downs)
    config = tiny_config(root, data, size)
    out = root / "run"
    rc = main(["compress", "--config", str(config), "--teacher", str(teacher), "--out", str(out)])
    assert rc == 0
    # the ONNX files through `coevo export` (the legacy exporter: the dynamo one takes ~10 s a network here)
    rc = main(["export", "--run", str(out / "finetune"), "--out", str(root / "onnx"), "--formats", "onnx",
               "--onnx-exporter", "legacy", "--no-int8", "--check-size", str(size)])
    assert rc == 0
    return {"kind": request.param, "num_downs": num_downs, "size": size, "root": root, "data": data,
            "teacher": teacher, "config": config, "out": out}


def test_compress_meets_a_quarter_of_the_macs_and_records_the_family(compressed):
    out, size = compressed["out"], compressed["size"]
    summary = json.loads((out / "search" / "search.json").read_text())
    assert summary["generator_family"] == "unet"
    report = json.loads((out / "report.json").read_text())
    assert report["generator_family"] == "unet"
    assert (out / report["directions"]["AtoB"]["grid"]).is_file()
    for d in ("G_A", "G_B"):
        teacher = load_generator(compressed["teacher"] / f"latest_net_{d}.pth")
        student = load_generator(out / "finetune" / f"{d}.pt")
        assert isinstance(student, UnetGenerator) and student.arch.num_downs == compressed["num_downs"]
        assert student.arch.norm == "instance" and not student.arch.is_full
        # the U-Net's own MAC terms, at its own size
        assert count_macs(student.arch, size) <= 0.25 * count_macs(teacher.arch, size)
        assert summary["best"][d]["macs_ratio"] <= 0.25 and summary["best"][d]["teacher_arch"]["kind"] == \
            "unet_generator"
        # the ONNX export is the fine-tuned network, at its own size and one multiple wider
        assert (out / "export" / f"{d}.safetensors").is_file()
        onnx = load_generator(compressed["root"] / "onnx" / f"{d}.onnx")
        assert isinstance(onnx.arch, UnetArch) and onnx.arch == student.arch
        for shape in ((1, 3, size, size), (2, 3, size, 2 * size)):
            x = torch.rand(shape, generator=torch.Generator().manual_seed(1)) * 2 - 1
            with torch.no_grad():
                assert float((onnx(x) - student(x)).abs().max()) < 1e-4
    for stage in ("search", "finetune", "export", "bench"):
        assert (out / stage / "stage.json").is_file(), stage


def test_translate_a_folder_keeps_each_image_size(compressed, tmp_path):
    """No --size: every image is padded up to the U-Net's side multiple and its output cropped back."""
    size = compressed["size"]
    images = tmp_path / "in"
    images.mkdir()
    rng = np.random.default_rng(0)
    shapes = {"own": (size, size), "odd": (size // 2 + 3, size + 17), "tiny": (20, 30)}  # (h, w)
    for name, (h, w) in shapes.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(images / f"{name}.png")
    out = compressed["out"]
    for model in (out / "finetune" / "G_A.pt", compressed["root"] / "onnx" / "G_A.onnx"):
        dest = tmp_path / model.suffix.lstrip(".")
        assert main(["translate", "--model", str(model), "--input", str(images), "--output", str(dest)]) == 0
        for name, (h, w) in shapes.items():
            assert Image.open(dest / f"{name}.png").size == (w, h), (model.name, name)
    # an image at the network's size goes through unpadded: the file is the network's output itself
    from coevo.data import load_image, to_image, to_tensor

    student = load_generator(out / "finetune" / "G_A.pt")
    with torch.no_grad():
        y = student(to_tensor(load_image(images / "own.png")).unsqueeze(0))[0]
    expected = np.asarray(to_image(y))
    assert np.array_equal(np.asarray(Image.open(tmp_path / "pt" / "own.png").convert("RGB")), expected)


def test_padding_reflects_and_crops_back():
    torch.manual_seed(0)
    net = UnetGenerator(UnetArch(num_downs=5, ngf=2, norm="instance")).eval()
    wrapped = any_size(net)
    assert isinstance(wrapped, PaddedToMultiple) and wrapped.multiple == 32 and any_size(wrapped) is wrapped
    x = torch.rand(1, 3, 40, 50) * 2 - 1
    padded = torch.nn.functional.pad(x, (0, 14, 0, 24), mode="reflect")
    with torch.no_grad():
        assert torch.equal(wrapped(x), net(padded)[..., :40, :50])
        small = torch.rand(1, 3, 9, 10)  # too short to mirror a 23-pixel pad: replicated
        assert torch.equal(wrapped(small), net(torch.nn.functional.pad(small, (0, 22, 0, 23), mode="replicate"))
                           [..., :9, :10])
        assert torch.equal(wrapped(padded), net(padded))  # a multiple already: untouched


def test_slim_export_equals_the_masked_teacher(compressed, tmp_path):
    """The searched genome cut from the teacher: masked network == slim network == its exports."""
    size = compressed["size"]
    teacher = load_generator(compressed["teacher"] / "latest_net_G_B.pth")
    genome = Genome.load_json(compressed["out"] / "search" / "genomes" / "best_G_B.json")
    masked, student = masked_generator(teacher, genome).eval(), slim(teacher, genome).eval()
    report = export_generator(student, tmp_path, "slim", formats=("onnx", "torch-export"), check_size=size,
                              onnx_exporter="legacy")
    assert all(e["ok"] for e in report.values())
    # batch 1 at the network's own size: the one shape a U-Net program exported at that size runs (torch.export
    # keeps a U-Net's sides dynamic from two multiples up only)
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        reference = masked(x)
        assert float((student(x) - reference).abs().max()) < 1e-5
        for suffix in (".onnx", ".pt2"):
            exported = load_generator(tmp_path / f"slim{suffix}", trust=True)
            assert float((exported(x) - reference).abs().max()) < 1e-4, suffix


def test_resume_skips_every_stage(compressed, capsys):
    out = compressed["out"]
    before = (out / "finetune" / "G_A.pt").read_bytes()
    capsys.readouterr()
    assert main(["compress", "--config", str(compressed["config"]), "--out", str(out), "--resume"]) == 0
    assert "done in" not in capsys.readouterr().out
    assert (out / "finetune" / "G_A.pt").read_bytes() == before


def test_evaluate_bench_and_prune_take_the_unet(compressed, tmp_path, capsys):
    if compressed["kind"] != "unet_128":
        pytest.skip("one kind is enough for the commands that only read the files")
    out, size = compressed["out"], compressed["size"]
    teacher = compressed["teacher"] / "latest_net_G_A.pth"
    odd = tmp_path / "odd"  # test images of another size than the network's: padded and cropped back
    make_image_folder(odd, n=2, size=size // 2 + 6)
    result = tmp_path / "eval.json"
    assert main(["evaluate", "--model", str(compressed["root"] / "onnx" / "G_A.onnx"), "--data", str(odd),
                 "--teacher", str(teacher), "--no-fid", "--perceptual", "l1", "--out", str(result)]) == 0
    assert json.loads(result.read_text())["n_images"] == 2
    assert main(["bench", "--model", f"teacher={teacher}", "--model", str(out / "finetune" / "G_A.pt"),
                 "--size", str(size), "--threads", "1", "--warmup", "1", "--repeats", "1", "--backend", "eager",
                 "--out", str(tmp_path / "bench")]) == 0
    capsys.readouterr()
    assert main(["bench", "--model", str(teacher), "--size", "96", "--out", str(tmp_path / "b2")]) == 2
    err = capsys.readouterr().err.strip()
    assert "--size 96 is not a multiple of 128" in err and len(err.splitlines()) == 1
    for method in ("l1", "random"):
        path = tmp_path / f"{method}.pt"
        assert main(["prune", "--generator", str(teacher), "--method", method, "--macs-ratio", "0.25", "--size",
                     str(size), "--out", str(path)]) == 0
        pruned = load_generator(path)
        assert isinstance(pruned, UnetGenerator)
        assert count_macs(pruned.arch, size) <= 0.25 * count_macs(load_generator(teacher).arch, size)


def test_distill_recipe_and_the_refusals(compressed, tmp_path, capsys):
    if compressed["kind"] != "unet_128":
        pytest.skip("the recipes and refusals do not depend on the depth")
    out, teacher, config = compressed["out"], compressed["teacher"], compressed["config"]
    dest = tmp_path / "distill"
    assert main(["finetune", "--search", str(out / "search"), "--out", str(dest), "--set",
                 "finetune.mode=distill"]) == 0
    assert json.loads((dest / "finetune.json").read_text())["recipe"] == "distill"
    assert isinstance(load_generator(dest / "G_A.pt"), UnetGenerator)
    capsys.readouterr()
    refusals = {
        "search.eval_size=96": "search.eval_size=96 is not a multiple of 128",
        "data.crop_size=64": "data.crop_size=64 is not a multiple of 128",
        "search.compute=latency": "the latency budget (search.compute=latency) takes the ResNet generator only",
        "search.fitness=supernet": "the supernet fitness (search.fitness=supernet) takes the ResNet generator",
    }
    for i, (setting, message) in enumerate(refusals.items()):
        rc = main(["search", "--config", str(config), "--teacher", str(teacher), "--out", str(tmp_path / f"s{i}"),
                   "--no-progress", "--set", setting])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and message in err and len(err.splitlines()) == 1, (setting, err)
    rc = main(["supernet", "--config", str(config), "--teacher", str(teacher), "--out", str(tmp_path / "sn")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "the supernet (coevo supernet, search.fitness=supernet) takes the ResNet" in err
    assert len(err.splitlines()) == 1 and not (tmp_path / "sn" / "G_A.pt").exists()
    rc = main(["finetune", "--search", str(out / "search"), "--out", str(tmp_path / "f"), "--set",
               "finetune.lambda_feature=1"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "feature distillation (finetune.lambda_feature > 0) takes the ResNet" in err


def test_coevo_format_unet_through_search_finetune_and_resume(tmp_path):
    """A teacher saved by coevo (G_A.pt / G_B.pt) with the fewest levels the reference builds (5: 32 px), stage
    by stage: `coevo search`, its resume, `coevo finetune`."""
    from coevo.config import load_config
    from coevo.models import save_generator
    from coevo.models.teacher import resolve_teacher
    from coevo.search import run_search

    torch.set_num_threads(1)
    arch = UnetArch(num_downs=5, ngf=NGF, norm="instance")
    folder = tmp_path / "teacher"
    folder.mkdir()
    for seed, name in enumerate(("G_A", "G_B")):
        torch.manual_seed(seed)
        save_generator(UnetGenerator(arch).eval(), folder / f"{name}.pt")
    config = tiny_config(tmp_path, make_image_folder(tmp_path / "data", n=4, size=32), 32)
    search = tmp_path / "search"
    run_search(load_config(config, ["search.generations=2"]), search, teacher=resolve_teacher(folder),
               progress=False, stop_after=1)  # interrupted after one generation
    assert json.loads((search / "search.json").read_text())["generations"] == 1
    assert main(["search", "--out", str(search), "--resume", "--no-progress"]) == 0
    summary = json.loads((search / "search.json").read_text())
    assert summary["generations"] == 2 and summary["generator_family"] == "unet"
    assert all(summary["best"][d]["macs_ratio"] <= 0.25 for d in ("G_A", "G_B"))
    assert main(["finetune", "--search", str(search), "--out", str(tmp_path / "finetune")]) == 0
    student = load_generator(tmp_path / "finetune" / "G_B.pt")
    assert isinstance(student, UnetGenerator) and count_macs(student.arch, 32) <= 0.25 * count_macs(arch, 32)
