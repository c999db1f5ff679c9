"""The run folder of `alexnet train`: its file names, log.jsonl, log.csv, curves.png,
TensorBoard, and what the run prints on the screen."""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alexnet.config import Config, scaled_lr
from alexnet.errors import UserError
from alexnet.training.runtime import Runtime

LOG_FIELDS = ("epoch", "steps", "lr", "train_loss", "train_error", "val_top1_error",
              "val_top5_error", "images_per_s", "epoch_seconds", "lr_dropped", "partial")


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


def open_tensorboard(files: RunFiles, enabled: bool) -> Any:
    """A SummaryWriter when asked for (a clear error when the package is absent)."""
    if not enabled:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError("run.tensorboard: the tensorboard package is not installed; "
                        "pip install tensorboard, or drop --tensorboard") from None
    return SummaryWriter(str(files.tensorboard))


def announce(config: Config, rt: Runtime, train_store: Any, val_name: str | None,
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


def format_row(row: dict[str, Any], epochs: int) -> str:
    """One line per epoch on the screen."""
    def pct(v: Any) -> str:
        return f"{100 * v:.2f}%" if isinstance(v, int | float) else "-"

    ips = row.get("images_per_s")
    speed = f", {ips:.1f} images/s" if ips else ""
    return (f"epoch {row['epoch']}/{epochs}: loss {row['train_loss']:.4f}, train error "
            f"{pct(row['train_error'])}, val top-1 {pct(row['val_top1_error'])}, top-5 "
            f"{pct(row['val_top5_error'])}, lr {row['lr']:.2e}{speed}")

