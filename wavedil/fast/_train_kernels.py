"""Numba kernels of the gated layers' bf16 training path on the CPU (imported lazily: numba).

The elementwise work between the bf16 matrix products of :mod:`wavedil.gated_lowp`, fused so that
each kernel reads and writes every element once: the gate (with the conv bias and the
conditioning), the residual sum, the gate's backward and the dilated conv's input gradient.
torch would run each of those as several passes, with float32 <-> bfloat16 copies between them,
and on a CPU whose bf16 matrix products are fast (AMX) those passes, not the products, set the
speed of a training step.

A low-precision array is either **bf16 bits** (``uint16``, a bf16 tensor viewed through its
bits: the native path) or **float32 holding bf16 values** (the emulated path,
``trainer.precision=bf16-emulated``). Kernels load through :func:`ld` and store through
:func:`st_low`, which read either kind as float32 and round to bf16 (nearest even) on the way
out; so one kernel computes the same numbers for both paths and only the storage differs.
Arithmetic is float32, ``(rows, channels)`` row-major; rows are spread over numba's threads.
"""

from __future__ import annotations

import numba as nb
import numpy as np
from numba import prange, types
from numba.extending import overload

from ._kernels import _bits_f32, _f32_bits, exp_neg

__all__ = [
    "conv_input_grad", "gate_backward", "gate_forward", "relu_bias", "relu_grad", "residual_forward", "softmax_xent",
]

_JIT = dict(nogil=True, cache=True, parallel=True, fastmath={"contract"}, boundscheck=False, error_model="numpy")


def ld(a, i, j):
    """``a[i, j]`` as float32: bf16 bits widened, or a float32 value as it is."""


def st_low(a, i, j, v):
    """``a[i, j] =`` float32 ``v`` rounded to bf16 (nearest even): its bits, or its float32 value."""


def st1_low(a, i, v):
    """``a[i] =`` ``v`` rounded to bf16 (:func:`st_low` for a 1-D array)."""


def _round_bits(v):
    """The bf16 bits of float32 ``v`` rounded to nearest even (as an int64 in [0, 65535]); NaN -> 0x7FC0."""


@overload(_round_bits, jit_options=dict(nogil=True, cache=True))
def _round_bits_impl(v):
    def round_bits(v):
        b = np.int64(_f32_bits(v)) & np.int64(0xFFFFFFFF)
        r = ((b + np.int64(0x7FFF) + ((b >> 16) & np.int64(1))) >> 16) & np.int64(0xFFFF)
        return r if v == v else np.int64(0x7FC0)

    return round_bits


@overload(ld, jit_options=dict(nogil=True, cache=True))
def _ld_impl(a, i, j):
    if a.dtype == types.uint16:
        return lambda a, i, j: _bits_f32(np.int64(a[i, j]) << 16)
    return lambda a, i, j: np.float32(a[i, j])


def ld1(a, i):
    """``a[i]`` of a 1-D array as float32 (:func:`ld` for a flat array)."""


@overload(ld1, jit_options=dict(nogil=True, cache=True))
def _ld1_impl(a, i):
    if a.dtype == types.uint16:
        return lambda a, i: _bits_f32(np.int64(a[i]) << 16)
    return lambda a, i: np.float32(a[i])


@overload(st_low, jit_options=dict(nogil=True, cache=True))
def _st_low_impl(a, i, j, v):
    if a.dtype == types.uint16:

        def st_bits(a, i, j, v):
            a[i, j] = np.uint16(_round_bits(v))

        return st_bits

    def st_f32(a, i, j, v):
        a[i, j] = _bits_f32(_round_bits(v) << 16)

    return st_f32


@overload(st1_low, jit_options=dict(nogil=True, cache=True))
def _st1_low_impl(a, i, v):
    if a.dtype == types.uint16:

        def st1_bits(a, i, v):
            a[i] = np.uint16(_round_bits(v))

        return st1_bits

    def st1_f32(a, i, v):
        a[i] = _bits_f32(_round_bits(v) << 16)

    return st1_f32


