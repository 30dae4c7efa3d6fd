"""Fault audit of the surfaces the first audits left out: the block API (DilatedStack, StackState),
the exports (StreamingStep, GenerationStep, the ONNX writers), corpus layouts, the streaming
vocoder's Python entry point and the torchrun environment.

Every test here failed on the code before this audit (each docstring says what happened then);
tiny models throughout, so the file runs in seconds.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf
import torch

from wavedil import DilatedStack, StackState, StreamingStep, WaveNet, WaveNetConfig, to_onnx
from wavedil.data import CorpusError, SegmentDataset, iter_file_audio, load_corpus, split_items
from wavedil.distributed import dist_info_from_env
from wavedil.generation_step import GenerationStep, generator_to_onnx
from wavedil.streaming import state_to_tensors
from wavedil.vocoder_stream import StreamingVocoder, iter_npy_chunks

from test_faults_api import MEL, TINY, model, stack  # noqa: F401 (model, stack: fixtures)


# ----------------------------------------------------------------------------- the block


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(weight_norm="no"), r"weight_norm must be True or False, got 'no'"),
        (dict(dropout="0.1"), r"dropout must be a number in \[0, 1\), got '0.1'"),
    ],
)
def test_stack_options_of_the_wrong_type_are_named(kwargs: dict, match: str) -> None:
    """Was: weight_norm="no" (truthy) silently built a weight-normed stack; dropout="0.1" a TypeError."""
    with pytest.raises(ValueError, match=match):
        DilatedStack(8, dilations=(1, 2), **kwargs)


def test_a_state_without_a_buffer_list_is_named(stack: DilatedStack) -> None:
    """Was: StackState(None) stepped gave TypeError "object of type 'NoneType' has no len()"; resetting items of a
    state without buffers an IndexError."""
    with pytest.raises(ValueError, match=r"state.buffers must be a list of ring buffers .*got NoneType"):
        stack.step(torch.zeros(1, 8, 1), StackState(None))
    with pytest.raises(ValueError, match=r"holds no buffers: create it with stack.init_state"):
        StackState([]).reset([0])


# ----------------------------------------------------------------------------- exports


def test_streaming_step_names_rings_that_do_not_fit(stack: DilatedStack) -> None:
    """Was: rings of another batch gave a RuntimeError from torch.cat, rings in the wrong order a residual of
    the wrong length (no error), float64 rings a RuntimeError from conv1d."""
    step = StreamingStep(stack)
    pos, buffers = state_to_tensors(stack.init_state(2))
    x = torch.zeros(2, 8, 1)
    with pytest.raises(ValueError, match=r"buffer_0 must be \(3, 8, 1\) for layer 0 .*a batch of 3, got \(2, 8, 1\)"):
        step(torch.zeros(3, 8, 1), pos, *buffers)
    with pytest.raises(ValueError, match=r"buffer_0 must be \(2, 8, 1\) .*got \(2, 8, 4\): pass the rings in layer order"):
        step(x, pos, *buffers[::-1])
    with pytest.raises(ValueError, match=r"buffer_1 has dtype torch.float64 but the weights are torch.float32"):
        step(x, pos, buffers[0], buffers[1].double(), buffers[2])
    with pytest.raises(ValueError, match=r"x has dtype torch.int64 but the weights are torch.float32"):
        step(x.long(), pos, *buffers)
    (res, skip), state = step.unpack(step(*step.pack(x, stack.init_state(2))))  # the right inputs still run
    assert res.shape == (2, 8, 1) and state.pos == 1


@pytest.mark.parametrize("code", [256, 1000, -1])
def test_generation_step_names_an_out_of_range_code(model: WaveNet, code: int) -> None:
    """Was: a raw IndexError "index out of range in self" from the embedding."""
    step = GenerationStep(model)
    _, pos, *buffers = step.initial_inputs(2)
    got = rf"got range \[{min(code, 0)}, {max(code, 0)}\]"
    with pytest.raises(ValueError, match=r"code must lie in \[0, 256\) \(mulaw codes of this model\), " + got):
        step(torch.tensor([code, 0]), torch.rand(2, dtype=torch.float64), pos, *buffers)


def _onnx_targets(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    folder = tmp_path / "a_folder.onnx"
    folder.mkdir()
    return [
        (blocker / "step.onnx", r"cannot create the folder of the ONNX file '.*a_file' or write in it"),
        (folder, r"ONNX output path '.*a_folder.onnx' is a folder: give a file name such as"),
    ]


def test_onnx_paths_that_cannot_be_written_are_named_before_the_export(stack, model, tmp_path) -> None:
    """Was: a path under a file gave a raw FileExistsError; a folder named x.onnx ran the whole export, then
    failed with a raw IsADirectoryError."""
    pytest.importorskip("onnxscript")
    for path, match in _onnx_targets(tmp_path):
        with pytest.raises(ValueError, match=match):
            to_onnx(stack, path)
        with pytest.raises(ValueError, match=match):
            generator_to_onnx(model, path)


# ----------------------------------------------------------------------------- the streaming vocoder


def test_streaming_vocoder_push_of_a_numpy_array_says_what_to_pass() -> None:
    """Was: "frames must be a float tensor of log-mel frames, got float32", not saying it was numpy."""
    voc = StreamingVocoder(WaveNet(WaveNetConfig(**TINY, mel=MEL)).eval(), seed=0)
    with pytest.raises(ValueError, match=r"got a numpy array \(float32, shape \(8, 3\)\): pass torch.from_numpy"):
        voc.push(np.zeros((8, 3), np.float32))
    with pytest.raises(ValueError, match=r"with B = 1 \(this vocoder has 8 mel bands\), got shape \(2, 8, 3\)"):
        voc.push(torch.zeros(2, 8, 3))  # was "with B = 1 or 1"


def test_a_text_mode_stream_of_chunks_says_to_open_it_in_binary() -> None:
    """Was: TypeError "sequence item 0: expected a bytes-like object, str found" (e.g. sys.stdin for
    sys.stdin.buffer)."""
    raw = io.BytesIO()
    np.save(raw, np.zeros((8, 2), np.float32))
    with pytest.raises(ValueError, match=r"open in text mode .*sys.stdin.buffer or open\(path, 'rb'\)"):
        list(iter_npy_chunks(io.StringIO(raw.getvalue().decode("latin-1")), 8))


# ----------------------------------------------------------------------------- corpora


def _ljspeech(tmp_path, metadata: bytes):
    (tmp_path / "wavs").mkdir()
    sf.write(tmp_path / "wavs" / "LJ001-0001.wav", np.full(400, 0.1, np.float32), 8000)
    (tmp_path / "metadata.csv").write_bytes(metadata)
    return tmp_path


@pytest.mark.parametrize(
    "metadata, match",
    [
        ("LJ001-0001|caf\u00e9|x\n".encode("latin-1"), r"metadata.csv' is not UTF-8 text \(byte 0xe9 at offset 14\); save it as UTF-8"),
        ("LJ001-0001|x\n".encode("utf-16"), r"is not UTF-8 text \(byte 0xff at offset 0\)"),
        (b"LJ001-0001,text,text\n", r"none of the 1 ids .*'LJ001-0001,text,text'.*must be separated by '\|'"),
        (b"LJ001-0001.wav|text\n", r"none of the 1 ids .*The ids end in '.wav': write them without it"),
    ],
)
def test_ljspeech_metadata_that_cannot_be_read_says_why(tmp_path, metadata: bytes, match: str) -> None:
    """Was: a raw UnicodeDecodeError naming no file; a comma-separated file or ids with .wav skipped every
    file as missing and ended in "check that the files are valid, non-empty audio"."""
    with pytest.raises(CorpusError, match=match):
        load_corpus(_ljspeech(tmp_path, metadata), "ljspeech")


def test_loaders_given_paths_instead_of_audio_items_say_what_they_take(tmp_path) -> None:
    """Was: AttributeError "'PosixPath' object has no attribute 'frames'" (SegmentDataset), "... 'path'"
    (split_items), "... 'rate'" (iter_file_audio): find_audio_files returns paths, these take AudioItems."""
    path = tmp_path / "a.wav"
    sf.write(path, np.full(400, 0.1, np.float32), 8000)
    want = r"takes AudioItems \(from load_corpus\(root\)\), got PosixPath .*a.wav'\) at index 1"
    items = [load_corpus(tmp_path)[0], path]
    with pytest.raises(CorpusError, match="SegmentDataset " + want):
        SegmentDataset(items, 100, 8000)
    with pytest.raises(CorpusError, match="split_items " + want):
        split_items(items)
    with pytest.raises(CorpusError, match="iter_file_audio " + want):
        list(iter_file_audio(items, 8000))
    with pytest.raises(ValueError, match="segment_length must be a positive integer, got True"):
        SegmentDataset(items[:1], True, 8000)  # was: accepted as a segment of 1 sample
    with pytest.raises(CorpusError, match="min_frames must be an integer >= 0, got '5'"):
        load_corpus(tmp_path, min_frames="5")  # was: TypeError


# ----------------------------------------------------------------------------- torchrun's environment


@pytest.mark.parametrize(
    "env",
    [
        dict(RANK="1", WORLD_SIZE="1"),  # was: trained alone as a non-main rank, then IndexError
        dict(RANK="0", WORLD_SIZE="0"),  # was: ZeroDivisionError
        dict(RANK="3", WORLD_SIZE="2"),  # was: waited for the other ranks until the 30-minute timeout
        dict(RANK="-1", WORLD_SIZE="2"),  # the same
        dict(RANK="0", WORLD_SIZE="1", LOCAL_RANK="-1"),
    ],
)
def test_rank_and_world_size_out_of_range_are_named(monkeypatch, env: dict) -> None:
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    want = rf"RANK={env['RANK']}, WORLD_SIZE={env['WORLD_SIZE']}, LOCAL_RANK={env.get('LOCAL_RANK', 0)} do not fit"
    with pytest.raises(ValueError, match=want + r".*RANK in \[0, WORLD_SIZE\)"):
        dist_info_from_env()


def test_nan_uniforms_never_give_a_code_outside_the_classes():
    """A GenerationStep fed NaN uniforms returned the code -9223372036854775808 for the mol and
    gaussian heads: a NaN value is put in the middle bin, by the torch heads and the fast kernel alike."""
    import numpy as np

    from wavedil.distributions import Gaussian, MixtureOfLogistics
    from wavedil.fast._kernels import HEAD_GAUSSIAN, HEAD_MOL, draw

    u = torch.full((2, 2), float("nan"), dtype=torch.float64)
    mol, gauss = MixtureOfLogistics(256, 2), Gaussian(256)
    assert mol.sample(torch.zeros(2, 6), u).tolist() == [128, 128]
    assert gauss.sample(torch.zeros(2, 2), u[:, 0]).tolist() == [128, 128]
    scratch = np.empty(256, np.float64)
    nan = np.full(2, np.nan)
    assert draw(np.zeros(6, np.float32), HEAD_MOL, 256, 2, -7.0, nan, 1.0, False, scratch) == 128
    assert draw(np.zeros(2, np.float32), HEAD_GAUSSIAN, 256, 0, -7.0, nan, 1.0, False, scratch) == 128
