"""Mutation audit of the store's read side (alexnet/data/store.py: opening and reading a split,
its checks, split_status, the skip report's escapes) and of the one-pass Triton augmentation
kernel (alexnet/data/augment_triton.py). Each test catches a wrong change that the older
tests let through."""

from __future__ import annotations

import io
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from _interpret import HAS_TRITON, run_interpreted
from PIL import Image

from alexnet.data import Store, open_split, write_store
from alexnet.data.stats import compute_stats
from alexnet.data.store import (
    HEADER,
    LABELS,
    OFFSETS,
    PROGRESS,
    RAW,
    SKIPPED,
    SplitWriter,
    decode_jpeg,
    read_skipped,
    split_status,
    tsv_field,
    tsv_unfield,
)
from alexnet.errors import UserError

CLASSES = ["a", "b", "c"]


def _images(n: int = 6, size: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8), rng.integers(0, 3, n)


def _store(tmp_path: Path, fmt: str = "raw", n: int = 6, size: int = 8) -> Store:
    images, labels = _images(n, size)
    return write_store(tmp_path / "train", images, labels, CLASSES, format=fmt)


def _edit_header(path: Path, **changes: object) -> None:
    meta = json.loads((path / HEADER).read_text())
    meta.update(changes)
    (path / HEADER).write_text(json.dumps(meta))


def _refused(path: Path, fragment: str) -> None:
    with pytest.raises(UserError) as info:
        Store(path)
    assert fragment in str(info.value), str(info.value)


def _jpeg(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


# ----------------------------------------------------------------------------- opening a split


def test_a_missing_split_folder_and_a_half_written_one_without_header_say_so(tmp_path) -> None:
    _refused(tmp_path / "nowhere", "no such store split folder")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / PROGRESS).write_bytes(b"")
    _refused(tmp_path / "half", "half-written store (prepare was interrupted)")


def test_an_unknown_format_a_non_json_header_and_a_json_list_are_refused(tmp_path) -> None:
    path = _store(tmp_path).path
    _edit_header(path, format="bmp")
    _refused(path, "unknown store format 'bmp'")
    (path / HEADER).write_text("{not json")
    _refused(path, "unreadable store header")
    (path / HEADER).write_text("[1, 2]")
    _refused(path, "not an alexnet store header")


def test_a_pixel_file_longer_than_the_header_says_is_refused(tmp_path) -> None:
    path = _store(tmp_path).path
    with open(path / RAW, "ab") as f:
        f.write(b"\0")
    _refused(path, f"pixel file holds {6 * 8 * 8 * 3 + 1} bytes, header says {6 * 8 * 8 * 3}")


def test_an_empty_split_opens_reads_nothing_and_needs_its_pixel_file(tmp_path) -> None:
    """A split of no images (every file skipped, the training statistics given) opens, reads
    an empty batch, and is still refused when its (empty) pixel file is missing."""
    stats = compute_stats(_images(4)[0])
    store = write_store(tmp_path / "val", np.zeros((0, 8, 8, 3), np.uint8), [], CLASSES,
                        stats=stats)
    assert len(store) == 0
    batch = store.read([])
    assert batch.shape == (0, 8, 8, 3) and batch.dtype == np.uint8
    (store.path / RAW).unlink()
    _refused(store.path, f"{store.path / RAW}: missing")


def test_missing_labels_say_missing_and_labels_of_another_length_are_refused(tmp_path) -> None:
    path = _store(tmp_path).path
    labels = np.load(path / LABELS)
    (path / LABELS).unlink()
    _refused(path, f"{path / LABELS}: missing")
    np.save(path / LABELS, np.concatenate([labels, [0]]))
    _refused(path, "shape (7,), header says (6,)")


# ----------------------------------------------------------------------------- reading


def test_a_store_read_from_pickles_without_its_pixels(tmp_path) -> None:
    """The memory map is reopened by the receiving process: after a read, the pickle still
    holds no pixels (64 images of 32 x 32: 196,608 bytes)."""
    images, labels = _images(64, 32)
    store = write_store(tmp_path / "train", images, labels, CLASSES)
    store.read([0])
    data = pickle.dumps(store)
    assert len(data) < images.nbytes // 4
    np.testing.assert_array_equal(pickle.loads(data).read([5, 63]), images[[5, 63]])


