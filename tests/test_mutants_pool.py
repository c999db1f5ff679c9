"""Checks that kill wrong Triton max-pools the tests of tests/test_pool_triton.py let through (a
mutation audit of alexnet/pool_triton.py and its selection in alexnet/model.py): NaN and -inf
windows, PyTorch's summing order, fp32 sums for bf16 maps, writes past the outputs, output
gradients in other layouts, the ops' fake impls, the first-use check and which pools the
kernels take. Each against a NumPy loop over the windows, torch's max_pool2d or hand-derived
values; the kernels run through Triton's interpreter in one child process
(tests/_mutants_pool_interpret.py: TRITON_INTERPRET must be set before triton is imported)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _interpret import HAS_TRITON, ROOT, arrays, case, run_interpreted
from torch import nn

import alexnet.model
from alexnet.model import max_pool, triton_pool_module, triton_pool_verified

needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
CL = torch.channels_last


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[str, np.ndarray]:
    out = tmp_path_factory.mktemp("pool_mutants") / "interpreted.npz"
    run_interpreted([str(ROOT / "tests" / "_mutants_pool_interpret.py"), str(out)])
    return arrays(out)


def window_loop(x: np.ndarray, g: np.ndarray, k: int, s: int, acc=np.float64
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PyTorch's max-pool rule, window by window: scan i then j, take a value above the best
    so far or a NaN (so the first maximum, the last NaN; -inf windows keep position 0); each
    window's gradient added to its chosen pixel in `acc`, windows in (oh, ow) order."""
    n, c, h, w = x.shape
    oh, ow = (h - k) // s + 1, (w - k) // s + 1
    y = np.empty((n, c, oh, ow))
    where = np.zeros((n, c, oh, ow), dtype=np.int64)
    dx = np.zeros(x.shape, dtype=acc)
    for b in range(n):
        for ch in range(c):
            for p in range(oh):
                for q in range(ow):
                    best, arg = -np.inf, 0
                    for i in range(k):
                        for j in range(k):
                            v = x[b, ch, p * s + i, q * s + j]
                            if v > best or np.isnan(v):
                                best, arg = v, i * k + j
                    y[b, ch, p, q], where[b, ch, p, q] = best, arg
                    i, j = divmod(arg, k)
                    at = (b, ch, p * s + i, q * s + j)
                    dx[at] = acc(dx[at] + acc(g[b, ch, p, q]))
    return y, where, dx


