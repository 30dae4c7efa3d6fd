"""Faults of behaviour under unusual but valid use (hunt 6): audio at sample rates that share no
large factor with the model's, a prompt minutes long, a WAV whose writer never finished its
header, refused commands that left folders behind, an overwritten output that lost its
permissions, checkpoint paths given with a quoted ``~``, and streams whose model was cast.

Each test's docstring says what happened before the fix. Tiny random-weight models and a few
thousand samples of audio: the file runs in seconds.
"""

from __future__ import annotations

import os
import stat
import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from wavedil import StreamingGenerator, StreamingVocoder, WaveNet, WaveNetConfig, generate
from wavedil.audio import MAX_RESAMPLING_TAPS, AudioReadError, read_audio, resample, write_audio
from wavedil.checkpoint import open_checkpoint
from wavedil.cli import main as cli_main
from wavedil.data import AudioItem, SegmentDataset, probe_audio
from wavedil.generate import _prime
from wavedil.synthesis import generate_to_files, vocode_file
from wavedil.vocoder_stream import SILENCE_LOG_MEL

from test_faults_io import cli_error

SR = 8000
TINY = dict(residual_channels=8, gate_channels=16, skip_channels=12, head_channels=10, layers_per_stack=3, stacks=2)


def tiny_model() -> WaveNet:
    torch.manual_seed(0)
    return WaveNet(WaveNetConfig(**TINY)).eval()


def tiny_checkpoint(path: Path) -> Path:
    """A wavedil checkpoint of a random tiny model at 8 kHz."""
    model = tiny_model()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": 1, "model": model.state_dict(), "model_config": model.config.to_dict(), "ema": None,
                "sample_rate": SR, "step": 1}, path)  # fmt: skip
    return path


def noise(n: int, seed: int = 0) -> np.ndarray:
    return (0.3 * np.random.default_rng(seed).standard_normal(n)).astype(np.float32)


# ----------------------------------------------------------------------------- sample rates


