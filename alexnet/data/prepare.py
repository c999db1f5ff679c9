"""`alexnet prepare SOURCE OUT`: a data source, once through the paper's preprocessing, into a
store (section 2).

The images of each split are cut into chunks in a fixed order; `Decoders`
(alexnet/data/workers.py) decode them in parallel, each image as alexnet/data/preprocess.py
says, and this process appends them in order through `SplitWriter`, which records each
finished chunk atomically. Killing and rerunning continues at the first unfinished chunk, and
the store ends byte-identical to an uninterrupted run. Unreadable files are skipped (no hole
is left) and listed with their reason in SPLIT/skipped.tsv, as are files of a class folder
that are not images (other names, broken links).

This module owns the command: its options, which splits are written in which order, resuming,
and its messages. The source layouts belong to alexnet/data/sources.py, the store's files
(header, parts, completion, lock) to alexnet/data/store.py, reached only through its API.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tarfile
from pathlib import Path
from typing import Any

import numpy as np

from alexnet import paper
from alexnet.data import sources as src
from alexnet.data.preprocess import MAX_PIXELS
from alexnet.data.store import (
    FORMATS,
    JPEG_QUALITY,
    SKIPPED,
    SPLITS,
    SplitWriter,
    WriteLock,
    a_name,
    check_agrees,
    own_stats,
    share_train_stats,
    split_status,
    write_error,
)
from alexnet.data.workers import Decoders
from alexnet.errors import Terminated, UserError
from alexnet.progress import Progress
from alexnet.stops import one_stop

CHUNK = 32  # images per chunk: the unit of parallel work and of resumption
# Largest --size: each decoding process holds a chunk of CHUNK images of S*S*3 bytes (400 MB
# at 2048, eight times the paper's side), and the store S*S*3 bytes per image.
MAX_SIZE = 2048
RESUMED_ONLY = ("chunk", "files")  # fingerprint keys compared only when resuming a split
# fingerprint keys added after stores were written without them: a complete split is compared
# on them only when its header has them
ADDED_LATER = ("labels",)


# ----------------------------------------------------------------------------- one split


def _ref_name(ref: Any, split: src.Split) -> str:
    if isinstance(ref, src.TarRef):
        return f"{ref.archive}:{ref.inner + '/' if ref.inner else ''}{ref.member}"
    if isinstance(ref, int | np.integer):
        return f"{split.describe}[{int(ref)}]"
    return str(ref)


def _payloads(refs: list[Any], split: src.Split, reader: src.TarReader) -> list[tuple[str, Any]]:
    """What a worker needs for each ref: paths and the byte spans of tar members are read by
    the workers (no image bytes pass through this process); only a tar member without a span
    (sparse) is read here."""
    out: list[tuple[str, Any]] = []
    for ref in refs:
        if isinstance(ref, src.TarRef) and ref.offset >= 0:
            out.append(("span", (ref.archive, ref.offset, ref.size)))
        elif isinstance(ref, src.TarRef):
            try:
                out.append(("bytes", reader.read(ref)))
            except (OSError, EOFError, KeyError, ValueError, tarfile.TarError) as err:
                out.append(("error", f"unreadable archive member: {type(err).__name__}: "
                                     f"{err}"))
        elif isinstance(ref, int | np.integer):
            out.append(("array", split.arrays[int(ref)]))
        else:
            out.append(("path", ref))
    return out


def _kept(source: src.Source, split: src.Split, limit: int | None) -> np.ndarray:
    """Positions of the split's images that `--limit` keeps."""
    return src.limit_per_class(split.labels, limit, len(source.classes))


def _note_limit(source: src.Source, wanted: list[str], limit: int | None) -> None:
    """Say when `--limit` leaves classes of the training split without an image: below the
    number of classes (an easy try-out value at ImageNet's 1000), whole classes go."""
    if limit is None or "train" not in wanted:
        return
    labels = source.splits["train"].labels
    lost = len(np.unique(labels)) - len(np.unique(labels[_kept(source, source.splits["train"],
                                                               limit)]))
    if lost:
        classes = len(source.classes)
        print(f"alexnet prepare: notice: --limit {limit} leaves {lost} of the {classes} "
              f"classes without training images (each class gets limit // {classes} of them, "
              f"the first limit % {classes} classes one more); give --limit {classes} or more "
              "to keep every class", file=sys.stderr)


