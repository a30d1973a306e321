"""The compression report: teacher and compressed pair side by side (Markdown + JSON + image grids).

Reads a pipeline run folder (see :mod:`coevo.pipeline`) and writes
``report.json``, ``report.md`` and ``grid_AtoB.png`` / ``grid_BtoA.png`` into it.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Dict, List, Optional

import torch

from ..config import Config
from ..data.record import short as short_record
from ..core.files import atomic_write_text
from ..core.limits import SIZE_MULTIPLE

log = logging.getLogger(__name__)

# (direction, generator, discriminator of the output domain, input folder, ground-truth folder)
DIRECTIONS = (
    ("AtoB", "G_A", "D_A", "testA", "testA_gt_B"),
    ("BtoA", "G_B", "D_B", "testB", "testB_gt_A"),
)

# Targets the demo must meet: a quarter of the teacher's MACs, 3x faster, at most 1 dB less PSNR.
TARGET_MACS_RATIO = 0.25
TARGET_PSNR_GAP_DB = 1.0
TARGET_SPEEDUP = 3.0


def _grid_images(files: List[Path], side: int, channels: int = 3) -> torch.Tensor:
    """``files`` as one NCHW batch in [-1, 1]: at their own size (down to a multiple of 4, which the
    generators need) when they all share it, else each resized to ``side`` x ``side``, as photos of
    mixed sizes are (a grid has one row height and one column width). ``channels`` 1: grayscale."""
    from PIL import Image

    from ..data import load_image, to_tensor

    images = [load_image(f, channels) for f in files]
    sizes = {(w - w % SIZE_MULTIPLE, h - h % SIZE_MULTIPLE) for w, h in (im.size for im in images)}
    size = sizes.pop() if len(sizes) == 1 else (side, side)
    return torch.stack([to_tensor(im if im.size == size else im.resize(size, Image.BICUBIC), channels)
                        for im in images])


def _grid(model_t, model_s, data_root: Path, in_dir: str, gt_dir: str, path: Path, n: int = 6,
          side: int = 256, reference_mode: str = "eval") -> Optional[Path]:
    """Input, teacher, compressed (and ground truth when the data has it) for the first ``n`` test images;
    ``side``: the square size images of mixed sizes are shown at. Both generators run in ``reference_mode``
    (in train mode one image per forward, as the measured numbers are)."""
    from ..data import list_images
    from ..models.family import any_size
    from ..models.generator import fixed_rng, set_reference_mode
    from .evaluate import model_channels
    from .viz import save_grid

    files = list_images(data_root / in_dir)[:n]
    if not files:
        return None
    x = _grid_images(files, side, model_channels(model_t)[0])
    step = 1 if reference_mode == "train" else len(x)

    def run(model):
        model = any_size(set_reference_mode(model, reference_mode))  # a U-Net: padded to its side multiple
        return torch.cat([model(x[i:i + step]) for i in range(0, len(x), step)])

    with torch.inference_mode(), fixed_rng():  # dropout in train mode: the same masks on every run
        cols = [("input", x), ("teacher", run(model_t)), ("coevo", run(model_s))]
    gt = [data_root / gt_dir / f.name for f in files]
    if all(g.exists() for g in gt):
        truth = _grid_images(gt, side, model_channels(model_t)[1])
        if truth.shape[-2:] != x.shape[-2:]:
            truth = torch.nn.functional.interpolate(truth, size=tuple(x.shape[-2:]), mode="bicubic",
                                                    align_corners=False).clamp(-1, 1)
        cols.append(("ground truth", truth))
    save_grid(cols, path, max_rows=n)
    return path


def build_report(run_dir: str | Path, cfg: Config) -> Dict:
    """Measure and write the report for a finished pipeline run; returns the JSON dict."""
    from .. import load_discriminator, load_generator
    from .evaluate import translation_quality
    from .perceptual import build_perceptual
    from ..pipeline import Pipeline
    from ..prune import count_macs, count_params

    run_dir = Path(run_dir)
    pipe = Pipeline(cfg, run_dir, resume=True)
    teacher = pipe.teacher_paths()
    data_root = pipe.data_root()
    size = cfg.bench.size
    bench = json.loads((run_dir / "bench" / "bench.json").read_text())
    deployed_backend = bench.get("deployed_backend") or {}

    report: Dict = {"run_dir": str(run_dir.resolve()), "machine": bench.get("machine", {}),
                    "mac_convention": "published (ConvTranspose counted per output pixel; conv MACs only)",
                    "bench_size": size, "data": _data_record(run_dir), "directions": {},
                    "reference_mode": cfg.model.reference_mode,
                    **_teacher_use(run_dir, teacher)}
    quality_metric = _quality_metric(report["search_metric"], teacher.has_discriminators)
    for direction, g, d, in_dir, gt_dir in DIRECTIONS:
        g_t = load_generator(getattr(teacher, g))
        g_s = load_generator(run_dir / "finetune" / f"{g}.pt")
        reader = "G_B" if g == "G_A" else "G_A"  # the teacher generator that reads g's output domain
        metric = build_perceptual(
            quality_metric,
            discriminator=load_discriminator(getattr(teacher, d)) if quality_metric == "discriminator" else None,
            feature_generator=(load_generator(getattr(teacher, reader))
                               if quality_metric == "teacher-features" else None))
        mode = cfg.model.reference_mode
        q_t = translation_quality(g_t, data_root, direction, teacher=None, perceptual_metric=metric,
                                  reference_mode=mode)
        q_s = translation_quality(g_s, data_root, direction, teacher=g_t, perceptual_metric=metric,
                                  reference_mode=mode)
        macs_t = count_macs(g_t.arch, size, size)
        macs_s = count_macs(g_s.arch, size, size)
        speed = speed_summary(bench["results"], g, deployed_backend.get(g))
        lat_t, lat_s = speed["teacher_eager_ms"], speed["coevo_ms"]
        entry = {
            "generator": g,
            "teacher": {"macs": macs_t, "params": count_params(g_t.arch), "latency_ms": lat_t,
                        "psnr": q_t.get("psnr"), "ssim": q_t.get("ssim")},
            "coevo": {"macs": macs_s, "params": count_params(g_s.arch), "latency_ms": lat_s,
                      "latency_ms_eager": speed["coevo_eager_ms"],
                      "psnr": q_s.get("psnr"), "ssim": q_s.get("ssim"),
                      "perceptual_to_teacher": q_s.get("perceptual_to_teacher"),
                      "l1_to_teacher": q_s.get("l1_to_teacher"), "psnr_to_teacher": q_s.get("psnr_to_teacher"),
                      "widths": g_s.arch.widths},
            "perceptual_metric": metric.name,
        }
        entry["macs_ratio"] = macs_s / macs_t
        entry["speed"] = speed
        entry["speedup"] = speed["speedup_vs_teacher_eager"]
        # coevo minus teacher: positive when the compressed generator is closer to the ground truth
        entry["psnr_delta_db"] = (entry["coevo"]["psnr"] - entry["teacher"]["psnr"]
                                if entry["teacher"]["psnr"] is not None else None)
        entry["checks"] = {
            f"macs_ratio <= {TARGET_MACS_RATIO}": entry["macs_ratio"] <= TARGET_MACS_RATIO + 1e-9,
            f"speedup >= {TARGET_SPEEDUP:g}x ({speed['backend']}, batch {speed['batch']}, vs teacher eager)":
                entry["speedup"] >= TARGET_SPEEDUP,
        }
        if entry["psnr_delta_db"] is not None:  # only data with ground truth (the built-in set) has a PSNR
            entry["checks"][f"psnr at most {TARGET_PSNR_GAP_DB} dB below teacher"] = \
                entry["psnr_delta_db"] >= -TARGET_PSNR_GAP_DB
        grid = _grid(g_t, g_s, data_root, in_dir, gt_dir, run_dir / f"grid_{direction}.png",
                     side=cfg.data.crop_size, reference_mode=mode)
        entry["grid"] = grid.name if grid else None
        report["directions"][direction] = entry
    report["all_checks_pass"] = all(v for e in report["directions"].values() for v in e["checks"].values())
    atomic_write_text(run_dir / "report.json", json.dumps(report, indent=2, default=float))
    atomic_write_text(run_dir / "report.md", render_markdown(report, run_dir))
    return report


def speed_summary(rows: List[Dict], g: str, deployed_backend: Optional[str]) -> Dict:
    """What the speed check judges, from bench.json rows: the compressed ``g`` on its deployed runtime.

    Rows are named ``teacher G``, ``coevo G`` (eager) and ``coevo G deployed`` (the export's
    deployed file on ``deployed_backend``). Without a deployed row (older runs, a runtime
    this machine cannot run) the eager compressed model is judged. Speed-ups against the
    teacher in eager PyTorch and against the teacher on the same runtime.
    """
    by = {(r["name"], r["backend"]): r for r in rows}
    t_eager = by[(f"teacher {g}", "eager")]
    s_eager = by[(f"coevo {g}", "eager")]
    deployed = by.get((f"coevo {g} deployed", deployed_backend)) if deployed_backend else None
    if deployed is None:
        deployed, deployed_backend = s_eager, "eager"
    t_same = by.get((f"teacher {g}", deployed_backend))
    ms = lambda r: r["latency_ms_median"] if r is not None else None  # noqa: E731
    return {
        "backend": deployed_backend, "batch": deployed.get("batch", 1), "device": deployed.get("device", "cpu"),
        "threads": deployed.get("threads"),
        "teacher_eager_ms": ms(t_eager), "teacher_same_backend_ms": ms(t_same),
        "coevo_ms": ms(deployed), "coevo_eager_ms": ms(s_eager),
        "speedup_vs_teacher_eager": ms(t_eager) / ms(deployed),
        "speedup_vs_teacher_same_backend": ms(t_same) / ms(deployed) if t_same is not None else None,
        "speedup_eager_vs_eager": ms(t_eager) / ms(s_eager),
    }


def _teacher_use(run_dir: Path, teacher) -> Dict:
    """How the run used its teacher: the search's perceptual metric and the fine-tuning discriminators."""
    def read(path: Path) -> Dict:
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return {}

    finetune = read(run_dir / "finetune" / "finetune.json")
    search = read(run_dir / "search" / "search.json")
    return {
        "teacher_has_discriminators": teacher.has_discriminators,
        # resnet | unet, as the search found it in the teacher's files (runs from before U-Nets: resnet)
        "generator_family": search.get("generator_family", "resnet"),
        "search_metric": search.get("metric"),
        # proxy | trained | supernet (runs from before search.fitness existed: the proxy)
        "search_fitness": search.get("fitness", "proxy"),
        # runs from before fresh discriminators existed always used the teacher's
        "finetune_discriminators": finetune.get("discriminators", "teacher"),
        # runs from before the distill recipe existed were all trained by the GAN recipe
        "finetune_recipe": finetune.get("recipe", "gan"),
    }


