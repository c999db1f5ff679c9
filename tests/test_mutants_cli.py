"""Mutation audit of the command line, the update rule and the progress lines: what the old
tests left unchecked (option ranges, flag-to-key mapping, interval and ETA edge cases, ...)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from alexnet.optim import PaperSGD, PlateauSchedule
from alexnet.progress import INTERVAL_ENV, eta_seconds, plain_interval


def test_paper_sgd_and_schedule_accept_the_range_edges_and_refuse_beyond():
    """optim.py's documented ranges: lr >= 0, 0 <= momentum < 1, weight_decay >= 0 (0 is the
    --set optim.weight_decay=0 ablation), factor > 1; momentum 1 never forgets a step and
    factor 1 'divides' the lr by nothing, so both are refused."""
    w = nn.Parameter(torch.ones(2))
    for kwargs in ({"lr": 0.0}, {"momentum": 0.0}, {"weight_decay": 0.0}):
        PaperSGD([w], **kwargs)  # accepted
    for kwargs in ({"lr": -0.01}, {"momentum": 1.0}, {"momentum": -0.1},
                   {"weight_decay": -1e-4}):
        with pytest.raises(ValueError):
            PaperSGD([w], **kwargs)
    opt = PaperSGD([w])
    PlateauSchedule(opt, factor=1.5)
    with pytest.raises(ValueError):
        PlateauSchedule(opt, factor=1.0)


def test_an_lr_of_zero_leaves_the_weights_where_they_are():
    """With lr 0 the paper's rule v <- 0.9 v - 0.0005 * 0 * w - 0 * g gives v = 0 from a zero
    start, so w stays put (lr 0 is in range, not an error)."""
    w = nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = PaperSGD([w], lr=0.0)
    w.grad = torch.tensor([3.0, 4.0])
    opt.step()
    assert w.tolist() == [1.0, -2.0]


def test_eta_is_zero_not_negative_past_the_total():
    """A count that ran past its total (a last partial batch counted whole) has nothing left:
    elapsed * max(total - done, 0) / done = 0, shown as '0s', not a negative '?'."""
    assert eta_seconds(120, 100, 10.0) == 0.0


@pytest.mark.parametrize(("value", "seconds"), [("-5", 0.0), ("abc", 30.0), ("2.5", 2.5)])
def test_the_plain_interval_from_the_environment(value, seconds, monkeypatch):
    """$ALEXNET_PROGRESS_SECONDS: a negative value means a line per update (0), one that is
    no number falls back to the documented 30 s."""
    monkeypatch.setenv(INTERVAL_ENV, value)
    assert plain_interval() == seconds


def _train_args(*argv: str):
    """`alexnet train ARGV` parsed by the command's own parser (no training)."""
    from alexnet import train
    from alexnet.cli import HelpFormatter, Parser

    parser = Parser(prog="alexnet train", formatter_class=HelpFormatter)
    train.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_every_train_flag_lands_in_its_own_config_key():
    """Each plain flag sets the key docs/training.md names for it, with distinct values so
    that two flags mapped to each other's keys (or one dropped) show."""
    from alexnet.train import config_from_args

    args = _train_args("--data", "S", "--out", "R", "--epochs", "7", "--batch-size", "32",
                       "--lr", "0.02", "--device", "cpu", "--amp", "bf16", "--channels-last",
                       "--seed", "11", "--max-steps", "5", "--steps-per-epoch", "3",
                       "--no-progress", "--init-from", "some.pt")
    config, ckpt, given = config_from_args(args)
    assert ckpt is None
    assert (config.data.store, config.run.out, config.optim.epochs, config.optim.batch_size,
            config.optim.lr, config.run.device, config.run.amp) == \
        ("S", "R", 7, 32, 0.02, "cpu", "bf16", )
    assert (config.run.channels_last, config.run.compile, config.run.cuda_graph) == \
        (True, False, False)
    assert (config.run.seed, config.run.max_steps, config.run.steps_per_epoch) == (11, 5, 3)
    assert config.run.progress is False and config.run.init_from == "some.pt"
    assert {"optim.lr", "run.seed", "run.max_steps", "run.steps_per_epoch",
            "run.progress", "run.channels_last"} <= given
    compiled = config_from_args(_train_args("--compile", "--tensorboard"))[0]
    assert (compiled.run.compile, compiled.run.channels_last, compiled.run.tensorboard) == \
        (True, False, True)
    graphed = config_from_args(_train_args("--cuda-graph"))[0]
    assert (graphed.run.cuda_graph, graphed.run.compile) == (True, False)


