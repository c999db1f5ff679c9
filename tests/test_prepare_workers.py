"""`alexnet prepare` with several worker processes: the same store, byte for byte, and the same
statistics (equal to NumPy over every pixel) whatever the number of workers."""

from __future__ import annotations

from pathlib import Path

import _images as images_
import numpy as np
import pytest

from alexnet.data import open_split
from alexnet.data.prepare import prepare


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def _source(root: Path) -> Path:
    """Two splits of varied real files, with a run of unreadable ones that fills whole chunks."""
    for split in ("train", "val"):
        for k, name in enumerate(["a", "b", "c"]):
            files = images_.zoo(k, seed=k + (10 if split == "val" else 0))
            if split == "train" and k == 1:
                files.update({f"{i}_empty.JPEG": b"" for i in range(7)})
            images_.write_files(root / split / name, files)
    return root


@pytest.mark.parametrize("format", ["raw", "jpeg"])
def test_store_and_statistics_do_not_depend_on_workers(tmp_path, format):
    src = _source(tmp_path / "src")
    trees = {}
    for workers in (1, 2, 3):
        out = tmp_path / f"w{workers}"
        prepare(src, out, size=20, chunk=3, workers=workers, format=format)
        trees[workers] = _tree_bytes(out)
    assert trees[1] == trees[2] == trees[3]
    train = open_split(tmp_path / "w1", "train")
    assert train.meta["skipped"] == 7 and len(train) == 3 * len(images_.zoo(0))
    # The statistics equal NumPy over every stored pixel (for jpeg: the decoded pixels are
    # not the ones summed, so the check uses the raw store's pixels).
    if format == "raw":
        pixels = train.read(np.arange(len(train)))
        flat = pixels.reshape(-1, 3).astype(np.float64)
        stats = train.stats
        np.testing.assert_allclose(stats["mean_image"], pixels.mean(axis=0), rtol=1e-6)
        np.testing.assert_allclose(stats["channel_mean"], flat.mean(axis=0), rtol=1e-12)
        np.testing.assert_allclose(stats["rgb_cov"], np.cov(flat, rowvar=False, bias=True),
                                   rtol=1e-10)
        val = open_split(tmp_path / "w3", "val")
        np.testing.assert_array_equal(val.stats["rgb_cov"], stats["rgb_cov"])
        np.testing.assert_array_equal(val.stats["mean_image"], stats["mean_image"])


def test_a_complete_store_is_reused_whatever_the_chunk_size(tmp_path, capsys):
    """The chunk is how a split is written, not what it holds: a store made with other
    chunks (as by an older alexnet) is complete for a rerun, never refused or redone."""
    src = _source(tmp_path / "src")
    prepare(src, tmp_path / "out", size=12, chunk=5, workers=1)
    before = _tree_bytes(tmp_path / "out")
    summary = prepare(src, tmp_path / "out", size=12, workers=1)
    assert "already complete" in capsys.readouterr().err
    assert summary["splits"]["train"]["count"] == 3 * len(images_.zoo(0))
    assert _tree_bytes(tmp_path / "out") == before


def test_without_room_in_shared_memory_pixels_go_through_the_pipe(tmp_path, monkeypatch):
    """A container's small /dev/shm: no slots, the same store."""
    from alexnet.data import workers

    src = _source(tmp_path / "src")
    prepare(src, tmp_path / "w1", size=20, chunk=3, workers=1)
    monkeypatch.setattr(workers, "shared_memory_room", lambda: 0)
    prepare(src, tmp_path / "w2", size=20, chunk=3, workers=2)
    assert _tree_bytes(tmp_path / "w1") == _tree_bytes(tmp_path / "w2")
