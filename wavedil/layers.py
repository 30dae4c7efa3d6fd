"""Causal dilated convolutions: pure helpers and thin ``nn.Module``s.

Tensors are ``(B, C, T)`` throughout: batch, channels, time.

The causal rule: a convolution with kernel ``k`` and dilation ``d`` sees the current sample and
``k - 1`` past samples spaced ``d`` apart, so it needs ``(k - 1) * d`` samples of left padding::

    k = 2, d = 4          input   . . . . x x x x x x x x
                                  |<- pad ->|
    output[t] = w0 * x[t - 4] + w1 * x[t]

Every module here has two equivalent paths:

* ``forward(x)``: the whole sequence at once, zero left padding (training).
* ``step(x, state)``: a chunk of any length ``T >= 1`` given the explicit state returned by the
  previous call (or by ``init_state``), returning ``(y, new_state)``. Feeding a sequence in
  chunks gives the same output as one ``forward`` call.

A layer's state is a ring buffer ``(B, C_in, (k - 1) * d)`` holding exactly the past inputs the
layer needs; the write position is shared by all layers of a stack (:class:`StackState`).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = [
    "causal_padding",
    "dilation_schedule",
    "receptive_field",
    "CausalConv1d",
    "ResidualBlock",
    "DilatedStack",
    "StackState",
    "receptive_field_coverage",
    "warn_if_gridded",
    "ACTIVATIONS",
    "LAYOUTS",
]


# ----------------------------------------------------------------------------- pure helpers


def _check_positive_int(name: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def causal_padding(kernel_size: int, dilation: int) -> int:
    """Left padding ``(k - 1) * d`` that makes a dilated convolution causal.

    >>> causal_padding(2, 512)
    512
    >>> causal_padding(3, 4)
    8
    """
    _check_positive_int("kernel_size", kernel_size, 2)
    _check_positive_int("dilation", dilation)
    return (kernel_size - 1) * dilation


def dilation_schedule(layers_per_stack: int, stacks: int = 1, base: int = 2) -> tuple[int, ...]:
    """Dilations ``1, base, base**2, ...`` for ``layers_per_stack`` layers, repeated ``stacks`` times.

    >>> dilation_schedule(4, 2)
    (1, 2, 4, 8, 1, 2, 4, 8)
    """
    _check_positive_int("layers_per_stack", layers_per_stack)
    _check_positive_int("stacks", stacks)
    _check_positive_int("base", base)
    return tuple(base**i for i in range(layers_per_stack)) * stacks


def _check_dilations(dilations: Sequence[int]) -> tuple[int, ...]:
    dilations = tuple(dilations)
    if len(dilations) == 0:
        raise ValueError("dilations must hold at least one layer, got an empty sequence")
    for i, d in enumerate(dilations):
        if isinstance(d, bool) or not isinstance(d, int) or d < 1:
            raise ValueError(f"dilations[{i}] must be an integer >= 1, got {d!r} in {dilations}")
    return dilations


def receptive_field(kernel_size: int, dilations: Sequence[int]) -> int:
    """Number of input samples (current one included) that one output of the stack sees.

    ``1 + (k - 1) * sum(dilations)``; for ref30 (kernel 2, 1..512 three times) that is 3070.

    >>> receptive_field(2, dilation_schedule(10, 3))
    3070
    """
    _check_positive_int("kernel_size", kernel_size, 2)
    return 1 + (kernel_size - 1) * sum(_check_dilations(dilations))


# ----------------------------------------------------------------------------- streaming state


@dataclass
class StackState:
    """Explicit streaming state of a :class:`DilatedStack` (or of a single layer).

    Attributes:
        buffers: one ring buffer per layer, ``(B, C_in, (k - 1) * d)``. Slot ``s`` of a buffer
            holds the input of time ``t`` with ``t % L == s`` (``L`` the buffer length), for the
            last ``L`` time steps; times before the start of the stream read as zeros.
        pos: number of time steps consumed so far (the write position of every ring).

    The state is plain tensors: a caller can hold it, ``clone`` it, move it, save it with
    ``torch.save`` or reset single batch items.
    """

    buffers: list[torch.Tensor]
    pos: int = 0

    @property
    def batch_size(self) -> int:
        return self.buffers[0].shape[0]

    def clone(self) -> "StackState":
        """A deep copy whose buffers share no memory with this one."""
        return StackState([b.clone() for b in self.buffers], self.pos)

    def to(self, *args, **kwargs) -> "StackState":
        """Move/cast every buffer (same arguments as ``Tensor.to``)."""
        return StackState([b.to(*args, **kwargs) for b in self.buffers], self.pos)

    def reset(self, items: int | Sequence[int] | torch.Tensor | None = None) -> "StackState":
        """Forget the past of some batch items (all when ``items`` is None), in place.

        A reset item continues as if its stream started at the next step; the other items are
        left untouched. ``items`` is an index, a sequence of indices or a boolean mask ``(B,)``.
        """
        if items is None:
            for b in self.buffers:
                b.zero_()
            self.pos = 0
            return self
        if isinstance(items, int):
            items = [items]
        idx = torch.as_tensor(items, device=self.buffers[0].device)
        if idx.dtype == torch.bool:
            if idx.shape != (self.batch_size,):
                raise ValueError(
                    f"reset mask must have shape ({self.batch_size},), got {tuple(idx.shape)}"
                )
            idx = idx.nonzero().flatten()
        if idx.numel() and (int(idx.min()) < -self.batch_size or int(idx.max()) >= self.batch_size):
            raise ValueError(f"reset indices {idx.tolist()} out of range for batch size {self.batch_size}")
        for b in self.buffers:
            b[idx] = 0
        return self

    def state_dict(self) -> dict:
        """Plain dict form (tensors and ints) for ``torch.save`` / export."""
        return {"buffers": list(self.buffers), "pos": self.pos}

    @classmethod
    def from_state_dict(cls, d: dict) -> "StackState":
        return cls(list(d["buffers"]), int(d["pos"]))


def _ring_history(buf: torch.Tensor, pos: int) -> torch.Tensor:
    """The ring buffer ``(B, C, L)`` in time order (oldest first)."""
    L = buf.shape[-1]
    shift = pos % L
    return buf if shift == 0 else torch.roll(buf, -shift, dims=-1)


def _ring_from_history(hist: torch.Tensor, pos: int) -> torch.Tensor:
    """Inverse of :func:`_ring_history`: lay a time-ordered ``(B, C, L)`` window into ring slots."""
    L = hist.shape[-1]
    shift = pos % L
    return hist.contiguous() if shift == 0 else torch.roll(hist, shift, dims=-1)


# ----------------------------------------------------------------------------- modules


class CausalConv1d(nn.Module):
    """A 1-D convolution that only looks at the present and the past.

    Args:
        in_channels: input channels ``C_in``.
        out_channels: output channels ``C_out``.
        kernel_size: taps ``k >= 2``.
        dilation: spacing ``d >= 1`` between taps.
        bias: add a learned bias.

    Shapes:
        ``forward``: ``(B, C_in, T) -> (B, C_out, T)``; output ``t`` depends on inputs
        ``t - (k-1)*d, ..., t - d, t``.

    >>> conv = CausalConv1d(1, 4, kernel_size=2, dilation=8)
    >>> conv(torch.zeros(3, 1, 100)).shape
    torch.Size([3, 4, 100])
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int = 2, dilation: int = 1, bias: bool = True
    ) -> None:
        super().__init__()
        _check_positive_int("in_channels", in_channels)
        _check_positive_int("out_channels", out_channels)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.dilation = dilation
        self.padding = causal_padding(kernel_size, dilation)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # The same initialisation as nn.Conv1d.
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1.0 / math.sqrt(self.in_channels * self.kernel_size)
            nn.init.uniform_(self.bias, -bound, bound)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"dilation={self.dilation}, bias={self.bias is not None}"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C_in, T) -> (B, C_out, T)`` with zero left padding."""
        return F.conv1d(F.pad(x, (self.padding, 0)), self.weight, self.bias, dilation=self.dilation)

    def init_buffer(self, batch_size: int, device=None, dtype=None) -> torch.Tensor:
        """An empty (all-zero) ring buffer ``(B, C_in, (k-1)*d)`` for :meth:`step`."""
        _check_positive_int("batch_size", batch_size)
        device = self.weight.device if device is None else device
        dtype = self.weight.dtype if dtype is None else dtype
        return torch.zeros(batch_size, self.in_channels, self.padding, device=device, dtype=dtype)

    def step(self, x: torch.Tensor, buf: torch.Tensor, pos: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Process the chunk ``x`` ``(B, C_in, T)`` that starts at stream time ``pos``.

        Returns ``(y (B, C_out, T), new_buffer)``. For ``T == 1`` the buffer is updated in place
        (one slot written) and the work is one small matmul: O(1) in the dilation. For longer
        chunks the past is unrolled, convolved with the chunk and laid back into the ring.
        """
        L = self.padding
        if x.shape[-1] == 1:
            k, d = self.kernel_size, self.dilation
            # taps x[t - (k-1)d], ..., x[t - d] live in slots (pos - m*d) % L, m = k-1..1
            if k == 2:
                past = buf[:, :, pos % L : pos % L + 1]  # x[t - d], (B, C_in, 1)
            else:
                slots = [(pos - m * d) % L for m in range(k - 1, 0, -1)]
                past = buf[:, :, slots]  # (B, C_in, k-1)
            window = torch.cat([past, x], dim=-1)  # (B, C_in, k)
            y = F.linear(window.flatten(1), self.weight.flatten(1), self.bias).unsqueeze(-1)
            buf[:, :, pos % L] = x[:, :, 0]  # x[t] replaces x[t - L], which no tap needs any more
            return y, buf
        full = torch.cat([_ring_history(buf, pos), x], dim=-1)  # (B, C_in, L + T)
        y = F.conv1d(full, self.weight, self.bias, dilation=self.dilation)
        return y, _ring_from_history(full[:, :, -L:], pos + x.shape[-1])


