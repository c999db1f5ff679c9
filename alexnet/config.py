"""The typed run configuration: code defaults (the paper), a named preset, then overrides.

Layers, later wins: the dataclass defaults below (every number from alexnet/paper.py, so the
defaults ARE the paper's recipe), a preset (`paper`, `fast`, `demo`, `own` from
alexnet/configs/, or any TOML file with the same sections), then command-line overrides
`section.key=value`.
Unknown sections, keys and invalid choices raise a one-line UserError. The resolved config
is written with every run (config.json) and stored in every checkpoint (`to_dict`).
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alexnet import paper
from alexnet.errors import UserError

try:  # Python 3.11+; tomli is the same parser for 3.10 (a conditional dependency)
    import tomllib
except ImportError:  # pragma: no cover - Python 3.10 only
    import tomli as tomllib

PRESETS_DIR = Path(__file__).parent / "configs"
AMP_CHOICES = ("off", "bf16", "fp16")
LR_SCALING_CHOICES = ("none", "linear")
MEAN_CHOICES = ("image", "channel", "none", "torchvision")
VAL_SPLIT_CHOICES = ("auto", "val", "test", "none")
JPEG_DECODER_CHOICES = ("auto", "simplejpeg", "cv2", "torchvision", "pil")  # data/decode.py
AUGMENT_IN_CHOICES = ("auto", "readers", "consumer")  # loader.default_augment_in_readers
FLOAT32_MAX = 3.4028234663852886e38  # the optimizer scales float32 tensors by lr
SEED_MAX = 2**64 - 1  # the largest seed torch.manual_seed takes (an unsigned 64-bit integer)


@dataclass
class ModelConfig:
    """The network: `arch` and the keyword arguments of alexnet.model.AlexNet."""

    arch: str = "alexnet"  # "alexnet" (the paper) or "alexnet-tv" (torchvision's layout)
    columns: int = paper.COLUMNS
    activation: str = "relu"
    lrn: bool = True
    lrn_alpha_over_n: bool = False
    overlap_pool: bool = True
    dropout: float = paper.DROPOUT_P
    width: float = 1.0  # scales every layer; 1.0 is the paper (smaller for tests/CPU only)
    # Section 3.2: each column on its own GPU (cuda:0, cuda:1); needs two CUDA devices.
    split_columns: bool = False
    # Section 5: the biases of conv2, conv4, conv5, fc6, fc7 start at 1 (paper.BIAS_ONE_LAYERS).
    # Another value (Caffe's bvlc_alexnet: 0.1) is a documented deviation for small data sets
    # where 1 gives a flat loss (docs/training.md); it changes the initialisation only.
    init_bias: float = paper.INIT_BIAS_ONE


@dataclass
class DataConfig:
    """The store and the training augmentation (section 4.1)."""

    store: str = ""  # a folder made by `alexnet prepare` (train + val or test splits)
    crop: int = paper.CROP_SIZE
    flip: bool = True
    pca: bool = True
    pca_scale: float = 1.0  # multiplies the paper's alpha std (paper.PCA_ALPHA_STD)
    # subtract the mean image (the paper), the channel mean, or nothing; "torchvision":
    # (x / 255 - mean) / std with torchvision's ImageNet mean/std, as its weights expect
    mean: str = "image"
    val_split: str = "auto"  # auto: `val` if the store has it, else `test` (with a notice)


@dataclass
class OptimConfig:
    """The update rule and the schedule (section 5)."""

    lr: float = paper.BASE_LR
    momentum: float = paper.MOMENTUM
    weight_decay: float = paper.WEIGHT_DECAY
    bias_decay: bool = False  # cuda-convnet/Caffe: no weight decay on biases
    batch_size: int = paper.BATCH_SIZE  # the GLOBAL batch (all ranks together)
    # linear: lr * batch_size / base_batch (Goyal et al. 2017) for batches above the paper's
    lr_scaling: str = "none"
    base_batch: int = paper.BATCH_SIZE
    epochs: int = paper.EPOCHS
    lr_factor: float = paper.LR_DROP_FACTOR
    patience: int = 3  # epochs without improvement before lr is divided (our choice)
    threshold: float = 0.001  # an absolute drop of 0.1 points of val error counts as improving
    max_drops: int = paper.MAX_LR_DROPS


@dataclass
class RunConfig:
    """Where, how fast and how long: none of these change the paper's mathematics."""

    out: str = "runs/train"
    seed: int = 0
    device: str = "auto"  # auto (cuda if available), cpu, cuda, cuda:N
    amp: str = "off"  # off (fp32, the paper), bf16 autocast, fp16 autocast + GradScaler
    channels_last: bool = False
    compile: bool = False
    # replay each training step from a CUDA graph (alexnet/training/graphs.py): CUDA, one
    # process and one device, bf16 or fp32 (not fp16's loss scaling), not with compile
    cuda_graph: bool = False
    prefetch: int = -1  # batches the loader reads ahead (-1: loader.default_prefetch)
    # jpeg stores (docs/loading.md): the CPU decoder (auto: simplejpeg, cv2, torchvision, pil,
    # the first installed), its threads per batch (0: loader.default_decode_threads) and the
    # share of each batch the GPU decodes on a CUDA device (-1: loader.default_gpu_decode)
    jpeg_decoder: str = "auto"
    decode_threads: int = 0
    gpu_decode: float = -1.0
    # who augments the training batches: the read-ahead threads or the training loop's thread
    # (auto: loader.default_augment_in_readers); the batches are the same either way
    augment_in: str = "auto"
    eval_batch_size: int = 256
    val_every: int = 1  # validate every N epochs (the schedule steps on each validation)
    val_limit: int = 0  # validate on the first N images only (0: the whole split)
    steps_per_epoch: int = 0  # cap on batches per epoch (0: the whole training split)
    max_steps: int = 0  # stop after this many optimizer steps in all (0: no cap)
    time_limit: float = 0.0  # stop (and checkpoint) after this many seconds of training
    save_best: bool = True  # also keep best.pt (lowest val top-1 error)
    progress: bool = True  # a bar on a terminal, plain lines with ETA otherwise
    log_every: int = 25  # steps between step rows (loss, lr, images/s) in steps.jsonl (0: off)
    # steps after which an error still at chance is reported with advice (0: never check)
    chance_steps: int = 100
    # start from these weights: a checkpoint/weights file, or "torchvision" (its ImageNet
    # weights, arch alexnet-tv); fc8 is new when the class count differs (fine-tuning)
    init_from: str = ""
    tensorboard: bool = False  # needs the `tensorboard` package
    resume: str = ""  # a run folder or checkpoint to continue exactly


