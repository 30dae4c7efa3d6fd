"""Audio I/O and quantisation: mu-law (torchaudio), read/write (soundfile), resampling.

Waveforms are float32 tensors in [-1, 1]. A mono waveform is ``(T,)``; a batch is ``(B, T)``.
mu-law codes are int64 tensors of the same shape with values in ``[0, Q)``.
"""

from __future__ import annotations

import errno
import io
import logging
import math
import os
import shutil
import stat
import struct
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from ._io import atomic_open
from .causal import as_index

__all__ = [
    "OUTPUT_SUFFIXES",
    "check_output_path",
    "check_writable_folder",
    "check_format_rate",
    "mu_law_encode",
    "mu_law_decode",
    "linear_encode",
    "linear_decode",
    "ENCODINGS",
    "encode",
    "decode",
    "read_audio",
    "write_audio",
    "pcm16_bytes",
    "resample",
    "check_resampling",
    "AudioReadError",
    "AudioWriteError",
    "TRUNCATED_POLICIES",
    "audio_info",
    "silence_bounds",
    "file_silence_bounds",
    "trim_silence",
]


logger = logging.getLogger(__name__)


class AudioReadError(ValueError):
    """An audio file could not be read; the message names the file and the reason."""


class AudioWriteError(OSError):
    """An audio file could not be written (full disk, no permission, ...); the message names the
    file and what to do. ``errno`` is the failed write's; ``path`` the file. Nothing is left
    behind: a previous file of that name is untouched and no partial file remains."""

    def __init__(self, message: str, path: Path, error_number: int | None = None) -> None:
        super().__init__(message)
        self.errno = error_number  # set after init: OSError's str() stays the message
        self.path = path


#: What :func:`read_audio` does with a WAV file whose data ends before its header says (a
#: truncated copy): ``warn`` (log a warning, use the frames present), ``error`` (raise
#: :class:`AudioReadError`) or ``accept`` (use the frames present silently).
TRUNCATED_POLICIES: tuple[str, ...] = ("warn", "error", "accept")


def _check_classes(quantization_channels: int) -> None:
    if isinstance(quantization_channels, bool) or not isinstance(quantization_channels, int) or quantization_channels < 2:
        raise ValueError(
            f"quantization_channels must be an integer >= 2, got {quantization_channels!r}"
        )


