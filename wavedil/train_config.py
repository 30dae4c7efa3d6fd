"""Typed training settings: the ``trainer``, ``optim`` and ``data`` groups and the top-level keys.

The trainer and optimiser defaults here are the single source: they equal
``conf/trainer/default.yaml`` and ``conf/optim/adamw.yaml`` (a test compares every field with
the YAML). The ``data`` group has one YAML per corpus (``conf/data/*.yaml``), each setting the
four required options (:class:`DataConfig`). ``from_dict`` rejects unknown keys and checks values,
so a typo or a value of the wrong type fails before any work, naming the option, the value and
the valid ones; :func:`check_top_level` does the same for the keys outside the groups (``seed``,
``name``, ``debug``, or a typo such as ``+foo=1``).

>>> TrainerConfig.from_dict({"max_time": "00:01:30", "precision": "bf16"}).max_time
90.0
>>> OptimConfig.from_dict({"lr": 1e-3}).schedule
'cosine'
"""

from __future__ import annotations

import difflib
import math
import os
import re
from dataclasses import dataclass, fields
from typing import Any

__all__ = [
    "TrainerConfig", "OptimConfig", "DataConfig", "check_top_level", "parse_duration", "PRECISIONS", "TOP_LEVEL_KEYS",
    "MAX_TRAIN_SEED",
]

#: The most ``trainer.threads``: more made OpenMP abort the process allocating their stacks
#: (``trainer.threads=100000000``: "Out of memory allocating 21600001344 bytes").
MAX_THREADS = 1024

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


def _did_you_mean(unknown: list[str], valid: list[str]) -> str:
    """`` (did you mean 'sample_rate'?)`` for the unknown keys close to a valid one, else ``""``."""
    close = [m[0] for key in unknown if (m := difflib.get_close_matches(str(key), valid, n=1, cutoff=0.6))]
    return f" (did you mean {', '.join(repr(c) for c in dict.fromkeys(close))}?)" if close else ""


def _unknown_keys_message(unknown: list[str], valid: list[str], what: str) -> str:
    return f"unknown {what}(s) {unknown}; valid ones are {sorted(valid)}{_did_you_mean(unknown, valid)}"


def _from_dict(cls, d: dict[str, Any], group: str, valid: list[str] | None = None, note: str = ""):
    """``cls(**d)`` after rejecting keys outside ``valid`` (default: the fields of ``cls``)."""
    if not isinstance(d, dict):
        raise ValueError(f"the {group} group must be a mapping of options ({group}.NAME=VALUE), got {d!r}")
    valid = [f.name for f in fields(cls)] if valid is None else valid
    unknown = sorted(set(d) - set(valid), key=str)
    if unknown:
        raise ValueError(_unknown_keys_message(unknown, valid, f"{group} option") + note)
    return cls(**d)


def _name(group: str, name: str) -> str:
    return f"{group}.{name}" if group else name


