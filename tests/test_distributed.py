"""Data parallelism: DDP on 2 CPU processes (gloo, launched by torchrun) trains the same
weights as one process with the same global batch; resume works across it."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from _stops import held_elsewhere, tree
from test_train import assert_same_weights, make_store, strip_timing

from alexnet import checkpoint, distributed
from alexnet.config import resolve
from alexnet.data.store import open_split, write_store
from alexnet.errors import UserError
from alexnet.evaluate import evaluate_model, input_settings
from alexnet.train import train
from alexnet.training.runtime import rank_seed, restore_rng, seed_everything
from alexnet.training.state import build_network

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


def torchrun(*args: str, threads_dir: Path | None = None, script: str | None = None,
             wait: bool = True, launcher: tuple[str, ...] = ()
             ) -> subprocess.CompletedProcess | subprocess.Popen:
    """`torchrun --nproc_per_node=2 LAUNCHER -m alexnet train ARGS` (or `script` run as the
    entry, its folder in $THREADS_DIR); a Popen when not `wait`."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    # a rank that stops on a loaded test machine is not SIGKILLed after torchrun's 30 s
    env["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"] = "120"
    entry = ["-m", "alexnet"]
    if threads_dir is not None:
        threads_dir.mkdir(parents=True, exist_ok=True)
        path = threads_dir / "entry.py"
        path.write_text(script or TRAIN_THEN_LIST_THREADS)
        env["THREADS_DIR"] = str(threads_dir)
        entry = [str(path)]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           *launcher, *entry, "train", *args]
    if not wait:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=env)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)


def sets(items: list[str]) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


def test_ddp_on_two_processes_equals_one_process_and_resumes(store, tmp_path, capsys):
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
    shutil.copytree(tmp_path / "ddp", tmp_path / "on-one")
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
    # the 2-rank run resumed by one process: said, and (no random draw here) the same run, its
    # resumed epoch's loss the mean over every image of it (both ranks' sums were saved)
    on_one = tmp_path / "on-one"
    train(resolve("paper", SETTINGS, {"data.store": str(store), "run.out": str(on_one),
                                      "run.resume": str(on_one)}))
    assert f"notice: {on_one / 'checkpoint.pt'} was trained on 2 ranks, this launch has 1: " \
        in capsys.readouterr().out
    c = checkpoint.load(on_one)
    for key, value in a["model"].items():
        torch.testing.assert_close(c["model"][key], value, rtol=1e-4, atol=1e-6)
    for row, theirs in zip(c["metrics"], a["metrics"], strict=True):
        assert row["train_loss"] == pytest.approx(theirs["train_loss"], rel=1e-4)
    # the log says how many ranks ended each epoch: the change of launch shows
    assert [[row["ranks"] for row in run["metrics"]] for run in (a, b, c)] == \
        [[1, 1], [2, 2], [2, 1]]
    assert [row["ranks"] for row in csv.DictReader(open(on_one / "log.csv"))] == ["2", "1"]


