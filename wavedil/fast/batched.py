"""Large-batch generation as a lean sequence of BLAS calls (plain PyTorch, any device).

An option of the CPU back-end (``make_fast_backend(blas_min_batch=...)``), and a starting
point for a CUDA one: it runs on any device as is, and nothing in a step waits for the host.

For a batch of ``B`` sequences every layer is three matrix products with ``B`` rows, which
BLAS runs efficiently once ``B`` is in the hundreds; the framework's per-call cost (about ten
calls per layer) is then shared by ``B`` samples. The step works on preallocated buffers
with ``out=`` / in-place calls over the weights of a :class:`~wavedil.fast.pack.PackedWaveNet`,
keeps one ring buffer ``(L, B, R)`` per layer, and samples with the model's own
``model.dist.sample`` (:func:`wavedil.distributions.sample_categorical` by default), so its
draws are the reference's.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ..distributions import sample_categorical
from ..layers import StackState
from .pack import PackedWaveNet

__all__ = ["batched_generate"]


@torch.no_grad()
def batched_generate(
    packed: PackedWaveNet,
    state: StackState,
    logits: torch.Tensor,
    uniforms: torch.Tensor,
    temperature: float,
    bias_for: Callable[[int, int], np.ndarray] | np.ndarray,
    progress: Callable[[int], None] | None,
    report_every: int = 1024,
    sample: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor] = sample_categorical,
) -> torch.Tensor:
    """Generate ``N = uniforms.shape[0]`` samples for each of ``B`` sequences: codes ``(B, N)``.

    Args:
        packed: the model's weights (:func:`~wavedil.fast.pack.pack_model`).
        state: streaming state after the prompt (read, not modified).
        logits: ``(B, P)`` head parameters of the first sample; its device is used.
        uniforms: ``(N, B)`` float64, or ``(N, B, U)`` as ``sample`` takes them.
        temperature: ``> 0``, or 0 for the argmax.
        bias_for: ``(B, NL, G)`` conv bias plus global conditioning, or a callable
            ``(t0, t1) -> (Tc, B, NL, G)`` giving those of the forward passes of steps
            ``t0 .. t1-1`` (``Tc = 1``: the same for all of them; else one row per step, for
            local conditioning); it is called for about ``report_every // B`` steps at a time.
        progress: called with samples done per sequence, about every ``report_every // B`` steps.
        sample: ``(params (B, P), u (B,) or (B, U), temperature) -> codes (B,)``, the model's
            ``model.dist.sample``.
    """
    device = logits.device
    batch = logits.shape[0]
    n = uniforms.shape[0]

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a).to(device)

    emb, wc, wres, bres, wskip = t(packed.input_table()), t(packed.wc), t(packed.wres), t(packed.bres), t(packed.wskip)
    h1, b1, h2, b2 = t(packed.h1), t(packed.b1), t(packed.h2), t(packed.b2)
    bskip = t(packed.bskip).expand(batch, -1)
    k = packed.kernel
    dil = [int(d) for d in packed.dil]
    nl = len(dil)
    r_ch = emb.shape[1]
    g2 = wres.shape[1]
    taps = [[wc[i, m * r_ch : (m + 1) * r_ch] for m in range(k)] for i in range(nl)]  # (R, G) each
    rings = []  # (L, B, R) per layer; only the slots written so far are copied (the rest are zeros)
    for b in state.buffers:
        shape = (b.shape[2], b.shape[0], b.shape[1])
        # on the CPU, numpy's zeros are pages the OS maps lazily: no up-front memset of ~L*B*R
        ring = (
            torch.from_numpy(np.zeros(shape, np.float32)) if device.type == "cpu" else torch.zeros(shape, device=device)
        )
        written = min(state.pos, b.shape[2])
        ring[:written] = b[:, :, :written].permute(2, 0, 1)
        rings.append(ring)
    x = torch.empty(batch, r_ch, device=device)
    h = torch.empty(batch, 2 * g2, device=device)
    z = torch.empty(batch, g2, device=device)
    zb = torch.empty(batch, g2, device=device)
    res = torch.empty(batch, r_ch, device=device)
    acc = torch.empty(batch, wskip.shape[2], device=device)
    hid = torch.empty(batch, h1.shape[1], device=device)
    lg = logits.detach().to(torch.float32).clone()
    out = torch.empty(batch, n, dtype=torch.long, device=device)
    u = uniforms.to(device)
    pos = state.pos
    every = max(1, report_every // batch)
    per_step = not isinstance(bias_for, np.ndarray) and getattr(bias_for, "per_step", True)
    if isinstance(bias_for, np.ndarray):
        static = bias_for[None]
        bias_for = lambda t0, t1: static  # noqa: E731
    table, t_lo, t_hi = None, 0, 0
    for step in range(n):
        codes = sample(lg, u[step], temperature)  # (B,)
        out[:, step] = codes
        if step + 1 < n:
            if table is None or (per_step and step >= t_hi):
                t_lo, t_hi = step, min(n, step + every)
                table = t(np.ascontiguousarray(bias_for(t_lo, t_hi).transpose(0, 2, 1, 3)))  # (Tc, NL, B, G)
            gb = table[step - t_lo] if per_step else table[0]
            torch.index_select(emb, 0, codes, out=x)
            acc.copy_(bskip)
            for i in range(nl):
                d, ring, w = dil[i], rings[i], taps[i]
                L = (k - 1) * d
                # h = bias + sum over taps of x[t - (k-1-m)d] @ W_m; the oldest tap sits in slot pos % L
                torch.addmm(gb[i], ring[(pos - (k - 1) * d) % L], w[0], out=h)
                for m in range(1, k - 1):
                    h.addmm_(ring[(pos - (k - 1 - m) * d) % L], w[m])
                h.addmm_(x, w[k - 1])
                ring[pos % L].copy_(x)
                torch.tanh(h[:, :g2], out=z)
                torch.sigmoid(h[:, g2:], out=zb)
                z.mul_(zb)
                if i + 1 < nl:  # the last layer's residual output is never used
                    x.add_(torch.addmm(bres[i], z, wres[i], out=res))
                acc.addmm_(z, wskip[i])
            pos += 1
            acc.relu_()
            torch.addmm(b1, acc, h1, out=hid).relu_()
            torch.addmm(b2, hid, h2, out=lg)
        if progress is not None and ((step + 1) % every == 0 or step + 1 == n):
            progress(step + 1)
    return out
