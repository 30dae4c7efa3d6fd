"""Broken inputs beside good ones: loading, training and evaluation go on, and say what they skipped.

The corpus (built once per module in a temporary folder) holds:

* good files, which must all be used: 16-bit (in a sub-folder), 24-bit, 32-bit float, 8
  channels, 192 kHz, 4 kHz, a file far shorter than a training segment, and a WAV truncated
  in its data;
* broken entries, each of which must be skipped with a warning that names it and says why:
  an empty file, a WAV truncated inside its header, a text file named ``.wav``, a WAV with no
  samples, float WAVs holding NaN and inf, a folder named ``dir.wav``, a FIFO named
  ``fifo.wav`` (cannot be read: opening it would block), a symbolic link to itself, a
  dangling link, and (unless we run as root, where permissions do not stop reads) a file
  without read permission. A folder link back to the root must not loop.

Decisions:

* A file far shorter than a segment is **good**: its audio is real, and
  :class:`~wavedil.data.SegmentDataset` left-pads it with silence to the segment length.
* A WAV cut off in its *data* is **good with a warning**: libsndfile reads the frames that are
  there, and they are real audio. A WAV cut off in its *header* cannot be read and is broken.
"""

from __future__ import annotations

import bisect
import json
import logging
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from torch.utils.data import DataLoader, Dataset

from wavedil import WaveNet, WaveNetConfig
from wavedil.data import AudioItem, CorpusError, SegmentDataset, iter_file_codes, load_corpus
from wavedil.checkpoint import CheckpointError
from wavedil.synthesis import generate_to_files

REPO = Path(__file__).resolve().parents[1]
SR = 8000  # training/eval rate of these tests
SEGMENT = 300  # training segment length (samples at SR)
TINY_TRAIN = ["model=tiny", "trainer=debug", "trainer.max_steps=2", "trainer.sample_every=0", "data=folder",
              f"data.sample_rate={SR}", f"data.segment_length={SEGMENT}", "data.batch_size=2",
              "data.valid_segments=4", "data.num_workers=0"]  # fmt: skip
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def tone(rate: int, seconds: float, channels: int = 1, seed: int = 0) -> np.ndarray:
    """A 220 Hz tone with a little noise, float32 ``(T,)`` or ``(T, channels)``."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(rate * seconds)) / rate
    x = (0.4 * np.sin(2 * np.pi * 220 * t) + 0.02 * rng.standard_normal(t.size)).astype(np.float32)
    return np.repeat(x[:, None], channels, axis=1) if channels > 1 else x


@dataclass
class Corpus:
    root: Path
    good: dict[str, int] = field(default_factory=dict)  # relative path -> rate
    broken: dict[str, str] = field(default_factory=dict)  # relative path -> words of the reason
    truncated: str = ""  # the good file that is reported as truncated


def build_corpus(root: Path, with_good: bool = True) -> Corpus:
    c = Corpus(root)
    root.mkdir(parents=True, exist_ok=True)

    def good(rel: str, data: np.ndarray, rate: int, subtype: str) -> Path:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        sf.write(root / rel, data, rate, subtype=subtype)
        c.good[rel] = rate
        return root / rel

    pcm16 = tone(SR, 0.25)
    if with_good:
        good("sub/pcm16.wav", pcm16, SR, "PCM_16")
        good("pcm24.wav", tone(16000, 0.25, seed=1), 16000, "PCM_24")
        good("float32.wav", tone(22050, 0.25, seed=2), 22050, "FLOAT")
        good("ch8.wav", tone(48000, 0.1, channels=8, seed=3), 48000, "PCM_16")
        good("sr192k.wav", tone(192000, 0.1, seed=4), 192000, "PCM_24")
        good("sr4k.wav", tone(4000, 0.5, seed=5), 4000, "PCM_16")
        good("short.wav", tone(SR, 40 / SR, seed=6), SR, "PCM_16")  # 40 frames << SEGMENT
        full = root / "full.wav"
        sf.write(full, pcm16, SR, subtype="PCM_16")
        (root / "truncated.wav").write_bytes(full.read_bytes()[: 44 + 2 * 1000 + 1])  # mid-frame cut
        full.unlink()
        c.good["truncated.wav"] = SR
        c.truncated = "truncated.wav"
        os.symlink("..", root / "sub" / "up")  # a folder loop: sub/up -> root

    def broken(rel: str, reason: str) -> Path:
        c.broken[rel] = reason
        return root / rel

    broken("empty.wav", "empty (0 bytes)").write_bytes(b"")
    scratch = root / "scratch.tmp"
    sf.write(scratch, pcm16, SR, format="WAV", subtype="PCM_16")
    broken("header_cut.wav", "cannot read audio header").write_bytes(scratch.read_bytes()[:30])
    scratch.unlink()
    broken("text.wav", "cannot read audio header").write_text("this is a text file, not audio\n" * 4)
    sf.write(broken("zero.wav", "no samples"), np.zeros(0, np.float32), SR, subtype="PCM_16")
    x = tone(SR, 0.1)
    x[10] = np.nan
    sf.write(broken("nan.wav", "NaN or infinite"), x, SR, subtype="FLOAT")
    x = tone(SR, 0.1)
    x[20] = -np.inf
    sf.write(broken("inf.wav", "NaN or infinite"), x, SR, subtype="FLOAT")
    broken("dir.wav", "is a folder").mkdir()
    os.mkfifo(broken("fifo.wav", "not a regular file"))
    os.symlink("loop.wav", broken("loop.wav", "symbolic link loop"))
    os.symlink("nowhere.wav", broken("dangling.wav", "broken symbolic link"))
    if not IS_ROOT:
        noperm = broken("noperm.wav", "Permission denied")
        sf.write(noperm, pcm16, SR, subtype="PCM_16")
        noperm.chmod(0)
    return c


@pytest.fixture
def one_thread():
    """Resampling on a busy 2-core machine is ~10x slower with 2 torch threads than with 1."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Corpus:
    return build_corpus(tmp_path_factory.mktemp("mixed"))


