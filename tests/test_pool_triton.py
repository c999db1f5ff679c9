"""The Triton max-pool (alexnet/pool_triton.py) against torch's max_pool2d and a NumPy
evaluation, on CPU tensors through Triton's interpreter in a child process
(tests/_pool_interpret.py), so TRITON_INTERPRET never reaches the rest of the suite."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _interpret import ROOT, arrays, run_interpreted
from torch import nn

from alexnet.errors import UserError
from alexnet.model import max_pool, triton_pool_module, triton_pool_verified, use_triton_pool

CASES = {"conv1": (3, 2), "odd": (3, 2), "conv5": (3, 2), "plain2": (2, 2)}  # kernel, stride
KEYS = [f"{name}.{values}.{dtype}" for name in CASES for values in ("random", "ties")
        for dtype in ("float32", "bfloat16")]


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[str, np.ndarray]:
    out = tmp_path_factory.mktemp("pool") / "interpreted.npz"
    run_interpreted([str(ROOT / "tests" / "_pool_interpret.py"), str(out)])
    return arrays(out)


def pool_formula(x: np.ndarray, g: np.ndarray, k: int, s: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Max of each k x k window (stride s), the first maximum's position i k + j in scan
    order, and the input gradient: each output's gradient added to its maximum, in float64."""
    n, c, h, w = x.shape
    oh, ow = (h - k) // s + 1, (w - k) // s + 1
    windows = np.stack([x[:, :, i:i + s * oh:s, j:j + s * ow:s]
                        for i in range(k) for j in range(k)], axis=-1)  # (n, c, oh, ow, k*k)
    where = windows.argmax(-1)  # the first maximum
    grad = np.zeros_like(x)
    for q in range(k * k):
        i, j = divmod(q, k)
        grad[:, :, i:i + s * oh:s, j:j + s * ow:s] += np.where(where == q, g, 0.0)
    return windows.max(-1), where, grad


@pytest.mark.parametrize("key", KEYS)
def test_the_triton_pool_equals_the_formula_and_torch(results, key):
    name = key.split(".")[0]
    k, s = CASES[name]
    r = {n.removeprefix(f"{key}."): v for n, v in results.items() if n.startswith(f"{key}.")}
    y, where, grad = pool_formula(r["x"], r["g"], k, s)
    # the maxima, and (ties included) the window position each came from: torch's first max
    np.testing.assert_array_equal(r["y"], y)
    np.testing.assert_array_equal(r["idx"], where)
    np.testing.assert_array_equal(r["y"], r["torch_y"])
    assert r["layout_kept"]  # channels_last in and out, the positions one byte each
    if key.endswith("float32"):  # gradients routed as torch routes them, summed in its order
        np.testing.assert_array_equal(r["dx"], r["torch_dx"])
        np.testing.assert_allclose(r["dx"], grad, rtol=1e-6, atol=1e-6)
    else:  # summed in fp32 and rounded to bf16 once: within one bf16 step of the exact sum
        # (Triton's interpreter truncates to bf16 where the GPU rounds to nearest)
        np.testing.assert_allclose(r["dx"], grad, rtol=2 ** -7, atol=1e-6)


@pytest.mark.parametrize("name", ["fp64", "k12", "stride3"])
def test_pools_the_paper_net_does_not_make_equal_torchs(results, name):
    """fp64 maps keep fp64 maxima and gradients (maxima 1e-12 apart told apart), a 12 x 12
    window routes gradients from its positions past 127, and a stride longer than the
    window (pixels in no window) runs instead of raising: what model.max_pool sends to the
    kernels under ALEXNET_POOL=triton, or auto on a GPU."""
    r = {n.removeprefix(f"edge.{name}."): v for n, v in results.items()
         if n.startswith(f"edge.{name}.")}
    assert "error" not in r, str(r.get("error"))
    np.testing.assert_array_equal(r["y"], r["torch_y"])
    np.testing.assert_array_equal(r["dx"], r["torch_dx"])


def test_ties_are_there_to_be_broken(results):
    # small integers: most windows hold their maximum more than once
    x = results["conv1.ties.float32.x"]
    windows = np.stack([x[:, :, i:i + 12:2, j:j + 12:2] for i in range(3) for j in range(3)], -1)
    assert ((windows == windows.max(-1, keepdims=True)).sum(-1) > 1).mean() > 0.5


