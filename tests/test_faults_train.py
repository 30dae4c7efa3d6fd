"""Bad training input is refused (or warned about) naming the option, the value and what to do.

Resuming at another sample rate; unknown keys in ``data.*`` and at the top level; values of the
wrong type (``seed=1.5`` is refused, not truncated); ``~`` in ``data.root``; a file that is not a
model YAML for ``info``; the ``train`` summary as strict JSON; a corpus with no usable file; and
a corpus whose every file is shorter than a segment. In-process where the library raises, one
subprocess where only the CLI shows the behaviour (``error: ...``, exit status 2, no traceback).
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from wavedil import WaveNetConfig
from wavedil.checkpoint import CheckpointError, list_checkpoints
from wavedil.cli import main
from wavedil.conditioning import MelSpec
from wavedil.config import CONF_DIR, compose, to_plain
from wavedil.data import CorpusError, load_corpus
from wavedil.train import TrainingError, build_data, setup, train
from wavedil.train_config import OptimConfig

REPO = Path(__file__).resolve().parents[1]
# A tiny model for two steps on the bundled 8 kHz speech, one checkpoint at the end, no validation before it.
BASE = ["model=tiny", "trainer=debug", "trainer.sample_every=0", "data.segment_length=200", "data.batch_size=2",
        "data.valid_segments=2", "trainer.valid_every=1000", "trainer.ema_decay=0", "trainer.device=cpu",
        "trainer.max_steps=2", "trainer.ckpt_every=2"]  # fmt: skip
TINY_MODEL = WaveNetConfig(residual_channels=8, gate_channels=16, skip_channels=12, head_channels=10,
                           layers_per_stack=3, stacks=2, quantization_channels=32)  # fmt: skip


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "wavedil", *args], cwd=cwd, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip


def write_corpus(folder: Path, lengths: list[int], rate: int = 8000) -> Path:
    """Tones of the given lengths (samples) as ``folder/f<i>.wav``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i, n in enumerate(lengths):
        wav = 0.4 * np.sin(2 * np.pi * 220 * np.arange(n) / rate) + 0.01 * rng.standard_normal(n)
        sf.write(str(folder / f"f{i}.wav"), wav.astype(np.float32), rate)
    return folder


def data_cfg(root: Path | str, **over) -> dict:
    return {"root": str(root), "sample_rate": 8000, "segment_length": 200, "batch_size": 2, "valid_segments": 2,
            "valid_fraction": 0.2, **over}  # fmt: skip


# ----------------------------------------------------------------------------- 1. resume at another rate


def test_resume_refuses_another_sample_rate_naming_both_and_the_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    train(compose(BASE), run_dir)  # the bundled speech: 8 kHz
    before = list_checkpoints(run_dir / "checkpoints")
    with pytest.raises(CheckpointError) as err:
        setup(compose(BASE + ["trainer.resume=true", "data.sample_rate=16000"]), run_dir)
    msg = str(err.value)
    assert f"checkpoint '{before[0]}' was trained at 8000 Hz but data.sample_rate is 16000" in msg
    assert "drop the data.sample_rate override (or set data.sample_rate=8000)" in msg
    assert "new run folder (trainer.resume=false)" in msg
    assert list_checkpoints(run_dir / "checkpoints") == before  # nothing written
    with pytest.raises(CheckpointError, match="trained at 8000 Hz but data.sample_rate is 16000"):
        setup(compose(BASE + [f"trainer.resume={before[0]}", "data.sample_rate=16000"]), tmp_path / "other")
    assert setup(compose(BASE + ["trainer.resume=true"]), run_dir).step == 2  # the same rate resumes


def test_a_warmup_longer_than_the_run_is_warned_about(tmp_path, capsys):
    """Before: optim.warmup_steps (100 by default) above trainer.max_steps trained the whole run on a
    rising learning rate that never reached optim.lr, without a word."""
    train(compose(BASE + ["optim.warmup_steps=8", "optim.lr=0.004"]), tmp_path / "a")
    out = capsys.readouterr().out
    assert ("warning: optim.warmup_steps=8 exceeds trainer.max_steps=2: the learning rate only climbs to 25% of "
            "optim.lr=0.004 and the schedule never decays it; set optim.warmup_steps below trainer.max_steps "
            "(e.g. optim.warmup_steps=0)") in out  # fmt: skip
    train(compose(BASE + ["optim.warmup_steps=2"]), tmp_path / "b")
    assert "warmup_steps" not in capsys.readouterr().out