def _quality_metric(search_metric: Optional[str], has_discriminators: bool) -> str:
    """The report's "perceptual to teacher" metric: the search's, except that LPIPS (which needs a
    downloaded backbone) is replaced by the offline metric this teacher allows."""
    if search_metric in ("discriminator", "teacher-features", "l1"):
        return search_metric
    return "discriminator" if has_discriminators else "teacher-features"


def _data_record(run_dir: Path) -> Dict:
    """The data the run used (see :func:`coevo.data.data_record`), from the data stage's record."""
    try:
        return json.loads((run_dir / "data" / "stage.json").read_text()).get("data") or {}
    except (OSError, ValueError):
        return {}


def _fmt(x, spec: str) -> str:
    return "n/a" if x is None else format(x, spec)


FITNESS_WORDS = {"proxy": "candidates scored with the teacher's weights, untrained",
                 "trained": "candidates distilled briefly before scoring",
                 "supernet": "candidates scored with a weight-sharing supernet's weights"}


def _teacher_line(report: Dict) -> str:
    discs = report.get("finetune_discriminators")
    has = report.get("teacher_has_discriminators", True)
    head = (f"Teacher: {'generators and discriminators' if has else 'generators only (no discriminators)'}. "
            f"Search fitness: `{report.get('search_fitness', 'proxy')}` "
            f"({FITNESS_WORDS.get(report.get('search_fitness', 'proxy'), 'n/a')}), perceptual metric "
            f"`{report.get('search_metric') or 'n/a'}`. ")
    if report.get("finetune_recipe") == "distill":
        return head + ("Fine-tuning (recipe `distill`) trained the pair on distillation to the teacher's outputs "
                       "alone, without discriminators.")
    return head + "Fine-tuning (recipe `gan`) trained against " + (
        "the teacher's discriminators." if discs == "teacher"
        else "fresh discriminators (initialised as teacher training does, seeded by the config's seed).")


