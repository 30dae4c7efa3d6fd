"""Integration: heads, speakers and the mel vocoder through the real `wavedil` CLI (tiny models)."""

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from test_cli import TINY, _ckpts, assert_eval_table_matches, run
from wavedil.checkpoint import load_checkpoint, model_from_checkpoint
from wavedil.conditioning import log_mel
from wavedil.data import file_mel
from wavedil.evaluate import evaluate_files
from wavedil.generate import generate

pytestmark = pytest.mark.slow


def _tones(root: Path, speakers: dict[str, float], files: int = 3, rate: int = 8000, layout: str = "vctk") -> Path:
    rng = np.random.default_rng(0)
    for spk, f0 in speakers.items():
        folder = root / "wav48" / spk if layout == "vctk" else root
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(files):
            t = np.arange(rate) / rate
            x = 0.4 * np.sin(2 * np.pi * f0 * (1 + 0.1 * i) * t) + 0.02 * rng.standard_normal(t.size)
            sf.write(folder / f"{spk}_{i:03d}.wav", x.astype(np.float32), rate, subtype="PCM_16")
    return root


def test_mol_and_gaussian_heads_train_generate_and_eval(tmp_path):
    corpus = _tones(tmp_path / "c", {"a": 220.0, "b": 330.0}, layout="folder")
    for head in ("mol", "gaussian"):
        run_dir = tmp_path / head
        run("train", *TINY, "data=folder", f"data.root={corpus}", "data.sample_rate=8000", f"model.output={head}",
            "model.mixtures=3", f"hydra.run.dir={run_dir}", cwd=tmp_path)  # fmt: skip
        ckpt = load_checkpoint(_ckpts(run_dir)[-1])
        assert ckpt["model_config"]["output"] == head and ckpt["model_config"]["quantization_channels"] == 65536
        out = tmp_path / f"{head}.wav"
        run("generate", str(run_dir), "-o", str(out), "--seconds", "0.05", "--seed", "3", "--quiet", cwd=tmp_path)
        x, sr = sf.read(out, dtype="int16")
        assert sr == 8000 and x.shape == (400,)
        proc = run("eval", str(run_dir), str(corpus), "--json", cwd=tmp_path)
        report = json.loads(proc.stdout.strip().splitlines()[-1])
        # the same checkpoint evaluated in process on the same files: the same figures
        expected = evaluate_files(run_dir, [corpus])
        assert_eval_table_matches(proc.stdout, expected.report)
        assert report["files"] == 6 and report["samples"] == expected.report.n_samples
        assert report["model_bits_per_sample"] == pytest.approx(expected.report.model_bits, abs=5e-4)
        assert report["bz2_bits_per_sample"] == expected.report.bz2_bits > 0


def test_speaker_conditioned_training_and_generation(tmp_path):
    corpus = _tones(tmp_path / "vctk", {"p225": 200.0, "p226": 400.0, "p227": 600.0})
    run_dir = tmp_path / "run"
    run("train", *TINY, "data=vctk", f"data.root={corpus}", "data.sample_rate=8000", "data.trim_silence_db=null",
        "data.num_workers=0", "model.global_cond_channels=4", f"hydra.run.dir={run_dir}", cwd=tmp_path)  # fmt: skip
    ckpt = load_checkpoint(_ckpts(run_dir)[-1])
    assert ckpt["model_config"]["speakers"] == ["p225", "p226", "p227"]
    assert ckpt["model_config"]["global_cond_classes"] == 3
    model = model_from_checkpoint(ckpt)
    # the speaker really conditions the output: same seed, other speaker, other samples
    a = generate(model, 200, seed=1, speaker=0).codes
    b = generate(model, 200, seed=1, speaker=2).codes
    assert not torch.equal(a, b)

    out = tmp_path / "p226.wav"
    run("generate", str(run_dir), "-o", str(out), "--seconds", "0.05", "--speaker", "p226", "--seed", "1",
        "--quiet", cwd=tmp_path)  # fmt: skip
    assert sf.info(out).frames == 400
    bad = run("generate", str(run_dir), "-o", str(out), "--speaker", "p999", check=False, cwd=tmp_path)
    assert bad.returncode == 2 and "unknown speaker 'p999'" in bad.stderr and "p225, p226, p227" in bad.stderr
    missing = run("generate", str(run_dir), "-o", str(out), check=False, cwd=tmp_path)
    assert missing.returncode == 2 and "--speaker" in missing.stderr
    ev = run("eval", str(run_dir), str(corpus), "--layout", "vctk", cwd=tmp_path)
    assert_eval_table_matches(ev.stdout, evaluate_files(run_dir, [corpus], layout="vctk").report)


