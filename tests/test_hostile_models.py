"""No model file from outside runs code: hostile .pt2, TorchScript and ONNX files, one per trick and per
loading path. Untrusted .pt2/TorchScript files are rebuilt from their tensors (torch's loaders never see
them); with trust, the archive check refuses every trick before torch does. Tiny models, CPU."""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from coevo import load_generator, save_generator
from coevo.cli import main
from coevo.errors import CoevoError
from coevo.deploy.export import save_torch_export, save_torchscript
from coevo.models import ResnetGenerator
from coevo.deploy.exported import UnsafeExportError

from test_safety import Hostile, one_error_line, snapshot, write_image


@pytest.fixture
def no_program_loading(monkeypatch):
    """Fail the test if anything hands a file to torch's program loaders (which can run code)."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"a program loader was called on {args[:1]}")

    monkeypatch.setattr(torch.jit, "load", refuse)
    monkeypatch.setattr(torch.export, "load", refuse)


@pytest.fixture
def pt2(tiny_generator, tmp_path) -> Path:
    path = tmp_path / "clean" / "G.pt2"
    path.parent.mkdir()
    save_torch_export(tiny_generator, path)
    return path


def rewrite(src: Path, dst: Path, edit=None, add=()) -> Path:
    """Copy the zip ``src`` to ``dst``: members renamed/replaced by ``edit(name, data) -> (name, data) | None``
    (None drops it), then the ``(name, data)`` pairs of ``add`` appended (duplicates allowed)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            item = (info.filename, zin.read(info.filename))
            item = edit(*item) if edit else item
            if item is not None:
                zout.writestr(item[0], item[1])
        for name, data in add:
            with pytest.warns(UserWarning) if any(n == name for n in zout.namelist()) else _nothing():
                zout.writestr(name, data)
    return dst


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def evil_pickle(created: Path) -> bytes:
    import io

    buffer = io.BytesIO()
    torch.save(Hostile(created), buffer)
    return buffer.getvalue()


def _same_output(model, reference, size=24) -> None:
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.inference_mode():
        assert (model(x) - reference(x)).abs().max().item() <= 1e-5


# ----------------------------------------------------------------------------- rebuilt, not run
def test_untrusted_pt2_is_rebuilt_from_its_weights_without_torch_export_load(pt2, tiny_generator,
                                                                              no_program_loading):
    model = load_generator(pt2)
    assert isinstance(model, ResnetGenerator) and model.arch == tiny_generator.arch
    _same_output(model, tiny_generator)


def test_untrusted_torchscript_is_rebuilt_from_coevo_weights_entry(tiny_generator, tmp_path, no_program_loading):
    path = tmp_path / "G.ts"
    save_torchscript(tiny_generator, path)
    model = load_generator(path)
    assert isinstance(model, ResnetGenerator) and model.arch == tiny_generator.arch
    _same_output(model, tiny_generator)


def test_pt2_from_another_tool_without_arch_entry_is_rebuilt_from_shapes(tiny_generator, tmp_path,
                                                                          no_program_loading):
    plain = tmp_path / "plain.pt2"
    torch.export.save(torch.export.export(tiny_generator.eval(), (torch.zeros(1, 3, 32, 32),)), str(plain))
    model = load_generator(plain)
    assert model.arch.to_dict() == tiny_generator.arch.to_dict()
    _same_output(model, tiny_generator)


