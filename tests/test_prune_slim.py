from __future__ import annotations

import numpy as np
import pytest
import torch

from coevo.models import GeneratorArch, ResnetGenerator, load_generator, save_generator
from coevo.prune import Genome, GenomeError, MaskedGenerator, masked_generator, slim


def _gen(ngf, n_blocks, seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return ResnetGenerator(GeneratorArch.full(ngf=ngf, n_blocks=n_blocks)).to(dtype).eval()


def _random_genome(arch, seed, tied=False, density=0.5):
    rng = np.random.default_rng(seed)
    g = Genome.from_bits(arch, rng.random(Genome.all_keep(arch, tied).n_bits) < density, tied=tied)
    for m in g.masks.values():
        if not m.any():
            m[rng.integers(m.shape[0])] = True
    return g


def _x(h, w, seed=1, batch=2):
    return torch.randn(batch, 3, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("ngf,n_blocks,size", [
    (4, 6, (32, 32)), (4, 9, (32, 48)), (8, 2, (48, 32)), (6, 1, (36, 44)),
])
def test_all_keep_slim_reproduces_the_original(ngf, n_blocks, size):
    gen = _gen(ngf, n_blocks)
    small = slim(gen, Genome.all_keep(gen.arch))
    assert type(small) is ResnetGenerator and small.arch == gen.arch
    x = _x(*size, batch=1)
    with torch.no_grad():
        torch.testing.assert_close(small(x), gen(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_slim_equals_masked_full_network(tied, seed):
    gen = _gen(8, 2, seed=seed)
    genome = _random_genome(gen.arch, seed, tied=tied)
    small = slim(gen, genome)
    assert small.arch.widths == genome.widths()
    masked = masked_generator(gen, genome)
    x = _x(32, 48, seed)
    with torch.no_grad():
        out_slim, out_masked = small(x), masked(x)
        assert (out_masked - gen(x)).abs().max() > 1e-3  # the masks do something
    torch.testing.assert_close(out_slim, out_masked, atol=1e-5, rtol=0)


def test_one_channel_per_group():
    gen = _gen(4, 2)
    genome = Genome.from_kept(gen.arch, {n: [c - 1] for n, c in gen.arch.widths.items()})
    small = slim(gen, genome)
    assert set(small.arch.widths.values()) == {1}
    x = _x(32, 32)
    with torch.no_grad():
        torch.testing.assert_close(small(x), masked_generator(gen, genome)(x), atol=1e-5, rtol=0)


def test_slim_copies_weights_by_index_and_keeps_flags():
    gen = _gen(4, 1, dtype=torch.float64).train()
    gen.model[1].weight.requires_grad_(False)
    genome = _random_genome(gen.arch, 5)
    small = slim(gen, genome)
    assert small.training and next(small.parameters()).dtype == torch.float64
    assert not small.model[1].weight.requires_grad and small.model[4].weight.requires_grad
    old, new = dict(gen.named_convs()), dict(small.named_convs())
    stem, down1 = genome.kept("stem"), genome.kept("down1")
    assert torch.equal(new["down1"].weight, old["down1"].weight[down1][:, stem])
    assert torch.equal(new["down1"].bias, old["down1"].bias[down1])
    trunk, up1 = genome.kept("trunk"), genome.kept("up1")
    assert torch.equal(new["up1"].weight, old["up1"].weight[trunk][:, up1])  # ConvTranspose: [in, out]
    assert torch.equal(new["head"].bias, old["head"].bias)
    new["head"].bias.data.add_(1)
    assert not torch.equal(new["head"].bias, old["head"].bias)  # a copy, not a view


def test_genome_for_another_network_is_refused():
    gen = _gen(4, 2)
    with pytest.raises(GenomeError, match="widths"):
        slim(gen, Genome.all_keep(GeneratorArch.full(ngf=8, n_blocks=2)))
    with pytest.raises(GenomeError, match="3-block"):
        slim(gen, Genome.all_keep(GeneratorArch.full(ngf=4, n_blocks=3)))


def test_masks_are_enforced_during_training():
    gen = _gen(4, 2).train()
    genome = _random_genome(gen.arch, 7)
    masked = masked_generator(gen, genome)
    opt = torch.optim.Adam(masked.parameters(), lr=1e-2, weight_decay=1e-2)
    x = _x(32, 32)
    for _ in range(3):
        opt.zero_grad()
        masked(x).abs().mean().backward()
        opt.step()
    outputs = {}
    for name, conv in masked.generator.named_convs():
        conv.register_forward_hook(lambda m, i, o, name=name: outputs.__setitem__(name, o))
    masked.eval()
    with torch.no_grad():
        y = masked(x)
    for name in ("stem", "down2", "block1.conv2", "block0.conv1", "up2"):
        group = {"down2": "trunk", "block1.conv2": "trunk", "block0.conv1": "block0.inner"}.get(name, name)
        dropped = ~torch.as_tensor(genome.masks[group])
        assert outputs[name][:, dropped].abs().max() == 0
    # The trained masked net still slims to the same function, and the original is untouched.
    with torch.no_grad():
        torch.testing.assert_close(slim(masked, genome)(x), y, atol=1e-5, rtol=0)
        assert not torch.equal(masked.generator.model[1].weight, gen.model[1].weight)
    # Its weights load into a plain generator (the masks are not in the state_dict).
    ResnetGenerator(gen.arch).load_state_dict(masked.generator.state_dict())
    assert isinstance(masked, MaskedGenerator)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_slim_generator_saves_and_reloads(tmp_path, suffix):
    gen = _gen(8, 2)
    small = slim(gen, _random_genome(gen.arch, 11))
    path = save_generator(small, tmp_path / f"slim{suffix}")
    back = load_generator(path)
    assert back.arch == small.arch
    x = _x(32, 48)
    with torch.no_grad():
        torch.testing.assert_close(back(x), small(x), atol=0, rtol=0)


def test_slim_generator_scripts_and_traces():
    gen = _gen(8, 2)
    small = slim(gen, _random_genome(gen.arch, 12, tied=True))
    x = _x(32, 48)
    with torch.no_grad():
        expected = small(x)
        scripted = torch.jit.script(small)
        torch.testing.assert_close(scripted(x), expected, atol=1e-6, rtol=0)
        traced = torch.jit.trace(small, _x(32, 32))
        torch.testing.assert_close(traced(x), expected, atol=1e-6, rtol=0)
