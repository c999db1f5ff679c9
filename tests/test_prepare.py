"""`alexnet prepare`: every source layout to a store with the right labels and pixels, the
paper's resize-and-crop, exact statistics, skips, and interrupt-and-rerun."""

from __future__ import annotations

import gzip
import json
import os
import pickle
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import _images as images_
import numpy as np
import pytest
from PIL import Image

from alexnet.cli import main as cli_main
from alexnet.data import Store, open_split, sources
from alexnet.data.prepare import _payloads, prepare
from alexnet.data.preprocess import Skip, load_image
from alexnet.data.sources import FASHION_MNIST_NAMES, limit_per_class, read_idx
from alexnet.data.store import LABELS, PROGRESS, RAW
from alexnet.errors import UserError

REPO = Path(__file__).resolve().parents[1]


def reference_resize_crop(array: np.ndarray, size: int) -> np.ndarray:
    """Independent recipe: torchvision's Resize(size) then CenterCrop(size), with PIL."""
    image = Image.fromarray(array)
    w, h = image.size
    short, long = min(w, h), max(w, h)
    new_long = int(size * long / short)
    new = (size, new_long) if w <= h else (new_long, size)
    resized = np.asarray(image.resize(new, Image.BILINEAR))
    top = int(round((resized.shape[0] - size) / 2.0))
    left = int(round((resized.shape[1] - size) / 2.0))
    return resized[top:top + size, left:left + size]