def test_train_without_a_preset_is_the_papers_recipe():
    """No --preset: the paper's section 5 numbers (momentum 0.9, weight decay 0.0005, lr
    0.01, batch 128, 90 epochs) in fp32 without the fast preset's compile or channels_last."""
    from alexnet.train import config_from_args

    config = config_from_args(_train_args())[0]
    o, r = config.optim, config.run
    assert (o.momentum, o.weight_decay, o.lr, o.batch_size, o.epochs) == \
        (0.9, 0.0005, 0.01, 128, 90)
    assert (r.amp, r.compile, r.channels_last, r.progress) == ("off", False, False, True)


def test_a_set_wins_over_the_layout_that_init_from_torchvision_implies():
    """--init-from torchvision implies model.arch=alexnet-tv and data.mean=torchvision
    'unless --set says': an explicit --set data.mean=image must win."""
    from alexnet.train import config_from_args

    config = config_from_args(_train_args("--init-from", "torchvision",
                                          "--set", "data.mean=image"))[0]
    assert (config.model.arch, config.data.mean) == ("alexnet-tv", "image")


@pytest.fixture
def fake_resume(monkeypatch, tmp_path):
    """--resume of a run folder whose checkpoint holds a config with init_from '' and out
    `tmp_path/run`; the checkpoint is not read from disk (no training needed)."""
    import alexnet.train
    from alexnet.config import Config, to_dict

    run = tmp_path / "run"
    run.mkdir()
    own = Config()
    own.run.out = str(run)
    own.optim.lr = 0.005
    monkeypatch.setattr(alexnet.train, "read_resumable", lambda path: {"config": to_dict(own)})
    monkeypatch.setattr(alexnet.train, "check_run_folder_free", lambda folder: None)
    return run


def test_resume_keeps_the_runs_config_and_its_folder_unless_given(fake_resume, tmp_path):
    """On --resume the run's own config is the base, its folder the default --out; a flag
    given anew (--lr, --out) replaces the run's value and is reported as given."""
    from alexnet.train import config_from_args

    config, ckpt, given = config_from_args(_train_args("--resume", str(fake_resume)))
    assert config.optim.lr == 0.005 and config.run.out == str(fake_resume)
    assert config.run.resume == str(fake_resume) and "optim.lr" not in given
    other = tmp_path / "elsewhere"
    config, _, given = config_from_args(_train_args("--resume", str(fake_resume), "--lr",
                                                    "0.001", "--out", str(other)))
    assert config.optim.lr == 0.001 and config.run.out == str(other)
    assert {"optim.lr", "run.out"} <= given


def test_resume_with_init_from_is_refused(fake_resume):
    """--resume continues a run and --init-from starts a new one: both at once is a one-line
    UserError, not a silent choice of one of them."""
    from alexnet.errors import UserError
    from alexnet.train import config_from_args

    with pytest.raises(UserError, match="--init-from"):
        config_from_args(_train_args("--resume", str(fake_resume), "--init-from", "x.pt"))


def test_train_prints_errors_in_percent(monkeypatch, capsys):
    """The closing line gives the final val errors in percent with two decimals: 0.4125 is
    41.25%, 0.18 is 18.00%."""
    import alexnet.train

    result = {"stopped": "epochs", "steps": 3, "val_top1_error": 0.4125,
              "val_top5_error": 0.18, "num_classes": 1000, "run_dir": "R"}
    monkeypatch.setattr(alexnet.train, "train", lambda config, **kwargs: result)
    assert alexnet.train.run(_train_args()) == 0
    out = capsys.readouterr().out
    assert "top-1 error 41.25%" in out and "top-5 18.00%" in out


def test_budget_minutes_become_seconds_in_the_plan(monkeypatch):
    """--budget is in minutes (help: 'minutes in all'): --budget 2 is a 120 s plan."""
    import alexnet.demo
    from alexnet.cli import main

    plans = []
    monkeypatch.setattr(alexnet.demo, "demo", lambda *args: plans.append(args[3]))
    assert main(["demo", "--device", "cpu", "--budget", "2"]) == 0
    assert plans[0].budget_s == 120.0 and "--budget as given" in plans[0].why


