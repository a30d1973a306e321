"""Export a generator to torch.export, ONNX, safetensors (and TorchScript), each checked against eager PyTorch.

Every exported file carries the generator's architecture, so loading needs no flags:

* ``name.pt2``: a ``torch.export`` program, the PyTorch format to use, with dynamic batch,
  height and width; the architecture is the extra file ``coevo_arch.json`` in the archive.
* ``name.onnx``: one self-contained file with dynamic batch, height and width axes;
  the architecture is the ``coevo_arch`` entry of the model's ``metadata_props``.
* ``name.safetensors``: weights plus the architecture as metadata (:func:`coevo.save_generator`).
* ``name.ts``: TorchScript (``torch.jit.script``), only when asked for (format ``torchscript``):
  the pinned torch deprecates ``torch.jit``, and it is kept only while it still works.

Each export is reloaded from disk and compared with the eager model on seeded random
inputs in [-1, 1] at sizes other than the usual training sizes (``1x3xSxS`` and a
non-square ``2x3x(2S/3)xS``). A difference above :data:`TOLERANCE` raises :class:`ExportError`.
The deployment artifacts of a target (INT8 ONNX for CPUs, float16 programs for CUDA)
are built on top of these by :mod:`coevo.deploy.targets`.
"""
from __future__ import annotations

import copy
import io
import json
import logging
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import nn

from ..core.limits import MAX_IMAGE_SIDE, MIN_SIZE, SIZE_MULTIPLE, check_image_side
from ..models.family import is_generator
from ..models.generator import GeneratorArch, ResnetGenerator
from ..core.files import PathLike, atomic_path, atomic_write_bytes, atomic_write_text
from .exported import (  # noqa: F401  (re-exported: coevo.deploy.export is where users look)
    ARCH_EXTRA_FILE, ARCH_METADATA_KEY, PROGRAM_EXTRA_FILE, TORCHSCRIPT_SUFFIXES, ExportedProgramGenerator,
    OnnxGenerator, load_exported, quiet_export,
)
from ..models.io import load_generator, save_generator
from ..core.registry import Registry
from ..errors import CoevoError

log = logging.getLogger(__name__)

TOLERANCE = 1e-4
# torch's dynamo-based ONNX exporter implements opset 18 and newer only; asking it for
# less makes it export 18 and then fail a down-conversion (ReflectionPad has no adapter).
DYNAMO_MIN_OPSET = 18
REPORT_NAME = "export_report.json"
_OPSET_RAISED: set = set()  # opsets already reported as raised to DYNAMO_MIN_OPSET


class ExportError(CoevoError, RuntimeError):
    """An exported model that does not reproduce the eager model, or an export that failed."""


