"""Argument guards of the augment functions and the loaders: inputs that used to give silent
wrong batches (non-square images, windows past the edge, integer flip masks, fractional batch
sizes, float or boolean indices) are refused with a clear error."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from alexnet.data import augment
from alexnet.data.loader import EvalLoader, TrainLoader
from alexnet.data.store import Store, write_store
from alexnet.errors import UserError

N, SIZE = 6, 8
PLAIN = {"mean": "none"}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (N, SIZE, SIZE, 3), dtype=np.uint8)
    return write_store(tmp_path_factory.mktemp("guards") / "train", images, np.arange(N) % 3,
                       ["a", "b", "c"])


def batch(*shape: int) -> torch.Tensor:
    return torch.arange(int(np.prod(shape)), dtype=torch.float32).view(shape)


@pytest.mark.parametrize("shape", [(2, 3, 40, 60), (2, 40, 60, 3)])
def test_non_square_images_are_refused(shape: tuple[int, ...]) -> None:
    """A 40x60 batch used to pass the shape check and give a window that was neither the
    [10:30, 10:30] nor the [10:30, 20:40] one (rows of 40 read from rows of 60)."""
    images = batch(*shape)
    gen = torch.Generator().manual_seed(0)
    for make in (lambda: augment.centre_crop(images, 20), lambda: augment.ten_crops(images, 20),
                 lambda: augment.random_crop(images, gen, 20),
                 lambda: augment.crop(images, torch.tensor([0, 0]), torch.tensor([0, 0]), 20)):
        with pytest.raises(ValueError, match="square"):
            make()
    u8 = images.to(torch.uint8)
    with pytest.raises(ValueError, match="square"):
        augment.eval_batch(u8, {}, crop_size=20, mean="none", backend="torch")
    with pytest.raises(ValueError, match="square"):
        augment.train_batch(u8, gen, {}, crop_size=20, pca=False, mean="none", backend="torch")


def test_square_crops_are_unchanged() -> None:
    """The guards leave valid crops as they were: the centre window, read in place."""
    images = batch(2, 3, 40, 40)
    assert torch.equal(augment.centre_crop(images, 20), images[:, :, 10:30, 10:30])
    nhwc = batch(2, 40, 40, 3)
    assert torch.equal(augment.centre_crop(nhwc, 20), nhwc[:, 10:30, 10:30])


@pytest.mark.parametrize("top, left", [([30, 0], [0, 0]), ([0, 0], [0, 21]),
                                       ([-1, 0], [0, 0]), ([0, 0], [0, -3])])
def test_crop_offsets_outside_the_image_are_refused(top: list[int], left: list[int]) -> None:
    """crop(top=30) of a 40 image with size 20 ran past the edge into the next channel plane
    without an error; offsets must lie in 0..S - size."""
    for images in (batch(2, 3, 40, 40), batch(2, 40, 40, 3)):
        with pytest.raises(ValueError, match="must lie in 0..20"):
            augment.crop(images, torch.tensor(top), torch.tensor(left), 20)


def test_crop_sources_outside_the_batch_are_refused() -> None:
    images = batch(2, 3, 40, 40)
    with pytest.raises(ValueError, match="source"):
        augment.crop(images, torch.tensor([0]), torch.tensor([0]), 20, source=torch.tensor([2]))


def test_crop_at_the_last_offset_is_allowed() -> None:
    images = batch(2, 3, 40, 40)
    out = augment.crop(images, torch.tensor([20, 0]), torch.tensor([0, 20]), 20)
    assert torch.equal(out[0], images[0, :, 20:, :20])
    assert torch.equal(out[1], images[1, :, :20, 20:])


def test_integer_flip_masks_are_refused() -> None:
    """flip_images(imgs, tensor([1, 0])) flipped both images on the CPU (read as indices)
    while CUDA's torch.where flipped image 0 only: a bool mask is required."""
    images = batch(2, 3, 4, 4)
    for bad in (torch.tensor([1, 0]), torch.tensor([1.0, 0.0]), torch.tensor([True])):
        with pytest.raises(ValueError, match="flip"):
            augment.flip_images(images, bad)
    with pytest.raises(ValueError, match="flip"):
        augment.crop(images, torch.tensor([0, 0]), torch.tensor([0, 0]), 2, torch.tensor([1, 0]))
    out = augment.flip_images(images, torch.tensor([True, False]))
    assert torch.equal(out[0], images[0].flip(2)) and torch.equal(out[1], images[1])


@pytest.mark.parametrize("size", [2.5, True, 2.0, "2"])
def test_batch_size_must_be_an_int(store: Store, size: object) -> None:
    """TrainLoader(store, 2.5) and EvalLoader(store, 2.5) gave batches of 2, True of 1."""
    with pytest.raises(UserError, match="batch size"):
        TrainLoader(store, size, crop=SIZE, pca=False, prefetch=0,  # type: ignore[arg-type]
                    **PLAIN)
    with pytest.raises(UserError, match="batch size"):
        EvalLoader(store, size, crop=SIZE, prefetch=0, **PLAIN)  # type: ignore[arg-type]


def test_numpy_int_batch_sizes_still_work(store: Store) -> None:
    loader = EvalLoader(store, np.int64(4), crop=SIZE, prefetch=0, **PLAIN)
    assert [len(y) for _, y in loader] == [4, 2]


@pytest.mark.parametrize("bad", [[1.7, 0.2], np.array([True, False] * 3), [[0, 1]]])
def test_eval_indices_must_be_integers(store: Store, bad: object) -> None:
    """indices=[1.7, 0.2] were truncated to 1 and 0, and a boolean mask read as indices 0/1."""
    with pytest.raises(UserError, match="indices"):
        EvalLoader(store, 2, crop=SIZE, prefetch=0, indices=bad,  # type: ignore[arg-type]
                   **PLAIN)


def test_eval_integer_indices_still_work(store: Store) -> None:
    for good, want in (([3, 1], [3, 1]), (range(2), [0, 1]), (torch.tensor([5]), [5]),
                       ([], [])):
        loader = EvalLoader(store, 2, crop=SIZE, prefetch=0,  # type: ignore[arg-type]
                            indices=good, **PLAIN)
        assert loader.order.tolist() == want
