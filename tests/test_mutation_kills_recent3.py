"""Mutation audit of commits 648bfee..HEAD (and the fault hunt 5 fixes before them): tests that
kill mutants of the changed code which no other test noticed.

Audited: ``wavedil.train`` (``_restore``'s EMA and optimiser settings, ``_check_resumable``,
``_check_no_newer_checkpoints``, ``find_resume_checkpoint``'s all-unusable error, the
``max_steps`` "nothing to do", ``_open_init``'s finite-weights check, ``_local_world_size``,
``_remove_stale_partials``), ``wavedil.checkpoint.newest_good_checkpoint``'s wording,
``wavedil.cli`` (Ctrl-C in ``train``, ``_quoting_hint``, ``_show_warning``),
``wavedil.audio.file_silence_bounds``, ``wavedil.synthesis``'s ``--max-seconds`` checks and
``wavedil.backends._numba_settings``. Each test's docstring names the mutants it kills.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

import pytest
import torch

import wavedil.train as train_mod
from wavedil.checkpoint import CheckpointError, list_checkpoints, load_checkpoint, save_checkpoint
from wavedil.config import compose
from wavedil.train import TrainingError, setup, train

from test_commands import one_thread  # noqa: F401 (an autouse fixture: one torch thread)
from test_faults_synthesis import vocoder_run  # noqa: F401 (a fixture: a tiny vocoder run)
from test_faults_train import BASE

#: weights that move in two steps, an EMA that differs from them, a checkpoint after each step
RUN = BASE + ["optim.warmup_steps=0", "optim.lr=0.01", "optim.weight_decay=0", "trainer.ckpt_every=1",
              "trainer.keep_last=2", "trainer.ema_decay=0.5"]  # fmt: skip


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A two-step run with an EMA: ``checkpoints/step_00000001.pt`` and ``step_00000002.pt``."""
    run = tmp_path_factory.mktemp("recent3") / "run"
    train(compose(RUN), run)
    return run


def _ckpts(run_dir: Path) -> list[Path]:
    return list_checkpoints(run_dir / "checkpoints")  # newest first


# ----------------------------------------------------------------------------- resuming


def test_resume_restores_the_checkpoints_ema_not_its_raw_weights(run_dir):
    """Kills ``_restore`` loading the EMA from ``ckpt["model"]`` always (the checkpoint's EMA
    dropped: validation, samples and exports of the resumed run restart from the raw weights)."""
    ckpt = load_checkpoint(_ckpts(run_dir)[0])
    assert any(not torch.equal(ckpt["ema"][k], v.float()) for k, v in ckpt["model"].items())  # they differ
    run = setup(compose(RUN + ["trainer.resume=true", "trainer.max_steps=4"]), run_dir)
    assert run.ema.shadow.keys() == ckpt["ema"].keys()
    assert all(torch.equal(run.ema.shadow[k], v) for k, v in ckpt["ema"].items())


def test_init_from_a_checkpoint_whose_ema_is_nan_is_refused(run_dir, tmp_path):
    """Kills ``_open_init`` checking ``model`` weights only: ``trainer.init_from`` starts from the
    EMA, so a checkpoint with NaN in its EMA (finite raw weights) started a run of NaN weights."""
    ckpt = dict(load_checkpoint(_ckpts(run_dir)[0]))
    ckpt["ema"] = {k: v.clone().fill_(float("inf")) if k == "embed.weight" else v for k, v in ckpt["ema"].items()}
    source = save_checkpoint(ckpt, tmp_path / "diverged.pt")
    with pytest.raises(CheckpointError) as err:
        setup(compose(RUN + [f"trainer.init_from={source}"]), tmp_path / "run")
    assert str(err.value) == (f"trainer.init_from={source}: its weights hold NaN or infinite values (embed.weight): it "
                              "comes from a diverged run; use an earlier checkpoint")  # fmt: skip


