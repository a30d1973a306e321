"""Translation quality on paired (aligned) data: PSNR/SSIM to the paired target, and to a teacher.

For pix2pix every test image holds its own ground truth: the other half of the pair
(:mod:`coevo.data.aligned`). :func:`evaluate_paired` translates the input half of every image of
one split (``test`` by default) and scores the output against the target half, and, when a teacher
is given, against the teacher's output for the same input (how far compression moved it). Model and
teacher run in one ``reference_mode`` (``eval``, or ``train`` as the reference's test script does
without ``--eval``: then one image per forward, as there).

Report test numbers only; select models on ``val/`` (or a held-out part of ``train/``).
"""
from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Union

import torch
from torch import nn

from ..core.guards import check_finite
from .metrics import psnr, ssim

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]


def _mean(values: List[float]) -> Optional[float]:
    return float(sum(values) / len(values)) if values else None


def _module(model, device, reference_mode: str) -> nn.Module:
    """A copy of ``model`` (a module, left as it is, or a file) on ``device`` in ``reference_mode``
    (:func:`coevo.train.pix2pix.scoring_copy`)."""
    from ..train.pix2pix import scoring_copy

    if not isinstance(model, nn.Module):
        from ..models.io import load_generator

        model = load_generator(model)
    return scoring_copy(model, reference_mode).to(device)


class _Streams:
    """One copy per network of the stream :func:`coevo.models.generator.fixed_rng` starts (torch's global
    stream, CPU and ``device``), each switched in around that network's forwards: dropout in train mode
    draws for model and teacher the masks each would draw alone (those of ``coevo translate``), and the
    caller's stream is left as it was."""

    def __init__(self, device) -> None:
        from ..models.generator import fixed_rng

        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        if self.cuda and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        with fixed_rng():
            start = self._get()
        self.states: Dict[str, tuple] = {}
        self.start = start

    def _get(self) -> tuple:
        return (torch.get_rng_state(), torch.cuda.get_rng_state(self.device) if self.cuda else None)

    def _set(self, state: tuple) -> None:
        torch.set_rng_state(state[0])
        if self.cuda:
            torch.cuda.set_rng_state(state[1], self.device)

    @contextlib.contextmanager
    def of(self, name: str) -> Iterator[None]:
        with torch.random.fork_rng(devices=[self.device.index] if self.cuda else []):
            self._set(self.states.get(name, self.start))
            yield
            self.states[name] = self._get()


@torch.inference_mode()
def evaluate_paired(model: Union[nn.Module, PathLike], data_root: PathLike, direction: str = "AtoB",
                    teacher: Union[nn.Module, PathLike, None] = None, size: Optional[int] = None,
                    split: str = "test", batch_size: int = 8, device: Union[str, torch.device] = "cpu",
                    reference_mode: str = "eval") -> Dict:
    """Score ``model`` on the pairs of ``data_root/split`` (aligned layout).

    Args:
        model, teacher: generators (modules or files :func:`coevo.load_generator` reads), NCHW in [-1, 1].
        direction: ``AtoB`` (the left half is the input, the right half the target) or ``BtoA``.
        size: side the halves are resized to; None: the images' own (square) half size. It must be a
            multiple of what the generator needs (a U-Net: 2**num_downs).
        reference_mode: ``eval`` or ``train`` for model and teacher alike (``model.reference_mode``).

    Returns:
        ``{"layout": "aligned", "split", "direction", "n_images", "images", "size", "psnr", "ssim",
        "psnr_per_image", "ssim_per_image", "psnr_to_teacher", "ssim_to_teacher", "l1_to_teacher",
        "psnr_to_teacher_per_image", "reference_mode"}``; the teacher's entries are None without one.
    """
    from ..data.aligned import AlignedDataset, list_pairs

    data_root = Path(data_root)
    model = _module(model, device, reference_mode)
    teacher_m = None if teacher is None else _module(teacher, device, reference_mode)
    if size is None:
        _, (w, h) = list_pairs(data_root / split)
        if w // 2 != h:
            raise ValueError(f"the pairs of {data_root / split} have {w // 2}x{h} halves; give a square size to "
                             "resize them to (--size)")
        size = h
    multiple = getattr(getattr(model, "arch", None), "size_multiple", 4)
    if size % multiple:
        raise ValueError(f"images of {size} px do not fit this generator, which needs sides that are multiples of "
                         f"{multiple}; give --size (e.g. {max(multiple, size - size % multiple)})")
    ds = AlignedDataset(data_root, split, load_size=size, crop_size=size, flip=False, direction=direction,
                        augment=False)
    step = 1 if reference_mode == "train" else max(1, int(batch_size))
    names: List[str] = []
    psnrs: List[float] = []
    ssims: List[float] = []
    psnrs_t: List[float] = []
    ssims_t: List[float] = []
    l1s_t: List[float] = []
    streams = _Streams(device)
    for start in range(0, len(ds), step):
        items = [ds[i] for i in range(start, min(start + step, len(ds)))]
        x = torch.stack([it["A"] for it in items]).to(device)
        target = torch.stack([it["B"] for it in items]).to(device)
        shown = ", ".join(Path(it["path"]).name for it in items)
        with streams.of("model"):
            y = check_finite(model(x).float(), f"the model's output for {shown}")
        names += [Path(it["path"]).name for it in items]
        psnrs += psnr(y, target).tolist()
        ssims += ssim(y, target).tolist()
        if teacher_m is not None:
            with streams.of("teacher"):
                y_t = check_finite(teacher_m(x).float(), f"the teacher's output for {shown}")
            psnrs_t += psnr(y, y_t).tolist()
            ssims_t += ssim(y, y_t).tolist()
            l1s_t += (y - y_t).abs().flatten(1).mean(1).tolist()
    result = {
        "layout": "aligned", "split": split, "direction": direction, "data_root": str(data_root),
        "n_images": len(names), "images": names, "size": size,
        "psnr": _mean(psnrs), "ssim": _mean(ssims), "psnr_per_image": psnrs, "ssim_per_image": ssims,
        "psnr_to_teacher": _mean(psnrs_t), "ssim_to_teacher": _mean(ssims_t), "l1_to_teacher": _mean(l1s_t),
        "psnr_to_teacher_per_image": psnrs_t if teacher_m is not None else None,
        "reference_mode": reference_mode,
    }
    if hasattr(model, "arch"):
        result["arch"] = model.arch.to_dict()
    return result


