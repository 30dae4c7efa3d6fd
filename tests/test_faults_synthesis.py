"""Bad input to ``wavedil generate`` / ``wavedil vocode`` (``--stream`` too) and their library calls:
every one is refused with a clear error (exit status 2 from the CLI, no traceback), before any
work, and no input or earlier output is overwritten or half-written.

Tiny random-weight checkpoints (as in test_commands.py), the torch back-end, in process.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import wavedil.synthesis as synthesis_mod
from wavedil import WaveNet, WaveNetConfig
from wavedil.conditioning import MelSpec
from wavedil.cli import main as cli_main
from wavedil.synthesis import generate_to_files, vocode_file, vocode_stream_file
from wavedil.vocoder_stream import StreamingVocoder, iter_npy_chunks

from test_commands import MEL, SR, TINY, one_thread, save_run  # noqa: F401 (one_thread: an autouse fixture)

N_MELS = MEL["n_mels"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return save_run(tmp_path_factory.mktemp("plain"))


@pytest.fixture(scope="module")
def vocoder_run(tmp_path_factory) -> Path:
    return save_run(tmp_path_factory.mktemp("voc"), mel=MEL)


@pytest.fixture
def recording(tmp_path) -> Path:
    """0.1 s of a tone at 8 kHz (20 mel frames of hop 40)."""
    path = tmp_path / "in.wav"
    t = np.arange(SR // 10) / SR
    sf.write(path, (0.5 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), SR, subtype="PCM_16")
    return path


@pytest.fixture
def no_generation(monkeypatch):
    """Fail the test if sampling starts (every check must come before it)."""
    monkeypatch.setattr(synthesis_mod, "generate", lambda *a, **k: pytest.fail("generation started"))
    monkeypatch.setattr(WaveNet, "step", lambda *a, **k: pytest.fail("generation started"))


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    """``wavedil ARGV`` in process: (exit status, standard error)."""
    capsys.readouterr()
    try:
        cli_main(list(argv))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, capsys.readouterr().err


def assert_user_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2, err
    assert err.splitlines()[-1].startswith("error: ") and "Traceback" not in err and ".tmp" not in err, err
    for fragment in fragments:
        assert fragment in err, err


def npy_bytes(*arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    for a in arrays:
        np.save(buf, a)
    return buf.getvalue()


def frames(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((N_MELS, n)).astype(np.float32)


def npy_raw(header: str, data: bytes = b"", version: tuple[int, int] = (1, 0)) -> bytes:
    """A hand-made ``.npy`` chunk: magic, version, header length, header text, data."""
    size = 2 if version[0] == 1 else 4
    return b"\x93NUMPY" + bytes(version) + len(header).to_bytes(size, "little") + header.encode("latin1") + data


def read_all(data: bytes | io.RawIOBase) -> list[torch.Tensor]:
    stream = io.BytesIO(data) if isinstance(data, bytes) else data
    return list(iter_npy_chunks(stream, N_MELS))


# ----------------------------------------------------------------------------- 1. NaN / inf frames


def test_streaming_vocoder_refuses_non_finite_frames_and_stays_usable():
    torch.manual_seed(0)
    model = WaveNet(WaveNetConfig(**TINY, mel=MEL)).eval()
    first, second = torch.from_numpy(frames(4, 1)), torch.from_numpy(frames(6, 2))
    voc = StreamingVocoder(model, seed=5, backend="torch")
    got = [voc.push(first)]
    bad = second.clone()
    bad[3, 2] = float("nan")
    with pytest.raises(ValueError, match=r"frame 2 of the 6 frames pushed \(frame 6 of the stream\) holds NaN or inf"):
        voc.push(bad)
    huge = second.double()
    huge[0, 5] = 1e300  # finite in float64, inf in the vocoder's float32
    with pytest.raises(ValueError, match=r"frame 5 of the 6 frames .* NaN or infinite"):
        voc.push(huge)
    with pytest.raises(ValueError, match="frame 0 of the 1 frames"):
        voc.push(torch.full((N_MELS, 1), float("-inf")))
    assert voc.frames_in == 4
    got += [voc.push(second), voc.finish()]
    # the refused pushes left no trace: the same as a stream that never saw them
    ref = StreamingVocoder(model, seed=5, backend="torch")
    expected = [ref.push(first), ref.push(second), ref.finish()]
    assert torch.equal(torch.cat(got, dim=1), torch.cat(expected, dim=1))


@pytest.mark.parametrize(
    "value, dtype, says",
    [
        (np.nan, np.float32, "holds NaN or infinite values, first in its frame 1"),
        (np.inf, np.float32, "holds NaN or infinite values, first in its frame 1"),
        (1e39, np.float64, "holds NaN or infinite values (beyond float32's range), first in its frame 1"),
    ],
)
def test_npy_chunk_with_non_finite_frames_is_refused_naming_it(value, dtype, says):
    bad = frames(3, 1).astype(dtype)
    bad[5, 1] = value
    with pytest.raises(ValueError) as err:
        read_all(npy_bytes(frames(2), bad, frames(2)))
    assert f"chunk 2 of the stream (at byte {len(npy_bytes(frames(2))):,}) " + says in str(err.value)


def test_stream_cli_refuses_a_nan_chunk_and_writes_nothing(vocoder_run, tmp_path, capsys):
    good = npy_bytes(frames(5, 1), frames(5, 2), frames(5, 3))
    (tmp_path / "good.bin").write_bytes(good)
    code, err = run_cli(capsys, "vocode", str(vocoder_run), str(tmp_path / "good.bin"), "-o", str(tmp_path / "ok.wav"),
                        "--stream", "--backend", "torch", "--seed", "1")  # fmt: skip
    assert code == 0, err
    assert sf.info(tmp_path / "ok.wav").frames == 15 * 40  # the same chunks, finite: vocoded
    nan = frames(5, 2)
    nan[:, 3] = np.nan
    (tmp_path / "nan.bin").write_bytes(npy_bytes(frames(5, 1), nan, frames(5, 3)))
    code, err = run_cli(capsys, "vocode", str(vocoder_run), str(tmp_path / "nan.bin"), "-o", str(tmp_path / "st.wav"),
                        "--stream", "--backend", "torch")  # fmt: skip
    assert_user_error(code, err, "chunk 2 of the stream", "NaN or infinite", "frame 3")
    assert not (tmp_path / "st.wav").exists()


# ----------------------------------------------------------------------------- 2. malformed stream input

GOOD_HEADER = "{'descr': '<f4', 'fortran_order': False, 'shape': (8, 3), }"
DATA = frames(3).tobytes()


@pytest.mark.parametrize(
    "chunk, says",
    [
        (b"\x93NUMPY\x01", "is truncated: the stream ended after 1 of the 2 bytes of its .npy format version"),
        (b"\x93NUMPY\x09\x00\x10\x00", "has .npy format version 9.0, not 1.0, 2.0 or 3.0"),
        (npy_raw(GOOD_HEADER)[:-3], "is truncated: the stream ended after"),
        (npy_raw("{'descr': '<f4', 'fortran_order': False, 'shape': (8, 3"), "has a broken .npy header (not a dict"),
        (npy_raw("{'fortran_order': False, 'shape': (8, 3)}", DATA), "has a .npy header without 'descr'"),
        (npy_raw("[1, 2, 3]", DATA), "has a .npy header that is not a dict"),
        (npy_raw("{'descr': '<zz', 'fortran_order': False, 'shape': (8, 3)}", DATA), "holds data of type '<zz', not float"),
        (npy_raw("{'descr': '<i4', 'fortran_order': False, 'shape': (8, 3)}", DATA), "holds data of type '<i4', not float"),
        (npy_raw("{'descr': '<f4', 'fortran_order': False, 'shape': (8, -3)}"), "has shape (8, -3), not (8, frames)"),
        (npy_raw("{'descr': '<f4', 'fortran_order': False, 'shape': (5, 3)}", DATA), "has shape (5, 3), not (8, frames)"),
        (npy_raw("{'descr': '<f4', 'fortran_order': False, 'shape': (8, 3, 1)}", DATA), "has shape (8, 3, 1)"),
        (npy_raw("{'descr': '<f4', 'fortran_order': False, 'shape': [8, 3]}", DATA), "has shape [8, 3]"),
        (npy_raw("{'descr': '<f4', 'fortran_order': False, 'shape': (8, 2.5)}", DATA), "has shape (8, 2.5)"),
        (npy_raw("{'descr': '<f4', 'fortran_order': False, 'shape': (8, 10**11)}"), "has a broken .npy header"),
        (npy_raw("{'descr': '<f4', 'fortran_order': False, 'shape': (8, 100000000000)}"),
         "declares 100,000,000,000 frames; a chunk holds at most"),
        (npy_raw("{'descr': '<f4', 'fortran_order': 'no', 'shape': (8, 3)}", DATA), "has fortran_order 'no'"),
        (npy_raw(GOOD_HEADER, DATA[:-5]), "is truncated: the stream ended after 91 of the 96 bytes of its 3 frames"),
        (b"\x93NUMPY\x02\x00" + (10**9).to_bytes(4, "little"), "declares a 1,000,000,000-byte .npy header"),
        (b"RIFF\x00\x00", "is not a .npy array (it starts with b'RIFF"),
    ],
)  # fmt: skip
def test_malformed_stream_chunks_are_refused_naming_chunk_and_problem(chunk, says):
    first = npy_bytes(frames(2))
    got = []
    with pytest.raises(ValueError) as err:
        for c in iter_npy_chunks(io.BytesIO(first + chunk), N_MELS):
            got.append(c)
    msg = str(err.value)
    assert len(got) == 1 and torch.equal(got[0], torch.from_numpy(frames(2)))  # the good chunk before it came through
    assert msg.startswith(f"chunk 2 of the stream (at byte {len(first):,}) {says}"), msg
    assert "(8, frames)" in msg and "numpy.save" in msg  # what a chunk must be


def test_stream_read_in_small_pieces_like_a_pipe_gives_the_same_chunks():
    """A pipe hands over what has arrived: ``read(n)`` may return fewer bytes; nothing is lost."""

    class Trickle(io.RawIOBase):
        def __init__(self, data: bytes) -> None:
            self.data, self.pos = data, 0

        def readable(self) -> bool:
            return True

        def read(self, n: int = -1) -> bytes:
            part = self.data[self.pos : self.pos + min(n, 7)]
            self.pos += len(part)
            return part

    data = npy_bytes(frames(2, 1), frames(0), np.asfortranarray(frames(5, 2)), frames(3, 3).astype(np.float64))
    whole, trickled = read_all(data), read_all(Trickle(data))
    assert [c.shape[1] for c in whole] == [2, 0, 5, 3]
    assert all(torch.equal(a, b) for a, b in zip(whole, trickled, strict=True))
    assert torch.equal(whole[2], torch.from_numpy(frames(5, 2)))


@pytest.mark.parametrize(
    "chunk, says",
    [
        (npy_raw("{'descr': '<f4', 'fortran_order': False, 'shape': (8, 3"), "broken .npy header"),
        (npy_raw("{'fortran_order': False, 'shape': (8, 3)}", DATA), "without 'descr'"),
        (npy_raw("{'descr': '<zz', 'fortran_order': False, 'shape': (8, 3)}", DATA), "'<zz', not float"),
        (npy_raw("{'descr': '<f4', 'fortran_order': False, 'shape': (40, 100000000000)}"), "has shape (40, "),
        (npy_raw("{'descr': '<f4', 'fortran_order': False, 'shape': (8, 100000000000)}"), "declares 100,000,000,000"),
        (b"\x93NUMPY\x01", "truncated"),
    ],
)
def test_stream_cli_reports_malformed_chunks_as_user_errors(vocoder_run, tmp_path, capsys, chunk, says):
    (tmp_path / "x.bin").write_bytes(chunk)
    code, err = run_cli(capsys, "vocode", str(vocoder_run), str(tmp_path / "x.bin"), "-o", str(tmp_path / "o.wav"),
                        "--stream", "--backend", "torch")  # fmt: skip
    assert_user_error(code, err, "chunk 1 of the stream (at byte 0)", says, "(8, frames)")
    assert not (tmp_path / "o.wav").exists()


def test_stream_without_frames_or_input_is_a_user_error(vocoder_run, tmp_path, capsys):
    (tmp_path / "empty.bin").write_bytes(npy_bytes(frames(0), frames(0)))
    code, err = run_cli(capsys, "vocode", str(vocoder_run), str(tmp_path / "empty.bin"), "-o", str(tmp_path / "o.wav"),
                        "--stream", "--backend", "torch")  # fmt: skip
    assert_user_error(code, err, "the stream held no log-mel frames (2 chunk(s)")
    code, err = run_cli(capsys, "vocode", str(vocoder_run), str(tmp_path / "missing.bin"), "-o", str(tmp_path / "o.wav"),
                        "--stream")  # fmt: skip
    assert_user_error(code, err, "the stream input", "missing.bin' does not exist")
    assert not (tmp_path / "o.wav").exists()


# ----------------------------------------------------------------------------- 3. an output that is an input


def test_vocode_refuses_to_overwrite_its_input(vocoder_run, recording, tmp_path, capsys, no_generation):
    before = recording.read_bytes()
    with pytest.raises(ValueError, match=r"-o '.*in\.wav' is the input '.*in\.wav': writing it would overwrite"):
        vocode_file(vocoder_run, recording, recording)
    (tmp_path / "sub").mkdir()
    with pytest.raises(ValueError, match="is the input"):  # another spelling of the same file
        vocode_file(vocoder_run, recording, tmp_path / "sub" / ".." / "in.wav")
    os.link(recording, tmp_path / "hard.wav")
    with pytest.raises(ValueError, match="is the input"):  # a hard link to it
        vocode_file(vocoder_run, recording, tmp_path / "hard.wav")
    code, err = run_cli(capsys, "vocode", str(vocoder_run), str(recording), "-o", str(recording))
    assert_user_error(code, err, "is the input", "choose another -o path")
    assert recording.read_bytes() == before


def test_vocode_refuses_save_mel_onto_the_output_or_the_input(vocoder_run, recording, tmp_path, capsys, no_generation):
    out = tmp_path / "vv.wav"
    with pytest.raises(ValueError, match=r"--save-mel '.*vv\.wav' is the -o output '.*vv\.wav'.*own \.npy name"):
        vocode_file(vocoder_run, recording, out, save_mel=out)
    code, err = run_cli(capsys, "vocode", str(vocoder_run), str(recording), "-o", str(out), "--save-mel", str(out))
    assert_user_error(code, err, "is the -o output")
    np.save(tmp_path / "m.npy", frames(20))
    before = (tmp_path / "m.npy").read_bytes()
    with pytest.raises(ValueError, match=r"--save-mel '.*m\.npy' is the input"):
        vocode_file(vocoder_run, tmp_path / "m.npy", out, save_mel=tmp_path / "m.npy")
    assert not out.exists() and (tmp_path / "m.npy").read_bytes() == before


def test_generate_refuses_an_output_that_is_its_prompt(run_dir, recording, no_generation):
    before = recording.read_bytes()
    with pytest.raises(ValueError, match=r"output path '.*in\.wav' is the --prompt"):
        generate_to_files(run_dir, recording, 0.01, prompt=recording)
    assert recording.read_bytes() == before


# ----------------------------------------------------------------------------- 4. --save-mel checked up front


def test_save_mel_path_is_checked_before_any_work(vocoder_run, recording, tmp_path, capsys, no_generation):
    (tmp_path / "outdir").mkdir()
    with pytest.raises(ValueError, match=r"--save-mel '.*outdir' is a directory: give a file name such as"):
        vocode_file(vocoder_run, recording, tmp_path / "v.wav", save_mel=tmp_path / "outdir")
    code, err = run_cli(capsys, "vocode", str(vocoder_run), str(recording), "-o", str(tmp_path / "v.wav"),
                        "--save-mel", str(tmp_path / "outdir"))  # fmt: skip
    assert_user_error(code, err, "--save-mel", "is a directory")
    with pytest.raises(ValueError, match=r"--save-mel '.*mel\.txt' must end in \.npy"):
        vocode_file(vocoder_run, recording, tmp_path / "v.wav", save_mel=tmp_path / "mel.txt")
    (tmp_path / "a_file").write_text("not a folder")
    with pytest.raises(ValueError, match="cannot create the folder of --save-mel .*a_file.*--save-mel path"):
        vocode_file(vocoder_run, recording, tmp_path / "v.wav", save_mel=tmp_path / "a_file" / "mel.npy")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "in.wav", "outdir"]


@pytest.mark.parametrize("kwargs, says", [(dict(max_seconds=0.05), "the limit is --max-seconds 0.05"),
                                          (dict(speaker="p1"), "not speaker-conditioned"),
                                          (dict(max_seconds=float("nan")), "--max-seconds must be a positive number"),
                                          (dict(weights="fp8"), "fp8")])  # fmt: skip
def test_save_mel_is_written_only_when_the_run_succeeds(vocoder_run, recording, tmp_path, kwargs, says):
    mel = tmp_path / "mel.npy"
    with pytest.raises(ValueError, match=says):
        vocode_file(vocoder_run, recording, tmp_path / "v.wav", save_mel=mel, backend="torch", **kwargs)
    assert not mel.exists() and not (tmp_path / "v.wav").exists()


def test_save_mel_of_a_mel_input_is_written_not_ignored(vocoder_run, tmp_path):
    mel = frames(12, 4)
    np.savez(tmp_path / "in.npz", mel=mel, hop_length=40, sample_rate=SR)
    res = vocode_file(vocoder_run, tmp_path / "in.npz", tmp_path / "v.wav", save_mel=tmp_path / "copy.npy",
                      backend="torch", seed=0)  # fmt: skip
    assert res.mel_frames == 12 and sf.info(tmp_path / "v.wav").frames == 12 * 40
    np.testing.assert_array_equal(np.load(tmp_path / "copy.npy"), mel)


# ----------------------------------------------------------------------------- 5. numbered batch outputs


def test_generate_checks_every_numbered_output_before_sampling(run_dir, tmp_path, capsys, no_generation):
    (tmp_path / "bt" / "o_001.wav").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"output path '.*o_001\.wav' \(file 2 of --batch 3\) is a directory"):
        generate_to_files(run_dir, tmp_path / "bt" / "o.wav", 0.01, batch=3)
    code, err = run_cli(capsys, "generate", str(run_dir), "-o", str(tmp_path / "bt" / "o.wav"), "--batch", "3",
                        "--seconds", "0.01", "--quiet")  # fmt: skip
    assert_user_error(code, err, "o_001.wav' (file 2 of --batch 3) is a directory")
    assert sorted(p.name for p in (tmp_path / "bt").iterdir()) == ["o_001.wav"]


# ----------------------------------------------------------------------------- 6. --device


@pytest.mark.parametrize(
    "device, gpus, says",
    [
        ("tpu", 0, "--device 'tpu' is not a device: use cpu (no CUDA GPU is available here)"),
        ("tpu", 2, "--device 'tpu' is not a device: use cpu, cuda, or cuda:0 .. cuda:1"),
        ("meta", 0, "--device meta: wavedil samples on cpu or cuda only"),
        ("cuda", 0, "--device cuda but no CUDA GPU is available here: use --device cpu"),
        ("cuda:0", 0, "--device cuda:0 but no CUDA GPU is available here"),
        ("cuda:3", 2, "--device cuda:3 but this machine has 2 CUDA GPU(s): use cpu, cuda, or cuda:0 .. cuda:1"),
    ],
)
def test_device_is_validated_before_any_work(run_dir, vocoder_run, recording, tmp_path, monkeypatch, capsys,
                                             no_generation, device, gpus, says):  # fmt: skip
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    monkeypatch.setattr(synthesis_mod, "model_from_checkpoint", lambda *a, **k: pytest.fail("checkpoint loaded"))
    with pytest.raises(ValueError) as err:
        generate_to_files(run_dir, tmp_path / "g.wav", 0.01, device=device)
    assert says in str(err.value)
    with pytest.raises(ValueError) as err:
        vocode_file(vocoder_run, recording, tmp_path / "v.wav", device=device)
    assert says in str(err.value)
    code, err = run_cli(capsys, "vocode", str(vocoder_run), "-", "-o", "-", "--stream", "--device", device)
    assert_user_error(code, err, says)
    code, err = run_cli(capsys, "generate", str(run_dir), "-o", str(tmp_path / "g.wav"), "--device", device)
    assert_user_error(code, err, says)
    assert not (tmp_path / "g.wav").exists() and not (tmp_path / "v.wav").exists()


def test_device_cpu_still_works(run_dir, tmp_path):
    res = generate_to_files(run_dir, tmp_path / "g.wav", 0.005, device="cpu", backend="torch", seed=0)
    assert sf.info(res.paths[0]).frames == 40


# ----------------------------------------------------------------------------- 7. --stream with other options


def test_stream_refuses_save_mel_and_honours_max_seconds(vocoder_run, tmp_path):
    (tmp_path / "c.bin").write_bytes(npy_bytes(frames(5, 1), frames(5, 2), frames(5, 3)))  # 15 frames: 0.075 s
    with pytest.raises(ValueError, match="--save-mel does not apply to --stream"):
        vocode_stream_file(vocoder_run, tmp_path / "c.bin", tmp_path / "o.wav", save_mel=tmp_path / "m.npy")
    with pytest.raises(ValueError, match=r"longer than --max-seconds 0\.04: chunk 2 brings it to 10 frames \(0\.05 s\)"):
        vocode_stream_file(vocoder_run, tmp_path / "c.bin", tmp_path / "o.wav", max_seconds=0.04, backend="torch")
    with pytest.raises(ValueError, match="--max-seconds must be a positive number, got 0"):
        vocode_stream_file(vocoder_run, tmp_path / "c.bin", tmp_path / "o.wav", max_seconds=0)
    assert not (tmp_path / "o.wav").exists() and not (tmp_path / "m.npy").exists()
    stats = vocode_stream_file(vocoder_run, tmp_path / "c.bin", tmp_path / "o.wav", max_seconds=0.08, backend="torch")
    assert stats.frames == 15 and sf.info(tmp_path / "o.wav").frames == 15 * 40


def test_stream_refuses_to_overwrite_its_input(vocoder_run, tmp_path):
    src = tmp_path / "chunks.wav"  # an odd name for a stream, but it must not be replaced by the output
    src.write_bytes(npy_bytes(frames(5)))
    with pytest.raises(ValueError, match="is the input"):
        vocode_stream_file(vocoder_run, src, src, backend="torch")
    assert src.read_bytes() == npy_bytes(frames(5))


def test_stream_cli_passes_save_mel_and_max_seconds(vocoder_run, tmp_path, capsys):
    """``vocode --stream`` hands ``--save-mel`` (refused) and ``--max-seconds`` (enforced) to the
    stream; without ``--max-seconds`` a stream has no limit (the whole-file default of 600 s
    would cut a long stream)."""
    (tmp_path / "c.bin").write_bytes(npy_bytes(frames(5, 1), frames(5, 2), frames(5, 3)))  # 0.075 s
    out = tmp_path / "o.wav"
    code, err = run_cli(capsys, "vocode", str(vocoder_run), str(tmp_path / "c.bin"), "-o", str(out), "--stream",
                        "--save-mel", str(tmp_path / "m.npy"), "--backend", "torch")  # fmt: skip
    assert code == 2 and "--save-mel does not apply to --stream" in err
    code, err = run_cli(capsys, "vocode", str(vocoder_run), str(tmp_path / "c.bin"), "-o", str(out), "--stream",
                        "--max-seconds", "0.04", "--backend", "torch")  # fmt: skip
    assert code == 2 and "longer than --max-seconds 0.04" in err and not out.exists()
    code, err = run_cli(capsys, "vocode", str(vocoder_run), str(tmp_path / "c.bin"), "-o", str(out), "--stream",
                        "--backend", "torch")  # fmt: skip
    assert code == 0 and sf.info(out).frames == 15 * 40


def test_seconds_shorter_than_one_sample_names_the_option(run_dir, tmp_path, no_generation):
    with pytest.raises(ValueError, match=r"--seconds 1e-05 is less than one sample at 8000 Hz: give at least 0\.000125"):
        generate_to_files(run_dir, tmp_path / "o.wav", 0.00001, backend="torch", device="cpu")


def test_ctrl_c_and_a_closed_pipe_end_the_cli_without_a_traceback(run_dir, tmp_path, capsys, monkeypatch):
    """Ctrl-C: one line and exit 130; the reader of standard output going away (``vocode --stream
    -o - | head``): quiet, exit 141."""
    for exc, status, says in [(KeyboardInterrupt, 130, "interrupted: wavedil generate stopped"), (BrokenPipeError, 141, "")]:

        def stop(*args, exc=exc, **kwargs):
            raise exc()

        monkeypatch.setattr(synthesis_mod, "generate", stop)
        code, err = run_cli(capsys, "generate", str(run_dir), "-o", str(tmp_path / "o.wav"), "--seconds", "0.01",
                            "--backend", "torch", "--device", "cpu")  # fmt: skip
        assert code == status and "Traceback" not in err and "error:" not in err, err
        assert says in err and not (tmp_path / "o.wav").exists()


def test_sigterm_ends_the_cli_with_one_line_and_status_143(run_dir, tmp_path, capsys, monkeypatch):
    """``kill`` / ``timeout`` during generate ended the process at once with no word (exit 143 from
    the shell) and no ``finally`` ran; now one ``terminated:`` line, status 143, no output file, and
    the previous SIGTERM handler is back afterwards."""
    import signal

    def terminated(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(1000):  # the handler raises at the next bytecode
            pass
        raise AssertionError("SIGTERM did not stop generate")

    class NotHandled(Exception):
        pass

    def guard(signum, frame):  # what runs if the command did not install its own handler
        raise NotHandled("the command left SIGTERM to the previous handler")

    monkeypatch.setattr(synthesis_mod, "generate", terminated)
    before = signal.signal(signal.SIGTERM, guard)
    try:
        code, err = run_cli(capsys, "generate", str(run_dir), "-o", str(tmp_path / "o.wav"), "--seconds", "0.01",
                            "--backend", "torch", "--device", "cpu")  # fmt: skip
        assert signal.getsignal(signal.SIGTERM) is guard
    finally:
        signal.signal(signal.SIGTERM, before)
    assert code == 143 and err.strip().splitlines()[-1] == (
        "terminated: wavedil generate stopped by SIGTERM (output files are written whole or not at all)"), err
    assert "Traceback" not in err and not list(tmp_path.iterdir())


def test_model_option_takes_the_pretrained_prefix_too(capsys):
    """``--model pretrained:speech8k`` (the form ``trainer.init_from`` and the checkpoint argument
    take) was 'unknown pretrained model 'pretrained:speech8k''; it names the same model as
    ``--model speech8k``."""
    outputs = []
    for name in ("speech8k", "pretrained:speech8k"):
        capsys.readouterr()
        cli_main(["info", "--model", name])  # a refusal would be SystemExit(2)
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1] and "579,072" in outputs[0]


def _damaged_mel_files(folder: Path) -> dict[str, tuple[Path, str]]:
    """name -> (path, what the error must say) for mel files that np.load hangs on, crashes on or misdescribes."""
    good = io.BytesIO()
    np.save(good, np.zeros((N_MELS, 10), np.float32))
    npz = io.BytesIO()
    np.savez_compressed(npz, mel=np.random.default_rng(0).random((N_MELS, 200)).astype(np.float32))
    files = {
        "empty.npy": (b"", "is empty (0 bytes)"),
        "trunc.npy": (good.getvalue()[:-100], f"is truncated or damaged: its header declares a float32 array ({N_MELS}, 10)"),
        "text.npy": (b"log-mel frames, honestly", "is neither a .npy nor a .npz file"),
        "trunc.npz": (npz.getvalue()[: len(npz.getvalue()) // 2], "cannot read the mel file"),
    }
    damaged = bytearray(npz.getvalue())
    damaged[100] ^= 0xFF  # inside the compressed member
    files["bad.npz"] = (bytes(damaged), "cannot read the mel file")
    huge = io.BytesIO()
    np.lib.format.write_array_header_1_0(huge, {"descr": "<f4", "fortran_order": False, "shape": (N_MELS, 10**15)})
    files["huge.npy"] = (huge.getvalue(), f"declares a float32 array ({N_MELS}, 1000000000000000)")
    out = {}
    for name, (data, says) in files.items():
        (folder / name).write_bytes(data)
        out[name] = (folder / name, says)
    os.mkfifo(folder / "fifo.npy")
    out["fifo.npy"] = (folder / "fifo.npy", "is not a regular file")
    return out


def test_a_damaged_mel_file_is_refused_naming_it_without_numpys_pickle_advice(vocoder_run, tmp_path, capsys):
    """Before: EOFError / BadZipFile / zlib.error / _ArrayMemoryError tracebacks, numpy's advice to
    load a text file 'unsafely' with allow_pickle, and a FIFO that blocked vocode forever."""
    spec = MelSpec.from_dict(MEL)
    for name, (path, says) in _damaged_mel_files(tmp_path).items():
        with pytest.raises(ValueError) as err:
            synthesis_mod.load_mel(path, spec)
        assert says in str(err.value) and str(path) in str(err.value), (name, str(err.value))
        assert "allow_pickle" not in str(err.value)
    (tmp_path / "cli").mkdir()
    path, says = _damaged_mel_files(tmp_path / "cli")["huge.npy"]
    code, err = run_cli(capsys, "vocode", str(vocoder_run), str(path), "-o", str(tmp_path / "o.wav"))
    assert_user_error(code, err, says)
    assert not (tmp_path / "o.wav").exists()


def test_vocode_file_max_seconds_none_is_no_limit(vocoder_run, tmp_path):
    """Before: ``vocode_file(..., max_seconds=None)`` raised a TypeError (the stream takes None)."""
    np.save(tmp_path / "in.npy", np.full((N_MELS, 5), -3.0, dtype=np.float32))
    res = vocode_file(vocoder_run, tmp_path / "in.npy", tmp_path / "o.wav", seed=0, max_seconds=None, backend="torch")
    assert res.mel_frames == 5 and (tmp_path / "o.wav").exists()


def test_a_batch_may_be_named_after_a_folder_since_it_writes_numbered_files(run_dir, tmp_path):
    """Before: ``-o take.wav --batch 2`` was refused when a folder ``take.wav`` existed, although
    the files written are ``take_000.wav`` and ``take_001.wav``; one file there is still refused."""
    (tmp_path / "take.wav").mkdir()
    res = generate_to_files(run_dir, tmp_path / "take.wav", 0.01, batch=2, seed=0, backend="torch", device="cpu")
    assert [p.name for p in res.paths] == ["take_000.wav", "take_001.wav"] and all(p.is_file() for p in res.paths)
    with pytest.raises(ValueError, match=r"take\.wav' is a directory"):
        generate_to_files(run_dir, tmp_path / "take.wav", 0.01, seed=0, backend="torch", device="cpu")
    with pytest.raises(ValueError, match=r"must end in \.wav, \.flac or \.ogg"):
        generate_to_files(run_dir, tmp_path / "take.mp3", 0.01, batch=2, seed=0, backend="torch", device="cpu")


@pytest.mark.parametrize("temperature, noisy", [(2.0, False), (2.5, True), (90.0, True)])
def test_a_temperature_far_above_one_is_a_note_in_every_sampling_command(
    run_dir, vocoder_run, recording, tmp_path, capsys, temperature, noisy
):
    """A temperature above 2 is allowed (it is a choice) but the user is told what it will sound like."""
    said = f"temperature {temperature:g} is far above 1"
    res = generate_to_files(run_dir, tmp_path / "g.wav", seconds=0.01, temperature=temperature, seed=0)
    assert any(said in note for note in res.notes) == noisy, res.notes
    res = vocode_file(vocoder_run, recording, tmp_path / "v.wav", temperature=temperature, seed=0)
    assert any(said in note for note in res.notes) == noisy, res.notes
    chunks = tmp_path / "chunks.npy"
    chunks.write_bytes(npy_bytes(np.zeros((N_MELS, 8), np.float32)))
    code, err = run_cli(capsys, "vocode", "--stream", str(vocoder_run), str(chunks), "-o", str(tmp_path / "s.wav"),
                        "--temperature", str(temperature), "--seed", "0")  # fmt: skip
    assert code == 0 and (said in err) == noisy, err
