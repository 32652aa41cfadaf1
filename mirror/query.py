"""Select images by any field of their documents, with isicarchive's operators, in SQL.

A criterion is ``[field, op, value]``: ``field`` a dotted path into the image detail
document (``meta.clinical.diagnosis``, ``dataset.name``, ``notes.tags``, ``name``...),
``op`` one of :data:`OPERATORS`, ``value`` a JSON value. A list of criteria must all hold.

    >>> select_ids(conn, [["meta.clinical.diagnosis", "==", "melanoma"],
    ...                   ["meta.clinical.age_approx", ">=", 60]])

The criteria compile to SQL over ``image_fields`` (see :mod:`mirror.fields`), with every
field name and value a bound parameter, so no input can change the statement. A field
that is missing and one that is ``null`` are the same (``None``). As in isicarchive, an
operator that cannot apply to a value (``<`` on a string field against a number, ``~`` on
a number) does not select the image; ``!=``, ``not in`` and ``is not`` are the exact
negations of ``==``, ``in`` and ``is``, so they select images where the field is missing.
``docs/query.md`` lists every operator with examples.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, false, func, not_, or_, select, true
from sqlalchemy.orm import aliased
from sqlalchemy.sql.elements import ColumnElement

from mirror.errors import MirrorError, MissingObjectError
from mirror.fields import BOOL, LIST, LONG_TEXT, MAX_INDEXED_TEXT, NULL, NUMBER, TEXT
from mirror.index import Dataset, Image, ImageField, Study, StudyImage

OPERATORS = ("==", "!=", "<", "<=", ">", ">=", "in", "not in", "ni", "not ni",
             "~", "!~", "is", "is not")
ALIASES = {"match": "~", "not match": "!~", "not is": "is not"}
_NEGATION = {"!=": "==", "not in": "in", "not ni": "ni", "!~": "~", "is not": "is"}
_FIELD = re.compile(r"^[^\x00-\x1f\"]+$")  # no control characters, no double quotes


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
    if not isinstance(field, str) or not field.strip(".") or not _FIELD.match(field) \
            or "" in field.split("."):
        raise QueryError(f"bad field in {shown}: use a dotted path such as "
                         "'meta.clinical.diagnosis'")
    op = ALIASES.get(op, op)
    if op not in OPERATORS:
        raise QueryError(f"unknown operator {op!r} in {shown}; use one of "
                         f"{', '.join(OPERATORS)}")
    _check_value(op, value, shown)
    return Criterion(field, op, value)


def _check_value(op: str, value: Any, shown: str) -> None:
    base = _NEGATION.get(op, op)
    scalar = (str, int, float, bool)
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
        match = self._positive(item.field, item.op, item.value)
        return match.rows[0] if len(match.rows) == 1 and not match.absent else None

    def condition(self, item: Criterion, key) -> ColumnElement[bool]:
        """A condition on the image id column ``key`` that is true when ``item`` holds."""
        match = self._positive(item.field, _NEGATION.get(item.op, item.op), item.value)
        parts = [self.member(key, rows) for rows in match.rows]
        if match.absent:
            parts.append(not_(self.member(key, _Rows(item.field, False,
                                                     lambda t: t.kind != NULL))))
        expr = or_(*parts) if parts else false()
        return not_(expr) if item.op in _NEGATION else expr

    def member(self, key, rows: _Rows) -> ColumnElement[bool]:
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
            return _Match(self._text(path, lambda col: col.regexp_match(value)))
        return self._order(path, op, value)

    def _in(self, path: str, values: list, elem: bool = False) -> _Match:
        """The field equals one of ``values`` (``None`` meaning absent)."""
        rows = []
        numbers = [float(v) for v in values if isinstance(v, (int, float))
                   and not isinstance(v, bool)]
        flags = [1.0 if v else 0.0 for v in values if isinstance(v, bool)]
        for kind, nums in ((NUMBER, numbers), (BOOL, flags)):
            if nums and self.has_kind(path, elem, kind):
                rows.append(_Rows(path, elem, lambda t, k=kind, n=nums: and_(
                    t.kind == k, t.num == n[0] if len(n) == 1 else t.num.in_(n))))
        texts = [v for v in values if isinstance(v, str)]
        if texts:
            rows += self._text(path, lambda col: col == texts[0] if len(texts) == 1
                               else col.in_(texts), elem=elem,
                               long=any(len(v) > MAX_INDEXED_TEXT for v in texts))
        return _Match(rows, absent=None in values)

    def _text(self, path: str, test, elem: bool = False, long: bool = True) -> list[_Rows]:
        """Row ranges for a text test; long text is read from the document itself."""
        rows = []
        if self.has_kind(path, elem, TEXT):
            rows.append(_Rows(path, elem, lambda t: and_(t.kind == TEXT, test(t.txt))))
        if long and not elem and self.has_kind(path, elem, LONG_TEXT):
            keys = tuple(path.split("."))

            def in_document(t):
                stored = (select(Image.doc[keys].as_string()).where(Image.id == t.image_id)
                          .scalar_subquery())
                return and_(t.kind == LONG_TEXT, test(stored))
            rows.append(_Rows(path, elem, in_document))
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
        if isinstance(value, str):
            return _Match(self._text(path, lambda col: compare(col, value)))
        if not self.has_kind(path, False, NUMBER):
            return _Match([])
        return _Match([_Rows(path, False, lambda t: and_(t.kind == NUMBER,
                                                          compare(t.num, float(value))))])


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


def selection_statement(conn, items: Any = None, dataset: str | None = None,
                        study: str | None = None):
    """``SELECT image_id`` of the current images the criteria select, in ``_id`` order.

    The first criterion that is a plain indexed lookup drives the query; the others
    filter its rows. Removed images have no field rows, so they are never selected.
    """
    compiler = _Compiler(conn)
    scope, studies = _scope(conn, dataset, study)
    items = scope + criteria(items)
    driver = next((i for i in items if compiler.driver(i) is not None), None)
    rows = compiler.driver(driver) if driver else _Rows("_id", False, lambda t: true())
    base = aliased(ImageField)
    key = base.image_id
    conditions = [base.path == rows.path, base.elem == rows.elem, rows.test(base)]
    for item in items:
        if item is not driver:
            conditions.append(compiler.condition(item, key))
        guard = compiler.guard(item)
        if guard is not None:
            conditions.append(compiler.member(key, guard))
    if studies:
        conditions.append(key.in_(select(StudyImage.image_id)
                                  .where(StudyImage.study_id.in_(studies))))
    statement = select(key).where(*conditions).order_by(key)
    return statement.distinct() if rows.elem else statement


def select_ids(conn, items: Any = None, dataset: str | None = None, study: str | None = None,
               limit: int | None = None) -> list[str]:
    """The ``_id`` of every current image the criteria select, sorted."""
    statement = selection_statement(conn, items, dataset, study)
    if limit is not None:
        statement = statement.limit(limit)
    return list(conn.execute(statement).scalars())


def names_of(conn, ids: list[str]) -> list[str]:
    """The names of ``ids``, in the same order."""
    found: dict[str, str] = {}
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        found.update(conn.execute(select(Image.id, Image.name).where(Image.id.in_(chunk))).all())
    return [found[i] for i in ids]
