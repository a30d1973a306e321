"""INT8 static quantisation of an ONNX generator for CPUs, and the check that decides whether to ship it.

ONNX Runtime's static quantisation (QDQ format, weights per output channel, activation
ranges from MinMax calibration) turns the convolutions into int8 kernels. The file it
writes is an ordinary ``.onnx`` (``name.int8.onnx``) with ``coevo_precision=int8`` in its
metadata; :class:`coevo.deploy.exported.OnnxGenerator` runs it like any other export.

Calibration images are training images of the model's input domain (never test
images), each at its own size rounded down to multiples of 4. The quality check runs
the fp32 and INT8 models on the test inputs and measures (:func:`int8_quality`):

* PSNR between the INT8 and the fp32 outputs: at least :data:`MIN_PSNR_VS_FP32_DB`;
* where the test split has ground truth (the built-in set: ``testA_gt_B``, ``testB_gt_A``),
  the fp32 model's PSNR to it minus the INT8 model's: at most :data:`MAX_GT_DROP_DB`.

Both on 8-bit quantised images (:func:`coevo.evaluation.metrics.psnr`), means over the images.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence

import numpy as np
import torch

from ..errors import CoevoError
from ..core.files import PathLike, atomic_path
from .exported import ARCH_METADATA_KEY, PRECISION_METADATA_KEY, quiet_export

log = logging.getLogger(__name__)

MIN_PSNR_VS_FP32_DB = 35.0
MAX_GT_DROP_DB = 0.3
CALIBRATION_IMAGES = 32
CHECK_IMAGES = 64  # test images the quality check translates (all of them when fewer)
# Convolutions with fewer channels than this stay fp32. Measured with one thread at 256x256
# (ONNX Runtime 1.32, AMD EPYC): the demo generator's 7x7 head conv (8 -> 3 channels) took
# 28.7 ms in int8 against 13.3 ms in fp32, its 7x7 stem (3 -> 8) 14.6 ms against 5.5 ms.
MIN_INT8_CHANNELS = 8


class CalibrationError(CoevoError):
    """No usable calibration images (missing folder, no images in it)."""


# ----------------------------------------------------------------------------- calibration data
def _spread(n_total: int, n: int) -> List[int]:
    """``n`` indices spread evenly over ``range(n_total)`` (deterministic: no RNG involved)."""
    if n >= n_total:
        return list(range(n_total))
    return sorted({int(round(i)) for i in np.linspace(0, n_total - 1, n)})


def calibration_inputs(folder: PathLike, n: int = CALIBRATION_IMAGES, size: Optional[int] = None,
                       channels: int = 3) -> List[np.ndarray]:
    """Up to ``n`` images of ``folder`` (spread over its sorted list) as 1x3xHxW float32 arrays in [-1, 1]
    (``channels`` 1: grayscale, 1x1xHxW, for a generator of 1-channel data)."""
    from ..data import SingleImageDataset

    folder = Path(folder)
    if not folder.is_dir():
        raise CalibrationError(f"calibration folder {folder} does not exist")
    ds = SingleImageDataset(folder, size=size, skip_bad=True, channels=channels)
    if len(ds) == 0:
        raise CalibrationError(f"calibration folder {folder} holds no images")
    return [ds[i]["image"].unsqueeze(0).numpy().astype(np.float32) for i in _spread(len(ds), n)]


class _Feed:
    """ONNX Runtime's CalibrationDataReader protocol over a list of arrays."""

    def __init__(self, input_name: str, arrays: Sequence[np.ndarray]) -> None:
        self._items = iter([{input_name: a} for a in arrays])

    def get_next(self) -> Optional[Dict[str, np.ndarray]]:
        return next(self._items, None)

    def rewind(self) -> None:  # part of the protocol; one pass is all MinMax needs
        pass


