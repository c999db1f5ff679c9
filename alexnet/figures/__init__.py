"""`alexnet figures`: the paper's figures 3 and 4 from a checkpoint and a prepared store.

Writes into --out (default: a `figures` folder beside the checkpoint, `figures-STORE` for a
--data store other than the checkpoint's, as evaluate.other_store names it):
- fig3_kernels.png, fig3_conv1_column{1,2}.png: the conv1 kernels (alexnet.figures.kernels),
  and each column's colour fraction, printed and recorded in figures.json;
- fig4_top5.png: test images with their five most probable labels (alexnet.figures.top5);
- fig4_neighbours.png: test images and the six training images nearest in fc7 space
  (alexnet.figures.neighbours), searched by streaming over the training split.
- training_curves.png when the checkpoint's folder holds the run's log.jsonl.

One command writes a folder at a time (FolderLock on OUT/.figures.lock): two into the same
folder would leave the figures of two nets side by side. The lock is its own, not OUT/.lock:
with --out RUN, a run folder's .lock is training's, which figures need not wait for. One
command reads or writes a --features-cache at a time (neighbours.holding_cache): a second
waits for it, then reads the features it wrote. The fc7 cache's key names the checkpoint
file that was actually read.

The set is replaced whole (`_replace_set`): every figure and figures.json is drawn into a
hidden folder OUT/.tmp-figures.PID (alexnet.atomic's temporary naming) and moved into OUT
only once all are drawn, figures.json last; the figure files an earlier command left that
this one did not draw are removed then, so OUT holds one net's figures on one store. A
failure or a Ctrl-C while drawing removes the hidden folder and leaves OUT as it was; one
left by a killed command is removed by the next (`_remove_stale_stages`).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from alexnet.atomic import TMP_PREFIX, FolderLock, ensure_folder, temp_path, write_json
from alexnet.errors import UserError
from alexnet.evaluate import EVAL_BATCH_SIZE
from alexnet.paper import FIG4_QUERY_IMAGES, FIG4_TOP5_IMAGES, TEST_CROPS

LOCK = ".figures.lock"  # in --out (see above)
QUERY_CHARS = 20  # the longest class label above a test image of figure 4 right
NEIGHBOUR_CHARS = 14  # ... above a training image, before its distance
CHECKPOINT_READS = 3  # reads of a checkpoint that is replaced while read, before giving up
FIGURE_FILES = ("fig3_kernels.png", "fig3_conv1_column1.png", "fig3_conv1_column2.png",
                "fig3_conv1.png", "fig4_top5.png", "fig4_neighbours.png", "training_curves.png")
SUMMARY = "figures.json"  # describes the figures beside it: moved into OUT last
STAGE = "figures"  # the hidden folder a set is drawn in: OUT/.tmp-figures.PID (temp_path)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `alexnet figures`."""
    parser.add_argument("checkpoint", type=Path, metavar="CHECKPOINT",
                        help="a checkpoint, or a run folder (its best.pt when there is one)")
    parser.add_argument("--data", type=Path, default=None,
                        help="a prepared store folder (default: the store the checkpoint was "
                        "trained on)")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for the PNG files (default: figures/ beside the checkpoint; "
                        "figures-STORE/ for a --data store other than the checkpoint's)")
    parser.add_argument("--split", default="auto", choices=("auto", "val", "test"),
                        help="where the test images come from (auto: val if present, else test)")
    parser.add_argument("--images", type=int, default=FIG4_TOP5_IMAGES,
                        help=f"test images in figure 4 left (default {FIG4_TOP5_IMAGES})")
    parser.add_argument("--queries", type=int, default=FIG4_QUERY_IMAGES,
                        help=f"test images in figure 4 right (default {FIG4_QUERY_IMAGES})")
    parser.add_argument("--crops", type=int, default=TEST_CROPS, choices=(1, TEST_CROPS),
                        help="crops per image for figure 4 left's probabilities: "
                        f"{TEST_CROPS}, the paper's test procedure (default, as evaluate and "
                        "predict), or 1, the centre")
    parser.add_argument("--seed", type=int, default=0, help="which test images are shown")
    parser.add_argument("--batch-size", type=int, default=EVAL_BATCH_SIZE,
                        help=f"images per step of the fc7 search (default {EVAL_BATCH_SIZE})")
    parser.add_argument("--features-cache", type=Path, default=None,
                        help="a .npy file for the training split's fc7 vectors: written on the "
                        "first run (disk, not memory), reused on later ones")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")


