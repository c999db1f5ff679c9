"""Tests from a mutation audit of alexnet/config.py and alexnet/distributed.py (and the per-rank
seeding and batch split they feed): each catches a plausible wrong change the older tests let
through. The process group is stood in for by a fake two-rank group (no torchrun)."""

from __future__ import annotations

import inspect
import math
import re
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from alexnet import distributed, paper
from alexnet.config import (
    FLOAT32_MAX,
    Config,
    flag_values,
    from_dict,
    given_keys,
    load_preset,
    model_kwargs,
    parse_overrides,
    resolve,
    scaled_lr,
    validate,
)
from alexnet.errors import UserError

DOCS = Path(__file__).resolve().parents[1] / "docs" / "training.md"


def refused(items: list[str], fragment: str) -> None:
    """`resolve` refuses `items` with a one-line UserError containing `fragment`."""
    with pytest.raises(UserError) as err:
        resolve(None, items)
    assert fragment in str(err.value) and "\n" not in str(err.value)


# --- defaults: the paper's numbers (alexnet/paper.py) and the documented choices ------------

def test_every_default_is_the_papers_or_the_documented_choice():
    """Defaults the older tests do not pin: the paper's init bias of 1, overlapping pooling
    (z=3 > s=2), its LRN formula, its PCA std, the batch lr scaling refers to, and the plateau
    patience/threshold that docs/training.md states."""
    c = Config()
    assert c.model.columns == paper.COLUMNS == 2
    assert c.model.init_bias == paper.INIT_BIAS_ONE == 1.0
    assert c.model.overlap_pool is True and paper.POOL_STRIDE < paper.POOL_SIZE
    assert c.model.lrn_alpha_over_n is False  # section 3.3: alpha times the sum, not alpha/n
    assert c.data.pca_scale == 1.0  # the paper's alpha std (PCA_ALPHA_STD) unscaled
    assert c.data.flip is True and c.data.val_split == "auto"
    assert c.optim.base_batch == paper.BATCH_SIZE
    text = DOCS.read_text()
    patience = re.search(r"`optim\.patience = (\d+)`", text)
    threshold = re.search(r"`optim\.threshold = ([0-9.]+)`", text)
    assert patience and threshold
    assert c.optim.patience == int(patience.group(1))
    assert c.optim.threshold == float(threshold.group(1))


# --- layering: from_dict, resolve's base, flags ----------------------------------------------

def test_from_dict_and_resolve_leave_the_base_untouched_and_build_on_it():
    """A base config is copied, not changed in place; resolve starts from `base` when given."""
    base = from_dict({"optim": {"epochs": 7}})
    from_dict({"optim": {"lr": 0.5}, "run": {"seed": 3}}, base)
    assert base.optim.lr == paper.BASE_LR and base.run.seed == 0
    c = resolve("paper", ["optim.lr=0.02"], base=base)
    assert (c.optim.epochs, c.optim.lr, c.run.out) == (7, 0.02, "runs/paper")
    assert base.optim.lr == paper.BASE_LR and base.run.out == "runs/train"


def test_a_section_that_is_not_a_table_is_one_line(tmp_path):
    """`optim = 3` at the top of a TOML file is refused by name, not an AttributeError."""
    bad = tmp_path / "flat.toml"
    bad.write_text("optim = 3\n")
    with pytest.raises(UserError, match=r"\[optim\] must be a table"):
        resolve(str(bad))


def test_a_binary_toml_file_is_not_valid_toml(tmp_path):
    """A file that is no UTF-8 text is refused in one line, not a UnicodeDecodeError."""
    bad = tmp_path / "binary.toml"
    bad.write_bytes(b"\xff\xfe\x00[optim]\x80\x81")
    with pytest.raises(UserError, match="not valid TOML"):
        load_preset(str(bad))


@pytest.mark.parametrize("word, value", [("1", True), ("on", True), ("yes", True),
                                         ("TRUE", True), ("0", False), ("off", False),
                                         ("no", False), ("False", False)])
