"""One interface across commands: help on every option with its default, the same default
for the same option everywhere, a bare `alexnet` that prints help and fails, and the
experiments' progress, device and error formats like every other command's."""

from __future__ import annotations

import argparse
import importlib
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from alexnet.cli import COMMANDS, HelpFormatter, main
from alexnet.config import Config
from alexnet.data.store import write_store
from alexnet.evaluate import resolve_device
from alexnet.paper import TEST_CROPS

REPO = Path(__file__).resolve().parents[1]
CHECKED = list(COMMANDS)


def parser_of(name: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"alexnet {name}", formatter_class=HelpFormatter)
    importlib.import_module(COMMANDS[name][0]).add_arguments(parser)
    return parser


def options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found += options(sub)
        elif action.option_strings and action.dest != "help":
            found.append(action)
    return found


@pytest.mark.parametrize("name", CHECKED)
def test_every_option_has_help_and_its_default(name):
    parser = parser_of(name)
    formatter = HelpFormatter(parser.prog)
    for action in options(parser):
        assert action.help, f"{name} {action.option_strings[0]}: no help"
        shown = formatter._get_help_string(action)  # "%(default)s" counts: it shows the value
        if action.nargs != 0 and action.default is not None and action.default != []:
            assert "default" in shown, f"{name} {action.option_strings[0]}: default not shown"


def test_help_output_shows_defaults():
    text = parser_of("evaluate").format_help()
    assert "(default: auto)" in " ".join(text.split())  # --split


def test_the_same_option_has_the_same_default_everywhere():
    defaults: dict[str, dict[str, object]] = {}
    for name in CHECKED:
        for action in options(parser_of(name)):
            defaults.setdefault(action.option_strings[-1], {})[name] = action.default
    assert set(defaults["--crops"].values()) == {TEST_CROPS}, defaults["--crops"]  # section 4.1
    device = defaults["--device"]
    assert {"evaluate", "predict", "figures", "demo", "relu-vs-tanh", "bench"} <= set(device)
    # train's None leaves the preset's run.device in place, whose default is auto too
    assert {d for n, d in device.items() if n != "train"} == {"auto"}, device
    assert device["train"] is None and Config().run.device == "auto"


def test_bare_alexnet_prints_help_and_fails():
    done = subprocess.run([sys.executable, "-m", "alexnet"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2
    assert "usage: alexnet" in done.stderr and "commands:" in done.stderr


def test_unknown_command_fails(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["frobnicate"])
    assert exit_.value.code == 2


@pytest.fixture(scope="module")
def two_class_store(tmp_path_factory) -> Path:
    """32 training images of 8x8, class 0 dark and class 1 bright: learnable in a few steps."""
    root = tmp_path_factory.mktemp("two_class")
    rng = np.random.default_rng(0)
    labels = np.arange(32) % 2
    images = rng.integers(0, 100, (32, 8, 8, 3), dtype=np.uint8)
    images[labels == 1] += 150
    write_store(root / "train", images, labels, [{"wnid": "dark"}, {"wnid": "bright"}])
    return root


def test_relu_vs_tanh_runs_on_auto_with_progress_per_run_and_errors_in_percent(
        two_class_store, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ALEXNET_PROGRESS_SECONDS", "0")  # a plain line for every update
    out = tmp_path / "fig1"
    assert main(["relu-vs-tanh", "--data", str(two_class_store), "--steps", "4", "--window",
                 "2", "--seeds", "1", "--lrs", "0.01", "--batch-size", "8", "--threshold",
                 "0.5", "--thresholds", "0.5", "--threads", "1", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert f"1 seed per unit, on {resolve_device('auto')}" in captured.out  # the default: auto
    result = json.loads((out / "relu_vs_tanh.json").read_text())
    # one line per run (search at seed 0, then measured seed 1) with its error in percent
    runs = [result["search"][a][0] for a in ("relu", "tanh")] + \
        [result["runs"][a][0] for a in ("relu", "tanh")]
    lines = [line for line in captured.out.splitlines() if "running error" in line]
    assert len(lines) == len(runs) == 4
    for run in runs:
        assert any(f"seed {run['seed']}:" in line and line.lstrip().startswith(
            run["activation"]) and f"running error {100 * run['final_error']:.1f}%," in line
            for line in lines), (run["final_error"], lines)
    # progress through alexnet.progress: plain lines (not a terminal), each naming its run
    progress = [line for line in captured.err.splitlines() if line.startswith("relu-vs-tanh:")]
    assert "\r" not in captured.err and progress
    assert re.search(r"relu-vs-tanh: \d+/16 step .*run tanh lr 0.01 seed 1$", progress[-1])
    for a, seed in (("relu", 0), ("relu", 1), ("tanh", 0)):
        assert any(line.endswith(f"run {a} lr 0.01 seed {seed}") for line in progress)


def test_ablate_says_after_every_run_how_many_are_done_and_the_eta(tmp_path):
    from alexnet.config import resolve
    from alexnet.experiments import ablate as ab

    rng = np.random.default_rng(0)
    labels = np.arange(8) % 2
    images = rng.integers(0, 256, (8, 232, 232, 3), dtype=np.uint8)
    train = write_store(tmp_path / "store" / "train", images, labels,
                        [{"wnid": "a"}, {"wnid": "b"}])
    write_store(tmp_path / "store" / "val", images[:4], labels[:4],
                [{"wnid": "a"}, {"wnid": "b"}], stats=train.stats)
    base = resolve("paper", ["model.width=0.125", "optim.batch_size=4", "run.progress=false",
                             "run.device=cpu"], {"data.store": str(tmp_path / "store")})
    lines: list[str] = []
    ab.ablate(base, tmp_path / "out", ab.choose_variants(["no-lrn"]), budget_steps=1, seeds=1,
              log=lambda *a: lines.append(" ".join(map(str, a))))
    counts = [line for line in lines if line.startswith("ablate: ")]
    assert len(counts) == 2  # the paper net, then no-lrn
    assert re.fullmatch(r"ablate: 1/2 runs, \S+ elapsed, ETA \S+", counts[0])
    assert re.fullmatch(r"ablate: 2/2 runs, \S+ elapsed, ETA 0s", counts[1])
