"""Sample grids."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from coevo.evaluation.viz import make_grid_image, save_grid


def _batch(n=3, h=16, w=20, value=0.0):
    return torch.full((n, 3, h, w), value)


def test_save_grid_size_and_pixels(tmp_path):
    cols = [("real", _batch(value=-1.0)), ("fake", _batch(value=1.0))]
    path = save_grid(cols, tmp_path / "sub" / "grid.png")
    with Image.open(path) as im:
        assert im.format == "PNG" and im.mode == "RGB"
        w, h = im.size
        arr = np.asarray(im)
    # Two 20-px columns with 2-px gaps; three 16-px rows plus a header row.
    assert w == 2 * 20 + 3 * 2
    assert h > 3 * 16 + 4 * 2
    assert arr[h - 2 - 8, 2 + 10].tolist() == [0, 0, 0]              # middle of the last "real" cell
    assert arr[h - 2 - 8, 2 + 20 + 2 + 10].tolist() == [255, 255, 255]  # middle of the last "fake" cell
    assert not list(tmp_path.joinpath("sub").glob("*.tmp"))


def test_max_rows_title_and_wide_labels():
    small = make_grid_image([("a", _batch(n=10))], max_rows=4)
    titled = make_grid_image([("a", _batch(n=10))], max_rows=4, title="epoch 3")
    assert titled.height > small.height
    assert small.height < make_grid_image([("a", _batch(n=10))], max_rows=8).height
    wide = make_grid_image([("a very long column label", _batch(w=8))])
    assert wide.width > 8 + 4  # the column grows to fit its label
    assert make_grid_image([("x", _batch(n=1)[0])]).size == make_grid_image([("x", _batch(n=1))]).size


def test_grid_rejects_mismatched_columns():
    with pytest.raises(ValueError, match="'b'"):
        make_grid_image([("a", _batch(n=2)), ("b", _batch(n=3))])
    with pytest.raises(ValueError):
        make_grid_image([])
