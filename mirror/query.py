"""Select objects by any field of their documents, with isicarchive's operators, in DuckDB.

A criterion is ``[field, op, value]``: ``field`` a dotted path into the document
(``meta.clinical.diagnosis``, ``dataset.name``, ``notes.tags``, ``name``...), ``op`` one of
:data:`OPERATORS`, ``value`` a JSON value. A list of criteria must all hold.

    >>> select_ids(projection, [["meta.clinical.diagnosis", "==", "melanoma"],
    ...                         ["meta.clinical.age_approx", ">=", 60]])

Criteria are compiled to one DuckDB statement over the Parquet projection of the
generation (:mod:`mirror.projection`), where each kind of value of a field has its own
typed column. Every value is a bound parameter and every field a quoted column found in
the projection's schema, so no input can change a statement. A field that is missing and
one that is ``null`` are the same (``None``). As in isicarchive, an operator that cannot
apply to a value (``<`` on a string field against a number, ``~`` on a number) does not
select the object; ``!=``, ``not in`` and ``is not`` are the exact negations of ``==``,
``in`` and ``is``, so they select objects where the field is missing. Regular expressions
are Python's ``re.search``, run over the field's distinct values (not DuckDB's RE2).
``docs/query.md`` lists every operator with examples; ``mirror sql`` (:func:`run_sql`)
runs a read-only statement of one's own over the same tables.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import re
import sys
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import numpy as np

from mirror.errors import (
    CriterionWarning,
    MissingObjectError,
    NoProjectionError,
    QueryError,
    ReadOnlySqlError,
    UnmatchableCriterionError,
)
from mirror.projection import (
    BOOLEAN,
    LIST_OF,
    NULL,
    NUMBER,
    OBJECT,
    SCHEMA,
    TEXT,
    as_float,
    literal,
    quote,
)

OPERATORS = ("==", "!=", "<", "<=", ">", ">=", "in", "not in", "ni", "not ni",
             "~", "!~", "is", "is not")
ALIASES = {"match": "~", "not match": "!~", "not is": "is not"}
#: isicarchive's operators that take no value: ``[field, "is None", anything]``
VALUELESS = {"is None": "is", "not is None": "is not"}
_NEGATION = {"!=": "==", "not in": "in", "not ni": "ni", "!~": "~", "is not": "is"}
_FIELD = re.compile(r"[^\x00-\x1f\"]+")  # no control characters, no double quotes


@dataclass(frozen=True)
class Criterion:
    field: str
    op: str
    value: Any
    # ``--where`` text of a value read as a number from unquoted text (``2019``), kept so
    # that against a field holding only text it can mean that text (:func:`resolve`);
    # a list of such texts (None for the other items) for an unbracketed ``in`` list
    bare: Any = dataclasses.field(default=None, compare=False, repr=False)
    # checked against a projection by :func:`resolve` (its warnings given once)
    resolved: bool = dataclasses.field(default=False, compare=False, repr=False)

    def __str__(self) -> str:
        return f"{self.field} {self.op} {json.dumps(self.value)}"

    def as_list(self) -> list:
        return [self.field, self.op, self.value]


# -- parsing -------------------------------------------------------------------------------

def criterion(field: Any, op: Any, value: Any, bare: Any = None) -> Criterion:
    """A validated criterion, or a :class:`QueryError` saying what is wrong."""
    shown = f"[{field!r}, {op!r}, {value!r}]"
    if not isinstance(field, str) or not field.strip(".") or not _FIELD.fullmatch(field) \
            or "" in field.split("."):
        raise QueryError(f"bad field in {shown}: use a dotted path such as "
                         "'meta.clinical.diagnosis'")
    if op in VALUELESS:  # isicarchive ignores the value of these
        op, value = VALUELESS[op], None
    op = ALIASES.get(op, op)
    if op not in OPERATORS:
        raise QueryError(f"unknown operator {op!r} in {shown}; use one of "
                         f"{', '.join(OPERATORS)}")
    _check_value(op, value, shown)
    return Criterion(field, op, value, bare)


def _check_value(op: str, value: Any, shown: str) -> None:
    base = _NEGATION.get(op, op)
    scalar = (str, int, float, bool)
    numbers = [v for v in (value if isinstance(value, list) else [value])
               if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if not all(math.isfinite(as_float(v)) for v in numbers):
        raise QueryError(f"a number in {shown} is NaN, infinite or beyond a float's range; "
                         "use a finite number")
    if base in ("<", "<=", ">", ">=") and (not isinstance(value, (str, int, float))
                                           or isinstance(value, bool)):
        raise QueryError(f"{op} needs a number or a string in {shown}")
    if base == "in" and not isinstance(value, list):
        raise QueryError(f"{op} needs a list of values in {shown}; to test whether a field "
                         "contains a value, use 'ni'")
    if base == "in" and any(v is not None and not isinstance(v, scalar) for v in value):
        raise QueryError(f"{op} needs a list of strings, numbers, booleans or null in {shown}")
    if base == "ni" and not isinstance(value, scalar):
        raise QueryError(f"{op} needs a string, number or boolean in {shown}")
    if base == "~":
        if not isinstance(value, str):
            raise QueryError(f"{op} needs a regular expression string in {shown}")
        try:
            re.compile(value)
        except re.error as exc:
            raise QueryError(f"bad regular expression in {shown}: {exc}") from None
    if base == "is" and value not in (True, False, None):
        raise QueryError(f"{op} needs true, false or null in {shown}; use == for other values")
    if base == "==" and value is not None and not isinstance(value, scalar):
        raise QueryError(f"{op} needs a string, number, boolean or null in {shown}")


def criteria(spec: Any) -> list[Criterion]:
    """Normalize one criterion or a list of them (triples, strings or Criterion objects)."""
    if spec is None:
        return []
    if isinstance(spec, (Criterion, str)) or _is_triple(spec):
        spec = [spec]
    out = []
    for item in spec:
        if isinstance(item, Criterion):
            out.append(item)
        elif isinstance(item, str):
            out.append(parse_where(item))
        elif isinstance(item, Sequence) and len(item) == 3:
            out.append(criterion(*item))
        else:
            raise QueryError(f"bad criterion {item!r}: write [field, op, value], "
                             "e.g. ['meta.clinical.diagnosis', '==', 'melanoma']")
    return out


def _is_triple(spec: Any) -> bool:
    """``[field, op, value]`` rather than a list of criteria: its first item is a bare field."""
    return (isinstance(spec, Sequence) and len(spec) == 3 and isinstance(spec[0], str)
            and not _OP_PATTERN.search(spec[0]))


_WORD_OPS = sorted(["not in", "in", "not ni", "ni", "is not", "not is", "is", "not match",
                    "match"], key=len, reverse=True)
_OP_PATTERN = re.compile(r"\s*(==|!=|<=|>=|!~|<|>|~)\s*|\s+(" +
                         "|".join(re.escape(w) for w in _WORD_OPS) + r")\s+")


_AND = re.compile(r"\s+AND\s+", re.IGNORECASE)
_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\']|\'\')*\'')


def split_and(text: str) -> list[str]:
    """Split a ``--where`` text on ``AND`` (any case) outside quoted values, so that
    ``x == "a and b"`` stays whole; each part is one :func:`parse_where` criterion."""
    masked = _QUOTED.sub(lambda m: "\x00" * len(m.group()), text)
    parts, start = [], 0
    for match in _AND.finditer(masked):
        parts.append(text[start:match.start()])
        start = match.end()
    return [*parts, text[start:]]


def parse_where(text: str) -> Criterion:
    """Parse ``'meta.clinical.diagnosis == melanoma'`` (the CLI's ``--where``).

    The value is read as JSON when it parses (``60``, ``1.5``, ``true``, ``null``,
    ``"quoted text"``, ``["a", "b"]``) and as plain text otherwise (``melanoma``,
    ``ISBI 2017: Training``). For ``in``/``not in`` an unbracketed value is a comma list.
    """
    match = _OP_PATTERN.search(text)
    if not match or not text[:match.start()].strip():
        raise QueryError(f"cannot read --where {text!r}: write 'FIELD OP VALUE', e.g. "
                         "'meta.clinical.age_approx >= 60'")
    op = match.group(1) or match.group(2)
    raw = text[match.end():].strip()
    if ALIASES.get(op, op) in ("in", "not in") and not raw.startswith("["):
        parts = [part.strip() for part in raw.split(",")] if raw else []
        value: Any = [parse_value(part) for part in parts]
        bare: Any = [p if _is_number(v) else None for p, v in zip(parts, value, strict=True)]
        bare = bare if any(bare) else None
    else:
        value = parse_value(raw)
        bare = raw if _is_number(value) else None
    return criterion(text[:match.start()].strip(), op, value, bare)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def parse_value(text: str) -> Any:
    """A JSON scalar or list when ``text`` is one, else ``text`` itself (stripped)."""
    text = text.strip()
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return text if isinstance(value, dict) else value


# -- the projection a reader selects from ---------------------------------------------------

SINGULAR = {"image": "images", "segmentation": "segmentations", "study": "studies",
            "dataset": "datasets", "annotation": "annotations", "series": "series",
            "instance": "instances", "collection": "collections"}


class Projection:
    """One published projection folder, opened with DuckDB.

    The connection may read the files of this folder only (``enable_external_access`` off,
    the folder the one allowed directory, the configuration locked), and each table is a
    view named after its kind. The ``_id`` column and each field's distinct text values are
    read once and kept: the files never change."""

    def __init__(self, folder: Path, hints: dict[str, dict[str, str]] | None = None):
        #: per table, names users bring from exports or other tools (``isic_id``) and the
        #: field each means: the "did you mean" of a criterion on a field no object has
        self.hints = hints or {}
        try:
            self.schema = json.loads((folder / SCHEMA).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise NoProjectionError(
                f"the index at {folder.parent} has no query projection {folder.name} (it was "
                "published by an older version); run 'mirror sync' (or 'mirror reindex', "
                "offline) to publish one") from None
        self.folder = folder
        self.con = duckdb.connect(":memory:")
        self.con.execute(f"SET allowed_directories = [{literal(str(folder) + os.sep)}]")
        self.con.execute("SET enable_external_access = false")
        for table in self.schema:
            self.con.execute(f"CREATE VIEW {quote(table)} AS SELECT * FROM "
                             f"read_parquet({literal(self.file(table))})")
        self.con.execute("SET lock_configuration = true")
        self.lock = threading.Lock()  # a DuckDB connection serves one statement at a time
        self._columns: dict[tuple[str, str], np.ndarray] = {}
        self._codes: dict[tuple[str, str], tuple[dict[str, int], np.ndarray]] = {}
        self._positions: dict[str, dict[str, int]] = {}
        self._elements: dict[tuple[str, str], tuple[dict[Any, list[int]], np.ndarray]] = {}

    def close(self) -> None:
        self.con.close()

    def file(self, table: str) -> str:
        return str(self.folder / f"{table}.parquet")

    def table(self, kind: str) -> str:
        """The table of ``kind`` (``images`` or ``image``), or a clear error."""
        table = kind if kind in self.schema else SINGULAR.get(kind, "")
        if table not in self.schema or table == "study_images":
            kinds = ", ".join(t for t in self.schema if t != "study_images")
            raise QueryError(f"no kind {kind!r} in this mirror's projection; use one of {kinds}")
        return table

    def fields(self, table: str) -> dict[str, dict[str, str]]:
        return self.schema[table]["fields"]

    def execute(self, sql: str, params: list | None = None) -> duckdb.DuckDBPyConnection:
        try:
            return self.con.execute(sql, params or [])
        except duckdb.IOException:
            if self.folder.exists():
                raise
            raise NoProjectionError(
                f"{self.folder.name} was removed: newer index generations were published since "
                "this mirror was opened; open it again to read the current one") from None

    def column(self, table: str, name: str) -> np.ndarray:
        """Every value of one column, in row (``_id``) order."""
        key = (table, name)
        if key not in self._columns:
            with self.lock:
                found = self.execute(f"SELECT {quote(name)} AS v FROM {quote(table)}")
                values = found.fetchnumpy()["v"]
            if isinstance(values, np.ma.MaskedArray):  # DuckDB's NULLs: None, as in Python
                values, missing = values.data.astype(object), np.ma.getmaskarray(values)
                values[missing] = None
            self._columns[key] = values
        return self._columns[key]

    def codes(self, table: str, name: str) -> tuple[dict[str, int], np.ndarray]:
        """A text column as its distinct values (each with its index) and, per row, the
        index of its value (the number of values for NULL), for regular expressions."""
        key = (table, name)
        if key not in self._codes:
            index: dict[str, int] = {}
            column = self.column(table, name)
            codes = np.fromiter((-1 if v is None else index.setdefault(v, len(index))
                                 for v in column), np.int64, len(column))
            codes[codes < 0] = len(index)
            self._codes[key] = index, codes
        return self._codes[key]

    def elements(self, table: str, name: str) -> tuple[dict[Any, list[int]], np.ndarray]:
        """A list column as, per element value, the rows holding it, and which rows hold a
        list: ``ni`` then costs a lookup, not a decode of every row's list."""
        key = (table, name)
        if key not in self._elements:
            source = f"read_parquet({literal(self.file(table))}, file_row_number = true)"
            with self.lock:
                pairs = self.execute(f"SELECT file_row_number, unnest({quote(name)}) "
                                     f"FROM {source}").fetchall()
                lists = self.execute(f"SELECT file_row_number FROM {source} "
                                     f"WHERE {quote(name)} IS NOT NULL").fetchnumpy()
            holders: dict[Any, list[int]] = {}
            for row, value in pairs:
                holders.setdefault(value, []).append(row)
            is_list = np.zeros(self.schema[table]["rows"], bool)
            is_list[np.asarray(lists["file_row_number"], np.int64)] = True
            self._elements[key] = holders, is_list
        return self._elements[key]

    def positions(self, table: str, where: str, params: list) -> np.ndarray:
        """The sorted row positions (``_id`` order) of the rows ``where`` selects."""
        sql = (f"SELECT file_row_number AS p FROM read_parquet({literal(self.file(table))}, "
               f"file_row_number = true) WHERE {where}")
        with self.lock:
            found = self.execute(sql, params).fetchnumpy()["p"]
        return np.sort(np.asarray(found, dtype=np.int64))

    def positions_of(self, table: str, ids: Sequence[str]) -> np.ndarray:
        """The row positions of ``ids`` (each must be in the table)."""
        if table not in self._positions:
            self._positions[table] = {i: p for p, i in enumerate(self.column(table, "_id"))}
        index = self._positions[table]
        return np.fromiter((index[i] for i in ids), np.int64, len(ids))

    def values(self, table: str, path: str, ids: Sequence[str]) -> list:
        """The text values of field ``path`` (``name``) of ``ids``, in order."""
        name = self.fields(table).get(path, {}).get(TEXT)
        if name is None:
            return [None] * len(ids)
        return self.column(table, name)[self.positions_of(table, ids)].tolist()


def open_projection(index_dir: Path, number: int | None, spec: Any = None) -> Projection:
    """The projection of generation ``number`` under ``index_dir`` (``spec``, the source's,
    gives the hints of a criterion's misspelt field)."""
    from mirror.projection import folder_name

    if number is None:
        raise NoProjectionError(f"no query projection published yet under {index_dir}; run "
                                "'mirror sync' or 'mirror reindex'")
    return Projection(index_dir / folder_name(number), hints_of(spec))


def hints_of(spec: Any) -> dict[str, dict[str, str]]:
    """The ``aliases`` of every kind of a source spec, by table."""
    return {kind.table: dict(kind.aliases) for kind in getattr(spec, "kinds", ())
            if getattr(kind, "aliases", ())}


def projection_of(root: str | Path) -> Projection:
    """The projection a reader of the mirror at ``root`` selects from now, opened without
    the index database (what ``mirror query --count`` and ``mirror sql`` need)."""
    from mirror.config import layout_for, load_config
    from mirror.projection import reader_number
    from mirror.sources.base import spec_of

    config = load_config(Path(root))
    layout = layout_for(Path(root), config)
    number = reader_number(layout, config.index_url)
    if number is None:
        from mirror.index.database import nothing_published

        raise nothing_published(layout, NoProjectionError)
    return open_projection(layout.index_dir, number, spec_of(config.source))


# -- compiling -----------------------------------------------------------------------------

def _kind_of(value: Any) -> str:
    if isinstance(value, bool):
        return BOOLEAN
    return NUMBER if isinstance(value, (int, float)) else TEXT


def _bound(value: Any) -> Any:
    """A criterion value as the projection holds it: numbers as floats, text as DuckDB can
    hold it (a lone surrogate as U+FFFD)."""
    from mirror.projection import _text

    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return as_float(value)
    return _text(value)


class _Compiler:
    """Turns criteria into one boolean SQL expression (with ``?`` parameters) over a table.

    Every part is ``coalesce(..., false)``: a missing field makes a comparison NULL, and a
    criterion must be true or false so that ``NOT`` is its exact negation."""

    def __init__(self, projection: Projection, table: str):
        self.projection, self.table = projection, table
        self.fields = projection.fields(table)
        self.params: list = []

    def bind(self, value: Any) -> str:
        self.params.append(_bound(value))
        return "?"

    def column(self, path: str, kind: str) -> str | None:
        name = self.fields.get(path, {}).get(kind)
        return None if name is None else quote(name)

    def condition(self, item: Criterion) -> str:
        expr = self.positive(item.field, _NEGATION.get(item.op, item.op), item.value)
        if item.op not in _NEGATION:
            return expr
        guard = self.guard(item)
        return f"(NOT {expr})" if guard is None else f"({guard} AND NOT {expr})"

    def guard(self, item: Criterion) -> str | None:
        """For ``not ni`` and ``!~``: the field must be of a type the operator reads."""
        text = self.column(item.field, TEXT) if isinstance(item.value, str) else None
        if item.op == "not ni":
            lists = [self.column(item.field, k) for k in LIST_OF.values()]
            present = [f"{c} IS NOT NULL" for c in [*lists, text] if c]
            return f"({' OR '.join(present)})" if present else "false"
        if item.op == "!~":
            return f"({text} IS NOT NULL)" if text else "false"
        return None

    def positive(self, path: str, op: str, value: Any) -> str:
        if op in ("==", "is"):
            return self._in(path, [value])
        if op == "in":
            return self._in(path, value)
        if op == "ni":
            return self._contains(path, value)
        return self._order(path, op, value)

    @staticmethod
    def _any(parts: list[str]) -> str:
        return f"({' OR '.join(parts)})" if parts else "false"

    def _in(self, path: str, values: list) -> str:
        """The field equals one of ``values`` (``None`` meaning missing or null)."""
        parts = []
        for kind in (TEXT, NUMBER, BOOLEAN):
            wanted = [v for v in values if v is not None and _kind_of(v) == kind]
            column = self.column(path, kind)
            if wanted and column:
                marks = ", ".join(self.bind(v) for v in wanted)
                parts.append(f"coalesce({column} IN ({marks}), false)")
        if None in values:
            parts.append(self._missing(path))
        return self._any(parts)

    def _missing(self, path: str) -> str:
        columns = [quote(name) for kind, name in self.fields.get(path, {}).items()
                   if kind != "null"]
        return f"({' AND '.join(f'{c} IS NULL' for c in columns)})" if columns else "true"

    def _contains(self, path: str, value: Any) -> str:
        """``value`` is an element of the list at ``path``, or a substring of its text."""
        parts = []
        elements = self.column(path, LIST_OF[_kind_of(value)])
        if elements:
            parts.append(f"coalesce(list_contains({elements}, {self.bind(value)}), false)")
        text = self.column(path, TEXT)
        if isinstance(value, str) and text:
            parts.append(f"coalesce(contains({text}, {self.bind(value)}), false)")
        return self._any(parts)

    def _order(self, path: str, op: str, value: Any) -> str:
        column = self.column(path, _kind_of(value))
        if column is None:
            return "false"
        return f"coalesce({column} {op} {self.bind(value)}, false)"


def _in_numpy(projection: Projection, table: str, item: Criterion) -> bool:
    """Criteria numpy answers from per-value rows: regular expressions (Python's ``re``,
    not DuckDB's RE2) and ``ni`` on a field without text (only list elements to find)."""
    if item.op in ("~", "!~"):
        return True
    return item.op in ("ni", "not ni") and not (
        isinstance(item.value, str) and TEXT in projection.fields(table).get(item.field, {}))


def _numpy_rows(projection: Projection, table: str, item: Criterion) -> np.ndarray:
    """The rows a criterion of :func:`_in_numpy` selects, as a boolean array."""
    kinds = projection.fields(table).get(item.field, {})
    rows = np.zeros(projection.schema[table]["rows"], bool)
    if item.op in ("ni", "not ni"):
        lists = [k for k in LIST_OF.values() if k in kinds]
        name = kinds.get(LIST_OF[_kind_of(item.value)])
        if name is not None:
            rows[projection.elements(table, name)[0].get(_bound(item.value), [])] = True
        if item.op == "ni":
            return rows
        is_list = projection.elements(table, kinds[lists[0]])[1] if lists else rows
        return is_list & ~rows
    if TEXT not in kinds:
        return rows
    index, codes = projection.codes(table, kinds[TEXT])
    found = filter(re.compile(item.value).search, index)  # the fastest loop Python has
    matched = np.zeros(len(index) + 1, bool)  # the last slot is NULL's: no string
    matched[np.fromiter(map(index.__getitem__, found), np.int64)] = True
    if item.op == "~":
        return matched[codes]
    matched[-1] = True  # !~: a string that does not match, and NULL is no string
    return ~matched[codes]


# -- criteria that can never match -----------------------------------------------------------

_HOLDS = {TEXT: "text", NUMBER: "numbers", BOOLEAN: "booleans", "text[]": "lists of text",
          "number[]": "lists of numbers", "boolean[]": "lists of booleans",
          OBJECT: "objects", NULL: "null"}
_NEVER = {TEXT: "text", NUMBER: "a number", BOOLEAN: "a boolean", "text[]": "a list of text",
          "number[]": "a list of numbers", "boolean[]": "a list of booleans"}


def resolve(projection: Projection, table: str, items: list[Criterion],
            strict: bool = False) -> list[Criterion]:
    """The criteria as they run against ``table``, each checked once against its schema.

    A number read from unquoted ``--where`` text (``created >= 2019``) against a field that
    holds text and never a number means that text (``"2019"``): the shell gives no other
    way to write it, and a number could not match. A criterion that can never match as
    meant (a field no object has, a value of a type the field never holds) selects nothing
    (or, negated, everything) with exit 0, which hides a typo: it is a
    :class:`CriterionWarning` naming the closest field or the field's types, and with
    ``strict`` an :class:`UnmatchableCriterionError` (exit 2)."""
    out = []
    for item in items:
        if not item.resolved:
            kinds = projection.fields(table).get(item.field)
            item = _as_text(item, kinds)
            problem = _never_matches(projection, table, item, kinds)
            if problem and strict:
                raise UnmatchableCriterionError(f"{problem}; fix the criterion, or leave out "
                                                "--strict to run it anyway")
            if problem:
                warnings.warn(f"{problem}; --strict makes this an error", CriterionWarning,
                              stacklevel=_outside_mirror())
            item = dataclasses.replace(item, resolved=True)
        out.append(item)
    return out


def _outside_mirror() -> int:
    """The ``stacklevel`` of the first caller outside this package: a warning points at
    the user's line, not at the selection code in between."""
    package = os.path.dirname(os.path.abspath(__file__)) + os.sep
    frame, level = sys._getframe(1), 1  # the caller of this function is level 1
    while frame is not None and frame.f_code.co_filename.startswith(package):
        frame, level = frame.f_back, level + 1
    return level


def _as_text(item: Criterion, kinds: dict[str, str] | None) -> Criterion:
    """``item`` with its bare numbers as their text, where the field reads only text."""
    if item.bare is None or not kinds:
        return item
    listed = _NEGATION.get(item.op, item.op) in ("ni",)
    number, text = (LIST_OF[NUMBER], (TEXT, LIST_OF[TEXT])) if listed else (NUMBER, (TEXT,))
    if number in kinds or not any(k in kinds for k in text):
        return item
    if isinstance(item.value, list) and isinstance(item.bare, list):
        value = [v if raw is None else raw for v, raw in zip(item.value, item.bare, strict=True)]
    else:
        value = item.bare
    return criterion(item.field, item.op, value)


def _kinds_read(item: Criterion) -> set[str] | None:
    """The kinds of column that can make ``item``'s positive true, or None when any field
    can (``== null``: missing is a match)."""
    base = _NEGATION.get(item.op, item.op)
    values = item.value if isinstance(item.value, list) else [item.value]
    if base in ("==", "in", "is") and None in values:
        return None
    if base == "is":
        return {BOOLEAN}
    if base == "ni":
        return {LIST_OF[_kind_of(item.value)]} | ({TEXT} if isinstance(item.value, str)
                                                   else set())
    if base == "~":
        return {TEXT}
    return {_kind_of(v) for v in values} if values else None


def _effect(item: Criterion, table: str, found: bool) -> str:
    """What a criterion on a missing field (``found`` False) or type selects."""
    base = _NEGATION.get(item.op, item.op)
    values = item.value if isinstance(item.value, list) else [item.value]
    positive = not found and base in ("==", "in", "is") and None in values
    if item.op in ("not ni", "!~") or positive == (item.op in _NEGATION):
        return f"selects no {table}"
    return f"selects all {table}"


def _never_matches(projection: Projection, table: str, item: Criterion,
                   kinds: dict[str, str] | None) -> str | None:
    """Why ``item`` cannot select as meant, or None."""
    if kinds is None:
        shown = _shown(item)
        near = _closest(projection, table, item.field)
        hint = f" (did you mean {near!r}?)" if near else ""
        return (f"no {table} in this mirror have a field {item.field!r}{hint}: {shown} "
                f"{_effect(item, table, False)}")
    wanted = _kinds_read(item)
    if wanted is None or wanted & set(kinds) or item.op == "not ni":
        return None
    shown = _shown(item)
    holds = ", ".join(_HOLDS[k] for k in _HOLDS if k in kinds and k != NULL) or "only null"
    never = " or ".join(_NEVER[k] for k in _NEVER if k in wanted)
    return (f"the field {item.field!r} of {table} holds {holds}, never {never}: {shown} "
            f"{_effect(item, table, True)}")


def _shown(item: Criterion) -> str:
    """A criterion as JSON for a message, a long list of values cut to its length."""
    if isinstance(item.value, list) and len(item.value) > 5:
        return f"[{json.dumps(item.field)}, {json.dumps(item.op)}, [{len(item.value)} values]]"
    return json.dumps(item.as_list())


def _closest(projection: Projection, table: str, path: str) -> str | None:
    """The field a misspelt ``path`` most likely means: a known alias (an export's column
    name), the same path in another case, a path ending in it, else the nearest by
    :mod:`difflib`."""
    fields = list(projection.fields(table))
    alias = projection.hints.get(table, {}).get(path)
    if alias in fields:
        return alias
    for way in (lambda f: f.casefold() == path.casefold(),
                lambda f: f.endswith("." + path)):
        found = sorted(f for f in fields if way(f))
        if found:
            return found[0]
    near = difflib.get_close_matches(path, fields, n=1, cutoff=0.6)
    return near[0] if near else None


# -- running -------------------------------------------------------------------------------

def _scope(projection: Projection, table: str, dataset: str | None, study: str | None
           ) -> tuple[list[Criterion], list[str]]:
    """A dataset as a criterion on ``dataset._id``; a study as the ids of the studies."""
    if (dataset or study) and table != "images":
        raise QueryError(f"--dataset and --study scope images only, not {table}")
    items, studies = [], []
    if dataset:
        found = _lookup(projection, "datasets", dataset)
        if not found:
            raise MissingObjectError(f"no dataset {dataset!r} in this mirror; "
                                     "'mirror names datasets' lists those it holds")
        items.append(Criterion("dataset._id", "in", found))
    if study:
        studies = _lookup(projection, "studies", study)
        if not studies:
            raise MissingObjectError(f"no study {study!r} in this mirror; 'mirror names "
                                     "studies' lists those it holds (sync more with "
                                     "'mirror sync --what studies,annotations')")
    return items, studies


def _lookup(projection: Projection, table: str, key: str) -> list[str]:
    """The ids of the objects of ``table`` whose id or name is ``key``."""
    name = projection.fields(table).get("name", {}).get(TEXT)
    where = '"_id" = ?' + (f" OR {quote(name)} = ?" if name else "")
    with projection.lock:
        rows = projection.execute(f'SELECT "_id" FROM {quote(table)} WHERE {where}',
                                  [key, key] if name else [key]).fetchall()
    return sorted(r[0] for r in rows)


def selection_where(projection: Projection, items: Any = None, dataset: str | None = None,
                    study: str | None = None, kind: str = "images",
                    rest: list[Criterion] | None = None,
                    strict: bool = False) -> tuple[str, str, list]:
    """The table, and the SQL condition (with its parameters) the criteria compile to.
    With ``rest`` given, the criteria numpy answers are left out of the SQL and put there.
    ``strict``: a criterion that can never match is an error (see :func:`resolve`)."""
    table = projection.table(kind)
    scope, studies = _scope(projection, table, dataset, study)
    compiler = _Compiler(projection, table)
    parts = []
    for item in scope + resolve(projection, table, criteria(items), strict):
        if rest is not None and _in_numpy(projection, table, item):
            rest.append(item)
        else:
            parts.append(compiler.condition(item))
    if studies:
        marks = ", ".join(compiler.bind(s) for s in studies)
        parts.append(f'"_id" IN (SELECT image_id FROM study_images WHERE study_id IN ({marks}))')
    return table, " AND ".join(parts) or "true", compiler.params


def check_limit(limit: Any) -> int | None:
    """``limit`` if it is None or a whole number of 0 or more: a negative one would act as
    a Python slice from the end (``-1``: all but the last), which no user means."""
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 0:
        raise QueryError(f"the limit (--limit) must be a whole number of 0 or more, not "
                         f"{limit!r}; "
                         "leave it out to select everything")
    return int(limit)


def select_positions(projection: Projection, items: Any = None, dataset: str | None = None,
                     study: str | None = None, limit: int | None = None,
                     kind: str = "images", strict: bool = False) -> tuple[str, np.ndarray]:
    """The table and the sorted row positions of the current objects the criteria select:
    DuckDB answers the SQL part, numpy combines it with the criteria of :func:`_in_numpy`."""
    limit = check_limit(limit)
    rest: list[Criterion] = []
    table, where, params = selection_where(projection, items, dataset, study, kind, rest,
                                           strict)
    if not rest:
        positions = projection.positions(table, where, params)
    else:
        rows = _numpy_rows(projection, table, rest[0])
        for item in rest[1:]:
            rows &= _numpy_rows(projection, table, item)
        if where != "true":
            by_sql = np.zeros(rows.size, bool)
            by_sql[projection.positions(table, where, params)] = True
            rows &= by_sql
        positions = np.flatnonzero(rows)
    return table, positions if limit is None else positions[:limit]


def select_ids(projection: Projection, items: Any = None, dataset: str | None = None,
               study: str | None = None, limit: int | None = None,
               kind: str = "images", strict: bool = False) -> list[str]:
    """The ``_id`` of every current object of ``kind`` the criteria select, sorted."""
    table, positions = select_positions(projection, items, dataset, study, limit, kind,
                                        strict)
    return projection.column(table, "_id")[positions].tolist()


# -- mirror sql ----------------------------------------------------------------------------

READ_STATEMENTS = ("SELECT", "EXPLAIN")


def run_sql(projection: Projection, sql: str) -> tuple[list[str], list[tuple]]:
    """The header and rows of one read-only statement over the projection's tables.

    Anything but a single ``SELECT`` (``WITH``, ``DESCRIBE``, ``SUMMARIZE`` and ``SHOW``
    are ``SELECT``\\ s) or ``EXPLAIN`` is refused before it runs. The connection could not
    write outside the projection folder or change its settings anyway, but a refusal
    names the problem instead of failing halfway."""
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise ReadOnlySqlError(f"cannot parse the SQL: {_first_line(exc)}") from None
    if len(statements) != 1:
        raise ReadOnlySqlError(f"give exactly one statement, not {len(statements)}; "
                               "join them with WITH or UNION")
    kind = statements[0].type.name
    if kind not in READ_STATEMENTS:
        raise ReadOnlySqlError(f"mirror sql only reads: a {kind} statement is refused; "
                               f"use SELECT over {', '.join(projection.schema)}")
    try:
        with projection.lock:
            result = projection.execute(sql)
            header = [d[0] for d in result.description or []]
            return header, result.fetchall()
    except duckdb.Error as exc:
        raise ReadOnlySqlError(f"the SQL failed: {_first_line(exc)}") from None


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def plain(value: Any) -> Any:
    """A SQL value as JSON can hold it (dates, decimals and the like as text)."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    return str(value)
