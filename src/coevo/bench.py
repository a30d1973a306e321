"""Inference latency of generators, side by side, in eager PyTorch, TorchScript and ONNX Runtime.

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
* ``speedup_vs_first``: median of the first model on the same backend divided by this one;
* MACs are exact counts from the architecture for one ``1 x 3 x size x size`` image,
  in both conventions (:data:`coevo.prune.macs.MAC_CONVENTIONS`); None when the model
  carries no architecture.
"""
from __future__ import annotations

import copy
import logging
import os
import platform
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from .files import PathLike, atomic_save_figure, atomic_write_text

log = logging.getLogger(__name__)

BACKENDS = ("eager", "torchscript", "onnxruntime")
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


@dataclass
class _Runner:
    name: str
    backend: str
    call: Callable[[], Any]
    model: nn.Module
    latencies: List[float] = field(default_factory=list)
    peak_bytes: Optional[int] = None


# ----------------------------------------------------------------------------- backends
def native_backend(model: nn.Module) -> Optional[str]:
    """The only backend an exported model can run on; None for a PyTorch (eager) module."""
    from .export import OnnxGenerator

    if isinstance(model, OnnxGenerator):
        return "onnxruntime"
    if isinstance(model, torch.jit.ScriptModule):
        return "torchscript"
    return None


def _torchscript(model: nn.Module, device: torch.device) -> nn.Module:
    from .export import quiet_export

    with quiet_export():
        scripted = model if isinstance(model, torch.jit.ScriptModule) else torch.jit.script(copy.deepcopy(model))
        scripted = _on(scripted, device).eval()
        try:
            scripted = torch.jit.freeze(scripted)
        except RuntimeError as e:  # an already frozen export cannot be frozen twice
            log.debug("not freezing %s: %s", type(model).__name__, e)
        return torch.jit.optimize_for_inference(scripted)


def _ort_session(model: nn.Module, device: torch.device, threads: Optional[int], tmp_dir: str):
    """An ONNX Runtime session for ``model`` (exported to ``tmp_dir`` first unless it is an ONNX file)."""
    import onnxruntime as ort

    from .export import OnnxGenerator, save_onnx

    providers = ["CPUExecutionProvider"]
    if device.type == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            return None
        providers = ["CUDAExecutionProvider"]
    if isinstance(model, OnnxGenerator):
        path = model.path
    else:
        fd, path = tempfile.mkstemp(suffix=".onnx", dir=tmp_dir)
        os.close(fd)
        save_onnx(copy.deepcopy(model).cpu().eval(), path)
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
    # ORT's idle workers spin after each run; interleaved with PyTorch they steal the cores the
    # next model needs (measured: +50% on the next eager call on 2 busy cores).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), sess_options=options, providers=providers)


