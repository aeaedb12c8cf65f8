"""Run configuration: typed sections (model / data / optim / train) read from TOML, with overrides.

`load_config(path, overrides=["optim.lr=3e-4", ...])` reads a preset from `configs/`, applies
`section.key=value` overrides (the value is parsed as a TOML value, falling back to a plain string, so
`train.max_iters=100`, `optim.schedule=linear` and `model.bias=false` all work), and validates every
field. `to_toml(config)` writes the resolved config back, so every run directory holds the exact
settings that produced it. TOML is read with the standard library's `tomllib`; the writer below is
deliberately tiny: it handles only what these sections contain (str, int, float, bool, flat tables).

The `[model]` section is not a copy of `GPTConfig`: it names an optional `preset` and passes every
other key to `GPTConfig.preset(preset, **keys)`, so the model file stays the one place that defines
(and validates) model options. `vocab_size` defaults to the dataset tokenizer's. `architecture = "bert"`
makes the same keys `BERTConfig`'s (a BERT trained by masked-LM: configs/bert-mlm-*.toml).

A recipe with a section of its own (e.g. `[arithmetic]`) declares a dataclass with that section beside
`model`/`optim`/`train` and passes it as `sections=`: the same reader, overrides and writer serve it.
"""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmforge.errors import ConfigError, check, is_int, is_number
from lmforge.fileio import read_toml

OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("cosine", "linear", "constant")
PRECISIONS = ("auto", "bf16", "fp32")
PARALLEL = ("auto", "none", "ddp", "fsdp")  # train.parallel; see training/distributed.py


ARCHITECTURES = ("gpt", "bert")


@dataclass
class ModelSection:
    # name of a GPTConfig (or BERTConfig) preset to start from; "" starts from the config's defaults
    preset: str = ""
    # every other key of [model] (n_layer, n_head, n_embd, block_size, dropout, ...) -> GPTConfig field
    options: dict[str, Any] = field(default_factory=dict)
    # "gpt" (causal LM, trained on next tokens) or "bert" (encoder, trained by masked-LM); then the options
    # are BERTConfig fields
    architecture: str = "gpt"

    def __post_init__(self) -> None:
        check(isinstance(self.preset, str), "model.preset", self.preset, "use a preset name")
        check(
            self.architecture in ARCHITECTURES,
            "model.architecture",
            self.architecture,
            f"choose one of {', '.join(ARCHITECTURES)}",
        )
        for key, value in self.options.items():
            check(
                isinstance(value, (str, int, float, bool)) or value is None,
                f"model.{key}",
                value,
                "model options are plain values",
            )
        self.build()  # GPTConfig's own validation, now, so that the error can name the config file

    def build(self, *, vocab_size: int | None = None) -> Any:
        """The `GPTConfig` (or `BERTConfig`) this section describes; `vocab_size` fills in when the section
        has none."""
        from lmforge.models import BERTConfig, GPTConfig

        config_class = BERTConfig if self.architecture == "bert" else GPTConfig
        options = dict(self.options)
        if vocab_size is not None:
            options.setdefault("vocab_size", vocab_size)
        if self.preset:
            return config_class.preset(self.preset, **options)
        return config_class.from_dict(options)


@dataclass
class DataSection:
    # prepared dataset dir (train.bin, val.bin, meta.json from `lmforge data prepare`), relative to the cwd
    dir: str = ""
    # split used for periodic evaluation and early stopping
    eval_split: str = "val"

    def __post_init__(self) -> None:
        check(
            isinstance(self.dir, str) and bool(self.dir),
            "data.dir",
            self.dir,
            "set it to a directory prepared by 'lmforge data prepare'",
        )
        check(self.eval_split in ("val", "test"), "data.eval_split", self.eval_split, "use 'val' or 'test'")


