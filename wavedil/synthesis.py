"""Audio files from a checkpoint: sample new audio, or re-synthesise audio from its log-mel.

    generate_to_files(checkpoint, "out.wav", seconds=2.0, batch=4)  ->  SynthesisResult
    generate_to_stream(checkpoint, sys.stdout.buffer, seconds=2.0)  ->  SynthesisResult (PCM as it is drawn)
    vocode_file(vocoder_checkpoint, "in.wav", "out.wav")            ->  SynthesisResult

and what they read: :func:`load_mel` (a saved log-mel ``(n_mels, M)``), :func:`resolve_speaker`
(a speaker name or index -> the class index) and :func:`check_output_path`. ``wavedil generate``
and ``wavedil vocode`` are thin wrappers around these; recipes and tests call them in process.

A ``checkpoint`` is a ``step_*.pt`` file, a run folder (its newest good checkpoint,
:func:`wavedil.checkpoint.open_checkpoint`) or ``pretrained:NAME``, a model that ships with
wavedil (:func:`wavedil.pretrained.open_model` resolves all three). Audio at another sample rate
is resampled to the model's, and :attr:`SynthesisResult.notes` says so. User errors raise ``ValueError`` (or its subclasses
:class:`~wavedil.checkpoint.CheckpointError`, :class:`~wavedil.audio.AudioReadError`) naming the
offending value.
"""

from __future__ import annotations

import math
import os
import sys
import time
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from .audio import (
    OUTPUT_SUFFIXES,
    AudioReadError,
    audio_info,
    check_format_rate,
    check_output_path,
    check_writable_folder,
    decode,
    encode,
    pcm16_bytes,
    read_audio,
    resample,
    write_audio,
)
from .backends import check_seed, check_temperature, temperature_notes
from .backends import resolve_device as _device
from .checkpoint import model_from_checkpoint
from .conditioning import MelSpec, frames_for
from .data import file_mel
from .generate import MAX_SAMPLES, MAX_TOTAL_SAMPLES, StreamingGenerator, generate
from .model import WaveNet
from .vocoder_stream import StreamStats, check_max_seconds, vocode_stream
from .pretrained import ModelSource, open_model, sampling_temperature

__all__ = [
    "MAX_BATCH",
    "OUTPUT_SUFFIXES",
    "SynthesisResult",
    "check_output_path",
    "generate_to_files",
    "generate_to_stream",
    "load_mel",
    "numbered_path",
    "resolve_speaker",
    "vocode_file",
    "vocode_stream_file",
]

#: Largest batch of :func:`generate_to_files` (one file per sequence).
MAX_BATCH = 4096

#: ``progress(done, total)``: samples done so far per sequence, of ``total``.
ProgressFn = Callable[[int, int], None]


@dataclass
class SynthesisResult:
    """What :func:`generate_to_files` or :func:`vocode_file` wrote, and how fast.

    Attributes:
        paths: the files written, one per sequence (none for :func:`generate_to_stream`).
        codes: the generated codes ``(B, N)`` int64 (the model's encoding), on the CPU.
        sample_rate: of the files, in Hz.
        samples_per_second: generated samples (all sequences) per second of sampling.
        backend: the generation back-end that ran.
        weights: its weight mode (``fp32``, ``bf16``, ``int8``).
        seed: the seed (drawn when none was given), to reproduce the files.
        mel_frames: vocoding only: the log-mel frames the audio came from.
        first_audio_seconds: streaming only (:func:`generate_to_stream`): seconds from the start
            of sampling until the first samples were written.
        temperature: the sampling temperature used.
        notes: things the user should know that are not errors (an input resampled to the
            model's rate), one sentence each.
    """

    paths: list[Path]
    codes: torch.Tensor
    sample_rate: int
    samples_per_second: float
    backend: str
    weights: str
    seed: int
    mel_frames: int | None = None
    notes: list[str] = field(default_factory=list)
    temperature: float = 1.0
    first_audio_seconds: float | None = None

    @property
    def seconds(self) -> float:
        """Duration of each file in seconds."""
        return self.codes.shape[-1] / self.sample_rate

    @property
    def real_time_factor(self) -> float:
        """Seconds of sampling per second of audio of one sequence (``< 1``: faster than real time)."""
        return self.sample_rate * self.codes.shape[0] / max(self.samples_per_second, 1e-9)


def numbered_path(path: Path, i: int, n: int) -> Path:
    """``path`` itself for one file; ``name_000.wav``, ``name_001.wav``, ... for ``n > 1``."""
    return path if n == 1 else path.with_name(f"{path.stem}_{i:0{max(3, len(str(n - 1)))}d}{path.suffix}")


