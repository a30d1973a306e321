"""The built-in data set: "grass to snow", a small horse->zebra-like task with exact ground truth.

Every image renders a random scene: a sky above a wavy horizon, a textured field
below it, and 1-3 animal-like objects (ellipses, rounded rectangles, blobs)
standing on the field, each with lighting, coat stripes and a soft shadow.

Each pixel of a scene has a class (sky, field, object) and one brightness value
``L`` in [0, 1] that holds all of its texture and shading. The two domains draw
the SAME scene differently:

* A (summer): blue sky, green grass, objects in browns and oranges with faint stripes.
* B (winter): grey-violet sky, bluish-white snow, objects in indigo-to-lilac with
  strong stripes, and a dark outline around the objects (drawn over the
  background, its brightness still following the background's ``L``).

So A->B is a deterministic, local function of the input image: recolour each
class by a monotone colour ramp, then draw the outline a few pixels around every
object. B->A is well-posed too: recolour back and replace the outline by the
background whose brightness it carries. ``testA_gt_B`` holds the true B rendering
of every ``testA`` image (same file name) and ``testB_gt_A`` the true A rendering
of every ``testB`` image, so translations can be scored with PSNR/L1 against truth.

A second, harder task, ``task="dense"``, renders the same two domains with more
structure and texture to keep: 3-7 smaller objects with fine coat stripes (about
twice the frequency), a finer and stronger field texture, and a one-pixel outline
at 64 px. Its ground truth is exact in the same way.

trainA, trainB, testA and testB come from four independent scene streams: the
training sets are unpaired. Every image is seeded from ``(seed, split, index)``
with its own ``numpy.random.default_rng``, so files are byte-identical between runs.
"""
from __future__ import annotations

import glob
import json
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Callable, Dict, List, Tuple, Union

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..core.files import PARTIAL_SUFFIX, remove_owned
from ..core.registry import Registry
from .errors import DataError

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

SYNTHETIC_VERSION = 1
# Scene stream of each split; a test split's ground truth re-renders the same scenes.
SPLIT_STREAMS = {"trainA": 0, "trainB": 1, "testA": 2, "testB": 3}
GT_FOLDERS = {"testA": "testA_gt_B", "testB": "testB_gt_A"}
_ENTRIES = ("trainA", "trainB", "testA", "testB", "testA_gt_B", "testB_gt_A", "meta.json")
_RENDERED = re.compile(r"[0-9]+\.png")  # the image names the set renders
_TAG = 0xC0E0  # keeps these streams apart from any other user of the same seed
MIN_SYNTHETIC_SIZE = 16  # the smallest side the scenes are rendered at

SKY, FIELD, OBJECT = 0, 1, 2

# The built-in tasks: scene parameters that set how much structure and texture a generator must keep.
# A task's random streams depend on its place in sorted(TASKS) (render_scene): a new task shifts the
# streams of the tasks after it, so give it a name that sorts last or accept new images for those.
TASKS: Registry[Dict] = Registry("built-in task", error=DataError)
TASKS.register("snow", {"objects": (1, 4), "size": (0.10, 0.22), "stripes": (4.0, 6.0), "blades": (10, 28, 0.16),
                        "outline": 32})
TASKS.register("dense", {"objects": (3, 8), "size": (0.06, 0.13), "stripes": (9.0, 14.0), "blades": (18, 56, 0.24),
                         "outline": 64})

# Colour ramps: (L stop, RGB) pairs, every channel non-decreasing in L, so each
# rendering is invertible per class and the two domains' classes never share colours.
RAMPS_A = {
    SKY: [(0.0, (95, 145, 205)), (1.0, (185, 215, 245))],
    FIELD: [(0.0, (30, 70, 20)), (0.5, (75, 130, 40)), (1.0, (150, 190, 80))],
    OBJECT: [(0.0, (55, 30, 15)), (0.5, (150, 85, 35)), (1.0, (235, 165, 85))],
}
RAMPS_B = {
    SKY: [(0.0, (105, 105, 125)), (1.0, (170, 170, 185))],
    FIELD: [(0.0, (175, 190, 215)), (1.0, (250, 252, 255))],
    # Steep in the middle: the faint stripes of A become bold in B.
    OBJECT: [(0.0, (30, 20, 70)), (0.4, (60, 45, 110)), (0.6, (190, 165, 230)), (1.0, (225, 195, 248))],
}
OUTLINE_B = [(0.0, (5, 5, 10)), (1.0, (50, 45, 45))]