@pytest.fixture(scope="module")
def broken_only(tmp_path_factory) -> Corpus:
    return build_corpus(tmp_path_factory.mktemp("broken_only"), with_good=False)


def rel(path: str | Path, root: Path) -> str:
    return Path(path).relative_to(root).as_posix()


def warnings_naming(messages: list[str], root: Path, name: str) -> list[str]:
    return [m for m in messages if f"'{root / name}'" in m]


# --------------------------------------------------------------------------------------------
# load_corpus and the data pipeline, in process
# --------------------------------------------------------------------------------------------


def test_load_corpus_uses_exactly_the_good_files_and_names_each_broken_one(corpus, caplog):
    caplog.set_level(logging.INFO, logger="wavedil.data")
    items = load_corpus(corpus.root)

    assert sorted(rel(item.path, corpus.root) for item in items) == sorted(corpus.good)
    for item in items:
        assert item.rate == corpus.good[rel(item.path, corpus.root)] and item.frames > 0
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    for name, reason in corpus.broken.items():
        named = warnings_naming(messages, corpus.root, name)
        assert len(named) == 1, f"{name}: expected one warning naming it, got {named}"
        assert reason in named[0], f"{name}: the warning does not say why ({reason!r}): {named[0]}"
    (trunc,) = warnings_naming(messages, corpus.root, corpus.truncated)
    assert "truncated" in trunc and "holds 1000" in trunc  # 2001 data bytes = 1000 whole frames
    for name in set(corpus.good) - {corpus.truncated}:
        assert not warnings_naming(messages, corpus.root, name), f"a good file was warned about: {name}"
    summary = [m for m in messages if m.startswith(f"corpus '{corpus.root}'")]
    assert len(summary) == 1
    assert f"using {len(corpus.good)} files" in summary[0] and f"skipped {len(corpus.broken)}" in summary[0]


@pytest.mark.skipif(IS_ROOT, reason="running as root: file permissions do not stop root from reading")
def test_file_without_read_permission_is_skipped_with_the_reason(tmp_path, caplog):
    sf.write(tmp_path / "ok.wav", tone(SR, 0.1), SR)
    sf.write(tmp_path / "locked.wav", tone(SR, 0.1), SR)
    (tmp_path / "locked.wav").chmod(0)
    caplog.set_level(logging.WARNING, logger="wavedil.data")
    assert [i.path.name for i in load_corpus(tmp_path)] == ["ok.wav"]
    assert "locked.wav" in caplog.text and "Permission denied" in caplog.text


