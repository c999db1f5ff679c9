"""The paper's update rule and schedule (section 5) against the formula and torch's SGD."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from alexnet import paper
from alexnet.optim import PaperSGD, PlateauSchedule, param_groups

C = np.array([0.5, 2.0, -1.0, 3.0])  # the loss sum(C w^2) / 2 has gradient C w


def test_section_5_constants_are_the_papers():
    assert (paper.BATCH_SIZE, paper.MOMENTUM, paper.WEIGHT_DECAY, paper.BASE_LR) == \
        (128, 0.9, 0.0005, 0.01)
    assert (paper.LR_DROP_FACTOR, paper.MAX_LR_DROPS, paper.EPOCHS) == (10, 3, 90)
    assert (paper.INIT_STD, paper.INIT_BIAS_ONE) == (0.01, 1)


def test_paper_sgd_follows_the_formula_across_an_lr_change():
    w0 = np.array([1.0, -2.0, 0.5, 3.0])
    w = torch.tensor(w0, requires_grad=True)
    opt = PaperSGD([w], lr=0.01, momentum=0.9, weight_decay=5e-4)
    lrs = [0.01, 0.01, 0.01, 0.001, 0.001, 0.0001]
    ref_w, ref_v = w0.copy(), np.zeros(4)
    for lr in lrs:
        opt.param_groups[0]["lr"] = lr
        opt.zero_grad()
        (torch.tensor(C) * w * w).sum().div(2).backward()
        opt.step()
        grad = C * ref_w
        ref_v = 0.9 * ref_v - 5e-4 * lr * ref_w - lr * grad  # v <- m v - wd lr w - lr g
        ref_w = ref_w + ref_v  # w <- w + v
        np.testing.assert_allclose(w.detach().numpy(), ref_w, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(opt.state[w]["velocity"].numpy(), ref_v, rtol=1e-13)
    assert opt.defaults == {"lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4}
    assert PaperSGD([w]).defaults == {"lr": paper.BASE_LR, "momentum": paper.MOMENTUM,
                                      "weight_decay": paper.WEIGHT_DECAY}


def twin_models() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    a = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    b = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    b.load_state_dict(a.state_dict())
    return a, b


def train(model: nn.Module, opt: torch.optim.Optimizer, steps: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(8, 5, generator=g, dtype=torch.float64)
        y = torch.randint(0, 3, (8,), generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


def test_matches_torch_sgd_while_lr_is_constant_and_differs_after_a_drop():
    ours_net, torch_net = twin_models()
    ours = PaperSGD(param_groups(ours_net), lr=0.1, momentum=0.9, weight_decay=5e-4)
    theirs = torch.optim.SGD(param_groups(torch_net), lr=0.1, momentum=0.9, weight_decay=5e-4,
                             dampening=0, nesterov=False)
    for opt, net in ((ours, ours_net), (theirs, torch_net)):
        train(net, opt, steps=6, seed=1)
    for p, q in zip(ours_net.parameters(), torch_net.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)
    # lr divided by 10: torch rescales its whole momentum at once, the paper's does not
    before = [p.detach().clone() for p in ours_net.parameters()]
    velocity = [ours.state[p]["velocity"].clone() for p in ours_net.parameters()]
    for opt in (ours, theirs):
        for group in opt.param_groups:
            group["lr"] = 0.01
    for opt, net in ((ours, ours_net), (theirs, torch_net)):
        train(net, opt, steps=1, seed=2)
    for p, q, v, w in zip(ours_net.parameters(), torch_net.parameters(), velocity, before,
                          strict=True):
        # predicted: paper step - torch step = m (1 - lr1 / lr0) v_before
        torch.testing.assert_close(p - q, 0.9 * (1 - 0.01 / 0.1) * v, rtol=1e-9, atol=1e-14)
        assert (p - w).abs().sum() > (q - w).abs().sum()  # the paper's step is the larger


def test_paper_sgd_updates_a_group_at_once_as_each_parameter_alone():
    # the multi-tensor update equals the formula applied to each parameter by itself, bit for
    # bit: mixed shapes, a channels_last weight, a parameter without a gradient (untouched,
    # no state), across an lr change
    torch.manual_seed(0)
    shapes = [(8, 3, 5, 5), (8,), (10, 8), (4,), (6,)]
    params = [nn.Parameter(torch.randn(s)) for s in shapes]
    params[4].data = params[4].data.double()  # a group holding two dtypes
    params[0].data = params[0].data.to(memory_format=torch.channels_last)
    ref = [p.detach().clone() for p in params]
    ref_v = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in ref]
    opt = PaperSGD([{"params": params[:3]}, {"params": params[3:], "weight_decay": 0.0}],
                   lr=0.1, momentum=0.9, weight_decay=5e-4)
    for step, lr in enumerate([0.1, 0.1, 0.01]):
        for group in opt.param_groups:
            group["lr"] = lr
        grads = [torch.randn(s, dtype=p.dtype) for s, p in zip(shapes, params, strict=True)]
        for i, p in enumerate(params):
            p.grad = None if i == 2 else grads[i].clone()
        opt.step()
        for i, (w, v) in enumerate(zip(ref, ref_v, strict=True)):
            if i == 2:
                continue
            v.mul_(0.9)
            if i < 3:
                v.add_(w, alpha=-5e-4 * lr)
            v.add_(grads[i], alpha=-lr)
            w.add_(v)
        for i, (p, w) in enumerate(zip(params, ref, strict=True)):
            assert torch.equal(p.detach(), w), (step, i)
    assert params[2] not in opt.state
    assert opt.state[params[0]]["velocity"].is_contiguous(memory_format=torch.channels_last)
    assert all(torch.equal(opt.state[params[i]]["velocity"], ref_v[i]) for i in (0, 1, 3, 4))


def test_param_groups_exempt_biases_from_weight_decay():
    net = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 2))
    groups = param_groups(net)
    assert [len(g["params"]) for g in groups] == [2, 2]
    assert all(p.dim() == 2 for p in groups[0]["params"]) and "weight_decay" not in groups[0]
    assert all(p.dim() == 1 for p in groups[1]["params"]) and groups[1]["weight_decay"] == 0
    assert [len(g["params"]) for g in param_groups(net, bias_decay=True)] == [4]
    # one step with zero gradients: weights shrink by (1 - wd lr), biases stay put
    w0, b0 = net[0].weight.detach().clone(), net[0].bias.detach().clone()
    opt = PaperSGD(groups, lr=0.1, momentum=0.9, weight_decay=0.5)
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    torch.testing.assert_close(net[0].weight.detach(), w0 * (1 - 0.5 * 0.1))
    assert torch.equal(net[0].bias.detach(), b0)


def test_paper_sgd_state_round_trip():
    a, b = twin_models()
    opt_a = PaperSGD(param_groups(a), lr=0.05)
    train(a, opt_a, steps=3, seed=3)
    b.load_state_dict(a.state_dict())
    opt_b = PaperSGD(param_groups(b), lr=0.05)
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))  # as if saved and read back
    train(a, opt_a, steps=2, seed=4)
    train(b, opt_b, steps=2, seed=4)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)


def schedule(**kwargs) -> tuple[PlateauSchedule, torch.optim.Optimizer]:
    opt = PaperSGD([nn.Parameter(torch.zeros(1))], lr=0.01)
    return PlateauSchedule(opt, **kwargs), opt


def test_schedule_keeps_lr_while_improving():
    sched, opt = schedule(patience=2, threshold=0.001)
    for err in np.linspace(0.9, 0.4, 30):
        assert sched.step(float(err)) is False
    assert opt.param_groups[0]["lr"] == 0.01 and sched.drops == 0


def test_schedule_drops_on_a_plateau_at_most_three_times():
    sched, opt = schedule(patience=3, threshold=0.001)
    assert (sched.factor, sched.max_drops) == (paper.LR_DROP_FACTOR, paper.MAX_LR_DROPS)
    errors = [0.8, 0.7, 0.6, 0.6, 0.5995, 0.6]  # 0.5995 improves by less than the threshold
    dropped = [sched.step(e) for e in errors]
    assert dropped == [False, False, False, False, False, True]
    assert opt.param_groups[0]["lr"] == pytest.approx(0.001)
    # an improvement resets the count
    assert [sched.step(e) for e in (0.5, 0.5, 0.5, 0.45, 0.45, 0.45, 0.45)] == \
        [False, False, False, False, False, False, True]
    assert sched.drops == 2
    assert [sched.step(0.45) for _ in range(3)] == [False, False, True]
    assert [sched.step(0.45) for _ in range(10)] == [False] * 10  # never a fourth time
    assert sched.drops == 3 and opt.param_groups[0]["lr"] == pytest.approx(1e-5)


def test_schedule_state_round_trip():
    errors = [0.9, 0.8, 0.8, 0.8, 0.79, 0.8, 0.8, 0.8, 0.7, 0.7, 0.7, 0.7, 0.7]
    whole, _ = schedule(patience=2)
    expected = [whole.step(e) for e in errors]
    first, _ = schedule(patience=2)
    head = [first.step(e) for e in errors[:5]]
    second, _ = schedule(patience=2)
    second.load_state_dict(first.state_dict())
    assert head + [second.step(e) for e in errors[5:]] == expected
    assert second.state_dict() == whole.state_dict() and whole.drops == 3


def test_an_equal_error_is_no_improvement_and_the_threshold_is_absolute():
    """Improving means below the best by more than `threshold`, in error units (0.001 is a
    tenth of a percentage point, not a relative 0.1%): an error equal to the best counts as a
    stalled epoch; 0.2 -> 0.1992 (0.0008 better) stalls too, where a relative threshold
    (0.1% of 0.2 = 0.0002) would call it an improvement."""
    sched, _ = schedule(patience=2, threshold=0.0)
    assert [sched.step(0.5) for _ in range(3)] == [False, False, True]
    sched, _ = schedule(patience=1, threshold=0.001)
    assert [sched.step(0.2), sched.step(0.1992)] == [False, True]
    sched, _ = schedule(patience=1, threshold=0.001)
    assert [sched.step(0.2), sched.step(0.1989)] == [False, False]  # 0.0011 better


def test_the_drop_divides_by_the_factor_given():
    """optim.lr_factor reaches the schedule (training/state.py): 2 halves the rate, it does
    not divide it by the paper's 10."""
    sched, opt = schedule(factor=2.0, patience=1)
    assert [sched.step(0.5), sched.step(0.5)] == [False, True]
    assert opt.param_groups[0]["lr"] == pytest.approx(0.005, rel=1e-12)
