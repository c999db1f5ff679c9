"""`alexnet demo`: the paper's network trained on Fashion-MNIST, end to end, in minutes.

It prepares a subset of Fashion-MNIST (the IDX files of the Debian package
`dataset-fashion-mnist`, or any folder holding them) into a 256x256 store, trains the
paper's FULL-SIZE network (ten classes) with the paper's recipe on it, evaluates it on the
test split (top-1/top-5, centre crop; 10 crops on as many test images as time allows) and
writes a run folder: config.json, log.jsonl, log.csv, curves.png, checkpoint.pt,
trained.json and final.json. No network is needed. Rerunning the same demo continues it: an
interrupted run is resumed, a trained one only evaluated, a finished one reused.

The budget: the paper's net costs 4.3 GFLOP per trained 224x224 image (forward and
backward), so a 2-core CPU trains only some tens of images per second. The CPU plan therefore
uses a subset (4,000 training images: the whole 70,000 at 256x256 would be 13.8 GB) and a
time limit, with batch 64 and the paper's lr 0.01 (a smaller batch than 128 gives twice the
steps in the same time; the lr is kept, not scaled). On a GPU the plan is fuller (more
images, batch 128, more epochs). What is used, and why, is printed before training starts
(docs/training.md).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alexnet import paper
from alexnet.atomic import ensure_folder, read_json_object, write_json
from alexnet.errors import Terminated, UserError

if TYPE_CHECKING:
    from alexnet.config import Config

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
             "t10k-labels-idx1-ubyte")
# the images Fashion-MNIST has: what --train-images and --test-images may ask for at most
MAX_IMAGES = {"train_images": (60_000, "training"), "test_images": (10_000, "test")}
TEN_CROP_SHARE = 0.15  # 10-crop evaluation may take at most this share of the budget ...
MIN_TEN_CROP_IMAGES = 100  # ... and runs only if it can cover this many test images
# the keys the demo sets itself, and the demo option that sets each instead of --set
DEMO_KEYS = {"data.store": "--store", "run.out": "--out", "run.device": "--device",
             "run.time_limit": "--budget", "optim.batch_size": "--batch-size",
             "optim.epochs": "--epochs"}
# keys that differ between runs of the same demo: where, whether resumed, the time left, display
SAME_RUN_IGNORES = {"run": ("out", "resume", "time_limit", "progress")}
# the plan's keys that decide the result (config.json holds the others but the image counts;
# the budget gives the time left, like run.time_limit, and `why` only words the options)
SAME_PLAN = ("device", "train_images", "test_images", "batch_size", "epochs")
TRAINED = "trained.json"  # the training's summary, written when it ends: a rerun only evaluates
FINAL = "final.json"
# what decides the result besides config.json (the data, the store, the plan), written when
# training starts: a rerun is the same demo only when it agrees (`_same_run`)
RECORD = "demo.json"
# what a run stopped by Ctrl-C or SIGTERM advises: rerunning the demo resumes it
CONTINUE_WITH = "the same `alexnet demo` command (it resumes this run)"


@dataclass
class Earlier:
    """What a run folder holds of an earlier run of the same demo (all None: nothing)."""

    checkpoint: Path | None = None  # an interrupted or trained run
    trained: dict[str, Any] | None = None  # its training had ended (trained.json)
    final: dict[str, Any] | None = None  # it was evaluated too (final.json)
    record: dict[str, Any] | None = None  # its data, store and plan (demo.json)


@dataclass
class Plan:
    """What the demo runs: the subset, the schedule and the time it may take."""

    device: str
    train_images: int
    test_images: int
    batch_size: int
    epochs: int
    budget_s: float
    why: str


def default_plan(device: str) -> Plan:
    """The CPU plan (under 15 minutes on 2 cores) or the fuller GPU plan."""
    if device.startswith("cuda"):
        return Plan(device, train_images=20_000, test_images=5_000,
                    batch_size=paper.BATCH_SIZE, epochs=12, budget_s=150.0,
                    why=f"a GPU: a fuller schedule at the paper's batch of {paper.BATCH_SIZE}, "
                        "in bf16 autocast with channels_last (the fast preset's safe options)")
    return Plan(device, train_images=4_000, test_images=1_000, batch_size=64, epochs=4,
                budget_s=13 * 60.0,
                why="a CPU trains the full-size net at only tens of images/s, so a 4,000-image "
                    f"subset, batch 64 (twice the steps of {paper.BATCH_SIZE} in the same time,"
                    f" lr kept at {paper.BASE_LR:g}) and a time limit keep the demo within 15 "
                    "minutes")


def base_config(device: str) -> Any:
    """The config under the demo preset: on a GPU bf16 autocast and channels_last (the fast
    preset's safe options; `--set run.amp=off` still wins), the code defaults elsewhere."""
    from alexnet.config import Config

    base = Config()
    if device.startswith("cuda"):
        base.run.amp, base.run.channels_last = "bf16", True
    return base


def find_idx_folder(data: str | os.PathLike | None) -> Path:
    """The folder of Fashion-MNIST's IDX files (gzipped or not), or a UserError saying how."""
    folder = Path(data) if data else FASHION_MNIST
    if not folder.is_dir():
        hint = ("install it with 'apt-get install dataset-fashion-mnist' or give --data DIR"
                if data is None else "give a folder holding the four IDX files")
        raise UserError(f"{folder}: no Fashion-MNIST folder; {hint}")
    missing = [name for name in IDX_FILES
               if not (folder / name).exists() and not (folder / f"{name}.gz").exists()]
    if missing:
        raise UserError(f"{folder}: missing {missing[0]}(.gz); give a folder holding the four "
                        "Fashion-MNIST IDX files")
    return folder


def refuse_demo_keys(overrides: list[str]) -> None:
    """A one-line UserError for a --set of a key the demo sets itself (it would be ignored)."""
    for item in overrides:
        key = item.partition("=")[0].strip()
        if key in DEMO_KEYS:
            raise UserError(f"--set {key}: the demo sets this key itself; use the demo's "
                            f"{DEMO_KEYS[key]} instead")


def prepare_store(source: Path, store: Path, plan: Plan) -> Path:
    """The demo's 256x256 store (train and test subsets), made or reused when complete.

    prepare's limit keeps an equal share of each class, the first in file order; its
    refusals name --store.
    """
    from alexnet.data.prepare import prepare

    prepare(source, store, size=paper.IMAGE_SIZE, limit=plan.train_images, splits="train",
            names="fashion-mnist", option="--store")
    prepare(source, store, size=paper.IMAGE_SIZE, limit=plan.test_images, splits="test",
            names="fashion-mnist", option="--store")
    return store


def _check_store_path(store: Path, out: Path) -> None:
    """Refuse, before any work, a --store that is a file, or that is the run folder or holds
    it or lies in it (the run's files and the store's would mix)."""
    if store.exists() and not store.is_dir():
        raise UserError(f"--store {store}: is a file, not a folder; choose another --store")
    s, o = store.resolve(), out.resolve()
    if s == o or s in o.parents or o in s.parents:
        raise UserError(f"--store {store} and the run folder {out} overlap; keep the store "
                        "and the run folder apart")


def demo(data: str | os.PathLike | None = None, out: str | os.PathLike = "runs/demo",
         store: str | os.PathLike | None = None, plan: Plan | None = None,
         overrides: list[str] | None = None, device: str = "auto",
         ten_crop: bool | None = None) -> dict[str, Any]:
    """Prepare, train and evaluate; return the final metrics and where everything is.

    Every option (the --set overrides, the run folder) is checked before the store is
    prepared, so that a bad one costs no work. A run folder holding an earlier run of the same
    demo is continued: resumed, only evaluated, or reused (`_earlier_run`)."""
    from alexnet.config import from_dict, resolve
    from alexnet.data.store import WriteLock
    from alexnet.evaluate import resolve_device
    from alexnet.training.data import per_rank_batch

    t_start = time.monotonic()
    refuse_demo_keys(overrides or [])
    dev = str(resolve_device(device))
    plan = plan or default_plan(dev)
    source = find_idx_folder(data)
    out = Path(out)
    store = Path(store) if store else \
        out.parent / f"fashion-mnist-{plan.train_images}-{plan.test_images}"
    config = resolve("demo", overrides, base=base_config(dev), flags={
        "data.store": str(store), "run.out": str(out), "run.device": dev,
        "optim.batch_size": plan.batch_size, "optim.epochs": plan.epochs,
        "run.time_limit": plan.budget_s})  # the time limit is set once the store is ready
    per_rank_batch(config, plan.train_images, 1)
    record = run_record(source, store, plan)
    out, earlier = _run_folder(out, config, ten_crop, record)
    config = from_dict({"run": {"out": str(out)}}, config)
    _check_store_path(store, out)
    made = not out.exists()
    ensure_folder(out, "run folder (--out)")  # last: a refusal above leaves no folder behind
    if earlier.final is not None:
        print(f"{out} holds this demo's finished run: reusing it (give another --out to train "
              "anew)")
        _say_budget(earlier, plan, out)
        _report(earlier.final, out, store, timing=_took(earlier.final, "the run took"))
        return {**earlier.final, "run_dir": str(out), "store": str(store)}
    net = "the paper's full-size network" if config.model.width == 1 else \
        f"the paper's network at {config.model.width:g} of its width"
    print(f"alexnet demo on {dev}: {net}, Fashion-MNIST from {source}")
    print(f"plan: {plan.train_images} training and {plan.test_images} test images at "
          f"{paper.IMAGE_SIZE}x{paper.IMAGE_SIZE}, "
          f"batch {plan.batch_size}, lr {paper.BASE_LR:g}, up to {plan.epochs} epochs, budget "
          f"{plan.budget_s / 60:.1f} min in all; why: {plan.why}")
    print("one deviation from the paper: the biases it sets to 1 start at 0.1 (Caffe's value; "
          "with 1 this ten-class net stays at chance for the whole budget: docs/training.md)")
    print(f"preparing the store {store} (reused when already complete) ...", flush=True)
    try:
        with _stopped_in(f"while preparing the store {store} (it keeps what was written)",
                         "the same `alexnet demo` command (it continues preparing the store)"):
            WriteLock(store, option="--store").release()  # another demo preparing it
            prepare_store(source, store, plan)
    except BaseException:
        if made:  # the run folder made above, still empty: no trace of a demo that never ran
            with contextlib.suppress(OSError):
                out.rmdir()
        raise
    t_prepared = time.monotonic()
    print(f"store ready in {t_prepared - t_start:.0f} s")

    trained = earlier.trained
    if trained is None:
        write_json(out / RECORD, record, indent=2)
        trained = _train(config, earlier, plan, t_prepared - t_start)
        write_json(out / RECORD, {**record, "seconds": time.monotonic() - t_start}, indent=2)
    else:
        print(f"{out} holds this demo's trained net: evaluating it (its training had ended)")
        _say_budget(earlier, plan, out)
    t_eval = time.monotonic()
    with _stopped_in(f"in the final evaluation (the trained net is kept: {out / 'checkpoint.pt'})",
                     "the same `alexnet demo` command (it only evaluates the trained net)"):
        final = evaluate_run(out, store, config, plan, t_start, ten_crop)
    t_end = time.monotonic()
    final.update(train=trained, evaluation_seconds=t_end - t_eval)
    timing = None
    if earlier.trained is None:  # trained now: this command's time, and its plan
        final.update(seconds=t_end - t_start, plan=plan.__dict__)
    else:  # evaluated again: the training run's time and plan stay
        took, what = _training_took(out, earlier)
        final.update(took)
        timing = f"evaluated in {t_end - t_eval:.0f} s; {_took(final, what)}"
    write_json(out / FINAL, final, indent=2)
    _report(final, out, store, timing=timing)
    return {**final, "run_dir": str(out), "store": str(store)}


def run_record(source: Path, store: Path, plan: Plan) -> dict[str, Any]:
    """What decides a demo's result besides its config (RECORD): the Fashion-MNIST folder,
    the store and the plan (its image counts are in no config key)."""
    return {"data": str(source.resolve()), "store": str(store.resolve()),
            "plan": dict(plan.__dict__)}


@contextlib.contextmanager
def _stopped_in(stage: str, continue_with: str) -> Iterator[None]:
    """Ctrl-C or SIGTERM during `stage` says where the demo stopped and how to continue, as
    a stop in training does (the CLI's exit status stays 130 or 143)."""
    try:
        yield
    except KeyboardInterrupt:
        raise KeyboardInterrupt(f"interrupted {stage}; continue with {continue_with}") from None
    except Terminated:
        raise Terminated(f"terminated (SIGTERM) {stage}; continue with {continue_with}") \
            from None


def _training_took(out: Path, earlier: Earlier) -> tuple[dict[str, Any], str]:
    """The seconds and plan of the run that trained the net, kept when it is only evaluated
    again, with how to say them: its final.json's (the whole run, a re-evaluation's for more
    crops), else its demo.json's (up to the end of training: stopped in the evaluation)."""
    final = read_json_object(out / FINAL) or {}
    if isinstance(final.get("seconds"), int | float):
        return {"seconds": final["seconds"], "plan": final.get("plan")}, "the training run took"
    record = earlier.record or {}
    return ({"seconds": record.get("seconds"), "plan": record.get("plan")},
            "preparing and training it took")


def _took(final: dict[str, Any], what: str) -> str:
    """`what` took so many minutes (final.json's "seconds"), or an unrecorded time."""
    seconds = final.get("seconds")
    return f"{what} {seconds / 60:.1f} min" if isinstance(seconds, int | float) else \
        f"{what} an unrecorded time"


def _say_budget(earlier: Earlier, plan: Plan, out: Path) -> None:
    """Say so when the net reused was trained under another --budget than the one given
    now (the budget is no reason to train again: SAME_RUN_IGNORES)."""
    trained = ((earlier.record or {}).get("plan") or {}).get("budget_s")
    if isinstance(trained, int | float) and not math.isclose(trained, plan.budget_s):
        print(f"{out} was trained with --budget {trained / 60:g}; give another --out to train "
              f"for {plan.budget_s / 60:g}")


def _train(config: Config, earlier: Earlier, plan: Plan, spent: float) -> dict[str, Any]:
    """Train (or resume the interrupted run) within the time left; record its end in
    trained.json, so that a demo stopped in the evaluation is not trained again."""
    from alexnet.config import from_dict
    from alexnet.train import train

    time_limit = max(10.0, plan.budget_s - spent - _eval_reserve(plan))
    config = from_dict({"run": {"time_limit": time_limit}}, config)
    if earlier.checkpoint is not None:
        print(f"{config.run.out} holds this demo's interrupted run: continuing it")
        config = from_dict({"run": {"resume": str(earlier.checkpoint)}}, config)
    print(f"training for at most {time_limit:.0f} s (then a checkpoint and the test "
          "evaluation)", flush=True)
    result = train(config, continue_with=CONTINUE_WITH)
    trained = {k: result[k] for k in ("stopped", "epochs", "steps", "train_loss", "train_error",
                                      "val_top1_error")}
    write_json(Path(config.run.out) / TRAINED, trained, indent=2)
    return trained


def _eval_reserve(plan: Plan) -> float:
    """Seconds kept for the final test evaluation (forward only: ~1/3 of a training step)."""
    if plan.device.startswith("cuda"):
        return 20.0
    return min(plan.budget_s * 0.2, 15.0 + plan.test_images * 0.06)  # ~17 images/s forward


def evaluate_run(out: Path, store: Path, config: Any, plan: Plan, t_start: float,
                 ten_crop: bool | None) -> dict[str, Any]:
    """Top-1/top-5 error of the final checkpoint on the test split (centre, maybe 10 crops)."""
    from alexnet.checkpoint import load_model
    from alexnet.data.store import open_split
    from alexnet.evaluate import evaluate_model
    from alexnet.paper import TEST_CROPS

    model, ckpt = load_model(out / "checkpoint.pt", device=plan.device)
    test = open_split(store, "test")
    kwargs = dict(batch_size=config.run.eval_batch_size, device=plan.device,
                  stats=ckpt["stats"], mean=config.data.mean, crop=config.data.crop)
    t0 = time.monotonic()
    centre = evaluate_model(model, test, crops=1, progress="test, centre crop", **kwargs)
    seconds = time.monotonic() - t0
    final: dict[str, Any] = {"test_top1_error": centre["top1_error"],
                             "test_top5_error": centre["top5_error"],
                             "test_images": centre["images"],
                             "chance_top1_error": 1 - 1 / len(test.classes)}
    n, asked = len(test), ten_crop
    if ten_crop is None:  # as many test images as the time left allows (at least 100)
        left = min(plan.budget_s - (time.monotonic() - t_start) - 5.0,
                   TEN_CROP_SHARE * plan.budget_s)
        n = min(n, int(left * centre["images"] / max(seconds, 1e-6) / TEST_CROPS))
        ten_crop = n >= min(MIN_TEN_CROP_IMAGES, len(test))
    if not ten_crop:
        final["ten_crop"] = "skipped: " + ("not asked for" if asked is False
                                           else "it would not fit the time budget")
        return final
    subset = list(range(n)) if n < len(test) else None
    ten = evaluate_model(model, test, crops=TEST_CROPS, indices=subset,
                         progress=f"test, {TEST_CROPS} crops", **kwargs)
    final.update(test_top1_error_10crop=ten["top1_error"], test_top5_error_10crop=ten["top5_error"],
                 ten_crop_images=ten["images"])
    if subset is not None:  # the centre crop on the same images, for the comparison
        same = evaluate_model(model, test, crops=1, indices=subset, **kwargs)
        final.update(test_top1_error_centre_same_images=same["top1_error"],
                     test_top5_error_centre_same_images=same["top5_error"])
    return final


def _run_folder(out: Path, config: Config, ten_crop: bool | None,
                record: dict[str, Any] | None = None) -> tuple[Path, Earlier]:
    """`out`, or out-2, out-3 ... when `out` holds another run (nothing is overwritten); with
    what it holds of an earlier run of this same demo (`config`, and `record` when given),
    which the demo then continues."""
    candidate, n = out, 1
    while (earlier := _earlier_run(candidate, config, ten_crop, record)) is None:
        n += 1
        candidate = out.with_name(f"{out.name}-{n}")
    if candidate != out:
        print(f"{out} already holds another run: writing to {candidate}")
    return candidate, earlier


def _earlier_run(folder: Path, config: Config, ten_crop: bool | None,
                 record: dict[str, Any] | None = None) -> Earlier | None:
    """What `folder` holds of an earlier run of the demo `config` with `record` (the demo
    always gives one; without, only a folder without demo.json can match): an empty Earlier
    when it holds no run, or this demo's stopped before its first checkpoint; None when it
    holds another run or files of a run's names that are not this demo's (another config or
    subset, the user's own config.json, unreadable): they are never overwritten."""
    ckpt = folder / "checkpoint.pt"
    theirs = read_json_object(folder / "config.json")
    their_record = read_json_object(folder / RECORD)
    ours = theirs is not None and \
        _same_run(theirs, their_record) == _same_run(_config_dict(config), record)
    if not ckpt.exists():  # a run of this demo stopped before its first checkpoint, or none
        # a run's files there, not of this demo (another run's, the user's): another run's
        from alexnet.training.run_folder import RunFiles

        written = [p.name for p in (*RunFiles(folder).own_files(), folder / TRAINED,
                                    folder / FINAL) if p.exists()]
        return Earlier() if not written or (ours and FINAL not in written) else None
    if not ours:
        return None
    final = read_json_object(folder / FINAL)
    if final is None or "test_top1_error" not in final or \
            (ten_crop and "test_top1_error_10crop" not in final):
        final = None  # evaluated not at all, or without the 10 crops now asked for
    return Earlier(checkpoint=ckpt, trained=read_json_object(folder / TRAINED), final=final,
                   record=their_record)


def _config_dict(config: Config) -> dict[str, Any]:
    """`config` as config.json holds it."""
    from alexnet.config import to_dict

    return json.loads(json.dumps(to_dict(config)))


def _same_run(config: dict[str, Any], record: dict[str, Any] | None = None
              ) -> dict[str, Any]:
    """A config dict without the keys that differ between runs of the same demo, with what
    of its `record` (RECORD), when given, decides the result: equal for the same demo only (a
    folder without demo.json, an older demo's, matches no demo's record)."""
    same = {section: {k: v for k, v in values.items()
                      if k not in SAME_RUN_IGNORES.get(section, ())}
            if isinstance(values, dict) else values for section, values in config.items()}
    if record is None:
        return same
    plan = record.get("plan") if isinstance(record.get("plan"), dict) else {}
    return {**same, "demo": {"data": record.get("data"), "store": record.get("store"),
                             **{k: plan.get(k) for k in SAME_PLAN}}}


def _report(final: dict[str, Any], out: Path, store: Path, timing: str | None = None) -> None:
    """Print the figures, the 10 crops or why they were skipped, `timing` (default: the
    minutes final.json records) and where everything was written."""
    print(f"test top-1 error {100 * final['test_top1_error']:.2f}% (chance: "
          f"{100 * final['chance_top1_error']:.0f}%), top-5 "
          f"{100 * final['test_top5_error']:.2f}%, centre crop, "
          f"{final['test_images']} test images")
    if "test_top1_error_10crop" in final:
        n = final["ten_crop_images"]
        same = "" if "test_top1_error_centre_same_images" not in final else \
            (f" (centre crop on the same {n} images: top-1 "
             f"{100 * final['test_top1_error_centre_same_images']:.2f}%)")
        print(f"10 crops on {n} test images: top-1 {100 * final['test_top1_error_10crop']:.2f}%,"
              f" top-5 {100 * final['test_top5_error_10crop']:.2f}%{same}")
    elif isinstance(final.get("ten_crop"), str):
        print(f"10 crops {final['ten_crop']}; rerun the same command with --ten-crop to "
              "evaluate them (the trained net is not trained again)")
    print(f"{timing or _took(final, 'done in')}. Written:")
    for name, what in ((FINAL, "final metrics"), ("log.jsonl", "per-epoch log"),
                       ("log.csv", "the same as CSV"),
                       ("steps.jsonl", "loss, lr and images/s every run.log_every steps"),
                       ("curves.png", "training curves"),
                       ("checkpoint.pt", "the trained net (alexnet evaluate/predict)"),
                       (TRAINED, "how the training ended"),
                       (RECORD, "the data, store and plan it was trained with"),
                       ("config.json", "the resolved config")):
        if (out / name).is_file():
            print(f"  {out / name}: {what}")
    print(f"  {store}: the prepared store (reused by the next demo)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `alexnet demo`."""
    parser.add_argument("--data", default=None,
                        help=f"folder of Fashion-MNIST IDX files (default {FASHION_MNIST})")
    parser.add_argument("--out", default="runs/demo", help="run folder (default runs/demo)")
    parser.add_argument("--store", default=None,
                        help="where the prepared store goes (default beside the run folder)")
    parser.add_argument("--budget", type=float, default=None,
                        help="minutes in all (default 13 on a CPU, 2.5 on a GPU)")
    parser.add_argument("--train-images", type=int, default=None,
                        help="Fashion-MNIST training images used (default 4000 on a CPU, "
                        "20000 on a GPU)")
    parser.add_argument("--test-images", type=int, default=None,
                        help="test images (default 1000 on a CPU, 5000 on a GPU)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs (default 4 on a CPU, 12 on a GPU, or fewer to fit --budget)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="batch (default 64 on a CPU, 128 on a GPU)")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N")
    parser.add_argument("--ten-crop", dest="ten_crop", action="store_const", const=True,
                        default=None, help="always evaluate with 10 crops too")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="SECTION.KEY=VALUE",
                        help="a training config override, except the keys the demo sets "
                        f"itself ({', '.join(DEMO_KEYS)})")


def run(args: argparse.Namespace) -> int:
    """`alexnet demo`."""
    from alexnet.evaluate import resolve_device
    plan = default_plan(str(resolve_device(args.device)))
    given = []
    for name in ("train_images", "test_images", "epochs", "batch_size"):
        value = getattr(args, name)
        if value is not None:
            if value < 1:
                raise UserError(f"--{name.replace('_', '-')} {value}: must be at least 1")
            if name in MAX_IMAGES and value > MAX_IMAGES[name][0]:
                most, split = MAX_IMAGES[name]
                raise UserError(f"--{name.replace('_', '-')} {value}: Fashion-MNIST has "
                                f"{most:,} {split} images; give at most {most}")
            setattr(plan, name, value)
            given.append(f"--{name.replace('_', '-')}")
    if args.budget is not None:
        if not 0 < args.budget < math.inf:  # nan and inf too: no time limit the run can use
            raise UserError(f"--budget {args.budget}: give a finite number of minutes > 0")
        plan.budget_s = 60.0 * args.budget
        given.append("--budget")
    if given:  # the default plan's reason no longer describes the numbers printed
        plan.why = f"{', '.join(given)} as given (the default plan: {plan.why})"
    demo(args.data, args.out, args.store, plan, args.overrides, args.device, args.ten_crop)
    return 0
