"""Networks and checkpoints: the reference CycleGAN layout (junyanz/pytorch-CycleGAN-and-pix2pix's
``ResnetGenerator``, ``latest_net_G_A.pth``) and coevo's own files."""
from __future__ import annotations

import pytest
import torch

from coevo.models import (
    CheckpointError,
    DiscriminatorArch,
    GeneratorArch,
    NLayerDiscriminator,
    ResnetGenerator,
    load_discriminator,
    load_generator,
    save_discriminator,
    save_generator,
)
from coevo.models.io import save_reference_state_dict


def reference_generator_shapes(ngf: int, n_blocks: int) -> dict:
    """Expected state_dict of the reference ResnetGenerator, written out by hand from its published layout
    (model.1 conv7x7, model.4/model.7 stride-2 convs, residual blocks model.10..., two transposed convs, model.26)."""
    c1, c2, c4 = ngf, 2 * ngf, 4 * ngf
    shapes = {
        "model.1.weight": (c1, 3, 7, 7), "model.1.bias": (c1,),
        "model.4.weight": (c2, c1, 3, 3), "model.4.bias": (c2,),
        "model.7.weight": (c4, c2, 3, 3), "model.7.bias": (c4,),
    }
    blocks = {9: range(10, 19), 6: range(10, 16)}[n_blocks]
    for b in blocks:
        for conv in (1, 5):
            shapes[f"model.{b}.conv_block.{conv}.weight"] = (c4, c4, 3, 3)
            shapes[f"model.{b}.conv_block.{conv}.bias"] = (c4,)
    up1, up2, head = {9: (19, 22, 26), 6: (16, 19, 23)}[n_blocks]
    shapes.update({
        f"model.{up1}.weight": (c4, c2, 3, 3), f"model.{up1}.bias": (c2,),   # ConvTranspose: (in, out, k, k)
        f"model.{up2}.weight": (c2, c1, 3, 3), f"model.{up2}.bias": (c1,),
        f"model.{head}.weight": (3, c1, 7, 7), f"model.{head}.bias": (3,),
    })
    return shapes


@pytest.mark.parametrize("n_blocks", [9, 6])
def test_generator_state_dict_matches_reference_layout(n_blocks):
    model = ResnetGenerator(GeneratorArch.full(ngf=8, n_blocks=n_blocks))
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == reference_generator_shapes(8, n_blocks)


def test_discriminator_keys_match_reference():
    model = NLayerDiscriminator(DiscriminatorArch(ndf=8, n_layers=3))
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == {
        "model.0.weight": (8, 3, 4, 4), "model.0.bias": (8,),
        "model.2.weight": (16, 8, 4, 4), "model.2.bias": (16,),
        "model.5.weight": (32, 16, 4, 4), "model.5.bias": (32,),
        "model.8.weight": (64, 32, 4, 4), "model.8.bias": (64,),
        "model.11.weight": (1, 64, 4, 4), "model.11.bias": (1,),
    }


def _reference_style_state_dict(arch: GeneratorArch, legacy_norm_stats: bool, prefix: str = "") -> dict:
    """A bare state_dict as the reference code saves it, optionally with old InstanceNorm running stats."""
    g = torch.Generator().manual_seed(1)
    sd = {k: torch.randn(v.shape, generator=g) for k, v in ResnetGenerator(arch).state_dict().items()}
    if legacy_norm_stats:
        # Old reference checkpoints: InstanceNorm after each conv carried running_mean/var.
        for name in ("model.2", "model.5", "model.8", "model.10.conv_block.2", "model.10.conv_block.6"):
            sd[f"{name}.running_mean"] = torch.zeros(4)
            sd[f"{name}.running_var"] = torch.ones(4)
    return {prefix + k: v for k, v in sd.items()}


@pytest.mark.parametrize("prefix", ["", "module."])
def test_reference_state_dict_loads_with_inferred_arch(tmp_path, prefix):
    arch = GeneratorArch.full(ngf=4, n_blocks=2)
    sd = _reference_style_state_dict(arch, legacy_norm_stats=True, prefix=prefix)
    path = tmp_path / "latest_net_G_A.pth"
    torch.save(sd, path)
    model = load_generator(path)
    assert isinstance(model, ResnetGenerator)
    assert model.arch.ngf == 4 and model.arch.n_blocks == 2 and model.arch.is_full
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd[prefix + k])


def test_discriminator_checkpoint_is_not_a_generator(tmp_path):
    disc = NLayerDiscriminator(DiscriminatorArch(ndf=4))
    ref = save_reference_state_dict(disc, tmp_path / "latest_net_D_A.pth")
    with pytest.raises(CheckpointError, match="discriminator"):
        load_generator(ref)
    ours = save_discriminator(disc, tmp_path / "D_A.pt")
    with pytest.raises(CheckpointError, match="discriminator"):
        load_generator(ours)


def test_corrupt_or_truncated_file_is_a_checkpoint_error(tmp_path, tiny_generator):
    path = save_generator(tiny_generator, tmp_path / "G.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated.pt"):
        load_generator(truncated)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="garbage.pth"):
        load_generator(garbage)


def test_generator_round_trip_gives_equal_outputs(tmp_path, tiny_generator):
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    path = save_generator(tiny_generator, tmp_path / "G_A.pt")
    loaded = load_generator(path)
    assert loaded.arch == tiny_generator.arch
    with torch.no_grad():
        assert torch.equal(loaded(x), tiny_generator(x))


def test_slim_arch_round_trip(tmp_path):
    arch = GeneratorArch.full(ngf=4, n_blocks=2).with_widths(
        {"stem": 3, "down1": 5, "trunk": 7, "block0.inner": 2, "block1.inner": 9, "up1": 6, "up2": 1})
    model = ResnetGenerator(arch).eval()
    loaded = load_generator(save_generator(model, tmp_path / "slim.pt"))
    assert loaded.arch.widths == arch.widths
    # A bare state_dict of a pruned network still gives its widths back.
    ref = load_generator(save_reference_state_dict(model, tmp_path / "latest_net_G_A.pth"))
    assert ref.arch.widths == arch.widths


def test_discriminator_round_trip(tmp_path):
    disc = NLayerDiscriminator(DiscriminatorArch(ndf=4)).eval()
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    for path in (save_discriminator(disc, tmp_path / "D_A.pt"),
                 save_reference_state_dict(disc, tmp_path / "latest_net_D_A.pth")):
        loaded = load_discriminator(path)
        with torch.no_grad():
            assert torch.equal(loaded(x), disc(x))


@pytest.mark.gpu
def test_generator_gives_the_same_translation_on_cuda(tiny_arch):
    """Skipped without CUDA (CI has none); benchmarks/gpu_check.sh runs it on a GPU machine."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    g = ResnetGenerator(tiny_arch).eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.inference_mode():
        cpu = g(x)
        gpu = g.cuda()(x.cuda()).cpu()
    assert (cpu - gpu).abs().max().item() < 1e-3
