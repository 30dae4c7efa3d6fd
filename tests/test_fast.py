"""The fused generation back-end (wavedil.fast) against the reference torch back-end.

Tiny models only. numba is a required dependency: without it these tests fail (they do not skip).

Every head (mulaw, mol, gaussian) is checked with speaker and with mel conditioning. The fast
path's head parameters agree with the reference's to float32 rounding, so a draw that falls
within that rounding of a bin edge may differ; over 65,536 linear bins that happens about once
in a few thousand draws of these random models, and the sequences then part. So the
long same-samples tests of the linear-bin heads use ``LINEAR_Q`` = 256 bins (the same code,
bins 256 times wider); at 16 bits the sampling arithmetic itself is checked draw for draw
(:func:`test_draw_is_the_reference_sampling`) and a generation must agree until a one-bin
rounding difference (:func:`test_16_bit_generation_parts_only_by_one_bin`).
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import numpy as np
import pytest
import torch

from wavedil import DilatedStack, WaveNet, WaveNetConfig, generate
from wavedil.backends import (
    Backend,
    BackendUnavailable,
    Capabilities,
    SamplingRequest,
    available_backends,
    get_backend,
    register_backend,
    resolve_backend,
    unregister_backend,
)
from wavedil.fast import make_fast_backend, supports, teacher_forced_logits

Q = 32
STEPS = 2000
#: bins of the linear-bin heads in the same-samples tests (see the module docstring)
LINEAR_Q = 256
#: a 16-bit generation may part from the reference by one bin, but not before this many samples agree
MIN_AGREEING = 200
HEADS = ("mulaw", "mol", "gaussian")
MEL = {"sample_rate": 8000, "hop_length": 40, "n_fft": 128, "n_mels": 8}


def make_model(kernel_size: int = 2, speaker: bool = False, seed: int = 0, **overrides) -> WaveNet:
    torch.manual_seed(seed)
    cfg = dict(
        residual_channels=8,
        gate_channels=16,
        skip_channels=12,
        head_channels=10,
        quantization_channels=Q,
        dilations=(1, 2, 4, 1, 2, 4),
        kernel_size=kernel_size,
        global_cond_classes=3 if speaker else 0,
        global_cond_channels=4 if speaker else 0,
    )
    cfg.update(overrides)
    return WaveNet(WaveNetConfig(**cfg)).eval()


def make_head_model(
    output: str, speaker: bool = False, mel: bool = False, quantization_channels: int | None = None, seed: int = 0
) -> WaveNet:
    """A tiny model with the ``output`` head (3 logistics for mol), optionally conditioned.

    ``quantization_channels``: None takes ``Q`` for mulaw and ``LINEAR_Q`` for the linear-bin heads.
    """
    if quantization_channels is None:
        quantization_channels = Q if output == "mulaw" else LINEAR_Q
    return make_model(speaker=speaker, seed=seed, output=output, mixtures=3,
                      quantization_channels=quantization_channels, mel=MEL if mel else None)  # fmt: skip


def random_mel(model: WaveNet, batch: int, samples: int, seed: int = 0) -> torch.Tensor | None:
    """Random log-mel frames ``(B, n_mels, ceil(samples / hop) + 2 c)`` for a vocoder, else None."""
    if model.upsampler is None:
        return None
    frames = -(-samples // model.mel_spec.hop_length) + 2 * model.mel_context
    return torch.randn(batch, model.mel_spec.n_mels, frames, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(autouse=True)
def one_torch_thread():
    """The reference runs tiny ops: extra intra-op threads only add waiting on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --------------------------------------------------------------------------- registration


def test_available_backends_lists_fast_first_and_torch():
    assert available_backends()[:1] == ["fast"] and "torch" in available_backends()


