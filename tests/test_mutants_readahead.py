"""Mutation audit of the CPU loader paths and training's loader: unchecked were a rank's
partial-batch drop, seeds vs epochs, read-ahead depth, memory reuse and train_loader's wiring."""

from __future__ import annotations

import threading
import time
import types

import numpy as np
import pytest
import torch

from alexnet.data.loader import EvalLoader, TrainLoader, read_ahead
from alexnet.data.store import Store, write_store
from alexnet.errors import UserError
from alexnet.paper import PCA_ALPHA_STD

N, SIZE = 100, 8
PLAIN = {"flip": False, "pca": False, "mean": "none"}  # pixels pass through unchanged


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    """N tiny images whose channel 0 says the image's index."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (N, SIZE, SIZE, 3), dtype=np.uint8)
    images[..., 0] = np.arange(N, dtype=np.uint8)[:, None, None]
    return write_store(tmp_path_factory.mktemp("ra") / "train", images, np.arange(N) % 7,
                       [f"c{k}" for k in range(7)])


def ids(x: torch.Tensor) -> list[int]:
    return [int(v) for v in x[:, 0, 0, 0]]


def test_each_rank_keeps_the_first_whole_batches_of_its_shard_each_in_store_order(
        store: Store) -> None:
    """docs/loading.md: rank r takes order[:n // w * w][r::w] and drops its own last partial
    batch; batch k is images k*B..(k+1)*B of that shard, read in increasing store order.
    With 100 images, 3 ranks and batches of 10 each shard (33) has a partial batch to drop,
    which the existing tests (whose shards split into whole batches) never had."""
    world, batch = 3, 10
    order = TrainLoader(store, 1, crop=SIZE, seed=4, **PLAIN).indices(0)  # the whole shuffle
    assert sorted(order.tolist()) == list(range(N))
    kept = order[:N // world * world]
    for rank in range(world):
        shard = kept[rank::world]
        loader = TrainLoader(store, batch, crop=SIZE, seed=4, rank=rank, world_size=world,
                             **PLAIN)
        got = [ids(x) for x, _ in loader.epoch(0)]
        want = [sorted(shard[k * batch:(k + 1) * batch].tolist())
                for k in range(len(shard) // batch)]
        assert got == want, rank


def test_seeds_and_epochs_give_distinct_shuffles(store: Store) -> None:
    """The shuffle comes from (seed, epoch) as a pair: seed s at epoch e + 1 is not seed
    s + 1 at epoch e (a seed folded into the epoch would make runs of nearby seeds replay
    each other's epochs, shifted by one)."""
    orders = {(s, e): tuple(TrainLoader(store, 1, crop=SIZE, seed=s, **PLAIN).indices(e))
              for s in range(4) for e in range(4)}
    assert len(set(orders.values())) == len(orders)


@pytest.mark.parametrize("depth", [0, 1, 2, 3])
def test_read_ahead_runs_depth_jobs_ahead_of_the_consumer(depth: int) -> None:
    """read_ahead's promise: while the consumer holds result k, up to `depth` later jobs
    run, side by side in threads (jobs 1..depth wait for each other), depth 0 none (each job
    runs when asked for); results come in order."""
    started: list[int] = []
    lock = threading.Lock()
    together = threading.Barrier(max(1, depth), timeout=30)  # jobs 1..depth meet: in parallel

    def job(k: int):
        def run() -> int:
            with lock:
                started.append(k)
            if 1 <= k <= depth:
                together.wait()
            return k
        return run

    batches = read_ahead([job(k) for k in range(8)], depth)
    assert next(batches) == 0
    deadline = time.monotonic() + 30  # generous on a loaded machine: it ends when they start
    while len(started) < 1 + depth and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(0.05)  # no more than that may start while the consumer holds batch 0
    assert sorted(started) == list(range(1 + depth))
    assert list(batches) == list(range(1, 8))


def test_eval_indices_outside_the_store_are_user_errors(store: Store) -> None:
    """EvalLoader's indices must lie in 0..n-1: a negative one (which NumPy would read
    from the end) or n is refused, not read silently."""
    for bad in ([-1], [3, -N], [N]):
        with pytest.raises(UserError, match="indices must lie"):
            EvalLoader(store, 2, crop=SIZE, mean="none", indices=bad)


def skip_without_use_count() -> None:
    from alexnet.data import loader

    if loader._refs_alone() is None:
        pytest.skip("this torch has no storage use count: nothing is pooled")


def pooled(memory) -> set[int]:
    return {block.data_ptr() for block in memory.blocks}


def test_ten_patch_eval_batches_are_made_in_the_pools_blocks(store: Store) -> None:
    """EvalLoader's BatchMemory is sized for batch * crops patches: full 10-patch batches
    come from kept blocks (not fresh memory each time); the smaller last batch is new."""
    loader = EvalLoader(store, 16, crops=10, crop=SIZE, mean="none", prefetch=1)
    full = []
    for x, y in loader:
        if len(y) == 16:
            full.append(x.data_ptr())
        del x
    assert loader.memory is not None
    skip_without_use_count()
    assert len(full) == N // 16 and set(full) <= pooled(loader.memory)


def test_a_consumer_dropping_each_batch_is_served_from_prefetch_plus_4_blocks(
        store: Store) -> None:
    """BatchMemory keeps prefetch + 4 blocks (docs/loading.md), enough for every batch in
    flight, so after the pool fills no training batch is made in fresh memory; keeping
    fewer (prefetch + 1) leaves some batches to fresh memory, page-faulted each time."""
    for depth in (1, 2):
        loader = TrainLoader(store, 4, crop=SIZE, prefetch=depth, **PLAIN)
        ptrs = []
        for epoch in range(2):
            for x, _ in loader.epoch(epoch):
                ptrs.append(x.data_ptr())
                del x
        skip_without_use_count()
        assert loader.memory.keep == depth + 4
        assert set(ptrs) <= pooled(loader.memory), depth


def test_train_loader_takes_every_setting_from_the_config_and_runtime(tmp_path) -> None:
    """training/data.train_loader passes the run's seed, the rank and world size, the data
    options, the reading options, channels_last and the statistics given, not defaults
    (checked against the values set, all unlike the defaults)."""
    from alexnet.config import resolve
    from alexnet.distributed import DistInfo
    from alexnet.training.data import train_loader

    images = np.random.default_rng(1).integers(0, 256, (30, 68, 68, 3), dtype=np.uint8)
    store = write_store(tmp_path / "train", images, np.arange(30) % 3, ["a", "b", "c"])
    config = resolve("paper", ["run.seed=7", "run.prefetch=3", "run.decode_threads=3",
                               "data.flip=false", "data.pca=false", "data.pca_scale=2.5",
                               "data.mean=channel", "data.crop=66", "model.arch=alexnet-tv",
                               "run.device=cpu"])
    rt = types.SimpleNamespace(dist=DistInfo(rank=1, world_size=3), device=torch.device("cpu"),
                               channels_last=True)
    stats = dict(store.stats)
    loader = train_loader(store, 5, config, rt, stats)
    assert (loader.seed, loader.rank, loader.world_size) == (7, 1, 3)
    assert (loader.batch_size, loader.crop, loader.pad) == (5, 66, 0)
    assert (loader.flip, loader.pca, loader.mean) == (False, False, "channel")
    assert loader.pca_scale == "std" and loader.alpha_std == pytest.approx(PCA_ALPHA_STD * 2.5)
    assert (loader.reading.prefetch, loader.reading.threads) == (3, 3)
    assert loader.channels_last is True and loader.stats is stats
    assert len(loader) == (30 // 3) // 5
    x, _ = next(iter(loader.epoch(0)))
    assert x.is_contiguous(memory_format=torch.channels_last)