def _check_wave(x: torch.Tensor, name: str = "x") -> None:
    """``x`` must be a float waveform tensor without NaN (values outside [-1, 1] are clipped later)."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor waveform in [-1, 1], got {type(x).__name__}")
    if not x.is_floating_point():
        hint = ": divide 16-bit PCM by 32768 first" if x.dtype in (torch.int16, torch.int32, torch.int64) else ""
        raise ValueError(f"{name} must be a float waveform in [-1, 1], got dtype {x.dtype}{hint}")
    if x.numel() and bool(torch.isnan(x).any()):
        raise ValueError(f"{name} holds {int(torch.isnan(x).sum())} NaN values of {x.numel()}: a waveform must be finite")


def _check_codes(codes: torch.Tensor, quantization_channels: int, name: str = "codes") -> None:
    """``codes`` must be an integer tensor with every code in ``[0, Q)``."""
    if not isinstance(codes, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of integer codes, got {type(codes).__name__}")
    if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
        raise ValueError(
            f"{name} must hold integer codes in [0, {quantization_channels}), got dtype {codes.dtype}: "
            "decode turns codes into a waveform (encode a waveform first)"
        )
    if codes.numel():
        lo, hi = (int(v) for v in torch.aminmax(codes))
        if lo < 0 or hi >= quantization_channels:
            raise ValueError(
                f"{name} must lie in [0, {quantization_channels}) for quantization_channels={quantization_channels}, "
                f"got range [{lo}, {hi}]"
            )


def mu_law_encode(x: torch.Tensor, quantization_channels: int = 256) -> torch.Tensor:
    """Quantise a waveform in [-1, 1] to mu-law codes.

    Args:
        x: float waveform of any shape, e.g. ``(B, T)``; values are clipped to [-1, 1]. Integer
            PCM and NaN are refused (``ValueError``): divide 16-bit PCM by 32768 first.
        quantization_channels: number of classes Q (256 for 8-bit mu-law).

    Returns:
        int64 codes of the same shape, in ``[0, Q)``.

    >>> mu_law_encode(torch.tensor([-1.0, 0.0, 1.0])).tolist()
    [0, 128, 255]
    """
    _check_classes(quantization_channels)
    _check_wave(x)
    return AF.mu_law_encoding(x.clamp(-1.0, 1.0), quantization_channels).long()


def mu_law_decode(codes: torch.Tensor, quantization_channels: int = 256) -> torch.Tensor:
    """Map mu-law codes in ``[0, Q)`` back to a float waveform in [-1, 1] (same shape).

    Float codes or codes outside ``[0, Q)`` raise ``ValueError`` (they would decode outside [-1, 1]).
    """
    _check_classes(quantization_channels)
    _check_codes(codes, quantization_channels)
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
    _check_wave(x)
    half = quantization_channels // 2
    codes = torch.round((x.double().clamp(-1.0, 1.0) + 1.0) * half)
    return codes.clamp_(0, quantization_channels - 1).long()


def linear_decode(codes: torch.Tensor, quantization_channels: int = 65536) -> torch.Tensor:
    """Bin centres ``2 i / Q - 1`` of linear codes ``i`` (same shape, float32, in ``[-1, 1)``)."""
    _check_classes(quantization_channels)
    if quantization_channels % 2:
        raise ValueError(f"linear quantisation needs an even number of bins, got {quantization_channels}")
    _check_codes(codes, quantization_channels)
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


#: The largest factor :func:`resample` raises a rate by: far beyond real conversions (8 kHz to
#: 48 kHz is 6x); a file whose header claims 1 Hz would otherwise become 8,000 times longer.
MAX_UPSAMPLING = 64


#: The largest resampling filter bank :func:`resample` builds, in taps: torchaudio's filter has
#: ``new / g`` phases of about ``orig / g`` taps each (``g`` the rates' greatest common divisor), so
#: rates that share no large factor (44,101 Hz to 8 kHz: 353 million taps) took gigabytes and
#: minutes for a second of audio. 2**25 taps (about 1 GB while it is built) admits every usual
#: pair of rates, 44,056 Hz to 48 kHz (33 million) included.
MAX_RESAMPLING_TAPS = 2**25


def check_resampling(orig_rate: int, new_rate: int) -> None:
    """``ValueError`` when :func:`resample` would refuse to resample ``orig_rate`` Hz to ``new_rate`` Hz.

    Raises:
        ValueError: a rate that is not positive, ``new_rate > MAX_UPSAMPLING * orig_rate``, or a
            pair of rates whose filter would exceed :data:`MAX_RESAMPLING_TAPS`; the message says
            what to do.
    """
    if orig_rate <= 0 or new_rate <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_rate} -> {new_rate}")
    if new_rate > MAX_UPSAMPLING * orig_rate:
        raise ValueError(
            f"resampling {orig_rate:,} Hz audio to {new_rate:,} Hz would make it {new_rate / orig_rate:,.0f} times "
            f"longer (the limit is {MAX_UPSAMPLING}x): a rate that low is usually a damaged header; if it is right, "
            "resample the file yourself first (e.g. with sox)"
        )
    g = math.gcd(orig_rate, new_rate)
    taps = (new_rate // g) * (orig_rate // g)
    if taps > MAX_RESAMPLING_TAPS:
        raise ValueError(
            f"resampling {orig_rate:,} Hz audio to {new_rate:,} Hz needs a filter of {taps:,} taps (the rates "
            f"reduce only to {orig_rate // g:,}:{new_rate // g:,}; the limit is {MAX_RESAMPLING_TAPS:,}), which "
            "would take gigabytes and minutes: an odd rate like that is usually a damaged header; if it is right, "
            "resample the file yourself first (e.g. with sox)"
        )


def resample(x: torch.Tensor, orig_rate: int, new_rate: int) -> torch.Tensor:
    """Resample a waveform ``(..., T)`` from ``orig_rate`` to ``new_rate`` Hz (torchaudio).

    Raises:
        ValueError: as :func:`check_resampling` (a rate that is not positive, an upsampling
            beyond ``MAX_UPSAMPLING``, or rates whose filter is too large).
    """
    check_resampling(orig_rate, new_rate)  # equal positive rates pass it
    if orig_rate == new_rate:
        return x
    return AF.resample(x, orig_rate, new_rate)


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


def _wav_data_chunk(path: str | os.PathLike) -> tuple[int, int, int] | None:
    """``(block_align, declared data bytes, bytes after the data chunk's header)`` of a RIFF/WAVE
    file, or None if it is not one or its chunks cannot be walked to ``data``."""
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
                    return block_align, size, os.fstat(fh.fileno()).st_size - fh.tell()
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


#: ``data`` sizes that mean "unknown length", written by programs writing a WAV to a pipe, which
#: cannot go back to their header: 0 and 0xFFFFFFFF (streaming encoders such as ffmpeg), and
#: arecord's 2 GiB (0x80000000; 0x7FFFFF00 in its older form), as ``ssh host arecord > rec.wav``
#: leaves it. Such a complete recording was called truncated and refused as a prompt.
_PLACEHOLDER_SIZES = frozenset({0, 0x7FFFFF00, 0x80000000, 0xFFFFFFFF})


def _wav_declared_frames(path: str | os.PathLike) -> int | None:
    """Frames that a RIFF/WAVE header's ``data`` chunk declares, or None if it cannot tell.

    libsndfile silently shortens a WAV whose data ends early to the frames present; comparing
    with this number tells a truncated file. The placeholder sizes of writers that cannot go back
    to their header (:data:`_PLACEHOLDER_SIZES`) give None.
    """
    chunk = _wav_data_chunk(path)
    if chunk is None:
        return None
    block_align, size, _ = chunk
    if block_align <= 0 or size in _PLACEHOLDER_SIZES:
        return None
    return size // block_align


def _wav_unread_tail(path: str | os.PathLike) -> int:
    """Frames of audio after the ``data`` a RIFF/WAVE header declares, which libsndfile does not read:
    what a writer appended after its last update of the header (a recorder stopped before it
    closed the file). 0 when there are none: nothing follows, a chunk follows (``LIST``, ``id3 ``,
    ...), the tail is zero padding, or the file cannot be walked."""
    chunk = _wav_data_chunk(path)
    if chunk is None:
        return 0
    block_align, size, after = chunk
    tail = after - size - (size & 1)
    if block_align <= 0 or size in _PLACEHOLDER_SIZES or tail < block_align:
        return 0
    try:
        with open(path, "rb") as fh:
            fh.seek(os.fstat(fh.fileno()).st_size - tail)
            head = fh.read(min(tail, 1 << 16))
    except OSError:
        return 0
    if len(head) >= 8 and all(32 <= b < 127 for b in head[:4]) and struct.unpack("<I", head[4:8])[0] <= tail - 8:
        return 0  # another chunk
    return 0 if not any(head) else tail // block_align


def _no_samples_message(path: str | os.PathLike, what: str) -> str:
    """Why the audio file ``path`` (called ``what``) gives no samples: it holds none, or (a WAV whose
    header was never finished, e.g. by a recording stopped before it closed the file) its header
    declares none while audio data follows it, which libsndfile does not read."""
    chunk = _wav_data_chunk(path)
    if chunk is None or chunk[1] != 0 or chunk[2] <= 0:
        return f"{what} holds no samples"
    return (
        f"{what} declares no samples in its header, but {chunk[2]:,} bytes of audio data follow it: the program "
        "that wrote it never finished the header (it was stopped before it closed the file); repair it with "
        f"sox --ignore-length '{path}' fixed.wav"
    )


def _readable_formats() -> str:
    return ", ".join(sorted(sf.available_formats()))


def _open_failure(path: Path, exc: Exception) -> AudioReadError:
    """The error for a file that soundfile could not open: why, in the user's terms."""
    try:  # libsndfile reports a denied open as "System error"; Python's message is clearer
        with open(path, "rb"):
            pass
    except OSError as os_exc:
        return AudioReadError(f"cannot open audio file '{path}': {os_exc.strerror or os_exc}")
    try:
        if os.path.getsize(path) == 0:
            return AudioReadError(f"audio file '{path}' is empty (0 bytes)")
    except OSError:
        pass
    reason = getattr(exc, "error_string", None) or str(exc)
    return AudioReadError(
        f"cannot read '{path}' as audio ({reason.strip().rstrip('.')}): it is damaged or not in a format "
        f"soundfile reads ({_readable_formats()}); give an audio file, or convert this one to WAV or FLAC"
    )


#: soundfile subtypes of lossy codecs, whose decoders overshoot [-1, 1] on audio encoded near full scale
_LOSSY_SUBTYPES = frozenset({"VORBIS", "OPUS", "MPEG_LAYER_I", "MPEG_LAYER_II", "MPEG_LAYER_III"})
#: files already warned about for samples outside [-1, 1] (a training run reads each file many times)
_WARNED_CLIPPED: set[str] = set()


def _open_sound(path: Path) -> sf.SoundFile:
    """``path`` opened for reading, or an :class:`AudioReadError` saying what is wrong with it
    (missing, a folder, unreadable, not audio soundfile knows)."""
    problem = _file_problem(path)
    if problem == "does not exist":
        raise AudioReadError(
            f"audio file '{path}' does not exist; check the path (it is resolved from the current folder '{Path.cwd()}')"
        )
    if problem is not None:
        hint = ": give an audio file inside it" if problem.startswith("is a folder") else ""
        sep = " " if problem.startswith(("is ", "cannot ")) else ": "
        raise AudioReadError(f"'{path}'{sep}{problem}{hint}")
    try:
        return sf.SoundFile(os.fsencode(path))  # bytes: soundfile cannot encode a name that is not UTF-8
    except Exception as exc:  # soundfile raises several types (RuntimeError, LibsndfileError)
        raise _open_failure(path, exc) from None


#: Frames per block in which :func:`read_audio` reads and downmixes multi-channel audio.
_DOWNMIX_BLOCK = 1 << 18


def _downmix(data: np.ndarray) -> np.ndarray:
    """The mono signal ``(T,)`` of float32 frames ``(T, C)``: the mean of the channels (a view of a single one)."""
    return data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]


