"""Inference latency of generators, side by side, on every runtime coevo deploys to.

Backends (:mod:`coevo.deploy.backends`): eager PyTorch, TorchScript, torch.export, ONNX Runtime
fp32 and INT8 on CPUs, float16/bfloat16 CUDA graphs or ``torch.compile`` on CUDA.

Protocol (see benchmarks/README.md):

* one seeded random input ``batch x 3 x size x size`` in [-1, 1], built once per run;
* before any timing, each model runs once on a ``1 x 3 x size x size`` input and must return
  that shape: an exported file of another kind of network is refused, not timed;
* ``warmup`` untimed rounds, then ``repeats`` timed rounds. Every round runs every
  (model, backend) once, in an order that rotates each round, so a slow spell of a
  shared machine hits all models alike and their ratios hold;
* CPU: wall clock (``time.perf_counter``) around the call; CUDA: ``torch.cuda.Event``
  pairs with a synchronise; reported: median and 90th percentile in ms;
* ONNX Runtime sessions do not spin while idle, so they leave the cores to the next model;
* ``speedup_vs_first``: median of the first model on the same backend divided by this one
  (with the teacher first: the speed-up on one runtime, what compression buys);
  ``speedup_vs_first_eager``: median of the first model in eager PyTorch divided by this one
  (compression and runtime together, what a user of the eager teacher gains);
* MACs are exact counts from the architecture for one ``1 x 3 x size x size`` image,
  in both conventions (:data:`coevo.prune.macs.MAC_CONVENTIONS`); None when the model
  carries no architecture.
"""
from __future__ import annotations

import logging
import os
import statistics
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from .backends import (  # noqa: F401  (BACKENDS, native_backend: public here too)
    BACKENDS, REGISTRY, backends_for, native_backend, on_device,
)
from ..errors import CoevoError
from ..core.files import PathLike, atomic_save_figure, atomic_write_text
from .timing import cuda_event_ms, machine_info, rotating_rounds, wall_ms  # noqa: F401  (machine_info: public here too)
from ..errors import ConfigError

log = logging.getLogger(__name__)

MEMORY_NOTE = {
    "cuda": "peak_mem_mb: most GPU memory allocated by one forward beyond what was allocated before it "
            "(activations, workspace, output; weights excluded), torch.cuda.max_memory_allocated; "
            "None for ONNX Runtime, whose allocator torch cannot see",
    "cpu": "peak_mem_mb: not measured on CPU (None). torch keeps no high-water mark for its CPU "
           "allocator, and ru_maxrss is one process-wide maximum that interleaved runs cannot "
           "attribute to a single model",
}
LATENCY_NOTE = ("median and p90 of per-call latency after warm-up; models interleaved round-robin "
                "in a rotating order; CUDA timed with CUDA events after synchronisation; ONNX Runtime "
                "timed by wall clock around session.run (on CUDA that includes host<->device copies)")


@dataclass
class BenchResult:
    """Latency of one model on one backend. Latencies in ms; MACs for one 1x3xHxW image."""

    name: str
    backend: str
    params: Optional[int]
    macs_published: Optional[int]
    macs_flopcounter: Optional[int]
    latency_ms_median: float
    latency_ms_p90: float
    latencies: List[float]
    peak_mem_mb: Optional[float]
    speedup_vs_first: float
    size: int = 256
    batch: int = 1
    device: str = "cpu"
    threads: Optional[int] = None
    speedup_vs_first_eager: Optional[float] = None  # None when the first model has no eager run
    baseline: Optional[str] = None                  # the first model: what both speed-ups compare with


@dataclass
class _Runner:
    name: str
    backend: str
    call: Callable[[], Any]
    model: nn.Module
    latencies: List[float] = field(default_factory=list)
    peak_bytes: Optional[int] = None
    torch_timed: bool = True  # False: ONNX Runtime (wall clock, CUDA events cannot see its work)


