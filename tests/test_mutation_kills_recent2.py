"""Tests added by a mutation audit of the package code changed in 80c7c9f..da4b218 (the fixes of
the documentation audit fbdc8dd and the commits after it: 9c61d63, ae2ca8d, cee7636, 1ef8496,
1f21592, da4b218). Each test fails on a plausible bug (a hand-written mutant, named in its
docstring) that the rest of the suite let through, and passes on the real code.

Audited: ``wavedil.cli._SampleProgress.__call__`` and ``_remove_unused_run_folder``;
``wavedil.config.bundled_data`` / ``_warn_data_fallback``; ``wavedil.data.corpus.load_corpus``
(VCTK loose files), ``without_mic_suffix`` and ``_split_keys``; ``wavedil.evaluate.split_side``
and ``_utterance``; ``wavedil.describe._with_defaults``; ``wavedil.train.setup`` (the
trainer.init_from message) and ``build_data`` (the hop of the short-file warnings);
``recipes/char_lm/char_lm.py`` ``main`` / ``_composition_error``; ``recipes/pretrained/export.py``
``_read_text`` and its ``__main__`` block.

One real fault was found and fixed with this file: ``wavedil info`` of a YAML whose ``defaults``
is a single name (``defaults: small``) or empty said "Input cfg is not an OmegaConf config object
(str)", without the file's name (see test_info_of_a_yaml_whose_defaults_is_not_a_list_names_it).

Tiny models and files; the whole file takes a few seconds.
"""

from __future__ import annotations

import logging
import os
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import wavedil.config as config_mod
from wavedil import WaveNet, WaveNetConfig
from wavedil.checkpoint import CHECKPOINT_FORMAT, save_checkpoint
from wavedil.cli import _remove_unused_run_folder, _SampleProgress
from wavedil.config import bundled_data, compose, model_config
from wavedil.data import AudioItem, load_corpus, split_items, without_mic_suffix
from wavedil.describe import describe_model
from wavedil.evaluate import evaluate_files
from wavedil.train import build_data, setup

from test_commands import one_thread  # noqa: F401 (an autouse fixture: one torch thread)
from test_faults_docs import _cli as _docs_cli
from test_faults_docs import _char_lm, _export_module, _wav, vctk_run  # noqa: F401 (vctk_run: a fixture)
from test_pretrained import _training_checkpoint
from test_train_checkpoints import BASE

REPO = Path(__file__).resolve().parents[1]
CHAR_LM_CONF = REPO / "recipes" / "char_lm" / "conf"


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    """test_faults_docs' ``_cli``, after dropping what earlier steps of the test printed."""
    capsys.readouterr()
    return _docs_cli(capsys, *argv)


# ----------------------------------------------------------------------------- generate/vocode progress


def test_sample_progress_is_silent_when_quiet_and_ends_at_the_last_report(capsys):
    """Kills: ``_SampleProgress.__call__`` without its ``if not self.enabled: return`` (``--quiet``
    still drew the bar), and without ``done != total`` in the 256-sample throttle (a last report
    less than 256 samples after the one before was dropped: the bar ended at 256/300)."""
    quiet = _SampleProgress(False, "generate")
    quiet(256, 300)
    quiet(300, 300)
    quiet.close()
    assert capsys.readouterr().err == ""
    shown = _SampleProgress(True, "vocode", rows=2)
    shown(256, 300)
    shown(300, 300)  # 44 samples after the last update: the end is shown all the same
    shown.close()
    assert capsys.readouterr().err.splitlines()[-1].startswith("vocode: 600/600 sample (100.0%)")


# ----------------------------------------------------------------------------- WAVEDIL_DATA


def test_bundled_data_outside_a_checkout_uses_the_current_folders_data(tmp_path, monkeypatch, caplog):
    """Kills: ``bundled_data`` warning on ``if i > 0`` without ``env and`` (installed outside a
    checkout, WAVEDIL_DATA unset: ``./data/<name>`` is the expected place, and the mutant failed
    with a TypeError on ``Path(None)``); the warning names ``./data/<name>`` when that is used."""
    monkeypatch.setattr(config_mod, "__file__", str(tmp_path / "site" / "wavedil" / "config.py"))  # no checkout
    (tmp_path / "work" / "data" / "speech8k").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "work")
    monkeypatch.delenv("WAVEDIL_DATA", raising=False)
    config_mod._warn_data_fallback.cache_clear()
    used = str(tmp_path / "work" / "data" / "speech8k")
    with caplog.at_level("WARNING", logger="wavedil.config"):
        assert bundled_data("speech8k") == used
        assert caplog.records == []
        monkeypatch.setenv("WAVEDIL_DATA", str(tmp_path / "typo"))
        assert bundled_data("speech8k") == used
    config_mod._warn_data_fallback.cache_clear()
    assert [r.getMessage() for r in caplog.records] == [
        f"WAVEDIL_DATA={tmp_path / 'typo'} does not exist; using {used} instead (set WAVEDIL_DATA to the folder "
        "that holds 'speech8k', or unset it)"
    ]


