"""Hostile inputs: each ends in exit code 2 and one line ``coevo <cmd>: error: ...`` before any work, with
no traceback, no hang and no file created. FIFOs, link loops, deep or broken YAML, numbers out of range,
devices that are not there, sizes no machine holds, and settings that used to fail after hours of work
or not at all. Tiny models, CLI called in-process, everything in tmp_path (also the current folder)."""
from __future__ import annotations

import os
import signal
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from coevo import save_generator
from coevo.cli import main
from coevo.models import GeneratorArch, ResnetGenerator
from coevo.prune import Genome

from conftest import make_image_folder
from test_safety import one_error_line, write_image

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "tiny.yaml")
HANG_SECONDS = 60  # far above what any of these takes; a FIFO opened for reading blocks for ever


# ----------------------------------------------------------------------------- helpers
def tree(root: Path) -> set:
    """Every path under ``root``, folders included (``os.walk``: a link loop is listed, not followed)."""
    out = set()
    for top, dirs, files in os.walk(root):
        out.update(Path(top, name) for name in dirs + files)
    return out


@contextmanager
def deadline(seconds: int = HANG_SECONDS):
    """Fail the test, instead of hanging it, when the block runs longer than ``seconds``."""
    def hung(signum, frame):
        raise TimeoutError(f"coevo hung for {seconds} s")

    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.fixture
def refuses(tmp_path, monkeypatch, capsys):
    """``refuses(argv, *words)``: exit 2, one error line holding ``words``, within the deadline,
    and no file or folder created or removed anywhere under tmp_path (the current folder too)."""
    monkeypatch.chdir(tmp_path)

    def check(argv, *words: str) -> str:
        argv = [str(a) for a in argv]
        before = tree(tmp_path)
        capsys.readouterr()
        with deadline():
            rc = main(argv)
        command = next(a for a in argv if not a.startswith("-") and not a.isdigit())  # after global options
        line = one_error_line(capsys, command)
        assert rc == 2, line
        for word in words:
            assert word in line, (word, line)
        assert tree(tmp_path) == before, sorted(map(str, tree(tmp_path) ^ before))
        return line

    return check


@pytest.fixture
def model(tiny_generator, tmp_path) -> Path:
    return save_generator(tiny_generator, tmp_path / "models" / "G.pt")


