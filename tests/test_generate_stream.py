"""Streamed generation: :class:`wavedil.StreamingGenerator` (draw a piece at a time, state held
between calls), :func:`wavedil.synthesis.generate_to_stream` and ``wavedil generate -o -`` (16-bit
PCM on standard output as it is drawn).

The contract tested: pieces of any lengths, concatenated, are exactly ``generate``'s codes for
the same seed (every head, a prompt, a speaker, a batch; the torch and fast back-ends, every
weight mode), and the streamed bytes are exactly the samples of the ``.wav`` that ``-o out.wav``
writes. Tiny random-weight models.
"""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch
from test_commands import SR, one_thread, save_run  # noqa: F401 (one_thread: an autouse fixture)
from test_fast import make_head_model, make_model

import wavedil.synthesis as synthesis_mod
from wavedil import StreamingGenerator, WaveNet, generate
from wavedil.audio import pcm16_bytes
from wavedil.cli import main as cli_main
from wavedil.synthesis import SynthesisResult, generate_to_files, generate_to_stream

PIECES = [1, 7, 64, 3, 125]  # 200 samples in uneven pieces, the first of one sample


def _drawn(model, pieces, **kwargs) -> torch.Tensor:
    stream = StreamingGenerator(model, **kwargs)
    codes = [stream.draw(n) for n in pieces]
    assert [c.shape[1] for c in codes] == pieces and stream.samples_out == sum(pieces)
    return torch.cat(codes, dim=1)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return save_run(tmp_path_factory.mktemp("stream"))


# ----------------------------------------------------------------------------- StreamingGenerator


@pytest.mark.parametrize("output", ["mulaw", "mol", "gaussian"])
@pytest.mark.parametrize("backend,weights", [("torch", "fp32"), ("fast", "fp32"), ("fast", "bf16"), ("fast", "int8")])
def test_pieces_concatenated_are_generates_codes(output, backend, weights):
    """Every head (mol and gaussian take several uniforms per sample), with a prompt and a speaker,
    a batch of 3, temperature 0.8."""
    model = make_head_model(output, speaker=True)
    prompt = torch.randint(0, model.quantization_channels, (3, 20), generator=torch.Generator().manual_seed(1))
    kwargs = dict(batch_size=3, temperature=0.8, seed=5, prompt=prompt, speaker=torch.tensor([0, 2, 1]),
                  backend=backend, weights=weights)  # fmt: skip
    whole = generate(model, sum(PIECES), **kwargs).codes
    assert torch.equal(_drawn(model, PIECES, **kwargs), whole)
    # one piece: the same again, and another seed differs (the seed is really used)
    assert torch.equal(_drawn(model, [sum(PIECES)], **kwargs), whole)
    assert not torch.equal(_drawn(model, [sum(PIECES)], **{**kwargs, "seed": 6}), whole)


def test_greedy_and_no_prompt_and_a_seed_drawn_for_the_caller():
    model = make_model()
    assert torch.equal(_drawn(model, PIECES, temperature=0, backend="fast"),
                       generate(model, 200, temperature=0, backend="torch").codes)  # fmt: skip
    stream = StreamingGenerator(model, backend="torch")
    codes = stream.draw(50)
    assert torch.equal(codes, generate(model, 50, seed=stream.seed, backend="torch").codes)


def test_prepare_leaves_the_stream_as_it_was():
    """``prepare`` runs the back-end once (fast: one sample in the kernels) but draws nothing."""
    model = make_model()
    stream = StreamingGenerator(model, seed=3, backend="fast", weights="int8")
    stream.prepare()
    stream.prepare()
    assert stream.samples_out == 0
    assert torch.equal(stream.draw(40), generate(model, 40, seed=3, backend="fast", weights="int8").codes)


