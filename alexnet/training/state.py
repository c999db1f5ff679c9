"""The training state: the network with the paper's initialisation, PaperSGD, the plateau
schedule and the counters, built from a config, and its conversion to and from a checkpoint."""

from __future__ import annotations

import math
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from alexnet import checkpoint
from alexnet.config import Config, from_dict, model_kwargs, scaled_lr, to_dict
from alexnet.data.augment import MEAN_STATS
from alexnet.distributed import print0
from alexnet.errors import UserError, one_line
from alexnet.training.run_folder import plural
from alexnet.training.runtime import Runtime, compile_model, restore_rng


@dataclass
class RunState:
    """Everything that moves during training and goes into a checkpoint."""

    model: nn.Module  # what the step calls: maybe compiled, maybe DDP-wrapped
    net: nn.Module  # the plain network (split across two GPUs with split_columns)
    optimizer: torch.optim.Optimizer
    schedule: Any
    epoch: int = 0  # the epoch in progress (0-based)
    step: int = 0  # batches of that epoch already done
    global_step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    acc: dict[str, float] = field(default_factory=dict)  # partial sums of the epoch
    best_error: float = math.inf
    stats: Any = None  # the statistics the run normalises and colours with (procedure.py)
    # not saved: where this process started (the whole-run ETA) and whether the chance
    # check has spoken
    started_at: float = 0.0
    started_step: int = 0
    chance_said: bool = False
    loss_bound: float = math.inf  # above it the run diverged (saving.loss_bound)
    last_good: Path | None = None  # the newest checkpoint saved or resumed from (saving.py)
    graphed: Any = None  # run.cuda_graph's GraphedStep, once the first step made it


def build_network(config: Config, num_classes: int) -> nn.Module:
    """The network of `config` with the paper's initialisation (seeded by the caller)."""
    from alexnet.model import build_model

    return build_model(config.model.arch, num_classes=num_classes, **model_kwargs(config))


def build_state(config: Config, num_classes: int, rt: Runtime) -> RunState:
    """Network (placed, wrapped), PaperSGD over the paper's parameter groups, the schedule."""
    from alexnet.optim import PaperSGD, PlateauSchedule, param_groups

    net = build_network(config, num_classes)
    if rt.dist.column_devices is not None:
        from alexnet.model import split_columns

        net = split_columns(net, rt.dist.column_devices)
    else:
        net = net.to(rt.device)
    if rt.channels_last:
        net = net.to(memory_format=torch.channels_last)
    o = config.optim
    optimizer = PaperSGD(param_groups(net, bias_decay=o.bias_decay), lr=scaled_lr(config),
                         momentum=o.momentum, weight_decay=o.weight_decay)
    schedule = PlateauSchedule(optimizer, factor=o.lr_factor, patience=o.patience,
                               threshold=o.threshold, max_drops=o.max_drops)
    model = net
    if rt.compile:
        model = compile_model(model, rt.device)
    if rt.dist.distributed:
        device_ids = [rt.device.index] if rt.device.type == "cuda" and \
            rt.dist.column_devices is None else None
        model = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    return RunState(model=model, net=net, optimizer=optimizer, schedule=schedule)


def make_checkpoint(s: RunState, config: Config, train_store: Any, rt: Runtime,
                    ranks: list[tuple[dict[str, Any], dict[str, Any]]]) -> dict[str, Any]:
    """The full training state (docs/design.md, checkpoint.py); `ranks`: every rank's partial
    sums of the epoch and generator states, rank 0's first (`acc` and `rng`; under torchrun
    all of them too, `rank_acc` and `rank_rng`), with the world size."""
    accs, rngs = [dict(acc) for acc, _ in ranks], [rng for _, rng in ranks]
    per_rank = {"rank_acc": accs, "rank_rng": rngs} if len(ranks) > 1 else {}
    return checkpoint.make_state(
        s.net, optimizer=s.optimizer.state_dict(), schedule=s.schedule.state_dict(),
        scaler=rt.scaler.state_dict() if rt.scaler.is_enabled() else None,
        epoch=s.epoch, step=s.step, global_step=s.global_step,
        acc=accs[0], **per_rank, world_size=rt.dist.world_size,
        best_error=s.best_error, config=to_dict(config),
        classes=list(train_store.classes), stats=s.stats,
        rng=rngs[0], metrics=list(s.history))


