"""The whole-model step (wavedil.generation_step) and its TorchScript export: a file that
generates audio on its own draws the codes of ``wavedil.generate`` for the same uniforms."""

from __future__ import annotations

import io

import pytest
import torch
from test_fast import make_head_model, one_torch_thread  # noqa: F401 (autouse fixture)

from wavedil import generate
from wavedil.generation_step import GenerationStep, generator_to_onnx, generator_to_torchscript


def _uniforms(model, steps: int, batch: int, seed: int) -> torch.Tensor:
    """The uniforms ``generate(..., seed=seed)`` draws."""
    per = model.dist.uniforms_per_sample
    shape = (steps, batch) if per == 1 else (steps, batch, per)
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("head", ["mulaw", "mol", "gaussian"])
@pytest.mark.parametrize("speaker", [False, True])
def test_exported_generator_draws_the_codes_of_generate(head, speaker):
    model = make_head_model(head, speaker=speaker)
    spk = torch.tensor([1, 2]) if speaker else None
    ref = generate(model, 300, batch_size=2, seed=5, speaker=spk, temperature=0.9, backend="torch").codes
    buf = io.BytesIO()
    torch.jit.save(generator_to_torchscript(model, temperature=0.9), buf)
    buf.seek(0)
    loaded = torch.jit.load(buf)  # what a user without wavedil runs
    u = _uniforms(model, 300, 2, seed=5)
    code, pos, *buffers = GenerationStep(model).initial_inputs(2)
    cond = [model.speaker(spk)] if speaker else []
    out = []
    with torch.no_grad():
        for t in range(300):
            code, pos, *buffers = loaded(code, u[t], pos, *cond, *buffers)
            out.append(code)
    got = torch.stack(out, dim=1)
    mismatch = (got != ref).nonzero()
    assert mismatch.numel() == 0, f"first differing (row, step) {mismatch[0].tolist()}"
    assert int(pos) == 300


def test_the_step_updates_nothing_in_place_and_names_its_tensors():
    model = make_head_model("mulaw")
    step = GenerationStep(model)
    code, pos, *buffers = step.initial_inputs(1)
    before = [b.clone() for b in buffers]
    with torch.no_grad():
        out = step(code, torch.rand(1, dtype=torch.float64), pos, *buffers)
    assert all(torch.equal(a, b) for a, b in zip(before, buffers)) and int(pos) == 0
    assert len(out) == len(step.output_names) and step.input_names[:3] == ["code", "uniforms", "pos"]


@pytest.mark.parametrize("head, speaker", [("mulaw", False), ("mulaw", True), ("mol", True)])
def test_onnx_generator_run_by_onnxruntime_draws_the_codes_of_generate(tmp_path, head, speaker):
    ort = pytest.importorskip("onnxruntime")  # the dev extra installs it
    model = make_head_model(head, speaker=speaker)
    spk = torch.tensor([0, 2, 1]) if speaker else None
    ref = generate(model, 200, batch_size=3, seed=8, speaker=spk, backend="torch").codes
    session = ort.InferenceSession(str(generator_to_onnx(model, tmp_path / "gen.onnx")))
    step = GenerationStep(model)
    u = _uniforms(model, 200, 3, seed=8).numpy()
    code, pos, *buffers = [t.numpy() for t in step.initial_inputs(3)]
    cond = [model.speaker(spk).detach().numpy()] if speaker else []
    out = []
    for t in range(200):
        code, pos, *buffers = session.run(None, dict(zip(step.input_names, [code, u[t], pos, *cond, *buffers])))
        out.append(torch.from_numpy(code))
    got = torch.stack(out, dim=1)
    mismatch = (got != ref).nonzero()
    assert mismatch.numel() == 0, f"first differing (row, step) {mismatch[0].tolist()}"


def test_a_vocoder_is_refused_with_what_to_use(tmp_path):
    with pytest.raises(ValueError, match="StreamingVocoder"):
        generator_to_torchscript(make_head_model("mulaw", mel=True))
    with pytest.raises(ValueError, match="StreamingVocoder"):
        generator_to_onnx(make_head_model("mulaw", mel=True), tmp_path / "v.onnx")
    with pytest.raises(ValueError, match="inverse normal CDF.*generator_to_torchscript"):
        generator_to_onnx(make_head_model("gaussian"), tmp_path / "g.onnx")
