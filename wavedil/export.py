"""The streaming step of a :class:`~wavedil.layers.DilatedStack` as a pure function of tensors.

:meth:`DilatedStack.step` keeps the stream position as a Python ``int`` and updates single-sample
steps in place: the fastest choice in eager Python, but a graph capture would bake the position
in as a constant. :class:`StreamingStep` computes the same thing with the whole state as explicit
tensor inputs and outputs, and every ring-buffer index computed from ``pos`` by tensor ops
(``remainder``, ``index_select``). One captured graph therefore serves every position, which is
what TorchScript tracing, ONNX export and ``torch.compile`` (no recompiles while ``pos`` grows)
need. Tensors are ``(B, C, T)``; with ``layout="BTC"`` the stack's ``(B, C, T)`` tensors are
``(B, T, C)`` here too::

    inputs   x (B, R, T), pos (), [global_cond (B, G)], [local_cond (B, Lc, T)], buffer_0 .. buffer_{n-1}
    outputs  residual (B, R, T), [skip (B, S, T)], new_pos (), new_buffer_0 .. new_buffer_{n-1}

``T`` is the fixed ``chunk_length``; bracketed entries exist only when the stack was built with
global / local conditioning / skip outputs (see :attr:`StreamingStep.input_names`). The buffers
have the :class:`~wavedil.streaming.StackState` ring layout: layer ``i`` holds ``(B, R, L_i)`` with
``L_i = (k - 1) * d_i`` and slot ``t % L_i`` holding the input of time ``t``, so a state moves
between the eager and the exported step with :func:`state_to_tensors` /
:func:`state_from_tensors`. The ring arithmetic (:func:`~wavedil.streaming.ring_conv_step`) is
the one :mod:`wavedil.streaming` implements for the eager step too; it is re-exported here.

>>> stack = DilatedStack(8, layers_per_stack=3).eval()
>>> scripted = to_torchscript(stack)
>>> step = StreamingStep(stack)
>>> state = stack.init_state(2)
>>> (res, skip), state = step.unpack(scripted(*step.pack(torch.randn(2, 8, 1), state)))
>>> res.shape, state.pos
(torch.Size([2, 8, 1]), 1)
"""

from __future__ import annotations

import copy
import importlib.util
import os
import warnings
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from .audio import check_writable_folder
from .layers import DilatedStack, check_tensor_input
from .streaming import StackState, ring_conv_step, state_from_tensors, state_to_tensors

__all__ = [
    "MissingDependencyError",
    "StreamingStep",
    "ring_conv_step",
    "state_to_tensors",
    "state_from_tensors",
    "to_torchscript",
    "to_exported_program",
    "to_onnx",
    "check_onnx_path",
    "ONNX_PACKAGES",
    "MIN_ONNX_OPSET",
    "require_packages",
]

#: The oldest ONNX opset torch's exporter writes: it converts a lower request and may fail doing so.
MIN_ONNX_OPSET = 18

#: What ``to_onnx`` imports (the ``wavedil[onnx]`` extra); onnxruntime is only needed to run the file.
ONNX_PACKAGES = ("onnx", "onnxscript")


class MissingDependencyError(ImportError, ValueError):
    """An optional dependency is not installed (an ``ImportError`` that CLIs can catch as ``ValueError``)."""


# ----------------------------------------------------------------------------- the module


