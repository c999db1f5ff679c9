"""The store format: round trips, exact statistics, and refusal of bad or half-written stores."""

from __future__ import annotations

import errno
import json
import os
import pickle
import threading
import time

import numpy as np
import pytest

from alexnet.data import Store, open_split, write_store
from alexnet.data.stats import compute_stats, pixel_sums
from alexnet.data.store import (
    HEADER,
    LABELS,
    MEAN_IMAGE,
    RAW,
    SKIPPED,
    SplitWriter,
    read_skipped,
    tsv_field,
)
from alexnet.errors import UserError

CLASSES = [{"wnid": "n01", "name": "one"}, {"wnid": "n02", "name": "two"}, "three"]


def _images(n: int = 40, size: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    # Correlated channels, so the covariance is not diagonal.
    images[..., 1] = (images[..., 0] // 2 + images[..., 1] // 2).astype(np.uint8)
    return images, rng.integers(0, 3, n)


def _numpy_stats(images: np.ndarray) -> dict[str, np.ndarray]:
    pixels = images.reshape(-1, 3).astype(np.float64)
    return {"mean_image": images.astype(np.float64).mean(axis=0),
            "channel_mean": pixels.mean(axis=0),
            "rgb_cov": np.cov(pixels, rowvar=False, bias=True)}


@pytest.mark.parametrize("format", ["raw", "jpeg"])
def test_round_trip(tmp_path, format):
    images, labels = _images()
    store = write_store(tmp_path / "train", images, labels, CLASSES, format=format, chunk=7)
    assert len(store) == 40 and store.image_size == 16 and store.split == "train"
    assert store.labels.dtype == np.int64 and np.array_equal(store.labels, labels)
    assert store.classes[2] == {"wnid": "three", "name": "three"}
    assert store.classes[0]["name"] == "one"
    index = [5, 0, 39, 5, -1]
    batch = store.read(index)
    assert batch.dtype == np.uint8 and batch.shape == (5, 16, 16, 3)
    if format == "raw":
        assert np.array_equal(batch, images[index])
    else:  # random noise is JPEG's worst case: the error is bounded, not zero
        err = np.abs(batch.astype(int) - images[index].astype(int))
        assert 0 < err.mean() < 40
    image, label = store[3]
    assert np.array_equal(image, store.read([3])[0])
    assert label == labels[3]
    assert open_split(tmp_path, "train").meta["count"] == 40
    clone = pickle.loads(pickle.dumps(store))
    assert np.array_equal(clone.read([1, 2]), store.read([1, 2]))
    with pytest.raises(IndexError):
        store.read([40])
    buffer = np.full((5, 16, 16, 3), 7, np.uint8)  # a loader's pinned buffer, say
    assert store.read(index, out=buffer) is buffer and np.array_equal(buffer, batch)
    with pytest.raises(ValueError, match="out: need uint8"):
        store.read(index, out=np.empty((4, 16, 16, 3), np.uint8))


def test_statistics_equal_numpy(tmp_path):
    images, labels = _images(n=50, size=12, seed=1)
    store = write_store(tmp_path / "train", images, labels, CLASSES, chunk=9)
    want = _numpy_stats(images)
    stats = store.stats
    assert stats["mean_image"].dtype == np.float32 and stats["mean_image"].shape == (12, 12, 3)
    np.testing.assert_allclose(stats["mean_image"], want["mean_image"], rtol=1e-6)
    np.testing.assert_allclose(stats["channel_mean"], want["channel_mean"], rtol=1e-12)
    np.testing.assert_allclose(stats["rgb_cov"], want["rgb_cov"], rtol=1e-10)
    assert abs(want["rgb_cov"][0, 1]) > 100  # the test data really are correlated
    vec, val = stats["eigvec"], stats["eigval"]
    np.testing.assert_allclose(vec.T @ vec, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(stats["rgb_cov"] @ vec, vec * val, atol=1e-8)
    assert val[0] >= val[1] >= val[2] > 0
    np.testing.assert_allclose(np.sort(val)[::-1], np.linalg.eigvalsh(want["rgb_cov"])[::-1],
                               rtol=1e-10)


def test_sums_do_not_depend_on_chunking():
    images, _ = _images(n=30, size=8, seed=2)
    whole = pixel_sums(images)
    parts = [pixel_sums(images[i:i + 4]) for i in range(0, 30, 4)]
    for key in ("image_sum", "channel_sum", "outer_sum"):
        assert np.array_equal(whole[key], sum(p[key] for p in parts))
    a, b = compute_stats(images, batch=3), compute_stats(images, batch=30)
    for key in ("mean_image", "rgb_cov", "eigval", "eigvec"):
        assert np.array_equal(a[key], b[key])


def test_sums_are_exact_at_their_limits():
    # 300 white images overflow a uint16 per-pixel sum (257 x 255 is its limit) and give the
    # largest products; the reference is plain Python integers
    white = np.full((300, 3, 2, 3), 255, np.uint8)
    rng = np.random.default_rng(4)
    mixed = rng.integers(0, 256, (270, 5, 7, 3), dtype=np.uint8)
    for images in (white, mixed, white[:0]):
        sums = pixel_sums(images)
        pixels = images.reshape(-1, 3).tolist()
        outer = [[sum(p[i] * p[j] for p in pixels) for j in range(3)] for i in range(3)]
        per_pixel = [[[sum(int(v) for v in images[:, y, x, c]) for c in range(3)]
                      for x in range(images.shape[2])] for y in range(images.shape[1])]
        assert sums["outer_sum"].dtype == np.int64 and sums["outer_sum"].tolist() == outer
        assert sums["image_sum"].dtype == np.int64 and sums["image_sum"].tolist() == per_pixel
        assert sums["channel_sum"].tolist() == [sum(p[c] for p in pixels) for c in range(3)]
        assert int(sums["count"]) == len(images)


def test_given_stats_are_recorded(tmp_path):
    images, labels = _images(n=10, size=8)
    train_stats = compute_stats(_images(n=20, size=8, seed=5)[0])
    store = write_store(tmp_path / "val", images, labels, CLASSES, stats=train_stats)
    np.testing.assert_allclose(store.stats["rgb_cov"], train_stats["rgb_cov"])
    np.testing.assert_allclose(store.stats["mean_image"], train_stats["mean_image"], rtol=1e-6)
    own = np.asarray(store.meta["own_stats"]["rgb_cov"])
    np.testing.assert_allclose(own, _numpy_stats(images)["rgb_cov"], rtol=1e-10)


def _edit_header(path, **changes):
    meta = json.loads((path / HEADER).read_text())
    meta.update(changes)
    (path / HEADER).write_text(json.dumps(meta))


def test_refuses_bad_stores(tmp_path):
    images, labels = _images(n=8, size=8)
    path = tmp_path / "train"
    write_store(path, images, labels, CLASSES)
    _edit_header(path, version=99)
    with pytest.raises(UserError, match="version 99.*alexnet prepare"):
        Store(path)
    _edit_header(path, version=1, magic="something-else")
    with pytest.raises(UserError, match="foreign"):
        Store(path)
    _edit_header(path, magic="alexnet-store", complete=False)
    with pytest.raises(UserError, match="half-written"):
        Store(path)
    _edit_header(path, complete=True)
    Store(path)
    with open(path / RAW, "r+b") as f:
        f.truncate(100)
    with pytest.raises(UserError, match="pixel file"):
        Store(path)
    (path / HEADER).write_bytes(b"\x89PNG garbage")
    with pytest.raises(UserError, match="unreadable store header"):
        Store(path)
    with pytest.raises(UserError, match="no 'val' split"):
        open_split(tmp_path, "val")
    with pytest.raises(UserError, match="not an alexnet store"):
        Store(tmp_path)
    with pytest.raises(UserError) as info:
        Store(path)
    assert "\n" not in str(info.value)


def test_half_written_store_is_refused_then_resumed(tmp_path):
    images, labels = _images(n=24, size=8)
    path = tmp_path / "train"
    writer = SplitWriter(path, split="train", image_size=8, classes=CLASSES, fingerprint="a")
    writer.add_chunk(images[:10], labels[:10])
    with pytest.raises(UserError, match="half-written"):
        Store(path)
    with pytest.raises(UserError, match="another process is writing"):
        SplitWriter(path, split="train", image_size=8, classes=CLASSES, fingerprint="a")
    with open(path / RAW, "ab") as f:  # a kill after the write, before the progress record
        f.write(images[10:13].tobytes())
    writer.close()  # as a kill would: the lock goes with the process
    with pytest.raises(UserError, match="different arguments"):
        SplitWriter(path, split="train", image_size=8, classes=CLASSES, fingerprint="b")
    writer = SplitWriter(path, split="train", image_size=8, classes=CLASSES, fingerprint="a")
    assert writer.chunks_done == 1 and writer.count == 10
    writer.close()
    recorded = (path / RAW).read_bytes()
    (path / RAW).write_bytes(recorded[:-1])  # lost data the record vouches for: start over
    with pytest.raises(UserError, match="shorter than its progress record"):
        SplitWriter(path, split="train", image_size=8, classes=CLASSES, fingerprint="a")
    (path / RAW).write_bytes(recorded)
    writer = SplitWriter(path, split="train", image_size=8, classes=CLASSES, fingerprint="a")
    writer.add_chunk(images[10:], labels[10:])
    writer.finish()
    resumed = (path / RAW).read_bytes(), (path / HEADER).read_text()
    whole = write_store(tmp_path / "whole" / "train", images, labels, CLASSES, chunk=10)
    assert resumed[0] == (whole.path / RAW).read_bytes()
    assert json.loads(resumed[1])["own_stats"] == whole.meta["own_stats"]


def test_a_background_write_back_error_is_not_lost(tmp_path, monkeypatch):
    """The kernel reports a write-back error to one fsync only: when the background flusher
    meets it, the writer's next checkpoint raises it and records nothing more."""
    from alexnet.data import store as store_module

    monkeypatch.setattr(store_module, "FLUSH_SECONDS", 0.01)
    images, labels = _images(n=30, size=8)
    path = tmp_path / "train"
    writer = SplitWriter(path, split="train", image_size=8, classes=CLASSES, fingerprint="a",
                         checkpoint_seconds=3600)
    writer.add_chunk(images[:10], labels[:10])  # the first chunk is recorded at once
    real_fsync = os.fsync

    def failing_in_background(fd: int) -> None:
        if threading.current_thread().name == "alexnet-store-flusher":
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", failing_in_background)
    writer.add_chunk(images[10:20], labels[10:20])
    deadline = time.time() + 10
    while writer._flusher.error is None and time.time() < deadline:
        time.sleep(0.01)
    with pytest.raises(OSError, match=os.strerror(errno.EIO)):
        writer.checkpoint()
    writer.close()
    monkeypatch.setattr(os, "fsync", real_fsync)
    writer = SplitWriter(path, split="train", image_size=8, classes=CLASSES, fingerprint="a")
    assert writer.chunks_done == 1 and writer.count == 10  # the record stayed at chunk 1
    writer.add_chunk(images[10:], labels[10:])
    writer.finish()
    whole = write_store(tmp_path / "whole" / "train", images, labels, CLASSES, chunk=10)
    assert (path / RAW).read_bytes() == (whole.path / RAW).read_bytes()


def _one_line_refusal(path, *fragments: str) -> None:
    """Opening split `path` is a one-line UserError holding `fragments` and the advice."""
    with pytest.raises(UserError) as info:
        Store(path)
    message = str(info.value)
    assert "\n" not in message and "alexnet prepare" in message, message
    for fragment in fragments:
        assert fragment in message, message


def test_a_npy_that_is_no_plain_array_of_its_kind_is_refused(tmp_path):
    """An .npz archive under the .npy name (np.load gives an NpzFile), float labels, an empty
    file, a pickled object array: each the store's one-line error naming the file."""
    images, labels = _images(n=8, size=8)
    path = tmp_path / "train"
    write_store(path, images, labels, CLASSES)
    good = (path / LABELS).read_bytes()
    np.savez(path / "archive", labels=labels)
    (path / "archive.npz").rename(path / LABELS)
    _one_line_refusal(path, str(path / LABELS), ".npz archive")
    np.save(path / LABELS, labels.astype(np.float64))
    _one_line_refusal(path, str(path / LABELS), "float64 values")
    (path / LABELS).write_bytes(b"")
    _one_line_refusal(path, str(path / LABELS), "unreadable")
    np.save(path / LABELS, np.array([{"a": 1}] * 8, dtype=object), allow_pickle=True)
    _one_line_refusal(path, str(path / LABELS), "unreadable")
    (path / LABELS).write_bytes(good)
    np.save(path / MEAN_IMAGE, np.zeros((8, 8, 3), np.int64))
    _one_line_refusal(path, str(path / MEAN_IMAGE), "floating-point")


def test_labels_outside_the_classes_are_refused(tmp_path):
    images, labels = _images(n=8, size=8)
    path = tmp_path / "train"
    write_store(path, images, labels, CLASSES)
    for bad in (-1, len(CLASSES), 99):
        changed = labels.copy()
        changed[3] = bad
        np.save(path / LABELS, changed)
        _one_line_refusal(path, str(path / LABELS), "3 classes (0 to 2)")
    np.save(path / LABELS, labels.astype(np.uint8))  # any integer type that fits is read
    assert Store(path).labels.dtype == np.int64


def test_a_missing_store_or_a_file_says_so_in_every_way_in(tmp_path):
    """open_split and auto_split (evaluate, figures, ablate, relu-vs-tanh, train) say what
    is wrong with the store itself before looking for a split in it."""
    from alexnet.data.splits import auto_split

    missing = tmp_path / "nowhere"
    for call in (lambda: open_split(missing, "val"), lambda: auto_split(missing)):
        with pytest.raises(UserError, match=rf"{missing}: no such store; make one with "
                                            rf"`alexnet prepare SOURCE {missing}`"):
            call()
    images, labels = _images(n=8, size=8)
    write_store(tmp_path / "store" / "train", images, labels, CLASSES)
    header = tmp_path / "store" / "train" / HEADER
    for call in (lambda: open_split(header, "train"), lambda: auto_split(header)):
        with pytest.raises(UserError, match=rf"a file, not a store folder; give the store "
                                            rf"that holds it, {tmp_path / 'store'}"):
            call()
    with pytest.raises(UserError, match="a file, not a store folder"):
        open_split(tmp_path / "store" / "train" / RAW, "train")
    split = tmp_path / "store" / "train"  # a split folder: figures looked for splits in it
    for call in (lambda: open_split(split, "train"), lambda: auto_split(split)):
        with pytest.raises(UserError, match=rf"{split} is itself a split folder: give the "
                                            rf"store above it, {tmp_path / 'store'}"):
            call()
    assert auto_split(tmp_path / "store") is None  # a store with no held-out split


def test_a_jpeg_that_does_not_decode_is_named_by_its_store_and_index(tmp_path):
    images, labels = _images(n=6, size=16)
    store = write_store(tmp_path / "store" / "val", images, labels, CLASSES, format="jpeg")
    offsets = np.load(store.path / "offsets.npy")
    with open(store.path / "images.jpeg", "r+b") as f:  # same size: opening cannot tell
        f.seek(int(offsets[4]))
        f.write(bytes(int(offsets[5] - offsets[4])))
    store = Store(store.path)
    store.read([0, 1])
    with pytest.raises(UserError) as info:
        store.read([2, 4])
    message = str(info.value)
    assert message.startswith(f"{store.path}: image 4 of the store's 'val' split does not "
                              "decode") and "\n" not in message
    assert f"delete {store.path} and rerun `alexnet prepare SOURCE {store.path.parent}`" \
        in message


AWKWARD = ["plain.jpg", "tab\there", "new\nline\r", "back\\slash \\x41 \\n \\\t",
           os.fsdecode(b"not utf-8 \xff\xc3"), "caf\u00e9 cafe\u0301", "\x1b[31mred\x7f",
           "lone \ud800 surrogate", ""]


def test_skip_report_rows_are_one_line_of_two_fields_and_read_back(tmp_path):
    """Names with tabs, newlines, backslashes, control characters or bytes that are not
    UTF-8, skipped or unused: skipped.tsv is valid UTF-8, one line of two fields per row,
    and `read_skipped` gives every name and reason back, the original bytes included."""
    images, labels = _images(4, size=8)
    skipped = [(f"{name}/skipped", f"reason {name}") for name in AWKWARD]
    unused = [(f"{name}/unused", name) for name in AWKWARD]
    path = tmp_path / "train"
    writer = SplitWriter(path, split="train", image_size=8, classes=CLASSES, fingerprint="a")
    writer.add_chunk(images[:2], labels[:2], skipped=skipped[:4])
    writer.close()  # interrupted: the rows recorded so far come back from progress.npz
    writer = SplitWriter(path, split="train", image_size=8, classes=CLASSES, fingerprint="a")
    writer.add_chunk(images[2:], labels[2:], skipped=skipped[4:])
    meta = writer.finish(unused=unused)
    lines = (path / SKIPPED).read_bytes().decode("utf-8").split("\n")
    assert lines[0] == "path (escaped)\treason (escaped)" and lines[-1] == ""
    assert len(lines) == 2 + meta["skipped"] == 2 + 2 * len(AWKWARD)
    assert all(line.count("\t") == 1 for line in lines[:-1])
    assert lines[2] == "tab\\there/skipped\treason tab\\there"
    assert lines[5] == "not utf-8 \\xff\\xc3/skipped\treason not utf-8 \\xff\\xc3"
    assert read_skipped(path) == [*skipped, *unused]
    assert os.fsencode(read_skipped(path)[4][0]) == b"not utf-8 \xff\xc3/skipped"


def test_the_escapes_are_printf_s():
    """The documented escapes: what `printf '%b'` turns back into the name's bytes (a lone
    surrogate other than a byte's, which no file name decodes to, aside)."""
    import subprocess

    for name in [n for n in AWKWARD if "\ud800" not in n]:
        out = subprocess.run(["printf", "%b", tsv_field(name)], capture_output=True,
                             check=True).stdout
        assert out == os.fsencode(name), name


def test_a_skip_report_written_before_the_escapes_is_read(tmp_path):
    """Old skipped.tsv files (fields as they were): a name cut by a newline is joined
    again, and the reason follows the last tab."""
    (tmp_path / SKIPPED).write_text("path\treason\n/a/b.jpg\tempty file\n/a/new\nline.txt\t"
                                    "not an image\n/a/t\tab.txt\tnot an image\n/a/c\\d\tx\n")
    assert read_skipped(tmp_path) == [("/a/b.jpg", "empty file"),
                                      ("/a/new\nline.txt", "not an image"),
                                      ("/a/t\tab.txt", "not an image"), ("/a/c\\d", "x")]
    (tmp_path / SKIPPED).write_text("/a/b.jpg\tempty file\n")
    with pytest.raises(UserError, match="not a skip report"):
        read_skipped(tmp_path)


def _traced_peak(work) -> int:
    """Peak memory traced by tracemalloc (Python objects and NumPy arrays) while `work` runs."""
    import tracemalloc

    tracemalloc.start()
    try:
        work()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("format", ["raw", "jpeg"])
def test_opening_a_split_holds_its_labels_not_its_pixels(tmp_path, format):
    """ImageNet's training split is 252 GB raw (1.28M x 256 x 256 x 3), 30 GB as JPEG: opening
    it reads the header, the labels and the offsets (8 bytes an image each, 10 MB), and maps
    the pixels (on the first read). At 4N images the peak grows by less than a tenth of the
    pixel bytes added (16 x 16 images: 768 bytes each)."""
    n, size = 64, 16
    images, labels = _images(4 * n, size)
    for count in (n, 4 * n):
        write_store(tmp_path / str(count) / "train", images[:count], labels[:count], CLASSES,
                    format=format)
    opened = [open_split(tmp_path / str(n), "train")]  # imports and caches, outside the count
    peaks = [_traced_peak(lambda c=count: opened.append(open_split(tmp_path / str(c), "train")))
             for count in (n, 4 * n)]
    assert peaks[1] - peaks[0] < 3 * n * (size * size * 3) / 10, peaks
    back = opened[-1].read(np.arange(4 * n))
    assert back.shape == images.shape
    if format == "raw":
        np.testing.assert_array_equal(back, images)


def test_a_writer_holds_a_chunk_not_the_split(tmp_path):
    """prepare's writer appends chunks to part files and keeps exact sums of fixed size (the
    mean image's and the 3x3 RGB sums): the peak while writing 4N images stays within 64 bytes
    an image added (the labels read back at the end) of the peak for N; the pixels (768 bytes
    an image here) never accumulate."""
    n, size, chunk = 64, 16, 8
    images, labels = _images(4 * n, size)

    def write(count: int) -> None:
        writer = SplitWriter(tmp_path / str(count), split="train", image_size=size,
                             classes=CLASSES, checkpoint_seconds=float("inf"))
        try:
            for start in range(0, count, chunk):
                writer.add_chunk(images[start:start + chunk], labels[start:start + chunk])
            writer.finish()
        finally:
            writer.close()

    write(chunk)  # imports and caches, outside the count
    few, many = _traced_peak(lambda: write(n)), _traced_peak(lambda: write(4 * n))
    assert many - few < 3 * n * 64, (few, many)
    np.testing.assert_array_equal(Store(tmp_path / str(4 * n)).read(np.arange(4 * n)), images)
