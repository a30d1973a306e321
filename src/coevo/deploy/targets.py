"""Per-target deployment: the fastest artifact that passed its check, recorded as "deployed".

:func:`export_for_target` writes the usual exports (:func:`coevo.deploy.export.export_generator`)
and then the target's own artifacts, and records under ``deploy`` in ``export_report.json``
which file to ship and which ``coevo bench`` backend runs it:

* ``cpu``: ``name.onnx`` (fp32; ONNX Runtime optimises the graph when it loads it) and
  ``name.int8.onnx`` (static INT8, :mod:`coevo.deploy.quantize`), calibrated on training images of
  the model's input domain. INT8 is deployed only if it passes its quality check
  (PSNR >= 35 dB to the fp32 output; on data with ground truth a drop of at most 0.3 dB);
  otherwise, or without calibration images, fp32 ONNX is deployed and the report says why.
* ``cuda``: ``name.pt2`` (fp32) and ``name.fp16.pt2``, a ``torch.export`` program in float16
  (or bfloat16) with channels_last weights, run by :class:`coevo.deploy.cuda_runner.CudaRunner`
  as CUDA graphs. It is deployed if its output stays within
  :data:`coevo.deploy.cuda_runner.PARITY_TOLERANCE` of fp32; else the fp32 program is.
  Without a GPU the parity is measured on the CPU (the program in its own dtype) and the
  report says where it was measured.
"""
from __future__ import annotations

import copy
import json
import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

import torch

from .export import (  # noqa: F401  (ExportOptions: public here too, where export_for_target is)
    ExportOptions, REPORT_NAME, check_inputs, export_generator, fit_side, merge_report_entry, model_multiple,
    save_torch_export,
)
from ..core.files import PathLike
from ..core.registry import Registry
from ..errors import ConfigError
from ..models.generator import ResnetGenerator

log = logging.getLogger(__name__)

CUDA_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}
# generator name -> (training folder of its input domain, test inputs, their ground truth)
DOMAIN_FOLDERS = {"A": ("trainA", "testA", "testA_gt_B"), "B": ("trainB", "testB", "testB_gt_A")}


@dataclass
class DeployData:
    """Where the images of a generator's input domain are: for INT8 calibration and its check.

    ``calibration``: training images (never test images). ``test``: inputs the check
    translates (falls back to ``calibration`` when None). ``ground_truth``: the exact
    translations of ``test`` under the same file names, or None.
    """

    calibration: Optional[Path] = None
    test: Optional[Path] = None
    ground_truth: Optional[Path] = None


def input_domain(name: str) -> Optional[str]:
    """"A" for G_A (A->B) and reference names like latest_net_G_A; "B" likewise; None if the name says nothing."""
    for domain in ("A", "B"):
        if name == f"G_{domain}" or name.endswith(f"_G_{domain}") or name.endswith(f"net_G_{domain}"):
            return domain
    return None


def find_deploy_data(root: Optional[PathLike], name: str) -> DeployData:
    """The calibration/check folders for generator ``name`` under ``root``.

    ``root`` is a data set (``trainA``, ``testA``, ``testA_gt_B``, ...: the domain follows
    from the name, G_A reads A) or a plain folder of images (used for calibration and the
    check). None, or a data set and a name that names no domain: an empty :class:`DeployData`.
    """
    if root is None:
        return DeployData()
    root = Path(root)
    domain = input_domain(name)
    if domain is not None and (root / DOMAIN_FOLDERS[domain][0]).is_dir():
        train, test, gt = (root / f for f in DOMAIN_FOLDERS[domain])
        return DeployData(train, test if test.is_dir() else None, gt if gt.is_dir() else None)
    if (root / "trainA").is_dir() or (root / "trainB").is_dir():
        log.warning("%s is a data set, but the name %r says not which domain the generator reads (G_A reads A, "
                    "G_B reads B); give a folder of that domain's images instead", root, name)
        return DeployData()
    return DeployData(calibration=root)


