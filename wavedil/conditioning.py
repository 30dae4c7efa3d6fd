"""Local conditioning: log-mel features at frame rate and a learned upsampler to sample rate.

Frame convention (shared by training segments and whole files, so both agree exactly)::

    signal, extended with zeros on both sides:   ...0 0 [x0 x1 ... x(T-1)] 0 0...
    frame m (any integer, negative allowed):     Hann window of n_fft samples CENTRED on
                                                 sample m * hop, i.e. covering
                                                 [m*hop - n_fft//2, m*hop - n_fft//2 + n_fft)

    frames of a whole file: m = 0 .. frames_for(T, hop) - 1   (frames_for = ceil(T / hop))

The features of frame ``m`` depend only on the samples under its window, so the frames of a
segment are the matching frames of the whole file, wherever the segment lies.

:class:`Upsampler` maps ``(B, C, M)`` frames to ``(B, C, M * hop)`` samples, frame ``m`` giving
samples ``[m * hop, (m + 1) * hop)``. It is local: a frame's samples depend only on the frames
within :attr:`Upsampler.context_frames` on either side, so a window of frames with that much
real context on each side, cropped by ``crop=context_frames``, equals the matching slice of the
whole sequence's output.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
import torchaudio
from torch import nn

__all__ = [
    "MelSpec",
    "frames_for",
    "mel_span",
    "log_mel",
    "fit_mel_stats",
    "upsample_factors",
    "upsample_context_frames",
    "Upsampler",
]

#: Floor applied to mel magnitudes before the log (natural log of 1e-5 is about -11.5).
LOG_FLOOR = 1e-5

#: Frames :func:`log_mel` analyses per STFT pass: bounds the pass's transient memory (about 10 kB
#: a frame at n_fft 1024, 2.5 kB at n_fft 256) for inputs of any length; the features are those
#: of one pass.
MEL_CHUNK_FRAMES = 4096


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class MelSpec:
    """Parameters of the log-mel features (hashable; saved in checkpoints via :meth:`to_dict`).

    Mel filters use the Slaney mel scale with Slaney (area) normalisation, as librosa's default
    ``librosa.filters.mel`` and most neural vocoders.
    """

    sample_rate: int  # Hz of the waveform the features are computed from
    hop_length: int = 256  # samples between frame centres (frame rate = sample_rate / hop)
    n_fft: int = 1024  # FFT size; a frame spans n_fft samples centred on m * hop
    win_length: int | None = None  # Hann window length (<= n_fft, centred); None: n_fft
    n_mels: int = 80  # mel bands
    f_min: float = 0.0  # lowest filter edge in Hz
    f_max: float | None = None  # highest filter edge in Hz; None: sample_rate / 2

    def __post_init__(self) -> None:
        for name in ("sample_rate", "hop_length", "n_fft", "n_mels"):
            _positive_int(name, getattr(self, name))
        if self.win_length is not None:
            _positive_int("win_length", self.win_length)
            if self.win_length > self.n_fft:
                raise ValueError(
                    f"win_length must be <= n_fft, got win_length={self.win_length} > "
                    f"n_fft={self.n_fft}; raise n_fft or shorten the window"
                )
        nyquist = self.sample_rate / 2
        if not 0.0 <= self.f_min < self.max_freq <= nyquist:
            raise ValueError(
                f"need 0 <= f_min < f_max <= sample_rate / 2 = {nyquist:g}, got "
                f"f_min={self.f_min!r}, f_max={self.f_max!r}"
            )

    def empty_bands(self) -> list[int]:
        """Mel bands that no FFT bin falls inside (their filters are all zero, so their features
        are the log floor whatever the audio): too many ``n_mels`` for ``n_fft`` at this rate."""
        with warnings.catch_warnings():  # torchaudio warns about exactly this; the caller names it
            warnings.simplefilter("ignore")
            fb = torchaudio.functional.melscale_fbanks(
                self.n_fft // 2 + 1, self.f_min, self.max_freq, self.n_mels, self.sample_rate,
                norm="slaney", mel_scale="slaney",
            )  # fmt: skip
        return [int(i) for i in torch.nonzero(fb.amax(dim=0) == 0).flatten()]

    @property
    def window(self) -> int:
        """The effective window length (``win_length`` or ``n_fft``)."""
        return self.n_fft if self.win_length is None else self.win_length

    @property
    def max_freq(self) -> float:
        """The effective upper filter edge in Hz (``f_max`` or ``sample_rate / 2``)."""
        return self.sample_rate / 2 if self.f_max is None else float(self.f_max)

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (ints, floats, None), e.g. for a checkpoint."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MelSpec:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError`` naming them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown MelSpec keys {unknown}; valid keys are {sorted(known)}")
        if "sample_rate" not in d:
            raise ValueError(f"a MelSpec needs sample_rate (Hz), got only {sorted(d)}; valid keys are {sorted(known)}")
        return cls(**d)


def frames_for(n_samples: int, hop: int) -> int:
    """Frames of a signal of ``n_samples``: ``ceil(n_samples / hop)`` (frame m centred at m*hop).

    >>> frames_for(1000, 256), frames_for(1024, 256), frames_for(0, 256)
    (4, 4, 0)
    """
    _positive_int("hop", hop)
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 0:
        raise ValueError(f"n_samples must be a non-negative integer, got {n_samples!r}")
    return -(-n_samples // hop)


def mel_span(spec: MelSpec, first_frame: int, n_frames: int) -> tuple[int, int]:
    """Samples ``[start, end)`` that frames ``first_frame .. first_frame + n_frames - 1`` read.

    ``start = first_frame * hop - n_fft // 2`` and ``end = start + (n_frames - 1) * hop + n_fft``
    (may be negative or past the signal: those samples are zeros).
    """
    start = first_frame * spec.hop_length - spec.n_fft // 2
    return start, start + (n_frames - 1) * spec.hop_length + spec.n_fft


def _zero_extended(wav: torch.Tensor, start: int, end: int) -> torch.Tensor:
    """``wav[..., start:end]`` of ``wav`` ``(..., T)`` extended with zeros on both sides."""
    lo, hi = max(start, 0), min(end, wav.shape[-1])
    if hi <= lo:  # entirely outside the signal
        return wav.new_zeros(*wav.shape[:-1], end - start)
    return F.pad(wav[..., lo:hi], (lo - start, end - hi))


@functools.lru_cache(maxsize=32)
def _mel_transform(spec: MelSpec, device: str) -> torchaudio.transforms.MelSpectrogram:
    transform = torchaudio.transforms.MelSpectrogram(
        sample_rate=spec.sample_rate,
        n_fft=spec.n_fft,
        win_length=spec.window,
        hop_length=spec.hop_length,
        f_min=spec.f_min,
        f_max=spec.max_freq,
        n_mels=spec.n_mels,
        power=1.0,
        center=False,
        norm="slaney",
        mel_scale="slaney",
    )
    return transform.to(device)


def log_mel(
    wav: torch.Tensor, spec: MelSpec, first_frame: int = 0, n_frames: int | None = None
) -> torch.Tensor:
    """Log-mel magnitude features of frames ``first_frame .. first_frame + n_frames - 1``.

    Frame ``m`` is the Hann-windowed STFT frame centred on sample ``m * hop`` of ``wav`` extended
    with zeros on both sides (see the module docstring); its magnitude (power 1) is mapped by
    Slaney-normalised mel filters and ``log(max(., 1e-5))`` is returned. Only the samples the
    frames read (:func:`mel_span`) are used.

    Args:
        wav: float waveform ``(T,)`` or ``(B, T)``.
        spec: feature parameters (its ``sample_rate`` is the rate of ``wav``).
        first_frame: index of the first frame (any integer, negative allowed).
        n_frames: frames to compute (>= 1); default ``frames_for(T, hop)``.

    Returns:
        float32 ``(n_mels, n_frames)`` or ``(B, n_mels, n_frames)``.

    >>> log_mel(torch.zeros(1000), MelSpec(8000, hop_length=80, n_fft=256, n_mels=20)).shape
    torch.Size([20, 13])
    """
    if not isinstance(wav, torch.Tensor) or wav.dim() not in (1, 2):
        shape = tuple(wav.shape) if isinstance(wav, torch.Tensor) else type(wav).__name__
        raise ValueError(f"wav must be a tensor (T,) or (B, T), got {shape}")
    if not wav.is_floating_point():
        raise ValueError(
            f"wav must be a float waveform in [-1, 1], got dtype {wav.dtype}: divide 16-bit PCM by 32768 first"
        )
    if not isinstance(spec, MelSpec):
        raise ValueError(f"spec must be a MelSpec (e.g. model.mel_spec or MelSpec.from_dict(d)), got {type(spec).__name__}")
    if isinstance(first_frame, bool) or not isinstance(first_frame, int):
        raise ValueError(f"first_frame must be an integer, got {first_frame!r}")
    if n_frames is None:
        n_frames = frames_for(wav.shape[-1], spec.hop_length)
        if n_frames < 1:
            raise ValueError("wav holds no samples; pass n_frames to get frames of silence")
    _positive_int("n_frames", n_frames)
    pieces = _mel_pieces(n_frames)
    if len(pieces) == 1:
        return _log_mel_pass(wav, spec, first_frame, n_frames)
    # A long file in pieces of frames: one pass over all of it held its windowed frames, their
    # spectrum and its magnitudes at once (about 35 bytes a sample at n_fft 256, hop 80: 0.47 GB
    # for 30 minutes at 8 kHz, for features of 2 bytes a sample); the same features.
    out = torch.empty(*wav.shape[:-1], spec.n_mels, n_frames, device=wav.device)  # (..., n_mels, n_frames)
    for f0, f1 in pieces:
        out[..., f0:f1] = _log_mel_pass(wav, spec, first_frame + f0, f1 - f0)
    return out


def _mel_pieces(n_frames: int) -> list[tuple[int, int]]:
    """Frames ``[f0, f1)`` of each pass of :func:`log_mel` over ``n_frames`` frames: runs of
    :data:`MEL_CHUNK_FRAMES` (at least 2), a last run of one frame joined to the one before (a
    pass over one frame rounds differently: its mel filtering is a matrix-vector product).

    >>> _mel_pieces(10), _mel_pieces(MEL_CHUNK_FRAMES + 1)[-1] == (0, MEL_CHUNK_FRAMES + 1)
    ([(0, 10)], True)
    """
    step = max(2, MEL_CHUNK_FRAMES)
    bounds = list(range(0, n_frames, step)) + [n_frames]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] == 1:
        del bounds[-2]
    return list(zip(bounds[:-1], bounds[1:]))


def _log_mel_pass(wav: torch.Tensor, spec: MelSpec, first_frame: int, n_frames: int) -> torch.Tensor:
    """One STFT pass of :func:`log_mel` (checked arguments): ``(..., T)`` -> ``(..., n_mels, n_frames)``."""
    start, end = mel_span(spec, first_frame, n_frames)
    span = _zero_extended(wav, start, end).float()  # (..., (n_frames - 1) * hop + n_fft)
    if not bool(torch.isfinite(span).all()):  # one NaN sample would make whole frames NaN
        raise ValueError("wav holds NaN or infinite samples where these frames read it: a waveform must be finite")
    mel = _mel_transform(spec, str(wav.device))(span)  # (..., n_mels, n_frames)
    return torch.log(torch.clamp(mel, min=LOG_FLOOR))


def fit_mel_stats(mels: Iterable[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-bin mean and standard deviation over all frames of ``mels``, for normalisation.

    Accumulates in float64 with Chan's pairwise update (stable for long corpora).

    Args:
        mels: tensors ``(n_mels, M)``, e.g. :func:`log_mel` of each training file.

    Returns:
        ``(mean, std)``, float32 ``(n_mels,)`` each; ``std`` is the population deviation
        (``ddof=0``) floored at ``1e-3``.

    Raises:
        ValueError: no frames at all, a tensor that is not 2-D, or differing ``n_mels``.
    """
    count, mean, m2 = 0, None, None
    bands = None  # of the first tensor, empty or not
    for k, mel in enumerate(mels):
        if mel.dim() != 2:
            raise ValueError(f"mels[{k}] must be (n_mels, M), got shape {tuple(mel.shape)}")
        if bands is None:
            bands = mel.shape[0]
        elif mel.shape[0] != bands:
            raise ValueError(f"mels[{k}] has {mel.shape[0]} bins but earlier ones have {bands}")
        n = mel.shape[1]
        if n == 0:
            continue
        x = mel.detach().to(torch.float64).cpu()
        b_mean = x.mean(dim=1)
        b_m2 = (x - b_mean[:, None]).pow(2).sum(dim=1)
        if mean is None:
            count, mean, m2 = n, b_mean, b_m2
            continue
        total = count + n
        delta = b_mean - mean
        mean = mean + delta * (n / total)
        m2 = m2 + b_m2 + delta.pow(2) * (count * n / total)
        count = total
    if mean is None or m2 is None:
        raise ValueError("fit_mel_stats got no frames; pass at least one (n_mels, M>0) tensor")
    std = (m2 / count).sqrt().clamp(min=1e-3)
    return mean.float(), std.float()