@pytest.fixture(scope="module")
def vocoder_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("vocoder")
    corpus = _tones(tmp / "c", {"a": 220.0, "b": 330.0}, layout="folder")
    run_dir = tmp / "run"
    run("train", *TINY, "data=folder", f"data.root={corpus}", "data.sample_rate=8000", "data.segment_length=320",
        "model.mel={hop_length:40,n_fft:128,n_mels:8}", f"hydra.run.dir={run_dir}", cwd=tmp)  # fmt: skip
    return tmp, corpus, run_dir


def test_vocoder_trains_with_saved_normalisation(vocoder_run):
    _, corpus, run_dir = vocoder_run
    ckpt = load_checkpoint(_ckpts(run_dir)[-1])
    assert ckpt["model_config"]["mel"]["hop_length"] == 40 and ckpt["model_config"]["mel"]["sample_rate"] == 8000
    assert "mel_mean" in ckpt["model"] and float(ckpt["model"]["mel_std"].min()) > 0
    assert float(ckpt["model"]["mel_mean"].abs().sum()) > 0  # fitted on the corpus, not the initial zeros


def test_vocoder_cached_generation_equals_full_forward(vocoder_run):
    _, corpus, run_dir = vocoder_run
    model = model_from_checkpoint(load_checkpoint(_ckpts(run_dir)[-1]))
    wav = torch.from_numpy(sf.read(sorted(corpus.glob("*.wav"))[0], dtype="float32")[0][:400])
    mel = file_mel(wav, model.mel_spec, model.mel_context).unsqueeze(0)
    res = generate(model, None, mel=mel, seed=0)
    assert res.codes.shape == (1, 400)
    # teacher-force the generated samples through the full forward: the same per-step logits
    inputs = torch.cat([torch.full((1, 1), model.silence_code), res.codes[:, :-1]], dim=1)
    full = model(inputs, mel=mel)  # (1, Q, 400)
    state = model.init_state(1)
    local = model.upsample(mel)
    steps = []
    for t in range(400):
        out, state = model.step(inputs[:, t : t + 1], state, local=local[:, :, t : t + 1])
        steps.append(out)
    torch.testing.assert_close(torch.cat(steps, dim=2), full, atol=1e-4, rtol=0)


def test_vocode_command_from_audio_and_from_saved_mel(vocoder_run):
    tmp, corpus, run_dir = vocoder_run
    src = sorted(corpus.glob("*.wav"))[0]
    out, mel_path = tmp / "vocoded.wav", tmp / "mel.npy"
    run("vocode", str(run_dir), str(src), "-o", str(out), "--seed", "2", "--save-mel", str(mel_path), cwd=tmp)
    assert sf.info(out).frames == sf.info(src).frames and sf.info(out).samplerate == 8000
    mel = np.load(mel_path)
    ref = log_mel(torch.from_numpy(sf.read(src, dtype="float32")[0]), model_from_checkpoint(
        load_checkpoint(_ckpts(run_dir)[-1])).mel_spec)  # fmt: skip
    np.testing.assert_allclose(mel, ref.numpy(), atol=1e-5)
    out2 = tmp / "from_mel.wav"
    run("vocode", str(run_dir), str(mel_path), "-o", str(out2), "--seed", "2", cwd=tmp)
    assert sf.info(out2).frames == mel.shape[1] * 40

    # one user error through the real CLI; the others are checked in process (test_commands.py)
    np.savez(tmp / "hop.npz", mel=mel, hop_length=80)
    proc = run("vocode", str(run_dir), str(tmp / "hop.npz"), "-o", str(out2), check=False, cwd=tmp)
    assert proc.returncode == 2 and "hop_length=80" in proc.stderr and "hop_length=40" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_eval_reports_log_mel_distance_for_vocoders(vocoder_run):
    tmp, corpus, run_dir = vocoder_run
    proc = run("eval", str(run_dir), str(corpus), "--vocode-seconds", "0.1", "--max-seconds", "0.2", "--json", cwd=tmp)
    assert "log-mel L1 distance" in proc.stdout
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["log_mel_distance"] > 0 and report["files"] == 6
    refs = report["log_mel_distance_baselines"]  # the quantisation floor lies far below another file
    assert 0 < refs["codec"] < refs["other_file"] / 2, refs
    expected = evaluate_files(run_dir, [corpus], vocode_seconds=0.1, max_seconds=0.2)  # in process, same seed
    assert_eval_table_matches(proc.stdout, expected.report)
    assert f"re-synthesised            {expected.log_mel_distance:.3f}" in proc.stdout
    assert refs == pytest.approx(expected.log_mel_baselines, abs=1e-6)


