"""Mutation audit of run.cuda_graph (commit ffa25d4): tests that catch the wrong changes the
tests of tests/test_graphs.py let through.

CUDA graphs need CUDA: GraphedStep runs here with stand-in captures that replay train_step
eagerly on the static batch they were given. `Frozen` also holds each group's lr, momentum
and weight decay as they were at the capture, as a real graph holds them (PaperSGD reads them
as numbers), so a capture missed after an lr change shows. Everything is held to plain eager
train_step calls on the same batches, or to the settings' stated rules."""

from __future__ import annotations

import copy
import dataclasses
import json
import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from alexnet import paper
from alexnet.cli import main
from alexnet.config import from_dict, validate
from alexnet.distributed import DistInfo
from alexnet.errors import UserError
from alexnet.optim import PaperSGD, param_groups
from alexnet.training import graphs, loop
from alexnet.training.run_folder import announce
from alexnet.training.runtime import setup_runtime
from alexnet.training.state import RunState

HYPER = ("lr", "momentum", "weight_decay")


class Frozen:
    """A capture whose replay is train_step on the static batch it was given, with every
    group's lr, momentum and weight decay as they were at the capture (a graph holds them as
    numbers), returning the same two output tensors at every replay."""

    def __init__(self) -> None:
        self.static: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __call__(self, model, x, y, optimizer, rt):
        self.static.append((x, y))
        held = [{k: group[k] for k in HYPER} for group in optimizer.param_groups]
        out = (torch.zeros((), dtype=torch.float64), torch.zeros((), dtype=torch.int64))

        def replay():
            live = [{k: group[k] for k in HYPER} for group in optimizer.param_groups]
            for group, values in zip(optimizer.param_groups, held, strict=True):
                group.update(values)
            try:
                loss, wrong = loop.train_step(model, x, y, optimizer, rt)
            finally:
                for group, values in zip(optimizer.param_groups, live, strict=True):
                    group.update(values)
            out[0].copy_(loss)
            out[1].copy_(wrong)
            return out

        return replay


class Double(nn.Module):
    """The net's first layer: its input in float64 (the net computes in float64)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.double()


def small_net(dtype: torch.dtype = torch.float32, dropout: float = 0.5) -> nn.Sequential:
    torch.manual_seed(0)
    layers = [Double()] if dtype == torch.float64 else []
    net = nn.Sequential(*layers, nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Dropout(dropout),
                        nn.Linear(8, 3))
    return net.to(dtype)


def batch(n: int = 4, gen: torch.Generator | None = None,
          dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    gen = gen or torch.Generator().manual_seed(n)
    return (torch.randn(n, 3, 2, 2, generator=gen, dtype=torch.float64).to(dtype),
            torch.randint(0, 3, (n,), generator=gen))


def sgd(net: nn.Module) -> PaperSGD:
    """PaperSGD over the paper's two groups: weights (with weight decay) and biases."""
    return PaperSGD(param_groups(net), lr=0.1, momentum=paper.MOMENTUM,
                    weight_decay=paper.WEIGHT_DECAY)


def cpu_runtime():
    return setup_runtime(from_dict({"run": {"device": "cpu"}}), DistInfo())


def run_both(net: nn.Module, calls, between=None, capture=None):
    """The same (x, y) calls through a GraphedStep and through eager train_step on a copy of
    `net` (dropout drawn alike); `between(k, optimizer)` runs before call k on both sides.
    Returns (graphed losses, eager losses, graphed net, eager net, GraphedStep)."""
    eager_net, rt = copy.deepcopy(net), cpu_runtime()
    opt, eager_opt = sgd(net), sgd(eager_net)
    step = graphs.GraphedStep(net, opt, rt, capture=capture or Frozen())
    got, want = [], []
    for side, o, fn in ((got, opt, step),
                        (want, eager_opt,
                         lambda x, y: loop.train_step(eager_net, x, y, eager_opt, rt))):
        torch.manual_seed(7)
        for k, (x, y) in enumerate(calls):
            if between is not None:
                between(k, o)
            side.append(tuple(float(t) for t in fn(x, y)))
    return got, want, net, eager_net, step


