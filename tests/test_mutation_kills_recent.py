"""Tests added by a mutation audit of the code of the two latest working sessions: each one fails
on a plausible bug (a hand-written mutant) that the rest of the suite let through, and passes on
the real code.

Covered here:

* streams (:class:`wavedil.StreamingGenerator`): ``MAX_SAMPLES`` itself is a valid count; the
  per-draw limit ``n * B <= MAX_TOTAL_SAMPLES`` is inclusive and a refused draw leaves the stream;
  the back-end is prepared once, not at every draw; a prompt shorter than the receptive field
  primes the state alone (no opening silence before it); :meth:`decode` uses the model's encoding
  (linear bins for a mol head); sampling puts the model in eval mode; weights holding NaN or an
  infinity are refused naming the first three parameters (``...`` past three);
* :func:`wavedil.synthesis.generate_to_stream`: a piece is ``round(chunk_seconds * rate)``
  samples and at least one; every piece is written then flushed; the wait for the first audio is
  the first piece's; the notes (a high temperature) come back; seed, temperature and progress
  are checked before the checkpoint is opened; ``generate_to_files``' ``n * batch`` limit is
  inclusive;
* :func:`wavedil.audio.pcm16_bytes` refuses an integer tensor;
* the fast back-end's batch-1 probing state carried from call to call (``pipe_probe``): the way,
  ``rechecked`` and both measured rates go on from the last piece;
* the training memory check (:func:`wavedil.train._check_training_memory`) with a fixed probe:
  the refusal's boundary and numbers, the rows of this machine's processes, the advice's batch,
  the warning only on the main rank and at the backward's peak factor, no probe where the
  platform says nothing; the short-file warning's padding share, suggestion and threshold;
  ``data.valid_fraction=0`` names the file really held out;
* ``memory_limits`` keeps the machine's RAM under a larger container limit; ``_cgroup_limit``
  and ``_meminfo`` read their files (``max``, kB); ``saved_tensor_bytes`` counts two views of one
  storage once;
* sampling: a uniform above ``U_FLOOR`` is used as it is (torch head and fast kernel alike), and
  ``u = 0`` counts as ``2**-54``, not more;
* a ring of the wrong shape is named by its index; ``wavedil generate -o - --batch 0`` is refused.

Tiny random-weight models; the file runs in well under 30 s.
"""

from __future__ import annotations

import importlib
import io
import itertools
import logging
import math
import os
import re
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import torch
from test_commands import SR, one_thread, save_run  # noqa: F401 (one_thread: an autouse fixture)
from test_fast import make_head_model, make_model

import wavedil.synthesis as synthesis_mod
import wavedil.train as train_mod
import wavedil.training_utils as tu
from wavedil import StreamingGenerator, WaveNetConfig, generate
from wavedil.audio import decode, pcm16_bytes
from wavedil.distributed import DistInfo
from wavedil.synthesis import generate_to_files, generate_to_stream
from wavedil.train import TrainingError

generate_mod = importlib.import_module("wavedil.generate")  # the package's `generate` is the function
TINY_MODEL = WaveNetConfig(residual_channels=8, gate_channels=16, skip_channels=12, head_channels=10,
                           layers_per_stack=3, stacks=2, quantization_channels=32)  # fmt: skip


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return save_run(tmp_path_factory.mktemp("recent"))


# ----------------------------------------------------------------------------- StreamingGenerator


def test_max_samples_itself_is_a_count_and_one_more_is_not():
    assert generate_mod._check_count(generate_mod.MAX_SAMPLES, "n") == 2**25
    with pytest.raises(ValueError, match=rf"n must be an integer in \[1, 33554432\], got {2**25 + 1}"):
        generate_mod._check_count(2**25 + 1, "n")