def test_a_checkpoint_lacking_only_its_random_states_is_refused_by_name(run_dir, tmp_path):
    """Kills ``_check_resumable`` refusing only when two or more parts are missing (``if
    len(missing) > 1``): a checkpoint without ``rng`` then failed later with ``KeyError: 'rng'``."""
    ckpt = {k: v for k, v in load_checkpoint(_ckpts(run_dir)[0]).items() if k != "rng"}
    path = save_checkpoint(ckpt, tmp_path / "no_rng.pt")
    with pytest.raises(CheckpointError) as err:
        setup(compose(RUN + [f"trainer.resume={path}"]), tmp_path / "run")
    assert f"trainer.resume={path}: the checkpoint holds no training state to resume (rng missing)" in str(err.value)


def _folder_of(run_dir: Path, dest: Path, steps: dict[int, bool]) -> Path:
    """``dest/checkpoints`` holding copies of the run's step-2 checkpoint named ``step_N.pt`` for each
    step (``False``: cut short, unloadable) and its step-1 checkpoint; returns that step-1 file."""
    older, newer = sorted(_ckpts(run_dir))
    (dest / "checkpoints").mkdir(parents=True)
    first = dest / "checkpoints" / older.name
    shutil.copy(older, first)
    for step, good in steps.items():
        data = newer.read_bytes()
        (dest / "checkpoints" / f"step_{step:08d}.pt").write_bytes(data if good else data[:1000])
    return first


def test_resuming_an_older_checkpoint_beside_many_later_names_three_and_the_newest_good_one(run_dir, tmp_path):
    """Kills, in ``_check_no_newer_checkpoints``: ``len(newer) >= 3`` (an "and 0 more" with three
    later files), ``newer[:2]`` (two named), and naming ``newer[0]`` (a damaged file, which
    resume=true passes over) as the checkpoint the run folder's commands would take."""
    three = tmp_path / "three"
    first = _folder_of(run_dir, three, {2: True, 3: True, 4: True})
    with pytest.raises(TrainingError) as err:
        setup(compose(RUN + [f"trainer.resume={first}", "trainer.max_steps=6"]), three)
    assert (f"is at step 1 but the run folder '{three}' holds later checkpoints (step_00000004.pt, step_00000003.pt, "
            "step_00000002.pt): training on") in str(err.value), str(err.value)  # fmt: skip
    four = tmp_path / "four"
    first = _folder_of(run_dir, four, {2: True, 3: True, 4: True, 5: False})
    with pytest.raises(TrainingError) as err:
        setup(compose(RUN + [f"trainer.resume={first}", "trainer.max_steps=6"]), four)
    msg = str(err.value)
    assert "holds later checkpoints (step_00000005.pt, step_00000004.pt, step_00000003.pt and 1 more)" in msg, msg
    assert "would stay step_00000004.pt of the other one" in msg, msg


def test_resume_true_among_two_unusable_checkpoints_falls_back_then_says_there_is_no_older_one(tmp_path, caplog):
    """Kills ``newest_good_checkpoint``'s ``i + 2 < len(found)`` (the first of two said "there is no
    older one") and ``find_resume_checkpoint`` naming ``unusable[-1]`` (the oldest) as the newest."""
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    for step in (3, 4):
        (folder / f"step_{step:08d}.pt").write_bytes(b"PK\x03\x04" + bytes(500))
    with caplog.at_level(logging.WARNING, logger="wavedil.checkpoint"), pytest.raises(TrainingError) as err:
        setup(compose(RUN + ["trainer.resume=true"]), tmp_path / "run")
    assert str(err.value).startswith(f"trainer.resume=true but none of the 2 checkpoint(s) in '{folder}' can be loaded "
                                     "(newest step_00000004.pt;"), str(err.value)  # fmt: skip
    said = [r.getMessage() for r in caplog.records if "skipping unusable checkpoint" in r.getMessage()]
    assert len(said) == 2 and "step_00000004.pt" in said[0] and "step_00000003.pt" in said[1], said
    assert said[0].endswith("; falling back to an older one") and said[1].endswith("; there is no older one"), said


