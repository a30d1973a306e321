"""The built-in paired task, ``pix2pix``: the "grass to snow" scenes with their exact translation.

Every image of the set is one scene of the built-in ``snow`` task (:mod:`coevo.data.synthetic`)
rendered twice and written side by side, in the reference's ``aligned`` layout: the left half is
the summer rendering (A), the right half the winter rendering of the SAME scene (B). A -> B is a
deterministic, local function of the input (recolour each class by a monotone ramp, draw a dark
outline around the objects), so the right half is the exact target of the left one, and PSNR/SSIM
to it measure a translation against the truth.

Folders: ``train/`` (``n_train`` pairs), ``val/`` (``n_val``), ``test/`` (``n_test``); every image is
``size`` pixels high and ``2 * size`` wide, named ``0000.png``... Scenes come from the snow task's
streams (train: its trainA scenes, val: its trainB scenes, test: its testA scenes, so ``test/`` is
``testA | testA_gt_B`` of a snow set with the same seed and size); files are byte-identical for a
seed. ``meta.json`` says what the set is.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Dict, List, Union

import numpy as np
from PIL import Image

from .errors import DataError
from .synthetic import (MIN_SYNTHETIC_SIZE, SYNTHETIC_VERSION, foreign_in_set, publish_set, read_meta,
                        render_scene)

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

PAIRED_TASK = "pix2pix"
# Which scene stream of the snow task each split draws from.
SPLIT_SCENES = {"train": "trainA", "val": "trainB", "test": "testA"}
PAIRED_ENTRIES = ("train", "val", "test", "meta.json")
PAIRED_DESCRIPTION = (
    "coevo synthetic paired task 'pix2pix' (aligned layout): every image holds one 'grass to snow' scene "
    "rendered in summer (left half, A: blue sky, green grass, brown/orange objects with faint stripes) and "
    "in winter (right half, B: grey sky, snow, indigo/lilac objects with bold stripes and a dark outline). "
    "B is the exact, deterministic translation of A (per-class colour ramps plus an outline), so the right "
    "half is the ground truth of AtoB (and the left half of BtoA)."
)


def default_n_val(n_test: int) -> int:
    """Pairs in ``val/`` when not given: half the test split, at least one."""
    return max(1, int(n_test) // 2)


def render_pair(seed: int, split: str, index: int, size: int = 64) -> np.ndarray:
    """Pair ``index`` of ``split`` (train, val or test): ``size x 2*size x 3`` uint8, A left, B right."""
    if split not in SPLIT_SCENES:
        raise ValueError(f"split must be one of {sorted(SPLIT_SCENES)}, got {split!r}")
    scene = render_scene(seed, SPLIT_SCENES[split], index, size, "snow")
    return np.concatenate([scene["A"], scene["B"]], axis=1)


def _params(size: int, n_train: int, n_val: int, n_test: int, seed: int) -> Dict:
    return {"task": PAIRED_TASK, "layout": "aligned", "version": SYNTHETIC_VERSION, "seed": int(seed),
            "size": int(size), "n_train": int(n_train), "n_val": int(n_val), "n_test": int(n_test)}


def is_paired_builtin(root: PathLike) -> bool:
    """True for a folder holding (the meta.json of) the built-in paired set."""
    meta = read_meta(root)
    return meta.get("generator") == "coevo.synthetic" and meta.get("task") == PAIRED_TASK


def foreign_in_paired_set(out: PathLike) -> List[Path]:
    """What a built-in paired set folder holds besides what :func:`make_paired_synthetic` writes: other
    top-level entries, and anything in ``train/``, ``val/``, ``test/`` but the rendered ``0000.png`` files."""
    return foreign_in_set(out, PAIRED_ENTRIES)


def _complete(out: Path, counts: Dict[str, int]) -> bool:
    return all((out / d).is_dir() and len(list((out / d).glob("*.png"))) == n for d, n in counts.items())


def _render_pairs(root: Path, counts: Dict[str, int], size: int, seed: int) -> None:
    width = max(4, len(str(max(counts.values()) - 1)))
    for split, n in counts.items():
        (root / split).mkdir()
        for i in range(n):
            Image.fromarray(render_pair(seed, split, i, size)).save(root / split / f"{i:0{width}d}.png", format="PNG")


def make_paired_synthetic(out: PathLike, size: int = 64, n_train: int = 200, n_test: int = 40,
                          n_val: int | None = None, seed: int = 0, force: bool = False) -> Path:
    """Write the built-in paired task to ``out`` (aligned layout) and return ``out``.

    An existing set with the same parameters is reused (nothing is written). Any other non-empty
    ``out`` raises :class:`DataError` unless ``force``, and ``force`` replaces only a set coevo wrote
    (its ``meta.json``), entry by entry; anything else in ``out`` is kept. Files appear only once the
    whole set is rendered.
    """
    from ..core.limits import MAX_SYNTHETIC_IMAGES, check_image_side

    check_image_side(int(size), "synthetic image size", MIN_SYNTHETIC_SIZE, error=DataError)
    n_val = default_n_val(n_test) if n_val is None else int(n_val)
    counts = {"train": int(n_train), "val": n_val, "test": int(n_test)}
    bad = {k: v for k, v in counts.items() if not 1 <= v <= MAX_SYNTHETIC_IMAGES}
    if bad:
        raise DataError(f"synthetic pairs per split must be >= 1 and at most {MAX_SYNTHETIC_IMAGES}, got {bad}")
    out = Path(out)
    params = _params(size, n_train, n_val, n_test, seed)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out} exists and is not a folder; choose another --out")
    if out.is_dir() and any(out.iterdir()):
        meta = read_meta(out)
        same = {k: meta.get(k) for k in params} == params and _complete(out, counts)
        ours = meta.get("generator") == "coevo.synthetic"
        if same and not force:
            log.info("paired synthetic data set already at %s; reusing it", out)
            return out
        if not force or not ours:
            found = f"a coevo synthetic set ({meta.get('task', 'snow')})" if ours else "other files"
            fix = "pass --force to replace it, or choose another --out" if ours else "choose another --out"
            raise DataError(f"{out} already holds {found}, not the paired set with {_describe(params)}; {fix}")
    meta = dict(params, generator="coevo.synthetic", description=PAIRED_DESCRIPTION, counts=counts,
                halves={"A": "left: summer rendering (the input of AtoB)",
                        "B": "right: winter rendering of the same scene (its exact translation)"},
                scenes={split: f"snow task, {stream} stream" for split, stream in SPLIT_SCENES.items()})
    publish_set(out, PAIRED_ENTRIES, meta, lambda tmp: _render_pairs(tmp, counts, size, seed))
    log.info("wrote the paired synthetic data set to %s (%s)", out, _describe(params))
    return out


def _describe(p: Dict) -> str:
    return (f"task={p.get('task')}, seed={p.get('seed')}, size={p.get('size')}, n_train={p.get('n_train')}, "
            f"n_val={p.get('n_val')}, n_test={p.get('n_test')}")
