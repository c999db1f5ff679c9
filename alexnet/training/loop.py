"""One epoch of the paper's procedure (section 5): SGD steps over the loader, the finiteness
check, the agreed stop (Ctrl-C or SIGTERM, step limit, clock), validation and the epoch's log
row."""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from alexnet import distributed
from alexnet.config import Config
from alexnet.distributed import print0
from alexnet.errors import Terminated
from alexnet.progress import Progress, eta_seconds, format_duration
from alexnet.training.runtime import Runtime
from alexnet.training.saving import check_loss
from alexnet.training.state import RunState

CHECK_EVERY_CUDA = 25  # steps between host syncs (loss finiteness, progress bar) on a GPU


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


def training_step(s: RunState, rt: Runtime
                  ) -> Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """What trains on each batch (x, y): train_step, or with run.cuda_graph its replay from a
    CUDA graph (`graphs.GraphedStep`, made once and kept on s for the whole run)."""
    if not rt.cuda_graph:
        return lambda x, y: train_step(s.model, x, y, s.optimizer, rt)
    if s.graphed is None:
        from alexnet.training.graphs import GraphedStep

        s.graphed = GraphedStep(s.model, s.optimizer, rt)
    return s.graphed


def steps_in_epoch(loader: Any, config: Config) -> int:
    """Batches per epoch: the loader's, capped by run.steps_per_epoch."""
    n = len(loader)
    cap = config.run.steps_per_epoch
    return min(n, cap) if cap else n


@dataclass
class StopRequest:
    """The first Ctrl-C (SIGINT) or SIGTERM of a run: checked after each step, it makes the run
    save a checkpoint and stop."""

    signum: int | None = None

    @property
    def hit(self) -> bool:
        """Whether a stop was asked for."""
        return self.signum is not None

    def exception(self) -> BaseException:
        """What the run raises once it has saved: Terminated for SIGTERM (exit 143), else
        KeyboardInterrupt (exit 130; also on a torchrun rank that only agreed to the stop)."""
        return stop_exception(self.signum)


def stop_exception(signum: int | None) -> BaseException:
    """The exception a signal stands for: Terminated for SIGTERM, KeyboardInterrupt else."""
    return Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


GUARDED = {signal.SIGINT: ("interrupted (Ctrl-C)", "Ctrl-C again"),
           signal.SIGTERM: ("terminated (SIGTERM)", "a second SIGTERM or a Ctrl-C")}


@contextlib.contextmanager
def interrupt_guard() -> Iterator[StopRequest]:
    """Ctrl-C or SIGTERM sets a flag checked after each step (a scheduler's SIGKILL follows its
    SIGTERM within seconds, so the run saves then, not at the epoch's end); a second signal of
    either kind raises at once. A signal ignored at the start (SIG_IGN: SIGINT for `cmd &` in
    a script) stays ignored. Signal handlers exist in the main thread only; restored after."""
    flag = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum: int, frame: Any) -> None:
        if flag.hit:
            raise stop_exception(signum)
        flag.signum = signum
        what, again = GUARDED[signum]
        print0(f"\n{what}: finishing this step (or stopping this validation) and saving a "
               f"checkpoint ({again} aborts without saving)", flush=True)

    previous: dict[int, Any] = {}
    for signum in GUARDED:
        if signal.getsignal(signum) is not signal.SIG_IGN:
            previous[signum] = signal.signal(signum, handler)
    try:
        yield flag
    finally:
        for signum, old in previous.items():
            signal.signal(signum, signal.SIG_DFL if old is None else old)


def planned_steps(config: Config, per_epoch: int) -> int:
    """Optimizer steps the whole run will take: epochs x steps per epoch, capped by max_steps."""
    total = config.optim.epochs * per_epoch
    return min(total, config.run.max_steps) if config.run.max_steps else total


def run_eta(s: RunState, config: Config, per_epoch: int, deadline: float) -> float:
    """Seconds left in the whole run at this process's mean step rate (the clock's limit if
    sooner); validation time is in the rate since it runs between the steps it measures."""
    done = s.global_step - s.started_step
    left = planned_steps(config, per_epoch) - s.global_step
    eta = eta_seconds(done, done + left, time.perf_counter() - s.started_at)
    return min(eta, max(0.0, deadline - time.monotonic())) if deadline else eta