def _files_digest(source: src.Source, split: src.Split, keep: np.ndarray) -> str:
    """A digest of the names of the images kept, in store order, relative to the source
    folder (archive members with their place in the archive): a resumed split must continue
    the very list it was started on, not merely one as long."""
    root = str(source.root)
    digest = hashlib.sha256()
    for i in keep:
        ref = split.refs[i]
        name = _ref_name(ref, split).removeprefix(root)
        if isinstance(ref, src.TarRef):
            name += f"@{ref.offset}+{ref.size}"
        digest.update(name.encode("utf-8", "surrogateescape") + b"\0")
    return digest.hexdigest()


def _labels_digest(split: src.Split, keep: np.ndarray) -> str:
    """A digest of the labels of the images kept, in store order: a rerun whose labels changed
    with the same files (a corrected devkit's ground truth, another IDX label file) must not
    find its split already complete or resume one labelled otherwise."""
    return hashlib.sha256(np.asarray(split.labels[keep], "<i8").tobytes()).hexdigest()


def _fingerprint(source: src.Source, split: src.Split, *, size: int, format: str,
                 limit: int | None, max_pixels: int, chunk: int,
                 jpeg_quality: int = JPEG_QUALITY) -> dict[str, Any]:
    """The arguments that make a split what it is (and `chunk`, how it is written, and
    `files`, the images listed: both compared only when resuming, RESUMED_ONLY; `labels`,
    theirs)."""
    keep = _kept(source, split, limit)
    fingerprint = {"kind": source.kind, "source": str(source.root.resolve()),
                   "split": split.name, "size": size, "format": format, "limit": limit,
                   "images": len(keep), "chunk": chunk,
                   "files": _files_digest(source, split, keep),
                   "labels": _labels_digest(split, keep),
                   "max_pixels": max_pixels, "classes": [c["wnid"] for c in source.classes]}
    if split.cut is not None:
        fingerprint["cut"] = split.cut
    if format == "jpeg" and jpeg_quality != JPEG_QUALITY:  # absent at the default, so that
        fingerprint["jpeg_quality"] = jpeg_quality  # stores made before the option still match
    return fingerprint


def prepare_split(source: src.Source, split: src.Split, path: Path, *, size: int, format: str,
                  decoders: Decoders, limit: int | None, max_pixels: int, chunk: int,
                  train_stats: dict[str, Any] | None, fingerprint: dict[str, Any],
                  stop_after: int | None = None, jpeg_quality: int = JPEG_QUALITY,
                  option: str = "OUT") -> dict[str, Any]:
    """Write one split (resuming a half-written one, skipping a complete and sound one,
    rebuilding a damaged one with a notice: store.split_status); return its count and skips.
    `fingerprint`: the split's `_fingerprint` for these options (its caller's, computed once:
    its digests walk every image name). `option` names the store folder in refusals."""
    keep = _kept(source, split, limit)
    refs = [split.refs[i] for i in keep]
    labels = split.labels[keep]
    meta, damage = split_status(path, fingerprint, ignore=RESUMED_ONLY, optional=ADDED_LATER,
                                option=option)
    if meta is not None:
        print(f"{path}: already complete ({meta['count']} images)", file=sys.stderr)
        return {"count": meta["count"], "skipped": meta["skipped"], "path": str(path)}
    if damage:
        print(f"alexnet prepare: notice: rebuilding the damaged split {path} ({damage})",
              file=sys.stderr)
    writer = SplitWriter(path, split=split.name, image_size=size, classes=source.classes,
                         format=format, fingerprint=fingerprint, jpeg_quality=jpeg_quality,
                         source={"kind": source.kind, "path": str(source.root),
                                 "from": split.describe, "limit": limit,
                                 "listed": len(refs)})
    todo = list(range(0, len(refs), chunk))[writer.chunks_done:]
    reader = src.TarReader()

    def task(start: int) -> tuple[Any, ...]:
        part = refs[start:start + chunk]
        return (_payloads(part, split, reader), [_ref_name(r, split) for r in part], size,
                max_pixels, format, jpeg_quality)

    bar = Progress(len(refs), f"prepare {split.name}", unit="img",
                   initial=min(len(refs), writer.chunks_done * chunk))
    try:
        for written, (start, result) in enumerate(decoders.in_order(todo, task), 1):
            rows = np.asarray(result["keep"], np.int64)
            writer.add_chunk(result["images"], labels[start:start + chunk][rows],
                             result["sums"], result["skipped"], result["jpegs"])
            bar.update(min(chunk, len(refs) - start))
            bar.note(skipped=len(writer.skipped))
            if stop_after is not None and written >= stop_after:
                writer.checkpoint()
                raise KeyboardInterrupt(f"stopped after {written} chunks (test hook)")
        bar.close()
        if split.name == "train":
            meta = writer.finish(unused=split.unused)
        else:
            meta = writer.finish(train_stats, "train" if train_stats is not None else None,
                                 unused=split.unused)
    finally:
        bar.close()
        reader.close()
        writer.close()  # after an exception: what was recorded stays, a rerun resumes
    if meta["skipped"]:
        print(f"{path}: {meta['skipped']} files skipped (unreadable, or not images), listed "
              f"in {path / SKIPPED}", file=sys.stderr)
    return {"count": meta["count"], "skipped": meta["skipped"], "path": str(path)}


