"""Training options that are each valid alone but went wrong together, interruptions, the launch
environment and audio a user brings: each now works, or is refused or reported clearly.

Covers: ``trainer.resume`` after changing ``optim.*`` (the checkpoint's settings came back in
silence), after turning the EMA on (it started from the random initial weights), of a weights-only
model file (a ``KeyError``), of an older checkpoint in a folder holding later ones (two histories
mixed), in a folder whose every checkpoint is unusable (three contradicting messages), and past
``trainer.max_steps`` (``steps 2..1`` and nothing said); the float16 loss scale, which no
checkpoint kept; ``trainer.init_from`` of NaN weights ("training diverged" five steps later);
``trainer.activation_checkpointing`` with the memory check (which ignored it) and with
``trainer.precision=bf16-emulated`` (torch's ``CheckpointError``), and the memory check of that
precision (which counted its float32 activations as 16-bit); Ctrl-C while ``wavedil train``
sets up (a traceback); ``LOCAL_WORLD_SIZE`` of nonsense (``ZeroDivisionError``); a path Hydra
reads only in quotes (its lexer's error, no word of quotes); the clipping warning of a Vorbis file
(called "float audio"); ``data.trim_silence_db`` on a long file (the whole file in memory, four
times over); ``vocode`` of a long file (read and analysed whole before being refused).

Every test failed on the code before its fix (each docstring says what happened then). Tiny
models, two-step runs on the bundled 8 kHz speech, in process; about 5 s.
"""

from __future__ import annotations

import logging
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import wavedil.train as train_mod
from wavedil.checkpoint import CheckpointError, list_checkpoints, load_checkpoint, save_checkpoint
from wavedil.cli import main as cli_main
from wavedil.config import compose, model_config, to_plain
from wavedil.distributed import DistInfo
from wavedil.emulation import Bf16MatmulEmulation
from wavedil.model import WaveNet
from wavedil.train import TrainingError, setup, train

from test_commands import one_thread  # noqa: F401 (an autouse fixture: one torch thread)
from test_faults_synthesis import vocoder_run  # noqa: F401 (a fixture: a tiny vocoder run)
from test_faults_train import BASE, TINY_MODEL

#: weights that move in two steps (no warm-up), no EMA, a checkpoint after each step
RUN = BASE + ["optim.warmup_steps=0", "optim.lr=0.01", "optim.weight_decay=0", "trainer.ckpt_every=1",
              "trainer.keep_last=2"]  # fmt: skip


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A two-step adamw run without EMA: ``checkpoints/step_00000001.pt`` and ``step_00000002.pt``."""
    run = tmp_path_factory.mktemp("combos") / "run"
    train(compose(RUN), run)
    return run


# ----------------------------------------------------------------------------- resuming after a change


def test_resume_trains_on_with_this_runs_optimiser_settings(run_dir, capsys):
    """Before: ``trainer.resume=true optim=adam optim.weight_decay=0.5 optim.betas=[0.5,0.6]`` went on
    with the checkpoint's betas (0.9, 0.99), weight decay 0 and decoupled weight decay (an Adam that
    was AdamW) in silence: torch's ``load_state_dict`` brings back the saved settings."""
    run = setup(compose(RUN + ["trainer.resume=true", "trainer.max_steps=4", "optim=adam", "optim.weight_decay=0.5",
                               "optim.betas=[0.5,0.6]"]), run_dir)  # fmt: skip
    assert type(run.optimizer) is torch.optim.Adam and run.step == 2
    for group in run.optimizer.param_groups:
        assert group["betas"] == (0.5, 0.6) and group["weight_decay"] == 0.5
        assert group["decoupled_weight_decay"] is False  # L2, as optim.name=adam says
    assert run.optimizer.state  # the moments come from the checkpoint
    out = capsys.readouterr().out
    assert "optim.betas, optim.weight_decay, optim.name changed since the checkpoint" in out, out
    same = setup(compose(RUN + ["trainer.resume=true", "trainer.max_steps=4"]), run_dir)  # unchanged: no note
    assert "changed since the checkpoint" not in capsys.readouterr().out
    assert same.optimizer.param_groups[0]["weight_decay"] == 0.0


def test_an_ema_turned_on_when_resuming_starts_from_the_checkpoints_weights(run_dir):
    """Before: resuming a run trained with ``trainer.ema_decay=0`` with the EMA on started the EMA
    from the model's random initial weights at full decay, so validation, samples and exports used
    mostly untrained weights for thousands of steps."""
    run = setup(compose(RUN + ["trainer.resume=true", "trainer.max_steps=4", "trainer.ema_decay=0.999"]), run_dir)
    weights = run.model.state_dict()
    assert all(torch.equal(run.ema.shadow[k], v.float()) for k, v in weights.items())


