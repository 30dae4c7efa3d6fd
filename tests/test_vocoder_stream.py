"""Streaming vocoding (wavedil.vocoder_stream): chunks in, the whole file's samples out."""

from __future__ import annotations

import pytest
import torch
from test_fast import make_head_model, one_torch_thread  # noqa: F401 (autouse fixture)

from wavedil import generate
from wavedil.backends import SamplingRequest, get_backend
from wavedil.fast import make_fast_backend
from wavedil.vocoder_stream import SILENCE_LOG_MEL, StreamingVocoder

CHUNKS = (1, 4, 1, 14, 6, 11)  # frames per push: 37 in all, some shorter than the latency


def _whole_and_streamed(model, mel, chunks, **kwargs):
    c = model.mel_context
    padded = torch.nn.functional.pad(mel, (c, c), value=SILENCE_LOG_MEL)
    batch = mel.shape[0] if mel.dim() == 3 else 1
    ref = generate(model, None, mel=padded, seed=3, batch_size=batch, **kwargs).codes
    voc = StreamingVocoder(model, seed=3, batch_size=ref.shape[0], **kwargs)
    outs, start = [], 0
    for n in chunks:
        outs.append(voc.push(mel[..., start : start + n]))
        start += n
    outs.append(voc.finish())
    return ref, outs, voc


@pytest.mark.parametrize("head", ["mulaw", "mol", "gaussian"])
@pytest.mark.parametrize("backend, weights", [("torch", "fp32"), ("fast", "fp32"), ("fast", "bf16"), ("fast", "int8")])
def test_concatenated_chunks_equal_whole_file_vocoding(head, backend, weights):
    model = make_head_model(head, mel=True)
    mel = torch.randn(model.mel_spec.n_mels, sum(CHUNKS), generator=torch.Generator().manual_seed(1))
    ref, outs, voc = _whole_and_streamed(model, mel, CHUNKS, backend=backend, weights=weights)
    got = torch.cat(outs, dim=1)
    assert got.shape == ref.shape == (1, sum(CHUNKS) * model.mel_spec.hop_length)
    assert torch.equal(got, ref)
    assert voc.samples_out == got.shape[1] and voc.frames_in == sum(CHUNKS)


def test_each_chunk_returns_what_its_frames_determine_with_a_speaker_batch():
    model = make_head_model("mulaw", speaker=True, mel=True)
    hop, c = model.mel_spec.hop_length, model.mel_context
    mel = torch.randn(3, model.mel_spec.n_mels, sum(CHUNKS), generator=torch.Generator().manual_seed(2))
    ref, outs, voc = _whole_and_streamed(model, mel, CHUNKS, backend="fast", speaker=torch.tensor([2, 0, 1]))
    assert torch.equal(torch.cat(outs, dim=1), ref)
    pushed = 0
    for n, out in zip(CHUNKS, outs):
        pushed += n
        # all samples of the frames whose c frames of look-ahead are in, but the last one
        assert out.shape[1] == max(0, (pushed - c) * hop - 1) - max(0, (pushed - n - c) * hop - 1)
    assert voc.latency_frames == c and voc.latency_seconds == c * hop / model.mel_spec.sample_rate


@pytest.mark.parametrize("way", ["default", "pipeline"])
def test_a_continued_request_equals_one_long_request(way):
    """The back-end contract behind streaming: N samples in two continued calls = one call
    (the fast back-end's default for this small model, one slice of rows per thread, and the
    two-thread pipeline over both rows)."""
    model = make_head_model("gaussian", speaker=True)
    impl = get_backend("fast") if way == "default" else make_fast_backend(threads=2, split=True, pipe_rows=2, chunk=64)
    u = torch.rand(400, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    opener = torch.full((2, 1), model.silence_code)
    spk = torch.tensor([1, 2])
    params, state = model.step(opener, model.init_state(2), spk)
    before = params.clone()
    whole = impl.sample(SamplingRequest(model, state, params[:, :, -1], u, 0.9, spk))
    assert torch.equal(params, before)  # the request's tensors are read, not written
    first = SamplingRequest(model, state, params[:, :, -1], u[:150], 0.9, spk, continuation=True)
    a = impl.sample(first)
    b = impl.sample(SamplingRequest(model, first.next_state, first.next_params, u[150:], 0.9, spk))
    assert torch.equal(torch.cat([a, b], dim=1), whole)


def test_bad_input_is_refused_with_the_expected_shape():
    model = make_head_model("mulaw", mel=True)
    voc = StreamingVocoder(model, seed=0)
    with pytest.raises(ValueError, match=r"\(8, F\)"):
        voc.push(torch.randn(5, 3))
    with pytest.raises(ValueError, match="no frames"):
        voc.finish()
    with pytest.raises(ValueError, match="mel conditioning"):
        StreamingVocoder(make_head_model("mulaw"))
    voc.push(torch.randn(8, 2))
    voc.finish()
    with pytest.raises(ValueError, match="finished"):
        voc.push(torch.randn(8, 2))
