"""Training-step speed and memory: wavedil's WaveNet against a straightforward implementation,
in float32, bf16 autocast and what ``trainer.precision=auto`` picks.

Prints one JSON object. Each configuration runs in its own subprocess so that its peak RSS (and
GPU memory) is its own (except with ``--quick``, a smoke run in one process); the baseline runs in
the same invocation, on the same machine, with the same data. The machine block names the CPU
and its bf16 / AMX / AVX-512 flags: without ``avx512_bf16`` or ``amx_bf16`` bf16 matmuls are
emulated and slower than float32.

    python bench/training.py                 # ref30, B=4, T=16000, CPU
    python bench/training.py --quick         # B=1, T=500, 1 step, 1 thread, one process: a smoke run
    python bench/training.py --variants wavedil,wavedil-bf16,wavedil-auto --device cuda

Variants: ``baseline`` (float32), ``wavedil`` (float32), ``wavedil-bf16`` (bf16 autocast),
``wavedil-bf16-emulated`` (bf16 matmul numerics computed in float32: ``trainer.precision=bf16-emulated``),
``wavedil-auto`` (:func:`wavedil.precision.choose_precision` measures float32 and bf16 on a copy,
then the chosen one is timed), ``wavedil-ckpt`` (float32, activation checkpointing in 3 groups),
``wavedil-fp16`` (float16 autocast with a gradient scaler, CUDA only), the baseline under the
same autocasts (``baseline-bf16``, ``baseline-fp16``), ``wavedil-tf32`` (float32 with TF32 matmuls
on a GPU: cuDNN's convolutions, the baseline's, use TF32 by default, torch's matmuls do not) and
``wavedil-bf16-plain`` (bf16 autocast through the plain autograd ops instead of the hand-written
gated-layer function: what ``wavedil-bf16`` itself runs on CUDA since the H200 measured it faster). ``--profile`` adds each variant's busiest GPU kernels over two steps.

The baseline is what a first implementation looks like: one ``nn.Conv1d`` per dilated conv
(padding on both sides, the tail cut off), separate 1x1 convs for the residual and the skip,
the skips summed layer by layer.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

# wavedil before torch, as in the `wavedil` command: it shortens torch's OpenMP spin-waits
# (wavedil/_openmp.py) unless GOMP_SPINCOUNT or OMP_WAIT_POLICY is set
from wavedil import WaveNet, WaveNetConfig  # noqa: E402  # isort: skip
from wavedil._malloc import keep_freed_memory  # noqa: E402  # isort: skip

# as `wavedil train` does: glibc keeps freed memory between steps (wavedil/_malloc.py) unless a
# MALLOC_* variable, GLIBC_TUNABLES or LD_PRELOAD is set; WAVEDIL_MALLOC=glibc measures glibc's
# own behaviour
KEEP_FREED_MEMORY = keep_freed_memory()

import torch  # noqa: E402
from torch import nn  # noqa: E402

from _machine import cpu_model  # noqa: E402
from wavedil.distributions import categorical_bits  # noqa: E402
from wavedil.training_utils import NATIVE_BF16_FLAGS, autocast_for, cpu_flags  # noqa: E402

#: The /proc/cpuinfo flags that decide how fast bf16 and wide vector code run.
PRECISION_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16")
VARIANTS = ("baseline", "wavedil", "wavedil-bf16", "wavedil-bf16-emulated", "wavedil-auto", "wavedil-ckpt",
            "wavedil-fp16", "baseline-bf16", "baseline-fp16", "wavedil-tf32", "wavedil-bf16-plain")
#: trainer.precision of each variant (float32 where not named)
PRECISION = {"wavedil-bf16": "bf16", "wavedil-bf16-emulated": "bf16-emulated", "wavedil-fp16": "16",
             "baseline-bf16": "bf16", "baseline-fp16": "16", "wavedil-bf16-plain": "bf16"}


class BaselineLayer(nn.Module):
    def __init__(self, R: int, G: int, S: int, d: int) -> None:
        super().__init__()
        self.dilated = nn.Conv1d(R, G, 2, dilation=d, padding=d)
        self.res = nn.Conv1d(G // 2, R, 1)
        self.skip = nn.Conv1d(G // 2, S, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.dilated(x)[:, :, : x.shape[-1]]  # causal: drop the look-ahead tail
        a, b = h.chunk(2, dim=1)
        z = torch.tanh(a) * torch.sigmoid(b)
        return x + self.res(z), self.skip(z)


class BaselineWaveNet(nn.Module):
    """The straightforward WaveNet of the same size (ref30)."""

    def __init__(self, c: WaveNetConfig) -> None:
        super().__init__()
        self.embed = nn.Embedding(c.quantization_channels, c.residual_channels)
        self.layers = nn.ModuleList(
            BaselineLayer(c.residual_channels, c.gate_channels, c.skip_channels, d) for d in c.schedule()
        )
        self.head = nn.Sequential(
            nn.ReLU(), nn.Conv1d(c.skip_channels, c.head_channels, 1), nn.ReLU(),
            nn.Conv1d(c.head_channels, c.quantization_channels, 1),
        )

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        x = self.embed(codes).transpose(1, 2)
        total = 0
        for layer in self.layers:
            x, s = layer(x)
            total = total + s
        return self.head(total)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def run_one(
    variant: str, batch: int, length: int, steps: int, warmup: int, threads: int, device: str, profile: bool = False
) -> dict:
    """Time ``steps`` optimizer steps of one variant in this process (after ``warmup`` steps)."""
    if threads:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    if variant == "wavedil-tf32":
        torch.backends.cuda.matmul.allow_tf32 = True
    if variant == "wavedil-bf16-plain":  # every gated layer through plain autograd ops
        import wavedil.layers
        from wavedil.gated import NOT_TAKEN

        wavedil.layers.gated_fast_path = lambda *args: NOT_TAKEN
    torch.manual_seed(0)
    cfg = WaveNetConfig()  # ref30
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
    baseline = variant.startswith("baseline")
    model = (BaselineWaveNet(cfg) if baseline else WaveNet(cfg)).to(dev)
    if variant == "wavedil-ckpt":
        model.stack.checkpoint_segments = 3  # activation checkpointing in 3 groups of layers
    make_opt = lambda params: torch.optim.AdamW(params, lr=1e-4)  # noqa: E731
    opt = make_opt(model.parameters())
    seg = torch.randint(0, cfg.quantization_channels, (batch, length + 1), device=dev)
    precision, extra = PRECISION.get(variant, "32"), {}
    if variant == "wavedil-auto":
        from wavedil.precision import choose_precision

        t0 = time.perf_counter()
        precision, reason = choose_precision(model, make_opt, seg, {}, dev, steps=steps)
        extra = {"chose": precision, "reason": reason, "measure_seconds": time.perf_counter() - t0}
    autocast, scaler = autocast_for(dev, precision)
    rss_before = _peak_rss_mb()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)

    def step() -> float:
        with autocast():
            loss = categorical_bits(model(seg[:, :-1]), seg[:, 1:]) if baseline else model.loss(seg)
        opt.zero_grad(set_to_none=True)
        if scaler is None:
            loss.backward()
            opt.step()
        else:  # float16: the gradient scaler, as the trainer uses it
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        return loss.item()

    for _ in range(warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    dt = (time.perf_counter() - t0) / steps
    out = {
        "variant": variant,
        "precision": precision,
        "seconds_per_step": dt,
        "samples_per_second": batch * length / dt,
        "peak_rss_mb": _peak_rss_mb(),
        "rss_before_mb": rss_before,
        **extra,
    }
    if dev.type == "cuda":
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20
        out["tf32"] = {"cudnn": torch.backends.cudnn.allow_tf32, "matmul": torch.backends.cuda.matmul.allow_tf32}
    if profile:
        out["profile"] = _profile(step, dev)
    return out


def _profile(step: Callable[[], float], dev: torch.device, steps: int = 2, top: int = 12) -> dict:
    """The busiest kernels of ``steps`` steps (self time on the device), and the device's busy time
    per step against the wall time: where a step's time goes."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    t0 = time.perf_counter()
    with profile(activities=acts) as prof:
        for _ in range(steps):
            step()
    wall = (time.perf_counter() - t0) / steps
    cuda = dev.type == "cuda"
    attr = "self_device_time_total" if cuda else "self_cpu_time_total"
    # on a GPU the kernels alone (an operator's device time is its kernels' again)
    events = [e for e in prof.key_averages() if getattr(e, attr) > 0 and (not cuda or e.device_type.name == "CUDA")]
    events.sort(key=lambda e: getattr(e, attr), reverse=True)
    busy = sum(getattr(e, attr) for e in events) / 1e3 / steps
    kernels = sum(e.count for e in events) / steps if cuda else 0
    return {
        "wall_ms_per_step": round(1e3 * wall, 2), "busy_ms_per_step": round(busy, 2),
        "device_kernels_per_step": round(kernels), "top": [
            {"name": e.key[:90], "calls": e.count // steps, "ms_per_step": round(getattr(e, attr) / 1e3 / steps, 3)}
            for e in events[:top]
        ],
    }  # fmt: skip


def data_wait_fraction(steps: int, threads: int) -> dict:
    """Fraction of a training step spent waiting for the loader, on the bundled speech."""
    from torch.utils.data import DataLoader

    from wavedil.config import compose, model_config
    from wavedil.train import StepBatchSampler, build_data

    if threads:
        torch.set_num_threads(threads)
    cfg = compose(["experiment=speech8k"])
    dcfg = dict(cfg.data)
    out = {}
    mcfg = model_config(cfg.model)
    for workers in (0, 1):
        data = build_data(dcfg, mcfg, 0, steps + 2)
        loader = DataLoader(data.train, batch_sampler=StepBatchSampler(0, steps + 2, dcfg["batch_size"]),
                            num_workers=workers)
        torch.manual_seed(0)
        model = WaveNet(data.model_config)
        opt = torch.optim.AdamW(model.parameters())
        wait = compute = 0.0
        it = iter(loader)
        next(it)  # start-up (worker spawn) is not per-step cost
        for _ in range(steps):
            t0 = time.perf_counter()
            batch = next(it)
            t1 = time.perf_counter()
            loss = model.loss(batch)
            opt.zero_grad()
            loss.backward()
            opt.step()
            t2 = time.perf_counter()
            wait += t1 - t0
            compute += t2 - t1
        out[f"workers={workers}"] = {"wait_fraction": wait / (wait + compute), "step_seconds": (wait + compute) / steps}
    return out


def machine() -> dict:
    """The CPU, its precision-relevant flags, and torch's view of the machine."""
    flags = cpu_flags()
    out = {
        "cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "cpu_flags": {f: f in flags for f in PRECISION_FLAGS},
        "native_bf16": any(f in flags for f in NATIVE_BF16_FLAGS),
        # what torch's OpenMP threads ran with (unset: libgomp's default, 300,000)
        "GOMP_SPINCOUNT": os.environ.get("GOMP_SPINCOUNT"),
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
        "malloc_keeps_freed_memory": KEEP_FREED_MEMORY,
    }
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(0)
        out["gpu_bf16"] = torch.cuda.is_bf16_supported()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--length", type=int, default=16000)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's; 1 with --quick)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--variants", default=",".join(VARIANTS[:6]), help=f"comma-separated, from {', '.join(VARIANTS)}")
    p.add_argument("--quick", action="store_true",
                   help="B=1, T=500, 1 step, 1 thread, one process, no data loading: a smoke run")
    p.add_argument("--profile", action="store_true", help="also each variant's busiest kernels over two steps")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one variant, print its JSON
    p.add_argument("--data-wait", action=argparse.BooleanOptionalAction, default=None,
                   help="also time data loading on the bundled speech (default: on, off with --quick)")
    a = p.parse_args()
    if a.quick:
        a.batch, a.length, a.steps, a.warmup = 1, 500, 1, 1
        a.threads = 1 if a.threads is None else a.threads  # one thread: no OpenMP waits on a busy machine
    a.threads = a.threads or 0
    if a.data_wait is None:
        a.data_wait = not a.quick
    if a.one:
        print(json.dumps(run_one(a.one, a.batch, a.length, a.steps, a.warmup, a.threads, a.device, a.profile)))
        return
    results = {}
    for v in a.variants.split(","):
        if a.quick:  # a smoke run: every variant in this process (one start-up; peak RSS is then cumulative)
            results[v] = run_one(v, a.batch, a.length, a.steps, a.warmup, a.threads, a.device, a.profile)
            continue
        cmd = [sys.executable, __file__, "--one", v, "--batch", str(a.batch), "--length", str(a.length),
               "--steps", str(a.steps), "--warmup", str(a.warmup), "--threads", str(a.threads), "--device", a.device]
        cmd += ["--profile"] if a.profile else []
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            raise SystemExit(f"variant {v} failed ({res.returncode}):\n{res.stderr}")
        results[v] = json.loads(res.stdout.strip().splitlines()[-1])
    base = results.get("baseline")
    summary = {
        "config": {"model": "ref30", "batch": a.batch, "length": a.length, "steps": a.steps, "device": a.device},
        "machine": machine(),
        "results": results,
    }
    if base:
        summary["speedup_vs_baseline"] = {
            v: r["samples_per_second"] / base["samples_per_second"] for v, r in results.items() if v != "baseline"
        }
    if base and not a.quick:
        summary["peak_rss_vs_baseline"] = {
            v: r["peak_rss_mb"] / base["peak_rss_mb"] for v, r in results.items() if v != "baseline"
        }
    for key, variant in (("bf16", "wavedil-bf16"), ("fp16", "wavedil-fp16"), ("bf16_emulated", "wavedil-bf16-emulated")):
        if "wavedil" in results and variant in results:
            summary[f"{key}_vs_float32"] = results[variant]["samples_per_second"] / results["wavedil"]["samples_per_second"]
    if a.data_wait:
        summary["data_loading"] = data_wait_fraction(steps=20 if not a.quick else 5, threads=a.threads)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
