"""The U-Net generator family: reference layout, channel groups, slimming and MAC counts.

The reference classes are restated below from junyanz/pytorch-CycleGAN-and-pix2pix
(``models/networks.py``: ``UnetGenerator`` and ``UnetSkipConnectionBlock``) so the
checks compare against the reference's own structure, not against coevo's table.
"""
from __future__ import annotations

import functools
import json

import numpy as np
import pytest
import torch
from torch import nn

from coevo.models.unet import UnetArch, UnetGenerator, infer_unet_arch, unet_full_widths, unet_group_names
from coevo.prune import Genome, MacTable, channel_groups, count_macs, count_params, masked_generator, slim
from coevo.prune.groups import conv_inputs
from coevo.prune.macs import macs_of_genome

from conftest import direct_edges


# ----------------------------------------------------------------- the reference code, restated
class _RefIdentity(nn.Module):
    def forward(self, x):
        return x


def _ref_norm(norm):
    if norm == "batch":
        return functools.partial(nn.BatchNorm2d, affine=True, track_running_stats=True)
    if norm == "instance":
        return functools.partial(nn.InstanceNorm2d, affine=False, track_running_stats=False)
    return lambda x: _RefIdentity()


class _RefBlock(nn.Module):
    def __init__(self, outer_nc, inner_nc, input_nc=None, submodule=None, outermost=False, innermost=False,
                 norm_layer=nn.BatchNorm2d, use_dropout=False):
        super().__init__()
        self.outermost = outermost
        if type(norm_layer) == functools.partial:  # noqa: E721  (as the reference tests it)
            use_bias = norm_layer.func == nn.InstanceNorm2d
        else:
            use_bias = norm_layer == nn.InstanceNorm2d
        if input_nc is None:
            input_nc = outer_nc
        downconv = nn.Conv2d(input_nc, inner_nc, kernel_size=4, stride=2, padding=1, bias=use_bias)
        downrelu = nn.LeakyReLU(0.2, True)
        downnorm = norm_layer(inner_nc)
        uprelu = nn.ReLU(True)
        upnorm = norm_layer(outer_nc)
        if outermost:
            upconv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, kernel_size=4, stride=2, padding=1)
            model = [downconv] + [submodule] + [uprelu, upconv, nn.Tanh()]
        elif innermost:
            upconv = nn.ConvTranspose2d(inner_nc, outer_nc, kernel_size=4, stride=2, padding=1, bias=use_bias)
            model = [downrelu, downconv] + [uprelu, upconv, upnorm]
        else:
            upconv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, kernel_size=4, stride=2, padding=1, bias=use_bias)
            model = [downrelu, downconv, downnorm] + [submodule] + [uprelu, upconv, upnorm]
            if use_dropout:
                model = model + [nn.Dropout(0.5)]
        self.model = nn.Sequential(*model)

    def forward(self, x):
        if self.outermost:
            return self.model(x)
        return torch.cat([x, self.model(x)], 1)


class _RefUnet(nn.Module):
    def __init__(self, input_nc, output_nc, num_downs, ngf=64, norm_layer=nn.BatchNorm2d, use_dropout=False):
        super().__init__()
        block = _RefBlock(ngf * 8, ngf * 8, submodule=None, norm_layer=norm_layer, innermost=True)
        for _ in range(num_downs - 5):
            block = _RefBlock(ngf * 8, ngf * 8, submodule=block, norm_layer=norm_layer, use_dropout=use_dropout)
        block = _RefBlock(ngf * 4, ngf * 8, submodule=block, norm_layer=norm_layer)
        block = _RefBlock(ngf * 2, ngf * 4, submodule=block, norm_layer=norm_layer)
        block = _RefBlock(ngf, ngf * 2, submodule=block, norm_layer=norm_layer)
        self.model = _RefBlock(output_nc, ngf, input_nc=input_nc, submodule=block, outermost=True,
                               norm_layer=norm_layer)

    def forward(self, x):
        return self.model(x)


