"""Streaming vocoding: log-mel frames in, a few at a time, audio samples out as soon as they are determined.

A text-to-speech front end makes mel frames incrementally; :class:`StreamingVocoder` takes them
chunk by chunk and returns the samples each chunk determines. Frame ``m`` conditions samples
``m * hop .. (m + 1) * hop - 1`` through the learned upsampler, whose output at a frame depends
on ``c = model.mel_context`` frames on each side, so the samples of frame ``m`` can be drawn once
frame ``m + c`` has arrived: the stream lags its input by :attr:`StreamingVocoder.latency_frames`
``= c`` frames (``c * hop / sample_rate`` seconds), plus one sample, whose draw waits for the
next chunk. The stream starts and ends with ``c`` frames of the log-mel of silence, as
:func:`wavedil.synthesis.vocode_file` pads a saved mel.

Chunking does not change the result: the concatenated output equals ``generate(model, None,
mel=padded)`` for the same seed (same uniforms, one per sample, in order; the same back-end
arithmetic, continued across chunks through :attr:`SamplingRequest.continuation`), to the float
rounding of the upsampler's convolutions over windows of different lengths.

>>> voc = StreamingVocoder(model, seed=1)              # doctest: +SKIP
>>> for frames in tts_frames():                        # (n_mels, F) log-mel, F >= 1  # doctest: +SKIP
...     play(voc.decode(voc.push(frames)))             # float samples in [-1, 1]
>>> play(voc.decode(voc.finish()))                     # doctest: +SKIP
"""

from __future__ import annotations

import ast
import math
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from .audio import check_output_path, pcm16_bytes, write_audio
from .backends import SamplingRequest, batch_choices
from .generate import SampleStream
from .model import UpsampledColumns, WaveNet

__all__ = ["MAX_CHUNK_FRAMES", "StreamingVocoder", "SILENCE_LOG_MEL", "StreamStats", "iter_npy_chunks", "vocode_stream"]

#: The log-mel value of silence (``log(1e-5)``, the floor of :func:`wavedil.conditioning.log_mel`):
#: what the stream's ``c`` context frames before the first and after the last frame hold.
SILENCE_LOG_MEL = math.log(1e-5)


