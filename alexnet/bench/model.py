"""`alexnet bench model`: the paper net's training step beside the torchvision layout, and
its parts beside their baselines.

Images/s of one training step (forward, backward, PaperSGD step) for the paper's net, the
same net without LRN, and torchvision's layout, on the same batch in the same run (each net
given it as its loader does: the paper nets with conv1's zero padding written, model.loader_pad,
so that their forward copies nothing more than in training): warm-up excluded, the variants
taking turns, fastest of several repeats. Also the share of the paper
step spent in LRN (forward and backward on the real conv1 and conv2 activation shapes).

Then the parts (`parts`), each forward + backward on the real activation shapes: LRN (the
Triton kernel where it runs, alone and with the ReLU folded in, and the torch path) beside a
ReLU on the same tensor; conv2,
conv4 and conv5 in each column form (groups=2, separate, block-diagonal dense); conv1's
right/bottom zero padding beside conv1 itself; max-pool in NCHW and channels_last (and on
CUDA the Triton kernels, which ALEXNET_POOL=auto runs there). On CUDA
in bf16 and channels_last at batch 256 (the fast preset's setting), timed with CUDA events.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import time
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

from alexnet import paper
from alexnet.model import (
    CUDA_AUTO_FORM,
    AlexNet,
    ColumnConv2d,
    blocked_conv,
    build_model,
    conv1_pad,
    loader_pad,
    lrn,
    max_pool,
    triton_lrn_module,
    triton_pool_module,
    use_triton_lrn,
    use_triton_pool,
)
from alexnet.optim import PaperSGD, param_groups


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_all(fns: dict[str, Callable[[], object]], device: torch.device, warmup: int,
              repeats: int, failed: dict[str, str] | None = None) -> dict[str, float]:
    """Fastest seconds of one call of each fn: the fns take turns (so a busy machine slows
    them alike), `warmup` untimed rounds first; the minimum is the least disturbed run.
    On CUDA each call is bracketed by CUDA events (read once all calls are queued). A fn
    that fails its first call (a kernel variant that has not run on a GPU yet) is left out
    of the result, its one-line error in `failed`, so that it does not take the others'
    figures with it."""
    from alexnet.bench import measured

    fns = dict(fns)
    for name, fn in list(fns.items()):
        outcome = measured(functools.partial(_called, fn))
        if outcome is not None:
            del fns[name]
            if failed is not None:
                failed[name] = outcome["error"]
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    _sync(device)
    times: dict[str, list[float]] = {k: [] for k in fns}
    events: dict[str, list[tuple[torch.cuda.Event, torch.cuda.Event]]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            if device.type == "cuda":
                start, end = (torch.cuda.Event(enable_timing=True) for _ in range(2))
                start.record()
                fn()
                end.record()
                events[name].append((start, end))
                continue
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    _sync(device)
    for name, pairs in events.items():
        times[name] += [a.elapsed_time(b) / 1e3 for a, b in pairs]
    return {k: min(v) for k, v in times.items()}


def _called(fn: Callable[[], object]) -> None:
    """fn(), its result dropped (alexnet.bench.measured then gives None or the error)."""
    fn()


def _train_step(model: torch.nn.Module, x: torch.Tensor,
                y: torch.Tensor) -> Callable[[], None]:
    opt = PaperSGD(param_groups(model))

    def step() -> None:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def _lrn_step(shapes: list[tuple[int, ...]], groups: int,
              device: torch.device) -> Callable[[], None]:
    inputs = [torch.rand(s, device=device).mul_(50).requires_grad_() for s in shapes]
    grads = [torch.randn(s, device=device) for s in shapes]

    def step() -> None:
        for a, g in zip(inputs, grads, strict=True):
            lrn(a, groups=groups).backward(g)

    return step


def _report(seconds: dict[str, float], batch: int) -> dict:
    """Images/s, the paper/torchvision ratio and LRN's share of the paper step, printed."""
    lrn_s, step = seconds["lrn"], seconds["paper"]
    result = {"images_per_s": {k: batch / v for k, v in seconds.items() if k != "lrn"},
              "lrn_seconds": lrn_s, "step_seconds": step,
              "paper_over_no_lrn": seconds["paper, no LRN"] / step,
              "lrn_share_of_step": lrn_s / step}
    if "torchvision layout" in seconds:
        result["paper_over_torchvision"] = seconds["torchvision layout"] / step
    for k, v in result["images_per_s"].items():
        print(f"  {k:20s} {v:8.1f} images/s")
    tv = f"paper / torchvision layout: {result['paper_over_torchvision']:.2f}x, " \
        if "paper_over_torchvision" in result else ""
    print(f"  {tv}paper / no LRN: {result['paper_over_no_lrn']:.2f}x")
    print(f"  LRN fwd+bwd alone (conv1 and conv2 shapes): {lrn_s * 1e3:.1f} ms, "
          f"{100 * result['lrn_share_of_step']:.1f}% of the paper step")
    return result


