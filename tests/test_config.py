"""The layered run config: the paper's defaults, presets, overrides, one-line refusals."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from alexnet import paper
from alexnet.config import (
    PRESETS_DIR,
    Config,
    from_dict,
    load_preset,
    parse_overrides,
    resolve,
    scaled_lr,
    to_dict,
    write_json,
)
from alexnet.errors import UserError


def test_defaults_are_the_papers_recipe():
    c = resolve("paper")
    assert c.optim.batch_size == 128 == paper.BATCH_SIZE
    assert c.optim.lr == 0.01 and c.optim.momentum == 0.9 and c.optim.weight_decay == 5e-4
    assert c.optim.epochs == 90 and c.optim.max_drops == 3 and c.optim.lr_factor == 10
    assert not c.optim.bias_decay  # cuda-convnet's choice, documented
    assert c.data.crop == 224 and c.data.flip and c.data.pca and c.data.mean == "image"
    assert c.model.dropout == 0.5 and c.model.columns == 2 and c.model.lrn
    # speed options are off in the paper's recipe
    assert c.run.amp == "off" and not c.run.channels_last and not c.run.compile


def test_every_preset_loads_and_fast_turns_on_the_speed_options():
    names = sorted(p.stem for p in PRESETS_DIR.glob("*.toml"))
    assert {"paper", "fast", "demo"} <= set(names)
    for name in names:
        resolve(name)
    fast = resolve("fast")
    assert fast.run.amp == "bf16" and fast.run.channels_last and fast.run.compile
    # the mathematics of the recipe are unchanged by the fast preset
    assert (fast.optim.lr, fast.optim.batch_size) == (0.01, 128)


def test_layers_apply_in_order_preset_then_set_then_flags():
    c = resolve("fast", ["run.amp=off", "optim.lr=0.02", "model.lrn=false"],
                {"optim.lr": 0.05, "run.out": "x"})
    assert c.run.amp == "off"  # --set beats the preset
    assert c.optim.lr == 0.05  # a plain flag beats --set
    assert c.model.lrn is False and c.run.channels_last  # preset value kept where not overridden
    assert c.run.out == "x"


def test_values_are_converted_to_the_field_type():
    c = resolve(None, ["optim.batch_size=64", "data.pca_scale=0.5", "run.compile=yes"])
    assert c.optim.batch_size == 64 and isinstance(c.optim.batch_size, int)
    assert c.data.pca_scale == 0.5 and c.run.compile is True


@pytest.mark.parametrize("items, fragment", [
    (["optim.lrr=0.1"], "unknown key optim.lrr"),
    (["optimiser.lr=0.1"], "unknown section 'optimiser'"),
    (["run.amp=fp8"], "run.amp 'fp8'"),
    (["optim.batch_size=many"], "optim.batch_size must be int"),
    (["optim.batch_size=0"], "optim.batch_size 0"),
    (["model.arch=vgg"], "model.arch 'vgg'"),
    (["run.compile=maybe"], "run.compile must be bool"),
    (["lr=0.1"], "SECTION.KEY=VALUE"),
    (["run.seed=-1"], "run.seed -1: must be >= 0"),  # was the loader's "seed (2, -1, 1, 0)"
    # were a raw ValueError once the net was built (on a two-GPU machine)
    (["model.split_columns=true", "model.columns=1"], "model.split_columns puts each"),
    (["model.split_columns=true", "model.arch=alexnet-tv"], "model.arch=alexnet-tv"),
])
def test_bad_keys_and_choices_are_one_line_errors(items, fragment):
    with pytest.raises(UserError) as err:
        resolve("paper", items)
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_unknown_preset_and_bad_toml(tmp_path):
    with pytest.raises(UserError, match="unknown preset 'nosuch'"):
        resolve("nosuch")
    bad = tmp_path / "bad.toml"
    bad.write_text("[optim\nlr = ")
    with pytest.raises(UserError, match="not valid TOML"):
        load_preset(str(bad))
    good = tmp_path / "mine.toml"
    good.write_text("[optim]\nlr = 0.003\n")
    assert resolve(str(good)).optim.lr == 0.003


def test_round_trip_through_json(tmp_path):
    c = resolve("demo", ["model.width=0.25", "run.seed=7"])
    path = write_json(c, tmp_path / "config.json")
    again = from_dict(json.loads(path.read_text()))
    assert again == c and to_dict(again) == to_dict(c)
    assert isinstance(Config(), Config)


def test_linear_lr_scaling():
    assert scaled_lr(resolve(None, ["optim.batch_size=512"])) == 0.01  # none by default
    c = resolve(None, ["optim.batch_size=512", "optim.lr_scaling=linear"])
    assert scaled_lr(c) == pytest.approx(0.01 * 512 / 128)


def test_parse_overrides_nests():
    assert parse_overrides(["a.b=1", "a.c = x", "d.e=f=g"]) == {"a": {"b": "1", "c": "x"},
                                                                 "d": {"e": "f=g"}}


def test_cli_unknown_key_is_one_line_exit_2():
    proc = subprocess.run([sys.executable, "-m", "alexnet", "train", "--data", "nowhere",
                           "--set", "optim.nosuch=1"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "unknown key optim.nosuch" in proc.stderr


def test_a_preset_file_that_is_missing_or_a_folder_says_so(tmp_path):
    """A .toml name is a file the user meant: not an unknown preset name."""
    (tmp_path / "dir.toml").mkdir()
    for path, what in ((tmp_path / "nonexist.toml", "no such file"),
                       (tmp_path / "dir.toml", "is a folder")):
        with pytest.raises(UserError) as err:
            resolve(str(path))
        message = str(err.value)
        assert message.startswith(f"--preset {path}: {what};") and "unknown" not in message
        assert "paper" in message and "\n" not in message


def test_a_plain_options_value_keeps_its_spaces():
    """A path may begin or end in a space: `--out "run 1 "` is that folder, not `run 1` (the
    audit's --resume "run " wrote its epochs into a second folder `run`)."""
    config = resolve("paper", ["run.seed= 3 "], {"run.out": "run 1 ", "data.store": " s t"})
    assert (config.run.out, config.data.store) == ("run 1 ", " s t")
    assert config.run.seed == 3  # --set items are SECTION.KEY=VALUE text: trimmed


def test_train_takes_out_and_data_as_given(capsys):
    from alexnet.cli import main

    assert main(["train", "--print-config", "--data", "store ", "--out", " run 1 "]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert (printed["data"]["store"], printed["run"]["out"]) == ("store ", " run 1 ")


def test_a_preset_file_with_an_upper_case_suffix_is_a_file(tmp_path):
    preset = tmp_path / "Mine.TOML"
    preset.write_text("[optim]\nepochs = 7\n")
    assert resolve(str(preset)).optim.epochs == 7
