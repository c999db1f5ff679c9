"""Mutation audit of the run state (training/state.py, saving.py, init_from.py), the chance
check and hubconf: what a checkpoint carries into a resumed run, checked in-process on a tiny
net, and edges the existing tests only crossed in slow real runs or not at all."""

from __future__ import annotations

import math
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from alexnet import checkpoint
from alexnet.config import resolve
from alexnet.distributed import DistInfo
from alexnet.errors import UserError
from alexnet.learning_check import Evidence, at_chance, chance_advice, chance_error
from alexnet.model import build_model
from alexnet.training import init_from, saving, state
from alexnet.training.run_folder import RunFiles

TINY = ["model.width=0.125", "data.crop=67", "run.device=cpu", "run.progress=false"]
CLASSES = [{"wnid": f"n0{i}", "name": f"class {i}"} for i in range(3)]


def runtime(scaler: torch.amp.GradScaler | None = None) -> types.SimpleNamespace:
    """A CPU Runtime (what `restore` and `make_checkpoint` read of it), fp32 unless a loss
    scaler is given."""
    return types.SimpleNamespace(dist=DistInfo(), device=torch.device("cpu"),
                                 channels_last=False, compile=False,
                                 scaler=scaler or torch.amp.GradScaler("cpu", enabled=False))


def config(*items: str):
    return resolve("paper", TINY + list(items))


def fresh_state(cfg, seed: int) -> state.RunState:
    torch.manual_seed(seed)
    return state.build_state(cfg, len(CLASSES), runtime())


def trained_state(cfg) -> state.RunState:
    """Two SGD steps on random images (momentum buffers that are not zero), a schedule with
    counters away from their start, and counters and a log of a run in its second epoch."""
    s = fresh_state(cfg, 1)
    x, y = torch.randn(2, 3, 67, 67), torch.tensor([0, 2])
    for _ in range(2):
        s.optimizer.zero_grad()
        torch.nn.functional.cross_entropy(s.model(x), y).backward()
        s.optimizer.step()
    s.schedule.step(0.5)
    s.schedule.step(0.6)  # one bad epoch
    s.epoch, s.step, s.global_step = 1, 3, 9
    s.acc = {"loss_sum": 4.5, "wrong": 2.0, "seen": 6.0, "seconds": 1.25}
    s.best_error = 0.5
    s.history = [{"epoch": 1, "val_top1_error": 0.5}]
    return s


def save(s: state.RunState, cfg, rng: dict, rt: types.SimpleNamespace | None = None) -> dict:
    store = types.SimpleNamespace(classes=CLASSES)
    return state.make_checkpoint(s, cfg, store, rt or runtime(), [(dict(s.acc), rng)])


def test_a_resumed_state_is_the_saved_one_momentum_schedule_counters_and_generators():
    """restore(make_checkpoint(s)) gives back every part of s: weights, each parameter's
    momentum buffer, the plateau schedule's counters, epoch/step/global step, the epoch's
    partial sums, the best error, the log and the generators. Only the slow kill-and-resume
    runs of test_train.py saw some of these (momentum, RNG), others nothing in-process."""
    cfg = config()
    s = trained_state(cfg)
    rng = checkpoint.rng_state()
    expected_draw = torch.rand(4)  # what the saved torch generator gives next
    expected_np = np.random.random(2)
    ckpt = save(s, cfg, rng)
    r = fresh_state(cfg, 7)  # other weights, no momentum, counters at 0
    state.restore(r, ckpt, Path("ckpt.pt"), runtime(), cfg)
    for key, value in s.net.state_dict().items():
        assert torch.equal(r.net.state_dict()[key], value), key
    for (p, q) in zip(s.net.parameters(), r.net.parameters(), strict=True):
        momentum = s.optimizer.state[p]["velocity"]
        assert torch.count_nonzero(momentum) > 0
        assert torch.equal(r.optimizer.state[q]["velocity"], momentum)
    assert (r.schedule.best, r.schedule.bad_epochs, r.schedule.drops) == (0.5, 1, 0)
    assert (r.epoch, r.step, r.global_step) == (1, 3, 9)
    assert r.acc == {"loss_sum": 4.5, "wrong": 2.0, "seen": 6.0, "seconds": 1.25}
    assert r.best_error == 0.5 and r.history == [{"epoch": 1, "val_top1_error": 0.5}]
    assert r.last_good == Path("ckpt.pt")
    assert torch.equal(torch.rand(4), expected_draw)
    np.testing.assert_array_equal(np.random.random(2), expected_np)
    assert ckpt["classes"] == CLASSES


