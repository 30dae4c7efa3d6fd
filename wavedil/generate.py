"""Cached incremental generation.

The model's streaming state (one ring buffer per layer, see :class:`wavedil.layers.StackState`)
makes each new sample cost O(layers), not O(receptive field). The per-sample loop is a
*back-end*: ``torch`` (the reference, any device) is always available and others register
themselves in :data:`BACKENDS`. Every back-end receives the same uniforms from one seeded
generator and samples by inverse CDF, so the same seed gives the same audio on all of them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch

from .audio import decode
from .backends import (
    BACKENDS,
    Backend,
    SamplingRequest,
    available_backends,
    batch_choices,
    check_seed,
    check_temperature,
    check_weights,
    get_backend,
    register_backend,
    resolve_backend,
    stream_backend,
)
from .causal import as_index
from .layers import StackState
from .model import UpsampledColumns, WaveNet

__all__ = [
    "generate", "GenerationResult", "SampleStream", "StreamingGenerator", "BACKENDS", "MAX_SAMPLES", "MAX_TOTAL_SAMPLES",
    "available_backends", "register_backend", "resolve_backend", "stream_backend",
]

#: Upper bound on samples per sequence one call may generate (about 35 minutes at 16 kHz).
MAX_SAMPLES = 2**25
#: Upper bound on ``n_samples * batch_size`` of one call (the uniforms and codes take 16 bytes each).
MAX_TOTAL_SAMPLES = 2**27


@dataclass
class GenerationResult:
    """Codes ``(B, N)`` and how fast they came."""

    codes: torch.Tensor
    seed: int
    backend: str
    seconds: float
    weights: str = "fp32"

    @property
    def samples_per_second(self) -> float:
        return self.codes.numel() / max(self.seconds, 1e-9)


def _check_prompt(prompt: torch.Tensor, batch_size: int, classes: int) -> torch.Tensor:
    if not isinstance(prompt, torch.Tensor):
        raise ValueError(f"prompt must be a torch.Tensor of integer codes, got {type(prompt).__name__}")
    if prompt.dtype.is_floating_point or prompt.dtype == torch.bool:
        raise ValueError(
            f"prompt must hold integer codes, got dtype {prompt.dtype}: encode a waveform with "
            "wavedil.audio.encode(wav, model.encoding, model.quantization_channels) first"
        )
    if prompt.dim() == 1:
        prompt = prompt.unsqueeze(0)
    if prompt.dim() != 2 or prompt.shape[-1] < 1 or prompt.shape[0] not in (1, batch_size):
        raise ValueError(
            f"prompt must be (T,) or (B, T) with B = {batch_choices(batch_size)} and T >= 1, got shape "
            f"{tuple(prompt.shape)}"
        )
    if int(prompt.min()) < 0 or int(prompt.max()) >= classes:
        raise ValueError(
            f"prompt codes must lie in [0, {classes}), got range [{int(prompt.min())}, {int(prompt.max())}]"
        )
    return prompt.expand(batch_size, -1).long()


def _check_count(n: object, name: str) -> int:
    """``n`` as an int in ``[1, MAX_SAMPLES]`` (a numpy or 0-dim torch integer too), else a
    ``ValueError`` naming ``name`` and the value."""
    count = as_index(n)
    if count is None or not 1 <= count <= MAX_SAMPLES:
        raise ValueError(f"{name} must be an integer in [1, {MAX_SAMPLES}], got {n!r}")
    return count


def _check_batch(batch_size: object) -> int:
    count = as_index(batch_size)  # a numpy or 0-dim torch integer too
    if count is None or count < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    return count


def _sampler(model: WaveNet, name: str, weights: str) -> Backend:
    """The back-end ``name`` after checking that it runs ``model`` in mode ``weights`` (``ValueError``
    naming what would work otherwise); the model is put in eval mode."""
    impl = get_backend(name)  # unknown name or a back-end that failed to load: ValueError with the cause
    impl.check(model, weights)  # device, head, conditioning, weight mode: ValueError naming what would work
    params = [(n, p) for n, p in model.named_parameters() if p.is_floating_point()]
    finite = torch.stack([torch.isfinite(p).all() for _, p in params]).tolist() if params else []  # one sync
    bad = [n for (n, _), ok in zip(params, finite) if not ok]
    if bad:  # every code would come out as the same class: a constant, full-scale signal
        raise ValueError(
            f"the model's weights hold NaN or infinite values ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}): "
            "its training diverged; sample an earlier checkpoint"
        )
    model.eval()
    return impl


def _uniforms(gen: torch.Generator, model: WaveNet, n: int, batch_size: int) -> torch.Tensor:
    """The next ``n`` samples' uniforms ``(n, B)`` or ``(n, B, U)`` from ``gen``: drawing them in
    pieces gives the same numbers as drawing them at once (one stream, in order)."""
    return torch.rand(_uniform_shape(model, n, batch_size), generator=gen, dtype=torch.float64).to(
        model.embed.weight.device
    )


def _uniform_shape(model: WaveNet, n: int, batch_size: int) -> tuple[int, ...]:
    per = model.dist.uniforms_per_sample
    return (n, batch_size) if per == 1 else (n, batch_size, per)


def _prime(
    model: WaveNet, batch_size: int, prompt: torch.Tensor | None, speaker: torch.Tensor | None,
    local: Callable[[int, int], torch.Tensor] | None = None,
) -> tuple[StackState, torch.Tensor, int]:
    """The state after the opening sample of silence or the ``prompt`` (``(B, T)`` checked codes),
    the head parameters ``(B, P)`` of the first sample to draw, and the inputs fed (``T``, or
    ``T + 1`` for a vocoder, whose inputs always start with the silence). ``local(a, b)`` gives a
    vocoder's upsampled columns ``a .. b - 1`` ``(B, n_mels, b - a)``."""
    device = model.embed.weight.device
    state = model.init_state(batch_size)
    # The stream opens with one sample of silence (the code of 0.0); a prompt replaces it, but a
    # vocoder's inputs always start with it (its sample n is predicted from n - 1 and mel column n).
    opener = torch.full((batch_size, 1), model.silence_code, dtype=torch.long, device=device)
    if prompt is None:
        prompt = opener
    else:
        prompt = prompt.to(device)
        if local is not None:
            prompt = torch.cat([opener, prompt], dim=1)
    fed = int(prompt.shape[1])
    # Only the last receptive field of inputs reaches the state and the next sample: every ring
    # holds layer inputs that depend on no earlier input, so the pass over them (one chunked pass
    # primes every layer) gives the same state and parameters as a pass over all of them, without
    # computing (B, P, T) head outputs for an hours-long prompt (a 14-minute one took 23 GB).
    first = max(0, fed - model.receptive_field)
    cond = None if local is None else local(first, fed)
    params, state = model.step(prompt[:, first:], state, speaker, cond)
    return state, params[:, :, -1], fed


