"""The model's Python API refuses what it cannot compute, in one line naming the argument,
and computes the edge cases it can (an empty batch, a non-square input, an eval-mode split)."""

from __future__ import annotations

import pytest
import torch

import alexnet.model
from alexnet.errors import UserError
from alexnet.model import LRN, AlexNet, lrn, pad_for_conv1, split_columns


def small(**kwargs) -> AlexNet:
    """A tiny paper-layout net (a tenth of the kernels, 64-pixel inputs), seeded."""
    torch.manual_seed(0)
    return AlexNet(num_classes=10, width=0.1, crop=64, **kwargs)


def test_split_columns_keeps_eval_mode():
    net = small().eval()
    split = split_columns(net, devices=("cpu", "cpu"))
    assert not split.training and not split.grouped().training
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(split(x), net(x), rtol=1e-5, atol=1e-5)
    assert split_columns(small().train(), devices=("cpu", "cpu")).training


@pytest.mark.parametrize("n", [4, 2, 0, -1])
def test_lrn_refuses_a_window_that_is_not_a_positive_odd_number(n):
    x = torch.rand(1, 8, 3, 3) * 100
    with pytest.raises(ValueError, match=f"n={n}: give a positive odd number"):
        lrn(x, n=n)
    with pytest.raises(ValueError, match=f"n={n}: give a positive odd number"):
        LRN(alpha_over_n=True, n=n)


def test_lrn_still_takes_odd_windows():
    x = torch.rand(1, 8, 3, 3) * 100
    assert not torch.equal(lrn(x, n=3), lrn(x, n=5))
    torch.testing.assert_close(LRN(n=3)(x), lrn(x, n=3))


@pytest.mark.parametrize("shape", [(8, 3, 3), (1, 1, 8, 3, 3)])
def test_lrn_refuses_input_that_is_not_nchw(shape):
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        lrn(torch.rand(shape), backend="torch")


def test_an_empty_batch_gives_an_empty_output_forward_and_backward():
    x = torch.randn(0, 3, 64, 64, requires_grad=True)
    y = small()(x)
    assert y.shape == (0, 10)
    y.sum().backward()
    assert x.grad.shape == x.shape
    a = torch.randn(0, 8, 3, 3, requires_grad=True)
    b = lrn(a, groups=2, backend="torch")
    assert b.shape == a.shape
    b.sum().backward()
    assert a.grad.shape == a.shape


@pytest.mark.parametrize("width", [0, -1, 0.0])
def test_a_width_that_is_not_positive_is_refused(width):
    with pytest.raises(ValueError, match=f"width={width}: must be > 0"):
        AlexNet(width=width, crop=64)


def test_pad_for_conv1_pads_each_side_by_what_it_needs():
    assert pad_for_conv1(torch.zeros(1, 3, 64, 65)).shape == (1, 3, 67, 67)
    assert pad_for_conv1(torch.zeros(1, 3, 65, 64)).shape == (1, 3, 67, 67)
    net = small().eval()
    with torch.no_grad():
        assert net(torch.randn(1, 3, 64, 65)).shape == (1, 10)


@pytest.mark.parametrize("shape", [(1, 3, 100, 100), (1, 3, 64, 100), (1, 1, 64, 64)])
def test_an_input_of_another_size_than_the_crop_is_refused(shape):
    with pytest.raises(ValueError, match=r"crop=64\) takes images \(N, 3, 64, 64\)"):
        small()(torch.randn(shape))
    split = split_columns(small(), devices=("cpu", "cpu"))
    with pytest.raises(ValueError, match=r"crop=64\) takes images"):
        split(torch.randn(shape))


def test_a_bad_backend_argument_is_named_as_the_argument():
    x = torch.rand(1, 8, 3, 3)
    with pytest.raises(UserError, match="backend='bogus': choose from auto") as got:
        lrn(x, backend="bogus")
    assert "ALEXNET_LRN" not in str(got.value)
    with pytest.raises(UserError, match="backend='bogus'"):  # even where no kernel would run
        lrn(x, n=7, backend="bogus")


@pytest.mark.parametrize("env", ["ALEXNET_LRN", "ALEXNET_POOL", "ALEXNET_AUGMENT"])
def test_triton_asked_for_on_cpu_tensors_is_one_line_naming_the_setting(env, monkeypatch):
    """`ALEXNET_AUGMENT=triton alexnet evaluate --device cpu` ended in a traceback from
    Triton's driver lookup ('0 active drivers'); outside the interpreter the kernels need
    CUDA tensors."""
    from alexnet.data import augment
    from alexnet.model import triton_lrn_module, use_triton_lrn, use_triton_pool

    if triton_lrn_module() is None:
        pytest.skip("triton is not installed (pip install triton, Linux x86-64)")
    monkeypatch.setattr(alexnet.model, "TRITON_INTERPRETED", False)
    maps = torch.rand(1, 4, 9, 9).contiguous(memory_format=torch.channels_last)
    check = {"ALEXNET_LRN": lambda: use_triton_lrn(maps, "triton"),
             "ALEXNET_POOL": lambda: use_triton_pool(maps, torch.nn.MaxPool2d(3, 2), "triton"),
             "ALEXNET_AUGMENT": lambda: augment.use_triton_augment(
                 torch.zeros(1, 8, 8, 3, dtype=torch.uint8), "none", {}, "triton")}[env]
    with pytest.raises(UserError, match=f"^{env}=triton on a cpu tensor: .* set {env}=auto$"):
        check()
