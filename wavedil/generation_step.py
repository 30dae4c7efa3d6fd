"""The whole model's per-sample step -- embed, stack, head, sample -- as one pure tensor function.

:class:`GenerationStep` feeds one code to a :class:`~wavedil.model.WaveNet`, computes the head's
parameters for the next sample and draws it from a given uniform, with the streaming state as
explicit inputs and outputs (the stream position as a 0-dim int64 tensor, one ring buffer per
layer; :class:`wavedil.export.StreamingStep` runs the stack). Nothing is updated in place, so
it traces, compiles and exports: :func:`generator_to_torchscript` writes a file that generates
audio with ``torch.jit.load`` alone, no wavedil needed (:func:`generator_to_onnx` the same as an
ONNX file, for onnxruntime)::

    step = torch.jit.load("generator.pt")
    code = torch.full((B,), silence_code)                 # the stream opens with silence
    pos, buffers = torch.tensor(0), [torch.zeros(b) for b in buffer_shapes]
    for t in range(n):
        code, pos, *buffers = step(code, u[t], pos, *buffers)   # u: (n, B) uniforms in [0, 1)

Fed the uniforms of ``generate(model, n, seed=s)`` (``torch.rand((n, B), generator=seeded,
dtype=torch.float64)``), it draws the codes ``generate`` draws (tested).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import nn

from .backends import check_temperature
from .export import ONNX_PACKAGES, StreamingStep, check_onnx_path, require_packages, state_to_tensors
from .model import WaveNet

__all__ = ["GenerationStep", "generator_to_onnx", "generator_to_torchscript"]


class GenerationStep(nn.Module):
    """One generation step of ``model``: ``(code, uniforms, pos, [global], [local], *buffers)``
    -> ``(next_code, new_pos, *new_buffers)``.

    Args:
        model: the model (shared, not copied); run it in eval mode.
        temperature: ``> 0`` divides the logits; ``0`` is greedy. Fixed per step module.

    Inputs: ``code (B,)`` int64, the sample to feed; ``uniforms (B,)`` (or ``(B, U)`` for a
    mixture of logistics) float64 in ``[0, 1)``; ``pos`` 0-dim int64; for a speaker-conditioned
    model ``global_cond (B, Gc)`` (the model's speaker embedding, ``model.speaker(ids)``); for a
    vocoder ``local_cond (B, n_mels, 1)`` (the upsampled column of the fed sample's successor);
    then the ring buffers ``(B, R, (k-1) d)`` of every layer.
    """

    def __init__(self, model: WaveNet, temperature: float = 1.0) -> None:
        super().__init__()
        if not isinstance(model, WaveNet):
            raise ValueError(f"model must be a wavedil WaveNet, got {type(model).__name__}")
        temperature = check_temperature(temperature)  # a str or None named too, not a TypeError
        self.model = model
        self.temperature = temperature
        self.stack_step = StreamingStep(model.stack, 1)

    @property
    def input_names(self) -> list[str]:
        """Names of the positional inputs, in order."""
        return ["code", "uniforms", *self.stack_step.input_names[1:]]

    @property
    def output_names(self) -> list[str]:
        """Names of the outputs, in order."""
        return ["next_code", *self.stack_step.output_names[1 + self.stack_step.has_skip :]]

    def forward(
        self, code: torch.Tensor, uniforms: torch.Tensor, pos: torch.Tensor, *rest: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        """Feed ``code``, then draw the next code from the head's parameters: see the class docstring."""
        params, new_pos, *buffers = self.advance(code, pos, *rest)
        return (self.model.dist.sample(params, uniforms, self.temperature), new_pos, *buffers)

    def advance(self, code: torch.Tensor, pos: torch.Tensor, *rest: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Feed ``code (B,)``: ``(params (B, P), new_pos, *new_buffers)``, the head's parameters of
        the next sample (``rest`` as for :meth:`forward`)."""
        model = self.model
        # O(1) and static under tracing / export: the dtype and rank, never the values
        if code.dim() != 1 or code.is_floating_point() or code.dtype == torch.bool:
            raise ValueError(f"code must be (B,) int64 codes (the sample fed), got {code.dtype} of shape {tuple(code.shape)}")
        x = model.embed_codes(code.unsqueeze(1), "code").transpose(1, 2)  # (B, R, 1); a mulaw code outside [0, Q) named
        _, skip, new_pos, *buffers = self.stack_step(x, pos, *rest)
        return (model.head(skip)[:, :, 0], new_pos, *buffers)

    def initial_inputs(self, batch_size: int) -> tuple[torch.Tensor, ...]:
        """``(code, pos, *buffers)`` of a fresh stream: the silence code, position 0, empty rings."""
        device = self.model.embed.weight.device
        pos, buffers = state_to_tensors(self.model.init_state(batch_size))
        code = torch.full((batch_size,), self.model.silence_code, dtype=torch.long, device=device)
        return (code, pos, *buffers)


def _frozen_generator(model: WaveNet, temperature: float) -> tuple[GenerationStep, tuple[torch.Tensor, ...]]:
    """:class:`GenerationStep` of an eval-mode, gradient-free copy of ``model`` and example inputs (B = 2)."""
    import copy

    if model.upsampler is not None:
        raise ValueError(
            "generator exports are of unconditioned or speaker models, not vocoders: stream a vocoder "
            "with wavedil.vocoder_stream.StreamingVocoder"
        )
    frozen = copy.deepcopy(model).eval()
    for p in frozen.parameters():
        p.requires_grad_(False)
    step = GenerationStep(frozen, temperature)
    code, pos, *buffers = step.initial_inputs(2)  # 2, not 1: an export would specialise a batch of one
    per = frozen.dist.uniforms_per_sample
    u = torch.rand((2,) if per == 1 else (2, per), dtype=torch.float64)
    cond = [frozen.speaker(torch.zeros(2, dtype=torch.long))] if frozen.speaker is not None else []
    return step, (code, u, pos, *cond, *buffers)


def generator_to_onnx(model: WaveNet, path: str | os.PathLike, temperature: float = 1.0) -> Path:
    """Export :class:`GenerationStep` of ``model`` (unconditioned or speaker conditioned) to the
    ONNX file ``path``: inputs and outputs named as its ``input_names`` / ``output_names``, the
    batch size dynamic. Needs ``pip install 'wavedil[onnx]'``; run it with onnxruntime.

    Raises:
        ValueError: for a vocoder or a ``gaussian`` head (ONNX lacks its inverse normal CDF), a path
            not ending in ``.onnx`` or that cannot be written, or missing onnx packages.
    """
    require_packages(ONNX_PACKAGES, "ONNX export")
    if model.dist.name == "gaussian":
        raise ValueError(
            "ONNX has no inverse normal CDF, which the gaussian head samples with: export this model with "
            "generator_to_torchscript, or use a mulaw or mol head"
        )
    path = check_onnx_path(path)
    step, example = _frozen_generator(model, temperature)
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    # forward(code, uniforms, pos, *rest): one spec per positional argument, the varargs as one tuple
    dynamic = ({0: batch}, {0: batch}, None, tuple({0: batch} for _ in example[3:]))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*axis name.*will not be used.*")
        program = torch.onnx.export(step, example, dynamo=True, dynamic_shapes=dynamic, input_names=step.input_names,
                                    output_names=step.output_names, verbose=False)  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)  # check_onnx_path leaves no folder behind
    program.save(str(path))
    return path


def generator_to_torchscript(model: WaveNet, temperature: float = 1.0) -> torch.jit.ScriptModule:
    """Trace :class:`GenerationStep` of an eval-mode copy of ``model`` (unconditioned or speaker
    conditioned) to TorchScript: a file that generates audio on its own (``.save(path)``; run it
    with ``torch.jit.load``, from C++ too). Any batch size.

    Raises:
        ValueError: for a vocoder (its conditioning needs the upsampler: stream it with
            :class:`wavedil.vocoder_stream.StreamingVocoder` instead).
    """
    step, example = _frozen_generator(model, temperature)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.trace.* is deprecated", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        return torch.jit.trace(step, example, check_trace=False)