def test_a_weights_only_model_file_cannot_be_resumed_and_says_init_from(run_dir, tmp_path):
    """Before: ``trainer.resume=`` a model file of the same architecture holding weights only (a
    bundled model, ``data/pretrained/*/model.pt``, or an export) built the data and the model, then
    stopped with ``KeyError: 'optimizer'``."""
    ckpt = load_checkpoint(list_checkpoints(run_dir / "checkpoints")[0])
    model_file = save_checkpoint({k: ckpt[k] for k in ("format", "model", "model_config", "sample_rate", "step")},
                                 tmp_path / "model.pt")  # fmt: skip
    with pytest.raises(CheckpointError) as err:
        setup(compose(RUN + [f"trainer.resume={model_file}"]), tmp_path / "run")
    msg = str(err.value)
    assert "holds no training state to resume (optimizer, rng missing)" in msg, msg
    assert f"use trainer.init_from={model_file} instead" in msg
    assert setup(compose(RUN + [f"trainer.init_from={model_file}"]), tmp_path / "run").step == 0  # as it says


def test_init_from_weights_of_a_diverged_run_is_refused_before_training(run_dir, tmp_path):
    """Before: ``trainer.init_from=`` a checkpoint holding NaN weights built everything, skipped five
    steps for non-finite losses and stopped with "training diverged ... lower optim.lr", blaming
    the new run's settings for its source's weights."""
    ckpt = dict(load_checkpoint(list_checkpoints(run_dir / "checkpoints")[0]))
    ckpt["model"] = {k: v.clone().fill_(float("nan")) if k == "embed.weight" else v for k, v in ckpt["model"].items()}
    source = save_checkpoint(ckpt, tmp_path / "diverged.pt")
    with pytest.raises(CheckpointError) as err:
        setup(compose(RUN + [f"trainer.init_from={source}"]), tmp_path / "run")
    assert str(err.value) == (f"trainer.init_from={source}: its weights hold NaN or infinite values (embed.weight): it "
                              "comes from a diverged run; use an earlier checkpoint")  # fmt: skip


def test_resuming_an_older_checkpoint_beside_later_ones_is_refused(run_dir, tmp_path):
    """Before: ``trainer.resume=RUN/checkpoints/step_00000001.pt`` in RUN trained on from step 1
    beside the later ``step_00000002.pt`` of the other history: pruning kept that one and deleted the
    new ones, and the run folder's newest checkpoint (what generate, eval and resume=true take)
    stayed the old history's until the new run overwrote it."""
    older, newer = sorted(list_checkpoints(run_dir / "checkpoints"))
    with pytest.raises(TrainingError) as err:
        setup(compose(RUN + [f"trainer.resume={older}", "trainer.max_steps=4"]), run_dir)
    msg = str(err.value)
    assert f"is at step 1 but the run folder '{run_dir}' holds later checkpoints ({newer.name})" in msg, msg
    assert "a new run folder (another hydra.run.dir)" in msg
    assert sorted(list_checkpoints(run_dir / "checkpoints")) == [older, newer]
    assert setup(compose(RUN + [f"trainer.resume={older}", "trainer.max_steps=4"]), tmp_path / "branch").step == 1
    # a later file that does not load (a crash while writing) is passed over, as resume=true does
    damaged = tmp_path / "damaged"
    (damaged / "checkpoints").mkdir(parents=True)
    shutil.copy(older, damaged / "checkpoints" / older.name)
    (damaged / "checkpoints" / newer.name).write_bytes(newer.read_bytes()[:1000])
    assert setup(compose(RUN + [f"trainer.resume={damaged / 'checkpoints' / older.name}"]), damaged).step == 1


def test_resume_true_in_a_folder_of_unusable_checkpoints_says_so(tmp_path, caplog):
    """Before: ``trainer.resume=true`` in a run folder whose only checkpoint was truncated logged
    "falling back to an older one" (there was none) and "no checkpoint found ...: starting fresh",
    then failed with "a new run there would overwrite ... Continue that run with
    trainer.resume=true", the option that was given."""
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "step_00000004.pt").write_bytes(b"PK\x03\x04" + bytes(500))  # cut short
    with pytest.raises(TrainingError) as err:
        setup(compose(RUN + ["trainer.resume=true"]), run_dir)
    msg = str(err.value)
    assert msg.startswith(f"trainer.resume=true but none of the 1 checkpoint(s) in '{run_dir / 'checkpoints'}' can be "
                          "loaded (newest step_00000004.pt"), msg  # fmt: skip
    assert "Continue that run with trainer.resume=true" not in msg
    said = [r.getMessage() for r in caplog.records]
    assert any("there is no older one" in m for m in said) and not any("falling back" in m for m in said), said


