"""The bf16 training path of a stack of gated layers on the CPU: bf16 products, fused elementwise work.

Under ``trainer.precision=bf16`` (autocast to bfloat16) a :class:`~wavedil.layers.DilatedStack`
of gated layers on the CPU runs :func:`run_layers_lowp` instead of one
:class:`~wavedil.gated.GatedLayerFunction` per layer. On a CPU with AMX a bf16 matrix product
runs about 7x its float32 rate, so a step is set by the elementwise passes between the products
and by the float32 <-> bf16 copies, not by the products. Here:

* each layer's dilated conv is **one** product of its ``k`` taps side by side, ``(B*T, k R) x
  (k R, G)``, on a bf16 copy of its input with the taps' time shifts built in;
* the bias, the conditioning and the gate are one fused kernel
  (:func:`wavedil.fast._train_kernels.gate_forward`) that reads the bf16 product once and writes
  ``[tanh, sigmoid]`` (kept for the backward) and ``z`` in bf16; the residual sum is another;
* the **skip sum of all layers is one product**: the layers' ``z`` side by side,
  ``(B*T, n Z) x (n Z, S)`` (the same arithmetic as ``n`` products summed, with one rounding
  instead of ``n`` float32 passes over a ``(B, T, S)`` sum);
* the backward is the same: bf16 products, the gate's backward and the conv's input gradient
  each one fused kernel.

Numbers: every product takes bf16 operands, accumulates in float32 and returns bf16 (as autocast
would); ``tanh``, ``sigmoid``, ``z`` and the gradients between products are rounded to bf16; the
residual stream, the bias and conditioning sums, the loss, the master weights and their
gradients stay float32. ``trainer.precision=bf16-emulated`` (:mod:`wavedil.emulation`) runs the
same kernels on float32 tensors holding bf16 values and float32 products rounded to bf16, which
computes the same numbers up to the products' summation order.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import numpy as np
import torch

from .distributions import LN2
from .emulation import round_bf16
from .gated import EMULATED_BF16

__all__ = ["LowpCategoricalBits", "LowpGatedFunction", "run_layers_lowp"]


def _kernels():
    import numba

    if "NUMBA_THREADING_LAYER" not in os.environ and numba.config.THREADING_LAYER == "default":
        # numba's OpenMP layer spin-waits between kernels and starves torch's own OpenMP threads
        # (a training step 6x slower on 2 cores, measured); its workqueue threads sleep instead
        numba.config.THREADING_LAYER = "workqueue"
    # numba: imported on first use. The module, not the `fast` package (whose back-end
    # registration imports this module's importers): no import cycle
    from .fast._train_kernels import gate_forward  # noqa: F401

    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))
    return sys.modules[f"{__package__}.fast._train_kernels"]


def _storage(mode) -> torch.dtype:
    """The dtype low-precision values are kept in: bf16, or float32 holding bf16 values (emulated)."""
    return torch.float32 if mode == EMULATED_BF16 else torch.bfloat16


def _low(t: torch.Tensor, mode) -> torch.Tensor:
    """``t`` rounded to bf16, in the storage of ``mode`` (no autograd)."""
    t = t.detach()
    if mode == EMULATED_BF16:
        return round_bf16(t.float())
    return t.to(torch.bfloat16)


def _mm(a: torch.Tensor, b: torch.Tensor, mode) -> torch.Tensor:
    """``a @ b`` of two low-precision operands, rounded to bf16 (fp32 accumulation)."""
    if mode == EMULATED_BF16:
        return round_bf16(torch.mm(a, b))
    return torch.mm(a, b)


def _np(t: torch.Tensor) -> np.ndarray:
    """A view of ``t`` for the kernels: bf16 as its bits (``uint16``), float32 as it is."""
    t = t.detach()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16)
    assert t.dtype == torch.float32, t.dtype
    return t.numpy()


def _taps_side_by_side(x: torch.Tensor, k: int, dilation: int, mode) -> torch.Tensor:
    """``(B, T, k R)``: tap ``j``'s columns hold ``x[t - (k-1-j) dilation]`` (zeros before the
    start), rounded to bf16: the dilated conv's input as one matrix. ``x (B, T, R)``."""
    B, T, R = x.shape
    out = torch.empty(B, T, k * R, dtype=_storage(mode))
    cur = out[..., (k - 1) * R :]
    cur.copy_(_low(x, mode) if mode == EMULATED_BF16 else x)
    for j in range(k - 1):
        shift = min((k - 1 - j) * dilation, T)
        out[:, :shift, j * R : (j + 1) * R].zero_()
        out[:, shift:, j * R : (j + 1) * R].copy_(cur[:, : T - shift])
    return out


#: Row chunks of the gate's backward, each with its own partial sums of the bias gradient.
_CHUNKS = 64


