"""Register-tiled products for the batched kernels: ``C[r0:r0+m, c0:c0+n] += A @ W``, exactly.

The fused CPU kernels add every product ``a[r, j] * W[j, o]`` into its output one ``j`` at a time
(float32: one chain of fused multiply-adds ``j = 0, 1, ..., k-1``; bfloat16 weights: two chains
per block of eight rows, see :func:`wavedil.fast._kernels._acc8`). Written as numba loops over
output columns, each output is loaded and stored once per eight ``j`` and each weight row is
re-read for every batch row: 58-74 GFLOP/s on one AVX-512 core against 129-182 for torch's
``addmm`` (``bench/batch_ceiling.py``).

A tile keeps ``m x n`` outputs (``m`` batch rows, ``n`` columns: ``m * n / lanes`` vector
registers) in registers for the whole ``j`` loop: each weight vector loaded serves ``m`` rows,
each ``a[r, j]`` is broadcast once for ``n / lanes`` multiply-adds, and the outputs are read and
written once. The loop is emitted directly as LLVM IR on ``<n x float>`` vectors (numba has no
vector type, and LLVM does not keep a numba-level tile in registers), with the *same* sequence
of operations per output as the plain loops: the results are the same bits, whatever the tile.

Tile shapes follow the vector registers of the CPU the code is compiled for: AVX-512 (32 x 512
bits) takes 6 rows x 64 float32 columns (24 accumulators); AVX2 and others (16 x 256 bits)
6 x 16. bfloat16's two chains need twice the accumulators: 6 x 32 and 3 x 16.
"""

from __future__ import annotations

import os
import platform

import numba as nb
from llvmlite import binding as llvm_binding
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, overload

__all__ = ["axpy_tiles", "int8_tiles", "tile_shape"]

_IS_X86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686", "x86")


def _targets_avx512() -> bool:
    """Whether numba compiles for AVX-512: the host's features, or those forced with
    ``NUMBA_CPU_FEATURES`` (a target forced by ``NUMBA_CPU_NAME`` alone gets the small tiles)."""
    forced = os.environ.get("NUMBA_CPU_FEATURES")
    if forced:
        return "+avx512f" in forced.split(",")
    if os.environ.get("NUMBA_CPU_NAME"):
        return False
    return _IS_X86 and bool(llvm_binding.get_host_cpu_features().get("avx512f", False))


_WIDE = _targets_avx512()

#: (rows, columns) of a tile by weight format, for the compile target
_SHAPES = {"f32": (6, 64), "bf16": (6, 32)} if _WIDE else {"f32": (6, 16), "bf16": (3, 16)}
#: columns of the narrow tiles that take what the wide ones leave (then plain loops, < 16 columns)
_NARROW = 16


def tile_shape(bf16: bool) -> tuple[int, int]:
    """``(rows, columns)`` of the main tile for float32 (``bf16=False``) or bfloat16 weights."""
    return _SHAPES["bf16" if bf16 else "f32"]


