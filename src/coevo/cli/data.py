"""`coevo data`: build the synthetic data set, or check a data folder for bad images.

    coevo data synthetic --out datasets/synthetic [--size 64] [--n-train 200] [--n-test 40] [--seed 0] [--force]
    coevo data check datasets/horse2zebra [--skip-bad]
"""
from __future__ import annotations

import time

SPLITS = ("trainA", "trainB", "testA", "testB")
EXTRA = ("testA_gt_B", "testB_gt_A")
MAX_LISTED = 20


def add_parser(sub):
    p = sub.add_parser("data", help="build the synthetic data set or check a data folder",
                       description="Build the built-in synthetic data set, or check a data folder.")
    p.set_defaults(func=run, data_command=None)
    actions = p.add_subparsers(dest="data_command", metavar="ACTION")

    s = actions.add_parser("synthetic", help="write the built-in grass->snow data set",
                           description="Write the built-in synthetic 'grass to snow' task: trainA, trainB, "
                                       "testA, testB and the true translations testA_gt_B, testB_gt_A.")
    s.add_argument("--out", default="datasets/synthetic", help="folder to write (default: %(default)s)")
    s.add_argument("--size", type=int, default=64, help="image size in pixels, a multiple of 4 (default: %(default)s)")
    s.add_argument("--n-train", type=int, default=200, help="images per training domain (default: %(default)s)")
    s.add_argument("--n-test", type=int, default=40, help="images per test domain (default: %(default)s)")
    s.add_argument("--seed", type=int, default=0, help="scene seed (default: %(default)s)")
    s.add_argument("--task", choices=["snow", "dense", "pix2pix"], default="snow",
                   help="snow (the demo's), dense (harder: more, smaller objects with finer stripes and "
                        "texture), or pix2pix (paired, aligned layout: train/ val/ test/ of snow scenes, summer "
                        "and winter side by side); default: %(default)s")
    s.add_argument("--force", action="store_true", help="replace a synthetic set coevo wrote in --out")

    c = actions.add_parser("check", help="count images per split and list unreadable files",
                           description="Count the images of each split (trainA, trainB, testA, testB) and "
                                       "decode every one of them to find unreadable files. DIR may also be "
                                       "a single folder of images.")
    c.add_argument("dir", metavar="DIR", help="data set folder, or one folder of images")
    c.add_argument("--skip-bad", action="store_true",
                   help="bad files are acceptable (training will skip them); only fail when a split "
                        "would be left empty")
    return p


def run(args) -> int:
    if args.data_command == "synthetic":
        return _synthetic(args)
    if args.data_command == "check":
        return _check(args)
    print("usage: coevo data {synthetic,check} ...; see `coevo data --help`")
    return 2


def _synthetic(args) -> int:
    from ..data.synthetic import make_synthetic_dataset

    start = time.perf_counter()
    if args.task == "pix2pix":
        from ..data.paired_synthetic import default_n_val, make_paired_synthetic

        out = make_paired_synthetic(args.out, size=args.size, n_train=args.n_train, n_test=args.n_test,
                                    seed=args.seed, force=args.force)
        print(f"paired synthetic data set ready in {out} ({time.perf_counter() - start:.1f} s): train/ "
              f"{args.n_train}, val/ {default_n_val(args.n_test)}, test/ {args.n_test} pairs, each A (summer) | B "
              f"(winter, its exact translation) side by side; {args.size}x{args.size} px halves, seed {args.seed}")
        return 0
    out = make_synthetic_dataset(args.out, size=args.size, n_train=args.n_train, n_test=args.n_test,
                                 seed=args.seed, force=args.force, task=args.task)
    print(f"synthetic data set ready in {out} ({time.perf_counter() - start:.1f} s): "
          f"trainA/trainB {args.n_train} images each, testA/testB {args.n_test} each, "
          f"ground truth in testA_gt_B and testB_gt_A; {args.size}x{args.size} px, seed {args.seed}")
    return 0


def _check(args) -> int:
    from pathlib import Path

    from ..data.errors import DataError
    from ..data.images import LAYOUT_HINT, MIN_IMAGE_SIDE, find_bad_images, list_images, small_images

    root = Path(args.dir)
    if not root.is_dir():
        raise DataError(f"{root} is not a folder; {LAYOUT_HINT}")
    folders = [root / s for s in SPLITS + EXTRA if (root / s).is_dir()]
    single = not any((root / s).is_dir() for s in SPLITS)
    from ..data.aligned import ALIGNED_HINT, ALIGNED_SPLITS, REQUIRED_SPLITS, detect_layout, list_pairs

    aligned = detect_layout(root) == "aligned"
    if aligned:  # pix2pix: train/ (val/) test/ of A|B pairs
        folders, single = [root / s for s in ALIGNED_SPLITS if (root / s).is_dir()], False
    elif single:
        folders = [root]
    missing = [] if single else [s for s in (REQUIRED_SPLITS if aligned else SPLITS) if not (root / s).is_dir()]

    problems = 0
    all_bad = []
    all_small = []
    print(f"{'folder':<14} {'images':>7} {'bad':>5} {'small':>6}")
    for folder in folders:
        try:
            images = list_images(folder)
        except DataError:
            print(f"{folder.name:<14} {0:>7} {'-':>5} {'-':>6}   no images")
            problems += 1
            continue
        bad = find_bad_images(images)
        all_bad += bad
        small = small_images(images)
        all_small += small
        print(f"{folder.name:<14} {len(images):>7} {len(bad):>5} {len(small):>6}")
        if len(bad) == len(images):
            problems += 1
        elif aligned:  # every pair splits into two halves, and a split has one size
            try:
                list_pairs(folder, skip_bad=True)
            except DataError as e:
                print(f"pairs: {e}")
                problems += 1
    for name in missing:
        print(f"{name:<14} {'-':>7} {'-':>5} {'-':>6}   missing")
        problems += 1
    for path, reason in all_bad[:MAX_LISTED]:
        print(f"bad: {path}: {reason}")
    if len(all_bad) > MAX_LISTED:
        print(f"... and {len(all_bad) - MAX_LISTED} more bad files")
    for path, (w, h) in all_small[:MAX_LISTED]:
        print(f"small: {path}: {w}x{h} px")
    if len(all_small) > MAX_LISTED:
        print(f"... and {len(all_small) - MAX_LISTED} more small files")
    if all_small:
        print(f"{len(all_small)} image(s) have a side below {MIN_IMAGE_SIDE} px: they will be upscaled and "
              "train poorly; usable, but check they belong in the data set")

    if problems:
        print(f"problems found in {root}: {ALIGNED_HINT if aligned else LAYOUT_HINT}")
        return 1
    if all_bad and not args.skip_bad:
        print(f"{len(all_bad)} unreadable file(s): re-download or delete them, or train with "
              "--set data.skip_bad_images=true to skip them")
        return 1
    print(f"{root}: OK" + (f" ({len(all_bad)} bad file(s) will be skipped)" if all_bad else ""))
    return 0
