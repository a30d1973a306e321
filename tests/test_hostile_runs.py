"""Hostile runs: two writers on one run folder, resumes on changed inputs, kills in the first seconds,
failed starts, and the newcomer's path. Each test is named after its case; refusals exit 2 with one
line ``coevo <cmd>: error: ...`` and no traceback. Tiny nets at 32 px, CLI called in-process."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from coevo.cli import main
from coevo.config import load_config
from coevo.models import (DiscriminatorArch, GeneratorArch, NLayerDiscriminator, ResnetGenerator,
                          save_discriminator, save_generator)
from coevo.prune import Genome
from coevo.core.runlock import LOCK_NAME

from conftest import make_image_folder, make_teacher_folder
from test_safety import one_error_line, snapshot

REPO = Path(__file__).resolve().parents[1]
PROC_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}

DATA = {"synthetic": False, "load_size": 32, "crop_size": 32, "val_fraction": 0.25}
MODEL = {"ngf": 4, "n_blocks": 1, "ndf": 4}
TRAIN = {"epochs": 1, "epochs_decay": 0, "max_steps_per_epoch": 2, "log_every": 1, "pool_size": 2,
         "sample_images": 2}
SEARCH = {"population": 4, "generations": 2, "eval_images": 3, "eval_size": 32}
FINETUNE = {"epochs": 1, "epochs_decay": 0, "max_steps_per_epoch": 2, "log_every": 1, "pool_size": 2,
            "sample_images": 2}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Images, a (random) teacher with discriminators, half genomes of it, and a config file."""
    root = tmp_path_factory.mktemp("hostile")
    data = make_image_folder(root / "data", n=6, size=32)
    arch = GeneratorArch.full(ngf=4, n_blocks=1)
    teacher = make_teacher_folder(root / "teacher", arch)
    genomes = {}
    for i, name in enumerate(("G_A", "G_B")):
        genome = Genome.from_kept(arch, {n: list(range(i % 2, w, 2)) for n, w in arch.widths.items()})
        genomes[name] = genome.save_json(root / f"genome_{name}.json")
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump({"data": {**DATA, "root": str(data)}, "model": MODEL, "train": TRAIN,
                                      "search": SEARCH, "finetune": FINETUNE}))
    return {"root": root, "data": data, "teacher": teacher, "genomes": genomes, "config": config, "arch": arch}


def copy_teacher(env, dest: Path) -> Path:
    import shutil

    shutil.copytree(env["teacher"], dest)
    return dest


def train_argv(env, out, *extra):
    return ["train", "--config", str(env["config"]), "--out", str(out), *extra]


def search_argv(env, out, *extra, teacher=None):
    return ["search", "--config", str(env["config"]), "--teacher", str(teacher or env["teacher"]), "--out", str(out),
            "--no-progress", *extra]


def finetune_argv(env, out, *extra, teacher=None, genome_a=None):
    return ["finetune", "--config", str(env["config"]), "--teacher", str(teacher or env["teacher"]),
            "--genome-a", str(genome_a or env["genomes"]["G_A"]), "--genome-b", str(env["genomes"]["G_B"]),
            "--out", str(out), *extra]


def refused(capsys, argv, *words) -> str:
    """``coevo ARGV`` exits 2 with one error line holding every one of ``words``."""
    code = main([str(a) for a in argv])
    line = one_error_line(capsys, argv[0])
    assert code == 2, line
    for w in words:
        assert str(w) in line, (w, line)
    return line


def edit_yaml(path: Path, section: str, key: str, value) -> None:
    d = yaml.safe_load(path.read_text())
    d[section][key] = value
    path.write_text(yaml.safe_dump(d, sort_keys=False))