class StreamingStep(nn.Module):
    """:meth:`DilatedStack.step` as a pure tensor function for chunks of ``chunk_length`` samples.

    Args:
        stack: the stack to run (shared, not copied: later weight updates show through).
        chunk_length: ``T``, the fixed number of time steps per call (1 for sample-by-sample).

    ``forward(x, pos, [global_cond], [local_cond], *buffers)`` returns
    ``(residual, [skip], new_pos, *new_buffers)``; see the module docstring for the shapes and
    :attr:`input_names` / :attr:`output_names` for the exact list. Nothing is updated in place.
    Use :meth:`pack` and :meth:`unpack` to call it (or its TorchScript/ONNX/compiled forms) with
    a :class:`StackState`::

        (res, skip), state = step.unpack(step(*step.pack(x, state)))
    """

    def __init__(self, stack: DilatedStack, chunk_length: int = 1) -> None:
        super().__init__()
        if not isinstance(stack, DilatedStack):
            raise ValueError(f"stack must be a wavedil DilatedStack, got {type(stack).__name__}")
        if isinstance(chunk_length, bool) or not isinstance(chunk_length, int) or chunk_length < 1:
            raise ValueError(f"chunk_length must be an integer >= 1, got {chunk_length!r}")
        self.stack = stack
        self.chunk_length = chunk_length
        first = stack.layers[0]
        self.has_global_cond = first.global_cond_proj is not None
        self.has_local_cond = first.local_cond_proj is not None
        self.has_skip = stack.skip_channels > 0
        self.num_layers = len(stack.layers)

    @property
    def input_names(self) -> list[str]:
        """Names of the positional inputs, in order (also the ONNX input names)."""
        cond = ["global_cond"] * self.has_global_cond + ["local_cond"] * self.has_local_cond
        return ["x", "pos", *cond, *(f"buffer_{i}" for i in range(self.num_layers))]

    @property
    def output_names(self) -> list[str]:
        """Names of the outputs, in order (also the ONNX output names)."""
        skip = ["skip"] * self.has_skip
        return ["residual", *skip, "new_pos", *(f"new_buffer_{i}" for i in range(self.num_layers))]

    def forward(self, x: torch.Tensor, pos: torch.Tensor, *rest: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """One chunk: see the class docstring. ``x`` is ``(B, R, chunk_length)`` (``(B, T, R)`` for BTC)."""
        n_cond = int(self.has_global_cond) + int(self.has_local_cond)
        if len(rest) != n_cond + self.num_layers:
            raise ValueError(
                f"expected {len(self.input_names)} inputs {self.input_names}, got {2 + len(rest)}"
            )
        global_cond = rest[0] if self.has_global_cond else None
        local_cond = rest[n_cond - 1] if self.has_local_cond else None
        buffers = rest[n_cond:]
        btc = self.stack.layout == "BTC"
        if btc:
            x = x.transpose(1, 2)
            local_cond = local_cond.transpose(1, 2) if local_cond is not None else None
        if not torch.jit.is_tracing():  # a trace sees shapes as tensors; it checked its own example
            self._check_chunk(x)
            if isinstance(pos, torch.Tensor) and (pos.dim() != 0 or pos.dtype not in (torch.int64, torch.int32)):
                raise ValueError(
                    f"pos must be a 0-dim int64 tensor (the stream position), got {pos.dtype} of shape {tuple(pos.shape)}"
                )
            self._check_buffers(x, buffers)

        skip_sum: torch.Tensor | None = None
        new_buffers = []
        for layer, buf in zip(self.stack.layers, buffers):
            conv = layer.conv
            h, buf = ring_conv_step(x, buf, pos, conv.weight, conv.bias, conv.dilation)
            # The gate and the 1x1 outputs are the block's own code, so the two paths cannot drift.
            x, skip = layer.residual_and_skip(x, layer.gate(h, global_cond, local_cond))
            new_buffers.append(buf)
            if skip is not None:
                skip_sum = skip if skip_sum is None else skip_sum + skip
        outs = [x.transpose(1, 2) if btc else x]
        if skip_sum is not None:
            outs.append(skip_sum.transpose(1, 2) if btc else skip_sum)
        return (*outs, pos + self.chunk_length, *new_buffers)

    def _check_chunk(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"x must be a torch.Tensor chunk, got {type(x).__name__}")
        R, T = self.stack.residual_channels, self.chunk_length
        if x.dim() != 3 or x.shape[1] != R or x.shape[-1] != T:
            btc = self.stack.layout == "BTC"
            want = f"(B, {T}, {R})" if btc else f"(B, {R}, {T})"
            got = tuple(x.transpose(1, 2).shape) if btc and x.dim() == 3 else tuple(x.shape)
            raise ValueError(f"expected x {want} (chunk_length={T}), got shape {got}")

    def _check_buffers(self, x: torch.Tensor, buffers: Sequence[torch.Tensor]) -> None:
        """A ``ValueError`` naming the first ring that does not fit ``x (B, R, T)``: each ``buffer_i`` must be
        ``(B, R, (k - 1) * d_i)`` in the weights' dtype and device (``x`` too). O(layers), no data read."""
        check_tensor_input("x", x, next(self.stack.parameters()))
        self.stack.check_rings(
            buffers, x.shape[0], "buffer_{i}",
            "pass the rings in layer order, all of x's batch size (pack(x, state) builds the inputs)",
        )  # fmt: skip

    def pack(
        self,
        x: torch.Tensor,
        state: StackState,
        global_cond: torch.Tensor | None = None,
        local_cond: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, ...]:
        """The positional inputs for ``x``, ``state`` and the conditioning (checked against the stack)."""
        if not isinstance(state, StackState):
            raise ValueError(f"state must be a StackState (from stack.init_state(batch_size) or unpack), got {type(state).__name__}")
        if len(state.buffers) != self.num_layers:
            raise ValueError(f"state holds {len(state.buffers)} buffers, the stack has {self.num_layers} layers")
        for name, given, wanted in (
            ("global_cond", global_cond, self.has_global_cond),
            ("local_cond", local_cond, self.has_local_cond),
        ):
            if (given is not None) != wanted:
                raise ValueError(
                    f"this stack was built {'with' if wanted else 'without'} {name}: "
                    f"{'pass' if wanted else 'do not pass'} {name}"
                )
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"x must be a torch.Tensor chunk, got {type(x).__name__}")
        xb, lb = self.stack._to_bct(x), self.stack._to_bct(local_cond)  # (B, R, T), (B, L, T)
        self._check_chunk(xb)
        self.stack._check_input(xb)  # dtype and device
        self.stack.layers[0].check_cond(global_cond, lb, xb)
        self.stack.check_state(state, xb)  # every ring once per state object, then O(1)
        pos, buffers = state_to_tensors(state)
        cond = [c for c in (global_cond, local_cond) if c is not None]
        return (x, pos, *cond, *buffers)

    def unpack(self, outputs: Sequence) -> tuple[tuple[torch.Tensor, torch.Tensor | None], StackState]:
        """``((residual, skip or None), new_state)`` from the outputs of this step or of its exports
        (numpy arrays from an ONNX runtime are turned into tensors)."""
        outs = [o if isinstance(o, torch.Tensor) else torch.from_numpy(o) for o in outputs]
        if len(outs) != len(self.output_names):
            raise ValueError(f"expected {len(self.output_names)} outputs {self.output_names}, got {len(outs)}")
        res = outs[0]
        skip = outs[1] if self.has_skip else None
        n = 1 + int(self.has_skip)
        state = state_from_tensors(outs[n], outs[n + 1 :])
        state._owner = self.stack._state_token()  # the rings of a checked state, advanced: trusted by pack
        return (res, skip), state


