"""Model presets are overlays: ref30 states every key (equal to WaveNetConfig's defaults), the
others only what they change, and each composes to a model that builds."""

from __future__ import annotations

import dataclasses

import pytest
from omegaconf import OmegaConf

from wavedil import WaveNet
from wavedil.config import CONF_DIR, compose, model_config, to_plain
from wavedil.model import WaveNetConfig

PRESETS = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))


def test_the_base_preset_equals_the_config_defaults():
    base = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "model" / "ref30.yaml"))
    defaults = {f.name: f.default for f in dataclasses.fields(WaveNetConfig) if f.name not in ("speakers",)}
    assert base == defaults


@pytest.mark.parametrize("name", [p for p in PRESETS if p != "ref30"])
def test_other_presets_state_only_what_differs(name):
    raw = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "model" / f"{name}.yaml"))
    assert raw.pop("defaults") == ["ref30", "_self_"]
    base = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "model" / "ref30.yaml"))
    assert raw and all(base[k] != v for k, v in raw.items()), raw


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_composes_to_a_model(name):
    cfg = model_config(to_plain(compose([f"model={name}"]))["model"])
    assert WaveNet(cfg).receptive_field == {"tiny": 64, "small": 511, "base": 2047, "ref30": 3070}[name]
