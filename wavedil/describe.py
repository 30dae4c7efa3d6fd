"""What a model is: parameters, receptive field, dilations, channels and conditioning.

    describe_model("ref30", sample_rate=16000).text()   # a model config name, a YAML file,
    describe_model("run/checkpoints/step_00001000.pt")  # a checkpoint or a run folder

``wavedil info`` prints :meth:`ModelDescription.text`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .layers import receptive_field_coverage
from .model import WaveNet

__all__ = ["ModelDescription", "describe_model"]


@dataclass
class ModelDescription:
    """A model and where it came from.

    Attributes:
        model: the :class:`WaveNet` (random weights when built from a config).
        source: ``"checkpoint at step N"``, ``"model config <path>"``, or for a bundled model
            its name, description, training steps, corpus and licence (three lines).
        sample_rate: the rate the receptive field is given at (Hz).
    """

    model: WaveNet
    source: str
    sample_rate: int

    @property
    def parameters(self) -> int:
        return self.model.num_parameters()

    @property
    def receptive_field(self) -> int:
        """In samples."""
        return self.model.receptive_field

    @property
    def receptive_field_ms(self) -> float:
        return 1000 * self.receptive_field / self.sample_rate

    @property
    def dilations(self) -> list[int]:
        return list(self.model.stack.dilations)

    def text(self) -> str:
        """The description as ``wavedil info`` prints it, one property a line."""
        model, cfg = self.model, self.model.config
        d = self.dilations
        return (
            f"{self.source}\n"
            f"parameters        {self.parameters:,}\n"
            f"receptive field   {self.receptive_field} samples = {self.receptive_field_ms:.1f} ms at {self.sample_rate} Hz\n"
            f"layers            {len(d)} (kernel {cfg.kernel_size}, coverage {receptive_field_coverage(cfg.kernel_size, d):.0%})\n"
            f"dilations         {', '.join(map(str, d))}\n"
            f"channels          residual {cfg.residual_channels}, gate {cfg.gate_channels}, skip {cfg.skip_channels}, "
            f"head {cfg.head_channels}, classes {cfg.quantization_channels}\n"
            f"output            {cfg.output} ({model.dist!r}), input encoding {model.encoding}"
            + (f"\nspeakers          {cfg.global_cond_classes}: {', '.join(cfg.speakers or ())}" if model.speaker is not None else "")
            + (f"\nmel conditioning  {model.mel_spec}, {model.mel_context} context frames" if model.upsampler is not None else "")
        )  # fmt: skip


def describe_model(target: str | os.PathLike, sample_rate: int | None = None) -> ModelDescription:
    """Describe a checkpoint (a ``.pt`` file, a file of another name that torch.save wrote, or a run
    folder), a bundled model, a model config or a YAML file.

    Args:
        target: ``step_*.pt`` (or a checkpoint of another name), a run folder, ``pretrained:NAME``
            (a bundled model), a name of ``conf/model/*.yaml`` (``tiny``, ``ref30``, ...) or a model
            YAML file.
        sample_rate: the rate for the receptive field in ms of a config (default 16000); a
            checkpoint's is its own (another is refused).

    Raises:
        ValueError: ``target`` is none of these (the message lists the config names), an unusable
            checkpoint, a YAML file that is not valid YAML of model options (named, with the
            parser's complaint), or ``sample_rate`` is not positive or not a checkpoint's own rate.
    """
    if sample_rate is not None and (isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or sample_rate < 1):
        raise ValueError(f"sample_rate must be a positive integer (Hz), got {sample_rate!r}")
    from .pretrained import open_model, pretrained_name

    if not isinstance(target, (str, os.PathLike)):
        hint = ": for a model in memory, print(model) or use model.num_parameters() and model.receptive_field" if isinstance(target, WaveNet) else ""
        raise ValueError(f"target must be a path or a name (str), got {type(target).__name__}; {_TARGETS}{hint}")
    from .checkpoint import binary_file_kind, model_from_checkpoint

    text = str(target)
    path = Path(text)
    suffix = path.suffix.lower()
    kind = None if suffix in (".yaml", ".yml", ".pt") else binary_file_kind(path)  # .pt: the checkpoint's messages
    if kind:  # binary, but not a checkpoint: not a YAML file either (text is read as one)
        raise ValueError(f"'{path}' holds {kind}; {_TARGETS}")
    # a checkpoint of another name (.pth, .ckpt) too (kind ""): the commands that sample it take any name
    if suffix == ".pt" or path.is_dir() or pretrained_name(text) is not None or kind == "":
        src = open_model(target)
        ckpt = src.checkpoint
        model = model_from_checkpoint(ckpt)
        if sample_rate is not None and sample_rate != src.sample_rate:
            raise ValueError(
                f"--sample-rate {sample_rate}: '{text}' is a model of {src.sample_rate} Hz, and its receptive field is "
                "given at that rate; --sample-rate applies to a model config or YAML only: leave it out"
            )
        sr = src.sample_rate
        source = f"checkpoint at step {ckpt.get('step', '?')}"
        if src.pretrained is not None:
            card = src.pretrained.card
            corpus = (card.get("corpus") or {}).get("name", "an unrecorded corpus")
            steps = f"{ckpt.get('step', '?')} steps"
            if isinstance(card.get("total_steps"), int):  # continued from earlier weights: the checkpoint counts its last stage
                steps = f"{card['total_steps']} steps in all ({ckpt.get('step', '?')} in its last stage)"
            source = (
                f"{src.label}: {card.get('description') or src.pretrained.kind}\n"
                f"trained           {steps} on {corpus}\n"
                f"licence           {card.get('licence', 'not recorded')} (see {src.pretrained.folder / 'MODEL_CARD.md'})"
            )
        return ModelDescription(model, source, sr)
    from .config import CONF_DIR, model_config, model_preset

    if path.is_file():
        options = _load_model_yaml(path)
        try:
            model = WaveNet(model_config(options))
        except ValueError as exc:  # its first line: OmegaConf's errors add full_key / object_type lines
            raise ValueError(f"model config YAML '{text}': {(str(exc).splitlines() or [type(exc).__name__])[0]}") from None
        return ModelDescription(model, f"model config {path}", sample_rate or 16000)
    names = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))
    if text not in names:
        if path.suffix.lower() in (".yaml", ".yml", ".pt") or os.sep in text:
            raise ValueError(f"'{text}' does not exist (or is not a file): check the path")
        raise ValueError(f"'{text}' is neither a checkpoint (.pt), a YAML file nor a model config {names}")
    preset = CONF_DIR / "model" / f"{text}.yaml"
    return ModelDescription(WaveNet(model_preset(text)), f"model config {preset}", sample_rate or 16000)


#: what :func:`describe_model` (``wavedil info``) accepts, for its messages
_TARGETS = ("give a checkpoint (.pt), a run folder, a model config name (tiny, small, base, ref30) or a YAML "
            "file of model options such as conf/model/small.yaml")


def _yaml_problem(exc: BaseException) -> str:
    """What a YAML reader's error says, in one line (with the line and column where the parser has them)."""
    if isinstance(exc, UnicodeDecodeError):
        return f"it is not UTF-8 text: byte 0x{exc.object[exc.start]:02x} at offset {exc.start}"
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or getattr(exc, "context", None)
    if mark is not None and problem:
        return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _load_model_yaml(path: Path, _within: tuple[Path, ...] = ()):
    """The model options of YAML file ``path`` (a ``DictConfig``), or an error naming the file.

    A ``defaults`` list is applied as Hydra applies it in ``conf/model/`` (``small.yaml``:
    ``defaults: [ref30, _self_]``): each entry names a YAML file beside ``path`` or a model
    preset, merged in order, the file's own options at ``_self_`` (else last).

    Raises:
        ValueError: the file is not UTF-8 text, not valid YAML, or not a mapping of options, or
            its defaults list names something else (a training config's groups); the message
            names the file, the problem and what ``info`` accepts.
        OSError: the file cannot be read (its own message names it).
    """
    import yaml
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        loaded = OmegaConf.load(path)
    except OSError as exc:
        if exc.errno is not None:  # unreadable: the system's message names the file
            raise
        problem = _yaml_problem(exc)  # OmegaConf's "Invalid loaded object type": a bare number or the like
    except (yaml.YAMLError, UnicodeDecodeError, OmegaConfBaseException, ValueError, TypeError) as exc:
        problem = _yaml_problem(exc)
    else:
        if isinstance(loaded, DictConfig):
            return _with_defaults(path, loaded, _within)
        problem = "it holds a list, not model options (name: value lines)"  # OmegaConf.load: a DictConfig or a ListConfig
    raise ValueError(f"'{path}' is not a valid model config YAML ({problem}); {_TARGETS}")


def _with_defaults(path: Path, loaded, within: tuple[Path, ...]):
    """``loaded`` (the options of ``path``) merged over what its ``defaults`` list names."""
    from omegaconf import OmegaConf

    from .config import CONF_DIR

    if "defaults" not in loaded:
        return loaded
    entries = loaded.pop("defaults")  # a scalar (defaults: small) or none comes back as it is
    entries = OmegaConf.to_container(entries) if OmegaConf.is_config(entries) else entries
    if not isinstance(entries, list):
        raise ValueError(f"'{path}' is not a valid model config YAML (its defaults is not a list); {_TARGETS}")
    if "_self_" not in entries:
        entries.append("_self_")
    merged = OmegaConf.create({})
    for entry in entries:
        if entry == "_self_":
            merged = OmegaConf.merge(merged, loaded)
            continue
        if not isinstance(entry, str):
            raise ValueError(
                f"'{path}' is not a model config YAML: its defaults list holds {entry!r}, a config group of a "
                f"training config (train.yaml, an experiment); {_TARGETS}"
            )
        beside, preset = path.parent / f"{entry}.yaml", CONF_DIR / "model" / f"{entry}.yaml"
        source = beside if beside.is_file() else preset
        if not source.is_file():
            raise ValueError(
                f"'{path}': its defaults list names {entry!r}, which is neither a YAML file beside it nor a model "
                f"config ({', '.join(sorted(p.stem for p in (CONF_DIR / 'model').glob('*.yaml')))})"
            )
        if source.resolve() in within or source.resolve() == path.resolve():
            raise ValueError(f"'{path}': its defaults list names {entry!r}, which leads back to '{path}'")
        merged = OmegaConf.merge(merged, _load_model_yaml(source, within + (path.resolve(),)))
    return merged
