"""Value runs: ranges over fields with many distinct values (names, dates, ids).

Value sets (:mod:`mirror.valuesets`) keep one row per distinct value, which suits a field
with a few hundred values and not one with a value per image: ``created >= 2019`` would
read tens of thousands of rows. For such a field the numbers and the text are sorted
instead, with the image position of each, and cut into runs of :data:`RUN` values, one
``value_runs`` row each holding its smallest and largest value. A range then reads the
runs that lie inside it whole (their positions only) and decodes the values of at most
the two runs at its ends; a few equality points read one run each.

A :class:`Span` is what a criterion asks of one kind of value: a range, or a set of
points. Comparisons are Python's (code point order for text), which is the index's order
on SQLite (BINARY) and on PostgreSQL (``COLLATE "C"``).
"""

from __future__ import annotations

import bisect
import itertools
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import and_, bindparam, select
from sqlalchemy.engine import Connection

from mirror.fields import NUMBER, TEXT
from mirror.index import ImageField, ValueRun
from mirror.index.models import postgres_text

RUN = 1024  # values per run: a range's two end runs decode at most 2 x RUN values
MAX_CUT = 32  # runs a span may decode (a range cuts at most two; points one each)


@dataclass(frozen=True)
class Span:
    """Values of ``kind`` (number or text) that a criterion selects: ``points`` when given,
    else the range from ``lo`` to ``hi`` (None: unbounded; ``*_incl``: the end included)."""

    kind: str
    points: tuple | None = None
    lo: Any = None
    lo_incl: bool = True
    hi: Any = None
    hi_incl: bool = True

    def holds_all(self, first: Any, last: Any) -> bool:
        """Every value from ``first`` to ``last`` is selected."""
        if self.points is not None:
            return first == last and self._point_in(first, last)
        return self._above_lo(first) and self._below_hi(last)

    def meets(self, first: Any, last: Any) -> bool:
        """Some value from ``first`` to ``last`` may be selected."""
        if self.points is not None:
            return self._point_in(first, last)
        return self._above_lo(last) and self._below_hi(first)

    def select(self, values: list | np.ndarray) -> np.ndarray:
        """A bool per value of a run, sorted as runs are: is it selected?"""
        chosen = np.zeros(len(values), bool)
        if self.points is not None:
            for point in self.points:
                chosen[_left(values, point):_right(values, point)] = True
            return chosen
        start = 0 if self.lo is None else (_left if self.lo_incl else _right)(values, self.lo)
        stop = len(values) if self.hi is None else \
            (_right if self.hi_incl else _left)(values, self.hi)
        chosen[start:stop] = True
        return chosen

    def without_nul(self) -> Span:
        """The span as a PostgreSQL index sees it, where text holds U+FFFD for U+0000."""
        if self.kind != TEXT:
            return self
        return Span(self.kind, None if self.points is None else
                    tuple(sorted({postgres_text(p) for p in self.points})),
                    postgres_text(self.lo), self.lo_incl, postgres_text(self.hi), self.hi_incl)

    def _point_in(self, first: Any, last: Any) -> bool:
        i = bisect.bisect_left(self.points, first)
        return i < len(self.points) and self.points[i] <= last

    def _above_lo(self, value: Any) -> bool:
        if self.lo is None:
            return True
        return value >= self.lo if self.lo_incl else value > self.lo

    def _below_hi(self, value: Any) -> bool:
        if self.hi is None:
            return True
        return value <= self.hi if self.hi_incl else value < self.hi


def _left(values: list | np.ndarray, value: Any) -> int:
    """Where ``value`` would go in sorted ``values``, before any equal ones."""
    if isinstance(values, np.ndarray):
        return int(np.searchsorted(values, value, "left"))
    return bisect.bisect_left(values, value)


def _right(values: list | np.ndarray, value: Any) -> int:
    """Where ``value`` would go in sorted ``values``, after any equal ones."""
    if isinstance(values, np.ndarray):
        return int(np.searchsorted(values, value, "right"))
    return bisect.bisect_right(values, value)


def points(kind: str, values: list) -> Span:
    """A span of equality points (sorted, each once)."""
    return Span(kind, points=tuple(sorted(set(values))))


# -- building --------------------------------------------------------------------------------

