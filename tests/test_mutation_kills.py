"""Tests added by a mutation audit of the core modules: each one fails on a plausible bug
(a mutant) that the rest of the suite let through, and passes on the real code.

Covered here:

* streaming: the lean single-sample step (:func:`wavedil.streaming.single_step`) writes the
  rings in the documented layout (slot ``t % L`` holds input ``t``), so lean single steps and
  chunked steps (a prompt, the per-layer path, the exported step) mix in one stream;
* training: one ``train_step`` moves the EMA towards the weights *after* the optimiser step by
  ``1 - decay_at(step)``; a resume restores the checkpoint's EMA shadow and its random state
  (the first resumed step draws from exactly the saved state);
* output distributions: the mixture of logistics scales its logistic by the temperature; the
  categorical inverse CDF takes side "left" on a tie (what every back-end must agree on);
  ``LinearInput`` feeds each code as its bin centre;
* audio: mu-law encoding clips out-of-range samples to the end codes;
* data: random segments are whole slices of the file (never read past its end), a draw picks the
  file whose cumulative range holds it, frame-aligned (mel) segments keep their targets inside
  the file, and the split's ``min_valid`` top-up takes the lowest-scoring files.

Everything uses tiny models and files written to ``tmp_path``; the file runs in a few seconds.
"""

from __future__ import annotations

import torch

from wavedil.layers import DilatedStack
from wavedil.streaming import ring_history


# ----------------------------------------------------------------------------- streaming rings


