"""Typed trainer and optimiser settings: the ``trainer`` and ``optim`` groups of the config.

The defaults here are the single source: they equal ``conf/trainer/default.yaml`` and
``conf/optim/adamw.yaml`` (a test compares every field with the YAML). ``from_dict`` rejects
unknown keys and checks values, so a typo fails before any work, naming the key and the valid
ones.

>>> TrainerConfig.from_dict({"max_time": "00:01:30", "precision": "bf16"}).max_time
90.0
>>> OptimConfig.from_dict({"lr": 1e-3}).schedule
'cosine'
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields
from typing import Any

__all__ = ["TrainerConfig", "OptimConfig", "parse_duration", "PRECISIONS"]

#: ``trainer.precision`` values; aliases map to these names.
PRECISIONS = ("32", "bf16", "bf16-emulated", "16", "auto")
_PRECISION_ALIASES = {
    "32": "32", "fp32": "32", "float32": "32", "32-true": "32",
    "bf16": "bf16", "bfloat16": "bf16", "bf16-mixed": "bf16", "bf16-emulated": "bf16-emulated",
    "16": "16", "fp16": "16", "float16": "16", "16-mixed": "16",
    "auto": "auto",
}
_DURATION_RE = re.compile(r"^(?:(\d+):)?(\d+):(\d{1,2}):(\d{1,2}(?:\.\d*)?)$")
_DURATION_FORMS = "null, seconds as a number (e.g. 5400), 'HH:MM:SS' (e.g. '01:30:00') or 'DD:HH:MM:SS'"


def parse_duration(value: Any, name: str = "trainer.max_time") -> float | None:
    """A time budget in seconds from ``None``, a number of seconds, ``"HH:MM:SS"`` or ``"DD:HH:MM:SS"``.

    The string forms are Lightning's ``max_time``. Raises ``ValueError`` naming the value and the
    accepted forms for anything else, and for budgets that are not positive.

    >>> parse_duration("01:00:00"), parse_duration("1:02:00:00"), parse_duration(90), parse_duration(None)
    (3600.0, 93600.0, 90.0, None)
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"{name}={value!r} is not a duration; use {_DURATION_FORMS}")
    seconds: float | None = None
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        if text.lower() in ("", "null", "none"):
            return None
        m = _DURATION_RE.match(text)
        if m:
            days, hours, minutes, secs = int(m.group(1) or 0), int(m.group(2)), int(m.group(3)), float(m.group(4))
            if minutes >= 60 or secs >= 60 or (m.group(1) is not None and hours >= 24):
                raise ValueError(f"{name}={value!r}: minutes and seconds must be < 60 (hours < 24 with days)")
            seconds = ((days * 24 + hours) * 60 + minutes) * 60 + secs
        else:
            try:
                seconds = float(text)
            except ValueError:
                seconds = None
    if seconds is None or not math.isfinite(seconds):
        raise ValueError(f"{name}={value!r} is not a duration; use {_DURATION_FORMS}")
    if seconds <= 0:
        raise ValueError(f"{name}={value!r} must be a positive duration (or null for no time limit)")
    return seconds


def _from_dict(cls, d: dict[str, Any], group: str):
    valid = [f.name for f in fields(cls)]
    unknown = sorted(set(d) - set(valid))
    if unknown:
        raise ValueError(f"unknown {group} option(s) {unknown}; valid ones are {sorted(valid)}")
    return cls(**d)