def _fwd_bwd(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
             wrt: list[torch.Tensor], g: torch.Tensor, amp: torch.dtype | None
             ) -> Callable[[], object]:
    """One forward of f(x) and the gradients of `wrt` for the output gradient g."""
    def step() -> object:
        with torch.autocast(x.device.type, dtype=amp or torch.float32, enabled=amp is not None):
            y = f(x)
        return torch.autograd.grad(y, wrt, g)

    return step


def _activation(shape: tuple[int, ...], device: torch.device, dtype: torch.dtype,
                fmt: torch.memory_format, scale: float = 50.0) -> torch.Tensor:
    x = torch.rand(shape, device=device).mul_(scale).to(dtype)
    return x.contiguous(memory_format=fmt).requires_grad_()


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f} ms"


LRN_FUSED = "relu+lrn fused"  # the row of what the net runs (its "/ relu" ratio: issue 8's goal)


def _lrn_rows(batch: int, device: torch.device, dtype: torch.dtype, fmt: torch.memory_format,
              timing: tuple[int, int], shapes: dict[str, tuple[int, ...]],
              out: dict | None = None) -> dict:
    """LRN forward+backward (Triton where it runs, and the torch path) beside a ReLU's; each
    layer's row goes into `out` as soon as it is timed, before the kernels' bandwidth is
    measured and the next layer compiles its kernels (a run stopped meanwhile keeps it). A
    kernel variant that fails is said in its row ("... error") beside the others' figures."""
    from alexnet.bench import keep_figures, measured

    out = {} if out is None else out
    for name, shape in shapes.items():
        x = _activation(shape, device, dtype, fmt)
        g = torch.randn_like(x)
        fns = {"relu": _fwd_bwd(F.relu, x, [x], g, None),
               "lrn torch": _fwd_bwd(lambda t: lrn(t, groups=2, backend="torch"), x, [x], g,
                                     None)}
        if device.type == "cuda" and use_triton_lrn(x, "auto"):
            fns["lrn triton"] = _fwd_bwd(lambda t: lrn(t, groups=2, backend="triton"), x, [x],
                                         g, None)
            fused = _fwd_bwd(lambda t: lrn(t, groups=2, backend="triton", relu=True),
                             x, [x], g, None)
            fns[LRN_FUSED] = fused
            # the conv's bias add too, as the net runs conv1 and conv2 (conv_act_lrn),
            # beside the same with the bias added in a pass of its own, as PyTorch adds it
            # after cuDNN's convolution (model.LRN_TAKES_BIAS = False)
            b = torch.rand(shape[1], device=device, requires_grad=True)
            fns[f"bias+{LRN_FUSED}"] = _fwd_bwd(
                lambda t, b=b: lrn(t, groups=2, backend="triton", relu=True, bias=b), x, [x, b],
                g, None)
            fns[f"bias add, then {LRN_FUSED}"] = _fwd_bwd(
                lambda t, b=b: lrn(t + b.view(1, -1, 1, 1).to(t.dtype), groups=2,
                                   backend="triton", relu=True), x, [x, b], g, None)
            module = triton_lrn_module()
            for layout in module.LAYOUTS:
                if layout != module.LAYOUT:
                    fns[f"{LRN_FUSED}, {layout} layout"] = _with_settings(fused,
                                                                            LAYOUT=layout)
        failed: dict[str, str] = {}
        t = time_all(fns, device, *timing, failed=failed)
        row: dict = {k: v for k, v in t.items()}
        line = f"  LRN {name} output {tuple(shape)}: ReLU fwd+bwd {_ms(t['relu'])}"
        for k in t:
            if k != "relu":
                row[f"{k} / relu"] = t[k] / t["relu"]
                line += f"; {k} {_ms(t[k])} = {t[k] / t['relu']:.2f}x ReLU"
        if "lrn triton" not in fns:
            line += "; lrn triton: needs CUDA and triton"
        elif module.LAYOUT == "auto":  # what it timed for the fused rows (the net's: bias)
            for bias in (False, True):
                chosen = module.auto_choice(x, 2, paper.LRN_N // 2, True, bias, paper.LRN_BETA)
                row["auto with bias" if bias else "auto"] = chosen
                line += f"; auto chose{' with the bias' if bias else ''} " + (
                    ", ".join(f"{k} {v}" for k, v in chosen.items()) or "tile (untimed)")
        for k, why in failed.items():
            row[f"{k} error"] = why
            line += f"; {k} failed: {why}"
        print(line)
        out[name] = row
        keep_figures()  # in --json now: a run killed later keeps it
        if "lrn triton" in t:
            row["bandwidth"] = measured(lambda x=x, g=g, name=name: _lrn_bandwidth(
                name, x.detach(), g, timing))
            keep_figures()
    return out


@contextlib.contextmanager
def setting(owner: object, name: str, value: object) -> Iterator[None]:
    """owner.name (a module's switch, read when used) set to `value` for a while, then
    restored."""
    default = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, default)


