"""The training kernel of one gated residual layer: an autograd function with a lean backward.

:class:`GatedLayerFunction` computes a WaveNet gated layer channels last, ``(B, T, C)``, with a
hand-written backward that saves only the layer input and the gate's ``[tanh, sigmoid]``;
:func:`gated_fast_path` says whether (and in which matmul precision) it may run for given
inputs. :meth:`wavedil.layers.ResidualBlock.forward_btc` is its only caller; every other case
(other activations, dropout in training, autocast, tracing, ``torch.compile``) uses plain
autograd ops there.
"""

from __future__ import annotations

import torch

__all__ = ["GatedLayerFunction", "gated_fast_path", "NOT_TAKEN"]

#: What :func:`gated_fast_path` returns when the hand-written function may not run.
NOT_TAKEN = "fallback"


def gated_fast_path(x: torch.Tensor, *params: torch.Tensor | None) -> None | str:
    """Whether :class:`GatedLayerFunction` may run on ``x (B, T, R)`` with ``params``, and how.

    Returns ``None`` (run it: plain eager float math) or :data:`NOT_TAKEN` (tracing, scripting,
    ``torch.compile``, autocast, or mixed dtypes/devices: use plain autograd).
    """
    if torch.compiler.is_compiling() or torch.jit.is_scripting() or torch.jit.is_tracing():
        return NOT_TAKEN
    if torch.is_autocast_enabled(x.device.type) or torch.is_autocast_enabled("cpu"):
        return NOT_TAKEN
    same = all(p is None or (p.dtype == x.dtype and p.device == x.device) for p in params)
    return None if same else NOT_TAKEN