@dataclass
class Config:
    """The whole resolved configuration of one run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)


SECTIONS = {f.name: f.type for f in dataclasses.fields(Config)}


def to_dict(config: Config) -> dict[str, dict[str, Any]]:
    """The config as nested plain dicts (JSON- and checkpoint-safe)."""
    return dataclasses.asdict(config)


def from_dict(data: dict[str, Any], base: Config | None = None, where: str = "config") -> Config:
    """Apply nested `data` onto `base` (default: the paper), checking every key and type."""
    base = base if base is not None else Config()
    config = Config(**{s: dataclasses.replace(getattr(base, s)) for s in SECTIONS})
    if not isinstance(data, dict):
        raise UserError(f"{where}: expected sections {', '.join(SECTIONS)}")
    for section, values in data.items():
        if section not in SECTIONS:
            raise UserError(f"{where}: unknown section {section!r}; "
                            f"choose from {', '.join(SECTIONS)}")
        if not isinstance(values, dict):
            raise UserError(f"{where}: [{section}] must be a table of key = value")
        target = getattr(config, section)
        for key, value in values.items():
            _set(target, section, key, value, where)
    return config


def _fields(section_obj: Any) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(section_obj)}


def _set(target: Any, section: str, key: str, value: Any, where: str) -> None:
    """Set one typed field, converting strings from the command line."""
    fields = _fields(target)
    if key not in fields:
        raise UserError(f"{where}: unknown key {section}.{key}; "
                        f"known: {', '.join(sorted(fields))}")
    kind = type(getattr(target, key))
    setattr(target, key, _convert(value, kind, f"{section}.{key}", where))


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def _convert(value: Any, kind: type, name: str, where: str) -> Any:
    """Coerce `value` to the field's type (bool, int, float, str)."""
    bad = UserError(f"{where}: {name} must be {kind.__name__}, got {value!r}")
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        raise bad
    if kind is int:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int):
            return value
        try:
            return int(str(value))
        except ValueError:
            raise bad from None
    if kind is float:
        if isinstance(value, bool):
            raise bad
        try:
            return float(value)
        except (TypeError, ValueError):
            raise bad from None
    if isinstance(value, bool | dict | list):
        raise bad
    return str(value)


def preset_names() -> list[str]:
    """The names of the presets in alexnet/configs/, sorted."""
    return sorted(p.stem for p in PRESETS_DIR.glob("*.toml"))


def load_preset(name: str) -> dict[str, Any]:
    """A preset's TOML tables: a name from alexnet/configs/ or a path to a .toml file."""
    path = Path(name)
    toml = path.suffix.lower() == ".toml"  # Mine.TOML is a file too
    if toml and not path.is_file():  # a file was meant, not a preset name
        what = "is a folder" if path.is_dir() else "no such file"
        raise UserError(f"--preset {name}: {what}; give an existing .toml file or a preset "
                        f"name ({', '.join(preset_names())})")
    if not toml:
        path = PRESETS_DIR / f"{name}.toml"
    if not path.is_file():
        raise UserError(f"unknown preset {name!r}; choose from {', '.join(preset_names())} or "
                        "give a .toml file")
    try:
        return tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not valid TOML ({err})") from None