def test_every_good_file_decodes_to_segments_and_whole_files(corpus, one_thread):
    items = load_corpus(corpus.root)
    for item in items:  # each kind of file on its own, so a failure names the kind
        ds = SegmentDataset([item], SEGMENT, SR, segments_per_epoch=2)
        for seg in (ds[0], ds[1]):
            assert seg.shape == (SEGMENT + 1,) and seg.dtype == torch.int64
            assert 0 <= int(seg.min()) and int(seg.max()) < 256
        (_, codes), = list(iter_file_codes([item], SR))
        expected = item.frames * SR / item.rate
        assert abs(codes.numel() - expected) <= 2, (item.path.name, codes.numel(), expected)
        assert codes.float().std() > 5, f"{item.path.name} decodes to (near) silence"

    (short,) = [i for i in items if i.path.name == "short.wav"]
    seg = SegmentDataset([short], SEGMENT, SR, segments_per_epoch=1)[0]
    assert (seg[: SEGMENT + 1 - 40] == 128).all(), "the short file must be left-padded with silence"
    assert (seg[-40:] != 128).any()


def test_broken_only_corpus_is_a_clear_error(broken_only):
    with pytest.raises(CorpusError, match=rf"none of the {len(broken_only.broken)} audio files"):
        load_corpus(broken_only.root)


# --------------------------------------------------------------------------------------------
# File descriptors over a long run
# --------------------------------------------------------------------------------------------


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


class FdReporting(Dataset):
    """Items of ``ds`` paired with the number of open descriptors of the process reading them."""

    def __init__(self, ds: SegmentDataset) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.ds[i], open_fds()


@pytest.fixture(scope="module")
def twenty_files(tmp_path_factory, corpus) -> list[AudioItem]:
    """The 8 good files of the corpus plus 12 more at mixed rates and sample formats."""
    root = tmp_path_factory.mktemp("twenty")
    kinds = [(8000, "PCM_16"), (16000, "PCM_24"), (22050, "FLOAT"), (11025, "PCM_U8")]
    for i in range(12):
        rate, subtype = kinds[i % 4]
        sf.write(root / f"f{i:02d}.wav", tone(rate, 0.1, seed=10 + i), rate, subtype=subtype)
    items = load_corpus(corpus.root) + load_corpus(root)
    assert len(items) == 20
    return items


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd (Linux)")
@pytest.mark.parametrize("workers", [0, 1, "1-persistent"])
def test_data_loader_keeps_open_file_descriptors_flat_over_30_epochs(twenty_files, workers, one_thread):
    ds = SegmentDataset(twenty_files, SEGMENT, SR, segments_per_epoch=40)
    persistent = workers == "1-persistent"
    loader = DataLoader(FdReporting(ds), batch_size=8, num_workers=1 if persistent else workers,
                        persistent_workers=persistent, multiprocessing_context="fork" if workers else None)
    main_fds, reader_fds = [], []  # per epoch: after it (main), the most seen while reading
    for epoch in range(30):
        ds.set_epoch(epoch)
        seen = 0
        for segs, fds in loader:
            assert segs.shape == (8, SEGMENT + 1)
            seen = max(seen, int(fds.max()))
        reader_fds.append(seen)
        main_fds.append(open_fds())
    # workers=1 starts a new worker each epoch (its leaks would die with it): it checks that the
    # main process closes each epoch's pipes and queues; "1-persistent" checks the worker itself.
    # The first epoch may open lasting descriptors (worker pipes, shared-memory handles), and a
    # worker's count moves by a few with the batches in flight; beyond that nothing may grow
    # from the first ten epochs to the last ten. A leak of one descriptor per file read would
    # add about 400 over those 20 epochs, one per epoch would add 20.
    slack = 3
    assert max(main_fds[1:]) <= main_fds[0] + slack, f"descriptors of the main process grew: {main_fds}"
    assert max(reader_fds[-10:]) <= max(reader_fds[:10]) + slack, f"descriptors of the reader grew: {reader_fds}"
    del loader


# --------------------------------------------------------------------------------------------
# Files vanishing mid-run (issue #15)
# --------------------------------------------------------------------------------------------


def ten_files(root: Path) -> list[AudioItem]:
    """Ten 0.2 s 16-bit files of tones (equal lengths: each holds a tenth of the audio)."""
    root.mkdir()
    for i in range(10):
        sf.write(root / f"f{i}.wav", tone(SR, 0.2, seed=i), SR, subtype="PCM_16")
    return load_corpus(root)


