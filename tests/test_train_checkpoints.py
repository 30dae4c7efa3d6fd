"""Checkpoint lookup, format check, random states, and the two faults a run must report well:
a full disk while checkpointing and a fatal data error mid-run."""

import errno
import random

import numpy as np
import pytest
import torch

import wavedil.checkpoint as ckpt_mod
import wavedil.train as train_mod
from wavedil.checkpoint import (
    CheckpointError,
    list_checkpoints,
    load_checkpoint,
    open_checkpoint,
    resolve_checkpoint,
    save_checkpoint,
    step_from_name,
)
from wavedil.config import compose
from wavedil.data import CorpusError
from wavedil.train import TrainingError, setup, train
from wavedil.training_utils import rng_state, set_rng_state

BASE = ["model=tiny", "trainer=debug", "trainer.sample_every=0", "data.segment_length=200", "data.batch_size=2",
        "data.valid_segments=2", "trainer.valid_every=1000", "trainer.ema_decay=0", "trainer.device=cpu"]


def _ckpt(step: int, **extra) -> dict:
    return {"format": 1, "model": {"w": torch.ones(2)}, "model_config": {}, "step": step, **extra}


def test_resolve_checkpoint_file_run_folder_and_checkpoints_folder(tmp_path):
    folder = tmp_path / "run" / "checkpoints"
    save_checkpoint(_ckpt(1), folder / "step_00000001.pt")
    save_checkpoint(_ckpt(20), folder / "step_00000020.pt")
    newest = folder / "step_00000020.pt"
    assert resolve_checkpoint(tmp_path / "run") == newest
    assert resolve_checkpoint(folder) == newest
    assert resolve_checkpoint(folder / "step_00000001.pt") == folder / "step_00000001.pt"
    path, ckpt = open_checkpoint(str(tmp_path / "run"))
    assert path == newest and ckpt["step"] == 20


def test_resolve_checkpoint_says_where_it_looked(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError) as err:
        resolve_checkpoint(tmp_path / "empty")
    msg = str(err.value)
    assert f"'{tmp_path / 'empty' / 'checkpoints'}' (no such folder)" in msg and "0 step_*.pt files" in msg
    with pytest.raises(CheckpointError, match="not found: give a step_\\*.pt file, or a run folder"):
        resolve_checkpoint(tmp_path / "missing.pt")


def test_unknown_format_is_a_clear_error_and_old_checkpoints_load(tmp_path):
    torch.save(_ckpt(1, format=7), tmp_path / "new.pt")
    with pytest.raises(CheckpointError, match=r"has format 7, which this wavedil does not know \(it reads format 1\)"):
        load_checkpoint(tmp_path / "new.pt")
    old = _ckpt(1)
    del old["format"]  # the earliest checkpoints had no format field: version 1
    torch.save(old, tmp_path / "old.pt")
    assert load_checkpoint(tmp_path / "old.pt")["step"] == 1


def test_rng_state_round_trips_every_generator_through_a_safe_checkpoint(tmp_path):
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    save_checkpoint(_ckpt(1, rng=rng_state()), tmp_path / "c.pt")
    expected = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    torch.manual_seed(9), np.random.seed(9), random.seed(9)
    set_rng_state(load_checkpoint(tmp_path / "c.pt")["rng"])  # weights_only=True load
    got = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    assert torch.equal(expected[0], got[0]) and np.array_equal(expected[1], got[1]) and expected[2] == got[2]
    set_rng_state({"torch": torch.get_rng_state()})  # an older checkpoint: torch only


@pytest.mark.parametrize(
    "error",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 5120 vs 4998"),
    ],
    ids=["ENOSPC", "torch-unexpected-pos"],
)
def test_disk_full_while_checkpointing_is_a_clear_error(tmp_path, monkeypatch, error):
    real_save, calls = torch.save, []

    def save(obj, f, *a, **k):  # the first checkpoint (step 3) fits, the second (step 6) does not
        calls.append(obj["step"])
        if len(calls) > 1:
            raise error
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(ckpt_mod.torch, "save", save)
    run_dir = tmp_path / "run"
    with pytest.raises(TrainingError) as err:
        train(compose(BASE), run_dir)
    msg = str(err.value)
    good = run_dir / "checkpoints" / "step_00000003.pt"
    assert "no space left on the device" in msg and str(run_dir / "checkpoints") in msg
    assert "needs about" in msg and " bytes)" in msg
    assert f"the last good checkpoint is '{good}' (step 3)" in msg
    assert "trainer.resume=true" in msg
    assert list_checkpoints(run_dir / "checkpoints") == [good]  # kept, and no temporary file left
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [good.name]
    assert load_checkpoint(good)["step"] == 3


def test_keep_every_keeps_milestones_besides_the_newest(tmp_path):
    """ckpt_every=1, keep_last=2, keep_every=3 over 8 steps: the newest two and steps 3 and 6."""
    run_dir = tmp_path / "run"
    train(compose(BASE + ["trainer.max_steps=8", "trainer.ckpt_every=1", "trainer.keep_last=2",
                          "trainer.keep_every=3"]), run_dir)  # fmt: skip
    steps = [step_from_name(p) for p in list_checkpoints(run_dir / "checkpoints")]
    assert steps == [8, 7, 6, 3]
    assert step_from_name(tmp_path / "other.pt") is None