def _read_mono(snd: sf.SoundFile, frames: int) -> tuple[np.ndarray, bool]:
    """Up to ``frames`` frames of ``snd`` from its position as float32 ``(T,)`` (:func:`_downmix`),
    and whether every sample read is finite.

    Multi-channel audio is read and downmixed :data:`_DOWNMIX_BLOCK` frames at a time into the
    mono signal: reading all ``(T, C)`` frames first held them beside their mean and its
    magnitudes, ``C + 2`` times the mono signal (1.3 GB for 30 minutes of 44.1 kHz stereo).
    """
    if snd.channels == 1:
        data = snd.read(frames, dtype="float32", always_2d=True)[:, 0]
        return data, not data.size or bool(np.isfinite(data.min()) and np.isfinite(data.max()))  # NaN propagates
    if snd.seekable():  # what soundfile reads: no more than the file holds
        frames = min(frames, snd.frames - snd.tell())
    out, n, finite = np.empty(max(frames, 0), dtype=np.float32), 0, True
    while n < out.shape[0]:
        block = snd.read(min(_DOWNMIX_BLOCK, out.shape[0] - n), dtype="float32", always_2d=True)  # (b, C)
        if not block.shape[0]:
            break
        finite = finite and bool(np.isfinite(block).all())
        out[n : n + block.shape[0]] = _downmix(block)
        n += block.shape[0]
    return out[:n], finite