# ----------------------------------------------------------------------------- entry points


def prepare(source: str | os.PathLike[str], out: str | os.PathLike[str], *,
            size: int = paper.IMAGE_SIZE, format: str = "raw", workers: int | None = None,
            limit: int | None = None, splits: list[str] | str | None = None,
            names: str | None = None, max_pixels: int = MAX_PIXELS, chunk: int = CHUNK,
            val_fraction: float | None = None, val_seed: int = 0,
            jpeg_quality: int = JPEG_QUALITY, option: str = "OUT",
            _stop_after: int | None = None) -> dict[str, Any]:
    """Prepare every split of `source` found (or those named) into the store `out`.

    Returns {"kind", "out", "splits": {split: {"count", "skipped", "path"}}}. The training
    split is written first; its statistics are recorded in every other split.
    `val_fraction` holds out that fraction of each class of a source without a val split as
    the val split (sources.hold_out, seeded by `val_seed`), before `limit` applies.
    `jpeg_quality` (format "jpeg"): the encoder's quality, 1-100; lower decodes faster at
    some cost in fidelity (docs/data.md, "JPEG quality").
    `option`: the name the refusals give `out`, that of the option that gave it (OUT, the
    demo's --store).
    `_stop_after` (tests only) interrupts after that many chunks, as a Ctrl-C would.
    Workers are started with multiprocessing's "spawn" (safe after torch has started threads),
    so a script that calls this must guard its top level with `if __name__ == "__main__":`.
    """
    workers, splits = _check_options(format=format, size=size, limit=limit, chunk=chunk,
                                     max_pixels=max_pixels, workers=workers, splits=splits,
                                     val_fraction=val_fraction, val_seed=val_seed,
                                     jpeg_quality=jpeg_quality)
    if not os.fspath(out):  # Path("") is the current folder
        raise UserError(f"{option} is empty: give the store folder to write (e.g. data/store)")
    out = Path(out)
    with one_stop():
        return _prepare(source, out, workers=workers, splits=splits, names=names,
                        val_fraction=val_fraction, val_seed=val_seed, option=option,
                        _stop_after=_stop_after,
                        options={"size": size, "format": format, "limit": limit,
                                 "max_pixels": max_pixels, "chunk": chunk,
                                 "jpeg_quality": jpeg_quality})


