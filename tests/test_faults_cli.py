"""Bad command lines, training configs and corpus files found by the CLI fault audit: each is
refused with one clear ``error: ...`` line naming the option or file (exit status 2, no
traceback), or warned about, and no output is left behind; a good one in an unusual form works.

Covers: options between the positionals of a subcommand (``vocode RUN --stream - -o out.wav``)
and ``--debug`` after the subcommand; empty path arguments; Hydra composition errors of
``wavedil train`` (an unknown config, a key not in the config, a malformed override); ``-`` where
only ``vocode --stream`` reads or writes standard input / output; an output named ``.wav``; a
stream input that is a folder; an empty ``--save-mel``; a missing positional that made another
one be taken as the checkpoint; file names that are not UTF-8; float audio above full scale;
a file given twice to ``eval``; ``eval`` of unreadable files only; ``info --sample-rate`` on a
checkpoint of another rate; a one-file corpus; ``trainer.sample_seconds`` beyond the sampling
limit; segments shorter than the receptive field; a saved log-mel ``.npz`` whose settings are not one
integer, and mel files of Python objects.

Tiny random-weight checkpoints (as in test_commands.py), in process.
"""

from __future__ import annotations

import io
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import wavedil.synthesis as synthesis_mod
from wavedil.audio import read_audio
from wavedil.cli import main as cli_main
from wavedil.config import compose
from wavedil.data import load_corpus, split_items
from wavedil.evaluate import evaluate_files
from wavedil.synthesis import generate_to_files, vocode_file, vocode_stream_file
from wavedil.train import TrainingError, build_data, setup

from test_commands import MEL, SR, one_thread  # noqa: F401 (one_thread: an autouse fixture)
from test_faults_synthesis import no_generation, recording, run_dir, vocoder_run  # noqa: F401 (fixtures)
from test_faults_train import BASE, TINY_MODEL, data_cfg, write_corpus


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    """``wavedil ARGV`` in process: (exit status, standard output, standard error)."""
    capsys.readouterr()
    try:
        cli_main(list(argv))
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    out, err = capsys.readouterr()
    return code, out, err


def user_error(capsys, *argv: str) -> str:
    """Run the CLI; it must exit with status 2 and one ``error:`` line (no traceback), which is returned."""
    code, _, err = run_cli(capsys, *argv)
    assert code == 2, err
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, err
    return errors[0]


