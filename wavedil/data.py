"""Corpora on disk -> lists of audio files -> fixed-length mu-law training segments.

Pipeline::

    load_corpus(root, layout)  ->  list[AudioItem]          (probed headers, broken files skipped)
    split_items(items)         ->  (train, valid)           (by file, deterministic)
    SegmentDataset(train, L, sample_rate)[i] -> (L + 1,)    int64 codes (mu-law or linear)
        with speakers= and/or mel=      -> {"codes": (L + 1,), "speaker": (), "mel": (n_mels, F)}
    iter_file_codes(valid, sample_rate)      -> (item, (T,)) whole files, for evaluation
    file_mel(wav, spec, context)             -> (n_mels, frames + 2 * context), for vocoding

A segment has ``L + 1`` codes so that a model reads ``codes[:-1]`` and predicts ``codes[1:]``;
batched by a ``DataLoader`` it becomes ``(B, L + 1)``.

Mel-conditioned segments are frame aligned: their first target sample ``codes[1]`` is file
sample ``a`` with ``a % hop == 0`` and their features are frames ``a // hop - context ..``
of :func:`wavedil.conditioning.log_mel` of the whole file, exactly what :func:`file_mel` gives
for the whole file, so training and vocoding see the same features.

Skipped files and the per-corpus summary are reported with :mod:`logging` (logger
``wavedil.data``), so they land in the training log; user errors raise :class:`CorpusError`.
"""

from __future__ import annotations

import bisect
import errno
import hashlib
import logging
import math
import os
import re
import stat
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from wavedil.audio import (
    ENCODINGS,
    AudioReadError,
    audio_info,
    encode,
    read_audio,
    resample,
    silence_bounds,
)
from wavedil.conditioning import MelSpec, frames_for, log_mel, mel_span

__all__ = [
    "AUDIO_EXTENSIONS",
    "LAYOUTS",
    "AudioItem",
    "CorpusError",
    "find_audio_files",
    "probe_audio",
    "load_corpus",
    "corpus_seconds",
    "split_items",
    "SegmentDataset",
    "iter_file_codes",
    "speakers_of",
    "file_mel",
]

logger = logging.getLogger(__name__)

#: Layouts understood by :func:`load_corpus`.
LAYOUTS: tuple[str, ...] = ("folder", "ljspeech", "vctk")
#: ``mic`` choices of the ``vctk`` layout (VCTK 0.92 has every utterance from two microphones).
VCTK_MICS: tuple[str, ...] = ("mic1", "mic2", "both")
_MIC_SUFFIX = re.compile(r"_(mic[12])$")

# Formats libsndfile lists that are not found by extension: RAW needs its parameters given,
# WAVEX uses ".wav", MAT4/MAT5 are any MATLAB file, SD2 only exists on macOS.
_NOT_BY_EXTENSION = {"raw", "wavex", "mat4", "mat5", "sd2"}
_EXTENSION_ALIASES = {"aif", "aifc", "oga", "opus", "snd", "sph", "wave"}

#: Lower-case file extensions (no dot) that :func:`find_audio_files` picks up.
AUDIO_EXTENSIONS: frozenset[str] = frozenset(
    {fmt.lower() for fmt in sf.available_formats()} - _NOT_BY_EXTENSION | _EXTENSION_ALIASES
)

# Float files can hold NaN/inf; their samples are scanned in blocks of this many frames.
_SCAN_BLOCK = 1 << 16


class CorpusError(ValueError):
    """A corpus folder is missing, empty, unreadable or not in the requested layout."""


@dataclass(frozen=True)
class AudioItem:
    """One audio file of a corpus.

    Attributes:
        path: the file.
        speaker: speaker id (``vctk`` layout), else ``None``.
        frames: length in frames at the file's own rate (0 = not probed).
        rate: the file's sample rate in Hz (0 = not probed).
    """

    path: Path
    speaker: str | None = None
    frames: int = 0
    rate: int = 0

    @property
    def seconds(self) -> float:
        """Duration in seconds (0.0 when not probed)."""
        return self.frames / self.rate if self.rate > 0 else 0.0


