"""Faults found by running the commands the documentation gives (README.md, recipes/*/README.md,
data/pretrained/README.md, bench/README.md) and probing ``wavedil eval`` / ``info`` / ``models``.

Each test failed before its fix. Tiny random-weight checkpoints and 0.03 s files: the whole file
takes a few seconds.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from wavedil import WaveNet, WaveNetConfig
from wavedil.cli import main as cli_main
from wavedil.config import CONF_DIR
from wavedil.data import load_corpus, split_items
from wavedil.describe import describe_model
from wavedil.evaluate import _vocode_segments, evaluate_files, unigram_bits_per_sample
from wavedil.pretrained import pretrained_info

from test_commands import one_thread  # noqa: F401 (an autouse fixture: one torch thread)

REPO = Path(__file__).resolve().parents[1]
SR = 8000
TINY = dict(residual_channels=8, gate_channels=16, skip_channels=12, head_channels=10, layers_per_stack=3, stacks=2)


def _run(folder: Path, data: dict | None = None, **config) -> Path:
    """A run folder with one checkpoint of a random-weight tiny model whose run read ``data``."""
    torch.manual_seed(0)
    model = WaveNet(WaveNetConfig(**{**TINY, **config}))
    path = folder / "checkpoints" / "step_00000001.pt"
    path.parent.mkdir(parents=True)
    ckpt = {"model": model.state_dict(), "model_config": model.config.to_dict(), "ema": None, "sample_rate": SR, "step": 1}
    if data is not None:
        ckpt["config"] = {"data": data}
    torch.save(ckpt, path)
    return folder


def _wav(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    x = 0.3 * np.random.default_rng(seed).standard_normal(240)
    sf.write(path, x.astype(np.float32), SR, subtype="PCM_16")
    return path


def _cli(capsys, *argv) -> tuple[int, str, str]:
    try:
        cli_main(list(argv))
        code = 0
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


# ----------------------------------------------------------------------------- wavedil info


@pytest.mark.parametrize("preset", ["tiny", "small", "base"])
def test_info_reads_a_preset_yaml_file_as_the_preset(preset):
    """Before: ``wavedil info conf/model/small.yaml`` (the example in info's own messages) failed
    with "unknown WaveNet model options ['defaults']": the presets overlay ref30 through a
    defaults list, which info read as a model option."""
    from_file = describe_model(CONF_DIR / "model" / f"{preset}.yaml")
    by_name = describe_model(preset)
    assert from_file.model.config == by_name.model.config
    assert from_file.text().splitlines()[1:] == by_name.text().splitlines()[1:]


def test_info_of_a_yaml_overlaying_a_preset_keeps_its_own_options(tmp_path):
    (tmp_path / "mine.yaml").write_text("defaults:\n  - small\noutput: mol\n")
    cfg = describe_model(tmp_path / "mine.yaml").model.config
    assert cfg.output == "mol" and cfg.residual_channels == 32 and cfg.quantization_channels == 65536


@pytest.mark.parametrize(
    "name, says",
    [
        ("train.yaml", r"its defaults list holds \{'model': 'small'\}, a config group of a training config"),
        ("experiment/speech8k.yaml", r"its defaults list holds \{'override /model': 'small'\}"),
    ],
)
def test_info_of_a_training_config_is_one_line_naming_it(name, says, capsys):
    """Before: conf/train.yaml gave OmegaConf's error over three lines (``full_key: ...``,
    ``object_type=dict``) about an interpolation, not that it is a training config."""
    code, out, err = _cli(capsys, "info", str(CONF_DIR / name))
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert __import__("re").search(says, err)


def test_info_of_a_yaml_with_a_broken_interpolation_is_one_line(tmp_path, capsys):
    (tmp_path / "m.yaml").write_text("residual_channels: ${nowhere}\n")
    code, _, err = _cli(capsys, "info", str(tmp_path / "m.yaml"))
    assert code == 2 and err == f"error: model config YAML '{tmp_path / 'm.yaml'}': Interpolation key 'nowhere' not found\n"


def test_info_of_a_yaml_whose_defaults_name_nothing_or_itself(tmp_path, capsys):
    (tmp_path / "a.yaml").write_text("defaults:\n  - nosuch\n")
    (tmp_path / "b.yaml").write_text("defaults:\n  - b\n")
    code, _, err = _cli(capsys, "info", str(tmp_path / "a.yaml"))
    assert code == 2 and "names 'nosuch', which is neither a YAML file beside it nor a model config (base" in err
    code, _, err = _cli(capsys, "info", str(tmp_path / "b.yaml"))
    assert code == 2 and "names 'b', which leads back to" in err


@pytest.mark.parametrize("name", ["speech8k", "speech8k-vocoder"])
def test_info_of_a_bundled_model_gives_its_total_steps(name):
    """Before: ``wavedil info --model speech8k`` said "trained 20665 steps": the last stage's
    count, where the card (and the README) give 44,360 in all."""
    card = pretrained_info(name).card
    assert card["total_steps"] > card["steps"]  # continued from earlier weights
    line = describe_model(f"pretrained:{name}").source.splitlines()[1]
    assert line.startswith(f"trained           {card['total_steps']} steps in all ({card['steps']} in its last stage) on ")


# ----------------------------------------------------------------------------- wavedil eval --split


@pytest.fixture(scope="module")
def vctk_run(tmp_path_factory):
    """A VCTK-layout corpus (2 speakers x 4 utterances x 2 microphones) and a run trained on mic1."""
    root = tmp_path_factory.mktemp("vctk")
    corpus = root / "VCTK"
    k = 0
    for spk in ("p225", "p226"):
        for u in range(1, 5):
            for mic in (1, 2):
                _wav(corpus / "wav48_silence_trimmed" / spk / f"{spk}_{u:03d}_mic{mic}.wav", k)
                k += 1
    _wav(corpus / "wav48_silence_trimmed" / "p226" / "p226_009_mic2.wav", k)  # no mic1 copy: not in the run's corpus
    data = {"root": str(corpus), "layout": "vctk", "mic": "mic1", "valid_fraction": 0.3}
    run = _run(root / "run", data)
    train, valid = split_items(load_corpus(corpus, layout="vctk", mic="mic1"), valid_fraction=0.3)
    return run, corpus, {it.path.stem[:8] for it in train}, {it.path.stem[:8] for it in valid}


@pytest.mark.parametrize("mic", ["mic2", "both"])
@pytest.mark.parametrize("split", ["valid", "train"])
def test_eval_split_of_the_other_microphone_keeps_each_utterance_on_its_side(vctk_run, mic, split):
    """Before: ``eval --layout vctk --mic mic2 --split valid`` of a run trained on mic1 failed
    with "nothing to evaluate: no readable file" (the mic2 files are not in the run's mic1
    corpus), and ``--mic both`` silently left out every mic2 copy."""
    run, corpus, train, valid = vctk_run
    res = evaluate_files(run, [corpus], layout="vctk", mic=mic, split=split)
    files = sorted(Path(f["file"]).stem for f in res.to_dict()["per_file"])
    utterances = valid if split == "valid" else train
    mics = ("mic1", "mic2") if mic == "both" else (mic,)
    assert files == sorted(f"{u}_{m}" for u in utterances for m in mics)
    assert len(res.notes) == 1 and res.notes[0].startswith(f"--split {split}: 1 given file(s) (e.g. '")
    assert "p226_009_mic2.wav') are not in the run's corpus as it read it (layout vctk, mic mic1)" in res.notes[0]


def test_eval_split_with_no_given_file_on_that_side_says_so(vctk_run, tmp_path, capsys):
    """Before: a training file with --split valid (or one file outside the run's corpus, which
    is never held out) ended in "no readable file with at least 2 samples (unreadable files are
    skipped ...)", for a readable file."""
    run, corpus, train, _ = vctk_run
    one = next(corpus.rglob(f"{sorted(train)[0]}_mic1.wav"))
    code, out, err = _cli(capsys, "eval", str(run), str(one), "--layout", "vctk", "--split", "valid")
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "none of the 1 given file(s) is on the valid side of the run's split of its corpus" in err
    assert "held out, valid_fraction=0.3); give the corpus folder itself, or --split train or all" in err
    assert "unreadable" not in err
    outside = _wav(tmp_path / "elsewhere" / "x.wav", 99)
    code, _, err = _cli(capsys, "eval", str(run), str(outside), "--split", "valid")
    assert code == 2 and "split among themselves, the 1 given file(s) leave none on the valid side" in err