def read_audio(
    path: str | os.PathLike,
    sample_rate: int | None = None,
    start: int = 0,
    frames: int = -1,
    *,
    truncated: str = "warn",
) -> tuple[torch.Tensor, int]:
    """Read an audio file as a mono float32 waveform ``(T,)`` in [-1, 1].

    Multi-channel audio is downmixed by averaging; if ``sample_rate`` is given and differs from
    the file's rate the waveform is resampled with torchaudio. ``start``/``frames`` select a
    span in the file's own frames, read without decoding the rest where the format allows.

    Args:
        truncated: what to do when a WAV file's data ends before its header says and the read
            reaches that end (one of :data:`TRUNCATED_POLICIES`): ``warn`` (default; use the
            frames present), ``error`` (for inputs that must be whole, such as a prompt) or
            ``accept`` (the caller has already reported it).

    Returns:
        ``(waveform, rate)`` where ``rate`` is ``sample_rate`` if given, else the file's rate.

    Raises:
        AudioReadError: the file is missing, a folder, unreadable, empty, in a format soundfile
            does not read, holds no or non-finite samples, or (``truncated="error"``) is a
            truncated WAV; the message names the file and the reason.
    """
    if truncated not in TRUNCATED_POLICIES:
        raise ValueError(f"truncated must be one of {TRUNCATED_POLICIES}, got {truncated!r}")
    if sample_rate is not None:
        rate = as_index(sample_rate)
        if rate is None or rate < 1:
            raise ValueError(f"sample_rate must be a positive integer (Hz) or None (the file's rate), got {sample_rate!r}")
        sample_rate = rate
    for name, value in (("start", start), ("frames", frames)):
        if as_index(value) is None:
            raise ValueError(f"{name} must be an integer (frames of the file), got {value!r}")
    start, frames = as_index(start), as_index(frames)
    path = Path(path)
    snd = _open_sound(path)
    with snd:
        present, rate, fmt, subtype = snd.frames, snd.samplerate, snd.format, snd.subtype
        first, end, _ = slice(start, None).indices(present)  # a negative start counts from the end
        wanted = end - first if frames < 0 else frames
        try:
            if first:
                snd.seek(first)
            data, finite = _read_mono(snd, wanted)
        except Exception as exc:
            raise AudioReadError(f"cannot read the samples of audio file '{path}': {exc}") from None
    reaches_end = frames < 0 or first + frames > present  # a span inside the file cannot tell
    if fmt == "WAV" and truncated != "accept" and reaches_end:
        declared = _wav_declared_frames(path)
        if declared is not None and declared > present:
            seconds = f"{declared / rate:.2f} s" if rate > 0 else f"{declared} frames"
            what = (
                f"audio file '{path}' is truncated: its header declares {declared} frames ({seconds}) "
                f"but the file holds {present}"
            )
            if truncated == "error":
                raise AudioReadError(f"{what}; it was cut short (an interrupted copy or download): use the complete file")
            logger.warning("%s; using the %d present", what, present)
        unread = _wav_unread_tail(path) if declared is None or declared <= present else 0
        if unread:
            logger.warning(
                "audio file '%s' declares %d frames in its header, but %s more frames of audio data (%.2f s) follow "
                "them, which are not read: the program that wrote it did not update its header at the end; to read "
                "them, repair it with sox --ignore-length '%s' fixed.wav", path, present, f"{unread:,}",
                unread / rate if rate > 0 else 0.0, path,
            )  # fmt: skip
    if data.shape[0] == 0:
        raise AudioReadError(_no_samples_message(path, f"audio file '{path}'"))
    if not finite:
        raise AudioReadError(f"audio file '{path}' holds NaN or infinite samples")
    wav = torch.from_numpy(data)
    lo, hi = torch.aminmax(wav)
    peak = max(-float(lo), float(hi))  # the largest magnitude, without a copy of the magnitudes
    if peak > 1.0 and str(path) not in _WARNED_CLIPPED:  # float data above full scale; once per file
        _WARNED_CLIPPED.add(str(path))
        if subtype in _LOSSY_SUBTYPES:  # the decoder's ringing around audio mastered at full scale
            why, advice = f"a lossy {subtype} decoder's overshoot of audio encoded near full scale", (
                "encode it a few dB quieter to keep its peaks")
        else:
            why, advice = "float audio above full scale", "scale the file down to keep its peaks"
        logger.warning(
            "audio file '%s' holds samples up to %.3g, outside [-1, 1] (%s): they are clipped to [-1, 1]; %s",
            path, peak, why, advice,
        )
    wav = wav.clamp_(-1.0, 1.0)
    if sample_rate is not None and sample_rate != rate:
        try:
            wav = resample(wav, rate, sample_rate)
        except ValueError as exc:
            raise AudioReadError(f"audio file '{path}': {exc}") from None
        rate = sample_rate
    return wav, rate