def test_an_empty_wavedil_data_is_unset(tmp_path, monkeypatch, caplog):
    """Kills: ``if env is not None`` for ``if env`` in ``bundled_data``: ``WAVEDIL_DATA=`` made
    ``./speech8k`` (a relative folder of that name) the data set."""
    checkout = bundled_data("speech8k")
    (tmp_path / "speech8k").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WAVEDIL_DATA", "")
    with caplog.at_level("WARNING", logger="wavedil.config"):
        assert bundled_data("speech8k") == checkout
    assert caplog.records == []


# ----------------------------------------------------------------------------- corpus: VCTK, split keys


def test_vctk_loose_file_warning_counts_the_files_of_the_chosen_microphone(tmp_path, caplog):
    """Kills: the loose files of ``load_corpus(layout="vctk")`` counted before ``_choose_mic``:
    a stray utterance with both microphones' copies was said to be 2 files where 1 is read."""
    root = tmp_path / "corpus"
    for name in ("p225/p225_001_mic1.flac", "p225/p225_001_mic2.flac", "stray_mic1.flac", "stray_mic2.flac"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        sf.write(root / name, np.full(50, 0.1, np.float32), 8000)
    with caplog.at_level("WARNING", logger="wavedil.data.corpus"):
        items = load_corpus(root, layout="vctk", mic="mic1")
    assert sorted(it.path.name for it in items) == ["p225_001_mic1.flac", "stray_mic1.flac"]
    assert [r.getMessage() for r in caplog.records] == [
        f"layout=vctk: 1 audio file(s) lie directly under '{root}' (e.g. stray_mic1.flac), not in a speaker's "
        "folder, so they take the folder's own name 'corpus' as their speaker; move them into a folder named "
        "for their speaker"
    ]


def test_the_split_of_a_corpus_is_pinned_by_its_file_names():
    """Kills: ``without_mic_suffix`` dropping the extension (``p225_001`` for ``p225_001.flac``),
    which moved files between the sides: eval --split valid of an existing run recomputes its
    split, so the held-out files of a corpus must stay what they were when it trained."""
    assert without_mic_suffix("a/p225_001_mic2.flac") == Path("a/p225_001.flac")
    assert without_mic_suffix("x_mic3.wav") == Path("x_mic3.wav")
    root = Path("/corpus")
    items = [AudioItem(root / f"p{225 + k % 2}" / f"p{225 + k % 2}_{k:03d}_mic{1 + k % 2}.flac", frames=8000, rate=8000)
             for k in range(24)]  # fmt: skip
    _, valid = split_items(items, valid_fraction=0.2)
    assert [it.path.relative_to(root).as_posix() for it in valid] == [
        "p225/p225_002_mic1.flac", "p226/p226_003_mic2.flac", "p226/p226_007_mic2.flac", "p226/p226_011_mic2.flac",
        "p226/p226_015_mic2.flac",
    ]  # fmt: skip


# ----------------------------------------------------------------------------- eval --split


def test_eval_split_of_a_corpus_given_through_a_link_finds_its_side(vctk_run, tmp_path):
    """Kills: ``evaluate._utterance`` without ``os.path.realpath``: the corpus given through a
    symbolic link (or another spelling of its path) matched none of the run's split."""
    run, corpus, _, valid = vctk_run
    (tmp_path / "link").symlink_to(corpus, target_is_directory=True)
    res = evaluate_files(run, [tmp_path / "link"], layout="vctk", mic="mic1", split="valid")
    assert sorted(Path(f["file"]).stem for f in res.to_dict()["per_file"]) == sorted(f"{u}_mic1" for u in valid)


def test_eval_split_with_no_file_on_that_side_gives_the_runs_numbers(vctk_run, tmp_path, capsys):
    """Kills: in ``split_side``'s "nothing to evaluate" errors, ``len(train)`` or ``len(items)``
    for the held-out and corpus counts, and a fixed ``--split valid`` for the other side."""
    run, corpus, train, valid = vctk_run
    one = next(corpus.rglob(f"{sorted(train)[0]}_mic1.wav"))
    code, out, err = _cli(capsys, "eval", str(run), str(one), "--layout", "vctk", "--split", "valid")
    assert code == 2 and err == (
        f"error: nothing to evaluate: none of the 1 given file(s) is on the valid side of the run's split of its "
        f"corpus '{corpus}' ({len(valid)} of its {len(train) + len(valid)} files held out, valid_fraction=0.3); give "
        "the corpus folder itself, or --split train or all\n"
    )
    outside = _wav(tmp_path / "elsewhere" / "x.wav", 99)
    code, out, err = _cli(capsys, "eval", str(run), str(outside), "--split", "valid")
    assert code == 2 and err == (
        "error: nothing to evaluate: split among themselves, the 1 given file(s) leave none on the valid side (one "
        "file is never held out); give more files, or --split train or all\n"
    )


# ----------------------------------------------------------------------------- wavedil info of a YAML


@pytest.mark.parametrize("defaults", ["defaults: small\n", "defaults:\n", "defaults:\n  small: x\n"])
def test_info_of_a_yaml_whose_defaults_is_not_a_list_names_it(tmp_path, capsys, defaults):
    """Kills: ``_with_defaults`` without its "not a list" check (a mapping: an AttributeError
    traceback). Also a fault fixed here: a single name (``defaults: small``) or an empty
    ``defaults:`` said "Input cfg is not an OmegaConf config object (str)", naming no file."""
    (tmp_path / "m.yaml").write_text(defaults)
    code, out, err = _cli(capsys, "info", str(tmp_path / "m.yaml"))
    assert code == 2 and out == ""
    assert err.startswith(f"error: '{tmp_path / 'm.yaml'}' is not a valid model config YAML (its defaults is not a "
                          "list); give a checkpoint (.pt)") and err.count("\n") == 1  # fmt: skip


def test_info_of_a_yaml_takes_a_file_beside_it_before_a_preset_of_that_name(tmp_path):
    """Kills: ``_with_defaults`` looking in ``conf/model/`` first: a user's own ``small.yaml``
    beside the file (as Hydra resolves a defaults list in its own folder) was ignored."""
    (tmp_path / "small.yaml").write_text("residual_channels: 24\n")
    (tmp_path / "mine.yaml").write_text("defaults:\n  - small\noutput: mol\n")
    got = describe_model(tmp_path / "mine.yaml").model.config
    assert got.residual_channels == 24 and got.output == "mol"


def test_info_of_yamls_whose_defaults_lead_to_each_other_is_an_error(tmp_path, capsys):
    """Kills: ``_with_defaults`` checking only a file naming itself (``source in within`` dropped,
    or ``within`` not passed on): two files naming each other recursed until a RecursionError."""
    (tmp_path / "a.yaml").write_text("defaults:\n  - b\n")
    (tmp_path / "b.yaml").write_text("defaults:\n  - a\n")
    code, out, err = _cli(capsys, "info", str(tmp_path / "a.yaml"))
    assert code == 2 and out == ""
    assert err == f"error: '{tmp_path / 'b.yaml'}': its defaults list names 'a', which leads back to '{tmp_path / 'b.yaml'}'\n"


# ----------------------------------------------------------------------------- wavedil train: the unused run folder


def _refused_train(capsys, monkeypatch, *overrides: str) -> str:
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    code, _, err = _cli(capsys, "train", "model=tiny", "trainer=debug", "optim.lr=-1", *overrides)
    assert code == 2 and err.splitlines()[-1] == "error: optim.lr must be > 0, got -1.0", err
    return err


def test_a_refused_run_in_the_current_folder_leaves_it_alone(tmp_path, capsys, monkeypatch, hydra_logging):
    """Kills: ``_remove_unused_run_folder`` without its current-folder check: ``hydra.run.dir=.``
    in an empty folder deleted the current folder itself (it held only .hydra/ and the log)."""
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    _refused_train(capsys, monkeypatch, "hydra.run.dir=.")
    assert here.is_dir() and sorted(p.name for p in here.iterdir()) == [".hydra", "cli.log"]


def test_a_refused_run_outside_the_current_folder_leaves_the_folders_above_it(tmp_path, capsys, monkeypatch,
                                                                                hydra_logging):
    """Kills: the climb over the run folder's parents without ``cwd not in parent.parents``: a
    run folder outside the current one took the empty folders above it (up to the first
    non-empty one), which were not made for it."""
    (tmp_path / "work").mkdir()
    (tmp_path / "mine" / "empty").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "work")
    _refused_train(capsys, monkeypatch, f"hydra.run.dir={tmp_path / 'mine' / 'empty' / 'run'}")
    assert (tmp_path / "mine" / "empty").is_dir() and list((tmp_path / "mine" / "empty").iterdir()) == []


