"""Loading exported generators: TorchScript (``.ts``/``.torchscript``/``.jit``) and ONNX (``.onnx``).

Written by :mod:`coevo.export`; read here so that loading a model never needs the
exporter. Each loaded module takes and returns NCHW RGB tensors in [-1, 1] and
has ``.arch``: the :class:`GeneratorArch` stored in the file, or None.
"""
from __future__ import annotations

import json
import logging
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List, Optional, Sequence

import torch
from torch import nn

from ..files import PathLike
from .generator import GeneratorArch
from .io import CheckpointError

TORCHSCRIPT_SUFFIXES = (".ts", ".torchscript", ".jit")
ARCH_EXTRA_FILE = "coevo_arch.json"
ARCH_METADATA_KEY = "coevo_arch"


@contextmanager
def quiet_export() -> Iterator[None]:
    """Silence deprecation warnings and the ONNX exporters' INFO chatter around exporting or loading.

    torch 2.14 marks ``torch.jit`` deprecated and the ONNX optimiser logs every pass; neither
    is a problem with the exported model (the parity check is what says whether it is right).
    """
    names = ("onnx_ir", "onnxscript", "torch.onnx", "torch.export", "torch._dynamo")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        for lg in loggers:
            lg.setLevel(max(lg.getEffectiveLevel(), logging.WARNING))
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)


class OnnxGenerator(nn.Module):
    """Runs an exported ``.onnx`` generator with ONNX Runtime behind an ``nn.Module`` face.

    Input and output: torch tensors, NCHW, RGB, [-1, 1]; the output comes back on the
    input's device. ``.arch`` is the :class:`GeneratorArch` stored in the file (None if absent).
    """

    def __init__(self, path: PathLike, providers: Optional[Sequence[str]] = None,
                 intra_op_num_threads: Optional[int] = None) -> None:
        super().__init__()
        import onnxruntime as ort

        self.path = Path(path)
        options = ort.SessionOptions()
        if intra_op_num_threads:
            options.intra_op_num_threads = int(intra_op_num_threads)
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=options,
                                                providers=list(providers or ["CPUExecutionProvider"]))
        except Exception as e:
            raise CheckpointError(f"cannot open {self.path} with ONNX Runtime ({e}); the file may be "
                                  "truncated or not an ONNX model") from e
        self.input_name = self.session.get_inputs()[0].name
        meta = self.session.get_modelmeta().custom_metadata_map
        self.arch = GeneratorArch.from_dict(json.loads(meta[ARCH_METADATA_KEY])) if ARCH_METADATA_KEY in meta else None

    @property
    def providers(self) -> List[str]:
        return self.session.get_providers()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        array = x.detach().to("cpu", torch.float32).contiguous().numpy()
        (out,) = self.session.run(None, {self.input_name: array})
        return torch.from_numpy(out).to(x.device)

    def extra_repr(self) -> str:
        return f"path={str(self.path)!r}, providers={self.providers}"


def load_exported(path: PathLike, providers: Optional[Sequence[str]] = None,
                  intra_op_num_threads: Optional[int] = None) -> nn.Module:
    """Load a ``.ts``/``.torchscript``/``.jit`` or ``.onnx`` export as an eval-mode module with ``.arch``.

    TorchScript loads on CPU (``torch.jit.load``); ONNX runs through :class:`OnnxGenerator`.
    ``.arch`` is None for files exported without coevo's architecture entry.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"exported model not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return OnnxGenerator(path, providers=providers, intra_op_num_threads=intra_op_num_threads).eval()
    if suffix not in TORCHSCRIPT_SUFFIXES:
        raise CheckpointError(f"{path}: not an exported model (expected .onnx or one of {TORCHSCRIPT_SUFFIXES})")
    extra = {ARCH_EXTRA_FILE: ""}
    try:
        with quiet_export():
            module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except Exception as e:
        raise CheckpointError(f"cannot read {path} as TorchScript ({e}); the file may be truncated") from e
    module.arch = GeneratorArch.from_dict(json.loads(extra[ARCH_EXTRA_FILE])) if extra[ARCH_EXTRA_FILE] else None
    return module.eval()


def check_image_to_image(model: nn.Module, x: torch.Tensor, source: PathLike) -> torch.Tensor:
    """``model(x)`` for NCHW ``x``, or :class:`CheckpointError` if ``model`` is no image-to-image generator.

    A generator returns a tensor of exactly the input's shape (same channels, same height
    and width). An exported file of some other network (a classifier, a model for other
    channels or sizes) fails here with a message naming ``source``, before it is used.
    """
    try:
        out = model(x)
    except Exception as e:
        raise CheckpointError(
            f"{source} cannot run on a {'x'.join(map(str, x.shape))} image batch ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}); it is not an image-to-image generator for "
            "this size (exported with a fixed input size?)") from e
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != tuple(x.shape):
        got = "x".join(map(str, out.shape)) if isinstance(out, torch.Tensor) else type(out).__name__
        raise CheckpointError(
            f"{source} is not an image-to-image generator: for an input of shape "
            f"{'x'.join(map(str, x.shape))} it returns {got}; coevo needs a model whose output has the "
            "input's channels, height and width")
    return out