def test_mel_that_does_not_fit_is_a_clear_error(vocoder_run):
    _, _, run_dir = vocoder_run
    model = model_from_checkpoint(load_checkpoint(_ckpts(run_dir)[-1]))
    ctx = model.mel_context
    with pytest.raises(ValueError, match=r"need 10 frames \+ 2 x \d+ context"):
        model(torch.zeros(1, 400, dtype=torch.long), mel=torch.zeros(1, 8, 9 + 2 * ctx))
    with pytest.raises(ValueError, match=r"\(B, 8, frames\).*\(1, 6, "):
        model(torch.zeros(1, 400, dtype=torch.long), mel=torch.zeros(1, 6, 10 + 2 * ctx))
    with pytest.raises(ValueError, match="vocoder conditioned on 8-band log-mel frames"):
        model(torch.zeros(1, 400, dtype=torch.long))
    with pytest.raises(ValueError, match="at most 400"):
        generate(model, 401, mel=torch.zeros(8, 10 + 2 * ctx))


def test_vocode_stream_from_a_pipe_equals_whole_file_vocoding(vocoder_run):
    """`vocode --stream` fed .npy chunks on standard input writes what `vocode` writes for the
    whole saved mel (same seed); with `-o -` the 16-bit PCM arrives on standard output."""
    import io
    import os
    import subprocess
    import sys

    from test_cli import REPO

    tmp, corpus, run_dir = vocoder_run
    src = sorted(corpus.glob("*.wav"))[0]
    mel_path, whole = tmp / "s_mel.npy", tmp / "s_whole.wav"
    run("vocode", str(run_dir), str(src), "-o", str(tmp / "s_first.wav"), "--save-mel", str(mel_path), cwd=tmp)
    run("vocode", str(run_dir), str(mel_path), "-o", str(whole), "--seed", "4", cwd=tmp)
    mel = np.load(mel_path)
    chunks = io.BytesIO()
    for lo in range(0, mel.shape[1], 3):  # 3 frames per chunk
        np.save(chunks, mel[:, lo : lo + 3])
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def stream(output: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "wavedil", "vocode", str(run_dir), "-", "-o", output, "--stream", "--seed", "4"]
        return subprocess.run(cmd, input=chunks.getvalue(), capture_output=True, timeout=300, env=env, cwd=tmp)

    proc = stream(str(tmp / "s_stream.wav"))
    assert proc.returncode == 0, proc.stderr.decode()
    assert b"look-ahead" in proc.stderr and b"real-time factor" in proc.stderr
    a, b = sf.read(whole, dtype="int16")[0], sf.read(tmp / "s_stream.wav", dtype="int16")[0]
    assert a.shape == (mel.shape[1] * 40,) and np.array_equal(a, b)
    raw = stream("-")
    assert raw.returncode == 0, raw.stderr.decode()
    pcm = np.frombuffer(raw.stdout, dtype="<i2")
    assert np.array_equal(pcm, a)
    bad = subprocess.run([sys.executable, "-m", "wavedil", "vocode", str(run_dir), "-", "-o", "-", "--stream"],
                         input=b"not a npy", capture_output=True, timeout=300, env=env, cwd=tmp)  # fmt: skip
    assert bad.returncode == 2 and b"not a .npy array" in bad.stderr and b"Traceback" not in bad.stderr
