from __future__ import annotations

import pytest
import torch

from coevo.cli import main
from coevo.models import load_generator, save_generator
from coevo.prune import Genome, count_macs, slim


@pytest.fixture
def teacher_path(tmp_path, tiny_generator):
    return save_generator(tiny_generator, tmp_path / "teacher.pt")


@pytest.mark.parametrize("method", ["l1", "random"])
def test_prune_round_trips(tmp_path, teacher_path, tiny_generator, capsys, method):
    out = tmp_path / "out" / "slim.pt"
    rc = main(["prune", "--generator", str(teacher_path), "--method", method, "--macs-ratio", "0.4",
               "--size", "32", "--seed", "3", "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "published convention" in printed and "params" in printed
    student = load_generator(out)  # no flags: the architecture travels with the weights
    genome = Genome.load_json(tmp_path / "out" / "slim.genome.json")
    assert genome.meta["method"] == method
    assert student.arch == genome.slim_arch()
    assert count_macs(student.arch, 32) <= 0.4 * count_macs(tiny_generator.arch, 32)
    x = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        torch.testing.assert_close(student(x), slim(tiny_generator, genome)(x), atol=0, rtol=0)
    assert torch.load(out, weights_only=True)["extra"]["genome"]["kept"] == genome.to_dict()["kept"]


def test_prune_keep_ratio_and_refusals(tmp_path, teacher_path, capsys):
    out = tmp_path / "half.pt"
    args = ["prune", "--generator", str(teacher_path), "--keep-ratio", "0.5", "--out", str(out)]
    assert main(args) == 0
    assert set(load_generator(out).arch.widths.values()) == {2, 4, 8}
    assert main(args) == 2  # never overwrites without --force
    assert "--force" in capsys.readouterr().err
    assert main(args + ["--force"]) == 0
    bad = ["prune", "--generator", str(teacher_path), "--out", str(tmp_path / "x.pt")]
    assert main(bad + ["--macs-ratio", "1.5"]) == 2
    assert main(bad + ["--macs-ratio", "0.0001", "--size", "32"]) == 2
    assert "already costs" in capsys.readouterr().err
    assert main(bad + ["--method", "random", "--keep-ratio", "0.5"]) == 2