def test_the_built_schedule_drops_after_the_configured_patience():
    """build_state hands optim.patience and optim.lr_factor to the schedule: with patience 2
    and factor 10 the lr 0.01 stays after one bad epoch and is 0.001 after the second."""
    s = fresh_state(config("optim.patience=2", "optim.lr_factor=10", "optim.lr=0.01"), 0)
    s.schedule.step(0.5)
    s.schedule.step(0.6)
    assert [g["lr"] for g in s.optimizer.param_groups] == [0.01, 0.01]
    s.schedule.step(0.6)
    assert [g["lr"] for g in s.optimizer.param_groups] == pytest.approx([0.001, 0.001])


def test_a_momentum_or_weight_decay_changed_on_resume_replaces_the_resumed_one():
    """A config whose momentum or weight decay differs from the checkpoint's sets it in every
    group, except that the biases' group keeps its weight decay of 0 (no bias decay); the
    existing tests changed only the lr on resume."""
    old = config()
    ckpt = save(trained_state(old), old, checkpoint.rng_state())
    new = config("optim.momentum=0.5", "optim.weight_decay=0.01")
    r = fresh_state(new, 3)
    state.restore(r, ckpt, Path("ckpt.pt"), runtime(), new)
    groups = r.optimizer.param_groups
    assert [g["momentum"] for g in groups] == [0.5, 0.5]
    assert [g["weight_decay"] for g in groups] == [0.01, 0.0]  # weights, then biases


def test_a_base_batch_given_on_resume_sets_the_lr_anew():
    """optim.base_batch is one of the keys of the starting lr (lr x batch / base_batch):
    given on resume it sets the lr to that formula's value, here 0.01 x 128 / 256."""
    old = config("optim.lr_scaling=linear", "optim.base_batch=256", "optim.batch_size=128")
    s = trained_state(old)
    for group in s.optimizer.param_groups:
        group["lr"] = 1e-5  # after some drops
    ckpt = save(s, old, checkpoint.rng_state())
    r = fresh_state(old, 3)
    state.restore(r, ckpt, Path("ckpt.pt"), runtime(), old, given={"optim.base_batch"})
    assert [g["lr"] for g in r.optimizer.param_groups] == [0.005, 0.005]
    r = fresh_state(old, 3)
    state.restore(r, ckpt, Path("ckpt.pt"), runtime(), old)  # nothing given: the resumed lr
    assert [g["lr"] for g in r.optimizer.param_groups] == [1e-5, 1e-5]


def test_a_checkpoint_of_another_class_count_or_same_shaped_net_is_refused():
    """Another class count is named as such; a net of other switches whose weights have the
    same shapes (no LRN) would load silently, so it is refused by its arguments."""
    cfg = config()
    ckpt = save(trained_state(cfg), cfg, checkpoint.rng_state())
    torch.manual_seed(0)
    four = state.build_state(cfg, 4, runtime())
    with pytest.raises(UserError, match="the checkpoint has 3 classes, .* has 4"):
        state.restore(four, ckpt, Path("ckpt.pt"), runtime(), cfg)
    no_lrn = config("model.lrn=false")
    with pytest.raises(UserError, match="another architecture"):
        state.restore(fresh_state(no_lrn, 0), ckpt, Path("ckpt.pt"), runtime(), no_lrn)


def test_a_checkpoint_lacking_a_layer_is_refused_not_half_loaded():
    """The weights load strictly: a checkpoint of the same net that lacks a tensor (damaged,
    or edited) is a UserError, never a resume with that layer freshly initialised."""
    cfg = config()
    ckpt = save(trained_state(cfg), cfg, checkpoint.rng_state())
    del ckpt["model"]["conv3.bias"]
    with pytest.raises(UserError, match="does not fit this network"):
        state.restore(fresh_state(cfg, 0), ckpt, Path("ckpt.pt"), runtime(), cfg)


