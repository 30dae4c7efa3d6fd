"""The training loop, as small functions you can read top to bottom.

``train(cfg, run_dir)`` takes a composed config (see ``conf/train.yaml``) and a run folder, and
writes ``checkpoints/step_*.pt``, TensorBoard logs under ``tb/`` and ``train.log``::

    train(cfg, run_dir)
      setup()                     settings, device, precision, data, model, optimiser, resume
      for each batch:
        train_step()              learning rate, loss from the model, backward, clip, step, EMA
        after_step()              log_step(), validate_step(), sample_step(), checkpoint_step()
      save_training_checkpoint()  also on SIGINT/SIGTERM, at the time budget and on a data error

Resuming (``trainer.resume=true`` or a path) restores the model, its EMA, the optimiser, the
step, every random state (torch CPU and CUDA, numpy, python ``random``), the loss scale of
``trainer.precision=16`` and the elapsed training time.

* With a step-based schedule (``trainer.max_time`` null) a resumed run continues *exactly*, bit
  for bit: every batch is a pure function of ``(seed, step)`` (the data set draws segment ``i``
  from ``(seed, epoch, i)`` and step ``s`` uses indices ``s*B .. s*B+B-1``), and the learning
  rate is a pure function of the step.
* With a time budget (``trainer.max_time`` set) the cosine decay follows the fraction of the
  budget used, ``elapsed / max_time``, where ``elapsed`` is the wall time of the training loop
  (steps, validation, sampling, checkpoints; not the start-up) summed over every run that
  continued this one, as stored in each checkpoint. A resumed run continues the same budget and
  schedule from the elapsed time of its checkpoint (the work after that checkpoint was lost and
  is not counted); with a different ``max_time`` the fraction is taken of the new budget. The
  learning rate then depends on how fast each step ran, so such a run is *not* reproducible
  bit for bit, resumed or not. ``trainer.max_steps`` stays a cap on the steps. At the budget
  the run validates, writes a checkpoint and returns; the final validation and checkpoint come
  after the budget and are not part of it.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.data import DataLoader, default_collate

from .causal import receptive_field
from .checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    CheckpointWriteError,
    _check_finite_weights,
    list_checkpoints,
    load_checkpoint,
    newest_good_checkpoint,
    open_checkpoint,
    recorded_sample_rate as _checkpoint_sample_rate,
    save_checkpoint,
    step_from_name,
)
from .config import model_config, to_plain
from .generate import MAX_SAMPLES
from .data import CorpusError, SegmentDataset, load_corpus, speakers_of, split_items
from .distributed import (
    DistInfo,
    any_rank,
    broadcast_object,
    dist_info_from_env,
    gather_objects,
    init_distributed,
    max_over_ranks,
    shutdown,
)
from .model import WaveNet, WaveNetConfig
from .progress import Progress
from .train_config import DataConfig, OptimConfig, TrainerConfig, check_top_level
from .precision import choose_precision, warn_emulated_bf16
from .training_utils import (
    EMA,
    StepBatchSampler,
    TrainingError,
    autocast_for,
    lr_factor,
    memory_limits,
    params_digest,
    resolve_device,
    rng_state,
    saved_tensor_bytes,
    set_rng_state,
)

__all__ = [
    "train",
    "TrainingError",
    "find_resume_checkpoint",
    "build_data",
    "DataBundle",
    "validate",
    "save_training_checkpoint",
    # re-exported from wavedil.training_utils (their home), for existing imports
    "lr_factor",
    "EMA",
    "resolve_device",
    "params_digest",
    "autocast_for",
    "StepBatchSampler",
]

log = logging.getLogger(__name__)

MAX_BAD_STEPS = 5  # consecutive non-finite losses before training stops


# ----------------------------------------------------------------------------- resume lookup


#: The folder name of a run in the default layout, ``outputs/<name>/<date>_<time>`` (``conf/train.yaml``).
_TIMESTAMPED_RUN = re.compile(r"\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2}")


def _check_fresh_folder(run_dir: Path) -> None:
    """Refuse to start a new run in a folder that holds another run's checkpoints: its saves would
    overwrite those of the same steps and its pruning would delete the rest.

    Raises:
        TrainingError: naming the folder, its newest checkpoint and the ways on.
    """
    found = list_checkpoints(run_dir / "checkpoints")
    if found:
        raise TrainingError(
            f"the run folder '{run_dir}' already holds {len(found)} checkpoint(s) of an earlier run (newest "
            f"{found[0].name}): a new run there would overwrite and prune them. Continue that run with "
            "trainer.resume=true, or start this one in a new folder (another hydra.run.dir, or leave it out for a "
            "new timestamped folder), or move those checkpoints away first"
        )


def _check_no_newer_checkpoints(run_dir: Path, resume: tuple[Path, dict], given: Any) -> None:
    """Refuse to resume a checkpoint named by path (``trainer.resume=PATH``) in a run folder that
    holds good checkpoints of later steps: the run would mix two histories there (its pruning keeps
    the newer files and deletes its own, and commands given the run folder, ``trainer.resume=true``
    included, would take the newest, which is not this run's). Later files that do not load are
    no such risk (they are passed over, and overwritten when the run reaches their step).

    Raises:
        TrainingError: naming the checkpoint, the newer files and the ways on.
    """
    step = resume[1]["step"]
    newer = [p for p in list_checkpoints(run_dir / "checkpoints") if (step_from_name(p) or 0) > step]
    for path in newer:
        try:
            load_checkpoint(path)
        except CheckpointError:
            continue
        names = ", ".join(p.name for p in newer[:3]) + (f" and {len(newer) - 3} more" if len(newer) > 3 else "")
        raise TrainingError(
            f"trainer.resume={given} is at step {step} but the run folder '{run_dir}' holds later checkpoints "
            f"({names}): training on from step {step} there would mix two histories (the run folder's newest "
            f"checkpoint, which generate, eval and trainer.resume=true take, would stay {path.name} of the "
            f"other one). Resume the newest (trainer.resume=true), train on from step {step} in a new run folder "
            "(another hydra.run.dir), or move the later checkpoints away first"
        )


def find_resume_checkpoint(resume: Any, run_dir: Path) -> tuple[Path, dict] | None:
    """The checkpoint to resume from, or None to start fresh.

    ``resume``: false; true (the newest good checkpoint of this run folder, else, in the default
    layout ``outputs/<name>/<date>_<time>``, of the newest earlier run of the same name: the
    other timestamped folders beside it; a folder given with ``hydra.run.dir`` or a sweep's job
    folder resumes only itself); or a path to a checkpoint or run folder
    (:func:`wavedil.checkpoint.open_checkpoint`).
    """
    if resume in (False, None, "false", "False", ""):
        return None
    if resume is True or resume in ("true", "True"):
        siblings = []
        if _TIMESTAMPED_RUN.fullmatch(run_dir.name) and run_dir.parent.is_dir():
            siblings = sorted(
                (p for p in run_dir.parent.iterdir() if p.is_dir() and p != run_dir and _TIMESTAMPED_RUN.fullmatch(p.name)),
                reverse=True,
            )
        for folder in [run_dir, *siblings]:
            found = newest_good_checkpoint(folder / "checkpoints")
            if found is not None:
                return found
        unusable = list_checkpoints(run_dir / "checkpoints")
        if unusable:  # a fresh start here would be refused as a new run in a folder of checkpoints
            raise TrainingError(
                f"trainer.resume=true but none of the {len(unusable)} checkpoint(s) in '{run_dir / 'checkpoints'}' "
                f"can be loaded (newest {unusable[0].name}; each is named above with the reason): the run cannot be "
                "continued. Start a new run in a new folder (another hydra.run.dir), or move those files away to "
                "start afresh in this one"
            )
        where = run_dir.parent if siblings else run_dir
        log.warning("trainer.resume=true but no checkpoint found under %s: starting fresh", where)
        return None
    try:
        return open_checkpoint(str(resume))
    except CheckpointError as exc:
        raise TrainingError(f"trainer.resume={resume}: {exc}") from None


# ----------------------------------------------------------------------------- data


@dataclass
class DataBundle:
    """The training set, fixed validation segments and what the model must be told of the data.

    ``valid`` is ``(N, T+1)`` codes; ``valid_cond`` holds their ``speaker (N,)`` and/or
    ``mel (N, n_mels, F)`` when the model is conditioned (else it is empty).
    """

    train: SegmentDataset
    valid: torch.Tensor
    sample_rate: int
    n_train_files: int
    n_valid_files: int
    model_config: WaveNetConfig
    valid_cond: dict


def _split_batch(batch: torch.Tensor | dict) -> tuple[torch.Tensor, dict]:
    """A loader batch -> ``(codes (B, T+1), {"speaker": (B,), "mel": (B, n_mels, F)} as present)``."""
    if isinstance(batch, dict):
        return batch["codes"], {k: batch[k] for k in ("speaker", "mel") if k in batch}
    return batch, {}


def _data_settings(data_cfg: dict | DataConfig) -> DataConfig:
    """The ``data`` group checked (:meth:`DataConfig.from_dict`); a bad one raises :class:`TrainingError`."""
    if isinstance(data_cfg, DataConfig):
        return data_cfg
    try:
        return DataConfig.from_dict(to_plain(data_cfg))
    except ValueError as exc:
        raise TrainingError(str(exc)) from None


def _warn_if_files_are_short(
    data: SegmentDataset, dcfg: DataConfig, hop: int = 1, which: str = "training", receptive_field: int = 1
) -> None:
    """Log a warning when every ``which`` file (``"training"`` or ``"held-out"``) is shorter than
    ``data.segment_length``: each of its segments would then be mostly the silence that pads it
    (the share is estimated from the file lengths), and for the held-out files the validation
    figure would measure mostly padding. A shorter segment is suggested; where that would be
    shorter than the model's ``receptive_field`` too, the warning says so (training would then warn
    about it), and a smaller receptive field is what fits the files."""
    T, lengths = dcfg.segment_length, data.lengths
    longest = max(lengths)
    if longest >= T:
        return
    need = T + 1  # a segment holds T + 1 codes
    padding = 1.0 - sum(n * n for n in lengths) / (data.total_frames * need)  # files drawn by length
    suggestion = (longest - 1) // hop * hop  # whole hops (a vocoder's), one code short of the longest file
    if suggestion < 1:
        hops = f" (a segment is a whole number of mel hops of {hop} samples)" if hop > 1 else ""
        lower = f"No segment length fits them{hops}:"
    elif suggestion < receptive_field:
        lower = (
            f"The files are shorter than the model's receptive field ({receptive_field} samples) too: a model with "
            "fewer layers (model.layers_per_stack or model.stacks) fits them, with data.segment_length="
            f"{suggestion}; or"
        )
    else:
        lower = f"Lower data.segment_length (e.g. data.segment_length={suggestion}) or"
    log.warning(
        "every %s file is shorter than data.segment_length=%d samples (the longest holds %d samples at "
        "%d Hz): about %.0f%% of each %s segment is silence padding. %s %s",
        which, T, longest, dcfg.sample_rate, 100 * padding, "training" if which == "training" else "validation",
        lower, "train on longer files" if which == "training" else "add longer files (held out by name: see "
        "data.valid_fraction)",
    )


def build_data(data_cfg: dict | DataConfig, mcfg: WaveNetConfig, seed: int, max_steps: int) -> DataBundle:
    """Corpus -> train/valid split -> a step-indexed training set and fixed validation segments.

    ``data_cfg``: the ``data`` group (a plain dict is checked by :meth:`DataConfig.from_dict`:
    unknown keys and bad values raise :class:`TrainingError` naming the option). The model
    config comes back completed from the data: the speaker names of the corpus for a
    speaker-conditioned model (``global_cond_channels > 0``), and the sample rate of a vocoder's
    mel settings. A warning is logged when every training file is shorter than a segment, and when
    ``data.valid_fraction=0`` (one file is held out all the same).
    """
    if not isinstance(mcfg, WaveNetConfig):
        raise TypeError(f"build_data takes the model's WaveNetConfig, got {type(mcfg).__name__}")
    dcfg = _data_settings(data_cfg)
    items = load_corpus(dcfg.root, layout=dcfg.layout, mic=dcfg.mic)
    train_items, valid_items = split_items(items, valid_fraction=dcfg.valid_fraction)
    if not valid_items:  # split_items holds none out of a single file
        raise TrainingError(
            f"the corpus '{dcfg.root}' has {len(items)} usable audio file: training holds whole files out for "
            "validation, so it needs at least 2; add files, or cut the recording into several"
        )
    if dcfg.valid_fraction == 0:
        log.warning(
            "data.valid_fraction=0 holds out one file all the same, since training validates on held-out files: "
            "'%s' (of %d)", valid_items[0].path, len(items),
        )
    T, sr = dcfg.segment_length, dcfg.sample_rate
    common: dict = dict(
        segment_length=T, sample_rate=sr, quantization_channels=mcfg.quantization_channels,
        trim_silence_db=dcfg.trim_silence_db, encoding=mcfg.encoding,
    )
    if mcfg.global_cond_channels > 0:
        names = speakers_of(items)
        if mcfg.speakers is not None and tuple(mcfg.speakers) != tuple(names):
            raise TrainingError(
                f"the corpus has speakers {names} but the model was built for {list(mcfg.speakers)}: "
                "train on the same corpus, or start a new run"
            )
        mcfg = replace(mcfg, speakers=tuple(names), global_cond_classes=len(names))
        common["speakers"] = names
    if mcfg.mel is not None:
        from .conditioning import MelSpec, Upsampler

        given = dict(mcfg.mel)
        if given.setdefault("sample_rate", sr) != sr:
            raise TrainingError(f"model.mel.sample_rate={given['sample_rate']} differs from data.sample_rate={sr}")
        spec = MelSpec.from_dict(given)
        empty = spec.empty_bands()
        if empty:
            raise TrainingError(
                f"model.mel.n_mels={spec.n_mels} is too many for model.mel.n_fft={spec.n_fft} at {sr} Hz "
                f"(f_min={spec.f_min:g}, f_max={spec.max_freq:g}): {len(empty)} mel bands (e.g. {empty[:3]}) hold no "
                "FFT bin and would feed the model constants; lower n_mels or raise n_fft"
            )
        if T % spec.hop_length:
            raise TrainingError(
                f"data.segment_length={T} must be a multiple of model.mel.hop_length={spec.hop_length} for a "
                f"vocoder: use e.g. {max(1, T // spec.hop_length) * spec.hop_length}"
            )
        mcfg = replace(mcfg, mel=spec.to_dict())
        common["mel"] = spec
        common["mel_context"] = int(Upsampler(spec.n_mels, spec.hop_length).context_frames)
    train = SegmentDataset(train_items, segments_per_epoch=max(1, max_steps) * dcfg.batch_size, seed=seed, **common)
    hop, rf = common["mel"].hop_length if "mel" in common else 1, receptive_field(mcfg.kernel_size, mcfg.schedule())
    _warn_if_files_are_short(train, dcfg, hop, "training", rf)
    n_valid = dcfg.valid_segments
    try:
        valid_ds = SegmentDataset(valid_items, segments_per_epoch=n_valid, seed=seed + 1_000_003, **common)
    except CorpusError as exc:  # the training files were fine: say that it is the held-out part
        raise CorpusError(
            f"the {len(valid_items)} held-out file(s) (data.valid_fraction={dcfg.valid_fraction}): {exc}; hold out "
            "more files (raise data.valid_fraction) or fix or remove the unusable ones"
        ) from None
    _warn_if_files_are_short(valid_ds, dcfg, hop, "held-out", rf)
    parts = [_split_batch(valid_ds[i]) for i in range(n_valid)]
    valid = torch.stack([codes for codes, _ in parts])
    valid_cond = {k: torch.stack([c[k] for _, c in parts]) for k in parts[0][1]}
    return DataBundle(train, valid, sr, len(train_items), len(valid_items), mcfg, valid_cond)


def fit_mel_normalisation(model: WaveNet, dataset: SegmentDataset, segments: int = 64) -> None:
    """Set a vocoder's ``mel_mean`` / ``mel_std`` from ``segments`` training segments (deterministic)."""
    from .conditioning import fit_mel_stats

    n = min(segments, len(dataset))
    mean, std = fit_mel_stats(_split_batch(dataset[i])[1]["mel"] for i in range(n))
    model.mel_mean.copy_(mean.to(model.mel_mean))
    model.mel_std.copy_(std.to(model.mel_std))


