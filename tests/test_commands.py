"""The work behind each CLI verb, called in process: generate_to_files, vocode_file, load_mel,
resolve_speaker (wavedil.synthesis), evaluate_files (wavedil.evaluate), describe_model
(wavedil.describe), and the CLI's own part: argument passing, reports, exit status 2.

Tiny random-weight checkpoints, no training: every test here takes well under a second or two.
The real ``wavedil`` CLI in subprocesses is covered by test_cli.py and test_conditioned_cli.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import wavedil.evaluate as evaluate_mod
import wavedil.fast
import wavedil.synthesis as synthesis_mod
from wavedil import WaveNet, WaveNetConfig
from wavedil.audio import decode, encode, read_audio
from wavedil.backends import WEIGHT_MODES
from wavedil.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint
from wavedil.cli import main as cli_main
from wavedil.data import CorpusError, file_mel, iter_file_codes, load_corpus, split_items
from wavedil.describe import describe_model
from wavedil.evaluate import evaluate_codes, evaluate_files
from wavedil.generate import MAX_SAMPLES, generate
from wavedil.synthesis import generate_to_files, load_mel, resolve_speaker, vocode_file

SR = 8000
TINY = dict(residual_channels=8, gate_channels=16, skip_channels=12, head_channels=10, layers_per_stack=3, stacks=2)
MEL = {"sample_rate": SR, "hop_length": 40, "n_fft": 128, "n_mels": 8}


def save_run(folder: Path, **config) -> Path:
    """A run folder holding ``checkpoints/step_00000001.pt`` of a random-weight tiny model at 8 kHz."""
    torch.manual_seed(0)
    model = WaveNet(WaveNetConfig(**{**TINY, **config}))
    path = folder / "checkpoints" / "step_00000001.pt"
    path.parent.mkdir(parents=True)
    torch.save({"model": model.state_dict(), "model_config": model.config.to_dict(), "ema": None,
                "sample_rate": SR, "step": 1}, path)  # fmt: skip
    return folder


def model_of(run: Path) -> WaveNet:
    return model_from_checkpoint(load_checkpoint(next((run / "checkpoints").glob("step_*.pt"))))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return save_run(tmp_path_factory.mktemp("plain"))


@pytest.fixture(scope="module")
def speaker_run(tmp_path_factory) -> Path:
    return save_run(tmp_path_factory.mktemp("spk"), global_cond_classes=3, global_cond_channels=4,
                    speakers=("p225", "p226", "p227"))  # fmt: skip


@pytest.fixture(scope="module")
def vocoder_run(tmp_path_factory) -> Path:
    return save_run(tmp_path_factory.mktemp("voc"), mel=MEL)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Four 0.1 s files of tones and noise, two at 16 kHz (resampled when read at 8 kHz)."""
    root = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    for i in range(4):
        rate = 16000 if i % 2 else SR
        t = np.arange(rate // 10) / rate
        x = 0.5 * np.sin(2 * np.pi * (200 + 70 * i) * t) + 0.05 * rng.standard_normal(t.size)
        sf.write(root / f"utt{i}.wav", x.astype(np.float32), rate, subtype="PCM_16")
    return root


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ----------------------------------------------------------------------------- generate_to_files


def test_generate_to_files_writes_the_codes_it_sampled(run_dir, tmp_path):
    res = generate_to_files(run_dir, tmp_path / "g" / "out.wav", 0.02, batch=2, seed=3, backend="torch")
    assert [p.name for p in res.paths] == ["out_000.wav", "out_001.wav"]
    assert res.codes.shape == (2, 160) and res.sample_rate == SR and res.seed == 3
    assert res.backend == "torch" and res.weights == "fp32" and res.seconds == pytest.approx(0.02)
    assert res.real_time_factor == pytest.approx(SR * 2 / res.samples_per_second)
    model = model_of(run_dir)
    assert torch.equal(res.codes, generate(model, 160, batch_size=2, seed=3).codes)  # same seed, same codes
    for path, codes in zip(res.paths, res.codes):
        data, rate = sf.read(path, dtype="float32")
        assert rate == SR and data.shape == (160,)
        np.testing.assert_allclose(data, decode(codes, model.encoding, 256).numpy(), atol=1 / 32768)


def test_generate_to_files_continues_the_prompt(run_dir, corpus, tmp_path):
    prompt = corpus / "utt1.wav"  # 16 kHz: resampled to the model's 8 kHz
    model = model_of(run_dir)
    primed = encode(read_audio(prompt, sample_rate=SR)[0], model.encoding, 256)  # (P,)
    res = generate_to_files(run_dir, tmp_path / "p.wav", 0.02, seed=3, prompt=prompt, temperature=0, backend="torch")
    assert sf.info(res.paths[0]).frames == 160 and res.codes.shape == (1, 160)
    # Greedy continuation: each written code is the argmax of the model fed the prompt and the codes before it.
    seq = torch.cat([primed, res.codes[0]]).unsqueeze(0)  # (1, P + 160)
    logits = model(seq[:, :-1])  # (1, Q, P + 159)
    assert torch.equal(logits[0, :, primed.numel() - 1 :].argmax(0), res.codes[0])
    # ... and the prompt matters: without it (or with another one) the same seed gives other codes.
    alone = generate_to_files(run_dir, tmp_path / "n.wav", 0.02, seed=3, temperature=0, backend="torch")
    other = generate_to_files(run_dir, tmp_path / "o.wav", 0.02, seed=3, prompt=corpus / "utt2.wav", temperature=0,
                              backend="torch")  # fmt: skip
    assert not torch.equal(alone.codes, res.codes) and not torch.equal(other.codes, res.codes)
    sampled = generate_to_files(run_dir, tmp_path / "s.wav", 0.02, seed=3, prompt=prompt, backend="torch")
    assert torch.equal(sampled.codes, generate(model, 160, seed=3, prompt=primed).codes)


@pytest.mark.parametrize("rate", [SR, 16000, 44100])
def test_a_long_prompt_is_read_from_a_second_before_its_last_receptive_field(run_dir, tmp_path, rate, monkeypatch):
    """A prompt file of hours was read, resampled and encoded whole, though only its last receptive
    field primes the model. Now it is read from a little before that; the samples wanted are
    those of the whole file read and resampled (exactly without resampling, to float rounding
    with it); a damaged long prompt is still refused."""
    model = model_of(run_dir)
    rf = model.receptive_field
    x = 0.3 * np.random.default_rng(5).standard_normal(5 * rate).astype(np.float32)  # 5 s
    path = tmp_path / "long.wav"
    sf.write(path, x, rate, subtype="FLOAT")
    starts = []
    read = synthesis_mod.read_audio

    def spy(*args, **kwargs):
        starts.append(kwargs.get("start", 0))
        return read(*args, **kwargs)

    monkeypatch.setattr(synthesis_mod, "read_audio", spy)
    notes: list[str] = []
    tail = synthesis_mod._read_at_rate(path, SR, notes, "the prompt", last=rf)
    whole = read(path, sample_rate=SR)[0]
    assert starts[0] > 2 * rate and rf <= tail.numel() < whole.numel() // 2
    if rate == SR:
        assert torch.equal(tail[-rf:], whole[-rf:]) and not notes
    else:
        torch.testing.assert_close(tail[-rf:], whole[-rf:], rtol=0, atol=1e-6)
        assert notes == [f"the prompt '{path}' is at {rate} Hz; resampled to the model's {SR} Hz"]
    data = path.read_bytes()
    (tmp_path / "cut.wav").write_bytes(data[: len(data) - 4 * rate])  # the header says 5 s, the file holds 4
    with pytest.raises(ValueError, match=r"is truncated: its header declares"):
        synthesis_mod._read_at_rate(tmp_path / "cut.wav", SR, [], "the prompt", last=rf)


@pytest.mark.parametrize(
    "kwargs, says",
    [
        (dict(seconds=0), "must be a positive finite number"),
        (dict(seconds=float("nan")), "must be a positive finite number"),
        (dict(seconds=float("inf")), "must be a positive finite number"),
        (dict(seconds=(MAX_SAMPLES + SR) / SR), "the limit is"),
        (dict(seconds=4000, batch=4096), "the limit per run is"),
        (dict(batch=0), "--batch must be in [1, 4096], got 0"),
        (dict(speaker="p225"), "not speaker-conditioned"),
        (dict(weights="fp8"), "fp8"),
    ],
)
def test_generate_to_files_rejects_bad_arguments_before_any_work(run_dir, tmp_path, monkeypatch, kwargs, says):
    monkeypatch.setattr(WaveNet, "step", lambda *a, **k: pytest.fail("generation started"))
    kwargs = {"seconds": 0.01, **kwargs}
    with pytest.raises(ValueError) as err:
        generate_to_files(run_dir, tmp_path / "out.wav", kwargs.pop("seconds"), **kwargs)
    assert says in str(err.value)
    assert not list(tmp_path.glob("out*.wav"))


def test_generate_to_files_output_and_checkpoint_errors(run_dir, vocoder_run, tmp_path):
    (tmp_path / "a_file").write_text("not a folder")
    with pytest.raises(ValueError, match="cannot create the output folder .*a_file"):
        generate_to_files(run_dir, tmp_path / "a_file" / "x.wav", 0.01)
    with pytest.raises(ValueError, match="is a directory"):
        generate_to_files(run_dir, tmp_path, 0.01)
    with pytest.raises(ValueError, match=r"must end in \.wav, \.flac or \.ogg"):
        generate_to_files(run_dir, tmp_path / "x.mp3", 0.01)
    with pytest.raises(CheckpointError, match="nope.pt"):
        generate_to_files(tmp_path / "nope.pt", tmp_path / "x.wav", 0.01)
    with pytest.raises(ValueError, match="is a vocoder .* wavedil vocode"):
        generate_to_files(vocoder_run, tmp_path / "x.wav", 0.01)


def test_weight_mode_reaches_generate(run_dir, tmp_path, monkeypatch):
    seen = []

    def recording(*args, **kwargs):
        seen.append(kwargs["weights"])
        return generate(*args, **{**kwargs, "weights": "fp32", "backend": "torch"})

    monkeypatch.setattr(synthesis_mod, "generate", recording)
    res = generate_to_files(run_dir, tmp_path / "x.wav", 0.01, seed=1, weights="int8")
    assert seen == ["int8"] and res.weights == "fp32"  # the result reports what generate ran


@pytest.mark.parametrize("weights", [w for w in WEIGHT_MODES if w != "fp32"])
def test_reduced_weights_generate_for_real(run_dir, tmp_path, weights):
    res = generate_to_files(run_dir, tmp_path / "x.wav", 0.02, seed=1, weights=weights, backend="fast")
    assert res.weights == weights and res.backend == "fast" and sf.info(res.paths[0]).frames == 160


# ----------------------------------------------------------------------------- speakers


def test_resolve_speaker(run_dir, speaker_run):
    spk = model_of(speaker_run)
    assert resolve_speaker(spk, "p226") == 1 and resolve_speaker(spk, "2") == 2 and resolve_speaker(spk, 0) == 0
    with pytest.raises(ValueError, match=r"unknown speaker 'p999'; this model knows 3: p225, p226, p227"):
        resolve_speaker(spk, "p999")
    with pytest.raises(ValueError, match="unknown speaker '3'"):
        resolve_speaker(spk, 3)
    with pytest.raises(ValueError, match="trained on 3 speakers: pass --speaker with one of p225, p226, p227"):
        resolve_speaker(spk, None)
    plain = model_of(run_dir)
    assert resolve_speaker(plain, None) is None
    with pytest.raises(ValueError, match="not speaker-conditioned"):
        resolve_speaker(plain, "p225")


def test_speaker_conditions_the_files(speaker_run, tmp_path):
    a = generate_to_files(speaker_run, tmp_path / "a.wav", 0.02, seed=1, speaker="p225", backend="torch")
    b = generate_to_files(speaker_run, tmp_path / "b.wav", 0.02, seed=1, speaker="p227", backend="torch")
    assert torch.equal(a.codes, generate(model_of(speaker_run), 160, seed=1, speaker=0).codes)
    assert not torch.equal(a.codes, b.codes)


# ----------------------------------------------------------------------------- vocode_file, load_mel


def test_vocode_file_from_audio_and_from_its_saved_mel(vocoder_run, corpus, tmp_path):
    src = corpus / "utt0.wav"  # 800 samples at 8 kHz: 20 frames of hop 40
    res = vocode_file(vocoder_run, src, tmp_path / "v.wav", seed=2, save_mel=tmp_path / "mel.npy", backend="torch")
    assert sf.info(res.paths[0]).frames == 800 and res.mel_frames == 20 and res.codes.shape == (1, 800)
    model = model_of(vocoder_run)
    wav = read_audio(src, sample_rate=SR)[0]
    mel = file_mel(wav, model.mel_spec, model.mel_context)
    assert torch.equal(res.codes, generate(model, None, seed=2, mel=mel).codes)
    saved = np.load(tmp_path / "mel.npy")
    np.testing.assert_array_equal(saved, mel[:, model.mel_context : mel.shape[-1] - model.mel_context].numpy())
    again = vocode_file(vocoder_run, tmp_path / "mel.npy", tmp_path / "m.wav", seed=2, backend="torch")
    assert again.mel_frames == 20 and sf.info(again.paths[0]).frames == 20 * 40
    with pytest.raises(ValueError, match=r"is 0\.1 s \(20 mel frames\); the limit is --max-seconds 0\.05"):
        vocode_file(vocoder_run, src, tmp_path / "x.wav", max_seconds=0.05)


def test_vocode_progress_ends_at_its_total_with_a_partial_last_frame(vocoder_run, tmp_path):
    src = tmp_path / "odd.wav"  # 810 samples: 20 whole frames of hop 40 and 10 samples of a 21st
    sf.write(src, (0.1 * np.sin(np.arange(810) / 7.0)).astype(np.float32), SR, subtype="PCM_16")
    calls = []
    res = vocode_file(vocoder_run, src, tmp_path / "v.wav", seed=0, backend="torch", progress=lambda d, n: calls.append((d, n)))
    assert res.codes.shape == (1, 810) and calls
    assert calls[-1][0] == calls[-1][1] == 21 * 40  # generated: whole frames, then cut to the input's length
    assert all(d <= n for d, n in calls)


def test_vocode_file_refuses_a_model_without_mel(run_dir, corpus, tmp_path):
    with pytest.raises(ValueError, match="is not a vocoder"):
        vocode_file(run_dir, corpus / "utt0.wav", tmp_path / "x.wav")


def test_load_mel_checks_what_it_reads(vocoder_run, tmp_path):
    spec = model_of(vocoder_run).mel_spec
    mel = np.random.default_rng(0).standard_normal((8, 5)).astype(np.float32)
    np.save(tmp_path / "ok.npy", mel)
    assert torch.equal(load_mel(tmp_path / "ok.npy", spec), torch.from_numpy(mel))
    np.savez(tmp_path / "ok.npz", mel=mel, hop_length=40, sample_rate=SR)
    assert load_mel(tmp_path / "ok.npz", spec).shape == (8, 5)
    np.save(tmp_path / "bands.npy", mel[:5])
    with pytest.raises(ValueError, match=r"\(8, frames\).*float32 \(5, 5\)"):
        load_mel(tmp_path / "bands.npy", spec)
    np.savez(tmp_path / "hop.npz", mel=mel, hop_length=80)
    with pytest.raises(ValueError, match="hop_length=80 but this vocoder expects hop_length=40"):
        load_mel(tmp_path / "hop.npz", spec)
    np.savez(tmp_path / "nomel.npz", x=mel)
    with pytest.raises(ValueError, match="no array named 'mel'"):
        load_mel(tmp_path / "nomel.npz", spec)
    bad = mel.copy()
    bad[0, 0] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    with pytest.raises(ValueError, match="NaN or infinite"):
        load_mel(tmp_path / "nan.npy", spec)
    (tmp_path / "junk.npy").write_text("junk")
    with pytest.raises(ValueError, match=r"junk\.npy. is neither a \.npy nor a \.npz file"):
        load_mel(tmp_path / "junk.npy", spec)


# ----------------------------------------------------------------------------- evaluate_files


def test_evaluate_files_equals_evaluate_codes_over_the_corpus(run_dir, corpus):
    result = evaluate_files(run_dir, [corpus])
    model = model_of(run_dir)
    items = load_corpus(corpus)
    ref = evaluate_codes(model, ((str(it.path), c) for it, c in iter_file_codes(items, SR)))
    assert result.report.n_files == 4 and result.report.n_samples == 4 * 800 - 4
    assert result.report.to_dict() == ref.to_dict()
    assert result.log_mel_distance is None and result.to_dict()["weights"] == "fp32"
    assert result.notes == [f"2 file(s) at 16000 Hz (e.g. '{corpus / 'utt1.wav'}') were resampled to the model's 8000 Hz"]
    # one file, given as a file; and the two sides of the split, which add up to the whole
    one = evaluate_files(run_dir, [corpus / "utt2.wav"], max_seconds=0.05)
    assert one.report.n_files == 1 and one.report.n_samples == 399
    assert one.notes == [] and "notes" not in one.to_dict()  # a file at the model's rate
    train = evaluate_files(run_dir, [corpus], split="train", valid_fraction=0.3)
    valid = evaluate_files(run_dir, [corpus], split="valid", valid_fraction=0.3)
    names = {f["file"] for f in train.to_dict()["per_file"]} | {f["file"] for f in valid.to_dict()["per_file"]}
    assert names == {str(it.path) for it in items} and len(valid.report.per_file) == len(split_items(items, 0.3)[1])


def test_evaluate_files_argument_errors(run_dir, speaker_run, corpus, tmp_path):
    with pytest.raises(ValueError, match="split must be one of"):
        evaluate_files(run_dir, [corpus], split="test")
    with pytest.raises(CorpusError, match=r"missing' does not exist: check the path"):
        evaluate_files(run_dir, [tmp_path / "missing"])
    (tmp_path / "dangling.wav").symlink_to(tmp_path / "gone.wav")
    with pytest.raises(CorpusError, match=r"dangling\.wav' is a broken link"):
        evaluate_files(run_dir, [tmp_path / "dangling.wav"])
    with pytest.raises(CorpusError, match="neither an audio file nor a folder"):
        evaluate_files(run_dir, ["/dev/null"])
    with pytest.raises(ValueError, match=r"speakers \['None'\] that the model does not know"):
        evaluate_files(speaker_run, [corpus])


def test_eval_weight_mode_goes_through_the_fast_teacher_forcing(run_dir, corpus, monkeypatch):
    seen = []

    def forward_instead(model, codes, speaker=None, mel=None, weights="fp32"):
        seen.append((weights, tuple(codes.shape)))
        return model(codes, speaker, mel)  # (B, P, T): what the fp32 path computes

    monkeypatch.setattr(wavedil.fast, "teacher_forced_logits", forward_instead)
    fp32 = evaluate_files(run_dir, [corpus])
    assert not seen  # fp32 keeps the model's own (streamed) forward
    int8 = evaluate_files(run_dir, [corpus], weights="int8")
    assert [w for w, _ in seen] == ["int8"] * 4 and seen[0][1] == (1, 799)
    assert int8.report.n_samples == fp32.report.n_samples and int8.weights == "int8"
    assert int8.report.model_bits == pytest.approx(fp32.report.model_bits, abs=1e-4)
    assert "(model weights in int8)" in int8.table()


@pytest.mark.parametrize("weights", [w for w in WEIGHT_MODES if w != "fp32"])
def test_eval_reduced_weights_for_real(run_dir, corpus, weights):
    fp32 = evaluate_files(run_dir, [corpus], max_seconds=0.05).report.model_bits
    reduced = evaluate_files(run_dir, [corpus], max_seconds=0.05, weights=weights).report.model_bits
    assert reduced == pytest.approx(fp32, abs=0.05)  # rounded weights of a random model: nearly the same bits


def test_evaluate_files_of_a_vocoder_adds_the_log_mel_distance(vocoder_run, corpus, monkeypatch):
    result = evaluate_files(vocoder_run, [corpus], vocode_seconds=0.05)
    assert result.vocoded_files == 4 and result.log_mel_distance > 0
    assert 0 < result.log_mel_baselines["codec"] < result.log_mel_baselines["other_file"]
    figures = result.to_dict()
    assert figures["log_mel_distance"] == result.log_mel_distance and "log-mel L1 distance" in result.table()
    assert evaluate_files(vocoder_run, [corpus], vocode_seconds=0).log_mel_distance is None
    greedy = evaluate_files(vocoder_run, [corpus], vocode_seconds=0.05, temperature=0)
    assert greedy.log_mel_distance != result.log_mel_distance  # the temperature reaches the sampling
    assert greedy.report.model_bits == result.report.model_bits  # and not the likelihood
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        evaluate_files(vocoder_run, [corpus], vocode_seconds=0.05, temperature=-1)
    seen = []  # the weight mode and the temperature reach the re-synthesis too
    monkeypatch.setattr(evaluate_mod, "vocode_distance", lambda *a: seen.append(a[-2:]) or (1.0, [("f", 1.0)]))
    monkeypatch.setattr(wavedil.fast, "teacher_forced_logits", lambda m, c, s, mel, weights: m(c, s, mel))
    evaluate_files(vocoder_run, [corpus], vocode_seconds=0.05, weights="bf16", temperature=0.7)
    assert seen == [("bf16", 0.7)]


def test_vocoder_fp32_and_fast_teacher_forcing_paths_agree(vocoder_run, corpus, monkeypatch):
    """The non-fp32 path pads the inputs to whole mel frames; fed the model's forward it must give the fp32 bits."""
    monkeypatch.setattr(wavedil.fast, "teacher_forced_logits", lambda m, c, s, mel, weights: m(c, s, mel))
    a = evaluate_files(vocoder_run, [corpus], max_seconds=0.0333, vocode_seconds=0).report  # 266 samples: not whole frames
    b = evaluate_files(vocoder_run, [corpus], max_seconds=0.0333, vocode_seconds=0, weights="bf16").report
    assert a.n_samples == b.n_samples == 4 * 266
    assert b.model_bits == pytest.approx(a.model_bits, abs=1e-4)


# ----------------------------------------------------------------------------- describe_model


def test_describe_model_of_a_config_and_of_a_checkpoint(run_dir):
    d = describe_model("ref30", 16000)
    assert d.receptive_field == 3070 and d.parameters == 1_267_328 and d.dilations[:12] == [1, 2, 4, 8, 16, 32, 64,
                                                                                            128, 256, 512, 1, 2]  # fmt: skip
    assert "3070 samples = 191.9 ms at 16000 Hz" in d.text()
    c = describe_model(run_dir)
    assert c.source == "checkpoint at step 1" and c.sample_rate == SR
    assert c.parameters == model_of(run_dir).num_parameters()
    with pytest.raises(ValueError, match=r"neither a checkpoint .*'ref30'"):
        describe_model("nonexistent_model")
    with pytest.raises(ValueError, match="sample_rate must be a positive integer"):
        describe_model("tiny", 0)


# ----------------------------------------------------------------------------- the CLI's own part


def run_main(*argv: str) -> int:
    try:
        cli_main(list(argv))
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def test_cli_passes_weights_and_reports_them(run_dir, vocoder_run, corpus, tmp_path, monkeypatch, capsys):
    calls = {}

    def spy(name, real):
        def wrapper(*args, **kwargs):
            calls[name] = kwargs["weights"]
            return real(*args, **{**kwargs, "weights": "fp32"})

        return wrapper

    monkeypatch.setattr(synthesis_mod, "generate_to_files", spy("generate", generate_to_files))
    monkeypatch.setattr(synthesis_mod, "vocode_file", spy("vocode", vocode_file))
    monkeypatch.setattr(evaluate_mod, "evaluate_files", spy("eval", evaluate_files))
    assert run_main("generate", str(run_dir), "-o", str(tmp_path / "g.wav"), "--seconds", "0.01", "--weights", "int8",
                    "--quiet", "--backend", "torch") == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "samples/s with the torch backend (fp32 weights), real-time factor" in out
    assert run_main("vocode", str(vocoder_run), str(corpus / "utt0.wav"), "-o", str(tmp_path / "v.wav"), "--weights",
                    "bf16", "--quiet") == 0  # fmt: skip
    assert run_main("eval", str(run_dir), str(corpus), "--weights", "bf16", "--json") == 0
    assert calls == {"generate": "int8", "vocode": "bf16", "eval": "bf16"}
    capsys.readouterr()
    assert run_main("generate", str(run_dir), "-o", str(tmp_path / "g.wav"), "--weights", "fp8") == 2
    assert "invalid choice: 'fp8'" in capsys.readouterr().err


def test_cli_eval_prints_what_evaluate_files_computes(run_dir, corpus, capsys):
    assert run_main("eval", str(run_dir), str(corpus), "--json") == 0
    lines = capsys.readouterr().out.strip().splitlines()
    expected = evaluate_files(run_dir, [corpus])
    assert "\n".join(lines[:-1]) == expected.table() and json.loads(lines[-1]) == expected.to_dict()


def test_cli_errors_are_one_paragraph_with_status_2(run_dir, speaker_run, tmp_path, capsys):
    assert run_main("generate", str(speaker_run), "-o", str(tmp_path / "x.wav"), "--speaker", "p999") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown speaker 'p999'") and "Traceback" not in err and err.count("\n") == 1
    assert run_main("generate", str(run_dir), "-o", str(tmp_path / "x.wav"), "--seconds", "nan") == 2
    assert "must be a positive finite number" in capsys.readouterr().err
    with pytest.raises(ValueError, match="positive finite"):  # --debug: the exception itself
        cli_main(["--debug", "generate", str(run_dir), "-o", str(tmp_path / "x.wav"), "--seconds", "nan"])


def test_generate_progress_reports_plain_lines_off_a_terminal(run_dir, tmp_path, capsys):
    assert run_main("generate", str(run_dir), "-o", str(tmp_path / "x.wav"), "--seconds", "0.1", "--backend", "torch") == 0
    err = capsys.readouterr().err
    assert "generate: 800/800 sample (100.0%)" in err and "\r" not in err
    assert run_main("generate", str(run_dir), "-o", str(tmp_path / "x.wav"), "--seconds", "0.1", "--quiet") == 0
    assert "sample" not in capsys.readouterr().err


def test_eval_split_of_part_of_the_runs_corpus_keeps_each_file_on_its_training_side(tmp_path):
    """Before: the split was recomputed over the given files only, so evaluating two files (or a
    subfolder) of the run's corpus with --split valid could report a training file as held out."""
    from wavedil.checkpoint import save_checkpoint

    corpus = tmp_path / "corpus"
    (corpus / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(12):
        folder = corpus / "sub" if i % 2 else corpus
        sf.write(folder / f"utt{i}.wav", (0.3 * rng.standard_normal(200)).astype(np.float32), SR, subtype="PCM_16")
    run = tmp_path / "run"
    torch.manual_seed(0)
    model = WaveNet(WaveNetConfig(**TINY))
    save_checkpoint({"format": 1, "model": model.state_dict(), "model_config": model.config.to_dict(), "step": 1,
                     "sample_rate": SR, "config": {"data": {"root": str(corpus), "valid_fraction": 0.25}}},
                    run / "checkpoints" / "step_00000001.pt")  # fmt: skip
    train, valid = split_items(load_corpus(corpus), valid_fraction=0.25)
    held = {str(it.path) for it in valid}
    names = lambda res: {f["file"] for f in res.to_dict()["per_file"]}  # noqa: E731
    one_valid = sorted(held)[0]
    two_train = sorted(str(it.path) for it in train)[:2]
    # a held-out file and two training files: only the held-out one is on the valid side
    res = evaluate_files(run, [one_valid, *two_train], split="valid")
    assert names(res) == {one_valid} and res.notes == []
    assert names(evaluate_files(run, [one_valid, *two_train], split="train")) == set(two_train)
    # the subfolder: its files keep their sides too (among themselves they would split otherwise)
    sub_valid = {p for p in held if "/sub/" in p}
    assert sub_valid and len(sub_valid) < len(held)  # this corpus: held-out files on both levels
    assert names(evaluate_files(run, [corpus / "sub"], split="valid")) == sub_valid
    with pytest.raises(ValueError, match="nothing to evaluate"):  # training files only: none held out
        evaluate_files(run, two_train, split="valid")
    # files outside the run's corpus are split among themselves, and a note says so
    outside = tmp_path / "other"
    outside.mkdir()
    for i in range(3):
        sf.write(outside / f"o{i}.wav", (0.3 * rng.standard_normal(200)).astype(np.float32), SR, subtype="PCM_16")
    res = evaluate_files(run, [outside], split="valid")
    assert len(res.report.per_file) == 1
    assert res.notes == ["--split valid: the files are not all in the run's corpus folder, so the given files were split "
                         "among themselves (by name, at least one held out); that is the run's split only when they "
                         "are its whole corpus"]  # fmt: skip
