"""`coevo translate`: run a generator on an image or a folder of images; write PNGs."""
from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser(
        "translate",
        help="translate an image or a folder of images with a generator",
        description="Apply any generator coevo loads (coevo .pt, latest_net_G_A.pth, .safetensors, .ts, .onnx) "
                    "and write <name>.png per input into --output.",
    )
    p.add_argument("--model", required=True, help="generator file")
    p.add_argument("--input", required=True, help="image file or folder of images")
    p.add_argument("--output", required=True, help="folder for the translated PNGs (created if missing)")
    p.add_argument("--size", type=int, default=None,
                   help="resize inputs to SIZE x SIZE (a multiple of 4); default: keep each image's size, "
                        "rounded down to multiples of 4")
    p.add_argument("--batch", type=int, default=4, help="images per forward pass (default 4)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys

    import torch

    from ..models.io import load_generator
    from ..translate import input_images, translate_images

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("coevo translate: error: --device cuda but torch sees no CUDA device; use --device cpu",
              file=sys.stderr)
        return 2
    model = load_generator(args.model)
    paths = input_images(args.input)
    written = translate_images(model, paths, args.output, size=args.size, batch=args.batch, device=args.device)
    print(f"wrote {len(written)} image(s) to {args.output}")
    return 0