def build_runs(conn: Connection, path: str, sorted_ids: np.ndarray
               ) -> tuple[list[dict], dict[tuple[bool, str], np.ndarray]]:
    """The ``value_runs`` rows of ``path``, and the positions holding each ``(elem, kind)``
    (sorted, each once), from which the caller makes the kind's value set row.

    The field rows are read in value order a run at a time, so that building holds one
    run's Python objects, not one per image (100,000 rows of a date field would cost tens
    of MB at the peak of a sync)."""
    rows, holders = [], {}
    for kind, column in ((NUMBER, ImageField.num), (TEXT, ImageField.txt)):
        for elem in (False, True):
            statement = (select(column, ImageField.image_id)
                         .where(ImageField.path == path, ImageField.elem == elem,
                                ImageField.kind == kind)
                         .order_by(column))
            with conn.execute(statement) as result:
                built = _runs(result.partitions(RUN), path, elem, kind, sorted_ids)
            if built is None:  # the database's order is not Python's: sort here
                found = sorted(conn.execute(statement).all(), key=lambda row: row[0])
                chunks = (found[i:i + RUN] for i in range(0, len(found), RUN))
                built = _runs(chunks, path, elem, kind, sorted_ids)
            if built[0]:
                rows += built[0]
                holders[(elem, kind)] = built[1]
    return rows, holders


def _runs(chunks: Iterable[list], path: str, elem: bool, kind: str, sorted_ids: np.ndarray
          ) -> tuple[list[dict], np.ndarray] | None:
    """Run rows from chunks of ``(value, image_id)`` in value order, and the positions they
    hold; None when the chunks are not in Python's order."""
    rows, held, previous = [], [], None
    for run, chunk in enumerate(chunks):
        values = [value for value, _ in chunk]
        if (previous is not None and values[0] < previous) or \
                any(a > b for a, b in itertools.pairwise(values)):
            return None
        previous = values[-1]
        positions = np.searchsorted(sorted_ids, np.array([i for _, i in chunk], dtype=str))
        held.append(positions)
        number = kind == NUMBER
        rows.append({
            "path": path, "elem": elem, "kind": kind, "run": run, "count": len(values),
            "first_num": values[0] if number else None,
            "last_num": values[-1] if number else None,
            "first_txt": None if number else values[0],
            "last_txt": None if number else values[-1],
            "positions": positions.astype("<u4").tobytes(),
            "vals": (np.array(values, dtype="<f8").tobytes() if number
                     else json.dumps(values, ensure_ascii=False).encode())})
    return rows, np.unique(np.concatenate(held)) if held else np.empty(0, np.int64)


# -- reading ---------------------------------------------------------------------------------

# Built once: building a statement costs more than running it
_THIS = and_(ValueRun.path == bindparam("path"), ValueRun.elem == bindparam("elem"),
             ValueRun.kind == bindparam("kind"))
_NUMBER_FENCES = select(ValueRun.run, ValueRun.first_num, ValueRun.last_num).where(_THIS)
_TEXT_FENCES = select(ValueRun.run, ValueRun.first_txt, ValueRun.last_txt).where(_THIS)
_STRETCH = ValueRun.run.between(bindparam("first"), bindparam("last"))
_POSITIONS = select(ValueRun.positions).where(_THIS, _STRETCH)
_POSITIONS_AND_VALUES = select(ValueRun.positions, ValueRun.vals).where(_THIS, _STRETCH)


def span_positions(conn: Connection, path: str, elem: bool, span: Span
                   ) -> np.ndarray | None:
    """The positions (unsorted, maybe repeated) of the images holding a value in ``span``;
    None when that would decode more than :data:`MAX_CUT` runs (a long list of scattered
    points, such as 500 names), which ``image_fields`` answers faster."""
    number = span.kind == NUMBER
    where = {"path": path, "elem": elem, "kind": span.kind}
    fences = conn.execute(_NUMBER_FENCES if number else _TEXT_FENCES, where).all()
    whole, cut = [], []  # runs read whole; runs whose values must be compared
    for run, lo, hi in fences:
        if span.holds_all(lo, hi):
            whole.append(run)
        elif span.meets(lo, hi):
            cut.append(run)
    if len(cut) > MAX_CUT:
        return None
    found = [np.frombuffer(blob, "<u4") for (blob,) in _read(conn, _POSITIONS, where, whole)]
    for blob, vals in _read(conn, _POSITIONS_AND_VALUES, where, cut):
        values = np.frombuffer(vals, "<f8") if number else json.loads(vals)
        found.append(np.frombuffer(blob, "<u4")[span.select(values)])
    return np.concatenate(found) if found else np.empty(0, np.uint32)


def _read(conn: Connection, statement, where: dict, runs: list[int]):
    """Rows of the chosen runs: one range query per stretch of consecutive runs (a range
    of values covers one stretch), which costs far less than a long ``IN`` list."""
    for first, last in stretches(runs):
        yield from conn.execute(statement, {**where, "first": first, "last": last})


def stretches(numbers: list[int]) -> Iterator[tuple[int, int]]:
    """Sorted ``numbers`` as ranges of consecutive ones: ``[1, 2, 3, 7, 8]`` -> ``(1, 3),
    (7, 8)``."""
    for _, group in itertools.groupby(enumerate(numbers), lambda item: item[1] - item[0]):
        members = [number for _, number in group]
        yield members[0], members[-1]
