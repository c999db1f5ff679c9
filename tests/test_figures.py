"""figures: the streamed nearest-neighbour search, the kernel grid, and every PNG written."""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from _stops import held_elsewhere, tree  # a lock held by another process
from PIL import Image

import alexnet.checkpoint
import alexnet.figures
from alexnet import atomic
from alexnet.checkpoint import make_state, save
from alexnet.cli import main
from alexnet.data.store import open_split, write_store
from alexnet.errors import UserError
from alexnet.figures import text
from alexnet.figures.curves import plot_curves
from alexnet.figures.kernels import (
    GAP,
    KERNELS_PER_ROW,
    SCALE,
    colour_fraction,
    conv1_columns,
    grid_size,
    kernel_grid,
    write_kernel_figures,
)
from alexnet.figures.neighbours import cached_chunks, nearest_neighbours, read_cache
from alexnet.figures.text import class_labels, drawable, fit
from alexnet.figures.top5 import figure_size
from alexnet.model import AlexNet, build_model
from alexnet.paper import CONV1, CROP_SIZE, IMAGE_SIZE

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CLASSES = [{"wnid": f"n{i:08d}", "name": f"class {i}"} for i in range(3)]


def png_size(path) -> tuple[int, int]:
    """(width, height) of a valid PNG file (signature checked, then decoded by PIL)."""
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as image:
        image.load()
        assert image.format == "PNG"
        return image.size


