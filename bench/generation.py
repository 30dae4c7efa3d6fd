"""Generation speed of the ref30 WaveNet: every back-end against in-run baselines; prints JSON.

Measured in one process, on ref30 (``WaveNetConfig()``: 30 layers, kernel 2, R=64, gate 128,
S=256, H=256, Q=256) in float32 with random weights:

* ``samples_per_second``: all sequences together, of each generation back-end at B = 1, 4,
  16, 64, 256 (``torch`` is the eager cached step, ``DilatedStack.step``'s lean path); of ``fast`` in each
  reduced weight mode (``fast-bf16``, ``fast-int8``: 16- and 8-bit weights); of
  ``fast-1thread`` and ``fast-int8-1thread`` (batch 1 on one core), which show what running
  batch 1 as a two-thread pipeline buys in each; and, at B = 4 and 16 in each weight mode,
  of ``fast-pipe`` (every row on that pipeline) and ``fast-slices`` (one slice of rows per
  thread): ``fast`` measures the two against each other as it runs and keeps the faster, and
  these forced rows show what each way makes and how close ``fast`` comes to the better;
* ``eager``: the ``torch`` back-end with torch's default threads and with one thread; the
  faster is the baseline of the ratios (the conservative choice);
* ``naive``: full recompute, ``model.forward`` over the last receptive-field window for every
  new sample (B = 1 and 16, a few steps);
* ``matmul``: GFLOP/s of a plain large ``torch.matmul`` in this run (best of three), and what ``fast`` (each
  mode) and ``torch`` reach at each batch size (FLOP per sample from the config), with
  ``fast``'s fraction of it;
* ``ratios``: fast / eager, fast / naive, cached (eager) / naive, each reduced mode / fp32
  ``fast`` at every batch size, and at B = 4 and 16 pipeline / slices and ``fast`` / the
  faster of the two (``*_chosen_over_best_b*``);
* ``machine``: CPU model and the instruction-set flags that matter (AVX2, AVX-512, VNNI, bf16,
  AMX), cores, threads, versions and the load average (the figures are only as quiet as the
  machine was).

Each run lasts about ``--budget`` seconds (two short probes set its steps); each figure is the
best of ``--repeat`` runs.

``--heads`` measures instead, at B = 1 on the ``small`` model (``conf/model/small.yaml``: 16
layers, R=32, gate 64, S=64, H=128), ``fast`` against ``torch`` (the faster of its default
threads and one thread) for every output head --
``mulaw`` (Q=256), ``mol`` (10 logistics over 65,536 linear bins), ``gaussian`` (65,536 bins)
-- and for a mel vocoder (the ``small`` mulaw model conditioned on 40-band log-mel frames at
hop 80, as ``conf/experiment/vocoder_speech8k.yaml``). Usage::

    python bench/generation.py            # about 3 minutes on 2 cores
    python bench/generation.py --quick    # about 15 seconds, a smoke test
    python bench/generation.py --budget 6 --repeat 3
    python bench/generation.py --heads    # about 30 seconds
    python bench/generation.py --stream   # streaming vocoders, about 30 seconds

``--stream`` measures :class:`wavedil.vocoder_stream.StreamingVocoder` fed 5 frames (50 ms) per
push, in every weight mode: the ``vocoder_speech8k`` recipe's model (8 kHz, hop 80, 40 bands)
and a 16 kHz vocoder (hop 160, 80 bands, R=64, gate 128, S=128, H=256, 16 layers, the size of
``conf/experiment/pretrained_vocoder8k.yaml``): ``x_real_time`` (audio seconds per second of
compute, > 1 is faster than real time), the slowest push, and the look-ahead latency. It also
measures streamed generation (``generate_pieces``): ref30 at batch 1 drawn by
:class:`wavedil.StreamingGenerator` in pieces of 0.1 s at 16 kHz, as ``wavedil generate -o -``
draws, against one ``generate`` call in the same run, and the wait for the first piece.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import cpu_flags, cpu_model  # noqa: E402
from wavedil import WaveNet, WaveNetConfig, generate
from wavedil.backends import WEIGHT_MODES, available_backends, register_backend, unregister_backend
from wavedil.distributions import sample_categorical
from wavedil.fast import make_fast_backend
from wavedil.fast.cpu import PIPE_MEASURED_ROWS

BATCHES = (1, 4, 16, 64, 256)
#: small batches, where ``fast`` chooses between the two-thread pipeline and slices of rows
SMALL_BATCHES = (4, 16)
#: the names of ``fast``'s rows per weight mode
SMALL_BATCH_MODES = {"fast": "fp32", "fast-bf16": "bf16", "fast-int8": "int8"}

#: ``conf/model/small.yaml``, the model of ``--heads``
SMALL = dict(residual_channels=32, gate_channels=64, skip_channels=64, head_channels=128, kernel_size=2,
             layers_per_stack=8, stacks=2)  # fmt: skip
#: the vocoder of ``--heads`` (``conf/experiment/vocoder_speech8k.yaml``)
VOCODER_MEL = {"sample_rate": 8000, "hop_length": 80, "n_fft": 256, "n_mels": 40}


def flops_per_sample(cfg: WaveNetConfig) -> int:
    """Multiply-adds x 2 of one cached step of one sequence (embedding lookup and gate excluded)."""
    layers = len(cfg.schedule())
    r, g, s, h, q, k = (cfg.residual_channels, cfg.gate_channels, cfg.skip_channels, cfg.head_channels,
                        cfg.quantization_channels, cfg.kernel_size)  # fmt: skip
    per_layer = k * r * g + (g // 2) * (r + s)
    last_residual = (g // 2) * r  # the last layer's residual output is never needed
    return 2 * (layers * per_layer - last_residual + s * h + h * q)


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def timed_steps(rate: float, batch: int, budget_s: float, lo: int, hi: int) -> int:
    """Steps that take about ``budget_s`` at ``rate`` samples/s, clamped to ``[lo, hi]``."""
    return int(min(hi, max(lo, rate * budget_s / batch)))


def gen_rate(
    model: WaveNet, backend: str, batch: int, max_steps: int, budget_s: float, repeat: int, weights: str = "fp32"
) -> tuple[float, int]:
    """Best samples/s (all sequences together) of ``generate``'s back-end loop, and the steps run.

    Two short probes set the number of steps so that one run takes about ``budget_s`` (at most
    ``max_steps``): a busy machine makes a figure slower, not the benchmark endless.
    A vocoder gets random log-mel frames, enough for ``max_steps`` samples.
    """
    mel = None
    if model.upsampler is not None:
        hop = model.mel_spec.hop_length
        frames = -(-max_steps // hop) + 1 + 2 * model.mel_context
        mel = torch.randn(batch, model.mel_spec.n_mels, frames, generator=torch.Generator().manual_seed(0))

    def run(steps: int) -> float:
        return generate(model, steps, batch_size=batch, seed=0, backend=backend, mel=mel,
                        weights=weights).samples_per_second  # fmt: skip

    probe = min(max_steps, max(4, 64 // batch))
    # a few steps under-rate a large batch (fixed costs per call: B = 256's ring is 200 MB of
    # fresh pages): a second probe of about a tenth of the budget, and the rate of the steps it
    # adds to the first, set the steps
    rate1 = run(probe)
    second = timed_steps(rate1, batch, budget_s / 10, probe, max_steps)
    rate2 = run(second)
    added_s = second / rate2 - probe / rate1  # seconds per sequence
    rate = max(rate2, (second - probe) / added_s) if second > probe and added_s > 0 else rate2
    steps = timed_steps(rate, batch, budget_s, probe, max_steps)
    return max(run(steps) for _ in range(repeat)), steps


@torch.no_grad()
def naive_rate(model: WaveNet, batch: int, max_steps: int, budget_s: float) -> tuple[float, int]:
    """Full recompute: ``model.forward`` over the last receptive-field window for each new sample.

    Returns samples/s and the steps run (about ``budget_s`` worth, 2 to ``max_steps``).
    """
    rf = model.receptive_field
    q = model.quantization_channels
    gen = torch.Generator().manual_seed(0)
    window = torch.full((batch, rf), q // 2, dtype=torch.long)

    def run(steps: int) -> float:
        nonlocal window
        u = torch.rand(steps, batch, generator=gen, dtype=torch.float64)
        start = time.perf_counter()
        for t in range(steps):
            logits = model(window)[:, :, -1]  # (B, Q)
            codes = sample_categorical(logits, u[t])
            window = torch.cat([window[:, 1:], codes[:, None]], dim=1)
        return batch * steps / (time.perf_counter() - start)

    steps = timed_steps(run(1), batch, budget_s, 2, max_steps)
    return run(steps), steps


def matmul_gflops(size: int, reps: int) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(2):
        torch.matmul(a, b)
    start = time.perf_counter()
    for _ in range(reps):
        torch.matmul(a, b)
    return 2 * size**3 * reps / (time.perf_counter() - start) / 1e9


def heads_main(args: argparse.Namespace) -> dict:
    """``--heads``: ``fast`` and ``torch`` at B = 1 for each head and a vocoder, ``small`` model."""
    steps, repeat, budget = args.steps, args.repeat, args.budget
    if args.quick:
        steps, repeat, budget = min(steps, 400), 1, min(budget, 0.3)
    load_before = os.getloadavg()
    variants = {
        "mulaw": dict(output="mulaw"),
        "mol": dict(output="mol", mixtures=10),
        "gaussian": dict(output="gaussian"),
        "vocoder": dict(output="mulaw", mel=VOCODER_MEL),
    }
    names = ["fast", "fast-bf16", "fast-int8", "torch"]
    rates: dict[str, dict[str, float]] = {}
    run_steps: dict[str, dict[str, int]] = {}
    for head, extra in variants.items():
        torch.manual_seed(0)
        model = WaveNet(WaveNetConfig(**SMALL, **extra)).eval()
        for weights in WEIGHT_MODES:
            gen_rate(model, "fast", 1, 20, 0.0, 1, weights)  # compile (or load) the kernels
        rates[head], run_steps[head] = {}, {}
        for name in names:
            if name.startswith("fast"):
                weights = name.partition("-")[2] or "fp32"
                rate, n = gen_rate(model, "fast", 1, steps, budget, repeat, weights)
            else:  # the eager baseline: the faster of torch's default threads and one thread
                cap = max(10, steps // 10)  # torch is ~100x slower: fewer steps keep its runs short
                with torch_threads(1):
                    one = gen_rate(model, name, 1, cap, budget, repeat)
                rate, n = max(gen_rate(model, name, 1, cap, budget, repeat), one)
            rates[head][name], run_steps[head][name] = round(rate, 1), n
        for name in names[:-1]:
            rates[head][f"{name}_over_torch"] = round(rates[head][name] / rates[head]["torch"], 1)
    result = {
        "benchmark": "generation-heads",
        "model": {"config": "small", "batch": 1, "dtype": "float32", "vocoder_mel": VOCODER_MEL},
        "samples_per_second": rates,
        "steps": {"runs": run_steps, "repeat": repeat, "budget_s": budget, "quick": args.quick},
        "machine": {
            "cpu": cpu_model(),
            "cpu_flags": cpu_flags(),
            "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "numba": _version("numba"),
            "loadavg_before": [round(v, 2) for v in load_before],
            "loadavg_after": [round(v, 2) for v in os.getloadavg()],
        },
    }
    print(json.dumps(result, indent=2))
    return result


#: the two vocoders of ``--stream``: (model config, mel settings)
STREAM_VOCODERS = {
    "vocoder_speech8k": (SMALL, VOCODER_MEL),
    "vocoder16k": (dict(residual_channels=64, gate_channels=128, skip_channels=128, head_channels=256,
                        kernel_size=2, layers_per_stack=8, stacks=2),
                   {"sample_rate": 16000, "hop_length": 160, "n_fft": 512, "n_mels": 80}),
}  # fmt: skip


def stream_main(args: argparse.Namespace) -> dict:
    """``--stream``: speed of the streaming vocoder (x real time), 5 frames per push, every mode."""
    from wavedil.vocoder_stream import StreamingVocoder

    seconds = 0.5 if args.quick else 4.0
    per_push = 5
    load_before = os.getloadavg()
    result: dict = {"benchmark": "vocoder-stream", "frames_per_push": per_push, "audio_seconds": seconds}
    for name, (cfg, mel_cfg) in STREAM_VOCODERS.items():
        torch.manual_seed(0)
        model = WaveNet(WaveNetConfig(**cfg, mel=mel_cfg)).eval()
        frames = int(seconds * mel_cfg["sample_rate"] / mel_cfg["hop_length"])
        mel = torch.randn(mel_cfg["n_mels"], frames, generator=torch.Generator().manual_seed(0)) - 4
        entry: dict = {"sample_rate": mel_cfg["sample_rate"], "hop_length": mel_cfg["hop_length"],
                       "parameters": model.num_parameters(), "modes": {}}  # fmt: skip
        for weights in WEIGHT_MODES:
            best = None
            for _ in range(1 if args.quick else args.repeat):
                voc = StreamingVocoder(model, seed=0, backend="fast", weights=weights)
                voc.push(mel[:, :per_push])  # compile (or load) the kernels, outside the timing
                voc = StreamingVocoder(model, seed=0, backend="fast", weights=weights)
                slowest, start, done = 0.0, time.perf_counter(), 0
                for f in range(0, frames, per_push):
                    t = time.perf_counter()
                    done += voc.push(mel[:, f : f + per_push]).shape[1]
                    slowest = max(slowest, time.perf_counter() - t)
                done += voc.finish().shape[1]
                wall = time.perf_counter() - start
                speed = done / mel_cfg["sample_rate"] / wall
                if best is None or speed > best["x_real_time"]:
                    best = {"x_real_time": round(speed, 2), "samples_per_second": round(done / wall, 1),
                            "slowest_push_ms": round(1000 * slowest, 2)}  # fmt: skip
            entry["modes"][weights] = best
        entry["latency"] = {"frames": voc.latency_frames, "ms": round(1000 * voc.latency_seconds, 1)}
        result[name] = entry
    result["generate_pieces"] = generate_pieces(args)
    result["machine"] = {"cpu": cpu_model(), "cpu_flags": cpu_flags(), "torch_threads": torch.get_num_threads(),
                         "loadavg_before": [round(v, 2) for v in load_before],
                         "loadavg_after": [round(v, 2) for v in os.getloadavg()]}  # fmt: skip
    print(json.dumps(result, indent=2))
    return result


def generate_pieces(args: argparse.Namespace) -> dict:
    """ref30 at batch 1, every mode: :class:`wavedil.StreamingGenerator` in pieces of 0.1 s at
    16 kHz (what ``wavedil generate -o -`` draws) against one ``generate`` call of the same samples,
    alternated, best of ``--repeat``; and the wait for the first piece."""
    from wavedil import StreamingGenerator

    piece = 1600
    n = piece * (2 if args.quick else 20)
    torch.manual_seed(0)
    model = WaveNet(WaveNetConfig()).eval()
    out: dict = {"model": "ref30", "piece_samples": piece, "samples": n, "modes": {}}
    for weights in WEIGHT_MODES:
        generate(model, 100, seed=0, backend="fast", weights=weights)  # compile (or load) the kernels
        whole = pieces = first = 0.0
        for _ in range(1 if args.quick else args.repeat):
            start = time.perf_counter()
            generate(model, n, seed=0, backend="fast", weights=weights)
            whole = max(whole, n / (time.perf_counter() - start))
            stream = StreamingGenerator(model, seed=0, backend="fast", weights=weights)
            stream.prepare()
            start = time.perf_counter()
            stream.draw(piece)
            wait = time.perf_counter() - start
            while stream.samples_out < n:
                stream.draw(piece)
            rate = n / (time.perf_counter() - start)
            if rate > pieces:
                pieces, first = rate, wait
        out["modes"][weights] = {"one_call_samples_per_second": round(whole, 1),
                                 "pieces_samples_per_second": round(pieces, 1),
                                 "pieces_over_one_call": round(pieces / whole, 3),
                                 "first_piece_ms": round(1000 * first, 1)}  # fmt: skip
    return out


def cuda_main(args: argparse.Namespace) -> dict:
    """ref30 on the first CUDA device: the eager cached step against ``fast`` (CUDA graphs)."""
    if not torch.cuda.is_available():
        raise SystemExit("--cuda needs a CUDA GPU; none is visible to torch here")
    steps, repeat, budget = (min(args.steps, 400), 1, 0.3) if args.quick else (args.steps, args.repeat, args.budget)
    torch.manual_seed(0)
    cfg = WaveNetConfig()
    model = WaveNet(cfg).cuda().eval()
    flops = flops_per_sample(cfg)
    batches = {"torch": (1, 8, 64, 256), "fast": (1, 8, 64, 256)}
    rates: dict[str, dict[str, float]] = {}
    peak_mb: dict[str, dict[str, float]] = {}
    generate(model, 64, batch_size=1, backend="fast")  # cuBLAS/cuDNN set-up outside the timings
    for name, bs in batches.items():
        rates[name], peak_mb[name] = {}, {}
        for b in bs:
            torch.cuda.reset_peak_memory_stats()
            # at least 2,000 steps a call at every batch: each call of fast captures its graphs
            # anew, which short calls at large batches would mostly measure
            rate, _ = gen_rate(model, name, b, max(2000, steps // b), budget, repeat)
            rates[name][str(b)] = round(rate, 1)
            peak_mb[name][str(b)] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    one_chunk_s = {}  # a call of one graph's worth of steps: its warm-up, capture and one replay
    for b in batches["fast"]:
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        generate(model, 32, batch_size=b, seed=0, backend="fast")
        torch.cuda.synchronize()
        one_chunk_s[str(b)] = round(time.perf_counter() - t0, 4)
    result = {
        "benchmark": "generation-cuda",
        "model": {"config": "ref30", "parameters": model.num_parameters(), "flop_per_sample": flops},
        "samples_per_second": rates,
        "peak_memory_mb": peak_mb,
        "ratios": {f"fast_over_eager_b{b}": round(rates["fast"][b] / rates["torch"][b], 2) for b in rates["fast"]},
        "fast_one_chunk_call_seconds": one_chunk_s,
        "realtime_16khz_b1": round(rates["fast"]["1"] / 16000, 3),
        "fast_gflops": {b: round(r * flops / 1e9, 1) for b, r in rates["fast"].items()},
        "machine": {"gpu": torch.cuda.get_device_name(0), "cpu": cpu_model(), "torch": torch.__version__,
                    "cuda": torch.version.cuda},  # fmt: skip
    }
    print(json.dumps(result, indent=2))
    return result


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=20000, help="most steps of one run at batch 1 (16x the samples above B = 16)")
    ap.add_argument("--budget", type=float, default=3.0, help="seconds one run aims at")
    ap.add_argument("--repeat", type=int, default=2, help="runs per figure; the best is kept")
    ap.add_argument("--quick", action="store_true", help="short runs: a smoke test, not a measurement")
    ap.add_argument("--heads", action="store_true", help="instead: every output head and a vocoder, small model, B=1")
    ap.add_argument("--cuda", action="store_true", help="instead: ref30 on the GPU, torch vs fast (CUDA graphs)")
    ap.add_argument("--stream", action="store_true", help="instead: streaming vocoders (8 and 16 kHz), every mode")
    args = ap.parse_args(argv)
    if args.steps < 10 or args.repeat < 1 or args.budget <= 0:
        ap.error(f"need --steps >= 10, --repeat >= 1, --budget > 0; got {args.steps}, {args.repeat}, {args.budget}")
    if args.heads:
        return heads_main(args)
    if args.cuda:
        return cuda_main(args)
    if args.stream:
        return stream_main(args)
    steps, repeat, budget = args.steps, args.repeat, args.budget
    naive_max, naive_budget = {1: 300, 16: 20}, 2 * budget
    if args.quick:
        steps, repeat, budget = min(steps, 400), 1, min(budget, 0.3)
        naive_max, naive_budget = {1: 3, 16: 2}, 0.1

    def max_steps(b: int) -> int:
        # at most `steps` samples at B = 1 and 16x that above B = 16, so that the budget, not the
        # cap, ends a run at every batch size (a cap of steps // b ran 78 steps at B = 256, a
        # third of a second, and under-reported large batches by up to a fifth)
        return max(16, steps * 16 // max(b, 16))

    load_before = os.getloadavg()
    torch.manual_seed(0)
    cfg = WaveNetConfig()
    model = WaveNet(cfg).eval()
    flops = flops_per_sample(cfg)
    names = available_backends()  # fast (numba, a required dependency) and torch
    register_backend("fast-1thread", make_fast_backend(threads=1))  # what batch 1's two threads buy
    # the two ways of a small batch, forced (``fast`` measures them against each other)
    register_backend("fast-slices", make_fast_backend(pipe_rows=1))
    register_backend("fast-pipe", make_fast_backend(pipe_rows=PIPE_MEASURED_ROWS))
    # name -> (back-end, weight mode, batch sizes)
    runs = {"fast": ("fast", "fp32", BATCHES), "fast-bf16": ("fast", "bf16", BATCHES),
            "fast-int8": ("fast", "int8", BATCHES), "fast-1thread": ("fast-1thread", "fp32", (1,)),
            "fast-int8-1thread": ("fast-1thread", "int8", (1,)), "torch": ("torch", "fp32", BATCHES)}  # fmt: skip
    for way in ("pipe", "slices"):
        for name, weights in SMALL_BATCH_MODES.items():
            runs[f"{name}-{way}"] = (f"fast-{way}", weights, SMALL_BATCHES)
    for weights in WEIGHT_MODES:
        generate(model, 20, batch_size=1, backend="fast", weights=weights)  # compile (or load) the kernels
        generate(model, 4, batch_size=4, backend="fast", weights=weights)

    backends: dict[str, dict[str, float]] = {}
    run_steps: dict[str, dict[str, int]] = {}
    for name, (backend, weights, batches) in runs.items():
        backends[name], run_steps[name] = {}, {}
        for b in batches:
            rate, n = gen_rate(model, backend, b, max_steps(b), budget, repeat, weights)
            backends[name][str(b)], run_steps[name][str(b)] = round(rate, 1), n
    eager = {"default_threads": {b: backends["torch"][b] for b in ("1", "16")}}
    with torch_threads(1):
        eager["one_thread"] = {
            str(b): round(gen_rate(model, "torch", b, max_steps(b), budget, repeat)[0], 1) for b in (1, 16)
        }
    baseline = {b: max(eager[k][b] for k in eager) for b in ("1", "16")}
    naive, naive_steps = {}, {}
    for b in (1, 16):
        rate, n = naive_rate(model, b, naive_max[b], naive_budget)
        naive[str(b)], naive_steps[str(b)] = round(rate, 2), n
    # the best of three: a slow spell must not inflate the fractions below
    gflops = max(matmul_gflops(1024 if args.quick else 2048, 3 if args.quick else 10) for _ in range(3))

    result: dict = {
        "benchmark": "generation",
        "model": {
            "config": "ref30",
            "receptive_field": model.receptive_field,
            "dtype": "float32",
            "parameters": model.num_parameters(),
            "flop_per_sample": flops,
        },
        "samples_per_second": backends,
        "eager": {**eager, "baseline": baseline},
        "naive": naive,
        "matmul": {"gflops": round(gflops, 1)},
        "ratios": {},
        "steps": {"runs": run_steps, "naive": naive_steps, "repeat": repeat, "budget_s": budget, "quick": args.quick},
        "machine": {
            "cpu": cpu_model(),
            "cpu_flags": cpu_flags(),
            "cores": os.cpu_count(),
            "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "numba": _version("numba"),
            "numpy": _version("numpy"),
            "python": platform.python_version(),
            "loadavg_before": [round(v, 2) for v in load_before],
            "loadavg_after": [round(v, 2) for v in os.getloadavg()],
        },
    }
    ratios = result["ratios"]
    for b in ("1", "16"):
        ratios[f"cached_eager_over_naive_b{b}"] = round(baseline[b] / naive[b], 1)
    if "fast" in backends:
        fast = backends["fast"]
        for b in ("1", "16"):
            ratios[f"fast_over_eager_b{b}"] = round(fast[b] / baseline[b], 2)
            ratios[f"fast_over_naive_b{b}"] = round(fast[b] / naive[b], 1)
        result["matmul"]["fast_gflops"] = {b: round(r * flops / 1e9, 1) for b, r in fast.items()}
        result["matmul"]["fast_fraction"] = {b: round(r * flops / 1e9 / gflops, 3) for b, r in fast.items()}
        result["realtime_16khz_b1"] = round(fast["1"] / 16000, 3)
        for mode in ("bf16", "int8"):
            reduced = backends[f"fast-{mode}"]
            for b in map(str, BATCHES):
                ratios[f"{mode}_over_fp32_b{b}"] = round(reduced[b] / fast[b], 2)
            result["matmul"][f"fast_{mode}_gflops"] = {b: round(r * flops / 1e9, 1) for b, r in reduced.items()}
        result["matmul"]["torch_gflops"] = {b: round(r * flops / 1e9, 1) for b, r in backends["torch"].items()}
        for name in SMALL_BATCH_MODES:
            key = name.replace("-", "_")
            for b in map(str, SMALL_BATCHES):
                pipe, slices = backends[f"{name}-pipe"][b], backends[f"{name}-slices"][b]
                ratios[f"{key}_pipeline_over_slices_b{b}"] = round(pipe / slices, 2)
                ratios[f"{key}_chosen_over_best_b{b}"] = round(backends[name][b] / max(pipe, slices), 2)
        best = max(("fast", "fast-bf16", "fast-int8"), key=lambda n: backends[n]["1"])
        result["realtime_16khz_b1_best"] = {"mode": best, "factor": round(backends[best]["1"] / 16000, 3)}
    unregister_backend("fast-1thread")
    unregister_backend("fast-slices")
    unregister_backend("fast-pipe")
    print(json.dumps(result, indent=2))
    return result


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except Exception:  # noqa: BLE001
        return None


if __name__ == "__main__":
    main()
