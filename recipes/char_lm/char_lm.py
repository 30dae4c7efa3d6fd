"""A ByteNet-style byte-level language model built from wavedil's public block API.

    python recipes/char_lm/char_lm.py train  [hydra overrides]     # conf/char_lm.yaml
    python recipes/char_lm/char_lm.py sample sample.checkpoint=outputs/char_lm/<run> [overrides]

Bytes are the classes (256), so any text (any file) is a corpus; the default one is the licence
texts every Debian/Ubuntu system ships in ``/usr/share/common-licenses``. Files are held out by
family (``GPL-2`` and ``GPL-3`` land on the same side), and training reports bits per byte
("bits per character" for ASCII text) on them. Sampling runs the cached streaming path of
:class:`wavedil.DilatedStack` (``init_state`` + ``step``): O(layers) work per byte.

Tensors here are ``(B, T, C)`` (``layout="BTC"``): the embedding and the head work on the last
axis, so no transposes are needed. Sections: model, sampling, data, training, entry point.
"""

from __future__ import annotations

import bz2
import fnmatch
import hashlib
import json
import logging
import lzma
import math
import os
import random
import re
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import hydra
import torch
import torch.nn.functional as F
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from torch import nn

from wavedil import DilatedStack, StackState
from wavedil._io import atomic_open
from wavedil.checkpoint import CHECKPOINT_FORMAT, open_checkpoint, save_checkpoint
from wavedil.train_config import parse_duration
from wavedil.training_utils import EMA, lr_factor, resolve_device

__all__ = [
    "CharLMConfig",
    "CharLM",
    "sample_bytes",
    "read_corpus",
    "file_family",
    "split_files",
    "batch_at",
    "bits_per_byte",
    "compression_baselines",
    "train",
    "sample",
    "main",
]

log = logging.getLogger(__name__)

VOCAB = 256  # bytes
LN2 = math.log(2.0)


# ----------------------------------------------------------------------------- model