def test_lean_single_steps_and_chunks_mix_in_one_stream_kernel_2():
    """Chunk, lean single steps, chunk again: equal to one forward over the whole sequence, and the
    rings hold the last ``L`` inputs of each layer in time order after the single steps."""
    torch.manual_seed(0)
    dilations = (3, 1, 2, 4, 8)
    stack = DilatedStack(4, 8, 6, kernel_size=2, dilations=dilations).eval()
    x = torch.randn(2, 4, 60)
    with torch.no_grad():
        _, full_skip = stack(x)
        state = stack.init_state(2)
        (_, s1), state = stack.step(x[:, :, :20], state)  # chunk: ring_conv_step
        skips = [s1]
        for t in range(20, 45):  # single samples without autograd: the lean path
            (_, s), state = stack.step(x[:, :, t : t + 1], state)
            skips.append(s)
        # the first layer's input is x itself: its ring must hold x[pos - d .. pos - 1], oldest first
        assert torch.equal(ring_history(state.buffers[0], state.pos), x[:, :, 45 - dilations[0] : 45])
        (_, s2), state = stack.step(x[:, :, 45:], state)  # a chunk again after the lean steps
        skips.append(s2)
    torch.testing.assert_close(torch.cat(skips, -1), full_skip, rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------- training: EMA, resume

BASE = ["model=tiny", "trainer=debug", "trainer.sample_every=0", "data.segment_length=200", "data.batch_size=2",
        "data.valid_segments=2", "trainer.valid_every=1000", "trainer.device=cpu", "trainer.threads=1"]


def test_ema_moves_towards_the_weights_after_the_optimiser_step(tmp_path):
    """One ``train_step``: the shadow becomes ``lerp(old, new weights, 1 - decay_at(step))`` of the
    weights *after* the optimiser step (an EMA updated before it, not at all, or with the weight
    inverted gives other numbers)."""
    from wavedil.config import compose
    from wavedil.train import setup, train_step

    run = setup(compose(BASE + ["trainer.ema_decay=0.9"]), tmp_path / "run")
    before = {k: v.clone() for k, v in run.ema.state_dict().items()}
    weights_before = {k: v.clone() for k, v in run.model.state_dict().items()}
    train_step(run, next(iter(run.loader)), None)
    decay = run.ema.decay_at(run.step)
    assert 0 < decay < 1
    after = run.model.state_dict()
    moved = [k for k in after if after[k].is_floating_point() and not torch.equal(after[k], weights_before[k])]
    assert moved, "the optimiser step changed no weight: the test proves nothing"
    for k, v in after.items():
        if v.is_floating_point():
            want = before[k] + (v.float() - before[k]) * (1.0 - decay)
            torch.testing.assert_close(run.ema.state_dict()[k], want, rtol=0, atol=1e-6, msg=k)
    assert any(not torch.equal(run.ema.state_dict()[k], after[k].float()) for k in moved)


def test_resume_restores_the_ema_and_the_random_state_of_the_checkpoint(tmp_path, monkeypatch):
    """A resumed run starts from the checkpoint's EMA shadow (not a copy of the weights) and its
    first step draws from the checkpoint's random state (the exact-resume contract)."""
    import wavedil.train as train_mod
    from wavedil.checkpoint import list_checkpoints, load_checkpoint
    from wavedil.config import compose
    from wavedil.train import setup, train

    opts = BASE + ["trainer.ema_decay=0.5", "trainer.ckpt_every=2"]
    train(compose(opts + ["trainer.max_steps=2"]), tmp_path / "run")
    ckpt = load_checkpoint(list_checkpoints(tmp_path / "run" / "checkpoints")[0])
    assert ckpt["step"] == 2

    run = setup(compose(opts + ["trainer.max_steps=3", "trainer.resume=true"]), tmp_path / "run")
    assert run.step == 2
    for k, v in ckpt["ema"].items():
        assert torch.equal(run.ema.state_dict()[k], v), k
    assert any(not torch.equal(ckpt["ema"][k], ckpt["model"][k].float()) for k in ckpt["model"]), (
        "EMA equals the weights: the test proves nothing"
    )

    seen = []
    real_step = train_mod.train_step

    def recording_step(run, batch, time_fraction):
        seen.append((run.step, torch.get_rng_state().clone()))
        return real_step(run, batch, time_fraction)

    monkeypatch.setattr(train_mod, "train_step", recording_step)
    torch.manual_seed(12345)  # whatever the process drew before: the checkpoint's state must win
    train(compose(opts + ["trainer.max_steps=3", "trainer.resume=true"]), tmp_path / "run")
    assert seen and seen[0][0] == 2
    assert torch.equal(seen[0][1], ckpt["rng"]["torch"])


# ----------------------------------------------------------------------------- output distributions


def test_mol_sample_scales_the_logistic_by_the_temperature():
    """``temperature`` multiplies the chosen logistic's scale: the draw is the bin of
    ``mean + exp(log_scale) * temperature * logit(v)``, computed here by hand."""
    import math

    from wavedil.distributions import MixtureOfLogistics

    Q = 256
    dist = MixtureOfLogistics(Q, mixtures=1)
    params = torch.tensor([[0.0, 0.1, math.log(0.2)]] * 3)  # logit, mean 0.1, scale 0.2
    v = torch.tensor([0.9, 0.1, 0.75], dtype=torch.float64)
    u = torch.stack([torch.full((3,), 0.5, dtype=torch.float64), v], dim=1)
    for temperature in (1.0, 0.5, 0.1):
        x = 0.1 + 0.2 * temperature * torch.log(v / (1 - v))
        want = torch.round((x + 1.0) * (Q // 2)).clamp(0, Q - 1).long()
        got = dist.sample(params, u, temperature)
        assert torch.equal(got, want), (temperature, got.tolist(), want.tolist())
    # and the draws really differ between temperatures (else the test would prove nothing)
    assert not torch.equal(dist.sample(params, u, 1.0), dist.sample(params, u, 0.1))


def test_categorical_inverse_cdf_takes_the_first_index_that_reaches_the_target():
    """Side "left" of searchsorted, as documented (every back-end must draw the same class): a
    target exactly on a cumulative sum picks that class, not the next."""
    from wavedil.distributions import sample_categorical

    logits = torch.zeros(4, 4)  # probabilities 1/4 each: cdf 0.25, 0.5, 0.75, 1.0 exactly
    u = torch.tensor([0.25, 0.5, 0.75, 0.5000001], dtype=torch.float64)
    assert sample_categorical(logits, u).tolist() == [0, 1, 2, 2]
    want = torch.searchsorted(torch.tensor([0.25, 0.5, 0.75, 1.0], dtype=torch.float64), u, side="left")
    assert sample_categorical(logits, u).tolist() == want.tolist()


def test_linear_input_feeds_each_code_as_its_bin_centre():
    """The linear-bin heads' input layer sees code ``i`` as its bin centre ``2 i / Q - 1`` (what
    :func:`wavedil.audio.linear_decode` gives), through ``x * w + b``."""
    from wavedil.audio import linear_decode
    from wavedil.model import LinearInput

    torch.manual_seed(0)
    Q = 16
    layer = LinearInput(Q, 3)
    codes = torch.arange(Q).view(2, 8)
    centre = linear_decode(codes, Q)  # (2, 8) in [-1, 1)
    want = centre.unsqueeze(-1) * layer.weight[:, 0] + layer.proj.bias
    torch.testing.assert_close(layer(codes), want, rtol=0, atol=1e-6)
    assert float(centre[0, 0]) == -1.0 and float(centre[1, 0]) == 0.0  # codes 0 and Q / 2


# ----------------------------------------------------------------------------- audio


def test_mu_law_encode_clips_out_of_range_samples_to_the_end_codes():
    """Documented: values are clipped to [-1, 1]. A resampled or gained waveform can overshoot;
    its codes must still lie in ``[0, Q)`` (the end codes), never past them."""
    from wavedil.audio import mu_law_encode

    x = torch.tensor([-3.0, -1.0001, -1.0, 1.0, 1.0001, 1.5, 2.0])
    assert mu_law_encode(x, 256).tolist() == [0, 0, 0, 255, 255, 255, 255]
    assert mu_law_encode(x, 16).tolist() == [0, 0, 0, 15, 15, 15, 15]


# ----------------------------------------------------------------------------- data: segments and split


def _write(path, data, rate=8000):
    import numpy as np
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.asarray(data, dtype=np.float32), rate, subtype="FLOAT")
    return path


def test_segments_are_whole_slices_of_the_file_never_read_past_its_end(tmp_path):
    """A file two frames longer than a segment has exactly two offsets; every segment must be one
    of those two slices (an offset one too far reads past the end and pads the start with silence)."""
    import numpy as np

    from wavedil.audio import mu_law_encode, read_audio
    from wavedil.data import SegmentDataset, load_corpus

    L = 50
    _write(tmp_path / "ramp.wav", np.linspace(0.1, 0.9, L + 2))
    ds = SegmentDataset(load_corpus(tmp_path), L, 8000, segments_per_epoch=64)
    codes = mu_law_encode(read_audio(tmp_path / "ramp.wav")[0])
    slices = [codes[o : o + L + 1] for o in (0, 1)]
    used = set()
    for i in range(len(ds)):
        seg = ds[i]
        hits = [o for o, s in enumerate(slices) if torch.equal(seg, s)]
        assert hits, f"segment {i} is no slice of the file: {seg[:4].tolist()} ... {seg[-4:].tolist()}"
        used.update(hits)
    assert used == {0, 1}


def test_a_draw_picks_the_file_whose_cumulative_range_holds_it(tmp_path):
    """File ``k`` owns draws ``cum[k-1] <= pick < cum[k]`` (probability proportional to length):
    the pick equal to the first file's length belongs to the second file."""
    import numpy as np

    from wavedil.audio import mu_law_encode
    from wavedil.data import SegmentDataset, load_corpus

    _write(tmp_path / "a.wav", np.full(60, 0.5))
    _write(tmp_path / "b.wav", np.full(60, -0.5))
    ds = SegmentDataset(load_corpus(tmp_path), 20, 8000, segments_per_epoch=600)
    names = [item.path.name for item in ds.items]
    code = {"a.wav": int(mu_law_encode(torch.tensor(0.5))), "b.wav": int(mu_law_encode(torch.tensor(-0.5)))}
    boundary = 0
    for i in range(len(ds)):
        pick = int(torch.randint(0, ds.total_frames, (1,), generator=ds.generator(i)))
        k = 0 if pick < ds._cumulative[0] else 1
        boundary += pick == ds._cumulative[0]
        assert int(ds[i][-1]) == code[names[k]], (i, pick)
    assert boundary > 0, "no draw fell on the boundary: the test proves nothing"


def test_mel_aligned_segments_keep_their_targets_inside_the_file(tmp_path):
    """Frame-aligned segments: the ``L`` targets lie in the usable span, never in the zeros past
    the file's end (a constant non-zero file must give targets without a single silence code)."""
    import numpy as np

    from wavedil.audio import mu_law_encode
    from wavedil.conditioning import MelSpec
    from wavedil.data import SegmentDataset, load_corpus

    mel = MelSpec(8000, hop_length=80, n_fft=256, n_mels=12)
    _write(tmp_path / "c.wav", np.full(400 + 80 * 2 + 30, 0.5))
    ds = SegmentDataset(load_corpus(tmp_path), 400, 8000, segments_per_epoch=40, mel=mel, mel_context=1)
    high = int(mu_law_encode(torch.tensor(0.5)))
    for i in range(len(ds)):
        targets = ds[i]["codes"][1:]
        assert (targets == high).all(), f"segment {i} reads past the file: {targets[-5:].tolist()}"


def test_split_top_up_takes_the_lowest_scoring_files(tmp_path):
    """With ``valid_fraction=0`` the ``min_valid`` valid files are the lowest-scoring ones (by
    the hash of the relative path), as documented, not the first by name."""
    import numpy as np

    from wavedil.data import load_corpus, split_items
    from wavedil.data.corpus import _unit_hash

    for i in range(12):
        _write(tmp_path / f"f{i:02d}.wav", np.full(100, 0.1 * (i % 5 + 1)))
    items = load_corpus(tmp_path)
    train, valid = split_items(items, valid_fraction=0.0, min_valid=3)
    want = sorted(sorted((item.path.name for item in items), key=_unit_hash)[:3])
    assert sorted(item.path.name for item in valid) == want
    assert want != ["f00.wav", "f01.wav", "f02.wav"], "hash order is name order: the test proves nothing"
    assert len(train) == 9


# ----------------------------------------------------------------------------- smaller contracts


def test_vocoder_normalises_mel_frames_with_the_fitted_mean_and_std():
    """``upsample`` feeds the upsampler ``(mel - mel_mean) / mel_std``: frames ``mean + std * z``
    give what ``z`` gives to the upsampler itself."""
    from wavedil import WaveNet, WaveNetConfig
    from wavedil.conditioning import MelSpec

    torch.manual_seed(0)
    spec = MelSpec(8000, hop_length=80, n_fft=256, n_mels=12)
    model = WaveNet(WaveNetConfig(residual_channels=8, gate_channels=16, skip_channels=12, head_channels=10,
                                  layers_per_stack=3, stacks=1, quantization_channels=32, mel=spec.to_dict())).eval()
    mean, std = torch.randn(12), torch.rand(12) + 0.5
    with torch.no_grad():
        model.mel_mean.copy_(mean)
        model.mel_std.copy_(std)
        ctx = model.mel_context
        z = torch.randn(2, 12, 3 + 2 * ctx)
        got = model.upsample(mean[:, None] + std[:, None] * z)
        want = model.upsampler(z, crop=ctx)
    assert got.shape == (2, 12, 3 * 80)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_ema_decay_warms_up_as_documented():
    """``decay_at(step) = min(decay, (1 + step) / (10 + step))``: the average forgets the random
    initial weights at first, and uses the configured decay once warmed up."""
    from wavedil.training_utils import EMA

    ema = EMA(torch.nn.Linear(2, 2), 0.999)
    assert ema.decay_at(0) == 0.1
    assert ema.decay_at(90) == 0.91
    assert ema.decay_at(10**6) == 0.999


def test_read_audio_clips_overshooting_float_files(tmp_path):
    """A float WAV may hold samples beyond full scale; ``read_audio`` returns them clipped to [-1, 1]."""
    from wavedil.audio import read_audio

    _write(tmp_path / "loud.wav", [0.5, 1.5, -2.0, 1.0, -1.0])
    wav, rate = read_audio(tmp_path / "loud.wav")
    assert rate == 8000 and wav.tolist() == [0.5, 1.0, -1.0, 1.0, -1.0]


def test_load_checkpoint_refuses_a_dict_that_is_no_wavedil_checkpoint(tmp_path):
    """A torch file holding some other dict (no ``model`` / ``model_config``) is a named
    ``CheckpointError``, not a ``KeyError`` later."""
    import pytest

    from wavedil.checkpoint import CheckpointError, load_checkpoint

    torch.save({"state_dict": {"w": torch.ones(2)}, "epoch": 3}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="is not a wavedil checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    torch.save({"model": {"w": torch.ones(2)}}, tmp_path / "half.pt")
    with pytest.raises(CheckpointError, match="is not a wavedil checkpoint"):
        load_checkpoint(tmp_path / "half.pt")


def test_speaker_ids_are_sorted_whatever_the_file_order(tmp_path):
    """The index order of speaker conditioning is the sorted speaker ids, for items in any order."""
    from pathlib import Path

    from wavedil.data import AudioItem, speakers_of

    items = [AudioItem(Path(f"/c/{s}/{s}_{i}.wav"), s, 100, 8000) for i, s in enumerate(["p3", "p1", "p2", "p1"])]
    assert speakers_of(items) == ["p1", "p2", "p3"]
    assert speakers_of(items[::-1]) == ["p1", "p2", "p3"]


def test_write_audio_clips_before_a_float_codec_too(tmp_path):
    """WAV/FLAC are PCM_16 (libsndfile clips), but Ogg Vorbis stores floats: ``write_audio``
    must clip to [-1, 1] itself, or an overshooting waveform is written at twice full scale."""
    import math

    import soundfile as sf

    from wavedil.audio import write_audio

    t = torch.arange(8000) / 8000.0
    loud = (2.0 * torch.sin(2 * math.pi * 220 * t)).float()
    path = write_audio(tmp_path / "loud.ogg", loud, 8000)
    data, rate = sf.read(str(path))
    assert rate == 8000 and 0.9 < float(abs(data).max()) < 1.25  # lossy codec: a little ringing only
