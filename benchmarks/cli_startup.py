"""How long `coevo --help` takes to answer: a new process each time, median of 5 (target: under 1 s).

The command must not load torch to print its help (``coevo`` and ``coevo.cli`` import their
heavy modules on first use). Also times ``coevo train --help`` and ``python -m coevo --help``,
and records whether building the parser loads torch.

    python benchmarks/cli_startup.py [--repeats 5] [--out benchmarks/results]

Prints the result as JSON and writes ``cli_startup.json`` into --out.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Sequence

def coevo_command() -> List[str]:
    """The ``coevo`` console script next to this Python (what a user types), else ``python -m coevo``."""
    script = Path(sys.executable).with_name("coevo")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "coevo"]


def cases() -> Dict[str, List[str]]:
    coevo = coevo_command()
    return {"coevo --help": [*coevo, "--help"], "coevo train --help": [*coevo, "train", "--help"],
            "python -m coevo --help": [sys.executable, "-m", "coevo", "--help"]}


# Whether building the whole parser (every subcommand) and importing coevo load torch.
TORCH_CHECK = ("import sys\nimport coevo\nfrom coevo.cli import build_parser\nbuild_parser()\n"
               "print('torch' in sys.modules)")


def time_command(command: Sequence[str], repeats: int) -> Dict:
    seconds: List[float] = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run(command, capture_output=True, check=True)
        seconds.append(time.perf_counter() - t0)
    return {"command": " ".join(command), "median_s": round(statistics.median(seconds), 3),
            "min_s": round(min(seconds), 3), "max_s": round(max(seconds), 3),
            "runs_s": [round(s, 3) for s in seconds]}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5, help="processes per case (default 5; the median is reported)")
    p.add_argument("--out", default="benchmarks/results", help="output folder (default benchmarks/results)")
    args = p.parse_args(argv)
    # the whole process counts, interpreter start included; one warm-up run first (file cache)
    commands = cases()
    subprocess.run(commands["coevo --help"], capture_output=True, check=True)
    loads_torch = subprocess.run([sys.executable, "-c", TORCH_CHECK], capture_output=True, text=True,
                                 check=True).stdout.strip().endswith("True")
    result = {
        "what": "wall time of a new process answering each command (median of --repeats)",
        "target_s": 1.0,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "help_loads_torch": loads_torch,
        "cases": {name: time_command(command, args.repeats) for name, command in commands.items()},
    }
    result["meets_target"] = result["cases"]["coevo --help"]["median_s"] < result["target_s"]
    text = json.dumps(result, indent=2)
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cli_startup.json").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
