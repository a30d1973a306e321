"""The data folder of a run, for either layout: used as it is when it holds the layout's splits, the
built-in set built there when allowed, never written into when it holds anything else."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

from ..core.limits import SIZE_MULTIPLE
from .errors import DataError
from .synthetic import MIN_SYNTHETIC_SIZE


def synthetic_size(load_size: int) -> int:
    """The side the built-in set (either layout) is rendered at for ``data.load_size``."""
    return max(MIN_SYNTHETIC_SIZE, int(load_size) - int(load_size) % SIZE_MULTIPLE)


def ensure_root(cfg, splits: Sequence[str], hint: str, *, holds: str, is_builtin: Callable[[Path], bool],
                warn_if_stale: Callable[[Path, object], None], build: Callable[[Path, object, bool], Path],
                builtin_name: str = "built-in set", note: Callable[[Path], str] = lambda root: "") -> Path:
    """The data folder of ``cfg`` (a DataConfig) in a layout whose folders are ``splits``.

    A folder with all ``splits`` is used as it is (``warn_if_stale(root, cfg)`` when it is the
    layout's built-in set, ``is_builtin(root)``). The built-in set is written, by
    ``build(root, cfg, force)`` (``force``: over a built-in set), only when ``cfg.synthetic`` and
    only into a folder that is missing, empty or holds a built-in set. Anything else raises
    :class:`DataError` naming the folder and what it lacks. ``hint`` (the layout) closes every
    refusal, ``holds`` says what ``--data`` should hold, ``builtin_name`` names the built-in set and
    ``note(root)`` adds words about an occupied folder (e.g. that it has the other layout).
    """
    if not cfg.root:
        raise DataError(f"data.root is not set: give --data DIR ({holds}), or run through a command with an "
                        "--out folder, which builds the built-in set there")
    root = Path(cfg.root)
    if root.exists() and not root.is_dir():
        raise DataError(f"data folder {root} is a file, not a folder; {hint}")
    missing = [s for s in splits if not (root / s).is_dir()]
    builtin = is_builtin(root)
    if not missing:
        if builtin:
            warn_if_stale(root, cfg)
        return root
    occupied = root.is_dir() and any(root.iterdir())
    if occupied and not builtin:
        found = ", ".join(sorted(p.name for p in root.iterdir())[:6])
        raise DataError(f"data folder {root} lacks {', '.join(missing)} (it holds {found}){note(root)}; {hint}. "
                        "coevo never writes into a folder of yours: fix the layout, or give another --data")
    if cfg.synthetic:
        return build(root, cfg, builtin)
    raise DataError(f"data folder {root} lacks {', '.join(missing)}; {hint}; "
                    f"or pass --set data.synthetic=true to build the {builtin_name} there")