DESCRIPTION = (
    "coevo synthetic 'grass to snow' task. Domain A: blue sky, green grass, brown/orange animal-like "
    "objects with faint stripes. Domain B: the same kind of scene in winter: grey sky, snow, "
    "indigo/lilac objects with bold stripes and a dark outline. testA_gt_B / testB_gt_A hold the true "
    "translation of every test image under the same file name. trainA and trainB are unpaired."
)


# ----------------------------------------------------------------------------- noise
def _lattice(rng: np.random.Generator, cells: int = 16) -> np.ndarray:
    return rng.uniform(-1.0, 1.0, size=(cells, cells))


def _value_noise(grid: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Smooth value noise in [-1, 1] at lattice coordinates (y, x); the lattice tiles."""
    n_y, n_x = grid.shape
    y0, x0 = np.floor(y), np.floor(x)
    fy, fx = y - y0, x - x0
    fy, fx = fy * fy * (3 - 2 * fy), fx * fx * (3 - 2 * fx)
    iy, ix = y0.astype(np.int64) % n_y, x0.astype(np.int64) % n_x
    iy1, ix1 = (iy + 1) % n_y, (ix + 1) % n_x
    top = grid[iy, ix] * (1 - fx) + grid[iy, ix1] * fx
    bottom = grid[iy1, ix] * (1 - fx) + grid[iy1, ix1] * fx
    return top * (1 - fy) + bottom * fy


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation by a disc of ``radius`` pixels."""
    h, w = mask.shape
    padded = np.pad(mask, radius)
    out = np.zeros_like(mask)
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            if dy * dy + dx * dx <= radius * radius + radius:  # a rounder disc than dy^2+dx^2 <= r^2
                out |= padded[radius + dy:radius + dy + h, radius + dx:radius + dx + w]
    return out


def _ramp(L: np.ndarray, stops) -> np.ndarray:
    pos = [s for s, _ in stops]
    return np.stack([np.interp(L, pos, [c[k] for _, c in stops]) for k in range(3)], axis=-1)


# ----------------------------------------------------------------------------- scenes
def _object(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray,
            h0: float, task: Dict = TASKS["snow"]) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mask, brightness L, shadow strength on the field) of one animal-like object standing below ``h0``."""
    kind = int(rng.integers(0, 3))
    a = rng.uniform(*task["size"])
    b = a * rng.uniform(0.5, 0.85)
    angle = rng.uniform(-0.4, 0.4)
    cx = rng.uniform(0.12, 0.88)
    cy = rng.uniform(h0 + 0.12, 0.88)
    phases = rng.uniform(0, 2 * np.pi, size=2)
    base = rng.uniform(0.4, 0.6)
    stripe_freq = rng.uniform(*task["stripes"])
    stripe_grid = _lattice(rng)
    offset = rng.uniform(0, 16, size=2)

    dx, dy = xx - cx, yy - cy
    u = (dx * np.cos(angle) + dy * np.sin(angle)) / a
    v = (-dx * np.sin(angle) + dy * np.cos(angle)) / b
    if kind == 0:       # ellipse
        r = np.sqrt(u * u + v * v)
    elif kind == 1:     # rounded rectangle (superellipse)
        r = (u ** 4 + v ** 4) ** 0.25
    else:               # blob: a wobbly ellipse
        theta = np.arctan2(v, u)
        r = np.sqrt(u * u + v * v) / (1 + 0.18 * np.sin(2 * theta + phases[0])
                                      + 0.12 * np.sin(3 * theta + phases[1]))
    # Sphere-like lighting from the upper left, in image coordinates.
    z = np.sqrt(np.clip(1 - r * r, 0, 1))
    light = 0.6 * z - 0.4 * (0.55 * dx + 0.65 * dy) / max(a, b)
    # Coat stripes: noise stretched along the body's short axis, so bands run across the body.
    stripes = _value_noise(stripe_grid, v * 0.8 + offset[0], u * stripe_freq + offset[1])
    sdx, sdy = dx / (a * 1.1), (yy - (cy + 0.9 * b)) / (0.35 * b)
    shadow = np.exp(-2 * (sdx * sdx + sdy * sdy))
    return r < 1, base + 0.2 * (light - 0.3) + 0.3 * stripes, shadow


def _scene(rng: np.random.Generator, size: int,
           task: Dict = TASKS["snow"]) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(class map HxW, brightness L HxW in [0, 1], outline mask HxW) of one random scene."""
    c = (np.arange(size) + 0.5) / size
    yy, xx = np.meshgrid(c, c, indexing="ij")

    horizon_grid = _lattice(rng)
    h0 = rng.uniform(0.22, 0.42)
    horizon = h0 + 0.06 * _value_noise(horizon_grid, np.zeros_like(xx), xx * 3 + rng.uniform(0, 16))
    sky = yy < horizon

    cloud_grid, coarse_grid, blade_grid = _lattice(rng), _lattice(rng), _lattice(rng)
    L_sky = 0.3 + 0.45 * np.clip(yy / horizon, 0, 1) + 0.25 * _value_noise(cloud_grid, yy * 6, xx * 3)
    depth = np.clip((yy - horizon) / (1 - horizon), 0, 1)
    by, bx, strength = task["blades"]
    L_field = (0.55 - 0.2 * depth + 0.18 * _value_noise(coarse_grid, yy * 4, xx * 4)
               + strength * _value_noise(blade_grid, yy * by, xx * bx))

    obj = np.zeros((size, size), dtype=bool)
    L_obj = np.zeros((size, size))
    shadow = np.zeros((size, size))
    for _ in range(int(rng.integers(*task["objects"]))):
        inside, L_here, shadow_here = _object(rng, yy, xx, h0, task)
        L_obj = np.where(inside, L_here, L_obj)  # later objects stand in front
        obj |= inside
        shadow = np.maximum(shadow, shadow_here)

    L_field = L_field - 0.25 * shadow
    cls = np.where(obj, OBJECT, np.where(sky, SKY, FIELD)).astype(np.int8)
    L = np.where(obj, L_obj, np.where(sky, L_sky, L_field))
    outline = _dilate(obj, max(1, round(size / task["outline"]))) & ~obj
    return cls, np.clip(L, 0.0, 1.0), outline