def damage(items: list[AudioItem], deleted: list[int], truncated: list[int]) -> None:
    for i in deleted:
        items[i].path.unlink()
    for j, i in enumerate(truncated):  # cut inside the header, or after 50 frames of data
        with open(items[i].path, "r+b") as fh:
            fh.truncate(20 if j % 2 == 0 else 44 + 100)


def vanish_warnings(caplog: pytest.LogCaptureFixture, path: Path) -> list[str]:
    return [r.getMessage() for r in caplog.records if f"'{path}'" in r.getMessage() and "left out" in r.getMessage()]


def test_files_vanishing_mid_run_warn_once_each_and_are_replaced_deterministically(tmp_path, caplog, one_thread):
    items = ten_files(tmp_path / "c")
    ds = SegmentDataset(items, SEGMENT, SR, segments_per_epoch=300, seed=5)
    before = [ds[i] for i in range(len(ds))]  # every file intact
    again = SegmentDataset(items, SEGMENT, SR, segments_per_epoch=300, seed=5)  # built before the damage too
    bad = {1, 4, 6, 8}
    damage(items, deleted=[1, 4], truncated=[6, 8])
    caplog.set_level(logging.WARNING, logger="wavedil.data")

    after = [ds[i] for i in range(len(ds))]  # no CorpusError
    for k, item in enumerate(items):
        assert len(vanish_warnings(caplog, item.path)) == (k in bad), (item.path, caplog.text)
    assert ds.excluded == bad
    assert all("no longer exists" in vanish_warnings(caplog, items[k].path)[0] for k in (1, 4))

    # Items whose first draw is a good file are unchanged; the others draw a replacement that
    # does not depend on the order in which the bad files were found.
    first = [bisect.bisect_right(ds._cumulative, int(torch.randint(0, ds.total_frames, (1,),
             generator=ds.generator(i)))) for i in range(len(ds))]  # fmt: skip
    hit = [i for i in range(len(ds)) if first[i] in bad]
    assert 0 < len(hit) < len(ds)
    assert all(torch.equal(before[i], after[i]) for i in range(len(ds)) if i not in hit)
    backwards = {i: again[i] for i in reversed(range(len(ds)))}
    assert all(torch.equal(after[i], backwards[i]) for i in range(len(ds)))
    assert again.excluded == bad
    for set_epoch in (1, 2):  # later epochs: no new warnings, the bad files stay out
        ds.set_epoch(set_epoch)
        n_before = len(caplog.records)
        assert all(ds[i].shape == (SEGMENT + 1,) for i in range(len(ds)))
        assert len(caplog.records) == n_before


def test_too_many_vanished_files_stop_with_a_clear_error(tmp_path, one_thread):
    items = ten_files(tmp_path / "c")
    ds = SegmentDataset(items, SEGMENT, SR, segments_per_epoch=200)
    damage(items, deleted=[0, 2, 3, 4, 5, 7, 8, 9], truncated=[])
    with pytest.raises(CorpusError, match=rf"8 of the 10 corpus files under '{tmp_path / 'c'}' vanished.*20% of the audio"):
        for i in range(len(ds)):
            ds[i]


# --------------------------------------------------------------------------------------------
# The real CLI: train and eval on the corpus (subprocesses)
# --------------------------------------------------------------------------------------------


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "wavedil", *args], cwd=cwd, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
    )


def assert_names_each_broken(output: str, c: Corpus) -> None:
    for name, reason in c.broken.items():
        lines = [line for line in output.splitlines() if f"'{c.root / name}'" in line]
        assert lines and reason in lines[0], f"no warning naming {name} with {reason!r} in:\n{output}"


def assert_one_paragraph_error(p: subprocess.CompletedProcess, must_say: str) -> None:
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert "Traceback" not in p.stderr + p.stdout
    errors = [line for line in p.stderr.splitlines() if not line.startswith("WARNING")]
    assert len(errors) == 1 and errors[0].startswith("error: "), p.stderr
    assert must_say in errors[0]


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    work = tmp_path_factory.mktemp("train")
    proc = run_cli("train", *TINY_TRAIN, f"data.root={corpus.root}", f"hydra.run.dir={work / 'run'}", cwd=work)
    return proc, work / "run" / "checkpoints" / "step_00000002.pt"


