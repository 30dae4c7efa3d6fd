"""Tests for wavedil.audio reading helpers and wavedil.data (corpora, split, segments)."""

from __future__ import annotations

import logging
import os
import random
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from wavedil.audio import decode, mu_law_encode, read_audio, resample, silence_bounds
from wavedil.conditioning import MelSpec, log_mel
from wavedil.data import (
    LAYOUTS,
    AudioItem,
    CorpusError,
    SegmentDataset,
    corpus_seconds,
    file_mel,
    find_audio_files,
    iter_file_audio,
    iter_file_codes,
    load_corpus,
    speakers_of,
    split_items,
)

REPO = Path(__file__).resolve().parents[1]
SPEECH8K = REPO / "data" / "speech8k" / "wavs"
SILENCE_CODE = int(mu_law_encode(torch.tensor(0.0)))


def write(path: Path, data: np.ndarray, rate: int = 8000, subtype: str | None = None) -> Path:
    """Write ``data`` ((T,) or (T, C)) as audio; the format follows the extension."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.asarray(data, dtype=np.float32), rate, subtype=subtype)
    return path


def tone(frames: int, rate: int = 8000, freq: float = 220.0, amp: float = 0.5) -> np.ndarray:
    return amp * np.sin(2 * np.pi * freq * np.arange(frames) / rate)


@pytest.fixture
def warnings_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.WARNING, logger="wavedil.data")
    return caplog


# --- audio reading ----------------------------------------------------------------------------


def test_read_audio_downmixes_stereo_by_averaging(tmp_path: Path) -> None:
    frames = np.stack([np.full(800, 0.5), np.full(800, -0.25)], axis=1)
    wav, rate = read_audio(write(tmp_path / "stereo.wav", frames, subtype="FLOAT"))
    assert rate == 8000 and wav.shape == (800,) and wav.dtype == torch.float32
    torch.testing.assert_close(wav, torch.full((800,), 0.125))


def test_read_audio_resamples_16k_to_8k(tmp_path: Path) -> None:
    path = write(tmp_path / "a.flac", tone(16000, rate=16000), rate=16000)
    wav, rate = read_audio(path, sample_rate=8000)
    assert rate == 8000 and wav.shape == (8000,)
    # A 220 Hz tone survives: same RMS (0.5 / sqrt 2) after resampling, within PCM_16 error.
    assert abs(float(wav.pow(2).mean().sqrt()) - 0.5 / np.sqrt(2)) < 1e-2


def test_read_audio_span_matches_whole_file(tmp_path: Path) -> None:
    path = write(tmp_path / "a.wav", tone(4000), subtype="FLOAT")
    whole, _ = read_audio(path)
    part, _ = read_audio(path, start=1000, frames=500)
    torch.testing.assert_close(part, whole[1000:1500])


def test_silence_bounds_relative_to_peak() -> None:
    wav = torch.tensor([0.0, 0.001, 0.5, -1.0, 0.2, 0.0])
    assert silence_bounds(wav, -20.0) == (2, 5)
    assert silence_bounds(torch.zeros(10), -40.0) == (0, 0)
    with pytest.raises(ValueError, match="negative"):
        silence_bounds(wav, 40.0)


# --- finding files ----------------------------------------------------------------------------


def test_find_audio_files_recursive_sorted_and_by_extension(tmp_path: Path) -> None:
    write(tmp_path / "b" / "deep" / "x.WAV", tone(100))
    write(tmp_path / "a.flac", tone(100))
    write(tmp_path / "b" / "c.ogg", tone(800))
    (tmp_path / "notes.txt").write_text("not audio")
    (tmp_path / "dir.wav").mkdir()  # a folder named like audio
    (tmp_path / "dir.wav" / "inner.txt").write_text("x")
    (tmp_path / "._a.wav").write_bytes(b"\0" * 10)  # macOS resource fork: hidden
    found = [p.relative_to(tmp_path).as_posix() for p in find_audio_files(tmp_path)]
    assert found == ["a.flac", "b/c.ogg", "b/deep/x.WAV"]
    assert [p.name for p in find_audio_files(tmp_path, extensions=[".flac"])] == ["a.flac"]


def test_find_audio_files_survives_symlink_loop(tmp_path: Path) -> None:
    write(tmp_path / "sub" / "a.wav", tone(100))
    os.symlink(tmp_path, tmp_path / "sub" / "loop")  # sub/loop -> root
    os.symlink(tmp_path / "sub", tmp_path / "alias")  # a second name for sub
    os.symlink(tmp_path / "missing.wav", tmp_path / "broken.wav")
    result: list[Path] = []
    worker = threading.Thread(target=lambda: result.extend(find_audio_files(tmp_path)), daemon=True)
    worker.start()
    worker.join(timeout=5)
    assert not worker.is_alive(), "find_audio_files did not finish: symlink loop followed"
    # Each real folder is entered once; sorted descent keeps the alias 'alias/' first.
    assert [p.relative_to(tmp_path).as_posix() for p in result] == ["alias/a.wav"]


# --- load_corpus ----------------------------------------------------------------------------


def test_load_corpus_skips_broken_files_with_named_warnings(
    tmp_path: Path, warnings_log: pytest.LogCaptureFixture
) -> None:
    good = [
        write(tmp_path / "good1.wav", tone(800)),
        write(tmp_path / "sub" / "good2.flac", tone(1600)),
    ]
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "text.wav").write_text("this is not a RIFF file\n" * 10)
    header = (tmp_path / "good1.wav").read_bytes()
    (tmp_path / "truncated.wav").write_bytes(header[:30])
    nan = tone(800)
    nan[400] = np.nan
    write(tmp_path / "nan.wav", nan, subtype="FLOAT")
    write(tmp_path / "short.wav", tone(10))

    items = load_corpus(tmp_path, min_frames=100)

    assert [item.path for item in items] == good
    assert [(item.frames, item.rate, item.speaker) for item in items] == [
        (800, 8000, None),
        (1600, 8000, None),
    ]
    messages = "\n".join(r.getMessage() for r in warnings_log.records)
    for name in ("empty.wav", "text.wav", "truncated.wav", "nan.wav", "short.wav"):
        assert name in messages
    assert "NaN" in messages and "too short" in messages
    assert "using 2 files" in messages and "skipped 5" in messages


@pytest.mark.parametrize("layout", LAYOUTS)
def test_load_corpus_missing_or_empty_root_raises(tmp_path: Path, layout: str) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(CorpusError, match="nowhere"):
        load_corpus(missing, layout=layout)
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    with pytest.raises(CorpusError, match="empty_dir"):
        load_corpus(empty, layout=layout)


def test_load_corpus_user_errors(tmp_path: Path) -> None:
    audio = write(tmp_path / "one.wav", tone(100))
    with pytest.raises(CorpusError, match="not a folder"):
        load_corpus(audio)
    with pytest.raises(CorpusError, match="ljspeech.*vctk"):
        load_corpus(tmp_path, layout="librispeech")
    with pytest.raises(CorpusError, match="metadata.csv"):
        load_corpus(tmp_path, layout="ljspeech")
    (tmp_path / "bad.wav").write_text("junk")
    only_bad = tmp_path / "only_bad"
    only_bad.mkdir()
    (only_bad / "bad.wav").write_text("junk")
    with pytest.raises(CorpusError, match="only_bad.*bad.wav"):
        load_corpus(only_bad)
    assert issubclass(CorpusError, ValueError)


def test_load_corpus_ljspeech_uses_metadata(
    tmp_path: Path, warnings_log: pytest.LogCaptureFixture
) -> None:
    for name in ("LJ001-0001", "LJ001-0002", "LJ009-0009"):
        write(tmp_path / "wavs" / f"{name}.wav", tone(800))
    (tmp_path / "metadata.csv").write_text(
        "LJ001-0002|Printing, in the only sense|Printing, in the only sense\n"
        'LJ001-0001|He said "yes" | twice|He said "yes" twice\n'
        "LJ002-0404|listed but missing|listed but missing\n\n",
        encoding="utf-8",
    )
    items = load_corpus(tmp_path, layout="ljspeech")
    assert [item.path.name for item in items] == [
        "LJ001-0002.wav",
        "LJ001-0001.wav",
    ]  # metadata order
    assert all(item.speaker is None and item.frames == 800 for item in items)
    assert "LJ002-0404.wav" in warnings_log.text


def test_load_corpus_vctk_speakers_from_folders(tmp_path: Path) -> None:
    base = tmp_path / "wav48_silence_trimmed"
    for spk, utt in [("p225", "001"), ("p225", "002"), ("p226", "001")]:
        write(base / spk / f"{spk}_{utt}_mic1.flac", tone(480, rate=48000), rate=48000)
    (tmp_path / "txt" / "p225").mkdir(parents=True)
    (tmp_path / "txt" / "p225" / "p225_001.txt").write_text("Please call Stella.")
    items = load_corpus(tmp_path, layout="vctk")
    assert [(item.path.name, item.speaker, item.rate) for item in items] == [
        ("p225_001_mic1.flac", "p225", 48000),
        ("p225_002_mic1.flac", "p225", 48000),
        ("p226_001_mic1.flac", "p226", 48000),
    ]
    assert corpus_seconds(items) == pytest.approx(0.03)


def test_vctk_files_directly_under_the_root_are_warned_about(tmp_path: Path, warnings_log) -> None:
    """A file beside the speaker folders takes the root's name as its speaker (the folder rule);
    that is now said, with what to do, instead of passing in silence. A root holding only files
    (one speaker's folder) is not warned about: its name is that speaker's."""
    root = tmp_path / "corpus"
    write(root / "p225" / "p225_001_mic1.flac", np.full(50, 0.1))
    write(root / "stray_mic1.flac", np.full(50, 0.1))
    items = load_corpus(root, layout="vctk")
    assert sorted((item.path.name, item.speaker) for item in items) == [
        ("p225_001_mic1.flac", "p225"), ("stray_mic1.flac", "corpus")
    ]
    messages = [r.getMessage() for r in warnings_log.records]
    assert messages == [
        f"layout=vctk: 1 audio file(s) lie directly under '{root}' (e.g. stray_mic1.flac), not in a speaker's "
        "folder, so they take the folder's own name 'corpus' as their speaker; move them into a folder named "
        "for their speaker"
    ]
    warnings_log.clear()
    one = load_corpus(root / "p225", layout="vctk")  # one speaker's folder as the root: its name is right
    assert [item.speaker for item in one] == ["p225"] and warnings_log.records == []


def _two_mic_vctk(root: Path, utterances: int = 40) -> None:
    for spk in ("p225", "p226"):
        for u in range(utterances):
            for mic, value in (("mic1", 0.25), ("mic2", -0.25)):
                write(root / "wav48_silence_trimmed" / spk / f"{spk}_{u:03d}_{mic}.flac", np.full(50, value))


def test_vctk_keeps_one_microphone_unless_told_both(tmp_path: Path) -> None:
    _two_mic_vctk(tmp_path, utterances=3)
    names = lambda items: sorted(item.path.name for item in items)  # noqa: E731
    assert names(load_corpus(tmp_path, layout="vctk")) == [f"p22{s}_00{u}_mic1.flac" for s in (5, 6) for u in range(3)]
    assert all(n.endswith("_mic2.flac") for n in names(load_corpus(tmp_path, layout="vctk", mic="mic2")))
    assert len(load_corpus(tmp_path, layout="vctk", mic="both")) == 12
    assert len(load_corpus(tmp_path, layout="folder")) == 12  # only the vctk layout knows microphones
    with pytest.raises(CorpusError, match=r"'mic3'.*\['mic1', 'mic2', 'both'\]"):
        load_corpus(tmp_path, layout="vctk", mic="mic3")


def test_vctk_with_only_the_other_microphone_says_which_to_choose(tmp_path: Path) -> None:
    for u in range(2):
        write(tmp_path / "p225" / f"p225_00{u}_mic2.flac", np.full(50, 0.1))
    with pytest.raises(CorpusError, match=r"no \*_mic1 files.*2 \*_mic2.*data.mic=mic2"):
        load_corpus(tmp_path, layout="vctk")


@pytest.mark.parametrize("min_valid", [1, 7])
def test_split_keeps_both_microphones_of_an_utterance_on_one_side(tmp_path: Path, min_valid: int) -> None:
    _two_mic_vctk(tmp_path)
    items = load_corpus(tmp_path, layout="vctk", mic="both")
    train, valid = split_items(items, valid_fraction=0.1, min_valid=min_valid)
    utt = lambda item: item.path.stem.rsplit("_", 1)[0]  # noqa: E731
    assert valid and len(valid) % 2 == 0 and len(valid) >= min_valid
    assert not {utt(i) for i in train} & {utt(i) for i in valid}
    # the one-mic corpus puts the same utterances in valid
    one_train, one_valid = split_items(load_corpus(tmp_path, layout="vctk"), valid_fraction=0.1, min_valid=1)
    if min_valid == 1:
        assert {utt(i) for i in one_valid} == {utt(i) for i in valid}


# --- split ----------------------------------------------------------------------------------


def fake_items(root: Path, n: int) -> list[AudioItem]:
    return [
        AudioItem(root / f"spk{k % 3}" / f"utt{k:03d}.wav", frames=8000, rate=8000)
        for k in range(n)
    ]


def test_split_is_deterministic_order_and_location_independent(tmp_path: Path) -> None:
    items = fake_items(tmp_path / "corpus", 200)
    train, valid = split_items(items, valid_fraction=0.1)
    shuffled = items[:]
    random.Random(3).shuffle(shuffled)
    assert split_items(shuffled, valid_fraction=0.1) == (train, valid)
    moved = fake_items(tmp_path / "elsewhere" / "copy", 200)  # same corpus on another machine
    names = lambda xs: [x.path.relative_to(x.path.parents[1]).as_posix() for x in xs]  # noqa: E731
    assert [names(s) for s in split_items(moved, valid_fraction=0.1)] == [
        names(train),
        names(valid),
    ]
    assert 5 <= len(valid) <= 40 and len(train) + len(valid) == 200
    assert not {x.path for x in train} & {x.path for x in valid}


def test_split_min_valid_and_empty_train(tmp_path: Path) -> None:
    items = fake_items(tmp_path, 4)
    train, valid = split_items(items, valid_fraction=0.0, min_valid=2)
    assert len(valid) == 2 and len(train) == 2
    assert split_items(items[:1]) == (items[:1], [])
    with pytest.raises(CorpusError, match="no training files"):
        split_items(items, min_valid=4)
    with pytest.raises(CorpusError, match="valid_fraction"):
        split_items(items, valid_fraction=1.5)


# --- SegmentDataset -------------------------------------------------------------------------


@pytest.fixture
def small_corpus(tmp_path: Path) -> list[AudioItem]:
    write(tmp_path / "long.wav", tone(6000))
    write(tmp_path / "mid.flac", tone(3000, freq=330.0))
    return load_corpus(tmp_path)


def test_segments_shape_dtype_range(small_corpus: list[AudioItem]) -> None:
    ds = SegmentDataset(
        small_corpus, segment_length=500, sample_rate=8000, quantization_channels=64
    )
    assert len(ds) == 9000 // 500
    assert SegmentDataset(small_corpus, 500, 8000, segments_per_epoch=7).__len__() == 7
    seg = ds[0]
    assert seg.shape == (501,) and seg.dtype == torch.int64
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert batch.shape == (4, 501)
    assert 0 <= int(batch.min()) and int(batch.max()) < 64
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_segments_are_a_function_of_seed_epoch_index(small_corpus: list[AudioItem]) -> None:
    ds = SegmentDataset(small_corpus, 200, 8000, segments_per_epoch=16, seed=5)
    epoch0 = [ds[i] for i in range(16)]
    again = SegmentDataset(small_corpus, 200, 8000, segments_per_epoch=16, seed=5)
    assert all(
        torch.equal(a, b) for a, b in zip(epoch0, [again[i] for i in range(16)], strict=True)
    )
    ds.set_epoch(1)
    epoch1 = [ds[i] for i in range(16)]
    assert sum(torch.equal(a, b) for a, b in zip(epoch0, epoch1, strict=True)) <= 2
    ds.set_epoch(0)
    assert torch.equal(ds[3], epoch0[3])
    other_seed = SegmentDataset(small_corpus, 200, 8000, segments_per_epoch=16, seed=6)
    assert not torch.equal(other_seed[3], epoch0[3])
    with pytest.raises(ValueError, match="epoch"):
        ds.set_epoch(-1)


def test_segments_identical_in_dataloader_workers(small_corpus: list[AudioItem]) -> None:
    ds = SegmentDataset(small_corpus, 100, 8000, segments_per_epoch=8, seed=1)
    ds.set_epoch(2)
    direct = torch.stack([ds[i] for i in range(8)])
    loaded = torch.cat(list(DataLoader(ds, batch_size=2, num_workers=2)))
    assert torch.equal(direct, loaded)


def test_files_picked_in_proportion_to_length(tmp_path: Path) -> None:
    write(tmp_path / "short.wav", np.full(1000, 0.5), subtype="FLOAT")
    write(tmp_path / "long.wav", np.full(9000, -0.5), subtype="FLOAT")
    ds = SegmentDataset(load_corpus(tmp_path), 50, 8000, segments_per_epoch=400)
    high = int(mu_law_encode(torch.tensor(0.5)))
    share_short = sum(int(ds[i][-1]) == high for i in range(len(ds))) / len(ds)
    assert 0.04 < share_short < 0.18  # expected 0.1


def test_short_files_left_padded_with_silence(tmp_path: Path) -> None:
    write(tmp_path / "tiny.wav", np.full(100, 0.5), subtype="FLOAT")
    seg = SegmentDataset(load_corpus(tmp_path), segment_length=399, sample_rate=8000)[0]
    assert seg.shape == (400,)
    assert (seg[:300] == SILENCE_CODE).all()
    assert (seg[300:] == int(mu_law_encode(torch.tensor(0.5)))).all()


def test_segments_resampled_match_whole_file(tmp_path: Path) -> None:
    x = np.convolve(
        np.random.default_rng(0).standard_normal(3 * 22050) * 0.1, np.ones(8) / 8, "same"
    )
    write(tmp_path / "a.wav", x, rate=22050, subtype="FLOAT")
    items = load_corpus(tmp_path)
    ds = SegmentDataset(items, 999, 16000, segments_per_epoch=20, quantization_channels=65536)
    full = mu_law_encode(resample(torch.from_numpy(x).float(), 22050, 16000), 65536)
    assert ds.total_frames == full.shape[0] == 48000
    # Resampling a window with margin differs from resampling the whole file only by float
    # rounding, which can move a sample across one of the 65,536 code boundaries; cutting the
    # window without margin would give edge errors of hundreds of codes.
    for i in range(len(ds)):
        seg = ds[i]
        candidates = torch.nonzero((full[: full.shape[0] - 999] - seg[0]).abs() <= 1).flatten().tolist()
        errors = [int((full[s : s + 1000] - seg).abs().max()) for s in candidates]
        assert errors and min(errors) <= 1, f"segment {i} is not a span of the whole-file resampling"


def test_trim_silence_never_samples_the_silent_edges(tmp_path: Path) -> None:
    x = np.concatenate([np.zeros(4000), np.full(2000, 0.5), np.zeros(4000)])
    write(tmp_path / "padded.wav", x, subtype="FLOAT")
    items = load_corpus(tmp_path)
    trimmed = SegmentDataset(items, 999, 8000, segments_per_epoch=20, trim_silence_db=-40.0)
    assert trimmed.spans == [(4000, 6000)] and trimmed.total_frames == 2000
    high = int(mu_law_encode(torch.tensor(0.5)))
    assert all((trimmed[i] == high).all() for i in range(20))
    untrimmed = SegmentDataset(items, 999, 8000, segments_per_epoch=20)
    assert any((untrimmed[i] == SILENCE_CODE).any() for i in range(20))
    with pytest.raises(ValueError, match="negative"):
        SegmentDataset(items, 999, 8000, trim_silence_db=40.0)


def test_unreadable_file_at_get_time_is_replaced(
    small_corpus: list[AudioItem], warnings_log: pytest.LogCaptureFixture
) -> None:
    ds = SegmentDataset(small_corpus, 200, 8000, segments_per_epoch=12)
    small_corpus[0].path.write_text("overwritten with junk")
    segs = [ds[i] for i in range(12)]
    assert all(seg.shape == (201,) for seg in segs)
    assert small_corpus[0].path.name in warnings_log.text


def test_segment_dataset_argument_errors(small_corpus: list[AudioItem]) -> None:
    with pytest.raises(ValueError, match="segment_length"):
        SegmentDataset(small_corpus, 0, 8000)
    with pytest.raises(ValueError, match="seed"):
        SegmentDataset(small_corpus, 10, 8000, seed=-1)
    with pytest.raises(CorpusError, match="empty"):
        SegmentDataset([], 10, 8000)


def test_iter_file_codes_whole_files(small_corpus: list[AudioItem]) -> None:
    got = [
        (item.path.name, codes.shape[0], codes.dtype)
        for item, codes in iter_file_codes(small_corpus, 16000)
    ]
    assert got == [("long.wav", 12000, torch.int64), ("mid.flac", 6000, torch.int64)]
    capped = [codes.shape[0] for _, codes in iter_file_codes(small_corpus, 8000, max_seconds=0.5)]
    assert capped == [4000, 3000]


# --- encodings, speakers and mel-conditioned segments ------------------------------------------


def find_span(whole: np.ndarray, seg: np.ndarray) -> list[int]:
    """Starts ``s`` with ``whole[s : s + len(seg)] == seg``."""
    n = len(seg)
    return [s for s in range(len(whole) - n + 1) if np.array_equal(whole[s : s + n], seg)]


def test_linear_segments_decode_to_the_files_pcm16_samples(tmp_path: Path) -> None:
    pcm = np.random.default_rng(0).integers(-32768, 32768, 1500).astype(np.int16)
    pcm[:2] = [-32768, 32767]  # the extremes survive too
    sf.write(str(tmp_path / "a.wav"), pcm, 8000, subtype="PCM_16")
    items = load_corpus(tmp_path)
    ds = SegmentDataset(
        items, 100, 8000, quantization_channels=65536, segments_per_epoch=6, encoding="linear"
    )
    for i in range(len(ds)):
        seg = ds[i]
        assert seg.dtype == torch.int64
        ints = np.round(decode(seg, "linear", 65536).double().numpy() * 32768).astype(np.int64)
        assert np.array_equal(seg.numpy() - 32768, ints)
        assert find_span(pcm.astype(np.int64), ints), f"segment {i} is not a span of the file"
    [(_, codes)] = list(iter_file_codes(items, 8000, 65536, encoding="linear"))
    assert np.array_equal(codes.numpy() - 32768, pcm.astype(np.int64))
    with pytest.raises(ValueError, match="encoding.*'alaw'"):
        SegmentDataset(items, 100, 8000, encoding="alaw")
    with pytest.raises(ValueError, match="even.*255"):
        SegmentDataset(items, 100, 8000, quantization_channels=255, encoding="linear")


def test_linear_short_file_padded_with_linear_silence(tmp_path: Path) -> None:
    write(tmp_path / "tiny.wav", np.full(50, 0.5), subtype="FLOAT")
    seg = SegmentDataset(load_corpus(tmp_path), 99, 8000, 65536, encoding="linear")[0]
    assert (seg[:50] == 32768).all() and (seg[50:] == 49152).all()


@pytest.fixture
def vctk_corpus(tmp_path: Path) -> list[AudioItem]:
    """Two speakers; each file is a constant that tells which speaker it belongs to."""
    levels = {"p225": 0.5, "p226": -0.25, "p301": 0.75}
    for spk, level in levels.items():
        write(tmp_path / spk / f"{spk}_001.wav", np.full(400, level), subtype="FLOAT")
    return load_corpus(tmp_path, layout="vctk")


def test_speaker_index_is_returned_per_item(vctk_corpus: list[AudioItem]) -> None:
    speakers = speakers_of(vctk_corpus)
    assert speakers == ["p225", "p226", "p301"]
    ds = SegmentDataset(vctk_corpus, 99, 8000, segments_per_epoch=30, speakers=speakers[::-1])
    code_of = {int(mu_law_encode(torch.tensor(v))): v for v in (0.5, -0.25, 0.75)}
    spk_of = {0.5: "p225", -0.25: "p226", 0.75: "p301"}
    seen = set()
    for i in range(len(ds)):
        item = ds[i]
        assert set(item) == {"codes", "speaker"} and item["speaker"].dtype == torch.int64
        assert item["speaker"].shape == ()
        spk = spk_of[code_of[int(item["codes"][-1])]]
        assert speakers[::-1][int(item["speaker"])] == spk
        seen.add(spk)
    assert seen == set(speakers)


def test_unknown_or_missing_speaker_errors(vctk_corpus: list[AudioItem], tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match=r"p226_001.wav.*'p226'.*\['p225', 'p301'\]"):
        SegmentDataset(vctk_corpus, 99, 8000, speakers=["p225", "p301"])
    with pytest.raises(ValueError, match="repeated.*p225"):
        SegmentDataset(vctk_corpus, 99, 8000, speakers=["p225", "p225", "p226", "p301"])
    anonymous = vctk_corpus + [AudioItem(tmp_path / "anon.wav", None, 400, 8000)]
    with pytest.raises(CorpusError, match="anon.wav"):
        speakers_of(anonymous)
    with pytest.raises(CorpusError, match="anon.wav.*None"):
        SegmentDataset(anonymous, 99, 8000, speakers=speakers_of(vctk_corpus))


MEL = MelSpec(8000, hop_length=80, n_fft=256, n_mels=12)


@pytest.fixture
def mel_corpus(tmp_path: Path) -> list[AudioItem]:
    """Noise at 8 kHz, at 11.025 kHz (resampled to 8 kHz) and a file shorter than a segment."""
    rng = np.random.default_rng(0)

    def smooth(n: int) -> np.ndarray:
        return np.convolve(rng.standard_normal(n) * 0.2, np.ones(4) / 4, "same")

    write(tmp_path / "a8k.wav", smooth(2500), rate=8000, subtype="FLOAT")
    write(tmp_path / "b11k.wav", smooth(3000), rate=11025, subtype="FLOAT")
    write(tmp_path / "c_short.wav", smooth(250), rate=8000, subtype="FLOAT")
    return load_corpus(tmp_path)


def test_mel_segments_are_aligned_slices_of_the_whole_file(mel_corpus: list[AudioItem]) -> None:
    length, ctx, hop = 400, 2, MEL.hop_length
    ds = SegmentDataset(
        mel_corpus, length, 8000, 65536, segments_per_epoch=24, mel=MEL, mel_context=ctx
    )
    wholes = {item.path.name: read_audio(item.path, sample_rate=8000)[0] for item in mel_corpus}
    pad = length + hop  # the search looks at aligned starts a in [-pad, T + pad)
    seen = set()
    for i in range(len(ds)):
        item = ds[i]
        assert set(item) == {"codes", "mel"}
        assert item["codes"].shape == (length + 1,) and item["mel"].shape == (12, 5 + 2 * ctx)
        assert item["mel"].dtype == torch.float32
        matches = []
        for name, wav in wholes.items():
            codes = mu_law_encode(F.pad(wav, (pad, pad)), 65536)
            for a in range(-pad + hop, wav.shape[0] + pad - length + 1, hop):  # a % hop == 0
                if torch.equal(codes[pad + a - 1 : pad + a + length], item["codes"]):
                    matches.append((name, a))
        assert matches, f"item {i}: codes are not an aligned span of any file"
        name, a = matches[0]
        seen.add(name)
        want = log_mel(wholes[name], MEL, first_frame=a // hop - ctx, n_frames=5 + 2 * ctx)
        torch.testing.assert_close(item["mel"], want, rtol=0, atol=1e-4)
        whole_mel = file_mel(wholes[name], MEL, context=10)  # the vocoding counterpart
        col = a // hop - ctx + 10
        torch.testing.assert_close(item["mel"], whole_mel[:, col : col + 9], rtol=0, atol=1e-4)
        if name == "c_short.wav":  # shorter than a segment: ends with the file, silence before
            assert a == -80 and (item["codes"][:80] == 32768).all()
    assert seen == set(wholes)


def test_file_mel_covers_the_file_with_context() -> None:
    wav = torch.randn(1001, generator=torch.Generator().manual_seed(0)) * 0.1
    out = file_mel(wav, MEL, context=3)
    assert out.shape == (12, 13 + 6)
    torch.testing.assert_close(out[:, 3:-3], log_mel(wav, MEL), rtol=0, atol=0)
    assert torch.equal(file_mel(wav, MEL, 0), log_mel(wav, MEL))
    with pytest.raises(ValueError, match="context.*-1"):
        file_mel(wav, MEL, -1)


def test_mel_argument_errors_name_both_values(mel_corpus: list[AudioItem]) -> None:
    with pytest.raises(ValueError, match="segment_length=450.*hop_length=80"):
        SegmentDataset(mel_corpus, 450, 8000, mel=MEL)
    with pytest.raises(ValueError, match="sample_rate=16000.*sample_rate=8000"):
        SegmentDataset(mel_corpus, 400, 8000, mel=MelSpec(16000, hop_length=80))
    with pytest.raises(ValueError, match="mel_context=2"):
        SegmentDataset(mel_corpus, 400, 8000, mel_context=2)
    with pytest.raises(ValueError, match="mel_context.*-1"):
        SegmentDataset(mel_corpus, 400, 8000, mel=MEL, mel_context=-1)


def test_dict_items_batch_in_a_dataloader_and_depend_on_seed_and_index(
    vctk_corpus: list[AudioItem],
) -> None:
    def make(seed: int) -> SegmentDataset:
        return SegmentDataset(
            vctk_corpus, 160, 8000, segments_per_epoch=6, seed=seed,
            speakers=speakers_of(vctk_corpus), mel=MEL, mel_context=1,
        )

    ds = make(3)
    ds.set_epoch(1)
    direct = [ds[i] for i in range(6)]
    batches = list(DataLoader(ds, batch_size=3, num_workers=2))
    assert [tuple(b["codes"].shape) for b in batches] == [(3, 161)] * 2
    assert [tuple(b["mel"].shape) for b in batches] == [(3, 12, 4)] * 2
    assert [tuple(b["speaker"].shape) for b in batches] == [(3,)] * 2
    for key in ("codes", "speaker", "mel"):  # workers draw the same items as this process
        loaded = torch.cat([b[key] for b in batches])
        assert torch.equal(loaded, torch.stack([d[key] for d in direct]))
    again = make(3)
    again.set_epoch(1)
    for i in (0, 4):
        assert all(torch.equal(again[i][key], direct[i][key]) for key in direct[i])
    other = make(4)
    other.set_epoch(1)
    assert any(not torch.equal(other[i]["codes"], direct[i]["codes"]) for i in range(6))


# --- bundled data ---------------------------------------------------------------------------


def test_bundled_speech8k_loads() -> None:
    items = load_corpus(SPEECH8K)
    assert len(items) >= 40
    assert 3 * 60 <= corpus_seconds(items) <= 5 * 60
    assert {item.rate for item in items} == {8000}
    info = sf.info(str(items[0].path))
    assert (info.channels, info.subtype) == (1, "PCM_16")
    assert sum(p.stat().st_size for p in SPEECH8K.rglob("*")) < 6_000_000
    train, valid = split_items(items)
    assert len(valid) >= 1 and len(train) + len(valid) == len(items)


# --- the package's public surface ------------------------------------------------------------


def test_every_name_of_the_former_module_imports_from_the_package() -> None:
    """``wavedil.data`` was one module; its names must keep importing from the package."""
    import wavedil.data as data

    former = ["AUDIO_EXTENSIONS", "LAYOUTS", "VCTK_MICS", "AudioItem", "CorpusError", "find_audio_files",
              "probe_audio", "load_corpus", "corpus_seconds", "split_items", "SegmentDataset", "iter_file_codes",
              "speakers_of", "file_mel"]  # fmt: skip
    assert set(former) <= set(data.__all__)
    for name in data.__all__:
        assert getattr(data, name) is not None, name


def test_iter_file_audio_is_what_iter_file_codes_encodes(small_corpus: list[AudioItem], tmp_path: Path) -> None:
    waves = list(iter_file_audio(small_corpus + [AudioItem(tmp_path / "gone.wav")], 8000, max_seconds=0.5))
    codes = list(iter_file_codes(small_corpus, 8000, max_seconds=0.5))
    assert [it.path.name for it, _ in waves] == ["long.wav", "mid.flac"]  # the missing file is skipped
    for (_, wav), (_, c) in zip(waves, codes, strict=True):
        assert wav.dtype == torch.float32 and wav.shape == c.shape == (min(4000, wav.shape[0]),)
        assert torch.equal(mu_law_encode(wav), c)
    with pytest.raises(ValueError, match="max_seconds must be positive"):
        list(iter_file_audio(small_corpus, 8000, max_seconds=0))
    with pytest.raises(ValueError, match="sample_rate must be a positive integer"):
        list(iter_file_audio(small_corpus, 0))