def resolve_speaker(model: WaveNet, value: str | int | None) -> int | None:
    """The speaker class index that ``value`` names for ``model``, or None for an unconditioned model.

    Args:
        model: the model (``model.config.speakers`` holds the names of its training corpus).
        value: a speaker name (``"p225"``), an index (``2`` or ``"2"``), or None.

    Raises:
        ValueError: a speaker for a model without speakers, none for one with speakers, or an
            unknown name / out-of-range index (the message lists the valid ones).
    """
    names = model.config.speakers
    n = model.config.global_cond_classes
    if model.speaker is None:
        if value is not None:
            raise ValueError(f"--speaker {value}: this model is not speaker-conditioned; leave --speaker out")
        return None
    valid = ", ".join(names) if names else f"0..{n - 1}"
    if value is None:
        raise ValueError(f"this model was trained on {n} speakers: pass --speaker with one of {valid}")
    text = str(value)
    if names and text in names:
        return names.index(text)
    if text.isascii() and text.isdigit() and int(text) < n:
        return int(text)
    raise ValueError(f"unknown speaker {text!r}; this model knows {n}: {valid}")


def _check_sampling_args(seed: object, temperature: object, progress: object) -> None:
    """The arguments :func:`generate` checks too, checked before a checkpoint is loaded."""
    if seed is not None:
        check_seed(seed)
    if temperature is not None:
        check_temperature(temperature)
    if progress is not None and not callable(progress):
        raise ValueError(f"progress must be a function progress(done, total) (or None), got {progress!r}")