# ----------------------------------------------------------------------------- eval figures and messages


def test_the_unigram_entropy_of_one_code_is_plus_zero():
    """Before: a file of one code (digital silence) printed "unigram entropy -0.000" and
    ``"unigram_bits_per_sample": -0.0`` in ``--json``."""
    h = unigram_bits_per_sample(torch.tensor([0, 7, 0]))
    assert h == 0 and math.copysign(1.0, h) == 1.0 and json.dumps(h) == "0.0"


def test_vocoder_files_shorter_than_a_frame_name_the_option_that_skips_the_distance():
    """Before: the likelihood was computed and then the whole eval failed with "nothing to
    vocode", without a word on --vocode-seconds 0."""
    torch.manual_seed(0)
    model = WaveNet(WaveNetConfig(**TINY, mel={"sample_rate": SR, "hop_length": 40, "n_fft": 128, "n_mels": 8}))
    with pytest.raises(ValueError, match=r"shorter than one mel frame \(40 samples\).*--vocode-seconds 0 skips it"):
        _vocode_segments(model, [("a.wav", torch.zeros(30))], 1.0)


# ----------------------------------------------------------------------------- recipes/char_lm


def _recipe_module(monkeypatch, name: str, path: Path):
    """The recipe script ``path`` imported as module ``name`` (removed from sys.modules after the test)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module


def _char_lm(monkeypatch):
    return _recipe_module(monkeypatch, "char_lm_docs", REPO / "recipes" / "char_lm" / "char_lm.py")


@pytest.mark.parametrize(
    "override, says",
    [
        ("model.nosuch=1", "error: model.nosuch: no such option; model options: activation, dilations, dropout, "),
        ("experiment=nosuch", "error: In 'char_lm': Could not find 'experiment/nosuch'; Available options in 'experiment': fortunes\n"),
        ("model.dropout=[", "error: cannot parse the override 'model.dropout=[': no viable alternative at input '['"),
    ],
)
def test_char_lm_config_errors_are_one_line_with_status_2(override, says, monkeypatch, capsys, tmp_path):
    """Before: Hydra printed these over several lines (``full_key:``, ``object_type=``, the config
    search path) and exited with status 1, where recipes/char_lm/README.md says "Errors are one
    line naming the option"."""
    module = _char_lm(monkeypatch)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.setattr(sys, "argv", ["char_lm.py"])
    with pytest.raises(SystemExit) as exc:  # -cp: in process, Hydra would look for a module "conf"
        module.main(["train", "-cp", str(REPO / "recipes" / "char_lm" / "conf"), override])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1 and err.startswith(says)
    assert "HYDRA_FULL_ERROR" not in __import__("os").environ and list(tmp_path.iterdir()) == []