def _test_split(root: Path, split: str) -> Any:
    """The split the test images come from."""
    from alexnet.data.splits import auto_split
    from alexnet.data.store import open_split

    name = auto_split(root) if split == "auto" else split
    if name is None:
        raise UserError(f"{root}: no val or test split; prepare one, or give --split")
    test = open_split(root, name)
    if len(test) == 0:
        raise UserError(f"{test.path}: the {name} split holds no images, so figure 4 has no "
                        "test image to show; prepare it again, or give another --split")
    return test


def _train_split(root: Path) -> tuple[Any, str]:
    """The training split figure 4 right searches, or (None, why it is skipped)."""
    from alexnet.data.store import open_split

    if not (root / "train").is_dir():
        return None, f"{root} has no train split to search"
    train = open_split(root, "train")
    if len(train) == 0:
        return None, f"{train.path} holds no images to search"
    return train, ""


def run(args: argparse.Namespace) -> int:
    """Draw every figure; print where they went and the colour fraction of each column.

    Characters of class or folder names that no font has are named once, at the end.
    """
    from alexnet.figures.text import one_glyph_notice

    with one_glyph_notice():
        return _draw_figures(args)


def _draw_figures(args: argparse.Namespace) -> int:
    """`run`, without the notice of missing glyphs."""
    from alexnet.checkpoint import model_from_state, trained_checkpoint
    from alexnet.evaluate import (
        check_inputs,
        class_difference,
        class_names,
        input_settings,
        other_store,
        recorded_store,
        resolve_device,
    )

    for name in ("images", "queries", "batch_size"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} {getattr(args, name)}: give at least 1")
    if args.seed < 0:  # numpy's generator takes no negative seed
        raise UserError(f"--seed {args.seed}: give 0 or more")
    device = resolve_device(args.device)
    if args.checkpoint.is_dir():
        path, why = trained_checkpoint(args.checkpoint)
        print(f"{args.checkpoint}: using {path.name} ({why})", file=sys.stderr)
        args.run_dir, args.checkpoint = args.checkpoint, path
    else:
        args.run_dir = args.checkpoint.parent
    ckpt, identity = _read_checkpoint(args.checkpoint)  # read once
    store_tag = other_store(ckpt, args.data)
    if args.data is None:
        args.data = recorded_store(ckpt, args.checkpoint)
    model = model_from_state(ckpt, args.checkpoint, device)
    test = _test_split(args.data, args.split)
    ours, theirs = class_names(ckpt.get("classes")), class_names(test.classes)
    if ours is not None and ours != theirs:
        raise UserError(f"{args.checkpoint}: {class_difference(ours, theirs, str(args.data))}; "
                        "draw the figures on the store the net was trained for")
    settings = {"stats": ckpt.get("stats") or test.stats, **input_settings(ckpt)}
    train, args.search_skipped = _train_split(args.data)
    for split in (test, train):  # the loader would check them only after figure 3
        if split is not None:
            check_inputs([f"{args.checkpoint} on {split.path}"], [ckpt], split)
    key = None if train is None else _cache_key(args.checkpoint, identity, train, settings)
    if args.features_cache:  # before any figure: a bad cache path fails at once
        from alexnet.figures.neighbours import check_cache

        check_cache(args.features_cache, None if train is None else len(train), key)
    out = args.out or args.run_dir / (f"figures-{store_tag}" if store_tag else "figures")
    ensure_folder(out, "folder for --out")
    with FolderLock(out, f"{out}: another `alexnet figures` is writing this folder; wait for "
                    "it to end, or choose another --out", LOCK):
        _check_targets(out)
        _remove_stale_stages(out)
        stage = _make_stage(out, args)
        try:
            try:
                _write_figures(model, test, train, stage, out, args, device, settings, key)
            except BaseException as err:
                if isinstance(err, UserError | OSError) and not isinstance(err, BrokenPipeError):
                    raise UserError(f"{_message(err, stage, out)}; "
                                    f"{_unchanged_note(out, args)}") from None
                print(f"alexnet figures: note: {_unchanged_note(out, args)}", file=sys.stderr)
                raise  # a Ctrl-C, SIGTERM or closed stdout, which the CLI words
            try:
                _replace_set(stage, out)
            except OSError as err:
                raise UserError(f"{_message(err, stage, out)}; {_incomplete_note(out, args)}"
                                ) from None
            except BaseException:
                print(f"alexnet figures: note: {_incomplete_note(out, args)}", file=sys.stderr)
                raise
        finally:
            shutil.rmtree(stage, ignore_errors=True)
        print(f"summary: {out / SUMMARY}")
    return 0


