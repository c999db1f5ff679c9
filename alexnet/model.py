"""The network of Krizhevsky, Sutskever & Hinton (2012), section 3 and figure 2.

Two columns (one per GTX 580 in the paper) are expressed as grouped convolutions on one
device (`ColumnConv2d`: run as one grouped, two separate or one block-diagonal dense
convolution, the same function); `split_columns` puts each column on its own device instead.
LRN runs as a fused Triton kernel on CUDA (alexnet/lrn_triton.py) and as `_LRNFunction`
elsewhere (ALEXNET_LRN). Every constant comes from alexnet/paper.py. Choices where the paper
is silent or inconsistent (docs/model.md):

- Input 224x224 as the paper says, padded by 3 pixels on the right and bottom only before
  conv1, as Krizhevsky's cuda-convnet does (1 + ceil((224 - 11) / 4) = 55). A 227 crop needs
  no padding and gives the same 55x55 map (Caffe's convention).
- LRN is the paper's formula (alpha not divided by n) unless `lrn_alpha_over_n`; it
  normalises within each column (each GPU normalised its own kernel maps), with the window
  clipped at the column's first and last map.
- The one-column net (`columns=1`) halves conv1-conv4 but keeps conv5 at 256 and the fully
  connected layers at 4096 (the paper's footnote 3, to keep the parameter counts alike).
- Dropout acts on the outputs of fc6 and fc7 (section 4.2), as inverted dropout.
"""

from __future__ import annotations

import copy
import importlib
import os
import sys
import threading
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from alexnet import paper
from alexnet.errors import UserError

# ---------------------------------------------------------------------------------------
# Local response normalisation (section 3.3)
# b_i = a_i / (k + alpha * sum_{j=max(0,i-n/2)}^{min(N-1,i+n/2)} a_j^2)^beta


CHUNK_BYTES = 4 << 20  # LRN's working chunk on the CPU (a few MB: fits the last-level cache)