def test_resuming_a_run_exactly_at_max_steps_says_there_is_nothing_to_do(run_dir, capsys):
    """Kills ``run.step > t.max_steps`` (at exactly max_steps the run said nothing) and ``where``
    always "already past"."""
    before = {p.name: p.stat().st_mtime_ns for p in _ckpts(run_dir)}
    summary = train(compose(RUN + ["trainer.resume=true", "trainer.max_steps=2"]), run_dir)
    assert summary["step"] == 2
    out = capsys.readouterr().out
    assert ("the run is at step 2, at trainer.max_steps=2: nothing to do (raise trainer.max_steps to train on)"
            in out), out  # fmt: skip
    assert {p.name: p.stat().st_mtime_ns for p in _ckpts(run_dir)} == before


# ----------------------------------------------------------------------------- leftovers of killed writes


def test_only_checkpoint_partials_untouched_for_ten_minutes_are_removed(tmp_path, caplog):
    """Kills, in ``_remove_stale_partials``: a shorter ``STALE_PARTIAL_SECONDS`` (a partial file
    nine minutes old, a slow write on a network disk, was removed), a glob of every file (old
    checkpoints themselves deleted) or of every hidden ``.tmp`` (other files' partials), and the
    size logged in other units than MB."""
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    now = time.time()
    files = {
        ".step_00000001.pt.k3j2x.tmp": 11 * 60,  # stale: removed
        ".step_00000002.pt.a8f0q.tmp": 9 * 60,  # a slow write in progress: kept
        "step_00000001.pt": 3600,  # a checkpoint, old: kept
        ".notes.txt.x1y2z.tmp": 3600,  # not a checkpoint's: kept
    }
    for name, age in files.items():
        with open(folder / name, "wb") as f:
            f.truncate(2_500_000 if name.startswith(".step_00000001") else 10)  # sparse
        os.utime(folder / name, (now - age, now - age))
    with caplog.at_level(logging.INFO, logger="wavedil.train"):
        train_mod._remove_stale_partials(folder)
    assert sorted(p.name for p in folder.iterdir()) == sorted(set(files) - {".step_00000001.pt.k3j2x.tmp"})
    said = [r.getMessage() for r in caplog.records]
    assert said == ["removed .step_00000001.pt.k3j2x.tmp (2.5 MB), left by a checkpoint write that was killed"], said


# ----------------------------------------------------------------------------- the command line


def _interrupted_setup(monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_mod, "build_data", interrupted)


def test_ctrl_c_while_training_sets_up_exits_130_with_the_whole_line(tmp_path, monkeypatch, capsys, hydra_logging):
    """Kills, in ``cli._train``'s ``KeyboardInterrupt``: returning instead of exiting with 130 (the
    shell saw success), a line without its advice (checkpoints whole; ``trainer.resume=true``)."""
    from wavedil.cli import main as cli_main

    _interrupted_setup(monkeypatch)
    with pytest.raises(SystemExit) as exit_:
        cli_main(["train", *BASE, f"hydra.run.dir={tmp_path / 'run'}"])
    assert exit_.value.code == 130
    assert capsys.readouterr().err.splitlines()[-1] == (
        "interrupted: wavedil train stopped (checkpoints are written whole or not at all; continue the run with "
        "trainer.resume=true)"
    )


