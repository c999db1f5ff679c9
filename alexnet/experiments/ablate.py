"""`alexnet ablate`: the paper net and each of its ablations under one equal budget.

Sections 3.2-3.4 and 4.1 report what each choice is worth on ImageNet (alexnet/paper.py
ABLATION_DELTAS): two columns vs one column with half the kernels, LRN, overlapping pooling,
PCA colour augmentation. We also train the two switches the paper gives no ImageNet figure
for: tanh units (figure 1 is on CIFAR-10) and no dropout (section 4.2 says only that the net
overfits substantially without it). Every variant's config is the same base config with
exactly ONE key changed, trained through `alexnet.train.train` with the same seed and the
same budget (`run.max_steps` steps, or `optim.epochs` epochs), once for each of `seeds`
seeds (run.seed = base seed + k, the same seeds for every net); its final validation top-1
and top-5 errors (centre crop) are compared with the paper net's: each net's mean and spread
over the seeds, and the delta (variant minus paper net, in points) with its Welch t interval
(alexnet.experiments.stats). Positive deltas mean the paper's choice helps, as the paper
signs its figures. A delta is called distinguishable from zero when its 95% interval
excludes 0; otherwise this budget cannot tell it from seed noise. What could make the nets'
budgets or starts differ (a clock limit, a resumed or pre-trained start, a switch the chosen
architecture lacks, a stopped run resumed under other settings) is refused in one line.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alexnet import paper
from alexnet.atomic import FolderLock, check_output, ensure_folder, read_json_object, write_atomic
from alexnet.config import Config, from_dict, model_kwargs, resolve, to_dict
from alexnet.errors import UserError
from alexnet.experiments import stats
from alexnet.progress import format_duration

RESULT = "result.json"  # written into a variant's run folder once it has finished
# what a run stopped by Ctrl-C or SIGTERM advises: ablate resumes its runs itself
CONTINUE_WITH = "the same `alexnet ablate` command (it resumes this run)"
DEFAULT_SEEDS = 3  # runs per net: the fewest that give a usable t interval (t_0.975,2 = 4.3)
# config keys that say where a run lives, whether it was resumed and how it shows progress:
# not what it measured, so a finished or stopped run is reused whatever they read
WHERE_AND_HOW = ("run.out", "run.resume", "run.progress")
SIGN = ("deltas: the variant's error minus the paper net's, in percentage points "
        "(positive: the paper's choice helps, as the paper signs its figures)")


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

    With `budget_steps`, training stops after that many optimizer steps (`run.max_steps`),
    and `optim.epochs` is SET to the epochs those steps span (ceil(steps / steps per epoch),
    from the training split's size), which may be fewer than the preset's: the steps end the
    run, and the epoch count no longer does. With `epochs`, every net trains that many.
    """
    if budget_steps is not None and epochs is not None:
        raise UserError("give either --budget-steps or --epochs, not both")
    if budget_steps is not None:
        if budget_steps < 1:
            raise UserError(f"--budget-steps {budget_steps}: give at least 1 step")
        per_epoch = max(1, (train_images or 1) // base.optim.batch_size)
        if base.run.steps_per_epoch:
            per_epoch = min(per_epoch, base.run.steps_per_epoch)
        return from_dict({"run": {"max_steps": budget_steps},
                          "optim": {"epochs": math.ceil(budget_steps / per_epoch)}}, base)
    if epochs is not None:
        if epochs < 1:
            raise UserError(f"--epochs {epochs}: give at least 1 epoch")
        return from_dict({"optim": {"epochs": epochs}, "run": {"max_steps": 0}}, base)
    return base


def variant_configs(base: Config, variants: list[Variant], out: Path) -> dict[str, Config]:
    """The paper net's config and each variant's: `base` with one key changed, own run folder.

    Raises UserError where the base already has a variant's value (the variant would be the
    paper net itself, e.g. after --set model.lrn=false), or where the base's architecture has
    no such switch (model.arch=alexnet-tv: the same net would train twice and read as "no
    effect").
    """
    configs = {BASELINE: from_dict({"run": {"out": str(out / BASELINE)}}, base)}
    for v in variants:
        same = _same_as_base(v, base)
        if same:
            raise UserError(f"--set {same} is already in the base config: variant "
                            f"{v.name} would be the paper net; drop that --set")
        configs[v.name] = from_dict({v.section: {v.key: v.value},
                                     "run": {"out": str(out / v.name)}}, base)
        if not _reaches_the_net(v, base):
            usable = " ".join(u.name for u in VARIANTS if _reaches_the_net(u, base))
            raise UserError(f"model.arch {base.model.arch} has no {v.section}.{v.key}: variant "
                            f"{v.name} would train the paper net again; use model.arch=alexnet, "
                            f"or --variants {usable}")
    return configs


def _same_as_base(v: Variant, base: Config) -> str | None:
    """The base setting (as --set writes it) that already gives variant `v`'s run, or None:
    its own value, or for no-pca a PCA strength of 0 (the loader then shifts no colour)."""
    if getattr(getattr(base, v.section), v.key) == v.value:
        return v.switch
    if v.section == "data" and v.key == "pca" and base.data.pca_scale == 0:
        return "data.pca_scale=0"
    return None


def _reaches_the_net(v: Variant, base: Config) -> bool:
    """Whether variant `v`'s switch changes what is trained from `base`: a data switch always
    does, a model switch only where the architecture takes it (config.model_kwargs)."""
    if v.section != "model":
        return True
    return model_kwargs(from_dict({v.section: {v.key: v.value}}, base)) != model_kwargs(base)


def seed_configs(config: Config, seeds: int) -> list[Config]:
    """`config` once per seed: run.seed = its seed + k, run folder OUT/<net>/seed-<seed>."""
    if seeds < 1:
        raise UserError(f"--seeds {seeds}: give at least 1 (2 or more for an interval)")
    root, first = Path(config.run.out), config.run.seed
    return [from_dict({"run": {"seed": first + k, "out": str(root / f"seed-{first + k}")}},
                      config) for k in range(seeds)]


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


def recorded_difference(recorded: Any, config: Config) -> list[str]:
    """`section.key VALUE, now VALUE` for each key where a run's recorded config (its
    result.json's or its checkpoint's) differs from `config` in what it measures: not where
    it lives or whether it was resumed (WHERE_AND_HOW; the same --out given as a relative or
    an absolute path is one folder), and the store compared as the folder it names."""
    recorded = recorded if isinstance(recorded, dict) else {}
    differ = []
    for section, values in to_dict(config).items():
        theirs = recorded.get(section) if isinstance(recorded.get(section), dict) else {}
        for key, value in values.items():
            name, old = f"{section}.{key}", theirs.get(key, "absent")
            same = old == value or (name == "data.store" and isinstance(old, str) and
                                    bool(old) and _folder(old) == _folder(value))
            if name not in WHERE_AND_HOW and not same:
                differ.append(f"{name} {old}, now {value}")
    return differ


def _folder(path: str) -> Path:
    """`path` as an absolute folder (relative to this process's working folder)."""
    return Path(path).expanduser().resolve()


def _listed(differ: list[str], most: int = 3) -> str:
    """The first `most` differences, and how many more."""
    more = f", and {len(differ) - most} more" if len(differ) > most else ""
    return "; ".join(differ[:most]) + more


def train_variant(name: str, config: Config, log: Callable[[str], Any] = print) -> dict[str, Any]:
    """Train one variant (or reuse its finished result); the figures the table needs.

    A run folder holding this variant's result.json with the same config is reused; one
    holding only a checkpoint (an interrupted ablate) is resumed when the checkpoint's config
    is this run's, else refused naming what differs (resumed under another budget or other
    settings, its result would be neither run). A result.json that is not ablate's (damaged)
    is refused, naming the folder to delete: the run it stood for finished, and what it
    measured cannot be told from its checkpoint.
    """
    from alexnet.train import train
    from alexnet.training.saving import read_resumable

    run_dir = Path(config.run.out)
    done = run_dir / RESULT
    if done.is_file():
        try:
            previous = json.loads(done.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError):  # an OSError says itself
            previous = None
        if not isinstance(previous, dict) or "config" not in previous:
            raise UserError(f"{done}: damaged (not the result ablate writes); delete the run "
                            f"folder {run_dir} to train that run again, or choose another --out")
        differ = recorded_difference(previous["config"], config)
        if not differ:
            log(f"== {name}: finished earlier, reusing {done}")
            return previous
        raise UserError(f"{run_dir} holds a finished run with another config "
                        f"({_listed(differ)}); choose another --out")
    stopped = None
    if (run_dir / "checkpoint.pt").is_file():
        try:
            stopped = read_resumable(run_dir)
        except UserError as err:  # its own advice is train's (--resume another checkpoint)
            why = str(err).rpartition("; ")[0] or str(err)
            raise UserError(f"{why}; delete the run folder {run_dir} to train that run again, "
                            "or choose another --out") from None
        differ = recorded_difference(stopped.get("config"), config)
        if differ:
            raise UserError(f"{run_dir} holds an interrupted run with another config "
                            f"({_listed(differ)}); continue it with the ablate command that "
                            f"started it, delete {run_dir} to train it anew, or choose "
                            "another --out")
        log(f"== {name}: resuming the interrupted run in {run_dir}")
        config = from_dict({"run": {"resume": str(run_dir)}}, config)
    else:
        log(f"== {name}")
    t0 = time.perf_counter()
    summary = train(config, resume=stopped, continue_with=CONTINUE_WITH)
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
    write_atomic(done, json.dumps(result, indent=1) + "\n")
    return result


def delta_row(name: str, switch: str, runs: list[dict], base: list[dict],
              paper_delta: tuple[float | None, float | None], note: str = "") -> dict:
    """One table row: mean and spread of the errors over seeds, the deltas against the paper
    net (points) with their intervals and verdicts, the paper's deltas."""
    row: dict[str, Any] = {"variant": name, "switch": switch, "seeds": len(runs),
                           "steps": runs[0]["steps"] if runs else None}
    for k in ("top1", "top5"):
        values = [r[f"{k}_error"] for r in runs]
        row[f"{k}_errors"] = values
        row[f"{k}_mean"], row[f"{k}_sd"] = stats.mean_spread(values)
        if base is None:
            continue
        d = stats.welch([100 * v for v in values], [100 * r[f"{k}_error"] for r in base])
        row[f"delta_{k}"] = d.as_dict()
        row[f"verdict_{k}"] = stats.verdict(d)
    if base is not None:
        row["paper_delta_top1"], row["paper_delta_top5"] = paper_delta
        row["paper_note"] = note
    return row


def tabulate(results: dict[str, list[dict[str, Any]]], variants: list[Variant]) -> list[dict]:
    """One row per net: errors over seeds, delta against the paper net, the paper's delta.

    Raises UserError when the runs did not all train the same number of steps: their deltas
    would not compare the choices under one budget.
    """
    steps = {r["variant"]: r["steps"] for runs in results.values() for r in runs}
    if len(set(steps.values())) > 1:
        first = next(iter(steps.items()))
        odd = [f"{name}: {n} steps" for name, n in steps.items() if n != first[1]]
        raise UserError(f"unequal budgets: {first[0]}: {first[1]} steps, but {', '.join(odd)}; "
                        "the deltas would not compare the choices under one budget")
    base = results[BASELINE]
    rows = [delta_row(BASELINE, "-", base, None, (None, None))]
    for v in variants:
        paper_d = paper.ABLATION_DELTAS.get(v.paper_key, (None, None)) if v.paper_key \
            else (None, None)
        note = NO_PAPER_FIGURE.get(v.name, "" if paper_d[1] is not None
                                   else "paper: top-1 only, 'over 1%'")
        rows.append(delta_row(v.name, v.switch, results[v.name], base, paper_d, note))
    return rows


def markdown(rows: list[dict]) -> str:
    """The table as Markdown (errors in %, mean +- sd over seeds; deltas in points with their
    95% intervals), then one sentence per variant on whether its delta is distinguishable."""
    def pct(mean: float, sd: float) -> str:
        return f"{100 * mean:.2f}" + ("" if math.isnan(sd) else f" ± {100 * sd:.2f}")

    def delta(d: dict | None) -> str:
        if d is None:
            return "-"
        if math.isnan(d["low"]):
            return f"{d['estimate']:+.2f}"
        return f"{d['estimate']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}]"

    def pts(v: float | None) -> str:
        return "n/a" if v is None else f"{v:+.2f}"

    lines = ["| variant | switch | seeds | top-1 % | top-5 % | delta top-1 [95%] | "
             "delta top-5 [95%] | paper delta top-1 | paper delta top-5 | steps |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    sentences = []
    for r in rows:
        is_base = r["variant"] == BASELINE
        paper_cols = ["-", "-"] if is_base else [pts(r["paper_delta_top1"]),
                                                 pts(r["paper_delta_top5"])]
        lines.append(f"| {r['variant']} | {r['switch']} | {r['seeds']} | "
                     f"{pct(r['top1_mean'], r['top1_sd'])} | {pct(r['top5_mean'], r['top5_sd'])}"
                     f" | {delta(r.get('delta_top1'))} | {delta(r.get('delta_top5'))} | "
                     f"{paper_cols[0]} | {paper_cols[1]} | {r['steps']} |")
        if not is_base:
            sentences.append(sentence(r))
    return "\n".join(lines + [""] + sentences) + "\n"


def sentence(row: dict) -> str:
    """Whether the variant's deltas are distinguishable from zero, and the paper's figure."""
    d1, d5 = row["delta_top1"], row["delta_top5"]
    paper_text = row["paper_note"]
    if row["paper_delta_top1"] is not None:
        paper_text = (f"paper: {pts_or_na(row['paper_delta_top1'])} top-1, "
                      f"{pts_or_na(row['paper_delta_top5'])} top-5"
                      + (f" ({paper_text.removeprefix('paper: ')})" if paper_text else ""))

    def verb(verdict: str) -> str:
        return "has" if verdict.startswith("no interval") else "is"

    return (f"- {row['variant']}: top-1 delta {d1['estimate']:+.2f} points "
            f"{verb(row['verdict_top1'])} {row['verdict_top1']}; top-5 delta "
            f"{d5['estimate']:+.2f} {verb(row['verdict_top5'])} {row['verdict_top5']}. "
            f"{paper_text[0].upper() + paper_text[1:]}.")


def pts_or_na(v: float | None) -> str:
    return "n/a" if v is None else f"{v:+.1f}"


def honest_note(config: Config, seeds: int) -> str:
    """What the deltas mean under this budget and this many seeds."""
    full = (config.run.max_steps == 0 and config.optim.epochs >= paper.EPOCHS
            and config.model.width == 1.0 and config.data.crop == paper.CROP_SIZE)
    from alexnet.training.run_folder import plural

    rule = (f"{SIGN[0].upper() + SIGN[1:]}. {plural(seeds, 'seed')} per net; a delta is "
            "distinguishable from zero when its 95% Welch t interval excludes 0 (sentences "
            "above).")
    if full:
        return ("note: the paper's full budget; on ImageNet these deltas are the paper's "
                f"experiment. {rule}")
    return ("note: a reduced budget (steps, epochs, width or crop below the paper's): the "
            "deltas measure the choices at this budget and on this data, not the paper's "
            f"ImageNet figures. {rule}")


CSV_FIELDS = ("variant", "switch", "seeds", "steps", "top1_mean", "top1_sd", "top5_mean",
              "top5_sd", "delta_top1", "delta_top1_low", "delta_top1_high", "delta_top5",
              "delta_top5_low", "delta_top5_high", "paper_delta_top1", "paper_delta_top5")


def csv_row(row: dict) -> dict:
    """A row flattened for the CSV: the intervals as their own columns."""
    flat = {k: row.get(k) for k in CSV_FIELDS}
    for k in ("top1", "top5"):
        d = row.get(f"delta_{k}")
        flat[f"delta_{k}"], flat[f"delta_{k}_low"], flat[f"delta_{k}_high"] = \
            (d["estimate"], d["low"], d["high"]) if d else (None, None, None)
    return flat


MD_TITLE = "# Ablations (alexnet ablate)"


def is_table(path: Path) -> bool:
    """Whether `path` holds an earlier ablation.json, .csv or .md (what a rerun may replace):
    recognised by the JSON's experiment, the CSV's header, the Markdown's title."""
    if path.suffix == ".json":
        return str((read_json_object(path) or {}).get("experiment", "")).startswith("ablate")
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            first = f.readline().rstrip("\r\n")
    except OSError:
        return False
    return first == (",".join(CSV_FIELDS) if path.suffix == ".csv" else MD_TITLE)


def check_outputs(out: Path) -> None:
    """Refuse, before any training, an --out whose ablation.json, .csv or .md is a file this
    command did not write (the tables would replace it, and it would be lost)."""
    for name in ("ablation.json", "ablation.csv", "ablation.md"):
        check_output(out / name, "ablation table", is_table, name=f"--out {out}: its {name}")


def write_outputs(out: Path, rows: list[dict], note: str, meta: dict[str, Any]) -> list[Path]:
    """ablation.json, ablation.csv and ablation.md in `out`, each written atomically."""
    paths = [out / "ablation.json", out / "ablation.csv", out / "ablation.md"]
    write_atomic(paths[0], json.dumps({**meta, "rows": rows, "note": note}, indent=1) + "\n")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(CSV_FIELDS))
    writer.writeheader()
    writer.writerows(csv_row(r) for r in rows)
    write_atomic(paths[1], buf.getvalue())
    write_atomic(paths[2], MD_TITLE + "\n\n" + meta["setup"] + "\n\n"
                 + markdown(rows) + "\n" + note + "\n")
    return paths


def check_base(base: Config) -> None:
    """Refuse base settings under which the nets would not share one budget and one start:
    a clock limit (each net would stop after its own number of steps), a run to resume or
    weights to start from (ablate resumes its own runs; every net starts from the paper's
    initialisation, section 5, and one column's layers have other shapes)."""
    run = base.run
    if run.time_limit:
        raise UserError(f"--set run.time_limit={run.time_limit:g}: a clock limit stops each net "
                        "after a different number of steps; give the budget as --budget-steps "
                        "or --epochs")
    if run.resume:
        raise UserError(f"--set run.resume={run.resume}: ablate resumes its own runs (rerun the "
                        "same `alexnet ablate` command); drop it")
    if run.init_from:
        raise UserError(f"--set run.init_from={run.init_from}: every net trains from the "
                        "paper's initialisation (and one column's layers have other shapes); "
                        "drop it")


@dataclass(frozen=True)
class Data:
    """What every net trains and is validated on."""

    store: str  # as an absolute folder
    train_images: int
    val_split: str
    val_images: int  # validated on (run.val_limit applied)


def check_data(base: Config) -> Data:
    """Open the store's training split and the validation split as training will, so that a
    missing store or split, or images smaller than the crop, is one line before any run."""
    from alexnet.data.splits import auto_split
    from alexnet.data.store import check_root, open_split
    from alexnet.training.data import check_crop

    store = base.data.store
    if not store:
        raise UserError("no store given: --data STORE (a folder made by 'alexnet prepare')")
    root = check_root(store)
    train = open_split(root, "train")
    check_crop(base, train.image_size, root)  # no-overlap's smallest crop is smaller (36)
    choice = auto_split(root) if base.data.val_split == "auto" else base.data.val_split
    if choice in (None, "none"):
        raise UserError(f"{store}: ablate compares validation errors; the store needs a 'val' "
                        "or 'test' split (and data.val_split other than none)")
    val = len(open_split(root, choice))
    limit = base.run.val_limit
    return Data(str(_folder(store)), len(train), choice, min(val, limit) if limit else val)


def describe(base: Config, seeds: list[int], data: Data) -> str:
    """The setup every net shared, in one paragraph: the data, the budget, the seeds, and
    every key where the base config is not the paper's (width, crop, batch, ...)."""
    o, r = base.optim, base.run
    budget = f"{r.max_steps} steps of {o.batch_size} images (optim.epochs {o.epochs})" \
        if r.max_steps else f"{o.epochs} epochs in batches of {o.batch_size} images"
    changes = base_changes(base)
    changed = ", ".join(f"{k}={v}" for k, v in changes.items()) or "none"
    seed_list = ", ".join(map(str, seeds))
    return (f"Every net: store {data.store} ({data.train_images} training images; validation: "
            f"its '{data.val_split}' split ({data.val_images} images, centre crop)); budget "
            f"{budget}; {'seed' if len(seeds) == 1 else 'seeds'} {seed_list}. The base config "
            f"differs from the paper's in: {changed}.")


def base_changes(base: Config) -> dict[str, Any]:
    """{"section.key": base's value} where `base` is not the paper's config (the defaults),
    beyond where the runs live, which store they read and how they show progress."""
    return {k: v for k, (_, v) in config_difference(
        Config(), base, WHERE_AND_HOW + ("data.store",)).items()}


def ablate(base: Config, out: Path, variants: list[Variant], *, budget_steps: int | None = None,
           epochs: int | None = None, seeds: int = DEFAULT_SEEDS,
           log: Callable[[str], Any] = print) -> dict[str, Any]:
    """Train the paper net and `variants` under one budget, `seeds` times each; write and
    return the table."""
    check_base(base)
    data = check_data(base)
    base = budget_config(base, budget_steps, epochs, data.train_images)
    configs = variant_configs(base, variants, out)
    runs = {name: seed_configs(config, seeds) for name, config in configs.items()}
    seed_list = [c.run.seed for c in runs[BASELINE]]
    note, setup = honest_note(base, seeds), describe(base, seed_list, data)
    ensure_folder(out, "folder for --out")
    with ablation_lock(out):  # its runs' result.json and the tables: one ablate at a time
        check_outputs(out)
        log(setup)
        log(note)
        results = train_all(runs, log)
        rows = tabulate(results, variants)
        meta = {"experiment": "ablate (paper sections 3.2-3.4, 4.1, 4.2)", "setup": setup,
                "store": data.store, "train_images": data.train_images,
                "val_split": data.val_split, "val_images": data.val_images,
                "budget_steps": base.run.max_steps or None, "epochs": base.optim.epochs,
                "batch_size": base.optim.batch_size, "seeds": seed_list,
                "errors": "fractions (top1_errors, top1_mean, ...); deltas in percentage points",
                "delta": SIGN, "base_changes": base_changes(base),
                "base_config": to_dict(base), "switches": {v.name: v.switch for v in variants}}
        paths = write_outputs(out, rows, note, meta)
    return {"rows": rows, "note": note, "setup": setup, "paths": [str(p) for p in paths],
            "configs": configs, "results": results}


def ablation_lock(out: Path) -> FolderLock:
    """The lock of ablate's folder `out` (taken by `with`): a second ablate into it would
    resume, reuse or rewrite the same runs and tables while the first still writes them."""
    return FolderLock(out, f"{out}: another process is running an ablation into this folder "
                      "(an `alexnet ablate` still running?); wait for it to end, or choose "
                      "another --out")


def train_all(runs: dict[str, list[Config]], log: Callable[[str], Any] = print
              ) -> dict[str, list[dict[str, Any]]]:
    """Train every run (seed by seed, so a stopped ablate has whole seeds), with an ETA line
    after each run at the mean time per run so far."""
    total = sum(len(c) for c in runs.values())
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in runs}
    t0, done = time.perf_counter(), 0
    for k in range(max(len(c) for c in runs.values())):
        for name, configs in runs.items():
            if k >= len(configs):
                continue
            results[name].append(train_variant(f"{name} seed {configs[k].run.seed}",
                                               configs[k], log))
            done += 1
            elapsed = time.perf_counter() - t0
            log(f"ablate: {done}/{total} runs, {format_duration(elapsed)} elapsed, ETA "
                f"{format_duration(elapsed * (total - done) / done)}")
    return results


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `alexnet ablate`."""
    parser.add_argument("--data", required=True, help="a prepared store with a val or test split")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--budget-steps", type=int, default=None,
                        help="optimizer steps for every net (run.max_steps; optim.epochs is "
                             "set to the epochs they span)")
    budget.add_argument("--epochs", type=int, default=None,
                        help="epochs for every net (default: the preset's, the paper's 90)")
    parser.add_argument("--seeds", type=int, default=DEFAULT_SEEDS,
                        help=f"runs per net, seeds run.seed + 0.. (default {DEFAULT_SEEDS})")
    parser.add_argument("--variants", nargs="+", default=None, metavar="NAME",
                        help=f"which ablations (default: all): {', '.join(BY_NAME)}")
    parser.add_argument("--out", type=Path, default=Path("runs/ablate"),
                        help="folder for one run folder per net and seed, and the table files")
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
                    epochs=args.epochs, seeds=args.seeds)
    print()
    print(result["setup"])
    print()
    print(markdown(result["rows"]))
    print(result["note"])
    print("wrote " + ", ".join(result["paths"]))
    return 0