# ----------------------------------------------------------------------------- cpu
def _deploy_cpu(_model: ResnetGenerator, out_dir: Path, name: str, report: Dict[str, Any], data: DeployData,
                options: ExportOptions) -> Dict[str, Any]:
    """INT8 from the fp32 ONNX file the export just checked (``_model``: read for its channels and side multiple)."""
    from .exported import OnnxGenerator
    from .quantize import (
        MAX_GT_DROP_DB, MIN_PSNR_VS_FP32_DB, CalibrationError, calibration_inputs, int8_quality, int8_verdict,
        quantize_int8,
    )

    fp32_path = Path(report["onnx"]["path"])
    fp32 = {"format": "onnx", "path": str(fp32_path), "backend": "onnxruntime", "precision": "fp32"}
    entry: Dict[str, Any] = {"target": "cpu", "deployed": fp32, "int8": None,
                             "graph_optimisation": "ONNX Runtime ORT_ENABLE_ALL, applied when the file is loaded"}
    if not options.int8:
        entry["int8"] = {"skipped": "INT8 switched off (export.int8=false / --no-int8)"}
        return entry
    if data.calibration is None:
        why = ("no calibration images: INT8 needs training images of the model's input domain "
               "(coevo export --calibration DIR); deploying fp32 ONNX")
        log.warning("%s: %s", name, why)
        entry["int8"] = {"skipped": why}
        return entry
    # a U-Net runs at multiples of 2**num_downs only: its images are resized to the parity check's side
    multiple = model_multiple(_model)
    channels = int(getattr(getattr(_model, "arch", None), "in_channels", 3))  # 1: grayscale images
    side = None if multiple <= 4 else fit_side(options.check_size, multiple)
    try:
        calib = calibration_inputs(data.calibration, options.calibration_images, size=side, channels=channels)
    except CalibrationError as e:
        log.warning("%s: %s; deploying fp32 ONNX", name, e)
        entry["int8"] = {"skipped": str(e)}
        return entry
    int8_path = out_dir / f"{name}.int8.onnx"
    settings = quantize_int8(fp32_path, int8_path, calib)
    threads = options.threads or None
    quality = int8_quality(OnnxGenerator(fp32_path, intra_op_num_threads=threads),
                           OnnxGenerator(int8_path, intra_op_num_threads=threads),
                           data.test or data.calibration, data.ground_truth, size=side, channels=channels)
    reasons = int8_verdict(quality, MIN_PSNR_VS_FP32_DB, MAX_GT_DROP_DB)
    entry["int8"] = {"path": str(int8_path), "size_bytes": int8_path.stat().st_size,
                     "calibration": {"folder": str(data.calibration), **settings},
                     "quality": quality, "ok": not reasons, "reasons": reasons,
                     "bounds": {"min_psnr_vs_fp32_db": MIN_PSNR_VS_FP32_DB, "max_gt_drop_db": MAX_GT_DROP_DB}}
    if reasons:
        log.warning("%s: INT8 fails its check (%s); deploying fp32 ONNX, keeping %s for inspection",
                    name, "; ".join(reasons), int8_path.name)
        return entry
    # INT8 is deployed only where it is also faster: for small networks ONNX Runtime's QDQ kernels can
    # cost more than they save (measured: a pix2pix student at 4.5 ms INT8 against 3.9 ms fp32)
    timing_side = fit_side(max(options.check_size, INT8_TIMING_SIDE), multiple)
    speed = onnx_medians({"fp32": fp32_path, "int8": int8_path}, timing_side, channels, threads)
    entry["int8"]["speed_ms"] = {k: round(v, 3) for k, v in speed.items()}
    entry["int8"]["speed_settings"] = (f"1x{channels}x{timing_side}x{timing_side}, ONNX Runtime, "
                                       f"{INT8_TIMING_ROUNDS} interleaved rounds, medians")
    entry["int8"]["faster"] = speed["int8"] < speed["fp32"]
    if not entry["int8"]["faster"]:
        log.info("%s: INT8 passes its check but is not faster than fp32 here (%.2f against %.2f ms at %d px); "
                 "deploying fp32 ONNX, keeping %s", name, speed["int8"], speed["fp32"], timing_side, int8_path.name)
    else:
        entry["deployed"] = {"format": "onnx-int8", "path": str(int8_path), "backend": "onnxruntime-int8",
                             "precision": "int8"}
        log.info("%s: INT8 passes (%.1f dB to fp32%s); deployed %s", name, quality["psnr_vs_fp32_db"],
                 "" if quality["gt_drop_db"] is None else f", ground-truth drop {quality['gt_drop_db']:+.3f} dB",
                 int8_path.name)
    return entry


INT8_TIMING_SIDE = 256   # the side INT8 and fp32 are timed at (at least the parity check's)
INT8_TIMING_ROUNDS = 15


