"""Where batch 1's time goes: the fast kernels' pieces, one thread, ref30's shapes; prints JSON.

Three probes, each against a baseline measured in the same run:

* **matvecs**: every per-sample matrix-vector product of ref30 (30 layers of gate ``k*R x G``,
  residual ``Z x R`` and skip ``Z x S`` products, then the two head products) through the
  kernels' ``_matvec``, for each weight format (float32, bfloat16 bits, int8 with scales). Once
  with 30 distinct layers (the weights stream from the last-level cache, as in generation) and
  once with one layer's matrices reused 30 times (they stay in L1): where the two agree, the
  format is bound by its arithmetic, not by memory.
* **gate**: ``gate_inplace`` over 30 layers of ``Z`` channels against the former ``exp_neg``,
  whose 64-bit integer steps AVX2 cannot vectorise (kept here as the baseline).
* **int8 x int16** (x86 with AVX2 only): the same matvecs with int8 weights stored in row pairs
  and the input vector quantised to int16 (one scale per vector), multiplied with ``pmaddwd``
  (16 products per instruction, int32 sums) -- the integer form the int8 mode could take --
  with its largest error relative to the float32 product.

Not a generation benchmark (``bench/generation.py`` is): no sampling, ring buffers or threads.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numba as nb
import numpy as np
from _machine import cpu_flags, cpu_model
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from wavedil.fast._kernels import _JIT as _KERNEL_JIT
from wavedil.fast._kernels import _matvec, exp_reduced, gate_inplace
from wavedil.model import WaveNetConfig

_JIT = dict(_KERNEL_JIT, cache=False)  # the kernels' compile options; no cache files in bench/


# ----------------------------------------------------------------------------- matvecs


@nb.njit(**_JIT)
def _chain(n, reuse, wg, wr, ws, h1, h2, sg, sr, ss, s1, s2, x, hh, z, acc, tmp):
    """``n`` samples of ref30's products; layer ``i`` uses matrices ``i % reuse``. ``z`` is a
    cheap stand-in for the gate (a product of the two halves, scaled to stay finite)."""
    nl, kr, g = wg.shape[0], wg.shape[1], wg.shape[2]
    zc, r_ch, s_ch = wr.shape[1], wr.shape[2], ws.shape[2]
    h_ch, q = h1.shape[1], h2.shape[1]
    for _ in range(n):
        acc[:] = 0
        for i in range(nl):
            li = i % reuse
            hh[:] = 0
            _matvec(x, wg[li], sg, hh, kr, g)
            for c in range(zc):
                z[c] = hh[c] * hh[zc + c] * np.float32(1e-3)
            _matvec(z, wr[li], sr, x[:r_ch], zc, r_ch)
            _matvec(z, ws[li], ss, acc, zc, s_ch)
        tmp[:] = 0
        _matvec(acc, h1, s1, tmp, s_ch, h_ch)
        _matvec(tmp, h2, s2, acc[:q], h_ch, q)


def _shapes(cfg: WaveNetConfig) -> dict[str, tuple[int, ...]]:
    nl = cfg.layers_per_stack * cfg.stacks
    r, g, s, h, q = cfg.residual_channels, cfg.gate_channels, cfg.skip_channels, cfg.head_channels, cfg.quantization_channels
    return {"wg": (nl, cfg.kernel_size * r, g), "wr": (nl, g // 2, r), "ws": (nl, g // 2, s), "h1": (s, h), "h2": (h, q)}


def _weights(shapes: dict, fmt: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random matrices in one of the kernels' formats (float32; bf16 as uint16 bits; int8)."""
    out = {}
    for name, shape in shapes.items():
        w = (rng.standard_normal(shape) / np.sqrt(shape[-2])).astype(np.float32)
        if fmt == "bf16":
            w = (w.view(np.uint32) >> 16).astype(np.uint16)
        elif fmt == "int8":
            w = np.clip(np.rint(w * 127 / np.abs(w).max()), -127, 127).astype(np.int8)
        out[name] = w
    return out