def test_the_lowest_negative_index_is_the_first_image_and_one_lower_is_refused(tmp_path) -> None:
    images, labels = _images(6)
    store = write_store(tmp_path / "train", images, labels, CLASSES)
    np.testing.assert_array_equal(store.read([-6, -1]), images[[0, 5]])
    with pytest.raises(IndexError):
        store.read([-7])


def test_an_out_buffer_of_another_dtype_is_refused(tmp_path) -> None:
    store = _store(tmp_path)
    with pytest.raises(ValueError, match="out: need uint8"):
        store.read([0, 1], out=np.empty((2, 8, 8, 3), np.float32))


def test_a_jpeg_of_another_size_in_a_store_is_a_damaged_image(tmp_path) -> None:
    """A valid JPEG one row high (which would broadcast into the row) in the place of image 3
    (padded with zeros to its length; a JPEG ends at its end marker) is a damaged image."""
    images, labels = _images(6, 16)
    store = write_store(tmp_path / "val", images, labels, CLASSES, format="jpeg")
    offsets = np.load(store.path / OFFSETS)
    stripe = _jpeg(np.full((1, 16, 3), 128, np.uint8))
    assert len(stripe) <= offsets[4] - offsets[3]
    with open(store.path / "images.jpeg", "r+b") as f:
        f.seek(int(offsets[3]))
        f.write(stripe.ljust(int(offsets[4] - offsets[3]), b"\0"))
    store = Store(store.path)
    with pytest.raises(UserError, match=r"image 3 of the store's 'val' split does not decode "
                                        r"\(decodes to \(1, 16, 3\), expected \(16, 16, 3\)\)"):
        store.read([3])


def test_a_jpeg_store_past_2_gib_reads_its_images_at_64_bit_offsets(tmp_path) -> None:
    """offsets.npy is int64: image 1 of a (sparse) 2 GiB + 8 bytes store starts past the
    int32 range, and opens and reads as the JPEG written there."""
    images, labels = _images(2, 16)
    store = write_store(tmp_path / "val", images, labels, CLASSES, format="jpeg")
    first, second = (_jpeg(image) for image in images)
    start = 2**31 + 8
    with open(store.path / "images.jpeg", "wb") as f:
        f.write(first)
        f.seek(start)
        f.write(second)
    np.save(store.path / OFFSETS, np.array([0, start, start + len(second)], np.int64))
    store = Store(store.path)
    assert bytes(store.encoded([1])[0]) == second  # image 0, 2 GiB long, is not read: 2 GiB
    np.testing.assert_array_equal(store.read([1])[0], np.asarray(Image.open(io.BytesIO(second))))


def test_a_grey_jpeg_decodes_to_three_equal_channels() -> None:
    grey = np.arange(64, dtype=np.uint8).reshape(8, 8) * 3
    buffer = io.BytesIO()
    Image.fromarray(grey, "L").save(buffer, "JPEG", quality=95)
    decoded = decode_jpeg(buffer.getvalue(), 8)
    assert decoded.shape == (8, 8, 3)
    assert np.array_equal(decoded[..., 0], decoded[..., 1])
    assert np.array_equal(decoded[..., 0], decoded[..., 2])
    assert np.abs(decoded[..., 0].astype(int) - grey).max() < 8


def test_encoded_bounds_negative_indices_and_raw_stores(tmp_path) -> None:
    """encoded() takes negative indices as read() does, refuses those out of range, and a raw
    store has no JPEG bytes to give."""
    store = _store(tmp_path / "j", "jpeg")
    data = (store.path / "images.jpeg").read_bytes()
    offsets = np.load(store.path / OFFSETS)
    assert bytes(store.encoded([-1])[0]) == data[offsets[5]:offsets[6]]
    with pytest.raises(IndexError):
        store.encoded([-7])
    with pytest.raises(ValueError, match="holds no JPEG bytes"):
        _store(tmp_path / "r").encoded([0])


def test_a_missing_split_lists_only_the_splits_present(tmp_path) -> None:
    _store(tmp_path)
    (tmp_path / "notes").mkdir()
    with pytest.raises(UserError, match=r"no 'val' split; splits present: train$"):
        open_split(tmp_path, "val")
    with pytest.raises(UserError, match=r"no 'val' split; rerun `alexnet prepare"):
        open_split(tmp_path / "notes", "val")


# ----------------------------------------------------------------------------- split_status


