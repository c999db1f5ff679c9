"""alexnet.progress: a redrawn bar on a real terminal, plain periodic lines with an ETA on
anything else (no carriage returns in a log), nothing at all when disabled."""

from __future__ import annotations

import fcntl
import io
import os
import struct
import termios

import pytest

from alexnet.progress import Progress, eta_seconds, format_duration, is_terminal, track


class Clock:
    """A clock the test moves by hand, so the line timing is exact."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(("seconds", "text"), [(0, "0s"), (4.4, "4s"), (59.6, "1m00s"),
                                               (75, "1m15s"), (3725, "1h02m05s"),
                                               (float("inf"), "?"), (-1, "?")])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_eta_is_the_mean_rate_so_far():
    assert eta_seconds(25, 100, 10.0) == pytest.approx(30.0)
    assert eta_seconds(0, 100, 10.0) == float("inf")
    assert eta_seconds(100, 100, 10.0) == 0.0


def test_plain_lines_every_interval_with_rate_and_eta_and_no_carriage_return():
    out, clock = io.StringIO(), Clock()
    with Progress(100, "evaluate", unit="batch", stream=out, interval=10.0, clock=clock) as p:
        for _ in range(100):
            clock.now += 0.5  # 2 batches a second
            p.update()
            p.note(loss="1.234")
    text = out.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    # 50 s of work, a line every 10 s (at 20, 40, 60, 80 and 100 batches); closing writes no
    # second copy of the last line, which already shows the end.
    assert len(lines) == 5
    assert lines[0] == "evaluate: 20/100 batch (20%), 2 batch/s, ETA 40s, loss 1.234"
    assert lines[1].startswith("evaluate: 40/100 batch (40%), 2 batch/s, ETA 30s")
    assert lines[-1] == "evaluate: 100/100 batch (100%), 2 batch/s, done in 50s, loss 1.234"


def test_closing_writes_the_end_when_the_last_line_did_not_show_it():
    out, clock = io.StringIO(), Clock()
    with Progress(10, "validate", stream=out, interval=5.0, clock=clock) as p:
        for _ in range(10):
            clock.now += 1.0
            p.update()  # lines at 5 and 10 items
        p.note(top1="41.0%")  # a value the last line did not show
    lines = out.getvalue().splitlines()
    assert [line.split(",")[0] for line in lines] == ["validate: 5/10 it (50%)",
                                                      "validate: 10/10 it (100%)",
                                                      "validate: 10/10 it (100%)"]
    assert lines[-1].endswith("top1 41.0%")


def test_short_work_writes_nothing_when_not_a_terminal():
    out, clock = io.StringIO(), Clock()
    for _ in track(range(5), "validate", stream=out, interval=10.0, clock=clock):
        clock.now += 1.0
    assert out.getvalue() == ""


def test_resumed_count_measures_rate_from_where_it_started():
    out, clock = io.StringIO(), Clock()
    p = Progress(10, "epoch 2/3", unit="batch", initial=6, stream=out, interval=1.0, clock=clock)
    clock.now += 2.0
    p.set(8)  # 2 batches in 2 s since resuming at 6: 2 left at 1 batch/s
    assert out.getvalue() == "epoch 2/3: 8/10 batch (80%), 1 batch/s, ETA 2s\n"


def test_disabled_writes_nothing():
    out, clock = io.StringIO(), Clock()
    p = Progress(3, "x", stream=out, interval=0.0, clock=clock, enabled=False)
    clock.now += 5
    p.update(3)
    p.note(a=1)
    p.close()
    assert out.getvalue() == ""


def test_a_real_terminal_gets_a_redrawn_bar():
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # 100 columns
    try:
        with open(slave, "w", closefd=True) as tty:
            assert is_terminal(tty)
            with Progress(4, "train", unit="batch", stream=tty) as p:
                assert p.bar is not None
                for _ in range(4):
                    p.update()
            tty.flush()
            text = os.read(master, 65536).decode(errors="replace")
    finally:
        os.close(master)
    assert "\r" in text and "train:" in text and "/4 [" in text


def test_files_and_pipes_are_not_terminals(tmp_path):
    with open(tmp_path / "log", "w") as f:
        assert not is_terminal(f)
    assert not is_terminal(io.StringIO())
