"""`alexnet bench train`: training images/s of the paper net in fp32 and with each speed option.

Each setting runs full training steps (forward, cross-entropy, backward, PaperSGD update,
through alexnet.training.loop.train_step) on a fixed batch already on the device, so the figure is
the model's training speed without data loading (`alexnet bench data` measures the loader).
Each net gets the batch its loader gives it (model.loader_pad): the paper net 224 patches
with conv1's 3 zero columns and rows already written (227), torchvision's layouts 224.
Warm-up steps (and torch.compile's compilation) are excluded. The nets of a setting are timed
in turns, one step of each a round, and each one's fastest step is kept (on CUDA each step
bracketed by CUDA events): a machine whose load changes slows them alike, so the
paper/torchvision ratio is of figures measured side by side. Each net is made on the device
(no CPU initialisation per row), and each row is in --json as soon as it is timed. Beside the
paper's two-column net, under the same settings and in the same run: torchvision's own
`torchvision.models.alexnet` when torchvision imports (the paper/torchvision ratio of each
setting is printed), and this project's torchvision layout (`build_model("alexnet-tv")`; not
compiled, to keep the benchmark short).

On CUDA the row `bf16+channels_last+CUDA graph` replays the whole step (train_step, captured
once by alexnet.training.graphs.graphed_step after its warm-up) from a CUDA graph: one launch
per step instead of one per kernel, without torch.compile (`alexnet train`'s run.cuda_graph).

Model FLOPs utilisation (CUDA): the paper net's FLOPs per image are counted analytically from
its layers (2 x multiply-accumulates of every conv and fully connected layer; x3 for forward
plus backward), divided by the device's dense bf16 tensor-core peak from PEAK_BF16_TFLOPS
(H100 SXM and H200: 989 TFLOP/s, NVIDIA's datasheets, without sparsity). The same peak is
used for every setting, so fp32 rows show how far they are from what bf16 could reach.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from alexnet import paper
from alexnet.training.runtime import compile_model

PEAK_BF16_TFLOPS = {  # dense (no sparsity) bf16 tensor-core peaks, NVIDIA datasheets;
    "H200 NVL": 835.0,  # the first key within the device's name wins: longer names first
    "H200": 989.0,
    "H100 80GB HBM3": 989.0,  # SXM
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "H100": 989.0,
    "A100": 312.0,
}


def flops_per_image(model: nn.Module, crop: int = paper.CROP_SIZE) -> dict[str, float]:
    """Forward multiply-accumulates of every conv/linear layer, counted from their shapes."""
    macs = 0

    def hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        nonlocal macs
        if isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1]
            macs += output[0].numel() * (module.in_channels // module.groups) * k
        elif isinstance(module, nn.Linear):
            macs += module.in_features * module.out_features

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, nn.Conv2d | nn.Linear)]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, crop, crop, device=next(model.parameters()).device))
    finally:
        for h in handles:
            h.remove()
        model.train()
    return {"forward_macs": float(macs), "train_flops": 2.0 * 3.0 * macs}


def peak_tflops(device: torch.device) -> float | None:
    """The dense bf16 peak of this GPU from the table, or None when it is not listed."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_BF16_TFLOPS.items():
        if key in name:
            return value
    return None


BF16_CL = "bf16+channels_last"  # the row of issue 8's first goal (paper/tv >= 0.8x)
COMPILED_ROW = "bf16+channels_last+compile (fast)"  # its second (>= 0.9x)
GRAPH_ROW = "bf16+channels_last+CUDA graph"  # bench's row of the step replayed from a CUDA graph


def settings_for(device: torch.device, quick: bool) -> list[tuple[str, dict[str, Any], str]]:
    """(name, run-config overrides, note): the speed options this device can run."""
    bf16_cl = {"amp": "bf16", "channels_last": True}
    rows = [("fp32", {}, "")]
    if device.type != "cuda":
        rows.append(("channels_last", {"channels_last": True}, ""))
    rows += [("bf16", {"amp": "bf16"}, ""), (BF16_CL, bf16_cl, "")]
    if device.type == "cuda":  # issue 8's rows first: a time limit may stop what follows
        rows.append((COMPILED_ROW, {**bf16_cl, "compile": True}, ""))
        if not quick:
            rows.append(("fp16+GradScaler", {"amp": "fp16"}, ""))
        rows.append((GRAPH_ROW, {**bf16_cl, "cuda_graph": True}, ""))
    else:
        rows.append(("fp16+GradScaler", None, "skipped: fp16 autocast with loss scaling "
                     "needs CUDA"))
        rows.append(("compile", None, "skipped on the CPU: inductor builds C++ for minutes; "
                     "benchmarked on CUDA"))
        rows.append((GRAPH_ROW, None, "skipped: CUDA graphs need CUDA"))
    return rows