@dataclass(frozen=True)
class CharLMConfig:
    """Plain hyper-parameters of :class:`CharLM` (stored in checkpoints as ``model_config``)."""

    residual_channels: int = 64  # R: byte embedding size and residual channels
    gate_channels: int = 128  # dilated conv outputs (two halves for tanh * sigmoid)
    skip_channels: int = 128  # S: summed skip outputs that feed the head
    head_channels: int = 256  # hidden size of the head (ReLU, linear, ReLU, linear)
    kernel_size: int = 3  # taps per dilated conv
    dilations: tuple[int, ...] = (1, 2, 4, 8, 16) * 2  # ByteNet's 1..16 cycles
    activation: str = "gated"  # gated | tanh | relu | gelu
    dropout: float = 0.0

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CharLMConfig":
        unknown = sorted(set(d) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown model options {unknown}; valid ones are {sorted(cls.__dataclass_fields__)}")
        d = dict(d)
        if "dilations" in d:
            d["dilations"] = tuple(int(x) for x in d["dilations"])
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["dilations"] = list(self.dilations)
        return d


class CharLM(nn.Module):
    """Byte embedding -> :class:`DilatedStack` -> skip sum -> head -> next-byte logits.

    Shapes:
        ``forward(tokens (B, T) int64) -> logits (B, T, 256)``, where ``logits[:, t]`` is the
        distribution of byte ``t + 1`` given bytes ``<= t``;
        ``step(tokens (B, T), state) -> (logits (B, T, 256), state)`` continues a stream.

    >>> lm = CharLM(CharLMConfig(residual_channels=8, gate_channels=8, skip_channels=8,
    ...                          head_channels=8, dilations=(1, 2)))
    >>> lm(torch.randint(0, 256, (2, 30))).shape
    torch.Size([2, 30, 256])
    """

    def __init__(self, config: CharLMConfig) -> None:
        super().__init__()
        if config.skip_channels < 1 or config.head_channels < 1:
            raise ValueError(
                f"skip_channels and head_channels must be >= 1, got {config.skip_channels} and {config.head_channels}"
            )
        self.config = config
        self.embed = nn.Embedding(VOCAB, config.residual_channels)
        self.stack = DilatedStack(
            config.residual_channels,
            gate_channels=config.gate_channels,
            skip_channels=config.skip_channels,
            kernel_size=config.kernel_size,
            dilations=config.dilations,
            activation=config.activation,
            dropout=config.dropout,
            layout="BTC",
        )
        self.head = nn.Sequential(
            nn.ReLU(), nn.Linear(config.skip_channels, config.head_channels), nn.ReLU(),
            nn.Linear(config.head_channels, VOCAB),
        )

    @property
    def receptive_field(self) -> int:
        return self.stack.receptive_field

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """``tokens (B, T) -> logits (B, T, 256)`` for the whole sequence at once (training)."""
        _, skip = self.stack(self.embed(tokens))  # (B, T, S)
        return self.head(skip)

    def init_state(self, batch_size: int) -> StackState:
        """Empty streaming state: every stream starts from silence (zero embeddings)."""
        p = self.embed.weight
        return self.stack.init_state(batch_size, device=p.device, dtype=p.dtype)

    def step(self, tokens: torch.Tensor, state: StackState) -> tuple[torch.Tensor, StackState]:
        """The next ``T >= 1`` bytes ``(B, T)`` of a stream: ``(logits (B, T, 256), new_state)``."""
        (_, skip), state = self.stack.step(self.embed(tokens), state)
        return self.head(skip), state


# ----------------------------------------------------------------------------- sampling


@torch.no_grad()
def sample_bytes(
    model: CharLM,
    num_bytes: int,
    prompt: bytes,
    temperature: float = 1.0,
    seed: int = 0,
    return_logits: bool = False,
) -> bytes | tuple[bytes, torch.Tensor]:
    """Continue ``prompt`` by ``num_bytes`` bytes with the cached streaming path.

    The prompt is fed as one chunk (``step`` on ``(1, len(prompt))``), then one byte per step.
    ``temperature`` scales the logits (0: greedy); the draws come from a generator seeded with
    ``seed``, so the same seed gives the same text. With ``return_logits`` also returns the
    ``(num_bytes, 256)`` logits each byte was drawn from (for checks against a full forward).
    """
    if isinstance(num_bytes, bool) or not isinstance(num_bytes, int) or num_bytes < 1:
        raise ValueError(f"num_bytes must be an integer >= 1, got {num_bytes!r}")
    if not prompt:
        raise ValueError("the prompt must hold at least one byte (it primes the model's state), got b''")
    if not temperature >= 0:
        raise ValueError(f"temperature must be >= 0 (0: greedy), got {temperature}")
    model.eval()
    device = model.embed.weight.device
    gen = torch.Generator().manual_seed(int(seed))
    state = model.init_state(1)
    logits, state = model.step(torch.tensor([list(prompt)], device=device), state)
    last = logits[0, -1].float().cpu()  # (256,) distribution of the first new byte
    out, used = bytearray(), []
    for i in range(num_bytes):
        used.append(last)
        if temperature == 0:
            nxt = int(last.argmax())
        else:
            nxt = int(torch.multinomial(torch.softmax(last.double() / temperature, -1), 1, generator=gen))
        out.append(nxt)
        if i + 1 < num_bytes:
            logits, state = model.step(torch.tensor([[nxt]], device=device), state)
            last = logits[0, -1].float().cpu()
    return (bytes(out), torch.stack(used)) if return_logits else bytes(out)


# ----------------------------------------------------------------------------- data


def read_corpus(root: str | os.PathLike, exclude: Sequence[str] = ()) -> dict[str, bytes]:
    """Every non-empty file under ``root`` (recursively) as ``{relative posix path: bytes}``.

    Files with identical contents (``GPL`` is ``GPL-3`` on Debian) are kept once, under the
    first name in sorted order, so no text is both trained on and held out. ``exclude``: glob
    patterns (``fnmatch``) matched against each file's relative path and its name, e.g.
    ``["*.dat"]`` for the binary index files next to the ``fortunes`` texts.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(
            f"text corpus folder '{root}' not found: pass data.root=/path/to/text/files "
            "(the default, /usr/share/common-licenses, ships with Debian and Ubuntu)"
        )
    texts: dict[str, bytes] = {}
    seen: set[str] = set()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if any(fnmatch.fnmatch(rel, pat) or fnmatch.fnmatch(path.name, pat) for pat in exclude):
            continue
        data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if data and digest not in seen:
            seen.add(digest)
            texts[rel] = data
    if len(texts) < 2:
        excluded = f" not matching data.exclude={list(exclude)}" if exclude else ""
        raise ValueError(
            f"data.root='{root}' holds {len(texts)} distinct non-empty files{excluded}; "
            "at least 2 are needed (one to train on, one to hold out)"
        )
    return texts


def file_family(name: str) -> str:
    """A file name without its trailing version: ``GPL-3`` and ``LGPL-2.1`` -> ``GPL``, ``LGPL``."""
    return re.sub(r"[-_ .]*v?\d+(\.\d+)*$", "", name) or name


def split_files(names: Sequence[str], sizes: Sequence[int], valid_fraction: float) -> tuple[list[str], list[str]]:
    """Deterministic ``(train, valid)`` split by file family.

    Families are taken in the order of the SHA-256 of their names (independent of the folder's
    location and listing order) and held out until they hold ``valid_fraction`` of the bytes;
    at least one family stays on each side.
    """
    if not 0.0 < valid_fraction < 1.0:
        raise ValueError(f"data.valid_fraction must be in (0, 1), got {valid_fraction}")
    families: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        families.setdefault(file_family(name), []).append(i)
    if len(families) < 2:
        raise ValueError(f"all files {list(names)} are one family ({next(iter(families))}): add other texts")
    order = sorted(families, key=lambda f: hashlib.sha256(f.encode()).hexdigest())
    total, held, valid = sum(sizes), 0, set()
    for fam in order[:-1]:
        if held >= valid_fraction * total:
            break
        valid.update(families[fam])
        held += sum(sizes[i] for i in families[fam])
    return [n for i, n in enumerate(names) if i not in valid], [n for i, n in enumerate(names) if i in valid]


def batch_at(data: torch.Tensor, step: int, batch_size: int, length: int, seed: int) -> torch.Tensor:
    """The training batch of ``step``: ``(B, length + 1)`` int64 windows of ``data`` (a ``(N,)`` uint8
    byte tensor) at offsets drawn from ``(seed, step)`` alone, so a run is reproducible."""
    if data.numel() < length + 1:
        raise ValueError(
            f"the training text has {data.numel()} bytes, fewer than data.segment_length + 1 = {length + 1}"
        )
    gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
    starts = torch.randint(0, data.numel() - length, (batch_size, 1), generator=gen)
    return data[starts + torch.arange(length + 1)].long()


@torch.no_grad()
def bits_per_byte(model: CharLM, texts: Sequence[bytes], max_bytes: int = 0) -> float:
    """Held-out bits per byte: every byte after the first of each text, predicted from all earlier ones
    (one full forward per text; ``max_bytes > 0`` reads only that much of each)."""
    was_training = model.training
    model.eval()
    device = model.embed.weight.device
    nats, count = 0.0, 0
    for text in texts:
        text = text[:max_bytes] if max_bytes > 0 else text
        if len(text) < 2:
            continue
        tokens = torch.tensor(list(text), device=device).unsqueeze(0)  # (1, N)
        logits = model(tokens[:, :-1])  # (1, N-1, 256)
        nats += float(F.cross_entropy(logits[0].float(), tokens[0, 1:], reduction="sum"))
        count += len(text) - 1
    model.train(was_training)
    if count == 0:
        raise ValueError("the held-out files hold no text to score (each needs at least 2 bytes)")
    return nats / count / LN2


def compression_baselines(train_texts: Sequence[bytes], valid_texts: Sequence[bytes]) -> dict[str, float]:
    """Bits per byte of the held-out texts under general-purpose models, for scale.

    ``unigram``: byte frequencies of the training text (add-one smoothed); ``bz2`` / ``xz``: the
    held-out texts joined and compressed at the highest level; ``xz_given_train``: what the
    held-out text adds to xz's output after the training text (``|xz(train + valid)| -
    |xz(train)|``), i.e. xz allowed to learn from the training text as the model does.
    """
    train = b"\n".join(train_texts)
    valid = b"\n".join(valid_texts)
    if not valid:
        raise ValueError("the held-out files hold no text")
    n = len(valid)
    counts = torch.bincount(torch.frombuffer(bytearray(train), dtype=torch.uint8).long(), minlength=VOCAB) + 1.0
    logp = torch.log2(counts / counts.sum())
    held = torch.bincount(torch.frombuffer(bytearray(valid), dtype=torch.uint8).long(), minlength=VOCAB).double()

    def xz(data: bytes) -> int:
        return len(lzma.compress(data, preset=9 | lzma.PRESET_EXTREME))

    return {
        "unigram": float(-(held * logp.double()).sum() / n),
        "bz2": 8.0 * len(bz2.compress(valid, 9)) / n,
        "xz": 8.0 * xz(valid) / n,
        "xz_given_train": 8.0 * (xz(train + b"\n" + valid) - xz(train)) / n,
    }


# ----------------------------------------------------------------------------- training


def train(cfg: dict[str, Any], run_dir: str | os.PathLike) -> dict[str, Any]:
    """Train a :class:`CharLM` as the plain config ``cfg`` says; write ``checkpoints/step_*.pt`` to ``run_dir``.

    Returns a summary: final step, last training and held-out bits per byte, checkpoint path.
    """
    run_dir = Path(run_dir)
    dcfg, mcfg, ocfg, tcfg = cfg["data"], CharLMConfig.from_dict(cfg["model"]), cfg["optim"], cfg["trainer"]
    seed, max_steps = int(cfg.get("seed", 0)), int(tcfg["max_steps"])
    if max_steps < 1:
        raise ValueError(f"trainer.max_steps must be >= 1, got {max_steps}")
    B, T = int(dcfg["batch_size"]), int(dcfg["segment_length"])
    if B < 1 or T < 1:
        raise ValueError(f"data.batch_size and data.segment_length must be >= 1, got {B} and {T}")
    device = resolve_device(str(tcfg.get("device", "cpu")))

    max_time = parse_duration(tcfg.get("max_time"), "trainer.max_time")
    texts = read_corpus(dcfg["root"], list(dcfg.get("exclude") or ()))
    names = list(texts)
    train_names, valid_names = split_files(names, [len(texts[n]) for n in names], float(dcfg["valid_fraction"]))
    train_data = torch.frombuffer(bytearray(b"\n".join(texts[n] for n in train_names)), dtype=torch.uint8)
    valid_texts = [texts[n] for n in valid_names]
    max_valid = int(tcfg.get("valid_max_bytes", 0))
    baselines: dict[str, float] = {}
    if tcfg.get("baselines", True):  # on the bytes that bits_per_byte scores
        scored = [t[:max_valid] if max_valid > 0 else t for t in valid_texts]
        baselines = compression_baselines([texts[n] for n in train_names], scored)
        log.info("held-out bits/byte of general-purpose models: " + ", ".join(f"{k} {v:.3f}" for k, v in baselines.items()))

    torch.manual_seed(seed)
    model = CharLM(mcfg).to(device)
    ema_decay = float(tcfg.get("ema_decay", 0.0))
    ema = EMA(model, ema_decay) if ema_decay > 0 else None
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=float(ocfg["lr"]), betas=tuple(ocfg.get("betas", (0.9, 0.999))),
        weight_decay=float(ocfg.get("weight_decay", 0.0)),
    )
    schedule = dict(
        warmup_steps=int(ocfg.get("warmup_steps", 0)), max_steps=max_steps,
        schedule=str(ocfg.get("schedule", "cosine")), min_lr_ratio=float(ocfg.get("min_lr_ratio", 1.0)),
    )
    lr_factor(0, **schedule)  # checks the schedule name before any work
    n_params = sum(p.numel() for p in model.parameters())
    budget = f", time budget {max_time:,.0f} s (steps capped at {max_steps})" if max_time is not None else ""
    held_out = ", ".join(valid_names) if len(valid_names) <= 8 else f"{len(valid_names)} files ({', '.join(valid_names[:8])}, ...)"
    log.info(
        f"training a {len(mcfg.dilations)}-layer byte LM ({n_params:,} parameters, receptive field "
        f"{model.receptive_field} bytes) on {len(train_names)} files ({train_data.numel():,} bytes){budget}; "
        f"held out: {held_out}; writing to {run_dir}"
    )

    def eval_model() -> CharLM:
        if ema is None:
            return model
        shadow = CharLM(mcfg).to(device)
        shadow.load_state_dict(ema.state_dict())
        return shadow

    base_lr, grad_clip = float(ocfg["lr"]), float(ocfg.get("grad_clip", 0.0))
    train_bits = valid_bits = float("nan")
    done = 0
    t0 = time.perf_counter()
    model.train()
    for step in range(max_steps):
        batch = batch_at(train_data, step, B, T, seed).to(device)  # (B, T + 1)
        # with a time budget the cosine follows the fraction of the budget used, so it ends on time
        fraction = None if max_time is None else (time.perf_counter() - t0) / max_time
        for g in optimizer.param_groups:
            g["lr"] = base_lr * lr_factor(step, **schedule, time_fraction=fraction)
        logits = model(batch[:, :-1])  # (B, T, 256): byte t+1 given bytes <= t
        loss = F.cross_entropy(logits.reshape(-1, VOCAB).float(), batch[:, 1:].reshape(-1)) / LN2
        if not torch.isfinite(loss):
            raise ValueError(f"non-finite loss at step {step}: lower optim.lr (now {base_lr})")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        if ema is not None:
            ema.update(model, step)
        train_bits, done = loss.item(), step + 1
        out_of_time = max_time is not None and time.perf_counter() - t0 >= max_time
        final = done == max_steps or out_of_time
        if done % int(tcfg.get("log_every", 50)) == 0 or final:
            rate = done * B * T / (time.perf_counter() - t0)
            log.info(f"step {done}: train {train_bits:.3f} bits/byte ({rate:,.0f} bytes/s)")
        if done % int(tcfg.get("valid_every", 200)) == 0 or final:
            valid_bits = bits_per_byte(eval_model(), valid_texts, max_valid)
            log.info(f"step {done}: held-out {valid_bits:.3f} bits/byte")
        if out_of_time:
            log.info(f"time budget trainer.max_time={max_time:.0f} s reached at step {done}")
            break

    path = save_checkpoint(
        {
            "format": CHECKPOINT_FORMAT,
            "kind": "char_lm",
            "model": model.state_dict(),
            "ema": ema.state_dict() if ema is not None else None,
            "model_config": mcfg.to_dict(),
            "config": cfg,
            "step": done,
            "valid_bits_per_byte": valid_bits,
            "baselines_bits_per_byte": baselines,
            "train_files": train_names,
            "valid_files": valid_names,
        },
        run_dir / "checkpoints" / f"step_{done:08d}.pt",
    )
    return {
        "step": done,
        "train_bits_per_byte": train_bits,
        "valid_bits_per_byte": valid_bits,
        "baselines_bits_per_byte": baselines,
        "checkpoint": str(path),
        "run_dir": str(run_dir),
        "seconds": round(time.perf_counter() - t0, 1),
    }


# ----------------------------------------------------------------------------- sampling command


def load_model(target: str | os.PathLike, use_ema: bool = True) -> tuple[CharLM, dict[str, Any]]:
    """A :class:`CharLM` from a ``step_*.pt`` checkpoint or a run folder (its newest checkpoint)."""
    _, ckpt = open_checkpoint(target)
    if ckpt.get("kind") != "char_lm":
        raise ValueError(f"'{target}' is not a char_lm checkpoint (kind={ckpt.get('kind')!r})")
    model = CharLM(CharLMConfig.from_dict(ckpt["model_config"]))
    model.load_state_dict(ckpt["ema"] if use_ema and ckpt.get("ema") else ckpt["model"])
    return model.eval(), ckpt


def sample(cfg: dict[str, Any]) -> bytes:
    """The ``sample`` command: print (and optionally write) bytes sampled from a checkpoint."""
    scfg = cfg["sample"]
    if not scfg.get("checkpoint"):
        raise ValueError("pass sample.checkpoint=outputs/char_lm/<run> (a run folder or a step_*.pt file)")
    model, _ = load_model(scfg["checkpoint"])
    seed = scfg.get("seed")
    seed = random.SystemRandom().randrange(2**31) if seed is None else int(seed)
    prompt = str(scfg.get("prompt") or "").encode("utf-8")
    text = sample_bytes(model, int(scfg["num_bytes"]), prompt, float(scfg["temperature"]), seed)
    if scfg.get("output"):
        out = Path(scfg["output"])
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(out) as fh:  # whole or not at all, as wavedil's own outputs
            fh.write(text)
    sys.stdout.write((prompt + text).decode("utf-8", errors="replace") + "\n")
    print(f"[{len(text)} bytes, temperature {scfg['temperature']}, seed {seed}]", file=sys.stderr)
    return text


# ----------------------------------------------------------------------------- entry point


@hydra.main(config_path="conf", config_name="char_lm", version_base="1.3")
def _hydra_entry(cfg: DictConfig) -> float | None:
    plain = OmegaConf.to_container(cfg, resolve=True)
    try:
        threads = int(plain["trainer"].get("threads", 0))
        if threads > 0:
            torch.set_num_threads(threads)
        if plain["command"] == "sample":
            sample(plain)
            return None
        if plain["command"] != "train":
            raise ValueError(f"command must be train or sample, got {plain['command']!r}")
        summary = train(plain, HydraConfig.get().runtime.output_dir)
    except (ValueError, OSError) as exc:
        if plain.get("debug") or _full_error():
            raise
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    print(json.dumps(summary))
    return summary["valid_bits_per_byte"]


USAGE = "usage: char_lm.py {train,sample} [hydra overrides]   (see recipes/char_lm/README.md)"

#: HYDRA_FULL_ERROR as the user set it (main sets it to 1 to catch Hydra's composition errors)
_USER_FULL_ERROR: str | None = None


def _full_error() -> bool:
    return (_USER_FULL_ERROR if _USER_FULL_ERROR is not None else os.environ.get("HYDRA_FULL_ERROR")) == "1"


def _composition_error(exc: BaseException) -> str:
    """A Hydra / OmegaConf error in composing the config as one line: an unknown key is named
    with the options its section has (``conf/char_lm.yaml``); others are Hydra's lines joined."""
    cause = exc.__cause__ if exc.__cause__ is not None else exc
    full_key = str(getattr(cause, "full_key", None) or "")
    if "is not in struct" in str(cause) and full_key:
        section, _, key = full_key.rpartition(".")
        options = OmegaConf.load(Path(__file__).parent / "conf" / "char_lm.yaml")
        node = options.get(section) if section else options
        valid = sorted(k for k in node if k != "defaults") if isinstance(node, DictConfig) else []
        return f"{full_key}: no such option" + (f"; {section or 'top-level'} options: {', '.join(valid)}" if valid else "")
    text = str(exc).split("Config search path:")[0] + ("" if cause is exc else "\n" + str(cause))
    skip = ("full_key:", "object_type=", "To append to your config", "Set the environment variable")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith(skip)]
    if isinstance(getattr(exc, "override", None), str):  # a malformed override: name it
        lines.insert(0, f"cannot parse the override {exc.override!r}:")
    return " ".join(ln if ln.endswith((".", ":")) or i == len(lines) - 1 else ln + ";" for i, ln in enumerate(lines))