@dataclass
class OptimSection:
    # "adamw" (decoupled weight decay, param groups) or "sgd" (with momentum)
    name: str = "adamw"
    # peak learning rate, reached at the end of warmup
    lr: float = 6e-4
    # learning rate at the end of the decay (cosine / linear); ignored by "constant"
    min_lr: float = 6e-5
    # "cosine" | "linear" decay from lr to min_lr over decay_iters, or "constant" after warmup
    schedule: str = "cosine"
    # linear warmup from lr/warmup_iters to lr over this many steps; 0 disables warmup
    warmup_iters: int = 100
    # step at which the decay reaches min_lr; 0 means train.max_iters
    decay_iters: int = 0
    # decoupled weight decay (AdamW) or L2 (SGD), applied only to matrices (see optim.param_groups)
    weight_decay: float = 0.1
    # also decay embedding tables (GPT-2 did; most recipes since do not)
    decay_embeddings: bool = False
    # AdamW moment decay rates
    beta1: float = 0.9
    beta2: float = 0.95
    # AdamW denominator epsilon
    eps: float = 1e-8
    # SGD momentum
    momentum: float = 0.9
    # clip the global gradient norm to this value; 0 disables clipping (the norm is still logged)
    grad_clip: float = 1.0

    def __post_init__(self) -> None:
        s = "optim"
        check(self.name in OPTIMIZERS, f"{s}.name", self.name, f"choose one of {OPTIMIZERS}")
        check(self.schedule in SCHEDULES, f"{s}.schedule", self.schedule, f"choose one of {SCHEDULES}")
        check(_pos(self.lr), f"{s}.lr", self.lr, "use a positive number")
        check(
            _nonneg(self.min_lr) and self.min_lr <= self.lr,
            f"{s}.min_lr",
            self.min_lr,
            "use 0 <= min_lr <= lr",
        )
        check(is_int(self.warmup_iters, 0), f"{s}.warmup_iters", self.warmup_iters, "use an integer >= 0")
        check(is_int(self.decay_iters, 0), f"{s}.decay_iters", self.decay_iters, "use an integer >= 0")
        check(_nonneg(self.weight_decay), f"{s}.weight_decay", self.weight_decay, "use a number >= 0")
        check(
            isinstance(self.decay_embeddings, bool),
            f"{s}.decay_embeddings",
            self.decay_embeddings,
            "true/false",
        )
        for name in ("beta1", "beta2", "momentum"):
            value = getattr(self, name)
            check(_nonneg(value) and value < 1, f"{s}.{name}", value, "use a number in [0, 1)")
        check(_pos(self.eps), f"{s}.eps", self.eps, "use a positive number")
        check(
            _nonneg(self.grad_clip), f"{s}.grad_clip", self.grad_clip, "use a number >= 0 (0 = no clipping)"
        )


@dataclass
class TrainSection:
    # run directory: config.toml, metrics.csv, events/, plots/, checkpoints/
    out_dir: str = "runs/default"
    # optimizer steps to run (each step sees batch_size * grad_accum_steps sequences)
    max_iters: int = 1000
    # sequences per micro-batch (per rank)
    batch_size: int = 12
    # micro-batches whose gradients are summed into one optimizer step
    grad_accum_steps: int = 1
    # evaluate (and checkpoint) every this many steps, and after the last step; 0 = only at the end
    eval_interval: int = 250
    # batches per evaluation, of windows spread evenly over the eval split; 0 scores the whole split
    eval_batches: int = 20
    # print / write a metrics row every this many steps
    log_interval: int = 10
    # step checkpoints to keep (oldest deleted first); the best checkpoint is kept separately
    keep_last: int = 2
    # write checkpoints at all (off for benchmarks)
    checkpoint: bool = True
    # stop after this many evaluations without a lower eval loss; 0 disables early stopping
    early_stopping_patience: int = 0
    # stop after this many consecutive steps with a non-finite loss or gradient (each one is skipped)
    max_nonfinite_steps: int = 5
    # "auto" = bf16 autocast where the device has fast bf16 matmuls (CUDA with bf16, AVX-512-BF16/AMX
    # CPUs), else fp32; "bf16" forces autocast; "fp32" disables it. Weights and optimizer stay fp32.
    precision: str = "auto"
    # wrap the model in torch.compile (slow first steps; often faster afterwards)
    compile: bool = False
    # "auto" = cuda when available, else cpu; or an explicit torch device string (under torchrun each
    # process takes cuda:<LOCAL_RANK>)
    device: str = "auto"
    # under torchrun: "ddp" (every rank holds the model), "fsdp" (FSDP2: parameters, gradients and
    # optimizer states sharded over the ranks), "auto" = ddp; a single process always runs "none"
    parallel: str = "auto"
    # seconds a rank waits for the others in a collective before the job fails (a rank died or raised)
    dist_timeout: int = 600
    # seed of python/numpy/torch RNGs and of the batch order
    seed: int = 1337
    # matmul peak of this machine in TFLOP/s for the MFU estimate; 0 = measure it at start (~1 s)
    peak_tflops: float = 0.0
    # write TensorBoard events into out_dir/events
    tensorboard: bool = True
    # show a tqdm progress bar
    progress: bool = True

    def __post_init__(self) -> None:
        s = "train"
        check(
            isinstance(self.out_dir, str) and bool(self.out_dir), f"{s}.out_dir", self.out_dir, "use a path"
        )
        for name, low in (
            ("max_iters", 1),
            ("batch_size", 1),
            ("grad_accum_steps", 1),
            ("eval_interval", 0),
            ("eval_batches", 0),
            ("log_interval", 1),
            ("keep_last", 1),
            ("early_stopping_patience", 0),
            ("max_nonfinite_steps", 1),
        ):
            value = getattr(self, name)
            check(is_int(value, low), f"{s}.{name}", value, f"use an integer >= {low}")
        check(self.precision in PRECISIONS, f"{s}.precision", self.precision, f"choose one of {PRECISIONS}")
        check(self.parallel in PARALLEL, f"{s}.parallel", self.parallel, f"choose one of {PARALLEL}")
        check(
            is_int(self.dist_timeout, 1),
            f"{s}.dist_timeout",
            self.dist_timeout,
            "use an integer >= 1 (seconds)",
        )
        check(
            _nonneg(self.peak_tflops), f"{s}.peak_tflops", self.peak_tflops, "use a number >= 0 (0 = measure)"
        )
        check(
            is_int(self.seed, 0) and self.seed < 2**64, f"{s}.seed", self.seed, "use an integer in [0, 2**64)"
        )
        for name in ("compile", "checkpoint", "tensorboard", "progress"):
            check(
                isinstance(getattr(self, name), bool), f"{s}.{name}", getattr(self, name), "use true or false"
            )