def torchvision_alexnet() -> nn.Module | None:
    """torchvision.models.alexnet (random weights), or None when torchvision does not import
    (alexnet.bench.torchvision_problem)."""
    from alexnet.bench import torchvision_problem

    if torchvision_problem():
        return None
    from torchvision.models import alexnet

    return alexnet(num_classes=paper.NUM_CLASSES)


def build_net(arch: str, width: float = 1.0, device: torch.device | None = None,
              **kwargs: Any) -> nn.Module | None:
    """`alexnet` (at `width`, with `kwargs`), `alexnet-tv` (this project's nets) or
    `torchvision`, its parameters made and initialised on `device` (default: the CPU): on a
    GPU that takes milliseconds, where the CPU takes about a second for a full-size net, at
    each of bench train's 30 rows."""
    from alexnet.bench import torchvision_problem
    from alexnet.model import build_model

    if arch == "torchvision" and torchvision_problem():  # imports it, outside `device`
        return None
    with torch.device(device or "cpu"):
        if arch == "torchvision":
            return torchvision_alexnet()
        sized = {"width": width, **kwargs} if arch == "alexnet" else {}
        return build_model(arch, num_classes=paper.NUM_CLASSES, **sized)


def warm_step(arch: str, device: torch.device, batch: int, run_opts: dict[str, Any],
              warmup: int, width: float = 1.0, **net_kwargs: Any
              ) -> Callable[[], tuple[torch.Tensor, torch.Tensor]]:
    """One training step of `arch` on a fixed synthetic batch, as bench times it, after
    `warmup` steps (compile happens during warm-up): call it for each further step.

    `run_opts` are run-config values, except `cuda_graph`: True replays the step from a CUDA
    graph (`graphed_step`, its warm-up before the capture; one untimed replay). `net_kwargs`
    go to the net, except `split_columns`: True runs the paper net as `split_columns` of it
    with both columns on `device`.
    """
    from alexnet.config import Config
    from alexnet.distributed import DistInfo
    from alexnet.model import loader_pad
    from alexnet.optim import PaperSGD, param_groups
    from alexnet.training.graphs import graphed_step
    from alexnet.training.loop import train_step
    from alexnet.training.runtime import setup_runtime

    opts = dict(run_opts)
    graphed = bool(opts.pop("cuda_graph", False))
    config = Config()
    for key, value in opts.items():
        setattr(config.run, key, value)
    rt = setup_runtime(config, DistInfo(device=device))
    if graphed and rt.compile:
        raise ValueError("warm_step: cuda_graph replays the eager step; not with compile")
    torch.manual_seed(0)
    split = bool(net_kwargs.pop("split_columns", False))
    net = build_net(arch, width, device, **net_kwargs)
    if split:  # SplitAlexNet with both columns on this device
        from alexnet.model import split_columns

        net = split_columns(net, (device, device))
    net = net.to(device)
    if rt.channels_last:
        net = net.to(memory_format=torch.channels_last)
    optimizer = PaperSGD(param_groups(net), lr=paper.BASE_LR, momentum=paper.MOMENTUM,
                         weight_decay=paper.WEIGHT_DECAY)
    model = compile_model(net, device) if rt.compile else net
    if rt.compile and model is net:  # its gradient check failed: eager is not this row
        raise RuntimeError("torch.compile gives wrong gradients here (compile_model's check)")
    pad = loader_pad(arch, paper.CROP_SIZE)  # conv1's zeros, as the loader writes them
    x = nn.functional.pad(torch.randn(batch, 3, paper.CROP_SIZE, paper.CROP_SIZE,
                                      device=device) * 60, (0, pad, 0, pad))
    if rt.channels_last:  # as the loader delivers it
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, paper.NUM_CLASSES, (batch,), device=device)
    if graphed:
        step = graphed_step(model, x, y, optimizer, rt, warmup)
        step()  # the first launch also uploads the graph
        return step
    step = functools.partial(train_step, model, x, y, optimizer, rt)
    for _ in range(warmup):
        step()
    return step


