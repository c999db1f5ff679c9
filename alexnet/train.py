"""`alexnet train`: the paper's learning procedure (section 5) on a prepared store.

The defaults are the paper's recipe: global batch 128, PaperSGD (v <- 0.9 v - 0.0005 lr w -
lr g; w <- w + v) with no weight decay on biases (cuda-convnet's choice), lr 0.01 divided by 10
whenever the validation top-1 error stops improving (PlateauSchedule, at most three drops), 90
epochs, the paper's initialisation and dropout, random 224 crops, flips and PCA colour shifts.
Speed options (bf16/fp16 autocast, channels_last, torch.compile) are opt-in (preset `fast`).

Every epoch writes a row (training loss and error, validation top-1/top-5 centre-crop error,
lr, images/s) to log.jsonl and log.csv, redraws curves.png and saves checkpoint.pt atomically;
Ctrl-C finishes the current step and saves the position inside the epoch. `--resume` restores
model, optimizer, schedule, epoch, step, RNG states and (through the loader's deterministic
order) the data, so an interrupted run ends with bit-identical weights on the CPU.
Launched by torchrun it trains data-parallel (alexnet/distributed.py; docs/training.md).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from alexnet import checkpoint, distributed
from alexnet.config import (
    AMP_CHOICES,
    Config,
    from_dict,
    model_kwargs,
    resolve,
    scaled_lr,
    to_dict,
    validate,
    write_json,
)
from alexnet.distributed import DistInfo, print0
from alexnet.errors import UserError

CHECK_EVERY_CUDA = 25  # steps between host syncs (loss finiteness, progress bar) on a GPU
LOG_FIELDS = ("epoch", "steps", "lr", "train_loss", "train_error", "val_top1_error",
              "val_top5_error", "images_per_s", "epoch_seconds", "lr_dropped", "partial")


@dataclass
class Runtime:
    """Device, precision and compile, decided in one place (`setup_runtime`)."""

    dist: DistInfo
    device: torch.device
    amp_dtype: torch.dtype | None
    scaler: torch.amp.GradScaler
    channels_last: bool
    compile: bool

    def autocast(self) -> contextlib.AbstractContextManager:
        """The autocast context of every forward pass (a no-op in fp32)."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)


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


def setup_runtime(config: Config, dist_info: DistInfo) -> Runtime:
    """Autocast dtype and GradScaler (fp16 only), memory format and compile for this device."""
    r = config.run
    device = dist_info.device
    if r.amp not in AMP_CHOICES:
        raise UserError(f"run.amp {r.amp!r}: choose from {', '.join(AMP_CHOICES)}")
    if r.amp == "fp16" and device.type != "cuda":
        raise UserError("run.amp fp16 needs a CUDA device (loss scaling); use bf16 on the CPU")
    dtype = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[r.amp]
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    scaler = torch.amp.GradScaler(device.type, enabled=r.amp == "fp16")
    return Runtime(dist_info, device, dtype, scaler, r.channels_last, r.compile)


def open_data(config: Config) -> tuple[Any, Any | None, str | None]:
    """(train split, validation split or None, its name): `val`, else `test` with a notice."""
    from alexnet.data.store import open_split

    root = Path(config.data.store) if config.data.store else None
    if root is None:
        raise UserError("no store given: --data STORE (a folder made by 'alexnet prepare')")
    if not root.is_dir():
        raise UserError(f"{root}: no such store; make one with 'alexnet prepare SOURCE {root}'")
    train_store = open_split(root, "train")
    choice = config.data.val_split
    if choice == "none":
        return train_store, None, None
    if choice == "auto":
        choice = "val" if (root / "val").is_dir() else "test" if (root / "test").is_dir() else ""
        if choice == "test":
            print0(f"notice: {root} has no 'val' split; validating on its 'test' split "
                   "(the schedule then sees test error: report test figures with that in mind)")
        if not choice:
            print0(f"notice: {root} has neither 'val' nor 'test': no validation, constant lr")
            return train_store, None, None
    return train_store, open_split(root, choice), choice