def test_ctrl_c_while_training_sets_up_with_debug_keeps_the_traceback(tmp_path, monkeypatch, capsys, hydra_logging):
    """Kills dropping ``if debug: raise`` from ``cli._train``'s ``KeyboardInterrupt``: ``--debug``
    (``debug=true``) is the way to see where the run was stopped."""
    from wavedil.cli import main as cli_main

    _interrupted_setup(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        cli_main(["train", *BASE, f"hydra.run.dir={tmp_path / 'run'}", "--debug"])
    assert "interrupted: wavedil train stopped" not in capsys.readouterr().err


def _train_error(capsys, *argv: str) -> str:
    from wavedil.cli import main as cli_main

    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        cli_main(["train", *argv])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return [line for line in err.splitlines() if line.startswith("error: ")][0]


@pytest.mark.parametrize("name", ["Łódź", "take (2)"])
def test_the_quoting_hint_comes_for_a_letter_beyond_ascii_alone_and_for_a_parenthesis_alone(name, tmp_path, capsys,
                                                                                           hydra_logging):  # fmt: skip
    """Kills ``_quoting_hint`` testing only ``_QUOTED_ONLY`` (no hint for ``Łódź``) or only letters
    beyond ASCII (none for ``take (2)``): the fault hunt's path held both."""
    folder = f"/data/{name}"
    said = _train_error(capsys, *BASE, f"data.root={folder}", f"hydra.run.dir={tmp_path / 'run'}")
    hint = f"""must be quoted for Hydra: pass "data.root='{folder}'", the outer quotes for the shell)"""
    assert said.endswith(hint), said


def test_the_quoting_hint_escapes_an_apostrophe_and_following_it_works(tmp_path, capsys, hydra_logging):
    """Kills ``_quoting_hint`` quoting without escaping the value's own ``'``: the override it gave
    (``'/x/Rock'n'Roll'``) was refused again."""
    folder = tmp_path / "Rock'n'Roll"
    said = _train_error(capsys, *BASE, f"data.root={folder}", f"hydra.run.dir={tmp_path / 'run'}")
    hinted = "data.root='" + str(folder).replace("'", "\\'") + "'"
    assert f'must be quoted for Hydra: pass "{hinted}", the outer quotes for the shell)' in said, said
    said = _train_error(capsys, *BASE, hinted, f"hydra.run.dir={tmp_path / 'run'}")  # as it says: read whole
    assert f"corpus folder '{folder}' does not exist" in said, said


def test_an_already_quoted_value_gets_no_quoting_hint(tmp_path, capsys, hydra_logging):
    """Kills dropping ``value[:1] in ("'", '"')`` from ``_quoting_hint``: a quoted value that Hydra
    still cannot parse (its closing quote lost) was told to be quoted again."""
    said = _train_error(capsys, *BASE, "data.root='/data/Müsik", f"hydra.run.dir={tmp_path / 'run'}")
    assert "cannot parse the override \"data.root='/data/Müsik\"" in said and "must be quoted" not in said, said


def test_a_warning_of_a_command_is_one_line_and_python_s_own_with_debug(monkeypatch, capsys):
    """Kills ``cli.main`` installing ``_show_warning`` also with ``--debug`` (which keeps Python's
    form: category, file and line) and ``_show_warning`` printing elsewhere than standard error."""
    import warnings

    import wavedil.cli as cli

    monkeypatch.setattr(cli, "_models", lambda args: warnings.warn("the sky is falling", RuntimeWarning))
    capsys.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        cli.main(["models"])
    out, err = capsys.readouterr()
    assert err == "warning: the sky is falling\n" and out == ""
    with pytest.warns(RuntimeWarning, match="the sky is falling"):  # Python's own route, not printed by wavedil
        cli.main(["models", "--debug"])
    assert "warning: the sky is falling" not in capsys.readouterr().err


# ----------------------------------------------------------------------------- generation back-ends


def test_a_back_end_that_fails_to_load_names_the_numba_settings_sorted_and_only_when_set(monkeypatch):
    """Kills, in ``_numba_settings`` and the registry: the note given with no ``NUMBA_*`` variable
    set (an empty "the environment sets  (read by numba)"), the values unquoted, the variables in
    the environment's order, and the note left out of the load warning or of the later error."""
    from wavedil.backends import BackendUnavailable, get_backend, register_backend, unregister_backend

    def broken():
        raise ValueError("Number of threads specified must be > 0.")

    for key in [k for k in os.environ if k.startswith("NUMBA_")]:
        monkeypatch.delenv(key)
    try:
        register_backend("broken_plain", broken)
        with pytest.warns(RuntimeWarning) as said:
            with pytest.raises(BackendUnavailable) as err:
                get_backend("broken_plain")
        assert str(said[0].message) == ("the 'broken_plain' generation back-end failed to load (ValueError: Number of "
                                        "threads specified must be > 0); backend='auto' uses the others")  # fmt: skip
        assert str(err.value).endswith("failed to load with ValueError: Number of threads specified must be > 0")
        monkeypatch.setenv("NUMBA_THREADING_LAYER", "omp")
        monkeypatch.setenv("NUMBA_NUM_THREADS", "0")
        register_backend("broken_numba", broken)
        note = ("the environment sets NUMBA_NUM_THREADS='0', NUMBA_THREADING_LAYER='omp' (read by numba): check or "
                "unset it")
        with pytest.warns(RuntimeWarning) as said:
            with pytest.raises(BackendUnavailable) as err:
                get_backend("broken_numba")
        assert str(said[0].message) == (
            f"the 'broken_numba' generation back-end failed to load (ValueError: Number of threads specified must be "
            f"> 0; {note}); backend='auto' uses the others"
        )
        assert str(err.value).endswith(f"to load with ValueError: Number of threads specified must be > 0; {note}")
        with pytest.raises(BackendUnavailable) as again:  # a later request: the same cause, no new warning
            get_backend("broken_numba")
        assert str(again.value) == str(err.value)
    finally:
        unregister_backend("broken_plain")
        unregister_backend("broken_numba")


# ----------------------------------------------------------------------------- the memory check


def test_the_activation_estimate_with_one_checkpointed_group_is_the_plain_one():
    """Kills an ``_activation_bytes_per_sample`` counting less than the whole largest group's
    recomputation (``largest - 1``): one group keeps nothing less at the backward's peak, so its
    figure is exactly the one without checkpointing."""
    from test_faults_train import TINY_MODEL

    plain = train_mod._activation_bytes_per_sample(TINY_MODEL, 400)
    assert train_mod._activation_bytes_per_sample(TINY_MODEL, 400, 1) == pytest.approx(plain, rel=1e-12)
    assert train_mod._activation_bytes_per_sample(TINY_MODEL, 400, 3) < plain


def test_local_world_size_unset_counts_this_process_alone(monkeypatch):
    """Kills ``_local_world_size`` defaulting to another count than 1 when ``LOCAL_WORLD_SIZE`` is
    unset (a hand-made launch of CPU processes on several machines): the batch share of one
    process that fits was refused as two processes' worth."""
    from test_faults_train import TINY_MODEL
    from wavedil.distributed import DistInfo

    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(train_mod, "_activation_bytes_per_sample", lambda mcfg, t, segments=0: float(2**20))
    monkeypatch.setattr(train_mod, "memory_limits", lambda device: (3 * 2**30, 2**50))  # 3 GiB
    dcfg = train_mod.DataConfig(root="/x", sample_rate=8000, segment_length=1024, batch_size=4)  # 2 rows: 2 GiB
    train_mod._check_training_memory(TINY_MODEL, dcfg, DistInfo(0, 2, 0), torch.device("cpu"), "32")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # both processes here: 4 GiB, refused
    with pytest.raises(TrainingError, match=r"needs at least 4\.0 GiB"):
        train_mod._check_training_memory(TINY_MODEL, dcfg, DistInfo(0, 2, 0), torch.device("cpu"), "32")


# ----------------------------------------------------------------------------- silence bounds of a file


def test_file_silence_bounds_refuses_what_read_audio_refuses_with_its_words(tmp_path):
    """Kills, in ``file_silence_bounds``: the threshold check dropped (0 dB gave bounds instead of
    silence_bounds' error), the NaN check dropped, the "holds no samples" check dropped (Python's
    ``max() arg is an empty sequence``) and the ``_file_problem`` check dropped (soundfile's "cannot
    open" for a missing path or a folder, and a FIFO opened: a hang)."""
    import numpy as np
    import soundfile as sf

    from wavedil.audio import AudioReadError, file_silence_bounds, silence_bounds

    good = tmp_path / "good.wav"
    sf.write(good, 0.5 * np.ones(800), 8000)
    for db in (0.0, 3.0):
        with pytest.raises(ValueError) as want:
            silence_bounds(np.ones(4), db)
        with pytest.raises(ValueError) as got:
            file_silence_bounds(good, db)
        assert str(got.value) == str(want.value)
    nan = tmp_path / "nan.wav"
    sf.write(nan, np.array([0.1, float("nan"), 0.2] * 100), 8000, subtype="FLOAT")
    with pytest.raises(AudioReadError) as err:
        file_silence_bounds(nan, -40.0)
    assert str(err.value) == f"audio file '{nan}' holds NaN or infinite samples"
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0), 8000)
    with pytest.raises(AudioReadError) as err:
        file_silence_bounds(empty, -40.0)
    assert str(err.value) == f"audio file '{empty}' holds no samples"
    (tmp_path / "folder.wav").mkdir()
    from wavedil.audio import read_audio

    for name, says in (("missing.wav", "' does not exist; check the path"), ("folder.wav", "' is a folder")):
        with pytest.raises(AudioReadError) as err:  # wavedil's words, read_audio's own, not soundfile's
            file_silence_bounds(tmp_path / name, -40.0)
        with pytest.raises(AudioReadError) as want:
            read_audio(tmp_path / name)
        assert says in str(err.value) and str(err.value) == str(want.value), str(err.value)


