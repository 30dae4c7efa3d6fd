"""The CUDA implementation of the ``fast`` back-end (wavedil.fast.cuda).

Its loop body, :class:`ChunkLoop`, is plain tensor code: the CPU tests run it eagerly
(``graph=False``) against the reference torch back-end, so its logic -- chunking, the tail of
a length that is not a multiple of the unroll, the mel column offsets, speaker conditioning,
every head -- is checked on every machine. The tests marked ``cuda`` capture it as CUDA graphs
on a GPU and skip cleanly without one.
"""

from __future__ import annotations

import contextlib
import functools

import pytest
import torch
from test_fast import HEADS, STEPS, make_head_model, make_model, one_torch_thread, random_mel  # noqa: F401 (autouse fixture)

from wavedil import generate
from wavedil.backends import Backend, Capabilities, SamplingRequest, register_backend, resolve_backend, unregister_backend
from wavedil.fast import make_fast_backend, supports, teacher_forced_logits
from wavedil.fast.cuda import ChunkLoop, cuda_generate, cuda_teacher_forced_logits
from wavedil.streaming import single_step

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


class _LoopBackend(Backend):
    """A back-end running ``run(request)`` (e.g. :func:`cuda_generate` eagerly, on the CPU)."""

    name = "_test_loop"
    capabilities = Capabilities(devices={"cpu": ("fp32",), "cuda": ("fp32",)})

    def __init__(self, run) -> None:
        self.run = run

    def sample(self, request: SamplingRequest) -> torch.Tensor:
        return self.run(request)

    def teacher_forced(self, *args, **kwargs):  # pragma: no cover - not used here
        raise NotImplementedError


