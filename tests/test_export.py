"""The streaming step with its state as tensors: eager, TorchScript, torch.compile and ONNX agree
with ``DilatedStack.step`` / ``forward``, at every position, for any chunking."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from wavedil import CausalConv1d, DilatedStack
from wavedil.export import (
    MissingDependencyError,
    StreamingStep,
    ring_conv_step,
    state_from_tensors,
    state_to_tensors,
    to_exported_program,
    to_onnx,
    to_torchscript,
)

ATOL = 1e-5
DILATIONS = {2: (1, 2, 4, 8, 16), 3: (1, 2, 4, 1, 2, 4)}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors gain nothing from threads, and on a busy machine OpenMP's waits cost ~5 ms a conv."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _stack(kernel_size: int, cond: bool = True, **kw) -> DilatedStack:
    torch.manual_seed(0)
    options = dict(gate_channels=10, skip_channels=7, kernel_size=kernel_size, dilations=DILATIONS[kernel_size])
    if cond:
        options.update(global_cond_channels=3, local_cond_channels=2)
    return DilatedStack(6, **{**options, **kw}).eval()


def _inputs(batch: int, T: int, cond: bool = True):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 6, T, generator=g)
    gc = torch.randn(batch, 3, generator=g) if cond else None
    lc = torch.randn(batch, 2, T, generator=g) if cond else None
    return x, gc, lc


def _run(fn, step: StreamingStep, x, gc, lc, state, start: int = 0):
    """Feed ``x[..., start:]`` through ``fn`` (a StreamingStep or an export of it) chunk by chunk."""
    T, c = x.shape[-1], step.chunk_length
    res, skips = [], []
    for i in range(start, T, c):
        lci = lc[:, :, i : i + c] if lc is not None else None
        (r, s), state = step.unpack(fn(*step.pack(x[:, :, i : i + c], state, gc, lci)))
        res.append(r)
        skips.append(s)
    return torch.cat(res, -1), torch.cat(skips, -1), state


def _eager(stack, x, gc, lc, chunk: int):
    state = stack.init_state(x.shape[0])
    res, skips = [], []
    for i in range(0, x.shape[-1], chunk):
        lci = lc[:, :, i : i + chunk] if lc is not None else None
        (r, s), state = stack.step(x[:, :, i : i + chunk], state, gc, lci)
        res.append(r)
        skips.append(s)
    return torch.cat(res, -1), torch.cat(skips, -1), state


def _assert_states_equal(a, b):
    assert a.pos == b.pos
    for ba, bb in zip(a.buffers, b.buffers, strict=True):
        torch.testing.assert_close(ba, bb, rtol=0, atol=ATOL)


# ----------------------------------------------------------------------------- pure helpers


@pytest.mark.parametrize("k, d, T", [(2, 4, 1), (3, 2, 1), (3, 5, 3), (2, 3, 9)])
@pytest.mark.parametrize("pos", [0, 5, 10**12 + 7])
def test_ring_conv_step_matches_causal_conv_step(k, d, T, pos):
    torch.manual_seed(0)
    conv = CausalConv1d(4, 5, k, d)
    buf = torch.randn(2, 4, conv.padding)
    x = torch.randn(2, 4, T)
    before = buf.clone()
    with torch.no_grad():
        y, new = ring_conv_step(x, buf, torch.tensor(pos), conv.weight, conv.bias, d)
        y_ref, new_ref = conv.step(x, buf.clone(), pos)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=ATOL)
    torch.testing.assert_close(new, new_ref, rtol=0, atol=0)
    assert torch.equal(buf, before), "the ring must not be updated in place"


def test_state_tensor_round_trip():
    state = _stack(2).init_state(3)
    state.pos = 41
    pos, buffers = state_to_tensors(state)
    assert pos.dtype == torch.int64 and pos.dim() == 0 and int(pos) == 41
    back = state_from_tensors(pos, [b.numpy() for b in buffers])
    _assert_states_equal(back, state)


# ----------------------------------------------------------------------------- eager StreamingStep


@pytest.mark.parametrize("options", [dict(layout="BTC"), dict(skip_channels=0), dict(weight_norm=True, activation="gelu")])
@pytest.mark.parametrize("traced", [False, True])
def test_block_options_stream_exactly(options, traced):
    stack = _stack(3, **options)
    step = StreamingStep(stack, chunk_length=5)
    fn = to_torchscript(stack, chunk_length=5) if traced else step
    assert ("skip" in step.output_names) == (stack.skip_channels > 0)
    x, gc, lc = _inputs(2, 25)
    btc = options.get("layout") == "BTC"
    flip = (lambda t: t.transpose(1, 2)) if btc else (lambda t: t)  # (B, C, T) <-> the stack's layout
    with torch.no_grad():
        full = flip(stack(flip(x), gc, flip(lc))[0])
        state, out = stack.init_state(2), []
        for i in range(0, 25, 5):
            (r, s), state = step.unpack(fn(*step.pack(flip(x[:, :, i : i + 5]), state, gc, flip(lc[:, :, i : i + 5]))))
            assert (s is None) == (stack.skip_channels == 0)
            out.append(flip(r))
    torch.testing.assert_close(torch.cat(out, -1), full, rtol=0, atol=ATOL)


def test_bad_arguments_are_value_errors_naming_the_values():
    stack = _stack(2)
    with pytest.raises(ValueError, match="chunk_length must be an integer >= 1, got 0"):
        StreamingStep(stack, chunk_length=0)
    with pytest.raises(ValueError, match="DilatedStack, got Linear"):
        StreamingStep(torch.nn.Linear(2, 2))
    step = StreamingStep(stack, chunk_length=4)
    x, gc, lc = _inputs(1, 3)
    state = stack.init_state(1)
    with pytest.raises(ValueError, match=r"expected x \(B, 6, 4\) \(chunk_length=4\), got shape \(1, 6, 3\)"):
        step(*step.pack(x, state, gc, lc))
    with pytest.raises(ValueError, match="built with global_cond: pass global_cond"):
        step.pack(x, state, None, lc)
    with pytest.raises(ValueError, match=r"expected 9 inputs \['x', 'pos', 'global_cond'"):
        step(x, torch.tensor(0), gc)


# ----------------------------------------------------------------------------- TorchScript


@pytest.mark.parametrize("kernel_size", [2, 3])
@pytest.mark.parametrize("batch", [1, 3])
def test_torchscript_single_steps_equal_eager(kernel_size, batch):
    stack = _stack(kernel_size)
    scripted = to_torchscript(stack)
    step = StreamingStep(stack)
    x, gc, lc = _inputs(batch, 40)  # 40 > receptive field: every ring wraps several times
    with torch.no_grad():
        res_full, skip_full = stack(x, gc, lc)
        res_e, skip_e, state_e = _eager(stack, x, gc, lc, chunk=1)
        res, skip, state = _run(scripted, step, x, gc, lc, stack.init_state(batch))
    torch.testing.assert_close(res, res_e, rtol=0, atol=ATOL)
    torch.testing.assert_close(skip, skip_e, rtol=0, atol=ATOL)
    torch.testing.assert_close(res, res_full, rtol=0, atol=ATOL)
    torch.testing.assert_close(skip, skip_full, rtol=0, atol=ATOL)
    _assert_states_equal(state, state_e)  # the same ring layout: states move between the two paths


@pytest.mark.parametrize("kernel_size", [2, 3])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("chunk", [5, 20])  # 20 is longer than the largest ring (16 and 8)
def test_torchscript_chunks_continue_an_eager_stream(kernel_size, batch, chunk, tmp_path):
    stack = _stack(kernel_size)
    path = tmp_path / "step.pt"
    to_torchscript(stack, chunk_length=chunk).save(str(path))
    scripted = torch.jit.load(str(path))
    step = StreamingStep(stack, chunk_length=chunk)
    start = 3  # eager first, so the exported step starts mid-ring at pos 3
    T = start + 4 * chunk
    x, gc, lc = _inputs(batch, T)
    with torch.no_grad():
        res_full, skip_full = stack(x, gc, lc)
        (r0, s0), state = stack.step(x[:, :, :start], stack.init_state(batch), gc, lc[:, :, :start])
        res, skip, state = _run(scripted, step, x, gc, lc, state, start=start)
    assert state.pos == T
    torch.testing.assert_close(torch.cat([r0, res], -1), res_full, rtol=0, atol=ATOL)
    torch.testing.assert_close(torch.cat([s0, skip], -1), skip_full, rtol=0, atol=ATOL)


def test_export_leaves_the_stack_and_the_inputs_alone():
    stack = _stack(2, dropout=0.5).train()
    scripted = to_torchscript(stack)
    assert stack.training and all(p.requires_grad for p in stack.parameters())
    step = StreamingStep(stack)
    x, gc, lc = _inputs(2, 1)
    state = stack.init_state(2)
    for b in state.buffers:
        b.normal_()
    inputs = step.pack(x, state, gc, lc)
    before = [t.clone() for t in inputs]
    outs = scripted(*inputs)
    outs_again = scripted(*inputs)  # dropout was traced in eval mode: deterministic
    for a, b in zip(inputs, before, strict=True):
        assert torch.equal(a, b)
    for a, b in zip(outs, outs_again, strict=True):
        assert torch.equal(a, b)


def test_exported_program_has_a_dynamic_batch_and_position():
    stack = _stack(3)
    program = to_exported_program(stack, chunk_length=4)  # exported with batch 2
    step = StreamingStep(stack, chunk_length=4)
    x, gc, lc = _inputs(3, 24)
    with torch.no_grad():
        res_full, skip_full = stack(x, gc, lc)
        res, skip, state = _run(program.module(), step, x, gc, lc, stack.init_state(3))
    torch.testing.assert_close(res, res_full, rtol=0, atol=ATOL)
    torch.testing.assert_close(skip, skip_full, rtol=0, atol=ATOL)
    assert state.pos == 24


# ----------------------------------------------------------------------------- torch.compile


def _compiled_stream(backend: str, kernel_size: int = 2, steps: int = 24, warmup: int = 2):
    from torch._dynamo.utils import counters

    stack = _stack(kernel_size)
    step = StreamingStep(stack)
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(step, backend=backend, fullgraph=True)
    x, gc, lc = _inputs(2, steps)
    with torch.no_grad():
        res_e, skip_e, state_e = _eager(stack, x, gc, lc, chunk=1)
        state, out, skips = stack.init_state(2), [], []
        for i in range(steps):
            # After the warm-up any recompilation (e.g. a guard on pos) is an error.
            with torch._dynamo.config.patch(error_on_recompile=i >= warmup):
                (r, s), state = step.unpack(compiled(*step.pack(x[:, :, i : i + 1], state, gc, lc[:, :, i : i + 1])))
            out.append(r)
            skips.append(s)
    torch.testing.assert_close(torch.cat(out, -1), res_e, rtol=0, atol=ATOL)
    torch.testing.assert_close(torch.cat(skips, -1), skip_e, rtol=0, atol=ATOL)
    _assert_states_equal(state, state_e)
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])


def test_compiled_step_graph_capture_has_no_recompiles():
    """Dynamo's capture (the part that decides about recompiles) with a cheap backend."""
    _compiled_stream("aot_eager")


