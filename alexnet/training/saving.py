"""The checkpoint policy of a run: what "last good" means, what is saved when and in which
order, which checkpoint a run continues from, and never overwriting another run.

A state is good when every weight is finite and the training loss, at every check since the
previous save (each step on the CPU, every CHECK_EVERY_CUDA steps on a GPU, and the epoch's
running mean), stayed finite and at most DIVERGENCE_FACTOR times the chance level's ln(classes)
(the true class at probability classes^-1000: no learning net is there, a diverged one soon is;
the paper's full-width net on tiny batches does spike to 60 x ln(classes) in its first steps).
Only good states are saved; a run that diverges stops with a one-line error naming the last
good checkpoint, which it leaves untouched (best.pt too).

At the end of an epoch best.pt (when validation improved) is replaced BEFORE checkpoint.pt:
a kill between the two leaves checkpoint.pt at the earlier position, whose resumed run redoes
the epoch and writes best.pt again, so checkpoint.pt never records a best error that best.pt
lacks. The two then hold the same state, so checkpoint.pt is made a second name of best.pt's
file (`atomic.link_atomic`, a hard link; written in full where the filesystem has none): one
write of the checkpoint instead of two (456 MB each for the paper net). The next save replaces
checkpoint.pt by a rename, which leaves best.pt's bytes as they were. Ctrl-C, SIGTERM,
run.max_steps and run.time_limit save checkpoint.pt mid-epoch.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from alexnet import checkpoint, distributed
from alexnet.atomic import link_atomic, read_json_object
from alexnet.config import Config
from alexnet.errors import UserError
from alexnet.training.run_folder import RunFiles, holds_run
from alexnet.training.runtime import Runtime
from alexnet.training.state import RunState, check_resumable, make_checkpoint

DIVERGENCE_FACTOR = 1000.0  # loss above 1000 x ln(classes) (chance level's): diverged (ours)


def loss_bound(num_classes: int) -> float:
    """The largest training loss of a run that has not diverged."""
    return DIVERGENCE_FACTOR * math.log(max(2, num_classes))


def check_loss(values: list[float], s: RunState) -> None:
    """Stop when a training loss (this step's, the epoch's running mean) diverged."""
    for value in values:
        if not math.isfinite(value) or value > s.loss_bound:
            raise _diverged(s, f"training loss is {value:.3g}")


def check_good(s: RunState) -> None:
    """Stop rather than save a state whose weights are not all finite."""
    bad = checkpoint.non_finite(s.net)
    if bad:
        raise _diverged(s, f"weights of {bad} are not finite")


def _diverged(s: RunState, what: str) -> UserError:
    kept = f"the last good checkpoint {s.last_good} is kept" if s.last_good else \
        "no checkpoint had been written yet"
    return UserError(f"{what} at epoch {s.epoch + 1}, step {s.step}: the run diverged "
                     f"(loss limit {s.loss_bound:.3g}); stopped ({kept}); lower optim.lr or "
                     "turn off run.amp")


def save_checkpoints(s: RunState, config: Config, train_store: Any, files: RunFiles,
                     rt: Runtime, best: bool = False) -> Path:
    """Rank 0 writes best.pt (when `best`) and then checkpoint.pt; every rank waits for it.

    Every rank checks the weights first (they are the same on every rank), and a failed write
    on rank 0 (a full disk) stops every rank, not rank 0 alone: all stop alike.
    """
    check_good(s)
    # each rank's partial sums of the epoch and generator states: an exact resume
    ranks: list[Any] = distributed.gather_objects((dict(s.acc), checkpoint.rng_state()))
    failed: UserError | None = None
    if rt.dist.is_main:
        state = make_checkpoint(s, config, train_store, rt, ranks)
        try:
            keep_best = best and config.run.save_best
            if keep_best:
                checkpoint.save(files.best, state)
            if not (keep_best and link_atomic(files.best, files.checkpoint)):
                checkpoint.save(files.checkpoint, state)
        except UserError as err:
            failed = err
    if distributed.any_rank(failed is not None, rt.device):  # also the barrier
        raise failed or UserError(f"rank 0 could not write {files.checkpoint} (its message "
                                  "says why); the earlier checkpoint is kept")
    s.last_good = files.checkpoint
    return files.checkpoint


def unstarted_run(resume: str | os.PathLike) -> dict[str, Any] | None:
    """The recorded config (config.json) of the run folder `resume` when that run stopped
    before its first checkpoint (killed while starting: a scheduler's job requeued with
    `--resume`), else None. Nothing of it was trained, so continuing it is starting it over
    from that config, as its own command would."""
    files = RunFiles(Path(resume))
    if not files.root.is_dir() or files.checkpoint.exists() or not holds_run(files):
        return None
    return read_json_object(files.config)


def read_resumable(resume: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint `--resume` names (a file, or a run folder's checkpoint.pt), read and
    checked (`check_resumable`) before its config or anything else of it is used."""
    path = checkpoint.checkpoint_file(resume)
    ckpt = checkpoint.load(path, resuming=True)
    check_resumable(ckpt, path)
    return ckpt


