"""Training-step speed and memory: wavedil's WaveNet against a straightforward implementation.

Prints one JSON object. Each configuration runs in its own subprocess so that its peak RSS is
its own; the baseline runs in the same invocation, on the same machine, with the same data.

    python bench/training.py                 # ref30, B=4, T=16000, float32, CPU
    python bench/training.py --quick         # smaller T and fewer steps (a smoke run)
    python bench/training.py --variants wavedil,baseline,wavedil-ckpt

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
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import cpu_model  # noqa: E402
from wavedil import WaveNet, WaveNetConfig  # noqa: E402
from wavedil.distributions import categorical_bits  # noqa: E402


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


def run_one(variant: str, batch: int, length: int, steps: int, warmup: int, threads: int) -> dict:
    """Time ``steps`` optimizer steps of one variant in this process."""
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = WaveNetConfig()  # ref30
    if variant == "baseline":
        model = BaselineWaveNet(cfg)
    elif variant in ("wavedil", "wavedil-ckpt"):
        model = WaveNet(cfg)
        if variant == "wavedil-ckpt":
            model.stack.checkpoint_segments = 3  # activation checkpointing in 3 groups of layers
    else:
        raise ValueError(f"unknown variant {variant!r}")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    seg = torch.randint(0, cfg.quantization_channels, (batch, length + 1))
    rss_before = _peak_rss_mb()

    def step() -> float:
        loss = categorical_bits(model(seg[:, :-1]), seg[:, 1:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    for _ in range(warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    dt = (time.perf_counter() - t0) / steps
    return {
        "variant": variant,
        "seconds_per_step": dt,
        "samples_per_second": batch * length / dt,
        "peak_rss_mb": _peak_rss_mb(),
        "rss_before_mb": rss_before,
    }


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
    for workers in (0, 1):
        data = build_data(dcfg, 256, 0, steps + 2)
        loader = DataLoader(data.train, batch_sampler=StepBatchSampler(0, steps + 2, dcfg["batch_size"]),
                            num_workers=workers)
        torch.manual_seed(0)
        model = WaveNet(model_config(cfg.model))
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
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--length", type=int, default=16000)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--variants", default="baseline,wavedil,wavedil-ckpt")
    p.add_argument("--quick", action="store_true", help="T=4000, 3 steps: a smoke run")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one variant, print its JSON
    p.add_argument("--data-wait", action=argparse.BooleanOptionalAction, default=True)
    a = p.parse_args()
    if a.quick:
        a.length, a.steps, a.warmup = 4000, 3, 1
    if a.one:
        print(json.dumps(run_one(a.one, a.batch, a.length, a.steps, a.warmup, a.threads)))
        return
    results = {}
    for v in a.variants.split(","):
        cmd = [sys.executable, __file__, "--one", v, "--batch", str(a.batch), "--length", str(a.length),
               "--steps", str(a.steps), "--warmup", str(a.warmup), "--threads", str(a.threads)]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        results[v] = json.loads(res.stdout.strip().splitlines()[-1])
    base = results.get("baseline")
    summary = {
        "config": {"model": "ref30", "batch": a.batch, "length": a.length, "dtype": "float32", "device": "cpu"},
        "machine": machine(),
        "results": results,
    }
    if base:
        summary["speedup_vs_baseline"] = {
            v: r["samples_per_second"] / base["samples_per_second"] for v, r in results.items() if v != "baseline"
        }
        summary["peak_rss_vs_baseline"] = {
            v: r["peak_rss_mb"] / base["peak_rss_mb"] for v, r in results.items() if v != "baseline"
        }
    if a.data_wait:
        summary["data_loading"] = data_wait_fraction(steps=20 if not a.quick else 5, threads=a.threads)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
