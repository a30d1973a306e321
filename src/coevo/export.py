"""Export a generator to TorchScript, ONNX and safetensors, each checked against eager PyTorch.

Every exported file carries the generator's architecture, so loading needs no flags:

* ``name.ts``: TorchScript (``torch.jit.script``); the architecture is the extra file
  ``coevo_arch.json`` inside the archive.
* ``name.onnx``: one self-contained file with dynamic batch, height and width axes;
  the architecture is the ``coevo_arch`` entry of the model's ``metadata_props``.
* ``name.safetensors``: weights plus the architecture as metadata (:func:`coevo.save_generator`).

Each export is reloaded from disk and compared with the eager model on seeded random
inputs in [-1, 1] at sizes other than the usual training sizes (``1x3xSxS`` and a
non-square ``2x3x(2S/3)xS``). A difference above :data:`TOLERANCE` raises :class:`ExportError`.
"""
from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .models.generator import MIN_SIZE, SIZE_MULTIPLE, GeneratorArch, ResnetGenerator
from .files import PathLike, atomic_path, atomic_write_text
from .models.exported import (  # noqa: F401  (re-exported: coevo.export is where users look)
    ARCH_EXTRA_FILE, ARCH_METADATA_KEY, TORCHSCRIPT_SUFFIXES, OnnxGenerator, load_exported, quiet_export,
)
from .models.io import load_generator, save_generator
from .errors import CoevoError

log = logging.getLogger(__name__)

FORMATS = ("torchscript", "onnx", "safetensors")
SUFFIXES = {"torchscript": ".ts", "onnx": ".onnx", "safetensors": ".safetensors"}
TOLERANCE = 1e-4
# torch's dynamo-based ONNX exporter implements opset 18 and newer only; asking it for
# less makes it export 18 and then fail a down-conversion (ReflectionPad has no adapter).
DYNAMO_MIN_OPSET = 18
REPORT_NAME = "export_report.json"


class ExportError(CoevoError, RuntimeError):
    """An exported model that does not reproduce the eager model, or an export that failed."""


# ----------------------------------------------------------------------------- inputs
def check_shapes(check_size: int) -> List[Tuple[int, int, int, int]]:
    """Input shapes of the parity check: a square batch of one and a non-square batch of two."""
    if check_size < MIN_SIZE or check_size % SIZE_MULTIPLE:
        from .config import ConfigError

        raise ConfigError(f"the parity check size (--check-size, export.check_size) must be a multiple of "
                          f"{SIZE_MULTIPLE} and at least {MIN_SIZE}, got {check_size}")
    short = max(MIN_SIZE, int(round(check_size * 2 / 3 / SIZE_MULTIPLE)) * SIZE_MULTIPLE)
    return [(1, 3, check_size, check_size), (2, 3, short, check_size)]


def check_inputs(check_size: int, seed: int = 0, in_channels: int = 3) -> List[torch.Tensor]:
    """Seeded random NCHW inputs in [-1, 1] for the parity check."""
    g = torch.Generator().manual_seed(int(seed))
    return [torch.rand((n, in_channels, h, w), generator=g) * 2 - 1 for n, _, h, w in check_shapes(check_size)]


def _max_abs_diff(model: nn.Module, reference: Sequence[torch.Tensor], inputs: Sequence[torch.Tensor]) -> float:
    with torch.inference_mode():
        return max(float((model(x).float() - ref).abs().max()) for x, ref in zip(inputs, reference))


# ----------------------------------------------------------------------------- writers
def save_torchscript(model: ResnetGenerator, path: PathLike) -> Path:
    """Script ``model`` (CPU, eval) and save it with its architecture as ``coevo_arch.json``."""
    path = Path(path)
    with quiet_export():
        scripted = torch.jit.script(model)
        with atomic_path(path) as tmp:
            torch.jit.save(scripted, str(tmp), _extra_files={ARCH_EXTRA_FILE: json.dumps(model.arch.to_dict())})
    return path


