"""`alexnet bench train`'s variant table compares each variant with the default timed in turns
beside it (its ratio was against the table's fp32 figure, timed minutes earlier, so a change
of the machine's load showed the default's own computation as 2.15x the default), and
`alexnet bench` stopped by Ctrl-C says where the figures it kept are. Nothing is timed for
real: the steps and the clock are stood in for."""

from __future__ import annotations

import argparse
import contextlib
import json
import types

import pytest
import torch
from _stops import stand_in_bench

import alexnet.bench
import alexnet.bench.model
from alexnet.bench import train as bench_train
from alexnet.cli import main


class Turns:
    """Stand-in steps on a stand-in clock: each step advances the clock by its own seconds
    (times the machine's load, which doubles once the second variant is made), and says in
    `calls` which step ran and whether a variant's setting was held meanwhile."""

    def __init__(self) -> None:
        self.now, self.load, self.held = 100.0, 1.0, False
        self.calls: list[tuple[str, bool]] = []

    def perf_counter(self) -> float:
        return self.now

    def warm_step(self, arch, device, batch, run_opts, warmup, width=1.0, **net_kwargs):
        name = net_kwargs.get("stand_in", "default")
        if name == "v2":
            self.load = 2.0  # the machine got busier: the default is slower from here on
        seconds = {"default": 0.1, "v1": 0.05, "v2": 0.1}[name]

        def step() -> None:
            self.calls.append((name, self.held))
            self.now += seconds * self.load

        return step

    @contextlib.contextmanager
    def setting(self):
        self.held = True
        try:
            yield
        finally:
            self.held = False


@pytest.fixture
def turns(monkeypatch) -> Turns:
    """bench train's variants on stand-in steps and clock: two variants, v2 under a setting."""
    t = Turns()
    monkeypatch.setattr(alexnet.bench.model, "time", types.SimpleNamespace(
        perf_counter=t.perf_counter))
    monkeypatch.setattr(bench_train, "warm_step", t.warm_step)
    monkeypatch.setattr(bench_train, "variants_for", lambda device: [
        ("v1", {"stand_in": "v1"}, None), ("v2", {"stand_in": "v2"}, t.setting)])
    return t


def test_each_variant_is_timed_in_turns_with_the_default_and_compared_with_those_rounds(
        turns, monkeypatch, capsys) -> None:
    """The table's fp32 figure (1000 images/s, stood in) is not the default's: the default is
    timed again in turns with each variant, and each ratio comes from the same rounds (v2 is
    the default's speed under the doubled load: 1.00x, not 0.5x the default's best)."""
    monkeypatch.setattr(bench_train, "time_setting",
                        lambda archs, *a, **k: {arch: 1000.0 for arch in archs})
    args = argparse.Namespace(device="cpu", quick=False, smoke=True, figures={})
    r = bench_train.bench(args)
    warmup, steps = r["variant_timing"]["warmup"], r["variant_timing"]["steps"]
    rounds = 1 + warmup + steps  # time_all's first call, then its warm-up and timed rounds
    names = [name for name, _ in turns.calls]
    assert names == ["default", "v1"] * rounds + ["default", "v2"] * rounds
    assert all(held == (name == "v2") for name, held in turns.calls)  # v2's setting alone
    batch = r["batch"]
    assert r["variants_default"] == pytest.approx({"v1": batch / 0.1, "v2": batch / 0.2})
    assert r["variants"] == pytest.approx({"v1": batch / 0.05, "v2": batch / 0.2,
                                           "default": batch / 0.1})
    assert r["settings"]["fp32"]["alexnet"] == 1000.0  # the table's, not the variants' default
    printed = capsys.readouterr().out
    assert "2.00x default" in printed and "1.00x default" in printed
    assert "0.50x default" not in printed


def test_a_default_that_fails_leaves_the_variants_timed_without_a_ratio(turns, monkeypatch,
                                                                       capsys) -> None:
    """The default's step cannot be made: it is said in its place, and each variant is timed
    alone (no ratio to a figure that does not exist)."""
    made = turns.warm_step

    def warm_step(*args, **net_kwargs):
        if "stand_in" not in net_kwargs:
            raise RuntimeError("stood in for a failure")
        return made(*args, **net_kwargs)

    monkeypatch.setattr(bench_train, "warm_step", warm_step)
    monkeypatch.setattr(alexnet.bench, "_SIGTERM", alexnet.bench.threading.Event())
    into, beside = {}, {}
    bench_train.time_variants(torch.device("cpu"), 4, 0, 2, 1.0, into=into, beside=beside)
    assert into["default"] == {"error": "RuntimeError: stood in for a failure"}
    assert into["v1"] == pytest.approx(4 / 0.05) and beside == {}
    assert [name for name, _ in turns.calls] == ["v1"] * 3 + ["v2"] * 3
    assert "x default" not in capsys.readouterr().out


def test_ctrl_c_says_which_file_holds_the_figures(tmp_path, monkeypatch, capsys) -> None:
    """After Ctrl-C the run said only `interrupted`, though --json held the figures; now it
    says where they are, as after SIGTERM, with the CLI's own line and status 130."""
    def interrupted(args):
        args.figures["row"] = 1.0
        alexnet.bench.keep_figures()
        raise KeyboardInterrupt

    stand_in_bench(monkeypatch, "cut", interrupted)
    out = tmp_path / "figures.json"
    assert main(["bench", "cut", "--device", "cpu", "--json", str(out)]) == 130
    err = capsys.readouterr().err
    assert f"alexnet bench: interrupted during cut; the figures so far are in {out}" in err
    assert err.rstrip().endswith("alexnet bench: interrupted")
    written = json.loads(out.read_text())
    assert written["cut"] == {"row": 1.0}
    assert written["stopped"].startswith("interrupted (Ctrl-C) during `alexnet bench cut`")