def _same_file(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` name the same file: the same existing file (links included), or the
    same resolved path."""
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
        return a.resolve() == b.resolve()
    except (OSError, RuntimeError):  # a symlink loop
        return a.absolute() == b.absolute()


def _overwrites_input(output: str | os.PathLike, source: str | os.PathLike) -> str:
    """The message refusing an ``-o`` that is the input file."""
    return f"-o '{output}' is the input '{source}': writing it would overwrite the input; choose another -o path"


def _check_mel_path(path: str | os.PathLike) -> Path:
    """``--save-mel`` as a :class:`Path` after checking it can be written: a ``.npy`` name that is
    not a folder, in a folder that can be created and written (as :func:`check_output_path`).

    Raises:
        ValueError: naming ``--save-mel``, what is wrong and what to give instead.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"--save-mel '{path}' is a directory: give a file name such as {path / 'mel.npy'}")
    if path.suffix.lower() != ".npy":
        raise ValueError(f"--save-mel '{path}' must end in .npy (the log-mel is written as a numpy array)")
    check_writable_folder(path, "the folder of --save-mel", "--save-mel")
    return path


def _command_target(src: ModelSource) -> str:
    """How to name ``src`` on a command line: ``--model NAME`` or the checkpoint as given."""
    return f"--model {src.pretrained.name}" if src.pretrained is not None else src.label


def _what(src: ModelSource) -> str:
    return src.label if src.pretrained is not None else f"'{src.label}'"


def _read_at_rate(
    path: str | os.PathLike, sample_rate: int, notes: list[str], what: str, last: int | None = None,
) -> torch.Tensor:
    """``path`` as a mono waveform ``(T,)`` at ``sample_rate``; a resampling is added to ``notes``.
    A truncated file (shorter than its header says) is refused: it would be used in part.

    ``last``: only the last ``last`` samples (at ``sample_rate``) are wanted, as of a prompt, whose
    last receptive field alone primes the model. A longer file is then read from a little before
    them (hours of audio were read, resampled and encoded whole): a second before, at a frame
    where the resampling's phase is the whole file's, so the samples wanted come out as a
    resampling of the whole file gives them (up to float rounding). The result may be longer
    than ``last``.
    """
    start = 0
    if last is not None:
        try:
            info = audio_info(path)
        except AudioReadError:
            info = None  # read_audio says what is wrong with it
        if info is not None and info.samplerate > 0 and info.frames > 0:
            rate = info.samplerate
            need = -(-last * rate // sample_rate)
            if rate != sample_rate:
                need += rate  # the resampling filter settles well within a second
            period = rate // math.gcd(rate, sample_rate)  # input frames of a whole number of output samples
            start = max(0, (info.frames - need) // period * period)
    try:
        wav, rate = read_audio(path, start=start, truncated="error")
    except AudioReadError:
        if not start:
            raise
        wav, rate = read_audio(path, truncated="error")  # a length in the header that is off: read it all
    if rate != sample_rate:
        try:
            wav = resample(wav, rate, sample_rate)
        except ValueError as exc:  # a rate it cannot take: named with the file, as read_audio does
            raise AudioReadError(f"audio file '{path}': {exc}") from None
        notes.append(f"{what} '{path}' is at {rate} Hz; resampled to the model's {sample_rate} Hz")
    return wav


def _check_header_seconds(path: str | os.PathLike, max_seconds: float | None, spec: MelSpec) -> None:
    """Refuse an audio input whose header says it is longer than ``max_seconds``, before it is read:
    a recording of hours was read whole, resampled and analysed (gigabytes, and minutes) only to be
    refused after. The length is counted as after reading (whole mel frames of the input at the
    vocoder's rate); a header that cannot be read is left to :func:`read_audio` to report.

    Raises:
        ValueError: naming the file, its length and the option.
    """
    if max_seconds is None:
        return
    try:
        info = audio_info(path)
    except AudioReadError:
        return
    if info.samplerate <= 0 or info.frames <= 0:
        return
    sr = spec.sample_rate
    _check_frames_seconds(path, frames_for(-(-info.frames * sr // info.samplerate), spec.hop_length), max_seconds, spec)


def _check_frames_seconds(path: str | os.PathLike, frames: int, max_seconds: float | None, spec: MelSpec) -> None:
    """Refuse an input of ``frames`` mel frames longer than ``max_seconds`` (None: no limit).

    Raises:
        ValueError: naming the file, its length and the option.
    """
    seconds = frames * spec.hop_length / spec.sample_rate
    if max_seconds is not None and seconds > max_seconds:
        raise ValueError(
            f"'{path}' is {seconds:.1f} s ({frames} mel frames); the limit is --max-seconds {max_seconds:g}: "
            "raise it or cut the input"
        )


def _check_length_args(seconds: object, batch: object) -> None:
    """``--seconds`` and ``--batch``, checked before a checkpoint is loaded."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not (0 < seconds < math.inf):
        raise ValueError(f"--seconds must be a positive finite number, got {seconds!r}")
    if isinstance(batch, bool) or not isinstance(batch, int) or not 1 <= batch <= MAX_BATCH:
        raise ValueError(f"--batch must be in [1, {MAX_BATCH}], got {batch}")


@dataclass
class _SamplingJob:
    """What :func:`_open_sampling` read and checked: the model, its rate, the samples per sequence,
    the temperature, the speaker id, the prompt's codes and the notes for the user."""

    model: WaveNet
    sample_rate: int
    n: int
    temperature: float
    speaker: int | None
    prompt: torch.Tensor | None
    notes: list[str]


def _open_sampling(
    checkpoint: str | os.PathLike, seconds: float, batch: int, temperature: float | None,
    prompt: str | os.PathLike | None, speaker: str | int | None, device: torch.device, use_ema: bool,
    output: str | os.PathLike,
) -> _SamplingJob:
    """Load the model to sample and check what depends on it: the length at its rate, that it is
    not a vocoder, the speaker, the prompt (read and encoded at its rate). ``output`` is named in
    the advice for a vocoder."""
    src = open_model(checkpoint)
    ckpt, sr = src.checkpoint, src.sample_rate
    temperature = sampling_temperature(src, temperature)
    n = int(round(seconds * sr))
    if n < 1:
        raise ValueError(f"--seconds {seconds} is less than one sample at {sr} Hz: give at least {1 / sr:g}")
    if n > MAX_SAMPLES:
        raise ValueError(f"--seconds {seconds} is {n:,} samples at {sr} Hz; the limit is {MAX_SAMPLES:,}")
    if n * batch > MAX_TOTAL_SAMPLES:
        raise ValueError(
            f"--seconds {seconds} x --batch {batch} is {n * batch:,} samples; the limit per run is "
            f"{MAX_TOTAL_SAMPLES:,}: lower one of them"
        )
    model = model_from_checkpoint(ckpt, use_ema=use_ema, device=device)
    if model.upsampler is not None:
        raise ValueError(
            f"{_what(src)} is a vocoder (conditioned on log-mel frames): re-synthesise audio with "
            f"wavedil vocode {_command_target(src)} in.wav -o {output}"
        )
    speaker_id = resolve_speaker(model, speaker)
    prompt_codes, notes = None, temperature_notes(temperature)
    if prompt is not None:
        wav = _read_at_rate(prompt, sr, notes, "the prompt", last=model.receptive_field)
        prompt_codes = encode(wav, model.encoding, model.quantization_channels)
    return _SamplingJob(model, sr, n, temperature, speaker_id, prompt_codes, notes)


def generate_to_files(
    checkpoint: str | os.PathLike,
    output: str | os.PathLike,
    seconds: float = 2.0,
    *,
    batch: int = 1,
    temperature: float | None = None,
    seed: int | None = None,
    prompt: str | os.PathLike | None = None,
    speaker: str | int | None = None,
    backend: str = "auto",
    weights: str = "fp32",
    device: str | torch.device | None = None,
    use_ema: bool = True,
    progress: ProgressFn | None = None,
) -> SynthesisResult:
    """Sample ``batch`` sequences of ``seconds`` from a checkpoint and write one audio file each.

    Everything a user can get wrong (the output path and every numbered file of the batch, lengths,
    device, speaker, a vocoder checkpoint, an output that is the prompt) is
    checked before sampling starts.

    Args:
        checkpoint: a ``step_*.pt`` file, a run folder (its newest good checkpoint) or
            ``pretrained:NAME`` (a bundled model, :mod:`wavedil.pretrained`).
        output: the file to write (``.wav``, ``.flac``, ``.ogg``); ``batch > 1`` writes
            ``name_000.wav``, ``name_001.wav``, ...
        seconds: length of each sequence; ``seconds * sample_rate <= MAX_SAMPLES``.
        batch: sequences ``B`` (``1 .. 4096``; ``B * samples <= MAX_TOTAL_SAMPLES``).
        temperature: ``> 0`` divides the logits; ``0`` is greedy; None: the bundled model's
            card value (:func:`wavedil.pretrained.sampling_temperature`), 1.0 for a checkpoint.
        seed: makes the files reproducible; None draws one (returned).
        prompt: an audio file whose codes prime the model; the files continue it (the prompt
            itself is not written). At another rate it is resampled, with a note.
        speaker: a speaker name or index, for speaker-conditioned models (:func:`resolve_speaker`).
        backend: ``auto``, ``torch`` or ``fast`` (:func:`wavedil.generate`).
        weights: weight mode of the back-end: ``fp32``, ``bf16`` or ``int8``.
        device: ``cpu``, ``cuda`` or ``cuda:N``; default cuda when available; anything else is refused with the choices.
        use_ema: the EMA of the weights (when the checkpoint has one) rather than the raw ones.
        progress: called as ``progress(done, total)`` with samples done per sequence.

    Returns:
        A :class:`SynthesisResult`; ``codes (B, seconds * sample_rate)``.

    Raises:
        ValueError: a bad argument (named with its value), an unusable checkpoint
            (:class:`~wavedil.checkpoint.CheckpointError`), a vocoder checkpoint (use
            :func:`vocode_file`), or an unreadable prompt.
    """
    _check_length_args(seconds, batch)
    if batch > 1 and str(output) != "-" and Path(output).is_dir():
        # the files are name_000.wav, ...: the name itself may be a folder (each file is checked below)
        out = check_output_path(numbered_path(Path(output), 0, batch)).with_name(Path(output).name)
    else:
        out = check_output_path(output)
    _check_sampling_args(seed, temperature, progress)
    dev = _device(device)
    outs = [numbered_path(out, i, batch) for i in range(batch)]  # same folder and suffix as out: checked above
    for i, path in enumerate(outs):
        if path.is_dir():
            raise ValueError(
                f"output path '{path}' (file {i + 1} of --batch {batch}) is a directory: move it away or choose "
                "another -o path"
            )
        if prompt is not None and _same_file(path, Path(prompt)):
            raise ValueError(
                f"output path '{path}' is the --prompt '{prompt}': writing it would overwrite the prompt; "
                "choose another -o path"
            )
    job = _open_sampling(checkpoint, seconds, batch, temperature, prompt, speaker, dev, use_ema, output)
    model, sr, n = job.model, job.sample_rate, job.n
    check_format_rate(out, sr)  # before sampling
    res = generate(
        model, n, batch_size=batch, temperature=job.temperature, seed=seed, prompt=job.prompt, speaker=job.speaker,
        backend=backend, weights=weights, progress=None if progress is None else (lambda done: progress(done, n)),
    )  # fmt: skip
    codes = res.codes.cpu()
    paths = [
        write_audio(outs[i], decode(codes[i], model.encoding, model.quantization_channels), sr)
        for i in range(batch)
    ]
    return SynthesisResult(
        paths, codes, sr, res.samples_per_second, res.backend, res.weights, res.seed, notes=job.notes,
        temperature=job.temperature,
    )


#: Audio per piece of :func:`generate_to_stream`, in seconds (each piece is written as it is drawn).
STREAM_CHUNK_SECONDS = 0.1


def generate_to_stream(
    checkpoint: str | os.PathLike,
    sink: BinaryIO,
    seconds: float = 2.0,
    *,
    temperature: float | None = None,
    seed: int | None = None,
    prompt: str | os.PathLike | None = None,
    speaker: str | int | None = None,
    backend: str = "auto",
    weights: str = "fp32",
    device: str | torch.device | None = None,
    use_ema: bool = True,
    progress: ProgressFn | None = None,
    chunk_seconds: float = STREAM_CHUNK_SECONDS,
) -> SynthesisResult:
    """Sample one sequence of ``seconds`` and write it to ``sink`` as raw 16-bit PCM while it is drawn.

    What ``wavedil generate ... -o -`` runs: each piece of ``chunk_seconds`` is written and
    flushed as soon as it is drawn (:class:`wavedil.generate.StreamingGenerator`), so a player
    reading the pipe starts at once (``| aplay -t raw -f S16_LE -c 1 -r RATE``). The bytes are
    the samples of the file :func:`generate_to_files` writes with the same arguments and seed
    (mono, little-endian, at the model's rate, no header).

    Args:
        checkpoint, seconds, temperature, seed, prompt, speaker, backend, weights, device,
            use_ema, progress: as :func:`generate_to_files` (one sequence).
        sink: a binary stream, e.g. ``sys.stdout.buffer``.
        chunk_seconds: audio per piece (``> 0``; at least one sample).

    Returns:
        A :class:`SynthesisResult` without paths; ``codes (1, N)``; its
        :attr:`~SynthesisResult.first_audio_seconds` is the wait for the first piece.

    Raises:
        ValueError: as :func:`generate_to_files`, or a bad ``chunk_seconds``. A reader that goes
            away raises :class:`BrokenPipeError` from the write.
    """
    _check_length_args(seconds, 1)
    _check_sampling_args(seed, temperature, progress)
    if isinstance(chunk_seconds, bool) or not isinstance(chunk_seconds, (int, float)) or not 0 < chunk_seconds < math.inf:
        raise ValueError(f"chunk_seconds must be a positive number of seconds, got {chunk_seconds!r}")
    job = _open_sampling(checkpoint, seconds, 1, temperature, prompt, speaker, _device(device), use_ema, "out.wav")  # advice
    model, sr, n = job.model, job.sample_rate, job.n
    stream = StreamingGenerator(model, temperature=job.temperature, seed=seed, prompt=job.prompt,
                                speaker=job.speaker, backend=backend, weights=weights)  # fmt: skip
    stream.prepare()  # kernels loaded before the clock starts, as generate() does
    piece = max(1, int(round(chunk_seconds * sr)))
    pieces: list[torch.Tensor] = []
    first = None
    start = time.perf_counter()
    while stream.samples_out < n:
        codes = stream.draw(min(piece, n - stream.samples_out)).cpu()
        sink.write(pcm16_bytes(stream.decode(codes[0]), sr))
        sink.flush()
        if first is None:
            first = time.perf_counter() - start
        pieces.append(codes)
        if progress is not None:
            progress(stream.samples_out, n)
    seconds_taken = time.perf_counter() - start
    return SynthesisResult(
        [], torch.cat(pieces, dim=1), sr, n / max(seconds_taken, 1e-9), stream.backend, stream.weights, stream.seed,
        notes=job.notes, temperature=job.temperature, first_audio_seconds=first,
    )  # fmt: skip


#: What reading a damaged ``.npy`` / ``.npz`` raises (a damaged zip member, short data, a size
#: declared beyond the memory).
_NPY_ERRORS = (OSError, ValueError, EOFError, MemoryError, zipfile.BadZipFile, zlib.error)


def _check_mel_file(path: str | os.PathLike) -> None:
    """Refuse, before numpy reads it, what ``np.load`` would hang on, crash on or misdescribe: a
    path that is not a regular file (a FIFO would block), an empty file, a file that is neither
    ``.npy`` nor ``.npz`` (numpy would suggest unpickling it), and a ``.npy`` whose header declares
    more data than the file holds (truncated, or a corrupt header asking for terabytes).

    Raises:
        ValueError: naming the file and what is wrong with it.
    """
    if not os.path.exists(path):
        raise ValueError(f"cannot read the mel file '{path}': it does not exist")
    if not os.path.isfile(path):
        raise ValueError(f"the mel file '{path}' is not a regular file: give a .npy or .npz file")
    size = os.path.getsize(path)
    if size == 0:
        raise ValueError(f"the mel file '{path}' is empty (0 bytes): its writing never finished; save it again")
    with open(path, "rb") as fh:
        magic = fh.read(6)
        if magic[:2] == b"PK":  # a zip: .npz (its members are checked as they are read)
            return
        if magic != b"\x93NUMPY":
            raise ValueError(
                f"the mel file '{path}' is neither a .npy nor a .npz file (numpy.save / numpy.savez write them)"
            )
        fh.seek(0)
        try:
            version = np.lib.format.read_magic(fh)
            shape, _, dtype = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)(fh)  # fmt: skip
        except (ValueError, EOFError, SyntaxError) as exc:
            raise ValueError(f"cannot read the mel file '{path}': its .npy header is damaged ({exc})") from None
        if dtype.hasobject:
            return  # refused with its own message by np.load(allow_pickle=False)
        need = math.prod(shape) * dtype.itemsize
        have = size - fh.tell()
        if need > have:
            raise ValueError(
                f"the mel file '{path}' is truncated or damaged: its header declares a {dtype} array {tuple(shape)} "
                f"({need:,} bytes) but it holds {have:,} bytes of data; save it again"
            )


def load_mel(path: str | os.PathLike, spec: MelSpec) -> torch.Tensor:
    """A saved log-mel for a vocoder with features ``spec``: float32 ``(n_mels, M)``.

    ``path`` is a ``.npy`` array ``(n_mels, M)``, or a ``.npz`` with an array ``mel`` and
    optionally ``hop_length`` / ``sample_rate`` / ``n_mels``, which are checked against ``spec``.

    Raises:
        ValueError: the file cannot be read, lacks ``mel``, was made with other parameters, is
            not a finite float array ``(spec.n_mels, M >= 1)`` (the message gives its shape).
    """
    if not isinstance(spec, MelSpec):
        raise ValueError(
            f"spec must be the vocoder's MelSpec (model.mel_spec, or MelSpec.from_dict(d)), got {type(spec).__name__}"
        )

    def unreadable(exc: Exception) -> ValueError:
        """np.load's refusal (of the file, or of one array of a ``.npz``) in the caller's terms."""
        if "Object arrays" in str(exc):  # an object array (not "pickled data": a file that is not .npy)
            return ValueError(
                f"'{path}' holds Python objects, not numbers: save the log-mel as a float array (numpy.save)"
            )
        return ValueError(f"cannot read the mel file '{path}': {exc}")

    _check_mel_file(path)
    try:
        data = np.load(path, allow_pickle=False)
    except _NPY_ERRORS as exc:
        raise unreadable(exc) from None
    if isinstance(data, np.lib.npyio.NpzFile):
        with data:
            if "mel" not in data.files:
                raise ValueError(f"'{path}' has no array named 'mel' (it has {data.files})")
            try:
                stored = {key: data[key] for key in ("mel", "hop_length", "sample_rate", "n_mels") if key in data.files}
            except _NPY_ERRORS as exc:  # an object array (np.load refuses to unpickle it), a damaged member
                raise unreadable(exc) from None
        for key in ("hop_length", "sample_rate", "n_mels"):
            if key not in stored:
                continue
            value = stored[key]
            if value.ndim != 0 or not np.issubdtype(value.dtype, np.integer):
                raise ValueError(
                    f"'{path}': its {key} must be one integer (this vocoder's is {getattr(spec, key)}), "
                    f"got {value.dtype} {value.shape}"
                )
            if int(value) != getattr(spec, key):
                raise ValueError(
                    f"'{path}' was made with {key}={int(value)} but this vocoder expects {key}={getattr(spec, key)}"
                )
        mel = stored["mel"]
    else:
        mel = data
    if mel.ndim != 2 or mel.shape[0] != spec.n_mels or mel.shape[1] < 1 or not np.issubdtype(mel.dtype, np.floating):
        raise ValueError(
            f"'{path}' must hold a float log-mel array ({spec.n_mels}, frames) for this vocoder "
            f"({spec.n_mels} mel bands, hop {spec.hop_length} at {spec.sample_rate} Hz), got {mel.dtype} {mel.shape}"
        )
    if not np.isfinite(mel).all():
        raise ValueError(f"'{path}' holds NaN or infinite values")
    return torch.from_numpy(np.ascontiguousarray(mel, dtype=np.float32))


def _open_vocoder(
    checkpoint: str | os.PathLike, device: str | torch.device | None, use_ema: bool
) -> tuple[WaveNet, ModelSource]:
    """The vocoder of ``checkpoint`` (file, run folder or ``pretrained:NAME``) on ``device`` and
    where it came from; a clear error for a bad ``device`` or a model without mel conditioning."""
    dev = _device(device)  # before the checkpoint is read
    src = open_model(checkpoint)
    model = model_from_checkpoint(src.checkpoint, use_ema=use_ema, device=dev)
    if model.upsampler is None:
        raise ValueError(
            f"{_what(src)} is not a vocoder (it has no mel conditioning): sample it with wavedil generate"
            + (f" {_command_target(src)}" if src.pretrained is not None else "")
            + ", or train one with experiment=vocoder_speech8k"
        )
    return model, src


def vocode_stream_file(
    checkpoint: str | os.PathLike,
    source: str | os.PathLike,
    output: str | os.PathLike,
    *,
    temperature: float | None = None,
    seed: int | None = None,
    speaker: str | int | None = None,
    backend: str = "auto",
    weights: str = "fp32",
    device: str | torch.device | None = None,
    use_ema: bool = True,
    note: Callable[[str], None] | None = None,
    save_mel: str | os.PathLike | None = None,
    max_seconds: float | None = None,
) -> StreamStats:
    """Vocode a stream of ``.npy`` log-mel chunks as it arrives (:func:`wavedil.vocoder_stream.vocode_stream`).

    Args:
        checkpoint: the vocoder's ``step_*.pt`` file, run folder or ``pretrained:NAME``.
        source: ``"-"`` for standard input, or a file of concatenated ``(n_mels, F)`` ``.npy`` arrays.
        output: ``"-"`` for 16-bit PCM on standard output after every chunk, or an audio file
            written when the stream ends (never the ``source`` itself).
        temperature, seed, speaker, backend, weights, device, use_ema: as :func:`vocode_file`.
        note: called once with a line saying what the stream expects and its look-ahead, before
            the first chunk is read (the CLI prints it on standard error).
        save_mel: must be None: the stream already is log-mel frames (``--save-mel`` is refused
            rather than ignored).
        max_seconds: stop with an error once the stream passes this many seconds; None: no limit.

    Raises:
        ValueError: a bad argument, output path or source (before the checkpoint is read), not a
            vocoder, a bad chunk (:func:`wavedil.vocoder_stream.iter_npy_chunks`: not ``(n_mels, F)``
            float ``.npy``, truncated, NaN or infinite), no frames, a stream longer than ``max_seconds``.
    """
    if save_mel is not None:
        raise ValueError(
            "--save-mel does not apply to --stream: the stream already is log-mel frames (keep a copy of it, "
            "e.g. with tee, or vocode an audio file without --stream to save its log-mel)"
        )
    check_max_seconds(max_seconds)
    from_stdin = str(source) == "-"
    if str(output) != "-":
        out = check_output_path(output)
        if not from_stdin and _same_file(out, Path(source)):
            raise ValueError(_overwrites_input(output, source))
    if not from_stdin and not os.path.exists(source):
        raise ValueError(
            f"the stream input '{source}' does not exist: give a file of .npy chunks, or - for standard input"
        )
    if not from_stdin and os.path.isdir(source):
        raise ValueError(
            f"the stream input '{source}' is a folder: give a file of .npy chunks, or - for standard input"
        )
    model, src = _open_vocoder(checkpoint, device, use_ema)
    temperature = sampling_temperature(src, temperature)
    speaker_id = resolve_speaker(model, speaker)
    spec = model.mel_spec
    if note is not None:
        for line in temperature_notes(temperature):
            note(line)
        where = "standard input" if from_stdin else str(source)
        note(f"streaming: reading .npy chunks ({spec.n_mels}, frames) from {where}; look-ahead "
             f"{model.mel_context} frames ({1000 * model.mel_context * spec.hop_length / spec.sample_rate:g} ms)")  # fmt: skip
    try:
        stream = sys.stdin.buffer if from_stdin else open(source, "rb")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise ValueError(f"cannot read the stream input '{source}': {exc.strerror or exc}") from None
    try:
        return vocode_stream(model, stream, output, temperature=temperature, seed=seed, speaker=speaker_id,
                             backend=backend, weights=weights, max_seconds=max_seconds)  # fmt: skip
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()


def vocode_file(
    checkpoint: str | os.PathLike,
    source: str | os.PathLike,
    output: str | os.PathLike,
    *,
    temperature: float | None = None,
    seed: int | None = None,
    speaker: str | int | None = None,
    save_mel: str | os.PathLike | None = None,
    max_seconds: float | None = 600.0,
    backend: str = "auto",
    weights: str = "fp32",
    device: str | torch.device | None = None,
    use_ema: bool = True,
    progress: ProgressFn | None = None,
) -> SynthesisResult:
    """Re-synthesise audio with a vocoder (a mel-conditioned checkpoint) and write it to ``output``.

    The paths are checked before any work: ``output`` and ``save_mel`` must be writable, differ
    from each other and from ``source`` (an input is never overwritten). ``save_mel`` is written
    only once the audio is.

    Args:
        checkpoint: the vocoder's ``step_*.pt`` file or run folder, or ``pretrained:NAME``.
        source: an audio file (analysed to log-mel with :func:`wavedil.data.file_mel`; the output
            has its length; at another rate it is resampled, with a note), or a saved log-mel
            ``.npy`` / ``.npz`` (:func:`load_mel`; the output has ``M * hop`` samples).
        output: the file to write (``.wav``, ``.flac``, ``.ogg``).
        temperature, seed, speaker, backend, weights, device, use_ema, progress: as for
            :func:`generate_to_files`.
        save_mel: also write the log-mel ``(n_mels, M)`` the audio came from (the analysis of an
            audio input, or the frames read from a mel file) to this ``.npy``.
        max_seconds: refuse longer inputs (``> 0``; None: no limit, as for the stream).

    Returns:
        A :class:`SynthesisResult` with one path, ``codes (1, N)`` and ``mel_frames = M``.

    Raises:
        ValueError: not a vocoder checkpoint, an unreadable or empty input, a mel file that does
            not fit the vocoder, an input longer than ``max_seconds``, an output or ``save_mel``
            path that cannot be written or is the input (or each other), or a bad argument.
    """
    if str(source) == "-":
        raise ValueError(
            "the input '-' (standard input) is read with --stream only, as .npy log-mel chunks: add --stream, "
            "or give an audio file or a log-mel .npy"
        )
    out = check_output_path(output)
    source = Path(source)
    if _same_file(out, source):
        raise ValueError(_overwrites_input(output, source))
    mel_out = None
    if save_mel is not None and not str(save_mel).strip():
        raise ValueError(f"--save-mel is an empty string ({str(save_mel)!r}): give a .npy file name, or leave it out")
    if save_mel is not None:
        mel_out = Path(save_mel)
        for other, what in ((source, "the input"), (out, "the -o output")):
            if _same_file(mel_out, other):
                raise ValueError(
                    f"--save-mel '{save_mel}' is {what} '{other}': give the log-mel its own .npy name, such as "
                    f"{out.with_name(out.stem + '_mel.npy')}"
                )
        mel_out = _check_mel_path(mel_out)
    check_max_seconds(max_seconds)
    _check_sampling_args(seed, temperature, progress)
    model, src = _open_vocoder(checkpoint, device, use_ema)
    temperature = sampling_temperature(src, temperature)
    speaker_id = resolve_speaker(model, speaker)
    dev = model.embed.weight.device
    spec, ctx = model.mel_spec, model.mel_context
    sr, hop = spec.sample_rate, spec.hop_length
    check_format_rate(output, sr)
    n_samples, notes = None, temperature_notes(temperature)
    if source.suffix.lower() in (".npy", ".npz"):
        mel = load_mel(source, spec)
        silence = float(np.log(1e-5))  # the log-mel of silence pads the context frames
        mel = torch.nn.functional.pad(mel, (ctx, ctx), value=silence)
    else:
        _check_header_seconds(source, max_seconds, spec)
        wav = _read_at_rate(source, sr, notes, "the input")
        if wav.numel() == 0:
            raise ValueError(f"'{source}' holds no audio")
        mel = file_mel(wav, spec, ctx)
        n_samples = wav.shape[-1]
    frames = mel.shape[-1] - 2 * ctx
    _check_frames_seconds(source, frames, max_seconds, spec)
    total = frames * hop  # what is generated: whole frames (an audio input's last partial one is cut after)
    res = generate(
        model, None, temperature=temperature, seed=seed, speaker=speaker_id, mel=mel.to(dev),
        backend=backend, weights=weights, progress=None if progress is None else (lambda done: progress(done, total)),
    )  # fmt: skip
    codes = res.codes[:, :n_samples].cpu() if n_samples else res.codes.cpu()
    path = write_audio(out, decode(codes[0], model.encoding, model.quantization_channels), sr)
    if mel_out is not None:  # only now: a refused or failed run leaves no half of its outputs
        from ._io import atomic_open

        with atomic_open(mel_out) as f:
            np.save(f, mel[:, ctx : mel.shape[-1] - ctx].cpu().numpy())
    return SynthesisResult(
        [path], codes, sr, res.samples_per_second, res.backend, res.weights, res.seed, mel_frames=frames, notes=notes,
        temperature=temperature,
    )
