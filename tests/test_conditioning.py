"""Tests for wavedil.conditioning: log-mel frames, feature statistics and the Upsampler."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from wavedil.conditioning import (
    LOG_FLOOR,
    MelSpec,
    Upsampler,
    fit_mel_stats,
    frames_for,
    log_mel,
    upsample_context_frames,
    upsample_factors,
)

SPEC = MelSpec(8000, hop_length=64, n_fft=256, n_mels=16)


def noise(*shape: int, seed: int = 0) -> torch.Tensor:
    return 0.3 * torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# --- MelSpec ----------------------------------------------------------------------------------


def test_melspec_dict_round_trip_is_plain_json() -> None:
    spec = MelSpec(22050, hop_length=275, n_fft=1024, win_length=800, f_min=40.0, f_max=8000.0)
    d = spec.to_dict()
    assert MelSpec.from_dict(json.loads(json.dumps(d))) == spec
    assert MelSpec.from_dict(MelSpec(8000).to_dict()) == MelSpec(8000)
    assert (MelSpec(8000).window, MelSpec(8000).max_freq) == (1024, 4000.0)
    with pytest.raises(ValueError, match="hop_size"):
        MelSpec.from_dict({**d, "hop_size": 3})


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        (dict(sample_rate=0), "sample_rate.*0"),
        (dict(sample_rate=8000, hop_length=-3), "hop_length.*-3"),
        (dict(sample_rate=8000, n_fft=256, win_length=300), "win_length=300.*n_fft=256"),
        (dict(sample_rate=8000, n_mels=0), "n_mels.*0"),
        (dict(sample_rate=8000, f_max=5000.0), "4000.*f_max=5000.0"),
        (dict(sample_rate=8000, f_min=3000.0, f_max=2000.0), "f_min=3000.0"),
        (dict(sample_rate=8000, f_min=-1.0), "f_min=-1.0"),
    ],
)
def test_melspec_rejects_bad_values_naming_them(kwargs: dict, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        MelSpec(**kwargs)


# --- log_mel ----------------------------------------------------------------------------------


def test_frames_for_is_ceil() -> None:
    assert [frames_for(n, 80) for n in (0, 1, 79, 80, 81, 160)] == [0, 1, 1, 1, 2, 2]
    with pytest.raises(ValueError, match="-1"):
        frames_for(-1, 80)


def test_impulse_lands_in_the_frame_centred_on_it() -> None:
    m, hop = 5, SPEC.hop_length
    wav = torch.zeros(20 * hop)
    wav[m * hop] = 1.0
    energy = log_mel(wav, SPEC).exp().sum(dim=0)  # (frames,)
    assert int(energy.argmax()) == m
    # Periodic Hann of n_fft = 4 hop: 1 at the centre, 1/2 one hop away, 0 two hops away. An
    # impulse has a flat spectrum scaled by the window value, so the ratios are exact.
    torch.testing.assert_close(energy[m - 1] / energy[m], torch.tensor(0.5), rtol=1e-4, atol=0)
    torch.testing.assert_close(energy[m + 1] / energy[m], torch.tensor(0.5), rtol=1e-4, atol=0)
    floor = SPEC.n_mels * LOG_FLOOR
    assert float(energy[m - 2]) == pytest.approx(floor)
    assert float(energy[m + 2]) == pytest.approx(floor)
    # One sample later breaks the symmetry: frames are centred, not started, on m * hop.
    wav = torch.roll(wav, 1)
    late = log_mel(wav, SPEC).exp().sum(dim=0)
    assert float(late[m + 1]) > float(late[m - 1]) * 1.01


@pytest.mark.parametrize("first_frame", [-6, -2, 0, 3, 14, 17, 25])
def test_segment_frames_equal_slice_of_whole(first_frame: int) -> None:
    wav = noise(2, 1000)  # (B, T); 16 frames of 64
    base = -8
    whole = log_mel(wav, SPEC, first_frame=base, n_frames=40)  # frames -8 .. 31
    part = log_mel(wav, SPEC, first_frame=first_frame, n_frames=5)
    assert part.shape == (2, 16, 5) and part.dtype == torch.float32
    i = first_frame - base
    torch.testing.assert_close(part, whole[..., i : i + 5], rtol=0, atol=1e-5)
    # Past the end (frame 25 reads samples >= 1472 > 1000): pure silence at the floor.
    if first_frame == 25:
        assert torch.all(part == math.log(LOG_FLOOR))


def test_segment_cut_from_the_signal_equals_slice_of_whole() -> None:
    # A span cut at a frame centre, with n_fft // 2 real samples of context on each side,
    # gives the same frames as the whole signal: what SegmentDataset relies on.
    wav = noise(3000, seed=1)
    whole = log_mel(wav, SPEC)
    first, n = 10, 6
    lo = first * SPEC.hop_length - SPEC.n_fft // 2
    cut = wav[lo : lo + (n - 1) * SPEC.hop_length + SPEC.n_fft]
    got = log_mel(cut, SPEC, first_frame=SPEC.n_fft // 2 // SPEC.hop_length, n_frames=n)
    torch.testing.assert_close(got, whole[:, first : first + n], rtol=0, atol=1e-5)


@pytest.mark.parametrize("hop", [1, 7, 80, 256, 275])
def test_log_mel_shape_for_any_hop(hop: int) -> None:
    spec = MelSpec(16000, hop_length=hop, n_fft=max(256, 4 * hop), n_mels=8)
    for t in (1, hop, 3 * hop + 1, 1000):
        out = log_mel(noise(t), spec)
        assert out.shape == (8, -(-t // hop)) and out.dtype == torch.float32
    assert log_mel(noise(1000).double(), spec, first_frame=-3, n_frames=2).shape == (8, 2)


def test_log_mel_bad_inputs() -> None:
    with pytest.raises(ValueError, match=r"\(2, 3, 100\)"):
        log_mel(torch.zeros(2, 3, 100), SPEC)
    with pytest.raises(ValueError, match="n_frames.*0"):
        log_mel(torch.zeros(100), SPEC, n_frames=0)
    with pytest.raises(ValueError, match="first_frame.*1.5"):
        log_mel(torch.zeros(100), SPEC, first_frame=1.5)  # type: ignore[arg-type]


def test_fit_mel_stats_matches_numpy() -> None:
    mels = [noise(6, n, seed=n) * 4 + torch.arange(6.0)[:, None] for n in (3, 50, 1, 0, 17)]
    mels[2][0] = 7.0
    mean, std = fit_mel_stats(iter(mels))
    allf = np.concatenate([m.numpy().astype(np.float64) for m in mels], axis=1)
    np.testing.assert_allclose(mean.numpy(), allf.mean(axis=1), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(std.numpy(), allf.std(axis=1), rtol=1e-5, atol=1e-6)
    assert mean.shape == std.shape == (6,) and mean.dtype == torch.float32
    _, flat = fit_mel_stats([torch.full((2, 10), 3.0)])
    assert torch.equal(flat, torch.full((2,), 1e-3))  # floored
    with pytest.raises(ValueError, match="no frames"):
        fit_mel_stats([torch.zeros(4, 0)])
    with pytest.raises(ValueError, match="3 bins.*6"):
        fit_mel_stats([mels[0], torch.zeros(3, 4)])


# --- Upsampler --------------------------------------------------------------------------------


def test_upsample_factors_and_context() -> None:
    assert upsample_factors(256) == (4, 4, 4, 4)
    assert upsample_factors(80) == (4, 4, 5)
    assert upsample_factors(275) == (5, 5, 11)
    assert upsample_factors(7) == (7,) and upsample_factors(1) == ()
    for hop in range(1, 300):
        assert math.prod(upsample_factors(hop)) == hop
    assert [upsample_context_frames(f) for f in [(), (7,), (4, 5), (4, 4, 4, 4)]] == [1, 2, 3, 3]
    assert upsample_context_frames((4, 4, 5), conv_in_radius=0) == 2


def randomized(up: Upsampler, seed: int = 0, positive: bool = False) -> Upsampler:
    """Replace the near-identity initial weights (which hide locality bugs) by random ones."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in up.parameters():
            r = torch.rand(p.shape, generator=gen)
            p.copy_(r + 0.1 if positive else 2 * r - 1)
    return up