def _write_figures(model: Any, test: Any, train: Any, stage: Path, out: Path,
                   args: argparse.Namespace, device: Any, settings: dict[str, Any],
                   key: dict[str, Any] | None) -> dict[str, Any]:
    """Draw every figure into `stage`, figures.json last, and print where each will lie in
    `out` (the paths printed and recorded are those in `out`); return what figures.json holds."""
    from alexnet.figures.kernels import write_kernel_figures

    summary: dict[str, Any] = {"checkpoint": str(args.checkpoint), "data": str(args.data),
                               "split": test.split}
    kernels = write_kernel_figures(model, stage)
    for panel in kernels["panels"]:
        panel["file"] = _final(panel["file"], out)
    kernels["figure"] = _final(kernels["figure"], out)
    summary["kernels"] = kernels
    for i, panel in enumerate(summary["kernels"]["panels"], start=1):
        print(f"figure 3: {panel['file']}: {panel['kernels']} kernels, colour fraction mean "
              f"{panel['colour_fraction_mean']:.3f} median {panel['colour_fraction_median']:.3f}"
              + (f" (column {i})" if len(summary["kernels"]["panels"]) > 1 else ""))

    summary["top5"] = _top5_figure(model, test, stage, args, device, settings)
    summary["top5"]["file"] = _final(summary["top5"]["file"], out)
    print(f"figure 4 left: {summary['top5']['file']}")

    if train is not None:
        summary["neighbours"] = _neighbours_figure(model, test, train, stage, args, device,
                                                   settings, key)
        summary["neighbours"]["file"] = _final(summary["neighbours"]["file"], out)
        print(f"figure 4 right: {summary['neighbours']['file']}")
    else:
        print(f"figure 4 right skipped: {args.search_skipped}", file=sys.stderr)

    log = args.run_dir / "log.jsonl"
    if log.is_file():
        from alexnet.figures.curves import plot_curves

        try:  # the paper's figures are drawn: a damaged log costs its curves only
            summary["curves"] = _final(str(plot_curves(log, stage / "training_curves.png")),
                                       out)
            print(f"training curves: {summary['curves']}")
        except UserError as err:  # the earlier log's curves are removed with the set
            print(f"training curves skipped: {_message(err, stage, out)}", file=sys.stderr)
    write_json(stage / SUMMARY, summary)
    return summary


def _final(path: str, out: Path) -> str:
    """Where the figure drawn at `path` (in the hidden stage folder) lies once moved into `out`."""
    return str(out / Path(path).name)


def _check_targets(out: Path) -> None:
    """Refuse, before drawing, a folder in `out` under a name the set is moved to or removes:
    found only when moving the set in, it would leave the set incomplete."""
    for name in (*FIGURE_FILES, SUMMARY):
        path = out / name
        if path.is_dir() and not path.is_symlink():
            raise UserError(f"{path}: is a folder, not a figure of an earlier call; move it "
                            "away, or choose another --out")


def _remove_stale_stages(out: Path) -> None:
    """Remove the stage folders of killed commands (`_make_stage`'s `.tmp-figures.PID`): the
    folder lock is held, so no command that runs is drawing into one (whatever its pid, which
    another PID namespace may reuse); alexnet.atomic.remove_stale removes files only."""
    for path in out.glob(f"{TMP_PREFIX}{STAGE}.*"):
        if path.name.rpartition(".")[2].isdigit() and path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)


def _make_stage(out: Path, args: argparse.Namespace) -> Path:
    """Create the hidden folder in `out` that the set is drawn in (on the same filesystem, so
    that each figure is then renamed into `out` atomically)."""
    stage = temp_path(out / STAGE)
    try:
        stage.mkdir()
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise UserError(f"{out}: cannot create files there ({reason}); free disk space, or "
                        f"choose another --out; {_unchanged_note(out, args)}") from None
    return stage


