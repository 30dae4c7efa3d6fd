"""Fault audit of the public Python API: bad input a user could plausibly pass gets a ValueError
that names the argument and the offending value, not a traceback from deep inside torch, a silent
wrong result or a scan of the whole file system.

Every test here failed on the code before the audit (each docstring says what happened then);
tiny models throughout, so the file runs in seconds.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wavedil import (
    Categorical,
    CausalConv1d,
    DilatedStack,
    Gaussian,
    MelSpec,
    MixtureOfLogistics,
    ResidualBlock,
    StackState,
    StreamingStep,
    Upsampler,
    WaveNet,
    WaveNetConfig,
    decode,
    describe_model,
    evaluate_files,
    generate,
    generate_to_files,
    linear_decode,
    linear_encode,
    load_mel,
    load_pretrained,
    log_mel,
    mu_law_decode,
    mu_law_encode,
    read_audio,
    resolve_speaker,
    to_onnx,
    vocode_file,
    write_audio,
)
from wavedil.vocoder_stream import StreamingVocoder

TINY = dict(residual_channels=8, gate_channels=16, skip_channels=16, head_channels=16, dilations=(1, 2, 4))
MEL = dict(sample_rate=8000, hop_length=16, n_fft=64, n_mels=8)


@pytest.fixture(scope="module")
def stack() -> DilatedStack:
    return DilatedStack(8, 16, 16, dilations=(1, 2, 4)).eval()


@pytest.fixture(scope="module")
def cond_stack() -> DilatedStack:
    return DilatedStack(8, 16, 16, dilations=(1, 2), global_cond_channels=4, local_cond_channels=3).eval()


@pytest.fixture(scope="module")
def model() -> WaveNet:
    return WaveNet(WaveNetConfig(**TINY)).eval()


@pytest.fixture(scope="module")
def speaker_model() -> WaveNet:
    return WaveNet(WaveNetConfig(**TINY, global_cond_classes=3, global_cond_channels=4, speakers=("a", "b", "c"))).eval()


@pytest.fixture(scope="module")
def mol_model() -> WaveNet:
    return WaveNet(WaveNetConfig(**TINY, output="mol", mixtures=2)).eval()


@pytest.fixture(scope="module")
def vocoder() -> WaveNet:
    return WaveNet(WaveNetConfig(**TINY, mel=MEL)).eval()


@pytest.fixture(scope="module")
def speaker_vocoder() -> WaveNet:
    return WaveNet(WaveNetConfig(**TINY, mel=MEL, global_cond_classes=2, global_cond_channels=4)).eval()


# ----------------------------------------------------------------------------- the block: constructors


def test_dilations_that_are_not_a_sequence_are_named() -> None:
    """Before: ``TypeError: 'int' object is not iterable``."""
    with pytest.raises(ValueError, match=r"dilations must be a sequence of integers.*got 4"):
        DilatedStack(8, dilations=4)


def test_config_dilations_are_not_silently_rounded() -> None:
    """Before: ``dilations=(1, 2.5)`` built a model with dilation 2 and ``(1, '2')`` one with 2."""
    with pytest.raises(ValueError, match=r"dilations\[1\] must be an integer >= 1, got 2.5"):
        WaveNet(WaveNetConfig(**{**TINY, "dilations": (1, 2.5)}))
    with pytest.raises(ValueError, match=r"dilations\[1\] must be an integer >= 1, got '2'"):
        WaveNet(WaveNetConfig(**{**TINY, "dilations": [1, "2"]}))


def test_wavenet_given_a_dict_says_how_to_build_a_config() -> None:
    """Before: ``AttributeError: 'dict' object has no attribute 'quantization_channels'``."""
    with pytest.raises(ValueError, match=r"config must be a WaveNetConfig, got dict.*from_dict"):
        WaveNet({"residual_channels": 8})


def test_mel_config_without_sample_rate_is_named() -> None:
    """Before: ``TypeError: MelSpec.__init__() missing 1 required positional argument``."""
    with pytest.raises(ValueError, match=r"MelSpec needs sample_rate"):
        WaveNet(WaveNetConfig(**TINY, mel={"hop_length": 80}))


def test_odd_bins_for_a_linear_head_are_refused_by_the_distribution_too() -> None:
    """Before: ``MixtureOfLogistics(255)`` was built (only ``WaveNet`` checked that ``Q`` is even)."""
    with pytest.raises(ValueError, match=r"mol head needs an even quantization_channels, got 255"):
        MixtureOfLogistics(255, 2)


# ----------------------------------------------------------------------------- the block: forward


@pytest.mark.parametrize(
    "x, match",
    [
        (torch.randint(0, 5, (2, 8, 10)), r"x has dtype torch.int64 but the weights are torch.float32"),
        (torch.randn(2, 8, 10, dtype=torch.float64), r"x has dtype torch.float64.*x.to\(torch.float32\)"),
        (torch.randn(2, 8, 10, dtype=torch.float16), r"x has dtype torch.float16"),
        (np.zeros((2, 8, 10), dtype=np.float32), r"x must be a torch.Tensor.*got ndarray"),
    ],
)
def test_stack_forward_names_a_wrong_dtype_or_type(stack: DilatedStack, x, match: str) -> None:
    """Before: ``RuntimeError: mat1 and mat2 must have the same dtype`` / ``AttributeError``."""
    with pytest.raises(ValueError, match=match):
        stack(x)


@pytest.mark.parametrize(
    "gc, lc, match",
    [
        (torch.randn(2, 5), torch.randn(2, 3, 10), r"global_cond must be \(2, 4\).*got \(2, 5\)"),
        (torch.randn(3, 4), torch.randn(2, 3, 10), r"global_cond must be \(2, 4\).*got \(3, 4\)"),
        (torch.randn(2, 4, 1), torch.randn(2, 3, 10), r"global_cond must be \(2, 4\).*got \(2, 4, 1\)"),
        (torch.randn(2, 4), torch.randn(2, 5, 10), r"local_cond must be \(2, 3, 10\).*got \(2, 5, 10\)"),
        (torch.randn(2, 4), torch.randn(2, 3, 7), r"local_cond must be \(2, 3, 10\).*got \(2, 3, 7\)"),
        (torch.randn(2, 4), torch.randn(2, 3), r"local_cond must be \(2, 3, 10\).*got \(2, 3\)"),
        (torch.randn(2, 4, dtype=torch.float64), torch.randn(2, 3, 10), r"global_cond has dtype torch.float64"),
    ],
)
def test_stack_forward_checks_the_conditioning(cond_stack: DilatedStack, gc, lc, match: str) -> None:
    """Before: ``RuntimeError: mat1 and mat2 shapes cannot be multiplied`` / size mismatch / IndexError."""
    with pytest.raises(ValueError, match=match):
        cond_stack(torch.randn(2, 8, 10), gc, lc)


def test_conditioning_given_to_an_unconditioned_stack_is_refused(stack: DilatedStack) -> None:
    """Before: ``global_cond`` / ``local_cond`` were silently ignored."""
    with pytest.raises(ValueError, match=r"without global conditioning.*do not pass global_cond"):
        stack(torch.randn(2, 8, 10), torch.randn(2, 4))
    with pytest.raises(ValueError, match=r"without local conditioning.*do not pass local_cond"):
        stack(torch.randn(2, 8, 10), None, torch.randn(2, 3, 10))


def test_causal_conv_and_block_name_a_wrong_input_shape() -> None:
    """Before: ``CausalConv1d`` took ``(C, T)`` as unbatched and returned ``(C_out, T)``; ``ResidualBlock``
    on ``(R, T)`` raised a RuntimeError about 16 channels; a wrong channel count gave torch's message."""
    conv, block = CausalConv1d(4, 6, 2, 2), ResidualBlock(8, 16, 8)
    with pytest.raises(ValueError, match=r"expected input \(B, 4, T\).*got \(4, 10\)"):
        conv(torch.randn(4, 10))
    with pytest.raises(ValueError, match=r"expected input \(B, 8, T\).*got \(8, 10\)"):
        block(torch.randn(8, 10))
    with pytest.raises(ValueError, match=r"expected input \(B, 8, T\).*got \(2, 5, 10\)"):
        block(torch.randn(2, 5, 10))


