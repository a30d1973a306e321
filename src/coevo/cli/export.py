"""`coevo export`: a run's generators as torch.export / ONNX / safetensors files, checked against eager,
plus the deployment artifact of a target (INT8 ONNX for CPUs, a float16 program for CUDA)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import List, Optional, Tuple

from ..config import ExportConfig
from ..errors import ConfigError

# A fine-tune run holds the compressed pair under these names.
RUN_GENERATORS = ("G_A", "G_B")
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".safetensors")


# coevo.deploy.export.FORMATS, spelled out: importing coevo.deploy.export loads torch, and `coevo --help` must not
# (tests/test_hostile_runs.py checks that the two agree)
FORMATS = ("torch-export", "onnx", "safetensors", "torchscript")


def add_parser(sub) -> None:
    d = ExportConfig()
    p = sub.add_parser(
        "export",
        help="export generators (torch.export, ONNX, safetensors; INT8 or float16 per target) with parity checks",
        description="Export the generators of RUN_DIR (a fine-tune run with G_A.pt and G_B.pt, a folder of "
                    "generator files, or one generator file). Each export is reloaded and compared with "
                    "eager PyTorch at a size other than the training size. --target adds what runs fastest "
                    "there and records the file to ship under 'deploy' in export_report.json.",
    )
    p.add_argument("--run", required=True, metavar="RUN_DIR", help="fine-tune run, folder of generators, or one file")
    p.add_argument("--out", required=True, help="output folder (must be new or empty unless --force)")
    p.add_argument("--formats", default=",".join(d.formats),
                   help=f"comma-separated subset of {','.join(FORMATS)} (default: {','.join(d.formats)}; "
                        "torchscript only on request: torch.jit is deprecated)")
    p.add_argument("--target", choices=["cpu", "cuda"], default="cpu",
                   help="cpu (default): ONNX, optimised by ONNX Runtime at load, and a static INT8 ONNX if it "
                        "passes its quality check; cuda: a float16 channels_last torch.export program for the "
                        "CUDA-graph runner, if it matches fp32 within tolerance")
    p.add_argument("--calibration", metavar="DIR", default=None,
                   help="INT8 calibration images: a data set (trainA/trainB, testA_gt_B/testB_gt_A for the "
                        "ground-truth check) or a folder of the input domain's images. Default for a fine-tune "
                        "run: the data it was trained on. Without any, the cpu target deploys fp32 ONNX")
    p.add_argument("--calibration-images", type=int, default=d.calibration_images,
                   help=f"training images that calibrate INT8 (default {d.calibration_images})")
    p.add_argument("--no-int8", action="store_true", help="cpu target: skip INT8, deploy fp32 ONNX")
    p.add_argument("--cuda-dtype", choices=["float16", "bfloat16"], default=d.cuda_dtype,
                   help=f"cuda target: precision of the fast program (default {d.cuda_dtype})")
    p.add_argument("--check-size", type=int, default=d.check_size,
                   help=f"square size of the parity check; a 2/3-height non-square input is checked too "
                        f"(default {d.check_size})")
    p.add_argument("--opset", type=int, default=d.opset,
                   help=f"ONNX opset (default {d.opset}; the dynamo exporter uses at least 18)")
    p.add_argument("--onnx-exporter", choices=["auto", "dynamo", "legacy"], default="auto",
                   help="auto: torch's dynamo exporter, falling back to the legacy one if it fails (default)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random parity-check inputs (default 0)")
    p.add_argument("--force", action="store_true",
                   help="delete --out first if it is an earlier coevo run (it holds a .coevo-run marker)")
    p.set_defaults(func=run)


def find_generators(source: Path) -> List[Tuple[str, Path]]:
    """(name, file) pairs to export: a fine-tune run's G_A/G_B, every generator file in a folder, or one file."""
    from ..errors import CheckpointError

    if not source.exists():
        raise FileNotFoundError(f"--run {source} does not exist")
    if source.is_file():
        return [(source.stem, source)]
    run_files = [(n, source / f"{n}.pt") for n in RUN_GENERATORS if (source / f"{n}.pt").exists()]
    if run_files:
        return run_files
    found = [(p.stem, p) for p in sorted(source.iterdir()) if p.suffix.lower() in CHECKPOINT_SUFFIXES]
    if not found:
        raise CheckpointError(f"{source} holds no generator files (G_A.pt/G_B.pt, *.pt, *.pth, *.safetensors); "
                              "point --run at a fine-tune run folder or a generator file")
    return found


