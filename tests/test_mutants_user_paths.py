"""From a mutation audit of preprocess, predict, export and the hub entry: the pixel limit, the
exact resize, ties in top-k, non-finite outputs, what the export check sees, and hub defaults."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _images import png
from PIL import Image
from test_hubconf import hub, weights  # noqa: F401 - `weights` is a fixture
from test_mutants_checkpoint import (  # noqa: F401 - `channel_ckpt` is a fixture
    CLASSES,
    CROP,
    channel_ckpt,
    save_ckpt,
    sensitive_net,
    stats_of,
)
from test_prepare import reference_resize_crop
from torch import nn

from alexnet import checkpoint
from alexnet import export as exporting
from alexnet.data.preprocess import Skip, load_image, resize_crop
from alexnet.errors import UserError
from alexnet.model import AlexNet
from alexnet.predict import predict_images, top_k

# ------------------------------------------------------------------------------ preprocess


def test_an_image_of_exactly_max_pixels_loads_and_one_more_is_refused():
    """--max-pixels refuses an image with MORE pixels than the limit: 4x4 passes at 16."""
    data = png(np.full((4, 4, 3), 90, np.uint8))
    assert load_image(("bytes", data), 4, max_pixels=16).shape == (4, 4, 3)
    with pytest.raises(Skip, match=r"4x4 pixels: over the decompression-bomb limit of 15"):
        load_image(("bytes", data), 4, max_pixels=15)


def test_resize_crop_of_noise_equals_torchvisions_resize_then_crop():
    """The rescale is PIL's exact antialiased bilinear (no `reducing_gap` shortcut): within
    one level of Resize(S) + CenterCrop(S) everywhere, on pixel noise (4x shrink)."""
    array = np.random.default_rng(5).integers(0, 256, (192, 256, 3), dtype=np.uint8)
    got = resize_crop(Image.fromarray(array), 48).astype(int)
    want = reference_resize_crop(array, 48).astype(int)
    assert got.shape == want.shape == (48, 48, 3)
    assert np.abs(got - want).max() <= 1


# --------------------------------------------------------------------------------- predict


def test_top_k_of_equal_probabilities_is_in_class_order():
    """Equal probabilities come in class order (a stable sort), over 1000 classes too."""
    values, labels = top_k(torch.full((1, 1000), 1e-3), 5)
    assert labels.tolist() == [[0, 1, 2, 3, 4]]
    assert values.tolist() == [[pytest.approx(1e-3)] * 5]


class NanForBright(nn.Module):
    """Logits that are NaN for an input above the mean and zero for one below it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(x.shape[0], len(CLASSES))
        logits[x.mean(dim=(1, 2, 3)) > 0] = float("nan")
        return logits


def test_one_image_with_non_finite_outputs_is_refused():
    """Every image's outputs must be finite: a NaN for one of two images is a UserError."""
    images = np.stack([np.full((256, 256, 3), 255, np.uint8), np.zeros((256, 256, 3), np.uint8)])
    ckpt = {"classes": CLASSES, "stats": stats_of(256), "arch": "alexnet"}
    with pytest.raises(UserError, match="outputs are not finite"):
        predict_images(NanForBright(), images, ckpt, crops=1)
    assert torch.isfinite(predict_images(NanForBright(), images[1:], ckpt, crops=1)).all()


# ---------------------------------------------------------------------------------- export


def test_the_export_check_sees_conv1s_weights(tmp_path):
    """The check batch is real input, not zeros: a weights file whose conv1 weights alone
    differ from the net's is refused."""
    net = sensitive_net()
    path = save_ckpt(tmp_path / "c.pt", net, config={"data": {"mean": "channel", "crop": CROP}})
    out = tmp_path / "c.weights.pt"
    exporting.export(path, "weights", out)
    state = checkpoint.load(out)
    state["model"]["conv1.weight"] = state["model"]["conv1.weight"] * 1.5
    checkpoint.save(tmp_path / "other.weights.pt", state)
    assert exporting.check_export("weights", out, net, CROP).startswith("checked")
    with pytest.raises(UserError, match="outputs differ from the checkpoint's"):
        exporting.check_export("weights", tmp_path / "other.weights.pt", net, CROP)


def test_the_comparison_tolerance_is_a_ten_thousandth():
    """A relative difference of 1e-3 is refused (TOLERANCE 1e-4); one of 1e-7 is not."""
    r = torch.randn(3, 7, generator=torch.Generator().manual_seed(0)) * 10
    with pytest.raises(UserError, match="outputs differ"):
        exporting._compare("x", r, r * 1.001)
    assert exporting._compare("x", r, r * (1 + 1e-7)) <= 1e-6


def test_the_onnx_check_compares_the_written_file_with_the_checkpoint(
        channel_ckpt, tmp_path, monkeypatch):  # noqa: F811
    """An ONNX export whose file computes another function is refused by its check."""
    pytest.importorskip("onnx", reason="onnx not installed: pip install onnx")
    pytest.importorskip("onnxruntime", reason="onnxruntime not installed")
    real = exporting.exportable

    def shifted(model: nn.Module) -> nn.Module:
        copy = AlexNet(**model.kwargs).eval()
        copy.load_state_dict({k: v + 0.5 for k, v in model.state_dict().items()})
        return real(copy)

    monkeypatch.setattr(exporting, "exportable", shifted)
    with pytest.raises(UserError, match="outputs differ from the checkpoint's"):
        exporting.export(channel_ckpt, "onnx", tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


# ------------------------------------------------------------------------------------- hub


def test_a_dropout_other_than_the_files_is_refused(weights):  # noqa: F811
    """dropout is recorded: the file's net has dropout=0.5, and 0.3 is another net."""
    with pytest.raises(UserError, match=r"its net has dropout=0\.5, not dropout=0\.3"):
        hub(weights=str(weights), dropout=0.3)


def test_a_fresh_net_is_in_training_mode():
    """Without weights the net is fresh, in training mode as torchvision's nets are."""
    assert hub(num_classes=3, width=0.0625).training is True
