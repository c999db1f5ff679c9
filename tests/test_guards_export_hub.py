"""Guards of `alexnet export --format onnx` and hubconf.py: a net ONNX cannot express is one
line naming what works instead, with no file left; the hub's free arguments (column_conv,
conv1_form) are the caller's to get right, and conv1_form changes no output."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from test_export import CLASSES
from test_hubconf import REPO, hub, weights  # noqa: F401 - `weights` is a fixture

from alexnet import checkpoint
from alexnet import export as exporting
from alexnet.config import resolve, to_dict
from alexnet.errors import UserError
from alexnet.model import CONV1_FORMS, AlexNetTV

TV_CROP = 64  # conv5's pooled maps are 1x1: the adaptive pool to 6x6 is not ONNX's


@pytest.fixture(scope="module")
def tv_run(tmp_path_factory) -> Path:
    """The run folder of a torchvision-layout net trained at crop 64 (its checkpoint.pt)."""
    torch.manual_seed(0)
    config = resolve("paper", ["model.arch=alexnet-tv", f"data.crop={TV_CROP}"])
    stats = {"channel_mean": np.array([120.0, 115.0, 100.0], np.float32),
             "mean_image": np.full((72, 72, 3), 110.0, np.float32)}
    run = tmp_path_factory.mktemp("tv") / "run"
    checkpoint.save(run / "checkpoint.pt", checkpoint.make_state(
        AlexNetTV(num_classes=3), config=to_dict(config), classes=CLASSES, stats=stats,
        epoch=1, step=1, metrics=[]))
    return run


def files(*folders: Path) -> set[str]:
    """Every file and folder under `folders` (an export leaves none of its own on failure)."""
    return {str(p) for folder in folders for p in folder.rglob("*")}


def _assert_onnx_refused(message: str, run: Path) -> None:
    assert "\n" not in message, message
    assert f"{run / 'checkpoint.pt'}: --format onnx" in message, message
    assert "--format torchscript or --format weights" in message, message


def test_onnx_of_a_net_onnx_cannot_express_is_refused_before_exporting(tv_run, tmp_path,
                                                                       monkeypatch):
    """Before: torch's SymbolicValueError (a 106-line traceback) from inside the export."""
    pytest.importorskip("onnx")
    before = files(tv_run)
    monkeypatch.setattr(torch.onnx, "export", lambda *a, **k: pytest.fail("exported"))
    with pytest.raises(UserError) as caught:
        exporting.export(tv_run, "onnx", tmp_path)
    message = str(caught.value)
    _assert_onnx_refused(message, tv_run)
    assert "1x1" in message and "multiple of 6" in message, message
    assert files(tv_run) == before and not files(tmp_path)


def test_onnx_exporter_errors_are_one_line_and_leave_nothing(tv_run, tmp_path, monkeypatch,
                                                             capfd):
    """Whatever else ONNX cannot express: the exporter's error, in a few words, as one line
    (not its traceback, nor the graph it writes to standard output as it fails)."""
    pytest.importorskip("onnx")
    monkeypatch.setattr(exporting, "onnx_problem", lambda model, crop: None, raising=False)
    before = files(tv_run)
    with pytest.raises(UserError) as caught:
        exporting.export(tv_run, "onnx", tmp_path)
    message = str(caught.value)
    _assert_onnx_refused(message, tv_run)
    assert "adaptive_avg_pool2d" in message and len(message) < 400, message
    assert "graph" not in capfd.readouterr().out
    assert files(tv_run) == before and not files(tmp_path)


def test_onnx_problem_agrees_with_the_exporter_at_the_papers_crop():
    """torchvision's net at 224 pools 6x6 maps (exportable); at 64, 1x1 ones (not)."""
    assert exporting.onnx_problem(AlexNetTV(num_classes=3), 224) is None
    assert "1x1" in exporting.onnx_problem(AlexNetTV(num_classes=3), TV_CROP)


@pytest.mark.parametrize("argument, value, choices", [
    ("column_conv", "grouped", "auto, groups, separate, dense"),
    ("conv1_form", "strided", "auto, direct, blocks"),
])
def test_a_bad_free_argument_with_weights_is_the_arguments_fault(weights, argument,  # noqa: F811
                                                                 value, choices):
    """Before: column_conv='grouped' said the file was damaged or from another version."""
    with pytest.raises(UserError) as caught:
        hub(weights=str(weights), **{argument: value})
    message = str(caught.value)
    assert message == f"alexnet: {argument}={value!r}: choose from {choices}", message


def test_a_file_whose_net_does_not_build_is_still_the_files_fault(weights, tmp_path):  # noqa: F811
    state = checkpoint.load(weights)
    state["model_args"] = {**state["model_args"], "width": -1.0}
    checkpoint.save(tmp_path / "bad.weights.pt", state)
    for load in (lambda: checkpoint.load_model(tmp_path / "bad.weights.pt"),
                 lambda: checkpoint.model_from_state(
                     checkpoint.load(tmp_path / "bad.weights.pt"), tmp_path / "bad.weights.pt",
                     arguments={"column_conv": "dense"}, caller="alexnet")):
        with pytest.raises(UserError, match=r"bad.weights.pt: the weights do not fit .*width="
                                            r".*damaged or from another version"):
            load()


@pytest.mark.parametrize("form", CONV1_FORMS)
def test_conv1_form_is_free_with_weights_and_changes_no_output(weights, form):  # noqa: F811
    """Before: "its net has conv1_form=None, not conv1_form='direct'"."""
    model = hub(weights=str(weights), conv1_form=form)
    assert model.conv1.form == form
    ref = hub(weights=str(weights))
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1)) * 60
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), rtol=1e-4, atol=1e-4)


def test_the_entry_points_docstring_names_conv1_form():
    """The docstring (torch.hub.help) lists every argument, and says which are free."""
    spec = importlib.util.spec_from_file_location("hubconf", REPO / "hubconf.py")
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    doc = hubconf.alexnet.__doc__
    assert "conv1_form=None" in doc and "conv1_form" in doc.split("are free")[0].split("(")[-1]
