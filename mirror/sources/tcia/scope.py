"""``--where`` for TCIA syncs: criteria over the fields of the ``getSeries`` rows.

    mirror sync --url .../nbia-api/services/v4 --collection X --where 'Modality == CT'
    mirror sync ... --where 'Modality in CT,MR AND ImageCount >= 100'

The criteria language is the mirror's own (:func:`mirror.query.parse_where`: the operators
of isicarchive's ``[field, op, value]`` criteria), joined with ``AND``. NBIA has no such
filter (``getSeries`` takes only a few exact-match parameters), so the rows are listed
whole, every row is stored (metadata is small and keeps the listing's change detection
complete), and only the series that match have their files fetched. A field NBIA leaves
out of a row (a null) compares as null: ``ProtocolName is null`` finds it, ``==`` never.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from mirror.errors import QueryError, ScopeError
from mirror.query import Criterion, parse_where, split_and
from mirror.sources.tcia.client import SERIES_COLUMNS


@dataclass(frozen=True)
class SeriesScope:
    """Criteria every selected series' row meets (none: every series)."""

    criteria: tuple[Criterion, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.criteria)

    def matches(self, row: dict) -> bool:
        return all(_holds(row.get(c.field), c.op, c.value) for c in self.criteria)

    def select(self, rows: Iterable[dict]) -> set[str]:
        return {row["SeriesInstanceUID"] for row in rows if self.matches(row)}


def parse_scope(where: str | Iterable[str] | None) -> SeriesScope:
    """The scope of ``--where`` (one string with ``AND``, or several strings); a
    :class:`ScopeError` names a field getSeries does not have."""
    if where is None:
        return SeriesScope()
    texts = [where] if isinstance(where, str) else list(where)
    out = []
    for text in texts:
        for part in split_and(text.strip()) if text.strip() else []:
            try:
                crit = parse_where(part)
            except QueryError as exc:
                raise ScopeError(str(exc)) from None
            if crit.field not in SERIES_COLUMNS:
                raise ScopeError(f"--where {part.strip()!r}: getSeries has no field "
                                 f"{crit.field!r}; use one of {', '.join(SERIES_COLUMNS)}")
            out.append(Criterion(crit.field, crit.op, _unquote(crit.value)))
    return SeriesScope(tuple(out))


def _unquote(value: Any) -> Any:
    if isinstance(value, list):
        return [_unquote(v) for v in value]
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == "'":
        return value[1:-1]
    return value


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _equal(field: Any, value: Any) -> bool:
    if field is None or value is None:
        return field is value
    a, b = _number(field), _number(value)
    if a is not None and b is not None and not (isinstance(field, str)
                                                 and isinstance(value, str)):
        return a == b  # NBIA sends some numbers as text ("5", "0.661468")
    return str(field) == str(value)


def _ordered(field: Any, op: str, value: Any) -> bool:
    if field is None:
        return False
    a, b = _number(field), _number(value)
    if a is None or b is None:
        a, b = str(field), str(value)
    return {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op]


def _holds(field: Any, op: str, value: Any) -> bool:
    if op.startswith("not ") or op in ("!=", "!~"):
        base = {"!=": "==", "!~": "~", "not in": "in", "not ni": "ni", "is not": "is"}[op]
        return not _holds(field, base, value)
    if op == "==":
        return _equal(field, value)
    if op in ("<", "<=", ">", ">="):
        return _ordered(field, op, value)
    if op == "in":
        return any(_equal(field, v) for v in value)
    if op == "ni":
        return isinstance(field, list) and any(_equal(f, value) for f in field) or (
            isinstance(field, str) and str(value) in field)
    if op == "~":
        return field is not None and re.search(value, str(field)) is not None
    if op == "is":
        return field is value if value is None else field == value
    raise ScopeError(f"operator {op!r} is not supported for TCIA series")
