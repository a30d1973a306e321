"""The one measuring core: how a call is timed, on a CPU and on CUDA, and which machine timed it.

``coevo bench`` (:mod:`coevo.deploy.bench`, models interleaved in rotating rounds) and the latency
tables (:mod:`coevo.deploy.latency`, one unit at a time) both time through these functions and
record :func:`machine_info` next to their numbers, so a table and a benchmark made on the same
machine measure the same thing. Every time is in milliseconds.

Clocks:

* :func:`wall_ms`: ``time.perf_counter`` around the call. On a CUDA device the device is
  synchronised before and after, so the queued kernels count (and nothing queued earlier does).
  ONNX Runtime is always timed this way: CUDA events cannot see its work.
* :func:`cuda_event_ms`: a pair of ``torch.cuda.Event`` around the call, after a synchronise;
  also returns the call's peak GPU memory beyond what was allocated before it.
"""
from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Optional, Sequence, Tuple, TypeVar

import torch

Call = Callable[[], Any]
T = TypeVar("T")


def wall_ms(call: Call, device: Optional[torch.device] = None) -> float:
    """Wall-clock ms of one ``call()``; synchronised before and after when ``device`` is CUDA."""
    cuda = device is not None and device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    call()
    if cuda:
        torch.cuda.synchronize(device)
    return (time.perf_counter() - t0) * 1e3


def cuda_event_ms(call: Call, device: torch.device) -> Tuple[float, int]:
    """``(ms, peak_bytes)`` of one ``call()`` on CUDA ``device``, timed by CUDA events; ``peak_bytes``: the most
    GPU memory allocated during the call beyond what was allocated before it (weights excluded)."""
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    call()
    end.record()
    torch.cuda.synchronize(device)
    return float(start.elapsed_time(end)), torch.cuda.max_memory_allocated(device) - base


def median_ms(call: Call, warmup: int, repeats: int, device: Optional[torch.device] = None) -> float:
    """Median :func:`wall_ms` of ``repeats`` calls after ``warmup`` calls, timed like the rest and
    discarded (on CUDA they are synchronised alike, so the first timed call starts on an idle device)."""
    times = [wall_ms(call, device) for _ in range(warmup + repeats)]
    return statistics.median(times[warmup:])


def rotating_rounds(items: Sequence[T], rounds: int) -> Iterator[T]:
    """Every item once per round, starting one item later each round: a slow spell of a shared machine
    then hits every item alike, and their ratios hold."""
    n = len(items)
    for i in range(rounds):
        k = i % n
        yield from [*items[k:], *items[:k]]


def machine_info(device: str = "cpu", threads: Optional[int] = None) -> Dict[str, Any]:
    """CPU model, core counts, library versions, threads and the GPU name when ``device`` is CUDA.

    ``threads``: the thread count the measurement ran with (default: torch's current setting).
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


__all__ = ["cuda_event_ms", "machine_info", "median_ms", "rotating_rounds", "wall_ms"]