# ----------------------------------------------------------------------------- exports


def _frozen_step(stack: DilatedStack, chunk_length: int) -> StreamingStep:
    """A StreamingStep over an eval-mode, gradient-free copy: exporting never changes ``stack``."""
    step = StreamingStep(stack, chunk_length)  # its checks first: a bad argument is named, not copied
    frozen = copy.deepcopy(stack).eval()
    frozen.requires_grad_(False)
    step.stack = frozen
    return step.eval()


def _example_inputs(step: StreamingStep, batch_size: int) -> tuple[torch.Tensor, ...]:
    stack = step.stack
    p = next(stack.parameters())
    gen = torch.Generator().manual_seed(0)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen).to(device=p.device, dtype=p.dtype)

    T, R = step.chunk_length, stack.residual_channels
    x = rand(batch_size, T, R) if stack.layout == "BTC" else rand(batch_size, R, T)
    first = stack.layers[0]
    global_cond = rand(batch_size, first.global_cond_proj.in_features) if step.has_global_cond else None
    local_cond = None
    if step.has_local_cond:
        Lc = first.local_cond_proj.in_channels
        local_cond = rand(batch_size, T, Lc) if stack.layout == "BTC" else rand(batch_size, Lc, T)
    state = stack.init_state(batch_size)
    state.pos = 5  # an arbitrary position: nothing may depend on the value the trace saw
    return step.pack(x, state, global_cond, local_cond)


def _export_inputs(stack: DilatedStack, chunk_length: int) -> tuple[StreamingStep, tuple, tuple]:
    """The frozen step, example inputs and ``torch.export`` dynamic shapes (a dynamic batch)."""
    step = _frozen_step(stack, chunk_length)
    example = _example_inputs(step, batch_size=2)  # 2, not 1: export would specialise a size-1 batch
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    # forward(x, pos, *rest): one spec per positional argument, the varargs as one tuple.
    rest = tuple({0: batch} for _ in example[2:])
    return step, example, ({0: batch}, None, rest)


