"""Runs the Triton LRN through Triton's interpreter on CPU tensors; tests/test_lrn_triton.py
starts it in a child process, because TRITON_INTERPRET=1 must be set before triton is
imported and must not reach the rest of the suite.

Usage: TRITON_INTERPRET=1 ALEXNET_LRN=triton python tests/_lrn_interpret.py OUT [edges]
writes OUT (.npz) holding the inputs and what the kernel gave (one process for every check:
starting torch and triton is most of the time); the test compares them with its own NumPy
evaluation of the paper's formula. With `edges`, the unusual inputs of `edges()` instead.
"""

from __future__ import annotations

import contextlib
import io
import sys

import numpy as np
import torch

import alexnet.lrn_triton
import alexnet.model
from alexnet import paper
from alexnet.model import AlexNet, lrn, split_columns

DEFAULT = alexnet.lrn_triton.LAYOUT  # as imported
# the layouts other than tile, each with its own forward and backward kernels
LAYOUT_VARIANTS = ("band", "gather", "halo", "halo2")
CASES = {  # name: (shape, groups, n)
    "paper": ((2, 12, 5, 4), 2, paper.LRN_N),
    "one_column_n3": ((1, 7, 3, 6), 1, 3),
    "blocks": ((1, 96, 17, 17), 2, paper.LRN_N),  # conv1's 48 maps a column: 3 blocks of 16
    # conv2's 128 maps a column: 4 blocks of 32 (tile), 16 groups of 8 bf16 maps (halo)
    "runs": ((1, 256, 3, 3), 2, paper.LRN_N),
}


