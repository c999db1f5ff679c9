"""Mutation audit of the Triton LRN's auto layout (alexnet/lrn_triton.py: `_applicable`,
`_timeable`, `_auto_key`, `_settings`, `auto_choice`, `_fastest`, `_close`, and the
`_forward_launch`/`_backward_launch` split) and of the CPU
patch-at-a-time augmentation (alexnet/data/augment.py `_per_image`): each test catches a
mutant that the older tests let through. No kernel runs here: stand-in launchers and clocks."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from alexnet import paper
from alexnet.data import augment
from alexnet.errors import UserError

if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not installed (pip install triton, Linux x86-64)",
                allow_module_level=True)

from alexnet import lrn_triton as lt  # noqa: E402  (imports triton)

SHAPE = (2, 96, 3, 4)  # conv1's 96 maps in two columns of 48 (whole 16-byte groups: halo fits)
BETA = paper.LRN_BETA


def channels_last(shape=SHAPE, dtype=torch.float32) -> torch.Tensor:
    return torch.rand(shape, dtype=dtype).contiguous(memory_format=torch.channels_last)


@pytest.fixture
def clock(monkeypatch):
    """A fresh cache, auto as the layout, every tensor timeable and a stand-in clock: the
    test sets each layout's seconds; `timed` lists the timed launches."""
    monkeypatch.setattr(lt, "_AUTO", {})
    monkeypatch.setattr(lt, "LAYOUT", "auto")
    monkeypatch.setattr(lt, "_timeable", lambda out: True)
    # the choice among three layouts (the halo layout's place among them: its own tests)
    monkeypatch.setattr(lt, "AUTO_LAYOUTS", ("tile", "band", "gather"))
    times: dict[str, float] = {"tile": 3.0, "band": 1.0, "gather": 2.0}
    timed: list[str] = []

    def seconds(launch) -> float:
        timed.append(launch.args[0])
        launch()
        return times[launch.args[0]]

    monkeypatch.setattr(lt, "_seconds", seconds)
    return times, timed


def writer(out: torch.Tensor, values: dict[str, torch.Tensor] | None = None):
    """A stand-in launch: writes values[layout] (default: the same ones for all) into out."""
    same = torch.ones(out.shape)

    def run(layout: str) -> None:
        out.copy_((values or {}).get(layout, same))
    return run


# ----------------------------------------------------------------------------- _timeable


@dataclass
class FakeCuda:
    """Duck-typed stand-in for a CUDA tensor of n elements (this machine has no GPU)."""
    n: int
    is_cuda: bool = True

    def numel(self) -> int:
        return self.n


def test_timeable_from_exactly_the_minimum_and_never_in_capture_or_determinism(
        monkeypatch) -> None:
    """At least AUTO_MIN_ELEMENTS (not more than), and not while a graph is captured or
    deterministic algorithms are asked for (mutants: > for >=, either guard dropped)."""
    state = {"capturing": False, "deterministic": False}
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing",
                        lambda: state["capturing"])
    monkeypatch.setattr(torch, "are_deterministic_algorithms_enabled",
                        lambda: state["deterministic"])
    least = lt.AUTO_MIN_ELEMENTS
    assert lt._timeable(FakeCuda(least))
    assert not lt._timeable(FakeCuda(least - 1))
    assert not lt._timeable(FakeCuda(least, is_cuda=False))
    for guard in state:
        state[guard] = True
        assert not lt._timeable(FakeCuda(4 * least)), guard
        state[guard] = False


# ----------------------------------------------------------------------------- which layouts


def test_a_forced_layout_falls_back_to_tile_where_it_cannot_run(monkeypatch) -> None:
    """band needs channels_last and not float64, gather channels_last, halo and halo2
    channels_last with whole 16-byte column groups; elsewhere the tile kernels run."""
    cl, nchw = channels_last(), torch.rand(SHAPE)
    cl64 = channels_last(dtype=torch.float64)
    odd = channels_last((2, 6, 3, 4))  # columns of 3 fp32 maps: not a 16-byte group
    want = {("band", "cl"): "band", ("band", "nchw"): "tile", ("band", "cl64"): "tile",
            ("gather", "cl"): "gather", ("gather", "nchw"): "tile", ("gather", "cl64"): "gather",
            ("halo", "cl"): "halo", ("halo", "nchw"): "tile", ("halo", "odd"): "tile",
            ("halo", "cl64"): "halo",
            ("halo2", "cl"): "halo2", ("halo2", "nchw"): "tile", ("halo2", "odd"): "tile",
            ("halo2", "cl64"): "halo2",
            ("tile", "cl"): "tile", ("tile", "nchw"): "tile"}
    tensors = {"cl": cl, "nchw": nchw, "cl64": cl64, "odd": odd}
    for (layout, name), kernels in want.items():
        monkeypatch.setattr(lt, "LAYOUT", layout)
        assert lt._kernels_for(tensors[name], 2) == kernels, (layout, name)


