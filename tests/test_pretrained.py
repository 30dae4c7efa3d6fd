"""Bundled pretrained models (wavedil.pretrained): export, listing, verified loading, use by name.

Tiny models are exported from checkpoints built the way the trainer saves them into a temporary
``$WAVEDIL_DATA/pretrained``; the last test checks every model that really ships under
``data/pretrained/`` of the checkout.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import wavedil
from wavedil import WaveNet, WaveNetConfig, decode, generate, read_audio
from wavedil.checkpoint import CHECKPOINT_FORMAT, save_checkpoint
from wavedil.conditioning import MelSpec
from wavedil.data import file_mel, load_corpus, split_items
from wavedil.describe import describe_model
from wavedil.evaluate import evaluate_files
from wavedil.pretrained import (
    CARD_JSON,
    CARD_MD,
    MODEL_FILE,
    PretrainedInfo,
    export_pretrained,
    training_lineage,
    file_sha256,
    heldout_from_eval,
    list_pretrained,
    load_pretrained,
    models_table,
    open_model,
    pretrained_dir,
)
from wavedil.synthesis import generate_to_files, vocode_file

CHECKOUT = Path(wavedil.__file__).resolve().parent.parent
SHIPPED = CHECKOUT / "data" / "pretrained"
SPEECH8K = CHECKOUT / "data" / "speech8k" / "wavs"
CORPUS = {
    "name": "asterisk-core-sounds-en-wav 1.6.1-1 (test)",
    "licence": "CC-BY-SA-3.0",
    "attribution": "Allison Smith for Digium, Inc.",
}


def _tiny(mel: bool) -> WaveNetConfig:
    spec = MelSpec(sample_rate=8000, hop_length=80, n_fft=256, n_mels=40).to_dict() if mel else None
    return WaveNetConfig(
        residual_channels=8, gate_channels=16, skip_channels=8, head_channels=8, layers_per_stack=3, stacks=1, mel=spec
    )


def _training_checkpoint(
    run: Path, mel: bool, seed: int = 0, lineage: dict | None = None, **trainer: object
) -> dict[str, torch.Tensor]:
    """Save ``run/checkpoints/step_00000002.pt`` as the trainer does (``trainer``: more of its
    ``trainer`` config; ``lineage``: its ``initialised_from``); return its EMA weights."""
    torch.manual_seed(seed)
    cfg = _tiny(mel)
    model = WaveNet(cfg)
    if mel:  # normalisation statistics of a corpus, not the identity
        model.mel_mean.copy_(torch.linspace(-9.0, -2.0, 40))
        model.mel_std.copy_(torch.linspace(1.0, 3.0, 40))
    ema = {k: (v + 0.01 * torch.randn_like(v)) if k not in ("mel_mean", "mel_std") else v.clone()
           for k, v in model.state_dict().items()}  # fmt: skip
    opt = torch.optim.Adam(model.parameters())
    save_checkpoint(
        {
            "format": CHECKPOINT_FORMAT, "model": model.state_dict(), "ema": ema, "optimizer": opt.state_dict(),
            "step": 2, "elapsed_seconds": 12.5, "precision": "fp32", "rng": {"torch": torch.get_rng_state()},
            "config": {"data": {"valid_fraction": 0.05}, "trainer": {"threads": 1, **trainer}},
            "model_config": cfg.to_dict(), "sample_rate": 8000, **({"initialised_from": lineage} if lineage else {}),
        },
        run / "checkpoints" / "step_00000002.pt",
    )  # fmt: skip
    return ema


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty ``$WAVEDIL_DATA/pretrained``."""
    (tmp_path / "data" / "pretrained").mkdir(parents=True)
    monkeypatch.setenv("WAVEDIL_DATA", str(tmp_path / "data"))
    return tmp_path / "data" / "pretrained"


@pytest.fixture
def shipped(tmp_path: Path, data_dir: Path) -> dict[str, dict[str, torch.Tensor]]:
    """Two exported models, ``voc`` (bf16 vocoder) and ``speech`` (float32); their EMA weights."""
    ema_voc = _training_checkpoint(tmp_path / "run_voc", mel=True)
    ema_speech = _training_checkpoint(tmp_path / "run_speech", mel=False, seed=1)
    export_pretrained(tmp_path / "run_voc", "voc", dtype="bfloat16", description="tiny vocoder", corpus=CORPUS,
                      heldout={"log_mel_distance": 0.5}, eval_commands=["wavedil eval ..."])  # fmt: skip
    export_pretrained(tmp_path / "run_speech", "speech", out_dir=data_dir, corpus=CORPUS,
                      heldout={"bits_per_sample": 3.8, "bz2_bits_per_sample": 5.0})  # fmt: skip
    return {"voc": ema_voc, "speech": ema_speech}


