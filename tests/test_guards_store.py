"""Guards of a store's consistency: splits that must agree (classes, image size), a resumed
split whose source files changed, damaged header fields, and options refused before anything
is written. Each ends in one line naming the file or option, never a traceback."""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import _images as images_
import numpy as np
import pytest
from test_prepare_errors import _idx_source

from alexnet.cli import main as cli_main
from alexnet.data import open_split
from alexnet.data.prepare import prepare
from alexnet.data.store import HEADER, write_error
from alexnet.errors import UserError


def _source(root: Path, split_classes: dict[str, list[str]], count: int = 2) -> Path:
    """root/SPLIT/CLASS/ of `count` small PNGs each, class k drawn in colour k."""
    for split, names in split_classes.items():
        for k, name in enumerate(names):
            images_.write_files(root / split / name, {
                f"{i}.png": images_.png(images_.photo(20, 16, k % 6, i)) for i in range(count)})
    return root


def _prepare(src: Path, out: Path, **options) -> dict:
    return prepare(src, out, size=options.pop("size", 16), workers=1, **options)


def _one_line(capsys: pytest.CaptureFixture[str]) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines()
             if "error:" in line or "Traceback" in line]
    assert len(lines) == 1 and "alexnet prepare: error:" in lines[0], lines
    return lines[0]


def test_a_split_with_another_class_list_is_refused_by_prepare(tmp_path):
    src = _source(tmp_path / "src", {"train": ["cat", "dog", "fox"], "val": ["cat"]})
    out = tmp_path / "s"
    _prepare(src, out, splits="train")
    _source(src, {"train": ["ant"]})
    with pytest.raises(UserError, match="classes") as err:
        _prepare(src, out, splits="val")
    assert str(out / "train" / HEADER) in str(err.value) and "\n" not in str(err.value)
    assert not (out / "val" / HEADER).exists()


def test_reading_splits_whose_class_lists_differ_names_both_headers(tmp_path):
    src = _source(tmp_path / "src", {"train": ["cat", "dog"], "val": ["cat", "dog"]})
    out = tmp_path / "s"
    _prepare(src, out)
    header = out / "val" / HEADER
    meta = json.loads(header.read_text())
    meta["classes"] = [{"wnid": "dog", "name": "dog"}, {"wnid": "cat", "name": "cat"}]
    header.write_text(json.dumps(meta))
    with pytest.raises(UserError, match="classes") as err:
        open_split(out, "val")
    assert str(header) in str(err.value) and str(out / "train" / HEADER) in str(err.value)


def test_a_split_of_another_image_size_is_refused_by_prepare(tmp_path):
    src = _source(tmp_path / "src", {"train": ["cat", "dog"], "val": ["cat", "dog"]})
    out = tmp_path / "s"
    _prepare(src, out, splits="train", size=16)
    with pytest.raises(UserError, match="--size 12") as err:
        _prepare(src, out, splits="val", size=12)
    assert "16" in str(err.value)
    assert not (out / "val" / HEADER).exists()
    open_split(out, "train")


def test_resuming_after_the_source_files_changed_is_refused(tmp_path):
    src = _source(tmp_path / "src", {"train": ["cat", "dog"]}, count=4)
    out = tmp_path / "s"
    with pytest.raises(KeyboardInterrupt):
        prepare(src, out, size=16, workers=1, chunk=2, _stop_after=1)
    (src / "train" / "cat" / "0.png").rename(src / "train" / "cat" / "9.png")
    with pytest.raises(UserError, match="source files"):
        prepare(src, out, size=16, workers=1, chunk=2)


@pytest.mark.parametrize("edit", [
    lambda meta: meta.pop("classes"),
    lambda meta: meta.update(image_size=None),
    lambda meta: meta["stats"].update(eigval="x"),
])
def test_a_damaged_header_field_is_one_line_and_prepare_rebuilds_it(tmp_path, capsys, edit):
    src = _source(tmp_path / "src", {"train": ["cat", "dog"]})
    out = tmp_path / "s"
    _prepare(src, out)
    header = out / "train" / HEADER
    meta = json.loads(header.read_text())
    edit(meta)
    header.write_text(json.dumps(meta))
    with pytest.raises(UserError, match="header") as err:
        open_split(out, "train")
    assert str(header) in str(err.value)
    capsys.readouterr()
    _prepare(src, out)
    assert "rebuilding the damaged split" in capsys.readouterr().err
    assert len(open_split(out, "train")) == 4


@pytest.mark.parametrize(("args", "option"), [
    (["--val-fraction", "0.2", "--val-seed", "-1"], "--val-seed"),
    (["--size", "100000"], "--size"),
])
def test_bad_options_are_one_line_and_write_nothing(tmp_path, capsys, args, option):
    src = _source(tmp_path / "src", {"train": ["cat", "dog"]})
    out = tmp_path / "o"
    assert cli_main(["prepare", str(src), str(out), "--workers", "1", *args]) == 2
    assert option in _one_line(capsys)
    assert not out.exists()


