"""`alexnet bench WHAT`: benchmarks that report speed as ratios against a baseline run beside.

Each stage owns its benchmark module (alexnet/bench/<what>.py) with a `bench(args) -> dict`
function that prints its figures and returns them; `--json FILE` writes them out (after each
benchmark, so that a run stopped by a time limit keeps the figures of those it finished).
`--smoke` runs every line with the least work (the tests use it): implies `--quick`, a paper
net of 1/8 width (SMOKE_WIDTH) without the torchvision layout beside it, a handful of images.
Its figures say nothing about speed.
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

from alexnet.atomic import write_json
from alexnet.errors import UserError

SMOKE_WIDTH = 0.125  # --smoke: the paper net at 1/8 width (not a paper number)

WHATS = {
    "model": "LRN cost and the paper net's training step beside the torchvision layout",
    "data": "prepare and the training loader beside an ImageFolder pipeline",
    "train": "training images/s in fp32 and with each speed option",
    "evaluate": "evaluation images/s, centre and 10-crop",
    "pipeline": "training from a raw and a jpeg store beside the model alone and the loader alone",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `alexnet bench`."""
    parser.add_argument("what", nargs="*", default=[],
                        help="which benchmarks (default: all): " + ", ".join(WHATS))
    parser.add_argument("--device", default="auto", help="cpu, cuda, or auto (default)")
    parser.add_argument("--quick", action="store_true", help="fewer iterations (a smoke run)")
    parser.add_argument("--json", type=Path, default=None, help="write all figures to FILE")
    parser.add_argument("--smoke", action="store_true",
                        help="least work that runs every line (tests; figures meaningless)")


def run(args: argparse.Namespace) -> int:
    """Run the chosen benchmarks one after the other."""
    unknown = [w for w in args.what if w not in WHATS]
    if unknown:
        raise UserError(f"unknown benchmark {unknown[0]!r}; choose from {', '.join(WHATS)}")
    args.quick = args.quick or args.smoke
    results = {}
    for what in args.what or list(WHATS):
        module = importlib.import_module(f"alexnet.bench.{what}")
        print(f"== alexnet bench {what}: {WHATS[what]}")
        results[what] = module.bench(args)
        if args.json:  # after each benchmark: a run cut short keeps what it measured
            write_json(args.json, results, indent=2)
    return 0