def test_the_net_with_the_triton_pool_equals_torchs_and_compiles(results):
    r = {k.removeprefix("net."): v for k, v in results.items() if k.startswith("net.")}
    np.testing.assert_array_equal(r["eager_y"], r["torch_y"])
    np.testing.assert_array_equal(r["eager_dx"], r["torch_dx"])
    # torch.compile(fullgraph=True) traced the op: no graph break, the same numbers
    np.testing.assert_allclose(r["compiled_y"], r["eager_y"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(r["compiled_dx"], r["eager_dx"], rtol=1e-4,
                               atol=1e-5 * np.abs(r["eager_dx"]).max())


def test_auto_is_the_default_and_runs_torchs_pool_off_cuda(monkeypatch):
    import alexnet.model

    pool = nn.MaxPool2d(3, 2)
    x = torch.rand(1, 4, 7, 7).contiguous(memory_format=torch.channels_last)
    assert alexnet.model.POOL_BACKEND == os.environ.get("ALEXNET_POOL", "auto")
    assert not use_triton_pool(x, pool, "auto")  # the kernels' auto is for CUDA tensors
    torch.testing.assert_close(max_pool(x, pool, "auto"), pool(x))
    torch.testing.assert_close(max_pool(x, pool, "torch"), pool(x))
    with pytest.raises(UserError, match="backend='fast': choose from auto, torch, triton"):
        max_pool(x, pool, "fast")  # the argument named, not ALEXNET_POOL, which is unset
    monkeypatch.setattr(alexnet.model, "POOL_BACKEND", "fast")
    with pytest.raises(UserError, match="ALEXNET_POOL='fast': choose from auto, torch, triton"):
        max_pool(x, pool)


def test_the_check_passes_where_the_kernels_run(results):
    assert results["verified.cpu"]  # under the interpreter: they ran and gave torch's values


def test_a_triton_pool_that_cannot_run_falls_back_with_one_warning(monkeypatch, capsys):
    from _fallback import cpu_check_warning

    if triton_pool_module() is None:
        pytest.skip("triton is not installed (pip install triton, Linux x86-64)")
    err = cpu_check_warning(triton_pool_verified, "pool_verified.cpu", monkeypatch, capsys)
    assert err.startswith("alexnet: warning: the Triton max-pool on cpu failed (")
    assert "using nn.MaxPool2d" in err


def test_a_pool_kernel_wrong_in_bf16_alone_fails_the_check():
    """The first-use check ran fp32 maps only, while mixed-precision training pools bf16 maps
    (gradients summed in fp32 and rounded to bf16): a backward 5% off in bf16 alone passed it.
    Now the check also runs bf16 and falls back to nn.MaxPool2d, with one warning."""
    if triton_pool_module() is None:
        pytest.skip("triton is not installed (pip install triton, Linux x86-64)")
    from _fallback import interpreted_check

    out = interpreted_check(
        "import alexnet.pool_triton as m\n"
        "launch = m._launch\n"
        "def wrong_in_bf16(kernel, args, k, s):\n"
        "    launch(kernel, args, k, s)\n"
        "    if kernel is m._max_pool_backward_kernel and args[2].dtype == torch.bfloat16:\n"
        "        args[2].mul_(1.05)\n"
        "m._launch = wrong_in_bf16\n", "triton_pool_verified")
    assert out.startswith("False\nalexnet: warning: the Triton max-pool on cpu differs from "
                          "torch's max_pool2d"), out
    assert out.count("\n") == 2  # one warning line


def test_what_the_kernels_do_not_take_runs_torchs_pool(monkeypatch):
    # NCHW tensors, padded or ceil-mode pools: nn.MaxPool2d itself, even with triton chosen
    import alexnet.model

    monkeypatch.setitem(alexnet.model._TRITON, "pool", None)  # as if triton were missing
    x = torch.rand(2, 4, 9, 9)
    for pool in (nn.MaxPool2d(3, 2), nn.MaxPool2d(3, 2, padding=1),
                 nn.MaxPool2d(3, 2, ceil_mode=True)):
        torch.testing.assert_close(max_pool(x, pool, "triton"), pool(x))
    cl = x.contiguous(memory_format=torch.channels_last)
    with pytest.raises(UserError, match="ALEXNET_POOL=triton: triton does not import"):
        max_pool(cl, nn.MaxPool2d(3, 2), "triton")


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the CUDA test compiles them")
@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
def test_the_pool_kernels_move_16_bytes_per_access_on_a_hopper_gpu(dtype):
    # compiled for an H100/H200 (sm_90) here: every global load and store of the maps, the
    # gradients and the one-byte positions is a 16-byte access
    if triton_pool_module() is None:
        pytest.skip("triton is not installed (pip install triton, Linux x86-64)")
    import inspect

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if "constexprs" not in inspect.signature(ASTSource.__init__).parameters:
        pytest.skip("this triton's ASTSource predates constexprs by name")
    m = triton_pool_module()
    consts = {"K": 3, "S": 2, "BLOCK_P": m.BLOCK_PIXELS, "BLOCK_C": 32, "EVEN_C": True,
              "COMPUTE": triton.language.float32}
    for kernel in (m._max_pool_forward_kernel, m._max_pool_backward_kernel):
        signature, attrs, const = {}, {}, {}
        for i, name in enumerate(kernel.arg_names):
            if name in consts:
                signature[name], const[name] = "constexpr", consts[name]
            elif name.endswith("_ptr"):
                signature[name] = "*i8" if name == "idx_ptr" else f"*{dtype}"
                attrs[(i,)] = [["tt.divisibility", 16]]
            else:
                signature[name] = "i32"
                if name == "C":  # 96 and 256 maps
                    attrs[(i,)] = [["tt.divisibility", 16]]
        compiled = triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=const,
                                            attrs=attrs),
                                  target=GPUTarget("cuda", 90, 32),
                                  options={"num_warps": m.NUM_WARPS})
        accesses = re.findall(r"\b(?:ld|st)\.global(?:\.\w+)*", compiled.asm["ptx"])
        assert accesses and all(".v4.b32" in a for a in accesses), accesses


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_pool_on_cuda_equals_torchs(dtype):
    if triton_pool_module() is None:
        pytest.skip("triton does not import here")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 96, 55, 55, generator=gen).to(dtype).cuda()
    x = x.contiguous(memory_format=torch.channels_last)
    g = torch.randn(4, 96, 27, 27, generator=gen).to(dtype).cuda()
    got, want = (x.clone().requires_grad_() for _ in range(2))
    y = max_pool(got, nn.MaxPool2d(3, 2), "triton")
    y.backward(g)
    ref = F.max_pool2d(want, 3, 2)
    ref.backward(g)
    assert torch.equal(y, ref) and y.is_contiguous(memory_format=torch.channels_last)
    tol = 0 if dtype == torch.float32 else 2 ** -7  # torch may sum ties' gradients in bf16
    torch.testing.assert_close(got.grad.float(), want.grad.float(), rtol=tol, atol=tol)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_auto_picks_the_triton_pool_on_cuda_after_its_check():
    if triton_pool_module() is None:
        pytest.skip("triton does not import here")
    assert triton_pool_verified(torch.device("cuda"))  # compiled, ran and agreed
    maps = torch.zeros(2, 96, 13, 13, device="cuda").contiguous(memory_format=torch.channels_last)
    assert use_triton_pool(maps, nn.MaxPool2d(3, 2), "auto")
    assert not use_triton_pool(maps.contiguous(), nn.MaxPool2d(3, 2), "auto")  # NCHW: torch's