def run_data_root(source: Path) -> Optional[Path]:
    """The data set a fine-tune run was trained on (its data.json), when it still exists."""
    try:
        root = json.loads((source / "data.json").read_text()).get("root") if source.is_dir() else None
    except (OSError, ValueError):
        return None
    return Path(root) if root and Path(root).is_dir() else None


def _load_all(pairs: List[Tuple[str, Path]], single: bool):
    import logging

    from ..models.family import is_generator
    from ..errors import CheckpointError
    from ..models.io import load_generator

    log = logging.getLogger(__name__)
    models = []
    for name, path in pairs:
        try:
            model = load_generator(path)
        except CheckpointError as e:
            if single:
                raise
            log.info("skipping %s: %s", path.name, e)  # discriminators, optimiser states, ...
            continue
        if not is_generator(model):
            raise CheckpointError(f"{path} is already an export; export from its .pt or .safetensors checkpoint")
        models.append((name, path, model))
    if not models:
        raise CheckpointError(f"none of {[p.name for _, p in pairs]} is a generator checkpoint")
    return models


def _rows(name: str, report: dict) -> list:
    rows = []
    for fmt, entry in report.items():
        if fmt == "deploy":
            continue
        note = f" ({entry['exporter']} exporter, opset {entry['opset']})" if fmt == "onnx" else ""
        if fmt == "torch-export":
            note = " (dynamic shapes)" if entry.get("dynamic") else f" (static {entry.get('static_shape')})"
        rows.append((name, fmt + note, Path(entry["path"]).name, entry["size_bytes"], entry["max_abs_diff"]))
    return rows


def _deploy_line(name: str, deploy: dict) -> str:
    deployed = deploy["deployed"]
    if deployed is None:
        return f"{name}: nothing deployed: {deploy.get('skipped')}"
    line = (f"{name}: deploy {Path(deployed['path']).name} ({deployed['precision']}, "
            f"bench backend {deployed['backend']})")
    int8 = deploy.get("int8")
    if int8 and int8.get("skipped"):
        line += f"; INT8 skipped: {int8['skipped']}"
    elif int8:
        q = int8["quality"]
        gt = "" if q["gt_drop_db"] is None else f", ground-truth PSNR drop {q['gt_drop_db']:+.3f} dB"
        verdict = "passes" if int8["ok"] else "FAILS (" + "; ".join(int8["reasons"]) + ")"
        line += f"; INT8 {verdict}: {q['psnr_vs_fp32_db']:.1f} dB to fp32{gt}"
        if int8["ok"] and int8.get("faster") is False:
            ms = int8["speed_ms"]
            line += f", but not faster than fp32 ({ms['int8']:.2f} against {ms['fp32']:.2f} ms): fp32 deployed"
    fast = deploy.get("fast")
    if fast:
        par = fast["parity"]
        line += (f"; {fast['dtype']} parity max |diff| {par['max_abs_diff']:.3g}, mean {par['mean_abs_diff']:.3g} "
                 f"(tolerance {par['tolerance']['max_abs_diff']:g} / {par['tolerance']['mean_abs_diff']:g}, "
                 f"measured on {par['measured_on']})")
    return line


# Export options and the config keys whose rules (coevo.config) they follow.
_FLAGS = {"export.check_size": "--check-size", "export.opset": "--opset",
          "export.calibration_images": "--calibration-images", "export.cuda_dtype": "--cuda-dtype"}


