"""The ImageNet layouts when their files are damaged, inconsistent or half-sorted: each case
ends in one line naming the file (and line, or image) and what to do, never a traceback nor
a silently wrong split; and a val folder already sorted into wnid folders reads as such in the
Kaggle layout too.

Every expected label is the wnid's place among the sorted wnids the test wrote.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import _images as images_
import pytest
from test_mutants_sources import _devkit, _pixels
from test_prepare import WNIDS, _ilsvrc

from alexnet.cli import main as cli_main
from alexnet.data import sources
from alexnet.errors import UserError

GT = "ILSVRC2012_validation_ground_truth.txt"


def _one_line_error(tmp_path: Path, src: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """What `alexnet prepare SRC` printed: exactly one line, an error, exit status 2."""
    status = cli_main(["prepare", str(src), str(tmp_path / "out"), "--workers", "1"])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1, err
    assert err.startswith("alexnet prepare: error: ") and "Traceback" not in err, err
    return err.strip()


def _refusal(src: Path) -> str:
    """The one-line message `sources.detect(src)` refuses with."""
    with pytest.raises(UserError) as info:
        sources.detect(src)
    message = str(info.value)
    assert "\n" not in message, message
    return message


# ----------------------------------------------------------------------------- A


def _cut(path: Path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def _inner_damaged(root: Path, empty: bool) -> tuple[Path, str]:
    """An outer train tar whose second per-class tar is cut short (or has no bytes)."""
    inner = {}
    for k, wnid in enumerate(WNIDS):
        data = images_.tar_bytes({f"{wnid}_{i}.JPEG": _pixels(k, i) for i in range(2)})
        inner[f"{wnid}.tar"] = b"" if (k == 1 and empty) else data[:700] if k == 1 else data
    images_.write_tar(root / "ILSVRC2012_img_train.tar", inner)
    return root / "ILSVRC2012_img_train.tar", f"{WNIDS[1]}.tar"


@pytest.mark.parametrize("case", ["inner cut short", "inner empty", "extracted class tar empty",
                                  "outer train cut in half", "val tar cut short"])
def test_a_truncated_or_empty_tar_is_one_line_naming_it(tmp_path, capsys, case):
    src = tmp_path / "src"
    _ilsvrc(src, 2012, archives=case != "extracted class tar empty")
    inner = None
    if case.startswith("inner"):
        archive, inner = _inner_damaged(src, empty=case == "inner empty")
    elif case == "extracted class tar empty":
        shutil.rmtree(src / "train" / WNIDS[2])
        archive = src / "train" / f"{WNIDS[2]}.tar"
        archive.write_bytes(b"")
    else:
        archive = src / f"ILSVRC2012_img_{'train' if 'train' in case else 'val'}.tar"
        _cut(archive, archive.stat().st_size // 2 + 700)  # mid-member, not at a block's end
    line = _one_line_error(tmp_path, src, capsys)
    assert f"error: {archive}: " in line and "download" in line and "again" in line, line
    if inner is not None:
        assert f"class archive {inner}" in line and archive.name in line, line
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- Kaggle


def _kaggle(root: Path, labels: list[int], sorted_val: bool = False,
            csv: str | None = None, mapping: str | None = None) -> None:
    """A small Kaggle CLS-LOC layout: val image i is of class labels[i] (sorted-wnid index);
    `sorted_val` puts each val image in val/<wnid>/, as ImageFolder tutorials do."""
    data = root / "ILSVRC" / "Data" / "CLS-LOC"
    root.mkdir(parents=True, exist_ok=True)
    (root / "LOC_synset_mapping.txt").write_text(
        mapping if mapping is not None else
        "".join(f"{w} name of {w}\n" for w in reversed(WNIDS)))
    rows = ["ImageId,PredictionString"]
    for i, k in enumerate(labels):
        name = f"ILSVRC2012_val_{i + 1:08d}"
        rows.append(f"{name},{WNIDS[k]} 1 2 3 4")
        folder = data / "val" / WNIDS[k] if sorted_val else data / "val"
        images_.write_files(folder, {f"{name}.JPEG": _pixels(k, i)})
    (root / "LOC_val_solution.csv").write_text(csv if csv is not None else
                                               "\n".join(rows) + "\n")
    for k, wnid in enumerate(WNIDS):
        images_.write_files(data / "train" / wnid, {f"{wnid}_{i}.JPEG": _pixels(k, i)
                                                    for i in range(2)})


def test_kaggle_solution_csv_with_a_byte_order_mark_is_read(tmp_path):
    labels = [2, 0, 3, 1]
    _kaggle(tmp_path, labels)
    csv = tmp_path / "LOC_val_solution.csv"
    csv.write_bytes(b"\xef\xbb\xbf" + csv.read_bytes())  # as Excel saves "CSV UTF-8"
    val = sources.detect(tmp_path).splits["val"]
    assert [Path(r).name for r in val.refs] == [f"ILSVRC2012_val_{i + 1:08d}.JPEG"
                                                for i in range(4)]
    assert list(val.labels) == labels


def test_kaggle_solution_row_without_a_wnid_is_one_line_with_its_line_number(tmp_path):
    text = (f"ImageId,PredictionString\nILSVRC2012_val_00000001,{WNIDS[0]} 1 2 3 4\n"
            "ILSVRC2012_val_00000002,\n")
    _kaggle(tmp_path, [0, 1], csv=text)
    message = _refusal(tmp_path)
    assert message.startswith(f"{tmp_path / 'LOC_val_solution.csv'}: line 3: ")
    assert "ILSVRC2012_val_00000002" in message and "PredictionString" in message


def test_kaggle_solution_without_its_header_is_one_line(tmp_path):
    _kaggle(tmp_path, [0], csv=f"ILSVRC2012_val_00000001,{WNIDS[0]} 1 2 3 4\n")
    message = _refusal(tmp_path)
    assert message.startswith(f"{tmp_path / 'LOC_val_solution.csv'}: line 1: ")
    assert "ImageId,PredictionString" in message


def test_kaggle_mapping_with_a_wnid_twice_is_refused_naming_both_lines(tmp_path):
    mapping = "".join(f"{w} name of {w}\n" for w in WNIDS) + f"{WNIDS[1]} again\n"
    _kaggle(tmp_path, [0, 1], mapping=mapping)
    message = _refusal(tmp_path)
    assert message.startswith(f"{tmp_path / 'LOC_synset_mapping.txt'}: {WNIDS[1]} ")
    assert "lines 2 and 5" in message


@pytest.mark.parametrize("with_csv", [True, False], ids=["csv", "no csv"])
def test_kaggle_val_sorted_into_wnid_folders_is_read_by_folder(tmp_path, with_csv):
    labels = [3, 0, 2, 2, 1, 0]
    _kaggle(tmp_path, labels, sorted_val=True)
    if not with_csv:
        (tmp_path / "LOC_val_solution.csv").unlink()
    val = sources.detect(tmp_path).splits["val"]
    assert len(val.refs) == len(labels)
    assert list(val.labels) == [WNIDS.index(Path(r).parent.name) for r in val.refs]
    by_number = {int(Path(r).stem[-8:]) - 1: int(y)
                 for r, y in zip(val.refs, val.labels, strict=True)}
    assert [by_number[i] for i in range(len(labels))] == labels


# ----------------------------------------------------------------------------- E, F


def _partly_sorted(val: Path, count: int) -> None:
    """Move the first `count` flat val images into val/<wnid>/ (any wnid will do here)."""
    for i, path in enumerate(sorted(val.glob("*.JPEG"))[:count]):
        (val / WNIDS[i % 2]).mkdir(exist_ok=True)
        path.rename(val / WNIDS[i % 2] / path.name)


@pytest.mark.parametrize("layout", ["ilsvrc", "kaggle"])
def test_a_val_folder_partly_sorted_into_class_folders_is_refused(tmp_path, layout):
    if layout == "ilsvrc":
        _ilsvrc(tmp_path, 2012, archives=False)
        val = tmp_path / "val"
    else:
        _kaggle(tmp_path, [0, 1, 2, 3, 0])
        val = tmp_path / "ILSVRC" / "Data" / "CLS-LOC" / "val"
    _partly_sorted(val, 3)
    message = _refusal(tmp_path)
    assert message.startswith(f"{val}: ") and "both" in message
    assert "finish or undo" in message


def test_empty_class_folders_beside_flat_val_images_change_nothing(tmp_path):
    # valprep.sh makes every val/<wnid>/ first: flat images beside empty folders are all read
    truth = _ilsvrc(tmp_path, 2012, archives=False)
    for wnid in WNIDS:
        (tmp_path / "val" / wnid).mkdir()
    val = sources.detect(tmp_path).splits["val"]
    assert list(val.labels) == truth["val"]


def test_two_val_files_with_one_val_number_are_refused_naming_both(tmp_path):
    _devkit(tmp_path, [0, 1, 2])
    val = tmp_path / "val"
    images_.write_files(val, {f"ILSVRC2012_val_{i + 1:08d}.JPEG": _pixels(k, i)
                              for i, k in enumerate([0, 1, 2])})
    images_.write_files(val, {"ILSVRC2012_val_00000003.jpeg": _pixels(0, 9)})
    message = _refusal(tmp_path)
    assert message.startswith(f"{val}: ")
    assert "ILSVRC2012_val_00000003.JPEG" in message
    assert "ILSVRC2012_val_00000003.jpeg" in message


# ----------------------------------------------------------------------------- G


@pytest.mark.parametrize("line,text,why", [(2, "9", "not a leaf class"),
                                           (3, "x1", "not an ILSVRC id"),
                                           (2, "1 2", "not an ILSVRC id")])
def test_a_bad_ground_truth_line_is_named_with_its_number_and_text(tmp_path, line, text, why):
    _devkit(tmp_path, [0, 1, 2])
    images_.write_files(tmp_path / "val", {f"ILSVRC2012_val_{i + 1:08d}.JPEG": _pixels(k, i)
                                           for i, k in enumerate([0, 1, 2])})
    gt = tmp_path / "ILSVRC2012_devkit_t12" / "data" / GT
    lines = gt.read_text().splitlines()
    lines[line - 1] = text
    gt.write_text("\n".join(lines) + "\n")
    message = _refusal(tmp_path)
    assert GT in message and f"line {line}: {text!r}" in message, message
    assert why in message and "devkit that came with these images" in message
    if why == "not a leaf class":
        assert f"ILSVRC2012_val_{line:08d}.JPEG" in message


@pytest.mark.parametrize("change", ["a line lost", "a line added"])
def test_a_ground_truth_of_another_length_than_the_devkits_is_refused(tmp_path, change):
    """A ground truth with a line lost labelled every image after it with its neighbour's
    class, silently where the images present were fewer than its lines (a subset of val, or
    the last image removed as the error about it advised): 50 of 59 labels were wrong. Its
    length is the devkit's, 50,000 lines for val, or it is refused in one line."""
    truth = [0, 1, 2, 1, 0]
    _devkit(tmp_path, truth)
    images_.write_files(tmp_path / "val", {f"ILSVRC2012_val_{i + 1:08d}.JPEG": _pixels(k, i)
                                           for i, k in enumerate(truth)})
    gt = tmp_path / "ILSVRC2012_devkit_t12" / "data" / GT
    lines = gt.read_text().splitlines()
    lines = lines[:1] + lines[2:] if change == "a line lost" else lines + lines[:1]
    gt.write_text("\n".join(lines) + "\n")
    message = _refusal(tmp_path)
    count = "49,999" if change == "a line lost" else "50,001"
    assert message.startswith(f"{gt}: {count} lines, where the devkit's val ground truth has "
                              "50,000"), message
    assert "use the ground truth of the devkit that came with these images" in message