@pytest.mark.slow
def test_compiled_step_inductor_equals_eager_without_recompiles():
    _compiled_stream("inductor", kernel_size=3)


# ----------------------------------------------------------------------------- ONNX


def test_onnx_without_the_packages_is_a_clear_error(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxscript" else real(name, *a))
    with pytest.raises(MissingDependencyError, match=r"onnxscript.*pip install 'wavedil\[onnx\]'") as info:
        to_onnx(_stack(2), tmp_path / "step.onnx")
    assert isinstance(info.value, ValueError) and isinstance(info.value, ImportError)


@pytest.mark.parametrize("kernel_size", [2, 3])
def test_onnx_runtime_equals_eager(kernel_size, tmp_path):
    for name in ("onnx", "onnxscript", "onnxruntime"):
        pytest.importorskip(name, reason=f"{name} is not installed (pip install 'wavedil[onnx]')")
    import onnxruntime

    stack = _stack(kernel_size)
    path = to_onnx(stack, tmp_path / "step.onnx")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    step = StreamingStep(stack)
    assert [i.name for i in session.get_inputs()] == step.input_names

    def run(*inputs):
        return session.run(None, {n: t.numpy() for n, t in zip(step.input_names, inputs, strict=True)})

    x, gc, lc = _inputs(3, 30)  # exported with batch 2: the batch is dynamic
    with torch.no_grad():
        res_e, skip_e, state_e = _eager(stack, x, gc, lc, chunk=1)
    res, skip, state = _run(run, step, x, gc, lc, stack.init_state(3))
    torch.testing.assert_close(res, res_e, rtol=0, atol=ATOL)
    torch.testing.assert_close(skip, skip_e, rtol=0, atol=ATOL)
    _assert_states_equal(state, state_e)


def test_onnx_path_must_end_in_onnx(tmp_path):
    pytest.importorskip("onnxscript")
    with pytest.raises(ValueError, match="must end in .onnx, got '.*step.pt'"):
        to_onnx(_stack(2), tmp_path / "step.pt")


def test_onnx_is_written_whole_or_not_at_all(monkeypatch, tmp_path):
    """Before: ``to_onnx`` saved straight to the path, so a failure while saving (a full disk, a
    kill) left a partial ``.onnx`` in place of an earlier good one."""
    for name in ("onnx", "onnxscript"):
        pytest.importorskip(name, reason=f"{name} is not installed (pip install 'wavedil[onnx]')")
    path = tmp_path / "step.onnx"
    path.write_bytes(b"the earlier export")

    def failing(self, destination, **kwargs):
        Path(destination).write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch.onnx.ONNXProgram, "save", failing)
    with pytest.raises(OSError, match="No space left"):
        to_onnx(_stack(2), path)
    assert path.read_bytes() == b"the earlier export" and sorted(p.name for p in tmp_path.iterdir()) == ["step.onnx"]
    # (a successful save through the same path: test_onnx_runtime_equals_eager)
