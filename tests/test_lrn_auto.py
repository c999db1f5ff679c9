"""ALEXNET_LRN_LAYOUT=auto (alexnet/lrn_triton.py, `_auto`): for each shape and direction, the
fastest of AUTO_LAYOUTS that agrees with the tile layout, timed once and cached. The choice is
tested here with stand-ins for the kernels and the clock (the kernels themselves: through
the interpreter in tests/test_lrn_triton.py, on CUDA below)."""

from __future__ import annotations

import functools
import importlib.util

import pytest
import torch

from alexnet import paper
from alexnet.errors import UserError

if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not installed (pip install triton, Linux x86-64)",
                allow_module_level=True)

from alexnet import lrn_triton  # noqa: E402  (imports triton)

CONV1 = (2, paper.CONV1[0], 5, 5)  # conv1's 96 maps, two columns


@pytest.fixture
def clock(monkeypatch):
    """A fresh cache, auto as the layout, tensors timeable, and a stand-in clock whose time
    for each layout the test sets (seconds per launch); it counts the timed launches."""
    monkeypatch.setattr(lrn_triton, "_AUTO", {})
    monkeypatch.setattr(lrn_triton, "LAYOUT", "auto")
    monkeypatch.setattr(lrn_triton, "_timeable", lambda out: True)
    # the choice among three layouts (the halo layout's place among them: its own tests)
    monkeypatch.setattr(lrn_triton, "AUTO_LAYOUTS", ("tile", "band", "gather"))
    times: dict[str, float] = {}
    timed: list[str] = []

    def seconds(launch) -> float:
        layout = launch.args[0]
        timed.append(layout)
        launch()
        return times[layout]

    monkeypatch.setattr(lrn_triton, "_seconds", seconds)
    return times, timed


def writer(values: dict[str, torch.Tensor], ran: list[str], out: torch.Tensor):
    """A stand-in for forward's or backward's launch: writes `values[layout]` into out."""
    def run(layout: str) -> None:
        ran.append(layout)
        out.copy_(values.get(layout, values["tile"]))
    return run


def channels_last(dtype=torch.float32) -> torch.Tensor:
    return torch.rand(CONV1, dtype=dtype).contiguous(memory_format=torch.channels_last)


def test_auto_takes_the_fastest_layout_times_it_once_and_keeps_it(clock) -> None:
    times, timed = clock
    times.update(tile=3.0, band=1.0, gather=2.0)
    out = channels_last()
    ran: list[str] = []
    run = writer({"tile": torch.rand(CONV1)}, ran, out)
    assert lrn_triton._kernels_for(out, 2, "forward", ("f",), run) == "band"
    # each layout warmed and checked once, then AUTO_ROUNDS timed rounds, each in turn
    rounds = lrn_triton.AUTO_ROUNDS
    assert timed == ["tile", "band", "gather"] * rounds
    assert ran[:3] == ["tile", "band", "gather"]
    # the next call of the same shape, dtype, direction and settings: no timing again
    del timed[:]
    times.update(band=9.0)
    assert lrn_triton._kernels_for(out, 2, "forward", ("f",), run) == "band"
    assert timed == []
    # another direction, setting, dtype or shape is timed afresh
    assert lrn_triton._kernels_for(out, 2, "backward", ("f",), run) == "gather"
    assert lrn_triton._kernels_for(out, 2, "forward", ("g",), run) == "gather"
    bf16 = channels_last(torch.bfloat16)
    assert lrn_triton._kernels_for(bf16, 2, "forward", ("f",), writer(
        {"tile": torch.rand(CONV1).bfloat16()}, [], bf16)) == "gather"
    assert len(lrn_triton._AUTO) == 4


def test_the_best_of_the_rounds_counts_not_the_first(clock, monkeypatch) -> None:
    """Each layout's time is its fastest round: one slow round (a busy moment) does not
    decide."""
    times, timed = clock
    sequence = {"tile": iter([1.0, 1.0, 1.0]), "band": iter([5.0, 0.5, 5.0]),
                "gather": iter([2.0, 2.0, 2.0])}
    monkeypatch.setattr(lrn_triton, "_seconds", lambda launch: next(sequence[launch.args[0]]))
    out = channels_last()
    assert lrn_triton._kernels_for(out, 2, "forward", (), writer(
        {"tile": torch.rand(CONV1)}, [], out)) == "band"


def test_a_layout_that_fails_or_disagrees_is_left_out_with_one_warning(clock, capsys) -> None:
    times, _ = clock
    times.update(tile=3.0, band=1.0, gather=2.0)
    out = channels_last()
    tile = torch.rand(CONV1) + 1
    # band 0.5% off: more than fp32's rounding; gather raises (a kernel that does not compile)
    values = {"tile": tile, "band": tile * 1.005}

    def run(layout: str) -> None:
        if layout == "gather":
            raise RuntimeError("PTX assembly failed\nsecond line")
        out.copy_(values[layout])

    assert lrn_triton._kernels_for(out, 2, "forward", (), run) == "tile"
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "alexnet: warning: the Triton LRN's band layout differs from the tile layout on the "
        "forward on (2, 96, 5, 5) float32; auto leaves it out",
        "alexnet: warning: the Triton LRN's gather layout failed (RuntimeError: PTX assembly "
        "failed) on the forward on (2, 96, 5, 5) float32; auto leaves it out"]


