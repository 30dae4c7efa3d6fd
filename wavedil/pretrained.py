"""Pretrained models that ship in the repository: find, verify, load, and export them.

A shipped model is a folder ``pretrained/<name>/`` of the data folder (``data/`` of the
checkout, or ``$WAVEDIL_DATA``, as :func:`wavedil.config.bundled_data` finds it)::

    data/pretrained/<name>/
        model.pt        a wavedil checkpoint (format 1) holding only what inference needs: the EMA
                        weights as ``model`` (with the vocoder's mel normalisation buffers), the
                        ``model_config``, ``sample_rate``, the training ``config`` (its data split
                        for ``wavedil eval --split valid``), ``step`` and ``elapsed_seconds``
        card.json       the machine-readable card: name, kind, corpus and licence, recipe and the
                        commands that regenerate the file, steps, wall time, machine, held-out
                        figures, dtype, parameters, ``model_config`` and the sha256 of model.pt
        MODEL_CARD.md   the same for people

    list_pretrained()                        -> [PretrainedInfo, ...]
    load_pretrained("speech8k")              -> WaveNet (float32, eval mode)
    open_model("pretrained:speech8k")        -> ModelSource (what the CLI's commands load)
    export_pretrained(run_dir, "speech8k")   -> PretrainedInfo (writes the three files)

``model.pt`` loads with ``torch.load(..., weights_only=True)`` (through
:func:`wavedil.checkpoint.load_checkpoint`) only after its sha256 matched the card, and its
``model_config`` must equal the card's. User errors raise ``ValueError`` naming the values.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import platform
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from ._io import atomic_open
from .checkpoint import CHECKPOINT_FORMAT, CheckpointError, load_checkpoint, model_from_checkpoint, open_checkpoint
from .model import WaveNet

__all__ = [
    "CARD_FORMAT",
    "CARD_JSON",
    "CARD_MD",
    "DTYPES",
    "MODEL_FILE",
    "PRETRAINED_PREFIX",
    "ModelSource",
    "PretrainedInfo",
    "export_pretrained",
    "file_sha256",
    "heldout_from_eval",
    "list_pretrained",
    "load_pretrained",
    "machine_description",
    "model_kind",
    "models_table",
    "open_model",
    "open_pretrained",
    "pretrained_dir",
    "pretrained_name",
    "sampling_temperature",
    "pretrained_info",
]

log = logging.getLogger(__name__)

#: File names inside ``pretrained/<name>/``.
MODEL_FILE, CARD_JSON, CARD_MD = "model.pt", "card.json", "MODEL_CARD.md"
#: Version of the card.json layout written by :func:`export_pretrained`.
CARD_FORMAT = 1
#: Storage types of the weights in model.pt (they load back as float32 either way).
DTYPES = ("float32", "bfloat16")
#: ``pretrained:NAME`` names a shipped model wherever a checkpoint path is accepted.
PRETRAINED_PREFIX = "pretrained:"

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
# CPU flags worth recording for speed figures (what the fast back-end and torch dispatch on).
_CPU_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8")
_LICENCE_NOTE = (
    "The training audio is licensed {licence}. Whether trained weights are a work adapted from their "
    "training data is unsettled; as a conservative reading these weights are treated as one and are "
    "shipped under {licence} too, with the corpus's attribution: reuse them (and audio made with them, "
    "where it reproduces the voice) with that attribution and under the same licence."
)


# ----------------------------------------------------------------------------- where models live


def pretrained_dir() -> Path | None:
    """The folder searched for ``<name>/model.pt``, or None when there is none.

    ``pretrained`` of the data folder, found as :func:`wavedil.config.bundled_data` finds bundled
    data: ``$WAVEDIL_DATA/pretrained`` if it exists, else ``data/pretrained`` of the source
    checkout, else of the current folder.
    """
    from .config import bundled_data

    try:
        return Path(bundled_data("pretrained"))
    except ValueError:
        return None


def _checked_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(
            f"pretrained model name must be 1-64 lower-case letters, digits, '.', '_' or '-' (starting with a "
            f"letter or digit), got {name!r}"
        )
    return name


def model_kind(model_config: Mapping[str, Any]) -> str:
    """``vocoder`` (mel-conditioned), ``speaker-conditioned`` or ``unconditional``."""
    if model_config.get("mel"):
        return "vocoder"
    return "speaker-conditioned" if model_config.get("global_cond_classes") else "unconditional"


@dataclass(frozen=True)
class PretrainedInfo:
    """A shipped model as its card describes it (nothing is loaded or verified yet).

    Attributes:
        name: the name to load it by (its folder's name).
        folder: ``pretrained/<name>/``.
        kind: ``vocoder``, ``unconditional`` or ``speaker-conditioned`` (:func:`model_kind`).
        sample_rate: Hz of the audio it reads and writes.
        parameters: number of weights.
        dtype: storage type of the weights in the file (``float32`` or ``bfloat16``).
        sha256: hex digest of ``model.pt`` the card records.
        description: one line.
        heldout: held-out figures (e.g. ``bits_per_sample``, ``log_mel_distance``); may be empty.
        card: the whole card.json.
    """

    name: str
    folder: Path
    kind: str
    sample_rate: int
    parameters: int
    dtype: str
    sha256: str
    description: str = ""
    heldout: dict[str, Any] = field(default_factory=dict)
    card: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def model_file(self) -> Path:
        return self.folder / MODEL_FILE

    @property
    def temperature(self) -> float:
        """The sampling temperature ``generate``, ``vocode`` and ``eval`` use with this model when
        none is given: the card's ``temperature`` (chosen by measurement, see the card), else 1.0."""
        return float(self.card.get("temperature", 1.0))

    @classmethod
    def from_folder(cls, folder: str | os.PathLike) -> "PretrainedInfo":
        """Read ``folder/card.json``.

        Raises:
            ValueError: no card, unreadable JSON, or a required field missing / of the wrong type.
        """
        folder = Path(folder)
        path = folder / CARD_JSON
        try:
            card = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ValueError(f"pretrained model folder '{folder}' has no {CARD_JSON}") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"cannot read the model card '{path}': {exc}") from None
        if not isinstance(card, dict):
            raise ValueError(f"the model card '{path}' must hold a JSON object, got {type(card).__name__}")
        need = {"name": str, "sha256": str, "sample_rate": int, "parameters": int, "dtype": str, "model_config": dict}
        bad = [f"{k} ({t.__name__})" for k, t in need.items() if not isinstance(card.get(k), t) or isinstance(card.get(k), bool)]
        if bad:
            raise ValueError(f"the model card '{path}' lacks or mistypes {', '.join(bad)}")
        t = card.get("temperature", 1.0)
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 <= t < float("inf"):
            raise ValueError(f"the model card '{path}' has temperature {t!r}; it must be a number >= 0")
        if card["name"] != folder.name:
            raise ValueError(f"the model card '{path}' names the model {card['name']!r}, but its folder is {folder.name!r}")
        return cls(
            name=card["name"], folder=folder, kind=card.get("kind") or model_kind(card["model_config"]),
            sample_rate=card["sample_rate"], parameters=card["parameters"], dtype=card["dtype"],
            sha256=card["sha256"].lower(), description=str(card.get("description", "")),
            heldout=dict(card.get("heldout") or {}), card=card,
        )  # fmt: skip


