"""Fixed-length quantised training segments drawn from a list of audio files.

    SegmentDataset(train, L, sample_rate)[i] -> (L + 1,)    int64 codes (mu-law or linear)
        with speakers= and/or mel=      -> {"codes": (L + 1,), "speaker": (), "mel": (n_mels, F)}

A segment has ``L + 1`` codes so that a model reads ``codes[:-1]`` and predicts ``codes[1:]``;
batched by a ``DataLoader`` it becomes ``(B, L + 1)``.

Mel-conditioned segments are frame aligned: their first target sample ``codes[1]`` is file
sample ``a`` with ``a % hop == 0`` and their features are frames ``a // hop - context ..``
of :func:`wavedil.conditioning.log_mel` of the whole file, exactly what
:func:`wavedil.data.file_mel` gives for the whole file, so training and vocoding see the same
features.

Files that vanish or shrink while a run reads them are warned about once and left out for the
rest of the run (see :class:`SegmentDataset`). Reports go to :mod:`logging` (logger
``wavedil.data.segments``, a child of ``wavedil.data``).
"""

from __future__ import annotations

import bisect
import logging
import math
import os
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from wavedil.audio import (
    ENCODINGS,
    AudioReadError,
    check_resampling,
    encode,
    file_silence_bounds,
    read_audio,
    resample,
)
from wavedil.conditioning import MelSpec, log_mel, mel_span

from .files import AudioItem, CorpusError, _check_items, probe_audio

__all__ = ["SegmentDataset"]

logger = logging.getLogger(__name__)


def _mix_seed(*values: int) -> int:
    """A 63-bit seed from non-negative integers (numpy SeedSequence: well mixed, portable)."""
    state = np.random.SeedSequence(list(values)).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def _fit_length(wav: torch.Tensor, length: int) -> torch.Tensor:
    """Crop ``wav`` ``(T,)`` to its first ``length`` samples or left-pad it with zeros."""
    if wav.shape[0] >= length:
        return wav[:length]
    return F.pad(wav, (length - wav.shape[0], 0))