def _check_options(options) -> None:
    """The options (an ExportOptions) by the rules of the config keys they stand for, and the target against
    this machine."""
    from ..config import check_export_target, validate_section

    section = ExportConfig(formats=list(options.formats), check_size=options.check_size, opset=options.opset,
                           target=options.target, calibration_images=options.calibration_images,
                           cuda_dtype=options.cuda_dtype)
    try:
        validate_section("export", section)
        check_export_target(options.target)
    except ConfigError as e:
        text = str(e)
        for key, flag in _FLAGS.items():
            text = text.replace(key, flag)
        raise ConfigError(text.replace("export target cuda", "--target cuda")) from None


def run(args: argparse.Namespace) -> int:
    from ..deploy.targets import export_for_target, find_deploy_data
    from ..deploy.export import WRITERS, ExportError, ExportOptions, check_shapes, model_multiple, reference_outputs
    from ..core.outputs import check_outputs_apart
    from ..core.runs import prepare_run_dir

    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    bad = [f for f in formats if f not in WRITERS]
    if bad or not formats:
        print(f"coevo export: error: unknown format(s) {bad or formats}; choose from {','.join(WRITERS)}",
              file=sys.stderr)
        return 2
    options = ExportOptions(formats=tuple(formats), check_size=args.check_size, opset=args.opset, seed=args.seed,
                            onnx_exporter=args.onnx_exporter, target=args.target, int8=not args.no_int8,
                            calibration_images=args.calibration_images, cuda_dtype=args.cuda_dtype)
    _check_options(options)
    check_shapes(options.check_size)
    source = Path(args.run)
    calibration = Path(args.calibration) if args.calibration else run_data_root(source)
    check_outputs_apart(args.out, {"--run input": source, "calibration folder": calibration})
    pairs = find_generators(source)
    # a fine-tune run's G_A/G_B must all load; only a plain folder may hold other files
    models = _load_all(pairs, single=source.is_file() or all(n in RUN_GENERATORS for n, _ in pairs))
    for name, _, model in models:  # a NaN output fails here, before --out exists
        reference_outputs(model.cpu().eval(), name, options.check_size, options.seed)
    if args.calibration and not calibration.is_dir():
        print(f"coevo export: error: --calibration {calibration} is not a folder", file=sys.stderr)
        return 2
    if options.target == "cpu" and options.int8 and calibration is None:
        print("coevo export: no --calibration images: INT8 is skipped and fp32 ONNX is deployed "
              "(pass --calibration DIR with training images of the input domain)")
    from ..data.images import refuse_special_files

    for name, _, _ in models:  # a FIFO among the images would block the export: fail before --out exists
        for folder in vars(find_deploy_data(calibration, name)).values():
            if folder is not None:
                refuse_special_files(folder)
    out = prepare_run_dir(args.out, force=args.force, command="export")

    rows, deploy_lines = [], []
    status = 0
    for name, path, model in models:
        try:
            report = export_for_target(model, out, name, options, data=find_deploy_data(calibration, name))
        except ExportError as e:
            print(f"coevo export: error: {e}", file=sys.stderr)
            status = 1
            continue
        rows += _rows(name, report)
        deploy_lines.append(_deploy_line(name, report["deploy"]))

    if rows:
        print(f"{'model':<14} {'format':<38} {'file':<28} {'size':>10} {'max |diff|':>11}")
        for name, fmt, file, size, diff in rows:
            print(f"{name:<14} {fmt:<38} {file:<28} {size / 2**20:>7.2f} MB {diff:>11.2e}")
        # a U-Net's sides are rounded up to its multiple (2**num_downs)
        shapes = sorted({"x".join(map(str, s)) for _, _, model in models
                         for s in check_shapes(options.check_size, model_multiple(model))})
        print(f"parity: checked on seeded random inputs in [-1, 1] of shapes {', '.join(shapes)}; "
              f"report: {out / 'export_report.json'}")
        print(f"target {options.target}:")
        for line in deploy_lines:
            print(f"  {line}")
    return status
