"""Image reading, folder listing, datasets, splits, the data CLI's check and the download script."""
from __future__ import annotations

import importlib.util
import io
import logging
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from coevo.data import (
    DataError,
    SingleImageDataset,
    UnpairedImageDataset,
    build_datasets,
    list_images,
    load_image,
    make_loader,
    split_train_val,
    to_image,
    to_tensor,
)
from coevo.config import DataConfig
from conftest import make_image_folder

REPO = Path(__file__).resolve().parents[1]


def _png_bytes(arr: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def _rgb(seed: int = 0, size: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(size, size, 3), dtype=np.uint8)


# ----------------------------------------------------------------------------- load_image
def test_load_image_rgb_roundtrip(tmp_path):
    arr = _rgb()
    (tmp_path / "x.png").write_bytes(_png_bytes(arr))
    img = load_image(tmp_path / "x.png")
    assert img.mode == "RGB" and np.array_equal(np.asarray(img), arr)


def test_load_image_grayscale(tmp_path):
    gray = np.arange(256, dtype=np.uint8).reshape(16, 16)
    Image.fromarray(gray).save(tmp_path / "g.png")
    out = np.asarray(load_image(tmp_path / "g.png"))
    assert out.shape == (16, 16, 3)
    assert all(np.array_equal(out[..., c], gray) for c in range(3))


def test_load_image_16bit_scales_not_clips(tmp_path):
    values = np.array([[0, 257, 32896, 65535]], dtype=np.uint16).repeat(4, axis=0)
    Image.fromarray(values).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as im:
        assert im.mode in ("I;16", "I")
    out = np.asarray(load_image(tmp_path / "deep.png"))
    assert out[0, :, 0].tolist() == [0, 1, 128, 255]


def test_load_image_float_mode(tmp_path):
    arr = np.array([[0.0, 0.5, 1.0, 1.0]], dtype=np.float32).repeat(4, axis=0)
    Image.fromarray(arr).save(tmp_path / "f.tiff")
    out = np.asarray(load_image(tmp_path / "f.tiff"))
    assert out[0, :, 1].tolist() == [0, 128, 255, 255]


def test_load_image_rgba_composited_on_white(tmp_path):
    arr = np.zeros((2, 2, 4), dtype=np.uint8)
    arr[0, 0] = (255, 0, 0, 255)      # opaque red
    arr[0, 1] = (255, 0, 0, 0)        # transparent: white
    arr[1, 0] = (0, 0, 0, 128)        # half black over white: mid grey
    arr[1, 1] = (0, 0, 255, 255)
    Image.fromarray(arr, mode="RGBA").save(tmp_path / "a.png")
    out = np.asarray(load_image(tmp_path / "a.png")).astype(int)
    assert out[0, 0].tolist() == [255, 0, 0]
    assert out[0, 1].tolist() == [255, 255, 255]
    assert all(abs(v - 127) <= 1 for v in out[1, 0])
    assert out[1, 1].tolist() == [0, 0, 255]


def test_load_image_palette_and_la(tmp_path):
    pal = Image.new("P", (2, 1))
    pal.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    pal.putpixel((0, 0), 0)
    pal.putpixel((1, 0), 1)
    pal.save(tmp_path / "p.png")
    assert np.asarray(load_image(tmp_path / "p.png")).tolist() == [[[10, 20, 30], [200, 100, 50]]]
    la = Image.fromarray(np.array([[[0, 0], [100, 255]]], dtype=np.uint8), mode="LA")
    la.save(tmp_path / "la.png")
    assert np.asarray(load_image(tmp_path / "la.png")).tolist() == [[[255, 255, 255], [100, 100, 100]]]


def test_load_image_cmyk_jpeg(tmp_path):
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "c.jpg", quality=95)
    out = np.asarray(load_image(tmp_path / "c.jpg")).astype(int)
    assert out.shape == (8, 8, 3)
    assert out[4, 4, 0] > 200 and out[4, 4, 1] < 60 and out[4, 4, 2] < 60


def test_load_image_missing(tmp_path):
    with pytest.raises(DataError, match="not found.*nope.png"):
        load_image(tmp_path / "nope.png")