def test_rounding_differences_of_the_dtype_are_agreement() -> None:
    """Layouts sum in other orders (band: tf32 halves), then round to the storage dtype: a
    last-bit difference agrees, a 0.5% one does not (fp32); bf16 to 1e-2."""
    want = torch.rand(1000) + 0.5
    assert lrn_triton._close(want * (1 + 2e-5), want)
    assert not lrn_triton._close(want * 1.005, want)
    b = want.bfloat16()
    assert lrn_triton._close((b.float() * (1 + 2 ** -8)).bfloat16(), b)
    assert not lrn_triton._close((b.float() * 1.05).bfloat16(), b)
    # a gradient's small entries are held to the largest one's scale, not their own
    grad = torch.tensor([1.0, 1e-6])
    assert lrn_triton._close(torch.tensor([1.0, 2e-6]), grad)
    assert not lrn_triton._close(torch.tensor([1.0, 2e-3]), grad)
    nan, inf = float("nan"), float("inf")
    assert lrn_triton._close(torch.tensor([nan, inf, 1.0]), torch.tensor([nan, inf, 1.0]))
    assert not lrn_triton._close(torch.tensor([1.0, 1.0]), torch.tensor([inf, 1.0]))
    assert not lrn_triton._close(torch.tensor([nan, 1.0]), torch.tensor([1.0, 1.0]))
    w64 = want.double()
    assert lrn_triton._close(w64 * (1 + 1e-13), w64)
    assert not lrn_triton._close(w64 * (1 + 1e-6), w64)


def test_where_only_tile_applies_or_nothing_can_be_timed_auto_runs_tile_untimed(
        clock, monkeypatch) -> None:
    times, timed = clock
    times.update(tile=3.0, band=1.0, gather=2.0)
    ran: list[str] = []
    nchw = torch.rand(CONV1)  # band and gather take only channels_last tensors
    assert lrn_triton._kernels_for(nchw, 2, "forward", (), writer(
        {"tile": nchw}, ran, torch.empty_like(nchw))) == "tile"
    monkeypatch.setattr(lrn_triton, "_timeable", lambda out: False)
    out = channels_last()
    assert lrn_triton._kernels_for(out, 2, "forward", (), writer(
        {"tile": out}, ran, out)) == "tile"
    assert lrn_triton._kernels_for(out, 2) == "tile"  # no launch to time: tile
    assert ran == timed == [] and lrn_triton._AUTO == {}


def test_a_chosen_layout_is_named_by_auto_choice(clock) -> None:
    times, _ = clock
    times.update(tile=1.0, band=2.0, gather=0.5)
    x = channels_last()
    key = lrn_triton._settings(2, True, False, paper.LRN_BETA)
    assert lrn_triton.auto_choice(x, 2, 2, True, False, paper.LRN_BETA) == {}
    lrn_triton._kernels_for(x, 2, "backward", key,
                            writer({"tile": torch.rand(CONV1)}, [], x))
    assert lrn_triton.auto_choice(x, 2, 2, True, False, paper.LRN_BETA) == {
        "backward": "gather"}
    assert lrn_triton.auto_choice(x, 2, 2, False, False, paper.LRN_BETA) == {}


def test_timeable_needs_a_big_cuda_tensor_outside_capture_and_determinism() -> None:
    big = torch.zeros(lrn_triton.AUTO_MIN_ELEMENTS)
    assert not lrn_triton._timeable(big)  # the CPU: the interpreter's times mean nothing
    if not torch.cuda.is_available():
        return
    assert lrn_triton._timeable(big.cuda())
    assert not lrn_triton._timeable(big[:-1].cuda())
    torch.use_deterministic_algorithms(True)
    try:
        assert not lrn_triton._timeable(big.cuda())
    finally:
        torch.use_deterministic_algorithms(False)


