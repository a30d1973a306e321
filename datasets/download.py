#!/usr/bin/env python
"""Download one of the standard CycleGAN data sets into ``datasets/NAME``.

    python datasets/download.py horse2zebra            # -> datasets/horse2zebra/{trainA,trainB,testA,testB}
    python datasets/download.py monet2photo --out /data

The archives come from the CycleGAN authors' server
(https://efrosgans.eecs.berkeley.edu/cyclegan/datasets/NAME.zip). The archive
is downloaded to a temporary file, renamed once complete, unpacked into a
temporary folder, checked for the split folders, and only then moved to
``OUT/NAME``. Nothing half-written is left under that name.

Cityscapes cannot be downloaded this way: its licence requires registration at
https://www.cityscapes-dataset.com. Running this script with ``cityscapes``
prints how to build the folder from the official archives.

This script needs only the Python standard library (tqdm, when installed, draws
the progress bar).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import Callable, List, Optional, Sequence

BASE_URL = "https://efrosgans.eecs.berkeley.edu/cyclegan/datasets"
DATASETS = (
    "apple2orange", "summer2winter_yosemite", "horse2zebra", "monet2photo", "cezanne2photo",
    "ukiyoe2photo", "vangogh2photo", "maps", "cityscapes", "facades", "iphone2dslr_flower", "ae_photos",
)
SPLITS = ("trainA", "trainB", "testA", "testB")
# ae_photos is a set of photos for trying pretrained models; it may hold test images only.
TEST_ONLY = ("ae_photos",)

CITYSCAPES_HELP = """\
Cityscapes cannot be downloaded automatically: its licence requires an account.
1. Register at https://www.cityscapes-dataset.com and download
   leftImg8bit_trainvaltest.zip (photos) and gtFine_trainvaltest.zip (label maps).