def _resynthesise(model: WaveNet, wav: torch.Tensor) -> torch.Tensor:
    """Vocode ``wav (T,)`` from its own log-mel: the samples ``(T',)`` in [-1, 1]."""
    mel = file_mel(wav, model.mel_spec, model.mel_context)
    codes = generate(model, None, mel=mel, seed=0).codes[0]
    return decode(codes, model.encoding, model.quantization_channels)


# ----------------------------------------------------------------------------- listing and loading


def test_listing_reads_the_cards(shipped) -> None:
    infos = {i.name: i for i in list_pretrained()}
    assert sorted(infos) == ["speech", "voc"]
    voc, speech = infos["voc"], infos["speech"]
    assert (voc.kind, voc.sample_rate, voc.dtype, voc.description) == ("vocoder", 8000, "bfloat16", "tiny vocoder")
    assert (speech.kind, speech.dtype) == ("unconditional", "float32")
    assert speech.parameters == WaveNet(_tiny(False)).num_parameters()
    assert speech.heldout == {"bits_per_sample": 3.8, "bz2_bits_per_sample": 5.0}
    assert voc.sha256 == file_sha256(voc.model_file)


def test_load_pretrained_loads_the_ema_weights_with_weights_only(shipped, monkeypatch) -> None:
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    model = load_pretrained("speech")
    assert calls == [True]
    assert isinstance(model, WaveNet) and not model.training
    state = model.state_dict()
    for key, value in shipped["speech"].items():
        assert state[key].dtype == torch.float32
        assert torch.equal(state[key], value), key  # the EMA, not the raw weights


def test_model_file_holds_inference_state_only(shipped, data_dir) -> None:
    obj = torch.load(data_dir / "speech" / MODEL_FILE, weights_only=True)
    assert set(obj) == {"format", "model", "model_config", "sample_rate", "step", "elapsed_seconds", "config", "pretrained"}
    assert obj["config"]["data"]["valid_fraction"] == 0.05  # eval --split valid finds the training split


def test_card_records_provenance_and_licence(shipped, data_dir) -> None:
    card = json.loads((data_dir / "voc" / CARD_JSON).read_text())
    assert card["sha256"] == file_sha256(data_dir / "voc" / MODEL_FILE)
    assert card["bytes"] == (data_dir / "voc" / MODEL_FILE).stat().st_size
    assert (card["steps"], card["wall_time_seconds"], card["parameters"]) == (2, 12.5, WaveNet(_tiny(True)).num_parameters())
    assert card["model_config"] == _tiny(True).to_dict()
    assert card["machine"]["threads"] == 1 and card["machine"]["cpu"]
    assert card["licence"] == "CC-BY-SA-3.0" and "CC-BY-SA-3.0" in card["licence_note"]
    text = (data_dir / "voc" / CARD_MD).read_text()
    for fact in (card["sha256"], "CC-BY-SA-3.0", "Allison Smith", "log_mel_distance", "wavedil eval ...", "--model voc"):
        assert fact in text, fact


def test_re_export_gives_the_same_file(tmp_path, data_dir) -> None:
    _training_checkpoint(tmp_path / "run", mel=False)
    first = export_pretrained(tmp_path / "run", "m").sha256
    second = export_pretrained(tmp_path / "run", "m", heldout={"bits_per_sample": 4.0})
    assert second.sha256 == first and second.heldout == {"bits_per_sample": 4.0}


def test_re_exporting_a_shipped_file_keeps_its_bytes_and_provenance(tmp_path, data_dir) -> None:
    """Its training checkpoint gone, a shipped model.pt is the source of a card update."""
    _training_checkpoint(tmp_path / "run", mel=True)
    first = export_pretrained(tmp_path / "run", "m")
    copy = tmp_path / "elsewhere" / "pretrained"
    again = export_pretrained(first.model_file, "m", out_dir=copy, temperature=0.5)
    assert again.sha256 == first.sha256 and again.temperature == 0.5
    assert again.card["source_checkpoint"] == first.card["source_checkpoint"] != str(first.model_file)
    assert again.card["weights"] == "ema"