def _prepare(source: Any, out: Path, *, workers: int, splits: list[str] | None,
             names: str | None, val_fraction: float | None, val_seed: int, option: str,
             _stop_after: int | None, options: dict[str, Any]) -> dict[str, Any]:
    """`prepare` with its options checked: the splits wanted, each written in turn (a
    second writer refused naming `option`)."""
    size, chunk = options["size"], options["chunk"]
    try:
        found = _detect(source, out, names, val_fraction, val_seed, option)
        wanted = [s for s in SPLITS if s in found.splits and (splits is None or s in splits)]
        if not wanted:
            raise UserError(f"{source}: no split {', '.join(splits or SPLITS)} in this "
                            f"{found.kind} source (found: {', '.join(found.splits) or 'none'})")
        _note_limit(found, wanted, options["limit"])
        summary: dict[str, Any] = {"kind": found.kind, "out": str(out), "splits": {}}
        fingerprints = {name: _fingerprint(found, found.splits[name], **options)
                        for name in wanted}
        chunks = sum(-(-len(_kept(found, found.splits[name], options["limit"])) // chunk)
                     for name in wanted if split_status(  # no process to start for a rerun
                         out / name, fingerprints[name], ignore=RESUMED_ONLY,
                         optional=ADDED_LATER, option=option)[0] is None)
        for name in wanted:  # before anything is written
            check_agrees(out, name, found.classes, size, mine=out / name,
                         advice=f"prepare every split into a new {option} (or delete {out} "
                         "first)")
        with WriteLock(out, option), Decoders(workers, options["max_pixels"], chunks, chunk,
                                      size) as decoders:
            for name in wanted:
                summary["splits"][name] = prepare_split(
                    found, found.splits[name], out / name, decoders=decoders,
                    train_stats=own_stats(out / "train") if name != "train" else None,
                    fingerprint=fingerprints[name], stop_after=_stop_after, option=option,
                    **options)
            share_train_stats(out)
    except OSError as err:
        raise _os_error(out, err, option) from None
    return summary


def _check_options(*, format: str, size: int, limit: int | None, chunk: int, max_pixels: int,
                   workers: int | None, splits: list[str] | str | None,
                   val_fraction: float | None, val_seed: int = 0,
                   jpeg_quality: int = JPEG_QUALITY) -> tuple[int, list[str] | None]:
    """(workers, splits) resolved, or a UserError naming the bad option."""
    if format not in FORMATS:
        raise UserError(f"--format {format!r}: choose one of {', '.join(FORMATS)}")
    if not 1 <= jpeg_quality <= 100:
        raise UserError(f"--jpeg-quality {jpeg_quality}: choose 1-100 (default {JPEG_QUALITY}; "
                        "lower decodes faster and keeps less detail)")
    if jpeg_quality != JPEG_QUALITY and format != "jpeg":
        raise UserError(f"--jpeg-quality {jpeg_quality}: applies to --format jpeg only")
    if not 1 <= size <= MAX_SIZE:
        raise UserError(f"--size {size}: choose 1-{MAX_SIZE} pixels (default "
                        f"{paper.IMAGE_SIZE}; each decoding process holds {chunk} images of "
                        "S*S*3 bytes)")
    if limit is not None and limit < 1:
        raise UserError(f"--limit {limit}: must be at least 1")
    if max_pixels < 1:
        raise UserError(f"--max-pixels {max_pixels}: must be a positive number of pixels "
                        f"(default {MAX_PIXELS})")
    if chunk < 1:
        raise UserError(f"chunk {chunk}: must be at least 1 image")
    if workers is None:
        workers = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                   else os.cpu_count() or 1)
    if workers < 1:
        raise UserError(f"--workers {workers}: must be at least 1")
    if val_fraction is not None and not 0 < val_fraction < 1:
        raise UserError(f"--val-fraction {val_fraction}: must lie between 0 and 1 (e.g. 0.1)")
    if val_seed < 0:
        raise UserError(f"--val-seed {val_seed}: must be a non-negative integer (e.g. 0)")
    if isinstance(splits, str):
        splits = [s for s in splits.split(",") if s]
    if splits is not None and not splits:
        raise UserError(f"--splits is empty: name some of {', '.join(SPLITS)} "
                        "(comma-separated), or drop the option for every split found")
    for name in splits or []:
        if name not in SPLITS:
            raise UserError(f"--splits {name!r}: choose among {', '.join(SPLITS)}")
    return workers, splits


def _check_out(found: src.Source, out: Path, option: str = "OUT") -> None:
    """Refuse an OUT that is the SOURCE folder, or lies inside a folder whose subfolders the
    source reads as classes (links resolved), before anything is written: the next prepare
    of that source would read the store's folders as a class of its own. (A store beside
    the data files, as SOURCE/store for CIFAR-10 or IDX files, is read by nobody.)"""
    target = out.resolve()
    if target == found.root.resolve():
        raise UserError(f"{out}: {option} is SOURCE itself; choose {a_name(option)} outside "
                        "SOURCE")
    for split in found.splits.values():
        where = Path(split.describe)
        if where.is_dir() and (target == where.resolve() or where.resolve() in target.parents):
            raise UserError(f"{out}: {option} lies inside {where}, whose folders are read as "
                            f"the classes of SOURCE's {split.name} split; choose "
                            f"{a_name(option)} outside it")


