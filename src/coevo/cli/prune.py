"""`coevo prune`: one-shot baseline pruning (L1-norm or random) of a generator to a MAC target.

Writes a self-describing slim generator (load it with ``coevo.load_generator(PATH)``,
no flags) and its genome as ``PATH`` with the suffix ``.genome.json``.
"""
from __future__ import annotations

import sys
from pathlib import Path
from ..errors import ConfigError


def add_parser(sub):
    p = sub.add_parser(
        "prune",
        help="prune a generator once (L1-norm or random filters) to a MAC ratio or keep ratio",
        description="One-shot baseline pruning. MACs use the published convention (a transposed conv "
                    "counted per output pixel; 56.8G for the full ngf=64 9-block generator at 256x256).",
    )
    p.add_argument("--generator", required=True, help="teacher generator: coevo .pt/.safetensors or latest_net_G_A.pth")
    p.add_argument("--method", choices=["l1", "random"], default="l1",
                   help="l1: keep the filters with the largest L1 norm at one uniform keep ratio; "
                        "random: random widths and filters (default: l1)")
    p.add_argument("--macs-ratio", type=float, default=0.25,
                   help="keep at most this fraction of the teacher's MACs (default 0.25)")
    p.add_argument("--keep-ratio", type=float, default=None,
                   help="l1 only: keep this fraction of every group's filters instead of meeting --macs-ratio")
    p.add_argument("--size", type=int, default=256, help="square image size the MACs are counted at (default 256)")
    p.add_argument("--seed", type=int, default=0, help="random method: seed (default 0)")
    p.add_argument("--min-channels", type=int, default=1, help="every group keeps at least this many (default 1)")
    p.add_argument("--channel-multiple", type=int, default=1,
                   help="round kept counts to multiples of this where possible, e.g. 8 for CPU vector width")
    p.add_argument("--tied", action="store_true",
                   help="paper layout: block inner channels follow the trunk mask")
    p.add_argument("--out", required=True, help="output generator, e.g. slim.pt (genome: slim.genome.json)")
    p.add_argument("--force", action="store_true", help="overwrite existing output files")
    p.set_defaults(func=run)


def _fail(msg: str) -> int:
    print(f"coevo prune: error: {msg}", file=sys.stderr)
    return 2


def run(args) -> int:
    import numpy as np

    from ..models import ResnetGenerator, load_generator, save_generator
    from ..models.unet import UnetGenerator
    from ..prune import (
        BudgetError, GenomeError, count_macs, count_params, l1_genome, l1_genome_for_macs,
        random_genome_for_macs, slim,
    )

    out = Path(args.out)
    genome_path = out.with_suffix(".genome.json")
    if not 0.0 < args.macs_ratio <= 1.0:
        return _fail(f"--macs-ratio must be in (0, 1], got {args.macs_ratio}")
    if args.keep_ratio is not None and (args.method != "l1" or not 0.0 < args.keep_ratio <= 1.0):
        return _fail("--keep-ratio needs --method l1 and a value in (0, 1]")
    from ..core.limits import check_image_side
    try:
        check_image_side(args.size, "--size")
    except ConfigError as e:
        return _fail(str(e))
    from ..core.outputs import check_outputs_apart

    for path in (out, genome_path):  # never over the input, a device or a pipe
        check_outputs_apart(path, {"input generator": args.generator}, kind="file")
    existing = [str(p) for p in (out, genome_path) if p.exists()]
    if existing and not args.force:
        return _fail(f"{', '.join(existing)} already exist(s); pass --force to overwrite or choose another --out")

    teacher = load_generator(args.generator)
    if not isinstance(teacher, (ResnetGenerator, UnetGenerator)):
        return _fail(f"{args.generator} is an exported graph; prune needs a checkpoint (.pt, .pth, .safetensors)")
    common = dict(min_channels=args.min_channels, channel_multiple=args.channel_multiple, tied=args.tied)
    try:
        if args.method == "l1" and args.keep_ratio is not None:
            genome = l1_genome(teacher, args.keep_ratio, **common)
        elif args.method == "l1":
            genome = l1_genome_for_macs(teacher, args.macs_ratio, args.size, **common)
        else:
            rng = np.random.default_rng(args.seed)
            genome = random_genome_for_macs(teacher.arch, args.macs_ratio, args.size, rng, **common)
            genome.meta["seed"] = args.seed
    except (BudgetError, GenomeError, ValueError) as e:
        return _fail(str(e))
    genome.meta["teacher"] = str(args.generator)
    student = slim(teacher, genome)
    save_generator(student, out, extra={"genome": genome.to_dict()})
    genome.save_json(genome_path)

    t_macs, s_macs = count_macs(teacher.arch, args.size), count_macs(student.arch, args.size)
    t_par, s_par = count_params(teacher.arch), count_params(student.arch)
    print(f"method   {args.method}  ({'tied' if args.tied else 'free'} layout)")
    print(f"MACs     {t_macs / 1e9:.3f}G -> {s_macs / 1e9:.3f}G  ({s_macs / t_macs:.3f}x; "
          f"{args.size}x{args.size}, published convention: transposed conv per output pixel)")
    print(f"params   {t_par / 1e6:.3f}M -> {s_par / 1e6:.3f}M  ({s_par / t_par:.3f}x)")
    print("widths   " + ", ".join(f"{n}={w}" for n, w in genome.widths().items()))
    print(f"wrote    {out}\n         {genome_path}")
    return 0
