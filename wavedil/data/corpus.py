"""Corpus layouts and the train/valid split.

    load_corpus(root, layout)  ->  list[AudioItem]          (probed headers, broken files skipped)
    split_items(items)         ->  (train, valid)           (by file, deterministic)
    speakers_of(items)         ->  sorted speaker ids       (the index order of speaker conditioning)

Skipped files and the per-corpus summary are reported with :mod:`logging` (logger
``wavedil.data.corpus``, a child of ``wavedil.data``); user errors raise :class:`CorpusError`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path

from wavedil.audio import AudioReadError

from .files import AUDIO_EXTENSIONS, AudioItem, CorpusError, _check_items, _check_root, _scan_audio_files, probe_audio

__all__ = [
    "LAYOUTS",
    "VCTK_MICS",
    "load_corpus",
    "corpus_seconds",
    "speakers_of",
    "split_items",
    "without_mic_suffix",
]

logger = logging.getLogger(__name__)

#: Layouts understood by :func:`load_corpus`.
LAYOUTS: tuple[str, ...] = ("folder", "ljspeech", "vctk")
#: ``mic`` choices of the ``vctk`` layout (VCTK 0.92 has every utterance from two microphones).
VCTK_MICS: tuple[str, ...] = ("mic1", "mic2", "both")
_MIC_SUFFIX = re.compile(r"_(mic[12])$")


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
    try:
        with open(metadata, encoding="utf-8-sig") as fh:
            for line in fh:
                file_id = line.split("|", 1)[0].strip()
                if file_id and file_id not in seen:
                    seen.add(file_id)
                    out.append((wavs / f"{file_id}.wav", None))
    except UnicodeDecodeError as exc:
        raise CorpusError(
            f"layout 'ljspeech': '{metadata}' is not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset "
            f"{exc.start}); save it as UTF-8, pipe-separated with the file id first (LJSpeech's own format)."
        ) from None
    if not out:
        raise CorpusError(f"layout 'ljspeech': '{metadata}' lists no file ids.")
    if not any(os.path.exists(path) for path, _ in out):
        first = out[0][0].relative_to(wavs).as_posix()[: -len(".wav")]  # the id as written
        hint = ""
        if any(sep in first for sep in (",", "\t", ";")):
            hint = " The ids hold a ',', ';' or tab: metadata.csv must be separated by '|' (id|text|normalized text)."
        elif Path(first).suffix:
            hint = f" The ids end in '{Path(first).suffix}': write them without it (LJ001-0001, read as wavs/LJ001-0001.wav)."
        raise CorpusError(
            f"layout 'ljspeech': none of the {len(out)} ids of '{metadata}' names a file in '{wavs}' (the first, "
            f"{first!r}, is read as '{out[0][0]}').{hint}"
        )
    return out


def load_corpus(
    root: str | os.PathLike,
    layout: str = "folder",
    min_frames: int = 0,
    mic: str = "mic1",
    mic_option: str = "data.mic",
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
        root: corpus folder (a leading ``~`` or ``~user`` is expanded).
        layout: one of :data:`LAYOUTS`.
        min_frames: skip files shorter than this many frames (at the file's own rate).
        mic: ``vctk`` layout only: one of :data:`VCTK_MICS`.
        mic_option: how the messages name the setting of ``mic`` (``data.mic`` of training; ``--mic``
            of ``wavedil eval``).

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
        raise CorpusError(f"unknown VCTK microphone {mic!r} ({mic_option}); valid choices are {list(VCTK_MICS)}")
    if isinstance(min_frames, bool) or not isinstance(min_frames, int) or min_frames < 0:
        raise CorpusError(f"min_frames must be an integer >= 0, got {min_frames!r}")
    root = _check_root(os.path.expanduser(root))  # "~/wavs": a quoted override or a config file
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
            files = _choose_mic(root, files, mic, mic_option)
            loose = [p for p in files if p.parent == root]
            if loose and len(loose) < len(files):  # all of them there: one speaker's folder given as the root
                logger.warning(
                    "layout=vctk: %d audio file(s) lie directly under '%s' (e.g. %s), not in a speaker's folder, "
                    "so they take the folder's own name '%s' as their speaker; move them into a folder named "
                    "for their speaker", len(loose), root, loose[0].name, root.name,
                )  # fmt: skip
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
        length = f" and at least {min_frames} frames long (the min_frames asked for)" if min_frames > 0 else ""
        raise CorpusError(
            f"none of the {len(reasons)} audio files of '{root}' is usable ({shown}); check "
            f"that the files are valid, non-empty audio{length}, e.g. by opening one with "
            f"soundfile, or point the corpus at another folder."
        )
    return items


def _setting(option: str, value: str) -> str:
    """``data.mic=both`` (a Hydra override) or ``--mic both`` (a command-line option)."""
    return f"{option} {value}" if option.startswith("-") else f"{option}={value}"


def _choose_mic(root: Path, files: list[Path], mic: str, option: str = "data.mic") -> list[Path]:
    """``files`` without the other microphone's copies (``*_mic1`` / ``*_mic2``) unless ``mic="both"``."""
    if mic == "both":
        return files
    other = {"mic1": "mic2", "mic2": "mic1"}[mic]
    kept = [p for p in files if (m := _MIC_SUFFIX.search(p.stem)) is None or m.group(1) == mic]
    dropped = len(files) - len(kept)
    if files and not kept:
        raise CorpusError(
            f"layout=vctk with mic={mic} found no *_{mic} files under '{root}', only {dropped} *_{other} "
            f"ones; set {_setting(option, other)} (or both)"
        )
    if dropped:
        logger.info("vctk: using the %s recordings, leaving out %d %s copies (%s keeps them)",
                    mic, dropped, other, _setting(option, "both"))  # fmt: skip
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
    _check_items(items, "speakers_of")
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


def without_mic_suffix(path: str | os.PathLike) -> Path:
    """``path`` without a VCTK ``_mic1`` / ``_mic2`` suffix on its name: the two microphones'
    copies of an utterance share it."""
    path = Path(path)
    return path.with_name(_MIC_SUFFIX.sub("", path.stem) + path.suffix)


def _split_keys(items: Sequence[AudioItem]) -> list[str]:
    """Each item's path relative to the items' common folder, as a POSIX string, without a
    ``_mic1`` / ``_mic2`` suffix: two microphones' copies of an utterance share their key."""
    parents = [os.path.abspath(item.path.parent) for item in items]
    common = os.path.commonpath(parents)
    keys = []
    for item in items:
        rel = Path(os.path.abspath(item.path)).relative_to(common)
        keys.append(without_mic_suffix(rel).as_posix())
    return keys


def _unit_hash(key: str) -> float:
    """A uniform number in [0, 1) from a string, identical on every machine and Python run."""
    # surrogateescape: a file name that is not UTF-8 hashes as its bytes (a UTF-8 name as before)
    return int.from_bytes(hashlib.sha1(key.encode("utf-8", "surrogateescape")).digest()[:8], "big") / 2.0**64


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
    _check_items(items, "split_items")
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
