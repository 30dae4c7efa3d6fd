"""torchrun + DistributedDataParallel plumbing: who am I, start/stop the group, agree on flags.

``torchrun --nproc-per-node=N -m wavedil train ...`` sets ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK``; a plain ``wavedil train`` is a world of one and touches none of this.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "DistInfo", "dist_info_from_env", "init_distributed", "any_rank", "max_over_ranks", "broadcast_object", "shutdown",
]


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def dist_info_from_env() -> DistInfo:
    """Rank, world size and local rank as torchrun sets them (a world of one otherwise).

    Raises:
        ValueError: a value that is not an integer, or out of range: ``WORLD_SIZE >= 1``,
            ``0 <= RANK < WORLD_SIZE``, ``LOCAL_RANK >= 0`` (a rank outside the world would wait for
            the others forever, or run alone as a rank that never writes checkpoints).
    """
    try:
        info = DistInfo(
            int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))
        )
    except ValueError as exc:
        raise ValueError(f"RANK/WORLD_SIZE/LOCAL_RANK must be integers (set by torchrun): {exc}") from None
    if info.world_size < 1 or not 0 <= info.rank < info.world_size or info.local_rank < 0:
        raise ValueError(
            f"RANK={info.rank}, WORLD_SIZE={info.world_size}, LOCAL_RANK={info.local_rank} do not fit together: "
            "WORLD_SIZE must be >= 1, RANK in [0, WORLD_SIZE) and LOCAL_RANK >= 0; launch with torchrun "
            "(which sets them), or unset them to train in one process"
        )
    return info


def init_distributed(info: DistInfo, device: torch.device, backend: str = "auto") -> str | None:
    """Join the process group: nccl for CUDA devices, gloo for the CPU (or ``backend``).

    Returns the backend used, or None for a world of one.
    """
    if not info.enabled:
        return None
    if not dist.is_available():
        raise ValueError("this PyTorch build has no torch.distributed: run one process, or install a full build")
    if backend == "auto":
        backend = "nccl" if device.type == "cuda" else "gloo"
    available = {"nccl": dist.is_nccl_available(), "gloo": dist.is_gloo_available()}
    if not available.get(backend, False):
        usable = [b for b, ok in available.items() if ok]
        raise ValueError(
            f"trainer.dist_backend={backend} is not available in this PyTorch build (usable: {usable}); "
            "use gloo on the CPU"
        )
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))
    return backend


def any_rank(flag: bool, info: DistInfo) -> bool:
    """True on every rank if ``flag`` is true on any rank (one small all-reduce)."""
    if not info.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0])
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def max_over_ranks(value: float, info: DistInfo) -> float:
    """The largest ``value`` over all ranks, on every rank (e.g. elapsed time, so that a time-based
    learning rate and the decision to stop are the same everywhere)."""
    if not info.enabled:
        return value
    t = torch.tensor([float(value)], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj, info: DistInfo) -> list:
    """Every rank's ``obj``, in rank order, on every rank (``[obj]`` without DDP)."""
    if not info.enabled:
        return [obj]
    out: list = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


#: How long a gloo rank waits at shutdown for the others before tearing its process group down.
SHUTDOWN_WAIT = datetime.timedelta(seconds=30)


def shutdown(info: DistInfo) -> None:
    """Tear the process group down. On gloo the ranks first meet (for at most
    :data:`SHUTDOWN_WAIT`): a rank that destroyed its group while another still used the
    connection was seen to abort ("terminate called without an active exception", SIGABRT)."""
    if not (info.enabled and dist.is_initialized()):
        return
    if dist.get_backend() == "gloo":
        try:
            dist.monitored_barrier(timeout=SHUTDOWN_WAIT)
        except RuntimeError:  # a rank is gone or stuck elsewhere: tear down anyway
            pass
    dist.destroy_process_group()
