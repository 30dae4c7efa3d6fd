"""Fused generation back-ends: the whole per-sample loop in compiled code, same samples as ``torch``.

``fast`` runs sampling, the input embedding, every residual layer, the skip sum and the output
head of each new sample in one compiled loop (numba) over weights laid out for it
(:mod:`wavedil.fast.pack`), instead of ~300 framework calls per sample. It runs every output
head (``mulaw``, ``mol``, ``gaussian``) with speaker (global) and mel (local) conditioning, and
draws the same samples as the reference ``torch`` back-end from the same seed: sampling is the
same float64 inverse CDF as ``model.dist.sample`` over head parameters that agree to float32
rounding. (Same as far as float32 rounding allows: a draw that falls within that rounding of a
bin edge may differ, and the sequences then part. Over a 16-bit linear-bin head the bins are
narrow, so this happens more often than over 256 mu-law classes; see ``bench/README.md``.)

Importing this package registers ``fast`` in :data:`wavedil.generate.BACKENDS` when numba is
installed; numba itself is imported, and the kernels compiled (then cached on disk), on first
use. Devices: the CPU (numba kernels) and CUDA GPUs (the loop captured as CUDA graphs,
:mod:`wavedil.fast.cuda`); the per-device implementations sit in :data:`IMPLEMENTATIONS`.

>>> import wavedil
>>> from wavedil.fast import available_backends
>>> "torch" in available_backends()
True
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..generate import BACKENDS, Backend, register_backend
from ..layers import StackState
from ..model import WaveNet
from .cpu import CpuOptions, cpu_generate, cpu_teacher_forced_logits, kernels_available
from .cuda import cuda_available, cuda_generate, cuda_teacher_forced_logits
from .pack import unsupported_reason

__all__ = [
    "IMPLEMENTATIONS",
    "CpuOptions",
    "Implementation",
    "available_backends",
    "fast_backend",
    "make_fast_backend",
    "supports",
    "teacher_forced_logits",
]


@dataclass(frozen=True)
class Implementation:
    """What the ``fast`` name runs on one device type.

    Attributes:
        generate: the ``Backend`` call plus a trailing options argument (:class:`CpuOptions`)
            and the keyword ``local`` (the upsampled mel of a vocoder, or None).
        teacher_forced_logits: ``(model, codes (B, T), speaker, mel) -> params (B, P, T)``.
        available: whether the tool it compiles with works here (may import it).
    """

    generate: Callable[..., torch.Tensor]
    teacher_forced_logits: Callable[..., torch.Tensor]
    available: Callable[[], bool]


#: Device type -> implementation behind the ``fast`` name: numba kernels on the CPU, CUDA graphs
#: of the per-sample loop on a GPU (:mod:`wavedil.fast.cuda`).
IMPLEMENTATIONS: dict[str, Implementation] = {
    "cpu": Implementation(cpu_generate, cpu_teacher_forced_logits, kernels_available),
    "cuda": Implementation(cuda_generate, cuda_teacher_forced_logits, cuda_available),
}


def _model_device_dtype(model: WaveNet) -> tuple[torch.device, torch.dtype]:
    w = model.embed.weight
    return w.device, w.dtype


def _why_unsupported(model: WaveNet) -> str | None:
    """None when ``fast`` can run ``model``, else the reason."""
    device, dtype = _model_device_dtype(model)
    impl = IMPLEMENTATIONS.get(device.type)
    if impl is None:
        return f"the fast back-end has no implementation for device {device.type!r} (it has {sorted(IMPLEMENTATIONS)})"
    why = unsupported_reason(model)
    if why is not None:
        return why
    if dtype != torch.float32:
        return (
            "the fast back-end computes in float32 and gives the reference's samples only for a "
            f"float32 model, got {dtype}"
        )
    if not impl.available():
        need = "is numba installed and importable?" if device.type == "cpu" else "no usable CUDA device"
        return f"the fast back-end for {device.type!r} is not available here ({need})"
    return None


def supports(model: WaveNet) -> bool:
    """True when ``backend="fast"`` can run ``model`` here (device, dtype, compiled tool)."""
    return _why_unsupported(model) is None


def make_fast_backend(
    threads: int | None = None,
    split: bool | None = None,
    row_block: int = 16,
    blas_min_batch: int | None = None,
    chunk: int = 1024,
) -> Backend:
    """A ``fast`` back-end with its own thread and blocking settings (see :class:`CpuOptions`).

    Register it under a name of your own to use it, e.g. a single-threaded variant:
    ``register_backend("fast1", make_fast_backend(threads=1))``.

    Raises:
        ValueError: for an option out of range.
    """
    options = CpuOptions(threads=threads, split=split, row_block=row_block, blas_min_batch=blas_min_batch, chunk=chunk)

    def fast(
        model: WaveNet,
        state: StackState,
        logits: torch.Tensor,
        uniforms: torch.Tensor,
        temperature: float,
        speaker: torch.Tensor | None,
        progress: Callable[[int], None] | None,
        local: torch.Tensor | None = None,
    ) -> torch.Tensor:
        why = _why_unsupported(model)
        if why is not None:
            raise ValueError(why)
        impl = IMPLEMENTATIONS[_model_device_dtype(model)[0].type]
        return impl.generate(model, state, logits, uniforms, temperature, speaker, progress, options, local=local)

    return fast


def teacher_forced_logits(
    model: WaveNet, codes: torch.Tensor, speaker: torch.Tensor | None = None, mel: torch.Tensor | None = None
) -> torch.Tensor:
    """Head parameters ``(B, P, T)`` (logits for ``mulaw``) of the fast path fed ``codes (B, T)``
    one sample at a time.

    The fast path's counterpart of ``model(codes, speaker, mel)``: they agree to float32
    rounding. ``mel``: vocoders only, ``(B, n_mels, T / hop + 2 c)`` as ``forward`` takes it.

    Raises:
        ValueError: when the fast path cannot run ``model`` here (device, dtype, tool).
    """
    why = _why_unsupported(model)
    if why is not None:
        raise ValueError(why)
    return IMPLEMENTATIONS[_model_device_dtype(model)[0].type].teacher_forced_logits(model, codes, speaker, mel)


#: The registered ``fast`` back-end (default options).
fast_backend: Backend = make_fast_backend()


def available_backends() -> list[str]:
    """Names usable as ``generate(..., backend=name)`` in this environment, fastest first.

    ``torch`` is always there; ``fast`` when its compiled tool imports. ``"auto"`` is also
    accepted by :func:`wavedil.generate` and picks the first of these that supports the model.
    """
    names = [name for name in BACKENDS if name != "fast"]
    if "fast" in BACKENDS and any(impl.available() for impl in IMPLEMENTATIONS.values()):
        names.insert(0, "fast")
    return names


if importlib.util.find_spec("numba") is not None:  # cheap: finds numba without importing it
    register_backend("fast", fast_backend, auto=supports)
