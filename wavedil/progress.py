"""Progress reports that suit the terminal they go to: a live bar on a TTY, periodic lines elsewhere.

On an interactive terminal :class:`Progress` draws a tqdm bar. When the stream is a file, a pipe
or a CI log, a bar would write thousands of carriage returns; there it prints one plain line
every ``interval`` seconds (and a last one on :meth:`Progress.close`)::

    train: 1,200/20,000 step (6.0%), 2.4 step/s, elapsed 0:08:20, eta 2:10:33 | bits=5.123 samples_s=38,400

Used by training (unit ``step``) and generation (unit ``sample``):

>>> import io
>>> out = io.StringIO()
>>> with Progress(total=3, unit="step", file=out, interval=0.0) as bar:
...     bar.update(1, bits=5.0)
>>> out.getvalue().startswith("1/3 step")
True
"""

from __future__ import annotations

import sys
import time
from typing import Any, Callable, TextIO

__all__ = ["Progress", "format_postfix"]


def _fmt_value(v: Any) -> str:
    """One postfix value: ints with thousands separators, large floats rounded, small ones to 3 places."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.3f}"


def format_postfix(postfix: dict[str, Any]) -> str:
    """``{"bits": 5.1234, "samples_s": 38400.2}`` -> ``"bits=5.123 samples_s=38,400"``."""
    return " ".join(f"{k}={_fmt_value(v)}" for k, v in postfix.items())


def _hms(seconds: float) -> str:
    seconds = int(max(0.0, seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """Progress of ``total`` units of work (``None``: unknown), reported as the stream allows.

    Args:
        total: units of work in all (steps, samples); ``None`` when unknown.
        unit: the unit's name in the report (``"step"``, ``"sample"``).
        initial: units already done (a resumed run starts its count there).
        desc: a short label printed before each report (``"train"``).
        enabled: False prints no progress at all; :meth:`write` still prints its messages.
        file: the stream (default ``sys.stderr``).
        interval: seconds between plain lines when ``file`` is not a TTY (0: every update).
        tty: force the bar (True) or the plain lines (False); default: ``file.isatty()``.
        clock: the time source (tests pass a fake one).

    Call :meth:`update` with the units just done and any values to show beside the count
    (``bar.update(1, bits=5.12, samples_s=38400)``); :meth:`write` prints a message without
    breaking the bar; :meth:`close` (or leaving a ``with`` block) prints the final state.
    """

    def __init__(
        self,
        total: int | None,
        unit: str = "it",
        initial: int = 0,
        desc: str = "",
        enabled: bool = True,
        file: TextIO | None = None,
        interval: float = 10.0,
        tty: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if total is not None and total < 0:
            raise ValueError(f"total must be >= 0 or None, got {total}")
        if interval < 0:
            raise ValueError(f"interval must be >= 0 seconds, got {interval}")
        self.total, self.unit, self.desc, self.enabled = total, unit, desc, enabled
        self.n = self.initial = int(initial)
        self.file = sys.stderr if file is None else file
        self.interval = float(interval)
        self.postfix: dict[str, Any] = {}
        self._clock = clock
        self._start = self._last_line = clock()
        self._closed = False
        self._printed_n: int | None = None
        if tty is None:
            isatty = getattr(self.file, "isatty", None)
            tty = bool(isatty and isatty())
        self.bar = None
        if enabled and tty:
            from tqdm import tqdm

            self.bar = tqdm(
                total=total, initial=initial, unit=unit, desc=desc or None, file=self.file, dynamic_ncols=True
            )

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: int = 1, **postfix: Any) -> None:
        """Count ``n`` more units done; ``postfix`` values are shown beside the count until replaced."""
        self.n += int(n)
        if postfix:
            self.postfix.update(postfix)
        if not self.enabled:
            return
        if self.bar is not None:
            if postfix:
                self.bar.set_postfix_str(format_postfix(self.postfix), refresh=False)
            self.bar.update(n)
            return
        now = self._clock()
        if now - self._last_line >= self.interval or (self.total is not None and self.n >= self.total):
            self._line(now)

    def line(self) -> str:
        """The plain report of the current state (what a non-TTY stream gets)."""
        elapsed = self._clock() - self._start
        done = self.n - self.initial
        rate = done / elapsed if elapsed > 0 else 0.0
        count = f"{self.n:,}" if self.total is None else f"{self.n:,}/{self.total:,}"
        parts = [f"{count} {self.unit}"]
        if self.total:
            parts[0] += f" ({100.0 * self.n / self.total:.1f}%)"
        if rate > 0:  # none yet: nothing done since the start, or no time has passed
            parts.append(f"{rate:,.3g} {self.unit}/s")
        parts.append(f"elapsed {_hms(elapsed)}")
        if self.total is not None and rate > 0 and self.n < self.total:
            parts.append(f"eta {_hms((self.total - self.n) / rate)}")
        text = ", ".join(parts)
        if self.postfix:
            text += " | " + format_postfix(self.postfix)
        return f"{self.desc}: {text}" if self.desc else text

    def _line(self, now: float) -> None:
        print(self.line(), file=self.file, flush=True)
        self._last_line, self._printed_n = now, self.n

    def write(self, msg: str) -> None:
        """Print ``msg`` on its own line (above the bar on a TTY), whether or not progress is enabled."""
        if self.bar is not None:
            self.bar.write(msg, file=self.file)
        else:
            print(msg, file=self.file if self.enabled else sys.stdout, flush=True)

    def close(self) -> None:
        """Finish: close the bar, or print the last state as a plain line if it was not printed yet."""
        if self._closed:
            return
        self._closed = True
        if self.bar is not None:
            self.bar.close()
        elif self.enabled and self._printed_n != self.n:
            self._line(self._clock())