def _replace_set(stage: Path, out: Path) -> None:
    """Move the set drawn in `stage` into `out`: figures.json removed first and moved in last,
    each figure renamed over its earlier version, and the figure files of an earlier call that
    this one did not draw removed (another net's columns, skipped figures), never other files."""
    drawn = {name for name in FIGURE_FILES if (stage / name).is_file()}
    (out / SUMMARY).unlink(missing_ok=True)  # it describes a complete set only
    for name in FIGURE_FILES:
        if name in drawn:
            os.replace(stage / name, out / name)
        else:
            (out / name).unlink(missing_ok=True)
    _sync_folder(out)  # every figure in place before the figures.json that describes them
    os.replace(stage / SUMMARY, out / SUMMARY)
    _sync_folder(out)


def _sync_folder(folder: Path) -> None:
    """Make the renames into `folder` durable (where the platform lets a folder be fsynced)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _message(err: UserError | OSError, stage: Path, out: Path) -> str:
    """`err` in words naming the files in `out`, never the hidden stage folder."""
    if isinstance(err, OSError):
        where = f"{err.filename}: " if err.filename else ""
        text = f"{where}{err.strerror or err}"
    else:
        text = str(err)
    return text.replace(str(stage), str(out))


def _rerun(args: argparse.Namespace) -> str:
    """What rerunning the same command does."""
    cache = " (a complete --features-cache is read, not recomputed)" \
        if args.features_cache else ""
    return f"rerunning the same command draws every figure again{cache}"


def _unchanged_note(out: Path, args: argparse.Namespace) -> str:
    """One line for a command stopped while drawing: nothing in `out` was touched."""
    return (f"nothing in {out} changed (its earlier figures and figures.json, if any, are as "
            f"they were); {_rerun(args)}")


def _incomplete_note(out: Path, args: argparse.Namespace) -> str:
    """One line for a command stopped while moving its set into `out` (a few renames)."""
    return (f"stopped while moving the new figures into {out}, which holds no figures.json (it "
            f"is moved in last), so its figures are an incomplete set; {_rerun(args)}")


def _read_checkpoint(path: Path) -> tuple[dict[str, Any], tuple[int, int, int] | None]:
    """The checkpoint at `path` and (inode, size, mtime) of the file it was read from.

    The file is stat-ed before the read and after it, and read again when the two differ:
    `train` renames each new checkpoint over the old one (a new inode) and a write in place
    changes the size or mtime, so equal stats mean the file read is the one described. An
    fstat would not do: `load` opens the path three times (CRC check, format sniff,
    torch.load). Nor would the checkpoint's epoch and step: another run into the same
    folder, or a fine-tune, repeats them with other weights.
    """
    from alexnet.checkpoint import load

    for _ in range(CHECKPOINT_READS):
        before = _file_identity(path)
        ckpt = load(path)
        if _file_identity(path) == before:
            return ckpt, before
    raise UserError(f"{path}: replaced while being read, {CHECKPOINT_READS} times (a training "
                    "run saving it?); rerun the command once it is saved")


def _file_identity(path: Path) -> tuple[int, int, int] | None:
    """(inode, size, mtime in ns) of `path`, or None when it cannot be stat-ed."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


def _cache_key(ckpt_file: Path, identity: tuple[int, int, int] | None, train: Any,
               settings: dict[str, Any]) -> dict[str, Any]:
    """What the training split's fc7 features come from (the feature cache's key): the
    checkpoint file that was read (`_read_checkpoint`), the store, its size, its files (a store
    rebuilt at the same path with as many images has other ones), the crop and the mean."""
    inode, size, mtime_ns = identity or (None, None, None)
    return {"checkpoint": str(ckpt_file.resolve()), "checkpoint_inode": inode,
            "checkpoint_size": size, "checkpoint_mtime_ns": mtime_ns,
            "store": str(train.path.resolve()), "images": len(train),
            "store_files": _store_identity(train), "crop": settings["crop"],
            "mean": settings["mean"]}


def _store_identity(split: Any) -> dict[str, list[int] | None]:
    """(inode, size, mtime in ns) of the header, labels and pixels of a store split: a rebuild
    writes each anew (the header and labels renamed into place), so it changes them even at
    the same path with as many images; the header records no creation stamp to compare."""
    from alexnet.data.store import HEADER, JPEG, LABELS, RAW

    names = (HEADER, LABELS, RAW if split.format == "raw" else JPEG)
    return {name: None if (found := _file_identity(split.path / name)) is None else list(found)
            for name in names}


