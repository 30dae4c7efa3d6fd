"""Resource audit: work that grew with the input far beyond what the job needs is done in bounded pieces.

Each test shows the bounded pieces with a spy and that the result equals the one-pass result
(bitwise). The figures in the docstrings were measured on the development machine (an Intel
Xeon, 2 cores, peak resident memory from ``/usr/bin/time -v``; a bare ``import wavedil`` is
0.63 GB of it).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import soundfile as sf
import torch

import wavedil.audio as audio_mod
import wavedil.conditioning as conditioning
import wavedil.data.whole_files as whole_files
import wavedil.model as model_mod
import wavedil.vocoder_stream as vocoder_stream
from conftest import tiny_config
from wavedil import WaveNet, generate
from wavedil.backends import get_backend
from wavedil.conditioning import MelSpec, log_mel
from wavedil.data import AudioItem, file_mel, iter_file_audio
from wavedil.vocoder_stream import StreamingVocoder
from wavedil.evaluate import file_nll_bits

MEL = {"sample_rate": 8000, "hop_length": 20, "n_fft": 64, "n_mels": 6}


def _vocoder() -> WaveNet:
    torch.manual_seed(0)
    model = WaveNet(tiny_config(mel=MEL)).eval()
    with torch.no_grad():
        for p in model.upsampler.parameters():  # away from the near-identity start, which hides seams
            p.copy_(torch.rand_like(p) - 0.5)
    return model


def _mel(batch: int, frames: int, ctx: int, seed: int = 2) -> torch.Tensor:
    return torch.randn(batch, MEL["n_mels"], frames + 2 * ctx, generator=torch.Generator().manual_seed(seed)) - 3


def _count_upsampler_passes(monkeypatch, model: WaveNet) -> list[tuple[int, int]]:
    """``(rows, frames)`` of every pass of the model's upsampler from now on."""
    passes: list[tuple[int, int]] = []
    forward = type(model.upsampler).forward

    def counting(self, x, crop=0):
        passes.append((x.shape[0], x.shape[-1]))
        return forward(self, x, crop)

    monkeypatch.setattr(type(model.upsampler), "forward", counting)
    return passes


def test_a_large_batch_of_mels_is_upsampled_a_few_frames_at_a_time(monkeypatch):
    """``WaveNet.upsample`` cut a long mel into pieces of UPSAMPLE_CHUNK_FRAMES frames but took the
    batch whole: ``wavedil eval --model speech8k-vocoder`` of the 568-file Allison folder re-synthesises
    its 373 files of at least a second as one batch, whose single upsampler pass asked for an 8.1 GB
    buffer (refused under a 10 GB cap; under 6 GB the command failed after 8 min 42 s). Now a pass
    takes UPSAMPLE_CHUNK_FRAMES frames over the whole batch (a pass over fewer rows rounds
    differently), the same columns: that re-synthesis peaks at 1.9 GB (109 s), and for 40 of the
    files at 0.87 GB instead of 1.51 GB with the same log-mel distance."""
    model = _vocoder()
    ctx = model.mel_context
    mel = _mel(6, 20, ctx)
    with torch.no_grad():
        whole = model.upsample(mel)  # 6 x 20 frames <= 1024: one pass
    passes = _count_upsampler_passes(monkeypatch, model)
    monkeypatch.setattr(model_mod, "UPSAMPLE_CHUNK_FRAMES", 16)
    with torch.no_grad():
        pieces = model.upsample(mel)
    assert passes == [(6, 2 + 2 * ctx)] * 10  # 16 frames a pass over 6 rows: 2 frames each
    assert all(rows * (frames - 2 * ctx) <= 16 for rows, frames in passes)
    assert pieces.shape == whole.shape == (6, MEL["n_mels"], 20 * MEL["hop_length"]) and torch.equal(pieces, whole)