def test_char_lm_sweep_command_of_its_readme_parses(monkeypatch):
    """Before: ``char_lm.py train -m model.dropout=0.2,0.5`` (recipes/char_lm/README.md) failed
    with "unrecognized arguments": ``command=train`` was put before Hydra's -m flag."""
    from hydra._internal.utils import get_args_parser

    module = _char_lm(monkeypatch)
    seen: list[list[str]] = []
    monkeypatch.setattr(module, "_hydra_entry", lambda: seen.append(list(sys.argv)))
    monkeypatch.setattr(sys, "argv", ["char_lm.py"])
    module.main(["train", "-m", "model.dropout=0.2,0.5"])
    args = get_args_parser().parse_args(seen[0][1:])
    assert args.multirun and args.overrides == ["model.dropout=0.2,0.5", "command=train"]
    module.main(["sample", "sample.checkpoint=x"])
    args = get_args_parser().parse_args(seen[1][1:])
    assert not args.multirun and args.overrides[0] == "command=sample" and args.overrides[-1] == "sample.checkpoint=x"


# ----------------------------------------------------------------------------- recipes/pretrained/export.py


def _export_module(monkeypatch):
    return _recipe_module(monkeypatch, "export_docs", REPO / "recipes" / "pretrained" / "export.py")


def test_export_names_an_eval_or_corpus_json_it_cannot_use(tmp_path, monkeypatch):
    """Before: a missing --eval-json or --corpus-json ended in a FileNotFoundError traceback, and
    a damaged one in "error: Expecting property name ..." without the file's name."""
    export = _export_module(monkeypatch)
    missing = tmp_path / "missing.txt"
    with pytest.raises(ValueError, match=r"^--eval-json: cannot read '.*missing.txt' \(No such file or directory\)$"):
        export.read_eval_json(missing)
    with pytest.raises(ValueError, match=r"^--corpus-json: cannot read '.*missing.txt' \(No such file or directory\)$"):
        export.read_corpus_json(missing)
    bad = tmp_path / "eval.txt"
    bad.write_text("1 files\n{bad\n")
    with pytest.raises(ValueError, match=r"^--eval-json: the last JSON line of '.*eval.txt' is not valid JSON \(Expecting"):
        export.read_eval_json(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"^--corpus-json: '.*eval.txt' must hold a JSON object"):
        export.read_corpus_json(bad)
    good = tmp_path / "good.txt"
    good.write_text('table\n{"model_bits_per_sample": 3.5, "bz2_bits_per_sample": 5.0, "unigram_bits_per_sample": 7.0, '
                    '"samples": 10, "files": 1}\n')  # fmt: skip
    assert export.read_eval_json(good)["bits_per_sample"] == 3.5
