"""torchrun: 2 CPU processes with gloo give the one-process search, train and fine-tune, resume, and survive a kill.

Every multi-process test launches ``python -m torch.distributed.run ... -m coevo`` with
one thread per process (results are bit-identical only at a fixed thread count).
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
import pytest
import torch
import yaml

from coevo.core import distributed
from coevo.cli import main
from coevo.config import ConfigError, config_from_dict, load_config
from coevo.data.folder import make_loader
from coevo.models import (DiscriminatorArch, GeneratorArch, NLayerDiscriminator, ResnetGenerator, load_generator,
                          save_discriminator, save_generator)
from coevo.models.io import safe_torch_load
from coevo.prune import Genome
from coevo.core.runs import RUN_MARKER, mark_run_dir, read_jsonl, restart_flags
from coevo.search import DIRECTIONS, run_search
from coevo.train.finetune import finetune
from coevo.train.teacher import train_teacher

from conftest import assert_same_tree, make_image_folder

SEARCH = {"population": 5, "generations": 3, "eval_images": 3, "eval_size": 32}
PROC_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


# ----------------------------------------------------------------------------- helpers
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_cmd(args: Sequence[str], nproc: int = 2, launcher: Sequence[str] = ()) -> List[str]:
    launcher = list(launcher) or ["--master_port", str(free_port())]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), *launcher,
            "-m", "coevo", "--threads", "1", *args]


def torchrun(args: Sequence[str], nproc: int = 2, launcher: Sequence[str] = (), timeout: float = 120):
    proc = subprocess.run(torchrun_cmd(args, nproc, launcher), env=PROC_ENV, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def workers(agent: int) -> Dict[int, int]:
    """rank -> pid of the worker processes torchrun ``agent`` runs now."""
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) != agent:
                continue
            env = dict(kv.split("=", 1) for kv in (d / "environ").read_text().split("\0") if "=" in kv)
        except (OSError, IndexError, ValueError):
            continue
        if "RANK" in env:
            out[int(env["RANK"])] = int(d.name)
    return out


def stop(job: subprocess.Popen) -> None:
    """End a torchrun job still running, and its workers (which live in sessions of their own)."""
    if job.poll() is not None:
        return
    pids = workers(job.pid)
    job.terminate()  # torchrun stops its workers on SIGTERM
    try:
        job.wait(timeout=30)
    except subprocess.TimeoutExpired:
        job.kill()
    for pid in pids.values():
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

def kill_a_rank_once(args, ready) -> str:
    """Run ``coevo ARGS`` under torchrun with one restart allowed, SIGKILL rank 1 once ``ready()``,
    and check the job restarted, resumed and succeeded; returns its output."""
    job = subprocess.Popen(torchrun_cmd(args, launcher=["--master_port", str(free_port()), "--max-restarts", "1"]),
                           env=PROC_ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_until(ready, job)
        os.kill(workers(job.pid)[1], signal.SIGKILL)
        output, _ = job.communicate(timeout=120)
    finally:
        stop(job)
    assert job.returncode == 0, output[-3000:]
    assert "torchrun restart 1: resuming" in output
    return output



def wait_until(check, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        try:
            if check():
                return
        except (OSError, RuntimeError, EOFError, KeyError):
            pass  # a file being replaced
        time.sleep(0.02)
    raise AssertionError(f"the job ended (code {proc.poll()}) or timed out before the point to interrupt it")


def history(run_dir) -> List[Dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in read_jsonl(Path(run_dir) / "history.jsonl")]


def best_genomes(run_dir):
    return {d: Genome.load_json(Path(run_dir) / "genomes" / f"best_{d}.json") for d in DIRECTIONS}


def assert_same_search(a, b) -> None:
    assert history(a) == history(b)
    assert best_genomes(a) == best_genomes(b)
    sa, sb = safe_torch_load(Path(a) / "state.pt"), safe_torch_load(Path(b) / "state.pt")
    assert sa["rng_state"] == sb["rng_state"] and sa["generation"] == sb["generation"]
    for d in DIRECTIONS:
        for k in ("bits", "terms"):
            assert torch.equal(sa["populations"][d][k], sb["populations"][d][k]), (d, k)
    assert sa["cache"]["keys"] == sb["cache"]["keys"] and torch.equal(sa["cache"]["rows"], sb["cache"]["rows"])


def losses_only(run) -> List[Dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in read_jsonl(Path(run) / "log.jsonl")]


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist_env")
    data = make_image_folder(root / "data", n=8, size=32)
    teacher = root / "teacher"
    teacher.mkdir()
    torch.manual_seed(0)
    arch = GeneratorArch.full(ngf=4, n_blocks=2)
    save_generator(ResnetGenerator(arch), teacher / "G_A.pt")
    save_generator(ResnetGenerator(arch), teacher / "G_B.pt")
    save_discriminator(NLayerDiscriminator(DiscriminatorArch(ndf=4)), teacher / "D_A.pt")
    save_discriminator(NLayerDiscriminator(DiscriminatorArch(ndf=4)), teacher / "D_B.pt")
    return {"root": root, "data": data, "teacher": teacher}


def data_section(env) -> Dict:
    return {"root": str(env["data"]), "synthetic": False, "load_size": 36, "crop_size": 32}


def search_yaml(env, path: Path, **search) -> Path:
    path.write_text(yaml.safe_dump({"data": {**data_section(env), "load_size": 32},
                                    "search": {**SEARCH, **search}}))
    return path


def search_args(env, cfg: Path, out: Path, *extra: str) -> List[str]:
    return ["search", "--config", str(cfg), "--teacher", str(env["teacher"]), "--out", str(out),
            "--no-progress", *extra]


@pytest.fixture(scope="module")
def reference(env):
    """The one-process search (one thread) every multi-process search must reproduce."""
    torch.set_num_threads(1)
    cfg = load_config(search_yaml(env, env["root"] / "search.yaml"))
    return run_search(cfg, env["root"] / "reference", teacher=env["teacher"], progress=False).run_dir


# Tiny teacher training: 8 images, 4 steps of 2 images per epoch.
TRAIN = {"model": {"ngf": 4, "n_blocks": 1, "ndf": 4},
         "train": {"epochs": 1, "epochs_decay": 1, "batch_size": 2, "log_every": 1, "pool_size": 0,
                   "sample_images": 2}}


def train_yaml(env, path: Path, **train) -> Path:
    path.write_text(yaml.safe_dump({"data": data_section(env), "model": TRAIN["model"],
                                    "train": {**TRAIN["train"], **train}}))
    return path


# ----------------------------------------------------------------------------- in-process pieces
def test_assign_balances_and_keeps_items_where_they_are_cheap():
    def even(n, world):
        return distributed.assign([[1.0] * world for _ in range(n)])

    assert even(5, 2) == [0, 1, 0, 1, 0] and even(0, 2) == []
    # items cached on rank 1 (cost 1 there, 2.5 elsewhere) stay there while that is the quicker
    assert distributed.assign([[2.5, 1.0]] * 4) == [0, 1, 1, 1]
    assert distributed.assign([[1.0, 2.5]] * 10 + [[2.5, 1.0]] * 5).count(0) == 9
    assert distributed.assign([[2.5, 2.5], [1.0, 2.5], [2.5, 1.0], [2.5, 1.0]]) == [0, 0, 1, 1]


def test_one_process_helpers_are_plain_calls():
    assert not distributed.is_distributed() and distributed.is_main() and distributed.world_size() == 1
    assert distributed.on_main(lambda x: x + 1, 1) == 2
    assert distributed.shard(lambda x: 2 * x, [1, 2, 3]) == ([2, 4, 6], [0, 0, 0])
    assert distributed.all_gather("a") == ["a"] and distributed.broadcast(3) == 3
    distributed.check_same("anything", "nothing")


def test_rank_shares_together_are_the_one_process_batches(image_folder):
    from coevo.data import UnpairedImageDataset

    ds = UnpairedImageDataset(make_image_folder(image_folder.parent / "ten", n=10), "train", 36, 32)
    one = [b["A_path"] for b in make_loader(ds, batch_size=4, seed=3, epoch=2)]
    shares = [[b["A_path"] for b in make_loader(ds, batch_size=2, seed=3, epoch=2, replicas=2, rank=r)]
              for r in range(2)]
    assert [len(s) for s in shares] == [3, 3]
    for k, batch in enumerate(one):
        assert sorted(shares[0][k] + shares[1][k]) == sorted(batch)


def test_a_restart_resumes_only_its_own_run_and_never_deletes_another(tmp_path, monkeypatch):
    ours, theirs, fresh = tmp_path / "ours", tmp_path / "theirs", tmp_path / "fresh"
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-1")
    mark_run_dir(ours, "search")
    assert json.loads((ours / RUN_MARKER).read_text())["job"] == "rdzv:job-1"
    (ours / "config.yaml").write_text("{}")
    assert restart_flags(ours, False, True) == (False, True)  # the first attempt keeps its flags
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-0")
    mark_run_dir(theirs, "search")
    (theirs / "config.yaml").write_text("{}")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-1")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    assert restart_flags(ours, False, False) == (True, False)  # resumed
    assert restart_flags(ours, False, True) == (True, False)  # --force of the first attempt: not again
    assert restart_flags(theirs, False, True) == (False, False)  # another job's run: never deleted
    assert restart_flags(theirs, True, False) == (True, False)  # --resume given: still resumed
    assert restart_flags(fresh, False, False) == (False, False)
    (ours / "config.yaml").unlink()  # killed before it could be resumed: ours to start again
    assert restart_flags(ours, False, False) == (False, True)


def test_amp_needs_cuda_and_is_named():
    with pytest.raises(ConfigError, match=r"train\.amp=bf16 needs device=cuda"):
        config_from_dict({"train": {"amp": "bf16"}})
    with pytest.raises(ConfigError, match=r"search\.amp must be one of"):
        config_from_dict({"search": {"amp": "fp8"}})
    assert config_from_dict({}).finetune.amp == "none"


def test_one_process_commands_refuse_torchrun(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert main(["bench", "--model", str(tmp_path / "G.pt"), "--out", str(tmp_path / "b")]) == 2
    assert "start it without torchrun" in capsys.readouterr().err


def test_batch_must_divide_among_processes(monkeypatch):
    from coevo.train.loop import LoopSettings

    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    with pytest.raises(ConfigError, match=r"train\.batch_size \(3\) must be a multiple of the 2 processes"):
        LoopSettings(epochs=1, batch_size=3)
    assert LoopSettings(epochs=1, batch_size=4).batch_size == 4


# ----------------------------------------------------------------------------- search
def test_search_on_two_processes_equals_one(env, reference, tmp_path):
    out = tmp_path / "dist"
    torchrun(search_args(env, search_yaml(env, tmp_path / "cfg.yaml"), out))
    assert_same_search(out, reference)
    assert len(read_jsonl(out / "history.jsonl")) == SEARCH["generations"] + 1  # one writer
    ref = json.loads((reference / "search.json").read_text())
    got = json.loads((out / "search.json").read_text())
    assert got["best"] == ref["best"] and got["evaluations"] == ref["evaluations"]
    assert got["cache_hits"] == ref["cache_hits"]


@pytest.mark.slow
def test_search_resumes_under_torchrun(env, reference, tmp_path):
    out, cfg = tmp_path / "dist", search_yaml(env, tmp_path / "cfg.yaml")
    torchrun(search_args(env, cfg, out, "--set", "search.generations=1"))
    assert safe_torch_load(out / "state.pt")["generation"] == 1
    torchrun(["search", "--out", str(out), "--resume", "--no-progress", "--set", "search.generations=3"])
    assert_same_search(out, reference)


def test_two_nodes_on_one_machine_equal_one_process(env, reference, tmp_path):
    """``--nnodes 2``: two torchrun launches (one per "node", one process each) meet at one address."""
    out, cfg, port = tmp_path / "dist", search_yaml(env, tmp_path / "cfg.yaml"), free_port()
    nodes = [subprocess.Popen(torchrun_cmd(search_args(env, cfg, out), nproc=1, launcher=[
        "--nnodes", "2", "--node_rank", str(rank), "--master_addr", "127.0.0.1", "--master_port", str(port)]),
        env=PROC_ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for rank in (0, 1)]
    try:
        for node in nodes:
            output, _ = node.communicate(timeout=120)
            assert node.returncode == 0, output[-3000:]
    finally:
        for node in nodes:
            stop(node)
    assert_same_search(out, reference)


@pytest.mark.slow
def test_a_killed_rank_restarts_and_the_search_ends_as_uninterrupted(env, tmp_path):
    """SIGKILL to rank 1 mid-search; torchrun --max-restarts 1 restarts both ranks, which resume."""
    generations = 100
    cfg = search_yaml(env, tmp_path / "cfg.yaml", generations=generations)
    out = tmp_path / "killed"
    output = kill_a_rank_once(search_args(env, cfg, out),
                              lambda: safe_torch_load(out / "state.pt")["generation"] >= 2)
    assert "Traceback" not in output  # the surviving rank says what happened in one line, or is stopped quietly
    torch.set_num_threads(1)
    whole = run_search(load_config(cfg), tmp_path / "whole", teacher=env["teacher"], progress=False)
    assert_same_search(out, whole.run_dir)


# ----------------------------------------------------------------------------- train and fine-tune
@pytest.mark.slow
def test_train_on_two_processes_is_the_one_process_step_and_loads_in_one(env, tmp_path):
    """Same effective batch (2 = 2 processes x 1 image) and no image pool: the same math, up to rounding."""
    cfg_path = train_yaml(env, tmp_path / "train.yaml")
    out = tmp_path / "dist"
    torchrun(["train", "--config", str(cfg_path), "--out", str(out)])
    torch.set_num_threads(1)
    one = train_teacher(load_config(cfg_path), tmp_path / "one")
    dist_log, one_log = losses_only(out), losses_only(one)
    assert [(r["kind"], r["step"]) for r in dist_log] == [(r["kind"], r["step"]) for r in one_log]
    for a, b in zip(dist_log, one_log):  # every logged loss (means over the ranks) agrees to rounding
        for k, v in b.items():
            if isinstance(v, float):
                assert a[k] == pytest.approx(v, rel=1e-5, abs=1e-7), (b["step"], k)
    # So do the generators' outputs. Not every weight does: a conv bias just before an InstanceNorm
    # gets a zero gradient up to rounding, which Adam turns into steps of +-lr either way.
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    for name in ("G_A", "G_B"):
        with torch.no_grad():
            assert torch.allclose(load_generator(out / f"{name}.pt")(x), load_generator(one / f"{name}.pt")(x),
                                  atol=1e-5), name
    ckpt = safe_torch_load(out / "checkpoint.pt")
    assert ckpt["world_size"] == 2 and len(ckpt["rank_pools"]) == 2
    for name, net in ckpt["nets"].items():
        assert not any(k.startswith("module.") for k in net), name
    # the run's files load in one process, and one process can resume (here: finish) the run
    assert isinstance(load_generator(out / "G_A.pt"), ResnetGenerator)
    assert train_teacher(load_config(out / "config.yaml"), out, resume=True) == out


@pytest.fixture(scope="module")
def ddp_reference(env, tmp_path_factory):
    """An uninterrupted 2-process training run with image pools (each rank has its own)."""
    root = tmp_path_factory.mktemp("ddp")
    cfg = train_yaml(env, root / "train.yaml", epochs=10, epochs_decay=0, pool_size=2, sample_every=0,
                     log_every=2)
    torchrun(["train", "--config", str(cfg), "--out", str(root / "whole")])
    return cfg, root / "whole"


def assert_same_training(a: Path, b: Path) -> None:
    ca, cb = safe_torch_load(a / "checkpoint.pt"), safe_torch_load(b / "checkpoint.pt")
    for key in ("nets", "optimizers", "schedulers", "pools", "rank_pools", "epoch", "global_step", "log_records"):
        assert_same_tree(ca[key], cb[key], key)
    assert losses_only(a) == losses_only(b)


@pytest.mark.slow
def test_train_resumes_under_torchrun_bit_identically(ddp_reference, tmp_path):
    cfg, whole = ddp_reference
    out = tmp_path / "run"
    job = subprocess.Popen(torchrun_cmd(["train", "--config", str(cfg), "--out", str(out)]), env=PROC_ENV,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: 1 <= safe_torch_load(out / "checkpoint.pt")["epoch"] < 8, job)
        job.send_signal(signal.SIGTERM)  # torchrun stops its workers
        job.wait(timeout=60)
    finally:
        stop(job)
    assert not (out / "summary.json").exists(), "the run finished before it was interrupted"
    torchrun(["train", "--out", str(out), "--resume"])
    assert_same_training(out, whole)


@pytest.mark.slow
def test_a_killed_rank_restarts_and_training_ends_as_uninterrupted(ddp_reference, tmp_path):
    cfg, whole = ddp_reference
    out = tmp_path / "run"
    kill_a_rank_once(["train", "--config", str(cfg), "--out", str(out)],
                     lambda: 1 <= safe_torch_load(out / "checkpoint.pt")["epoch"] < 8)
    assert_same_training(out, whole)


@pytest.mark.slow
def test_finetune_on_two_processes_runs_resumes_and_loads_in_one(env, reference, tmp_path):
    out = tmp_path / "ft"
    args = ["finetune", "--search", str(reference), "--out", str(out), "--set", "finetune.epochs=2",
            "--set", "finetune.batch_size=2", "--set", "finetune.max_steps_per_epoch=2",
            "--set", "finetune.log_every=1"]
    torchrun(args)
    report = json.loads((out / "finetune.json").read_text())
    assert report["epochs"] == 2 and report["steps"] == 4
    ckpt = safe_torch_load(out / "checkpoint.pt")
    assert not any(k.startswith("module.") for k in ckpt["nets"]["G_A"])
    model = load_generator(out / "G_A.pt")
    assert dict(model.arch.widths) == best_genomes(reference)["G_A"].widths()
    before = losses_only(out)
    torchrun(args + ["--resume"])  # a finished run: resuming replays nothing and rewrites the same files
    assert losses_only(out) == before
    torch.set_num_threads(1)
    assert finetune(reference, out, resume=True) == out  # one process reads the 2-process checkpoint
    assert losses_only(out) == before


def test_distill_on_two_processes_is_the_one_process_run(env, reference, tmp_path):
    """The distill recipe has no image pools: two ranks sharing each batch give one process's run."""
    args = ["finetune", "--search", str(reference), "--set", "finetune.mode=distill", "--set", "finetune.epochs=2",
            "--set", "finetune.batch_size=2", "--set", "finetune.max_steps_per_epoch=2", "--set",
            "finetune.log_every=1"]
    torchrun(args + ["--out", str(tmp_path / "two")])
    torch.set_num_threads(1)
    finetune(reference, tmp_path / "one", overrides=[a for a in args[3:] if a != "--set"])
    report = json.loads((tmp_path / "two" / "finetune.json").read_text())
    assert report["recipe"] == "distill" and report["steps"] == 4 and report["teacher_cache"]["misses"] == 0
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    for name in ("G_A.pt", "G_B.pt"):
        # outputs, not weights: a conv bias in front of an instance norm has a zero gradient up to
        # rounding, which Adam scales up, so those biases differ while the networks do not
        with torch.no_grad():
            one, two = load_generator(tmp_path / "one" / name)(x), load_generator(tmp_path / "two" / name)(x)
        torch.testing.assert_close(one, two, rtol=1e-4, atol=1e-4, msg=name)


