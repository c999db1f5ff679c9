"""`alexnet prepare` on a researcher's own tree: a seeded, class-stratified val hold-out, a
warning for trees that are no data set, and a default in the help of every option."""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import _images as images_
import numpy as np
import pytest

from alexnet.cli import main as cli_main
from alexnet.data import open_split
from alexnet.data.prepare import add_arguments, prepare
from alexnet.data.sources import Split, hold_out
from alexnet.errors import UserError

SIZES = {"apple": 10, "kiwi": 7, "lime": 1}  # images per class folder


def _own_tree(root: Path) -> Path:
    """A flat class-per-folder tree of distinct photos (no val split)."""
    for k, (name, count) in enumerate(SIZES.items()):
        images_.write_files(root / name, {f"{i}.png": images_.png(images_.photo(30, 24, k, i))
                                          for i in range(count)})
    return root


def _hashes(store) -> list[str]:
    return [hashlib.sha1(store.read([i])[0].tobytes()).hexdigest() for i in range(len(store))]


def test_hold_out_is_stratified_seeded_and_disjoint():
    labels = np.repeat(np.arange(4), [50, 21, 2, 1])
    split = Split("train", [f"f{i}" for i in range(len(labels))], labels, describe="tree")
    train, val = hold_out(split, 0.2, seed=3, num_classes=4)
    # floor(0.2 n + 0.5) per class; a class of 2 still gives one, a class of 1 none.
    assert list(np.bincount(val.labels, minlength=4)) == [10, 4, 1, 0]
    assert list(np.bincount(train.labels, minlength=4)) == [40, 17, 1, 1]
    assert set(train.refs).isdisjoint(val.refs)
    assert sorted(train.refs + val.refs) == sorted(split.refs)
    for part in (train, val):  # the source's order kept, labels matching their files
        positions = [split.refs.index(r) for r in part.refs]
        assert positions == sorted(positions)
        assert list(part.labels) == [labels[i] for i in positions]
    again = hold_out(split, 0.2, seed=3, num_classes=4)[1]
    other = hold_out(split, 0.2, seed=4, num_classes=4)[1]
    assert again.refs == val.refs and other.refs != val.refs
    assert list(np.bincount(other.labels, minlength=4)) == [10, 4, 1, 0]


def test_val_fraction_end_to_end(tmp_path):
    src = _own_tree(tmp_path / "src")
    prepare(src, tmp_path / "all", size=16, workers=1)
    every = set(_hashes(open_split(tmp_path / "all", "train")))
    args = ["prepare", str(src), str(tmp_path / "out"), "--size", "16", "--workers", "1",
            "--val-fraction", "0.3"]
    assert cli_main(args) == 0
    train, val = open_split(tmp_path / "out", "train"), open_split(tmp_path / "out", "val")
    assert list(np.bincount(val.labels, minlength=3)) == [3, 2, 0]
    assert list(np.bincount(train.labels, minlength=3)) == [7, 5, 1]
    held, kept = set(_hashes(val)), set(_hashes(train))
    assert held.isdisjoint(kept) and held | kept == every and len(held) == 5
    assert val.meta["stats_split"] == "train"  # normalised with the training part's stats
    np.testing.assert_array_equal(val.stats["rgb_cov"], train.stats["rgb_cov"])
    assert cli_main(args) == 0  # the rerun is complete already
    with pytest.raises(UserError, match="other arguments"):
        prepare(src, tmp_path / "out", size=16, workers=1, val_fraction=0.3, val_seed=1)
    prepare(src, tmp_path / "seed1", size=16, workers=1, val_fraction=0.3, val_seed=1)
    assert set(_hashes(open_split(tmp_path / "seed1", "val"))) != held
    with pytest.raises(UserError, match="--val-fraction 1.5"):
        prepare(src, tmp_path / "bad", val_fraction=1.5)
    images_.write_files(tmp_path / "split" / "val" / "apple", {"0.png": images_.png(
        images_.photo(20, 20, 0))})
    images_.write_files(tmp_path / "split" / "train" / "apple", {"0.png": images_.png(
        images_.photo(20, 20, 0))})
    with pytest.raises(UserError, match="has a val split already"):
        prepare(tmp_path / "split", tmp_path / "bad", val_fraction=0.5)