def _make_tile(rows: int, narrow: bool):
    """An intrinsic ``tile(a, w, c, r0, c0, k8, k)``: ``c[r0 + i, c0 : c0 + n] += a[r0 + i, :k] @
    w[:k, c0 : c0 + n]`` for ``i < rows`` (``n``: the format's tile width, or 16 if ``narrow``).

    ``a``, ``c`` float32 ``(>= r0 + rows, .)``, ``w`` float32 or bfloat16 bits (uint16) ``(>= k, .)``,
    each with unit stride along its last axis. float32: ``c += a[:, j] * w[j]`` one ``j`` at a
    time; bfloat16: per block of eight ``j < k8`` two chains (``p = c + s0 w0``, ``q = s1 w1 +
    s3 w3``, ``p += s2 w2``, ``p += s4 w4``, ``q += s5 w5`` ... ``c = p + q``), then one ``j`` at a
    time from ``k8``: the operations of :func:`wavedil.fast._kernels._acc8` and ``_acc1`` as LLVM
    fuses them (``q``'s first sum is ``fma(s1, w1, s3 * w3)``; the tests compare the bits).
    """

    @intrinsic
    def tile(typingctx, a, w, c, r0, c0, k8, k):
        if not all(isinstance(x, types.Array) and x.ndim == 2 for x in (a, w, c)):
            return None
        if a.dtype != types.float32 or c.dtype != types.float32 or w.dtype not in (types.float32, types.uint16):
            return None
        bf16 = w.dtype == types.uint16
        n = _NARROW if narrow else tile_shape(bf16)[1]
        sig = types.void(a, w, c, types.intp, types.intp, types.intp, types.intp)

        def codegen(context, builder, signature, args):
            arrs = [context.make_array(t)(context, builder, v) for t, v in zip(signature.args[:3], args[:3])]
            r0v, c0v, k8v, kv = args[3:]
            intp = context.get_value_type(types.intp)
            f32 = ir.FloatType()
            vt = ir.VectorType(f32, n)
            i8p = ir.IntType(8).as_pointer()
            elem = 2 if bf16 else 4

            def ptr(which, i, j, ty, size=4):
                arr = arrs[which]
                row_stride = cgutils.unpack_tuple(builder, arr.strides, 2)[0]
                off = builder.add(builder.mul(i, row_stride), builder.mul(j, ir.Constant(intp, size)))
                return builder.bitcast(builder.gep(builder.bitcast(arr.data, i8p), [off]), ty.as_pointer())

            fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vt, [vt, vt, vt]), f"llvm.fma.v{n}f32")
            undef = ir.Constant(vt, ir.Undefined)
            splat_mask = ir.Constant(ir.VectorType(ir.IntType(32), n), [0] * n)
            zero32 = ir.Constant(ir.IntType(32), 0)
            rows_v = [builder.add(r0v, ir.Constant(intp, i)) for i in range(rows)]

            def weights(j):
                if not bf16:
                    return builder.load(ptr(1, j, c0v, vt), align=4)
                bits = builder.load(ptr(1, j, c0v, ir.VectorType(ir.IntType(16), n), elem), align=2)
                wide = builder.zext(bits, ir.VectorType(ir.IntType(32), n))
                wide = builder.shl(wide, ir.Constant(ir.VectorType(ir.IntType(32), n), [16] * n))
                return builder.bitcast(wide, vt)

            def scalar(i, j):
                s = builder.load(ptr(0, rows_v[i], j, f32), align=4)
                return builder.shuffle_vector(builder.insert_element(undef, s, zero32), undef, splat_mask)

            # accumulators in stack slots of the entry block: LLVM promotes them to registers
            acc = [cgutils.alloca_once(builder, vt) for _ in range(rows)]
            for i in range(rows):
                builder.store(builder.load(ptr(2, rows_v[i], c0v, vt), align=4), acc[i])

            def one_at_a_time(start, stop):
                with cgutils.for_range_slice(builder, start, stop, ir.Constant(intp, 1)) as (j, _):
                    wv = weights(j)
                    for i in range(rows):
                        builder.store(builder.call(fma, [scalar(i, j), wv, builder.load(acc[i])]), acc[i])

            if not bf16:
                one_at_a_time(ir.Constant(intp, 0), kv)
            else:
                other = [cgutils.alloca_once(builder, vt) for _ in range(rows)]
                with cgutils.for_range_slice(builder, ir.Constant(intp, 0), k8v, ir.Constant(intp, 8)) as (j0, _):
                    for m in range(8):
                        if m == 1:
                            continue  # taken with row 3 (below)
                        j = builder.add(j0, ir.Constant(intp, m))
                        wv = weights(j)
                        for i in range(rows):
                            s = scalar(i, j)
                            if m == 3:  # q = s1 w1 + s3 w3, fused as LLVM fuses _acc8: fma(s1, w1, s3 * w3)
                                j1 = builder.add(j0, ir.Constant(intp, 1))
                                first = builder.call(fma, [scalar(i, j1), weights(j1), builder.fmul(s, wv)])
                                builder.store(first, other[i])
                            else:
                                slot = acc[i] if m % 2 == 0 else other[i]
                                builder.store(builder.call(fma, [s, wv, builder.load(slot)]), slot)
                    for i in range(rows):
                        builder.store(builder.fadd(builder.load(acc[i]), builder.load(other[i])), acc[i])
                one_at_a_time(k8v, kv)
            for i in range(rows):
                builder.store(builder.load(acc[i]), ptr(2, rows_v[i], c0v, vt), align=4)
            return context.get_dummy_value()

        return sig, codegen

    return tile


_tile_main = _make_tile(_SHAPES["f32"][0], False)
_tile_main_bf16 = _make_tile(_SHAPES["bf16"][0], False)
_tile_four = _make_tile(4, False)  # the rows that a main tile leaves: 4, 2 and 1 at a time
_tile_two = _make_tile(2, False)
_tile_one = _make_tile(1, False)
_tile_narrow = _make_tile(_SHAPES["f32"][0], True)
_tile_narrow_bf16 = _make_tile(_SHAPES["bf16"][0], True)
_tile_narrow_one = _make_tile(1, True)


def _rows_of(w):
    """Rows of the main tile for ``w``'s format (a compile-time constant)."""