def test_decode_gives_the_models_waveform():
    model = make_model()
    stream = StreamingGenerator(model, seed=2, backend="torch")
    codes = stream.draw(30)
    wav = stream.decode(codes)
    assert wav.shape == (1, 30) and wav.dtype == torch.float32 and float(wav.abs().max()) <= 1.0
    assert torch.equal(stream.decode(torch.tensor([[0, model.quantization_channels - 1]])), torch.tensor([[-1.0, 1.0]]))


def test_bad_arguments_are_refused_and_a_refused_draw_leaves_the_stream():
    model = make_model()
    with pytest.raises(ValueError, match=r"is a vocoder .*: stream it with wavedil\.StreamingVocoder"):
        StreamingGenerator(make_head_model("mulaw", mel=True))
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1, got 0"):
        StreamingGenerator(model, batch_size=0)
    with pytest.raises(ValueError, match="temperature"):
        StreamingGenerator(model, temperature=-1.0)
    with pytest.raises(ValueError, match="int8"):
        StreamingGenerator(model, backend="torch", weights="int8")
    stream = StreamingGenerator(model, seed=9, backend="torch")
    for bad in (0, -3, 2.5, True, None):
        with pytest.raises(ValueError, match=r"n must be an integer in \[1, "):
            stream.draw(bad)
    assert stream.samples_out == 0
    assert torch.equal(stream.draw(20), generate(model, 20, seed=9, backend="torch").codes)


# ----------------------------------------------------------------------------- generate_to_stream and the CLI


def _wav_samples(path) -> bytes:
    data, rate = sf.read(path, dtype="int16")
    assert rate == SR
    return data.astype("<i2").tobytes()


@pytest.mark.parametrize("chunk_seconds", [0.001, 0.01, 1.0])
def test_the_stream_is_the_files_samples(run_dir, tmp_path, chunk_seconds):
    """Any piece size: the bytes are the int16 samples of the .wav for the same seed; the
    progress sees every piece; the result reports the wait for the first piece."""
    sink = io.BytesIO()
    seen = []
    res = generate_to_stream(run_dir, sink, 0.02, seed=4, backend="fast", weights="int8", device="cpu",
                             chunk_seconds=chunk_seconds, progress=lambda done, total: seen.append((done, total)))  # fmt: skip
    ref = generate_to_files(run_dir, tmp_path / "o.wav", 0.02, seed=4, backend="fast", weights="int8", device="cpu")
    assert sink.getvalue() == _wav_samples(tmp_path / "o.wav") and len(sink.getvalue()) == 2 * 160
    assert torch.equal(res.codes, ref.codes) and res.paths == []
    piece = max(1, round(chunk_seconds * SR))
    assert seen == [(min(160, k), 160) for k in range(piece, 160 + piece, piece)]
    assert res.first_audio_seconds is not None and 0 < res.first_audio_seconds <= 160 / res.samples_per_second
    assert (res.backend, res.weights, res.seed, res.sample_rate) == ("fast", "int8", 4, SR)


def test_pcm16_bytes_are_the_samples_write_audio_writes(tmp_path):
    wav = torch.tensor([0.0, 0.5, -0.5, 1.0, -1.0, 2.0, float("nan"), float("-inf"), 1e-4])
    from wavedil.audio import write_audio

    write_audio(tmp_path / "a.wav", wav, SR)
    assert pcm16_bytes(wav, SR) == _wav_samples(tmp_path / "a.wav")
    with pytest.raises(ValueError, match="mono float waveform"):
        pcm16_bytes(wav.reshape(3, 3), SR)
    with pytest.raises(ValueError, match="sample_rate must be positive, got 0"):
        pcm16_bytes(wav, 0)


def test_real_time_factor_counts_rows_not_files():
    res = SynthesisResult([], torch.zeros(1, 8000, dtype=torch.long), 8000, 16000.0, "fast", "fp32", 1)
    assert res.real_time_factor == 0.5 and res.seconds == 1.0