def test_warns_when_a_tree_is_no_data_set(tmp_path, capsys):
    junk = tmp_path / "junk"
    for i in range(6):  # six "classes" of one picture among notes and code
        images_.write_files(junk / f"project{i}", {"logo.png": images_.png(
            images_.photo(20, 20, i % 3)), **{f"notes{j}.txt": b"text" for j in range(3)}})
    prepare(junk, tmp_path / "a", size=8, workers=1)
    err = capsys.readouterr().err
    assert "warning" in err and "may not be a data set" in err
    assert "6 of its 6 class folders hold fewer than 5 images" in err
    assert "18 files in its class folders are not images" in err
    prepare(_own_tree(tmp_path / "own"), tmp_path / "b", size=8, workers=1)
    assert "may not be a data set" not in capsys.readouterr().err


def test_an_empty_class_folder_is_a_notice_and_keeps_its_label(tmp_path, capsys):
    """A class folder with no image stays a class (the labels of the others stay), with a
    one-line notice naming it: a class with no training image cannot be learnt."""
    own = _own_tree(tmp_path / "own")
    (own / "banana").mkdir()
    prepare(own, tmp_path / "store", size=8, workers=1)
    notices = [line for line in capsys.readouterr().err.splitlines() if "hold no images" in line]
    assert len(notices) == 1 and str(own / "banana") in notices[0]
    assert str(own / "apple") not in notices[0]
    train = open_split(tmp_path / "store", "train")
    assert [c["name"] for c in train.classes] == ["apple", "banana", "kiwi", "lime"]
    assert sorted(set(train.labels.tolist())) == [0, 2, 3]


def test_a_limit_below_the_number_of_classes_says_which_share_it_drops(tmp_path, capsys):
    """--limit below the number of classes gives whole classes no image (N // C is 0 for
    them): at ImageNet's 1000 classes, --limit 500 kept the first 500 in silence. Now a
    notice says how many and what limit keeps every class; a limit that keeps one of each
    says nothing."""
    own = _own_tree(tmp_path / "own")
    prepare(own, tmp_path / "a", size=8, workers=1, limit=1)
    notices = [line for line in capsys.readouterr().err.splitlines() if "--limit" in line]
    assert notices == ["alexnet prepare: notice: --limit 1 leaves 2 of the 3 classes without "
                       "training images (each class gets limit // 3 of them, the first "
                       "limit % 3 classes one more); give --limit 3 or more to keep every "
                       "class"]
    assert open_split(tmp_path / "a", "train").labels.tolist() == [0]
    prepare(own, tmp_path / "b", size=8, workers=1, limit=3)
    assert "--limit" not in capsys.readouterr().err