def test_auto_on_float64_times_only_tile_and_gather(clock) -> None:
    """band's tensor-core products have no float64: auto must not time or choose it."""
    times, timed = clock
    out = channels_last(dtype=torch.float64)
    assert lt._kernels_for(out, 2, "forward", (), writer(out)) == "gather"
    assert timed == ["tile", "gather"] * lt.AUTO_ROUNDS


# ----------------------------------------------------------------------------- the cache key


def test_another_column_count_or_batch_is_timed_afresh(clock) -> None:
    """The key holds the column count and the whole shape (the batch size included)."""
    times, timed = clock
    out = channels_last()
    assert lt._kernels_for(out, 2, "forward", (), writer(out)) == "band"
    times.update(band=9.0)  # now gather is fastest: a fresh timing says so, a stale key not
    assert lt._kernels_for(out, 1, "forward", (), writer(out)) == "gather"
    bigger = channels_last((4, *SHAPE[1:]))
    assert lt._kernels_for(bigger, 2, "forward", (), writer(bigger)) == "gather"
    assert len(lt._AUTO) == 3


def test_auto_choice_does_not_report_another_format_or_devices_choice(clock) -> None:
    """What auto chose for a channels_last CPU tensor says nothing of the same shape in
    NCHW (which runs tile untimed) or on another device."""
    x = channels_last()
    for direction in ("forward", "backward"):
        key = lt._settings(2, True, False, BETA)
        lt._kernels_for(x, 2, direction, key, writer(x))
    assert lt.auto_choice(x, 2, 2, True, False, BETA) == {"forward": "band",
                                                          "backward": "band"}
    assert lt.auto_choice(x.contiguous(), 2, 2, True, False, BETA) == {}
    assert lt.auto_choice(x.to("meta"), 2, 2, True, False, BETA) == {}


def test_every_kernel_setting_keys_the_choice(clock) -> None:
    """half, relu, bias and beta == 0.75 each key auto's choice: another value of any of
    them has not been timed."""
    x = channels_last()
    for direction in ("forward", "backward"):
        key = lt._settings(2, True, True, BETA)
        lt._kernels_for(x, 2, direction, key, writer(x))
    both = {"forward": "band", "backward": "band"}
    assert lt.auto_choice(x, 2, 2, True, True, BETA) == both
    for other in [(1, True, True, BETA), (2, False, True, BETA), (2, True, False, BETA),
                  (2, True, True, 0.5)]:
        assert lt.auto_choice(x, 2, *other) == {}, other


# ----------------------------------------------------------------------------- _fastest


def test_each_layout_is_checked_against_tile_not_against_the_last_one_accepted(clock) -> None:
    """band and gather each lie within fp32's tolerance of tile (1e-4 of the value plus 1e-4
    of the largest: 2e-4 on ones) on opposite sides, 3e-4 apart: both agree with tile, so
    the fastest, gather, is chosen."""
    times, _ = clock
    times.update(tile=3.0, band=2.0, gather=1.0)
    out = channels_last()
    ones = torch.ones(SHAPE)
    values = {"tile": ones, "band": ones * (1 + 1.5e-4), "gather": ones * (1 - 1.5e-4)}
    assert lt._kernels_for(out, 2, "forward", (), writer(out, values)) == "gather"


def test_a_failed_layout_is_neither_timed_nor_chosen_among_the_others(clock, capsys) -> None:
    """gather fails, tile and band agree: band (the faster) is chosen, and only tile and band
    are timed (a failed layout timed would raise again)."""
    times, timed = clock
    out = channels_last()
    fine = writer(out)

    def run(layout: str) -> None:
        if layout == "gather":
            raise RuntimeError("out of resources")
        fine(layout)

    assert lt._kernels_for(out, 2, "forward", (), run) == "band"
    assert timed == ["tile", "band"] * lt.AUTO_ROUNDS
    assert "gather layout failed (RuntimeError: out of resources)" in capsys.readouterr().err


def test_a_user_error_in_a_candidate_is_raised_not_left_out(clock) -> None:
    """A UserError (a mistyped setting) stops auto instead of passing for a kernel fault."""
    out = channels_last()
    fine = writer(out)

    def run(layout: str) -> None:
        if layout == "band":
            raise UserError("ALEXNET_LRN_LAYOUT='bogus'")
        fine(layout)

    with pytest.raises(UserError, match="bogus"):
        lt._kernels_for(out, 2, "forward", (), run)
    assert lt._AUTO == {}


# ----------------------------------------------------------------------------- _close


def test_close_holds_fp32_to_1e_4_and_fp64_to_1e_10() -> None:
    """On ones the bound is tol * 1 + tol * 1 (value and largest value): fp32 1.5e-4 off
    agrees, 3e-4 not; fp64 1e-9 off does not (it would, compared in fp32 or to 1e-8)."""
    ones = torch.ones(100)
    assert lt._close(ones * (1 + 1.5e-4), ones)
    assert not lt._close(ones * (1 + 3e-4), ones)
    d = torch.ones(100, dtype=torch.float64)
    assert lt._close(d * (1 + 1.5e-10), d)
    assert not lt._close(d * (1 + 1e-9), d)