def _model_folders() -> dict[str, Path]:
    """``name -> folder`` of every folder of :func:`pretrained_dir` holding a card.json."""
    root = pretrained_dir()
    if root is None:
        return {}
    return {p.name: p for p in sorted(root.iterdir()) if p.is_dir() and (p / CARD_JSON).is_file()}


def list_pretrained() -> list[PretrainedInfo]:
    """The models that ship, sorted by name (cards only: the weights are not read).

    A folder whose card cannot be read is reported with a warning and left out (loading it by
    name gives the full error).
    """
    infos = []
    for name, folder in sorted(_model_folders().items()):
        try:
            infos.append(PretrainedInfo.from_folder(folder))
        except ValueError as exc:
            log.warning("leaving out pretrained model %r: %s", name, exc)
    return infos


def _figures(heldout: Mapping[str, Any]) -> str:
    """The card's held-out figures in a few words."""
    parts = []
    if "bits_per_sample" in heldout:
        bz2 = f" (bz2 {heldout['bz2_bits_per_sample']:.2f})" if "bz2_bits_per_sample" in heldout else ""
        parts.append(f"{heldout['bits_per_sample']:.2f} bits/sample{bz2}")
    if "log_mel_distance" in heldout:
        floor = f" (codec floor {heldout['log_mel_codec_floor']:.2f})" if "log_mel_codec_floor" in heldout else ""
        parts.append(f"log-mel L1 {heldout['log_mel_distance']:.2f}{floor}")
    return ", ".join(parts) or "not measured"


