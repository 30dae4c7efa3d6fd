"""The generation back-end interface: the request a back-end runs, what each can run, the registry.

A *back-end* runs the per-sample loop of cached generation. :func:`wavedil.generate` primes the
model's streaming state with the prompt, draws the uniforms from the seed and hands a back-end
one :class:`SamplingRequest`; the back-end returns the codes. Every back-end samples by inverse
CDF from those same uniforms, so the same seed gives the same audio on all of them (up to the
float rounding of the head parameters; see :mod:`wavedil.fast`).

Back-ends are registered by name (:func:`register_backend`), optionally *lazily*: the module
that implements one is imported on first use, and when that import fails the user is warned
with the cause, ``backend="auto"`` goes on with the next candidate, and asking for the
back-end by name raises :class:`BackendUnavailable` with that cause. Imports run one way:
``model -> backends -> generate`` and ``model -> backends -> fast``; no back-end imports its
caller.

The reference back-end, ``torch``, lives here: it is :meth:`WaveNet.step` in a loop.

>>> from wavedil.backends import available_backends
>>> "torch" in available_backends()
True
"""

from __future__ import annotations

import abc
import importlib
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from .causal import as_index
from .model import WaveNet
from .layers import StackState

__all__ = [
    "WEIGHT_MODES",
    "Backend",
    "BackendUnavailable",
    "Capabilities",
    "SamplingRequest",
    "TorchBackend",
    "available_backends",
    "get_backend",
    "register_backend",
    "resolve_backend",
    "stream_backend",
    "teacher_forcing_inputs",
    "unregister_backend",
    "check_weights",
    "check_seed",
    "check_temperature",
    "batch_choices",
    "temperature_notes",
    "NOISY_TEMPERATURE",
    "resolve_device",
    "MAX_SEED",
]

#: Largest seed a generator takes (``torch.Generator.manual_seed``: 64 bits, unsigned).
MAX_SEED = 2**64 - 1

#: How a back-end may store the weights of generation. ``fp32`` is exact (the reference's
#: arithmetic); ``bf16`` keeps 16 bits per weight (bfloat16), ``int8`` 8 bits with one float32
#: scale per output channel (but the head's last matrix in bfloat16,
#: :data:`wavedil.fast.pack.INT8_KEEPS_BF16`); activations, state and sums stay float32 in every mode.
WEIGHT_MODES: tuple[str, ...] = ("fp32", "bf16", "int8")

_HEADS = ("mulaw", "mol", "gaussian")


class BackendUnavailable(ValueError):
    """A back-end was asked for by name but cannot run here (its module failed to import)."""


def check_weights(weights: str) -> str:
    """``weights`` itself when it names a mode of :data:`WEIGHT_MODES`; else ``ValueError``."""
    if weights not in WEIGHT_MODES:
        raise ValueError(f"weights must be one of {list(WEIGHT_MODES)}, got {weights!r}")
    return weights


def check_seed(seed: object) -> int:
    """``seed`` as an ``int`` in ``[0, MAX_SEED]`` (numpy / 0-dim torch integers too); else a
    ``ValueError`` naming it. A float is refused, not rounded: 1.5 and 1 would draw the same audio."""
    value = as_index(seed)
    if value is None or not 0 <= value <= MAX_SEED:
        raise ValueError(f"seed must be an integer in [0, 2**64 - 1], got {seed!r}")
    return value


