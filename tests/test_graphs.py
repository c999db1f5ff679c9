"""run.cuda_graph (alexnet/training/graphs.py): each training step replayed from a CUDA graph.

A graph's replay needs CUDA; here a stand-in capture replays train_step eagerly on the static
batch the capture was given and returns the same output tensors every time (as a graph
overwrites its outputs), so that the refilling of the static batch, the captures again on a
new lr or batch shape, and the training loop's use of the outputs are checked against plain
eager steps. On CUDA the real graph is held to eager steps too."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from torch import nn

from alexnet import paper
from alexnet.cli import main
from alexnet.config import from_dict, validate
from alexnet.distributed import DistInfo
from alexnet.errors import UserError
from alexnet.optim import PaperSGD, PlateauSchedule
from alexnet.training import graphs, loop
from alexnet.training.runtime import setup_runtime
from alexnet.training.state import RunState


class StandIn:
    """A capture that replays train_step on the static batch it was given, eagerly, and
    returns the same two output tensors at every replay (a graph's outputs are overwritten)."""

    def __init__(self) -> None:
        self.static: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __call__(self, model, x, y, optimizer, rt):
        self.static.append((x, y))
        out = (torch.zeros(()), torch.zeros((), dtype=torch.int64))

        def replay():
            loss, wrong = loop.train_step(model, x, y, optimizer, rt)
            out[0].copy_(loss)
            out[1].copy_(wrong)
            return out

        return replay


def net_and_batches(sizes=(4, 4, 4, 4, 4)):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Dropout(0.5),
                        nn.Linear(8, 3))
    gen = torch.Generator().manual_seed(1)
    batches = [(torch.randn(n, 3, 2, 2, generator=gen), torch.randint(0, 3, (n,), generator=gen))
               for n in sizes]
    return net, batches


def optimizer(net: nn.Module) -> PaperSGD:
    return PaperSGD(net.parameters(), lr=0.1, momentum=paper.MOMENTUM,
                    weight_decay=paper.WEIGHT_DECAY)


def runtime():
    return setup_runtime(from_dict({"run": {"device": "cpu"}}), DistInfo())


def test_replays_train_like_eager_steps_refilling_the_static_batch() -> None:
    """Five batches through GraphedStep give the parameters, losses and error counts of five
    eager train_step calls (dropout drawn alike): each batch reached the static input, and
    one capture served them all."""
    net, batches = net_and_batches()
    eager_net = copy.deepcopy(net)
    rt, capture = runtime(), StandIn()
    step = graphs.GraphedStep(net, optimizer(net), rt, capture=capture)
    eager_opt = optimizer(eager_net)
    torch.manual_seed(5)
    got = [tuple(float(t) for t in step(x, y)) for x, y in batches]
    torch.manual_seed(5)
    want = [tuple(float(t) for t in loop.train_step(eager_net, x, y, eager_opt, rt))
            for x, y in batches]
    assert got == want and len(set(got)) == len(got)
    for a, b in zip(net.parameters(), eager_net.parameters(), strict=True):
        assert torch.equal(a, b)
    assert step.captures == 1 and len(capture.static) == 1
    static_x, _ = capture.static[0]
    assert torch.equal(static_x, batches[-1][0]) and static_x is not batches[-1][0]


def test_a_new_lr_or_batch_shape_is_captured_afresh_and_nothing_else_is() -> None:
    net, batches = net_and_batches((4, 4, 4, 3, 3, 4))
    opt = optimizer(net)
    step = graphs.GraphedStep(net, opt, runtime(), capture=StandIn())
    counts = []
    for k, (x, y) in enumerate(batches):
        if k == 2:  # the plateau schedule divides lr by 10
            schedule = PlateauSchedule(opt, patience=0)
            schedule.step(0.5)
            schedule.step(0.5)
            assert opt.param_groups[0]["lr"] == pytest.approx(0.01)
        step(x, y)
        counts.append(step.captures)
    # batch 0: the first capture; 2: lr 0.01; 3: 3 images; 5: 4 images again
    assert counts == [1, 1, 2, 3, 3, 4]


class Loader:
    """The training loop's view of a loader: the same batches every epoch."""

    def __init__(self, batches: list) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def epoch(self, epoch: int, start: int = 0):
        yield from self.batches[start:]