def test_the_per_draw_limit_is_inclusive_and_a_refused_draw_leaves_the_stream(monkeypatch):
    monkeypatch.setattr(generate_mod, "MAX_TOTAL_SAMPLES", 8)
    model = make_model()
    stream = StreamingGenerator(model, batch_size=2, seed=1, backend="torch")
    with pytest.raises(ValueError, match="5 samples x batch 2 exceeds the limit of 8 per draw: draw fewer at a time"):
        stream.draw(5)
    assert stream.samples_out == 0
    codes = stream.draw(4)  # 4 x 2 = 8: the limit itself
    assert torch.equal(codes, generate(model, 4, batch_size=2, seed=1, backend="torch").codes)


class _CountingPrepare:
    def __init__(self, impl):
        self.impl, self.prepared = impl, 0

    def prepare(self, request):
        self.prepared += 1
        return self.impl.prepare(request)

    def __getattr__(self, name):
        return getattr(self.impl, name)


def test_the_back_end_is_prepared_once_not_at_every_draw():
    model = make_model()
    stream = StreamingGenerator(model, seed=2, backend="fast")
    stream._impl = spy = _CountingPrepare(stream._impl)
    codes = torch.cat([stream.draw(5) for _ in range(3)], dim=1)
    stream.prepare()
    assert spy.prepared == 1
    assert torch.equal(codes, generate(model, 15, seed=2, backend="torch").codes)