# --------------------------------------------------------------------------------------------
# Finding and probing files
# --------------------------------------------------------------------------------------------


def _check_root(root: str | os.PathLike) -> Path:
    root = Path(root)
    if not root.exists():
        raise CorpusError(
            f"corpus folder '{root}' does not exist; check the path (it is resolved from the "
            f"current directory '{Path.cwd()}') or download/prepare the corpus first."
        )
    if not root.is_dir():
        raise CorpusError(
            f"corpus path '{root}' is not a folder; pass the folder that holds the audio files "
            f"(for one file, use its parent folder)."
        )
    return root


def _audio_suffix(name: str, extensions: frozenset[str]) -> bool:
    suffix = os.path.splitext(name)[1]
    return len(suffix) > 1 and suffix[1:].lower() in extensions


def _file_problem(path: Path) -> str | None:
    """Why ``path`` is not a regular file that could be opened, or None if it is one.

    Uses ``stat`` only (never opens the path: opening a FIFO would block).
    """
    try:
        st = os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symbolic link loop (following it never reaches a file)"
        if exc.errno == errno.ENOENT:
            if os.path.islink(path):
                return f"broken symbolic link (its target '{os.readlink(path)}' does not exist)"
            return "does not exist"
        return f"cannot be inspected ({exc.strerror or exc})"
    if stat.S_ISDIR(st.st_mode):
        return "is a folder, not an audio file"
    if not stat.S_ISREG(st.st_mode):
        return "is not a regular file (a FIFO, socket or device)"
    return None


def _scan_audio_files(root: Path, exts: frozenset[str]) -> tuple[list[Path], list[str]]:
    """The walk behind :func:`find_audio_files`: ``(files, skipped)``.

    ``skipped`` holds one message per entry that has an audio name but is not a usable
    regular file (folder, FIFO, broken link, link loop) or is an unreadable folder.
    """
    seen_dirs: set[tuple[int, int]] = set()
    found: list[Path] = []
    skipped: list[str] = []

    def on_error(exc: OSError) -> None:
        skipped.append(f"unreadable folder '{exc.filename}': {exc.strerror}")

    for dirpath, dirnames, filenames in os.walk(root, onerror=on_error, followlinks=True):
        try:
            st = os.stat(dirpath)
        except OSError as exc:
            on_error(exc)
            dirnames[:] = []
            continue
        if (st.st_dev, st.st_ino) in seen_dirs:  # reached again through a link: a loop or alias
            dirnames[:] = []
            continue
        seen_dirs.add((st.st_dev, st.st_ino))
        # Sorted descent makes "which alias of a folder is kept" independent of listing order.
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in dirnames:  # searched like any folder, but reported: it is not a file
            if _audio_suffix(name, exts):
                skipped.append(
                    f"'{Path(dirpath) / name}': is a folder, not an audio file (files inside "
                    f"it are still searched)"
                )
        for name in sorted(filenames):
            if name.startswith(".") or not _audio_suffix(name, exts):
                continue
            path = Path(dirpath) / name
            problem = _file_problem(path)
            if problem is None:
                found.append(path)
            else:
                skipped.append(f"'{path}': {problem}")
    return sorted(found, key=lambda p: p.relative_to(root).as_posix()), skipped


