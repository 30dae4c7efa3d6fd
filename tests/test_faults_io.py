"""Bad inputs to the checkpoint and audio I/O: each gets one clear error naming the file and what
to do, and a failed write leaves nothing behind.

Covers: files that are not checkpoints (random bytes, text, a zip, a folder, an empty file), a
checkpoint whose config and weights disagree or whose config or sample rate is invalid, model
sizes that are not positive, a full disk while writing audio, truncated WAVs, and input paths
that are missing, folders or not audio. Tiny random-weight models: every test is quick.
"""

from __future__ import annotations

import errno
import logging
import os
import random
import zipfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import wavedil.audio as audio_mod
from wavedil import WaveNet, WaveNetConfig
from wavedil.audio import AudioReadError, AudioWriteError, read_audio, write_audio
from wavedil.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint, save_checkpoint
from wavedil.cli import main as cli_main

SR = 8000
TINY = dict(residual_channels=8, gate_channels=16, skip_channels=12, head_channels=10, layers_per_stack=3, stacks=2)
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def tiny_checkpoint(path: Path, **fields) -> Path:
    """A wavedil checkpoint of a random tiny model at 8 kHz; ``fields`` replace or add entries."""
    torch.manual_seed(0)
    model = WaveNet(WaveNetConfig(**TINY))
    obj = {"format": 1, "model": model.state_dict(), "model_config": model.config.to_dict(), "ema": None,
           "sample_rate": SR, "step": 1}  # fmt: skip
    obj.update(fields)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path)
    return path


