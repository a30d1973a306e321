"""--log tensorboard: training, search and fine-tuning write their curves and sample grids as TensorBoard
events next to history.jsonl; a missing package is refused before any work. Tiny run, CPU."""
from __future__ import annotations

import importlib.util

import pytest

from coevo.cli import main
from coevo.config import ConfigError
from coevo.train.curves import Curves, check_available

from test_pipeline import TINY

pytestmark = pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None,
                                reason="tensorboard is installed by the test extra")


def _events(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc.Tags()


def test_log_tensorboard_writes_curves_of_every_stage(tmp_path):
    out = tmp_path / "run"
    argv = ["demo", "--out", str(out), "--log", "tensorboard"]
    for override in TINY + ["export.formats=[safetensors]"]:
        argv += ["--set", override]
    assert main(argv) == 0
    train = _events(out / "teacher" / "tensorboard" / "train")
    assert {"G_A", "cycle_A", "epoch/D_A"} <= set(train["scalars"]) and "samples" in train["images"]
    search = _events(out / "search" / "tensorboard" / "search")
    assert any(tag.startswith("G_A/") for tag in search["scalars"])
    finetune = _events(out / "finetune" / "tensorboard" / "finetune")
    assert "epoch/val_l1" in finetune["scalars"]
    assert (out / "teacher" / "log.jsonl").is_file() and (out / "search" / "history.jsonl").is_file()  # kept


def test_jsonl_writes_no_event_files(tmp_path):
    curves = Curves(tmp_path, "train", "jsonl")
    curves.scalars(1, {"loss": 1.0})
    curves.close()
    assert not (tmp_path / "tensorboard").exists()


def test_missing_tensorboard_is_refused_before_work(tmp_path, monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    with pytest.raises(ConfigError, match="coevo\\[tensorboard\\]"):
        check_available("tensorboard")
    assert main(["train", "--config", "configs/demo.yaml", "--out", str(tmp_path / "t"), "--log", "tensorboard"]) == 2
    assert "coevo[tensorboard]" in capsys.readouterr().err
    assert not (tmp_path / "t").exists()


def test_curves_skip_non_numbers_and_flatten_nested_records(tmp_path):
    curves = Curves(tmp_path, "search", "tensorboard")
    curves.scalars(3, {"G_A": {"fitness": 1.5, "genome": "0101"}, "nan": float("nan"), "ok": True, "x": 2})
    curves.close()
    assert set(_events(tmp_path / "tensorboard" / "search")["scalars"]) == {"G_A/fitness", "x"}