def _write_failure(path: Path, exc: OSError, nbytes: int) -> AudioWriteError:
    """The error for an encoded audio file that could not be written to ``path``."""
    folder = path.parent
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        try:
            free = f"{shutil.disk_usage(folder).free / 1e6:,.1f} MB free"
        except OSError:
            free = "free space unknown"
        cause = "no space left on the device" if exc.errno == errno.ENOSPC else "disk quota exceeded"
        advice = "free some space there, or choose an -o path in another folder"
        detail = f"{cause} of '{folder}' ({free}; the file needs {nbytes / 1e6:,.1f} MB)"
    else:
        advice = "check the folder's permissions and free space, or choose an -o path in another folder"
        detail = exc.strerror or str(exc) or type(exc).__name__
    return AudioWriteError(
        f"cannot write audio file '{path}': {detail}; nothing was written: {advice}", path, exc.errno
    )


def _check_rate(sample_rate: object) -> int:
    rate = as_index(sample_rate)
    if rate is None or rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate!r} (an integer number of Hz)")
    return rate


def _writable(wav: torch.Tensor) -> np.ndarray:
    """What is written of a waveform: non-finite values as 0, clipped to [-1, 1], float32."""
    data = torch.nan_to_num(wav.detach().float().cpu(), nan=0.0, posinf=0.0, neginf=0.0)
    return data.clamp(-1.0, 1.0).numpy()