def resolve_device(device: str | torch.device | None, name: str = "--device") -> torch.device:
    """The torch device that ``device`` names: ``cpu``, ``cuda`` or ``cuda:N``; None (or ``""``)
    picks cuda when a GPU is available, else cpu.

    Raises:
        ValueError: naming the option (``name``: ``--device`` for the CLI, ``device`` for an API
            argument) and its value: not a device, a device type wavedil does not sample on, or
            cuda where no (such) CUDA GPU is available; the message lists what works.
    """
    if device is None or (isinstance(device, str) and not device.strip()):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    works = "cpu" + (f", cuda, or cuda:0 .. cuda:{gpus - 1}" if gpus else " (no CUDA GPU is available here)")
    use_cpu = "--device cpu (or leave --device out)" if name == "--device" else f"{name}='cpu' (or {name}=None)"
    try:
        dev = device if isinstance(device, torch.device) else torch.device(str(device).strip().lower())
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(f"{name} {str(device)!r} is not a device: use {works}") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"{name} {device}: wavedil samples on cpu or cuda only; use {works}")
    if dev.type == "cuda" and not gpus:
        raise ValueError(f"{name} {device} but no CUDA GPU is available here: use {use_cpu}")
    if dev.type == "cuda" and dev.index is not None and dev.index >= gpus:
        raise ValueError(f"{name} {device} but this machine has {gpus} CUDA GPU(s): use {works}")
    return dev


def check_temperature(temperature: object) -> float:
    """``temperature`` as a float ``>= 0`` and finite (0: greedy); else a ``ValueError`` naming it."""
    value = float("nan")
    if not isinstance(temperature, (str, bytes, bool)) and temperature is not None:
        try:
            value = float(temperature)
        except (TypeError, ValueError, RuntimeError):
            value = float("nan")
    if not (value >= 0 and value < float("inf")):
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
    return value


def batch_choices(batch: int) -> str:
    """How a message names the batch sizes that fit a batch of ``batch``: ``"1"`` or ``"1 or B"``."""
    return "1" if batch == 1 else f"1 or {batch}"


#: Above this sampling temperature the audio is mostly noise, and :func:`temperature_notes` says so.
NOISY_TEMPERATURE = 2.0


def temperature_notes(temperature: float) -> list[str]:
    """The notes for the user on ``temperature``: one when it is above :data:`NOISY_TEMPERATURE`
    (not an error: it is a valid, if odd, choice), else none."""
    if temperature <= NOISY_TEMPERATURE:
        return []
    return [
        f"temperature {temperature:g} is far above 1 (the model as trained): expect mostly noise; "
        "lower values are cleaner"
    ]


@dataclass(frozen=True)
class Capabilities:
    """What a back-end can run.

    Attributes:
        devices: device type (``"cpu"``, ``"cuda"``) -> the weight modes it runs there.
        heads: output distributions (``model.config.output``) it implements.
        speaker: global (speaker) conditioning.
        mel: local (mel) conditioning, i.e. vocoders.
    """

    devices: dict[str, tuple[str, ...]]
    heads: tuple[str, ...] = _HEADS
    speaker: bool = True
    mel: bool = True

    def unsupported_reason(self, name: str, model: WaveNet, weights: str) -> str | None:
        """None when ``model`` in mode ``weights`` is within these capabilities, else why not."""
        device = model.embed.weight.device.type
        if device not in self.devices:
            return f"the {name!r} back-end runs on {sorted(self.devices)}, not on {device!r}"
        if weights not in self.devices[device]:
            where = ", ".join(f"{m} on {d}" for d, modes in self.devices.items() for m in modes)
            return f"the {name!r} back-end runs weights={weights!r} not on {device!r} (it runs {where})"
        output = getattr(model.config, "output", "mulaw")
        if output not in self.heads:
            return f"the {name!r} back-end implements the heads {list(self.heads)}, not {output!r}"
        if model.speaker is not None and not self.speaker:
            return f"the {name!r} back-end does not run speaker-conditioned models"
        if model.upsampler is not None and not self.mel:
            return f"the {name!r} back-end does not run mel-conditioned models (vocoders)"
        return None