# ----------------------------------------------------------------------------- audio a user brings


@pytest.mark.parametrize("fmt, subtype", [("OGG", "OPUS"), ("MP3", "MPEG_LAYER_III")])
def test_the_clipping_warning_of_opus_and_mp3_names_the_lossy_decoder_and_its_advice(tmp_path, caplog, fmt, subtype):
    """Kills ``_LOSSY_SUBTYPES`` holding VORBIS alone (Opus and MP3 overshoot as well) and the
    lossy branch's advice dropped ("encode it a few dB quieter")."""
    import numpy as np
    import soundfile as sf

    from wavedil.audio import read_audio

    if subtype not in sf.available_subtypes(fmt):
        pytest.skip(f"this libsndfile writes no {subtype}")
    t = np.arange(48000) / 48000
    path = tmp_path / f"loud.{fmt.lower()}"
    sf.write(path, 0.999 * np.sign(np.sin(2 * np.pi * 200 * t)), 48000, format=fmt, subtype=subtype)
    with caplog.at_level(logging.WARNING, logger="wavedil.audio"):
        read_audio(path)
    said = [r.getMessage() for r in caplog.records if "outside [-1, 1]" in r.getMessage()]
    assert len(said) == 1, said
    assert said[0].endswith(f"(a lossy {subtype} decoder's overshoot of audio encoded near full scale): they are "
                            "clipped to [-1, 1]; encode it a few dB quieter to keep its peaks"), said  # fmt: skip


