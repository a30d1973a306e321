"""The one image-size rule and the upper bounds on what a user can ask for.

Every command, config key and library entry point that takes an image side checks it with
:func:`check_image_side`; the generator's own needs (:data:`SIZE_MULTIPLE`, :data:`MIN_SIZE`)
and the bounds below live here and nowhere else, so a new command cannot drift from them.
A leaf module: it imports nothing of coevo but the errors.
"""
from __future__ import annotations

import reprlib
from typing import Any, Type

from ..errors import ConfigError

# The generator halves height and width twice and doubles them twice, so both must be
# multiples of 4; its reflection padding needs at least 2 pixels after the halvings.
SIZE_MULTIPLE = 4
MIN_SIZE = 8
# The largest image side coevo works at, anywhere (training, search, export checks, benchmarks,
# translation): one full-size generator pass at 4096 x 4096 already takes tens of GB.
MAX_IMAGE_SIDE = 4096
# Upper bounds that no real job reaches and that keep a typo from asking for memory, threads or
# hours no machine has.
MAX_THREADS = 1024
MAX_BENCH_BATCH = 1024
MAX_SYNTHETIC_IMAGES = 100_000
MAX_INT = 2 ** 63 - 1  # torch and numpy take 64-bit integers

_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 60


def image_side_ok(value: Any, minimum: int = SIZE_MULTIPLE) -> bool:
    """Whether ``value`` is a multiple of :data:`SIZE_MULTIPLE` from ``minimum`` to :data:`MAX_IMAGE_SIDE`."""
    return (not isinstance(value, bool) and isinstance(value, int) and minimum <= value <= MAX_IMAGE_SIDE
            and value % SIZE_MULTIPLE == 0)


def image_side_rule(minimum: int = SIZE_MULTIPLE) -> str:
    """The rule in words, for messages and help texts."""
    if minimum <= SIZE_MULTIPLE:
        return f"a positive multiple of {SIZE_MULTIPLE} (the generator down-samples twice) up to {MAX_IMAGE_SIDE}"
    return (f"a multiple of {SIZE_MULTIPLE} (the generator down-samples twice), at least {minimum} and at most "
            f"{MAX_IMAGE_SIDE}")


def check_image_side(value: Any, name: str, minimum: int = SIZE_MULTIPLE, error: Type[Exception] = ConfigError) -> int:
    """``value`` when it is an image side coevo can work at, else ``error`` naming ``name`` (a flag such
    as ``--size`` or a key such as ``bench.size``): the one size rule of every command.

    ``minimum``: what the caller needs beyond the generator's own :data:`SIZE_MULTIPLE` (:data:`MIN_SIZE`
    to run a generator at all, more for a discriminator or a rendered scene). ``error``: the kind of error
    the caller's users expect (a data or latency-table error where the size is not a config value)."""
    if not image_side_ok(value, minimum):
        raise error(f"{name} must be {image_side_rule(minimum)}, got {_REPR.repr(value)}")
    return value