@overload(_rows_of)
def _rows_of_impl(w):
    rows = tile_shape(w.dtype == types.uint16)[0]
    return lambda w: rows


def _width_of(w):
    """Columns of the main tile for ``w``'s format (a compile-time constant)."""


@overload(_width_of)
def _width_of_impl(w):
    width = tile_shape(w.dtype == types.uint16)[1]
    return lambda w: width


def _tile(a, w, c, r0, c0, k8, k, narrow):
    """The main tile (rows of :func:`_rows_of`) of ``w``'s format, wide or ``narrow`` (16 columns)."""


@overload(_tile)
def _tile_impl(a, w, c, r0, c0, k8, k, narrow):
    if w.dtype == types.uint16:
        return lambda a, w, c, r0, c0, k8, k, narrow: (
            _tile_narrow_bf16(a, w, c, r0, c0, k8, k) if narrow else _tile_main_bf16(a, w, c, r0, c0, k8, k)
        )
    return lambda a, w, c, r0, c0, k8, k, narrow: (
        _tile_narrow(a, w, c, r0, c0, k8, k) if narrow else _tile_main(a, w, c, r0, c0, k8, k)
    )


@nb.njit(nogil=True, cache=True, boundscheck=False)
def axpy_tiles(a, w, c, n_rows, k, n):
    """``c[r, :m] += a[r, :k] @ W[:k, :m]`` for ``r < n_rows``, by tiles; returns ``m``, the
    columns done (a multiple of 16: the caller adds the last ``n - m`` its own way).

    ``a (>= n_rows, >= k)``, ``c (>= n_rows, >= n)`` float32, ``w (>= k, >= n)`` float32 or
    bfloat16 bits, all with unit stride along the last axis (asserted); the same bits as the plain
    loops of ``wavedil.fast._kernels._axpy_rows_f``.
    """
    assert a.strides[1] == 4 and c.strides[1] == 4 and w.strides[1] == w.itemsize
    rows = _rows_of(w)
    width = _width_of(w)
    k8 = k - k % 8
    wide_end = n - n % width
    narrow_end = n - n % 16
    c0 = 0
    while c0 < narrow_end:
        narrow = c0 >= wide_end
        r = 0
        while r + rows <= n_rows:
            _tile(a, w, c, r, c0, k8, k, narrow)
            r += rows
        if narrow:
            while r < n_rows:
                _tile_narrow_one(a, w, c, r, c0, k8, k)
                r += 1
        else:
            # a one-row tile has too few accumulators to hide the multiply-add latency
            if rows > 4 and r + 4 <= n_rows:
                _tile_four(a, w, c, r, c0, k8, k)
                r += 4
            if r + 2 <= n_rows:
                _tile_two(a, w, c, r, c0, k8, k)
                r += 2
            if r < n_rows:
                _tile_one(a, w, c, r, c0, k8, k)
                r += 1
        c0 += 16 if narrow else width
    return narrow_end


# ----------------------------------------------------------------------------- int8 x int16 tiles
#
# The int8 products sum ``xq[r, j] * W[j, o]`` exactly in int32 (inputs rounded to int16 by the
# caller, see ``wavedil.fast._kernels._quant16``), so any order gives the same sums. The weights
# are in blocks of 8 outputs by row pairs, ``w (n8/8, KP, 8, 2)`` int8: pair ``p`` of block
# ``b`` is 16 bytes, ``W[2p, 8b + c], W[2p + 1, 8b + c]`` side by side. A tile keeps ``rows``
# batch rows x ``vecs`` vectors of int32 sums in registers over all the pairs: each step
# broadcasts a row's int16 pair to every lane and adds ``pmaddwd(weights, pair)`` (on a CPU with
# AVX512-VNNI or AVX-VNNI LLVM fuses the multiply and the add into one ``vpdpwssd``). On AVX-512
# a vector is 16 outputs (two blocks, joined after the loads), on AVX2 8 outputs (one block).
#
# A tile either stores its sums (``out`` int32) or converts them in registers (``out`` float32):
# ``out[r, o] += float32(sum) * (sc[o] * xs[r])``, the int8 kernels' conversion
# (``wavedil.fast._kernels._dequant``) with the same operations, so the same bits.

#: (rows, vectors, outputs per vector) of the int8 tile for the compile target
_I8_SHAPE = (6, 4, 16) if _WIDE else (4, 2, 8)


