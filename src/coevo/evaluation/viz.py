"""Image grids for samples and reports: one row per image, one column per labelled batch.

Example::

    save_grid([("real A", real_A), ("fake B", fake_B), ("rec A", rec_A)], run_dir / "samples/epoch_003.png")
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Tuple

import torch
from PIL import Image, ImageDraw, ImageFont

from ..data.images import to_image
from ..core.files import PathLike, atomic_path

Columns = Sequence[Tuple[str, torch.Tensor]]

PAD = 2
BACKGROUND = (255, 255, 255)
TEXT = (0, 0, 0)


def _as_batch(label: str, t: torch.Tensor) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"column {label!r}: expected a tensor, got {type(t).__name__}")
    if t.dim() == 3:
        t = t.unsqueeze(0)
    if t.dim() != 4 or t.shape[1] not in (1, 3):
        raise ValueError(f"column {label!r}: expected NCHW with 1 or 3 channels, got shape {tuple(t.shape)}")
    return t


def _text_size(draw: ImageDraw.ImageDraw, text: str, font) -> Tuple[int, int]:
    if not text:
        return 0, 0
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return right - left, bottom - top


def make_grid_image(columns: Columns, max_rows: int = 8, title: Optional[str] = None) -> Image.Image:
    """Draw ``columns`` — (label, NCHW tensor in [-1, 1]) pairs with equal N, H, W — as one RGB image
    (1-channel columns, the images of a generator of grayscale data, are drawn as gray).

    The first ``max_rows`` images of every column are stacked top to bottom;
    each column has its label as a header, and ``title`` (if given) spans the top.
    """
    if not columns:
        raise ValueError("make_grid_image needs at least one (label, tensor) column")
    batches = [(str(label), _as_batch(str(label), t)) for label, t in columns]
    n, _, h, w = batches[0][1].shape
    for label, t in batches[1:]:
        if (t.shape[0], t.shape[2], t.shape[3]) != (n, h, w):
            raise ValueError(
                f"column {label!r} has N,H,W = {t.shape[0]},{t.shape[2]},{t.shape[3]}; "
                f"column {batches[0][0]!r} has {n},{h},{w}; every column needs the same"
            )
    rows = max(1, min(n, int(max_rows)))
    font = ImageFont.load_default()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_sizes = [_text_size(probe, label, font) for label, _ in batches]
    title_size = _text_size(probe, title or "", font)
    # A label wider than its images widens the column rather than being cut off.
    col_w = [max(w, tw) for tw, _ in label_sizes]
    header_h = max(th for _, th in label_sizes) + 2 * PAD
    title_h = title_size[1] + 2 * PAD if title else 0
    width = max(sum(col_w) + PAD * (len(batches) + 1), title_size[0] + 2 * PAD)
    height = title_h + header_h + rows * h + (rows + 1) * PAD

    grid = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(grid)
    if title:
        draw.text(((width - title_size[0]) // 2, PAD), title, fill=TEXT, font=font)
    x = PAD
    for (label, batch), cw, (tw, _) in zip(batches, col_w, label_sizes):
        draw.text((x + (cw - tw) // 2, title_h + PAD), label, fill=TEXT, font=font)
        for r in range(rows):
            y = title_h + header_h + PAD + r * (h + PAD)
            grid.paste(to_image(batch[r]).convert("RGB"), (x + (cw - w) // 2, y))  # gray as gray RGB
        x += cw + PAD
    return grid


def save_grid(columns: Columns, path: PathLike, max_rows: int = 8, title: Optional[str] = None) -> Path:
    """Write :func:`make_grid_image` as a PNG at ``path`` (parent folders created, atomic replace)."""
    path = Path(path)
    image = make_grid_image(columns, max_rows=max_rows, title=title)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return path