def _is_table(value: Any) -> bool:
    return isinstance(value, dict)


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _sums(value: Any) -> bool:
    return isinstance(value, dict) and all(_number(v) for v in value.values())


def _group(value: Any) -> bool:
    """Whether `value` is a parameter group of PaperSGD's state_dict (what its step reads)."""
    return isinstance(value, dict) and isinstance(value.get("params"), list) and all(
        _number(value.get(key)) for key in ("lr", "momentum", "weight_decay"))


# What a resumed run reads of a checkpoint (`restore`; the config: alexnet.train; the
# generators' states, `rng` or `rank_rng`, apart): key -> (required, the form it must have,
# that form in words). The optional keys are absent from older checkpoints, or from runs of
# one process.
RESUMED: dict[str, tuple[bool, Callable[[Any], bool], str]] = {
    "arch": (True, lambda v: isinstance(v, str), "an architecture name"),
    "model_args": (True, _is_table, "a table of the network's arguments"),
    "model": (True, lambda v: isinstance(v, dict) and all(
        isinstance(t, torch.Tensor) for t in v.values()), "a table of weight tensors"),
    "optimizer": (True, lambda v: isinstance(v, dict) and isinstance(v.get("state"), dict)
                  and isinstance(v.get("param_groups"), list) and all(
                      _group(g) for g in v["param_groups"]),
                  "the optimizer's state (its state, and param_groups of numbers lr, momentum "
                  "and weight_decay)"),
    "schedule": (True, _is_table, "a table of the schedule's counters"),
    "epoch": (True, _count, "an epoch count (an integer >= 0)"),
    "step": (True, _count, "a step count (an integer >= 0)"),
    "global_step": (False, _count, "a step count (an integer >= 0)"),
    "world_size": (False, lambda v: _count(v) and v >= 1, "a number of ranks (>= 1)"),
    "best_error": (False, _number, "an error rate"),
    "scaler": (False, lambda v: v is None or isinstance(v, dict), "the loss scaler's state"),
    "acc": (False, _sums, "a table of the epoch's partial sums"),
    "rank_acc": (False, lambda v: isinstance(v, list) and all(_sums(r) for r in v),
                 "a list of every rank's partial sums"),
    "metrics": (False, lambda v: isinstance(v, list) and all(isinstance(r, dict) for r in v),
                "a list of the log's rows (tables)"),
    "config": (True, _is_table, "the run's config table"),
}
WEIGHTS = ("arch", "model_args", "model")  # what --init-from needs of a checkpoint


def check_resumable(ckpt: dict[str, Any], path: Path) -> None:
    """Refuse in one line, naming `path`, the key and what to do, a checkpoint that lacks
    something `restore` reads or holds it in another form (a weights-only export, a file of
    another tool or version, a damaged one): before the run builds anything from it."""
    if ckpt.get("weights_only") or "optimizer" not in ckpt:
        raise UserError(f"{path}: a weights-only file (export) cannot be resumed; use "
                        f"--init-from {path} to start a new run from its weights")
    problems = {key: "is missing" if key not in ckpt else
                f"is {checkpoint.kind_of(ckpt[key])}, not {what}"
                for key, (required, fits, what) in RESUMED.items()
                if (key in ckpt or required) and not fits(ckpt.get(key))}
    rng_key = "rank_rng" if ckpt.get("rank_rng") else "rng"  # what restore_rng reads
    states = ckpt.get(rng_key)
    if rng_key not in ckpt:
        problems[rng_key] = "(the generators' states) is missing"
    elif rng_key == "rank_rng" and not isinstance(states, list):
        problems[rng_key] = f"is {checkpoint.kind_of(states)}, not a list of every rank's " \
            "generator states"
    else:
        reasons = [checkpoint.rng_problem(state)
                   for state in (states if rng_key == "rank_rng" else [states])]
        if any(reasons):
            problems[rng_key] = next(r for r in reasons if r)
    if not problems:
        return
    key, problem = next(iter(problems.items()))
    advice = f"start a new run from its weights with --init-from {path}" \
        if not problems.keys() & set(WEIGHTS) else \
        "resume from another checkpoint of the run, or start a new run"
    raise UserError(f"{path}: not a training checkpoint that can be resumed: its {key!r} "
                    f"{problem} (written by another tool or version, or damaged); {advice}")


