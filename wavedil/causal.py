"""Pure arithmetic of causal dilated convolutions: padding, dilation schedules, receptive fields.

No tensors of a model and no ``nn.Module`` here: these functions are what the layers in
:mod:`wavedil.layers` call and what the tests check directly. Sequences are ``(B, C, T)``.

The causal rule: a convolution with kernel ``k`` and dilation ``d`` sees the current sample and
``k - 1`` past samples spaced ``d`` apart, so it needs ``(k - 1) * d`` zeros of left padding
and none on the right::

    k = 3, d = 2            padding (k - 1) * d = 4
                            |<-- pad -->|
    input        time      -4 -3 -2 -1  0  1  2  3  4  5  6
                            0  0  0  0 x0 x1 x2 x3 x4 x5 x6
    output[4] =                        w0*x0 + w1*x2 + w2*x4
                                        ^       ^       ^
                                     t - 2d   t - d     t      (never t + 1 or later)

A stack of such layers sees ``1 + (k - 1) * sum(dilations)`` samples (its receptive field);
:func:`receptive_field_coverage` says whether every offset inside it is reachable.
"""

from __future__ import annotations

import operator
import warnings
from typing import Iterable, Sequence

import torch

__all__ = [
    "as_index",
    "check_positive_int",
    "check_dilations",
    "causal_padding",
    "dilation_schedule",
    "receptive_field",
    "receptive_field_coverage",
    "MAX_RECEPTIVE_FIELD",
    "check_receptive_field",
    "warn_if_gridded",
]


