"""The runtimes ``coevo bench`` times: each turns a generator into a call on one fixed input.

One :class:`Backend` per name in :data:`REGISTRY`:

==================== ===================================================================
``eager``            the PyTorch module as it is
``torchscript``      scripted, frozen, ``optimize_for_inference`` (torch.jit: deprecated)
``torch-export``     a ``torch.export`` program (a ``.pt2`` file, or the module exported first)
``onnxruntime``      ONNX Runtime, fp32, graph optimisation ORT_ENABLE_ALL at load
``onnxruntime-int8`` ONNX Runtime, static INT8 (QDQ); CPU only. A module or fp32 ONNX file is
                     quantised first on the benchmark's random input: latency depends on the
                     graph, not on the scales (quality is checked by ``coevo export``)
``cuda-fp16-graph``  float16 + channels_last, replayed as CUDA graphs (CUDA only)
``cuda-fp16-compiled`` float16 + channels_last, ``torch.compile(mode="reduce-overhead")`` (CUDA only)
``cuda-bf16-*``      the same in bfloat16
==================== ===================================================================

An exported file runs only on the backends its format allows (:func:`allowed_backends`).
A backend this machine cannot run raises :class:`BackendUnavailable` with the reason.
"""
from __future__ import annotations

import copy
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Tuple

import torch
from torch import nn

from ..core.registry import Registry
from ..errors import CoevoError

log = logging.getLogger(__name__)

Call = Callable[[], Any]


class BackendUnavailable(CoevoError):
    """This backend cannot run here (no CUDA, no CUDA provider, an incompatible model); the message says why."""


@dataclass(frozen=True)
class Backend:
    """How one runtime makes a timed call. ``make(model, x, device, threads, tmp_dir) -> call``."""

    name: str
    make: Callable[[nn.Module, torch.Tensor, torch.device, Optional[int], str], Call]
    needs_cuda: bool = False
    cpu_only: bool = False
    torch_timed: bool = True  # False: ONNX Runtime, whose work CUDA events cannot see (wall clock instead)
    prime_calls: int = 0      # untimed calls when the runner is made: CUDA graph capture, compilation