def _codes(model, steps: int, backend, batch: int, speaker: bool, temperature: float = 1.0, seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    device = model.embed.weight.device
    prompt = torch.randint(0, model.quantization_channels, (batch, 25), generator=g).to(device)
    mel = random_mel(model, batch, 25 + steps, seed)
    kwargs = dict(batch_size=batch, seed=seed, temperature=temperature, prompt=prompt,
                  speaker=torch.tensor([1, 2, 0] * 3, device=device)[:batch] if speaker else None,
                  mel=None if mel is None else mel.to(device))  # fmt: skip
    if isinstance(backend, str):
        return generate(model, steps, backend=backend, **kwargs).codes
    register_backend("_test_loop", _LoopBackend(backend))
    try:
        return generate(model, steps, backend="_test_loop", **kwargs).codes
    finally:
        unregister_backend("_test_loop")


@contextlib.contextmanager
def full_float32():
    """float32 convolutions and matmuls without TF32 (cuDNN's convolutions default to TF32, whose
    10-bit mantissa moves the forward by ~1e-3 relative: the difference the first GPU run saw)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _assert_equal(got: torch.Tensor, ref: torch.Tensor) -> None:
    mismatch = (got.cpu() != ref.cpu()).nonzero()
    assert mismatch.numel() == 0, f"first differing (row, step) {mismatch[0].tolist()}"


# --------------------------------------------------------------------------- the loop, on the CPU


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("cond", ["none", "speaker", "mel"])
@pytest.mark.parametrize("batch", [1, 3])
def test_chunk_loop_draws_the_torch_backends_samples(head, cond, batch):
    """150 steps: four whole chunks of 32 and a tail of 22 (the padded steps are discarded)."""
    model = make_head_model(head, speaker=cond == "speaker", mel=cond == "mel")
    ref = _codes(model, 150, "torch", batch, cond == "speaker", temperature=0.8)
    got = _codes(model, 150, functools.partial(cuda_generate, graph=False), batch, cond == "speaker", temperature=0.8)
    _assert_equal(got, ref)


@pytest.mark.parametrize("steps", [1, 5, 32])
def test_chunk_loop_any_unroll_length(steps):
    model = make_head_model("mulaw", speaker=True, mel=True)
    ref = _codes(model, 70, "torch", 2, True)
    got = _codes(model, 70, functools.partial(cuda_generate, graph=False, steps=steps), 2, True)
    _assert_equal(got, ref)


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("cond", ["speaker", "mel"])
def test_chunk_loop_teacher_forced_params_match_forward(head, cond):
    q = 256 if head == "mulaw" else 65536
    model = make_head_model(head, cond == "speaker", cond == "mel", quantization_channels=q)
    codes = torch.randint(0, q, (2, 120), generator=torch.Generator().manual_seed(1))
    spk = torch.tensor([2, 0]) if cond == "speaker" else None
    mel = random_mel(model, 2, 120, seed=2)
    with torch.no_grad():
        ref = model(codes, spk, mel)
    got = cuda_teacher_forced_logits(model, codes, spk, mel, graph=False)
    assert got.shape == ref.shape
    assert (got - ref).abs().max().item() <= 1e-4


def test_chunk_loop_leaves_the_callers_state_alone():
    model = make_head_model("mulaw")
    state = model.init_state(1)
    state.buffers[0].normal_()
    before = [b.clone() for b in state.buffers]
    logits = torch.zeros(1, model.dist.param_channels)
    cuda_generate(SamplingRequest(model, state, logits, torch.rand(40, 1, dtype=torch.float64), 1.0), graph=False)
    assert state.pos == 0 and all(torch.equal(a, b) for a, b in zip(before, state.buffers))


def test_chunk_loop_checks_its_inputs():
    model = make_head_model("mol")
    state = model.init_state(2)
    logits = torch.zeros(2, model.dist.param_channels)
    with pytest.raises(ValueError, match=r"uniforms must be \(N, 2, 2\)"):
        cuda_generate(SamplingRequest(model, state, logits, torch.rand(10, 2, dtype=torch.float64), 1.0), graph=False)
    request = SamplingRequest(model, state, logits, torch.rand(10, 2, 2, dtype=torch.float64), 1.0, weights="int8")
    with pytest.raises(ValueError, match="fp32"):
        cuda_generate(request, graph=False)


@pytest.mark.parametrize("kernel_size", [2, 3])
@torch.no_grad()
def test_single_step_at_a_tensor_position_equals_the_int_position(kernel_size):
    """The CUDA-graph loop's form of the lean step (slots computed on the device from a 0-dim
    position tensor) gives the same outputs and rings, bit for bit, over several ring wraps."""
    model = make_model(kernel_size, speaker=True)
    stack, batch = model.stack, 3
    (weights, ws_int), (_, ws_tensor) = stack.lean_plan(batch), stack.lean_plan(batch)
    rings_int = stack.init_state(batch).buffers
    rings_tensor = [b.clone() for b in rings_int]
    g = torch.Generator().manual_seed(0)
    cond = model.speaker_condition(torch.tensor([0, 2, 1]), batch)
    pos = torch.tensor(0)
    for t in range(3 * 4 * (kernel_size - 1) + 5):  # past the largest ring (dilation 4) three times
        x = torch.randn(batch, stack.residual_channels, generator=g)
        res_a, skip_a = single_step(weights, ws_int, rings_int, t, x, cond)
        res_b, skip_b = single_step(weights, ws_tensor, rings_tensor, pos, x, cond)
        pos += 1
        assert torch.equal(res_a, res_b) and torch.equal(skip_a, skip_b), f"step {t}"
        assert all(torch.equal(a, b) for a, b in zip(rings_int, rings_tensor)), f"rings after step {t}"


def test_chunk_loop_takes_the_lean_step_and_falls_back_for_training_dropout():
    model = make_head_model("mulaw", speaker=True)
    state, logits = model.init_state(2), torch.zeros(2, model.dist.param_channels)
    assert ChunkLoop(model, state, logits, None, 1.0).plan is not None
    dropped = make_head_model("mulaw")
    for layer in dropped.stack.layers:  # a WaveNetConfig has no dropout; a DilatedStack of one's own may
        layer.dropout = torch.nn.Dropout(0.5)
    dropped.train()
    assert dropped.stack.lean_plan(2) is None and ChunkLoop(dropped, dropped.init_state(2), logits, None, 1.0).plan is None
    dropped.eval()
    assert dropped.stack.lean_plan(2) is not None


def test_chunk_loop_per_layer_form_draws_the_torch_backends_samples(monkeypatch):
    """The form a stack without a lean plan runs (GenerationStep, new rings each sample)."""
    model = make_head_model("mol", speaker=True, mel=True)
    ref = _codes(model, 90, "torch", 2, True, temperature=0.8)
    monkeypatch.setattr(model.stack, "lean_plan", lambda batch_size: None)
    got = _codes(model, 90, functools.partial(cuda_generate, graph=False), 2, True, temperature=0.8)
    _assert_equal(got, ref)


def test_auto_takes_the_cuda_graphs_at_small_batches_only():
    """A stand-in for a model on a GPU: ``prefers`` reads only the device of the embedding."""
    from types import SimpleNamespace

    from wavedil.fast import CUDA_AUTO_MAX_BATCH, FastBackend

    on = lambda device: SimpleNamespace(embed=SimpleNamespace(weight=SimpleNamespace(device=torch.device(device))))  # noqa: E731
    fast = FastBackend()
    assert fast.prefers(on("cuda"), CUDA_AUTO_MAX_BATCH) and not fast.prefers(on("cuda"), CUDA_AUTO_MAX_BATCH + 1)
    assert fast.prefers(on("cpu"), 256)
    model = make_head_model("mulaw")
    assert resolve_backend("auto", model, batch_size=256) == "fast"  # on the CPU, every batch


@needs_cuda
def test_auto_on_cuda_picks_the_graphs_at_batch_1_and_the_eager_step_above():
    model = make_head_model("mulaw").cuda()
    assert resolve_backend("auto", model, batch_size=1) == "fast"
    assert resolve_backend("auto", model, batch_size=64) == "torch"


@needs_cuda
def test_cpu_options_are_refused_on_cuda():
    model = make_head_model("mulaw").cuda()
    register_backend("_test_opts", make_fast_backend(threads=1))
    try:
        with pytest.raises(ValueError, match="CPU options"):
            generate(model, 5, seed=0, backend="_test_opts")
    finally:
        unregister_backend("_test_opts")


# --------------------------------------------------------------------------- CUDA graphs, on a GPU


@needs_cuda
@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("cond", ["speaker", "mel"])
def test_cuda_teacher_forced_params_match_forward(head, cond):
    q = 256 if head == "mulaw" else 65536
    model = make_head_model(head, cond == "speaker", cond == "mel", quantization_channels=q).cuda()
    codes = torch.randint(0, q, (3, 280), generator=torch.Generator().manual_seed(1)).cuda()
    spk = torch.tensor([2, 0, 1]).cuda() if cond == "speaker" else None
    mel = random_mel(model, 3, 280, seed=2)
    mel = None if mel is None else mel.cuda()
    with torch.no_grad(), full_float32():  # cuDNN's convolutions (the head's, here) use TF32 unless told not to
        ref = model(codes, spk, mel)
        got = teacher_forced_logits(model, codes, spk, mel)  # the fast name: graphs on CUDA
    assert (got - ref).abs().max().item() <= 1e-4


@needs_cuda
@pytest.mark.parametrize("head, batch", [("mulaw", 1), ("mulaw", 4), ("mol", 4), ("gaussian", 1)])
def test_cuda_graphs_draw_the_torch_backends_samples_over_2000_steps(head, batch):
    model = make_head_model(head, speaker=True, mel=True).cuda()
    assert supports(model) and resolve_backend("auto", model) == "fast"
    ref = _codes(model, STEPS, "torch", batch, True, temperature=0.9)
    got = _codes(model, STEPS, "fast", batch, True, temperature=0.9)
    _assert_equal(got, ref)


@needs_cuda
def test_cuda_graph_and_eager_loop_agree_bit_for_bit():
    model = make_head_model("mulaw", speaker=True).cuda()
    eager = _codes(model, 500, functools.partial(cuda_generate, graph=False), 8, True)
    graph = _codes(model, 500, functools.partial(cuda_generate, graph=True), 8, True)
    _assert_equal(graph, eager)