def _rows(x: torch.Tensor) -> int:
    """Batch rows per LRN chunk: about CHUNK_BYTES on the CPU, so temporaries stay in cache
    and come from the heap rather than fresh pages; the whole batch at once on a GPU."""
    if x.device.type != "cpu":
        return x.shape[0]
    return max(1, CHUNK_BYTES // max(1, x.shape[1:].numel() * x.element_size()))


def _accumulating(dtype: torch.dtype) -> torch.dtype:
    """The dtype LRN sums and powers its maps in: float32 for half-precision maps (the Triton
    kernels' too), else their own."""
    return torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype


def wants_graph(*tensors: torch.Tensor | None) -> bool:
    """Whether a backward runs under create_graph with something to differentiate: then its
    result must be recorded by autograd, so that a second derivative (a gradient penalty, a
    Hessian-vector product) gets its term."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def differentiable_vjp(formula: Callable[..., torch.Tensor],
                       inputs: tuple[torch.Tensor | None, ...], g: torch.Tensor
                       ) -> tuple[torch.Tensor | None, ...]:
    """The gradients of `inputs` (those that require one; None for the others) for the output
    gradient g through `formula`, the kernel's function in torch's own ops, recorded by
    autograd: a fast backward's stand-in under create_graph (`wants_graph`)."""
    with torch.enable_grad():
        wanted = [t for t in inputs if t is not None and t.requires_grad]
        got = iter(torch.autograd.grad(formula(*inputs), wanted, g, create_graph=True))
    return tuple(next(got) if t is not None and t.requires_grad else None for t in inputs)


def lrn_formula(a: torch.Tensor, half: int, alpha: float, beta: float, k: float
                ) -> torch.Tensor:
    """LRN over dim 2 of a (B, G, C, H, W), the window clipped at each column's edges, in
    plain differentiable torch ops: what `_LRNFunction` (and the Triton kernels) compute, for
    its backward under create_graph (the Triton one calls the torch path)."""
    squares = F.pad(a * a, (0, 0, 0, 0, half, half))
    c = a.shape[2]
    s = k + alpha * sum(squares[:, :, d:d + c] for d in range(2 * half + 1))
    return a * s.pow(-beta)


class _LRNFunction(torch.autograd.Function):
    """LRN over dim 2 of a (B, G, C, H, W) tensor with an analytic backward.

    With s = k + alpha * windowsum(a^2) and b = a * s^-beta:
    grad_a = g * s^-beta - 2 * alpha * beta * a * windowsum(g * a * s^(-beta - 1)),
    the window being symmetric so that windowsum is its own adjoint. Both passes walk the
    batch in chunks (see `_rows`), write into preallocated outputs and keep one tensor of s:
    q = s^-1/4 for the paper's beta = 0.75 (rsqrt and sqrt, far cheaper than pow), so that
    s^-beta = q^3 and s^(-beta - 1) = q^7; s itself for any other beta. Half-precision maps
    (bf16, fp16) are computed in float32, chunk by chunk, as the Triton kernels do: summed in
    bf16, s lost up to 2.6% of b against 0.9% for rounding the maps alone. Under create_graph
    the backward is `lrn_formula`'s gradient instead, which autograd can differentiate.
    """

    @staticmethod
    def forward(ctx, a: torch.Tensor, half: int, alpha: float, beta: float, k: float):
        compute = _accumulating(a.dtype)
        b, r = torch.empty_like(a), torch.empty_like(a, dtype=compute)
        fast = beta == 0.75
        step = _rows(a)
        for i in range(0, a.shape[0], step):
            ac, bc, rc = a[i:i + step].to(compute), b[i:i + step], r[i:i + step]
            s = torch.full_like(ac, k).addcmul_(ac, ac, value=alpha)
            for d in range(1, half + 1):  # s = k + alpha windowsum(a^2), clipped at the edges
                s[:, :, d:].addcmul_(ac[:, :, :-d], ac[:, :, :-d], value=alpha)
                s[:, :, :-d].addcmul_(ac[:, :, d:], ac[:, :, d:], value=alpha)
            out = bc if bc.dtype == compute else s  # s is spent once q (or r) holds it
            if fast:
                q = torch.rsqrt(s, out=rc).sqrt_()  # q = s^-1/4
                torch.mul(ac, q, out=out).mul_(q).mul_(q)  # b = a q^3
            else:
                torch.mul(ac, rc.copy_(s).pow(-beta), out=out)  # b = a s^-beta
            if out is not bc:
                bc.copy_(out)
        ctx.save_for_backward(a, r, b)
        ctx.consts, ctx.k = (half, alpha, beta), k
        return b

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        a = ctx.saved_tensors[0]
        if wants_graph(g, a):  # create_graph: the formula's gradient, which autograd records
            half, alpha, beta = ctx.consts
            (grad,) = differentiable_vjp(
                lambda a: lrn_formula(a, half, alpha, beta, ctx.k), (a,), g)
        else:
            with torch.no_grad():
                grad = _LRNFunction._grad(ctx, g)
        return grad, None, None, None, None

    @staticmethod
    def _grad(ctx, g: torch.Tensor) -> torch.Tensor:
        """The backward's gradient of a, in place in preallocated memory (no autograd)."""
        a, r, b = ctx.saved_tensors
        half, alpha, beta = ctx.consts
        grad, c = torch.empty_like(a), -2.0 * alpha * beta
        step = _rows(a)
        for i in range(0, a.shape[0], step):
            rows = slice(i, i + step)
            ac, rc = a[rows].to(r.dtype), r[rows]  # r: the forward's compute dtype
            dst = grad[rows]
            out = dst if dst.dtype == r.dtype else torch.empty_like(rc)
            if beta == 0.75:
                gc = torch.mul(g[rows], rc, out=out).mul_(rc).mul_(rc)  # g s^-beta
                t = torch.mul(b[rows], rc).mul_(gc)  # a q^3 q g q^3 = g a s^(-beta - 1)
            else:
                gc = torch.mul(g[rows], rc.pow(-beta), out=out)
                t = torch.mul(g[rows], b[rows]).div_(rc)
            gc.addcmul_(ac, t, value=c)  # minus 2 alpha beta a windowsum(t), term by term
            for d in range(1, half + 1):
                gc[:, :, d:].addcmul_(ac[:, :, d:], t[:, :, :-d], value=c)
                gc[:, :, :-d].addcmul_(ac[:, :, :-d], t[:, :, d:], value=c)
            if out is not dst:
                dst.copy_(out)
        return grad


LRN_BACKENDS = ("auto", "triton", "torch")
# ALEXNET_LRN picks the LRN implementation, read once at import: auto (the fused Triton
# kernel of alexnet/lrn_triton.py on CUDA tensors when triton imports, else _LRNFunction),
# triton (always the kernel; CPU tensors need TRITON_INTERPRET=1) or torch (_LRNFunction).
LRN_BACKEND = os.environ.get("ALEXNET_LRN", "auto")
# The first-use check's bf16 tolerance: bf16 keeps 8 significant bits, so the input, the
# output (and the twophase backward's u) are each rounded once by up to 2^-8 relative.
BF16_RTOL = 1e-2
_TRITON: dict[str, Any] = {}  # "module": alexnet.lrn_triton, "pool": alexnet.pool_triton,
# "augment": alexnet.data.augment_triton (None when triton is missing); "verified.<device
# type>", "pool_verified.<...>", "augment_verified.<...>": the kernels' checks
_CHECK_LOCK = threading.RLock()  # one check at a time (a check may ask for another)


def _triton_kernels(key: str, name: str) -> Any:
    """alexnet.<name>, or None when triton does not import (tried once, cached at key)."""
    if key not in _TRITON:
        try:
            _TRITON[key] = importlib.import_module(f"alexnet.{name}")
        except ImportError:
            _TRITON[key] = None
    return _TRITON[key]


def triton_lrn_module() -> Any:
    """alexnet.lrn_triton, or None when triton does not import (tried once, then cached)."""
    return _triton_kernels("module", "lrn_triton")


def _checked_once(key: str, check: Callable[[torch.device], bool], device: torch.device
                  ) -> bool:
    """check(device), run once per key and then cached; eagerly even when first asked inside
    a torch.compile trace. Threads that ask at once (the loader's read-ahead threads
    augmenting on a GPU) wait for the one check instead of each running its own."""
    if key not in _TRITON:
        with _CHECK_LOCK:
            if key not in _TRITON:
                run = torch.compiler.disable(check) if torch.compiler.is_compiling() else check
                _TRITON[key] = run(device)
    return _TRITON[key]


def triton_lrn_verified(device: torch.device) -> bool:
    """Whether the Triton LRN runs on `device`'s type and matches the torch path, forward
    and backward, on a tiny input (tried once per device type, then cached). A kernel that
    fails to compile or disagrees must not stop training: `auto` then warns once, on one
    line, and keeps the torch path for the process; if only a layout other than tile
    fails, the process keeps the kernels in the tile layout instead."""
    return _checked_once(f"verified.{device.type}", _verify_triton_lrn, device)


def _verify_triton_lrn(device: torch.device) -> bool:
    """triton_lrn_verified's check, uncached; warns on stderr when it fails."""
    gen = torch.Generator().manual_seed(0)
    # the paper's columns of conv1 (48 maps) and conv2 (128), channels_last, as the net runs
    # them, in fp32 and in bf16 (the halo kernels load 8 bf16 maps at a time, not 4), with
    # the conv's bias folded in as the net runs them (fp32, as its parameter)
    inputs = []
    for maps, side in ((paper.CONV1[0], 5), (paper.CONV2[0], 3)):
        x = (torch.rand(1, maps, 3, side, generator=gen) * 600 - 300).to(device)
        g = torch.randn(x.shape, generator=gen).to(device)
        bias = (torch.rand(maps, generator=gen) * 200 - 100).to(device)
        inputs += [(x.to(dtype).contiguous(memory_format=torch.channels_last), g.to(dtype),
                    bias) for dtype in (torch.float32, torch.bfloat16)]
    module = triton_lrn_module()

    def fault() -> str | None:
        return next((why for x, g, b in inputs if (why := _triton_lrn_fault(x, g, b))), None)

    why = fault()
    layout = module.LAYOUT
    if why is not None and layout not in ("tile", "auto"):  # auto checks tile (the others: _auto)
        module.LAYOUT = "tile"
        if fault() is None:
            print(f"alexnet: warning: the Triton LRN's {layout} layout on {device.type} {why}; "
                  "using the tile layout (ALEXNET_LRN_LAYOUT=tile skips this)", file=sys.stderr)
            return True
        module.LAYOUT = layout
    if why is not None:
        print(f"alexnet: warning: the Triton LRN on {device.type} {why}; using the torch path "
              "(set ALEXNET_LRN=torch to skip this check)", file=sys.stderr)
    return why is None


def _kernel_fault(agrees: Callable[[], bool], replaced: str) -> str | None:
    """Why Triton kernels fail or disagree with what they replace (`replaced`): None when
    agrees() holds; the first line of the error when it raises (any failure to compile or
    launch: the caller falls back, never stops). A UserError (a setting the user mistyped) is
    not the kernel's fault: it goes to the user."""
    try:
        return None if agrees() else f"differs from {replaced} on a test input"
    except NotOnThisDevice as err:  # the check's own launch on a device the kernels lack
        return f"failed ({err})"
    except UserError:
        raise
    except Exception as err:
        first = str(err).strip().partition("\n")[0]
        return f"failed ({type(err).__name__}: {first})"


def _triton_lrn_fault(x: torch.Tensor, g: torch.Tensor, bias: torch.Tensor) -> str | None:
    """Why the Triton LRN of x + bias (ReLU folded in) fails or disagrees with the torch path,
    forward and backward (x's and the bias's gradients) for the output gradient g; None when
    it agrees. The torch path computes in fp32 from the same values (bf16 ones upcast)."""
    rtol = BF16_RTOL if x.dtype == torch.bfloat16 else None
    return _kernel_fault(lambda: _agree(_lrn_and_grad(x, g, bias, "triton"),
                                        _lrn_and_grad(x.float(), g.float(), bias, "torch"),
                                        rtol),
                         "the torch path")


def _lrn_and_grad(x: torch.Tensor, g: torch.Tensor, bias: torch.Tensor, backend: str
                  ) -> tuple[torch.Tensor, ...]:
    """ReLU then LRN of x + bias (2 columns, the paper's constants) and the gradients of x
    and bias for g, whatever grad, inference or autocast mode the caller is in."""
    with torch.inference_mode(False), torch.enable_grad(), \
            torch.autocast(x.device.type, enabled=False):
        xi, bi = x.clone().requires_grad_(), bias.clone().requires_grad_()
        y = lrn(xi, groups=2, backend=backend, relu=True, bias=bi)
        dx, db = torch.autograd.grad(y, (xi, bi), g)
    return y.detach(), dx, db


def _agree(got: tuple[torch.Tensor, ...], want: tuple[torch.Tensor, ...],
           rtol: float | None = None) -> bool:
    """Outputs (the first tensors) equal to fp32 rounding, gradients (the others) to 1e-4 of
    their largest magnitude; with `rtol` (bf16's), all to within rtol, gradients also to rtol
    of their largest magnitude."""
    close = []
    for i, (have, ref) in enumerate(zip(got, want, strict=True)):
        have, scale = have.float(), float(ref.abs().max())
        if rtol is not None:
            atol = rtol * (scale if i else 1e-3)
            close.append(torch.allclose(have, ref, rtol=rtol, atol=atol))
        else:
            close.append(torch.allclose(have, ref, rtol=1e-3 if i else 1e-4,
                                        atol=1e-4 * scale if i else 1e-5))
    return all(close)


def use_triton_lrn(x: torch.Tensor, backend: str | None = None) -> bool:
    """Whether LRN of x runs the Triton kernel under `backend` (default: ALEXNET_LRN)."""
    backend = _backend("ALEXNET_LRN", LRN_BACKEND, backend, LRN_BACKENDS)
    if backend == "torch" or (backend == "auto" and not x.is_cuda):
        return False
    return _triton_runs("ALEXNET_LRN", backend, triton_lrn_module(),
                        lambda: triton_lrn_verified(x.device), x.device)


def _chosen(env: str, backend: str, choices: tuple[str, ...]) -> str:
    """`backend` (the value of environment variable `env`, or a caller's), or a UserError."""
    if backend not in choices:
        raise UserError(f"{env}={backend!r}: choose from {', '.join(choices)}")
    return backend


def _backend(env: str, default: str, backend: str | None, choices: tuple[str, ...]) -> str:
    """A caller's `backend` argument, or when None the value of environment variable `env`
    (`default`); either checked, the UserError naming where the bad value came from."""
    if backend is None:
        return _chosen(env, default, choices)
    if backend not in choices:
        raise UserError(f"backend={backend!r}: choose from {', '.join(choices)}")
    return backend


def check_environment() -> None:
    """Refuse, in one line, an environment setting of the net's that names no choice
    (ALEXNET_LRN, ALEXNET_POOL, ALEXNET_COLUMNS, ALEXNET_CONV1, ALEXNET_AUGMENT, and the
    loader's ALEXNET_GPU_DECODER): read at import but first used deep in a run, they are
    checked here when a command starts, before any work (bench otherwise found a bad one
    after half a minute of measuring): by alexnet.cli for every command that runs the net."""
    from alexnet.data import augment, decode

    decode.gpu_decoders_named()

    for env, value, choices in (("ALEXNET_LRN", LRN_BACKEND, LRN_BACKENDS),
                                ("ALEXNET_POOL", POOL_BACKEND, POOL_BACKENDS),
                                ("ALEXNET_COLUMNS", COLUMN_CONV, COLUMN_FORMS),
                                ("ALEXNET_CONV1", CONV1_FORM, CONV1_FORMS),
                                ("ALEXNET_AUGMENT", augment.AUGMENT_BACKEND,
                                 augment.AUGMENT_BACKENDS)):
        _chosen(env, value, choices)


# Triton's interpreter (TRITON_INTERPRET=1, read at import as triton reads it: it must be set
# before triton is imported) runs the kernels on CPU tensors; the tests use it, slowly
TRITON_INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


class NotOnThisDevice(UserError):
    """Triton kernels asked for on tensors of a device they cannot run on: the user's setting,
    when their tensors reach them; the kernels' failure, when a first-use check meets it."""


def _triton_runs(env: str, backend: str, module: Any, verified: Callable[[], bool],
                 device: torch.device) -> bool:
    """Whether Triton kernels that take the tensor at hand (on `device`) run under `backend`
    (auto or triton): auto once their check passed on its device type, triton always; triton
    without triton importable (`module` None), or on a CPU tensor outside Triton's
    interpreter (a driver error deep in the kernel's launch), is a UserError naming `env`."""
    if module is not None:
        if backend == "triton" and device.type != "cuda" and not TRITON_INTERPRETED:
            raise NotOnThisDevice(f"{env}=triton on a {device.type} tensor: the Triton kernels "
                                  "run on CUDA devices (on the CPU only in Triton's "
                                  f"interpreter, TRITON_INTERPRET=1, for tests); set {env}=auto")
        return backend == "triton" or verified()
    if backend == "triton":
        raise UserError(f"{env}=triton: triton does not import; install it "
                        f"(pip install triton, Linux x86-64) or set {env}=auto")
    return False


def lrn_half(n: int) -> int:
    """The half-width of LRN's window of n maps, centred on each map (n // 2 on each side):
    n must be a positive odd number, or the window is another one than asked for."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1 or n % 2 == 0:
        raise ValueError(f"lrn: n={n!r}: give a positive odd number of maps (the paper's 5)")
    return n // 2


def lrn(x: torch.Tensor, n: int = paper.LRN_N, alpha: float = paper.LRN_ALPHA,
        beta: float = paper.LRN_BETA, k: float = paper.LRN_K, groups: int = 1,
        backend: str | None = None, relu: bool = False, bias: torch.Tensor | None = None
        ) -> torch.Tensor:
    """The paper's LRN of x (N, C, H, W) over channels, separately in each of `groups` columns
    (of ReLU(x) with `relu`, of x + bias with a per-map `bias`: one pass with the Triton
    kernel); `backend` (auto, triton, torch; default ALEXNET_LRN) picks the implementation;
    windows wider than 5 maps run the torch path."""
    half = lrn_half(n)
    backend = _backend("ALEXNET_LRN", LRN_BACKEND, backend, LRN_BACKENDS)
    if x.dim() != 4 or groups < 1 or x.shape[1] % groups:
        raise ValueError(f"lrn: x must be (N, C, H, W) with C divisible by groups={groups}, "
                         f"got {tuple(x.shape)}")
    # the kernel unrolls n = 3..5; an empty batch has nothing to launch it on
    if 1 <= half <= 2 and use_triton_lrn(x, backend) and x.numel():
        return triton_lrn_module().apply(x, groups, half, alpha, beta, k, relu, bias)
    if bias is not None:
        x = x + bias.view(1, -1, 1, 1).to(x.dtype)
    if relu:
        x = F.relu(x)
    y = _LRNFunction.apply(x.unflatten(1, (groups, -1)), half, alpha, beta, k)
    return y.flatten(1, 2)  # (N, C, H, W)


POOL_BACKENDS = ("auto", "torch", "triton")
# ALEXNET_POOL picks the max-pooling implementation, read once at import: auto (default: the
# Triton kernels of alexnet/pool_triton.py on CUDA channels_last tensors when triton imports
# and they pass a check on first use, else nn.MaxPool2d), torch (always nn.MaxPool2d) or
# triton (the kernels wherever they apply; CPU tensors need TRITON_INTERPRET=1). The kernels
# move about 0.6x the bytes of PyTorch's channels_last pool, in 16-byte accesses (docs/model.md,
# "The rest of the step"); `alexnet bench train` times the step with torch's pool beside them.
POOL_BACKEND = os.environ.get("ALEXNET_POOL", "auto")


def triton_pool_module() -> Any:
    """alexnet.pool_triton, or None when triton does not import (tried once, then cached)."""
    return _triton_kernels("pool", "pool_triton")


def triton_pool_verified(device: torch.device) -> bool:
    """Whether the Triton max-pool runs on `device`'s type and gives torch's outputs and fp32
    gradients, ties included, on a tiny input (tried once per device type, then cached). A
    kernel that fails or disagrees must not stop training: `auto` then warns once, on one
    line, and keeps nn.MaxPool2d for the process."""
    return _checked_once(f"pool_verified.{device.type}", _verify_triton_pool, device)


def _verify_triton_pool(device: torch.device) -> bool:
    """triton_pool_verified's check, uncached; warns on stderr when it fails."""
    gen = torch.Generator().manual_seed(0)
    # small integers: ties in most windows; 16 channels and a 9 x 7 map: 3/2 windows overlap
    x = torch.randint(0, 4, (2, 16, 9, 7), generator=gen).float().to(device)
    x = x.contiguous(memory_format=torch.channels_last)
    g = torch.randn(2, 16, 4, 3, generator=gen).to(device)
    g = g.contiguous(memory_format=torch.channels_last)

    def agree(dtype: torch.dtype) -> bool:
        with torch.inference_mode(False), torch.enable_grad(), \
                torch.autocast(device.type, enabled=False):
            xd, gd = x.to(dtype), g.to(dtype)  # the integers are exact in bf16
            got, want = xd.clone().requires_grad_(), xd.clone().requires_grad_()
            y = triton_pool_module().apply(got, 3, 2)
            (dx,) = torch.autograd.grad(y, got, gd)
            ref = F.max_pool2d(want.float(), 3, 2)
            (ref_dx,) = torch.autograd.grad(ref, want, gd.float())
        # the same maxima; the same gradients up to the rounding of a sum of 4 (on the CPU,
        # through the interpreter, equal bit for bit in fp32); bf16's summed in fp32 and
        # rounded once, so within its rounding of torch's fp32 sums
        rtol = BF16_RTOL if dtype == torch.bfloat16 else 1e-5
        return torch.equal(y.float(), ref) and torch.allclose(dx.float(), ref_dx.float(),
                                                              rtol=rtol, atol=rtol * 1e-1)

    def agrees() -> bool:  # fp32, and bf16 as mixed-precision training runs the kernels
        return agree(torch.float32) and agree(torch.bfloat16)

    why = _kernel_fault(agrees, "torch's max_pool2d")
    if why is not None:
        print(f"alexnet: warning: the Triton max-pool on {device.type} {why}; using "
              "nn.MaxPool2d (set ALEXNET_POOL=torch to skip this check)", file=sys.stderr)
    return why is None


def use_triton_pool(x: torch.Tensor, pool: nn.MaxPool2d, backend: str | None = None) -> bool:
    """Whether pool(x) runs the Triton kernels under `backend` (default: ALEXNET_POOL): they
    take channels_last (N, C, H, W) tensors and the paper net's plain pools (square windows
    and strides, no padding, dilation or ceil mode); everything else runs nn.MaxPool2d."""
    backend = _backend("ALEXNET_POOL", POOL_BACKEND, backend, POOL_BACKENDS)
    plain = (pool.padding in (0, (0, 0)) and pool.dilation in (1, (1, 1))
             and not pool.ceil_mode and not pool.return_indices
             and isinstance(pool.kernel_size, int) and isinstance(pool.stride, int))
    if backend == "torch" or (backend == "auto" and not x.is_cuda) or not plain \
            or x.dim() != 4 or not x.numel() \
            or not x.is_contiguous(memory_format=torch.channels_last):
        return False
    return _triton_runs("ALEXNET_POOL", backend, triton_pool_module(),
                        lambda: triton_pool_verified(x.device), x.device)


def max_pool(x: torch.Tensor, pool: nn.MaxPool2d, backend: str | None = None) -> torch.Tensor:
    """pool(x), by the Triton kernels where `use_triton_pool` says so (same values; torch's
    gradients, bit for bit in fp32)."""
    if use_triton_pool(x, pool, backend):
        return triton_pool_module().apply(x, pool.kernel_size, pool.stride)
    return pool(x)


# Whether the Triton LRN also takes the conv's bias add before it (conv_act_lrn): cuDNN's
# convolutions leave the bias to a pass of PyTorch's own over their output, which the kernel
# does as it loads it. Set False to time the net with the bias added apart (bench train).
LRN_TAKES_BIAS = True


def conv_act_lrn(x: torch.Tensor, conv: nn.Conv2d, act: nn.Module, norm: nn.Module
                 ) -> torch.Tensor:
    """norm(act(conv(x))): where the Triton LRN runs, the conv's bias add, the ReLU and the
    LRN as one pass over the conv's output (the conv without its bias, `_conv_forward`)."""
    if isinstance(norm, LRN) and isinstance(act, nn.ReLU) and use_triton_lrn(x):
        if LRN_TAKES_BIAS and conv.bias is not None:
            return norm(conv._conv_forward(x, conv.weight, None), relu=True, bias=conv.bias)
        return norm(conv(x), relu=True)
    return norm(act(conv(x)))


class LRN(nn.Module):
    """Local response normalisation (section 3.3); `alpha_over_n` gives Caffe's convention."""

    def __init__(self, groups: int = 1, alpha_over_n: bool = False, n: int = paper.LRN_N,
                 alpha: float = paper.LRN_ALPHA, beta: float = paper.LRN_BETA,
                 k: float = paper.LRN_K) -> None:
        super().__init__()
        lrn_half(n)
        self.groups, self.n, self.beta, self.k = groups, n, beta, k
        self.alpha = alpha / n if alpha_over_n else alpha
        if LRN_BACKEND == "triton" or (LRN_BACKEND == "auto" and torch.cuda.is_available()):
            triton_lrn_module()  # import triton now, not inside a torch.compile trace

    def forward(self, x: torch.Tensor, relu: bool = False, bias: torch.Tensor | None = None
                ) -> torch.Tensor:
        return lrn(x, self.n, self.alpha, self.beta, self.k, self.groups, relu=relu, bias=bias)

    def extra_repr(self) -> str:
        return f"n={self.n}, alpha={self.alpha:g}, beta={self.beta}, k={self.k}, " \
               f"groups={self.groups}"


# ---------------------------------------------------------------------------------------
# Column-restricted convolutions (section 3.2: conv2, conv4, conv5 see only their own column)

COLUMN_FORMS = ("auto", "groups", "separate", "dense")
# ALEXNET_COLUMNS picks how they run, read once at import (or AlexNet(column_conv=...)):
# groups (one grouped conv), separate (one conv per column), dense (one conv with a
# block-diagonal weight), auto (on CUDA the form of CUDA_AUTO_FORM, groups elsewhere).
COLUMN_CONV = os.environ.get("ALEXNET_COLUMNS", "auto")
# auto's form on CUDA, per layer: the fastest fwd+bwd on one H200 (bf16, channels_last,
# batch 256, `alexnet bench model --device cuda`, ms groups / separate / dense): conv2
# 1.876 / 1.747 / 1.335, conv4 0.771 / 0.868 / 0.743, conv5 0.721 / 0.920 / 0.848.
CUDA_AUTO_FORM = {"conv2": "dense", "conv4": "dense", "conv5": "groups"}


def block_diagonal(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """The dense (out, groups * in, kh, kw) weight equal to a grouped conv's (out, in, kh, kw):
    column c's kernels on its own input maps, exact zeros elsewhere. Built from the grouped
    parameter on every call, so its gradient is the grouped one and the zeros are not
    parameters: no optimizer, weight decay or momentum can make them nonzero."""
    blocks = weight.chunk(groups, 0)
    zero = weight.new_zeros(blocks[0].shape)
    rows = [torch.cat([b if c == r else zero for c in range(groups)], 1)
            for r, b in enumerate(blocks)]
    dense = torch.cat(rows, 0)
    if weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous():
        dense = dense.contiguous(memory_format=torch.channels_last)
    return dense


class ColumnConv2d(nn.Conv2d):
    """A grouped conv (groups = columns) computed as `form`: its parameters and state_dict are
    the grouped conv's whatever the form, so every form loads every checkpoint."""

    def __init__(self, *args: Any, form: str = "auto", cuda_auto: str = "dense",
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for value in (form, cuda_auto):
            if value not in COLUMN_FORMS:
                raise ValueError(f"column_conv={value!r}: choose from "
                                 f"{', '.join(COLUMN_FORMS)}")
        self.form, self.cuda_auto = form, cuda_auto

    def resolved_form(self, x: torch.Tensor) -> str:
        """The form used for x: `auto` is `cuda_auto` on CUDA (the layer's fastest form
        there, CUDA_AUTO_FORM), groups elsewhere."""
        if self.form == "auto":
            return self.cuda_auto if x.is_cuda else "groups"
        return self.form

    def _conv_forward(self, x: torch.Tensor, weight: torch.Tensor,
                      bias: torch.Tensor | None) -> torch.Tensor:
        """nn.Conv2d's forward (`forward` calls it with the layer's weight and bias; None for
        the bias leaves its add to the LRN kernel: conv_act_lrn) in the resolved form."""
        form = self.resolved_form(x)
        # a padding other than zeros is nn.Conv2d's own (the other forms would drop it)
        if self.groups == 1 or form == "groups" or self.padding_mode != "zeros":
            return super()._conv_forward(x, weight, bias)
        geometry = (self.stride, self.padding, self.dilation)
        if form == "dense":
            return F.conv2d(x, block_diagonal(weight, self.groups), bias, *geometry)
        biases = [None] * self.groups if bias is None else bias.chunk(self.groups, 0)
        parts = zip(x.chunk(self.groups, 1), weight.chunk(self.groups, 0), biases, strict=True)
        return torch.cat([F.conv2d(xc, w, b, *geometry) for xc, w, b in parts], 1)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, form={self.form}"


# ---------------------------------------------------------------------------------------
# conv1 as a stride-1 convolution of the input's 4x4 blocks (the same function)

CONV1_FORMS = ("auto", "direct", "blocks")
# ALEXNET_CONV1 picks how conv1 runs, read once at import (or AlexNet(conv1_form=...)):
# direct (one strided convolution of the 3-channel input), blocks (the input's stride x
# stride blocks as channels, a stride-1 convolution with the kernel zero-padded to whole
# blocks: `blocked_conv`), auto (blocks on CUDA, direct elsewhere). On CUDA cuDNN pads a
# 3-channel input to 8 channels for its tensor-core kernels and runs conv1 at a few percent
# of the GPU's rate (one H200, bf16, channels_last, batch 256: forward 1.56 ms, weight
# gradient 0.66 ms, two padding passes 0.18 ms each, a quarter of the paper net's step);
# blocks gives it 48 input channels.
CONV1_FORM = os.environ.get("ALEXNET_CONV1", "auto")


def space_to_depth(x: torch.Tensor, stride: int, hb: int, wb: int,
                   dtype: torch.dtype | None = None) -> torch.Tensor:
    """x's first hb x wb blocks of stride x stride pixels as channels: (n, c s s, hb, wb),
    block channel c s s + i s + j holding pixel (i, j) of channel c's block, zeros where a
    block runs past x; in x's memory format (channels_last for a channels_last x) and in
    `dtype` (default x's). One copy of x (the cast in the same pass); of the rest of the
    buffer only the blocks that x does not fill whole (its last row and column) are zeroed."""
    n, c, h, w = x.shape
    channels_last = c > 1 and x.is_contiguous(memory_format=torch.channels_last)
    dtype = x.dtype if dtype is None else dtype
    if channels_last:
        buf = x.new_empty((n, hb, wb, c, stride, stride), dtype=dtype)
        view = buf.permute(0, 3, 1, 4, 2, 5)  # (n, c, hb, i, wb, j)
        out = buf.view(n, hb, wb, c * stride * stride).permute(0, 3, 1, 2)
    else:
        buf = x.new_empty((n, c, stride, stride, hb, wb), dtype=dtype)
        view = buf.permute(0, 1, 4, 2, 5, 3)
        out = buf.view(n, c * stride * stride, hb, wb)
    fh, fw = min(h // stride, hb), min(w // stride, wb)  # whole blocks within x
    rh = min(h - fh * stride, stride) if fh < hb else 0  # rows of a last, partial block
    rw = min(w - fw * stride, stride) if fw < wb else 0
    top, left = fh * stride, fw * stride
    view[:, :, fh:].zero_()  # partial blocks and blocks past x: zeros, x's pixels copied next
    view[:, :, :fh, :, fw:].zero_()
    view[:, :, :fh, :, :fw, :] = x[:, :, :top, :left].view(n, c, fh, stride, fw, stride)
    if rh:
        view[:, :, fh, :rh, :fw, :] = x[:, :, top:top + rh, :left].view(n, c, rh, fw, stride)
    if rw:
        view[:, :, :fh, :, fw, :rw] = x[:, :, :top, left:left + rw].view(n, c, fh, stride, rw)
    if rh and rw:
        view[:, :, fh, :rh, fw, :rw] = x[:, :, top:top + rh, left:left + rw]
    return out


def blocked_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                 stride: int, padding: int = 0) -> torch.Tensor:
    """F.conv2d(x, weight, bias, stride, padding) computed as a stride-1 convolution of x's
    stride x stride blocks (`space_to_depth`): the kernel, zero-padded right and bottom to
    whole blocks, is rearranged the same way. The same sums of the same products (plus
    products with zeros), in another order; the blocks are those the outputs read, x
    zero-padded (or cropped) to them."""
    if padding:
        x = F.pad(x, (padding,) * 4)
    n, c, h, w = x.shape
    o, _, kh, kw = weight.shape
    bh, bw = -(-kh // stride), -(-kw // stride)  # the kernel's extent in blocks
    oh, ow = (h - kh) // stride + 1, (w - kw) // stride + 1
    # under autocast the conv would cast its input: cast in the same copy
    cast = torch.is_autocast_enabled(x.device.type)
    dtype = torch.get_autocast_dtype(x.device.type) if cast else None
    x = space_to_depth(x, stride, oh + bh - 1, ow + bw - 1, dtype)
    k = F.pad(weight, (0, bw * stride - kw, 0, bh * stride - kh))
    k = k.view(o, c, bh, stride, bw, stride).permute(0, 1, 3, 5, 2, 4)
    k = k.reshape(o, c * stride * stride, bh, bw)
    if weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous():
        k = k.contiguous(memory_format=torch.channels_last)
    return F.conv2d(x, k, bias)


class Conv1(nn.Conv2d):
    """conv1 (a strided conv2d) computed as `form` (CONV1_FORMS); its parameters and
    state_dict are nn.Conv2d's whatever the form."""

    def __init__(self, *args: Any, form: str = "auto", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if form not in CONV1_FORMS:
            raise ValueError(f"conv1_form={form!r}: choose from {', '.join(CONV1_FORMS)}")
        self.form = form

    def resolved_form(self, x: torch.Tensor) -> str:
        """The form used for x: `auto` is blocks on CUDA, direct elsewhere."""
        if self.form == "auto":
            return "blocks" if x.is_cuda else "direct"
        return self.form

    def _conv_forward(self, x: torch.Tensor, weight: torch.Tensor,
                      bias: torch.Tensor | None) -> torch.Tensor:
        """nn.Conv2d's forward (with the layer's weight and bias, or None for the bias, as
        ColumnConv2d's) in the resolved form."""
        if self.resolved_form(x) == "direct" or not self._blockable():
            return super()._conv_forward(x, weight, bias)
        return blocked_conv(x, weight, bias, self.stride[0], self.padding[0])

    def _blockable(self) -> bool:
        """Whether blocked_conv computes this layer: one stride > 1 and one zero padding for
        both axes, no dilation, no groups; any other layer runs as nn.Conv2d."""
        stride, pad = self.stride, self.padding
        return (stride[0] == stride[1] > 1 and not isinstance(pad, str) and pad[0] == pad[1]
                and self.dilation == (1, 1) and self.groups == 1
                and self.padding_mode == "zeros")

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, form={self.form}"


# ---------------------------------------------------------------------------------------
# Initialisation (section 5)


def init_paper_(model: nn.Module, bias_one: tuple[str, ...] = paper.BIAS_ONE_LAYERS,
                bias: float = paper.INIT_BIAS_ONE) -> None:
    """Weights ~ N(0, 0.01); biases `bias` (the paper: 1) in the layers named in `bias_one`,
    0 elsewhere. Another `bias` is a documented deviation for small data (docs/training.md)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            nn.init.normal_(module.weight, 0.0, paper.INIT_STD)
            nn.init.constant_(module.bias, bias if name in bias_one else 0.0)


# ---------------------------------------------------------------------------------------
# The paper's net (section 3.5, figure 2)


def conv1_pad(size: int, kernel: int = paper.CONV1[1], stride: int = paper.CONV1[2]) -> int:
    """Right/bottom zero padding so conv1 covers the whole input (224 -> 3, 227 -> 0)."""
    return (-(size - kernel)) % stride


def pad_for_conv1(x: torch.Tensor) -> torch.Tensor:
    """x with conv1_pad zeros right and bottom (224 -> 227), each side by what its own size
    needs; x itself when none are needed (a 227 crop), since F.pad with no padding still
    copies the batch."""
    bottom, right = conv1_pad(x.shape[-2]), conv1_pad(x.shape[-1])
    return F.pad(x, (0, right, 0, bottom)) if bottom or right else x


def check_input(x: torch.Tensor, crop: int, overlap_pool: bool = True) -> None:
    """A ValueError naming the expected input unless x is an image batch (N, 3, H, W) whose
    pooled conv5 maps are those of `crop` (what fc6 takes), rather than fc6's shape error."""
    side = pooled_side(crop, overlap_pool)
    if x.dim() != 4 or x.shape[1] != 3 or any(
            pooled_side(s, overlap_pool) != side for s in x.shape[-2:]):
        raise ValueError(f"input {tuple(x.shape)}: this net (crop={crop}) takes images "
                         f"(N, 3, {crop}, {crop})")


def loader_pad(arch: str, crop: int) -> int:
    """Zeros the loaders write right and bottom of each `crop` patch for the net `arch`: the
    paper net's conv1_pad (224 -> 3), so that it gets 227 patches and pad_for_conv1 skips its
    copy of the batch (on CUDA the one-pass augmentation writes them with the patch); 0 for
    torchvision's layout, whose conv1 pads inside the convolution."""
    return conv1_pad(crop) if arch == AlexNet.arch else 0


def pool_window(overlap_pool: bool = True) -> tuple[int, int]:
    """(z, s) of the max-pools: the paper's overlapping 3/2, or the 2/2 it compares with
    (section 3.4)."""
    if overlap_pool:
        return paper.POOL_SIZE, paper.POOL_STRIDE
    return paper.NON_OVERLAP_POOL_SIZE, paper.NON_OVERLAP_POOL_STRIDE


def pooled_side(crop: int, overlap_pool: bool = True) -> int:
    """The side of the pooled conv5 maps for `crop`-pixel inputs (224 -> 6); < 1: too small."""
    z, s = pool_window(overlap_pool)
    side = (crop + conv1_pad(crop) - paper.CONV1[1]) // paper.CONV1[2] + 1  # 55
    for _ in range(3):  # 55 -> 27 -> 13 -> 6 (conv2..conv5 keep the side)
        side = (side - z) // s + 1 if side >= z else 0
    return side


def min_crop(overlap_pool: bool = True) -> int:
    """The smallest input side the paper's net accepts (64 with overlapping pooling)."""
    crop = paper.CONV1[1]
    while pooled_side(crop, overlap_pool) < 1:
        crop += 1
    return crop


class AlexNet(nn.Module):
    """The paper's net: input (N, 3, 224, 224) mean-subtracted 0..255 pixels, logits out.

    `crop` other than 224 sizes fc6 for other inputs (at least `min_crop()`); `init_bias` is
    the starting bias of the layers the paper sets to 1.
    """

    arch = "alexnet"
    crop_size = paper.CROP_SIZE

    def __init__(self, num_classes: int = paper.NUM_CLASSES, *, columns: int = paper.COLUMNS,
                 activation: str = "relu", lrn: bool = True, lrn_alpha_over_n: bool = False,
                 overlap_pool: bool = True, dropout: float = paper.DROPOUT_P,
                 width: float = 1.0, column_conv: str | None = None,
                 conv1_form: str | None = None, crop: int = paper.CROP_SIZE,
                 init_bias: float = paper.INIT_BIAS_ONE) -> None:
        super().__init__()
        form = (_chosen("ALEXNET_COLUMNS", COLUMN_CONV, COLUMN_FORMS) if column_conv is None
                else column_conv)
        if conv1_form is None:
            conv1_form = _chosen("ALEXNET_CONV1", CONV1_FORM, CONV1_FORMS)
        if columns not in (1, 2):
            raise ValueError(f"columns={columns}: 1 or 2")
        if activation not in ("relu", "tanh"):
            raise ValueError(f"activation={activation!r}: relu or tanh")
        if not width > 0:
            raise ValueError(f"width={width}: must be > 0 (1.0 is the paper's net)")
        self.kwargs: dict[str, Any] = dict(
            num_classes=num_classes, columns=columns, activation=activation, lrn=lrn,
            lrn_alpha_over_n=lrn_alpha_over_n, overlap_pool=overlap_pool, dropout=dropout,
            width=width)
        if crop != paper.CROP_SIZE:  # paper-sized nets keep the keys of earlier checkpoints
            self.kwargs["crop"] = crop
        if pooled_side(crop, overlap_pool) < 1:
            raise ValueError(f"crop={crop}: at least {min_crop(overlap_pool)} pixels")
        self.crop_size = crop
        self.columns = columns

        def n(count: int, halve: bool = True) -> int:
            # the one-column net has half the kernels, except conv5 and fc (footnote 3): those
            # are the two-column net's at every width, so rounded as it rounds them
            if not halve:
                return max(2, round(count * width / 2) * 2)
            count = count // 2 if columns == 1 else count
            return max(columns, round(count * width / columns) * columns)

        c1, c2, c3, c4, c5 = (n(paper.CONV1[0]), n(paper.CONV2[0]), n(paper.CONV3[0]),
                              n(paper.CONV4[0]), n(paper.CONV5[0], halve=False))
        fc = n(paper.FC_WIDTH, halve=False)
        g = columns
        self.conv1 = Conv1(3, c1, paper.CONV1[1], paper.CONV1[2], paper.CONV1[3],
                           form=conv1_form)
        self.conv2 = ColumnConv2d(c1, c2, *paper.CONV2[1:4], groups=g, form=form,
                                  cuda_auto=CUDA_AUTO_FORM["conv2"])
        self.conv3 = nn.Conv2d(c2, c3, paper.CONV3[1], paper.CONV3[2], paper.CONV3[3])
        self.conv4 = ColumnConv2d(c3, c4, *paper.CONV4[1:4], groups=g, form=form,
                                  cuda_auto=CUDA_AUTO_FORM["conv4"])
        self.conv5 = ColumnConv2d(c4, c5, *paper.CONV5[1:4], groups=g, form=form,
                                  cuda_auto=CUDA_AUTO_FORM["conv5"])
        self.act = nn.ReLU(inplace=True) if activation == "relu" else nn.Tanh()
        self.lrn1 = LRN(g, lrn_alpha_over_n) if lrn else nn.Identity()
        self.lrn2 = LRN(g, lrn_alpha_over_n) if lrn else nn.Identity()
        self.pool = nn.MaxPool2d(*pool_window(overlap_pool))
        if POOL_BACKEND == "triton" or (POOL_BACKEND == "auto" and torch.cuda.is_available()):
            triton_pool_module()  # import triton now, not inside a torch.compile trace
        side = pooled_side(crop, overlap_pool)  # 6 for 224 crops
        self.fc6 = nn.Linear(c5 * side * side, fc)
        self.fc7 = nn.Linear(fc, fc)
        self.fc8 = nn.Linear(fc, num_classes)
        self.drop = nn.Dropout(dropout)
        init_paper_(self, bias=init_bias)

    def conv_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled conv5 maps (N, 256, 6, 6) of an image batch (N, 3, 224, 224)."""
        x = pad_for_conv1(x)  # (N, 3, 227, 227)
        x = max_pool(conv_act_lrn(x, self.conv1, self.act, self.lrn1), self.pool)  # 96x55x55->27
        x = max_pool(conv_act_lrn(x, self.conv2, self.act, self.lrn2), self.pool)  # 256x27x27->13
        x = self.act(self.conv3(x))  # (N, 384, 13, 13), sees both columns
        x = self.act(self.conv4(x))  # (N, 384, 13, 13)
        return max_pool(self.act(self.conv5(x)), self.pool)  # (N, 256, 13, 13) -> 6x6

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """fc7 activations (N, 4096), the "last hidden layer" of figure 4 (before dropout)."""
        check_input(x, self.crop_size, self.kwargs["overlap_pool"])
        x = self.conv_features(x).flatten(1)  # (N, 9216)
        x = self.act(self.fc6(x))  # (N, 4096)
        return self.act(self.fc7(self.drop(x)))  # (N, 4096)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc8(self.drop(self.features(x)))  # (N, num_classes)


# ---------------------------------------------------------------------------------------
# torchvision's single-column layout ("One weird trick", not the 2012 net)


# torchvision's names for the layers that the paper initialises with bias 1
TV_BIAS_ONE = ("features.3", "features.8", "features.10", "classifier.1", "classifier.4")


class _TVFeatures(nn.Sequential):
    """torchvision's `features` stack (keys features.0..10); calling it gives fc7 activations.

    AlexNetTV keeps torchvision's module names so that its weights load, while
    `model.features(x)` keeps this project's meaning (fc7, as for AlexNet); the conv stack
    alone is `model.conv_features(x)`.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._owner.fc7(x)


class AlexNetTV(nn.Module):
    """torchvision's alexnet layout: its state_dict keys and shapes, so its weights load.

    A single column of 64, 192, 384, 256, 256 kernels, conv1 padded by 2 on every side, no LRN,
    adaptive average pooling to 6x6, dropout before fc6 and fc7 ("One weird trick", 2014).
    """

    arch = "alexnet-tv"
    crop_size = paper.CROP_SIZE

    def __init__(self, num_classes: int = paper.NUM_CLASSES,
                 dropout: float = paper.DROPOUT_P, init_bias: float = paper.INIT_BIAS_ONE
                 ) -> None:
        super().__init__()
        self.kwargs: dict[str, Any] = dict(num_classes=num_classes, dropout=dropout)
        self.features = _TVFeatures(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
        object.__setattr__(self.features, "_owner", self)  # a plain reference, not a child
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout), nn.Linear(256 * 6 * 6, 4096), nn.ReLU(inplace=True),
            nn.Dropout(p=dropout), nn.Linear(4096, 4096), nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes),
        )
        init_paper_(self, bias_one=TV_BIAS_ONE, bias=init_bias)

    def conv_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled conv5 maps (N, 256, 6, 6)."""
        return self.avgpool(nn.Sequential.forward(self.features, x))

    def fc7(self, x: torch.Tensor) -> torch.Tensor:
        """fc7 activations (N, 4096), before dropout; also what `model.features(x)` gives."""
        x = self.conv_features(x).flatten(1)  # (N, 9216)
        return self.classifier[:6](x)  # dropout, fc6, ReLU, dropout, fc7, ReLU

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.conv_features(x).flatten(1))  # (N, num_classes)


# ---------------------------------------------------------------------------------------
# Building by name


ARCHS: dict[str, type[nn.Module]] = {"alexnet": AlexNet, "alexnet-tv": AlexNetTV}


def build_model(arch: str = "alexnet", **kwargs: Any) -> nn.Module:
    """The network `arch` (a key of ARCHS) built with `kwargs`; `m.arch`, `m.kwargs` rebuild it."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose from {', '.join(ARCHS)}")
    return ARCHS[arch](**kwargs)


# ---------------------------------------------------------------------------------------
# Two devices, one column each (section 3.2)

COLUMN_LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7")


class SplitAlexNet(nn.Module):
    """AlexNet with column c's kernels on devices[c]; activations cross only into conv3, fc6,
    fc7 and fc8 (fc8 lives on devices[0]). Its state_dict is the grouped AlexNet's, so a
    checkpoint always holds the grouped layout and loads into either form."""

    arch = AlexNet.arch
    crop_size = AlexNet.crop_size

    def __init__(self, grouped: AlexNet, devices: tuple[str | torch.device, ...]) -> None:
        super().__init__()
        g = grouped.columns
        if len(devices) != g:
            raise ValueError(f"split_columns: {g} columns need {g} devices, got {len(devices)}")
        self.kwargs = dict(grouped.kwargs)
        self.crop_size = grouped.crop_size
        self.devices = tuple(torch.device(d) for d in devices)
        self.act, self.pool, self.drop = grouped.act, grouped.pool, grouped.drop
        lrn = grouped.lrn1
        # each column normalises its own maps, as the grouped net's LRN(groups=columns) does
        self.lrn = LRN(1, n=lrn.n, alpha=lrn.alpha, beta=lrn.beta, k=lrn.k) \
            if isinstance(lrn, LRN) else nn.Identity()
        self.cols = nn.ModuleList()
        for c, device in enumerate(self.devices):
            col = nn.ModuleDict()
            for name in COLUMN_LAYERS:
                whole = getattr(grouped, name)
                part = _column_part(whole, g, c)
                col[name] = part.to(device)
            self.cols.append(col)
        self.fc8 = copy.deepcopy(grouped.fc8).to(self.devices[0])
        self.train(grouped.training)  # the same function: dropout on only if it was on

    def _both(self, parts: list[torch.Tensor], device: torch.device) -> torch.Tensor:
        """Both columns' activations on `device`, in the grouped net's channel order."""
        return torch.cat([p.to(device, non_blocking=True) for p in parts], dim=1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """fc7 activations (N, 4096) on devices[0]."""
        check_input(x, self.crop_size, self.kwargs["overlap_pool"])
        x = pad_for_conv1(x)
        cols = list(zip(self.cols, self.devices, strict=True))
        h = []
        for col, dev in cols:  # conv1, conv2: own column only
            y = max_pool(conv_act_lrn(x.to(dev, non_blocking=True), col["conv1"], self.act,
                                      self.lrn), self.pool)
            h.append(max_pool(conv_act_lrn(y, col["conv2"], self.act, self.lrn), self.pool))
        h = [self.act(col["conv3"](self._both(h, dev))) for col, dev in cols]  # both columns
        h = [max_pool(self.act(col["conv5"](self.act(col["conv4"](y)))), self.pool)
             for (col, _), y in zip(cols, h, strict=True)]
        h = [t.flatten(1) for t in h]
        h = [self.drop(self.act(col["fc6"](self._both(h, dev)))) for col, dev in cols]
        h = [self.act(col["fc7"](self._both(h, dev))) for col, dev in cols]  # (N, 2048) each
        return self._both(h, self.devices[0])  # (N, 4096)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc8(self.drop(self.features(x)))

    def grouped(self) -> AlexNet:
        """The same network as one grouped AlexNet (on devices[0])."""
        net = AlexNet(**self.kwargs).to(self.devices[0], self.fc8.weight.dtype)
        net.load_state_dict(self.state_dict())
        return net.train(self.training)

    def state_dict(self, *args: Any, destination: dict | None = None, prefix: str = "",
                   keep_vars: bool = False) -> dict[str, Any]:
        """The grouped AlexNet's keys: column parts concatenated on devices[0]."""
        out = {} if destination is None else destination
        for name in COLUMN_LAYERS:
            for kind in ("weight", "bias"):
                parts = [getattr(col[name], kind) for col in self.cols]
                t = torch.cat([p.to(self.devices[0]) for p in parts], 0)
                out[f"{prefix}{name}.{kind}"] = t if keep_vars else t.detach()
        for kind in ("weight", "bias"):
            t = getattr(self.fc8, kind)
            out[f"{prefix}fc8.{kind}"] = t if keep_vars else t.detach()
        return out

    def load_state_dict(self, state_dict: dict[str, Any], strict: bool = True,
                        assign: bool = False) -> Any:
        """Load a grouped AlexNet's state_dict, splitting each layer into its columns."""
        grouped = AlexNet(**self.kwargs).to(self.fc8.weight.dtype)  # loads without rounding
        result = grouped.load_state_dict(state_dict, strict=strict)
        with torch.no_grad():
            for c, col in enumerate(self.cols):
                for name in COLUMN_LAYERS:
                    part = _column_part(getattr(grouped, name), len(self.cols), c)
                    col[name].weight.copy_(part.weight)
                    col[name].bias.copy_(part.bias)
            self.fc8.weight.copy_(grouped.fc8.weight)
            self.fc8.bias.copy_(grouped.fc8.bias)
        return result


def _column_part(layer: nn.Conv2d | nn.Linear, columns: int,
                 c: int) -> nn.Conv2d | nn.Linear:
    """Column c's share of `layer`: its output kernels (rows) c*out/columns..(c+1)*out/columns."""
    out = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
    rows = slice(c * out // columns, (c + 1) * out // columns)
    like = dict(device=layer.weight.device, dtype=layer.weight.dtype)  # no float32 rounding
    if isinstance(layer, nn.Linear):
        part = nn.Linear(layer.in_features, out // columns, **like)
    else:
        # a grouped conv (groups == columns) becomes one column's dense conv on its own maps
        inputs = layer.in_channels // layer.groups
        part = nn.Conv2d(inputs, out // columns, layer.kernel_size, layer.stride, layer.padding,
                         **like)
    with torch.no_grad():
        part.weight.copy_(layer.weight[rows])
        part.bias.copy_(layer.bias[rows])
    return part


def split_columns(model: AlexNet,
                  devices: tuple[str | torch.device, ...] = ("cuda:0", "cuda:1")) -> SplitAlexNet:
    """`model` with each column on its own device, computing the same function (section 3.2).

    The weights are copied; `SplitAlexNet.grouped()` (or its state_dict) gives the way back.
    """
    if not isinstance(model, AlexNet):
        raise ValueError(f"split_columns needs the paper's AlexNet, not {type(model).__name__}")
    return SplitAlexNet(model, tuple(devices))