def test_causal_conv_step_checks_its_ring_and_position() -> None:
    """Before: a ring of the wrong length was silently used; ``pos=1.0`` raised IndexError."""
    conv = CausalConv1d(4, 6, 2, 2)
    with pytest.raises(ValueError, match=r"buf must be the ring .* = \(2, 4, 2\).*got \(2, 4, 5\)"):
        conv.step(torch.randn(2, 4, 1), torch.zeros(2, 4, 5), 0)
    with pytest.raises(ValueError, match=r"pos must be an integer >= 0.*got 1.0"):
        conv.step(torch.randn(2, 4, 1), conv.init_buffer(2), 1.0)


# ----------------------------------------------------------------------------- the block: streaming state


@pytest.mark.parametrize("T", [1, 5])
def test_state_of_another_stack_with_as_many_layers_is_refused(stack: DilatedStack, T: int) -> None:
    """Before: a state of dilations (1, 1, 1) stepped a (1, 2, 4) stack silently (T=1, wrong
    output) or with ``RuntimeError: The size of tensor a (5) must match ...`` (chunks)."""
    other = DilatedStack(8, dilations=(1, 1, 1)).init_state(2)
    with torch.no_grad(), pytest.raises(ValueError, match=r"state.buffers\[1\] must be \(2, 8, 2\).*dilation 2.*got \(2, 8, 1\)"):
        stack.step(torch.randn(2, 8, T), other)


def test_state_of_another_channel_count_is_refused(stack: DilatedStack) -> None:
    """Before: ``RuntimeError: The size of tensor a (8) must match the size of tensor b (4)``."""
    with torch.no_grad(), pytest.raises(ValueError, match=r"state.buffers\[0\] must be \(2, 8, 1\).*got \(2, 4, 1\)"):
        stack.step(torch.randn(2, 8, 1), DilatedStack(4, dilations=(1, 2, 4)).init_state(2))