# ----------------------------------------------------------------------------- backends
def _make_runner(name: str, model: nn.Module, backend: str, x: torch.Tensor, device: torch.device,
                 threads: Optional[int], tmp_dir: str) -> Optional[_Runner]:
    """A runner of ``model`` on ``backend``; None (logged) when the backend cannot run it here."""
    from .backends import BackendUnavailable, unavailable_reason

    spec = REGISTRY.lookup(backend)
    reason = unavailable_reason(backend, device)
    try:
        if reason is not None:
            raise BackendUnavailable(reason)
        call = spec.make(model, x, device, threads, tmp_dir)
        for _ in range(spec.prime_calls):
            call()
    except BackendUnavailable as e:
        log.warning("skipping %s on %s: %s", name, backend, e)
        return None
    except Exception as e:  # a runtime that fails to build here (no compiler for torch.compile, ...)
        if backend == "eager":
            raise
        log.warning("skipping %s on %s: it failed to build or run (%s: %s)", name, backend, type(e).__name__,
                    str(e).splitlines()[0] if str(e) else "")
        return None
    return _Runner(name, backend, call, model, torch_timed=spec.torch_timed)

# ----------------------------------------------------------------------------- timing
def _time_call(runner: _Runner, device: torch.device) -> float:
    if device.type == "cuda" and runner.torch_timed:
        ms, peak = cuda_event_ms(runner.call, device)
        runner.peak_bytes = max(runner.peak_bytes or 0, peak)
        return ms
    # CPU, or ONNX Runtime on CUDA: session.run returns with its outputs on the host, nothing to synchronise
    return wall_ms(runner.call)


def _interleaved(runners: Sequence[_Runner], device: torch.device, warmup: int, repeats: int) -> None:
    for _ in range(warmup):
        for r in runners:
            r.call()
    for r in rotating_rounds(runners, repeats):
        r.latencies.append(_time_call(r, device))


# ----------------------------------------------------------------------------- entry point
class BenchError(CoevoError, RuntimeError):
    """Nothing could be timed: no requested backend can run the given models here."""


def check_settings(size: int, batch: int, warmup: int, repeats: int, backends: Sequence[str] = ("eager",)) -> None:
    """Raise :class:`coevo.config.ConfigError` naming the first benchmark setting that cannot work."""
    from ..core.limits import MAX_BENCH_BATCH, MIN_SIZE, check_image_side

    unknown = [b for b in backends if b not in REGISTRY]
    if unknown or not backends:
        raise ConfigError(f"unknown backends {unknown or list(backends)}; choose from {list(REGISTRY)}")
    check_image_side(size, "--size", MIN_SIZE)
    if batch < 1 or batch > MAX_BENCH_BATCH:
        raise ConfigError(f"--batch must be >= 1 and at most {MAX_BENCH_BATCH}, got {batch}")
    if repeats < 1:
        raise ConfigError(f"--repeats must be >= 1, got {repeats}")
    if warmup < 0:
        raise ConfigError(f"--warmup must be >= 0, got {warmup}")


