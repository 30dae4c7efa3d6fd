"""Faults found in hunt 7: ``eval`` options at their edges (``--max-seconds inf``, ``--vocode-seconds``
beyond ``--max-seconds``, a VCTK file given by itself, ``--mic`` named as ``data.mic``), training settings of odd types (a seed beyond
64 bits, ``trainer.device`` as a list, ``model.mel`` / ``model.speakers`` that are not a mapping / a
list), ``info`` of a checkpoint not named ``.pt``, a layer's ring of another dtype or device, a refused
export of a bundled model that replaced its weights, and exports of something that is not a stack.

Each test's docstring says what happened before the fix. Tiny random-weight models and a tenth of a
second of audio: the file runs in seconds.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from wavedil import CausalConv1d, ResidualBlock, WaveNet, WaveNetConfig, describe_model, evaluate_files, to_torchscript
from wavedil.cli import main as cli_main
from wavedil.data import load_corpus
from wavedil.pretrained import PretrainedInfo, export_pretrained, file_sha256
from wavedil.train_config import check_top_level
from wavedil.training_utils import TrainingError, resolve_device

from conftest import tiny_config
from test_commands import MEL, SR, save_run


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory) -> Path:
    return save_run(tmp_path_factory.mktemp("plain"))


@pytest.fixture(scope="module")
def vocoder_run(tmp_path_factory) -> Path:
    return save_run(tmp_path_factory.mktemp("voc"), mel=MEL)


def tone(path: Path, seconds: float = 0.1) -> Path:
    """``seconds`` of a 220 Hz tone at 8 kHz, 16-bit."""
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * SR)) / SR
    sf.write(path, (0.5 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), SR, subtype="PCM_16")
    return path


# ----------------------------------------------------------------------------- eval options


def test_eval_max_seconds_inf_means_no_limit(plain_run, tmp_path):
    """Before: ``wavedil eval RUN a.wav --max-seconds inf`` ended in a traceback, ``OverflowError:
    cannot convert float infinity to integer`` (``vocode --max-seconds inf`` is no limit)."""
    audio = tone(tmp_path / "a.wav")
    whole = evaluate_files(plain_run, [audio])
    unlimited = evaluate_files(plain_run, [audio], max_seconds=math.inf)
    assert unlimited.report.n_samples == whole.report.n_samples == SR // 10 - 1  # predicted samples
    assert unlimited.report.model_bits == pytest.approx(whole.report.model_bits)


def test_eval_vocode_seconds_inf_is_named(vocoder_run, tmp_path, capsys):
    """Before: ``eval VOCODER a.wav --vocode-seconds inf`` computed the likelihood and then stopped with
    ``OverflowError: cannot convert float infinity to integer`` (a traceback from the CLI)."""
    audio = tone(tmp_path / "a.wav")
    with pytest.raises(ValueError, match=r"vocode_seconds must be a finite number >= 0 .*0 skips it\), got inf"):
        evaluate_files(vocoder_run, [audio], vocode_seconds=math.inf)
    with pytest.raises(SystemExit) as exit_:
        cli_main(["eval", str(vocoder_run), str(audio), "--vocode-seconds", "inf"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err
    assert err.splitlines()[-1].startswith("error: vocode_seconds must be a finite number >= 0"), err


def test_eval_re_synthesis_reads_no_more_than_max_seconds(vocoder_run, tmp_path):
    """Before: ``eval VOCODER a.wav --max-seconds 0.05`` re-synthesised the first second of each file
    (the default --vocode-seconds 1), twenty times what --max-seconds ("read at most this much of each
    file") allowed, and reported "first 1 s of each"."""
    audio = tone(tmp_path / "a.wav")
    result = evaluate_files(vocoder_run, [audio], max_seconds=0.05, seed=0)
    assert result.vocode_seconds == 0.05 and result.report.n_samples == 400
    assert "first 0.05 s of each" in result.table()
    assert evaluate_files(vocoder_run, [audio], max_seconds=0.05, vocode_seconds=0.025, seed=0).vocode_seconds == 0.025


def test_eval_of_a_vctk_file_given_by_itself_takes_its_folders_speaker(tmp_path):
    """Before: ``eval SPEAKER_RUN VCTK/p225/p225_001_mic1.wav --layout vctk`` failed with "files of
    speakers ['None'] ... --layout vctk gives a file no speaker", though the layout names speakers by
    their folder (and the folder ``VCTK/p225`` given instead was evaluated)."""
    run = save_run(tmp_path / "spk", global_cond_classes=2, global_cond_channels=4, speakers=("p225", "p226"))
    one = tone(tmp_path / "vctk" / "p225" / "p225_001_mic1.wav")
    tone(tmp_path / "vctk" / "p226" / "p226_001_mic1.wav")
    alone = evaluate_files(run, [one], layout="vctk")
    in_folder = evaluate_files(run, [one.parent], layout="vctk")
    assert alone.report.model_bits == pytest.approx(in_folder.report.model_bits)
    both = evaluate_files(run, [one, tmp_path / "vctk" / "p226"], layout="vctk")
    assert both.report.n_files == 2
    with pytest.raises(ValueError, match=r"'None': --layout folder gives a file no speaker"):  # unchanged
        evaluate_files(run, [one])


def test_eval_names_its_own_mic_option_not_the_training_one(plain_run, tmp_path):
    """Before: ``eval RUN VCTK/p226 --layout vctk --mic mic2`` of a folder of mic1 recordings said
    "set data.mic=mic1 (or both)": the training override, which eval does not take."""
    tone(tmp_path / "vctk" / "p226" / "p226_001_mic1.wav")
    with pytest.raises(ValueError, match=r"found no \*_mic2 files under .*; set --mic mic1 \(or both\)$"):
        evaluate_files(plain_run, [tmp_path / "vctk"], layout="vctk", mic="mic2")
    with pytest.raises(ValueError, match=r"; set data.mic=mic1 \(or both\)$"):  # training keeps its override's name
        load_corpus(tmp_path / "vctk", layout="vctk", mic="mic2")


# ----------------------------------------------------------------------------- training settings


def test_a_seed_beyond_64_bits_is_named():
    """Before: ``wavedil train seed=1000000000000000000000000`` stopped with "error: Overflow when
    unpacking long long" (torch.manual_seed), naming no option."""
    groups = {"model": {}, "data": {}, "optim": {}, "trainer": {}}
    with pytest.raises(ValueError, match=r"^seed must be an integer in \[0, 2\*\*63 - 1\], got 10{24}$"):
        check_top_level({**groups, "seed": 10**24})
    assert check_top_level({**groups, "seed": 2**63 - 1}) == 2**63 - 1


def test_a_device_given_as_a_list_is_named():
    """Before: ``trainer.device=[cpu]`` raised ``TypeError: device() received an invalid combination of
    arguments - got (list)`` from torch."""
    with pytest.raises(TrainingError, match=r"trainer.device must be auto, cpu, cuda or cuda:N, got \['cpu'\]"):
        resolve_device(["cpu"])
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize(
    "options, says",
    [
        (dict(mel=5), r"mel must be a mapping of log-mel settings .* got 5"),
        (dict(mel="8000"), r"mel must be a mapping of log-mel settings .* got '8000'"),
        (dict(global_cond_classes=3, global_cond_channels=4, speakers=3), r"speakers must be a list of speaker names.*got 3"),
        (dict(global_cond_classes=3, global_cond_channels=4, speakers="abc"), r"speakers must be a list .*got 'abc'"),
    ],
)
def test_mel_and_speakers_of_the_wrong_type_are_named(options, says):
    """Before: ``model.mel=5`` (a Hydra override) and ``speakers=3`` raised ``TypeError: 'int' object is
    not iterable``; ``mel='8000'`` a ValueError about a "dictionary update sequence"; and
    ``speakers='abc'`` built a model of the speakers 'a', 'b' and 'c' without a word."""
    with pytest.raises(ValueError, match=says):
        WaveNet(tiny_config(**options))


def test_model_options_that_are_not_a_mapping_are_named():
    """Before: ``WaveNetConfig.from_dict(None)`` raised ``TypeError: 'NoneType' object is not iterable``
    and ``from_dict([1, 2])`` called 1 and 2 "unknown WaveNet model options"."""
    for options, name in ((None, "NoneType"), ([1, 2], "list")):
        with pytest.raises(ValueError, match=rf"model options must be a mapping of option names to values, got {name}"):
            WaveNetConfig.from_dict(options)


# ----------------------------------------------------------------------------- info


@pytest.mark.parametrize("name", ["model.pth", "model.PT", "last.ckpt", "weights"])
def test_info_of_a_checkpoint_named_otherwise_than_pt_describes_it(plain_run, tmp_path, capsys, name):
    """Before: ``wavedil info model.pth`` (a checkpoint that generate, vocode and eval take under any
    name) said "'model.pth' is not a valid model config YAML (it is not UTF-8 text: byte 0x80 ...)"."""
    path = tmp_path / name
    shutil.copy(next((plain_run / "checkpoints").glob("step_*.pt")), path)
    description = describe_model(path)
    assert description.source == "checkpoint at step 1" and description.sample_rate == SR
    cli_main(["info", str(path)])
    assert capsys.readouterr().out.startswith("checkpoint at step 1\nparameters")


def test_info_of_a_yaml_or_an_unknown_binary_keeps_its_messages(tmp_path, capsys):
    """A YAML file is still read as one and a file named .yaml that torch wrote is still called
    invalid YAML; a binary file such as .npy or a WAV is named as what it holds."""
    (tmp_path / "m.yaml").write_text("residual_channels: 4\n")
    assert describe_model(tmp_path / "m.yaml").model.config.residual_channels == 4
    torch.save({"model": {}}, tmp_path / "torch.yaml")
    with pytest.raises(ValueError, match=r"is not a valid model config YAML"):
        describe_model(tmp_path / "torch.yaml")
    np.save(tmp_path / "m.npy", np.zeros(3))  # since: named as what it is (it was "not UTF-8 text: byte 0x93")
    with pytest.raises(ValueError, match=r"'.*m.npy' holds a NumPy array \(.npy\), not a model; give a checkpoint"):
        describe_model(tmp_path / "m.npy")
    (tmp_path / "m.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt ")
    with pytest.raises(ValueError, match=r"m.wav' holds an audio file, not a model; give"):
        describe_model(tmp_path / "m.wav")


# ----------------------------------------------------------------------------- the layers' rings


@pytest.mark.parametrize("T", [1, 3])
def test_a_layer_ring_of_another_dtype_or_device_is_named(T):
    """Before: ``CausalConv1d.step`` / ``ResidualBlock.step`` took an int64 ring silently (a single step
    wrote the input into it truncated to integers: the next outputs were wrong) and a float16 one at
    T = 1; a float64 ring raised ``RuntimeError: mat1 and mat2 must have the same dtype`` and one on
    another device ``Tensor on device cpu is not on the expected device meta!`` (meta stands in for a GPU)."""
    torch.manual_seed(0)
    conv, block = CausalConv1d(4, 6, 2, 2), ResidualBlock(8, 16, 8)
    with pytest.raises(ValueError, match=r"buf must be a float ring \(torch.float32, the weights' dtype\) from "
                                         r"init_buffer\(1\), got dtype torch.int64"):  # fmt: skip
        conv.step(torch.randn(1, 4, T), torch.zeros(1, 4, 2, dtype=torch.long), 0)
    for dtype in (torch.float16, torch.float64):
        with pytest.raises(ValueError, match=rf"buf has dtype {dtype} but the weights are torch.float32"):
            conv.step(torch.randn(1, 4, T), torch.zeros(1, 4, 2, dtype=dtype), 0)
        with pytest.raises(ValueError, match=rf"buf has dtype {dtype} but the weights are torch.float32"):
            block.step(torch.randn(1, 8, T), torch.zeros(1, 8, 1, dtype=dtype), 0)
    with pytest.raises(ValueError, match=r"buf is on meta but the weights are on cpu: move it with buf.to\('cpu'\)"):
        conv.step(torch.randn(1, 4, T), torch.zeros(1, 4, 2, device="meta"), 0)
    y, buf = conv.step(torch.randn(1, 4, T), conv.init_buffer(1), 0)  # the ring init_buffer makes still steps
    assert y.shape == (1, 6, T) and buf.dtype == torch.float32


# ----------------------------------------------------------------------------- exports


def test_a_refused_export_of_a_bundled_model_leaves_the_earlier_one_whole(plain_run, vocoder_run, tmp_path):
    """Before: re-exporting a bundled model under its name with ``extra`` fields that clash with the
    card (refused) or that JSON cannot hold (a TypeError) first replaced its ``model.pt``: the card
    kept the earlier sha256, and the model no longer loaded ("has sha256 ..., but its card says ...")."""
    out = tmp_path / "pretrained"
    first = export_pretrained(plain_run, "tiny", out_dir=out)
    before = {p.name: p.read_bytes() for p in (out / "tiny").iterdir()}
    with pytest.raises(ValueError, match=r"extra card fields \['name'\] would replace computed ones"):
        export_pretrained(vocoder_run, "tiny", out_dir=out, extra={"name": "other"})
    with pytest.raises(ValueError, match=r"the model card cannot be written as JSON \(Object of type object"):
        export_pretrained(vocoder_run, "tiny", out_dir=out, extra={"note": object()})
    assert {p.name: p.read_bytes() for p in (out / "tiny").iterdir()} == before
    assert file_sha256(out / "tiny" / "model.pt") == first.sha256 == PretrainedInfo.from_folder(out / "tiny").sha256
    again = export_pretrained(vocoder_run, "tiny", out_dir=out, extra={"note": "a vocoder"})  # a good one still writes
    card = json.loads((out / "tiny" / "card.json").read_text())
    assert card["sha256"] == again.sha256 == file_sha256(out / "tiny" / "model.pt") != first.sha256
    assert card["bytes"] == (out / "tiny" / "model.pt").stat().st_size and card["note"] == "a vocoder"


def test_exporting_something_that_is_not_a_stack_is_named():
    """Before: ``to_torchscript("stack.pt")`` (or a state dict) raised ``AttributeError: 'str' object
    has no attribute 'eval'`` from the copy made before the stack was checked."""
    for thing in ("stack.pt", {"layers.0.conv.weight": torch.zeros(1)}):
        with pytest.raises(ValueError, match=r"stack must be a wavedil DilatedStack, got (str|dict)"):
            to_torchscript(thing)


# ----------------------------------------------------------------------------- noticed by the hunt, fixed after


def test_resume_of_the_wrong_kind_and_a_huge_thread_count_are_named():
    """Before: ``trainer.resume=[a,b]`` was looked for as the checkpoint "['a', 'b']" (not found), and
    ``trainer.threads=100000000`` made OpenMP abort the whole process ("Out of memory allocating
    21600001344 bytes")."""
    from wavedil.train_config import MAX_THREADS, TrainerConfig

    with pytest.raises(ValueError, match=r"trainer.resume must be true, false or the path .* got \['a', 'b'\]"):
        TrainerConfig.from_dict({"resume": ["a", "b"]})
    with pytest.raises(ValueError, match=rf"trainer.threads must be at most {MAX_THREADS} .* got 100000000"):
        TrainerConfig.from_dict({"threads": 100_000_000})
    assert TrainerConfig.from_dict({"threads": MAX_THREADS, "resume": "runs/x"}).resume == "runs/x"


def test_a_state_on_a_device_that_is_not_one_is_named():
    """Before: ``DilatedStack.init_state(1, device="nope")`` raised torch's RuntimeError about device strings."""
    block = CausalConv1d(4, 4, kernel_size=2, dilation=2)
    with pytest.raises(ValueError, match=r"device must be a torch device such as 'cpu' .* got 'nope'"):
        block.init_buffer(1, device="nope")
    model = WaveNet(tiny_config())
    with pytest.raises(ValueError, match="got 'nope'"):
        model.stack.init_state(1, device="nope")
    assert block.init_buffer(2, device="cpu").shape == (2, 4, 2)