def build_network(config: Config, num_classes: int) -> nn.Module:
    """The network of `config` with the paper's initialisation (seeded by the caller).

    `model.init_bias` other than 1 resets the biases the paper sets to 1 (docs/training.md).
    """
    from alexnet.model import build_model

    kwargs = model_kwargs(config) if config.model.arch == "alexnet" else \
        {"dropout": config.model.dropout}  # the torchvision layout has no other switches
    net = build_model(config.model.arch, num_classes=num_classes, **kwargs)
    if config.model.init_bias != 1.0:
        with torch.no_grad():
            for name, module in net.named_modules():
                if name in _bias_one_layers(net):
                    module.bias.fill_(config.model.init_bias)
    return net


def _bias_one_layers(net: nn.Module) -> tuple[str, ...]:
    """The names of the layers whose biases the paper initialises to 1, in `net`'s layout."""
    from alexnet import model as model_module
    from alexnet.paper import BIAS_ONE_LAYERS

    return BIAS_ONE_LAYERS if getattr(net, "arch", "alexnet") == "alexnet" else \
        model_module.TV_BIAS_ONE


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
        model = torch.compile(model)
    if rt.dist.distributed:
        device_ids = [rt.device.index] if rt.device.type == "cuda" and \
            rt.dist.column_devices is None else None
        model = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    return RunState(model=model, net=net, optimizer=optimizer, schedule=schedule)


def train_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
               optimizer: torch.optim.Optimizer, rt: Runtime) -> tuple[torch.Tensor, torch.Tensor]:
    """One SGD step on a batch: (mean loss, number of wrong top-1 predictions), on device."""
    if rt.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with rt.autocast():
        logits = model(x)
    y = y.to(logits.device, non_blocking=True)
    loss = F.cross_entropy(logits.float(), y)
    optimizer.zero_grad(set_to_none=True)
    rt.scaler.scale(loss).backward()
    rt.scaler.step(optimizer)
    rt.scaler.update()
    return loss.detach(), (logits.detach().argmax(1) != y).sum()


def steps_in_epoch(loader: Any, config: Config) -> int:
    """Batches per epoch: the loader's, capped by run.steps_per_epoch."""
    n = len(loader)
    cap = config.run.steps_per_epoch
    return min(n, cap) if cap else n


@contextlib.contextmanager
def interrupt_guard() -> Iterator[dict[str, bool]]:
    """Ctrl-C sets a flag checked after each step; a second Ctrl-C interrupts at once."""
    flag = {"hit": False}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum: int, frame: Any) -> None:
        if flag["hit"]:
            raise KeyboardInterrupt
        flag["hit"] = True
        print0("\ninterrupted: finishing this step and saving a checkpoint "
               "(Ctrl-C again to abort without saving)", flush=True)

    signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


def _progress(total: int, initial: int, desc: str, enabled: bool) -> Any:
    """A tqdm bar on rank 0, or None."""
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="batch", dynamic_ncols=True,
                leave=False)


def train_epoch(s: RunState, loader: Any, config: Config, rt: Runtime, flag: dict[str, bool],
                deadline: float, last_good: Path | None) -> str | None:
    """Train epoch `s.epoch` from batch `s.step`; return why it stopped early, or None."""
    total = steps_in_epoch(loader, config)
    s.model.train()
    check_every = CHECK_EVERY_CUDA if rt.device.type == "cuda" else 1
    bar = _progress(total, s.step, f"epoch {s.epoch + 1}/{config.optim.epochs}",
                    config.run.progress and rt.dist.is_main)
    loss_sum = torch.zeros((), dtype=torch.float64, device=rt.device)
    wrong_sum = torch.zeros((), dtype=torch.int64, device=rt.device)
    seen, t0, reason = 0, time.perf_counter(), None
    try:
        if s.step >= total:
            return None
        for x, y in loader.epoch(s.epoch, start=s.step):
            loss, wrong = train_step(s.model, x, y, s.optimizer, rt)
            batch = y.shape[0]
            loss_sum += loss.to(loss_sum.device, torch.float64) * batch
            wrong_sum += wrong.to(wrong_sum.device)
            seen += batch
            s.step += 1
            s.global_step += 1
            if s.step % check_every == 0 or s.step == total:
                _check_finite(loss, s, last_good)
                if bar is not None:
                    elapsed = time.perf_counter() - t0
                    bar.set_postfix(loss=f"{loss.item():.3f}",
                                    img_s=f"{seen * rt.dist.world_size / max(elapsed, 1e-9):.0f}")
                    bar.update(s.step - bar.n)
            reason = _agreed_stop(s, config, rt, flag, deadline, check_every, total)
            if reason is not None or s.step >= total:
                break
    finally:
        if bar is not None:
            bar.close()
        acc = s.acc
        acc["loss_sum"] = acc.get("loss_sum", 0.0) + float(loss_sum)
        acc["wrong"] = acc.get("wrong", 0.0) + float(wrong_sum)
        acc["seen"] = acc.get("seen", 0.0) + seen
        acc["seconds"] = acc.get("seconds", 0.0) + time.perf_counter() - t0
    return reason