def benchmark_models(models: Mapping[str, Union[nn.Module, PathLike]], size: int = 256, batch: int = 1,
                     threads: Optional[int] = None, device: str = "cpu",
                     backends: Sequence[str] = ("eager",), warmup: int = 3, repeats: int = 20,
                     seed: int = 0, only: Optional[Mapping[str, Sequence[str]]] = None,
                     trust: bool = False) -> List[BenchResult]:
    """Time every model on every backend, interleaved (see the module docstring).

    ``models``: name -> module, or a path :func:`coevo.load_generator` accepts. The first
    model is the baseline of both speed-ups. An exported model (``.pt2``, ``.onnx``, ``.ts``)
    runs only on the backends its format allows (:func:`coevo.deploy.backends.allowed_backends`).
    ``only``: name -> backends, to time some models on fewer of ``backends``.
    A backend that cannot run here (e.g. a CUDA backend without CUDA) is skipped and logged.
    ``threads``: ``torch.set_num_threads`` for the run (restored afterwards) and ONNX
    Runtime's ``intra_op_num_threads``. ``trust``: paths to ``.pt2``/TorchScript files run their
    program (see :func:`coevo.load_generator`); otherwise they are rebuilt and timed as PyTorch.
    Returns one :class:`BenchResult` per (model, backend), models in the given order.
    """
    from ..models.io import load_generator

    from .exported import check_image_to_image

    check_settings(size=size, batch=batch, warmup=warmup, repeats=repeats, backends=backends)
    if not models:
        raise ValueError("benchmark_models needs at least one model")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BenchError("device 'cuda' asked for but torch sees no CUDA device")
    loaded = {name: (load_generator(m, trust=trust) if isinstance(m, (str, os.PathLike)) else m)
              for name, m in models.items()}
    with torch.inference_mode():
        for name, model in loaded.items():  # refuse any other kind of network before timing anything
            arch = getattr(model, "arch", None)
            # on the benchmark's device: a float16 program would crawl through the CPU's fp16 fallbacks
            probe = _random_input(1, arch.in_channels if arch is not None else 3, size, seed, dev)
            source = models[name] if isinstance(models[name], (str, os.PathLike)) else f"model {name!r}"
            check_image_to_image(on_device(model, dev), probe, source)

    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        with tempfile.TemporaryDirectory(prefix="coevo-bench-") as tmp, torch.inference_mode():
            runners = []
            for name, model in loaded.items():
                arch = getattr(model, "arch", None)
                x = _random_input(batch, arch.in_channels if arch is not None else 3, size, seed, dev)
                wanted = [b for b in backends if only is None or name not in only or b in only[name]]
                for backend in backends_for(name, model, wanted or backends, dev):
                    runner = _make_runner(name, model, backend, x, dev, threads, tmp)
                    if runner is not None:
                        runners.append(runner)
            if not runners:
                raise BenchError(f"nothing to time: no model could run on {', '.join(backends)} here "
                                 "(see the warnings above)")
            n = torch.get_num_threads()
            log.info("timing %d model/backend pairs: %d warm-up + %d timed rounds, %s, batch %d, %dx%d, %d thread%s",
                     len(runners), warmup, repeats, dev, batch, size, size, n, "" if n == 1 else "s")
            _interleaved(runners, dev, warmup, repeats)
        return _results(runners, size, batch, str(dev), threads or torch.get_num_threads())
    finally:
        torch.set_num_threads(previous_threads)


def _random_input(batch: int, channels: int, size: int, seed: int, device: torch.device) -> torch.Tensor:
    g = torch.Generator().manual_seed(int(seed))
    return (torch.rand((batch, channels, size, size), generator=g) * 2 - 1).to(device)


def add_speedups(results: Sequence[BenchResult]) -> Sequence[BenchResult]:
    """Fill both speed-ups of every result, in place; the first result's model is the baseline.

    ``speedup_vs_first``: against the baseline on the same backend (against the first model
    that ran on that backend when the baseline did not). ``speedup_vs_first_eager``:
    against the baseline in eager PyTorch (None when it has no eager run).
    """
    if not results:
        return results
    baseline = results[0].name
    same: Dict[str, float] = {}
    for r in results:  # the baseline's own medians first, then the first model on each other backend
        if r.name == baseline:
            same.setdefault(r.backend, r.latency_ms_median)
    for r in results:
        same.setdefault(r.backend, r.latency_ms_median)
    eager = same.get("eager") if any(r.name == baseline and r.backend == "eager" for r in results) else None
    for r in results:
        r.baseline = baseline
        r.speedup_vs_first = same[r.backend] / r.latency_ms_median
        r.speedup_vs_first_eager = eager / r.latency_ms_median if eager is not None else None
    return results


def _results(runners: Sequence[_Runner], size: int, batch: int, device: str, threads: int) -> List[BenchResult]:
    from ..prune import count_macs, count_params

    results: List[BenchResult] = []
    for r in runners:
        arch = getattr(r.model, "arch", None)
        if arch is not None:
            params: Optional[int] = count_params(arch)
        else:
            params = sum(p.numel() for p in r.model.parameters()) or None
        results.append(BenchResult(
            name=r.name, backend=r.backend, params=params,
            macs_published=count_macs(arch, size, size, "published") if arch is not None else None,
            macs_flopcounter=count_macs(arch, size, size, "flopcounter") if arch is not None else None,
            latency_ms_median=statistics.median(r.latencies), latency_ms_p90=float(np.percentile(r.latencies, 90)),
            latencies=list(r.latencies),
            peak_mem_mb=None if r.peak_bytes is None else r.peak_bytes / 2**20,
            speedup_vs_first=1.0, size=size, batch=batch, device=device, threads=threads,
        ))
    add_speedups(results)
    return results