class GatedLayerFunction(torch.autograd.Function):
    """One gated residual layer, channels last, with a hand-written backward that saves little.

    Forward (``x (B, T, R)``, ``skip (B, T, S)`` or None, ``cond`` broadcastable to ``(B, T, G)``
    or None, ``w_conv (G, R, k)``, ``b_conv (G,)`` or None, ``w_out (R + S, Z)``, ``b_res (R,)``)::

        h = b_conv + sum_j W_j x[t - (k-1-j) d] (+ cond)      # (B, T, G), G = 2Z
        t, s = tanh(h[..., :Z]), sigmoid(h[..., Z:])
        z = t * s
        x_new = (b_res + z W_res^T) + x                          # (B, T, R)
        skip_new = skip + z W_skip^T                             # (B, T, S)

    Saved for the backward: ``x`` (the layer input, which the previous layer's output is
    anyway) and ``[t, s]``, the ``(B, T, G)`` buffer of ``h`` overwritten in place by the gate:
    ``z`` and every gradient are recomputed from them with elementwise work and matmuls only. Plain autograd keeps ``z`` too and, in the backward, builds
    the ``(B, T, k*G)`` gradient of the tap matmul's output; here the past taps' products are
    accumulated per batch item directly into the time-shifted rows (``addmm_`` on contiguous
    row blocks), so no ``k*G``-wide buffer exists in either direction.

    With ``inplace_skip`` the skip sum is accumulated into ``skip`` itself (marked dirty).
    """

    @staticmethod
    def forward(ctx, x, skip, cond, w_conv, b_conv, w_out, b_res, dilation, inplace_skip):
        B, T, R = x.shape
        G, _, k = w_conv.shape
        Z = G // 2
        ctx.set_materialize_grads(False)
        x = x.contiguous()
        x2 = x.view(B * T, R)
        w_taps = w_conv.permute(2, 0, 1)  # (k, G, R); tap j multiplies x[t - (k-1-j) d]
        h2 = x2.mm(w_taps[k - 1].t()) if b_conv is None else torch.addmm(b_conv, x2, w_taps[k - 1].t())
        h = h2.view(B, T, G)
        for j in range(k - 1):
            shift = (k - 1 - j) * dilation
            if shift < T:
                wj = w_taps[j].t()
                for b in range(B):  # rows t >= shift of item b are one contiguous block
                    h[b, shift:].addmm_(x[b, : T - shift], wj)
        if cond is not None:
            h += cond
        # the gate in place: h becomes [tanh(a), sigmoid(b)], the one (B, T, G) tensor saved
        t, s = h[..., :Z].tanh_(), h[..., Z:].sigmoid_()
        z2 = torch.mul(t, s).view(B * T, Z)
        # outputs are allocated (B, T, C) and written through (B*T, C) views: a Function's
        # outputs must not be views, or the next layer could not add into the skip in place
        x_new = x.new_empty(B, T, R)
        torch.addmm(b_res, z2, w_out[:R].t(), out=x_new.view(B * T, R))
        x_new += x
        w_skip = w_out[R:].t()
        S = w_skip.shape[1]
        if skip is not None and inplace_skip:
            skip.view(B * T, S).addmm_(z2, w_skip)
            ctx.mark_dirty(skip)
            skip_new = skip
        else:
            skip_new = x.new_empty(B, T, S)
            if skip is None:
                torch.mm(z2, w_skip, out=skip_new.view(B * T, S))
            else:
                torch.addmm(skip.reshape(B * T, S), z2, w_skip, out=skip_new.view(B * T, S))
        ctx.save_for_backward(x, h, w_conv, w_out)
        ctx.dilation = dilation
        ctx.cond_shape = None if cond is None else cond.shape
        ctx.has_bias = b_conv is not None
        return x_new, skip_new

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_xn, g_skip):
        x, ts, w_conv, w_out = ctx.saved_tensors
        B, T, R = x.shape
        G, _, k = w_conv.shape
        Z = G // 2
        t, s = ts[..., :Z], ts[..., Z:]
        S = w_out.shape[0] - R
        need = ctx.needs_input_grad
        x2 = x.view(B * T, R)
        g_xn2 = None if g_xn is None else g_xn.reshape(B * T, R)
        g_skip2 = None if g_skip is None else g_skip.reshape(B * T, S)
        # the 1x1 output projections: z = t * s is recomputed (one elementwise product)
        z2 = torch.mul(t, s).view(B * T, Z)
        g_wout = g_bres = None
        if need[5]:
            g_wout = w_out.new_zeros(R + S, Z)
            if g_xn2 is not None:
                torch.mm(g_xn2.t(), z2, out=g_wout[:R])
            if g_skip2 is not None:
                torch.mm(g_skip2.t(), z2, out=g_wout[R:])
        if need[6]:
            g_bres = g_xn2.sum(0) if g_xn2 is not None else w_out.new_zeros(R)
        del z2
        if g_xn2 is not None:
            g_z = g_xn2.mm(w_out[:R])
            if g_skip2 is not None:
                g_z.addmm_(g_skip2, w_out[R:])
        elif g_skip2 is not None:
            g_z = g_skip2.mm(w_out[R:])
        else:
            return (None,) * 9
        g_z = g_z.view(B, T, Z)
        # the gate: d/da tanh(a) s = g (1 - t^2) s, d/db t sigmoid(b) = g t s (1 - s)
        g_h = x.new_empty(B, T, G)
        g_a, g_b = g_h[..., :Z], g_h[..., Z:]
        torch.mul(g_z, s, out=g_a)
        torch.ops.aten.tanh_backward.grad_input(g_a, t, grad_input=g_a)
        torch.mul(g_z, t, out=g_b)
        torch.ops.aten.sigmoid_backward.grad_input(g_b, s, grad_input=g_b)
        del g_z
        g_h2 = g_h.view(B * T, G)
        g_cond = None
        if ctx.cond_shape is not None and need[2]:
            g_cond = g_h.sum_to_size(ctx.cond_shape) if tuple(ctx.cond_shape) != (B, T, G) else g_h
        # the dilated conv: tap j's gradient pairs g_h[t] with x[t - shift_j], per batch item
        w_taps = w_conv.permute(2, 0, 1)  # (k, G, R)
        g_w = g_bconv = g_x = None
        if need[3]:
            g_wt = w_conv.new_zeros(k, G, R)
            torch.mm(g_h2.t(), x2, out=g_wt[k - 1])
            for j in range(k - 1):
                shift = (k - 1 - j) * ctx.dilation
                for b in range(B) if shift < T else ():
                    g_wt[j].addmm_(g_h[b, shift:].t(), x[b, : T - shift])
            g_w = g_wt.permute(1, 2, 0)
        if need[4] and ctx.has_bias:
            g_bconv = g_h2.sum(0)
        if need[0]:
            wk = w_taps[k - 1]
            g_x2 = g_h2.mm(wk) if g_xn2 is None else torch.addmm(g_xn2, g_h2, wk)
            g_x = g_x2.view(B, T, R)
            for j in range(k - 1):
                shift = (k - 1 - j) * ctx.dilation
                for b in range(B) if shift < T else ():
                    g_x[b, : T - shift].addmm_(g_h[b, shift:], w_taps[j])
        return g_x, (g_skip if need[1] else None), g_cond, g_w, g_bconv, g_wout, g_bres, None, None