def models_table(infos: Sequence[PretrainedInfo] | None = None) -> str:
    """What ships, as ``wavedil models`` prints it: name, kind, rate, parameters, held-out figures.

    Args:
        infos: the models to list; None: :func:`list_pretrained`.
    """
    infos = list_pretrained() if infos is None else list(infos)
    if not infos:
        root = pretrained_dir()
        where = f"looked in '{root}'" if root else "no pretrained/ folder in $WAVEDIL_DATA or data/"
        return f"no pretrained models ship in this installation ({where})"
    rows = [("name", "kind", "rate", "parameters", "held-out")]
    rows += [(i.name, i.kind, f"{i.sample_rate} Hz", f"{i.parameters:,}", _figures(i.heldout)) for i in infos]
    widths = [max(len(r[k]) for r in rows) for k in range(4)]
    lines = [
        f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]:>{widths[3]}}  {r[4]}" for r in rows
    ]
    lines.append("use one with --model NAME (wavedil generate / vocode / info / eval) or wavedil.load_pretrained(NAME)")
    return "\n".join(lines)


def pretrained_info(name: str) -> PretrainedInfo:
    """The card of the shipped model ``name``.

    Raises:
        ValueError: no model of that name; the message lists the valid names (or says that none
            ship, and where it looked).
    """
    folders = _model_folders()
    if name not in folders:
        root = pretrained_dir()
        where = f"in '{root}'" if root is not None else "for a pretrained/ folder in $WAVEDIL_DATA, the checkout and ."
        if not folders:
            raise ValueError(
                f"unknown pretrained model {name!r}: no pretrained models ship in this installation (looked {where}; "
                "set WAVEDIL_DATA to a folder holding pretrained/<name>/ or export one with recipes/pretrained/export.py)"
            )
        raise ValueError(f"unknown pretrained model {name!r}; the models that ship are: {', '.join(sorted(folders))}")
    return PretrainedInfo.from_folder(folders[name])


# ----------------------------------------------------------------------------- verify and load


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 digest of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def open_pretrained(name: str, map_location: str | torch.device = "cpu") -> tuple[PretrainedInfo, dict[str, Any]]:
    """The card and the verified contents of ``model.pt`` of the shipped model ``name``.

    The file's sha256 is checked against the card before it is unpickled (with
    ``weights_only=True``), and its ``model_config`` against the card's.

    Raises:
        ValueError: unknown name (valid names listed), missing file, a sha256 that differs from
            the card (both digests and the file named), a file that is not a wavedil checkpoint,
            or a ``model_config`` that differs from the card's.
    """
    info = pretrained_info(str(name))
    path = info.model_file
    if not path.is_file():
        raise ValueError(f"pretrained model {name!r}: its weights '{path}' are missing (the card is there)")
    digest = file_sha256(path)
    if digest != info.sha256:
        raise ValueError(
            f"pretrained model {name!r}: '{path}' has sha256 {digest}, but its card '{info.folder / CARD_JSON}' "
            f"says {info.sha256}: the file is damaged or was replaced; restore it (e.g. git checkout -- '{path}') "
            "or export it again"
        )
    ckpt = load_checkpoint(path, map_location=map_location)
    if ckpt["model_config"] != info.card["model_config"]:
        diff = sorted(
            k for k in set(ckpt["model_config"]) | set(info.card["model_config"])
            if ckpt["model_config"].get(k) != info.card["model_config"].get(k)
        )  # fmt: skip
        raise ValueError(f"pretrained model {name!r}: the model_config in '{path}' differs from its card's in {diff}")
    if int(ckpt.get("sample_rate", info.sample_rate)) != info.sample_rate:
        raise ValueError(
            f"pretrained model {name!r}: '{path}' is at {ckpt.get('sample_rate')} Hz but its card says {info.sample_rate} Hz"
        )
    return info, ckpt


def load_pretrained(name: str, device: str | torch.device | None = None) -> WaveNet:
    """The shipped model ``name`` as a float32 :class:`WaveNet` in eval mode.

    Args:
        name: a name from :func:`list_pretrained` (``wavedil models`` lists them).
        device: where to put it; None: the CPU.

    Raises:
        ValueError: as :func:`open_pretrained` (unknown name, sha256 mismatch, ...).

    >>> model = load_pretrained("speech8k")  # doctest: +SKIP
    >>> model.config.output, model.receptive_field  # doctest: +SKIP
    ('mulaw', 511)
    """
    if device is not None:
        from .backends import resolve_device  # the one check of a device name (cpu / cuda / cuda:N, and that it exists)

        device = resolve_device(device, "device")
    _, ckpt = open_pretrained(name)
    return model_from_checkpoint(ckpt, device=device or "cpu")