def _rate(fn, n: int, repeat: int) -> float:
    """Best samples/s of ``fn(n)`` over ``repeat`` runs (after one warm-up)."""
    fn(2)
    best = 0.0
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn(n)
        best = max(best, n / (time.perf_counter() - t0))
    return best


def matvec_rates(cfg: WaveNetConfig, n: int, repeat: int) -> dict:
    shapes = _shapes(cfg)
    width = max(max(s[-1], s[-2]) for s in shapes.values())
    res = {}
    for fmt in ("fp32", "bf16", "int8"):
        w = _weights(shapes, fmt, np.random.default_rng(0))
        sc = np.full(width, 1.0 / 127, np.float32)
        bufs = [np.zeros(width, np.float32) for _ in range(5)]
        bufs[0][:] = 0.1
        args = (w["wg"], w["wr"], w["ws"], w["h1"], w["h2"], sc, sc, sc, sc, sc, *bufs)
        streamed = _rate(lambda k: _chain(k, shapes["wg"][0], *args), n, repeat)
        in_l1 = _rate(lambda k: _chain(k, 1, *args), n, repeat)
        res[fmt] = {"streamed": round(streamed), "l1_resident": round(in_l1), "bytes_per_sample": sum(a.nbytes for a in w.values())}
    return res


# ----------------------------------------------------------------------------- gate


@nb.njit(**_JIT)
def _exp_neg_int64(x):
    """The former ``exp_neg``: the same polynomial, ``m`` and ``2**-m`` through 64-bit integers."""
    m = np.int64(x * np.float32(-1.4426950408889634) + np.float32(0.5))
    return exp_reduced(x, np.float32(m)) * (np.float32(np.int64(1) << (np.int64(62) - m)) * np.float32(2.168404344971009e-19))


@nb.njit(**_JIT)
def _gate_int64(h, z, n):
    lo = np.float32(-40.0)
    for c in range(n):
        a = h[c]
        b = h[n + c]
        ea = _exp_neg_int64(max(np.float32(-2.0) * abs(a), lo))
        eb = _exp_neg_int64(max(-abs(b), lo))
        t = (np.float32(1.0) - ea) * (np.float32(1.0) if b >= 0 else eb) / ((np.float32(1.0) + ea) * (np.float32(1.0) + eb))
        z[c] = t if a >= 0 else -t


@nb.njit(**_JIT)
def _gates(n, layers, h, z, old):
    for _ in range(n):
        for _i in range(layers):
            if old:
                _gate_int64(h, z, z.size)
            else:
                gate_inplace(h, z, z.size)


def gate_times(cfg: WaveNetConfig, n: int, repeat: int) -> dict:
    zc = cfg.gate_channels // 2
    layers = cfg.layers_per_stack * cfg.stacks
    h = np.random.default_rng(0).standard_normal(2 * zc).astype(np.float32) * 3
    z_new, z_old = np.empty(zc, np.float32), np.empty(zc, np.float32)
    us = {}
    for name, z, old in (("gate_inplace", z_new, False), ("int64_exp_baseline", z_old, True)):
        us[name] = round(1e6 / _rate(lambda k, z=z, old=old: _gates(k, layers, h, z, old), n, repeat), 2)
    us["same_values"] = bool(np.array_equal(z_new, z_old))
    us["speedup"] = round(us["int64_exp_baseline"] / us["gate_inplace"], 2)
    return {"us_per_sample": us, "layers": layers, "channels": zc}


# ----------------------------------------------------------------------------- int8 x int16


