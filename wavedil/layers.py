"""The causal dilated stack's ``nn.Module`` s: :class:`CausalConv1d`, :class:`ResidualBlock`, :class:`DilatedStack`.

Tensors are ``(B, C, T)`` throughout: batch, channels, time. The arithmetic lives elsewhere and
is re-exported here, so ``from wavedil.layers import ...`` keeps working for every public name:

* :mod:`wavedil.causal`: padding, dilation schedules, receptive field and gridding checks;
* :mod:`wavedil.streaming`: :class:`StackState` and the ring buffers it holds;
* :mod:`wavedil.gated`: the training kernel of a gated layer (:class:`GatedLayerFunction`).

Every module here has two equivalent paths:

* ``forward(x)``: the whole sequence at once, zero left padding (training).
* ``step(x, state)``: a chunk of any length ``T >= 1`` given the explicit state returned by the
  previous call (or by ``init_state``), returning ``(y, new_state)``. Feeding a sequence in
  chunks gives the same output as one ``forward`` call.

A layer's state is a ring buffer ``(B, C_in, (k - 1) * d)`` holding exactly the past inputs the
layer needs; the write position is shared by all layers of a stack (:class:`StackState`).
"""

from __future__ import annotations

import contextlib
import math
import threading
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint, noop_context_fn

from .causal import (
    causal_padding,
    check_dilations,
    check_positive_int,
    dilation_schedule,
    receptive_field,
    receptive_field_coverage,
    warn_if_gridded,
)
from .gated import EMULATED_BF16, NOT_TAKEN, GatedLayerFunction, gated_fast_path
from .streaming import (
    StackState,
    StepWeights,
    StepWorkspace,
    check_pos,
    new_ring,
    ring_conv_step,
    single_step,
    tap_slots,
)

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

#: The training kernel's former private name (kept for callers that imported it from here).
_GatedLayer = GatedLayerFunction

ACTIVATIONS = ("gated", "tanh", "relu", "gelu")
LAYOUTS = ("BCT", "BTC")


def _autocast_on(device_type: str) -> bool:
    """Whether autocast is enabled for ``device_type`` (then mixed input/weight dtypes are fine)."""
    try:
        return torch.is_autocast_enabled(device_type)
    except (TypeError, RuntimeError):  # an unusual device type autocast does not know
        return False