def _make_itile(rows: int, vecs: int, lanes: int):
    """An intrinsic ``itile(xq, w, out, r0, b0, p0, kp, xs, sc)`` over the outputs ``o`` in
    ``8 b0 : 8 b0 + vecs * lanes`` of rows ``r = r0 + i``, ``i < rows``, with ``s[r, o] = sum_{q <
    kp} xq[r, 2q : 2q + 2] . W[pair p0 + q]`` in int32: ``out[r, o] = s`` (``out`` int32) or
    ``out[r, o] += float32(s) * (sc[o] * xs[r])`` (``out`` float32, ``xs``, ``sc`` float32 1-D).

    ``xq (>= r0 + rows, >= 2 kp)`` int16 and ``out`` with unit stride along their last axis,
    ``w (n8/8, KP, 8, 2)`` int8 with 16-byte pairs (asserted by the caller). ``lanes``: outputs
    per vector, 16 (AVX-512, two blocks per vector) or 8 (one block).
    """

    @intrinsic
    def itile(typingctx, xq, w, out, r0, b0, p0, kp, xs, sc):
        if not all(isinstance(t, types.Array) for t in (xq, w, out, xs, sc)):
            return None
        if (xq.ndim, xq.dtype, w.ndim, w.dtype, out.ndim) != (2, types.int16, 4, types.int8, 2):
            return None
        if out.dtype not in (types.int32, types.float32) or xs.dtype != types.float32 or sc.dtype != types.float32:
            return None
        convert = out.dtype == types.float32
        sig = types.void(xq, w, out, types.intp, types.intp, types.intp, types.intp, xs, sc)

        def codegen(context, builder, signature, args):
            xa, wa, oa, xsa, sca = (
                context.make_array(signature.args[j])(context, builder, args[j]) for j in (0, 1, 2, 7, 8)
            )
            r0v, b0v, p0v, kpv = args[3:7]
            intp = context.get_value_type(types.intp)
            i8, i32, f32 = ir.IntType(8), ir.IntType(32), ir.FloatType()
            i8p = i8.as_pointer()
            v_acc = ir.VectorType(i32, lanes)
            v_f = ir.VectorType(f32, lanes)
            v_w16 = ir.VectorType(ir.IntType(16), 2 * lanes)
            v_b16 = ir.VectorType(i8, 16)
            name = "llvm.x86.avx512.pmaddw.d.512" if lanes == 16 else "llvm.x86.avx2.pmadd.wd"
            pmadd = cgutils.get_or_insert_function(builder.module, ir.FunctionType(v_acc, [v_w16, v_w16]), name)
            x_stride = cgutils.unpack_tuple(builder, xa.strides, 2)[0]
            o_stride = cgutils.unpack_tuple(builder, oa.strides, 2)[0]
            b_stride = cgutils.unpack_tuple(builder, wa.strides, 4)[0]
            rows_v = [builder.add(r0v, ir.Constant(intp, i)) for i in range(rows)]
            wbase = builder.gep(builder.bitcast(wa.data, i8p), [builder.mul(b0v, b_stride)])
            per_vec = lanes // 8  # blocks per vector

            def at(base, off, ty):
                return builder.bitcast(builder.gep(base, [off]), ty.as_pointer())

            def splat(scalar, vt):
                undef = ir.Constant(vt, None)
                one = builder.insert_element(undef, scalar, ir.Constant(i32, 0))
                return builder.shuffle_vector(one, undef, ir.Constant(ir.VectorType(i32, lanes), [0] * lanes))

            zero = ir.Constant(v_acc, [0] * lanes)
            acc = [[cgutils.alloca_once_value(builder, zero) for _ in range(vecs)] for _ in range(rows)]
            xrow = [builder.gep(builder.bitcast(xa.data, i8p), [builder.mul(rows_v[i], x_stride)]) for i in range(rows)]
            with cgutils.for_range(builder, kpv) as loop:
                q = loop.index
                pair_off = builder.shl(builder.add(p0v, q), ir.Constant(intp, 4))
                wv = []
                for v in range(vecs):
                    parts = []
                    for blk in range(per_vec):
                        off = builder.add(pair_off, builder.mul(b_stride, ir.Constant(intp, v * per_vec + blk)))
                        parts.append(builder.load(at(wbase, off, v_b16), align=1))
                    if per_vec == 1:
                        joined = parts[0]
                    else:  # two blocks side by side
                        both = ir.Constant(ir.VectorType(i32, 32), list(range(32)))
                        joined = builder.shuffle_vector(parts[0], parts[1], both)
                    wv.append(builder.sext(joined, v_w16))
                x_off = builder.shl(q, ir.Constant(intp, 2))
                for i in range(rows):
                    pair = builder.bitcast(splat(builder.load(at(xrow[i], x_off, i32), align=2), v_acc), v_w16)
                    for v in range(vecs):
                        product = builder.call(pmadd, [wv[v], pair])
                        builder.store(builder.add(builder.load(acc[i][v]), product), acc[i][v])
            out_base = builder.bitcast(oa.data, i8p)
            col0 = builder.shl(b0v, ir.Constant(intp, 3))  # first output 8 b0
            if convert:
                fmuladd = cgutils.get_or_insert_function(
                    builder.module, ir.FunctionType(v_f, [v_f, v_f, v_f]), f"llvm.fmuladd.v{lanes}f32"
                )
                xs_base = builder.bitcast(xsa.data, f32.as_pointer())
                sc_base = builder.gep(builder.bitcast(sca.data, f32.as_pointer()), [col0])
            for i in range(rows):
                row_off = builder.add(builder.mul(rows_v[i], o_stride), builder.shl(col0, ir.Constant(intp, 2)))
                row = builder.gep(out_base, [row_off])
                if convert:
                    scale = splat(builder.load(builder.gep(xs_base, [rows_v[i]])), v_f)
                for v in range(vecs):
                    dst = at(row, ir.Constant(intp, 4 * lanes * v), v_f if convert else v_acc)
                    if not convert:
                        builder.store(builder.load(acc[i][v]), dst, align=4)
                        continue
                    sc_ptr = builder.gep(sc_base, [ir.Constant(intp, lanes * v)])
                    sc_v = builder.load(builder.bitcast(sc_ptr, v_f.as_pointer()), align=4)
                    term = builder.sitofp(builder.load(acc[i][v]), v_f)
                    total = builder.call(fmuladd, [term, builder.fmul(sc_v, scale), builder.load(dst, align=4)])
                    builder.store(total, dst, align=4)
            return context.get_dummy_value()

        return sig, codegen

    return itile


