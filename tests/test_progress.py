"""Progress reports: a bar on a TTY, one plain line every few seconds on files and pipes."""

import io

import pytest

from wavedil.progress import Progress, format_postfix


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_non_tty_prints_one_line_per_interval_not_carriage_returns():
    out, clock = io.StringIO(), FakeClock()
    p = Progress(total=1000, unit="step", file=out, interval=10.0, clock=clock, desc="train")
    for _ in range(999):
        clock.t += 0.125  # 124.9 s in all: 12 lines and a last one, not 999
        p.update(1, bits=5.1234, samples_s=38400.4)
    p.close()
    text = out.getvalue()
    lines = text.splitlines()
    assert "\r" not in text
    assert len(lines) == 13, lines
    assert lines[0].startswith("train: 80/1,000 step (8.0%), 8 step/s")
    assert "bits=5.123 samples_s=38,400" in lines[0] and "step/s" in lines[0] and "eta" in lines[0]
    assert lines[-1].startswith("train: 999/1,000 step")  # close() reports the final state once


def test_last_unit_prints_and_close_does_not_repeat_it():
    out, clock = io.StringIO(), FakeClock()
    with Progress(total=3, unit="sample", file=out, clock=clock) as p:
        p.update(3)
    # no time has passed on the fake clock: no rate is shown rather than "0 sample/s"
    assert out.getvalue().splitlines() == ["3/3 sample (100.0%), elapsed 0:00:00"]


def test_disabled_prints_no_progress_but_messages(capsys):
    out = io.StringIO()
    p = Progress(total=5, file=out, enabled=False, interval=0.0)
    p.update(5)
    p.write("valid 3.2")
    p.close()
    assert out.getvalue() == ""
    assert capsys.readouterr().out == "valid 3.2\n"


def test_tty_uses_a_bar():
    out = io.StringIO()
    p = Progress(total=4, unit="step", file=out, tty=True, initial=1)
    p.update(1, bits=2.0)
    p.close()
    assert "\r" in out.getvalue() and "2/4" in out.getvalue() and "bits=2.000" in out.getvalue()


def test_unknown_total_and_bad_arguments():
    out = io.StringIO()
    p = Progress(total=None, unit="sample", file=out, interval=0.0)
    p.update(1500)
    assert out.getvalue().startswith("1,500 sample,")
    with pytest.raises(ValueError, match="interval must be >= 0 seconds, got -1"):
        Progress(total=1, interval=-1)
    assert format_postfix({"n": 12345, "x": 0.5, "s": "ok"}) == "n=12,345 x=0.500 s=ok"


def test_generate_progress_counts_the_samples_of_every_file(capsys):
    """``generate --batch 3``: the library reports samples per sequence; the bar counts all three
    files' samples, as the samples/s printed at the end does (it counted one file's before)."""
    from wavedil.cli import _SampleProgress

    progress = _SampleProgress(True, "generate", rows=3)
    progress(256, 512)
    progress(512, 512)
    progress.close()
    assert "generate: 1,536/1,536 sample (100.0%)" in capsys.readouterr().err


def test_generate_progress_rate_counts_only_samples_made_after_the_bar_started(capsys):
    """The bar starts at the library's first report: the samples done before it took time the
    bar never saw, so counting them made a 0.1 s run's rate read tens of millions of samples/s."""
    import re
    import time

    from wavedil.cli import _SampleProgress

    progress = _SampleProgress(True, "generate")
    progress(1000, 2000)  # the first report: 1,000 samples done in time the bar did not see
    time.sleep(0.1)
    progress(2000, 2000)  # 1,000 more in at least 0.1 s: at most 10,000 samples/s
    progress.close()
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("generate: 2,000/2,000 sample (100.0%)"), line
    rate = float(re.search(r"([0-9.,e+]+) sample/s", line).group(1).replace(",", ""))
    assert 0 < rate <= 10_000, line
