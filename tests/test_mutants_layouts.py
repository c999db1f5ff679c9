"""Checks that kill wrong computations the Triton LRN tests let through in its layouts
(mutation audits of alexnet/lrn_triton.py's halo kernels and helpers; the band and gather
kernels, `_row_sums`, `_band_shape` and `_launch_band`; the tile kernels and their
launcher), each against NumPy's evaluation of the formula, the kernels run through
Triton's interpreter in one child process, as in tests/test_lrn_triton.py (TRITON_INTERPRET
must be set before triton is imported).

- tests/test_lrn_triton.py runs the halo kernels only with the paper's n = 5 and
  beta = 3/4 on fp32, bf16 and fp16 maps, and band and gather only with beta = 3/4: its n =
  3, beta != 3/4 and float64 cases are NCHW tensors or columns of 7 maps, which take the
  tile kernels. So a kernel wrong for n = 3 (one map of halo, the 1-lane loads), for another
  beta (the exp2/log2 powers; a launch that took the rsqrt powers of 3/4 for every beta) or
  in float64 (the sums rounded to fp32) passed. Here each of those cases is a channels_last
  tensor whose columns are whole 16-byte groups, so that ALEXNET_LRN_LAYOUT runs each
  layout's own kernels (band not in float64: it takes tile there).
- It gives the kernels only contiguous maps, so a launcher that passed a view's storage as
  if it were contiguous passed: the tile kernels run here on two views.
- Two things the interpreter cannot show: that band and gather each launch their own window
  sums (their results agree either way), and that the band block is at least tl.dot's least
  (16): the interpreter takes any block, only the GPU compiler refuses."""

from __future__ import annotations

import numpy as np
import pytest
from _interpret import HAS_TRITON, arrays, case, run_interpreted
from _lrn_formula import lrn_formula

from alexnet import paper

CHILD = r"""
import sys
import traceback
import numpy as np
import torch
import alexnet.lrn_triton as m
from alexnet.model import lrn

LAYOUTS = ("halo", "band", "gather")
gen = torch.Generator().manual_seed(0)
cl = torch.channels_last


def run(x, g, b, n, alpha, beta, k, relu):
    # the kernels' output and gradients (x's, and the bias's when given), channels_last
    xi = x.contiguous(memory_format=cl).requires_grad_()
    bi = None if b is None else b.clone().requires_grad_()
    y = lrn(xi, n, alpha, beta, k, groups=2, backend="triton", relu=relu, bias=bi)
    y.backward(g.to(x.dtype).contiguous(memory_format=cl))
    out = dict(x=x.double().numpy(), g=g.double().numpy(), y=y.detach().double().numpy(),
               dx=xi.grad.double().numpy(), kernels=np.array(m._kernels_for(xi, 2)))
    if b is not None:
        out.update(b=b.double().numpy(), db=bi.grad.double().numpy())
    return out


def n3():
    # fp32, n = 3 (one map of halo each side), columns of 8 maps (2 groups of 4), the bias
    # and ReLU folded in
    x = torch.rand(2, 16, 2, 3, generator=gen) * 600 - 300
    g = torch.randn(x.shape, generator=gen)
    b = torch.rand(16, generator=gen) * 200 - 100
    return run(x, g, b, 3, 1e-4, 0.75, 2.0, True)


def fp64():
    # fp64, columns of 6 maps (3 groups of 2: the column's last group lane masked), the bias
    # and ReLU folded in
    x = torch.rand(2, 12, 2, 3, generator=gen, dtype=torch.float64) * 600 - 300
    g = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    b = torch.rand(12, generator=gen, dtype=torch.float64) * 200 - 100
    return run(x, g, b, 5, 1e-4, 0.75, 2.0, True)


def beta():
    # fp32, beta = 0.6 (the exp2/log2 powers), alpha and k other than the paper's; a positive
    # bias without the ReLU (a bias added outside the column shows whatever its sign)
    x = torch.rand(1, 16, 2, 2, generator=gen) * 300
    g = torch.randn(x.shape, generator=gen)
    b = torch.rand(16, generator=gen) * 50 + 10
    return run(x, g, b, 5, 1e-3, 0.6, 1.5, False)


def run_view(x, g, b):
    # the tile kernels' output and gradients of x and the bias (ReLU and bias folded in), x
    # as given (its strides kept)
    xi = x.detach().requires_grad_()
    bi = b.clone().requires_grad_()
    y = lrn(xi, groups=2, backend="triton", relu=True, bias=bi)
    y.backward(g)
    return dict(x=x.detach().double().numpy(), g=g.double().numpy(), b=b.double().numpy(),
                y=y.detach().double().numpy(), dx=xi.grad.double().numpy(),
                db=bi.grad.double().numpy(), kernels=np.array(m._kernels_for(x, 2)))


def strided():
    # fp32 NCHW maps that are every other pixel of a row of wider ones: a view neither
    # NCHW- nor channels_last-contiguous (its W stride 2)
    wide = torch.rand(2, 8, 3, 6, generator=gen) * 600 - 300
    x = wide[:, :, :, ::2]
    return run_view(x, torch.randn(x.shape, generator=gen),
                    torch.rand(8, generator=gen) * 200 - 100)


def channel_slice():
    # fp32 channels_last maps, the first 8 of 12: the channel stride 1, the pixel stride 12
    wide = (torch.rand(1, 12, 2, 3, generator=gen) * 600 - 300).contiguous(memory_format=cl)
    x = wide[:, :8]
    return run_view(x, torch.randn(x.shape, generator=gen),
                    torch.rand(8, generator=gen) * 200 - 100)


def cases():
    # (name, layout, case) of every run
    for layout in LAYOUTS:
        for case in (n3, fp64, beta):
            if not (layout == "band" and case is fp64):  # band takes tile in float64
                yield f"{layout}.{case.__name__}", layout, case
    for case in (strided, channel_slice):
        yield f"tile.{case.__name__}", "tile", case


out = {}
for name, layout, case in cases():
    m.LAYOUT = layout
    gen.manual_seed(0)
    try:  # each on its own: one failing leaves the others' results
        out.update({f"{name}.{k}": v for k, v in case().items()})
    except Exception:
        out[f"{name}.error"] = np.array(traceback.format_exc())
np.savez(sys.argv[1], **out)
"""


