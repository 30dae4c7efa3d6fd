"""Fused generation back-end: the whole per-sample loop in compiled code, same samples as ``torch``.

``fast`` runs sampling, the input embedding, every residual layer, the skip sum and the output
head of each new sample in one compiled loop (numba) over weights laid out for it
(:mod:`wavedil.fast.pack`), instead of ~300 framework calls per sample. It runs every output
head (``mulaw``, ``mol``, ``gaussian``) with speaker (global) and mel (local) conditioning.

Weight modes (``weights=``, :data:`wavedil.backends.WEIGHT_MODES`), on the CPU:

* ``fp32`` draws the same samples as the reference ``torch`` back-end from the same seed:
  sampling is the same float64 inverse CDF as ``model.dist.sample`` over head parameters that
  agree to float32 rounding. (A draw that falls within that rounding of a bin edge may differ,
  and the sequences then part; over a 16-bit linear-bin head the bins are narrow, so this
  happens more often than over 256 mu-law classes; see ``bench/README.md``.)
* ``bf16`` stores the five matrices of the loop as bfloat16 and ``int8`` as 8-bit codes with
  one float32 scale per output column (the head's last matrix as bfloat16,
  :data:`~wavedil.fast.pack.INT8_KEEPS_BF16`); activations, ring buffers and sums stay float32. Their
  head parameters stay within the bound the rounding of the weights implies (tested), and the
  same seed gives the same samples on the same machine.

Devices: the CPU (numba kernels, :mod:`wavedil.fast.cpu`) and CUDA GPUs (the loop captured as
CUDA graphs, :mod:`wavedil.fast.cuda`, fp32). :mod:`wavedil.backends` imports this package on
first use of the ``fast`` name; it fails to load when numba does not import (a required
dependency), and the registry then reports that cause.

>>> from wavedil.backends import get_backend
>>> get_backend("fast").name
'fast'
"""

from __future__ import annotations

import torch

from ..backends import (
    WEIGHT_MODES,
    Backend,
    Capabilities,
    SamplingRequest,
    available_backends,
    get_backend,
)
from ..model import WaveNet
from .cpu import ROW_BLOCK, CpuOptions, cpu_generate, cpu_teacher_forced_logits, load_kernels
from .cuda import cuda_generate, cuda_teacher_forced_logits
from .pack import unsupported_reason as _layers_unsupported

#: The largest batch for which ``auto`` picks the CUDA graphs over the eager step. Measured with
#: ref30 on an NVIDIA H200 (bench/README.md): the graphs made 2.8x the eager step's samples/s at
#: B = 1 (calls of 20,000 steps) and 0.33x at B = 64 and 256 (calls of 312 and 78 steps, each
#: with its graph capture); batches between, and long calls at large batches, were not measured.
CUDA_AUTO_MAX_BATCH = 1

__all__ = [
    "CUDA_AUTO_MAX_BATCH",
    "CpuOptions",
    "FastBackend",
    "available_backends",
    "make_fast_backend",
    "supports",
    "teacher_forced_logits",
]