@pytest.mark.slow
def test_train_goes_on_and_reports_skipped_files_and_counts(trained, corpus):
    proc, ckpt = trained
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert ckpt.is_file()
    assert_names_each_broken(out, corpus)
    assert f"using {len(corpus.good)} files" in out and f"skipped {len(corpus.broken)}" in out
    m = re.search(r"on (\d+) files \((\d+) held out\)", proc.stdout)
    assert m and int(m.group(1)) + int(m.group(2)) == len(corpus.good), proc.stdout
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["step"] == 2 and np.isfinite(summary["train_bits"]) and np.isfinite(summary["valid_bits"])


@pytest.mark.slow
def test_eval_goes_on_and_reports_the_good_files(trained, corpus, tmp_path):
    _, ckpt = trained
    proc = run_cli("eval", str(ckpt), str(corpus.root), "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert_names_each_broken(proc.stderr, corpus)
    assert f"{len(corpus.good)} files" in proc.stdout
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert sorted(rel(f["file"], corpus.root) for f in report["per_file"]) == sorted(corpus.good)
    assert all(np.isfinite(f["model_bits_per_sample"]) for f in report["per_file"])


@pytest.mark.slow
def test_broken_only_corpus_fails_before_training_with_one_paragraph(broken_only, trained, tmp_path):
    nothing_usable = f"none of the {len(broken_only.broken)} audio files of '{broken_only.root}' is usable"
    run_dir = tmp_path / "run"
    p = run_cli("train", *TINY_TRAIN, f"data.root={broken_only.root}", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert_one_paragraph_error(p, nothing_usable)
    assert_names_each_broken(p.stdout, broken_only)  # the warnings still say what was wrong
    assert not (run_dir / "checkpoints").exists() and "training " not in p.stdout

    p = run_cli("eval", str(trained[1]), str(broken_only.root), cwd=tmp_path)
    assert_one_paragraph_error(p, nothing_usable)


# --------------------------------------------------------------------------------------------
# Generation: finite audio in [-1, 1] from any weights (bounded lengths: test_commands.py)
# --------------------------------------------------------------------------------------------

GEN_CONFIG = dict(residual_channels=8, gate_channels=16, skip_channels=12, head_channels=10,
                  layers_per_stack=3, stacks=2, quantization_channels=256)  # fmt: skip


def save_checkpoint_with(path: Path, spoil) -> Path:
    """A wavedil checkpoint of a small random model, its weights passed through ``spoil``."""
    torch.manual_seed(0)
    model = WaveNet(WaveNetConfig(**GEN_CONFIG))
    with torch.no_grad():
        spoil(model)
    torch.save({"model": model.state_dict(), "model_config": model.config.to_dict(), "ema": None,
                "sample_rate": SR, "step": 0}, path)  # fmt: skip
    return path


def scale_all(model: WaveNet) -> None:
    for p in model.parameters():
        p.mul_(1e6)


def nan_bias(model: WaveNet) -> None:
    bias = next(p for n, p in model.named_parameters() if n.endswith("bias"))
    bias.fill_(float("nan"))


def inf_weight(model: WaveNet) -> None:
    model.embed.weight[:, 0] = float("inf")


@pytest.mark.parametrize("backend", ["torch", "fast"])
@pytest.mark.parametrize("spoil", [scale_all, nan_bias, inf_weight], ids=["x1e6", "nan-bias", "inf-weight"])
def test_generate_with_absurd_weights_writes_finite_audio_in_range(tmp_path, spoil, backend, one_thread):
    ckpt = save_checkpoint_with(tmp_path / "absurd.pt", spoil)
    if spoil is not scale_all:  # non-finite weights: a clear refusal before any work
        with pytest.raises(CheckpointError, match="NaN or infinite"):
            generate_to_files(ckpt, tmp_path / "out.wav", 0.02, batch=3, seed=1, device="cpu", backend=backend)
        assert not list(tmp_path.glob("out*.wav"))
        return
    res = generate_to_files(ckpt, tmp_path / "out.wav", 0.02, batch=3, seed=1, device="cpu", backend=backend)
    assert [p.name for p in res.paths] == [f"out_{i:03d}.wav" for i in range(3)]
    for path in res.paths:
        data, rate = sf.read(path, dtype="float32")
        assert rate == SR and data.shape == (160,)
        assert np.isfinite(data).all() and np.abs(data).max() <= 1.0