def test_close_scales_the_absolute_tolerance_by_the_largest_magnitude() -> None:
    """A small entry beside a large one (a gradient's) may be off by 1e-4 of the largest
    |value|, negative ones included: 1000 * 1e-4 = 0.1 here; 0.2 is too much."""
    for big in (1000.0, -1000.0):
        want = torch.tensor([big, 1.0])
        assert lt._close(torch.tensor([big, 1.05]), want), big
        assert not lt._close(torch.tensor([big, 1.2]), want), big


# ----------------------------------------------------------------------------- the launches


@dataclass
class Launch:
    kernel: object
    tensors: list[torch.Tensor]
    bias: torch.Tensor | None
    gather: bool | None = None


@pytest.fixture
def launches(monkeypatch):
    """Stand-ins for the tile and band launchers: each records what it was given and writes
    ones."""
    log: list[Launch] = []

    def tile(kernel, tensors, out, groups, half, alpha, beta, k, relu, tile,
             whole_column=False, bias=None):
        log.append(Launch(kernel, tensors, bias))
        out.fill_(1)

    def band(kernel, tensors, out, groups, half, alpha, beta, k, relu, bias=None,
             gather=False):
        log.append(Launch(kernel, tensors, bias, gather))
        out.fill_(1)

    monkeypatch.setattr(lt, "_launch", tile)
    monkeypatch.setattr(lt, "_launch_band", band)
    return log


CONSTS = (2, 2, paper.LRN_ALPHA, BETA, paper.LRN_K, True)


def test_each_layout_launches_its_kernels_with_the_bias(launches, monkeypatch) -> None:
    """tile, band and gather get x and the bias; band and gather differ by the gather flag;
    the tile backward is the twophase kernel."""
    x, g = channels_last(), channels_last()
    bias = torch.rand(SHAPE[1]) * 10
    kernels = {"tile": (lt._lrn_forward_kernel, lt._lrn_backward_twophase_kernel, None),
               "band": (lt._lrn_forward_band_kernel, lt._lrn_backward_band_kernel, False),
               "gather": (lt._lrn_forward_band_kernel, lt._lrn_backward_band_kernel, True)}
    for layout, (fwd, bwd, gather) in kernels.items():
        monkeypatch.setattr(lt, "LAYOUT", layout)
        del launches[:]
        lt.forward(x, *CONSTS, bias)
        lt.backward(g, x, *CONSTS, bias)
        assert [(c.kernel, c.gather) for c in launches] == [(fwd, gather), (bwd, gather)]
        for call, before in zip(launches, ([], [g]), strict=True):
            assert len(call.tensors) == len(before) + 1, layout
            for have, want in zip(call.tensors, before, strict=False):
                assert torch.equal(have, want), layout
            assert torch.equal(call.tensors[-1], x) and call.bias is bias, layout


def test_forward_and_backward_each_run_and_record_their_own_choice(
        clock, launches, monkeypatch) -> None:
    """Through forward and backward themselves (bias and ReLU folded in): a clock on which
    band's forward and gather's backward are fastest; the last launch of each (the result
    returned) is that layout's, and auto_choice names them under the settings it keys."""
    fastest = {(lt._lrn_forward_band_kernel, False), (lt._lrn_backward_band_kernel, True)}

    def seconds(launch) -> float:
        launch()
        return 1.0 if (launches[-1].kernel, launches[-1].gather) in fastest else 2.0

    monkeypatch.setattr(lt, "_seconds", seconds)
    x, g = channels_last(), channels_last()
    bias = torch.rand(SHAPE[1])
    lt.forward(x, *CONSTS, bias)
    assert (launches[-1].kernel, launches[-1].gather) == (lt._lrn_forward_band_kernel, False)
    assert lt.auto_choice(x, 2, 2, True, True, BETA) == {"forward": "band"}
    lt.backward(g, x, *CONSTS, bias)
    assert (launches[-1].kernel, launches[-1].gather) == (lt._lrn_backward_band_kernel, True)
    assert lt.auto_choice(x, 2, 2, True, True, BETA) == {"forward": "band",
                                                         "backward": "gather"}


# ----------------------------------------------------------------------------- augment


def test_the_cpu_path_takes_a_crop_as_large_as_the_image() -> None:
    """crop == image side (one position, top = left = 0): eval_batch's ten crops are the
    image minus the mean image, mirrored for the last five (NumPy), on the CPU's path."""
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (2, 9, 9, 3), dtype=np.uint8)
    stats = {"mean_image": rng.random((9, 9, 3)) * 255}
    got = augment.eval_batch(torch.from_numpy(images), stats, crops=10, crop_size=9,
                             mean="image").numpy()
    diff = images.astype(np.float32) - stats["mean_image"].astype(np.float32)
    want = diff.transpose(0, 3, 1, 2)
    for b in range(2):
        for c in range(10):
            expect = want[b, :, :, ::-1] if c >= 5 else want[b]
            np.testing.assert_array_equal(got[10 * b + c], expect)