# ----------------------------------------------------------------------------- the pix2pix compression report
def build_pix2pix_report(run_dir: PathLike, cfg, teacher: PathLike, student: PathLike) -> Dict:
    """``report.json`` and ``report.md`` of a pix2pix compression run (:func:`coevo.search.pix2pix.compress_pix2pix`)
    in ``run_dir``: MACs of teacher and student at ``bench.size``, PSNR/SSIM to the paired targets of the test
    split (both in ``model.reference_mode``), the student's PSNR to the teacher, the speed-up of the deployed
    artifact against the teacher in eager PyTorch (``bench/bench.json``) and the targets the CycleGAN report
    checks (:data:`coevo.evaluation.report.TARGET_MACS_RATIO` ...). Returns the JSON dict."""
    import json

    from ..core.files import atomic_write_text
    from ..models.io import load_generator
    from ..models.pix2pix import load_pix2pix_generator
    from ..prune import count_macs, count_params
    from .report import TARGET_MACS_RATIO, TARGET_PSNR_GAP_DB, TARGET_SPEEDUP, speed_summary

    run_dir = Path(run_dir)
    mode = cfg.model.reference_mode
    g_t = load_pix2pix_generator(teacher, dropout=cfg.pix2pix.dropout)
    g_s = load_generator(student)
    size = cfg.data.crop_size
    q_t = evaluate_paired(g_t, cfg.data.root, cfg.data.direction, size=size, reference_mode=mode)
    q_s = evaluate_paired(g_s, cfg.data.root, cfg.data.direction, teacher=g_t, size=size, reference_mode=mode)
    bench = json.loads((run_dir / "bench" / "bench.json").read_text())
    speed = speed_summary(bench["results"], "G", (bench.get("deployed_backend") or {}).get("G"))
    export = json.loads((run_dir / "export" / "stage.json").read_text())["record"]
    side = cfg.bench.size
    macs = {"teacher": count_macs(g_t.arch, side, side), "coevo": count_macs(g_s.arch, side, side)}
    keep = ("psnr", "ssim", "psnr_to_teacher", "ssim_to_teacher", "l1_to_teacher")
    report: Dict = {
        "kind": "pix2pix", "run_dir": str(run_dir.resolve()), "machine": bench.get("machine", {}),
        "mac_convention": "published (ConvTranspose counted per output pixel; conv MACs only)", "bench_size": side,
        "reference_mode": mode, "direction": cfg.data.direction, "test_images": q_s["n_images"], "test_size": size,
        "teacher": {"macs": macs["teacher"], "params": count_params(g_t.arch), "latency_ms": speed["teacher_eager_ms"],
                    **{k: q_t[k] for k in ("psnr", "ssim")}},
        "coevo": {"macs": macs["coevo"], "params": count_params(g_s.arch), "latency_ms": speed["coevo_ms"],
                  "latency_ms_eager": speed["coevo_eager_ms"], "widths": g_s.arch.widths,
                  **{k: q_s[k] for k in keep}},
        "macs_ratio": macs["coevo"] / macs["teacher"], "psnr_delta_db": q_s["psnr"] - q_t["psnr"],
        "speed": speed, "speedup": speed["speedup_vs_teacher_eager"],
        "deployed": export.get("deployed"), "int8": _int8_summary(export.get("int8")),
        # the exported files run the network in eval mode (running statistics, no dropout)
        "deployed_mode": "eval",
    }
    report["checks"] = {
        f"macs_ratio <= {TARGET_MACS_RATIO}": report["macs_ratio"] <= TARGET_MACS_RATIO + 1e-9,
        f"speedup >= {TARGET_SPEEDUP:g}x ({speed['backend']}, batch {speed['batch']}, vs teacher eager)":
            report["speedup"] >= TARGET_SPEEDUP,
        f"psnr at most {TARGET_PSNR_GAP_DB} dB below teacher": report["psnr_delta_db"] >= -TARGET_PSNR_GAP_DB,
    }
    report["all_checks_pass"] = all(report["checks"].values())
    atomic_write_text(run_dir / "report.json", json.dumps(report, indent=2, default=float) + "\n")
    atomic_write_text(run_dir / "report.md", render_pix2pix_markdown(report))
    return report