def _agreed_stop(s: RunState, config: Config, rt: Runtime, flag: dict[str, bool],
                 deadline: float, check_every: int, total: int) -> str | None:
    """Why to stop after this step, the same on every rank.

    The step limit is the same everywhere; Ctrl-C and the clock differ between ranks, so
    under torchrun they are agreed (one all-reduce) every `check_every` steps only.
    """
    reason = _stop_reason(s, config, flag, deadline)
    if not rt.dist.distributed or reason == "max_steps":
        return reason
    if s.step % check_every and s.step != total:
        return None
    return (reason or "interrupt") if distributed.any_rank(reason is not None, rt.device) \
        else None


def _check_finite(loss: torch.Tensor, s: RunState, last_good: Path | None) -> None:
    """Stop on a NaN/inf loss, keeping the last good checkpoint untouched."""
    value = float(loss)
    if not math.isfinite(value):
        kept = f"the last good checkpoint {last_good} is kept" if last_good else \
            "no checkpoint had been written yet"
        raise UserError(f"training loss is {value} at epoch {s.epoch + 1}, step {s.step}: "
                        f"stopped ({kept}); lower optim.lr or turn off run.amp")


def _stop_reason(s: RunState, config: Config, flag: dict[str, bool],
                 deadline: float) -> str | None:
    """'interrupt', 'max_steps' or 'time_limit' when the run must stop after this step."""
    if flag["hit"]:
        return "interrupt"
    if config.run.max_steps and s.global_step >= config.run.max_steps:
        return "max_steps"
    if deadline and time.monotonic() >= deadline:
        return "time_limit"
    return None


def validate_epoch(s: RunState, val_store: Any, config: Config, rt: Runtime,
                   stats: dict[str, Any]) -> dict[str, float]:
    """Validation top-1/top-5 error (centre crop) on rank 0, shared with every rank."""
    from alexnet.evaluate import evaluate_model

    result: dict[str, float] = {}
    if rt.dist.is_main and val_store is not None:
        n = len(val_store)
        limit = config.run.val_limit
        indices = list(range(min(limit, n))) if limit else None
        with rt.autocast():
            res = evaluate_model(s.net, val_store, crops=1, batch_size=config.run.eval_batch_size,
                                 device=rt.device, stats=stats, mean=config.data.mean,
                                 crop=config.data.crop, indices=indices)
        result = {"val_top1_error": res["top1_error"], "val_top5_error": res["top5_error"]}
    return distributed.broadcast_object(result)


def epoch_row(s: RunState, rt: Runtime, val: dict[str, float], dropped: bool,
              partial: bool, lr: float | None = None) -> dict[str, Any]:
    """The log row of the epoch just trained (training figures averaged over ranks).

    `lr` is the rate the epoch trained with (the schedule may have dropped it since).
    """
    acc = distributed.all_reduce_mean(
        {"loss": s.acc.get("loss_sum", 0.0) / max(1.0, s.acc.get("seen", 0.0)),
         "error": s.acc.get("wrong", 0.0) / max(1.0, s.acc.get("seen", 0.0))}, rt.device)
    seconds = s.acc.get("seconds", 0.0)
    images = s.acc.get("seen", 0.0) * rt.dist.world_size
    return {"epoch": s.epoch + 1, "steps": s.global_step,
            "lr": s.optimizer.param_groups[0]["lr"] if lr is None else lr,
            "train_loss": acc["loss"], "train_error": acc["error"],
            "val_top1_error": val.get("val_top1_error"),
            "val_top5_error": val.get("val_top5_error"),
            "images_per_s": images / seconds if seconds > 0 else None,
            "epoch_seconds": seconds, "lr_dropped": dropped, "partial": partial}