def _render(cls: np.ndarray, L: np.ndarray, outline: np.ndarray, domain: str) -> np.ndarray:
    ramps = RAMPS_A if domain == "A" else RAMPS_B
    rgb = np.zeros(cls.shape + (3,))
    for k, stops in ramps.items():
        rgb = np.where((cls == k)[..., None], _ramp(L, stops), rgb)
    if domain == "B":
        rgb = np.where(outline[..., None], _ramp(L, OUTLINE_B), rgb)
    return np.clip(np.floor(rgb + 0.5), 0, 255).astype(np.uint8)


def render_scene(seed: int, split: str, index: int, size: int = 64, task: str = "snow") -> Dict[str, np.ndarray]:
    """Both renderings of scene ``index`` of ``split``: ``{"A": HxWx3 uint8, "B": HxWx3 uint8}``."""
    if split not in SPLIT_STREAMS:
        raise ValueError(f"split must be one of {sorted(SPLIT_STREAMS)}, got {split!r}")
    spec = TASKS.lookup(task)
    stream = [_TAG, SYNTHETIC_VERSION, int(seed), SPLIT_STREAMS[split], int(index)]
    if task != "snow":  # the first task's streams stay as they were: its files are unchanged
        stream.append(sorted(TASKS).index(task) + 1)
    cls, L, outline = _scene(np.random.default_rng(stream), size, spec)
    return {"A": _render(cls, L, outline, "A"), "B": _render(cls, L, outline, "B")}


# ----------------------------------------------------------------------------- data set folders
def _params(size: int, n_train: int, n_test: int, seed: int, task: str = "snow") -> Dict[str, int]:
    params = {"version": SYNTHETIC_VERSION, "seed": int(seed), "size": int(size),
              "n_train": int(n_train), "n_test": int(n_test)}
    if task != "snow":  # sets of the first task carry no task key (as before tasks existed)
        params["task"] = task
    return params