def test_nan_propagates_and_minus_inf_windows_keep_their_first_pixel(results):
    # NaN wins its windows (the later of two NaNs, as torch's `val > max || isnan(val)`) and
    # takes their gradients; a window of -inf alone gives -inf from its first pixel
    r = case(results, "special")
    y, where, dx = window_loop(r["x"], r["g"], 3, 2)
    assert np.isnan(y).sum() == 6 and np.isneginf(y).sum() == 4  # the case is what it says
    np.testing.assert_array_equal(r["y"], y)
    np.testing.assert_array_equal(r["idx"], where)
    np.testing.assert_allclose(r["dx"], dx, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(r["dx"], r["torch_dx"])


def test_gradients_are_summed_in_pytorchs_order(results):
    # four windows choose one pixel; fp32 sums of (1, 2^-24, -1, 3 2^-25) differ in any order
    # but (oh, ow) ascending: 1 + 2^-24 rounds to 1, then -1, then 3 2^-25 (channel 0)
    r = case(results, "order")
    _, _, dx = window_loop(r["x"].astype(np.float32), r["g"].astype(np.float32), 3, 2,
                           acc=np.float32)
    assert r["dx"][0, 0, 2, 2] == 3 * 2.0 ** -25
    np.testing.assert_array_equal(r["dx"], dx)
    np.testing.assert_array_equal(r["dx"], r["torch_dx"])


def test_bf16_gradients_are_summed_in_fp32(results):
    # 1 + 3 x 2^-8, rounded to bf16 once: within a bf16 step (2^-7) of the exact sum, where
    # adding in bf16 leaves 1 (each 2^-8 is half a step: round to even, or truncation)
    r = case(results, "bf16sum")
    exact = 1 + 3 * 2.0 ** -8
    assert abs(r["dx"][0, 0, 2, 2] - exact) < 2.0 ** -7
    rest = r["dx"].copy()
    rest[0, 0, 2, 2] = 0
    assert not rest.any()


@pytest.mark.parametrize("c", [12, 40])  # 16-lane blocks with 4 masked; 32-lane, 24 masked
def test_the_kernels_write_nothing_past_their_outputs(results, c):
    # outputs in the first image of two-image buffers: the second keeps its 7s (positions 99)
    r = case(results, f"views{c}")
    y, where, dx = window_loop(r["x"], r["g"], 3, 2)
    np.testing.assert_array_equal(r["out"][0], y[0])
    np.testing.assert_array_equal(r["idx"][0], where[0])
    np.testing.assert_allclose(r["dx"][0], dx[0], rtol=1e-6, atol=1e-6)
    assert (r["out"][1] == 7).all() and (r["idx"][1] == 99).all() and (r["dx"][1] == 7).all()


def test_output_gradients_in_other_layouts(results):
    # an NCHW output gradient, and y.sum()'s expanded ones: the same input gradients
    r = case(results, "nchw")
    _, _, dx = window_loop(r["x"], r["g"], 3, 2)
    np.testing.assert_allclose(r["dx"], dx, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(r["dx"], r["torch_dx"])
    _, _, ones = window_loop(r["x"], np.ones(r["g"].shape), 3, 2)
    np.testing.assert_array_equal(results["summed.dx"], ones)


def expected_meta(k: int, s: int, shape: tuple[int, ...]) -> dict[str, tuple]:
    """(shape + channels_last strides, dtype) of the maxima, positions and input gradient."""
    n, c, h, w = shape
    oh, ow = (h - k) // s + 1, (w - k) // s + 1
    pooled = (n, c, oh, ow, oh * ow * c, 1, ow * c, c)
    return {"y": (pooled, "torch.float32"),
            "idx": (pooled, "torch.int8" if k * k - 1 <= 127 else "torch.int32"),
            "dx": ((n, c, h, w, h * w * c, 1, w * c, c), "torch.float32")}


META = {"k3": (3, 2, (2, 3, 10, 7)), "k12": (12, 1, (1, 2, 12, 14))}  # floor: 10 -> 4


@pytest.mark.parametrize("name", list(META))
def test_the_ops_outputs_are_channels_last_of_the_pooled_shape(results, name):
    # non-square maps; positions up to 8 in a signed byte, up to 143 in int32
    k, s, shape = META[name]
    for part, (meta, dtype) in expected_meta(k, s, shape).items():
        assert tuple(results[f"meta.{name}.{part}"]) == meta, part
        assert str(results[f"meta.{name}.{part}.dtype"]) == dtype, part


@needs_triton
@pytest.mark.parametrize("name", list(META))
def test_the_fake_impls_give_the_real_outputs_metadata(name):
    # what torch.compile traces with: the same shapes, strides and dtypes as the kernels'
    from torch._subclasses.fake_tensor import FakeTensorMode

    triton_pool_module()  # registers the ops
    k, s, shape = META[name]
    with FakeTensorMode():
        x = torch.empty(shape).contiguous(memory_format=CL)
        y, idx = torch.ops.alexnet.max_pool(x, k, s)
        dx = torch.ops.alexnet.max_pool_backward(torch.empty_like(y), idx, k, s, *shape[2:])
    for t, (meta, dtype) in zip((y, idx, dx), expected_meta(k, s, shape).values(), strict=True):
        assert (*t.shape, *t.stride()) == meta and str(t.dtype) == dtype


def test_the_check_rejects_kernels_wrong_in_the_forward_or_in_fp32(results):
    # maxima half a unit high (positions right, so the gradients too), or fp32 gradients
    # 0.1% off (the check's fp32 tolerance is 1e-5): both must fail the first-use check
    assert not results["check.forward"]
    assert not results["check.fp32grad"]


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode", "autocast"])
def test_the_check_passes_whatever_mode_asks_for_it(results, mode):
    # asked first from an evaluation under no_grad / inference_mode or a bf16 autocast region
    assert results[f"check.{mode}"]


@pytest.fixture
def spied(monkeypatch) -> list:
    """alexnet.pool_triton.apply replaced by a recorder that runs torch's pool instead, on CPU
    tensors as under Triton's interpreter (where ALEXNET_POOL=triton runs the kernels)."""
    if triton_pool_module() is None:
        pytest.skip("triton is not installed (pip install triton, Linux x86-64)")
    monkeypatch.setattr(alexnet.model, "TRITON_INTERPRETED", True)
    calls: list = []

    def spy(x, k, s):
        calls.append((k, s))
        return nn.functional.max_pool2d(x, k, s)

    monkeypatch.setattr(triton_pool_module(), "apply", spy)
    return calls


@pytest.mark.parametrize("pool", [
    nn.MaxPool2d(3, 2, padding=1), nn.MaxPool2d(3, 2, ceil_mode=True),
    nn.MaxPool2d(3, 2, dilation=2), nn.MaxPool2d((3, 2), 2), nn.MaxPool2d(3, (2, 1)),
    nn.MaxPool2d(3, 2, return_indices=True)],
    ids=["padding", "ceil", "dilation", "kernel3x2", "stride2x1", "indices"])
def test_pools_the_kernels_do_not_make_run_torchs_even_under_triton(spied, pool):
    # channels_last maps (what the kernels take) through padded, ceil-mode, dilated,
    # non-square kernels or strides, indices returned: nn.MaxPool2d's own result
    x = torch.rand(2, 4, 10, 10).contiguous(memory_format=CL)
    torch.testing.assert_close(max_pool(x, pool, "triton"), pool(x), rtol=0, atol=0)
    assert spied == []


def test_unbatched_maps_run_torchs_pool_under_triton(spied):
    # (C, H, W): no channels_last layout exists for them
    x, pool = torch.rand(4, 9, 9), nn.MaxPool2d(3, 2)
    torch.testing.assert_close(max_pool(x, pool, "triton"), pool(x), rtol=0, atol=0)
    assert spied == []


def test_triton_runs_the_kernels_even_where_their_check_failed(spied, monkeypatch):
    # ALEXNET_POOL=triton is the user's choice: no check, no fallback (auto has them)
    monkeypatch.setitem(alexnet.model._TRITON, "pool_verified.cpu", False)
    x = torch.rand(1, 4, 9, 9).contiguous(memory_format=CL)
    max_pool(x, nn.MaxPool2d(3, 2), "triton")
    assert spied == [(3, 2)]
    max_pool(x, nn.MaxPool2d(3, 2), "auto")
    assert spied == [(3, 2)]


def test_auto_keeps_torchs_pool_off_cuda_even_with_the_check_passed(spied, monkeypatch):
    # auto is for CUDA tensors: a passed check on the CPU (the interpreter's) does not change it
    monkeypatch.setitem(alexnet.model._TRITON, "pool_verified.cpu", True)
    x = torch.rand(1, 4, 9, 9).contiguous(memory_format=CL)
    pool = nn.MaxPool2d(3, 2)
    torch.testing.assert_close(max_pool(x, pool, "auto"), pool(x), rtol=0, atol=0)
    assert spied == []


@needs_triton
def test_the_pool_check_is_not_the_lrn_checks(monkeypatch, capsys):
    # the LRN kernels verified on a device type say nothing of the pool's (here, on the CPU
    # without the interpreter, the pool's cannot launch: False, with its warning)
    monkeypatch.setitem(alexnet.model._TRITON, "verified.cpu", True)
    monkeypatch.delitem(alexnet.model._TRITON, "pool_verified.cpu", raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert triton_pool_verified(torch.device("cpu")) is False
    assert "the Triton max-pool on cpu failed" in capsys.readouterr().err


@needs_triton
def test_the_op_refuses_nchw_maps_and_windows_larger_than_a_side():
    # checked before any launch: a ValueError naming the layout, or the window and the sides
    m = triton_pool_module()
    with pytest.raises(ValueError, match="channels_last"):
        m.forward(torch.rand(1, 2, 9, 9), 3, 2)
    with pytest.raises(ValueError, match=r"kernel 3, stride 2 on \(2, 9\)"):
        m.forward(torch.rand(1, 2, 2, 9).contiguous(memory_format=CL), 3, 2)