def test_a_continued_run_records_what_it_went_on_from(tmp_path, data_dir) -> None:
    """A run started with ``trainer.init_from=pretrained:m`` and exported as ``m`` again: the card
    keeps the first model's steps, wall time and sha256 and adds them up; a third run from the
    second's folder chains through both, though ``m`` is no longer the model run2 started from
    (the trainer stored that in run2's checkpoints)."""
    _training_checkpoint(tmp_path / "run1", mel=True)  # step 2, 12.5 s
    first = export_pretrained(tmp_path / "run1", "m")
    # as the trainer records it at the start of the run
    lineage = training_lineage("pretrained:m")
    assert lineage["sha256"] == first.sha256 and (lineage["steps"], lineage["wall_time_seconds"]) == (2, 12.5)
    _training_checkpoint(tmp_path / "run2", mel=True, seed=3, lineage=lineage, init_from="pretrained:m", precision="bf16")
    # a checkpoint from before the trainer stored it: resolved at export, before `m` is overwritten
    _training_checkpoint(tmp_path / "run2_old", mel=True, seed=3, init_from="pretrained:m", precision="bf16")
    old = export_pretrained(tmp_path / "run2_old", "m_old").card
    assert old["initialised_from"] == lineage and old["total_steps"] == 4
    second = export_pretrained(tmp_path / "run2", "m")
    card = second.card
    assert second.sha256 != first.sha256
    assert card["initialised_from"]["source"] == "pretrained:m"
    assert card["initialised_from"]["sha256"] == first.sha256 and card["initialised_from"]["steps"] == 2
    assert (card["total_steps"], card["total_wall_time_seconds"], card["precision"]) == (4, 25.0, "bf16")
    text = (second.folder / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "These steps went on from `pretrained:m`" in text and "In all: 4 steps" in text
    assert "precision bf16" in text

    _training_checkpoint(tmp_path / "run3", mel=True, seed=4, init_from=str(tmp_path / "run2"))
    third = export_pretrained(tmp_path / "run3", "m3").card
    assert third["initialised_from"]["steps"] == 4  # run2's 2 steps on top of m's first 2
    assert third["initialised_from"]["initialised_from"]["sha256"] == first.sha256
    assert third["total_steps"] == 6

    # a shipped model.pt re-exported keeps what its run went on from
    again = export_pretrained(second.model_file, "m", out_dir=tmp_path / "copy")
    assert again.card["initialised_from"] == card["initialised_from"] and again.card["total_steps"] == 4


def test_re_exporting_an_old_continued_checkpoint_does_not_count_it_twice(tmp_path, data_dir) -> None:
    """A checkpoint without a stored lineage, started from ``pretrained:m`` and exported as ``m``:
    exported again, ``m`` now resolves to its own export, whose card (not itself) says what it
    went on from."""
    _training_checkpoint(tmp_path / "run1", mel=True)  # step 2, 12.5 s
    first = export_pretrained(tmp_path / "run1", "m")
    _training_checkpoint(tmp_path / "run2", mel=True, seed=3, init_from="pretrained:m")
    once = export_pretrained(tmp_path / "run2", "m").card
    twice = export_pretrained(tmp_path / "run2", "m").card
    for card in (once, twice):
        assert card["initialised_from"]["sha256"] == first.sha256
        assert (card["initialised_from"]["steps"], card["total_steps"]) == (2, 4)


def test_a_source_gone_at_export_is_recorded_as_such(tmp_path, data_dir) -> None:
    _training_checkpoint(tmp_path / "run", mel=False, init_from=str(tmp_path / "gone"))
    card = export_pretrained(tmp_path / "run", "m").card
    assert card["initialised_from"]["source"] == str(tmp_path / "gone")
    assert "not readable at export" in card["initialised_from"]["note"] and "total_steps" not in card


def test_bfloat16_export_round_trips_to_float32(shipped, data_dir) -> None:
    model = load_pretrained("voc")
    state = model.state_dict()
    params = dict(model.named_parameters())
    for key, value in shipped["voc"].items():
        got = state[key]
        assert got.dtype == torch.float32
        if key in params:
            assert torch.equal(got, value.to(torch.bfloat16).float()), key
            torch.testing.assert_close(got, value, rtol=2**-8, atol=1e-30)
        else:  # buffers (the mel statistics) stay exact
            assert torch.equal(got, value), key


def test_open_model_takes_paths_as_before_and_pretrained_names(shipped, tmp_path) -> None:
    by_path = open_model(tmp_path / "run_speech")
    assert by_path.path.name == "step_00000002.pt" and by_path.pretrained is None
    assert "optimizer" in by_path.checkpoint  # the training checkpoint itself, untouched
    by_name = open_model("pretrained:speech")
    assert by_name.pretrained is not None and by_name.pretrained.name == "speech"
    assert by_name.label == "pretrained model 'speech'" and by_name.sample_rate == 8000


# ----------------------------------------------------------------------------- bad input


def test_tampered_file_is_refused_naming_both_digests(shipped, data_dir) -> None:
    path = data_dir / "speech" / MODEL_FILE
    expected = file_sha256(path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError) as err:
        load_pretrained("speech")
    msg = str(err.value)
    assert expected in msg and file_sha256(path) in msg and str(path) in msg


def test_card_config_mismatch_is_refused(shipped, data_dir) -> None:
    card_path = data_dir / "speech" / CARD_JSON
    card = json.loads(card_path.read_text())
    card["model_config"]["residual_channels"] = 16
    card_path.write_text(json.dumps(card))
    with pytest.raises(ValueError, match=r"differs from its card's in \['residual_channels'\]"):
        load_pretrained("speech")


def test_unknown_name_lists_the_valid_ones(shipped) -> None:
    with pytest.raises(ValueError, match=r"unknown pretrained model 'nope'; the models that ship are: speech, voc"):
        load_pretrained("nope")
    with pytest.raises(ValueError, match="unknown pretrained model 'nope'"):
        open_model("pretrained:nope")


def test_unknown_name_when_none_ship(data_dir) -> None:
    assert pretrained_dir() == data_dir and list_pretrained() == []
    with pytest.raises(ValueError, match="no pretrained models ship"):
        load_pretrained("speech8k")


def test_export_refuses_bad_arguments(tmp_path, data_dir) -> None:
    _training_checkpoint(tmp_path / "run", mel=False)
    with pytest.raises(ValueError, match=r"name must be .* got 'Bad Name'"):
        export_pretrained(tmp_path / "run", "Bad Name")
    with pytest.raises(ValueError, match=r"dtype must be one of \['float32', 'bfloat16'\], got 'float16'"):
        export_pretrained(tmp_path / "run", "m", dtype="float16")
    with pytest.raises(ValueError, match=r"would replace computed ones"):
        export_pretrained(tmp_path / "run", "m", extra={"sha256": "0" * 64})
    assert list_pretrained() == []


def test_export_script_fills_the_card_from_eval_output(tmp_path, data_dir, capsys) -> None:
    spec = importlib.util.spec_from_file_location("export_recipe", CHECKOUT / "recipes" / "pretrained" / "export.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    _training_checkpoint(tmp_path / "run", mel=True)
    figures = {
        "model_bits_per_sample": 3.5, "bz2_bits_per_sample": 5.6, "unigram_bits_per_sample": 7.4, "samples": 1000,
        "files": 3, "per_file": [], "weights": "fp32", "log_mel_distance": 0.4,
        "log_mel_distance_baselines": {"codec": 0.18, "other_file": 2.2},
    }  # fmt: skip
    (tmp_path / "eval.txt").write_text("3 files, 1,000 predicted samples\n  model ...\n" + json.dumps(figures) + "\n")
    script.main([str(tmp_path / "run"), "--preset", "speech8k-vocoder", "--eval-json", str(tmp_path / "eval.txt")])
    assert "sha256" in capsys.readouterr().out
    card = json.loads((data_dir / "speech8k-vocoder" / CARD_JSON).read_text())
    assert card["heldout"] == {
        "bits_per_sample": 3.5, "bz2_bits_per_sample": 5.6, "unigram_bits_per_sample": 7.4, "files": 3,
        "samples": 1000, "log_mel_distance": 0.4, "log_mel_codec_floor": 0.18, "log_mel_other_file": 2.2,
    }  # fmt: skip
    assert "wavedil train experiment=pretrained_vocoder8k" in card["train_command"]
    assert card["train_command"].endswith("hydra.run.dir=runs/pretrained_vocoder8k_9 trainer.init_from=runs/pretrained_vocoder8k_8 optim.lr=3e-4 "
                                           "trainer.precision=bf16 trainer.max_time=02:00:00 trainer.max_steps=100000")
    assert card["eval_commands"] == [f"wavedil eval {tmp_path / 'run'} /usr/share/asterisk/sounds/en_US_f_Allison "
                                     "--split valid --vocode-seconds 2 --temperature 0.5 --json"]  # fmt: skip
    assert card["temperature"] == 0.5 and "0.518 at 0.5" in card["temperature_note"]
    assert "temperature 0.5 unless given `--temperature`" in (data_dir / "speech8k-vocoder" / "MODEL_CARD.md").read_text()
    assert card["export_command"].startswith("python recipes/pretrained/export.py ")
    assert card["corpus"]["licence"] == card["licence"] == "CC-BY-SA-3.0"
    with pytest.raises(ValueError, match="not the output of wavedil eval --json"):
        heldout_from_eval({"bits": 1.0})


# ----------------------------------------------------------------------------- use


def test_vocoder_resynthesises_a_prompt_to_its_length(shipped) -> None:
    model = load_pretrained("voc")
    wav, _ = read_audio(sorted(SPEECH8K.glob("*.wav"))[0], sample_rate=8000, frames=1000)
    out = _resynthesise(model, wav)
    assert out.shape[-1] >= wav.shape[-1]  # whole mel frames: ceil(T / hop) * hop samples
    assert out.shape[-1] == -(-wav.shape[-1] // 80) * 80
    assert torch.isfinite(out).all() and out.abs().max() <= 1.0


# ----------------------------------------------------------------------------- the library functions the CLI calls


def test_synthesis_takes_pretrained_names(shipped, tmp_path) -> None:
    res = generate_to_files("pretrained:speech", tmp_path / "gen.wav", seconds=0.05, seed=0)
    assert res.sample_rate == 8000 and res.codes.shape == (1, 400) and res.notes == []
    wav, _ = read_audio(sorted(SPEECH8K.glob("*.wav"))[0], frames=800)
    sf.write(tmp_path / "in.wav", wav.numpy(), 8000)
    res = vocode_file("pretrained:voc", tmp_path / "in.wav", tmp_path / "out.wav", seed=0)
    out, sr = read_audio(res.paths[0])
    assert sr == 8000 and out.shape[-1] == 800 and torch.isfinite(out).all() and out.abs().max() <= 1.0


def test_a_card_temperature_is_the_default_of_every_command_and_an_explicit_one_wins(tmp_path, data_dir) -> None:
    _training_checkpoint(tmp_path / "run_voc", mel=True)
    info = export_pretrained(tmp_path / "run_voc", "voc", temperature=0.5, temperature_note="by log-mel distance")
    assert info.temperature == 0.5 and json.loads((info.folder / CARD_JSON).read_text())["temperature"] == 0.5
    wav, _ = read_audio(sorted(SPEECH8K.glob("*.wav"))[0], frames=800)
    sf.write(tmp_path / "in.wav", wav.numpy(), 8000)
    res = {t: vocode_file("pretrained:voc", tmp_path / "in.wav", tmp_path / f"out{t}.wav", seed=3, temperature=t)
           for t in (None, 0.5, 1.0)}  # fmt: skip
    assert res[None].temperature == 0.5 and res[1.0].temperature == 1.0
    assert torch.equal(res[None].codes, res[0.5].codes) and not torch.equal(res[None].codes, res[1.0].codes)
    # a checkpoint has no card: 1.0 as before
    assert vocode_file(tmp_path / "run_voc", tmp_path / "in.wav", tmp_path / "ck.wav", seed=3).temperature == 1.0
    evaluated = evaluate_files("pretrained:voc", [tmp_path / "in.wav"], vocode_seconds=0.05)
    assert evaluated.temperature == 0.5 and evaluated.to_dict()["temperature"] == 0.5
    assert "temperature 0.5" in evaluated.table()
    plain = export_pretrained(tmp_path / "run_voc", "plain")
    assert plain.temperature == 1.0 and "temperature" not in plain.card
    with pytest.raises(ValueError, match="temperature must be a number >= 0, got -1"):
        export_pretrained(tmp_path / "run_voc", "bad", temperature=-1.0)
    card = json.loads((info.folder / CARD_JSON).read_text())
    (info.folder / CARD_JSON).write_text(json.dumps(dict(card, temperature="warm")))
    with pytest.raises(ValueError, match=r"has temperature 'warm'; it must be a number >= 0"):
        PretrainedInfo.from_folder(info.folder)


def test_describe_and_evaluate_take_pretrained_names(shipped) -> None:
    desc = describe_model("pretrained:voc")
    assert desc.sample_rate == 8000 and desc.parameters == WaveNet(_tiny(True)).num_parameters()
    assert "pretrained model 'voc'" in desc.text() and "CC-BY-SA-3.0" in desc.text()
    files = sorted(SPEECH8K.glob("*.wav"))[:1]
    result = evaluate_files("pretrained:speech", files, max_seconds=0.05)
    assert result.report.n_files == 1 and result.report.n_samples == 399


def test_vocoding_audio_at_another_rate_resamples_with_a_note(shipped, tmp_path) -> None:
    t = torch.arange(1600) / 16000
    sf.write(tmp_path / "in16k.wav", (0.3 * torch.sin(2 * torch.pi * 300 * t)).numpy(), 16000)
    res = vocode_file("pretrained:voc", tmp_path / "in16k.wav", tmp_path / "out.wav", seed=0)
    assert res.codes.shape == (1, 800)
    assert len(res.notes) == 1 and "16000 Hz" in res.notes[0] and "8000 Hz" in res.notes[0], res.notes


def test_vocoding_a_mel_of_other_settings_names_both(shipped, tmp_path) -> None:
    np.savez(tmp_path / "m.npz", mel=np.zeros((40, 10), np.float32), hop_length=np.int64(256))
    with pytest.raises(ValueError, match="was made with hop_length=256 but this vocoder expects hop_length=80"):
        vocode_file("pretrained:voc", tmp_path / "m.npz", tmp_path / "out.wav")
    np.save(tmp_path / "m.npy", np.zeros((80, 10), np.float32))
    expected = r"\(40, frames\) for this vocoder \(40 mel bands, hop 80 at 8000 Hz\), got float32 \(80, 10\)"
    with pytest.raises(ValueError, match=expected):
        vocode_file("pretrained:voc", tmp_path / "m.npy", tmp_path / "out.wav")


def test_pretrained_model_of_the_wrong_kind_points_to_the_right_command(shipped, tmp_path) -> None:
    with pytest.raises(ValueError, match=r"pretrained model 'voc' is a vocoder .*wavedil vocode --model voc"):
        generate_to_files("pretrained:voc", tmp_path / "g.wav", seconds=0.01)
    with pytest.raises(ValueError, match=r"pretrained model 'speech' is not a vocoder .*wavedil generate --model speech"):
        vocode_file("pretrained:speech", tmp_path / "in.wav", tmp_path / "out.wav")


# ----------------------------------------------------------------------------- what really ships


def test_every_shipped_model_matches_its_card_and_runs(monkeypatch) -> None:
    """Each folder of data/pretrained/: sha256 and config as its card says; it generates or vocodes."""
    monkeypatch.setenv("WAVEDIL_DATA", str(SHIPPED.parent))
    folders = sorted(p for p in SHIPPED.iterdir() if p.is_dir()) if SHIPPED.is_dir() else []
    assert sorted(i.name for i in list_pretrained()) == [p.name for p in folders]  # every folder has a readable card
    for folder in folders:
        card = json.loads((folder / CARD_JSON).read_text())
        assert card["name"] == folder.name and (folder / CARD_MD).is_file()
        assert file_sha256(folder / MODEL_FILE) == card["sha256"], folder
        obj = torch.load(folder / MODEL_FILE, weights_only=True)
        assert obj["model_config"] == card["model_config"] and obj["sample_rate"] == card["sample_rate"]
        model = load_pretrained(folder.name)
        assert model.num_parameters() == card["parameters"]
        assert card["licence"] and card["corpus"].get("licence") and card["heldout"], folder
        if model.upsampler is not None:  # a held-out prompt of the training split, 0.1 s of it
            valid_fraction = obj["config"]["data"]["valid_fraction"]
            _, held_out = split_items(load_corpus(SPEECH8K), valid_fraction, min_valid=0)
            wav, _ = read_audio(held_out[0].path, sample_rate=card["sample_rate"], frames=card["sample_rate"] // 10)
            out = _resynthesise(model, wav)
            assert out.shape[-1] == -(-wav.shape[-1] // model.mel_spec.hop_length) * model.mel_spec.hop_length
        else:
            codes = generate(model, 400, seed=0).codes[0]
            out = decode(codes, model.encoding, model.quantization_channels)
            assert out.shape[-1] == 400
        assert torch.isfinite(out).all() and out.abs().max() <= 1.0


def test_models_table_lists_what_ships(shipped, data_dir) -> None:
    lines = models_table().splitlines()
    assert lines[0].split() == ["name", "kind", "rate", "parameters", "held-out"]
    speech, voc = lines[1], lines[2]
    assert speech.split()[:4] == ["speech", "unconditional", "8000", "Hz"]
    assert "3.80 bits/sample (bz2 5.00)" in speech and f"{WaveNet(_tiny(False)).num_parameters():,}" in speech
    assert voc.split()[:2] == ["voc", "vocoder"] and "log-mel L1 0.50" in voc
    assert "--model NAME" in lines[-1]


def test_models_table_when_none_ship(data_dir) -> None:
    assert models_table() == f"no pretrained models ship in this installation (looked in '{data_dir}')"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["speech8k", "speech8k-vocoder"])
def test_shipped_models_lose_little_likelihood_in_the_reduced_weight_modes(name, monkeypatch) -> None:
    """Teacher-forced on the bundled speech (a quarter second of each file), each reduced mode of
    a shipped model stays close to fp32: bf16 within 0.002 bits/sample, int8 within 0.01 (both
    measured near 0.001; with the head's last matrix in 8 bits, int8 cost these models 0.011 and
    0.025 here, and the vocoder 0.033 held out: ``bench/README.md``)."""
    monkeypatch.setenv("WAVEDIL_DATA", str(SHIPPED.parent))
    if not (SHIPPED / name / MODEL_FILE).is_file():
        pytest.skip(f"{name} does not ship in this checkout")
    files = sorted(SPEECH8K.glob("*.wav"))
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # torch's fp32 forward spin-waits on a busy machine: 2 s here, 50 s with 2 threads
    try:
        bits = {w: evaluate_files(f"pretrained:{name}", files, max_seconds=0.25, weights=w, vocode_seconds=0).report.model_bits
                for w in ("fp32", "bf16", "int8")}  # fmt: skip
    finally:
        torch.set_num_threads(before)
    assert 0 <= abs(bits["bf16"] - bits["fp32"]) <= 0.002, bits
    assert abs(bits["int8"] - bits["fp32"]) <= 0.01, bits


def test_the_recipe_readme_regenerates_what_the_cards_say() -> None:
    """``recipes/pretrained/README.md``'s "Regenerate them" block runs the training commands that
    the export presets write into the cards, stage for stage, and evaluates and exports the last
    stage's run folder (it lagged a stage behind the card once, unnoticed)."""
    spec = importlib.util.spec_from_file_location("export_recipe", CHECKOUT / "recipes" / "pretrained" / "export.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    text = (CHECKOUT / "recipes" / "pretrained" / "README.md").read_text()
    block = text.split("## Regenerate them", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    lines = " ".join(line.split("#", 1)[0].strip() for line in block.replace("\\\n", " ").splitlines())
    commands = [" ".join(c.split()) for c in re.split(r"\s(?=wavedil |python )", lines) if c.strip()]
    for name, preset in script.PRESETS.items():
        experiment = "experiment=" + preset["train_command"].split("experiment=", 1)[1].split()[0]
        trained = [" ".join(c.split()) for c in preset["train_command"].split(" && ")[1:]]
        assert [c for c in commands if c.startswith("wavedil train ") and f" {experiment} " in c + " "] == trained, name
        last = re.search(r"hydra\.run\.dir=(\S+)", trained[-1]).group(1)
        assert any(c.startswith(f"wavedil eval {last} ") for c in commands), (name, last)
        assert any(c.startswith(f"python recipes/pretrained/export.py {last} --preset {name} ") for c in commands), name