@pytest.mark.parametrize("T", [1, 3])
def test_state_of_another_dtype_is_named(stack: DilatedStack, T: int) -> None:
    """Before: ``RuntimeError: mat1 and mat2 must have the same dtype`` / ``Input type (double) and bias type``."""
    with torch.no_grad(), pytest.raises(ValueError, match=r"state.buffers\[0\] has dtype torch.float64.*torch.float32"):
        stack.step(torch.randn(2, 8, T), stack.init_state(2, dtype=torch.float64))


def test_step_input_of_another_dtype_is_refused_like_forward(stack: DilatedStack) -> None:
    """Before: int64 and float16 chunks were silently promoted by the per-layer step path (while
    ``forward`` refused them), float64 raised a RuntimeError."""
    for dtype in (torch.int64, torch.float16, torch.float64):
        x = torch.zeros(2, 8, 1, dtype=dtype)
        with torch.no_grad(), pytest.raises(ValueError, match=rf"x has dtype {dtype}"):
            stack.step(x, stack.init_state(2))


@pytest.mark.parametrize("state", [None, {"buffers": [], "pos": 0}])
def test_step_without_a_stack_state_is_named(stack: DilatedStack, state) -> None:
    """Before: ``AttributeError: 'NoneType' / 'dict' object has no attribute 'buffers'``."""
    with pytest.raises(ValueError, match=r"state must be a StackState .*got (NoneType|dict)"):
        stack.step(torch.randn(2, 8, 1), state)


@pytest.mark.parametrize("pos, match", [(-5, r"got -5"), (1.5, r"got 1.5")])
def test_state_position_must_be_a_non_negative_int(stack: DilatedStack, pos, match: str) -> None:
    """Before: ``pos=-5`` was stepped silently (ring slots of a negative time); 1.5 raised TypeError."""
    state = StackState(stack.init_state(2).buffers, pos)
    with torch.no_grad(), pytest.raises(ValueError, match=r"state.pos must be an integer >= 0.*" + match):
        stack.step(torch.randn(2, 8, 1), state)


def test_a_state_advanced_in_place_cannot_be_stepped_again(stack: DilatedStack) -> None:
    """Before: stepping the *old* state after a single-sample step silently gave another output
    (its rings had been written in place, its ``pos`` had not moved)."""
    x = torch.randn(2, 8, 1)
    s0 = stack.init_state(2)
    with torch.no_grad():
        stack.step(x, s0)
        with pytest.raises(ValueError, match=r"already advanced by a single-sample step.*pass the state that step returned"):
            stack.step(x, s0)


def test_branching_a_stream_with_clone_and_a_full_reset_still_work(stack: DilatedStack) -> None:
    """Regression check (passes before and after): ``clone()`` branches a stream, and ``reset()``
    makes an advanced state a fresh stream again."""
    x = torch.randn(2, 8, 1)
    with torch.no_grad():
        (a, _), s1 = stack.step(x, stack.init_state(2))
        branch = s1.clone()
        (b, _), _ = stack.step(x, s1)
        (c, _), _ = stack.step(x, branch)
        assert torch.equal(b, c)
        s1.reset()
        (d, _), _ = stack.step(x, s1)
        assert torch.allclose(a, d)


def test_step_checks_the_conditioning_of_single_samples(cond_stack: DilatedStack) -> None:
    """Before: a ``local_cond`` of 4 samples with a 1-sample chunk was silently used (its first
    column, or broadcast to 4 outputs with autograd on); wrong sizes raised RuntimeErrors."""
    x, state = torch.randn(2, 8, 1), cond_stack.init_state(2)
    with torch.no_grad(), pytest.raises(ValueError, match=r"local_cond must be \(2, 3, 1\).*got \(2, 3, 4\)"):
        cond_stack.step(x, state, torch.randn(2, 4), torch.randn(2, 3, 4))
    with torch.no_grad(), pytest.raises(ValueError, match=r"global_cond must be \(2, 4\).*got \(3, 4\)"):
        cond_stack.step(x, state, torch.randn(3, 4), torch.randn(2, 3, 1))


def test_reset_with_a_float_or_a_string_is_named(stack: DilatedStack) -> None:
    """Before: ``IndexError: tensors used as indices must be long`` / ``TypeError: new(): invalid data type 'str'``."""
    for items in (1.5, "0"):
        with pytest.raises(ValueError, match=r"reset items must be an index.*got"):
            stack.init_state(2).reset(items)


def test_empty_or_incomplete_states_are_named() -> None:
    """Before: ``IndexError: list index out of range`` and ``KeyError: 'pos'``."""
    with pytest.raises(ValueError, match=r"holds no buffers.*init_state"):
        StackState([]).batch_size
    with pytest.raises(ValueError, match=r"needs the keys 'buffers' and 'pos'.*\['buffers'\]"):
        StackState.from_state_dict({"buffers": []})