def find_audio_files(
    root: str | os.PathLike, extensions: Sequence[str] | None = None
) -> list[Path]:
    """List the audio files under ``root``, recursively, sorted by their path relative to root.

    Symbolic links are followed, and each real folder is entered once, so a link back to a
    parent cannot loop. Hidden files and folders (name starting with ``.``, such as macOS
    ``._x.wav`` resource forks) are skipped silently. Entries with an audio name that are not
    regular files (a folder ``x.wav/``, a FIFO, a broken link, a link loop) and unreadable
    folders are skipped with a logged warning that names them and says why.

    Args:
        root: the folder to search.
        extensions: extensions to accept (case-insensitive, with or without the dot); default
            :data:`AUDIO_EXTENSIONS`, the formats soundfile reads.

    Returns:
        the files as ``root / relative path`` (links are not resolved).

    Raises:
        CorpusError: ``root`` is missing or not a folder.
    """
    root = _check_root(root)
    exts = (
        AUDIO_EXTENSIONS
        if extensions is None
        else frozenset(e.lower().lstrip(".") for e in extensions)
    )
    found, skipped = _scan_audio_files(root, exts)
    for msg in skipped:
        logger.warning("skipping %s", msg)
    return found


def _wav_declared_frames(path: str | os.PathLike) -> int | None:
    """Frames that a RIFF/WAVE header's ``data`` chunk declares, or None if it cannot tell.

    libsndfile silently shortens a WAV whose data ends early to the frames present; comparing
    with this number tells a truncated file. Placeholder sizes (0 or 0xFFFFFFFF, written by
    streaming encoders) give None.
    """
    block_align = 0
    try:
        with open(path, "rb") as fh:
            head = fh.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                return None
            for _ in range(64):  # a WAV has a handful of chunks before 'data'
                chunk = fh.read(8)
                if len(chunk) < 8:
                    return None
                cid, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
                if cid == b"data":
                    if block_align <= 0 or size in (0, 0xFFFFFFFF):
                        return None
                    return size // block_align
                if cid == b"fmt " and size >= 14:
                    fmt = fh.read(14)
                    if len(fmt) < 14:
                        return None
                    block_align = struct.unpack("<H", fmt[12:14])[0]
                    size -= 14
                fh.seek(size + (size & 1), os.SEEK_CUR)  # chunks are padded to even sizes
    except OSError:
        return None
    return None


def probe_audio(path: str | os.PathLike, min_frames: int = 0) -> tuple[int, int]:
    """Check that a file is usable audio and return ``(frames, rate)`` from its header.

    Float-sample files are also scanned for NaN/inf (PCM cannot hold them). A WAV file whose
    data ends before its header says (a truncated copy) is kept, with a logged warning, and
    ``frames`` counts the frames present.

    Raises:
        AudioReadError: not a regular file, cannot be opened (e.g. permissions), unreadable
            header, no samples, fewer than ``min_frames`` frames, a bad sample rate, or
            non-finite samples; the message names the file and the reason.
    """
    problem = _file_problem(Path(path))
    if problem is not None:
        raise AudioReadError(f"'{path}' {problem}")
    try:  # libsndfile reports a denied open as "System error"; Python's message is clearer
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise AudioReadError(f"cannot open '{path}': {exc.strerror or exc}") from None
    if os.path.getsize(path) == 0:
        raise AudioReadError(f"'{path}' is empty (0 bytes)")
    info = audio_info(path)
    if info.samplerate <= 0:
        raise AudioReadError(f"'{path}' has an invalid sample rate {info.samplerate}")
    if info.frames <= 0:
        raise AudioReadError(f"'{path}' holds no samples (0 frames)")
    if info.frames < min_frames:
        raise AudioReadError(
            f"'{path}' is too short: {info.frames} frames < min_frames={min_frames}"
        )
    if info.subtype in ("FLOAT", "DOUBLE"):
        try:
            for block in sf.blocks(str(path), blocksize=_SCAN_BLOCK, dtype="float32"):
                if not np.isfinite(block).all():
                    raise AudioReadError(f"'{path}' holds NaN or infinite samples")
        except AudioReadError:
            raise
        except Exception as exc:
            raise AudioReadError(f"cannot read samples of '{path}': {exc}") from exc
    if info.format == "WAV":
        declared = _wav_declared_frames(path)
        if declared is not None and declared > info.frames:
            logger.warning(
                "'%s' is truncated: its header declares %d frames but the file holds %d; "
                "using the %d present",
                path, declared, info.frames, info.frames,
            )
    return int(info.frames), int(info.samplerate)