def test_every_spelling_of_a_bool_converts(word, value):
    """Each documented spelling of true and false (any case) sets a bool key."""
    assert resolve(None, [f"run.compile={word}"]).run.compile is value


@pytest.mark.parametrize("section, key, value, kind", [
    ("optim", "batch_size", True, "int"),  # bool is an int subclass: still refused
    ("optim", "epochs", 2.7, "int"),  # not truncated to 2
    ("optim", "epochs", "2.5", "int"),
    ("optim", "lr", True, "float"),
    ("run", "out", True, "str"),
    ("run", "out", ["a"], "str"),
    ("data", "mean", {"a": 1}, "str"),
])
def test_a_toml_value_of_the_wrong_type_is_refused(section, key, value, kind):
    """Values from a TOML file keep their type: a bool, float or table where another type is
    due is refused by name, not silently converted."""
    with pytest.raises(UserError) as err:
        from_dict({section: {key: value}})
    assert f"{section}.{key} must be {kind}" in str(err.value)


def test_toml_values_of_the_right_type_are_kept():
    """Ints are accepted for floats (lr = 1 is 1.0), and ints and strings are kept."""
    c = from_dict({"optim": {"lr": 1, "epochs": 12}, "run": {"out": "r"}})
    assert c.optim.lr == 1.0 and isinstance(c.optim.lr, float)
    assert c.optim.epochs == 12 and c.run.out == "r"


@pytest.mark.parametrize("item", ["optim.lr", "optim.=0.1", "optim.lr0.1"])
def test_a_malformed_set_item_names_the_form(item):
    """An item without `=` or without a key is explained, not read as an empty value or key."""
    with pytest.raises(UserError, match="write SECTION.KEY=VALUE"):
        parse_overrides([item])


def test_plain_flags_that_are_none_are_not_given():
    """A flag left out (None) sets nothing and is not a key the user gave anew."""
    assert flag_values({"run.out": None, "optim.lr": 0.5}) == {"optim": {"lr": "0.5"}}
    c = resolve("demo", [], {"run.out": None, "run.seed": 4})
    assert c.run.out == "runs/demo" and c.run.seed == 4
    keys = given_keys(["optim.lr=0.1", "model.lrn=false"], {"run.out": "x", "run.seed": None})
    assert keys == frozenset({"optim.lr", "model.lrn", "run.out"})
    assert given_keys(None, None) == frozenset()


# --- validation: each boundary on the right side ----------------------------------------------

@pytest.mark.parametrize("items, fragment", [
    (["model.width=0"], "model.width 0.0: must be > 0"),
    (["model.dropout=1"], "model.dropout 1.0"),
    (["optim.threshold=nan"], "optim.threshold nan: must be a finite number"),
    (["run.time_limit=inf"], "run.time_limit inf: must be a finite number"),
    (["model.width=inf"], "must be a finite number"),
    (["optim.lr=0"], "optim.lr 0.0: must be > 0"),
    (["optim.lr=1e39"], "a float32 step size"),
    (["optim.lr=1e36", "optim.weight_decay=1e3"], "a float32 step size"),
    (["optim.momentum=1"], "optim.momentum 1.0"),
    (["optim.base_batch=0"], "optim.base_batch 0"),
    (["optim.epochs=0"], "optim.epochs 0"),
    (["optim.lr_factor=1"], "optim.lr_factor 1.0: must be > 1"),
    (["optim.patience=-1"], "optim.patience -1"),
    (["optim.max_drops=-1"], "optim.max_drops -1"),
    (["run.chance_steps=-1"], "run.chance_steps -1"),
    (["run.max_steps=-1"], "run.max_steps -1"),
    (["run.gpu_decode=1.5"], "run.gpu_decode 1.5"),
    (["run.gpu_decode=-0.5"], "run.gpu_decode -0.5"),
    (["run.prefetch=-2"], "run.prefetch -2"),
    (["run.cuda_graph=true", "run.compile=true"], "set it or run.compile, not both"),
    (["run.cuda_graph=true", "run.amp=fp16"], "use run.amp=bf16"),
    (["run.val_every=0"], "run.val_every 0"),
    (["run.eval_batch_size=0"], "run.eval_batch_size 0"),
    (["model.columns=3"], "model.columns 3"),
    (["model.columns=4"], "model.columns 4"),
    (["model.columns=0"], "model.columns 0"),
    (["run.device=tpu"], "run.device 'tpu'"),
])
def test_values_just_outside_their_range_are_refused(items, fragment):
    """Each bound of `validate`, just past it: a one-line error naming the key."""
    refused(items, fragment)


