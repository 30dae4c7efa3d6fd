"""Lay a :class:`~wavedil.model.WaveNet`'s weights and streaming state out for the fused kernels.

Pure NumPy/PyTorch (no numba): the arrays are float32, C-contiguous, and every matrix is stored
``(in, out)`` so that a kernel's innermost loop runs over contiguous output columns.

The input of code ``c`` is ``x = emb[c]`` (mu-law: an embedding table), or for the linear-bin
heads ``x = v * emb[0] + emb[1]`` with ``v = c * in_scale - 1`` the bin centre (in float32, as
:class:`~wavedil.model.LinearInput`). Per layer ``i`` with kernel ``k``, dilation ``d`` and
ring length ``L = (k-1)*d``::

    h   = gbias[i] + sum_m  x[t - (k-1-m)*d] @ wc[i, m*R:(m+1)*R]      (G,)   m = 0..k-1
    z   = tanh(h[:G/2]) * sigmoid(h[G/2:])                              (G/2,)
    x  <- x + bres[i] + z @ wres[i]                                     (R,)
    acc <- acc + z @ wskip[i]              (acc starts at bskip = sum of the skip biases)

then the head's ``P`` parameters ``relu(relu(acc) @ h1 + b1) @ h2 + b2``. ``gbias[i]`` is the
conv bias plus the conditioning: ``g @ wgc[i]`` for a global (speaker) embedding ``g`` and, per
step, ``l_t @ wlc[i]`` for the local (upsampled mel) column ``l_t`` (:func:`pack_cond_bias` in
torch; the CPU kernels compute the same with :func:`wavedil.fast._kernels.cond_bias`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from ..backends import WEIGHT_MODES, check_weights
from ..layers import StackState
from ..model import LinearInput, WaveNet

__all__ = [
    "HEADS",
    "WEIGHT_MODES",
    "dequantize",
    "dequantized_model",
    "from_bf16_bits",
    "to_bf16_bits",
    "PackedWaveNet",
    "kernel_uniforms",
    "matrix_format",
    "pack_cond_bias",
    "pack_global_bias",
    "pack_model",
    "pair_rows",
    "quantize",
    "ring_from_state",
    "split_columns",
    "state_from_ring",
    "unsupported_reason",
]


#: ``model.config.output`` -> the kernels' head code (:data:`wavedil.fast._kernels.HEAD_MULAW` ...)
HEADS: dict[str, int] = {"mulaw": 0, "mol": 1, "gaussian": 2}


def _np(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().to("cpu", torch.float32).numpy())


def to_bf16_bits(w: np.ndarray) -> np.ndarray:
    """float32 -> the bit patterns of the nearest bfloat16 (round half to even), as uint16."""
    bits = np.ascontiguousarray(w, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return rounded.astype(np.uint16)


def from_bf16_bits(b: np.ndarray) -> np.ndarray:
    """uint16 bfloat16 bit patterns -> float32 (exact)."""
    return (b.astype(np.uint32) << 16).view(np.float32)


def quantize(w: np.ndarray, weights: str) -> tuple[np.ndarray, np.ndarray]:
    """A matrix ``(..., in, out)`` float32 in the kernels' format for ``weights``.

    Returns ``(stored, scales)``: ``stored`` is ``w`` itself (``fp32``), its bfloat16 bit
    patterns as uint16 (``bf16``), or symmetric int8 codes (``int8``: ``round(w / s)`` in
    ``[-127, 127]`` with ``s = max|w[..., :, o]| / 127`` per output column ``o``);
    ``scales (..., out)`` float32 holds ``s`` (ones for the other formats). The matrix the
    kernels compute with is ``w`` (fp32), ``from_bf16_bits(stored)`` (bf16) or ``stored * s`` (int8).
    """
    check_weights(weights)
    w = np.ascontiguousarray(w, dtype=np.float32)
    ones = np.ones(w.shape[:-2] + w.shape[-1:], np.float32)
    if weights == "fp32":
        return w, ones
    if weights == "bf16":
        return to_bf16_bits(w), ones
    amax = np.abs(w).max(axis=-2)  # (..., out)
    scale = np.where(amax > 0, amax / np.float32(127.0), np.float32(1.0)).astype(np.float32)
    q = np.clip(np.rint(w / scale[..., None, :]), -127, 127).astype(np.int8)
    return np.ascontiguousarray(q), np.ascontiguousarray(scale)


#: The matrices that mode ``int8`` keeps in bfloat16: the head's last one, whose outputs are the
#: distribution's parameters themselves. On the bundled ``speech8k`` (held out, 31 files), 8-bit
#: codes there cost 0.0127 of the mode's 0.0138 bits/sample, on the bundled vocoder 0.032 of
#: 0.033; every other matrix of either model together cost about 0.001 (``bench/quantization.py``,
#: ``bench/README.md`` "Which weights int8 costs"). It is one matrix of
#: ``H x P`` (ref30: 64 KB more than its int8 codes, 5% of the mode's bytes).
INT8_KEEPS_BF16: frozenset[str] = frozenset({"h2"})


def matrix_format(name: str, weights: str) -> str:
    """The format mode ``weights`` stores matrix ``name`` (``wc``, ``wres``, ``wskip``, ``h1``,
    ``h2``) in: the mode itself, but ``bf16`` for :data:`INT8_KEEPS_BF16` in mode ``int8``."""
    return "bf16" if weights == "int8" and name in INT8_KEEPS_BF16 else weights


#: Bytes the kernels' matrices are aligned to: a cache line, and one AVX-512 register. On the
#: 2-core Xeon (AVX-512), ``bf16``'s widened weights at a 16- or 48-byte offset made batches
#: 3-10% slower; ``fp32`` showed no difference within the noise (``bench/README.md``).
ALIGN = 64


def aligned(a: np.ndarray) -> np.ndarray:
    """A C-contiguous copy of ``a`` whose data starts on an :data:`ALIGN`-byte boundary."""
    buf = np.empty(a.nbytes + ALIGN, np.uint8)
    start = -buf.ctypes.data % ALIGN
    out = buf[start : start + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


def pair_rows(q: np.ndarray, split: int | None = None) -> np.ndarray:
    """int8 codes ``(..., in, out)`` in the int8 kernels' layout ``(..., out8 / 8, kp, 8, 2)``.

    Outputs in blocks of 8, each block's rows in pairs: element ``[.., b, j, c, e]`` is
    ``q[.., 2 j + e, 8 b + c]`` (one block is ``kp`` runs of 16 bytes, read in order by the
    products). Rows are padded with zeros to ``2 kp`` (``kp = ceil(in / 8) * 4``) and outputs to
    ``out8``, a multiple of 8. ``split``: rows ``[:split]`` and ``[split:]`` are paired (and
    padded) apart, their pairs one after the other in each block, so the kernels can multiply
    either part on its own (a dilated conv's past taps and its last tap). Other formats are
    returned as they are.
    """
    if q.dtype != np.int8:
        return q
    if split is not None:
        return np.ascontiguousarray(np.concatenate([pair_rows(q[..., :split, :]), pair_rows(q[..., split:, :])], axis=-3))
    *lead, k, n = q.shape
    k8, n8 = -(-k // 8) * 8, -(-n // 8) * 8
    out = np.zeros((*lead, k8, n8), np.int8)
    out[..., :k, :n] = q
    nl = len(lead)
    out = out.reshape(*lead, k8 // 2, 2, n8 // 8, 8)  # (.., pair j, e, block b, c)
    return np.ascontiguousarray(out.transpose(*range(nl), nl + 2, nl, nl + 3, nl + 1))  # (.., b, j, c, e)


def dequantize(stored: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """The float32 matrix ``(..., in, out)`` that :func:`quantize`'s output stands for."""
    if stored.dtype == np.uint16:
        return from_bf16_bits(stored)
    if stored.dtype == np.int8:
        return stored.astype(np.float32) * scales[..., None, :]
    return stored


@dataclass(frozen=True)
class PackedWaveNet:
    """The weights of one :class:`WaveNet` in the kernels' layout (shapes in the module docstring).

    The five matrices of the per-sample loop (``wc``, ``wres``, ``wskip``, ``h1``, ``h2``) are
    stored in the format of :attr:`weights` (:func:`quantize`; mode ``int8`` keeps
    :data:`INT8_KEEPS_BF16` in ``bf16``, :func:`matrix_format`), each with its per-output-column
    scales in :attr:`scales`; everything else is float32.

    Attributes:
        emb: ``(Q, R)`` the embedding of every code, or with ``in_scale > 0`` (linear-bin heads)
            ``(2, R)``: the weight and bias of the linear input layer.
        wc: ``(NL, k*R, G)`` dilated conv, tap ``m`` (time ``t - (k-1-m)*d``) in rows ``m*R:(m+1)*R``.
        bc: ``(NL, G)`` conv bias.
        wgc: ``(NL, Gc, G)`` global-conditioning projections, or None.
        wlc: ``(Lc, NL, G)`` local-conditioning projections of all layers (channel-major, one
            matrix ``(Lc, NL*G)``), or None.
        wres, bres: ``(NL, G/2, R)``, ``(NL, R)`` residual 1x1.
        wskip: ``(NL, G/2, S)`` skip 1x1; bskip ``(S,)`` the sum of every layer's skip bias.
        h1, b1, h2, b2: ``(S, H)``, ``(H,)``, ``(H, P)``, ``(P,)`` the output head.
        dil, off: ``(NL,)`` int64 dilations and ring offsets (``off[-1] + L[-1]`` rows in all).
        kernel: ``k``.
        head: the kernels' code of the output distribution (:data:`HEADS`); classes: ``Q``;
        mixtures: ``K`` (mol, else 0); log_scale_min: the log-scale clamp (linear-bin heads).
        in_scale: ``2 / Q`` (float32) for a linear input layer, 0.0 for an embedding table.
        weights: the weight mode (:data:`wavedil.backends.WEIGHT_MODES`).
        scales: ``(wc_s (NL, G), wres_s (NL, R), wskip_s (NL, S), h1_s (H,), h2_s (P,))``
            float32, the int8 scales (ones for the matrices in other formats).
    """

    emb: np.ndarray
    wc: np.ndarray
    bc: np.ndarray
    wgc: np.ndarray | None
    wlc: np.ndarray | None
    wres: np.ndarray
    bres: np.ndarray
    wskip: np.ndarray
    bskip: np.ndarray
    h1: np.ndarray
    b1: np.ndarray
    h2: np.ndarray
    b2: np.ndarray
    dil: np.ndarray
    off: np.ndarray
    kernel: int
    head: int = 0
    classes: int = 0
    mixtures: int = 0
    log_scale_min: float = 0.0
    in_scale: float = 0.0
    weights: str = "fp32"
    scales: tuple[np.ndarray, ...] = ()

    @property
    def head_args(self) -> tuple[int, int, int, float, float]:
        """``(head, classes, mixtures, log_scale_min, in_scale)``, in the kernels' argument order."""
        return self.head, self.classes, self.mixtures, self.log_scale_min, self.in_scale

    def input_table(self) -> np.ndarray:
        """``(Q, R)`` float32: the input vector of every code (a linear input layer tabulated)."""
        if self.in_scale == 0.0:
            return self.emb
        one = np.float32(1.0)
        v = np.arange(self.classes, dtype=np.float32) * np.float32(self.in_scale) - one  # (Q,) bin centres
        return np.ascontiguousarray(v[:, None] * self.emb[0] + self.emb[1])

    @cached_property
    def kernel_matrices(self) -> tuple[np.ndarray, ...]:
        """``(wc, wres, wskip, h1, h2)`` as the kernels take them: as stored, or int8 in blocks of
        row pairs (:func:`pair_rows`; the conv's past taps paired apart from its last tap)."""
        return tuple(aligned(m) for m in (
            pair_rows(self.wc, split=self.wc.shape[1] - self.wres.shape[2]),
            pair_rows(self.wres),
            pair_rows(self.wskip),
            pair_rows(self.h1),
            pair_rows(self.h2),
        ))  # fmt: skip

    @cached_property
    def wide_matrices(self) -> tuple[np.ndarray, ...]:
        """:attr:`kernel_matrices` for many rows at a time: bfloat16 matrices (mode ``bf16``, and
        :data:`INT8_KEEPS_BF16` in ``int8``) widened to float32 (exactly: every bfloat16 is a
        float32, so the float32 kernels compute the same numbers with them, without decoding each
        weight per block of rows); the others as they are."""
        return tuple(aligned(from_bf16_bits(m)) if m.dtype == np.uint16 else m for m in self.kernel_matrices)

    @cached_property
    def head_halves(self) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, np.ndarray]]:
        """The head in two column blocks, one per thread of a batch-1 pipeline
        (:func:`wavedil.fast._kernels.run_pipe`): ``((h1 (2, S, Hp), b1 (2, Hp), h2 (2, H, Qp),
        b2 (2, Qp)), (h1_s (2, Hp), h2_s (2, Qp)))``, blocks of width ``ceil(n / 2)``, zero padded,
        the matrices as the kernels take them and the int8 scales split the same way."""
        h_n, q_n = self.h1.shape[1], self.h2.shape[1]
        hp, qp = -(-h_n // 2), -(-q_n // 2)
        h_bounds = [(0, hp), (hp, h_n)]
        q_bounds = [(0, qp), (qp, q_n)]
        weights = (
            aligned(pair_rows(split_columns(self.h1, h_bounds, hp))),
            split_columns(self.b1, h_bounds, hp),
            aligned(pair_rows(split_columns(self.h2, q_bounds, qp))),
            split_columns(self.b2, q_bounds, qp),
        )
        return weights, (split_columns(self.scales[3], h_bounds, hp), split_columns(self.scales[4], q_bounds, qp))

    @cached_property
    def tuning(self) -> dict:
        """Settings the kernels' drivers learn while running these weights (e.g. how
        :func:`wavedil.fast.cpu` balances its batch-1 threads); never changes results."""
        return {}

    @property
    def ring_rows(self) -> int:
        """Rows of the concatenated ring buffers: ``(k - 1) * sum(dilations)``."""
        return int(self.off[-1] + (self.kernel - 1) * self.dil[-1])

    @property
    def n_weights(self) -> int:
        """Weights one forward step multiplies by (its multiply-adds per sequence)."""
        return int(sum(a.size for a in (self.wc, self.wres, self.wskip, self.h1, self.h2)))


def unsupported_reason(model: WaveNet) -> str | None:
    """None when the kernels can run ``model``'s layers, else what they lack.

    They implement the gated block (``tanh(a) * sigmoid(b)``) with skip outputs, optional
    global and local conditioning, and the heads of :data:`HEADS`; weight norm is fine (the
    effective weights are packed) and dropout is inactive in generation.
    """
    output = getattr(model.config, "output", "mulaw")
    if output not in HEADS:
        return f"the model has a {output!r} head; the fast back-end implements {sorted(HEADS)}"
    for i, layer in enumerate(model.stack.layers):
        activation = getattr(layer, "activation", "gated")
        if activation != "gated":
            return f"layer {i} uses activation {activation!r}; the fast back-end implements only 'gated'"
        if not getattr(layer, "skip_channels", 1):
            return f"layer {i} has no skip output (skip_channels=0), which the fast back-end does not support"
    return None


def pack_model(model: WaveNet, weights: str = "fp32") -> PackedWaveNet:
    """Copy ``model``'s weights into a :class:`PackedWaveNet` on the CPU, the matrices of the
    per-sample loop in the format of ``weights`` (:func:`quantize`).

    Raises:
        ValueError: for layers the kernels do not implement (:func:`unsupported_reason`).
    """
    why = unsupported_reason(model)
    if why is not None:
        raise ValueError(why)
    stack = model.stack
    layers = list(stack.layers)
    k = stack.kernel_size
    R = stack.residual_channels
    wc, bc, wgc, wlc, wres, bres, wskip, bskip = [], [], [], [], [], [], [], None
    for layer in layers:
        w = layer.conv.weight.detach()  # (G, R, k); with weight norm, the effective weight
        wc.append(w.permute(2, 1, 0).reshape(k * R, -1))  # row m*R + c  <-  w[:, c, m]
        bc.append(layer.conv.bias.detach())
        if layer.global_cond_proj is not None:
            wgc.append(layer.global_cond_proj.weight.detach().t())  # (Gc, G)
        if layer.local_cond_proj is not None:
            wlc.append(layer.local_cond_proj.weight.detach()[:, :, 0].t())  # (Lc, G)
        wo = layer.out.weight.detach()[:, :, 0]  # (R + S, G/2)
        wres.append(wo[:R].t())
        wskip.append(wo[R:].t())
        bo = layer.out.bias.detach()
        bres.append(bo[:R])
        # summed in float64 once, then rounded: the reference adds each layer's bias in float32,
        # a difference far below the 1e-4 tolerance on logits
        bskip = bo[R:].double() if bskip is None else bskip + bo[R:].double()
    head1, head2 = model.head[1], model.head[3]
    dist = model.dist
    q = model.quantization_channels
    if isinstance(model.embed, LinearInput):  # code -> bin centre -> nn.Linear(1, R)
        emb = torch.stack([model.embed.proj.weight.detach()[:, 0], model.embed.proj.bias.detach()])  # (2, R)
        in_scale = float(np.float32(2.0 / q))
    else:
        emb, in_scale = model.embed.weight, 0.0
    matrices = {
        "wc": _np(torch.stack(wc)),
        "wres": _np(torch.stack(wres)),
        "wskip": _np(torch.stack(wskip)),
        "h1": _np(head1.weight[:, :, 0].t()),
        "h2": _np(head2.weight[:, :, 0].t()),
    }
    stored = {name: quantize(w, matrix_format(name, weights)) for name, w in matrices.items()}
    return PackedWaveNet(
        emb=_np(emb),
        wc=stored["wc"][0],
        bc=_np(torch.stack(bc)),
        wgc=_np(torch.stack(wgc)) if wgc else None,
        wlc=_np(torch.stack(wlc, dim=1)) if wlc else None,
        wres=stored["wres"][0],
        bres=_np(torch.stack(bres)),
        wskip=stored["wskip"][0],
        bskip=_np(bskip),
        h1=stored["h1"][0],
        b1=_np(head1.bias),
        h2=stored["h2"][0],
        b2=_np(head2.bias),
        dil=np.asarray(stack.dilations, dtype=np.int64),
        off=np.concatenate([[0], np.cumsum([(k - 1) * d for d in stack.dilations])[:-1]]).astype(np.int64),
        kernel=int(k),
        head=HEADS[dist.name],
        classes=int(q),
        mixtures=int(getattr(dist, "mixtures", 0)),
        log_scale_min=float(getattr(dist, "log_scale_min", 0.0)),
        in_scale=in_scale,
        weights=weights,
        scales=tuple(stored[name][1] for name in ("wc", "wres", "wskip", "h1", "h2")),
    )


def pack_global_bias(packed: PackedWaveNet, global_cond: torch.Tensor | None, batch_size: int) -> np.ndarray:
    """Conv bias plus the global-conditioning term of every layer: ``(B, NL, G)`` float32.

    ``global_cond`` is the model's speaker embedding ``(B, Gc)`` (or None when unconditioned).
    """
    bias = np.repeat(packed.bc[None], batch_size, axis=0)  # a writable copy: one compiled signature
    if global_cond is None:
        return bias
    if packed.wgc is None:
        raise ValueError("global_cond given, but the model has no global-conditioning projections")
    g = global_cond.detach().to("cpu", torch.float32).numpy().astype(np.float32)  # (B, Gc)
    if g.shape != (batch_size, packed.wgc.shape[1]):
        raise ValueError(f"global_cond must be ({batch_size}, {packed.wgc.shape[1]}), got {g.shape}")
    # gc(g) in float32 per layer, as nn.Linear computes it
    cond = np.einsum("bc,lcg->blg", g, packed.wgc, dtype=np.float32)
    return np.ascontiguousarray(bias + cond, dtype=np.float32)


def pack_cond_bias(packed: PackedWaveNet, gbias: np.ndarray, local: torch.Tensor) -> np.ndarray:
    """Per-step gate biases with local conditioning: ``(T, B, NL, G)`` float32.

    Args:
        packed: the model's weights (with ``wlc``).
        gbias: ``(B, NL, G)`` conv bias plus global conditioning (:func:`pack_global_bias`).
        local: ``(B, Lc, T)`` conditioning columns (a slice of ``model.upsample(mel)``), any
            float dtype and device; row ``t`` of the result belongs to column ``t``.

    One ``(T*B, Lc) @ (Lc, NL*G)`` float32 product for all layers (memory ``T*B*NL*G*4``
    bytes: the caller bounds ``T``).
    """
    if packed.wlc is None:
        raise ValueError("local conditioning given, but the model has no local-conditioning projections")
    lc, nl, g = packed.wlc.shape
    batch = gbias.shape[0]
    if local.dim() != 3 or local.shape[:2] != (batch, lc):
        raise ValueError(f"local must be ({batch}, {lc}, T), got shape {tuple(local.shape)}")
    cols = local.detach().to("cpu", torch.float32).permute(2, 0, 1).reshape(-1, lc)  # (T*B, Lc)
    proj = torch.mm(cols, torch.from_numpy(packed.wlc).view(lc, nl * g)).view(-1, batch, nl * g)  # (T, B, NL*G)
    proj += torch.from_numpy(gbias).view(1, batch, nl * g)
    return np.ascontiguousarray(proj.view(-1, batch, nl, g).numpy())


def kernel_uniforms(packed: PackedWaveNet, uniforms: torch.Tensor) -> np.ndarray:
    """The uniforms of a generation as the kernels' sampling takes them: ``(N, B, U)`` float64.

    ``uniforms``: ``(N, B)`` or ``(N, B, U)`` from :func:`wavedil.generate`. ``mulaw`` keeps its
    one uniform. The linear-bin heads turn the uniform of the value into its standardised noise
    here, with the very torch calls of ``model.dist.sample``: ``log(v) - log1p(-v)`` (mol, second
    uniform; the first picks the component) or ``ndtri(v)`` (gaussian), ``v`` clamped to
    ``[1e-300, 1 - 2**-53]``; the kernels scale and shift it (:func:`wavedil.fast._kernels.draw`).
    """
    u = uniforms.detach().to("cpu", torch.float64)
    if u.dim() == 2:
        u = u.unsqueeze(-1)
    if packed.head == HEADS["mol"]:
        v = u[:, :, 1].clamp(1e-300, 1.0 - 2**-53)
        u = torch.stack([u[:, :, 0], torch.log(v) - torch.log1p(-v)], dim=-1)
    elif packed.head == HEADS["gaussian"]:
        v = u[:, :, 0].clamp(1e-300, 1.0 - 2**-53)
        u = torch.special.ndtri(v).unsqueeze(-1)
    return np.ascontiguousarray(u.numpy())


def ring_from_state(packed: PackedWaveNet, state: StackState, rows: slice = slice(None)) -> np.ndarray:
    """The ring buffers of ``state`` for batch ``rows`` as one ``(sum L, Bs, R)`` float32 array.

    Slot ``t % L`` keeps the meaning it has in :class:`~wavedil.layers.StackState`. Only the
    slots written so far (all of them once ``pos >= L``) are copied; the rest are zeros that
    the operating system maps lazily, so a fresh state of a large batch costs next to nothing.
    """
    if len(state.buffers) != len(packed.dil):
        raise ValueError(f"state has {len(state.buffers)} layers, the model {len(packed.dil)}")
    first = state.buffers[0][rows]
    ring = np.zeros((packed.ring_rows, first.shape[0], first.shape[1]), np.float32)
    for buf, off in zip(state.buffers, packed.off):
        buf = buf[rows]
        n = min(state.pos, buf.shape[-1])
        ring[off : off + n] = buf[:, :, :n].detach().to("cpu", torch.float32).permute(2, 0, 1).numpy()
    return ring


def state_from_ring(packed: PackedWaveNet, ring: np.ndarray, pos: int) -> StackState:
    """The :class:`~wavedil.layers.StackState` (float32, CPU) of rings ``(sum L, B, R)`` at ``pos``:
    the inverse of :func:`ring_from_state`."""
    k = packed.kernel
    buffers = [
        torch.from_numpy(ring[off : off + (k - 1) * d].copy()).permute(1, 2, 0)
        for off, d in zip(packed.off.tolist(), packed.dil.tolist())
    ]  # (B, R, L) each, time-major in memory as new_ring's
    return StackState(buffers, int(pos))


def split_columns(a: np.ndarray, bounds: list[tuple[int, int]], width: int) -> np.ndarray:
    """Column blocks ``a[..., lo:hi]`` stacked on a new leading axis, zero padded to ``width``.

    ``(..., N) -> (P, ..., width)`` for ``P = len(bounds)``.
    """
    out = np.zeros((len(bounds),) + a.shape[:-1] + (width,), dtype=a.dtype)
    for p, (lo, hi) in enumerate(bounds):
        out[p, ..., : hi - lo] = a[..., lo:hi]
    return out


def dequantized_model(model: WaveNet, weights: str) -> WaveNet:
    """A float32 copy of ``model`` whose weights are those the kernels compute with in mode
    ``weights``: ``model(codes)`` of the copy is what ``fast`` computes, up to float32 rounding
    (and, for int8, the kernels' rounding of each product's input vector to 16 bits).

    For checking a reduced mode (its teacher-forced outputs equal the copy's forward) and for
    running its exact arithmetic through torch. Models with weight norm are not supported.
    """
    import copy

    packed = pack_model(model, weights)
    twin = copy.deepcopy(model).float().cpu()
    stack = twin.stack
    k, R = stack.kernel_size, stack.residual_channels
    mats = {name: dequantize(a, s) for name, a, s in zip(
        ("wc", "wres", "wskip", "h1", "h2"), (packed.wc, packed.wres, packed.wskip, packed.h1, packed.h2), packed.scales
    )}  # fmt: skip
    with torch.no_grad():
        for i, layer in enumerate(stack.layers):
            if "weight" not in dict(layer.conv.named_parameters()) or "weight" not in dict(layer.out.named_parameters()):
                raise ValueError("dequantized_model does not support weight-normed layers")
            g = layer.conv.weight.shape[0]
            layer.conv.weight.copy_(torch.from_numpy(mats["wc"][i]).reshape(k, R, g).permute(2, 1, 0))
            wo = torch.cat([torch.from_numpy(mats["wres"][i]).t(), torch.from_numpy(mats["wskip"][i]).t()])
            layer.out.weight.copy_(wo[:, :, None])
        twin.head[1].weight.copy_(torch.from_numpy(mats["h1"]).t()[:, :, None])
        twin.head[3].weight.copy_(torch.from_numpy(mats["h2"]).t()[:, :, None])
    return twin.to(model.embed.weight.device).eval()
