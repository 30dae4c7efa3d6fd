"""Output distributions: loss in bits per sample and sampling.

Sampling is by inverse CDF from one uniform number per batch item and step, computed in
float64, so that every generation back-end that is handed the same uniforms draws the same
samples (the uniforms come from one seeded generator in :mod:`wavedil.generate`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["categorical_bits", "sample_categorical", "LN2"]

LN2 = math.log(2.0)


def categorical_bits(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood in bits per sample.

    Args:
        logits: ``(B, Q, T)`` or ``(N, Q)`` unnormalised scores (any float dtype; the loss is float32).
        target: ``(B, T)`` or ``(N,)`` int64 classes in ``[0, Q)``.
    """
    return F.cross_entropy(logits.float(), target) / LN2


def sample_categorical(logits: torch.Tensor, u: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Draw one class per row by inverse CDF.

    Args:
        logits: ``(B, Q)``.
        u: ``(B,)`` uniforms in ``[0, 1)``.
        temperature: ``> 0`` scales the logits (``logits / temperature``); ``0`` takes the argmax.

    Returns:
        ``(B,)`` int64 classes.
    """
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.double() / temperature, dim=-1)
    cdf = probs.cumsum(dim=-1)
    idx = torch.searchsorted(cdf, (u.double() * cdf[:, -1]).unsqueeze(-1)).squeeze(-1)
    return idx.clamp_(max=logits.shape[-1] - 1)
