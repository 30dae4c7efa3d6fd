"""Every config composes with Hydra's compose API and builds a model; bad keys are errors."""

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from wavedil import WaveNet
from wavedil.config import CONF_DIR, compose, model_config
from wavedil.train_config import OptimConfig, TrainerConfig

MODELS = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))
DATA = sorted(p.stem for p in (CONF_DIR / "data").glob("*.yaml"))
EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))


def test_groups_are_present():
    assert {"tiny", "small", "base", "ref30"} <= set(MODELS)
    assert {"speech8k", "folder", "ljspeech", "vctk"} <= set(DATA)
    assert "speech8k" in EXPERIMENTS


@pytest.mark.parametrize("name", MODELS)
def test_every_model_config_builds(name):
    cfg = compose([f"model={name}"])
    net = WaveNet(model_config(cfg.model))
    m = cfg.model
    assert len(net.stack.layers) == m.layers_per_stack * m.stacks
    assert (net.stack.residual_channels, net.stack.skip_channels) == (m.residual_channels, m.skip_channels)


def test_ref30_is_the_reference():
    net = WaveNet(model_config(compose(["model=ref30"]).model))
    assert net.receptive_field == 3070 and len(net.stack.layers) == 30


@pytest.mark.parametrize("name", DATA)
def test_every_data_config_composes(name):
    cfg = compose([f"data={name}", "data.root=/somewhere"])
    assert cfg.data.sample_rate > 0 and cfg.data.segment_length > 1


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_composes_and_builds(name):
    cfg = compose([f"experiment={name}"])
    assert cfg.name == name
    model = OmegaConf.to_container(cfg.model, resolve=True)
    # what training fills in from the data: the vocoder's sample rate, the corpus's speakers
    if model["mel"] is not None:
        model["mel"]["sample_rate"] = cfg.data.sample_rate
        assert cfg.data.segment_length % model["mel"]["hop_length"] == 0
    if model["global_cond_channels"]:
        model.update(speakers=["p225", "p226"], global_cond_classes=2)
    net = WaveNet(model_config(model))
    assert (net.upsampler is not None) == ("vocoder" in name)
    # the typed trainer and optimiser configs accept every experiment's settings
    trainer = TrainerConfig.from_dict(OmegaConf.to_container(cfg.trainer, resolve=True))
    OptimConfig.from_dict(OmegaConf.to_container(cfg.optim, resolve=True))
    assert trainer.max_steps == cfg.trainer.max_steps


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_debug_trainer_is_a_smoke_run_of_every_experiment(name):
    # the experiment's own trainer settings (e.g. max_steps=3500) come after the trainer group:
    # trainer=debug's settings are applied after the experiment, the rest of the experiment stays
    plain, smoke = compose([f"experiment={name}"]), compose([f"experiment={name}", "trainer=debug"])
    assert plain.trainer.max_steps > 6 and smoke.trainer.max_steps == 6
    assert (smoke.trainer.ckpt_every, smoke.trainer.valid_every, smoke.trainer.progress) == (3, 3, False)
    assert smoke.trainer.threads == plain.trainer.threads and smoke.trainer.max_time == plain.trainer.max_time
    assert smoke.model == plain.model and smoke.data == plain.data
    # a command-line override still wins over the smoke run's settings
    assert compose([f"experiment={name}", "trainer=debug", "trainer.max_steps=2"]).trainer.max_steps == 2


def test_overrides_and_bundled_resolver():
    cfg = compose(["model=tiny", "optim.lr=0.5", "trainer=debug"])
    assert cfg.optim.lr == 0.5 and cfg.trainer.max_steps == 6 and cfg.model.residual_channels == 16
    assert Path(cfg.data.root).is_dir() and Path(cfg.data.root).name == "speech8k"


def test_wavedil_data_without_the_folder_falls_back_with_a_warning(tmp_path, monkeypatch, caplog):
    """``$WAVEDIL_DATA/<name>`` comes first; a WAVEDIL_DATA without it (or mistyped) falls back to
    the checkout's data with a warning naming both, once per setting (silent before)."""
    from wavedil.config import _warn_data_fallback, bundled_data

    checkout = Path(bundled_data("speech8k"))
    (tmp_path / "own" / "speech8k").mkdir(parents=True)
    monkeypatch.setenv("WAVEDIL_DATA", str(tmp_path / "own"))
    with caplog.at_level("WARNING", logger="wavedil.config"):
        assert bundled_data("speech8k") == str(tmp_path / "own" / "speech8k")
        assert caplog.records == []
        assert bundled_data("pretrained") == str(checkout.parent / "pretrained")
        bundled_data("pretrained")
        monkeypatch.setenv("WAVEDIL_DATA", str(tmp_path / "typo"))
        assert bundled_data("speech8k") == str(checkout)
    _warn_data_fallback.cache_clear()
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        f"WAVEDIL_DATA={tmp_path / 'own'} has no 'pretrained' folder; using {checkout.parent / 'pretrained'} "
        "instead (set WAVEDIL_DATA to the folder that holds 'pretrained', or unset it)",
        f"WAVEDIL_DATA={tmp_path / 'typo'} does not exist; using {checkout} instead (set WAVEDIL_DATA to the "
        "folder that holds 'speech8k', or unset it)",
    ]


def test_unknown_key_is_an_error():
    with pytest.raises(Exception, match="nonsense"):
        compose(["model.nonsense=3"])
    with pytest.raises(ValueError, match="unknown WaveNet model options"):
        model_config({**OmegaConf.to_container(compose().model), "extra": 1})