@pytest.mark.parametrize("items", [
    ["data.pca_scale=0"],  # no lighting noise
    ["optim.weight_decay=0"],
    ["optim.patience=0"],
    ["optim.max_drops=0"],
    ["optim.momentum=0"],
    ["model.dropout=0"],
    [f"optim.lr={FLOAT32_MAX!r}"],  # the largest float32 is still a float32 step size
    ["optim.lr_factor=1.5"],
    ["run.gpu_decode=1"],
    ["run.gpu_decode=0"],
    ["run.gpu_decode=-1"],
    ["run.prefetch=-1"],
    ["run.prefetch=0"],
    ["run.device=cuda:1"],  # validated as a name; pick_device checks the machine
    ["run.cuda_graph=true", "run.channels_last=true", "run.amp=bf16"],
    ["data.mean=torchvision", "model.arch=alexnet-tv"],
    ["data.mean=none"],
    ["model.columns=1"],
    ["run.val_every=1", "run.eval_batch_size=1", "optim.epochs=1", "optim.base_batch=1"],
])
def test_values_on_the_edge_of_their_range_are_accepted(items):
    """The closed ends of each range (and the documented choices) are runnable values."""
    resolve(None, items)


@pytest.mark.parametrize("overlap, z, s", [(True, 3, 2), (False, 2, 2)])
def test_the_smallest_crop_is_accepted_and_one_less_refused(overlap, z, s):
    """data.crop's bound is the smallest side whose conv1 (11x11, stride 4, padded to cover it)
    and three z-by-s poolings leave one pixel: computed here by hand."""
    def side(crop: int) -> int:
        n = math.ceil((crop - 11) / 4) + 1  # conv1 padded right/bottom to cover the input
        for _ in range(3):
            n = (n - z) // s + 1 if n >= z else 0
        return n

    smallest = next(c for c in range(11, 300) if side(c) >= 1)
    pool = f"model.overlap_pool={str(overlap).lower()}"
    assert resolve(None, [pool, f"data.crop={smallest}"]).data.crop == smallest
    refused([pool, f"data.crop={smallest - 1}"], f"data.crop {smallest - 1}")


def test_validate_returns_the_config_it_checked():
    """validate is also a pass-through (callers chain it)."""
    c = Config()
    assert validate(c) is c


# --- scaled_lr and model_kwargs ----------------------------------------------------------------

def test_linear_scaling_is_a_true_ratio():
    """lr * batch / base_batch for batches that are not a multiple of the base (Goyal et al.)."""
    c = resolve(None, ["optim.batch_size=200", "optim.lr_scaling=linear"])
    assert scaled_lr(c) == pytest.approx(0.01 * 200 / 128)
    c = resolve(None, ["optim.batch_size=96", "optim.lr_scaling=linear", "optim.base_batch=64"])
    assert scaled_lr(c) == pytest.approx(0.015)
    assert scaled_lr(resolve(None, ["optim.batch_size=200"])) == 0.01