@torch.no_grad()
def validate(
    model: WaveNet, segments: torch.Tensor, batch_size: int, device: torch.device, cond: dict | None = None
) -> float:
    """Mean NLL in bits per sample over fixed segments ``(N, T+1)`` (``cond``: their speaker / mel)."""
    was_training = model.training
    model.eval()
    cond = cond or {}
    total, count = 0.0, 0
    for i in range(0, segments.shape[0], batch_size):
        seg = segments[i : i + batch_size].to(device)
        kw = {k: v[i : i + batch_size].to(device) for k, v in cond.items()}
        params = model.forward_btc(seg[:, :-1], **kw).flatten(0, 1)  # (B*T, P)
        total += model.dist.bits(params, seg[:, 1:].reshape(-1), reduction="sum").item()
        count += seg[:, 1:].numel()
    model.train(was_training)
    return total / count


# ----------------------------------------------------------------------------- precision


class _LossOf(torch.nn.Module):
    """``model.loss`` as a module's ``forward``, so DDP and ``torch.compile`` cover the loss too.

    ``forward(segment (B, T+1), speaker (B,), mel (B, n_mels, F)) -> bits per sample ()``.
    """

    def __init__(self, model: WaveNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, segment: torch.Tensor, speaker: torch.Tensor | None = None, mel: torch.Tensor | None = None):
        return self.model.loss(segment, speaker, mel)