@pytest.mark.parametrize("item, option", [
    ("data.store=x", "--store"), ("run.out=x", "--out"), ("run.device=cpu", "--device"),
    ("run.time_limit=5", "--budget"), ("optim.batch_size=8", "--batch-size"),
    (" optim.epochs = 3", "--epochs")])
def test_every_key_the_demo_sets_is_refused_in_a_set(item, option):
    """All six keys the demo sets itself (module doc, DEMO_KEYS), spaces around the key
    included (--set parses ' optim.epochs = 3' as optim.epochs), name the demo's option."""
    from alexnet.demo import refuse_demo_keys
    from alexnet.errors import UserError

    with pytest.raises(UserError, match="instead$") as err:
        refuse_demo_keys([item])
    assert option in str(err.value)


def test_a_run_folder_inside_the_store_is_refused(tmp_path):
    """Store and run folder must not overlap either way: a run folder inside the store (not
    only a store inside the run folder) mixes the run's files with the store's."""
    from alexnet.demo import _check_store_path
    from alexnet.errors import UserError

    with pytest.raises(UserError, match="overlap"):
        _check_store_path(tmp_path / "store", tmp_path / "store" / "run")
    _check_store_path(tmp_path / "store", tmp_path / "run")  # apart: fine


def test_gzipped_idx_files_are_accepted(tmp_path):
    """find_idx_folder takes the four IDX files 'gzipped or not' (the Debian package ships
    them as .gz)."""
    from alexnet.demo import IDX_FILES, find_idx_folder

    for name in IDX_FILES:
        (tmp_path / f"{name}.gz").write_bytes(b"")
    assert find_idx_folder(tmp_path) == tmp_path


def test_runs_of_the_same_demo_differ_only_in_where_and_when():
    """A rerun with another time left, folder, resume point or display is the same demo (it
    continues); another learning rate is not."""
    from alexnet.config import resolve
    from alexnet.demo import _config_dict, _same_run, base_config

    a = _config_dict(resolve("demo", base=base_config("cpu")))
    b = _config_dict(resolve("demo", ["run.time_limit=5", "run.out=o", "run.resume=r",
                                      "run.progress=false"], base=base_config("cpu")))
    c = _config_dict(resolve("demo", ["optim.lr=0.02"], base=base_config("cpu")))
    assert _same_run(a) == _same_run(b) and _same_run(a) != _same_run(c)


def _plan(budget_s: float = 780.0):
    from alexnet.demo import Plan

    return Plan("cpu", train_images=4000, test_images=1000, batch_size=64, epochs=4,
                budget_s=budget_s, why="test")


def test_training_gets_the_budget_less_the_store_time_and_the_evaluation_reserve(
        monkeypatch, tmp_path):
    """CPU plan, 780 s budget, 100 s spent preparing: the evaluation keeps
    min(0.2 * 780, 15 + 0.06 * 1000) = 75 s, so training gets 780 - 100 - 75 = 605 s."""
    import alexnet.train
    from alexnet.config import resolve
    from alexnet.demo import Earlier, _eval_reserve, _train, base_config

    assert _eval_reserve(_plan()) == pytest.approx(75.0)
    seen = []

    def fake_train(config, **kwargs):
        seen.append(config.run.time_limit)
        return {"stopped": "time", "epochs": 1, "steps": 2, "train_loss": 1.0,
                "train_error": 0.5, "val_top1_error": 0.5}

    monkeypatch.setattr(alexnet.train, "train", fake_train)
    config = resolve("demo", [f"run.out={tmp_path}"], base=base_config("cpu"))
    _train(config, Earlier(), _plan(), spent=100.0)
    assert seen == [pytest.approx(605.0)]


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now


