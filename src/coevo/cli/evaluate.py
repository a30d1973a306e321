"""`coevo evaluate`: FID/KID, PSNR/SSIM to ground truth and distance to a teacher, as a table and JSON."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .options import add_trust_model

# (label, key, format) of the printed table, in order.
_ROWS = [
    ("FID", "fid", ".2f"),
    ("KID (mean over subsets)", "kid", ".4f"),
    ("PSNR to ground truth (dB)", "psnr", ".2f"),
    ("SSIM to ground truth", "ssim", ".4f"),
    ("PSNR to teacher (dB)", "psnr_to_teacher", ".2f"),
    ("L1 to teacher", "l1_to_teacher", ".4f"),
    ("perceptual to teacher", "perceptual_to_teacher", ".4f"),
]


def add_parser(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="measure a generator's translations: FID/KID, PSNR/SSIM to ground truth, distance to a teacher",
        description="Translates test{A|B} of --data. FID/KID compare the translations with every real image "
                    "of the output domain (train+test), quantised to uint8, in Inception pool3 features. "
                    "PSNR/SSIM need ground truth (testA_gt_B/, testB_gt_A/: the built-in data set). "
                    "Report test numbers only; select models on a held-out training split.",
    )
    p.add_argument("--model", required=True, help="generator file (.pt, latest_net_G_*.pth, .safetensors, .ts, .onnx)")
    p.add_argument("--data", required=True, help="data set folder with testA/testB (and trainA/trainB for FID)")
    p.add_argument("--direction", choices=["AtoB", "BtoA"], default="AtoB",
                   help="AtoB: translate testA, compare with domain B (default); BtoA: the reverse")
    p.add_argument("--teacher", help="teacher generator file, or a teacher folder (coevo training run or "
                                     "latest_net_*.pth) from which the generator and discriminator are taken")
    p.add_argument("--teacher-d", help="teacher discriminator of the output domain (D_A for AtoB), "
                                       "for --perceptual discriminator")
    p.add_argument("--perceptual", choices=["discriminator", "lpips", "l1"], default=None,
                   help="distance to the teacher's output (default: discriminator when one is known, else none)")
    p.add_argument("--inception-weights", metavar="FILE",
                   help="FID Inception weights (weights-inception-2015-12-05-6726825d.pth); "
                        "default: $TORCH_HOME/hub/checkpoints/")
    p.add_argument("--no-fid", action="store_true", help="skip FID/KID (no Inception weights needed)")
    p.add_argument("--size", type=int, default=None, help="resize images to SIZE x SIZE (default: native size)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--kid-subset-size", type=int, default=None,
                   help="images per KID subset (default: min(1000, #real, #translated))")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--reference-mode", choices=["auto", "eval", "train"], default="auto",
                   help="run model and teacher in eval mode, or in train mode as the reference's test script does "
                        "without --eval (batch norm on batch statistics, dropout on); auto (default): train on "
                        "aligned (pix2pix) data, eval otherwise, as model.reference_mode: auto resolves")
    p.add_argument("--out", metavar="FILE.json", help="write every number (and per-image PSNR/SSIM) as JSON")
    add_trust_model(p)
    p.set_defaults(func=run)


def _resolve_teacher(args: argparse.Namespace):
    """(teacher generator path or None, discriminator path or None) from --teacher / --teacher-d."""
    teacher, disc = args.teacher, args.teacher_d
    if teacher is not None and Path(teacher).is_dir():
        from ..models.teacher import find_teacher

        paths = find_teacher(teacher)
        teacher = paths.G_A if args.direction == "AtoB" else paths.G_B
        if disc is None:
            disc = paths.D_A if args.direction == "AtoB" else paths.D_B
    return teacher, disc


def _run_paired(args: argparse.Namespace) -> int:
    """`coevo evaluate` on aligned data: PSNR/SSIM to the paired target, and to the teacher when given."""
    from ..evaluation.evaluate import save_json
    from ..evaluation.paired import evaluate_paired
    from ..models.io import load_generator

    if args.out:
        from ..core.outputs import check_outputs_apart

        check_outputs_apart(args.out, {"--model file": args.model, "data folder": args.data,
                                       "teacher": args.teacher}, kind="file")
    from ..models.io import EXPORTED_SUFFIXES
    from ..models.pix2pix import find_pix2pix_teacher, load_pix2pix_generator

    def load(path):  # a reference U-Net file has no dropout key: pix2pix.dropout's default (on) applies
        if Path(path).suffix.lower() in EXPORTED_SUFFIXES:
            return load_generator(path, trust=args.trust_model)
        return load_pix2pix_generator(path)

    from ..config import AUTO_REFERENCE_MODE

    if args.reference_mode == "auto":
        args.reference_mode = AUTO_REFERENCE_MODE["pix2pix"]
    teacher = args.teacher
    if teacher is not None and Path(teacher).is_dir():
        teacher = find_pix2pix_teacher(teacher).G
    result = evaluate_paired(load(args.model), args.data, args.direction,
                             teacher=None if teacher is None else load(teacher), size=args.size,
                             batch_size=args.batch_size, device=args.device, reference_mode=args.reference_mode)
    result["model"] = str(Path(args.model).resolve())
    result["teacher"] = None if teacher is None else str(Path(teacher).resolve())
    print(f"{args.model}: {args.direction} on the {result['n_images']} pairs of {Path(args.data) / 'test'} "
          f"(aligned; {args.reference_mode} mode; no FID on paired data)")
    rows = [("PSNR to target (dB)", result["psnr"], ".2f"), ("SSIM to target", result["ssim"], ".4f"),
            ("PSNR to teacher (dB)", result["psnr_to_teacher"], ".2f"),
            ("SSIM to teacher", result["ssim_to_teacher"], ".4f"), ("L1 to teacher", result["l1_to_teacher"], ".4f")]
    rows = [(label, format(v, spec)) for label, v, spec in rows if v is not None]
    width = max(len(label) for label, _ in rows)
    print("\n".join([f"{'metric':<{width}}  value", f"{'-' * width}  {'-' * 10}"]
                    + [f"{label:<{width}}  {v}" for label, v in rows]))
    if args.out:
        print(f"wrote {save_json(result, args.out)}")
    return 0


def _table(result: dict) -> str:
    rows = [(label, result.get(key), spec) for label, key, spec in _ROWS]
    rows = [(label, format(v, spec)) for label, v, spec in rows if v is not None]
    if result.get("perceptual"):
        rows = [(f"{label} ({result['perceptual']})" if label == "perceptual to teacher" else label, v)
                for label, v in rows]
    width = max([len(label) for label, _ in rows] + [6])
    lines = [f"{'metric':<{width}}  value", f"{'-' * width}  {'-' * 10}"]
    lines += [f"{label:<{width}}  {v}" for label, v in rows]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from ..config import check_device_available
    from ..evaluation.evaluate import check_request, evaluate_generator, save_json
    from ..models.io import load_generator

    check_device_available(args.device)
    from ..data.aligned import detect_layout

    if detect_layout(args.data) == "aligned":  # paired data (pix2pix): the target is the other half
        return _run_paired(args)
    check_request(args.data, args.direction, args.size, args.batch_size,
                  measures=(not args.no_fid, args.teacher is not None))
    if args.out:  # checked before hours of work: never over an input, a device or a pipe
        from ..core.outputs import check_outputs_apart

        check_outputs_apart(args.out, {"--model file": args.model, "data folder": args.data,
                                       "teacher": args.teacher, "--teacher-d file": args.teacher_d}, kind="file")
    if args.reference_mode == "auto":
        from ..config import AUTO_REFERENCE_MODE

        args.reference_mode = AUTO_REFERENCE_MODE["cyclegan"]
    teacher, disc = _resolve_teacher(args)
    perceptual = args.perceptual
    if perceptual is None and teacher is not None and disc is not None:
        perceptual = "discriminator"
    if perceptual == "discriminator" and disc is None:
        print("coevo evaluate: error: --perceptual discriminator needs --teacher-d FILE (the teacher's "
              f"discriminator of the output domain, {'D_A' if args.direction == 'AtoB' else 'D_B'}) "
              "or --teacher FOLDER; or choose --perceptual lpips|l1", file=sys.stderr)
        return 2
    if perceptual is not None and teacher is None:
        print("coevo evaluate: note: --perceptual is measured against a teacher; pass --teacher", file=sys.stderr)

    result = evaluate_generator(
        load_generator(args.model, trust=args.trust_model), args.data, args.direction, teacher=teacher, inception_weights=args.inception_weights,
        perceptual=perceptual, discriminator=disc, size=args.size, batch_size=args.batch_size,
        compute_fid=not args.no_fid, kid_subset_size=args.kid_subset_size, device=args.device,
        reference_mode=args.reference_mode,
    )
    result["model"] = str(Path(args.model).resolve())
    result["teacher"] = None if teacher is None else str(Path(teacher).resolve())
    print(f"{args.model}: {args.direction} on {result['n_images']} images of {args.data}")
    if result["fid"] is not None:
        print(f"FID/KID: {result['fid_features']}, reals = {'+'.join(result['real_folders'])} "
              f"({result['n_real']} images)")
    print(_table(result))
    if args.out:
        print(f"wrote {save_json(result, args.out)}")
    return 0