def _hydra_run_folder(folder: Path) -> Path:
    (folder / ".hydra").mkdir(parents=True)
    for name in ("config.yaml", "hydra.yaml", "overrides.yaml"):
        (folder / ".hydra" / name).write_text("{}\n")
    (folder / "cli.log").write_text("")
    return folder


def test_only_rank_0_removes_and_only_a_folder_of_hydras_files(tmp_path, monkeypatch):
    """Kills: ``_remove_unused_run_folder`` without its ``RANK`` check (every torchrun rank
    removing), without the check for a folder inside ``.hydra/``, and counting a folder named
    ``*.log`` as Hydra's log file: each removed a folder holding something else."""
    monkeypatch.chdir(tmp_path)
    plain = _hydra_run_folder(tmp_path / "outputs" / "a")
    monkeypatch.setenv("RANK", "1")
    _remove_unused_run_folder(plain)
    assert plain.is_dir()
    monkeypatch.setenv("RANK", "0")
    inner = _hydra_run_folder(tmp_path / "outputs" / "b")
    (inner / ".hydra" / "kept").mkdir()
    logs = _hydra_run_folder(tmp_path / "outputs" / "c")
    (logs / "notes.log").mkdir()
    for folder in (inner, logs):
        _remove_unused_run_folder(folder)
        assert folder.is_dir()
    _remove_unused_run_folder(plain)  # the real case still goes
    assert not plain.exists() and (tmp_path / "outputs").is_dir()