# ----------------------------------------------------------------------------- set-up


class _StopFlag:
    """Set by SIGINT/SIGTERM: the loop saves a checkpoint and returns at the next step."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "_StopFlag":
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame) -> None:
        if self.signal is not None:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.signal = signum

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _check_resume_matches(
    ckpt: dict, mcfg: WaveNetConfig, path: Path,
    advice: str = "resume with the same model options, or start a new run (trainer.resume=false)",
) -> None:  # fmt: skip
    """Raise :class:`CheckpointError` listing every model option where ``ckpt`` and ``mcfg`` differ."""
    saved = ckpt.get("model_config", {})
    current = mcfg.to_dict()
    diff = {k: (saved.get(k), current[k]) for k in current if saved.get(k) != current[k]}
    if diff:
        details = ", ".join(f"{k}: checkpoint {a!r} vs config {b!r}" for k, (a, b) in sorted(diff.items()))
        raise CheckpointError(f"checkpoint '{path}' does not match the model config ({details}): {advice}")


def _check_resume_data(ckpt: dict, dcfg: DataConfig, path: Path) -> None:
    """Refuse to resume ``ckpt`` under data settings that change what its model means.

    That is the sample rate: a model of 8 kHz audio trained on at 16 kHz would learn a different
    signal under the old checkpoint's name. (The encoding, quantisation and mel settings live in
    the model config, which :func:`_check_resume_matches` compares; the speakers are checked
    against the corpus in :func:`build_data`. The corpus folder, segment length and batch may
    change on resuming.)

    Raises:
        CheckpointError: the rates differ; the message names both, the checkpoint and the remedy.
    """
    saved = _checkpoint_sample_rate(ckpt)  # filled in from the configs by load_checkpoint when missing
    if saved is not None and saved != dcfg.sample_rate:
        raise CheckpointError(
            f"checkpoint '{path}' was trained at {saved} Hz but data.sample_rate is {dcfg.sample_rate}: a resumed "
            f"run keeps its sample rate. To resume it, drop the data.sample_rate override (or set "
            f"data.sample_rate={saved}); to train at {dcfg.sample_rate} Hz, start a new run in a new run folder "
            f"(trainer.resume=false)"
        )


def _open_init(target: str, dcfg: DataConfig):
    """``trainer.init_from``: the checkpoint, run folder or ``pretrained:NAME`` to start from,
    checked against the data's sample rate (the architecture is checked once the data is built)."""
    from .pretrained import open_model  # the shipped models' resolver (sha256 and card checked)

    try:
        source = open_model(target)
    except ValueError as exc:  # CheckpointError included
        raise CheckpointError(f"trainer.init_from={target}: {exc}") from None
    rate = dcfg.sample_rate
    if "sample_rate" in source.checkpoint and rate != source.sample_rate:
        raise CheckpointError(
            f"trainer.init_from={target}: {source.label} was trained at {source.sample_rate} Hz but "
            f"data.sample_rate is {rate}: set data.sample_rate={source.sample_rate}"
        )
    weights = source.checkpoint.get("ema") or source.checkpoint.get("model")
    if isinstance(weights, dict):  # NaN weights gave five non-finite losses and "training diverged"
        _check_finite_weights(weights, f"trainer.init_from={target}")
    return source


