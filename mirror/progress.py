"""Progress of long steps, for people: bars on a terminal, plain lines in a log, or nothing.

Library code reports through :func:`task` and never decides where output goes; the CLI
picks the reporter once (:func:`choose`): bars when stderr is a terminal, periodic plain
lines with ``--progress=plain`` (or when stderr is not a terminal and ``-v`` is given),
nothing with ``-q``, ``--progress=none`` or a redirected stderr without ``-v`` (a cron
log must not fill with carriage-return frames). The library default reports nothing.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

from mirror import settings

MODES = ("auto", "bar", "plain", "none")


class Task:
    """One long step: counts items (and bytes) as they are done."""

    def update(self, items: int = 1, nbytes: int = 0, detail: str | None = None) -> None:
        """``items`` (and ``nbytes``) more are done; ``detail`` replaces the step's note."""

    def close(self) -> None:
        """The step ended."""

    def expect_bytes(self, total: int) -> None:
        """The step's bytes total became known (the size estimate)."""


class _Reporter:
    def task(self, label: str, total: int | None, unit: str, total_bytes: int | None) -> Task:
        return Task()


class _Bars(_Reporter):
    """tqdm bars on stderr: items, and bytes with their total and ETA when known."""

    def task(self, label, total, unit, total_bytes):
        from tqdm import tqdm

        items = tqdm(total=total, unit=unit, desc=label, leave=False, file=sys.stderr)
        data = None
        if total_bytes is not None:
            data = tqdm(total=total_bytes or None, unit="B", unit_scale=True, desc="bytes",
                        leave=False, file=sys.stderr)
        return _BarTask(items, data)


class _BarTask(Task):
    def __init__(self, items, data):
        self.items, self.data = items, data

    def update(self, items=1, nbytes=0, detail=None):
        if detail is not None:
            self.items.set_postfix_str(detail, refresh=False)
        self.items.update(items)
        if self.data is not None and nbytes:
            self.data.update(nbytes)

    def close(self):
        self.items.close()
        if self.data is not None:
            self.data.close()

    def expect_bytes(self, total):
        if self.data is not None:
            self.data.total = total
            self.data.refresh()


class _Lines(_Reporter):
    """A plain line every ``PROGRESS_INTERVAL`` seconds, and one at the end of each step."""

    def __init__(self, stream: TextIO | None = None):
        self.stream = stream

    def task(self, label, total, unit, total_bytes):
        return _LineTask(self.stream or sys.stderr, label, total, unit, total_bytes)


class _LineTask(Task):
    def __init__(self, stream, label, total, unit, total_bytes):
        self.stream, self.label, self.total, self.unit = stream, label, total, unit
        self.total_bytes, self.items, self.nbytes, self.detail = total_bytes, 0, 0, ""
        self.started = self.last = time.monotonic()

    def update(self, items=1, nbytes=0, detail=None):
        self.items += items
        self.nbytes += nbytes
        if detail is not None:
            self.detail = detail
        now = time.monotonic()
        if now - self.last >= settings.PROGRESS_INTERVAL.get():
            self.last = now
            self._line(now)

    def close(self):
        self._line(time.monotonic(), done=True)

    def expect_bytes(self, total):
        self.total_bytes = total

    def _line(self, now: float, done: bool = False) -> None:
        seconds = max(now - self.started, 1e-9)
        text = f"{self.label}: {self.items}"
        if self.total is not None:
            text += f"/{self.total}"
        text += f" {self.unit}(s)"
        if self.total_bytes is not None or self.nbytes:
            text += f", {self.nbytes / 1e6:.1f}"
            text += f"/{self.total_bytes / 1e6:.1f} MB" if self.total_bytes else " MB"
            text += f" at {self.nbytes / seconds / 1e6:.1f} MB/s"
        if done:
            text += f"; done in {seconds:.1f} s"
        elif self.total:
            left = (self.total - self.items) * seconds / max(self.items, 1)
            text += f", {100 * self.items / self.total:.0f} %, about {left:.0f} s left"
        if self.detail:
            text += f" ({self.detail})"
        self.stream.write(text + "\n")
        self.stream.flush()


_reporter: _Reporter = _Reporter()


def choose(mode: str = "auto", verbose: int = 0, quiet: bool = False,
           stream: TextIO | None = None) -> str:
    """Set how progress is shown in this process; returns the mode chosen."""
    global _reporter
    stream = stream or sys.stderr
    if quiet or mode == "none":
        mode = "none"
    elif mode == "auto":
        mode = "bar" if stream.isatty() else "plain" if verbose else "none"
    _reporter = {"bar": _Bars, "plain": _Lines, "none": _Reporter}[mode]()
    return mode


def current_mode() -> str:
    return {_Bars: "bar", _Lines: "plain"}.get(type(_reporter), "none")


@contextmanager
def task(label: str, total: int | None = None, unit: str = "item",
         total_bytes: int | None = None) -> Iterator[Task]:
    """Report one long step while the block runs."""
    step = _reporter.task(label, total, unit, total_bytes)
    try:
        yield step
    finally:
        step.close()
