"""One interface across commands: help on every option with its default, the same default
for the same option everywhere, and a bare `alexnet` that prints help and fails."""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from alexnet.cli import COMMANDS, HelpFormatter, main

REPO = Path(__file__).resolve().parents[1]
# relu-vs-tanh and ablate belong to the experiments (their own flags are checked there)
CHECKED = [name for name in COMMANDS if name not in ("relu-vs-tanh", "ablate")]


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
        if action.nargs != 0 and action.default is not None:
            assert "default" in shown, f"{name} {action.option_strings[0]}: default not shown"


def test_help_output_shows_defaults():
    text = parser_of("evaluate").format_help()
    assert "(default: auto)" in " ".join(text.split())  # --split


def test_the_same_option_has_the_same_default_everywhere():
    defaults: dict[str, dict[str, object]] = {}
    for name in CHECKED:
        for action in options(parser_of(name)):
            defaults.setdefault(action.option_strings[-1], {})[name] = action.default
    assert set(defaults["--crops"].values()) == {1}, defaults["--crops"]
    assert {defaults["--device"][n] for n in ("evaluate", "predict", "figures", "demo")} \
        == {"auto"}


def test_bare_alexnet_prints_help_and_fails():
    done = subprocess.run([sys.executable, "-m", "alexnet"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2
    assert "usage: alexnet" in done.stderr and "commands:" in done.stderr


def test_unknown_command_fails(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["frobnicate"])
    assert exit_.value.code == 2
