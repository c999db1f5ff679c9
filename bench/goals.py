"""The speed goals of issues 8 and 9 beside the figures of one bench/gpu_check.sh run.

Usage: python bench/goals.py OUTDIR
reads OUTDIR/train.json (`alexnet bench train`), OUTDIR/model.json (`alexnet bench model`),
OUTDIR/data.json (`alexnet bench data evaluate`) and OUTDIR/pipeline.json (`alexnet bench
pipeline`), and prints one line per goal:
the figure, the goal, and "met", "MISSED" or "not measured" (a step that failed or ran out of
time leaves its figures out). Issue 9's jpeg goals are also shown for the store at the lower
quality that `alexnet bench pipeline` measures beside the default (prepare --jpeg-quality).
The figures are the benchmarks' own, read as they wrote them;
nothing is measured here. Exit status 0 whatever the verdicts: the script reports, it does
not judge the run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

# Issue 8 (one H100/H200, bf16 + channels_last, batch 256)
PAPER_OVER_TV = 0.8  # the paper net's training step against torchvision's alexnet
PAPER_OVER_TV_COMPILED = 0.9  # the same, both under torch.compile
LRN_OVER_RELU = 1.5  # LRN forward+backward against a ReLU on the same tensor
# Issue 9 (one H100/H200 machine)
JPEG_LOADER = 25_000  # images/s delivered to the GPU from a jpeg store
RAW_LOADER = 80_000  # images/s from a raw store at the default read-ahead depth
TRAINING_OVER_MODEL = 0.9  # training from a store against the model alone, same run
PREPARE_PER_CORE = 0.8  # prepare with one worker per core against one worker, per core

# The benchmarks' row names (tests/test_goals.py checks them against the writers' constants;
# kept literal so that this script starts without importing torch)
BF16_CL = "bf16+channels_last"  # alexnet.bench.train.BF16_CL
COMPILED = "bf16+channels_last+compile (fast)"  # alexnet.bench.train.COMPILED_ROW
FUSED = "relu+lrn fused / relu"  # alexnet.bench.model.LRN_FUSED: what the net runs, x ReLU


def load(outdir: Path, name: str) -> dict[str, Any]:
    """OUTDIR/name.json, or {} when the step wrote none (failed or out of time)."""
    try:
        return json.loads((outdir / f"{name}.json").read_text())
    except (OSError, ValueError):
        return {}


def dig(tree: Any, *keys: Any) -> Any:
    """tree[k1][k2]..., or None where a key is missing (JSON keys are strings)."""
    for key in keys:
        if not isinstance(tree, dict) or str(key) not in tree:
            return None
        tree = tree[str(key)]
    return tree


def verdict(value: float | None, goal: float, at_least: bool = True) -> str:
    if value is None:
        return "not measured"
    return "met" if (value >= goal if at_least else value <= goal) else "MISSED"


def goals(outdir: Path) -> list[tuple[str, str, float | None, str, str]]:
    """(issue, goal, figure, how the figure is shown, verdict) for every goal."""
    data, model = load(outdir, "data"), load(outdir, "model")
    pipe = load(outdir, "pipeline").get("pipeline")  # `alexnet bench --json`: {what: figures}
    rows: list[tuple[str, str, float | None, str, str]] = []

    def add(issue: str, name: str, value: float | None, unit: str, goal: float,
            at_least: bool = True) -> None:
        rows.append((issue, f"{name} {'>=' if at_least else '<='} {goal:,g}{unit}", value,
                     unit, verdict(value, goal, at_least)))

    train = dig(load(outdir, "train"), "train")
    versus = dig(train, "versus")
    against = "torchvision's alexnet" if versus in (None, "torchvision") else versus
    add("8", f"paper net / {against}, {BF16_CL}",
        dig(train, "settings", BF16_CL, "paper_over_torchvision"), "x", PAPER_OVER_TV)
    add("8", f"paper net / {against}, {COMPILED}",
        dig(train, "settings", COMPILED, "paper_over_torchvision"), "x", PAPER_OVER_TV_COMPILED)
    for layer in ("conv1", "conv2"):
        add("8", f"LRN on {layer}'s output (ReLU folded in, as the net runs it) / ReLU",
            dig(model, "model", "parts", "lrn", layer, FUSED), "x", LRN_OVER_RELU, at_least=False)

    reading = dig(pipe, "reading") or {}
    share = dig(reading, "jpeg", "gpu_decode")
    jpeg = None if share is None else _by_number(dig(pipe, "jpeg_loader"), share)
    add("9", "jpeg store, loader at the default GPU share", jpeg, " img/s", JPEG_LOADER)
    depth = dig(reading, "raw", "prefetch")
    raw = None if depth is None else dig(pipe, "raw_loader", depth)
    add("9", "raw store, loader at the default depth", raw, " img/s", RAW_LOADER)
    model = dig(pipe, "model_only")
    low = dig(pipe, "low_quality") or {}
    q = f"jpeg q{low.get('quality', '<90')} store"
    add("9", f"{q}, loader at its default GPU share", low.get("jpeg_loader"), " img/s",
        JPEG_LOADER)
    for name, training in (("raw store", dig(pipe, "raw_training")),
                           ("jpeg store", dig(pipe, "jpeg_training")),
                           (q, low.get("jpeg_training"))):
        ratio = training / model if training is not None and model else None
        add("9", f"training from the {name} / the model alone", ratio, "x",
            TRAINING_OVER_MODEL)
    # diagnoses beside the goals (pipeline's `_diagnosis`: a figure, or {"error": ...})
    for name, other in (dig(pipe, "other_gpu_decoders") or {}).items():
        add("9", f"jpeg store, loader with GPU decoder {name} (not the default)",
            _figure(other, "jpeg_loader"), " img/s", JPEG_LOADER)
        add("9", f"training from the jpeg store with GPU decoder {name} / the model alone "
            "(not the default)", _ratio(_figure(other, "jpeg_training"), model), "x",
            TRAINING_OVER_MODEL)
    for depth, training in (dig(pipe, "jpeg_training_gpu_all") or {}).items():
        add("9", f"training from the jpeg store, every image decoded on the GPU, depth {depth} "
            "/ the model alone (not the default)", _ratio(training, model), "x",
            TRAINING_OVER_MODEL)
    graphed = dig(pipe, "graphed") or {}
    for name in ("raw", "jpeg"):
        if f"{name}_training" in graphed:
            add("9", f"training from the {name} store / the model alone, both as one CUDA "
                "graph per step (not the default)",
                _ratio(graphed[f"{name}_training"], graphed.get("model_only")), "x",
                TRAINING_OVER_MODEL)
    workers = dig(data, "data", "prepare_workers")
    if workers is None:
        rows.append(("9", f"prepare, one worker per core / 1 worker >= {PREPARE_PER_CORE:g} x "
                     "cores", None, "x", "not measured"))
    else:
        add("9", f"prepare, {workers} workers / 1 worker", dig(data, "data", "prepare_scaling"),
            "x", PREPARE_PER_CORE * int(workers))
    decoder = dig(reading, "jpeg", "decoder")
    rates = dig(pipe, "cpu_decode", decoder) if decoder else None
    if rates:
        threads = sorted(rates, key=int)
        grows = all(rates[b] > rates[a] for a, b in zip(threads, threads[1:], strict=False))
        shown = ", ".join(f"{t}: {rates[t]:.0f}" for t in threads)
        rows.append(("9", f"CPU decode ({decoder}) grows with threads ({shown} img/s)",
                     None, "", "met" if grows else "MISSED"))
    else:
        rows.append(("9", "CPU decode grows with threads", None, "", "not measured"))
    return rows


def _figure(table: Any, key: str) -> float | None:
    """table[key] when it is a figure (a failed diagnosis holds {"error": ...})."""
    value = table.get(key) if isinstance(table, dict) else None
    return value if isinstance(value, int | float) else None


def _ratio(value: Any, base: Any) -> float | None:
    """value / base when both are figures, else None (not measured)."""
    ok = all(isinstance(v, int | float) for v in (value, base)) and base
    return value / base if ok else None


def _by_number(table: Any, key: float) -> float | None:
    """table[key] for a dict whose keys are numbers written as JSON strings."""
    if not isinstance(table, dict):
        return None
    for k, v in table.items():
        if abs(float(k) - float(key)) < 1e-9:
            return v
    return None


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python bench/goals.py OUTDIR (bench/gpu_check.sh's output folder)",
              file=sys.stderr)
        return 2
    outdir = Path(argv[0])
    rows = goals(outdir)
    width = max(len(goal) for _, goal, *_ in rows)
    print(f"goals of issues 8 and 9 against the figures in {outdir}:")
    for issue, goal, value, unit, said in rows:
        figure = "" if value is None else (f"{value:.2f}{unit}" if unit == "x" else
                                           f"{value:,.0f}{unit}")
        print(f"  issue {issue}: {goal:<{width}}{figure:>14}  {said}")
    for name in ("train", "model", "data", "pipeline"):
        for note in ("stopped", "failed"):  # alexnet bench's notes: a time limit, an error
            said = load(outdir, name).get(note)
            if said:
                print(f"  {name}.json: {said}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