@intrinsic
def _madd4(typingctx, acc, acc_off, w, w_off, stride, p0, p1, p2, p3):
    """``acc[acc_off : acc_off + 8] += sum_m pmaddwd(w16_m, splat(p_m))`` (int32), where
    ``w16_m`` is the 16 int8 at ``w[w_off + m * stride:]`` sign-extended (8 outputs x a row
    pair) and ``p_m`` two int16 activations packed in an int32."""
    sig = types.void(acc, acc_off, w, w_off, stride, p0, p1, p2, p3)

    def codegen(context, builder, signature, args):
        i8, i16, i32 = ir.IntType(8), ir.IntType(16), ir.IntType(32)
        v8i32, v16i16, v16i8 = ir.VectorType(i32, 8), ir.VectorType(i16, 16), ir.VectorType(i8, 16)
        a = context.make_array(signature.args[0])(context, builder, args[0])
        wa = context.make_array(signature.args[2])(context, builder, args[2])
        accp = builder.bitcast(builder.gep(builder.bitcast(a.data, i32.as_pointer()), [args[1]]), v8i32.as_pointer())
        wp = builder.gep(builder.bitcast(wa.data, i8.as_pointer()), [args[3]])
        pmadd = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(v8i32, [v16i16, v16i16]), "llvm.x86.avx2.pmadd.wd"
        )
        total = builder.load(accp, align=4)
        for m in range(4):
            wm = builder.gep(wp, [builder.mul(args[4], ir.Constant(args[4].type, m))])
            wv = builder.sext(builder.load(builder.bitcast(wm, v16i8.as_pointer()), align=1), v16i16)
            pair = builder.trunc(args[5 + m], i32)
            splat = builder.shuffle_vector(
                builder.insert_element(ir.Constant(v8i32, None), pair, ir.Constant(i32, 0)),
                ir.Constant(v8i32, None),
                ir.Constant(v8i32, [0] * 8),
            )
            total = builder.add(total, builder.call(pmadd, [wv, builder.bitcast(splat, v16i16)]))
        builder.store(total, accp, align=4)
        return context.get_dummy_value()

    return sig, codegen