@pytest.mark.parametrize("budget_s, ten_crop_images", [(100.0, 150), (50.0, None)])
def test_ten_crops_cover_the_images_the_time_left_allows(budget_s, ten_crop_images,
                                                         monkeypatch, tmp_path):
    """A centre pass over 1000 test images taking 10 s: with a 100 s budget the 10 crops
    may take min(100 - 10 - 5, 0.15 * 100) = 15 s, i.e. 15 * 100 images/s / 10 crops = 150
    images; with 50 s, 7.5 s gives 75 images, under the 100 needed, so 10 crops are skipped.
    Chance top-1 error of ten classes is 1 - 1/10 = 0.9."""
    import alexnet.checkpoint
    import alexnet.data.store
    import alexnet.demo
    import alexnet.evaluate
    from alexnet.config import resolve
    from alexnet.demo import base_config, evaluate_run

    clock = _Clock()
    monkeypatch.setattr(alexnet.demo, "time", clock)

    class Split:
        classes = [str(i) for i in range(10)]

        def __len__(self) -> int:
            return 1000

    calls = []

    def fake_evaluate(model, split, crops, indices=None, progress=None, **kwargs):
        images = 1000 if indices is None else len(indices)
        calls.append((crops, images))
        clock.now += 10.0 * images / 1000 * crops
        return {"top1_error": 0.3, "top5_error": 0.05, "images": images}

    monkeypatch.setattr(alexnet.checkpoint, "load_model",
                        lambda path, device: (None, {"stats": None}))
    monkeypatch.setattr(alexnet.data.store, "open_split", lambda store, split: Split())
    monkeypatch.setattr(alexnet.evaluate, "evaluate_model", fake_evaluate)
    config = resolve("demo", base=base_config("cpu"))
    final = evaluate_run(tmp_path, tmp_path, config, _plan(budget_s), 0.0, None)
    assert final["chance_top1_error"] == pytest.approx(0.9)
    if ten_crop_images is None:
        assert calls == [(1, 1000)] and "test_top1_error_10crop" not in final
    else:
        assert calls == [(1, 1000), (10, 150), (1, 150)]
        assert final["ten_crop_images"] == 150


def test_a_run_evaluated_without_ten_crops_is_evaluated_again_when_they_are_asked(tmp_path):
    """An earlier demo's final.json without 10-crop figures is reused as finished only when
    --ten-crop is not asked for now."""
    from alexnet.atomic import write_json
    from alexnet.config import resolve
    from alexnet.demo import FINAL, _config_dict, _earlier_run, base_config

    config = resolve("demo", base=base_config("cpu"))
    (tmp_path / "checkpoint.pt").write_bytes(b"")
    write_json(tmp_path / "config.json", _config_dict(config))
    write_json(tmp_path / FINAL, {"test_top1_error": 0.3})
    assert _earlier_run(tmp_path, config, None).final == {"test_top1_error": 0.3}
    asked = _earlier_run(tmp_path, config, True)
    assert asked.final is None and asked.checkpoint == tmp_path / "checkpoint.pt"


def test_an_os_error_is_one_line_naming_the_file_and_exit_2(monkeypatch, capsys):
    """cli.py's backstop: an OSError no module turned into a UserError ends in ONE line that
    names the file and the system's reason, status 2, not a traceback."""
    import alexnet.train
    from alexnet.cli import main

    def full(args):
        raise OSError(28, "No space left on device", "/runs/x/log.csv")

    monkeypatch.setattr(alexnet.train, "run", full)
    assert main(["train"]) == 2
    err = capsys.readouterr().err
    assert err == ("alexnet train: error: /runs/x/log.csv: No space left on device; check the "
                   "path, its permissions and the free disk space\n")


def test_a_dashed_word_is_named_unless_it_is_a_number_or_an_options_value():
    """Parser._dashed: '-q' is an unknown option; '-3', '-0.5' and '-.5' are negative numbers
    (argparse reads them as values); '-q' right after an option that takes a value is that
    value."""
    from alexnet.cli import Parser

    parser = Parser(prog="p")
    parser.add_argument("--lr", type=float)
    parser.add_argument("--flag", action="store_true")
    for given, dashed in ((["-q"], "-q"), (["--flag", "-q"], "-q"), (["-3"], None),
                          (["-0.5"], None), (["-.5"], None), (["--lr", "-q"], None),
                          (["--", "-q"], None)):
        parser.given = given
        assert parser._dashed() == dashed, given


@pytest.mark.parametrize("encoding, errors", [("UTF-8", "surrogateescape"),
                                              ("ascii", "backslashreplace")])
def test_stdout_prints_any_file_name(encoding, errors, monkeypatch):
    """printable_names: under a strict UTF-8 locale a non-UTF-8 file name (held as surrogates)
    goes out as its own bytes (surrogateescape); under another encoding it is escaped."""
    import io
    import sys

    from alexnet.cli import printable_names

    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding=encoding, errors="strict")
    monkeypatch.setattr(sys, "stdout", stream)
    printable_names()
    stream.write(b"caf\xe9.jpg".decode("utf-8", "surrogateescape"))
    stream.flush()
    assert stream.errors == errors
    assert raw.getvalue() == (b"caf\xe9.jpg" if errors == "surrogateescape" else b"caf\\udce9.jpg")
