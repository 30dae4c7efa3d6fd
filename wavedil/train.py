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
from dataclasses import dataclass
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
from .data import SegmentDataset, load_corpus, split_items
from .distributed import any_rank, broadcast_object, dist_info_from_env, init_distributed, shutdown
from .distributions import LN2, categorical_bits
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
    train: SegmentDataset
    valid: torch.Tensor  # (N, T+1) fixed validation segments
    sample_rate: int
    n_train_files: int
    n_valid_files: int


def build_data(data_cfg: dict, quantization_channels: int, seed: int, max_steps: int) -> DataBundle:
    """Corpus -> train/valid split -> a step-indexed training set and fixed validation segments."""
    items = load_corpus(data_cfg["root"], layout=data_cfg.get("layout", "folder"))
    train_items, valid_items = split_items(items, valid_fraction=float(data_cfg.get("valid_fraction", 0.05)))
    T, B, sr = int(data_cfg["segment_length"]), int(data_cfg["batch_size"]), int(data_cfg["sample_rate"])
    if T < 2 or B < 1 or sr < 1:
        raise TrainingError(
            f"data.segment_length must be >= 2, data.batch_size >= 1 and data.sample_rate >= 1, got {T}, {B}, {sr}"
        )
    trim = data_cfg.get("trim_silence_db")
    common = dict(
        segment_length=T, sample_rate=sr, quantization_channels=quantization_channels, trim_silence_db=trim
    )
    train = SegmentDataset(train_items, segments_per_epoch=max(1, max_steps) * B, seed=seed, **common)
    n_valid = int(data_cfg.get("valid_segments", 32))
    valid_ds = SegmentDataset(valid_items, segments_per_epoch=n_valid, seed=seed + 1_000_003, **common)
    valid = torch.stack([valid_ds[i] for i in range(n_valid)])
    return DataBundle(train, valid, sr, len(train_items), len(valid_items))


@torch.no_grad()
def validate(model: WaveNet, segments: torch.Tensor, batch_size: int, device: torch.device) -> float:
    """Mean NLL in bits per sample over fixed segments ``(N, T+1)``."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for i in range(0, segments.shape[0], batch_size):
        seg = segments[i : i + batch_size].to(device)
        logits = model.forward_btc(seg[:, :-1]).flatten(0, 1)  # (B*T, Q)
        nll = torch.nn.functional.cross_entropy(logits.float(), seg[:, 1:].reshape(-1), reduction="sum")
        total += nll.item()
        count += seg[:, 1:].numel()
    model.train(was_training)
    return total / count / LN2


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
    if resume is not None:
        _check_resume_matches(resume[1], mcfg, resume[0])

    data = build_data(dcfg, mcfg.quantization_channels, seed, max_steps)
    init_distributed(dist_info, device, str(tcfg.get("dist_backend", "auto")))
    run_dir = Path(broadcast_object(str(run_dir), dist_info))  # rank 0's folder for everyone
    main = dist_info.is_main
    torch.manual_seed(seed)
    model = WaveNet(mcfg).to(device)
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
            batch = batch.to(device, non_blocking=True)
            for g in optimizer.param_groups:
                g["lr"] = base_lr * lr_factor(step, **schedule)
            with autocast():
                logits = net(batch[:, :-1]).transpose(1, 2)  # the model's own (B, T, Q) layout
            loss = categorical_bits(logits.flatten(0, 1), batch[:, 1:].reshape(-1))  # float32 always
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
                last_valid = validate(_eval_model(model, ema, mcfg, device), data.valid, B, device)
                writer.add_scalar("valid/bits_per_sample", last_valid, step)
                progress.write(f"step {step}: train {last_loss:.3f} bits/sample, valid {last_valid:.3f} bits/sample")
            every = int(tcfg.get("sample_every", 0))
            if main and every > 0 and (step % every == 0 or step == max_steps):
                _log_audio(writer, _eval_model(model, ema, mcfg, device), step, data.sample_rate, tcfg, seed)
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


def _log_audio(writer, model: WaveNet, step: int, sample_rate: int, tcfg: dict, seed: int) -> None:
    from .audio import mu_law_decode
    from .generate import generate

    n = max(1, int(float(tcfg.get("sample_seconds", 1.0)) * sample_rate))
    codes = generate(model, n, batch_size=1, seed=seed + step).codes
    wav = mu_law_decode(codes[0].cpu(), model.quantization_channels)
    writer.add_audio("sample", wav.unsqueeze(0), step, sample_rate=sample_rate)
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
