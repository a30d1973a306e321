"""The notebooks under notebooks/ run end to end on a tiny pipeline run, and the run-reading API they use.

One tiny job (configs/tiny.yaml: 32 px, ngf 8, a few seconds per stage) is shared by the
session; each notebook then runs in a fresh kernel with COEVO_RUN pointing at it and
COEVO_QUICK=1, from notebooks/ as its working directory.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from coevo import Genome, Pipeline, load_config, open_run, read_search_run
from coevo.core.runs import RunDirError

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
CELL_TIMEOUT_S = 120
MAX_NOTEBOOK_BYTES = 1_000_000


# One thread: these models are so small that a second thread only waits on the first, and on a
# busy 2-core machine two threads ran the tiny job 10x slower (57 s against 6 s).
THREADS = 1


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("notebooks") / "run"
    previous = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        Pipeline(load_config(ROOT / "configs" / "tiny.yaml"), out).run()
    finally:
        torch.set_num_threads(previous)
    return out


def execute(path: Path, monkeypatch, run_dir: Path) -> "nbformat.NotebookNode":  # noqa: F821
    nbclient = pytest.importorskip("nbclient")
    nbformat = pytest.importorskip("nbformat")
    # The kernel inherits this process's environment.
    monkeypatch.setenv("COEVO_RUN", str(run_dir))
    monkeypatch.setenv("COEVO_QUICK", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("OMP_NUM_THREADS", str(THREADS))
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOK_DIR)}})
    client.execute()  # raises CellExecutionError naming the cell when one fails
    return nb


def test_there_are_notebooks():
    assert [p.name for p in NOTEBOOKS] == ["01_style_transfer.ipynb", "02_inference_benchmark.ipynb",
                                          "03_search_anatomy.ipynb"]


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, tiny_run, monkeypatch):
    nb = execute(path, monkeypatch, tiny_run)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count for c in code)
    shown = [o for c in code for o in c.outputs if o.output_type == "display_data"]
    assert shown, f"{path.name} displayed nothing"


@pytest.mark.notebook
def test_notebook_compresses_when_there_is_no_run(tmp_path, monkeypatch):
    nb = execute(NOTEBOOK_DIR / "03_search_anatomy.ipynb", monkeypatch, tmp_path / "missing")
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "compressing a tiny pair" in text
    assert not (tmp_path / "missing").exists()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebook_is_small_and_clean(path):
    """Committed with outputs (they read on a code host), but small and without stored errors."""
    assert path.stat().st_size < MAX_NOTEBOOK_BYTES
    nb = json.loads(path.read_text())
    errors = [o for c in nb["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors


def test_open_run_and_read_search_run(tiny_run):
    run = open_run(tiny_run)
    assert run.data_root == tiny_run / "data" and (run.data_root / "testA").is_dir()
    assert run.teacher.G_A.is_file() and all(p.is_file() for p in run.compressed.values())
    assert run.stages_done == ["data", "teacher", "search", "finetune", "export", "bench"]
    search = run.search()
    assert search.generations == list(range(run.config.search.generations + 1))
    for g in ("G_A", "G_B"):
        assert isinstance(search.best[g], Genome)
        assert len(search.series(g, "cycle")) == len(search.series(g, "fitness", "mean")) == len(search.history)
        assert search.best_widths(g)[-1] == search.best[g].widths()
    assert search.summary["generations"] == run.config.search.generations
    with pytest.raises(KeyError, match="terms"):
        search.series("G_A", "nope")
    assert read_search_run(tiny_run / "search").history == search.history


def test_open_run_names_what_is_missing(tmp_path):
    with pytest.raises(RunDirError, match="no config.yaml"):
        open_run(tmp_path)
    (tmp_path / "config.yaml").write_text("name: x\n")
    with pytest.raises(RunDirError, match="search, finetune not finished"):
        open_run(tmp_path)
    with pytest.raises(FileNotFoundError, match="best_G_A.json is missing"):
        read_search_run(tmp_path)