def resumed_stats(ckpt: dict[str, Any], path: Path, config: Config, store_stats: Any) -> Any:
    """The statistics a resumed run normalises and colours with: the checkpoint's (those it
    was trained with), else the store's (`store_stats`). A checkpoint table that lacks what
    data.mean or data.pca needs is refused naming the file, not the store."""
    stats = ckpt.get("stats")
    if not stats:
        return store_stats
    pca = "data.pca (the PCA colour shifts)"
    need = {"eigval": pca, "eigvec": pca} if config.data.pca else {}
    mean_key = MEAN_STATS.get(config.data.mean)
    if mean_key is not None:
        need[mean_key] = f"data.mean = {config.data.mean!r}"
    missing = [key for key in need if stats.get(key) is None]
    if missing:
        uses = " and ".join(dict.fromkeys(need[key] for key in missing))
        raise UserError(f"{path}: its 'stats' (the statistics it was trained with) lack "
                        f"{', '.join(missing)}, which {uses} needs (damaged, or written by "
                        "another tool); resume from another checkpoint of the run, or start a "
                        f"new run from its weights with --init-from {path}")
    if not same_training_set(stats, store_stats):
        print0(f"notice: the training split of {config.data.store} is not the one {path} was "
               "trained on (its statistics differ: prepared again from other images, or "
               "another store); the run goes on with the checkpoint's statistics, but its "
               "batches are not the uninterrupted run's: give --data the store it was trained "
               "on to continue that run")
    return stats


def same_training_set(ckpt_stats: dict[str, Any], store_stats: dict[str, Any]) -> bool:
    """Whether a checkpoint's statistics are those of the store's training split (its pixel
    count and mean image): a store prepared again from other images has others."""
    import numpy as np

    mean, theirs = ckpt_stats.get("mean_image"), store_stats.get("mean_image")
    if mean is None or theirs is None:
        return True  # nothing to compare: a checkpoint of a run without the mean image
    pixels = ckpt_stats.get("pixels"), store_stats.get("pixels")
    return (None in pixels or int(pixels[0]) == int(pixels[1])) \
        and np.array_equal(np.asarray(mean, np.float32), np.asarray(theirs, np.float32))


def restore(s: RunState, ckpt: dict[str, Any], path: Path, rt: Runtime, config: Config,
            given: Collection[str] = (), classes: list[Any] | None = None) -> None:
    """Load a checkpoint's state into `s` (the RNG states last, each rank its own: building
    drew from them); a checkpoint of another class count, other classes than the store's
    (`classes`, in order: fc8's rows are the labels) or another architecture is refused in
    one line.

    Optimizer settings given with --resume (lr, momentum, weight decay: keys in `given`), or
    that `config` changes against the checkpoint's own config, replace the resumed ones.
    """
    net_arch = getattr(s.net, "arch", "alexnet")
    net_args = dict(getattr(s.net, "kwargs", {}))
    theirs = (ckpt.get("model_args") or {}).get("num_classes")
    if theirs is not None and theirs != net_args.get("num_classes"):
        raise UserError(f"{path}: the checkpoint has {theirs} classes, {config.data.store}'s "
                        f"training split has {net_args.get('num_classes')}; resume on the run's "
                        f"own store, or start a new run with --init-from {path}")
    _check_classes(ckpt, path, config, classes)
    if ckpt.get("arch") != net_arch or dict(ckpt.get("model_args") or {}) != net_args:
        raise UserError(f"{path}: a checkpoint of another architecture ({ckpt.get('arch')} "
                        f"{ckpt.get('model_args')}) than this config's ({net_arch} {net_args}); "
                        "resume with the run's own settings")
    try:
        checkpoint.unwrap(s.net).load_state_dict(ckpt["model"])
        s.optimizer.load_state_dict(ckpt["optimizer"])
        s.schedule.load_state_dict(ckpt["schedule"])
    except (KeyError, TypeError, RuntimeError, ValueError) as err:
        raise UserError(f"{path}: its state does not fit this network "
                        f"({one_line(err)}); resume with the run's own settings") \
            from None
    _apply_new_settings(s, config, ckpt, path, given)
    if ckpt.get("scaler") and rt.scaler.is_enabled():
        rt.scaler.load_state_dict(ckpt["scaler"])
    s.epoch, s.step = int(ckpt["epoch"]), int(ckpt["step"])
    s.global_step = int(ckpt.get("global_step", 0))
    s.acc = rank_sums(ckpt, rt.dist.rank, rt.dist.world_size)
    s.best_error = float(ckpt.get("best_error", math.inf))
    s.history = list(ckpt.get("metrics") or [])
    s.last_good = path
    if ckpt.get("world_size", rt.dist.world_size) != rt.dist.world_size:
        print0(f"notice: {path} was trained on {plural(ckpt['world_size'], 'rank')}, this "
               f"launch has {rt.dist.world_size}: each step takes the same images, with other "
               "crops, flips, colour shifts and dropout masks (not the run an unchanged launch "
               "gives)")
    restore_rng(ckpt, rt.dist.rank, config.run.seed, s.global_step)