@dataclass
class ModelSource:
    """A loaded checkpoint and where it came from (:func:`open_model`).

    Attributes:
        label: how to name it in messages: the checkpoint path, or ``pretrained model 'NAME'``.
        path: the ``.pt`` file read.
        checkpoint: its contents (a dict as :func:`wavedil.checkpoint.load_checkpoint` returns).
        pretrained: the card, when it is a shipped model; else None.
    """

    label: str
    path: Path
    checkpoint: dict[str, Any]
    pretrained: PretrainedInfo | None = None

    @property
    def sample_rate(self) -> int:
        return int(self.checkpoint.get("sample_rate", 16000))


def sampling_temperature(source: ModelSource, temperature: float | None) -> float:
    """``temperature`` when given; else the bundled model's card value
    (:attr:`PretrainedInfo.temperature`), or 1.0 for a checkpoint."""
    if temperature is not None:
        return float(temperature)
    return source.pretrained.temperature if source.pretrained is not None else 1.0


def pretrained_name(target: str | os.PathLike) -> str | None:
    """The NAME of ``pretrained:NAME``, or None when ``target`` is a path (an existing path always is)."""
    text = str(target)
    if not text.startswith(PRETRAINED_PREFIX) or Path(text).exists():
        return None
    return text[len(PRETRAINED_PREFIX) :]


def open_model(target: str | os.PathLike) -> ModelSource:
    """What the synthesis, evaluation and description commands load: one resolver for all.

    ``target`` is a ``step_*.pt`` file, a run folder (its newest good checkpoint,
    :func:`wavedil.checkpoint.open_checkpoint`, unchanged), or ``pretrained:NAME`` for a shipped
    model (:func:`open_pretrained`: sha256 and config verified).

    Raises:
        ValueError: as :func:`~wavedil.checkpoint.open_checkpoint` or :func:`open_pretrained`.
    """
    if not isinstance(target, (str, os.PathLike)):
        raise ValueError(
            f"the model to open must be a checkpoint path, a run folder or 'pretrained:NAME', got {type(target).__name__}"
        )
    name = pretrained_name(target)
    if name is None:
        path, ckpt = open_checkpoint(target)
        return ModelSource(str(target), path, ckpt)
    info, ckpt = open_pretrained(name)
    return ModelSource(f"pretrained model '{info.name}'", info.model_file, ckpt, info)


# ----------------------------------------------------------------------------- export


def machine_description(threads: int | None = None) -> dict[str, Any]:
    """This machine as a model card records it: CPU model, cores, relevant CPU flags, versions."""
    cpu, flags = "", []
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: the platform module's name, no flags
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and not cpu:
            cpu = value.strip()
        elif key.strip() == "flags" and not flags:
            have = set(value.split())
            flags = [f for f in _CPU_FLAGS if f in have]
    cpu = cpu or platform.processor() or platform.machine()
    out: dict[str, Any] = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "cpu_flags": flags,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    if threads is not None:
        out["threads"] = threads
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(0)
    return out


def heldout_from_eval(figures: Mapping[str, Any]) -> dict[str, Any]:
    """Card figures from ``wavedil eval --json`` output (:meth:`wavedil.evaluate.FileEvaluation.to_dict`).

    Keys: ``bits_per_sample``, ``bz2_bits_per_sample``, ``unigram_bits_per_sample``, ``files``,
    ``samples`` and, for a vocoder, ``log_mel_distance``, ``log_mel_codec_floor``,
    ``log_mel_other_file`` and ``log_mel_temperature`` (the re-synthesis's sampling temperature).

    Raises:
        ValueError: ``figures`` lacks ``model_bits_per_sample`` (not eval output).
    """
    if "model_bits_per_sample" not in figures:
        raise ValueError(
            f"not the output of wavedil eval --json: no 'model_bits_per_sample' among {sorted(figures)}"
        )
    out: dict[str, Any] = {
        "bits_per_sample": float(figures["model_bits_per_sample"]),
        "bz2_bits_per_sample": float(figures["bz2_bits_per_sample"]),
        "unigram_bits_per_sample": float(figures["unigram_bits_per_sample"]),
        "files": int(figures["files"]),
        "samples": int(figures["samples"]),
    }
    if figures.get("log_mel_distance") is not None:
        refs = figures.get("log_mel_distance_baselines") or {}
        out["log_mel_distance"] = float(figures["log_mel_distance"])
        if "codec" in refs:
            out["log_mel_codec_floor"] = float(refs["codec"])
        if "other_file" in refs:
            out["log_mel_other_file"] = float(refs["other_file"])
        if figures.get("temperature") is not None:
            out["log_mel_temperature"] = float(figures["temperature"])
    return out


