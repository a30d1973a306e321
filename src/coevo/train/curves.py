"""Curves of long runs for TensorBoard (``log: tensorboard``, ``--log tensorboard``).

Every run keeps its plain record (``log.jsonl`` or ``history.jsonl``, sample PNGs) whatever ``log`` says;
with ``tensorboard`` the same scalars and sample grids also go to ``RUN/tensorboard/``
as event files, so ``tensorboard --logdir runs/`` shows training, fine-tuning and search
side by side, as the GAN projects users come from do. TensorBoard is an optional
dependency (``pip install 'coevo[tensorboard]'``); :func:`check_available` refuses the
setting before any work when it is missing.
"""
from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any, Mapping, Optional
from ..errors import ConfigError

log = logging.getLogger(__name__)

LOGGERS = ("jsonl", "tensorboard")
FOLDER = "tensorboard"


def check_available(kind: str) -> None:
    """ConfigError unless ``kind`` is a known logger whose package is installed."""
    if kind not in LOGGERS:
        raise ConfigError(f"log must be one of {', '.join(LOGGERS)}, got {kind!r}")
    if kind == "tensorboard" and importlib.util.find_spec("tensorboard") is None:
        raise ConfigError("log=tensorboard needs the tensorboard package: pip install 'coevo[tensorboard]' "
                          "(or drop --log tensorboard; the jsonl logs and sample PNGs are written either way)")


def _scalars(record: Mapping[str, Any], prefix: str = ""):
    """(tag, value) for every finite number in ``record``, nested dicts as ``outer/inner``."""
    for key, value in record.items():
        tag = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from _scalars(value, f"{tag}/")
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and value == value \
                and abs(value) != float("inf"):
            yield tag, float(value)


class Curves:
    """Scalars and images of one run stage, written to ``run_dir/tensorboard/<stage>`` when enabled.

    Disabled (``kind="jsonl"``, or any rank but 0 under torchrun) it does nothing, so callers
    never branch on it.
    """

    def __init__(self, run_dir: Path, stage: str, kind: str = "jsonl", enabled: bool = True) -> None:
        self.writer: Optional[Any] = None
        if kind == "tensorboard" and enabled:
            check_available(kind)
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(Path(run_dir) / FOLDER / stage))
            log.info("TensorBoard curves: tensorboard --logdir %s", Path(run_dir) / FOLDER)

    def scalars(self, step: int, record: Mapping[str, Any], skip=("epoch", "step", "generation")) -> None:
        if self.writer is None:
            return
        for tag, value in _scalars({k: v for k, v in record.items() if k not in skip}):
            self.writer.add_scalar(tag, value, int(step))
        self.writer.flush()

    def image(self, tag: str, png: Path, step: int) -> None:
        """Add the PNG at ``png`` (an image grid coevo wrote) as ``tag`` at ``step``."""
        if self.writer is None or not Path(png).is_file():
            return
        import numpy as np
        from PIL import Image

        with Image.open(png) as im:
            array = np.asarray(im.convert("RGB"))
        self.writer.add_image(tag, array, int(step), dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
