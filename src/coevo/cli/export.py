"""`coevo export`: TorchScript / ONNX / safetensors files of a run's generators, each checked against eager."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Tuple

from ..config import ExportConfig

# A fine-tune run holds the compressed pair under these names.
RUN_GENERATORS = ("G_A", "G_B")
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".safetensors")


def add_parser(sub) -> None:
    d = ExportConfig()
    p = sub.add_parser(
        "export",
        help="export generators to TorchScript, ONNX and safetensors with parity checks",
        description="Export the generators of RUN_DIR (a fine-tune run with G_A.pt and G_B.pt, a folder of "
                    "generator files, or one generator file). Each export is reloaded and compared with "
                    "eager PyTorch at a size other than the training size.",
    )
    p.add_argument("--run", required=True, metavar="RUN_DIR", help="fine-tune run, folder of generators, or one file")
    p.add_argument("--out", required=True, help="output folder (must be new or empty unless --force)")
    p.add_argument("--formats", default=",".join(d.formats),
                   help=f"comma-separated subset of torchscript,onnx,safetensors (default: {','.join(d.formats)})")
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
    from ..models.io import CheckpointError

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


def _load_all(pairs: List[Tuple[str, Path]], single: bool):
    import logging

    from ..models import ResnetGenerator
    from ..models.io import CheckpointError, load_generator

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
        if not isinstance(model, ResnetGenerator):
            raise CheckpointError(f"{path} is already an export; export from its .pt or .safetensors checkpoint")
        models.append((name, path, model))
    if not models:
        raise CheckpointError(f"none of {[p.name for _, p in pairs]} is a generator checkpoint")
    return models


def run(args: argparse.Namespace) -> int:
    from ..export import FORMATS, ExportError, check_shapes, export_generator
    from ..runs import RunDirError, prepare_run_dir

    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        print(f"coevo export: error: unknown format(s) {bad or formats}; choose from {','.join(FORMATS)}",
              file=sys.stderr)
        return 2
    check_shapes(args.check_size)
    source = Path(args.run)
    pairs = find_generators(source)
    models = _load_all(pairs, single=source.is_file())
    if source.resolve() == Path(args.out).resolve() or Path(args.out).resolve() in source.resolve().parents:
        raise RunDirError(f"--out {args.out} holds the --run input {source}; choose another --out")
    out = prepare_run_dir(args.out, force=args.force, command="export")

    rows = []
    status = 0
    for name, path, model in models:
        try:
            report = export_generator(model, out, name, formats=formats, check_size=args.check_size,
                                      opset=args.opset, seed=args.seed, onnx_exporter=args.onnx_exporter)
        except ExportError as e:
            print(f"coevo export: error: {e}", file=sys.stderr)
            status = 1
            continue
        for fmt, entry in report.items():
            note = f" ({entry['exporter']} exporter, opset {entry['opset']})" if fmt == "onnx" else ""
            rows.append((name, fmt + note, Path(entry["path"]).name, entry["size_bytes"], entry["max_abs_diff"]))

    if rows:
        print(f"{'model':<14} {'format':<38} {'file':<28} {'size':>10} {'max |diff|':>11}")
        for name, fmt, file, size, diff in rows:
            print(f"{name:<14} {fmt:<38} {file:<28} {size / 2**20:>7.2f} MB {diff:>11.2e}")
        print(f"parity: checked on seeded random inputs in [-1, 1] at {args.check_size}x{args.check_size} and a "
              f"non-square batch of 2; report: {out / 'export_report.json'}")
    return status