def read_meta(out: PathLike) -> Dict:
    """The ``meta.json`` of a built-in set folder (this one's or the paired one's); ``{}`` when it is
    missing, unreadable, or not a JSON object."""
    try:
        meta = json.loads((Path(out) / "meta.json").read_text())
        return meta if isinstance(meta, dict) else {}
    except (OSError, ValueError):
        return {}


def _is_complete(out: Path, n_train: int, n_test: int) -> bool:
    want = {"trainA": n_train, "trainB": n_train, "testA": n_test, "testB": n_test,
            "testA_gt_B": n_test, "testB_gt_A": n_test}
    return all((out / d).is_dir() and len(list((out / d).glob("*.png"))) == n for d, n in want.items())


def rendered_name(name: str) -> bool:
    """A file name the built-in data set renders (``0000.png``)."""
    return bool(_RENDERED.fullmatch(name))


def foreign_in_set(out: PathLike, entries: Tuple[str, ...] = _ENTRIES) -> List[Path]:
    """What a synthetic set folder holds besides what :func:`make_synthetic_dataset` writes: top-level
    entries other than ``entries`` (the set's folders and ``meta.json``; the paired set passes its
    own), and anything in its image folders but the rendered ``0000.png`` files."""
    found = []
    for entry in sorted(Path(out).iterdir()):
        if entry.name not in entries or entry.is_symlink():
            found.append(entry)
        elif entry.is_dir():
            found += [p for p in sorted(entry.iterdir())
                      if p.is_symlink() or not p.is_file() or not rendered_name(p.name)]
        elif entry.name != "meta.json":
            found.append(entry)
    return found


def _write(arr: np.ndarray, path: Path) -> None:
    Image.fromarray(arr).save(path, format="PNG")


def make_synthetic_dataset(out: PathLike, size: int = 64, n_train: int = 200, n_test: int = 40,
                           seed: int = 0, force: bool = False, task: str = "snow") -> Path:
    """Write the synthetic task to ``out`` and return ``out``.

    ``out/trainA``, ``trainB``, ``testA``, ``testB`` hold ``0000.png`` ... (size x size
    RGB), ``out/testA_gt_B`` and ``out/testB_gt_A`` the true translations of the test
    images under the same names, ``out/meta.json`` the parameters.

    An existing set with the same parameters is reused (nothing is written). Any
    other non-empty ``out`` raises :class:`DataError` unless ``force``; ``force``
    replaces only the entries this function writes, and only in a set coevo wrote
    (its ``meta.json``); anything else in ``out`` is kept.
    Files appear only once the whole set is rendered.
    """
    from ..core.limits import MAX_SYNTHETIC_IMAGES, check_image_side

    check_image_side(int(size), "synthetic image size", MIN_SYNTHETIC_SIZE, error=DataError)
    if not (1 <= int(n_train) <= MAX_SYNTHETIC_IMAGES and 1 <= int(n_test) <= MAX_SYNTHETIC_IMAGES):
        raise DataError(f"synthetic n_train and n_test must be >= 1 and at most {MAX_SYNTHETIC_IMAGES}, got "
                        f"{n_train} and {n_test}")
    out = Path(out)
    TASKS.lookup(task)  # an unknown name fails before anything is written
    params = _params(size, n_train, n_test, seed, task)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out} exists and is not a folder; choose another --out")
    if out.is_dir() and any(out.iterdir()):
        meta = read_meta(out)
        same = {k: meta.get(k) for k in params} == params and _is_complete(out, n_train, n_test)
        if not force:
            if same:
                log.info("synthetic data set already at %s (%s); reusing it", out, _describe(params))
                return out
            found = _describe(meta) if meta.get("generator") == "coevo.synthetic" else "other files"
            raise DataError(
                f"{out} already holds {found}, not a synthetic set with {_describe(params)}; "
                "pass --force to replace it, or choose another --out"
            )
        replaced = sorted(p.name for p in out.iterdir() if p.name in _ENTRIES)
        if replaced and meta.get("generator") != "coevo.synthetic":
            # force replaces entries by name; only a set coevo wrote (its meta.json says so) may lose them.
            raise DataError(
                f"will not replace {', '.join(replaced)} in {out}: the folder is not a coevo synthetic data set "
                "(no meta.json written by coevo), so these may be your images. Choose another --out, "
                "or move them away yourself"
            )
        # a meta.json alone does not make the images beside it coevo's: they must be the rendered ones
        theirs = [p for p in foreign_in_set(out) if p.parent != out]
        if theirs:
            shown = ", ".join(str(p.relative_to(out)) for p in theirs[:5])
            more = f" and {len(theirs) - 5} more" if len(theirs) > 5 else ""
            raise DataError(
                f"will not replace the image folders of {out}: they hold files coevo did not render "
                f"({shown}{more}). Choose another --out, or move those files away yourself"
            )
        stray = sorted(p.name for p in out.iterdir() if p.name not in _ENTRIES)
        if stray:
            log.warning("replacing the synthetic set in %s; keeping the other entries there: %s",
                        out, ", ".join(stray[:5]))

    _remove_stale_partials(out)
    meta = dict(params, generator="coevo.synthetic", description=DESCRIPTION,
                counts={"trainA": n_train, "trainB": n_train, "testA": n_test, "testB": n_test,
                        "testA_gt_B": n_test, "testB_gt_A": n_test},
                domains={"A": "summer: blue sky, green grass, brown/orange objects, faint stripes",
                         "B": "winter: grey sky, snow, indigo/lilac objects, bold stripes, dark outline"},
                ground_truth={"testA_gt_B": "B rendering of each testA scene",
                              "testB_gt_A": "A rendering of each testB scene"})
    publish_set(out, _ENTRIES, meta, lambda tmp: _render_all(tmp, size, n_train, n_test, seed, task))
    log.info("wrote synthetic data set to %s (%s)", out, _describe(params))
    return out