class StreamingVocoder(SampleStream):
    """Vocode log-mel frames as they arrive (mel-conditioned models only).

    Args:
        model: a vocoder (:class:`WaveNet` with mel conditioning), float32 for the ``fast`` back-end.
        batch_size: ``B`` streams vocoded together (each :meth:`push` gives frames for all).
        temperature: ``> 0`` divides the logits; ``0`` is greedy.
        seed: the uniforms' seed (None draws one: :attr:`seed`); the same seed gives the samples
            of ``generate(..., seed=seed)`` over the whole mel.
        speaker: class id(s) for a speaker-conditioned vocoder.
        backend: ``auto``, ``torch`` or ``fast`` (as :func:`wavedil.generate`; a back-end must
            support continued streams: the CPU ``fast`` kernels and ``torch`` do).
        weights: the weight mode (:data:`wavedil.backends.WEIGHT_MODES`).

    Raises:
        ValueError: a model without mel conditioning, a bad argument, or a back-end that cannot
            run the model in mode ``weights``.
    """

    def __init__(
        self,
        model: WaveNet,
        batch_size: int = 1,
        temperature: float = 1.0,
        seed: int | None = None,
        speaker: torch.Tensor | int | None = None,
        backend: str = "auto",
        weights: str = "fp32",
    ) -> None:
        if isinstance(model, WaveNet) and model.upsampler is None:
            raise ValueError("StreamingVocoder needs a vocoder (a model with mel conditioning); this model has none")
        super().__init__(model, batch_size, temperature, seed, speaker, backend, weights, what="WaveNet vocoder")
        device = model.embed.weight.device
        spec = model.mel_spec
        self.n_mels, self.hop, self.sample_rate = spec.n_mels, spec.hop_length, spec.sample_rate
        self.latency_frames: int = model.mel_context
        self._frames = self._silence(self.latency_frames)  # raw frames not yet upsampled (+ their context)
        self._columns = torch.zeros(self.batch_size, self.n_mels, 0, device=device)  # upsampled, not yet used
        self._state = None
        self._params = None
        self.frames_in = 0  # frames pushed so far
        self._finished = False

    @property
    def latency_seconds(self) -> float:
        """The look-ahead the upsampler imposes: :attr:`latency_frames` frames, in seconds."""
        return self.latency_frames * self.hop / self.sample_rate

    def _silence(self, frames: int) -> torch.Tensor:
        device = self.model.embed.weight.device
        return torch.full((self.batch_size, self.n_mels, frames), SILENCE_LOG_MEL, device=device)

    def _check_frames(self, frames: torch.Tensor) -> torch.Tensor:
        if isinstance(frames, np.ndarray):
            raise ValueError(
                f"frames must be a torch.Tensor of log-mel frames, got a numpy array ({frames.dtype}, shape "
                f"{frames.shape}): pass torch.from_numpy(frames)"
            )
        if not isinstance(frames, torch.Tensor) or not frames.dtype.is_floating_point:
            got = frames.dtype if isinstance(frames, torch.Tensor) else type(frames).__name__
            raise ValueError(f"frames must be a float torch.Tensor of log-mel frames ({self.n_mels}, F), got {got}")
        if frames.dim() == 2:
            frames = frames.unsqueeze(0)
        if frames.dim() != 3 or frames.shape[0] not in (1, self.batch_size) or frames.shape[1] != self.n_mels:
            raise ValueError(
                f"frames must be ({self.n_mels}, F) or (B, {self.n_mels}, F) with B = {batch_choices(self.batch_size)} "
                f"(this vocoder has {self.n_mels} mel bands), got shape {tuple(frames.shape)}"
            )
        frames = frames.to(self._frames)  # float32: a float64 value beyond its range becomes inf here
        finite = torch.isfinite(frames).all(dim=0).all(dim=0)  # (F,): every band of every row finite
        if not bool(finite.all()):
            bad = int((~finite).nonzero()[0, 0])
            raise ValueError(
                f"frame {bad} of the {frames.shape[-1]} frames pushed (frame {self.frames_in + bad} of the stream) "
                f"holds NaN or infinite values: log-mel frames must be finite (silence is {SILENCE_LOG_MEL:.2f}); "
                "none of these frames was used"
            )
        return frames.expand(self.batch_size, -1, -1)

    def push(self, frames: torch.Tensor) -> torch.Tensor:
        """Add log-mel frames ``(n_mels, F)`` or ``(B, n_mels, F)``; return the codes they determine.

        Returns:
            ``(B, n)`` int64 codes, ``n >= 0`` (none until :attr:`latency_frames` frames are in).

        Raises:
            ValueError: a finished stream, frames of another shape or type, frames holding NaN
                or infinite values (the message names the first such frame), or a model cast or
                moved since the stream was made; the stream is left as it was, so a corrected push
                can follow.
        """
        if self._finished:
            raise ValueError("this stream is finished: start a new StreamingVocoder")
        self._check_model()
        frames = self._check_frames(frames)
        self.frames_in += frames.shape[-1]
        self._frames = torch.cat([self._frames, frames], dim=-1)
        return self._advance(final=False)

    def finish(self) -> torch.Tensor:
        """End the stream (``c`` frames of silence follow the last frame); return the remaining codes."""
        if self._finished:
            raise ValueError("this stream is already finished")
        if self.frames_in == 0:
            raise ValueError("no frames were pushed: push at least one log-mel frame before finish()")
        self._check_model()
        self._frames = torch.cat([self._frames, self._silence(self.latency_frames)], dim=-1)
        codes = self._advance(final=True)
        self._finished = True
        return codes

    @torch.no_grad()
    def _advance(self, final: bool) -> torch.Tensor:
        """Upsample the frames whose context has arrived and draw the samples they determine:
        ``(B, n)`` codes. The frames are upsampled a piece at a time (:class:`UpsampledColumns`,
        the pieces :meth:`WaveNet.upsample` makes), each piece's samples drawn before the next is
        made: a push of minutes of frames held its whole upsampled conditioning twice (160 bytes a
        sample at 40 bands; 2.25 GB for 600 s at 8 kHz in one chunk). The same samples: the same
        columns, and draws continued across pieces."""
        ready = self._frames.shape[-1] - 2 * self.latency_frames  # frames whose context has arrived
        if ready <= 0:
            return self._draw(final)
        columns = UpsampledColumns(self.model, self._frames)  # validated
        self._frames = self._frames[:, :, ready:]  # keep the context of the next frames
        codes = []
        for k in range(columns.pieces):
            self._columns = torch.cat([self._columns, columns.piece(k)], dim=-1)  # (B, n_mels, <= 1 + width)
            codes.append(self._draw(final and k == columns.pieces - 1))
        return codes[0] if len(codes) == 1 else torch.cat(codes, dim=1)

    def _draw(self, final: bool) -> torch.Tensor:
        """Draw the samples of the upsampled columns held: ``(B, n)`` codes."""
        model = self.model
        empty = torch.zeros(self.batch_size, 0, dtype=torch.long, device=self._columns.device)
        if self._state is None:  # the opening sample of silence, conditioned on column 0
            if self._columns.shape[-1] == 0:
                return empty
            opener = torch.full((self.batch_size, 1), model.silence_code, dtype=torch.long, device=self._columns.device)
            state = model.init_state(self.batch_size)
            params, self._state = model.step(opener, state, self.speaker, self._columns[:, :, :1])
            self._params = params[:, :, -1]
        # columns[0] belongs to the next sample's parameters; drawing n samples and going on needs
        # n + 1 columns, so one sample waits for the next chunk -- except at the very end
        n = self._columns.shape[-1] if final else self._columns.shape[-1] - 1
        if n <= 0:
            return empty
        uniforms = self._next_uniforms(n)
        request = SamplingRequest(
            model, self._state, self._params, uniforms, self.temperature, self.speaker, local=self._columns,
            weights=self.weights, continuation=not final,
        )  # fmt: skip
        codes = self._impl.sample(request)
        if not final:
            self._state, self._params = request.next_state, request.next_params
        self._columns = self._columns[:, :, n:]
        self.samples_out += n
        return codes