@dataclass
class SamplingRequest:
    """One run of the per-sample loop, as :func:`wavedil.generate` hands it to a back-end.

    Attributes:
        model: the model, in eval mode, on its device.
        state: its streaming state after the prompt (back-ends read it, never modify it).
        params: ``(B, P)`` head parameters of the first sample to draw (logits for ``mulaw``).
        uniforms: ``(N, B)``, or ``(N, B, U)`` for ``U = model.dist.uniforms_per_sample > 1``,
            float64: sample ``t`` of row ``b`` is drawn with ``uniforms[t, b]``.
        temperature: ``> 0`` divides the logits; ``0`` is greedy.
        speaker: ``(B,)`` class ids for a speaker-conditioned model, else None.
        local: vocoders: ``(B, Lc, >= N)`` upsampled conditioning; column 0 belongs to
            ``params``, column ``t + 1`` to the input of sample ``t``. Else None.
        weights: the weight mode (:data:`WEIGHT_MODES`).
        progress: called with the number of samples done per sequence.
        continuation: also feed the last drawn code, so that the stream can go on: the back-end
            then sets :attr:`next_state` (the state after all ``N`` codes) and
            :attr:`next_params` (``(B, P)``, the head parameters of sample ``N``). A vocoder's
            ``local`` then needs ``N + 1`` columns. (What a streaming vocoder runs chunk by chunk.)
    """

    model: WaveNet
    state: StackState
    params: torch.Tensor
    uniforms: torch.Tensor
    temperature: float
    speaker: torch.Tensor | None = None
    local: torch.Tensor | None = None
    weights: str = "fp32"
    progress: Callable[[int], None] | None = None
    continuation: bool = False
    next_state: StackState | None = None
    next_params: torch.Tensor | None = None

    def __post_init__(self) -> None:
        model = self.model
        batch, n_par = self.params.shape
        n = self.uniforms.shape[0]
        per = model.dist.uniforms_per_sample
        if self.uniforms.shape not in ((n, batch), (n, batch, per)) or (per > 1 and self.uniforms.dim() != 3):
            want = f"(N, {batch})" if per == 1 else f"(N, {batch}, {per})"
            raise ValueError(f"uniforms must be {want}, got shape {tuple(self.uniforms.shape)}")
        if n_par != model.dist.param_channels:
            raise ValueError(f"params must be (B, {model.dist.param_channels}), got shape {tuple(self.params.shape)}")
        if (self.local is None) != (model.upsampler is None):
            raise ValueError(
                "a mel-conditioned model needs local, the upsampled conditioning" if self.local is None
                else "this model has no mel conditioning; do not pass local"
            )  # fmt: skip
        need = n + 1 if self.continuation else n
        if self.local is not None and (
            self.local.dim() != 3 or self.local.shape[0] != batch or self.local.shape[2] < need
        ):
            raise ValueError(f"local must be ({batch}, n_mels, >= {need}), got shape {tuple(self.local.shape)}")
        check_weights(self.weights)

    @property
    def batch_size(self) -> int:
        """``B``, the number of sequences."""
        return int(self.params.shape[0])

    @property
    def n_samples(self) -> int:
        """``N``, the samples to draw per sequence."""
        return int(self.uniforms.shape[0])

    def global_condition(self) -> torch.Tensor | None:
        """The model's speaker embedding ``(B, Gc)`` for :attr:`speaker` (None when unconditioned)."""
        with torch.no_grad():
            return self.model.speaker_condition(self.speaker, self.batch_size)


