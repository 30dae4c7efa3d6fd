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
import zipfile
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
    "LoadedCheckpoint",
    "recorded_sample_rate",
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
#: ``sample_rate``; ``elapsed_seconds``, the numpy/python/CUDA parts of ``rng`` and ``scaler``
#: (the float16 loss scale of ``trainer.precision=16``) were added later and are optional.
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


class LoadedCheckpoint(dict):
    """A checkpoint's contents as :func:`load_checkpoint` returns them: a plain ``dict`` that also
    remembers the file it came from (``path``), so that later errors (:func:`model_from_checkpoint`)
    can name it. :func:`save_checkpoint` writes it as a plain dict."""

    path: Path | None = None


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
    if isinstance(obj, LoadedCheckpoint):  # a dict subclass would not load back with weights_only=True
        obj = dict(obj)
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


# The first object of a file in torch's legacy (non-zip) format: its magic number, pickled.
_LEGACY_MAGIC = (0x1950A86A20F9469CFC6C).to_bytes(10, "little")
_AUDIO_MAGICS = (b"RIFF", b"fLaC", b"OggS", b"ID3", b"FORM", b"\xff\xfb", b"\xff\xf3")
_WHAT_TO_GIVE = "give a step_*.pt file that wavedil train wrote (in a run's checkpoints/ folder), or the run folder"
#: Rates a checkpoint may record (Hz); anything else is a damaged or hand-edited file.
_MAX_SAMPLE_RATE = 10_000_000
#: The rate :mod:`wavedil` assumes for a checkpoint that records none (hand-made or foreign files).
_DEFAULT_SAMPLE_RATE = 16000


def _looks_like_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if len(head) < 512 or exc.start < len(head) - 3:  # not just a character cut by the end of the sample
            return False
        text = head[: exc.start].decode("utf-8")
    return all(ch.isprintable() or ch in "\t\n\r\f\v" for ch in text)


_TEXT_KIND = "it holds text, not data written by torch.save"


def _not_torch_file(path: Path) -> str | None:
    """What ``path`` holds if it is not a file ``torch.save`` wrote, or None if it may be one.

    A file that starts like torch's zip or legacy format is left to :func:`torch.load` (and
    called corrupt if that fails): a checkpoint cut short by a crash still starts like one.
    """
    with open(path, "rb") as fh:
        head = fh.read(512)
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except (zipfile.BadZipFile, OSError, ValueError):
            return None  # a torch file cut short, most likely
        if any(n == "constants.pkl" or n.endswith("/constants.pkl") for n in names):
            return "a TorchScript archive (torch.jit.save), not a dict of weights"
        if not any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
            return "a zip archive, but not one torch.save wrote"
        return None
    if head[:1] == b"\x80" and _LEGACY_MAGIC in head[:32]:
        return None
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "a Python pickle, not a file torch.save wrote"
    if head.startswith(_AUDIO_MAGICS):
        return "an audio file, not a model"
    if head.startswith(b"\x93NUMPY"):
        return "a NumPy array (.npy), not a model"
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "a tar archive, not a file torch.save wrote"
    if _looks_like_text(head):
        return _TEXT_KIND
    return f"unrecognised binary data starting with bytes {head[:8].hex(' ')}, not data written by torch.save"


def is_torch_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a non-empty file that starts as :func:`torch.save` writes one (a
    checkpoint of any name: ``.pth``, ``.ckpt``, ``.PT``), not text or another format."""
    return binary_file_kind(path) == ""


def binary_file_kind(path: str | os.PathLike) -> str | None:
    """What a non-empty file that is not text holds: ``""`` when it starts as :func:`torch.save`
    writes one, else e.g. ``"a NumPy array (.npy), not a model"``; None for text (perhaps a
    YAML file), an empty file or one that cannot be read."""
    path = Path(path)
    try:
        if not path.is_file() or path.stat().st_size == 0:
            return None
        kind = _not_torch_file(path)
    except OSError:
        return None
    return "" if kind is None else None if kind == _TEXT_KIND else kind


def _torch_reason(exc: BaseException) -> str:
    """A short reason from a failed :func:`torch.load`, without torch's advice to retry with
    ``weights_only=False`` (which would run whatever code the file holds)."""
    text = str(exc)
    m = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n\s*\nCheck the documentation|\Z)", text, re.S)
    if m and m.group(1).strip():
        text = m.group(1).strip()
    unsafe = ("weights_only", "Weights only load failed", "arbitrary code", "trusted source", "add_safe_globals")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not any(u in ln for u in unsafe)]
    reason = lines[0] if lines else type(exc).__name__
    return reason if len(reason) <= 200 else reason[:197] + "..."


def _unsafe_object(exc: BaseException) -> str | None:
    """What makes torch's weights-only loader refuse a file as unsafe, or None if that is not why it failed."""
    text = str(exc)
    m = re.search(r"GLOBAL (\S+) (?:was not an allowed global|whose module)", text)
    if m:
        return f"it references {m.group(1)}"
    if "allowlisted" in text or "is blocked" in text:
        return "it holds objects other than tensors, numbers, strings, lists and dicts"
    return None


