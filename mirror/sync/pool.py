"""Bounded fan-out: keep at most ``window`` tasks in flight, hand results back as they finish.

Submitting every task at once would let finished results (documents, file rows) pile up
in memory whenever the single index-writing thread is slower than the workers; a window
keeps memory flat whatever the archive's size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Executor, Future, wait
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def completed(executor: Executor, fn: Callable[[T], R], items: Iterable[T],
              window: int) -> Iterator[tuple[T, Future]]:
    """Yield ``(item, future)`` pairs as they complete, with at most ``window`` pending."""
    pending: dict[Future, T] = {}
    source = iter(items)
    exhausted = False
    while True:
        while not exhausted and len(pending) < window:
            try:
                item = next(source)
            except StopIteration:
                exhausted = True
                break
            pending[executor.submit(fn, item)] = item
        if not pending:
            return
        done, _ = wait(pending, return_when=FIRST_COMPLETED)
        for future in done:
            yield pending.pop(future), future