def _check_int(group: str, name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{group}.{name} must be an integer >= {minimum}, got {value!r}")
    return value


@dataclass(frozen=True)
class TrainerConfig:
    """The ``trainer`` group: how long, where, how precisely, and how often to report and save.

    Durations and counts are in optimiser steps unless the name says otherwise.
    """

    max_steps: int = 20000  # optimiser steps; with max_time set, only a cap
    max_time: float | None = None  # time budget in seconds (given as seconds, HH:MM:SS or DD:HH:MM:SS); None: none
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int = 0  # torch intra-op threads on the CPU (0: torch's default)
    ema_decay: float = 0.999  # EMA of the weights for validation, sampling and export (0: off)
    log_every: int = 50  # steps between TensorBoard scalars
    valid_every: int = 500  # steps between validations (bits per sample on held-out segments)
    ckpt_every: int = 500  # steps between checkpoints
    keep_last: int = 3  # checkpoints kept (the newest N)
    keep_every: int = 0  # also keep every checkpoint whose step is a multiple of this (0: none)
    sample_every: int = 0  # steps between audio clips in TensorBoard (0: off)
    sample_seconds: float = 1.0  # length of those clips
    resume: bool | str = False  # true: newest checkpoint of outputs/<name>/; or a checkpoint / run folder path
    init_from: str | None = None  # start from these weights (checkpoint, run folder, pretrained:NAME); fresh optimiser
    progress: bool = True  # progress bar on a terminal, a line every progress_interval seconds elsewhere
    progress_interval: float = 10.0  # seconds between progress lines when stderr is not a terminal
    precision: str = "32"  # 32 | bf16 (autocast) | bf16-emulated | 16 (float16 + scaler, GPU) | auto (measured)
    compile: bool = False  # torch.compile the model (and its loss) for training
    dist_backend: str = "auto"  # under torchrun: auto = nccl on GPUs, gloo on the CPU
    activation_checkpointing: int = 0  # >0: recompute activations in this many groups of layers

    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen dataclass)
        set_("max_time", parse_duration(self.max_time))
        _check_int("trainer", "max_steps", self.max_steps, 1)
        for name in ("threads", "keep_last", "keep_every", "sample_every", "activation_checkpointing"):
            _check_int("trainer", name, getattr(self, name), 1 if name == "keep_last" else 0)
        for name in ("log_every", "valid_every", "ckpt_every"):
            _check_int("trainer", name, getattr(self, name), 1)
        precision = _PRECISION_ALIASES.get(str(self.precision).lower())
        if precision is None:
            raise ValueError(f"trainer.precision must be one of {'|'.join(PRECISIONS)}, got {self.precision!r}")
        set_("precision", precision)
        if not 0.0 <= float(self.ema_decay) < 1.0:
            raise ValueError(f"trainer.ema_decay must be in [0, 1) (0: off), got {self.ema_decay}")
        if not float(self.progress_interval) >= 0:
            raise ValueError(f"trainer.progress_interval must be >= 0 seconds, got {self.progress_interval}")
        if not float(self.sample_seconds) > 0:
            raise ValueError(f"trainer.sample_seconds must be > 0, got {self.sample_seconds}")
        if self.dist_backend not in ("auto", "nccl", "gloo"):
            raise ValueError(f"trainer.dist_backend must be auto, nccl or gloo, got {self.dist_backend!r}")
        if self.resume is None or (isinstance(self.resume, str) and self.resume.lower() in ("", "false", "none")):
            set_("resume", False)
        elif isinstance(self.resume, str) and self.resume.lower() == "true":
            set_("resume", True)
        if self.init_from is not None and (not isinstance(self.init_from, str) or not self.init_from.strip()):
            raise ValueError(
                f"trainer.init_from must be a checkpoint file, a run folder or pretrained:NAME, got {self.init_from!r}"
            )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainerConfig":
        """The ``trainer`` group as a plain dict -> a checked config (unknown keys: ``ValueError``)."""
        return _from_dict(cls, d, "trainer")


@dataclass(frozen=True)
class OptimConfig:
    """The ``optim`` group: the optimiser and its learning-rate schedule."""

    name: str = "adamw"  # adam | adamw
    lr: float = 2.0e-3  # peak learning rate (after warm-up)
    betas: tuple[float, float] = (0.9, 0.99)  # Adam's moment decays
    weight_decay: float = 0.0  # decoupled for adamw, L2 for adam
    warmup_steps: int = 100  # linear warm-up from 0, in steps
    schedule: str = "cosine"  # cosine | constant (after warm-up)
    min_lr_ratio: float = 0.1  # cosine ends at lr * min_lr_ratio (at max_steps, or at max_time when set)
    grad_clip: float = 1.0  # max global gradient norm (0: off)

    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen dataclass)
        name = str(self.name).lower()
        if name not in ("adam", "adamw"):
            raise ValueError(f"optim.name must be 'adam' or 'adamw', got {self.name!r}")
        set_("name", name)
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"optim.schedule must be 'cosine' or 'constant', got {self.schedule!r}")
        if not float(self.lr) > 0:
            raise ValueError(f"optim.lr must be > 0, got {self.lr}")
        betas = tuple(float(b) for b in self.betas)
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"optim.betas must be two numbers in [0, 1), got {list(self.betas)}")
        set_("betas", betas)
        _check_int("optim", "warmup_steps", self.warmup_steps, 0)
        if not 0.0 <= float(self.min_lr_ratio) <= 1.0:
            raise ValueError(f"optim.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if not float(self.weight_decay) >= 0 or not float(self.grad_clip) >= 0:
            raise ValueError(
                f"optim.weight_decay and optim.grad_clip must be >= 0, got {self.weight_decay} and {self.grad_clip}"
            )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "OptimConfig":
        """The ``optim`` group as a plain dict -> a checked config (unknown keys: ``ValueError``)."""
        return _from_dict(cls, d, "optim")
