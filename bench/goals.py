"""The speed goals of issues 8 and 9 beside the figures of one bench/gpu_check.sh run.

Usage: python bench/goals.py OUTDIR
reads OUTDIR/train.json (`alexnet bench train`), OUTDIR/model.json (`alexnet bench model`),
OUTDIR/data.json (`alexnet bench data evaluate`) and OUTDIR/pipeline.json (`alexnet bench
pipeline`), and prints one line per goal:
the figure, the goal, and "met", "MISSED" or "not measured" (a step that failed or ran out of
time leaves its figures out). A figure counts only at its goal's setting: on an H100/H200
(the GPU goals) or the 2-core CPU (the CPU goals), at batch 256 in bf16 and channels_last,
against torchvision's own alexnet, and not from a --quick or --smoke run; a file whose
figures are at another is "not measured", and the reasons are printed after the goals (so
that OUTDIR may also hold a CPU run's model.json and data.json for the CPU goals). Issue 9's
jpeg goals are also shown for the store at the lower quality that `alexnet bench pipeline`
measures beside the default (prepare --jpeg-quality), and some diagnoses beside them (marked
"not the default"). The figures are the benchmarks' own, read as they wrote them; nothing
is measured here. Exit status 0 whatever the verdicts: the script reports, it does
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
PAPER_OVER_TV_LAYOUT_CPU = 0.8  # on the 2-core CPU: the paper net against the tv layout
# Issue 9 (one H100/H200 machine)
JPEG_LOADER = 25_000  # images/s delivered to the GPU from a jpeg store
RAW_LOADER = 80_000  # images/s from a raw store at the default read-ahead depth
TRAINING_OVER_MODEL = 0.9  # training from a store against the model alone, same run
DECODE_THREADS = ("1", "4", "8", "16")  # the CPU decode grows over these thread counts
PREPARE_PER_CORE = 0.8  # on the 2-core CPU: prepare --workers 2 >= 1.6x --workers 1
# The goals' setting
GOAL_GPUS = ("H100", "H200")
GOAL_BATCH = 256
CPU_CORES = 2

# The benchmarks' row names (tests/test_goals.py checks them against the writers' constants;
# kept literal so that this script starts without importing torch)
BF16_CL = "bf16+channels_last"  # alexnet.bench.train.BF16_CL
COMPILED = "bf16+channels_last+compile (fast)"  # alexnet.bench.train.COMPILED_ROW
FUSED = "relu+lrn fused / relu"  # alexnet.bench.model.LRN_FUSED: what the net runs, x ReLU
PIPELINE_SETTINGS = "amp bf16, channels_last True"  # alexnet.bench.pipeline.Trainer on CUDA


def load(outdir: Path, name: str) -> dict[str, Any]:
    """OUTDIR/name.json, or {} when the step wrote none (failed or out of time) or it holds
    no JSON object."""
    try:
        data = json.loads((outdir / f"{name}.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def off_setting(found: dict[str, Any], name: str, on_gpu: bool | None,
                expect: dict[tuple[str, ...], Any]) -> list[str]:
    """Why the figures of `name` in `found` (a loaded OUTDIR/name.json) are not at a goal's
    setting, [] when they are: a short run (--quick, --smoke), another device than an
    H100/H200 (`on_gpu` True) or the CPU (False; None: either), or an entry other than
    `expect` ({key path: value})."""
    if not isinstance(found.get(name), dict) or not found[name]:
        return []  # no figures: nothing to say beyond "not measured"
    run = found.get("run")
    if not isinstance(run, dict):
        return ["its run's mode is not recorded (written by an older `alexnet bench`)"]
    why = [f"a --{flag} run" for flag in ("smoke", "quick") if run.get(flag)][:1]
    gpu = run.get("gpu")
    if on_gpu and not any(g in (gpu or "") for g in GOAL_GPUS):
        why.append(f"measured on {gpu or 'the CPU'}, not an H100/H200")
    if on_gpu is False and gpu:
        why.append(f"measured on {gpu}, not the CPU")
    for path, value in expect.items():
        got = dig(found[name], *path)
        if got != value:
            why.append(f"{' '.join(path)} {got}, not {value}")
    return why


def problems(outdir: Path) -> dict[str, list[str]]:
    """{figures: why they are not at their goals' setting} for each group of goals that reads
    OUTDIR (empty lists where they are, or where there are no figures)."""
    train, model = load(outdir, "train"), load(outdir, "model")
    pipe, data = load(outdir, "pipeline"), load(outdir, "data")
    return {
        "train.json": off_setting(train, "train", True, {("batch",): GOAL_BATCH,
                                                         ("versus",): "torchvision"}),
        "model.json (LRN)": off_setting(model, "model", True, {
            ("parts", "batch"): GOAL_BATCH, ("parts", "dtype"): "torch.bfloat16",
            ("parts", "layout"): "channels_last"}),
        "pipeline.json": off_setting(pipe, "pipeline", True, {
            ("batch",): GOAL_BATCH, ("settings",): PIPELINE_SETTINGS}),
        "model.json (the CPU's step)": off_setting(model, "model", False, {}),
        "data.json (prepare)": off_setting(data, "data", None, {
            ("prepare_workers",): CPU_CORES}),
    }


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
    """(issue, goal, figure, how the figure is shown, verdict) for every goal; a figure not
    at its goal's setting (`problems`) is left out (not measured)."""
    off = problems(outdir)
    data = load(outdir, "data") if not off["data.json (prepare)"] else {}
    model = load(outdir, "model") if not off["model.json (LRN)"] else {}
    cpu_model = load(outdir, "model") if not off["model.json (the CPU's step)"] else {}
    pipe = load(outdir, "pipeline").get("pipeline") if not off["pipeline.json"] else None
    rows: list[tuple[str, str, float | None, str, str]] = []

    def add(issue: str, name: str, value: float | None, unit: str, goal: float,
            at_least: bool = True) -> None:
        value = value if isinstance(value, int | float) else None
        rows.append((issue, f"{name} {'>=' if at_least else '<='} {goal:,g}{unit}", value,
                     unit, verdict(value, goal, at_least)))

    train = dig(load(outdir, "train"), "train") if not off["train.json"] else None
    add("8", f"paper net / torchvision's alexnet, {BF16_CL}",
        dig(train, "settings", BF16_CL, "paper_over_torchvision"), "x", PAPER_OVER_TV)
    add("8", f"paper net / torchvision's alexnet, {COMPILED}",
        dig(train, "settings", COMPILED, "paper_over_torchvision"), "x", PAPER_OVER_TV_COMPILED)
    for layer in ("conv1", "conv2"):
        add("8", f"LRN on {layer}'s output (ReLU folded in, as the net runs it) / ReLU",
            dig(model, "model", "parts", "lrn", layer, FUSED), "x", LRN_OVER_RELU, at_least=False)
    add("8", f"on the {CPU_CORES}-core CPU: paper net / this project's torchvision layout, "
        f"{CPU_CORES} threads",
        dig(cpu_model, "model", f"threads_{CPU_CORES}", "paper_over_torchvision"), "x",
        PAPER_OVER_TV_LAYOUT_CPU)

    reading = dig(pipe, "reading") or {}
    share = dig(reading, "jpeg", "gpu_decode")
    jpeg = None if share is None else _by_number(dig(pipe, "jpeg_loader"), share)
    add("9", "jpeg store, loader at the default GPU share", jpeg, " img/s", JPEG_LOADER)
    depth = dig(reading, "raw", "prefetch")
    raw = None if depth is None else dig(pipe, "raw_loader", depth)
    add("9", "raw store, loader at the default depth", raw, " img/s", RAW_LOADER)
    model_only = dig(pipe, "model_only")
    low = dig(pipe, "low_quality") or {}
    q = f"jpeg q{low.get('quality', '<90')} store"
    add("9", f"{q}, loader at its default GPU share", low.get("jpeg_loader"), " img/s",
        JPEG_LOADER)
    for name, training in (("raw store", dig(pipe, "raw_training")),
                           ("jpeg store", dig(pipe, "jpeg_training")),
                           (q, low.get("jpeg_training"))):
        add("9", f"training from the {name} / the model alone", _ratio(training, model_only),
            "x", TRAINING_OVER_MODEL)
    # diagnoses beside the goals (pipeline's `_diagnosis`: a figure, or {"error": ...})
    for name, other in (dig(pipe, "other_gpu_decoders") or {}).items():
        add("9", f"jpeg store, loader with GPU decoder {name} (not the default)",
            _figure(other, "jpeg_loader"), " img/s", JPEG_LOADER)
        add("9", f"training from the jpeg store with GPU decoder {name} / the model alone "
            "(not the default)", _ratio(_figure(other, "jpeg_training"), model_only), "x",
            TRAINING_OVER_MODEL)
    for depth, training in (dig(pipe, "jpeg_training_gpu_all") or {}).items():
        add("9", f"training from the jpeg store, every image decoded on the GPU, depth {depth} "
            "/ the model alone (not the default)", _ratio(training, model_only), "x",
            TRAINING_OVER_MODEL)
    graphed = dig(pipe, "graphed") or {}
    for name in ("raw", "jpeg"):
        if f"{name}_training" in graphed:
            add("9", f"training from the {name} store / the model alone, both as one CUDA "
                "graph per step (not the default)",
                _ratio(graphed[f"{name}_training"], graphed.get("model_only")), "x",
                TRAINING_OVER_MODEL)
    add("9", f"on the {CPU_CORES}-core CPU: prepare, {CPU_CORES} workers / 1 worker",
        dig(data, "data", "prepare_scaling"), "x", PREPARE_PER_CORE * CPU_CORES)
    whole = load(outdir, "data")
    host = dig(whole, "data") if not off_setting(whole, "data", None, {}) else None
    cores = dig(host, "prepare_workers")
    if isinstance(cores, int) and cores != CPU_CORES:  # the GPU host's cores, beside the goal
        add("9", f"prepare on this {cores}-core host, {cores} workers / 1 worker (not the "
            f"goal's {CPU_CORES}-core CPU)", dig(host, "prepare_scaling"), "x",
            PREPARE_PER_CORE * cores)
    decoder = dig(reading, "jpeg", "decoder")
    named = f" ({decoder})" if decoder else ""
    rows.append(_grows(f"jpeg loader, CPU decode{named}, a read-ahead thread per batch,",
                       dig(pipe, "jpeg_loader_threads")))
    rows.append(_grows(f"the CPU decoder{named} alone (not the loader),",
                       dig(pipe, "cpu_decode", decoder) if decoder else None))
    return rows


def _grows(name: str, rates: Any) -> tuple[str, str, float | None, str, str]:
    """The goal row "grows with threads" for {threads: img/s}: met when the rate at each of
    DECODE_THREADS is above the one before it, not measured without all of them."""
    goal = f"{name} grows with threads {', '.join(DECODE_THREADS)}"
    if not isinstance(rates, dict) or not all(
            isinstance(rates.get(t), int | float) for t in DECODE_THREADS):
        return ("9", goal, None, "", "not measured")
    shown = ", ".join(f"{rates[t]:.0f}" for t in DECODE_THREADS)
    pairs = zip(DECODE_THREADS, DECODE_THREADS[1:], strict=False)
    grows = all(rates[b] > rates[a] for a, b in pairs)
    return ("9", f"{goal} ({shown} img/s)", None, "", "met" if grows else "MISSED")


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
    for figures, why in problems(outdir).items():
        if why:
            print(f"  {figures}: not the goals' setting, so not counted: {'; '.join(why)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