def test_init_state_of_an_integer_dtype_is_refused(stack: DilatedStack) -> None:
    """Before: int64 rings were made, and the first step failed deep in torch."""
    with pytest.raises(ValueError, match=r"dtype must be a float torch.dtype.*got torch.int64"):
        stack.init_state(2, dtype=torch.int64)


def test_inputs_and_states_on_another_device_are_named(stack: DilatedStack) -> None:
    """Before: ``unknown device type for autocast`` (forward) and ``Tensor on device meta is not on
    the expected device cpu!`` (step). The meta device stands in for a GPU the tests may lack."""
    with pytest.raises(ValueError, match=r"x is on meta but the weights are on cpu: move it with x.to\('cpu'\)"):
        stack(torch.randn(2, 8, 10, device="meta"))
    with torch.no_grad(), pytest.raises(ValueError, match=r"state.buffers\[0\] is on meta but the weights are on cpu"):
        stack.step(torch.randn(2, 8, 1), stack.init_state(2, device="meta"))


def test_a_state_made_before_a_dtype_change_is_named() -> None:
    """Before: a float32 state stepped a stack converted with ``.double()`` silently, writing
    float64 inputs into float32 rings (a stream that is neither precision)."""
    stack = DilatedStack(8, 16, 16, dilations=(1, 2)).eval()
    state = stack.init_state(2)
    stack.double()
    with torch.no_grad(), pytest.raises(ValueError, match=r"state.buffers\[0\] has dtype torch.float32 but the weights are torch.float64"):
        stack.step(torch.randn(2, 8, 1, dtype=torch.float64), state)


def test_generation_step_checks_temperature_uniforms_and_code_dtype(model: WaveNet) -> None:
    """Before: ``TypeError: '>=' not supported`` for a str / None temperature, ``RuntimeError: shape
    '[2, -1]' is invalid`` for 3 uniforms and torch's embedding message for float codes."""
    from wavedil.generation_step import GenerationStep

    for t in ("0.9", None):
        with pytest.raises(ValueError, match=r"temperature must be a finite number >= 0, got"):
            GenerationStep(model, t)
    step = GenerationStep(model)
    code, pos, *buffers = step.initial_inputs(2)
    with pytest.raises(ValueError, match=r"u must be \(2,\) uniforms.*got \(3,\)"):
        step(code, torch.rand(3, dtype=torch.float64), pos, *buffers)
    with pytest.raises(ValueError, match=r"code must be \(B,\) int64 codes.*torch.float32"):
        step(torch.zeros(2), torch.rand(2, dtype=torch.float64), pos, *buffers)


