"""Training curves of a run, drawn from its log.jsonl (one JSON object per epoch) and, when
it is there, steps.jsonl beside it (a row every run.log_every steps: loss, lr, images/s).

Three panels: the training loss (per logged step, and per epoch); the training error beside
the validation top-1 and top-5 errors (centre crop); the learning rate on a log scale (its
drops by 10 are the plateau schedule of section 5). The x axis is in epochs, fractional for
step rows, so a run shorter than an epoch still draws curves. `alexnet train` redraws the PNG
after every epoch.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first

from alexnet.atomic import write_atomic  # noqa: E402
from alexnet.errors import UserError  # noqa: E402
from alexnet.figures.text import drawable, noting_missing_glyphs  # noqa: E402


def read_log(path: str | os.PathLike, keys: tuple[str, ...] = ("epoch",)
             ) -> list[dict[str, Any]]:
    """The rows of a log.jsonl or steps.jsonl (blank lines skipped), each a JSON object with a
    finite number under each of `keys`; anything else is a one-line UserError naming file and
    line.

    A last line that is not JSON and has no newline is skipped: a write cut short (a killed
    run's append, or one still in progress), not a damaged log.
    """
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8", errors="replace")
    except OSError as err:
        raise UserError(f"{path}: unreadable ({err.strerror}); check the file") from None
    lines = text.split("\n")  # the last one unterminated, empty when the file ends a line
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            if number == len(lines):
                continue
            raise UserError(f"{path}, line {number}: not a JSON row (damaged); delete or "
                            "repair that line") from None
        if not (isinstance(row, dict) and all(_is_number(row.get(key)) for key in keys)):
            raise UserError(f"{path}, line {number}: not a row of {path.name} (a JSON object "
                            f"with a number under {' and '.join(map(repr, keys))}); delete or "
                            "repair that line")
        rows.append(row)
    return rows


def _series(rows: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """(epochs, values) of the rows that have a finite value for `key`."""
    xs, ys = [], []
    for row in rows:
        value = row.get(key)
        if isinstance(value, int | float) and value == value:
            xs.append(row["epoch"])
            ys.append(float(value))
    return xs, ys


def read_steps(log: str | os.PathLike) -> list[dict[str, Any]]:
    """The step rows of the run whose log.jsonl is `log` (none when there is no steps.jsonl)."""
    path = Path(log).with_name("steps.jsonl")
    return read_log(path, ("step", "epoch")) if path.is_file() else []


def _is_number(value: Any) -> bool:
    """Whether a JSON value is a finite number (true and false are not numbers)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _every(steps: list[dict[str, Any]]) -> int:
    """The logging interval of step rows (the gap between the first two)."""
    return int(steps[1]["step"] - steps[0]["step"]) if len(steps) > 1 else int(steps[0]["step"])


def plot_curves(log: str | os.PathLike, out: str | os.PathLike, title: str = "") -> Path:
    """Draw the curves of `log` (a log.jsonl) into the PNG `out`, written atomically.

    The title names the run folder (`title` replaces it), escaped by `drawable`: a folder
    name that is not UTF-8 must not stop training, which redraws the curves every epoch.
    """
    rows, steps = read_log(log), read_steps(log)
    out = Path(out)
    with noting_missing_glyphs():
        fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
        try:
            _panels(axes, rows, steps)
            fig.suptitle(drawable(title or f"training curves: {Path(log).parent.name}"),
                         parse_math=False)
            fig.tight_layout()
            write_atomic(out, lambda f: fig.savefig(f, dpi=100, format="png"))
        finally:
            plt.close(fig)
    return out


def _panels(axes: Any, rows: list[dict[str, Any]], steps: list[dict[str, Any]]) -> None:
    """Draw the three panels (module docstring) on `axes`."""
    loss_ax, err_ax, lr_ax = axes
    if steps:
        loss_ax.plot(*_series(steps, "loss"), "-", lw=0.8, alpha=0.7,
                     label=f"training loss (every {_every(steps)} steps)")
    loss_ax.plot(*_series(rows, "train_loss"), "o-", label="training loss (epoch mean)")
    loss_ax.set_ylabel("cross-entropy")
    for key, label in (("train_error", "training error"),
                       ("val_top1_error", "validation top-1 error"),
                       ("val_top5_error", "validation top-5 error")):
        xs, ys = _series(rows, key)
        if xs:
            err_ax.plot(xs, [100 * y for y in ys], "o-", label=label)
    err_ax.set_ylabel("error (%)")
    xs, ys = _series(steps or rows, "lr")
    if xs:
        lr_ax.step(xs, ys, where="post", label="learning rate")
        lr_ax.set_yscale("log")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