class FastBackend(Backend):
    """The ``fast`` back-end: numba kernels on the CPU, CUDA graphs on a GPU.

    Args:
        options: thread and blocking settings of the CPU kernels (:class:`CpuOptions`); they do
            not apply on CUDA, where a back-end given options refuses to run.

    Raises:
        ImportError: when numba (a required dependency) does not import.
    """

    name = "fast"
    capabilities = Capabilities(devices={"cpu": WEIGHT_MODES, "cuda": ("fp32",)})

    def __init__(self, options: CpuOptions | None = None) -> None:
        load_kernels()  # numba imports here, or this back-end fails to load with the cause
        self.options = options

    def prefers(self, model: WaveNet, batch_size: int) -> bool:
        """On CUDA, ``auto`` takes the CUDA graphs up to :data:`CUDA_AUTO_MAX_BATCH` sequences and
        the eager ``torch`` step above (the same samples either way)."""
        return model.embed.weight.device.type != "cuda" or batch_size <= CUDA_AUTO_MAX_BATCH

    def unsupported_reason(self, model: WaveNet, weights: str = "fp32") -> str | None:
        why = super().unsupported_reason(model, weights) or _layers_unsupported(model)
        if why is not None:
            return why
        dtype = model.embed.weight.dtype
        if dtype != torch.float32:
            return (
                "the fast back-end computes in float32 and gives the reference's samples only for a "
                f"float32 model, got {dtype}: use model.float() or backend='torch'"
            )
        device = model.embed.weight.device
        if device.type == "cuda" and self.options is not None:
            return f"CPU options {self.options!r} do not apply to a model on {device}: use the default fast back-end"
        return None

    def prepare(self, request: SamplingRequest) -> None:
        """Compile (or load from numba's cache) the kernels ``request`` needs: one sample of it,
        discarded (the request's own tensors are not touched)."""
        if request.params.device.type != "cpu":
            return
        one = SamplingRequest(request.model, request.state, request.params, request.uniforms[:1],
                              request.temperature, request.speaker, local=request.local, weights=request.weights)  # fmt: skip
        self.sample(one)

    def continues(self, model: WaveNet) -> bool:
        return model.embed.weight.device.type == "cpu"  # the CUDA-graph loop does not continue streams

    def sample(self, request: SamplingRequest) -> torch.Tensor:
        self.check(request.model, request.weights)
        if request.params.device.type == "cuda":
            if request.continuation:
                raise ValueError("the CUDA-graph loop does not continue streams yet: use backend='torch' on CUDA")
            return cuda_generate(request)
        return cpu_generate(request, self.options)

    def teacher_forced(self, model, codes, speaker=None, mel=None, weights="fp32") -> torch.Tensor:
        self.check(model, weights)
        if model.embed.weight.device.type == "cuda":
            return cuda_teacher_forced_logits(model, codes, speaker, mel)
        return cpu_teacher_forced_logits(model, codes, speaker, mel, weights)


def make_fast_backend(
    threads: int | None = None,
    split: bool | None = None,
    row_block: int = ROW_BLOCK,
    chunk: int | None = None,
    pipe_rows: int | None = None,
) -> FastBackend:
    """A ``fast`` back-end with its own thread and blocking settings (see :class:`CpuOptions`).

    Register it under a name of your own to use it, e.g. a single-threaded variant:
    ``register_backend("fast1", make_fast_backend(threads=1))``.

    Raises:
        ValueError: for an option out of range.
    """
    return FastBackend(CpuOptions(threads=threads, split=split, row_block=row_block, chunk=chunk, pipe_rows=pipe_rows))


def supports(model: WaveNet, weights: str = "fp32") -> bool:
    """True when ``backend="fast"`` can run ``model`` in mode ``weights`` here."""
    return get_backend("fast").unsupported_reason(model, weights) is None


def teacher_forced_logits(
    model: WaveNet,
    codes: torch.Tensor,
    speaker: torch.Tensor | None = None,
    mel: torch.Tensor | None = None,
    weights: str = "fp32",
) -> torch.Tensor:
    """Head parameters ``(B, P, T)`` (logits for ``mulaw``) of the fast path fed ``codes (B, T)``
    one sample at a time, with the weights in mode ``weights``.

    The fast path's counterpart of ``model(codes, speaker, mel)``: in ``fp32`` they agree to
    float32 rounding; a reduced mode shows what its weights cost (``wavedil eval --weights``).
    ``mel``: vocoders only, ``(B, n_mels, T / hop + 2 c)`` as ``forward`` takes it.

    Raises:
        ValueError: when the fast path cannot run ``model`` here (device, dtype, mode).
    """
    return get_backend("fast").teacher_forced(model, codes, speaker, mel, weights)