# --------------------------------------------------------------------------------------------
# Corpus layouts
# --------------------------------------------------------------------------------------------


def _ljspeech_candidates(root: Path) -> list[tuple[Path, str | None]]:
    metadata = root / "metadata.csv"
    if not metadata.is_file():
        raise CorpusError(
            f"layout 'ljspeech' needs '{metadata}' (pipe-separated, first column = file id) and "
            f"a 'wavs/' folder beside it, but metadata.csv is missing; pass the LJSpeech folder "
            f"that holds metadata.csv, or use layout='folder' for a plain folder of audio files."
        )
    wavs = root / "wavs"
    if not wavs.is_dir():
        raise CorpusError(
            f"layout 'ljspeech': '{wavs}' is missing; metadata.csv ids are read as wavs/<id>.wav."
        )
    seen: set[str] = set()
    out: list[tuple[Path, str | None]] = []
    with open(metadata, encoding="utf-8-sig") as fh:
        for line in fh:
            file_id = line.split("|", 1)[0].strip()
            if file_id and file_id not in seen:
                seen.add(file_id)
                out.append((wavs / f"{file_id}.wav", None))
    if not out:
        raise CorpusError(f"layout 'ljspeech': '{metadata}' lists no file ids.")
    return out


def load_corpus(
    root: str | os.PathLike, layout: str = "folder", min_frames: int = 0, mic: str = "mic1"
) -> list[AudioItem]:
    """Find and probe the audio files of a corpus.

    Layouts:
        ``folder``: every audio file under ``root`` (recursive), ``speaker=None``.
        ``ljspeech``: the files ``root/wavs/<id>.wav`` listed in ``root/metadata.csv``
        (pipe-separated, id first), in metadata order, ``speaker=None``.
        ``vctk``: every audio file under ``root`` with ``speaker`` = its parent folder's name
        (``wav48_silence_trimmed/p225/p225_001_mic1.flac`` -> ``p225``). VCTK 0.92 holds each
        utterance twice, ``*_mic1`` and ``*_mic2``; ``mic`` keeps one of them (default ``mic1``)
        or ``"both"``. Files without a mic suffix (VCTK 0.80's ``wav48/``) are always kept.

    Each file's header is probed (:func:`probe_audio`); missing, unreadable, empty, non-finite or
    shorter-than-``min_frames`` files, and entries with an audio name that are not regular files
    (a folder ``x.wav/``, a FIFO, a broken link or link loop), are skipped with a logged warning
    naming the entry and the reason, and a summary line counts used and skipped entries. A WAV
    truncated after its header is used (the frames present) with a warning.

    Args:
        root: corpus folder.
        layout: one of :data:`LAYOUTS`.
        min_frames: skip files shorter than this many frames (at the file's own rate).
        mic: ``vctk`` layout only: one of :data:`VCTK_MICS`.

    Returns:
        the usable files, with ``frames`` and ``rate`` filled in.

    Raises:
        CorpusError: unknown layout or mic; ``root`` missing, not a folder, without audio files
            or without a single readable one; ``ljspeech`` without ``metadata.csv``; ``vctk``
            with no file of the chosen mic.
    """
    if layout not in LAYOUTS:
        raise CorpusError(f"unknown corpus layout {layout!r}; valid layouts are {list(LAYOUTS)}")
    if mic not in VCTK_MICS:
        raise CorpusError(f"unknown VCTK microphone {mic!r} (data.mic); valid choices are {list(VCTK_MICS)}")
    if min_frames < 0:
        raise CorpusError(f"min_frames must be >= 0, got {min_frames}")
    root = _check_root(root)
    reasons: list[str] = []  # one per skipped entry
    if layout == "ljspeech":
        candidates = _ljspeech_candidates(root)
    else:
        files, reasons = _scan_audio_files(root, AUDIO_EXTENSIONS)
        for msg in reasons:
            logger.warning("skipping %s", msg)
        if not files and not reasons:
            raise CorpusError(
                f"no audio files found under '{root}' (searched recursively for "
                f"{', '.join(sorted(AUDIO_EXTENSIONS))}); check the path, or convert the audio "
                f"to WAV/FLAC."
            )
        if layout == "vctk":
            files = _choose_mic(root, files, mic)
        candidates = [(p, p.parent.name if layout == "vctk" else None) for p in files]

    items: list[AudioItem] = []
    for path, speaker in candidates:
        try:
            frames, rate = probe_audio(path, min_frames)
        except AudioReadError as exc:
            reasons.append(str(exc))
            logger.warning("skipping audio file: %s", exc)
            continue
        items.append(AudioItem(path=path, speaker=speaker, frames=frames, rate=rate))

    summary = (
        f"corpus '{root}' (layout={layout}): using {len(items)} files "
        f"({corpus_seconds(items) / 60:.2f} min), skipped {len(reasons)}"
    )
    logger.log(logging.WARNING if reasons else logging.INFO, summary)
    if not items:
        shown = "; ".join(reasons[:3]) + ("; ..." if len(reasons) > 3 else "")
        raise CorpusError(
            f"none of the {len(reasons)} audio files of '{root}' is usable ({shown}); check "
            f"that the files are valid audio (e.g. open one with soundfile) and that "
            f"min_frames={min_frames} is not larger than the files."
        )
    return items