def test_other_save_errors_pass_through(tmp_path, monkeypatch):
    def save(obj, f, *a, **k):
        raise OSError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(ckpt_mod.torch, "save", save)
    with pytest.raises(PermissionError):
        save_checkpoint(_ckpt(1), tmp_path / "c.pt")


@pytest.mark.parametrize("workers", [0, 1])  # 1: raised in a DataLoader worker process, re-raised here
def test_fatal_data_error_mid_run_saves_the_current_step_then_reports(tmp_path, monkeypatch, workers):
    real_getitem = train_mod.SegmentDataset.__getitem__

    def getitem(self, index):
        if self.segments_per_epoch > 100 and index >= 4 * 2:  # the training set, from step 4 on
            raise CorpusError("42 of 50 files vanished from /data/speech")
        return real_getitem(self, index)

    monkeypatch.setattr(train_mod.SegmentDataset, "__getitem__", getitem)
    run_dir = tmp_path / "run"
    with pytest.raises(TrainingError) as err:
        train(compose(BASE + ["trainer.max_steps=200", "trainer.ckpt_every=100", f"data.num_workers={workers}"]), run_dir)
    msg = str(err.value)
    saved = run_dir / "checkpoints" / "step_00000004.pt"
    assert "the training data failed at step 4: 42 of 50 files vanished" in msg
    assert f"Saved '{saved}' (step 4)" in msg and "trainer.resume=true" in msg
    assert isinstance(err.value.__cause__, CorpusError)
    assert load_checkpoint(saved)["step"] == 4


def test_init_from_starts_from_the_sources_ema_weights_with_a_fresh_optimiser(tmp_path, capsys):
    source = tmp_path / "source"
    train(compose(BASE + ["trainer.ema_decay=0.5"]), source)
    newest = list_checkpoints(source / "checkpoints")[0]
    saved = load_checkpoint(newest)
    ema = saved["ema"]
    ema = ema.get("shadow", ema) if isinstance(ema, dict) else ema
    run = setup(compose(BASE + [f"trainer.init_from={source}"]), tmp_path / "tuned")
    assert run.step == 0 and not run.optimizer.state  # a new run: step 0, no optimiser moments
    state = run.model.state_dict()
    assert not all(torch.equal(state[k], saved["model"][k]) for k in state)  # the EMA, not the raw weights
    assert all(torch.equal(state[k], ema[k]) for k in state)
    tuned = train(compose(BASE + [f"trainer.init_from={newest}", "trainer.max_steps=2"]), tmp_path / "tuned2")
    assert tuned["step"] == 2
    # every checkpoint records what the run went on from (model cards add it up), resumes too
    lineage = load_checkpoint(tuned["checkpoint"])["initialised_from"]
    assert lineage["source"] == str(newest) and lineage["steps"] == saved["step"]
    assert lineage["wall_time_seconds"] == saved["elapsed_seconds"]
    resumed = train(compose(BASE + [f"trainer.init_from={newest}", "trainer.max_steps=3", "trainer.resume=true"]),
                    tmp_path / "tuned2")  # fmt: skip
    assert resumed["step"] == 3 and load_checkpoint(resumed["checkpoint"])["initialised_from"] == lineage
    out = capsys.readouterr().out
    assert f"initialised the weights from {newest} (its step {saved['step']}); optimiser" in out
    # a source that went on from another says what its training came to in all, not only its last stage
    train(compose(BASE + [f"trainer.init_from={tmp_path / 'tuned2'}", "trainer.max_steps=1"]), tmp_path / "third")
    assert f"(its step 3; {saved['step'] + 3:,} steps of training in all); optimiser" in capsys.readouterr().out


def test_init_from_errors_name_the_option_and_what_differs(tmp_path):
    source = tmp_path / "source"
    train(compose(BASE), source)
    with pytest.raises(CheckpointError, match=r"residual_channels: checkpoint \d+ vs config 12.*trainer.init_from"):
        setup(compose(BASE + [f"trainer.init_from={source}", "model.residual_channels=12"]), tmp_path / "a")
    with pytest.raises(CheckpointError, match=r"trainer.init_from=.*nowhere"):
        setup(compose(BASE + [f"trainer.init_from={tmp_path / 'nowhere'}"]), tmp_path / "b")
    with pytest.raises(CheckpointError, match=r"trainer.init_from=pretrained:nope.*speech8k"):
        setup(compose(BASE + ["trainer.init_from=pretrained:nope"]), tmp_path / "c")
    with pytest.raises(CheckpointError, match=r"trained at 8000 Hz but data.sample_rate is 16000: set data.sample_rate=8000"):
        setup(compose(BASE + [f"trainer.init_from={source}", "data.sample_rate=16000"]), tmp_path / "e")
    with pytest.raises(ValueError, match="trainer.init_from must be"):
        setup(compose(BASE + ["trainer.init_from=''"]), tmp_path / "d")


def test_resume_wins_over_init_from(tmp_path, capsys):
    source, run_dir = tmp_path / "source", tmp_path / "run"
    train(compose(BASE), source)
    whole = train(compose(BASE), run_dir)
    run = setup(compose(BASE + ["trainer.resume=true", f"trainer.init_from={source}"]), run_dir)
    assert run.step == whole["step"]
    assert "init_from" in capsys.readouterr().out
