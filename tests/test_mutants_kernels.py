"""Checks that kill wrong computations the model, column and Triton LRN tests let through (a
mutation audit of the conv bias folded into the LRN, the gather layout, conv1's blocks form and
the Triton LRN's first-use check): each against NumPy's formula, F.conv2d or the documented
tolerances. The Triton kernels run through the interpreter in one child process, as in
tests/test_lrn_triton.py (TRITON_INTERPRET must be set before triton is imported)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _interpret import HAS_TRITON, arrays, case, run_interpreted
from _lrn_formula import lrn_formula as formula
from torch import nn

import alexnet.model
from alexnet import paper
from alexnet.model import (
    BF16_RTOL,
    LRN,
    Conv1,
    _agree,
    _lrn_and_grad,
    _triton_lrn_fault,
    conv_act_lrn,
    lrn,
    triton_lrn_module,
)

ALPHA, BETA, K = paper.LRN_ALPHA, paper.LRN_BETA, paper.LRN_K
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")


def biased_formula(x: np.ndarray, g: np.ndarray, bias: np.ndarray, groups: int
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """LRN of ReLU(x + bias) (the conv's bias and ReLU folded in): output, x's gradient
    (through the ReLU: 0 where x + bias <= 0) and the bias's (its sum over images, pixels)."""
    z = x + bias[None, :, None, None]
    y, grad = formula(np.maximum(z, 0), g, groups)
    grad = np.where(z > 0, grad, 0.0)
    return y, grad, grad.sum((0, 2, 3))


# ---------------------------------------------------------------------------------------
# The first-use check: its torch side, its tolerances, what it compares


def test_the_checks_torch_side_is_bias_relu_lrn_with_both_gradients():
    """_lrn_and_grad(..., "torch"), the reference the Triton LRN is checked against: LRN
    (2 columns, the paper's constants) of ReLU(x + bias), x's and the bias's gradients; also
    when first asked inside inference mode (evaluation or prediction may be the first use)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, 12, 3, 2, generator=gen, dtype=torch.float64) * 600 - 300
    g = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    bias = torch.rand(12, generator=gen, dtype=torch.float64) * 200 - 100
    want = biased_formula(x.numpy(), g.numpy(), bias.numpy(), 2)
    z = x + bias.view(1, -1, 1, 1)
    assert (z > 0).any() and (z < 0).any()  # both sides of the ReLU
    for mode in (torch.enable_grad, torch.inference_mode):
        with mode():
            got = _lrn_and_grad(x, g, bias, "torch")
        assert len(got) == 3
        for have, ref in zip(got, want, strict=True):
            np.testing.assert_allclose(have.numpy(), ref, rtol=1e-10, atol=1e-12)


def test_the_torch_lrn_with_a_bias_keeps_the_maps_dtype():
    # as the kernels (an fp32 bias, bf16 maps: bf16 out); the values those of x + bias
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(1, 8, 2, 2, generator=gen) * 100
    bias = torch.rand(8, generator=gen) * 10
    y = lrn(x.bfloat16(), groups=2, backend="torch", bias=bias)
    assert y.dtype == torch.bfloat16
    want, _ = formula((x.bfloat16().double() + bias.double()[None, :, None, None]).numpy(),
                      np.zeros(x.shape), 2)
    np.testing.assert_allclose(y.double().numpy(), want, rtol=2e-2)


def _results(scale: float = 1.0, at: tuple[int, int] = (0, 0), dtype=torch.float32):
    """(y, dx, db) of a test input and the same with element `at` (flat) of tensor at[0]
    changed by `scale`: a kernel off in one place."""
    gen = torch.Generator().manual_seed(2)
    want = tuple((torch.rand(n, generator=gen, dtype=torch.float32) * 2 + 1) for n in
                 (40, 40, 8))
    got = [t.clone().to(dtype) for t in want]
    which, index = at
    flat = got[which].view(-1)
    flat[index] = flat[index] * scale
    return tuple(got), want


def test_agree_holds_outputs_to_fp32_rounding_and_gradients_to_their_scale():
    """_agree without rtol (fp32 kernels): outputs to fp32 rounding (a 5e-4 relative error
    fails), gradients to 1e-4 of their largest magnitude (one gradient off by 1e-3 of it,
    where the reference is near 0, fails); each of the three tensors counts on its own."""
    got, want = _results()
    assert _agree(got, want)
    assert _agree(*_results(1 + 1e-6))  # fp32 rounding
    assert not _agree(*_results(1 + 5e-4, (0, 3)))  # an output 0.05% off
    assert not _agree(*_results(1 + 5e-3, (1, 7)))  # one gradient 0.5% off
    assert not _agree(*_results(1 + 5e-3, (2, 1)))  # the bias's gradient
    # a gradient near 0 off by 1e-3 of the largest: beyond 1e-4 of the scale
    got, want = _results()
    want[1][5], got[1][5] = 0.0, float(want[1].abs().max()) * 1e-3
    assert not _agree(got, want)
    got[1][5] = float(want[1].abs().max()) * 5e-5
    assert _agree(got, want)


def test_agree_with_bf16s_rtol_holds_every_element_to_it():
    """With rtol (bf16 kernels): every output within rtol of its own value (a small output
    2% off fails, whatever the largest output), gradients within rtol or rtol of their
    largest magnitude."""
    got, want = _results(1 + 0.3 * BF16_RTOL, (0, 2), torch.bfloat16)
    assert _agree(got, want, BF16_RTOL)
    assert not _agree(*_results(1 + 2 * BF16_RTOL, (0, 2), torch.bfloat16), BF16_RTOL)
    got, want = _results()
    want[0][0], got[0][0] = 100.0, 100.0  # a large output elsewhere
    want[0][4], got[0][4] = 0.1, 0.1 * (1 + 3 * BF16_RTOL)
    assert not _agree(got, want, BF16_RTOL)
    assert not _agree(*_results(1.1, (2, 3)), BF16_RTOL)  # the bias's gradient


class FakeKernels:
    """Stands in for alexnet.lrn_triton: `apply` is the torch path (in fp32, the result in
    x's dtype) times `scale`, and records what each call was given."""

    def __init__(self, scale: float = 1.0) -> None:
        self.scale, self.calls = scale, []
        self.LAYOUT = "tile"

    def apply(self, x, groups, half, alpha, beta, k, relu, bias):
        self.calls.append({"relu": relu, "bias": bias, "groups": groups})
        wide = torch.float64 if x.dtype == torch.float64 else torch.float32
        y = lrn(x.to(wide), 2 * half + 1, alpha, beta, k, groups, backend="torch", relu=relu,
                bias=bias)
        return (y * self.scale).to(x.dtype)


@pytest.fixture
def fake_kernels(monkeypatch):
    """A FakeKernels installed as the Triton LRN, with ALEXNET_LRN=triton (on CPU tensors, as
    under Triton's interpreter, where ALEXNET_LRN=triton runs them)."""
    monkeypatch.setattr(alexnet.model, "TRITON_INTERPRETED", True)
    fake = FakeKernels()
    monkeypatch.setitem(alexnet.model._TRITON, "module", fake)
    monkeypatch.setattr(alexnet.model, "LRN_BACKEND", "triton")
    return fake


def _check_input(dtype: torch.dtype):
    gen = torch.Generator().manual_seed(3)
    x = (torch.rand(1, 16, 3, 3, generator=gen) * 600 - 300).to(dtype)
    g = torch.randn(x.shape, generator=gen).to(dtype)
    return x, g, torch.rand(16, generator=gen) * 200 - 100


def test_the_check_fails_an_fp32_kernel_off_by_more_than_rounding(fake_kernels):
    # 0.3% off is bf16's rounding, not fp32's: an fp32 kernel that far off is wrong
    x, g, bias = _check_input(torch.float32)
    assert _triton_lrn_fault(x, g, bias) is None
    fake_kernels.scale = 1.003
    assert _triton_lrn_fault(x, g, bias) == "differs from the torch path on a test input"
    xb, gb, _ = _check_input(torch.bfloat16)
    assert _triton_lrn_fault(xb, gb, bias) is None  # within bf16's tolerance
    fake_kernels.scale = 1.03
    assert _triton_lrn_fault(xb, gb, bias) is not None


def test_the_check_compares_bf16_kernels_with_the_torch_path_in_fp32(fake_kernels,
                                                                     monkeypatch):
    """The reference is computed in fp32 from the bf16 values (the torch path in bf16 rounds
    as it goes), with the kernel's own bias (fp32), ReLU and 2 columns."""
    seen = []
    real = alexnet.model._lrn_and_grad

    def recorded(x, g, bias, backend):
        seen.append((backend, x.clone(), g.clone(), bias))
        return real(x, g, bias, backend)

    monkeypatch.setattr(alexnet.model, "_lrn_and_grad", recorded)
    x, g, bias = _check_input(torch.bfloat16)
    assert _triton_lrn_fault(x, g, bias) is None
    (kernel, kx, kg, kb), (ref, rx, rg, rb) = seen
    assert (kernel, ref) == ("triton", "torch")
    assert kx.dtype == torch.bfloat16 and torch.equal(kx, x) and kb is bias
    assert rx.dtype == rg.dtype == torch.float32 and rb is bias
    assert torch.equal(rx, x.float()) and torch.equal(rg, g.float())
    assert fake_kernels.calls[0]["relu"] and fake_kernels.calls[0]["groups"] == 2


def test_the_first_use_check_runs_with_a_bias(monkeypatch):
    """The check's inputs carry a nonzero fp32 bias, one value per map, as the net's conv1
    and conv2 give the kernels: a kernel wrong only with its bias must fail it."""
    seen = []
    monkeypatch.setattr(alexnet.model, "_triton_lrn_fault",
                        lambda x, g, bias: seen.append((x, bias)) or None)
    monkeypatch.setitem(alexnet.model._TRITON, "module", FakeKernels())
    assert alexnet.model._verify_triton_lrn(torch.device("cpu"))
    assert len(seen) == 4
    for x, bias in seen:
        assert bias.dtype == torch.float32 and bias.shape == (x.shape[1],)
        assert bias.abs().min() > 0 and bias.std() > 1  # varied, not a constant


# ---------------------------------------------------------------------------------------
# conv_act_lrn: the conv's bias, the ReLU and the LRN in one call where the kernel runs


def test_conv_act_lrn_where_the_kernel_runs_is_the_layers_in_turn(fake_kernels):
    """Where the Triton LRN runs, conv_act_lrn gives the kernel the conv without its bias and
    the bias (once), with ReLU folded in: the same values and gradients as conv, ReLU, LRN
    apart. Another activation (tanh) is not folded as a ReLU, and without an LRN the layer
    is the conv and its activation."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 8, 3).double()
    with torch.no_grad():
        conv.bias.uniform_(-0.5, 0.5)
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    norm = LRN(2)
    for act, f in ((nn.ReLU(), F.relu), (nn.Tanh(), torch.tanh)):
        w, b = conv.weight.detach().clone().requires_grad_(), \
            conv.bias.detach().clone().requires_grad_()
        want = lrn(f(F.conv2d(x, w, b)), groups=2, backend="torch")
        want.square().sum().backward()
        conv.zero_grad()
        got = conv_act_lrn(x, conv, act, norm)
        got.square().sum().backward()
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(conv.bias.grad, b.grad, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(conv.weight.grad, w.grad, rtol=1e-10, atol=1e-12)
    folded, tanh = fake_kernels.calls
    assert folded["relu"] and folded["bias"] is conv.bias
    assert not tanh["relu"] and tanh["bias"] is None
    torch.testing.assert_close(conv_act_lrn(x, conv, nn.ReLU(), nn.Identity()), F.relu(conv(x)))


# ---------------------------------------------------------------------------------------
# Conv1's blocks form


@pytest.mark.parametrize("groups,padding", [(1, 2), (2, 0), (2, 1)])
def test_conv1_blocks_with_padding_or_groups_is_the_strided_conv(groups, padding):
    # Conv1 is an nn.Conv2d: any padding and groups it is given give conv2d's function
    torch.manual_seed(0)
    conv = Conv1(4, 6, 5, 2, padding, groups=groups, form="blocks").double()
    x = torch.randn(2, 4, 13, 12, dtype=torch.float64)
    want = F.conv2d(x, conv.weight, conv.bias, 2, padding, groups=groups)
    torch.testing.assert_close(conv(x), want, rtol=1e-12, atol=1e-12)


def test_the_blocks_form_runs_the_blocked_convolution(monkeypatch):
    """`blocks` (what auto picks on CUDA, for cuDNN's 3-channel conv1) computes conv1 as
    blocked_conv; a stride-1 or grouped conv, and the direct form, run conv2d itself."""
    strides = []
    real = alexnet.model.blocked_conv
    monkeypatch.setattr(alexnet.model, "blocked_conv",
                        lambda x, w, b, stride, padding=0: strides.append(stride)
                        or real(x, w, b, stride, padding))
    x = torch.randn(1, 4, 15, 15)
    Conv1(4, 6, 5, 4, form="blocks")(x)
    assert strides == [4]
    Conv1(4, 6, 5, 1, form="blocks")(x)
    Conv1(4, 6, 5, 4, form="direct")(x)
    Conv1(4, 6, 5, 4, groups=2, form="blocks")(x)
    assert strides == [4]


# ---------------------------------------------------------------------------------------
# alexnet.lrn_triton's bias handling in Python (no kernel launched)


@needs_triton
def test_bias_grad_is_the_sum_over_images_and_pixels_accumulated_wide():
    m = triton_lrn_module()
    gen = torch.Generator().manual_seed(4)
    # fp64: summed in fp64 (1e-9 details that an fp32 sum would lose)
    grad = 1 + torch.randn(3, 4, 5, 6, generator=gen, dtype=torch.float64) * 1e-9
    bias = torch.zeros(4, dtype=torch.float64)
    got = m.bias_grad(grad, bias)
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), grad.numpy().sum((0, 2, 3)), rtol=1e-14)
    # bf16 gradients (mixed precision) for an fp32 bias: summed in fp32, the bias's dtype
    g16 = (torch.rand(3, 4, 5, 6, generator=gen) + 1).bfloat16()
    got = m.bias_grad(g16, torch.zeros(4))
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), g16.double().numpy().sum((0, 2, 3)), rtol=1e-6)
    assert m.bias_grad(g16, None) is None


@needs_triton
@pytest.mark.parametrize("shape", [(5,), (12, 1), (1, 12)])
def test_a_bias_that_is_not_one_value_per_map_is_refused(shape):
    # before any launch: a wrong size would read past the bias or the wrong maps' values
    m = triton_lrn_module()
    x = torch.rand(1, 12, 2, 2)
    for op in (m.forward, lambda *args: m.backward(torch.ones_like(x), *args)):
        with pytest.raises(ValueError, match="one value per map"):
            op(x, 2, 2, ALPHA, BETA, K, True, torch.zeros(shape))


# ---------------------------------------------------------------------------------------
# The gather layout through the interpreter (one child process)

CHILD = r"""
import sys
import traceback
import numpy as np
import torch
import alexnet.lrn_triton as m
from alexnet.model import lrn

m.LAYOUT = "gather"
gen = torch.Generator().manual_seed(0)
cl = torch.channels_last


def fp64():
    # fp64 (exact sums, the layout's claim), columns of 16 maps (the block whole: no padding
    # lane), the bias and ReLU folded in
    x = torch.rand(2, 32, 2, 3, generator=gen, dtype=torch.float64) * 600 - 300
    g = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    b = torch.rand(32, generator=gen, dtype=torch.float64) * 200 - 100
    xi = x.contiguous(memory_format=cl).requires_grad_()
    bi = b.clone().requires_grad_()
    y = lrn(xi, groups=2, backend="triton", relu=True, bias=bi)
    y.backward(g.contiguous(memory_format=cl))
    return dict(x=x.numpy(), g=g.numpy(), b=b.numpy(), y=y.detach().numpy(),
                dx=xi.grad.numpy(), db=bi.grad.numpy(), kernels=np.array(m._kernels_for(xi, 2)))


def nan():
    # fp32, columns of 16, a NaN at map 2 of pixel 0
    x = torch.rand(1, 32, 1, 2, generator=gen) * 300
    x[0, 2, 0, 0] = float("nan")
    g = torch.randn(x.shape, generator=gen)
    xi = x.contiguous(memory_format=cl).requires_grad_()
    y = lrn(xi, groups=2, backend="triton")
    y.backward(g.contiguous(memory_format=cl))
    return dict(x=x.numpy(), g=g.numpy(), y=y.detach().numpy(), dx=xi.grad.numpy())


out = {}
for case in (fp64, nan):  # each on its own: one failing leaves the other's result
    try:
        out.update({f"{case.__name__}.{k}": v for k, v in case().items()})
    except Exception:
        out[f"{case.__name__}.error"] = np.array(traceback.format_exc())
np.savez(sys.argv[1], **out)
"""


@pytest.fixture(scope="module")
def gather_results(tmp_path_factory) -> dict[str, np.ndarray]:
    path = tmp_path_factory.mktemp("gather") / "out.npz"
    run_interpreted(["-c", CHILD, str(path)], timeout=300, ALEXNET_LRN="triton")
    return arrays(path)


def test_the_gather_layout_is_exact_in_float64_with_the_bias(gather_results):
    """ALEXNET_LRN_LAYOUT=gather on an fp64 channels_last tensor runs the gather kernels
    (not the tile ones, not the band product, which cannot take fp64) and gives the formula
    to fp64 rounding, at both edges of a column that fills the kernel's block."""
    r = case(gather_results, "fp64")
    assert r["kernels"] == "gather"
    want = biased_formula(r["x"], r["g"], r["b"], 2)
    for key, ref in zip(("y", "dx", "db"), want, strict=True):
        np.testing.assert_allclose(r[key], ref, rtol=1e-12, atol=1e-12 * np.abs(ref).max())


def test_the_gather_layout_keeps_a_nan_to_its_window(gather_results):
    """A NaN reaches the outputs of the maps whose window holds it (and their gradients,
    those of the maps whose windows meet those), as in the formula, and no others: the band
    product would spread it over the whole column (its NaN times the band's zeros)."""
    r = case(gather_results, "nan")
    want_y, want_dx = formula(r["x"].astype(np.float64), r["g"].astype(np.float64), 2)
    assert np.isnan(want_y[0, :5, 0, 0]).all() and np.isfinite(want_y[0, 5:, 0, 0]).all()
    assert np.isnan(want_dx[0, :7, 0, 0]).all() and np.isfinite(want_dx[0, 7:, 0, 0]).all()
    np.testing.assert_allclose(r["y"], want_y, rtol=2e-6, atol=1e-6)  # NaN where it is
    np.testing.assert_allclose(r["dx"], want_dx, rtol=1e-5, atol=1e-6)