@nb.njit(**_JIT)
def _matvec_q(x, xq, w, sc, y, iacc, k, n):
    """``y[:n] += x[:k] @ W`` with ``W`` int8 in row pairs ``(k/2, n, 2)`` (flat), scales ``sc (n,)``;
    ``x`` quantised to int16 with one scale; ``k % 8 == 0``, ``n % 8 == 0``."""
    m = np.float32(0.0)
    for j in range(k):
        m = max(m, abs(x[j]))
    inv = np.float32(32767.0) / m if m > 0 else np.float32(0.0)
    for j in range(k):
        xq[j] = np.int16(np.int32(x[j] * inv + (np.float32(0.5) if x[j] >= 0 else np.float32(-0.5))))
    iacc[:n] = 0
    pairs = xq.view(np.int32)
    st = 2 * n
    for jp in range(0, k // 2, 4):
        for o in range(0, n, 8):
            _madd4(iacc, o, w, jp * st + 2 * o, st, pairs[jp], pairs[jp + 1], pairs[jp + 2], pairs[jp + 3])
    xs = m / np.float32(32767.0)
    for o in range(n):
        y[o] += np.float32(iacc[o]) * (sc[o] * xs)


@nb.njit(**_JIT)
def _chain_q(n, wg, wr, ws, h1, h2, sg, sr, ss, s1, s2, dims, x, hh, z, acc, tmp, xq, iacc):
    kr, g, zc, r_ch, s_ch, h_ch, q = dims
    for _ in range(n):
        acc[:] = 0
        for i in range(wg.shape[0]):
            hh[:] = 0
            _matvec_q(x, xq, wg[i], sg[i], hh, iacc, kr, g)
            for c in range(zc):
                z[c] = hh[c] * hh[zc + c] * np.float32(1e-3)
            _matvec_q(z, xq, wr[i], sr[i], x[:r_ch], iacc, zc, r_ch)
            _matvec_q(z, xq, ws[i], ss[i], acc, iacc, zc, s_ch)
        tmp[:] = 0
        _matvec_q(acc, xq, h1, s1, tmp, iacc, s_ch, h_ch)
        _matvec_q(tmp, xq, h2, s2, acc[:q], iacc, h_ch, q)


def _pack_pairs(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float32 ``(k, n)`` -> int8 row pairs ``(k/2 * n * 2,)`` and per-column scales ``(n,)``."""
    k, n = w.shape
    sc = np.maximum(np.abs(w).max(0), 1e-12) / 127
    q = np.clip(np.rint(w / sc), -127, 127).astype(np.int8)
    return np.ascontiguousarray(q.reshape(k // 2, 2, n).transpose(0, 2, 1)).reshape(-1), sc.astype(np.float32)


def int16_rates(cfg: WaveNetConfig, n: int, repeat: int) -> dict:
    if platform.machine().lower() not in ("x86_64", "amd64") or not cpu_flags()["avx2"]:
        return {"skipped": "needs an x86 CPU with AVX2"}
    shapes = _shapes(cfg)
    rng = np.random.default_rng(0)
    packed = {}
    for name, shape in shapes.items():
        ws = (rng.standard_normal(shape) / np.sqrt(shape[-2])).astype(np.float32).reshape(-1, *shape[-2:])
        qs, scs = zip(*(_pack_pairs(m) for m in ws))
        packed[name] = (np.stack(qs), np.stack(scs)) if len(shape) == 3 else (qs[0], scs[0])
    (wg, sg), (wr, sr), (wsk, ssk), (h1, s1), (h2, s2) = (packed[k] for k in ("wg", "wr", "ws", "h1", "h2"))
    kr, g = shapes["wg"][1:]
    zc, r_ch = shapes["wr"][1:]
    s_ch, h_ch, q = shapes["ws"][2], shapes["h1"][1], shapes["h2"][1]
    dims = np.array([kr, g, zc, r_ch, s_ch, h_ch, q], np.int64)
    width = max(kr, g, s_ch, h_ch, q)
    bufs = [np.zeros(width, np.float32) for _ in range(5)]
    bufs[0][:] = 0.1
    scratch = (np.zeros(width, np.int16), np.zeros(width, np.int32))
    rate = _rate(lambda k: _chain_q(k, wg, wr, wsk, h1, h2, sg, sr, ssk, s1, s2, dims, *bufs, *scratch), n, repeat)
    # the error of one product against float32 on the dequantised weights (int8 rounding excluded)
    w = rng.standard_normal((kr, g)).astype(np.float32)
    qw, sw = _pack_pairs(w)
    deq = qw.reshape(kr // 2, g, 2).transpose(0, 2, 1).reshape(kr, g).astype(np.float32) * sw
    x = rng.standard_normal(kr).astype(np.float32)
    y = np.zeros(g, np.float32)
    _matvec_q(x, *scratch[:1], qw, sw, y, scratch[1], kr, g)
    ref = x.astype(np.float64) @ deq.astype(np.float64)
    return {"streamed": round(rate), "activation_rounding_max_rel_error": float(np.abs(y - ref).max() / np.abs(ref).max())}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=5000, help="samples per timed run")
    ap.add_argument("--repeat", type=int, default=3, help="runs per figure; the best is kept")
    ap.add_argument("--quick", action="store_true", help="a smoke run, not a measurement")
    args = ap.parse_args(argv)
    if args.samples < 1 or args.repeat < 1:
        ap.error(f"need --samples >= 1 and --repeat >= 1; got {args.samples}, {args.repeat}")
    n, repeat = (20, 1) if args.quick else (args.samples, args.repeat)
    cfg = WaveNetConfig()
    out = {
        "benchmark": "batch1_pieces",
        "machine": {"cpu": cpu_model(), "cpu_flags": cpu_flags(), "numba": nb.__version__, "threads": 1},
        "matvecs_samples_per_second": matvec_rates(cfg, n, repeat),
        "gate": gate_times(cfg, 10 * n, repeat),
        "int8_x_int16_samples_per_second": int16_rates(cfg, n, repeat),
    }
    mv = out["matvecs_samples_per_second"]
    q = out["int8_x_int16_samples_per_second"]
    if "streamed" in q:
        out["int8_x_int16_vs_int8"] = round(q["streamed"] / mv["int8"]["streamed"], 2)
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
