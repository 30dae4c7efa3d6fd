"""Streaming state of a dilated stack and the one ring-buffer arithmetic that reads and writes it.

A layer with kernel ``k`` and dilation ``d`` needs the last ``L = (k - 1) * d`` inputs. They
live in a ring buffer ``(B, C, L)``: slot ``t % L`` holds the input of time ``t``, so a
single step overwrites one slot and nothing moves::

    L = 4, pos = 6 (times 2..5 stored)     slot:   0    1    2    3
                                           time:  x4   x5   x2   x3
    history (oldest first) = slots (pos + 0..3) % 4 = 2, 3, 0, 1  ->  x2 x3 x4 x5
    step at t = 6 with k = 2, d = 4: the tap x[t - 4] = x2 is slot 6 % 4 = 2, then x6 goes there

Every function takes the stream position ``pos`` either as a Python ``int`` (the eager
:meth:`~wavedil.layers.DilatedStack.step`) or as a 0-dim int64 tensor (the graph-capturable
:class:`~wavedil.export.StreamingStep`); the index arithmetic is the same tensor code for both,
so the eager and the exported step cannot disagree about the layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "StackState",
    "ring_history",
    "ring_from_history",
    "ring_conv_step",
    "tap_slots",
    "state_to_tensors",
    "state_from_tensors",
]


@dataclass
class StackState:
    """Explicit streaming state of a :class:`~wavedil.layers.DilatedStack` (or of a single layer).

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


# ----------------------------------------------------------------------------- ring arithmetic


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
    return hist.index_select(-1, newest)


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