def on_device(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` itself when it already lives on ``device``; else a copy moved there (the caller's stays put)."""
    p = next(iter(model.parameters()), None)
    if p is None or p.device.type == device.type:
        return model
    return copy.deepcopy(model).to(device)


# ----------------------------------------------------------------------------- makers
def _eager(model: nn.Module, x: torch.Tensor, device: torch.device, threads: Optional[int], tmp: str) -> Call:
    module = on_device(model, device).eval()
    return lambda: module(x)


def _torchscript(model: nn.Module, x: torch.Tensor, device: torch.device, threads: Optional[int], tmp: str) -> Call:
    from .exported import quiet_export

    with quiet_export():
        scripted = model if isinstance(model, torch.jit.ScriptModule) else torch.jit.script(copy.deepcopy(model))
        scripted = on_device(scripted, device).eval()
        try:
            scripted = torch.jit.freeze(scripted)
        except RuntimeError as e:  # an already frozen export cannot be frozen twice
            log.debug("not freezing %s: %s", type(model).__name__, e)
        module = torch.jit.optimize_for_inference(scripted)
    return lambda: module(x)


def _program(model: nn.Module, tmp: str) -> nn.Module:
    """``model`` as a loaded ``torch.export`` program (exported to ``tmp`` first unless it is one)."""
    from .export import save_torch_export
    from .exported import ExportedProgramGenerator, OnnxGenerator, load_exported

    if isinstance(model, ExportedProgramGenerator):
        return model
    if isinstance(model, (torch.jit.ScriptModule, OnnxGenerator)):
        raise BackendUnavailable("torch-export needs a PyTorch generator or a .pt2 file")
    path = Path(tempfile.mkdtemp(dir=tmp)) / "model.pt2"
    save_torch_export(model, path)
    return load_exported(path, trust=True)  # written just now


def _torch_export(model: nn.Module, x: torch.Tensor, device: torch.device, threads: Optional[int], tmp: str) -> Call:
    module = _program(model, tmp).to(device)
    return lambda: module(x)


def _onnx_file(model: nn.Module, tmp: str) -> Path:
    from .export import save_onnx
    from .exported import OnnxGenerator

    if isinstance(model, OnnxGenerator):
        return model.path
    if isinstance(model, torch.jit.ScriptModule):
        raise BackendUnavailable("a TorchScript file runs on torchscript only")
    fd, path = tempfile.mkstemp(suffix=".onnx", dir=tmp)
    os.close(fd)
    save_onnx(copy.deepcopy(model).cpu().eval(), path)
    return Path(path)


def _ort_call(path: Path, x: torch.Tensor, device: torch.device, threads: Optional[int]) -> Call:
    import onnxruntime as ort

    from .exported import ort_session

    providers = ["CPUExecutionProvider"]
    if device.type == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise BackendUnavailable("this onnxruntime has no CUDAExecutionProvider (pip install onnxruntime-gpu)")
        providers = ["CUDAExecutionProvider"]
    session = ort_session(path, threads, providers)
    feed = {session.get_inputs()[0].name: x.detach().cpu().numpy()}
    return lambda: session.run(None, feed)


def _onnxruntime(model: nn.Module, x: torch.Tensor, device: torch.device, threads: Optional[int], tmp: str) -> Call:
    if getattr(model, "precision", "fp32") == "int8":
        raise BackendUnavailable("an INT8 ONNX file runs on onnxruntime-int8")
    return _ort_call(_onnx_file(model, tmp), x, device, threads)


def _onnxruntime_int8(model: nn.Module, x: torch.Tensor, device: torch.device, threads: Optional[int],
                      tmp: str) -> Call:
    from .quantize import quantize_int8

    path = _onnx_file(model, tmp)
    if getattr(model, "precision", "fp32") != "int8":
        int8 = Path(tempfile.mkdtemp(dir=tmp)) / "model.int8.onnx"
        # timing only: scales from the benchmark input give the deployed graph's shape and cost
        quantize_int8(path, int8, [x[:1].detach().cpu().numpy()])
        path = int8
    return _ort_call(path, x, device, threads)


def _cuda(dtype: torch.dtype, mode: str) -> Callable[..., Call]:
    def make(model: nn.Module, x: torch.Tensor, device: torch.device, threads: Optional[int], tmp: str) -> Call:
        from .cuda_runner import CudaRunner
        from .exported import OnnxGenerator

        if isinstance(model, (OnnxGenerator, torch.jit.ScriptModule)):
            raise BackendUnavailable("ONNX and TorchScript files run on their own runtimes only")
        runner = CudaRunner(model, dtype=dtype, mode=mode)
        return lambda: runner(x)

    return make


REGISTRY: Registry[Backend] = Registry("backend")


def register_backend(backend: Backend) -> Backend:
    """Add ``backend`` under its own name."""
    return REGISTRY.register(backend.name, backend)


for _backend in (
    Backend("eager", _eager),
    Backend("torchscript", _torchscript),
    Backend("torch-export", _torch_export),
    Backend("onnxruntime", _onnxruntime, torch_timed=False),
    Backend("onnxruntime-int8", _onnxruntime_int8, cpu_only=True, torch_timed=False),
    *(Backend(f"cuda-{short}-{label}", _cuda(dtype, mode), needs_cuda=True, prime_calls=3)
      for short, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16))
      for label, mode in (("graph", "graph"), ("compiled", "compile"))),
):
    register_backend(_backend)
BACKENDS: Tuple[str, ...] = REGISTRY.names()  # the built-in ones (cli/bench spells them out for --help)


# ----------------------------------------------------------------------------- choosing
def unavailable_reason(backend: str, device: str | torch.device) -> Optional[str]:
    """Why ``backend`` cannot run on ``device`` here (None: it can, as far as can be told before loading)."""
    spec = REGISTRY[backend]
    dev = torch.device(device)
    if spec.needs_cuda and dev.type != "cuda":
        return (f"{backend} needs a CUDA device (--device cuda)"
                + ("" if torch.cuda.is_available() else "; torch sees no CUDA device here"))
    if spec.cpu_only and dev.type != "cpu":
        return f"{backend} runs on the CPU only (ONNX Runtime's INT8 kernels); use --device cpu"
    return None


def allowed_backends(model: nn.Module) -> Optional[Tuple[str, ...]]:
    """The backends an exported model can run on, its default first; None for a PyTorch module (any)."""
    from .exported import ExportedProgramGenerator, OnnxGenerator

    if isinstance(model, OnnxGenerator):
        return ("onnxruntime-int8",) if model.precision == "int8" else ("onnxruntime", "onnxruntime-int8")
    if isinstance(model, torch.jit.ScriptModule):
        return ("torchscript",)
    if isinstance(model, ExportedProgramGenerator):  # its dtype is fixed: the CUDA runners of that dtype
        short = {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(model.dtype)
        return (f"cuda-{short}-graph", f"cuda-{short}-compiled", "torch-export") if short else ("torch-export",)
    return None


def backends_for(name: str, model: nn.Module, requested: Sequence[str], device: str | torch.device) -> list:
    """The requested backends ``model`` can run on; an exported model none of them fits runs on its default."""
    allowed = allowed_backends(model)
    if allowed is None:
        return list(dict.fromkeys(requested))
    chosen = [b for b in dict.fromkeys(requested) if b in allowed]
    if not chosen:
        default = next((b for b in allowed if unavailable_reason(b, device) is None), allowed[0])
        log.info("%s is an exported model that runs on %s only: timing it on %s", name, ", ".join(allowed), default)
        chosen = [default]
    return chosen


def native_backend(model: nn.Module) -> Optional[str]:
    """The default backend of an exported model; None for a PyTorch (eager) module."""
    allowed = allowed_backends(model)
    return allowed[0] if allowed else None