def make_checkpoint(s: RunState, config: Config, train_store: Any,
                    rt: Runtime) -> dict[str, Any]:
    """The full training state (docs/design.md, checkpoint.py)."""
    return checkpoint.make_state(
        s.net, optimizer=s.optimizer.state_dict(), schedule=s.schedule.state_dict(),
        scaler=rt.scaler.state_dict() if rt.scaler.is_enabled() else None,
        epoch=s.epoch, step=s.step, global_step=s.global_step,
        acc=dict(s.acc), best_error=s.best_error, config=to_dict(config),
        classes=list(train_store.classes), stats=train_store.stats,
        rng=checkpoint.rng_state(), metrics=list(s.history))


def restore(s: RunState, ckpt: dict[str, Any], path: Path, rt: Runtime) -> None:
    """Load a checkpoint's state into `s` (the RNG states last: building drew from them)."""
    net_arch = getattr(s.net, "arch", "alexnet")
    net_args = dict(getattr(s.net, "kwargs", {}))
    if ckpt.get("arch") != net_arch or dict(ckpt.get("model_args") or {}) != net_args:
        raise UserError(f"{path}: a checkpoint of another architecture ({ckpt.get('arch')} "
                        f"{ckpt.get('model_args')}) than this config's ({net_arch} {net_args}); "
                        "resume with the run's own settings")
    try:
        checkpoint.unwrap(s.net).load_state_dict(ckpt["model"])
        s.optimizer.load_state_dict(ckpt["optimizer"])
        s.schedule.load_state_dict(ckpt["schedule"])
    except (KeyError, RuntimeError, ValueError) as err:
        raise UserError(f"{path}: its state does not fit this network ({str(err)[:100]})") \
            from None
    if ckpt.get("scaler") and rt.scaler.is_enabled():
        rt.scaler.load_state_dict(ckpt["scaler"])
    s.epoch, s.step = int(ckpt["epoch"]), int(ckpt["step"])
    s.global_step = int(ckpt.get("global_step", 0))
    s.acc = dict(ckpt.get("acc") or {})
    s.best_error = float(ckpt.get("best_error", math.inf))
    s.history = list(ckpt.get("metrics") or [])
    checkpoint.set_rng_state(ckpt["rng"])


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy and python: the initialisation and dropout draws."""
    import random

    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


@dataclass
class RunFiles:
    """The files of a run folder."""

    root: Path

    def __post_init__(self) -> None:
        self.root = Path(self.root)

    config = property(lambda self: self.root / "config.json")
    checkpoint = property(lambda self: self.root / "checkpoint.pt")
    best = property(lambda self: self.root / "best.pt")
    log = property(lambda self: self.root / "log.jsonl")
    csv = property(lambda self: self.root / "log.csv")
    curves = property(lambda self: self.root / "curves.png")
    tensorboard = property(lambda self: self.root / "tensorboard")


def write_logs(files: RunFiles, history: list[dict[str, Any]], tb: Any = None) -> None:
    """Rewrite log.jsonl and log.csv from the history (atomically) and redraw curves.png."""
    from alexnet.figures.curves import plot_curves

    _atomic_text(files.log, "".join(json.dumps(row) + "\n" for row in history))
    tmp = files.csv.with_name(f".tmp-{files.csv.name}.{os.getpid()}")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=LOG_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(history)
    os.replace(tmp, files.csv)
    if history:
        plot_curves(files.log, files.curves)
    if tb is not None and history:
        row = history[-1]
        for key in ("train_loss", "train_error", "val_top1_error", "val_top5_error", "lr",
                    "images_per_s"):
            if isinstance(row.get(key), int | float):
                tb.add_scalar(key, row[key], row["epoch"])
        tb.flush()


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".tmp-{path.name}.{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _tensorboard(files: RunFiles, enabled: bool) -> Any:
    """A SummaryWriter when asked for (a clear error when the package is absent)."""
    if not enabled:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError("run.tensorboard: the tensorboard package is not installed; "
                        "pip install tensorboard, or drop --tensorboard") from None
    return SummaryWriter(str(files.tensorboard))


def train(config: Config) -> dict[str, Any]:
    """Train as `config` says; return the final metrics and the paths of the run's files.

    Launched by torchrun (RANK/WORLD_SIZE set) it joins the process group, trains data-parallel
    and leaves the group at the end; otherwise it runs in this process on run.device.
    """
    validate(config)
    dist_info = distributed.init_distributed(config.run.device, config.model.split_columns)
    joined = dist_info.distributed
    try:
        return _train(config, dist_info)
    finally:
        if joined:
            distributed.cleanup()


def _train(config: Config, dist_info: DistInfo) -> dict[str, Any]:
    """The main loop (see `train`)."""
    rt = setup_runtime(config, dist_info)
    train_store, val_store, val_name = open_data(config)
    per_rank = _per_rank_batch(config, len(train_store), dist_info.world_size)
    files = RunFiles(Path(config.run.out))
    resume_ckpt, resume_path = _resume_checkpoint(config, files)

    seed_everything(config.run.seed)
    s = build_state(config, len(train_store.classes), rt)
    stats = train_store.stats
    if resume_ckpt is not None:
        restore(s, resume_ckpt, resume_path, rt)
        stats = resume_ckpt.get("stats") or stats
    loader = _train_loader(train_store, per_rank, config, rt, stats)
    if len(loader) == 0:
        raise UserError(f"optim.batch_size {config.optim.batch_size}: no full batch per rank "
                        f"in {len(train_store)} training images; use a smaller batch")

    tb = None
    if dist_info.is_main:
        files.root.mkdir(parents=True, exist_ok=True)
        write_json(config, files.config)
        tb = _tensorboard(files, config.run.tensorboard)
        _announce(config, rt, train_store, val_name, per_rank, steps_in_epoch(loader, config),
                  files, resume_path)
    last_good = files.checkpoint if resume_ckpt is not None else None
    deadline = time.monotonic() + config.run.time_limit if config.run.time_limit else 0.0
    stopped = "completed"
    with interrupt_guard() as flag:
        while s.epoch < config.optim.epochs:
            reason = train_epoch(s, loader, config, rt, flag, deadline, last_good)
            if reason is not None:
                last_good = _save(s, config, train_store, files, rt)
                if reason == "interrupt":
                    print0(f"checkpoint saved at epoch {s.epoch + 1}, step {s.step}: "
                           f"{files.checkpoint}; continue with --resume {files.root}")
                    raise KeyboardInterrupt
                stopped = reason
                _finish_partial_epoch(s, val_store, config, rt, stats, files, tb)
                break
            last_good = _end_epoch(s, val_store, config, rt, stats, train_store, files, tb)
            if config.run.max_steps and s.global_step >= config.run.max_steps:
                stopped = "max_steps"
                break
    if tb is not None:
        tb.close()
    return _summary(s, files, stopped, val_name)


def _end_epoch(s: RunState, val_store: Any, config: Config, rt: Runtime, stats: Any,
               train_store: Any, files: RunFiles, tb: Any) -> Path | None:
    """Validate (every run.val_every epochs), step the schedule, log, checkpoint."""
    val: dict[str, float] = {}
    dropped, lr = False, s.optimizer.param_groups[0]["lr"]
    if val_store is not None and ((s.epoch + 1) % config.run.val_every == 0
                                  or s.epoch + 1 == config.optim.epochs):
        val = validate_epoch(s, val_store, config, rt, stats)
        dropped = bool(s.schedule.step(val["val_top1_error"]))
    row = epoch_row(s, rt, val, dropped, partial=False, lr=lr)
    improved = val and val["val_top1_error"] < s.best_error
    if improved:
        s.best_error = val["val_top1_error"]
    s.history.append(row)
    s.epoch, s.step, s.acc = s.epoch + 1, 0, {}
    path = _save(s, config, train_store, files, rt, best=bool(improved))
    if rt.dist.is_main:
        write_logs(files, s.history, tb)
        print0(_format_row(row, config.optim.epochs))
        if dropped:
            print0(f"validation error stopped improving: lr divided by {config.optim.lr_factor:g}"
                   f" to {s.optimizer.param_groups[0]['lr']:.2e}")
    return path


def _finish_partial_epoch(s: RunState, val_store: Any, config: Config, rt: Runtime, stats: Any,
                          files: RunFiles, tb: Any) -> None:
    """After a max_steps/time_limit stop mid-epoch: validate and log the partial epoch.

    The checkpoint was saved before this row, so a resumed run logs the full epoch instead.
    """
    val = validate_epoch(s, val_store, config, rt, stats) if val_store is not None else {}
    row = epoch_row(s, rt, val, False, partial=True)
    s.history.append(row)
    if rt.dist.is_main:
        write_logs(files, s.history, tb)
        print0(_format_row(row, config.optim.epochs) + " (partial epoch)")


def _save(s: RunState, config: Config, train_store: Any, files: RunFiles, rt: Runtime,
          best: bool = False) -> Path | None:
    """Rank 0 writes checkpoint.pt (and best.pt); every rank waits for it."""
    if rt.dist.is_main:
        state = make_checkpoint(s, config, train_store, rt)
        checkpoint.save(files.checkpoint, state)
        if best and config.run.save_best:
            checkpoint.save(files.best, state)
    distributed.barrier()
    return files.checkpoint


def _per_rank_batch(config: Config, n_train: int, world: int) -> int:
    """The batch of each rank: the global batch split evenly (checked against the data)."""
    b = config.optim.batch_size
    if b < 1:
        raise UserError(f"optim.batch_size {b}: must be at least 1")
    if b > n_train:
        raise UserError(f"optim.batch_size {b} is larger than the training split "
                        f"({n_train} images); use a smaller --batch-size")
    if b % world:
        raise UserError(f"optim.batch_size {b} (the global batch) does not split evenly over "
                        f"{world} ranks; use a multiple of {world}")
    return b // world


def _train_loader(store: Any, per_rank: int, config: Config, rt: Runtime, stats: Any) -> Any:
    """The sharded, deterministic training loader (loader.py)."""
    from alexnet.data.loader import TrainLoader

    d = config.data
    return TrainLoader(store, per_rank, crop=d.crop, seed=config.run.seed, rank=rt.dist.rank,
                       world_size=rt.dist.world_size, device=rt.device, flip=d.flip, pca=d.pca,
                       pca_scale=d.pca_scale, mean=d.mean, stats=stats,
                       prefetch=config.run.prefetch, channels_last=rt.channels_last)


def _resume_checkpoint(config: Config, files: RunFiles) -> tuple[dict | None, Path | None]:
    """The checkpoint to continue from, or None; refuses to overwrite another run."""
    if config.run.resume:
        path = Path(config.run.resume)
        if path.is_dir():
            path = path / "checkpoint.pt"
        return checkpoint.load(path), path
    if files.checkpoint.exists():
        raise UserError(f"{files.root} already holds a run (checkpoint.pt); continue it with "
                        f"--resume {files.root} or choose another --out")
    return None, None


def _announce(config: Config, rt: Runtime, train_store: Any, val_name: str | None,
              per_rank: int, steps: int, files: RunFiles, resume_path: Path | None) -> None:
    """Say what will run, where, and how (one short paragraph)."""
    o, r = config.optim, config.run
    world = rt.dist.world_size
    print(f"training {config.model.arch} (width {config.model.width:g}) on {config.data.store}: "
          f"{len(train_store)} images, {len(train_store.classes)} classes, "
          f"validation: {val_name or 'none'}")
    print(f"batch {o.batch_size} global ({per_rank} per rank x {world}), lr {scaled_lr(config):g}"
          f" ({o.lr_scaling} scaling), {o.epochs} epochs x {steps} steps, device {rt.device}, "
          f"amp {r.amp}, channels_last {r.channels_last}, compile {r.compile}")
    if resume_path is not None:
        print(f"resuming from {resume_path}")
    print(f"run folder: {files.root}")


def _format_row(row: dict[str, Any], epochs: int) -> str:
    """One line per epoch on the screen."""
    def pct(v: Any) -> str:
        return f"{100 * v:.2f}%" if isinstance(v, int | float) else "-"

    ips = row.get("images_per_s")
    speed = f", {ips:.1f} images/s" if ips else ""
    return (f"epoch {row['epoch']}/{epochs}: loss {row['train_loss']:.4f}, train error "
            f"{pct(row['train_error'])}, val top-1 {pct(row['val_top1_error'])}, top-5 "
            f"{pct(row['val_top5_error'])}, lr {row['lr']:.2e}{speed}")


def _summary(s: RunState, files: RunFiles, stopped: str, val_name: str | None
             ) -> dict[str, Any]:
    """The dict `train` returns: final metrics and the paths of the run's files."""
    last = s.history[-1] if s.history else {}
    return {
        "run_dir": str(files.root), "checkpoint": str(files.checkpoint),
        "best": str(files.best) if files.best.exists() else None,
        "log": str(files.log), "log_csv": str(files.csv), "curves": str(files.curves),
        "config": str(files.config), "stopped": stopped, "epochs": s.epoch, "step": s.step,
        "steps": s.global_step, "val_split": val_name,
        "train_loss": last.get("train_loss"), "train_error": last.get("train_error"),
        "val_top1_error": last.get("val_top1_error"), "val_top5_error": last.get("val_top5_error"),
        "best_val_top1_error": s.best_error if math.isfinite(s.best_error) else None,
        "lr": s.optimizer.param_groups[0]["lr"], "history": list(s.history),
    }