def _choose_mic(root: Path, files: list[Path], mic: str) -> list[Path]:
    """``files`` without the other microphone's copies (``*_mic1`` / ``*_mic2``) unless ``mic="both"``."""
    if mic == "both":
        return files
    other = {"mic1": "mic2", "mic2": "mic1"}[mic]
    kept = [p for p in files if (m := _MIC_SUFFIX.search(p.stem)) is None or m.group(1) == mic]
    dropped = len(files) - len(kept)
    if files and not kept:
        raise CorpusError(
            f"layout=vctk with mic={mic} found no *_{mic} files under '{root}', only {dropped} *_{other} "
            f"ones; set data.mic={other} (or both)"
        )
    if dropped:
        logger.info("vctk: using the %s recordings, leaving out %d %s copies (data.mic=both keeps them)",
                    mic, dropped, other)  # fmt: skip
    return kept


def corpus_seconds(items: Sequence[AudioItem]) -> float:
    """Total duration of ``items`` in seconds."""
    return sum(item.seconds for item in items)


def speakers_of(items: Sequence[AudioItem]) -> list[str]:
    """The sorted unique speaker ids of ``items`` (the index order of speaker conditioning).

    Raises:
        CorpusError: no items, or an item without a speaker (its file is named).
    """
    if not items:
        raise CorpusError("speakers_of got no audio files; load a corpus first.")
    for item in items:
        if item.speaker is None:
            raise CorpusError(
                f"speaker conditioning needs a speaker for every file, but '{item.path}' has "
                f"none; use a layout that names speakers (layout='vctk': one folder per "
                f"speaker) or turn speaker conditioning off."
            )
    return sorted({item.speaker for item in items if item.speaker is not None})


# --------------------------------------------------------------------------------------------
# Train/valid split
# --------------------------------------------------------------------------------------------


def _split_keys(items: Sequence[AudioItem]) -> list[str]:
    """Each item's path relative to the items' common folder, as a POSIX string, without a
    ``_mic1`` / ``_mic2`` suffix: two microphones' copies of an utterance share their key."""
    parents = [os.path.abspath(item.path.parent) for item in items]
    common = os.path.commonpath(parents)
    keys = []
    for item in items:
        rel = Path(os.path.abspath(item.path)).relative_to(common)
        keys.append(rel.with_name(_MIC_SUFFIX.sub("", rel.stem) + rel.suffix).as_posix())
    return keys


