"""The `alexnet` command itself: help, version, unknown commands."""

import subprocess
import sys

from alexnet.cli import COMMANDS, main


def test_help_lists_every_command(capsys):
    try:
        main(["--help"])
    except SystemExit as exit_:
        assert exit_.code == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


def test_unknown_command_is_refused():
    proc = subprocess.run([sys.executable, "-m", "alexnet", "nosuch"], capture_output=True,
                          text=True)
    assert proc.returncode == 2
    assert "invalid choice" in proc.stderr
