"""Tests added by a mutation audit of the fast back-end's driver and packing, streaming vocoding,
evaluation and checkpoint lookup: each one fails on a plausible bug (a mutant) that the rest of
the suite let through, and passes on the real code.

Covered here:

* packing (:mod:`wavedil.fast.pack`): int8 scales are ``max|w| / 127`` per output column (every
  weight within half a step); the pipeline's head halves are column blocks of width
  ``ceil(n / 2)``, zero padded; the torch path of the local-conditioning biases
  (:func:`pack_cond_bias`, which the numba kernels' ``cond_bias`` stands in for on the CPU)
  equals the model's own conv bias plus speaker plus mel terms;
* the CPU driver (:mod:`wavedil.fast.cpu`): chunk sizes and the thread cap; the packed-weights
  cache sees in-place weight updates; ``_balance`` moves work towards the thread that waited; a measured small batch
  remembers the faster way; ``pipe_rows`` puts a batch on the pipeline whatever the mode's
  starting guess; teacher forcing with mel conditioning in several chunks equals the forward;
* streaming vocoding: ``samples_out`` counts samples per stream; a chunk of exactly
  ``MAX_CHUNK_FRAMES`` frames is accepted; a stream exactly ``max_seconds`` long is vocoded;
  a NaN in any row of a batch push is refused; the stats' latency in milliseconds;
* evaluation: bz2 baseline bytes (u8 for 256 classes, PCM int16 above); a vocoder's unigram
  and sample count cover every code; per-file bits are per predicted sample; ``split`` picks
  the named side, by default with the run's ``data.valid_fraction`` (training's default when the
  checkpoint has no data config); a code equal to ``Q`` is
  refused; the re-synthesis baselines take at least one frame of each file and compare each
  file with the next;
* checkpoints: the newest checkpoint is the highest step, also when names are not zero padded;
  a run folder whose ``checkpoints/`` holds nothing usable falls back to the folder itself;
  ``use_ema=False`` loads the raw weights; a missing ``sample_rate`` comes from the model's mel
  settings before the run's data config;
* pretrained models: ``file_sha256`` hashes every chunk; a card's digest is compared case
  insensitively; a ``model.pt`` at another rate than its card's, or a card naming another
  folder, is refused.

Tiny models only; the file runs in well under 30 seconds once numba's cache is warm.
"""

from __future__ import annotations

import bz2
import io
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from test_fast import _fast_codes, make_head_model, make_model, one_torch_thread  # noqa: F401 (autouse fixture)

from wavedil import WaveNet, WaveNetConfig
from wavedil.fast import make_fast_backend, teacher_forced_logits

# ----------------------------------------------------------------------------- packing


def test_int8_scales_are_the_column_maximum_over_127_and_every_weight_within_half_a_step():
    """``s = max|w[:, o]| / 127``: the largest weight of each column is code +-127 and every
    weight comes back within ``s / 2``."""
    from wavedil.fast.pack import dequantize, quantize

    w = np.random.default_rng(3).standard_normal((2, 30, 17)).astype(np.float32)
    q, s = quantize(w, "int8")
    amax = np.abs(w).max(axis=-2)
    np.testing.assert_array_equal(s, (amax / np.float32(127.0)).astype(np.float32))
    assert np.all(np.abs(q.astype(np.int32)).max(axis=-2) == 127)
    assert np.all(np.abs(dequantize(q, s) - w) <= s[..., None, :] * 0.5 * (1 + 1e-6))


