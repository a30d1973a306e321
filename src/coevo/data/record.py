"""What data a run used: folder, image counts per split and a content fingerprint.

Every stage records this (``stage.json`` of a pipeline run, ``data.json`` of a
standalone train/search/fine-tune run) and a resumed run compares it with the
data it finds, so that ``--resume`` never continues on other images than the
run started with. Moving the folder is fine; changing, adding or removing an
image is not.

The fingerprint of a split is a SHA-256 over the sorted image file names and
their bytes (hashing reads every file once: about a second per 500 MB).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Dict, Mapping, Optional

from .errors import DataError
from .images import list_images

SPLITS = ("trainA", "trainB", "testA", "testB")
RECORD_NAME = "data.json"
_CHUNK = 1 << 20


def _split_fingerprint(paths) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.name.encode() + b"\0")
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(_CHUNK), b""):
                h.update(chunk)
        h.update(b"\0")
    return h.hexdigest()


def data_record(root: str | Path, skip_bad: bool = False) -> Dict:
    """``{"root", "builtin", "counts": {split: n}, "fingerprint": {split: sha256}, "fingerprint_all"}``.

    ``builtin`` is True for coevo's built-in set (its ``meta.json``). Raises
    :class:`DataError` naming the split when one is missing or holds no image.
    """
    root = Path(root).resolve()
    counts, prints = {}, {}
    for split in SPLITS:
        paths = list_images(root / split, skip_bad=skip_bad)
        counts[split] = len(paths)
        prints[split] = _split_fingerprint(paths)
    every = hashlib.sha256("".join(prints[s] for s in SPLITS).encode()).hexdigest()
    meta = root / "meta.json"
    builtin = False
    if meta.is_file():
        try:
            builtin = json.loads(meta.read_text()).get("generator") == "coevo.synthetic"
        except (OSError, ValueError):
            builtin = False
    return {"root": str(root), "builtin": builtin, "counts": counts, "fingerprint": prints,
            "fingerprint_all": every}


def data_changes(saved: Mapping, current: Mapping) -> list:
    """Human-readable differences between two :func:`data_record` results (empty: the same data)."""
    out = []
    for split in SPLITS:
        a, b = saved.get("counts", {}).get(split), current.get("counts", {}).get(split)
        if a != b:
            out.append(f"{split}: {a} -> {b} images")
        elif saved.get("fingerprint", {}).get(split) != current.get("fingerprint", {}).get(split):
            out.append(f"{split}: same count ({b}), different content")
    return out


def check_same_data(saved: Optional[Mapping], current: Mapping, what: str) -> None:
    """Raise :class:`DataError` when ``current`` is not the data ``saved`` records (``what``: the run)."""
    if not saved:
        return
    changes = data_changes(saved, current)
    if changes:
        raise DataError(
            f"cannot resume {what}: it started on the data in {saved.get('root')} and the data in "
            f"{current.get('root')} differs ({'; '.join(changes)}). Resume with the original images "
            "(--data DIR / data.root), or start a new run"
        )


def short(record: Mapping) -> str:
    """One line for logs and reports: folder, counts, first 12 hex digits of the fingerprint."""
    c = record["counts"]
    kind = "built-in set" if record.get("builtin") else "your images"
    return (f"{record['root']} ({kind}; trainA {c['trainA']}, trainB {c['trainB']}, testA {c['testA']}, "
            f"testB {c['testB']}; fingerprint {record['fingerprint_all'][:12]})")
