"""bfloat16 matmul numerics at float32 speed, for CPUs whose bf16 matmuls are emulated (slow).

``trainer.precision=bf16`` autocasts every matrix product to bfloat16: each product takes bf16
operands, accumulates in float32 and returns a bf16 result, and its backward does the same
with the gradients. On CPUs without ``avx512_bf16`` / ``amx_bf16`` oneDNN emulates those
products and a training step takes several times as long as in float32, so whether bf16
training converges as float32 does cannot be checked there in useful time.

:class:`Bf16MatmulEmulation` computes the same values at about float32 speed: inside it, every
matrix product (``conv1d``, ``linear``, ``matmul``, ``mm``, ``addmm``, ``bmm`` ... the ops CPU
autocast lowers to bf16) rounds its operands to bfloat16 (round to nearest even), multiplies in
float32 and rounds the result to bfloat16, all kept in float32 tensors; the backward rounds the
incoming and outgoing gradients the same way (:func:`round_bf16`). The product of two bf16
numbers is exact in float32, so a float32 GEMM on rounded operands equals a bf16 GEMM with
float32 accumulation up to the order of the summation. What is not emulated: elementwise ops
that autocast would run on bf16 tensors (a bias add or activation after a product) run on the
rounded values in float32 here. The gated layers' fast paths compute the same numbers in both:
on the CPU :func:`wavedil.gated_lowp.run_layers_lowp` runs the same kernels on bf16 bits (native)
or on float32 holding bf16 values (here), and elsewhere :class:`wavedil.gated.GatedLayerFunction`
keeps its elementwise work in float32 under both, so they agree up to summation order.
"""

from __future__ import annotations

import threading
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

__all__ = ["round_bf16", "Bf16MatmulEmulation", "bf16_emulation_active", "EMULATED_OPS"]

#: Names of the torch functions / Tensor methods whose operands and results are rounded.
EMULATED_OPS = frozenset(
    {
        "conv1d", "conv2d", "conv_transpose1d", "linear", "matmul", "mm", "bmm", "addmm", "baddbmm", "addbmm",
        "__matmul__", "__rmatmul__",
    }
)  # fmt: skip

_state = threading.local()


def bf16_emulation_active() -> bool:
    """True inside a :class:`Bf16MatmulEmulation` block on this thread."""
    return getattr(_state, "depth", 0) > 0


class _RoundBf16(torch.autograd.Function):
    """Round to bfloat16 values (kept in the input's dtype); the backward rounds the gradient."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.to(torch.bfloat16).to(x.dtype)

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> torch.Tensor:
        return g.to(torch.bfloat16).to(g.dtype)


def round_bf16(x: Any) -> Any:
    """``x`` rounded to the nearest bfloat16 values, still in its float32 dtype; other inputs as given.

    Differentiable: the gradient is rounded to bfloat16 the same way (as the backward of a
    cast to bf16 and back would see it under autocast). Non-float32 tensors and non-tensors
    (``None``, ints, strides) pass through unchanged.
    """
    if not isinstance(x, torch.Tensor) or x.dtype != torch.float32:
        return x
    if x.requires_grad and torch.is_grad_enabled():
        return _RoundBf16.apply(x)
    return x.to(torch.bfloat16).to(torch.float32)


class Bf16MatmulEmulation(TorchFunctionMode):
    """A context in which float32 matrix products compute what bf16 autocast's would.

    Example::

        with Bf16MatmulEmulation():
            loss = model.loss(codes)      # every product on bf16-rounded operands and results
        loss.backward()                   # gradients rounded to bf16 around every product

    Thread-local, as autocast is. See the module docstring for what is and is not emulated.
    """

    def __enter__(self):
        _state.depth = getattr(_state, "depth", 0) + 1
        try:
            return super().__enter__()
        except BaseException:
            _state.depth -= 1
            raise

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            _state.depth -= 1

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__name__", "") not in EMULATED_OPS or "out" in kwargs:
            return func(*args, **kwargs)
        args = tuple(round_bf16(a) for a in args)
        kwargs = {k: round_bf16(v) for k, v in kwargs.items()}
        return round_bf16(func(*args, **kwargs))