def test_model_kwargs_are_the_constructors_keywords():
    """The kwargs match each architecture's constructor (inspect.signature): the paper net is
    sized for data.crop, the torchvision layout gets its dropout and init bias, and placement
    (split_columns) is not a network keyword."""
    from alexnet.model import ARCHS

    c = resolve(None, ["data.crop=96", "model.init_bias=0.25", "model.dropout=0.3"])
    kw = model_kwargs(c)
    assert kw["crop"] == 96 and kw["init_bias"] == 0.25 and kw["dropout"] == 0.3
    params = set(inspect.signature(ARCHS["alexnet"]).parameters) - {"num_classes"}
    assert set(kw) <= params and "split_columns" not in kw
    tv = resolve(None, ["model.arch=alexnet-tv", "model.init_bias=0.25", "model.dropout=0.3"])
    tv_params = set(inspect.signature(ARCHS["alexnet-tv"]).parameters) - {"num_classes"}
    assert model_kwargs(tv) == {"dropout": 0.3, "init_bias": 0.25}
    assert set(model_kwargs(tv)) == tv_params


# --- distributed.py: rank and device from the environment, no process group -----------------

@pytest.fixture
def no_launch(monkeypatch):
    """No torchrun variables in the environment."""
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture
def gpus(no_launch):
    """A stand-in machine with `n` GPUs: set gpus(n)."""
    def have(n: int) -> None:
        no_launch.setattr(torch.cuda, "is_available", lambda: n > 0)
        no_launch.setattr(torch.cuda, "device_count", lambda: n)
    return have


def test_torchrun_needs_both_rank_and_world_size(no_launch):
    """One variable alone (a stray RANK) is not a torchrun launch."""
    no_launch.setenv("RANK", "1")
    assert not distributed.launched_by_torchrun()
    assert distributed.launch_rank() == 0 and distributed.launch_world_size() == 1
    no_launch.delenv("RANK")
    no_launch.setenv("WORLD_SIZE", "2")
    assert not distributed.launched_by_torchrun() and distributed.launch_world_size() == 1


def test_a_rank_of_a_one_process_group_is_read_without_joining(no_launch, capsys):
    """RANK=0, WORLD_SIZE=1, LOCAL_RANK=3: rank and local rank kept apart, no process group
    joined (one rank), the main rank; RANK=3 of one rank is refused naming RANK."""
    no_launch.setenv("RANK", "0")
    no_launch.setenv("WORLD_SIZE", "1")
    no_launch.setenv("LOCAL_RANK", "3")
    try:
        info = distributed.init_distributed("cpu")
        assert not dist.is_initialized()
    finally:
        distributed.cleanup()
    assert (info.rank, info.world_size, info.local_rank) == (0, 1, 3)
    assert info.device == torch.device("cpu") and not info.distributed and info.is_main
    assert distributed.launch_rank() == 0 and distributed.launch_world_size() == 1
    distributed.print0("on rank 0")
    assert capsys.readouterr().out == "on rank 0\n"
    no_launch.setenv("RANK", "3")
    with pytest.raises(UserError, match="RANK=3 with WORLD_SIZE=1"):
        distributed.launch_rank()


def test_auto_takes_the_gpu_when_there_is_one(gpus):
    """device auto is cuda (index 0 in one process) on a machine with a GPU, cpu without."""
    gpus(1)
    assert distributed.pick_device("auto") == (torch.device("cuda", 0), None)
    gpus(0)
    assert distributed.pick_device("auto") == (torch.device("cpu"), None)


def test_plain_cuda_is_the_local_ranks_gpu(gpus):
    """`cuda` on local rank r is cuda:r."""
    gpus(4)
    assert distributed.pick_device("cuda", 3) == (torch.device("cuda", 3), None)


def test_split_columns_take_gpus_2r_and_2r_plus_1(gpus):
    """Local rank r's columns are cuda:2r and cuda:2r+1: rank 1 needs four GPUs."""
    gpus(4)
    dev, cols = distributed.pick_device("cuda", 1, split_columns=True)
    assert dev == torch.device("cuda", 2) and cols == (torch.device("cuda", 2),
                                                       torch.device("cuda", 3))
    gpus(3)
    with pytest.raises(UserError, match=r"two CUDA devices per process \(3 found\)"):
        distributed.pick_device("cuda", 1, split_columns=True)


