"""Wrong computations of `alexnet prepare` and its store that the other tests let through (found
by a mutation audit of prepare.py, workers.py and store.py), each checked against an independent
computation: PIL's resize-then-crop done here, NumPy over every stored pixel, PIL's JPEG encoder."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from alexnet.data import open_split, write_store
from alexnet.data.prepare import prepare
from alexnet.data.store import MEAN_IMAGE, OWN_MEAN_IMAGE, SplitWriter

SIZE = 16
# (width, height) of the source images: both orientations, odd margins, shrinks by up to 9x
# (where PIL's reducing_gap would change the pixels), and one already SIZE on its short side.
SHAPES = [(150, 100), (61, 97), (301, 97), (16, 23), (97, 61), (144, 144), (40, 150)]


def noise(width: int, height: int, seed: int) -> np.ndarray:
    """Random RGB pixels with correlated channels: a pixel out of place differs by tens of
    levels, and the RGB covariance is not diagonal."""
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    array[..., 1] = array[..., 0] // 2 + array[..., 1] // 2
    return array


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


def jpeg(array: np.ndarray, quality: int) -> bytes:
    """PIL's own encoding of a uint8 (S, S, 3) image at `quality` (its default 4:2:0)."""
    buffer = io.BytesIO()
    Image.fromarray(array, "RGB").save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def resize_then_crop(array: np.ndarray, size: int) -> np.ndarray:
    """torchvision's Resize(size) + CenterCrop(size) with PIL: the whole image resized (shorter
    side to `size`, long side int(size * long / short), antialiased bilinear, no reducing_gap),
    then the window at round((side - size) / 2)."""
    image = Image.fromarray(array)
    w, h = image.size
    new = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
    resized = np.asarray(image.resize(new, Image.BILINEAR))
    top = int(round((resized.shape[0] - size) / 2.0))
    left = int(round((resized.shape[1] - size) / 2.0))
    return resized[top:top + size, left:left + size]


def image_folder(root: Path, splits: dict[str, int]) -> dict[str, tuple[list, list]]:
    """An ImageFolder source (classes a, b, c; `splits[name]` images per class, with empty
    files among them); returns, per split, the source arrays and labels in store order
    (classes sorted, then file names sorted, the empty files left out)."""
    truth: dict[str, tuple[list, list]] = {}
    for s, (split, per_class) in enumerate(splits.items()):
        arrays, labels = [], []
        for k, name in enumerate(["a", "b", "c"]):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                shape = SHAPES[(i + 2 * k + s) % len(SHAPES)]
                array = noise(*shape, seed=100 * s + 10 * k + i)
                (folder / f"{i:02d}.png").write_bytes(png(array))
                arrays.append(array)
                labels.append(k)
                if (i + k) % 3 == 1:  # an unreadable file between two images, in a chunk
                    (folder / f"{i:02d}_x.png").write_bytes(b"")
        truth[split] = (arrays, labels)
    return truth


def assert_stats_of(stats: dict, pixels: np.ndarray) -> None:
    """`stats` are NumPy's over every pixel of `pixels` (uint8 (N, S, S, 3)): the mean image
    and channel mean exactly (integer sums, one float64 division), the population covariance,
    and its eigenpairs in descending order, as columns."""
    flat = pixels.reshape(-1, 3)
    n = len(flat)
    assert np.array_equal(stats["channel_mean"], flat.astype(np.int64).sum(axis=0) / n)
    cov = np.cov(flat.astype(np.float64), rowvar=False, bias=True)
    np.testing.assert_allclose(stats["rgb_cov"], cov, rtol=1e-11)
    val = np.linalg.eigvalsh(cov)[::-1]
    np.testing.assert_allclose(stats["eigval"], val, rtol=1e-9)
    vec = stats["eigvec"]
    np.testing.assert_allclose(cov @ vec, vec * val, atol=1e-7 * val[0])
    np.testing.assert_allclose(vec.T @ vec, np.eye(3), atol=1e-12)