# ----------------------------------------------------------------------------- inputs
def fit_side(size: int, multiple: int) -> int:
    """``size`` rounded up to a multiple of ``multiple`` (a U-Net's sides are multiples of 2**num_downs)."""
    return max(int(multiple), -(-int(size) // int(multiple)) * int(multiple))


def example_side(size: int, multiple: int) -> int:
    """The side an export traces at: ``size`` for a ResNet; for a U-Net at least two multiples, so that no
    feature map is 1x1 (torch.export would specialise the shapes on it)."""
    return size if multiple <= SIZE_MULTIPLE else max(fit_side(size, multiple), 2 * multiple)


def model_multiple(model: nn.Module) -> int:
    """The side multiple ``model``'s architecture runs at (4 for a ResNet, 2**num_downs for a U-Net)."""
    from ..models.family import size_multiple

    return size_multiple(model.arch)


def check_shapes(check_size: int, multiple: int = SIZE_MULTIPLE) -> List[Tuple[int, int, int, int]]:
    """Input shapes of the parity check: a square batch of one and a non-square batch of two.

    ``multiple``: the network's side multiple; above 4 (a U-Net) ``check_size`` is rounded up to it and the
    non-square shape is one multiple wider."""
    check_image_side(check_size, "the parity check size (--check-size, export.check_size)", MIN_SIZE)
    if multiple > SIZE_MULTIPLE:
        side = fit_side(check_size, multiple)
        return [(1, 3, side, side), (2, 3, side, side + multiple)]
    short = max(MIN_SIZE, int(round(check_size * 2 / 3 / SIZE_MULTIPLE)) * SIZE_MULTIPLE)
    return [(1, 3, check_size, check_size), (2, 3, short, check_size)]


def check_inputs(check_size: int, seed: int = 0, in_channels: int = 3,
                 multiple: int = SIZE_MULTIPLE) -> List[torch.Tensor]:
    """Seeded random NCHW inputs in [-1, 1] for the parity check (shapes: :func:`check_shapes`)."""
    g = torch.Generator().manual_seed(int(seed))
    return [torch.rand((n, in_channels, h, w), generator=g) * 2 - 1
            for n, _, h, w in check_shapes(check_size, multiple)]


def reference_outputs(model: nn.Module, name: str, check_size: int,
                      seed: int = 0) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
    """(inputs, eager outputs) of the parity check; :class:`~coevo.core.guards.NonFiniteError` when an output
    holds NaN or inf, before anything is written: such a model has no export worth keeping."""
    from ..core.guards import check_finite

    inputs = check_inputs(check_size, seed, model.arch.in_channels, model_multiple(model))
    with torch.inference_mode():
        reference = [check_finite(model(x), f"{name}'s output on the export's check inputs",
                                  "its weights overflow float32 (a diverged or corrupt training run); "
                                  "nothing was exported") for x in inputs]
    return inputs, reference


def _max_abs_diff(model: nn.Module, reference: Sequence[torch.Tensor], inputs: Sequence[torch.Tensor]) -> float:
    with torch.inference_mode():
        return max(float((model(x).float() - ref).abs().max()) for x, ref in zip(inputs, reference))


# ----------------------------------------------------------------------------- writers
def save_torchscript(model: ResnetGenerator, path: PathLike) -> Path:
    """Script ``model`` (CPU, eval) and save it with its architecture as ``coevo_arch.json`` and its weights
    as ``coevo_weights.safetensors``, from which coevo rebuilds it without running the program."""
    from ..models.archive import TS_WEIGHTS_ENTRY, torchscript_weights_entry

    path = Path(path)
    extra = {ARCH_EXTRA_FILE: json.dumps(model.arch.to_dict()),
             TS_WEIGHTS_ENTRY.split("/", 1)[1]: torchscript_weights_entry(model)}
    with quiet_export():
        scripted = torch.jit.script(model)
        with atomic_path(path) as tmp:
            torch.jit.save(scripted, str(tmp), _extra_files=extra)
    return path


def _dynamic_shape_specs() -> List[Tuple[str, Any]]:
    """Dynamic-shape specs to try in order: H and W as multiples of 4 (what the generator
    needs), then torch's own inference (``Dim.AUTO``)."""
    from torch.export import Dim

    side = MAX_IMAGE_SIDE // SIZE_MULTIPLE
    derived = {0: Dim("batch", min=1, max=1024),
               2: SIZE_MULTIPLE * Dim("height4", min=MIN_SIZE // SIZE_MULTIPLE, max=side),
               3: SIZE_MULTIPLE * Dim("width4", min=MIN_SIZE // SIZE_MULTIPLE, max=side)}
    auto = {0: Dim.AUTO, 2: Dim.AUTO, 3: Dim.AUTO}
    return [("multiple-of-4", derived), ("auto", auto)]


class OneChannelInstanceNorm(nn.Module):
    """``nn.InstanceNorm2d(affine=False, track_running_stats=False)`` written as mean and variance over H and W,
    for the ``.pt2`` export of a 1-channel group (it has no weights: the state_dict stays the network's).

    torch's own instance norm views an ``N x C x H x W`` input as ``1 x N*C x H x W`` and back; for C = 1 the
    view's shape check (``1 % size != 0`` in ``torch._refs._reshape_view_helper``) is a condition on the dynamic
    spatial size that torch cannot prove from its range, so the program would keep it as guard code, which coevo's
    loader refuses to run. Computed in the input's dtype (torch's reductions accumulate float16 in float32)."""

    def __init__(self, eps: float) -> None:
        super().__init__()
        self.eps = float(eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var, mean = torch.var_mean(x, dim=(2, 3), correction=0, keepdim=True)
        return (x - mean) * torch.rsqrt(var + self.eps)

    def extra_repr(self) -> str:
        return f"eps={self.eps}"


def export_friendly_norms(model: nn.Module) -> int:
    """Replace, in place, every weightless 1-channel ``InstanceNorm2d`` of ``model`` by :class:`OneChannelInstanceNorm`
    (same output, no guard code in a dynamic ``torch.export`` program); returns how many were replaced."""
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.InstanceNorm2d) and child.num_features == 1 and not child.affine \
                    and not child.track_running_stats:
                setattr(parent, name, OneChannelInstanceNorm(child.eps))
                replaced += 1
    return replaced


def guard_code(program: Any) -> List[str]:
    """The guard code torch would ``exec`` when it loads ``program`` (conditions on the input's sizes it could not
    prove); coevo's loader refuses a program that holds any (:func:`coevo.deploy.exported.check_pt2_archive`)."""
    return [str(g) for g in getattr(program, "_guards_code", None) or []]


def save_torch_export(model: nn.Module, path: PathLike, dtype: torch.dtype = torch.float32,
                      channels_last: bool = False, arch: Optional[GeneratorArch] = None,
                      example_size: int = 64, static_shape: Optional[Tuple[int, int, int, int]] = None
                      ) -> Dict[str, Any]:
    """``torch.export`` ``model`` (CPU, eval) in ``dtype`` and save it as one ``.pt2`` archive.

    Batch, height and width are dynamic (height and width multiples of 4); a program torch keeps dynamic
    only with guard code counts as not dynamic (coevo's loader refuses guard code). 1-channel InstanceNorms
    (a group pruned to one filter) are exported as :class:`OneChannelInstanceNorm`, which needs none. A
    ``channels_last`` program that is not dynamic is tried contiguous next (1-channel groups' strides
    can need guards too; the info's ``channels_last`` is then False). If torch cannot
    export them dynamically, the program is exported for ``static_shape`` only (default
    ``1 x C x example_size x example_size``), logged, and the returned info says so (``static_shape``,
    ``fallback_reason``); a U-Net's always is (torch
    would keep its sides dynamic only with guard code, which coevo does not load). The archive
    carries the architecture (``coevo_arch.json``) and ``coevo_program.json`` (dtype,
    channels_last, dynamic). Returns ``{"dtype", "channels_last", "dynamic", "dynamic_shapes",
    "static_shape", "fallback_reason"}``.
    """
    from .exported import DTYPES

    path = Path(path)
    arch = arch if arch is not None else getattr(model, "arch", None)
    in_ch = arch.in_channels if arch is not None else 3
    multiple = model_multiple(model) if arch is not None else SIZE_MULTIPLE
    example_size = example_side(example_size, multiple)
    model = copy.deepcopy(model).cpu().eval().to(dtype)
    export_friendly_norms(model)  # a 1-wide pruned group's InstanceNorm would leave guard code in the program
    # channels_last first when asked for; a contiguous program next, as a 1-channel group's channels_last strides
    # can leave guard code (torch compares them with the dynamic sizes), and a dynamic program beats a static one
    layouts = {False: model}
    if channels_last:
        layouts = {True: copy.deepcopy(model).to(memory_format=torch.channels_last), False: model}

    def example(shape: Tuple[int, int, int, int], last: bool = channels_last) -> Tuple[torch.Tensor]:
        x = torch.zeros(shape, dtype=dtype)
        return (x.contiguous(memory_format=torch.channels_last) if last else x,)

    info: Dict[str, Any] = {"dtype": next(k for k, v in DTYPES.items() if v == dtype), "channels_last": channels_last,
                            "dynamic": False, "dynamic_shapes": None, "static_shape": None, "fallback_reason": None}
    program = None
    reasons = []
    specs = _dynamic_shape_specs()
    if multiple > SIZE_MULTIPLE:
        # a U-Net: torch keeps its sides dynamic only with guard code in the program (no side of one multiple,
        # where the innermost feature map is 1x1), which coevo's loader refuses to execute: one shape
        specs = []
        reasons.append(f"a U-Net's dynamic sides need guard code in the program (multiples of {multiple}, not "
                       "one), which coevo does not load")
    with quiet_export(), torch.no_grad():
        for (last, variant), (label, spec) in ((v, s) for v in layouts.items() for s in specs):
            label = label if last == channels_last else f"{label}, contiguous"
            try:  # batch 2: torch.export specialises a dimension whose example size is 0 or 1
                program = torch.export.export(variant, example((2, in_ch, example_size, example_size), last),
                                              dynamic_shapes=(spec,))
            except Exception as e:  # constraint violations name the guard torch could not keep dynamic
                reasons.append(f"{label}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
                continue
            guards = guard_code(program)
            if guards:  # torch keeps these sizes dynamic only under conditions it would exec at load
                reasons.append(f"{label}: dynamic only with guard code ({guards[0][:80]}), which coevo does not load")
            elif _is_dynamic(program):
                info.update(dynamic=True, dynamic_shapes=label, channels_last=last)
                if last != channels_last:
                    info["fallback_reason"] = "; ".join(reasons)
                    log.warning("torch.export kept the sizes dynamic only without channels_last (%s); exported a "
                                "contiguous program", info["fallback_reason"])
                break
            else:
                reasons.append(f"{label}: torch specialised every dimension")
            program = None
        if program is None:
            shape = static_shape or (1, in_ch, example_size, example_size)
            log.warning("torch.export could not keep batch/height/width dynamic (%s); exporting %s only: at other "
                        "sizes use the ONNX export or the .pt/.safetensors weights", "; ".join(reasons),
                        "x".join(map(str, shape)))
            program = torch.export.export(layouts[channels_last], example(shape))
            info.update(static_shape=list(shape), fallback_reason="; ".join(reasons))
            if guard_code(program):
                raise ExportError(f"torch.export left guard code in the {'x'.join(map(str, shape))} program of "
                                  f"{path.name} ({guard_code(program)[0][:80]}), which coevo does not load; "
                                  "export ONNX or safetensors instead")
    extra = {ARCH_EXTRA_FILE: json.dumps(arch.to_dict()) if arch is not None else "",
             PROGRAM_EXTRA_FILE: json.dumps({k: info[k] for k in ("dtype", "channels_last", "dynamic")})}
    buffer = io.BytesIO()  # torch.export.save wants a .pt2 name; atomic_path's temporary file has none
    with quiet_export():
        torch.export.save(program, buffer, extra_files=extra)
    atomic_write_bytes(path, buffer.getvalue())
    return info


def _is_dynamic(program: Any) -> bool:
    """Whether the program's input has at least one symbolic dimension."""
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name not in program.graph_signature.inputs_to_parameters \
                and node.name not in program.graph_signature.inputs_to_buffers:
            val = node.meta.get("val")
            if val is not None and any(not isinstance(d, int) for d in val.shape):
                return True
    return False


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
    if arch is not None:
        example_size = example_side(example_size, model_multiple(model))
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
        if opset not in _OPSET_RAISED:  # once per process, not once per file
            _OPSET_RAISED.add(opset)
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


# ----------------------------------------------------------------------------- format registry
class WriteSettings(NamedTuple):
    """What the format writers take besides the model: the ONNX opset and exporter, and the one input shape
    a torch.export program is traced at when torch cannot keep its shapes dynamic."""

    opset: int
    onnx_exporter: str
    static_shape: Tuple[int, ...]


def _write_torch_export(model: ResnetGenerator, path: Path, settings: WriteSettings) -> Dict[str, Any]:
    return save_torch_export(model, path, static_shape=settings.static_shape)


def _write_onnx(model: ResnetGenerator, path: Path, settings: WriteSettings) -> Dict[str, Any]:
    return save_onnx(model, path, opset=settings.opset, exporter=settings.onnx_exporter)


def _write_safetensors(model: ResnetGenerator, path: Path, settings: WriteSettings) -> Dict[str, Any]:
    save_generator(model, path)
    return {}


def _write_torchscript(model: ResnetGenerator, path: Path, settings: WriteSettings) -> Dict[str, Any]:
    save_torchscript(model, path)
    return {}


class Writer(NamedTuple):
    """How one export format is written: ``write(model, path, settings)`` returns extra report fields."""

    suffix: str
    write: Callable[[ResnetGenerator, Path, WriteSettings], Dict[str, Any]]


WRITERS: Registry[Writer] = Registry("export format")
WRITERS.register("torch-export", Writer(".pt2", _write_torch_export))
WRITERS.register("onnx", Writer(".onnx", _write_onnx))
WRITERS.register("safetensors", Writer(".safetensors", _write_safetensors))
WRITERS.register("torchscript", Writer(".ts", _write_torchscript))
FORMATS = WRITERS.names()  # the built-in ones (cli/export spells them out for --help)
# TorchScript is opt-in: torch.jit is deprecated in the pinned torch, torch.export replaces it.
DEFAULT_FORMATS = ("torch-export", "onnx", "safetensors")


@dataclass(frozen=True)
class ExportOptions:
    """Everything one export is asked for, built once (a run's export stage: :meth:`from_config`;
    ``coevo export``: from its flags) and handed to the format writers and the deploy target
    (:func:`coevo.deploy.targets.export_for_target`).

    ``target``: ``cpu`` or ``cuda`` (resolved, see :func:`coevo.deploy.targets.resolve_target`).
    ``threads``: ONNX Runtime intra-op threads of the INT8 check (None: its default).
    """

    formats: Tuple[str, ...] = DEFAULT_FORMATS
    check_size: int = 96               # parity check at a size other than the training size
    opset: int = 18
    seed: int = 0                      # seeds the random parity-check inputs
    onnx_exporter: str = "auto"        # auto | dynamo | legacy
    target: str = "cpu"
    int8: bool = True                  # cpu target: try static INT8
    calibration_images: int = 32
    cuda_dtype: str = "float16"        # cuda target: float16 | bfloat16
    threads: Optional[int] = None

    @classmethod
    def from_config(cls, cfg: Any, target: str) -> "ExportOptions":
        """A run's export options: its ``export`` section, its seed and its bench threads, for the resolved
        ``target`` (``cfg`` is a :class:`coevo.config.Config`)."""
        e = cfg.export
        return cls(formats=tuple(e.formats), check_size=e.check_size, opset=e.opset, seed=cfg.seed, target=target,
                   int8=e.int8, calibration_images=e.calibration_images, cuda_dtype=e.cuda_dtype,
                   threads=cfg.bench.threads or None)


# ----------------------------------------------------------------------------- export + check
def export_generator(model: ResnetGenerator, out_dir: PathLike, name: str,
                     formats: Sequence[str] = DEFAULT_FORMATS, check_size: int = 96, opset: int = 17,
                     seed: int = 0, onnx_exporter: str = "auto") -> Dict[str, Dict[str, Any]]:
    """Write ``out_dir/name.{pt2,onnx,safetensors}`` (and ``.ts``) and check each against eager PyTorch.

    Each file is reloaded from disk and run on seeded random inputs in [-1, 1] of shapes
    :func:`check_shapes` (``check_size`` should differ from the training size). Returns
    ``{format: {"path", "max_abs_diff", "ok", ...}}`` (ONNX adds ``exporter``, ``opset``,
    ``fallback_reason``; torch-export adds ``dynamic`` and, for a program torch could not
    keep dynamic, the one ``static_shape`` it runs and was checked on) and merges it under
    ``name`` into ``out_dir/export_report.json``.
    Raises :class:`ExportError` when a difference exceeds :data:`TOLERANCE`.
    """
    unknown = [f for f in formats if f not in WRITERS]
    if unknown or not formats:
        raise ValueError(f"unknown export formats {unknown or list(formats)}; choose from {list(WRITERS)}")
    if not is_generator(model):
        raise TypeError("export_generator needs a coevo generator (ResnetGenerator or UnetGenerator); "
                        "re-export from the .pt/.safetensors checkpoint, not from an exported file")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = copy.deepcopy(model).cpu().eval()
    inputs, reference = reference_outputs(model, name, check_size, seed)
    settings = WriteSettings(opset, onnx_exporter, tuple(inputs[0].shape))

    report: Dict[str, Dict[str, Any]] = {}
    for fmt in formats:
        suffix, write = WRITERS[fmt]
        path = out_dir / f"{name}{suffix}"
        entry: Dict[str, Any] = {"path": str(path)}
        entry.update(write(model, path, settings))
        reloaded = load_exported(path, trust=True) if fmt != "safetensors" else load_generator(path)  # just written
        # a static program (torch could not keep the shapes dynamic) runs its one shape only
        pairs = [(x, ref) for x, ref in zip(inputs, reference)
                 if entry.get("static_shape") is None or list(x.shape) == list(entry["static_shape"])]
        diff = _max_abs_diff(reloaded, [ref for _, ref in pairs], [x for x, _ in pairs])
        entry.update(max_abs_diff=diff, ok=bool(diff <= TOLERANCE), size_bytes=path.stat().st_size,
                     check_shapes=["x".join(map(str, x.shape)) for x, _ in pairs])
        report[fmt] = entry
        log.info("%s -> %s: max |diff| %.2e on %s", fmt, path, diff, entry["check_shapes"])

    _merge_report(out_dir / REPORT_NAME, name, report)
    failed = {f: e["max_abs_diff"] for f, e in report.items() if not e["ok"]}
    if failed:
        raise ExportError(
            f"exported {name} does not match eager PyTorch within {TOLERANCE:g}: "
            + ", ".join(f"{f} max |diff| {d:.3e}" for f, d in failed.items())
            + f" (inputs {check_shapes(check_size, model_multiple(model))}, seed {seed}); see {out_dir / REPORT_NAME}"
        )
    return report


def _read_report(path: Path) -> Dict[str, Any]:
    if path.exists():
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:
            log.warning("%s is not valid JSON; rewriting it", path)
    return {}


def _merge_report(path: Path, name: str, report: Dict[str, Any]) -> None:
    merged = _read_report(path)
    merged[name] = report
    atomic_write_text(path, json.dumps(merged, indent=2, sort_keys=True) + "\n")


def merge_report_entry(path: PathLike, name: str, key: str, value: Any) -> None:
    """Set ``report[name][key] = value`` in the export report at ``path`` (other entries are kept)."""
    path = Path(path)
    merged = _read_report(path)
    merged.setdefault(name, {})[key] = value
    atomic_write_text(path, json.dumps(merged, indent=2, sort_keys=True) + "\n")