def test_a_gpu_index_under_torchrun_is_refused(gpus, monkeypatch):
    """Under torchrun each rank takes cuda:LOCAL_RANK: an explicit cuda:N is refused."""
    gpus(2)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UserError, match="under torchrun give plain 'cuda'"):
        distributed.pick_device("cuda:0")
    assert distributed.pick_device("cuda", 1)[0] == torch.device("cuda", 1)


# --- distributed.py: collectives against a fake two-rank group --------------------------------

class FakeGroup:
    """Rank `rank` of two; the other rank holds `peer` (its tensor in sorted-key order, the
    order every rank builds) and rank 0 broadcasts `rank0_obj`."""

    def __init__(self, monkeypatch, rank: int, peer=(), rank0_obj=None):
        self.rank, self.peer, self.rank0_obj = rank, list(peer), rank0_obj
        self.sources: list[int] = []
        for name, fn in (("is_available", lambda: True), ("is_initialized", lambda: True),
                         ("get_world_size", lambda: 2), ("get_rank", lambda: self.rank),
                         ("all_reduce", self.all_reduce),
                         ("broadcast_object_list", self.broadcast_object_list)):
            monkeypatch.setattr(dist, name, fn)

    def all_reduce(self, t: torch.Tensor, op=dist.ReduceOp.SUM) -> None:
        other = torch.tensor(self.peer, dtype=torch.float64)
        mine = t.to(torch.float64)
        combined = {dist.ReduceOp.SUM: mine + other, dist.ReduceOp.MAX: torch.maximum(mine, other),
                    dist.ReduceOp.MIN: torch.minimum(mine, other)}[op]
        t.copy_(combined.to(t.dtype))

    def broadcast_object_list(self, box: list, src: int = 0) -> None:
        self.sources.append(src)
        if self.rank != src:
            box[0] = self.rank0_obj


def test_the_mean_over_ranks_divides_by_the_world_and_keeps_the_keys(monkeypatch):
    """Keys given in any order: each metric is (mine + the other rank's) / 2."""
    FakeGroup(monkeypatch, 0, peer=[6.0, 3.0])  # the other rank's a=6, b=3
    assert distributed.all_reduce_mean({"b": 1.0, "a": 2.0}) == {"a": 4.0, "b": 2.0}


def test_the_sum_over_ranks_is_exact_for_large_counts(monkeypatch):
    """Counts past float32's 2**24 add up exactly (int64)."""
    big = 2**24 + 1
    FakeGroup(monkeypatch, 1, peer=[big, 5])  # images, wrong
    got = distributed.all_reduce_sum({"wrong": 3, "images": big})
    assert got == {"images": 2 * big, "wrong": 8}
    assert all(isinstance(v, int) for v in got.values())


@pytest.mark.parametrize("mine, other, want", [(False, 1.0, True), (True, 0.0, True),
                                               (False, 0.0, False), (True, 1.0, True)])
def test_any_rank_is_true_when_one_rank_is(monkeypatch, mine, other, want):
    """A stop on one rank stops every rank: a logical OR over the ranks."""
    FakeGroup(monkeypatch, 1, peer=[other])
    assert distributed.any_rank(mine) is want


def test_on_main_runs_the_action_on_rank_0_alone(monkeypatch):
    """Rank 1 does not run the action and gets None; it raises rank 0's refusal as its own."""
    calls = []
    FakeGroup(monkeypatch, 1, rank0_obj=None)
    assert distributed.on_main(lambda: calls.append(1) or "written") is None and calls == []
    FakeGroup(monkeypatch, 1, rank0_obj="run folder is held")
    with pytest.raises(UserError, match="^run folder is held$"):
        distributed.on_main(lambda: calls.append(1))
    assert calls == []


def test_on_main_raises_rank_0s_refusal_after_sharing_it(monkeypatch):
    """Rank 0 returns what the action returns; its UserError is broadcast, then raised."""
    group = FakeGroup(monkeypatch, 0)
    assert distributed.on_main(lambda: "written") == "written"

    def refuse():
        raise UserError("no space left")

    with pytest.raises(UserError, match="^no space left$"):
        distributed.on_main(refuse)
    assert group.sources == [0, 0]


