"""Re-run the notebooks and save them with their outputs (what is committed), without Jupyter.

    python notebooks/execute.py                      # every notebook, against runs/demo
    COEVO_RUN=runs/h2z python notebooks/execute.py 01_style_transfer.ipynb

Each notebook runs in a fresh kernel with notebooks/ as its working directory and is
written back in place. Environment variables (COEVO_RUN, COEVO_QUICK) pass through.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent


def main(names: list[str]) -> int:
    paths = [HERE / n for n in names] if names else sorted(HERE.glob("*.ipynb"))
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        t0 = time.perf_counter()
        NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(HERE)}}).execute()
        nbformat.write(nb, path)
        print(f"{path.name}: {time.perf_counter() - t0:.0f} s, {path.stat().st_size / 1e3:.0f} kB")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
