"""hubconf.py as a torch.hub user calls it: the paper's net, or the trained net of a file,
and a one-line error when the entry point or its arguments do not describe the file's net."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from alexnet import checkpoint
from alexnet.errors import UserError
from alexnet.model import AlexNet

REPO = Path(__file__).resolve().parents[1]
CLASSES = [{"wnid": f"c{i}", "name": f"class {i}"} for i in range(3)]
NET = {"num_classes": 3, "width": 0.125}


def hub(entry: str = "alexnet", **kwargs):
    return torch.hub.load(str(REPO), entry, source="local", trust_repo=True, **kwargs)


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """A weights file of a small paper net (3 classes, width 0.125), as export writes it."""
    torch.manual_seed(0)
    stats = {"channel_mean": np.array([120.0, 115.0, 100.0], np.float32),
             "mean_image": np.full((256, 256, 3), 110.0, np.float32)}
    path = tmp_path_factory.mktemp("hub") / "small.weights.pt"
    checkpoint.save(path, checkpoint.make_state(AlexNet(**NET), classes=CLASSES, stats=stats,
                                                weights_only=True))
    return path


def test_torch_hub_local_load_returns_the_papers_net():
    model = hub()
    assert isinstance(model, AlexNet)
    assert model.kwargs["columns"] == 2 and model.kwargs["num_classes"] == 1000
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    # section 3.5: 96 kernels of 11x11x3; 256 of 5x5x48 (each column sees its half); 4096-unit
    # fully connected layers; 1000-way output
    assert shapes["conv1.weight"] == (96, 3, 11, 11)
    assert shapes["conv2.weight"] == (256, 48, 5, 5)
    assert shapes["conv3.weight"] == (384, 256, 3, 3)
    assert shapes["fc6.weight"] == (4096, 256 * 6 * 6)
    assert shapes["fc8.weight"] == (1000, 4096)


def test_torch_hub_local_load_with_weights(weights):
    model = hub(weights=str(weights))
    ref, _ = checkpoint.load_model(weights)
    assert not model.training
    for key, value in ref.state_dict().items():
        assert torch.equal(model.state_dict()[key], value)


def test_arguments_that_agree_with_the_file_are_accepted(weights):
    """Restating the file's net (or a default it omits, crop=224) is not an error, and
    column_conv, the form of the computation, may be chosen."""
    model = hub(weights=weights, columns=2, crop=224, column_conv="dense", **NET)
    assert model.conv2.form == "dense"
    ref, _ = checkpoint.load_model(weights)
    x = torch.randn(2, 3, 224, 224) * 60
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("given, held", [
    ({"width": 0.5}, "width=0.125, not width=0.5"),
    ({"columns": 1}, "columns=2, not columns=1"),
    ({"num_classes": 1000}, "num_classes=3, not num_classes=1000"),
    # no weight changes shape with these: the file would load, and compute another function
    ({"lrn": False, "activation": "tanh"}, "lrn=True, activation='relu', not lrn=False, "
                                           "activation='tanh'"),
    ({"crop": 227}, "crop=224, not crop=227"),
])
def test_arguments_that_differ_from_the_file_are_one_line(weights, given, held):
    with pytest.raises(UserError) as caught:
        hub(weights=str(weights), **given)
    message = str(caught.value)
    assert f"weights={str(weights)!r}: its net has {held}" in message
    assert "\n" not in message and "drop those arguments" in message


def test_a_file_of_the_other_layout_is_refused_by_each_entry_point(weights, tmp_path):
    """`alexnet_tv` with a paper net's file returned the paper net, and `alexnet` with a
    torchvision-layout file that layout, without a word."""
    with pytest.raises(UserError, match=r"holds an 'alexnet' net, not the 'alexnet-tv' net of "
                                        r"the 'alexnet_tv' entry point; load it with the "
                                        r"'alexnet' entry point"):
        hub("alexnet_tv", weights=str(weights))
    tv = checkpoint.load(weights)  # the arch is read before any weight
    tv.update(arch="alexnet-tv", model_args={"num_classes": 3, "dropout": 0.5})
    checkpoint.save(tmp_path / "tv.weights.pt", tv)
    with pytest.raises(UserError, match=r"tv.weights.pt'. holds an 'alexnet-tv' net, not the "
                                        r"'alexnet' net .* load it with the 'alexnet_tv' entry"):
        hub("alexnet", weights=str(tmp_path / "tv.weights.pt"))


def test_an_unknown_argument_with_weights_is_one_line(weights):
    with pytest.raises(UserError, match=r"^alexnet: no argument widht; it takes num_classes, "):
        hub(weights=str(weights), widht=0.125)


def test_weights_a_run_folder_is_its_best_epoch_as_evaluate_takes_it(weights, tmp_path):
    """`weights=RUN` loaded checkpoint.pt (the last epoch) where evaluate, predict and figures
    take best.pt (the epoch of lowest validation error)."""
    best = checkpoint.load(weights)
    last = {**best, "model": {k: v + 1 if v.is_floating_point() else v
                              for k, v in best["model"].items()}}
    checkpoint.save(tmp_path / "best.pt", best)
    checkpoint.save(tmp_path / "checkpoint.pt", last)
    model = hub(weights=str(tmp_path))
    for key, value in best["model"].items():
        assert torch.equal(model.state_dict()[key], value), key
