"""Guards of export's default names and of evaluate's ensembles of other image sizes: a second
checkpoint's export under a default name that an export of another checkpoint holds is refused
in one line, leaving that export as it was; an ensemble whose statistics do not fit the store
is refused, naming the checkpoint at fault, before any net runs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from test_evaluate import CLASSES as EVAL_CLASSES
from test_export import ckpt_path  # noqa: F401 - a fixture

from alexnet import checkpoint
from alexnet import evaluate as evaluating
from alexnet.cli import main
from alexnet.data.store import open_split, write_store
from alexnet.errors import UserError
from alexnet.export import export
from alexnet.model import AlexNet


def ablation(ckpt: Path, root: Path, *variants: str) -> list[Path]:
    """Run folders ROOT/VARIANT/seed-0 as `alexnet ablate` writes them, each its own
    checkpoint.pt (a copy of `ckpt`, its weights shifted by the variant's index)."""
    runs = []
    state = checkpoint.load(ckpt)
    for i, variant in enumerate(variants):
        run = root / variant / "seed-0"
        shifted = {k: v + i if v.is_floating_point() else v for k, v in state["model"].items()}
        checkpoint.save(run / "checkpoint.pt", {**state, "model": shifted})
        runs.append(run)
    return runs


def contents(folder: Path) -> dict[str, bytes]:
    """Every file in `folder` and its bytes."""
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The one line `alexnet ARGV` is refused with (exit status 2), after at most the line
    saying which file of a run folder it takes."""
    capsys.readouterr()
    code = main(argv)
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and lines and all(": exporting " in n for n in lines[:-1]), lines
    assert len(lines) <= 2
    return lines[-1]


@pytest.mark.filterwarnings("ignore:.*torch.jit.*:DeprecationWarning")
@pytest.mark.parametrize("fmt", ["weights", "torchscript"])
def test_another_checkpoints_export_under_the_default_name_is_refused(ckpt_path, tmp_path,  # noqa: F811
                                                                      capsys, fmt):
    """`alexnet ablate` writes OUT/VARIANT/seed-0: exporting two variants to one folder named
    both seed-0.*, the second replacing the first's export, sidecar and mean file."""
    first, second = ablation(ckpt_path, tmp_path / "abl", "one-column", "no-overlap")
    out = tmp_path / "exp"
    out.mkdir()
    assert main(["export", str(first), "--format", fmt, "--out", f"{out}/"]) == 0
    kept = contents(out)
    assert len(kept) == 3  # the file, its sidecar and its mean file
    name = out / next(n for n in kept if not n.endswith((".json", ".npy")))
    line = refused(["export", str(second), "--format", fmt, "--out", f"{out}/"], capsys)
    assert str(name) in line and str((first / "checkpoint.pt").resolve()) in line, line
    assert "--out" in line and "delete" in line, line
    assert contents(out) == kept


def test_the_default_out_here_is_guarded_too(ckpt_path, tmp_path, capsys,  # noqa: F811
                                             monkeypatch):
    first, second = ablation(ckpt_path, tmp_path / "abl", "one-column", "no-overlap")
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    assert main(["export", str(first)]) == 0
    kept = contents(here)
    line = refused(["export", str(second)], capsys)
    assert "seed-0.weights.pt" in line and str(first / "checkpoint.pt") in line, line
    assert contents(here) == kept


def test_the_sidecar_records_the_checkpoint_and_a_re_export_of_it_replaces(
        ckpt_path, tmp_path, capsys):  # noqa: F811
    """The same checkpoint again (trained further, or named another way) replaces its export."""
    (run,) = ablation(ckpt_path, tmp_path / "abl", "one-column")
    out = tmp_path / "exp"
    out.mkdir()
    assert main(["export", str(run), "--out", str(out)]) == 0
    info = json.loads((out / "seed-0.weights.pt.json").read_text())
    assert info["checkpoint"] == str((run / "checkpoint.pt").resolve())
    state = checkpoint.load(run / "checkpoint.pt")
    state["model"] = {k: v * 2 if v.is_floating_point() else v for k, v in state["model"].items()}
    checkpoint.save(run / "checkpoint.pt", state)  # trained further
    assert main(["export", str(run / "checkpoint.pt"), "--out", str(out)]) == 0
    exported = checkpoint.load(out / "seed-0.weights.pt")["model"]
    assert all(torch.equal(exported[k], v) for k, v in state["model"].items())


def test_a_run_folders_best_and_last_are_one_source(ckpt_path, tmp_path):  # noqa: F811
    """A run's export of its checkpoint.pt is replaced by that of the best.pt it later has."""
    (run,) = ablation(ckpt_path, tmp_path / "abl", "one-column")
    export(run, "weights", tmp_path)
    shutil.copyfile(run / "checkpoint.pt", run / "best.pt")
    result = export(run, "weights", tmp_path)
    assert result["exported"] == str(run / "best.pt")


def test_an_export_whose_sidecar_names_no_checkpoint_is_not_replaced_by_default(
        ckpt_path, tmp_path, capsys):  # noqa: F811
    """An export written before the sidecar named its checkpoint cannot be told to be of
    the same one: it is kept, and the line says so."""
    first, second = ablation(ckpt_path, tmp_path / "abl", "one-column", "no-overlap")
    out = tmp_path / "exp"
    out.mkdir()
    export(first, "weights", out)
    info = out / "seed-0.weights.pt.json"
    older = json.loads(info.read_text())
    del older["checkpoint"]
    info.write_text(json.dumps(older))
    kept = contents(out)
    line = refused(["export", str(second), "--out", str(out)], capsys)
    assert str(out / "seed-0.weights.pt") in line and "records no checkpoint" in line, line
    assert contents(out) == kept


def test_an_explicit_out_file_still_replaces_another_checkpoints_export(ckpt_path, tmp_path):  # noqa: F811
    """--out FILE names the file to write: an earlier export there is replaced, as before."""
    first, second = ablation(ckpt_path, tmp_path / "abl", "one-column", "no-overlap")
    out = tmp_path / "m.weights.pt"
    export(first, "weights", out)
    assert export(second, "weights", out)["exported"] == str(second / "checkpoint.pt")


def sized_net(path: Path, size: int, crop: int = 64) -> Path:
    """A tiny net trained (as its statistics say) on a store of `size`-pixel images, at `crop`."""
    torch.manual_seed(size)
    stats = {"mean_image": np.full((size, size, 3), 100.0, np.float32),
             "channel_mean": np.array([100.0, 100.0, 100.0], np.float32)}
    return checkpoint.save(path, checkpoint.make_state(
        AlexNet(num_classes=3, width=0.0625, crop=crop), classes=EVAL_CLASSES, stats=stats,
        config={"data": {"crop": crop, "mean": "image"}}, epoch=1, step=0))


@pytest.fixture(scope="module")
def store72(tmp_path_factory) -> Path:
    """A store of 72-pixel images (val), as `alexnet prepare --size 72` writes."""
    root = tmp_path_factory.mktemp("store72")
    images = np.random.default_rng(0).integers(0, 256, (4, 72, 72, 3), dtype=np.uint8)
    write_store(root / "val", images, [0, 1, 2, 0], EVAL_CLASSES)
    return root


@pytest.fixture
def no_net_runs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The nets evaluate builds (none may be built before the ensemble is refused)."""
    built: list[str] = []
    original = checkpoint.model_from_state

    def counted(ckpt, path, *args, **kwargs):
        built.append(str(path))
        return original(ckpt, path, *args, **kwargs)

    monkeypatch.setattr(checkpoint, "model_from_state", counted)
    return built


@pytest.mark.parametrize("order", [(72, 64), (64, 72)])
def test_an_ensemble_of_other_image_sizes_is_refused_before_any_net_runs(
        store72, tmp_path, capsys, no_net_runs, order):
    """R72 + R64 on R72's store failed after the first net had run, naming no checkpoint, and
    its advice (a store of 64-pixel images) gave the mirror error for the other net."""
    nets = [sized_net(tmp_path / f"r{size}.pt", size) for size in order]
    code = main(["evaluate", *map(str, nets), "--data", str(store72), "--split", "val",
                 "--device", "cpu", "--out", str(tmp_path / "report.json")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1, lines
    line = lines[0]
    assert line.split(": ", 2)[2].startswith(str(tmp_path / "r64.pt")), line
    assert "mean image of shape (64, 64, 3)" in line and "72x72" in line, line
    assert "different sizes" in line and "cannot be evaluated on one store" in line, line
    assert str(tmp_path / "r72.pt") in line, line
    assert no_net_runs == [] and not (tmp_path / "report.json").exists()


def test_one_net_whose_statistics_do_not_fit_the_store_is_named(store72, tmp_path,
                                                                no_net_runs):
    net = sized_net(tmp_path / "r64.pt", 64)
    with pytest.raises(UserError) as err:
        evaluating.ensemble_probs([net], open_split(store72, "val"))
    message = str(err.value)
    assert message.startswith(f"{net}: mean image of shape (64, 64, 3)"), message
    assert "--size 64" in message and "different sizes" not in message, message
    assert no_net_runs == []


def test_an_ensemble_of_one_size_on_its_store_still_runs(store72, tmp_path):
    nets = [sized_net(tmp_path / f"r{i}.pt", 72) for i in range(2)]
    probs, labels = evaluating.ensemble_probs(nets, open_split(store72, "val"))
    assert probs.shape == (4, 3) and labels.tolist() == [0, 1, 2, 0]
