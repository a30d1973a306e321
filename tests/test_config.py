"""Config: YAML defaults, --set overrides, errors that name the key, resolved dumps, shipped configs."""
from __future__ import annotations

from pathlib import Path

import pytest

from coevo.config import Config, ConfigError, config_to_dict, dump_config, load_config, parse_override

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_yaml_and_overrides(tmp_path):
    path = write(tmp_path / "c.yaml", "seed: 3\nmodel:\n  ngf: 16\ntrain:\n  epochs: 7\n  lr: 0.001\n")
    cfg = load_config(path, ["train.epochs=2", "search.macs_ratio=0.3", "data.flip=false"])
    assert cfg.seed == 3 and cfg.model.ngf == 16
    assert cfg.train.epochs == 2 and cfg.train.lr == pytest.approx(0.001)
    assert cfg.search.macs_ratio == pytest.approx(0.3)
    assert cfg.data.flip is False
    assert cfg.model.n_blocks == Config().model.n_blocks  # untouched keys keep their defaults


def test_no_file_gives_defaults():
    assert config_to_dict(load_config(None)) == config_to_dict(Config())


@pytest.mark.parametrize("text, overrides, key", [
    ("train:\n  epoch: 3\n", [], "train.epoch"),
    ("name: x\n", ["finetune.lambda_distil=1"], "finetune.lambda_distil"),
    ("name: x\n", ["nosuchsection.x=1"], "nosuchsection"),
])
def test_unknown_key_is_named(tmp_path, text, overrides, key):
    path = write(tmp_path / "c.yaml", text)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(path, overrides)


def test_unknown_key_suggests_the_close_one():
    with pytest.raises(ConfigError, match="did you mean 'train.epochs'"):
        load_config(None, ["train.epoch=3"])


@pytest.mark.parametrize("override, key", [
    ("train.epochs=many", "train.epochs"),
    ("train.epochs=2.5", "train.epochs"),
    ("data.flip=maybe", "data.flip"),
    ("train.lr=fast", "train.lr"),
    ("model=3", "model"),
])
def test_bad_types_are_named(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [override])


def test_override_needs_equals():
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("train.epochs")


def test_dump_and_reload_round_trip(tmp_path):
    cfg = load_config(None, ["seed=5", "train.epochs=3", "export.formats=onnx,torchscript", "data.root=/x/y"])
    path = dump_config(cfg, tmp_path / "config.yaml")
    assert config_to_dict(load_config(path)) == config_to_dict(cfg)


def test_missing_or_invalid_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="YAML"):
        load_config(write(tmp_path / "bad.yaml", "train: [unclosed\n"))


def test_shipped_configs_exist():
    names = {p.stem for p in CONFIGS}
    assert {"demo", "horse2zebra", "summer2winter_yosemite", "cityscapes"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    cfg = load_config(path)
    assert cfg.data.crop_size % 4 == 0
    assert cfg.train.epochs + cfg.train.epochs_decay >= 1


@pytest.mark.parametrize("name", ["horse2zebra", "summer2winter_yosemite"])
def test_paper_configs_use_the_paper_settings(name):
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / f"{name}.yaml")
    assert (cfg.data.load_size, cfg.data.crop_size) == (286, 256)
    assert (cfg.model.ngf, cfg.model.n_blocks, cfg.model.ndf) == (64, 9, 64)
    assert (cfg.train.epochs, cfg.train.epochs_decay, cfg.train.batch_size) == (100, 100, 1)
    assert not cfg.data.synthetic and cfg.data.root == f"datasets/{name}"


def test_threads_setting_is_validated_and_applied():
    import torch

    from coevo.config import ConfigError, load_config
    from coevo.core.runs import apply_threads

    with pytest.raises(ConfigError, match="threads"):
        load_config(None, ["threads=-1"])
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        apply_threads(1)
        assert torch.get_num_threads() == 1
        apply_threads(0)  # 0 keeps whatever is set
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_cli_threads_option_reaches_torch(capsys):
    import torch

    from coevo.cli import main

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        # `data check` on a missing folder fails cleanly, after the thread count was applied
        assert main(["--threads", "1", "data", "check", "/nonexistent/folder"]) == 2
        assert torch.get_num_threads() == 1
        assert "nonexistent" in capsys.readouterr().err
    finally:
        torch.set_num_threads(before)


# ----------------------------------------------------------------------------- validate
# (tests/test_faults.py drives one bad value per rule through the CLI)
def test_validate_names_key_value_and_range():
    with pytest.raises(ConfigError, match=r"^search\.tournament_size must be >= 1, got 0$"):
        load_config(None, ["search.tournament_size=0"])
    with pytest.raises(ConfigError, match=r"^data\.val_fraction must be in \[0, 1\), got 1\.0$"):
        load_config(None, ["data.val_fraction=1"])
    with pytest.raises(ConfigError, match=r"export\.formats must be one of .*got 'tflite'"):
        load_config(None, ["export.formats=onnx,tflite"])


def test_validate_accepts_every_registered_name(monkeypatch):
    from coevo.evaluation import perceptual
    from coevo.search.operators import CROSSOVERS, MUTATIONS, SELECTIONS

    for name in [*perceptual.available_metrics(), "auto"]:
        load_config(None, [f"search.perceptual={name}"])
    for key, registry in (("selection", SELECTIONS), ("crossover", CROSSOVERS), ("mutation", MUTATIONS)):
        for name in registry:
            load_config(None, [f"search.{key}={name}"])
    # a metric registered later is a valid name at once: the registry is read, not copied
    monkeypatch.setitem(perceptual.PERCEPTUAL_METRICS, "my_metric", lambda **kw: None)
    assert load_config(None, ["search.perceptual=my_metric"]).search.perceptual == "my_metric"


def test_device_must_exist_here(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(ConfigError, match="device=cuda but torch sees no CUDA device"):
        load_config(None, ["device=cuda"])
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ConfigError, match=r"device=cuda:7 but this machine has 2 CUDA device\(s\) "
                                          r"\(cuda:0 to cuda:1\)"):
        load_config(None, ["device=cuda:7"])
    assert load_config(None, ["device=cuda:1"]).device == "cuda:1"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="device=mps but torch has no MPS"):
        load_config(None, ["device=mps"])
    with pytest.raises(ConfigError, match="device must be cpu, cuda, cuda:N or mps, got 'tpu'"):
        load_config(None, ["device=tpu"])


def test_search_checks_are_the_config_checks():
    from coevo.config import SearchConfig
    from coevo.search import check_search_config

    with pytest.raises(ConfigError, match=r"search\.flip_bits must be > 0, got -5"):
        check_search_config(SearchConfig(flip_bits=-5))
    check_search_config(SearchConfig())


def test_config_path_is_a_folder_or_not_text(tmp_path):
    with pytest.raises(ConfigError, match="is a folder"):
        load_config(tmp_path)
    binary = tmp_path / "c.yaml"
    binary.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ConfigError, match="not a text"):
        load_config(binary)


def test_diff_configs_counts_a_key_one_side_lacks_as_its_default():
    """A record written before coevo had a key (a search checkpoint's settings, inputs.json) ran as the key's
    default: no change unless the other side sets something else."""
    from coevo.config import Config, config_to_dict, diff_configs

    old = config_to_dict(Config())
    del old["search"]["width_floor"]
    assert diff_configs(old, Config()) == []
    assert diff_configs({"search": dict(old["search"])}, {"search": config_to_dict(Config())["search"]}) == []
    new = Config()
    new.search.width_floor = "uniform"
    assert diff_configs(old, new) == ["search.width_floor ('none' -> 'uniform')"]