# ----------------------------------------------------------------------------- quantisation
@contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """ONNX Runtime's quantiser warns on the root logger about per-channel axes of 1-D tensors
    (biases, norm scales), which it then quantises per tensor, as intended."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        root.setLevel(level)


def narrow_convs(model: Any, min_channels: int) -> List[str]:
    """Names of the Conv/ConvTranspose nodes of an ONNX ``model`` with fewer than ``min_channels``
    input or output channels: in a generator, the 7x7 convolutions that read and write the RGB image."""
    weights = {init.name: list(init.dims) for init in model.graph.initializer}
    names = []
    for node in model.graph.node:
        if node.op_type not in ("Conv", "ConvTranspose") or len(node.input) < 2 or node.input[1] not in weights:
            continue
        dims = weights[node.input[1]]
        groups = next((a.i for a in node.attribute if a.name == "group"), 1) or 1
        # Conv weights are (out, in/groups, k, k); ConvTranspose weights (in, out/groups, k, k)
        out_ch, in_ch = (dims[0], dims[1] * groups) if node.op_type == "Conv" else (dims[1] * groups, dims[0])
        if min(out_ch, in_ch) < min_channels:
            names.append(node.name)
    return names


@contextmanager
def _working_directory(folder: Path) -> Iterator[None]:
    """Run the block with ``folder`` as the working directory (restored afterwards, also on errors)."""
    before = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


def quantize_int8(fp32_path: PathLike, int8_path: PathLike, calibration: Sequence[np.ndarray],
                  per_channel: bool = True, activation_type: str = "int8",
                  min_channels: Optional[int] = None) -> Dict[str, Any]:
    """Write ``int8_path``: ``fp32_path`` statically quantised (QDQ, MinMax) on ``calibration``.

    ``calibration``: NCHW float32 arrays in [-1, 1]. ``activation_type``: ``"int8"``
    (symmetric-range signed, ONNX Runtime's default) or ``"uint8"``. The fp32 model is
    pre-processed first (ONNX Runtime's shape inference and basic graph optimisation).
    Convolutions with fewer than ``min_channels`` (default :data:`MIN_INT8_CHANNELS`) input or
    output channels stay fp32 (:func:`narrow_convs`; 0 quantises every one): ONNX Runtime's int8 kernel runs them
    slower than its fp32 one. Returns the settings used, for the export report.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if not calibration:
        raise CalibrationError("INT8 quantisation needs at least one calibration input")
    if activation_type not in ("int8", "uint8"):
        raise ValueError(f"activation_type must be 'int8' or 'uint8', got {activation_type!r}")
    fp32_path, int8_path = Path(fp32_path).resolve(), Path(int8_path).resolve()
    source = onnx.load(str(fp32_path))
    input_name = source.graph.input[0].name
    settings: Dict[str, Any] = {
        "format": "QDQ", "per_channel": per_channel, "weights": "int8", "activations": activation_type,
        "calibration_method": "MinMax", "calibration_inputs": len(calibration),
        "calibration_shapes": sorted({"x".join(map(str, a.shape)) for a in calibration}), "preprocessed": True,
    }
    with tempfile.TemporaryDirectory(prefix="coevo-int8-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        try:
            # ONNX Runtime's symbolic shape inference writes sym_shape_infer_temp.onnx and its external data
            # into the working directory when it cannot infer every shape (e.g. a U-Net's dynamic sides):
            # it runs inside the temporary folder so that nothing lands in the user's folder
            with quiet_export(), _working_directory(Path(tmp)):
                quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=False)
        except Exception as e:  # pre-processing helps the quantiser; it is not required
            log.info("ONNX Runtime's quantisation pre-processing failed (%s: %s); quantising the model as it is",
                     type(e).__name__, e)
            pre, settings["preprocessed"] = fp32_path, False
        out = Path(tmp) / "int8.onnx"
        min_channels = MIN_INT8_CHANNELS if min_channels is None else min_channels
        keep_fp32 = narrow_convs(onnx.load(str(pre)), min_channels) if min_channels > 0 else []
        settings["fp32_nodes"] = keep_fp32
        with quiet_export(), _quiet_root_logger():
            quantize_static(
                str(pre), str(out), _Feed(input_name, calibration), quant_format=QuantFormat.QDQ,
                per_channel=per_channel, weight_type=QuantType.QInt8,
                activation_type=QuantType.QInt8 if activation_type == "int8" else QuantType.QUInt8,
                calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=keep_fp32 or None,
            )
        proto = onnx.load(str(out))
        meta = {p.key: p.value for p in source.metadata_props}
        meta[PRECISION_METADATA_KEY] = "int8"
        meta["coevo_quantization"] = json.dumps(settings)
        del proto.metadata_props[:]
        for key, value in meta.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        proto.producer_name = "coevo"
        with atomic_path(int8_path) as dst:
            onnx.save_model(proto, str(dst), save_as_external_data=False)
    if ARCH_METADATA_KEY not in meta:
        log.info("%s carries no architecture; neither does %s", fp32_path, int8_path)
    return settings


# ----------------------------------------------------------------------------- the check
def int8_quality(fp32: torch.nn.Module, int8: torch.nn.Module, inputs: PathLike,
                 ground_truth: Optional[PathLike] = None, max_images: int = CHECK_IMAGES,
                 size: Optional[int] = None, channels: int = 3) -> Dict[str, Any]:
    """PSNR of INT8 against fp32 outputs on the images of ``inputs``; both to ground truth when given.
    ``channels``: the generators' input channels (1 reads the images as grayscale).
    ``size``: each image resized to ``size`` x ``size`` (None: its own size, rounded down to multiples of 4).

    ``fp32``, ``int8``: generators (NCHW, [-1, 1]). ``ground_truth``: a folder holding the
    exact translation of each input under the input's file name. Returns means (dB) and
    the worst image against fp32; ``gt_drop_db`` is fp32's PSNR to ground truth minus INT8's.
    """
    from ..data import SingleImageDataset
    from ..evaluation.evaluate import _load_ground_truth
    from ..evaluation.metrics import psnr

    ds = SingleImageDataset(inputs, size=size, skip_bad=True, channels=channels)
    if len(ds) == 0:
        raise CalibrationError(f"{inputs} holds no images for the INT8 quality check")
    gt_dir = Path(ground_truth) if ground_truth is not None and Path(ground_truth).is_dir() else None
    vs_fp32: List[float] = []
    fp32_gt: List[float] = []
    int8_gt: List[float] = []
    with torch.inference_mode():
        for i in _spread(len(ds), max_images):
            item = ds[i]
            x = item["image"].unsqueeze(0)
            y32, y8 = fp32(x).float(), int8(x).float()
            vs_fp32.append(float(psnr(y8, y32)[0]))
            if gt_dir is not None:
                gt = _load_ground_truth(gt_dir, [Path(item["path"])], y32)
                fp32_gt.append(float(psnr(y32, gt)[0]))
                int8_gt.append(float(psnr(y8, gt)[0]))
    mean = lambda v: float(sum(v) / len(v)) if v else None  # noqa: E731
    result: Dict[str, Any] = {
        "inputs": str(inputs), "ground_truth": str(gt_dir) if gt_dir else None, "n_images": len(vs_fp32),
        "psnr_vs_fp32_db": mean(vs_fp32), "psnr_vs_fp32_min_db": min(vs_fp32),
        "psnr_fp32_to_gt_db": mean(fp32_gt), "psnr_int8_to_gt_db": mean(int8_gt),
        "gt_drop_db": (mean(fp32_gt) - mean(int8_gt)) if fp32_gt else None,
    }
    return result


def int8_verdict(quality: Dict[str, Any], min_psnr_db: float = MIN_PSNR_VS_FP32_DB,
                 max_gt_drop_db: float = MAX_GT_DROP_DB) -> List[str]:
    """Why INT8 must not be shipped (an empty list: it may). Missing ground truth is no reason."""
    reasons = []
    if quality["psnr_vs_fp32_db"] < min_psnr_db:
        reasons.append(f"PSNR to the fp32 output {quality['psnr_vs_fp32_db']:.2f} dB < {min_psnr_db:g} dB")
    if quality.get("gt_drop_db") is not None and quality["gt_drop_db"] > max_gt_drop_db:
        reasons.append(f"PSNR to ground truth drops by {quality['gt_drop_db']:.2f} dB > {max_gt_drop_db:g} dB")
    return reasons
