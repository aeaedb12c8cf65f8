"""Run configs: TOML presets, --set overrides, validation, and the resolved config written back."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lmforge.errors import ConfigError, FormatError
from lmforge.training.config import config_from_dict, load_config, to_toml

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.toml"))
TRAINER_CONFIGS = [
    p
    for p in CONFIGS
    if p.name in ("shakespeare-char.toml", "shakespeare-bpe.toml", "stdlib-code.toml", "gpt2-124m.toml")
]


# (n_layer, n_head, n_embd) each shipped trainer config asks for (the gpt2 preset: GPT-2 small's 12/12/768)
SHIPPED_SIZES = {
    "shakespeare-char": (4, 4, 128),
    "shakespeare-bpe": (4, 4, 256),
    "stdlib-code": (6, 6, 384),
    "gpt2-124m": (12, 12, 768),
}


@pytest.mark.parametrize("path", TRAINER_CONFIGS, ids=lambda p: p.stem)
def test_shipped_configs_load_and_build_the_model_they_describe(path: Path) -> None:
    assert len(TRAINER_CONFIGS) == len(SHIPPED_SIZES)
    config = load_config(path)
    model_config = config.model.build(vocab_size=config.model.options.get("vocab_size", 512))
    assert (model_config.n_layer, model_config.n_head, model_config.n_embd) == SHIPPED_SIZES[path.stem]
    assert load_config(path, overrides=["train.max_iters=7"]).train.max_iters == 7


def test_overrides_are_parsed_as_toml_values() -> None:
    config = load_config(
        None,
        overrides=[
            "data.dir=data/x",
            "optim.lr=3e-4",
            "train.max_iters=100",
            "optim.schedule=linear",
            "model.bias=false",
            "model.n_layer=3",
            "optim.weight_decay=0",
            "train.out_dir=runs/a b",
        ],
    )
    assert config.optim.lr == 3e-4 and config.train.max_iters == 100 and config.optim.schedule == "linear"
    assert config.model.options == {"bias": False, "n_layer": 3}
    assert config.optim.weight_decay == 0.0 and isinstance(config.optim.weight_decay, float)
    assert config.train.out_dir == "runs/a b" and config.data.dir == "data/x"


def test_resolved_config_round_trips(tmp_path: Path) -> None:
    config = load_config(
        None,
        overrides=[
            "data.dir=d",
            "model.preset=tiny",
            "model.dropout=0.1",
            "optim.eps=1e-10",
            'train.out_dir=r"q',
        ],
    )
    path = tmp_path / "config.toml"
    path.write_text(to_toml(config))
    assert load_config(path) == config


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["optim.lr=-1"], "optim.lr=-1.0 is invalid; use a positive number"),
        (["optim.min_lr=1", "optim.lr=0.1"], "min_lr"),
        (["optim.name=adam"], "choose one of ('adamw', 'sgd')"),
        (["train.batch_size=0"], "train.batch_size=0 is invalid; use an integer >= 1"),
        (["train.precision=fp16"], "choose one of ('auto', 'bf16', 'fp32')"),
        (["train.max_iter=5"], "unknown key train.max_iter; known keys: out_dir, max_iters"),
        (["trian.max_iters=5"], "unknown section"),
        (["max_iters=5"], "use section.key=value"),
        (["train.compile=yes"], "use true or false"),
    ],
)
def test_invalid_values_name_the_field(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, overrides=["data.dir=d", *overrides])


def test_unknown_model_option_and_missing_file(tmp_path: Path) -> None:
    # [model] is checked against GPTConfig when the config is read, so the error can name its source
    with pytest.raises(ConfigError, match="^run.toml: unknown GPTConfig field.*n_layers"):
        config_from_dict({"data": {"dir": "d"}, "model": {"n_layers": 4}}, source="run.toml")
    with pytest.raises(FormatError, match="config file not found"):
        load_config(tmp_path / "nope.toml")
    (tmp_path / "bad.toml").write_text("[train\nmax_iters = 1")
    with pytest.raises(FormatError, match="not valid TOML"):
        load_config(tmp_path / "bad.toml")


def test_an_invalid_value_names_the_file_it_came_from(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text('[data]\ndir = "d"\n\n[optim]\nlr = -1.0\n')
    with pytest.raises(ConfigError, match=re.escape(f"{path}: optim.lr=-1.0 is invalid")):
        load_config(path)
    path.write_text('[data]\ndir = "d"\n')
    message = f"{path} with --set overrides: optim.lr=-1.0 is invalid"
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(path, overrides=["optim.lr=-1.0"])
