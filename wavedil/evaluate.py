"""Held-out likelihood in bits per sample, next to two simple baselines on the same files.

* the model: NLL of each sample given its past, streamed through the cached path in chunks,
  so a file of any length costs bounded memory;
* ``bz2``: the compressed size of the code stream (mu-law bytes, or 16-bit PCM for the
  linear heads);
* ``unigram``: the entropy of the code histogram of the same files.

For a vocoder (a mel-conditioned model), :func:`vocode_distance` re-synthesises held-out audio
from its own log-mel frames and reports the log-mel distance between input and output.
"""

from __future__ import annotations

import bz2
import math
from dataclasses import dataclass, field
from typing import Iterable

import torch

from .model import WaveNet

__all__ = [
    "EvalReport",
    "bz2_bits_per_sample",
    "evaluate_codes",
    "file_nll_bits",
    "log_mel_distance",
    "unigram_bits_per_sample",
    "vocode_baselines",
    "vocode_distance",
]


@dataclass
class EvalReport:
    """Totals over a set of files; each figure is in bits per sample."""

    model_bits: float
    bz2_bits: float
    unigram_bits: float
    n_samples: int
    n_files: int
    per_file: list[tuple[str, float, int]] = field(default_factory=list)

    def table(self) -> str:
        rows = [
            ("model", self.model_bits),
            ("bz2 of the codes", self.bz2_bits),
            ("unigram entropy", self.unigram_bits),
        ]
        lines = [f"{self.n_files} files, {self.n_samples:,} predicted samples"]
        lines += [f"  {name:<26} {bits:6.3f} bits/sample" for name, bits in rows]
        if self.bz2_bits > 0:
            lines.append(f"  model / bz2: {self.model_bits / self.bz2_bits:.2f}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "model_bits_per_sample": self.model_bits,
            "bz2_bits_per_sample": self.bz2_bits,
            "unigram_bits_per_sample": self.unigram_bits,
            "samples": self.n_samples,
            "files": self.n_files,
            "per_file": [
                {"file": name, "model_bits_per_sample": bits, "samples": n} for name, bits, n in self.per_file
            ],
        }


class _Bz2Size:
    """Running compressed size of a byte stream fed piece by piece (bz2 level 9).

    The compressor keeps at most one 900 kB block, so memory stays bounded however much is fed.
    """

    def __init__(self, classes: int = 256) -> None:
        self._comp = bz2.BZ2Compressor(9)
        self._size = 0
        self.n = 0
        self._wide = classes > 256  # 16-bit codes go in as little-endian int16 (PCM) pairs

    def add(self, codes: torch.Tensor) -> None:
        c = codes.long().cpu()
        data = ((c - 32768).numpy().astype("<i2") if self._wide else c.numpy().astype("u1")).tobytes()
        self.n += c.numel()
        self._size += len(self._comp.compress(data))

    def bits_per_sample(self) -> float:
        """Finish the stream; no more :meth:`add` after this."""
        self._size += len(self._comp.flush())
        return 8.0 * self._size / max(self.n, 1)


def bz2_bits_per_sample(streams: Iterable[torch.Tensor], classes: int = 256) -> float:
    """Bits per sample of bz2 (level 9) over the concatenated code streams (bytes, or int16 for ``classes > 256``)."""
    size = _Bz2Size(classes)
    for codes in streams:
        size.add(codes)
    return size.bits_per_sample()


def unigram_bits_per_sample(counts: torch.Tensor) -> float:
    """Entropy in bits of the empirical distribution given by ``counts (Q,)``."""
    p = counts.double() / counts.sum().clamp(min=1)
    p = p[p > 0]
    return float(-(p * p.log2()).sum())


@torch.no_grad()
def file_nll_bits(
    model: WaveNet, codes: torch.Tensor, chunk: int = 16000, cond: dict | None = None
) -> tuple[float, int]:
    """Total NLL in bits of the predicted samples of ``codes (T,)``, and their number.

    Unconditioned and speaker models predict ``codes[1:]`` from their past; a vocoder predicts
    all ``T`` samples from a silent opener and ``cond["mel"]`` (``(n_mels, M + 2 c)``,
    :func:`wavedil.data.file_mel`). ``cond["speaker"]``: the file's class id. The codes are
    streamed through :meth:`WaveNet.step` ``chunk`` samples at a time, which equals one full
    forward pass but needs memory for one chunk only.
    """
    model.eval()
    cond = cond or {}
    device = model.embed.weight.device
    codes = codes.to(device).long().unsqueeze(0)  # (1, T)
    speaker = cond.get("speaker")
    local = None
    if model.upsampler is not None:
        local = model.upsample(cond.get("mel").to(device))  # (1, n_mels, M * hop)
        if local.shape[-1] < codes.shape[1]:
            raise ValueError(f"the mel covers {local.shape[-1]} samples, the audio has {codes.shape[1]}")
        opener = torch.full((1, 1), model.silence_code, dtype=torch.long, device=device)
        codes = torch.cat([opener, codes], dim=1)
    state = model.init_state(1)
    total = 0.0
    n_pred = codes.shape[1] - 1
    for i in range(0, n_pred, chunk):
        x = codes[:, i : min(i + chunk, n_pred)]
        target = codes[:, i + 1 : i + 1 + x.shape[1]]
        lc = None if local is None else local[:, :, i : i + x.shape[1]]
        params, state = model.step(x, state, speaker, lc)
        total += model.dist.bits(params.transpose(1, 2).flatten(0, 1), target.reshape(-1), reduction="sum").item()
    return total, max(n_pred, 0)