#: Most frames one chunk of :func:`iter_npy_chunks` may declare: a stream sends frames a few at a
#: time; a header claiming more is corrupt (or meant for ``vocode`` without ``--stream``), and
#: reading it could exhaust the memory. 100,000 frames are minutes of audio at any usual hop.
MAX_CHUNK_FRAMES = 100_000

#: Longest ``.npy`` header :func:`iter_npy_chunks` reads (numpy's own limit; a 2-D array needs ~128 bytes).
MAX_HEADER_BYTES = 10_000

_NPY_MAGIC = b"\x93NUMPY"


def check_max_seconds(max_seconds: float | None) -> None:
    """``ValueError`` unless ``max_seconds`` (``--max-seconds``) is None (no limit) or a positive number (not NaN)."""
    if max_seconds is not None and not max_seconds > 0:  # NaN too
        raise ValueError(f"--max-seconds must be a positive number, got {max_seconds}")


def _read_exact(stream: BinaryIO, n: int) -> bytes:
    """``n`` bytes of ``stream``, fewer only at its end (a pipe may hand over less per ``read``)."""
    parts, got = [], 0
    while got < n:
        part = stream.read(n - got)
        if isinstance(part, str):
            raise ValueError(
                "the stream of .npy chunks is open in text mode (it reads str): pass a binary stream, "
                "sys.stdin.buffer or open(path, 'rb')"
            )
        if not part:
            break
        parts.append(part)
        got += len(part)
    return b"".join(parts)


