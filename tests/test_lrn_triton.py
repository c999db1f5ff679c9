"""The fused Triton LRN (alexnet/lrn_triton.py) against the paper's formula, evaluated here in
NumPy, and against the torch path; run on CPU tensors through Triton's interpreter in a child
process (tests/_lrn_interpret.py), so TRITON_INTERPRET never reaches the rest of the suite."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _interpret import HAS_TRITON, ROOT, interpreter_env

from alexnet import paper
from alexnet.errors import UserError
from alexnet.model import lrn, triton_lrn_module, triton_lrn_verified, use_triton_lrn

# name: (groups, n); "blocks" spans 3 channel blocks per column and several pixel blocks,
# "runs" (conv2's 128 maps a column) 4 channel blocks of the tile forward, 16 halo groups
CASES = {"paper": (2, paper.LRN_N), "one_column_n3": (1, 3), "blocks": (2, paper.LRN_N),
         "runs": (2, paper.LRN_N)}
ALPHA, BETA, K = paper.LRN_ALPHA, paper.LRN_BETA, paper.LRN_K
# key prefixes of the kernels: the tile layout (with its twophase backward), the band,
# gather, halo and halo2 layouts (ALEXNET_LRN_LAYOUT=band, ...: their own forward and
# backward)
VARIANTS = ["", "band.", "gather.", "halo.", "halo2."]


def interpret(folder: Path, *parts: str) -> dict[str, np.ndarray]:
    """Run tests/_lrn_interpret.py's `parts` in children side by side (the interpreter is
    single-threaded: two halves take about half the time on 2 cores); their arrays."""
    if not HAS_TRITON:
        pytest.skip("triton is not installed (pip install triton, Linux x86-64)")
    env = interpreter_env(ALEXNET_LRN="triton")
    script = ROOT / "tests" / "_lrn_interpret.py"
    children = {}  # stderr to files: a full pipe would stall one child while we wait on another
    for part in parts:
        with open(folder / f"{part}.err", "w") as err:
            children[part] = subprocess.Popen(
                [sys.executable, str(script), str(folder / f"{part}.npz"), part], env=env,
                stdout=subprocess.DEVNULL, stderr=err)
    results: dict[str, np.ndarray] = {}
    try:
        for part, child in children.items():
            child.wait(timeout=600)
            err = (folder / f"{part}.err").read_text()
            assert child.returncode == 0, f"{part}: {err[-3000:]}"
            with np.load(folder / f"{part}.npz") as z:
                results.update(z)
    finally:
        for child in children.values():
            child.kill()
            child.wait()
    return results


@pytest.fixture(scope="module")
def kernel_results(tmp_path_factory) -> dict[str, np.ndarray]:
    return interpret(tmp_path_factory.mktemp("lrn"), "kernels-a", "kernels-b")


@pytest.fixture(scope="module")
def edge_results(tmp_path_factory) -> dict[str, np.ndarray]:
    return interpret(tmp_path_factory.mktemp("lrn"), "edges")


def window(c: int, channels: int, n: int, groups: int) -> range:
    """The maps in channel c's window: c-n//2..c+n//2, clipped at its column's edges."""
    per = channels // groups
    start = (c // per) * per
    return range(max(start, c - n // 2), min(start + per - 1, c + n // 2) + 1)


def formula(a: np.ndarray, g: np.ndarray, n: int, groups: int) -> tuple[np.ndarray, np.ndarray]:
    """b_i = a_i s_i^-beta, s_i = k + alpha sum_{j in window(i)} a_j^2 (section 3.3), and
    its gradient: db_i/da_m = [i == m] s_i^-beta - 2 alpha beta a_i a_m s_i^(-beta-1)
    for m in window(i), so grad_m = sum_i g_i db_i/da_m."""
    channels = a.shape[1]
    s = np.stack([K + ALPHA * sum(a[:, j] ** 2 for j in window(i, channels, n, groups))
                  for i in range(channels)], axis=1)
    b = a * s ** -BETA
    grad = g * s ** -BETA
    for i in range(channels):
        for m in window(i, channels, n, groups):
            grad[:, m] -= 2 * ALPHA * BETA * g[:, i] * a[:, i] * a[:, m] * s[:, i] ** (-BETA - 1)
    return b, grad


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("layout", ["nchw", "cl"])
@pytest.mark.parametrize("name", list(CASES))
def test_triton_lrn_equals_the_formula_fp32(kernel_results, name, layout, variant):
    r, (groups, n) = kernel_results, CASES[name]
    b, grad = formula(r[f"{name}.x"].astype(np.float32).astype(np.float64),
                      r[f"{name}.g"].astype(np.float32).astype(np.float64), n, groups)
    key = f"{name}.{layout}.float32"
    y, dx = r[f"{variant}{key}.y"], r[f"{variant}{key}.dx"]
    np.testing.assert_allclose(y, b, rtol=2e-6, atol=1e-6)
    np.testing.assert_allclose(dx, grad, rtol=1e-5, atol=1e-6)
    assert r[f"{variant}{key}.layout_kept"]  # channels_last in, channels_last out (and grad)
    # today's torch path gives the same numbers, to fp32 rounding
    np.testing.assert_allclose(y, r[f"{key}.torch_y"], rtol=2e-6, atol=1e-6)
    np.testing.assert_allclose(dx, r[f"{key}.torch_dx"], rtol=1e-5, atol=1e-6)


def test_the_halo_layouts_run_where_a_column_is_whole_16_byte_groups(kernel_results):
    # channels_last columns of 48 and 128 maps (8 bf16 or 4 fp32 per 16 bytes) take the halo
    # kernels (so the tests above checked them); columns of 6 and 7 maps and NCHW the tile ones
    r = kernel_results
    for dtype in ("float32", "bfloat16"):
        for layout in ("halo", "halo2"):  # the same tensors
            for name in ("blocks", "runs"):
                assert r[f"{layout}.{name}.cl.{dtype}.kernels"] == layout
                assert r[f"{layout}.{name}.nchw.{dtype}.kernels"] == "tile"
            for name in ("paper", "one_column_n3"):
                assert r[f"{layout}.{name}.cl.{dtype}.kernels"] == "tile"
        assert r[f"blocks.cl.{dtype}.kernels"] == "tile"
        for name in CASES:  # band and gather: any channels_last column, not NCHW
            for layout in ("band", "gather"):
                assert r[f"{layout}.{name}.cl.{dtype}.kernels"] == layout
                assert r[f"{layout}.{name}.nchw.{dtype}.kernels"] == "tile"


# tests/_lrn_interpret.py's edges(): name, what layout ALEXNET_LRN_LAYOUT=halo gives it
EDGES = {"w1_nchw": "tile", "w1_cl": "halo", "nan": "halo", "fp16_nchw": "tile",
         "fp16_cl": "halo"}


@pytest.mark.parametrize("variant", ["twophase", "band", "gather", "halo", "halo2"])
@pytest.mark.parametrize("name", list(EDGES))
def test_triton_lrn_on_unusual_inputs_equals_the_torch_path(edge_results, name, variant):
    """Maps one pixel wide whose W stride is not the pixel stride (contiguous all the same,
    the kernels read their pixels at h W + w), NaN through the folded ReLU (it stays NaN,
    and its gradient where x <= 0 is 0, as torch's ReLU), fp16 in NCHW and channels_last."""
    r = edge_results
    want_y, want_dx = r[f"{name}.torch_y"], r[f"{name}.torch_dx"]
    y, dx = r[f"{variant}.{name}.y"], r[f"{variant}.{name}.dx"]
    rtol = 2e-3 if name.startswith("fp16") else 1e-5  # fp16 keeps 11 significant bits
    np.testing.assert_allclose(y, want_y, rtol=rtol, atol=1e-6)  # NaN where torch's is
    np.testing.assert_allclose(dx, want_dx, rtol=rtol,
                               atol=rtol * np.nanmax(np.abs(want_dx)))
    if variant in ("halo", "halo2"):  # where the columns are whole 16-byte groups
        assert r[f"{variant}.{name}.kernels"] == EDGES[name].replace("halo", variant)
    if name == "nan":  # the NaN reached its window's outputs; the net would see it
        assert np.isnan(y[0, :4, 0, 1]).all() and not np.isnan(y[0, 4:]).any()


def test_auto_runs_the_layout_it_chose_for_each_direction(kernel_results):
    """With band's forward and gather's backward fastest on the stand-in clock, auto's output
    is band's bit for bit and its gradients gather's, and all equal tile's to fp32 rounding
    (tests/_lrn_interpret.py's `auto`: conv1's columns, bias and ReLU folded in)."""
    r = kernel_results
    assert list(r["auto.chosen"]) == ["band", "gather"]
    np.testing.assert_array_equal(r["auto.auto.y"], r["auto.band.y"])
    for key in ("dx", "db"):
        np.testing.assert_array_equal(r[f"auto.auto.{key}"], r[f"auto.gather.{key}"])
    # the layouts do differ in their last bits, so the equalities above say which ran
    assert not np.array_equal(r["auto.band.y"], r["auto.tile.y"])
    assert not np.array_equal(r["auto.gather.dx"], r["auto.tile.dx"])
    for key in ("y", "dx", "db"):
        np.testing.assert_allclose(r[f"auto.auto.{key}"], r[f"auto.tile.{key}"], rtol=1e-4,
                                   atol=1e-4 * np.abs(r[f"auto.tile.{key}"]).max())


def test_the_column_edges_matter(kernel_results):
    # the same input normalised as one column differs at the maps next to the column border
    r = kernel_results
    a = r["paper.x"].astype(np.float32).astype(np.float64)
    one_column, _ = formula(a, a, paper.LRN_N, 1)
    assert not np.allclose(r["paper.nchw.float32.y"][:, 4:8], one_column[:, 4:8], rtol=1e-4)
    np.testing.assert_allclose(r["paper.nchw.float32.y"][:, :4], one_column[:, :4], rtol=2e-6)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("layout", ["nchw", "cl"])
def test_relu_folded_into_the_kernel_is_relu_then_lrn(kernel_results, layout, variant):
    r = kernel_results
    x, g = r["relu.x"].astype(np.float32).astype(np.float64), r["relu.g"].astype(np.float32)
    b, grad = formula(np.maximum(x, 0), g.astype(np.float64), paper.LRN_N, 2)
    grad = np.where(x > 0, grad, 0.0)  # ReLU's gradient: 0 where x <= 0, at 0 too
    dx = r[f"{variant}relu.{layout}.dx"]
    np.testing.assert_allclose(r[f"{variant}relu.{layout}.y"], b, rtol=2e-6, atol=1e-6)
    np.testing.assert_allclose(dx, grad, rtol=1e-5, atol=1e-6)
    assert (x[0, :, 0, 0] == 0).all() and (dx[0, :, 0, 0] == 0).all()


# bf16 stores 8 significant bits: inputs and outputs are each rounded once (2^-8 relative
# each), the sums are fp32, so the result is within 1% of the formula on the rounded input
BF16_RTOL = 1e-2


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("layout", ["nchw", "cl"])
def test_the_conv_bias_folded_into_the_kernel_is_bias_then_relu_then_lrn(kernel_results,
                                                                         layout, variant,
                                                                         dtype):
    """lrn(x, relu=True, bias=b), what the net runs for conv1 and conv2 on the GPU (cuDNN
    leaves the bias add to a pass of its own), is the paper's LRN of ReLU(x + b): the
    formula in NumPy on the same (rounded) inputs; x's gradient through the ReLU, and b's the
    sum of that over images and pixels. fp32 bias with fp32 or bf16 maps (mixed precision)."""
    r = kernel_results
    x = torch.from_numpy(r["relu.x"]).to(getattr(torch, dtype)).double().numpy()
    g = torch.from_numpy(r["relu.g"]).to(getattr(torch, dtype)).double().numpy()
    bias = r["bias.b"].astype(np.float32).astype(np.float64)
    z = x + bias[None, :, None, None]
    b, grad = formula(np.maximum(z, 0), g, paper.LRN_N, 2)
    grad = np.where(z > 0, grad, 0.0)
    key = f"{variant}bias.{layout}.{dtype}"
    y, dx, db = r[f"{key}.y"], r[f"{key}.dx"], r[f"{key}.db"]
    if dtype == "float32":
        np.testing.assert_allclose(y, b, rtol=2e-6, atol=1e-6)
        np.testing.assert_allclose(dx, grad, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(db, grad.sum((0, 2, 3)), rtol=1e-5, atol=1e-5)
    else:  # the sum x + b is not rounded to bf16 (the kernel adds in fp32), only y and dx
        np.testing.assert_allclose(y, b, rtol=BF16_RTOL)
        scale = np.abs(grad).max()
        np.testing.assert_allclose(dx, grad, rtol=BF16_RTOL, atol=BF16_RTOL * scale)
        # the bias's gradient is summed from the bf16 dx in fp32: dx's sum exactly, and the
        # formula's within the tolerance of each of its 40 terms (2 images x 20 pixels)
        np.testing.assert_allclose(db, dx.sum((0, 2, 3)), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(db, grad.sum((0, 2, 3)), rtol=BF16_RTOL,
                                   atol=BF16_RTOL * scale * 40)
    assert (z <= 0).any() and (z > 0).any()  # both sides of the ReLU were reached
    want = {"": "tile",
            "band.": "band" if layout == "cl" else "tile",
            "gather.": "gather" if layout == "cl" else "tile",
            "halo.": "halo" if layout == "cl" else "tile",
            "halo2.": "halo2" if layout == "cl" else "tile"}[variant]
    assert r[f"{key}.kernels"] == want


# (the twophase backward also rounds each u_c = g_c a_c s_c^(-beta-1) to bf16 once)
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("layout", ["nchw", "cl"])
@pytest.mark.parametrize("name", ["paper", "blocks", "runs"])
def test_triton_lrn_bf16_within_tolerance(kernel_results, name, layout, variant):
    r = kernel_results
    bf16 = torch.from_numpy(r[f"{name}.x"]).bfloat16().double().numpy()
    g16 = torch.from_numpy(r[f"{name}.g"]).bfloat16().double().numpy()
    b, grad = formula(bf16, g16, paper.LRN_N, 2)
    key = f"{variant}{name}.{layout}.bfloat16"
    np.testing.assert_allclose(r[f"{key}.y"], b, rtol=BF16_RTOL)
    scale = np.abs(grad).max()
    np.testing.assert_allclose(r[f"{key}.dx"], grad, rtol=BF16_RTOL, atol=BF16_RTOL * scale)


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_beta_other_than_the_papers_equals_the_torch_path(kernel_results, variant):
    # beta = 3/4 runs as rsqrt and sqrt, any other beta as exp2(-beta log2 s)
    r = {k.removeprefix(f"{variant}beta06."): v for k, v in kernel_results.items()
         if k.startswith(f"{variant}beta06.")}
    np.testing.assert_allclose(r["triton.y"], r["torch.y"], rtol=2e-6, atol=1e-6)
    np.testing.assert_allclose(r["triton.dx"], r["torch.dx"], rtol=1e-5,
                               atol=1e-6 * np.abs(r["torch.dx"]).max())


@pytest.mark.parametrize("variant", VARIANTS)
def test_triton_lrn_passes_gradcheck_in_float64(kernel_results, variant):
    # n = 3 with beta 0.6 (exp2/log2), n = 5 with the paper's 3/4 (rsqrt, sqrt)
    assert kernel_results[f"{variant}gradcheck.n3"] and kernel_results[f"{variant}gradcheck.n5"]


# float64 (tests/_lrn_interpret.py's compile_check): the forms agree to about 1e-15 of the
# largest value; these bounds leave a million times that for other CPUs' summation orders
COMPILE_RTOL = 1e-9


def _same(got: np.ndarray, want: np.ndarray) -> None:
    np.testing.assert_allclose(got, want, rtol=COMPILE_RTOL,
                               atol=COMPILE_RTOL * np.abs(want).max())


def test_compiled_paper_net_with_the_op_equals_eager(kernel_results):
    # torch.compile(fullgraph=True) traced the net with the op: no graph break, same numbers
    r = {k.removeprefix("compile."): v for k, v in kernel_results.items()}
    assert r["eager_dx"].dtype == np.float64 and np.abs(r["eager_dx"]).max() > 0
    # eager, conv1's and conv2's bias adds ran in the kernel (both LRN calls got the bias)
    assert r["folded"].tolist() == [True, True]
    # and the parameters' gradients are those of the net with the bias, ReLU and LRN apart
    for key in ("conv1_db", "conv2_db", "conv1_dw", "conv2_dw"):
        _same(r[f"eager_{key}"], r[f"torch_{key}"])
        _same(r[f"compiled_{key}"], r[f"eager_{key}"])
    for key in ("y", "dx"):
        _same(r[f"compiled_{key}"], r[f"eager_{key}"])
        # split_columns on one device folds ReLU into each column's LRN too: the same function
        _same(r[f"split_{key}"], r[f"eager_{key}"])
        # and the net with ReLU folded into the kernel is the net with today's ReLU and LRN
        _same(r[f"torch_{key}"], r[f"eager_{key}"])


def test_triton_without_triton_is_a_user_error(monkeypatch):
    import alexnet.model

    monkeypatch.setitem(alexnet.model._TRITON, "module", None)  # as when triton is missing
    x = torch.rand(1, 4, 2, 2)
    with pytest.raises(UserError, match="ALEXNET_LRN=triton: triton does not import"):
        lrn(x, backend="triton")
    torch.testing.assert_close(lrn(x, backend="auto"), lrn(x, backend="torch"))


def test_auto_uses_the_torch_path_on_cpu_and_rejects_unknown_backends():
    x = torch.rand(1, 4, 2, 2)
    assert not use_triton_lrn(x, "auto") and not use_triton_lrn(x, "torch")
    with pytest.raises(UserError, match="backend='fast': choose from auto, triton, torch"):
        lrn(x, backend="fast")


def test_a_triton_lrn_that_cannot_run_falls_back_with_one_warning(monkeypatch, capsys):
    from _fallback import cpu_check_warning

    if triton_lrn_module() is None:
        pytest.skip("triton is not installed (pip install triton, Linux x86-64)")
    err = cpu_check_warning(triton_lrn_verified, "verified.cpu", monkeypatch, capsys)
    assert err.startswith("alexnet: warning: the Triton LRN on cpu ")
    assert "using the torch path" in err


def test_the_check_runs_the_columns_the_net_runs(monkeypatch):
    """The first-use check's inputs are the paper's columns of conv1 (48 maps) and conv2
    (128), channels_last, fp32 and bf16: whole 16-byte groups, so each layout runs its own
    kernels on them (the halo ones too), as in the net."""
    import alexnet.model

    module = triton_lrn_module()
    if module is None:
        pytest.skip("triton is not installed (pip install triton, Linux x86-64)")
    seen = []
    monkeypatch.setattr(alexnet.model, "_triton_lrn_fault",
                        lambda x, g, bias: seen.append(x) or None)
    assert alexnet.model._verify_triton_lrn(torch.device("cpu"))
    # fp32 and bf16 (mixed-precision training), whose loads take 8 maps instead of 4: a
    # kernel wrong in bf16 alone must not pass the check and train on a wrong LRN
    assert [x.dtype for x in seen] == [torch.float32, torch.bfloat16] * 2
    columns = [x.shape[1] // paper.COLUMNS for x in seen[::2]]
    assert columns == [paper.CONV1[0] // 2, paper.CONV2[0] // 2] == [48, 128]
    assert all(x.is_contiguous(memory_format=torch.channels_last) for x in seen)
    for layout in ("band", "gather", "halo", "halo2"):
        assert [module._applicable(layout, x, paper.COLUMNS) for x in seen] == [layout] * 4


def test_a_failing_layout_falls_back_to_the_tile_kernels(kernel_results):
    # a forced layout (here halo) that fails on the device: the check keeps the Triton LRN
    # in its tile layout (one warning) rather than the far slower torch path
    r = kernel_results
    assert r["fallback.ok"] and r["fallback.layout"] == "tile"
    err = str(r["fallback.stderr"])
    assert err.count("\n") == 1 and err.startswith("alexnet: warning: the Triton LRN's halo "
                                                   "layout on cpu failed (RuntimeError: ")
    assert "using the tile layout" in err


def test_an_unknown_kernel_layout_is_a_user_error(monkeypatch):
    if triton_lrn_module() is None:
        pytest.skip("triton is not installed (pip install triton, Linux x86-64)")
    monkeypatch.setattr(triton_lrn_module(), "LAYOUT", "diagonal")
    with pytest.raises(UserError, match="ALEXNET_LRN_LAYOUT='diagonal': choose from auto, "
                                        "tile, band"):
        triton_lrn_module()._kernels_for(torch.zeros(1, 4, 2, 2), 2)


LAYOUT_CHOICES = "auto, tile, band, gather, halo, halo2"


def _first_use_check(env: str, value: str) -> subprocess.CompletedProcess:
    """A child process's first-use check (triton_lrn_verified on the CPU) with environment
    variable `env` set to `value`: prints `check <result>` or `UserError <message>`."""
    if not HAS_TRITON:
        pytest.skip("triton is not installed (pip install triton, Linux x86-64)")
    code = ("import torch\n"
            "from alexnet.errors import UserError\n"
            "from alexnet.model import triton_lrn_verified\n"
            "try:\n"
            "    print('check', triton_lrn_verified(torch.device('cpu')))\n"
            "except UserError as err:\n"
            "    print('UserError', err)\n")
    env_vars = {**os.environ, env: value,
                "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-c", code], env=env_vars, capture_output=True,
                          text=True, timeout=120)


def test_a_mistyped_kernel_setting_stops_auto_with_a_user_error():
    """The first-use check that `auto` makes on a GPU takes any exception for a kernel that
    cannot run and falls back: a typo in ALEXNET_LRN_LAYOUT would have run the tile layout,
    or the torch path, for the whole run after one warning. It is checked on import."""
    done = _first_use_check("ALEXNET_LRN_LAYOUT", "diagonal")
    assert done.stdout == ("UserError ALEXNET_LRN_LAYOUT='diagonal': choose from "
                           f"{LAYOUT_CHOICES}\n"), done.stderr
    assert "warning" not in done.stderr


@pytest.mark.parametrize("layout", ["rows", "channels"])
def test_a_removed_layout_is_refused_in_one_line(layout):
    """The rows and channels layouts were measured slower than tile on both of the net's
    shapes and removed: asking for one is a UserError, one line naming the variable and
    the layouts there are, not a fallback."""
    done = _first_use_check("ALEXNET_LRN_LAYOUT", layout)
    assert done.stdout == (f"UserError ALEXNET_LRN_LAYOUT={layout!r}: choose from "
                           f"{LAYOUT_CHOICES}\n"), done.stderr
    assert "warning" not in done.stderr


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_check_passes_where_the_kernel_runs(kernel_results, variant):
    assert kernel_results[f"{variant}verified.cpu"]  # under the interpreter: runs and agrees


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
def test_triton_lrn_on_cuda_equals_the_formula(dtype, fmt, relu, monkeypatch):
    # the compiled tile kernels (not the interpreter) on the GPU, on a conv1-like map
    if triton_lrn_module() is None:
        pytest.skip("triton does not import here")
    monkeypatch.setattr(triton_lrn_module(), "LAYOUT", "tile")
    gen = torch.Generator().manual_seed(0)
    a = torch.rand(3, 96, 13, 11, generator=gen, dtype=torch.float64) * 300
    a = (a * 2 - 300 if relu else a).to(dtype)
    g = torch.randn(3, 96, 13, 11, generator=gen, dtype=torch.float64).to(dtype)
    x = a.cuda().contiguous(memory_format=fmt).requires_grad_()
    y = lrn(x, groups=2, backend="triton", relu=relu)
    y.backward(g.cuda().contiguous(memory_format=fmt))
    assert y.is_contiguous(memory_format=fmt) and y.dtype == dtype
    a64 = a.double().numpy()
    b, grad = formula(np.maximum(a64, 0), g.double().numpy(), paper.LRN_N, 2)
    grad = np.where(a64 > 0, grad, 0.0) if relu else grad
    rtol = 1e-5 if dtype == torch.float32 else BF16_RTOL  # the GPU's exp2 and log2 are approximate
    np.testing.assert_allclose(y.detach().double().cpu().numpy(), b, rtol=rtol, atol=1e-6)
    np.testing.assert_allclose(x.grad.detach().double().cpu().numpy(), grad, rtol=rtol,
                               atol=rtol * np.abs(grad).max())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("layout", ["tile", "band", "gather", "halo", "halo2"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_lrn_on_cuda_with_the_bias_folded_in_equals_the_formula(dtype, layout,
                                                                       monkeypatch):
    # the compiled kernels that take the conv's bias (the layouts auto times), as the net
    # runs them: channels_last conv1-like maps, an fp32 bias
    if triton_lrn_module() is None:
        pytest.skip("triton does not import here")
    monkeypatch.setattr(triton_lrn_module(), "LAYOUT", layout)
    gen = torch.Generator().manual_seed(0)
    a = (torch.rand(3, 96, 13, 11, generator=gen, dtype=torch.float64) * 600 - 300).to(dtype)
    g = torch.randn(3, 96, 13, 11, generator=gen, dtype=torch.float64).to(dtype)
    bias = torch.rand(96, generator=gen) * 200 - 100
    x = a.cuda().contiguous(memory_format=torch.channels_last).requires_grad_()
    b = bias.cuda().requires_grad_()
    y = lrn(x, groups=2, backend="triton", relu=True, bias=b)
    y.backward(g.cuda().contiguous(memory_format=torch.channels_last))
    z = a.double().numpy() + bias.double().numpy()[None, :, None, None]
    want, grad = formula(np.maximum(z, 0), g.double().numpy(), paper.LRN_N, 2)
    grad = np.where(z > 0, grad, 0.0)
    rtol = 1e-5 if dtype == torch.float32 else BF16_RTOL
    atol = rtol * np.abs(grad).max()
    np.testing.assert_allclose(y.detach().double().cpu().numpy(), want, rtol=rtol, atol=1e-6)
    np.testing.assert_allclose(x.grad.double().cpu().numpy(), grad, rtol=rtol, atol=atol)
    np.testing.assert_allclose(b.grad.double().cpu().numpy(), grad.sum((0, 2, 3)), rtol=rtol,
                               atol=atol * grad[:, 0].size)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("layout", ["halo", "halo2"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_lrn_on_cuda_in_a_wider_column_equals_the_formula(dtype, layout,
                                                                 monkeypatch):
    """conv2's columns of 128 maps: the halo layouts' 16 groups a column (bf16; 32 in fp32),
    compiled on the GPU."""
    if triton_lrn_module() is None:
        pytest.skip("triton does not import here")
    monkeypatch.setattr(triton_lrn_module(), "LAYOUT", layout)
    gen = torch.Generator().manual_seed(1)
    a = (torch.rand(2, 256, 9, 7, generator=gen, dtype=torch.float64) * 600 - 300).to(dtype)
    g = torch.randn(2, 256, 9, 7, generator=gen, dtype=torch.float64).to(dtype)
    x = a.cuda().contiguous(memory_format=torch.channels_last).requires_grad_()
    y = lrn(x, groups=2, backend="triton", relu=True)
    y.backward(g.cuda().contiguous(memory_format=torch.channels_last))
    a64 = a.double().numpy()
    b, grad = formula(np.maximum(a64, 0), g.double().numpy(), paper.LRN_N, 2)
    grad = np.where(a64 > 0, grad, 0.0)
    rtol = 1e-5 if dtype == torch.float32 else BF16_RTOL
    np.testing.assert_allclose(y.detach().double().cpu().numpy(), b, rtol=rtol, atol=1e-6)
    np.testing.assert_allclose(x.grad.detach().double().cpu().numpy(), grad, rtol=rtol,
                               atol=rtol * np.abs(grad).max())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_auto_picks_the_triton_lrn_on_cuda_after_its_check():
    if triton_lrn_module() is None:
        pytest.skip("triton does not import here")
    assert triton_lrn_verified(torch.device("cuda"))  # compiled, ran and agreed
    assert use_triton_lrn(torch.zeros(1, device="cuda"), "auto")


def _hopper_compiled(kernel, pointers: int, dtype: str, consts: dict, num_warps: int):
    """kernel compiled by triton for an H100/H200 (sm_90) without a GPU: the same front end,
    optimiser and ptxas as a launch there, with the JIT's specialisations (pointers and sizes
    divisible by 16, the unit stride a constant); `consts` holds its compile-time arguments
    (the others are ignored)."""
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    consts = {k: v for k, v in {"COMPUTE": tl.float32, "RELU": True, **consts}.items()
              if k in kernel.arg_names}  # tile, band or halo
    signature, attrs = {}, {}
    for i, name in enumerate(kernel.arg_names):
        if name in consts:
            signature[name] = "constexpr"
        elif i <= pointers:  # a bias is fp32 (the parameter's) whatever the maps' dtype
            signature[name] = "*fp32" if name == "bias_ptr" else f"*{dtype}"
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif name in ("alpha", "beta", "k"):
            signature[name] = "fp32"
        else:
            signature[name] = "i32"
            if name not in ("hw", "rows"):  # pixel counts; strides and sizes of conv1, conv2
                attrs[(i,)] = [["tt.divisibility", 16]]
    source = ASTSource(fn=kernel, signature=signature, constexprs=consts, attrs=attrs)
    return triton.compile(source, target=GPUTarget("cuda", 90, 32),
                          options={"num_warps": num_warps})


def _can_compile_for_hopper() -> None:
    """Skip unless triton is here and its ASTSource takes constexprs by name."""
    if triton_lrn_module() is None:
        pytest.skip("triton is not installed (pip install triton, Linux x86-64)")
    import inspect

    from triton.compiler import ASTSource

    if "constexprs" not in inspect.signature(ASTSource.__init__).parameters:
        pytest.skip("this triton's ASTSource predates constexprs by name")


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the CUDA tests compile them")
def test_the_kernels_compile_for_a_hopper_gpu_here():
    # a GPU run is rare: a kernel that the GPU compiler rejects is caught on this machine
    _can_compile_for_hopper()
    m = triton_lrn_module()
    tile = m.NUM_WARPS  # as the launches
    # the band and gather layouts' kernels (GATHER: one kernel each) at conv1's column (48
    # maps: 64) and conv2's (128), as launched
    band = [(kernel, pointers, block_c, m.BAND_BLOCK_P, m._band_shape(block_c)[2], gather)
            for gather in (False, True)
            for kernel, pointers, block_c in ((m._lrn_forward_band_kernel, 2, 64),
                                              (m._lrn_backward_band_kernel, 3, 128))]
    for kernel, pointers, block_c, block_p, num_warps, gather in (
            (m._lrn_forward_kernel, 2, 16, 256, tile, False),
            (m._lrn_backward_twophase_kernel, 3, 64, 32, tile, False),
            *band):
        # the net's (bf16, channels_last, the conv's bias folded in) and another
        for dtype, channels_last, half, beta_3_4, bias in (("bf16", True, 2, True, True),
                                                           ("fp32", False, 1, False, False)):
            consts = {"HALF": half, "BLOCK_C": block_c, "BLOCK_P": block_p,
                      "CHANNELS_LAST": channels_last, "BETA_3_4": beta_3_4, "BIAS": bias,
                      "GATHER": gather, ("s_c" if channels_last else "s_p"): 1}
            compiled = _hopper_compiled(kernel, pointers, dtype, consts, num_warps)
            assert compiled.asm["cubin"][:4] == b"\x7fELF"  # a cubin, ptxas accepted it


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the CUDA tests compile them")
@pytest.mark.parametrize("dtype,size", [("bf16", 2), ("fp32", 4)])
def test_the_halo_kernels_read_whole_groups_and_their_halo_on_a_hopper_gpu(dtype, size):
    # what the halo layout is for: each thread's group of a pixel's maps is one 16-byte load
    # (and store), the HALF or 2 HALF maps its windows reach on each side one narrower vector
    # load from the cache, never map by map (no 2-byte loads, as the tile kernels' shifted
    # maps split into), and no shared memory, barrier or shuffle for the window; ptxas
    # accepts them (conv1's column of 48 maps and conv2's of 128, the conv's bias folded in)
    _can_compile_for_hopper()
    import re

    m = triton_lrn_module()
    for cg in (48, 128):
        wide = {}
        for layout in m.HALO_GROUPS:  # halo2: the same kernels, programs twice as long
            group, ng, block_p = m._halo_shape(cg, size, layout)
            for kernel, pointers in ((m._lrn_forward_halo_kernel, 2),
                                     (m._lrn_backward_halo_kernel, 3)):
                consts = {"HALF": 2, "G": group, "NG": ng, "BLOCK_P": block_p,
                          "BETA_3_4": True, "BIAS": True}
                compiled = _hopper_compiled(kernel, pointers, dtype, consts, m.HALO_NUM_WARPS)
                assert compiled.asm["cubin"][:4] == b"\x7fELF"
                ptx = compiled.asm["ptx"]
                loads = re.findall(r"\bld\.global((?:\.\w+)*)", ptx)
                stores = re.findall(r"\bst\.global((?:\.\w+)*)", ptx)
                # a thread's group of a (and of g) in one 16-byte load each, the biases' too;
                # its halos in 4, 8 or 16 (2 bf16 maps at least, 2 fp32): never one map at a
                # time
                wide[layout, pointers] = sum(w.endswith(".v4.b32") for w in loads)
                assert wide[layout, pointers] >= pointers
                narrowest = ((".v4.b32", ".v2.b32", ".b32") if size == 2
                             else (".v4.b32", ".v2.b32"))
                assert all(w.endswith(narrowest) for w in loads), loads
                assert stores and all(w.endswith(".v4.b32") for w in stores), stores
                assert not re.search(r"\b(?:ld|st)\.shared\b|\bbar\.sync\b|\bshfl\b", ptx)
                assert compiled.metadata.shared == 0
        for pointers in (2, 3):  # halo2's threads load two groups of each tensor
            assert wide["halo2", pointers] > wide["halo", pointers]


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("relu", [0, 1])
def test_second_derivatives_through_the_kernels_equal_the_torch_paths(edge_results, layout,
                                                                       relu) -> None:
    """Under create_graph the kernels' backward is recorded by autograd (the same function in
    torch's ops), so a second derivative (a gradient penalty, a Hessian-vector product) in x,
    the bias and the outputs' gradient equals the torch path's (float64; itself checked
    against gradgradcheck and torch's LRN in tests/test_model.py), and the first derivative
    equals the kernels' own. Before, it raised; with once_differentiable it lacked a term."""
    r, key = edge_results, f"double.{layout}.relu{relu}"
    np.testing.assert_allclose(r[f"{key}.triton.grad"], r[f"{key}.kernel.grad"], rtol=1e-10,
                               atol=1e-12)
    for name in ("grad", "d2x", "d2bias", "d2g"):
        got, want = r[f"{key}.triton.{name}"], r[f"{key}.torch.{name}"]
        assert np.abs(want).max() > 0, name
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12, err_msg=name)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
def test_second_derivatives_of_the_triton_lrn_on_cuda_equal_the_torch_paths(fmt):
    """On the GPU too (the compiled kernels' forward, the formula's backward under
    create_graph): second derivatives in x, the bias and the outputs' gradient equal those of
    the torch path on the CPU in float64, to fp32's precision."""
    if triton_lrn_module() is None:
        pytest.skip("triton does not import here")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, 5, 4, generator=gen, dtype=torch.float64) * 3
    bias = torch.randn(16, generator=gen, dtype=torch.float64)
    g = torch.randn(2, 16, 5, 4, generator=gen, dtype=torch.float64)
    results = []
    for device, dtype, backend in (("cuda", torch.float32, "triton"),
                                   ("cpu", torch.float64, "torch")):
        xi = x.to(device, dtype).contiguous(memory_format=fmt).requires_grad_()
        bi, gi = (t.to(device, dtype).requires_grad_() for t in (bias, g))
        y = lrn(xi, groups=2, backend=backend, relu=True, bias=bi)
        dx, db = torch.autograd.grad(y, (xi, bi), gi, create_graph=True)
        second = torch.autograd.grad((dx ** 2).sum() + (db ** 3).sum(), (xi, bi, gi))
        results.append([t.detach().double().cpu() for t in (dx, *second)])
    for got, want in zip(*results, strict=True):
        scale = float(want.abs().max())
        assert scale > 0
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * scale)