def test_resuming_past_max_steps_says_there_is_nothing_to_do(run_dir, capsys):
    """Before: ``trainer.resume=true trainer.max_steps=1`` on a run at step 2 announced ``steps
    2..1`` and returned without a word."""
    summary = train(compose(RUN + ["trainer.resume=true", "trainer.max_steps=1"]), run_dir)
    assert summary["step"] == 2
    out = capsys.readouterr().out
    assert "the run is at step 2, already past trainer.max_steps=1: nothing to do (raise trainer.max_steps" in out


# ----------------------------------------------------------------------------- activation checkpointing


def test_the_memory_check_counts_activation_checkpointing(tmp_path, monkeypatch):
    """Before: the memory probe ran without checkpointing, so a batch that fits with
    ``trainer.activation_checkpointing`` (the option for fitting one) was refused all the same."""
    deep = ["model.layers_per_stack=5", "model.stacks=4", "data.batch_size=8", "data.segment_length=400"]
    mcfg = model_config(to_plain(compose(BASE + deep))["model"])  # 20 layers: checkpointing saves much
    need = train_mod._activation_bytes_per_sample(mcfg, 400) * 8 * 400  # without checkpointing
    monkeypatch.setattr(train_mod, "memory_limits", lambda device: (int(0.75 * need), int(10 * need)))
    with pytest.raises(TrainingError, match="for the activations a training step keeps"):
        setup(compose(BASE + deep), tmp_path / "plain")
    with pytest.raises(TrainingError, match="for the activations a training step keeps"):  # one group: no saving
        setup(compose(BASE + deep + ["trainer.activation_checkpointing=1"]), tmp_path / "one")
    assert setup(compose(BASE + deep + ["trainer.activation_checkpointing=4"]), tmp_path / "four").step == 0


def test_the_memory_check_counts_bf16_emulations_float32_activations_in_full(monkeypatch):
    """Before: ``trainer.precision=bf16-emulated`` was counted as a 16-bit precision, half of the
    activations, though the emulation keeps them in float32: a batch twice too large for the
    memory was let through to the out-of-memory killer."""
    monkeypatch.setattr(train_mod, "_activation_bytes_per_sample", lambda mcfg, t, segments=0: float(2**20))  # 1 MiB a sample
    monkeypatch.setattr(train_mod, "memory_limits", lambda device: (8 * 2**30 - 1, 2**50))  # < 8 GiB
    dcfg = train_mod.DataConfig(root="/x", sample_rate=8000, segment_length=1024, batch_size=8)  # 8 GiB saved
    with pytest.raises(TrainingError, match=r"needs at least 8\.0 GiB .* at trainer\.precision=bf16-emulated\)"):
        train_mod._check_training_memory(TINY_MODEL, dcfg, DistInfo(), torch.device("cpu"), "bf16-emulated")
    train_mod._check_training_memory(TINY_MODEL, dcfg, DistInfo(), torch.device("cpu"), "bf16")  # half: 4 GiB


def test_bf16_emulation_recomputes_checkpointed_layers_under_emulation():
    """Before: ``trainer.precision=bf16-emulated trainer.activation_checkpointing=2`` stopped at the first
    backward with torch's ``CheckpointError`` (the recomputation ran outside the emulation and saved
    other tensors)."""
    torch.manual_seed(0)
    model = WaveNet(TINY_MODEL).train()
    codes = torch.randint(0, TINY_MODEL.quantization_channels, (2, 101))
    grads = []
    for groups in (0, 1, 2):
        model.zero_grad()
        model.stack.checkpoint_segments = groups
        with Bf16MatmulEmulation():
            loss = model.loss(codes)
        loss.backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(grads[0], grads[1]))  # one group: the same computation
    assert all(torch.allclose(a, b, atol=1e-2) for a, b in zip(grads[0], grads[2]))  # bf16 rounding of a split


# ----------------------------------------------------------------------------- interruptions, environment


def test_ctrl_c_while_training_sets_up_is_one_line_and_status_130(tmp_path, monkeypatch, capsys, hydra_logging):
    """Before: Ctrl-C while ``wavedil train`` loaded the corpus (or a second Ctrl-C in the loop)
    printed a KeyboardInterrupt traceback through Hydra's frames, where generate and vocode print
    one line."""

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_mod, "build_data", interrupted)
    try:
        cli_main(["train", *BASE, f"hydra.run.dir={tmp_path / 'run'}"])
    except KeyboardInterrupt:
        pytest.fail("the KeyboardInterrupt reached the caller (a traceback from the command line)")
    except SystemExit as exc:
        assert exc.code == 130
    err = capsys.readouterr().err
    assert "interrupted: wavedil train stopped" in err and "Traceback" not in err, err


