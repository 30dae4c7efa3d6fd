"""Typed trainer/optimiser settings: defaults equal the YAML, unknown keys and bad values are errors."""

import dataclasses

import pytest
from omegaconf import OmegaConf

from wavedil.config import CONF_DIR, compose, to_plain
from wavedil.train_config import OptimConfig, TrainerConfig, parse_duration


@pytest.mark.parametrize("cls, yaml", [(TrainerConfig, "trainer/default.yaml"), (OptimConfig, "optim/adamw.yaml")])
def test_every_default_equals_the_yaml(cls, yaml):
    from_yaml = OmegaConf.to_container(OmegaConf.load(CONF_DIR / yaml), resolve=True)
    defaults = cls.from_dict({})
    assert sorted(from_yaml) == sorted(f.name for f in dataclasses.fields(cls)), "a key is in one place only"
    assert cls.from_dict(from_yaml) == defaults
    for key, value in from_yaml.items():
        got = getattr(defaults, key)
        assert (list(got) if isinstance(got, tuple) else got) == value, key


def test_the_composed_groups_build():
    cfg = compose(["model=tiny", "trainer=debug", "optim=adam"])
    assert TrainerConfig.from_dict(to_plain(cfg.trainer)).max_steps == 6
    assert OptimConfig.from_dict(to_plain(cfg.optim)).name == "adam"


def test_unknown_keys_are_named_with_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown trainer option\(s\) \['max_stepz'\]; valid ones are .*'max_steps'"):
        TrainerConfig.from_dict({"max_stepz": 3})
    with pytest.raises(ValueError, match=r"unknown optim option\(s\) \['learning_rate'\].*'lr'"):
        OptimConfig.from_dict({"learning_rate": 3})


@pytest.mark.parametrize(
    "cls, kwargs, match",
    [
        (TrainerConfig, {"precision": "fp8"}, r"trainer.precision must be one of 32\|bf16\|bf16-emulated\|16\|auto, got 'fp8'"),
        (TrainerConfig, {"max_steps": 0}, "trainer.max_steps must be an integer >= 1, got 0"),
        (TrainerConfig, {"keep_every": -500}, "trainer.keep_every must be an integer >= 0, got -500"),
        (TrainerConfig, {"ema_decay": 1.0}, r"ema_decay must be in \[0, 1\)"),
        (TrainerConfig, {"max_time": "1h"}, "trainer.max_time='1h' is not a duration; use null, seconds"),
        (TrainerConfig, {"max_time": "00:61:00"}, "minutes and seconds must be < 60"),
        (TrainerConfig, {"max_time": -5}, "must be a positive duration"),
        (OptimConfig, {"schedule": "linear"}, "optim.schedule must be 'cosine' or 'constant', got 'linear'"),
        (OptimConfig, {"name": "sgd"}, "optim.name must be 'adam' or 'adamw', got 'sgd'"),
        (OptimConfig, {"betas": [0.9]}, r"optim.betas must be two numbers in \[0, 1\), got \[0.9\]"),
    ],
)
def test_bad_values_are_clear_errors(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls.from_dict(kwargs)


def test_precision_aliases_and_durations():
    assert TrainerConfig.from_dict({"precision": 32}).precision == "32"
    assert TrainerConfig.from_dict({"precision": "bfloat16"}).precision == "bf16"
    assert TrainerConfig.from_dict({"precision": "auto"}).precision == "auto"
    assert parse_duration("00:00:03") == 3.0 and parse_duration("02:00:00:00") == 172800.0
    assert parse_duration("2.5") == 2.5 and parse_duration(7) == 7.0 and parse_duration("null") is None
    assert TrainerConfig.from_dict({"max_time": "00:10:00"}).max_time == 600.0