class LowpGatedFunction(torch.autograd.Function):
    """One gated layer of :func:`run_layers_lowp`, without its skip product.

    ``forward(x (B, T, R) float32, cond (Bc, Tc, G) or None, w_conv (G, R, k), b_conv (G,) or
    None, w_res (R, Z), b_res (R,), dilation, mode) -> (x + W_res z + b_res (B, T, R) float32,
    z (B, T, Z) low precision)``; ``mode`` is ``torch.bfloat16`` or :data:`EMULATED_BF16`.
    Saves the taps side by side and ``[tanh, sigmoid]`` in bf16 and the bf16 weights.
    """

    @staticmethod
    def forward(ctx, x, cond, w_conv, b_conv, w_res, b_res, dilation, mode):
        kern = _kernels()
        with torch.autocast("cpu", enabled=False), torch._C.DisableTorchFunction():
            B, T, R = x.shape
            G, _, k = w_conv.shape
            Z = G // 2
            low = _storage(mode)
            xc = _taps_side_by_side(x, k, dilation, mode)
            wc = _low(w_conv.permute(2, 1, 0).reshape(k * R, G), mode)  # row j R + r: tap j, input r
            h = _mm(xc.view(B * T, k * R), wc, mode)
            ts = torch.empty(B * T, G, dtype=low)
            z = torch.empty(B, T, Z, dtype=low)
            bias = b_conv.detach().float() if b_conv is not None else torch.zeros(G)
            if cond is None:
                cb, ct, c2 = 1, 1, torch.zeros(1, G)
            else:
                cond = cond.detach()
                cb, ct = cond.shape[0], cond.shape[1]
                c2 = cond.contiguous().view(cb * ct, G)  # bf16 (from autocast) or float32: read as it is
                c2 = c2 if c2.dtype in (torch.bfloat16, torch.float32) else c2.float()
            kern.gate_forward(_np(h), _np(bias.contiguous()), _np(c2), cb, ct, T, _np(ts), _np(z.view(B * T, Z)))
            del h
            wr = _low(w_res, mode)  # (R, Z)
            r = _mm(z.view(B * T, Z), wr.t(), mode)
            x_new = torch.empty(B, T, R)
            kern.residual_forward(_np(x.detach().contiguous().view(B * T, R)), _np(r), _np(b_res.detach().float().contiguous()),
                                  _np(x_new.view(B * T, R)))
        ctx.save_for_backward(xc, ts, wc, wr)
        ctx.mode, ctx.dilation, ctx.has_bias = mode, dilation, b_conv is not None
        ctx.cond_shape = None if cond is None else cond.shape
        ctx.cond_dtype = None if cond is None else cond.dtype
        return x_new, z

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_xn, g_z):
        kern = _kernels()
        xc, ts, wc, wr = ctx.saved_tensors
        mode, d = ctx.mode, ctx.dilation
        B, T, kR = xc.shape
        R, Z = wr.shape
        k, G = kR // R, 2 * Z
        low = _storage(mode)
        need = ctx.needs_input_grad
        if g_xn is None and g_z is None:
            return (None,) * 8
        with torch.autocast("cpu", enabled=False), torch._C.DisableTorchFunction():
            g_res = g_xn.reshape(B * T, R) if g_xn is not None else None
            g_resl = _low(g_res, mode) if g_res is not None else None
            u = _mm(g_resl, wr, mode) if g_resl is not None else None  # (B*T, Z)
            # the gate output's gradient from the skip product: a column block of a wider
            # gradient (torch.cat's backward); one contiguous copy reads fastest
            gz = None if g_z is None else (g_z if g_z.dtype == low else _low(g_z, mode)).reshape(B * T, Z).contiguous()
            gh = torch.empty(B * T, G, dtype=low)
            z = torch.empty(B * T, Z, dtype=low)
            gb = torch.empty(_CHUNKS, G)
            none = torch.empty(1, Z, dtype=low)
            kern.gate_backward(_np(ts), _np(none if gz is None else gz), _np(none if u is None else u),
                               gz is not None, u is not None, _np(gh), _np(z), _np(gb))
            del u, gz
            g_wres = g_bres = g_cond = g_bconv = g_w = g_x = None
            if need[4]:
                g_wres = _mm(g_resl.t(), z, mode).float() if g_resl is not None else torch.zeros(R, Z)
            if need[5]:
                g_bres = g_res.sum(0).float() if g_res is not None else torch.zeros(R)
            del z
            if need[1] and ctx.cond_shape is not None:
                g_cond = gh.view(B, T, G).float().sum_to_size(ctx.cond_shape).to(ctx.cond_dtype)
            if need[3] and ctx.has_bias:
                g_bconv = gb.sum(0)
            if need[2]:
                g_wc = _mm(xc.view(B * T, kR).t(), gh, mode).float()  # (k R, G)
                g_w = g_wc.view(k, R, G).permute(2, 1, 0)
            if need[0]:
                g_xc = _mm(gh, wc.t(), mode)  # (B*T, k R)
                g_x = torch.empty(B, T, R)
                has_res = g_res is not None
                g_res32 = g_res.float().contiguous() if has_res else g_x.view(B * T, R)
                kern.conv_input_grad(_np(g_res32), has_res, _np(g_xc), T, k, d, _np(g_x.view(B * T, R)))
        return g_x, g_cond, g_w, g_bconv, g_wres, g_bres, None, None