def teacher_forcing_inputs(
    model: WaveNet, codes: torch.Tensor, speaker: torch.Tensor | None, mel: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Check the inputs of teacher forcing and prepare them on the model's device.

    Args:
        codes: ``(B, T)`` integer codes in ``[0, Q)``.
        speaker: ``(B,)`` or an int, for speaker-conditioned models.
        mel: vocoders only: ``(B or 1, n_mels, T / hop + 2 c)`` as :meth:`WaveNet.forward` takes it.

    Returns:
        ``codes (B, T)`` int64, the speaker embedding ``(B, Gc)`` or None, and the upsampled
        conditioning ``local (B, n_mels, T)`` or None.
    """
    model.check_codes(codes)
    batch, n = codes.shape
    q = model.quantization_channels
    if int(codes.min()) < 0 or int(codes.max()) >= q:
        raise ValueError(f"codes must lie in [0, {q}), got range [{int(codes.min())}, {int(codes.max())}]")
    device = model.embed.weight.device
    local = None
    if model.upsampler is not None or mel is not None:
        local = model.upsample(None if mel is None else mel.to(device), n)  # validated
        if local.shape[0] not in (1, batch):
            raise ValueError(f"mel must have batch {batch_choices(batch)}, got shape {tuple(mel.shape)}")
        local = local.expand(batch, -1, -1)
    with torch.no_grad():
        global_cond = model.speaker_condition(speaker, batch)
    return codes.to(device).long(), global_cond, local


class Backend(abc.ABC):
    """A generation back-end: the per-sample loop, and the same arithmetic under teacher forcing.

    Subclasses set :attr:`name` and :attr:`capabilities` and implement :meth:`sample` and
    :meth:`teacher_forced`; :meth:`unsupported_reason` may add checks of their own.
    """

    name: str = "?"
    capabilities: Capabilities = Capabilities(devices={})

    def unsupported_reason(self, model: WaveNet, weights: str = "fp32") -> str | None:
        """None when this back-end can run ``model`` in mode ``weights`` here, else why not."""
        return self.capabilities.unsupported_reason(self.name, model, check_weights(weights))

    def check(self, model: WaveNet, weights: str = "fp32") -> None:
        """Raise ``ValueError`` (with the reason) unless this back-end can run ``model``."""
        why = self.unsupported_reason(model, weights)
        if why is not None:
            raise ValueError(why)

    def prepare(self, request: SamplingRequest) -> None:
        """Get ready to run ``request`` (e.g. compile kernels), so that the timing of :meth:`sample`
        measures sampling only. The default does nothing."""

    def prefers(self, model: WaveNet, batch_size: int) -> bool:
        """Whether ``auto`` picks this back-end for ``model`` at ``batch_size``, given that it can run
        it (:meth:`unsupported_reason` is None): False leaves the choice to the next candidate. The
        default is True."""
        return True

    def continues(self, model: WaveNet) -> bool:
        """Whether :meth:`sample` runs requests with :attr:`SamplingRequest.continuation` for
        ``model`` where it is: what lets :func:`wavedil.generate` vocode a long mel a piece at a
        time. The default is False (one request per call)."""
        return False

    @abc.abstractmethod
    def sample(self, request: SamplingRequest) -> torch.Tensor:
        """Run ``request``; return the codes ``(B, N)`` int64 on the model's device."""

    @abc.abstractmethod
    def teacher_forced(
        self,
        model: WaveNet,
        codes: torch.Tensor,
        speaker: torch.Tensor | None = None,
        mel: torch.Tensor | None = None,
        weights: str = "fp32",
    ) -> torch.Tensor:
        """Head parameters ``(B, P, T)`` of this back-end's step fed ``codes (B, T)`` one at a time
        from an empty state: its counterpart of ``model(codes, speaker, mel)``."""


class TorchBackend(Backend):
    """The reference: :meth:`WaveNet.step` per sample, then ``model.dist.sample``. Any device, fp32."""

    name = "torch"
    capabilities = Capabilities(devices={"cpu": ("fp32",), "cuda": ("fp32",), "mps": ("fp32",)})

    def continues(self, model: WaveNet) -> bool:
        return True

    def unsupported_reason(self, model: WaveNet, weights: str = "fp32") -> str | None:
        check_weights(weights)
        if weights != "fp32":
            return (
                f"the 'torch' back-end runs the model's own weights (weights='fp32'), not weights={weights!r}: "
                "use backend='fast' (or 'auto') for reduced-precision weights"
            )
        return None  # any device the model runs on

    @torch.no_grad()
    def sample(self, request: SamplingRequest) -> torch.Tensor:
        model, state, logits, local = request.model, request.state, request.params, request.local
        n = request.n_samples
        out = torch.empty(request.batch_size, n, dtype=torch.long, device=logits.device)
        global_cond = request.global_condition()  # once, not per sample
        for t in range(n):
            codes = model.dist.sample(logits, request.uniforms[t], request.temperature)  # (B,)
            out[:, t] = codes
            if t + 1 < n or request.continuation:
                cond = None if local is None else local[:, :, t + 1 : t + 2]
                step_logits, state = model.step(codes.unsqueeze(1), state, local=cond, global_cond=global_cond)
                logits = step_logits[:, :, 0]
            if request.progress is not None:
                request.progress(t + 1)
        if request.continuation:
            request.next_state, request.next_params = state, logits
        return out

    @torch.no_grad()
    def teacher_forced(self, model, codes, speaker=None, mel=None, weights="fp32") -> torch.Tensor:
        self.check(model, weights)
        model.check_codes(codes)
        return model(codes.to(model.embed.weight.device), speaker, mel)


# ----------------------------------------------------------------------------- the registry


def _numba_settings() -> str:
    """``"; the environment sets NUMBA_NUM_THREADS='0' (read by numba): ..."`` when ``NUMBA_*``
    variables are set (a load failure of the numba kernels often comes from one), else ``""``."""
    settings = sorted((k, v) for k, v in os.environ.items() if k.startswith("NUMBA_"))
    if not settings:
        return ""
    named = ", ".join(f"{k}={v!r}" for k, v in settings)
    return f"; the environment sets {named} (read by numba): check or unset it"


@dataclass
class _Entry:
    load: Callable[[], Backend]
    auto: bool
    backend: Backend | None = None
    error: BaseException | None = None


class _Registry:
    """Back-end name -> entry, in the order ``backend="auto"`` prefers them."""

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}

    def register(self, name: str, backend: Backend | Callable[[], Backend] | str, auto: bool) -> None:
        if isinstance(backend, Backend):
            entry = _Entry(load=lambda: backend, auto=auto, backend=backend)
        elif isinstance(backend, str):
            entry = _Entry(load=_import_loader(backend), auto=auto)
        elif callable(backend):
            entry = _Entry(load=backend, auto=auto)
        else:
            raise ValueError(f"backend must be a Backend, a factory or 'module:attribute', got {backend!r}")
        entries = {name: entry} if auto else {}
        entries.update((k, v) for k, v in self._entries.items() if k != name)
        if not auto:
            entries[name] = entry
        self._entries = entries

    def get(self, name: str) -> Backend:
        entry = self._entries.get(name)
        if entry is None:
            raise ValueError(
                f"unknown generation backend {name!r}; available: {sorted(self._entries)}, or 'auto' (the "
                "preferred one that runs the model and weight mode)"
            )
        if entry.backend is None and entry.error is None:
            try:
                entry.backend = entry.load()
            except Exception as e:  # noqa: BLE001 - reported now and on every later request
                entry.error = e
                warnings.warn(
                    f"the {name!r} generation back-end failed to load ({type(e).__name__}: {str(e).rstrip('.')}"
                    f"{_numba_settings()}); "
                    "backend='auto' uses the others",
                    RuntimeWarning,
                    stacklevel=3,
                )
        if entry.error is not None:
            raise BackendUnavailable(
                f"the {name!r} generation back-end cannot run here: it failed to load with "
                f"{type(entry.error).__name__}: {str(entry.error).rstrip('.')}{_numba_settings()}"
            ) from entry.error
        return entry.backend

    def loaded_or_none(self, name: str) -> Backend | None:
        try:
            return self.get(name)
        except BackendUnavailable:
            return None

    def auto_names(self) -> list[str]:
        return [name for name, e in self._entries.items() if e.auto]

    def pop(self, name: str, default=None):
        entry = self._entries.pop(name, None)
        return default if entry is None else entry

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._entries))

    def __len__(self) -> int:
        return len(self._entries)


