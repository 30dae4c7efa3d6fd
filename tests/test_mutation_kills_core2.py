"""Tests added by a third mutation audit, of the modules the first two left out: each one fails
on a plausible bug (a mutant) that the rest of the suite let through, and passes on the real code.

Covered here:

* log-mel features (:mod:`wavedil.conditioning`): a ``win_length`` equal to ``n_fft`` is
  accepted and ``f_min == f_max`` refused; a shorter window is a Hann window of that length
  centred in the ``n_fft`` frame (checked against a hand-made STFT); the upsampler's stage
  factors split squares of primes (``9 -> (3, 3)``);
* the model: a ``mel`` passed to a model without mel conditioning is refused by ``forward``;
  a 0-dim bool tensor is not an index (seed, dilations);
* back-ends: the largest 64-bit seed is accepted; a back-end's capabilities refuse a weight mode
  it lacks on the model's device and speaker models when it has no speaker support; a
  continuation request needs ``N + 1`` columns of conditioning; teacher forcing refuses a mel
  batch that is neither 1 nor the codes'; the torch back-end's continuation feeds the last
  drawn code (``next_params`` are the parameters of sample ``N``);
* synthesis: numbered outputs are padded to the digits of the last index; exactly
  ``MAX_SAMPLES`` samples and an input exactly ``max_seconds`` long are accepted;
* training settings: 60 minutes and, with days, 24 hours are refused in a duration;
  ``keep_last=0`` is refused; ``resume="false"`` (a string from a YAML or the command line) is
  no resume;
* corpus files: hidden folders are skipped, files are sorted by their path relative to the root,
  float64 files holding NaN are refused; an LJSpeech ``metadata.csv`` with a byte-order mark or
  a repeated id; a corpus whose only audio-named entries are not files names them;
* progress lines: large negative floats get thousands separators, elapsed hours show minutes
  modulo 60, the update that reaches the total prints at once, and a resumed count's rate and
  ETA count only the units done since the start;
* ``trainer.precision=auto``'s measurement: steps per second over the timed steps only,
  after the warm-up;
* two bugs the audit found: non-integer dilations in a config were rounded (``int(2.5)``), and
  ``fit_mel_stats`` missed differing band counts after an empty first tensor.

Tiny models and files written to ``tmp_path``; the file runs in a few seconds.
"""

from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio
from test_commands import MEL, SR, TINY, one_thread, save_run  # noqa: F401 (one_thread: an autouse fixture)

from wavedil import WaveNet, WaveNetConfig


def _tiny(**config) -> WaveNet:
    torch.manual_seed(0)
    return WaveNet(WaveNetConfig(**{**TINY, "quantization_channels": 32, **config})).eval()


