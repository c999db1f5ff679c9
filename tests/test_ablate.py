"""`alexnet ablate` as a user runs it: one budget for every net (a clock limit, a resumed or
pre-trained start refused), a rerun after Ctrl-C that continues only the run it stopped, bad
data refused before anything is written, and tables that say what they measured."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from _stops import ctrl_c_at_step

from alexnet.cli import main
from alexnet.config import resolve
from alexnet.data.store import write_store
from alexnet.errors import UserError
from alexnet.experiments import ablate as ab

CLASSES = [{"wnid": f"c{i}", "name": f"class {i}"} for i in range(4)]
# 72-pixel images and 64 crops (the net's smallest): a step takes milliseconds on the CPU
SMALL = ["model.width=0.125", "optim.batch_size=8", "run.progress=false", "run.device=cpu",
         "data.crop=64"]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """16 training and 8 validation 72x72 images whose class is their dominant colour."""
    root = tmp_path_factory.mktemp("ablate_small")
    rng = np.random.default_rng(0)
    stats = None
    for split, n in (("train", 16), ("val", 8)):
        labels = np.arange(n) % 4
        images = rng.integers(0, 90, (n, 72, 72, 3), dtype=np.uint8)
        for c in range(3):
            images[labels == c, :, :, c] += 150
        stats = write_store(root / split, images, labels, CLASSES, stats=stats).stats
    return root


def quiet(*_: object) -> None:
    """A `log` that drops ablate's lines."""


def no_training(config, **_):
    raise AssertionError("trained")


def test_the_same_out_written_another_way_reuses_its_finished_runs(store, tmp_path,
                                                                   monkeypatch):
    """--out abl from its parent and --out /abs/abl are one folder: its runs are reused, not
    refused as 'another config' because run.out reads differently."""
    import alexnet.train

    base = resolve("paper", SMALL, {"data.store": str(store)})
    monkeypatch.chdir(tmp_path)
    first = ab.ablate(base, Path("abl"), [], budget_steps=1, seeds=1, log=quiet)
    monkeypatch.setattr(alexnet.train, "train", no_training)
    again = ab.ablate(base, tmp_path / "abl", [], budget_steps=1, seeds=1, log=quiet)
    assert again["rows"] == first["rows"]