def recorded_sample_rate(ckpt: dict[str, Any]) -> int | None:
    """The rate (Hz) a checkpoint's contents record: its ``sample_rate``, else its model's mel
    settings', else its run's ``data.sample_rate``; None where none holds a valid rate."""
    mcfg, config = ckpt.get("model_config"), ckpt.get("config")
    mel = mcfg.get("mel") if isinstance(mcfg, dict) else None
    data = config.get("data") if isinstance(config, dict) else None
    for source in (ckpt, mel, data):
        rate = source.get("sample_rate") if isinstance(source, dict) else None
        if isinstance(rate, int) and not isinstance(rate, bool) and 0 < rate <= _MAX_SAMPLE_RATE:
            return rate
    return None


def _checked_sample_rate(ckpt: dict[str, Any], path: Path) -> None:
    """Check ``ckpt["sample_rate"]`` (a positive int), or fill it in from the model's or the run's
    config when missing (:func:`recorded_sample_rate`); warn when it cannot be known."""
    if ckpt.get("sample_rate") is None:
        rate = recorded_sample_rate(ckpt)
        if rate is not None:
            ckpt["sample_rate"] = rate
            return
        log.warning(
            "checkpoint '%s' records no sample_rate: assuming %d Hz (if it was trained at another rate, "
            "its audio will play at the wrong speed)", path, _DEFAULT_SAMPLE_RATE,
        )
        return
    rate = ckpt["sample_rate"]
    if isinstance(rate, float) and rate.is_integer():
        rate = int(rate)
    if isinstance(rate, bool) or not isinstance(rate, int) or not 0 < rate <= _MAX_SAMPLE_RATE:
        raise CheckpointError(
            f"checkpoint '{path}' records an invalid sample_rate {ckpt['sample_rate']!r} (it must be a whole "
            f"number of Hz, 1 to {_MAX_SAMPLE_RATE:,}): the file is damaged or was edited by hand; {_WHAT_TO_GIVE}"
        )
    ckpt["sample_rate"] = rate


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> LoadedCheckpoint:
    """Load a checkpoint safely (``weights_only=True``).

    A missing ``sample_rate`` is taken from the model's mel settings or the run's ``data``
    config when they have one; otherwise a warning says that 16000 Hz is assumed.

    Returns:
        the checkpoint's dict, as a :class:`LoadedCheckpoint` (its ``path`` is ``path``).

    Raises:
        CheckpointError: missing, a folder, empty, not a file torch.save wrote (text, audio, a
            zip or pickle of something else), truncated/corrupt, not a wavedil checkpoint, holding
            objects that would need arbitrary code to unpickle, of an unknown format, or with an
            invalid ``sample_rate``; each message names the file.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(
            f"checkpoint '{path}' is a folder, not a checkpoint file: give one of its step_*.pt files "
            "(commands that take a checkpoint also accept a run folder and pick its newest checkpoint)"
        )
    if not path.exists():
        raise CheckpointError(f"checkpoint '{path}' does not exist: {_WHAT_TO_GIVE}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' is not a regular file (a FIFO, socket or device): {_WHAT_TO_GIVE}")
    try:
        size = path.stat().st_size
        what = _not_torch_file(path) if size else None
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint '{path}': {exc.strerror or exc}") from None
    if size == 0:
        raise CheckpointError(
            f"checkpoint '{path}' is empty (0 bytes): its writing never finished; use an earlier step_*.pt "
            "of the run, or the run folder (its newest good checkpoint is picked)"
        )
    if what is not None:
        raise CheckpointError(f"'{path}' is not a wavedil checkpoint ({what}): {_WHAT_TO_GIVE}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        unsafe = _unsafe_object(exc)
        if unsafe is not None:
            raise CheckpointError(
                f"checkpoint '{path}' holds objects that could run code when loaded ({unsafe}); wavedil refuses "
                "to unpickle it. Only load checkpoints written by wavedil"
            ) from None
        if "map_location" in str(exc) or "deserialize object on a CUDA device" in str(exc):
            raise CheckpointError(f"cannot load checkpoint '{path}' onto {map_location}: {_torch_reason(exc)}") from None
        raise CheckpointError(
            f"checkpoint '{path}' is corrupt or truncated and cannot be read ({_torch_reason(exc)}): use an "
            "earlier step_*.pt of the run, or the run folder (its newest good checkpoint is picked)"
        ) from None
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
    _checked_sample_rate(ckpt, path)
    loaded = LoadedCheckpoint(ckpt)
    loaded.path = path
    return loaded


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
    found = list_checkpoints(folder)
    for i, path in enumerate(found):
        try:
            return path, load_checkpoint(path)
        except CheckpointError as exc:
            then = "falling back to an older one" if i + 1 < len(found) else "there is no older one"
            log.warning("skipping unusable checkpoint: %s; %s", exc, then)
    return None


def open_checkpoint(target: str | os.PathLike) -> tuple[Path, dict[str, Any]]:
    """A checkpoint file, or the newest good checkpoint of a run folder, and its contents (loaded once).

    ``target`` is a ``.pt`` file, a run folder (its ``checkpoints/`` subfolder is searched) or a
    folder of ``step_*.pt`` files; a leading ``~`` or ``~user`` is expanded. Newer checkpoints
    that fail to load are reported and passed over.

    Raises:
        CheckpointError: nothing usable found; the message lists every place looked in.
    """
    path = Path(target)
    if not path.exists():
        path = path.expanduser()  # "~/runs/x": quoted, as Hydra needs it, the shell leaves the ~ to us
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


def _state_mismatch(expected: dict[str, torch.Tensor], state: dict[str, Any]) -> str | None:
    """How ``state`` (weights) differs from ``expected`` (a model's state dict), briefly; None if it fits."""
    for key, value in state.items():
        if not torch.is_tensor(value):
            return f"'{key}' is a {type(value).__name__}, not a tensor"
    shapes = [(k, tuple(state[k].shape), tuple(v.shape)) for k, v in expected.items() if k in state and state[k].shape != v.shape]
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    parts = []
    if shapes:
        key, got, want = shapes[0]
        more = f" (and {len(shapes) - 1} more)" if len(shapes) > 1 else ""
        parts.append(f"'{key}' is {got} in the weights but {want} in the model the config describes{more}")
    if missing:
        parts.append(f"{len(missing)} parameter(s) the config needs are missing, e.g. '{missing[0]}'")
    if unexpected:
        parts.append(f"{len(unexpected)} weight(s) have no place in the model the config describes, e.g. '{unexpected[0]}'")
    return "; ".join(parts) or None


def _check_finite_weights(state: dict[str, Any], where: str) -> None:
    """Refuse weights holding NaN or infinite values (a diverged run's).

    Raises:
        CheckpointError: ``where`` (e.g. ``checkpoint 'x.pt'``) and the first such tensors, named.
    """
    bad = sorted(k for k, v in state.items() if torch.is_tensor(v) and v.is_floating_point() and not torch.isfinite(v).all())
    if bad:
        raise CheckpointError(
            f"{where}: its weights hold NaN or infinite values ({', '.join(bad[:5])}"
            f"{', ...' if len(bad) > 5 else ''}): it comes from a diverged run; use an earlier checkpoint"
        )


def model_from_checkpoint(
    ckpt: dict[str, Any],
    use_ema: bool = True,
    device: str | torch.device = "cpu",
    *,
    path: str | os.PathLike | None = None,
) -> WaveNet:
    """Build the :class:`WaveNet` a checkpoint describes and load its (EMA) weights.

    Args:
        ckpt: the checkpoint's contents (:func:`load_checkpoint`).
        use_ema: the EMA weights when the checkpoint has them, else the raw ones.
        device: where to put the model.
        path: the file, for messages; default the one :func:`load_checkpoint` read.

    Raises:
        CheckpointError: an invalid ``model_config``, weights that are not a dict of tensors,
            hold NaN/inf, or do not fit the model the config describes; the message names the
            checkpoint and, for a mismatch, the first differing parameter and its shapes.
    """
    path = path if path is not None else getattr(ckpt, "path", None)
    where = f"checkpoint '{path}'" if path is not None else "the checkpoint"
    raw = ckpt.get("model_config")
    try:
        if not isinstance(raw, dict):
            raise TypeError(f"it is a {type(raw).__name__}, not a dict of model options")
        config = WaveNetConfig.from_dict(raw)
        model = WaveNet(config)
    except (TypeError, ValueError, RuntimeError, KeyError, AttributeError) as exc:
        reason = re.sub(r"\bmodel\.(?=\w)", "", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        raise CheckpointError(
            f"{where} holds an invalid model_config ({reason}): the file was edited by hand or written by "
            "another program; use a checkpoint written by wavedil train"
        ) from None
    which = "ema" if use_ema and ckpt.get("ema") else "model"
    state = ckpt.get(which)
    if not isinstance(state, dict):
        raise CheckpointError(
            f"{where}: its '{which}' weights are a {type(state).__name__}, not a dict of tensors: the file is "
            "damaged or not a wavedil checkpoint; use another checkpoint of the run"
        )
    _check_finite_weights(state, where)
    mismatch = _state_mismatch(model.state_dict(), state)
    if mismatch is None:
        try:
            model.load_state_dict(state)
        except (RuntimeError, TypeError, ValueError) as exc:  # a case _state_mismatch does not know
            lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
            mismatch = " ".join(lines[:2])[:300] or type(exc).__name__
    if mismatch is not None:
        raise CheckpointError(
            f"{where}: its model_config and its weights disagree ({mismatch}): the file was edited or put "
            "together from different runs; use a checkpoint written by wavedil train"
        )
    return model.to(device).eval()