@nb.njit(nogil=True, cache=True, fastmath={"contract"}, error_model="numpy")
def _tanh_sigmoid(a, b):
    """``(tanh(a), sigmoid(b))`` in float32 from one exponential each (absolute error ~1e-7)."""
    lo = np.float32(-40.0)
    ea = exp_neg(max(np.float32(-2.0) * abs(a), lo))
    eb = exp_neg(max(-abs(b), lo))
    t = (np.float32(1.0) - ea) / (np.float32(1.0) + ea)
    s = (np.float32(1.0) if b >= 0 else eb) / (np.float32(1.0) + eb)
    return (t if a >= 0 else -t), s


@nb.njit(**_JIT)
def gate_forward(h, bias, cond, cond_b, cond_t, steps, ts, z):
    """The gate of ``rows = B * steps`` rows: ``a, b = h + bias + cond`` (halves of ``G = 2 Z``),
    ``ts = [tanh(a), sigmoid(b)]`` and ``z = tanh(a) * sigmoid(b)``, each rounded to bf16.

    ``h (rows, G)`` low precision; ``bias (G,)`` float32; ``cond (cond_b * cond_t, G)`` (either
    kind; ``cond_b`` in {1, B}, ``cond_t`` in {1, steps}: a ``(cond_b, cond_t, G)`` term
    broadcast over the rows; one row of zeros for none); ``ts (rows, G)``, ``z (rows, Z)`` low
    precision. ``z`` is the product of the *rounded* ``tanh`` and ``sigmoid``, so the backward
    recomputes it exactly from ``ts``.
    """
    rows, G = h.shape
    Z = G // 2
    for m in prange(rows):
        cm = (m // steps if cond_b > 1 else 0) * cond_t + (m % steps if cond_t > 1 else 0)
        for c in range(Z):
            a = ld(h, m, c) + bias[c] + ld(cond, cm, c)
            b = ld(h, m, Z + c) + bias[Z + c] + ld(cond, cm, Z + c)
            t, s = _tanh_sigmoid(a, b)
            st_low(ts, m, c, t)
            st_low(ts, m, Z + c, s)
            st_low(z, m, c, ld(ts, m, c) * ld(ts, m, Z + c))


@nb.njit(**_JIT)
def residual_forward(x, r, bias, out):
    """``out = (r + bias) + x``: ``x (rows, R)`` float32, ``r (rows, R)`` low precision, ``bias (R,)``."""
    rows, R = x.shape
    for m in prange(rows):
        for c in range(R):
            out[m, c] = (ld(r, m, c) + bias[c]) + x[m, c]


@nb.njit(**_JIT)
def gate_backward(ts, gz, u, has_gz, has_u, gh, z, gb):
    """The gate's backward on ``rows`` rows: with ``g = gz + u`` (the gradient of ``z`` from the
    skip sum and from the residual product; either may be absent), ``gh = [g s (1 - t^2),
    g t s (1 - s)]`` rounded to bf16, ``z = t s`` recomputed (as the forward rounded it), and
    the column sums of ``gh`` (before rounding) in ``gb (chunks, G)`` float32, one row per chunk
    of rows (their sum is the conv bias's gradient).

    ``ts (rows, G)``, ``gz (rows, Z)``, ``u (rows, Z)``, ``gh (rows, G)``, ``z (rows, Z)``: low
    precision, C-contiguous; ``ts`` is the forward's.
    """
    rows, G = ts.shape
    Z = G // 2
    chunks = gb.shape[0]
    one = np.float32(1.0)
    for ch in prange(chunks):
        acc = np.zeros(G, np.float32)
        for m in range(ch * rows // chunks, (ch + 1) * rows // chunks):
            tr, gzr, ur, ghr, zr = ts[m], gz[m], u[m], gh[m], z[m]  # rows: 1-D, contiguous
            for c in range(Z):
                g = np.float32(0.0)
                if has_gz:
                    g += ld1(gzr, c)
                if has_u:
                    g += ld1(ur, c)
                t = ld1(tr, c)
                s = ld1(tr, Z + c)
                gs = g * s
                ga = gs * (one - t * t)
                gb_ = gs * t * (one - s)
                acc[c] += ga
                acc[Z + c] += gb_
                st1_low(ghr, c, ga)
                st1_low(ghr, Z + c, gb_)
                st1_low(zr, c, t * s)
        gb[ch] = acc


@nb.njit(**_JIT)
def conv_input_grad(g_res, has_res, gx, steps, k, dilation, out):
    """The dilated conv's input gradient, ``B * steps`` rows: ``out[b, t] = g_res[b, t] +
    sum_j gx[b, t + s_j, tap j]`` over the taps with ``t + s_j < steps`` (``s_j = (k-1-j)
    dilation``; tap ``j`` is columns ``j R : (j+1) R`` of ``gx``).

    ``g_res (rows, R)`` float32 (ignored unless ``has_res``), ``gx (rows, k R)`` low precision,
    ``out (rows, R)`` float32.
    """
    rows, R = out.shape
    for m in prange(rows):
        t = m % steps
        orow = out[m]
        if has_res:
            orow[:] = g_res[m]
        else:
            orow[:] = 0
        for j in range(k):
            sh = (k - 1 - j) * dilation
            if t + sh < steps:
                src = gx[m + sh]
                for c in range(R):
                    orow[c] += ld1(src, j * R + c)


# ----------------------------------------------------------------------------- the output head


@nb.njit(**_JIT)
def relu_bias(x, bias, out):
    """``out = relu(x + bias)`` rounded to bf16: ``x (rows, C)`` either kind, ``bias (C,)``
    float32, ``out (rows, C)`` low precision."""
    rows, C = x.shape
    zero = np.float32(0.0)
    for m in prange(rows):
        for c in range(C):
            st_low(out, m, c, max(ld(x, m, c) + bias[c], zero))


@nb.njit(**_JIT)
def relu_grad(g, a, scale, out, gsum):
    """The gradient through ``a = relu(.)``: ``out = scale * g`` where ``a > 0``, else 0, rounded
    to bf16, with its column sums (before rounding) per chunk of rows in ``gsum (chunks, C)``.
    ``g``, ``a``, ``out``: ``(rows, C)`` low precision, C-contiguous; ``scale`` float32."""
    rows, C = g.shape
    chunks = gsum.shape[0]
    zero = np.float32(0.0)
    for ch in prange(chunks):
        acc = np.zeros(C, np.float32)
        for m in range(ch * rows // chunks, (ch + 1) * rows // chunks):
            gr, ar, orow = g[m], a[m], out[m]
            for c in range(C):
                v = ld1(gr, c) * scale if ld1(ar, c) > zero else zero
                acc[c] += v
                st1_low(orow, c, v)
        gsum[ch] = acc


@nb.njit(**_JIT)
def softmax_xent(logits, bias, target, g, gsum, nll):
    """Softmax cross-entropy of ``rows`` rows: with ``v = logits + bias``, ``nll[ch]`` = the sum
    over chunk ``ch``'s rows of ``logsumexp(v) - v[target]`` (float64), and ``g = softmax(v) -
    onehot(target)`` (the gradient of the summed loss with respect to ``v``), rounded to bf16,
    with its column sums per chunk in ``gsum (chunks, Q)``.

    ``logits (rows, Q)`` low precision, ``bias (Q,)`` float32, ``target (rows,)`` int64 in
    ``[0, Q)``, ``g (rows, Q)`` low precision (may be ``logits`` itself).
    """
    rows, Q = logits.shape
    chunks = gsum.shape[0]
    lo = np.float32(-40.0)
    for ch in prange(chunks):
        acc = np.zeros(Q, np.float32)
        v = np.empty(Q, np.float32)
        e = np.empty(Q, np.float32)
        total = 0.0
        for m in range(ch * rows // chunks, (ch + 1) * rows // chunks):
            lr, gr = logits[m], g[m]
            mx = np.float32(-np.inf)
            for c in range(Q):
                v[c] = ld1(lr, c) + bias[c]
                mx = max(mx, v[c])
            se = np.float32(0.0)
            for c in range(Q):
                e[c] = exp_neg(max(v[c] - mx, lo))
                se += e[c]
            inv = np.float32(1.0) / se
            tg = target[m]
            total += np.float64(mx) + np.log(np.float64(se)) - np.float64(v[tg])
            for c in range(Q):
                p = e[c] * inv - (np.float32(1.0) if c == tg else np.float32(0.0))
                acc[c] += p
                st1_low(gr, c, p)
        gsum[ch] = acc
        nll[ch] = total