def test_the_loop_trains_through_the_graphed_step_with_cuda_graph_on(monkeypatch) -> None:
    """train_epoch with run.cuda_graph (its Runtime made on the CPU here, where setup_runtime
    refuses it) takes every step through one GraphedStep kept on the run state, and its
    sums of loss and errors are the eager epoch's."""
    results = {}
    for graphed in (False, True):
        net, batches = net_and_batches()
        monkeypatch.setattr(graphs, "graphed_step", StandIn())
        config = from_dict({"run": {"device": "cpu", "progress": False, "log_every": 0},
                            "optim": {"epochs": 1}})
        rt = dataclasses.replace(setup_runtime(config, DistInfo()), cuda_graph=graphed)
        s = RunState(model=net, net=net, optimizer=optimizer(net), schedule=None)

        torch.manual_seed(3)
        assert loop.train_epoch(s, Loader(batches), config, rt, loop.StopRequest(),
                                0.0) is None
        results[graphed] = (dict(s.acc), [p.detach().clone() for p in net.parameters()], s)
    (eager_acc, eager_params, eager_s), (acc, params, s) = results[False], results[True]
    assert isinstance(s.graphed, graphs.GraphedStep) and s.graphed.captures == 1
    assert eager_s.graphed is None
    assert acc.pop("seconds") >= 0 and eager_acc.pop("seconds") >= 0
    assert acc == eager_acc and acc["seen"] == 20
    for a, b in zip(params, eager_params, strict=True):
        assert torch.equal(a, b)


def test_training_step_is_eager_without_the_option_and_one_graph_with_it() -> None:
    net, _ = net_and_batches()
    s = RunState(model=net, net=net, optimizer=optimizer(net), schedule=None)
    rt = runtime()
    assert not isinstance(loop.training_step(s, rt), graphs.GraphedStep)
    graphed = dataclasses.replace(rt, cuda_graph=True)
    first = loop.training_step(s, graphed)
    assert isinstance(first, graphs.GraphedStep) and loop.training_step(s, graphed) is first


@pytest.mark.parametrize("run,message", [
    ({"cuda_graph": True, "compile": True}, "set it or run.compile, not both"),
    ({"cuda_graph": True, "amp": "fp16"}, "use run.amp=bf16")])
def test_settings_a_graph_cannot_take_are_refused_in_the_config(run, message) -> None:
    with pytest.raises(UserError, match=message):
        validate(from_dict({"run": run}))


def test_a_graph_needs_one_cuda_process_on_one_device() -> None:
    config = from_dict({"run": {"cuda_graph": True}})
    with pytest.raises(UserError, match="run.cuda_graph needs a CUDA device, not cpu"):
        setup_runtime(config, DistInfo())
    if torch.cuda.is_available():
        with pytest.raises(UserError, match="leave it off under torchrun"):
            setup_runtime(config, DistInfo(device=torch.device("cuda"), world_size=2))


def test_train_with_cuda_graph_on_the_cpu_is_one_line(tmp_path, capsys) -> None:
    assert main(["train", "--data", str(tmp_path / "none"), "--device", "cpu",
                 "--cuda-graph", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "run.cuda_graph needs a CUDA device, not cpu" in err[0], err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_graphed_steps_on_cuda_equal_eager_steps_across_an_lr_drop() -> None:
    """The real graphs: four batches, lr divided by 10 before the third (a capture again),
    fp32 with dropout; the paper net at 1/8 width, batch 4: losses and parameters as four
    eager train_step calls give them."""
    from alexnet.bench import SMOKE_WIDTH
    from alexnet.model import build_model
    from alexnet.optim import param_groups

    device = torch.device("cuda")
    rt = setup_runtime(from_dict({"run": {"device": "cuda"}}), DistInfo(device=device))
    torch.manual_seed(0)
    eager = build_model("alexnet", num_classes=paper.NUM_CLASSES, width=SMOKE_WIDTH).to(device)
    graphed = copy.deepcopy(eager)
    batches = [(torch.randn(4, 3, paper.CROP_SIZE, paper.CROP_SIZE, device=device) * 60,
                torch.randint(0, paper.NUM_CLASSES, (4,), device=device)) for _ in range(4)]

    def run(net, step_of):
        opt = PaperSGD(param_groups(net), lr=paper.BASE_LR, momentum=paper.MOMENTUM,
                       weight_decay=paper.WEIGHT_DECAY)
        step = step_of(net, opt)
        torch.cuda.manual_seed(1)
        losses = []
        for k, (x, y) in enumerate(batches):
            if k == 2:
                for group in opt.param_groups:
                    group["lr"] /= 10
            losses.append(step(x, y)[0].item())
        return losses, step

    want, _ = run(eager, lambda net, opt: lambda x, y: loop.train_step(net, x, y, opt, rt))
    got, step = run(graphed, lambda net, opt: graphs.GraphedStep(net, opt, rt))
    assert step.captures == 2
    assert got == pytest.approx(want, rel=1e-4)
    for (name, a), b in zip(eager.named_parameters(), graphed.parameters(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6, msg=name)


def test_a_new_momentum_or_weight_decay_is_captured_afresh_too() -> None:
    """A capture holds every number of the update, not only lr: a group's momentum or weight
    decay changed (a resumed run's new settings) makes a new capture."""
    net, batches = net_and_batches()
    opt = optimizer(net)
    step = graphs.GraphedStep(net, opt, runtime(), capture=StandIn())
    step(*batches[0])
    opt.param_groups[0]["momentum"] = 0.5
    step(*batches[1])
    opt.param_groups[0]["weight_decay"] = 0.0
    step(*batches[2])
    step(*batches[3])
    assert step.captures == 3