def save_onnx(model: nn.Module, path: PathLike, opset: int = 17, exporter: str = "auto",
              arch: Optional[GeneratorArch] = None, example_size: int = 64) -> Dict[str, Any]:
    """Export ``model`` to one ONNX file with dynamic batch/height/width axes.

    ``exporter``: ``"dynamo"`` (torch.export based), ``"legacy"`` (TorchScript based,
    ``dynamo=False``) or ``"auto"`` (dynamo, falling back to legacy if it fails).
    Returns ``{"exporter", "opset", "fallback_reason"}``: what was actually used.
    """
    import onnx

    if exporter not in ("auto", "dynamo", "legacy"):
        raise ValueError(f"exporter must be 'auto', 'dynamo' or 'legacy', got {exporter!r}")
    path = Path(path)
    arch = arch if arch is not None else getattr(model, "arch", None)
    in_ch = arch.in_channels if arch is not None else 3
    example = (torch.zeros(1, in_ch, example_size, example_size),)
    info: Dict[str, Any] = {"exporter": None, "opset": None, "fallback_reason": None}
    with atomic_path(path) as tmp:
        if exporter in ("auto", "dynamo"):
            try:
                _export_dynamo(model, example, tmp, opset)
                info["exporter"] = "dynamo"
            except Exception as e:  # the dynamo exporter is young; the legacy one is the safety net
                if exporter == "dynamo":
                    raise ExportError(f"dynamo ONNX export failed: {type(e).__name__}: {e}") from e
                info["fallback_reason"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                log.warning("dynamo ONNX export failed (%s); falling back to the legacy exporter",
                            info["fallback_reason"])
        if info["exporter"] is None:
            _export_legacy(model, example, tmp, opset)
            info["exporter"] = "legacy"
        proto = onnx.load(str(tmp))
        if arch is not None:
            entry = proto.metadata_props.add()
            entry.key, entry.value = ARCH_METADATA_KEY, json.dumps(arch.to_dict())
        proto.producer_name = "coevo"
        onnx.save_model(proto, str(tmp), save_as_external_data=False)
    info["opset"] = next((int(o.version) for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    return info


def _export_dynamo(model: nn.Module, example: Tuple[torch.Tensor], path: Path, opset: int) -> None:
    if opset < DYNAMO_MIN_OPSET:
        log.info("the dynamo ONNX exporter implements opset >= %d; exporting opset %d instead of %d",
                 DYNAMO_MIN_OPSET, DYNAMO_MIN_OPSET, opset)
        opset = DYNAMO_MIN_OPSET
    dims = {0: torch.export.Dim("batch"), 2: torch.export.Dim("height"), 3: torch.export.Dim("width")}
    with quiet_export():
        torch.onnx.export(model, example, str(path), dynamo=True, external_data=False, opset_version=opset,
                          input_names=["input"], output_names=["output"], dynamic_shapes=(dims,),
                          verbose=False)


def _export_legacy(model: nn.Module, example: Tuple[torch.Tensor], path: Path, opset: int) -> None:
    axes = {0: "batch", 2: "height", 3: "width"}
    with quiet_export():
        torch.onnx.export(model, example, str(path), dynamo=False, opset_version=opset,
                          input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": axes, "output": axes})


# ----------------------------------------------------------------------------- export + check
def export_generator(model: ResnetGenerator, out_dir: PathLike, name: str,
                     formats: Sequence[str] = FORMATS, check_size: int = 96, opset: int = 17,
                     seed: int = 0, onnx_exporter: str = "auto") -> Dict[str, Dict[str, Any]]:
    """Write ``out_dir/name.{ts,onnx,safetensors}`` and check each against eager PyTorch.

    Each file is reloaded from disk and run on seeded random inputs in [-1, 1] of shapes
    :func:`check_shapes` (``check_size`` should differ from the training size). Returns
    ``{format: {"path", "max_abs_diff", "ok", ...}}`` (ONNX adds ``exporter``, ``opset``,
    ``fallback_reason``) and merges it under ``name`` into ``out_dir/export_report.json``.
    Raises :class:`ExportError` when a difference exceeds :data:`TOLERANCE`.
    """
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ValueError(f"unknown export formats {unknown or list(formats)}; choose from {list(FORMATS)}")
    if not isinstance(getattr(model, "arch", None), GeneratorArch):
        raise TypeError("export_generator needs a coevo ResnetGenerator (a module with .arch); "
                        "re-export from the .pt/.safetensors checkpoint, not from an exported file")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = copy.deepcopy(model).cpu().eval()
    inputs = check_inputs(check_size, seed, model.arch.in_channels)
    with torch.inference_mode():
        reference = [model(x) for x in inputs]

    report: Dict[str, Dict[str, Any]] = {}
    for fmt in formats:
        path = out_dir / f"{name}{SUFFIXES[fmt]}"
        entry: Dict[str, Any] = {"path": str(path)}
        if fmt == "torchscript":
            save_torchscript(model, path)
        elif fmt == "onnx":
            entry.update(save_onnx(model, path, opset=opset, exporter=onnx_exporter))
        else:
            save_generator(model, path)
        reloaded = load_exported(path) if fmt != "safetensors" else load_generator(path)
        diff = _max_abs_diff(reloaded, reference, inputs)
        entry.update(max_abs_diff=diff, ok=bool(diff <= TOLERANCE), size_bytes=path.stat().st_size,
                     check_shapes=["x".join(map(str, s)) for s in check_shapes(check_size)])
        report[fmt] = entry
        log.info("%s -> %s: max |diff| %.2e on %s", fmt, path, diff, check_shapes(check_size))

    _merge_report(out_dir / REPORT_NAME, name, report)
    failed = {f: e["max_abs_diff"] for f, e in report.items() if not e["ok"]}
    if failed:
        raise ExportError(
            f"exported {name} does not match eager PyTorch within {TOLERANCE:g}: "
            + ", ".join(f"{f} max |diff| {d:.3e}" for f, d in failed.items())
            + f" (inputs {check_shapes(check_size)}, seed {seed}); see {out_dir / REPORT_NAME}"
        )
    return report


def _merge_report(path: Path, name: str, report: Dict[str, Any]) -> None:
    merged: Dict[str, Any] = {}
    if path.exists():
        try:
            merged = json.loads(path.read_text())
        except json.JSONDecodeError:
            log.warning("%s is not valid JSON; rewriting it", path)
    merged[name] = report
    atomic_write_text(path, json.dumps(merged, indent=2, sort_keys=True) + "\n")