# ---------------------------------------------------------------------------------------------
# command line

FLAG_KEYS = {  # plain flags -> config keys
    "data": "data.store", "out": "run.out", "epochs": "optim.epochs",
    "batch_size": "optim.batch_size", "lr": "optim.lr", "device": "run.device",
    "amp": "run.amp", "channels_last": "run.channels_last", "compile": "run.compile",
    "seed": "run.seed", "tensorboard": "run.tensorboard", "max_steps": "run.max_steps",
    "steps_per_epoch": "run.steps_per_epoch", "progress": "run.progress",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `alexnet train` (every config key is also reachable with --set)."""
    parser.add_argument("--data", help="the store folder made by 'alexnet prepare'")
    parser.add_argument("--preset", default=None,
                        help="paper (default), fast (bf16, channels_last, compile), demo, or a "
                        ".toml file")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="SECTION.KEY=VALUE",
                        help="override any config key, e.g. --set optim.lr=0.02 (repeatable)")
    parser.add_argument("--out", help="run folder (default runs/<preset>)")
    parser.add_argument("--resume", help="continue exactly from a run folder or checkpoint")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int, help="the global batch (all ranks together)")
    parser.add_argument("--lr", type=float)
    parser.add_argument("--device", help="auto (default), cpu, cuda")
    parser.add_argument("--amp", choices=AMP_CHOICES)
    parser.add_argument("--channels-last", action="store_const", const=True)
    parser.add_argument("--compile", action="store_const", const=True)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--tensorboard", action="store_const", const=True)
    parser.add_argument("--max-steps", type=int, help="stop after this many steps in all")
    parser.add_argument("--steps-per-epoch", type=int, help="cap on batches per epoch")
    parser.add_argument("--no-progress", dest="progress", action="store_const", const=False,
                        help="no progress bar")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config as JSON and exit")


def config_from_args(args: argparse.Namespace) -> Config:
    """Resolve the config: (checkpoint's config on --resume, else defaults), preset, flags."""
    flags = {key: getattr(args, name) for name, key in FLAG_KEYS.items()
             if getattr(args, name, None) is not None}
    base = None
    preset = args.preset
    if args.resume:
        ckpt = checkpoint.load(args.resume)
        base = from_dict(ckpt.get("config") or {}, where=f"{args.resume} config")
        resume_dir = Path(args.resume) if Path(args.resume).is_dir() else \
            Path(args.resume).parent
        flags.setdefault("run.out", str(resume_dir))
        flags["run.resume"] = str(args.resume)
    elif preset is None:
        preset = "paper"
    return resolve(preset, args.overrides, flags, base=base)


def run(args: argparse.Namespace) -> int:
    """`alexnet train`: resolve the config, train, print where everything is."""
    config = config_from_args(args)
    if args.print_config:
        print(json.dumps(to_dict(config), indent=2))
        return 0
    result = train(config)
    if distributed.is_main():
        print(f"done ({result['stopped']}): {result['steps']} steps; final val top-1 error "
              f"{_pct(result['val_top1_error'])}, top-5 {_pct(result['val_top5_error'])}")
        print(f"run folder {result['run_dir']}: checkpoint.pt, log.jsonl, log.csv, curves.png,"
              " config.json")
    return 0


def _pct(v: Any) -> str:
    return f"{100 * v:.2f}%" if isinstance(v, int | float) else "-"

