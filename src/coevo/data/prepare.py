"""From a :class:`coevo.config.DataConfig` to ready datasets: find or build the data, split it."""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from .folder import UnpairedImageDataset, split_train_val
from .images import LAYOUT_HINT
from .root import ensure_root, synthetic_size
from .synthetic import SYNTHETIC_VERSION, make_synthetic_dataset, read_meta

log = logging.getLogger(__name__)

SPLITS = ("trainA", "trainB", "testA", "testB")


def resolve_root(cfg, run_dir: str | Path) -> str:
    """The absolute data folder for a run in ``run_dir``: ``cfg.root`` (a DataConfig) when set,
    else ``run_dir/data`` (where the built-in set is built)."""
    root = Path(cfg.root) if cfg.root else Path(run_dir) / "data"
    return str(root.resolve())


def run_data(cfg, run_dir: str | Path, resume: bool = False, saved_root: Optional[str] = None) -> Dict:
    """The data of a run in ``run_dir``: resolve ``cfg.root`` in place, build the built-in set when
    allowed, and return its :func:`~coevo.data.record.data_record`, written to ``run_dir/data.json``.

    ``cfg.root`` unset: ``saved_root`` (the run's own, on resume), else ``run_dir/data``.
    On ``resume`` other images than the run started with raise :class:`DataError`
    naming the splits that changed.
    """
    from ..core.files import atomic_write_text
    from .record import RECORD_NAME, check_same_data, data_record, short

    if not cfg.root and saved_root:
        cfg.root = saved_root
    cfg.root = resolve_root(cfg, run_dir)
    from .aligned import resolve_layout, run_aligned_data

    if resolve_layout(cfg) == "aligned":  # pix2pix: train/ val/ test/ of A|B pairs
        return run_aligned_data(cfg, run_dir, resume)
    ensure_data_root(cfg)
    record = data_record(cfg.root, cfg.skip_bad_images)
    saved = Path(run_dir) / RECORD_NAME
    if resume and saved.is_file():
        check_same_data(json.loads(saved.read_text()), record, str(run_dir))
    log.info("data: %s", short(record))
    atomic_write_text(saved, json.dumps(record, indent=2) + "\n")
    return record


def _is_builtin(root: Path) -> bool:
    return read_meta(root).get("generator") == "coevo.synthetic"


def ensure_data_root(cfg) -> Path:
    """The data folder of ``cfg`` (a DataConfig), building the built-in set there when allowed.

    A folder with all four splits is used as it is: your images are never
    replaced or written into. The built-in set (``cfg.synthetic``, scenes of
    ``cfg.synthetic_seed``) is written only into a folder that is missing,
    empty, or already holds a built-in set (its ``meta.json``). Anything else
    raises :class:`DataError` naming the folder and what it lacks.
    """
    return ensure_root(cfg, SPLITS, LAYOUT_HINT, holds="a folder with trainA, trainB, testA, testB",
                       is_builtin=_is_builtin, warn_if_stale=_warn_if_stale, build=_build)


def _build(root: Path, cfg, force: bool) -> Path:
    return make_synthetic_dataset(root, size=synthetic_size(cfg.load_size), n_train=cfg.synthetic_n_train,
                                  n_test=cfg.synthetic_n_test, seed=cfg.synthetic_seed, force=force,
                                  task=cfg.synthetic_task)


def _warn_if_stale(root: Path, cfg) -> None:
    meta = read_meta(root)
    if meta.get("generator") != "coevo.synthetic":
        return
    want = {"task": cfg.synthetic_task, "version": SYNTHETIC_VERSION, "seed": cfg.synthetic_seed,
            "size": synthetic_size(cfg.load_size),
            "n_train": cfg.synthetic_n_train, "n_test": cfg.synthetic_n_test}
    found = {"task": "snow", **meta}  # sets from before tasks existed are the snow task
    diff = {k: (found.get(k), v) for k, v in want.items() if found.get(k) != v}
    if diff:
        log.warning("the synthetic set in %s differs from the config (%s as found/asked); using it as it is. "
                    "Regenerate with `coevo data synthetic --out %s --force` to match.",
                    root, ", ".join(f"{k}={a}/{b}" for k, (a, b) in diff.items()), root)


# Fewer held-out images per domain than this make selection and fitness noisy enough to warn about.
MIN_HELD_OUT = 4
_WARNED: set = set()


@dataclass
class DataSplits:
    """The three datasets a CycleGAN job uses. Items are dicts with A, B (3xHxW in [-1, 1]) and paths.

    ``train``: augmented, the training split minus the held-out part.
    ``val``: the held-out part of the training split, deterministic (None when ``val_fraction`` is 0).
    ``test``: testA/testB, deterministic. Select models on ``val``, never on ``test``.
    """

    root: Path
    train: UnpairedImageDataset
    val: Optional[UnpairedImageDataset]
    test: UnpairedImageDataset


def train_val_indices(full: UnpairedImageDataset, val_fraction: float, seed: int) -> Dict[str, Tuple[List[int], List[int]]]:
    """``{"A": (train, val), "B": (train, val)}``: the held-out split of ``full``'s training images.

    The one rule every stage uses: :func:`split_train_val` of each side's file
    count with the same ``seed``, so any stage can recompute it from
    ``len(list_images(root / "trainA", skip_bad))`` and get the same images.
    """
    split = {"A": split_train_val(len(full.A_paths), val_fraction, seed),
             "B": split_train_val(len(full.B_paths), val_fraction, seed)}
    few = {side: len(val) for side, (_, val) in split.items() if 0 < len(val) < MIN_HELD_OUT}
    key = (len(full.A_paths), len(full.B_paths), val_fraction)
    if few and key not in _WARNED:  # once per process: every stage of a run recomputes the split
        _WARNED.add(key)
        log.warning("data.val_fraction=%g holds out only %s training image(s); model selection and the "
                    "search's fitness on so few images are noisy: raise data.val_fraction or add images "
                    "(at least %d per domain is advised)", val_fraction,
                    " and ".join(f"{n} {side}" for side, n in few.items()), MIN_HELD_OUT)
    return split


def build_datasets(cfg, seed: int = 0, channels: Tuple[int, int] = (3, 3)) -> DataSplits:
    """Datasets for a DataConfig; ``seed`` drives augmentation and the held-out split.

    Pass the job's seed (``cfg.seed`` of the whole Config) so that every stage
    holds out the same images. ``channels``: ``(A, B)``, how each domain is read (1: grayscale),
    from the teacher (:func:`coevo.data.folder.domain_channels`).
    """
    root = ensure_data_root(cfg)
    full = UnpairedImageDataset(root, "train", load_size=cfg.load_size, crop_size=cfg.crop_size, flip=cfg.flip,
                                skip_bad=cfg.skip_bad_images, seed=seed, channels=channels)
    split = train_val_indices(full, cfg.val_fraction, seed)
    (train_A, val_A), (train_B, val_B) = split["A"], split["B"]
    val = full.subset(val_A, val_B, augment=False) if val_A and val_B else None
    train = full.subset(train_A, train_B) if val is not None else full
    test = UnpairedImageDataset(root, "test", load_size=cfg.load_size, crop_size=cfg.crop_size, flip=False,
                                skip_bad=cfg.skip_bad_images, seed=seed, augment=False, channels=channels)
    return DataSplits(root=root, train=train, val=val, test=test)