def area_downsample_crop(array: np.ndarray, size: int) -> np.ndarray:
    """A NumPy-only reference for integer shrink factors: box-average, then centre crop."""
    h, w = array.shape[:2]
    f = min(h, w) // size
    boxes = array[: h // f * f, : w // f * f].astype(np.float64)
    boxes = boxes.reshape(h // f, f, w // f, f, 3).mean(axis=(1, 3))
    top, left = (boxes.shape[0] - size) // 2, (boxes.shape[1] - size) // 2
    return boxes[top:top + size, left:left + size]


@pytest.mark.parametrize("wh", [(120, 80), (80, 120), (97, 61), (64, 64), (300, 41), (20, 30)])
def test_resize_and_crop_equal_independent_recipe(wh):
    array = images_.smooth(*wh, seed=wh[0])
    got = load_image(("bytes", images_.png(array)), 32)
    want = reference_resize_crop(array, 32)
    assert got.shape == (32, 32, 3) and got.dtype == np.uint8
    # Resampling only the cropped region must equal resize-then-crop up to float rounding.
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1


def test_resize_matches_numpy_area_average():
    array = images_.smooth(256, 192, seed=3)  # shrink by exactly 4 (192 -> 48)
    got = load_image(("bytes", images_.png(array)), 48).astype(np.float64)
    want = area_downsample_crop(array, 48)
    # Bilinear antialiasing and a box filter differ a little on smooth content; a wrong
    # offset, scale or orientation would differ by tens of levels.
    assert np.abs(got - want).mean() < 1.5 and np.abs(got - want).max() < 8


def test_real_world_files():
    for k in range(3):
        for name, data in images_.zoo(k, seed=k).items():
            got = load_image(("bytes", data), 24)
            assert got.shape == (24, 24, 3)
            assert images_.class_of(got) == k, name
    colour = images_.photo(70, 50, 4)
    cmyk = load_image(("bytes", images_.cmyk_jpeg(colour)), 24).astype(int)
    plain = reference_resize_crop(colour, 24).astype(int)
    assert np.abs(cmyk - plain).mean() < 4  # CMYK decodes to the same colours
    grey = load_image(("bytes", images_.grey_jpeg(colour)), 24)
    assert np.array_equal(grey[..., 0], grey[..., 1]) and np.array_equal(grey[..., 1],
                                                                           grey[..., 2])
    deep = (np.arange(32 * 32).reshape(32, 32) * 64).astype(np.uint16)  # 16-bit greyscale PNG
    got = load_image(("bytes", images_.png(deep)), 32)
    assert np.abs(got[..., 0].astype(float) - deep / 257.0).max() <= 0.5
    upright = np.zeros((40, 80, 3), np.uint8)
    upright[:, :40] = (255, 0, 0)
    upright[:, 40:] = (0, 0, 255)
    rotated = load_image(("bytes", images_.exif_rotated_jpeg(upright)), 32).astype(int)
    assert rotated[:, :12, 0].min() > 200 and rotated[:, :12, 2].max() < 60  # red left
    assert rotated[:, 20:, 2].min() > 200 and rotated[:, 20:, 0].max() < 60  # blue right


def _colour_truth(store: Store) -> np.ndarray:
    return np.array([images_.class_of(store.read([i])[0]) for i in range(len(store))])


def _check_stats(store: Store) -> None:
    """The store's statistics equal NumPy over every stored pixel."""
    pixels = store.read(np.arange(len(store)))
    flat = pixels.reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(store.stats["mean_image"], pixels.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(store.stats["channel_mean"], flat.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(store.stats["rgb_cov"], np.cov(flat, rowvar=False, bias=True),
                               rtol=1e-9)
    vec = store.stats["eigvec"]
    np.testing.assert_allclose(vec.T @ vec, np.eye(3), atol=1e-12)


def _image_folder(root: Path, classes: list[str], splits: tuple[str, ...] = ("train", "val"),
                  bad: bool = True) -> None:
    for s, split in enumerate(splits):
        for k, name in enumerate(classes):
            files = images_.zoo(k, seed=10 * s + k)
            if bad and k == 0 and split == "train":
                files["broken.JPEG"] = images_.truncated_jpeg(images_.photo(80, 60, 0))
                files["notes.jpg"] = b"this is not an image"
                files["empty.png"] = b""
            images_.write_files(root / split / name, files)
            if bad and k == 0 and split == "train":
                (root / split / name / "gone.jpg").symlink_to(root / "nowhere.jpg")
        (root / split / classes[0] / "readme.txt").write_text("not an image extension")


def test_image_folder(tmp_path):
    src = tmp_path / "src"
    _image_folder(src, ["zebra", "apple", "mango"])
    summary = prepare(src, tmp_path / "out", size=32, workers=1)
    assert summary["kind"] == "image-folder"
    train, val = open_split(tmp_path / "out", "train"), open_split(tmp_path / "out", "val")
    assert [c["name"] for c in train.classes] == ["apple", "mango", "zebra"]  # sorted
    per_class = len(images_.zoo(0))
    assert len(train) == len(val) == 3 * per_class
    # Unreadable files, a broken link and a file that is no image are all listed.
    assert train.meta["skipped"] == 5 and summary["splits"]["train"]["skipped"] == 5
    assert val.meta["skipped"] == 1
    report = (train.path / "skipped.tsv").read_text().splitlines()
    assert report[0] == "path (escaped)\treason (escaped)"
    reasons = dict(line.split("\t") for line in report[1:])
    assert set(Path(p).name for p in reasons) == {"broken.JPEG", "notes.jpg", "empty.png",
                                                  "gone.jpg", "readme.txt"}
    zebra = src / "train" / "zebra"
    assert "truncated" in reasons[str(zebra / "broken.JPEG")]
    assert "broken symbolic link" in reasons[str(zebra / "gone.jpg")]
    assert "not an image file name" in reasons[str(zebra / "readme.txt")]
    # Folder "zebra" holds colour 0, "apple" colour 1, "mango" colour 2.
    colour_to_label = {0: 2, 1: 0, 2: 1}
    for store in (train, val):
        truth = np.array([colour_to_label[c] for c in _colour_truth(store)])
        assert np.array_equal(store.labels, truth)
    _check_stats(train)
    np.testing.assert_array_equal(val.stats["rgb_cov"], train.stats["rgb_cov"])
    np.testing.assert_array_equal(val.stats["mean_image"], train.stats["mean_image"])
    assert val.meta["stats_split"] == "train"
    # A file's stored pixels equal the independent recipe on the same file.
    path = src / "train" / "apple" / "png_1.JPEG"
    in_class = sorted(p.name for p in path.parent.iterdir() if p.suffix != ".txt")
    position = int(np.flatnonzero(train.labels == 0)[in_class.index(path.name)])
    want = reference_resize_crop(np.asarray(Image.open(path).convert("RGB")), 32)
    assert np.abs(train.read([position])[0].astype(int) - want.astype(int)).max() <= 1


@pytest.mark.parametrize("awkward", [
    {b"bad\xff.jpg": r"bad\xff.jpg", b"readme\xff.txt": r"readme\xff.txt"},  # not UTF-8
    {b"bad\t.jpg": r"bad\t.jpg", b"new\nline.txt": r"new\nline.txt",
     b"tab\there.txt": r"tab\there.txt", b"back\\slash.txt": r"back\\slash.txt"},
], ids=["not-utf8", "tab-newline-backslash"])
def test_awkward_names_in_the_skip_report(tmp_path, awkward):
    """Names of skipped files (an empty bad*.jpg) and of files that are no images: the store
    completes, after an interruption too (names that are not UTF-8 once crashed the end of
    prepare, and its rerun), and each row of skipped.tsv is one line of two fields in valid
    UTF-8, escaped as docs/data.md says. Images and a class folder whose names are not UTF-8
    are read."""
    src = tmp_path / "src"
    cat, dog = src / "cat", src / os.fsdecode(b"dog\xfd")
    files = {f"{i}.png": images_.png(images_.photo(20, 20, 0, i)) for i in range(3)}
    files[os.fsdecode(b"good\xfe.png")] = images_.png(images_.photo(20, 20, 0))
    files.update({os.fsdecode(name): b"" for name in awkward})
    images_.write_files(cat, files)
    images_.write_files(dog, {f"{i}.png": images_.png(images_.photo(20, 20, 1, i))
                              for i in range(2)})
    with pytest.raises(KeyboardInterrupt):  # bad*.jpg's skip is in the progress record
        prepare(src, tmp_path / "out", size=16, workers=1, chunk=2, _stop_after=2)
    prepare(src, tmp_path / "out", size=16, workers=1, chunk=2)
    train = open_split(tmp_path / "out", "train")
    assert list(train.labels) == [0, 0, 0, 0, 1, 1]
    assert [c["name"] for c in train.classes] == ["cat", os.fsdecode(b"dog\xfd")]
    json.loads((train.path / "header.json").read_bytes().decode("utf-8"))
    lines = (train.path / "skipped.tsv").read_bytes().decode("utf-8").split("\n")
    assert len(lines) == 2 + train.meta["skipped"] == 2 + len(awkward) and lines[-1] == ""
    rows = [line.split("\t") for line in lines[1:-1]]
    assert all(len(row) == 2 for row in rows), rows
    assert {name for name, _ in rows} == {f"{cat}/{name}" for name in awkward.values()}
    bad = next(name for name in awkward.values() if name.startswith("bad"))
    assert dict(rows)[f"{cat}/{bad}"] == "empty file"


def test_single_level_folder_and_jpeg_format(tmp_path):
    src = tmp_path / "src"
    for k, name in enumerate(["a", "b"]):
        images_.write_files(src / name, {f"{i}.png": images_.png(images_.photo(40 + i, 30, k))
                                         for i in range(2)})
        images_.write_files(src / name / "deeper", {"2.png": images_.png(images_.photo(40, 30,
                                                                                      k))})
    prepare(src, tmp_path / "raw", size=16, workers=1)
    prepare(src, tmp_path / "jpg", size=16, workers=1, format="jpeg")
    raw, jpg = open_split(tmp_path / "raw", "train"), open_split(tmp_path / "jpg", "train")
    assert jpg.format == "jpeg" and np.array_equal(raw.labels, [0, 0, 0, 1, 1, 1])
    diff = np.abs(raw.read(range(6)).astype(int) - jpg.read(range(6)).astype(int))
    assert diff.mean() < 3  # quality 90 on photo-like content
    np.testing.assert_array_equal(raw.stats["rgb_cov"], jpg.stats["rgb_cov"])  # from raw pixels
    with pytest.raises(UserError, match="no 'val' split.*train"):
        open_split(tmp_path / "raw", "val")


def test_jpeg_quality_is_the_encoders_and_part_of_what_the_store_is(tmp_path, capsys):
    """--jpeg-quality: the store's JPEGs carry that quality's quantisation tables (PIL's
    encoder at the same quality, written independently), the header records it, a rerun
    with it is complete, another quality or a raw store with it is refused in one line."""
    import io

    from PIL import Image

    src = tmp_path / "src"
    for k, name in enumerate(["a", "b"]):
        images_.write_files(src / name, {f"{i}.png": images_.png(images_.photo(40 + i, 30, k))
                                         for i in range(2)})
    prepare(src, tmp_path / "q90", size=16, workers=1, format="jpeg")
    prepare(src, tmp_path / "q50", size=16, workers=1, format="jpeg", jpeg_quality=50)
    for quality in (90, 50):
        store = open_split(tmp_path / f"q{quality}", "train")
        assert store.meta["jpeg_quality"] == quality
        reference = io.BytesIO()
        Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(reference, "JPEG",
                                                             quality=quality)
        want = Image.open(reference).quantization
        for blob in store.encoded(range(len(store))):
            assert Image.open(io.BytesIO(bytes(blob))).quantization == want
    fine, coarse = (open_split(tmp_path / q, "train") for q in ("q90", "q50"))
    assert sum(len(b) for b in coarse.encoded(range(4))) < \
        sum(len(b) for b in fine.encoded(range(4)))
    assert "jpeg_quality" not in fine.meta["fingerprint"]  # as before the option existed
    capsys.readouterr()
    prepare(src, tmp_path / "q50", size=16, workers=1, format="jpeg", jpeg_quality=50)
    assert "already complete" in capsys.readouterr().err
    with pytest.raises(UserError, match="other arguments"):
        prepare(src, tmp_path / "q50", size=16, workers=1, format="jpeg")
    for bad, message in ((0, "choose 1-100"), (101, "choose 1-100")):
        with pytest.raises(UserError, match=f"--jpeg-quality {bad}: {message}"):
            prepare(src, tmp_path / "bad", size=16, workers=1, format="jpeg",
                    jpeg_quality=bad)
    with pytest.raises(UserError, match="--format jpeg only"):
        prepare(src, tmp_path / "bad", size=16, workers=1, jpeg_quality=50)
    assert not (tmp_path / "bad").exists()
    assert cli_main(["prepare", str(src), str(tmp_path / "cli"), "--size", "16", "--workers",
                     "1", "--format", "jpeg", "--jpeg-quality", "70"]) == 0
    assert open_split(tmp_path / "cli", "train").meta["jpeg_quality"] == 70


WNIDS = ["n01440764", "n01443537", "n01484850", "n01491361"]  # sorted
ILSVRC_IDS = [3, 1, 4, 2]  # devkit order differs from sorted-wnid order


def _ilsvrc(root: Path, year: int, archives: bool) -> dict[str, list[int]]:
    """A small ILSVRC source; returns the true class (sorted-wnid label) of each val/test image."""
    leaves = [(i, w, f"class {w}, synonym") for i, w in zip(ILSVRC_IDS, WNIDS, strict=True)]
    leaves = [leaves[j] for j in (2, 0, 3, 1)]  # meta.mat rows in yet another order
    meta = images_.meta_mat(leaves) if year == 2012 else images_.meta_mat_2010(leaves)
    rng = np.random.default_rng(year)
    truth: dict[str, list[int]] = {}
    train = {w: {f"{w}_{i}.JPEG": images_.jpeg(images_.photo(*images_.SIZES[i], k, i))
                 for i in range(3)} for k, w in enumerate(WNIDS)}
    flat: dict[str, dict[str, bytes]] = {}
    for split, n in (("val", 9), ("test", 6) if year == 2010 else ("val", 9)):
        labels = rng.integers(0, len(WNIDS), n)
        truth[split] = labels.tolist()
        flat[split] = {f"ILSVRC{year}_{split}_{i + 1:08d}.JPEG":
                       images_.jpeg(images_.photo(50 + i, 40, int(k), i))
                       for i, k in enumerate(labels)}
    ground = {split: images_.ground_truth([ILSVRC_IDS[k] for k in labels], split)
              for split, labels in truth.items()}
    gt_names = {"val": f"ILSVRC{year}_validation_ground_truth.txt",
                "test": f"ILSVRC{year}_test_ground_truth.txt"}
    devkit = {"data/meta.mat": meta, **{f"data/{gt_names[s]}": g for s, g in ground.items()}}
    kit = f"ILSVRC{year}_devkit_t12" if year == 2012 else f"ILSVRC{year}_devkit-1.0"
    tag = "img" if year == 2012 else "images"
    if archives:
        images_.write_tar(root / f"{kit}.tar.gz", {f"{kit}/{n}": d for n, d in devkit.items()},
                          mode="w:gz")
        images_.write_tar(root / f"ILSVRC{year}_{tag}_train.tar",
                          {f"{w}.tar": images_.tar_bytes(files) for w, files in
                           reversed(train.items())})
        for split, files in flat.items():
            shuffled = dict(reversed(list(files.items())))
            images_.write_tar(root / f"ILSVRC{year}_{tag}_{split}.tar", shuffled)
    else:
        images_.write_files(root / kit / "data", {n[5:]: d for n, d in devkit.items()})
        for w, files in train.items():
            images_.write_files(root / "train" / w, files)
        for split, files in flat.items():
            images_.write_files(root / split, files)
    return truth


@pytest.mark.parametrize("archives", [True, False], ids=["archives", "folders"])
def test_ilsvrc2012(tmp_path, archives):
    truth = _ilsvrc(tmp_path / "src", 2012, archives)
    # Two worker processes: tar members travel to them as bytes.
    summary = prepare(tmp_path / "src", tmp_path / "out", size=24, workers=2, chunk=5)
    assert summary["kind"] == "ilsvrc2012" and set(summary["splits"]) == {"train", "val"}
    train, val = open_split(tmp_path / "out", "train"), open_split(tmp_path / "out", "val")
    assert [c["wnid"] for c in train.classes] == WNIDS
    assert [c["ilsvrc_id"] for c in train.classes] == ILSVRC_IDS
    assert train.classes[0]["name"] == f"class {WNIDS[0]}, synonym"
    assert np.array_equal(train.labels, np.repeat(np.arange(4), 3))
    assert np.array_equal(_colour_truth(train), train.labels)
    assert np.array_equal(val.labels, truth["val"])  # the devkit's ids mapped to sorted wnids
    assert np.array_equal(_colour_truth(val), val.labels)
    assert val.meta["source"]["from"].endswith("val.tar" if archives else "val")


def test_ilsvrc_hidden_entries_are_left_out_with_a_notice(tmp_path, capsys):
    """The ILSVRC folders skipped a hidden class folder and hidden images in silence, where
    an image-folder tree says so: now the same notices."""
    src = tmp_path / "src"
    _ilsvrc(src, 2012, archives=False)
    (src / "train" / WNIDS[0]).rename(src / "train" / f".{WNIDS[0]}")
    dot = images_.jpeg(images_.photo(20, 20, 0))
    images_.write_files(src / "train" / WNIDS[1], {".x.JPEG": dot})
    images_.write_files(src / "val", {".ILSVRC2012_val_00000001.JPEG": dot})
    summary = prepare(src, tmp_path / "out", size=8, workers=1)
    err = capsys.readouterr().err.splitlines()
    folders = [line for line in err if "hidden folders are not read" in line]
    assert len(folders) == 1 and f"{src / 'train' / ('.' + WNIDS[0])} (3 images)" in folders[0]
    files = [line for line in err if "hidden image file" in line]
    assert len(files) == 1 and files[0].startswith("alexnet prepare: notice: 2 hidden image")
    assert [summary["splits"][s]["count"] for s in ("train", "val")] == [9, 9]


@pytest.mark.parametrize("layout", ["ilsvrc", "image folder"])
def test_only_hidden_class_folders_are_one_line_with_a_hint(tmp_path, capsys, layout):
    """A tree whose class folders are all hidden gave "no readable images" (ILSVRC) or "no
    known data layout" (an image folder), with no word of the leading dot."""
    src = tmp_path / "src"
    if layout == "ilsvrc":
        _ilsvrc(src, 2012, archives=False)
        where = src / "train"
        for wnid in WNIDS:
            (where / wnid).rename(where / f".{wnid}")
    else:
        where = src
        for k, name in enumerate(["apple", "kiwi"]):
            images_.write_files(src / f".{name}", {"0.png": images_.png(images_.photo(9, 9, k))})
    assert cli_main(["prepare", str(src), str(tmp_path / "out"), "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{where}: its only class folders are hidden" in err, err
    assert "leading dot" in err and not (tmp_path / "out").exists()


def test_tar_members_reach_the_workers_as_spans_of_their_archive(tmp_path):
    # the ImageNet layouts' images come in tars: the parent sends where each member's bytes
    # lie in its archive (nested per-class tars included), not the bytes
    _ilsvrc(tmp_path / "src", 2012, archives=True)
    _ilsvrc(tmp_path / "folders", 2012, archives=False)
    train = tmp_path / "folders" / "train"
    for wnid in WNIDS[:2]:  # per-class tars beside class folders, flat ones
        images_.write_tar(train / f"{wnid}.tar",
                          {p.name: p.read_bytes() for p in sorted((train / wnid).iterdir())})
        for p in (train / wnid).iterdir():
            p.unlink()
        (train / wnid).rmdir()
    reader = sources.TarReader()
    kinds, nested = set(), None
    for root in ("src", "folders"):
        for split in sources.detect(tmp_path / root).splits.values():
            tars = [r for r in split.refs if isinstance(r, sources.TarRef)]
            if not tars:  # the folders' val split: files
                continue
            kinds |= {(root, split.name, r.inner is not None) for r in tars}
            nested = (tars[0], split) if tars[0].inner else nested
            for ref in tars:
                with open(ref.archive, "rb") as f:
                    f.seek(ref.offset)
                    assert f.read(ref.size) == reader.read(ref) and ref.size > 0
            payloads = _payloads(tars, split, reader)
            assert [p[0] for p in payloads] == ["span"] * len(tars)
            assert len(pickle.dumps(payloads)) < 100 * len(tars)  # no image bytes
    assert kinds == {("src", "train", True), ("src", "val", False), ("folders", "train", False)}
    # a member without a span (sparse) is read by the parent, as before
    ref, split = nested
    flat = sources.TarRef(ref.archive, ref.inner, ref.member)
    assert _payloads([flat], split, reader) == [("bytes", reader.read(ref))]
    reader.close()
    # the same images from archives and from folders give the same store, with either
    # number of workers
    prepare(tmp_path / "src", tmp_path / "a", size=20, workers=2, chunk=4)
    prepare(tmp_path / "src", tmp_path / "b", size=20, workers=1, chunk=4)
    prepare(tmp_path / "folders", tmp_path / "c", size=20, workers=2, chunk=4)
    for split in ("train", "val"):
        for name in (RAW, LABELS):
            want = (tmp_path / "a" / split / name).read_bytes()
            assert (tmp_path / "b" / split / name).read_bytes() == want
            assert (tmp_path / "c" / split / name).read_bytes() == want


def test_a_truncated_archive_member_is_a_skip(tmp_path):
    archive = tmp_path / "a.tar"
    archive.write_bytes(b"x" * 100)
    with pytest.raises(Skip, match="ends 5 bytes into it"):
        load_image(("span", (str(archive), 40, 65)), 16)
    with pytest.raises(Skip, match="unreadable archive member"):
        load_image(("span", (str(tmp_path / "gone.tar"), 0, 10)), 16)


def test_ilsvrc2010_has_test_split(tmp_path):
    truth = _ilsvrc(tmp_path / "src", 2010, archives=True)
    summary = prepare(tmp_path / "src", tmp_path / "out", size=16, workers=1,
                      splits="val,test")
    assert summary["kind"] == "ilsvrc2010" and set(summary["splits"]) == {"val", "test"}
    assert open_split(tmp_path / "out", "val").meta["stats_split"] == "val"  # no train yet
    summary = prepare(tmp_path / "src", tmp_path / "out", size=16, workers=1)
    assert set(summary["splits"]) == {"train", "val", "test"}
    train = open_split(tmp_path / "out", "train")
    for split in ("val", "test"):
        store = open_split(tmp_path / "out", split)
        assert np.array_equal(store.labels, truth[split])
        assert np.array_equal(_colour_truth(store), store.labels)
        assert store.meta["stats_split"] == "train"  # the training statistics, once known
        np.testing.assert_array_equal(store.stats["mean_image"], train.stats["mean_image"])
        np.testing.assert_array_equal(store.stats["eigvec"], train.stats["eigvec"])


def test_kaggle_cls_loc(tmp_path):
    src = tmp_path / "kaggle"
    data = src / "ILSVRC" / "Data" / "CLS-LOC"
    (src).mkdir()
    (src / "LOC_synset_mapping.txt").write_text(
        "".join(f"{w} kaggle name {w[-3:]}, other\n" for w in reversed(WNIDS)))
    rows = ["ImageId,PredictionString"]
    labels = [2, 0, 3, 3, 1]
    for i, k in enumerate(labels):
        name = f"ILSVRC2012_val_{i + 1:08d}"
        rows.append(f"{name},{WNIDS[k]} 10 20 30 40 {WNIDS[k]} 1 2 3 4")
        images_.write_files(data / "val", {f"{name}.JPEG": images_.jpeg(
            images_.photo(60, 45, k, i))})
    (src / "LOC_val_solution.csv").write_text("\n".join(rows) + "\n")
    for k, w in enumerate(WNIDS):
        images_.write_files(data / "train" / w, {f"{w}_{i}.JPEG": images_.jpeg(
            images_.photo(50, 70, k, i)) for i in range(2)})
    prepare(src, tmp_path / "out", size=16, workers=1)
    train, val = open_split(tmp_path / "out", "train"), open_split(tmp_path / "out", "val")
    assert [c["wnid"] for c in train.classes] == WNIDS
    assert train.classes[1]["name"] == "kaggle name 537, other"
    assert np.array_equal(val.labels, labels) and np.array_equal(_colour_truth(val), labels)
    assert np.array_equal(_colour_truth(train), train.labels)


def test_cifar10_pickles(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
             "truck"]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [n.encode() for n in names]}, f)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        images = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
        labels = rng.integers(0, 10, 4).tolist()
        rows = images.transpose(0, 3, 1, 2).reshape(4, 3072)  # R plane, G plane, B plane
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": rows, b"labels": labels, b"batch_label": b"x"}, f)
        batches[name] = (images, labels)
    prepare(tmp_path, tmp_path / "out", size=32, workers=1)
    train, test = open_split(tmp_path / "out", "train"), open_split(tmp_path / "out", "test")
    assert [c["name"] for c in train.classes] == names and len(train) == 20
    want = np.concatenate([batches[f"data_batch_{i}"][0] for i in range(1, 6)])
    assert np.array_equal(train.read(range(20)), want)  # 32 -> 32: the pixels unchanged
    assert np.array_equal(test.labels, batches["test_batch"][1])


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 8, array.ndim) + struct.pack(f">{array.ndim}I",
                                                                 *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_idx_names_and_limit(tmp_path):
    folder = tmp_path / "digits"
    folder.mkdir()
    rng = np.random.default_rng(0)
    labels = np.array([3, 1, 3, 0, 1, 3, 2, 0, 3, 1, 2, 2])
    _write_idx(folder / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (12, 28, 28)))
    _write_idx(folder / "train-labels-idx1-ubyte.gz", labels)
    prepare(folder, tmp_path / "a", size=16, workers=1, limit=8)
    store = open_split(tmp_path / "a", "train")
    assert [c["name"] for c in store.classes] == [str(d) for d in range(10)]
    keep = limit_per_class(labels, 8, 10)  # quotas 1,1,1,1,1,1,1,1,0,0: first of each class
    assert list(keep) == [0, 1, 3, 6]
    assert np.array_equal(store.labels, labels[keep])
    assert cli_main(["prepare", str(folder), str(tmp_path / "b"), "--size", "16",
                     "--workers", "1", "--names", "w,x,y,z"]) == 0
    assert [c["name"] for c in open_split(tmp_path / "b", "train").classes] == list("wxyz")
    with pytest.raises(UserError, match="--names: 2 names for 4 classes .*; give 4 "
                                        "comma-separated names, for labels 0 to 3 in order"):
        prepare(folder, tmp_path / "c", size=16, workers=1, names="w,x")


def test_real_fashion_mnist(tmp_path, fashion_mnist_dir):
    summary = prepare(fashion_mnist_dir, tmp_path / "out", size=32, limit=100, workers=1)
    assert summary["splits"]["train"]["count"] == summary["splits"]["test"]["count"] == 100
    train = open_split(tmp_path / "out", "train")
    assert [c["name"] for c in train.classes] == list(FASHION_MNIST_NAMES)
    assert np.array_equal(np.bincount(train.labels, minlength=10), np.full(10, 10))
    raw = read_idx(fashion_mnist_dir / "train-images-idx3-ubyte.gz")
    labels = read_idx(fashion_mnist_dir / "train-labels-idx1-ubyte.gz").astype(np.int64)
    keep = np.concatenate([np.flatnonzero(labels == c)[:10] for c in range(10)])
    keep.sort()
    assert np.array_equal(train.labels, labels[keep])
    for row in (0, 57, 99):
        grey = reference_resize_crop(np.repeat(raw[keep[row]][..., None], 3, -1), 32)
        assert np.abs(train.read([row])[0].astype(int) - grey.astype(int)).max() <= 1
    _check_stats(train)


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


@pytest.mark.parametrize("format", ["raw", "jpeg"])
def test_interrupt_and_rerun_equal_one_run(tmp_path, format):
    src = tmp_path / "src"
    _image_folder(src, ["a", "b"], splits=("train", "val"))
    kwargs = {"size": 24, "chunk": 4, "format": format}
    prepare(src, tmp_path / "once", workers=2, **kwargs)  # a pool of 2 processes
    with pytest.raises(KeyboardInterrupt):
        prepare(src, tmp_path / "twice", workers=1, _stop_after=2, **kwargs)
    assert (tmp_path / "twice" / "train" / PROGRESS).exists()
    with pytest.raises(UserError, match="half-written"):
        open_split(tmp_path / "twice", "train")
    with pytest.raises(UserError, match="different arguments"):
        prepare(src, tmp_path / "twice", workers=1, size=24, chunk=5)
    with pytest.raises(KeyboardInterrupt):  # interrupted again, in the second split
        prepare(src, tmp_path / "twice", workers=1, _stop_after=5, **kwargs)
    prepare(src, tmp_path / "twice", workers=1, **kwargs)
    assert _tree_bytes(tmp_path / "once") == _tree_bytes(tmp_path / "twice")
    with pytest.raises(UserError, match="other arguments"):
        prepare(src, tmp_path / "twice", workers=1, size=16)


def test_killed_process_resumes_identically(tmp_path):
    folder = tmp_path / "fashion"
    folder.mkdir()
    rng = np.random.default_rng(1)
    _write_idx(folder / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (3000, 28, 28)))
    _write_idx(folder / "train-labels-idx1-ubyte.gz", rng.integers(0, 10, 3000))
    # the killed prepare never finishes by itself: its split's last step (finish) waits for
    # the kill. It had 0.8 s left once its first chunk was recorded, which a loaded machine
    # could spend before the test looked (a 3 s stop of the test process failed it).
    code = ("import sys, time; from alexnet.data import store; "
            "from alexnet.data.prepare import prepare; "
            "store.SplitWriter.finish = lambda *args, **kwargs: time.sleep(600); "
            "prepare(sys.argv[1], sys.argv[2], size=48, workers=2, chunk=25)")
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", code, str(folder), str(out)], env=env,
                            stderr=subprocess.DEVNULL)
    progress = out / "train" / PROGRESS
    deadline = time.time() + 60
    while not progress.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)  # at least one chunk recorded, most of them not
    proc.wait()
    assert progress.exists(), "prepare finished before it could be killed"
    with pytest.raises(UserError, match="half-written"):
        open_split(out, "train")
    prepare(folder, out, size=48, workers=1, chunk=25)
    prepare(folder, tmp_path / "once", size=48, workers=1, chunk=25)
    assert _tree_bytes(out) == _tree_bytes(tmp_path / "once")
    assert json.loads((out / "train" / "header.json").read_text())["count"] == 3000