def test_a_complete_split_loses_the_progress_files_a_late_kill_left(tmp_path) -> None:
    path = _store(tmp_path).path
    for name in (PROGRESS, "labels.part"):
        (path / name).write_bytes(b"")
    meta, why = split_status(path, None)
    assert why is None and meta is not None and meta["count"] == 6
    assert not (path / PROGRESS).exists() and not (path / "labels.part").exists()


def test_folders_not_written_as_a_split_are_refused_and_a_writers_are_kept(tmp_path) -> None:
    """Only a folder holding the lock file and store files (or their temporary files) is
    ours; one with just the lock, or a progress record, is a split to write or resume."""
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / HEADER).write_text("garbage")
    with pytest.raises(UserError, match="not an alexnet store header"):
        split_status(foreign, None)
    (foreign / HEADER).unlink()
    np.save(foreign / LABELS, np.zeros(2, np.int64))  # a store file, but no lock: not ours
    with pytest.raises(UserError, match="folder exists and is not a store"):
        split_status(foreign, None)
    ours = tmp_path / "ours"
    ours.mkdir()
    (ours / ".lock").write_bytes(b"")
    assert split_status(ours, None) == (None, None)
    (ours / PROGRESS).write_bytes(b"")
    (ours / "labels.part").write_bytes(b"")
    assert split_status(ours, None) == (None, None)
    (ours / PROGRESS).unlink()
    (ours / f".tmp-{HEADER}.123").write_bytes(b"{")
    assert split_status(ours, None) == (None, f"its {HEADER} is missing")


def test_the_damage_of_a_complete_split_is_said_without_the_advice_to_rerun(tmp_path) -> None:
    path = _store(tmp_path).path
    (path / SKIPPED).unlink()
    assert split_status(path, None) == (None, f"{path / SKIPPED}: missing")
    path = _store(tmp_path / "b").path
    os.truncate(path / RAW, 100)
    assert split_status(path, None) == (
        None, f"{path}: pixel file holds 100 bytes, header says {6 * 8 * 8 * 3}")


def test_fingerprints_are_compared_in_json_form_less_the_ignored_keys(tmp_path) -> None:
    images, labels = _images()
    path = tmp_path / "train"
    writer = SplitWriter(path, split="train", image_size=8, classes=CLASSES,
                         fingerprint={"size": (8, 8), "chunk": 4})
    writer.add_chunk(images, labels)
    writer.finish()
    meta, why = split_status(path, {"size": (8, 8), "chunk": 2}, ignore=("chunk",))
    assert why is None and meta is not None and meta["fingerprint"]["size"] == [8, 8]
    with pytest.raises(UserError, match="prepared with other arguments"):
        split_status(path, {"size": (8, 8), "chunk": 2})


def test_own_stats_are_the_splits_float64_mean_and_none_for_an_empty_split(tmp_path) -> None:
    from alexnet.data.store import own_stats

    images, labels = _images(5)
    write_store(tmp_path / "train", images, labels, CLASSES)
    own = own_stats(tmp_path / "train")
    assert own is not None and own["mean_image"].dtype == np.float64
    np.testing.assert_allclose(own["mean_image"], images.astype(np.float64).mean(0),
                               rtol=0, atol=1e-12)
    write_store(tmp_path / "val", np.zeros((0, 8, 8, 3), np.uint8), [], CLASSES,
                stats=compute_stats(images))
    assert own_stats(tmp_path / "val") is None


# ----------------------------------------------------------------------------- skip report


@pytest.mark.parametrize("text, field", [
    ("\r", "\\r"), ("\x01", "\\x01"), ("\x7f", "\\x7f"), (os.fsdecode(b"\x80"), "\\x80"),
    ("\udc41", "\\udc41"), ("\ud800", "\\ud800"), ("a\\b", "a\\\\b")])
def test_each_escape_is_the_documented_one_and_reads_back(text: str, field: str) -> None:
    """tsv_field's rule: \\r as such, other control characters and a name's undecodable bytes
    (\\udc80-\\udcff) as \\xHH, other lone surrogates (a \\udc00-\\udc7f too) as \\uHHHH."""
    assert tsv_field(text) == field
    assert tsv_unfield(field) == text


def test_a_row_of_three_fields_is_named_by_its_line(tmp_path) -> None:
    (tmp_path / SKIPPED).write_text("path (escaped)\treason (escaped)\na\tb\nc\td\te\n")
    with pytest.raises(UserError, match=r"line 3 is not two tab-separated fields"):
        read_skipped(tmp_path)


