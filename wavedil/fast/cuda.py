"""The ``fast`` back-end on CUDA: the per-sample loop replayed as CUDA graphs.

On a GPU the eager cached step is bound by launch overhead, not arithmetic: each sample issues
a few hundred small kernels, each launched from Python. Here ``UNROLL`` consecutive samples --
sampling from the head's parameters, the input embedding, every layer's ring-buffer
convolution, gate and 1x1 outputs, the skip sum and the head -- are captured once as one CUDA
graph over static tensors, and each replay advances the whole batch by ``UNROLL`` samples with
a single launch and no host synchronisation. The graph updates its own state in place (the
ring buffers, the stream position and the head parameters of the next sample), so the host
only copies in the next chunk's uniforms (and mel columns) and copies out its codes.

The loop body is :class:`ChunkLoop`, ordinary tensor code that contains no host
synchronisation and no Python value that changes between chunks: the stream position is a
tensor. Each sample runs the ``torch`` back-end's own lean step
(:func:`wavedil.streaming.single_step`, the position given as that tensor: each layer gathers
its tap slots and writes one slot of its ring, O(layers) per sample), the same embedding and
head calls on the same shapes, and ``model.dist.sample`` itself, so the draws are the
reference's. (A stack whose single steps take the per-layer path -- dropout in training mode --
runs :class:`wavedil.export.StreamingStep`, which rebuilds every ring each sample.) Run eagerly
the loop is the reference for the captured graph, and it runs on the CPU too, which is how the
test suite checks its logic on machines without a GPU.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..backends import SamplingRequest, teacher_forcing_inputs
from ..export import state_to_tensors
from ..generation_step import GenerationStep
from ..layers import StackState
from ..model import WaveNet
from ..streaming import single_step

__all__ = ["UNROLL", "ChunkLoop", "cuda_available", "cuda_generate", "cuda_teacher_forced_logits"]

#: Samples per captured graph (a replay advances every sequence by this many samples).
UNROLL = 32


def cuda_available() -> bool:
    """True when a CUDA device is usable here."""
    return torch.cuda.is_available()


class ChunkLoop:
    """``UNROLL`` steps of the per-sample loop over static tensors, updated in place by :meth:`run`.

    Sampling mode (``forced=False``): before each :meth:`run` put the chunk's uniforms in
    :attr:`uniforms` ``(K, B)`` or ``(K, B, U)`` and, for a vocoder, the conditioning columns of
    the model inputs in :attr:`local` ``(B, Lc, K)`` (column ``k`` feeds the code drawn at step
    ``k``); after it :attr:`codes` ``(B, K)`` holds the draws, and :attr:`params` ``(B, P)`` the
    head's parameters for the sample after the chunk.

    Teacher forcing (``forced=True``): put the codes to feed in :attr:`codes_in` ``(B, K)``
    (and their conditioning columns in :attr:`local`); after :meth:`run`, :attr:`params_out`
    ``(B, P, K)`` holds the head's parameters after each of them, as ``model(codes)`` gives.

    Args:
        model: a WaveNet in eval mode (any device).
        state: the stream state to start from (copied, not modified).
        params: ``(B, P)`` head parameters of the first sample to draw (ignored when forced).
        global_cond: ``(B, Gc)`` from ``model.speaker_condition`` or None.
        temperature: as ``model.dist.sample`` takes it.
        steps: ``K``, the number of unrolled steps.
    """

    def __init__(
        self,
        model: WaveNet,
        state: StackState,
        params: torch.Tensor,
        global_cond: torch.Tensor | None,
        temperature: float,
        steps: int = UNROLL,
        forced: bool = False,
    ) -> None:
        assert steps >= 1
        self.model, self.temperature, self.steps, self.forced = model, float(temperature), steps, forced
        device = params.device
        batch, n_par = params.shape
        pos, buffers = state_to_tensors(state)
        self.pos = pos.to(device)
        self.buffers = [b.detach().clone() for b in buffers]
        self.params = params.detach().clone()
        self.global_cond = global_cond
        per = model.dist.uniforms_per_sample
        self.uniforms = torch.full((steps, batch) if per == 1 else (steps, batch, per), 0.5, dtype=torch.float64,
                                   device=device)  # fmt: skip
        self.local = None
        if model.upsampler is not None:
            channels = model.mel_spec.n_mels
            self.local = torch.zeros(batch, channels, steps, dtype=params.dtype, device=device)
        # forced: codes_in -> params_out; sampling: uniforms -> codes
        self.codes_in = torch.zeros(batch, steps, dtype=torch.long, device=device) if forced else None
        self.codes = None if forced else torch.zeros(batch, steps, dtype=torch.long, device=device)
        self.params_out = torch.zeros(batch, n_par, steps, dtype=params.dtype, device=device) if forced else None
        self.plan = model.stack.lean_plan(batch)  # (weights, workspace of its own), or None: per-layer steps

    def _state(self) -> list[torch.Tensor]:
        return [self.pos, self.params, *self.buffers]

    def snapshot(self) -> list[torch.Tensor]:
        """Copies of the tensors that :meth:`run` updates (see :meth:`restore`)."""
        return [t.clone() for t in self._state()]

    def restore(self, saved: list[torch.Tensor]) -> None:
        for t, s in zip(self._state(), saved):
            t.copy_(s)

    @torch.no_grad()
    def run(self) -> None:
        """Advance ``K`` steps in place (no host synchronisation: capturable as a CUDA graph)."""
        params, drawn, outs = self.params, [], []
        advance = self._lean_step if self.plan is not None else self._export_step()
        for k in range(self.steps):
            if self.forced:
                code = self.codes_in[:, k]
            else:
                code = self.model.dist.sample(params, self.uniforms[k], self.temperature)  # (B,)
                drawn.append(code)
            params = advance(code, k)  # (B, P)
            if self.forced:
                outs.append(params)
        if self.forced:
            self.params_out.copy_(torch.stack(outs, dim=2))
        else:
            self.codes.copy_(torch.stack(drawn, dim=1))
        self.params.copy_(params)

    def _lean_step(self, code: torch.Tensor, k: int) -> torch.Tensor:
        """Feed ``code (B,)`` at step ``k`` as ``WaveNet.step`` does (its embedding and head around
        :func:`single_step`, which updates the rings in place): the next head parameters ``(B, P)``."""
        model, (weights, ws) = self.model, self.plan
        x = model.embed_codes(code.unsqueeze(1), "code").transpose(1, 2)  # (B, R, 1), as WaveNet.step
        local = None if self.local is None else self.local[:, :, k]
        _, skip = single_step(weights, ws, self.buffers, self.pos, x[:, :, 0], self.global_cond, local)
        self.pos.add_(1)
        return model.head(skip.unsqueeze(-1))[:, :, 0]

    def _export_step(self) -> Callable[[torch.Tensor, int], torch.Tensor]:
        """The per-layer form of :meth:`_lean_step`: :class:`GenerationStep`, which returns new rings."""
        gen = GenerationStep(self.model, self.temperature)
        cond = [] if self.global_cond is None else [self.global_cond]

        def advance(code: torch.Tensor, k: int) -> torch.Tensor:
            local = [] if self.local is None else [self.local[:, :, k : k + 1]]
            params, pos, *buffers = gen.advance(code, self.pos, *cond, *local, *self.buffers)
            self.pos.copy_(pos)
            for old, new in zip(self.buffers, buffers):
                old.copy_(new)
            return params

        return advance


def _runner(loop: ChunkLoop, graph: bool) -> Callable[[], None]:
    """``loop.run`` itself, or the replay of a CUDA graph captured from it (state left as it was)."""
    if not graph:
        return loop.run
    saved = loop.snapshot()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the capture: cuBLAS/cuDNN handles, allocator pools
        loop.run()
    torch.cuda.current_stream().wait_stream(side)
    loop.restore(saved)  # the warm-up advanced the stream; the capture itself runs nothing
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        loop.run()
    return g.replay


def _use_graph(device: torch.device, graph: bool | None) -> bool:
    return device.type == "cuda" if graph is None else bool(graph)


@torch.no_grad()
def cuda_generate(request: SamplingRequest, graph: bool | None = None, steps: int = UNROLL) -> torch.Tensor:
    """Run ``request`` (fp32 weights) as :class:`ChunkLoop` s: codes ``(B, N)`` int64.

    ``graph``: replay CUDA graphs (default on CUDA devices) or run :class:`ChunkLoop` eagerly
    (the default elsewhere; what the tests check on the CPU). ``steps``: samples per graph.
    """
    if request.weights != "fp32":
        raise ValueError(f"the CUDA-graph loop runs weights='fp32', not {request.weights!r}")
    params, local, uniforms = request.params, request.local, request.uniforms
    batch, n = request.batch_size, request.n_samples
    loop = ChunkLoop(request.model, request.state, params, request.global_condition(), request.temperature, steps)
    run = _runner(loop, _use_graph(params.device, graph))
    out = torch.empty(batch, n, dtype=torch.long, device=params.device)
    for t0 in range(0, n, steps):
        m = min(steps, n - t0)
        loop.uniforms[:m].copy_(uniforms[t0 : t0 + m])
        if local is not None:
            # step k feeds the code drawn for sample t0 + k, whose input column is t0 + k + 1
            cols = local[:, :, t0 + 1 : t0 + steps + 1]
            loop.local[:, :, : cols.shape[2]].copy_(cols)
            loop.local[:, :, cols.shape[2] :].zero_()
        run()
        out[:, t0 : t0 + m].copy_(loop.codes[:, :m])
        if request.progress is not None:
            request.progress(t0 + m)
    return out


@torch.no_grad()
def cuda_teacher_forced_logits(
    model: WaveNet,
    codes: torch.Tensor,
    speaker: torch.Tensor | None = None,
    mel: torch.Tensor | None = None,
    graph: bool | None = None,
    steps: int = UNROLL,
) -> torch.Tensor:
    """Head parameters ``(B, P, T)`` of the same loop fed ``codes (B, T)`` from an empty state.

    The counterpart of ``model(codes, speaker, mel)`` for checking the captured graph against
    the reference. ``mel``: vocoders, ``(B, n_mels, T / hop + 2 c)`` as ``forward`` takes it.
    """
    codes, global_cond, local = teacher_forcing_inputs(model, codes, speaker, mel)
    batch, n = codes.shape
    device = codes.device
    params = torch.zeros(batch, model.dist.param_channels, device=device, dtype=model.embed.weight.dtype)
    loop = ChunkLoop(model, model.init_state(batch), params, global_cond, 1.0, steps, forced=True)
    run = _runner(loop, _use_graph(device, graph))
    out = torch.empty(batch, model.dist.param_channels, n, dtype=params.dtype, device=device)
    for t0 in range(0, n, steps):
        m = min(steps, n - t0)
        loop.codes_in.zero_()
        loop.codes_in[:, :m].copy_(codes[:, t0 : t0 + m])
        if local is not None:
            loop.local.zero_()
            loop.local[:, :, :m].copy_(local[:, :, t0 : t0 + m])
        run()
        out[:, :, t0 : t0 + m].copy_(loop.params_out[:, :, :m])
    return out
