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

from .backends import (
    BACKENDS,
    SamplingRequest,
    available_backends,
    check_seed,
    check_temperature,
    check_weights,
    get_backend,
    register_backend,
    resolve_backend,
)
from .model import WaveNet

__all__ = [
    "generate", "GenerationResult", "BACKENDS", "MAX_SAMPLES", "MAX_TOTAL_SAMPLES", "available_backends",
    "register_backend", "resolve_backend",
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
            f"prompt must be (T,) or (B, T) with B = 1 or {batch_size} and T >= 1, got shape {tuple(prompt.shape)}"
        )
    if int(prompt.min()) < 0 or int(prompt.max()) >= classes:
        raise ValueError(
            f"prompt codes must lie in [0, {classes}), got range [{int(prompt.min())}, {int(prompt.max())}]"
        )
    return prompt.expand(batch_size, -1).long()


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
            generated samples continue it (the prompt itself is not returned).
        speaker: class id(s) ``(B,)`` or an int, for globally conditioned models.
        backend: a registered back-end (``torch`` is the reference, ``fast`` the fused loop), or
            ``"auto"`` for the preferred one that runs the model in mode ``weights`` here
            (:func:`wavedil.backends.resolve_backend`).
        progress: called with the number of samples done so far.
        mel: vocoders only: ``(B, n_mels, M + 2 c)`` or ``(n_mels, M + 2 c)`` raw log-mel frames
            with ``c = model.mel_context`` frames of context on each side
            (:func:`wavedil.data.file_mel`); they condition the ``M * hop`` output samples, of
            which a ``prompt`` gives the first ``P`` (then ``P + n_samples <= M * hop``;
            ``n_samples=None`` generates the rest).
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
    local = None
    if model.upsampler is not None or mel is not None:
        local = model.upsample(mel)  # raises for a missing mel or one that does not fit the model
        if not bool(torch.isfinite(local).all()):  # once per call: NaN frames would silently give silence
            raise ValueError("mel holds NaN or infinite values: log-mel frames must be finite")
        if local.shape[0] not in (1, batch_size):
            raise ValueError(f"mel must have batch 1 or {batch_size}, got shape {tuple(mel.shape)}")
        local = local.expand(batch_size, -1, -1)
        given = 0 if prompt is None else int(prompt.shape[-1])
        room = local.shape[-1] - given
        if n_samples is None:
            n_samples = room
        if isinstance(n_samples, int) and not isinstance(n_samples, bool) and n_samples > room:
            hop = model.mel_spec.hop_length
            raise ValueError(
                f"the mel has {local.shape[-1] // hop} frames (+ {2 * model.mel_context} context) = "
                f"{local.shape[-1]} samples at hop {hop}, which does not fit a prompt of {given} + "
                f"{n_samples} samples: generate at most {room} or give {-(-(given + n_samples) // hop)} frames"
            )
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or not 1 <= n_samples <= MAX_SAMPLES:
        raise ValueError(f"n_samples must be an integer in [1, {MAX_SAMPLES}], got {n_samples!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if n_samples * batch_size > MAX_TOTAL_SAMPLES:
        raise ValueError(
            f"{n_samples:,} samples x batch {batch_size} = {n_samples * batch_size:,} exceeds the limit of "
            f"{MAX_TOTAL_SAMPLES:,} samples per call: generate fewer seconds or a smaller batch per call"
        )
    temperature = check_temperature(temperature)
    seed = None if seed is None else check_seed(seed)
    weights = check_weights(weights)
    backend = resolve_backend(backend, model, weights)
    impl = get_backend(backend)  # unknown name or a back-end that failed to load: ValueError with the cause
    impl.check(model, weights)  # device, head, conditioning, weight mode: ValueError naming what would work
    model.eval()
    device = model.embed.weight.device
    Q = model.quantization_channels
    if seed is None:
        seed = int(torch.randint(0, 2**31 - 1, ()).item())
    gen = torch.Generator().manual_seed(seed)
    per = model.dist.uniforms_per_sample
    shape = (n_samples, batch_size) if per == 1 else (n_samples, batch_size, per)
    uniforms = torch.rand(shape, generator=gen, dtype=torch.float64).to(device)
    speaker = model.speaker_ids(speaker, batch_size)  # (B,) checked ids, or None

    state = model.init_state(batch_size)
    # The stream opens with one sample of silence (the code of 0.0); a prompt replaces it, but a
    # vocoder's inputs always start with it (its sample n is predicted from n - 1 and mel column n).
    opener = torch.full((batch_size, 1), model.silence_code, dtype=torch.long, device=device)
    if prompt is None:
        prompt = opener
    else:
        prompt = _check_prompt(prompt, batch_size, Q).to(device)
        if local is not None:
            prompt = torch.cat([opener, prompt], dim=1)
    cond = None if local is None else local[:, :, : prompt.shape[1]]
    logits, state = model.step(prompt, state, speaker, cond)  # one chunked pass primes every layer
    request = SamplingRequest(
        model, state, logits[:, :, -1], uniforms, float(temperature), speaker,
        local=None if local is None else local[:, :, prompt.shape[1] - 1 :], weights=weights, progress=progress,
    )  # fmt: skip
    impl.prepare(request)  # e.g. compile kernels: not part of the timing
    start = time.perf_counter()
    codes = impl.sample(request)
    if codes.device.type == "cuda":
        torch.cuda.synchronize(codes.device)  # GPU back-ends return before their kernels finish
    seconds = time.perf_counter() - start
    return GenerationResult(codes, int(seed), backend, seconds, weights)