@pytest.mark.parametrize("ranks, world, rank, expected", [
    # as many ranks as saved: each its own sums
    ([{"loss_sum": 1.0, "seen": 2.0}, {"loss_sum": 3.0, "seen": 4.0}], 2, 1,
     {"loss_sum": 3.0, "seen": 4.0}),
    # two saved ranks resumed on one: the totals
    ([{"loss_sum": 1.0, "seen": 2.0, "seconds": 5.0}, {"loss_sum": 3.0, "seen": 4.0,
                                                       "seconds": 9.0}], 1, 0,
     {"loss_sum": 4.0, "seen": 6.0, "seconds": 5.0}),
    # two saved ranks resumed on four: a quarter of the totals each, rank 0's clock
    ([{"wrong": 2.0, "seconds": 5.0}, {"wrong": 6.0, "seconds": 9.0}], 4, 3,
     {"wrong": 2.0, "seconds": 5.0}),
])
def test_the_epochs_sums_are_shared_among_the_ranks_of_the_resumed_launch(ranks, world, rank,
                                                                          expected):
    """rank_sums by hand: totals over the saved ranks / the new world size; the clock is
    rank 0's (not summed, not dropped)."""
    ckpt = {"rank_acc": ranks, "acc": ranks[0], "world_size": len(ranks)}
    assert state.rank_sums(ckpt, rank, world) == pytest.approx(expected)


def test_an_old_checkpoint_without_a_world_size_gives_rank_0s_sums_to_every_rank():
    ckpt = {"acc": {"loss_sum": 1.0, "seen": 2.0}}
    assert state.rank_sums(ckpt, 1, 2) == {"loss_sum": 1.0, "seen": 2.0}


def test_the_loss_scale_of_an_fp16_run_is_saved_and_resumed():
    """fp16's GradScaler state (its scale after backoffs, here 1024 set by hand against the
    default 65536) goes into the checkpoint and back into the resumed run's scaler."""
    cfg = config()
    saved = runtime(torch.amp.GradScaler("cpu", init_scale=1024.0))
    ckpt = save(trained_state(cfg), cfg, checkpoint.rng_state(), saved)
    assert ckpt["scaler"]["scale"] == 1024.0
    resumed = runtime(torch.amp.GradScaler("cpu"))
    state.restore(fresh_state(cfg, 3), ckpt, Path("ckpt.pt"), resumed, cfg)
    assert resumed.scaler.get_scale() == 1024.0


def test_best_pt_is_written_only_when_validation_improved(tmp_path):
    """save_checkpoints writes checkpoint.pt always and best.pt only when told the epoch was
    the best: a mid-epoch save or a worse epoch must not replace the best weights."""
    cfg = config()
    s = trained_state(cfg)
    files = RunFiles(tmp_path)
    store = types.SimpleNamespace(classes=CLASSES)
    assert saving.save_checkpoints(s, cfg, store, files, runtime()) == files.checkpoint
    assert files.checkpoint.exists() and not files.best.exists()
    assert s.last_good == files.checkpoint
    saving.save_checkpoints(s, cfg, store, files, runtime(), best=True)
    assert checkpoint.load(files.best)["step"] == 3


def test_a_damaged_checkpoint_is_refused_when_it_is_first_read(tmp_path):
    """read_resumable checks the file before its config is used (an epoch that is a str
    here): one UserError naming the key, not a failure further on."""
    cfg = config()
    ckpt = save(trained_state(cfg), cfg, checkpoint.rng_state())
    ckpt["epoch"] = "one"
    path = checkpoint.save(tmp_path / "bad.pt", ckpt)
    with pytest.raises(UserError, match="its 'epoch' is a str"):
        saving.read_resumable(path)


def test_the_loss_bound_and_a_non_finite_loss():
    """1000 x ln(classes), ln 2 for fewer than two classes (never a bound of 0); NaN and inf
    are diverged whatever the bound, a loss at the bound is not."""
    assert saving.loss_bound(1000) == pytest.approx(1000 * 6.907755279)
    assert saving.loss_bound(1) == pytest.approx(1000 * 0.693147181)
    s = types.SimpleNamespace(loss_bound=10.0, last_good=None, epoch=2, step=5)
    saving.check_loss([10.0, 0.0], s)
    for bad in (math.nan, math.inf, 10.5):
        with pytest.raises(UserError, match="at epoch 3, step 5: the run diverged"):
            saving.check_loss([1.0, bad], s)


# ------------------------------------------------------------------------- the chance check


def test_the_chance_check_speaks_at_exactly_after_steps_and_at_the_tolerance_edge():
    """'after `after_steps` steps' includes that step; 'within tolerance' includes its edge
    (3 classes, tolerance 1/4: 0.75 x 2/3 = 0.5 exactly in binary)."""
    stuck = Evidence(step=100, num_classes=3, val_error=2 / 3)
    assert chance_advice(stuck, init_bias=1.0, lr=0.01, after_steps=100) is not None
    assert at_chance(0.5, 3, tolerance=0.25) and not at_chance(0.49, 3, tolerance=0.25)
    assert chance_error(1) == 0.0 and chance_error(2) == 0.5  # one class: guessing is right


# --------------------------------------------------------------------------- --init-from