def onnx_medians(paths: Dict[str, Path], side: int, channels: int, threads: Optional[int]) -> Dict[str, float]:
    """Median milliseconds of each ONNX file on one seeded 1 x channels x side x side input, the files
    timed round-robin in one run after a warm-up call each (a slow spell hits all alike)."""
    import statistics

    from .exported import OnnxGenerator
    from .timing import rotating_rounds, wall_ms

    models = {k: OnnxGenerator(p, intra_op_num_threads=threads) for k, p in paths.items()}
    x = torch.rand(1, channels, side, side, generator=torch.Generator().manual_seed(0)) * 2 - 1
    times: Dict[str, List[float]] = {k: [] for k in models}
    with torch.no_grad():
        for m in models.values():
            m(x)
        for k in rotating_rounds(list(models), INT8_TIMING_ROUNDS):
            times[k].append(wall_ms(lambda: models[k](x)))
    return {k: statistics.median(v) for k, v in times.items()}


# ----------------------------------------------------------------------------- cuda
def _deploy_cuda(model: ResnetGenerator, out_dir: Path, name: str, report: Dict[str, Any], data: DeployData,
                 options: ExportOptions) -> Dict[str, Any]:
    from .cuda_runner import PARITY_TOLERANCE, CudaRunner
    from .exported import load_exported

    dtype_name = options.cuda_dtype
    dtype = CUDA_DTYPES[dtype_name]
    short = {"float16": "fp16", "bfloat16": "bf16"}[dtype_name]
    path = out_dir / f"{name}.{short}.pt2"
    inputs = check_inputs(options.check_size, options.seed, model.arch.in_channels, model_multiple(model))
    info = save_torch_export(model, path, dtype=dtype, channels_last=True, static_shape=tuple(inputs[0].shape))
    on_cuda = torch.cuda.is_available()
    if not info["dynamic"]:
        inputs = [x for x in inputs if list(x.shape) == list(info["static_shape"])]
    program = load_exported(path, trust=True)  # written above by this process
    device = torch.device("cuda" if on_cuda else "cpu")
    where = "cuda" if on_cuda else "cpu"
    runner_error = None
    try:
        runner = CudaRunner(program, dtype=dtype, mode="graph") if on_cuda else program
        max_diff, mean_diff = _parity(model, runner, inputs, device)
    except Exception as e:  # the graph capture is the part no CPU test reaches: say so, check without it
        if not on_cuda:
            raise
        runner_error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        log.warning("%s: capturing the float16 program as a CUDA graph failed (%s); checking it without", name,
                    runner_error)
        max_diff, mean_diff = _parity(model, CudaRunner(program, dtype=dtype, mode="eager"), inputs, device)
    tol_max, tol_mean = PARITY_TOLERANCE[dtype]
    ok = max_diff <= tol_max and mean_diff <= tol_mean
    fast = {"path": str(path), "size_bytes": path.stat().st_size, **info,
            "parity": {"max_abs_diff": max_diff, "mean_abs_diff": mean_diff, "measured_on": where,
                       "tolerance": {"max_abs_diff": tol_max, "mean_abs_diff": tol_mean},
                       "shapes": ["x".join(map(str, x.shape)) for x in inputs], "ok": ok},
            "runner": f"coevo.deploy.cuda_runner.CudaRunner(dtype={dtype_name}, mode='graph')",
            "runner_error": runner_error}
    if not on_cuda:
        fast["parity"]["note"] = ("no CUDA device here: the program ran on the CPU in its own dtype; "
                                  "rerun the export on a GPU machine to check the CUDA kernels")
    entry: Dict[str, Any] = {"target": "cuda", "fast": fast}
    if ok and runner_error is None:
        entry["deployed"] = {"format": f"torch-export-{short}", "path": str(path),
                             "backend": f"cuda-{short}-graph", "precision": dtype_name}
    else:
        log.warning("%s: the %s program differs from fp32 by max %.3g / mean %.3g (tolerance %g / %g) or its "
                    "CUDA graph failed; deploying the fp32 program", name, dtype_name, max_diff, mean_diff,
                    tol_max, tol_mean)
        entry["deployed"] = {"format": "torch-export", "path": report["torch-export"]["path"],
                             "backend": "torch-export", "precision": "float32"}
    return entry