# ----------------------------------------------------------------------------- trainer.init_from, build_data


def test_init_from_message_groups_the_thousands_of_both_counts(tmp_path, capsys):
    """Kills: ``{step_at}`` / ``{total}`` for ``{step_at:,}`` / ``{total:,}`` in setup's start
    message (the tests' sources had fewer than 1,000 steps)."""
    cfg = compose(BASE)
    torch.manual_seed(0)
    model = WaveNet(model_config(cfg.model))
    source = tmp_path / "source" / "checkpoints" / "step_00012650.pt"
    save_checkpoint({
        "format": CHECKPOINT_FORMAT, "model": model.state_dict(), "ema": None, "step": 12650, "elapsed_seconds": 10.0,
        "model_config": model.config.to_dict(), "sample_rate": 8000, "config": {"data": {}, "trainer": {}},
        "initialised_from": {"source": "earlier", "steps": 30665, "wall_time_seconds": 50.0},
    }, source)  # fmt: skip
    setup(compose(BASE + [f"trainer.init_from={source}"]), tmp_path / "tuned")
    assert (f"initialised the weights from {source} (its step 12,650; 43,315 steps of training in all); "
            "optimiser and schedule start fresh") in capsys.readouterr().out  # fmt: skip


def test_a_vocoders_short_file_warnings_suggest_whole_hops(tmp_path, caplog):
    """Kills: ``build_data`` passing a hop of 1 instead of the mel hop to either short-file
    warning: a vocoder's suggested segment must be whole hops (280 and 240, not 299 and 259)."""
    for i, n in enumerate([300, 290, 280, 270, 260]):
        sf.write(tmp_path / f"f{i}.wav", np.full(n, 0.1, np.float32), 8000)
    mcfg = WaveNetConfig(residual_channels=8, gate_channels=16, skip_channels=12, head_channels=10, layers_per_stack=3,
                         stacks=2, quantization_channels=32,
                         mel={"sample_rate": 8000, "hop_length": 40, "n_fft": 128, "n_mels": 8})  # fmt: skip
    dcfg = {"root": str(tmp_path), "sample_rate": 8000, "segment_length": 400, "batch_size": 2, "valid_segments": 2,
            "valid_fraction": 0.2}  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="wavedil.train"):
        build_data(dcfg, mcfg, seed=0, max_steps=2)
    said = [r.getMessage() for r in caplog.records if r.name == "wavedil.train"]
    assert len(said) == 2, said
    assert "every training file" in said[0] and "(e.g. data.segment_length=280)" in said[0]
    assert "every held-out file" in said[1] and "(e.g. data.segment_length=240)" in said[1]