def test_load_image_not_an_image(tmp_path):
    (tmp_path / "fake.jpg").write_text("<html>404 not found</html>")
    with pytest.raises(DataError) as e:
        load_image(tmp_path / "fake.jpg")
    assert "fake.jpg" in str(e.value) and "skip_bad_images=true" in str(e.value)


@pytest.mark.parametrize("fmt,ext", [("PNG", "png"), ("JPEG", "jpg")])
def test_load_image_truncated(tmp_path, fmt, ext):
    data = _png_bytes(_rgb(size=64), fmt)
    path = tmp_path / f"cut.{ext}"
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(DataError, match=f"cut.{ext}"):
        load_image(path)


# ----------------------------------------------------------------------------- list_images
def test_list_images_missing_folder(tmp_path):
    with pytest.raises(DataError) as e:
        list_images(tmp_path / "trainA")
    msg = str(e.value)
    assert "trainA" in msg and "does not exist" in msg and "coevo data synthetic" in msg and "testB" in msg


def test_list_images_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no image files in .*empty"):
        list_images(tmp_path / "empty")


def test_list_images_nested_folder_hint(tmp_path):
    (tmp_path / "trainA" / "horses").mkdir(parents=True)
    with pytest.raises(DataError, match="subfolders such as horses"):
        list_images(tmp_path / "trainA")


def test_list_images_filters_and_sorts(tmp_path, caplog):
    d = tmp_path / "trainA"
    d.mkdir()
    for name in ("b.PNG", "a.jpg", "c.JpEg", "d.webp"):
        Image.fromarray(_rgb()).save(d / name, format="PNG" if name != "a.jpg" else "JPEG")
    (d / "notes.txt").write_text("hello")
    (d / "._a.jpg").write_bytes(b"\x00\x05\x16\x07")   # macOS metadata twin
    Image.fromarray(_rgb()).save(d / "anim.gif")
    (d / "sub").mkdir()
    with caplog.at_level(logging.DEBUG, logger="coevo.data"):
        paths = list_images(d)
    assert [p.name for p in paths] == ["a.jpg", "b.PNG", "c.JpEg", "d.webp"]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "anim.gif" in warnings[0].getMessage()
    assert any("notes.txt" in r.getMessage() and r.levelno == logging.DEBUG for r in caplog.records)


