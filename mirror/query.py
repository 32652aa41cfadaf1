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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, false, func, not_, or_, select
from sqlalchemy.sql.elements import ColumnElement

from mirror.errors import MirrorError
from mirror.fields import BOOL, LIST, NULL, NUMBER, TEXT
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

class _Compiler:
    """Turns criteria into SQLAlchemy conditions on ``images`` for one SQL dialect."""

    def __init__(self, dialect: str):
        self.dialect = dialect

    def condition(self, item: Criterion) -> ColumnElement[bool]:
        base = _NEGATION.get(item.op)
        if base:
            return not_(self._positive(item.field, base, item.value))
        return self._positive(item.field, item.op, item.value)

    def _positive(self, path: str, op: str, value: Any) -> ColumnElement[bool]:
        if op == "==" or op == "is":
            return self._absent(path) if value is None else self._has(path, self._eq(path, value))
        if op == "in":
            return self._in(path, value)
        if op == "ni":
            return self._contains(path, value)
        if op == "~":
            return self._has(path, self._text(path, lambda col: col.regexp_match(value)))
        return self._order(path, op, value)

    def _has(self, path: str, condition: ColumnElement[bool], elem: bool = False
             ) -> ColumnElement[bool]:
        """Images with a field row at ``path`` that meets ``condition``."""
        rows = select(ImageField.image_id).where(
            ImageField.path == path, ImageField.elem == elem, condition)
        return Image.id.in_(rows)

    def _absent(self, path: str) -> ColumnElement[bool]:
        return not_(self._has(path, ImageField.kind != NULL))

    def _eq(self, path: str, value: Any) -> ColumnElement[bool]:
        if isinstance(value, bool):
            return and_(ImageField.kind == BOOL, ImageField.num == (1.0 if value else 0.0))
        if isinstance(value, (int, float)):
            return and_(ImageField.kind == NUMBER, ImageField.num == float(value))
        return self._text(path, lambda col: col == value)

    def _text(self, path: str, test) -> ColumnElement[bool]:
        """A text test; long text is not in ``txt`` and is read from the document."""
        stored = self._document_text(path)
        return and_(ImageField.kind == TEXT, or_(
            and_(ImageField.txt.is_not(None), test(ImageField.txt)),
            and_(ImageField.txt.is_(None), test(stored))))

    def _document_text(self, path: str):
        keys = tuple(path.split("."))
        return (select(Image.doc[keys].as_string()).where(Image.id == ImageField.image_id)
                .scalar_subquery())

    def _in(self, path: str, values: list) -> ColumnElement[bool]:
        options = [self._eq(path, v) for v in values if v is not None]
        found = self._has(path, or_(*options)) if options else false()
        return or_(found, self._absent(path)) if None in values else found

    def _contains(self, path: str, value: Any) -> ColumnElement[bool]:
        """``value`` is an element of the list at ``path``, or a substring of its text."""
        in_list = self._has(path, self._eq(path, value), elem=True)
        if not isinstance(value, str):
            return in_list
        position = func.strpos if self.dialect == "postgresql" else func.instr
        in_text = self._has(path, self._text(path, lambda col: position(col, value) > 0))
        return or_(in_list, in_text)

    def _order(self, path: str, op: str, value: Any) -> ColumnElement[bool]:
        compare = {"<": lambda a, b: a < b, "<=": lambda a, b: a <= b,
                   ">": lambda a, b: a > b, ">=": lambda a, b: a >= b}[op]
        if isinstance(value, str):
            return self._has(path, self._text(path, lambda col: compare(col, value)))
        return self._has(path, and_(ImageField.kind == NUMBER,
                                    compare(ImageField.num, float(value))))

    def applicable(self, item: Criterion) -> ColumnElement[bool] | None:
        """For negated ``ni``/``~``: the field must be of a type the operator reads."""
        if item.op == "not ni":
            kinds = [LIST, TEXT] if isinstance(item.value, str) else [LIST]
            return self._has(item.field, ImageField.kind.in_(kinds))
        if item.op == "!~":
            return self._has(item.field, ImageField.kind == TEXT)
        return None


def image_conditions(items: Iterable[Criterion], dialect: str) -> list[ColumnElement[bool]]:
    """SQL conditions on ``images`` that select what ``items`` select."""
    compiler = _Compiler(dialect)
    out = []
    for item in items:
        out.append(compiler.condition(item))
        guard = compiler.applicable(item)
        if guard is not None:
            out.append(guard)
    return out


# -- running -------------------------------------------------------------------------------

def _scope(conn, dataset: str | None, study: str | None) -> list[ColumnElement[bool]]:
    out = []
    if dataset:
        found = conn.execute(select(Dataset.id).where(
            (Dataset.id == dataset) | (Dataset.name == dataset))).scalars().all()
        if not found:
            raise QueryError(f"no dataset {dataset!r} in this mirror; 'mirror query "
                             "--list-datasets' shows the names")
        out.append(Image.dataset_id.in_(found))
    if study:
        found = conn.execute(select(Study.id).where(
            (Study.id == study) | (Study.name == study))).scalars().all()
        if not found:
            raise QueryError(f"no study {study!r} in this mirror; sync studies with "
                             "'mirror sync --what studies,annotations'")
        out.append(Image.id.in_(select(StudyImage.image_id).where(StudyImage.study_id.in_(found))))
    return out


def selection_conditions(conn, items: Any = None, dataset: str | None = None,
                         study: str | None = None, include_removed: bool = False
                         ) -> list[ColumnElement[bool]]:
    """Conditions on ``images`` for criteria plus an optional dataset or study scope."""
    conditions = image_conditions(criteria(items), conn.dialect.name)
    conditions += _scope(conn, dataset, study)
    if not include_removed:
        conditions.append(Image.removed.is_(False))
    return conditions


def select_ids(conn, items: Any = None, dataset: str | None = None, study: str | None = None,
               limit: int | None = None, include_removed: bool = False) -> list[tuple[str, str]]:
    """``(id, name)`` of every image the criteria select, sorted by name."""
    conditions = selection_conditions(conn, items, dataset, study, include_removed)
    statement = select(Image.id, Image.name).where(*conditions).order_by(Image.name)
    if limit is not None:
        statement = statement.limit(limit)
    return [(row[0], row[1]) for row in conn.execute(statement)]