def pcm16_bytes(wav: torch.Tensor, sample_rate: int) -> bytes:
    """A mono float waveform ``(T,)`` as raw 16-bit little-endian PCM: the samples of the ``.wav``
    :func:`write_audio` would write (the same clipping and libsndfile's conversion), without a header.

    Raises:
        ValueError: ``wav`` is not a mono float tensor, or ``sample_rate`` not a positive integer.
    """
    if not isinstance(wav, torch.Tensor) or wav.dim() != 1 or not wav.is_floating_point():
        raise ValueError(f"pcm16_bytes expects a mono float waveform (T,), got {getattr(wav, 'shape', type(wav))}")
    raw = io.BytesIO()
    sf.write(raw, _writable(wav), _check_rate(sample_rate), format="RAW", subtype="PCM_16", endian="LITTLE")
    return raw.getvalue()


#: The highest sample rate each output format is written at: FLAC's limit, and the Vorbis
#: encoder's usual top rate (libsndfile's encoder crashed the process at 256 kHz).
MAX_FORMAT_RATE: dict[str, int] = {".flac": 655_350, ".ogg": 192_000}


def check_format_rate(path: str | os.PathLike, sample_rate: int) -> None:
    """``ValueError`` when ``path``'s format cannot hold audio at ``sample_rate`` (checked before any work).

    Raises:
        ValueError: naming the file, the rate, the format's limit and what to use instead.
    """
    limit = MAX_FORMAT_RATE.get(Path(path).suffix.lower())
    if limit is not None and sample_rate > limit:
        raise ValueError(
            f"cannot write '{path}' at {sample_rate:,} Hz: {Path(path).suffix.lower()} holds at most {limit:,} Hz; "
            "write a .wav instead"
        )