def publish_set(out: Path, entries: Tuple[str, ...], meta: Dict, render: Callable[[Path], None]) -> None:
    """Write a built-in set (this one or the paired one) to ``out``: ``render(tmp)`` fills a temporary
    folder beside ``out`` with the set's folders, ``meta`` goes to its ``meta.json``, then each of
    ``entries`` (``meta.json`` last) replaces its namesake in ``out``. Only a set coevo wrote may be
    replaced (the caller checks); the temporary folder is removed whatever happens."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=PARTIAL_SUFFIX, dir=out.parent))
    try:
        render(tmp)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        out.mkdir(parents=True, exist_ok=True)
        for name in entries:  # meta.json last: a set without it is never taken as complete
            target = out / name
            if target.exists():  # only in a built-in set coevo wrote (checked by the caller)
                remove_owned(target, out)
            os.replace(tmp / name, target)
    finally:
        if tmp.exists():
            remove_owned(tmp)


# A render left for longer than this was killed (one at 256 px with thousands of images takes minutes).
STALE_PARTIAL_S = 3600.0


def _remove_stale_partials(out: Path) -> None:
    """Delete the temporary folders (``.<name>.<random>.partial``) of earlier renders of ``out`` that
    were killed; one younger than :data:`STALE_PARTIAL_S` may be another process's render and is kept."""
    import time

    for path in out.parent.glob(f".{glob.escape(out.name)}.*{PARTIAL_SUFFIX}"):
        if path.is_dir() and not path.is_symlink() and time.time() - path.stat().st_mtime > STALE_PARTIAL_S:
            log.info("removing %s, left by an interrupted render of %s", path, out)
            remove_owned(path)


def _render_all(root: Path, size: int, n_train: int, n_test: int, seed: int, task: str = "snow") -> None:
    counts = {"trainA": n_train, "trainB": n_train, "testA": n_test, "testB": n_test}
    width = max(4, len(str(max(n_train, n_test) - 1)))
    for d in _ENTRIES[:-1]:
        (root / d).mkdir()
    with tqdm(total=sum(counts.values()), desc="synthetic data", unit="img", disable=None, leave=False) as bar:
        for split, n in counts.items():
            domain = split[-1]
            other = "B" if domain == "A" else "A"
            for i in range(n):
                pair = render_scene(seed, split, i, size, task)
                name = f"{i:0{width}d}.png"
                _write(pair[domain], root / split / name)
                if split in GT_FOLDERS:
                    _write(pair[other], root / GT_FOLDERS[split] / name)
                bar.update(1)


def _describe(p: Dict) -> str:
    return (f"task={p.get('task', 'snow')}, version={p.get('version')}, seed={p.get('seed')}, "
            f"size={p.get('size')}, n_train={p.get('n_train')}, n_test={p.get('n_test')}")