def to_torchscript(stack: DilatedStack, chunk_length: int = 1) -> torch.jit.ScriptModule:
    """Trace the streaming step of ``stack`` (an eval-mode copy) to TorchScript.

    The result takes and returns the tensors of :class:`StreamingStep` (any batch size, ``pos``
    as a 0-dim int64 tensor); save it with ``.save(path)`` and run it with ``torch.jit.load``,
    from C++ too, without wavedil. PyTorch 2.11 deprecates ``torch.jit.trace`` (its warning is
    silenced here because you asked for TorchScript by name); for new deployments prefer
    :func:`to_exported_program` or :func:`to_onnx`.
    """
    step = _frozen_step(stack, chunk_length)
    example = _example_inputs(step, batch_size=2)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.trace.* is deprecated", category=DeprecationWarning)
        return torch.jit.trace(step, example)


def to_exported_program(stack: DilatedStack, chunk_length: int = 1) -> torch.export.ExportedProgram:
    """``torch.export`` the streaming step of ``stack`` (an eval-mode copy) with a dynamic batch size.

    Run it with ``program.module()(*inputs)``, save it with ``torch.export.save``, or hand it
    to AOTInductor or ExecuTorch; the inputs are those of :class:`StreamingStep`.
    """
    step, example, dynamic_shapes = _export_inputs(stack, chunk_length)
    with torch.no_grad():
        return torch.export.export(step, example, dynamic_shapes=dynamic_shapes)


def require_packages(packages: Sequence[str], purpose: str) -> None:
    """Raise :class:`MissingDependencyError` naming the ``packages`` that are not installed."""
    missing = [p for p in packages if importlib.util.find_spec(p) is None]
    if missing:
        raise MissingDependencyError(
            f"{purpose} needs the packages {', '.join(missing)}, which are not installed: "
            f"pip install 'wavedil[onnx]' (or pip install {' '.join(missing)})"
        )


def check_onnx_path(path: str | os.PathLike) -> Path:
    """``path`` as a :class:`Path` once it is known an ONNX file can be written there (before any export work).

    Raises:
        ValueError: ``path`` does not end in ``.onnx``, is a folder, or its folder cannot be created or written
            (e.g. a part of it is a file).
    """
    path = Path(path)
    if path.suffix != ".onnx":
        raise ValueError(f"ONNX output path must end in .onnx, got '{path}'")
    if path.is_dir():
        raise ValueError(f"ONNX output path '{path}' is a folder: give a file name such as '{path / 'step.onnx'}'")
    check_writable_folder(path, "the folder of the ONNX file", "output")
    return path


def to_onnx(
    stack: DilatedStack,
    path: str | os.PathLike,
    chunk_length: int = 1,
    opset_version: int | None = None,
) -> Path:
    """Export the streaming step of ``stack`` (an eval-mode copy) to the ONNX file ``path``.

    Inputs and outputs are named as :attr:`StreamingStep.input_names` / ``output_names``; the
    batch size is dynamic, ``pos`` is a 0-dim int64 input. Needs ``onnx`` and ``onnxscript``
    (``pip install 'wavedil[onnx]'``); run the file with e.g. onnxruntime.

    Raises:
        MissingDependencyError: (a ``ValueError``) when onnx or onnxscript is missing.
        ValueError: a ``path`` that cannot be written (:func:`check_onnx_path`), a bad ``opset_version``.
    """
    require_packages(ONNX_PACKAGES, "ONNX export")
    path = check_onnx_path(path)
    if opset_version is not None and (
        isinstance(opset_version, bool) or not isinstance(opset_version, int) or opset_version < MIN_ONNX_OPSET
    ):
        raise ValueError(
            f"opset_version must be an integer >= {MIN_ONNX_OPSET} (what torch's ONNX exporter implements) "
            f"or None, got {opset_version!r}"
        )
    step, example, dynamic_shapes = _export_inputs(stack, chunk_length)
    with torch.no_grad():
        onnx_program = torch.onnx.export(
            step,
            example,
            dynamo=True,
            dynamic_shapes=dynamic_shapes,
            input_names=step.input_names,
            output_names=step.output_names,
            opset_version=opset_version,
            verbose=False,
        )
    path.parent.mkdir(parents=True, exist_ok=True)  # check_onnx_path leaves no folder behind
    _save_whole(onnx_program, path)
    return path


def _save_whole(onnx_program, path: Path) -> None:
    """Save ``onnx_program`` to ``path`` whole or not at all: into a fresh folder beside it, then
    moved into place (any external-data file first, which the model names by its file name, and
    the model last), so a failure leaves no partial ``.onnx`` and an earlier file as it was."""
    import shutil
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        onnx_program.save(str(tmp / path.name))
        for made in sorted(tmp.iterdir(), key=lambda p: p.name == path.name):
            os.replace(made, path.parent / made.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