def test_streaming_step_pack_checks_state_and_conditioning(stack: DilatedStack) -> None:
    """Before: RuntimeErrors from ``torch.cat`` / ``conv1d`` inside the step, and ``AttributeError``
    for ``state=None``."""
    step = StreamingStep(stack)
    x = torch.randn(2, 8, 1)
    with pytest.raises(ValueError, match=r"state holds 3 layers for batch 3.*x has batch 2"):
        step.pack(x, stack.init_state(3))
    with pytest.raises(ValueError, match=r"state.buffers\[0\] has dtype torch.float64"):
        step.pack(x, stack.init_state(2, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"state.buffers\[1\] must be \(2, 8, 2\)"):
        step.pack(x, DilatedStack(8, dilations=(1, 1, 1)).init_state(2))
    with pytest.raises(ValueError, match=r"state must be a StackState.*got NoneType"):
        step.pack(x, None)
    cond = DilatedStack(8, 16, 16, dilations=(1, 2), global_cond_channels=4).eval()
    with pytest.raises(ValueError, match=r"global_cond must be \(2, 4\).*got \(2, 5\)"):
        StreamingStep(cond).pack(x, cond.init_state(2), torch.randn(2, 5))


def test_streaming_step_position_must_be_a_0_dim_integer(stack: DilatedStack) -> None:
    """Before: a float ``pos`` raised ``index_select(): Expected dtype int32 or int64``; a ``(1,)``
    pos was silently accepted and returned as ``(1,)``."""
    step = StreamingStep(stack)
    buffers = stack.init_state(2).buffers
    for pos in (torch.tensor(0.0), torch.tensor([0])):
        with pytest.raises(ValueError, match=r"pos must be a 0-dim int64 tensor"):
            step(torch.randn(2, 8, 1), pos, *buffers)


def test_onnx_opset_below_what_torch_writes_is_refused(stack: DilatedStack, tmp_path) -> None:
    """Before: ``opset_version=3`` printed a converter traceback and wrote an opset-18 file anyway."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    with pytest.raises(ValueError, match=r"opset_version must be an integer >= 18.*got 3"):
        to_onnx(stack, tmp_path / "step.onnx", opset_version=3)


# ----------------------------------------------------------------------------- the model


@pytest.mark.parametrize("codes", [torch.full((2, 20), 256), torch.full((2, 20), -1)])
def test_out_of_range_codes_are_named(model: WaveNet, codes: torch.Tensor) -> None:
    """Before: ``IndexError: index out of range in self`` from the embedding."""
    with pytest.raises(ValueError, match=r"codes must lie in \[0, 256\) \(mulaw codes.*got range"):
        model(codes)
    with torch.no_grad(), pytest.raises(ValueError, match=r"codes must lie in \[0, 256\)"):
        model.step(codes[:, :1], model.init_state(2))
    with pytest.raises(ValueError, match=r"segment must lie in \[0, 256\)"):
        model.loss(codes)


def test_out_of_range_linear_codes_are_not_silently_used(mol_model: WaveNet) -> None:
    """Before: a mol model took code 65536 (and -5) as a value past the last bin, silently."""
    with pytest.raises(ValueError, match=r"codes must lie in \[0, 65536\) \(linear codes.*\[65536, 65536\]"):
        mol_model(torch.full((1, 5), 65536))
    with pytest.raises(ValueError, match=r"got range \[-5, -5\]"):
        mol_model(torch.full((1, 5), -5))


def test_loss_of_a_1d_segment_is_named(model: WaveNet) -> None:
    """Before: ``IndexError: too many indices for tensor of dimension 1``."""
    with pytest.raises(ValueError, match=r"segment must be \(B, T \+ 1\).*got \(10,\)"):
        model.loss(torch.zeros(10, dtype=torch.long))


def test_codes_given_as_numpy_are_named(model: WaveNet) -> None:
    """Before: ``AttributeError: 'numpy.ndarray' object has no attribute 'dim'``."""
    with pytest.raises(ValueError, match=r"codes must be a torch.Tensor.*got ndarray"):
        model(np.zeros((2, 5), dtype=np.int64))


def test_speaker_ids_must_be_integers(speaker_model: WaveNet) -> None:
    """Before: ``speaker=[1.7, 0.2]`` became ids 1 and 0 silently; a name raised ``TypeError``."""
    codes = torch.zeros(2, 5, dtype=torch.long)
    with pytest.raises(ValueError, match=r"speaker must be integer class ids.*float32"):
        speaker_model(codes, speaker=torch.tensor([1.7, 0.2]))
    with pytest.raises(ValueError, match=r"speaker must be integer class ids.*'p225'.*resolve_speaker"):
        speaker_model(codes, speaker="p225")


def test_vocoder_step_checks_the_mel_slice(vocoder: WaveNet) -> None:
    """Before: ``RuntimeError: mat1 and mat2 shapes cannot be multiplied (1x7 and 8x48)``."""
    with torch.no_grad(), pytest.raises(ValueError, match=r"local_cond must be \(1, 8, 1\).*got \(1, 7, 1\)"):
        vocoder.step(torch.zeros(1, 1, dtype=torch.long), vocoder.init_state(1), None, torch.randn(1, 7, 1))


# ----------------------------------------------------------------------------- generate


@pytest.mark.parametrize("seed", [1.5, 2**64, -1, "abc", True])
def test_generate_seed_out_of_range_or_not_an_int(model: WaveNet, seed) -> None:
    """Before: 1.5 and True were truncated to 1 silently, -1 wrapped around, 2**64 raised
    ``Overflow when unpacking long long`` and 'abc' ``invalid literal for int()``."""
    with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 2\*\*64 - 1\], got"):
        generate(model, 5, seed=seed)


def test_generate_temperature_of_the_wrong_type(model: WaveNet) -> None:
    """Before: ``TypeError: '>=' not supported between instances of 'str' and 'int'``."""
    with pytest.raises(ValueError, match=r"temperature must be a finite number >= 0, got '0.9'"):
        generate(model, 5, temperature="0.9")


@pytest.mark.parametrize(
    "speaker, match",
    [([0, 1, 2], r"speaker must be \(B,\) = \(2,\), got shape \(3,\)"), ("p225", r"resolve_speaker"), (1.5, r"float")],
)
def test_generate_checks_speaker(speaker_model: WaveNet, speaker, match: str) -> None:
    """Before: RuntimeError from ``expand``, ``TypeError: new(): invalid data type 'str'``, and 1.5
    silently became speaker 1."""
    with pytest.raises(ValueError, match=match):
        generate(speaker_model, 5, batch_size=2, speaker=speaker)


def test_generate_checks_model_and_progress_before_work(model: WaveNet) -> None:
    """Before: ``AttributeError: 'DilatedStack' object has no attribute 'upsampler'`` and, after the
    first sample, ``TypeError: 'int' object is not callable``."""
    with pytest.raises(ValueError, match=r"model must be a wavedil WaveNet, got DilatedStack"):
        generate(DilatedStack(8, dilations=(1,)), 5)
    with pytest.raises(ValueError, match=r"progress must be a function.*got 3"):
        generate(model, 5, progress=3)


def test_generate_refuses_a_nan_mel(vocoder: WaveNet) -> None:
    """Before: a NaN mel generated all-zero codes (full-scale negative audio) without a word."""
    with pytest.raises(ValueError, match=r"mel holds NaN or infinite values"):
        generate(vocoder, None, mel=torch.full((8, 10), float("nan")), seed=0)


# ----------------------------------------------------------------------------- distributions


def test_categorical_sample_checks_params_uniforms_and_temperature() -> None:
    """Before: logits of the wrong width and negative / NaN temperatures were sampled silently;
    ``(B, P, T)`` logits and a wrong number of uniforms raised RuntimeErrors."""
    c = Categorical(256)
    with pytest.raises(ValueError, match=r"mulaw head parameters must be \(N, 256\), got shape \(2, 100\)"):
        c.sample(torch.randn(2, 100), torch.rand(2))
    with pytest.raises(ValueError, match=r"mulaw head parameters must be \(N, 256\), got shape \(2, 256, 3\)"):
        c.sample(torch.randn(2, 256, 3), torch.rand(2))
    with pytest.raises(ValueError, match=r"u must be \(2,\) uniforms.*got \(3,\)"):
        c.sample(torch.randn(2, 256), torch.rand(3))
    for t in (-1.0, float("nan")):
        with pytest.raises(ValueError, match=r"temperature must be a finite number >= 0"):
            c.sample(torch.randn(2, 256), torch.rand(2), t)


def test_mixture_sample_needs_two_uniforms_per_row() -> None:
    """Before: ``IndexError: index 1 is out of bounds for dimension 1 with size 1``."""
    with pytest.raises(ValueError, match=r"u must be \(2, 2\) uniforms.*got \(2,\)"):
        MixtureOfLogistics(65536, 2).sample(torch.randn(2, 6), torch.rand(2))


@pytest.mark.parametrize("dist", [MixtureOfLogistics(65536, 2), Gaussian(65536)], ids=["mol", "gaussian"])
def test_linear_heads_refuse_out_of_range_targets(dist) -> None:
    """Before: bins 70000 and -3 got a plausible, wrong log-probability."""
    params = torch.randn(4, dist.param_channels)
    with pytest.raises(ValueError, match=r"target must hold bins in \[0, 65536\), got range \[70000, 70000\]"):
        dist.log_prob(params, torch.full((4,), 70000))
    with pytest.raises(ValueError, match=r"got range \[-3, -3\]"):
        dist.bits(params, torch.full((4,), -3))


def test_bits_checks_targets_and_reduction() -> None:
    """Before: float targets were truncated silently, ``(B, P, T)`` params were taken as a K-dim
    loss, 'avg' raised torch's message and a target of 300 ``IndexError: Target 300 is out of bounds``."""
    c = Categorical(256)
    with pytest.raises(ValueError, match=r"target must hold integer bins.*torch.float32"):
        c.bits(torch.randn(4, 256), torch.rand(4))
    with pytest.raises(ValueError, match=r"mulaw head parameters must be \(N, 256\)"):
        c.bits(torch.randn(2, 256, 4), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"reduction must be one of .*got 'avg'"):
        c.bits(torch.randn(4, 256), torch.zeros(4, dtype=torch.long), reduction="avg")
    with pytest.raises(ValueError, match=r"target must hold bins in \[0, 256\), got range \[300, 300\]"):
        c.bits(torch.randn(4, 256), torch.full((4,), 300))
    with pytest.raises(ValueError, match=r"target must be \(4,\) bins.*got \(5,\)"):
        MixtureOfLogistics(65536, 2).bits(torch.randn(4, 6), torch.zeros(5, dtype=torch.long))


# ----------------------------------------------------------------------------- audio


def test_encoding_refuses_integer_pcm_and_nan() -> None:
    """Before: int16 PCM was clipped to codes 0/128/255 and NaN became code -2**63."""
    pcm = torch.tensor([-32768, 0, 32767], dtype=torch.int16)
    with pytest.raises(ValueError, match=r"x must be a float waveform.*torch.int16.*32768"):
        mu_law_encode(pcm)
    nan = torch.tensor([float("nan"), 0.5])
    with pytest.raises(ValueError, match=r"x holds 1 NaN values"):
        mu_law_encode(nan)
    with pytest.raises(ValueError, match=r"x holds 1 NaN values"):
        linear_encode(nan, 8)
    with pytest.raises(ValueError, match=r"x must be a torch.Tensor.*ndarray"):
        mu_law_encode(np.zeros(3, dtype=np.float32))


def test_mu_law_outside_minus_one_one_is_still_clipped() -> None:
    """Regression check (passes before and after): values outside [-1, 1] are clipped, as documented."""
    assert mu_law_encode(torch.tensor([-3.0, 2.0])).tolist() == [0, 255]


def test_decoding_refuses_out_of_range_and_float_codes() -> None:
    """Before: codes 300 and -5 decoded to values outside [-1, 1], float codes were accepted, and
    ``linear_decode`` took an odd number of bins."""
    with pytest.raises(ValueError, match=r"codes must lie in \[0, 256\).*got range \[-5, 300\]"):
        mu_law_decode(torch.tensor([300, -5]))
    with pytest.raises(ValueError, match=r"codes must hold integer codes.*torch.float32"):
        mu_law_decode(torch.tensor([0.5, 128.0]))
    with pytest.raises(ValueError, match=r"codes must lie in \[0, 65536\).*\[70000, 70000\]"):
        linear_decode(torch.tensor([70000]))
    with pytest.raises(ValueError, match=r"even number of bins, got 255"):
        decode(torch.zeros(2, dtype=torch.long), "linear", 255)


def test_write_audio_checks_its_arguments(tmp_path) -> None:
    """Before: numpy raised AttributeError, 8000.5 Hz soundfile's ``TypeError: an integer is
    required``, '8000' a TypeError, and int64 codes were written as clipped full-scale noise."""
    out = tmp_path / "a.wav"
    with pytest.raises(ValueError, match=r"torch.Tensor waveform.*ndarray"):
        write_audio(out, np.zeros(100), 8000)
    for rate in (8000.5, "8000"):
        with pytest.raises(ValueError, match=r"sample_rate must be positive, got"):
            write_audio(out, torch.zeros(100), rate)
    with pytest.raises(ValueError, match=r"float waveform.*torch.int64.*wavedil.decode"):
        write_audio(out, torch.full((100,), 200), 8000)
    assert not out.exists()


def test_read_audio_checks_rate_and_span_types(tmp_path) -> None:
    """Before: ``sample_rate=16000.0`` returned a float rate, ``start=1.5`` raised TypeError."""
    path = write_audio(tmp_path / "a.wav", torch.zeros(1000), 8000)
    with pytest.raises(ValueError, match=r"sample_rate must be a positive integer.*16000.0"):
        read_audio(path, sample_rate=16000.0)
    with pytest.raises(ValueError, match=r"start must be an integer.*1.5"):
        read_audio(path, start=1.5)


# ----------------------------------------------------------------------------- conditioning


def test_log_mel_refuses_integer_pcm_nan_and_a_dict_spec() -> None:
    """Before: int16 PCM was analysed as values of +-32768 and NaN samples gave NaN frames, silently;
    a dict spec raised ``AttributeError``."""
    spec = MelSpec(8000, hop_length=80, n_fft=256, n_mels=20)
    with pytest.raises(ValueError, match=r"wav must be a float waveform.*torch.int16"):
        log_mel(torch.zeros(800, dtype=torch.int16), spec)
    with pytest.raises(ValueError, match=r"wav holds NaN or infinite samples"):
        log_mel(torch.full((800,), float("nan")), spec)
    with pytest.raises(ValueError, match=r"spec must be a MelSpec.*got dict"):
        log_mel(torch.zeros(800), {"sample_rate": 8000})


def test_upsampler_names_a_wrong_dtype() -> None:
    """Before: ``RuntimeError: Input type (double) and bias type (float) should be the same``."""
    with pytest.raises(ValueError, match=r"mel is torch.float64.*weights are torch.float32"):
        Upsampler(20, 80)(torch.zeros(1, 20, 9, dtype=torch.float64))


def test_load_mel_needs_a_melspec(tmp_path) -> None:
    """Before: ``AttributeError: 'dict' object has no attribute 'n_mels'``."""
    np.save(tmp_path / "m.npy", np.zeros((8, 5), dtype=np.float32))
    with pytest.raises(ValueError, match=r"spec must be the vocoder's MelSpec.*got dict"):
        load_mel(tmp_path / "m.npy", MEL)


# ----------------------------------------------------------------------------- streaming vocoder


def test_streaming_vocoder_checks_seed_and_speaker_at_construction(vocoder: WaveNet, speaker_vocoder: WaveNet) -> None:
    """Before: seed 1.5 became 1, 2**64 raised an overflow message, a speaker for a model without
    speakers was accepted (and refused only at the first push), a speaker list of the wrong length
    raised a RuntimeError and ``model=None`` an AttributeError."""
    with pytest.raises(ValueError, match=r"seed must be an integer.*1.5"):
        StreamingVocoder(vocoder, seed=1.5)
    with pytest.raises(ValueError, match=r"seed must be an integer.*18446744073709551616"):
        StreamingVocoder(vocoder, seed=2**64)
    with pytest.raises(ValueError, match=r"no global conditioning; do not pass speaker"):
        StreamingVocoder(vocoder, speaker=1)
    with pytest.raises(ValueError, match=r"speaker must be \(B,\) = \(2,\), got shape \(3,\)"):
        StreamingVocoder(speaker_vocoder, batch_size=2, speaker=[0, 1, 1])
    with pytest.raises(ValueError, match=r"speaker ids must lie in \[0, 2\), got \[5\]"):
        StreamingVocoder(speaker_vocoder, speaker=5)
    with pytest.raises(ValueError, match=r"model must be a wavedil WaveNet vocoder, got NoneType"):
        StreamingVocoder(None)


def test_streaming_vocoder_decode_refuses_codes_out_of_range(vocoder: WaveNet) -> None:
    """Before: code 999 decoded to a value outside [-1, 1]."""
    with pytest.raises(ValueError, match=r"codes must lie in \[0, 256\).*\[999, 999\]"):
        StreamingVocoder(vocoder, backend="torch", seed=0).decode(torch.tensor([[999]]))


# ----------------------------------------------------------------------------- files, description, bundled models


def test_resolve_speaker_takes_ascii_digits_only(speaker_model: WaveNet) -> None:
    """Before: the Arabic-Indic digit '\\u0662' was taken as speaker 2."""
    with pytest.raises(ValueError, match=r"unknown speaker"):
        resolve_speaker(speaker_model, "\u0662")


def test_generate_to_files_checks_arguments_before_loading(tmp_path) -> None:
    """Before: seconds='2' raised TypeError, progress=5 a TypeError after sampling, a bad seed an
    overflow message after loading the model, and ``checkpoint=None`` a TypeError from pathlib."""
    out = tmp_path / "a.wav"
    with pytest.raises(ValueError, match=r"--seconds must be a positive finite number, got '2'"):
        generate_to_files("pretrained:speech8k", out, "2")
    with pytest.raises(ValueError, match=r"progress must be a function.*got 5"):
        generate_to_files("pretrained:speech8k", out, 0.01, progress=5)
    with pytest.raises(ValueError, match=r"seed must be an integer.*1.5"):
        generate_to_files("pretrained:speech8k", out, 0.01, seed=1.5)
    with pytest.raises(ValueError, match=r"checkpoint path, a run folder or 'pretrained:NAME', got NoneType"):
        generate_to_files(None, out, 0.01)
    assert not out.exists()


def test_vocode_file_checks_seed_before_loading(tmp_path) -> None:
    """Before: ``ValueError: Overflow when unpacking long long`` after the whole analysis."""
    src = write_audio(tmp_path / "in.wav", torch.zeros(800), 8000)
    with pytest.raises(ValueError, match=r"seed must be an integer.*18446744073709551616"):
        vocode_file("pretrained:speech8k-vocoder", src, tmp_path / "out.wav", seed=2**64)


def test_evaluate_files_takes_one_path_as_a_string(tmp_path) -> None:
    """Before: the string was iterated character by character: '/' made it read every audio file
    on the machine as a corpus, then it failed on the next character."""
    src = write_audio(tmp_path / "in.wav", 0.1 * torch.randn(400).clamp(-1, 1), 8000)
    assert evaluate_files("pretrained:speech8k", str(src)).report.n_files == 1


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(chunk=0), r"chunk must be an integer >= 1.*got 0"),
        (dict(chunk=-5), r"chunk must be an integer >= 1.*got -5"),
        (dict(layout="x"), r"layout must be one of .*got 'x'"),
        (dict(seed=2**64), r"seed must be an integer"),
    ],
)
def test_evaluate_files_checks_its_options(tmp_path, kwargs: dict, match: str) -> None:
    """Before: chunk=0 raised ``range() arg 3 must not be zero``, chunk=-5 reported 0.0 bits per
    sample, layout='x' was accepted for files and a huge seed failed only when vocoding."""
    src = write_audio(tmp_path / "in.wav", torch.zeros(400), 8000)
    with pytest.raises(ValueError, match=match):
        evaluate_files("pretrained:speech8k", [src], **kwargs)


