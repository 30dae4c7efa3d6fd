"""The training kernel of one gated residual layer: an autograd function with a lean backward.

:class:`GatedLayerFunction` computes a WaveNet gated layer channels last, ``(B, T, C)``, with a
hand-written backward that saves only the layer input and the gate's ``[tanh, sigmoid]``;
:func:`gated_fast_path` says whether (and in which matmul precision) it may run for given
inputs. :meth:`wavedil.layers.ResidualBlock.forward_btc` is its only caller; every other case
(other activations, dropout in training, fp16 autocast, autocast on CUDA, tracing,
``torch.compile``) uses plain autograd ops there.
"""

from __future__ import annotations

import torch

from .emulation import bf16_emulation_active, round_bf16

__all__ = ["GatedLayerFunction", "gated_fast_path", "NOT_TAKEN", "EMULATED_BF16"]

#: What :func:`gated_fast_path` returns when the hand-written function may not run.
NOT_TAKEN = "fallback"
#: The matmul precision of :class:`wavedil.emulation.Bf16MatmulEmulation`: bf16-rounded operands
#: and results in float32 tensors, float32 products.
EMULATED_BF16 = "bf16-emulated"


def gated_fast_path(x: torch.Tensor, *params: torch.Tensor | None) -> torch.dtype | None | str:
    """Whether :class:`GatedLayerFunction` may run on ``x (B, T, R)`` with ``params``, and how.

    Returns ``None`` (run it in the inputs' own precision: plain eager float math), a dtype
    (autocast to bfloat16 is active and ``x`` is on the CPU: run its matmuls in bf16 on fp32
    master weights, ``mm_dtype=torch.bfloat16``), :data:`EMULATED_BF16` (inside
    :class:`~wavedil.emulation.Bf16MatmulEmulation`: the same numbers computed in float32), or
    :data:`NOT_TAKEN` (tracing, scripting, ``torch.compile``, autocast to another dtype or on
    CUDA, or mixed dtypes/devices: use plain autograd).
    """
    if torch.compiler.is_compiling() or torch.jit.is_scripting() or torch.jit.is_tracing():
        return NOT_TAKEN
    same = all(p is None or (p.dtype == x.dtype and p.device == x.device) for p in params)
    if bf16_emulation_active():
        return EMULATED_BF16 if x.dtype == torch.float32 and same else NOT_TAKEN
    if torch.is_autocast_enabled(x.device.type):
        low = torch.get_autocast_dtype(x.device.type)
        # on CUDA, bf16 autocast's own plain ops were measured 1.31x faster than this function's
        # bf16 matmuls (training ref30 on an H200: bench/README.md), so it is for the CPU only
        if low == torch.bfloat16 and x.dtype == torch.float32 and same and x.device.type == "cpu":
            return torch.bfloat16
        return NOT_TAKEN
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

    ``mm_dtype=torch.bfloat16`` (what :func:`gated_fast_path` picks under bf16 autocast) runs
    every matrix product of the forward and the backward on bf16 copies of its operands (the
    GEMM accumulates in fp32 and returns bf16, upcast to fp32 at once); ``mm_dtype=EMULATED_BF16``
    computes the same values with float32 GEMMs on bf16-rounded operands and results. The gate, the
    residual and skip sums, the bias and conditioning gradients stay fp32, the parameters stay
    fp32 master weights and their gradients come back fp32. Saved for that backward: the layer
    input as bf16 (half the bytes), ``[t, s]`` in fp32 and the bf16 weight copies.
    """

    @staticmethod
    def forward(ctx, x, skip, cond, w_conv, b_conv, w_out, b_res, dilation, inplace_skip, mm_dtype=None):
        if mm_dtype is not None:
            # autocast off; the emulation mode (if active) suspended: the products round themselves
            with torch.autocast(x.device.type, enabled=False), torch._C.DisableTorchFunction():
                return _forward_lowp(ctx, x, skip, cond, w_conv, b_conv, w_out, b_res, dilation, inplace_skip, mm_dtype)
        ctx.mm_dtype = None
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
        if ctx.mm_dtype is not None:
            device = g_xn.device.type if g_xn is not None else g_skip.device.type
            with torch.autocast(device, enabled=False), torch._C.DisableTorchFunction():
                return _backward_lowp(ctx, g_xn, g_skip)
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
            return (None,) * 10
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
        return g_x, (g_skip if need[1] else None), g_cond, g_w, g_bconv, g_wout, g_bres, None, None, None




def _low(t: torch.Tensor, mm_dtype) -> torch.Tensor:
    """``t`` as a matmul operand of precision ``mm_dtype``: cast, or for :data:`EMULATED_BF16`
    rounded to bf16 values in float32."""
    return round_bf16(t) if mm_dtype == EMULATED_BF16 else t.to(mm_dtype)


def _lowp_mm(a: torch.Tensor, b: torch.Tensor, mm_dtype) -> torch.Tensor:
    """``a @ b`` of two operands made by :func:`_low`, as fp32: a bf16 GEMM accumulates in fp32
    and returns bf16, upcast here; for :data:`EMULATED_BF16` the operands are bf16 values in
    float32 (every product exact), multiplied in fp32 and the result rounded to bf16."""
    if mm_dtype == EMULATED_BF16:
        return round_bf16(torch.matmul(a, b))
    return torch.matmul(a, b).float()


def _forward_lowp(ctx, x, skip, cond, w_conv, b_conv, w_out, b_res, dilation, inplace_skip, mm_dtype):
    """:meth:`GatedLayerFunction.forward` with every matmul on ``mm_dtype`` operands (autocast off)."""
    B, T, R = x.shape
    G, _, k = w_conv.shape
    Z = G // 2
    ctx.set_materialize_grads(False)
    xl = _low(x.contiguous(), mm_dtype)  # (B, T, R), the copy the backward keeps
    wl = _low(w_conv, mm_dtype).permute(2, 0, 1)  # (k, G, R); tap j multiplies x[t - (k-1-j) d]
    h = _lowp_mm(xl, wl[k - 1].t(), mm_dtype)  # (B, T, G) fp32
    if b_conv is not None:
        h += b_conv
    for j in range(k - 1):
        shift = (k - 1 - j) * dilation
        if shift < T:
            h[:, shift:] += _lowp_mm(xl[:, : T - shift], wl[j].t(), mm_dtype)
    if cond is not None:
        h += cond
    t, s = h[..., :Z].tanh_(), h[..., Z:].sigmoid_()  # fp32, saved
    zl = _low(torch.mul(t, s), mm_dtype)  # (B, T, Z)
    wol = _low(w_out, mm_dtype)  # (R + S, Z)
    x_new = _lowp_mm(zl, wol[:R].t(), mm_dtype)
    x_new += b_res
    x_new += x
    rs = _lowp_mm(zl, wol[R:].t(), mm_dtype)  # (B, T, S)
    if skip is not None and inplace_skip:
        skip += rs
        ctx.mark_dirty(skip)
        skip_new = skip
    else:
        skip_new = rs if skip is None else rs.add_(skip)
    ctx.save_for_backward(xl, h, wl, wol)
    ctx.mm_dtype = mm_dtype
    ctx.dilation = dilation
    ctx.cond_shape = None if cond is None else cond.shape
    ctx.cond_dtype = None if cond is None else cond.dtype
    ctx.has_bias = b_conv is not None
    ctx.x_dtype = x.dtype
    return x_new, skip_new


def _backward_lowp(ctx, g_xn, g_skip):
    """:meth:`GatedLayerFunction.backward` for :func:`_forward_lowp`: matmuls on low-precision
    operands, elementwise work and every returned gradient in fp32 (the conditioning's in its dtype)."""
    xl, ts, wl, wol = ctx.saved_tensors
    B, T, R = xl.shape
    k, G, _ = wl.shape
    Z = G // 2
    t, s = ts[..., :Z], ts[..., Z:]
    need = ctx.needs_input_grad
    low = ctx.mm_dtype
    g_xnl = None if g_xn is None else _low(g_xn, low)  # (B, T, R)
    g_skipl = None if g_skip is None else _low(g_skip, low)  # (B, T, S)
    zl = _low(torch.mul(t, s), low)
    g_wout = g_bres = None
    if need[5]:
        S = wol.shape[0] - R
        z2 = zl.view(B * T, Z)
        g_wout = ts.new_zeros(R + S, Z)
        if g_xnl is not None:
            g_wout[:R] = _lowp_mm(g_xnl.reshape(B * T, R).t(), z2, low)
        if g_skipl is not None:
            g_wout[R:] = _lowp_mm(g_skipl.reshape(B * T, S).t(), z2, low)
    if need[6]:
        g_bres = g_xn.sum((0, 1)).float() if g_xn is not None else ts.new_zeros(R)
    del zl
    if g_xnl is not None:
        g_z = _lowp_mm(g_xnl, wol[:R], low)
        if g_skipl is not None:
            g_z += _lowp_mm(g_skipl, wol[R:], low)
    elif g_skipl is not None:
        g_z = _lowp_mm(g_skipl, wol[R:], low)
    else:
        return (None,) * 10
    g_h = ts.new_empty(B, T, G)  # fp32
    g_a, g_b = g_h[..., :Z], g_h[..., Z:]
    torch.mul(g_z, s, out=g_a)
    torch.ops.aten.tanh_backward.grad_input(g_a, t, grad_input=g_a)
    torch.mul(g_z, t, out=g_b)
    torch.ops.aten.sigmoid_backward.grad_input(g_b, s, grad_input=g_b)
    del g_z
    g_cond = None
    if ctx.cond_shape is not None and need[2]:
        g_cond = g_h.sum_to_size(ctx.cond_shape).to(ctx.cond_dtype)
    g_bconv = g_h.sum((0, 1)) if need[4] and ctx.has_bias else None
    g_hl = _low(g_h, low)
    g_w = g_x = None
    if need[3]:
        g_wt = ts.new_zeros(k, G, R)
        g_wt[k - 1] = _lowp_mm(g_hl.reshape(B * T, G).t(), xl.reshape(B * T, R), low)
        for j in range(k - 1):
            shift = (k - 1 - j) * ctx.dilation
            if shift < T:  # pairs g_h[t] with x[t - shift], every batch item in one product
                g_wt[j] = _lowp_mm(g_hl[:, shift:].reshape(-1, G).t(), xl[:, : T - shift].reshape(-1, R), low)
        g_w = g_wt.permute(1, 2, 0)
    if need[0]:
        g_x = _lowp_mm(g_hl, wl[k - 1], low)  # (B, T, R)
        if g_xn is not None:
            g_x += g_xn
        for j in range(k - 1):
            shift = (k - 1 - j) * ctx.dilation
            if shift < T:
                g_x[:, : T - shift] += _lowp_mm(g_hl[:, shift:], wl[j], low)
        g_x = g_x.to(ctx.x_dtype)
    return g_x, (g_skip if need[1] else None), g_cond, g_w, g_bconv, g_wout, g_bres, None, None, None