def cli_error(capsys, *argv: str) -> str:
    """Run the CLI in process; it must exit with status 2 and one ``error:`` line, which is returned."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        cli_main(list(argv))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, err
    return errors[0]


def tone(seconds: float, rate: int = SR) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


# ----------------------------------------------------------------------------- 1: not a checkpoint


def _random_bytes(n: int) -> bytes:
    data = bytearray(random.Random(0).randbytes(n))
    data[0] = 0x17  # not the start of a zip, a pickle or a known format
    return bytes(data)


@pytest.mark.parametrize(
    "content, says",
    [
        (_random_bytes(4096), "unrecognised binary data"),
        (b"this is a text file, not a checkpoint\n" * 20, "holds text"),
    ],
    ids=["random-bytes", "text"],
)
def test_a_file_that_is_not_a_checkpoint_is_named_as_such_without_unsafe_advice(tmp_path, capsys, content, says):
    path = tmp_path / "garbage.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    msg = str(err.value)
    assert f"'{path}' is not a wavedil checkpoint" in msg and says in msg
    assert "could run code" not in msg and "weights_only" not in msg and "step_*.pt" in msg
    for argv in (["generate", str(path), "-o", str(tmp_path / "out.wav")], ["info", str(path)]):
        line = cli_error(capsys, *argv)
        assert "is not a wavedil checkpoint" in line and "weights_only" not in line, line
    assert not (tmp_path / "out.wav").exists()


def test_a_zip_archive_of_other_files_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "archive.pt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("notes.txt", "hello")
    with pytest.raises(CheckpointError, match=r"is not a wavedil checkpoint \(a zip archive, but not one torch.save wrote\)"):
        load_checkpoint(path)


def test_a_damaged_torch_file_is_corrupt_not_unsafe(tmp_path):
    path = tiny_checkpoint(tmp_path / "damaged.pt")
    data = bytearray(path.read_bytes())
    pickle_at = data.index(b"\x80\x02", data.index(b"data.pkl"))  # the stored (uncompressed) data.pkl
    data[pickle_at + 2 : pickle_at + 6] = b"zzzz"  # a bit flip torch's weights-only unpickler trips on
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    msg = str(err.value)
    assert f"checkpoint '{path}' is corrupt or truncated and cannot be read (Unsupported operand" in msg, msg
    assert "could run code" not in msg and "weights_only" not in msg and "trusted source" not in msg


def test_a_checkpoint_that_would_run_code_names_the_object_and_gives_no_unsafe_advice(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "model_config": {}, "payload": os.system}, path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    msg = str(err.value)
    assert "could run code" in msg and "system" in msg
    assert "weights_only" not in msg and "add_safe_globals" not in msg


def test_a_folder_an_empty_file_and_a_missing_file_as_checkpoint(tmp_path):
    (tmp_path / "dir.pt").mkdir()
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match=rf"checkpoint '{tmp_path / 'dir.pt'}' is a folder, not a checkpoint file"):
        load_checkpoint(tmp_path / "dir.pt")
    with pytest.raises(CheckpointError, match=rf"checkpoint '{tmp_path / 'empty.pt'}' is empty \(0 bytes\)"):
        load_checkpoint(tmp_path / "empty.pt")
    with pytest.raises(CheckpointError, match=rf"checkpoint '{tmp_path / 'nope.pt'}' does not exist"):
        load_checkpoint(tmp_path / "nope.pt")


def test_a_loaded_checkpoint_saves_back_as_a_safe_plain_dict(tmp_path):
    ckpt = load_checkpoint(tiny_checkpoint(tmp_path / "a.pt"))
    assert ckpt.path == tmp_path / "a.pt"
    save_checkpoint(ckpt, tmp_path / "b.pt")
    again = load_checkpoint(tmp_path / "b.pt")  # weights_only=True would refuse a dict subclass
    assert again.keys() == ckpt.keys() and torch.equal(again["model"]["embed.weight"], ckpt["model"]["embed.weight"])


# ----------------------------------------------------------------------------- 2: config vs weights


def test_weights_that_do_not_fit_the_config_give_a_short_error_naming_the_file(tmp_path, capsys):
    torch.manual_seed(0)
    other = WaveNet(WaveNetConfig(**{**TINY, "residual_channels": 16}))
    path = tiny_checkpoint(tmp_path / "mixed.pt", model=other.state_dict())  # config says 8 channels
    with pytest.raises(CheckpointError) as err:
        model_from_checkpoint(load_checkpoint(path))
    msg = str(err.value)
    assert f"checkpoint '{path}'" in msg and "model_config and its weights disagree" in msg
    assert "'embed.weight' is (256, 16) in the weights but (256, 8)" in msg
    assert "\n" not in msg and len(msg) < 500, msg
    line = cli_error(capsys, "generate", str(path), "-o", str(tmp_path / "x.wav"), "--seconds", "0.01")
    assert str(path) in line and "disagree" in line


def test_a_bad_output_in_the_checkpoints_config_is_not_called_a_command_line_option(tmp_path):
    path = tiny_checkpoint(tmp_path / "bad.pt", model_config={**WaveNetConfig(**TINY).to_dict(), "output": "wav"})
    with pytest.raises(CheckpointError) as err:
        model_from_checkpoint(load_checkpoint(path))
    msg = str(err.value)
    assert f"checkpoint '{path}' holds an invalid model_config" in msg and "output must be one of" in msg
    assert "model.output" not in msg


def test_model_from_checkpoint_names_a_path_given_explicitly():
    cfg = WaveNetConfig(**TINY).to_dict()
    with pytest.raises(CheckpointError, match="checkpoint 'x.pt': its 'model' weights are a str"):
        model_from_checkpoint({"model": "oops", "model_config": cfg}, path="x.pt")


# ----------------------------------------------------------------------------- 3: model sizes


@pytest.mark.parametrize(
    "option, value, minimum",
    [("residual_channels", -3, 1), ("residual_channels", 0, 1), ("gate_channels", -4, 2), ("skip_channels", 0, 1),
     ("kernel_size", 1, 2), ("residual_channels", 8.0, 1)],
)  # fmt: skip
def test_every_size_of_the_model_is_checked_before_any_layer_is_built(option, value, minimum):
    with pytest.raises(ValueError, match=rf"^{option} must be an integer >= {minimum}, got {value!r}$"):
        WaveNet(WaveNetConfig(**{**TINY, option: value}))


def test_info_of_a_yaml_with_negative_residual_channels(tmp_path, capsys):
    (tmp_path / "neg.yaml").write_text("residual_channels: -3\n")
    line = cli_error(capsys, "info", str(tmp_path / "neg.yaml"))
    assert "residual_channels must be an integer >= 1, got -3" in line


# ----------------------------------------------------------------------------- 4: full disk


class _FullDisk:
    """A file object on a disk that fills up after ``room`` bytes."""

    def __init__(self, fh, room: int) -> None:
        self.fh, self.room = fh, room

    def write(self, data) -> int:
        data = bytes(data)
        self.fh.write(data[: self.room])
        self.fh.flush()
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return len(data)

    def __getattr__(self, name):
        return getattr(self.fh, name)


def test_a_full_disk_while_writing_audio_names_the_file_and_leaves_nothing(tmp_path, monkeypatch, capfd):
    real_atomic_open = audio_mod.atomic_open

    @contextmanager
    def full_disk(path):
        with real_atomic_open(path) as fh:
            yield _FullDisk(fh, room=100)

    monkeypatch.setattr(audio_mod, "atomic_open", full_disk)
    out = tmp_path / "out.wav"
    out.write_bytes(b"the previous take")
    for name in ("out.wav", "new.flac"):
        with pytest.raises(AudioWriteError) as err:
            write_audio(tmp_path / name, torch.from_numpy(tone(0.5)), SR)
        msg = str(err.value)
        assert isinstance(err.value, OSError) and err.value.errno == errno.ENOSPC
        assert f"cannot write audio file '{tmp_path / name}'" in msg and "no space left" in msg
        assert "free some space" in msg and "another folder" in msg
    assert out.read_bytes() == b"the previous take"  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.wav"]  # no partial or temporary file
    assert "Exception ignored" not in capfd.readouterr().err


def test_write_audio_round_trips_through_memory(tmp_path):
    wav = torch.from_numpy(tone(0.1))
    for name in ("a.wav", "a.flac"):
        write_audio(tmp_path / name, wav, SR)
        back, rate = read_audio(tmp_path / name)
        assert rate == SR and back.shape == wav.shape and torch.allclose(back, wav, atol=1e-4)


# ----------------------------------------------------------------------------- 5: truncated WAV


def truncated_wav(tmp_path: Path) -> tuple[Path, int, int]:
    """A 16-bit WAV whose header declares 1 s but which holds about 0.05 s: (path, declared, present)."""
    full = tmp_path / "full.wav"
    sf.write(full, tone(1.0), SR, subtype="PCM_16")
    path = tmp_path / "cut.wav"
    path.write_bytes(full.read_bytes()[: 44 + 2 * 400])
    full.unlink()
    return path, SR, sf.info(path).frames


def test_a_truncated_wav_is_refused_where_it_must_be_whole_and_warned_about_otherwise(tmp_path, caplog):
    path, declared, present = truncated_wav(tmp_path)
    with pytest.raises(AudioReadError) as err:
        read_audio(path, truncated="error")
    msg = str(err.value)
    assert f"audio file '{path}' is truncated" in msg
    assert f"declares {declared} frames (1.00 s) but the file holds {present}" in msg and "complete file" in msg

    caplog.set_level(logging.WARNING, logger="wavedil.audio")
    wav, _ = read_audio(path)
    assert wav.shape == (present,)
    assert [r.getMessage() for r in caplog.records if "truncated" in r.getMessage() and str(path) in r.getMessage()]
    caplog.clear()
    read_audio(path, start=100, frames=200)  # a span inside the frames present: nothing to say
    read_audio(path, truncated="accept")
    assert not caplog.records


def test_generate_refuses_a_truncated_prompt(tmp_path):
    from wavedil.synthesis import generate_to_files

    path, _, _ = truncated_wav(tmp_path)
    ckpt = tiny_checkpoint(tmp_path / "m.pt")
    with pytest.raises(AudioReadError, match=rf"audio file '{path}' is truncated"):
        generate_to_files(ckpt, tmp_path / "out.wav", 0.01, prompt=path, backend="torch", device="cpu", seed=0)
    assert not (tmp_path / "out.wav").exists()


def test_a_whole_wav_is_not_called_truncated(tmp_path, caplog):
    sf.write(tmp_path / "ok.wav", tone(0.2), SR, subtype="PCM_16")
    caplog.set_level(logging.WARNING, logger="wavedil.audio")
    wav, _ = read_audio(tmp_path / "ok.wav", truncated="error")
    assert wav.shape == (int(0.2 * SR),) and not caplog.records


# ----------------------------------------------------------------------------- 6: bad input paths


def test_audio_input_paths_that_are_missing_folders_empty_or_not_audio(tmp_path):
    (tmp_path / "folder.wav").mkdir()
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "notes.wav").write_text("not audio\n" * 10)
    cases = {
        "nonexist.wav": "audio file '{p}' does not exist",
        "folder.wav": "'{p}' is a folder, not an audio file",
        "empty.wav": "audio file '{p}' is empty (0 bytes)",
        "notes.wav": "cannot read '{p}' as audio",
    }
    for name, says in cases.items():
        p = tmp_path / name
        with pytest.raises(AudioReadError) as err:
            read_audio(p)
        msg = str(err.value)
        assert says.format(p=p) in msg, msg
        assert "System error" not in msg
    with pytest.raises(AudioReadError) as err:
        read_audio(tmp_path / "notes.wav")
    assert "WAV" in str(err.value) and "FLAC" in str(err.value)  # the formats soundfile reads


@pytest.mark.skipif(IS_ROOT, reason="file permissions do not stop root from reading")
def test_an_unreadable_audio_file_says_permission_denied(tmp_path):
    path = tmp_path / "locked.wav"
    sf.write(path, tone(0.1), SR)
    path.chmod(0)
    with pytest.raises(AudioReadError, match=rf"cannot open audio file '{path}': Permission denied"):
        read_audio(path)


def test_a_folder_or_missing_file_as_prompt_is_a_one_line_cli_error(tmp_path, capsys):
    ckpt = tiny_checkpoint(tmp_path / "m.pt")
    (tmp_path / "prompts").mkdir()
    line = cli_error(capsys, "generate", str(ckpt), "-o", str(tmp_path / "x.wav"), "--seconds", "0.01",
                     "--prompt", str(tmp_path / "prompts"), "--backend", "torch")  # fmt: skip
    assert "is a folder, not an audio file" in line
    line = cli_error(capsys, "generate", str(ckpt), "-o", str(tmp_path / "x.wav"), "--seconds", "0.01",
                     "--prompt", str(tmp_path / "nonexist.wav"), "--backend", "torch")  # fmt: skip
    assert "does not exist" in line and "System error" not in line


# ----------------------------------------------------------------------------- 7: sample rate


@pytest.mark.parametrize("rate", [0, -8000, 8000.5, "8000", True])
def test_an_invalid_sample_rate_in_a_checkpoint_is_refused_naming_it(tmp_path, rate):
    path = tiny_checkpoint(tmp_path / "sr.pt", sample_rate=rate)
    with pytest.raises(CheckpointError, match=rf"checkpoint '{path}' records an invalid sample_rate"):
        load_checkpoint(path)


def test_a_missing_sample_rate_comes_from_the_config_or_is_warned_about(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="wavedil.checkpoint")
    path = tiny_checkpoint(tmp_path / "data.pt", sample_rate=None, config={"data": {"sample_rate": 22050}})
    assert load_checkpoint(path)["sample_rate"] == 22050 and not caplog.records
    path = tiny_checkpoint(tmp_path / "bare.pt")
    obj = torch.load(path, weights_only=True)
    del obj["sample_rate"]
    torch.save(obj, path)
    assert "sample_rate" not in load_checkpoint(path)
    (msg,) = [r.getMessage() for r in caplog.records]
    assert f"checkpoint '{path}' records no sample_rate: assuming 16000 Hz" in msg
    assert load_checkpoint(tiny_checkpoint(tmp_path / "float.pt", sample_rate=8000.0))["sample_rate"] == 8000


def test_a_format_that_cannot_hold_the_rate_is_refused_before_writing(tmp_path):
    """Before: writing .ogg at 256 kHz crashed the process (libsndfile's Vorbis encoder), .flac
    above 655,350 Hz raised a LibsndfileError traceback after sampling."""
    from wavedil.audio import check_format_rate, write_audio

    wav = torch.zeros(100)
    with pytest.raises(ValueError, match=r"cannot write '.*a\.ogg' at 256,000 Hz: \.ogg holds at most 192,000 Hz; write a \.wav"):
        write_audio(tmp_path / "a.ogg", wav, 256_000)
    with pytest.raises(ValueError, match=r"\.flac holds at most 655,350 Hz"):
        check_format_rate(tmp_path / "a.FLAC", 700_000)
    assert not any(tmp_path.iterdir())
    check_format_rate(tmp_path / "a.ogg", 192_000)
    write_audio(tmp_path / "a.wav", wav, 700_000)  # WAV has no such limit
    assert sf.info(str(tmp_path / "a.wav")).samplerate == 700_000


def test_a_file_whose_rate_is_absurdly_low_is_refused_not_upsampled_into_gigabytes(tmp_path):
    """Before: a WAV whose header said 1 Hz was resampled 8,000-fold (eval, vocode, a prompt),
    ending in a torchaudio allocation traceback."""
    path = tmp_path / "one_hz.wav"
    sf.write(str(path), np.zeros(1000, np.float32), 1)
    with pytest.raises(AudioReadError, match=r"one_hz\.wav': resampling 1 Hz audio to 8,000 Hz would make it 8,000 times longer \(the limit is 64x\)"):
        read_audio(path, sample_rate=8000)
    sf.write(str(tmp_path / "ok.wav"), np.zeros(1000, np.float32), 125)  # 64x exactly: done
    wav, rate = read_audio(tmp_path / "ok.wav", sample_rate=8000)
    assert rate == 8000 and wav.shape == (64_000,)


def test_audio_after_the_data_a_wav_header_declares_is_warned_about(tmp_path, caplog):
    """Before: a WAV whose header declares less data than the file holds (a recorder that updated
    its header, then went on writing and was stopped) was read as declared, the rest dropped
    without a word. Now a warning names the frames left unread and the repair; a chunk after the
    data (LIST) or zero padding is no such tail."""
    import struct

    full = tmp_path / "full.wav"
    sf.write(full, tone(0.5), SR, subtype="PCM_16")  # 4,000 frames
    raw = full.read_bytes()
    stale = bytearray(raw)
    stale[40:44] = struct.pack("<I", 2 * 1000)  # the data chunk declares 1,000 frames
    stale[4:8] = struct.pack("<I", 36 + 2 * 1000)
    (tmp_path / "stale.wav").write_bytes(bytes(stale))
    caplog.set_level(logging.WARNING, logger="wavedil.audio")
    wav, _ = read_audio(tmp_path / "stale.wav")
    assert wav.shape == (1000,)
    msg = " ".join(r.getMessage() for r in caplog.records)
    assert f"audio file '{tmp_path / 'stale.wav'}' declares 1000 frames in its header, but 3,000 more frames" in msg
    assert "(0.38 s)" in msg and "sox --ignore-length" in msg
    caplog.clear()
    listed = raw + b"LIST" + struct.pack("<I", 4) + b"INFO"  # a chunk after the data
    padded = raw + bytes(512)  # zero padding to a sector
    for name, data in (("listed.wav", listed), ("padded.wav", padded)):
        (tmp_path / name).write_bytes(data)
        assert read_audio(tmp_path / name)[0].shape == (4000,)
    read_audio(tmp_path / "stale.wav", start=0, frames=500)  # a span inside the declared frames: nothing to say
    assert not caplog.records