def time_setting(archs: list[str], device: torch.device, batch: int,
                 run_opts: dict[str, Any], warmup: int, steps: int, width: float = 1.0
                 ) -> dict[str, float | dict[str, str]]:
    """Images/s of each net of `archs` under `run_opts`, timed in turns: each net's step is
    made and warmed (`warm_step`), then `steps` rounds of one step of each (model.time_all),
    the fastest step of each kept; so a machine whose load changes slows them alike and each
    setting's paper/torchvision ratio comes from the same rounds. A net that fails is
    {"error": ...} in its place (alexnet.bench.measured); the others are timed without it."""
    from alexnet.bench import measured
    from alexnet.bench.model import time_all

    rates: dict[str, float | dict[str, str]] = {}
    fns: dict[str, Callable[[], Any]] = {}
    for arch in archs:
        step = measured(functools.partial(warm_step, arch, device, batch, run_opts, warmup,
                                          width))
        if isinstance(step, dict):
            rates[arch] = step
        else:
            fns[arch] = step
    failed: dict[str, str] = {}
    seconds = time_all(fns, device, 0, steps, failed=failed)
    for arch, why in failed.items():
        rates[arch] = {"error": why}
    for arch, s in seconds.items():
        rates[arch] = batch / s
    return {arch: rates[arch] for arch in archs}


ARCH_COLUMNS = {"alexnet": "paper net", "torchvision": "torchvision",
                "alexnet-tv": "tv layout"}
# CUDA, full run: warm-up and timed steps of each variant row (the table's rows, issue 8's
# goals among them, keep 5 + 20). A variant's time goes to its build and its kernels'
# compilation; 12 fewer steps of ~10 ms save ~0.15 s a row, ~1.5 s in all
VARIANT_TIMING = (3, 10)


def bench(args: argparse.Namespace) -> dict[str, Any]:
    """Print and return images/s (and MFU on CUDA) of each setting for every net."""
    from alexnet.bench import SMOKE_WIDTH, keep_figures, torchvision_problem
    from alexnet.evaluate import resolve_device
    from alexnet.model import build_model

    device = resolve_device(getattr(args, "device", "auto"))
    quick = bool(getattr(args, "quick", False))
    smoke = bool(getattr(args, "smoke", False))
    cuda = device.type == "cuda"
    batch = (128 if quick else 256) if cuda else (4 if quick else 16)
    warmup, steps = (3, 5) if quick else ((5, 20) if cuda else (1, 3))
    if smoke:
        batch, warmup, steps = 2, 1, 1
    width = SMOKE_WIDTH if smoke else 1.0
    flops = flops_per_image(build_model("alexnet", num_classes=paper.NUM_CLASSES))
    peak = peak_tflops(device)
    archs = ["alexnet", "torchvision", "alexnet-tv"]
    problem = torchvision_problem()
    if problem:
        archs.remove("torchvision")
        print(f"{problem}: the paper/torchvision ratio is against this project's "
              "torchvision layout (alexnet-tv)")
    if smoke:  # the paper net alone, at SMOKE_WIDTH; the full-size layouts cost minutes
        archs = ["alexnet"]
    tv = archs[1] if len(archs) > 1 else None
    print(f"device {device}{' (' + torch.cuda.get_device_name(device) + ')' if cuda else ''}, "
          f"batch {batch}, {warmup} warm-up steps, then {steps} rounds of one step of each net "
          "in turns (fastest step), synthetic data on device (the paper net's 224 patches "
          "padded to 227 by the loader, as in training)")
    print(f"paper net: {flops['forward_macs'] / 1e9:.2f} GMAC forward per image, "
          f"{flops['train_flops'] / 1e9:.1f} GFLOP per trained image (2 x MACs x 3)")
    figures = getattr(args, "figures", None)  # alexnet.bench.run's: filled as timed
    results: dict[str, Any] = {} if figures is None else figures
    results.update({"device": str(device), "batch": batch,
                    "train_gflop_per_image": flops["train_flops"] / 1e9,
                    "peak_bf16_tflops": peak, "versus": tv, "settings": {}})
    base: dict[str, float] = {}
    print(f"{'setting':<36}{'paper net':>11}{'x fp32':>8}{ARCH_COLUMNS.get(tv, '-'):>13}"
          f"{'paper/tv':>10}" + (f"{'tv layout':>11}" if tv == "torchvision" else "")
          + f"{'MFU':>7}   (images/s)")
    for name, opts, note in settings_for(device, quick):
        if opts is None:
            print(f"{name:<36}{note}")
            results["settings"][name] = {"note": note}
            continue
        row: dict[str, Any] = {}
        results["settings"][name] = row  # in --json once timed: a run stopped later keeps it
        # one more compilation would add a minute for a redundant figure
        timed = [arch for arch in archs
                 if not (arch == "alexnet-tv" and tv != "alexnet-tv" and opts.get("compile"))]
        for arch, rate in time_setting(timed, device, batch, opts, warmup, steps,
                                       width).items():
            if isinstance(rate, dict):  # this net failed in this setting; the others go on
                row.setdefault("errors", {})[arch] = rate["error"]
                continue
            row[arch] = rate
            base.setdefault(arch, rate)
        if tv in row and "alexnet" in row:
            row["paper_over_torchvision"] = row["alexnet"] / row[tv]
        if peak and "alexnet" in row:
            row["mfu"] = row["alexnet"] * flops["train_flops"] / (peak * 1e12)
        print(_setting_line(name, row, base, tv))
        for arch, why in row.get("errors", {}).items():
            print(f"  {name}: {ARCH_COLUMNS[arch]} failed: {why}")
        keep_figures()  # the row in --json now: a run killed later keeps it
    if cuda and peak is None:
        print(f"MFU: {torch.cuda.get_device_name(device)} is not in PEAK_BF16_TFLOPS")
    results["variants"] = {}
    timing = VARIANT_TIMING if cuda and not quick else (warmup, steps)
    results["variant_timing"] = {"warmup": timing[0], "steps": timing[1]}
    results["variants_default"] = {}  # the default's images/s in each variant's rounds
    time_variants(device, batch, *timing, width, into=results["variants"],
                  beside=results["variants_default"])
    return results