def _speed_lines(report: Dict) -> List[str]:
    lines = ["", "Speed: the compressed generator on the runtime `coevo export` deployed, against the teacher in "
             "eager PyTorch (what the speed check judges) and on the same runtime (what compression alone buys).",
             "", "| direction | runtime | batch | teacher eager (ms) | teacher, same runtime (ms) | coevo eager (ms) "
             "| coevo deployed (ms) | vs teacher eager | vs teacher, same runtime |",
             "|---|---|---|---|---|---|---|---|---|"]
    for direction, e in report["directions"].items():
        s = e.get("speed")
        if not s:
            continue
        same = s.get("speedup_vs_teacher_same_backend")
        lines.append(f"| {direction} | {s['backend']} | {s['batch']} | {_fmt(s['teacher_eager_ms'], '.1f')} | "
                     f"{_fmt(s['teacher_same_backend_ms'], '.1f')} | {_fmt(s['coevo_eager_ms'], '.1f')} | "
                     f"{_fmt(s['coevo_ms'], '.1f')} | {s['speedup_vs_teacher_eager']:.2f}x | "
                     f"{'n/a' if same is None else f'{same:.2f}x'} |")
    return lines


def render_markdown(report: Dict, run_dir: Path) -> str:
    lines: List[str] = [
        "# coevo compression report", "",
        f"Run folder: `{run_dir}`. MACs in the {report['mac_convention']} convention, "
        f"for one 1x3x{report['bench_size']}x{report['bench_size']} forward. "
        "Latency: median of interleaved runs after warm-up, teacher and compressed timed side by side in one "
        "process; the teacher in eager PyTorch, the compressed generator on its deployed runtime (table below).",
        f"Machine: {report['machine'].get('cpu', '?')}, torch threads: {report['machine'].get('threads', '?')}, "
        f"torch {report['machine'].get('torch', '?')}.",
        _teacher_line(report),
        f"Data: {short_record(report['data']) if report.get('data') else 'not recorded'}.", "",
        # fidelity to the teacher first: what compression removed, apart from what fine-tuning added
        "| direction | model | MACs (G) | params (M) | latency (ms) | PSNR to teacher (dB) | L1 to teacher "
        "| PSNR to GT (dB) | SSIM | perceptual to teacher |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for direction, e in report["directions"].items():
        for who in ("teacher", "coevo"):
            m = e[who]
            lines.append(
                f"| {direction} | {who} {e['generator']} | {m['macs'] / 1e9:.3f} | {m['params'] / 1e6:.3f} | "
                f"{_fmt(m['latency_ms'], '.1f')} | {_fmt(m.get('psnr_to_teacher'), '.2f') if who == 'coevo' else '-'} | "
                f"{_fmt(m.get('l1_to_teacher'), '.4f') if who == 'coevo' else '0'} | "
                f"{_fmt(m['psnr'], '.2f')} | {_fmt(m['ssim'], '.4f')} | "
                f"{_fmt(m.get('perceptual_to_teacher'), '.4f') if who == 'coevo' else '0'} |"
            )
    lines += ["", "| direction | MACs ratio | speedup | PSNR coevo - teacher (dB) | checks |", "|---|---|---|---|---|"]
    for direction, e in report["directions"].items():
        checks = "; ".join(f"{k}: {'PASS' if v else 'FAIL'}" for k, v in e["checks"].items())
        lines.append(f"| {direction} | {e['macs_ratio']:.3f} | {e['speedup']:.2f}x | "
                     f"{_fmt(e['psnr_delta_db'], '+.2f')} | {checks} |")
    lines += _speed_lines(report)
    lines += [""]
    for direction, e in report["directions"].items():
        if e.get("grid"):
            lines += [f"## {direction}: input | teacher | coevo | ground truth", "", f"![{direction}]({e['grid']})", ""]
    lines += [
        "## What is in this folder", "",
        "- `data/` `stage.json`: the data the run used (folder, images per split, fingerprint); for the "
        "built-in set, the images too (with ground-truth translations of the test images)",
        "- `teacher/` the teacher CycleGAN (coevo format and reference naming `latest_net_G_A.pth` ...)",
        "- `search/` the co-evolutionary search: resolved config, best genomes, history, plots",
        "- `finetune/` the fine-tuned compressed pair `G_A.pt`, `G_B.pt` (load with `coevo.load_generator`)",
        "- `export/` torch.export (`.pt2`), ONNX (and INT8 `.int8.onnx` or float16 `.fp16.pt2`) and safetensors "
        "files; `export_report.json`: parity checks and, under `deploy`, the file to ship",
        "- `bench/` latency measurements (`bench.json`, `bench.png`)", "",
    ]
    return "\n".join(lines)