def _on(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` itself when it already lives on ``device``; else a copy moved there (the caller's stays put)."""
    p = next(iter(model.parameters()), None)
    if p is None or p.device.type == device.type:
        return model
    return copy.deepcopy(model).to(device)


def _make_runner(name: str, model: nn.Module, backend: str, x: torch.Tensor, device: torch.device,
                 threads: Optional[int], tmp_dir: str) -> Optional[_Runner]:
    if backend == "eager":
        module = _on(model, device).eval()
        return _Runner(name, backend, lambda: module(x), model)
    if backend == "torchscript":
        module = _torchscript(model, device)
        return _Runner(name, backend, lambda: module(x), model)
    if backend == "onnxruntime":
        session = _ort_session(model, device, threads, tmp_dir)
        if session is None:
            log.warning("skipping %s on onnxruntime: this onnxruntime has no CUDAExecutionProvider "
                        "(pip install onnxruntime-gpu)", name)
            return None
        feed = {session.get_inputs()[0].name: x.cpu().numpy()}
        return _Runner(name, backend, lambda: session.run(None, feed), model)
    raise ValueError(f"unknown backend {backend!r}; choose from {list(BACKENDS)}")


# ----------------------------------------------------------------------------- timing
def _time_call(runner: _Runner, device: torch.device) -> float:
    if device.type == "cuda" and runner.backend != "onnxruntime":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        runner.call()
        end.record()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - base
        runner.peak_bytes = max(runner.peak_bytes or 0, peak)
        return float(start.elapsed_time(end))
    t0 = time.perf_counter()
    runner.call()
    return (time.perf_counter() - t0) * 1e3


def _interleaved(runners: Sequence[_Runner], device: torch.device, warmup: int, repeats: int) -> None:
    n = len(runners)
    for _ in range(warmup):
        for r in runners:
            r.call()
    for i in range(repeats):
        k = i % n
        for r in list(runners[k:]) + list(runners[:k]):
            r.latencies.append(_time_call(r, device))


# ----------------------------------------------------------------------------- entry point
def check_settings(size: int, batch: int, warmup: int, repeats: int, backends: Sequence[str] = ("eager",)) -> None:
    """Raise :class:`coevo.config.ConfigError` naming the first benchmark setting that cannot work."""
    from .config import ConfigError
    from .models.generator import MIN_SIZE, SIZE_MULTIPLE

    unknown = [b for b in backends if b not in BACKENDS]
    if unknown or not backends:
        raise ConfigError(f"unknown backends {unknown or list(backends)}; choose from {list(BACKENDS)}")
    if size < MIN_SIZE or size % SIZE_MULTIPLE:
        raise ConfigError(f"--size must be a multiple of {SIZE_MULTIPLE} and at least {MIN_SIZE} (the generator "
                          f"halves the image twice), got {size}")
    if batch < 1:
        raise ConfigError(f"--batch must be >= 1, got {batch}")
    if repeats < 1:
        raise ConfigError(f"--repeats must be >= 1, got {repeats}")
    if warmup < 0:
        raise ConfigError(f"--warmup must be >= 0, got {warmup}")


def benchmark_models(models: Mapping[str, Union[nn.Module, PathLike]], size: int = 256, batch: int = 1,
                     threads: Optional[int] = None, device: str = "cpu",
                     backends: Sequence[str] = ("eager",), warmup: int = 3, repeats: int = 20,
                     seed: int = 0) -> List[BenchResult]:
    """Time every model on every backend, interleaved (see the module docstring).

    ``models``: name -> module, or a path :func:`coevo.load_generator` accepts. An exported
    model (``.ts``, ``.onnx``) runs only on its own runtime, whatever ``backends`` says.
    ``threads``: ``torch.set_num_threads`` for the run (restored afterwards) and ONNX
    Runtime's ``intra_op_num_threads``. Returns one :class:`BenchResult` per (model, backend),
    models in the given order.
    """
    from .models.io import load_generator

    from .models.exported import check_image_to_image

    check_settings(size=size, batch=batch, warmup=warmup, repeats=repeats, backends=backends)
    if not models:
        raise ValueError("benchmark_models needs at least one model")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' asked for but torch sees no CUDA device")
    loaded = {name: (load_generator(m) if isinstance(m, (str, os.PathLike)) else m) for name, m in models.items()}
    with torch.inference_mode():
        for name, model in loaded.items():  # refuse any other kind of network before timing anything
            arch = getattr(model, "arch", None)
            probe = _random_input(1, arch.in_channels if arch is not None else 3, size, seed, torch.device("cpu"))
            source = models[name] if isinstance(models[name], (str, os.PathLike)) else f"model {name!r}"
            check_image_to_image(_on(model, torch.device("cpu")), probe, source)

    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        with tempfile.TemporaryDirectory(prefix="coevo-bench-") as tmp, torch.inference_mode():
            runners = []
            for name, model in loaded.items():
                arch = getattr(model, "arch", None)
                x = _random_input(batch, arch.in_channels if arch is not None else 3, size, seed, dev)
                for backend in _backends_for(name, model, backends):
                    runner = _make_runner(name, model, backend, x, dev, threads, tmp)
                    if runner is not None:
                        runners.append(runner)
            if not runners:
                raise RuntimeError("nothing to time: no model could run on the requested backends")
            log.info("timing %d model/backend pairs: %d warm-up + %d timed rounds, %s, batch %d, %dx%d, %d threads",
                     len(runners), warmup, repeats, dev, batch, size, size, torch.get_num_threads())
            _interleaved(runners, dev, warmup, repeats)
        return _results(runners, size, batch, str(dev), threads or torch.get_num_threads())
    finally:
        torch.set_num_threads(previous_threads)


def _backends_for(name: str, model: nn.Module, backends: Sequence[str]) -> List[str]:
    native = native_backend(model)
    if native is None:
        return list(dict.fromkeys(backends))
    if list(backends) != [native]:
        log.info("%s is an exported model: timing it on %s only", name, native)
    return [native]


def _random_input(batch: int, channels: int, size: int, seed: int, device: torch.device) -> torch.Tensor:
    g = torch.Generator().manual_seed(int(seed))
    return (torch.rand((batch, channels, size, size), generator=g) * 2 - 1).to(device)


def _results(runners: Sequence[_Runner], size: int, batch: int, device: str, threads: int) -> List[BenchResult]:
    from .prune import count_macs, count_params

    results: List[BenchResult] = []
    first: Dict[str, float] = {}
    for r in runners:
        arch = getattr(r.model, "arch", None)
        if arch is not None:
            params: Optional[int] = count_params(arch)
        else:
            params = sum(p.numel() for p in r.model.parameters()) or None
        median = statistics.median(r.latencies)
        first.setdefault(r.backend, median)
        results.append(BenchResult(
            name=r.name, backend=r.backend, params=params,
            macs_published=count_macs(arch, size, size, "published") if arch is not None else None,
            macs_flopcounter=count_macs(arch, size, size, "flopcounter") if arch is not None else None,
            latency_ms_median=median, latency_ms_p90=float(np.percentile(r.latencies, 90)),
            latencies=list(r.latencies),
            peak_mem_mb=None if r.peak_bytes is None else r.peak_bytes / 2**20,
            speedup_vs_first=first[r.backend] / median, size=size, batch=batch, device=device, threads=threads,
        ))
    return results


# ----------------------------------------------------------------------------- reporting
def machine_info(device: str = "cpu", threads: Optional[int] = None) -> Dict[str, Any]:
    """CPU model, core counts, library versions, threads and the GPU name when ``device`` is CUDA.

    ``threads``: the thread count the benchmark ran with (default: torch's current setting).
    """
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: Dict[str, Any] = {
        "cpu": cpu,
        "cores_logical": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "threads": int(threads) if threads else torch.get_num_threads(),
        "device": device,
        "device_name": cpu,
    }
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        info["onnxruntime"] = None
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        info["device_name"] = torch.cuda.get_device_name(torch.device(device))
        info["cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version()
    return info


def save_results(results: Sequence[BenchResult], path: PathLike, machine: Optional[Mapping[str, Any]] = None,
                 extra: Optional[Mapping[str, Any]] = None) -> Path:
    """Write results, machine info and the conventions used to a JSON file."""
    import json

    from .prune.macs import MAC_CONVENTIONS

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

    ``MAC reduction`` and ``speedup`` are relative to the first model on the same backend;
    ``speedup / MAC reduction`` = 1 means the latency fell as much as the MACs did.
    """
    groups: Dict[tuple, List[BenchResult]] = {}
    for r in results:
        groups.setdefault((r.device, r.size, r.batch, r.threads), []).append(r)
    out = []
    for (device, size, batch, threads), rows in groups.items():
        first_macs: Dict[str, Optional[int]] = {}
        out.append(f"{device}, batch {batch}, {size}x{size}, {threads} threads. MACs: one 1x3x{size}x{size} image, "
                   "published convention (transposed convs per output pixel); FlopCounterMode figures in the JSON.")
        out.append("")
        out.append("| model | backend | MACs (G) | params (M) | median ms | p90 ms | speedup | MAC reduction "
                   "| speedup / MAC reduction | peak MB |")
        out.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in rows:
            base = first_macs.setdefault(r.backend, r.macs_published)
            reduction = base / r.macs_published if base and r.macs_published else None
            ratio = f"{r.speedup_vs_first / reduction:.2f}" if reduction else "?"
            out.append(
                f"| {r.name} | {r.backend} | {_fmt_count(r.macs_published, 1e9)} | {_fmt_count(r.params, 1e6, 3)} "
                f"| {r.latency_ms_median:.2f} | {r.latency_ms_p90:.2f} | {r.speedup_vs_first:.2f}x "
                f"| {'?' if reduction is None else f'{reduction:.2f}x'} | {ratio} "
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