def test_print0_asks_the_group_once_joined(monkeypatch, capsys):
    """In a joined group the group's rank decides, not a RANK variable (absent here)."""
    monkeypatch.delenv("RANK", raising=False)
    FakeGroup(monkeypatch, 1)
    distributed.print0("rank 1")
    assert capsys.readouterr().out == "" and not distributed.is_main()
    FakeGroup(monkeypatch, 0)
    distributed.print0("rank 0")
    assert capsys.readouterr().out == "rank 0\n"


def test_broadcast_object_is_rank_0s_by_default(monkeypatch):
    """broadcast_object's source is rank 0 unless given."""
    group = FakeGroup(monkeypatch, 1, rank0_obj={"epoch": 4})
    assert distributed.broadcast_object({"epoch": 9}) == {"epoch": 4}
    assert group.sources == [0]


@pytest.mark.parametrize("err, failed", [
    (RuntimeError("[../third_party/gloo/transport/tcp/pair.cc:553] Connection closed by peer"),
     True),
    (RuntimeError("Gloo connectFullMesh failed with timeout"), True),
    (dist.DistError("NCCL communicator was aborted"), True),
    (RuntimeError("CUDA out of memory"), False),
    (ValueError("gloo"), False),
    (UserError("optim.lr 0: must be > 0"), False),
])
def test_group_failed_tells_the_groups_errors_from_a_ranks_own(err, failed):
    """gloo's RuntimeErrors (any case) and torch's DistError are the group's; others are not."""
    assert distributed.group_failed(err) is failed


def test_failure_text_is_the_first_sentence_without_the_source_location():
    """The C++ location dropped, whitespace collapsed, the first sentence without its full stop,
    and at most `limit` characters with an ellipsis."""
    err = RuntimeError("[/src/gloo/pair.cc:553] Connection closed\n  by peer [10.0.0.1]:29500."
                       " Some more.")
    assert distributed.failure_text(err) == "Connection closed by peer [10.0.0.1]:29500"
    assert distributed.failure_text(RuntimeError("Timed out.")) == "Timed out"
    assert distributed.failure_text(RuntimeError("[a.cc:1] [::1]:29500 closed")) == \
        "[::1]:29500 closed"
    long = distributed.failure_text(RuntimeError("x" * 300), limit=40)
    assert len(long) == 40 and long == "x" * 37 + "..."
    assert distributed.failure_text(RuntimeError("y" * 40), limit=40) == "y" * 40


# --- per-rank seeding (training/runtime.py) and the global batch's split ---------------------

def test_rank_0_keeps_the_one_process_stream_and_other_ranks_get_their_own():
    """seed_rank leaves rank 0's generator as seed_everything left it (its dropout equals one
    process's); rank 1 draws differently."""
    from alexnet.training.runtime import seed_everything, seed_rank

    before = torch.get_rng_state()
    try:
        torch.manual_seed(11)
        want = torch.rand(4)
        seed_everything(11)
        seed_rank(11, 0)
        assert torch.equal(torch.rand(4), want)
        seed_everything(11)
        seed_rank(11, 1)
        assert not torch.equal(torch.rand(4), want)
    finally:
        torch.set_rng_state(before)


def test_a_global_batch_as_large_as_the_split_is_allowed():
    """A batch equal to the training split's size is one step per epoch, not an error."""
    from alexnet.training.data import per_rank_batch

    assert per_rank_batch(resolve(None, ["optim.batch_size=24"]), 24, 2) == 12
    assert per_rank_batch(resolve(None, ["optim.batch_size=24"]), 24, 1) == 24
    with pytest.raises(UserError, match="larger than the training split"):
        per_rank_batch(resolve(None, ["optim.batch_size=25"]), 24, 1)
    assert math.isclose(scaled_lr(resolve(None)), paper.BASE_LR)
