"""Integration: the real `wavedil` CLI trains, resumes, generates, evaluates and reports errors.

Each verb runs here as a subprocess, and what it prints or writes is checked against the library
function behind it called in process (wavedil.synthesis, wavedil.evaluate); the functions
themselves are tested in test_commands.py.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from wavedil.checkpoint import load_checkpoint
from wavedil.evaluate import EvalReport, evaluate_files
from wavedil.synthesis import generate_to_files

REPO = Path(__file__).resolve().parents[1]
TINY = ["model=tiny", "trainer=debug", "data.segment_length=300", "data.batch_size=2", "data.valid_segments=4"]


def run(*args, cwd=None, check=True, env=None):
    proc = subprocess.run(
        [sys.executable, "-m", "wavedil", *args],
        cwd=cwd, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"wavedil {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def synth_corpus(tmp_path_factory) -> Path:
    """Six short files of tones and noise at 16 kHz (resampled to 8 kHz by the data pipeline)."""
    root = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    for i in range(6):
        t = np.arange(16000 * (1 + i % 2)) / 16000
        x = 0.5 * np.sin(2 * np.pi * (200 + 50 * i) * t) + 0.05 * rng.standard_normal(t.size)
        sub = root / f"spk{i % 2}"
        sub.mkdir(exist_ok=True)
        sf.write(sub / f"utt{i}.wav", x.astype(np.float32), 16000, subtype="PCM_16")
    return root


def _ckpts(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "checkpoints").glob("step_*.pt"))


def assert_eval_table_matches(stdout: str, report: EvalReport) -> None:
    """The figures ``wavedil eval`` printed equal ``report`` (computed in process) to the printed precision."""
    m = re.search(r"^(\d+) files, ([\d,]+) predicted samples$", stdout, re.M)
    assert m, stdout
    assert int(m.group(1)) == report.n_files and int(m.group(2).replace(",", "")) == report.n_samples
    rows = dict(re.findall(r"^  (model|bz2 of the codes|unigram entropy) +(\d+\.\d{3}) bits/sample$", stdout, re.M))
    assert rows == {
        "model": f"{report.model_bits:.3f}",
        "bz2 of the codes": f"{report.bz2_bits:.3f}",
        "unigram entropy": f"{report.unigram_bits:.3f}",
    }, stdout


@pytest.mark.slow
def test_train_resume_generate_on_generated_audio(synth_corpus, tmp_path):
    run_dir = tmp_path / "run"
    args = [*TINY, "data=folder", f"data.root={synth_corpus}", "data.sample_rate=8000", "data.num_workers=0",
            f"hydra.run.dir={run_dir}"]
    out = run("train", *args, cwd=tmp_path)
    assert "valid" in out.stdout
    assert [p.name for p in _ckpts(run_dir)] == ["step_00000003.pt", "step_00000006.pt"]
    assert list((run_dir / "tb").iterdir()), "no TensorBoard events written"
    run("train", *args, "trainer.max_steps=9", "trainer.resume=true", cwd=tmp_path)
    ckpt = load_checkpoint(_ckpts(run_dir)[-1])
    assert ckpt["step"] == 9 and ckpt["sample_rate"] == 8000
    assert [p.name for p in _ckpts(run_dir)] == ["step_00000006.pt", "step_00000009.pt"]  # keep_last=2

    wav = tmp_path / "gen" / "out.wav"
    out = run("generate", str(_ckpts(run_dir)[-1]), "-o", str(wav), "--seconds", "0.1", "--batch", "2",
              "--seed", "3", "--quiet")
    assert re.search(r"samples/s with the \w+ backend \(fp32 weights\), real-time factor \d+\.\d\d \(seed 3, temperature 1\)", out.stdout)
    for name in ("out_000.wav", "out_001.wav"):
        data, sr = sf.read(wav.parent / name)
        assert sr == 8000 and data.shape == (800,)
        assert np.isfinite(data).all() and np.abs(data).max() <= 1.0
    # --prompt: the file continues the prompt, i.e. holds what the library writes for the same
    # prompt and seed, which differs from the same seed without a prompt
    ckpt_path, prompt = _ckpts(run_dir)[-1], sorted(synth_corpus.rglob("*.wav"))[0]
    run("generate", str(ckpt_path), "-o", str(tmp_path / "prompted.wav"), "--seconds", "0.1", "--seed", "3",
        "--quiet", "--backend", "torch", "--prompt", str(prompt))  # fmt: skip
    cli_wav, sr = sf.read(tmp_path / "prompted.wav", dtype="int16")
    assert sr == 8000 and cli_wav.shape == (800,)
    same = generate_to_files(ckpt_path, tmp_path / "lib" / "prompted.wav", 0.1, seed=3, prompt=prompt, backend="torch")
    alone = generate_to_files(ckpt_path, tmp_path / "lib" / "alone.wav", 0.1, seed=3, backend="torch")
    np.testing.assert_array_equal(cli_wav, sf.read(same.paths[0], dtype="int16")[0])
    assert not np.array_equal(cli_wav, sf.read(alone.paths[0], dtype="int16")[0])

    out = run("eval", str(ckpt_path), str(synth_corpus))
    assert "bz2" in out.stdout and "unigram" in out.stdout and "6 files" in out.stdout
    assert_eval_table_matches(out.stdout, evaluate_files(ckpt_path, [synth_corpus]).report)


@pytest.mark.slow
def test_resume_is_exact(synth_corpus, tmp_path):
    base = [*TINY, "data=folder", f"data.root={synth_corpus}", "data.sample_rate=8000", "trainer.ckpt_every=3", "trainer.threads=1",
            "trainer.valid_every=100", "trainer.sample_every=0"]
    run("train", *base, f"hydra.run.dir={tmp_path / 'straight'}", cwd=tmp_path)
    run("train", *base, "trainer.max_steps=3", f"hydra.run.dir={tmp_path / 'split'}", cwd=tmp_path)
    run("train", *base, "trainer.resume=true", f"hydra.run.dir={tmp_path / 'split'}", cwd=tmp_path)
    a = load_checkpoint(_ckpts(tmp_path / "straight")[-1])
    b = load_checkpoint(_ckpts(tmp_path / "split")[-1])
    assert a["step"] == b["step"] == 6
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
        assert torch.equal(a["ema"][k], b["ema"][k]), k


@pytest.mark.slow
def test_train_on_bundled_speech(tmp_path):
    run_dir = tmp_path / "run"
    run("train", *TINY, "trainer.max_steps=3", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert _ckpts(run_dir)[-1].name == "step_00000003.pt"


def test_errors_are_one_paragraph_without_traceback(tmp_path, synth_corpus):
    p = run("train", "data=folder", f"data.root={tmp_path / 'missing'}", cwd=tmp_path, check=False)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "missing" in p.stderr and "does not exist" in p.stderr

    (tmp_path / "empty").mkdir()
    p = run("train", "data=folder", f"data.root={tmp_path / 'empty'}", cwd=tmp_path, check=False)
    assert p.returncode == 2 and "empty" in p.stderr and "Traceback" not in p.stderr

    p = run("train", "model=nonexistent", cwd=tmp_path, check=False)
    assert p.returncode != 0 and "model/nonexistent" in p.stderr and "tiny" in p.stderr

    p = run("generate", str(tmp_path / "nope.pt"), "-o", str(tmp_path / "x.wav"), check=False)
    assert p.returncode == 2 and "nope.pt" in p.stderr and "Traceback" not in p.stderr

    p = run("info", "nonexistent_model", check=False)
    assert p.returncode == 2 and "ref30" in p.stderr


@pytest.mark.slow
def test_checkpoint_config_mismatch_and_unwritable_output(synth_corpus, tmp_path):
    run_dir = tmp_path / "run"
    args = [*TINY, "trainer.max_steps=3", "data=folder", f"data.root={synth_corpus}", "data.sample_rate=8000",
            f"hydra.run.dir={run_dir}"]
    run("train", *args, cwd=tmp_path)
    p = run("train", *args, "model.residual_channels=24", "trainer.resume=true", cwd=tmp_path, check=False)
    assert p.returncode == 2 and "residual_channels" in p.stderr and "does not match" in p.stderr

    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    p = run("generate", str(_ckpts(run_dir)[-1]), "-o", str(blocker / "x.wav"), check=False)
    assert p.returncode == 2 and "cannot create the output folder" in p.stderr and "a_file" in p.stderr
    p = run("generate", str(_ckpts(run_dir)[-1]), "-o", str(tmp_path), check=False)
    assert p.returncode == 2 and "is a directory" in p.stderr


def test_info_reports_receptive_field():
    out = run("info", "ref30", "--sample-rate", "16000").stdout
    assert "3070 samples = 191.9 ms at 16000 Hz" in out
    assert "1,267,328" in out and "1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1, 2" in out


@pytest.fixture(scope="module")
def bundled(tmp_path_factory) -> Path:
    """A ``$WAVEDIL_DATA`` with two tiny exported models: ``voc`` (vocoder) and ``speech``."""
    from wavedil import WaveNet, WaveNetConfig
    from wavedil.checkpoint import save_checkpoint
    from wavedil.pretrained import export_pretrained

    root = tmp_path_factory.mktemp("bundled")
    mel = {"sample_rate": 8000, "hop_length": 80, "n_fft": 256, "n_mels": 40}
    for name, cfg_mel in (("voc", mel), ("speech", None)):
        torch.manual_seed(0)
        cfg = WaveNetConfig(residual_channels=8, gate_channels=16, skip_channels=8, head_channels=8,
                            layers_per_stack=3, stacks=1, mel=cfg_mel)  # fmt: skip
        state = WaveNet(cfg).state_dict()
        save_checkpoint({"format": 1, "model": state, "ema": state, "step": 2, "model_config": cfg.to_dict(),
                         "sample_rate": 8000, "config": {"data": {"valid_fraction": 0.05}}},
                        root / name / "step_00000002.pt")  # fmt: skip
        export_pretrained(root / name / "step_00000002.pt", name, out_dir=root / "data" / "pretrained",
                          corpus={"name": "test corpus", "licence": "CC-BY-SA-3.0"},
                          heldout={"bits_per_sample": 4.25})  # fmt: skip
    return root / "data"


def test_bundled_models_by_name(bundled, tmp_path, monkeypatch):
    env = {"WAVEDIL_DATA": str(bundled)}
    monkeypatch.setenv("WAVEDIL_DATA", str(bundled))  # for the library calls in process
    listing = run("models", env=env).stdout.splitlines()
    assert [line.split()[:2] for line in listing[1:3]] == [["speech", "unconditional"], ["voc", "vocoder"]]
    assert "4.25 bits/sample" in listing[1]

    out = run("generate", "--model", "speech", "-o", str(tmp_path / "g.wav"), "--seconds", "0.05", "--seed", "1",
              "--quiet", env=env)  # fmt: skip
    lib = generate_to_files("pretrained:speech", tmp_path / "lib.wav", 0.05, seed=1, backend="auto", device="cpu")
    assert "wrote 1 file(s) (0.05 s at 8000 Hz each)" in out.stdout
    assert np.array_equal(sf.read(tmp_path / "g.wav")[0], sf.read(tmp_path / "lib.wav")[0])

    t = np.arange(1600) / 16000
    sf.write(tmp_path / "in16k.wav", (0.3 * np.sin(2 * np.pi * 300 * t)).astype(np.float32), 16000)
    out = run("vocode", "--model", "voc", str(tmp_path / "in16k.wav"), "-o", str(tmp_path / "v.wav"), "--quiet", env=env)
    assert "resampled to the model's 8000 Hz" in out.stderr and "16000 Hz" in out.stderr
    wav, sr = sf.read(tmp_path / "v.wav")
    assert sr == 8000 and len(wav) == 800

    info = run("info", "--model", "voc", env=env).stdout
    assert info.startswith("pretrained model 'voc'") and "licence           CC-BY-SA-3.0" in info
    out = run("eval", "--model", "speech", str(tmp_path / "in16k.wav"), "--max-seconds", "0.05", env=env)
    lib_eval = evaluate_files("pretrained:speech", [tmp_path / "in16k.wav"], max_seconds=0.05)
    assert_eval_table_matches(out.stdout, lib_eval.report)
    assert f"note: 1 file(s) at 16000 Hz (e.g. '{tmp_path / 'in16k.wav'}') were resampled to the model's 8000 Hz" in out.stderr
    assert lib_eval.to_dict()["notes"] == lib_eval.notes and len(lib_eval.notes) == 1


def test_bundled_model_errors(bundled, tmp_path):
    env = {"WAVEDIL_DATA": str(bundled)}
    cases = [
        (["generate", "--model", "nope", "-o", "o.wav"],
         "unknown pretrained model 'nope'; the models that ship are: speech, voc"),
        (["generate", "-o", "o.wav"], "give the model to sample: a checkpoint"),
        (["vocode", "ck.pt", "in.wav", "--model", "voc", "-o", "o.wav"], "give either a checkpoint ('ck.pt') or --model voc"),
        (["generate", "--model", "voc", "-o", "o.wav"], "pretrained model 'voc' is a vocoder"),
        (["info", "--model", "nope"], "unknown pretrained model 'nope'"),
    ]
    for args, message in cases:
        proc = run(*args, cwd=tmp_path, check=False, env=env)
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, (args, proc.stderr)