# --------------------------------------------------------------------------------------------
# Upsampling
# --------------------------------------------------------------------------------------------


def upsample_factors(hop: int) -> tuple[int, ...]:
    """Stage factors whose product is ``hop``: its prime factors with pairs of 2 merged into 4.

    Small stages keep each smoothing kernel short (``2 s + 1`` taps).

    >>> upsample_factors(256), upsample_factors(80), upsample_factors(275), upsample_factors(1)
    ((4, 4, 4, 4), (4, 4, 5), (5, 5, 11), ())
    """
    _positive_int("hop_length", hop)
    primes: list[int] = []
    n, p = hop, 2
    while p * p <= n:
        while n % p == 0:
            primes.append(p)
            n //= p
        p += 1
    if n > 1:
        primes.append(n)
    twos = primes.count(2)
    merged = [4] * (twos // 2) + [2] * (twos % 2) + [q for q in primes if q != 2]
    return tuple(sorted(merged))


def upsample_context_frames(factors: Sequence[int], conv_in_radius: int = 1) -> int:
    """Frames on each side that can influence one frame's output samples (exact bound).

    Walk back from frame ``m``'s samples ``[m*hop, (m+1)*hop)`` through the stages, last first:
    a stage of factor ``s`` (smoothing radius ``s`` samples, then undoing the repeat by ``s``)
    turns an excess of ``e`` samples beyond the interval into ``1 + ceil(e / s)`` at the
    coarser rate. The excess left at frame rate plus the first conv's radius is the answer
    (``0`` stages: ``conv_in_radius``; one: ``1 + r``; two or more: ``2 + r``).

    >>> [upsample_context_frames(f) for f in [(4, 4, 5), (7,), ()]]
    [3, 2, 1]
    """
    excess = 0
    for s in reversed(tuple(factors)):
        excess = 1 + -(-excess // s)
    return excess + conv_in_radius


class Upsampler(nn.Module):
    """Learned upsampling of frame-rate features to sample rate: ``(B, C, M) -> (B, C, M*hop)``.

    ::

        (B, C, M) -> [Conv1d(C, C, 3, padding=1)]            optional, init: identity
                  -> for s in upsample_factors(hop):         e.g. 80 -> (4, 4, 5)
                        repeat each step s times             nearest neighbour
                        Conv2d(1, 1, (1, 2s+1), padding s)   one kernel shared by all channels,
                                                             init: average (1 / (2s+1))
                  -> (B, C, M * hop)

    It is linear (no nonlinearity): a learned interpolation. The conditioning projection of
    each WaveNet layer feeds the gated tanh/sigmoid, which supplies the nonlinearity; a linear
    upsampler starts as a smoothed copy of the features at their original scale. As in
    r9y9/wavenet_vocoder, a shared per-stage kernel keeps it tiny (``sum(2s+1)`` weights plus
    the first conv).

    Args:
        in_channels: feature channels ``C`` (e.g. ``n_mels``).
        hop_length: samples per frame (>= 1, any integer, primes included).
        conv_in: apply the first Conv1d over frames (kernel 3).

    Attributes:
        factors: the stage factors (product = ``hop_length``).
        context_frames: frames on each side whose values can influence a frame's samples
            (:func:`upsample_context_frames`).

    >>> up = Upsampler(20, 80)
    >>> up(torch.randn(2, 20, 9)).shape, up.context_frames
    (torch.Size([2, 20, 720]), 3)
    >>> up(torch.randn(2, 20, 9), crop=3).shape
    torch.Size([2, 20, 240])
    """

    def __init__(self, in_channels: int, hop_length: int, conv_in: bool = True) -> None:
        super().__init__()
        _positive_int("in_channels", in_channels)
        _positive_int("hop_length", hop_length)
        self.in_channels = in_channels
        self.hop_length = hop_length
        self.factors = upsample_factors(hop_length)
        self.conv_in: nn.Conv1d | None = None
        if conv_in:
            self.conv_in = nn.Conv1d(in_channels, in_channels, kernel_size=3, padding=1)
            with torch.no_grad():  # identity: the initial output is the smoothed repeat
                self.conv_in.weight.zero_()
                self.conv_in.weight[:, :, 1].copy_(torch.eye(in_channels))
                self.conv_in.bias.zero_()
        self.stages = nn.ModuleList()
        for s in self.factors:
            conv = nn.Conv2d(1, 1, kernel_size=(1, 2 * s + 1), padding=(0, s), bias=False)
            nn.init.constant_(conv.weight, 1.0 / (2 * s + 1))
            self.stages.append(conv)
        self.context_frames: int = upsample_context_frames(self.factors, 1 if conv_in else 0)

    def forward(self, mel: torch.Tensor, crop: int = 0) -> torch.Tensor:
        """Upsample ``mel`` ``(B, C, M)`` and drop ``crop * hop`` samples at each end.

        Returns:
            ``(B, C, (M - 2 * crop) * hop)``; with ``crop >= context_frames`` frames of real
            context on each side, exactly the matching slice of the whole sequence's output.

        Raises:
            ValueError: wrong shape or channels, negative ``crop``, or ``M - 2 * crop < 1``.
        """
        if not isinstance(mel, torch.Tensor) or mel.dim() != 3 or mel.shape[1] != self.in_channels:
            if not isinstance(mel, torch.Tensor):
                raise ValueError(f"mel must be a torch.Tensor (B, {self.in_channels}, M), got {type(mel).__name__}")
            raise ValueError(
                f"mel must be (B, {self.in_channels}, M), got shape {tuple(mel.shape)}"
            )
        if isinstance(crop, bool) or not isinstance(crop, int) or crop < 0:
            raise ValueError(f"crop must be a non-negative integer (frames), got {crop!r}")
        weight = next(self.parameters(), None)
        if weight is not None and (mel.dtype != weight.dtype or mel.device != weight.device):
            raise ValueError(
                f"mel is {mel.dtype} on {mel.device} but the upsampler's weights are {weight.dtype} on "
                f"{weight.device}: convert it with mel.to({weight.dtype}) (log-mel frames are float)"
            )
        m = mel.shape[-1]
        if m - 2 * crop < 1:
            raise ValueError(
                f"cannot crop {crop} frames at each end of {m} frames (M - 2 * crop = "
                f"{m - 2 * crop} < 1); pass at least {2 * crop + 1} frames or a smaller crop"
            )
        x = mel if self.conv_in is None else self.conv_in(mel)  # (B, C, M)
        b, c = x.shape[:2]
        x = x.reshape(b, 1, c, m)  # (B, 1, C, T): channels as the height of a 1-channel image
        for s, conv in zip(self.factors, self.stages, strict=True):
            x = conv(torch.repeat_interleave(x, s, dim=-1))  # (B, 1, C, T * s)
        x = x.reshape(b, c, m * self.hop_length)  # (B, C, M * hop)
        if crop:
            x = x[..., crop * self.hop_length : (m - crop) * self.hop_length]
        return x