def test_a_resumed_two_worker_store_equals_independent_pixels_labels_and_statistics(tmp_path):
    """Interrupted after two chunks (one process), finished with two: every image is PIL's
    resize-then-crop of its file (at most 1 level apart, the box resampling's rounding), in
    class-then-name order with its label, the empty files skipped; each split's own mean image
    (own_mean_image.npy) is the exact mean of its pixels, and val records train's."""
    truth = image_folder(tmp_path / "src", {"train": 5, "val": 3})
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        prepare(tmp_path / "src", out, size=SIZE, chunk=3, workers=1, _stop_after=2)
    prepare(tmp_path / "src", out, size=SIZE, chunk=3, workers=2)
    stored = {}
    for split, (arrays, labels) in truth.items():
        store = open_split(out, split)
        assert len(store) == len(arrays) and store.labels.tolist() == labels
        pixels = store.read(np.arange(len(store)))
        want = np.stack([resize_then_crop(a, SIZE) for a in arrays])
        assert np.abs(pixels.astype(int) - want.astype(int)).max() <= 1
        assert store.meta["skipped"] == sum((i + k) % 3 == 1 for k in range(3)
                                            for i in range(len(arrays) // 3))
        own_mean = np.load(out / split / OWN_MEAN_IMAGE)
        assert np.array_equal(own_mean, pixels.astype(np.int64).sum(axis=0) / len(pixels))
        stored[split] = pixels
    train_mean = stored["train"].astype(np.int64).sum(axis=0) / len(stored["train"])
    for split in truth:
        assert np.array_equal(np.load(out / split / MEAN_IMAGE), train_mean)
        assert_stats_of(open_split(out, split).stats, stored["train"])


def test_mean_image_is_exact_past_float32s_integers(tmp_path):
    """The per-pixel sums over 80,000 images pass 2^24, beyond which float32 drops units: the
    recorded mean image is the exact integer sum divided once in float64 (NumPy's int64 sum)."""
    rng = np.random.default_rng(5)
    images = rng.integers(200, 256, (80_000, 2, 2, 3), dtype=np.uint8)
    assert images.astype(np.int64).sum(axis=0).max() > 2**24
    store = write_store(tmp_path / "train", images, np.zeros(len(images), np.int64), ["one"],
                        chunk=4096)
    want = images.astype(np.int64).sum(axis=0) / len(images)
    assert np.array_equal(np.load(store.path / MEAN_IMAGE), want)
    assert np.array_equal(np.load(store.path / OWN_MEAN_IMAGE), want)


def test_greyscale_data_have_one_eigenvalue_and_no_negative_ones(tmp_path):
    """R = G = B: the covariance is var * ones(3, 3), whose eigenvalues are 3 var, 0, 0 with
    (1, 1, 1)/sqrt(3) first. LAPACK returns the zeros as +-1e-13; a negative one would make
    the PCA augmentation's sqrt(eigval) NaN, so none may be below 0."""
    rng = np.random.default_rng(0)
    for _ in range(5):
        grey = rng.integers(0, 256, (4, 6, 6, 1), dtype=np.uint8)
        store = write_store(tmp_path / "train", np.repeat(grey, 3, axis=-1),
                            np.zeros(4, np.int64), ["one"])
        val, vec = store.stats["eigval"], store.stats["eigvec"]
        var = grey.astype(np.float64).var()
        assert (val >= 0).all()
        np.testing.assert_allclose(val[0], 3 * var, rtol=1e-12)
        assert val[1] <= 1e-9 * var and val[2] <= 1e-9 * var
        np.testing.assert_allclose(vec[:, 0], np.full(3, 3 ** -0.5), rtol=1e-9)


def test_a_writers_jpegs_are_pils_encoding_at_its_quality(tmp_path):
    """A jpeg split written from pixels (no encoded bytes given): each image's bytes, as
    `encoded` hands them out and `offsets.npy` bounds them, are PIL's encoding at the writer's
    quality, and `read` decodes them as PIL does."""
    images = np.stack([noise(SIZE, SIZE, seed) for seed in range(5)])
    writer = SplitWriter(tmp_path / "train", split="train", image_size=SIZE, classes=["a"],
                         format="jpeg", jpeg_quality=40, checkpoint_seconds=float("inf"))
    writer.add_chunk(images[:3], np.zeros(3, np.int64))
    writer.add_chunk(images[3:], np.zeros(2, np.int64))
    writer.finish()
    store = open_split(tmp_path, "train")
    want = [jpeg(image, 40) for image in images]
    assert [bytes(b) for b in store.encoded(range(5))] == want
    offsets = np.load(tmp_path / "train" / "offsets.npy")
    assert offsets.tolist() == [0, *np.cumsum([len(b) for b in want]).tolist()]
    decoded = np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in want])
    assert np.array_equal(store.read(range(5)), decoded)


def test_a_prepared_jpeg_store_holds_the_raw_stores_pixels_encoded_at_its_quality(tmp_path):
    """`prepare --format jpeg --jpeg-quality 55`: image i's bytes are PIL's encoding, at 55,
    of image i of the raw store of the same source."""
    image_folder(tmp_path / "src", {"train": 2})
    prepare(tmp_path / "src", tmp_path / "raw", size=SIZE, chunk=2, workers=1)
    prepare(tmp_path / "src", tmp_path / "jpg", size=SIZE, chunk=2, workers=1, format="jpeg",
            jpeg_quality=55)
    raw, jpg = open_split(tmp_path / "raw", "train"), open_split(tmp_path / "jpg", "train")
    assert len(jpg) == len(raw) == 6 and jpg.labels.tolist() == raw.labels.tolist()
    pixels = raw.read(range(len(raw)))
    assert [bytes(b) for b in jpg.encoded(range(len(jpg)))] == [jpeg(p, 55) for p in pixels]


def test_a_rebuilt_training_split_gives_its_new_statistics_to_the_others(tmp_path, capsys):
    """A training split deleted and prepared again from a source with one more image: val,
    complete and kept, records the NEW training statistics (NumPy over the new training
    pixels), not those it was written with."""
    image_folder(tmp_path / "src", {"train": 2, "val": 1})
    out = tmp_path / "out"
    prepare(tmp_path / "src", out, size=SIZE, chunk=4, workers=1)
    (tmp_path / "src" / "train" / "b" / "09.png").write_bytes(png(noise(90, 40, seed=99)))
    shutil.rmtree(out / "train")
    capsys.readouterr()
    prepare(tmp_path / "src", out, size=SIZE, chunk=4, workers=1)
    assert f"{out / 'val'}: already complete" in capsys.readouterr().err
    train = open_split(out, "train")
    assert len(train) == 7
    pixels = train.read(range(len(train)))
    val = open_split(out, "val")
    assert_stats_of(val.stats, pixels)
    assert np.array_equal(np.load(out / "val" / MEAN_IMAGE),
                          pixels.astype(np.int64).sum(axis=0) / len(pixels))
