"""Training helpers that any loop can use: schedule, EMA, batches by step, device, precision, RNG.

Pure functions and small classes with no knowledge of the WaveNet data pipeline, so the main
loop (:mod:`wavedil.train`) and other recipes (``recipes/char_lm``) share one tested copy without
importing each other.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import random
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator

import numpy as np
import torch
from torch.utils.data import Sampler

__all__ = [
    "TrainingError",
    "lr_factor",
    "EMA",
    "StepBatchSampler",
    "resolve_device",
    "autocast_for",
    "params_digest",
    "rng_state",
    "set_rng_state",
    "cpu_flags",
    "cpu_has_native_bf16",
    "saved_tensor_bytes",
    "memory_limits",
]


class TrainingError(ValueError):
    """Training cannot go on (bad option, diverged loss, mismatched checkpoint, full disk)."""


def lr_factor(
    step: int,
    warmup_steps: int,
    max_steps: int,
    schedule: str,
    min_lr_ratio: float,
    time_fraction: float | None = None,
) -> float:
    """Learning-rate multiplier for ``step``: linear warm-up over steps, then cosine decay or constant.

    The cosine runs over the steps after warm-up (``step - warmup_steps`` of
    ``max_steps - warmup_steps``), or, when ``time_fraction`` is given (a time budget: elapsed
    training time / ``max_time``), over that fraction, so the decay ends at the budget whatever
    the step rate. It ends at ``min_lr_ratio`` and stays there.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        if time_fraction is not None:
            progress = min(1.0, max(0.0, time_fraction))
        else:
            progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise TrainingError(f"optim.schedule must be 'cosine' or 'constant', got {schedule!r}")


class EMA:
    """Exponential moving average of a model's parameters and buffers (kept in float32)."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise TrainingError(f"trainer.ema_decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.shadow = {k: v.detach().clone().float() for k, v in model.state_dict().items()}

    def decay_at(self, step: int) -> float:
        """The decay used after ``step`` updates: warmed up as ``(1 + step) / (10 + step)``, so the
        average forgets the random initial weights within a few hundred steps."""
        return min(self.decay, (1.0 + step) / (10.0 + step))

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        """Move the average towards ``model``'s current weights."""
        decay = self.decay_at(step)
        for k, v in model.state_dict().items():
            s = self.shadow[k]
            if v.dtype.is_floating_point:
                s.lerp_(v.float(), 1.0 - decay)
            else:
                s.copy_(v)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.shadow

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for k, v in state.items():
            self.shadow[k].copy_(v)


