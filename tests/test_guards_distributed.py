"""Launches set up by hand: bad torchrun variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT) are one line naming the variable, and ranks launched with different options stop
together, naming the first option they disagree on, before anything is trained or written."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from test_distributed import VAL_SETTINGS, sets
from test_train import make_store

from alexnet.cli import main
from alexnet.config import resolve
from alexnet.train import train

LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture(scope="module")
def val_store(tmp_path_factory) -> Path:
    """test_distributed's tiny store: 64-pixel images, 24 to train on, 16 to validate."""
    return make_store(tmp_path_factory.mktemp("guards-store"), size=64, n_train=24, n_val=16)


def free_port() -> int:
    """A TCP port nobody listens on now (for a hand-made rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(("env", "named"), [
    ({"RANK": "x", "WORLD_SIZE": "2"}, "RANK='x'"),
    ({"RANK": "0", "WORLD_SIZE": "two"}, "WORLD_SIZE='two'"),
    ({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "x"}, "LOCAL_RANK='x'"),
    ({"RANK": "0", "WORLD_SIZE": "0"}, "WORLD_SIZE=0"),
    ({"RANK": "0", "WORLD_SIZE": "-2"}, "WORLD_SIZE=-2"),
    ({"RANK": "-1", "WORLD_SIZE": "2"}, "RANK=-1"),
    ({"RANK": "1", "WORLD_SIZE": "1"}, "RANK=1 with WORLD_SIZE=1"),
    ({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "-1"}, "LOCAL_RANK=-1"),
    ({"RANK": "0", "WORLD_SIZE": "2"}, "MASTER_ADDR"),
    ({"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1"}, "MASTER_PORT"),
    ({"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "http"},
     "MASTER_PORT='http'"),
])
def test_bad_launch_variables_are_one_line_naming_them(env, named, val_store, tmp_path,
                                                        monkeypatch, capsys):
    """Each is refused at once, exit 2, in one line that names the variable and its value and
    says how to launch instead; no run folder is made."""
    for name in LAUNCH_VARS:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    out = tmp_path / "run"
    code = main(["train", "--data", str(val_store), "--out", str(out), *sets(VAL_SETTINGS),
                 "--max-steps", "1"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("alexnet train: error: "), err
    assert named in err, err
    assert "torchrun --nproc_per_node=N -m alexnet train" in err, err
    assert "unset RANK and WORLD_SIZE" in err, err
    assert not out.exists()


def by_hand(args: list[str], rank1_args: list[str]) -> list[subprocess.CompletedProcess]:
    """`alexnet train ARGS` on two ranks started as a user does without torchrun (RANK,
    WORLD_SIZE, MASTER_ADDR and MASTER_PORT set by hand, a free port), rank 1 with
    `rank1_args` added; both awaited."""
    port = free_port()
    procs = []
    for rank in (0, 1):
        env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
        env.update(OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                   WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank))
        extra = rank1_args if rank == 1 else []
        cmd = [sys.executable, "-m", "alexnet", "train", *args, *extra]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, env=env))
    done = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=240)
        done.append(subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr))
    return done


@pytest.mark.parametrize(("extra", "key", "values"), [
    (["--lr", "0.5"], "optim.lr", ("0.01", "0.5")),
    (["--batch-size", "4"], "optim.batch_size", ("8", "4")),
])
def test_ranks_launched_with_different_options_stop_naming_the_first(val_store, tmp_path,
                                                                     extra, key, values):
    """Rank 1 with another lr or batch than rank 0 trained silently (config.json had rank 0's,
    the validation mixed two nets): every rank stops, exit 2, with one line naming the key and
    both values; nothing is trained and no run folder is made."""
    out = tmp_path / "run"
    ranks = by_hand(["--data", str(val_store), "--out", str(out), *sets(VAL_SETTINGS),
                     "--max-steps", "1"], extra)
    assert_refused(ranks, f"{key}: {values[0]} on rank 0, {values[1]} on rank 1")
    assert not out.exists()


def test_ranks_resuming_with_other_options_given_stop(val_store, tmp_path):
    """On --resume the options given replace the run's own (its lr may have been divided
    since): rank 1 giving --lr at the run's starting value, rank 0 not, would train at two lr;
    both stop, naming it, and the run folder is left as it was."""
    run = tmp_path / "run"
    train(resolve("paper", [*VAL_SETTINGS, "run.max_steps=1"],
                  {"data.store": str(val_store), "run.out": str(run)}))
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    ranks = by_hand(["--resume", str(run), "--max-steps", "2"], ["--lr", "0.01"])
    assert_refused(ranks, "optim.lr given on --resume: absent on rank 0, true on rank 1")
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


def assert_refused(ranks: list[subprocess.CompletedProcess], named: str) -> None:
    """Every rank ended with exit 2 and the one line of a launch whose ranks disagree."""
    for rank, proc in enumerate(ranks):
        assert proc.returncode == 2, (rank, proc.stdout[-2000:], proc.stderr[-2000:])
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, (rank, proc.stderr[-2000:])
        line = lines[0]
        assert line.startswith("alexnet train: error: "), line
        assert "the ranks were launched with different options: " in line, line
        assert named in line, line
        assert "launch every rank with the same arguments (torchrun does)" in line, line