@pytest.mark.parametrize("window", ["k3s2", "k2s2"])
@pytest.mark.parametrize("ties", [0, 1])
def test_higher_derivatives_through_the_kernels_equal_torchs(results, window, ties) -> None:
    """Under create_graph the kernels' backward is recorded by autograd (linear in the
    outputs' gradient g; its adjoint reads each window's chosen pixel), so second and third
    derivatives in g and x equal nn.MaxPool2d's (float64, overlapping windows, ties going to
    the first maximum in both). Before, a second derivative raised; with once_differentiable
    it lacked the pool's term."""
    key = f"double.{window}.ties{ties}"
    for name in ("grad", "d2x", "d2g", "d3g"):
        got, want = (results[f"{key}.{side}.{name}"] for side in ("triton", "torch"))
        assert np.abs(want).max() > 0, name
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14, err_msg=name)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_second_derivatives_of_the_triton_pool_on_cuda_equal_torchs():
    """On the GPU too: second derivatives through the kernels' backward (in the outputs'
    gradient g and in x) equal nn.MaxPool2d's on the same channels_last input."""
    if triton_pool_module() is None:
        pytest.skip("triton does not import here")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, 13, 13, generator=gen).cuda().contiguous(
        memory_format=torch.channels_last)
    g = torch.randn(2, 16, 6, 6, generator=gen).cuda().contiguous(
        memory_format=torch.channels_last)
    results = []
    for backend in ("triton", "torch"):
        xi, gi = x.clone().requires_grad_(), g.clone().requires_grad_()
        (dx,) = torch.autograd.grad(max_pool(xi, nn.MaxPool2d(3, 2), backend), xi, gi,
                                    create_graph=True)
        results.append([dx.detach(), *torch.autograd.grad((dx ** 2 * xi.cos()).sum(),
                                                          (xi, gi))])
    for got, want in zip(*results, strict=True):
        assert want.abs().max() > 0
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
