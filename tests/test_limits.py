"""The one image-size rule: every size a user gives is checked by core.limits.check_image_side, with the
minimum its caller needs, and no module spells the rule out again."""
import re
from pathlib import Path

import pytest

from coevo.core.limits import MAX_IMAGE_SIDE, MIN_SIZE, check_image_side
from coevo.errors import ConfigError

SRC = Path(__file__).resolve().parents[1] / "src" / "coevo"


@pytest.mark.parametrize("value, minimum, ok", [
    (4, 4, True), (8, MIN_SIZE, True), (4, MIN_SIZE, False), (30, 4, False), (0, 4, False),
    (MAX_IMAGE_SIDE, 4, True), (MAX_IMAGE_SIDE + 4, 4, False), (True, 4, False), (8.0, 4, False),
])
def test_check_image_side(value, minimum, ok):
    if ok:
        assert check_image_side(value, "--size", minimum) == value
    else:
        with pytest.raises(ConfigError, match="--size must be"):
            check_image_side(value, "--size", minimum)


def test_the_error_kind_is_the_callers():
    from coevo.data.errors import DataError

    with pytest.raises(DataError, match=r"image size must be a multiple of 4 .*at least 16"):
        check_image_side(12, "image size", 16, error=DataError)


def test_no_module_spells_the_size_rule_out_again():
    stray = [f"{p.relative_to(SRC)}:{i}" for p in SRC.rglob("*.py") if p.name != "limits.py"
             for i, line in enumerate(p.read_text().splitlines(), 1) if re.search(r"%\s*4\b", line.split("#")[0])]
    assert not stray, f"size rule spelled out again (use coevo.core.limits): {stray}"