# ----------------------------------------------------------------------------- training fast path


def _fast_path_ok(x: torch.Tensor, *params: torch.Tensor | None) -> bool:
    """Whether :class:`_GatedLayer` may run: plain eager float math (no autocast, no tracing)."""
    if torch.compiler.is_compiling() or torch.jit.is_scripting() or torch.jit.is_tracing():
        return False
    if torch.is_autocast_enabled(x.device.type) or torch.is_autocast_enabled("cpu"):
        return False
    return all(p is None or (p.dtype == x.dtype and p.device == x.device) for p in params)


class _GatedLayer(torch.autograd.Function):
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


ACTIVATIONS = ("gated", "tanh", "relu", "gelu")
LAYOUTS = ("BCT", "BTC")


class ResidualBlock(nn.Module):
    """WaveNet's gated residual block (or a plain-activation variant).

    ``z = tanh(a) * sigmoid(b)`` with ``[a; b] = causal_conv(x) + cond`` (``activation="gated"``),
    or ``z = act(causal_conv(x) + cond)``; then the residual output is ``x + W_res z`` and the
    skip output is ``W_skip z`` (both 1x1, computed as one matmul).

    Args:
        residual_channels: channels ``R`` of the input and residual output.
        gate_channels: channels of the dilated conv output; with ``gated`` they are split in two
            halves for tanh/sigmoid (must be even).
        skip_channels: channels ``S`` of the skip output (0: no skip output).
        kernel_size, dilation: of the dilated causal convolution.
        global_cond_channels: size ``G`` of a per-sequence conditioning vector ``(B, G)`` added
            to the gate (0: none).
        local_cond_channels: channels ``L`` of a per-sample conditioning signal ``(B, L, T)``
            added to the gate through a 1x1 conv (0: none).
        activation: ``gated`` (WaveNet), ``tanh``, ``relu`` or ``gelu``.
        dropout: dropout probability on ``z`` during training.
        weight_norm: reparametrise the dilated and the 1x1 convolutions with weight norm.

    Shapes: ``x (B, R, T) -> (residual (B, R, T), skip (B, S, T) or None)``.
    """

    def __init__(
        self,
        residual_channels: int,
        gate_channels: int,
        skip_channels: int,
        kernel_size: int = 2,
        dilation: int = 1,
        global_cond_channels: int = 0,
        local_cond_channels: int = 0,
        activation: str = "gated",
        dropout: float = 0.0,
        weight_norm: bool = False,
    ) -> None:
        super().__init__()
        _check_positive_int("residual_channels", residual_channels)
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        gated = activation == "gated"
        _check_positive_int("gate_channels", gate_channels, 2 if gated else 1)
        if gated and gate_channels % 2:
            raise ValueError(f"gate_channels must be even (two halves for tanh and sigmoid), got {gate_channels}")
        _check_positive_int("skip_channels", skip_channels, 0)
        _check_positive_int("global_cond_channels", global_cond_channels, 0)
        _check_positive_int("local_cond_channels", local_cond_channels, 0)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.residual_channels = residual_channels
        self.skip_channels = skip_channels
        self.activation = activation
        self.conv = CausalConv1d(residual_channels, gate_channels, kernel_size, dilation)
        self.gc = nn.Linear(global_cond_channels, gate_channels, bias=False) if global_cond_channels else None
        self.lc = nn.Conv1d(local_cond_channels, gate_channels, 1, bias=False) if local_cond_channels else None
        self.dropout = nn.Dropout(dropout) if dropout > 0 else None
        # residual and skip 1x1 projections fused into one (R + S, z) matmul
        self.out = nn.Conv1d(gate_channels // 2 if gated else gate_channels, residual_channels + skip_channels, 1)
        if weight_norm:
            wn = nn.utils.parametrizations.weight_norm
            self.conv, self.out = wn(self.conv), wn(self.out)

    def _gate(
        self, h: torch.Tensor, global_cond: torch.Tensor | None, local_cond: torch.Tensor | None, dim: int = 1
    ) -> torch.Tensor:
        """Conditioning, activation and dropout on ``h``, whose channels are on ``dim`` (1: BCT, -1: BTC)."""
        for c in self._cond_terms(global_cond, local_cond, dim):
            h = h + c
        if self.activation == "gated":
            a, b = h.chunk(2, dim=dim)
            z = torch.tanh(a) * torch.sigmoid(b)
        else:
            z = {"tanh": torch.tanh, "relu": F.relu, "gelu": F.gelu}[self.activation](h)
        return self.dropout(z) if self.dropout is not None else z

    def _cond_terms(
        self, global_cond: torch.Tensor | None, local_cond: torch.Tensor | None, dim: int = 1
    ) -> list[torch.Tensor]:
        """The conditioning terms added to the conv output before the gate (global first), each
        broadcastable to it; channels on ``dim`` (1: BCT, -1: BTC). Checks that each is given."""
        terms = []
        if self.gc is not None:
            if global_cond is None:
                raise ValueError("this block was built with global conditioning: pass global_cond (B, G)")
            terms.append(self.gc(global_cond).unsqueeze(-1 if dim == 1 else 1))
        if self.lc is not None:
            if local_cond is None:
                raise ValueError("this block was built with local conditioning: pass local_cond (B, L, T)")
            terms.append(self.lc(local_cond) if dim == 1 else F.linear(local_cond, self.lc.weight[:, :, 0]))
        return terms

    def _outputs(self, x: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        rs = self.out(z)
        R = self.residual_channels
        return x + rs[:, :R], (rs[:, R:] if self.skip_channels else None)

    def forward(
        self, x: torch.Tensor, global_cond: torch.Tensor | None = None, local_cond: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``x (B, R, T) -> (residual (B, R, T), skip (B, S, T) or None)``."""
        return self._outputs(x, self._gate(self.conv(x), global_cond, local_cond))

    def forward_btc(
        self,
        x: torch.Tensor,
        skip_acc: torch.Tensor | None,
        global_cond: torch.Tensor | None = None,
        local_cond: torch.Tensor | None = None,
        inplace_skip: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The training fast path, channels last: ``x (B, T, R)``, ``skip_acc (B, T, S)``.

        Returns ``(residual (B, T, R), skip_acc + W_skip z)`` *without* the skip bias (the
        stack adds the sum of all skip biases once). Every product is one matrix multiply over
        ``B*T`` rows (the taps of the dilated conv are time-shifted row blocks of ``x``) and the
        skip accumulation is fused into its matmul (``addmm``), which is what makes this path
        faster than per-layer ``conv1d`` s on a CPU.

        The gated block without dropout runs as one autograd function (:class:`_GatedLayer`)
        that saves only ``x``, ``tanh`` and ``sigmoid`` of the gate; other blocks, autocast and
        ``torch.compile`` take the plain autograd form. ``inplace_skip``: accumulate into
        ``skip_acc`` itself (the stack does so for the sums it owns).
        """
        if (
            self.activation == "gated"
            and self.skip_channels
            and (self.dropout is None or not self.training)
            and _fast_path_ok(x, self.conv.weight, skip_acc)
        ):
            terms = self._cond_terms(global_cond, local_cond, dim=-1)
            cond = terms[0] if len(terms) == 1 else (terms[0] + terms[1] if terms else None)
            R = self.residual_channels
            return _GatedLayer.apply(
                x, skip_acc, cond, self.conv.weight, self.conv.bias, self.out.weight[:, :, 0], self.out.bias[:R],
                self.conv.dilation, inplace_skip and skip_acc is not None,
            )
        return self._forward_btc_autograd(x, skip_acc, global_cond, local_cond)

    def _forward_btc_autograd(
        self,
        x: torch.Tensor,
        skip_acc: torch.Tensor | None,
        global_cond: torch.Tensor | None = None,
        local_cond: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:meth:`forward_btc` in plain autograd ops (any block; autocast; ``torch.compile``)."""
        B, T, R = x.shape
        k, d = self.conv.kernel_size, self.conv.dilation
        w = self.conv.weight  # (G, R, k); tap j multiplies x[t - (k-1-j) d]
        G = w.shape[0]
        # All k taps in one matmul: y[..., j*G:(j+1)*G] = W_j x[t]; the bias rides on the current tap.
        bias = self.conv.bias
        if bias is not None:
            bias = torch.cat([bias.new_zeros((k - 1) * G), bias])
        y = F.linear(x, w.permute(2, 0, 1).reshape(k * G, R), bias)  # (B, T, k*G)
        h = y[..., (k - 1) * G :]  # the current tap; past taps are added shifted in time, in place
        for j in range(k - 1):
            shift = (k - 1 - j) * d
            if shift < T:
                h[:, shift:] += y[:, : T - shift, j * G : (j + 1) * G]
        z = self._gate(h, global_cond, local_cond, dim=-1)  # (B, T, Z)
        w_out = self.out.weight[:, :, 0]  # (R + S, Z)
        x = x + F.linear(z, w_out[:R], self.out.bias[:R])
        if self.skip_channels:
            z2 = z.reshape(B * T, -1)
            w_skip = w_out[R:].t()
            skip2 = torch.mm(z2, w_skip) if skip_acc is None else torch.addmm(skip_acc.reshape(B * T, -1), z2, w_skip)
            skip_acc = skip2.view(B, T, -1)
        return x, skip_acc

    def step(
        self,
        x: torch.Tensor,
        buf: torch.Tensor,
        pos: int,
        global_cond: torch.Tensor | None = None,
        local_cond: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Streaming form of :meth:`forward` for a chunk starting at ``pos``.

        Returns ``(residual (B, R, T), skip (B, S, T) or None, new_buffer)``; ``local_cond`` is
        the chunk's own ``(B, L, T)`` slice.
        """
        h, buf = self.conv.step(x, buf, pos)
        res, skip = self._outputs(x, self._gate(h, global_cond, local_cond))
        return res, skip, buf


class DilatedStack(nn.Module):
    """A stack of :class:`ResidualBlock` s with a dilation schedule; the skips are summed.

    Args:
        residual_channels: ``R``, channels of the input and of the residual path.
        gate_channels: channels of each dilated conv (two halves for the gate); default ``2R``.
        skip_channels: ``S``, channels of the summed skip output; default ``R``; 0: no skips
            (use the residual output).
        kernel_size: taps of every dilated conv (``>= 2``).
        dilations: explicit dilation per layer; or leave None and give ``layers_per_stack`` and
            ``stacks`` for ``1, 2, 4, ...`` repeated.
        global_cond_channels, local_cond_channels: conditioning inputs (0: none).
        activation, dropout, weight_norm: see :class:`ResidualBlock`.
        layout: ``"BCT"`` (default) or ``"BTC"`` for inputs, outputs and ``local_cond``
            ordered ``(batch, time, channels)``.
        checkpoint_segments: if > 0, training forwards keep only the activations at the
            boundaries of this many groups of layers and recompute the rest in the backward
            pass (``torch.utils.checkpoint``): less memory for long segments, more compute.

    Shapes:
        ``forward(x (B, R, T)) -> (residual (B, R, T), skip_sum (B, S, T) or None)``.

    >>> stack = DilatedStack(16, layers_per_stack=4, stacks=2)
    >>> res, skip = stack(torch.randn(2, 16, 50))
    >>> skip.shape, stack.receptive_field
    (torch.Size([2, 16, 50]), 31)
    """

    def __init__(
        self,
        residual_channels: int,
        gate_channels: int | None = None,
        skip_channels: int | None = None,
        kernel_size: int = 2,
        dilations: Sequence[int] | None = None,
        layers_per_stack: int | None = None,
        stacks: int = 1,
        global_cond_channels: int = 0,
        local_cond_channels: int = 0,
        activation: str = "gated",
        dropout: float = 0.0,
        weight_norm: bool = False,
        layout: str = "BCT",
        checkpoint_segments: int = 0,
    ) -> None:
        super().__init__()
        _check_positive_int("checkpoint_segments", checkpoint_segments, 0)
        self.checkpoint_segments = checkpoint_segments
        if dilations is None:
            if layers_per_stack is None:
                raise ValueError("give either dilations=(...) or layers_per_stack (and stacks)")
            dilations = dilation_schedule(layers_per_stack, stacks)
        elif layers_per_stack is not None:
            raise ValueError(
                f"give dilations={tuple(dilations)} or layers_per_stack={layers_per_stack}, not both"
            )
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        self.dilations = _check_dilations(dilations)
        _check_positive_int("kernel_size", kernel_size, 2)
        _check_positive_int("residual_channels", residual_channels)
        self.kernel_size = kernel_size
        self.residual_channels = residual_channels
        self.layout = layout
        self.gate_channels = 2 * residual_channels if gate_channels is None else gate_channels
        self.skip_channels = residual_channels if skip_channels is None else skip_channels
        self.layers = nn.ModuleList(
            ResidualBlock(
                residual_channels,
                self.gate_channels,
                self.skip_channels,
                kernel_size,
                d,
                global_cond_channels,
                local_cond_channels,
                activation,
                dropout,
                weight_norm,
            )
            for d in self.dilations
        )
        warn_if_gridded(kernel_size, self.dilations)

    @property
    def receptive_field(self) -> int:
        """Input samples seen by one output: ``1 + (k - 1) * sum(dilations)``."""
        return receptive_field(self.kernel_size, self.dilations)

    def _to_bct(self, t: torch.Tensor | None) -> torch.Tensor | None:
        return t.transpose(1, 2) if t is not None and self.layout == "BTC" else t

    def _from_bct(self, res: torch.Tensor, skip: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self._to_bct(res), self._to_bct(skip)  # the transpose is its own inverse

    def forward(
        self, x: torch.Tensor, global_cond: torch.Tensor | None = None, local_cond: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``x (B, R, T) -> (residual (B, R, T), skip_sum (B, S, T) or None)``.

        ``global_cond``: ``(B, G)``; ``local_cond``: ``(B, L, T)``, already at the sample rate.
        With ``layout="BTC"`` every ``(B, C, T)`` here is ``(B, T, C)``.
        """
        x, local_cond = self._to_bct(x), self._to_bct(local_cond)
        self._check_input(x)
        # Work channels last, (B, T, C): every product becomes one matmul over B*T rows.
        lt = local_cond.transpose(1, 2) if local_cond is not None else None
        xt, skip = self._forward_btc(x.transpose(1, 2), global_cond, lt)
        if self.layout == "BTC":
            return xt, skip
        return xt.transpose(1, 2), (skip.transpose(1, 2) if skip is not None else None)

    def _forward_btc(
        self, xt: torch.Tensor, global_cond: torch.Tensor | None, local_cond: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``forward`` on channels-last tensors ``(B, T, R)`` -> ``((B, T, R), (B, T, S))``, no checks."""
        xt, lt = xt.contiguous(), local_cond
        n = len(self.layers)
        if self.checkpoint_segments > 0 and self.training and torch.is_grad_enabled():
            groups = min(self.checkpoint_segments, n)
            bounds = [round(i * n / groups) for i in range(groups + 1)]
            skip = None
            for lo, hi in zip(bounds[:-1], bounds[1:]):
                xt, skip = checkpoint(self._run_layers, lo, hi, xt, skip, global_cond, lt, use_reentrant=False)
        else:
            xt, skip = self._run_layers(0, n, xt, None, global_cond, lt)
        if skip is not None:
            skip = skip + sum(layer.out.bias[layer.residual_channels :] for layer in self.layers)
        return xt, skip

    def _run_layers(
        self,
        lo: int,
        hi: int,
        x: torch.Tensor,
        skip: torch.Tensor | None,
        global_cond: torch.Tensor | None,
        local_cond: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        for i, layer in enumerate(self.layers[lo:hi]):
            # the first layer leaves the incoming sum alone (a checkpointed group may be rerun
            # from it); the later ones add into the sum this call created
            x, skip = layer.forward_btc(x, skip, global_cond, local_cond, inplace_skip=i > 0)
        return x, skip

    def init_state(self, batch_size: int, device=None, dtype=None) -> StackState:
        """A fresh streaming state for ``batch_size`` sequences (all pasts are silence/zeros)."""
        return StackState([layer.conv.init_buffer(batch_size, device, dtype) for layer in self.layers], 0)

    def step(
        self,
        x: torch.Tensor,
        state: StackState,
        global_cond: torch.Tensor | None = None,
        local_cond: torch.Tensor | None = None,
    ) -> tuple[tuple[torch.Tensor, torch.Tensor | None], StackState]:
        """Streaming form of :meth:`forward` for the next chunk ``x (B, R, T)``, any ``T >= 1``.

        Returns ``((residual (B, R, T), skip_sum (B, S, T) or None), new_state)``. Single-sample
        steps update the ring buffers in place and cost O(layers); the returned state is the one
        to pass to the next call. ``local_cond`` is the chunk's own ``(B, L, T)`` slice.
        """
        x, local_cond = self._to_bct(x), self._to_bct(local_cond)
        self._check_input(x)
        if len(state.buffers) != len(self.layers) or state.batch_size != x.shape[0]:
            raise ValueError(
                f"state holds {len(state.buffers)} layers for batch {state.batch_size}, but the stack has "
                f"{len(self.layers)} layers and x has batch {x.shape[0]}: create it with init_state(batch_size)"
            )
        pos = state.pos
        buffers = []
        skip_sum = None
        for layer, buf in zip(self.layers, state.buffers):
            x, skip, buf = layer.step(x, buf, pos, global_cond, local_cond)
            buffers.append(buf)
            if skip is not None:
                skip_sum = skip if skip_sum is None else skip_sum + skip
        return self._from_bct(x, skip_sum), StackState(buffers, pos + x.shape[-1])

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 3 or x.shape[1] != self.residual_channels or x.shape[-1] < 1:
            want = f"(B, T, {self.residual_channels})" if self.layout == "BTC" else f"(B, {self.residual_channels}, T)"
            got = tuple(self._to_bct(x).shape) if x.dim() == 3 else tuple(x.shape)
            raise ValueError(f"expected input {want} with T >= 1, got shape {got}")

    def coverage(self) -> float:
        """Fraction of the receptive field's input positions that some path reaches (1.0: no holes)."""
        return receptive_field_coverage(self.kernel_size, self.dilations)


def receptive_field_coverage(kernel_size: int, dilations: Sequence[int]) -> float:
    """Fraction of the ``receptive_field`` input offsets reachable through the stack's paths.

    Every path through the residual stack either skips a layer (residual) or takes one of its
    ``k`` taps, so the reachable offsets are the subset sums ``sum_i m_i d_i`` with
    ``0 <= m_i < k``. A schedule with holes ("gridding") leaves some offsets unreachable.
    """
    dilations = _check_dilations(dilations)
    rf = receptive_field(kernel_size, dilations)
    reach = torch.zeros(rf, dtype=torch.bool)
    reach[0] = True
    for d in dilations:
        new = reach.clone()
        for m in range(1, kernel_size):
            new[m * d :] |= reach[: rf - m * d]
        reach = new
    return float(reach.float().mean())


def warn_if_gridded(kernel_size: int, dilations: Sequence[int]) -> None:
    """Warn when the schedule leaves holes in its receptive field."""
    cov = receptive_field_coverage(kernel_size, dilations)
    if cov < 1.0:
        warnings.warn(
            f"dilations {tuple(dilations)} with kernel {kernel_size} reach only {cov:.1%} of the "
            "receptive field (gridding): start each cycle at dilation 1 and grow by at most the kernel size",
            stacklevel=3,
        )