def iter_npy_chunks(stream: BinaryIO, n_mels: int) -> Iterator[torch.Tensor]:
    """Read concatenated ``.npy`` arrays from a binary stream (a pipe works: nothing seeks), each
    ``(n_mels, F)`` log-mel frames; yield them as float32 tensors until the stream ends.

    Each chunk is checked before its data is read: a ``.npy`` header (format 1.0, 2.0 or 3.0: a
    dict with ``descr``, ``fortran_order`` and ``shape``), a float dtype, a shape of two
    integers ``(n_mels, F)`` with ``0 <= F <= MAX_CHUNK_FRAMES``; then its data must arrive
    whole and be finite (also once converted to float32).

    Raises:
        ValueError: naming the chunk (numbered from 1, with its byte offset in the stream), what
            is wrong with it and what the stream must hold.
    """
    expected = (
        f"the stream must be .npy arrays of float log-mel frames ({n_mels}, frames), one after another "
        "(numpy.save each chunk to the same file or pipe)"
    )
    index, offset = 0, 0
    where = ""  # the chunk being read, for the messages

    def bad(what: str) -> ValueError:
        return ValueError(f"{where} {what}; {expected}")

    def read(n: int, part: str) -> bytes:
        data = _read_exact(stream, n)
        if len(data) != n:
            raise bad(f"is truncated: the stream ended after {len(data):,} of the {n:,} bytes of its {part}")
        return data

    while True:
        index += 1
        where = f"chunk {index} of the stream (at byte {offset:,})"
        head = _read_exact(stream, len(_NPY_MAGIC))
        if not head:
            return
        if head != _NPY_MAGIC:
            raise bad(f"is not a .npy array (it starts with {head!r}, not {_NPY_MAGIC!r})")
        major, minor = read(2, ".npy format version")
        if major not in (1, 2, 3):
            raise bad(f"has .npy format version {major}.{minor}, not 1.0, 2.0 or 3.0")
        size_bytes = 2 if major == 1 else 4
        header_len = int.from_bytes(read(size_bytes, ".npy header length"), "little")
        if header_len > MAX_HEADER_BYTES:
            raise bad(f"declares a {header_len:,}-byte .npy header; at most {MAX_HEADER_BYTES:,} are read")
        raw = read(header_len, ".npy header")
        offset += len(_NPY_MAGIC) + 2 + size_bytes + header_len
        try:
            header = ast.literal_eval(raw.decode("utf8" if major == 3 else "latin1"))  # a dict literal
        except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError):  # UnicodeDecodeError is a ValueError
            raise bad(f"has a broken .npy header (not a dict literal): {raw[:100]!r}") from None
        if not isinstance(header, dict):
            raise bad(f"has a .npy header that is not a dict: {raw[:100]!r}")
        missing = [key for key in ("descr", "fortran_order", "shape") if key not in header]
        if missing:
            raise bad(f"has a .npy header without {' or '.join(repr(k) for k in missing)}: {raw[:100]!r}")
        descr, shape, fortran = header["descr"], header["shape"], header["fortran_order"]
        try:
            dtype = np.dtype(descr) if isinstance(descr, str) else None
        except (TypeError, ValueError):
            dtype = None
        if dtype is None or dtype.kind != "f":
            raise bad(f"holds data of type {descr!r}, not float (such as '<f4' or '<f8')")
        if (
            not isinstance(shape, tuple)
            or len(shape) != 2
            or not all(isinstance(n, int) and not isinstance(n, bool) for n in shape)
            or shape[0] != n_mels
            or shape[1] < 0
        ):
            raise bad(
                f"has shape {shape!r}, not ({n_mels}, frames) with frames >= 0 (this vocoder has {n_mels} mel bands)"
            )
        if shape[1] > MAX_CHUNK_FRAMES:
            raise bad(f"declares {shape[1]:,} frames; a chunk holds at most {MAX_CHUNK_FRAMES:,}: send fewer per chunk")
        if not isinstance(fortran, bool):
            raise bad(f"has fortran_order {fortran!r} in its .npy header, not True or False")
        nbytes = shape[0] * shape[1] * dtype.itemsize
        data = read(nbytes, f"{shape[1]:,} frames")
        offset += nbytes
        raw_frames = np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C")
        with np.errstate(over="ignore"):  # a float64 value beyond float32 becomes inf: refused below
            frames = raw_frames.astype(np.float32)
        finite = np.isfinite(frames).all(axis=0)  # (F,)
        if not finite.all():
            first = int(np.argmin(finite))
            beyond = " (beyond float32's range)" if np.isfinite(raw_frames[:, first]).all() else ""
            raise bad(
                f"holds NaN or infinite values{beyond}, first in its frame {first}: log-mel frames must be finite"
            )
        yield torch.from_numpy(frames)