def test_fc8_rows_follow_the_wnid_not_the_display_name(tmp_path):
    """Classes are matched by wnid: a store whose display names changed (or two folders
    named alike) keeps each wnid's row."""
    torch.manual_seed(1)
    source = build_model("alexnet", num_classes=2, width=0.125)
    theirs = [{"wnid": "n1", "name": "cat"}, {"wnid": "n2", "name": "dog"}]
    path = checkpoint.save(tmp_path / "s.pt", checkpoint.make_state(source, classes=theirs))
    torch.manual_seed(2)
    net = build_model("alexnet", num_classes=2, width=0.125)
    init_from.load_initial_weights(net, str(path), [{"wnid": "n2", "name": "cat"},
                                          {"wnid": "n1", "name": "dog"}])
    assert torch.equal(net.fc8.weight[0], source.fc8.weight[1])
    assert torch.equal(net.fc8.weight[1], source.fc8.weight[0])


def tv_source(monkeypatch, num_classes: int) -> None:
    """--init-from's source: an alexnet-tv state_dict of `num_classes` (on the meta device:
    shapes without the 61M values)."""
    with torch.device("meta"):
        weights = build_model("alexnet-tv", num_classes=num_classes).state_dict()
    monkeypatch.setattr(init_from, "source_weights",
                        lambda source: (weights, "alexnet-tv", [], None))


def test_the_torchvision_layouts_output_layer_is_fresh_for_another_class_count(monkeypatch):
    """In the alexnet-tv layout the class-count layer is classifier.6: a source of 10
    classes loads into a 3-class net but for that layer (classifier.1 and .4 load)."""
    tv_source(monkeypatch, 10)
    with torch.device("meta"):
        net = build_model("alexnet-tv", num_classes=3)
    result = init_from.load_initial_weights(net, "tv")
    assert result["fresh"] == ["classifier.6.weight", "classifier.6.bias"]
    assert {"classifier.1.weight", "classifier.4.weight"} <= set(result["loaded"])


def test_weights_of_the_other_layout_say_which_arch_to_set(monkeypatch):
    """torchvision's layout into the paper's net: refused naming model.arch (not a missing
    layer, which would send the user to the width and columns)."""
    tv_source(monkeypatch, 3)
    with torch.device("meta"):
        net = build_model("alexnet", num_classes=3, width=0.125)
    with pytest.raises(UserError, match="set --set model.arch=alexnet-tv"):
        init_from.load_initial_weights(net, "tv")


def test_a_weights_file_without_an_arch_is_the_papers_net(tmp_path):
    """A file that does not name its architecture (older, or written by hand) is read as the
    paper's net, the project's default (not torchvision's layout)."""
    torch.manual_seed(1)
    source = build_model("alexnet", num_classes=3, width=0.125)
    state_ = checkpoint.make_state(source, classes=[])
    del state_["arch"]
    path = checkpoint.save(tmp_path / "old.pt", state_)
    net = build_model("alexnet", num_classes=3, width=0.125)
    init_from.load_initial_weights(net, str(path))
    assert torch.equal(net.conv1.weight, source.conv1.weight)


def test_without_our_class_names_fc8_is_copied_by_position(tmp_path):
    """Named source classes but none given for this net: fc8 is copied whole (by position),
    as the module says of sources without names."""
    torch.manual_seed(1)
    source = build_model("alexnet", num_classes=2, width=0.125)
    theirs = [{"wnid": "n1", "name": "cat"}, {"wnid": "n2", "name": "dog"}]
    path = checkpoint.save(tmp_path / "s.pt", checkpoint.make_state(source, classes=theirs))
    net = build_model("alexnet", num_classes=2, width=0.125)
    result = init_from.load_initial_weights(net, str(path))
    assert result["fresh"] == [] and result["rows"] is None
    assert torch.equal(net.fc8.weight, source.fc8.weight)


def test_hub_weights_take_another_init_bias_which_the_weights_replace(tmp_path):
    """init_bias only initialises; with a weights file it is free (like column_conv), and
    the net is the file's (its biases, not the given init_bias)."""
    torch.manual_seed(0)
    net = build_model("alexnet", num_classes=3, width=0.125)
    path = checkpoint.save(tmp_path / "w.pt", checkpoint.make_state(
        net, classes=CLASSES, weights_only=True))
    repo = Path(__file__).resolve().parents[1]
    model = torch.hub.load(str(repo), "alexnet", source="local", trust_repo=True,
                           weights=str(path), init_bias=0.1)
    assert torch.equal(model.conv2.bias, net.conv2.bias)