def test_rates_that_share_no_large_factor_are_refused_not_resampled_for_minutes(monkeypatch):
    """Before: a file at 44,101 Hz (or any rate whose ratio to the model's does not reduce) was
    resampled with torchaudio's filter of new/g x orig/g taps: 353 million for 44,101 Hz to 8 kHz,
    26 s and 6.4 GB for a tenth of a second of audio; at 192,001 Hz the process was killed."""
    called = []
    monkeypatch.setattr("wavedil.audio.AF.resample", lambda *a: called.append(a))
    with pytest.raises(ValueError) as err:
        resample(torch.zeros(4410), 44_101, 8000)
    assert not called  # refused before torchaudio builds anything
    assert ("resampling 44,101 Hz audio to 8,000 Hz needs a filter of 352,808,000 taps (the rates reduce only to "
            f"44,101:8,000; the limit is {MAX_RESAMPLING_TAPS:,})") in str(err.value)  # fmt: skip
    assert "resample the file yourself first (e.g. with sox)" in str(err.value)
    monkeypatch.undo()
    # every usual pair of rates still goes through, 44,056 Hz (5,507:6,000) to 48 kHz included
    for orig, new in ((44_100, 8000), (32_000, 22_050), (11_025, 16_000), (44_056, 48_000), (48_000, 44_100)):
        assert resample(torch.zeros(orig // 100), orig, new).shape[-1] == -(-new // 100)


def test_a_prompt_or_input_at_a_rate_that_cannot_be_resampled_is_named(tmp_path, capsys):
    """Before: ``generate --prompt`` and ``vocode`` of a file whose rate the resampler refuses
    printed the resampler's sentence without naming the file (``read_audio``'s own path names it);
    a 44,101 Hz prompt spent minutes and gigabytes instead."""
    ckpt = tiny_checkpoint(tmp_path / "tiny.pt")
    for name, rate in (("one_hz.wav", 1), ("odd.wav", 44_101)):
        sf.write(tmp_path / name, noise(200), rate)
        line = cli_error(capsys, "generate", str(ckpt), "-o", str(tmp_path / "out.wav"), "--prompt",
                         str(tmp_path / name), "--seconds", "0.01")  # fmt: skip
        assert line.startswith(f"error: audio file '{tmp_path / name}': resampling {rate:,} Hz audio to 8,000 Hz"), line
    assert not (tmp_path / "out.wav").exists()


def test_a_corpus_file_at_a_rate_that_cannot_be_resampled_is_skipped_by_name(tmp_path, caplog):
    """Before: ``wavedil train`` on a folder holding one file whose header said 1 Hz stopped at the
    first segment drawn from it with ``error: resampling 1 Hz audio ...``, naming no file (and a
    file at 44,101 Hz made each of its segments take seconds and gigabytes)."""
    items = []
    for name, rate in (("good.wav", SR), ("low.wav", 1), ("odd.wav", 44_101)):
        sf.write(tmp_path / name, noise(2000), rate)
        items.append(AudioItem(tmp_path / name, None, *probe_audio(tmp_path / name)))
    with caplog.at_level("WARNING"):
        ds = SegmentDataset(items, 100, SR, segments_per_epoch=8)
    assert [item.path.name for item in ds.items] == ["good.wav"]
    warned = [r.getMessage() for r in caplog.records if "skipping audio file" in r.getMessage()]
    assert len(warned) == 2 and f"'{tmp_path / 'low.wav'}': resampling 1 Hz" in warned[0]
    assert f"'{tmp_path / 'odd.wav'}': resampling 44,101 Hz audio to 8,000 Hz needs a filter" in warned[1]
    assert all(ds[i].shape == (101,) for i in range(len(ds)))


# ----------------------------------------------------------------------------- long prompts


def test_a_long_prompt_primes_from_its_last_receptive_field_alone(monkeypatch):
    """Before: the whole prompt went through the model at once to prime it; a 2-minute prompt took
    4.4 GB and 65 s with the bundled speech model to generate 0.01 s (10 minutes: out of memory).
    The state and the first parameters depend on the last receptive field of it alone."""
    model = tiny_model()
    rf = model.receptive_field
    torch.manual_seed(1)
    prompt = torch.randint(0, 256, (2, 5000))
    fed_lengths = []
    step = model.step

    def counting_step(codes, *args, **kwargs):
        fed_lengths.append(codes.shape[-1])
        return step(codes, *args, **kwargs)

    monkeypatch.setattr(model, "step", counting_step)
    state, params, fed = _prime(model, 2, prompt, None)
    assert fed == 5000 and fed_lengths == [rf]
    with torch.no_grad():
        whole = model(prompt)
        torch.testing.assert_close(params, whole[:, :, -1], rtol=1e-5, atol=1e-5)
        # the rings hold what a whole pass leaves in them: the next sample's parameters agree too
        nxt = torch.randint(0, 256, (2, 1))
        after, _ = step(nxt, state)
        torch.testing.assert_close(after[:, :, -1], model(torch.cat([prompt, nxt], 1))[:, :, -1], rtol=1e-5, atol=1e-5)
    # (the draws against the full model's logits: tests/test_model.py)


def test_a_vocoders_prompt_is_trimmed_with_its_mel_columns():
    """The vocoder's prompt and its mel columns are trimmed together: the samples it continues with
    are those of a prompt fed whole (before the fix, the whole prompt and mel were fed)."""
    torch.manual_seed(0)
    mel = dict(sample_rate=SR, hop_length=16, n_fft=64, n_mels=8)
    model = WaveNet(WaveNetConfig(**TINY, mel=mel)).eval()
    frames = torch.randn(1, 8, 40 + 2 * model.mel_context) - 4
    prompt = torch.randint(0, 256, (1, 500))
    with torch.no_grad():
        local = model.upsample(frames)
        state, params, fed = _prime(model, 1, prompt, None, lambda a, b: local[:, :, a:b])
        opened = torch.cat([torch.full((1, 1), model.silence_code), prompt], 1)
        whole, _ = model.step(opened, model.init_state(1), None, local[:, :, :501])  # the former priming
    assert fed == 501 and state.pos == model.receptive_field
    torch.testing.assert_close(params, whole[:, :, -1], rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- unfinished WAV headers


def _unfinished_wav(path: Path, frames: int) -> Path:
    """A 16-bit mono WAV whose RIFF and data sizes were left at 0 by a writer stopped early."""
    fmt = struct.pack("<HHIIHH", 1, 1, SR, 2 * SR, 2, 16)
    data = (noise(frames) * 32767).astype("<i2").tobytes()
    path.write_bytes(b"RIFF" + struct.pack("<I", 0) + b"WAVEfmt " + struct.pack("<I", 16) + fmt + b"data"
                     + struct.pack("<I", 0) + data)  # fmt: skip
    return path


def test_a_wav_whose_header_was_never_finished_is_not_called_empty(tmp_path, capsys):
    """Before: a WAV whose writer stopped before finishing its header (sizes left at 0, the audio
    after it) was refused as 'holds no samples', as if it were empty; now the message says the
    audio is there and how to repair the header. A WAV that is empty keeps its message."""
    bad = _unfinished_wav(tmp_path / "rec.wav", 4000)
    says = (f"declares no samples in its header, but 8,000 bytes of audio data follow it: the program that wrote it "
            f"never finished the header (it was stopped before it closed the file); repair it with sox --ignore-length "
            f"'{bad}' fixed.wav")  # fmt: skip
    with pytest.raises(AudioReadError) as err:
        read_audio(bad)
    assert str(err.value) == f"audio file '{bad}' {says}"
    with pytest.raises(AudioReadError) as err:
        probe_audio(bad)
    assert str(err.value) == f"'{bad}' {says}"
    ckpt = tiny_checkpoint(tmp_path / "tiny.pt")
    line = cli_error(capsys, "generate", str(ckpt), "-o", str(tmp_path / "o.wav"), "--prompt", str(bad))
    assert line == f"error: audio file '{bad}' {says}"
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, np.float32), SR)
    with pytest.raises(AudioReadError) as err:
        read_audio(empty)
    assert str(err.value) == f"audio file '{empty}' holds no samples"


# ----------------------------------------------------------------------------- outputs


def test_a_refused_command_leaves_no_output_folder_behind(tmp_path, capsys):
    """Before: checking ``-o new/sub/out.wav`` (or ``--save-mel``) made the folders, and a run
    refused after the check (a wrong --speaker, a checkpoint that is not a vocoder) left them
    behind, empty. A run that writes still makes them."""
    ckpt = tiny_checkpoint(tmp_path / "tiny.pt")
    sf.write(tmp_path / "in.wav", noise(800), SR)
    cli_error(capsys, "generate", str(ckpt), "-o", str(tmp_path / "new" / "sub" / "out.wav"), "--speaker", "3")
    cli_error(capsys, "vocode", str(ckpt), str(tmp_path / "in.wav"), "-o", str(tmp_path / "a" / "out.wav"),
              "--save-mel", str(tmp_path / "b" / "c" / "mel.npy"))  # fmt: skip
    assert not any((tmp_path / name).exists() for name in ("new", "a", "b"))
    with pytest.raises(ValueError, match="not a vocoder"):
        vocode_file(ckpt, tmp_path / "in.wav", tmp_path / "d" / "out.wav")
    assert not (tmp_path / "d").exists()
    res = generate_to_files(ckpt, tmp_path / "new" / "sub" / "out.wav", seconds=0.01, seed=1, backend="torch")
    assert res.paths == [tmp_path / "new" / "sub" / "out.wav"] and res.paths[0].is_file()


def test_an_overwritten_output_keeps_its_permissions(tmp_path):
    """Before: every atomic write gave the new file 0666 less the umask, so overwriting a private
    ``out.wav`` (mode 0600) made it readable by everyone (0644), where ``cp`` or ``>`` keep the
    mode of the file they overwrite. A new file still gets 0666 less the umask."""
    out = tmp_path / "out.wav"
    write_audio(out, torch.zeros(10), SR)
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~mask
    for mode in (0o600, 0o640):
        out.chmod(mode)
        write_audio(out, torch.full((10,), 0.5), SR)
        assert stat.S_IMODE(out.stat().st_mode) == mode
    assert read_audio(out)[0][0].item() == pytest.approx(0.5, abs=1e-4)


def test_an_output_that_is_a_symbolic_link_is_written_through_it(tmp_path):
    """Before: ``-o link.wav`` (a link to ``takes/out.wav``) replaced the link by a file and left
    its target as it was; now the target is written (atomically), as ``>`` writes it, and the
    link stays a link."""
    (tmp_path / "takes").mkdir()
    target = tmp_path / "takes" / "out.wav"
    write_audio(target, torch.zeros(10), SR)
    link = tmp_path / "link.wav"
    link.symlink_to(target)
    write_audio(link, torch.full((10,), 0.5), SR)
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert read_audio(target)[0][0].item() == pytest.approx(0.5, abs=1e-4)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["link.wav", "out.wav", "takes"]  # no temporary left


# ----------------------------------------------------------------------------- checkpoint paths


def test_a_checkpoint_path_with_a_quoted_tilde_is_found(tmp_path, monkeypatch, capsys):
    """Before: ``trainer.init_from='~/runs/x.pt'`` (quoted as the CLI's own hint for Hydra says,
    so the shell leaves the ``~``), ``trainer.resume`` and ``generate '~/x.pt'`` failed with
    'checkpoint '~/x.pt' not found', while data.root expands ``~``."""
    monkeypatch.setenv("HOME", str(tmp_path))
    ckpt = tiny_checkpoint(tmp_path / "runs" / "checkpoints" / "step_00000001.pt")
    assert open_checkpoint("~/runs/checkpoints/step_00000001.pt")[0] == ckpt
    assert open_checkpoint("~/runs")[0] == ckpt
    capsys.readouterr()
    cli_main(["generate", "~/runs", "-o", str(tmp_path / "o.wav"), "--seconds", "0.01", "--quiet",
              "--backend", "torch"])  # fmt: skip
    assert (tmp_path / "o.wav").is_file()
    with pytest.raises(ValueError, match=r"checkpoint '.*missing\.pt' not found"):
        open_checkpoint("~/missing.pt")


# ----------------------------------------------------------------------------- streams and their model


@pytest.mark.parametrize("backend", ["torch", "fast"])
def test_a_stream_whose_model_was_cast_says_so_and_is_left_as_it_was(backend):
    """Before: a StreamingGenerator or StreamingVocoder whose model was cast (``model.double()``)
    after it was made failed with 'state.buffers[0] has dtype torch.float32 ... convert it with
    state.buffers[0].to(...)' (a state its user never holds), and a vocoder's failed push had
    already taken its frames in: cast back, the next push failed on 'local_cond has dtype
    torch.float64' for good. Now the error names the cast and the stream goes on once it is undone."""
    model = tiny_model()
    want = generate(model, 30, seed=2, backend=backend).codes
    gen = StreamingGenerator(model, seed=2, backend=backend)
    first = gen.draw(10)
    model.double()
    with pytest.raises(ValueError) as err:
        gen.draw(10)
    assert str(err.value) == (
        "the model was cast or moved after this StreamingGenerator was made: its weights are now torch.float64 on "
        "cpu, the stream's state torch.float32 on cpu; make a new StreamingGenerator, or give the model back its "
        "dtype and device (model.to('cpu', torch.float32)) to go on (the stream is unchanged)"
    )
    model.float()
    assert torch.equal(torch.cat([first, gen.draw(20)], 1), want)

    torch.manual_seed(0)
    voc_model = WaveNet(WaveNetConfig(**TINY, mel=dict(sample_rate=SR, hop_length=16, n_fft=64, n_mels=8))).eval()
    frames = torch.randn(8, 6) - 4
    padded = torch.nn.functional.pad(frames, (voc_model.mel_context,) * 2, value=SILENCE_LOG_MEL)
    want = generate(voc_model, None, seed=3, mel=padded, backend=backend).codes
    voc = StreamingVocoder(voc_model, seed=3, backend=backend)
    pieces = [voc.push(frames[:, :3])]
    voc_model.double()
    for call in (lambda: voc.push(frames[:, 3:]), voc.finish):
        with pytest.raises(ValueError, match=r"^the model was cast or moved after this StreamingVocoder was made"):
            call()
    assert voc.frames_in == 3
    voc_model.float()
    pieces += [voc.push(frames[:, 3:]), voc.finish()]
    assert torch.equal(torch.cat(pieces, 1), want)


def test_a_recording_whose_header_keeps_arecords_pipe_placeholder_is_whole(tmp_path, capsys):
    """Before: a WAV recorded by arecord to a pipe (``ssh host arecord -f S16_LE -r 8000 > rec.wav``)
    keeps its placeholder data size of 2 GiB, which it cannot go back to fix; wavedil called the
    complete recording truncated ('declares 1073741824 frames (134217.73 s) but the file holds
    8000') and refused it as a prompt, advising to 'use the complete file'. A WAV cut short is
    still called truncated."""
    fmt = struct.pack("<HHIIHH", 1, 1, SR, 2 * SR, 2, 16)
    data = (noise(SR) * 32767).astype("<i2").tobytes()
    ckpt = tiny_checkpoint(tmp_path / "tiny.pt")
    for size in (0x80000000, 0x7FFFFF00):
        rec = tmp_path / f"rec_{size:x}.wav"
        rec.write_bytes(b"RIFF" + struct.pack("<I", size + 36) + b"WAVEfmt " + struct.pack("<I", 16) + fmt + b"data"
                        + struct.pack("<I", size) + data)  # fmt: skip
        assert read_audio(rec, truncated="error")[0].shape == (SR,)
        capsys.readouterr()
        cli_main(["generate", str(ckpt), "-o", str(tmp_path / "o.wav"), "--prompt", str(rec), "--seconds", "0.01",
                  "--quiet", "--backend", "torch"])  # fmt: skip
        assert "truncated" not in capsys.readouterr().err
    cut = tmp_path / "cut.wav"
    sf.write(cut, noise(SR), SR, subtype="PCM_16")
    cut.write_bytes(cut.read_bytes()[:-2000])
    with pytest.raises(AudioReadError, match="is truncated: its header declares 8000 frames"):
        read_audio(cut, truncated="error")


@pytest.mark.parametrize("lean", [True, False])
def test_a_state_made_under_inference_mode_steps_outside_it(lean):
    """Before: a state made (or a StreamingGenerator primed) under ``torch.inference_mode`` and
    stepped one sample at a time outside it, under ``no_grad`` or with autograd, stopped with torch's
    'RuntimeError: Inplace update to inference tensor outside InferenceMode is not allowed': the
    single step writes the rings in place. Now it steps copies, with the same results."""
    torch.manual_seed(0)
    model = tiny_model()
    stack = model.stack
    x = torch.randn(1, stack.residual_channels, 9)
    with torch.no_grad():
        _, want = stack(x)
    with torch.inference_mode():
        state = stack.init_state(1)
        (_, first), state = stack.step(x[:, :, :4], state)
    kept = [b.clone() for b in state.buffers]
    outs = [first.clone()]
    with torch.no_grad() if lean else torch.enable_grad():
        start = state
        for t in range(4, 9):
            (_, skip), state = stack.step(x[:, :, t : t + 1], state)
            outs.append(skip.detach())
    torch.testing.assert_close(torch.cat(outs, -1), want, rtol=1e-5, atol=1e-5)
    assert all(torch.equal(a, b) for a, b in zip(start.buffers, kept))  # the inference state is left as it was
    with torch.inference_mode():
        gen = StreamingGenerator(model, seed=4, backend="torch")
        head = gen.draw(5)
    assert torch.equal(torch.cat([head, gen.draw(5)], 1), generate(model, 10, seed=4, backend="torch").codes)


def test_a_held_out_part_with_no_usable_audio_is_named_as_such(tmp_path):
    """Before: when the training files were fine but every held-out one was unusable (here silent,
    with data.trim_silence_db), training stopped with 'SegmentDataset: none of the 1 files has
    usable audio', which did not say that these were the held-out files or what to change."""
    from test_faults_train import TINY_MODEL, data_cfg, write_corpus

    from wavedil.data import CorpusError, load_corpus, split_items
    from wavedil.train import build_data

    root = write_corpus(tmp_path / "c", [2000] * 5)
    _, valid = split_items(load_corpus(root), 0.2)
    assert len(valid) == 1
    sf.write(str(valid[0].path), np.zeros(2000, np.float32), SR)
    with pytest.raises(CorpusError) as err:
        build_data(data_cfg(root, trim_silence_db=-40.0), TINY_MODEL, seed=0, max_steps=2)
    assert str(err.value).startswith("the 1 held-out file(s) (data.valid_fraction=0.2): SegmentDataset: none of the 1")
    assert str(err.value).endswith("hold out more files (raise data.valid_fraction) or fix or remove the unusable ones")


def test_a_ring_made_under_inference_mode_steps_a_layer_outside_it():
    """The layer-level step API: CausalConv1d.step and ResidualBlock.step of a ring made under
    ``torch.inference_mode`` stopped with torch's 'Inplace update to inference tensor' error; they
    step a copy (returned) with the same outputs as a ring made outside it."""
    from wavedil import CausalConv1d, ResidualBlock

    torch.manual_seed(0)
    conv, block = CausalConv1d(3, 4, kernel_size=2, dilation=2), ResidualBlock(3, 6, 5, kernel_size=2, dilation=2)
    x = torch.randn(1, 3, 6)
    for layer in (conv, block):
        with torch.inference_mode():
            frozen = layer.init_buffer(1) if hasattr(layer, "init_buffer") else layer.conv.init_buffer(1)
        plain = torch.zeros_like(frozen.clone())
        with torch.no_grad():
            for t in range(6):
                got = layer.step(x[:, :, t : t + 1], frozen, t)
                want = layer.step(x[:, :, t : t + 1], plain, t)
                frozen, plain = got[-1], want[-1]
                assert torch.equal(got[0], want[0])
        assert torch.equal(frozen, plain)