class SegmentDataset(Dataset):
    """Random fixed-length quantised segments drawn from a list of audio files.

    Item ``i`` picks a file with probability proportional to its duration, then a uniform
    offset in it, and reads only that span (``read_audio(start=, frames=)``). Files at another
    rate are read over the matching span at their own rate (plus a few frames of context) and
    resampled, and the result is cut to the exact length. Files shorter than a segment are
    left-padded with silence (the code of 0.0 in the chosen encoding).

    With ``mel``, segments are frame aligned instead: the first target sample ``codes[1]`` is
    output-rate sample ``a`` of the file with ``a % hop == 0``, drawn uniformly among such
    positions whose ``L`` targets lie in the usable span (a file too short for one holds the
    span's end, with silence, or the file's own samples, before it). ``codes`` are samples
    ``[a - 1, a + L)`` and ``mel`` is frames ``a // hop - mel_context ..`` (``L // hop + 2 *
    mel_context`` of them) of :func:`~wavedil.conditioning.log_mel` of the whole file, both
    of the file extended with zeros on both sides. Only the samples those need are read (plus
    resampling context), and they equal the slices of the whole file's features.

    All randomness is a pure function of ``(seed, epoch, i)``, so any process (DataLoader
    workers, DistributedSampler ranks) draws the same segment for the same index. Call
    :meth:`set_epoch` before each epoch; with ``persistent_workers=True`` the workers keep the
    epoch they were started with, so prefer non-persistent workers.

    Files that vanish or change while a run reads them (deleted, truncated, made unreadable
    after this dataset was built): the first failed read of a file logs one warning and leaves
    the file out for the rest of the run, and the item is drawn again. Each draw ``a`` of item
    ``i`` has its own generator (:meth:`generator`), so the replacement is a pure function of
    ``(seed, epoch, i)`` and the set of bad files it hits, whichever process first found them
    bad; items that never draw a bad file do not change. The record of bad files is per
    dataset object, i.e. per DataLoader worker process: a file may be warned about once in each
    worker. When the files left out hold more than ``1 - min_usable_fraction`` of the audio,
    :class:`CorpusError` stops the run, naming how many files vanished and their folder.

    Args:
        items: the files (``frames``/``rate`` are probed here when 0).
        segment_length: ``L``; each item holds ``L + 1`` codes (inputs ``[:-1]``, targets ``[1:]``).
        sample_rate: rate of the segments in Hz.
        quantization_channels: number of classes ``Q``.
        segments_per_epoch: ``len(self)``; default: total frames // ``L`` (at least 1).
        seed: non-negative base seed.
        trim_silence_db: if set (negative, e.g. ``-40``), leading/trailing audio quieter than
            this relative to each file's peak is never sampled. This reads every file once here.
        encoding: ``"mulaw"`` or ``"linear"`` (:func:`wavedil.audio.encode`; ``"linear"`` with
            ``Q = 65536`` is 16-bit PCM).
        speakers: the known speaker ids (e.g. :func:`speakers_of`); each item's speaker must
            be one of them and its index is returned.
        mel: log-mel parameters (``mel.sample_rate == sample_rate`` and ``L`` a multiple of
            ``mel.hop_length``); segments are then frame aligned and carry their features.
        mel_context: extra frames on each side of the segment's ``L // hop`` frames (e.g. the
            upsampler's ``context_frames``).

    Returns (``__getitem__``):
        without ``speakers`` and ``mel``: int64 tensor ``(L + 1,)`` with values in ``[0, Q)``;
        a DataLoader batches it to ``(B, L + 1)``. Otherwise a dict: ``"codes"`` that tensor,
        ``"speaker"`` int64 ``()`` (with ``speakers``), ``"mel"`` float32
        ``(n_mels, L // hop + 2 * mel_context)`` (with ``mel``); batched to ``(B, ...)``.

    Attributes:
        items: the usable files (unreadable ones, and with ``trim_silence_db`` silent ones, are
            dropped with a warning).
        spans: per file, the ``[start, end)`` frames (file rate) that segments are drawn from.
        lengths: per file, the span's length in frames at ``sample_rate``.
        total_frames: ``sum(lengths)``.
        excluded: indices into ``items`` of the files left out since they failed to read.

    >>> ds = SegmentDataset(load_corpus("data/speech8k/wavs"), 4000, 8000)  # doctest: +SKIP
    >>> ds[0].shape, ds[0].dtype  # doctest: +SKIP
    (torch.Size([4001]), torch.int64)
    """

    #: draws over all files before an item is drawn from the still-usable files only
    max_read_attempts: int = 10
    #: the share of the audio (by duration) that must stay readable; below it reads raise
    min_usable_fraction: float = 0.25

    def __init__(
        self,
        items: Sequence[AudioItem],
        segment_length: int,
        sample_rate: int,
        quantization_channels: int = 256,
        segments_per_epoch: int | None = None,
        seed: int = 0,
        trim_silence_db: float | None = None,
        *,
        encoding: str = "mulaw",
        speakers: Sequence[str] | None = None,
        mel: MelSpec | None = None,
        mel_context: int = 0,
    ) -> None:
        if isinstance(segment_length, bool) or not isinstance(segment_length, int) or segment_length < 1:
            raise ValueError(f"segment_length must be a positive integer, got {segment_length!r}")
        if not isinstance(sample_rate, int) or sample_rate < 1:
            raise ValueError(f"sample_rate must be a positive integer (Hz), got {sample_rate!r}")
        if not isinstance(quantization_channels, int) or quantization_channels < 2:
            raise ValueError(
                f"quantization_channels must be an integer >= 2, got {quantization_channels!r}"
            )
        if segments_per_epoch is not None and (
            not isinstance(segments_per_epoch, int) or segments_per_epoch < 1
        ):
            raise ValueError(
                f"segments_per_epoch must be a positive integer or None, got {segments_per_epoch!r}"
            )
        if not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        if trim_silence_db is not None and not trim_silence_db < 0:
            raise ValueError(
                f"trim_silence_db must be negative (dB below each file's peak) or None, got "
                f"{trim_silence_db}; e.g. -40.0"
            )
        if encoding not in ENCODINGS:
            raise ValueError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")
        encode(torch.zeros(()), encoding, quantization_channels)  # e.g. linear needs even Q
        _check_mel_args(mel, mel_context, segment_length, sample_rate)
        if not items:
            raise CorpusError("SegmentDataset needs at least one audio file, got an empty list.")
        _check_items(items, "SegmentDataset")
        speaker_index = _speaker_index(speakers, items)

        self.segment_length = segment_length
        self.sample_rate = sample_rate
        self.quantization_channels = quantization_channels
        self.seed = seed
        self.trim_silence_db = trim_silence_db
        self.encoding = encoding
        self.speakers: list[str] | None = None if speakers is None else list(speakers)
        self.mel = mel
        self.mel_context = mel_context
        self.epoch = 0

        self.items: list[AudioItem] = []
        self.spans: list[tuple[int, int]] = []  # usable [start, end) in the file's own frames
        for item in items:
            try:
                if item.frames <= 0 or item.rate <= 0:
                    item = AudioItem(item.path, item.speaker, *probe_audio(item.path))
                if item.rate != sample_rate:
                    try:  # a rate it cannot be resampled from would stop the run at its first segment
                        check_resampling(item.rate, sample_rate)
                    except ValueError as exc:
                        raise AudioReadError(f"'{item.path}': {exc}") from None
                span = self._usable_span(item)
            except AudioReadError as exc:
                logger.warning("SegmentDataset: skipping audio file: %s", exc)
                continue
            if span is None:
                logger.warning("SegmentDataset: skipping '%s': silent throughout", item.path)
                continue
            self.items.append(item)
            self.spans.append(span)
        #: per usable item, its index in ``speakers`` (all 0 without speakers)
        self.speaker_ids = [speaker_index.get(item.speaker, 0) for item in self.items]
        # Lengths in output-rate frames: output frames j with start <= j * rate / sr < end.
        # Their cumulative sums give length-proportional sampling.
        lengths = [
            max(0, -(-end * sample_rate // item.rate) - -(-start * sample_rate // item.rate))
            for item, (start, end) in zip(self.items, self.spans, strict=True)
        ]
        self._cumulative: list[int] = np.cumsum(lengths, dtype=np.int64).tolist()
        self.total_frames = self._cumulative[-1] if self._cumulative else 0
        if self.total_frames <= 0:
            raise CorpusError(
                f"SegmentDataset: none of the {len(items)} files has usable audio at "
                f"{sample_rate} Hz (all unreadable, silent or too short); check the files, "
                f"e.g. with load_corpus(), which names each unusable one."
            )
        self.lengths = lengths
        self.excluded: set[int] = set()
        self._excluded_frames = 0
        self.segments_per_epoch = segments_per_epoch or max(1, self.total_frames // segment_length)

    def _usable_span(self, item: AudioItem) -> tuple[int, int] | None:
        """``[start, end)`` of the file to sample from (file frames); None if all silent.

        Raises:
            AudioReadError: the file cannot be read (only read when trimming silence).
        """
        if self.trim_silence_db is None:
            return 0, item.frames
        start, end = file_silence_bounds(item.path, self.trim_silence_db)  # in blocks: a file of hours fits
        return (start, end) if end > start else None

    def __len__(self) -> int:
        return self.segments_per_epoch

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch; segments are a function of ``(seed, epoch, index)``."""
        if not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch must be a non-negative integer, got {epoch!r}")
        self.epoch = epoch

    def generator(self, index: int, draw: int = 0) -> torch.Generator:
        """The random generator of draw ``draw`` of ``index`` in the current epoch.

        Draw 0 is the item's first choice; later draws replace it when it hits a bad file.
        """
        values = (self.seed, self.epoch, index) if draw == 0 else (self.seed, self.epoch, index, draw)
        return torch.Generator().manual_seed(_mix_seed(*values))

    def __getitem__(self, index: int) -> torch.Tensor | dict[str, torch.Tensor]:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for SegmentDataset of length {n}")
        index %= n
        draw = 0
        while True:  # ends: each failed read leaves out one more file, and _exclude raises in time
            gen = self.generator(index, draw)
            draw += 1
            if draw <= self.max_read_attempts:  # a draw over all files, as if none were bad
                pick = int(torch.randint(0, self.total_frames, (1,), generator=gen))
                k = bisect.bisect_right(self._cumulative, pick)
                if k in self.excluded:
                    continue
            else:  # rare: many draws hit bad files; draw among the usable ones directly
                k = self._draw_usable(gen)
            try:
                if self.mel is None:
                    wav, feats = self._read_segment(k, gen), None
                else:
                    wav, feats = self._read_aligned(k, gen, self.mel)
            except AudioReadError as exc:
                self._exclude(k, exc)
                continue
            codes = encode(wav, self.encoding, self.quantization_channels)
            if self.speakers is None and feats is None:
                return codes
            out = {"codes": codes}
            if self.speakers is not None:
                out["speaker"] = torch.tensor(self.speaker_ids[k], dtype=torch.int64)
            if feats is not None:
                out["mel"] = feats
            return out

    def _draw_usable(self, gen: torch.Generator) -> int:
        """A file index drawn in proportion to length among the files not excluded."""
        usable = [k for k in range(len(self.items)) if k not in self.excluded]
        assert usable, "_exclude raises before the last file is left out"
        cumulative = np.cumsum([self.lengths[k] for k in usable]).tolist()
        pick = int(torch.randint(0, int(cumulative[-1]), (1,), generator=gen))
        return usable[bisect.bisect_right(cumulative, pick)]

    def _exclude(self, k: int, exc: AudioReadError) -> None:
        """Leave file ``k`` out for the rest of the run, with one warning; raise if too few remain.

        Raises:
            CorpusError: the usable files hold less than ``min_usable_fraction`` of the audio.
        """
        assert k not in self.excluded, "excluded files are never read"
        self.excluded.add(k)
        self._excluded_frames += self.lengths[k]
        usable = self.total_frames - self._excluded_frames
        logger.warning(
            "SegmentDataset: %s; it vanished or changed after the run started, so it is left out "
            "for the rest of the run and other segments are drawn in its place", exc,
        )
        if usable <= 0 or usable < self.min_usable_fraction * self.total_frames:
            folder = os.path.commonpath([str(self.items[j].path.parent) for j in sorted(self.excluded)])
            raise CorpusError(
                f"SegmentDataset: {len(self.excluded)} of the {len(self.items)} corpus files under "
                f"'{folder}' vanished or became unreadable after the run started, leaving "
                f"{usable / self.total_frames:.0%} of the audio (less than min_usable_fraction="
                f"{self.min_usable_fraction:g}); the last: {exc}. Check that the corpus folder is "
                f"still there and complete, then resume the run from its last checkpoint."
            )

    def _read(self, item: AudioItem, start: int, frames: int) -> torch.Tensor:
        """Frames ``[start, start + frames)`` of ``item`` at its own rate, ``(frames,)`` float.

        Raises:
            AudioReadError: the file is gone or cannot be read, or holds fewer frames than when
                it was probed (it was truncated since).
        """
        try:
            wav, _ = read_audio(item.path, start=start, frames=frames)
        except AudioReadError:
            if not os.path.exists(item.path):  # libsndfile only says "System error"
                raise AudioReadError(f"'{item.path}' no longer exists") from None
            raise
        expected = min(frames, item.frames - start)
        if wav.shape[0] < expected:
            raise AudioReadError(
                f"'{item.path}' is shorter than when it was probed: it ends at frame "
                f"{start + wav.shape[0]}, not {item.frames}"
            )
        return wav

    def _read_segment(self, k: int, gen: torch.Generator) -> torch.Tensor:
        """Read a random ``(L + 1,)`` float span of file ``k`` at ``self.sample_rate``."""
        item, (start, end), length = self.items[k], self.spans[k], self.lengths[k]
        need = self.segment_length + 1
        rate, sr = item.rate, self.sample_rate
        if length < need:  # whole (trimmed) file, left-padded below
            wav = self._read(item, start, end - start)
            return _fit_length(resample(wav, rate, sr), need)
        offset = int(torch.randint(0, length - need + 1, (1,), generator=gen))  # output frames
        if rate == sr:
            wav = self._read(item, start + offset, need)
            return _fit_length(wav, need)
        first_out = -(-start * sr // rate) + offset  # ceil(start * sr / rate) + offset
        return _fit_length(self._read_resampled(item, first_out, need), need)

    def _read_resampled(self, item: AudioItem, first_out: int, need: int) -> torch.Tensor:
        """Output-rate samples ``[first_out, first_out + need)`` of the whole resampled file.

        Shorter when the file ends first. ``first_out >= 0``; ``item.rate != sample_rate``.
        """
        rate, sr = item.rate, self.sample_rate
        # Output frame j of the whole resampled file lies at file frame j * rate / sr. Read the
        # matching span with context on both sides for the resampling filter, starting on a
        # frame `a` where a * sr / rate is whole, so the span's output grid is the file's grid.
        step = rate // math.gcd(rate, sr)
        context = math.ceil(16 * max(1.0, rate / sr))
        a = (max(0, first_out * rate // sr - context) // step) * step
        b = min(item.frames, -(-(first_out + need) * rate // sr) + context)
        wav = self._read(item, a, b - a)
        wav = resample(wav, rate, sr)
        return wav[first_out - a * sr // rate :][:need]

    def _read_output_span(self, item: AudioItem, start: int, end: int) -> torch.Tensor:
        """Samples ``[start, end)`` at ``sample_rate`` of the whole file extended with zeros.

        Reads only the file frames that the span needs (plus resampling context).
        """
        rate, sr = item.rate, self.sample_rate
        total = -(-item.frames * sr // rate)  # length of the whole file at the output rate
        lo, hi = max(start, 0), min(end, total)
        if hi <= lo:
            return torch.zeros(end - start)
        if rate == sr:
            wav = self._read(item, lo, hi - lo)
        else:
            wav = self._read_resampled(item, lo, hi - lo)
        return F.pad(wav, (lo - start, end - start - (lo - start) - wav.shape[0]))

    def _read_aligned(
        self, k: int, gen: torch.Generator, spec: MelSpec
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A frame-aligned ``(L + 1,)`` float segment of file ``k`` and its ``(n_mels, F)`` mel.

        The first target sample ``a`` (output rate, from the file start) is a multiple of hop.
        """
        item, (start, _), length = self.items[k], self.spans[k], self.lengths[k]
        hop, size, ctx = spec.hop_length, self.segment_length, self.mel_context
        first = -(-start * self.sample_rate // item.rate)  # usable span, output rate
        end = first + length
        lo, hi = -(-first // hop), (end - size) // hop  # candidate a // hop
        if hi >= lo:
            a = hop * (lo + int(torch.randint(0, hi - lo + 1, (1,), generator=gen)))
        else:  # no aligned segment fits: hold the span's end
            a = hop * -(-(end - size) // hop)
        first_frame, n_frames = a // hop - ctx, size // hop + 2 * ctx
        mel_lo, mel_hi = mel_span(spec, first_frame, n_frames)
        read_lo = hop * (min(a - 1, mel_lo) // hop)  # a frame centre: frames stay whole
        read_hi = max(a + size, mel_hi)
        wav = self._read_output_span(item, read_lo, read_hi)  # (read_hi - read_lo,)
        feats = log_mel(wav, spec, first_frame - read_lo // hop, n_frames)  # (n_mels, F)
        return wav[a - 1 - read_lo : a + size - read_lo], feats


def _check_mel_args(
    mel: MelSpec | None, mel_context: int, segment_length: int, sample_rate: int
) -> None:
    """Validate :class:`SegmentDataset`'s ``mel``/``mel_context`` against its length and rate."""
    if isinstance(mel_context, bool) or not isinstance(mel_context, int) or mel_context < 0:
        raise ValueError(f"mel_context must be a non-negative integer, got {mel_context!r}")
    if mel is None:
        if mel_context:
            raise ValueError(
                f"mel_context={mel_context} needs mel features; pass mel=MelSpec(...) or "
                f"leave mel_context at 0"
            )
        return
    if not isinstance(mel, MelSpec):
        raise ValueError(f"mel must be a MelSpec or None, got {type(mel).__name__}")
    if mel.sample_rate != sample_rate:
        raise ValueError(
            f"mel.sample_rate={mel.sample_rate} differs from sample_rate={sample_rate}; the "
            f"features are computed at the segments' rate, so make them equal"
        )
    if segment_length % mel.hop_length:
        raise ValueError(
            f"segment_length={segment_length} must be a multiple of mel.hop_length="
            f"{mel.hop_length} for frame-aligned segments; e.g. use "
            f"{max(1, round(segment_length / mel.hop_length)) * mel.hop_length}"
        )


def _speaker_index(
    speakers: Sequence[str] | None, items: Sequence[AudioItem]
) -> dict[str | None, int]:
    """``{speaker: index}`` of ``speakers``, after checking that it covers every item's speaker.

    Raises:
        ValueError: ``speakers`` is a bare string or repeats an id.
        CorpusError: an item's speaker is missing from ``speakers`` (file, speaker and the
            known ids are named).
    """
    if speakers is None:
        return {}
    if isinstance(speakers, str):
        raise ValueError(f"speakers must be a sequence of ids, got the string {speakers!r}")
    index = {spk: k for k, spk in enumerate(speakers)}
    if len(index) != len(speakers):
        dupes = sorted({s for s in speakers if list(speakers).count(s) > 1})
        raise ValueError(f"speakers must be unique, got repeated ids {dupes}")
    for item in items:
        if item.speaker not in index:
            known = list(speakers)
            shown = known if len(known) <= 20 else known[:20] + ["..."]
            raise CorpusError(
                f"'{item.path}' has speaker {item.speaker!r}, which is not among the "
                f"{len(known)} known speakers {shown}; add it to speakers (e.g. "
                f"speakers_of(all_items)) or leave the file out."
            )
    return index