def test_decode_uses_the_models_encoding():
    """A mol head's codes are linear bins, not mu-law codes."""
    model = make_head_model("mol")
    stream = StreamingGenerator(model, seed=3, backend="torch")
    codes = stream.draw(20)
    q = model.quantization_channels
    assert model.encoding == "linear"
    assert torch.equal(stream.decode(codes), decode(codes, "linear", q))
    assert torch.equal(stream.decode(torch.tensor([[0, q // 2]])), torch.tensor([[-1.0, 0.0]]))


def test_a_prompt_shorter_than_the_receptive_field_primes_alone():
    """A prompt replaces the opening sample of silence: the first draw's parameters are the full
    model's outputs at the prompt's last sample (the receptive field, 15, reaches past its start)."""
    model = make_model()
    prompt = torch.tensor([[5, 30, 17, 9]])
    state, params, fed = generate_mod._prime(model, 1, prompt, None)
    with torch.no_grad():
        want = model(prompt)[:, :, -1]
    assert fed == 4 and state.pos == 4
    torch.testing.assert_close(params, want, rtol=1e-5, atol=1e-5)
    greedy = generate(model, 1, prompt=prompt[0], temperature=0, backend="torch").codes
    assert greedy.item() == want.argmax().item()


def test_sampling_puts_the_model_in_eval_mode():
    model = make_model()
    for start in (lambda: generate(model, 3, seed=0, backend="torch"), lambda: StreamingGenerator(model, seed=0)):
        model.train()
        start()
        assert not model.training


def test_nan_and_infinite_weights_are_named_three_at_most():
    names = [n for n, p in make_model().named_parameters() if p.is_floating_point()]

    def spoiled(k: int, value: float):
        model = make_model()
        with torch.no_grad():
            for _, p in list(model.named_parameters())[:k]:
                p.view(-1)[0] = value
        return model

    with pytest.raises(ValueError) as four:
        StreamingGenerator(spoiled(4, float("nan")))
    assert f"weights hold NaN or infinite values ({', '.join(names[:3])}, ...): its training diverged" in str(four.value)
    with pytest.raises(ValueError) as three:
        generate(spoiled(3, float("nan")), 2, backend="torch")
    assert f"weights hold NaN or infinite values ({', '.join(names[:3])}): its training" in str(three.value)
    with pytest.raises(ValueError, match=rf"NaN or infinite values \({re.escape(names[0])}\)"):
        generate(spoiled(1, float("-inf")), 2, backend="torch")


# ----------------------------------------------------------------------------- generate_to_stream


class _Sink(io.RawIOBase):
    def __init__(self):
        self.events: list = []
        self.data = b""

    def write(self, b):
        self.events.append(len(b))
        self.data += bytes(b)
        return len(b)

    def flush(self):
        self.events.append("flush")


def test_each_piece_is_written_and_flushed_and_the_first_wait_is_the_first_pieces(run_dir, tmp_path, monkeypatch):
    clock = itertools.count()
    monkeypatch.setattr(synthesis_mod, "time", SimpleNamespace(perf_counter=lambda: float(next(clock))))
    sink = _Sink()
    res = generate_to_stream(run_dir, sink, 24 / SR, seed=1, backend="torch", device="cpu", chunk_seconds=8 / SR,
                             temperature=2.5)  # fmt: skip
    assert sink.events == [16, "flush"] * 3  # three pieces of 8 samples, each flushed as it is written
    # clock: 0 at the start, 1 after the first piece, 2 at the end (one tick per reading)
    assert res.first_audio_seconds == 1.0 and res.samples_per_second == 12.0
    assert any("temperature 2.5 is far above 1" in note for note in res.notes), res.notes
    assert torch.equal(res.codes, generate_to_files(run_dir, tmp_path / "o.wav", 24 / SR, seed=1,
                                                    backend="torch", device="cpu", temperature=2.5).codes)  # fmt: skip


@pytest.mark.parametrize("chunk_seconds, piece", [(1e-6, 1), (2.8 / SR, 3), (2.4 / SR, 2)])
def test_a_piece_is_the_rounded_chunk_and_at_least_one_sample(run_dir, chunk_seconds, piece):
    seen = []
    generate_to_stream(run_dir, io.BytesIO(), 12 / SR, seed=0, backend="torch", device="cpu",
                       chunk_seconds=chunk_seconds, progress=lambda done, total: seen.append(done))  # fmt: skip
    assert seen == list(range(piece, 13, piece))  # 12 samples: 12, 6 or 4 pieces


def test_seed_temperature_and_progress_are_checked_before_the_checkpoint_is_opened(run_dir, monkeypatch):
    monkeypatch.setattr(synthesis_mod, "open_model", lambda *a, **k: pytest.fail("the checkpoint was opened"))
    for kwargs, says in [(dict(seed=-1), r"seed must be an integer in \[0, 2\*\*64 - 1\], got -1"),
                         (dict(temperature=-1.0), r"temperature must be a finite number >= 0, got -1\.0"),
                         (dict(progress="x"), r"progress must be a function progress\(done, total\)")]:  # fmt: skip
        with pytest.raises(ValueError, match=says):
            generate_to_stream(run_dir, io.BytesIO(), 0.01, **kwargs)


def test_the_total_sample_limit_of_generate_to_files_is_inclusive(run_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(synthesis_mod, "MAX_TOTAL_SAMPLES", 160)
    res = generate_to_files(run_dir, tmp_path / "o.wav", 80 / SR, batch=2, seed=0, backend="torch", device="cpu")
    assert res.codes.shape == (2, 80)
    with pytest.raises(ValueError, match=r"x --batch 2 is 162 samples; the limit per run is 160: lower one of them"):
        generate_to_files(run_dir, tmp_path / "p.wav", 81 / SR, batch=2, seed=0, backend="torch", device="cpu")


def test_pcm16_bytes_refuses_integer_samples():
    with pytest.raises(ValueError, match=r"mono float waveform \(T,\), got torch.Size\(\[2\]\)"):
        pcm16_bytes(torch.tensor([0, 1]), SR)
    assert pcm16_bytes(torch.tensor([0.5, -1.0]), SR) == np.array([16384, -32768], "<i2").tobytes()


# ----------------------------------------------------------------------------- the fast back-end's probing state


def test_a_stream_in_pieces_goes_on_with_the_last_pieces_way_rates_and_recheck(monkeypatch):
    """Each chunk's decision (:func:`_next_way`) is scripted: one thread after the first chunk,
    ``rechecked`` set. The next piece's first chunk must run the way the last one chose, with
    both ways' rates and ``rechecked`` as they were, and the chunk count going on; a batch of two
    does not take up the stream of one's schedule. (Only the speed depends on this: the codes are
    the same either way.)"""
    import wavedil.fast.cpu as cpu_mod
    from wavedil.backends import register_backend, unregister_backend
    from wavedil.fast import make_fast_backend

    calls = []

    def scripted(chunks, rate, use_two, rechecked):
        calls.append((chunks, sorted(rate), use_two, rechecked))
        return False, True

    monkeypatch.setattr(cpu_mod, "_next_way", scripted)
    model = make_model()
    register_backend("_test_recent", make_fast_backend(threads=2, split=True, chunk=64))
    try:
        stream = StreamingGenerator(model, seed=4, backend="_test_recent")
        codes = torch.cat([stream.draw(256) for _ in range(3)], dim=1)
        streamed = len(calls)
        pair = generate(model, 128, batch_size=2, seed=4, backend="_test_recent").codes
    finally:
        unregister_backend("_test_recent")
    assert torch.equal(codes, generate(model, 3 * 256, seed=4, backend="torch").codes)
    assert torch.equal(pair, generate(model, 128, batch_size=2, seed=4, backend="torch").codes)
    # a batch of 2 keeps its own schedule: it starts at chunk 1, not where the stream of one left off
    assert calls[streamed][0] == 1 and len(calls[streamed][1]) == 1, calls[streamed:]
    calls = calls[:streamed]
    calls = calls[1:]  # the first: prepare's single step, which is not kept
    assert calls[0] == (1, [True], True, False)  # the first chunk: two threads
    assert [c[0] for c in calls] == list(range(1, len(calls) + 1)) and len(calls) >= 12  # one count, 3 x 4 chunks
    assert all(c[1:] == ([False, True], False, True) for c in calls[1:]), calls


# ----------------------------------------------------------------------------- the training memory check


@pytest.fixture
def fixed_probe(monkeypatch):
    """A probe of 1 MiB saved per sample; ``set(total, available)`` fixes the memory."""
    monkeypatch.setattr(train_mod, "_activation_bytes_per_sample", lambda mcfg, t, segments=0: float(2**20))

    def limits(total, available):
        monkeypatch.setattr(train_mod, "memory_limits", lambda device: (total, available))

    return limits


def _check(batch, dist=DistInfo(), precision="32", segment=1024):
    train_mod._check_training_memory(TINY_MODEL, SimpleNamespace(batch_size=batch, segment_length=segment), dist,
                                     torch.device("cpu"), precision)  # fmt: skip


def test_the_refusal_counts_exactly_the_saved_activations(fixed_probe, caplog):
    fixed_probe(8 * 2**30, 2**50)  # 8 GiB; a batch of 8 x 1024 samples keeps exactly 8 GiB
    _check(8)
    fixed_probe(8 * 2**30 - 1, 8 * 2**30 - 1)
    with pytest.raises(TrainingError) as err:
        _check(8)
    msg = str(err.value)
    assert ("data.batch_size=8 x data.segment_length=1024 needs at least 8.0 GiB for the activations a training step "
            "keeps for its backward (1,024.0 KiB per sample for this model at trainer.precision=32), more than the "
            "8.0 GiB of memory here: lower data.batch_size (about 4 fits here at this segment length)") in msg, msg
    _check(8, precision="bf16")  # 16-bit activations: half counted


def test_the_rows_are_this_machines_processes_and_the_advice_the_whole_batch(fixed_probe, monkeypatch, caplog):
    caplog.set_level(logging.WARNING, logger="wavedil.train")
    fixed_probe(2**50, 5 * 2**30)  # 5 GiB available now
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    _check(8, DistInfo(0, 2, 0))  # two machines: 4 rows here, 4 GiB saved, 6.4 GiB at the peak
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and said[0].startswith(
        "data.batch_size=8 x data.segment_length=1024 (4 rows in this machine's 1 process(es)) needs about 6.4 GiB "
        "for a training step (1638.4 KiB per sample for this model, backward included) but only 5.0 GiB of memory "
        "is available now"), said
    assert said[0].endswith("lower data.batch_size (about 6 fits here at this segment length) or data.segment_length")
    caplog.clear()
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    fixed_probe(2**50, 12 * 2**30)
    _check(8, DistInfo(0, 2, 0))  # both processes here: 8 rows, 12.8 GiB at the peak
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and "(8 rows in this machine's 2 process(es)) needs about 12.8 GiB" in said[0], said
    assert "about 7 fits here" in said[0]
    caplog.clear()
    _check(8, DistInfo(1, 2, 1))  # not the main rank: the main one says it
    assert caplog.records == []


def test_the_warning_counts_the_backward_peak(fixed_probe, caplog):
    caplog.set_level(logging.WARNING, logger="wavedil.train")
    fixed_probe(2**50, 12 * 2**30)  # 8 GiB saved, 12.8 GiB at the peak: more than the 12 GiB available
    _check(8)
    assert len(caplog.records) == 1 and "needs about 12.8 GiB" in caplog.records[0].getMessage()
    caplog.clear()
    fixed_probe(2**50, 13 * 2**30)
    _check(8)
    assert caplog.records == []


def test_no_probe_where_the_platform_gives_no_memory_figure(monkeypatch):
    monkeypatch.setattr(train_mod, "memory_limits", lambda device: (None, None))
    monkeypatch.setattr(train_mod, "_activation_bytes_per_sample", lambda *a: pytest.fail("probed"))
    _check(10**6)


def _short_warning(caplog, lengths, segment, hop=1, receptive_field=1) -> list[str]:
    caplog.clear()
    data = SimpleNamespace(lengths=lengths, total_frames=sum(lengths))
    train_mod._warn_if_files_are_short(data, SimpleNamespace(segment_length=segment, sample_rate=SR), hop,
                                       "training", receptive_field)  # fmt: skip
    return [r.getMessage() for r in caplog.records]


def test_the_short_file_warning_padding_suggestion_and_threshold(caplog):
    caplog.set_level(logging.WARNING, logger="wavedil.train")
    assert _short_warning(caplog, [100, 60], 100) == []  # the longest file fills a segment
    said = _short_warning(caplog, [99, 60], 100)
    # drawn by length: 1 - (99^2 + 60^2) / (159 * 101) = 16.55% padding; 99 codes hold segments of 98
    assert said == ["every training file is shorter than data.segment_length=100 samples (the longest holds 99 "
                    "samples at 8000 Hz): about 17% of each training segment is silence padding. Lower "
                    "data.segment_length (e.g. data.segment_length=98) or train on longer files"]  # fmt: skip
    assert "data.segment_length=80)" in _short_warning(caplog, [99, 60], 100, hop=40)[0]
    assert "Lower data.segment_length (e.g. data.segment_length=98)" in _short_warning(caplog, [99], 100, 1, 98)[0]
    said = _short_warning(caplog, [99], 100, 1, 99)[0]
    assert "shorter than the model's receptive field (99 samples) too" in said and "data.segment_length=98; or" in said
    said = _short_warning(caplog, [30, 20], 400, hop=40)[0]  # a vocoder's files shorter than one hop
    assert said.endswith("No segment length fits them (a segment is a whole number of mel hops of 40 samples): "
                         "train on longer files"), said


def test_valid_fraction_zero_names_the_file_held_out(tmp_path, caplog):
    from wavedil.data import load_corpus, split_items

    root = tmp_path / "wavs"
    root.mkdir()
    for name in ("a", "b", "c", "d"):
        sf.write(str(root / f"{name}.wav"), np.zeros(3000, np.float32) + 0.1, 8000)
    items = load_corpus(root)
    _, valid = split_items(items, valid_fraction=0.0)
    assert valid[0].path != items[0].path  # (held out by name: not simply the first file)
    caplog.set_level(logging.WARNING, logger="wavedil.train")
    train_mod.build_data({"root": str(root), "sample_rate": 8000, "segment_length": 200, "batch_size": 2,
                          "valid_segments": 2, "valid_fraction": 0.0}, TINY_MODEL, seed=0, max_steps=2)  # fmt: skip
    said = [r.getMessage() for r in caplog.records if r.name == "wavedil.train"]
    assert len(valid) == 1 and len(said) == 1 and f"'{valid[0].path}' (of 4)" in said[0], (valid, said)


def test_memory_limits_keep_the_ram_under_a_larger_container_limit(monkeypatch):
    ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    monkeypatch.setattr(tu, "_cgroup_limit", lambda: 2**62)
    total, available = tu.memory_limits(torch.device("cpu"))
    assert total == ram and available is not None and available <= total


def test_saved_tensor_bytes_counts_views_of_one_storage_once():
    x = torch.randn(1000, requires_grad=True)
    assert tu.saved_tensor_bytes(lambda: x[:500] * x[500:]) == 4000  # two views saved, one storage


def test_cgroup_limit_and_meminfo_read_their_files(tmp_path):
    limit = tmp_path / "memory.max"
    limit.write_text("max\n")  # no limit
    assert tu._cgroup_limit(limit) is None
    limit.write_text("1073741824\n")
    assert tu._cgroup_limit(limit) == 2**30
    assert tu._cgroup_limit(tmp_path / "absent") is None
    info = tmp_path / "meminfo"
    info.write_text("MemTotal:       16000 kB\nMemAvailableSoon: 1 kB\nMemAvailable:    1000 kB\n")
    assert tu._meminfo("MemAvailable", info) == 1_024_000 and tu._meminfo("MemTotal", info) == 16_384_000
    assert tu._meminfo("SwapTotal", info) is None and tu._meminfo("MemTotal", tmp_path / "absent") is None


# ----------------------------------------------------------------------------- sampling, torchrun, the CLI


def test_uniforms_above_the_floor_are_used_as_they_are_and_zero_counts_as_two_to_the_minus_54():
    """Class 0 of probability 2^-45: u = 2^-50 draws it (u is not raised); class 0 of probability
    2^-53.5: u = 0 (counted as 2^-54) draws it too, as the fast kernel does."""
    from wavedil.distributions import sample_categorical
    from wavedil.fast._kernels import _sample_row

    scratch = np.empty(2, np.float64)
    for log2_p, u in [(-45.0, 2.0**-50), (-53.5, 0.0)]:
        logits = torch.tensor([[log2_p * math.log(2), 0.0]])
        assert sample_categorical(logits, torch.tensor([u], dtype=torch.float64)).tolist() == [0]
        assert _sample_row(logits[0].numpy(), 2, u, 1.0, False, scratch) == 0
        # twice the target: class 1
        twice = torch.tensor([2.0 ** (log2_p + 1)], dtype=torch.float64)  # twice class 0's probability: class 1
        assert sample_categorical(logits, twice).tolist() == [1]
        assert _sample_row(logits[0].numpy(), 2, float(twice), 1.0, False, scratch) == 1


def test_a_ring_that_does_not_fit_is_named_by_its_own_index():
    """The shape check names ring i (not ring 0) and its layer, in StreamingStep and in step()."""
    from wavedil import DilatedStack, StreamingStep
    from wavedil.streaming import state_to_tensors

    stack = DilatedStack(8, 16, 16, dilations=(1, 2, 4)).eval()
    pos, buffers = state_to_tensors(stack.init_state(2))
    with pytest.raises(ValueError, match=r"^buffer_2 must be \(2, 8, 4\) for layer 2 \(dilation 4, kernel 2\) and a "
                                         r"batch of 2, got \(2, 8, 3\): pass the rings in layer order"):
        StreamingStep(stack)(torch.zeros(2, 8, 1), pos, buffers[0], buffers[1], buffers[2][:, :, :3])
    state = stack.init_state(2)
    state.buffers[1] = state.buffers[1][:, :, :1]
    with pytest.raises(ValueError, match=r"^state.buffers\[1\] must be \(2, 8, 2\) for layer 1 \(dilation 2"):
        stack.step(torch.zeros(2, 8, 1), state)


def test_cli_dash_refuses_batch_zero_too(run_dir, capsysbinary):
    from wavedil.cli import main as cli_main

    with pytest.raises(SystemExit) as stop:
        cli_main(["generate", str(run_dir), "--seconds", "0.01", "--device", "cpu", "-o", "-", "--batch", "0"])
    out, err = capsysbinary.readouterr()
    assert stop.value.code == 2 and out == b""
    assert b"error: -o - streams one sequence as 16-bit PCM, got --batch 0: leave --batch out" in err