def parse_overrides(items: list[str]) -> dict[str, dict[str, str]]:
    """`["optim.lr=0.02", "run.amp=bf16"]` -> {"optim": {"lr": "0.02"}, "run": {...}}."""
    nested: dict[str, dict[str, str]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or not name:
            raise UserError(f"--set {item!r}: write SECTION.KEY=VALUE, e.g. optim.lr=0.02")
        nested.setdefault(section, {})[name] = value.strip()
    return nested


def flag_values(flags: dict[str, Any]) -> dict[str, dict[str, str]]:
    """`{"run.out": "r 1 "}` -> {"run": {"out": "r 1 "}}: a plain option's value as given, spaces
    included (a path may end in one; only `--set` items are SECTION.KEY=VALUE text to trim)."""
    nested: dict[str, dict[str, str]] = {}
    for key, value in flags.items():
        if value is not None:
            section, _, name = key.partition(".")
            nested.setdefault(section, {})[name] = str(value)
    return nested


def given_keys(overrides: list[str] | None, flags: dict[str, Any] | None) -> frozenset[str]:
    """The SECTION.KEY names that `--set` items and plain flags set: on --resume, what the
    user asked for anew, even where it equals the run's own value (a preset is a bundle of
    values, not a request to reset each)."""
    tables = [parse_overrides(overrides or []), flag_values(flags or {})]
    return frozenset(f"{section}.{key}" for table in tables
                     for section, values in table.items() if isinstance(values, dict)
                     for key in values)


def resolve(preset: str | None = "paper", overrides: list[str] | None = None,
            flags: dict[str, Any] | None = None, base: Config | None = None) -> Config:
    """Defaults (or `base`), then `preset`, then `--set` overrides, then plain flags; checked."""
    config = base if base is not None else Config()
    if preset:
        config = from_dict(load_preset(preset), config, where=f"preset {preset}")
    config = from_dict(parse_overrides(overrides or []), config, where="--set")
    if flags:
        config = from_dict(flag_values(flags), config, where="option")
    validate(config)
    return config


def validate(config: Config) -> Config:
    """Reject values no run can use, each with a one-line message naming the key."""
    m, d, o, r = config.model, config.data, config.optim, config.run

    def need(ok: bool, message: str) -> None:
        if not ok:
            raise UserError(message)

    from alexnet.model import ARCHS, min_crop  # the model owns its architectures and sizes

    need(m.arch in ARCHS, f"model.arch {m.arch!r}: choose from {', '.join(ARCHS)}")
    need(m.activation in ("relu", "tanh"), f"model.activation {m.activation!r}: relu or tanh")
    need(m.columns in (1, 2), f"model.columns {m.columns}: 1 or 2")
    need(not m.split_columns or (m.columns == 2 and m.arch == "alexnet"),
         f"model.split_columns puts each of the paper net's two columns on its own GPU; "
         f"drop it for model.arch={m.arch} with model.columns={m.columns}")
    for key, value in paper_only_settings(m).items():
        need(False, f"model.{key}={value!r}: model.arch={m.arch} takes only "
             f"{', '.join('model.' + k for k in TV_MODEL_KWARGS)} (its layout is torchvision's, "
             "fixed); drop that setting or use model.arch=alexnet")
    need(0 < m.width, f"model.width {m.width}: must be > 0")
    need(0 <= m.dropout < 1, f"model.dropout {m.dropout}: must be in [0, 1)")
    smallest = min_crop(m.overlap_pool)
    need(d.crop >= smallest, f"data.crop {d.crop}: the net needs crops of at least {smallest} "
         "pixels (conv1's stride and three poolings); prepare a store of that size or larger")
    need(d.mean in MEAN_CHOICES, f"data.mean {d.mean!r}: choose from {', '.join(MEAN_CHOICES)}")
    need(d.val_split in VAL_SPLIT_CHOICES,
         f"data.val_split {d.val_split!r}: choose from {', '.join(VAL_SPLIT_CHOICES)}")
    need(d.pca_scale >= 0, f"data.pca_scale {d.pca_scale}: must be >= 0")
    for section in SECTIONS:
        for key, value in dataclasses.asdict(getattr(config, section)).items():
            need(not isinstance(value, float) or math.isfinite(value),
                 f"{section}.{key} {value}: must be a finite number")
    need(o.lr > 0, f"optim.lr {o.lr}: must be > 0")
    need(o.lr * max(1.0, o.weight_decay) <= FLOAT32_MAX,
         f"optim.lr {o.lr:g}: must be at most {FLOAT32_MAX:.3g} (a float32 step size)")
    need(0 <= o.momentum < 1, f"optim.momentum {o.momentum}: must be in [0, 1)")
    need(o.weight_decay >= 0, f"optim.weight_decay {o.weight_decay}: must be >= 0")
    need(o.batch_size >= 1, f"optim.batch_size {o.batch_size}: must be at least 1")
    need(o.base_batch >= 1, f"optim.base_batch {o.base_batch}: must be at least 1")
    need(o.lr_scaling in LR_SCALING_CHOICES,
         f"optim.lr_scaling {o.lr_scaling!r}: choose from {', '.join(LR_SCALING_CHOICES)}")
    need(o.epochs >= 1, f"optim.epochs {o.epochs}: must be at least 1")
    need(o.lr_factor > 1, f"optim.lr_factor {o.lr_factor}: must be > 1")
    need(o.patience >= 0, f"optim.patience {o.patience}: must be >= 0")
    need(o.max_drops >= 0, f"optim.max_drops {o.max_drops}: must be >= 0")
    need(r.amp in AMP_CHOICES, f"run.amp {r.amp!r}: choose from {', '.join(AMP_CHOICES)}")
    need(r.device == "auto" or r.device == "cpu" or r.device.startswith("cuda"),
         f"run.device {r.device!r}: auto, cpu, cuda or cuda:N")
    for name in ("seed", "decode_threads", "val_limit", "steps_per_epoch", "max_steps",
                 "log_every", "chance_steps"):
        need(getattr(r, name) >= 0, f"run.{name} {getattr(r, name)}: must be >= 0")
    need(r.seed <= SEED_MAX, f"run.seed {r.seed}: must be at most {SEED_MAX} (a 64-bit seed)")
    need(r.out != "", "run.out (--out): empty, which would mean the current folder; give a "
         "run folder")
    need(r.prefetch >= -1, f"run.prefetch {r.prefetch}: must be >= 0, or -1 (auto)")
    need(r.gpu_decode == -1 or 0 <= r.gpu_decode <= 1,
         f"run.gpu_decode {r.gpu_decode}: a share in 0..1, or -1 (auto)")
    need(r.jpeg_decoder in JPEG_DECODER_CHOICES, f"run.jpeg_decoder {r.jpeg_decoder!r}: "
         f"choose from {', '.join(JPEG_DECODER_CHOICES)}")
    need(r.augment_in in AUGMENT_IN_CHOICES, f"run.augment_in {r.augment_in!r}: "
         f"choose from {', '.join(AUGMENT_IN_CHOICES)}")
    need(not (r.cuda_graph and r.compile), "run.cuda_graph replays the eager step from a "
         "CUDA graph; set it or run.compile, not both")
    need(not (r.cuda_graph and r.amp == "fp16"), "run.cuda_graph: fp16's loss scaling reads "
         "its overflow check on the host, which a CUDA graph cannot; use run.amp=bf16")
    need(r.val_every >= 1, f"run.val_every {r.val_every}: must be at least 1")
    need(r.eval_batch_size >= 1, f"run.eval_batch_size {r.eval_batch_size}: must be >= 1")
    need(r.time_limit >= 0, f"run.time_limit {r.time_limit}: must be >= 0")
    return config


def scaled_lr(config: Config) -> float:
    """The starting lr: the paper's, or linearly scaled by batch_size / base_batch."""
    o = config.optim
    if o.lr_scaling == "linear":
        return o.lr * o.batch_size / o.base_batch
    return o.lr


TV_MODEL_KWARGS = ("dropout", "init_bias")  # the torchvision layout has no other switches


def paper_only_settings(model: ModelConfig) -> dict[str, Any]:
    """The model settings, off their defaults, that `model.arch` does not take (none for the
    paper net): torchvision's layout would ignore them while config.json records them."""
    if model.arch == "alexnet":
        return {}
    default = ModelConfig()
    return {f.name: getattr(model, f.name) for f in dataclasses.fields(model)
            if f.name not in ("arch", *TV_MODEL_KWARGS)
            and getattr(model, f.name) != getattr(default, f.name)}


def model_kwargs(config: Config) -> dict[str, Any]:
    """The keyword arguments of `build_model(config.model.arch, ...)` (without num_classes):
    the model section's switches and the crop the net is sized for (data.crop)."""
    m = dataclasses.asdict(config.model)
    arch = m.pop("arch")
    m.pop("split_columns")  # placement, not the network
    if arch != "alexnet":
        return {key: m[key] for key in TV_MODEL_KWARGS}
    return {**m, "crop": config.data.crop}


def write_json(config: Config, path: str | os.PathLike) -> Path:
    """Write the resolved config next to a run (config.json)."""
    from alexnet.atomic import write_json as write_json_file

    return write_json_file(path, to_dict(config), indent=2)