def _int8_summary(entry: Optional[Dict]) -> Optional[Dict]:
    """What the INT8 check of the export stage found (None without one)."""
    if not entry:
        return None
    if "skipped" in entry:
        return {"skipped": entry["skipped"]}
    q = entry.get("quality") or {}
    return {"ok": entry.get("ok"), "reasons": entry.get("reasons"), "psnr_vs_fp32_db": q.get("psnr_vs_fp32_db"),
            "gt_drop_db": q.get("gt_drop_db")}


def render_pix2pix_markdown(report: Dict) -> str:
    from .report import _fmt, _speed_lines

    t, s = report["teacher"], report["coevo"]
    m = report.get("machine", {})
    lines = [
        "# coevo pix2pix compression report", "",
        f"Run folder: `{report['run_dir']}`. MACs in the {report['mac_convention']} convention, for one "
        f"1x3x{report['bench_size']}x{report['bench_size']} forward. Quality on the {report['test_images']} test "
        f"pairs ({report['direction']}, {report['test_size']} px), teacher and student in `{report['reference_mode']}` "
        "mode (dropout masks from one fixed stream for both). The exported files run in eval mode.",
        f"Machine: {m.get('cpu', '?')}, torch threads: {m.get('threads', '?')}, torch {m.get('torch', '?')}.", "",
        "| model | MACs (G) | params (M) | latency (ms) | PSNR to target (dB) | SSIM | PSNR to teacher (dB) |",
        "|---|---|---|---|---|---|---|",
        f"| teacher G | {t['macs'] / 1e9:.3f} | {t['params'] / 1e6:.3f} | {_fmt(t['latency_ms'], '.1f')} | "
        f"{_fmt(t['psnr'], '.2f')} | {_fmt(t['ssim'], '.4f')} | - |",
        f"| coevo G | {s['macs'] / 1e9:.3f} | {s['params'] / 1e6:.3f} | {_fmt(s['latency_ms'], '.1f')} | "
        f"{_fmt(s['psnr'], '.2f')} | {_fmt(s['ssim'], '.4f')} | {_fmt(s['psnr_to_teacher'], '.2f')} |", "",
        "| MACs ratio | speedup | PSNR coevo - teacher (dB) | checks |", "|---|---|---|---|",
        f"| {report['macs_ratio']:.3f} | {report['speedup']:.2f}x | {report['psnr_delta_db']:+.2f} | "
        + "; ".join(f"{k}: {'PASS' if v else 'FAIL'}" for k, v in report["checks"].items()) + " |",
    ]
    lines += _speed_lines({"directions": {report["direction"]: {"speed": report["speed"]}}})
    int8 = report.get("int8")
    if int8:
        lines += ["", "INT8: " + (int8["skipped"] if "skipped" in int8 else
                                  f"{'passed' if int8['ok'] else 'failed'} its check ("
                                  f"{_fmt(int8['psnr_vs_fp32_db'], '.1f')} dB to fp32, ground-truth drop "
                                  f"{_fmt(int8['gt_drop_db'], '+.3f')} dB)"
                                  + ("" if int8["ok"] else ": " + "; ".join(int8.get("reasons") or [])))]
    lines += ["", "Folders: `teacher/` (unless given), `search/`, `finetune/` (`G.pt`, `latest_net_G.pth`), "
              "`export/` (`export_report.json`: parity and the deployed file), `bench/` (`bench.json`, `bench.png`).",
              ""]
    return "\n".join(lines)