def same_params(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_an_lr_change_in_one_group_only_is_captured_afresh() -> None:
    """Only the bias group's lr drops before the third step: the step is captured again (the
    capture holds every group's lr), and the run equals eager steps at the new lrs."""
    gen = torch.Generator().manual_seed(3)
    calls = [batch(4, gen) for _ in range(4)]

    def drop_bias_lr(k, optimizer):
        if k == 2:
            optimizer.param_groups[1]["lr"] = 0.01

    got, want, net, eager_net, step = run_both(small_net(), calls, drop_bias_lr)
    assert got == want and same_params(net, eager_net)
    assert step.captures == 2


def test_a_new_input_dtype_is_captured_afresh_not_rounded_into_the_old_input() -> None:
    """A float64 batch after float32 ones (a float64 net): captured again on a float64 static
    input; copied into the float32 one it would be rounded, unlike the eager step's."""
    gen = torch.Generator().manual_seed(4)
    calls = [batch(4, gen, torch.float32) for _ in range(2)] + \
        [batch(4, gen, torch.float64) for _ in range(2)]
    assert not torch.equal(calls[2][0], calls[2][0].float().double())  # float32 would round
    got, want, net, eager_net, step = run_both(small_net(torch.float64), calls)
    assert got == want and same_params(net, eager_net)
    assert step.captures == 2 and step._inputs[0].dtype == torch.float64


@pytest.mark.parametrize("pattern", ["y reused", "x reused", "A B A"])
def test_each_call_trains_on_its_own_batch_whatever_tensors_repeat(pattern) -> None:
    """Batches whose labels (or images) are the very tensor of the previous call, or a batch
    given again after another one: every call trains on the (x, y) it was given, as eager
    train_step calls do (the static input is refilled whenever either tensor is new)."""
    gen = torch.Generator().manual_seed(5)
    (x0, y0), (x1, y1), (x2, y2) = (batch(4, gen) for _ in range(3))
    calls = {"y reused": [(x0, y0), (x1, y0), (x2, y0)],
             "x reused": [(x0, y0), (x0, y1), (x0, y2)],
             "A B A": [(x0, y0), (x1, y1), (x0, y0), (x1, y1)]}[pattern]
    got, want, net, eager_net, step = run_both(small_net(), calls)
    assert got == want and same_params(net, eager_net)
    assert step.captures == 1


class Times3(nn.Module):
    """A wrapper that is not the bare net (as torch.compile's or DDP's are): logits x 3."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 3 * self.net(x)


def test_the_eager_training_step_trains_the_wrapped_model_not_the_bare_net() -> None:
    """Without run.cuda_graph the step goes through s.model (compiled or DDP), as train_step
    did before: its loss is the cross-entropy of the wrapper's logits."""
    net = small_net(dropout=0.0)
    model = Times3(net)
    s = RunState(model=model, net=net, optimizer=sgd(net), schedule=None)
    x, y = batch()
    with torch.no_grad():
        want = F.cross_entropy(3 * net(x), y).item()
        bare = F.cross_entropy(net(x), y).item()
    assert want != bare
    loss, _ = loop.training_step(s, cpu_runtime())(x, y)
    assert loss.item() == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize("run", [{"cuda_graph": True}, {"cuda_graph": True, "amp": "bf16"},
                                 {"cuda_graph": True, "channels_last": True},
                                 {"amp": "fp16"}, {"compile": True}])
def test_settings_a_graph_can_take_are_accepted(run) -> None:
    """Only cuda_graph with compile or with fp16 is refused: a graph with fp32, bf16 or
    channels_last passes, and so do fp16 and compile without a graph."""
    assert validate(from_dict({"run": run})).run.cuda_graph is bool(run.get("cuda_graph"))


CUDA = torch.device("cuda")
COLUMNS = (torch.device("cuda", 0), torch.device("cuda", 1))


@pytest.mark.parametrize("run,info,refused", [
    ({"cuda_graph": True}, {}, False),
    ({"cuda_graph": True, "amp": "bf16", "channels_last": True}, {}, False),
    ({"cuda_graph": True}, {"world_size": 2, "rank": 1}, True),
    ({"cuda_graph": True}, {"column_devices": COLUMNS}, True),
    ({"cuda_graph": True}, {"world_size": 2, "column_devices": COLUMNS}, True),
    ({}, {"world_size": 2}, False),
    ({}, {"column_devices": COLUMNS}, False),
    ({"compile": True}, {}, False)])
def test_the_runtime_takes_a_graph_for_one_cuda_process_on_one_device(
        monkeypatch, run, info, refused) -> None:
    """setup_runtime for a CUDA device (only its name: no GPU is touched): a graph is refused
    under torchrun (world size 2) and with split columns, and kept (rt.cuda_graph) for one
    process on one device; without the option those runs are not refused, and compile alone
    does not turn the graph on."""
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", torch.backends.cudnn.benchmark)
    config = from_dict({"run": {"device": "cuda", **run}})
    dist = DistInfo(device=CUDA, **info)
    if refused:
        with pytest.raises(UserError, match="leave it off under torchrun"):
            setup_runtime(config, dist)
        return
    rt = setup_runtime(config, dist)
    assert rt.cuda_graph is bool(run.get("cuda_graph"))
    assert rt.compile is bool(run.get("compile")) and rt.channels_last is config.run.channels_last


def test_the_flag_sets_the_option(capsys) -> None:
    """--cuda-graph turns run.cuda_graph on (the resolved config says so), and `alexnet
    train --cuda-graph` on the CPU stops at the runtime's refusal, before the data."""
    assert main(["train", "--cuda-graph", "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out)["run"]["cuda_graph"] is True
    assert main(["train", "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out)["run"]["cuda_graph"] is False
    assert main(["train", "--data", "/nonexistent/store", "--device", "cpu", "--cuda-graph",
                 "--out", "/nonexistent/run"]) == 2
    err = capsys.readouterr().err
    assert "run.cuda_graph needs a CUDA device" in err and "store" not in err, err


class Epochs:
    """A list of batches as the training loop reads a loader (and a store's length)."""

    def __init__(self, items: list) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def epoch(self, epoch: int, start: int = 0):
        yield from self.items[start:]


@pytest.mark.parametrize("run,named", [({"cuda_graph": True}, "cuda_graph"),
                                       ({"compile": True}, "compile"), ({}, None)])
def test_the_announcement_names_the_graph_when_on(capsys, tmp_path, run, named) -> None:
    """announce's settings line ends with the speed options that are on, cuda_graph among
    them, and names none that is off."""
    config = from_dict({"run": run})
    rt = types.SimpleNamespace(dist=DistInfo(), device=torch.device("cpu"))
    store = Epochs([None] * 10)
    store.classes = ["a", "b"]
    announce(config, rt, store, None, 4, 2, types.SimpleNamespace(root=tmp_path), None)
    line = next(row for row in capsys.readouterr().out.splitlines() if ", amp " in row)
    tail = line.split(", amp ", 1)[1].split(", ")[1:]
    assert tail == ([named] if named else [])


def test_bench_trainer_captures_once_and_trains_like_eager(monkeypatch) -> None:
    """bench pipeline's graphed Trainer (its capture a stand-in here): one capture for
    model_rate's steps on one batch and the new batches after it, and the parameters of the
    eager Trainer's same steps."""
    from alexnet.bench.pipeline import Trainer
    from alexnet.model import loader_pad

    capture = Frozen()
    monkeypatch.setattr(graphs, "graphed_step", capture)
    size = paper.CROP_SIZE + loader_pad("alexnet", paper.CROP_SIZE)
    gen = torch.Generator().manual_seed(6)
    batches = [(torch.randn(1, 3, size, size, generator=gen), torch.tensor([k]))
               for k in range(2)]
    calls = [batches[0]] * 2 + [batches[1]]
    trainers = []
    for graphed in (False, True):
        trainer = Trainer(torch.device("cpu"), 4, width=0.0625, graphed=graphed)
        torch.manual_seed(8)
        for x, y in calls:
            trainer.step(x, y)
        trainers.append(trainer)
    assert len(capture.static) == 1 and trainers[1]._graphed_step.captures == 1
    for a, b in zip(trainers[0].net.parameters(), trainers[1].net.parameters(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-8)  # conv kernels: to rounding


def test_two_epochs_with_an_lr_drop_and_validation_between_equal_eager_ones(monkeypatch) -> None:
    """The loop over two epochs (new batch tensors each epoch), an evaluation pass in eval
    mode and an lr drop (every group) between them: one GraphedStep kept on the run state,
    captured twice, and the eager run's sums and parameters."""
    monkeypatch.setattr(graphs, "graphed_step", Frozen())
    config = from_dict({"run": {"device": "cpu", "progress": False, "log_every": 0},
                        "optim": {"epochs": 2}})
    results = {}
    for graphed in (False, True):
        net = small_net()
        rt = dataclasses.replace(setup_runtime(config, DistInfo()), cuda_graph=graphed)
        s = RunState(model=net, net=net, optimizer=sgd(net), schedule=None)
        rows = []
        torch.manual_seed(9)
        for epoch in range(2):
            gen = torch.Generator().manual_seed(10 + epoch)
            loader = Epochs([batch(4, gen) for _ in range(3)])
            s.epoch, s.step, s.acc = epoch, 0, {}
            assert loop.train_epoch(s, loader, config, rt, loop.StopRequest(), 0.0) is None
            acc = dict(s.acc)
            acc.pop("seconds")
            rows.append(acc)
            net.eval()
            with torch.no_grad():
                net(batch(4)[0])
            for group in s.optimizer.param_groups:
                group["lr"] /= 10
        results[graphed] = (rows, net, s)
    (eager_rows, eager_net, _), (rows, net, s) = results[False], results[True]
    assert rows == eager_rows and same_params(net, eager_net)
    assert s.graphed.captures == 2
