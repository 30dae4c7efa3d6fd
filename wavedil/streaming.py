"""Streaming state of a dilated stack and the one ring-buffer arithmetic that reads and writes it.

A layer with kernel ``k`` and dilation ``d`` needs the last ``L = (k - 1) * d`` inputs. They
live in a ring buffer ``(B, C, L)``: slot ``t % L`` holds the input of time ``t``, so a
single step overwrites one slot and nothing moves::

    L = 4, pos = 6 (times 2..5 stored)     slot:   0    1    2    3
                                           time:  x4   x5   x2   x3
    history (oldest first) = slots (pos + 0..3) % 4 = 2, 3, 0, 1  ->  x2 x3 x4 x5
    step at t = 6 with k = 2, d = 4: the tap x[t - 4] = x2 is slot 6 % 4 = 2, then x6 goes there

The ring functions (:func:`ring_history`, :func:`ring_from_history`, :func:`ring_conv_step`)
take the stream position ``pos`` either as a Python ``int`` (the eager
:meth:`~wavedil.layers.DilatedStack.step`) or as a 0-dim int64 tensor (the graph-capturable
:class:`~wavedil.export.StreamingStep`); the index arithmetic is the same tensor code for both,
so the eager and the exported step cannot disagree about the layout. The single-sample path
(:func:`tap_slots`, :func:`single_step`) is eager only and takes an ``int``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from .causal import as_index

__all__ = [
    "StackState",
    "check_pos",
    "ring_history",
    "ring_from_history",
    "ring_conv_step",
    "new_ring",
    "tap_slots",
    "state_to_tensors",
    "state_from_tensors",
    "StepWeights",
    "StepWorkspace",
    "single_step",
]


@dataclass
class StackState:
    """Explicit streaming state of a :class:`~wavedil.layers.DilatedStack` (or of a single layer).

    Attributes:
        buffers: one ring buffer per layer, ``(B, C_in, (k - 1) * d)``. Slot ``s`` of a buffer
            holds the input of time ``t`` with ``t % L == s`` (``L`` the buffer length), for the
            last ``L`` time steps; times before the start of the stream read as zeros.
            :meth:`~wavedil.layers.DilatedStack.init_state` stores them time-major
            (:func:`new_ring`: each slot one contiguous block, fast single steps at large
            batches); rings in any other memory order give the same results.
        pos: number of time steps consumed so far (the write position of every ring).

    The state is plain tensors: a caller can hold it, ``clone`` it, move it, save it with
    ``torch.save`` or reset single batch items. A single-sample step advances the rings in place
    and returns a new state sharing them; the one passed in is then spent (stepping it again is
    refused, since its ``pos`` no longer matches its rings).
    """

    buffers: list[torch.Tensor]
    pos: int = 0
    #: the stack whose shapes, dtype and device these buffers were checked against (its token; a
    #: stack checks a state it did not make once, then trusts it: O(1) per step)
    _owner: object = field(default=None, repr=False, compare=False)
    #: set when a single-sample step advanced these buffers in place: ``pos`` no longer matches them
    _stale: bool = field(default=False, repr=False, compare=False)

    @property
    def batch_size(self) -> int:
        if not self.buffers:
            raise ValueError("this StackState holds no buffers: create it with stack.init_state(batch_size)")
        return self.buffers[0].shape[0]

    def clone(self) -> "StackState":
        """A deep copy whose buffers share no memory with this one."""
        return StackState([b.clone() for b in self.buffers], self.pos, self._owner, self._stale)

    def to(self, *args, **kwargs) -> "StackState":
        """Move/cast every buffer (same arguments as ``Tensor.to``)."""
        return StackState([b.to(*args, **kwargs) for b in self.buffers], self.pos, None, self._stale)

    def reset(self, items: int | Sequence[int] | torch.Tensor | None = None) -> "StackState":
        """Forget the past of some batch items (all when ``items`` is None), in place.

        A reset item continues as if its stream started at the next step; the other items are
        left untouched. ``items`` is an index, a sequence of indices or a boolean mask ``(B,)``.
        """
        if items is not None and not self.buffers:
            raise ValueError("this StackState holds no buffers: create it with stack.init_state(batch_size)")
        if items is None:
            for b in self.buffers:
                b.zero_()
            self.pos = 0
            self._stale = False  # a fresh stream again: buffers and position agree
            return self
        if isinstance(items, int):
            items = [items]
        try:
            idx = torch.as_tensor(items, device=self.buffers[0].device)
        except (TypeError, ValueError, RuntimeError):
            idx = None
        integral = idx is not None and not (idx.is_floating_point() or idx.is_complex())  # bool included
        if not integral or idx.dim() > 1:
            raise ValueError(
                f"reset items must be an index, a sequence of indices or a boolean mask ({self.batch_size},), got {items!r}"
            )
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
        """Inverse of :meth:`state_dict`; the stack checks the buffers when the state is first used."""
        if not isinstance(d, dict) or "buffers" not in d or "pos" not in d:
            got = sorted(d) if isinstance(d, dict) else type(d).__name__
            raise ValueError(f"a StackState dict needs the keys 'buffers' and 'pos' (from state_dict()), got {got}")
        return cls(list(d["buffers"]), check_pos(d["pos"], "pos"))


def check_pos(pos: object, name: str = "state.pos") -> int:
    """The stream position ``pos`` as an ``int >= 0`` (a 0-dim integer tensor is fine); else a ``ValueError``."""
    if type(pos) is int and pos >= 0:
        return pos
    value = as_index(pos)
    if value is None or value < 0:
        raise ValueError(f"{name} must be an integer >= 0 (the stream position: samples consumed so far), got {pos!r}")
    return value


# ----------------------------------------------------------------------------- ring arithmetic


def new_ring(
    batch_size: int,
    channels: int,
    length: int,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """An all-zero ring ``(B, C, L)`` stored time-major (its memory is ``(L, B, C)``).

    The shape, and so every index, is that of a plain ``(B, C, L)`` tensor; only the memory
    order differs: slot ``buf[:, :, s]`` is one contiguous ``(B, C)`` block, so a single step
    reads and writes a slot in one piece instead of ``B * C`` elements ``L`` apart (at B = 256
    that made the eager step's slot copies most of its time).
    """
    return torch.zeros(length, batch_size, channels, device=device, dtype=dtype).permute(1, 2, 0)


def _slots(L: int, device: torch.device) -> torch.Tensor:
    return torch.arange(L, device=device)


def ring_history(buf: torch.Tensor, pos: int | torch.Tensor) -> torch.Tensor:
    """The ring ``(B, C, L)`` at stream position ``pos`` in time order: times ``pos-L .. pos-1``.

    A new tensor (``index_select``); the ring itself is not touched.
    """
    L = buf.shape[-1]
    return buf.index_select(-1, torch.remainder(_slots(L, buf.device) + pos, L))


def ring_from_history(hist: torch.Tensor, end: int | torch.Tensor, length: int) -> torch.Tensor:
    """The ring ``(B, C, length)`` for position ``end`` from a time-ordered window ``hist``.

    ``hist`` ``(B, C, W)``, ``W >= length``, holds times ``end - W .. end - 1`` (oldest first);
    slot ``s`` of the result is the newest of those times ``t`` with ``t % length == s``::

        slot s  <-  hist[W - 1 - ((end - 1 - s) mod length)]
    """
    W = hist.shape[-1]
    L = length
    assert W >= L, f"window of {W} samples cannot fill a ring of {L}"
    # + L keeps the dividend positive, so any remainder convention (ONNX Mod too) agrees.
    newest = (W - 1) - torch.remainder(end + (L - 1) - _slots(L, hist.device), L)
    ring = hist.index_select(-1, newest)
    if torch.jit.is_tracing() or torch.jit.is_scripting():
        return ring  # TorchScript keeps the plain layout
    # new_ring's layout, its strides exactly (size-1 dims included: a compiled step's guards compare
    # them): the single steps that follow read a slot in one piece
    B, C = ring.shape[:2]
    if ring.stride() != (C, 1, B * C):
        ring = ring.permute(2, 0, 1).clone(memory_format=torch.contiguous_format).permute(1, 2, 0)
    return ring


def ring_conv_step(
    x: torch.Tensor,
    buf: torch.Tensor,
    pos: int | torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    dilation: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One causal dilated convolution over the chunk ``x`` that starts at stream time ``pos``.

    Args:
        x: the chunk ``(B, C_in, T)``, times ``pos .. pos + T - 1``.
        buf: the ring ``(B, C_in, L)``, ``L = (k - 1) * d``; slot ``t % L`` holds input ``t``.
        pos: an ``int`` or a 0-dim int64 tensor.
        weight, bias: ``(C_out, C_in, k)`` and ``(C_out,)`` (or None).

    Returns ``(y (B, C_out, T), new_buf (B, C_in, L))`` without touching ``buf``::

        hist = [x[pos-L] .. x[pos-1] | x[pos] .. x[pos+T-1]]      (B, C_in, L + T), oldest first
        y    = conv1d(hist, dilation=d)                            (B, C_out, T), no padding
        new_buf = ring_from_history(hist, pos + T)
    """
    L, T = buf.shape[-1], x.shape[-1]
    hist = torch.cat([ring_history(buf, pos), x], dim=-1)  # (B, C_in, L + T)
    y = F.conv1d(hist, weight, bias, dilation=dilation)  # (B, C_out, T)
    return y, ring_from_history(hist, pos + T, L)


def tap_slots(pos: int, kernel_size: int, dilation: int) -> tuple[list[int], int]:
    """Ring slots of a single step at time ``pos``: ``(past_tap_slots, write_slot)``.

    The past taps ``x[pos - (k-1) d], ..., x[pos - d]`` (oldest first) sit in slots
    ``(pos - m d) % L``, ``m = k-1 .. 1``; ``x[pos]`` is then written to slot ``pos % L``,
    replacing ``x[pos - L]``, which no tap needs any more. Read before you write: with ``k = 2``
    the only past tap and the write share a slot.

    >>> tap_slots(6, 3, 2)  # L = 4: x[2] in slot 2, x[4] in slot 0; x[6] goes to slot 2
    ([2, 0], 2)
    """
    L = (kernel_size - 1) * dilation
    return [(pos - m * dilation) % L for m in range(kernel_size - 1, 0, -1)], pos % L


def state_to_tensors(state: StackState) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``(pos, buffers)`` of a :class:`StackState`: ``pos`` as a 0-dim int64 tensor on the buffers' device."""
    return torch.tensor(state.pos, dtype=torch.int64, device=state.buffers[0].device), list(state.buffers)


def state_from_tensors(pos: torch.Tensor | int, buffers: Sequence[torch.Tensor]) -> StackState:
    """The :class:`StackState` for an exported step's ``new_pos`` and ``new_buffers`` (inverse of
    :func:`state_to_tensors`); accepts torch tensors or numpy arrays (an ONNX runtime's outputs)."""
    bufs = [b if isinstance(b, torch.Tensor) else torch.from_numpy(b) for b in buffers]
    return StackState(bufs, int(pos))


# ----------------------------------------------------------------------------- the lean single step


@dataclass
class StepWeights:
    """A stack's weights packed for :func:`single_step` (plain tensors, no autograd).

    ``n`` layers, residual ``R``, gate ``G`` channels, gate output ``Z`` (``G/2`` when gated),
    skip ``S``, kernel ``k``. Each product of a layer is one matmul on these::

        taps       (n, k*R, G)   rows j*R..(j+1)*R: W_j^T of tap j (oldest first, x[t] last)
        conv_bias  (n*G,)        every layer's conv bias, concatenated
        global_proj (Gc, n*G)    every layer's global-conditioning projection (or None)
        local_proj  (Lc, n*G)    every layer's local-conditioning 1x1 conv (or None)
        res        (n, Z+1, R)   W_res^T with b_res as the last row (z is carried with a 1 appended)
        skip       (n*(Z+1), S)  all layers' [W_skip^T; b_skip] stacked: ONE matmul over all z
                                 gives the skip sum, biases included (or None: no skips)
    """

    kernel_size: int
    dilations: tuple[int, ...]
    activation: str
    taps: torch.Tensor
    conv_bias: torch.Tensor
    global_proj: torch.Tensor | None
    local_proj: torch.Tensor | None
    res: torch.Tensor
    skip: torch.Tensor | None


class StepWorkspace:
    """Preallocated scratch tensors and their per-layer views for :func:`single_step` at batch ``B``.

    Layer ``i`` reads its window ``win[i] (B, k*R)`` = ``[past taps | x_i]`` and writes its
    residual output straight into the ``x`` part of ``win[i + 1]``; the gate outputs of all
    layers sit side by side in ``z_all (B, n*(Z+1))`` (the extra column is a constant 1 that
    carries the residual and skip biases) for the single skip matmul. Reused by every step of
    this batch size: nothing returned to a caller aliases it.
    """

    def __init__(self, w: StepWeights, batch_size: int) -> None:
        n, kR, G = w.taps.shape
        k = w.kernel_size
        R = kR // k
        Zc = w.res.shape[1] - 1
        opts = dict(dtype=w.taps.dtype, device=w.taps.device)
        B = batch_size
        self.win = torch.zeros(n + 1, B, kR, **opts)
        self.past = [[self.win[i, :, j * R : (j + 1) * R] for j in range(k - 1)] for i in range(n)]
        self.xs = [self.win[i, :, (k - 1) * R :] for i in range(n + 1)]  # (B, R) input of layer i
        self.h = torch.empty(n, B, G, **opts)
        self.hs = list(self.h.unbind(0))
        half = G // 2
        self.ha = [h[:, :half] for h in self.hs]
        self.hb = [h[:, half:] for h in self.hs]
        self.z_all = torch.ones(B, n * (Zc + 1), **opts)
        self.zs = [self.z_all[:, i * (Zc + 1) : i * (Zc + 1) + Zc] for i in range(n)]
        self.zaug = [self.z_all[:, i * (Zc + 1) : (i + 1) * (Zc + 1)] for i in range(n)]
        has_cond = w.global_proj is not None or w.local_proj is not None
        self.cond_bias = torch.empty(B, n * G, **opts) if has_cond else None
        src = self.cond_bias if has_cond else w.conv_bias
        self.bias = [src[..., i * G : (i + 1) * G] for i in range(n)]  # (B, G) or (G,)
        self.taps = list(w.taps.unbind(0))
        self.res = list(w.res.unbind(0))
        # for a stream position held in a tensor (a CUDA graph's): layer i's ring slots at time t are
        # (t - tap_offsets[i]) mod ring_len[i], its past taps oldest first, then the slot x[t] goes to
        self.past_taps = [self.win[i, :, : (k - 1) * R].view(B, k - 1, R) for i in range(n)]
        offsets = [[m * d for m in range(k - 1, -1, -1)] for d in w.dilations]
        self.tap_offsets = torch.tensor(offsets, dtype=torch.int64, device=w.taps.device)  # (n, k)
        self.ring_len = torch.tensor([[(k - 1) * d] for d in w.dilations], dtype=torch.int64, device=w.taps.device)


_ACT: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "tanh": torch.tanh,
    "relu": torch.relu,
    "gelu": F.gelu,
}