def write_audio(path: str | os.PathLike, wav: torch.Tensor, sample_rate: int) -> Path:
    """Write a mono waveform ``(T,)`` as 16-bit PCM, atomically (temporary file + rename).

    Non-finite values are replaced by 0 and the signal is clipped to [-1, 1] before writing.
    The format follows the file extension (``.wav``, ``.flac``, ``.ogg``). The file is encoded
    in memory first, then written in one go: a failed write (e.g. a full disk) leaves any
    previous file of that name untouched and no partial or temporary file behind.

    Raises:
        ValueError: ``wav`` is not a mono float tensor (integer codes: decode them first),
            ``sample_rate`` is not a positive integer, or soundfile cannot encode the extension's format.
        AudioWriteError: the file could not be written (an :class:`OSError` naming the path and
            what to do: free space, or another folder).
    """
    path = Path(path)
    if not isinstance(wav, torch.Tensor):
        raise ValueError(f"write_audio expects a torch.Tensor waveform (T,), got {type(wav).__name__}")
    if wav.dim() != 1:
        raise ValueError(f"write_audio expects a mono waveform (T,), got shape {tuple(wav.shape)}")
    if not wav.is_floating_point():
        raise ValueError(
            f"write_audio expects a float waveform in [-1, 1], got dtype {wav.dtype}: turn codes into audio with "
            "wavedil.decode(codes, model.encoding, model.quantization_channels) first"
        )
    sample_rate = _check_rate(sample_rate)
    data = _writable(wav)
    fmt = (path.suffix.lstrip(".") or "wav").upper()
    if fmt not in sf.available_formats():
        raise ValueError(
            f"cannot write audio file '{path}': soundfile has no '{path.suffix}' format; use one of {', '.join(OUTPUT_SUFFIXES)}"
        )
    check_format_rate(path, sample_rate)
    buf = io.BytesIO()
    sf.write(buf, data, sample_rate, format=fmt, subtype="PCM_16" if fmt in ("WAV", "FLAC") else None)
    payload = buf.getbuffer()
    try:
        with atomic_open(path) as fh:
            fh.write(payload)
    except OSError as exc:
        raise _write_failure(path, exc, len(payload)) from None
    return path


def audio_info(path: str | os.PathLike) -> sf._SoundFileInfo:
    """Read an audio file's header with ``soundfile.info`` (frames, samplerate, channels, subtype).

    Raises:
        AudioReadError: the file is missing or its header cannot be parsed.
    """
    path = Path(path)
    try:
        return sf.info(os.fsencode(path))  # bytes: soundfile cannot encode a name that is not UTF-8
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


#: Frames per block of :func:`file_silence_bounds` (a few MB of float32 at most channel counts).
_BOUNDS_BLOCK = 1 << 18


