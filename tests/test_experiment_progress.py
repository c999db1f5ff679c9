"""The experiments' progress: plain lines with an ETA when the output is not a terminal."""

from __future__ import annotations

import io

from alexnet.experiments.progress import Progress, format_duration


def test_plain_lines_with_eta_when_not_a_terminal():
    stream = io.StringIO()  # not a terminal: no tqdm redraws, plain lines
    bar = Progress(10, "relu-vs-tanh", unit="step", stream=stream, interval=0.0)
    bar.update(4)
    bar.note(run="tanh lr 0.1")
    bar.update(1)
    bar.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2 and "\r" not in stream.getvalue()
    assert lines[0].startswith("relu-vs-tanh: 4/10 step (40%), ETA ")
    assert lines[1].startswith("relu-vs-tanh: 5/10 step (50%), ETA ")
    assert lines[1].endswith(", run tanh lr 0.1")
    quiet = io.StringIO()
    off = Progress(10, "x", stream=quiet, interval=0.0, enabled=False)
    off.update(3)
    off.close()
    assert quiet.getvalue() == ""


def test_durations_read_as_hours_minutes_seconds():
    assert format_duration(4.2) == "4s"
    assert format_duration(75) == "1m15s"
    assert format_duration(3725) == "1h02m05s"
    assert format_duration(float("inf")) == "?"