def single_step(
    w: StepWeights,
    ws: StepWorkspace,
    buffers: Sequence[torch.Tensor],
    pos: int | torch.Tensor,
    x: torch.Tensor,
    global_cond: torch.Tensor | None = None,
    local_cond: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One time step ``pos`` of a whole stack: ``x (B, R)`` -> ``(residual (B, R), skip_sum (B, S) or None)``.

    ``buffers`` are the :class:`StackState` rings, updated in place (one slot per layer, see
    :func:`tap_slots`); ``global_cond (B, Gc)``, ``local_cond (B, Lc)`` (the step's own sample).
    Per layer: the past taps are copied next to ``x_i`` in its window, one ``addmm`` gives the
    conv (bias and conditioning included), the gate runs in place, and one ``addmm`` gives the
    next layer's input inside its window. The conditioning of all layers is one matmul before
    the loop and the skip sum of all layers one matmul after it. Runs without autograd.

    ``pos`` is an ``int``, or a 0-dim int64 tensor on the weights' device (a loop captured as a
    CUDA graph, which reads no value on the host): the slots are then computed on the device and
    the taps gathered with ``index_select`` / written with ``index_copy_``, the same values.
    """
    k = w.kernel_size
    slots = None
    if isinstance(pos, torch.Tensor):
        slots = torch.remainder(pos - ws.tap_offsets, ws.ring_len)  # (n, k): past taps, then the write slot
    ws.xs[0].copy_(x)
    if ws.cond_bias is not None:
        cb = ws.cond_bias
        if w.global_proj is not None:
            torch.addmm(w.conv_bias, global_cond, w.global_proj, out=cb)
            if w.local_proj is not None:
                cb.addmm_(local_cond, w.local_proj)
        else:
            torch.addmm(w.conv_bias, local_cond, w.local_proj, out=cb)
    gated = w.activation == "gated"
    act = None if gated else _ACT[w.activation]
    for i, d in enumerate(w.dilations):
        buf, xi = buffers[i], ws.xs[i]
        if slots is not None:
            ws.past_taps[i].copy_(buf.index_select(2, slots[i, : k - 1]).transpose(1, 2))  # (B, k-1, R)
            buf.index_copy_(2, slots[i, k - 1 :], xi.unsqueeze(2))
        elif k == 2:
            slot = buf.select(2, pos % d)  # x[t - d], about to become x[t]
            ws.past[i][0].copy_(slot)
            slot.copy_(xi)
        else:
            past, write = tap_slots(pos, k, d)
            for view, s in zip(ws.past[i], past):
                view.copy_(buf.select(2, s))
            buf.select(2, write).copy_(xi)
        h = torch.addmm(ws.bias[i], ws.win[i], ws.taps[i], out=ws.hs[i])  # (B, G)
        if gated:
            torch.mul(ws.ha[i].tanh_(), ws.hb[i].sigmoid_(), out=ws.zs[i])
        else:
            ws.zs[i].copy_(act(h))
        torch.addmm(xi, ws.zaug[i], ws.res[i], out=ws.xs[i + 1])
    res = ws.xs[-1].clone()
    skip = torch.mm(ws.z_all, w.skip) if w.skip is not None else None
    return res, skip
