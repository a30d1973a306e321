"""Hostile outputs: no command writes into or deletes its own inputs, or a folder holding them, and a
coevo marker alone does not make a folder of user files deletable. Each case is refused with exit 2,
one error line, no traceback, and leaves every file where and as it was. Tiny models, CLI in-process."""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from coevo import save_generator
from coevo.cli import main
from coevo.config import config_from_dict, dump_config
from coevo.data.synthetic import make_synthetic_dataset
from coevo.models import load_generator
from coevo.models.teacher import find_teacher
from coevo.prune import Genome
from coevo.core.runs import RUN_MARKER, mark_run_dir
from coevo.train.teacher import build_cyclegan, save_teacher

from conftest import make_image_folder
from test_safety import one_error_line, user_folder, write_image

DEMO = str(Path(__file__).resolve().parents[1] / "configs" / "demo.yaml")
# small enough that a command which wrongly got past its checks would still end in seconds
TINY = ["--set", "model.ngf=4", "--set", "model.n_blocks=1", "--set", "model.ndf=4",
        "--set", "data.load_size=32", "--set", "data.crop_size=32", "--set", "train.epochs=1",
        "--set", "train.epochs_decay=0", "--set", "search.generations=1", "--set", "search.population=4"]


def state(root: Path) -> dict:
    """Every entry under ``root``: a file's bytes, a link's target, or the kind of anything else."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(folder) / name
            mode = p.lstat().st_mode
            if stat.S_ISLNK(mode):
                found[p.relative_to(root)] = ("link", os.readlink(p))
            elif stat.S_ISREG(mode):
                found[p.relative_to(root)] = ("file", p.read_bytes())
            else:
                found[p.relative_to(root)] = ("dir" if stat.S_ISDIR(mode) else "special", stat.S_IFMT(mode))
    return found


def refused(argv: list, capsys, root: Path) -> str:
    """Run the CLI; it must exit 2 with one error line and leave everything under ``root`` as it was."""
    before = state(root)
    assert main(argv) == 2
    line = one_error_line(capsys, argv[0])
    assert state(root) == before
    return line


def tiny_cfg(data: Path):
    return config_from_dict({"data": {"root": str(data), "synthetic": False, "load_size": 32, "crop_size": 32,
                                      "val_fraction": 0.25},
                             "model": {"ngf": 4, "n_blocks": 1, "ndf": 4},
                             "finetune": {"epochs": 1, "epochs_decay": 0, "max_steps_per_epoch": 1}})


@pytest.fixture
def data(tmp_path) -> Path:
    return make_image_folder(tmp_path / "data", n=2, size=32)


@pytest.fixture
def teacher(tmp_path, data) -> Path:
    """A coevo teacher run: its marker, G_A/G_B/D_A/D_B and the reference-named files."""
    folder = tmp_path / "runs" / "teacher"
    folder.mkdir(parents=True)
    mark_run_dir(folder, "train")
    save_teacher(build_cyclegan(tiny_cfg(data).model, seed=0), folder)
    return folder


@pytest.fixture
def search_run(tmp_path, teacher, data) -> Path:
    """What `coevo search` leaves: marker, config.yaml, teacher.json, genomes/best_G_{A,B}.json."""
    out = tmp_path / "search"
    (out / "genomes").mkdir(parents=True)
    mark_run_dir(out, "search")
    dump_config(tiny_cfg(data), out / "config.yaml")
    (out / "teacher.json").write_text(json.dumps(find_teacher(teacher).to_dict()))
    arch = load_generator(teacher / "G_A.pt").arch
    for name, offset in (("best_G_A", 0), ("best_G_B", 1)):
        Genome.from_kept(arch, {n: list(range(offset, w, 2)) for n, w in arch.widths.items()}).save_json(
            out / "genomes" / f"{name}.json")
    return out


@pytest.fixture
def generator_file(tiny_generator, tmp_path) -> Path:
    return save_generator(tiny_generator, tmp_path / "models" / "G_A.pt")


@pytest.fixture
def photos(tmp_path) -> Path:
    d = tmp_path / "photos"
    d.mkdir()
    for i, name in enumerate(("a.png", "b.png")):
        write_image(d / name, seed=i)
    return d


# ----------------------------------------------------------------------------- --out is the command's own input
def test_finetune_force_out_is_its_own_search_run(search_run, tmp_path, capsys):
    line = refused(["finetune", "--search", str(search_run), "--out", str(search_run), "--force"], capsys, tmp_path)
    assert "search run" in line and "--out" in line


@pytest.mark.parametrize("command", ["search", "compress"])
def test_force_out_is_its_own_teacher(command, teacher, data, tmp_path, capsys):
    config = ["--config", DEMO] if command == "compress" else []
    for out in (teacher, teacher.parent):  # the teacher's folder, and a folder holding it
        argv = [command, *config, "--teacher", str(teacher), "--data", str(data), "--out", str(out), "--force",
                *TINY]
        assert "teacher" in refused(argv, capsys, tmp_path)


# ----------------------------------------------------------------------------- user files in or under --out
@pytest.mark.parametrize("command", ["train", "compress"])
def test_out_is_a_parent_of_the_data_folder(command, tmp_path, capsys):
    project = tmp_path / "project"
    data = make_image_folder(project / "data", n=2, size=32)
    mark_run_dir(project, "train")  # even a folder that looks like a run
    for flags in ([], ["--force"], ["--resume"]):
        argv = [command, "--config", DEMO, "--data", str(data), "--out", str(project), *flags, *TINY]
        assert "data folder" in refused(argv, capsys, tmp_path)
    # and a run folder inside the data folder
    argv = [command, "--config", DEMO, "--data", str(data), "--out", str(data / "trainA" / "run"), *TINY]
    assert "is inside the data folder" in refused(argv, capsys, tmp_path)


def test_out_holds_user_files_next_to_a_marker(data, generator_file, tmp_path, capsys):
    mine = user_folder(tmp_path / "mine")
    make_image_folder(mine, n=1, size=32, splits=("trainA",))
    (mine / RUN_MARKER).write_text("{}")
    for argv in (["train", "--config", DEMO, "--data", str(data), "--out", str(mine), "--force", *TINY],
                 ["export", "--run", str(generator_file), "--out", str(mine), "--formats", "safetensors",
                  "--check-size", "8", "--force"]):
        line = refused(argv, capsys, tmp_path)
        assert "thesis.tex" in line and "coevo did not write" in line


def test_resume_never_redoes_a_stage_folder_holding_user_files(data, tmp_path, capsys):
    run = tmp_path / "run"
    (run / "teacher").mkdir(parents=True)
    mark_run_dir(run, "compress")
    (run / "teacher" / "notes.txt").write_text("mine")
    assert main(["compress", "--config", DEMO, "--data", str(data), "--out", str(run), "--resume", *TINY]) == 2
    line = one_error_line(capsys, "compress")
    assert "notes.txt" in line and "coevo did not write" in line
    assert (run / "teacher" / "notes.txt").read_text() == "mine"


def test_synthetic_force_over_a_folder_holding_user_files(tmp_path, capsys):
    sets = make_synthetic_dataset(tmp_path / "set", size=16, n_train=1, n_test=1)
    write_image(sets / "trainA" / "horse.png")  # the user's photo among the rendered ones
    (sets / "testB" / "notes").mkdir()
    line = refused(["data", "synthetic", "--out", str(sets), "--size", "16", "--n-train", "2", "--n-test", "1",
                    "--force"], capsys, tmp_path)
    assert "trainA/horse.png" in line and "testB/notes" in line


def test_bench_out_into_a_user_folder(generator_file, tmp_path, capsys):
    mine = user_folder(tmp_path / "mine")
    (mine / "bench.json").write_text("my own numbers")
    (mine / "bench.png").write_bytes(b"my own plot")
    argv = ["bench", "--model", str(generator_file), "--size", "16", "--repeats", "1", "--warmup", "0"]
    assert "coevo did not write" in refused([*argv, "--out", str(mine)], capsys, tmp_path)
    # nor into the folder of a model it times
    assert "--model file" in refused([*argv, "--out", str(generator_file.parent)], capsys, tmp_path)


def special_file(path: Path) -> Path:
    """A character device (as /dev/null) where the system allows making one, else a named pipe."""
    try:
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except (PermissionError, OSError):
        os.mkfifo(path)
    return path


def test_device_node_given_as_out(generator_file, tmp_path, capsys):
    # with ground truth, so that evaluate has something to measure and gets as far as its --out
    data = make_image_folder(tmp_path / "data", n=2, size=32,
                             splits=("trainA", "trainB", "testA", "testB", "testA_gt_B", "testB_gt_A"))
    node = special_file(tmp_path / "null")
    link = tmp_path / "null_link"
    link.symlink_to(node)
    for out in (node, link):
        for argv in (["prune", "--generator", str(generator_file), "--out", str(out), "--size", "16"],
                     ["evaluate", "--model", str(generator_file), "--data", str(data), "--out", str(out),
                      "--no-fid"],
                     ["export", "--run", str(generator_file), "--out", str(out), "--formats", "safetensors"],
                     ["bench", "--model", str(generator_file), "--size", "16", "--out", str(out)]):
            assert "device, pipe or socket" in refused(argv, capsys, tmp_path)
    assert not stat.S_ISREG(node.lstat().st_mode)


# ----------------------------------------------------------------------------- translate
def translate_argv(model, source, output, *extra) -> list:
    return ["translate", "--model", str(model), "--input", str(source), "--output", str(output), *extra]


def test_translate_output_is_a_subfolder_of_the_input(generator_file, photos, tmp_path, capsys):
    for output in (photos / "out", photos / "out" / "deeper"):
        line = refused(translate_argv(generator_file, photos, output), capsys, tmp_path)
        assert "is inside the folder of the input images" in line
    (tmp_path / "photos_link").symlink_to(photos, target_is_directory=True)
    line = refused(translate_argv(generator_file, tmp_path / "photos_link", photos / "out"), capsys, tmp_path)
    assert "is inside the folder of the input images" in line


def test_translate_inputs_are_symlinks(generator_file, photos, tmp_path, capsys):
    links = tmp_path / "links"
    links.mkdir()
    for p in photos.iterdir():
        (links / p.name).symlink_to(p)
    (tmp_path / "photos_link").symlink_to(photos, target_is_directory=True)
    for source, output, extra in ((links, photos, ()),  # the folder the links point into
                                  (links, links, ("--overwrite",)),  # the links replaced by translations
                                  (links / "a.png", photos, ()), (links / "a.png", links, ("--overwrite",)),
                                  (tmp_path / "photos_link", photos, ()),
                                  (photos, tmp_path / "photos_link", ("--overwrite",))):
        line = refused(translate_argv(generator_file, source, output, *extra), capsys, tmp_path)
        assert "folder of the input images" in line


def test_translate_output_is_the_parent_of_another_input(generator_file, photos, tmp_path, capsys):
    deep = tmp_path / "deep" / "photos"
    deep.mkdir(parents=True)
    write_image(deep / "c.png", seed=3)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "c.png").symlink_to(deep / "c.png")
    write_image(mixed / "d.png", seed=4)
    for source, output in ((photos / "a.png", tmp_path), (photos, tmp_path), (mixed, tmp_path / "deep")):
        line = refused(translate_argv(generator_file, source, output), capsys, tmp_path)
        assert "holds the folder of the input images" in line


# ----------------------------------------------------------------------------- what still works
def test_outputs_next_to_inputs_still_work(generator_file, photos, tmp_path, capsys):
    """Siblings of inputs are fine: a pruned file next to its generator, translations next to the photos
    or, for an image given alone, in a new folder beside it."""
    assert main(["prune", "--generator", str(generator_file), "--out", str(generator_file.parent / "slim.pt"),
                 "--size", "16"]) == 0
    assert main(translate_argv(generator_file, photos, tmp_path / "translated")) == 0
    assert sorted(p.name for p in (tmp_path / "translated").iterdir()) == ["a.png", "b.png"]
    assert main(translate_argv(generator_file, photos / "a.png", photos / "a_translated")) == 0
    assert [p.name for p in (photos / "a_translated").iterdir()] == ["a.png"]
    capsys.readouterr()


def test_force_still_replaces_a_run_holding_only_what_coevo_writes(teacher, data, tmp_path, capsys):
    """A teacher run with samples, curves, its built-in data set and the leftovers of a kill is replaced;
    with one file of yours in it, at any depth, it is not."""
    from coevo.core.runs import RunDirError, check_removable

    make_synthetic_dataset(teacher / "data", size=16, n_train=1, n_test=1)
    (teacher / "samples").mkdir()
    write_image(teacher / "samples" / "epoch_001.png")
    (teacher / ".data.ab12.partial" / "trainA").mkdir(parents=True)  # a render a kill interrupted
    (teacher / ".checkpoint.pt.x1y2.tmp").write_bytes(b"half")
    (teacher / "tensorboard" / "train").mkdir(parents=True)
    (teacher / "tensorboard" / "train" / "events.out.tfevents.1733300000.host.1.0").write_bytes(b"curves")
    assert check_removable(teacher) == teacher
    (teacher / "samples" / "mine.txt").write_text("mine")
    with pytest.raises(RunDirError, match="samples/mine.txt"):
        check_removable(teacher)
    (teacher / "samples" / "mine.txt").unlink()
    write_image(teacher / "data" / "testA" / "holiday.png")
    with pytest.raises(RunDirError, match="data/testA/holiday.png"):
        check_removable(teacher)
    (teacher / "data" / "testA" / "holiday.png").unlink()
    assert main(["train", "--config", DEMO, "--data", str(data), "--out", str(teacher), "--force", *TINY,
                 "--set", "train.max_steps_per_epoch=1", "--set", "train.sample_every=0"]) == 0
    assert (teacher / "G_A.pt").is_file() and not (teacher / "samples" / "epoch_001.png").exists()
    capsys.readouterr()