def test_no_import_cycle_inside_the_package():
    """Walk every module's ``from .x import`` statements; the graph must have no cycle."""
    import ast
    from pathlib import Path

    root = Path(__import__("wavedil").__file__).parent
    graph: dict[str, set[str]] = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        name = ".".join(parts[:-1] if is_pkg else parts)
        package = name if is_pkg else name.rpartition(".")[0]
        deps = graph.setdefault(name, set())
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level > 0:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
                deps.add(target)
                deps.update(f"{target}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.startswith("wavedil"))
    graph = {k: {d for d in v if d in graph and d != k} for k, v in graph.items()}
    # a package's __init__ re-exporting its own submodules is not a cycle of dependencies
    graph = {k: {d for d in v if not d.startswith(k + ".")} for k, v in graph.items()}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                raise AssertionError("import cycle: " + " -> ".join(trail[trail.index(dep):] + [dep]))
            if dep not in state:
                visit(dep, trail + [dep])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert "wavedil.backends" in graph and "wavedil.fast" in graph


def test_a_broken_fast_backend_warns_with_the_cause_and_auto_falls_back():
    """With numba hidden, wavedil imports; ``auto`` warns naming the cause and uses torch, and
    ``backend="fast"`` fails with that cause."""
    code = (
        "import sys, warnings; sys.modules['numba'] = None\n"
        "import torch, wavedil\n"
        "from wavedil.backends import BackendUnavailable\n"
        "m = wavedil.WaveNet(wavedil.WaveNetConfig(residual_channels=4, gate_channels=8, skip_channels=4,\n"
        "    head_channels=4, quantization_channels=8, dilations=(1, 2))).eval()\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    r = wavedil.generate(m, 5, seed=0, backend='auto')\n"
        "assert r.backend == 'torch' and r.codes.shape == (1, 5)\n"
        "assert any('fast' in str(w.message) and 'numba' in str(w.message) for w in caught), caught\n"
        "try:\n"
        "    wavedil.generate(m, 5, seed=0, backend='fast')\n"
        "except BackendUnavailable as e:\n"
        "    assert 'numba' in str(e), e\n"
        "else:\n"
        "    raise AssertionError('fast ran without numba')\n"
        "print('checked')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, timeout=120, capture_output=True, text=True)
    assert out.stdout.strip() == "checked"


def avx2_only_target() -> dict[str, str]:
    """numba's environment for code an AVX2-only x86 CPU runs: ``haswell`` with the host's
    features but every AVX-512, AVX10, AMX and AVX-VNNI one turned off."""
    from llvmlite import binding

    off = ("avx512", "avx10", "amx", "avxvnni", "avxifma", "avxneconvert")
    feats = [f"-{f[1:]}" if f[0] == "+" and f[1:].startswith(off) else f
             for f in binding.get_host_cpu_features().flatten().split(",")]  # fmt: skip
    return {"NUMBA_CPU_NAME": "haswell", "NUMBA_CPU_FEATURES": ",".join(feats)}


def _run_compiled_for(target: str, script: str) -> subprocess.CompletedProcess:
    """Run ``script`` in a fresh Python whose numba compiles for ``target``: ``host`` (this CPU)
    or ``haswell`` (:func:`avx2_only_target`; skips the test off x86)."""
    env = dict(os.environ)
    if target == "haswell":
        if platform.machine().lower() not in ("x86_64", "amd64"):
            pytest.skip("an x86 target")
        env.update(avx2_only_target())
    return subprocess.run([sys.executable, "-c", script], env=env, timeout=600, capture_output=True, text=True)


_TILE_CHECK = """
import numba as nb, numpy as np
from wavedil.fast._kernels import _axpy_rows_f, _axpy_rows_plain

@nb.njit
def both(a, w, c, rows, k, n):
    sc = np.zeros(1, np.float32)
    tiled, plain = c.copy(), c.copy()
    _axpy_rows_f(a, w, sc, tiled, rows, k, n)
    _axpy_rows_plain(a, w, sc, plain, rows, k, n)
    return tiled, plain

rng = np.random.default_rng(0)
checked = 0
for fmt in ("f32", "bf16"):
    for rows in (2, 3, 5, 6, 7, 13):
        for k in (3, 8, 13, 64):
            for n in (8, 16, 30, 64, 72, 136):
                a = rng.standard_normal((rows + 1, k + 3), dtype=np.float32)
                w = rng.standard_normal((k + 1, n + 5), dtype=np.float32)
                if fmt == "bf16":
                    w = (w.view(np.uint32) >> 16).astype(np.uint16)
                tiled, plain = both(a, w, rng.standard_normal((rows + 2, n + 2), dtype=np.float32), rows, k, n)
                assert np.array_equal(tiled, plain), (fmt, rows, k, n, float(np.abs(tiled - plain).max()))
                checked += 1
# int8: the tiles' int32 sums are the exact integer products, from any first pair p0, and the
# tiles that convert them in registers give _dequant's bits
from wavedil.fast._kernels import _dequant
from wavedil.fast._tiles import int8_tiles

@nb.njit
def dequant_rows(isum, xs, sc, c, rows, n):
    for r in range(rows):
        _dequant(isum[r], xs[r], sc, c[r], n)

for rows in (1, 2, 3, 5, 6, 7, 13):
    for kp in (4, 12, 32):
        for blocks in (1, 2, 3, 8, 9, 17):
            w = rng.integers(-127, 128, (blocks + 1, kp + 5, 8, 2)).astype(np.int8)
            xq = rng.integers(-32767, 32768, (rows + 1, 2 * kp + 6)).astype(np.int16)
            xs = rng.uniform(1e-6, 1e-4, rows + 1).astype(np.float32)
            sc = rng.uniform(1e-3, 1e-2, 8 * blocks + 8).astype(np.float32)
            p0 = (kp * rows) % 6
            isum = np.full((rows + 2, 8 * blocks + 3), 7, np.int32)
            int8_tiles(xq, w, isum, rows, p0, kp, blocks, xs, sc)
            pairs = xq[:rows, : 2 * kp].reshape(rows, kp, 2).astype(np.int64)
            want = np.einsum("rqe,bqce->rbc", pairs, w[:blocks, p0 : p0 + kp].astype(np.int64)).reshape(rows, -1)
            assert np.array_equal(isum[:rows, : 8 * blocks], want.astype(np.int32)), (rows, kp, blocks)
            assert (isum[rows:] == 7).all() and (isum[:, 8 * blocks :] == 7).all()
            c = rng.standard_normal((rows + 2, 8 * blocks + 3), dtype=np.float32)
            fused, stored = c.copy(), c.copy()
            int8_tiles(xq, w, fused, rows, p0, kp, blocks, xs, sc)
            dequant_rows(isum, xs, sc, stored, rows, 8 * blocks)
            assert np.array_equal(fused, stored), (rows, kp, blocks, float(np.abs(fused - stored).max()))
            checked += 1
print(checked)
"""


@pytest.mark.parametrize("target", ["host", "haswell"])
def test_register_tiles_add_in_the_plain_loops_order(target):
    """The batched products' register tiles (``wavedil/fast/_tiles.py``) give the plain loops'
    bits, float32 and bfloat16, and the exact integer sums for int8, for every leftover of rows
    and columns: with this CPU's tiles, and compiled for an AVX2-only CPU (haswell without this
    host's AVX-512, VNNI or AMX features: the AMD machine's smaller tiles and instructions)."""
    out = _run_compiled_for(target, _TILE_CHECK)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == str(2 * 6 * 4 * 6 + 7 * 3 * 6)


_REDUCED_MODES_CHECK = """
import torch
from wavedil import WaveNet, WaveNetConfig, generate
from wavedil.fast import teacher_forced_logits
from wavedil.fast.pack import dequantized_model

torch.manual_seed(0)
cfg = WaveNetConfig(residual_channels=16, gate_channels=32, skip_channels=24, head_channels=40, layers_per_stack=4,
                    stacks=2)
model = WaveNet(cfg).eval()
codes = torch.randint(0, 256, (5, 300))
for weights in ("bf16", "int8"):
    got = teacher_forced_logits(model, codes, weights=weights)
    with torch.no_grad():
        ref = dequantized_model(model, weights)(codes)
    assert (got - ref).abs().max().item() <= 1e-4, weights
    assert torch.equal(teacher_forced_logits(model, codes[3:4], weights=weights), got[3:4]), weights
    a = generate(model, 400, batch_size=2, seed=3, backend="fast", weights=weights).codes
    assert torch.equal(a, generate(model, 400, batch_size=2, seed=3, backend="fast", weights=weights).codes), weights
print("ok")
"""


@pytest.mark.slow
def test_reduced_modes_compute_their_rounded_weights_in_the_avx2_code():
    """The code an AVX2-only CPU (the AMD machine) runs, compiled here: bf16 and int8 (its 8-bit
    matrices and its bfloat16 head matrix) teacher-force to the float32 forward of their rounded
    weights, a row alone equals it in a batch, and a seed draws the same samples twice."""
    out = _run_compiled_for("haswell", _REDUCED_MODES_CHECK)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "ok"


def test_unknown_backend_lists_the_known_ones():
    with pytest.raises(ValueError, match="available.*fast.*torch|available.*torch"):
        generate(make_model(), 5, seed=0, backend="nope")


def test_auto_picks_fast_for_float32_cpu_and_torch_otherwise():
    model = make_model()
    assert resolve_backend("auto", model) == "fast"
    assert generate(model, 10, seed=0, backend="auto").backend == "fast"
    model64 = make_model().double()
    assert not supports(model64)
    assert resolve_backend("auto", model64) == "torch"
    assert resolve_backend("torch", model) == "torch"


def test_fast_rejects_a_float64_model_with_the_reason():
    with pytest.raises(ValueError, match="float32"):
        generate(make_model().double(), 5, seed=0, backend="fast")


# --------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("kernel_size", [2, 3])
@pytest.mark.parametrize("speaker", [False, True])
@pytest.mark.parametrize("batch", [1, 3])
def test_teacher_forced_logits_match_forward(kernel_size, speaker, batch):
    model = make_model(kernel_size, speaker)
    torch.manual_seed(1)
    codes = torch.randint(0, Q, (batch, 300))
    spk = torch.tensor([2, 0, 1][:batch]) if speaker else None
    with torch.no_grad():
        ref = model(codes, spk)  # (B, Q, T)
    got = teacher_forced_logits(model, codes, spk)
    assert got.shape == ref.shape
    assert (got - ref).abs().max().item() <= 1e-4


def _variants(batch: int) -> dict[str, object]:
    """Fast back-end settings that take every code path for this batch size."""
    if batch == 1:
        return {
            "one-thread": make_fast_backend(threads=1),
            # split across two threads, switching to one thread and back between short chunks
            "split": make_fast_backend(threads=2, split=True, chunk=150),
        }
    variants = {
        "rows-one-thread": make_fast_backend(threads=1, row_block=2),
        # with mel conditioning, chunks of 150 // 3 steps (the per-step gate biases are chunked)
        "rows-two-threads": make_fast_backend(threads=2, chunk=150),
    }
    if batch >= 7:  # the products' full register tiles (6 rows) and a row left over
        variants["rows-tiles"] = make_fast_backend(threads=1, row_block=7)
    # every row on two threads (the pipeline's block form; row blocks of 2 leave one over when
    # the batch is odd)
    variants["pipe"] = make_fast_backend(threads=2, split=True, chunk=150, pipe_rows=batch, row_block=2)
    # the pipeline and slices of rows measured against each other: switching between chunks
    variants["pipe-or-slices"] = make_fast_backend(threads=2, split=True, chunk=150, row_block=2)
    return variants


@pytest.mark.parametrize("kernel_size", [2, 3])
@pytest.mark.parametrize("speaker", [False, True])
@pytest.mark.parametrize("batch", [1, 3, 8])
def test_same_samples_as_torch_for_the_same_seed(kernel_size, speaker, batch):
    model = make_model(kernel_size, speaker)
    torch.manual_seed(2)
    prompt = torch.randint(0, Q, (batch, 25))
    spk = torch.tensor([1, 2, 0, 1, 1, 2, 0, 2][:batch]) if speaker else None
    ref = generate(model, STEPS, batch_size=batch, seed=11, prompt=prompt, speaker=spk, backend="torch").codes
    for name, backend in _variants(batch).items():
        register_backend("_test_fast", backend)
        try:
            got = generate(model, STEPS, batch_size=batch, seed=11, prompt=prompt, speaker=spk, backend="_test_fast")
        finally:
            unregister_backend("_test_fast")
        mismatch = (got.codes != ref).nonzero()
        assert mismatch.numel() == 0, f"{name}: first differing (row, step) {mismatch[0].tolist()}"


def _fast_codes(backend, model: WaveNet, steps: int, **kwargs) -> torch.Tensor:
    register_backend("_test_fast", backend)
    try:
        return generate(model, steps, backend="_test_fast", **kwargs).codes
    finally:
        unregister_backend("_test_fast")


def _assert_same_samples(model: WaveNet, steps: int, batch: int, temperature: float, speaker: bool,
                         seed: int = 11) -> None:  # fmt: skip
    """Every fast variant for ``batch`` draws the torch back-end's codes, with a prompt."""
    g = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, model.quantization_channels, (batch, 25), generator=g)
    kwargs = dict(batch_size=batch, seed=seed, temperature=temperature, prompt=prompt,
                  speaker=torch.tensor([1, 2, 0][:batch]) if speaker else None,
                  mel=random_mel(model, batch, 25 + steps, seed))  # fmt: skip
    ref = generate(model, steps, backend="torch", **kwargs).codes
    for name, backend in _variants(batch).items():
        got = _fast_codes(backend, model, steps, **kwargs)
        mismatch = (got != ref).nonzero()
        assert mismatch.numel() == 0, f"{name}: first differing (row, step) {mismatch[0].tolist()}"


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("cond", ["none", "speaker", "mel", "speaker+mel"])
@pytest.mark.parametrize("batch", [1, 3])
def test_teacher_forced_params_match_forward_for_every_head(head, cond, batch):
    """At the heads' own sizes (mol and gaussian over 65,536 bins), 10 mel frames of hop 40."""
    q = 256 if head == "mulaw" else 65536
    model = make_head_model(head, "speaker" in cond, "mel" in cond, quantization_channels=q)
    torch.manual_seed(1)
    codes = torch.randint(0, model.quantization_channels, (batch, 400))
    spk = torch.tensor([2, 0, 1][:batch]) if "speaker" in cond else None
    mel = random_mel(model, batch, 400, seed=batch)
    with torch.no_grad():
        ref = model(codes, spk, mel)  # (B, P, T)
    got = teacher_forced_logits(model, codes, spk, mel)
    assert got.shape == ref.shape == (batch, model.dist.param_channels, 400)
    assert (got - ref).abs().max().item() <= 1e-4


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("cond", ["speaker", "mel"])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_same_samples_as_torch_for_every_head(head, cond, batch, temperature):
    model = make_head_model(head, speaker=cond == "speaker", mel=cond == "mel")
    _assert_same_samples(model, 300, batch, temperature, speaker=cond == "speaker")


@pytest.mark.parametrize("head, batch, temperature", [("mulaw", 1, 1.0), ("mol", 3, 0.7), ("gaussian", 1, 0.7)])
def test_same_samples_over_2000_steps_with_speaker_and_mel(head, batch, temperature):
    model = make_head_model(head, speaker=True, mel=True)
    _assert_same_samples(model, STEPS, batch, temperature, speaker=True, seed=5)


@pytest.mark.parametrize("head", ["mol", "gaussian"])
@pytest.mark.parametrize("temperature", [1.0, 0.7, 0.0])
def test_draw_is_the_reference_sampling(head, temperature):
    """The kernels' float64 sampling equals ``model.dist.sample`` draw for draw, at 16 bits.

    Over 4,000 random parameter rows (log-scales on both sides of the clamp) from the same
    float32 parameters and uniforms.
    """
    from wavedil.fast._kernels import draw
    from wavedil.fast.pack import kernel_uniforms, pack_model

    model = make_head_model(head, quantization_channels=65536)
    dist, packed = model.dist, pack_model(model)
    g = torch.Generator().manual_seed(7)
    n, k = 4000, getattr(dist, "mixtures", 1)
    logit = torch.randn(n, k, generator=g) * 2
    mean = torch.rand(n, k, generator=g) * 2.4 - 1.2
    log_scale = torch.rand(n, k, generator=g) * 9 - 9.5
    params = torch.cat([logit, mean, log_scale], 1) if head == "mol" else torch.cat([mean, log_scale], 1)
    u = torch.rand((n, dist.uniforms_per_sample), generator=g, dtype=torch.float64).squeeze(-1)
    ref = dist.sample(params, u, temperature)
    ku = kernel_uniforms(packed, u[None])[0]  # (n, U)
    p = params.numpy()
    scratch = np.empty(k + 1)
    greedy, temp = temperature == 0, temperature or 1.0
    got = [draw(p[i], packed.head, packed.classes, packed.mixtures, packed.log_scale_min, ku[i], temp, greedy, scratch)
           for i in range(n)]  # fmt: skip
    assert torch.equal(torch.tensor(got), ref)


@pytest.mark.parametrize("head", ["mol", "gaussian"])
def test_16_bit_generation_parts_only_by_one_bin(head):
    """At 65,536 bins fast and torch draw the same codes until, if ever, a draw within float32
    rounding of a bin edge lands one bin apart (after which the sequences part)."""
    model = make_head_model(head, speaker=True, mel=True, quantization_channels=65536)
    kwargs = dict(batch_size=1, seed=3, speaker=torch.tensor([1]), mel=random_mel(model, 1, 1500))
    ref = generate(model, 1500, backend="torch", **kwargs).codes[0]
    got = generate(model, 1500, backend="fast", **kwargs).codes[0]
    differ = (got != ref).nonzero()
    if differ.numel():
        t = differ[0, 0].item()
        assert t >= MIN_AGREEING, f"the sequences part at step {t}, before {MIN_AGREEING} agreeing samples"
        assert abs(got[t].item() - ref[t].item()) == 1, f"step {t}: {got[t].item()} vs {ref[t].item()}"


@pytest.mark.parametrize("head", HEADS)
def test_auto_picks_fast_for_every_head_and_conditioning(head):
    for speaker, mel in [(False, False), (True, False), (False, True), (True, True)]:
        model = make_head_model(head, speaker, mel)
        assert supports(model)
        assert resolve_backend("auto", model) == "fast"
        spk = torch.tensor([1]) if speaker else None
        result = generate(model, 10, seed=0, speaker=spk, mel=random_mel(model, 1, 10), backend="auto")
        assert result.backend == "fast" and result.codes.shape == (1, 10)


def test_a_backend_without_mel_capability_is_refused_for_a_vocoder():
    class NoMel(Backend):
        name = "_test_nomel"
        capabilities = Capabilities(devices={"cpu": ("fp32",)}, mel=False)

        def sample(self, request):  # pragma: no cover - never reached
            raise AssertionError("ran")

        def teacher_forced(self, *args, **kwargs):  # pragma: no cover
            raise AssertionError("ran")

    model = make_head_model("mulaw", mel=True)
    register_backend("_test_nomel", NoMel())
    try:
        with pytest.raises(ValueError, match="mel-conditioned"):
            generate(model, 5, seed=0, mel=random_mel(model, 1, 5), backend="_test_nomel")
    finally:
        unregister_backend("_test_nomel")


def test_a_sampling_request_for_a_vocoder_needs_local():
    model = make_head_model("gaussian", mel=True)
    with pytest.raises(ValueError, match="local"):
        SamplingRequest(model, model.init_state(1), torch.zeros(1, 2), torch.rand(5, 1, dtype=torch.float64), 1.0)


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("temperature", [0.0, 0.6])
def test_same_samples_at_other_temperatures(head, temperature):
    model = make_head_model(head)
    ref = generate(model, 500, batch_size=2, seed=3, temperature=temperature, backend="torch").codes
    got = generate(model, 500, batch_size=2, seed=3, temperature=temperature, backend="fast").codes
    assert torch.equal(got, ref)


@pytest.mark.parametrize("weights", ["fp32", "int8"])
@pytest.mark.parametrize("batch", [1, 5])
def test_two_threads_and_one_agree_bit_for_bit_on_a_wider_model(weights, batch):
    """Odd sizes (gate 2*13, skip 30, head 20 and Q 37 in two column blocks) and many switches."""
    model = make_model(residual_channels=16, gate_channels=26, skip_channels=30, head_channels=20,
                       quantization_channels=37, dilations=(1, 2, 4, 8, 16, 1, 2, 4))  # fmt: skip
    pipe = make_fast_backend(threads=2, split=True, chunk=64 * batch)  # B = 5: pipeline or slices
    results = [
        _fast_codes(backend, model, 1000 // batch, seed=5, batch_size=batch, weights=weights)
        for backend in (make_fast_backend(threads=1), pipe)
    ]
    assert torch.equal(results[0], results[1])


@pytest.mark.parametrize("weights", ["fp32", "int8"])
@pytest.mark.parametrize("batch", [1, 3])
def test_two_threads_that_give_up_every_step_lose_nothing(monkeypatch, weights, batch):
    """A partner that keeps being descheduled makes both threads stop at the end of the step
    (here: after every step) and one thread go on; the samples are those of one thread."""
    import wavedil.fast.cpu as cpu

    model = make_head_model("mol", speaker=False, mel=True)
    mel = random_mel(model, batch, 400, seed=3)
    kwargs = dict(seed=4, mel=mel, weights=weights, batch_size=batch)
    ref = _fast_codes(make_fast_backend(threads=1), model, 400, **kwargs)
    monkeypatch.setattr(cpu, "MAX_LONG_WAITS_PER_CHUNK", -1)  # every step counts as "too many"
    pipe = make_fast_backend(threads=2, split=True, chunk=40 * batch, pipe_rows=batch)
    assert torch.equal(_fast_codes(pipe, model, 400, **kwargs), ref)



@pytest.mark.parametrize("batch", [1, 2])
def test_a_chunk_that_starts_at_the_last_step_of_a_vocoding(batch):
    """A chunk of steps that begins at the last step (no forward pass, so no mel column) takes
    the bare biases: 400 samples in chunks of 133 steps (the last chunk is step 399 alone)
    equal one chunk. This crashed once (an empty bias table)."""
    model = make_head_model("mol", speaker=False, mel=True)
    kwargs = dict(seed=4, mel=random_mel(model, batch, 400, seed=3), batch_size=batch)
    ref = _fast_codes(make_fast_backend(threads=1, chunk=400 * batch), model, 400, **kwargs)
    assert torch.equal(_fast_codes(make_fast_backend(threads=1, chunk=133 * batch), model, 400, **kwargs), ref)


def test_small_batches_measure_the_pipeline_against_slices(monkeypatch):
    """Without ``pipe_rows`` a small batch on two threads runs chunks both ways and remembers
    the faster for its weights and batch size; ``pipe_rows`` fixes the way, unmeasured."""
    import wavedil.fast.cpu as cpu

    kern = cpu.load_kernels()
    calls = {"pipe": 0, "rows": 0}

    def counting(name, fn):
        def wrapped(*args):
            t0, t1 = args[2:4] if name == "pipe" else args[0:2]  # run_pipe(role, sync, t0, t1, ...)
            if t1 > t0:  # not the zero-step warm-up
                calls[name] += 1
            return fn(*args)

        return wrapped

    monkeypatch.setattr(kern, "run_pipe", counting("pipe", kern.run_pipe))
    monkeypatch.setattr(kern, "run_rows", counting("rows", kern.run_rows))
    model = make_model(2, False)
    packed = cpu.packed_weights(model, "fp32")
    ref = _fast_codes(make_fast_backend(threads=1), model, 80, seed=3, batch_size=3)
    for pipe_rows, pipe in [(None, None), (3, True), (2, False)]:
        packed.tuning.pop(("pipe_way", 3), None)
        calls.update(pipe=0, rows=0)
        backend = make_fast_backend(threads=2, split=True, chunk=30, pipe_rows=pipe_rows)
        assert torch.equal(_fast_codes(backend, model, 80, seed=3, batch_size=3), ref)
        if pipe_rows is None:  # 8 chunks of 10 steps; fp32 at B = 3 starts on the pipeline
            assert calls["pipe"] >= 2 * 2 and calls["rows"] >= 2, calls
            assert isinstance(packed.tuning[("pipe_way", 3)], bool)
        else:
            assert (calls["pipe"] > 0, calls["rows"] > 0) == (pipe, not pipe), calls
            assert ("pipe_way", 3) not in packed.tuning

def _ways(two_rates: list[float], one_rate: float, n_chunks: int = 20) -> list[bool]:
    """The ways (True: two threads) one sequence's chunks take when two-thread chunks measure
    ``two_rates`` one after the other (the last repeating) and one-thread chunks ``one_rate``."""
    from wavedil.fast.cpu import _next_way

    rate: dict[bool, float] = {}
    use_two, rechecked, ways, seen = True, False, [], 0
    for chunks in range(1, n_chunks + 1):
        ways.append(use_two)
        if use_two:
            rate[True], seen = two_rates[min(seen, len(two_rates) - 1)], seen + 1
        else:
            rate[False] = one_rate
        use_two, rechecked = _next_way(chunks, rate, use_two, rechecked)
    return ways


def test_one_sequence_keeps_two_threads_after_a_slow_first_chunk():
    """Batch 1 chooses two threads or one by measuring chunks: a slow first two-thread chunk (a
    stall) is measured again before one thread is kept; a machine where two threads stay slow
    settles on one; an ordinary one probes one thread at the second chunk and every 16th."""
    one, two = [False], [True]
    assert _ways([14.0], 6.0) == two + one + two * 14 + one + two * 3  # ordinary: probes only
    assert _ways([3.0, 14.0], 6.0) == two + one + two * 14 + one + two * 3  # a stall at the start
    assert _ways([3.0], 6.0) == two + one + two + one * 13 + two + one * 3  # two threads stay slow


@pytest.mark.parametrize("batch, threads, pipe_rows, grows", [(1, 1, None, True), (40, 2, None, True),
                                                              (3, 2, 1, True), (3, 2, 3, False)])  # fmt: skip
def test_chunks_of_slices_grow_except_with_local_conditioning(monkeypatch, batch, threads, pipe_rows, grows):
    """Progress reports mark the chunks. Without ``chunk``: the first chunk is ``DEFAULT_CHUNK``
    samples; later chunks of slices of rows (here: one thread, a batch of 40, a batch of 3 with
    the pipeline off) grow with the rate measured (here: the rest at once), the pipeline's stay
    (each moves work between its threads), and so do a vocoder's (they bound its bias table).
    An explicit ``chunk`` fixes them. The samples are the same every way."""
    import wavedil.fast.cpu as cpu

    monkeypatch.setattr(cpu, "CHUNK_SECONDS", 1e9)  # any measured rate: the rest in one chunk
    # a busy machine (a partner thread descheduled) may end a pipeline chunk early: not here
    monkeypatch.setattr(cpu, "MAX_LONG_WAITS_PER_CHUNK", 1 << 62)
    n, first = 6000, cpu.DEFAULT_CHUNK // batch
    for output, mel in [("mulaw", False), ("mol", True)]:
        model = make_head_model(output, mel=mel)
        kwargs = dict(seed=2, batch_size=batch, mel=random_mel(model, batch, n, seed=1))

        def chunks(chunk: int | None) -> tuple[torch.Tensor, list[int]]:
            seen: list[int] = []
            backend = make_fast_backend(threads=threads, split=True, pipe_rows=pipe_rows, chunk=chunk)
            return _fast_codes(backend, model, n, progress=seen.append, **kwargs), seen

        got, seen = chunks(None)
        ref, fixed = chunks(first * batch)
        assert torch.equal(got, ref)
        assert fixed == list(range(first, n, first)) + [n]
        assert seen == ([first, n] if grows and not mel else fixed)


@pytest.mark.parametrize("output", ["mulaw", "mol"])
def test_bf16_batches_of_many_rows_compute_with_the_weights_widened_to_float32(output):
    """From ``WIDE_BATCH`` rows ``bf16`` runs the float32 kernels on its weights widened to
    float32 (every bfloat16 is a float32): for a model whose weights are bfloat16 numbers already
    (so that torch's priming step agrees too), exactly its ``fp32`` samples, on one thread or two;
    smaller batches keep the 16-bit kernels."""
    import wavedil.fast.cpu as cpu
    from wavedil.fast.pack import dequantized_model

    model = rounded = dequantized_model(make_head_model(output, mel=output == "mol"), "bf16")
    packed = cpu.packed_weights(model, "bf16")
    n = 150
    for batch, wide in [(cpu.WIDE_BATCH, True), (cpu.WIDE_BATCH + 5, True), (cpu.WIDE_BATCH - 1, False)]:
        kwargs = dict(seed=6, batch_size=batch, mel=random_mel(model, batch, n, seed=2))
        packed.__dict__.pop("wide_matrices", None)
        got = [_fast_codes(make_fast_backend(threads=t, pipe_rows=1), model, n, weights="bf16", **kwargs)
               for t in (1, 2)]  # fmt: skip
        assert ("wide_matrices" in packed.__dict__) == wide
        assert torch.equal(got[0], got[1])
        if wide:
            ref = _fast_codes(make_fast_backend(threads=1), rounded, n, weights="fp32", **kwargs)
            assert torch.equal(got[0], ref)
    assert all(m.dtype == np.float32 for m in packed.wide_matrices)


def test_int8_batches_of_many_rows_draw_the_samples_of_the_16_bit_head_kernels(monkeypatch):
    """From ``WIDE_BATCH`` rows int8's bfloat16 head matrix is widened to float32 (its other
    matrices stay int8): the same samples as the kernels that decode it per use (the wide path
    turned off), on one thread or two."""
    import wavedil.fast.cpu as cpu

    model = make_head_model("mulaw", speaker=True)
    batch, n = cpu.WIDE_BATCH + 2, 150
    kwargs = dict(seed=8, batch_size=batch, speaker=torch.arange(batch) % 3, weights="int8")
    wide = [_fast_codes(make_fast_backend(threads=t, pipe_rows=1), model, n, **kwargs) for t in (1, 2)]
    packed = cpu.packed_weights(model, "int8")
    assert "wide_matrices" in packed.__dict__
    assert [m.dtype for m in packed.wide_matrices] == [np.int8] * 4 + [np.float32]
    monkeypatch.setattr(cpu, "WIDE_BATCH", 10**9)
    narrow = _fast_codes(make_fast_backend(threads=2, pipe_rows=1), model, n, **kwargs)
    assert torch.equal(wide[0], wide[1]) and torch.equal(wide[0], narrow)


def test_progress_reaches_the_end():
    seen: list[int] = []
    generate(make_model(), 300, batch_size=2, seed=0, backend="fast", progress=seen.append)
    assert seen and seen[-1] == 300 and seen == sorted(seen)


def _swap_stack(model: WaveNet, **options) -> WaveNet:
    """``model`` with its stack rebuilt with block options WaveNetConfig does not expose."""
    s = model.stack
    torch.manual_seed(4)
    model.stack = DilatedStack(s.residual_channels, s.gate_channels, s.skip_channels, s.kernel_size,
                               dilations=s.dilations, **options)  # fmt: skip
    return model.eval()


def test_weight_norm_blocks_give_the_same_samples():
    model = _swap_stack(make_model(), weight_norm=True)
    ref = generate(model, 500, batch_size=2, seed=7, backend="torch").codes
    assert torch.equal(generate(model, 500, batch_size=2, seed=7, backend="fast").codes, ref)


def test_blocks_the_kernels_lack_fall_back_to_torch():
    model = _swap_stack(make_model(), activation="relu")
    assert not supports(model)
    assert resolve_backend("auto", model) == "torch"
    with pytest.raises(ValueError, match="relu"):
        generate(model, 5, seed=0, backend="fast")


# --------------------------------------------------------------------------- kernel pieces


def test_gate_is_tanh_times_sigmoid_to_float32_accuracy():
    from wavedil.fast._kernels import gate_inplace

    a = np.linspace(-30, 30, 4001, dtype=np.float32)
    b = np.random.default_rng(0).permutation(a)
    h = np.concatenate([a, b])
    z = np.empty_like(a)
    gate_inplace(h, z, a.size)
    ref = np.tanh(a.astype(np.float64)) / (1.0 + np.exp(-b.astype(np.float64)))
    assert np.abs(z - ref).max() < 3e-7


def test_exp_neg_is_exp_to_float32_accuracy_over_its_whole_range():
    """Every power-of-two step of ``exp_neg``'s range reduction (m = 0 .. 58) is exercised: a
    wrong exponent for any ``m`` is off by a factor of two there."""
    import numba as nb

    from wavedil.fast._kernels import exp_neg

    @nb.njit
    def run(x, y):
        for i in range(x.size):
            y[i] = exp_neg(x[i])

    x = -np.linspace(0, 40, 400_001).astype(np.float32)
    y = np.empty_like(x)
    run(x, y)
    rel = np.abs(y / np.exp(x.astype(np.float64)) - 1.0)
    assert rel.max() < 2e-7, (x[rel.argmax()], rel.max())


def test_exp_neg64_is_within_one_ulp_of_exp_over_its_whole_range():
    """The draw's float64 exponential: every step of its range reduction (m = 0 .. 1010) within
    one unit in the last place of libm's value, and the clamp at -700 (no underflow to 0)."""
    import numba as nb

    from wavedil.fast._kernels import exp_neg64

    @nb.njit
    def run(x, y):
        for i in range(x.size):
            y[i] = exp_neg64(x[i])

    x = -np.linspace(0, 700, 2_000_001)
    y = np.empty_like(x)
    run(x, y)
    ref = np.exp(x)
    ulps = np.abs(y - ref) / np.spacing(ref)
    assert ulps.max() <= 1.0, (x[ulps.argmax()], ulps.max())
    far = np.array([-700.0, -750.0, -1e6])
    run(far, y[:3])
    assert y[0] == y[1] == y[2] and abs(y[0] / np.exp(-700.0) - 1.0) < 1e-15


def test_make_fast_backend_rejects_bad_options():
    with pytest.raises(ValueError, match="threads"):
        make_fast_backend(threads=0)
    with pytest.raises(ValueError, match="split"):
        make_fast_backend(split="yes")
    with pytest.raises(ValueError, match="pipe_rows"):
        make_fast_backend(pipe_rows=0)


# --------------------------------------------------------------------------- reduced-precision weights

#: Relative rounding of one stored weight: bfloat16 keeps 8 significant bits (its unit roundoff
#: is 2**-8 of the value); int8 rounds to half a step of max|w| / 127 of its output column.
WEIGHT_EPS = {"bf16": 2.0**-8, "int8": 0.5 / 127}


def test_quantize_rounds_each_weight_within_its_format_bound():
    from wavedil.fast.pack import dequantize, quantize

    w = np.random.default_rng(0).standard_normal((3, 40, 24)).astype(np.float32)
    w[1, :, 5] = 0.0  # an all-zero column keeps a finite scale
    for mode, eps in WEIGHT_EPS.items():
        stored, scales = quantize(w, mode)
        assert stored.dtype == (np.uint16 if mode == "bf16" else np.int8) and scales.shape == (3, 24)
        back = dequantize(stored, scales)
        bound = np.abs(w) * eps if mode == "bf16" else np.abs(w).max(axis=1, keepdims=True) * 2 * eps
        assert np.all(np.abs(back - w) <= bound + 1e-12), mode
        assert np.any(back != w), mode  # it did round something
    stored, scales = quantize(w, "fp32")
    assert stored.dtype == np.float32 and np.array_equal(stored, w) and np.all(scales == 1)


def test_int8_mode_keeps_the_heads_last_matrix_in_bf16():
    """Mode int8 stores every matrix in 8 bits but the head's last (the distribution's parameters
    themselves; 8 bits there cost a trained model ten times the rest): that one is bfloat16 with
    unit scales, and the model int8 computes with has exactly bf16's last matrix."""
    from wavedil.fast.pack import INT8_KEEPS_BF16, dequantized_model, matrix_format, pack_model

    model = make_model(residual_channels=8, gate_channels=16, skip_channels=12, head_channels=20)
    packed = pack_model(model, "int8")
    names = ("wc", "wres", "wskip", "h1", "h2")
    assert INT8_KEEPS_BF16 == {"h2"}
    for name, scale in zip(names, packed.scales):
        want = np.uint16 if name == "h2" else np.int8
        assert getattr(packed, name).dtype == want and matrix_format(name, "int8") == ("bf16" if name == "h2" else "int8")
        assert np.all(scale == 1) == (name == "h2"), name
    assert all(matrix_format(n, w) == w for n in names for w in ("fp32", "bf16"))
    q8, b16 = dequantized_model(model, "int8"), dequantized_model(model, "bf16")
    assert torch.equal(q8.head[3].weight, b16.head[3].weight)
    assert not torch.equal(q8.head[1].weight, b16.head[1].weight)  # the other matrices are int8's


def test_pair_rows_lays_out_blocks_of_eight_outputs_by_row_pairs_with_zero_padding():
    from wavedil.fast.pack import pair_rows

    q = np.random.default_rng(0).integers(-127, 128, (2, 11, 11)).astype(np.int8)  # 2 layers, 11 rows, 11 outputs
    p = pair_rows(q)
    assert p.shape == (2, 2, 8, 8, 2) and p.dtype == np.int8  # 11 outputs -> 2 blocks; 11 rows -> 8 pairs
    for layer in range(2):
        for row in range(16):
            for out in range(16):
                want = q[layer, row, out] if row < 11 and out < 11 else 0
                assert p[layer, out // 8, row // 2, out % 8, row % 2] == want
    f = np.ones((4, 3), np.float32)
    assert pair_rows(f) is f  # other formats pass through


def test_pair_rows_split_pairs_a_convs_past_taps_apart_and_products_take_either_part():
    """A conv of kernel 3 with R = 5: the 10 past rows and the 5 rows of the last tap are paired
    and padded apart (8 + 4 pairs per block), and a product from pair ``p0`` sums only its part."""
    from wavedil.fast import _kernels as kern
    from wavedil.fast.pack import pair_rows

    rng = np.random.default_rng(1)
    q = rng.integers(-127, 128, (15, 11)).astype(np.int8)
    p = pair_rows(q, split=10)
    assert p.shape == (2, 12, 8, 2)
    assert np.array_equal(p[:, :8], pair_rows(q[:10])) and np.array_equal(p[:, 8:], pair_rows(q[10:]))
    xq = rng.integers(-300, 300, 16).astype(np.int16)
    isum = np.zeros(16, np.int32)
    fns = (kern._isum_plain, kern._isum_avx2) if kern._HAS_AVX2 else (kern._isum_plain,)
    for p0, rows in ((0, slice(0, 10)), (8, slice(10, 15))):
        k = rows.stop - rows.start
        x = np.zeros(16, np.int16)
        x[:k] = xq[:k]
        want = (x[:k].astype(np.int64) @ q[rows].astype(np.int64)).astype(np.int32)
        for fn in fns:
            isum[:] = -1
            fn(x, p, isum, p0, kern.pair_count(k), 16)
            assert np.array_equal(isum[:11], want), (fn, p0)


@pytest.mark.parametrize("k, n", [(64, 128), (5, 3), (37, 20), (1030, 16)])
def test_int8_products_are_exact_integer_sums_of_int16_inputs(k, n):
    """The int8 mode's product: the input rounded to int16 with one scale, summed exactly in
    int32 (the same on every code path, AVX2 or not), then scaled once; no int32 overflow even
    where ``k`` forces fewer than 16 bits."""
    from wavedil.fast import _kernels as kern
    from wavedil.fast.pack import pair_rows, quantize

    rng = np.random.default_rng(k)
    w = rng.standard_normal((k, n)).astype(np.float32)
    q, sc = quantize(w, "int8")
    q[:, 0] = 127  # the largest products in one column: overflow would show here
    x = rng.standard_normal(k).astype(np.float32)
    x[: k // 2] = np.abs(x[: k // 2]).max()
    paired = pair_rows(q)
    xq, isum = np.zeros(paired.shape[1] * 2 + 8, np.int16), np.zeros(paired.shape[0] * 8, np.int32)
    y = np.full(n, 0.5, np.float32)
    kern._matvec_i8(x, paired, sc, y, k, n, xq, isum)
    qmax = kern.int16_limit(k)
    assert qmax == (32767 if k <= 516 else (2**31 - 1) // (127 * 1032))
    m = np.abs(x).max()
    xi = np.rint(x.astype(np.float64) * np.float32(qmax / m)).astype(np.int64)
    assert np.abs(xi).max() <= qmax
    exact = xi @ q.astype(np.int64)  # the int32 sums, exactly
    assert np.abs(exact).max() < 2**31
    want = np.float32(0.5) + exact.astype(np.float32) * (sc * np.float32(m / np.float32(qmax)))
    np.testing.assert_allclose(y, want, rtol=2e-6, atol=1e-6)
    for isum_fn in (kern._isum_plain, kern._isum_avx2) if kern._HAS_AVX2 else (kern._isum_plain,):
        isum[:] = -1
        isum_fn(xq, paired, isum, 0, paired.shape[1], paired.shape[0] * 8)
        assert np.array_equal(isum[:n], exact.astype(np.int32)), isum_fn
    # against float32 on the dequantised weights: the activations' rounding is about 2**-16
    ref = x.astype(np.float64) @ (q.astype(np.float64) * sc)
    assert np.abs(y - 0.5 - ref).max() <= 1e-4 * np.abs(ref).max() + 1e-6


def test_int8_products_of_zero_and_non_finite_inputs():
    from wavedil.fast import _kernels as kern
    from wavedil.fast.pack import pair_rows, quantize

    q, sc = quantize(np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32), "int8")
    paired, xq, isum = pair_rows(q), np.zeros(24, np.int16), np.zeros(8, np.int32)
    y = np.ones(8, np.float32)
    kern._matvec_i8(np.zeros(16, np.float32), paired, sc, y, 16, 8, xq, isum)
    assert np.all(y == 1)  # zero input: nothing added
    for bad in (np.nan, np.inf):
        x = np.ones(16, np.float32)
        x[3] = bad
        kern._matvec_i8(x, paired, sc, y, 16, 8, xq, isum)
        assert np.all(np.isnan(y))  # as float32 arithmetic would not give a number either
        y[:] = 1


def test_int8_mode_runs_odd_channel_counts_within_its_bound():
    """Channel counts that fill no block of pairs or outputs: the padding contributes nothing."""
    from wavedil.fast.pack import dequantized_model

    model = make_model(residual_channels=5, gate_channels=14, skip_channels=9, head_channels=11, kernel_size=3)
    codes = torch.randint(0, Q, (2, 200), generator=torch.Generator().manual_seed(0))
    got = teacher_forced_logits(model, codes, weights="int8")
    with torch.no_grad():
        rounded = dequantized_model(model, "int8")(codes)
    assert (got - rounded).abs().max().item() <= 1e-4
    one = generate(model, 300, seed=4, backend="fast", weights="int8").codes
    assert torch.equal(one, generate(model, 300, seed=4, backend="fast", weights="int8").codes)


@pytest.mark.parametrize("weights", ["bf16", "int8"])
@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("cond", ["none", "speaker+mel"])
def test_reduced_modes_compute_with_exactly_their_rounded_weights(weights, head, cond):
    """Teacher forcing in a reduced mode equals the float32 forward of the model whose weights
    are the rounded ones (to float32 rounding), and departs from the fp32 model by no more than
    the weights' rounding implies."""
    from wavedil.fast.pack import dequantized_model

    model = make_head_model(head, "speaker" in cond, "mel" in cond)
    torch.manual_seed(1)
    codes = torch.randint(0, model.quantization_channels, (2, 320))
    spk = torch.tensor([2, 0]) if "speaker" in cond else None
    mel = random_mel(model, 2, 320, seed=3)
    got = teacher_forced_logits(model, codes, spk, mel, weights=weights)
    with torch.no_grad():
        rounded = dequantized_model(model, weights)(codes, spk, mel)
        exact = model(codes, spk, mel)
    assert (got - rounded).abs().max().item() <= 1e-4
    # first order: each of ~8 chained products moves the outputs by at most the weights' relative
    # rounding; 8 x that of the outputs' scale bounds it for these small random models
    drift = (got - exact).abs().max().item()
    assert 0 < drift <= 8 * WEIGHT_EPS[weights] * exact.abs().max().item()


@pytest.mark.parametrize("weights", ["fp32", "bf16", "int8"])
@pytest.mark.parametrize("kernel_size", [2, 3])
def test_a_row_computes_the_same_bits_alone_and_in_a_batch(weights, kernel_size):
    """Teacher forcing: every row of a batch of 13 (the batched kernel's register tiles, with
    rows and columns left over) equals that row alone (the batch-1 pipeline, one row at a
    time), bit for bit, in every weight mode. Speaker-conditioned: mel conditioning comes from
    torch's upsampler, whose rounding depends on the batch."""
    model = make_model(kernel_size, speaker=True, residual_channels=24, gate_channels=136, skip_channels=72,
                       head_channels=40)  # fmt: skip
    torch.manual_seed(2)
    codes = torch.randint(0, Q, (13, 200))
    spk = torch.randint(0, 3, (13,))
    together = teacher_forced_logits(model, codes, spk, weights=weights)
    for b in range(13):
        alone = teacher_forced_logits(model, codes[b : b + 1], spk[b : b + 1], weights=weights)
        assert torch.equal(together[b : b + 1], alone), (weights, b)


@pytest.mark.parametrize("weights", ["bf16", "int8"])
@pytest.mark.parametrize("batch", [1, 3, 8])
def test_reduced_modes_draw_reproducible_samples_on_every_code_path(weights, batch):
    """The same seed gives the same samples in a mode, whichever threads, splits and row blocks
    run it."""
    model = make_head_model("mulaw", speaker=True, mel=True)
    kwargs = dict(batch_size=batch, seed=9, speaker=torch.tensor([1, 2, 0, 1, 1, 2, 0, 2][:batch]),
                  mel=random_mel(model, batch, 600),
                  weights=weights)  # fmt: skip
    runs = [_fast_codes(backend, model, 600, **kwargs) for backend in _variants(batch).values()]
    runs.append(generate(model, 600, backend="fast", **kwargs).codes)
    for other in runs[1:]:
        assert torch.equal(other, runs[0])


def test_the_result_names_its_weight_mode():
    result = generate(make_model(), 20, seed=0, backend="fast", weights="int8")
    assert (result.backend, result.weights) == ("fast", "int8")


def test_torch_backend_refuses_a_reduced_mode_naming_what_works():
    with pytest.raises(ValueError, match=r"'torch'.*weights='bf16'.*backend='fast'"):
        generate(make_model(), 5, seed=0, backend="torch", weights="bf16")
    with pytest.raises(ValueError, match=r"weights must be one of \['fp32', 'bf16', 'int8'\], got 'fp16'"):
        generate(make_model(), 5, seed=0, backend="fast", weights="fp16")


def test_auto_keeps_the_weight_mode():
    model = make_model()
    assert resolve_backend("auto", model, "int8") == "fast"
    model64 = make_model().double()  # fast runs float32 models only: no back-end runs int8 for it
    with pytest.raises(ValueError, match="no generation back-end runs weights='int8'"):
        generate(model64, 5, seed=0, backend="auto", weights="int8")
    assert generate(model64, 5, seed=0, backend="auto").backend == "torch"