@dataclass
class Run:
    """Everything the loop works with, built by :func:`setup`; ``step`` and the timers advance."""

    plain: dict  # the composed config as plain data (saved in every checkpoint)
    tcfg: TrainerConfig
    ocfg: OptimConfig
    seed: int
    dist: DistInfo
    device: torch.device
    precision: str  # resolved: 32 | bf16 | 16
    autocast: Callable[[], Any]
    scaler: torch.amp.GradScaler | None
    data: DataBundle
    mcfg: WaveNetConfig
    model: WaveNet
    net: torch.nn.Module  # the loss module the step calls: _LossOf(model), DDP-wrapped and/or compiled
    ema: EMA | None
    optimizer: torch.optim.Optimizer
    run_dir: Path
    loader: DataLoader
    step: int = 0
    elapsed_before: float = 0.0  # training seconds of the runs this one continues (from the checkpoint)
    loop_start: float = 0.0  # time.monotonic() when this process's loop began
    resume_rng: dict | None = None  # random states to restore just before the first step
    initialised_from: dict | None = None  # trainer.init_from's training (pretrained.training_lineage)
    writer: Any = None
    progress: Progress | None = None
    last_loss: float = float("nan")
    last_valid: float = float("nan")
    last_ckpt: Path | None = None
    last_ckpt_step: int = -1
    bad_steps: int = 0
    samples_since_log: int = 0
    t_last_log: float = field(default_factory=time.perf_counter)

    @property
    def main(self) -> bool:
        return self.dist.is_main

    @property
    def batch_size(self) -> int:
        return int(self.plain["data"]["batch_size"])

    @property
    def ckpt_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    def elapsed(self) -> float:
        """Training seconds so far, this process and the runs it continues (the same on all ranks)."""
        return max_over_ranks(self.elapsed_before + time.monotonic() - self.loop_start, self.dist)

    def time_fraction(self, elapsed: float) -> float | None:
        """Share of the time budget used (None without ``trainer.max_time``)."""
        return None if self.tcfg.max_time is None else min(1.0, elapsed / self.tcfg.max_time)

    def lr_factor(self, step: int, time_fraction: float | None) -> float:
        o = self.ocfg
        return lr_factor(step, o.warmup_steps, self.tcfg.max_steps, o.schedule, o.min_lr_ratio, time_fraction)


def _settings(plain: dict) -> tuple[TrainerConfig, OptimConfig, DataConfig, int]:
    """The checked ``trainer``, ``optim`` and ``data`` groups and the seed of a composed config.

    Raises:
        TrainingError: an unknown key (in a group or at the top level) or a bad value, named.
    """
    try:
        seed = check_top_level(plain)
        return (TrainerConfig.from_dict(plain["trainer"]), OptimConfig.from_dict(plain["optim"]),
                DataConfig.from_dict(plain["data"]), seed)  # fmt: skip
    except ValueError as exc:
        raise TrainingError(str(exc)) from None


def _make_optimizer_factory(ocfg: OptimConfig) -> Callable[[Any], torch.optim.Optimizer]:
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[ocfg.name]
    return lambda params: cls(params, lr=ocfg.lr, betas=ocfg.betas, weight_decay=ocfg.weight_decay)


def _first_batch(data: DataBundle, batch_size: int, dist: DistInfo, device: torch.device) -> tuple[torch.Tensor, dict]:
    """This rank's share of the batch of step 0 (read-only: the data set is a pure function of the index)."""
    indices = next(iter(StepBatchSampler(0, 1, batch_size, dist.rank, dist.world_size)))
    batch, cond = _split_batch(default_collate([data.train[i] for i in indices]))
    return batch.to(device), {k: v.to(device) for k, v in cond.items()}


def _resolve_precision(
    tcfg: TrainerConfig, model: WaveNet, make_opt: Callable, data: DataBundle, batch_size: int, dist: DistInfo,
    device: torch.device,
) -> str:
    """``trainer.precision`` as run: ``auto`` measured (rank 0 decides for all), bf16 warned about on slow CPUs."""
    precision = tcfg.precision
    if precision == "auto":
        choice = None
        if dist.is_main:
            batch, cond = _first_batch(data, batch_size, dist, device)
            choice, reason = choose_precision(model, make_opt, batch, cond, device)
            log.info("trainer.precision=auto chose %s: %s", choice, reason)
            print(f"trainer.precision=auto: using {'bf16 autocast' if choice == 'bf16' else 'float32'} ({reason})")
        precision = broadcast_object(choice, dist) if dist.enabled else choice
    if precision == "bf16" and tcfg.precision == "bf16" and dist.is_main:
        warn_emulated_bf16(device)
    return precision


def _build_model(mcfg: WaveNetConfig, tcfg: TrainerConfig, data: DataBundle, device: torch.device, seed: int,
                 fresh: bool, init_state: dict | None = None) -> tuple[WaveNet, EMA | None]:
    """The model (seeded, or with ``init_state``'s weights), its training options and its EMA; a
    fresh vocoder fits its mel normalisation (one started from other weights keeps theirs)."""
    torch.manual_seed(seed)
    model = WaveNet(mcfg).to(device)
    if init_state is not None:
        model.load_state_dict(init_state)
    elif model.upsampler is not None and fresh:
        fit_mel_normalisation(model, data.train)
    model.stack.checkpoint_segments = tcfg.activation_checkpointing
    ema = EMA(model, tcfg.ema_decay) if tcfg.ema_decay > 0 else None
    return model, ema


#: What :func:`_restore` needs of a checkpoint besides its weights: the optimiser, the step and the
#: random states that ``wavedil train`` writes (a bundled or exported model holds weights only).
_TRAINING_STATE = ("optimizer", "step", "rng")

#: Optimiser settings of a parameter group that come from ``optim.*`` (the learning rate is set every step).
_OPTIM_SETTINGS = {"betas": "optim.betas", "weight_decay": "optim.weight_decay", "decoupled_weight_decay": "optim.name"}


def _check_resumable(ckpt: dict, path: Path) -> None:
    """Refuse to resume a checkpoint that holds no training state (optimiser, step, random states).

    Raises:
        CheckpointError: naming the checkpoint, what it lacks and how to start from its weights.
    """
    missing = [k for k in _TRAINING_STATE if not isinstance(ckpt.get(k), dict if k != "step" else int)]
    if missing:
        raise CheckpointError(
            f"trainer.resume={path}: the checkpoint holds no training state to resume ({', '.join(missing)} "
            "missing): it holds a model's weights only (a bundled or exported model, not a step_*.pt that wavedil "
            f"train wrote). To train on from its weights with a fresh optimiser, use trainer.init_from={path} "
            "instead (and trainer.resume=false)"
        )


def _restore(
    ckpt: dict, model: WaveNet, ema: EMA | None, optimizer: torch.optim.Optimizer
) -> tuple[int, float, dict, list[str]]:
    """Load a checkpoint's weights, EMA and optimiser state; returns ``(step, elapsed seconds, rng
    states, changes)``, ``changes`` naming the ``optim.*`` settings that differ from the checkpoint's.

    The optimiser keeps its moments from the checkpoint but takes its settings (betas, weight decay,
    adam or adamw) from this run's ``optim`` group: torch's ``load_state_dict`` would bring back the
    checkpoint's and ignore a changed option in silence. A checkpoint without an EMA (its run had
    ``trainer.ema_decay=0``) starts this run's EMA from its weights, not from the random initial ones.
    The random states are restored later, just before the first step (:func:`_loop`). Fields an
    older checkpoint lacks (``elapsed_seconds``, the numpy/python/CUDA random states) default.
    """
    model.load_state_dict(ckpt["model"])
    settings = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    optimizer.load_state_dict(ckpt["optimizer"])
    changes = []
    for group, own in zip(optimizer.param_groups, settings, strict=True):
        for key, option in _OPTIM_SETTINGS.items():
            if key in own and group.get(key) != own[key] and option not in changes:
                changes.append(option)
        group.update(own)  # this run's optim.* (lr is set every step)
    if ema is not None:
        ema.load_state_dict(ckpt.get("ema") or ckpt["model"])
    return int(ckpt["step"]), float(ckpt.get("elapsed_seconds", 0.0)), ckpt["rng"], changes