def _run(x: torch.Tensor, g: torch.Tensor, groups: int, n: int, backend: str,
         relu: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.detach().clone().requires_grad_()
    y = lrn(x, n=n, groups=groups, backend=backend, relu=relu)
    y.backward(g)
    return y.detach(), x.grad


def _run_biased(x: torch.Tensor, g: torch.Tensor, bias: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The kernel's LRN of ReLU(x + bias), the conv's bias folded in as the net runs it
    (2 columns, the paper's n), and the gradients of x and bias for g."""
    x, bias = x.detach().clone().requires_grad_(), bias.detach().clone().requires_grad_()
    y = lrn(x, groups=2, backend="triton", relu=True, bias=bias)
    y.backward(g)
    return y.detach(), x.grad, bias.grad


def kernel(variant: str) -> dict[str, np.ndarray]:
    """Forward and backward of every case in NCHW and channels_last, fp32 and bf16, with the
    `variant` layout's kernels (twophase: the tile layout, its backward named); the torch
    path on the same inputs (with twophase); gradcheck in float64. Keys start with the
    variant's name, except twophase's."""
    layout = variant if variant in LAYOUT_VARIANTS else "tile"
    alexnet.lrn_triton.LAYOUT = layout
    prefix = "" if variant == "twophase" else f"{variant}."
    gen = torch.Generator().manual_seed(0)
    saved: dict[str, np.ndarray] = {}
    for name, (shape, groups, n) in CASES.items():
        x = torch.rand(shape, generator=gen, dtype=torch.float64) * 300
        g = torch.randn(shape, generator=gen, dtype=torch.float64)
        saved[f"{name}.x"], saved[f"{name}.g"] = x.numpy(), g.numpy()
        for layout, fmt in (("nchw", torch.contiguous_format),
                            ("cl", torch.channels_last)):
            for dtype in (torch.float32, torch.bfloat16):
                xd = x.to(dtype).contiguous(memory_format=fmt)
                gd = g.to(dtype).contiguous(memory_format=fmt)
                y, dx = _run(xd, gd, groups, n, "triton")
                key = f"{name}.{layout}.{str(dtype)[6:]}"
                saved[f"{prefix}{key}.y"] = y.double().numpy()
                saved[f"{prefix}{key}.dx"] = dx.double().numpy()
                saved[f"{prefix}{key}.kernels"] = np.array(
                    alexnet.lrn_triton._kernels_for(xd, groups))
                saved[f"{prefix}{key}.layout_kept"] = np.array(
                    y.is_contiguous(memory_format=fmt) and dx.is_contiguous(memory_format=fmt))
                if dtype == torch.float32 and variant == "twophase":  # once: no prefix
                    y, dx = _run(xd, gd, groups, n, "torch")
                    saved[f"{key}.torch_y"] = y.double().numpy()
                    saved[f"{key}.torch_dx"] = dx.double().numpy()
    # ReLU folded in: inputs of both signs (and exact zeros), fp32; columns of 8 maps, whole
    # 16-byte groups, so that the halo layouts' kernels run them
    x = torch.rand((2, 16, 5, 4), generator=gen, dtype=torch.float64) * 600 - 300
    x[0, :, 0, 0] = 0.0
    g = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    saved["relu.x"], saved["relu.g"] = x.numpy(), g.numpy()
    for layout, fmt in (("nchw", torch.contiguous_format), ("cl", torch.channels_last)):
        xd, gd = (t.float().contiguous(memory_format=fmt) for t in (x, g))
        y, dx = _run(xd, gd, 2, paper.LRN_N, "triton", relu=True)
        saved[f"{prefix}relu.{layout}.y"] = y.double().numpy()
        saved[f"{prefix}relu.{layout}.dx"] = dx.double().numpy()
    # the conv's bias folded in too (fp32, as the parameter), on the same inputs: fp32, and
    # bf16 maps (mixed precision) with the fp32 bias
    bias = torch.rand(x.shape[1], generator=gen, dtype=torch.float64) * 200 - 100
    saved["bias.b"] = bias.numpy()
    for layout, fmt in (("nchw", torch.contiguous_format), ("cl", torch.channels_last)):
        for dtype in (torch.float32, torch.bfloat16):
            xd, gd = (t.to(dtype).contiguous(memory_format=fmt) for t in (x, g))
            y, dx, db = _run_biased(xd, gd, bias.float())
            key = f"{prefix}bias.{layout}.{str(dtype)[6:]}"
            saved[f"{key}.y"], saved[f"{key}.dx"] = y.double().numpy(), dx.double().numpy()
            saved[f"{key}.db"] = db.double().numpy()
            saved[f"{key}.kernels"] = np.array(alexnet.lrn_triton._kernels_for(xd, 2))
    # beta other than the paper's 3/4 takes the kernels' exp2/log2 path
    x = torch.rand((2, 16, 5, 4), generator=gen, dtype=torch.float64) * 300
    g = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    for backend in ("triton", "torch"):
        xi = x.float().requires_grad_()
        y = lrn(xi, 5, 1e-3, 0.6, 1.5, groups=2, backend=backend)
        y.backward(g.float())
        saved[f"{prefix}beta06.{backend}.y"] = y.detach().double().numpy()
        saved[f"{prefix}beta06.{backend}.dx"] = xi.grad.double().numpy()
    for n, shape, beta in ((3, (1, 4, 2, 2), 0.6), (5, (1, 8, 2, 1), 0.75)):
        x = (torch.rand(shape, generator=gen, dtype=torch.float64) * 30).requires_grad_()
        # the other layouts' full gradients are checked against the formula above; their
        # gradcheck takes fast mode (a random projection of the Jacobian: a few interpreted
        # launches instead of one per element)
        ok = torch.autograd.gradcheck(
            lambda t, n=n, beta=beta: lrn(t, n, 2e-3, beta, 2.0, groups=2, backend="triton"),
            (x,), fast_mode=layout != "tile")
        saved[f"{prefix}gradcheck.n{n}"] = np.array(ok)
    saved[f"{prefix}verified.cpu"] = np.array(_verified())
    alexnet.lrn_triton.LAYOUT = DEFAULT
    return saved


def _verified() -> bool:
    """triton_lrn_verified's check on CPU tensors, run afresh."""
    alexnet.model._TRITON.pop("verified.cpu", None)
    return alexnet.model.triton_lrn_verified(torch.device("cpu"))


def layout_fallback() -> dict[str, np.ndarray]:
    """triton_lrn_verified with the halo kernels broken on purpose (their launch raises):
    whether the kernels are kept, the layout the process is left with, what went to stderr."""
    module = alexnet.lrn_triton
    saved = module._launch_halo, module.LAYOUT

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("the halo kernel, broken on purpose")

    module._launch_halo, module.LAYOUT = broken, "halo"
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        ok = _verified()
    layout = module.LAYOUT
    module._launch_halo, module.LAYOUT = saved
    alexnet.model._TRITON.pop("verified.cpu", None)
    return {"fallback.ok": np.array(ok), "fallback.layout": np.array(layout),
            "fallback.stderr": np.array(err.getvalue())}


def compile_check() -> dict[str, np.ndarray]:
    """A width-scaled paper net, eager, as split_columns on one device and
    torch.compile(fullgraph=True, aot_eager), with ReLU and LRN fused in the op, and eager on
    the torch path: logits and input gradients; fullgraph makes any graph break an error.
    In float64: in float32 the input gradient (about 1e-10, sums that cancel) of the split
    net differed from the eager one by up to 6% of its largest value on an AMD EPYC host
    (the earlier hosts kept it within the test's 1e-5: the CPU's convolution kernels decide);
    in float64 the four forms agree to 1e-15."""
    torch.manual_seed(0)
    model = AlexNet(num_classes=5, width=0.05, dropout=0.0).double()
    x = torch.randn(2, 3, 224, 224, dtype=torch.float64) * 50

    layers = ("conv1", "conv2")  # their bias adds run in the kernel

    def run(m: torch.nn.Module, params: bool = True) -> tuple[np.ndarray, ...]:
        """Logits and input gradient, and (`params`) model's conv1 and conv2 gradients."""
        xi = x.clone().requires_grad_()
        model.zero_grad()
        y = m(xi)
        y.square().sum().backward()
        grads = [getattr(model, name).bias.grad.numpy().copy() for name in layers] + [
            getattr(model, name).weight.grad.numpy().copy() for name in layers] if params else []
        return (y.detach().numpy(), xi.grad.numpy(), *grads)

    keys = ("y", "dx", "conv1_db", "conv2_db", "conv1_dw", "conv2_dw")
    launch, folded = alexnet.lrn_triton.forward, []

    def counted(x: torch.Tensor, *args: object) -> torch.Tensor:
        folded.append(args[-1] is not None)  # the bias, forward's last argument
        return launch(x, *args)

    alexnet.lrn_triton.forward = counted  # what the eager autograd.Function calls
    eager = run(model)
    alexnet.lrn_triton.forward = launch
    split = run(split_columns(model, ("cpu", "cpu")), params=False)  # folded per column
    compiled = run(torch.compile(model, backend="aot_eager", fullgraph=True))
    alexnet.model.LRN_BACKEND = "torch"  # the same net with bias, ReLU and today's LRN apart
    apart = run(model)
    alexnet.model.LRN_BACKEND = "triton"
    return {"compile.folded": np.array(folded),
            **{f"compile.{form}_{key}": value
               for form, values in (("eager", eager), ("split", split), ("compiled", compiled),
                                    ("torch", apart))
               for key, value in zip(keys, values, strict=False)}}


def auto() -> dict[str, np.ndarray]:
    """ALEXNET_LRN_LAYOUT=auto on conv1's columns (bias and ReLU folded in, channels_last),
    with the tensors made timeable and a stand-in clock on which band's forward and gather's
    backward are fastest: what auto chose, and its output and gradients beside those of each
    layout run by name."""
    module = alexnet.lrn_triton
    saved = module._timeable, module._seconds, module.LAYOUT

    def seconds(launch) -> float:
        launch()
        fastest = {"_forward_launch": "band", "_backward_launch": "gather"}[launch.func.__name__]
        return 1.0 if launch.args[0] == fastest else 2.0

    module._timeable, module._seconds = (lambda out: True), seconds
    gen = torch.Generator().manual_seed(5)
    x = (torch.rand((2, 96, 3, 4), generator=gen) * 600 - 300).contiguous(
        memory_format=torch.channels_last)
    g, bias = torch.randn(x.shape, generator=gen), torch.rand(96, generator=gen) * 100
    out: dict[str, np.ndarray] = {}
    for layout in ("auto", "tile", "band", "gather"):
        module.LAYOUT = layout
        y, dx, db = _run_biased(x, g, bias)
        out.update({f"auto.{layout}.y": y.numpy(), f"auto.{layout}.dx": dx.numpy(),
                    f"auto.{layout}.db": db.numpy()})
        if layout == "auto":
            chosen = module.auto_choice(x, 2, 2, True, True, paper.LRN_BETA)
            out["auto.chosen"] = np.array([chosen.get("forward"), chosen.get("backward")])
    module._timeable, module._seconds, module.LAYOUT = saved
    return out


def edges() -> dict[str, np.ndarray]:
    """Inputs that the paper net's defaults do not make, through every variant's kernels, and
    the torch path on them in float64: maps one pixel wide whose W stride is not their pixels'
    (a transposed (N, C, 1, H) map is contiguous, in NCHW and in channels_last), a NaN through
    the folded ReLU, fp16 (autocast's) in both memory formats. Its own process: a kernel that
    misreads strides may write outside its tensor."""
    gen = torch.Generator().manual_seed(1)
    base = torch.rand((1, 8, 1, 3), generator=gen, dtype=torch.float64) * 300
    nan = torch.rand((1, 8, 1, 3), generator=gen, dtype=torch.float64) * 600 - 300
    nan[0, 2, 0, 1] = float("nan")
    half = torch.rand((1, 16, 2, 3), generator=gen, dtype=torch.float64) * 300
    cases = {  # name: (x, relu)
        "w1_nchw": (base.float().transpose(2, 3), False),
        "w1_cl": (base.float().contiguous(memory_format=torch.channels_last).transpose(2, 3),
                  False),
        "nan": (nan.float().contiguous(memory_format=torch.channels_last), True),
        "fp16_nchw": (half.half(), False),
        "fp16_cl": (half.half().contiguous(memory_format=torch.channels_last), False),
    }
    saved: dict[str, np.ndarray] = {}
    for name, (x, relu) in cases.items():
        g = torch.randn(x.shape, generator=gen, dtype=torch.float64)
        y, dx = _run(x.double(), g, 2, paper.LRN_N, "torch", relu=relu)
        saved[f"{name}.torch_y"], saved[f"{name}.torch_dx"] = y.numpy(), dx.numpy()
        for variant in ("twophase", *LAYOUT_VARIANTS):
            alexnet.lrn_triton.LAYOUT = (variant if variant in LAYOUT_VARIANTS
                                         else "tile")
            y, dx = _run(x, g.to(x.dtype), 2, paper.LRN_N, "triton", relu=relu)
            saved[f"{variant}.{name}.y"] = y.double().numpy()
            saved[f"{variant}.{name}.dx"] = dx.double().numpy()
            saved[f"{variant}.{name}.kernels"] = np.array(
                alexnet.lrn_triton._kernels_for(x, 2))
    alexnet.lrn_triton.LAYOUT = DEFAULT
    return saved


def double_backward() -> dict[str, np.ndarray]:
    """Second derivatives through the kernels' backward and through the torch path (x, bias
    and the outputs' gradient g of a function of the first derivatives), float64, both
    memory formats, with and without the ReLU and bias; and the first derivative under
    create_graph beside the kernels' own."""
    gen = torch.Generator().manual_seed(3)
    saved = {}
    for layout in ("nchw", "nhwc"):
        for relu in (False, True):
            x = torch.randn((1, 8, 3, 3), generator=gen, dtype=torch.float64)
            if layout == "nhwc":
                x = x.contiguous(memory_format=torch.channels_last)
            bias = torch.randn(8, generator=gen, dtype=torch.float64)
            g = torch.randn((1, 8, 3, 3), generator=gen, dtype=torch.float64)
            for backend in ("triton", "torch"):
                xi, bi, gi = (t.clone().requires_grad_() for t in (x, bias, g))
                y = lrn(xi, groups=2, backend=backend, relu=relu, bias=bi)
                dx, db = torch.autograd.grad(y, (xi, bi), gi, create_graph=True)
                second = torch.autograd.grad((dx ** 2).sum() + (db ** 3).sum(), (xi, bi, gi))
                key = f"double.{layout}.relu{int(relu)}.{backend}"
                saved[f"{key}.grad"] = dx.detach().numpy()
                for name, t in zip(("x", "bias", "g"), second, strict=True):
                    saved[f"{key}.d2{name}"] = t.numpy()
            xi = x.clone().requires_grad_()  # the kernels' own backward: no create_graph
            (dx,) = torch.autograd.grad(lrn(xi, groups=2, backend="triton", relu=relu,
                                            bias=bias), xi, g)
            saved[f"double.{layout}.relu{int(relu)}.kernel.grad"] = dx.numpy()
    return saved


# the parts a child computes (`_lrn_interpret.py OUT PART`): two halves of the kernels'
# results, run side by side on a 2-core machine (test_lrn_triton.interpret), and the edges
# (timed through the interpreter: twophase 21 s, halo 23, halo2 18, compile check 14, band
# 13, gather 10, auto and the layout fallback a few; the two halves took 52 and 55 s side by
# side)
PARTS = {"kernels-a": lambda: {**kernel("twophase"), **kernel("halo"), **layout_fallback(),
                               **auto()},
         "kernels-b": lambda: {**kernel("halo2"), **kernel("band"), **kernel("gather"),
                               **compile_check()},
         "edges": lambda: {**edges(), **double_backward()}}

if __name__ == "__main__":
    np.savez(sys.argv[1], **PARTS[sys.argv[2]]())