@dataclass
class StreamStats:
    """What :func:`vocode_stream` did: frames in, samples out, the look-ahead and the speed."""

    frames: int
    samples: int
    sample_rate: int
    latency_frames: int
    latency_ms: float
    seconds: float
    backend: str
    weights: str
    seed: int

    @property
    def real_time_factor(self) -> float:
        """Seconds of work per second of audio (< 1: faster than real time)."""
        return self.seconds / max(self.samples / self.sample_rate, 1e-9)


def vocode_stream(
    model: WaveNet,
    source: BinaryIO,
    output: str | os.PathLike,
    *,
    temperature: float = 1.0,
    seed: int | None = None,
    speaker: int | None = None,
    backend: str = "auto",
    weights: str = "fp32",
    max_seconds: float | None = None,
) -> StreamStats:
    """Vocode a stream of ``.npy`` log-mel chunks (:func:`iter_npy_chunks`) as it arrives.

    Args:
        model: the vocoder.
        source: a binary stream (e.g. ``sys.stdin.buffer``) of concatenated ``(n_mels, F)`` arrays.
        output: ``"-"`` writes raw 16-bit little-endian mono PCM to standard output after every
            chunk (flushed: a player can start at once); a path writes a ``.wav`` (or any format
            :func:`wavedil.audio.write_audio` knows) atomically when the stream ends.
        temperature, seed, speaker, backend, weights: as :class:`StreamingVocoder`.
        max_seconds: refuse a stream longer than this (the chunk that passes it stops the stream
            before it is vocoded; a file output is then not written); None: no limit.

    Raises:
        ValueError: a bad argument or output path (before any chunk is read), a bad chunk
            (:func:`iter_npy_chunks`), a stream without frames or longer than ``max_seconds``.
    """
    check_max_seconds(max_seconds)
    if str(output) != "-":
        output = check_output_path(output)  # before any work
    voc = StreamingVocoder(model, temperature=temperature, seed=seed, speaker=speaker, backend=backend,
                           weights=weights)  # fmt: skip
    to_stdout = str(output) == "-"
    pieces: list[torch.Tensor] = []
    start = time.perf_counter()

    def emit(codes: torch.Tensor) -> None:
        if codes.shape[1] == 0:
            return
        wav = voc.decode(codes[0].cpu())
        if to_stdout:  # the samples of the .wav file that the same stream would write
            sys.stdout.buffer.write(pcm16_bytes(wav, voc.sample_rate))
            sys.stdout.buffer.flush()
        else:
            pieces.append(wav)

    chunks = 0
    for chunks, chunk in enumerate(iter_npy_chunks(source, voc.n_mels), start=1):
        frames = voc.frames_in + chunk.shape[1]
        if max_seconds is not None and frames * voc.hop / voc.sample_rate > max_seconds:
            raise ValueError(
                f"the stream is longer than --max-seconds {max_seconds:g}: chunk {chunks} brings it to {frames} "
                f"frames ({frames * voc.hop / voc.sample_rate:.2f} s); raise --max-seconds or send less"
                + ("" if to_stdout else f" ('{output}' was not written)")
            )
        if chunk.shape[1]:
            emit(voc.push(chunk))
    if voc.frames_in == 0:
        raise ValueError(
            f"the stream held no log-mel frames ({chunks} chunk(s), none with a frame): send .npy arrays "
            f"({voc.n_mels}, frames) with frames >= 1"
        )
    emit(voc.finish())
    seconds = time.perf_counter() - start
    if not to_stdout:
        write_audio(Path(output), torch.cat(pieces), voc.sample_rate)
    return StreamStats(voc.frames_in, voc.samples_out, voc.sample_rate, voc.latency_frames,
                       1000 * voc.latency_seconds, seconds, voc.backend, voc.weights, voc.seed)  # fmt: skip