def file_silence_bounds(path: str | os.PathLike, threshold_db: float) -> tuple[int, int]:
    """:func:`silence_bounds` of the mono waveform :func:`read_audio` gives for ``path`` (at the
    file's rate), computed in blocks: memory stays a block's whatever the length of the file.

    The whole waveform of a multi-hour file took several times its size as float32 (the samples,
    the downmix, their magnitudes and the indices of the loud ones: 0.8 GB for 20 minutes of 44.1
    kHz stereo). One pass keeps each block's peak; the two blocks holding the first and the last
    loud sample are read again to find them.

    Raises:
        AudioReadError: as :func:`read_audio` (not a file, unreadable, no samples, NaN or inf).
    """
    if not threshold_db < 0:
        silence_bounds(np.zeros(1), threshold_db)  # raises, with silence_bounds' message
    path = Path(path)
    snd = _open_sound(path)

    def magnitude(data: np.ndarray) -> np.ndarray:
        if not np.isfinite(data).all():
            raise AudioReadError(f"audio file '{path}' holds NaN or infinite samples")
        return np.abs(_downmix(data))  # read_audio's downmix

    def block(i: int) -> np.ndarray:
        snd.seek(i * _BOUNDS_BLOCK)
        return magnitude(snd.read(_BOUNDS_BLOCK, dtype="float32", always_2d=True))

    with snd:
        try:
            peaks = [float(magnitude(b).max()) for b in snd.blocks(_BOUNDS_BLOCK, dtype="float32", always_2d=True)
                     if len(b)]  # fmt: skip
            if not peaks:
                raise AudioReadError(_no_samples_message(path, f"audio file '{path}'"))
            peak = min(1.0, max(peaks))  # read_audio clips to [-1, 1]
            if peak <= 0.0:
                return 0, 0
            threshold = peak * 10.0 ** (threshold_db / 20.0)
            first = next(i for i, p in enumerate(peaks) if p >= threshold)
            last = max(i for i, p in enumerate(peaks) if p >= threshold)
            start = first * _BOUNDS_BLOCK + int(np.flatnonzero(block(first) >= threshold)[0])
            end = last * _BOUNDS_BLOCK + int(np.flatnonzero(block(last) >= threshold)[-1]) + 1
        except AudioReadError:
            raise
        except Exception as exc:
            raise AudioReadError(f"cannot read the samples of audio file '{path}': {exc}") from None
    return start, end


def trim_silence(wav: torch.Tensor, threshold_db: float) -> torch.Tensor:
    """Drop leading/trailing audio of ``wav`` ``(T,)`` below ``threshold_db`` (negative) re peak."""
    start, end = silence_bounds(wav, threshold_db)
    return wav[start:end]


#: File name endings the generation and vocoding commands write.
OUTPUT_SUFFIXES: tuple[str, ...] = (".wav", ".flac", ".ogg")


def check_output_path(path: str | os.PathLike) -> Path:
    """``path`` as a :class:`Path` after checking it can be written (its folder can be made, a test file written).

    Raises:
        ValueError: ``path`` is a folder, does not end in one of :data:`OUTPUT_SUFFIXES`, or its
            folder cannot be created or written.
    """
    if str(path) == "-":
        raise ValueError(
            "-o - (16-bit PCM on standard output) is written by wavedil generate (generate_to_stream in Python) "
            "and wavedil vocode --stream only: give an output file such as out.wav"
        )
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"output path '{path}' is a directory: give a file name such as {path / 'out.wav'}")
    if path.name.lower() in OUTPUT_SUFFIXES:  # '.wav': a hidden file with no name, not a WAV file
        raise ValueError(f"output file '{path}' has no name before its extension: give one such as out{path.name}")
    if path.suffix.lower() not in OUTPUT_SUFFIXES:
        raise ValueError(f"output file '{path}' must end in .wav, .flac or .ogg")
    check_writable_folder(path, "the output folder", "-o")
    return path


def check_writable_folder(path: Path, what: str, option: str) -> None:
    """Check that the folder of ``path`` can be made and a file written in it (a test file).

    Folders this check makes are removed again (the write makes them, :func:`wavedil._io.atomic_open`):
    a run refused after the check, or one that fails, leaves no empty folders behind.

    Raises:
        ValueError: it cannot; the message calls the folder ``what`` and names ``option``.
    """
    parent = path.parent
    made = []  # the missing folders, deepest first
    folder = parent
    while not os.path.lexists(folder) and folder != folder.parent:
        made.append(folder)
        folder = folder.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=parent, prefix=".wavedil-write-check-"):
            pass
    except OSError as exc:
        raise ValueError(
            f"cannot create {what} '{parent}' or write in it ({exc.strerror or exc}): choose another {option} path"
        ) from None
    finally:
        for folder in made:
            try:
                folder.rmdir()
            except OSError:  # not made here after all, or no longer empty: leave it
                break