def test_torchscript_of_unknown_origin_needs_trust(tmp_path, no_program_loading):
    class Echo(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    path = tmp_path / "foreign.ts"
    torch.jit.save(torch.jit.script(Echo()), str(path))
    with pytest.raises(CoevoError, match="--trust-model"):
        load_generator(path)


def test_trusted_torchscript_still_runs_the_program(tiny_generator, tmp_path):
    path = tmp_path / "G.ts"
    save_torchscript(tiny_generator, path)
    model = load_generator(path, trust=True)
    assert isinstance(model, torch.jit.ScriptModule) and model.arch == tiny_generator.arch


# ----------------------------------------------------------------------------- archive tricks
def test_case_variant_constants_config_is_refused(pt2, tmp_path, no_program_loading):
    """The attack that passed the old check: a second constants config under a differently cased folder."""
    created = tmp_path / "pwned"
    evil = json.dumps({"config": {"c": {"path_name": "evil.pt", "use_pickle": True}}})
    path = rewrite(pt2, tmp_path / "case.pt2",
                   add=[("archive/data/Constants/model_constants_config.json", evil),
                        ("archive/data/Constants/evil.pt", evil_pickle(created))])
    for trust in (False, True):
        with pytest.raises(CoevoError, match="differing only in case"):
            load_generator(path, trust=trust)
    assert not created.exists()


def test_duplicate_entry_is_refused(pt2, tmp_path, no_program_loading):
    config = next(n for n in zipfile.ZipFile(pt2).namelist() if n.endswith("model_weights_config.json"))
    path = rewrite(pt2, tmp_path / "dup.pt2", add=[(config, zipfile.ZipFile(pt2).read(config))])
    for trust in (False, True):
        with pytest.raises(CoevoError, match="twice"):
            load_generator(path, trust=trust)


def test_hostile_sample_inputs_pickle_never_runs(pt2, tiny_generator, tmp_path, no_program_loading):
    created = tmp_path / "pwned"
    path = rewrite(pt2, tmp_path / "sample.pt2",
                   edit=lambda n, d: (n, evil_pickle(created)) if n.endswith("sample_inputs/model.pt") else (n, d))
    _same_output(load_generator(path), tiny_generator)  # rebuilt: the sample inputs are never read
    with pytest.raises(UnsafeExportError, match="sample inputs"):
        load_generator(path, trust=True)  # checked with weights_only before torch sees the file
    assert not created.exists()


def test_pickled_weight_is_refused(pt2, tmp_path, no_program_loading):
    def mark(name, data):
        if name.endswith("model_weights_config.json"):
            data = data.decode().replace('"use_pickle": false', '"use_pickle": true', 1).encode()
        return name, data

    with pytest.raises(CoevoError, match="raw tensor"):
        load_generator(rewrite(pt2, tmp_path / "pickled.pt2", edit=mark))


def test_weight_reaching_past_its_storage_is_refused(pt2, tmp_path, no_program_loading):
    def grow(name, data):
        if name.endswith("model_weights_config.json"):
            doc = json.loads(data)
            first = next(iter(doc["config"].values()))["tensor_meta"]
            first["storage_offset"] = {"as_int": 10 ** 9}
            data = json.dumps(doc).encode()
        return name, data

    with pytest.raises(CoevoError, match="past its storage"):
        load_generator(rewrite(pt2, tmp_path / "past.pt2", edit=grow))


def test_entry_outside_the_top_folder_is_refused(pt2, tmp_path, no_program_loading):
    with pytest.raises(CoevoError, match="top folder"):
        load_generator(rewrite(pt2, tmp_path / "outside.pt2", add=[("other/extra/x.json", "{}")]))


def test_pt2_zip_bomb_is_refused_before_unpacking(pt2, tmp_path, no_program_loading):
    bomb = tmp_path / "bomb.pt2"
    rewrite(pt2, bomb)
    with zipfile.ZipFile(bomb, "a", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("archive/data/weights/weight_99", b"\0" * (64 << 20))
    assert bomb.stat().st_size < (2 << 20)
    for trust in (False, True):
        with pytest.raises(CoevoError, match="zip bomb"):
            load_generator(bomb, trust=trust)


def test_torchscript_program_is_never_loaded_without_trust(tiny_generator, tmp_path, monkeypatch):
    """A TorchScript file carrying coevo's entries next to a hostile program: only the tensors are read."""
    path = tmp_path / "G.ts"
    save_torchscript(tiny_generator, path)
    calls = []
    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: calls.append(a))
    load_generator(path)
    assert calls == []


def test_onnx_with_bad_arch_metadata_is_one_line(tiny_generator, tmp_path, capsys):
    import onnx

    from coevo.deploy.export import save_onnx

    path = tmp_path / "g.onnx"
    save_onnx(tiny_generator, path, exporter="legacy")
    for bad in ("{not json", json.dumps({"ngf": 4})):
        model = onnx.load(str(path))
        for prop in model.metadata_props:
            if prop.key == "coevo_arch":
                prop.value = bad
        onnx.save(model, str(path))
        with pytest.raises(CoevoError, match="architecture metadata|metadata is not valid JSON"):
            load_generator(path)
    photos = tmp_path / "photos"
    photos.mkdir()
    write_image(photos / "a.png")
    assert main(["translate", "--model", str(path), "--input", str(photos), "--output", str(tmp_path / "o")]) == 2
    one_error_line(capsys, "translate")
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------- every loading path of the CLI
@pytest.fixture
def case_variant_pt2(pt2, tmp_path) -> Path:
    evil = json.dumps({"config": {"c": {"path_name": "evil.pt", "use_pickle": True}}})
    return rewrite(pt2, tmp_path / "models" / "G_A.pt2",
                   add=[("archive/data/Constants/model_constants_config.json", evil),
                        ("archive/data/Constants/evil.pt", evil_pickle(tmp_path / "pwned"))])


def _argv(command: str, model: Path, tmp: Path) -> list:
    photos = tmp / "photos"
    if not photos.exists():
        for folder in (photos, photos / "data" / "testA", photos / "data" / "testA_gt_B"):
            folder.mkdir(parents=True)
            for i in range(2):
                write_image(folder / f"{i}.png", size=32, seed=i)
    out = str(tmp / "out")
    genome = str(tmp / "genomes" / "all.json")
    if not Path(genome).exists():
        from coevo.models import GeneratorArch
        from coevo.prune import Genome

        Genome.all_keep(GeneratorArch(ngf=4, n_blocks=2)).save_json(genome)
    return {
        "translate": ["translate", "--model", str(model), "--input", str(photos), "--output", out],
        "translate-trusted": ["translate", "--model", str(model), "--input", str(photos), "--output", out,
                              "--trust-model"],
        "bench": ["bench", "--model", str(model), "--size", "32", "--repeats", "1", "--warmup", "0", "--out", out],
        "bench-trusted": ["bench", "--model", str(model), "--size", "32", "--repeats", "1", "--warmup", "0",
                          "--out", out, "--trust-model"],
        "evaluate": ["evaluate", "--model", str(model), "--data", str(photos / "data"), "--no-fid",
                     "--out", out + ".json"],
        "export": ["export", "--run", str(model), "--out", out, "--formats", "safetensors", "--check-size", "8"],
        "prune": ["prune", "--generator", str(model), "--out", out + ".pt", "--size", "32"],
        "search": ["search", "--teacher-ab", str(model), "--teacher-ba", str(model), "--out", out],
        "compress": ["compress", "--config", str(Path(__file__).parents[1] / "configs" / "demo.yaml"),
                     "--teacher-ab", str(model), "--teacher-ba", str(model), "--out", out],
        "finetune": ["finetune", "--teacher-ab", str(model), "--teacher-ba", str(model), "--genome-a", genome,
                     "--genome-b", genome, "--out", out],
    }[command]


@pytest.mark.parametrize("command", ["translate", "translate-trusted", "bench", "bench-trusted", "evaluate",
                                     "export", "prune", "search", "compress", "finetune"])
def test_case_variant_pt2_is_refused_by_every_command(command, case_variant_pt2, tmp_path, capsys,
                                                      no_program_loading):
    before = snapshot(tmp_path)
    assert main(_argv(command, case_variant_pt2, tmp_path)) == 2
    assert "differing only in case" in one_error_line(capsys, command.split("-")[0])
    assert not (tmp_path / "pwned").exists()
    after = snapshot(tmp_path)
    assert {k: v for k, v in after.items() if k.parts[0] not in ("photos", "genomes")} == \
        {k: v for k, v in before.items() if k.parts[0] not in ("photos", "genomes")}


def test_translate_with_an_untrusted_pt2_matches_the_eager_model(pt2, tiny_generator, tmp_path,
                                                                 no_program_loading):
    photos = tmp_path / "photos"
    photos.mkdir()
    write_image(photos / "a.png", size=32)
    eager = save_generator(tiny_generator, tmp_path / "G.pt")
    for model, out in ((pt2, "a"), (eager, "b")):
        assert main(["translate", "--model", str(model), "--input", str(photos), "--output", str(tmp_path / out)]) == 0
    a, b = (np.asarray(__import__("PIL.Image").Image.open(tmp_path / d / "a.png"), int) for d in "ab")
    assert np.abs(a - b).max() <= 1