@pytest.mark.parametrize("hop", [1, 7, 80, 256, 275])
def test_upsampler_exact_length_and_crop(hop: int) -> None:
    up = Upsampler(3, hop)
    mel = noise(2, 3, 9)
    assert up(mel).shape == (2, 3, 9 * hop)
    assert up(mel, crop=4).shape == (2, 3, hop)
    assert Upsampler(3, hop, conv_in=False)(mel).shape == (2, 3, 9 * hop)


def test_upsampler_starts_near_nearest_repeat() -> None:
    up = Upsampler(4, 80)
    mel = torch.arange(8.0).repeat(4, 1)[None].repeat_interleave(3, dim=-1)  # slow ramp
    with torch.no_grad():
        out = up(mel)
    rep = mel.repeat_interleave(80, dim=-1)
    inner = slice(3 * 80, 21 * 80)
    assert float((out - rep)[..., inner].abs().max()) < 0.75  # smoothed steps of height 1


@pytest.mark.parametrize(
    ("hop", "conv_in"), [(1, True), (7, True), (80, True), (80, False), (275, True)]
)
def test_upsampler_window_with_context_equals_slice_of_whole(hop: int, conv_in: bool) -> None:
    up = randomized(Upsampler(4, hop, conv_in=conv_in))
    c = up.context_frames
    mel = noise(2, 4, 16, seed=hop)
    whole = up(mel)
    for start, n in [(c, 1), (c, 5), (5, 3), (16 - c - 4, 4)]:
        window = mel[..., start - c : start + n + c]
        got = up(window, crop=c)
        want = whole[..., start * hop : (start + n) * hop]
        assert got.shape == want.shape == (2, 4, n * hop)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    if c > 0:  # one frame less of context is not enough
        window = mel[..., 5 - c + 1 : 5 + 3 + c - 1]
        short = up(window, crop=c - 1)
        assert not torch.allclose(short, whole[..., 5 * hop : 8 * hop], atol=1e-5)