@pytest.fixture
def images(tmp_path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    write_image(folder / "a.png", size=16)
    return folder


@pytest.fixture
def data(tmp_path) -> Path:
    return make_image_folder(tmp_path / "data", n=2, size=16)


def fifo(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(path)
    return path


def loop(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(path.name, path)
    return path


def train_argv(tmp_path, *sets: str, config: str = TINY) -> list:
    return ["train", "--config", config, "--out", tmp_path / "run", *[x for s in sets for x in ("--set", s)]]


def compress_argv(tmp_path, *sets: str) -> list:
    return ["compress", "--config", TINY, "--out", tmp_path / "run", *[x for s in sets for x in ("--set", s)]]


def no_cuda():
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")


# ----------------------------------------------------------------------------- FIFOs (within the deadline)
def test_fifo_as_image(refuses, model, tmp_path):
    refuses(["translate", "--model", model, "--input", fifo(tmp_path / "in.png"), "--output", tmp_path / "out"],
            "in.png", "named pipe")


def test_fifo_among_images(refuses, model, images, tmp_path):
    fifo(images / "b.png")
    refuses(["translate", "--model", model, "--input", images, "--output", tmp_path / "out", "--skip-bad"],
            "b.png", "named pipe")


def test_fifo_as_config(refuses, tmp_path):
    refuses(["train", "--config", fifo(tmp_path / "config.yaml"), "--out", tmp_path / "run"],
            "config.yaml", "named pipe")


def test_fifo_as_model_file(refuses, images, tmp_path):
    refuses(["translate", "--model", fifo(tmp_path / "G.pt"), "--input", images, "--output", tmp_path / "out"],
            "G.pt", "named pipe")


def test_fifo_as_exported_model_file(refuses, images, tmp_path):
    refuses(["translate", "--model", fifo(tmp_path / "G.onnx"), "--input", images, "--output", tmp_path / "out"],
            "G.onnx", "named pipe")


def test_fifo_in_calibration_folder(refuses, model, images, tmp_path):
    fifo(images / "b.png")
    refuses(["export", "--run", model, "--out", tmp_path / "exports", "--formats", "safetensors",
             "--check-size", "8", "--calibration", images], "b.png", "named pipe")


def test_fifo_as_latency_table(refuses, tmp_path):
    table = fifo(tmp_path / "table.json")
    refuses(compress_argv(tmp_path, "search.compute=latency", f"search.latency_table={table}"),
            "table.json", "named pipe")


# ----------------------------------------------------------------------------- symbolic link loops
def test_symlink_loop_as_image(refuses, model, tmp_path):
    refuses(["translate", "--model", model, "--input", loop(tmp_path / "in.png"), "--output", tmp_path / "out"],
            "in.png")


def test_symlink_loop_as_model_file(refuses, images, tmp_path):
    refuses(["translate", "--model", loop(tmp_path / "G.pt"), "--input", images, "--output", tmp_path / "out"],
            "G.pt")


def test_symlink_loop_among_images(refuses, model, images, tmp_path):
    loop(images / "b.png")
    refuses(["translate", "--model", model, "--input", images, "--output", tmp_path / "out"], "b.png")


def test_symlink_loop_as_data_root(refuses, tmp_path):
    refuses(train_argv(tmp_path) + ["--data", loop(tmp_path / "data")], str(tmp_path / "data"))


def test_symlink_loop_as_translate_output(refuses, model, images, tmp_path):
    refuses(["translate", "--model", model, "--input", images, "--output", loop(tmp_path / "out")], "out")


def test_symlink_loop_as_export_output(refuses, model, tmp_path):
    refuses(["export", "--run", model, "--out", loop(tmp_path / "exports"), "--formats", "safetensors",
             "--check-size", "8"], "exports")


def test_symlink_loop_as_run_folder(refuses, tmp_path):
    out = loop(tmp_path / "run")
    refuses(["train", "--config", TINY, "--out", out], "run")


# ----------------------------------------------------------------------------- YAML and --set
def test_deeply_nested_yaml_config(refuses, tmp_path):
    config = tmp_path / "deep.yaml"
    config.write_text("train: " + "[" * 20000 + "]" * 20000 + "\n")
    refuses(["train", "--config", config, "--out", tmp_path / "run"], "deep.yaml", "too deep")


def test_deeply_nested_set_value(refuses, tmp_path):
    refuses(train_argv(tmp_path, "train.epochs=" + "[" * 20000 + "]" * 20000), "train.epochs", "too deep")


def test_moderately_nested_set_value(refuses, tmp_path):
    refuses(train_argv(tmp_path, "export.formats=" + "[" * 200 + "]" * 200), "export.formats")


@pytest.mark.parametrize("value", ["inf", ".inf", "-.inf", "1e400", "1.0e+400", "nan", "99999999999999999999999"])
def test_infinite_or_huge_integer_option(refuses, tmp_path, value):
    refuses(train_argv(tmp_path, f"train.epochs={value}"), "train.epochs")


def test_infinite_integer_in_config_file(refuses, tmp_path):
    config = tmp_path / "inf.yaml"
    config.write_text("train:\n  epochs: .inf\n")
    refuses(["train", "--config", config, "--out", tmp_path / "run"], "train.epochs")


@pytest.mark.parametrize("value", ["[1", "{a: 1", "'open", "a: b: c", "@x", "\t- x"])
def test_yaml_syntax_error_in_set(refuses, tmp_path, value):
    refuses(train_argv(tmp_path, f"train.epochs={value}"), "--set train.epochs")


def test_python_tag_in_set(refuses, tmp_path):
    refuses(train_argv(tmp_path, "train.epochs=!!python/object/apply:os.system ['touch pwned']"),
            "--set train.epochs")
    assert not (tmp_path / "pwned").exists()


def test_python_tag_in_config_file(refuses, tmp_path):
    config = tmp_path / "evil.yaml"
    config.write_text("train:\n  epochs: !!python/object/apply:os.system ['touch pwned']\n")
    refuses(["train", "--config", config, "--out", tmp_path / "run"], "evil.yaml")
    assert not (tmp_path / "pwned").exists()


def test_empty_config_file(refuses, tmp_path):
    config = tmp_path / "empty.yaml"
    config.write_text("# nothing yet\n")
    refuses(["train", "--config", config, "--out", tmp_path / "run"], "empty.yaml", "empty")


def test_set_1_2(refuses, tmp_path):
    refuses(train_argv(tmp_path, "1=2"), "'1'")


def test_number_as_key_in_config_file(refuses, tmp_path):
    config = tmp_path / "numbers.yaml"
    config.write_text("1: 2\n")
    refuses(["train", "--config", config, "--out", tmp_path / "run"], "unknown config key '1'")


def test_set_data_root_x_1(refuses, tmp_path):
    refuses(train_argv(tmp_path, "data.root.x=1"), "data.root")
    assert not list(tmp_path.glob("{*"))


@pytest.mark.parametrize("override", ["data.root=[a, b]", "name={a: 1}", "train.epochs=[1]", "train.lr={a: 1}"])
def test_set_a_list_or_mapping_for_a_single_value(refuses, tmp_path, override):
    refuses(train_argv(tmp_path, override), override.split("=")[0])


# ----------------------------------------------------------------------------- devices
@pytest.mark.parametrize("device", ["foo", "meta", "cuda:x"])
def test_device_foo_and_meta_in_translate(refuses, model, images, tmp_path, device):
    refuses(["translate", "--model", model, "--input", images, "--output", tmp_path / "out", "--device", device],
            repr(device))


@pytest.mark.parametrize("device", ["foo", "meta"])
def test_device_foo_and_meta_in_evaluate(refuses, model, data, device):
    refuses(["evaluate", "--model", model, "--data", data, "--no-fid", "--device", device], repr(device))


@pytest.mark.parametrize("device", ["foo", "meta"])
def test_device_foo_and_meta_in_bench(refuses, model, tmp_path, device):
    refuses(["bench", "--model", model, "--size", "16", "--out", tmp_path / "bench", "--device", device],
            repr(device))


@pytest.mark.parametrize("device", ["foo", "meta"])
def test_device_foo_and_meta_in_config(refuses, tmp_path, device):
    refuses(train_argv(tmp_path, f"device={device}"), repr(device))


# ----------------------------------------------------------------------------- sizes no machine holds
def test_huge_translate_size(refuses, model, images, tmp_path):
    refuses(["translate", "--model", model, "--input", images, "--output", tmp_path / "out", "--size", "4000000"],
            "--size", "4096")


def test_huge_check_size(refuses, model, tmp_path):
    refuses(["export", "--run", model, "--out", tmp_path / "exports", "--formats", "safetensors",
             "--check-size", "4000000"], "--check-size", "4096")


def test_huge_synthetic_size(refuses, tmp_path):
    refuses(["data", "synthetic", "--out", tmp_path / "synthetic", "--size", "4000000", "--n-train", "1",
             "--n-test", "1"], "4096")


def test_huge_bench_size(refuses, model, tmp_path):
    refuses(["bench", "--model", model, "--size", "4000000", "--out", tmp_path / "bench"], "--size", "4096")


def test_huge_evaluate_size(refuses, model, data):
    refuses(["evaluate", "--model", model, "--data", data, "--no-fid", "--size", "4000000"], "--size", "4096")


@pytest.mark.parametrize("key", ["data.load_size", "data.crop_size", "export.check_size", "bench.size",
                                 "search.latency_size", "search.eval_size"])
def test_huge_sizes_in_config(refuses, tmp_path, key):
    sets = [f"{key}=4000000"] + (["data.load_size=4000000"] if key == "data.crop_size" else [])
    refuses(train_argv(tmp_path, *sets), "4096")


def test_crop_too_small_for_the_discriminator(refuses, tmp_path):
    refuses(train_argv(tmp_path, "data.crop_size=8", "data.load_size=8"), "data.crop_size=8", "n_layers_d",
            "at least 12")


# ----------------------------------------------------------------------------- export
def test_export_run_with_a_corrupt_G_A(refuses, tiny_generator, tmp_path):
    run = tmp_path / "finetune"
    save_generator(tiny_generator, run / "G_B.pt")
    (run / "G_A.pt").write_bytes(b"PK\x03\x04 truncated")
    refuses(["export", "--run", run, "--out", tmp_path / "exports", "--formats", "safetensors", "--check-size", "8"],
            "G_A.pt")


@pytest.mark.parametrize("opset", ["3", "6", "24", "1000"])
def test_export_opset_out_of_range(refuses, model, tmp_path, opset):
    refuses(["export", "--run", model, "--out", tmp_path / "exports", "--formats", "onnx", "--check-size", "8",
             "--opset", opset], "--opset", opset)


def test_export_opset_out_of_range_in_config(refuses, tmp_path):
    refuses(train_argv(tmp_path, "export.opset=3"), "export.opset", "3")


def test_export_of_a_nan_output_model_leaves_nothing(refuses, tiny_generator, tmp_path):
    with torch.no_grad():  # finite weights, so the file loads; the output overflows to NaN
        tiny_generator.state_dict()["model.1.weight"].fill_(3e38)
    run = tmp_path / "finetune"
    save_generator(ResnetGenerator(tiny_generator.arch), run / "G_A.pt")  # a healthy G_A is exported first
    save_generator(tiny_generator, run / "G_B.pt")
    refuses(["export", "--run", run, "--out", tmp_path / "exports", "--formats", "safetensors", "--check-size", "8"],
            "G_B", "output")


def test_export_target_cuda_on_a_cpu_machine(refuses, model, tmp_path):
    no_cuda()
    refuses(["export", "--run", model, "--out", tmp_path / "exports", "--formats", "torch-export",
             "--check-size", "8", "--target", "cuda"], "--target cuda", "--target cpu")


def test_export_target_cuda_on_a_cpu_machine_before_the_teacher(refuses, tmp_path):
    no_cuda()
    refuses(compress_argv(tmp_path, "export.target=cuda"), "target cuda")


# ----------------------------------------------------------------------------- checked before the teacher trains
def test_latency_target_cuda_on_a_cpu_machine(refuses, tmp_path):
    no_cuda()
    refuses(compress_argv(tmp_path, "search.compute=latency", "search.latency_target=cuda"),
            "search.latency_target=cuda")


def test_missing_latency_table(refuses, tmp_path):
    refuses(compress_argv(tmp_path, "search.compute=latency", f"search.latency_table={tmp_path / 'table.json'}"),
            "table.json", "does not exist")


def test_latency_table_that_is_no_table(refuses, tmp_path):
    table = tmp_path / "table.json"
    table.write_text('{"format": "something else"}')
    refuses(compress_argv(tmp_path, "search.compute=latency", f"search.latency_table={table}"), "table.json")


def test_missing_lpips_backbone(refuses, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    refuses(compress_argv(tmp_path, "search.perceptual=lpips"), "lpips", "missing")


def test_missing_lpips_backbone_in_search(refuses, model, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    refuses(["search", "--config", TINY, "--teacher-ab", model, "--teacher-ba", model, "--out", tmp_path / "run",
             "--set", "search.perceptual=lpips"], "lpips")


# ----------------------------------------------------------------------------- evaluate
def test_evaluate_batch_size_0(refuses, model, data):
    refuses(["evaluate", "--model", model, "--data", data, "--no-fid", "--batch-size", "0"], "--batch-size")


def test_evaluate_with_nothing_to_compute(refuses, model, data):
    refuses(["evaluate", "--model", model, "--data", data, "--no-fid"], "nothing to measure")


def test_evaluate_missing_data_folder_is_reported_before_the_fid_weights(refuses, model, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    refuses(["evaluate", "--model", model, "--data", tmp_path / "no_data"], "no_data")


# ----------------------------------------------------------------------------- fine-tuning
@pytest.mark.parametrize("other", [GeneratorArch.full(ngf=8, n_blocks=2), GeneratorArch.full(ngf=4, n_blocks=3)])
def test_finetune_genome_of_another_architecture(refuses, model, data, tmp_path, other):
    genome = Genome.all_keep(other).save_json(tmp_path / "genome.json")
    line = refuses(["finetune", "--config", TINY, "--teacher-ab", model, "--teacher-ba", model, "--genome-a", genome,
                    "--genome-b", genome, "--data", data, "--out", tmp_path / "run"])
    assert f"{other.n_blocks}-block" in line and f"ngf={other.ngf}" in line, line
    assert "2-block" in line and "ngf=4" in line, line


def test_fifo_as_genome_file(refuses, model, data, tmp_path):
    genome = fifo(tmp_path / "genome.json")
    refuses(["finetune", "--config", TINY, "--teacher-ab", model, "--teacher-ba", model, "--genome-a", genome,
             "--genome-b", genome, "--data", data, "--out", tmp_path / "run"], "genome.json", "named pipe")


# ----------------------------------------------------------------------------- integers beyond any machine
HUGE = str(10 ** 20)


@pytest.mark.parametrize("argv, flag", [
    (["--threads", HUGE, "data", "check", "."], "--threads"),
    (["export", "--run", "G.pt", "--out", "exports", "--seed", HUGE], "--seed"),
    (["translate", "--model", "G.pt", "--input", "photos", "--output", "out", "--batch", HUGE], "--batch"),
    (["data", "synthetic", "--out", "synthetic", "--n-train", HUGE], "--n-train"),
    (["evaluate", "--model", "G.pt", "--data", "data", "--kid-subset-size", HUGE], "--kid-subset-size"),
])
def test_integer_option_beyond_64_bits(refuses, argv, flag):
    refuses(argv, flag, "out of range")


def test_threads_beyond_any_machine(refuses, tmp_path):
    refuses(["--threads", "1000000", "train", "--config", TINY, "--out", tmp_path / "run"], "threads", "at most")


def test_threads_beyond_any_machine_in_config(refuses, tmp_path):
    refuses(train_argv(tmp_path, "threads=1000000"), "threads", "1000000")


def test_huge_synthetic_count(refuses, tmp_path):
    refuses(["data", "synthetic", "--out", tmp_path / "synthetic", "--size", "16", "--n-train", "1000000000"],
            "n_train", "at most")


def test_huge_synthetic_count_in_config(refuses, tmp_path):
    refuses(train_argv(tmp_path, "data.synthetic_n_train=1000000000"), "data.synthetic_n_train")


def test_huge_bench_batch(refuses, model, tmp_path):
    refuses(["bench", "--model", model, "--size", "16", "--batch", "1000000000", "--out", tmp_path / "bench"],
            "--batch", "at most")


def test_set_key_nested_thousands_deep(refuses, tmp_path):
    refuses(train_argv(tmp_path, "data.root" + ".x" * 5000 + "=1"), "not a config key")


LAUGHS = "[&a0 [x, x, x, x, x, x, x, x, x], " + ", ".join(
    f"&a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)) + "]"  # 9**10 strings, through aliases


def test_billion_laughs_in_set(refuses, tmp_path):
    refuses(train_argv(tmp_path, f"train.epochs={LAUGHS}"), "train.epochs")  # within the deadline


def test_billion_laughs_in_config_file(refuses, tmp_path):
    config = tmp_path / "laughs.yaml"
    config.write_text(f"export:\n  formats: {LAUGHS}\n")
    refuses(["train", "--config", config, "--out", tmp_path / "run"], "export.formats")  # within the deadline


def test_huge_config_file(refuses, tmp_path):
    config = tmp_path / "huge.yaml"
    config.write_text("# padding\n" * 200_000)
    refuses(["train", "--config", config, "--out", tmp_path / "run"], "huge.yaml", "MB")


@pytest.mark.parametrize("flag", ["--config", "--model"])
def test_device_node_as_config_or_model(refuses, images, tmp_path, flag):
    if flag == "--config":
        refuses(["train", "--config", "/dev/zero", "--out", tmp_path / "run"], "/dev/zero", "device")
    else:
        refuses(["translate", "--model", "/dev/zero", "--input", images, "--output", tmp_path / "out"], "/dev/zero",
                "device")
