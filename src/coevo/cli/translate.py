"""`coevo translate`: run a generator on an image or a folder of images; write PNGs."""
from __future__ import annotations

import argparse

from .options import add_trust_model

def add_parser(sub) -> None:
    p = sub.add_parser(
        "translate",
        help="translate an image or a folder of images with a generator",
        description="Apply any generator coevo loads (coevo .pt, latest_net_G_A.pth, .safetensors, and the exports: "
                    ".pt2 torch.export programs incl. float16 ones, .onnx incl. INT8 .int8.onnx, .ts) and write "
                    "<name>.png per input into --output. A folder is translated in batches of --batch images "
                    "of one size.",
    )
    p.add_argument("--model", required=True, help="generator file")
    p.add_argument("--input", required=True, help="image file or folder of images")
    p.add_argument("--output", required=True,
                   help="folder for the translated PNGs (created if missing); never the folder of the inputs")
    p.add_argument("--size", type=int, default=None,
                   help="resize inputs to SIZE x SIZE (a multiple of 4; of 2**num_downs for a U-Net); default: "
                        "keep each image's size, rounded down to multiples of 4 (a U-Net: padded up to multiples "
                        "of 2**num_downs, by reflection, and the output cropped back to the image's size)")
    p.add_argument("--batch", type=int, default=4, help="images per forward pass (default 4)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    p.add_argument("--direction", choices=["AtoB", "BtoA"], default=None,
                   help="the inputs are aligned pairs (pix2pix: A and B side by side): translate their A (AtoB) "
                        "or B (BtoA) half. Default: AtoB for a folder of the aligned layout (a data set with "
                        "train/ and test/, whose test/ is translated, or one of its splits), else whole images")
    p.add_argument("--reference-mode", choices=["auto", "eval", "train"], default="auto",
                   help="eval mode, or train mode one image at a time, as the reference's test script runs "
                        "without --eval (batch norm on the image's statistics, dropout on); auto (default): train "
                        "for aligned pairs (pix2pix), eval otherwise, as model.reference_mode: auto resolves")
    p.add_argument("--overwrite", action="store_true",
                   help="replace PNGs that already exist in --output (default: refuse before translating)")
    p.add_argument("--skip-bad", action="store_true",
                   help="skip unreadable images, translate the others and list the skipped ones "
                        "(default: refuse before translating)")
    add_trust_model(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys

    import torch

    from ..config import check_device_available
    from ..models.io import load_generator
    from ..evaluation.translate import input_images, plan_translation, run_translation

    check_device_available(args.device)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("coevo translate: error: --device cuda but torch sees no CUDA device; use --device cpu",
              file=sys.stderr)
        return 2
    if args.batch < 1:
        print(f"coevo translate: error: --batch must be >= 1, got {args.batch}", file=sys.stderr)
        return 2
    from ..config import AUTO_REFERENCE_MODE
    from ..data.aligned import aligned_input

    folder, direction = aligned_input(args.input, args.direction)
    mode = args.reference_mode
    if mode == "auto":
        mode = AUTO_REFERENCE_MODE["pix2pix" if direction is not None else "cyclegan"]
    paths = input_images(folder)
    plan = plan_translation(paths, args.output, size=args.size, overwrite=args.overwrite, skip_bad=args.skip_bad,
                            source=folder, direction=direction)
    model = load_generator(args.model, trust=args.trust_model)
    written = run_translation(model, plan, batch=args.batch, device=args.device, source=args.model,
                              reference_mode=mode)
    halves = "" if direction is None else f" (the {direction[0]} halves of the pairs in {folder}; {mode} mode)"
    print(f"wrote {len(written)} image(s) to {args.output}{halves}")
    if plan.skipped:
        print(f"skipped {len(plan.skipped)} unreadable image(s):")
        for path, why in plan.skipped:
            print(f"  {path}: {why}")
    return 0
