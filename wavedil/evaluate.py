"""Held-out likelihood in bits per sample, next to two simple baselines on the same files.

* the model: NLL of each sample given its past, streamed through the cached path in chunks,
  so a file of any length costs bounded memory;
* ``bz2``: the compressed size of the mu-law byte stream (8 bits/sample raw);
* ``unigram``: the entropy of the mu-law code histogram of the same files.
"""

from __future__ import annotations

import bz2
import math
from dataclasses import dataclass, field
from typing import Iterable

import torch

from .distributions import LN2
from .model import WaveNet

__all__ = ["EvalReport", "evaluate_codes", "bz2_bits_per_sample", "unigram_bits_per_sample"]


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
            ("bz2 of the mu-law bytes", self.bz2_bits),
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

    def __init__(self) -> None:
        self._comp = bz2.BZ2Compressor(9)
        self._size = 0
        self.n = 0

    def add(self, codes: torch.Tensor) -> None:
        data = codes.to(torch.uint8).cpu().numpy().tobytes()
        self.n += len(data)
        self._size += len(self._comp.compress(data))

    def bits_per_sample(self) -> float:
        """Finish the stream; no more :meth:`add` after this."""
        self._size += len(self._comp.flush())
        return 8.0 * self._size / max(self.n, 1)


def bz2_bits_per_sample(streams: Iterable[torch.Tensor]) -> float:
    """Bits per sample of bz2 (level 9) over the concatenated 8-bit mu-law byte streams."""
    size = _Bz2Size()
    for codes in streams:
        size.add(codes)
    return size.bits_per_sample()


def unigram_bits_per_sample(counts: torch.Tensor) -> float:
    """Entropy in bits of the empirical distribution given by ``counts (Q,)``."""
    p = counts.double() / counts.sum().clamp(min=1)
    p = p[p > 0]
    return float(-(p * p.log2()).sum())


@torch.no_grad()
def file_nll_bits(model: WaveNet, codes: torch.Tensor, chunk: int = 16000) -> tuple[float, int]:
    """Total NLL in bits of ``codes[1:]`` given the past, and the number of predicted samples.

    ``codes`` is ``(T,)``; it is streamed through :meth:`WaveNet.step` ``chunk`` samples at a
    time, which equals one full forward pass but needs memory for one chunk only.
    """
    model.eval()
    device = model.embed.weight.device
    codes = codes.to(device).long().unsqueeze(0)  # (1, T)
    state = model.init_state(1)
    total = 0.0
    n_pred = codes.shape[1] - 1
    for i in range(0, n_pred, chunk):
        x = codes[:, i : min(i + chunk, n_pred)]
        target = codes[:, i + 1 : i + 1 + x.shape[1]]
        logits, state = model.step(x, state)
        total += torch.nn.functional.cross_entropy(logits.float(), target, reduction="sum").item()
    return total / LN2, max(n_pred, 0)


def evaluate_codes(model: WaveNet, files: Iterable[tuple[str, torch.Tensor]], chunk: int = 16000) -> EvalReport:
    """Evaluate the model and both baselines over ``(name, codes (T,))`` pairs.

    ``files`` is consumed once, as a stream: memory does not grow with the amount of audio
    (only the per-file figures are kept), so an iterator over a large corpus is fine.
    Files with fewer than 2 codes have nothing to predict and are passed over.
    """
    Q = model.quantization_channels
    counts = torch.zeros(Q, dtype=torch.long)
    total_bits, total_n, n_files = 0.0, 0, 0
    per_file: list[tuple[str, float, int]] = []
    bz2_size = _Bz2Size() if Q <= 256 else None  # bz2 of 8-bit bytes only means something for Q <= 256
    for name, codes in files:
        if codes.numel() < 2:
            continue
        if int(codes.max()) >= Q or int(codes.min()) < 0:
            raise ValueError(f"codes of '{name}' fall outside [0, {Q}): quantise with the model's {Q} classes")
        bits, n = file_nll_bits(model, codes, chunk)
        total_bits += bits
        total_n += n
        n_files += 1
        per_file.append((name, bits / max(n, 1), n))
        counts += torch.bincount(codes[1:].long().cpu(), minlength=Q)
        if bz2_size is not None:
            bz2_size.add(codes[1:])
    if n_files == 0:
        raise ValueError("nothing to evaluate: no file with at least 2 samples")
    bz2_bits = bz2_size.bits_per_sample() if bz2_size is not None else math.nan
    return EvalReport(total_bits / total_n, bz2_bits, unigram_bits_per_sample(counts), total_n, n_files, per_file)
