"""`alexnet train`: the command line of the paper's learning procedure (section 5).

Resolves the config (a checkpoint's own config on --resume, a preset, flags, --set), then
runs `alexnet.training.procedure.train`; the pieces of a run live in alexnet/training/.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from alexnet import distributed
from alexnet.config import AMP_CHOICES, Config, from_dict, given_keys, resolve, to_dict
from alexnet.errors import UserError
from alexnet.training.procedure import check_run_folder_free, train
from alexnet.training.run_folder import RunFiles, plural, shows_top5
from alexnet.training.saving import read_resumable, unstarted_run

__all__ = ["add_arguments", "config_from_args", "run", "train"]

FLAG_KEYS = {  # plain flags -> config keys
    "data": "data.store", "out": "run.out", "epochs": "optim.epochs",
    "batch_size": "optim.batch_size", "lr": "optim.lr", "device": "run.device",
    "amp": "run.amp", "channels_last": "run.channels_last", "compile": "run.compile",
    "cuda_graph": "run.cuda_graph",
    "seed": "run.seed", "tensorboard": "run.tensorboard", "max_steps": "run.max_steps",
    "steps_per_epoch": "run.steps_per_epoch", "progress": "run.progress",
    "init_from": "run.init_from",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `alexnet train` (every config key is also reachable with --set)."""
    c = Config()  # the paper's values, quoted in the help
    parser.add_argument("--data", help="the store folder made by 'alexnet prepare'")
    parser.add_argument("--preset", default=None,
                        help="paper (default), fast (bf16, channels_last, compile), demo, own "
                        "(a small data set of your own: learns out of the box), or a .toml file")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="SECTION.KEY=VALUE",
                        help="override any config key, e.g. --set optim.lr=0.02 (repeatable)")
    parser.add_argument("--out", help="run folder (default runs/<preset>, runs/train for a "
                        ".toml preset that sets none; with --resume RUN, RUN)")
    parser.add_argument("--resume", help="continue exactly from a run folder or checkpoint")
    parser.add_argument("--init-from", metavar="CKPT|torchvision",
                        help="start from these weights instead of the paper's initialisation "
                        "(fine-tuning; each fc8 row whose class the source has is kept, the "
                        "other rows are new); torchvision: "
                        "its ImageNet weights, with model.arch=alexnet-tv and "
                        "data.mean=torchvision (default: none)")
    parser.add_argument("--epochs", type=int,
                        help=f"epochs to train (default: the preset's; paper {c.optim.epochs})")
    parser.add_argument("--batch-size", type=int,
                        help="the global batch, all ranks together (default: the preset's; "
                        f"paper {c.optim.batch_size})")
    parser.add_argument("--lr", type=float,
                        help="starting learning rate (default: the preset's; paper "
                        f"{c.optim.lr:g})")
    parser.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: auto, a GPU if "
                        "there is one)")
    parser.add_argument("--amp", choices=AMP_CHOICES,
                        help="autocast precision (default: off, fp32 as the paper)")
    parser.add_argument("--channels-last", action="store_const", const=True,
                        help="channels_last memory layout (default: off)")
    parser.add_argument("--compile", action="store_const", const=True,
                        help="torch.compile the net (default: off)")
    parser.add_argument("--cuda-graph", action="store_const", const=True,
                        help="replay each training step from a CUDA graph (CUDA, one process, "
                        "bf16 or fp32, not with --compile; default: off)")
    parser.add_argument("--seed", type=int, help=f"random seed (default {c.run.seed})")
    parser.add_argument("--tensorboard", action="store_const", const=True,
                        help="also log to RUN/tensorboard (needs the tensorboard package; "
                        "default: off)")
    parser.add_argument("--max-steps", type=int,
                        help="stop after this many steps in all (default: no cap)")
    parser.add_argument("--steps-per-epoch", type=int,
                        help="cap on batches per epoch (default: the whole training split)")
    parser.add_argument("--no-progress", dest="progress", action="store_const", const=False,
                        help="no progress display (default: a bar on a terminal, a plain "
                        "line every 30 s otherwise)")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config as JSON and exit")


def config_from_args(args: argparse.Namespace
                     ) -> tuple[Config, dict[str, Any] | None, frozenset[str]]:
    """Resolve the config: (checkpoint's config on --resume, else defaults), preset, flags;
    with the checkpoint read for --resume (read once, handed to `train`) and the keys this
    command line sets (`config.given_keys`: on --resume they replace the run's own)."""
    flags = {key: getattr(args, name) for name, key in FLAG_KEYS.items()
             if getattr(args, name, None) is not None}
    base, ckpt = None, None
    preset = args.preset
    if args.resume:
        resume_dir = Path(args.resume) if Path(args.resume).is_dir() else \
            Path(args.resume).parent
        flags.setdefault("run.out", str(resume_dir))
        if Path(flags["run.out"]).resolve() == resume_dir.resolve():
            check_run_folder_free(resume_dir)  # before reading its checkpoint
        unstarted = unstarted_run(args.resume)
        if unstarted is not None:
            distributed.print0(f"{args.resume}: its run stopped before its first checkpoint, "
                               "so it starts over from its config.json")
            base = from_dict(unstarted, where=f"{Path(args.resume) / 'config.json'}")
        else:
            ckpt = read_resumable(args.resume)
            base = from_dict(ckpt.get("config") or {}, where=f"{args.resume} config")
            flags["run.resume"] = str(args.resume)
    elif preset is None:
        preset = "paper"
    overrides = list(args.overrides)
    if flags.get("run.init_from") == "torchvision":  # its layout and input, unless --set says
        overrides = ["model.arch=alexnet-tv", "data.mean=torchvision"] + overrides
    config = resolve(preset, overrides, flags, base=base)
    given = given_keys(overrides, flags)
    if base is not None and config.run.init_from != base.run.init_from:
        raise UserError(f"--resume {args.resume} with --init-from {config.run.init_from}: "
                        "--resume continues a run, --init-from starts a new one from weights; "
                        "give one of them")
    return config, ckpt, given


def run(args: argparse.Namespace) -> int:
    """`alexnet train`: resolve the config, train, print where everything is."""
    config, ckpt, given = config_from_args(args)
    if args.print_config:
        print(json.dumps(to_dict(config), indent=2))
        return 0
    result = train(config, resume=ckpt, given=given)
    if distributed.is_main():
        top5 = f", top-5 {_pct(result['val_top5_error'])}" \
            if shows_top5(result.get("num_classes")) else ""
        print(f"done ({result['stopped']}): {plural(result['steps'], 'step')}; final val top-1 "
              f"error {_pct(result['val_top1_error'])}{top5}")
        if result["stopped"] == "max_steps" and ckpt is not None \
                and result["steps"] <= ckpt.get("global_step", 0):
            print(f"(nothing trained: the run's run.max_steps={config.run.max_steps}, recorded "
                  "in its config, was already reached; continue it with a higher --max-steps, "
                  "or --max-steps 0 for no limit)")
        files = RunFiles(Path(result["run_dir"]))
        print(f"run folder {files.root}: "
              f"{', '.join(p.name for p in files.own_files() if p.is_file())}")
    return 0


def _pct(v: Any) -> str:
    return f"{100 * v:.2f}%" if isinstance(v, int | float) else "-"