def _unit_hash(key: str) -> float:
    """A uniform number in [0, 1) from a string, identical on every machine and Python run."""
    return int.from_bytes(hashlib.sha1(key.encode("utf-8")).digest()[:8], "big") / 2.0**64


def split_items(
    items: Sequence[AudioItem], valid_fraction: float = 0.05, min_valid: int = 1
) -> tuple[list[AudioItem], list[AudioItem]]:
    """Split files into ``(train, valid)``, deterministically and independent of input order.

    Each file is scored by a hash of its path relative to the files' common folder (so the
    split is the same on any machine); files scoring below ``valid_fraction`` go to valid, and
    if that gives fewer than ``min_valid`` the lowest-scoring files are added. A file's side
    thus depends on its own name only, except for that top-up. One file gives no valid set.
    Files that differ only by a ``_mic1`` / ``_mic2`` suffix (VCTK's two microphones) share
    their score and always land on the same side: no utterance is in both sets.
    Both lists are sorted by relative path.

    Raises:
        CorpusError: no items, bad arguments, or the split would leave training empty.
    """
    if not 0.0 <= valid_fraction < 1.0:
        raise CorpusError(f"valid_fraction must be in [0, 1), got {valid_fraction}")
    if min_valid < 0:
        raise CorpusError(f"min_valid must be >= 0, got {min_valid}")
    if not items:
        raise CorpusError("cannot split an empty list of audio files; load a corpus first.")
    keys = _split_keys(items)
    order = sorted(range(len(items)), key=lambda k: (_unit_hash(keys[k]), keys[k]))
    if len(items) < 2:
        n_valid = 0
    else:
        n_below = sum(_unit_hash(keys[k]) < valid_fraction for k in order)
        n_valid = max(n_below, min_valid)
    valid_keys = {keys[k] for k in order[:n_valid]}  # whole utterances: both mics' copies together
    valid_idx = {k for k in range(len(items)) if keys[k] in valid_keys}
    if len(valid_idx) >= len(items):
        raise CorpusError(
            f"splitting {len(items)} files ({len(set(keys))} utterances) with valid_fraction={valid_fraction}, "
            f"min_valid={min_valid} would leave no training files; lower min_valid or valid_fraction, or add files."
        )
    by_key = sorted(range(len(items)), key=lambda k: (keys[k], str(items[k].path)))
    train = [items[k] for k in by_key if k not in valid_idx]
    valid = [items[k] for k in by_key if k in valid_idx]
    return train, valid