def test_vocode_takes_an_input_of_exactly_max_seconds_and_refuses_one_sample_more_from_the_header(
    vocoder_run, tmp_path, monkeypatch
):
    """Kills ``_check_frames_seconds`` refusing an input of exactly ``--max-seconds`` (``>=``), and
    ``_check_header_seconds`` rounding the length at the vocoder's rate down: 4411 samples at 44.1
    kHz are 800.2 at 8 kHz, 21 frames of hop 40 once read, so they are refused before reading."""
    import numpy as np
    import soundfile as sf

    import wavedil.synthesis as synthesis_mod

    exact = tmp_path / "exact.wav"
    sf.write(exact, 0.3 * np.sin(np.arange(800) / 5), 8000, subtype="PCM_16")  # 0.1 s: 20 frames of hop 40
    synthesis_mod.vocode_file(vocoder_run, exact, tmp_path / "out.wav", max_seconds=0.1, backend="torch", device="cpu")
    assert sf.info(tmp_path / "out.wav").frames == 800
    over = tmp_path / "over.wav"
    sf.write(over, 0.3 * np.sin(np.arange(4411) / 5), 44100, subtype="PCM_16")
    monkeypatch.setattr(synthesis_mod, "read_audio", lambda *a, **k: pytest.fail("the input was read"))
    with pytest.raises(ValueError) as err:
        synthesis_mod.vocode_file(vocoder_run, over, tmp_path / "o2.wav", max_seconds=0.1, backend="torch",
                                  device="cpu")  # fmt: skip
    said = f"'{over}' is 0.1 s (21 mel frames); the limit is --max-seconds 0.1: raise it or cut the input"
    assert str(err.value) == said