class LockHolder:
    """Another process that holds a run folder's lock, as a running coevo command does."""

    def __init__(self, folder: Path) -> None:
        code = ("import sys, time\nfrom coevo.core.runlock import lock_run_dir\nlock_run_dir(sys.argv[1])\n"
                "print('locked', flush=True)\ntime.sleep(120)\n")
        self.proc = subprocess.Popen([sys.executable, "-c", code, str(folder)], env=PROC_ENV,
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "locked"

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


# ----------------------------------------------------------------------------- two writers
def test_two_writers_second_resume_while_the_first_runs_is_refused(env, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(train_argv(env, out)) == 0
    capsys.readouterr()
    holder = LockHolder(out)
    try:
        before = snapshot(out)
        refused(capsys, ["train", "--out", out, "--resume"], str(out), "in use by another coevo process")
        refused(capsys, train_argv(env, out, "--force"), str(out), "in use")  # --force deletes nothing
        assert snapshot(out) == before
    finally:
        holder.kill()
    # the kernel dropped the killed process's lock: it never blocks a rerun
    assert main(["train", "--out", str(out), "--resume"]) == 0


@pytest.mark.parametrize("command", ["search", "finetune", "compress"])
def test_two_writers_every_resumable_command_refuses_a_folder_in_use(env, tmp_path, capsys, command):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".coevo-run").write_text("{}")
    (out / "config.yaml").write_text(env["config"].read_text())
    holder = LockHolder(out)
    try:
        before = snapshot(out)
        argv = {"search": ["search", "--out", out, "--resume", "--no-progress"],
                "finetune": finetune_argv(env, out, "--resume"),
                "compress": ["compress", "--config", env["config"], "--out", out, "--resume"]}[command]
        refused(capsys, argv, str(out), "in use")
        assert snapshot(out) == before
    finally:
        holder.kill()


def test_two_writers_real_train_process_then_kill_9_then_resume(env, tmp_path, capsys):
    """A real `coevo train` in another process: a second one is refused while it runs; after its
    SIGKILL, --resume continues."""
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "coevo", "--threads", "1", *train_argv(env, out, "--set", "train.epochs=500")]
    proc = subprocess.Popen(argv, env=PROC_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (out / "checkpoint.pt").exists():
            assert proc.poll() is None, "training ended early"
            time.sleep(0.1)
        refused(capsys, ["train", "--out", out, "--resume"], str(out), "in use")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # no lock left behind: the resume gets as far as comparing its settings with the run's
    refused(capsys, ["train", "--out", out, "--resume", "--set", "train.lr=0.5"], "train.lr")
    assert (out / LOCK_NAME).is_file()


# ----------------------------------------------------------------------------- changed inputs
def test_resume_refuses_an_edited_config_yaml_train(env, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(train_argv(env, out)) == 0
    edit_yaml(out / "config.yaml", "train", "lr", 0.01)
    capsys.readouterr()
    refused(capsys, ["train", "--out", out, "--resume"], "config.yaml was edited", "train.lr")


def test_resume_after_an_upgrade_that_added_a_config_key(env, tmp_path, capsys):
    """A run started by an older coevo, whose records lack a key added since (with the default that keeps the old
    behaviour), resumes: only an edit is refused."""
    out = tmp_path / "run"
    assert main(train_argv(env, out)) == 0
    record = json.loads((out / "inputs.json").read_text())
    del record["config"]["search"]["width_floor"]
    (out / "inputs.json").write_text(json.dumps(record))
    d = yaml.safe_load((out / "config.yaml").read_text())
    del d["search"]["width_floor"]
    (out / "config.yaml").write_text(yaml.safe_dump(d, sort_keys=False))
    capsys.readouterr()
    assert main(["train", "--out", str(out), "--resume"]) == 0
    edit_yaml(out / "config.yaml", "search", "width_floor", "uniform")  # set to something else: an edit
    refused(capsys, ["train", "--out", out, "--resume"], "config.yaml was edited", "search.width_floor")


def test_resume_refuses_an_edited_config_yaml_search(env, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(search_argv(env, out, "--set", "search.generations=1")) == 0
    edit_yaml(out / "config.yaml", "search", "mutation_prob", 0.5)
    capsys.readouterr()
    refused(capsys, ["search", "--out", out, "--resume", "--no-progress"], "config.yaml was edited",
            "search.mutation_prob")


def test_resume_refuses_an_edited_config_yaml_compress(env, tmp_path, capsys):
    from coevo.pipeline import Pipeline

    out = tmp_path / "run"
    cfg = load_config(env["config"])
    pipe = Pipeline(cfg, out, teacher=env["teacher"])
    pipe.cfg.data.root = str(pipe.data_root())
    pipe._start()  # the run folder and its data stage, as a kill after the first seconds leaves them
    edit_yaml(out / "config.yaml", "search", "population", 8)
    refused(capsys, ["compress", "--config", env["config"], "--teacher", env["teacher"], "--out", out, "--resume"],
            "config.yaml was edited", "search.population")


def test_resume_refuses_set_search_population_on_a_running_search(env, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(search_argv(env, out, "--set", "search.generations=1")) == 0
    capsys.readouterr()
    before = snapshot(out)
    refused(capsys, ["search", "--out", out, "--resume", "--no-progress", "--set", "search.population=8"],
            "search.population")
    assert snapshot(out) == before
    # more generations are how a search is continued
    assert main(["search", "--out", str(out), "--resume", "--no-progress", "--set", "search.generations=2"]) == 0


def test_resume_refuses_replaced_teacher_weights_search(env, tmp_path, capsys):
    teacher = copy_teacher(env, tmp_path / "teacher")
    out = tmp_path / "run"
    assert main(search_argv(env, out, "--set", "search.generations=1", teacher=teacher)) == 0
    torch.manual_seed(1)
    save_generator(ResnetGenerator(env["arch"]), teacher / "G_B.pt")
    capsys.readouterr()
    refused(capsys, ["search", "--out", out, "--resume", "--no-progress"], "teacher G_B", str(teacher / "G_B.pt"))


def test_resume_refuses_replaced_teacher_weights_compress(env, tmp_path, capsys):
    from coevo.pipeline import Pipeline

    teacher = copy_teacher(env, tmp_path / "teacher")
    out = tmp_path / "run"
    pipe = Pipeline(load_config(env["config"]), out, teacher=teacher)
    pipe.cfg.data.root = str(pipe.data_root())
    pipe._start()  # the run folder and its data stage
    torch.manual_seed(1)
    save_generator(ResnetGenerator(env["arch"]), teacher / "G_A.pt")
    refused(capsys, ["compress", "--config", env["config"], "--teacher", teacher, "--out", out, "--resume"],
            "teacher G_A", str(teacher / "G_A.pt"))


def test_resume_refuses_replaced_teacher_weights_finetune(env, tmp_path, capsys):
    teacher = copy_teacher(env, tmp_path / "teacher")
    out = tmp_path / "run"
    assert main(finetune_argv(env, out, teacher=teacher)) == 0
    torch.manual_seed(1)
    save_discriminator(NLayerDiscriminator(DiscriminatorArch(ndf=4)), teacher / "D_A.pt")
    capsys.readouterr()
    refused(capsys, finetune_argv(env, out, "--resume", teacher=teacher), "teacher D_A", str(teacher / "D_A.pt"))


def test_resume_refuses_an_edited_genome_finetune(env, tmp_path, capsys):
    genome = tmp_path / "a.json"
    genome.write_text(env["genomes"]["G_A"].read_text())
    out = tmp_path / "run"
    assert main(finetune_argv(env, out, genome_a=genome)) == 0
    d = json.loads(genome.read_text())
    group = next(iter(d["kept"]))
    d["kept"][group] = d["kept"][group][:-1]
    genome.write_text(json.dumps(d))
    capsys.readouterr()
    refused(capsys, finetune_argv(env, out, "--resume", genome_a=genome), "genome G_A")
    # the original genome resumes
    genome.write_text(env["genomes"]["G_A"].read_text())
    assert main(finetune_argv(env, out, "--resume", genome_a=genome)) == 0


# ----------------------------------------------------------------------------- finetune without --data
def test_finetune_without_data_builds_the_builtin_set_in_its_own_folder(env, tmp_path, capsys):
    """The documented `coevo finetune --config C --teacher T --genome-a A --genome-b B --out NEW`."""
    config = tmp_path / "builtin.yaml"
    config.write_text(yaml.safe_dump({"data": {"synthetic": True, "synthetic_n_train": 4, "synthetic_n_test": 2,
                                               "load_size": 32, "crop_size": 32, "val_fraction": 0.25},
                                      "model": MODEL, "finetune": FINETUNE}))
    out = tmp_path / "new"
    argv = ["finetune", "--config", str(config), "--teacher", str(env["teacher"]),
            "--genome-a", str(env["genomes"]["G_A"]), "--genome-b", str(env["genomes"]["G_B"]), "--out", str(out)]
    assert main(argv) == 0, capsys.readouterr().err
    assert (out / "data" / "meta.json").is_file() and (out / "G_A.pt").is_file()
    assert load_config(out / "config.yaml").data.root == str((out / "data").resolve())
    assert main(argv + ["--resume"]) == 0
    assert main(argv + ["--force"]) == 0


# ----------------------------------------------------------------------------- kills and failed starts
KILL_AFTER_DATA = """
import os, signal, sys
import coevo.data.prepare as prepare
real = prepare.ensure_data_root
def ensure_then_die(cfg):  # a SIGKILL right after the built-in set is built, before the run's config.yaml
    root = real(cfg)
    os.kill(os.getpid(), signal.SIGKILL)
prepare.ensure_data_root = ensure_then_die
from coevo.cli import main
main(sys.argv[1:])
"""


def builtin_config(tmp_path: Path) -> Path:
    """The tiny config without data.root: the built-in set is built inside the run folder."""
    config = tmp_path / "builtin.yaml"
    config.write_text(yaml.safe_dump({"data": {"synthetic": True, "synthetic_n_train": 4, "synthetic_n_test": 2,
                                               "load_size": 32, "crop_size": 32, "val_fraction": 0.25},
                                      "model": MODEL, "train": TRAIN, "search": SEARCH, "finetune": FINETUNE}))
    return config


@pytest.mark.parametrize("command", ["train", "search", "finetune"])
def test_kill_in_the_first_seconds_then_resume_continues(env, tmp_path, capsys, command):
    out = tmp_path / "run"
    config = builtin_config(tmp_path)
    argv = {"train": ["train", "--config", config, "--out", out],
            "search": ["search", "--config", config, "--teacher", env["teacher"], "--out", out, "--no-progress"],
            "finetune": ["finetune", "--config", config, "--teacher", env["teacher"], "--genome-a",
                         env["genomes"]["G_A"], "--genome-b", env["genomes"]["G_B"], "--out", out]}[command]
    argv = [str(a) for a in argv]
    killed = subprocess.run([sys.executable, "-c", KILL_AFTER_DATA, "--threads", "1", *argv], env=PROC_ENV,
                            capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert (out / ".coevo-run").is_file() and (out / "data" / "meta.json").is_file()
    assert not (out / "config.yaml").exists()
    assert main(argv + ["--resume"]) == 0, capsys.readouterr().err
    assert (out / "config.yaml").is_file()
    if command == "train":  # without --config there is no config to start it again with: said so
        (out / "config.yaml").unlink()
        (out / "checkpoint.pt").unlink()
        capsys.readouterr()
        refused(capsys, ["train", "--out", out, "--resume"], "--config")


KILL_WHILE_RENDERING = """
import os, signal, sys
import coevo.data.synthetic as synthetic
real = synthetic._render_all
def render_then_die(*args, **kwargs):  # a SIGKILL with the built-in set rendered into its temporary folder
    real(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)
synthetic._render_all = render_then_die
from coevo.cli import main
main(sys.argv[1:])
"""


@pytest.mark.parametrize("command", ["train", "compress"])
def test_kill_while_the_builtin_set_renders_then_resume_continues(tmp_path, capsys, command):
    out = tmp_path / "run"
    config = builtin_config(tmp_path)
    argv = [command, "--config", str(config), "--out", str(out)]
    if command == "compress":
        argv += [*tiny_sets(), "--set", "data.synthetic_n_train=4", "--set", "data.synthetic_n_test=2"]
    killed = subprocess.run([sys.executable, "-c", KILL_WHILE_RENDERING, "--threads", "1", *argv], env=PROC_ENV,
                            capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert list(out.glob(".*.partial")), sorted(p.name for p in out.iterdir())
    if command == "compress":  # stop after the teacher: the rest of the pipeline is tested elsewhere
        import coevo.pipeline

        def stop(self, path, resume):
            raise KeyboardInterrupt

        with pytest.MonkeyPatch.context() as m:
            m.setattr(coevo.pipeline.Pipeline, "_search", stop)
            assert main(argv + ["--resume"]) == 130
        assert (out / "teacher" / "stage.json").is_file()
    else:
        assert main(argv + ["--resume"]) == 0, capsys.readouterr().err
    assert not list(out.glob(".*.partial")) and (out / "data" / "meta.json").is_file()


def test_failed_start_leaves_nothing_that_blocks_a_plain_rerun_train(env, tmp_path, capsys, monkeypatch):
    from coevo.train.loop import CycleGANTrainer, TrainingError

    def fails(self, *args, **kwargs):  # as a crop too small for the discriminator fails at the first step
        raise TrainingError("the first step failed")

    out = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr(CycleGANTrainer, "fit", fails)
        refused(capsys, train_argv(env, out), "the first step failed")
    assert not out.exists()
    assert main(train_argv(env, out)) == 0


def test_failed_start_leaves_nothing_that_blocks_a_plain_rerun_compress(env, tmp_path, capsys, monkeypatch):
    import coevo.search
    from coevo.errors import CoevoError

    def fails(*args, **kwargs):  # as a search whose first generation fails
        raise CoevoError("the search could not start")

    monkeypatch.setattr(coevo.search, "run_search", fails)
    out = tmp_path / "run"
    config = builtin_config(tmp_path)
    refused(capsys, ["compress", "--config", config, "--teacher", env["teacher"], "--out", out],
            "the search could not start")
    assert not out.exists()


def test_failed_start_leaves_nothing_that_blocks_a_plain_rerun_search(env, tmp_path, capsys, monkeypatch):
    from coevo.errors import CoevoError
    from coevo.search.evolve import CoevolutionSearch

    def fails(self, *args, **kwargs):
        raise CoevoError("the first generation failed")

    monkeypatch.setattr(CoevolutionSearch, "run", fails)
    out = tmp_path / "run"
    refused(capsys, search_argv(env, out), "the first generation failed")
    assert not out.exists()


# ----------------------------------------------------------------------------- the newcomer's path
# configs/demo.yaml shrunk as tests/test_pipeline.py does: 32 px, a ngf-8 two-block teacher, two generations
TINY_DEMO = [
    "data.load_size=32", "data.crop_size=32", "data.val_fraction=0.25",
    "model.ngf=8", "model.n_blocks=2", "model.ndf=8",
    "train.epochs=1", "train.epochs_decay=0", "train.log_every=4",
    "search.population=4", "search.generations=1", "search.eval_images=3", "search.eval_size=32",
    "finetune.epochs=1", "finetune.epochs_decay=0", "finetune.log_every=4",
    "export.formats=[safetensors]", "export.check_size=32",
    "bench.size=32", "bench.warmup=1", "bench.repeats=2", "bench.threads=1",
]


def tiny_sets() -> list:
    return [a for s in TINY_DEMO for a in ("--set", s)]


def mixed_size_photos(root: Path) -> Path:
    """A user's data set whose test photos differ in size (and in aspect)."""
    import numpy as np
    from PIL import Image

    make_image_folder(root, n=6, size=32, splits=("trainA", "trainB"))
    rng = np.random.default_rng(1)
    for split in ("testA", "testB"):
        (root / split).mkdir(parents=True)
        for i, (w, h) in enumerate([(32, 32), (48, 36), (30, 41)]):
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / split / f"p{i}.jpg")
    return root


def test_compress_and_demo_on_photos_of_mixed_sizes_write_the_report(tmp_path, capsys):
    """`coevo compress --data MYPHOTOS` writes report.md, grids and checks (as the README says), and
    `coevo demo --data MYPHOTOS` (here resuming that run) no longer fails in the report on mixed sizes."""
    photos = mixed_size_photos(tmp_path / "photos")
    before = snapshot(photos)
    out = tmp_path / "run"
    config = REPO / "configs" / "demo.yaml"
    argv = ["--threads", "1", "compress", "--config", str(config), "--out", str(out), "--data", str(photos),
            *tiny_sets()]
    assert main(argv) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert f"report: {out / 'report.md'}" in printed
    for name in ("report.md", "report.json", "grid_AtoB.png", "grid_BtoA.png"):
        assert (out / name).is_file(), name
    report = json.loads((out / "report.json").read_text())
    assert report["data"]["root"] == str(photos.resolve()) and report["directions"]["AtoB"]["checks"]
    (out / "report.md").unlink()
    assert main(["--threads", "1", "demo", "--config", str(config), "--out", str(out), "--data", str(photos),
                 "--resume", *tiny_sets()]) == 0, capsys.readouterr().err
    assert (out / "report.md").is_file() and "demo finished" in capsys.readouterr().out
    assert snapshot(photos) == before  # the user's photos are only read


def test_demo_with_a_data_path_that_does_not_exist_is_an_error(tmp_path, capsys):
    out = tmp_path / "run"
    typo = tmp_path / "my_photso"
    refused(capsys, ["demo", "--out", out, "--data", typo], f"--data {typo} does not exist")
    assert not typo.exists() and not out.exists()
    (tmp_path / "file.txt").write_text("not a folder")
    refused(capsys, ["compress", "--config", REPO / "configs" / "demo.yaml", "--out", out, "--data",
                     tmp_path / "file.txt"], "is not a folder")
    assert not out.exists()


def test_help_does_not_load_torch():
    """`coevo --help` answers in well under a second only if it never imports torch (timed in
    benchmarks/cli_startup.py; here only whether torch is loaded)."""
    code = ("import sys\nimport coevo\nfrom coevo.cli import build_parser\nbuild_parser()\n"
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))")
    proc = subprocess.run([sys.executable, "-c", code], env=PROC_ENV, capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]", proc.stdout[:300]


def test_help_names_every_export_format_and_bench_backend():
    """The CLI spells out the format and backend names so that its help need not import torch."""
    import coevo.deploy.backends
    import coevo.cli.bench
    import coevo.cli.export
    import coevo.deploy.export

    assert coevo.cli.export.FORMATS == coevo.deploy.export.FORMATS
    assert coevo.cli.bench.BACKENDS == coevo.deploy.backends.BACKENDS
