"""The paper's learning procedure (section 5) as a sequence: set up, then for each epoch train,
validate, step the schedule, log and checkpoint; stop on Ctrl-C, a step limit or the clock.

The defaults are the paper's recipe: global batch 128, PaperSGD (v <- 0.9 v - 0.0005 lr w -
lr g; w <- w + v) with no weight decay on biases (cuda-convnet's choice), lr 0.01 divided by 10
whenever the validation top-1 error stops improving (PlateauSchedule, at most three drops), 90
epochs, the paper's initialisation and dropout, random 224 crops, flips and PCA colour shifts.
Speed options (bf16/fp16 autocast, channels_last, torch.compile) are opt-in (preset `fast`).

Every epoch writes a row (training loss and error, validation top-1/top-5 centre-crop error,
lr, images/s) to log.jsonl and log.csv, redraws curves.png and saves checkpoint.pt atomically;
Ctrl-C or SIGTERM finishes the current step (or stops a validation between two batches) and
saves the position inside the epoch (before that validation, which a resumed run redoes).
`--resume` restores model, optimizer, schedule, epoch, step, each rank's RNG states and
(through the loader's deterministic order) the data, so an interrupted run ends with
bit-identical weights on the CPU; it rewrites the logs from the checkpoint's history.
Launched by torchrun it trains data-parallel (alexnet/distributed.py; docs/training.md).
One writer per run folder: the main rank holds the folder's lock (atomic.FolderLock) for the
whole run, so a second `alexnet train` into it is refused before it reads or builds anything.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any

from alexnet import distributed
from alexnet.atomic import FolderLock, ensure_folder, outside_stores, remove_stale
from alexnet.config import Config, to_dict, validate, write_json
from alexnet.distributed import DistInfo, print0
from alexnet.errors import UserError
from alexnet.learning_check import Evidence, chance_advice
from alexnet.training.data import open_data, per_rank_batch, train_loader
from alexnet.training.loop import (
    StopRequest,
    epoch_row,
    interrupt_guard,
    steps_in_epoch,
    train_epoch,
    validate_epoch,
)
from alexnet.training.run_folder import (
    RunFiles,
    announce,
    append_step,
    check_own_files,
    format_row,
    keep_steps_until,
    open_tensorboard,
    tensorboard_writer,
    write_logs,
)
from alexnet.training.runtime import Runtime, seed_everything, seed_rank, setup_runtime
from alexnet.training.saving import (
    check_left_to_train,
    loss_bound,
    resume_checkpoint,
    save_checkpoints,
)
from alexnet.training.state import RunState, build_state, restore, resumed_stats


def train(config: Config, resume: dict[str, Any] | None = None,
          continue_with: str | None = None, given: Collection[str] = ()) -> dict[str, Any]:
    """Train as `config` says; return the final metrics and the paths of the run's files.

    `resume` is the checkpoint of config.run.resume when the caller has already read it.
    `continue_with` is what a stopped run's message advises to continue it (default `--resume
    RUN`): a caller that resumes its runs itself (ablate, demo) names its own command.
    `given` names the config keys the user set for this launch (`config.given_keys`): a
    resumed optimizer takes their lr, momentum and weight decay even where they equal the
    run's starting values (its lr may have been divided since).

    Launched by torchrun (RANK/WORLD_SIZE set) it joins the process group, trains data-parallel
    and leaves the group at the end; otherwise it runs in this process on run.device.
    """
    validate(config)
    dist_info = distributed.init_distributed(config.run.device, config.model.split_columns)
    joined = dist_info.distributed
    try:
        distributed.check_same_launch(launch_values(config, resume, given))  # before any work
        result = _train(config, dist_info, resume, continue_with, given)
        distributed.barrier()  # every rank done (rank 0 writes last) before any leaves
        return result
    except RuntimeError as err:
        if joined and distributed.group_failed(err):
            raise _lost_ranks(dist_info, config, err) from None
        raise
    finally:
        if joined:
            distributed.cleanup()


def launch_values(config: Config, resume: dict[str, Any] | None, given: Collection[str]
                  ) -> dict[str, Any]:
    """What every rank of a launch must agree on (`distributed.check_same_launch`): the
    resolved config as config.json records it, flat (`optim.lr`), and on --resume the keys
    this launch gives (they replace the resumed optimizer's) and the checkpoint's position;
    the device index and local rank, which differ per rank, are in none of them."""
    values: dict[str, Any] = {f"{section}.{key}": value for section, keys in to_dict(config).items()
                              for key, value in keys.items()}
    if config.run.resume:
        values.update({f"{key} given on --resume": True for key in sorted(given)})
        if resume is not None:
            values["resumed checkpoint's step"] = resume.get("global_step")
    return values


def _lost_ranks(dist_info: DistInfo, config: Config, err: BaseException) -> UserError:
    """The one line of a rank whose process group failed under it: another rank died (its
    own message says why, torchrun's summary says which) or stopped answering."""
    files = RunFiles(Path(config.run.out))
    kept = f"the last checkpoint saved, {files.checkpoint}, is kept (continue with --resume " \
        f"{files.root})" if files.checkpoint.exists() else "no checkpoint had been saved yet"
    return UserError(f"rank {dist_info.rank}: lost the other ranks "
                     f"({distributed.failure_text(err)}): one of them ended or hung, see its own "
                     f"message; {kept}")


def _train(config: Config, dist_info: DistInfo, resume: dict[str, Any] | None,
           continue_with: str | None, given: Collection[str]) -> dict[str, Any]:
    """The main loop (see `train`), holding the run folder's lock on the main rank (the only
    writer) from before anything in the folder is read until the run ends, however it ends."""
    files = RunFiles(Path(config.run.out))
    outside_stores(files.root, "run folder (--out)")  # before any work
    lock = run_folder_lock(files.root)
    try:
        if files.root.is_dir():  # else once `_open_run_folder` made it; rank 0's refusal
            distributed.on_main(lambda: _acquire(lock))  # is every rank's
        return _run(config, dist_info, resume, files, lock,
                    continue_with or f"--resume {files.root}", given)
    finally:
        lock.release()


def _run(config: Config, dist_info: DistInfo, resume: dict[str, Any] | None, files: RunFiles,
         lock: FolderLock, continue_with: str, given: Collection[str]) -> dict[str, Any]:
    """Set up, then train epoch by epoch (see `train`); the main rank writes the run folder."""
    check_own_files(files)
    resume_ckpt, resume_path = resume_checkpoint(config, files, resume)
    writer = tensorboard_writer(config.run.tensorboard)
    rt = setup_runtime(config, dist_info)
    if resume_ckpt is not None:
        check_resumed_store(config, resume_path, given)
    train_store, val_store, val_name = open_data(config)
    check_classes(train_store, config)
    per_rank = per_rank_batch(config, len(train_store), dist_info.world_size)
    stats = train_store.stats if resume_ckpt is None else \
        resumed_stats(resume_ckpt, resume_path, config, train_store.stats)

    seed_everything(config.run.seed)
    s = build_state(config, len(train_store.classes), rt)
    s.loss_bound = loss_bound(len(train_store.classes))
    s.stats = stats  # what each checkpoint records: the statistics the net is trained with
    if resume_ckpt is not None:
        restore(s, resume_ckpt, resume_path, rt, config, given,  # each rank's generators too
                train_store.classes)
        check_left_to_train(resume_ckpt, resume_path, files, config)  # before the folder
    else:
        if config.run.init_from:
            from alexnet.training.init_from import describe, load_initial_weights

            print0(describe(config.run.init_from,
                            load_initial_weights(s.net, config.run.init_from,
                                                 train_store.classes)))
        seed_rank(config.run.seed, dist_info.rank)  # each rank its own dropout masks
    loader = train_loader(train_store, per_rank, config, rt, stats)
    if len(loader) == 0:
        raise UserError(f"optim.batch_size {config.optim.batch_size}: no full batch per rank "
                        f"in {len(train_store)} training images; use a smaller batch")

    def open_run_folder() -> Any:
        """Rank 0's: the folder, its tensorboard writer, the logs as the checkpoint has them."""
        _open_run_folder(config, files, lock, resume_ckpt)
        tb = open_tensorboard(files, writer)
        keep_steps_until(files, s.global_step)
        if resume_ckpt is not None:  # a kill between a checkpoint and its log writes
            write_logs(files, s.history)
        announce(config, rt, train_store, val_name, per_rank, steps_in_epoch(loader, config),
                 files, resume_path)
        return tb

    tb = distributed.on_main(open_run_folder)  # a refusal there stops every rank
    deadline = time.monotonic() + config.run.time_limit if config.run.time_limit else 0.0
    stopped = "completed"
    s.started_at, s.started_step = time.perf_counter(), s.global_step

    def log_step(row: dict[str, Any]) -> None:
        append_step(files, row, tb)

    per_epoch = steps_in_epoch(loader, config)
    # resumed at its limit: no step more; a stop mid-epoch gets its partial row (again), and a
    # whole epoch whose end was cut ends in the loop below (train_epoch takes no step)
    if (config.run.max_steps and s.global_step >= config.run.max_steps and s.step < per_epoch
            and s.epoch < config.optim.epochs):
        stopped = "max_steps"
        if s.step:
            _finish_partial_epoch(s, val_store, config, rt, stats, files, tb,
                                  len(train_store.classes))
    cut = False  # a validation stopped by Ctrl-C or SIGTERM (redone on resume)
    with interrupt_guard() as flag:
        while stopped == "completed" and s.epoch < config.optim.epochs:
            reason = train_epoch(s, loader, config, rt, flag, deadline, log_step)
            # a step or time limit reached on the epoch's last step ends a whole epoch
            if reason is not None and (reason == "interrupt" or s.step < per_epoch):
                save_checkpoints(s, config, train_store, files, rt)
                if reason == "interrupt":
                    break
                stopped = reason
                cut = not _finish_partial_epoch(s, val_store, config, rt, stats, files, tb,
                                                len(train_store.classes), flag)
                break
            limit = reason or ("max_steps" if config.run.max_steps
                               and s.global_step >= config.run.max_steps else None)
            if not _end_epoch(s, val_store, config, rt, stats, train_store, files, tb, flag,
                              last=limit is not None):
                cut = True
                break
            if limit is not None and s.epoch < config.optim.epochs:  # else: completed
                stopped = limit
            elif distributed.any_rank(flag.hit, rt.device):  # came in saving: saved now
                break
        if distributed.any_rank(flag.hit, rt.device):  # every rank stops alike
            print0(_stop_line(s, config, files, stopped, continue_with, cut))
            raise flag.exception()
    if tb is not None:
        tb.close()
    return _summary(s, files, stopped, val_name) | {"num_classes": len(train_store.classes)}


def _stop_line(s: RunState, config: Config, files: RunFiles, stopped: str,
               continue_with: str, cut: bool) -> str:
    """What a run stopped by Ctrl-C or SIGTERM says: where its checkpoint stands (before the
    validation it `cut`, which the continued run redoes) and how to continue, or that the
    signal came when nothing was left to do (while the last epoch was saved, or after a
    step-limited run's last partial epoch was validated)."""
    if not cut and (stopped == "max_steps" or s.epoch >= config.optim.epochs):
        return f"the run had completed: nothing to continue ({files.root})"
    where = f"the end of epoch {s.epoch}" if s.step == 0 and s.epoch else \
        f"epoch {s.epoch + 1}, step {s.step}" + (", before its validation" if cut else "")
    return f"checkpoint saved at {where}: {files.checkpoint}; continue with {continue_with}"


def run_folder_lock(root: Path) -> FolderLock:
    """The lock that keeps a second `alexnet train` out of run folder `root` (not yet taken)."""
    return FolderLock(root, f"{root}: another process is training into this run folder (an "
                      "`alexnet train` still running?); wait for it to end, or choose another "
                      "--out")


def check_run_folder_free(root: Path) -> None:
    """Refuse at once a run folder another `alexnet train` holds (taken and given back: the
    run takes it for good in `train`), so that `--resume` does not read a big checkpoint
    first only to be refused. In one process only: a refusal before the ranks of a torchrun
    launch meet would be one rank's alone (the others would wait for it until torchrun ended
    them), and their probes would race each other; there every rank reads its checkpoint and
    rank 0's refusal, in `train` once they have met, is every rank's (`distributed.on_main`)."""
    if root.is_dir() and distributed.launch_world_size() == 1:
        with contextlib.suppress(OSError):  # no lock file can be made: `train` says so
            run_folder_lock(root).acquire().release()


def _acquire(lock: FolderLock) -> None:
    """Take `lock`; a folder where no lock file can be made is a one-line UserError."""
    try:
        lock.acquire()
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise UserError(f"{lock.folder}: cannot create files there ({reason}); choose another "
                        "run folder (--out)") from None


def _open_run_folder(config: Config, files: RunFiles, lock: FolderLock,
                     resume_ckpt: dict[str, Any] | None) -> None:
    """Create the run folder (only now: a start refused earlier leaves none), lock it if it
    was absent at the start, clear temporaries of a killed run and write config.json."""
    ensure_folder(files.root, "run folder (--out)")
    if not lock.held:
        _acquire(lock)
        check_own_files(files)  # a racing start may have left files, or a run
        resume_checkpoint(config, files, resume_ckpt)
    remove_stale(files.root)
    write_json(config, files.config)


def check_resumed_store(config: Config, path: Path, given: Collection[str]) -> None:
    """Refuse, saying where the path comes from, a resumed run's store that is no longer where
    the checkpoint recorded it (moved, renamed): not a store to make afresh, as a store given
    with --data that is not there is."""
    store = Path(config.data.store or "")
    if "data.store" not in given and config.data.store and not store.exists():
        raise UserError(f"{path} was trained on the store {store}, which is not there now; "
                        "give --data STORE where it is now (with --resume)")


def check_classes(train_store: Any, config: Config) -> None:
    """Refuse a training split of fewer than 2 classes: its loss is 0 from the first step
    and its error 0%, whatever the net does (nothing to learn)."""
    classes = train_store.classes
    if len(classes) < 2:
        names = ", ".join(repr(c.get("name", "") if isinstance(c, dict) else str(c))
                          for c in classes) or "none"
        raise UserError(f"{config.data.store}: its training split has {len(classes)} class "
                        f"({names}); a classifier needs at least 2: prepare a source with 2 or "
                        "more classes")


def _end_epoch(s: RunState, val_store: Any, config: Config, rt: Runtime, stats: Any,
               train_store: Any, files: RunFiles, tb: Any, flag: StopRequest,
               last: bool = False) -> bool:
    """Validate (every run.val_every epochs, and the run's `last`), step the schedule, log,
    checkpoint; False when a stop (`flag`) cut the validation: the epoch's training is saved,
    its end is redone."""
    val: dict[str, float] = {}
    dropped, lr = False, s.optimizer.param_groups[0]["lr"]
    if val_store is not None and ((s.epoch + 1) % config.run.val_every == 0
                                  or s.epoch + 1 == config.optim.epochs or last):
        result = validate_epoch(s, val_store, config, rt, stats, flag)
        if result is None:
            save_checkpoints(s, config, train_store, files, rt)
            return False
        val = result
        dropped = bool(s.schedule.step(val["val_top1_error"]))
    row = epoch_row(s, rt, val, dropped, partial=False, lr=lr)
    improved = val and val["val_top1_error"] < s.best_error
    if improved:
        s.best_error = val["val_top1_error"]
    s.history.append(row)
    s.epoch, s.step, s.acc = s.epoch + 1, 0, {}
    save_checkpoints(s, config, train_store, files, rt, best=bool(improved))
    if rt.dist.is_main:
        write_logs(files, s.history, tb)
        print0(format_row(row, config.optim.epochs, len(train_store.classes)))
        if dropped:
            print0(f"validation error stopped improving: lr divided by {config.optim.lr_factor:g}"
                   f" to {s.optimizer.param_groups[0]['lr']:.2e}")
        _check_learning(s, row, config, len(train_store.classes))
    return True


def _check_learning(s: RunState, row: dict[str, Any], config: Config, num_classes: int) -> None:
    """Say once, with what to change, when the error still sits at chance (learning_check)."""
    if s.chance_said:
        return
    advice = chance_advice(
        Evidence(step=s.global_step, num_classes=num_classes, val_error=row["val_top1_error"],
                 train_error=row["train_error"], train_loss=row["train_loss"]),
        init_bias=config.model.init_bias, lr=config.optim.lr,  # the rate a new run starts at
        after_steps=config.run.chance_steps)
    if advice:
        s.chance_said = True
        print0(f"warning: {advice}")


def _finish_partial_epoch(s: RunState, val_store: Any, config: Config, rt: Runtime, stats: Any,
                          files: RunFiles, tb: Any, num_classes: int,
                          flag: StopRequest | None = None) -> bool:
    """After a max_steps/time_limit stop mid-epoch: validate and log the partial epoch; False
    (nothing logged) when a stop (`flag`) cut the validation.

    The checkpoint was saved before this row, so a resumed run logs the full epoch instead.
    """
    val = validate_epoch(s, val_store, config, rt, stats, flag) if val_store is not None \
        else {}
    if val is None:
        return False
    row = epoch_row(s, rt, val, False, partial=True)
    s.history.append(row)
    if rt.dist.is_main:
        write_logs(files, s.history, tb)
        print0(format_row(row, config.optim.epochs, num_classes) + " (partial epoch)")
        _check_learning(s, row, config, num_classes)
    return True


def _summary(s: RunState, files: RunFiles, stopped: str, val_name: str | None
             ) -> dict[str, Any]:
    """The dict `train` returns: final metrics and the paths of the run's files."""
    last = s.history[-1] if s.history else {}
    return {
        "run_dir": str(files.root), "checkpoint": str(files.checkpoint),
        "best": str(files.best) if files.best.exists() else None,
        "steps_log": str(files.steps) if files.steps.exists() else None,
        "log": str(files.log), "log_csv": str(files.csv), "curves": str(files.curves),
        "config": str(files.config), "stopped": stopped, "epochs": s.epoch, "step": s.step,
        "steps": s.global_step, "val_split": val_name,
        "train_loss": last.get("train_loss"), "train_error": last.get("train_error"),
        "val_top1_error": last.get("val_top1_error"), "val_top5_error": last.get("val_top5_error"),
        "best_val_top1_error": s.best_error if math.isfinite(s.best_error) else None,
        "lr": s.optimizer.param_groups[0]["lr"], "history": list(s.history),
    }