# ----------------------------------------------------------------------------- recipes/char_lm


def _char_lm_main(module, monkeypatch, *overrides: str) -> None:
    monkeypatch.setattr(sys, "argv", ["char_lm.py"])
    module.main(["train", "-cp", str(CHAR_LM_CONF), *overrides])


def test_char_lm_top_level_unknown_option_lists_the_top_level_options(monkeypatch, capsys, tmp_path):
    """Kills: ``_composition_error`` without ``section or 'top-level'`` (": options: ..."), and
    listing the config's ``defaults`` list as an option."""
    module = _char_lm(monkeypatch)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(SystemExit) as exc:
        _char_lm_main(module, monkeypatch, "nosuch=1")
    assert exc.value.code == 2 and capsys.readouterr().err == (
        "error: nosuch: no such option; top-level options: command, data, debug, hydra, model, name, optim, sample, "
        "seed, trainer\n"
    )


@pytest.mark.parametrize("full_error, debug", [("1", False), (None, True)])
def test_char_lm_full_error_or_debug_keeps_hydras_exception(monkeypatch, tmp_path, full_error, debug):
    """Kills: ``main`` ignoring the user's ``HYDRA_FULL_ERROR=1`` or ``debug=true`` (the one-line
    error came all the same, where its README promises the full exception), and ``main`` not
    restoring the user's HYDRA_FULL_ERROR afterwards."""
    from hydra.errors import HydraException

    module = _char_lm(monkeypatch)
    monkeypatch.chdir(tmp_path)
    if full_error is None:
        monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    else:
        monkeypatch.setenv("HYDRA_FULL_ERROR", full_error)
    with pytest.raises(HydraException, match="nosuch"):
        _char_lm_main(module, monkeypatch, "model.nosuch=1", *(["debug=true"] if debug else []))
    assert os.environ.get("HYDRA_FULL_ERROR") == full_error


def test_char_lm_an_unexpected_exception_is_not_made_a_one_line_error(monkeypatch):
    """Kills: ``main`` turning any exception into "error: ..." (without the HydraException /
    OmegaConf check): a bug's traceback was lost; and the user's HYDRA_FULL_ERROR=0 is kept."""
    module = _char_lm(monkeypatch)
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")

    def broken():
        raise RuntimeError("a bug")

    monkeypatch.setattr(module, "_hydra_entry", broken)
    monkeypatch.setattr(sys, "argv", ["char_lm.py"])
    with pytest.raises(RuntimeError, match="a bug"):
        module.main(["train"])
    assert os.environ["HYDRA_FULL_ERROR"] == "0"


# ----------------------------------------------------------------------------- recipes/pretrained/export.py


def test_export_names_an_eval_or_corpus_json_that_is_not_utf8(tmp_path, monkeypatch):
    """Kills: ``_read_text`` catching OSError only: a file that is not UTF-8 ended in a
    UnicodeDecodeError traceback."""
    export = _export_module(monkeypatch)
    bad = tmp_path / "eval.txt"
    bad.write_bytes(b"\xff\xfe{\n")
    for read, option in ((export.read_eval_json, "--eval-json"), (export.read_corpus_json, "--corpus-json")):
        with pytest.raises(ValueError, match=rf"^{option}: cannot read '.*eval.txt' \('utf-8' codec can't decode byte 0xff"):
            read(bad)


def test_export_script_reports_an_out_dir_it_cannot_write_in_one_line(tmp_path, monkeypatch, capsys):
    """Kills: the script's ``__main__`` catching ValueError only: an --out-dir under a file ended
    in a NotADirectoryError traceback instead of one line with exit status 2."""
    _training_checkpoint(tmp_path / "run", mel=False)
    (tmp_path / "afile").write_text("x")
    monkeypatch.setattr(sys, "argv", ["export.py", str(tmp_path / "run"), "--name", "m", "--out-dir",
                                      str(tmp_path / "afile" / "sub")])  # fmt: skip
    with pytest.raises(SystemExit) as exc:
        runpy.run_path(str(REPO / "recipes" / "pretrained" / "export.py"), run_name="__main__")
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1
    assert "Not a directory" in err and str(tmp_path / "afile" / "sub") in err
