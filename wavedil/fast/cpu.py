"""The fused CPU generation back-end: orchestration of the numba kernels over threads.

The kernels (:mod:`wavedil.fast._kernels`) are compiled on first use and cached on disk by
numba; this module imports them lazily, so importing it costs nothing when numba is absent.

How the work is cut, by batch size ``B``:

* ``B == 1``: memory bound (a ref30 model's ~5 MB of float32 weights stream from the caches
  for every sample). With two or more threads, two run a pipeline
  (:func:`~wavedil.fast._kernels.run_pipe`): one thread the chain of dilated convs, gates and
  residual products, the other the skip products a layer behind it; they share the head. Each
  core streams about half the weights and the chain never waits inside a step. Two threads
  that lose (a busy machine keeps descheduling a partner) give way to one, chunk by chunk
  (:func:`_generate_pipe`).
* Small batches (at most :data:`PIPE_MEASURED_ROWS` rows) on exactly two threads: the same
  pipeline over every row, or slices of rows (below), whichever measures faster on this CPU in
  this weight mode (the pipeline pays while streaming the weights bounds a step).
* Larger batches: one slice of rows per thread, each advanced on its own by the fused kernel
  (no synchronisation) in the same arrays; each layer's weights serve all the rows of a slice
  while in cache (``bf16`` weights widened to float32 from :data:`WIDE_BATCH` rows).
* Local (mel) conditioning: the gate biases of every layer for each step (conv bias plus
  global plus local term) are computed for a chunk of steps at a time (at most ``chunk``
  samples' worth) by a row-blocked kernel on one thread (~38 GFLOP/s here; a torch matmul was
  4x faster on an idle machine but several times slower on a busy one), and the generation
  kernels read them row by row.
* Weights: the five matrices of the loop are stored in the request's weight mode (float32,
  bfloat16 or int8, :func:`wavedil.fast.pack.quantize`); numba compiles one specialisation of
  each kernel per format. Batch 1 streams every weight once per sample, so 16-bit weights halve
  the bytes it moves and 8-bit weights quarter them. int8 matrices go to the kernels in row
  pairs (:attr:`PackedWaveNet.kernel_matrices`, :func:`pair_rows`) for integer products.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections.abc import Callable

import numpy as np
import torch

from ..backends import SamplingRequest, teacher_forcing_inputs
from ..layers import StackState
from ..model import WaveNet
from .pack import (
    PackedWaveNet,
    kernel_uniforms,
    pack_cond_bias,
    pack_global_bias,
    pack_model,
    ring_from_state,
    state_from_ring,
)

__all__ = [
    "CpuOptions",
    "cpu_generate",
    "cpu_teacher_forced_logits",
    "kernels_available",
    "load_kernels",
    "packed_weights",
    "usable_cpus",
]

#: Two threads on one sequence meet at three barriers per step and at every layer; below this
#: many weights per step (multiply-adds) the work they share is too small to pay for it, and
#: one thread is faster. Measured (AMD EPYC, streaming vocoders, 5 frames per push): the
#: `small` 8 kHz vocoder (~150k) runs faster on one thread in fp32 and int8, a 16-layer
#: R = 64 16 kHz one (~560k) on two, in int8 too (1.65x against 1.28x real time).
SPLIT_MIN_WEIGHTS = 1 << 18
#: A two-thread chunk stops (and one thread takes over) once a thread waited long (~0.1 ms: its
#: partner was descheduled) at this many barriers.
MAX_LONG_WAITS_PER_CHUNK = 8
#: Batches of at most :data:`PIPE_MEASURED_ROWS` rows on exactly two threads go either way: as one
#: pipeline (each thread streams about half the weights, for every row) or one slice of rows
#: per thread (each streams all the weights, for its rows; no waiting). Each call measures both
#: (:func:`_generate_pipe`) and keeps the faster, which it remembers for the weights and batch
#: size. Larger batches, and more threads, go by slices. The pipeline pays while streaming the
#: weights is what limits a step, which depends on the CPU's caches: on the 2-core Xeon
#: (AVX-512; ref30, pipeline / slices, same process, ``bench/README.md``): fp32 1.68x at B = 2,
#: 1.26x at 8, 1.07x at 16, 0.91x at 32; bf16 2.01x at 2, 1.36x at 4, 0.89x at 8; int8 (whose
#: 1.2 MB of weights fit each core's 2 MB L2 cache) 0.88x at 2. This table is where the
#: first call starts: the pipeline for batches of at most this many rows, per weight mode.
PIPE_MAX_ROWS = {"fp32": 16, "bf16": 4, "int8": 1}
#: The largest batch that is measured on the pipeline against slices (on the Xeon the pipeline
#: lost at 32 rows in every mode).
PIPE_MEASURED_ROWS = 32
#: A sequence re-measures the way it is not using every this many chunks.
REPROBE_CHUNKS = 16
#: Shortest call of one sequence whose measurements of the two ways the next call goes on with
#: (shorter ones, such as ``prepare``'s single step, time mostly the call's own overhead).
PROBE_KEPT_STEPS = 256
#: Samples (over all rows) in a chunk of steps when :attr:`CpuOptions.chunk` is not set: the
#: first chunk, the chunks that measure a way, and every chunk of a run with local
#: conditioning (whose gate-bias table, ``chunk x NL x G`` floats, the chunk bounds).
DEFAULT_CHUNK = 1024
#: Without local conditioning, chunks of slices of rows (or of one thread) grow to about this
#: many seconds once they have measured faster than the pipeline (or when it is not used).
#: Every chunk on two threads starts one and waits for the slower: on the 2-core Xeon
#: (AVX-512), ref30, alternated processes, growing chunks lifted ``int8`` at B = 16 by 4.5% and
#: ``fp32`` at B = 256 with progress reports (chunks of 4 steps before) by 7%
#: (``bench/README.md``).
CHUNK_SECONDS = 0.1

# "not used" values of run_rows' teacher-forcing arguments
_NO_CODES = np.zeros((0, 0), np.int64)
_NO_LOGITS = np.zeros((0, 0, 0), np.float32)

#: Batch rows one thread computes together per layer: eight of the products' register tiles
#: (6 rows; ``wavedil/fast/_tiles.py``). On the 2-core Xeon (AVX-512), ref30 fp32 at B = 256 made
#: 57,460 / 65,654 / 71,834 samples/s with 16 / 24 / 48 rows, 65-75k from 36 to 132 rows.
ROW_BLOCK = 48

#: Batches of at least this many rows (more than :data:`PIPE_MEASURED_ROWS`: they never switch
#: to the pipeline mid-run) take ``bf16`` weights widened to float32
#: (:attr:`PackedWaveNet.wide_matrices`, the same weights): with that many rows a step is bound
#: by arithmetic, where decoding 16-bit weights costs more than reading float32 ones saves. The
#: float32 kernels round their sums in another order than the 16-bit ones, so such a batch's
#: outputs differ from a smaller batch's in the last bits (each call is still reproducible).
WIDE_BATCH = PIPE_MEASURED_ROWS + 1

#: Steps per kernel call of teacher forcing with local conditioning (bounds its bias table).
TEACHER_FORCED_CHUNK = 4096


def usable_cpus() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


def load_kernels():
    """Import (and thereby make numba ready to compile) the kernel module; raises ImportError."""
    from . import _kernels

    return _kernels


def kernels_available() -> bool:
    """True when the numba kernels import (numba installed and working)."""
    try:
        load_kernels()
    except Exception:  # noqa: BLE001 - any failure of an optional tool means "not available"
        return False
    return True


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


class CpuOptions:
    """Tuning of :func:`cpu_generate` (the defaults are what the ``fast`` back-end uses).

    Args:
        threads: worker threads; None takes ``torch.get_num_threads()`` (capped at the usable
            CPUs), so ``torch.set_num_threads`` / ``OMP_NUM_THREADS`` steer both back-ends.
        split: run one sequence (batch 1), or a small batch, as a pipeline on two threads (one
            sequence: with two threads or more; a batch: with exactly two): True, False, or
            None to decide by the model's size (:data:`SPLIT_MIN_WEIGHTS`).
        row_block: batch rows computed together per layer by one thread (:data:`ROW_BLOCK`).
        chunk: samples per kernel call (the unit of ``progress`` reports and of the measured
            choices between ways): a batch of ``B`` goes ``max(1, chunk // B)`` steps at a
            time. None: :data:`DEFAULT_CHUNK` samples, except that without local conditioning
            chunks of slices of rows that measured faster than the pipeline (or run without
            it) grow to about :data:`CHUNK_SECONDS`.
        pipe_rows: None: batches of at most :data:`PIPE_MEASURED_ROWS` rows run on the
            pipeline or by slices, whichever measures faster (starting from
            :data:`PIPE_MAX_ROWS`); an integer: exactly the batches of at most this many rows
            run on the pipeline (1: none), without measuring.
    """

    def __init__(
        self,
        threads: int | None = None,
        split: bool | None = None,
        row_block: int = ROW_BLOCK,
        chunk: int | None = None,
        pipe_rows: int | None = None,
    ) -> None:
        if threads is not None:
            _check_int("threads", threads, 1)
        if split not in (None, True, False):
            raise ValueError(f"split must be None, True or False, got {split!r}")
        if pipe_rows is not None:
            _check_int("pipe_rows", pipe_rows, 1)
        _check_int("row_block", row_block, 1)
        if chunk is not None:
            _check_int("chunk", chunk, 1)
        self.threads = threads
        self.split = split
        self.row_block = row_block
        self.chunk = chunk
        self.pipe_rows = pipe_rows

    def chunk_steps(self, batch: int, per_step: bool, rate: float | None = None) -> int:
        """Steps of the next chunk for a batch of ``batch`` rows: ``chunk // batch`` (at least
        one), or, with ``chunk`` unset, no local conditioning (``per_step`` False) and ``rate``
        (steps per second of this chunk's way, measured), about :data:`CHUNK_SECONDS` of them."""
        base = max(1, (DEFAULT_CHUNK if self.chunk is None else self.chunk) // batch)
        if self.chunk is not None or per_step or rate is None:
            return base
        return max(base, int(rate * CHUNK_SECONDS))

    def resolve_threads(self) -> int:
        """Threads to use now: ``threads``, or torch's intra-op count, capped at the usable CPUs."""
        n = torch.get_num_threads() if self.threads is None else self.threads
        return max(1, min(n, usable_cpus()))

    def __repr__(self) -> str:
        return (
            f"CpuOptions(threads={self.threads}, split={self.split}, row_block={self.row_block}, chunk={self.chunk}, "
            f"pipe_rows={self.pipe_rows})"
        )


_PACKED: "weakref.WeakKeyDictionary[WaveNet, dict[str, tuple[tuple, PackedWaveNet]]]" = weakref.WeakKeyDictionary()


def packed_weights(model: WaveNet, weights: str) -> PackedWaveNet:
    """:func:`pack_model` of ``model`` in mode ``weights``, cached while its parameters are unchanged.

    A stream of short generations (a streaming vocoder's pushes) packs and rounds the weights
    once, not per call. The cache key is every parameter's storage and in-place version counter,
    so an optimiser step or ``load_state_dict`` invalidates it.
    """
    key = tuple((p.data_ptr(), p._version) for p in model.parameters())
    per_model = _PACKED.setdefault(model, {})
    hit = per_model.get(weights)
    if hit is None or hit[0] != key:
        hit = per_model[weights] = (key, pack_model(model, weights))
    return hit[1]


def cpu_generate(request: SamplingRequest, options: CpuOptions | None = None) -> torch.Tensor:
    """Run ``request`` (a float32 model on the CPU) in the numba kernels: codes ``(B, N)`` int64.

    ``options``: threads and blocking (:class:`CpuOptions`; defaults when None). The weights
    are packed in ``request.weights``'s format for this call.
    """
    options = CpuOptions() if options is None else options
    model, batch, n = request.model, request.batch_size, request.n_samples
    packed = packed_weights(model, request.weights)
    gbias = pack_global_bias(packed, request.global_condition(), batch)  # (B, NL, G)
    threads = options.resolve_threads()
    kern = load_kernels()
    bias_for = _Biases(packed, gbias, request.local, shift=1, kern=kern)
    u = kernel_uniforms(packed, request.uniforms)  # (N, B, U)
    temperature = request.temperature
    greedy = temperature == 0
    temp = 1.0 if greedy else float(temperature)
    lg = request.params.detach().to("cpu", torch.float32).numpy().copy()  # updated in place: never the caller's
    out = np.empty((batch, n), dtype=np.int64)
    # steps with a forward pass after them: all of them when the stream goes on
    n_total = n + 1 if request.continuation else n
    split = packed.n_weights >= SPLIT_MIN_WEIGHTS if options.split is None else options.split
    measured = options.pipe_rows is None
    pipe_rows = PIPE_MEASURED_ROWS if measured else options.pipe_rows
    if batch == 1 or (batch <= pipe_rows and split and threads == 2):
        ring, pos = _generate_pipe(kern, packed, request.state, lg, u, temp, greedy, out, n_total, bias_for,
                                   threads if split else 1, options, request.progress, measured)  # fmt: skip
    else:
        ring, pos = _generate_rows(kern, packed, request.state, lg, u, temp, greedy, out, n_total, bias_for, threads,
                                   options, request.progress)  # fmt: skip
    device = request.params.device
    if request.continuation:
        request.next_state = state_from_ring(packed, ring, pos).to(device, request.state.buffers[0].dtype)
        request.next_params = torch.from_numpy(lg).to(device, request.params.dtype)
    return torch.from_numpy(out).to(device)


class _Biases:
    """The gate biases of a generation (``shift=1``) or of teacher forcing (``shift=0``).

    ``self(t0, t1)`` gives those of the forward passes of steps ``t0 .. t1-1``:
    ``(Tc, B, NL, G)`` float32 (``(1, 1, NL, G)`` when every row's is the same), ``Tc = 1``
    (:attr:`static`, the same for every step) without local conditioning, else one row per step,
    step ``t`` with local column ``t + shift``.
    Past the last column (the last step of a generation, which has no forward pass) the rows
    are the bare conv bias plus global term. With ``kern`` the local projections are computed
    by its :func:`~wavedil.fast._kernels.cond_bias` (one thread), else by a torch matmul.
    """

    def __init__(
        self, packed: PackedWaveNet, gbias: np.ndarray, local: torch.Tensor | None, shift: int, kern=None
    ) -> None:
        self.packed, self.gbias, self.local, self.shift, self.kern = packed, gbias, local, shift, kern
        self.per_step = local is not None
        # (1, B, NL, G); one row for all when every row has the same (no or one speaker): the
        # kernel then reads 2 KB per layer-step block from L1, not B rows of it from memory
        same = not self.per_step and bool((gbias == gbias[:1]).all())
        self.static = gbias[None, :1] if same else gbias[None]

    def __call__(self, t0: int, t1: int) -> np.ndarray:
        if self.local is None:
            return self.static
        lo = t0 + self.shift
        cols = self.local[:, :, lo : max(lo, min(t1 + self.shift, self.local.shape[-1]))]  # (B, Lc, T')
        if cols.shape[-1] == 0:  # every step past the last column
            table = np.zeros((0,) + self.gbias.shape, np.float32)
        elif self.kern is None:
            table = pack_cond_bias(self.packed, self.gbias, cols)
        else:
            batch, lc, steps = cols.shape
            flat = np.ascontiguousarray(cols.detach().to("cpu", torch.float32).permute(2, 0, 1).numpy())
            table = np.empty((steps,) + self.gbias.shape, np.float32)  # (T', B, NL, G)
            self.kern.cond_bias(flat.reshape(-1, lc), self.packed.wlc.reshape(lc, -1),
                                self.gbias.reshape(batch, -1), table.reshape(steps * batch, -1), batch, 16)  # fmt: skip
        if table.shape[0] < t1 - t0:
            table = np.concatenate([table, np.repeat(self.static, t1 - t0 - table.shape[0], axis=0)])
        return table


@torch.no_grad()
def cpu_teacher_forced_logits(
    model: WaveNet,
    codes: torch.Tensor,
    speaker: torch.Tensor | None = None,
    mel: torch.Tensor | None = None,
    weights: str = "fp32",
    row_block: int = ROW_BLOCK,
) -> torch.Tensor:
    """Head parameters ``(B, P, T)`` of the fused kernel fed ``codes (B, T)`` from an empty state.

    The kernel's counterpart of ``model(codes, speaker, mel)`` (teacher forcing), computed one
    sample at a time on one thread, with the weights in the format of ``weights``: how a weight
    mode's likelihood is measured. ``mel``: vocoders, ``(B, n_mels, T / hop + 2 c)`` as
    :meth:`WaveNet.forward` takes it.
    """
    codes, global_cond, local = teacher_forcing_inputs(model, codes, speaker, mel)
    kern = load_kernels()
    packed = packed_weights(model, weights)
    batch, n = codes.shape
    n_par = model.dist.param_channels
    forced = np.ascontiguousarray(codes.cpu().numpy())
    gbias = pack_global_bias(packed, global_cond, batch)
    bias_for = _Biases(packed, gbias, local, shift=0, kern=kern)
    ring = ring_from_state(packed, model.init_state(batch, device="cpu", dtype=torch.float32))
    record = np.zeros((batch, n, n_par), np.float32)
    params = np.zeros((batch, n_par), np.float32)
    out = np.empty((batch, n + 1), np.int64)
    u = np.zeros((n, batch, 1))
    p, pos = packed, 0
    wc, wres, wskip, h1, h2 = p.kernel_matrices
    step = n if local is None else TEACHER_FORCED_CHUNK
    for t0 in range(0, n, step):
        t1 = min(n, t0 + step)
        pos = kern.run_rows(
            t0, t1, n + 1, u, 1.0, False, params, out, *p.head_args,
            p.emb, wc, bias_for(t0, t1), wres, p.bres, wskip, p.bskip, h1, p.b1, h2, p.b2, p.scales,
            p.dil, p.off, p.kernel, ring, pos, row_block, 0, batch, forced, record,
        )  # fmt: skip
    return torch.from_numpy(record).permute(0, 2, 1).to(model.embed.weight.device)


# ----------------------------------------------------------------------------- threads


def _run_threads(targets: list[Callable[[], object]]) -> list[object]:
    """Run each callable in its own thread (the first in this one) and return their results.

    All of them run at the same time, which the pipeline kernel's barriers require.
    """
    results: list[object] = [None] * len(targets)
    errors: list[BaseException] = []

    def wrap(i: int) -> None:
        try:
            results[i] = targets[i]()
        except BaseException as e:  # noqa: BLE001 - re-raised in the calling thread
            errors.append(e)

    workers = [threading.Thread(target=wrap, args=(i,), daemon=True) for i in range(1, len(targets))]
    for w in workers:
        w.start()
    wrap(0)
    for w in workers:
        w.join()
    if errors:
        raise errors[0]
    return results


def _row_slices(batch: int, parts: int) -> list[slice]:
    """``parts`` contiguous, nearly equal, non-empty row slices of ``range(batch)``."""
    parts = max(1, min(parts, batch))
    bounds = [batch * p // parts for p in range(parts + 1)]
    return [slice(bounds[p], bounds[p + 1]) for p in range(parts)]


# ----------------------------------------------------------------------------- slices of rows


def _run_slices(kern, packed: PackedWaveNet, ring: np.ndarray, lg, u, temp, greedy, out, n_total: int,
                row_block: int, slices: list[slice], wide: bool = False) -> Callable[[int, int, int, np.ndarray], int]:  # fmt: skip
    """A callable ``(t0, t1, pos, table) -> pos`` that advances each of ``slices`` (rows) on a
    thread of its own, with :func:`~wavedil.fast._kernels.run_rows`, from step ``t0`` to ``t1``.

    Every thread reads and writes its rows of the same arrays: the rings ``ring (sum L, B, R)``,
    ``lg (B, P)``, ``u (N, B, U)``, ``out (B, N)``; ``table`` holds the gate biases
    ``(Tc, B or 1, NL, G)`` (:class:`_Biases`). One slice runs in the calling thread.
    """
    p = packed
    wc, wres, wskip, h1, h2 = p.wide_matrices if wide else p.kernel_matrices

    def job(rows: slice, t0: int, t1: int, pos: int, gb: np.ndarray) -> Callable[[], int]:
        return lambda: kern.run_rows(
            t0, t1, n_total, u, temp, greedy, lg, out, *p.head_args,
            p.emb, wc, gb, wres, p.bres, wskip, p.bskip, h1, p.b1, h2, p.b2, p.scales,
            p.dil, p.off, p.kernel, ring, pos, row_block, rows.start, rows.stop, _NO_CODES, _NO_LOGITS,
        )  # fmt: skip

    def run(t0: int, t1: int, pos: int, table: np.ndarray) -> int:
        done = _run_threads([job(rows, t0, t1, pos, table) for rows in slices])
        assert len(set(done)) == 1, done  # every slice went the same steps
        return int(done[0])

    return run


def _generate_rows(kern, packed: PackedWaveNet, state: StackState, lg, u, temp, greedy, out, n_total: int,
                   bias_for: _Biases, threads: int, options: CpuOptions, progress) -> tuple[np.ndarray, int]:  # fmt: skip
    """Each thread advances its own slice of rows (:func:`_run_slices`).

    ``lg (B, P)`` ends as the head parameters after the last forward pass; returns the rings
    ``(sum L, B, R)`` and the stream position then.
    """
    batch, n = out.shape
    ring = ring_from_state(packed, state)
    run = _run_slices(kern, packed, ring, lg, u, temp, greedy, out, n_total, options.row_block,
                      _row_slices(batch, threads), wide=batch >= WIDE_BATCH)  # fmt: skip
    # one chunk unless there are progress reports or per-step biases (local conditioning)
    per_step = bias_for.per_step
    whole = progress is None and not per_step
    pos, t0, rate = state.pos, 0, None
    while t0 < n:
        t1 = n if whole else min(n, t0 + options.chunk_steps(batch, per_step, rate))
        table = bias_for(t0, t1)
        start = time.perf_counter()
        pos = run(t0, t1, pos, table)
        rate = (t1 - t0) / max(time.perf_counter() - start, 1e-9)
        t0 = t1
        if progress is not None:
            progress(t1)
    return ring, pos


# ----------------------------------------------------------------------------- pipeline: batch 1, small batches


def _generate_pipe(kern, packed: PackedWaveNet, state: StackState, lg, u, temp, greedy, out, n_total: int,
                   bias_for: _Biases, threads: int, options: CpuOptions, progress,
                   measured: bool) -> tuple[np.ndarray, int]:  # fmt: skip
    """One sequence or a small batch: every row on the two-thread pipeline
    (:func:`~wavedil.fast._kernels.run_pipe`) or the other way, chunk by chunk, whichever is faster.

    The other way is one thread for one sequence (a busy machine keeps descheduling the
    pipeline's partner) and one slice of rows per thread for a batch (:func:`_run_slices`);
    a batch measures the two only when ``measured`` (else it stays on the pipeline). Both ways
    compute every number in the same order, on the same arrays, so switching between chunks
    changes no result. The first chunk goes the way that was faster for these weights and
    batch size in the last call (at first: the pipeline for one sequence, and for a batch of at
    most :data:`PIPE_MAX_ROWS` rows for the weight mode), the second the other; after that the
    faster way runs, and the other is re-measured every :data:`REPROBE_CHUNKS` chunks
    (:func:`_next_way`); one sequence keeps its rates and place in that schedule from call to
    call (a stream drawn in pieces is one schedule). A pipeline chunk stops early when a partner
    thread keeps being descheduled. More than two threads are not used: the pipeline has two roles.

    ``lg (B, P)`` (ends as the head parameters after the last forward pass), ``u (N, B, U)``,
    ``out (B, N)``; chunks of steps as :meth:`CpuOptions.chunk_steps` sets them. Returns the ring
    ``(sum L, B, R)`` and the stream position after the run.
    """
    p = packed
    wc, wres, wskip, _, _ = p.kernel_matrices  # the head's matrices go to the pipeline in halves
    batch, n = out.shape
    two = threads >= 2
    ring = ring_from_state(packed, state)  # (sum L, B, R)
    per_step = bias_for.per_step
    static = bias_for.static  # (1, B or 1, NL, G): the biases without local conditioning
    other = _run_slices(kern, packed, ring, lg, u, temp, greedy, out, n_total, options.row_block,
                        _row_slices(batch, 1 if batch == 1 else threads))  # fmt: skip
    probe = two and (batch == 1 or measured)
    if two:
        head, head_scales = packed.head_halves
        pipe_scales = (*p.scales[:3], *head_scales)
        # run_pipe takes one sequence's arrays without their batch axis (its one-row form)
        rows = () if batch == 1 else (batch,)
        z_sh = np.zeros((p.wres.shape[0], *rows, p.wres.shape[1]), np.float32)
        p_sh = np.zeros((p.wc.shape[0], *rows, p.wc.shape[2]), np.float32)
        acc_sh = np.zeros((*rows, p.h1.shape[0]), np.float32)
        hid_sh = np.zeros((*rows, p.h2.shape[0]), np.float32)
        lg_p, out_p, u_p = (lg[0], out[0], np.ascontiguousarray(u[:, 0])) if batch == 1 else (lg, out, u)

    def pipe_bias(table: np.ndarray) -> np.ndarray:
        """The gate biases ``(Tc, B or 1, NL, G)`` as run_pipe takes them: ``(Tc, NL, G)`` for one sequence."""
        return np.ascontiguousarray(table[:, 0]) if batch == 1 else table

    def pipe_job(role: int, sync: np.ndarray, t: int, t1: int, pos: int, gb: np.ndarray) -> Callable[[], tuple]:
        own = _pipe_own(p, batch)
        return lambda: kern.run_pipe(
            role, sync, t, t1, n_total, u_p, temp, greedy, lg_p, out_p, *p.head_args,
            p.emb, wc, gb, wres, p.bres, wskip, p.bskip, *head, pipe_scales,
            p.dil, p.off, p.kernel, ring, pos, options.row_block, z_sh, p_sh, acc_sh, hid_sh,
            MAX_LONG_WAITS_PER_CHUNK, own,
        )  # fmt: skip

    # compile, or load from numba's cache, before anything is timed (zero steps: no barrier)
    other(0, 0, state.pos, static)
    if two:
        pipe_job(0, np.zeros(8, np.int64), 0, 0, state.pos, pipe_bias(static))()
    rate: dict[bool, float] = {}
    use_two = two
    if batch > 1 and measured:  # the way that was faster last time, at first the table's guess
        use_two = packed.tuning.get(("pipe_way", batch), batch <= PIPE_MAX_ROWS[packed.weights])
    pos, t, chunks, rechecked = state.pos, 0, 0, False
    if probe and batch == 1 and ("pipe_probe", threads) in packed.tuning:
        # a stream drawn call by call (StreamingGenerator, StreamingVocoder) goes on with the
        # measurements and the probing schedule of its last call, instead of probing one thread
        # in every call's second chunk (28% of ref30's speed in pieces of 0.1 s)
        saved_rate, chunks, rechecked, use_two = packed.tuning["pipe_probe", threads]
        rate = dict(saved_rate)
    while t < n:
        # slices (or one thread) that measured faster, or that are the only way, run long
        # chunks; pipeline chunks stay short: each moves work between its threads (_balance)
        settled = not use_two and (not probe or (len(rate) == 2 and not max(rate, key=rate.get)))
        t1 = min(n, t + options.chunk_steps(batch, per_step, rate.get(use_two) if settled else None))
        table = bias_for(t, t1) if per_step else static  # outside the timing: the same for both ways
        start = time.perf_counter()
        if use_two:
            sync = np.zeros(8, np.int64)
            gb = pipe_bias(table)
            t_next, pos = _run_threads([pipe_job(role, sync, t, t1, pos, gb) for role in range(2)])[0]
            _balance(p, batch, int(sync[3]), int(sync[4]))
        else:
            pos, t_next = other(t, t1, pos, table), t1
        rate[use_two] = (t_next - t) / max(time.perf_counter() - start, 1e-9)
        pos, t, chunks = int(pos), int(t_next), chunks + 1
        if probe:
            use_two, rechecked = _next_way(chunks, rate, use_two, rechecked)
        if progress is not None:
            progress(t)
    if probe and batch > 1 and len(rate) == 2:
        packed.tuning["pipe_way", batch] = max(rate, key=rate.get)
    if probe and batch == 1 and n >= PROBE_KEPT_STEPS:  # not a prepare() of one step: too short to time
        packed.tuning["pipe_probe", threads] = (dict(rate), chunks, rechecked, use_two)
    return ring, pos


def _next_way(chunks: int, rate: dict[bool, float], use_two: bool, rechecked: bool) -> tuple[bool, bool]:
    """Whether the next chunk of one sequence runs on two threads, and the new ``rechecked``.

    ``chunks`` have run; ``rate[two]`` is the last rate measured each way, ``use_two`` the way
    of the last chunk. The first chunk runs on two threads, the second on one (a probe); then
    the faster way runs, and the other is re-measured every :data:`REPROBE_CHUNKS` chunks. When
    one thread newly measures faster, two threads are measured once more before one is kept
    (``rechecked``, cleared when two threads are the faster again): a slow first chunk (a stall
    of the machine) would otherwise leave the sequence on one thread, at half the speed, until
    the next probe.
    """
    best = max(rate, key=rate.get)
    if chunks == 1 or chunks % REPROBE_CHUNKS == 0:
        return (not use_two if len(rate) == 1 else not best), rechecked
    if not best and not rechecked:
        return True, True
    return best, rechecked and not best


def _balance(packed: PackedWaveNet, batch: int, idle0: int, idle1: int) -> None:
    """Move one layer's past taps between the pipeline's threads, towards the one that waited
    less in the last chunk (``idle0``: thread 0 waiting for thread 1 at the head; ``idle1``:
    thread 1 waiting for thread 0's gate outputs; time-stamp cycles, 0 where there is no counter).

    Which thread multiplies a layer's past taps changes no number (the same product, added in
    the same order), so this only moves work: to the thread that waits.
    """
    own = _pipe_own(packed, batch)
    if idle0 > idle1:
        own = min(len(packed.dil), own + 1)
    elif idle1 > idle0:
        own = max(0, own - 1)
    packed.tuning["pipe_own", batch] = own


def _pipe_own(packed: PackedWaveNet, batch: int) -> int:
    """Layers whose past taps the pipeline's thread 0 makes itself: as :func:`_balance` left
    it for these weights and batch size, at first a quarter of them."""
    return packed.tuning.get(("pipe_own", batch), len(packed.dil) // 4)