class StepBatchSampler(Sampler[list[int]]):
    """Data-set indices for steps ``start .. stop-1``.

    The global batch of step ``s`` is ``s*B .. s*B+B-1``; rank ``r`` of ``world`` takes its
    contiguous share of ``B / world`` indices. The batches are therefore the same whatever the
    world size, and a run can resume with a different one.
    """

    def __init__(self, start: int, stop: int, batch_size: int, rank: int = 0, world_size: int = 1) -> None:
        if batch_size % world_size:
            raise TrainingError(
                f"data.batch_size={batch_size} (the global batch) must be divisible by the world size {world_size}"
            )
        self.start, self.stop, self.batch_size = start, stop, batch_size
        self.local = batch_size // world_size
        self.offset = rank * self.local

    def __iter__(self) -> Iterator[list[int]]:
        for s in range(self.start, self.stop):
            first = s * self.batch_size + self.offset
            yield list(range(first, first + self.local))

    def __len__(self) -> int:
        return max(0, self.stop - self.start)


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> cuda (``cuda:local_rank`` under torchrun) if available, else cpu."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):  # TypeError: not a string (trainer.device=[cuda])
        raise TrainingError(f"trainer.device must be auto, cpu, cuda or cuda:N, got {name!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError(f"trainer.device={name} but no CUDA GPU is available: use trainer.device=cpu")
    return dev


def autocast_for(
    device: torch.device, precision: str
) -> tuple[Callable[[], ContextManager[Any]], torch.amp.GradScaler | None]:
    """The autocast context factory and gradient scaler for a resolved ``trainer.precision``.

    ``32``, ``bf16`` (autocast), ``bf16-emulated`` (bf16 matmul numerics computed in float32:
    :class:`wavedil.emulation.Bf16MatmulEmulation`) or ``16`` (float16 autocast with a gradient
    scaler, CUDA only). ``auto`` is resolved by measurement first (:func:`wavedil.train.choose_precision`).
    """
    precision = str(precision)
    if precision in ("32", "fp32", "float32"):
        return contextlib.nullcontext, None
    if precision in ("bf16", "bfloat16"):
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise TrainingError(
                f"trainer.precision=bf16 but {torch.cuda.get_device_name(device)} lacks bfloat16: use 16 or 32"
            )
        return (lambda: torch.autocast(device.type, dtype=torch.bfloat16)), None
    if precision == "bf16-emulated":
        from .emulation import Bf16MatmulEmulation

        return Bf16MatmulEmulation, None
    if precision in ("16", "fp16", "float16"):
        if device.type != "cuda":
            raise TrainingError(
                "trainer.precision=16 (float16 with a gradient scaler) needs a CUDA GPU; use bf16 or 32 on the CPU"
            )
        return (lambda: torch.autocast("cuda", dtype=torch.float16)), torch.amp.GradScaler("cuda")
    raise TrainingError(f"trainer.precision must be 32, bf16, bf16-emulated, 16 or auto, got {precision!r}")


def params_digest(model: torch.nn.Module) -> str:
    """SHA-256 of the model's parameters and buffers, for checking that runs or ranks agree bit for bit."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


# ----------------------------------------------------------------------------- random state


def rng_state() -> dict[str, Any]:
    """Every global random state a run may draw from, as checkpoint-safe plain data.

    ``torch`` (CPU), ``cuda`` (one state per visible GPU, when CUDA is initialised), ``numpy``
    (the legacy global generator) and ``python`` (:mod:`random`). Tensors, ints and floats only,
    so it loads with ``torch.load(weights_only=True)``.
    """
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, mt, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached),
        },
        "python": {"version": int(version), "state": torch.tensor(mt, dtype=torch.int64), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured; parts an older checkpoint lacks are left as they are."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:  # resumed on another number of GPUs: restore the ones both have
            for i, s in enumerate(cuda[: torch.cuda.device_count()]):
                torch.cuda.set_rng_state(s, i)
    if state.get("numpy") is not None:
        n = state["numpy"]
        keys = n["keys"].numpy().astype(np.uint32)
        np.random.set_state((n["kind"], keys, int(n["pos"]), int(n["has_gauss"]), float(n["cached_gaussian"])))
    if state.get("python") is not None:
        p = state["python"]
        random.setstate((int(p["version"]), tuple(int(x) for x in p["state"].tolist()), p["gauss_next"]))


# ----------------------------------------------------------------------------- the CPU


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> set[str]:
    """The CPU feature flags from ``/proc/cpuinfo`` (an empty set where there is none: not Linux)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags") and ":" in line:
            return set(line.split(":", 1)[1].split())
    return set()


#: Flags of CPUs whose bf16 matmuls run natively (AVX-512 BF16, AMX): elsewhere bf16 is emulated.
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_has_native_bf16(flags: set[str] | None = None) -> bool:
    """True if the CPU computes bf16 matmuls natively (``avx512_bf16`` or ``amx_bf16``)."""
    flags = cpu_flags() if flags is None else flags
    return any(f in flags for f in NATIVE_BF16_FLAGS)


def saved_tensor_bytes(fn: Callable[[], Any]) -> int:
    """Bytes of the distinct tensor storages autograd saves for the backward of ``fn()`` (a forward
    whose result is dropped): what a backward must keep alive, a lower bound of its peak memory."""
    seen: dict[tuple[str, int], int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        seen[(str(t.device), storage.data_ptr())] = storage.nbytes()
        return t

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def _cgroup_limit(path: str | Path = "/sys/fs/cgroup/memory.max") -> int | None:
    """A cgroup v2 memory limit (a container's), or None where there is none or it is unreadable."""
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _meminfo(field: str, path: str | Path = "/proc/meminfo") -> int | None:
    """A ``/proc/meminfo`` field in bytes (Linux), or None."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def memory_limits(device: torch.device) -> tuple[int | None, int | None]:
    """``(total, available)`` bytes of the memory a training process on ``device`` allocates from:
    the GPU's for CUDA; else the machine's RAM, capped by a cgroup (container) limit. None where the
    platform does not say."""
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return int(total), int(free)
    total = None
    with contextlib.suppress(ValueError, OSError, AttributeError):
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    available = _meminfo("MemAvailable")
    limit = _cgroup_limit()
    if limit is not None:
        total = limit if total is None else min(total, limit)
        available = None if available is None else min(available, limit)
    return total, available
