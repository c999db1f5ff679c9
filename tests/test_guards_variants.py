"""Variants of the net that would run unnoticed: paper-net switches on torchvision's layout
(which has none of them), and --init-from weights of a net that computes another function
(an activation, LRN or pooling changed leaves every shape as it was)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from alexnet import checkpoint
from alexnet.cli import main
from alexnet.config import TV_MODEL_KWARGS, preset_names, resolve
from alexnet.data.store import write_store
from alexnet.errors import UserError
from alexnet.model import build_model
from alexnet.training.init_from import describe, load_initial_weights

TINY = {"num_classes": 3, "width": 0.125}
# a train command line's tail: one step of 8 crops of 64 pixels on the CPU (base code trained)
SHORT = ["--set", "data.crop=64", "--device", "cpu", "--batch-size", "8", "--epochs", "1",
         "--steps-per-epoch", "1", "--no-progress"]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """A tiny three-class store (train and val) of 68-pixel images, written in-process."""
    root = tmp_path_factory.mktemp("variants") / "store"
    rng = np.random.default_rng(0)
    for split, n in (("train", 24), ("val", 6)):
        images = rng.integers(0, 256, (n, 68, 68, 3), dtype=np.uint8)
        write_store(root / split, images, np.arange(n) % 3, ["a", "b", "c"])
    return root


def saved(path: Path, **kwargs) -> Path:
    """A checkpoint of a tiny paper net built with `kwargs` (over TINY), written to `path`."""
    torch.manual_seed(1)
    return checkpoint.save(path, checkpoint.make_state(build_model("alexnet", **{**TINY,
                                                                              **kwargs}),
                                                       classes=[]))


def one_line_exit_2(capsys, argv: list[str]) -> str:
    """`alexnet ARGV`'s error: exit status 2 and a single line on stderr."""
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    return err


# --- model.arch=alexnet-tv takes no paper-net switch ---------------------------------------

PAPER_ONLY = [("width", "0.125", "0.125"), ("columns", "1", "1"),
              ("activation", "tanh", "'tanh'"), ("lrn", "false", "False"),
              ("lrn_alpha_over_n", "true", "True"), ("overlap_pool", "false", "False")]


@pytest.mark.parametrize("key, value, shown", PAPER_ONLY)
def test_a_paper_net_switch_on_the_torchvision_layout_is_refused(key, value, shown):
    """Before, resolve accepted each and train built the full-size ReLU layout regardless."""
    with pytest.raises(UserError) as err:
        resolve("paper", ["model.arch=alexnet-tv", f"model.{key}={value}"])
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"model.{key}={shown}: model.arch=alexnet-tv takes only "
                              f"{', '.join('model.' + k for k in TV_MODEL_KWARGS)}")
    assert "drop that setting or use model.arch=alexnet" in message


def test_the_first_differing_switch_is_named():
    with pytest.raises(UserError, match=r"^model\.columns=1: "):
        resolve("paper", ["model.arch=alexnet-tv", "model.activation=tanh", "model.columns=1"])


def test_the_torchvision_layout_keeps_its_own_settings_and_the_defaults():
    """dropout and init_bias reach its constructor; the others at their defaults are fine,
    spelled out or not (--init-from torchvision leaves them so)."""
    config = resolve("paper", ["model.arch=alexnet-tv", "model.dropout=0.3",
                               "model.init_bias=0.1", "model.lrn=true", "model.width=1.0",
                               "model.columns=2"])
    assert (config.model.dropout, config.model.init_bias) == (0.3, 0.1)
    for name in preset_names():
        assert resolve(name, ["model.arch=alexnet-tv"]).model.arch == "alexnet-tv"


def test_train_refuses_it_before_writing_anything(tmp_path, store, capsys):
    out = tmp_path / "r"
    err = one_line_exit_2(capsys, ["train", "--data", str(store), "--out", str(out),
                                   "--set", "model.arch=alexnet-tv", "--set",
                                   "model.width=0.125", *SHORT])
    assert "model.width=0.125: model.arch=alexnet-tv takes only" in err
    assert not out.exists()


# --- --init-from: the source net's function --------------------------------------------------

