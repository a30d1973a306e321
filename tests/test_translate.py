"""Translating files: names, sizes, batching, every loadable generator format."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from coevo import save_generator
from coevo.cli import main
from coevo.data.errors import DataError
from coevo.evaluation.translate import translate_images


def _write(path, w, h, seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def mixed_folder(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    _write(d / "a.png", 32, 32)
    _write(d / "b.jpg", 38, 29, seed=1)   # rounded down to 36 x 28
    _write(d / "c.png", 32, 32, seed=2)
    (d / "notes.txt").write_text("not an image")
    return d


def test_translate_folder_keeps_rounded_sizes(tiny_generator, mixed_folder, tmp_path):
    paths = sorted(p for p in mixed_folder.iterdir() if p.suffix != ".txt")
    out = translate_images(tiny_generator, paths, tmp_path / "out", batch=2)
    assert [p.name for p in out] == ["a.png", "b.png", "c.png"]
    assert [Image.open(p).size for p in out] == [(32, 32), (36, 28), (32, 32)]
    # batching does not change the result: image c alone equals c in a batch
    single = translate_images(tiny_generator, [mixed_folder / "c.png"], tmp_path / "one", batch=1)
    assert np.array_equal(np.asarray(Image.open(single[0])), np.asarray(Image.open(out[2])))


def test_translate_name_clash_and_bad_size(tiny_generator, tmp_path):
    a = _write(tmp_path / "x.png", 16, 16)
    b = _write(tmp_path / "x.jpg", 16, 16)
    with pytest.raises(DataError, match="rename"):
        translate_images(tiny_generator, [a, b], tmp_path / "out")
    with pytest.raises(DataError, match="multiple of 4"):
        translate_images(tiny_generator, [a], tmp_path / "out", size=30)


def test_cli_translate_reference_checkpoint_with_size(tiny_generator, mixed_folder, tmp_path, capsys):
    ckpt = tmp_path / "latest_net_G_A.pth"
    torch.save(tiny_generator.state_dict(), ckpt)  # a bare state_dict, as the reference code writes
    out = tmp_path / "out"
    assert main(["translate", "--model", str(ckpt), "--input", str(mixed_folder), "--output", str(out),
                 "--size", "24"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png", "c.png"]
    assert all(Image.open(p).size == (24, 24) for p in out.iterdir())
    assert "wrote 3 image(s)" in capsys.readouterr().out


def test_cli_translate_single_file_with_safetensors(tiny_generator, mixed_folder, tmp_path):
    model = save_generator(tiny_generator, tmp_path / "g.safetensors")
    out = tmp_path / "out"
    assert main(["translate", "--model", str(model), "--input", str(mixed_folder / "b.jpg"),
                 "--output", str(out)]) == 0
    assert Image.open(out / "b.png").size == (36, 28)
    assert main(["translate", "--model", str(model), "--input", str(tmp_path / "missing"),
                 "--output", str(out)]) == 2


def test_translate_with_onnx_export(tiny_generator, mixed_folder, tmp_path):
    from coevo import load_generator
    from coevo.deploy.export import save_onnx

    path = tmp_path / "g.onnx"
    save_onnx(tiny_generator, path, exporter="legacy")
    eager = translate_images(tiny_generator, [mixed_folder / "a.png"], tmp_path / "eager")
    onnx = translate_images(load_generator(path), [mixed_folder / "a.png"], tmp_path / "onnx")
    diff = np.abs(np.asarray(Image.open(eager[0]), int) - np.asarray(Image.open(onnx[0]), int))
    assert diff.max() <= 1  # 8-bit rounding of outputs equal to ~1e-6