def _figure(value: float | None, width: int, form: str = ".1f") -> str:
    """value right-aligned in `width` characters, or "-" where it was not measured."""
    return f"{value:>{width}{form}}" if value is not None else f"{'-':>{width}}"


def _setting_line(name: str, row: dict[str, Any], base: dict[str, float], tv: str | None
                  ) -> str:
    """One line of bench's table: the paper net, its ratio to fp32, the net beside it and
    the ratio, the tv layout (beside torchvision's own), MFU; "-" for what was not measured."""
    paper, fp32 = row.get("alexnet"), base.get("alexnet")
    ratio = paper / fp32 if paper is not None and fp32 else None
    mfu = f"{100 * row['mfu']:.1f}%" if "mfu" in row else "-"
    versus = f"{'-':>13}{'-':>10}"
    if tv:
        over = row.get("paper_over_torchvision")
        versus = _figure(row.get(tv), 13) + (f"{over:>9.2f}x" if over is not None else
                                             f"{'-':>10}")
    layout = _figure(row.get("alexnet-tv"), 11) if tv == "torchvision" else ""
    return f"{name:<36}{_figure(paper, 11)}{_figure(ratio, 8, '.2f')}{versus}{layout}{mfu:>7}"


def variants_for(device: torch.device
                 ) -> list[tuple[str, dict[str, Any], Callable[[], Any] | None]]:
    """(name, AlexNet kwargs, setting or None): the paper net's other ways to run the same
    function, each timed as a whole step beside the default in the same run; a setting is a
    context manager factory (a Triton LRN choice, the max-pool the net does not run by default)
    held while it runs."""
    import alexnet.model
    from alexnet.bench.model import lrn_settings, setting
    from alexnet.model import (
        COLUMN_FORMS,
        triton_lrn_module,
        triton_pool_module,
        use_triton_lrn,
        use_triton_pool,
    )

    # the newest choices first (the bias fold, conv1, the halo, halo2, gather and band
    # layouts): a time limit cuts the last rows
    conv1 = "direct" if device.type == "cuda" else "blocks"  # the form auto does not run
    rows: list[tuple[str, dict[str, Any], Callable[[], Any] | None]] = [
        (f"conv1 {conv1} (ALEXNET_CONV1={conv1})", {"conv1_form": conv1}, None)]
    columns = [(f"columns {form} (all three layers)", {"column_conv": form}, None)
               for form in COLUMN_FORMS if form != "auto"]
    # split_columns on one device: each column its own tensors from conv1 to fc7, so no
    # grouped convolution and no slicing of one column's maps out of both's
    columns.append(("columns split (SplitAlexNet, one device)", {"split_columns": True}, None))
    if device.type != "cuda":
        return rows + columns
    probe = torch.zeros(1, device=device)
    module = triton_lrn_module()
    if module is not None and use_triton_lrn(probe):
        rows.insert(0, ("conv1/conv2 bias added apart, not in the LRN kernel", {},
                        functools.partial(setting, alexnet.model, "LRN_TAKES_BIAS", False)))
        # the layouts auto chooses among, each for the whole step (`bench model` times every
        # layout)
        newest = {"halo": 0, "halo2": 1, "gather": 2, "band": 3}  # first
        layouts = sorted((v for v in module.AUTO_LAYOUTS if v != module.LAYOUT),
                         key=lambda v: newest.get(v, 4))
        rows += [(f"LRN {v} layout", {}, functools.partial(lrn_settings, LAYOUT=v))
                 for v in layouts]
    if triton_pool_module() is not None:  # the other max-pool beside the one the net runs
        maps = torch.zeros(1, 8, 3, 3, device=device).contiguous(memory_format=torch.channels_last)
        other = "torch" if use_triton_pool(maps, nn.MaxPool2d(3, 2)) else "triton"
        name = {"torch": "nn.MaxPool2d", "triton": "Triton kernels"}[other]
        rows.append((f"max-pool {name} (ALEXNET_POOL={other})", {},
                     functools.partial(setting, alexnet.model, "POOL_BACKEND", other)))
    return rows + columns


