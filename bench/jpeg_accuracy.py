"""What a lower JPEG quality costs in accuracy: the demo's recipe from a raw, a quality-90 and a
quality-75 store of the same Fashion-MNIST images, each with the same seeds (issue 9).

    .venv/bin/python bench/jpeg_accuracy.py OUTDIR [--seeds 0 1 2] [--epochs 4]

Every run trains the demo's recipe (alexnet/configs/demo.toml, CPU plan: 4,000 training
images, batch 64) for a fixed number of epochs, with no time limit, so that each store gets
the same steps; then the centre-crop test error on 1,000 test images of its own store. It
also prints each jpeg store's decoded pixels against the raw store's (mean and max levels), and
each jpeg store's error minus raw's with its paired t interval over the seeds (a seed gives
both the same initial weights and batch order).
An experiment, not a test: about 8 minutes a run on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from alexnet.bench.pipeline import levels
from alexnet.checkpoint import load_model
from alexnet.config import resolve
from alexnet.data.prepare import prepare
from alexnet.data.store import open_split
from alexnet.demo import FASHION_MNIST, base_config, default_plan
from alexnet.evaluate import evaluate_model
from alexnet.experiments.stats import paired
from alexnet.train import train

STORES = {"raw": {"format": "raw"}, "jpeg q90": {"format": "jpeg", "jpeg_quality": 90},
          "jpeg q75": {"format": "jpeg", "jpeg_quality": 75}}


def make_stores(out: Path, train_images: int, test_images: int) -> dict[str, Path]:
    """The three stores of the same images (each reused when already complete)."""
    paths = {}
    for name, options in STORES.items():
        path = out / "stores" / name.replace(" ", "-")
        for split, limit in (("train", train_images), ("test", test_images)):
            prepare(FASHION_MNIST, path, limit=limit, splits=split, names="fashion-mnist",
                    **options)
        paths[name] = path
    return paths


def level_error(store: Path, raw: Path) -> dict[str, float]:
    """Mean and max |decoded - raw| in levels over the test split."""
    a, b = open_split(store, "test"), open_split(raw, "test")
    return levels(a.read(range(len(a))), b.read(range(len(b))))


def run(store: Path, out: Path, seed: int, epochs: int) -> float:
    """Train the demo recipe on `store` for `epochs`; the centre-crop test top-1 error."""
    plan = default_plan("cpu")
    if not (out / "checkpoint.pt").exists():
        config = resolve("demo", None, base=base_config("cpu"), flags={
            "data.store": str(store), "run.out": str(out), "run.device": "cpu",
            "run.seed": seed, "optim.batch_size": plan.batch_size, "optim.epochs": epochs})
        train(config)
    model, ckpt = load_model(out / "checkpoint.pt")
    result = evaluate_model(model, open_split(store, "test"), stats=ckpt["stats"],
                            batch_size=100)
    return result["top1_error"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()
    plan = default_plan("cpu")
    stores = make_stores(args.out, plan.train_images, plan.test_images)
    figures = {}
    for name, store in stores.items():
        errors = [run(store, args.out / "runs" / f"{store.name}-seed{seed}", seed, args.epochs)
                  for seed in args.seeds]
        figures[name] = {"test_top1_error": errors}
        if name != "raw":
            figures[name]["levels_mean_max"] = level_error(store, stores["raw"])
            figures[name]["minus_raw"] = paired(errors, figures["raw"]["test_top1_error"]
                                                ).as_dict()
        print(f"{name}: test top-1 error {[f'{e:.2%}' for e in errors]}, "
              f"mean {statistics.mean(errors):.2%}", flush=True)
    (args.out / "jpeg_accuracy.json").write_text(json.dumps(figures, indent=2))
    print("| store | levels mean / max vs raw | " +
          " | ".join(f"seed {s}" for s in args.seeds) + " | mean | minus raw, same seed |")
    for name, row in figures.items():
        lv = row.get("levels_mean_max")
        shown = f"{lv['mean']:.2f} / {lv['max']}" if lv else "-"
        cells = [f"{e:.2%}" for e in row["test_top1_error"]]
        diff = row.get("minus_raw")
        print(f"| {name} | {shown} | "
              + " | ".join(cells) + f" | {statistics.mean(row['test_top1_error']):.2%} | "
              + (f"{100 * diff['estimate']:+.2f} points, 95% [{100 * diff['low']:+.2f}, "
                 f"{100 * diff['high']:+.2f}]" if diff else "") + " |")


if __name__ == "__main__":
    main()