def brute_force(queries: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Every distance, then a lexicographic sort on (distance, index)."""
    d = np.sqrt(((queries[:, None, :] - rows[None, :, :]) ** 2).sum(-1))
    order = np.stack([np.lexsort((np.arange(len(rows)), di))[:k] for di in d])
    return np.take_along_axis(d, order, 1), order


def chunked(rows: np.ndarray, sizes: list[int]):
    start = 0
    for size in sizes:
        yield torch.from_numpy(rows[start:start + size])
        start += size
    assert start == len(rows)


@pytest.mark.parametrize("sizes", [[1000], [1, 6, 100, 333, 560], [37] * 27 + [1]])
def test_nearest_neighbours_equal_brute_force(sizes):
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(1000, 32)).astype(np.float32)
    queries = rng.normal(size=(7, 32)).astype(np.float32)
    queries[3] = rows[517]  # an exact match: distance 0, found first
    dist, idx = nearest_neighbours(torch.from_numpy(queries), chunked(rows, sizes), k=6)
    want_d, want_i = brute_force(queries.astype(np.float64), rows.astype(np.float64), 6)
    np.testing.assert_array_equal(idx.numpy(), want_i)
    np.testing.assert_allclose(dist.numpy(), want_d, rtol=1e-9, atol=1e-6)
    assert idx[3, 0] == 517


def test_nearest_neighbours_ties_across_chunk_boundaries():
    """Equal distances are ordered by row index however the rows are chunked."""
    rng = np.random.default_rng(1)
    base = rng.integers(-3, 4, size=(40, 8)).astype(np.float64)
    rows = np.concatenate([base, base, base[::-1], base])  # every vector four times
    queries = rng.integers(-3, 4, size=(5, 8)).astype(np.float64)
    want_d, want_i = brute_force(queries, rows, 9)
    assert any(len(set(r)) < len(r) for r in want_d.tolist())  # the data does have ties
    for sizes in ([160], [39, 2, 40, 79], [1] * 160, [41, 41, 41, 37]):
        dist, idx = nearest_neighbours(queries, chunked(rows, sizes), k=9)
        np.testing.assert_array_equal(idx.numpy(), want_i)
        np.testing.assert_allclose(dist.numpy(), want_d, atol=1e-12)


def test_nearest_neighbours_fewer_rows_than_k():
    rows = np.arange(6, dtype=np.float64).reshape(3, 2)
    dist, idx = nearest_neighbours(np.zeros((1, 2)), chunked(rows, [2, 1]), k=6)
    assert idx.tolist() == [[0, 1, 2]]
    np.testing.assert_allclose(dist.numpy(), [[1.0, np.sqrt(13), np.sqrt(41)]])


def test_colour_fraction_against_the_grey_axis():
    rng = np.random.default_rng(2)
    grey = np.repeat(rng.normal(size=(4, 1, 11, 11)), 3, axis=1)
    opponent = rng.normal(size=(4, 3, 11, 11))
    opponent -= opponent.mean(axis=1, keepdims=True)
    np.testing.assert_allclose(colour_fraction(grey), 0.0, atol=1e-12)
    np.testing.assert_allclose(colour_fraction(opponent), 1.0, atol=1e-12)
    mixed = rng.normal(size=(5, 3, 11, 11))
    centred = (mixed - mixed.mean(axis=(1, 2, 3), keepdims=True)).transpose(0, 2, 3, 1)
    pixels = centred.reshape(5, -1, 3)
    unit = np.ones(3) / np.sqrt(3)
    on_axis = ((pixels @ unit) ** 2).sum(1)
    total = (pixels ** 2).sum((1, 2))
    np.testing.assert_allclose(colour_fraction(mixed), 1 - on_axis / total, rtol=1e-10)


def test_kernel_grid_layout_and_contrast():
    rng = np.random.default_rng(3)
    kernels = rng.normal(size=(20, 3, 11, 11))
    grid = kernel_grid(kernels)
    cols, rows = KERNELS_PER_ROW, 2
    cell = 11 * SCALE + GAP
    assert grid.shape == (rows * cell + GAP, cols * cell + GAP, 3)
    assert grid_size(20, 11) == (grid.shape[1], grid.shape[0])
    for i in (0, 15, 16, 19):
        r, c = divmod(i, cols)
        y, x = GAP + r * cell, GAP + c * cell
        block = grid[y:y + 11 * SCALE:SCALE, x:x + 11 * SCALE:SCALE].astype(float)
        k = kernels[i].transpose(1, 2, 0)
        expected = (k - k.min()) / (k.max() - k.min()) * 255
        np.testing.assert_allclose(block, expected, atol=0.5 + 1e-9)
        assert block.min() == 0 and block.max() == 255  # each kernel spans the full range
    assert (grid[:GAP] == 255).all() and (grid[:, :GAP] == 255).all()
    empty = grid[GAP + cell:, GAP + 4 * cell:]  # after kernel 19: blank cells
    assert (empty == 255).all()


def test_kernel_figures_two_columns_and_one(tmp_path):
    torch.manual_seed(0)
    model = AlexNet(num_classes=3, width=0.5)
    half = model.conv1.weight.shape[0] // 2
    assert half == CONV1[0] // 4  # 96 kernels at width 0.5: 24 per column
    rng = np.random.default_rng(5)
    grey = np.repeat(rng.normal(size=(half, 1, 11, 11)), 3, axis=1)
    opponent = rng.normal(size=(half, 3, 11, 11))
    opponent -= opponent.mean(axis=1, keepdims=True)
    with torch.no_grad():  # column 1 colour-agnostic, column 2 colour-specific (figure 3)
        model.conv1.weight.copy_(torch.from_numpy(np.concatenate([grey, opponent])))
    columns = conv1_columns(model)
    np.testing.assert_array_equal(columns[0].numpy(), grey.astype(np.float32))
    np.testing.assert_array_equal(columns[1].numpy(), opponent.astype(np.float32))
    info = write_kernel_figures(model, tmp_path / "two")
    one, two = info["panels"]
    assert one["kernels"] == two["kernels"] == half
    assert one["colour_fraction_mean"] == pytest.approx(0.0, abs=1e-6)
    assert two["colour_fraction_mean"] == pytest.approx(1.0, abs=1e-6)
    for i, panel in enumerate(info["panels"], start=1):
        assert png_size(tmp_path / "two" / f"fig3_conv1_column{i}.png") == grid_size(half, 11)
        assert tuple(panel["size"]) == grid_size(half, 11) == (16 * 46 + 2, 2 * 46 + 2)
    assert png_size(tmp_path / "two" / "fig3_kernels.png") == tuple(info["figure_size"])

    tv = build_model("alexnet-tv", num_classes=3)
    info = write_kernel_figures(tv, tmp_path / "tv")
    (panel,) = info["panels"]
    kernels = tv.conv1.weight.shape[0] if hasattr(tv, "conv1") else panel["kernels"]
    assert panel["kernels"] == kernels
    assert png_size(tmp_path / "tv" / "fig3_conv1.png") == grid_size(kernels, 11)
    assert math.ceil(kernels / KERNELS_PER_ROW) * (11 * SCALE + GAP) + GAP == \
        grid_size(kernels, 11)[1]


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    """A tiny store (train + test) and a small net's checkpoint beside its log."""
    root = tmp_path_factory.mktemp("figstore")
    rng = np.random.default_rng(4)
    images = rng.integers(0, 256, size=(14, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    labels = np.arange(14) % 3
    write_store(root / "train", images[:10], labels[:10], CLASSES)
    train = open_split(root, "train")
    write_store(root / "test", images[10:], labels[10:], CLASSES, stats=train.stats)
    torch.manual_seed(0)
    model = AlexNet(num_classes=3, width=0.0625)
    for module in model.modules():  # PyTorch's init: fc7 vectors far apart, unlike N(0, 0.01)'s
        if module is not model and hasattr(module, "reset_parameters"):
            module.reset_parameters()
    ckpt = tmp_path_factory.mktemp("run") / "net.pt"
    save(ckpt, make_state(model, classes=CLASSES, stats=train.stats, epoch=1, step=0))
    return root, ckpt, model


def test_figures_command_writes_every_png(run_folder, tmp_path, capsys):
    root, ckpt, model = run_folder
    out = tmp_path / "figs"
    code = main(["figures", str(ckpt), "--data", str(root), "--out", str(out), "--images", "3",
                 "--queries", "2", "--batch-size", "4", "--device", "cpu",
                 "--features-cache", str(tmp_path / "fc7.npy")])
    assert code == 0
    summary = json.loads((out / "figures.json").read_text())
    for name in ("fig3_kernels.png", "fig3_conv1_column1.png", "fig3_conv1_column2.png",
                 "fig4_top5.png", "fig4_neighbours.png"):
        png_size(out / name)
    assert png_size(out / "fig4_top5.png") == figure_size(3)
    assert png_size(out / "fig4_neighbours.png") == tuple(summary["neighbours"]["size"])
    assert png_size(out / "fig4_neighbours.png") == (7 * 150, 2 * 170)

    # the neighbours: brute force over fc7 of numpy-made centre crops
    train, test = open_split(root, "train"), open_split(root, "test")
    mean = train.stats["mean_image"].astype(np.float32)
    off = (IMAGE_SIZE - CROP_SIZE) // 2

    def fc7(store, idx):
        x = store.read(np.asarray(idx)).astype(np.float32) - mean
        x = x[:, off:off + CROP_SIZE, off:off + CROP_SIZE].transpose(0, 3, 1, 2)
        with torch.no_grad():
            return model.eval().features(torch.from_numpy(np.ascontiguousarray(x))).double()

    queries = summary["neighbours"]["queries"]
    q, rows = fc7(test, queries).numpy(), fc7(train, range(10)).numpy()
    want_d, _ = brute_force(q, rows, 6)
    assert (want_d[:, -1] > 1.05 * want_d[:, 0]).all()  # neighbours that differ in distance
    every = np.sqrt(((q[:, None] - rows[None]) ** 2).sum(-1))
    got_i = np.array(summary["neighbours"]["neighbours"])
    assert got_i.shape == (2, 6) and all(len(set(r)) == 6 for r in got_i.tolist())
    # the same distances in the same order (indices may swap only where float32 ties)
    np.testing.assert_allclose(summary["neighbours"]["distances"], want_d, rtol=1e-4)
    np.testing.assert_allclose(np.take_along_axis(every, got_i, 1), want_d, rtol=1e-4)
    cached = np.load(tmp_path / "fc7.npy")  # the disk cache of the train split
    np.testing.assert_allclose(cached, rows, rtol=1e-4, atol=1e-5)
    cached_d, cached_i = brute_force(q, cached.astype(np.float64), 6)  # searched by numpy
    np.testing.assert_array_equal(got_i, cached_i)
    np.testing.assert_allclose(summary["neighbours"]["distances"], cached_d, rtol=1e-9)

    # a second run reads the cache and finds the same neighbours
    assert "read from" not in capsys.readouterr().out
    out2 = tmp_path / "figs2"
    assert main(["figures", str(ckpt), "--data", str(root), "--out", str(out2), "--images", "1",
                 "--queries", "2", "--device", "cpu", "--features-cache",
                 str(tmp_path / "fc7.npy")]) == 0
    assert "training features read from" in capsys.readouterr().out
    again = json.loads((out2 / "figures.json").read_text())
    assert again["neighbours"]["neighbours"] == summary["neighbours"]["neighbours"]


@pytest.mark.parametrize("bad", ["checkpoint", "images"])
def test_figures_bad_input_is_one_line(run_folder, tmp_path, capsys, bad):
    root, ckpt, _ = run_folder
    args = {"checkpoint": [str(tmp_path / "none.pt"), "--data", str(root)],
            "images": [str(ckpt), "--data", str(root), "--images", "0"]}[bad]
    code = main(["figures", *args, "--out", str(tmp_path / "o"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1


def test_feature_cache_only_when_complete_and_same_key(tmp_path):
    rows = np.arange(40, dtype=np.float32).reshape(10, 4)
    path = tmp_path / "fc7.npy"
    key = {"checkpoint": "a.pt", "images": 10}
    partial = cached_chunks(chunked(rows, [4, 4, 2]), path, 10, key)
    next(partial)
    partial.close()  # interrupted after one chunk: nothing under the final name
    assert not path.exists() and not list(tmp_path.iterdir())
    passed = torch.cat(list(cached_chunks(chunked(rows, [4, 4, 2]), path, 10, key)))
    np.testing.assert_array_equal(passed.numpy(), rows)
    np.testing.assert_array_equal(torch.cat(list(read_cache(path, 10, key))).numpy(), rows)
    assert read_cache(path, 10, {**key, "checkpoint": "b.pt"}) is None  # another net
    assert read_cache(path, 11, key) is None  # another store size


OLD_KEY = {"checkpoint": "a.pt", "store": "s", "images": 10}
NEW_KEY = {**OLD_KEY, "checkpoint": "b.pt"}


def earlier_cache(path) -> np.ndarray:
    """A complete cache of 10 x 4 features at `path`, made with OLD_KEY."""
    rows = np.arange(40, dtype=np.float32).reshape(10, 4)
    for _ in cached_chunks(chunked(rows, [10]), path, 10, OLD_KEY):
        pass
    return rows


def cached(path, key) -> np.ndarray | None:
    chunks = read_cache(path, 10, key)
    return None if chunks is None else torch.cat(list(chunks)).numpy()


@pytest.mark.parametrize("how", ["closed", "raised"])
def test_an_interrupted_rewrite_keeps_the_earlier_cache(tmp_path, how):
    path = tmp_path / "fc7.npy"
    old = earlier_cache(path)

    def failing():
        yield torch.ones(4, 4)
        raise RuntimeError("killed")

    rewrite = cached_chunks(chunked(-old, [4, 4, 2]) if how == "closed" else failing(), path,
                            10, NEW_KEY)
    next(rewrite)
    if how == "closed":
        rewrite.close()  # Ctrl-C or a time limit while the consumer holds the chunk
    else:
        with pytest.raises(RuntimeError, match="killed"):
            next(rewrite)
    np.testing.assert_array_equal(cached(path, OLD_KEY), old)
    assert cached(path, NEW_KEY) is None
    assert sorted(os.listdir(tmp_path)) == ["fc7.npy", "fc7.npy.json"]


def test_the_key_always_describes_the_features_on_disk(tmp_path, monkeypatch):
    """The earlier cache is usable until the new one is complete; at each rename the key on
    disk, if any, is the one of the .npy there."""
    path = tmp_path / "fc7.npy"
    old = earlier_cache(path)
    new = -old
    key_file, replace, renames = tmp_path / "fc7.npy.json", os.replace, []

    def spy(src, dst):  # the files on disk at the moment of each rename
        key = json.loads(key_file.read_text()) if key_file.exists() else None
        renames.append((os.path.basename(dst), key, np.load(path)))
        replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    for i, _ in enumerate(cached_chunks(chunked(new, [4, 4, 2]), path, 10, NEW_KEY)):
        np.testing.assert_array_equal(cached(path, OLD_KEY), old, err_msg=f"after chunk {i}")
    (npy, key_then, features_then), (json_name, _, features_at_key) = renames
    assert npy == "fc7.npy" and key_then is None  # the earlier key is gone before the rename
    np.testing.assert_array_equal(features_then, old)
    assert json_name == "fc7.npy.json"  # the new key follows the new features
    np.testing.assert_array_equal(features_at_key, new)
    np.testing.assert_array_equal(cached(path, NEW_KEY), new)
    assert cached(path, OLD_KEY) is None


KILLED_WRITER = """
import os, signal, sys
from pathlib import Path
import torch
from alexnet.figures.neighbours import cached_chunks

def chunks():
    yield torch.ones(4, 4)
    os.kill(os.getpid(), signal.SIGKILL)

for _ in cached_chunks(chunks(), Path(sys.argv[1]), 10, {"checkpoint": "b.pt", "store": "s"}):
    pass
"""


def test_a_killed_rewrite_leaves_the_earlier_cache_and_its_temporary_is_removed(tmp_path):
    path = tmp_path / "fc7.npy"
    old = earlier_cache(path)
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(path)],
                            stderr=subprocess.PIPE, text=True)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL, err
    dead = proc.pid  # ended: its temporary is stale
    stale = tmp_path / f"{atomic.TMP_PREFIX}fc7.npy.{dead}"
    assert stale.stat().st_size >= 10 * 4 * 4  # what the killed writer left (80 MB per 20k)
    np.testing.assert_array_equal(cached(path, OLD_KEY), old)  # still valid after SIGKILL
    stale_key = tmp_path / f"{atomic.TMP_PREFIX}fc7.npy.json.{dead}"  # killed writing a key
    live = tmp_path / f"{atomic.TMP_PREFIX}fc7.npy.{os.getppid()}"  # a running writer's
    others = [tmp_path / f"{atomic.TMP_PREFIX}notes.txt.{dead}",  # not the cache's: kept
              tmp_path / f"{atomic.TMP_PREFIX}fc7.npy.old", tmp_path / f"fc7.npy.{dead}"]
    for kept in (stale_key, live, *others):
        kept.write_text("{}")
    new = -old
    for _ in cached_chunks(chunked(new, [4, 6]), path, 10, NEW_KEY):
        pass
    np.testing.assert_array_equal(cached(path, NEW_KEY), new)
    assert sorted(os.listdir(tmp_path)) == sorted(
        ["fc7.npy", "fc7.npy.json", live.name, *(other.name for other in others)])


@pytest.mark.parametrize("how", ["posix_fallocate", "unsupported", "absent"])
def test_the_cache_file_is_allocated_before_it_is_written(tmp_path, monkeypatch, how):
    """Its whole size is on disk before the first features go through the map (a sparse file
    would SIGBUS on a full disk): by posix_fallocate, else by writing zeros."""
    if how == "absent":
        monkeypatch.delattr(os, "posix_fallocate", raising=False)
    elif how == "unsupported":
        def unsupported(fd, offset, length):
            raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))

        monkeypatch.setattr(os, "posix_fallocate", unsupported, raising=False)
    path = tmp_path / "fc7.npy"
    rows = np.random.default_rng(6).normal(size=(1024, 256)).astype(np.float32)  # 1 MB
    writer = cached_chunks(chunked(rows, [1, 1023]), path, 1024, NEW_KEY)
    next(writer)
    tmp = atomic.temp_path(path)
    assert tmp.stat().st_blocks * 512 >= tmp.stat().st_size >= rows.nbytes
    list(writer)
    np.testing.assert_array_equal(np.load(path), rows)


def test_a_full_disk_is_one_line_and_keeps_the_earlier_cache(run_folder, tmp_path,
                                                             monkeypatch, capsys):
    root, ckpt, _ = run_folder
    path = tmp_path / "fc7.npy"
    old = earlier_cache(path)

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", full, raising=False)
    code = main(["figures", str(ckpt), "--data", str(root), "--out", str(tmp_path / "figs"),
                 "--queries", "2", "--device", "cpu", "--features-cache", str(path)])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"--features-cache {path}: cannot write" in err and "No space left" in err
    assert "free disk space, or choose another --features-cache" in err
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(atomic.TMP_PREFIX)]
    np.testing.assert_array_equal(cached(path, OLD_KEY), old)
    with pytest.raises(UserError, match="cannot write"):
        list(cached_chunks(chunked(-old, [10]), path, 10, NEW_KEY))
    assert sorted(os.listdir(tmp_path)) == ["fc7.npy", "fc7.npy.json", "figs"]


@pytest.mark.parametrize("bad", ["folder", "unrelated npy", "store file", "key file",
                                 "unwritable"])
def test_a_bad_features_cache_fails_before_any_figure(run_folder, tmp_path, capsys, bad):
    root, ckpt, _ = run_folder
    (tmp_path / "folder.npy").mkdir()
    np.save(tmp_path / "labels.npy", np.arange(10))
    np.save(tmp_path / "keyed.npy", np.zeros((10, 4), np.float32))
    (tmp_path / "keyed.npy.json").write_text('{"mine": 1}\n')
    cache = {"folder": tmp_path / "folder.npy", "unrelated npy": tmp_path / "labels.npy",
             "store file": root / "train" / "labels.npy", "key file": tmp_path / "keyed.npy",
             "unwritable": "/proc/alexnet-fc7.npy"}[bad]
    kept = {p: p.read_bytes() for p in (tmp_path / "labels.npy", root / "train" / "labels.npy",
                                        tmp_path / "keyed.npy.json")}
    code = main(["figures", str(ckpt), "--data", str(root), "--out", str(tmp_path / "figs"),
                 "--device", "cpu", "--features-cache", str(cache)])
    captured = capsys.readouterr()
    assert code == 2 and len(captured.err.strip().splitlines()) == 1, captured.err
    assert "--features-cache" in captured.err and captured.out == ""  # no figure drawn
    assert not (tmp_path / "figs").exists()
    assert {p: p.read_bytes() for p in kept} == kept


@pytest.mark.parametrize("inside", ["", "train", "train/figs"])
def test_figures_are_not_written_into_a_store(run_folder, capsys, inside):
    root, ckpt, _ = run_folder
    before = sorted(root.rglob("*"))
    code = main(["figures", str(ckpt), "--data", str(root), "--out", str(root / inside),
                 "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "outside the store" in err, err
    assert sorted(root.rglob("*")) == before


# ------------------------------------------------------------------ concurrent and stopped runs

def figures_args(ckpt, root, out, *extra: str) -> list[str]:
    return ["figures", str(ckpt), "--data", str(root), "--out", str(out), "--images", "1",
            "--queries", "2", "--device", "cpu", *extra]


def test_a_second_figures_into_the_same_folder_is_refused_at_once(run_folder, tmp_path,
                                                                   capsys):
    """Two at once mixed two nets' figures in one folder, both exiting 0."""
    root, ckpt, _ = run_folder
    out = tmp_path / "figs"
    out.mkdir()
    (out / "fig3_kernels.png").write_bytes(b"the other command's figure")
    with held_elsewhere(out / ".figures.lock"):
        before = tree(out)
        code = main(figures_args(ckpt, root, out))
        after = tree(out)
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert code == 2 and err.count("\n") == 0 and captured.out == "", captured
    assert f"{out}: another `alexnet figures` is writing this folder" in err
    assert "wait for it to end, or choose another --out" in err
    assert after == before


def test_figures_into_a_run_folder_being_trained_are_drawn(run_folder, tmp_path, capsys):
    """`--out RUN` while the run trains (RUN/.lock is training's) was refused as if another
    `alexnet figures` were writing there (and a training started meanwhile was refused as
    if another training were)."""
    root, ckpt, _ = run_folder
    run = tmp_path / "run"
    run.mkdir()
    with held_elsewhere(run / ".lock"):
        code = main(figures_args(ckpt, root, run))
    assert code == 0, capsys.readouterr().err
    assert (run / "figures.json").is_file()


def test_the_cache_key_names_the_checkpoint_that_was_read(run_folder, tmp_path, monkeypatch,
                                                          capsys):
    """A checkpoint replaced between its read and the key (train saving while figures starts)
    gave the new file's key to the old net's features, reused by every later run."""
    root, ckpt, _ = run_folder
    net = tmp_path / "net.pt"
    shutil.copyfile(ckpt, net)
    torch.manual_seed(1)
    other = AlexNet(num_classes=3, width=0.0625)
    for module in other.modules():
        if module is not other and hasattr(module, "reset_parameters"):
            module.reset_parameters()
    newer = save(tmp_path / "newer.pt", make_state(other, classes=CLASSES, epoch=2, step=0,
                                                   stats=open_split(root, "train").stats))
    load, replaced = alexnet.checkpoint.load, []

    def load_then_replace(path, *args, **kwargs):
        state = load(path, *args, **kwargs)
        if not replaced:  # the old net is read; then the new one is renamed over it
            os.replace(newer, net)
            replaced.append(path)
        return state

    def neighbours(out: str, *extra: str) -> dict:
        assert main(figures_args(net, root, tmp_path / out, *extra)) == 0
        return json.loads((tmp_path / out / "figures.json").read_text())["neighbours"]

    cache = tmp_path / "fc7.npy"
    monkeypatch.setattr(alexnet.checkpoint, "load", load_then_replace)
    neighbours("during", "--features-cache", str(cache))
    monkeypatch.undo()
    assert replaced
    capsys.readouterr()
    cached = neighbours("after", "--features-cache", str(cache))
    assert "training features read from" in capsys.readouterr().out  # the cache is of use
    fresh = neighbours("fresh")
    np.testing.assert_allclose(cached["distances"], fresh["distances"], rtol=1e-5)
    assert cached["neighbours"] == fresh["neighbours"]


@pytest.mark.parametrize("how", ["interrupted", "failed"])
def test_figures_stopped_midway_leave_the_earlier_set(run_folder, tmp_path, monkeypatch, capsys,
                                                      how):
    """Ctrl-C after figure 4 left left fig3 and fig4_top5 without a word (and an earlier
    figures.json that described other figures); then the new figures beside the earlier ones
    and no figures.json. Now nothing in the folder changes, and the line says so."""
    root, ckpt, _ = run_folder
    out = tmp_path / "figs"
    args = figures_args(ckpt, root, out)
    assert main(args) == 0  # an earlier, complete set
    before = tree(out)
    capsys.readouterr()

    def stop(*args, **kwargs):
        if how == "interrupted":
            raise KeyboardInterrupt
        raise UserError("the search failed")

    monkeypatch.setattr(alexnet.figures, "_neighbours_figure", stop)
    code = main([*args, "--seed", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    if how == "interrupted":
        assert code == 130 and len(err) == 2 and err[1] == "alexnet figures: interrupted", err
        assert err[0].startswith(f"alexnet figures: note: nothing in {out} changed")
    else:
        assert code == 2 and len(err) == 1, err
        assert err[0].startswith(f"alexnet figures: error: the search failed; nothing in {out} "
                                 "changed")
    assert "(its earlier figures and figures.json, if any, are as they were); rerunning the " \
        "same command draws every figure again" in err[0]
    assert tree(out) == before
    monkeypatch.undo()
    assert main(args) == 0 and (out / "figures.json").is_file()  # the rerun draws them all


# ----------------------------------------------------------------------------- names as text

NOT_UTF8 = "run\udcffbyte"  # b"run\xffbyte" as os.fsdecode gives it
AWKWARD = ['a, b "dq" \'sq\'; semi', "bad\udcffbyte", "\u732b\tcat $\\frac$"]
SYNSETS = [{"wnid": "n01440764", "name": "tench, Tinca tinca"},
           {"wnid": "n02012849", "name": "crane"}, {"wnid": "n03126707", "name": "crane"}]
GLYPH = "missing from font"


@pytest.fixture
def drawn(monkeypatch):
    """{file name: [every non-empty text of the figure]} of each PNG saved by matplotlib."""
    import matplotlib.figure
    import matplotlib.text

    texts: dict[str, list[str]] = {}
    savefig = matplotlib.figure.Figure.savefig

    def spy(fig, fname, *args, **kwargs):
        name = os.path.basename(getattr(fname, "name", str(fname)))
        texts[name] = [t.get_text() for t in fig.findobj(matplotlib.text.Text) if t.get_text()]
        return savefig(fig, fname, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", spy)
    monkeypatch.setattr(text, "_REPORTED", set())  # a fresh command: nothing noticed yet
    return texts


def texts_of(drawn, file: str) -> list[str]:
    """The texts of the figure saved (under a temporary name) for `file`."""
    (texts,) = [t for name, t in drawn.items() if file in name]
    return texts


def glyph_warnings(caught) -> list[str]:
    return [str(w.message) for w in caught if GLYPH in str(w.message)]


def test_drawable_escapes_what_matplotlib_cannot_draw():
    assert drawable(NOT_UTF8) == "run\\xffbyte"
    assert drawable("a\tb\nc\x07\x85\ud800") == "a\\tb\\nc\\x07\\x85\\ud800"
    assert drawable("\u732b, caf\u00e9 $x$") == "\u732b, caf\u00e9 $x$"  # kept as it is
    assert fit("abcdef", 4) == "abc\u2026" and fit("abcd", 4) == "abcd"


def test_class_labels_split_only_synonym_lists_and_stay_distinct():
    folders = [{"wnid": n, "name": n} for n in AWKWARD]
    assert class_labels(folders, 22) == ['a, b "dq" \'sq\'; semi', "bad\\xffbyte",
                                         "\u732b\\tcat $\\frac$"]
    assert class_labels(folders, 14)[0] == 'a, b "dq" \'sq\u2026'
    assert class_labels(SYNSETS, 22) == ["tench", "crane [1]", "crane [2]"]
    cut = class_labels(["experiment_condition_A", "experiment_condition_B", "short"], 14)
    assert cut == ["experimen\u2026 [0]", "experimen\u2026 [1]", "short"]
    assert all(len(label) <= 14 for label in cut)
    assert class_labels([{"wnid": "n1", "name": ""}, ""], 8) == ["n1", "1"]


def test_curves_of_a_run_folder_whose_name_is_not_utf8(tmp_path, drawn):
    """Training redraws curves.png after every epoch: the folder's name must not stop it."""
    from alexnet.training.run_folder import RunFiles, write_logs

    files = RunFiles(tmp_path / NOT_UTF8)
    files.root.mkdir()
    row = {"epoch": 1, "train_loss": 2.0, "train_error": 0.5, "lr": 0.01}
    write_logs(files, [row])
    assert png_size(files.curves)
    assert "training curves: run\\xffbyte" in texts_of(drawn, "curves.png")


def test_top5_probabilities_keep_two_figures_among_many_classes(tmp_path, drawn):
    """At 1000 classes a top-5 probability is often below 0.005: printed to two decimals,
    every number read 0.00; two significant figures keep them apart."""
    from alexnet.figures.top5 import plot_top5

    probs = np.full((1, 1000), 1e-5)
    probs[0, :5] = [0.5, 0.0031, 0.0027, 0.25, 0.012]
    names = [f"c{k}" for k in range(1000)]
    plot_top5([np.zeros((8, 8, 3), np.uint8)], probs, [1], names, tmp_path / "top5.png")
    texts = texts_of(drawn, "top5.png")
    assert [t for t in texts if t.startswith("c") and " " in t] == \
        ["c0 0.5", "c3 0.25", "c4 0.012", "c1 0.0031", "c2 0.0027"]


def test_the_plots_draw_any_class_name(tmp_path, drawn):
    """Undecodable bytes, control characters and mathtext in names, drawn by the real
    plotting functions: escaped, not an error, a box or a line break."""
    from alexnet.figures.neighbours import plot_neighbours
    from alexnet.figures.top5 import plot_top5

    images = [np.zeros((8, 8, 3), np.uint8)] * 3
    probs = np.array([[0.5, 0.3, 0.2], [0.2, 0.5, 0.3], [0.3, 0.2, 0.5]])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plot_top5(images, probs, [0, 1, 2], AWKWARD, tmp_path / "top5.png")
        plot_neighbours(images[:1], [images[1:]], tmp_path / "nn.png",
                        query_titles=[AWKWARD[1]], neighbour_titles=[[AWKWARD[2], "x\ny"]])
    assert png_size(tmp_path / "top5.png") == figure_size(3)
    assert png_size(tmp_path / "nn.png") == (3 * 150, 170)
    top5 = texts_of(drawn, "top5.png")
    assert {"bad\\xffbyte", "\u732b\\tcat $\\frac$", 'a, b "dq" \'sq\'; semi'} <= set(top5)
    assert "bad\\xffbyte 0.5" in top5
    assert {"bad\\xffbyte", "\u732b\\tcat $\\frac$", "x\\ny"} <= set(texts_of(drawn, "nn.png"))
    assert glyph_warnings(caught) == []  # the CJK glyph: one notice instead (below)


def store_and_run(root, classes, run_name: str = "run"):
    """A store of `classes` (3) and a checkpoint in the run folder `run_name` beside a log."""
    rng = np.random.default_rng(4)
    images = rng.integers(0, 256, size=(14, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    labels = np.arange(14) % 3
    write_store(root / "store" / "train", images[:10], labels[:10], classes)
    train = open_split(root / "store", "train")
    write_store(root / "store" / "test", images[10:], labels[10:], classes, stats=train.stats)
    torch.manual_seed(0)
    run = root / run_name
    run.mkdir()
    save(run / "net.pt", make_state(AlexNet(num_classes=3, width=0.0625), classes=classes,
                                    stats=train.stats, epoch=1, step=0))
    (run / "log.jsonl").write_text(json.dumps({"epoch": 1, "train_loss": 1.0, "lr": 0.01})
                                   + "\n")
    return root / "store", run / "net.pt"


@pytest.mark.parametrize("kind", ["comma folders", "awkward folders", "synsets"])
def test_figures_command_labels_every_class(tmp_path, drawn, capsys, kind):
    """Figure 4 names each class whole (a folder's commas kept; a synset by its first word),
    marks a cut with an ellipsis in both panels, keeps two classes apart, and draws names and
    run folders that are not UTF-8, hold a tab or characters no font has."""
    names = {"comma folders": ["a, b \"dq\" 'sq'; semi", "a, c", "a"], "awkward folders":
             AWKWARD, "synsets": None}[kind]
    classes = SYNSETS if names is None else [{"wnid": n, "name": n} for n in names]
    run_name = NOT_UTF8 if kind == "awkward folders" else "run"
    store, ckpt = store_and_run(tmp_path, classes, run_name)
    out = tmp_path / "figs"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = main(["figures", str(ckpt), "--data", str(store), "--out", str(out),
                     "--images", "4", "--queries", "4", "--device", "cpu"])
    assert code == 0
    assert json.loads((out / "figures.json").read_text())["curves"]
    top5, nn = texts_of(drawn, "fig4_top5.png"), texts_of(drawn, "fig4_neighbours.png")
    want = class_labels(classes, 22)
    assert {*want} <= {*top5}  # every class is a true label of the four test images
    assert {*class_labels(classes, 20)} <= {*nn}
    near = {t.rsplit(" d=", 1)[0] for t in nn if " d=" in t}
    assert near <= {*class_labels(classes, 14)} and len(near) > 1
    if kind == "comma folders":
        assert want == ["a, b \"dq\" 'sq'; semi", "a, c", "a"]
        assert "a, b \"dq\" 'sq'; semi" in nn and 'a, b "dq" \'sq\u2026' in near
    elif kind == "synsets":
        assert want == ["tench", "crane [1]", "crane [2]"]
    else:
        assert "bad\\xffbyte" in top5 and "\u732b\\tcat $\\frac$" in top5
        assert "training curves: run\\xffbyte" in texts_of(drawn, "training_curves.png")
        err = capsys.readouterr().err.splitlines()
        assert [line for line in err if "font" in line] == [
            "alexnet: note: no font matplotlib uses can draw \u732b U+732B; the figures show "
            "them as boxes (a font that has them, e.g. Noto Sans CJK, added to matplotlib's "
            "font.family would draw them)"]
    assert glyph_warnings(caught) == []


def test_missing_glyphs_are_one_notice_per_command(tmp_path, drawn, capsys):
    """Curves redrawn every epoch in a run folder named in CJK: one notice, no warnings."""
    from alexnet.training.run_folder import RunFiles, write_logs

    files = RunFiles(tmp_path / "\u732b\u72d7 run")
    files.root.mkdir()
    rows = [{"epoch": e, "train_loss": 2.0 / e, "lr": 0.01} for e in (1, 2, 3)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for epoch in range(1, 4):
            write_logs(files, rows[:epoch])
    assert glyph_warnings(caught) == []
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("alexnet: note: no font matplotlib uses "
                                                   "can draw \u72d7 U+72D7, \u732b U+732B;")
    with text.one_glyph_notice():  # a command drawing several figures: one notice at its end
        for word in ("\u4e00", "\u4e8c"):
            plot_curves(files.log, tmp_path / f"{word}.png", title=word)
        assert capsys.readouterr().err == ""
    assert capsys.readouterr().err.count("\u4e00 U+4E00, \u4e8c U+4E8C;") == 1


def test_two_figures_sharing_a_cache_never_leave_one_nets_key_beside_the_others_features(
        run_folder, tmp_path, monkeypatch, capsys):
    """A second `alexnet figures` on another net, sharing --features-cache, wrote its features
    and key between the first's rename and the first's key: the first's key ended beside the
    second's features, and every later run of the first net read another net's neighbours.
    Now the second says it waits and waits; each key describes the features beside it."""
    import alexnet.figures.neighbours as neighbours

    root, ckpt, _ = run_folder
    torch.manual_seed(1)
    other_net = AlexNet(num_classes=3, width=0.0625)
    for module in other_net.modules():
        if module is not other_net and hasattr(module, "reset_parameters"):
            module.reset_parameters()
    other = save(tmp_path / "other.pt", make_state(other_net, classes=CLASSES, epoch=1,
                                                   step=0, stats=open_split(root, "train").stats))
    cache = tmp_path / "fc7.npy"
    repo = os.path.dirname(os.path.dirname(alexnet.__file__))  # this copy of the package
    write_atomic, second = neighbours.write_atomic, {}

    def b_meanwhile(path, *args, **kwargs):
        if str(path).endswith(".npy.json") and not second:  # A's .npy is in place, no key yet
            proc = subprocess.Popen(
                [sys.executable, "-m", "alexnet.cli", *figures_args(other, root, tmp_path / "b"),
                 "--features-cache", str(cache)], cwd=repo, env={**os.environ, "PYTHONPATH": repo},
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            lines = []
            for line in proc.stderr:  # until B waits, or until it has ended
                lines.append(line)
                if "waiting for another" in line:
                    break
            second.update(proc=proc, lines=lines)
        return write_atomic(path, *args, **kwargs)

    monkeypatch.setattr(neighbours, "write_atomic", b_meanwhile)
    assert main(figures_args(ckpt, root, tmp_path / "a", "--features-cache", str(cache))) == 0
    proc = second["proc"]
    rest = proc.stderr.read()
    assert proc.wait(timeout=300) == 0, "".join(second["lines"]) + rest
    key = json.loads(cache.with_name("fc7.npy.json").read_text())
    net, _ = alexnet.checkpoint.load_model(key["checkpoint"])
    train = open_split(root, "train")
    x = train.read(np.arange(10)).astype(np.float32) - train.stats["mean_image"]
    off = (IMAGE_SIZE - CROP_SIZE) // 2
    x = np.ascontiguousarray(x[:, off:off + CROP_SIZE, off:off + CROP_SIZE].transpose(0, 3, 1, 2))
    with torch.no_grad():
        want = net.features(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(np.load(cache), want, rtol=1e-4, atol=1e-5)  # the key's net's
    assert second["lines"][-1].strip() == ("figure 4 right: waiting for another `alexnet "
                                           f"figures` writing --features-cache {cache}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "fc7.npy", "fc7.npy.json",
                                                          "other.pt"]


# ------------------------------------------------ what the figures show, and bad input
@pytest.mark.parametrize("bad", ["missing run folder", "other width", "no test split",
                                 "out is a file"])
def test_figures_bad_input_paths_are_one_line(run_folder, tmp_path, capsys, bad):
    """What a user gets wrong most: each refused in one line naming what to change, and a
    file at --out kept as it was."""
    root, ckpt, _ = run_folder
    ckpt_arg, data, out = str(ckpt), root, tmp_path / "o"
    if bad == "missing run folder":
        ckpt_arg = str(tmp_path / "runs" / "nope") + os.sep
    elif bad == "other width":  # its model_args say one width, its weights are of another
        state = alexnet.checkpoint.load(ckpt)
        state["model_args"]["width"] = 2 * state["model_args"]["width"]
        ckpt_arg = str(save(tmp_path / "wide.pt", state))
    elif bad == "no test split":
        data = tmp_path / "store"
        shutil.copytree(root / "train", data / "train")
    else:
        out = tmp_path / "a file"
        out.write_text("kept\n")
    code = main(["figures", ckpt_arg, "--data", str(data), "--out", str(out), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert {"missing run folder": "no such checkpoint", "other width": "do not fit",
            "no test split": "no val or test split", "out is a file": "--out"}[bad] in err
    if bad == "out is a file":
        assert out.read_text() == "kept\n"
    else:
        assert not out.exists()


@pytest.mark.parametrize("empty", ["test", "train"])
def test_an_empty_split_is_said_in_one_line_before_any_figure(run_folder, tmp_path, capsys,
                                                              empty):
    """An empty test split drew figure 3, then failed with "batch size 0: must be at least 1"
    (figures.json missing, three PNGs written); an empty train split drew figure 4 right as a
    column of test images with no neighbours. Now the first is refused before any figure,
    naming the split; the second skips figure 4 right as a store without a train split does."""
    root, ckpt, _ = run_folder
    data = tmp_path / "store"
    shutil.copytree(root, data)
    none = open_split(data, empty)
    write_store(data / empty, np.zeros((0, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8), [], CLASSES,
                stats=none.stats)
    out = tmp_path / "figs"
    code = main(figures_args(ckpt, data, out))
    captured = capsys.readouterr()
    if empty == "test":
        assert code == 2 and captured.err.count("\n") == 1, captured.err
        assert f"{data / 'test'}: the test split holds no images" in captured.err
        assert not out.exists() and captured.out == ""
    else:
        assert code == 0, captured.err
        assert f"figure 4 right skipped: {data / 'train'} holds no images to search" \
            in captured.err
        assert not (out / "fig4_neighbours.png").exists()
        assert "neighbours" not in json.loads((out / "figures.json").read_text())


@pytest.fixture
def top5_layout(monkeypatch):
    """{file name: {"texts": [...], "cells": [...]}} of each PNG saved by matplotlib, each
    cell an image's title, the text under it, and whether that text lies between the image
    and the bars below it (measured on the drawn figure)."""
    import matplotlib.figure
    import matplotlib.text

    drawn: dict[str, dict] = {}
    savefig = matplotlib.figure.Figure.savefig

    def spy(fig, fname, *args, **kwargs):
        result = savefig(fig, fname, *args, **kwargs)  # drawn: the extents are final
        renderer = fig.canvas.get_renderer()
        frames = [(ax, ax.get_window_extent(renderer)) for ax in fig.axes]
        cells = []
        for ax, frame in frames:
            if not ax.images:
                continue
            label = ax.xaxis.label.get_window_extent(renderer)
            below = [f for a, f in frames if not a.images and abs(f.x0 - frame.x0) < 20
                     and f.y1 < frame.y0]
            if not below:  # not a cell of figure 4 left
                continue
            bars = max(below, key=lambda f: f.y1)
            cells.append({"title": ax.get_title(), "under": ax.xaxis.label.get_text(),
                          "between": bars.y1 <= label.y0 and label.y1 <= frame.y0})
        name = os.path.basename(getattr(fname, "name", str(fname)))
        drawn[name] = {"cells": cells, "texts": [
            t.get_text() for t in fig.findobj(matplotlib.text.Text) if t.get_text()]}
        return result

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", spy)
    return drawn


def patches(images: np.ndarray, crops: int) -> np.ndarray:
    """Section 4.1's test patches of (N, 256, 256, 3) images, image-major, (N * crops, 3,
    224, 224): the centre one, or the four corners, the centre and their reflections."""
    edge, off = IMAGE_SIZE - CROP_SIZE, (IMAGE_SIZE - CROP_SIZE) // 2
    corners = [(off, off)] if crops == 1 else [(0, 0), (0, edge), (edge, 0), (edge, edge),
                                               (off, off)]
    out = []
    for image in images:
        views = [image[y:y + CROP_SIZE, x:x + CROP_SIZE] for y, x in corners]
        views += [v[:, ::-1] for v in views] if crops == 10 else []
        out += [v.transpose(2, 0, 1) for v in views]
    return np.ascontiguousarray(np.stack(out))


@pytest.mark.parametrize("crops", [1, 10])
def test_figure4_left_shows_the_softmax_averaged_over_the_stated_patches(
        run_folder, tmp_path, top5_layout, crops):
    """Each image's five labels and probabilities, recomputed with numpy (the patches cut by
    hand, softmax of each patch's logits, averaged over the patches), are what the figure
    draws and figures.json records; the figure states which patches; the correct label is
    written under each image (caption of figure 4), not above it."""
    root, ckpt, model = run_folder
    out = tmp_path / "figs"
    assert main(figures_args(ckpt, root, out, "--images", "4", "--crops", str(crops))) == 0
    top5 = json.loads((out / "figures.json").read_text())["top5"]
    test, train = open_split(root, "test"), open_split(root, "train")
    indices = top5["indices"]
    names = class_labels(CLASSES, 22)
    drawn = top5_layout[next(n for n in top5_layout if "fig4_top5" in n)]
    assert [c["under"] for c in drawn["cells"]] == [names[k] for k in test.labels[indices]]
    assert all(c["title"] == "" and c["between"] for c in drawn["cells"])
    stated = "softmax of the centre 224x224 patch" if crops == 1 else \
        "softmax averaged over 10 224x224 patches"
    assert any(stated in t for t in drawn["texts"]) and stated in top5["protocol"]
    assert len(indices) == 4 and [r["index"] for r in top5["images"]] == indices
    x = test.read(np.asarray(indices)).astype(np.float32) - train.stats["mean_image"]
    with torch.no_grad():
        logits = model.eval()(torch.from_numpy(patches(x, crops))).double().numpy()
    e = np.exp(logits - logits.max(1, keepdims=True))
    probs = (e / e.sum(1, keepdims=True)).reshape(4, crops, -1).mean(1)
    gaps = np.diff(np.sort(probs, axis=1), axis=1)
    assert (gaps > 1e-4).all()  # no near-ties: the order below is the numbers' own
    for row, p, label in zip(top5["images"], probs, test.labels[indices], strict=True):
        want = np.argsort(-p)[:5]
        assert [k for k, _ in row["top5"]] == want.tolist()
        np.testing.assert_allclose([q for _, q in row["top5"]], p[want], rtol=1e-4)
        assert row["label"] == label and row["label_prob"] == pytest.approx(p[label], rel=1e-4)
        for k in want:
            assert f"{names[k]} {p[k]:.2g}" in drawn["texts"]


RESIDENT_CACHE = """
import sys
from pathlib import Path
import torch
from alexnet.figures.neighbours import cached_chunks, nearest_neighbours, read_cache

COLS, CHUNK = 2048, 256
folder, mode = Path(sys.argv[1]), sys.argv[2]
peaks = []
for rows in (int(n) for n in sys.argv[3:]):
    path = folder / f"fc7-{rows}.npy"
    if mode == "write":
        chunks = (torch.full((min(CHUNK, rows - i), COLS), float(i)) for i in range(0, rows, CHUNK))
        chunks = cached_chunks(chunks, path, rows, {})
    else:
        chunks = read_cache(path, rows, {}, chunk=CHUNK)
    nearest_neighbours(torch.zeros(5, COLS), chunks, 6)
    # this process's own peak (ru_maxrss would start at the parent's, which forked it)
    status = Path("/proc/self/status").read_text().split("VmHWM:")[1]
    peaks.append(int(status.split()[0]) * 1024)
print(*peaks)
"""


def test_the_feature_cache_is_written_and_read_in_bounded_resident_memory(tmp_path):
    """The fc7 cache of ImageNet's training set is 1.28M x 4096 float32 = 21 GB. It was
    written and read through a memory map, whose touched pages count as the process's
    resident memory: the peak grew with the file (21 GB by the end of a pass). Written and
    read a chunk at a time, the peak for a file four times as large stays where it was."""
    if not os.path.exists("/proc/self/status"):
        pytest.skip("the peak resident memory of a process is read from Linux's /proc")
    rows = 4096  # x 2048 float32 = 32 MB; the second file is 128 MB
    file_bytes = rows * 2048 * 4
    for mode in ("write", "read"):
        done = subprocess.run([sys.executable, "-c", RESIDENT_CACHE, str(tmp_path), mode,
                               str(rows), str(4 * rows)], capture_output=True, text=True,
                              check=False)
        assert done.returncode == 0, done.stderr
        small, large = map(int, done.stdout.split())
        # through a map the peak grew by the 96 MB added (97 MB measured); chunk by chunk by
        # 4-5 MB, 19 MB once in a clean-clone CI run (the allocator's arenas): half of it
        assert large - small < 3 * file_bytes / 2, (mode, small, large)
    np.testing.assert_array_equal(np.load(tmp_path / "fc7-4096.npy")[::256, 0],
                                  np.arange(0, 4096, 256))