def npy_chunks(*arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    for a in arrays:
        np.save(buf, a)
    return buf.getvalue()


# ----------------------------------------------------------------------------- 1. argument order


def test_options_may_come_between_the_positionals(vocoder_run, run_dir, recording, tmp_path, capsys):
    """Before: ``vocode RUN --stream - -o out.wav`` (the README's order with the options moved)
    and ``eval RUN --json a.wav`` failed with "unrecognized arguments" and the top-level usage."""
    chunks = tmp_path / "chunks.npys"
    chunks.write_bytes(npy_chunks(np.random.default_rng(0).standard_normal((MEL["n_mels"], 6)).astype(np.float32)))
    code, _, err = run_cli(capsys, "vocode", str(vocoder_run), "--stream", str(chunks), "-o", str(tmp_path / "s.wav"),
                           "--backend", "torch")  # fmt: skip
    assert code == 0, err
    assert sf.info(str(tmp_path / "s.wav")).frames == 6 * MEL["hop_length"]
    code, _, err = run_cli(capsys, "vocode", str(vocoder_run), "-o", str(tmp_path / "v.wav"), "--quiet",
                           str(recording), "--backend", "torch")  # fmt: skip
    assert code == 0, err
    assert (tmp_path / "v.wav").is_file()
    code, out, err = run_cli(capsys, "eval", str(run_dir), "--json", str(recording))
    assert code == 0, err
    assert '"files": 1' in out


def test_debug_is_accepted_after_the_subcommand(run_dir, tmp_path, capsys):
    """Before: ``wavedil generate ... --debug`` was refused ("unrecognized arguments: --debug")."""
    (tmp_path / "d").mkdir()
    with pytest.raises(ValueError, match="is a directory"):  # --debug: the exception itself, not a line
        cli_main(["generate", str(run_dir), "-o", str(tmp_path / "d"), "--seconds", "0.01", "--debug"])


@pytest.mark.parametrize(
    "argv, command, extra",
    [(["models", "extra"], "models", "extra"), (["generate", "a", "b", "-o", "x.wav"], "generate", "b"),
     (["info", "a", "b"], "info", "b")],
)  # fmt: skip
def test_arguments_a_subcommand_does_not_take_are_refused_with_its_own_usage(argv, command, extra, capsys):
    """Before: ``wavedil models extra`` printed the top-level usage ("wavedil: error: ...")."""
    with pytest.raises(SystemExit) as stop:
        cli_main(argv)
    err = capsys.readouterr().err
    assert stop.value.code == 2
    assert f"usage: wavedil {command} " in err and f"wavedil {command}: error: unrecognized arguments: {extra}" in err


# ----------------------------------------------------------------------------- 2. empty path arguments


@pytest.mark.parametrize(
    "argv, names",
    [
        (["generate", "{run}", "-o", ""], "-o is an empty string"),
        (["generate", "", "-o", "{tmp}/a.wav"], "the checkpoint argument is an empty string"),
        (["generate", "{run}", "-o", "{tmp}/a.wav", "--prompt", ""], "--prompt is an empty string"),
        (["eval", "{run}", ""], "an audio argument is an empty string"),
        (["eval", "{run}", "{rec}", " "], "an audio argument is an empty string"),
        (["vocode", "{voc}", "", "-o", "{tmp}/a.wav"], "the input argument is an empty string"),
        (["vocode", "{voc}", "{rec}", "-o", "{tmp}/a.wav", "--save-mel", ""], "--save-mel is an empty string"),
        (["info", ""], "the target argument is an empty string"),
    ],
)
def test_an_empty_path_is_refused_naming_the_argument(run_dir, vocoder_run, recording, tmp_path, capsys, argv, names):
    """Before: ``""`` meant the current folder: ``eval RUN ""`` evaluated every audio file under
    it, ``-o ""`` was called "output path '.' is a directory", ``--save-mel ""`` was ignored."""
    argv = [a.format(run=run_dir, voc=vocoder_run, rec=recording, tmp=tmp_path) for a in argv]
    line = user_error(capsys, *argv)
    assert names in line
    assert list(tmp_path.glob("*.wav")) == [recording] or not list(tmp_path.glob("a*.wav"))


def test_vocode_file_refuses_an_empty_save_mel(vocoder_run, recording, tmp_path, no_generation):
    with pytest.raises(ValueError, match=r"--save-mel is an empty string"):
        vocode_file(vocoder_run, recording, tmp_path / "o.wav", save_mel="")
    assert not (tmp_path / "o.wav").exists()


# ----------------------------------------------------------------------------- 3. wavedil train: Hydra's errors


@pytest.mark.parametrize(
    "override, says",
    [
        ("experiment=nope", "Could not find 'experiment/nope'; Available options in 'experiment': asterisk_10min"),
        ("model=nope", "Available options in 'model': base, ref30, small, tiny"),
        ("trainer.max_stpes=5", "unknown trainer option(s) ['max_stpes']; valid ones are"),
        ("model.residual_chanels=3", "(did you mean 'residual_channels'?)"),
        ("data.mic=mic2", "data.mic is read with data.layout=vctk only"),
        ("trainer.max_steps=[1", "cannot parse the override 'trainer.max_steps=[1'"),
    ],
)
def test_train_config_composition_errors_are_one_line_with_status_2(tmp_path, capsys, monkeypatch, override, says):
    """Before: Hydra printed several lines (advising ``+trainer.max_stpes=5``, which is refused
    later, and HYDRA_FULL_ERROR) and exited with status 1."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", list(sys.argv))  # wavedil train sets it for Hydra
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    line = user_error(capsys, "train", "model=tiny", override, f"hydra.run.dir={tmp_path / 'run'}")
    assert says in line
    assert "HYDRA_FULL_ERROR" not in line and "To append" not in line
    assert "HYDRA_FULL_ERROR" not in os.environ  # restored
    assert not (tmp_path / "run").exists() and not (tmp_path / "outputs").exists()


def test_a_run_refused_for_a_bad_value_leaves_no_run_folder_but_keeps_any_with_work(tmp_path, capsys, monkeypatch,
                                                                                   hydra_logging):
    """Before: Hydra made ``outputs/<name>/<time>/`` (its ``.hydra/`` and ``cli.log``) before the
    values were checked, and each mistyped value left one such folder behind."""
    monkeypatch.chdir(tmp_path)
    line = user_error(capsys, "train", "model=tiny", "trainer=debug", "optim.lr=-1")
    assert line == "error: optim.lr must be > 0, got -1.0"
    assert list(tmp_path.iterdir()) == []  # outputs/default/<time>/ and the folders above it, gone
    # a folder with anything else in it stays: an earlier run's checkpoints, the current folder
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    user_error(capsys, "train", "model=tiny", "trainer=debug", "optim.lr=-1", f"hydra.run.dir={tmp_path / 'run'}")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [".hydra", "checkpoints", "cli.log"]
    user_error(capsys, "train", "model=tiny", "trainer=debug", "optim.lr=-1", "hydra.run.dir=.")
    assert (tmp_path / ".hydra").is_dir() and (tmp_path / "cli.log").is_file()


@pytest.mark.parametrize("name", ["../../escape", "", "a/b", "..", "ok,../x"])
def test_a_run_name_that_is_not_a_plain_folder_name_is_refused_before_hydra(tmp_path, capsys, monkeypatch, name):
    """Before: ``name=../../escape`` wrote the run outside ``outputs/`` and ``name=`` dropped the
    name level (Hydra makes the folder before wavedil sees the config)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    # a one-step run should the check be missing, so that the test fails fast
    line = user_error(capsys, "train", "model=tiny", "trainer=debug", "trainer.max_steps=1", f"name={name}")
    assert f"name={name}: name is the run's folder under outputs/" in line
    assert not any(tmp_path.iterdir()) and not (tmp_path.parent / "escape").exists()


def test_a_run_folder_that_cannot_be_made_or_is_empty_is_one_line(tmp_path, capsys, monkeypatch):
    """Before: a 31-line Hydra traceback (FileExistsError, NotADirectoryError), and
    ``hydra.run.dir=`` wrote the run into the current folder. (Subprocesses where Hydra runs: it
    sets up its logging before it makes the folder.)"""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    (tmp_path / "afile").write_text("x")
    run = ["train", "model=tiny", "trainer=debug", "trainer.max_steps=1"]
    for folder, says in [("afile", "File exists: 'afile'"), ("afile/sub", "Not a directory: 'afile/sub'")]:
        p = subprocess.run([sys.executable, "-m", "wavedil", *run, f"hydra.run.dir={folder}"], cwd=tmp_path,
                           capture_output=True, text=True, timeout=300)  # fmt: skip
        assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
        assert f"error: cannot make or write the run folder ({says})" in p.stderr and "set hydra.run.dir=FOLDER" in p.stderr
    line = user_error(capsys, *run, "hydra.run.dir=")
    assert "hydra.run.dir=: the run folder is empty, which would write the run into the current folder" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


# ----------------------------------------------------------------------------- 4. standard input / output


def test_dash_outside_the_streaming_commands_says_where_it_works(run_dir, vocoder_run, recording, tmp_path, capsys, no_generation):
    """Before: ``-o -`` was "output file '-' must end in .wav, .flac or .ogg" and the input ``-``
    "audio file '-' does not exist"."""
    with pytest.raises(ValueError, match=r"-o - \(16-bit PCM on standard output\) is written by wavedil generate "
                       r"\(generate_to_stream in Python\) and wavedil vocode --stream only"):
        generate_to_files(run_dir, "-", 0.01)
    with pytest.raises(ValueError, match=r"vocode --stream only"):
        vocode_file(vocoder_run, recording, "-")
    line = user_error(capsys, "vocode", str(vocoder_run), "-", "-o", str(tmp_path / "a.wav"))
    assert "the input '-' (standard input) is read with --stream only" in line
    assert not (tmp_path / "a.wav").exists()


def test_an_output_named_only_by_its_extension_is_refused(run_dir, tmp_path, no_generation):
    """Before: ``-o .wav`` was told it "must end in .wav, .flac or .ogg"."""
    with pytest.raises(ValueError, match=r"has no name before its extension: give one such as out\.wav"):
        generate_to_files(run_dir, tmp_path / ".wav", 0.01)


def test_a_stream_input_that_is_a_folder_is_refused_before_the_model_is_read(vocoder_run, tmp_path, monkeypatch):
    """Before: "cannot read the stream input ...: Is a directory", after the vocoder was loaded."""
    monkeypatch.setattr(synthesis_mod, "_open_vocoder", lambda *a, **k: pytest.fail("the vocoder was loaded"))
    with pytest.raises(ValueError, match="is a folder: give a file of .npy chunks, or - for standard input"):
        vocode_stream_file(vocoder_run, tmp_path, tmp_path / "o.wav")
    assert not (tmp_path / "o.wav").exists()


def test_a_missing_positional_says_which_argument_was_taken(run_dir, vocoder_run, tmp_path, capsys):
    """Before: ``eval RUN`` (no audio) said only "give the model to evaluate", though it was given."""
    line = user_error(capsys, "eval", str(run_dir))
    assert f"'{run_dir}' was taken as the audio" in line
    line = user_error(capsys, "vocode", str(vocoder_run), "-o", str(tmp_path / "a.wav"))
    assert f"'{vocoder_run}' was taken as the input" in line


# ----------------------------------------------------------------------------- 5. audio files


def _non_utf8_copy(src: Path, folder: Path, name: bytes) -> str:
    """Copy ``src`` to ``folder/name`` (bytes: a name that is not UTF-8); returns the path as str."""
    folder.mkdir(parents=True, exist_ok=True)
    target = os.path.join(os.fsencode(folder), name)
    with open(target, "wb") as f:
        f.write(src.read_bytes())
    return os.fsdecode(target)


def test_files_whose_names_are_not_utf8_are_read_split_and_evaluated(run_dir, recording, tmp_path):
    """Before: soundfile could not encode the name ("'utf-8' codec can't encode character"),
    reported as a damaged file; the corpus split crashed hashing the name."""
    loud = tmp_path / "loud.wav"
    sf.write(loud, np.full(400, 0.25, np.float32), SR, subtype="FLOAT")
    folder = tmp_path / "latin1"
    a = _non_utf8_copy(recording, folder, b"caf\xe9.wav")
    _non_utf8_copy(recording, folder, b"na\xefve.wav")
    _non_utf8_copy(loud, folder, b"d\xe9j\xe0.wav")  # a float file: scanned for NaN when listed
    wav, rate = read_audio(a)
    assert rate == SR and wav.numel() == SR // 10
    items = load_corpus(folder)
    assert len(items) == 3
    train, valid = split_items(items, valid_fraction=0.3)
    assert len(train) + len(valid) == 3
    assert evaluate_files(run_dir, [folder]).report.n_files == 3


def test_float_audio_above_full_scale_is_warned_about_once(tmp_path, caplog):
    """Before: samples of 2.0 in a float WAV were clipped to 1.0 without a word."""
    path = tmp_path / "hot.wav"
    sf.write(path, np.linspace(-2.0, 2.0, 800).astype(np.float32), SR, subtype="FLOAT")
    with caplog.at_level(logging.WARNING, logger="wavedil.audio"):
        for _ in range(3):
            wav, _ = read_audio(path)
    assert float(wav.abs().max()) == 1.0
    warnings = [r.getMessage() for r in caplog.records if "outside [-1, 1]" in r.getMessage()]
    assert len(warnings) == 1 and str(path) in warnings[0] and "up to 2" in warnings[0]


def test_eval_counts_a_file_given_twice_once(run_dir, recording, caplog):
    """Before: ``eval RUN a.wav a.wav`` (or a folder and a file in it) counted the file twice."""
    once = evaluate_files(run_dir, [recording]).report
    with caplog.at_level(logging.WARNING, logger="wavedil.evaluate"):
        twice = evaluate_files(run_dir, [recording, recording, recording.parent]).report
    assert (twice.n_files, twice.n_samples) == (once.n_files, once.n_samples) == (1, SR // 10 - 1)
    assert any("given more than once" in r.getMessage() for r in caplog.records)


def test_eval_notes_a_temperature_that_a_plain_model_does_not_use(run_dir, recording):
    """Before: ``eval PLAIN_RUN --temperature 0.5`` ignored the option without a word."""
    notes = evaluate_files(run_dir, [recording], temperature=0.5).notes
    assert any(n.startswith("temperature 0.5 is not used") for n in notes), notes
    assert not any("temperature" in n for n in evaluate_files(run_dir, [recording]).notes)


def test_vocode_stream_quiet_prints_no_streaming_note(vocoder_run, tmp_path, capsys):
    """Before: ``vocode --stream --quiet`` still printed the "streaming: ..." note."""
    chunks = tmp_path / "chunks.npys"
    chunks.write_bytes(npy_chunks(np.random.default_rng(0).standard_normal((MEL["n_mels"], 4)).astype(np.float32)))
    for quiet in (False, True):
        argv = ["vocode", str(vocoder_run), str(chunks), "--stream", "-o", str(tmp_path / "s.wav"), "--backend", "torch"]
        code, _, err = run_cli(capsys, *argv + ["--quiet"] * quiet)
        assert code == 0, err
        assert ("streaming:" in err) != quiet and "streamed 4 frames" in err


def test_eval_of_unreadable_files_only_says_they_were_skipped(run_dir, tmp_path, capsys):
    """Before: "nothing to evaluate: no file with at least 2 samples", of a file of thousands of bytes."""
    text = tmp_path / "notes.wav"
    text.write_text("not audio\n" * 100)
    line = user_error(capsys, "eval", str(run_dir), str(text))
    assert "no readable file with at least 2 samples (unreadable files are skipped with a warning above" in line


def test_info_refuses_a_sample_rate_that_is_not_the_checkpoints(run_dir, capsys):
    """Before: ``info RUN --sample-rate 16000`` gave an 8 kHz model's receptive field at 16 kHz."""
    line = user_error(capsys, "info", str(run_dir), "--sample-rate", "16000")
    assert "--sample-rate 16000" in line and f"a model of {SR} Hz" in line
    code, out, _ = run_cli(capsys, "info", str(run_dir), "--sample-rate", str(SR))
    assert code == 0 and f"at {SR} Hz" in out


# ----------------------------------------------------------------------------- 6. training


def test_a_corpus_of_one_file_is_a_clear_training_error(tmp_path):
    """Before: "SegmentDataset needs at least one audio file, got an empty list" (an internal name)."""
    root = write_corpus(tmp_path / "one", [1200])
    with pytest.raises(TrainingError, match=r"has 1 usable audio file: .* needs at least 2; add files"):
        build_data(data_cfg(root), TINY_MODEL, seed=0, max_steps=2)


def test_sample_seconds_beyond_the_sampling_limit_fails_before_training(tmp_path):
    """Before: training started and stopped at the first clip with "n_samples must be an integer in
    [1, 33554432], got 8000000000000", naming no option."""
    cfg = compose(BASE + ["trainer.sample_every=1", "trainer.sample_seconds=1e9", f"data.root={tmp_path / 'none'}"])
    with pytest.raises(TrainingError, match=r"trainer.sample_seconds=1e\+09 is 8,000,000,000,000 samples"):
        setup(cfg, tmp_path / "run")  # before the (missing) corpus is read


def test_segments_shorter_than_the_receptive_field_are_warned_about(tmp_path, caplog):
    """Before: ``data.segment_length=20`` for a model that sees 64 samples trained without a word."""
    root = write_corpus(tmp_path / "c", [1200] * 3)
    cfg = compose(BASE + ["data.segment_length=20", f"data.root={root}", "data.sample_rate=8000"])
    with caplog.at_level(logging.WARNING, logger="wavedil.train"):
        run = setup(cfg, tmp_path / "run")
    rf = run.model.receptive_field
    assert rf > 20
    assert any(f"data.segment_length=20 is shorter than the model's receptive field ({rf} samples)" in r.getMessage()
               for r in caplog.records)  # fmt: skip


# ----------------------------------------------------------------------------- 7. saved log-mel files


@pytest.mark.parametrize(
    "extra, says",
    [
        ({"hop_length": np.array([40, 40])}, r"its hop_length must be one integer \(this vocoder's is 40\), got int64 \(2,\)"),
        ({"sample_rate": "8000"}, r"its sample_rate must be one integer .* got <U4 \(\)"),
        ({"n_mels": 8.5}, r"its n_mels must be one integer .* got float64 \(\)"),
    ],
)
def test_mel_npz_settings_that_are_not_one_integer_are_named(vocoder_run, tmp_path, capsys, extra, says):
    """Before: a hop_length array gave a TypeError traceback, a string "invalid literal for int()"
    naming no file, and 8.5 was truncated to 8 and accepted."""
    mel = np.random.default_rng(0).standard_normal((MEL["n_mels"], 5)).astype(np.float32)
    np.savez(tmp_path / "m.npz", mel=mel, **extra)
    line = user_error(capsys, "vocode", str(vocoder_run), str(tmp_path / "m.npz"), "-o", str(tmp_path / "o.wav"))
    assert str(tmp_path / "m.npz") in line
    assert re.search(says, line), line
    assert not (tmp_path / "o.wav").exists()


@pytest.mark.parametrize("name", ["m.npy", "m.npz"])
def test_a_mel_file_of_python_objects_is_named_as_such(vocoder_run, tmp_path, capsys, name):
    """Before: "Object arrays cannot be loaded when allow_pickle=False" (of an .npz: naming no file)."""
    objects = np.array([{"mel": 1}], dtype=object)
    if name.endswith(".npz"):
        np.savez(tmp_path / name, mel=objects)
    else:
        np.save(tmp_path / name, objects, allow_pickle=True)
    line = user_error(capsys, "vocode", str(vocoder_run), str(tmp_path / name), "-o", str(tmp_path / "o.wav"))
    assert f"'{tmp_path / name}' holds Python objects, not numbers" in line


def test_a_numba_setting_that_stops_the_fast_back_end_is_named_and_warnings_are_one_line(tmp_path):
    """Before: ``NUMBA_NUM_THREADS=0`` gave "Number of threads specified must be > 0." without the
    variable, and ``auto``'s fallback note came as Python's ``file:line: RuntimeWarning: ...``
    followed by a line of wavedil's source."""
    env = {**os.environ, "NUMBA_NUM_THREADS": "0"}
    base = [sys.executable, "-m", "wavedil", "generate", "--model", "speech8k", "--seconds", "0.01", "--quiet"]
    auto = subprocess.run(base + ["-o", str(tmp_path / "a.wav")], env=env, capture_output=True, text=True, timeout=300)
    assert auto.returncode == 0, auto.stderr
    first = auto.stderr.splitlines()[0]
    assert first == (
        "warning: the 'fast' generation back-end failed to load (ValueError: Number of threads specified must be > 0; "
        "the environment sets NUMBA_NUM_THREADS='0' (read by numba): check or unset it); backend='auto' uses the others"
    )
    assert "backends.py" not in auto.stderr and (tmp_path / "a.wav").is_file()
    fast = subprocess.run(base + ["-o", str(tmp_path / "f.wav"), "--backend", "fast"], env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert fast.returncode == 2 and fast.stderr.splitlines()[-1].endswith(
        "failed to load with ValueError: Number of threads specified must be > 0; the environment sets "
        "NUMBA_NUM_THREADS='0' (read by numba): check or unset it"
    )
    assert not (tmp_path / "f.wav").exists()
