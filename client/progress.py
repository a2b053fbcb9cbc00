"""A task's progress as a line a person can read: bar, bytes, rate, time left.

``ProgressLine`` is fed the task's ``(done, total)`` whenever it changes and renders one line;
on a terminal it redraws that line in place, elsewhere it prints a plain line at most every
``quiet_seconds`` so a log stays short. The rate is smoothed over the recent samples (a
download's speed swings between reports) and the time left follows from it.
"""

from __future__ import annotations

import time
from typing import Callable, TextIO

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def human_bytes(count: float) -> str:
    value = float(count)
    for unit in _UNITS:
        if abs(value) < 1024 or unit == _UNITS[-1]:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def human_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


class ProgressLine:
    """Renders ``label [#####-----]  45%  12.0 MiB / 27.0 MiB  3.1 MiB/s  ETA 0:05``."""

    def __init__(self, label: str, stream: TextIO, *, interactive: bool, width: int = 24,
                 quiet_seconds: float = 10.0, clock: Callable[[], float] = time.monotonic):
        self._label = label
        self._stream = stream
        self._interactive = interactive
        self._width = width
        self._quiet = quiet_seconds
        self._clock = clock
        self._samples: list[tuple[float, int]] = []
        self._last_plain = float("-inf")
        self._shown = False

    def rate(self) -> float | None:
        """Bytes per second over the samples of the last ten seconds (None before two samples)."""
        if len(self._samples) < 2:
            return None
        (t0, d0), (t1, d1) = self._samples[0], self._samples[-1]
        return (d1 - d0) / (t1 - t0) if t1 > t0 else None

    def render(self, done: int, total: int | None) -> str:
        parts = [self._label]
        if total:
            fraction = min(max(done / total, 0.0), 1.0)
            filled = int(fraction * self._width)
            parts.append("[" + "#" * filled + "-" * (self._width - filled) + "]")
            parts.append(f"{fraction * 100:3.0f}%")
            parts.append(f"{human_bytes(done)} / {human_bytes(total)}")
        else:
            parts.append(human_bytes(done))
        rate = self.rate()
        if rate is not None:
            parts.append(f"{human_bytes(rate)}/s")
            if total and rate > 0:
                parts.append(f"ETA {human_duration((total - done) / rate)}")
        return "  ".join(parts)

    def update(self, done: int, total: int | None) -> None:
        now = self._clock()
        self._samples.append((now, done))
        self._samples = [s for s in self._samples if now - s[0] <= 10.0] or [(now, done)]
        line = self.render(done, total)
        if self._interactive:
            self._stream.write("\r\x1b[2K" + line)
            self._stream.flush()
            self._shown = True
        elif now - self._last_plain >= self._quiet:
            self._last_plain = now
            self._stream.write(line + "\n")
            self._stream.flush()

    def finish(self, message: str = "") -> None:
        """End the line (on a terminal, replace it with ``message`` if one is given)."""
        if self._interactive and self._shown:
            self._stream.write("\r\x1b[2K" if message else "\n")
        if message:
            self._stream.write(message + "\n")
        self._stream.flush()