@pytest.mark.parametrize("backend, weights, prompt", [("torch", "fp32", 0), ("fast", "fp32", 37), ("fast", "int8", 0)])
def test_generate_vocodes_a_piece_of_the_upsampled_mel_at_a_time(monkeypatch, backend, weights, prompt):
    """``generate`` upsampled a vocoder's whole mel before sampling: 160 bytes a sample at 40 bands,
    768 MB of the 1.54 GB that ``wavedil vocode --model speech8k-vocoder`` of 600 s peaked at. Now
    a back-end that continues requests samples a piece of UPSAMPLE_CHUNK_FRAMES frames at a time,
    each piece upsampled once, as sampling reaches it, and one held at a time: the same samples
    as one request over the whole conditioning, with a prompt too, and the progress reports of
    one run. A NaN in the last frame is still refused before any sampling."""
    model = _vocoder()
    ctx, hop = model.mel_context, MEL["hop_length"]
    mel = _mel(1, 30, ctx)[0]
    head = torch.randint(0, model.quantization_channels, (prompt,), generator=torch.Generator().manual_seed(4)) if prompt else None
    expected = generate(model, None, seed=3, mel=mel, prompt=head, backend=backend, weights=weights).codes  # one piece
    passes = _count_upsampler_passes(monkeypatch, model)
    monkeypatch.setattr(model_mod, "UPSAMPLE_CHUNK_FRAMES", 8)
    impl, requests = get_backend(backend), []
    sample = impl.sample

    def recording(request):
        requests.append((request.n_samples, request.local.shape[-1], request.continuation))
        return sample(request)

    monkeypatch.setattr(impl, "sample", recording)
    done: list[int] = []
    codes = generate(model, None, seed=3, mel=mel, prompt=head, backend=backend, weights=weights, progress=done.append).codes
    assert codes.shape == (1, 30 * hop - prompt) and torch.equal(codes, expected)
    assert passes == [(1, 8 + 2 * ctx)] * 3 + [(1, 6 + 2 * ctx)]  # 30 frames, each piece once
    n, width = 30 * hop - prompt, 8 * hop  # the samples drawn, and a piece's columns
    drawn = [(width, width + 1, True)] * (n // width) + [(n % width, n % width, False)]
    assert requests[-len(drawn) :] == drawn  # (after the fast back-end's one-sample warm-up request)
    assert done == sorted(done) and done[-1] == 30 * hop - prompt and len(done) >= 4
    bad = mel.clone()
    bad[:, -ctx - 1] = float("nan")  # the last frame of the audio
    passes.clear()
    with pytest.raises(ValueError, match="NaN or infinite"):
        generate(model, None, seed=3, mel=bad, backend=backend, weights=weights)
    assert passes == []


def test_a_vocoders_file_is_evaluated_without_its_whole_upsampled_conditioning(monkeypatch):
    """``file_nll_bits`` upsampled a vocoder's whole file before streaming it through the model a
    chunk at a time: 160 bytes a sample at 40 bands, 0.77 GB for 600 s at 8 kHz (the evaluation of
    600 s with a 40-band, hop-80 model needed 956 MB above the import). Now it upsamples the pieces
    WaveNet.upsample itself would, as the chunks reach them, one held at a time: 312 MB, the same
    bits. The figure equals that of the whole conditioning, bitwise."""
    model = _vocoder()
    ctx, hop = model.mel_context, MEL["hop_length"]
    monkeypatch.setattr(model_mod, "UPSAMPLE_CHUNK_FRAMES", 8)
    frames, chunk = 50, 64
    mel = _mel(1, frames, ctx)[0]
    codes = torch.randint(0, 32, (frames * hop - 7,), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():  # what file_nll_bits did: the whole conditioning, then the chunks
        local = model.upsample(mel)
        inputs = torch.cat([torch.full((1,), model.silence_code), codes]).unsqueeze(0)
        state, expected = model.init_state(1), 0.0
        for i in range(0, codes.numel(), chunk):
            x = inputs[:, i : min(i + chunk, codes.numel())]
            params, state = model.step(x, state, None, local[:, :, i : i + x.shape[1]])
            target = inputs[:, i + 1 : i + 1 + x.shape[1]].reshape(-1)
            expected += model.dist.bits(params.transpose(1, 2).flatten(0, 1), target, reduction="sum").item()
    passes = _count_upsampler_passes(monkeypatch, model)
    bits, n = file_nll_bits(model, codes, chunk=chunk, cond={"mel": mel})
    assert n == codes.numel() and bits == expected
    # each piece of 8 frames once, as the chunks reach it
    assert passes == [(1, 8 + 2 * ctx)] * 6 + [(1, 2 + 2 * ctx)]
    with pytest.raises(ValueError, match="the mel covers"):
        file_nll_bits(model, torch.zeros(frames * hop + 1, dtype=torch.long), cond={"mel": mel})


def test_the_first_seconds_of_a_file_given_by_itself_are_read_alone(tmp_path, monkeypatch):
    """``iter_file_audio`` read only the first ``max_seconds`` of a corpus file, but a file given by
    itself (not probed: ``wavedil eval FILE --max-seconds``, and eval's re-synthesis of
    ``--vocode-seconds`` of every such file) was read, resampled and cut whole: ``wavedil eval --model
    speech8k`` of 1 s of a 14-minute 44.1 kHz stereo file took 1.16 GB and 11.8 s. Its header now
    says how much to read: 0.70 GB and 3.8 s, the same figures, and the same samples as for the
    probed file (and, at the model's rate, as a whole read cut)."""
    rng = np.random.default_rng(0)
    for rate in (8000, 16000):
        path = tmp_path / f"long_{rate}.wav"
        sf.write(path, (0.3 * rng.standard_normal(rate * 6)).astype(np.float32), rate, subtype="PCM_16")
    frames_read: list[int] = []
    read_audio = whole_files.read_audio

    def spying(path, sample_rate=None, start=0, frames=-1, **kw):
        frames_read.append(frames)
        return read_audio(path, sample_rate, start, frames, **kw)

    whole = read_audio(tmp_path / "long_8000.wav", 8000)[0][: int(0.5 * 8000)]
    probed = [w for _, w in iter_file_audio([AudioItem(tmp_path / "long_16000.wav", None, 96000, 16000)], 8000, 0.5)]
    monkeypatch.setattr(whole_files, "read_audio", spying)
    given = [AudioItem(tmp_path / "long_8000.wav"), AudioItem(tmp_path / "long_16000.wav")]
    (_, same_rate), (_, resampled) = iter_file_audio(given, 8000, 0.5)
    assert frames_read == [math.ceil(0.5 * 8000), math.ceil(0.5 * 16000)]
    assert torch.equal(same_rate, whole) and torch.equal(resampled, probed[0]) and resampled.shape == (4000,)
    frames_read.clear()  # without max_seconds a file is read whole, as before
    assert [w.shape[0] for _, w in iter_file_audio(given, 8000)] == [48000, 48000] and frames_read == [-1, -1]
    (tmp_path / "broken.wav").write_bytes(b"RIFF not audio")  # skipped with a warning, as before
    assert [w.shape[0] for _, w in iter_file_audio([AudioItem(tmp_path / "broken.wav")] + given, 8000, 0.5)] == [
        4000, 4000]  # fmt: skip


def _count_mel_passes(monkeypatch) -> list[int]:
    """Frames of every STFT pass of :func:`wavedil.conditioning.log_mel` from now on."""
    passes: list[int] = []
    transform = conditioning._mel_transform

    def spying(spec, device):
        mel_spectrogram = transform(spec, device)

        def counting(span: torch.Tensor) -> torch.Tensor:
            out = mel_spectrogram(span)  # (..., n_mels, frames)
            passes.append(out.shape[-1])
            return out

        return counting

    monkeypatch.setattr(conditioning, "_mel_transform", spying)
    return passes


def test_a_long_files_log_mel_is_analysed_a_few_thousand_frames_at_a_time(monkeypatch):
    """``log_mel`` ran one STFT over all the frames asked for: ``file_mel`` of 30 minutes of 8 kHz
    audio with speech8k-vocoder's MelSpec (n_fft 256, hop 80) held its windowed frames, their
    spectrum and magnitudes at once, about 35 bytes a sample for features of 2: read and analysed,
    1.10 GB and 1.44 s. Now a pass takes MEL_CHUNK_FRAMES frames into the features: 0.67 GB and
    0.46 s, the same features bitwise (a last pass of one frame joins the one before: its mel
    filtering, a matrix-vector product, rounds differently)."""
    spec = MelSpec(**MEL)
    gen = torch.Generator().manual_seed(5)
    wav = 0.3 * torch.randn(50 * MEL["hop_length"] + 7, generator=gen)  # 51 frames, 57 with the context
    batch = 0.3 * torch.randn(3, 40 * MEL["hop_length"], generator=gen)
    whole, whole_batch = file_mel(wav, spec, 3), log_mel(batch, spec)  # <= MEL_CHUNK_FRAMES: one pass
    passes = _count_mel_passes(monkeypatch)
    monkeypatch.setattr(conditioning, "MEL_CHUNK_FRAMES", 8)
    pieces = file_mel(wav, spec, 3)
    assert passes == [8] * 6 + [9]  # 57 frames: the last frame joins the pass before
    assert pieces.shape == whole.shape == (MEL["n_mels"], 57) and torch.equal(pieces, whole)
    passes.clear()
    assert torch.equal(log_mel(batch, spec), whole_batch) and passes == [8] * 5  # (B, T) too
    bad = wav.clone()
    bad[-3] = float("nan")  # read by the last pass only
    with pytest.raises(ValueError, match="NaN or infinite"):
        file_mel(bad, spec, 3)


def test_a_multichannel_file_is_downmixed_a_block_at_a_time(tmp_path, monkeypatch):
    """``read_audio`` read all ``(T, C)`` frames of a multi-channel file, then checked, averaged and
    took the magnitudes of them whole: ``read_audio`` of 30 minutes of 44.1 kHz stereo to 8 kHz (what
    ``wavedil vocode`` and ``eval`` do with such a file) took 1.87 GB and 13 s. Now it reads and
    downmixes _DOWNMIX_BLOCK frames at a time into the mono signal, and its peak comes from the
    signal's extremes: 1.25 GB and 6 s, the same samples bitwise (the mean of each frame's
    channels, as before), and the same refusal of a file holding NaN."""
    rng = np.random.default_rng(3)
    frames = (0.4 * rng.standard_normal((4500, 3))).astype(np.float32)
    frames[100, 1] = 1.5  # float data beyond full scale: clipped, as before
    sf.write(tmp_path / "three.wav", frames, 8000, subtype="FLOAT")
    sf.write(tmp_path / "stereo.flac", frames[:, :2], 16000, subtype="PCM_16")
    expected = {}  # what read_audio did: all frames, then their mean
    for name in ("three.wav", "stereo.flac"):
        data = sf.read(tmp_path / name, dtype="float32", always_2d=True)[0]
        expected[name] = torch.from_numpy(data.mean(axis=1)).clamp(-1.0, 1.0)
    blocks: list[int] = []
    downmix = audio_mod._downmix
    monkeypatch.setattr(audio_mod, "_downmix", lambda data: blocks.append(data.shape[0]) or downmix(data))
    monkeypatch.setattr(audio_mod, "_DOWNMIX_BLOCK", 1000)
    wav, _ = audio_mod.read_audio(tmp_path / "three.wav")
    assert blocks == [1000] * 4 + [500] and torch.equal(wav, expected["three.wav"])
    blocks.clear()
    span, _ = audio_mod.read_audio(tmp_path / "stereo.flac", start=-2100, frames=3000)  # past the end: 2100
    assert blocks == [1000, 1000, 100] and torch.equal(span, expected["stereo.flac"][-2100:])
    resampled, _ = audio_mod.read_audio(tmp_path / "stereo.flac", 8000)
    assert torch.equal(resampled, audio_mod.resample(expected["stereo.flac"], 16000, 8000))
    frames[4321, 2] = float("nan")
    sf.write(tmp_path / "nan.wav", frames, 8000, subtype="FLOAT")
    with pytest.raises(audio_mod.AudioReadError, match="NaN or infinite"):
        audio_mod.read_audio(tmp_path / "nan.wav")


@pytest.mark.parametrize("backend", ["torch", "fast"])
def test_a_long_push_to_a_streaming_vocoder_is_upsampled_and_drawn_a_piece_at_a_time(monkeypatch, backend):
    """``StreamingVocoder.push`` upsampled all the frames a push made ready, then appended them to
    the columns held: ``wavedil vocode --model speech8k-vocoder --stream - -o out.wav`` fed a saved
    600 s log-mel as one chunk peaked at 2.25 GB (160 bytes a sample at 40 bands, twice) before its
    first sample. Now a push upsamples the pieces WaveNet.upsample makes one at a time, drawing each
    piece's samples before making the next: 0.98 GB, and the same samples as pushes upsampled whole
    (the same columns; draws continued across pieces): 25 s in one chunk gave the same file before
    and after (0.98 and 0.92 GB)."""
    model = _vocoder()
    ctx, hop = model.mel_context, MEL["hop_length"]
    frames = _mel(1, 30, 0)[0]  # (n_mels, 30): a stream's raw frames

    def run() -> torch.Tensor:
        voc = StreamingVocoder(model, seed=3, backend=backend)
        return torch.cat([voc.push(frames[:, :25]), voc.push(frames[:, 25:]), voc.finish()], dim=1)

    expected = run()  # every push ready fewer frames than UPSAMPLE_CHUNK_FRAMES: one pass each, as before
    passes = _count_upsampler_passes(monkeypatch, model)
    monkeypatch.setattr(model_mod, "UPSAMPLE_CHUNK_FRAMES", 8)
    widths: list[int] = []  # columns held by each request of samples
    request = vocoder_stream.SamplingRequest

    def spying(*args, **kwargs):
        widths.append(kwargs["local"].shape[-1])
        return request(*args, **kwargs)

    monkeypatch.setattr(vocoder_stream, "SamplingRequest", spying)
    codes = run()
    assert codes.shape == (1, 30 * hop) and torch.equal(codes, expected)
    first = 25 - ctx  # the first push makes ready all but the last ctx frames
    assert [f - 2 * ctx for _, f in passes] == [8, 8, first - 16, 5, ctx]  # each piece once, 8 frames at most
    assert max(widths) <= 1 + 8 * hop and sum(widths) - len(widths) + 1 == 30 * hop
