"""Checkpoints: atomic writes, safe loads (``weights_only=True``), newest-good discovery.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts — nothing that needs
unpickling of arbitrary classes — so it loads with ``torch.load(..., weights_only=True)`` and a
file that would run code when unpickled is refused. Its ``format`` field
(:data:`CHECKPOINT_FORMAT`) is checked on load; fields added within a format are optional, so
older checkpoints of the same format keep loading.

Where a command takes "a checkpoint file or a run folder", :func:`resolve_checkpoint` (the path)
or :func:`open_checkpoint` (the path and its contents, loaded once) do the lookup.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from ._io import atomic_open
from .model import WaveNet, WaveNetConfig

__all__ = [
    "CHECKPOINT_FORMAT",
    "SUPPORTED_FORMATS",
    "CheckpointError",
    "CheckpointWriteError",
    "save_checkpoint",
    "resolve_checkpoint",
    "open_checkpoint",
    "load_checkpoint",
    "step_from_name",
    "list_checkpoints",
    "newest_good_checkpoint",
    "model_from_checkpoint",
]

log = logging.getLogger(__name__)

_STEP_RE = re.compile(r"^step_(\d+)\.pt$")

#: The ``format`` written into new checkpoints. Version 1 holds ``model``, ``model_config`` and,
#: from training, ``ema``, ``optimizer``, ``scheduler``, ``step``, ``rng``, ``config``,
#: ``sample_rate``; ``elapsed_seconds`` and the numpy/python/CUDA parts of ``rng`` were added
#: later and are optional.
CHECKPOINT_FORMAT = 1
#: Formats this version reads (a checkpoint without the field is a version-1 one).
SUPPORTED_FORMATS = (1,)

# Messages of torch.save when the file cannot be written (a full disk shows up as one of these).
_TORCH_WRITE_FAILURES = ("unexpected pos", "file write failed", "PytorchStreamWriter failed")


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, unsafe or does not match what it is used for."""


class CheckpointWriteError(CheckpointError):
    """A checkpoint could not be written: the disk of its folder is full (or the write failed).

    Attributes: ``path`` (the file that was being written), ``needed_bytes`` (about what it
    needs), ``free_bytes`` (free space in its folder, or None if unknown). The previous file of
    that name, if any, is untouched.
    """

    def __init__(self, message: str, path: Path, needed_bytes: int, free_bytes: int | None) -> None:
        super().__init__(message)
        self.path, self.needed_bytes, self.free_bytes = path, needed_bytes, free_bytes


def _tensor_bytes(obj: Any) -> int:
    """Bytes of the tensors in a nested dict/list (about the size of the checkpoint file)."""
    if torch.is_tensor(obj):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


