"""Select images by any field of their documents, with isicarchive's operators, in SQL.

A criterion is ``[field, op, value]``: ``field`` a dotted path into the image detail
document (``meta.clinical.diagnosis``, ``dataset.name``, ``notes.tags``, ``name``...),
``op`` one of :data:`OPERATORS`, ``value`` a JSON value. A list of criteria must all hold.

    >>> select_ids(conn, [["meta.clinical.diagnosis", "==", "melanoma"],
    ...                   ["meta.clinical.age_approx", ">=", 60]])

The criteria are answered from value sets (:mod:`mirror.valuesets`: the images of each
value, combined with numpy) when the index has them, else compiled to SQL over
``image_fields`` (see :mod:`mirror.fields`); both give the same answers. Every field name
and value is a bound parameter, so no input can change a statement. A field
that is missing and one that is ``null`` are the same (``None``). As in isicarchive, an
operator that cannot apply to a value (``<`` on a string field against a number, ``~`` on
a number) does not select the image; ``!=``, ``not in`` and ``is not`` are the exact
negations of ``==``, ``in`` and ``is``, so they select images where the field is missing.
``docs/query.md`` lists every operator with examples.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import and_, false, func, not_, or_, select, true
from sqlalchemy.orm import aliased
from sqlalchemy.sql.elements import ColumnElement

from mirror.errors import MirrorError, MissingObjectError
from mirror.fields import (
    BOOL,
    KINDS,
    LIST,
    LONG_TEXT,
    MAX_INDEXED_TEXT,
    NULL,
    NUMBER,
    TEXT,
    as_float,
)
from mirror.index import ImageField, ValueSet
from mirror.sources.isic_v1.models import Dataset, Image, Study, StudyImage
from mirror.valueruns import Span, points, span_positions
from mirror.valuesets import (
    ANY,
    SEPARATOR,
    all_bits,
    fresh_count,
    ids_at,
    joined_ids,
    kinds_at,
    mask_of,
    no_bits,
    positions_of,
    set_bits,
)

OPERATORS = ("==", "!=", "<", "<=", ">", ">=", "in", "not in", "ni", "not ni",
             "~", "!~", "is", "is not")
ALIASES = {"match": "~", "not match": "!~", "not is": "is not"}
#: isicarchive's operators that take no value: ``[field, "is None", anything]``
VALUELESS = {"is None": "is", "not is None": "is not"}
_NEGATION = {"!=": "==", "not in": "in", "not ni": "ni", "!~": "~", "is not": "is"}
MAX_DISTINCT = 5000  # regex over distinct values up to this many, else per row
_FIELD = re.compile(r"[^\x00-\x1f\"]+")  # no control characters, no double quotes


class QueryError(MirrorError):
    """A malformed criterion: names the criterion and how to write it."""


@dataclass(frozen=True)
class Criterion:
    field: str
    op: str
    value: Any

    def __str__(self) -> str:
        return f"{self.field} {self.op} {json.dumps(self.value)}"

    def as_list(self) -> list:
        return [self.field, self.op, self.value]


# -- parsing -------------------------------------------------------------------------------

def criterion(field: Any, op: Any, value: Any) -> Criterion:
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
    return Criterion(field, op, value)


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
        value: Any = [parse_value(part) for part in raw.split(",")] if raw else []
    else:
        value = parse_value(raw)
    return criterion(text[:match.start()].strip(), op, value)


def parse_value(text: str) -> Any:
    """A JSON scalar or list when ``text`` is one, else ``text`` itself (stripped)."""
    text = text.strip()
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return text if isinstance(value, dict) else value


# -- compiling -----------------------------------------------------------------------------

@dataclass
class _Rows:
    """Images with a field row at ``path`` (an element row when ``elem``) meeting ``test``;
    ``test`` takes an aliased ``image_fields`` table and returns a condition on it."""

    path: str
    elem: bool
    test: Any
    document: bool = False  # the test reads the stored document (long text)
    compares: bool = False  # the test compares numbers or text (not only kinds or booleans)
    span: Span | None = None  # those values, for value runs; None: not a range or points


@dataclass
class _Match:
    """True for an image when any of ``rows`` matches, or (``absent``) the field is None."""

    rows: list[_Rows]
    absent: bool = False


class _Compiler:
    """Turns criteria into SQL over ``image_fields``, on one connection.

    It asks the index which kinds of value a field holds (one indexed ``EXISTS`` each) and
    leaves out branches that cannot match, so most criteria become a single index range.
    """

    def __init__(self, conn):
        self.conn = conn
        self.dialect = conn.dialect.name
        self._kinds: dict[tuple[str, bool, str], bool] = {}
        self._counts: dict[str, int] = {}

    def count(self, path: str) -> int:
        """Images with a row (any kind) at ``path`` (an index-only count)."""
        if path not in self._counts:
            self._counts[path] = self.conn.execute(select(func.count()).where(
                ImageField.path == path, ImageField.elem.is_(False))).scalar()
        return self._counts[path]

    def everywhere(self, path: str) -> bool:
        """Every current image has ``path`` (maybe null): then "absent" is just "null"."""
        return self.count(path) == self.count("_id")

    def has_kind(self, path: str, elem: bool, kind: str) -> bool:
        key = (path, elem, kind)
        if key not in self._kinds:
            probe = select(ImageField.image_id).where(
                ImageField.path == path, ImageField.elem == elem, ImageField.kind == kind)
            self._kinds[key] = self.conn.execute(probe.limit(1)).first() is not None
        return self._kinds[key]

    def driver(self, item: Criterion) -> _Rows | None:
        """The criterion as one indexed row range, when it is one."""
        if item.op in _NEGATION:
            return None
        match = self._normal(item.field, self._positive(item.field, item.op, item.value))
        return match.rows[0] if len(match.rows) == 1 and not match.absent else None

    def _normal(self, path: str, match: _Match) -> _Match:
        """One row test for the field's own row (each image has at most one), absorbing
        "absent" when every image has the field."""
        own = [r.test for r in match.rows if not r.elem]
        absent = match.absent
        if absent and self.everywhere(path):
            own.append(lambda t: t.kind == NULL)
            absent = False
        rows = [r for r in match.rows if r.elem]
        if own:
            rows.append(_Rows(path, False, own[0] if len(own) == 1 else
                              lambda t: or_(*(test(t) for test in own))))
        return _Match(rows, absent)

    def condition(self, item: Criterion, key) -> ColumnElement[bool]:
        """A condition on the image id column ``key`` that is true when ``item`` holds."""
        match = self._normal(item.field, self._positive(
            item.field, _NEGATION.get(item.op, item.op), item.value))
        parts = [self.member(key, rows) for rows in match.rows]
        if match.absent:
            parts.append(not_(self.member(key, _Rows(item.field, False,
                                                     lambda t: t.kind != NULL))))
        expr = or_(*parts) if parts else false()
        return not_(expr) if item.op in _NEGATION else expr

    def member(self, key, rows: _Rows) -> ColumnElement[bool]:
        """``key`` has a row in ``rows`` (a set SQLite builds once, then probes).

        A correlated ``EXISTS`` per candidate was tried: SQLite's planner then scanned the
        value index for every candidate instead of seeking the primary key (minutes, not
        milliseconds, on 100,000 images), so sets it is."""
        table = aliased(ImageField)
        return key.in_(select(table.image_id).where(
            table.path == rows.path, table.elem == rows.elem, rows.test(table)))

    def guard(self, item: Criterion) -> _Rows | None:
        """For ``not ni`` and ``!~``: the field must be of a type the operator reads."""
        text = [TEXT, LONG_TEXT] if isinstance(item.value, str) else []
        if item.op == "not ni":
            return _Rows(item.field, False, lambda t: t.kind.in_([LIST, *text]))
        if item.op == "!~":
            return _Rows(item.field, False, lambda t: t.kind.in_(text))
        return None

    # -- operators -------------------------------------------------------------------------

    def _positive(self, path: str, op: str, value: Any) -> _Match:
        if op in ("==", "is"):
            return _Match([], absent=True) if value is None else self._in(path, [value])
        if op == "in":
            return self._in(path, value)
        if op == "ni":
            return self._contains(path, value)
        if op == "~":
            return self._regex(path, value)
        return self._order(path, op, value)

    def _regex(self, path: str, pattern: str) -> _Match:
        """Python's ``re.search`` over the field's distinct short values (few, for most
        fields), then an indexed ``IN``; a per-row regex only for many distinct values."""
        rows = self._text(path, lambda col: col.regexp_match(pattern), short=False)
        if not self.has_kind(path, False, TEXT):
            return _Match(rows)
        values = self.conn.execute(select(ImageField.txt).distinct().where(
            ImageField.path == path, ImageField.elem.is_(False), ImageField.kind == TEXT)
            .limit(MAX_DISTINCT + 1)).scalars().all()
        if len(values) > MAX_DISTINCT:
            return _Match(rows + self._text(path, lambda col: col.regexp_match(pattern),
                                            long=False))
        regex = re.compile(pattern)
        found = [v for v in values if regex.search(v)]
        if found:
            rows.append(_Rows(path, False, lambda t: and_(t.kind == TEXT, t.txt.in_(found))))
        return _Match(rows)

    def _in(self, path: str, values: list, elem: bool = False) -> _Match:
        """The field equals one of ``values`` (``None`` meaning absent)."""
        rows = []
        numbers = [float(v) for v in values if isinstance(v, (int, float))
                   and not isinstance(v, bool)]
        flags = [1.0 if v else 0.0 for v in values if isinstance(v, bool)]
        for kind, nums in ((NUMBER, numbers), (BOOL, flags)):
            if nums and self.has_kind(path, elem, kind):
                rows.append(_Rows(path, elem, lambda t, k=kind, n=nums: and_(
                    t.kind == k, t.num == n[0] if len(n) == 1 else t.num.in_(n)),
                    compares=kind == NUMBER,  # booleans have value sets on every path
                    span=points(NUMBER, nums) if kind == NUMBER else None))
        texts = [v for v in values if isinstance(v, str)]
        if texts:
            rows += self._text(path, lambda col: col == texts[0] if len(texts) == 1
                               else col.in_(texts), elem=elem,
                               long=any(len(v) > MAX_INDEXED_TEXT for v in texts),
                               span=points(TEXT, texts))
        return _Match(rows, absent=None in values)

    def _text(self, path: str, test, elem: bool = False, long: bool = True,
              short: bool = True, span: Span | None = None) -> list[_Rows]:
        """Row ranges for a text test (``span``: the same test as a range or points, when it
        is one); long text is read from the document itself."""
        rows = []
        if short and self.has_kind(path, elem, TEXT):
            rows.append(_Rows(path, elem, lambda t: and_(t.kind == TEXT, test(t.txt)),
                              compares=True, span=span))
        if long and not elem and self.has_kind(path, elem, LONG_TEXT):
            keys = tuple(path.split("."))

            def in_document(t):
                stored = (select(Image.doc[keys].as_string()).where(Image.id == t.image_id)
                          .scalar_subquery())
                return and_(t.kind == LONG_TEXT, test(stored))
            rows.append(_Rows(path, elem, in_document, document=True))
        return rows

    def _contains(self, path: str, value: Any) -> _Match:
        """``value`` is an element of the list at ``path``, or a substring of its text."""
        rows = self._in(path, [value], elem=True).rows
        if isinstance(value, str):
            position = func.strpos if self.dialect == "postgresql" else func.instr
            rows += self._text(path, lambda col: position(col, value) > 0)
        return _Match(rows)

    def _order(self, path: str, op: str, value: Any) -> _Match:
        compare = {"<": lambda a, b: a < b, "<=": lambda a, b: a <= b,
                   ">": lambda a, b: a > b, ">=": lambda a, b: a >= b}[op]
        kind = TEXT if isinstance(value, str) else NUMBER
        bound = value if kind == TEXT else float(value)
        span = (Span(kind, hi=bound, hi_incl=op == "<=") if op in ("<", "<=")
                else Span(kind, lo=bound, lo_incl=op == ">="))
        if kind == TEXT:
            return _Match(self._text(path, lambda col: compare(col, value), span=span))
        if not self.has_kind(path, False, NUMBER):
            return _Match([])
        return _Match([_Rows(path, False, lambda t: and_(t.kind == NUMBER,
                                                          compare(t.num, bound)),
                             compares=True, span=span)])


# -- running -------------------------------------------------------------------------------

def _scope(conn, dataset: str | None, study: str | None) -> tuple[list[Criterion], list]:
    """A dataset as a criterion on ``dataset._id``; a study as a list of its image ids."""
    items, studies = [], []
    if dataset:
        found = conn.execute(select(Dataset.id).where(
            (Dataset.id == dataset) | (Dataset.name == dataset))).scalars().all()
        if not found:
            raise MissingObjectError(f"no dataset {dataset!r} in this mirror; "
                                     "'mirror status' lists what is mirrored")
        items.append(Criterion("dataset._id", "in", list(found)))
    if study:
        studies = conn.execute(select(Study.id).where(
            (Study.id == study) | (Study.name == study))).scalars().all()
        if not studies:
            raise MissingObjectError(f"no study {study!r} in this mirror; sync studies with "
                                     "'mirror sync --what studies,annotations'")
    return items, studies


def _driving_sets(compiler: _Compiler, items: list[Criterion]) -> tuple[list[_Rows], list]:
    """Plain row-range criteria (same-field ones merged: ``age >= 40`` and ``age < 60`` are
    one range) and the other criteria."""
    merged: dict[str, list] = {}
    sets, others = [], []
    for item in items:
        rows = compiler.driver(item)
        if rows is None:
            others.append(item)
        elif rows.elem:  # element rows: two tests may hold on different elements
            sets.append(rows)
        else:
            merged.setdefault(rows.path, []).append(rows.test)
    for path, tests in merged.items():
        sets.append(_Rows(path, False, lambda t, tests=tests: and_(*(x(t) for x in tests))))
    return sets, others


def _estimate(conn, rows: _Rows) -> int:
    """How many field rows a range covers (an index-only count)."""
    table = aliased(ImageField)
    return conn.execute(select(func.count()).select_from(table).where(
        table.path == rows.path, table.elem == rows.elem, rows.test(table))).scalar()


def _plan(conn, items: Any, dataset: str | None, study: str | None):
    """The selection statement, and whether its ids can repeat (an element-row driver)."""
    compiler = _Compiler(conn)
    scope, studies = _scope(conn, dataset, study)
    items = scope + criteria(items)
    sets, others = _driving_sets(compiler, items)
    if len(sets) > 1:
        sets.sort(key=lambda rows: _estimate(conn, rows))
    driver = sets.pop(0) if sets else _Rows("_id", False, lambda t: true())
    base = aliased(ImageField)
    key = base.image_id
    conditions = [base.path == driver.path, base.elem == driver.elem, driver.test(base)]
    conditions += [compiler.member(key, rows) for rows in sets]
    conditions += [compiler.condition(item, key) for item in others]
    conditions += [compiler.member(key, guard) for guard in map(compiler.guard, items) if guard]
    if studies:
        conditions.append(key.in_(select(StudyImage.image_id)
                                  .where(StudyImage.study_id.in_(studies))))
    return select(key).where(*conditions), driver.elem


def selection_statement(conn, items: Any = None, dataset: str | None = None,
                        study: str | None = None):
    """``SELECT image_id`` of the current images the criteria select (unordered, may repeat).

    The smallest plain row range drives the query; the other criteria filter its ids.
    Removed images have no field rows, so they are never selected.
    """
    return _plan(conn, items, dataset, study)[0]


METHODS = ("auto", "sql", "sets")


def select_ids(conn, items: Any = None, dataset: str | None = None, study: str | None = None,
               limit: int | None = None, method: str = "auto") -> Sequence[str]:
    """The ``_id`` of every current image the criteria select, sorted: a list, or an
    :class:`~mirror.valuesets.IdList` that makes the strings as they are read.

    ``method`` is for tests and benchmarks: ``"sets"`` insists on value sets
    (:mod:`mirror.valuesets`), ``"sql"`` on ``image_fields``; ``"auto"`` uses value sets
    when they are fresh and can answer, which is almost always."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}")
    if method != "sql":
        ids = _select_with_sets(conn, items, dataset, study, limit)
        if ids is not None:
            return ids
        if method == "sets":
            raise QueryError("value sets cannot answer this selection (stale, a study scope, "
                             "a text test on long text, or a field with too many values)")
    statement, repeats = _plan(conn, items, dataset, study)
    if limit is not None:
        column = statement.selected_columns[0]
        return list(conn.execute(statement.distinct().order_by(column).limit(limit)).scalars())
    inner = statement.subquery()
    joined = conn.execute(select(joined_ids(conn, inner.c.image_id))).scalar()
    if not joined:
        return []
    ids = joined.split(SEPARATOR)
    if repeats:
        return sorted(set(ids))
    ids.sort()  # usually sorted runs already (the index orders ids within a value)
    return ids