def _detect(source: Any, out: Path, names: str | None, val_fraction: float | None,
            val_seed: int, option: str = "OUT") -> src.Source:
    """The source's layout (refused when OUT lies where it would be read as data), its notes
    and doubts printed, a val part held out if asked."""
    found = src.detect(source, names)
    _check_out(found, out, option)
    for note in found.notes:
        print(f"alexnet prepare: {note}", file=sys.stderr)
    doubt = src.doubts(found)
    if doubt:
        print(f"alexnet prepare: warning: {source} may not be a data set: {doubt}; a data set "
              "holds one folder per class with its images (docs/data.md)", file=sys.stderr)
    if val_fraction is not None:
        _hold_out(found, source, val_fraction, val_seed)
    return found


def _hold_out(found: src.Source, source: Any, fraction: float, seed: int) -> None:
    """Replace the source's train split by its train and val parts (`--val-fraction`)."""
    if "val" in found.splits:
        raise UserError(f"--val-fraction: {source} has a val split already; drop the option "
                        "to use it")
    if "train" not in found.splits:
        raise UserError(f"--val-fraction: {source} has no train split to hold a part out of")
    found.splits["train"], found.splits["val"] = src.hold_out(
        found.splits["train"], fraction, seed, len(found.classes))


def _os_error(out: Path, err: OSError, option: str = "OUT") -> UserError:
    """A filesystem error as one line: reading a source file, or writing the store."""
    name = err.filename
    if name is not None:
        inside = os.path.commonpath([os.path.abspath(name), os.path.abspath(out)])
        if inside != os.path.abspath(out):
            return UserError(f"{name}: cannot read ({err.strerror or err}); check the file "
                             "and its permissions")
    return write_error(out, err, option)


def _resumes(out: str) -> str:
    """What an interrupted prepare leaves, and how to go on (docs/data.md, "Interrupt and
    rerun")."""
    return (f"{out} keeps what was written; run the same command again to continue from "
            "there")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `alexnet prepare`."""
    parser.add_argument("source", metavar="SOURCE", help="folder holding the data (ImageNet "
                        "archives and devkit, Kaggle CLS-LOC, ImageFolder, CIFAR-10, IDX)")
    parser.add_argument("out", metavar="OUT", help="store folder to write (one folder per split)")
    parser.add_argument("--size", type=int, default=paper.IMAGE_SIZE,
                        help="side S of the stored images (default: %(default)s, the paper's)")
    parser.add_argument("--format", choices=FORMATS, default="raw",
                        help="raw uint8 (fast, no decoding) or jpeg (--jpeg-quality, "
                        "smaller, decoded on every read) (default: %(default)s)")
    parser.add_argument("--jpeg-quality", type=int, default=JPEG_QUALITY, metavar="Q",
                        help="JPEG quality of a jpeg store, 1-100: lower decodes faster "
                        "(docs/data.md, \"JPEG quality\") (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=None,
                        help="decoding processes, this one included (default: one per core)")
    parser.add_argument("--limit", type=int, default=None,
                        help="at most N images per split, an equal share per class (default: "
                        "no limit)")
    parser.add_argument("--splits", default=None,
                        help="comma-separated splits to prepare (default: all found)")
    parser.add_argument("--names", default=None,
                        help="IDX class names: fashion-mnist, mnist or A,B,... (default: "
                        "fashion-mnist when the folder path says fashion, else mnist)")
    parser.add_argument("--max-pixels", type=int, default=MAX_PIXELS,
                        help="skip images with more pixels, as decompression bombs (default: "
                        "%(default)s)")
    parser.add_argument("--val-fraction", type=float, default=None, metavar="F",
                        help="for a source without a val split: hold out this fraction of "
                        "each class of train as val, drawn with --val-seed (default: none)")
    parser.add_argument("--val-seed", type=int, default=0,
                        help="seed of the --val-fraction draw (default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    """`alexnet prepare`: print one line per split at the end; Ctrl-C and SIGTERM say that
    the store keeps what was written and that the same command continues."""
    try:
        summary = prepare(args.source, args.out, size=args.size, format=args.format,
                          workers=args.workers, limit=args.limit, splits=args.splits,
                          names=args.names, max_pixels=args.max_pixels,
                          val_fraction=args.val_fraction, val_seed=args.val_seed,
                          jpeg_quality=args.jpeg_quality)
    except KeyboardInterrupt:
        raise KeyboardInterrupt(f"interrupted; {_resumes(args.out)}") from None
    except Terminated:
        raise Terminated(f"terminated (SIGTERM); {_resumes(args.out)}") from None
    for name, result in summary["splits"].items():
        print(f"{name}: {result['count']} images, {result['skipped']} skipped -> "
              f"{result['path']}")
    return 0