def check_positive_int(name: str, value: object, minimum: int = 1) -> int:
    """``value`` if it is an ``int`` (not a ``bool``) ``>= minimum``; else a ``ValueError`` naming ``name``.

    >>> check_positive_int("kernel_size", 3, 2)
    3
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def check_dilations(dilations: Sequence[int]) -> tuple[int, ...]:
    """``dilations`` as a tuple of ints ``>= 1`` (at least one); else a ``ValueError`` with the offender."""
    if isinstance(dilations, (str, bytes)) or not isinstance(dilations, Iterable):
        raise ValueError(f"dilations must be a sequence of integers such as (1, 2, 4, 8), got {dilations!r}")
    dilations = tuple(dilations)
    if len(dilations) == 0:
        raise ValueError("dilations must hold at least one layer, got an empty sequence")
    out = []
    for i, d in enumerate(dilations):
        # ints, and integer scalars of numpy / torch (their __index__), but never a float or a bool
        value = as_index(d)
        if value is None or value < 1:
            raise ValueError(f"dilations[{i}] must be an integer >= 1, got {d!r} in {dilations}")
        out.append(value)
    return tuple(out)


def _integral_dtype(value: object) -> bool:
    kind = getattr(getattr(value, "dtype", None), "kind", None)  # numpy
    if kind is not None:
        return kind in "iu"
    dtype = getattr(value, "dtype", None)
    return isinstance(dtype, torch.dtype) and not dtype.is_floating_point and not dtype.is_complex and dtype != torch.bool


def as_index(value: object) -> int | None:
    """``value`` as an ``int`` when it is an integer: a Python int, or a numpy or 0-dim torch
    integer (their ``__index__``); None for anything else, a bool and a float included (a
    float is refused, never rounded: 2.5 is not a layer size or a seed)."""
    if isinstance(value, (bool, float)) or (hasattr(value, "dtype") and not _integral_dtype(value)):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def causal_padding(kernel_size: int, dilation: int) -> int:
    """Left padding ``(k - 1) * d`` that makes a dilated convolution causal.

    >>> causal_padding(2, 512)
    512
    >>> causal_padding(3, 4)
    8
    """
    check_positive_int("kernel_size", kernel_size, 2)
    check_positive_int("dilation", dilation)
    return (kernel_size - 1) * dilation


def dilation_schedule(layers_per_stack: int, stacks: int = 1, base: int = 2) -> tuple[int, ...]:
    """Dilations ``1, base, base**2, ...`` for ``layers_per_stack`` layers, repeated ``stacks`` times.

    >>> dilation_schedule(4, 2)
    (1, 2, 4, 8, 1, 2, 4, 8)
    """
    check_positive_int("layers_per_stack", layers_per_stack)
    check_positive_int("stacks", stacks)
    check_positive_int("base", base)
    return tuple(base**i for i in range(layers_per_stack)) * stacks


def receptive_field(kernel_size: int, dilations: Sequence[int]) -> int:
    """Number of input samples (current one included) that one output of the stack sees.

    ``1 + (k - 1) * sum(dilations)``; for ref30 (kernel 2, 1..512 three times) that is 3070.

    >>> receptive_field(2, dilation_schedule(10, 3))
    3070
    """
    check_positive_int("kernel_size", kernel_size, 2)
    return 1 + (kernel_size - 1) * sum(check_dilations(dilations))


def receptive_field_coverage(kernel_size: int, dilations: Sequence[int]) -> float:
    """Fraction of the ``receptive_field`` input offsets reachable through the stack's paths.

    Every path through the residual stack either skips a layer (residual) or takes one of its
    ``k`` taps, so the reachable offsets are the subset sums ``sum_i m_i d_i`` with
    ``0 <= m_i < k``. A schedule with holes ("gridding") leaves some offsets unreachable.

    >>> receptive_field_coverage(2, (1, 2, 4))
    1.0
    >>> receptive_field_coverage(2, (2, 4))  # odd offsets are never reached
    0.5714285969734192
    """
    dilations = check_dilations(dilations)
    rf = receptive_field(kernel_size, dilations)
    # Taken in increasing order, each dilation no larger than the contiguous span [0, R) reached so
    # far extends it to [0, R + (k - 1) d); a larger one leaves R itself unreachable for good (every
    # later term exceeds it). So full coverage, the usual case, needs no table of the offsets.
    span = 1
    for d in sorted(dilations):
        if d > span:
            break
        span += (kernel_size - 1) * d
    else:
        return 1.0
    reach = torch.zeros(rf, dtype=torch.bool)
    reach[0] = True
    for d in dilations:
        new = reach.clone()
        for m in range(1, kernel_size):
            new[m * d :] |= reach[: rf - m * d]
        reach = new
    return float(reach.float().mean())


#: The largest receptive field a stack may have, in samples (17 minutes at 16 kHz): far beyond any
#: useful WaveNet, and the bound that keeps a mistyped depth (``layers_per_stack=40``: 2^40
#: samples) a clear error instead of an allocation of terabytes.
MAX_RECEPTIVE_FIELD = 2**24


def check_receptive_field(kernel_size: int, dilations: Sequence[int]) -> int:
    """The receptive field of the schedule, or a ``ValueError`` above :data:`MAX_RECEPTIVE_FIELD`."""
    rf = receptive_field(kernel_size, dilations)
    if rf > MAX_RECEPTIVE_FIELD:
        raise ValueError(
            f"dilations up to {max(dilations):,} ({len(dilations)} layers, kernel {kernel_size}) give a receptive field "
            f"of {rf:,} samples, over the limit of {MAX_RECEPTIVE_FIELD:,}: use fewer layers per stack (each one "
            "doubles it) and more stacks"
        )
    return rf


def warn_if_gridded(kernel_size: int, dilations: Sequence[int]) -> None:
    """Warn (``UserWarning``) when the schedule leaves holes in its receptive field."""
    check_receptive_field(kernel_size, dilations)
    cov = receptive_field_coverage(kernel_size, dilations)
    if cov < 1.0:
        warnings.warn(
            f"dilations {tuple(dilations)} with kernel {kernel_size} reach only {cov:.1%} of the "
            "receptive field (gridding): start each cycle at dilation 1 and grow by at most the kernel size",
            stacklevel=3,
        )