# ----------------------------------------------------------------------------- reporting
def save_results(results: Sequence[BenchResult], path: PathLike, machine: Optional[Mapping[str, Any]] = None,
                 extra: Optional[Mapping[str, Any]] = None) -> Path:
    """Write results, machine info and the conventions used to a JSON file."""
    import json

    from ..prune.macs import MAC_CONVENTIONS

    devices = sorted({r.device.split(":")[0] for r in results})
    payload = {
        "format": "coevo.bench", "version": 1,
        "machine": dict(machine) if machine is not None else machine_info(devices[0] if devices else "cpu"),
        "conventions": {"macs": dict(MAC_CONVENTIONS), "latency": LATENCY_NOTE,
                        "memory": {d: MEMORY_NOTE[d] for d in devices if d in MEMORY_NOTE}},
        "results": [asdict(r) for r in results],
    }
    if extra:
        payload.update(extra)
    atomic_write_text(path, json.dumps(payload, indent=2) + "\n")
    return Path(path)


def _fmt_count(n: Optional[float], unit: float, digits: int = 2) -> str:
    return "?" if n is None else f"{n / unit:.{digits}f}"


def format_table(results: Sequence[BenchResult]) -> str:
    """Markdown table(s), one per (device, size, batch), with MACs in the published convention.

    ``speedup`` and ``MAC reduction`` are relative to the first model on the same backend;
    ``speedup / MAC reduction`` = 1 means the latency fell as much as the MACs did.
    ``vs first, eager`` is relative to the first model in eager PyTorch.
    """
    groups: Dict[tuple, List[BenchResult]] = {}
    for r in results:
        groups.setdefault((r.device, r.size, r.batch, r.threads), []).append(r)
    out = []
    for (device, size, batch, threads), rows in groups.items():
        first_macs: Dict[str, Optional[int]] = {}
        out.append(f"{device}, batch {batch}, {size}x{size}, {threads} threads. MACs: one 1x3x{size}x{size} image, "
                   "published convention (transposed convs per output pixel); FlopCounterMode figures in the JSON. "
                   f"Speed-ups against {rows[0].baseline or rows[0].name}.")
        out.append("")
        out.append("| model | backend | MACs (G) | params (M) | median ms | p90 ms | speedup | MAC reduction "
                   "| speedup / MAC reduction | vs first, eager | peak MB |")
        out.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in rows:
            base = first_macs.setdefault(r.backend, r.macs_published)
            reduction = base / r.macs_published if base and r.macs_published else None
            ratio = f"{r.speedup_vs_first / reduction:.2f}" if reduction else "?"
            vs_eager = "n/a" if r.speedup_vs_first_eager is None else f"{r.speedup_vs_first_eager:.2f}x"
            out.append(
                f"| {r.name} | {r.backend} | {_fmt_count(r.macs_published, 1e9)} | {_fmt_count(r.params, 1e6, 3)} "
                f"| {r.latency_ms_median:.2f} | {r.latency_ms_p90:.2f} | {r.speedup_vs_first:.2f}x "
                f"| {'?' if reduction is None else f'{reduction:.2f}x'} | {ratio} | {vs_eager} "
                f"| {'n/a' if r.peak_mem_mb is None else f'{r.peak_mem_mb:.1f}'} |"
            )
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def plot_results(results: Sequence[BenchResult], path: PathLike) -> Path:
    """Grouped bar plot of median latency (whiskers up to p90) per model and backend, as PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = list(dict.fromkeys(r.name for r in results))
    backends = list(dict.fromkeys(r.backend for r in results))
    fig = Figure(figsize=(max(6.0, 1.2 * len(names) * max(1, len(backends)) / 2 + 3), 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / len(backends)
    for j, backend in enumerate(backends):
        rows = {r.name: r for r in results if r.backend == backend}
        xs = [i + (j - (len(backends) - 1) / 2) * width for i, n in enumerate(names) if n in rows]
        med = [rows[n].latency_ms_median for n in names if n in rows]
        err = [rows[n].latency_ms_p90 - rows[n].latency_ms_median for n in names if n in rows]
        ax.bar(xs, med, width, yerr=[[0] * len(err), err], capsize=3, label=backend)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=20, ha="right")
    ax.set_ylabel("latency per call, ms (median, whisker to p90)")
    r0 = results[0]
    ax.set_title(f"{r0.device}, batch {r0.batch}, {r0.size}x{r0.size}, {r0.threads} threads")
    ax.legend()
    fig.tight_layout()
    atomic_save_figure(fig, path, dpi=120)
    return Path(path)