@pytest.mark.parametrize(
    ("hop", "conv_in"), [(1, True), (7, True), (80, True), (80, False), (256, True), (275, True)]
)
def test_upsampler_impulse_reaches_exactly_context_frames(hop: int, conv_in: bool) -> None:
    up = randomized(Upsampler(2, hop, conv_in=conv_in), positive=True)
    if up.conv_in is not None:
        with torch.no_grad():
            up.conv_in.bias.zero_()  # zero input -> exactly zero output
    c, m, frames = up.context_frames, 6, 13
    mel = torch.zeros(1, 2, frames)
    mel[0, 1, m] = 1.0
    with torch.no_grad():
        touched = torch.nonzero(up(mel)[0].abs().sum(dim=0)).flatten()
    first, last = int(touched.min()), int(touched.max())
    assert (m - c) * hop <= first and last < (m + 1 + c) * hop
    # ... and context_frames is not an overestimate: the first and last frames are reached.
    assert first < (m - c + 1) * hop and last >= (m + c) * hop


def test_upsampler_gradients_flow() -> None:
    up = Upsampler(3, 20)
    mel = noise(2, 3, 6).requires_grad_()
    up(mel, crop=1).square().mean().backward()
    assert mel.grad is not None and float(mel.grad.abs().sum()) > 0
    for name, p in up.named_parameters():
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, name


def test_upsampler_bad_inputs_name_values() -> None:
    with pytest.raises(ValueError, match="hop_length.*0"):
        Upsampler(3, 0)
    with pytest.raises(ValueError, match="in_channels.*-1"):
        Upsampler(-1, 4)
    up = Upsampler(3, 4)
    with pytest.raises(ValueError, match=r"crop 3 .* 6 frames"):
        up(torch.zeros(1, 3, 6), crop=3)
    with pytest.raises(ValueError, match=r"\(B, 3, M\).*\(1, 5, 6\)"):
        up(torch.zeros(1, 5, 6))
    with pytest.raises(ValueError, match="crop.*-1"):
        up(torch.zeros(1, 3, 6), crop=-1)