def test_a_new_run_in_a_folder_holding_checkpoints_is_refused_and_leaves_them(tmp_path):
    """Before: a second run without trainer.resume in the same hydra.run.dir overwrote the
    checkpoints of its own steps and pruned the rest, with exit status 0."""
    run_dir = tmp_path / "run"
    train(compose(BASE), run_dir)
    before = {p: p.read_bytes() for p in list_checkpoints(run_dir / "checkpoints")}
    with pytest.raises(TrainingError) as err:
        setup(compose(BASE + ["seed=5"]), run_dir)
    msg = str(err.value)
    assert f"the run folder '{run_dir}' already holds 1 checkpoint(s) of an earlier run (newest step_00000002.pt)" in msg
    assert "trainer.resume=true" in msg and "hydra.run.dir" in msg
    assert {p: p.read_bytes() for p in list_checkpoints(run_dir / "checkpoints")} == before
    p = run_cli("train", *BASE, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert p.returncode == 2 and "already holds 1 checkpoint(s)" in p.stderr and "Traceback" not in p.stderr
    assert {p: p.read_bytes() for p in list_checkpoints(run_dir / "checkpoints")} == before
    # an empty checkpoints folder (a run that failed before its first save) is no obstacle
    (tmp_path / "failed" / "checkpoints").mkdir(parents=True)
    assert setup(compose(BASE), tmp_path / "failed").step == 0


def test_resume_true_looks_beside_the_run_only_in_the_default_timestamped_layout(tmp_path, caplog):
    """Before: resume=true took the newest checkpoint of *any* folder beside the run folder: a
    sweep's job 1 resumed job 0, and runs/mine resumed runs/colleagues_run."""
    from wavedil.train import find_resume_checkpoint

    train(compose(BASE), tmp_path / "runs" / "colleagues_run")
    assert find_resume_checkpoint(True, tmp_path / "runs" / "mine") is None
    assert "no checkpoint found under " + str(tmp_path / "runs" / "mine") in caplog.text
    train(compose(BASE), tmp_path / "multirun" / "0")
    assert find_resume_checkpoint(True, tmp_path / "multirun" / "1") is None
    # outputs/<name>/<date>_<time>: an earlier run of the same name is resumed, the newest first
    base = tmp_path / "outputs" / "speech8k"
    train(compose(BASE), base / "2026-12-01_10-00-00")
    train(compose(BASE + ["trainer.max_steps=4", "trainer.ckpt_every=4"]), base / "2026-12-02_10-00-00")
    (base / "notes").mkdir()  # not a run of this layout: never looked into
    path, ckpt = find_resume_checkpoint(True, base / "2026-12-03_09-00-00")
    assert path.parent.parent.name == "2026-12-02_10-00-00" and ckpt["step"] == 4


def test_checkpoint_sample_rate_falls_back_to_the_config_of_older_checkpoints():
    from wavedil.train import _checkpoint_sample_rate  # new with the check

    assert _checkpoint_sample_rate({"sample_rate": 16000, "config": {"data": {"sample_rate": 8000}}}) == 16000
    assert _checkpoint_sample_rate({"config": {"data": {"sample_rate": 8000}}}) == 8000
    assert _checkpoint_sample_rate({"model": {}}) is None


# ----------------------------------------------------------------------------- 2. unknown keys


@pytest.mark.parametrize(
    "override, match",
    [
        ("+data.sampel_rate=16000",
         r"unknown data option\(s\) \['sampel_rate'\]; valid ones are \[.*'sample_rate'.*\] \(did you mean 'sample_rate'\?\)"),
        ("+foo=1", r"unknown top-level option\(s\) \['foo'\]; valid ones are \[.*'seed'.*\].*e\.g\. data\.sample_rate"),
        ("+data.mic=mic2", r"unknown data option\(s\) \['mic'\].*read with data\.layout=vctk only; data\.layout is 'folder'"),
        ("data=folder", r"data\.root is not set: pass the corpus folder, e\.g\. data\.root=\$HOME/my_wavs"),
    ],
)  # fmt: skip
def test_unknown_or_missing_data_and_top_level_keys_are_named(tmp_path, override, match):
    with pytest.raises(TrainingError, match=match):
        setup(compose(BASE + [override]), tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_every_shipped_data_and_experiment_config_passes_the_checks():
    from wavedil.train_config import DataConfig, check_top_level  # new with the checks

    for yaml in sorted((CONF_DIR / "data").glob("*.yaml")):
        cfg = to_plain(compose([f"data={yaml.stem}", "data.root=/somewhere"]))
        assert DataConfig.from_dict(cfg["data"]).sample_rate == cfg["data"]["sample_rate"], yaml
        assert check_top_level(cfg) == 0
    for yaml in sorted((CONF_DIR / "experiment").glob("*.yaml")):
        cfg = to_plain(compose([f"experiment={yaml.stem}", "data.root=/somewhere"]))
        DataConfig.from_dict(cfg["data"])
        check_top_level(cfg)
    assert DataConfig.from_dict(data_cfg("/a", layout="vctk", mic="both")).mic == "both"
    check_top_level({**to_plain(compose([])), "hydra": {}})  # a config composed with Hydra's own node


def test_missing_data_options_and_an_experiment_without_its_package_line():
    from wavedil.train_config import DataConfig, check_top_level

    with pytest.raises(ValueError, match=r"data option\(s\) \['segment_length', 'batch_size'\] not set"):
        DataConfig.from_dict({"root": "/a", "sample_rate": 8000})
    plain = to_plain(compose([]))
    with pytest.raises(ValueError, match=r"\['experiment'\].*must start with the line '# @package _global_'"):
        check_top_level({**plain, "experiment": {"name": "mine", "data": {}}})


# ----------------------------------------------------------------------------- 3. wrong types


@pytest.mark.parametrize(
    "override, message",
    [
        ("seed=abc", "seed must be an integer >= 0, got 'abc'"),
        ("seed=1.5", "seed must be an integer >= 0, got 1.5"),  # was silently truncated to 1
        ("optim.lr=abc", "optim.lr must be a number, got 'abc'"),
        ("optim.betas=0.9", "optim.betas must be two numbers in [0, 1), e.g. [0.9,0.99], got 0.9"),
        ("trainer.ema_decay=abc", "trainer.ema_decay must be a number, got 'abc'"),
        ("trainer.compile=maybe", "trainer.compile must be true or false, got 'maybe'"),
        ("data.segment_length=abc", "data.segment_length must be an integer >= 2, got 'abc'"),
        ("data.batch_size=1.5", "data.batch_size must be an integer >= 1, got 1.5"),
        ("data.valid_segments=0", "data.valid_segments must be an integer >= 1, got 0"),
        ("data.valid_fraction=lots", "data.valid_fraction must be a number, got 'lots'"),
        ("data.trim_silence_db=10", "data.trim_silence_db must be negative"),
        ("data.layout=librispeech", "data.layout must be one of folder|ljspeech|vctk, got 'librispeech'"),
    ],
)
def test_values_of_the_wrong_type_name_the_option_and_the_value(tmp_path, override, message):
    with pytest.raises(TrainingError) as err:
        setup(compose(BASE + [override]), tmp_path / "run")
    assert message in str(err.value)


def test_a_number_given_as_a_string_is_read_as_the_number():
    assert OptimConfig.from_dict({"lr": "1e-3"}).lr == 1e-3


@pytest.mark.parametrize("override, message", [("seed=abc", "error: seed must be an integer >= 0, got 'abc'"),
                                               ("+data.sampel_rate=16000", "error: unknown data option(s) ['sampel_rate']")])
def test_the_cli_reports_bad_options_in_one_paragraph(tmp_path, override, message):
    p = run_cli("train", *BASE, override, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert p.returncode == 2, p.stdout + p.stderr
    assert message in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


# ----------------------------------------------------------------------------- 4. ~ in data.root


def test_data_root_expands_the_home_folder(tmp_path, monkeypatch):
    home = tmp_path / "home"
    write_corpus(home / "my_wavs", [1200] * 5)
    monkeypatch.setenv("HOME", str(home))
    assert [i.path.parent for i in load_corpus("~/my_wavs")] == [home / "my_wavs"] * 5
    data = build_data(data_cfg("~/my_wavs"), TINY_MODEL, seed=0, max_steps=2)  # the quoted override's value
    assert data.n_train_files + data.n_valid_files == 5


def test_readme_train_commands_use_home_not_a_tilde():
    text = (REPO / "README.md").read_text()
    assert not re.search(r"data\.root=~", text)
    assert "data.root=$HOME/my_wavs" in text


# ----------------------------------------------------------------------------- 5. info on a file that is not a model YAML


@pytest.mark.parametrize(
    "name, content, problem",
    [
        ("broken.yaml", b"residual_channels: [16, 32\n", r"expected ',' or '\]', but got '<stream end>' at line 2"),
        ("list.yaml", b"- 1\n- 2\n", r"it holds a list, not model options"),
    ],
)
def test_info_names_a_file_that_is_not_a_model_yaml(tmp_path, capsys, name, content, problem):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(SystemExit) as exit_:
        main(["info", str(path)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err
    assert re.search(rf"^error: '{re.escape(str(path))}' is not a valid model config YAML \({problem}", err, re.M), err
    assert "conf/model/small.yaml" in err


def test_info_names_the_yaml_whose_options_are_wrong(tmp_path, capsys):
    path = tmp_path / "typo.yaml"
    path.write_text("residual_chanels: 16\n")
    with pytest.raises(SystemExit):
        main(["info", str(path)])
    err = capsys.readouterr().err
    assert f"error: model config YAML '{path}': " in err and "residual_chanels" in err, err  # the file, then the option
    path.write_text("residual_channels: 16\nstacks: 1\n")
    main(["info", str(path)])  # a good one is described
    assert "receptive field" in capsys.readouterr().out.lower()


# ----------------------------------------------------------------------------- 6. strict JSON summary


def test_summary_json_prints_null_for_a_figure_not_measured():
    from wavedil.cli import _summary_json  # new with the fix

    line = _summary_json({"step": 2, "valid_bits": float("nan"), "train_bits": 3.25, "checkpoint": None})
    assert json.loads(line) == {"step": 2, "valid_bits": None, "train_bits": 3.25, "checkpoint": None}


def test_train_summary_of_a_run_with_nothing_left_to_do_is_strict_json(tmp_path):
    run_dir = tmp_path / "run"
    train(compose(BASE), run_dir)
    p = run_cli("train", *BASE, "trainer.resume=true", f"hydra.run.dir={run_dir}", cwd=tmp_path)  # at max_steps
    assert p.returncode == 0, p.stdout + p.stderr

    def no_constants(name: str):
        raise AssertionError(f"{name} is not JSON")

    summary = json.loads(p.stdout.strip().splitlines()[-1], parse_constant=no_constants)
    assert summary["step"] == 2 and summary["valid_bits"] is None


# ----------------------------------------------------------------------------- 7. unusable and too-short corpora


def test_no_usable_file_says_what_to_check_without_internal_names(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.wav").write_text("not audio")
    with pytest.raises(CorpusError) as err:
        load_corpus(bad)
    assert "min_frames" not in str(err.value) and "valid, non-empty audio" in str(err.value)
    write_corpus(tmp_path / "short", [50])
    with pytest.raises(CorpusError, match="at least 100 frames long"):
        load_corpus(tmp_path / "short", min_frames=100)


def test_a_corpus_shorter_than_a_segment_is_warned_about(tmp_path, caplog):
    root = write_corpus(tmp_path / "wavs", [60, 80, 100, 90, 70])
    caplog.set_level(logging.WARNING, logger="wavedil.train")
    build_data(data_cfg(root, segment_length=2000), TINY_MODEL, seed=0, max_steps=2)
    warned = [r.getMessage() for r in caplog.records if r.name == "wavedil.train"]
    assert len(warned) == 2, warned  # the training files, and the held-out ones
    assert "every held-out file is shorter than data.segment_length=2000" in warned[1]
    assert "of each validation segment is silence padding" in warned[1]
    assert "every training file is shorter than data.segment_length=2000 samples (the longest holds" in warned[0]
    padding = int(re.search(r"about (\d+)% of each training segment is silence padding", warned[0]).group(1))
    assert 94 <= padding <= 97  # ~ 85 of 2001 samples are audio
    assert "Lower data.segment_length (e.g. data.segment_length=" in warned[0]
    caplog.clear()
    build_data(data_cfg(root, segment_length=50), TINY_MODEL, seed=0, max_steps=2)
    assert not [r for r in caplog.records if r.name == "wavedil.train"]


def test_files_shorter_than_the_receptive_field_get_a_suggestion_that_fits(tmp_path, caplog):
    """The suggested segment (99 samples) was shorter than the model's receptive field (511), which
    training then warned about in turn: the advice is a smaller receptive field."""
    from dataclasses import replace

    root = write_corpus(tmp_path / "wavs", [60, 80, 100, 90, 70])
    caplog.set_level(logging.WARNING, logger="wavedil.train")
    build_data(data_cfg(root, segment_length=2000), replace(TINY_MODEL, layers_per_stack=8), seed=0, max_steps=2)
    warned = [r.getMessage() for r in caplog.records if r.name == "wavedil.train"]
    assert "shorter than the model's receptive field (511 samples) too: a model with fewer layers" in warned[0]
    assert "with data.segment_length=99; or train on longer files" in warned[0]
    assert "Lower data.segment_length" not in warned[0]


def test_valid_fraction_zero_says_that_one_file_is_held_out_all_the_same(tmp_path, caplog):
    """data.valid_fraction=0 held one file out without a word."""
    root = write_corpus(tmp_path / "wavs", [3000] * 4)
    caplog.set_level(logging.WARNING, logger="wavedil.train")
    data = build_data(data_cfg(root, valid_fraction=0.0), TINY_MODEL, seed=0, max_steps=2)
    warned = [r.getMessage() for r in caplog.records if r.name == "wavedil.train"]
    assert len(warned) == 1 and "data.valid_fraction=0 holds out one file all the same" in warned[0], warned
    assert "(of 4)" in warned[0] and data.n_valid_files == 1
    assert re.search(r"'.*wavs/f\d\.wav'", warned[0]), warned[0]
    caplog.clear()
    build_data(data_cfg(root, valid_fraction=0.2), TINY_MODEL, seed=0, max_steps=2)
    assert not [r for r in caplog.records if r.name == "wavedil.train"]


def test_held_out_files_shorter_than_a_segment_are_warned_about_alone(tmp_path, caplog):
    """Before: a corpus whose held-out file was 1 sample long validated on padding without a word
    (only the training files were checked)."""
    from wavedil.data import split_items

    root = write_corpus(tmp_path / "wavs", [3000] * 6)
    train, valid = split_items(load_corpus(root), valid_fraction=0.2)
    for item in valid:  # the held-out files (chosen by name) become 10 samples long
        write_corpus(tmp_path / "short", [10])
        os.replace(tmp_path / "short" / "f0.wav", item.path)
    caplog.set_level(logging.WARNING, logger="wavedil.train")
    build_data(data_cfg(root, segment_length=2000), TINY_MODEL, seed=0, max_steps=2)
    warned = [r.getMessage() for r in caplog.records if r.name == "wavedil.train"]
    assert len(warned) == 1 and "every held-out file is shorter than data.segment_length=2000 samples" in warned[0]


def test_a_vocoder_with_more_mel_bands_than_its_fft_resolves_is_refused(tmp_path):
    """``n_mels=80`` with ``n_fft=64`` at 8 kHz leaves mel bands that no FFT bin falls inside: their
    features are the log floor whatever the audio (torchaudio only warned). A new run is refused,
    naming both options; the shipped vocoder settings (40 bands, ``n_fft=256``) have none."""
    over = ["+model.mel.hop_length=50", "+model.mel.n_fft=64", "+model.mel.n_mels=80"]
    with pytest.raises(TrainingError, match=r"model\.mel\.n_mels=80 is too many for model\.mel\.n_fft=64 at 8000 Hz"):
        setup(compose(BASE + over), tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()
    assert MelSpec(8000, hop_length=64, n_fft=256, n_mels=40).empty_bands() == []


# ----------------------------------------------------------------------------- memory a batch needs


def test_saved_tensor_bytes_counts_each_saved_storage_once():
    import torch

    from wavedil.training_utils import saved_tensor_bytes

    x = torch.randn(1000, requires_grad=True)
    assert saved_tensor_bytes(lambda: x * x) == 4000  # x saved twice: one storage
    assert saved_tensor_bytes(lambda: (x * x).exp()) == 8000  # and exp's 1,000-float result
    assert saved_tensor_bytes(lambda: x.detach() * 2) == 0  # nothing needs a gradient


def test_memory_limits_take_a_container_limit(monkeypatch):
    import torch

    import wavedil.training_utils as tu

    total, available = tu.memory_limits(torch.device("cpu"))
    assert total == os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert available is not None and 0 < available <= total
    monkeypatch.setattr(tu, "_cgroup_limit", lambda: 2**20)
    assert tu.memory_limits(torch.device("cpu")) == (2**20, 2**20)


def test_the_probe_scales_with_the_model():
    """Saved bytes per sample grow with the layers and channels (the probe runs the real loss)."""
    from wavedil.train import _activation_bytes_per_sample

    small = _activation_bytes_per_sample(TINY_MODEL, 400)
    wide = _activation_bytes_per_sample(WaveNetConfig(**{**TINY_MODEL.to_dict(), "residual_channels": 32}), 400)
    deep = _activation_bytes_per_sample(WaveNetConfig(**{**TINY_MODEL.to_dict(), "stacks": 4}), 400)
    assert 4 * 8 * 6 < small < wide  # at least each layer's float32 input (R = 8, 6 layers)
    assert 1.5 * small < deep < 2 * small  # twice the layers, one head
    assert _activation_bytes_per_sample(TINY_MODEL, 10**9) == pytest.approx(small, rel=0.05)  # a bounded probe
    import torch  # the probe (a freshly initialised model) leaves the random state alone

    torch.manual_seed(5)
    _activation_bytes_per_sample(TINY_MODEL, 400)
    after = torch.rand(3)
    torch.manual_seed(5)
    assert torch.equal(after, torch.rand(3))


def test_a_batch_that_cannot_fit_is_refused_before_training(tmp_path, monkeypatch):
    """data.batch_size=100000 ran until the kernel's out-of-memory killer stopped it, without a word."""
    import wavedil.train as train_mod

    monkeypatch.setattr(train_mod, "memory_limits", lambda device: (2**30, 2**30))  # a 1 GiB machine
    with pytest.raises(TrainingError) as err:
        setup(compose(BASE + ["data.batch_size=4000", "data.segment_length=2000"]), tmp_path / "run")
    msg = str(err.value)
    assert re.search(r"data.batch_size=4000 x data.segment_length=2000 needs at least [\d.,]+ GiB for the activations", msg), msg
    assert "KiB per sample for this model at trainer.precision=32), more than the 1.0 GiB of memory here" in msg
    fits = int(re.search(r"about (\d+) fits here", msg).group(1))
    assert 1 <= fits < 4000
    assert not (tmp_path / "run" / "checkpoints").exists()
    # 16-bit activations may take half: the refusal counts half (bf16 on this CPU may be emulated: warned)
    with pytest.raises(TrainingError) as err16:
        setup(compose(BASE + ["data.batch_size=4000", "data.segment_length=2000", "trainer.precision=bf16"]),
              tmp_path / "run16")  # fmt: skip
    need = [float(re.search(r"at least ([\d.,]+) GiB", m).group(1).replace(",", "")) for m in (msg, str(err16.value))]
    assert need[1] == pytest.approx(need[0] / 2, abs=0.1), (msg, str(err16.value))


def test_a_batch_that_may_not_fit_now_is_warned_about_and_trains(tmp_path, monkeypatch, caplog):
    import wavedil.train as train_mod

    monkeypatch.setattr(train_mod, "memory_limits", lambda device: (2**40, 2**20))  # 1 MiB free now
    with caplog.at_level(logging.WARNING, logger="wavedil.train"):
        run = setup(compose(BASE), tmp_path / "run")
    assert run.step == 0
    said = [r.getMessage() for r in caplog.records if "for lack of memory" in r.getMessage()]
    assert len(said) == 1 and "data.batch_size=2 x data.segment_length=200 needs about" in said[0], said
    caplog.clear()
    monkeypatch.setattr(train_mod, "memory_limits", lambda device: (2**40, 2**39))
    with caplog.at_level(logging.WARNING, logger="wavedil.train"):
        setup(compose(BASE), tmp_path / "run2")
    assert not [r for r in caplog.records if "memory" in r.getMessage()]