@pytest.mark.slow
def test_compress_on_two_processes(tmp_path):
    """Every stage under torchrun: teacher, search and fine-tune on both ranks, data/export/bench on rank 0."""
    repo = Path(__file__).resolve().parents[1]
    from test_pipeline import TINY

    out = tmp_path / "run"
    sets = [a for s in TINY + ["train.batch_size=2", "finetune.batch_size=2", "export.formats=[torchscript]"]
            for a in ("--set", s)]
    proc = torchrun(["compress", "--config", str(repo / "configs" / "demo.yaml"), "--out", str(out), *sets],
                    timeout=300)
    assert proc.stdout.count("compressed pair:") == 1  # printed once, by rank 0
    for stage in ("data", "teacher", "search", "finetune", "export", "bench"):
        assert (out / stage / "stage.json").is_file(), stage
    assert isinstance(load_generator(out / "finetune" / "G_A.pt"), ResnetGenerator)


# ----------------------------------------------------------------------------- mixed precision
@pytest.mark.gpu
def test_bf16_search_and_training_run_on_cuda_and_stay_close(env, tmp_path):
    """Skipped without CUDA. bf16 autocast: finite losses, fitness terms near float32's."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    results = {}
    for amp in ("none", "bf16"):
        cfg = load_config(search_yaml(env, tmp_path / f"s_{amp}.yaml", generations=1),
                          ["device=cuda", f"search.amp={amp}"])
        results[amp] = run_search(cfg, tmp_path / f"search_{amp}", teacher=env["teacher"], progress=False)
    for d in DIRECTIONS:  # generation 0 scores the same genomes both ways
        a, b = results["none"].history[0][d]["mean"], results["bf16"].history[0][d]["mean"]
        assert b["quality"] == pytest.approx(a["quality"], rel=0.05)
    cfg = load_config(train_yaml(env, tmp_path / "t.yaml"), ["device=cuda", "train.amp=bf16"])
    out = train_teacher(cfg, tmp_path / "train")
    assert all(np.isfinite(v) for r in read_jsonl(out / "log.jsonl") for v in r.values() if isinstance(v, float))