@torch.no_grad()
def generate(
    model: WaveNet,
    n_samples: int | None,
    batch_size: int = 1,
    temperature: float = 1.0,
    seed: int | None = None,
    prompt: torch.Tensor | None = None,
    speaker: torch.Tensor | int | None = None,
    backend: str = "torch",
    progress: Callable[[int], None] | None = None,
    mel: torch.Tensor | None = None,
    weights: str = "fp32",
) -> GenerationResult:
    """Sample ``n_samples`` new codes (the model's encoding) for each of ``batch_size`` sequences.

    Args:
        model: a :class:`WaveNet` (its device is used; it is put in eval mode).
        n_samples: samples to generate per sequence, ``1 <= n <= MAX_SAMPLES``.
        batch_size: independent sequences ``B``.
        temperature: ``> 0`` divides the logits; ``0`` is greedy (argmax).
        seed: an integer in ``[0, 2**64 - 1]`` that makes the result reproducible; None draws one
            (returned in the result).
        prompt: optional ``(T,)`` or ``(B, T)`` int64 codes that prime the state; the
            generated samples continue it (the prompt itself is not returned). Only its last
            ``model.receptive_field`` codes are fed: no earlier one reaches the state.
        speaker: class id(s) ``(B,)`` or an int, for globally conditioned models.
        backend: a registered back-end (``torch`` is the reference, ``fast`` the fused loop), or
            ``"auto"`` for the preferred one that runs the model in mode ``weights`` here
            (:func:`wavedil.backends.resolve_backend`).
        progress: called with the number of samples done so far.
        mel: vocoders only: ``(B, n_mels, M + 2 c)`` or ``(n_mels, M + 2 c)`` raw log-mel frames
            with ``c = model.mel_context`` frames of context on each side
            (:func:`wavedil.data.file_mel`); they condition the ``M * hop`` output samples, of
            which a ``prompt`` gives the first ``P`` (then ``P + n_samples <= M * hop``;
            ``n_samples=None`` generates the rest). It is upsampled a piece at a time
            (:class:`wavedil.model.UpsampledColumns`) as sampling reaches it, on back-ends that
            continue requests (:meth:`wavedil.backends.Backend.continues`): the same samples.
        weights: how the back-end stores the weights (:data:`wavedil.backends.WEIGHT_MODES`):
            ``fp32`` (exact: the reference's samples), ``bf16`` or ``int8`` (``fast`` only;
            teacher-forced outputs within a stated tolerance of fp32, the same samples for the
            same seed on the same machine). ``auto`` never changes it.

    Returns:
        A :class:`GenerationResult` with ``codes (B, n_samples)`` int64.
    """
    if not isinstance(model, WaveNet):
        raise ValueError(f"model must be a wavedil WaveNet, got {type(model).__name__}")
    if progress is not None and not callable(progress):
        raise ValueError(f"progress must be a function of the samples done (or None), got {progress!r}")
    columns = None  # vocoders: the upsampled mel, computed a piece at a time as sampling reaches it
    if model.upsampler is not None or mel is not None:
        mel = model.check_mel(mel)  # raises for a missing mel or one that does not fit the model
        if not bool(torch.isfinite(mel).all()):  # NaN frames would silently give silence
            raise ValueError("mel holds NaN or infinite values: log-mel frames must be finite")
        if mel.shape[0] not in (1, batch_size):
            raise ValueError(f"mel must have batch {batch_choices(batch_size)}, got shape {tuple(mel.shape)}")
        columns = UpsampledColumns(model, mel.to(model.embed.weight.device))
        given = 0 if prompt is None else int(prompt.shape[-1])
        room = columns.samples - given
        if n_samples is None:
            n_samples = room
        if as_index(n_samples) is not None and as_index(n_samples) > room:
            hop = model.mel_spec.hop_length
            raise ValueError(
                f"the mel has {columns.frames} frames (+ {2 * model.mel_context} context) = "
                f"{columns.samples} samples at hop {hop}, which does not fit a prompt of {given} + "
                f"{n_samples} samples: generate at most {room} or give {-(-(given + n_samples) // hop)} frames"
            )
    n_samples = _check_count(n_samples, "n_samples")
    batch_size = _check_batch(batch_size)
    if n_samples * batch_size > MAX_TOTAL_SAMPLES:
        raise ValueError(
            f"{n_samples:,} samples x batch {batch_size} = {n_samples * batch_size:,} exceeds the limit of "
            f"{MAX_TOTAL_SAMPLES:,} samples per call: generate fewer seconds or a smaller batch per call"
        )
    temperature = check_temperature(temperature)
    seed = None if seed is None else check_seed(seed)
    weights = check_weights(weights)
    backend = resolve_backend(backend, model, weights, batch_size)
    impl = _sampler(model, backend, weights)
    if seed is None:
        seed = int(torch.randint(0, 2**31 - 1, ()).item())
    uniforms = _uniforms(torch.Generator().manual_seed(seed), model, n_samples, batch_size)
    speaker = model.speaker_ids(speaker, batch_size)  # (B,) checked ids, or None
    if prompt is not None:
        prompt = _check_prompt(prompt, batch_size, model.quantization_channels)
    local = None if columns is None else lambda a, b: columns(a, b).expand(batch_size, -1, -1)
    state, params, fed = _prime(model, batch_size, prompt, speaker, local)
    # A vocoder's columns from fed - 1 on belong to the samples drawn (column fed - 1 to the first).
    # A back-end that continues requests draws them a piece of the upsampled mel at a time (the
    # same samples: pieces of a stream concatenate to one draw), so memory stays bounded for a
    # mel of any length; others take the whole in one request.
    step = n_samples if local is None or not impl.continues(model) else columns.width
    bounds = [(s0, min(n_samples, s0 + step)) for s0 in range(0, n_samples, step)]

    def request_for(s0: int, s1: int, state: StackState, params: torch.Tensor) -> SamplingRequest:
        last = s1 == n_samples  # the others also feed their last code, for the next piece
        cols = None if local is None else local(fed - 1 + s0, fed - 1 + s1 + (0 if last else 1))
        report = progress if progress is None or s0 == 0 else (lambda done: progress(s0 + done))
        return SamplingRequest(
            model, state, params, uniforms[s0:s1], float(temperature), speaker, local=cols, weights=weights,
            progress=report, continuation=not last,
        )  # fmt: skip

    request = request_for(*bounds[0], state, params)
    impl.prepare(request)  # e.g. compile kernels: not part of the timing
    start = time.perf_counter()
    pieces = [impl.sample(request)]
    for s0, s1 in bounds[1:]:
        request = request_for(s0, s1, request.next_state, request.next_params)
        pieces.append(impl.sample(request))
    codes = pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=1)
    if codes.device.type == "cuda":
        torch.cuda.synchronize(codes.device)  # GPU back-ends return before their kernels finish
    seconds = time.perf_counter() - start
    return GenerationResult(codes, int(seed), backend, seconds, weights)


