"""The run folder of `alexnet train`: its file names, log.jsonl, log.csv, curves.png,
TensorBoard, and what the run prints on the screen."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alexnet.atomic import fs_error, write_atomic
from alexnet.config import SECTIONS, Config, scaled_lr
from alexnet.errors import UserError
from alexnet.training.runtime import Runtime

LOG_FIELDS = ("epoch", "steps", "lr", "train_loss", "train_error", "val_top1_error",
              "val_top5_error", "images_per_s", "epoch_seconds", "ranks", "lr_dropped",
              "partial")


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
    steps = property(lambda self: self.root / "steps.jsonl")  # a row every run.log_every steps
    csv = property(lambda self: self.root / "log.csv")
    curves = property(lambda self: self.root / "curves.png")
    tensorboard = property(lambda self: self.root / "tensorboard")

    def own_files(self) -> dict[Path, str]:
        """The files the run writes under names of its own, and what each holds (in the
        order the end of a run lists them)."""
        return {self.checkpoint: "checkpoint", self.best: "best checkpoint",
                self.log: "epoch log", self.steps: "step log", self.csv: "epoch log as CSV",
                self.curves: "training curves", self.config: "resolved config"}


def check_own_files(files: RunFiles) -> None:
    """Refuse, before any training, a run folder where a file the run writes is a folder: the
    user chose no such name (the run did), so the advice is to move that folder away, not to
    give another file name; found only at its first write, it stopped a run an epoch in.
    Refuse too a file under one of those names in a folder that holds no run (`holds_run`):
    the user's own, which the run would replace."""
    foreign = not holds_run(files)
    for path, what in files.own_files().items():
        if path.is_dir():
            raise UserError(f"{path}: a folder where the run writes its {what} (a file); move "
                            "that folder out of the run folder, or choose another --out")
        if foreign and (path.exists() or path.is_symlink()):
            raise UserError(f"{path}: a file no run wrote, where the run writes its {what}; "
                            "move it out of the run folder, or choose another --out")


def holds_run(files: RunFiles) -> bool:
    """Whether the folder is a run's: it holds a checkpoint.pt (which --resume continues and a
    new run refuses), or a config.json with the config's sections (a run stopped before its
    first checkpoint, which a new run may start over)."""
    if files.checkpoint.is_file():
        return True
    try:
        config = json.loads(files.config.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and set(config) == set(SECTIONS)


def write_logs(files: RunFiles, history: list[dict[str, Any]], tb: Any = None) -> None:
    """Rewrite log.jsonl and log.csv from the history (atomically) and redraw curves.png (an
    empty history has none: a resumed run's logs are always its checkpoint's)."""
    from alexnet.figures.curves import plot_curves

    write_atomic(files.log, "".join(json.dumps(row) + "\n" for row in history))
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=LOG_FIELDS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(history)
    write_atomic(files.csv, table.getvalue())
    if history:
        plot_curves(files.log, files.curves)
    else:  # a partial first epoch's curves, drawn after the checkpoint a run resumes from
        files.curves.unlink(missing_ok=True)
    if tb is not None and history:
        row = history[-1]
        for key in ("train_loss", "train_error", "val_top1_error", "val_top5_error", "lr",
                    "images_per_s"):
            if isinstance(row.get(key), int | float):
                tb.add_scalar(key, row[key], row["epoch"])
        tb.flush()


STEP_SCALARS = ("loss", "lr", "images_per_s")


def append_step(files: RunFiles, row: dict[str, Any], tb: Any = None) -> None:
    """One step row (step, epoch, loss, lr, images/s) onto steps.jsonl and TensorBoard; a
    failed append (a full disk) is the one-line error naming the file: an OSError from write
    or close carries no file name (a torn row is dropped on resume, `keep_steps_until`)."""
    try:
        with open(files.steps, "a") as f:
            f.write(json.dumps(row) + "\n")
    except OSError as err:
        raise fs_error(files.steps, err) from None
    if tb is not None:
        for key in STEP_SCALARS:
            tb.add_scalar(f"step/{key}", row[key], row["step"])


def keep_steps_until(files: RunFiles, step: int) -> None:
    """Drop the step rows after `step` (a resumed run writes them again), and a row torn by a
    kill in the middle of its append (steps.jsonl is appended to, not replaced)."""
    if not files.steps.exists():
        return
    rows = [line for line in files.steps.read_text(errors="replace").splitlines()
            if _step_of(line) is not None and _step_of(line) <= step]
    write_atomic(files.steps, "".join(line + "\n" for line in rows))


def _step_of(line: str) -> int | None:
    """The step of one steps.jsonl row, or None for a line that is not a whole row."""
    try:
        row = json.loads(line)
    except ValueError:
        return None
    step = row.get("step") if isinstance(row, dict) else None
    return step if isinstance(step, int) else None


def tensorboard_writer(enabled: bool) -> Any:
    """The SummaryWriter class when asked for, None when not; a clear error when the package
    is absent, checked before the run folder is made (a refused start leaves no folder)."""
    if not enabled:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError("run.tensorboard: the tensorboard package is not installed; "
                        "pip install tensorboard, or drop --tensorboard") from None
    return SummaryWriter


def open_tensorboard(files: RunFiles, writer: Any) -> Any:
    """The run's SummaryWriter (`writer`: `tensorboard_writer`'s class), or None."""
    return writer(str(files.tensorboard)) if writer is not None else None


def announce(config: Config, rt: Runtime, train_store: Any, val_name: str | None,
             per_rank: int, steps: int, files: RunFiles, resume_path: Path | None) -> None:
    """Say what will run, where, and how (one short paragraph)."""
    o, r = config.optim, config.run
    world = rt.dist.world_size
    print(f"training {config.model.arch} (width {config.model.width:g}) on {config.data.store}: "
          f"{len(train_store)} images, {len(train_store.classes)} classes, "
          f"validation: {val_name or 'none'}")
    scaling = f" (scaled linearly from {o.lr:g} at batch {o.base_batch})" \
        if o.lr_scaling == "linear" else ""
    speed = ", ".join(name for name, on in (("channels_last", r.channels_last),
                                            ("compile", r.compile),
                                            ("cuda_graph", r.cuda_graph)) if on)
    print(f"batch {o.batch_size} global ({per_rank} per rank x {world}), lr {scaled_lr(config):g}"
          f"{scaling}, {plural(o.epochs, 'epoch')} x {plural(steps, 'step')}, device {rt.device}"
          f", amp {r.amp}{', ' + speed if speed else ''}")
    if resume_path is not None:
        print(f"resuming from {resume_path}")
    print(f"run folder: {files.root}")


def plural(n: int, word: str) -> str:
    """`1 epoch`, `3 epochs`."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def shows_top5(num_classes: int | None) -> bool:
    """Top-5 error means something only with more than 5 classes (else it is always 0)."""
    return num_classes is None or num_classes > 5


def format_row(row: dict[str, Any], epochs: int, num_classes: int | None = None) -> str:
    """One line per epoch on the screen (top-5 only with more than 5 classes)."""
    def pct(v: Any) -> str:
        return f"{100 * v:.2f}%" if isinstance(v, int | float) else "-"

    ips = row.get("images_per_s")
    speed = f", {ips:.1f} images/s" if ips else ""
    top5 = f", top-5 {pct(row['val_top5_error'])}" if shows_top5(num_classes) else ""
    return (f"epoch {row['epoch']}/{epochs}: loss {row['train_loss']:.4f}, train error "
            f"{pct(row['train_error'])}, val top-1 {pct(row['val_top1_error'])}{top5}, "
            f"lr {row['lr']:.2e}{speed}")