def test_a_rerun_after_ctrl_c_continues_only_with_the_same_settings(store, tmp_path,
                                                                    monkeypatch, capsys):
    """Stopped in the paper net's second step: the same command continues that run (to the
    weights of an uninterrupted one); another budget is refused in one line naming what
    differs, and the stopped run's checkpoint is kept as it was."""
    from alexnet import checkpoint

    base = resolve("paper", SMALL, {"data.store": str(store)})
    out = tmp_path / "abl"
    ctrl_c_at_step(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        ab.ablate(base, out, [], budget_steps=3, seeds=1, log=quiet)
    monkeypatch.undo()
    run = out / "paper" / "seed-0"
    saved = (run / "checkpoint.pt").read_bytes()
    assert checkpoint.load(run / "checkpoint.pt")["global_step"] == 2
    with pytest.raises(UserError) as err:
        ab.ablate(base, out, [], budget_steps=2, seeds=1, log=quiet)
    message = str(err.value)
    assert f"{run} holds an interrupted run with another config" in message
    assert "(optim.epochs 2, now 1; run.max_steps 3, now 2)" in message and "\n" not in message
    assert (run / "checkpoint.pt").read_bytes() == saved and not (run / ab.RESULT).exists()
    capsys.readouterr()
    result = ab.ablate(base, out, [], budget_steps=3, seeds=1, log=quiet)
    assert f"resuming from {run / 'checkpoint.pt'}" in capsys.readouterr().out
    assert result["results"]["paper"][0]["steps"] == 3
    whole = ab.ablate(base, tmp_path / "whole", [], budget_steps=3, seeds=1, log=quiet)
    assert whole["results"]["paper"][0]["steps"] == 3
    resumed = checkpoint.load(run / "checkpoint.pt")["model"]
    uninterrupted = checkpoint.load(tmp_path / "whole" / "paper" / "seed-0" /
                                    "checkpoint.pt")["model"]
    assert all(np.array_equal(resumed[k].numpy(), uninterrupted[k].numpy())
               for k in uninterrupted)


@pytest.mark.parametrize("setting, says", [
    ("run.time_limit=5", "a clock limit stops each net after a different number of steps"),
    ("run.resume=somewhere", "ablate resumes its own runs"),
    ("run.init_from=weights.pt", "every net trains from the paper's initialisation"),
])
def test_settings_that_break_the_one_budget_are_refused_before_training(
        store, tmp_path, monkeypatch, setting, says):
    import alexnet.train

    monkeypatch.setattr(alexnet.train, "train", no_training)
    base = resolve("paper", SMALL + [setting], {"data.store": str(store)})
    with pytest.raises(UserError, match=re.escape(says)):
        ab.ablate(base, tmp_path / "abl", ab.choose_variants(["no-lrn"]), budget_steps=1,
                  seeds=1, log=quiet)
    assert not (tmp_path / "abl").exists()


def test_a_switch_the_net_does_not_have_is_refused(store, tmp_path):
    """torchvision's layout has no LRN, column or pooling switch: those variants would train
    the paper net again and read as 'no effect'."""
    base = resolve("paper", [*SMALL[1:], "model.arch=alexnet-tv"],  # it has no width either
                   {"data.store": str(store)})
    for name in ("no-lrn", "no-overlap", "one-column", "tanh"):
        with pytest.raises(UserError) as err:
            ab.variant_configs(base, ab.choose_variants([name]), tmp_path)
        assert "model.arch alexnet-tv" in str(err.value)
        assert "--variants no-dropout no-pca" in str(err.value)
    configs = ab.variant_configs(base, ab.choose_variants(["no-dropout", "no-pca"]), tmp_path)
    assert list(configs) == ["paper", "no-dropout", "no-pca"]


def test_one_column_follows_footnote_3_and_each_variant_changes_only_its_layer():
    """Built at the paper's width: every variant has the paper net's modules and parameter
    shapes except where its one choice lives."""
    from alexnet import paper
    from alexnet.config import model_kwargs
    from alexnet.model import build_model

    base = resolve("paper", [])
    configs = ab.variant_configs(base, list(ab.VARIANTS), Path("unused"))
    nets = {name: build_model(c.model.arch, num_classes=paper.NUM_CLASSES, **model_kwargs(c))
            for name, c in configs.items()}

    def layout(net):
        return {name: (type(m).__name__, getattr(m, "kernel_size", None),
                       getattr(m, "p", None), [tuple(p.shape) for p in m.parameters(False)])
                for name, m in net.named_modules() if name}

    paper_net = layout(nets["paper"])
    changed = {name: {k for k in paper_net if layout(net)[k] != paper_net[k]}
               for name, net in nets.items()}
    assert changed == {"paper": set(), "no-lrn": {"lrn1", "lrn2"}, "no-overlap": {"pool"},
                       "one-column": {"conv1", "conv2", "conv3", "conv4"}, "tanh": {"act"},
                       "no-dropout": {"drop"}, "no-pca": set()}
    assert sum(p.numel() for p in nets["paper"].parameters()) == paper.PARAMETERS
    one = nets["one-column"]  # half the kernels in conv1-conv4; conv5 and fc kept (footnote 3)
    assert [getattr(one, f"conv{i}").weight.shape[0] for i in range(1, 6)] == \
        [48, 128, 192, 192, 256]
    assert one.fc6.weight.shape == nets["paper"].fc6.weight.shape
    assert type(nets["no-lrn"].lrn1).__name__ == "Identity"
    assert (nets["no-overlap"].pool.kernel_size, nets["no-overlap"].pool.stride) == \
        (paper.NON_OVERLAP_POOL_SIZE, paper.NON_OVERLAP_POOL_STRIDE)


def test_bad_data_is_refused_in_one_line_before_anything_is_written(store, tmp_path, capsys):
    """Images smaller than the crop, or a validation split the store lacks: one line, and no
    --out folder, note or run started."""
    out = tmp_path / "abl"
    small = ["--set", "model.width=0.125", "--set", "run.device=cpu", "--budget-steps", "1"]
    assert main(["ablate", "--data", str(store), "--out", str(out)] + small) == 2
    assert main(["ablate", "--data", str(store), "--out", str(out), "--set", "data.crop=64",
                 "--set", "data.val_split=test"] + small) == 2
    said = capsys.readouterr()
    err = said.err.strip().splitlines()
    assert len(err) == 2 and said.out == "", said
    assert "data.crop 224 is larger than the 72-pixel images" in err[0]
    assert "store has no 'test' split" in err[1]
    assert not out.exists()


def test_the_tables_say_what_was_measured_and_how_deltas_are_signed(store, tmp_path, capsys):
    out = tmp_path / "abl"
    assert main(["ablate", "--data", str(store), "--out", str(out), "--budget-steps", "2",
                 "--seeds", "1", "--variants", "no-lrn", "--set", "model.width=0.125",
                 "--set", "optim.batch_size=8", "--set", "run.device=cpu",
                 "--set", "run.progress=false", "--set", "data.crop=64"]) == 0
    printed = capsys.readouterr().out
    md = (out / "ablation.md").read_text()
    saved = json.loads((out / "ablation.json").read_text())
    sign = "positive: the paper's choice helps"
    for text in (printed, md, saved["note"]):
        assert "variant's error minus the paper net's" in text and sign in text
    for text in (printed, md, saved["setup"]):
        assert f"store {store.resolve()}" in text and "16 training images" in text
        assert "validation: its 'val' split (8 images, centre crop)" in text
        assert "budget 2 steps of 8 images" in text and "seed 0" in text
        assert "model.width=0.125" in text and "data.crop=64" in text
    assert saved["store"] == str(store.resolve()) and saved["val_split"] == "val"
    assert saved["val_images"] == 8 and saved["train_images"] == 16
    assert saved["base_changes"]["model.width"] == 0.125
    assert "1 seed per net" in saved["note"]
    # one seed: the sentence says the delta has no interval (not "is no interval")
    assert "top-1 delta +0.00 points has no interval" in md or \
        re.search(r"top-1 delta [+-]\d+\.\d\d points has no interval", md)


def test_runs_of_unequal_length_are_not_tabulated_as_one_budget():
    def run(name, steps):
        return {"variant": name, "top1_error": 0.5, "top5_error": 0.2, "steps": steps}

    results = {"paper": [run("paper seed 0", 4), run("paper seed 1", 4)],
               "no-lrn": [run("no-lrn seed 0", 4), run("no-lrn seed 1", 3)]}
    with pytest.raises(UserError, match=r"unequal budgets: .*no-lrn seed 1: 3 steps"):
        ab.tabulate(results, ab.choose_variants(["no-lrn"]))


def test_a_damaged_checkpoint_of_a_stopped_run_names_the_folder_to_delete(store, tmp_path):
    """Its advice is ablate's (delete that run folder), not train's (resume another file)."""
    folder = tmp_path / "abl" / "paper" / "seed-0"
    folder.mkdir(parents=True)
    (folder / "checkpoint.pt").write_bytes(b"junk")
    base = resolve("paper", SMALL, {"data.store": str(store)})
    with pytest.raises(UserError) as err:
        ab.ablate(base, tmp_path / "abl", [], budget_steps=1, seeds=1, log=quiet)
    message = str(err.value)
    assert message.startswith(f"{folder / 'checkpoint.pt'}: not a readable alexnet checkpoint")
    assert message.endswith(f"delete the run folder {folder} to train that run again, or "
                            "choose another --out") and "\n" not in message
    assert (folder / "checkpoint.pt").read_bytes() == b"junk"
