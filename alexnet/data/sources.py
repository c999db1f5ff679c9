"""Source layouts that `alexnet prepare` understands, detected from a folder's contents.

Each layout gives the class list and, per split, the images in a deterministic order with
their labels, and the files of its class folders that are not images to read (with the
reason, for the skip report). Every ImageNet source labels classes by their position in
SORTED wnid order (as torchvision, Kaggle and Caffe do), whatever the devkit's ILSVRC ids
say, so checkpoints are interchangeable between sources; the ILSVRC id of each class is
recorded beside it.

An image reference ("ref") is one of: a file path (str; the worker reads it), a `TarRef`
(a member of an uncompressed archive, nested or not: its bytes lie at a known offset of the
archive file, which the worker reads; without one, the parent reads the member through
`TarReader`, streaming, without extracting), or an int index into an in-memory uint8 array
(CIFAR-10, IDX).

Which images make a split is this module's concern too: `limit_per_class` (--limit),
`hold_out` (a seeded, class-stratified val split cut from train, --val-fraction), and
`doubts` (why a class-per-folder tree looks like no data set at all).
"""

from __future__ import annotations

import csv
import gzip
import io
import os
import pickle
import re
import struct
import tarfile
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from alexnet import paper
from alexnet.errors import UserError

# torchvision's IMG_EXTENSIONS: what an ImageFolder tree counts as an image.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
FASHION_MNIST_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                       "Shirt", "Sneaker", "Bag", "Ankle boot")
MNIST_NAMES = tuple(str(d) for d in range(10))
WNID = re.compile(r"^n\d{8}$")

LAYOUTS = (
    "ILSVRC-2012/2010 (ILSVRC20XX_img_train.tar or train/<wnid>/, ..._val.tar or val/, "
    "ILSVRC20XX_devkit*)",
    "Kaggle CLS-LOC (LOC_synset_mapping.txt, LOC_val_solution.csv, ILSVRC/Data/CLS-LOC/)",
    "ImageFolder (SOURCE/{train,val,test}/<class>/ or SOURCE/<class>/)",
    "CIFAR-10 (cifar-10-batches-py/)",
    "IDX (train-images-idx3-ubyte[.gz], t10k-images-idx3-ubyte[.gz] and their labels)",
)


@dataclass(frozen=True)
class TarRef:
    """One image inside a tar archive, possibly inside a per-class tar inside it; `offset`
    and `size` place its bytes in the archive file (offset -1: not contiguous there, read
    it through `TarReader`)."""

    archive: str
    inner: str | None  # member name of the per-class tar, or None for a flat archive
    member: str
    offset: int = -1
    size: int = -1


@dataclass
class Split:
    """The images of one split, in store order, with their labels."""

    name: str
    refs: list[Any]
    labels: np.ndarray
    arrays: np.ndarray | None = None  # (N, H, W) or (N, H, W, 3) uint8 for array sources
    describe: str = ""
    unused: list[tuple[str, str]] = field(default_factory=list)  # (path, reason): not images
    cut: dict[str, Any] | None = None  # how it was cut from a source split (--val-fraction)


@dataclass
class Hidden:
    """Hidden entries (a name that starts with ".") that are not read but would be were
    they not hidden: folders holding images, with how many, and image files."""

    folders: list[tuple[Path, int]] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)

    def notes(self) -> list[str]:
        """A notice for the hidden folders not read as classes, one for the hidden images."""
        notes = []
        if self.folders:
            listed = _listed([f"{_shown(p)} ({n} image{'s' if n > 1 else ''})"
                              for p, n in self.folders])
            notes.append(f"notice: hidden folders are not read as classes: {listed}; rename "
                         "one without its leading dot to make it a class")
        if self.files:
            listed = _listed([_shown(p) for p in sorted(self.files)], 3)
            notes.append(f"notice: {len(self.files)} hidden image file(s) are not read: "
                         f"{listed}; rename them (or their hidden folder) without the "
                         "leading dot to read them")
        return notes


@dataclass
class Source:
    """A detected source: its kind, classes (index = label) and splits."""

    kind: str
    root: Path
    classes: list[dict[str, Any]]
    splits: dict[str, Split] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- helpers


def is_image_name(name: str) -> bool:
    """True for the file extensions torchvision's ImageFolder accepts (any case)."""
    return name.lower().endswith(IMAGE_EXTENSIONS)


def unused_reason(path: Path) -> str | None:
    """Why a (non-hidden, non-folder) entry of a class folder is not an image to read, or
    None when it is one."""
    if not path.is_file():
        return ("broken symbolic link (its target does not exist)" if path.is_symlink()
                else "not a regular file")
    if not is_image_name(path.name):
        return f"not an image file name (read: {' '.join(IMAGE_EXTENSIONS)})"
    return None


def _image_files(folder: Path, unused: list[tuple[str, str]] | None = None) -> list[Path]:
    """Image files directly in `folder`, sorted by name (hidden files and folders ignored);
    every other entry is appended to `unused` as (path, reason)."""
    return _sorted_images((p for p in folder.iterdir() if not p.name.startswith(".")), unused)


def _sorted_images(paths: Any, unused: list[tuple[str, str]] | None) -> list[Path]:
    files = []
    for path in sorted(paths):
        if path.is_dir():
            continue
        reason = unused_reason(path)
        if reason is None:
            files.append(path)
        elif unused is not None:
            unused.append((str(path), reason))
    return files


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _hidden_files(folder: Path) -> list[Path]:
    """The hidden files directly in `folder` that would be read as images (`_hidden_image`)."""
    return [p for p in folder.iterdir() if p.name.startswith(".") and _hidden_image(p)]