def formula(x: np.ndarray, g: np.ndarray, bias: np.ndarray | None, n: int, alpha: float,
            beta: float, k: float, relu: bool, groups: int = 2
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The LRN of a = x + bias (ReLU'd with `relu`; tests/_lrn_formula.py): output, x's
    gradient for the output gradient g (0 where the ReLU is off) and the bias's (its sum
    over images and pixels)."""
    z = x if bias is None else x + bias[None, :, None, None]
    y, grad = lrn_formula(np.maximum(z, 0) if relu else z, g, groups, n, alpha, beta, k)
    if relu:
        grad = np.where(z > 0, grad, 0.0)
    return y, grad, grad.sum((0, 2, 3))


@pytest.fixture(scope="module")
def layout_results(tmp_path_factory) -> dict[str, np.ndarray]:
    """The child's arrays: each case's inputs, outputs, gradients and the layout that ran."""
    path = tmp_path_factory.mktemp("layouts") / "out.npz"
    run_interpreted(["-c", CHILD, str(path)], timeout=300, ALEXNET_LRN="triton")
    return arrays(path)


@pytest.mark.parametrize("layout", ["halo", "band", "gather"])
def test_a_window_of_3_maps_equals_the_formula(layout_results, layout: str) -> None:
    """n = 3 (one map of halo on each side of a thread's group, loaded one lane wide) on fp32
    columns of 8 maps (2 groups of 4), the conv's bias and ReLU folded in: the layout's
    kernels run and give the formula's output and gradients, at both edges of both columns."""
    r = case(layout_results, f"{layout}.n3")
    assert r["kernels"] == layout
    z = r["x"] + r["b"][None, :, None, None]
    assert (z > 0).any() and (z < 0).any()  # both sides of the ReLU
    want = formula(r["x"], r["g"], r["b"], 3, paper.LRN_ALPHA, paper.LRN_BETA, paper.LRN_K,
                   relu=True)
    for key, ref, rtol in zip(("y", "dx", "db"), want, (2e-6, 1e-5, 1e-5), strict=True):
        np.testing.assert_allclose(r[key], ref, rtol=rtol, atol=rtol * np.abs(ref).max())


@pytest.mark.parametrize("layout", ["halo", "gather"])
def test_the_layout_is_exact_in_float64(layout_results, layout: str) -> None:
    """fp64 columns of 6 maps (3 groups of 2, the fourth group lane past the column), the
    bias and ReLU folded in: the layout's kernels run and give the formula to fp64 rounding
    (sums kept in fp64: any value passed through fp32 is 1e-8 off)."""
    r = case(layout_results, f"{layout}.fp64")
    assert r["kernels"] == layout
    want = formula(r["x"], r["g"], r["b"], paper.LRN_N, paper.LRN_ALPHA, paper.LRN_BETA,
                   paper.LRN_K, relu=True)
    for key, ref in zip(("y", "dx", "db"), want, strict=True):
        np.testing.assert_allclose(r[key], ref, rtol=1e-12, atol=1e-12 * np.abs(ref).max())


@pytest.mark.parametrize("layout", ["halo", "band", "gather"])
def test_a_beta_other_than_the_papers_equals_the_formula(layout_results, layout: str) -> None:
    """beta = 0.6, alpha = 1e-3, k = 1.5 (the kernels' exp2/log2 powers, not the rsqrt ones
    of beta = 3/4) on fp32 columns of 8 maps with a positive bias folded in (no ReLU): the
    layout's kernels run and give the formula's output and gradients; the window beyond a
    column's edges holds 0, not those maps' biases."""
    r = case(layout_results, f"{layout}.beta")
    assert r["kernels"] == layout
    want = formula(r["x"], r["g"], r["b"], 5, 1e-3, 0.6, 1.5, relu=False)
    for key, ref, rtol in zip(("y", "dx", "db"), want, (2e-6, 1e-5, 1e-5), strict=True):
        np.testing.assert_allclose(r[key], ref, rtol=rtol, atol=rtol * np.abs(ref).max())


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
@pytest.mark.parametrize("cg", [1, 3, 6, 7, 8, 15, 16, 17, 48, 64, 128])
def test_the_band_block_holds_the_column_and_is_at_least_tl_dots_least(cg: int) -> None:
    """The band block of a column of cg maps: a power of two, at least cg and at least 16
    (tl.dot's least dimension: the GPU compiler refuses a smaller product; the interpreter,
    which runs the other tests, takes any), BAND_BLOCK_P pixels, 4 or 8 warps."""
    from alexnet.model import triton_lrn_module

    m = triton_lrn_module()
    block_p, block_c, num_warps = m._band_shape(cg)
    assert block_c >= max(cg, 16) and block_c & (block_c - 1) == 0
    assert block_c < 2 * max(cg, 16)  # the column rounded up, no further
    assert block_p == m.BAND_BLOCK_P and num_warps in (4, 8)


class _Recorder:
    """A stand-in for a Triton kernel: records each launch's grid and keyword arguments."""

    def __init__(self) -> None:
        self.launches: list[tuple[tuple[int, ...], dict[str, object]]] = []

    def __getitem__(self, grid: tuple[int, ...]):
        """kernel[grid](...): the launch, recorded instead of run."""
        def launch(*args: object, **kwargs: object) -> None:
            self.launches.append((grid, kwargs))
        return launch


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
@pytest.mark.parametrize("layout", ["band", "gather"])
@pytest.mark.parametrize("beta", [0.75, 0.6])
def test_each_band_layout_launches_its_own_window_sums(monkeypatch, layout: str,
                                                       beta: float) -> None:
    """The band and gather layouts share their kernels: each direction's launch passes
    GATHER for gather alone (band's product, gather's exact sums: the interpreter's results
    agree either way), the rsqrt powers for beta = 3/4 alone, a program per 64 pixels and
    column, and the column rounded up to a power of two of at least 16 maps."""
    import torch

    from alexnet.model import triton_lrn_module

    m = triton_lrn_module()
    forward, backward = _Recorder(), _Recorder()
    monkeypatch.setattr(m, "_lrn_forward_band_kernel", forward)
    monkeypatch.setattr(m, "_lrn_backward_band_kernel", backward)
    a = torch.zeros((2, 12, 5, 7)).contiguous(memory_format=torch.channels_last)
    bias = torch.zeros(12)
    m._forward_launch(layout, a, torch.empty_like(a), 2, 2, 1e-4, beta, 2.0, True, bias)
    m._backward_launch(layout, a, a, torch.empty_like(a), 2, 2, 1e-4, beta, 2.0, True, bias)
    for recorder in (forward, backward):
        ((grid, kwargs),) = recorder.launches
        assert grid == (-(-2 * 5 * 7 // 64), 2)
        assert kwargs["GATHER"] == (layout == "gather")
        assert kwargs["BETA_3_4"] == (beta == 0.75)
        assert kwargs["BLOCK_C"] == 16 and kwargs["BIAS"] and kwargs["RELU"]


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
@pytest.mark.parametrize("dtype,group", [("bfloat16", 8), ("float32", 4)])
def test_halo2_launches_the_halo_kernels_on_programs_twice_as_long(monkeypatch, dtype: str,
                                                                   group: int) -> None:
    """halo and halo2 run the same kernels with the same warps: halo a program per
    HALO_TILE elements (conv1's column of 48 maps, its 16-byte groups rounded up to 8
    or 16: 32 pixels), halo2 per twice that (64 pixels, half the programs), each direction;
    so the interpreter's results, equal for both, test both."""
    import torch

    from alexnet.model import triton_lrn_module

    m = triton_lrn_module()
    a = torch.zeros((2, 96, 11, 13), dtype=getattr(torch, dtype)).contiguous(
        memory_format=torch.channels_last)
    launches = {}
    for layout in ("halo", "halo2"):
        forward, backward = _Recorder(), _Recorder()
        monkeypatch.setattr(m, "_lrn_forward_halo_kernel", forward)
        monkeypatch.setattr(m, "_lrn_backward_halo_kernel", backward)
        m._forward_launch(layout, a, torch.empty_like(a), 2, 2, 1e-4, 0.75, 2.0, True, None)
        m._backward_launch(layout, a, a, torch.empty_like(a), 2, 2, 1e-4, 0.75, 2.0, True,
                           None)
        (launches[layout, "forward"],) = forward.launches
        (launches[layout, "backward"],) = backward.launches
    ng = 64 // group  # 48 maps: 6 groups of 8 bf16 (8 rounded up), 12 of 4 fp32 (16)
    for direction in ("forward", "backward"):
        for layout, block_p in (("halo", 2048 // (ng * group)), ("halo2", 4096 // (ng * group))):
            grid, kwargs = launches[layout, direction]
            assert grid == (-(-2 * 11 * 13 // block_p), 2)
            assert (kwargs["BLOCK_P"], kwargs["G"], kwargs["NG"]) == (block_p, group, ng)
            assert kwargs["num_warps"] == m.HALO_NUM_WARPS == 8


@pytest.mark.parametrize("name", ["strided", "channel_slice"])
def test_the_tile_kernels_on_a_non_contiguous_view_equal_the_formula(layout_results,
                                                                     name: str) -> None:
    """A view that is neither NCHW- nor channels_last-contiguous (every other pixel of a
    row; the first maps of channels_last ones), the bias and ReLU folded in: the tile
    kernels give the formula's output and gradients (the launcher reads the view's values,
    not its storage as if it were contiguous)."""
    r = case(layout_results, f"tile.{name}")
    assert r["kernels"] == "tile"
    z = r["x"] + r["b"][None, :, None, None]
    assert (z > 0).any() and (z < 0).any()  # both sides of the ReLU
    want = formula(r["x"], r["g"], r["b"], paper.LRN_N, paper.LRN_ALPHA, paper.LRN_BETA,
                   paper.LRN_K, relu=True)
    for key, ref in zip(("y", "dx", "db"), want, strict=True):
        np.testing.assert_allclose(r[key], ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
