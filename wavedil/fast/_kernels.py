"""Numba kernels of the fused CPU generation loop (imported lazily: it imports numba).

Every kernel runs whole stretches of the per-sample loop -- sampling, input embedding, all
residual layers, the skip sum and the output head -- in compiled code over the arrays of a
:class:`wavedil.fast.pack.PackedWaveNet`. Nothing here allocates per sample or touches Python.

Matrix products are written as ``C[r, :] += A[r, j] * W[j, :]`` (weights stored ``(in, out)``):
the innermost loop runs over contiguous output columns, so LLVM vectorises it without
reassociating any sum, and every output is accumulated in the same order on every call. Blocks
of two rows or more go by register tiles (:mod:`wavedil.fast._tiles`) that make the same
operations in the same order, so one row gives the same bits alone or in any batch.

The kernels slice their arrays through views without an owner (:func:`_unowned`): a slice of
an owned array costs an atomic reference count, and two threads slicing the same weights
contend for its cache line at every layer.

Two kernels:

* :func:`run_rows` -- a slice of batch rows advanced by one thread, layer by layer (the weights
  of one layer are reused by every row while they sit in cache). Several threads run it on
  disjoint slices with no synchronisation at all.
* :func:`run_pipe` -- one sequence, or every row of a small batch, on two threads: one runs
  the chain of dilated convs, gates and residual products, the other follows it with the skip
  products and the next sample's taps on the past; they share the head. Batch 1 and small
  batches are limited by how fast the weights (~5 MB in float32) stream from the caches; the
  pipeline gives each core about half of them and no barrier per layer. It is compiled in a
  one-row form (1-D row arrays, the one-row products) and a block form.

The output head gives ``P`` parameters per sample; :func:`draw` samples from them as
``model.dist.sample`` does, in float64:

* ``mulaw`` (:data:`HEAD_MULAW`, ``P = Q`` logits) repeats
  :func:`wavedil.distributions.sample_categorical`: softmax of ``logits / T`` as
  ``exp(l - max)``, running sum, first index whose cumulative sum reaches ``u * total``
  (``searchsorted`` left; ``u`` at least ``2**-54``), clamped to ``Q - 1``; ``T == 0`` takes the first argmax.
* ``mol`` (:data:`HEAD_MOL`, ``P = 3K``): the component as above from the ``K`` logits and the
  first uniform, then ``mean + exp(max(log_scale, min)) * T * w`` put in its linear bin, where
  ``w = log(v) - log1p(-v)`` of the second uniform ``v`` is computed beforehand by torch.
* ``gaussian`` (:data:`HEAD_GAUSSIAN`, ``P = 2``): the same with ``w = ndtri(v)`` (torch).

The bin is ``clamp(rint((x + 1) * Q/2), 0, Q - 1)`` (round half to even, as ``torch.round``).
These float64 steps are compiled without any fast-math flag, in the reference's order.
"""

from __future__ import annotations

import os
import platform

import numba as nb
import numpy as np
from llvmlite import binding as llvm_binding
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from ._tiles import axpy_tiles, int8_tiles

__all__ = [
    "HEAD_GAUSSIAN",
    "HEAD_MOL",
    "HEAD_MULAW",
    "cond_bias",
    "draw",
    "exp_neg",
    "exp_reduced",
    "gate_inplace",
    "run_pipe",
    "run_rows",
]

_HAS_SCHED_YIELD = os.name == "posix"
_IS_X86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686", "x86")

_JIT = dict(nogil=True, cache=True, fastmath={"contract"}, boundscheck=False, error_model="numpy")
# the float64 sampling arithmetic: no fast-math flag at all, so no fused multiply-add either
_JIT_EXACT = dict(nogil=True, cache=True, boundscheck=False, error_model="numpy")

#: ``head`` codes of the kernels: what the ``P`` head outputs parameterise
HEAD_MULAW, HEAD_MOL, HEAD_GAUSSIAN = 0, 1, 2

# ----------------------------------------------------------------------------- atomics


@intrinsic
def _atomic_add(typingctx, arr, idx, val):
    """``old = arr[idx]; arr[idx] += val`` atomically (sequentially consistent); int64 arrays."""
    if not (isinstance(arr, types.Array) and arr.dtype == types.int64):
        return None
    sig = types.int64(arr, idx, val)

    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [args[1]])
        v = context.cast(builder, args[2], signature.args[2], types.int64)
        return builder.atomic_rmw("add", ptr, v, "seq_cst")

    return sig, codegen


@intrinsic
def _atomic_load(typingctx, arr, idx):
    """``arr[idx]`` read with acquire ordering (never hoisted out of a spin loop)."""
    if not (isinstance(arr, types.Array) and arr.dtype == types.int64):
        return None
    sig = types.int64(arr, idx)

    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [args[1]])
        return builder.load_atomic(ptr, "acquire", 8, typ=ir.IntType(64))

    return sig, codegen


@intrinsic
def _cpu_relax(typingctx):
    """A spin-wait hint (x86 ``pause``); a plain compiler barrier elsewhere."""
    sig = types.void()

    def codegen(context, builder, signature, args):
        if _IS_X86:
            fn = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ir.VoidType(), []), "llvm.x86.sse2.pause"
            )
            builder.call(fn, [])
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _yield_cpu(typingctx):
    """Give this thread's core away for a moment (POSIX ``sched_yield``; a no-op elsewhere).

    Declared as an external symbol, resolved in the running process, so the kernels stay
    cacheable (a ctypes pointer would not be).
    """
    sig = types.void()

    def codegen(context, builder, signature, args):
        if _HAS_SCHED_YIELD:
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.IntType(32), []), "sched_yield")
            builder.call(fn, [])
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _cycles(typingctx):
    """The CPU's time-stamp counter (x86 ``rdtsc``); 0 on other machines, where only spins count."""
    sig = types.int64()

    def codegen(context, builder, signature, args):
        if not _IS_X86:
            return context.get_constant(types.int64, 0)
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.IntType(64), []), "llvm.readcyclecounter"
        )
        return builder.call(fn, [])

    return sig, codegen


#: A wait longer than this (time-stamp cycles, ~0.1 ms; or spins where there is no counter)
#: means the partner was descheduled, not merely slower: the waiting thread then gives its
#: core away between checks, and the wait counts as "long".
_LONG_WAIT_CYCLES = 250_000
_LONG_WAIT_SPINS = 20_000


@nb.njit(**_JIT)
def _barrier(sync, parties, target):
    """Wait until all ``parties`` threads arrived; ``target`` is this thread's running goal.

    ``sync[0]`` only grows (one arrival each), so no reset is needed between rounds. Returns
    ``(next goal, long, cycles)`` with ``long, cycles`` as :func:`_wait_until`'s: a partner that
    keeps being descheduled (another process on its core) shows up as long waits.
    """
    target += parties
    _atomic_add(sync, 0, 1)
    long_wait, waited = _wait_until(sync, 0, target)
    return target, long_wait, waited


@nb.njit(**_JIT)
def _wait_until(sync, idx, target):
    """Spin until ``sync[idx] >= target`` (a counter other threads raise with :func:`_atomic_add`;
    what they wrote before raising it is visible after). Returns ``(long, cycles)``: 1 if the
    wait was long (the writer was descheduled; this thread then yields its core between checks)
    else 0, and the time-stamp cycles waited (0 without a wait, or without a counter). A target
    already reached costs one load: no clock is read."""
    if _atomic_load(sync, idx) >= target:
        return 0, np.int64(0)
    spins = 0
    long_wait = 0
    start = _cycles()
    while _atomic_load(sync, idx) < target:
        _cpu_relax()
        spins += 1
        if spins % 64 == 0 and (
            long_wait or (_cycles() - start > _LONG_WAIT_CYCLES if _IS_X86 else spins > _LONG_WAIT_SPINS)
        ):
            long_wait = 1
            _yield_cpu()
    return long_wait, _cycles() - start


@intrinsic
def _unowned(typingctx, a):
    """A view of the array ``a`` without its owner (null ``meminfo`` and ``parent``).

    Every slice of an array (``w[i]``, ``ring[slot, r0:]``) takes and drops a reference to the
    array's owner with an atomic add; threads that slice the same (shared) weights and rings keep
    passing that cache line between cores: 8% of a B = 256 step on the Xeon went to it. Slices of
    an unowned view count nothing. Only for arrays that the caller keeps alive for the whole call
    (the kernels' arguments), never for arrays the kernel itself allocates.
    """
    if not isinstance(a, types.Array):
        return None
    sig = a(a)

    def codegen(context, builder, signature, args):
        view = context.make_array(a)(context, builder, value=args[0])
        view.meminfo = cgutils.get_null_value(view.meminfo.type)
        view.parent = cgutils.get_null_value(view.parent.type)
        return view._getvalue()

    return sig, codegen


@intrinsic
def _keep_alive(typingctx, a, b, c, d, e):
    """Nothing, but a use of five arrays: an owner whose unowned views (:func:`_unowned`) a
    kernel uses stays alive up to this call (numba drops a reference after its last use)."""
    sig = types.none(a, b, c, d, e)

    def codegen(context, builder, signature, args):
        return context.get_dummy_value()

    return sig, codegen


@nb.njit(**_JIT)
def _unowned_scales(sc):
    """:func:`_unowned` of each of the kernels' five scale arrays."""
    return _unowned(sc[0]), _unowned(sc[1]), _unowned(sc[2]), _unowned(sc[3]), _unowned(sc[4])


# ----------------------------------------------------------------------------- math


@intrinsic
def _pow2_neg(typingctx, m):
    """``2.0 ** -m`` from its exponent bits (exact): float32 for an int32 ``m`` in ``[0, 126]``,
    float64 for an int64 ``m`` in ``[0, 1022]``."""
    if m not in (types.int32, types.int64):
        return None
    double = m == types.int64
    sig = (types.float64 if double else types.float32)(m)
    width, bias, mantissa = (64, 1023, 52) if double else (32, 127, 23)

    def codegen(context, builder, signature, args):
        it = ir.IntType(width)
        bits = builder.shl(builder.sub(ir.Constant(it, bias), args[0]), ir.Constant(it, mantissa))
        return builder.bitcast(bits, ir.DoubleType() if double else ir.FloatType())

    return sig, codegen


