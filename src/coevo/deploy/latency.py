"""Latency lookup tables: predict a slim generator's measured latency from per-layer timings.

MACs are not time: InstanceNorm, padding and copies scale with activations, and a
CPU's speed is a step function of channel counts. A :class:`LatencyTable` holds
the measured latency of each layer unit of the generator (a convolution with its
padding, norm and activation) on a grid of (input, output) channel counts, at
one image size, on one target (torch eager on the CPU with N threads, ONNX Runtime on the
CPU with N intra-op threads, or torch eager on CUDA).
A network's predicted latency is ``scale * (sum of its units) + offset``: each
unit is bilinearly interpolated on the grid, and ``scale`` and ``offset`` are fitted
(least squares) to the measured latency of the teacher, three uniformly narrowed
copies of it (1/4, 1/2, 3/4 of every width) and ``calibration`` networks of random
widths (drawn from their own seeded stream). Units timed alone miss what
joins them (the residual adds, memory traffic between layers); the fit absorbs that.

    table = measure_table(teacher.arch, size=256, target="cpu", threads=1)   # minutes, once per machine
    table.save("latency_cpu1_256.json")                                      # with the machine's description
    ms = table.predict(slim.arch)

Units (names match :func:`coevo.models.generator.group_names`; ``S`` the image size):
``stem`` 3->stem at S, ``down1`` stem->down1 at S->S/2, ``down2`` down1->trunk at
S/2->S/4, ``block_in`` trunk->inner and ``block_out`` inner->trunk (+ residual
add) at S/4, ``up1`` trunk->up1 at S/4->S/2, ``up2`` up1->up2 at S/2->S, ``head``
up2->3 at S (+ tanh).
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Tuple

import numpy as np
import torch
from torch import nn

from ..errors import CoevoError
from ..core.files import atomic_write_text
from ..core.limits import MIN_SIZE, check_image_side
from ..models.generator import GeneratorArch, ResnetGenerator, group_names
from ..models.topology import ConvSpec, resnet_convs, unit_layers
from .timing import machine_info, median_ms

log = logging.getLogger(__name__)

TABLE_FORMAT = "coevo.latency_table"
TABLE_VERSION = 1
LATENCY_TARGETS = ("cpu", "onnxruntime", "cuda")  # torch eager on CPU, ONNX Runtime on CPU (fp32), torch eager on CUDA


class LatencyTableError(CoevoError):
    """A latency table that does not fit the network, target or size asked for; the message says which."""


def _unit_spec(kind: str) -> ConvSpec:
    """The layer-table row of latency unit ``kind`` (every block's units are alike)."""
    for spec in resnet_convs(1):
        if spec.unit == kind:
            return spec
    raise ValueError(f"unknown unit {kind!r}")


def _unit(kind: str, cin: int, cout: int, norm: str = "instance") -> nn.Module:
    """The layers of one unit, exactly as :class:`ResnetGenerator` builds them (the residual add of
    ``block_out`` is not timed here: the calibration fit absorbs it; nor is a Dropout, identity in eval)."""
    return nn.Sequential(*unit_layers(_unit_spec(kind), cin, cout, norm))


# unit -> (input channels, output channels, input size divisor) as functions of the widths
def _units(arch: GeneratorArch) -> List[Tuple[str, Callable[[Mapping[str, int]], Tuple[int, int]], int]]:
    def channels(group: Optional[str], image: int) -> Callable[[Mapping[str, int]], int]:
        return (lambda w: image) if group is None else (lambda w: w[group])

    out = []
    for spec in resnet_convs(arch.n_blocks):
        cin, cout = channels(spec.cin, arch.in_channels), channels(spec.cout, arch.out_channels)
        out.append((spec.unit, lambda w, cin=cin, cout=cout: (cin(w), cout(w)), spec.scale))
    return out


def _grid(full: int, points: int) -> List[int]:
    """``points`` channel counts from 1 to ``full``, multiples of 8 where the range allows."""
    raw = np.linspace(0, full, points + 1)[1:]
    step = 8 if full >= 8 * points else 1
    vals = sorted({max(1, int(round(v / step)) * step) for v in raw} | {1, full})
    return [v for v in vals if v <= full]


@dataclass
class LatencyTable:
    """Measured unit latencies (ms) on a channel grid; see the module docstring."""

    target: str
    threads: int
    size: int
    batch: int
    teacher: Dict                       # GeneratorArch.to_dict() of the network the grid spans
    grids: Dict[str, Dict[str, List[int]]]   # unit -> {"cin": [...], "cout": [...]}
    ms: Dict[str, List[List[float]]]    # unit -> [cin index][cout index]
    offset_ms: float = 0.0              # calibration: predicted = scale * sum(units) + offset_ms
    scale: float = 1.0
    machine: Dict = field(default_factory=dict)
    format: str = TABLE_FORMAT
    version: int = TABLE_VERSION

    # -- prediction
    def _interp(self, kind: str, cin: np.ndarray, cout: np.ndarray) -> np.ndarray:
        g, t = self.grids[kind], np.asarray(self.ms[kind], dtype=np.float64)
        xi, xo = np.asarray(g["cin"], dtype=np.float64), np.asarray(g["cout"], dtype=np.float64)
        cin, cout = np.asarray(cin, dtype=np.float64), np.asarray(cout, dtype=np.float64)

        def locate(grid: np.ndarray, v: np.ndarray):
            if grid.size == 1:
                return np.zeros(v.shape, dtype=np.int64), np.zeros(v.shape, dtype=np.int64), np.zeros(v.shape)
            j = np.clip(np.searchsorted(grid, v) - 1, 0, grid.size - 2)
            frac = np.clip((v - grid[j]) / (grid[j + 1] - grid[j]), 0.0, 1.0)
            return j, j + 1, frac

        i0, i1, fi = locate(xi, cin)
        o0, o1, fo = locate(xo, cout)
        return ((1 - fi) * (1 - fo) * t[i0, o0] + fi * (1 - fo) * t[i1, o0]
                + (1 - fi) * fo * t[i0, o1] + fi * fo * t[i1, o1])

    def predict(self, arch: GeneratorArch) -> float:
        """Predicted latency (ms) of a generator cut from the table's teacher."""
        self.check(arch)
        return float(self(np.array([[arch.widths[n] for n in group_names(arch.n_blocks)]]))[0])

    def __call__(self, widths: np.ndarray) -> np.ndarray:
        """Predicted ms of width vectors ``[..., n_groups]`` (groups in :func:`group_names` order);
        the same interface as :class:`coevo.prune.macs.MacTable`, so a budget can be in time."""
        return float(self.scale) * self.unit_sum(widths) + float(self.offset_ms)

    def unit_sum(self, widths: np.ndarray) -> np.ndarray:
        """Sum of the interpolated unit latencies (ms) of width vectors ``[..., n_groups]``, uncalibrated."""
        arch = GeneratorArch.from_dict(self.teacher)
        widths = np.asarray(widths)
        cols = {n: widths[..., i] for i, n in enumerate(group_names(arch.n_blocks))}
        total = np.zeros(widths.shape[:-1])
        for kind, io, _ in _units(arch):
            cin, cout = io(cols)
            total = total + self._interp(kind, np.broadcast_to(cin, total.shape), np.broadcast_to(cout, total.shape))
        return total

    def check(self, arch: GeneratorArch) -> None:
        t = GeneratorArch.from_dict(self.teacher)
        if (arch.ngf, arch.n_blocks, arch.norm) != (t.ngf, t.n_blocks, t.norm) or any(
                arch.widths[n] > t.widths[n] for n in group_names(t.n_blocks)):
            raise LatencyTableError(
                f"the latency table was measured for an ngf {t.ngf}, {t.n_blocks}-block generator ({t.norm} norm); "
                f"this network (ngf {arch.ngf}, {arch.n_blocks} blocks, {arch.norm} norm) is not cut from it: "
                "measure a table for its teacher "
                "(coevo bench --latency-table)")

    # -- files
    def save(self, path: str | Path) -> Path:
        return atomic_write_text(path, json.dumps(asdict(self), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "LatencyTable":
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise
        except (OSError, ValueError) as e:
            raise LatencyTableError(f"cannot read {path} as a latency table ({e}); measure it again") from e
        if not isinstance(data, dict) or data.get("format") != TABLE_FORMAT:
            raise LatencyTableError(f"{path} is not a coevo latency table (format {data.get('format')!r})"
                                    if isinstance(data, dict) else f"{path} is not a coevo latency table")
        if int(data.get("version", 0)) > TABLE_VERSION:
            raise LatencyTableError(f"{path} was written by a newer coevo (version {data['version']}); upgrade")
        try:
            return cls(**data)
        except TypeError as e:
            raise LatencyTableError(f"{path} is not a complete latency table ({e}); measure it again") from e


def _ort_timer(module: nn.Module, x: torch.Tensor, warmup: int, repeats: int) -> float:
    """Median latency (ms) of ``module`` exported to ONNX and run by ONNX Runtime on the CPU,
    fp32, full graph optimisation, ``torch.get_num_threads()`` intra-op threads (as ``coevo bench``'s
    ``onnxruntime`` backend runs it)."""
    import tempfile

    from .backends import _ort_call
    from .exported import quiet_export

    with tempfile.TemporaryDirectory(prefix="coevo-latency-") as tmp:
        path = Path(tmp) / "unit.onnx"
        with quiet_export():  # the TorchScript-based exporter: quick for one small module at a fixed shape
            torch.onnx.export(module.cpu().eval(), (x.cpu(),), str(path), dynamo=False, opset_version=17,
                              input_names=["input"], output_names=["output"])
        return median_ms(_ort_call(path, x, torch.device("cpu"), torch.get_num_threads()), warmup, repeats)


def _timer(target: str) -> Callable[[nn.Module, torch.Tensor, int, int], float]:
    if target == "onnxruntime":
        return _ort_timer

    def run(module: nn.Module, x: torch.Tensor, warmup: int, repeats: int) -> float:
        with torch.inference_mode():
            return median_ms(lambda: module(x), warmup, repeats, x.device)
    return run


def measure_latency(model: nn.Module, size: int, target: str = "cpu", batch: int = 1, warmup: int = 3,
                    repeats: int = 15, seed: int = 0) -> float:
    """Median latency (ms) of ``model`` on ``target`` (see :data:`LATENCY_TARGETS`) for one NCHW batch at
    ``size`` x ``size``."""
    device = torch.device("cuda" if target == "cuda" else "cpu")
    g = torch.Generator().manual_seed(int(seed))
    channels = getattr(getattr(model, "arch", None), "in_channels", 3)  # a generator of 1-channel data reads 1
    x = (torch.rand(batch, channels, size, size, generator=g) * 2 - 1).to(device)
    return _timer(target)(model.to(device).eval(), x, warmup, repeats)


def measure_table(teacher: GeneratorArch, size: int = 256, target: str = "cpu", threads: Optional[int] = None,
                  batch: int = 1, points: int = 6, warmup: int = 3, repeats: int = 9, seed: int = 0,
                  calibration: int = 6,
                  progress: Optional[Callable[[int, int], None]] = None) -> LatencyTable:
    """Measure every unit of ``teacher`` on a ``points`` x ``points`` channel grid (see the module docstring).

    ``threads``: torch CPU threads (ONNX Runtime intra-op threads for ``onnxruntime``) while
    measuring; the table is only valid for that count.
    Weights are random: time depends on shapes, not values.
    """
    if target not in LATENCY_TARGETS:
        raise LatencyTableError(f"latency target must be one of {LATENCY_TARGETS}, got {target!r}")
    if target == "cuda" and not torch.cuda.is_available():
        raise LatencyTableError("target cuda: torch sees no CUDA device on this machine")
    check_image_side(size, "the latency table's image size", MIN_SIZE, error=LatencyTableError)

    old_threads, old_rng = torch.get_num_threads(), torch.get_rng_state()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        device = torch.device("cuda" if target == "cuda" else "cpu")
        timer = _timer(target)
        # random weights for timing only (results do not depend on them): the modules draw them from
        # torch's default generator, seeded here and restored below, so the caller's RNG is untouched
        torch.manual_seed(int(seed))
        full = teacher.widths
        spans = {  # unit -> (input channel choices, output channel choices, input size divisor)
            "stem": ([teacher.in_channels], _grid(full["stem"], points), 1),
            "down1": (_grid(full["stem"], points), _grid(full["down1"], points), 1),
            "down2": (_grid(full["down1"], points), _grid(full["trunk"], points), 2),
            "block_in": (_grid(full["trunk"], points), _grid(max(full[f"block{i}.inner"]
                                                                  for i in range(teacher.n_blocks)), points), 4),
            "block_out": (_grid(max(full[f"block{i}.inner"] for i in range(teacher.n_blocks)), points),
                          _grid(full["trunk"], points), 4),
            "up1": (_grid(full["trunk"], points), _grid(full["up1"], points), 4),
            "up2": (_grid(full["up1"], points), _grid(full["up2"], points), 2),
            "head": (_grid(full["up2"], points), [teacher.out_channels], 1),
        }
        total = sum(len(a) * len(b) for a, b, _ in spans.values())
        done = 0
        grids, ms = {}, {}
        for kind, (cins, couts, div) in spans.items():
            s = size // div
            rows = []
            for cin in cins:
                x = torch.rand(batch, cin, s, s, device=device) * 2 - 1
                row = []
                for cout in couts:
                    module = _unit(kind, cin, cout, teacher.norm).to(device).eval()
                    row.append(timer(module, x, warmup, repeats))
                    done += 1
                    if progress:
                        progress(done, total)
                rows.append(row)
            grids[kind], ms[kind] = {"cin": list(cins), "cout": list(couts)}, rows
        table = LatencyTable(target, torch.get_num_threads(), int(size), int(batch), teacher.to_dict(), grids, ms,
                             machine=machine_info("cuda" if target == "cuda" else "cpu", torch.get_num_threads()))
        # Calibration: the teacher, uniformly narrowed copies and random-width networks, timed
        # longer than a grid point.
        names = group_names(teacher.n_blocks)
        rng = np.random.default_rng([0xCA1B, int(seed)])
        archs = [teacher.with_widths({n: max(1, int(round(full[n] * frac))) for n in names})
                 for frac in (0.25, 0.5, 0.75, 1.0)]
        archs += [teacher.with_widths({n: int(rng.integers(max(1, full[n] // 8), full[n] + 1)) for n in names})
                  for _ in range(calibration)]
        sums, measured = [], []
        for arch in archs:
            sums.append(float(table.unit_sum(np.array([[arch.widths[n] for n in names]]))[0]))
            measured.append(measure_latency(ResnetGenerator(arch), size, target, batch, 3 * warmup + 5,
                                            3 * repeats, seed))
        teacher_ms = measured[3]
        table.scale, table.offset_ms = (float(v) for v in np.polyfit(sums, measured, 1))
        log.info("latency table: %d units x grid measured; teacher %.1f ms; calibration scale %.3f, offset %.2f ms",
                 len(spans), teacher_ms, table.scale, table.offset_ms)
        return table
    finally:
        torch.set_num_threads(old_threads)
        torch.set_rng_state(old_rng)


def cache_path(teacher: GeneratorArch, size: int, target: str, threads: int, batch: int = 1) -> Path:
    """Where the search looks for a measured table: ``$COEVO_CACHE`` (default ``~/.cache/coevo``)/latency/KEY."""
    import os

    root = Path(os.environ.get("COEVO_CACHE", Path.home() / ".cache" / "coevo"))
    return root / "latency" / table_key(teacher, size, target, threads, batch)


def table_key(teacher: GeneratorArch, size: int, target: str, threads: int, batch: int = 1) -> str:
    """File name of a cached table: the target, threads, size and a hash of the teacher's widths."""
    h = hashlib.sha256(json.dumps(teacher.to_dict(), sort_keys=True).encode()).hexdigest()[:10]
    return f"latency_{target}{threads}t_{size}px_b{batch}_{h}.json"


__all__ = ["LatencyTable", "LatencyTableError", "measure_table", "measure_latency", "table_key", "cache_path",
           "LATENCY_TARGETS"]
