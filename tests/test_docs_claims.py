"""What the user docs state as the interface, held to the code: the documented defaults,
each preset's deviations and run folder, the demo's plans, and the options each command's
--help offers (README.md, docs/training.md, docs/data.md, docs/design.md). Fast: nothing
trains, nothing is prepared.
"""

from __future__ import annotations

import inspect

import pytest

from alexnet import learning_check, paper
from alexnet.cli import COMMANDS, HelpFormatter, Parser
from alexnet.config import Config, resolve, to_dict
from alexnet.optim import PlateauSchedule


def parser_of(command: str) -> Parser:
    """The parser `alexnet COMMAND` builds (alexnet.cli._run), without running anything."""
    import importlib

    module = importlib.import_module(COMMANDS[command][0])
    parser = Parser(prog=f"alexnet {command}", formatter_class=HelpFormatter)
    module.add_arguments(parser)
    return parser


def differences(config: Config, base: Config) -> dict[str, object]:
    """SECTION.KEY -> value where `config` differs from `base`."""
    a, b = to_dict(config), to_dict(base)
    return {f"{s}.{k}": v for s in a for k, v in a[s].items() if b[s][k] != v}


def test_the_documented_schedule_and_run_defaults():
    """docs/training.md: patience 3, threshold 0.001 (0.1 point), validation every epoch,
    the chance check after 100 steps, a step row every 25 steps; PlateauSchedule's own
    defaults (docs/design.md) are the same choice."""
    c = Config()
    assert (c.optim.patience, c.optim.threshold, c.optim.max_drops) == (3, 0.001, 3)
    assert c.run.val_every == 1 and c.run.log_every == 25 and c.run.save_best
    assert c.run.chance_steps == learning_check.CHANCE_STEPS == 100
    assert c.model.init_bias == paper.INIT_BIAS_ONE == 1.0
    defaults = inspect.signature(PlateauSchedule).parameters
    assert defaults["patience"].default == c.optim.patience
    assert defaults["threshold"].default == c.optim.threshold
    assert defaults["max_drops"].default == c.optim.max_drops


def test_paper_preset_changes_nothing_but_the_run_folder():
    assert differences(resolve("paper"), Config()) == {"run.out": "runs/paper"}


def test_own_preset_has_exactly_the_four_documented_deviations():
    """README.md and docs/training.md's table: four keys, and the run folder runs/own."""
    assert differences(resolve("own"), Config()) == {
        "model.init_bias": 0.1, "optim.batch_size": 16, "optim.epochs": 30,
        "run.chance_steps": 60, "run.out": "runs/own"}


def test_demo_preset_is_what_docs_training_says():
    """Batch 64, patience 1, 300 validation images in batches of 100, biases 0.1, no best.pt;
    the epochs and the time limit stay the paper recipe's (the demo sets them itself)."""
    demo = resolve("demo")
    assert differences(demo, Config()) == {
        "model.init_bias": 0.1, "optim.batch_size": 64, "optim.patience": 1,
        "run.out": "runs/demo", "run.eval_batch_size": 100, "run.val_limit": 300,
        "run.save_best": False}
    assert demo.optim.epochs == paper.EPOCHS and demo.run.time_limit == 0


def test_each_preset_names_its_run_folder_and_a_toml_file_falls_back(tmp_path):
    for name in ("paper", "fast", "demo", "own"):
        assert resolve(name).run.out == f"runs/{name}"
    mine = tmp_path / "mine.toml"
    mine.write_text("[optim]\nlr = 0.02\n")
    assert resolve(str(mine)).run.out == "runs/train"


def test_the_demo_plans_are_the_documented_ones():
    """docs/training.md, "The budget, and why", and `alexnet demo --help`."""
    from alexnet.demo import default_plan

    cpu, gpu = default_plan("cpu"), default_plan("cuda")
    assert (cpu.train_images, cpu.test_images, cpu.batch_size, cpu.epochs, cpu.budget_s) == \
        (4000, 1000, 64, 4, 13 * 60)
    assert (gpu.train_images, gpu.test_images, gpu.batch_size, gpu.epochs, gpu.budget_s) == \
        (20000, 5000, paper.BATCH_SIZE, 12, 2.5 * 60)


@pytest.mark.parametrize("command, options", [
    ("prepare", {"--size": 256, "--format": "raw", "--jpeg-quality": 90, "--workers": None,
                 "--limit": None, "--splits": None, "--names": None, "--max-pixels": 2 ** 27,
                 "--val-fraction": None, "--val-seed": 0}),
    ("demo", {"--data": None, "--out": "runs/demo", "--store": None, "--budget": None,
              "--train-images": None, "--test-images": None, "--epochs": None,
              "--batch-size": None, "--device": "auto", "--ten-crop": None, "--set": []}),
    ("train", {"--data": None, "--preset": None, "--set": [], "--out": None, "--resume": None,
               "--init-from": None, "--epochs": None, "--batch-size": None, "--lr": None,
               "--device": None, "--amp": None, "--channels-last": None, "--compile": None,
               "--seed": None, "--tensorboard": None, "--max-steps": None,
               "--steps-per-epoch": None, "--no-progress": None, "--print-config": False}),
])
def test_documented_options_exist_with_their_defaults(command, options):
    """docs/data.md's option table (prepare), docs/training.md's demo options and train's
    flags: every one is an option of the command, with the default the docs give (None: the
    preset's or the plan's value applies)."""
    actions = {name: action for action in parser_of(command)._actions
               for name in action.option_strings}
    for option, default in options.items():
        assert option in actions, f"alexnet {command} has no {option}"
        assert actions[option].default == default, (option, actions[option].default)


def test_every_train_flag_sets_a_config_key():
    """docs/training.md: a plain flag sets its config key (layer 3, after --set)."""
    from alexnet.train import FLAG_KEYS

    keys = {f"{s}.{k}" for s, values in to_dict(Config()).items() for k in values}
    assert set(FLAG_KEYS.values()) <= keys
    assert FLAG_KEYS["data"] == "data.store" and FLAG_KEYS["out"] == "run.out"