def save_checkpoint(obj: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``obj`` to ``path`` atomically: temporary file in the same folder, fsync, rename.

    A crash at any moment leaves either the old file or the complete new one.

    Raises:
        CheckpointWriteError: the device of the folder is full (``ENOSPC``/``EDQUOT``, or the
            failed-write ``RuntimeError`` torch raises then); it says how much space the
            checkpoint needs and how much is free.
    """
    path = Path(path)
    try:
        with atomic_open(path) as fh:
            torch.save(obj, fh)
    except (OSError, RuntimeError) as exc:
        disk_full = isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)
        torch_write = isinstance(exc, RuntimeError) and any(m in str(exc) for m in _TORCH_WRITE_FAILURES)
        if not (disk_full or torch_write):
            raise
        needed = _tensor_bytes(obj) + 64 * 1024
        try:
            free: int | None = shutil.disk_usage(path.parent).free
        except OSError:
            free = None
        where = f"{_mb(free)} free" if free is not None else "free space unknown"
        cause = "no space left on the device" if disk_full else "writing failed (most often: no space left on the device)"
        raise CheckpointWriteError(
            f"cannot write checkpoint '{path}': {cause} of '{path.parent}' ({where}); the checkpoint needs about "
            f"{_mb(needed)} ({needed:,} bytes). Free some space there or write elsewhere "
            f"[{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else exc!r}]",
            path, needed, free,
        ) from None
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint safely (``weights_only=True``).

    Raises:
        CheckpointError: missing, truncated/corrupt, not a wavedil checkpoint, or holding
            objects that would need arbitrary code to unpickle.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist or is not a file")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "Weights only load failed" in str(exc) or "weights_only" in str(exc):
            raise CheckpointError(
                f"checkpoint '{path}' holds objects that could run code when loaded; wavedil refuses "
                f"to unpickle it. Only load checkpoints written by wavedil ({msg})"
            ) from None
        raise CheckpointError(f"checkpoint '{path}' is corrupt or truncated and cannot be read ({msg})") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "model_config" not in ckpt:
        raise CheckpointError(
            f"'{path}' is not a wavedil checkpoint (expected a dict with 'model' and 'model_config')"
        )
    fmt = ckpt.get("format", 1)
    if fmt not in SUPPORTED_FORMATS:
        raise CheckpointError(
            f"checkpoint '{path}' has format {fmt!r}, which this wavedil does not know (it reads format "
            f"{', '.join(map(str, SUPPORTED_FORMATS))}): it was written by another wavedil version; load it with that one"
        )
    return ckpt


def step_from_name(path: str | os.PathLike) -> int | None:
    """The step in a checkpoint's file name (``step_00001500.pt`` -> 1500), None for other names."""
    m = _STEP_RE.match(Path(path).name)
    return int(m.group(1)) if m else None


def list_checkpoints(folder: str | os.PathLike) -> list[Path]:
    """``step_*.pt`` files in ``folder``, newest step first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _STEP_RE.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def newest_good_checkpoint(folder: str | os.PathLike) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint in ``folder`` that loads; corrupt newer ones are reported and passed over."""
    for path in list_checkpoints(folder):
        try:
            return path, load_checkpoint(path)
        except CheckpointError as exc:
            log.warning("skipping unusable checkpoint: %s; falling back to an older one", exc)
    return None


def open_checkpoint(target: str | os.PathLike) -> tuple[Path, dict[str, Any]]:
    """A checkpoint file, or the newest good checkpoint of a run folder, and its contents (loaded once).

    ``target`` is a ``.pt`` file, a run folder (its ``checkpoints/`` subfolder is searched) or a
    folder of ``step_*.pt`` files. Newer checkpoints that fail to load are reported and passed over.

    Raises:
        CheckpointError: nothing usable found; the message lists every place looked in.
    """
    path = Path(target)
    if not path.is_dir():
        if not path.exists():
            raise CheckpointError(
                f"checkpoint '{path}' not found: give a step_*.pt file, or a run folder holding checkpoints/step_*.pt"
            )
        return path, load_checkpoint(path)
    folders = [path / "checkpoints", path] if (path / "checkpoints").is_dir() else [path]
    looked = []
    for folder in folders:
        found = newest_good_checkpoint(folder)
        if found is not None:
            return found
        n = len(list_checkpoints(folder))
        looked.append(f"'{folder}' ({n} step_*.pt file{'s' if n != 1 else ''}{', none usable' if n else ''})")
    if not (path / "checkpoints").is_dir():
        looked.insert(0, f"'{path / 'checkpoints'}' (no such folder)")
    raise CheckpointError(
        f"no usable checkpoint for '{path}': looked for step_*.pt in {' and in '.join(looked)}. "
        "Train first (checkpoints appear every trainer.ckpt_every steps), or give a .pt file"
    )


def resolve_checkpoint(target: str | os.PathLike) -> Path:
    """The checkpoint file that ``target`` (a ``.pt`` file or a run folder) means; see :func:`open_checkpoint`.

    >>> resolve_checkpoint("outputs/speech8k/2026-01-01_00-00-00")  # doctest: +SKIP
    PosixPath('outputs/speech8k/2026-01-01_00-00-00/checkpoints/step_00020000.pt')
    """
    return open_checkpoint(target)[0]


def model_from_checkpoint(
    ckpt: dict[str, Any], use_ema: bool = True, device: str | torch.device = "cpu"
) -> WaveNet:
    """Build the :class:`WaveNet` a checkpoint describes and load its (EMA) weights."""
    try:
        config = WaveNetConfig.from_dict(ckpt["model_config"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"the checkpoint's model_config is invalid: {exc}") from None
    model = WaveNet(config)
    state = ckpt.get("ema") if use_ema and ckpt.get("ema") else ckpt["model"]
    bad = sorted(k for k, v in state.items() if torch.is_tensor(v) and v.is_floating_point() and not torch.isfinite(v).all())
    if bad:
        raise CheckpointError(
            f"the checkpoint's weights hold NaN or infinite values ({', '.join(bad[:5])}"
            f"{', ...' if len(bad) > 5 else ''}): it comes from a diverged run; use an earlier checkpoint"
        )
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"the checkpoint's weights do not match its model_config: {exc}") from None
    return model.to(device).eval()

