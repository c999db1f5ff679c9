"""`alexnet ablate`: the paper net and each of its ablations under one equal budget.

Sections 3.2-3.4 and 4.1 report what each choice is worth on ImageNet (alexnet/paper.py
ABLATION_DELTAS): two columns vs one column with half the kernels, LRN, overlapping pooling,
PCA colour augmentation. We also train the two switches the paper gives no ImageNet figure
for: tanh units (figure 1 is on CIFAR-10) and no dropout (section 4.2 says only that the net
overfits substantially without it). Every variant's config is the same base config with
exactly ONE key changed, trained through `alexnet.train.train` with the same seed and the
same budget (`run.max_steps` steps, or `optim.epochs` epochs); its final validation top-1 and
top-5 errors (centre crop) are compared with the paper net's.

Under a small CPU budget on a small data set the deltas are noise from one seed: the command
is the harness; on a GPU with ImageNet and the paper's 90 epochs it is the real experiment.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alexnet import paper
from alexnet.config import Config, from_dict, resolve, to_dict
from alexnet.errors import UserError

RESULT = "result.json"  # written into a variant's run folder once it has finished


@dataclass(frozen=True)
class Variant:
    """One ablation: the single config key it changes, and the paper's figure for it."""

    name: str
    section: str  # config section
    key: str
    value: Any
    what: str
    paper_key: str | None  # key of paper.ABLATION_DELTAS, None where the paper gives none

    @property
    def switch(self) -> str:
        """`section.key=value`, as --set writes it."""
        value = str(self.value).lower() if isinstance(self.value, bool) else self.value
        return f"{self.section}.{self.key}={value}"


BASELINE = "paper"
VARIANTS = (
    Variant("no-lrn", "model", "lrn", False, "no local response normalisation (3.3)", "lrn"),
    Variant("no-overlap", "model", "overlap_pool", False,
            "non-overlapping pooling z=2, s=2 (3.4)", "overlapping_pool"),
    Variant("one-column", "model", "columns", 1,
            "one column with half the kernels (3.2)", "two_columns"),
    Variant("tanh", "model", "activation", "tanh", "tanh units instead of ReLUs (3.1)", None),
    Variant("no-dropout", "model", "dropout", 0.0, "no dropout on fc6, fc7 (4.2)", None),
    Variant("no-pca", "data", "pca", False, "no PCA colour augmentation (4.1)", "pca_colour"),
)
BY_NAME = {v.name: v for v in VARIANTS}
NO_PAPER_FIGURE = {
    "tanh": "paper: no ImageNet figure (figure 1: ~6x more epochs to 25% on CIFAR-10)",
    "no-dropout": "paper: no figure (without dropout the net overfits substantially, 4.2)",
}


def choose_variants(names: list[str] | None) -> list[Variant]:
    """The variants to train (all by default), in the order of VARIANTS; refuse unknown."""
    if not names:
        return list(VARIANTS)
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        raise UserError(f"--variants {unknown[0]!r}: choose from {', '.join(BY_NAME)}")
    return [v for v in VARIANTS if v.name in names]


