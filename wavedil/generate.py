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
from typing import Callable, Protocol

import torch

from .layers import StackState
from .model import WaveNet

__all__ = ["generate", "GenerationResult", "BACKENDS", "MAX_SAMPLES", "MAX_TOTAL_SAMPLES", "register_backend", "resolve_backend"]

#: Upper bound on samples per sequence one call may generate (about 35 minutes at 16 kHz).
MAX_SAMPLES = 2**25
#: Upper bound on ``n_samples * batch_size`` of one call (the uniforms and codes take 16 bytes each).
MAX_TOTAL_SAMPLES = 2**27


class Backend(Protocol):
    def __call__(
        self,
        model: WaveNet,
        state: StackState,
        logits: torch.Tensor,
        uniforms: torch.Tensor,
        temperature: float,
        speaker: torch.Tensor | None,
        progress: Callable[[int], None] | None,
        local: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Sample ``uniforms.shape[0]`` steps starting from ``logits (B, Q)``; return codes ``(B, N)``."""


def _torch_backend(
    model: WaveNet,
    state: StackState,
    logits: torch.Tensor,
    uniforms: torch.Tensor,
    temperature: float,
    speaker: torch.Tensor | None,
    progress: Callable[[int], None] | None,
    local: torch.Tensor | None = None,
) -> torch.Tensor:
    n = uniforms.shape[0]
    out = torch.empty(logits.shape[0], n, dtype=torch.long, device=logits.device)
    for t in range(n):
        codes = model.dist.sample(logits, uniforms[t], temperature)  # (B,)
        out[:, t] = codes
        if t + 1 < n:
            cond = None if local is None else local[:, :, t + 1 : t + 2]
            step_logits, state = model.step(codes.unsqueeze(1), state, speaker, cond)
            logits = step_logits[:, :, 0]
        if progress is not None:
            progress(t + 1)
    return out


def check_backend_inputs(
    model: WaveNet, logits: torch.Tensor, uniforms: torch.Tensor, local: torch.Tensor | None
) -> tuple[int, int]:
    """Check a back-end's arguments against ``model``; return ``(B, N)``.

    ``logits (B, P)`` with ``P = model.dist.param_channels``; ``uniforms (N, B)`` or
    ``(N, B, U)`` for ``U = model.dist.uniforms_per_sample > 1``; ``local (B, Lc, >= N)`` exactly
    when the model is mel-conditioned.
    """
    batch, n_par = logits.shape
    n = uniforms.shape[0]
    per = model.dist.uniforms_per_sample
    if uniforms.shape not in ((n, batch), (n, batch, per)) or (per > 1 and uniforms.dim() != 3):
        want = f"(N, {batch})" if per == 1 else f"(N, {batch}, {per})"
        raise ValueError(f"uniforms must be {want}, got shape {tuple(uniforms.shape)}")
    if n_par != model.dist.param_channels:
        raise ValueError(f"logits must be (B, {model.dist.param_channels}), got shape {tuple(logits.shape)}")
    if (local is None) != (model.upsampler is None):
        raise ValueError(
            "a mel-conditioned model needs local, the upsampled conditioning" if local is None
            else "this model has no mel conditioning; do not pass local"
        )  # fmt: skip
    if local is not None and (local.dim() != 3 or local.shape[0] != batch or local.shape[2] < n):
        raise ValueError(f"local must be ({batch}, n_mels, >= {n}), got shape {tuple(local.shape)}")
    return batch, n


def teacher_forcing_local(
    model: WaveNet, mel: torch.Tensor | None, samples: int, batch: int
) -> torch.Tensor | None:
    """The upsampled conditioning ``(B, n_mels, T)`` of a vocoder fed ``samples`` codes per row
    (None for a model without mel); ``mel (1 or B, n_mels, T / hop + 2 c)`` as ``forward`` takes it."""
    if model.upsampler is None and mel is None:
        return None
    device = model.embed.weight.device
    local = model.upsample(None if mel is None else mel.to(device), samples)  # validated
    if local.shape[0] not in (1, batch):
        raise ValueError(f"mel must have batch 1 or {batch}, got shape {tuple(mel.shape)}")
    return local.expand(batch, -1, -1)


BACKENDS: dict[str, Backend] = {"torch": _torch_backend}

#: Candidates of ``backend="auto"``, preferred first: ``(name, can_run(model) -> bool)``.
AUTO_BACKENDS: list[tuple[str, Callable[[WaveNet], bool]]] = []


def register_backend(name: str, fn: Backend, auto: Callable[[WaveNet], bool] | None = None) -> None:
    """Make a generation back-end available as ``backend=name``.

    ``auto``: a test of whether the back-end can run a model; given, ``backend="auto"`` prefers
    this back-end (over those registered before it) for the models that pass it.
    """
    BACKENDS[name] = fn
    if auto is not None:
        AUTO_BACKENDS[:] = [(name, auto)] + [c for c in AUTO_BACKENDS if c[0] != name]


def resolve_backend(backend: str, model: WaveNet) -> str:
    """``backend`` itself, or for ``"auto"`` the preferred back-end that can run ``model`` (else ``torch``)."""
    if backend != "auto":
        return backend
    return next((name for name, can_run in AUTO_BACKENDS if name in BACKENDS and can_run(model)), "torch")


@dataclass
class GenerationResult:
    """Codes ``(B, N)`` and how fast they came."""

    codes: torch.Tensor
    seed: int
    backend: str
    seconds: float

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
) -> GenerationResult:
    """Sample ``n_samples`` new codes (the model's encoding) for each of ``batch_size`` sequences.

    Args:
        model: a :class:`WaveNet` (its device is used; it is put in eval mode).
        n_samples: samples to generate per sequence, ``1 <= n <= MAX_SAMPLES``.
        batch_size: independent sequences ``B``.
        temperature: ``> 0`` divides the logits; ``0`` is greedy (argmax).
        seed: makes the result reproducible; None draws one (returned in the result).
        prompt: optional ``(T,)`` or ``(B, T)`` int64 codes that prime the state; the
            generated samples continue it (the prompt itself is not returned).
        speaker: class id(s) ``(B,)`` or an int, for globally conditioned models.
        backend: a key of :data:`BACKENDS` (``torch`` is the reference), or ``"auto"`` for the
            fastest available one that can run the model (see :func:`resolve_backend`).
        progress: called with the number of samples done so far.
        mel: vocoders only: ``(B, n_mels, M + 2 c)`` or ``(n_mels, M + 2 c)`` raw log-mel frames
            with ``c = model.mel_context`` frames of context on each side
            (:func:`wavedil.data.file_mel`); they condition the ``M * hop`` output samples, of
            which a ``prompt`` gives the first ``P`` (then ``P + n_samples <= M * hop``;
            ``n_samples=None`` generates the rest).

    Returns:
        A :class:`GenerationResult` with ``codes (B, n_samples)`` int64.
    """
    local = None
    if model.upsampler is not None or mel is not None:
        local = model.upsample(mel)  # raises for a missing mel or one that does not fit the model
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
    if not (temperature >= 0 and temperature < float("inf")):
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
    backend = resolve_backend(backend, model)
    if backend not in BACKENDS:
        raise ValueError(f"unknown generation backend {backend!r}; available: {sorted(BACKENDS)}")
    if local is not None and backend != "torch":
        import inspect  # a back-end runs mel-conditioned models when it takes their ``local`` columns

        if "local" not in inspect.signature(BACKENDS[backend]).parameters:
            raise ValueError(
                f"the {backend!r} back-end does not run mel-conditioned models; use backend='torch' or 'auto'"
            )
    model.eval()
    device = model.embed.weight.device
    Q = model.quantization_channels
    if seed is None:
        seed = int(torch.randint(0, 2**31 - 1, ()).item())
    gen = torch.Generator().manual_seed(int(seed))
    per = model.dist.uniforms_per_sample
    shape = (n_samples, batch_size) if per == 1 else (n_samples, batch_size, per)
    uniforms = torch.rand(shape, generator=gen, dtype=torch.float64).to(device)
    if speaker is not None:
        speaker = torch.as_tensor(speaker, device=device).long().reshape(-1).expand(batch_size)

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
    extra = {} if local is None else {"local": local[:, :, prompt.shape[1] - 1 :]}
    start = time.perf_counter()
    codes = BACKENDS[backend](model, state, logits[:, :, -1], uniforms, float(temperature), speaker, progress, **extra)
    if codes.device.type == "cuda":
        torch.cuda.synchronize(codes.device)  # GPU back-ends return before their kernels finish
    seconds = time.perf_counter() - start
    return GenerationResult(codes, int(seed), backend, seconds)


# Optional fused back-ends (wavedil.fast) register themselves; any failure leaves "torch" working.
try:
    from . import fast as _fast  # noqa: E402,F401
except Exception:  # pragma: no cover - a broken optional install must not break generation
    pass
