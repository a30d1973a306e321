"""The one registry shape: names in registration order, a did-you-mean error, and every table that a
config value picks from is one (so config reads the names instead of copying them)."""
import pytest

from coevo.config import ConfigError, load_config
from coevo.core.registry import Registry
from coevo.data.errors import DataError


def test_register_lookup_and_names():
    reg = Registry("colour")
    reg.register("red", 1)

    @reg.register("green")
    def green():
        return 2

    assert reg.names() == ("red", "green")
    assert reg.lookup("green") is green and reg["red"] == 1 and "red" in reg and sorted(reg) == ["green", "red"]
    with pytest.raises(ConfigError, match=r"unknown colour 'gren'; did you mean 'green'\? choose one of"):
        reg.lookup("gren")
    with pytest.raises(ConfigError, match=r"unknown colour 'blue'; choose one of \['red', 'green'\]"):
        reg.lookup("blue")
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("red", 3)


def test_error_class_is_the_registrys():
    with pytest.raises(DataError, match="unknown built-in task 'snw'; did you mean 'snow'"):
        from coevo.data.synthetic import TASKS

        TASKS.lookup("snw")


def test_every_choice_table_is_a_registry():
    from coevo.data.synthetic import TASKS
    from coevo.deploy.backends import REGISTRY
    from coevo.deploy.export import WRITERS
    from coevo.deploy.targets import DEPLOYERS
    from coevo.evaluation.perceptual import PERCEPTUAL_METRICS
    from coevo.search.operators import CROSSOVERS, MUTATIONS, SELECTIONS

    for reg in (TASKS, REGISTRY, WRITERS, DEPLOYERS, PERCEPTUAL_METRICS, SELECTIONS, CROSSOVERS, MUTATIONS):
        assert isinstance(reg, Registry) and len(reg) >= 2


def test_config_reads_a_name_registered_later(monkeypatch):
    from coevo.search import operators

    monkeypatch.setitem(operators.MUTATIONS, "no_op", operators.SegmentFlip)
    assert load_config(None, ["search.mutation=no_op"]).search.mutation == "no_op"
    with pytest.raises(ConfigError, match="did you mean 'bit_flip'"):
        load_config(None, ["search.mutation=bitflip"])
