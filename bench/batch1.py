"""Where batch 1's time goes: the fast kernels' pieces, one thread, ref30's shapes; prints JSON.

Two probes, each against a baseline measured in the same run:

* **matvecs**: every per-sample matrix-vector product of ref30 (30 layers of gate ``k*R x G``,
  residual ``Z x R`` and skip ``Z x S`` products, then the two head products) through the
  kernels' ``_matvec``, for each weight format (float32, bfloat16 bits, int8: row pairs times
  the input rounded to int16, ``pmaddwd`` on AVX2), and the former int8 kernel (each weight
  widened to float32, kept here as the baseline). Once with 30 distinct layers (the weights
  stream from the last-level cache, as in generation) and once with one layer's matrices
  reused 30 times (they stay in L1): where the two agree, the format is bound by its
  arithmetic, not by memory.
* **gate**: ``gate_inplace`` over 30 layers of ``Z`` channels against the former ``exp_neg``,
  whose 64-bit integer steps AVX2 cannot vectorise (kept here as the baseline).

Not a generation benchmark (``bench/generation.py`` is): no sampling, ring buffers or threads.
"""

from __future__ import annotations

import argparse
import json
import time

import numba as nb
import numpy as np
from _machine import cpu_flags, cpu_model

from wavedil.fast import _kernels
from wavedil.fast._kernels import _JIT as _KERNEL_JIT
from wavedil.fast._kernels import _matvec, exp_reduced, gate_inplace
from wavedil.fast.pack import pair_rows, quantize
from wavedil.model import WaveNetConfig

_JIT = dict(_KERNEL_JIT, cache=False)  # the kernels' compile options; no cache files in bench/


# ----------------------------------------------------------------------------- matvecs


@nb.njit(**_JIT)
def _matvec_int8_float(x, w, sc, y, k, n, qs):
    """The former int8 kernel (the baseline): ``w (k, n)`` int8, each weight widened to float32,
    eight rows per pass, the scale applied to each sum of eight products."""
    for j in range(0, k - k % 8, 8):
        for o in range(n):
            t = x[j] * np.float32(w[j, o])
            u = x[j + 1] * np.float32(w[j + 1, o])
            t += x[j + 2] * np.float32(w[j + 2, o])
            u += x[j + 3] * np.float32(w[j + 3, o])
            t += x[j + 4] * np.float32(w[j + 4, o])
            u += x[j + 5] * np.float32(w[j + 5, o])
            t += x[j + 6] * np.float32(w[j + 6, o])
            u += x[j + 7] * np.float32(w[j + 7, o])
            y[o] += (t + u) * sc[o]


def _make_chain(matvec):
    @nb.njit(**_JIT)
    def chain(n, reuse, wg, wr, ws, h1, h2, sg, sr, ss, s1, s2, dims, x, hh, z, acc, tmp, qs):
        """``n`` samples of ref30's products; layer ``i`` uses matrices ``i % reuse``. ``z`` is a
        cheap stand-in for the gate (a product of the two halves, scaled to stay finite)."""
        kr, g, zc, r_ch, s_ch, h_ch, q = dims
        for _ in range(n):
            x[:] = 0.1  # every sample from the same input: the stand-in gate keeps it finite
            acc[:] = 0
            for i in range(wg.shape[0]):
                li = i % reuse
                hh[:] = 0
                matvec(x, wg[li], sg[li], hh, kr, g, qs)
                for c in range(zc):
                    z[c] = hh[c] * hh[zc + c] * np.float32(1e-3)
                matvec(z, wr[li], sr[li], x[:r_ch], zc, r_ch, qs)
                matvec(z, ws[li], ss[li], acc, zc, s_ch, qs)
            tmp[:] = 0
            matvec(acc, h1, s1, tmp, s_ch, h_ch, qs)
            matvec(tmp, h2, s2, acc[:q], h_ch, q, qs)

    return chain


_chain = _make_chain(_matvec)
_chain_baseline = _make_chain(_matvec_int8_float)


def _shapes(cfg: WaveNetConfig) -> dict[str, tuple[int, ...]]:
    nl = cfg.layers_per_stack * cfg.stacks
    r, g, s, h, q = cfg.residual_channels, cfg.gate_channels, cfg.skip_channels, cfg.head_channels, cfg.quantization_channels
    return {"wg": (nl, cfg.kernel_size * r, g), "wr": (nl, g // 2, r), "ws": (nl, g // 2, s), "h1": (s, h), "h2": (h, q)}


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
    kr, g = shapes["wg"][1:]
    zc, r_ch = shapes["wr"][1:]
    dims = np.array([kr, g, zc, r_ch, shapes["ws"][2], shapes["h1"][1], shapes["h2"][1]], np.int64)
    width = max(max(s[-1], s[-2]) for s in shapes.values()) + 16
    rng = np.random.default_rng(0)
    floats = {name: (rng.standard_normal(s) / np.sqrt(s[-2])).astype(np.float32) for name, s in shapes.items()}
    res = {}
    for fmt in ("fp32", "bf16", "int8", "int8_float_baseline"):
        stored = {name: quantize(w, fmt.split("_")[0]) for name, w in floats.items()}
        if fmt == "int8":  # the kernels' layout (the gate's two taps as one product of 2R rows)
            stored = {name: (pair_rows(q), s) for name, (q, s) in stored.items()}
        mats = [stored[name][0] for name in ("wg", "wr", "ws", "h1", "h2")]
        scales = [stored[name][1] for name in ("wg", "wr", "ws", "h1", "h2")]
        bufs = [np.zeros(width, np.float32) for _ in range(5)]
        bufs[0][:] = 0.1
        qs = (np.zeros(width, np.int16), np.zeros(width, np.int32))
        chain = _chain_baseline if fmt == "int8_float_baseline" else _chain
        args = (*mats, *scales, dims, *bufs, qs)
        streamed = _rate(lambda k: chain(k, shapes["wg"][0], *args), n, repeat)
        in_l1 = _rate(lambda k: chain(k, 1, *args), n, repeat)
        res[fmt] = {"streamed": round(streamed), "l1_resident": round(in_l1), "bytes_per_sample": sum(a.nbytes for a in mats)}
    res["int8_uses_pmaddwd"] = bool(_kernels._HAS_AVX2)
    res["int8_vs_baseline_streamed"] = round(res["int8"]["streamed"] / res["int8_float_baseline"]["streamed"], 2)
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
    }
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
