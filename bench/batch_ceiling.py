"""Where `fast` stops at large batches: its product routine alone, plain loops against tiles.

For B > 1 the fused back-end computes every product of a step with one routine,
``_axpy_rows_f`` (``c[r] += a[r] @ W`` for a block of rows, one slice of rows per thread). It
used plain loops over the output columns (``_axpy_rows_plain``, eight weight rows at a time);
it now goes by register tiles (``wavedil/fast/_tiles.py``) with the same bits. This script times
both on one thread, hot in cache, at ref30's shapes (B = 256 on two threads: 128 rows each, in
blocks of ``ROW_BLOCK``), next to torch's ``addmm`` of the same shapes on one thread and the
machine's float32 matmul rate on all threads (2048^3), all in the same run. The routine's rate on
one thread times the threads bounds what ``fast`` can reach at any batch, whatever the rest of
the step costs. The int8 mode's routine (each row rounded to int16, integer tiles that convert
their sums in registers: ``_quant_rows`` + ``_qrows``) is timed the same way, in multiply-adds
counted as two operations. Prints JSON.

    python bench/batch_ceiling.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import wavedil  # noqa: E402, F401  # isort: skip  (before torch, as the `wavedil` command)

import numba as nb  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from _machine import cpu_flags, cpu_model  # noqa: E402
from wavedil.fast._kernels import _axpy_rows_f, _axpy_rows_plain, _keep_alive, _qrows, _quant_rows, _unowned  # noqa: E402
from wavedil.fast.pack import pair_rows, quantize  # noqa: E402
from wavedil.fast.cpu import ROW_BLOCK  # noqa: E402

#: ref30's products per step (in, out): the dilated conv (2 taps of R = 64 -> gate 128), the
#: residual (64 -> 64), a layer's skip (64 -> 256), the head (256 -> 256)
SHAPES = {"conv": (128, 128), "residual": (64, 64), "skip": (64, 256), "head": (256, 256)}


@nb.njit(nogil=True, cache=True)
def _rows(a, w, c, k, n, row_block, reps, tiles):
    """``reps`` times ``c += a @ w`` the way the generation kernel does it (blocks of rows), by
    tiles or (``tiles`` False) by the plain loops (arrays sliced unowned, as the kernel does)."""
    a, w, c = _unowned(a), _unowned(w), _unowned(c)
    sc = np.zeros(1, np.float32)
    for _ in range(reps):
        for r0 in range(0, a.shape[0], row_block):
            if tiles:
                _axpy_rows_f(a[r0:], w, sc, c[r0:], min(row_block, a.shape[0] - r0), k, n)
            else:
                _axpy_rows_plain(a[r0:], w, sc, c[r0:], min(row_block, a.shape[0] - r0), k, n)


@nb.njit(nogil=True, cache=True)
def _rows_int8(a, w, sc, c, k, n, row_block, reps):
    """``reps`` times ``c += a @ W`` in the int8 mode, as the generation kernel does it: each
    block of rows rounded to int16, then its integer products (``w`` paired int8, ``sc`` scales)."""
    a, w, sc, c = _unowned(a), _unowned(w), _unowned(sc), _unowned(c)
    xq_own, xs_own = np.zeros((row_block, k + 16), np.int16), np.zeros(row_block, np.float32)
    isum_own = np.zeros((row_block, n + 16), np.int32)
    xq, xs, isum = _unowned(xq_own), _unowned(xs_own), _unowned(isum_own)
    for _ in range(reps):
        for r0 in range(0, a.shape[0], row_block):
            nr = min(row_block, a.shape[0] - r0)
            _quant_rows(a[r0:], nr, k, xq, xs)
            _qrows(xq, xs, w, 0, sc, c[r0:], nr, k, n, isum)
    _keep_alive(xq_own, xs_own, isum_own, xq_own, xq_own)


def _rate(fn, flops: float, min_s: float) -> float:
    fn(1)
    reps = 1
    while True:
        start = time.perf_counter()
        fn(reps)
        el = time.perf_counter() - start
        if el >= min_s:
            return flops * reps / el / 1e9
        reps *= 2


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=128, help="rows per thread (ref30 at B = 256 on two threads: 128)")
    ap.add_argument("--quick", action="store_true", help="short timings: a smoke test, not a measurement")
    args = ap.parse_args(argv)
    min_s = 0.02 if args.quick else 0.5
    rng = np.random.default_rng(0)
    threads = torch.get_num_threads()
    out: dict = {"cpu": cpu_model(), "cpu_flags": cpu_flags(), "torch_threads": threads, "rows": args.rows, "shapes": {}}
    for name, (k, n) in SHAPES.items():
        a = rng.standard_normal((args.rows, k), dtype=np.float32)
        w = rng.standard_normal((k, n), dtype=np.float32)
        c = np.zeros((args.rows, n), np.float32)
        flops = 2.0 * args.rows * k * n
        kernel = _rate(lambda r: _rows(a, w, c, k, n, ROW_BLOCK, r, True), flops, min_s)
        q, sc = quantize(w, "int8")
        w8 = pair_rows(q)
        int8 = _rate(lambda r: _rows_int8(a, w8, sc, c, k, n, ROW_BLOCK, r), flops, min_s)
        plain = _rate(lambda r: _rows(a, w, c, k, n, 16, r, False), flops, min_s)
        ta, tw, tc = torch.from_numpy(a), torch.from_numpy(w), torch.from_numpy(c)
        torch.set_num_threads(1)
        try:
            def addmm(reps: int) -> None:
                for _ in range(reps):
                    torch.addmm(tc, ta, tw, out=tc)

            sgemm = _rate(addmm, flops, min_s)
        finally:
            torch.set_num_threads(threads)
        out["shapes"][name] = {"k": k, "n": n, "kernel_gflops_1thread": round(kernel, 1),
                               "plain_loops_gflops_1thread": round(plain, 1),
                               "int8_gops_1thread": round(int8, 1),
                               "torch_addmm_gflops_1thread": round(sgemm, 1)}  # fmt: skip
    big = torch.randn(2048, 2048)
    out["matmul_gflops_all_threads"] = round(_rate(lambda r: [big @ big for _ in range(r)], 2.0 * 2048**3, min_s), 1)
    worst = min(v["kernel_gflops_1thread"] for v in out["shapes"].values())
    best = max(v["kernel_gflops_1thread"] for v in out["shapes"].values())
    out["fast_ceiling_fraction_of_matmul"] = [round(threads * worst / out["matmul_gflops_all_threads"], 3),
                                              round(threads * best / out["matmul_gflops_all_threads"], 3)]  # fmt: skip
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
