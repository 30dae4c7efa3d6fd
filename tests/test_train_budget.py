"""Training to a time budget (trainer.max_time) and the measured precision choice (trainer.precision=auto)."""

import logging

import pytest
import torch

import wavedil.precision as precision_mod
from wavedil.checkpoint import list_checkpoints, load_checkpoint
from wavedil.config import compose
from wavedil.train import TrainingError, train
from wavedil.training_utils import lr_factor

BASE = ["model=tiny", "trainer=debug", "trainer.sample_every=0", "data.segment_length=200", "data.batch_size=2",
        "data.valid_segments=2", "trainer.ema_decay=0", "trainer.device=cpu", "trainer.threads=1"]
BUDGET = BASE + ["trainer.max_steps=100000000", "trainer.valid_every=100000", "trainer.ckpt_every=100000",
                 "optim.warmup_steps=2", "optim.min_lr_ratio=0.1"]


def test_time_based_cosine_follows_the_fraction_of_the_budget():
    kw = dict(warmup_steps=10, max_steps=10**9, schedule="cosine", min_lr_ratio=0.1)
    assert lr_factor(4, time_fraction=0.9, **kw) == 0.5  # warm-up is in steps
    assert lr_factor(50, time_fraction=0.0, **kw) == 1.0
    assert lr_factor(50, time_fraction=0.5, **kw) == pytest.approx(0.55)
    assert lr_factor(50, time_fraction=1.0, **kw) == lr_factor(50, time_fraction=3.0, **kw) == pytest.approx(0.1)


def test_max_time_stops_on_time_with_the_schedule_at_its_end(tmp_path, capsys):
    run_dir = tmp_path / "run"
    summary = train(compose(BUDGET + ["trainer.max_time=3"]), run_dir)
    out = capsys.readouterr().out
    assert "time budget trainer.max_time=3 s reached at step" in out
    assert 3 <= summary["elapsed_seconds"] < 15, summary  # on time: a step, a validation and a save late at most
    assert 2 < summary["step"] < 100000000
    ckpt = load_checkpoint(list_checkpoints(run_dir / "checkpoints")[0])
    assert ckpt["step"] == summary["step"] and ckpt["elapsed_seconds"] >= 3
    sched = ckpt["scheduler"]
    assert sched["time_fraction"] == 1.0 and sched["max_time"] == 3.0
    assert sched["lr_factor"] == pytest.approx(0.1)  # the decay finished at the budget
    assert summary["valid_bits"] == summary["valid_bits"]  # a final validation ran (not NaN)

    # Resuming with the budget used up does nothing; a larger budget continues the same clock.
    again = train(compose(BUDGET + ["trainer.max_time=3", "trainer.resume=true"]), run_dir)
    assert again["step"] == summary["step"] and "is used up" in capsys.readouterr().out
    more = train(compose(BUDGET + ["trainer.max_time=00:00:05", "trainer.resume=true"]), run_dir)
    assert more["step"] > summary["step"] and 5 <= more["elapsed_seconds"] < 15
    last = load_checkpoint(list_checkpoints(run_dir / "checkpoints")[0])
    assert last["scheduler"]["lr_factor"] == pytest.approx(0.1) and last["elapsed_seconds"] >= 5


def test_a_bad_max_time_is_a_clear_error(tmp_path):
    with pytest.raises(TrainingError, match=r"trainer.max_time='soon' is not a duration; use null, seconds as a number"):
        train(compose(BASE + ["trainer.max_time=soon"]), tmp_path / "run")


def test_precision_auto_measures_logs_and_leaves_the_run_untouched(tmp_path, capsys, caplog):
    caplog.set_level(logging.INFO, logger="wavedil.train")
    auto = train(compose(BASE + ["trainer.precision=auto"]), tmp_path / "auto")
    out = capsys.readouterr().out
    assert auto["precision"] in ("32", "bf16")
    assert "trainer.precision=auto: using" in out and "float32" in out and "bf16 autocast" in out
    assert "steps/s" in out and f"chose {auto['precision']}" in caplog.text
    if auto["precision"] == "32":  # measuring on a copy changed nothing: the same weights as a plain fp32 run
        plain = train(compose(BASE + ["trainer.precision=32"]), tmp_path / "plain")
        assert plain["params_sha256"] == auto["params_sha256"]


def test_choose_precision_picks_bf16_only_when_clearly_faster(monkeypatch):
    rates = {"32": 10.0, "bf16": 10.5}
    monkeypatch.setattr(precision_mod, "measure_steps_per_second", lambda *a, **k: rates[a[5]])
    args = (None, None, None, {}, torch.device("cpu"))
    pick, reason = precision_mod.choose_precision(*args)
    assert pick == "32" and "float32 10 steps/s, bf16 autocast 10.5 steps/s (1.05x" in reason
    rates["bf16"] = 11.5
    assert precision_mod.choose_precision(*args)[0] == "bf16"


def test_bf16_on_a_cpu_without_native_bf16_warns_with_the_flags(monkeypatch, capsys, caplog):
    monkeypatch.setattr(precision_mod, "cpu_has_native_bf16", lambda: False)
    monkeypatch.setattr(precision_mod, "cpu_flags", lambda: {"avx2", "fma"})
    precision_mod.warn_emulated_bf16(torch.device("cpu"))
    out = capsys.readouterr().out
    assert out.startswith("warning: trainer.precision=bf16 on a CPU without native bfloat16")
    assert "neither avx512_bf16 nor amx_bf16" in out and "6x to 11x as long as in float32" in out
    monkeypatch.setattr(precision_mod, "cpu_has_native_bf16", lambda: True)
    precision_mod.warn_emulated_bf16(torch.device("cpu"))
    assert capsys.readouterr().out == ""
