"""The store reads its pixel file with positional reads, not a memory map: the pages read do
not count in the process's resident memory (an ImageNet epoch would show 252 GB), a file cut
short after opening is a one-line error (a map gave SIGBUS), and the bytes read are the
images written, in every format, order and output buffer."""

from __future__ import annotations

import os
import pickle
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from test_mutants_store import CLASSES, _images

from alexnet.data import store as store_module
from alexnet.data import write_store
from alexnet.data.store import JPEG, RAW, Store
from alexnet.errors import UserError


def _mapped(path: Path) -> bool:
    """Whether this process has `path` mapped into its memory."""
    return str(path.resolve()) in Path("/proc/self/maps").read_text()


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux's /proc")
@pytest.mark.parametrize("form", ["raw", "jpeg"])
def test_reading_maps_no_pixels_into_memory(tmp_path, form) -> None:
    images, labels = _images(8, 32)
    store = write_store(tmp_path / "train", images, labels, CLASSES, format=form)
    store = Store(tmp_path / "train")
    batch = store.read([3, 0, 7, 3])
    if form == "jpeg":
        assert len(store.encoded([1, 2])) == 2
    else:
        np.testing.assert_array_equal(batch, images[[3, 0, 7, 3]])
    assert not _mapped(store.path / (RAW if form == "raw" else JPEG))


def test_raw_reads_fill_any_output_buffer_exactly(tmp_path) -> None:
    images, labels = _images(9, 16)
    store = write_store(tmp_path / "train", images, labels, CLASSES)
    index = [8, -9, 4, 4, 1]
    want = images[[8, 0, 4, 4, 1]]
    np.testing.assert_array_equal(store.read(index), want)
    strided = np.zeros((5, 16, 16, 3), np.uint8, order="F")  # not C-contiguous: via a copy
    assert store.read(index, out=strided) is strided
    np.testing.assert_array_equal(strided, want)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(store)).read(index), want)


@pytest.mark.parametrize("form", ["raw", "jpeg"])
def test_a_pixel_file_cut_short_after_opening_is_one_line(tmp_path, form) -> None:
    images, labels = _images(6, 32)
    write_store(tmp_path / "train", images, labels, CLASSES, format=form)
    store = Store(tmp_path / "train")
    store.read([0])
    pixels = store.path / (RAW if form == "raw" else JPEG)
    os.truncate(pixels, pixels.stat().st_size // 2)
    with pytest.raises(UserError) as info:
        store.read([5])
    message = str(info.value)
    assert "\n" not in message and "image 5" in message and "cut short" in message
    assert "alexnet prepare" in message


def test_threads_reading_a_fresh_store_at_once_open_its_file_once(tmp_path, monkeypatch) -> None:
    """Read-ahead threads' first reads race to open the pixel file: a second open replaced
    the first, whose descriptor was closed while the other thread read through it (EBADF,
    or another file's bytes had the number been reused)."""
    images, labels = _images(8, 16)
    write_store(tmp_path / "train", images, labels, CLASSES)
    store = Store(tmp_path / "train")
    opened: list[int] = []
    real = store_module._PixelFile.__init__

    def slow_open(self, path: Path) -> None:
        time.sleep(0.05)  # the window in which a second thread also finds no file
        real(self, path)
        opened.append(self.fd)

    monkeypatch.setattr(store_module._PixelFile, "__init__", slow_open)
    start = threading.Barrier(4)
    got: dict[int, np.ndarray] = {}

    def read(k: int) -> None:
        start.wait()
        got[k] = store.read([k, 7 - k])

    threads = [threading.Thread(target=read, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(opened) == 1
    for k in range(4):
        np.testing.assert_array_equal(got[k], images[[k, 7 - k]])