def evaluate_codes(
    model: WaveNet, files: Iterable[tuple[str, torch.Tensor] | tuple[str, torch.Tensor, dict]], chunk: int = 16000
) -> EvalReport:
    """Evaluate the model and both baselines over ``(name, codes (T,))`` or ``(name, codes, cond)``.

    ``cond`` holds what a conditioned model needs for that file (see :func:`file_nll_bits`).
    ``files`` is consumed once, as a stream: memory does not grow with the amount of audio
    (only the per-file figures are kept), so an iterator over a large corpus is fine.
    Files with fewer than 2 codes have nothing to predict and are passed over.
    """
    Q = model.quantization_channels
    counts = torch.zeros(Q, dtype=torch.long)
    total_bits, total_n, n_files = 0.0, 0, 0
    per_file: list[tuple[str, float, int]] = []
    bz2_size = _Bz2Size(Q) if Q <= 65536 else None
    for entry in files:
        name, codes = entry[0], entry[1]
        cond = entry[2] if len(entry) > 2 else None
        if codes.numel() < 2:
            continue
        if int(codes.max()) >= Q or int(codes.min()) < 0:
            raise ValueError(f"codes of '{name}' fall outside [0, {Q}): quantise with the model's {Q} classes")
        bits, n = file_nll_bits(model, codes, chunk, cond)
        total_bits += bits
        total_n += n
        n_files += 1
        per_file.append((name, bits / max(n, 1), n))
        predicted = codes if model.upsampler is not None else codes[1:]
        counts += torch.bincount(predicted.long().cpu(), minlength=Q)
        if bz2_size is not None:
            bz2_size.add(predicted)
    if n_files == 0:
        raise ValueError("nothing to evaluate: no file with at least 2 samples")
    bz2_bits = bz2_size.bits_per_sample() if bz2_size is not None else math.nan
    return EvalReport(total_bits / total_n, bz2_bits, unigram_bits_per_sample(counts), total_n, n_files, per_file)


def log_mel_distance(a: torch.Tensor, b: torch.Tensor, spec) -> float:
    """Mean absolute difference of the log-mel spectrograms (natural log) of two waveforms ``(T,)``.

    Both are cut to the shorter length first; ``spec`` is a :class:`wavedil.conditioning.MelSpec`.
    """
    from .conditioning import log_mel

    n = min(a.shape[-1], b.shape[-1])
    return float((log_mel(a[..., :n].float(), spec) - log_mel(b[..., :n].float(), spec)).abs().mean())


def _vocode_segments(
    model: WaveNet, waves: Iterable[tuple[str, torch.Tensor]], seconds: float
) -> list[tuple[str, torch.Tensor]]:
    """The first ``seconds`` of each waveform, cut to whole mel frames; shorter than a frame: dropped."""
    if model.upsampler is None:
        raise ValueError("vocode_distance needs a mel-conditioned model (a vocoder)")
    hop = model.mel_spec.hop_length
    limit = max(hop, int(seconds * model.mel_spec.sample_rate) // hop * hop)
    out = []
    for name, wav in waves:
        n = min(limit, wav.shape[-1] // hop * hop)
        if n >= hop:
            out.append((name, wav[:n]))
    if not out:
        raise ValueError(f"nothing to vocode: every file is shorter than one mel frame ({hop} samples)")
    return out


@torch.no_grad()
def vocode_distance(
    model: WaveNet, waves: Iterable[tuple[str, torch.Tensor]], seconds: float = 1.0, seed: int = 0
) -> tuple[float, list[tuple[str, float]]]:
    """Re-synthesise the first ``seconds`` of each waveform ``(T,)`` from its own log-mel frames.

    Returns the mean log-mel distance (:func:`log_mel_distance`) over the files and the per-file
    figures. Waveforms are in [-1, 1] at the model's sample rate; files are cut to a whole number
    of mel frames; all files of the same length are generated as one batch.
    """
    from .audio import decode
    from .data import file_mel
    from .generate import generate

    spec, ctx = model.mel_spec, model.mel_context
    groups: dict[int, list[tuple[str, torch.Tensor]]] = {}
    for name, wav in _vocode_segments(model, waves, seconds):
        groups.setdefault(wav.shape[-1], []).append((name, wav))
    per_file: list[tuple[str, float]] = []
    for _, group in sorted(groups.items()):
        mel = torch.stack([file_mel(w, spec, ctx) for _, w in group]).to(model.embed.weight.device)
        codes = generate(model, None, batch_size=len(group), seed=seed, mel=mel, backend="auto").codes
        for (name, wav), c in zip(group, codes.cpu()):
            per_file.append((name, log_mel_distance(wav, decode(c, model.encoding, model.quantization_channels), spec)))
    return sum(d for _, d in per_file) / len(per_file), per_file


def vocode_baselines(
    model: WaveNet, waves: Iterable[tuple[str, torch.Tensor]], seconds: float = 1.0
) -> dict[str, float]:
    """Reference points for :func:`vocode_distance` on the same segments ``(T,)``.

    ``codec``: each input against its own round trip through the model's quantisation (what a
    perfect vocoder could reach). ``other_file``: each input against the next file's segment
    (cyclically; what audio that ignored the mel would score). Needs two files for the latter.
    """
    from .audio import decode, encode

    spec = model.mel_spec
    segs = [w for _, w in _vocode_segments(model, waves, seconds)]
    q = model.quantization_channels
    out = {
        "codec": sum(
            log_mel_distance(w, decode(encode(w, model.encoding, q), model.encoding, q), spec) for w in segs
        ) / len(segs)
    }
    if len(segs) > 1:
        out["other_file"] = sum(
            log_mel_distance(w, segs[(i + 1) % len(segs)], spec) for i, w in enumerate(segs)
        ) / len(segs)
    return out
