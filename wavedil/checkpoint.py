"""Checkpoints: atomic writes, safe loads (``weights_only=True``), newest-good discovery.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts — nothing that needs
unpickling of arbitrary classes — so it loads with ``torch.load(..., weights_only=True)`` and a
file that would run code when unpickled is refused.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import torch

from ._io import atomic_open
from .model import WaveNet, WaveNetConfig

__all__ = [
    "CheckpointError",
    "save_checkpoint",
    "load_checkpoint",
    "list_checkpoints",
    "newest_good_checkpoint",
    "model_from_checkpoint",
]

log = logging.getLogger(__name__)

_STEP_RE = re.compile(r"^step_(\d+)\.pt$")


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, unsafe or does not match what it is used for."""


def save_checkpoint(obj: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``obj`` to ``path`` atomically: temporary file in the same folder, fsync, rename.

    A crash at any moment leaves either the old file or the complete new one.
    """
    path = Path(path)
    with atomic_open(path) as fh:
        torch.save(obj, fh)
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
    return ckpt


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