def main(argv: Sequence[str] | None = None) -> None:
    """``char_lm.py train|sample [overrides]``: the first word picks the command, Hydra parses the rest."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("train", "sample"):
        print(USAGE, file=sys.stderr)
        raise SystemExit(2)
    command, overrides = argv[0], argv[1:]
    if command == "sample":  # sampling writes no run folder or log file
        overrides = ["hydra.run.dir=.", "hydra.output_subdir=null", "hydra/job_logging=disabled",
                     "hydra/hydra_logging=disabled", *overrides]
        sys.argv = [sys.argv[0], f"command={command}", *overrides]
    else:  # command= after the user's words: Hydra's flags (-m) must come before its overrides
        sys.argv = [sys.argv[0], *overrides, f"command={command}"]
    global _USER_FULL_ERROR
    _USER_FULL_ERROR = os.environ.get("HYDRA_FULL_ERROR", "")
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises a composition error instead of printing it over lines
    try:
        _hydra_entry()
    except Exception as exc:
        from hydra.errors import HydraException
        from omegaconf.errors import OmegaConfBaseException

        if _USER_FULL_ERROR == "1" or "debug=true" in overrides or not isinstance(exc, (HydraException, OmegaConfBaseException)):
            raise
        print(f"error: {_composition_error(exc)}", file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        if _USER_FULL_ERROR:
            os.environ["HYDRA_FULL_ERROR"] = _USER_FULL_ERROR
        else:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        _USER_FULL_ERROR = None


if __name__ == "__main__":
    main()