def test_a_mistyped_layout_is_still_a_user_error(monkeypatch) -> None:
    monkeypatch.setattr(lrn_triton, "LAYOUT", "autoo")
    with pytest.raises(UserError, match="ALEXNET_LRN_LAYOUT='autoo'"):
        lrn_triton._kernels_for(channels_last(), 2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_auto_on_cuda_times_the_layouts_and_gives_tiles_values(monkeypatch) -> None:
    """On conv1's columns at a batch big enough to time: auto picks a layout of AUTO_LAYOUTS
    for each direction, and the LRN (bias and ReLU folded in, bf16, channels_last) equals the
    tile layout's to bf16's rounding, forward and backward."""
    monkeypatch.setattr(lrn_triton, "_AUTO", {})
    x = (torch.rand(8, 96, 55, 55, device="cuda") * 100 - 50).bfloat16()
    x = x.contiguous(memory_format=torch.channels_last)
    b = torch.rand(96, device="cuda") * 10
    g = torch.randn_like(x)
    consts = (2, paper.LRN_N // 2, paper.LRN_ALPHA, paper.LRN_BETA, paper.LRN_K, True)

    def both(layout: str) -> tuple[torch.Tensor, torch.Tensor]:
        monkeypatch.setattr(lrn_triton, "LAYOUT", layout)
        run = functools.partial(lrn_triton.forward, x, *consts, b)
        return run(), lrn_triton.backward(g, x, *consts, b)

    got, want = both("auto"), both("tile")
    chosen = lrn_triton.auto_choice(x, 2, 2, True, True, paper.LRN_BETA)
    assert set(chosen) == {"forward", "backward"}
    assert set(chosen.values()) <= set(lrn_triton.AUTO_LAYOUTS)
    for have, ref in zip(got, want, strict=True):
        assert lrn_triton._close(have, ref)


def test_a_choice_made_before_a_graph_capture_holds_in_it(clock, monkeypatch) -> None:
    """run.cuda_graph warms the step up eagerly (auto times there), then captures it, when
    nothing may be timed: the capture must run the layout the warm-up chose, not tile. A
    shape not seen before runs tile untimed there, and is timed once it can be. Under
    deterministic algorithms tile runs whatever was chosen."""
    times, timed = clock
    times.update(tile=3.0, band=1.0, gather=2.0)
    out = channels_last()
    run = writer({"tile": torch.rand(CONV1)}, [], out)
    assert lrn_triton._kernels_for(out, 2, "forward", (), run) == "band"
    monkeypatch.setattr(lrn_triton, "_timeable", lambda out: False)  # capturing
    del timed[:]
    assert lrn_triton._kernels_for(out, 2, "forward", (), run) == "band"
    assert lrn_triton._kernels_for(out, 2, "backward", (), run) == "tile"
    assert timed == [] and len(lrn_triton._AUTO) == 1
    monkeypatch.setattr(torch, "are_deterministic_algorithms_enabled", lambda: True)
    assert lrn_triton._kernels_for(out, 2, "forward", (), run) == "tile"


def test_candidates_are_compared_on_the_first_images_only(clock, monkeypatch) -> None:
    """A 10-crop evaluation batch's maps are gigabytes: the agreement check copies and
    compares about AUTO_CHECK_ELEMENTS results (whole images from the first), not all; a
    layout wrong there is still left out."""
    times, _ = clock
    times.update(tile=3.0, band=1.0, gather=2.0)
    per_image = CONV1[1] * CONV1[2] * CONV1[3]
    monkeypatch.setattr(lrn_triton, "AUTO_CHECK_ELEMENTS", per_image + 1)
    compared: list[tuple[int, ...]] = []
    close = lrn_triton._close

    def spy(got: torch.Tensor, want: torch.Tensor) -> bool:
        compared.append(tuple(got.shape))
        return close(got, want)

    monkeypatch.setattr(lrn_triton, "_close", spy)
    out = channels_last()
    tile = torch.rand(CONV1) + 1
    wrong_first = tile.clone()
    wrong_first[0] *= 1.01
    run = writer({"tile": tile, "band": wrong_first}, [], out)
    assert lrn_triton._kernels_for(out, 2, "forward", (), run) == "gather"
    assert compared == [(1, *CONV1[1:])] * 2


@pytest.mark.parametrize("fastest", ["halo", "halo2"])
def test_auto_times_the_halo_layouts_where_their_kernels_run(monkeypatch, fastest: str) -> None:
    """The halo layouts (one and two groups a thread) are auto's candidates on channels_last
    tensors whose columns are whole 16-byte groups (conv1's 48 maps), each chosen when
    fastest; columns of 3 fp32 maps (not a group) time tile, band and gather only, and NCHW
    tensors take tile untimed."""
    monkeypatch.setattr(lrn_triton, "_AUTO", {})
    monkeypatch.setattr(lrn_triton, "LAYOUT", "auto")
    monkeypatch.setattr(lrn_triton, "_timeable", lambda out: True)
    assert {"halo", "halo2"} <= set(lrn_triton.AUTO_LAYOUTS)
    times = {"tile": 4.0, "band": 3.0, "gather": 2.0, "halo": 1.5, "halo2": 1.5, fastest: 1.0}
    timed: list[str] = []

    def seconds(launch) -> float:
        timed.append(launch.args[0])
        return times[launch.args[0]]

    monkeypatch.setattr(lrn_triton, "_seconds", seconds)
    out = channels_last()
    assert lrn_triton._kernels_for(out, 2, "forward", (), writer({"tile": out}, [], out)) \
        == fastest
    assert sorted(set(timed)) == ["band", "gather", "halo", "halo2", "tile"]
    del timed[:]
    odd = torch.rand(2, 6, 5, 5).contiguous(memory_format=torch.channels_last)
    assert lrn_triton._kernels_for(odd, 2, "forward", (), writer({"tile": odd}, [], odd)) \
        == "gather"
    assert sorted(set(timed)) == ["band", "gather", "tile"]
    del timed[:]
    nchw = torch.rand(CONV1)
    assert lrn_triton._kernels_for(nchw, 2, "forward", (), writer({"tile": nchw}, [], nchw)) \
        == "tile"
    assert timed == []