def _top5_figure(model: Any, test: Any, out: Path, args: argparse.Namespace, device: Any,
                 settings: dict[str, Any]) -> dict[str, Any]:
    """Figure 4 left: chosen test images, their top-5 classes and probabilities (recorded
    per image too: what the figure shows, as numbers)."""
    import numpy as np

    from alexnet.evaluate import eval_loader, predict_probs
    from alexnet.figures.neighbours import choose_queries
    from alexnet.figures.text import class_labels
    from alexnet.figures.top5 import LABEL_CHARS, plot_top5, top_classes

    indices = choose_queries(len(test), args.images, args.seed)
    loader = eval_loader(test, crops=args.crops, batch_size=min(len(indices), args.batch_size),
                         device=device, indices=indices, **settings)
    probs, labels = predict_probs(model, loader)
    probs, labels = probs.numpy(), labels.tolist()
    names = class_labels(test.classes, LABEL_CHARS)
    path = out / "fig4_top5.png"
    protocol = _top5_protocol(args.crops, settings["crop"])
    size = plot_top5(list(test.read(np.asarray(indices))), probs, labels, names, path,
                     protocol=protocol)
    images = [{"index": i, "label": y, "label_prob": float(p[y]),
               "top5": [[int(k), float(p[k])] for k in row]}
              for i, y, p, row in zip(indices, labels, probs, top_classes(probs), strict=True)]
    return {"file": str(path), "size": list(size), "indices": indices, "crops": args.crops,
            "protocol": protocol, "images": images}


def _top5_protocol(crops: int, crop: int) -> str:
    """How figure 4 left's probabilities were computed, as the figure states it."""
    if crops == 1:
        return f"probabilities: softmax of the centre {crop}x{crop} patch"
    return (f"probabilities: softmax averaged over {crops} {crop}x{crop} patches (corners, "
            "centre and their reflections, section 4.1)")


def _neighbours_figure(model: Any, test: Any, train: Any, out: Path, args: argparse.Namespace,
                       device: Any, settings: dict[str, Any], key: dict[str, Any] | None
                       ) -> dict[str, Any]:
    """Figure 4 right: the training images nearest to chosen test images in fc7 space
    (`key`: what the features come from, the --features-cache's key)."""
    import numpy as np
    import torch

    from alexnet.evaluate import eval_loader
    from alexnet.figures.neighbours import (
        NEIGHBOURS,
        cached_chunks,
        choose_queries,
        fc7_features,
        holding_cache,
        nearest_neighbours,
        plot_neighbours,
        read_cache,
    )
    from alexnet.figures.text import class_labels

    indices = choose_queries(len(test), args.queries, args.seed)
    query_loader = eval_loader(test, crops=1, batch_size=min(len(indices), args.batch_size),
                               device=device, indices=indices, **settings)
    queries = torch.cat(list(fc7_features(model, query_loader)))
    cache = args.features_cache
    with holding_cache(cache) if cache else contextlib.nullcontext():  # read or written whole
        chunks = read_cache(cache, len(train), key) if cache else None
        if chunks is None:
            train_loader = eval_loader(train, crops=1, batch_size=args.batch_size,
                                       device=device, **settings)
            from alexnet.progress import track

            chunks = fc7_features(model, track(train_loader, "figure 4 right: fc7 of the "
                                               "training split", unit="batch"))
            if cache:
                chunks = cached_chunks(chunks, cache, len(train), key)
        else:
            print(f"figure 4 right: training features read from {cache}")
        dist, nearest = nearest_neighbours(queries, chunks, NEIGHBOURS)
    query_names = class_labels(test.classes, QUERY_CHARS)
    names = class_labels(test.classes, NEIGHBOUR_CHARS)
    query_images = list(test.read(np.asarray(indices)))
    neighbour_images = [list(train.read(row.numpy())) for row in nearest]
    path = out / "fig4_neighbours.png"
    size = plot_neighbours(
        query_images, neighbour_images, path,
        query_titles=[query_names[test.labels[i]] for i in indices],
        neighbour_titles=[[f"{names[train.labels[j]]} d={d:.3g}"
                           for j, d in zip(row.tolist(), drow.tolist(), strict=True)]
                          for row, drow in zip(nearest, dist, strict=True)],
        split=test.split)
    return {"file": str(path), "size": list(size), "queries": indices,
            "neighbours": nearest.tolist(), "distances": dist.tolist()}
