"""Audio files on disk: finding them under a folder and probing each one's header.

    find_audio_files(root)   ->  list[Path]             (recursive, sorted, links followed once)
    probe_audio(path)        ->  (frames, rate)         (or AudioReadError naming the reason)

:class:`AudioItem` (one probed file) and :class:`CorpusError` (a user error about a corpus) are
shared by the whole :mod:`wavedil.data` package. Skipped entries are reported with
:mod:`logging` (logger ``wavedil.data.files``, a child of ``wavedil.data``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

# _file_problem, _no_samples_message and _wav_declared_frames live in wavedil.audio, which read_audio shares them with
from wavedil.audio import AudioReadError, _file_problem, _no_samples_message, _wav_declared_frames, audio_info

__all__ = [
    "AUDIO_EXTENSIONS",
    "AudioItem",
    "CorpusError",
    "find_audio_files",
    "probe_audio",
]

logger = logging.getLogger(__name__)

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


def _check_items(items: Sequence[AudioItem], what: str, start: int = 0) -> None:
    """A :class:`CorpusError` naming the first entry of ``items`` that is not an :class:`AudioItem` (a
    path from :func:`find_audio_files`, say), for ``what`` (the function given them); ``items[0]`` is
    called index ``start``."""
    for i, item in enumerate(items, start):
        if not isinstance(item, AudioItem):
            raise CorpusError(
                f"{what} takes AudioItems (from load_corpus(root)), got {type(item).__name__} {item!r} at "
                f"index {i}: load the files with load_corpus(root), or wrap a path as AudioItem(path)"
            )


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
        raise AudioReadError(_no_samples_message(path, f"'{path}'"))
    if info.frames < min_frames:
        raise AudioReadError(
            f"'{path}' is too short: {info.frames} frames < min_frames={min_frames}"
        )
    if info.subtype in ("FLOAT", "DOUBLE"):
        try:
            for block in sf.blocks(os.fsencode(path), blocksize=_SCAN_BLOCK, dtype="float32"):
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