def test_bad_stream_arguments_are_refused_before_sampling(run_dir, monkeypatch):
    monkeypatch.setattr(synthesis_mod, "StreamingGenerator", lambda *a, **k: pytest.fail("sampling started"))
    for bad in (0, -0.1, float("nan"), float("inf"), True):
        with pytest.raises(ValueError, match="chunk_seconds must be a positive number of seconds"):
            generate_to_stream(run_dir, io.BytesIO(), 0.01, chunk_seconds=bad)
    with pytest.raises(ValueError, match="--seconds must be a positive finite number"):
        generate_to_stream(run_dir, io.BytesIO(), -1)


def test_cli_dash_streams_pcm_and_reports_on_standard_error(run_dir, tmp_path):
    """A real process: stdout holds only the PCM (the .wav's samples), the report goes to stderr;
    a reader that goes away ends it quietly with status 141."""
    cmd = [sys.executable, "-m", "wavedil", "generate", str(run_dir), "--seconds", "0.05", "--seed", "3",
           "--device", "cpu", "--weights", "bf16", "-o", "-"]  # fmt: skip
    streamed = subprocess.run(cmd, capture_output=True, timeout=300)
    assert streamed.returncode == 0, streamed.stderr.decode()
    generate_to_files(run_dir, tmp_path / "o.wav", 0.05, seed=3, device="cpu", weights="bf16")
    assert streamed.stdout == _wav_samples(tmp_path / "o.wav") and len(streamed.stdout) == 2 * 400
    err = streamed.stderr.decode()
    assert "streamed 400 samples (0.05 s, 16-bit mono PCM at 8000 Hz) to standard output" in err
    assert "(bf16 weights)" in err and "seed 3" in err and "first audio after" in err

    proc = subprocess.Popen(cmd[:5] + ["--seconds", "60", "--device", "cpu", "-o", "-", "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    proc.stdout.read(100)
    proc.stdout.close()
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 141 and b"Traceback" not in err, err.decode()


def test_cli_dash_in_process_writes_nothing_but_pcm_to_stdout(run_dir, tmp_path, capsysbinary):
    """In process (the CLI's own code path): stdout is exactly the samples of the file."""
    args = [str(run_dir), "--seconds", "0.01", "--seed", "1", "--backend", "torch", "--device", "cpu", "--quiet"]
    cli_main(["generate", *args, "-o", "-"])
    out, err = capsysbinary.readouterr()
    cli_main(["generate", *args, "-o", str(tmp_path / "o.wav")])
    assert out == _wav_samples(tmp_path / "o.wav") and len(out) == 2 * 80
    assert b"streamed 80 samples" in err
    capsysbinary.readouterr()
    with pytest.raises(SystemExit) as stop:
        cli_main(["generate", *args, "-o", "-", "--batch", "2"])
    out, err = capsysbinary.readouterr()
    assert stop.value.code == 2 and out == b"" and b"Traceback" not in err
    assert b"error: -o - streams one sequence as 16-bit PCM, got --batch 2: leave --batch out" in err


def test_a_model_with_nan_weights_is_refused_not_sampled_into_a_constant():
    """Before: generate() (any back-end) returned all-zero codes, a full-scale DC signal."""
    model = make_model()
    with torch.no_grad():
        model.stack.layers[1].out.weight[0, 0] = float("nan")
    for call in (lambda: generate(model, 10, backend="torch"), lambda: generate(model, 10, backend="fast"),
                 lambda: StreamingGenerator(model)):  # fmt: skip
        with pytest.raises(ValueError, match=r"weights hold NaN or infinite values \(stack\.layers\.1\.out\.weight\)"):
            call()


def test_a_stream_in_pieces_goes_on_with_one_probing_schedule(monkeypatch):
    """Batch 1 runs on the two-thread pipeline and probes one thread in a call's second chunk,
    then every REPROBE_CHUNKS chunks (:func:`wavedil.fast.cpu._next_way`, which counts the
    chunks). A stream drawn piece by piece goes on with the last piece's measurements and count:
    before, every piece started again at chunk 1 and probed one thread in its second chunk
    (0.72x of one call's speed for ref30 in pieces of 0.1 s). A call too short to time (a
    prepare's single step) leaves the schedule as it was."""
    import wavedil.fast.cpu as cpu_mod
    from wavedil.backends import register_backend, unregister_backend
    from wavedil.fast import make_fast_backend

    counts = []
    real = cpu_mod._next_way
    monkeypatch.setattr(cpu_mod, "_next_way", lambda chunks, *a: (counts.append(chunks), real(chunks, *a))[1])
    model = make_model()
    register_backend("_test_pieces", make_fast_backend(threads=2, split=True, chunk=64))
    try:
        stream = StreamingGenerator(model, seed=1, backend="_test_pieces")
        stream.prepare()  # one step, not kept
        codes = torch.cat([stream.draw(256) for _ in range(4)], dim=1)
    finally:
        unregister_backend("_test_pieces")
    assert torch.equal(codes, generate(model, 4 * 256, seed=1, backend="torch").codes)
    assert counts[0] == 1 and counts[1:] == list(range(1, len(counts)))  # one count across the pieces
    assert len(counts) >= 16  # 4 pieces of 4 chunks of 64 steps (a pipeline chunk can stop early: more)


def test_numpy_and_tensor_integers_are_counts_floats_and_bools_are_not():
    """Before: ``generate(model, np.int64(5))`` was refused as "not an integer"."""
    model = make_model()
    ref = generate(model, 5, batch_size=2, seed=1, backend="torch").codes
    assert torch.equal(generate(model, np.int64(5), batch_size=np.int32(2), seed=1, backend="torch").codes, ref)
    assert torch.equal(generate(model, torch.tensor(5), batch_size=2, seed=1, backend="torch").codes, ref)
    assert StreamingGenerator(model, batch_size=np.int64(2), seed=1, backend="torch").draw(np.int64(5)).shape == (2, 5)
    for bad in (2.5, True, "5", np.float32(5)):
        with pytest.raises(ValueError, match=r"n_samples must be an integer in \[1, "):
            generate(model, bad)


def test_a_back_end_that_does_not_continue_requests_is_named_for_streams_and_sampled_whole(monkeypatch):
    """A registered back-end that cannot continue a request (``Backend.continues`` False, the
    default) was handed a stream's continued requests; now a stream refuses it by name, ``auto``
    falls back to ``torch`` for streams, and ``generate`` gives it a vocoder's mel in one request."""
    from conftest import tiny_config

    import wavedil.model as model_mod
    from wavedil.backends import TorchBackend, register_backend, unregister_backend
    from wavedil.vocoder_stream import StreamingVocoder

    seen: list[bool] = []

    class Whole(TorchBackend):
        name = "_whole"

        def continues(self, model) -> bool:
            return False

        def sample(self, request):
            seen.append(request.continuation)
            return super().sample(request)

    model = make_model(2, False)
    register_backend("_whole", Whole())
    try:
        with pytest.raises(ValueError, match="the '_whole' back-end does not continue requests .* backend='torch'"):
            StreamingGenerator(model, backend="_whole")
        torch.manual_seed(0)
        vocoder = WaveNet(tiny_config(mel={"sample_rate": 8000, "hop_length": 20, "n_fft": 64, "n_mels": 6})).eval()
        with pytest.raises(ValueError, match="does not continue requests"):
            StreamingVocoder(vocoder, backend="_whole")
        monkeypatch.setattr(model_mod, "UPSAMPLE_CHUNK_FRAMES", 4)
        mel = torch.randn(6, 20 + 2 * vocoder.mel_context, generator=torch.Generator().manual_seed(1)) - 3
        whole = generate(vocoder, None, seed=2, mel=mel, backend="_whole").codes  # 5 pieces' columns, one request
        assert seen == [False] and torch.equal(whole, generate(vocoder, None, seed=2, mel=mel, backend="torch").codes)
    finally:
        unregister_backend("_whole")
    register_backend("_whole", Whole(), auto=True)
    try:
        assert StreamingGenerator(model, backend="auto").backend == "torch"
    finally:
        unregister_backend("_whole")
