"""Data parallelism: DDP on 2 CPU processes (gloo, launched by torchrun) trains the same
weights as one process with the same global batch; resume works across it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from alexnet import checkpoint, distributed
from alexnet.config import resolve
from alexnet.data.store import write_store
from alexnet.errors import UserError
from alexnet.train import train

CLASSES = [{"wnid": f"c{i}", "name": f"class {i}"} for i in range(4)]
# 224x224 images with 224 crops and no flips, PCA or dropout: every random draw that could
# depend on the rank is switched off, so 2 x 4 images must give the update of 1 x 8
SETTINGS = ["model.width=0.125", "model.dropout=0", "data.flip=false", "data.pca=false",
            "optim.batch_size=8", "optim.epochs=2", "data.val_split=none",
            "run.progress=false", "run.device=cpu"]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ddp-store")
    rng = np.random.default_rng(3)
    labels = np.arange(24) % 4
    images = rng.integers(0, 256, (24, 224, 224, 3), dtype=np.uint8)
    write_store(root / "train", images, labels, CLASSES)
    return root


# `alexnet train` as `python -m alexnet` runs it, then each rank writes the names of its
# threads still alive (Linux's /proc) to THREADS_DIR/rank-N.txt before the interpreter exits
TRAIN_THEN_LIST_THREADS = """
import os, sys
from alexnet.cli import main
code = main(sys.argv[1:])
tasks = f"/proc/{os.getpid()}/task"
names = [open(f"{tasks}/{t}/comm").read().strip() for t in os.listdir(tasks)]
out = os.path.join(os.environ["THREADS_DIR"], f"rank-{os.environ['RANK']}.txt")
with open(out, "w") as f:
    f.write("\\n".join(sorted(names)))
sys.exit(code)
"""


def torchrun(*args: str, threads_dir: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    entry = ["-m", "alexnet"]
    if threads_dir is not None:
        threads_dir.mkdir(parents=True, exist_ok=True)
        script = threads_dir / "train_then_list_threads.py"
        script.write_text(TRAIN_THEN_LIST_THREADS)
        env["THREADS_DIR"] = str(threads_dir)
        entry = [str(script)]
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node=2", *entry, "train", *args],
                          capture_output=True, text=True, timeout=300, env=env)


def sets(items: list[str]) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


def test_ddp_on_two_processes_equals_one_process_and_resumes(store, tmp_path):
    single = train(resolve("paper", SETTINGS, {"data.store": str(store),
                                               "run.out": str(tmp_path / "one")}))
    assert single["steps"] == 6  # 24 images / global batch 8, two epochs
    # two ranks of 4 images each: first 4 steps, then a resumed launch for the rest
    first = torchrun("--data", str(store), "--out", str(tmp_path / "ddp"),
                     *sets(SETTINGS + ["run.max_steps=4"]), threads_dir=tmp_path / "threads")
    assert first.returncode == 0, first.stderr[-3000:]
    if Path("/proc/self/task").is_dir():
        # the group is gone when train returns: gloo's threads do not race the exit, which
        # aborted a rank now and then ("terminate called without an active exception")
        for rank in (0, 1):
            alive = (tmp_path / "threads" / f"rank-{rank}.txt").read_text().split()
            assert not [name for name in alive if "gloo" in name], (rank, alive)
    assert first.stdout.count("run folder:") == 1  # only rank 0 speaks
    assert "4 per rank x 2" in first.stdout
    part = checkpoint.load(tmp_path / "ddp")
    assert (part["epoch"], part["step"], part["global_step"]) == (1, 1, 4)
    resumed = torchrun("--resume", str(tmp_path / "ddp"), "--max-steps", "0")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = checkpoint.load(tmp_path / "one"), checkpoint.load(tmp_path / "ddp")
    assert (b["epoch"], b["step"], b["global_step"]) == (2, 0, 6)
    for key, value in a["model"].items():
        assert "module." not in key
        torch.testing.assert_close(b["model"][key], value, rtol=1e-4, atol=1e-6)
    # the training loss logged is the mean over both ranks, as in one process
    assert b["metrics"][0]["train_loss"] == pytest.approx(a["metrics"][0]["train_loss"],
                                                          rel=1e-4)


def test_single_process_helpers_are_no_ops(capsys, monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    info = distributed.init_distributed("cpu")
    assert (info.rank, info.world_size, info.is_main, info.distributed) == (0, 1, True, False)
    distributed.print0("only once")
    assert capsys.readouterr().out == "only once\n"
    assert distributed.all_reduce_mean({"loss": 2.5}) == {"loss": 2.5}
    assert distributed.any_rank(True) and not distributed.any_rank(False)
    assert distributed.broadcast_object({"a": 1}) == {"a": 1}
    distributed.barrier()


def test_devices_that_are_absent_are_one_line_errors():
    if torch.cuda.device_count() >= 2:
        pytest.skip("this machine has two GPUs")
    with pytest.raises(UserError, match="split_columns needs two CUDA devices"):
        distributed.pick_device("auto", split_columns=True)
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA device"):
            distributed.pick_device("cuda")


@pytest.mark.parametrize("name", ["bogus", "cuda:abc", "cuda:-1", "cuda:1"])
def test_a_device_name_that_names_no_device_here_is_one_line(monkeypatch, name):
    """Torch's own RuntimeError for a malformed name, and a GPU index past this machine's
    (one GPU stood in for), are one-line errors naming the option."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(UserError, match=f"^--device '{name}': "):
        distributed.pick_device(name)
    assert distributed.pick_device("cuda:0")[0] == torch.device("cuda", 0)


def test_global_batch_must_split_evenly():
    from alexnet.training.data import per_rank_batch

    assert per_rank_batch(resolve("paper", ["optim.batch_size=8"]), 24, 2) == 4
    with pytest.raises(UserError, match="does not split evenly over 3 ranks"):
        per_rank_batch(resolve("paper", ["optim.batch_size=8"]), 24, 3)