def _for_training(model: WaveNet, dist: DistInfo, device: torch.device, compile: bool) -> torch.nn.Module:
    """The module a step calls: the model's loss, wrapped in DDP under torchrun, compiled if asked."""
    net: torch.nn.Module = _LossOf(model)
    if dist.enabled:
        ids = [device.index] if device.type == "cuda" else None
        net = torch.nn.parallel.DistributedDataParallel(net, device_ids=ids)
    return torch.compile(net) if compile else net


#: Samples per sequence of the memory probe (:func:`_activation_bytes_per_sample`): long enough that
#: per-step constants do not matter, short enough to cost milliseconds.
MEMORY_PROBE_SAMPLES = 4096
#: Peak memory of a training step over the activations autograd saves for it (the gradients the
#: backward makes on the way), measured with ``/usr/bin/time`` on the Intel Xeon: about 1.5x-1.75x for
#: the bundled speech model and ref30, fp32 and bf16, batches 8-128 (``_check_training_memory``).
BACKWARD_PEAK_FACTOR = 1.6


def _activation_bytes_per_sample(mcfg: WaveNetConfig, segment_length: int, checkpoint_segments: int = 0) -> float:
    """Bytes autograd saves per sample of a training batch (one sequence position of one batch row)
    for a model of ``mcfg``: measured on a throwaway CPU copy over one short sequence. The probe's
    initialisation leaves the run's random state alone.

    With ``checkpoint_segments`` (``trainer.activation_checkpointing``) the stack keeps only the
    activations at the boundaries of its groups of layers, and the backward recomputes one group at
    a time: the figure is what the checkpointed forward keeps plus the share of the rest that the
    largest group brings back (with one group, all of it: one group saves nothing at the peak)."""
    with torch.random.fork_rng(devices=[]):
        model = WaveNet(mcfg)
        t = min(segment_length, MEMORY_PROBE_SAMPLES)
        kwargs: dict[str, torch.Tensor] = {}
        if model.upsampler is not None:
            hop = model.mel_spec.hop_length
            t = max(hop, t - t % hop)
            kwargs["mel"] = torch.zeros(1, model.mel_spec.n_mels, t // hop + 2 * model.mel_context)
        if mcfg.global_cond_classes > 0:
            kwargs["speaker"] = torch.zeros(1, dtype=torch.long)
        codes = torch.zeros(1, t + 1, dtype=torch.long)
        full = saved_tensor_bytes(lambda: model.loss(codes, **kwargs))
        if checkpoint_segments <= 0:
            return full / t
        n = len(model.stack.layers)
        groups = min(checkpoint_segments, n)
        largest = max(round((i + 1) * n / groups) - round(i * n / groups) for i in range(groups))  # as the stack splits
        model.stack.checkpoint_segments = groups
        kept = saved_tensor_bytes(lambda: model.loss(codes, **kwargs))
        return (kept + max(0, full - kept) * largest / n) / t


def _local_world_size(dist: DistInfo) -> int:
    """The processes of this machine under torchrun: ``LOCAL_WORLD_SIZE`` (1 when unset).

    Raises:
        ValueError: it is not an integer from 1 to ``WORLD_SIZE`` (a hand-made launch environment;
            0 divided by zero in the memory advice, a negative count passed in silence).
    """
    text = os.environ.get("LOCAL_WORLD_SIZE", "1")
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= dist.world_size:
        raise ValueError(
            f"LOCAL_WORLD_SIZE={text!r} must be an integer from 1 to WORLD_SIZE={dist.world_size} (the processes "
            "on this machine): launch with torchrun, which sets it, or set it to the processes started here"
        )
    return value


def _check_training_memory(
    mcfg: WaveNetConfig, dcfg: DataConfig, dist: DistInfo, device: torch.device, precision: str,
    checkpoint_segments: int = 0,
) -> None:
    """Refuse a batch whose saved activations alone exceed the memory there is (the kernel's
    out-of-memory killer would stop the run without a word); warn when the step's estimated peak
    (:data:`BACKWARD_PEAK_FACTOR` times that) exceeds the memory available now. The processes of
    one machine share its memory (``LOCAL_WORLD_SIZE`` of them under torchrun). The probe runs in
    float32; with a 16-bit ``precision`` (or ``auto``) the refusal counts half of it, as autocast
    may keep 16-bit activations (``bf16-emulated`` keeps float32 ones: all of it is counted).
    ``checkpoint_segments`` is ``trainer.activation_checkpointing``, which the probe runs with
    (:func:`_activation_bytes_per_sample`)."""
    total, available = memory_limits(device)
    if total is None and available is None:
        return
    per_sample = _activation_bytes_per_sample(mcfg, dcfg.segment_length, checkpoint_segments)
    # what the refusal counts: bf16-emulated keeps its bf16 values in float32 tensors, as 32 does
    floor = per_sample if precision in ("32", "bf16-emulated") else per_sample / 2
    here = _local_world_size(dist) if dist.world_size > 1 and device.type == "cpu" else 1
    rows = dcfg.batch_size // dist.world_size * here
    samples = rows * dcfg.segment_length
    saved = per_sample * samples
    where = f"{device.type} memory" if device.type == "cuda" else "memory"
    shape = f"data.batch_size={dcfg.batch_size} x data.segment_length={dcfg.segment_length}"
    if dist.world_size > 1:
        shape += f" ({rows} rows in this machine's {here} process(es))"
    fit = max(1, int(((available or total) / BACKWARD_PEAK_FACTOR) // (per_sample * dcfg.segment_length)))
    advice = (
        f"lower data.batch_size (about {fit * dist.world_size // here} fits here at this segment length) or "
        "data.segment_length"
    )
    if total is not None and floor * samples > total:
        raise TrainingError(
            f"{shape} needs at least {floor * samples / 2**30:,.1f} GiB for the activations a "
            f"training step keeps for its backward ({floor / 1024:,.1f} KiB per sample for this model at "
            f"trainer.precision={precision}), more than the {total / 2**30:,.1f} GiB of {where} here: {advice}"
        )
    if available is not None and saved * BACKWARD_PEAK_FACTOR > available and dist.is_main:
        log.warning(
            "%s needs about %.1f GiB for a training step (%.1f KiB per sample for this model, backward included) "
            "but only %.1f GiB of %s is available now: the run may be stopped for lack of memory; %s",
            shape, saved * BACKWARD_PEAK_FACTOR / 2**30, per_sample * BACKWARD_PEAK_FACTOR / 1024,
            available / 2**30, where, advice,
        )


def setup(cfg: Any, run_dir: str | Path) -> Run:
    """Settings, device, data, model, optimiser, resume and precision: everything before the first step."""
    run_dir = Path(run_dir)
    plain = to_plain(cfg)
    tcfg, ocfg, dcfg, seed = _settings(plain)
    mcfg = model_config(plain["model"])
    if tcfg.sample_every > 0 and mcfg.mel is None and tcfg.sample_seconds * dcfg.sample_rate > MAX_SAMPLES:
        raise TrainingError(
            f"trainer.sample_seconds={tcfg.sample_seconds:g} is {tcfg.sample_seconds * dcfg.sample_rate:,.0f} samples "
            f"at data.sample_rate={dcfg.sample_rate}; a clip holds at most {MAX_SAMPLES:,} "
            f"({MAX_SAMPLES / dcfg.sample_rate:,.0f} s): lower trainer.sample_seconds"
        )
    dist = dist_info_from_env()
    device = resolve_device(tcfg.device, dist.local_rank)
    if tcfg.threads > 0:
        torch.set_num_threads(tcfg.threads)
    if tcfg.precision != "auto":
        autocast_for(device, tcfg.precision)  # an impossible precision fails before any work
    B = dcfg.batch_size
    StepBatchSampler(0, 0, B, 0, dist.world_size)  # checks the batch divides the world, before work

    # Fail fast on the checkpoint before touching the data or building anything big.
    resume = find_resume_checkpoint(tcfg.resume, run_dir)
    if resume is None:
        _check_fresh_folder(run_dir)
    if resume is not None:
        _check_resumable(resume[1], resume[0])
        if tcfg.resume is not True:  # a path: true takes the newest good checkpoint already
            _check_no_newer_checkpoints(run_dir, resume, tcfg.resume)
        _check_resume_data(resume[1], dcfg, resume[0])
    if resume is not None and mcfg.speakers is None and resume[1].get("model_config", {}).get("speakers"):
        mcfg = replace(mcfg, speakers=tuple(resume[1]["model_config"]["speakers"]))  # checked against the corpus
    init = _open_init(tcfg.init_from, dcfg) if resume is None and tcfg.init_from else None
    data = build_data(dcfg, mcfg, seed, tcfg.max_steps)
    mcfg = data.model_config
    _check_training_memory(mcfg, dcfg, dist, device, tcfg.precision, tcfg.activation_checkpointing)
    if resume is not None:
        _check_resume_matches(resume[1], mcfg, resume[0])
        if tcfg.init_from and dist.is_main:
            print(f"trainer.init_from={tcfg.init_from} ignored: resuming this run's own checkpoint")
    if init is not None:
        _check_resume_matches(init.checkpoint, mcfg, init.path, "start from it with the same model options "
                              "(trainer.init_from needs the source's architecture)")
    init_distributed(dist, device, tcfg.dist_backend)
    run_dir = Path(broadcast_object(str(run_dir), dist))  # rank 0's folder for everyone

    if init is not None:
        from .pretrained import training_lineage

        init_state = init.checkpoint.get("ema") or init.checkpoint["model"]
        lineage = training_lineage(tcfg.init_from, init)  # kept in every checkpoint: the source may be replaced
    else:
        init_state, lineage = None, resume[1].get("initialised_from") if resume is not None else None
    model, ema = _build_model(mcfg, tcfg, data, device, seed, fresh=resume is None, init_state=init_state)
    if model.receptive_field > dcfg.segment_length and dist.is_main:
        log.warning(
            "data.segment_length=%d is shorter than the model's receptive field (%d samples): most predictions in "
            "training see zero padding where generation sees audio. Raise data.segment_length to %d or more",
            dcfg.segment_length, model.receptive_field, model.receptive_field,
        )
    if init is not None and dist.is_main:
        step_at = init.checkpoint.get("step")
        total = lineage.get("steps") if isinstance(lineage, dict) else None
        at = (f"its step {step_at:,}" if isinstance(step_at, int) else f"its step {step_at}") + (f"; {total:,} steps of training in all" if total not in (None, step_at) else "")
        log.info("initialised from %s (%s)", init.label, at)
        print(f"initialised the weights from {init.label} ({at}); optimiser and schedule start fresh")
    make_opt = _make_optimizer_factory(ocfg)
    optimizer = make_opt(model.parameters())
    step, elapsed_before, resume_rng = 0, 0.0, None
    if resume is not None:
        step, elapsed_before, resume_rng, changes = _restore(resume[1], model, ema, optimizer)
        if dist.is_main:
            log.info("resumed from %s at step %d", resume[0], step)
            used = f" ({elapsed_before:.0f} s of the {tcfg.max_time:.0f} s budget used)" if tcfg.max_time else ""
            print(f"resumed from {resume[0]} at step {step}{used}")
            if changes:
                print(f"{', '.join(changes)} changed since the checkpoint: the optimiser goes on with this run's "
                      "setting(s) and the checkpoint's moments")

    precision = _resolve_precision(tcfg, model, make_opt, data, B, dist, device)
    autocast, scaler = autocast_for(device, precision)
    if scaler is not None and resume is not None and resume[1].get("scaler"):
        scaler.load_state_dict(resume[1]["scaler"])  # float16's loss scale goes on where it was
    loader = DataLoader(
        data.train,
        batch_sampler=StepBatchSampler(step, tcfg.max_steps, B, dist.rank, dist.world_size),
        num_workers=dcfg.num_workers,
        pin_memory=device.type == "cuda",
    )
    return Run(
        plain=plain, tcfg=tcfg, ocfg=ocfg, seed=seed, dist=dist, device=device, precision=precision,
        autocast=autocast, scaler=scaler, data=data, mcfg=mcfg, model=model,
        net=_for_training(model, dist, device, tcfg.compile), ema=ema, optimizer=optimizer, run_dir=run_dir,
        loader=loader, step=step, elapsed_before=elapsed_before, resume_rng=resume_rng, initialised_from=lineage,
        last_ckpt=resume[0] if resume is not None else None, last_ckpt_step=step if resume is not None else -1,
    )


# ----------------------------------------------------------------------------- one step


def train_step(run: Run, batch: torch.Tensor | dict, time_fraction: float | None) -> float | None:
    """One optimiser step on a loader batch; returns the loss (bits per sample), or None if skipped.

    The loss comes from the model (``WaveNet.loss`` through the DDP/compiled wrapper). A
    non-finite loss on any rank skips the step on all; :data:`MAX_BAD_STEPS` in a row stop the run.
    """
    codes, cond = _split_batch(batch)
    codes = codes.to(run.device, non_blocking=True)
    cond = {k: v.to(run.device, non_blocking=True) for k, v in cond.items()}
    lr = run.ocfg.lr * run.lr_factor(run.step, time_fraction)
    for g in run.optimizer.param_groups:
        g["lr"] = lr
    with run.autocast():
        loss = run.net(codes, **cond)  # float32 scalar (float64 inside the head's loss)
    run.optimizer.zero_grad(set_to_none=True)
    if any_rank(not bool(torch.isfinite(loss)), run.dist):
        run.bad_steps += 1
        if run.main:
            log.warning("step %d: non-finite loss (%s), step skipped", run.step, loss.item())
            print(f"warning: step {run.step}: non-finite loss ({loss.item()}), step skipped")
        if run.bad_steps >= MAX_BAD_STEPS:
            raise TrainingError(
                f"{run.bad_steps} non-finite losses in a row at step {run.step}: training diverged. The last good "
                f"checkpoint is kept in {run.ckpt_dir}; lower optim.lr or optim.grad_clip and resume"
            )
        return None
    run.bad_steps = 0
    if run.scaler is not None:
        run.scaler.scale(loss).backward()
        run.scaler.unscale_(run.optimizer)
    else:
        loss.backward()
    if run.ocfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), run.ocfg.grad_clip)
    if run.scaler is not None:
        run.scaler.step(run.optimizer)
        run.scaler.update()
    else:
        run.optimizer.step()
    if run.ema is not None:
        run.ema.update(run.model, run.step)
    return loss.item()


# ----------------------------------------------------------------------------- checkpoints


def save_training_checkpoint(run: Run, elapsed: float) -> Path:
    """Write ``checkpoints/step_<step>.pt`` (everything an exact resume needs) and prune old ones.

    Raises:
        TrainingError: the checkpoint could not be written (a full disk): the message says how
            much space it needs, names the last good checkpoint and the command to resume.
    """
    fraction = run.time_fraction(elapsed)
    o = run.ocfg
    obj = {
        "format": CHECKPOINT_FORMAT,
        "model": run.model.state_dict(),
        "ema": run.ema.state_dict() if run.ema is not None else None,
        "optimizer": run.optimizer.state_dict(),
        "scheduler": {
            "name": o.schedule, "step": run.step, "warmup_steps": o.warmup_steps, "max_steps": run.tcfg.max_steps,
            "schedule": o.schedule, "min_lr_ratio": o.min_lr_ratio, "max_time": run.tcfg.max_time,
            "time_fraction": fraction, "lr_factor": run.lr_factor(run.step, fraction),  # of the next step
        },
        "step": run.step,
        "elapsed_seconds": elapsed,
        "precision": run.precision,
        "rng": rng_state(),
        "config": run.plain,
        "model_config": run.mcfg.to_dict(),
        "sample_rate": run.data.sample_rate,
        **({"initialised_from": run.initialised_from} if run.initialised_from else {}),
        **({"scaler": run.scaler.state_dict()} if run.scaler is not None else {}),  # precision=16's loss scale
    }
    path = run.ckpt_dir / f"step_{run.step:08d}.pt"
    try:
        save_checkpoint(obj, path)
    except CheckpointWriteError as exc:
        last = (
            f"the last good checkpoint is '{run.last_ckpt}' (step {run.last_ckpt_step})"
            if run.last_ckpt is not None
            else "no checkpoint of this run was written yet"
        )
        raise TrainingError(
            f"{exc}. Training stopped at step {run.step}; {last}. After freeing space, resume with the same "
            f"command plus trainer.resume=true (or trainer.resume={run.run_dir})"
        ) from None
    every = run.tcfg.keep_every
    for old in list_checkpoints(run.ckpt_dir)[run.tcfg.keep_last :]:
        if not (every and step_from_name(old) % every == 0):  # milestones stay
            old.unlink(missing_ok=True)
    _remove_stale_partials(run.ckpt_dir)
    run.last_ckpt, run.last_ckpt_step = path, run.step
    return path


#: A partial checkpoint file untouched for this long is a killed write's leftover, not one in progress.
STALE_PARTIAL_SECONDS = 600.0


def _remove_stale_partials(folder: Path) -> None:
    """Remove the hidden partial files (``.step_*.pt.*.tmp``) of checkpoint writes that were killed
    (SIGKILL, a power cut: no handler could remove them) and left untouched for
    :data:`STALE_PARTIAL_SECONDS`; each is as large as a checkpoint and was never removed before."""
    now = time.time()
    for tmp in folder.glob(".step_*.pt.*.tmp"):
        try:
            st = tmp.stat()
            if now - st.st_mtime >= STALE_PARTIAL_SECONDS:
                tmp.unlink()
                log.info("removed %s (%.1f MB), left by a checkpoint write that was killed", tmp.name, st.st_size / 1e6)
        except OSError:  # gone meanwhile, or not ours to remove: leave it
            continue


# ----------------------------------------------------------------------------- after each step


def _due(step: int, every: int, final: bool) -> bool:
    return every > 0 and (step % every == 0 or final)


def log_step(run: Run, elapsed: float, final: bool) -> None:
    """Progress every step; TensorBoard scalars every ``trainer.log_every`` steps."""
    run.samples_since_log += run.batch_size * int(run.plain["data"]["segment_length"])
    now = time.perf_counter()
    rate = run.samples_since_log / max(now - run.t_last_log, 1e-9)
    postfix: dict[str, Any] = {"bits": run.last_loss, "samples_s": rate}
    if run.tcfg.max_time is not None:
        left = int(max(0.0, run.tcfg.max_time - elapsed))
        postfix["budget"] = f"{100 * run.time_fraction(elapsed):.0f}%"
        postfix["left"] = f"{left // 3600}:{left // 60 % 60:02d}:{left % 60:02d}"
    run.progress.update(1, **postfix)
    if run.main and _due(run.step, run.tcfg.log_every, final):
        run.writer.add_scalar("train/bits_per_sample", run.last_loss, run.step)
        run.writer.add_scalar("train/lr", run.optimizer.param_groups[0]["lr"], run.step)
        run.writer.add_scalar("train/samples_per_second", rate, run.step)
        run.t_last_log, run.samples_since_log = now, 0


def validate_step(run: Run, final: bool) -> None:
    """Held-out bits per sample (EMA weights) every ``trainer.valid_every`` steps and at the end."""
    if not (run.main and _due(run.step, run.tcfg.valid_every, final)):
        return
    run.last_valid = validate(_eval_model(run), run.data.valid, run.batch_size, run.device, run.data.valid_cond)
    run.writer.add_scalar("valid/bits_per_sample", run.last_valid, run.step)
    run.progress.write(
        f"step {run.step}: train {run.last_loss:.3f} bits/sample, valid {run.last_valid:.3f} bits/sample"
    )


def sample_step(run: Run, final: bool) -> None:
    """A short audio clip to TensorBoard every ``trainer.sample_every`` steps (0: never)."""
    if run.main and _due(run.step, run.tcfg.sample_every, final):
        _log_audio(run.writer, _eval_model(run), run.step, run.data, run.tcfg.sample_seconds, run.seed)


def checkpoint_step(run: Run, elapsed: float, final: bool) -> None:
    """A checkpoint every ``trainer.ckpt_every`` steps, at the end and when stopping."""
    if run.main and _due(run.step, run.tcfg.ckpt_every, final) and run.last_ckpt_step != run.step:
        save_training_checkpoint(run, elapsed)


def after_step(run: Run, loss: float | None, elapsed: float, final: bool) -> None:
    """The work between steps: logging, validation, sampling, checkpoint (in that order)."""
    if loss is not None:
        run.last_loss = loss
    log_step(run, elapsed, final)
    validate_step(run, final)
    sample_step(run, final)
    checkpoint_step(run, elapsed, final)


def _data_error_message(exc: BaseException) -> str:
    """The error's own message; a DataLoader worker's re-raised error carries the worker's traceback,
    whose last line is ``ErrorClass: message``."""
    text = str(exc).strip()
    if "DataLoader worker process" in text and "Original Traceback" in text:
        last = text.splitlines()[-1]
        head, sep, message = last.partition(": ")
        if sep and head.rsplit(".", 1)[-1] == type(exc).__name__:  # "wavedil.data.files.CorpusError: ..."
            last = message
        return f"{last} (in a DataLoader worker)"
    return text


def _stop_on_data_error(run: Run, exc: BaseException | None) -> None:
    """Stop every rank when the loader raised on any rank (``exc``: this rank's error or ``None``).

    Without DDP this is the error itself. Under DDP the ranks first agree that one failed (one
    small all-reduce per step), so that no rank waits forever in the next gradient all-reduce;
    rank 0 saves the current step (which every rank finished), and every rank raises naming the
    failing ranks and their errors.
    """
    if not any_rank(exc is not None, run.dist):
        return
    mine = None if exc is None else _data_error_message(exc)
    failures = [(r, m) for r, m in enumerate(gather_objects(mine, run.dist)) if m is not None]
    where = "" if not run.dist.enabled else " on rank " + ", ".join(str(r) for r, _ in failures)
    what = "; ".join(m if not run.dist.enabled else f"rank {r}: {m}" for r, m in failures)
    saved = ""
    elapsed = run.elapsed()  # a collective under DDP: every rank calls it
    if run.main:
        if run.last_ckpt_step != run.step:
            try:
                save_training_checkpoint(run, elapsed)
            except TrainingError as save_exc:
                saved = f" Could not save a checkpoint either: {save_exc}"
        if run.last_ckpt is not None and not saved:
            saved = f" Saved '{run.last_ckpt}' (step {run.last_ckpt_step})."
    any_rank(False, run.dist)  # a barrier: the ranks leave together, after rank 0 saved (a gloo rank
    # that tore its process group down while rank 0 was still saving was seen to abort)
    err = TrainingError(
        f"the training data failed{where} at step {run.step}: {what}.{saved} Fix the data, then resume "
        f"with the same command plus trainer.resume=true (or trainer.resume={run.run_dir})"
    )
    raise err from exc


# ----------------------------------------------------------------------------- the loop


def _announce(run: Run) -> None:
    if not run.main:
        return
    t, d = run.tcfg, run.data
    budget = f", time budget {t.max_time:,.0f} s (steps capped at {t.max_steps})" if t.max_time else ""
    print(
        f"training {run.mcfg.residual_channels}-channel WaveNet ({run.model.num_parameters():,} parameters, "
        f"receptive field {run.model.receptive_field} samples) on {d.n_train_files} files ({d.n_valid_files} held "
        f"out), {run.device}" + (f" x {run.dist.world_size} processes" if run.dist.enabled else "")
        + f", precision {run.precision}, steps {run.step}..{t.max_steps}{budget}; writing to {run.run_dir}"
    )
    warmup = run.ocfg.warmup_steps
    if warmup > t.max_steps and run.step < t.max_steps:
        print(
            f"warning: optim.warmup_steps={warmup} exceeds trainer.max_steps={t.max_steps}: the learning rate "
            f"only climbs to {t.max_steps / warmup:.0%} of optim.lr={run.ocfg.lr:g} and the schedule never "
            f"decays it; set optim.warmup_steps below trainer.max_steps (e.g. optim.warmup_steps={t.max_steps // 10})"
        )


def _loop(run: Run) -> None:
    """Steps until ``max_steps``, the time budget, a signal or an error."""
    t = run.tcfg
    batches = iter(run.loader)  # before restoring the RNG: creating it draws a worker seed, as in the original run
    if run.resume_rng is not None:
        set_rng_state(run.resume_rng)  # last, so the first step draws what the original run drew
    run.loop_start = time.monotonic()
    elapsed = run.elapsed()
    if t.max_time is not None and elapsed >= t.max_time:
        if run.main:
            print(f"the time budget trainer.max_time={t.max_time:.0f} s is used up ({elapsed:.0f} s): nothing to do")
        return
    if run.step >= t.max_steps:
        if run.main:
            where = "at" if run.step == t.max_steps else "already past"
            print(f"the run is at step {run.step}, {where} trainer.max_steps={t.max_steps}: nothing to do (raise "
                  "trainer.max_steps to train on)")
        return
    with _StopFlag() as stop:
        while run.step < t.max_steps:
            data_error: BaseException | None = None
            try:
                batch = next(batches)
            except StopIteration:
                break
            except (CorpusError, OSError) as exc:
                data_error = exc
            _stop_on_data_error(run, data_error)  # returns only when no rank failed
            loss = train_step(run, batch, run.time_fraction(elapsed))
            run.step += 1
            elapsed = run.elapsed()
            out_of_time = t.max_time is not None and elapsed >= t.max_time
            stopping = any_rank(stop.signal is not None, run.dist)
            after_step(run, loss, elapsed, final=run.step >= t.max_steps or out_of_time)
            if out_of_time and run.main:
                print(f"time budget trainer.max_time={t.max_time:.0f} s reached at step {run.step}: "
                      f"saved {run.last_ckpt}")
            if stopping:
                if run.main and run.last_ckpt_step != run.step:
                    save_training_checkpoint(run, elapsed)
                if run.main:
                    name = signal.Signals(stop.signal).name if stop.signal else "a signal on another rank"
                    print(f"{name} received: saved {run.last_ckpt} at step {run.step}; resume with trainer.resume=true")
            if out_of_time or stopping:
                break


def train(cfg: Any, run_dir: str | Path) -> dict[str, Any]:
    """Train a WaveNet as the composed config ``cfg`` says; write everything to ``run_dir``.

    Under torchrun each process trains its share of every global batch with
    DistributedDataParallel; rank 0 alone validates, logs and writes checkpoints. See the module
    docstring for what resuming restores and when it is exact.

    Returns a summary dict (final step, last training and validation bits per sample, the
    newest checkpoint path, the precision used, the training seconds).
    """
    run = setup(cfg, run_dir)
    _announce(run)
    run.writer = _summary_writer(run.run_dir / "tb") if run.main else _NullWriter()
    total = None if run.tcfg.max_time is not None else run.tcfg.max_steps  # with a budget: the postfix shows time left
    run.progress = Progress(
        total=total, unit="step", initial=run.step, desc="train",
        enabled=run.main and run.tcfg.progress, interval=run.tcfg.progress_interval,
    )
    run.model.train()
    try:
        _loop(run)
    finally:
        run.progress.close()
        run.writer.close()
        shutdown(run.dist)
    return {
        "step": run.step,
        "train_bits": run.last_loss,
        "valid_bits": run.last_valid,
        "checkpoint": str(run.last_ckpt) if run.main and run.last_ckpt else None,
        "run_dir": str(run.run_dir),
        "params_sha256": params_digest(run.model),
        "precision": run.precision,
        "elapsed_seconds": run.elapsed_before + (time.monotonic() - run.loop_start if run.loop_start else 0.0),
    }


# ----------------------------------------------------------------------------- evaluation helpers


def _eval_model(run: Run) -> WaveNet:
    """The model with EMA weights (a copy) for validation and sampling; the model itself without EMA."""
    if run.ema is None:
        return run.model
    shadow = WaveNet(run.mcfg).to(run.device)
    shadow.load_state_dict(run.ema.state_dict())
    return shadow.eval()


def _log_audio(writer, model: WaveNet, step: int, data: DataBundle, seconds: float, seed: int) -> None:
    """A short sample to TensorBoard: speaker 0; a vocoder re-synthesises the first validation segment."""
    from .audio import decode
    from .generate import generate

    sr = data.sample_rate
    n = max(1, int(seconds * sr))
    speaker = 0 if model.speaker is not None else None
    mel = data.valid_cond.get("mel")
    if mel is not None:
        mel, n = mel[:1].to(model.embed.weight.device), None
    codes = generate(model, n, batch_size=1, seed=seed + step, speaker=speaker, mel=mel).codes
    wav = decode(codes[0].cpu(), model.encoding, model.quantization_channels)
    writer.add_audio("sample", wav.unsqueeze(0), step, sample_rate=sr)
    model.train()


class _NullWriter:
    def add_scalar(self, *a, **k) -> None: ...
    def add_audio(self, *a, **k) -> None: ...
    def close(self) -> None: ...


def _summary_writer(folder: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is a dependency, but never let logging stop training
        log.warning("tensorboard is not installed: no TensorBoard logs")
        return _NullWriter()
    return SummaryWriter(str(folder))