def _wav(path: Path, n: int = 400, rate: int = SR, subtype: str = "PCM_16", data=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if data is None:
        data = 0.3 * np.sin(np.arange(n) * 0.05)
    sf.write(str(path), np.asarray(data, dtype=np.float64), rate, subtype=subtype)
    return path


# ----------------------------------------------------------------------------- log-mel features


def test_melspec_accepts_a_window_as_long_as_the_fft():
    """``win_length <= n_fft`` (documented): equal to ``n_fft`` is the default window, not an error."""
    from wavedil.conditioning import MelSpec, log_mel

    spec = MelSpec(SR, hop_length=40, n_fft=128, win_length=128, n_mels=8)
    assert spec.window == 128
    wav = 0.3 * torch.sin(torch.arange(400) * 0.05)
    default = MelSpec(SR, hop_length=40, n_fft=128, n_mels=8)
    assert torch.equal(log_mel(wav, spec), log_mel(wav, default))


def test_melspec_refuses_f_min_equal_to_f_max():
    """A filter bank from ``f_min`` to ``f_max`` needs ``f_min < f_max``: equal edges are refused."""
    from wavedil.conditioning import MelSpec

    with pytest.raises(ValueError, match=r"need 0 <= f_min < f_max"):
        MelSpec(SR, f_min=1000.0, f_max=1000.0)
    assert MelSpec(SR, f_min=1000.0, f_max=1001.0).max_freq == 1001.0


def test_log_mel_with_a_short_window_is_a_centred_hann_window_of_that_length():
    """Frame ``m`` is ``n_fft`` zero-extended samples from ``m * hop - n_fft // 2``, multiplied by a
    Hann window of ``win_length`` samples centred in it (zeros around), its magnitude spectrum
    through the Slaney mel filters, then ``log(max(., 1e-5))``: computed here by hand."""
    from wavedil.conditioning import MelSpec, log_mel

    hop, n_fft, win, n_mels = 40, 128, 64, 8
    spec = MelSpec(SR, hop_length=hop, n_fft=n_fft, win_length=win, n_mels=n_mels)
    torch.manual_seed(0)
    wav = 0.3 * torch.randn(400)
    got = log_mel(wav, spec)  # (n_mels, 10)
    window = torch.zeros(n_fft)
    window[(n_fft - win) // 2 : (n_fft - win) // 2 + win] = torch.hann_window(win)
    ext = torch.cat([torch.zeros(n_fft), wav, torch.zeros(2 * n_fft)])  # sample i at ext[n_fft + i]
    fb = torchaudio.functional.melscale_fbanks(n_fft // 2 + 1, 0.0, SR / 2, n_mels, SR, norm="slaney", mel_scale="slaney")
    cols = []
    for m in range(got.shape[1]):
        start = n_fft + m * hop - n_fft // 2
        mag = torch.fft.rfft(ext[start : start + n_fft] * window).abs()
        cols.append(torch.log(torch.clamp(fb.T @ mag, min=1e-5)))
    torch.testing.assert_close(got, torch.stack(cols, 1), rtol=1e-4, atol=1e-4)
    # and the window matters: the full-length window gives other features
    full = log_mel(wav, MelSpec(SR, hop_length=hop, n_fft=n_fft, n_mels=n_mels))
    assert (full - got).abs().max() > 0.1


def test_upsample_factors_split_squares_of_primes():
    """The stage factors are the prime factors (pairs of 2 merged into 4): a square of a prime is
    two stages, not one long one."""
    from wavedil.conditioning import Upsampler, upsample_factors

    assert upsample_factors(9) == (3, 3)
    assert upsample_factors(25) == (5, 5)
    assert upsample_factors(100) == (4, 5, 5)
    assert upsample_factors(49 * 2) == (2, 7, 7)
    up = Upsampler(2, 9)
    assert up.factors == (3, 3) and [c.weight.shape[-1] for c in up.stages] == [7, 7]
    assert up(torch.randn(1, 2, 4)).shape == (1, 2, 36)


# ----------------------------------------------------------------------------- model and indices


def test_forward_refuses_mel_for_a_model_without_mel_conditioning():
    """A mel passed to a plain model is a mistake (a vocoder's input given to the wrong model):
    ``forward`` and ``loss`` refuse it instead of ignoring it."""
    model = _tiny()
    codes = torch.randint(0, 32, (1, 40))
    mel = torch.zeros(1, 8, 7)
    with pytest.raises(ValueError, match="no mel conditioning"):
        model(codes, mel=mel)
    with pytest.raises(ValueError, match="no mel conditioning"):
        model.loss(codes, mel=mel)


def test_a_bool_tensor_is_not_an_integer_seed_or_dilation():
    """``True`` is refused as a seed or a layer size; so is ``torch.tensor(True)`` (0-dim bool),
    while a 0-dim integer tensor is accepted."""
    from wavedil.backends import check_seed
    from wavedil.causal import as_index, check_dilations

    assert as_index(torch.tensor(True)) is None and as_index(torch.tensor(7)) == 7
    with pytest.raises(ValueError, match="seed must be an integer"):
        check_seed(torch.tensor(True))
    with pytest.raises(ValueError, match=r"dilations\[1\] must be an integer >= 1"):
        check_dilations((1, torch.tensor(True)))
    assert check_seed(torch.tensor(7)) == 7


# ----------------------------------------------------------------------------- back-ends


def test_check_seed_accepts_the_largest_64_bit_seed():
    """Seeds are ``[0, 2**64 - 1]``: both ends are accepted (and ``2**64`` refused)."""
    from wavedil.backends import MAX_SEED, check_seed

    assert check_seed(MAX_SEED) == 2**64 - 1
    assert check_seed(np.uint64(2**64 - 1)) == 2**64 - 1
    assert check_seed(0) == 0
    with pytest.raises(ValueError, match="seed must be an integer"):
        check_seed(MAX_SEED + 1)


def test_capabilities_refuse_a_missing_weight_mode_and_speaker_models():
    """:meth:`Capabilities.unsupported_reason`: a weight mode the back-end lacks on the model's
    device, and a speaker model for a back-end without speaker support, each give their reason."""
    from wavedil.backends import Capabilities

    caps = Capabilities(devices={"cpu": ("fp32", "bf16")}, speaker=False)
    plain, spk = _tiny(), _tiny(global_cond_classes=3, global_cond_channels=4)
    assert caps.unsupported_reason("x", plain, "fp32") is None
    assert caps.unsupported_reason("x", plain, "bf16") is None
    assert caps.unsupported_reason("x", plain, "int8") == (
        "the 'x' back-end runs weights='int8' not on 'cpu' (it runs fp32 on cpu, bf16 on cpu)"
    )
    assert caps.unsupported_reason("x", spk, "fp32") == "the 'x' back-end does not run speaker-conditioned models"
    assert Capabilities(devices={"cpu": ("fp32",)}).unsupported_reason("x", spk, "fp32") is None


def test_a_continuation_request_needs_one_more_column_of_conditioning():
    """With ``continuation`` the last drawn code is fed too, so a vocoder's ``local`` needs
    ``N + 1`` columns; ``N`` is enough without it."""
    from wavedil.backends import SamplingRequest

    model = _tiny(mel=MEL)
    n = 6
    state = model.init_state(1)
    params = torch.zeros(1, 32)
    u = torch.rand(n, 1, dtype=torch.float64)
    local = torch.zeros(1, 8, n)
    SamplingRequest(model, state, params, u, 1.0, local=local)  # accepted
    with pytest.raises(ValueError, match=r"local must be \(1, n_mels, >= 7\)"):
        SamplingRequest(model, state, params, u, 1.0, local=local, continuation=True)
    SamplingRequest(model, state, params, u, 1.0, local=torch.zeros(1, 8, n + 1), continuation=True)


def test_teacher_forcing_refuses_a_mel_batch_that_is_neither_one_nor_the_codes():
    """``mel`` of batch 1 is shared by every row, of batch ``B`` one per row; any other batch is a
    ``ValueError`` naming it (not an error from deep inside torch)."""
    from wavedil.backends import teacher_forcing_inputs

    model = _tiny(mel=MEL)
    ctx, hop = model.mel_context, MEL["hop_length"]
    codes = torch.randint(0, 32, (2, 2 * hop))
    _, _, local = teacher_forcing_inputs(model, codes, None, torch.zeros(1, 8, 2 + 2 * ctx))
    assert local.shape == (2, 8, 2 * hop)
    with pytest.raises(ValueError, match=r"mel must have batch 1 or 2, got shape \(3, 8, "):
        teacher_forcing_inputs(model, codes, None, torch.zeros(3, 8, 2 + 2 * ctx))


def test_torch_backend_continuation_feeds_the_last_code():
    """The torch back-end's ``continuation``: ``next_params`` are the head parameters of sample
    ``N`` (after feeding code ``N - 1``), equal to the forward over the whole sequence, and a
    request continued from ``next_state`` draws what one long request draws."""
    from wavedil.backends import SamplingRequest, TorchBackend

    model = _tiny()
    impl = TorchBackend()
    u = torch.rand(30, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    opener = torch.full((1, 1), model.silence_code)
    with torch.no_grad():
        params, state = model.step(opener, model.init_state(1))
        # the torch back-end advances the rings in place: each request gets its own copy
        whole = impl.sample(SamplingRequest(model, state.clone(), params[:, :, -1], u, 1.0))
        first = SamplingRequest(model, state.clone(), params[:, :, -1], u[:12], 1.0, continuation=True)
        a = impl.sample(first)
        full = model(torch.cat([opener, a], dim=1))  # (1, P, 13): column 12 is sample 12's
        torch.testing.assert_close(first.next_params, full[:, :, 12], rtol=0, atol=1e-5)
        b = impl.sample(SamplingRequest(model, first.next_state, first.next_params, u[12:], 1.0))
    assert torch.equal(torch.cat([a, b], dim=1), whole)


# ----------------------------------------------------------------------------- synthesis


def test_numbered_paths_are_padded_to_the_digits_of_the_last_index():
    """``name_000`` .. ``name_999`` for 1000 files (the last index has 3 digits), 4 digits from 1001."""
    from wavedil.synthesis import numbered_path

    out = Path("d/out.wav")
    assert numbered_path(out, 0, 1) == out
    assert numbered_path(out, 999, 1000) == Path("d/out_999.wav")
    assert numbered_path(out, 0, 1000) == Path("d/out_000.wav")
    assert numbered_path(out, 0, 1001) == Path("d/out_0000.wav")
    assert numbered_path(out, 1000, 1001) == Path("d/out_1000.wav")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return save_run(tmp_path_factory.mktemp("plain"))


@pytest.fixture(scope="module")
def vocoder_run(tmp_path_factory) -> Path:
    return save_run(tmp_path_factory.mktemp("voc"), mel=MEL)


def test_generate_to_files_accepts_exactly_max_samples(run_dir, tmp_path, monkeypatch):
    """The limit is inclusive: ``seconds * rate == MAX_SAMPLES`` is generated, one more is refused."""
    import wavedil.synthesis as synthesis_mod
    from wavedil.synthesis import generate_to_files

    monkeypatch.setattr(synthesis_mod, "MAX_SAMPLES", 160)
    res = generate_to_files(run_dir, tmp_path / "out.wav", 160 / SR, seed=0, backend="torch")
    assert res.codes.shape == (1, 160)
    with pytest.raises(ValueError, match=r"is 161 samples at 8000 Hz; the limit is 160"):
        generate_to_files(run_dir, tmp_path / "out2.wav", 161 / SR, seed=0, backend="torch")


def test_vocode_file_accepts_an_input_exactly_max_seconds_long(vocoder_run, tmp_path):
    """``--max-seconds`` refuses longer inputs only: 20 frames of hop 40 at 8 kHz are 0.1 s, and
    ``max_seconds=0.1`` vocodes them (a hair less refuses them)."""
    from wavedil.synthesis import vocode_file

    mel = np.full((MEL["n_mels"], 20), -3.0, dtype=np.float32)
    np.save(tmp_path / "in.npy", mel)
    res = vocode_file(vocoder_run, tmp_path / "in.npy", tmp_path / "out.wav", seed=0, max_seconds=0.1, backend="torch")
    assert res.mel_frames == 20 and res.codes.shape == (1, 800)
    with pytest.raises(ValueError, match=r"is 0\.1 s \(20 mel frames\); the limit is --max-seconds 0\.0999"):
        vocode_file(vocoder_run, tmp_path / "in.npy", tmp_path / "out2.wav", seed=0, max_seconds=0.0999)


# ----------------------------------------------------------------------------- training settings


def test_durations_refuse_60_minutes_and_24_hours_with_days():
    """``HH:MM:SS``: minutes and seconds below 60; ``DD:HH:MM:SS``: hours below 24 too (without
    days, any number of hours)."""
    from wavedil.train_config import parse_duration

    assert parse_duration("00:59:59") == 3599.0
    assert parse_duration("1:23:00:00") == (24 + 23) * 3600.0
    assert parse_duration("30:00:00") == 30 * 3600.0
    with pytest.raises(ValueError, match=r"minutes and seconds must be < 60"):
        parse_duration("00:60:00")
    with pytest.raises(ValueError, match=r"minutes and seconds must be < 60"):
        parse_duration("00:00:60")
    with pytest.raises(ValueError, match=r"hours < 24 with days"):
        parse_duration("1:24:00:00")


def test_keep_last_must_keep_at_least_one_checkpoint():
    """``trainer.keep_last=0`` would delete every checkpoint, the newest included: refused
    (``keep_every=0`` is the documented "none" and stays valid)."""
    from wavedil.train_config import TrainerConfig

    with pytest.raises(ValueError, match=r"trainer\.keep_last must be an integer >= 1, got 0"):
        TrainerConfig(keep_last=0)
    assert TrainerConfig(keep_last=1, keep_every=0).keep_last == 1


@pytest.mark.parametrize("text", ["false", "False", "FALSE", "none", ""])
def test_resume_strings_meaning_no_are_no_resume(text):
    """``trainer.resume=false`` arriving as a string (a quoted YAML value, an environment
    variable) is no resume, not a checkpoint path called "false"; ``"true"`` is the newest
    checkpoint; a path is kept as given."""
    from wavedil.train_config import TrainerConfig

    assert TrainerConfig(resume=text).resume is False
    assert TrainerConfig(resume="True").resume is True
    assert TrainerConfig(resume="runs/a").resume == "runs/a"


# ----------------------------------------------------------------------------- corpus files


def test_hidden_folders_are_not_searched_and_files_sort_by_relative_path(tmp_path):
    """``find_audio_files`` and ``load_corpus``: a hidden folder (``.cache/``) is skipped, and the
    result is sorted by path relative to the root (``a/c.wav`` before ``b.wav``, whatever the
    order of the walk, which lists a folder's own files before its subfolders')."""
    from wavedil.data import find_audio_files, load_corpus

    _wav(tmp_path / "b.wav")
    _wav(tmp_path / "a" / "c.wav")
    _wav(tmp_path / ".cache" / "d.wav")
    want = [tmp_path / "a" / "c.wav", tmp_path / "b.wav"]
    assert find_audio_files(tmp_path) == want
    assert [item.path for item in load_corpus(tmp_path)] == want


def test_a_float64_file_holding_nan_is_refused(tmp_path):
    """Float files are scanned for NaN/inf: 64-bit ones (``DOUBLE``) as well as 32-bit ones."""
    from wavedil.audio import AudioReadError
    from wavedil.data import load_corpus, probe_audio

    data = 0.1 * np.ones(300)
    data[123] = np.nan
    bad = _wav(tmp_path / "bad.wav", data=data, subtype="DOUBLE")
    good = _wav(tmp_path / "good.wav", subtype="DOUBLE")
    assert sf.info(str(bad)).subtype == "DOUBLE"
    with pytest.raises(AudioReadError, match="holds NaN or infinite samples"):
        probe_audio(bad)
    assert probe_audio(good) == (400, SR)
    assert [item.path for item in load_corpus(tmp_path)] == [good]


def test_ljspeech_metadata_with_a_byte_order_mark_and_a_repeated_id(tmp_path):
    """``metadata.csv`` saved with a UTF-8 byte-order mark still names its first file, and an id
    listed twice is one file (in metadata order)."""
    from wavedil.data import load_corpus

    for name in ("LJ001", "LJ002"):
        _wav(tmp_path / "wavs" / f"{name}.wav")
    (tmp_path / "metadata.csv").write_bytes("\ufeffLJ002|text two\nLJ001|text one\nLJ002|again\n".encode())
    items = load_corpus(tmp_path, "ljspeech")
    assert [item.path.name for item in items] == ["LJ002.wav", "LJ001.wav"]


def test_a_corpus_whose_audio_names_are_all_folders_names_them(tmp_path):
    """Entries with an audio name that are not files (a folder ``x.wav/``) are counted as skipped
    files: the error says none of them is usable and why, not that no audio file exists."""
    from wavedil.data import CorpusError, load_corpus

    (tmp_path / "x.wav").mkdir()
    with pytest.raises(CorpusError, match=r"none of the 1 audio files of .* is usable \(.*x\.wav': is a folder"):
        load_corpus(tmp_path)


# ----------------------------------------------------------------------------- progress lines


def _progress(**kwargs):
    from wavedil.progress import Progress

    now = [0.0]
    out = io.StringIO()
    bar = Progress(unit="step", file=out, tty=False, clock=lambda: now[0], **kwargs)
    return bar, out, now


def test_large_negative_postfix_values_get_thousands_separators():
    from wavedil.progress import format_postfix

    assert format_postfix({"a": -12345.6, "b": 12345.6, "c": -5.25}) == "a=-12,346 b=12,346 c=-5.250"


def test_elapsed_hours_show_minutes_modulo_60():
    bar, _, now = _progress(total=None)
    now[0] = 3725.0  # 1 h 2 min 5 s
    assert "elapsed 1:02:05" in bar.line()


def test_the_update_that_reaches_the_total_prints_at_once():
    """With a long interval nothing prints until the count reaches the total; that update prints
    the final line at once (a run that ends is reported), and close adds no second copy."""
    bar, out, _ = _progress(total=3, interval=100.0)
    bar.update(1)
    assert out.getvalue() == ""
    bar.update(2)
    assert out.getvalue() == "3/3 step (100.0%), elapsed 0:00:00\n"  # no time passed: no rate yet
    bar.close()
    assert out.getvalue().count("\n") == 1


def test_a_resumed_count_reports_the_rate_and_eta_of_this_run():
    """``initial`` units were done before: the rate counts the units done since the start only,
    and the ETA follows from it."""
    bar, _, now = _progress(total=100, initial=50, interval=1000.0)
    now[0] = 10.0
    bar.update(10)
    assert bar.line() == "60/100 step (60.0%), 1 step/s, elapsed 0:00:10, eta 0:00:40"


# ----------------------------------------------------------------------------- precision=auto


def test_measured_steps_per_second_time_only_the_steps_after_the_warmup(monkeypatch):
    """``measure_steps_per_second``: the clock starts after ``warmup`` steps and the rate is
    ``steps / seconds``; with every step taking exactly one second of a fake clock it is 1.0."""
    import wavedil.precision as precision_mod

    now = [0.0]
    monkeypatch.setattr(precision_mod, "time", SimpleNamespace(perf_counter=lambda: now[0]))
    real_loss = WaveNet.loss

    def one_second_loss(self, *args, **kwargs):
        now[0] += 1.0
        return real_loss(self, *args, **kwargs)

    monkeypatch.setattr(WaveNet, "loss", one_second_loss)
    model = _tiny()
    batch = torch.randint(0, 32, (2, 30))
    rate = precision_mod.measure_steps_per_second(
        model, lambda p: torch.optim.SGD(p, lr=0.1), batch, {}, torch.device("cpu"), "32", steps=3, warmup=2
    )
    assert now[0] == 5.0 and rate == 1.0


# ----------------------------------------------------------------------------- two bugs the audit found


def test_a_config_with_non_integer_dilations_is_refused_not_rounded():
    """Before: ``WaveNetConfig.from_dict`` (what training's config goes through) took
    ``int(x)`` of each dilation, so ``[1, 2.5, True]`` became ``(1, 2, 1)`` without a word."""
    from wavedil.config import model_config

    with pytest.raises(ValueError, match=r"dilations\[1\] must be an integer >= 1, got 2\.5"):
        WaveNetConfig.from_dict({"dilations": [1, 2.5, True]}).schedule()
    with pytest.raises(ValueError, match=r"dilations\[1\] must be an integer >= 1, got 2\.5"):
        WaveNet(model_config({**TINY, "dilations": [1, 2.5]}))
    assert WaveNetConfig.from_dict({"dilations": [1, 2, 4]}).schedule() == (1, 2, 4)


def test_mel_stats_refuse_differing_bands_even_after_an_empty_tensor():
    """Before: an empty first tensor (no frames) hid its band count, so 80 then 40 bands passed."""
    from wavedil.conditioning import fit_mel_stats

    with pytest.raises(ValueError, match=r"mels\[1\] has 40 bins but earlier ones have 80"):
        fit_mel_stats([torch.zeros(80, 0), torch.randn(40, 5)])
    mean, std = fit_mel_stats([torch.zeros(40, 0), torch.ones(40, 5)])
    assert mean.shape == (40,) and torch.equal(mean, torch.ones(40))