_ROWS8, _VECS8, _LANES8 = _I8_SHAPE
_itile_main = _make_itile(_ROWS8, _VECS8, _LANES8)
_itile_four = _make_itile(4, _VECS8, _LANES8)
_itile_two = _make_itile(2, _VECS8, _LANES8)
_itile_one = _make_itile(1, _VECS8, _LANES8)
_itile_block = _make_itile(4, 1, 8)  # one block (8 outputs) of 4 rows, then of one row
_itile_block_one = _make_itile(1, 1, 8)


@nb.njit(nogil=True, cache=True, boundscheck=False)
def int8_tiles(xq, w, out, n_rows, p0, kp, blocks, xs, sc):
    """The int8 sums ``s[r, o] = sum_{q < kp} xq[r, 2q : 2q + 2] . W[pair p0 + q]`` of the first
    ``blocks`` blocks of outputs (``o < 8 blocks``) for ``r < n_rows``, by tiles: ``out[r, o] = s``
    (``out`` int32) or ``out[r, o] += float32(s) * (sc[o] * xs[r])`` (``out`` float32; every
    ``xs[r]`` finite and non-zero, see ``wavedil.fast._kernels._dequant``).

    ``xq (>= n_rows, >= 2 kp)`` int16 and ``out (>= n_rows, >= 8 blocks)`` with unit stride along
    their last axis; ``w (>= blocks, KP, 8, 2)`` int8, each block's pairs contiguous (asserted);
    ``xs (>= n_rows,)``, ``sc (>= 8 blocks,)`` float32 (unused for an int32 ``out``). The exact
    integer sums: the same values as any other order of the products.
    """
    assert xq.strides[1] == 2 and out.strides[1] == out.itemsize and sc.strides[0] == 4
    assert w.strides[1] == 16 and w.strides[2] == 2 and w.strides[3] == 1
    per_tile = _VECS8 * _LANES8 // 8
    b = 0
    while b + per_tile <= blocks:
        r = 0
        while r + _ROWS8 <= n_rows:
            _itile_main(xq, w, out, r, b, p0, kp, xs, sc)
            r += _ROWS8
        if _ROWS8 > 4 and r + 4 <= n_rows:
            _itile_four(xq, w, out, r, b, p0, kp, xs, sc)
            r += 4
        if r + 2 <= n_rows:
            _itile_two(xq, w, out, r, b, p0, kp, xs, sc)
            r += 2
        if r < n_rows:
            _itile_one(xq, w, out, r, b, p0, kp, xs, sc)
        b += per_tile
    while b < blocks:
        r = 0
        while r + 4 <= n_rows:
            _itile_block(xq, w, out, r, b, p0, kp, xs, sc)
            r += 4
        while r < n_rows:
            _itile_block_one(xq, w, out, r, b, p0, kp, xs, sc)
            r += 1
        b += 1