def _import_loader(target: str) -> Callable[[], Backend]:
    module, _, attr = target.partition(":")
    if not module or not attr:
        raise ValueError(f"a lazy back-end is named 'package.module:attribute', got {target!r}")

    def load() -> Backend:
        obj = getattr(importlib.import_module(module), attr)
        return obj() if isinstance(obj, type) else obj

    return load


#: Every registered back-end by name (lazy ones included), ``auto`` candidates first.
BACKENDS = _Registry()


def register_backend(name: str, backend: Backend | Callable[[], Backend] | str, auto: bool = False) -> None:
    """Make a generation back-end available as ``backend=name``.

    Args:
        name: the name users pass (``generate(..., backend=name)``, ``--backend name``).
        backend: a :class:`Backend`, a factory returning one, or ``"package.module:attribute"``
            imported on first use (a class is instantiated with no arguments).
        auto: ``backend="auto"`` prefers this back-end (over those registered before it) for the
            models it can run.
    """
    if not isinstance(name, str) or not name or name == "auto":
        raise ValueError(f"a back-end name must be a non-empty string other than 'auto', got {name!r}")
    BACKENDS.register(name, backend, auto)


def unregister_backend(name: str) -> None:
    """Remove a back-end registered with :func:`register_backend` (no error if absent)."""
    BACKENDS.pop(name)