def test_hidden_folders_and_images_are_left_out_with_a_notice(tmp_path, capsys):
    """Hidden class folders and hidden images are not read (unlike torchvision, which makes
    `.ipynb_checkpoints` a class), and prepare says so: one notice names the hidden folders
    holding images, with how many; another counts the hidden images. macOS's .DS_Store and
    ._* files, and hidden folders with no image, go unmentioned."""
    own = _own_tree(tmp_path / "own")
    images_.write_files(own / ".dotclass", {f"{i}.png": images_.png(images_.photo(20, 20, 3, i))
                                            for i in range(3)})
    images_.write_files(own / ".ipynb_checkpoints", {"x-checkpoint.ipynb": b"{}"})
    images_.write_files(own / "apple", {".hidden.png": images_.png(images_.photo(20, 20, 0)),
                                        "._0.png": b"\x00\x05\x16\x07", ".DS_Store": b"x"})
    images_.write_files(own / "kiwi" / ".thumbs", {"t.jpg": images_.jpeg(images_.photo(9, 9, 1))})
    prepare(own, tmp_path / "store", size=8, workers=1)
    err = capsys.readouterr().err.splitlines()
    folders = [line for line in err if "hidden folders" in line]
    assert len(folders) == 1 and f"{own / '.dotclass'} (3 images)" in folders[0], err
    assert "notice" in folders[0] and ".ipynb_checkpoints" not in folders[0]
    files = [line for line in err if "hidden image file" in line]
    assert len(files) == 1 and files[0].startswith("alexnet prepare: notice: 2 hidden image")
    assert str(own / "apple" / ".hidden.png") in files[0]
    assert str(own / "kiwi" / ".thumbs" / "t.jpg") in files[0]
    assert "._0.png" not in files[0] and ".DS_Store" not in "\n".join(err)
    train = open_split(tmp_path / "store", "train")
    assert [c["name"] for c in train.classes] == ["apple", "kiwi", "lime"]
    assert len(train) == sum(SIZES.values()) and train.meta["skipped"] == 0


def test_class_names_that_look_alike_are_named_with_escapes(tmp_path, capsys):
    """Two class folders whose names differ only in Unicode normalisation (NFC "café" and
    NFD "café") stay two classes, with a notice naming both with escapes; names that differ
    only in letter case are legitimate classes and get none."""
    own = _own_tree(tmp_path / "own")
    for k, name in enumerate(("caf\u00e9", "cafe\u0301", "Apple")):
        images_.write_files(own / name, {"0.png": images_.png(images_.photo(20, 20, k))})
    prepare(own, tmp_path / "store", size=8, workers=1)
    err = capsys.readouterr().err.splitlines()
    alike = [line for line in err if "Unicode normalisation" in line]
    assert len(alike) == 1 and alike[0].startswith("alexnet prepare: notice:"), err
    assert "'caf\\xe9' (NFC)" in alike[0] and "'cafe\\u0301' (NFD)" in alike[0]
    assert "Apple" not in alike[0] and not any("letter case" in line for line in err)
    train = open_split(tmp_path / "store", "train")
    assert len(train.classes) == 6 and "caf\u00e9" in [c["name"] for c in train.classes]


def test_out_inside_the_tree_is_refused_before_any_work(tmp_path, capsys):
    """A store inside the tree it is made from would be a class folder of its next prepare."""
    own = _own_tree(tmp_path / "own")
    before = sorted(p.name for p in own.iterdir())
    for out, fragment in ((own, "OUT is SOURCE itself"),
                          (own / "store", f"OUT lies inside {own}"),
                          (own / "apple" / "store", f"OUT lies inside {own}")):
        assert cli_main(["prepare", str(own), str(out), "--workers", "1"]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and fragment in err, err
    assert sorted(p.name for p in own.iterdir()) == before
    assert not (own / "apple" / "store").exists()


def test_every_option_states_its_default():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    options = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    assert {a.dest for a in options} >= {"size", "format", "workers", "limit", "splits",
                                         "names", "max_pixels", "val_fraction", "val_seed"}
    helps = {a.dest: parser._get_formatter()._expand_help(a) for a in options}
    for dest, text in helps.items():
        assert "(default: " in text, dest
    assert helps["format"].endswith("(default: raw)")
    assert helps["size"].endswith("(default: 256, the paper's)")


def test_output_to_a_file_has_no_redrawn_bar(tmp_path, capsys):
    """Not a terminal (a log, a pipe): plain lines, never carriage-return redraws."""
    src = _own_tree(tmp_path / "src")
    assert cli_main(["prepare", str(src), str(tmp_path / "out"), "--size", "8",
                     "--workers", "1"]) == 0
    captured = capsys.readouterr()
    assert "\r" not in captured.err and "\r" not in captured.out
    assert "train: 18 images, 0 skipped" in captured.out
