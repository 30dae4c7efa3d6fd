"""Audio I/O and quantisation: mu-law (torchaudio), read/write (soundfile), resampling.

Waveforms are float32 tensors in [-1, 1]. A mono waveform is ``(T,)``; a batch is ``(B, T)``.
mu-law codes are int64 tensors of the same shape with values in ``[0, Q)``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from ._io import atomic_open

__all__ = [
    "OUTPUT_SUFFIXES",
    "check_output_path",
    "mu_law_encode",
    "mu_law_decode",
    "linear_encode",
    "linear_decode",
    "ENCODINGS",
    "encode",
    "decode",
    "read_audio",
    "write_audio",
    "resample",
    "AudioReadError",
    "audio_info",
    "silence_bounds",
    "trim_silence",
]


class AudioReadError(ValueError):
    """An audio file could not be read; the message names the file and the reason."""


def _check_classes(quantization_channels: int) -> None:
    if not isinstance(quantization_channels, int) or quantization_channels < 2:
        raise ValueError(
            f"quantization_channels must be an integer >= 2, got {quantization_channels!r}"
        )


def mu_law_encode(x: torch.Tensor, quantization_channels: int = 256) -> torch.Tensor:
    """Quantise a waveform in [-1, 1] to mu-law codes.

    Args:
        x: float waveform of any shape, e.g. ``(B, T)``; values are clipped to [-1, 1].
        quantization_channels: number of classes Q (256 for 8-bit mu-law).

    Returns:
        int64 codes of the same shape, in ``[0, Q)``.

    >>> mu_law_encode(torch.tensor([-1.0, 0.0, 1.0])).tolist()
    [0, 128, 255]
    """
    _check_classes(quantization_channels)
    return AF.mu_law_encoding(x.clamp(-1.0, 1.0), quantization_channels).long()


def mu_law_decode(codes: torch.Tensor, quantization_channels: int = 256) -> torch.Tensor:
    """Map mu-law codes in ``[0, Q)`` back to a float waveform in [-1, 1] (same shape)."""
    _check_classes(quantization_channels)
    return AF.mu_law_decoding(codes, quantization_channels).float()


def linear_encode(x: torch.Tensor, quantization_channels: int = 65536) -> torch.Tensor:
    """Quantise a waveform in [-1, 1] to ``Q`` uniform bins (16-bit PCM for ``Q = 65536``).

    Bin ``i`` is centred on ``2 i / Q - 1`` (so code ``Q / 2`` is silence and, for ``Q = 65536``,
    code ``i`` is the 16-bit PCM value ``i - 32768``); values are rounded to the nearest centre
    and clipped to ``[0, Q)``.

    Args:
        x: float waveform of any shape, e.g. ``(B, T)``.
        quantization_channels: number of bins ``Q`` (even).

    Returns:
        int64 codes of the same shape, in ``[0, Q)``.

    >>> linear_encode(torch.tensor([-1.0, 0.0, 0.5, 1.0]), 8).tolist()
    [0, 4, 6, 7]
    """
    _check_classes(quantization_channels)
    if quantization_channels % 2:
        raise ValueError(f"linear quantisation needs an even number of bins, got {quantization_channels}")
    half = quantization_channels // 2
    codes = torch.round((x.double().clamp(-1.0, 1.0) + 1.0) * half)
    return codes.clamp_(0, quantization_channels - 1).long()


def linear_decode(codes: torch.Tensor, quantization_channels: int = 65536) -> torch.Tensor:
    """Bin centres ``2 i / Q - 1`` of linear codes ``i`` (same shape, float32, in ``[-1, 1)``)."""
    _check_classes(quantization_channels)
    half = quantization_channels // 2
    return (codes.double() / half - 1.0).float()


#: Waveform quantisations: ``mulaw`` (companded, 8-bit by default) and ``linear`` (PCM bins).
ENCODINGS: tuple[str, ...] = ("mulaw", "linear")


def _codec(encoding: str):
    codecs = {"mulaw": (mu_law_encode, mu_law_decode), "linear": (linear_encode, linear_decode)}
    if encoding not in codecs:
        raise ValueError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")
    return codecs[encoding]


def encode(x: torch.Tensor, encoding: str, quantization_channels: int) -> torch.Tensor:
    """Quantise ``x`` (any shape, [-1, 1]) with ``encoding`` (one of :data:`ENCODINGS`)."""
    return _codec(encoding)[0](x, quantization_channels)


def decode(codes: torch.Tensor, encoding: str, quantization_channels: int) -> torch.Tensor:
    """Inverse of :func:`encode`: codes -> float waveform of the same shape."""
    return _codec(encoding)[1](codes, quantization_channels)


def resample(x: torch.Tensor, orig_rate: int, new_rate: int) -> torch.Tensor:
    """Resample a waveform ``(..., T)`` from ``orig_rate`` to ``new_rate`` Hz (torchaudio)."""
    if orig_rate <= 0 or new_rate <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_rate} -> {new_rate}")
    if orig_rate == new_rate:
        return x
    return AF.resample(x, orig_rate, new_rate)


def read_audio(
    path: str | os.PathLike,
    sample_rate: int | None = None,
    start: int = 0,
    frames: int = -1,
) -> tuple[torch.Tensor, int]:
    """Read an audio file as a mono float32 waveform ``(T,)`` in [-1, 1].

    Multi-channel audio is downmixed by averaging; if ``sample_rate`` is given and differs from
    the file's rate the waveform is resampled with torchaudio. ``start``/``frames`` select a
    span in the file's own frames, read without decoding the rest where the format allows.

    Returns:
        ``(waveform, rate)`` where ``rate`` is ``sample_rate`` if given, else the file's rate.

    Raises:
        AudioReadError: the file is missing, unreadable, empty or holds non-finite samples.
    """
    path = Path(path)
    try:
        data, rate = sf.read(str(path), start=start, frames=frames, dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises several types (RuntimeError, LibsndfileError)
        raise AudioReadError(f"cannot read audio file '{path}': {exc}") from exc
    if data.shape[0] == 0:
        raise AudioReadError(f"audio file '{path}' holds no samples")
    if not np.isfinite(data).all():
        raise AudioReadError(f"audio file '{path}' holds NaN or infinite samples")
    wav = torch.from_numpy(data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]).contiguous()
    wav = wav.clamp_(-1.0, 1.0)
    if sample_rate is not None and sample_rate != rate:
        wav = resample(wav, rate, sample_rate)
        rate = sample_rate
    return wav, rate


def write_audio(path: str | os.PathLike, wav: torch.Tensor, sample_rate: int) -> Path:
    """Write a mono waveform ``(T,)`` as 16-bit PCM, atomically (temporary file + rename).

    Non-finite values are replaced by 0 and the signal is clipped to [-1, 1] before writing.
    The format follows the file extension (``.wav``, ``.flac``, ``.ogg``).
    """
    path = Path(path)
    if wav.dim() != 1:
        raise ValueError(f"write_audio expects a mono waveform (T,), got shape {tuple(wav.shape)}")
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    data = torch.nan_to_num(wav.detach().float().cpu(), nan=0.0, posinf=0.0, neginf=0.0)
    data = data.clamp(-1.0, 1.0).numpy()
    fmt = (path.suffix.lstrip(".") or "wav").upper()
    with atomic_open(path) as fh:
        sf.write(fh, data, sample_rate, format=fmt, subtype="PCM_16" if fmt in ("WAV", "FLAC") else None)
    return path


def audio_info(path: str | os.PathLike) -> sf._SoundFileInfo:
    """Read an audio file's header with ``soundfile.info`` (frames, samplerate, channels, subtype).

    Raises:
        AudioReadError: the file is missing or its header cannot be parsed.
    """
    path = Path(path)
    try:
        return sf.info(str(path))
    except Exception as exc:  # soundfile raises several types (RuntimeError, LibsndfileError)
        raise AudioReadError(f"cannot read audio header of '{path}': {exc}") from exc


def silence_bounds(wav: torch.Tensor | np.ndarray, threshold_db: float) -> tuple[int, int]:
    """Span ``[start, end)`` of a mono waveform ``(T,)`` left after trimming leading and
    trailing samples whose magnitude is below ``threshold_db`` relative to the peak.

    ``threshold_db`` must be negative (e.g. ``-40.0``: drop edges quieter than 1% of the peak).
    An all-zero waveform gives ``(0, 0)``.

    >>> silence_bounds(torch.tensor([0.0, 0.001, 0.5, -1.0, 0.2, 0.0]), -20.0)
    (2, 5)
    """
    if not threshold_db < 0:
        raise ValueError(
            f"threshold_db must be negative (dB below the peak), got {threshold_db}; "
            f"did you mean {-abs(threshold_db)}?"
        )
    x = np.abs(wav.detach().cpu().numpy() if isinstance(wav, torch.Tensor) else np.asarray(wav))
    if x.ndim != 1:
        raise ValueError(f"silence_bounds expects a mono waveform (T,), got shape {x.shape}")
    peak = float(x.max()) if x.size else 0.0
    if peak <= 0.0:
        return 0, 0
    loud = np.flatnonzero(x >= peak * 10.0 ** (threshold_db / 20.0))
    return int(loud[0]), int(loud[-1]) + 1


def trim_silence(wav: torch.Tensor, threshold_db: float) -> torch.Tensor:
    """Drop leading/trailing audio of ``wav`` ``(T,)`` below ``threshold_db`` (negative) re peak."""
    start, end = silence_bounds(wav, threshold_db)
    return wav[start:end]


#: File name endings the generation and vocoding commands write.
OUTPUT_SUFFIXES: tuple[str, ...] = (".wav", ".flac", ".ogg")


def check_output_path(path: str | os.PathLike) -> Path:
    """``path`` as a :class:`Path` after checking it can be written (makes its folder, writes a test file).

    Raises:
        ValueError: ``path`` is a folder, does not end in one of :data:`OUTPUT_SUFFIXES`, or its
            folder cannot be created or written.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"output path '{path}' is a directory: give a file name such as {path / 'out.wav'}")
    if path.suffix.lower() not in OUTPUT_SUFFIXES:
        raise ValueError(f"output file '{path}' must end in .wav, .flac or .ogg")
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=parent, prefix=".wavedil-write-check-"):
            pass
    except OSError as exc:
        raise ValueError(
            f"cannot create the output folder '{parent}' or write in it ({exc.strerror or exc}): choose another -o path"
        ) from None
    return path
