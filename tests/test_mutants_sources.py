"""How sources read real layouts' classes and labels, and the store's and loaders' index
bookkeeping: cases the layout tests leave open (each found by a mutation that survived them).

Every expected label is read off the layout as a person would (the folder's place among the
sorted names, the wnid's place among the sorted wnids), never from the code's own output.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import _images as images_
import numpy as np
import pytest

from alexnet.data import sources
from alexnet.data.loader import EvalLoader
from alexnet.data.sources import Split, hold_out
from alexnet.data.store import write_store

WNIDS = ["n01440764", "n01443537", "n01484850"]  # sorted: labels 0, 1, 2
ILSVRC_IDS = [2, 3, 1]  # the devkit's own numbering, not sorted-wnid order


def _pixels(k: int, seed: int = 0) -> bytes:
    return images_.jpeg(images_.photo(12, 10, k, seed))


def _labels_by_folder(split: Split) -> list[str]:
    """The class folder each image of `split` lies in (its path's parent's name)."""
    return [Path(ref).parent.name for ref in split.refs]


def test_class_order_is_pythons_sorted_names_capitals_first(tmp_path):
    # torchvision's ImageFolder sorts class names as Python sorts strings: capitals first.
    names = ["apple", "Zebra", "banana", "Mango"]
    for k, name in enumerate(names):
        images_.write_files(tmp_path / name, {f"{i}.jpg": _pixels(k, i) for i in range(2)})
    source = sources.detect(tmp_path)
    order = ["Mango", "Zebra", "apple", "banana"]  # code-point order, as sorted() gives
    assert [c["name"] for c in source.classes] == order
    split = source.splits["train"]
    assert list(split.labels) == [order.index(n) for n in _labels_by_folder(split)]


def test_image_extensions_are_matched_in_any_letter_case(tmp_path):
    files = {"a.PNG": images_.png(images_.photo(9, 9, 0)), "b.Jpg": _pixels(0),
             "c.JPEG": _pixels(0, 1), "d.jpeg": _pixels(0, 2), "e.TIFF": _pixels(0, 3)}
    for name in ("one", "two"):
        images_.write_files(tmp_path / name, files)
    split = sources.detect(tmp_path).splits["train"]
    assert sorted(Path(r).name for r in split.refs) == sorted(list(files) * 2)
    assert split.unused == []


def test_a_val_folder_lacking_a_class_keeps_the_training_labels(tmp_path):
    for k, name in enumerate(["ant", "bee", "cow"]):
        images_.write_files(tmp_path / "train" / name, {f"{i}.jpg": _pixels(k, i)
                                                        for i in range(2)})
    for k, name in ((0, "ant"), (2, "cow")):  # no "bee" in val
        images_.write_files(tmp_path / "val" / name, {f"{i}.jpg": _pixels(k, i)
                                                      for i in range(3)})
    val = sources.detect(tmp_path).splits["val"]
    order = ["ant", "bee", "cow"]
    assert list(val.labels) == [order.index(n) for n in _labels_by_folder(val)]
    assert list(val.labels) == [0, 0, 0, 2, 2, 2]


def test_splits_without_train_take_every_splits_class_folders(tmp_path):
    for split, names in (("val", ["bee", "cow"]), ("test", ["ant", "bee"])):
        for name in names:
            images_.write_files(tmp_path / split / name, {"0.jpg": _pixels(0)})
    source = sources.detect(tmp_path)
    order = ["ant", "bee", "cow"]
    assert [c["name"] for c in source.classes] == order
    for split in source.splits.values():
        assert list(split.labels) == [order.index(n) for n in _labels_by_folder(split)]


def _devkit(root: Path, truth: list[int]) -> None:
    """An ILSVRC-2012 devkit folder: meta.mat (rows in devkit-id order, not sorted-wnid
    order) and a ground truth of ILSVRC ids, one line per val image."""
    leaves = sorted([(i, w, f"class {w}") for i, w in zip(ILSVRC_IDS, WNIDS, strict=True)])
    images_.write_files(root / "ILSVRC2012_devkit_t12" / "data", {
        "meta.mat": images_.meta_mat(leaves),
        "ILSVRC2012_validation_ground_truth.txt":
            images_.ground_truth([ILSVRC_IDS[k] for k in truth])})


def test_ilsvrc_val_already_sorted_into_wnid_folders(tmp_path):
    # valprep.sh moves each val image into val/<wnid>/: the folder says its class.
    truth = [2, 0, 1, 2, 0]
    _devkit(tmp_path, truth)
    for i, k in enumerate(truth):
        images_.write_files(tmp_path / "val" / WNIDS[k],
                            {f"ILSVRC2012_val_{i + 1:08d}.JPEG": _pixels(k, i)})
    val = sources.detect(tmp_path).splits["val"]
    assert len(val.refs) == len(truth)
    assert list(val.labels) == [WNIDS.index(n) for n in _labels_by_folder(val)]
    by_number = {int(Path(r).stem[-8:]) - 1: int(label)
                 for r, label in zip(val.refs, val.labels, strict=True)}
    assert [by_number[i] for i in range(len(truth))] == truth


def test_a_per_class_tar_beside_its_extracted_folder_is_read_once(tmp_path):
    _devkit(tmp_path, [0])
    for k, wnid in enumerate(WNIDS):
        files = {f"{wnid}_{i}.JPEG": _pixels(k, i) for i in range(2)}
        images_.write_files(tmp_path / "train" / wnid, files)
        if k == 1:  # the archive it was extracted from, left beside it
            images_.write_tar(tmp_path / "train" / f"{wnid}.tar", files)
    train = sources.detect(tmp_path).splits["train"]
    assert len(train.refs) == 6
    assert list(train.labels) == [0, 0, 1, 1, 2, 2]


def test_a_name_held_twice_in_a_tar_is_one_image_its_last_copy(tmp_path):
    # `tar -rf` appends a newer copy under the same name; extracting keeps the last one.
    _devkit(tmp_path, [0, 1])
    old, new, other = _pixels(0), _pixels(1, 5), _pixels(1, 6)
    archive = tmp_path / "ILSVRC2012_img_val.tar"
    with tarfile.open(archive, "w") as tar:
        for name, data in (("ILSVRC2012_val_00000001.JPEG", old),
                           ("ILSVRC2012_val_00000002.JPEG", other),
                           ("ILSVRC2012_val_00000001.JPEG", new)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    val = sources.detect(tmp_path).splits["val"]
    assert [r.member for r in val.refs] == ["ILSVRC2012_val_00000001.JPEG",
                                            "ILSVRC2012_val_00000002.JPEG"]
    assert list(val.labels) == [0, 1]
    with open(archive, "rb") as f:
        f.seek(val.refs[0].offset)
        assert f.read(val.refs[0].size) == new
    # the same for a class archive held twice in the training tar of per-class tars
    first = images_.tar_bytes({f"{WNIDS[0]}_0.JPEG": old})
    second = images_.tar_bytes({f"{WNIDS[0]}_{i}.JPEG": _pixels(0, i) for i in (1, 2)})
    with tarfile.open(tmp_path / "ILSVRC2012_img_train.tar", "w") as tar:
        for wnid, data in ((WNIDS[0], first),
                           (WNIDS[1], images_.tar_bytes({f"{WNIDS[1]}_0.JPEG": other})),
                           (WNIDS[0], second)):
            info = tarfile.TarInfo(f"{wnid}.tar")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    train = sources.detect(tmp_path).splits["train"]
    assert [r.member for r in train.refs] == [f"{WNIDS[0]}_1.JPEG", f"{WNIDS[0]}_2.JPEG",
                                              f"{WNIDS[1]}_0.JPEG"]
    assert list(train.labels) == [0, 0, 1]


def test_hold_out_rounds_halves_up_and_draws_each_class_from_seed_and_class():
    # docs/data.md: floor(F n + 0.5) per class (5 * 0.5 = 2.5 gives 3, not round()'s 2),
    # drawn by default_rng([seed, c]) alone, so another class's images change nothing.
    labels = np.repeat(np.arange(3), [5, 5, 7])
    split = Split("train", [f"f{i}" for i in range(len(labels))], labels)
    val = hold_out(split, 0.5, seed=11, num_classes=3)[1]
    assert list(np.bincount(val.labels, minlength=3)) == [3, 3, 4]
    for c in range(3):
        members = np.flatnonzero(labels == c)
        count = int(np.floor(0.5 * len(members) + 0.5))
        drawn = np.random.default_rng([11, c]).choice(members, count, replace=False)
        assert sorted(r for r, y in zip(val.refs, val.labels, strict=True) if y == c) == \
            sorted(f"f{i}" for i in drawn)
    fewer = np.flatnonzero(labels != 0)  # class 0 removed: classes 1 and 2 draw the same
    smaller = Split("train", [f"f{i}" for i in fewer], labels[fewer])
    kept = hold_out(smaller, 0.5, seed=11, num_classes=3)[1]
    assert sorted(kept.refs) == sorted(r for r, y in zip(val.refs, val.labels, strict=True)
                                       if y != 0)


@pytest.mark.parametrize("format", ["raw", "jpeg"])
def test_negative_indices_are_the_images_from_the_end(tmp_path, format):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    store = write_store(tmp_path / "train", images, [0, 1, 0, 1, 1], ["a", "b"], format=format)
    np.testing.assert_array_equal(store.read([-1, -5]), store.read([4, 0]))
    if format == "jpeg":
        got = [bytes(b) for b in store.encoded([-1, -2])]
        assert got == [bytes(b) for b in store.encoded([4, 3])] and all(got)


def test_eval_loader_labels_follow_its_indices_order(tmp_path):
    n = 12
    images = np.zeros((n, 8, 8, 3), np.uint8)
    images[..., 0] = np.arange(n, dtype=np.uint8)[:, None, None]  # channel 0 says the index
    labels = (np.arange(n) * 5) % 7
    store = write_store(tmp_path / "val", images, labels, [f"c{k}" for k in range(7)])
    indices = [9, 3, 11, 0, 7]
    got_ids, got_labels = [], []
    for x, y in EvalLoader(store, 2, crop=8, mean="none", indices=indices):
        got_ids += [int(v) for v in x[:, 0, 0, 0]]
        got_labels += y.tolist()
    assert got_ids == indices
    assert got_labels == [int(labels[i]) for i in indices]