@contextlib.contextmanager
def lrn_settings(**values: str | int) -> Iterator[None]:
    """The Triton LRN module's switches (LAYOUT: ALEXNET_LRN_LAYOUT) set to `values` for a
    while, then restored."""
    with contextlib.ExitStack() as stack:
        for name, value in values.items():
            stack.enter_context(setting(triton_lrn_module(), name, value))
        yield


def _with_settings(step: Callable[[], object], **values: str | int) -> Callable[[], object]:
    """step run under `lrn_settings(**values)`."""
    def run() -> object:
        with lrn_settings(**values):
            return step()
    return run


def _lrn_bandwidth(name: str, x: torch.Tensor, g: torch.Tensor,
                   timing: tuple[int, int]) -> dict[str, float]:
    """GB/s of the Triton LRN's forward (reads a, writes b) and of each backward kernel
    (reads g and a, writes grad) alone, beside a copy of the same tensor (reads, writes):
    each kernel's bytes floor is its tensor passes at the copy's rate. The kernels with the
    ReLU folded in (in registers: the same bytes), as the net runs them: the fused rows
    before compiled each of them for this tensor, so none compiles again (with the ReLU
    apart, ten more kernels compiled here, seconds each)."""
    module = triton_lrn_module()
    consts = (2, paper.LRN_N // 2, paper.LRN_ALPHA, paper.LRN_BETA, paper.LRN_K, True)
    out = torch.empty_like(x)

    def forward() -> object:
        return torch.ops.alexnet.lrn(x, *consts)

    def backward() -> object:
        return torch.ops.alexnet.lrn_backward(g, x, *consts)

    fns = {"copy": lambda: out.copy_(x), "fwd": _with_settings(forward, LAYOUT="tile"),
           "bwd": _with_settings(backward, LAYOUT="tile")}
    for layout in module.LAYOUTS:
        if layout != "tile":
            fns[f"fwd {layout}"] = _with_settings(forward, LAYOUT=layout)
            fns[f"bwd {layout}"] = _with_settings(backward, LAYOUT=layout)
    t = time_all(fns, x.device, *timing)
    size = x.numel() * x.element_size()
    rate = {k: (2 if k == "copy" or k.startswith("fwd") else 3) * size / t[k] / 1e9
            for k in t}
    line = (f"  LRN {name} triton kernels, ReLU folded in (a copy of the tensor: "
            f"{rate['copy']:.0f} GB/s): ")
    line += ", ".join(f"{k} {_ms(t[k])} = {rate[k]:.0f} GB/s ({rate[k] / rate['copy']:.2f}x "
                      f"the copy's)" for k in t if k != "copy")
    print(line + f"; default layout: {module.LAYOUT}")
    return {f"{k} GB/s": v for k, v in rate.items()}


COLUMN_LAYERS = {  # name: (in maps, out maps, kernel, padding, side) of the paper's net
    "conv2": (paper.CONV1[0], paper.CONV2[0], paper.CONV2[1], paper.CONV2[3], 27),
    "conv4": (paper.CONV3[0], paper.CONV4[0], paper.CONV4[1], paper.CONV4[3], 13),
    "conv5": (paper.CONV4[0], paper.CONV5[0], paper.CONV5[1], paper.CONV5[3], 13),
}


def _column_rows(batch: int, device: torch.device, amp: torch.dtype | None,
                 fmt: torch.memory_format, timing: tuple[int, int],
                 out: dict | None = None) -> dict:
    """conv2, conv4, conv5 forward+backward in each column form, side by side; each layer's
    row in `out` (and --json) as soon as it is timed."""
    from alexnet.bench import keep_figures

    out = {} if out is None else out
    forms = ("groups", "separate", "dense")
    for name, (cin, cout, k, pad, side) in COLUMN_LAYERS.items():
        x = _activation((batch, cin, side, side), device, amp or torch.float32, fmt)
        ref = ColumnConv2d(cin, cout, k, 1, pad, groups=paper.COLUMNS,
                           cuda_auto=CUDA_AUTO_FORM[name]).to(device)
        fns = {}
        for form in forms:
            conv = ColumnConv2d(cin, cout, k, 1, pad, groups=paper.COLUMNS, form=form)
            conv.load_state_dict(ref.state_dict())
            conv = conv.to(device, memory_format=fmt)
            g = torch.randn(batch, cout, side, side, device=device, dtype=x.dtype)
            fns[form] = _fwd_bwd(conv, x, [x, conv.weight, conv.bias],
                                 g.contiguous(memory_format=fmt), amp)
        t = time_all(fns, device, *timing)
        auto = ref.resolved_form(x)
        print(f"  {name} fwd+bwd: " + ", ".join(
            f"{f} {_ms(t[f])} ({t['groups'] / t[f]:.2f}x groups)" for f in forms)
            + f"; auto picks {auto} here")
        out[name] = {**t, "auto": auto}
        keep_figures()
    return out


def _pad_and_pool_rows(batch: int, device: torch.device, dtype: torch.dtype,
                       fmt: torch.memory_format, timing: tuple[int, int]) -> dict:
    """conv1's zero padding beside conv1 (fwd+bwd); max-pool in NCHW and channels_last."""
    side = paper.CROP_SIZE
    pad = conv1_pad(side)
    image = torch.randn(batch, 3, side, side, device=device).to(dtype)
    image = image.contiguous(memory_format=fmt)
    conv1 = torch.nn.Conv2d(3, paper.CONV1[0], paper.CONV1[1], paper.CONV1[2]).to(
        device, memory_format=fmt)
    padded = F.pad(image, (0, pad, 0, pad))
    g = torch.randn(conv1(padded.float()).shape, device=device, dtype=dtype)
    amp = dtype if dtype != torch.float32 else None
    s1 = (side + pad - paper.CONV1[1]) // paper.CONV1[2] + 1
    formats = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}
    maps = {f: _activation((batch, paper.CONV1[0], s1, s1), device, dtype, m)
            for f, m in formats.items()}
    s2 = (s1 - paper.POOL_SIZE) // paper.POOL_STRIDE + 1
    pool_g = torch.randn(batch, paper.CONV1[0], s2, s2, device=device, dtype=dtype)

    def pool(t: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(t, paper.POOL_SIZE, paper.POOL_STRIDE)

    fns = {"pad": lambda: F.pad(image, (0, pad, 0, pad)),
           "conv1": _fwd_bwd(lambda t: conv1(t), padded, [conv1.weight, conv1.bias],
                             g.contiguous(memory_format=fmt), amp),
           # conv1 as the net runs it on CUDA (model.Conv1's blocks form): the same function
           "conv1 blocks": _fwd_bwd(lambda t: blocked_conv(t, conv1.weight, conv1.bias,
                                                           paper.CONV1[2]),
                                    padded, [conv1.weight, conv1.bias],
                                    g.contiguous(memory_format=fmt), amp)}
    for f, t in maps.items():
        gf = pool_g.contiguous(memory_format=formats[f])
        fns[f"pool {f}"] = _fwd_bwd(pool, t, [t], gf, None)
    triton_pool = device.type == "cuda" and triton_pool_module() is not None
    if triton_pool:  # the Triton kernels (ALEXNET_POOL=triton) on the channels_last maps
        kernels = torch.nn.MaxPool2d(paper.POOL_SIZE, paper.POOL_STRIDE)
        fns["pool triton"] = _fwd_bwd(lambda t: max_pool(t, kernels, "triton"),
                                      maps["channels_last"], [maps["channels_last"]],
                                      pool_g.contiguous(memory_format=torch.channels_last), None)
    failed: dict[str, str] = {}
    t = time_all(fns, device, *timing, failed=failed)
    print(f"  conv1's {pad}-pixel right/bottom padding {_ms(t['pad'])} beside conv1 fwd+bwd "
          f"{_ms(t['conv1'])} ({100 * t['pad'] / t['conv1']:.1f}%)")
    if "conv1 blocks" in t:
        print(f"  conv1 fwd+bwd (weight gradient, as in training): direct {_ms(t['conv1'])}, "
              f"as 4x4 blocks {_ms(t['conv1 blocks'])} "
              f"({t['conv1'] / t['conv1 blocks']:.2f}x direct's speed)")
    kernels = (f", Triton kernels (channels_last) {_ms(t['pool triton'])}" if "pool triton" in t
               else "".join(f", {k} failed: {why}" for k, why in failed.items()))
    runs = "Triton kernels" if use_triton_pool(maps["channels_last"], torch.nn.MaxPool2d(
        paper.POOL_SIZE, paper.POOL_STRIDE)) else "nn.MaxPool2d"
    print(f"  max-pool 3/2 fwd+bwd on conv1's maps: NCHW {_ms(t['pool nchw'])}, channels_last "
          f"{_ms(t['pool channels_last'])}{kernels}; the net runs {runs} on channels_last maps "
          "here")
    return t


def bench_parts(device: torch.device, quick: bool, parts: dict | None = None) -> dict:
    """The parts of the paper step beside their baselines (module docstring), printed; each
    part's figures go into `parts` (and --json) as soon as measured (a run stopped or killed
    later keeps them)."""
    from alexnet.bench import keep_figures

    parts = {} if parts is None else parts
    cuda = device.type == "cuda"
    batch = (64 if quick else 256) if cuda else (4 if quick else 16)
    dtype = torch.bfloat16 if cuda else torch.float32
    fmt = torch.channels_last if cuda else torch.contiguous_format
    timing = ((3, 10) if quick else (5, 20)) if cuda else ((1, 2) if quick else (1, 4))
    if cuda:
        torch.backends.cudnn.benchmark = True
    side = AlexNet.crop_size + conv1_pad(AlexNet.crop_size)
    s1 = (side - paper.CONV1[1]) // paper.CONV1[2] + 1  # 55
    s2 = (s1 - paper.POOL_SIZE) // paper.POOL_STRIDE + 1  # 27
    shapes = {"conv1": (batch, paper.CONV1[0], s1, s1), "conv2": (batch, paper.CONV2[0], s2, s2)}
    print(f"parts of the step, forward+backward, batch {batch}, {str(dtype)[6:]}, "
          f"{'channels_last' if cuda else 'NCHW'}, fastest of {timing[1]} after {timing[0]} "
          "warm-up rounds")
    parts.update(batch=batch, dtype=str(dtype),
                 layout="channels_last" if fmt == torch.channels_last else "nchw")
    parts["lrn"] = {}
    _lrn_rows(batch, device, dtype, fmt, timing, shapes, parts["lrn"])
    parts["columns"] = {}
    _column_rows(batch, device, dtype if cuda else None, fmt, timing, parts["columns"])
    parts["pad_and_pool"] = _pad_and_pool_rows(batch, device, dtype, fmt, timing)
    keep_figures()
    return parts


def bench(args: argparse.Namespace) -> dict:
    """Print and return images/s of each net's training step and LRN's share of the step.

    The parts of the step come first (issue 8's LRN goal is among them), each kept in
    args.figures as soon as measured, so that a run stopped by its time limit keeps them.
    On a CPU with several threads it also measures with one thread: on a shared machine,
    waits for a descheduled thread can dominate short operations.
    """
    from alexnet.bench import SMOKE_WIDTH, keep_figures
    from alexnet.evaluate import resolve_device

    device = resolve_device(args.device)
    smoke = bool(getattr(args, "smoke", False))
    width = SMOKE_WIDTH if smoke else 1.0
    batch = 2 if smoke else 8 if args.quick else 32
    warmup, repeats = (1, 1) if smoke else (1, 2) if args.quick else (2, 6)
    torch.manual_seed(0)
    x = torch.randn(batch, 3, paper.CROP_SIZE, paper.CROP_SIZE, device=device) * 50
    y = torch.randint(0, paper.NUM_CLASSES, (batch,), device=device)
    nets = {"paper": AlexNet(width=width), "paper, no LRN": AlexNet(lrn=False, width=width)}
    if not smoke:
        nets["torchvision layout"] = build_model("alexnet-tv")
    batches = {name: F.pad(x, (0, pad, 0, pad)) if (pad := loader_pad(net.arch, x.shape[-1]))
               else x for name, net in nets.items()}  # as the loader gives each net its batch
    side = AlexNet.crop_size + conv1_pad(AlexNet.crop_size)
    s1 = (side - paper.CONV1[1]) // paper.CONV1[2] + 1  # 55
    s2 = (s1 - paper.POOL_SIZE) // paper.POOL_STRIDE + 1  # 27
    shapes = [(batch, nets["paper"].conv1.out_channels, s1, s1),
              (batch, nets["paper"].conv2.out_channels, s2, s2)]
    fns = {name: _train_step(net.to(device).train(), batches[name], y)
           for name, net in nets.items()}
    fns["lrn"] = _lrn_step(shapes, paper.COLUMNS, device)
    threads = torch.get_num_threads()
    settings = [threads] + ([1] if device.type == "cpu" and threads > 1 and not args.quick
                            else [])
    result: dict = getattr(args, "figures", None)
    result = {} if result is None else result
    result["parts"] = {}
    bench_parts(device, args.quick, result["parts"])
    result.update(device=str(device), batch=batch)
    try:
        for n in settings:
            torch.set_num_threads(n)
            print(f"device {device}, batch {batch}, {n} thread(s), fastest of {repeats} "
                  f"interleaved repeats after {warmup} warm-up rounds")
            failed: dict[str, str] = {}
            seconds = time_all(fns, device, warmup, repeats, failed=failed)
            for name, why in failed.items():  # each figure of the report needs every step
                raise RuntimeError(f"the {name} step failed: {why}")
            result[f"threads_{n}"] = _report(seconds, batch)
            keep_figures()
    finally:
        torch.set_num_threads(threads)
    return result