class SampleStream:
    """What a stream of samples holds between calls: the model, its back-end in a weight mode, the
    seeded uniforms (drawn in order, so pieces concatenate to one draw), the speakers, and the
    count of samples out. :class:`StreamingGenerator` and
    :class:`wavedil.vocoder_stream.StreamingVocoder` are the two kinds.

    Raises:
        ValueError: not a :class:`WaveNet` (``what`` names the kind wanted), a bad argument, or a
            back-end that cannot run the model in mode ``weights`` (the message names what would).
    """

    def __init__(
        self,
        model: WaveNet,
        batch_size: int,
        temperature: float,
        seed: int | None,
        speaker: torch.Tensor | int | None,
        backend: str,
        weights: str,
        what: str = "WaveNet",
    ) -> None:
        if not isinstance(model, WaveNet):
            raise ValueError(f"model must be a wavedil {what}, got {type(model).__name__}")
        self.batch_size = _check_batch(batch_size)
        self.temperature = float(check_temperature(temperature))
        seed = None if seed is None else check_seed(seed)
        self.speaker = model.speaker_ids(speaker, self.batch_size)  # checked now, not at the first draw
        self.weights = check_weights(weights)
        self.backend = stream_backend(backend, model, self.weights)
        self._impl = _sampler(model, self.backend, self.weights)
        self.model = model
        self._made_for = (model.embed.weight.dtype, model.embed.weight.device)  # what the state is held in
        self.seed = int(torch.randint(0, 2**31 - 1, ()).item()) if seed is None else seed
        self._gen = torch.Generator().manual_seed(self.seed)
        self.samples_out = 0  # codes returned so far, per sequence

    def _check_model(self) -> None:
        """``ValueError`` if the model was cast or moved since this stream was made: its state (rings,
        parameters, frames) is held in the dtype and on the device of then, and mixing them failed
        with errors about tensors the caller never handles, after changing the stream."""
        weight = self.model.embed.weight
        if (weight.dtype, weight.device) != self._made_for:
            dtype, device = self._made_for
            raise ValueError(
                f"the model was cast or moved after this {type(self).__name__} was made: its weights are now "
                f"{weight.dtype} on {weight.device}, the stream's state {dtype} on {device}; make a new "
                f"{type(self).__name__}, or give the model back its dtype and device (model.to({str(device)!r}, "
                f"{dtype})) to go on (the stream is unchanged)"
            )

    def _next_uniforms(self, n: int) -> torch.Tensor:
        """The uniforms of the stream's next ``n`` samples."""
        return _uniforms(self._gen, self.model, n, self.batch_size)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes ``(B, n)`` -> float waveform ``(B, n)`` in ``[-1, 1]`` (the model's encoding)."""
        return decode(codes, self.model.encoding, self.model.quantization_channels)


class StreamingGenerator(SampleStream):
    """Sample a model's audio a piece at a time: :meth:`draw` ``n`` more codes whenever they are wanted.

    The streaming state (every layer's ring buffer, the next sample's head parameters and the
    seeded uniforms) lives in this object between calls, so each piece costs what its samples
    cost, and playback can start after the first piece. Pieces of any lengths, concatenated,
    equal ``generate(model, total, seed=seed, ...)`` with the same arguments: the same uniforms,
    one per sample in order, and the same back-end arithmetic continued across calls
    (:attr:`SamplingRequest.continuation`).

    >>> gen = StreamingGenerator(model, seed=1, backend="fast", weights="int8")  # doctest: +SKIP
    >>> while playing:                                                           # doctest: +SKIP
    ...     play(gen.decode(gen.draw(800)))      # (B, 800) codes -> float samples in [-1, 1]

    Args:
        model: an unconditioned or speaker-conditioned :class:`WaveNet` (a vocoder streams with
            :class:`wavedil.vocoder_stream.StreamingVocoder`, which takes its mel frames).
        batch_size: ``B`` sequences drawn together.
        temperature: ``> 0`` divides the logits; ``0`` is greedy.
        seed: the uniforms' seed (None draws one: :attr:`seed`).
        prompt: optional ``(T,)`` or ``(B, T)`` codes that prime the state (not returned; only
            its last ``model.receptive_field`` codes are fed, as in :func:`generate`).
        speaker: class id(s) for a speaker-conditioned model.
        backend: ``auto``, ``torch`` or ``fast`` (:func:`wavedil.backends.stream_backend`: on
            CUDA the stream runs ``torch``, as the CUDA-graph loop does not continue streams).
        weights: the weight mode (:data:`wavedil.backends.WEIGHT_MODES`).

    Raises:
        ValueError: a vocoder, a bad argument, or a back-end that cannot run the model in mode
            ``weights`` (the message names what would).
    """

    def __init__(
        self,
        model: WaveNet,
        batch_size: int = 1,
        temperature: float = 1.0,
        seed: int | None = None,
        prompt: torch.Tensor | None = None,
        speaker: torch.Tensor | int | None = None,
        backend: str = "auto",
        weights: str = "fp32",
    ) -> None:
        if isinstance(model, WaveNet) and model.upsampler is not None:
            raise ValueError(
                "this model is a vocoder (conditioned on log-mel frames): stream it with "
                "wavedil.StreamingVocoder, which takes the frames as they come"
            )
        super().__init__(model, batch_size, temperature, seed, speaker, backend, weights)
        if prompt is not None:
            prompt = _check_prompt(prompt, self.batch_size, model.quantization_channels)
        with torch.no_grad():
            self._state, self._params, _ = _prime(model, self.batch_size, prompt, self.speaker)
        self._prepared = False

    @torch.no_grad()
    def draw(self, n: int) -> torch.Tensor:
        """The next ``n`` codes of every sequence: ``(B, n)`` int64 on the model's device.

        Raises:
            ValueError: ``n`` not an integer in ``[1, MAX_SAMPLES]``, ``n * B`` over
                :data:`MAX_TOTAL_SAMPLES`, or a model cast or moved since the stream was made
                (the stream is left as it was).
        """
        n = _check_count(n, "n")
        self._check_model()
        if n * self.batch_size > MAX_TOTAL_SAMPLES:
            raise ValueError(
                f"{n:,} samples x batch {self.batch_size} exceeds the limit of {MAX_TOTAL_SAMPLES:,} per draw: "
                "draw fewer at a time"
            )
        request = self._request(self._next_uniforms(n))
        self.prepare()
        codes = self._impl.sample(request)
        self._state, self._params = request.next_state, request.next_params
        self.samples_out += n
        return codes

    def _request(self, uniforms: torch.Tensor) -> SamplingRequest:
        return SamplingRequest(
            self.model, self._state, self._params, uniforms, self.temperature, self.speaker,
            weights=self.weights, continuation=True,
        )  # fmt: skip

    @torch.no_grad()
    def prepare(self) -> None:
        """Get the back-end ready (e.g. load or compile its kernels) without drawing: the first
        :meth:`draw` does it otherwise. The stream is unchanged (its uniforms are not touched)."""
        self._check_model()
        if not self._prepared:
            shape = _uniform_shape(self.model, 1, self.batch_size)
            self._impl.prepare(self._request(torch.full(shape, 0.5, dtype=torch.float64, device=self._params.device)))
            self._prepared = True