def test_an_empty_out_is_refused(tmp_path, capsys, monkeypatch):
    src = _source(tmp_path / "src", {"train": ["cat", "dog"]})
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert cli_main(["prepare", str(src), "", "--size", "16", "--workers", "1"]) == 2
    assert "OUT" in _one_line(capsys)
    assert list(work.iterdir()) == []


def test_folders_beside_train_that_are_not_splits_get_a_notice(tmp_path, capsys):
    src = _source(tmp_path / "src", {"train": ["cat", "dog"], "validation": ["cat"],
                                     "extra": ["cat"]})
    _prepare(src, tmp_path / "s")
    notices = [line for line in capsys.readouterr().err.splitlines() if "not read" in line]
    assert len(notices) == 1 and "validation" in notices[0] and "extra" in notices[0]


def test_a_split_folder_that_is_a_file_is_named(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "train").write_text("keep me")
    try:
        (out / "train").mkdir()
    except FileExistsError as err:
        message = str(write_error(out, err))
    assert f"{out / 'train'} must be a folder" in message


def test_a_split_folder_that_is_a_file_is_named_by_prepare(tmp_path, capsys):
    src = _source(tmp_path / "src", {"train": ["cat", "dog"]})
    out = tmp_path / "out"
    out.mkdir()
    (out / "train").write_text("keep me")
    assert cli_main(["prepare", str(src), str(out), "--size", "16", "--workers", "1"]) == 2
    assert f"{out / 'train'} must be a folder" in _one_line(capsys)
    assert (out / "train").read_text() == "keep me"


def test_a_float_image_in_0_to_1_is_scaled_not_stored_black(tmp_path) -> None:
    """A mode-F TIFF of values 0..1 (PIL's float images, scientific TIFFs) was rounded to
    levels 0 and 1: stored black, without a word."""
    from PIL import Image

    from alexnet.data.preprocess import _to_rgb

    values = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    Image.fromarray(values, "F").save(tmp_path / "f.tif")
    with Image.open(tmp_path / "f.tif") as image:
        rgb = np.asarray(_to_rgb(image))
    np.testing.assert_array_equal(rgb[..., 0], np.rint(values * 255).astype(np.uint8))
    assert (rgb[..., 0] == rgb[..., 2]).all()
    wide = np.linspace(0, 200, 64, dtype=np.float32).reshape(8, 8)  # levels already: kept
    np.testing.assert_array_equal(np.asarray(_to_rgb(Image.fromarray(wide, "F")))[..., 1],
                                  np.rint(wide).astype(np.uint8))


def _relabelled_idx(folder: Path, seed: int) -> np.ndarray:
    """Rewrite the IDX source's label file with other labels (its images unchanged)."""
    labels = np.random.default_rng(seed).integers(0, 10, 6)
    header = struct.pack(">HBB", 0, 8, 1) + struct.pack(">I", labels.size)
    with gzip.open(folder / "train-labels-idx1-ubyte.gz", "wb") as f:
        f.write(header + labels.astype(np.uint8).tobytes())
    return labels


def test_a_complete_split_whose_labels_changed_is_refused_not_reused(tmp_path):
    """The same files with other labels (a corrected devkit, another label file): the rerun
    named 'labels' as what differs instead of keeping the old labels as already complete."""
    src = _idx_source(tmp_path / "src", 6)
    _relabelled_idx(src, 1)
    out = tmp_path / "s"
    _prepare(src, out)
    _relabelled_idx(src, 2)
    with pytest.raises(UserError, match="labels differ") as err:
        _prepare(src, out)
    assert str(out / "train") in str(err.value)


def test_resuming_a_split_whose_labels_changed_is_refused(tmp_path):
    """Half written with one label file, resumed with another: the store would hold the first
    chunk's old labels and the rest's new ones."""
    src = _idx_source(tmp_path / "src", 6)
    _relabelled_idx(src, 1)
    out = tmp_path / "s"
    with pytest.raises(KeyboardInterrupt):
        _prepare(src, out, chunk=2, _stop_after=1)
    _relabelled_idx(src, 2)
    with pytest.raises(UserError, match="labels differ"):
        _prepare(src, out, chunk=2)


def test_a_store_written_before_labels_were_fingerprinted_is_still_complete(tmp_path, capsys):
    """A header without the `labels` key (stores of earlier versions) stays usable as it is."""
    src = _idx_source(tmp_path / "src", 6)
    out = tmp_path / "s"
    _prepare(src, out)
    header = out / "train" / HEADER
    meta = json.loads(header.read_text())
    del meta["fingerprint"]["labels"]
    header.write_text(json.dumps(meta))
    capsys.readouterr()
    _prepare(src, out)
    assert "already complete (6 images)" in capsys.readouterr().err