def test_single_process_helpers_are_no_ops(capsys, monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    info = distributed.init_distributed("cpu")
    assert (info.rank, info.world_size, info.is_main, info.distributed) == (0, 1, True, False)
    distributed.print0("only once")
    assert capsys.readouterr().out == "only once\n"
    assert distributed.all_reduce_mean({"loss": 2.5}) == {"loss": 2.5}
    assert distributed.any_rank(True) and not distributed.any_rank(False)
    assert distributed.all_reduce_sum({"images": 7, "top1_wrong": 3}) == {"images": 7,
                                                                          "top1_wrong": 3}
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


@pytest.mark.parametrize("n", [0, 1, 7, 15, 16])
@pytest.mark.parametrize("world", [1, 2, 3, 8])
def test_the_ranks_shares_hold_every_item_once(n, world):
    """Validation's shares: consecutive items, sizes one apart at most, each item in one."""
    parts = [distributed.share(n, rank, world) for rank in range(world)]
    assert [i for part in parts for i in part] == list(range(n))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert distributed.share(n, 0, 1) == range(n)


def test_global_batch_must_split_evenly():
    from alexnet.training.data import per_rank_batch

    assert per_rank_batch(resolve("paper", ["optim.batch_size=8"]), 24, 2) == 4
    with pytest.raises(UserError, match="does not split evenly over 3 ranks"):
        per_rank_batch(resolve("paper", ["optim.batch_size=8"]), 24, 3)


# tiny 64-pixel images, epochs of 3 steps, validated on the first 15 of the 16 validation
# images: an odd number, so that the two ranks' shares differ (7 and 8, 2 batches each)
VAL_SETTINGS = ["model.width=0.125", "data.crop=64", "optim.batch_size=8", "optim.epochs=3",
                "run.eval_batch_size=4", "run.val_limit=15", "run.progress=false",
                "run.device=cpu"]


@pytest.fixture(scope="module")
def val_store(tmp_path_factory) -> Path:
    return make_store(tmp_path_factory.mktemp("ddp-val-store"), size=64, n_train=24, n_val=16)


# the entry of both ranks: in the second validation (epoch 2's), rank 0 waits at the first
# batch of its share until rank 1 has evaluated its whole share, then for the test's SIGTERM;
# each rank writes the status `alexnet train` returned, how many batches of its share the net
# saw (batches-RANK), and validated-RANK when it evaluated its whole share
STOP_IN_VALIDATION = """
import os, signal, sys, time
from pathlib import Path
import alexnet.evaluate as evaluate
from alexnet.cli import main

box, rank = Path(os.environ["THREADS_DIR"]), os.environ["RANK"]
real, calls = evaluate.predict_probs, [0]
real_signal = signal.signal

def marking(signum, handler):
    # a SIGTERM handler that the run installs also marks that this rank got the signal:
    # torchrun forwards the test's SIGTERM to the ranks some time after it got it
    if signum == signal.SIGTERM and callable(handler):
        inner = handler

        def handler(signum, frame):
            (box / f"got-{rank}").write_text("")
            return inner(signum, frame)
    return real_signal(signum, handler)

signal.signal = marking

def wait(path):
    t0 = time.monotonic()
    while not path.exists() and time.monotonic() - t0 < 60:
        time.sleep(0.01)

def predict_probs(model, loader, progress=None):
    calls[0] += 1

    def batches():
        for i, batch in enumerate(loader):
            if calls[0] == 2 and rank == "0" and i == 0:
                wait(box / "validated-1")
                (box / "in-validation").write_text("")
                wait(box / "sent")
                wait(box / "got-0")  # torchrun has passed it on: the stop flag is set
            (box / f"batches-{rank}").write_text(str(i + 1))
            yield batch
    result = real(model, batches(), progress)
    if calls[0] == 2:
        (box / f"validated-{rank}").write_text("")
    return result

evaluate.predict_probs = predict_probs
code = main(sys.argv[1:])
(box / f"rank-{os.environ['RANK']}.code").write_text(str(code))
sys.exit(code)
"""


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    t0 = time.monotonic()
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() - t0 < timeout
        time.sleep(0.02)


# the entry of both ranks: the first dropout of training writes torch's generator state before
# its draw and the mask it draws (a batch of ones through it) to THREADS_DIR/dropout-RANK.pt;
# each validation appends the images the rank evaluated to THREADS_DIR/val-RANK.jsonl
RECORD_DROPOUT = """
import json, os, sys
from pathlib import Path
import torch
import alexnet.evaluate as evaluate
from alexnet.cli import main

real_evaluate = evaluate.evaluate_model

def evaluate_model(*args, **kwargs):
    result = real_evaluate(*args, **kwargs)
    indices = kwargs.get("indices")
    with open(Path(os.environ["THREADS_DIR"], f"val-{os.environ['RANK']}.jsonl"), "a") as f:
        f.write(json.dumps({"indices": None if indices is None else list(indices),
                            "images": result["images"]}) + "\\n")
    return result

evaluate.evaluate_model = evaluate_model

real, first = torch.nn.Dropout.forward, []

def forward(self, x):
    if self.training and not first:
        first.append(torch.get_rng_state())
        mask = real(self, torch.ones_like(x)) != 0
        torch.set_rng_state(first[0])
        torch.save({"rng": first[0], "mask": mask},
                   Path(os.environ["THREADS_DIR"], f"dropout-{os.environ['RANK']}.pt"))
    return real(self, x)

torch.nn.Dropout.forward = forward
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def ref_run(val_store, tmp_path_factory) -> Path:
    """An uninterrupted 2-rank launch of VAL_SETTINGS (the paper's dropout on), each rank's
    first dropout recorded in RUN/../box (RECORD_DROPOUT)."""
    root = tmp_path_factory.mktemp("ddp-ref")
    ref = torchrun("--data", str(val_store), "--out", str(root / "ref"), *sets(VAL_SETTINGS),
                   threads_dir=root / "box", script=RECORD_DROPOUT)
    assert ref.returncode == 0, ref.stderr[-3000:]
    assert ref.stdout.count("done (completed)") == 1, ref.stdout  # once, not once per rank
    return root / "ref"


def first_dropout_in_one_process(config, monkeypatch) -> dict:
    """torch's generator state before the first training dropout of `train(config)` in this
    process, and the mask it draws (as RECORD_DROPOUT records a rank's)."""
    real, first = torch.nn.Dropout.forward, {}

    def forward(self, x):
        if self.training and not first:
            first["rng"] = torch.get_rng_state()
            first["mask"] = real(self, torch.ones_like(x)) != 0
            torch.set_rng_state(first["rng"])
        return real(self, x)

    monkeypatch.setattr(torch.nn.Dropout, "forward", forward)
    train(config)
    return first


def test_each_rank_draws_its_own_dropout_masks(ref_run, val_store, tmp_path, monkeypatch):
    """Section 4.2 drops each hidden unit per training case: the two ranks' halves of a global
    batch get different masks (the same seed on every rank gave row i of both the same one),
    while rank 0, like one process, draws from the stream seeded for the initialisation right
    after it, as it always did; the checkpoint keeps each rank's generators."""
    box = ref_run.parent / "box"
    ranks = [torch.load(box / f"dropout-{rank}.pt") for rank in (0, 1)]
    assert ranks[0]["mask"].shape == ranks[1]["mask"].shape == (4, 512)  # width 0.125's fc6
    assert not torch.equal(ranks[0]["mask"], ranks[1]["mask"])
    assert not torch.equal(ranks[0]["rng"], ranks[1]["rng"])
    config = resolve("paper", VAL_SETTINGS + ["run.max_steps=1"],
                     {"data.store": str(val_store), "run.out": str(tmp_path / "one")})
    seed_everything(config.run.seed)
    build_network(config, len(CLASSES))
    after_init = torch.get_rng_state()
    one = first_dropout_in_one_process(config, monkeypatch)
    assert torch.equal(one["rng"], after_init) and torch.equal(ranks[0]["rng"], after_init)
    assert "rank_rng" not in checkpoint.load(tmp_path / "one")  # one process: as before
    saved = checkpoint.load(ref_run)["rank_rng"]
    assert len(saved) == 2 and not torch.equal(saved[0]["torch"], saved[1]["torch"])


def test_each_rank_resumes_its_own_generators_else_a_fresh_stream():
    """A rank of the saved run takes its own saved generators (`rank_rng`); one the saved run
    lacked (a launch with more ranks) takes rank 0's numpy and python states and a torch
    stream of its own from (seed, rank, step); an older checkpoint's one state (`rng`) is
    rank 0's, restored as before."""
    before = checkpoint.rng_state()

    def drawn_from(seed: int) -> dict:
        seed_everything(seed)
        torch.rand(3)
        return checkpoint.rng_state()

    def resumed(ckpt: dict, rank: int) -> dict:
        restore_rng(ckpt, rank, seed=5, step=7)
        return checkpoint.rng_state()

    try:
        saved = [drawn_from(1), drawn_from(2)]
        two = {"rng": saved[0], "rank_rng": saved, "world_size": 2}
        old = {"rng": saved[1]}
        for ckpt, rank, want in ((two, 0, saved[0]), (two, 1, saved[1]), (old, 0, saved[1])):
            got = resumed(ckpt, rank)
            assert torch.equal(got["torch"], want["torch"]), rank
            assert torch.equal(got["numpy"]["keys"], want["numpy"]["keys"]), rank
        for ckpt, rank in ((two, 2), (two, 3), (old, 1)):
            got = resumed(ckpt, rank)
            torch.manual_seed(rank_seed(5, rank, 7))
            assert torch.equal(got["torch"], torch.get_rng_state()), rank
            assert torch.equal(got["numpy"]["keys"], ckpt["rng"]["numpy"]["keys"]), rank
            assert got["python"] == ckpt["rng"]["python"], rank
        streams = {rank_seed(5, 2, 7), rank_seed(5, 3, 7), rank_seed(5, 2, 8), rank_seed(5, 2),
                   rank_seed(6, 2, 7)}
        assert len(streams) == 5  # every rank, step and seed its own
    finally:
        checkpoint.set_rng_state(before)


def test_validation_is_split_between_the_ranks_and_equals_one_process(ref_run, val_store):
    """Each rank validates only its share of the 15 images run.val_limit selects (7 and 8),
    and the ranks' summed counts give exactly the errors of one process evaluating the run's
    checkpoint on those 15 images (the last epoch's validation saw its weights)."""
    box = ref_run.parent / "box"
    assert (box / "val-1.jsonl").exists(), "rank 1 validated nothing"
    calls = [[json.loads(line) for line in (box / f"val-{rank}.jsonl").read_text().splitlines()]
             for rank in (0, 1)]
    assert calls[0] == [{"indices": list(range(7)), "images": 7}] * 3  # one per epoch
    assert calls[1] == [{"indices": list(range(7, 15)), "images": 8}] * 3
    net, ckpt = checkpoint.load_model(ref_run / "checkpoint.pt")
    settings = input_settings(ckpt)
    one = evaluate_model(net, open_split(val_store, "val"), crops=1, batch_size=4,
                         stats=ckpt["stats"], mean=settings["mean"], crop=settings["crop"],
                         indices=range(15))
    logged = json.loads((ref_run / "log.jsonl").read_text().splitlines()[-1])
    assert logged["epoch"] == 3 and one["images"] == 15
    assert (logged["val_top1_error"], logged["val_top5_error"]) == (one["top1_error"],
                                                                    one["top5_error"])


def test_sigterm_in_validation_stops_it_on_every_rank_and_resume_is_exact(val_store, ref_run,
                                                                          tmp_path):
    """A scheduler's SIGTERM to torchrun (which sends each rank SIGTERM) in the middle of a
    validation: it stops between two batches of rank 0's share and on rank 1 too, which had
    evaluated its whole share (no rank waits for another in a collective), rank 0 saves the
    epoch's training (each rank's partial sums and generators too), every rank ends with one
    line and status 143, and the resumed launch redoes the validation and ends with the
    uninterrupted launch's weights and log (dropout on: each rank goes on with its own
    masks)."""
    settings = sets(VAL_SETTINGS)
    cut, box = tmp_path / "cut", tmp_path / "box"
    proc = torchrun("--data", str(val_store), "--out", str(cut), *settings, threads_dir=box,
                    script=STOP_IN_VALIDATION, wait=False)
    wait_for(box / "in-validation", proc)
    proc.send_signal(signal.SIGTERM)
    (box / "sent").write_text("")
    out, err = proc.communicate(timeout=300)
    codes = [(box / f"rank-{rank}.code").read_text() if (box / f"rank-{rank}.code").exists()
             else None for rank in (0, 1)]  # None: the rank ended before main returned
    assert codes == ["143", "143"], (  # a string: pytest shortens a tuple's repr
        f"codes {codes}, torchrun's status {proc.returncode}\n--- stdout:\n{out[-3000:]}\n"
        f"--- stderr:\n{err[-6000:]}")
    assert err.count("alexnet train: terminated (SIGTERM)") == 2 and "[rank" not in err, err
    assert (box / "got-0").exists()  # rank 0 waited for its signal before its next batch
    assert (box / "batches-0").read_text() == "1"  # of 2: stopped there, not at its end
    assert not (box / "validated-0").exists()
    assert (box / "batches-1").read_text() == "2" and (box / "validated-1").exists()
    assert out.count("checkpoint saved") == 1 and (
        f"checkpoint saved at epoch 2, step 3, before its validation: {cut / 'checkpoint.pt'}; "
        f"continue with --resume {cut}") in out, out
    part = checkpoint.load(cut)
    assert (part["epoch"], part["step"], part["global_step"], len(part["metrics"])) == \
        (1, 3, 6, 1)
    assert not [p.name for p in cut.iterdir() if p.name.startswith(".tmp-")]
    rank_rng = part["rank_rng"]  # each rank's generators, its own
    assert len(rank_rng) == 2 and not torch.equal(rank_rng[0]["torch"], rank_rng[1]["torch"])
    resumed = torchrun("--resume", str(cut))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_weights(ref_run / "checkpoint.pt", cut / "checkpoint.pt")
    assert strip_timing(ref_run / "log.jsonl") == strip_timing(cut / "log.jsonl")


# the entry of both ranks: rank 1 is killed (SIGKILL) as epoch 2's second step starts
KILL_RANK_1 = """
import os, signal, sys
from pathlib import Path
import alexnet.training.loop as loop
from alexnet.cli import main

real, calls = loop.train_step, [0]

def step(*args):
    calls[0] += 1
    if calls[0] == 5 and os.environ["RANK"] == "1":
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*args)

loop.train_step = step
code = main(sys.argv[1:])
Path(os.environ["THREADS_DIR"], f"rank-{os.environ['RANK']}.code").write_text(str(code))
sys.exit(code)
"""


def test_a_killed_rank_ends_the_others_in_one_line_and_keeps_the_checkpoint(val_store,
                                                                             tmp_path):
    """kill -9 of one rank mid-epoch: the other's collective fails at once, and it ends with
    one line naming the kept checkpoint, no traceback and no hang; the checkpoint (epoch 1's)
    is kept whole. torchrun looks at its ranks every 5 s here, so that its SIGTERM to the
    survivor comes after that (it would end it with "terminated" instead). Where torchrun's
    look still came first (its ticks start at launch: a kill just before one, on a loaded
    machine, once in a while), the run is made once more: that order is torchrun's, not
    ours."""
    for attempt in range(2):
        run, box = tmp_path / f"run{attempt}", tmp_path / f"box{attempt}"
        result = torchrun("--data", str(val_store), "--out", str(run), *sets(VAL_SETTINGS),
                          threads_dir=box, script=KILL_RANK_1,
                          launcher=("--monitor-interval=5",))
        if (box / "rank-0.code").read_text() != "143":
            break
    assert result.returncode != 0
    assert (box / "rank-0.code").read_text() == "2", result.stderr[-3000:]
    assert not (box / "rank-1.code").exists()
    ours = [line for line in result.stderr.splitlines() if line.startswith("alexnet train:")]
    assert len(ours) == 1 and "[rank0]" not in result.stderr, result.stderr[-3000:]
    assert ours[0].startswith("alexnet train: error: rank 0: lost the other ranks ("), ours
    assert ours[0].endswith(f"the last checkpoint saved, {run / 'checkpoint.pt'}, is kept "
                            f"(continue with --resume {run})"), ours
    kept = checkpoint.load(run)
    assert (kept["epoch"], kept["step"]) == (1, 0)


def test_a_refusal_of_rank_0_alone_is_every_ranks_one_line(val_store, tmp_path):
    """The run folder's lock (taken by rank 0 only, the writer) held by another process: rank
    1 refuses with rank 0's line instead of waiting for it in DDP's first collective (and
    dying with a traceback when torchrun ends it); the folder is left as it was."""
    run = tmp_path / "run"
    run.mkdir()
    with held_elsewhere(run / ".lock"):
        before = tree(run)
        result = torchrun("--data", str(val_store), "--out", str(run), *sets(VAL_SETTINGS))
        assert tree(run) == before
    assert result.returncode != 0
    busy = f"alexnet train: error: {run}: another process is training into this run folder"
    assert result.stderr.count(busy) == 2 and "[rank1]" not in result.stderr, \
        result.stderr[-3000:]


def test_a_resume_into_a_held_run_folder_is_every_ranks_one_line(ref_run, tmp_path):
    """`--resume RUN` while another process trains into RUN: rank 0 refused before the ranks
    met, alone, and rank 1 waited for it to join until torchrun ended it ("terminated
    (SIGTERM)", 143); now every rank ends with the refusal (exit 2), and RUN is left as it
    was."""
    run = Path(shutil.copytree(ref_run, tmp_path / "run"))
    with held_elsewhere(run / ".lock"):
        before = tree(run)
        result = torchrun("--resume", str(run))
        assert tree(run) == before
    assert result.returncode != 0
    busy = f"alexnet train: error: {run}: another process is training into this run folder"
    assert result.stderr.count(busy) == 2, result.stderr[-3000:]
    assert "terminated" not in result.stderr and "[rank1]" not in result.stderr, \
        result.stderr[-3000:]
    assert "exitcode  : 2" in result.stderr and "exitcode  : 143" not in result.stderr