def test_ground_truth_with_crlf_and_trailing_blank_lines_is_read(tmp_path):
    truth = [2, 0, 1]
    _devkit(tmp_path, truth)
    gt = tmp_path / "ILSVRC2012_devkit_t12" / "data" / GT
    gt.write_bytes(gt.read_bytes().replace(b"\n", b"\r\n") + b"\r\n\r\n")
    images_.write_files(tmp_path / "val", {f"ILSVRC2012_val_{i + 1:08d}.JPEG": _pixels(k, i)
                                           for i, k in enumerate(truth)})
    assert list(sources.detect(tmp_path).splits["val"].labels) == truth


# ----------------------------------------------------------------------------- H


@pytest.mark.parametrize("archives", [True, False], ids=["archives", "folders"])
def test_ilsvrc_images_without_the_devkit_ask_for_it(tmp_path, capsys, archives):
    src = tmp_path / "src"
    _ilsvrc(src, 2012, archives=archives)
    kit = src / ("ILSVRC2012_devkit_t12.tar.gz" if archives else "ILSVRC2012_devkit_t12")
    shutil.rmtree(kit) if kit.is_dir() else kit.unlink()
    line = _one_line_error(tmp_path, src, capsys)
    assert f"error: {src}: " in line and "no ILSVRC2012 devkit" in line, line
    assert "put ILSVRC2012_devkit_t12.tar.gz" in line and "in SOURCE" in line, line
    found = "ILSVRC2012_img_train.tar" if archives else f"{src / 'val'}"
    assert found in line, line