# --------------------------------------------------------------------------------------------
# Training segments
# --------------------------------------------------------------------------------------------


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
        items: the usable files (unreadable or all-zero ones are dropped with a warning).
        spans: per file, the ``[start, end)`` frames (file rate) that segments are drawn from.
        lengths: per file, the span's length in frames at ``sample_rate``.
        total_frames: ``sum(lengths)``.

    >>> ds = SegmentDataset(load_corpus("data/speech8k/wavs"), 4000, 8000)  # doctest: +SKIP
    >>> ds[0].shape, ds[0].dtype  # doctest: +SKIP
    (torch.Size([4001]), torch.int64)
    """

    #: how many other files are tried when a file fails to read
    max_read_attempts: int = 10

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
        if not isinstance(segment_length, int) or segment_length < 1:
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
        self.segments_per_epoch = segments_per_epoch or max(1, self.total_frames // segment_length)

    def _usable_span(self, item: AudioItem) -> tuple[int, int] | None:
        """``[start, end)`` of the file to sample from (file frames); None if all silent.

        Raises:
            AudioReadError: the file cannot be read (only read when trimming silence).
        """
        if self.trim_silence_db is None:
            return 0, item.frames
        wav, _ = read_audio(item.path)
        start, end = silence_bounds(wav, self.trim_silence_db)
        return (start, end) if end > start else None

    def __len__(self) -> int:
        return self.segments_per_epoch

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch; segments are a function of ``(seed, epoch, index)``."""
        if not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch must be a non-negative integer, got {epoch!r}")
        self.epoch = epoch

    def generator(self, index: int) -> torch.Generator:
        """The random generator for ``index`` in the current epoch."""
        return torch.Generator().manual_seed(_mix_seed(self.seed, self.epoch, index))

    def __getitem__(self, index: int) -> torch.Tensor | dict[str, torch.Tensor]:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for SegmentDataset of length {n}")
        index %= n
        gen = self.generator(index)
        failed: list[str] = []
        for _ in range(self.max_read_attempts):
            pick = int(torch.randint(0, self.total_frames, (1,), generator=gen))
            k = bisect.bisect_right(self._cumulative, pick)
            try:
                if self.mel is None:
                    wav, feats = self._read_segment(k, gen), None
                else:
                    wav, feats = self._read_aligned(k, gen, self.mel)
            except AudioReadError as exc:
                failed.append(str(exc))
                logger.warning("SegmentDataset: %s; drawing another file instead", exc)
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
        raise CorpusError(
            f"SegmentDataset: {self.max_read_attempts} files in a row failed to read for "
            f"index {index} (last: {failed[-1]}); check that the corpus files are still there."
        )

    def _read_segment(self, k: int, gen: torch.Generator) -> torch.Tensor:
        """Read a random ``(L + 1,)`` float span of file ``k`` at ``self.sample_rate``."""
        item, (start, end), length = self.items[k], self.spans[k], self.lengths[k]
        need = self.segment_length + 1
        rate, sr = item.rate, self.sample_rate
        if length < need:  # whole (trimmed) file, left-padded below
            wav, _ = read_audio(item.path, start=start, frames=end - start)
            return _fit_length(resample(wav, rate, sr), need)
        offset = int(torch.randint(0, length - need + 1, (1,), generator=gen))  # output frames
        if rate == sr:
            wav, _ = read_audio(item.path, start=start + offset, frames=need)
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
        wav, _ = read_audio(item.path, start=a, frames=b - a)
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
            wav, _ = read_audio(item.path, start=lo, frames=hi - lo)
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


# --------------------------------------------------------------------------------------------
# Whole files, for evaluation
# --------------------------------------------------------------------------------------------


def iter_file_codes(
    items: Sequence[AudioItem],
    sample_rate: int,
    quantization_channels: int = 256,
    max_seconds: float | None = None,
    encoding: str = "mulaw",
) -> Iterator[tuple[AudioItem, torch.Tensor]]:
    """Yield ``(item, codes)`` for each whole file, in order, with ``codes`` int64 ``(T,)``.

    Files are resampled to ``sample_rate`` and quantised with ``encoding`` (``"mulaw"`` or
    ``"linear"``, :func:`wavedil.audio.encode`); with ``max_seconds`` only the first
    ``max_seconds`` are read (``T <= max_seconds * sample_rate``). Unreadable files are
    skipped with a logged warning.
    """
    if not isinstance(sample_rate, int) or sample_rate < 1:
        raise ValueError(f"sample_rate must be a positive integer (Hz), got {sample_rate!r}")
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")
    encode(torch.zeros(()), encoding, quantization_channels)  # checks Q for the encoding
    if max_seconds is not None and not max_seconds > 0:
        raise ValueError(f"max_seconds must be positive or None, got {max_seconds}")
    for item in items:
        frames = -1
        if max_seconds is not None and item.rate > 0:
            frames = math.ceil(max_seconds * item.rate)
        try:
            wav, _ = read_audio(item.path, sample_rate=sample_rate, frames=frames)
        except AudioReadError as exc:
            logger.warning("iter_file_codes: skipping audio file: %s", exc)
            continue
        if max_seconds is not None:
            wav = wav[: int(max_seconds * sample_rate)]
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