def run_layers_lowp(
    layers: Sequence[torch.nn.Module],
    x: torch.Tensor,
    skip: torch.Tensor | None,
    global_cond: torch.Tensor | None,
    local_cond: torch.Tensor | None,
    mode,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gated ``layers`` (with skip outputs) on channels-last ``x (B, T, R)`` float32 in ``mode``;
    returns ``(residual (B, T, R) float32, skip (B, T, S))`` with the incoming ``skip`` (or
    ``None``) added and without the skip biases, as :meth:`DilatedStack._run_layers` does.

    The skip products of all layers are one product of their gate outputs side by side, taken
    through autograd under the ambient autocast (bf16) or bf16 emulation mode.
    """
    zs, w_skip = [], []
    for layer in layers:
        cond = layer.cond_sum_btc(global_cond, local_cond)
        R = layer.residual_channels
        w_out = layer.out.weight[:, :, 0]
        x, z = LowpGatedFunction.apply(
            x, cond, layer.conv.weight, layer.conv.bias, w_out[:R], layer.out.bias[:R], layer.conv.dilation, mode
        )
        zs.append(z)
        w_skip.append(w_out[R:])
    B, T, _ = x.shape
    zcat = torch.cat(zs, dim=-1)
    s = torch.mm(zcat.view(B * T, zcat.shape[-1]), torch.cat(w_skip, dim=1).t()).view(B, T, -1)
    return x, (s if skip is None else skip + s)


class LowpCategoricalBits(torch.autograd.Function):
    """The output head and its loss in bf16: ``relu -> 1x1 -> relu -> 1x1 -> softmax``
    cross-entropy, mean bits per sample, as one function.

    ``forward(skip (N, S) (without its bias; bf16, or float32), skip_bias (S,), w1 (H, S),
    b1 (H,), w2 (Q, H), b2 (Q,), target (N,) int64, mode) -> mean bits`` (float32 scalar).
    The two products take bf16 operands; each ReLU (with the bias before it) and the softmax
    cross-entropy are one kernel, and the latter writes the gradient of the logits in the same
    pass. Saved: both ReLU outputs and that gradient, in bf16 (``3 N x 256`` for ref30,
    where the autocast head keeps float32 and bf16 copies of each).
    """

    @staticmethod
    def forward(ctx, skip, skip_bias, w1, b1, w2, b2, target, mode):
        kern = _kernels()
        with torch.autocast("cpu", enabled=False), torch._C.DisableTorchFunction():
            N, S = skip.shape
            low = _storage(mode)
            s = skip.detach()
            s = s if s.dtype in (torch.bfloat16, torch.float32) else s.float()
            a1 = torch.empty(N, S, dtype=low)
            kern.relu_bias(_np(s.contiguous()), _np(skip_bias.detach().float().contiguous()), _np(a1))
            w1l, w2l = _low(w1, mode), _low(w2, mode)
            a2 = _mm(a1, w1l.t(), mode)  # (N, H): relu applied in place below
            kern.relu_bias(_np(a2), _np(b1.detach().float().contiguous()), _np(a2))
            g = _mm(a2, w2l.t(), mode)  # (N, Q) logits; their gradient is written over them
            gsum = torch.empty(_CHUNKS, g.shape[1])
            nll = torch.empty(_CHUNKS, dtype=torch.float64)
            kern.softmax_xent(_np(g), _np(b2.detach().float().contiguous()), target.detach().long().contiguous().numpy(),
                              _np(g), _np(gsum), nll.numpy())
        ctx.save_for_backward(a1, a2, g, w1l, w2l, gsum)
        ctx.mode, ctx.skip_dtype = mode, skip.dtype
        return (nll.sum() / (N * LN2)).float()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_loss):
        kern = _kernels()
        a1, a2, g, w1l, w2l, gsum = ctx.saved_tensors
        mode = ctx.mode
        N = a1.shape[0]
        with torch.autocast("cpu", enabled=False), torch._C.DisableTorchFunction():
            scale = float(g_loss) / (N * LN2)
            g_b2 = gsum.sum(0) * scale
            g_w2 = _mm(g.t(), a2, mode).float() * scale  # (Q, H)
            g_a2 = _mm(g, w2l, mode)  # (N, H), not yet scaled
            gsum1 = torch.empty(_CHUNKS, a2.shape[1])
            kern.relu_grad(_np(g_a2), _np(a2), np.float32(scale), _np(g_a2), _np(gsum1))
            g_w1 = _mm(g_a2.t(), a1, mode).float()  # (H, S)
            g_a1 = _mm(g_a2, w1l, mode)  # (N, S)
            gsum0 = torch.empty(_CHUNKS, a1.shape[1])
            kern.relu_grad(_np(g_a1), _np(a1), np.float32(1.0), _np(g_a1), _np(gsum0))
            g_skip = g_a1 if g_a1.dtype == ctx.skip_dtype else g_a1.to(ctx.skip_dtype)
        return g_skip, gsum0.sum(0), g_w1, gsum1.sum(0), g_w2, g_b2, None, None