def budget_config(base: Config, budget_steps: int | None, epochs: int | None,
                  train_images: int | None = None) -> Config:
    """`base` with the budget every variant gets: a step count, or a number of epochs.

    With `budget_steps`, training stops after that many optimizer steps (`run.max_steps`);
    `optim.epochs` is raised, if needed, so that the epochs do not end the run first.
    """
    if budget_steps is not None and epochs is not None:
        raise UserError("give either --budget-steps or --epochs, not both")
    if budget_steps is not None:
        if budget_steps < 1:
            raise UserError(f"--budget-steps {budget_steps}: give at least 1 step")
        per_epoch = max(1, (train_images or 1) // base.optim.batch_size)
        if base.run.steps_per_epoch:
            per_epoch = min(per_epoch, base.run.steps_per_epoch)
        needed = math.ceil(budget_steps / per_epoch)
        return from_dict({"run": {"max_steps": budget_steps},
                          "optim": {"epochs": max(base.optim.epochs, needed)
                                    if train_images is None else needed}}, base)
    if epochs is not None:
        if epochs < 1:
            raise UserError(f"--epochs {epochs}: give at least 1 epoch")
        return from_dict({"optim": {"epochs": epochs}, "run": {"max_steps": 0}}, base)
    return base


def variant_configs(base: Config, variants: list[Variant], out: Path) -> dict[str, Config]:
    """The paper net's config and each variant's: `base` with one key changed, own run folder.

    Raises UserError where the base already has a variant's value (the variant would be the
    paper net itself, e.g. after --set model.lrn=false).
    """
    configs = {BASELINE: from_dict({"run": {"out": str(out / BASELINE)}}, base)}
    for v in variants:
        current = getattr(getattr(base, v.section), v.key)
        if current == v.value:
            raise UserError(f"--set {v.switch} is already in the base config: variant "
                            f"{v.name} would be the paper net; drop that --set")
        configs[v.name] = from_dict({v.section: {v.key: v.value},
                                     "run": {"out": str(out / v.name)}}, base)
    return configs


def config_difference(a: Config, b: Config, ignore: tuple[str, ...] = ("run.out",)
                      ) -> dict[str, tuple[Any, Any]]:
    """{"section.key": (a's value, b's value)} for every key where the two configs differ."""
    da, db = to_dict(a), to_dict(b)
    return {f"{s}.{k}": (da[s][k], db[s][k]) for s in da for k in da[s]
            if da[s][k] != db[s][k] and f"{s}.{k}" not in ignore}


def _comparable(config: Config) -> dict[str, Any]:
    """The config as run, without the fields that only say where or whether to resume."""
    d = to_dict(config)
    d["run"] = {k: v for k, v in d["run"].items() if k not in ("resume", "progress")}
    return d


def train_variant(name: str, config: Config, log=print) -> dict[str, Any]:
    """Train one variant (or reuse its finished result); the figures the table needs.

    A run folder holding this variant's result.json with the same config is reused; one
    holding only a checkpoint (an interrupted ablate) is resumed.
    """
    from alexnet.train import train

    run_dir = Path(config.run.out)
    done = run_dir / RESULT
    if done.is_file():
        try:
            previous = json.loads(done.read_text())
        except (OSError, json.JSONDecodeError):
            previous = None
        if previous and previous.get("config") == _comparable(config):
            log(f"== {name}: finished earlier, reusing {done}")
            return previous
        raise UserError(f"{run_dir} holds a finished run with another config; "
                        "choose another --out")
    if (run_dir / "checkpoint.pt").is_file():
        log(f"== {name}: resuming the interrupted run in {run_dir}")
        config = from_dict({"run": {"resume": str(run_dir)}}, config)
    else:
        log(f"== {name}")
    t0 = time.perf_counter()
    summary = train(config)
    result = {
        "variant": name, "top1_error": summary["val_top1_error"],
        "top5_error": summary["val_top5_error"], "steps": summary["steps"],
        "epochs": summary["epochs"], "stopped": summary["stopped"],
        "train_error": summary["train_error"], "seconds": time.perf_counter() - t0,
        "val_split": summary["val_split"], "run_dir": str(run_dir),
        "config": _comparable(config),
    }
    if result["top1_error"] is None:
        raise UserError(f"{config.data.store}: the run of {name} has no validation error; "
                        "ablate needs a 'val' or 'test' split in the store")
    _atomic_text(done, json.dumps(result, indent=1) + "\n")
    return result


def tabulate(results: dict[str, dict[str, Any]], variants: list[Variant]) -> list[dict]:
    """One row per net: errors, delta against the paper net, the paper's delta (points)."""
    base = results[BASELINE]
    rows = [{"variant": BASELINE, "switch": "-", "top1_error": base["top1_error"],
             "top5_error": base["top5_error"], "delta_top1": None, "delta_top5": None,
             "paper_delta_top1": None, "paper_delta_top5": None, "paper_note": "",
             "steps": base["steps"]}]
    for v in variants:
        r = results[v.name]
        paper_d = paper.ABLATION_DELTAS.get(v.paper_key, (None, None)) if v.paper_key \
            else (None, None)
        rows.append({
            "variant": v.name, "switch": v.switch,
            "top1_error": r["top1_error"], "top5_error": r["top5_error"],
            "delta_top1": _points(r["top1_error"], base["top1_error"]),
            "delta_top5": _points(r["top5_error"], base["top5_error"]),
            "paper_delta_top1": paper_d[0], "paper_delta_top5": paper_d[1],
            "paper_note": NO_PAPER_FIGURE.get(v.name, "" if paper_d[1] is not None
                                              else "paper: top-1 only ('over 1%')"),
            "steps": r["steps"],
        })
    return rows


def _points(a: float | None, b: float | None) -> float | None:
    """a - b in percentage points (errors given as fractions)."""
    return None if a is None or b is None else 100.0 * (a - b)


def markdown(rows: list[dict]) -> str:
    """The table as Markdown: errors in %, deltas in points (variant minus paper net)."""
    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.2f}"

    def pts(v: float | None) -> str:
        return "-" if v is None else f"{v:+.2f}"

    lines = ["| variant | switch | top-1 % | top-5 % | delta top-1 | delta top-5 | "
             "paper delta top-1 | paper delta top-5 | steps |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["variant"] == BASELINE:
            paper_cols = ["-", "-"]
        elif r["paper_delta_top1"] is None:
            paper_cols = ["n/a", "n/a"]
        else:
            paper_cols = [pts(r["paper_delta_top1"]), pts(r["paper_delta_top5"])
                          if r["paper_delta_top5"] is not None else "n/a"]
        lines.append(f"| {r['variant']} | {r['switch']} | {pct(r['top1_error'])} | "
                     f"{pct(r['top5_error'])} | {pts(r['delta_top1'])} | "
                     f"{pts(r['delta_top5'])} | {paper_cols[0]} | {paper_cols[1]} | "
                     f"{r['steps']} |")
    notes = [f"- {r['variant']}: {r['paper_note']}" for r in rows if r["paper_note"]]
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def honest_note(config: Config) -> str:
    """What the deltas mean under this budget."""
    full = (config.run.max_steps == 0 and config.optim.epochs >= paper.EPOCHS
            and config.model.width == 1.0 and config.data.crop == paper.CROP_SIZE)
    if full:
        return ("note: the paper's full budget; on ImageNet these deltas are the paper's "
                "experiment (one seed each: differences of a few tenths of a point may be "
                "seed noise).")
    return ("note: a reduced budget (steps, epochs, width or crop below the paper's). The "
            "deltas above are noise from one seed on a small budget, NOT a reproduction of "
            "the paper's figures; the point is the harness. On a GPU with ImageNet and the "
            "paper's budget it is the real experiment.")


def write_outputs(out: Path, rows: list[dict], note: str, meta: dict[str, Any]) -> list[Path]:
    """ablation.json, ablation.csv and ablation.md in `out`, each written atomically."""
    paths = [out / "ablation.json", out / "ablation.csv", out / "ablation.md"]
    _atomic_text(paths[0], json.dumps({**meta, "rows": rows, "note": note}, indent=1) + "\n")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    _atomic_text(paths[1], buf.getvalue())
    _atomic_text(paths[2], "# Ablations (alexnet ablate)\n\n" + markdown(rows) + "\n" + note
                 + "\n")
    return paths


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _train_images(store: str) -> int | None:
    """Images in the store's training split, or None if it cannot be opened (train says why)."""
    from alexnet.data.store import open_split

    try:
        return len(open_split(store, "train"))
    except (UserError, OSError):
        return None


def ablate(base: Config, out: Path, variants: list[Variant], *, budget_steps: int | None = None,
           epochs: int | None = None, log=print) -> dict[str, Any]:
    """Train the paper net and `variants` under one budget; write and return the table."""
    store = base.data.store
    if not store:
        raise UserError("no store given: --data STORE (a folder made by 'alexnet prepare')")
    root = Path(store)
    if base.data.val_split == "none" or not ((root / "val").is_dir() or (root / "test").is_dir()):
        raise UserError(f"{store}: ablate compares validation errors; the store needs a 'val' "
                        "or 'test' split (and data.val_split other than none)")
    base = budget_config(base, budget_steps, epochs, _train_images(store))
    configs = variant_configs(base, variants, out)
    log(honest_note(base))
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"--out {out}: cannot create the folder ({err.strerror})") from err
    results = {name: train_variant(name, config, log) for name, config in configs.items()}
    rows = tabulate(results, variants)
    note = honest_note(base)
    meta = {"experiment": "ablate (paper sections 3.2-3.4, 4.1, 4.2)", "store": store,
            "budget_steps": base.run.max_steps or None, "epochs": base.optim.epochs,
            "base_config": to_dict(base),
            "switches": {v.name: v.switch for v in variants}}
    paths = write_outputs(out, rows, note, meta)
    return {"rows": rows, "note": note, "paths": [str(p) for p in paths],
            "configs": configs, "results": results}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `alexnet ablate`."""
    parser.add_argument("--data", required=True, help="a prepared store with a val or test split")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--budget-steps", type=int, default=None,
                        help="optimizer steps for every net (run.max_steps)")
    budget.add_argument("--epochs", type=int, default=None,
                        help="epochs for every net (default: the preset's, the paper's 90)")
    parser.add_argument("--variants", nargs="+", default=None, metavar="NAME",
                        help=f"which ablations (default: all): {', '.join(BY_NAME)}")
    parser.add_argument("--out", type=Path, default=Path("runs/ablate"),
                        help="folder for one run folder per net and the table files")
    parser.add_argument("--preset", default="paper", help="the base preset (default paper)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="SECTION.KEY=VALUE",
                        help="override a key of the base config for every net, e.g. "
                        "--set model.width=0.25 (repeatable)")


def run(args: argparse.Namespace) -> int:
    """Train every net, print the table and the note, write ablation.{json,csv,md}."""
    variants = choose_variants(args.variants)
    base = resolve(args.preset, args.overrides, {"data.store": str(args.data)})
    result = ablate(base, args.out, variants, budget_steps=args.budget_steps,
                    epochs=args.epochs)
    print()
    print(markdown(result["rows"]))
    print(result["note"])
    print("wrote " + ", ".join(result["paths"]))
    return 0