@nb.njit(**_JIT)
def exp_neg(x):
    """``exp(x)`` in float32 for ``x`` in ``[-40, 0]`` (clamp first), branch-free and vectorisable.

    ``exp(x) = 2**-m * exp(r)`` with ``m = round(-x / ln 2)`` in ``[0, 58]`` and ``|r| <= ln2/2``;
    ``2**-m`` is built exactly from its exponent bits; ``exp(r)`` is its Taylor series to
    degree 7 (truncation error < 1e-8 relative). All in 32-bit lanes, so it vectorises on AVX2
    too (AVX2 has no 64-bit integer to float conversion: an int64 ``m`` kept the gate scalar).
    """
    m = np.int32(x * np.float32(-1.4426950408889634) + np.float32(0.5))
    return exp_reduced(x, np.float32(m)) * _pow2_neg(m)


@nb.njit(**_JIT)
def exp_reduced(x, mf):
    """``exp(x + mf * ln 2)`` for ``|x + mf * ln 2| <= ln2/2`` (``mf`` a whole number, float32):
    ``ln 2`` split in two parts for an exact reduction, then the Taylor series to degree 7."""
    r = x + mf * np.float32(0.693359375) + mf * np.float32(-2.12194440e-4)
    p = np.float32(1.0 / 5040.0)
    p = p * r + np.float32(1.0 / 720.0)
    p = p * r + np.float32(1.0 / 120.0)
    p = p * r + np.float32(1.0 / 24.0)
    p = p * r + np.float32(1.0 / 6.0)
    p = p * r + np.float32(0.5)
    p = p * r + np.float32(1.0)
    return p * r + np.float32(1.0)


@nb.njit(**_JIT_EXACT)
def exp_neg64(x):
    """``exp(x)`` in float64 for ``x <= 0`` (``x < -700`` is taken as -700: ~1e-304, not 0), within
    one unit in the last place, branch-free, so a loop of it vectorises (a libm call does not).

    ``exp(x) = 2**-m * exp(r)``, ``m = round(-x / ln 2)`` in ``[0, 1010]``: the reduction with
    fdlibm's two-part ``ln 2`` (``m * hi`` is exact), ``exp(r)`` its Taylor series to degree 13
    (``|r| <= ln2/2``: truncation < 1e-17 relative), ``2**-m`` from its exponent bits. Measured
    against 40-digit values: 0.94 ulp at most (libm's: 0.50); it differs from libm's by one ulp
    in about 10% of arguments (as torch's vectorised exponential does).
    """
    x = max(x, -700.0)
    m = np.int32(x * -1.4426950408889634 + 0.5)
    mf = np.float64(m)
    r = (x + mf * 6.93147180369123816490e-01) + mf * 1.90821492927058770002e-10
    p = 1.0 / 6227020800.0
    p = p * r + 1.0 / 479001600.0
    p = p * r + 1.0 / 39916800.0
    p = p * r + 1.0 / 3628800.0
    p = p * r + 1.0 / 362880.0
    p = p * r + 1.0 / 40320.0
    p = p * r + 1.0 / 5040.0
    p = p * r + 1.0 / 720.0
    p = p * r + 1.0 / 120.0
    p = p * r + 1.0 / 24.0
    p = p * r + 1.0 / 6.0
    p = p * r + 0.5
    p = p * r + 1.0
    p = p * r + 1.0
    return p * _pow2_neg(np.int64(m))


@nb.njit(**_JIT)
def gate_inplace(h, z, n):
    """``z[c] = tanh(h[c]) * sigmoid(h[n + c])`` for ``c < n``; ``h (2n,)``, ``z (n,)``, float32.

    Uses ``tanh|a| = (1 - e) / (1 + e)`` with ``e = exp(-2|a|)`` and
    ``sigmoid(b) = (1 or e') / (1 + e')`` with ``e' = exp(-|b|)``: one exponential per input,
    one division per output, absolute error about 1e-7.
    """
    lo = np.float32(-40.0)
    for c in range(n):
        a = h[c]
        b = h[n + c]
        ea = exp_neg(max(np.float32(-2.0) * abs(a), lo))
        eb = exp_neg(max(-abs(b), lo))
        num = (np.float32(1.0) - ea) * (np.float32(1.0) if b >= 0 else eb)
        den = (np.float32(1.0) + ea) * (np.float32(1.0) + eb)
        t = num / den
        z[c] = t if a >= 0 else -t


# ----------------------------------------------------------------------------- weight formats
#
# A matrix of the kernels is in one of three formats, told apart by its dtype when numba
# compiles a kernel for it (one specialisation each):
#   float32 -- the exact mode: ``w (in, out)`` itself;
#   uint16  -- ``(in, out)`` bfloat16 bit patterns: the float32 whose high half they are
#              (float32 arithmetic on the widened weights);
#   int8    -- symmetric 8-bit codes ``q`` with one float32 scale per output column ``sc[o]``
#              (``w = q * sc``), in blocks of row pairs ``(n8/8, kp, 8, 2)``, multiplied in integers with the
#              input rounded to int16 (see "int8 x int16" below).
# Every kernel that takes a matrix also takes its scales ``sc (out,)`` (ignored unless int8).


@intrinsic
def _bf16_to_f32(typingctx, v):
    """The float32 whose high 16 bits are the uint16 ``v`` (a bfloat16 widened; exact)."""
    if v != types.uint16:
        return None
    sig = types.float32(v)

    def codegen(context, builder, signature, args):
        wide = builder.zext(args[0], ir.IntType(32))
        return builder.bitcast(builder.shl(wide, ir.Constant(ir.IntType(32), 16)), ir.FloatType())

    return sig, codegen


def _acc8(v, s0, s1, s2, s3, s4, s5, s6, s7, w0, w1, w2, w3, w4, w5, w6, w7, sc, o):
    """``v + sum_m s_m * W[m, o]`` over eight weight rows ``w_m``, in the order m = 0..7."""


def _acc1(v, s0, w0, sc, o):
    """``v + s0 * W[o]`` for one weight row ``w0``."""


@overload(_acc8, jit_options=dict(fastmath={"contract"}))
def _acc8_impl(v, s0, s1, s2, s3, s4, s5, s6, s7, w0, w1, w2, w3, w4, w5, w6, w7, sc, o):
    dtype = w0.dtype
    if dtype == types.float32:

        def acc8(v, s0, s1, s2, s3, s4, s5, s6, s7, w0, w1, w2, w3, w4, w5, w6, w7, sc, o):
            v += s0 * w0[o]
            v += s1 * w1[o]
            v += s2 * w2[o]
            v += s3 * w3[o]
            v += s4 * w4[o]
            v += s5 * w5[o]
            v += s6 * w6[o]
            v += s7 * w7[o]
            return v

        return acc8
    if dtype == types.uint16:

        def acc8_bf16(v, s0, s1, s2, s3, s4, s5, s6, s7, w0, w1, w2, w3, w4, w5, w6, w7, sc, o):
            # two independent chains of four: half the latency of one chain of eight
            a = v + s0 * _bf16_to_f32(w0[o])
            b = s1 * _bf16_to_f32(w1[o])
            a += s2 * _bf16_to_f32(w2[o])
            b += s3 * _bf16_to_f32(w3[o])
            a += s4 * _bf16_to_f32(w4[o])
            b += s5 * _bf16_to_f32(w5[o])
            a += s6 * _bf16_to_f32(w6[o])
            b += s7 * _bf16_to_f32(w7[o])
            return a + b

        return acc8_bf16
    return None


def _decode8(w, j, n, out):
    """``out[m, :n] =`` row ``j + m`` of ``w`` widened to float32, exactly, m < 8."""


def _acc8_wide(v, s0, s1, s2, s3, s4, s5, s6, s7, f0, f1, f2, f3, f4, f5, f6, f7, sc, o, w):
    """:func:`_acc8` of a reduced format over rows already widened by :func:`_decode8` (``w``
    only tells the format): the same arithmetic, so the same bits, as the fused form."""


def _is_reduced(w):
    """True (a compile-time constant) for bf16, False for float32 (the formats of the float loops)."""


@overload(_is_reduced)
def _is_reduced_impl(w):
    reduced = w.dtype != types.float32
    return lambda w: reduced


@overload(_decode8, jit_options=dict(fastmath={"contract"}))
def _decode8_impl(w, j, n, out):
    if w.dtype == types.float32:  # typed for the float32 kernels, never run (see _is_reduced)

        def decode8_f32(w, j, n, out):
            for m in range(8):
                out[m, :n] = w[j + m, :n]

        return decode8_f32
    if w.dtype == types.uint16:

        def decode8_bf16(w, j, n, out):
            for m in range(8):
                row = w[j + m]
                dst = out[m]
                for o in range(n):
                    dst[o] = _bf16_to_f32(row[o])

        return decode8_bf16
    return None


@overload(_acc8_wide, jit_options=dict(fastmath={"contract"}))
def _acc8_wide_impl(v, s0, s1, s2, s3, s4, s5, s6, s7, f0, f1, f2, f3, f4, f5, f6, f7, sc, o, w):
    if w.dtype == types.float32:  # typed for the float32 kernels, never run (see _is_reduced)
        return lambda v, s0, s1, s2, s3, s4, s5, s6, s7, f0, f1, f2, f3, f4, f5, f6, f7, sc, o, w: v
    if w.dtype == types.uint16:

        def acc8_wide_bf16(v, s0, s1, s2, s3, s4, s5, s6, s7, f0, f1, f2, f3, f4, f5, f6, f7, sc, o, w):
            a = v + s0 * f0[o]
            b = s1 * f1[o]
            a += s2 * f2[o]
            b += s3 * f3[o]
            a += s4 * f4[o]
            b += s5 * f5[o]
            a += s6 * f6[o]
            b += s7 * f7[o]
            return a + b

        return acc8_wide_bf16
    return None


@overload(_acc1, jit_options=dict(fastmath={"contract"}))
def _acc1_impl(v, s0, w0, sc, o):
    dtype = w0.dtype
    if dtype == types.float32:
        return lambda v, s0, w0, sc, o: v + s0 * w0[o]
    if dtype == types.uint16:
        return lambda v, s0, w0, sc, o: v + s0 * _bf16_to_f32(w0[o])
    return None