@pytest.mark.parametrize("value", ["0", "x", "-2", "3"])
def test_local_world_size_of_nonsense_is_named(monkeypatch, value):
    """Before: ``LOCAL_WORLD_SIZE=0`` under a world of 2 CPU processes gave ``ZeroDivisionError``,
    ``x`` Python's ``invalid literal for int()``, and a negative or too large count passed in silence
    (no memory estimate, or one for processes that are not there)."""
    monkeypatch.setenv("LOCAL_WORLD_SIZE", value)
    monkeypatch.setattr(train_mod, "memory_limits", lambda device: (2**40, 2**40))
    monkeypatch.setattr(train_mod, "_activation_bytes_per_sample", lambda mcfg, t, segments=0: 1024.0)
    dcfg = train_mod.DataConfig(root="/x", sample_rate=8000, segment_length=100, batch_size=4)
    says = re.escape(f"LOCAL_WORLD_SIZE='{value}' must be an integer from 1 to WORLD_SIZE=2")
    with pytest.raises(ValueError, match=says):
        train_mod._check_training_memory(TINY_MODEL, dcfg, DistInfo(0, 2, 0), torch.device("cpu"), "32")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    train_mod._check_training_memory(TINY_MODEL, dcfg, DistInfo(0, 2, 0), torch.device("cpu"), "32")


def test_a_path_hydra_reads_only_quoted_gets_the_quoted_form(tmp_path, capsys, hydra_logging):
    """Before: ``data.root=/data/Müsik`` (or any path with a letter beyond ASCII or a parenthesis) was
    refused with Hydra's ``LexerNoViableAltException: ...; ^; See https://hydra.cc/...`` and no word
    of the quotes that make it work."""
    folder = tmp_path / "Müsik (2024)"

    def error_of(*argv: str) -> str:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_:
            cli_main(["train", *argv])
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err, err
        return [line for line in err.splitlines() if line.startswith("error: ")][0]

    said = error_of(*BASE, f"data.root={folder}", f"hydra.run.dir={tmp_path / 'run'}")
    assert f"""must be quoted for Hydra: pass "data.root='{folder}'", the outer quotes for the shell""" in said, said
    said = error_of(*BASE, f"data.root='{folder}'", f"hydra.run.dir={tmp_path / 'run'}")  # as it says: read whole
    assert f"corpus folder '{folder}' does not exist" in said, said


# ----------------------------------------------------------------------------- audio a user brings


def test_the_clipping_warning_of_a_vorbis_file_names_the_decoder_not_float_audio(tmp_path, caplog):
    """Before: a loud Ogg Vorbis file, whose decoder overshoots full scale, was warned about as
    "float audio above full scale" with the advice to scale "the file" down."""
    from wavedil.audio import read_audio

    t = np.arange(16000) / 8000
    path = tmp_path / "loud.ogg"
    sf.write(path, 0.999 * np.sign(np.sin(2 * np.pi * 200 * t)), 8000, format="OGG", subtype="VORBIS")
    with caplog.at_level(logging.WARNING, logger="wavedil.audio"):
        wav, _ = read_audio(path)
    assert float(wav.abs().max()) == 1.0
    said = [r.getMessage() for r in caplog.records if "outside [-1, 1]" in r.getMessage()]
    assert len(said) == 1 and "a lossy VORBIS decoder's overshoot" in said[0] and "float audio" not in said[0], said


def test_trimming_the_silence_of_a_long_file_holds_a_block_not_the_file(tmp_path):
    """Before: ``data.trim_silence_db`` read each whole file to find its edges, taking about four
    times its float32 size at once (0.8 GB for 20 minutes of 44.1 kHz stereo; a multi-hour
    recording could exhaust the memory before training began)."""
    import tracemalloc

    from wavedil.data import AudioItem, SegmentDataset

    rate, seconds = 44100, 60
    path = tmp_path / "long.wav"
    rng = np.random.default_rng(0)
    with sf.SoundFile(path, "w", rate, 2, subtype="PCM_16") as f:
        for i in range(seconds):
            f.write((0.0 if i < 3 else 0.2) * rng.standard_normal((rate, 2)))
    item = AudioItem(path, None, rate * seconds, rate)
    tracemalloc.start()
    try:
        ds = SegmentDataset([item], 4000, 8000, trim_silence_db=-40)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert ds.spans[0][0] == 3 * rate and ds.spans[0][1] > (seconds - 1) * rate
    assert peak < 12e6, f"{peak / 1e6:.1f} MB for a file of {rate * seconds * 2 * 4 / 1e6:.1f} MB as float32"