def _check_int(group: str, name: str, value: Any, minimum: int) -> int:
    """``value`` if it is an integer >= ``minimum`` (not a bool, a float or a string); else ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{_name(group, name)} must be an integer >= {minimum}, got {value!r}")
    return value


def _number(group: str, name: str, value: Any) -> float:
    """``value`` as a finite float: a number, or a string of one (``"1e-3"``); else ``ValueError`` naming it."""
    number: float | None = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            number = None
    if number is None or not math.isfinite(number):
        raise ValueError(f"{_name(group, name)} must be a number, got {value!r}")
    return number


def _check_bool(group: str, name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{_name(group, name)} must be true or false, got {value!r}")
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
        for name in ("ema_decay", "progress_interval", "sample_seconds"):
            set_(name, _number("trainer", name, getattr(self, name)))
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"trainer.ema_decay must be in [0, 1) (0: off), got {self.ema_decay}")
        if not self.progress_interval >= 0:
            raise ValueError(f"trainer.progress_interval must be >= 0 seconds, got {self.progress_interval}")
        if not self.sample_seconds > 0:
            raise ValueError(f"trainer.sample_seconds must be > 0, got {self.sample_seconds}")
        for name in ("progress", "compile"):
            _check_bool("trainer", name, getattr(self, name))
        if self.dist_backend not in ("auto", "nccl", "gloo"):
            raise ValueError(f"trainer.dist_backend must be auto, nccl or gloo, got {self.dist_backend!r}")
        if self.resume is None or (isinstance(self.resume, str) and self.resume.lower() in ("", "false", "none")):
            set_("resume", False)
        elif isinstance(self.resume, str) and self.resume.lower() == "true":
            set_("resume", True)
        elif not isinstance(self.resume, (bool, str)):  # a list or a number named no checkpoint
            raise ValueError(
                f"trainer.resume must be true, false or the path of a checkpoint or run folder, got {self.resume!r}"
            )
        if self.threads > MAX_THREADS:  # OpenMP tries to allocate every thread's stack and aborts the process
            raise ValueError(
                f"trainer.threads must be at most {MAX_THREADS} (0: torch's default, {os.cpu_count()} CPUs here), "
                f"got {self.threads}"
            )
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
        for name in ("lr", "min_lr_ratio", "weight_decay", "grad_clip"):
            set_(name, _number("optim", name, getattr(self, name)))
        if not self.lr > 0:
            raise ValueError(f"optim.lr must be > 0, got {self.lr}")
        if isinstance(self.betas, (str, bytes)) or not isinstance(self.betas, (list, tuple)):
            raise ValueError(f"optim.betas must be two numbers in [0, 1), e.g. [0.9,0.99], got {self.betas!r}")
        betas = tuple(_number("optim", "betas", b) for b in self.betas)
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"optim.betas must be two numbers in [0, 1), got {list(self.betas)}")
        set_("betas", betas)
        _check_int("optim", "warmup_steps", self.warmup_steps, 0)
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"optim.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if not self.weight_decay >= 0 or not self.grad_clip >= 0:
            raise ValueError(
                f"optim.weight_decay and optim.grad_clip must be >= 0, got {self.weight_decay} and {self.grad_clip}"
            )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "OptimConfig":
        """The ``optim`` group as a plain dict -> a checked config (unknown keys: ``ValueError``)."""
        return _from_dict(cls, d, "optim")


#: the data options every corpus config must set (``conf/data/*.yaml`` set them all)
_DATA_REQUIRED = ("root", "sample_rate", "segment_length", "batch_size")


@dataclass(frozen=True)
class DataConfig:
    """The ``data`` group: which corpus, at what rate, in what segments and batches.

    ``root``, ``sample_rate``, ``segment_length`` and ``batch_size`` are required (every
    ``conf/data/*.yaml`` sets them); ``mic`` is an option of ``layout: vctk`` only. ``root`` is
    kept as given (``~`` is expanded where the corpus is read, :func:`wavedil.data.load_corpus`).

    >>> DataConfig.from_dict({"root": "/a", "sample_rate": 8000, "segment_length": 4000, "batch_size": 8}).layout
    'folder'
    """

    root: str
    sample_rate: int  # Hz; files at other rates are resampled
    segment_length: int  # samples per training segment (the model sees T+1 codes)
    batch_size: int
    layout: str = "folder"  # folder | ljspeech | vctk
    mic: str = "mic1"  # vctk only: mic1 | mic2 | both
    valid_fraction: float = 0.05  # files held out for validation
    valid_segments: int = 32  # fixed validation segments drawn from the held-out files
    trim_silence_db: float | None = None  # e.g. -40: never sample audio this far below each file's peak
    num_workers: int = 0  # DataLoader worker processes

    def __post_init__(self) -> None:
        from .data.corpus import LAYOUTS, VCTK_MICS  # here: importing the data package loads torch

        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen dataclass)
        root = self.root
        if isinstance(root, os.PathLike):
            root = os.fspath(root)
        if root is None or root == "???" or (isinstance(root, str) and not root.strip()):
            raise ValueError("data.root is not set: pass the corpus folder, e.g. data.root=$HOME/my_wavs")
        if not isinstance(root, str):
            raise ValueError(f"data.root must be a folder path, got {root!r}")
        set_("root", root)
        if self.layout not in LAYOUTS:
            raise ValueError(f"data.layout must be one of {'|'.join(LAYOUTS)}, got {self.layout!r}")
        if self.mic not in VCTK_MICS:
            raise ValueError(f"data.mic must be one of {'|'.join(VCTK_MICS)}, got {self.mic!r}")
        _check_int("data", "sample_rate", self.sample_rate, 1)
        _check_int("data", "segment_length", self.segment_length, 2)
        _check_int("data", "batch_size", self.batch_size, 1)
        _check_int("data", "valid_segments", self.valid_segments, 1)
        _check_int("data", "num_workers", self.num_workers, 0)
        set_("valid_fraction", _number("data", "valid_fraction", self.valid_fraction))
        if not 0.0 <= self.valid_fraction < 1.0:
            raise ValueError(f"data.valid_fraction must be in [0, 1), got {self.valid_fraction}")
        if self.trim_silence_db is not None:
            set_("trim_silence_db", _number("data", "trim_silence_db", self.trim_silence_db))
            if not self.trim_silence_db < 0:
                raise ValueError(
                    f"data.trim_silence_db must be negative (dB below each file's peak, e.g. -40) or null, "
                    f"got {self.trim_silence_db:g}"
                )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DataConfig":
        """The ``data`` group as a plain dict -> a checked config.

        Raises:
            ValueError: an unknown key (``mic`` is one unless ``layout`` is ``vctk``), a required
                one missing, or a bad value; the message names the option and the valid choices.
        """
        if not isinstance(d, dict):
            return _from_dict(cls, d, "data")  # raises: not a mapping
        layout = d.get("layout", "folder")
        valid = [f.name for f in fields(cls) if f.name != "mic" or layout == "vctk"]
        unknown = sorted(set(d) - set(valid), key=str)
        if unknown:
            note = f" (data.mic is read with data.layout=vctk only; data.layout is {layout!r})" if "mic" in unknown else ""
            raise ValueError(_unknown_keys_message(unknown, valid, "data option") + note)
        missing = [k for k in _DATA_REQUIRED if k not in d]
        if missing:
            raise ValueError(
                f"data option(s) {missing} not set: a data config (conf/data/*.yaml) sets "
                f"{', '.join(_DATA_REQUIRED)}; pass the missing ones as data.NAME=VALUE"
            )
        return cls(**d)


#: The top-level keys of a composed training config (``conf/train.yaml``): the four groups and
#: ``name``, ``seed``, ``debug``. Hydra drops its own ``hydra`` node before the run sees the
#: config; one composed with it (``return_hydra_config=True``) is accepted too.
TOP_LEVEL_KEYS = ("model", "data", "optim", "trainer", "name", "seed", "debug", "hydra")
#: The largest ``seed`` of a run: the validation set and the audio clips draw from ``seed`` plus
#: an offset, and every one must stay within the 64 bits of a torch / sampling seed.
MAX_TRAIN_SEED = 2**63 - 1


def check_top_level(plain: dict[str, Any]) -> int:
    """Check the keys outside the groups of a composed config (as plain data); returns the seed.

    Raises:
        ValueError: an unknown top-level key (``+foo=1``; ``experiment`` when an experiment file
            lacks its ``# @package _global_`` line), a missing group, or ``seed`` / ``debug`` of
            the wrong type (``seed=1.5`` is refused, not truncated) or a ``seed`` above :data:`MAX_TRAIN_SEED`.
    """
    if not isinstance(plain, dict):
        raise ValueError(f"a training config must be a mapping of options, got {type(plain).__name__}")
    unknown = sorted(set(plain) - set(TOP_LEVEL_KEYS), key=str)
    if unknown:
        note = " (a group's option goes under it, e.g. data.sample_rate=16000)"
        if "experiment" in unknown:
            note = (" (an experiment file must start with the line '# @package _global_' so that its settings "
                    "apply to the whole config)")
        raise ValueError(_unknown_keys_message(unknown, list(TOP_LEVEL_KEYS), "top-level option") + note)
    for group in ("model", "data", "optim", "trainer"):
        if not isinstance(plain.get(group), dict):
            raise ValueError(f"the config has no '{group}' group of options (conf/train.yaml's defaults set one)")
    _check_bool("", "debug", plain.get("debug", False))
    seed = _check_int("", "seed", plain.get("seed", 0), 0)
    if seed > MAX_TRAIN_SEED:  # torch.manual_seed takes 64 bits; validation and clips use seed + a few
        raise ValueError(f"seed must be an integer in [0, 2**63 - 1], got {seed}")
    return seed
