"""Crashes, interruptions and untrusted files: nothing is lost and nothing runs."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from wavedil.checkpoint import CheckpointError, list_checkpoints, load_checkpoint, newest_good_checkpoint
from wavedil.config import compose
from wavedil.train import TrainingError, find_resume_checkpoint, train

REPO = Path(__file__).resolve().parents[1]
BASE = ["model=tiny", "trainer=debug", "trainer.sample_every=0", "data.segment_length=300", "data.batch_size=2",
        "data.valid_segments=2", "trainer.valid_every=1000"]


def _start(args, cwd):
    return subprocess.Popen(
        [sys.executable, "-m", "wavedil", "train", *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
    )


def _wait_for_checkpoint(folder: Path, proc, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if list_checkpoints(folder):
            return
        if proc.poll() is not None:
            raise AssertionError(f"training ended before its first checkpoint:\n{proc.stdout.read()}")
        time.sleep(0.05)
    raise AssertionError("no checkpoint appeared")


@pytest.mark.slow
def test_sigkill_mid_training_then_resume_equals_uninterrupted_run(tmp_path):
    # enough steps that the kill lands mid-run (a step of this tiny model takes milliseconds)
    args = BASE + ["trainer.max_steps=200", "trainer.ckpt_every=2", "trainer.keep_last=2", "trainer.threads=1"]
    straight = subprocess.run(
        [sys.executable, "-m", "wavedil", "train", *args, f"hydra.run.dir={tmp_path / 'a'}"], cwd=tmp_path,
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
    )
    assert straight.returncode == 0, straight.stderr
    proc = _start(args + [f"hydra.run.dir={tmp_path / 'b'}"], tmp_path)
    _wait_for_checkpoint(tmp_path / "b" / "checkpoints", proc)
    time.sleep(0.3)  # somewhere in the middle, possibly while a checkpoint is being written
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = load_checkpoint(list_checkpoints(tmp_path / "b" / "checkpoints")[0])["step"]
    assert killed_at < 200, "the run finished before it was killed; the test proves nothing"
    resumed = subprocess.run(
        [sys.executable, "-m", "wavedil", "train", *args, "trainer.resume=true", f"hydra.run.dir={tmp_path / 'b'}"],
        cwd=tmp_path, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"at step {killed_at}" in resumed.stdout
    a = load_checkpoint(list_checkpoints(tmp_path / "a" / "checkpoints")[0])
    b = load_checkpoint(list_checkpoints(tmp_path / "b" / "checkpoints")[0])
    assert a["step"] == b["step"] == 200
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_saves_a_checkpoint_and_exits_cleanly(tmp_path, sig):
    args = BASE + ["trainer.max_steps=100000", "trainer.ckpt_every=1000", f"hydra.run.dir={tmp_path / 'r'}"]
    proc = _start(args + ["trainer.ckpt_every=3"], tmp_path)
    _wait_for_checkpoint(tmp_path / "r" / "checkpoints", proc)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert f"{signal.Signals(sig).name} received: saved" in out and "trainer.resume=true" in out
    newest = load_checkpoint(list_checkpoints(tmp_path / "r" / "checkpoints")[0])
    assert newest["step"] >= 3


def _fake_checkpoints(folder: Path):
    folder.mkdir(parents=True)
    good = {"model": {"w": torch.ones(2)}, "model_config": {}, "step": 1}
    torch.save(good, folder / "step_00000001.pt")
    torch.save({**good, "step": 2}, folder / "step_00000002.pt")
    data = (folder / "step_00000002.pt").read_bytes()
    (folder / "step_00000002.pt").write_bytes(data[: len(data) // 2])  # truncated by a crash of old


def test_corrupt_checkpoint_is_a_clear_error_and_resume_falls_back(tmp_path, caplog):
    _fake_checkpoints(tmp_path / "run" / "checkpoints")
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(tmp_path / "run" / "checkpoints" / "step_00000002.pt")
    path, ckpt = newest_good_checkpoint(tmp_path / "run" / "checkpoints")
    assert path.name == "step_00000001.pt" and ckpt["step"] == 1
    assert "falling back" in caplog.text and "step_00000002.pt" in caplog.text
    path, _ = find_resume_checkpoint(True, tmp_path / "run")
    assert path.name == "step_00000001.pt"


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_checkpoint_that_would_run_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "model_config": {}, "payload": _Evil(marker)}, path)
    with pytest.raises(CheckpointError, match="could run code"):
        load_checkpoint(path)
    assert not marker.exists()
    p = subprocess.run([sys.executable, "-m", "wavedil", "generate", str(path), "-o", str(tmp_path / "x.wav")],
                       capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert p.returncode == 2 and "could run code" in p.stderr and not marker.exists()


def test_diverging_loss_stops_with_a_clear_error_and_keeps_the_last_checkpoint(tmp_path):
    cfg = compose(BASE + ["trainer.max_steps=30", "trainer.ckpt_every=1", "optim.lr=1e12", "optim.grad_clip=0",
                          "optim.warmup_steps=0", "trainer.ema_decay=0"])
    with pytest.raises(TrainingError, match="non-finite losses in a row") as err:
        train(cfg, tmp_path / "run")
    assert "last good checkpoint" in str(err.value)
    kept = list_checkpoints(tmp_path / "run" / "checkpoints")
    assert kept, "no checkpoint kept"
    assert torch.isfinite(load_checkpoint(kept[0])["model"]["embed.weight"]).all()


def test_a_killed_writes_partial_file_is_removed_once_stale_and_a_fresh_one_kept(tmp_path, caplog):
    """A checkpoint write killed by SIGKILL leaves its hidden partial file (as large as a
    checkpoint); before, nothing ever removed it. The next checkpoint the run writes removes
    those untouched for STALE_PARTIAL_SECONDS, and leaves a recent one (a write in progress)."""
    from wavedil.train import STALE_PARTIAL_SECONDS

    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    stale, fresh = folder / ".step_00000001.pt.k3j2x.tmp", folder / ".step_00000002.pt.a8f0q.tmp"
    for f in (stale, fresh):
        f.write_bytes(b"\0" * 1000)
    old = time.time() - STALE_PARTIAL_SECONDS - 5
    os.utime(stale, (old, old))
    with caplog.at_level("INFO", logger="wavedil.train"):
        train(compose(BASE + ["trainer.max_steps=1", "trainer.resume=true"]), tmp_path / "run")
    assert not stale.exists() and fresh.exists()
    assert f"removed {stale.name} (0.0 MB), left by a checkpoint write that was killed" in caplog.text
    assert [p.name for p in list_checkpoints(folder)] == ["step_00000001.pt"]