def test_list_images_skip_bad_counts_and_warns_once(tmp_path, caplog):
    d = tmp_path / "trainA"
    d.mkdir()
    for i in range(3):
        Image.fromarray(_rgb(i)).save(d / f"good{i}.png")
    (d / "bad1.jpg").write_text("not an image")
    data = _png_bytes(_rgb(size=64))
    (d / "bad2.png").write_bytes(data[: len(data) // 2])
    jpeg = _png_bytes(_rgb(size=64), "JPEG")
    (d / "bad3.jpg").write_bytes(jpeg[: len(jpeg) * 9 // 10])
    assert len(list_images(d)) == 6  # not opened without skip_bad
    with caplog.at_level(logging.WARNING, logger="coevo.data"):
        paths = list_images(d, skip_bad=True)
    assert [p.name for p in paths] == ["good0.png", "good1.png", "good2.png"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "3 unreadable" in warnings[0] and "bad1.jpg" in warnings[0]


def test_list_images_all_bad(tmp_path):
    d = tmp_path / "x"
    d.mkdir()
    (d / "bad.png").write_text("no")
    with pytest.raises(DataError, match="every image"):
        list_images(d, skip_bad=True)


# ----------------------------------------------------------------------------- tensors
def test_to_tensor_to_image_roundtrip():
    arr = np.random.default_rng(0).integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    t = to_tensor(Image.fromarray(arr))
    assert t.shape == (3, 5, 7) and t.dtype == torch.float32
    assert t.min() >= -1 and t.max() <= 1
    assert np.array_equal(np.asarray(to_image(t)), arr)
    assert np.array_equal(np.asarray(to_image(t.unsqueeze(0))), arr)


def test_to_image_clamps_and_rounds():
    t = torch.tensor([-3.0, 1.5, 0.0, 2 * 100.4 / 255 - 1]).view(1, 1, 4).expand(3, 1, 4)
    assert np.asarray(to_image(t))[0, :, 0].tolist() == [0, 255, 128, 100]


# ----------------------------------------------------------------------------- datasets
def test_unpaired_dataset_shapes(image_folder):
    ds = UnpairedImageDataset(image_folder, load_size=36, crop_size=32)
    assert len(ds) == 4
    item = ds[1]
    for k in ("A", "B"):
        assert item[k].shape == (3, 32, 32) and item[k].dtype == torch.float32
        assert item[k].min() >= -1 and item[k].max() <= 1
    assert item["A_path"].endswith("trainA/001.png")


def test_unpaired_dataset_len_is_max(tmp_path):
    make_image_folder(tmp_path, n=3, size=16, splits=("trainA",))
    make_image_folder(tmp_path, n=5, size=16, splits=("trainB",))
    ds = UnpairedImageDataset(tmp_path, load_size=16, crop_size=16)
    assert len(ds) == 5
    assert ds[4]["A_path"].endswith("001.png")


def test_unpaired_dataset_deterministic(image_folder):
    kw = dict(load_size=40, crop_size=32, seed=3)
    a, b = UnpairedImageDataset(image_folder, **kw), UnpairedImageDataset(image_folder, **kw)
    for i in range(len(a)):
        x, y = a[i], b[i]
        assert x["B_path"] == y["B_path"]
        assert torch.equal(x["A"], y["A"]) and torch.equal(x["B"], y["B"])
    # Same epoch again after visiting another: identical. Another epoch: different draws.
    first = [a[i]["A"] for i in range(len(a))]
    a.set_epoch(1)
    other = [a[i]["A"] for i in range(len(a))]
    a.set_epoch(0)
    assert all(torch.equal(p, q) for p, q in zip(first, [a[i]["A"] for i in range(len(a))]))
    assert not all(torch.equal(p, q) for p, q in zip(first, other))
    seed4 = UnpairedImageDataset(image_folder, load_size=40, crop_size=32, seed=4)
    assert not all(torch.equal(p, seed4[i]["A"]) for i, p in enumerate(first))


def test_unpaired_dataset_flip_and_crop(tmp_path):
    d = tmp_path / "data"
    arr = np.zeros((16, 16, 3), dtype=np.uint8)
    arr[:, :8] = 255  # left half white
    for split in ("trainA", "trainB"):
        (d / split).mkdir(parents=True)
        Image.fromarray(arr).save(d / split / "0.png")
    ds = UnpairedImageDataset(d, load_size=16, crop_size=16, flip=True)
    lefts = set()
    for epoch in range(12):
        ds.set_epoch(epoch)
        lefts.add(float(ds[0]["A"][0, 0, 0]))
    assert lefts == {-1.0, 1.0}  # flipped in some epochs, not in others
    noflip = UnpairedImageDataset(d, load_size=16, crop_size=16, flip=False)
    for epoch in range(6):
        noflip.set_epoch(epoch)
        assert float(noflip[0]["A"][0, 0, 0]) == 1.0


def test_unpaired_dataset_eval_mode(image_folder):
    ds = UnpairedImageDataset(image_folder, phase="test", load_size=40, crop_size=16)
    assert not ds.augment
    item = ds[2]
    assert item["A"].shape == (3, 16, 16)
    assert item["B_path"].endswith("testB/002.png")
    expect = to_tensor(load_image(image_folder / "testA/002.png").resize((16, 16), Image.BICUBIC))
    assert torch.equal(item["A"], expect)
    ds.set_epoch(5)
    assert torch.equal(ds[2]["A"], expect)
    train_eval = UnpairedImageDataset(image_folder, load_size=40, crop_size=16, augment=False)
    assert train_eval[1]["B_path"].endswith("trainB/001.png")


def test_unpaired_dataset_indices(image_folder):
    ds = UnpairedImageDataset(image_folder, load_size=32, crop_size=32, indices_A=[0, 2], indices_B=[3])
    assert len(ds) == 2
    assert {ds[i]["A_path"][-7:] for i in range(2)} == {"000.png", "002.png"}
    assert ds[0]["B_path"].endswith("003.png")
    with pytest.raises(DataError, match="out of range"):
        UnpairedImageDataset(image_folder, load_size=32, crop_size=32, indices_A=[9])
    sub = ds.subset([1], None, augment=False)
    assert len(sub) == 1 and sub[0]["A_path"].endswith("002.png") and not sub.augment


def test_unpaired_dataset_bad_inputs(tmp_path, image_folder):
    with pytest.raises(DataError, match="does not exist"):
        UnpairedImageDataset(tmp_path / "nothing")
    with pytest.raises(DataError, match="crop_size"):
        UnpairedImageDataset(image_folder, load_size=16, crop_size=32)
    (image_folder / "trainA" / "000.png").write_text("corrupt")
    ds = UnpairedImageDataset(image_folder, load_size=32, crop_size=32)
    with pytest.raises(DataError, match="000.png"):
        ds[0]
    skipping = UnpairedImageDataset(image_folder, load_size=32, crop_size=32, skip_bad=True)
    assert len(skipping.A_paths) == 3


def test_loader_workers_and_resume_agree(image_folder):
    ds = UnpairedImageDataset(image_folder, load_size=40, crop_size=32, seed=1)

    def epoch_batches(workers, epoch):
        loader = make_loader(ds, batch_size=2, shuffle=True, num_workers=workers, seed=7, epoch=epoch)
        return [(b["A_path"], b["A"]) for b in loader]

    main = epoch_batches(0, 2)
    workers = epoch_batches(2, 2)
    assert [p for p, _ in main] == [p for p, _ in workers]
    assert all(torch.equal(x, y) for (_, x), (_, y) in zip(main, workers))
    again = epoch_batches(0, 2)  # a resumed run rebuilding epoch 2
    assert all(torch.equal(x, y) for (_, x), (_, y) in zip(main, again))


def test_single_image_dataset(tmp_path):
    d = tmp_path / "photos"
    d.mkdir()
    Image.fromarray(_rgb(size=30)).save(d / "a.png")
    Image.fromarray(np.zeros((21, 43), dtype=np.uint8)).save(d / "b.png")
    ds = SingleImageDataset(d)
    assert len(ds) == 2
    assert ds[0]["image"].shape == (3, 28, 28) and ds[0]["path"].endswith("a.png")
    assert ds[1]["image"].shape == (3, 20, 40)
    assert ds[1]["image"].min() == -1
    assert SingleImageDataset(d, size=16)[1]["image"].shape == (3, 16, 16)
    with pytest.raises(DataError, match="multiple of 4"):
        SingleImageDataset(d, size=30)


# ----------------------------------------------------------------------------- splits
@pytest.mark.parametrize("n,frac", [(10, 0.1), (2, 0.1), (7, 0.5), (100, 0.25), (1, 0.5), (5, 0.0), (0, 0.1)])
def test_split_train_val(n, frac):
    train, val = split_train_val(n, frac, seed=0)
    assert sorted(train + val) == list(range(n)) and not set(train) & set(val)
    if frac > 0 and n >= 2:
        assert 1 <= len(val) <= n - 1
        assert len(val) == max(1, min(n - 1, round(n * frac)))
    else:
        assert val == []
    assert (train, val) == split_train_val(n, frac, seed=0)


def test_split_train_val_seed_and_range():
    assert split_train_val(50, 0.2, 0) != split_train_val(50, 0.2, 1)
    with pytest.raises(ValueError):
        split_train_val(10, 1.0, 0)


def test_build_datasets_synthetic(tmp_path):
    cfg = DataConfig(root=str(tmp_path / "synth"), synthetic_n_train=10, synthetic_n_test=3,
                     load_size=32, crop_size=32, val_fraction=0.2)
    splits = build_datasets(cfg, seed=0)
    assert (tmp_path / "synth" / "meta.json").exists()
    assert len(splits.train.A_paths) == 8 and len(splits.val.A_paths) == 2 and len(splits.test) == 3
    assert not set(splits.train.A_paths) & set(splits.val.A_paths)
    assert splits.train.augment and not splits.val.augment and not splits.test.augment
    assert splits.train[0]["A"].shape == (3, 32, 32)
    # Any stage can recompute the held-out images from the file count and the same seed.
    _, val_A = split_train_val(len(list_images(tmp_path / "synth" / "trainA")), 0.2, 0)
    all_A = list_images(tmp_path / "synth" / "trainA")
    assert splits.val.A_paths == [all_A[i] for i in val_A]
    cfg_missing = DataConfig(root=str(tmp_path / "none"), synthetic=False)
    with pytest.raises(DataError, match="data.synthetic=true"):
        build_datasets(cfg_missing)


# ----------------------------------------------------------------------------- CLI check
def test_cli_data_check(tmp_path, image_folder, capsys):
    from coevo.cli import main

    assert main(["data", "check", str(image_folder)]) == 0
    assert "trainA" in capsys.readouterr().out
    (image_folder / "testB" / "002.png").write_text("broken")
    assert main(["data", "check", str(image_folder)]) == 1
    out = capsys.readouterr().out
    assert "002.png" in out and "skip_bad_images" in out
    assert main(["data", "check", str(image_folder), "--skip-bad"]) == 0
    assert main(["data", "check", str(tmp_path / "missing")]) == 2


# ----------------------------------------------------------------------------- download script
@pytest.fixture(scope="module")
def download():
    spec = importlib.util.spec_from_file_location("coevo_download_script", REPO / "datasets" / "download.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _make_zip(path: Path, name: str, splits=("trainA", "trainB", "testA", "testB")) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for s in splits:
            zf.writestr(f"{name}/{s}/0.jpg", _png_bytes(_rgb(), "JPEG"))
    return path


def test_download_names_and_urls(download):
    assert download.dataset_url("horse2zebra") == \
        "https://efrosgans.eecs.berkeley.edu/cyclegan/datasets/horse2zebra.zip"
    with pytest.raises(download.DownloadError) as e:
        download.dataset_url("horse2zebr")
    assert "apple2orange" in str(e.value) and "iphone2dslr_flower" in str(e.value)
    with pytest.raises(download.DownloadError, match="cityscapes-dataset.com"):
        download.dataset_url("cityscapes")


def test_download_unzip_and_verify(download, tmp_path, monkeypatch, capsys):
    src = _make_zip(tmp_path / "src.zip", "horse2zebra")
    calls = []

    def fake_download(url, dest):
        calls.append(url)
        dest.write_bytes(src.read_bytes())
        return dest

    monkeypatch.setattr(download, "download_file", fake_download)
    out = tmp_path / "datasets"
    assert download.main(["horse2zebra", "--out", str(out)]) == 0
    assert calls == ["https://efrosgans.eecs.berkeley.edu/cyclegan/datasets/horse2zebra.zip"]
    assert all((out / "horse2zebra" / s / "0.jpg").exists() for s in ("trainA", "trainB", "testA", "testB"))
    assert sorted(p.name for p in out.iterdir()) == ["horse2zebra"]  # zip and temp folders gone
    assert download.main(["horse2zebra", "--out", str(out)]) == 0 and len(calls) == 1  # already there


def test_download_rejects_bad_archives(download, tmp_path, capsys):
    out = tmp_path / "datasets"
    partial = _make_zip(tmp_path / "partial.zip", "maps", splits=("trainA", "testA"))
    assert download.main(["maps", "--out", str(out), "--zip", str(partial)]) == 2
    assert "trainB" in capsys.readouterr().err and not (out / "maps").exists()
    junk = tmp_path / "junk.zip"
    junk.write_text("<html>")
    assert download.main(["maps", "--out", str(out), "--zip", str(junk)]) == 2
    assert "not a valid zip" in capsys.readouterr().err
    assert download.main(["nope", "--out", str(out)]) == 2
    assert download.main(["cityscapes", "--out", str(out)]) == 2
    assert "gtFine_trainvaltest.zip" in capsys.readouterr().err


def test_one_held_out_image_per_domain_is_warned_about(tmp_path, caplog):
    from coevo.data.prepare import train_val_indices

    class Full:
        A_paths, B_paths = list(range(8)), list(range(40))

    with caplog.at_level(logging.WARNING, logger="coevo.data.prepare"):
        train_val_indices(Full(), 0.1, seed=0)  # 1 of A, 4 of B
    assert "only 1 A" in caplog.text and "data.val_fraction" in caplog.text
    caplog.clear()
    Full.A_paths = list(range(40))
    with caplog.at_level(logging.WARNING, logger="coevo.data.prepare"):
        train_val_indices(Full(), 0.1, seed=0)
    assert caplog.text == ""