def _randomise_norms(net: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial batch-norm statistics and affine parameters (fresh ones are 0/1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(1 + 0.3 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.3 * torch.randn(m.bias.shape, generator=g))
                m.running_mean.copy_(0.2 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
    return net


# ----------------------------------------------------------------- reference keys and shapes
B = "model.model.1"  # level 2
L3, L4 = B + ".model.3", B + ".model.3.model.3"
L5 = L4 + ".model.3"


def _bn(prefix, c):
    return [(f"{prefix}.weight", (c,)), (f"{prefix}.bias", (c,)), (f"{prefix}.running_mean", (c,)),
            (f"{prefix}.running_var", (c,)), (f"{prefix}.num_batches_tracked", ())]


# unet with num_downs=5, ngf=4, 3 -> 2 channels, batch norm: written out from the reference's nesting.
EXPECTED_BATCH = (
    [("model.model.0.weight", (4, 3, 4, 4))]
    + [(f"{B}.model.1.weight", (8, 4, 4, 4))] + _bn(f"{B}.model.2", 8)
    + [(f"{L3}.model.1.weight", (16, 8, 4, 4))] + _bn(f"{L3}.model.2", 16)
    + [(f"{L4}.model.1.weight", (32, 16, 4, 4))] + _bn(f"{L4}.model.2", 32)
    + [(f"{L5}.model.1.weight", (32, 32, 4, 4)), (f"{L5}.model.3.weight", (32, 32, 4, 4))] + _bn(f"{L5}.model.4", 32)
    + [(f"{L4}.model.5.weight", (64, 16, 4, 4))] + _bn(f"{L4}.model.6", 16)
    + [(f"{L3}.model.5.weight", (32, 8, 4, 4))] + _bn(f"{L3}.model.6", 8)
    + [(f"{B}.model.5.weight", (16, 4, 4, 4))] + _bn(f"{B}.model.6", 4)
    + [("model.model.3.weight", (8, 2, 4, 4)), ("model.model.3.bias", (2,))]
)

# The same network under instance norm: no norm keys, every conv has a bias.
EXPECTED_INSTANCE = [
    ("model.model.0.weight", (4, 3, 4, 4)), ("model.model.0.bias", (4,)),
    (f"{B}.model.1.weight", (8, 4, 4, 4)), (f"{B}.model.1.bias", (8,)),
    (f"{L3}.model.1.weight", (16, 8, 4, 4)), (f"{L3}.model.1.bias", (16,)),
    (f"{L4}.model.1.weight", (32, 16, 4, 4)), (f"{L4}.model.1.bias", (32,)),
    (f"{L5}.model.1.weight", (32, 32, 4, 4)), (f"{L5}.model.1.bias", (32,)),
    (f"{L5}.model.3.weight", (32, 32, 4, 4)), (f"{L5}.model.3.bias", (32,)),
    (f"{L4}.model.5.weight", (64, 16, 4, 4)), (f"{L4}.model.5.bias", (16,)),
    (f"{L3}.model.5.weight", (32, 8, 4, 4)), (f"{L3}.model.5.bias", (8,)),
    (f"{B}.model.5.weight", (16, 4, 4, 4)), (f"{B}.model.5.bias", (4,)),
    ("model.model.3.weight", (8, 2, 4, 4)), ("model.model.3.bias", (2,)),
]


def _shapes(net):
    return [(k, tuple(v.shape)) for k, v in net.state_dict().items()]


@pytest.mark.parametrize("norm,expected", [("batch", EXPECTED_BATCH), ("instance", EXPECTED_INSTANCE)])
def test_reference_keys_and_shapes_written_out(norm, expected):
    assert _shapes(_RefUnet(3, 2, 5, ngf=4, norm_layer=_ref_norm(norm))) == expected  # the restatement
    assert _shapes(UnetGenerator(UnetArch(num_downs=5, ngf=4, out_channels=2, norm=norm))) == expected


@pytest.mark.parametrize("num_downs,norm,dropout", [(5, "none", False), (7, "batch", True), (8, "instance", True),
                                                    (6, "batch", False)])
def test_state_dict_and_outputs_equal_the_reference(num_downs, norm, dropout):
    torch.manual_seed(0)
    ref = _randomise_norms(_RefUnet(3, 3, num_downs, ngf=2, norm_layer=_ref_norm(norm), use_dropout=dropout))
    gen = UnetGenerator(UnetArch(num_downs=num_downs, ngf=2, norm=norm, dropout=dropout))
    assert _shapes(gen) == _shapes(ref)
    gen.load_state_dict(ref.state_dict())
    size = 2 ** num_downs
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        assert torch.equal(gen.eval()(x), ref.eval()(x))
        for net in (gen, ref):  # train mode: batch statistics and dropout, same random stream
            net.train()
        torch.manual_seed(1)
        y_gen = gen(x)
        torch.manual_seed(1)
        assert torch.equal(y_gen, ref(x))
    dropouts = [m for m in gen.modules() if isinstance(m, nn.Dropout)]
    assert len(dropouts) == (num_downs - 5 if dropout else 0)


@pytest.mark.parametrize("norm", ["batch", "instance", "none"])
@pytest.mark.parametrize("dropout", [False, True])
def test_arch_inferred_from_a_reference_state_dict(norm, dropout):
    ref = _RefUnet(1, 3, 6, ngf=4, norm_layer=_ref_norm(norm), use_dropout=dropout)
    arch = infer_unet_arch(ref.state_dict(), dropout=dropout)
    assert arch == UnetArch(num_downs=6, ngf=4, in_channels=1, out_channels=3, norm=norm, dropout=dropout)
    assert arch.is_full and arch.widths == unet_full_widths(4, 6)
    assert UnetArch.from_dict(json.loads(json.dumps(arch.to_dict()))) == arch
    assert arch.to_dict()["kind"] == "unet_generator"
    # A slim network's state_dict gives its own widths back.
    widths = {g: max(1, w - i % 3) for i, (g, w) in enumerate(arch.widths.items())}
    slim_arch = arch.with_widths(widths)
    assert infer_unet_arch(UnetGenerator(slim_arch).state_dict(), dropout=dropout).widths == widths


def test_arch_refuses_what_the_reference_cannot_build():
    with pytest.raises(ValueError, match="at least 5"):
        UnetArch(num_downs=4)
    with pytest.raises(ValueError, match="norm"):
        UnetArch(num_downs=5, norm="group")
    with pytest.raises(ValueError, match="missing groups"):
        UnetArch(num_downs=5, widths={"down1": 3})


# ----------------------------------------------------------------- channel groups
def test_group_names_and_wiring():
    arch = UnetArch(num_downs=5, ngf=4)
    assert unet_group_names(5) == ["down1", "down2", "down3", "down4", "down5", "up5", "up4", "up3", "up2"]
    groups = {g.name: g for g in channel_groups(arch)}
    assert list(groups) == unet_group_names(5)
    for i in range(1, 5):
        g = groups[f"down{i}"]
        assert (g.producers, g.consumers) == ([f"down{i}"], [f"down{i + 1}", f"up{i}"])
    assert groups["down5"].consumers == ["up5"]
    for i in range(2, 6):
        assert (groups[f"up{i}"].producers, groups[f"up{i}"].consumers) == ([f"up{i}"], [f"up{i - 1}"])
    io = conv_inputs(arch)
    assert io["down1"] == ((None,), "down1") and io["up1"] == (("down1", "up2"), None)
    assert io["up5"] == (("down5",), "up5")


# Unequal widths: a channel index lines up with itself only if the wiring (and the concat offsets) is right.
UNEVEN = UnetArch(num_downs=5, ngf=4, norm="batch", widths={"down1": 3, "down2": 5, "down3": 6, "down4": 7,
                                                              "down5": 4, "up5": 5, "up4": 2, "up3": 6, "up2": 3})


@pytest.mark.parametrize("arch", [UNEVEN, UnetArch(num_downs=6, ngf=2, norm="instance")],
                         ids=["batch-uneven", "instance-6"])
def test_declared_groups_match_real_data_flow(arch):
    torch.manual_seed(0)
    gen = _randomise_norms(UnetGenerator(arch)).eval()
    edges = direct_edges(gen, torch.randn(2, 3, 2 ** arch.num_downs, 2 * 2 ** arch.num_downs), "up1")
    # What the table declares: channel c of group g is input channel offset(g) + c of each consumer.
    expected = {}
    for conv, (inputs, _) in conv_inputs(arch).items():
        offset = 0
        for g in inputs:
            if g is not None:
                for c in range(arch.widths[g]):
                    expected.setdefault((g, c), set()).add((conv, offset + c))
                offset += arch.widths[g]
    produced = {(out, c): targets for (out, c), targets in edges.items()}
    assert produced == expected


# ----------------------------------------------------------------- genomes, slimming, masking
def _random_genome(arch, seed):
    rng = np.random.default_rng(seed)
    kept = {g: sorted(rng.choice(w, size=int(rng.integers(1, w + 1)), replace=False).tolist())
            for g, w in arch.widths.items()}
    return Genome.from_kept(arch, kept)


@pytest.mark.parametrize("norm", ["batch", "instance", "none"])
def test_all_keep_genome_gives_the_teacher(norm):
    torch.manual_seed(0)
    teacher = _randomise_norms(UnetGenerator(UnetArch(num_downs=5, ngf=4, norm=norm))).eval()
    student = slim(teacher, Genome.all_keep(teacher.arch))
    assert student.arch == teacher.arch and not student.training
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(student(x), teacher(x))
        assert torch.equal(masked_generator(teacher, Genome.all_keep(teacher.arch))(x), teacher(x))


@pytest.mark.parametrize("norm,train", [("batch", False), ("batch", True), ("instance", True), ("none", False)])
def test_slim_equals_masked(norm, train):
    torch.manual_seed(0)
    teacher = _randomise_norms(UnetGenerator(UnetArch(num_downs=5, ngf=4, norm=norm)))
    teacher.train(train)
    x = torch.randn(2, 3, 32, 64)
    for seed in range(3):
        genome = _random_genome(teacher.arch, seed)
        student = slim(teacher, genome)
        assert student.arch.widths == genome.widths() and student.training == train
        assert _shapes(student) == _shapes(UnetGenerator(genome.slim_arch()))
        with torch.no_grad():
            y_slim, y_mask = student(x), masked_generator(teacher, genome)(x)
        torch.testing.assert_close(y_slim, y_mask, rtol=1e-4, atol=1e-5)
        with torch.no_grad():
            assert not torch.allclose(y_slim, teacher(x), atol=1e-3)  # the pruning did something


def test_masked_generator_with_dropout_in_eval_and_its_state_dict():
    arch = UnetArch(num_downs=6, ngf=2, norm="batch", dropout=True)
    torch.manual_seed(0)
    teacher = _randomise_norms(UnetGenerator(arch)).eval()
    genome = _random_genome(arch, 5)
    masked = masked_generator(teacher, genome)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(slim(teacher, genome)(x), masked(x), rtol=1e-4, atol=1e-5)
    UnetGenerator(arch).load_state_dict(masked.generator.state_dict())  # masks are not saved


def test_genome_json_names_are_stable(tmp_path):
    arch = UnetArch(num_downs=5, ngf=4, norm="instance", dropout=True)
    genome = _random_genome(arch, 1)
    d = genome.to_dict()
    assert list(d["kept"]) == ["down1", "down2", "down3", "down4", "down5", "up5", "up4", "up3", "up2"]
    assert d["arch"]["kind"] == "unet_generator" and d["arch"]["dropout"] is True
    assert genome.n_bits == sum(arch.widths.values())
    back = Genome.load_json(genome.save_json(tmp_path / "g.json"))
    assert back == genome and isinstance(back.arch, UnetArch)
    assert Genome.from_bits(arch, genome.to_bits()) == genome
    with pytest.raises(ValueError, match="tied"):
        Genome.all_keep(arch, tied=True)


def test_a_genome_from_another_network_is_refused():
    from coevo.models import GeneratorArch

    teacher = UnetGenerator(UnetArch(num_downs=5, ngf=4))
    with pytest.raises(ValueError, match="U-Net"):
        slim(teacher, Genome.all_keep(UnetArch(num_downs=6, ngf=4)))
    with pytest.raises(ValueError, match="genome is for"):
        slim(teacher, Genome.all_keep(GeneratorArch.full(ngf=4, n_blocks=2)))


# ----------------------------------------------------------------- MACs and parameters
def _hooked_macs(net: nn.Module, x: torch.Tensor) -> int:
    """k*k*C_in*C_out per OUTPUT pixel of every conv, read off the tensors of a real forward."""
    total = 0

    def hook(mod, inp, out):
        nonlocal total
        k = mod.kernel_size[0] * mod.kernel_size[1]
        total += k * inp[0].shape[1] * out.shape[1] * out.shape[2] * out.shape[3]

    handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    with torch.no_grad():
        net.eval()(x)
    for h in handles:
        h.remove()
    return total


def test_macs_hand_count_published_convention():
    # num_downs=5, ngf=4, 3 -> 3 at 32x32: down convs write 16,8,4,2,1 px sides, up convs 2,4,8,16,32.
    # down: 3->4, 4->8, 8->16, 16->32, 32->32 | up (inputs concatenated): 32->32, 64->16, 32->8, 16->4, 8->3
    down = 16 * (3 * 4 * 16 ** 2 + 4 * 8 * 8 ** 2 + 8 * 16 * 4 ** 2 + 16 * 32 * 2 ** 2 + 32 * 32 * 1)
    up = 16 * (32 * 32 * 2 ** 2 + 64 * 16 * 4 ** 2 + 32 * 8 * 8 ** 2 + 16 * 4 * 16 ** 2 + 8 * 3 * 32 ** 2)
    arch = UnetArch(num_downs=5, ngf=4)
    assert count_macs(arch, 32) == down + up
    # per input pixel (FlopCounterMode's convention) the up convs cost a quarter
    assert count_macs(arch, 32, convention="flopcounter") == down + up // 4


@pytest.mark.parametrize("seed", [0, 1])
def test_macs_match_the_real_network_and_flopcounter(seed):
    from torch.utils.flop_counter import FlopCounterMode

    arch = UnetArch(num_downs=5, ngf=4, norm="instance")
    genome = _random_genome(arch, seed)
    net = UnetGenerator(genome.slim_arch())
    x = torch.randn(1, 3, 32, 64)
    assert macs_of_genome(genome, (32, 64)) == _hooked_macs(net, x) == count_macs(net.arch, 32, 64)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        net(x)
    assert 2 * count_macs(net.arch, 32, 64, convention="flopcounter") == counter.get_total_flops()
    table = MacTable(arch, (32, 64))
    widths = np.array([[genome.widths()[g] for g in unet_group_names(5)], list(arch.widths.values())])
    assert table(widths).tolist() == [count_macs(net.arch, 32, 64), count_macs(arch, 32, 64)]
    with pytest.raises(ValueError, match="multiples of 32"):
        count_macs(arch, 48)


@pytest.mark.parametrize("norm", ["batch", "instance", "none"])
def test_params_count_matches_the_network(norm):
    arch = UnetArch(num_downs=6, ngf=3, norm=norm, in_channels=1)
    for a in (arch, _random_genome(arch, 2).slim_arch()):
        assert count_params(a) == sum(p.numel() for p in UnetGenerator(a).parameters())


# ----------------------------------------------------------------- budgets and baselines
def test_l1_random_and_repair_meet_a_mac_budget():
    from coevo.prune import l1_genome, l1_genome_for_macs, random_genome_for_macs, repair_to_budget
    from coevo.prune.baselines import filter_importance, macs_ratio_of

    torch.manual_seed(0)
    teacher = _randomise_norms(UnetGenerator(UnetArch(num_downs=5, ngf=4))).eval()
    scores = filter_importance(teacher)
    assert list(scores) == unet_group_names(5)
    # an up-conv's filter is its OUTPUT channel: ConvTranspose2d weights are [in, out, k, k]
    w = dict(teacher.named_convs())["up2"].weight.detach().double()
    np.testing.assert_allclose(scores["up2"], w.abs().sum(dim=(0, 2, 3)).numpy())
    genome = l1_genome_for_macs(teacher, 0.25, 32)
    assert 0.1 < macs_ratio_of(genome, 32) <= 0.25  # widths of 4..32 filters step coarsely
    kept = genome.kept("down3")
    assert sorted(np.argsort(-scores["down3"], kind="stable")[:len(kept)].tolist()) == kept
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(slim(teacher, genome)(x), masked_generator(teacher, genome)(x),
                                   rtol=1e-4, atol=1e-5)
    assert l1_genome(teacher, 0.5).widths()["down5"] == 16
    rng = np.random.default_rng(0)
    assert macs_ratio_of(random_genome_for_macs(teacher.arch, 0.3, 32, rng), 32) <= 0.3
    budget = count_macs(teacher.arch, 32) // 5
    repaired = repair_to_budget(Genome.all_keep(teacher.arch), budget, 32, importance=scores)
    assert macs_of_genome(repaired, 32) <= budget


# ----------------------------------------------------------------- loading
@pytest.mark.parametrize("norm", ["batch", "instance", "none"])
def test_load_generator_reads_a_reference_unet_and_coevo_files(tmp_path, norm):
    from coevo.models import load_generator, save_generator

    torch.manual_seed(0)
    ref = _randomise_norms(_RefUnet(3, 3, 6, ngf=2, norm_layer=_ref_norm(norm)))
    sd = {f"module.{k}": v for k, v in ref.state_dict().items()}  # as saved from DataParallel
    torch.save(sd, tmp_path / "latest_net_G.pth")
    gen = load_generator(tmp_path / "latest_net_G.pth")
    assert isinstance(gen, UnetGenerator) and not gen.training
    assert gen.arch == UnetArch(num_downs=6, ngf=2, norm=norm)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(gen(x), ref.eval()(x))
    genome = _random_genome(gen.arch, 3)
    student = slim(gen, genome)
    for name in ("s.pt", "s.safetensors"):
        back = load_generator(save_generator(student, tmp_path / name))
        assert isinstance(back, UnetGenerator) and back.arch == student.arch
        with torch.no_grad():
            assert torch.equal(back(x), student(x))


def test_prune_cli_and_translate_on_a_unet(tmp_path, capsys):
    from coevo.cli import main
    from coevo.models import load_generator
    from coevo.models.teacher import TeacherPaths, check_generator_pair

    torch.manual_seed(0)
    path = tmp_path / "latest_net_G.pth"
    torch.save(_RefUnet(3, 3, 5, ngf=4, norm_layer=_ref_norm("instance")).state_dict(), path)
    rc = main(["prune", "--generator", str(path), "--macs-ratio", "0.3", "--size", "64",
               "--out", str(tmp_path / "slim.pt")])
    assert rc == 0, capsys.readouterr().err
    student = load_generator(tmp_path / "slim.pt")
    assert isinstance(student, UnetGenerator)
    assert count_macs(student.arch, 64) <= 0.3 * count_macs(UnetArch(num_downs=5, ngf=4, norm="instance"), 64)
    assert Genome.load_json(tmp_path / "slim.genome.json").slim_arch() == student.arch
    G_A, G_B = check_generator_pair(TeacherPaths(G_A=path, G_B=path))  # a U-Net teacher is taken
    assert isinstance(G_A, UnetGenerator) and G_A.arch == G_B.arch
    from PIL import Image

    (tmp_path / "imgs").mkdir()
    Image.fromarray(np.zeros((40, 50, 3), dtype=np.uint8)).save(tmp_path / "imgs" / "a.png")
    rc = main(["translate", "--model", str(tmp_path / "slim.pt"), "--input", str(tmp_path / "imgs"),
               "--out", str(tmp_path / "out"), "--size", "64"])
    assert rc == 0, capsys.readouterr().err
    assert Image.open(tmp_path / "out" / "a.png").size == (64, 64)