2. Build the CycleGAN layout the way the CycleGAN authors did: every photo
   leftImg8bit/<split>/<city>/*_leftImg8bit.png and its colour label map
   gtFine/<split>/<city>/*_gtFine_color.png resized to 256x256; photos go to
   trainA (from the 'train' split) and testA (from 'val'), label maps to trainB
   and testB. The reference repository (junyanz/pytorch-CycleGAN-and-pix2pix)
   ships datasets/prepare_cityscapes_dataset.py for this.
3. Check the result with:  coevo data check <folder>
"""


class DownloadError(RuntimeError):
    """A data set that cannot be fetched or unpacked; the message says why and what to do."""


def dataset_url(name: str) -> str:
    """The archive URL of data set ``name``; unknown names raise :class:`DownloadError` listing the known ones."""
    if name not in DATASETS:
        raise DownloadError(f"unknown data set {name!r}; choose one of: {', '.join(DATASETS)}")
    if name == "cityscapes":
        raise DownloadError(CITYSCAPES_HELP)
    return f"{BASE_URL}/{name}.zip"


def _progress(total: Optional[int], desc: str):
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc)


def download_file(url: str, dest: Path, chunk: int = 1 << 20) -> Path:
    """Fetch ``url`` to ``dest``: written to a temporary file beside it, renamed when complete."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as f, urllib.request.urlopen(url, timeout=60) as response:
            total = response.headers.get("Content-Length")
            total = int(total) if total and total.isdigit() else None
            bar = _progress(total, dest.name)
            done = 0
            while True:
                block = response.read(chunk)
                if not block:
                    break
                f.write(block)
                done += len(block)
                if bar is not None:
                    bar.update(len(block))
                elif total:
                    print(f"\r{dest.name}: {done / total:6.1%}", end="", file=sys.stderr)
            if bar is not None:
                bar.close()
            elif total:
                print(file=sys.stderr)
        if total is not None and done != total:
            raise DownloadError(f"download of {url} stopped after {done} of {total} bytes; run the script again")
        os.replace(tmp, dest)
    except (urllib.error.URLError, OSError) as e:
        raise DownloadError(f"cannot download {url}: {e}. Check the connection (or download the file by hand "
                            f"and pass it with --zip)") from e
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest


def _dataset_folder(extracted: Path, name: str) -> Path:
    """The folder inside an unpacked archive that holds the split folders."""
    for candidate in (extracted / name, extracted):
        if any((candidate / s).is_dir() for s in SPLITS):
            return candidate
    subdirs = [p for p in extracted.iterdir() if p.is_dir()]
    if len(subdirs) == 1 and any((subdirs[0] / s).is_dir() for s in SPLITS):
        return subdirs[0]
    return extracted / name


def verify_layout(folder: Path, name: str) -> List[str]:
    """Split folders of ``folder`` that hold files; raises :class:`DownloadError` when required ones are missing."""
    present = [s for s in SPLITS if (folder / s).is_dir() and any((folder / s).iterdir())]
    required = ("testA",) if name in TEST_ONLY else SPLITS
    missing = [s for s in required if s not in present]
    if missing or not present:
        raise DownloadError(
            f"the {name} archive does not hold the expected layout: missing or empty {', '.join(missing or SPLITS)} "
            f"under {name}/. The archive may be damaged; delete it and run the script again"
        )
    return present


def extract_dataset(zip_path: Path, out: Path, name: str) -> Path:
    """Unpack ``zip_path`` and move its data set folder to ``out/name`` once it checks out."""
    target = out / name
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".unpack", dir=out))
    try:
        try:
            with zipfile.ZipFile(zip_path) as zf:
                root = tmp.resolve()
                for member in zf.namelist():
                    if not (tmp / member).resolve().is_relative_to(root):
                        raise DownloadError(f"{zip_path} holds an unsafe path {member!r}; not unpacking it")
                zf.extractall(tmp)
        except zipfile.BadZipFile as e:
            raise DownloadError(f"{zip_path} is not a valid zip archive ({e}); delete it and run the script again") from e
        folder = _dataset_folder(tmp, name)
        present = verify_layout(folder, name)
        if target.exists():
            shutil.rmtree(target)
        os.replace(folder, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    missing = [s for s in SPLITS if s not in present]
    if missing:
        print(f"note: {name} has no {', '.join(missing)} (it is a test-only set)", file=sys.stderr)
    return target


def fetch(name: str, out: Path, force: bool = False, zip_file: Optional[Path] = None,
          downloader: Optional[Callable[[str, Path], Path]] = None) -> Path:
    """Download (or take ``zip_file``), unpack and check data set ``name`` into ``out/name``.

    ``downloader(url, dest)`` defaults to :func:`download_file`.
    """
    url = dataset_url(name)
    target = out / name
    if target.exists() and any(target.iterdir()) and not force:
        present = [s for s in SPLITS if (target / s).is_dir()]
        if present:
            print(f"{target} already exists ({', '.join(present)}); pass --force to download it again")
            return target
        raise DownloadError(f"{target} exists but holds no split folders; delete it or pass --force")
    if zip_file is not None:
        return extract_dataset(zip_file, out, name)
    out.mkdir(parents=True, exist_ok=True)
    zip_path = out / f"{name}.zip"
    (downloader or download_file)(url, zip_path)
    try:
        return extract_dataset(zip_path, out, name)
    finally:
        if zip_path.exists():
            zip_path.unlink()


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Download a standard CycleGAN data set.",
                                     epilog=f"data sets: {', '.join(DATASETS)}")
    parser.add_argument("name", metavar="NAME", help="data set name, e.g. horse2zebra")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent),
                        help="parent folder; the data set lands in OUT/NAME (default: this datasets/ folder)")
    parser.add_argument("--force", action="store_true", help="replace an existing OUT/NAME")
    parser.add_argument("--zip", type=Path, default=None,
                        help="use an archive you downloaded yourself instead of downloading it")
    args = parser.parse_args(argv)
    try:
        target = fetch(args.name, Path(args.out), force=args.force, zip_file=args.zip)
    except DownloadError as e:
        print(f"download.py: {e}", file=sys.stderr)
        return 2
    counts = ", ".join(f"{s} {sum(1 for _ in (target / s).iterdir())}" for s in SPLITS if (target / s).is_dir())
    print(f"{args.name} ready in {target} ({counts})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