# ----------------------------------------------------------------------------- int8 x int16
#
# The int8 mode multiplies in integers: each input vector is rounded to int16 with one scale
# (``xs = max|x| / qmax``), its products with the int8 weights are summed exactly in int32, and
# the sum is converted once: ``y[o] += float32(isum[o]) * (sc[o] * xs)``. Integer sums do not
# depend on their order, so every code path (AVX2 ``pmaddwd``, the plain loop, one row or a
# block of rows by register tiles, :func:`wavedil.fast._tiles.int8_tiles`) gives the same bits.
# The weights are stored in blocks of 8 outputs by row pairs (:func:`wavedil.fast.pack.pair_rows`):
# ``w (n8/8, kp, 8, 2)``, ``w[b, j, c]`` holding ``W[2j, 8b + c], W[2j + 1, 8b + c]`` side by
# side, input rows padded with zeros to a multiple of 8 (``kp = ceil(k / 8) * 4`` pairs) and
# outputs to a multiple of 8 (``n8``), so ``pmaddwd`` makes 16 products per instruction out of 16
# weight bytes.

_I16_MAX = 32767
_HAS_AVX2 = _IS_X86 and bool(llvm_binding.get_host_cpu_features().get("avx2", False))


@nb.njit(**_JIT)
def pair_count(k):
    """Row pairs ``kp`` of a paired int8 matrix with ``k`` input rows (a multiple of 4)."""
    return ((k + 7) // 8) * 4


@nb.njit(**_JIT)
def int16_limit(k):
    """The largest int16 input magnitude for which ``k`` products with int8 weights
    (``|w| <= 127``) cannot overflow an int32 sum: 32767, or less for ``k > 516``."""
    if k <= 516:  # 516 products of 32767 x 127 fit (the usual case: no division)
        return np.int64(_I16_MAX)
    return np.int64(2**31 - 1) // (127 * 2 * pair_count(k))


@intrinsic
def _f32_bits(typingctx, v):
    """The bits of float32 ``v`` as an int32."""
    if v != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.int32(v), codegen


@intrinsic
def _abs_bits(typingctx, v):
    """The bits of ``|v|`` (float32 ``v``) as an int32: non-negative, ordered as the magnitudes
    (NaNs above infinity). Typed int32 throughout, where numba would widen ``bits & mask`` to int64."""
    if v != types.float32:
        return None

    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        return builder.and_(builder.bitcast(args[0], i32), ir.Constant(i32, 0x7FFFFFFF))

    return types.int32(v), codegen


@intrinsic
def _bits_f32(typingctx, b):
    """The float32 whose bits are the low 32 bits of the integer ``b``."""
    if not isinstance(b, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(builder.trunc(args[0], ir.IntType(32)) if b.bitwidth > 32 else args[0], ir.FloatType())

    return types.float32(b), codegen


def _make_dot8(blocks):
    """An intrinsic ``dot(isum, o, w, w_off, xq, kp, stride)``: ``isum[o : o + 8 * blocks] =
    sum_j xq[j] * W[j, o : o + 8 * blocks]`` in int32 with AVX2's ``pmaddwd``, over ``kp`` row
    pairs. Each block of 8 outputs is ``kp * 16`` bytes of ``w`` (int8, flat; the first from
    ``w_off``, the next ``stride * 16`` bytes after it), one row pair (8 outputs x 2 rows) per
    16 bytes; ``xq`` int16, read as int32 pairs. Each pair is broadcast once for all ``blocks``."""

    @intrinsic
    def dot(typingctx, isum, o, w, w_off, xq, kp, stride):
        sig = types.void(isum, o, w, w_off, xq, kp, stride)

        def codegen(context, builder, signature, args):
            i8, i16, i32 = ir.IntType(8), ir.IntType(16), ir.IntType(32)
            v8i32, v16i16, v16i8 = ir.VectorType(i32, 8), ir.VectorType(i16, 16), ir.VectorType(i8, 16)
            isum_a = context.make_array(signature.args[0])(context, builder, args[0])
            w_a = context.make_array(signature.args[2])(context, builder, args[2])
            xq_a = context.make_array(signature.args[4])(context, builder, args[4])
            out = builder.gep(builder.bitcast(isum_a.data, i32.as_pointer()), [args[1]])
            wbase = builder.gep(builder.bitcast(w_a.data, i8.as_pointer()), [args[3]])
            pairs = builder.bitcast(xq_a.data, i32.as_pointer())
            kp = args[5]
            stride = context.cast(builder, args[6], signature.args[6], signature.args[5])
            block_bytes = builder.shl(stride, ir.Constant(kp.type, 4))
            pmadd = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(v8i32, [v16i16, v16i16]), "llvm.x86.avx2.pmadd.wd"
            )
            # two sums per block, of the even and the odd pairs: a CPU with VNNI fuses each
            # multiply-add into one vpdpwssd, whose latency would otherwise bound one long chain
            # (integer sums: the same result in any order)
            zero = ir.Constant(v8i32, [0] * 8)
            accs = [[cgutils.alloca_once_value(builder, zero) for _ in range(2)] for _ in range(blocks)]

            def step(jp, chain):
                pair = builder.load(builder.gep(pairs, [jp]), align=4)
                splat = builder.bitcast(
                    builder.shuffle_vector(
                        builder.insert_element(ir.Constant(v8i32, None), pair, ir.Constant(i32, 0)),
                        ir.Constant(v8i32, None),
                        ir.Constant(v8i32, [0] * 8),
                    ),
                    v16i16,
                )
                row = builder.shl(jp, ir.Constant(jp.type, 4))
                for blk in range(blocks):
                    off = builder.add(row, builder.mul(block_bytes, ir.Constant(kp.type, blk)))
                    wv = builder.load(builder.bitcast(builder.gep(wbase, [off]), v16i8.as_pointer()), align=1)
                    prod = builder.call(pmadd, [builder.sext(wv, v16i16), splat])
                    builder.store(builder.add(builder.load(accs[blk][chain]), prod), accs[blk][chain])

            one = ir.Constant(kp.type, 1)
            with cgutils.for_range(builder, builder.lshr(kp, one)) as loop:
                jp = builder.shl(loop.index, one)
                step(jp, 0)
                step(builder.add(jp, one), 1)
            with builder.if_then(builder.icmp_unsigned("!=", builder.and_(kp, one), ir.Constant(kp.type, 0))):
                step(builder.sub(kp, one), 0)  # an odd last pair
            for blk in range(blocks):
                dst = builder.bitcast(builder.gep(out, [ir.Constant(i32, 8 * blk)]), v8i32.as_pointer())
                builder.store(builder.add(builder.load(accs[blk][0]), builder.load(accs[blk][1])), dst, align=4)
            return context.get_dummy_value()

        return sig, codegen

    return dot


_dot8x1 = _make_dot8(1)
_dot8x4 = _make_dot8(4)


@nb.njit(**_JIT)
def _isum_avx2(xq, w, isum, p0, kp, n8):
    """``isum[:n8] = sum_j xq[j] * W[2 p0 + j, :n8]`` (int32) over the ``kp`` row pairs from
    ``p0`` of ``w (n8/8, KP, 8, 2)`` (C-contiguous), with ``pmaddwd``: four blocks of 8
    outputs at a time, then one at a time."""
    blocks = n8 // 8
    b4 = blocks - blocks % 4
    stride = w.shape[1]
    for ob in range(0, b4, 4):
        _dot8x4(isum, ob * 8, w, (ob * stride + p0) * 16, xq, kp, stride)
    for ob in range(b4, blocks):
        _dot8x1(isum, ob * 8, w, (ob * stride + p0) * 16, xq, kp, stride)


@nb.njit(**_JIT)
def _isum_plain(xq, w, isum, p0, kp, n8):
    """:func:`_isum_avx2` without AVX2: the same integer sums."""
    for ob in range(n8 // 8):
        wb = w[ob]
        for c in range(8):
            s = np.int32(0)
            for jp in range(kp):
                s += np.int32(xq[2 * jp]) * np.int32(wb[p0 + jp, c, 0]) + np.int32(xq[2 * jp + 1]) * np.int32(
                    wb[p0 + jp, c, 1]
                )
            isum[ob * 8 + c] = s


_isum = _isum_avx2 if _HAS_AVX2 else _isum_plain
_I8_TILES = _HAS_AVX2  # int8_tiles uses pmaddwd (AVX2 or AVX-512)


@nb.njit(**_JIT)
def _quant16(x, k, xq):
    """``xq[:2 kp] =`` ``x[:k]`` rounded to int16 with one scale (zeros after ``k``); returns the
    scale ``xs = max|x| / qmax`` (``xq * xs ~ x``), 0 when ``x`` is all zero and NaN when it holds
    an infinity or NaN."""
    mb = np.int32(0)  # max |x| as bits: integers compare as the floats do, and vectorise
    for j in range(k):
        mb = max(mb, _abs_bits(x[j]))
    if mb >= np.int32(0x7F800000):
        return np.float32(np.nan)
    if mb == 0:
        return np.float32(0.0)
    m = _bits_f32(mb)
    qmax = np.float32(int16_limit(k))
    inv = qmax / m
    magic = np.float32(12582912.0)  # 1.5 * 2**23: adding and subtracting it rounds half to even
    for j in range(k):
        xq[j] = np.int16(np.int32((x[j] * inv + magic) - magic))
    for j in range(k, 2 * pair_count(k)):
        xq[j] = 0
    return m / qmax


@nb.njit(**_JIT)
def _qmatvec(xq, xs, w, p0, sc, y, k, n, isum):
    """``y[:n] += x @ W`` for int8 ``W`` in blocks of row pairs (``w (n8/8, KP, 8, 2)``, its ``k``
    rows from pair ``p0``; scales ``sc (n,)``) and an input ``x`` that :func:`_quant16` rounded
    to ``(xq, xs)``; ``isum (>= n8,)`` int32 scratch. A NaN scale (a non-finite input) makes
    every output NaN, as float32 would."""
    if xs == xs and xs != 0:  # else nothing to sum (see _dequant)
        _isum(xq, w, isum, p0, pair_count(k), w.shape[0] * 8)
    _dequant(isum, xs, sc, y, n)


@nb.njit(**_JIT)
def _dequant(isum, xs, sc, y, n):
    """``y[:n] += float32(isum) * (sc * xs)``: the int32 sums of one input rounded with scale
    ``xs`` (nothing when ``xs == 0``: every product is zero; a NaN ``xs``, a non-finite input,
    makes every output NaN, as float32 would)."""
    if xs == 0:
        return
    if xs != xs:
        for o in range(n):
            y[o] += xs
        return
    for o in range(n):
        y[o] += np.float32(isum[o]) * (sc[o] * xs)


@nb.njit(**_JIT)
def _quant_rows(a, n_rows, k, xq, xs):
    """``xs[r] = _quant16(a[r], k, xq[r])`` for ``r < n_rows``: rows rounded to int16 one by one."""
    for r in range(n_rows):
        xs[r] = _quant16(a[r], k, xq[r])


@nb.njit(**_JIT)
def _qrows(xq, xs, w, p0, sc, c, n_rows, k, n, isum):
    """``c[r, :n] += x_r @ W`` for ``r < n_rows``: :func:`_qmatvec` of many rows, each rounded to
    ``(xq[r], xs[r])`` by :func:`_quant_rows`; ``isum (>= n_rows, >= n8)`` int32 scratch.

    Where AVX2 is there the rows go by register tiles (:func:`wavedil.fast._tiles.int8_tiles`)
    that convert their sums in registers as :func:`_dequant` does (the same operations, so the
    same bits as one row at a time); the outputs of a last block of fewer than 8, and blocks with
    a row of zero or non-finite inputs (:func:`_dequant`'s special cases), go by stored sums."""
    if not _I8_TILES or n_rows == 1:
        for r in range(n_rows):
            _qmatvec(xq[r], xs[r], w, p0, sc, c[r], k, n, isum[r])
        return
    kp = pair_count(k)
    regular = True
    for r in range(n_rows):
        regular = regular and xs[r] == xs[r] and xs[r] != 0
    done = n - n % 8 if regular else 0
    int8_tiles(xq, w, c, n_rows, p0, kp, done // 8, xs, sc)
    if done < n:
        int8_tiles(xq, w[done // 8 :], isum, n_rows, p0, kp, w.shape[0] - done // 8, xs, sc)
        for r in range(n_rows):
            _dequant(isum[r], xs[r], sc[done:], c[r, done:], n - done)


@nb.njit(**_JIT)
def _matvec_i8(x, w, sc, y, k, n, xq, isum):
    """``y[:n] += x[:k] @ W`` for int8 ``W`` (see :func:`_qmatvec`) with ``x`` rounded to int16
    (:func:`_quant16`); ``xq (>= 2 kp,)`` int16 scratch."""
    _qmatvec(xq, _quant16(x, k, xq), w, 0, sc, y, k, n, isum)


def _matvec(x, w, sc, y, k, n, qs):
    """``y[:n] += x[:k] @ W[:k, :n]`` for one row in ``w``'s format; ``qs = (xq, isum)`` the int8
    mode's scratch (see :func:`_matvec_i8`; unused by the others)."""


@overload(_matvec)
def _matvec_impl(x, w, sc, y, k, n, qs):
    if w.ndim == 4:  # int8 in blocks of row pairs
        return lambda x, w, sc, y, k, n, qs: _matvec_i8(x, w, sc, y, k, n, qs[0], qs[1])
    return lambda x, w, sc, y, k, n, qs: _matvec_f(x, w, sc, y, k, n)


def _axpy_rows(a, w, sc, c, n_rows, k, n, qs):
    """``c[r, :n] += a[r, :k] @ W[:k, :n]`` for ``r < n_rows`` in ``w``'s format (see :func:`_matvec`);
    int8 takes the block scratch ``qs = (xq (rows, >= 2 kp) int16, xs (rows,) float32,
    isum (rows, >= n8) int32, ...)`` of :func:`run_rows`."""


@overload(_axpy_rows)
def _axpy_rows_impl(a, w, sc, c, n_rows, k, n, qs):
    if w.ndim == 4:

        def rows_i8(a, w, sc, c, n_rows, k, n, qs):
            _quant_rows(a, n_rows, k, qs[0], qs[1])
            _qrows(qs[0], qs[1], w, 0, sc, c, n_rows, k, n, qs[2])

        return rows_i8
    return lambda a, w, sc, c, n_rows, k, n, qs: _axpy_rows_f(a, w, sc, c, n_rows, k, n)


def _axpy_rows2(a, w1, sc1, c1, n1, w2, sc2, c2, n2, n_rows, k, qs):
    """:func:`_axpy_rows` of the rows ``a[:n_rows, :k]`` by two matrices into ``c1`` and ``c2``."""


@overload(_axpy_rows2)
def _axpy_rows2_impl(a, w1, sc1, c1, n1, w2, sc2, c2, n2, n_rows, k, qs):
    if w1.ndim == 4:

        def rows2_i8(a, w1, sc1, c1, n1, w2, sc2, c2, n2, n_rows, k, qs):
            _quant_rows(a, n_rows, k, qs[0], qs[1])
            _qrows(qs[0], qs[1], w1, 0, sc1, c1, n_rows, k, n1, qs[2])
            _qrows(qs[0], qs[1], w2, 0, sc2, c2, n_rows, k, n2, qs[2])

        return rows2_i8

    def rows2_f(a, w1, sc1, c1, n1, w2, sc2, c2, n2, n_rows, k, qs):
        _axpy_rows_f(a, w1, sc1, c1, n_rows, k, n1)
        _axpy_rows_f(a, w2, sc2, c2, n_rows, k, n2)

    return rows2_f


def _conv_past(ring, where, kernel, row, w, sc, h, r_ch, g, qs):
    """``h[:g] += sum_{m < kernel - 1} in_m @ W_m``: the dilated conv's taps on the past, of ring
    row ``row``. ``where = (off, pos, d, L)`` of the layer at stream time ``pos``: tap ``m`` reads
    ring slot ``off + (pos - (kernel - 1 - m) * d) % L``; ``ring (sum L, B, R)``; ``w`` the layer's
    ``(k * R, G)`` matrix in its format. Float formats multiply tap by tap; int8 rounds the past
    taps' inputs together (one scale, ``qs[2]`` their ``((k - 1) * R,)`` scratch) for one product
    of the first ``(k - 1) * R`` rows (paired apart from the last tap's,
    :func:`wavedil.fast.pack.pair_rows`)."""


@overload(_conv_past)
def _conv_past_impl(ring, where, kernel, row, w, sc, h, r_ch, g, qs):
    if w.ndim == 4:

        def past_i8(ring, where, kernel, row, w, sc, h, r_ch, g, qs):
            off, pos, d, L = where
            xcat = qs[2]
            for m in range(kernel - 1):
                xcat[m * r_ch : (m + 1) * r_ch] = ring[off + (pos - (kernel - 1 - m) * d) % L, row]
            k = (kernel - 1) * r_ch
            _qmatvec(qs[0], _quant16(xcat, k, qs[0]), w, 0, sc, h, k, g, qs[1])

        return past_i8

    def past_f(ring, where, kernel, row, w, sc, h, r_ch, g, qs):
        off, pos, d, L = where
        for m in range(kernel - 1):
            _matvec_f(ring[off + (pos - (kernel - 1 - m) * d) % L, row], w[m * r_ch :], sc, h, r_ch, g)

    return past_f


def _conv_cur(x, kernel, w, sc, h, r_ch, g, qs):
    """``h[:g] += x @ W_{k-1}``: the dilated conv's last tap (the layer input ``x (R,)`` now)."""


@overload(_conv_cur)
def _conv_cur_impl(x, kernel, w, sc, h, r_ch, g, qs):
    if w.ndim == 4:

        def cur_i8(x, kernel, w, sc, h, r_ch, g, qs):
            _qmatvec(qs[0], _quant16(x, r_ch, qs[0]), w, pair_count((kernel - 1) * r_ch), sc, h, r_ch, g, qs[1])

        return cur_i8
    return lambda x, kernel, w, sc, h, r_ch, g, qs: _matvec_f(x, w[(kernel - 1) * r_ch :], sc, h, r_ch, g)


def _conv_past_rows(ring, where, kernel, r0, nr, w, sc, hh, r_ch, g, qs):
    """``hh[r, :g] +=`` :func:`_conv_past` of ring row ``r0 + r`` for ``r < nr``: the dilated
    conv's taps on the past of a block of rows. Float formats go tap by tap over all the rows
    (each weight row serves every row while in cache), which adds in the same order; int8
    rounds every row's past taps together as the one-row kernel does and multiplies the block
    of rows at once (:func:`_qrows`): the same sums."""


@overload(_conv_past_rows, inline="always")
def _conv_past_rows_impl(ring, where, kernel, r0, nr, w, sc, hh, r_ch, g, qs):
    if w.ndim == 4:

        def past_i8(ring, where, kernel, r0, nr, w, sc, hh, r_ch, g, qs):
            off, pos, d, L = where
            xq, xs, isum, xcat = qs
            k_past = (kernel - 1) * r_ch
            if kernel == 2:  # one past tap: rounded where it lies in the ring
                _quant_rows(ring[off + (pos - d) % L, r0:], nr, k_past, xq, xs)
            else:
                for r in range(nr):
                    for m in range(kernel - 1):
                        xcat[r, m * r_ch : (m + 1) * r_ch] = ring[off + (pos - (kernel - 1 - m) * d) % L, r0 + r]
                _quant_rows(xcat, nr, k_past, xq, xs)
            _qrows(xq, xs, w, 0, sc, hh, nr, k_past, g, isum)

        return past_i8

    def past_f(ring, where, kernel, r0, nr, w, sc, hh, r_ch, g, qs):
        off, pos, d, L = where
        for m in range(kernel - 1):
            slot = off + (pos - (kernel - 1 - m) * d) % L
            _axpy_rows_f(ring[slot, r0:], w[m * r_ch :], sc, hh, nr, r_ch, g)

    return past_f


def _conv_cur_rows(x, kernel, nr, w, sc, hh, r_ch, g, qs):
    """``hh[r, :g] += x[r] @ W_{k-1}`` for ``r < nr``: the dilated conv's last tap (the layer
    inputs now, ``x (>= nr, R)``) of a block of rows, in ``w``'s format (int8 rounds each row
    of ``x`` on its own, apart from its past taps)."""


@overload(_conv_cur_rows, inline="always")
def _conv_cur_rows_impl(x, kernel, nr, w, sc, hh, r_ch, g, qs):
    if w.ndim == 4:

        def cur_i8(x, kernel, nr, w, sc, hh, r_ch, g, qs):
            xq, xs, isum, _ = qs
            _quant_rows(x, nr, r_ch, xq, xs)
            _qrows(xq, xs, w, pair_count((kernel - 1) * r_ch), sc, hh, nr, r_ch, g, isum)

        return cur_i8
    return lambda x, kernel, nr, w, sc, hh, r_ch, g, qs: _axpy_rows_f(x, w[(kernel - 1) * r_ch :], sc, hh, nr, r_ch, g)


def _conv_rows(ring, where, kernel, x, r0, nr, w, sc, hh, r_ch, g, qs):
    """The dilated conv of rows ``r0 : r0 + nr``: ``hh[r, :g] +=`` its taps on the past
    (:func:`_conv_past_rows`) ``+`` its last tap on ``x[r0 + r]`` (``x (B, R)``,
    :func:`_conv_cur_rows`), added in that order."""


@overload(_conv_rows, inline="always")
def _conv_rows_impl(ring, where, kernel, x, r0, nr, w, sc, hh, r_ch, g, qs):
    def conv(ring, where, kernel, x, r0, nr, w, sc, hh, r_ch, g, qs):
        _conv_past_rows(ring, where, kernel, r0, nr, w, sc, hh, r_ch, g, qs)
        _conv_cur_rows(x[r0:], kernel, nr, w, sc, hh, r_ch, g, qs)

    return conv


# ----------------------------------------------------------------------------- small helpers


@nb.njit(**_JIT)
def _axpy_rows_f(a, w, sc, c, n_rows, k, n):
    """``c[r, :n] += a[r, :k] @ W[:k, :n]`` for ``r < n_rows``; ``w`` is ``(in, out)`` row-major,
    float32 or bfloat16 bits (the float formats above; ``sc`` is not used).

    Two rows or more go by register tiles (:func:`wavedil.fast._tiles.axpy_tiles`: about 2.5x
    the rate of the plain loops on ref30's shapes, the same bits), the last columns that no tile
    covers (fewer than 16) and single rows by :func:`_axpy_rows_plain`.
    """
    if n_rows > 1 and a.strides[1] == 4 and c.strides[1] == 4 and w.strides[1] == w.itemsize:
        m = axpy_tiles(a, w, c, n_rows, k, n)
        if m < n:
            _axpy_rows_plain(a, w[:, m:], sc, c[:, m:], n_rows, k, n - m)
    else:
        _axpy_rows_plain(a, w, sc, c, n_rows, k, n)


@nb.njit(**_JIT)
def _axpy_rows_plain(a, w, sc, c, n_rows, k, n):
    """:func:`_axpy_rows_f` by plain loops over the output columns.

    Eight weight rows at a time (4 KB for 128 outputs, kept in L1 while every row of ``c`` takes
    them): one load and store of each output serves eight multiply-adds, still added in the
    order ``j = 0, 1, ..., k-1``, so the result is bit for bit that of the plain loop whatever
    the number of rows.
    """
    k8 = k - k % 8
    fused_end = k8  # blocks of eight rows left to the fused loop below
    if _is_reduced(w) and n_rows > 1:
        # a reduced format: widen each block of eight weight rows once for all the rows of ``a``
        # (the same float32 values and sums as the fused form, so the same bits)
        wide = np.empty((8, n), np.float32)
        for j in range(0, k8, 8):
            _decode8(w, j, n, wide)
            f0 = wide[0]
            f1 = wide[1]
            f2 = wide[2]
            f3 = wide[3]
            f4 = wide[4]
            f5 = wide[5]
            f6 = wide[6]
            f7 = wide[7]
            for r in range(n_rows):
                cr = c[r]
                ar = a[r]
                s0 = ar[j]
                s1 = ar[j + 1]
                s2 = ar[j + 2]
                s3 = ar[j + 3]
                s4 = ar[j + 4]
                s5 = ar[j + 5]
                s6 = ar[j + 6]
                s7 = ar[j + 7]
                for o in range(n):
                    cr[o] = _acc8_wide(cr[o], s0, s1, s2, s3, s4, s5, s6, s7, f0, f1, f2, f3, f4, f5, f6, f7, sc, o, w)
        fused_end = 0  # all blocks done: only the tail remains
    for j in range(0, fused_end, 8):
        w0 = w[j]
        w1 = w[j + 1]
        w2 = w[j + 2]
        w3 = w[j + 3]
        w4 = w[j + 4]
        w5 = w[j + 5]
        w6 = w[j + 6]
        w7 = w[j + 7]
        for r in range(n_rows):
            cr = c[r]
            ar = a[r]
            s0 = ar[j]
            s1 = ar[j + 1]
            s2 = ar[j + 2]
            s3 = ar[j + 3]
            s4 = ar[j + 4]
            s5 = ar[j + 5]
            s6 = ar[j + 6]
            s7 = ar[j + 7]
            for o in range(n):
                cr[o] = _acc8(cr[o], s0, s1, s2, s3, s4, s5, s6, s7, w0, w1, w2, w3, w4, w5, w6, w7, sc, o)
    for j in range(k8, k):
        w0 = w[j]
        for r in range(n_rows):
            s0 = a[r, j]
            cr = c[r]
            for o in range(n):
                cr[o] = _acc1(cr[o], s0, w0, sc, o)


@nb.njit(**_JIT)
def _matvec_f(x, w, sc, y, k, n):
    """``y[:n] += x[:k] @ W[:k, :n]`` for one row (1-D ``x``, ``y``): the batch-1 form of
    :func:`_axpy_rows_f`, with the same order of additions (so the same bits)."""
    k8 = k - k % 8
    for j in range(0, k8, 8):
        s0 = x[j]
        s1 = x[j + 1]
        s2 = x[j + 2]
        s3 = x[j + 3]
        s4 = x[j + 4]
        s5 = x[j + 5]
        s6 = x[j + 6]
        s7 = x[j + 7]
        w0 = w[j]
        w1 = w[j + 1]
        w2 = w[j + 2]
        w3 = w[j + 3]
        w4 = w[j + 4]
        w5 = w[j + 5]
        w6 = w[j + 6]
        w7 = w[j + 7]
        for o in range(n):
            y[o] = _acc8(y[o], s0, s1, s2, s3, s4, s5, s6, s7, w0, w1, w2, w3, w4, w5, w6, w7, sc, o)
    for j in range(k8, k):
        s0 = x[j]
        w0 = w[j]
        for o in range(n):
            y[o] = _acc1(y[o], s0, w0, sc, o)


@nb.njit(**_JIT_EXACT)
def _sample_row(lg, q, u, temp, greedy, p):
    """One draw from logits ``lg[:q]`` float32 (see the module docstring); ``p``: scratch ``(>= q,)`` float64."""
    if greedy:
        best = 0
        m = lg[0]
        for i in range(1, q):
            if lg[i] > m:
                m = lg[i]
                best = i
        return best
    m = np.float64(lg[0]) / temp
    for i in range(1, q):
        v = np.float64(lg[i]) / temp
        m = max(m, v)
    for i in range(q):  # vectorised: the exponentials apart from the running sum
        p[i] = exp_neg64(np.float64(lg[i]) / temp - m)
    total = 0.0
    for i in range(q):
        total += p[i]
        p[i] = total
    target = max(u, 2.0**-54) * total  # distributions.U_FLOOR: u = 0 never draws a class of no probability
    k = 0
    while k < q - 1 and p[k] < target:
        k += 1
    return k


@nb.njit(**_JIT_EXACT)
def _to_bin(x, q):
    """Linear bin of ``x`` in ``[-1, 1]``: ``clamp(rint((x + 1) * (q // 2)), 0, q - 1)``, NaN the middle
    bin (``_LinearBins._to_bin``)."""
    v = np.rint((x + 1.0) * np.float64(q // 2))
    if v != v:
        v = np.float64(q // 2)
    if v < 0.0:
        v = 0.0
    if v > np.float64(q - 1):
        v = np.float64(q - 1)
    return np.int64(v)


@nb.njit(**_JIT_EXACT)
def draw(par, head, q, nmix, ls_min, u, temp, greedy, p):
    """One code from the head's parameters ``par (P,)`` float32, as ``model.dist.sample`` draws it.

    Args:
        head: :data:`HEAD_MULAW`, :data:`HEAD_MOL` or :data:`HEAD_GAUSSIAN`; q: classes ``Q``;
            nmix: mixture components ``K`` (mol); ls_min: the lower clamp of the log-scales.
        u: ``(U,)`` float64: ``u[0]`` the uniform of a softmax draw (mulaw; the component of
            mol); ``u[1]`` (mol) or ``u[0]`` (gaussian) the standardised noise ``w`` of the value.
        temp, greedy: the temperature (1.0 when greedy) and whether it is 0.
        p: float64 scratch of at least ``max(Q, K)`` (mulaw / mol).
    """
    if head == HEAD_MULAW:
        return _sample_row(par, q, u[0], temp, greedy, p)
    if head == HEAD_MOL:
        k = _sample_row(par, nmix, u[0], temp, greedy, p)
        mean = np.float64(par[nmix + k])
        if greedy:
            return _to_bin(mean, q)
        log_scale = max(np.float64(par[2 * nmix + k]), ls_min)
        return _to_bin(mean + np.exp(log_scale) * temp * u[1], q)
    mean = np.float64(par[0])
    if greedy:
        return _to_bin(mean, q)
    log_scale = max(np.float64(par[1]), ls_min)
    return _to_bin(mean + np.exp(log_scale) * temp * u[0], q)


@nb.njit(**_JIT)
def _embed(emb, in_scale, code, x, r_ch):
    """``x[:] =`` the input vector of ``code``: ``emb[code]``, or for a linear input layer
    (``in_scale > 0``) ``v * emb[0] + emb[1]`` with ``v = code * in_scale - 1`` in float32."""
    if in_scale > 0:
        v = np.float32(code) * np.float32(in_scale) - np.float32(1.0)
        for c in range(r_ch):
            x[c] = v * emb[0, c] + emb[1, c]
    else:
        x[:] = emb[code]


@nb.njit(**_JIT)
def cond_bias(cols, wlc, gbias, out, batch, row_block):
    """Per-step gate biases with local conditioning: ``out[r] = gbias[r % batch] + cols[r] @ wlc``.

    ``cols (T*B, Lc)`` the conditioning columns, step-major; ``wlc (Lc, NL*G)`` every layer's
    projection; ``gbias (B, NL*G)`` conv bias plus global term; ``out (T*B, NL*G)``, float32.
    ``row_block`` rows at a time share each weight row while it is in cache. (On one thread,
    unlike a torch matmul, whose threads lose most of their speed on a busy machine.)
    """
    rows = cols.shape[0]
    lc = cols.shape[1]
    ng = wlc.shape[1]
    for r0 in range(0, rows, row_block):
        nr = min(row_block, rows - r0)
        for r in range(nr):
            out[r0 + r, :] = gbias[(r0 + r) % batch]
        _axpy_rows_f(cols[r0:], wlc, wlc[0], out[r0:], nr, lc, ng)  # float32: no scales


# ----------------------------------------------------------------------------- row kernel


@nb.njit(**_JIT)
def run_rows(
    t0, t1, n_total, uniforms, temp, greedy, params, out,
    head, classes, nmix, ls_min, in_scale,
    emb, wc, gbias, wres, bres, wskip, bskip, h1, b1, h2, b2, scales,
    dil, off, kernel, ring, pos, row_block, lo, hi, forced, record,
):  # fmt: skip
    """Advance rows ``lo : hi`` from step ``t0`` to ``t1`` (exclusive); returns the new ``pos``.

    Every array has all ``B`` rows; this call reads and writes rows ``lo : hi`` only, so
    threads may advance disjoint row ranges of the same arrays at once.

    Args:
        t0, t1: steps of this call; ``n_total``: steps of the whole generation (no forward pass
            follows the last one).
        uniforms: ``(n_total, B, U)`` float64 (see :func:`draw`); temp: ``T``, which divides
            the logits as in the reference (1.0 when greedy); greedy: ``T == 0``.
        params: ``(B, P)`` float32, the head's parameters of the next draw (updated in place).
        out: ``(B, n_total)`` int64 codes (columns ``t0:t1`` written).
        head, classes, nmix, ls_min: the output distribution (see :func:`draw`).
        in_scale: 0.0: ``emb (Q, R)`` is an embedding table; else ``emb (2, R)`` is a linear
            input layer (weight, bias) applied to the bin centre ``code * in_scale - 1``.
        emb: see ``in_scale``; wc ``(NL, k*R, G)`` with tap ``m`` (time
            ``t - (k-1-m)*d``) in rows ``m*R:(m+1)*R``; gbias ``(Tc, B, NL, G)`` conv bias plus
            conditioning: ``Tc == 1`` the same for every step (global conditioning only), else
            row ``t - t0`` for the forward pass of step ``t`` (local conditioning); its second
            axis ``B``, or 1 when every row has the same;
            wres ``(NL, G/2, R)``; bres ``(NL, R)``; wskip ``(NL, G/2, S)``; bskip ``(S,)`` the
            summed skip biases; h1 ``(S, H)``; b1 ``(H,)``; h2 ``(H, P)``; b2 ``(P,)``. The
            matrices in one weight format (float32, bfloat16 bits or int8; see above).
        scales: ``(wc_s (NL, G), wres_s (NL, R), wskip_s (NL, S), h1_s (H,), h2_s (P,))``, the
            per-output-column scales of the int8 format (ignored by the others).
        dil, off: ``(NL,)`` int64 dilations and ring offsets (layer ``i`` owns ring rows
            ``off[i] : off[i] + (k-1)*dil[i]``); ring ``(sum L, B, R)`` float32, slot
            ``t % L`` holding the layer input of time ``t``.
        pos: time of the next input; row_block: rows computed together per layer.
        lo, hi: the rows of this call, ``0 <= lo < hi <= B``.
        forced: ``(B, n_total)`` int64 codes to feed instead of sampling (teacher forcing), or
            an empty ``(0, 0)`` array to sample.
        record: ``(B, n_total, P)`` float32 receiving the parameters computed at each step, or
            an empty ``(0, 0, 0)`` array.
    """
    # views without owners: slicing them in the loops below costs no atomic reference counts
    uniforms, params, out, forced, record = _unowned(uniforms), _unowned(params), _unowned(out), _unowned(forced), _unowned(record)
    emb, wc, gbias, wres, bres = _unowned(emb), _unowned(wc), _unowned(gbias), _unowned(wres), _unowned(bres)
    wskip, bskip, h1, b1, h2, b2 = _unowned(wskip), _unowned(bskip), _unowned(h1), _unowned(b1), _unowned(h2), _unowned(b2)
    dil, off, ring = _unowned(dil), _unowned(off), _unowned(ring)
    scales = _unowned_scales(scales)
    bs = params.shape[0]
    n_par = params.shape[1]
    r_ch = emb.shape[1]
    nl = wc.shape[0]
    g = gbias.shape[3]
    g2 = g // 2
    s_ch = bskip.shape[0]
    h_ch = b1.shape[0]
    rb = min(row_block, hi - lo)
    width = max(kernel * r_ch, g, s_ch, h_ch, n_par) + 16
    # the int8 products' scratch for a block of rows: inputs rounded, their scales, int32 sums,
    # a conv's past taps side by side
    xq_own, xs_own = np.zeros((rb, width), np.int16), np.zeros(rb, np.float32)
    isum_own, xcat_own = np.zeros((rb, width), np.int32), np.zeros((rb, kernel * r_ch), np.float32)
    qs = (_unowned(xq_own), _unowned(xs_own), _unowned(isum_own), _unowned(xcat_own))
    # the scratch, owned by these arrays (kept alive to the end by _keep_alive) and used unowned
    x_own = np.empty((bs, r_ch), np.float32)
    acc_own = np.empty((bs, s_ch), np.float32)
    hh_own = np.empty((rb, g), np.float32)
    zz_own = np.empty((rb, g2), np.float32)
    hid_own = np.empty((rb, h_ch), np.float32)
    x, acc, hh = _unowned(x_own), _unowned(acc_own), _unowned(hh_own)
    zz, hid = _unowned(zz_own), _unowned(hid_own)
    p = np.empty(max(n_par, classes if head == HEAD_MULAW else nmix), np.float64)
    codes = np.empty(bs, np.int64)
    per_step = gbias.shape[0] > 1
    shared = gbias.shape[1] == 1  # one bias row for every row
    wc_s, wres_s, wskip_s, h1_s, h2_s = scales
    for t in range(t0, t1):
        for b in range(lo, hi):
            if forced.shape[1] > 0:
                code = forced[b, t]
            else:
                code = draw(params[b], head, classes, nmix, ls_min, uniforms[t, b], temp, greedy, p)
            codes[b] = code
            out[b, t] = code
        if t + 1 >= n_total:
            break
        gb = gbias[t - t0] if per_step else gbias[0]
        for b in range(lo, hi):
            _embed(emb, in_scale, codes[b], x[b], r_ch)
            acc[b, :] = bskip
        for i in range(nl):
            d = dil[i]
            L = (kernel - 1) * d
            w = wc[i]
            for r0 in range(lo, hi, rb):
                nr = min(rb, hi - r0)
                for r in range(nr):
                    hh[r, :] = gb[0 if shared else r0 + r, i]
                _conv_rows(ring, (off[i], pos, d, L), kernel, x, r0, nr, w, wc_s[i], hh, r_ch, g, qs)
                # x[t] replaces x[t - L] (read above as the oldest tap)
                ring[off[i] + pos % L, r0 : r0 + nr, :] = x[r0 : r0 + nr]
                for r in range(nr):
                    gate_inplace(hh[r], zz[r], g2)
                if i + 1 < nl:
                    for r in range(nr):
                        x[r0 + r, :] += bres[i]
                    _axpy_rows2(zz, wres[i], wres_s[i], x[r0:], r_ch, wskip[i], wskip_s[i], acc[r0:], s_ch, nr, g2, qs)
                else:  # the last layer's residual output is never used
                    _axpy_rows(zz, wskip[i], wskip_s[i], acc[r0:], nr, g2, s_ch, qs)
        pos += 1
        for r0 in range(lo, hi, rb):
            nr = min(rb, hi - r0)
            for r in range(nr):
                for c in range(s_ch):
                    acc[r0 + r, c] = max(acc[r0 + r, c], np.float32(0.0))
                hid[r, :] = b1
            _axpy_rows(acc[r0:], h1, h1_s, hid, nr, s_ch, h_ch, qs)
            for r in range(nr):
                for c in range(h_ch):
                    hid[r, c] = max(hid[r, c], np.float32(0.0))
                params[r0 + r, :] = b2
            _axpy_rows(hid, h2, h2_s, params[r0:], nr, h_ch, n_par, qs)
        if record.shape[1] > 0:
            for b in range(lo, hi):
                record[b, t, :] = params[b]
    _keep_alive(x_own, acc_own, hh_own, zz_own, hid_own)
    _keep_alive(xq_own, xs_own, isum_own, xcat_own, x_own)
    return pos


# ----------------------------------------------------------------------------- pipeline kernel
#
# run_pipe is written once for one sequence and for a block of rows: numba compiles it for each.
# These helpers take the row arrays of either form (one row: 1-D ``(C,)``; rows: 2-D ``(B, C)``;
# numba picks the implementation by type) and give the one-row form the one-row code
# (:func:`_matvec`, :func:`_conv_cur`, :func:`_conv_past`): at batch 1, the block code on one
# row measured 10% slower in int8, and per-layer helpers that return a row view 2-4% (each
# such view is a reference-count call): the helpers are inlined into numba's IR, the block
# forms' loops kept in functions of their own. The int8 scratch ``qs`` is the block form's
# ``(xq, xs, isum, xcat)``; one row takes views of its row 0 (:func:`_scratch_of`).


def _row(a, b):
    """Row ``b`` of a block ``a (B, C)``; a one-row array ``a (C,)`` itself."""


@overload(_row, inline="always")
def _row_impl(a, b):
    if a.ndim == 1:
        return lambda a, b: a
    return lambda a, b: a[b]


def _put_code(out, b, t, code):
    """``out[b, t] = code`` (``out[t]`` for one row)."""


@overload(_put_code, inline="always")
def _put_code_impl(out, b, t, code):
    if out.ndim == 1:

        def put1(out, b, t, code):
            out[t] = code

        return put1

    def put(out, b, t, code):
        out[b, t] = code

    return put


def _scratch_of(like, qs):
    """The int8 scratch of the form of ``like``: the block form's ``qs = (xq, xs, isum, xcat)``,
    or for one row (1-D ``like``) the row-0 views ``(xq[0], isum[0], xcat[0])`` that the one-row
    products take."""


@overload(_scratch_of, inline="always")
def _scratch_of_impl(like, qs):
    if like.ndim == 1:
        return lambda like, qs: (qs[0][0], qs[2][0], qs[3][0])
    return lambda like, qs: qs


def _new_rows(like, n_rows, cols):
    """Uninitialised float32 ``(n_rows, cols)``, or ``(cols,)`` when ``like`` is one row."""


@overload(_new_rows, inline="always")
def _new_rows_impl(like, n_rows, cols):
    if like.ndim == 1:
        return lambda like, n_rows, cols: np.empty(cols, np.float32)
    return lambda like, n_rows, cols: np.empty((n_rows, cols), np.float32)


def _chain_gate(x, hh, zi, slot, w, sc, kernel, bs, rb, r_ch, g, qs):
    """The chain's part of a layer before its gate outputs are published, for every row
    ``r < bs``: ``hh[r] +=`` the conv's last tap on ``x[r]`` (:func:`_conv_cur_rows`, ``rb`` rows
    at a time), ``slot[r] = x[r]`` (the ring slot of time ``pos``), ``zi[r] =`` the gate of
    ``hh[r]``. One row (1-D ``x``, ``hh``, ``zi``) by :func:`_conv_cur`."""


@overload(_chain_gate, inline="always")
def _chain_gate_impl(x, hh, zi, slot, w, sc, kernel, bs, rb, r_ch, g, qs):
    if x.ndim == 1:

        def one(x, hh, zi, slot, w, sc, kernel, bs, rb, r_ch, g, qs):
            _conv_cur(x, kernel, w, sc, hh, r_ch, g, qs)
            slot[0, :] = x  # x[t] replaces x[t - L], the oldest tap
            gate_inplace(hh, zi, g // 2)

        return one

    return lambda x, hh, zi, slot, w, sc, kernel, bs, rb, r_ch, g, qs: _chain_gate_rows(
        x, hh, zi, slot, w, sc, kernel, bs, rb, r_ch, g, qs
    )


@nb.njit(**_JIT)
def _chain_gate_rows(x, hh, zi, slot, w, sc, kernel, bs, rb, r_ch, g, qs):
    """:func:`_chain_gate`'s block form."""
    for r0 in range(0, bs, rb):
        nr = min(rb, bs - r0)
        _conv_cur_rows(x[r0:], kernel, nr, w, sc, hh[r0:], r_ch, g, qs)
        for r in range(r0, r0 + nr):
            slot[r, :] = x[r]
            gate_inplace(hh[r], zi[r], g // 2)


def _block_product(a, w, sc, c, bs, rb, k, n, qs):
    """``c[r, :n] += a[r, :k] @ W`` for every row ``r < bs``, ``rb`` at a time
    (:func:`_axpy_rows`); one row (1-D ``a``, ``c``) by :func:`_matvec`."""


@overload(_block_product, inline="always")
def _block_product_impl(a, w, sc, c, bs, rb, k, n, qs):
    if a.ndim == 1:
        return lambda a, w, sc, c, bs, rb, k, n, qs: _matvec(a, w, sc, c, k, n, qs)

    return lambda a, w, sc, c, bs, rb, k, n, qs: _block_product_rows(a, w, sc, c, bs, rb, k, n, qs)


@nb.njit(**_JIT)
def _block_product_rows(a, w, sc, c, bs, rb, k, n, qs):
    """:func:`_block_product`'s block form."""
    for r0 in range(0, bs, rb):
        _axpy_rows(a[r0:], w, sc, c[r0:], min(rb, bs - r0), k, n, qs)


def _add_rows(dst, v, bs):
    """``dst[r, :] += v`` for ``r < bs`` (``dst[:] += v`` for one row)."""


@overload(_add_rows, inline="always")
def _add_rows_impl(dst, v, bs):
    if dst.ndim == 1:

        def one(dst, v, bs):
            dst[:] += v

        return one

    return lambda dst, v, bs: _add_rows_2d(dst, v, bs)


@nb.njit(**_JIT)
def _add_rows_2d(dst, v, bs):
    """:func:`_add_rows`'s block form."""
    for r in range(bs):
        dst[r, :] += v


def _set_rows(dst, src, bs):
    """``dst[r, :] = src[r]`` for ``r < bs`` (``dst[:] = src`` for one row); ``src`` may be one
    row ``(C,)`` for all."""


@overload(_set_rows, inline="always")
def _set_rows_impl(dst, src, bs):
    if dst.ndim == 1:

        def one(dst, src, bs):
            dst[:] = src

        return one
    return lambda dst, src, bs: _set_rows_2d(dst, src, bs)


@nb.njit(**_JIT)
def _set_rows_2d(dst, src, bs):
    """:func:`_set_rows`'s block form (``src (C,)``: the same row for all)."""
    for r in range(bs):
        dst[r, :] = src if src.ndim == 1 else src[r]


@nb.njit(**_JIT)
def _owns_past(i, own, nl):
    """Whether :func:`run_pipe`'s role 0 makes layer ``i``'s past taps itself: ``own`` of the
    ``nl`` layers, spread evenly."""
    return ((i + 1) * own) // nl > (i * own) // nl


def _bias_and_past(ring, off, dil, i, pos, kernel, wc, wc_s, gb, shared, hh, bs, rb, r_ch, g, qs):
    """``hh[r] =`` row ``r``'s gate bias of layer ``i`` (``gb[r, i]``; ``gb[0, i]`` when
    ``shared``) ``+`` the layer's conv taps on the past at stream time ``pos``, for every row
    ``r < bs`` (``rb`` at a time, :func:`_conv_past_rows`): everything of the conv but its last
    tap. One row (1-D ``hh``, ``gb (NL, G)``) by :func:`_conv_past` of ring row 0."""


@overload(_bias_and_past, inline="always")
def _bias_and_past_impl(ring, off, dil, i, pos, kernel, wc, wc_s, gb, shared, hh, bs, rb, r_ch, g, qs):
    if hh.ndim == 1:

        def one(ring, off, dil, i, pos, kernel, wc, wc_s, gb, shared, hh, bs, rb, r_ch, g, qs):
            d = dil[i]
            hh[:] = gb[i]
            _conv_past(ring, (off[i], pos, d, (kernel - 1) * d), kernel, 0, wc[i], wc_s[i], hh, r_ch, g, qs)

        return one

    def rows(ring, off, dil, i, pos, kernel, wc, wc_s, gb, shared, hh, bs, rb, r_ch, g, qs):
        _bias_and_past_rows(ring, off, dil, i, pos, kernel, wc, wc_s, gb, shared, hh, bs, rb, r_ch, g, qs)

    return rows


@nb.njit(**_JIT)
def _bias_and_past_rows(ring, off, dil, i, pos, kernel, wc, wc_s, gb, shared, hh, bs, rb, r_ch, g, qs):
    """:func:`_bias_and_past`'s block form."""
    d = dil[i]
    where = (off[i], pos, d, (kernel - 1) * d)
    for r0 in range(0, bs, rb):
        nr = min(rb, bs - r0)
        for r in range(r0, r0 + nr):
            hh[r, :] = gb[0 if shared else r, i]
        _conv_past_rows(ring, where, kernel, r0, nr, wc[i], wc_s[i], hh[r0:], r_ch, g, qs)


@nb.njit(**_JIT)
def _head_block(a, w, sc, bias, tmp, dst, lo, n, relu, bs, rb, k, qs):
    """One of the head's column blocks, for every row ``r < bs`` (``rb`` at a time):
    ``dst[r, lo : lo + n] = (a[r, :k] @ W + bias)[:n]``, through ``relu`` if set; ``W (k, wp)``
    one column block of width ``wp`` (zero padded past ``n``), ``tmp (>= bs, >= wp)`` scratch."""
    wp = bias.shape[0]
    for r in range(bs):
        _row(tmp, r)[:wp] = bias
    _block_product(a, w, sc, tmp, bs, rb, k, wp, qs)
    for b in range(bs):
        t_b, d_b = _row(tmp, b), _row(dst, b)
        for c in range(n):
            d_b[lo + c] = max(t_b[c], np.float32(0.0)) if relu else t_b[c]


@nb.njit(**_JIT)
def run_pipe(
    role, sync, t0, t1, n_total, uniforms, temp, greedy, params, out,
    head, classes, nmix, ls_min, in_scale, emb, wc, gbias, wres, bres, wskip, bskip, h1, b1, h2, b2, scales,
    dil, off, kernel, ring, pos, row_block, z_sh, p_sh, acc_sh, hid_sh, max_long_waits, own,
):  # fmt: skip
    """One of two threads advancing the same rows (a small batch) from step ``t0`` towards ``t1``.

    The two threads split each step by *what* they compute. Role 0 runs the chain that every
    next layer depends on: draws, embeddings, and per layer the conv's last tap (the layer's
    input now), the gate and the residual product. Role 1 does what the chain does not wait
    for: the skip products, and the conv's taps on the past for the *next* step (bias
    included, into ``p_sh``; by the time role 1 has seen layer ``i``'s gate outputs, every input
    they read is in the ring) -- except for ``own`` of the layers (spread evenly), whose past
    taps role 0 makes itself, so the two can be balanced (which role makes them changes no
    number). Role 0 publishes each layer's gate outputs (``z_sh[i]``, then the
    counter ``sync[2]``) and goes straight on; role 1 follows. They meet only around the head
    (three barriers), whose columns they share, and once at the start of a call (role 1 makes
    the first step's past taps). So the chain pays no barrier per layer, no product is cut
    into narrow column blocks, and each core streams about half the weights (a small batch is
    bound by how fast the weights stream from the caches: in one core's share, the chain's
    last taps and residual matrices, can stay in its L2 cache).

    Every number is computed as in :func:`run_rows` (the same products in the same order), so
    the samples do not depend on the kernel.

    Returns ``(t, pos)``: the next step to run (``t1``, or earlier after a bail-out) and the
    stream time then. When a thread waited long (see :data:`_LONG_WAIT_CYCLES`) more than
    ``max_long_waits`` times -- its partner keeps being descheduled because another process
    wants its core -- both stop together at the end of the current step, so the caller can go
    on with one thread from there. Both threads must run at the same time, with the same
    arguments but ``role``.

    Args (beyond those of :func:`run_rows`, for ``Bs`` rows):
        role: 0 or 1.
        sync: ``(8,)`` int64 zeros: ``[0]`` the barrier counter, ``[1]`` the bail-out flag,
            ``[2]`` layers of gate outputs published by role 0; on return ``[3]`` role 0's and
            ``[4]`` role 1's waits for each other (time-stamp cycles; 0 without a counter).
        params: ``(Bs, Npar)`` float32 head parameters, shared (written by both, drawn by role 0).
        out: ``(Bs, n_total)`` int64 (written by role 0).
        wc ``(NL, k*R, G)``, gbias ``(Tc, Bs or 1, NL, G)``, wres, bres, wskip ``(NL, G/2, S)``,
            bskip ``(S,)``: as in :func:`run_rows`; h1 ``(2, S, Hp)``, b1 ``(2, Hp)``, h2
            ``(2, H, Qp)``, b2 ``(2, Qp)``: the head's two column blocks, zero padded (``Qp`` of
            the ``Npar`` outputs; :attr:`wavedil.fast.pack.PackedWaveNet.head_halves`).
        scales: ``(wc_s (NL, G), wres_s (NL, R), wskip_s (NL, S), h1_s (2, Hp), h2_s (2, Qp))``.
        ring: ``(sum L, Bs, R)``; z_sh ``(NL, Bs, G/2)``, p_sh ``(NL, Bs, G)``, acc_sh
            ``(Bs, S)``, hid_sh ``(Bs, H)``: shared.
        row_block: rows computed together per product (see :func:`run_rows`).
        own: layers whose past taps role 0 makes (0 to NL).

    One sequence may pass its arrays without the batch axis (the one-row form): uniforms
    ``(n_total, U)``, params ``(Npar,)``, out ``(n_total,)``, gbias ``(Tc, NL, G)``, z_sh
    ``(NL, G/2)``, p_sh ``(NL, G)``, acc_sh ``(S,)``, hid_sh ``(H,)``; ring ``(sum L, 1, R)``.
    """
    # views without owners (see run_rows): the two threads slice the same arrays at every layer
    sync, uniforms, params, out = _unowned(sync), _unowned(uniforms), _unowned(params), _unowned(out)
    emb, wc, gbias, wres, bres = _unowned(emb), _unowned(wc), _unowned(gbias), _unowned(wres), _unowned(bres)
    wskip, bskip, h1, b1, h2, b2 = _unowned(wskip), _unowned(bskip), _unowned(h1), _unowned(b1), _unowned(h2), _unowned(b2)
    dil, off, ring = _unowned(dil), _unowned(off), _unowned(ring)
    z_sh, p_sh, acc_sh, hid_sh = _unowned(z_sh), _unowned(p_sh), _unowned(acc_sh), _unowned(hid_sh)
    scales = _unowned_scales(scales)
    bs = 1 if params.ndim == 1 else ring.shape[1]  # a constant in the one-row form
    q = params.shape[-1]
    r_ch = emb.shape[1]
    nl = wc.shape[0]
    g = gbias.shape[-1]
    g2 = g // 2
    s_ch = bskip.shape[0]
    hp = b1.shape[1]
    h_ch = hid_sh.shape[-1]
    qp = b2.shape[1]
    rb = 1 if params.ndim == 1 else min(row_block, bs)
    width = max(kernel * r_ch, g, s_ch, hp, h_ch, qp) + 16
    # this thread's scratch, owned by these arrays (kept alive to each return) and used unowned
    xq_own, xs_own = np.zeros((rb, width), np.int16), np.zeros(rb, np.float32)
    isum_own, xcat_own = np.zeros((rb, width), np.int32), np.zeros((rb, kernel * r_ch), np.float32)
    qs = _scratch_of(params, (_unowned(xq_own), _unowned(xs_own), _unowned(isum_own), _unowned(xcat_own)))
    h_lo = role * hp
    h_n = min(hp, h_ch - h_lo)
    q_lo = role * qp
    q_n = min(qp, q - q_lo)
    wc_s, wres_s, wskip_s, h1_s, h2_s = scales
    x_own, hh_own = _new_rows(params, bs, r_ch), _new_rows(params, bs, g)
    acc_own, tmp_own = _new_rows(params, bs, s_ch), _new_rows(params, bs, max(hp, qp))
    p_own = np.empty(max(q, classes if head == HEAD_MULAW else nmix), np.float64)
    x, hh, acc, tmp, p = _unowned(x_own), _unowned(hh_own), _unowned(acc_own), _unowned(tmp_own), _unowned(p_own)
    codes = np.empty(bs, np.int64)
    per_step = gbias.shape[0] > 1
    shared = gbias.ndim == 4 and gbias.shape[1] == 1  # one bias row for every row
    target = np.int64(0)
    published = np.int64(0)
    idle0 = np.int64(0)  # role 0's wait for role 1 at the head, in time-stamp cycles
    idle1 = np.int64(0)  # role 1's waits for role 0's gate outputs
    long_waits = 0
    if t0 >= t1:  # nothing to do (a call that only compiles: no partner, no barrier)
        return t1, pos
    if role == 1:  # the first step's past taps (later ones are made a step ahead)
        for i in range(nl):
            if not _owns_past(i, own, nl):
                _bias_and_past(ring, off, dil, i, pos, kernel, wc, wc_s, gbias[0], shared, p_sh[i], bs, rb, r_ch, g, qs)
    target, y, _ = _barrier(sync, 2, target)
    long_waits += y
    for t in range(t0, t1):
        if role == 0:
            u_t = uniforms[t]
            for b in range(bs):
                code = draw(_row(params, b), head, classes, nmix, ls_min, _row(u_t, b), temp, greedy, p)
                codes[b] = code
                _put_code(out, b, t, code)
        if t + 1 >= n_total:
            _keep_alive(x_own, hh_own, acc_own, tmp_own, p_own)
            _keep_alive(xq_own, xs_own, isum_own, xcat_own, codes)
            return t + 1, pos
        if role == 0:
            for b in range(bs):
                _embed(emb, in_scale, codes[b], _row(x, b), r_ch)
            gbt = gbias[t - t0] if per_step else gbias[0]
            for i in range(nl):
                L = (kernel - 1) * dil[i]
                if _owns_past(i, own, nl):  # this layer's past taps are role 0's
                    _bias_and_past(ring, off, dil, i, pos, kernel, wc, wc_s, gbt, shared, hh, bs, rb, r_ch, g, qs)
                else:
                    _set_rows(hh, p_sh[i], bs)  # bias + past taps, from role 1
                zi = z_sh[i]
                _chain_gate(x, hh, zi, ring[off[i] + pos % L], wc[i], wc_s[i], kernel, bs, rb, r_ch, g, qs)
                _atomic_add(sync, 2, 1)  # z_sh[i] is complete (and p_sh[i] read): role 1 may go on
                if i + 1 < nl:
                    _add_rows(x, bres[i], bs)
                    _block_product(zi, wres[i], wres_s[i], x, bs, rb, g2, r_ch, qs)
        else:
            _set_rows(acc, bskip, bs)
            nxt = t + 1 < t1  # the next step is this call's: make its past taps now
            gbn = gbias[t + 1 - t0] if per_step and nxt else gbias[0]
            for i in range(nl):
                published += 1
                y, waited = _wait_until(sync, 2, published)
                long_waits += y
                idle1 += waited
                _block_product(z_sh[i], wskip[i], wskip_s[i], acc, bs, rb, g2, s_ch, qs)
                # every past tap of time pos + 1 is in the ring by now (x[pos] included)
                if nxt and not _owns_past(i, own, nl):
                    _bias_and_past(ring, off, dil, i, pos + 1, kernel, wc, wc_s, gbn, shared, p_sh[i], bs, rb, r_ch, g,
                                   qs)  # fmt: skip
            for b in range(bs):
                a_b, s_b = _row(acc, b), _row(acc_sh, b)
                for c in range(s_ch):
                    s_b[c] = max(a_b[c], np.float32(0.0))
        pos += 1
        # the head: role 1 wrote acc_sh; each role computes its column blocks for every row
        target, y, waited = _barrier(sync, 2, target)
        if role == 0:
            idle0 += waited
        long_waits += y
        _head_block(acc_sh, h1[role], h1_s[role], b1[role], tmp, hid_sh, h_lo, h_n, True, bs, rb, s_ch, qs)
        target, y, _ = _barrier(sync, 2, target)
        long_waits += y
        _head_block(hid_sh, h2[role], h2_s[role], b2[role], tmp, params, q_lo, q_n, False, bs, rb, h_ch, qs)
        if long_waits > max_long_waits:
            _atomic_add(sync, 1, 1)
        # params complete (role 0 draws from them next); role 1 is done reading z_sh
        target, y, _ = _barrier(sync, 2, target)
        long_waits += y
        if _atomic_load(sync, 1) > 0:
            break
    if role == 0:
        sync[3] = idle0
    else:
        sync[4] = idle1
    _keep_alive(x_own, hh_own, acc_own, tmp_own, p_own)
    _keep_alive(xq_own, xs_own, isum_own, xcat_own, codes)
    return min(t + 1, t1), pos