def get_backend(name: str) -> Backend:
    """The back-end registered as ``name``, loading it on first use.

    Raises:
        ValueError: for an unknown name (the message lists the known ones).
        BackendUnavailable: when its module failed to load (the message gives the cause).
    """
    return BACKENDS.get(name)


def resolve_backend(backend: str, model: WaveNet, weights: str = "fp32", batch_size: int = 1) -> str:
    """``backend`` itself, or for ``"auto"`` the preferred back-end that runs ``model`` in mode
    ``weights`` here (else ``torch``): the first candidate that can run it and
    :meth:`~Backend.prefers` it at ``batch_size``; failing that, the first that can run it.

    ``auto`` never changes the weight mode: when no back-end runs ``weights`` for this model,
    the result is ``torch`` for fp32 and a ``ValueError`` naming every back-end's reason otherwise.
    """
    check_weights(weights)
    if backend != "auto":
        return backend
    reasons, runs = [], []
    for name in BACKENDS.auto_names():
        impl = BACKENDS.loaded_or_none(name)
        if impl is None:
            continue
        why = impl.unsupported_reason(model, weights)
        if why is None:
            if impl.prefers(model, batch_size):
                return name
            runs.append(name)
        else:
            reasons.append(why)
    if weights == "fp32":
        return "torch"
    if runs:
        return runs[0]
    raise ValueError(f"no generation back-end runs weights={weights!r} for this model: " + "; ".join(reasons))


def stream_backend(backend: str, model: WaveNet, weights: str = "fp32") -> str:
    """The back-end that runs a stream (:attr:`SamplingRequest.continuation`): :func:`resolve_backend`'s,
    but ``torch`` where that is ``fast`` on CUDA (the CUDA-graph loop does not continue streams;
    both run only ``fp32`` there, so the weight mode is the same) or an ``auto`` choice that does
    not continue requests (:meth:`Backend.continues`).

    Raises:
        ValueError: a back-end named outright that does not continue requests.
    """
    name = resolve_backend(backend, model, weights)
    if get_backend(name).continues(model):
        return name
    if name == "fast" or backend == "auto":
        return "torch"
    raise ValueError(
        f"the {name!r} back-end does not continue requests (Backend.continues), which a stream needs: use "
        "backend='torch' or 'fast' for StreamingGenerator and StreamingVocoder, or generate() for one piece"
    )


def available_backends() -> list[str]:
    """Names usable as ``generate(..., backend=name)`` here, ``auto`` candidates first.

    Loads the lazily registered back-ends; one that fails to load is left out (with a warning).
    """
    return [name for name in BACKENDS if BACKENDS.loaded_or_none(name) is not None]


register_backend("torch", TorchBackend())
# The fused back-end: numba kernels on the CPU, CUDA graphs on a GPU. Imported on first use.
register_backend("fast", "wavedil.fast:FastBackend", auto=True)
