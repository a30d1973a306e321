from __future__ import annotations

import json

import numpy as np
import pytest

from coevo.models import GeneratorArch
from coevo.prune import Genome, GenomeError, bit_layout


@pytest.fixture
def arch():
    return GeneratorArch.full(ngf=4, n_blocks=2)


def _random(arch, seed=0, tied=False):
    rng = np.random.default_rng(seed)
    n = Genome.all_keep(arch, tied).n_bits
    bits = rng.random(n) < 0.6
    g = Genome.from_bits(arch, bits, tied=tied)
    for name, m in g.masks.items():  # make it valid: at least one channel per group
        m[0] = True
    return g


def test_paper_layout_has_640_bits_at_ngf64():
    arch = GeneratorArch.full(ngf=64, n_blocks=9)
    assert Genome.all_keep(arch, tied=True).n_bits == 640
    assert Genome.all_keep(arch).n_bits == 640 + 9 * 256
    layout = bit_layout(arch, tied=True)
    assert list(layout) == ["stem", "down1", "trunk", "up1", "up2"]
    assert layout["trunk"] == slice(192, 448)


def test_all_keep_widths_and_slim_arch(arch):
    g = Genome.all_keep(arch)
    assert g.widths() == arch.widths
    assert g.slim_arch() == arch
    assert g.kept("stem") == [0, 1, 2, 3]


@pytest.mark.parametrize("tied", [False, True])
def test_bits_round_trip(arch, tied):
    g = _random(arch, tied=tied)
    bits = g.to_bits()
    assert bits.dtype == bool and bits.shape == (g.n_bits,)
    assert Genome.from_bits(arch, bits, tied=tied) == g


def test_tied_inner_masks_follow_the_trunk(arch):
    g = _random(arch, tied=True)
    for i in range(arch.n_blocks):
        assert np.array_equal(g.masks[f"block{i}.inner"], g.masks["trunk"])
    g.masks["trunk"][:] = False
    g.masks["trunk"][3] = True
    assert g.widths()["block1.inner"] == 1
    assert g.slim_arch().widths["block0.inner"] == 1


@pytest.mark.parametrize("tied", [False, True])
def test_json_round_trip(tmp_path, arch, tied):
    g = _random(arch, seed=3, tied=tied)
    g.meta.update({"method": "test", "macs": 123})
    path = g.save_json(tmp_path / "g.genome.json")
    data = json.loads(path.read_text())
    assert data["format"] == "coevo.genome" and data["version"] == 1
    assert data["tied"] is tied and data["arch"] == arch.to_dict()
    assert data["kept"]["trunk"] == g.kept("trunk")
    back = Genome.load_json(path)
    assert back == g and back.meta == g.meta and back.tied == tied
    assert Genome.from_dict(g.to_dict()) == g


def test_equality_and_key(arch):
    a, b = _random(arch, seed=1), _random(arch, seed=1)
    assert a == b and a.key() == b.key() and a is not b
    c = a.copy()
    c.masks["up1"][:] = ~c.masks["up1"]
    c.masks["up1"][0] = True
    assert c != a and c.key() != a.key()
    assert a == Genome(arch, a.masks, meta={"other": 1})  # meta is provenance, not compared
    assert len({a.key(), b.key(), c.key()}) == 2
    with pytest.raises(TypeError):
        hash(a)


# ---------------------------------------------------------------------------- invalid genomes
def test_unknown_group(arch):
    masks = {n: np.ones(c, bool) for n, c in arch.widths.items()}
    masks["block7.inner"] = np.ones(16, bool)
    with pytest.raises(GenomeError, match="block7.inner"):
        Genome(arch, masks)
    with pytest.raises(GenomeError, match="unknown channel group 'nope'"):
        Genome.from_kept(arch, {"nope": [0]})


def test_wrong_mask_length(arch):
    masks = {n: np.ones(c, bool) for n, c in arch.widths.items()}
    masks["down1"] = np.ones(5, bool)
    with pytest.raises(GenomeError, match=r"group 'down1': mask has 5 entries but the group has 8"):
        Genome(arch, masks)
    with pytest.raises(GenomeError, match="expected a 1-D string of"):
        Genome.from_bits(arch, np.ones(10, bool))


def test_missing_group(arch):
    masks = {n: np.ones(c, bool) for n, c in arch.widths.items() if n != "up2"}
    with pytest.raises(GenomeError, match="up2"):
        Genome(arch, masks)


def test_empty_group(arch):
    kept = {n: list(range(c)) for n, c in arch.widths.items()}
    kept["block1.inner"] = []
    with pytest.raises(GenomeError, match=r"group 'block1.inner' keeps 0 of 16"):
        Genome.from_kept(arch, kept)
    g = Genome.all_keep(arch)
    g.masks["up1"][:] = False
    with pytest.raises(GenomeError, match="group 'up1' keeps 0"):
        g.validate()
    with pytest.raises(GenomeError, match="group 'up1' keeps 0"):
        g.slim_arch()


def test_min_channels(arch):
    g = Genome.from_kept(arch, {n: [0, 1] for n in arch.widths})
    g.validate(min_channels=2)
    with pytest.raises(GenomeError, match="at least 3"):
        g.validate(min_channels=3)


@pytest.mark.parametrize("index", [8, -1])
def test_index_out_of_range(arch, index):
    kept = {n: [0] for n in arch.widths}
    kept["stem"] = [0, index]
    with pytest.raises(GenomeError, match=rf"group 'stem': index {index} out of range.*4 channels"):
        Genome.from_kept(arch, kept)


def test_duplicate_indices(arch):
    kept = {n: [0] for n in arch.widths}
    kept["trunk"] = [1, 3, 1]
    with pytest.raises(GenomeError, match=r"group 'trunk': duplicate indices \[1\]"):
        Genome.from_kept(arch, kept)


def test_non_integer_indices(arch):
    kept = {n: [0] for n in arch.widths}
    kept["up2"] = [0.5]
    with pytest.raises(GenomeError, match="group 'up2'"):
        Genome.from_kept(arch, kept)


def test_tied_mismatch(arch):
    masks = {n: np.ones(c, bool) for n, c in arch.widths.items()}
    masks["block0.inner"][2] = False
    with pytest.raises(GenomeError, match="block0.inner.*equal the trunk"):
        Genome(arch, masks, tied=True)
    slim_inner = arch.with_widths({**arch.widths, "block1.inner": 3})
    with pytest.raises(GenomeError, match="tied mode"):
        Genome.all_keep(slim_inner, tied=True)


def test_bad_files(tmp_path, arch):
    p = tmp_path / "x.json"
    p.write_text("{not json")
    with pytest.raises(GenomeError, match="not valid JSON"):
        Genome.load_json(p)
    p.write_text(json.dumps({"format": "something.else"}))
    with pytest.raises(GenomeError, match="not a coevo genome"):
        Genome.load_json(p)
    d = Genome.all_keep(arch).to_dict()
    d["version"] = 99
    with pytest.raises(GenomeError, match="newer"):
        Genome.from_dict(d)
