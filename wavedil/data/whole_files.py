"""Whole files, for evaluation and vocoding.

    iter_file_audio(items, sample_rate)   ->  (item, wav (T,)) per readable file
    iter_file_codes(items, sample_rate)   ->  (item, codes (T,)) per readable file
    file_mel(wav, spec, context)          ->  (n_mels, frames + 2 * context)
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence

import torch

from wavedil.audio import ENCODINGS, AudioReadError, audio_info, encode, read_audio
from wavedil.conditioning import MelSpec, frames_for, log_mel

from .files import AudioItem, _check_items

__all__ = ["iter_file_audio", "iter_file_codes", "file_mel"]

logger = logging.getLogger(__name__)


def iter_file_audio(
    items: Sequence[AudioItem], sample_rate: int, max_seconds: float | None = None
) -> Iterator[tuple[AudioItem, torch.Tensor]]:
    """Yield ``(item, wav)`` for each readable file, in order, with ``wav`` float32 ``(T,)`` in [-1, 1].

    Files are resampled to ``sample_rate``; with ``max_seconds`` only the first ``max_seconds``
    are read (``T <= max_seconds * sample_rate``). Unreadable files are skipped with a logged
    warning naming them. The reader behind :func:`iter_file_codes` and file evaluation
    (:func:`wavedil.evaluate.evaluate_files`, which also needs the waveforms for mel features).

    Raises:
        ValueError: ``sample_rate`` is not a positive integer or ``max_seconds`` is not positive.
    """
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or sample_rate < 1:
        raise ValueError(f"sample_rate must be a positive integer (Hz), got {sample_rate!r}")
    if max_seconds is not None and not max_seconds > 0:
        raise ValueError(f"max_seconds must be positive or None, got {max_seconds}")
    if max_seconds == math.inf:  # no limit, as ``vocode --max-seconds inf`` (no frame count to compute)
        max_seconds = None
    for i, item in enumerate(items):
        if not isinstance(item, AudioItem):  # items may be an iterator: checked as they come
            _check_items([item], "iter_file_audio", start=i)
        frames = -1
        if max_seconds is not None:
            rate = item.rate
            if rate <= 0:  # a file given by itself is not probed: its header says how much to read
                try:  # (the whole file was read, resampled and cut: 1.2 GB and 12 s for 1 s of a long one)
                    rate = audio_info(item.path).samplerate
                except AudioReadError:
                    rate = 0  # read_audio says what is wrong with it
            if rate > 0:
                frames = math.ceil(max_seconds * rate)
        try:
            wav, _ = read_audio(item.path, sample_rate=sample_rate, frames=frames)
        except AudioReadError as exc:
            logger.warning("skipping audio file: %s", exc)
            continue
        if max_seconds is not None:
            wav = wav[: int(max_seconds * sample_rate)]
        yield item, wav


def iter_file_codes(
    items: Sequence[AudioItem],
    sample_rate: int,
    quantization_channels: int = 256,
    max_seconds: float | None = None,
    encoding: str = "mulaw",
) -> Iterator[tuple[AudioItem, torch.Tensor]]:
    """Yield ``(item, codes)`` for each whole file, in order, with ``codes`` int64 ``(T,)``.

    Files are read as :func:`iter_file_audio` reads them (resampled to ``sample_rate``, at most
    ``max_seconds`` each, unreadable ones skipped with a logged warning) and quantised with
    ``encoding`` (``"mulaw"`` or ``"linear"``, :func:`wavedil.audio.encode`).
    """
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")
    encode(torch.zeros(()), encoding, quantization_channels)  # checks Q for the encoding
    for item, wav in iter_file_audio(items, sample_rate, max_seconds):
        yield item, encode(wav, encoding, quantization_channels)


def file_mel(wav: torch.Tensor, spec: MelSpec, context: int = 0) -> torch.Tensor:
    """Log-mel features of a whole file for vocoding: the counterpart of segment features.

    Frames ``-context .. frames_for(T, hop) + context - 1`` of
    :func:`~wavedil.conditioning.log_mel` (the file extended with zeros), so frame ``m`` of
    the file is column ``m + context``, as in :class:`SegmentDataset` items.

    Args:
        wav: float waveform ``(T,)`` at ``spec.sample_rate``.
        spec: feature parameters.
        context: extra frames on each side (e.g. the upsampler's ``context_frames``).

    Returns:
        float32 ``(n_mels, frames_for(T, hop) + 2 * context)``.
    """
    if wav.dim() != 1 or wav.shape[0] < 1:
        raise ValueError(f"file_mel expects a non-empty mono waveform (T,), got {tuple(wav.shape)}")
    if isinstance(context, bool) or not isinstance(context, int) or context < 0:
        raise ValueError(f"context must be a non-negative integer (frames), got {context!r}")
    n = frames_for(wav.shape[0], spec.hop_length)
    return log_mel(wav, spec, first_frame=-context, n_frames=n + 2 * context)
