"""Every ResNet generator the reference code trains: --norm instance|batch|none, with and without
--use_dropout, 3- and 1-channel data. Layouts are written out by hand from the reference's
ResnetGenerator/ResnetBlock, independent of coevo's layer table."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from coevo.config import Config, validate
from coevo.errors import ConfigError
from coevo.models import GeneratorArch, ResnetGenerator
from coevo.models.generator import infer_arch_from_state_dict, set_reference_mode
from coevo.models.io import load_generator, save_generator
from coevo.prune import Genome, count_macs, count_params, slim
from coevo.prune.slim import masked_generator

NGF, BLOCKS, SIZE = 4, 2, 32
COMBOS = list(itertools.product(("instance", "batch", "none"), (False, True), (3, 1)))
IDS = [f"{n}-{'dropout' if d else 'nodrop'}-{c}ch" for n, d, c in COMBOS]


def _arch(norm, dropout, nc, **kw):
    return GeneratorArch(ngf=NGF, n_blocks=BLOCKS, in_channels=nc, out_channels=nc, norm=norm, dropout=dropout, **kw)


def expected_layout(norm, dropout, nc):
    """{key: shape} of the reference ``ResnetGenerator(nc, nc, ngf=4, norm_layer=..., use_dropout=dropout,
    n_blocks=2)``: ``model`` = pad, conv, norm, relu (0-3); conv, norm, relu (4-6, 7-9); the blocks (10, 11);
    convT, norm, relu (12-14, 15-17); pad, conv, tanh (18-20). In a block: pad, conv, norm, relu, [dropout],
    pad, conv, norm. A conv has a bias only under instance norm (``use_bias``), the last one always.
    --norm none puts an Identity where the norm was: the indices do not move."""
    bias = norm == "instance"
    out = {}

    def conv(key, shape):
        out[f"{key}.weight"] = shape
        if bias:
            out[f"{key}.bias"] = (shape[1] if len(shape) == 4 and key in ("model.12", "model.15") else shape[0],)

    def bn(key, c):
        if norm == "batch":
            out.update({f"{key}.weight": (c,), f"{key}.bias": (c,), f"{key}.running_mean": (c,),
                        f"{key}.running_var": (c,), f"{key}.num_batches_tracked": ()})

    conv("model.1", (4, nc, 7, 7)); bn("model.2", 4)
    conv("model.4", (8, 4, 3, 3)); bn("model.5", 8)
    conv("model.7", (16, 8, 3, 3)); bn("model.8", 16)
    second = 6 if dropout else 5
    for b in (10, 11):
        conv(f"model.{b}.conv_block.1", (16, 16, 3, 3)); bn(f"model.{b}.conv_block.2", 16)
        conv(f"model.{b}.conv_block.{second}", (16, 16, 3, 3)); bn(f"model.{b}.conv_block.{second + 1}", 16)
    conv("model.12", (16, 8, 3, 3)); bn("model.13", 8)  # ConvTranspose2d weights are [in, out, k, k]
    conv("model.15", (8, 4, 3, 3)); bn("model.16", 4)
    out["model.19.weight"], out["model.19.bias"] = (nc, 4, 7, 7), (nc,)
    return out


def _randomise(g: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial weights everywhere, BatchNorm affine parameters and running statistics included."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in itertools.chain(g.named_parameters(), g.named_buffers()):
            if t.dtype.is_floating_point:
                if name.endswith("running_var"):
                    t.copy_(torch.rand(t.shape, generator=gen) + 0.5)
                else:
                    t.copy_(torch.randn(t.shape, generator=gen) * (0.3 if t.dim() == 4 else 0.5))
    return g


def _x(nc, n=2, seed=1):
    return torch.rand(n, nc, SIZE, SIZE, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _random_genome(arch, seed=0):
    rng = np.random.default_rng(seed)
    return Genome(arch, {n: np.concatenate([[True], rng.random(c - 1) < 0.5]) for n, c in arch.widths.items()})


@pytest.mark.parametrize("norm,dropout,nc", COMBOS, ids=IDS)
def test_keys_shapes_inference_and_round_trip(tmp_path, norm, dropout, nc):
    arch = _arch(norm, dropout, nc)
    g = _randomise(ResnetGenerator(arch)).eval()
    sd = g.state_dict()
    assert {k: tuple(v.shape) for k, v in sd.items()} == expected_layout(norm, dropout, nc)
    assert infer_arch_from_state_dict(sd) == arch
    x = _x(nc)
    with torch.no_grad():
        y = g(x)
    # a bare state_dict (the reference's latest_net_G_A.pth) and both coevo formats
    torch.save({k: v.clone() for k, v in sd.items()}, tmp_path / "latest_net_G_A.pth")
    for path in (tmp_path / "latest_net_G_A.pth", save_generator(g, tmp_path / "g.pt"),
                 save_generator(g, tmp_path / "g.safetensors")):
        loaded = load_generator(path)
        assert loaded.arch == arch
        with torch.no_grad():
            assert torch.equal(loaded(x), y), path
    assert GeneratorArch.from_dict(arch.to_dict()) == arch


@pytest.mark.parametrize("norm,dropout,nc", COMBOS, ids=IDS)
def test_pruning_is_exact(norm, dropout, nc):
    arch = _arch(norm, dropout, nc)
    g = _randomise(ResnetGenerator(arch)).eval()
    x = _x(nc)
    with torch.no_grad():
        y = g(x)
        assert torch.equal(slim(g, Genome.all_keep(arch))(x), y)
        genome = _random_genome(arch)
        s = slim(g, genome)
        assert not s.training and s.arch == genome.slim_arch()
        m = masked_generator(g, genome).eval()
        ys, ym = s(x), m(x)
    torch.testing.assert_close(ys, ym, atol=1e-5, rtol=1e-5)
    assert (ys - y).abs().max() > 1e-3  # the genome does cut something
    if norm == "batch":  # the BatchNorm parameters and running statistics travel with their channels
        keep = torch.as_tensor(genome.kept("stem"))
        for k in ("weight", "bias", "running_mean", "running_var"):
            assert torch.equal(s.state_dict()[f"model.2.{k}"], g.state_dict()[f"model.2.{k}"][keep])
    if not dropout:  # BatchNorm on batch statistics is per channel too
        g.train()
        with torch.no_grad():
            torch.testing.assert_close(slim(g, genome)(x), masked_generator(g, genome)(x), atol=1e-5, rtol=1e-5)


def _hand_macs(arch, size):
    """Conv MACs by hand, transposed convs per output pixel (the published convention); norms not counted."""
    w, c, s = arch.widths, arch.in_channels, size
    inner = sum(w[f"block{i}.inner"] * w["trunk"] * 2 for i in range(arch.n_blocks)) * 9 * (s // 4) ** 2
    return (49 * c * w["stem"] * s * s + 9 * w["stem"] * w["down1"] * (s // 2) ** 2
            + 9 * w["down1"] * w["trunk"] * (s // 4) ** 2 + inner
            + 9 * w["trunk"] * w["up1"] * (s // 2) ** 2 + 9 * w["up1"] * w["up2"] * s * s
            + 49 * w["up2"] * arch.out_channels * s * s)


@pytest.mark.parametrize("norm,dropout,nc", COMBOS, ids=IDS)
def test_macs_and_params(norm, dropout, nc):
    arch = _arch(norm, dropout, nc)
    for a in (arch, _random_genome(arch).slim_arch()):
        g = ResnetGenerator(a).eval()
        assert count_macs(a, SIZE) == _hand_macs(a, SIZE)
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            g(torch.zeros(1, nc, SIZE, SIZE))
        assert count_macs(a, SIZE, convention="flopcounter") == counter.get_total_flops() // 2
        assert count_params(a) == count_params(g)


def test_old_instance_norm_running_stats_are_dropped_and_batch_norm_stats_kept(tmp_path):
    inst = _randomise(ResnetGenerator(_arch("instance", False, 3))).eval()
    sd = dict(inst.state_dict())
    for key in ("model.2", "model.5", "model.10.conv_block.2"):  # InstanceNorm2d of torch < 0.4
        sd[f"{key}.running_mean"], sd[f"{key}.running_var"] = torch.zeros(4), torch.ones(4)
        sd[f"{key}.num_batches_tracked"] = torch.tensor(3)
    torch.save(sd, tmp_path / "old.pth")
    assert load_generator(tmp_path / "old.pth").arch.norm == "instance"

    bn = _randomise(ResnetGenerator(_arch("batch", True, 1))).eval()
    sd = {f"module.{k}": v for k, v in bn.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(sd, tmp_path / "bn.pth")  # DataParallel names, a torch before 0.4.1 (no num_batches_tracked)
    loaded = load_generator(tmp_path / "bn.pth")
    assert loaded.arch == bn.arch
    assert torch.equal(loaded.model[2].running_mean, bn.model[2].running_mean)
    with torch.no_grad():
        assert torch.equal(loaded(_x(1)), bn(_x(1)))


def test_arch_dicts_without_dropout_are_those_of_older_files():
    d = GeneratorArch.full(ngf=4, n_blocks=2).to_dict()
    assert "dropout" not in d  # fingerprints and cache keys hashed from it do not change
    assert GeneratorArch.from_dict(d) == GeneratorArch.full(ngf=4, n_blocks=2)
    assert _arch("batch", True, 1).to_dict()["dropout"] is True
    with pytest.raises(ValueError, match="norm"):
        GeneratorArch(ngf=4, n_blocks=2, norm="group")


def test_reference_mode_train_uses_batch_statistics_without_changing_the_weights():
    g = _randomise(ResnetGenerator(_arch("batch", False, 3)))
    before = {k: v.clone() for k, v in g.state_dict().items()}
    x = _x(3, n=4)
    with torch.no_grad():
        y_eval = set_reference_mode(g, "eval")(x)
        y_train = set_reference_mode(g, "train")(x)
        y_again = set_reference_mode(g, "train")(x)
    assert g.training and (y_train - y_eval).abs().max() > 1e-3
    assert torch.equal(y_train, y_again)  # no dropout: deterministic on batch statistics
    assert all(torch.equal(before[k], v) for k, v in g.state_dict().items())
    with torch.no_grad():
        assert torch.equal(set_reference_mode(g, "eval")(x), y_eval)
    with pytest.raises(ValueError, match="reference mode"):
        set_reference_mode(g, "test")
    inst = _randomise(ResnetGenerator(_arch("instance", False, 3)))
    with torch.no_grad():
        assert torch.equal(set_reference_mode(inst, "train")(x), set_reference_mode(inst, "eval")(x))


def test_reference_mode_is_a_config_choice():
    cfg = Config()
    assert cfg.model.reference_mode == "eval"
    cfg.model.reference_mode = "train"
    validate(cfg)
    cfg.model.reference_mode = "test"
    with pytest.raises(ConfigError, match="reference_mode"):
        validate(cfg)


@pytest.mark.parametrize("dropout", [False, True])
def test_batch_norm_generator_exports(tmp_path, dropout):
    from coevo.deploy.export import export_generator

    g = _randomise(ResnetGenerator(_arch("batch", dropout, 1)))
    genome = _random_genome(g.arch)
    s = slim(g, genome).eval()
    report = export_generator(s, tmp_path, "G_A", formats=("safetensors", "onnx", "torch-export"), check_size=48)
    assert all(entry["ok"] for entry in report.values()), report
    for suffix in ("safetensors", "pt2"):  # the .pt2 read as data: its step counters are int64 weights
        loaded = load_generator(tmp_path / f"G_A.{suffix}")
        assert loaded.arch == s.arch
        assert torch.equal(loaded.model[2].num_batches_tracked, s.model[2].num_batches_tracked)
        with torch.no_grad():
            assert torch.equal(loaded(_x(1)), s(_x(1)))


def test_translate_in_train_mode_is_one_image_at_a_time_on_its_own_statistics(image_folder, tmp_path):
    from coevo.data import load_image, to_tensor
    from coevo.evaluation.translate import input_images, plan_translation, run_translation

    g = _randomise(ResnetGenerator(_arch("batch", False, 3)))
    paths = input_images(image_folder / "testA")
    outputs = {}
    for mode in ("eval", "train"):
        plan = plan_translation(paths, tmp_path / mode)
        outputs[mode] = [load_image(p) for p in run_translation(g, plan, batch=4, reference_mode=mode)]
    first = to_tensor(load_image(paths[0])).unsqueeze(0)
    with torch.no_grad():
        alone = set_reference_mode(g, "train")(first)
    expected = to_tensor(outputs["train"][0]).unsqueeze(0)
    assert (alone - expected).abs().max() <= 2 / 255  # 8-bit PNG rounding
    assert any(np.asarray(a).tolist() != np.asarray(b).tolist() for a, b in zip(outputs["eval"], outputs["train"]))


def test_one_channel_generator_translates_the_images_luma(image_folder, tmp_path):
    from PIL import Image

    from coevo.data import load_image
    from coevo.evaluation.translate import input_images, plan_translation, run_translation

    g = _randomise(ResnetGenerator(_arch("instance", True, 1))).eval()
    paths = input_images(image_folder / "testA")
    written = run_translation(g, plan_translation(paths, tmp_path / "out"), batch=2)
    luma = np.asarray(load_image(paths[1]).convert("L"), dtype=np.float32) / 127.5 - 1.0
    with torch.no_grad():
        y = g(torch.from_numpy(luma)[None, None])[0, 0]
    out = np.asarray(Image.open(written[1]).convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    assert np.abs(out - y.numpy()[..., None]).max() <= 2 / 255  # gray RGB, 8-bit rounding


def test_latency_table_times_the_teachers_norm_and_is_not_reused_across_norms():
    from coevo.deploy.latency import LatencyTableError, _unit, measure_table

    assert any(isinstance(m, nn.BatchNorm2d) for m in _unit("block_in", 4, 4, "batch").modules())
    teacher = _arch("batch", True, 1)
    table = measure_table(teacher, size=16, points=2, warmup=0, repeats=1, calibration=1)
    table.check(_random_genome(teacher).slim_arch())
    assert table.predict(teacher) > 0
    with pytest.raises(LatencyTableError, match="batch norm"):
        table.check(_arch("instance", True, 1))


@pytest.mark.parametrize("norm,dropout", [("batch", True), ("none", False)])
def test_compress_a_reference_variant_end_to_end(tmp_path, norm, dropout, capsys):
    import json

    import yaml

    from coevo.cli import main
    from coevo.config import load_config
    from coevo.evaluation.report import build_report
    from conftest import make_image_folder

    data = make_image_folder(tmp_path / "data", n=8, size=32)
    files = []
    for i, name in enumerate(("latest_net_G_A.pth", "latest_net_G_B.pth")):
        g = _randomise(ResnetGenerator(_arch(norm, dropout, 3)), seed=i)
        torch.save(g.state_dict(), tmp_path / name)
        files.append(tmp_path / name)
    cfg = {"seed": 0, "data": {"synthetic": False, "root": str(data), "load_size": 32, "crop_size": 32,
                               "val_fraction": 0.25},
           "model": {"ngf": 4, "n_blocks": 2, "ndf": 4, "reference_mode": "train"},
           "search": {"population": 4, "generations": 1, "eval_images": 3, "eval_size": 32, "macs_ratio": 0.25},
           "finetune": {"epochs": 1, "epochs_decay": 0, "max_steps_per_epoch": 2, "log_every": 1, "pool_size": 2,
                        "sample_images": 2},
           "export": {"formats": ["safetensors", "onnx"], "check_size": 40},
           "bench": {"size": 32, "warmup": 1, "repeats": 1, "threads": 1}}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "run"
    argv = ["compress", "--config", str(tmp_path / "tiny.yaml"), "--out", str(out),
            "--teacher-ab", str(files[0]), "--teacher-ba", str(files[1])]
    assert main(argv) == 0, capsys.readouterr().err
    search = json.loads((out / "search" / "search.json").read_text())
    teacher_arch = search["best"]["G_A"]["teacher_arch"]
    assert teacher_arch["norm"] == norm and teacher_arch.get("dropout", False) == dropout
    assert search["best"]["G_A"]["macs_ratio"] <= 0.25
    student = load_generator(out / "export" / "G_A.safetensors")
    assert student.arch.norm == norm and student.arch.dropout == dropout
    report = build_report(out, load_config(out / "config.yaml"))
    assert report["reference_mode"] == "train"


def test_a_supernet_refuses_batch_norm_by_name():
    from coevo.train.supernet import SupernetGenerator

    with pytest.raises(ConfigError, match="batch-norm.*search.fitness: proxy or trained"):
        SupernetGenerator(ResnetGenerator(_arch("batch", False, 3)))
    SupernetGenerator(ResnetGenerator(_arch("none", True, 1)))