def _parity(model: ResnetGenerator, runner: torch.nn.Module, inputs, device: torch.device) -> tuple:
    """(max, mean) |runner - model| over ``inputs`` (the largest of each), the model in fp32 on the CPU."""
    max_diff, mean_diff = 0.0, 0.0
    with torch.inference_mode():
        for x in inputs:
            d = (runner(x.to(device)).float().cpu() - model(x)).abs()
            max_diff, mean_diff = max(max_diff, float(d.max())), max(mean_diff, float(d.mean()))
    return max_diff, mean_diff


class Deployer(NamedTuple):
    """One deploy target: the export formats it deploys from (they must be among the requested ones) and
    ``deploy(model, out_dir, name, export_report, data, options: ExportOptions) -> the report's deploy entry``."""

    formats: Tuple[str, ...]
    deploy: Callable[..., Dict[str, Any]]


DEPLOYERS: Registry[Deployer] = Registry("export target")
DEPLOYERS.register("cpu", Deployer(("onnx",), _deploy_cpu))
DEPLOYERS.register("cuda", Deployer(("torch-export",), _deploy_cuda))
EXPORT_TARGETS = DEPLOYERS.names()  # the built-in ones; "auto" picks one of them from the device


def resolve_target(target: str, device: str = "cpu") -> str:
    """``auto`` becomes ``cuda`` for a CUDA device and ``cpu`` otherwise; others must be in :data:`DEPLOYERS`."""
    if target == "auto":
        return "cuda" if str(device).startswith("cuda") else "cpu"
    if target not in DEPLOYERS:
        raise ConfigError(DEPLOYERS.unknown_message(target, extra=("auto",)))
    return target


def export_for_target(model: ResnetGenerator, out_dir: PathLike, name: str, options: Optional[ExportOptions] = None,
                      data: Optional[DeployData] = None, **settings: Any) -> Dict[str, Any]:
    """Export ``model`` in ``options.formats`` plus the artifacts of ``options.target``; record the deployed one.

    ``options``: see :class:`~coevo.deploy.export.ExportOptions` (default: its defaults); keyword
    ``settings`` replace single fields of it (``target="cuda"``, ``check_size=48``).
    Returns the :func:`coevo.deploy.export.export_generator` report with a ``deploy`` entry
    (also merged into ``out_dir/export_report.json``): ``deployed`` (``format``, ``path``,
    ``backend``: the ``coevo bench`` backend that runs it, ``precision``) and the target's
    checks. Raises :class:`coevo.deploy.export.ExportError` if a plain export fails its parity check.
    """
    options = replace(options or ExportOptions(), **settings)
    target = resolve_target(options.target)
    if options.cuda_dtype not in CUDA_DTYPES:
        raise ValueError(f"cuda_dtype must be one of {list(CUDA_DTYPES)}, got {options.cuda_dtype!r}")
    needed, deploy = DEPLOYERS.lookup(target)
    out_dir = Path(out_dir)
    model = copy.deepcopy(model).cpu().eval()
    report: Dict[str, Any] = export_generator(model, out_dir, name, formats=options.formats,
                                              check_size=options.check_size, opset=options.opset, seed=options.seed,
                                              onnx_exporter=options.onnx_exporter)
    missing = [f for f in needed if f not in report]
    if missing:  # the formats asked for leave out what this target ships: nothing is deployed
        why = f"the {target} target deploys from {', '.join(missing)}, which the export formats leave out"
        log.info("%s: %s", name, why)
        entry: Dict[str, Any] = {"target": target, "deployed": None, "skipped": why}
    else:
        entry = deploy(model, out_dir, name, report, data or DeployData(), options)
    entry["data"] = {k: (str(v) if v is not None else None) for k, v in asdict(data or DeployData()).items()}
    merge_report_entry(out_dir / REPORT_NAME, name, "deploy", entry)
    return {**report, "deploy": entry}


def deployed_artifact(export_dir: PathLike, name: str) -> Optional[Dict[str, Any]]:
    """The ``deploy.deployed`` record of ``name`` in ``export_dir/export_report.json`` (None if absent)."""
    path = Path(export_dir) / REPORT_NAME
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return ((report.get(name) or {}).get("deploy") or {}).get("deployed")


__all__ = ["DEPLOYERS", "EXPORT_TARGETS", "DeployData", "Deployer", "ExportOptions", "deployed_artifact",
           "export_for_target", "find_deploy_data", "input_domain", "resolve_target"]