def _weights_for_export(model: WaveNet, dtype: str) -> dict[str, torch.Tensor]:
    """The model's state as fresh contiguous tensors; parameters in ``dtype``, buffers kept float32.

    Buffers (the vocoder's mel mean / std) are few and set the input scale, so they stay exact.
    """
    params = {name for name, _ in model.named_parameters()}
    target = getattr(torch, dtype)
    out = {}
    for key, value in model.state_dict().items():
        v = value.detach().to("cpu")
        if key in params and v.is_floating_point():
            v = v.to(target)
        out[key] = v.clone().contiguous()
    return out


def _code(text: Any) -> str:
    return f"`{text}`" if text else "not recorded"


def _hours(seconds: Any) -> str:
    return f"{seconds / 3600:.2f} h" if isinstance(seconds, (int, float)) else "wall time not recorded"


def _earlier_lines(card: Mapping[str, Any]) -> list[str]:
    """MODEL_CARD.md lines on what the run went on from (``initialised_from``), oldest last."""
    lines, entry, depth = [], card.get("initialised_from"), 0
    while isinstance(entry, Mapping) and depth < 8:
        machine = entry.get("machine") or {}
        what = (f"{entry['steps']:,} steps, {_hours(entry.get('wall_time_seconds'))}" if isinstance(entry.get("steps"), int)
                else str(entry.get("note", "steps not recorded")))  # fmt: skip
        if machine.get("cpu"):
            what += f", {machine['cpu']}" + (f" ({machine['threads']} thread(s))" if machine.get("threads") else "")
        if entry.get("precision"):
            what += f", precision {entry['precision']}"
        lead = "- These steps went on from" if depth == 0 else "  - which went on from"
        lines.append(f"{lead} {_code(entry.get('source'))} (`trainer.init_from`; its weights, a fresh optimiser and "
                     f"schedule): {what}" + (f"; trained with {_code(entry['train_command'])}" if entry.get("train_command") else ""))
        entry, depth = entry.get("initialised_from"), depth + 1
    if "total_steps" in card:
        lines.append(f"- In all: {card['total_steps']:,} steps, {_hours(card.get('total_wall_time_seconds'))}")
    return lines