def train_epoch(s: RunState, loader: Any, config: Config, rt: Runtime, flag: StopRequest,
                deadline: float,
                log_step: Callable[[dict[str, Any]], None] | None = None) -> str | None:
    """Train epoch `s.epoch` from batch `s.step`; return why it stopped early, or None.

    Every run.log_every optimizer steps `log_step` gets a row (step, epoch, loss, lr,
    images/s since the previous row, or since this epoch began: validation not counted) on
    rank 0.
    """
    total = steps_in_epoch(loader, config)
    s.model.train()
    check_every = CHECK_EVERY_CUDA if rt.device.type == "cuda" else 1
    log_every = config.run.log_every if log_step is not None and rt.dist.is_main else 0
    bar = Progress(total, f"epoch {s.epoch + 1}/{config.optim.epochs}", unit="batch",
                   initial=s.step, enabled=config.run.progress and rt.dist.is_main)
    window = [time.perf_counter(), 0]  # images since the last step row
    loss_sum = torch.zeros((), dtype=torch.float64, device=rt.device)
    wrong_sum = torch.zeros((), dtype=torch.int64, device=rt.device)
    seen, t0, reason = 0, time.perf_counter(), None
    step = training_step(s, rt)
    try:
        if s.step >= total:
            return None
        for x, y in loader.epoch(s.epoch, start=s.step):
            loss, wrong = step(x, y)  # used before the next step (a graph's are overwritten)
            batch = y.shape[0]
            loss_sum += loss.to(loss_sum.device, torch.float64) * batch
            wrong_sum += wrong.to(wrong_sum.device)
            seen += batch
            window[1] += batch * rt.dist.world_size
            s.step += 1
            s.global_step += 1
            if s.step % check_every == 0 or s.step == total:
                check_loss(torch.stack([loss.to(loss_sum.device, torch.float64),
                                        loss_sum / seen]).tolist(), s)
                if bar.enabled:
                    elapsed = time.perf_counter() - t0
                    bar.note(loss=f"{loss.item():.3f}",
                             img_s=f"{seen * rt.dist.world_size / max(elapsed, 1e-9):.0f}",
                             run_eta=format_duration(run_eta(s, config, total, deadline)))
                    bar.set(s.step)
            if log_every and s.global_step % log_every == 0:
                now = time.perf_counter()
                log_step({"step": s.global_step, "epoch": s.epoch + s.step / total,
                          "loss": float(loss), "lr": s.optimizer.param_groups[0]["lr"],
                          "images_per_s": window[1] / max(now - window[0], 1e-9)})
                window[:] = [now, 0]
            reason = _agreed_stop(s, config, rt, flag, deadline, check_every, total)
            if reason is not None or s.step >= total:
                break
    finally:
        bar.close()
        acc = s.acc
        acc["loss_sum"] = acc.get("loss_sum", 0.0) + float(loss_sum)
        acc["wrong"] = acc.get("wrong", 0.0) + float(wrong_sum)
        acc["seen"] = acc.get("seen", 0.0) + seen
        acc["seconds"] = acc.get("seconds", 0.0) + time.perf_counter() - t0
    return reason


def _agreed_stop(s: RunState, config: Config, rt: Runtime, flag: StopRequest,
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


def _stop_reason(s: RunState, config: Config, flag: StopRequest,
                 deadline: float) -> str | None:
    """'interrupt', 'max_steps' or 'time_limit' when the run must stop after this step."""
    if flag.hit:
        return "interrupt"
    if config.run.max_steps and s.global_step >= config.run.max_steps:
        return "max_steps"
    if deadline and time.monotonic() >= deadline:
        return "time_limit"
    return None


def validate_epoch(s: RunState, val_store: Any, config: Config, rt: Runtime,
                   stats: dict[str, Any], flag: StopRequest | None = None
                   ) -> dict[str, float] | None:
    """Validation top-1/top-5 error (centre crop) of the images run.val_limit selects, each
    rank evaluating its share and the ranks summing their counts: every rank gets the figures
    of one process. None on every rank when a stop (`flag`) ended any rank's share before its
    last batch: the validation ends there (a scheduler's SIGKILL follows its SIGTERM within
    seconds) and is redone. Every rank joins the same two collectives, stopped or not."""
    if val_store is None:
        return {}
    counts = _validate(s.net, val_store, config, rt, stats, flag or StopRequest())
    if distributed.any_rank(counts is None, rt.device) or counts is None:
        return None
    return val_errors(distributed.all_reduce_sum(counts, rt.device))


def val_errors(counts: dict[str, int]) -> dict[str, float]:
    """The validation errors of summed counts (evaluate.error_rates, NaN for no image)."""
    from alexnet.evaluate import error_rates

    wrong = {key: counts[key] for key in ("top1_wrong", "top5_wrong")}
    return {f"val_{key}": rate for key, rate in error_rates(wrong, counts["images"]).items()}


def _validate(net: nn.Module, val_store: Any, config: Config, rt: Runtime, stats: dict[str, Any],
              flag: StopRequest) -> dict[str, int] | None:
    """evaluate.evaluate_model's centre-crop counts (top-1 and top-5 wrong, images) on this
    rank's share of the validation images (rank 0 shows its progress), or None when `flag`
    was hit before the share's last batch."""
    from alexnet.evaluate import Stopped, evaluate_model

    limit = config.run.val_limit
    n = min(limit, len(val_store)) if limit else len(val_store)
    part = distributed.share(n, rt.dist.rank, rt.dist.world_size)
    indices = None if len(part) == len(val_store) else list(part)
    shown = config.run.progress and rt.dist.is_main
    try:
        with rt.autocast():
            result = evaluate_model(net, val_store, crops=1,  # the centre: cheap, each epoch
                                    batch_size=config.run.eval_batch_size,
                                    device=rt.device, stats=stats, mean=config.data.mean,
                                    crop=config.data.crop, indices=indices,
                                    progress="validate" if shown else None,
                                    stop=lambda: flag.hit)
    except Stopped:
        return None
    return {key: result[key] for key in ("top1_wrong", "top5_wrong", "images")}


def epoch_row(s: RunState, rt: Runtime, val: dict[str, float], dropped: bool,
              partial: bool, lr: float | None = None) -> dict[str, Any]:
    """The log row of the epoch just trained (training figures averaged over ranks).

    `lr` is the rate the epoch trained with (the schedule may have dropped it since);
    `ranks` the launch's that ended it (a resume with another number of ranks shows there).
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
            "epoch_seconds": seconds, "ranks": rt.dist.world_size, "lr_dropped": dropped,
            "partial": partial}