def check_tensor_input(name: str, x: object, weight: torch.Tensor) -> None:
    """A ``ValueError`` unless ``x`` is a float tensor of ``weight``'s dtype (any dtype under autocast)
    on ``weight``'s device. O(1): no data is read."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.device != weight.device:
        raise ValueError(
            f"{name} is on {x.device} but the weights are on {weight.device}: move it with {name}.to({str(weight.device)!r})"
        )
    if x.dtype != weight.dtype and not (x.is_floating_point() and _autocast_on(x.device.type)):
        hint = (
            f"convert it with {name}.to({weight.dtype}) (or the module with .to({x.dtype}))"
            if x.is_floating_point()
            else f"pass float features ({weight.dtype})"
        )
        raise ValueError(f"{name} has dtype {x.dtype} but the weights are {weight.dtype}: {hint}")


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
        check_positive_int("in_channels", in_channels)
        check_positive_int("out_channels", out_channels)
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
        self._check_x(x)
        return F.conv1d(F.pad(x, (self.padding, 0)), self.weight, self.bias, dilation=self.dilation)

    def _check_x(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or x.dim() != 3 or x.shape[1] != self.in_channels or x.shape[-1] < 1:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"expected input (B, {self.in_channels}, T) with T >= 1, got {got}")
        check_tensor_input("x", x, next(self.parameters()))

    def init_buffer(
        self, batch_size: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> torch.Tensor:
        """An empty (all-zero) ring buffer ``(B, C_in, (k-1)*d)`` for :meth:`step`."""
        check_positive_int("batch_size", batch_size)
        try:
            device = self.weight.device if device is None else torch.device(device)
        except (RuntimeError, TypeError):
            raise ValueError(
                f"device must be a torch device such as 'cpu' or 'cuda:0' (the weights are on {self.weight.device}), "
                f"got {device!r}"
            ) from None
        dtype = self.weight.dtype if dtype is None else dtype
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise ValueError(f"dtype must be a float torch.dtype (the weights are {self.weight.dtype}), got {dtype!r}")
        return new_ring(batch_size, self.in_channels, self.padding, device=device, dtype=dtype)

    def step(self, x: torch.Tensor, buf: torch.Tensor, pos: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Process the chunk ``x`` ``(B, C_in, T)`` that starts at stream time ``pos``.

        Returns ``(y (B, C_out, T), new_buffer)``. For ``T == 1`` the buffer is updated in place
        (one slot written) and the work is one small matmul: O(1) in the dilation. For longer
        chunks the past is unrolled, convolved with the chunk and laid back into the ring. A ring
        made under ``torch.inference_mode`` and stepped outside it is copied first (it cannot be
        written there): use the returned buffer.

        Raises:
            ValueError: ``x``, ``buf`` or ``pos`` that do not fit: the ring must be
                ``init_buffer(B)``'s shape, in the weights' dtype and on their device.
        """
        self._check_x(x)
        pos = check_pos(pos, "pos")
        want = (x.shape[0], self.in_channels, self.padding)
        if not isinstance(buf, torch.Tensor) or tuple(buf.shape) != want:
            got = tuple(buf.shape) if isinstance(buf, torch.Tensor) else type(buf).__name__
            raise ValueError(f"buf must be the ring (B, C_in, (k-1)*d) = {want} from init_buffer({x.shape[0]}), got {got}")
        if not buf.is_floating_point():  # an integer ring would truncate what it holds, silently
            raise ValueError(
                f"buf must be a float ring ({self.weight.dtype}, the weights' dtype) from init_buffer({x.shape[0]}), "
                f"got dtype {buf.dtype}"
            )
        check_tensor_input("buf", buf, self.weight)
        if x.shape[-1] == 1 and buf.is_inference() and not torch.is_inference_mode_enabled():
            buf = buf.clone()  # a ring made under torch.inference_mode cannot be written outside it: step a copy
        return self._step(x, buf, pos)

    def _step(self, x: torch.Tensor, buf: torch.Tensor, pos: int) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`step` without its checks (the stack checked the whole state once)."""
        if x.shape[-1] == 1:
            past, write = tap_slots(pos, self.kernel_size, self.dilation)
            window = torch.cat([buf[:, :, past], x], dim=-1)  # (B, C_in, k), oldest tap first
            y = F.linear(window.flatten(1), self.weight.flatten(1), self.bias).unsqueeze(-1)
            buf[:, :, write] = x[:, :, 0]  # after the read: with k = 2 the tap shares the slot
            return y, buf
        return ring_conv_step(x, buf, pos, self.weight, self.bias, self.dilation)


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
        check_positive_int("residual_channels", residual_channels)
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        gated = activation == "gated"
        check_positive_int("gate_channels", gate_channels, 2 if gated else 1)
        if gated and gate_channels % 2:
            raise ValueError(f"gate_channels must be even (two halves for tanh and sigmoid), got {gate_channels}")
        check_positive_int("skip_channels", skip_channels, 0)
        check_positive_int("global_cond_channels", global_cond_channels, 0)
        check_positive_int("local_cond_channels", local_cond_channels, 0)
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be a number in [0, 1), got {dropout!r}")
        if not isinstance(weight_norm, bool):
            raise ValueError(f"weight_norm must be True or False, got {weight_norm!r}")
        self.residual_channels = residual_channels
        self.skip_channels = skip_channels
        self.activation = activation
        self.conv = CausalConv1d(residual_channels, gate_channels, kernel_size, dilation)
        # ``gc`` / ``lc`` are the checkpoint keys (``layers.<i>.gc.weight``); read them through
        # :attr:`global_cond_proj` / :attr:`local_cond_proj`.
        self.gc = nn.Linear(global_cond_channels, gate_channels, bias=False) if global_cond_channels else None
        self.lc = nn.Conv1d(local_cond_channels, gate_channels, 1, bias=False) if local_cond_channels else None
        self.dropout = nn.Dropout(dropout) if dropout > 0 else None
        # residual and skip 1x1 projections fused into one (R + S, z) matmul
        self.out = nn.Conv1d(gate_channels // 2 if gated else gate_channels, residual_channels + skip_channels, 1)
        if weight_norm:
            wn = nn.utils.parametrizations.weight_norm
            self.conv, self.out = wn(self.conv), wn(self.out)

    @property
    def global_cond_proj(self) -> nn.Linear | None:
        """The projection ``(B, G) -> (B, gate_channels)`` of the global conditioning (None: unconditioned)."""
        return self.gc

    @property
    def local_cond_proj(self) -> nn.Conv1d | None:
        """The 1x1 conv ``(B, L, T) -> (B, gate_channels, T)`` of the local conditioning (None: unconditioned)."""
        return self.lc

    def gate(
        self, h: torch.Tensor, global_cond: torch.Tensor | None, local_cond: torch.Tensor | None, dim: int = 1
    ) -> torch.Tensor:
        """Conditioning, activation and dropout on the conv output ``h``, channels on ``dim``.

        ``h`` is ``(B, gate_channels, T)`` (``dim=1``) or ``(B, T, gate_channels)`` (``dim=-1``);
        returns ``z`` ``(B, Z, T)`` / ``(B, T, Z)``, ``Z`` half the gate channels when gated.
        """
        for c in self.cond_terms(global_cond, local_cond, dim):
            h = h + c
        if self.activation == "gated":
            a, b = h.chunk(2, dim=dim)
            z = torch.tanh(a) * torch.sigmoid(b)
        else:
            z = {"tanh": torch.tanh, "relu": F.relu, "gelu": F.gelu}[self.activation](h)
        return self.dropout(z) if self.dropout is not None else z

    def cond_terms(
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

    @property
    def fused_training_ok(self) -> bool:
        """Whether the fused training kernels apply: a gated block with a skip output and no
        dropout in training (:class:`~wavedil.gated.GatedLayerFunction`, ``wavedil.gated_lowp``)."""
        return self.activation == "gated" and bool(self.skip_channels) and (self.dropout is None or not self.training)

    def cond_sum_btc(self, global_cond: torch.Tensor | None, local_cond: torch.Tensor | None) -> torch.Tensor | None:
        """The conditioning terms added together, channels last (broadcastable to ``(B, T, G)``), or None."""
        terms = self.cond_terms(global_cond, local_cond, dim=-1)
        return terms[0] if len(terms) == 1 else (terms[0] + terms[1] if terms else None)

    def residual_and_skip(self, x: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(x + W_res z + b_res, W_skip z + b_skip or None)`` for ``x (B, R, T)`` and the gate output ``z (B, Z, T)``."""
        rs = self.out(z)
        R = self.residual_channels
        return x + rs[:, :R], (rs[:, R:] if self.skip_channels else None)

    def forward(
        self, x: torch.Tensor, global_cond: torch.Tensor | None = None, local_cond: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``x (B, R, T) -> (residual (B, R, T), skip (B, S, T) or None)``."""
        h = self.conv(x)  # checks x
        self.check_cond(global_cond, local_cond, x)
        return self.residual_and_skip(x, self.gate(h, global_cond, local_cond))

    def check_cond(self, global_cond: torch.Tensor | None, local_cond: torch.Tensor | None, x: torch.Tensor) -> None:
        """A ``ValueError`` naming the problem unless the conditioning fits this block and
        ``x (B, R, T)``: ``global_cond (B, G)``, ``local_cond (B, L, T)``, each given exactly when
        the block was built with it, in ``x``'s dtype and device. O(1)."""
        B, T = x.shape[0], x.shape[-1]
        for name, proj, given, want in (
            ("global_cond", self.gc, global_cond, None if self.gc is None else (B, self.gc.in_features)),
            ("local_cond", self.lc, local_cond, None if self.lc is None else (B, self.lc.in_channels, T)),
        ):
            if proj is None:
                if given is not None:
                    raise ValueError(
                        f"this block was built without {name.replace('_cond', '')} conditioning "
                        f"({name.replace('_cond', '_cond_channels')}=0): do not pass {name}"
                    )
                continue
            if given is None:
                shape = "(B, G)" if name == "global_cond" else "(B, L, T)"
                raise ValueError(f"this block was built with {name.replace('_cond', '')} conditioning: pass {name} {shape}")
            if not isinstance(given, torch.Tensor) or tuple(given.shape) != want:
                got = tuple(given.shape) if isinstance(given, torch.Tensor) else type(given).__name__
                raise ValueError(f"{name} must be {want} for x of shape {tuple(x.shape)} (B, R, T), got {got}")
            check_tensor_input(name, given, proj.weight)

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

        The gated block without dropout runs as one autograd function
        (:class:`~wavedil.gated.GatedLayerFunction`) that saves only ``x``, ``tanh`` and
        ``sigmoid`` of the gate; under bf16 autocast its matmuls run in bf16 on the fp32
        weights (a :class:`DilatedStack` on the CPU runs its gated layers through
        :func:`~wavedil.gated_lowp.run_layers_lowp` instead). Other blocks, fp16 autocast and
        ``torch.compile`` take the plain autograd form.
        ``inplace_skip``: accumulate into ``skip_acc`` itself (the stack does so for the sums it owns).
        """
        mode = NOT_TAKEN
        if self.fused_training_ok:
            mode = gated_fast_path(x, self.conv.weight, skip_acc)
        if mode == NOT_TAKEN:
            return self._forward_btc_autograd(x, skip_acc, global_cond, local_cond)
        cond = self.cond_sum_btc(global_cond, local_cond)
        R = self.residual_channels
        return GatedLayerFunction.apply(
            x, skip_acc, cond, self.conv.weight, self.conv.bias, self.out.weight[:, :, 0], self.out.bias[:R],
            self.conv.dilation, inplace_skip and skip_acc is not None, mode,
        )

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
        z = self.gate(h, global_cond, local_cond, dim=-1)  # (B, T, Z)
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
        self.check_cond(global_cond, local_cond, x)
        res, skip = self.residual_and_skip(x, self.gate(h, global_cond, local_cond))
        return res, skip, buf

    def _step(self, x, buf, pos, global_cond=None, local_cond=None):
        """:meth:`step` without its checks (the stack checked its inputs and state once per call)."""
        h, buf = self.conv._step(x, buf, pos)
        res, skip = self.residual_and_skip(x, self.gate(h, global_cond, local_cond))
        return res, skip, buf


def _recompute_context():
    """The ``context_fn`` of the checkpointed groups: the backward recomputes a group under the
    modes its forward ran in. torch restores autocast itself; bf16 emulation
    (``trainer.precision=bf16-emulated``, a :class:`~wavedil.emulation.Bf16MatmulEmulation` mode)
    it does not, and a recomputation in plain float32 saved other tensors than the forward
    (torch's CheckpointError) and would have computed other numbers."""
    from .emulation import Bf16MatmulEmulation, bf16_emulation_active

    if not bf16_emulation_active():
        return noop_context_fn
    return lambda: (contextlib.nullcontext(), Bf16MatmulEmulation())


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
        check_positive_int("checkpoint_segments", checkpoint_segments, 0)
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
        self.dilations = check_dilations(dilations)
        check_positive_int("kernel_size", kernel_size, 2)
        check_positive_int("residual_channels", residual_channels)
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
        self.register_load_state_dict_post_hook(DilatedStack._forget_step_cache)

    @property
    def receptive_field(self) -> int:
        """Input samples seen by one output: ``1 + (k - 1) * sum(dilations)``."""
        return receptive_field(self.kernel_size, self.dilations)

    def _to_bct(self, t: torch.Tensor | None) -> torch.Tensor | None:
        if self.layout == "BTC" and isinstance(t, torch.Tensor) and t.dim() == 3:
            return t.transpose(1, 2)
        return t  # BCT, or a wrong input that the checks name as given

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
        self.layers[0].check_cond(global_cond, local_cond, x)
        # Work channels last, (B, T, C): every product becomes one matmul over B*T rows.
        lt = local_cond.transpose(1, 2) if local_cond is not None else None
        xt, skip = self.forward_btc(x.transpose(1, 2), global_cond, lt)
        if self.layout == "BTC":
            return xt, skip
        return xt.transpose(1, 2), (skip.transpose(1, 2) if skip is not None else None)

    def forward_btc(
        self,
        xt: torch.Tensor,
        global_cond: torch.Tensor | None = None,
        local_cond: torch.Tensor | None = None,
        *,
        skip_bias: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:meth:`forward` on channels-last tensors, whatever ``layout``, without shape checks.

        ``xt (B, T, R)``, ``global_cond (B, G)``, ``local_cond (B, T, L)`` ->
        ``(residual (B, T, R), skip_sum (B, T, S) or None)``: what a model that keeps its
        activations channels last (every product one matmul over ``B*T`` rows) calls directly.
        ``skip_bias=False`` leaves the skip biases out of the sum (:meth:`skip_bias` is their sum;
        a head that adds it in its own kernel wants the sum without it).
        """
        xt, lt = xt.contiguous(), local_cond
        n = len(self.layers)
        if self.checkpoint_segments > 0 and self.training and torch.is_grad_enabled():
            groups = min(self.checkpoint_segments, n)
            bounds = [round(i * n / groups) for i in range(groups + 1)]
            skip = None
            context = _recompute_context()
            for lo, hi in zip(bounds[:-1], bounds[1:]):
                xt, skip = checkpoint(
                    self._run_layers, lo, hi, xt, skip, global_cond, lt, use_reentrant=False, context_fn=context
                )
        else:
            xt, skip = self._run_layers(0, n, xt, None, global_cond, lt)
        if skip is not None and skip_bias:
            skip = skip + self.skip_bias()
        return xt, skip

    def skip_bias(self) -> torch.Tensor:
        """``(S,)``: the sum of the layers' skip biases, which :meth:`forward_btc` adds once."""
        return sum(layer.out.bias[layer.residual_channels :] for layer in self.layers)

    def lowp_mode(self, x: torch.Tensor) -> torch.dtype | str | None:
        """How the whole stack's training forward runs on ``x (B, T, R)``: ``torch.bfloat16`` or
        ``"bf16-emulated"`` (the bf16 kernels of :mod:`wavedil.gated_lowp`), or ``None``."""
        return self._lowp_mode(0, len(self.layers), x)

    def _run_layers(
        self,
        lo: int,
        hi: int,
        x: torch.Tensor,
        skip: torch.Tensor | None,
        global_cond: torch.Tensor | None,
        local_cond: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        mode = self._lowp_mode(lo, hi, x)
        if mode is not None:
            from .gated_lowp import run_layers_lowp

            return run_layers_lowp(self.layers[lo:hi], x, skip, global_cond, local_cond, mode)
        for i, layer in enumerate(self.layers[lo:hi]):
            # the first layer leaves the incoming sum alone (a checkpointed group may be rerun
            # from it); the later ones add into the sum this call created
            x, skip = layer.forward_btc(x, skip, global_cond, local_cond, inplace_skip=i > 0)
        return x, skip

    def _lowp_mode(self, lo: int, hi: int, x: torch.Tensor):
        """The precision of :func:`~wavedil.gated_lowp.run_layers_lowp` for layers ``lo:hi`` on
        ``x``, or ``None`` for the per-layer path: bf16 (or its emulation) on the CPU, every layer
        gated with a skip output and no dropout in training."""
        if x.device.type != "cpu" or not all(layer.fused_training_ok for layer in self.layers[lo:hi]):
            return None
        mode = gated_fast_path(x, self.layers[lo].conv.weight)
        return mode if mode in (torch.bfloat16, EMULATED_BF16) else None

    def init_state(
        self, batch_size: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> StackState:
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

        Without autograd (``torch.no_grad`` / ``inference_mode``, or nothing requiring a
        gradient) a single-sample step of an eval-mode stack takes the lean path
        (:func:`~wavedil.streaming.single_step`): weights packed once per parameter update
        (checked by the parameters' versions each call), one matmul per product, no tensor
        allocated per layer. Chunks, training-mode dropout and autograd take the per-layer path.
        The lean path's scratch tensors are per thread: threads may step one stack at the same time,
        each with its own state.

        Checked on every call, O(1): ``x``'s shape, dtype and device, the conditioning's shapes, and
        the state's batch size and position. A state this stack did not make or return (another
        stack's, built by hand, loaded, moved with ``to``) has its rings checked once. A single-sample
        step writes the rings in place, so the state passed in is spent: stepping it again raises
        (``clone()`` it first to branch a stream; ``reset()`` makes it a fresh stream again). A state
        made under ``torch.inference_mode`` and stepped outside it is copied first (its rings cannot
        be written there) and left as it was.
        Raises ``ValueError`` naming the argument and what fits.
        """
        x, local_cond = self._to_bct(x), self._to_bct(local_cond)
        self._check_input(x)
        self.layers[0].check_cond(global_cond, local_cond, x)
        pos = self.check_state(state, x)
        owner = self._state_token()
        if x.shape[-1] == 1 and state.buffers[0].is_inference() and not torch.is_inference_mode_enabled():
            # rings made under torch.inference_mode cannot be written in place outside it (torch
            # raised a RuntimeError): step copies of them; the state passed in is left as it was
            state = StackState([b.clone() for b in state.buffers], pos, owner)
        if x.shape[-1] == 1 and self._lean_step_ok(x, state, global_cond, local_cond):
            weights, ws = self._step_plan(x.shape[0])
            res, skip = single_step(
                weights, ws, state.buffers, pos, x[:, :, 0], global_cond, None if local_cond is None else local_cond[:, :, 0]
            )
            state._stale = True  # its buffers now hold this step: only the returned state is current
            out = self._from_bct(res.unsqueeze(-1), None if skip is None else skip.unsqueeze(-1))
            return out, StackState(list(state.buffers), pos + 1, owner)
        buffers = []
        skip_sum = None
        for layer, buf in zip(self.layers, state.buffers):
            x, skip, buf = layer._step(x, buf, pos, global_cond, local_cond)
            buffers.append(buf)
            if skip is not None:
                skip_sum = skip if skip_sum is None else skip_sum + skip
        if x.shape[-1] == 1:
            state._stale = True  # single steps write the rings in place
        return self._from_bct(x, skip_sum), StackState(buffers, pos + x.shape[-1], owner)

    def check_state(self, state: StackState, x: torch.Tensor) -> int:
        """``state.pos`` once ``state`` is checked to fit this stack and ``x (B, R, T)``; else a
        ``ValueError`` naming the problem.

        A state this stack made or returned is trusted (its token, O(1)); any other (another stack's,
        one built by hand or loaded, one moved with ``to``) has every ring checked once: shape
        ``(B, R, (k - 1) * d)``, the weights' dtype and device.
        """
        if not isinstance(state, StackState):
            raise ValueError(
                f"state must be a StackState (from init_state(batch_size) or the previous step), got {type(state).__name__}"
            )
        if not isinstance(state.buffers, (list, tuple)):
            raise ValueError(
                f"state.buffers must be a list of ring buffers (one per layer, from init_state(batch_size)), "
                f"got {type(state.buffers).__name__}"
            )
        n, B = len(self.layers), x.shape[0]
        state_batch = state.buffers[0].shape[0] if state.buffers and isinstance(state.buffers[0], torch.Tensor) else None
        if len(state.buffers) != n or state_batch != B:
            raise ValueError(
                f"state holds {len(state.buffers)} layers for batch {state_batch}, but the stack has "
                f"{n} layers and x has batch {B}: create it with init_state(batch_size)"
            )
        if state._stale:
            raise ValueError(
                f"this state (pos {state.pos}) was already advanced by a single-sample step, which writes the ring "
                "buffers in place: pass the state that step returned, or step a state.clone() to branch a stream"
            )
        pos = check_pos(state.pos)
        token = self._state_token()
        if state._owner is not token:
            self.check_rings(
                state.buffers, B, "state.buffers[{i}]",
                "the state is of another stack; create it with this stack's init_state(batch_size)",
            )  # fmt: skip
            state._owner = token
        return pos

    def check_rings(self, buffers: Sequence[torch.Tensor], batch: int, label: str, advice: str) -> None:
        """A ``ValueError`` naming the first of ``buffers`` that is not layer ``i``'s ring for a batch of
        ``batch``: ``(batch, R, (k - 1) * d_i)`` in the weights' dtype and on their device. ``label``
        names ring ``i`` (a format string with ``{i}``); ``advice`` ends the message. O(layers): no
        data is read."""
        weight = self._step_params()[0]
        R, k = self.residual_channels, self.kernel_size
        for i, (buf, d) in enumerate(zip(buffers, self.dilations)):
            want = (batch, R, (k - 1) * d)
            if not isinstance(buf, torch.Tensor) or tuple(buf.shape) != want:
                got = tuple(buf.shape) if isinstance(buf, torch.Tensor) else type(buf).__name__
                raise ValueError(
                    f"{label.format(i=i)} must be {want} for layer {i} (dilation {d}, kernel {k}) and a batch of "
                    f"{batch}, got {got}: {advice}"
                )
            check_tensor_input(label.format(i=i), buf, weight)

    def _state_token(self) -> object:
        """An object naming this stack's current weights' layout; :meth:`_apply` replaces it."""
        token = self.__dict__.get("_state_token_obj")
        if token is None:
            token = self.__dict__["_state_token_obj"] = object()
        return token

    # ------------------------------------------------------------------------- lean step plumbing

    def _lean_step_ok(
        self, x: torch.Tensor, state: StackState, global_cond: torch.Tensor | None, local_cond: torch.Tensor | None
    ) -> bool:
        """Whether :func:`single_step` computes exactly what the per-layer path would here."""
        first = self.layers[0]
        if first.dropout is not None and self.training:
            return False
        if (first.gc is not None and global_cond is None) or (first.lc is not None and local_cond is None):
            return False  # the per-layer path raises the error that names the missing input
        if torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling():
            return False
        params = self._step_params()
        if torch.is_grad_enabled():
            tensors = [x, global_cond, local_cond, *state.buffers]
            if any(t is not None and t.requires_grad for t in tensors) or any(p.requires_grad for p in params):
                return False
        p = params[0]
        used = [x, *state.buffers]
        used += [global_cond] if first.gc is not None else []
        used += [local_cond] if first.lc is not None else []
        return all(t.dtype == p.dtype and t.device == p.device for t in used)

    def lean_plan(self, batch_size: int) -> tuple[StepWeights, StepWorkspace] | None:
        """The packed weights and a workspace of its own for :func:`~wavedil.streaming.single_step`
        at ``batch_size``, for a loop that steps this stack itself (the CUDA-graph loop of the
        ``fast`` back-end); ``None`` where single steps take the per-layer path instead (dropout in
        training mode). Pack again after the parameters change."""
        if self.layers[0].dropout is not None and self.training:
            return None
        with torch.no_grad():
            weights = self._packed_step_weights()["weights"]
            return weights, StepWorkspace(weights, batch_size)

    def _step_params(self) -> list[torch.Tensor]:
        """The parameters the packed step weights derive from (cached; see :meth:`_apply`)."""
        params = self.__dict__.get("_step_param_list")
        if params is None:
            params = self.__dict__["_step_param_list"] = list(self.parameters())
        return params

    def _step_plan(self, batch_size: int) -> tuple[StepWeights, StepWorkspace]:
        """The packed weights (rebuilt when a parameter changed) and the workspace for ``batch_size``."""
        cache = self._packed_step_weights()
        ws_key = (batch_size, torch.is_inference_mode_enabled(), threading.get_ident())  # scratch is per thread
        ws = cache["workspaces"].get(ws_key)
        if ws is None:
            if len(cache["workspaces"]) >= 8:  # a thread holding a dropped workspace keeps it alive
                cache["workspaces"].clear()
            ws = cache["workspaces"][ws_key] = StepWorkspace(cache["weights"], batch_size)
        return cache["weights"], ws

    def _packed_step_weights(self) -> dict:
        """The cache of the packed weights (rebuilt when a parameter changed) and the workspaces."""
        key = [(p._version, p.data_ptr()) for p in self._step_params()]
        cache = self.__dict__.get("_step_cache")
        if cache is None or cache["key"] != key:
            with torch.no_grad():
                cache = {"key": key, "weights": self._pack_step_weights(), "workspaces": {}}
            self.__dict__["_step_cache"] = cache
        return cache

    def _pack_step_weights(self) -> StepWeights:
        """Every layer's weights (weight norm applied) in the layout of :class:`StepWeights`."""
        k, R = self.kernel_size, self.residual_channels
        taps, conv_bias, gproj, lproj, res, skip = [], [], [], [], [], []
        for layer in self.layers:
            w = layer.conv.weight  # (G, R, k); tap j multiplies x[t - (k-1-j) d]
            G = w.shape[0]
            taps.append(w.permute(2, 1, 0).reshape(k * R, G))  # rows j*R..: W_j^T
            b = layer.conv.bias
            conv_bias.append(b if b is not None else w.new_zeros(G))
            if layer.gc is not None:
                gproj.append(layer.gc.weight.t())  # (Gc, G)
            if layer.lc is not None:
                lproj.append(layer.lc.weight[:, :, 0].t())  # (Lc, G)
            w_out, b_out = layer.out.weight[:, :, 0], layer.out.bias  # (R + S, Z), (R + S,)
            res.append(torch.cat([w_out[:R].t(), b_out[None, :R]]))  # (Z + 1, R)
            if self.skip_channels:
                skip.append(torch.cat([w_out[R:].t(), b_out[None, R:]]))  # (Z + 1, S)
        return StepWeights(
            kernel_size=k,
            dilations=self.dilations,
            activation=self.layers[0].activation,
            taps=torch.stack(taps).contiguous(),
            conv_bias=torch.cat(conv_bias),
            global_proj=torch.cat(gproj, dim=1).contiguous() if gproj else None,
            local_proj=torch.cat(lproj, dim=1).contiguous() if lproj else None,
            res=torch.stack(res).contiguous(),
            skip=torch.cat(skip).contiguous() if skip else None,
        )

    def _apply(self, fn, recurse: bool = True):
        # .to() / .double() / .cuda() may swap parameter storage: forget the packed step weights
        self.__dict__.pop("_step_cache", None)
        self.__dict__.pop("_step_param_list", None)
        self.__dict__.pop("_state_token_obj", None)  # states made before may not fit the new dtype / device
        return super()._apply(fn, recurse)

    @staticmethod
    def _forget_step_cache(module: nn.Module, incompatible_keys) -> None:
        # load_state_dict(assign=True) replaces the parameter objects themselves
        module.__dict__.pop("_step_cache", None)
        module.__dict__.pop("_step_param_list", None)

    def _check_input(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"x must be a torch.Tensor (B, C, T), got {type(x).__name__}")
        if x.dim() != 3 or x.shape[1] != self.residual_channels or x.shape[-1] < 1:
            want = f"(B, T, {self.residual_channels})" if self.layout == "BTC" else f"(B, {self.residual_channels}, T)"
            got = tuple(self._to_bct(x).shape) if x.dim() == 3 else tuple(x.shape)
            raise ValueError(f"expected input {want} with T >= 1, got shape {got}")
        check_tensor_input("x", x, self._step_params()[0])

    def coverage(self) -> float:
        """Fraction of the receptive field's input positions that some path reaches (1.0: no holes)."""
        return receptive_field_coverage(self.kernel_size, self.dilations)