class _NoValueSets(Exception):
    """A criterion value sets cannot answer: it reads the documents (long text), or its
    field has too many distinct values to have value sets."""


class _Sets:
    """Criteria evaluated over value sets: each row range is the union of the stored sets
    of the values it covers, as a bitmap over image positions."""

    def __init__(self, compiler: _Compiler, count: int):
        self.compiler, self.conn, self.count = compiler, compiler.conn, count
        self._covered: dict[str, bool] = {}
        self._ranged: set[str] = set()  # paths whose numbers and text are in value runs

    def check_covered(self, path: str) -> None:
        """Raises when ``path`` has neither value sets nor runs; else answers the compiler's
        ``has_kind`` questions about it from one query, instead of one index probe each."""
        if path not in self._covered:
            found = kinds_at(self.conn, path)
            self._covered[path] = found is not None
            pairs, ranged = found or (set(), False)
            if ranged:
                self._ranged.add(path)
            for elem in (False, True):
                for kind in KINDS:
                    self.compiler._kinds[(path, elem, kind)] = (elem, kind) in pairs
        if not self._covered[path]:
            raise _NoValueSets(path)

    def item(self, item: Criterion) -> np.ndarray:
        """A bitmap over image positions (see :func:`~mirror.valuesets.no_bits`): the
        images ``item`` selects."""
        op = _NEGATION.get(item.op, item.op)
        self.check_covered(item.field)
        if op == "~":
            mask = self._regex(item.field, item.value)
        else:
            match = self.compiler._positive(item.field, op, item.value)
            mask = self.empty()
            for rows in match.rows:
                mask |= self.rows(rows)
            if match.absent:
                mask |= ~self.rows(_Rows(item.field, False, lambda t: t.kind == ANY))
        guard = self.compiler.guard(item)
        if item.op in _NEGATION:
            mask = ~mask
        return mask & self.rows(guard) if guard else mask

    def empty(self) -> np.ndarray:
        return no_bits(self.count)

    def rows(self, rows: _Rows) -> np.ndarray:
        if rows.document:
            raise _NoValueSets(rows.path)
        self.check_covered(rows.path)
        if rows.compares and rows.path in self._ranged:
            if rows.span is None:  # a substring or a regex: image_fields answers
                raise _NoValueSets(rows.path)
            return self._span(rows.path, rows.elem, rows.span)
        return mask_of(self.conn, self.count, and_(
            ValueSet.path == rows.path, ValueSet.elem == rows.elem, rows.test(ValueSet)))

    def _span(self, path: str, elem: bool, span: Span) -> np.ndarray:
        if self.conn.dialect.name == "postgresql":
            span = span.without_nul()  # as the index stores text there
        positions = span_positions(self.conn, path, elem, span)
        if positions is None:
            raise _NoValueSets(path)
        bits = no_bits(self.count)
        set_bits(bits, positions, self.count)
        return bits

    def _regex(self, path: str, pattern: str) -> np.ndarray:
        """Python's ``re.search`` over the field's distinct values (one value set each);
        :meth:`item` has checked that the path has value sets."""
        if path in self._ranged or self.compiler.has_kind(path, False, LONG_TEXT):
            raise _NoValueSets(path)
        regex = re.compile(pattern)
        values = self.conn.execute(select(ValueSet.txt).where(
            ValueSet.path == path, ValueSet.elem.is_(False), ValueSet.kind == TEXT)).scalars()
        found = [v for v in values if regex.search(v)]
        mask = self.empty()
        for start in range(0, len(found), 1000):  # bound the statement's parameters
            chunk = found[start:start + 1000]
            mask |= self.rows(_Rows(path, False, lambda t, c=chunk: and_(t.kind == TEXT,
                                                                         t.txt.in_(c))))
        return mask


def _select_with_sets(conn, items: Any, dataset: str | None, study: str | None,
                      limit: int | None) -> Sequence[str] | None:
    """The selection from value sets, or None when they cannot answer it."""
    count = None if study else fresh_count(conn)
    if count is None:
        return None
    items = _scope(conn, dataset, None)[0] + criteria(items)
    sets = _Sets(_Compiler(conn), count)
    mask = all_bits(sets.count)
    try:
        for item in items:
            mask &= sets.item(item)
    except _NoValueSets:
        return None
    positions = positions_of(mask, sets.count)
    return ids_at(conn, positions if limit is None else positions[:limit])


def names_of(conn, ids: list[str]) -> list[str]:
    """The names of ``ids``, in the same order."""
    found: dict[str, str] = {}
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        found.update(conn.execute(select(Image.id, Image.name).where(Image.id.in_(chunk))).all())
    return [found[i] for i in ids]
