"""The training loop, as small functions you can read top to bottom.

``train(cfg, run_dir)`` takes a composed config (see ``conf/train.yaml``) and a run folder, and
writes ``checkpoints/step_*.pt``, TensorBoard logs under ``tb/`` and ``train.log``.

Exact resumption: every batch is a pure function of ``(seed, step)`` (the data set draws segment
``i`` from ``(seed, epoch, i)`` and step ``s`` uses indices ``s*B .. s*B+B-1``), the learning
rate is a pure function of the step, and the checkpoint holds the model, its EMA, the optimizer,
the step and the RNG state. A resumed run therefore continues exactly where it stopped.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import signal
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator

import torch
from torch.utils.data import DataLoader, Sampler

from .checkpoint import (
    CheckpointError,
    list_checkpoints,
    newest_good_checkpoint,
    save_checkpoint,
)
from .config import model_config, to_plain
from .data import SegmentDataset, load_corpus, speakers_of, split_items
from .distributed import any_rank, broadcast_object, dist_info_from_env, init_distributed, shutdown
from .model import WaveNet, WaveNetConfig

__all__ = [
    "train", "lr_factor", "EMA", "resolve_device", "find_resume_checkpoint", "TrainingError", "params_digest",
    "autocast_for", "StepBatchSampler",
]

log = logging.getLogger(__name__)

MAX_BAD_STEPS = 5  # consecutive non-finite losses before training stops


class TrainingError(ValueError):
    """Training cannot go on (bad option, diverged loss, mismatched checkpoint)."""


# ----------------------------------------------------------------------------- small helpers


def lr_factor(step: int, warmup_steps: int, max_steps: int, schedule: str, min_lr_ratio: float) -> float:
    """Learning-rate multiplier at ``step``: linear warm-up, then cosine decay or constant."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        span = max(1, max_steps - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / span)
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


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> cuda (``cuda:local_rank`` under torchrun) if available, else cpu."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise TrainingError(f"trainer.device must be auto, cpu, cuda or cuda:N, got {name!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError(f"trainer.device={name} but no CUDA GPU is available: use trainer.device=cpu")
    return dev


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


def autocast_for(device: torch.device, precision: str):
    """The autocast context and gradient scaler for ``trainer.precision`` (32, bf16 or 16)."""
    precision = str(precision)
    if precision in ("32", "fp32", "float32"):
        return contextlib.nullcontext, None
    if precision in ("bf16", "bfloat16"):
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise TrainingError(f"trainer.precision=bf16 but {torch.cuda.get_device_name(device)} lacks bfloat16: use 16 or 32")
        return (lambda: torch.autocast(device.type, dtype=torch.bfloat16)), None
    if precision in ("16", "fp16", "float16"):
        if device.type != "cuda":
            raise TrainingError("trainer.precision=16 (float16 with a gradient scaler) needs a CUDA GPU; use bf16 or 32 on the CPU")
        return (lambda: torch.autocast("cuda", dtype=torch.float16)), torch.amp.GradScaler("cuda")
    raise TrainingError(f"trainer.precision must be 32, bf16 or 16, got {precision!r}")


def find_resume_checkpoint(resume: Any, run_dir: Path) -> tuple[Path, dict] | None:
    """The checkpoint to resume from, or None to start fresh.

    ``resume``: false; true (the newest good checkpoint of this run folder, else of the newest
    sibling run folder of the same experiment name); or a path to a checkpoint or run folder.
    """
    if resume in (False, None, "false", "False", ""):
        return None
    if resume is True or resume in ("true", "True"):
        candidates = [run_dir] + sorted(
            (p for p in run_dir.parent.iterdir() if p.is_dir() and p != run_dir), reverse=True
        ) if run_dir.parent.is_dir() else [run_dir]
        for folder in candidates:
            found = newest_good_checkpoint(folder / "checkpoints")
            if found is not None:
                return found
        log.warning("trainer.resume=true but no checkpoint found under %s: starting fresh", run_dir.parent)
        return None
    path = Path(str(resume))
    if path.is_dir():
        folder = path / "checkpoints" if (path / "checkpoints").is_dir() else path
        found = newest_good_checkpoint(folder)
        if found is None:
            raise TrainingError(f"trainer.resume={path}: no usable step_*.pt checkpoint in {folder}")
        return found
    from .checkpoint import load_checkpoint

    return path, load_checkpoint(path)


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


def build_data(data_cfg: dict, mcfg: WaveNetConfig, seed: int, max_steps: int) -> DataBundle:
    """Corpus -> train/valid split -> a step-indexed training set and fixed validation segments.

    The model config comes back completed from the data: the speaker names of the corpus for a
    speaker-conditioned model (``global_cond_channels > 0``), and the sample rate of a vocoder's
    mel settings.
    """
    items = load_corpus(
        data_cfg["root"], layout=data_cfg.get("layout", "folder"), mic=str(data_cfg.get("mic", "mic1"))
    )
    train_items, valid_items = split_items(items, valid_fraction=float(data_cfg.get("valid_fraction", 0.05)))
    T, B, sr = int(data_cfg["segment_length"]), int(data_cfg["batch_size"]), int(data_cfg["sample_rate"])
    if T < 2 or B < 1 or sr < 1:
        raise TrainingError(
            f"data.segment_length must be >= 2, data.batch_size >= 1 and data.sample_rate >= 1, got {T}, {B}, {sr}"
        )
    common: dict = dict(
        segment_length=T, sample_rate=sr, quantization_channels=mcfg.quantization_channels,
        trim_silence_db=data_cfg.get("trim_silence_db"), encoding=mcfg.encoding,
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
        if T % spec.hop_length:
            raise TrainingError(
                f"data.segment_length={T} must be a multiple of model.mel.hop_length={spec.hop_length} for a "
                f"vocoder: use e.g. {max(1, T // spec.hop_length) * spec.hop_length}"
            )
        mcfg = replace(mcfg, mel=spec.to_dict())
        common["mel"] = spec
        common["mel_context"] = int(Upsampler(spec.n_mels, spec.hop_length).context_frames)
    train = SegmentDataset(train_items, segments_per_epoch=max(1, max_steps) * B, seed=seed, **common)
    n_valid = int(data_cfg.get("valid_segments", 32))
    valid_ds = SegmentDataset(valid_items, segments_per_epoch=n_valid, seed=seed + 1_000_003, **common)
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


# ----------------------------------------------------------------------------- the loop


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


def _check_resume_matches(ckpt: dict, mcfg: WaveNetConfig, path: Path) -> None:
    saved = ckpt.get("model_config", {})
    current = mcfg.to_dict()
    diff = {k: (saved.get(k), current[k]) for k in current if saved.get(k) != current[k]}
    if diff:
        details = ", ".join(f"{k}: checkpoint {a!r} vs config {b!r}" for k, (a, b) in sorted(diff.items()))
        raise CheckpointError(
            f"checkpoint '{path}' does not match the model config ({details}): resume with the same model "
            "options, or start a new run (trainer.resume=false)"
        )


def train(cfg: Any, run_dir: str | Path) -> dict[str, Any]:
    """Train a WaveNet as the composed config ``cfg`` says; write everything to ``run_dir``.

    Under torchrun each process trains its share of every global batch with
    DistributedDataParallel; rank 0 alone validates, logs and writes checkpoints.

    Returns a summary dict (final step, last training and validation bits per sample, the
    newest checkpoint path).
    """
    run_dir = Path(run_dir)
    plain = to_plain(cfg)
    tcfg, ocfg, dcfg = plain["trainer"], plain["optim"], plain["data"]
    seed = int(plain.get("seed", 0))
    mcfg = model_config(plain["model"])
    max_steps = int(tcfg["max_steps"])
    if max_steps < 1:
        raise TrainingError(f"trainer.max_steps must be >= 1, got {max_steps}")
    dist_info = dist_info_from_env()
    device = resolve_device(str(tcfg.get("device", "auto")), dist_info.local_rank)
    if int(tcfg.get("threads", 0)) > 0:
        torch.set_num_threads(int(tcfg["threads"]))
    autocast, scaler = autocast_for(device, tcfg.get("precision", "32"))
    B, T = int(dcfg["batch_size"]), int(dcfg["segment_length"])
    StepBatchSampler(0, 0, B, 0, dist_info.world_size)  # checks the batch divides the world, before work

    # Fail fast on the checkpoint before touching the data or building anything big.
    resume = find_resume_checkpoint(tcfg.get("resume", False), run_dir)
    if resume is not None and mcfg.speakers is None and resume[1].get("model_config", {}).get("speakers"):
        mcfg = replace(mcfg, speakers=tuple(resume[1]["model_config"]["speakers"]))  # checked against the corpus

    data = build_data(dcfg, mcfg, seed, max_steps)
    mcfg = data.model_config
    if resume is not None:
        _check_resume_matches(resume[1], mcfg, resume[0])
    init_distributed(dist_info, device, str(tcfg.get("dist_backend", "auto")))
    run_dir = Path(broadcast_object(str(run_dir), dist_info))  # rank 0's folder for everyone
    main = dist_info.is_main
    torch.manual_seed(seed)
    model = WaveNet(mcfg).to(device)
    if model.upsampler is not None and resume is None:
        fit_mel_normalisation(model, data.train)
    model.stack.checkpoint_segments = int(tcfg.get("activation_checkpointing", 0))
    ema = EMA(model, float(tcfg.get("ema_decay", 0.0))) if float(tcfg.get("ema_decay", 0.0)) > 0 else None
    opt_name = str(ocfg.get("name", "adamw")).lower()
    opt_cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}.get(opt_name)
    if opt_cls is None:
        raise TrainingError(f"optim.name must be 'adam' or 'adamw', got {opt_name!r}")
    base_lr = float(ocfg["lr"])
    optimizer = opt_cls(
        model.parameters(), lr=base_lr, betas=tuple(ocfg.get("betas", (0.9, 0.999))),
        weight_decay=float(ocfg.get("weight_decay", 0.0)),
    )
    schedule = dict(
        warmup_steps=int(ocfg.get("warmup_steps", 0)), max_steps=max_steps,
        schedule=str(ocfg.get("schedule", "constant")), min_lr_ratio=float(ocfg.get("min_lr_ratio", 1.0)),
    )
    lr_factor(0, **schedule)  # validates the schedule name before the loop

    step = 0
    if resume is not None:
        path, ckpt = resume
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if ema is not None and ckpt.get("ema"):
            ema.load_state_dict(ckpt["ema"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        step = int(ckpt["step"])
        if main:
            log.info("resumed from %s at step %d", path, step)
            print(f"resumed from {path} at step {step}")

    # The module that runs the forward pass: DDP-wrapped and/or compiled views of `model`.
    net: torch.nn.Module = model
    if dist_info.enabled:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if bool(tcfg.get("compile", False)):
        net = torch.compile(net)

    ckpt_dir = run_dir / "checkpoints"
    writer = _summary_writer(run_dir / "tb") if main else _NullWriter()
    loader = DataLoader(
        data.train,
        batch_sampler=StepBatchSampler(step, max_steps, B, dist_info.rank, dist_info.world_size),
        num_workers=int(dcfg.get("num_workers", 0)),
        pin_memory=device.type == "cuda",
    )
    if main:
        print(
            f"training {mcfg.residual_channels}-channel WaveNet ({model.num_parameters():,} parameters, receptive "
            f"field {model.receptive_field} samples) on {data.n_train_files} files ({data.n_valid_files} held "
            f"out), {device}" + (f" x {dist_info.world_size} processes" if dist_info.enabled else "")
            + f", steps {step}..{max_steps}; writing to {run_dir}"
        )

    def checkpoint(at_step: int) -> Path:
        obj = {
            "format": 1,
            "model": model.state_dict(),
            "ema": ema.state_dict() if ema is not None else None,
            "optimizer": optimizer.state_dict(),
            "scheduler": {"name": schedule["schedule"], "step": at_step, **schedule},
            "step": at_step,
            "rng": {"torch": torch.get_rng_state()},
            "config": plain,
            "model_config": mcfg.to_dict(),
            "sample_rate": data.sample_rate,
        }
        path = save_checkpoint(obj, ckpt_dir / f"step_{at_step:08d}.pt")
        for old in list_checkpoints(ckpt_dir)[max(1, int(tcfg.get("keep_last", 3))) :]:
            old.unlink(missing_ok=True)
        return path

    progress = _progress(main and bool(tcfg.get("progress", True)), step, max_steps)
    grad_clip = float(ocfg.get("grad_clip", 0))
    model.train()
    last_loss, last_valid, bad_steps, last_path = float("nan"), float("nan"), 0, None
    t_last, samples_since = time.perf_counter(), 0
    with _StopFlag() as stop:
        for batch in loader:
            batch, cond = _split_batch(batch)
            batch = batch.to(device, non_blocking=True)
            cond = {k: v.to(device, non_blocking=True) for k, v in cond.items()}
            for g in optimizer.param_groups:
                g["lr"] = base_lr * lr_factor(step, **schedule)
            with autocast():
                params = net(batch[:, :-1], **cond).transpose(1, 2)  # the model's own (B, T, P) layout
            loss = model.dist.bits(params.flatten(0, 1), batch[:, 1:].reshape(-1))  # float32 (float64 inside)
            optimizer.zero_grad(set_to_none=True)
            if any_rank(not bool(torch.isfinite(loss)), dist_info):
                bad_steps += 1
                if main:
                    log.warning("step %d: non-finite loss (%s), step skipped", step, loss.item())
                    print(f"warning: step {step}: non-finite loss ({loss.item()}), step skipped")
                if bad_steps >= MAX_BAD_STEPS:
                    raise TrainingError(
                        f"{bad_steps} non-finite losses in a row at step {step}: training diverged. The last good "
                        f"checkpoint is kept in {ckpt_dir}; lower optim.lr or optim.grad_clip and resume"
                    )
                step += 1
                continue
            bad_steps = 0
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
            else:
                loss.backward()
            if grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            if ema is not None:
                ema.update(model, step)
            step += 1
            last_loss = loss.item()
            samples_since += B * T
            now = time.perf_counter()
            rate = samples_since / max(now - t_last, 1e-9)
            progress.update(last_loss, rate)
            if main and (step % int(tcfg.get("log_every", 50)) == 0 or step == max_steps):
                writer.add_scalar("train/bits_per_sample", last_loss, step)
                writer.add_scalar("train/lr", optimizer.param_groups[0]["lr"], step)
                writer.add_scalar("train/samples_per_second", rate, step)
                t_last, samples_since = now, 0
            if main and (step % int(tcfg.get("valid_every", 500)) == 0 or step == max_steps):
                last_valid = validate(_eval_model(model, ema, mcfg, device), data.valid, B, device, data.valid_cond)
                writer.add_scalar("valid/bits_per_sample", last_valid, step)
                progress.write(f"step {step}: train {last_loss:.3f} bits/sample, valid {last_valid:.3f} bits/sample")
            every = int(tcfg.get("sample_every", 0))
            if main and every > 0 and (step % every == 0 or step == max_steps):
                _log_audio(writer, _eval_model(model, ema, mcfg, device), step, data, tcfg, seed)
            stopping = any_rank(stop.signal is not None, dist_info)
            if main and (step % int(tcfg.get("ckpt_every", 500)) == 0 or step == max_steps or stopping):
                last_path = checkpoint(step)
            if stopping:
                if main:
                    name = signal.Signals(stop.signal).name if stop.signal else "a signal on another rank"
                    print(f"{name} received: saved {last_path} at step {step}; resume with trainer.resume=true")
                break
    progress.close()
    writer.close()
    shutdown(dist_info)
    return {
        "step": step,
        "train_bits": last_loss,
        "valid_bits": last_valid,
        "checkpoint": str(last_path) if last_path else None,
        "run_dir": str(run_dir),
        "params_sha256": params_digest(model),
    }


def params_digest(model: torch.nn.Module) -> str:
    """SHA-256 of the model's parameters and buffers, for checking that runs or ranks agree bit for bit."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _eval_model(model: WaveNet, ema: EMA | None, mcfg: WaveNetConfig, device: torch.device) -> WaveNet:
    """The model with EMA weights (a copy) for validation and sampling; the model itself without EMA."""
    if ema is None:
        return model
    shadow = WaveNet(mcfg).to(device)
    shadow.load_state_dict(ema.state_dict())
    return shadow.eval()


def _log_audio(writer, model: WaveNet, step: int, data: DataBundle, tcfg: dict, seed: int) -> None:
    """A short sample to TensorBoard: speaker 0; a vocoder re-synthesises the first validation segment."""
    from .audio import decode
    from .generate import generate

    sr = data.sample_rate
    n = max(1, int(float(tcfg.get("sample_seconds", 1.0)) * sr))
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


class _progress:
    """A tqdm bar with loss and samples/s, or plain periodic lines when disabled."""

    def __init__(self, enabled: bool, start: int, total: int) -> None:
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True)

    def update(self, loss: float, rate: float) -> None:
        if self.bar is not None:
            self.bar.set_postfix(bits=f"{loss:.3f}", samples_s=f"{rate:,.0f}", refresh=False)
            self.bar.update(1)

    def write(self, msg: str) -> None:
        if self.bar is not None:
            self.bar.write(msg)
        else:
            print(msg, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