def time_variants(device: torch.device, batch: int, warmup: int, steps: int, width: float,
                  into: dict[str, Any] | None = None,
                  beside: dict[str, float] | None = None) -> dict[str, Any]:
    """Images/s of the paper net in each of `variants_for` and by default, under bench's fast
    setting (bf16 + channels_last on CUDA, fp32 on the CPU): which column form, LRN and pool
    choice is fastest for the whole step.

    Each variant is timed in turns with the default (model.time_all: `warmup` untimed rounds,
    then `steps` rounds of one step each, the fastest step of each kept), so that its ratio
    comes from two figures measured side by side; the default's step is made once and kept
    warm. `into` gets each variant's images/s and, as "default", the default's best over all
    its rounds; `beside` the default's images/s in each variant's own rounds (the ratio's
    denominator). Each line is printed and written to --json (keep_figures) as soon as it is
    timed, so that a run stopped by a time limit, or killed, keeps the lines it reached; a
    variant that fails is said in its place ({"error": ...}, alexnet.bench.measured) and the
    others go on, timed alone (no ratio) where the default itself failed."""
    from alexnet.bench import keep_figures, measured
    from alexnet.bench.model import time_all

    opts = {"amp": "bf16", "channels_last": True} if device.type == "cuda" else {}
    label = BF16_CL if opts else "fp32"
    print(f"paper net, other ways to compute the same function ({label}, whole step, "
          f"{warmup} warm-up + {steps} timed steps, each in turns with the default, "
          "fastest step):")
    out: dict[str, Any] = {} if into is None else into
    beside = {} if beside is None else beside

    def made(kwargs: dict[str, Any], setting: Callable[[], Any] | None
             ) -> Callable[[], Any]:
        """The variant's step, made and run under its setting (held for each step only, so
        that the default's steps between them run without it)."""
        with setting() if setting else contextlib.nullcontext():
            step = warm_step("alexnet", device, batch, opts, 0, width, **kwargs)

        def run() -> Any:
            with setting() if setting else contextlib.nullcontext():
                return step()

        return run

    def pair(name: str, kwargs: dict[str, Any], setting: Callable[[], Any] | None,
             default: Callable[[], Any] | None) -> None:
        """The variant `name` timed in turns with `default` (None: alone), into out/beside;
        its net freed on return, before the next variant's is made."""
        step = measured(functools.partial(made, kwargs, setting))
        if isinstance(step, dict):
            out[name] = step
            return
        fns = {name: step} if default is None else {"default": default, name: step}
        failed: dict[str, str] = {}
        seconds = time_all(fns, device, warmup, steps, failed=failed)
        if "default" in failed:  # no ratio from here on
            out["default"] = {"error": failed["default"]}
        out[name] = {"error": failed[name]} if name in failed else batch / seconds[name]
        if "default" in seconds:
            beside[name] = batch / seconds["default"]
            out["default"] = max(beside[name], out.get("default", 0.0))

    default = measured(functools.partial(made, {}, None))
    if isinstance(default, dict):
        out["default"] = default
        print(f"  {'default':<40}failed: {default['error']}; the variants without a ratio",
              flush=True)
    for name, kwargs, setting in variants_for(device):
        pair(name, kwargs, setting,
             None if isinstance(out.get("default"), dict) else default)
        keep_figures()  # in --json now: a run killed later keeps it
        rate = out[name]
        if isinstance(rate, dict):
            print(f"  {name:<40}failed: {rate['error']}", flush=True)
            continue
        ratio = (f"{rate / beside[name]:>8.2f}x default ({beside[name]:.1f} beside it)"
                 if name in beside else "")
        print(f"  {name:<40}{rate:>11.1f} images/s{ratio}", flush=True)
    if isinstance(out.get("default"), float):
        print(f"  {'default':<40}{out['default']:>11.1f} images/s (its fastest, in the rounds "
              "above)", flush=True)
    return out
