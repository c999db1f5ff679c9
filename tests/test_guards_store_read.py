"""Guards of a store's read side: `Store.read` refuses indices it would misread (a boolean
mask, floats, out of range) in the loader's words; non-finite statistics and a damaged
offsets.npy are refused when a split is opened, in one line naming the file (and field), and
a jpeg image that does not decode is named without a memory address."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_mutants_store import CLASSES, _images, _store

from alexnet.data import Store, write_store
from alexnet.data import loader as loader_module
from alexnet.data import store as store_module
from alexnet.data.loader import EvalLoader, TrainLoader
from alexnet.data.store import (
    HEADER,
    JPEG,
    MEAN_IMAGE,
    OFFSETS,
    OWN_MEAN_IMAGE,
    RERUN,
    split_status,
)
from alexnet.errors import UserError

N = 6


def _message(call) -> str:
    """The one-line UserError message of `call()`."""
    with pytest.raises(UserError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message, message
    return message


def _refusal(path: Path) -> str:
    """The one-line UserError of opening split `path`, which ends with the advice to rerun."""
    message = _message(lambda: Store(path))
    assert message.endswith(f"; {RERUN}"), message
    return message


# ----------------------------------------------------------------------------- indices


@pytest.mark.parametrize("fmt", ["raw", "jpeg"])
def test_read_refuses_a_boolean_mask_in_the_loaders_words(tmp_path, fmt) -> None:
    """A mask was read as the indices 0 and 1 (N images of them), not the images selected."""
    store = _store(tmp_path, fmt)
    mask = store.labels == store.labels[0]
    for call in (lambda: store.read(mask), lambda: EvalLoader(store, 2, crop=8, mean="none",
                                                               indices=mask)):
        assert _message(call) == ("indices must be integers, got bool (a boolean mask: pass "
                                  "np.flatnonzero(mask))")
    np.testing.assert_array_equal(store.read(np.flatnonzero(mask)),
                                  store.read(np.arange(N))[mask])


@pytest.mark.parametrize("fmt", ["raw", "jpeg"])
def test_read_refuses_float_indices(tmp_path, fmt) -> None:
    """0.9 and 2.7 were truncated to the images 0 and 2 without a word."""
    store = _store(tmp_path, fmt)
    assert _message(lambda: store.read(np.array([0.9, 2.7]))) == \
        "indices must be integers, got float64"
    assert _message(lambda: store.read([1.0])) == "indices must be integers, got float64"
    if fmt == "jpeg":
        assert _message(lambda: store.encoded([0.5])) == "indices must be integers, got float64"


@pytest.mark.parametrize("fmt", ["raw", "jpeg"])
def test_read_refuses_indices_out_of_range_but_reads_negatives_from_the_end(tmp_path,
                                                                             fmt) -> None:
    """Store.read takes -N..N-1 (Python's rule, as `store[-1]`); the error is a UserError
    (and still an IndexError) naming the range. EvalLoader keeps its rule, 0..N-1."""
    store = _store(tmp_path, fmt)
    for bad in ([N], [0, -N - 1], np.array([2**63 - 1]), np.array([2**64 - 1], np.uint64)):
        with pytest.raises(IndexError):
            store.read(bad)
        assert _message(lambda bad=bad: store.read(bad)) == f"indices must lie in -{N}..{N - 1}"
    np.testing.assert_array_equal(store.read([-1, -N]), store.read([N - 1, 0]))
    assert _message(lambda: EvalLoader(store, 2, crop=8, mean="none", indices=[-1])) == \
        f"indices must lie in 0..{N - 1}"
    assert store.read([]).shape == (0, 8, 8, 3)


def test_read_refuses_indices_that_are_not_one_dimensional(tmp_path) -> None:
    """A (2, 2) array was flattened into 4 images; `read` returns (B, S, S, 3) for 1-D."""
    store = _store(tmp_path)
    assert _message(lambda: store.read(np.zeros((2, 2), np.int64))) == \
        "indices: expected a 1-D sequence of store indices, got shape (2, 2)"


def test_the_loader_takes_the_stores_check_of_indices() -> None:
    """One check, in the lower module: the loader imports it rather than keeping its own."""
    assert loader_module.check_indices is store_module.check_indices


# ----------------------------------------------------------------------------- statistics


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_non_finite_mean_image_is_refused_naming_the_file(tmp_path, bad) -> None:
    """A NaN mean image opened and made every batch NaN (training stopped at 'lower
    optim.lr'); prepare rebuilds such a split (split_status calls it damaged)."""
    path = _store(tmp_path).path
    mean = np.load(path / MEAN_IMAGE)
    mean[3, 2, 1] = bad
    np.save(path / MEAN_IMAGE, mean)
    assert _refusal(path).startswith(f"{path / MEAN_IMAGE}: a non-finite value (")
    assert split_status(path, None)[1].startswith(f"{path / MEAN_IMAGE}: a non-finite value")


def test_a_non_finite_own_mean_image_is_damage_to_prepare(tmp_path) -> None:
    path = _store(tmp_path).path
    own = np.load(path / OWN_MEAN_IMAGE)
    own[0, 0, 0] = np.nan
    np.save(path / OWN_MEAN_IMAGE, own)
    assert split_status(path, None) == (None, f"{path / OWN_MEAN_IMAGE}: a non-finite value "
                                              "(nan)")


@pytest.mark.parametrize("key", ["channel_mean", "rgb_cov", "eigval", "eigvec"])
@pytest.mark.parametrize("section", ["stats", "own_stats"])
def test_non_finite_header_statistics_are_refused_naming_the_field(tmp_path, key,
                                                                   section) -> None:
    path = _store(tmp_path).path
    for bad in (float("nan"), float("inf")):
        meta = json.loads((path / HEADER).read_text())
        value = np.asarray(meta[section][key], np.float64)
        value.reshape(-1)[1] = bad
        meta[section][key] = value.tolist()
        (path / HEADER).write_text(json.dumps(meta))
        assert _refusal(path) == (f"{path / HEADER}: damaged store header (`{section}` has a "
                                  f"non-finite `{key}`); {RERUN}")


@pytest.mark.parametrize("scale", [float("nan"), float("inf")])
def test_a_non_finite_pca_scale_is_refused(tmp_path, scale) -> None:
    """nan gave NaN batches while -1.0 was refused."""
    store = _store(tmp_path)
    assert _message(lambda: TrainLoader(store, 2, crop=8, pca_scale=scale)) == \
        f"pca_scale {scale}: must be a finite number >= 0"
    assert _message(lambda: TrainLoader(store, 2, crop=8, pca_scale=-1.0)) == \
        "pca_scale -1.0: must be >= 0"


# ----------------------------------------------------------------------------- offsets


def _jpeg_store(tmp_path: Path) -> tuple[Path, np.ndarray]:
    images, labels = _images(N, 16)
    store = write_store(tmp_path / "train", images, labels, CLASSES, format="jpeg")
    return store.path, np.load(store.path / OFFSETS)


def _with_offsets(path: Path, offsets: np.ndarray) -> str:
    np.save(path / OFFSETS, offsets)
    return _refusal(path)


def test_offsets_that_do_not_start_at_0_are_refused_naming_offsets_npy(tmp_path) -> None:
    path, offsets = _jpeg_store(tmp_path)
    for first in (-5, 3):
        bad = offsets.copy()
        bad[0] = first
        assert _with_offsets(path, bad) == (f"{path / OFFSETS}: the first offset is {first}, "
                                            f"not 0; {RERUN}")


def test_offsets_out_of_order_are_refused_naming_offsets_npy(tmp_path) -> None:
    """Swapped or repeated offsets opened and failed at read as a damaged image 5; every
    image the writer records is a JPEG of at least a few bytes, so offsets strictly rise."""
    path, offsets = _jpeg_store(tmp_path)
    swapped = offsets.copy()
    swapped[[5, 6]] = offsets[[6, 5]]
    repeated = offsets.copy()
    repeated[6] = offsets[5]
    for bad in (swapped, repeated):
        assert _with_offsets(path, bad) == (
            f"{path / OFFSETS}: offsets do not rise at image 5 ({bad[5]} then {bad[6]}); "
            f"{RERUN}")


def test_a_last_offset_past_the_pixel_file_names_offsets_npy(tmp_path) -> None:
    """The expected size comes from offsets.npy, not from the header."""
    path, offsets = _jpeg_store(tmp_path)
    bad = offsets.copy()
    bad[-1] += 1000
    assert _with_offsets(path, bad) == (f"{path}: pixel file holds {offsets[-1]} bytes, "
                                        f"{OFFSETS} says {bad[-1]}; {RERUN}")
    np.save(path / OFFSETS, offsets)
    with open(path / JPEG, "ab") as f:
        f.write(b"\0")
    assert _refusal(path) == (f"{path}: pixel file holds {offsets[-1] + 1} bytes, {OFFSETS} "
                              f"says {offsets[-1]}; {RERUN}")


def test_an_image_that_does_not_decode_is_named_without_a_memory_address(tmp_path) -> None:
    """PIL says 'cannot identify image file <_io.BytesIO object at 0x7f...>'."""
    path, offsets = _jpeg_store(tmp_path)
    with open(path / JPEG, "r+b") as f:  # same size: opening cannot tell
        f.seek(int(offsets[2]))
        f.write(bytes(int(offsets[3] - offsets[2])))
    store = Store(path)
    message = _message(lambda: store.read([2]))
    assert "0x" not in message and " at " not in message, message
    assert message.startswith(f"{path}: image 2 of the store's 'train' split does not decode "
                              "(cannot identify image file); its bytes are damaged"), message