def test_bad_sources_and_options(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no known data layout.*ILSVRC-2012.*CIFAR-10"):
        prepare(tmp_path / "empty", tmp_path / "out")
    with pytest.raises(UserError, match="no such file"):
        prepare(tmp_path / "missing", tmp_path / "out")
    src = tmp_path / "src"
    images_.write_files(src / "cat", {"big.png": images_.png(images_.photo(120, 100, 0)),
                                      "ok.png": images_.png(images_.photo(40, 30, 0))})
    prepare(src, tmp_path / "out", size=16, workers=1, max_pixels=5000)
    store = open_split(tmp_path / "out", "train")
    assert len(store) == 1
    assert "decompression-bomb" in (store.path / "skipped.tsv").read_text()
    capsys.readouterr()
    assert cli_main(["prepare", str(tmp_path / "empty"), str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("alexnet prepare: error:")
    with pytest.raises(UserError, match="--splits"):
        prepare(src, tmp_path / "out", splits="training")


def test_an_empty_or_bad_option_is_named_with_its_value(tmp_path):
    src = tmp_path / "src"
    images_.write_files(src / "cat", {"ok.png": images_.png(images_.photo(40, 30, 0))})
    for splits in ("", ",", []):
        with pytest.raises(UserError, match=r"^--splits is empty: name some of train, val, "
                                            r"test \(comma-separated\)"):
            prepare(src, tmp_path / "out", splits=splits, workers=1)
    for value in (0, -5):
        with pytest.raises(UserError, match=rf"^--max-pixels {value}: must be a positive "
                                            "number of pixels"):
            prepare(src, tmp_path / "out", max_pixels=value, workers=1)
    assert not (tmp_path / "out").exists()