FUNCTION_KEYS = [("activation", "tanh"), ("lrn", False), ("lrn_alpha_over_n", True),
                 ("overlap_pool", False)]


@pytest.mark.parametrize("key, value", FUNCTION_KEYS)
def test_weights_of_a_net_of_another_function_are_refused(tmp_path, key, value):
    """Before, every tensor loaded (the shapes match) into a net that computes another
    function; overlap_pool's fc6 was refused as a width or column mismatch."""
    path = saved(tmp_path / "s.pt", **{key: value})
    torch.manual_seed(2)
    net = build_model("alexnet", **TINY)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(UserError) as err:
        load_initial_weights(net, str(path))
    mine = net.kwargs[key]
    assert str(err.value) == (
        f"--init-from {path}: its net has model.{key}={value!r}, this run's "
        f"model.{key}={mine!r}; set it as the source run had it (--set "
        f"model.{key}={str(value).lower()})")
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())


def test_the_other_direction_is_refused_too(tmp_path):
    path = saved(tmp_path / "s.pt")
    net = build_model("alexnet", **TINY, activation="tanh")
    with pytest.raises(UserError, match=r"model\.activation='relu', this run's "
                                        r"model\.activation='tanh'; .*model\.activation=relu\)"):
        load_initial_weights(net, str(path))


def test_settings_that_leave_the_function_load(tmp_path):
    """dropout (training only: the eval function is the same, and fine-tuning may change it),
    init_bias (replaced by the weights), column_conv and conv1_form (how it is computed)."""
    path = saved(tmp_path / "s.pt", dropout=0.2, init_bias=0.1, column_conv="groups",
                 conv1_form="direct")
    net = build_model("alexnet", **TINY, column_conv="separate", conv1_form="blocks")
    result = load_initial_weights(net, str(path))
    assert result["fresh"] == [] and len(result["loaded"]) == len(net.state_dict())


def test_a_file_without_model_args_is_not_refused(tmp_path):
    """A file recording no model_args (written by hand, another tool) says nothing to
    compare; its shapes alone are checked."""
    torch.manual_seed(1)
    state = checkpoint.make_state(build_model("alexnet", **TINY, activation="tanh"),
                                  classes=[])
    del state["model_args"]
    path = checkpoint.save(tmp_path / "s.pt", state)
    net = build_model("alexnet", **TINY)
    assert load_initial_weights(net, str(path))["fresh"] == []


def test_train_refuses_it_in_one_line_before_the_run_folder(tmp_path, store, capsys):
    path = saved(tmp_path / "s.pt", lrn=False, crop=64)
    out = tmp_path / "r"
    err = one_line_exit_2(capsys, ["train", "--data", str(store), "--init-from", str(path),
                                   "--out", str(out), "--set", "model.width=0.125",
                                   *SHORT])
    assert "its net has model.lrn=False, this run's model.lrn=True" in err
    assert "--set model.lrn=false" in err
    assert not out.exists()


# --- --init-from RUN: which file --------------------------------------------------------------


def test_a_run_folder_names_the_checkpoint_it_gives(tmp_path):
    """Before, the line named the folder alone ('weights from RUN: N tensors loaded')."""
    run = tmp_path / "run"
    run.mkdir()
    saved(run / "checkpoint.pt")
    net = build_model("alexnet", **TINY)
    line = describe(str(run), load_initial_weights(net, str(run)))
    assert line == (f"weights from {run / 'checkpoint.pt'} (the run's last epoch; a run "
                    f"folder gives its checkpoint.pt): {len(net.state_dict())} tensors loaded")
    saved(run / "best.pt")
    line = describe(str(run), load_initial_weights(net, str(run)))
    assert line.startswith(f"weights from {run / 'checkpoint.pt'} (the run's last epoch; give "
                           f"{run / 'best.pt'} for its lowest validation error): ")


def test_a_file_is_named_as_given(tmp_path):
    path = saved(tmp_path / "s.pt")
    net = build_model("alexnet", **TINY)
    line = describe(str(path), load_initial_weights(net, str(path)))
    assert line == f"weights from {path}: {len(net.state_dict())} tensors loaded"