@pytest.mark.parametrize("head_channels, q", [(10, 32), (11, 37)])
def test_head_halves_are_column_blocks_of_half_the_width_rounded_up(head_channels, q):
    """Each thread of the pipeline gets columns ``[0, ceil(n/2))`` or the rest of the head's
    matrices, biases and scales, zero padded to ``ceil(n/2)``."""
    from wavedil.fast.pack import pack_model

    p = pack_model(make_model(head_channels=head_channels, quantization_channels=q), "fp32")
    (h1, b1, h2, b2), (h1_s, h2_s) = p.head_halves
    for halves, full in ((h1, p.h1), (b1, p.b1), (h2, p.h2), (b2, p.b2), (h1_s, p.scales[3]), (h2_s, p.scales[4])):
        n = full.shape[-1]
        half = -(-n // 2)
        assert halves.shape == (2,) + full.shape[:-1] + (half,)
        np.testing.assert_array_equal(halves[0], full[..., :half])
        np.testing.assert_array_equal(halves[1][..., : n - half], full[..., half:])
        assert np.all(halves[1][..., n - half :] == 0)


def test_cond_bias_torch_path_is_conv_bias_plus_speaker_plus_mel_terms():
    """:func:`pack_cond_bias` (the biases' torch path) and the kernels' ``cond_bias`` both equal
    each layer's ``conv.bias + gc(g) + lc(l_t)``, computed from the model's own layers, for a
    batch of two speakers."""
    from wavedil.fast.cpu import _Biases, load_kernels
    from wavedil.fast.pack import pack_cond_bias, pack_global_bias, pack_model

    model = make_head_model("mulaw", speaker=True, mel=True)
    packed = pack_model(model)
    g = model.speaker(torch.tensor([2, 0]))
    local = torch.randn(2, model.mel_spec.n_mels, 7, generator=torch.Generator().manual_seed(0))
    gbias = pack_global_bias(packed, g, 2)
    with torch.no_grad():
        want = torch.stack([
            (layer.conv.bias[None, :, None] + layer.gc(g)[:, :, None] + layer.lc(local)).permute(2, 0, 1)
            for layer in model.stack.layers
        ], dim=2).numpy()  # (T, B, NL, G)  # fmt: skip
    np.testing.assert_allclose(pack_cond_bias(packed, gbias, local), want, rtol=0, atol=1e-5)
    torch_path = _Biases(packed, gbias, local, shift=0)(0, 7)
    kernel_path = _Biases(packed, gbias, local, shift=0, kern=load_kernels())(0, 7)
    np.testing.assert_allclose(torch_path, want, rtol=0, atol=1e-5)
    np.testing.assert_allclose(kernel_path, torch_path, rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------- the CPU driver


def test_packed_weights_cache_sees_an_in_place_weight_update():
    """An in-place update (an optimiser step) invalidates the cached packing: the fast back-end
    then samples what a fresh copy of the updated model samples."""
    import copy

    from wavedil.fast.cpu import packed_weights

    model = make_model()
    before = packed_weights(model, "fp32")
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.5)
    after = packed_weights(model, "fp32")
    assert after is not before
    np.testing.assert_allclose(after.wc, before.wc * 1.5, rtol=1e-6)
    fresh = copy.deepcopy(model)
    backend = make_fast_backend(threads=1)
    assert torch.equal(_fast_codes(backend, model, 200, seed=1), _fast_codes(backend, fresh, 200, seed=1))


def test_balance_moves_a_layer_towards_the_thread_that_waited():
    """Thread 0 idle longer: it takes one more layer's past taps (at most all of them); thread 1
    idle longer: one fewer (at least none); equal: unchanged."""
    from wavedil.fast.cpu import _balance, _pipe_own
    from wavedil.fast.pack import pack_model

    packed = pack_model(make_model())  # 6 layers: thread 0 starts with 6 // 4 = 1
    assert _pipe_own(packed, 1) == 1
    _balance(packed, 1, 100, 10)
    assert _pipe_own(packed, 1) == 2
    _balance(packed, 1, 10, 10)
    assert _pipe_own(packed, 1) == 2
    for _ in range(3):
        _balance(packed, 1, 10, 100)
    assert _pipe_own(packed, 1) == 0
    for _ in range(9):
        _balance(packed, 1, 100, 10)
    assert _pipe_own(packed, 1) == len(packed.dil)
    assert _pipe_own(packed, 3) == 1  # per batch size


def test_chunk_steps_grow_from_the_base_chunk_with_the_measured_rate_and_threads_are_capped():
    """Without ``chunk``: ``DEFAULT_CHUNK // B`` steps, or about ``CHUNK_SECONDS`` of them at the
    measured rate, never fewer than the base; with local conditioning (``per_step``) or an explicit
    ``chunk`` the base alone. Threads never exceed the usable CPUs."""
    from wavedil.fast.cpu import CHUNK_SECONDS, DEFAULT_CHUNK, CpuOptions, usable_cpus

    opts = CpuOptions()
    base = DEFAULT_CHUNK // 4
    assert opts.chunk_steps(4, False, None) == base
    assert opts.chunk_steps(4, False, rate=1.0) == base  # a slow chunk does not shrink the next
    assert opts.chunk_steps(4, False, rate=1e6) == int(1e6 * CHUNK_SECONDS)
    assert opts.chunk_steps(4, True, rate=1e6) == base
    assert CpuOptions(chunk=10).chunk_steps(4, False, rate=1e6) == 2
    assert CpuOptions(chunk=10).chunk_steps(40, False) == 1
    assert CpuOptions(threads=usable_cpus() + 3).resolve_threads() == usable_cpus()
    assert CpuOptions(threads=1).resolve_threads() == 1


def _count_calls(monkeypatch, delay_pipe: float = 0.0) -> dict[str, int]:
    """Count the kernels' non-empty chunks (optionally slowing the pipeline down)."""
    import time

    import wavedil.fast.cpu as cpu

    kern = cpu.load_kernels()
    calls = {"pipe": 0, "rows": 0}

    def counting(name, fn):
        def wrapped(*args):
            t0, t1 = args[2:4] if name == "pipe" else args[0:2]
            if t1 > t0:
                calls[name] += 1
                if name == "pipe" and delay_pipe:
                    time.sleep(delay_pipe)
            return fn(*args)

        return wrapped

    monkeypatch.setattr(kern, "run_pipe", counting("pipe", kern.run_pipe))
    monkeypatch.setattr(kern, "run_rows", counting("rows", kern.run_rows))
    return calls


def test_a_measured_small_batch_remembers_the_faster_way(monkeypatch):
    """A pipeline made slow (each chunk sleeps) loses to slices of rows: that is what is remembered."""
    import wavedil.fast.cpu as cpu

    calls = _count_calls(monkeypatch, delay_pipe=0.25)
    model = make_model()
    packed = cpu.packed_weights(model, "fp32")
    packed.tuning.pop(("pipe_way", 3), None)
    ref = _fast_codes(make_fast_backend(threads=1), model, 60, seed=3, batch_size=3)
    got = _fast_codes(make_fast_backend(threads=2, split=True, chunk=30), model, 60, seed=3, batch_size=3)
    assert torch.equal(got, ref)
    assert calls["pipe"] >= 1 and calls["rows"] >= 1, calls
    assert packed.tuning[("pipe_way", 3)] is False


@pytest.mark.parametrize("weights", ["bf16", "int8"])
def test_pipe_rows_puts_the_batch_on_the_pipeline_in_every_mode(monkeypatch, weights):
    """``pipe_rows=B`` runs a batch of ``B`` on the pipeline, unmeasured, even where the mode's
    starting guess (:data:`PIPE_MAX_ROWS`: bf16 4, int8 1) would pick slices."""
    import wavedil.fast.cpu as cpu

    calls = _count_calls(monkeypatch)
    model = make_model()
    cpu.packed_weights(model, weights).tuning.pop(("pipe_way", 5), None)
    backend = make_fast_backend(threads=2, split=True, chunk=50, pipe_rows=5)
    _fast_codes(backend, model, 40, seed=3, batch_size=5, weights=weights)
    assert calls["pipe"] > 0 and calls["rows"] == 0, calls


def test_teacher_forcing_with_mel_in_many_chunks_equals_the_forward(monkeypatch):
    """Teacher forcing of a vocoder runs ``TEACHER_FORCED_CHUNK`` steps per kernel call: chunks of
    64 over 320 samples give every step the model's forward gives."""
    import wavedil.fast.cpu as cpu

    monkeypatch.setattr(cpu, "TEACHER_FORCED_CHUNK", 64)
    model = make_head_model("mulaw", mel=True)
    codes = torch.randint(0, model.quantization_channels, (2, 320), generator=torch.Generator().manual_seed(0))
    frames = 320 // model.mel_spec.hop_length + 2 * model.mel_context
    mel = torch.randn(2, model.mel_spec.n_mels, frames, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(codes, None, mel)
    got = teacher_forced_logits(model, codes, None, mel)
    assert (got - ref).abs().max().item() <= 1e-4


# ----------------------------------------------------------------------------- streaming vocoding


def test_samples_out_counts_the_samples_of_one_stream_in_a_batch():
    from wavedil.vocoder_stream import StreamingVocoder

    model = make_head_model("mulaw", mel=True)
    voc = StreamingVocoder(model, batch_size=2, seed=0, backend="torch")
    a = voc.push(torch.randn(2, model.mel_spec.n_mels, 5, generator=torch.Generator().manual_seed(0)))
    b = voc.finish()
    assert a.shape[0] == b.shape[0] == 2
    assert voc.samples_out == a.shape[1] + b.shape[1] == 5 * model.mel_spec.hop_length


def test_a_push_with_nan_in_any_row_of_the_batch_is_refused():
    from wavedil.vocoder_stream import StreamingVocoder

    model = make_head_model("mulaw", mel=True)
    voc = StreamingVocoder(model, batch_size=2, seed=0, backend="torch")
    frames = torch.zeros(2, model.mel_spec.n_mels, 4)
    frames[1, 3, 2] = math.nan  # second row only
    with pytest.raises(ValueError, match=r"frame 2 of the 4 frames pushed"):
        voc.push(frames)
    assert voc.frames_in == 0


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def test_a_chunk_of_exactly_max_chunk_frames_is_read_and_one_more_is_refused():
    from wavedil.vocoder_stream import MAX_CHUNK_FRAMES, iter_npy_chunks

    ok = np.zeros((1, MAX_CHUNK_FRAMES), np.float32)
    (chunk,) = iter_npy_chunks(io.BytesIO(_npy(ok)), 1)
    assert chunk.shape == (1, MAX_CHUNK_FRAMES)
    with pytest.raises(ValueError, match="declares 100,001 frames"):
        list(iter_npy_chunks(io.BytesIO(_npy(np.zeros((1, MAX_CHUNK_FRAMES + 1), np.float32))), 1))


def test_a_stream_exactly_max_seconds_long_is_vocoded(tmp_path):
    """``max_seconds`` refuses a *longer* stream: 10 frames of hop 40 at 8 kHz are 0.05 s. The
    stats give the look-ahead in frames and in milliseconds."""
    from wavedil.vocoder_stream import vocode_stream

    model = make_head_model("mulaw", mel=True)
    data = _npy(np.full((model.mel_spec.n_mels, 10), -5.0, np.float32))
    stats = vocode_stream(model, io.BytesIO(data), tmp_path / "a.wav", seed=1, backend="torch", max_seconds=0.05)
    assert stats.frames == 10 and stats.samples == 400
    c = model.mel_context
    assert stats.latency_frames == c and stats.latency_ms == pytest.approx(1000 * c * 40 / 8000)
    assert sf.info(str(tmp_path / "a.wav")).frames == 400
    with pytest.raises(ValueError, match="longer than --max-seconds"):
        vocode_stream(model, io.BytesIO(data), tmp_path / "b.wav", seed=1, backend="torch", max_seconds=0.049)
    assert not (tmp_path / "b.wav").exists()


# ----------------------------------------------------------------------------- evaluation


def test_bz2_baseline_compresses_bytes_or_pcm_int16():
    """256 classes: one unsigned byte per code; more: little-endian int16 of ``code - 32768``."""
    from wavedil.evaluate import bz2_bits_per_sample

    rng = np.random.default_rng(0)
    small = torch.from_numpy(rng.integers(0, 256, 3000))
    want = 8 * len(bz2.compress(small.numpy().astype("u1").tobytes(), 9)) / 3000
    assert bz2_bits_per_sample([small[:1000], small[1000:]], 256) == want
    wide = torch.from_numpy(rng.integers(0, 65536, 3000))
    want = 8 * len(bz2.compress((wide.numpy() - 32768).astype("<i2").tobytes(), 9)) / 3000
    assert bz2_bits_per_sample([wide], 65536) == want


def _unigram(codes: torch.Tensor, q: int) -> float:
    p = torch.bincount(codes, minlength=q).double() / codes.numel()
    p = p[p > 0]
    return float(-(p * p.log2()).sum())


def test_a_vocoders_report_counts_every_code_and_a_plain_models_all_but_the_first():
    """A vocoder predicts all ``T`` codes (from a silent opener): its unigram and bz2 baselines
    cover all of them; a plain model predicts ``codes[1:]``. Per-file figures are bits per
    predicted sample."""
    from wavedil.evaluate import bz2_bits_per_sample, evaluate_codes

    voc = make_head_model("mulaw", mel=True)
    hop, c = voc.mel_spec.hop_length, voc.mel_context
    codes = torch.randint(0, voc.quantization_channels, (200,), generator=torch.Generator().manual_seed(0))
    codes[0] = 31  # a code that occurs once, first
    codes[1:][codes[1:] == 31] = 30
    mel = torch.randn(voc.mel_spec.n_mels, 200 // hop + 2 * c, generator=torch.Generator().manual_seed(1))
    report = evaluate_codes(voc, [("a", codes, {"mel": mel})])
    assert report.n_samples == 200
    assert report.unigram_bits == pytest.approx(_unigram(codes, 32), abs=1e-12)
    assert report.bz2_bits == bz2_bits_per_sample([codes], 32)

    plain = make_model()
    report = evaluate_codes(plain, [("b", codes)])
    assert report.n_samples == 199 and report.per_file[0][2] == 199
    assert report.unigram_bits == pytest.approx(_unigram(codes[1:], 32), abs=1e-12)
    assert report.per_file[0][1] == pytest.approx(report.model_bits, rel=1e-12)


def test_a_code_equal_to_the_class_count_is_refused_naming_the_file():
    from wavedil.evaluate import evaluate_codes

    codes = torch.tensor([0, 5, 32, 7])  # Q = 32: codes are 0 .. 31
    with pytest.raises(ValueError, match=r"codes of 'bad' fall outside \[0, 32\)"):
        evaluate_codes(make_model(), [("bad", codes)])


def test_vocode_baselines_of_segments_shorter_than_a_frame_and_against_the_next_file():
    """``seconds`` below one frame still takes one frame of each file; ``other_file`` is the
    mean distance of each segment to the next one, cyclically."""
    from wavedil.audio import decode, encode
    from wavedil.evaluate import log_mel_distance, vocode_baselines

    model = make_head_model("mulaw", mel=True)
    spec, hop = model.mel_spec, model.mel_spec.hop_length
    g = torch.Generator().manual_seed(0)
    waves = [(f"w{i}", 0.3 * torch.randn(5 * hop + 7, generator=g)) for i in range(3)]
    segs = [w[:hop] for _, w in waves]
    q = model.quantization_channels
    out = vocode_baselines(model, waves, seconds=0.001)  # 8 samples < one frame of 40
    codec = sum(log_mel_distance(w, decode(encode(w, model.encoding, q), model.encoding, q), spec) for w in segs) / 3
    assert out["codec"] == pytest.approx(codec, rel=1e-6)
    segs = [w[: 3 * hop] for _, w in waves]
    out = vocode_baselines(model, waves, seconds=3 * hop / spec.sample_rate)
    other = sum(log_mel_distance(segs[i], segs[(i + 1) % 3], spec) for i in range(3)) / 3
    assert out["other_file"] == pytest.approx(other, rel=1e-6)


def _eval_run(tmp_path, valid_fraction: float):
    """A run folder of a random tiny model at 8 kHz trained (so its config says) with
    ``valid_fraction``, and a folder of eight short files."""
    from wavedil.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = WaveNet(WaveNetConfig(residual_channels=8, gate_channels=16, skip_channels=12, head_channels=10,
                                  layers_per_stack=2, stacks=1))  # fmt: skip
    run = tmp_path / "run"
    save_checkpoint({"format": 1, "model": model.state_dict(), "model_config": model.config.to_dict(), "step": 1,
                     "sample_rate": 8000, "config": {"data": {"valid_fraction": valid_fraction}}},
                    run / "checkpoints" / "step_00000001.pt")  # fmt: skip
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        sf.write(corpus / f"utt{i}.wav", (0.3 * rng.standard_normal(200)).astype(np.float32), 8000, subtype="PCM_16")
    return run, corpus


def test_eval_split_takes_the_named_side_by_default_with_the_runs_valid_fraction(tmp_path):
    from wavedil.data import load_corpus, split_items
    from wavedil.evaluate import evaluate_files

    run, corpus = _eval_run(tmp_path, valid_fraction=0.6)
    items = load_corpus(corpus)
    train, valid = split_items(items, valid_fraction=0.6)
    assert len(split_items(items, valid_fraction=0.1)[1]) != len(valid)  # the fraction matters here
    names = lambda res: sorted(str(name) for name, _, _ in res.report.per_file)  # noqa: E731
    assert names(evaluate_files(run, [corpus], split="valid")) == sorted(str(it.path) for it in valid)
    assert names(evaluate_files(run, [corpus], split="train")) == sorted(str(it.path) for it in train)
    explicit = split_items(items, valid_fraction=0.1)[1]
    assert names(evaluate_files(run, [corpus], split="valid", valid_fraction=0.1)) == sorted(
        str(it.path) for it in explicit
    )


def test_a_checkpoint_without_a_data_config_is_split_with_trainings_default_fraction():
    """``--split`` of a checkpoint saved without ``config.data`` holds out what training would
    have (``DataConfig``'s default, 0.05), not another fraction (it was 0.1)."""
    from wavedil.evaluate import run_valid_fraction
    from wavedil.train_config import DataConfig

    assert run_valid_fraction({}) == run_valid_fraction({"config": None}) == DataConfig.valid_fraction == 0.05
    assert run_valid_fraction({"config": {"data": {"sample_rate": 8000}}}) == 0.05
    assert run_valid_fraction({"config": {"data": {"valid_fraction": 0.25}}}) == 0.25


# ----------------------------------------------------------------------------- checkpoints


def test_newest_checkpoint_is_the_highest_step_without_zero_padding(tmp_path):
    from wavedil.checkpoint import list_checkpoints, open_checkpoint, save_checkpoint

    folder = tmp_path / "run" / "checkpoints"
    for step in (999, 1000, 20):
        save_checkpoint({"format": 1, "model": {"w": torch.ones(1)}, "model_config": {}, "step": step},
                        folder / f"step_{step}.pt")  # fmt: skip
    assert [p.name for p in list_checkpoints(folder)] == ["step_1000.pt", "step_999.pt", "step_20.pt"]
    path, ckpt = open_checkpoint(tmp_path / "run")
    assert path.name == "step_1000.pt" and ckpt["step"] == 1000


def test_a_run_folder_whose_checkpoints_folder_has_nothing_usable_falls_back_to_the_folder_itself(tmp_path):
    """``checkpoints/`` is searched first, then the run folder: an empty or corrupt-only
    ``checkpoints/`` does not hide the step files beside it."""
    from wavedil.checkpoint import open_checkpoint, save_checkpoint

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "step_00000009.pt").write_bytes(b"PK\x03\x04 cut short")
    save_checkpoint({"format": 1, "model": {"w": torch.ones(1)}, "model_config": {}, "step": 5}, run / "step_00000005.pt")
    path, ckpt = open_checkpoint(run)
    assert path == run / "step_00000005.pt" and ckpt["step"] == 5


def test_use_ema_false_loads_the_raw_weights_of_a_checkpoint_with_an_ema():
    from wavedil.checkpoint import model_from_checkpoint

    model = make_model()
    raw = {k: v.clone() for k, v in model.state_dict().items()}
    ema = {k: v + 1.0 for k, v in raw.items()}
    ckpt = {"format": 1, "model": raw, "ema": ema, "model_config": model.config.to_dict()}
    for use_ema, want in ((True, ema), (False, raw)):
        got = model_from_checkpoint(ckpt, use_ema=use_ema).state_dict()
        assert all(torch.equal(got[k], want[k]) for k in want), use_ema


def test_a_missing_sample_rate_comes_from_the_models_mel_settings_before_the_runs_data_config(tmp_path):
    from wavedil.checkpoint import load_checkpoint, recorded_sample_rate

    ckpt = {"format": 1, "model": {"w": torch.ones(1)}, "model_config": {"mel": {"sample_rate": 8000}},
            "config": {"data": {"sample_rate": 16000}}}  # fmt: skip
    assert recorded_sample_rate(ckpt) == 8000
    assert recorded_sample_rate({**ckpt, "model_config": {}}) == 16000
    assert recorded_sample_rate({**ckpt, "sample_rate": 22050}) == 22050
    torch.save(ckpt, tmp_path / "a.pt")
    assert load_checkpoint(tmp_path / "a.pt")["sample_rate"] == 8000


# ----------------------------------------------------------------------------- pretrained models


def _ship(data: Path, name: str, sample_rate: int = 8000, card_rate: int = 8000, upper: bool = False) -> WaveNet:
    """``data/pretrained/<name>/{model.pt, card.json}`` by hand: a tiny model and its card."""
    import json

    from wavedil.checkpoint import save_checkpoint
    from wavedil.pretrained import CARD_JSON, MODEL_FILE, file_sha256

    model = make_model()
    folder = data / "pretrained" / name
    folder.mkdir(parents=True)
    cfg = model.config.to_dict()
    save_checkpoint({"format": 1, "model": model.state_dict(), "model_config": cfg, "sample_rate": sample_rate},
                    folder / MODEL_FILE)  # fmt: skip
    digest = file_sha256(folder / MODEL_FILE)
    card = {"name": name, "sha256": digest.upper() if upper else digest, "sample_rate": card_rate,
            "parameters": sum(p.numel() for p in model.parameters()), "dtype": "float32", "model_config": cfg}
    (folder / CARD_JSON).write_text(json.dumps(card))
    return model


def test_file_sha256_hashes_every_chunk_of_the_file(tmp_path):
    import hashlib

    from wavedil.pretrained import file_sha256

    data = bytes(range(256)) * 40
    (tmp_path / "f").write_bytes(data)
    assert file_sha256(tmp_path / "f", chunk=7) == file_sha256(tmp_path / "f") == hashlib.sha256(data).hexdigest()


def test_a_card_with_an_upper_case_digest_loads_and_a_rate_other_than_the_cards_is_refused(tmp_path, monkeypatch):
    from wavedil.pretrained import load_pretrained

    monkeypatch.setenv("WAVEDIL_DATA", str(tmp_path / "data"))
    model = _ship(tmp_path / "data", "upper", upper=True)
    loaded = load_pretrained("upper")
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    _ship(tmp_path / "data", "rate", sample_rate=16000, card_rate=8000)
    with pytest.raises(ValueError, match="is at 16000 Hz but its card says 8000 Hz"):
        load_pretrained("rate")


def test_a_card_naming_another_model_than_its_folder_is_refused(tmp_path, monkeypatch):
    import json

    from wavedil.pretrained import CARD_JSON, load_pretrained

    monkeypatch.setenv("WAVEDIL_DATA", str(tmp_path / "data"))
    _ship(tmp_path / "data", "alpha")
    card_path = tmp_path / "data" / "pretrained" / "alpha" / CARD_JSON
    card = json.loads(card_path.read_text())
    card["name"] = "beta"
    card_path.write_text(json.dumps(card))
    with pytest.raises(ValueError, match="names the model 'beta', but its folder is 'alpha'"):
        load_pretrained("alpha")