def test_file_silence_bounds_equal_those_of_the_whole_waveform(tmp_path, monkeypatch):
    """The block-wise edges are exactly :func:`silence_bounds` of :func:`read_audio`'s waveform
    (downmix, clipping), wherever the blocks fall."""
    import wavedil.audio as audio_mod

    rng = np.random.default_rng(1)
    loud = np.concatenate([np.zeros(1500), 0.3 * rng.standard_normal(4000), 0.001 * np.ones(700), np.zeros(90)])
    files = {
        "mono.wav": (loud, "PCM_16"),
        "stereo.wav": (np.stack([loud, -0.5 * loud[::-1]], 1), "PCM_24"),
        "hot.wav": (np.concatenate([loud, [1.7, -2.0]]), "FLOAT"),  # clipped: the peak counts as 1
        "quiet.flac": (0.01 * loud, "PCM_16"),
    }
    monkeypatch.setattr(audio_mod, "_BOUNDS_BLOCK", 1000)
    for name, (data, subtype) in files.items():
        sf.write(tmp_path / name, data, 8000, subtype=subtype)
        wav, _ = audio_mod.read_audio(tmp_path / name)
        for db in (-10.0, -40.0, -80.0):
            assert audio_mod.file_silence_bounds(tmp_path / name, db) == audio_mod.silence_bounds(wav, db), (name, db)
    sf.write(tmp_path / "silent.wav", np.zeros(2500), 8000)
    assert audio_mod.file_silence_bounds(tmp_path / "silent.wav", -40.0) == (0, 0)


def test_vocode_refuses_an_input_too_long_from_its_header_before_reading_it(vocoder_run, tmp_path, monkeypatch):
    """Before: ``vocode`` of a 20-minute 44.1 kHz stereo file (default ``--max-seconds 600``) read,
    resampled and analysed all of it (1.3 GB, 7 s here; a recording of hours could exhaust the
    memory) before saying that it was too long."""
    import wavedil.synthesis as synthesis_mod

    path = tmp_path / "long.wav"
    with sf.SoundFile(path, "w", 44100, 2, subtype="PCM_16") as f:  # 11 s of silence, 2 MB
        f.write(np.zeros((11 * 44100, 2)))
    monkeypatch.setattr(synthesis_mod, "read_audio", lambda *a, **k: pytest.fail("the input was read"))
    with pytest.raises(ValueError) as err:
        synthesis_mod.vocode_file(vocoder_run, path, tmp_path / "out.wav", max_seconds=10, backend="torch",
                                  device="cpu")  # fmt: skip
    said = f"'{path}' is 11.0 s (2200 mel frames); the limit is --max-seconds 10: raise it or cut the input"
    assert str(err.value) == said
    assert not (tmp_path / "out.wav").exists()


class _HalvingScaler:
    """A stand-in for float16's ``GradScaler`` (which needs a GPU): its scale halves each step."""

    def __init__(self) -> None:
        self.scale_value = 65536.0

    def scale(self, loss):
        return loss

    def unscale_(self, optimizer) -> None: ...

    def step(self, optimizer) -> None:
        optimizer.step()

    def update(self) -> None:
        self.scale_value /= 2

    def state_dict(self) -> dict:
        return {"scale": self.scale_value}

    def load_state_dict(self, state: dict) -> None:
        self.scale_value = state["scale"]


def test_the_float16_loss_scale_is_saved_and_resumed(tmp_path, monkeypatch):
    """Before: a ``trainer.precision=16`` checkpoint held no gradient scaler state, so a resumed run
    restarted at the initial scale of 65536 (its first steps skipped for overflowing gradients, and
    no exact resume), unlike the uninterrupted run."""
    import contextlib

    monkeypatch.setattr(train_mod, "autocast_for", lambda device, precision: (contextlib.nullcontext, _HalvingScaler()))
    run_dir = tmp_path / "run"
    train(compose(BASE), run_dir)  # two steps: 65536 -> 16384
    assert load_checkpoint(list_checkpoints(run_dir / "checkpoints")[0])["scaler"] == {"scale": 16384.0}
    assert setup(compose(BASE + ["trainer.resume=true", "trainer.max_steps=4"]), run_dir).scaler.scale_value == 16384.0