def test_wnid_class_folders_in_train_and_val_without_a_devkit_are_an_image_folder(tmp_path):
    # val sorted into wnid folders needs no ground truth: an ImageFolder tree, read as one
    for split in ("train", "val"):
        for k, wnid in enumerate(WNIDS):
            images_.write_files(tmp_path / split / wnid, {f"{split}_{k}.JPEG": _pixels(k)})
    source = sources.detect(tmp_path)
    assert source.kind == "image-folder" and [c["wnid"] for c in source.classes] == WNIDS
    assert list(source.splits["val"].labels) == [0, 1, 2, 3]


def test_a_plain_image_folder_with_a_flat_val_is_still_an_image_folder(tmp_path):
    for k, name in enumerate(["cat", "dog"]):
        images_.write_files(tmp_path / "train" / name, {f"{k}.jpg": _pixels(k)})
    images_.write_files(tmp_path / "val", {"a.jpg": _pixels(0), "b.jpg": _pixels(1)})
    source = sources.detect(tmp_path)
    assert source.kind == "image-folder" and set(source.splits) == {"train"}


def test_imagenet_classes_without_training_images_are_a_notice(tmp_path):
    """A class folder of ILSVRC's or Kaggle's training set that is empty or missing (a
    training set extracted part way) was silent, where an image-folder tree names it: now one
    notice names their wnids; they stay classes (the labels of the others do not move)."""
    src = tmp_path / "ilsvrc"
    _ilsvrc(src, 2012, archives=False)
    for f in (src / "train" / WNIDS[1]).iterdir():
        f.unlink()
    shutil.rmtree(src / "train" / WNIDS[3])
    found = sources.detect(src)
    notes = [n for n in found.notes if "training images" in n]
    assert notes == [f"notice: 2 of the devkit's 4 classes have no training images (their "
                     "class folder or archive is missing or empty: a training set extracted "
                     f"part way?): {WNIDS[1]}, {WNIDS[3]}; each stays a class (the labels of "
                     "the others do not move) but cannot be learnt with no training image"]
    assert sorted(set(found.splits["train"].labels.tolist())) == [0, 2]
    kaggle = tmp_path / "kaggle"
    _kaggle(kaggle, [0, 1])
    assert not [n for n in sources.detect(kaggle).notes if "training images" in n]
    shutil.rmtree(kaggle / "ILSVRC" / "Data" / "CLS-LOC" / "train" / WNIDS[2])
    notes = [n for n in sources.detect(kaggle).notes if "training images" in n]
    assert len(notes) == 1 and notes[0].startswith(
        "notice: 1 of the 4 classes of LOC_synset_mapping.txt have no training images "), notes
    assert f"part way?): {WNIDS[2]}; each stays a class" in notes[0], notes


@pytest.mark.parametrize("rows,said", [(2, "ILSVRC2012_val_00000003;"),
                                       (1, "ILSVRC2012_val_00000002 and 1 more val images;")])
def test_val_images_without_a_solution_row_are_named_with_how_many(tmp_path, rows, said):
    """A val image with no row in LOC_val_solution.csv is named, with the count of the others
    ("(and 0 more)" was said of one alone), and the advice to download the file again."""
    rows_text = "".join(f"ILSVRC2012_val_{i + 1:08d},{WNIDS[0]} 1 2 3 4\n" for i in range(rows))
    _kaggle(tmp_path, [0, 1, 2], csv="ImageId,PredictionString\n" + rows_text)
    message = _refusal(tmp_path)
    assert message == (f"{tmp_path / 'LOC_val_solution.csv'}: no label for {said} download "
                       "LOC_val_solution.csv again from the competition page (it has a row for "
                       "every val image)"), message