def _only_hidden(where: Path, folders: list[tuple[Path, int]]) -> UserError:
    """The error for a folder whose only class folders holding images are hidden."""
    listed = _listed([_shown(p.name) for p, _ in folders])
    return UserError(f"{_shown(where)}: its only class folders are hidden ({listed}): a name "
                     "that starts with '.' is not read; rename them without the leading dot")


def limit_per_class(labels: np.ndarray, limit: int | None, num_classes: int) -> np.ndarray:
    """Positions to keep: at most `limit` in all, an equal share per class, first in order.

    Class c keeps its first limit // C images (the first limit % C classes one more); a class
    with fewer keeps all it has. Deterministic: no randomness.
    """
    if limit is None or limit >= len(labels):
        return np.arange(len(labels))
    quota = np.full(num_classes, limit // num_classes)
    quota[: limit % num_classes] += 1
    seen = np.zeros(num_classes, np.int64)
    keep = []
    for i, label in enumerate(labels):
        if seen[label] < quota[label]:
            seen[label] += 1
            keep.append(i)
    return np.array(keep, np.int64)


def hold_out(split: Split, fraction: float, seed: int, num_classes: int
             ) -> tuple[Split, Split]:
    """(train, val): a seeded, class-stratified hold-out of `fraction` of `split`.

    Class c, with n images, gives floor(fraction * n + 0.5) of them to val, at least one when
    it has two or more and never its last one, drawn without replacement by a NumPy
    Generator seeded with (seed, c), so a class's draw depends on nothing else. Both parts
    keep the source's order; every image is in exactly one.
    """
    to_val = np.zeros(len(split.labels), bool)
    for c in range(num_classes):
        members = np.flatnonzero(split.labels == c)
        if len(members) < 2:
            continue
        count = min(max(int(np.floor(fraction * len(members) + 0.5)), 1), len(members) - 1)
        to_val[np.random.default_rng([seed, c]).choice(members, count, replace=False)] = True
    cut = {"val_fraction": fraction, "val_seed": seed}

    def part(name: str, mask: np.ndarray) -> Split:
        index = np.flatnonzero(mask)
        return Split(name, [split.refs[i] for i in index], split.labels[index],
                     arrays=split.arrays, unused=split.unused if name == "train" else [],
                     describe=f"{split.describe} ({name} part of --val-fraction {fraction}, "
                              f"--val-seed {seed})", cut=cut)

    return part("train", ~to_val), part("val", to_val)


FEW_IMAGES = 5  # a class-per-folder tree whose classes mostly hold fewer is likely no data set


def doubts(source: Source) -> str | None:
    """Why a class-per-folder `source` looks like an arbitrary folder tree rather than a data
    set (most of many classes with very few images, more other files than images), or None."""
    if source.kind != "image-folder":
        return None
    counts = np.zeros(len(source.classes), np.int64)
    for split in source.splits.values():
        counts += np.bincount(split.labels, minlength=len(source.classes))
    others = sum(len(split.unused) for split in source.splits.values())
    reasons = []
    few = int((counts < FEW_IMAGES).sum())
    if len(counts) >= 4 and few > len(counts) / 2:
        reasons.append(f"{few} of its {len(counts)} class folders hold fewer than {FEW_IMAGES} "
                       "images")
    if others >= 10 and others > counts.sum():
        reasons.append(f"{others} files in its class folders are not images, beside "
                       f"{counts.sum()} images")
    return "; ".join(reasons) or None


class TarReader:
    """Reads `TarRef`s by streaming the archives (no extraction), keeping them open."""

    def __init__(self) -> None:
        self._outer: dict[str, tarfile.TarFile] = {}
        self._members: dict[tuple[str, str | None], dict[str, tarfile.TarInfo]] = {}
        self._inner: tuple[tuple[str, str], tarfile.TarFile] | None = None

    def _archive(self, path: str) -> tarfile.TarFile:
        if path not in self._outer:
            self._outer[path] = tarfile.open(path, mode="r:")
            self._members[(path, None)] = {m.name: m for m in self._outer[path].getmembers()}
        return self._outer[path]

    def _tar_of(self, ref: TarRef) -> tarfile.TarFile:
        outer = self._archive(ref.archive)
        if ref.inner is None:
            return outer
        key = (ref.archive, ref.inner)
        if self._inner is None or self._inner[0] != key:
            if self._inner is not None:  # refs come class by class: keep one inner index
                self._members.pop(self._inner[0], None)
            info = self._members[(ref.archive, None)][ref.inner]
            inner = tarfile.open(fileobj=outer.extractfile(info), mode="r:")
            self._members[key] = {m.name: m for m in inner.getmembers()}
            self._inner = (key, inner)
        return self._inner[1]

    def read(self, ref: TarRef) -> bytes:
        tar = self._tar_of(ref)
        info = self._members[(ref.archive, ref.inner)][ref.member]
        handle = tar.extractfile(info)
        return handle.read() if handle is not None else b""

    def close(self) -> None:
        for tar in self._outer.values():
            tar.close()
        self._outer.clear()
        self._members.clear()
        self._inner = None


def tar_image_members(tar: tarfile.TarFile) -> list[str]:
    """Names of the image files of an open tar, sorted by their base name; a name held twice
    (`tar -r` appends a newer copy) is one image, as extracting the tar gives one file."""
    names = {m.name for m in tar.getmembers() if m.isfile() and is_image_name(m.name)}
    return sorted(names, key=lambda n: (n.rsplit("/", 1)[-1], n))


def tar_image_refs(tar: tarfile.TarFile, archive: str, inner: tarfile.TarInfo | None = None
                   ) -> list[TarRef]:
    """`TarRef`s of the image files of `tar`, an open uncompressed archive (or, with `inner`,
    the member of `archive` that `tar` was opened from), sorted by their base name.

    Each holds where its bytes lie in the archive file (an inner tar's data offset plus the
    member's own), so that a worker reads them without the parent; a name the tar holds
    twice is the last such member, as `TarReader` reads it. Sparse members (not contiguous
    in the file) keep offset -1.
    """
    last = {m.name: m for m in tar.getmembers()}
    base = 0 if inner is None else -1 if inner.issparse() else inner.offset_data
    refs = []
    for name in tar_image_members(tar):
        info = last[name]
        spans = base >= 0 and not info.issparse()
        refs.append(TarRef(archive, None if inner is None else inner.name, name,
                           base + info.offset_data if spans else -1,
                           info.size if spans else -1))
    return refs


# ----------------------------------------------------------------------------- ILSVRC


def _find(root: Path, patterns: Sequence[str], deep: bool = False) -> Path | None:
    """The first path in root (or one folder down if `deep`) whose name matches a pattern."""
    for pattern in patterns:
        for depth in ("", "*/") if deep else ("",):
            hits = sorted(p for p in root.glob(depth + pattern) if not p.name.startswith("."))
            if hits:
                return hits[0]
    return None


def _devkit_files(devkit: Path, names: Sequence[str]) -> dict[str, bytes]:
    """The devkit files `names` (base names), from a folder tree or a .tar(.gz) archive."""
    found: dict[str, bytes] = {}
    if devkit.is_dir():
        for name in names:
            hits = sorted(devkit.rglob(name))
            if hits:
                found[name] = hits[0].read_bytes()
    else:
        try:
            with tarfile.open(devkit) as tar:
                for member in tar:
                    base = member.name.rsplit("/", 1)[-1]
                    if base in names and member.isfile() and base not in found:
                        handle = tar.extractfile(member)
                        found[base] = handle.read() if handle else b""
        except (tarfile.TarError, OSError, EOFError) as err:
            raise UserError(f"{devkit}: unreadable devkit archive ({err}); download it "
                            "again") from None
    return found


def read_meta_mat(data: bytes, origin: str) -> list[dict[str, Any]]:
    """The leaf synsets of a devkit meta.mat as classes sorted by wnid.

    The 1000 classes are the synsets with num_children == 0; each keeps its ILSVRC id (1..1000
    in the devkit's own order, which is NOT sorted-wnid order) as `ilsvrc_id`.
    """
    try:
        from scipy.io import loadmat

        synsets = loadmat(io.BytesIO(data), squeeze_me=True)["synsets"]
    except Exception as err:  # scipy raises many types for a foreign file
        raise UserError(f"{origin}: unreadable meta.mat ({err}); download the devkit "
                        "again") from None
    id_field = next((f for f in synsets.dtype.names if re.fullmatch(r"ILSVRC\d+_ID", f)), None)
    if id_field is None or "WNID" not in synsets.dtype.names:
        raise UserError(f"{origin}: meta.mat has no ILSVRC*_ID/WNID fields; is it a devkit?")
    classes = []
    for s in np.atleast_1d(synsets):
        if int(s["num_children"]) == 0:
            classes.append({"wnid": str(s["WNID"]), "name": str(s["words"]),
                            "ilsvrc_id": int(s[id_field])})
    classes.sort(key=lambda c: c["wnid"])
    return classes


def _ground_truth(data: bytes, origin: str) -> list[int]:
    """The ILSVRC ids of a ground-truth file, one per line (line i labels image i), blank
    lines at its end ignored; a line that is not one id is refused with its number, as
    skipping it would move the labels of every image after it."""
    hint = "use the ground truth of the devkit that came with these images"
    try:
        lines = data.decode("utf-8-sig").splitlines()
    except UnicodeDecodeError:
        raise UserError(f"{origin}: not a text file of ILSVRC ids; {hint}") from None
    while lines and not lines[-1].strip():
        lines.pop()
    ids = []
    for number, line in enumerate(lines, 1):
        try:
            ids.append(int(line))
        except ValueError:
            raise UserError(f"{origin}: line {number}: {ascii(line)} is not an ILSVRC id (one "
                            f"per line); {hint}") from None
    return ids


TAR_ERRORS = (tarfile.TarError, EOFError, OSError)  # what listing a cut-short tar raises


def _unreadable_tar(archive: Path, err: BaseException, inner: str | None = None) -> UserError:
    """The error for an archive (or, with `inner`, a class archive inside it) that cannot be
    listed: cut short by a download that stopped, empty, or no tar at all."""
    what = "archive" if inner is None else f"class archive {inner} inside it"
    again = "it" if inner is None else archive.name
    return UserError(f"{archive}: unreadable {what} ({err}); it is incomplete or damaged: "
                     f"download {again} again")


def _sorted_val(where: Path) -> bool:
    """Whether `where` is a folder sorted into class folders (as valprep.sh sorts ILSVRC's
    val) rather than a flat one; a folder holding both flat images and class folders with
    images (a half-run valprep.sh) is refused, as reading either part drops the other."""
    if not where.is_dir():
        return False
    flat = _image_files(where)
    if not flat:
        return bool(_subdirs(where) or _hidden_folders(where))
    classes = [_shown(sub.name) for sub in _subdirs(where) if _holds_images(sub)]
    if classes:
        raise UserError(f"{where}: holds both flat images ({len(flat)}, such as "
                        f"{_shown(flat[0].name)}) and class folders with images "
                        f"({_listed(classes)}), as a sorting (valprep.sh) stopped part way "
                        "leaves it: finish or undo the sorting")
    return False


def _class_split(name: str, where: Path, wnid_label: dict[str, int], kind: str,
                 hidden: Hidden) -> Split:
    """A split from a tar of per-class tars, or a folder of per-class folders or tars; the
    hidden class folders and image files left out are added to `hidden` (a folder whose
    only class folders are hidden is refused)."""
    refs: list[Any] = []
    labels: list[int] = []
    unused: list[tuple[str, str]] = []
    if where.is_file():
        try:
            with tarfile.open(where, mode="r:") as outer:
                inner_names = sorted({m.name for m in outer.getmembers()
                                      if m.name.endswith(".tar")})
                for inner_name in inner_names:
                    wnid = inner_name.rsplit("/", 1)[-1][:-4]
                    if wnid not in wnid_label:
                        raise UserError(f"{where}: class archive {inner_name} is not a class of "
                                        "the devkit; is this the right year's archive?")
                    info = outer.getmember(inner_name)
                    try:
                        with tarfile.open(fileobj=outer.extractfile(info), mode="r:") as inner:
                            members = tar_image_refs(inner, str(where), info)
                    except TAR_ERRORS as err:
                        raise _unreadable_tar(where, err, inner_name) from None
                    refs += members
                    labels += [wnid_label[wnid]] * len(members)
        except TAR_ERRORS as err:
            raise _unreadable_tar(where, err) from None
    else:
        folders = _hidden_folders(where)
        if folders and not _subdirs(where) and not any(where.glob("n*.tar")):
            raise _only_hidden(where, folders)
        hidden.folders += folders
        for sub in _subdirs(where):
            if sub.name not in wnid_label:
                raise UserError(f"{sub}: folder name is not a class wnid of the {kind} "
                                "devkit")
            hidden.files += _hidden_files(sub)
            files = _image_files(sub, unused)
            refs += [str(p) for p in files]
            labels += [wnid_label[sub.name]] * len(files)
        for tar_path in sorted(where.glob("n*.tar")):  # per-class tars not yet extracted
            if (where / tar_path.stem).is_dir():
                continue
            if tar_path.stem not in wnid_label:
                raise UserError(f"{tar_path}: not a class wnid of the {kind} devkit")
            try:
                with tarfile.open(tar_path, mode="r:") as tar:
                    members = tar_image_refs(tar, str(tar_path))
            except TAR_ERRORS as err:
                raise _unreadable_tar(tar_path, err) from None
            refs += members
            labels += [wnid_label[tar_path.stem]] * len(members)
        order = sorted(range(len(refs)), key=lambda i: (labels[i], _base(refs[i])))
        refs, labels = [refs[i] for i in order], [labels[i] for i in order]
    return Split(name, refs, np.array(labels, np.int64), describe=str(where), unused=unused)


def _base(ref: Any) -> str:
    return ref.member.rsplit("/", 1)[-1] if isinstance(ref, TarRef) else Path(ref).name


# lines of the devkits' ground truths: every image of the split, 2010's and 2012's alike
GROUND_TRUTH_LINES = {"val": paper.ILSVRC_VAL_IMAGES, "test": paper.ILSVRC_TEST_IMAGES}


def _flat_split(name: str, where: Path, truth: list[int], id_label: dict[int, int],
                prefix: str, origin: str, wnid_label: dict[str, int], hidden: Hidden) -> Split:
    """A flat split (ILSVRC20XX_val_00000001.JPEG ...) labelled by a ground-truth file, or a
    folder already sorted into per-class folders (then as `_class_split`); the hidden image
    files left out are added to `hidden`. A ground truth of another length than the
    devkit's is refused: a line lost shifts the labels after it, silently where the images
    present are fewer than its lines."""
    if _sorted_val(where):
        return _class_split(name, where, wnid_label, prefix, hidden)
    if len(truth) != GROUND_TRUTH_LINES[name]:
        raise UserError(f"{origin}: {len(truth):,} lines, where the devkit's {name} ground "
                        f"truth has {GROUND_TRUTH_LINES[name]:,} (line i labels image i, so a "
                        "line missing or added moves the label of every image after it); use "
                        "the ground truth of the devkit that came with these images")
    unused: list[tuple[str, str]] = []
    if where.is_file():
        try:
            with tarfile.open(where, mode="r:") as tar:
                refs: list[Any] = list(tar_image_refs(tar, str(where)))
        except TAR_ERRORS as err:
            raise _unreadable_tar(where, err) from None
    else:
        hidden.files += _hidden_files(where)
        refs = [str(p) for p in _image_files(where, unused)]
    pattern = re.compile(rf"{prefix}_(\d+)\.", re.IGNORECASE)
    labels = []
    seen: dict[int, str] = {}
    for ref in refs:
        match = pattern.match(_base(ref))
        if not match:
            raise UserError(f"{where}: {_base(ref)} is not named {prefix}_NNNNNNNN.JPEG")
        number = int(match.group(1))
        if number in seen:
            raise UserError(f"{where}: {seen[number]} and {_base(ref)} have the same number "
                            f"{number}, so one ground-truth line would label both; keep one "
                            "of them")
        seen[number] = _base(ref)
        if not 1 <= number <= len(truth):
            raise UserError(f"{where}: {_base(ref)} has no line in the {origin} ground truth "
                            f"({len(truth)} lines)")
        ilsvrc_id = truth[number - 1]
        if ilsvrc_id not in id_label:
            raise UserError(f"{origin}: line {number}: {ascii(str(ilsvrc_id))} (the label of "
                            f"{_base(ref)}) is not a leaf class of meta.mat (none of its "
                            "classes has this ILSVRC id); use the ground truth of the devkit "
                            "that came with these images")
        labels.append(id_label[ilsvrc_id])
    order = sorted(range(len(refs)), key=lambda i: _base(refs[i]))
    return Split(name, [refs[i] for i in order], np.array(labels, np.int64)[order],
                 describe=str(where), unused=unused)


def detect_ilsvrc(root: Path, year: int) -> Source | None:
    """ILSVRC-2012 or -2010 as distributed: archives or extracted folders plus the devkit."""
    devkit = _find(root, [f"ILSVRC{year}_devkit*"], deep=True)
    if devkit is None:
        return None
    gt_names = {"val": f"ILSVRC{year}_validation_ground_truth.txt",
                "test": f"ILSVRC{year}_test_ground_truth.txt"}
    files = _devkit_files(devkit, ["meta.mat", *gt_names.values()])
    if "meta.mat" not in files:
        raise UserError(f"{devkit}: no data/meta.mat inside; download the ILSVRC{year} devkit "
                        "again")
    classes = read_meta_mat(files["meta.mat"], f"{devkit}/data/meta.mat")
    wnid_label = {c["wnid"]: i for i, c in enumerate(classes)}
    id_label = {c["ilsvrc_id"]: i for i, c in enumerate(classes)}
    source = Source(f"ilsvrc{year}", root, classes)
    hidden = Hidden()
    train = _find(root, [f"ILSVRC{year}_im*_train.tar", f"ILSVRC{year}_im*_train", "train"])
    if train is not None:
        source.splits["train"] = _class_split("train", train, wnid_label, f"ILSVRC{year}",
                                              hidden)
    for split in ("val", "test"):
        where = _find(root, [f"ILSVRC{year}_im*_{split}.tar", f"ILSVRC{year}_im*_{split}",
                             split])
        if where is None:
            continue
        gt_file = gt_names[split]
        truth_bytes, origin = files.get(gt_file), f"{devkit}/data/{gt_file}"
        if truth_bytes is None:
            found = _find(root, [gt_file], deep=True)
            truth_bytes, origin = (found.read_bytes(), str(found)) if found else (None, "")
        if truth_bytes is None:
            source.notes.append(f"{where}: no {gt_file} (devkit or SOURCE), so no labels: "
                                f"the {split} split is left out")
            continue
        truth = _ground_truth(truth_bytes, origin)
        source.splits[split] = _flat_split(split, where, truth, id_label, f"ILSVRC{year}_{split}",
                                           origin, wnid_label, hidden)
    source.notes += hidden.notes()
    source.notes += _untrained_classes(
        source, f"of the devkit's {len(classes)} classes have no training images (their "
        "class folder or archive is missing or empty: a training set extracted part way?)",
        lambda c: classes[c]["wnid"])
    if not source.splits:
        raise UserError(f"{root}: found the ILSVRC{year} devkit but no image archives or "
                        f"folders (ILSVRC{year}_img_train.tar, ..._val.tar, train/, val/)")
    return source


DEVKITS = {"2012": "ILSVRC2012_devkit_t12.tar.gz", "2010": "ILSVRC2010_devkit-1.0.tar.gz"}


def detect_ilsvrc_without_devkit(root: Path) -> None:
    """Refuse ILSVRC images with no devkit beside them: the image archives
    (ILSVRC20XX_im*_train.tar ...), or a val/ of flat ILSVRC20XX_val_* images (beside train/
    holding only wnid folders or tars, or no train/), which would otherwise be read as an
    image folder (wnids for names, val left out) or as no layout at all."""
    archives = sorted(p.name for p in root.glob("ILSVRC20[0-9][0-9]_im*_*.tar")
                      if not p.name.startswith("."))
    if archives:
        found, year = _listed(archives), archives[0][6:10]
    else:
        val, train = root / "val", root / "train"
        pattern = re.compile(r"ILSVRC(20\d\d)_val_\d+\.", re.IGNORECASE)
        flat = ([m for m in (pattern.match(p.name) for p in _image_files(val)) if m]
                if val.is_dir() else [])
        wnids = not train.is_dir() or all(WNID.match(sub.name) for sub in _subdirs(train))
        if not flat or not wnids:
            return
        year = flat[0].group(1)
        found = f"{val} with {len(flat)} ILSVRC{year}_val_* images"
    raise UserError(f"{root}: found {found} but no ILSVRC{year} devkit, which labels them; put "
                    f"{DEVKITS.get(year, f'the ILSVRC{year} devkit')} (or its extracted folder) "
                    "in SOURCE beside them")


# ----------------------------------------------------------------------------- Kaggle


def _synset_mapping(mapping: Path) -> list[dict[str, Any]]:
    """The classes of LOC_synset_mapping.txt ("wnid name" per line), sorted by wnid; a wnid
    listed twice is refused, as it would make two classes of one and move every label after
    it."""
    try:
        lines = mapping.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as err:
        raise UserError(f"{mapping}: not a UTF-8 text file ({err}); download it again") from None
    classes: list[dict[str, Any]] = []
    first: dict[str, int] = {}
    for number, line in enumerate(lines, 1):
        if line.strip():
            wnid, _, name = line.strip().partition(" ")
            if wnid in first:
                raise UserError(f"{mapping}: {_shown(wnid)} is listed twice, on lines "
                                f"{first[wnid]} and {number}; each class is one line: download "
                                "it again")
            first[wnid] = number
            classes.append({"wnid": wnid, "name": name})
    return sorted(classes, key=lambda c: c["wnid"])


def _val_solution(solution: Path, wnid_label: dict[str, int]) -> dict[str, int]:
    """The label of each val image (ImageId) from LOC_val_solution.csv, whose
    PredictionString starts with the image's wnid; a byte-order mark (a CSV saved by a
    spreadsheet) is read past, and a row without an image or a wnid is refused by its line."""
    columns = ("ImageId", "PredictionString")
    truth: dict[str, int] = {}
    try:
        with open(solution, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = [cell.strip() for cell in next(reader, [])]
            if not all(c in header for c in columns):
                raise UserError(f"{solution}: line 1: {ascii(','.join(header))} is not the "
                                f"header {','.join(columns)}; download it again")
            at = [header.index(c) for c in columns]
            for row in reader:
                if not any(cell.strip() for cell in row):
                    continue
                image, prediction = (row[i].strip() if i < len(row) else "" for i in at)
                if not image or not prediction:
                    raise UserError(f"{solution}: line {reader.line_num}: "
                                    f"{ascii(','.join(row))} has no "
                                    f"{'ImageId' if not image else 'wnid in PredictionString'}"
                                    "; download it again")
                wnid = prediction.split()[0]
                if wnid not in wnid_label:
                    raise UserError(f"{solution}: line {reader.line_num}: {_shown(wnid)} is not "
                                    "in LOC_synset_mapping.txt")
                truth[image] = wnid_label[wnid]
    except (UnicodeDecodeError, csv.Error) as err:
        raise UserError(f"{solution}: unreadable CSV ({err}); download it again") from None
    return truth


def detect_kaggle(root: Path) -> Source | None:
    """The Kaggle ImageNet Object Localization Challenge layout (CLS-LOC)."""
    mapping = _find(root, ["LOC_synset_mapping.txt"], deep=True)
    data = _find(root, ["ILSVRC/Data/CLS-LOC"], deep=True)
    if mapping is None or data is None:
        return None
    classes = _synset_mapping(mapping)
    wnid_label = {c["wnid"]: i for i, c in enumerate(classes)}
    source = Source("kaggle-cls-loc", root, classes)
    hidden = Hidden()
    if (data / "train").is_dir():
        source.splits["train"] = _class_split("train", data / "train", wnid_label, "Kaggle",
                                              hidden)
    if _sorted_val(data / "val"):  # val/<wnid>/, as ImageFolder tutorials sort it
        source.splits["val"] = _class_split("val", data / "val", wnid_label, "Kaggle", hidden)
    elif (data / "val").is_dir():
        solution = _find(root, ["LOC_val_solution.csv"], deep=True)
        if solution is None:
            raise UserError(f"{root}: no LOC_val_solution.csv for the val images; download it "
                            "from the competition page")
        truth = _val_solution(solution, wnid_label)
        unused: list[tuple[str, str]] = []
        hidden.files += _hidden_files(data / "val")
        refs = [str(p) for p in _image_files(data / "val", unused)]
        missing = [Path(r).stem for r in refs if Path(r).stem not in truth]
        if missing:
            more = f" and {len(missing) - 1} more val images" if len(missing) > 1 else ""
            raise UserError(f"{solution}: no label for {missing[0]}{more}; download "
                            "LOC_val_solution.csv again from the competition page (it has a "
                            "row for every val image)")
        source.splits["val"] = Split("val", refs, np.array([truth[Path(r).stem] for r in refs],
                                                          np.int64), describe=str(data / "val"),
                                     unused=unused)
    source.notes += hidden.notes()
    source.notes += _untrained_classes(
        source, f"of the {len(classes)} classes of LOC_synset_mapping.txt have no training "
        "images (their class folder is missing or empty: a training set extracted part way?)",
        lambda c: classes[c]["wnid"])
    return source


# ----------------------------------------------------------------------------- ImageFolder


def _has_class_folders(folder: Path) -> bool:
    return any(_image_files(sub) for sub in _subdirs(folder))


def _image_tree(folder: Path, unused: list[tuple[str, str]] | None = None,
                hidden: list[Path] | None = None) -> list[Path]:
    """Image files anywhere under `folder` (as torchvision's ImageFolder walks), sorted;
    every other file is appended to `unused` as (path, reason). Hidden entries (a name that
    starts with ".") are not read, nor anything in a hidden folder; those that would
    otherwise be read as images are appended to `hidden`."""
    shown = []
    for path in folder.rglob("*"):
        if not any(part.startswith(".") for part in path.relative_to(folder).parts):
            shown.append(path)
        elif hidden is not None and _hidden_image(path):
            hidden.append(path)
    return _sorted_images(shown, unused)


def _unread_folders(root: Path, split_dirs: dict[str, Path]) -> list[str]:
    """A notice naming the folders of `root` beside its split folders that hold images yet
    are no split (`validation/`, `extra/`): only train, val and test are read."""
    left = [_shown(sub.name) for sub in _subdirs(root)
            if sub not in split_dirs.values() and _holds_images(sub)]
    if not left:
        return []
    return [f"notice: folders of {_shown(root)} beside {', '.join(split_dirs)} are not read: "
            f"{_listed(left)}; only train, val and test (each a folder of class folders) are "
            "splits: rename one to read it"]


def _holds_images(folder: Path) -> bool:
    """Whether an image file lies anywhere under `folder` (hidden entries not read, links to
    folders not followed); the walk stops at the first."""
    for _, subs, files in os.walk(folder):
        subs[:] = [d for d in subs if not d.startswith(".")]
        if any(is_image_name(f) and not f.startswith(".") for f in files):
            return True
    return False


def _hidden_image(path: Path) -> bool:
    """Whether hidden file `path` would be read as an image if it were not hidden: macOS's
    AppleDouble files ("._photo.jpg", its metadata, no image) and other hidden files
    (.DS_Store, .gitkeep) would not, so they go unmentioned."""
    return is_image_name(path.name) and not path.name.startswith("._") and path.is_file()


def _hidden_folders(where: Path) -> list[tuple[Path, int]]:
    """The hidden folders of `where` that hold images, with how many: not read as classes
    (torchvision's ImageFolder makes them classes, so that `.ipynb_checkpoints` becomes
    one). Links are not followed (a link to / would take the walk over the whole disk)."""
    folders = []
    for path in sorted(where.iterdir()):
        if path.name.startswith(".") and path.is_dir() and not path.is_symlink():
            count = len(_image_tree(path))
            if count:
                folders.append((path, count))
    return folders


def _shown(text: Any) -> str:
    """`text` for a one-line message: as it is when printable, else with Python's escapes
    (a newline, a byte of a name that is not UTF-8)."""
    text = str(text)
    return text if text.isprintable() else ascii(text)


def _listed(items: Sequence[str], limit: int = 5) -> str:
    """The first `limit` of `items`, comma-separated, and how many more."""
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def _form(name: str) -> str:
    """The Unicode normalisation form `name` is in, for a message."""
    forms = [form for form in ("NFC", "NFD") if unicodedata.is_normalized(form, name)]
    return "/".join(forms) or "neither NFC nor NFD"


def _lookalike(name: str, names: Sequence[str]) -> str | None:
    """How a class folder `name` absent from `names` is nevertheless one of them to the eye:
    the same under Unicode normalisation (NFC "café" against NFD "cafe" + U+0301) or but for
    letter case; None when no name of `names` is."""
    nfc = unicodedata.normalize("NFC", name)
    for other in names:
        if unicodedata.normalize("NFC", other) == nfc:
            return (f"{ascii(other)} that differs only in Unicode normalisation "
                    f"({_form(name)} here, {_form(other)} there)")
    for other in names:
        if unicodedata.normalize("NFC", other).casefold() == nfc.casefold():
            return f"{ascii(other)} that differs from it only in letter case"
    return None


def _absent_class(sub: Path, base: Path | None, names: Sequence[str]) -> UserError:
    """The error for class folder `sub` of a split whose name is not a training class."""
    hint = _lookalike(sub.name, names)
    if hint is None:
        return UserError(f"{_shown(sub)}: class folder absent from {_shown(base)}; every split "
                         "must use the training split's classes")
    return UserError(f"{_shown(sub)}: class folder {ascii(sub.name)} absent from "
                     f"{_shown(base)}, which has {hint}: rename one of them so that the names "
                     "match")


def _image_folder_notes(names: Sequence[str], hidden: Hidden) -> list[str]:
    """Notices on class names that differ only in Unicode normalisation (two classes that
    look alike), on hidden folders not read as classes and on hidden images not read."""
    notes = []
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(unicodedata.normalize("NFC", name), []).append(name)
    alike = [" and ".join(f"{ascii(n)} ({_form(n)})" for n in group)
             for group in groups.values() if len(group) > 1]
    if alike:
        notes.append(f"notice: class names that differ only in Unicode normalisation stay "
                     f"separate classes: {_listed(alike)}; rename one to merge them")
    return notes + hidden.notes()


def detect_image_folder(root: Path) -> Source | None:
    """root/{train,val,test}/<class>/<image>, or root/<class>/<image> (all train)."""
    split_dirs = {s: root / s for s in ("train", "val", "test")
                  if (root / s).is_dir() and _has_class_folders(root / s)}
    if not split_dirs:
        if not _has_class_folders(root):
            for where in [root, *(root / s for s in ("train", "val", "test"))]:
                folders = _hidden_folders(where) if where.is_dir() else []
                if folders:
                    raise _only_hidden(where, folders)
            return None
        split_dirs = {"train": root}
    unread = _unread_folders(root, split_dirs) if split_dirs.get("train") != root else []
    base = split_dirs.get("train")
    names = ([d.name for d in _subdirs(base)] if base is not None else
             sorted({d.name for where in split_dirs.values() for d in _subdirs(where)}))
    label = {n: i for i, n in enumerate(names)}
    source = Source("image-folder", root, [{"wnid": n, "name": n} for n in names],
                    notes=unread)
    hidden = Hidden()
    for split, where in split_dirs.items():
        refs, labels = [], []
        unused: list[tuple[str, str]] = []
        for sub in _subdirs(where):
            if sub.name not in label:
                raise _absent_class(sub, base, names)
            files = _image_tree(sub, unused, hidden.files)
            refs += [str(p) for p in files]
            labels += [label[sub.name]] * len(files)
        source.splits[split] = Split(split, refs, np.array(labels, np.int64),
                                     describe=str(where), unused=unused)
        hidden.folders += _hidden_folders(where)
    source.notes += _image_folder_notes(names, hidden)
    source.notes += _untrained_classes(source, "class folder(s) hold no images",
                                       lambda c: _shown(base / names[c]))
    return source


def _untrained_classes(source: Source, what: str, shown: Callable[[int], str]) -> list[str]:
    """The notice for the classes of `source` without a training image (none without a train
    split): `what` says of them, after their count, why (`shown` names class c)."""
    if "train" not in source.splits:
        return []
    counts = np.bincount(source.splits["train"].labels, minlength=len(source.classes))
    empty = [shown(c) for c in np.flatnonzero(counts == 0)]
    if not empty:
        return []
    return [f"notice: {len(empty)} {what}: {_listed(empty)}; each stays a class (the labels "
            "of the others do not move) but cannot be learnt with no training image"]


# ----------------------------------------------------------------------------- CIFAR-10


def _unpickle(path: Path) -> dict[bytes, Any]:
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="bytes")  # the official release is a pickle
    except Exception as err:
        raise UserError(f"{path}: unreadable CIFAR-10 batch ({err}); download "
                        "cifar-10-python.tar.gz again") from None


def detect_cifar10(root: Path) -> Source | None:
    """The CIFAR-10 python release: data_batch_1..5 (train), test_batch, batches.meta."""
    folder = root if (root / "batches.meta").exists() else root / "cifar-10-batches-py"
    if not (folder / "batches.meta").exists():
        return None
    names = [n.decode() for n in _unpickle(folder / "batches.meta")[b"label_names"]]
    source = Source("cifar10", root, [{"wnid": n, "name": n} for n in names])
    for split, files in (("train", [f"data_batch_{i}" for i in range(1, 6)]),
                         ("test", ["test_batch"])):
        present = [folder / f for f in files if (folder / f).exists()]
        if not present:
            continue
        if len(present) != len(files):
            raise UserError(f"{folder}: {split} needs {', '.join(files)}; some are missing")
        batches = [_unpickle(p) for p in present]
        data = np.concatenate([np.asarray(b[b"data"], np.uint8) for b in batches])
        images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        labels = np.concatenate([np.asarray(b[b"labels"], np.int64) for b in batches])
        source.splits[split] = Split(split, list(range(len(images))), labels,
                                     arrays=np.ascontiguousarray(images), describe=str(folder))
    return source


# ----------------------------------------------------------------------------- IDX


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (MNIST's format; .gz or not) as a uint8 array."""
    opener: Callable[..., Any] = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
        zero, dtype, ndim = struct.unpack(">HBB", data[:4])
        if zero != 0 or dtype != 0x08:
            raise ValueError("not an unsigned-byte IDX file")
        shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
        array = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
        return array.reshape(shape)
    except (OSError, EOFError, ValueError, struct.error) as err:
        raise UserError(f"{path}: unreadable IDX file ({err}); download it again") from None


def _idx_file(root: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"),
                 stem.replace("-idx", ".idx") + ".gz"):
        if (root / name).exists():
            return root / name
    return None


def idx_names(root: Path, names: str | None) -> list[str]:
    """Class names for IDX data: --names fashion-mnist|mnist|A,B,...; default from the folder
    name ("fashion" in it means Fashion-MNIST), else the digits 0..9."""
    if names is None:
        names = "fashion-mnist" if "fashion" in str(root.resolve()).lower() else "mnist"
    if names.lower() in ("fashion-mnist", "fashion"):
        return list(FASHION_MNIST_NAMES)
    if names.lower() == "mnist":
        return list(MNIST_NAMES)
    return [n.strip() for n in names.split(",")]


def detect_idx(root: Path, names: str | None = None) -> Source | None:
    """IDX files: train-images-idx3-ubyte[.gz] with -labels-idx1-, t10k-* for test."""
    found = {split: (_idx_file(root, f"{prefix}-images-idx3-ubyte"),
                     _idx_file(root, f"{prefix}-labels-idx1-ubyte"))
             for split, prefix in (("train", "train"), ("test", "t10k"))}
    if not any(images for images, _ in found.values()):
        return None
    labels_all = []
    splits = {}
    for split, (images_path, labels_path) in found.items():
        if images_path is None:
            continue
        if labels_path is None:
            raise UserError(f"{images_path}: no matching labels file "
                            f"({images_path.name.replace('images-idx3', 'labels-idx1')})")
        images, labels = read_idx(images_path), read_idx(labels_path).astype(np.int64)
        if images.ndim != 3 or labels.shape != (len(images),):
            raise UserError(f"{images_path}: {images.shape} images for {labels.shape} labels")
        labels_all.append(labels)
        splits[split] = Split(split, list(range(len(images))), labels, arrays=images,
                              describe=str(images_path))
    class_names = idx_names(root, names)
    top = max(int(labels.max()) for labels in labels_all if len(labels)) + 1
    if len(class_names) < top:
        raise UserError(f"--names: {len(class_names)} names for {top} classes in {root}; give "
                        f"{top} comma-separated names, for labels 0 to {top - 1} in order (or "
                        "fashion-mnist or mnist)")
    return Source("idx", root, [{"wnid": n, "name": n} for n in class_names], splits)


# ----------------------------------------------------------------------------- detection


def detect(source: str | Path, names: str | None = None) -> Source:
    """The layout of `source`, or a UserError listing the layouts understood."""
    root = Path(source)
    if not root.exists():
        raise UserError(f"{root}: no such file or folder")
    if root.is_file():
        raise UserError(f"{root}: SOURCE must be the folder holding the data files (archives "
                        "stay packed; see docs/data.md)")
    detectors: list[Callable[[], Source | None]] = [
        lambda: detect_ilsvrc(root, 2012), lambda: detect_ilsvrc(root, 2010),
        lambda: detect_kaggle(root), lambda: detect_cifar10(root),
        lambda: detect_idx(root, names), lambda: detect_ilsvrc_without_devkit(root),
        lambda: detect_image_folder(root)]
    for detector in detectors:
        found = detector()
        if found is not None:
            return found
    raise UserError(f"{root}: no known data layout; understood: {'; '.join(LAYOUTS)} "
                    "(see docs/data.md)")