def test_an_old_skip_report_with_bytes_that_are_not_utf8_is_read(tmp_path) -> None:
    (tmp_path / SKIPPED).write_bytes(b"path\treason\n/a/\xff.jpg\tempty file\n")
    rows = read_skipped(tmp_path)
    assert rows == [(os.fsdecode(b"/a/\xff.jpg"), "empty file")]
    assert os.fsencode(rows[0][0]) == b"/a/\xff.jpg"


# ----------------------------------------------------------------------------- Triton kernel

CHILD = '''
import json
import sys

import numpy as np
import torch

from alexnet.data.augment_triton import patches

rng = np.random.default_rng(3)
images = rng.integers(0, 256, (3, 12, 12, 3), dtype=np.uint8)
mean = rng.uniform(0, 255, (12, 12, 3)).astype(np.float32)
shift = rng.normal(0, 5, (4, 3)).astype(np.float32)


def want(src, top, left, mirror, crop, pad, images=images, mean=mean):
    """The documented formula, pixel by pixel in float32; zeros in the padding."""
    out = np.zeros((len(src), 3, crop + pad, crop + pad), np.float32)
    for k, (b, t, l, m) in enumerate(zip(src, top, left, mirror)):
        for y in range(crop):
            for x in range(crop):
                sx = l + crop - 1 - x if m else l + x
                for c in range(3):
                    v = np.float32(images[b, t + y, sx, c]) - mean[t + y, sx, c]
                    out[k, c, y, x] = v + shift[k, c]
    return out


draws = [2, 0, 1, 2], [0, 4, 1, 3], [4, 0, 2, 1], [1, 0, 1, 1]
draws_tiny = [1, 0], [1, 0], [0, 1], [1, 0]
strided = [torch.tensor([v for pair in zip(t, [99] * 4) for v in pair], dtype=torch.int32)[::2]
           for t in draws]
shift_t = torch.from_numpy(np.ascontiguousarray(shift.T)).T
big = torch.full((5, 3, 10, 10), float("nan"))
got = patches(torch.from_numpy(images), *strided, torch.from_numpy(mean), shift_t, crop=8,
              pad=2, out=big[:4])
whole = patches(torch.from_numpy(images), *(torch.tensor([v]) for v in (1, 0, 0, 1)),
                torch.from_numpy(mean), torch.from_numpy(shift[:1]), crop=12)
tiny = rng.integers(0, 256, (2, 3, 3, 3), dtype=np.uint8)  # (B, 3, S, S) with S = 3: NCHW
tiny_mean = mean[:3, :3]
nchw = patches(torch.from_numpy(tiny), *(torch.tensor(v) for v in draws_tiny),
               torch.from_numpy(tiny_mean), torch.from_numpy(shift[:2]), crop=2)
none = patches(torch.from_numpy(images), *(torch.zeros(0, dtype=torch.int32),) * 4,
               torch.from_numpy(mean), torch.zeros(0, 3), crop=8, pad=3)
result = {"strided": bool(np.array_equal(got.numpy(), want(*draws, 8, 2))),
          "after_out": bool(torch.isnan(big[4]).all()),
          "whole": bool(np.array_equal(whole.numpy(), want([1], [0], [0], [1], 12, 0))),
          "nchw": bool(np.array_equal(nchw.numpy(), want(*draws_tiny, 2, 0,
                                                          tiny.transpose(0, 2, 3, 1), tiny_mean))),
          "none": list(none.shape)}
with open(sys.argv[1], "w") as f:
    json.dump(result, f)
'''


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
def test_the_kernel_follows_its_formula_for_any_strides_and_a_crop_of_the_whole_image(
        tmp_path) -> None:
    """Through Triton's interpreter (a child process: TRITON_INTERPRET=1 must precede the
    import of triton), against the module's formula computed by hand in NumPy: draws that are
    every other element of a longer tensor, a shift (K, 3) that is a transposed view, `out` a
    slice of a larger tensor (left as it was past the slice), a crop as large as the images
    (1..S is allowed), 3 x 3 images in (B, 3, S, S) (the layout chosen when both fit, as the
    torch path chooses), and no patches at all."""
    script, out = tmp_path / "child.py", tmp_path / "out.json"
    script.write_text(CHILD)
    run_interpreted([str(script), str(out)], timeout=300, cwd=tmp_path)
    assert json.loads(out.read_text()) == {"strided": True, "after_out": True, "whole": True,
                                           "nchw": True, "none": [0, 3, 11, 11]}