def _check_classes(ckpt: dict[str, Any], path: Path, config: Config,
                   classes: list[Any] | None) -> None:
    """Refuse a store whose classes (wnids, in label order) are not the checkpoint's: its
    label k would train fc8's row of another class. Either side unnamed is not checked."""
    from alexnet.training.init_from import class_ids

    theirs, ours = class_ids(ckpt.get("classes") or []), class_ids(classes or [])
    if not theirs or not ours or theirs == ours:
        return
    differ = [(a, b) for a, b in zip(theirs, ours, strict=False) if a != b]
    shown = ", ".join(f"{a!r} vs {b!r}" for a, b in differ[:4]) + \
        (f" and {len(differ) - 4} more" if len(differ) > 4 else "")
    raise UserError(f"{path}: the checkpoint's classes differ from {config.data.store}'s "
                    f"(checkpoint vs store: {shown}); resume on the run's own store, or start "
                    f"a new run with --init-from {path}")


SUMS = ("loss_sum", "wrong", "seen")  # the epoch's partial sums that add up over ranks


def rank_sums(ckpt: dict[str, Any], rank: int, world: int) -> dict[str, float]:
    """This rank's partial sums of the resumed epoch: its own when the run had as many ranks,
    else an equal share of all ranks' totals, so that the epoch's logged loss and error stay
    the means over all its images whatever the world size (the clock: rank 0's). A checkpoint
    older than this record (no world size) gives rank 0's sums to every rank, as it did."""
    ranks = ckpt.get("rank_acc") or [ckpt.get("acc") or {}]
    if len(ranks) == world:
        return dict(ranks[rank])
    if "world_size" not in ckpt:
        return dict(ranks[0])
    share = {k: sum(float(r.get(k, 0.0)) for r in ranks) / world for k in SUMS
             if any(k in r for r in ranks)}
    if "seconds" in ranks[0]:
        share["seconds"] = float(ranks[0]["seconds"])
    return share


def _apply_new_settings(s: RunState, config: Config, ckpt: dict[str, Any], path: Path,
                        given: Collection[str]) -> None:
    """Give the resumed optimizer the lr, momentum and weight decay that `config` newly sets
    or that were given anew (`given`: `--lr 0.01` after the schedule's drops means 0.01, even
    though the run started there)."""
    old = from_dict(ckpt.get("config") or {}, where=f"{path} config")
    lr, old_lr = scaled_lr(config), scaled_lr(old)
    o, p = config.optim, old.optim
    new_lr = lr != old_lr or bool(LR_KEYS & set(given))
    resumed_lr = s.optimizer.param_groups[0]["lr"]
    for group in s.optimizer.param_groups:
        if new_lr:
            group["lr"] = lr
        if o.momentum != p.momentum or "optim.momentum" in given:
            group["momentum"] = o.momentum
        if (o.weight_decay != p.weight_decay or "optim.weight_decay" in given) \
                and group["weight_decay"] == p.weight_decay:
            group["weight_decay"] = o.weight_decay
    if new_lr:
        print0(f"lr {lr:g} from now on (the resumed run was at {resumed_lr:g})")


# The keys that set the starting lr (config.scaled_lr): given on resume, they set the lr anew.
LR_KEYS = {"optim.lr", "optim.lr_scaling", "optim.base_batch"}