def resume_checkpoint(config: Config, files: RunFiles, loaded: dict[str, Any] | None = None
                      ) -> tuple[dict | None, Path | None]:
    """The checkpoint to continue from (`loaded` when the caller has read it), or None;
    refuses to overwrite another run, and to resume a file that lacks part of a training
    state or holds it in another form (`check_resumable`: a weights-only export, a file of
    another tool, a damaged one)."""
    if config.run.resume:
        path = checkpoint.checkpoint_file(config.run.resume)
        if files.checkpoint.exists() and files.root.resolve() != path.parent.resolve():
            raise UserError(f"{files.root} already holds another run (checkpoint.pt); resume "
                            f"{path} into its own folder (drop --out) or choose a new --out")
        ckpt = loaded if loaded is not None else checkpoint.load(path, resuming=True)
        check_resumable(ckpt, path)
        check_not_behind(ckpt, path, files)
        return ckpt, path
    if files.checkpoint.exists():
        raise UserError(f"{files.root} already holds a run (checkpoint.pt); continue it with "
                        f"--resume {files.root} or choose another --out")
    return None, None


def check_not_behind(ckpt: dict[str, Any], path: Path, files: RunFiles) -> None:
    """Refuse to resume, into the run folder that holds it, a checkpoint (best.pt, a copy)
    behind the folder's checkpoint.pt: the resumed run would replace that checkpoint and cut
    the logs back to the older one's. An unreadable checkpoint.pt holds nothing to keep."""
    if not files.checkpoint.is_file() or path.resolve() == files.checkpoint.resolve():
        return
    try:
        newer = checkpoint.load(files.checkpoint, mmap=True)
    except UserError:
        return
    if _position(newer) > _position(ckpt):
        raise UserError(f"{path}: {files.checkpoint} is newer (step {_position(newer)[0]}, "
                        f"this one step {_position(ckpt)[0]}), and resuming into its folder "
                        "would replace it and cut the logs back; continue the run with --resume "
                        f"{files.root}, or this checkpoint into a new folder with --out NEW")


def check_left_to_train(ckpt: dict[str, Any], path: Path, files: RunFiles,
                        config: Config) -> None:
    """Refuse to resume, into a new run folder, a checkpoint with nothing left to train (its
    optim.epochs done, or run.max_steps reached): the folder would get logs and no
    checkpoint. Into its own folder the resume just reports the run as done. Checked after
    the checkpoint's net and classes (`restore`): a mismatch there is the first thing to fix."""
    if files.root.resolve() == path.parent.resolve():
        return
    steps, epoch, step = _position(ckpt)
    done = (epoch >= config.optim.epochs and not step) or (
        bool(config.run.max_steps) and steps >= config.run.max_steps)
    if done:
        raise UserError(f"{path}: its run is complete ({epoch} of {config.optim.epochs} epochs, "
                        f"{steps} steps), so {files.root} would hold nothing trained; train "
                        "longer with --set optim.epochs=N (or a higher --max-steps), or use "
                        f"{path} itself")


def _position(ckpt: dict[str, Any]) -> tuple[int, int, int]:
    """How far a checkpoint's run got: (optimizer steps in all, epoch, step in the epoch)."""
    counts = [ckpt.get(key) for key in ("global_step", "epoch", "step")]
    steps, epoch, step = (v if isinstance(v, int) and not isinstance(v, bool) else 0
                          for v in counts)
    return steps, epoch, step