def _card_markdown(card: Mapping[str, Any]) -> str:
    """MODEL_CARD.md from card.json: the same facts, for people."""
    corpus = card.get("corpus") or {}
    machine = card.get("machine") or {}
    heldout = card.get("heldout") or {}
    wall = card.get("wall_time_seconds")
    wall_text = f"{wall / 3600:.2f} h ({wall:,.0f} s)" if isinstance(wall, (int, float)) else "not recorded"
    lines = [
        f"# {card['name']}: {card.get('description') or card['kind']}",
        "",
        f"A {card['kind']} WaveNet at {card['sample_rate']} Hz, {card['parameters']:,} parameters, weights stored as "
        f"{card['dtype']} (EMA of training; they load as float32). Use it with `--model {card['name']}` "
        f"(`wavedil {'vocode' if card['kind'] == 'vocoder' else 'generate'}`, `info`, `eval`) or "
        f"`wavedil.load_pretrained({card['name']!r})`.",
        "",
        "## Corpus and licence",
        "",
        f"- Corpus: {corpus.get('name', 'not recorded')}" + (f" ({corpus['source']})" if corpus.get("source") else ""),
        f"- Corpus licence: {corpus.get('licence', 'not recorded')}"
        + (f"; attribution: {corpus['attribution']}" if corpus.get("attribution") else ""),
        f"- Licence of these weights: {card.get('licence', 'not recorded')}",
        "",
        str(card.get("licence_note", "")),
        "",
        "## How it was made",
        "",
        f"- Recipe: {_code(card.get('recipe'))}",
        f"- Training: {_code(card.get('train_command'))}",
        f"- Export (regenerates `{MODEL_FILE}` from the run): {_code(card.get('export_command'))}",
        f"- Steps: {card.get('steps', 'not recorded')}; wall time: {wall_text}"
        + (f"; precision {card['precision']}" if card.get("precision") else ""),
        *_earlier_lines(card),
        f"- Machine: {machine.get('cpu', 'not recorded')}, {machine.get('cores', '?')} cores"
        + (f", {machine['threads']} training thread(s)" if machine.get("threads") else "")
        + (f", CPU flags {' '.join(machine['cpu_flags'])}" if machine.get("cpu_flags") else "")
        + (f", torch {machine['torch']}" if machine.get("torch") else ""),
        "",
        "## Held-out figures",
        "",
    ]
    if heldout:
        lines += [f"| figure | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in heldout.items()]
    else:
        lines.append("Not measured yet.")
    for cmd in card.get("eval_commands") or ():
        lines.append(f"\n    {cmd}")
    if "temperature" in card:
        lines += [
            "",
            "## Sampling",
            "",
            f"`generate`, `vocode` and `eval` sample this model at temperature {card['temperature']:g} unless given "
            f"`--temperature`. {card.get('temperature_note', '')}".rstrip(),
        ]
    lines += [
        "",
        "## File",
        "",
        f"- `{MODEL_FILE}`: {card.get('bytes', '?'):,} bytes, sha256 `{card['sha256']}`"
        if isinstance(card.get("bytes"), int)
        else f"- `{MODEL_FILE}`: sha256 `{card['sha256']}`",
        f"- Loads with `torch.load(..., weights_only=True)`; wavedil checks the sha256 above before loading.",
        "",
    ]
    return "\n".join(lines)


def training_lineage(init_from: str | os.PathLike, source: ModelSource | None = None, _depth: int = 0) -> dict[str, Any]:
    """What a run started with ``trainer.init_from=init_from`` went on from, for checkpoints and cards.

    Returns ``{"source": init_from, "steps", "wall_time_seconds", ...}``: for ``pretrained:NAME``
    the shipped model's card (its totals when it was itself continued, its machine, precision,
    training command and sha256); for a checkpoint or run folder its step and elapsed time, plus
    what *that* run went on from (``initialised_from``, with the totals). The trainer stores this
    in every checkpoint of the run, so it holds even after ``NAME`` is replaced by a newer export.
    ``source``: ``init_from`` already opened (:func:`open_model`); else it is opened here, and a
    source that cannot be read any more gets a ``note`` instead of figures (and a warning).
    """
    entry: dict[str, Any] = {"source": str(init_from)}
    try:
        source = source if source is not None else open_model(init_from)
    except ValueError as exc:  # CheckpointError included
        log.warning("trainer.init_from=%s cannot be read any more (%s): the card records the source only", init_from, exc)
        entry["note"] = f"not readable at export: {exc}"
        return entry
    if source.pretrained is not None:
        card = source.pretrained.card
        entry.update(
            steps=card.get("total_steps", card.get("steps")),
            wall_time_seconds=card.get("total_wall_time_seconds", card.get("wall_time_seconds")),
            machine=card.get("machine"), precision=card.get("precision"),
            train_command=card.get("train_command"), sha256=source.pretrained.sha256,
        )  # fmt: skip
        if isinstance(card.get("initialised_from"), Mapping):
            entry["initialised_from"] = dict(card["initialised_from"])
        return {k: v for k, v in entry.items() if v is not None}
    ckpt = source.checkpoint
    entry.update(checkpoint=str(source.path), steps=int(ckpt.get("step", 0)),
                 wall_time_seconds=float(ckpt.get("elapsed_seconds", 0.0)))  # fmt: skip
    if ckpt.get("precision"):
        entry["precision"] = str(ckpt["precision"])
    before = ckpt.get("initialised_from")
    if not isinstance(before, Mapping):  # a checkpoint from before the trainer stored it
        inner = _trainer_setting(ckpt.get("config"), "init_from")
        before = _lineage_from_config(inner, source.path, entry["steps"], _depth + 1) if _depth < 8 else None
    entry.update(_continued(before, entry["steps"], entry["wall_time_seconds"]))
    if "total_steps" in entry:  # what this source's training came to, in all
        entry["steps"], entry["wall_time_seconds"] = entry.pop("total_steps"), entry.pop("total_wall_time_seconds")
    return entry


def _lineage_from_config(
    init_from: Any, checkpoint: str | os.PathLike, steps: int, depth: int = 0
) -> dict[str, Any] | None:
    """What ``checkpoint`` (at ``steps``) went on from when it did not store it: its config's
    ``trainer.init_from`` resolved now (:func:`training_lineage`), or None without one. When that
    name resolves to this very checkpoint's export (exported as ``pretrained:NAME``, then exported
    again), the export's card says what the checkpoint went on from, not the export itself."""
    if not init_from:
        return None
    lineage = training_lineage(init_from, _depth=depth)
    if _exported_from(init_from, checkpoint, steps):
        return lineage.get("initialised_from")
    return lineage


def _exported_from(name: Any, checkpoint: str | os.PathLike, steps: int) -> bool:
    """Whether ``name`` (a ``trainer.init_from`` value) is a shipped model exported from
    ``checkpoint`` (at ``steps``): its card names that file (the same file once resolved, relative
    paths from here) and its step."""
    if not str(name).startswith(PRETRAINED_PREFIX):
        return False
    try:
        card = open_model(name).pretrained.card
    except (ValueError, AttributeError):
        return False
    exported = card.get("source_checkpoint")
    if not exported or card.get("steps") != steps:
        return False
    try:
        return Path(exported).resolve() == Path(checkpoint).resolve()
    except OSError:
        return False


def _continued(earlier: Mapping[str, Any] | None, steps: int, seconds: float) -> dict[str, Any]:
    """The card fields of a model whose run went on from ``earlier`` (:func:`training_lineage`):
    it, and the totals of steps and wall time when both are known."""
    if not earlier:
        return {}
    out: dict[str, Any] = {"initialised_from": dict(earlier)}
    if isinstance(earlier.get("steps"), int) and isinstance(earlier.get("wall_time_seconds"), (int, float)):
        out["total_steps"] = earlier["steps"] + steps
        out["total_wall_time_seconds"] = earlier["wall_time_seconds"] + seconds
    return out


def _trainer_setting(config: Any, key: str) -> Any:
    """``config["trainer"][key]`` of a checkpoint's saved config, or None."""
    trainer = config.get("trainer") if isinstance(config, Mapping) else None
    return trainer.get(key) if isinstance(trainer, Mapping) else None


def export_pretrained(
    checkpoint_or_run_dir: str | os.PathLike,
    name: str,
    out_dir: str | os.PathLike | None = None,
    dtype: str = "float32",
    *,
    description: str = "",
    corpus: Mapping[str, Any] | None = None,
    licence: str | None = None,
    licence_note: str | None = None,
    recipe: str | None = None,
    train_command: str | None = None,
    export_command: str | None = None,
    eval_commands: Sequence[str] = (),
    heldout: Mapping[str, Any] | None = None,
    machine: Mapping[str, Any] | None = None,
    temperature: float | None = None,
    temperature_note: str = "",
    extra: Mapping[str, Any] | None = None,
) -> PretrainedInfo:
    """Write ``out_dir/<name>/`` (model.pt, card.json, MODEL_CARD.md) from a training checkpoint.

    ``model.pt`` holds the EMA weights (the raw ones, with a warning, if the run kept no EMA) as
    the checkpoint's ``model``, its ``model_config``, ``sample_rate``, training ``config``,
    ``step`` and ``elapsed_seconds``; no optimizer or RNG state. Each file is written atomically.
    The bytes depend only on the weights and these fields, so exporting the same checkpoint
    again gives the same sha256 (held-out figures can be added by a second export). An exported
    ``model.pt`` is itself a valid source: re-exporting it (its training checkpoint gone) writes
    the same bytes and keeps the ``source_checkpoint`` its card recorded.

    Args:
        checkpoint_or_run_dir: a ``step_*.pt`` file, a run folder (its newest good checkpoint) or
            an exported ``model.pt``.
        name: the name to load it by (``[a-z0-9][a-z0-9._-]*``).
        out_dir: the ``pretrained/`` folder to write into; None: the first of
            :func:`pretrained_dir` (``data/pretrained`` of the checkout).
        dtype: storage of the weights: ``float32`` or ``bfloat16`` (half the size; parameters
            only, buffers stay float32; loads back as float32).
        description: one line for the card.
        corpus: ``name``, ``source``, ``licence``, ``attribution`` of the training audio.
        licence: of the weights; default the corpus's licence.
        licence_note: what the corpus licence means for the weights; default the conservative
            reading that they are a work adapted from the corpus, under its licence, with its
            attribution.
        recipe, train_command, export_command, eval_commands: how the file is regenerated and
            how its figures are measured.
        heldout: held-out figures, e.g. ``{"bits_per_sample": 3.7, "bz2_bits_per_sample": 5.1}``.
        machine: the training machine; default :func:`machine_description` of this one (with the
            run's ``trainer.threads``).
        temperature: the sampling temperature the commands use with this model by default
            (:attr:`PretrainedInfo.temperature`); None: 1.0, not written to the card.
        temperature_note: how ``temperature`` was chosen, for the card.
        extra: more card fields (they may not replace the ones above).

    Returns:
        The :class:`PretrainedInfo` of the written model.

    Raises:
        ValueError: a bad ``name`` / ``dtype``, an unusable checkpoint (non-finite weights,
            config mismatch), no ``out_dir`` found, ``extra`` replacing a computed field, or a card
            field that is not a JSON value; nothing is written then.
    """
    _checked_name(name)
    if temperature is not None and not 0 <= temperature < float("inf"):
        raise ValueError(f"temperature must be a number >= 0, got {temperature}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
    src_path, ckpt = open_checkpoint(checkpoint_or_run_dir)
    shipped = ckpt.get("pretrained") if isinstance(ckpt.get("pretrained"), dict) else None
    source_checkpoint = str(src_path)
    config = ckpt.get("config") or {}
    # what the run went on from (trainer.init_from): as its checkpoints recorded it, else resolved now,
    # before anything is written (a run continued from `pretrained:NAME` may be exported as NAME)
    earlier = ckpt.get("initialised_from") if isinstance(ckpt.get("initialised_from"), Mapping) else None
    init_from = _trainer_setting(config, "init_from")
    if earlier is None and shipped is None:
        earlier = _lineage_from_config(init_from, src_path, int(ckpt.get("step", 0)))
    if shipped is not None:  # an exported model.pt: its weights are already the chosen ones
        has_ema = shipped.get("weights") == "ema"
        try:  # keep the provenance its card recorded
            old_card = json.loads((src_path.parent / CARD_JSON).read_text(encoding="utf-8"))
            source_checkpoint = old_card["source_checkpoint"]
            earlier = old_card.get("initialised_from") or None
        except (OSError, ValueError, KeyError, TypeError):
            pass
    else:
        has_ema = bool(ckpt.get("ema"))
    if not has_ema:
        log.warning("'%s' holds no EMA weights (trainer.ema_decay=0?): exporting the raw weights", src_path)
    model = model_from_checkpoint(ckpt, use_ema=True)  # checks finiteness and config
    if out_dir is None:
        out_dir = pretrained_dir()
        if out_dir is None:
            raise ValueError("no pretrained/ folder found to export into: pass out_dir (e.g. data/pretrained)")
    folder = Path(out_dir) / name
    mcfg = model.config.to_dict()
    obj = {
        "format": CHECKPOINT_FORMAT,
        "model": _weights_for_export(model, dtype),
        "model_config": mcfg,
        "sample_rate": int(ckpt.get("sample_rate", 16000)),
        "step": int(ckpt.get("step", 0)),
        "elapsed_seconds": float(ckpt.get("elapsed_seconds", 0.0)),
        "config": config,
        "pretrained": {"name": name, "dtype": dtype, "weights": "ema" if has_ema else "raw"},
    }
    path = folder / MODEL_FILE
    buf = io.BytesIO()  # the bytes first: nothing is written until the card is known to be writable
    torch.save(obj, buf)
    payload = buf.getvalue()
    corpus = dict(corpus or {})
    if licence_note is None:
        licence_note = (
            _LICENCE_NOTE.format(licence=corpus["licence"])
            if corpus.get("licence")
            else "The licence of the training audio was not recorded: check it before sharing these weights."
        )
    threads = _trainer_setting(config, "threads")
    precision = _trainer_setting(config, "precision")
    card: dict[str, Any] = {
        "card_format": CARD_FORMAT,
        "name": name,
        "description": description,
        "kind": model_kind(mcfg),
        "sample_rate": obj["sample_rate"],
        "parameters": model.num_parameters(),
        "dtype": dtype,
        "weights": obj["pretrained"]["weights"],
        "file": MODEL_FILE,
        "bytes": len(payload),
        "sha256": hashlib.sha256(payload).hexdigest(),
        "model_config": mcfg,
        "receptive_field": model.receptive_field,
        "corpus": corpus,
        "licence": licence or corpus.get("licence") or "not recorded",
        "licence_note": licence_note,
        "recipe": recipe,
        "train_command": train_command,
        "export_command": export_command,
        "eval_commands": list(eval_commands),
        "steps": obj["step"],
        "wall_time_seconds": obj["elapsed_seconds"],
        **({"precision": str(precision)} if precision else {}),
        **_continued(earlier, obj["step"], obj["elapsed_seconds"]),
        "machine": dict(machine) if machine is not None else machine_description(threads),
        "heldout": dict(heldout or {}),
        **({"temperature": float(temperature), "temperature_note": temperature_note} if temperature is not None else {}),
        "source_checkpoint": source_checkpoint,
        "exported": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    clash = sorted(set(extra or {}) & set(card))
    if clash:
        raise ValueError(f"extra card fields {clash} would replace computed ones; pass them as arguments instead")
    card.update(extra or {})
    try:
        card_json = json.dumps(card, indent=2) + "\n"
    except (TypeError, ValueError) as exc:  # an extra (or heldout / corpus) value that JSON cannot hold
        raise ValueError(f"the model card cannot be written as JSON ({exc}): give card fields as JSON values") from None
    card_md = _card_markdown(card)
    # model.pt and its card together, only once both are made: a refused export leaves an earlier
    # export of this name whole (its card's sha256 still that of its model.pt)
    with atomic_open(path) as fh:
        fh.write(payload)
    with atomic_open(folder / CARD_JSON) as fh:
        fh.write(card_json.encode("utf-8"))
    with atomic_open(folder / CARD_MD) as fh:
        fh.write(card_md.encode("utf-8"))
    return PretrainedInfo.from_folder(folder)
