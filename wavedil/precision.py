"""Choosing the training precision: measure float32 against bf16 autocast, warn where bf16 is emulated.

``trainer.precision=auto`` runs :func:`choose_precision`: a few optimiser steps of the actual
model in each precision, on a copy of the model and a fresh optimiser inside
:func:`torch.random.fork_rng`, so the run itself (weights, optimiser state, every random state)
is untouched and exact resumption still holds. bf16 is picked only when it is at least
:data:`AUTO_BF16_MIN_SPEEDUP` times as fast.

On CPUs without ``avx512_bf16`` / ``amx_bf16`` bf16 matmuls are emulated; an explicit
``trainer.precision=bf16`` there gets :func:`warn_emulated_bf16`.
"""

from __future__ import annotations

import copy
import logging
import time
from typing import Any, Callable

import torch

from .model import WaveNet
from .training_utils import NATIVE_BF16_FLAGS, autocast_for, cpu_flags, cpu_has_native_bf16

__all__ = [
    "AUTO_BF16_MIN_SPEEDUP",
    "EMULATED_BF16_SLOWDOWN",
    "measure_steps_per_second",
    "choose_precision",
    "warn_emulated_bf16",
]

log = logging.getLogger(__name__)

AUTO_BF16_MIN_SPEEDUP = 1.10  # precision=auto picks bf16 only when it is at least this much faster
#: bf16 autocast against float32 per training step on a CPU without native bf16, as measured on an
#: AVX2-only AMD EPYC with torch 2.11 (bench/training.py: ref30 11x; model=tiny 6x): the warning's figure.
EMULATED_BF16_SLOWDOWN = "6x to 11x"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_steps_per_second(
    model: WaveNet,
    make_optimizer: Callable[[Any], torch.optim.Optimizer],
    batch: torch.Tensor,
    cond: dict[str, torch.Tensor],
    device: torch.device,
    precision: str,
    steps: int = 3,
    warmup: int = 1,
) -> float:
    """Training steps per second of ``model`` at ``precision``, measured on a copy.

    Runs ``warmup + steps`` optimiser steps on a deep copy of the model with a fresh optimiser
    (``make_optimizer(params)``), inside :func:`torch.random.fork_rng`, so the model, its
    optimiser and every random state of the run are left exactly as they were.
    ``batch (B, T+1)`` and ``cond`` must already be on ``device``.
    """
    autocast, scaler = autocast_for(device, precision)
    forks = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=forks):
        twin = copy.deepcopy(model).train()
        opt = make_optimizer(twin.parameters())
        t0 = 0.0
        for i in range(warmup + steps):
            if i == warmup:
                _sync(device)
                t0 = time.perf_counter()
            with autocast():
                loss = twin.loss(batch, **cond)
            opt.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            else:
                loss.backward()
                opt.step()
        _sync(device)
        seconds = time.perf_counter() - t0
    del twin, opt
    return steps / max(seconds, 1e-9)


def choose_precision(
    model: WaveNet,
    make_optimizer: Callable[[Any], torch.optim.Optimizer],
    batch: torch.Tensor,
    cond: dict[str, torch.Tensor],
    device: torch.device,
    steps: int = 3,
) -> tuple[str, str]:
    """``trainer.precision=auto``: time float32 and bf16 autocast, pick bf16 only if >= 10% faster.

    Returns ``(precision, reason)``; the reason names both measured rates. The run's model,
    optimiser and random states are untouched (:func:`measure_steps_per_second`).
    """
    fp32 = measure_steps_per_second(model, make_optimizer, batch, cond, device, "32", steps)
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return "32", f"float32 {fp32:.3g} steps/s; {torch.cuda.get_device_name(device)} has no bfloat16"
    bf16 = measure_steps_per_second(model, make_optimizer, batch, cond, device, "bf16", steps)
    ratio = bf16 / fp32
    pick = "bf16" if ratio >= AUTO_BF16_MIN_SPEEDUP else "32"
    rule = f"bf16 needs >= {AUTO_BF16_MIN_SPEEDUP:.2f}x"
    reason = (
        f"measured {steps} step{'s' if steps != 1 else ''} each: float32 {fp32:.3g} steps/s, "
        f"bf16 autocast {bf16:.3g} steps/s ({ratio:.2f}x; {rule})"
    )
    if device.type == "cpu" and not cpu_has_native_bf16():
        reason += f"; this CPU lacks {'/'.join(NATIVE_BF16_FLAGS)}"
    return pick, reason


def warn_emulated_bf16(device: torch.device) -> None:
    """A warning for ``precision=bf16`` on a CPU whose bf16 matmuls are emulated (slower than float32)."""
    if device.type != "cpu" or cpu_has_native_bf16():
        return
    flags = cpu_flags()
    known = f"neither {' nor '.join(NATIVE_BF16_FLAGS)} in /proc/cpuinfo" if flags else "no /proc/cpuinfo to read"
    msg = (
        f"trainer.precision=bf16 on a CPU without native bfloat16 ({known}): bf16 is emulated here and "
        f"a training step is expected to take {EMULATED_BF16_SLOWDOWN} as long as in float32 (measured with "
        "bench/training.py on an AVX2-only AMD EPYC), not less. Continuing in bf16; trainer.precision=auto "
        "measures both on this model and picks the faster, and trainer.precision=bf16-emulated computes the "
        "same bf16 matmul numbers at about float32 speed (to check bf16 convergence on this CPU)"
    )
    log.warning(msg)
    print(f"warning: {msg}", flush=True)