def test_describe_model_of_an_object_says_what_it_takes(model: WaveNet) -> None:
    """Before: ``OSError: [Errno 36] File name too long`` (the model's repr taken as a path)."""
    with pytest.raises(ValueError, match=r"target must be a path or a name \(str\), got WaveNet"):
        describe_model(model)


def test_load_pretrained_names_a_bad_device() -> None:
    """Before: torch's ``RuntimeError: Expected one of cpu, cuda, ...`` (and, with no GPU,
    ``Found no NVIDIA driver``)."""
    with pytest.raises(ValueError, match=r"^device 'gpu' is not a device"):  # the argument's name, not --device
        load_pretrained("speech8k", device="gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"no CUDA GPU is available here: use device='cpu' \(or device=None\)"):
            load_pretrained("speech8k", device="cuda")


# ----------------------------------------------------------------------------- wording of batch and back-end errors


def test_batch_mismatch_messages_name_the_batch_sizes_that_fit(model, vocoder) -> None:
    """They said "B = 1 or 1" / "batch 1 or 1" for a batch of one."""
    with pytest.raises(ValueError, match=r"with B = 1 and T >= 1, got shape \(2, 5\)"):
        generate(model, 3, prompt=torch.zeros(2, 5, dtype=torch.long), seed=0)
    with pytest.raises(ValueError, match=r"with B = 1 or 3 and T >= 1, got shape \(2, 5\)"):
        generate(model, 3, batch_size=3, prompt=torch.zeros(2, 5, dtype=torch.long), seed=0)
    with pytest.raises(ValueError, match=r"mel must have batch 1, got shape \(2, 8, 9\)"):
        generate(vocoder, None, mel=torch.zeros(2, 8, 9), seed=0)


def test_an_unknown_backend_lists_auto_too(model) -> None:
    """The list of back-ends left out 'auto', the default."""
    with pytest.raises(ValueError, match=r"unknown generation backend 'nope'; available: \[.*'torch'\], or 'auto'"):
        generate(model, 3, backend="nope", seed=0)