@dataclass
class Config:
    """The sections of `lmforge train`: each field is one TOML table."""

    model: ModelSection
    data: DataSection
    optim: OptimSection
    train: TrainSection


def _nonneg(value: Any) -> bool:
    return is_number(value) and value >= 0


def _pos(value: Any) -> bool:
    return is_number(value) and value > 0


def _parse_value(text: str) -> Any:
    """'3e-4' -> 0.0003, 'true' -> True, '"x"' -> 'x', 'cosine' -> 'cosine' (bare words are strings)."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def section_from_dict(cls: type, values: Any, *, name: str, source: str = "config") -> Any:
    """Build one config section (a dataclass) from a parsed TOML table; unknown keys are errors.

    `[model]` is special: `architecture` and `preset` plus any GPTConfig (or BERTConfig) field, kept as
    `ModelSection.options`.
    """
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: [{name}] must be a table")
    values = dict(values)
    try:
        if cls is ModelSection:
            preset, architecture = values.pop("preset", ""), values.pop("architecture", "gpt")
            return ModelSection(preset=preset, options=values, architecture=architecture)
        known = {f.name: f for f in dataclasses.fields(cls)}
        for key, value in values.items():
            if key not in known:
                raise ConfigError(f"unknown key {name}.{key}; known keys: {', '.join(known)}")
            if known[key].type == "float" and isinstance(value, int) and not isinstance(value, bool):
                values[key] = float(value)  # `lr = 1` in TOML is an int; accept it for float fields
        return cls(**values)
    except ConfigError as error:  # a value the section's validation refused: say where it came from
        raise ConfigError(f"{source}: {error}") from None


def config_from_dict(raw: dict[str, Any], *, source: str = "config", sections: type = Config) -> Any:
    """Build and validate a config from nested dicts (parsed TOML); unknown sections and keys are errors.

    `sections` is the dataclass whose fields are the config's sections: `Config` for `lmforge train`; a
    recipe passes its own, which adds a section of its own beside model/optim/train (e.g. the arithmetic
    recipe's `[arithmetic]`). A key missing from `raw` takes the default of the sections dataclass's
    field when it has a `default_factory` (e.g. vision training's own optimizer defaults), else the
    section's own default.
    """
    types = typing.get_type_hints(sections)
    unknown = set(raw) - set(types)
    if unknown:
        raise ConfigError(f"{source}: unknown section(s) {sorted(unknown)}; known: {sorted(types)}")
    built = {}
    for f in dataclasses.fields(sections):
        values = raw.get(f.name, {})
        if f.default_factory is not dataclasses.MISSING and isinstance(values, dict):
            values = section_dict(f.default_factory()) | values  # this program's own defaults first
        built[f.name] = section_from_dict(types[f.name], values, name=f.name, source=source)
    return sections(**built)


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply `section.key=value` strings (values parsed as TOML, bare words as strings) to a raw config.

    Example: ["optim.lr=3e-4", "train.precision=fp32"] -> raw["optim"]["lr"] = 0.0003, ...
    """
    for item in overrides:
        key, sep, value = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or not name:
            raise ConfigError(f"--set {item!r}: use section.key=value, e.g. --set optim.lr=3e-4")
        raw.setdefault(section, {})[name] = _parse_value(value.strip())
    return raw


def load_config(path: str | Path | None, *, overrides: Sequence[str] = (), sections: type = Config) -> Any:
    """Read a TOML config (defaults when `path` is None) and apply `section.key=value` overrides."""
    raw: dict[str, Any] = {} if path is None else read_toml(path)
    apply_overrides(raw, overrides)
    source = str(path) if path is not None else "config"
    source = f"{source} with --set overrides" if overrides else source
    return config_from_dict(raw, source=source, sections=sections)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)  # repr round-trips floats exactly ('0.0003', '1e-08')
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise ConfigError(f"cannot write {value!r} ({type(value).__name__}) to TOML")


def section_dict(section: Any) -> dict[str, Any]:
    """A config section as a plain dict (the model's options flattened back beside `preset`)."""
    if isinstance(section, ModelSection):
        architecture = {"architecture": section.architecture} if section.architecture != "gpt" else {}
        return architecture | ({"preset": section.preset} if section.preset else {}) | dict(section.options)
    return dataclasses.asdict(section)


def to_toml(config: Any) -> str:
    """The config (any `sections` dataclass) as TOML text that `load_config` reads back to an equal one.

    None values are left out: the default applies when the file is read again.
    """
    lines = ["# resolved lmforge config: every setting of this run, defaults included"]
    for f in dataclasses.fields(config):
        lines.append(f"\n[{f.name}]")
        values = section_dict(getattr(config, f.name))
        lines += [f"{key} = {_toml_value(value)}" for key, value in values.items() if value is not None]
    return "\n".join(lines) + "\n"
