"""Parquet projections: one wide, typed table per kind of object, published with the index.

Selections (:mod:`mirror.query`) and ``mirror sql`` read these files with DuckDB instead of
the index database, so a reader on any host reads files, whatever the index is (a SQLite
generation or PostgreSQL). Each publish writes one folder::

    <ns>/index/projection-000042/
        images.parquet  segmentations.parquet  studies.parquet  datasets.parquet
        annotations.parquet  study_images.parquet
        schema.json      which column holds which kind of value of which field

beside ``index-000042.sqlite``, before CURRENT names that generation: a reader of
generation N reads ``projection-N`` only. On PostgreSQL, where there are no generations,
the folders are numbered on their own and ``index/PROJECTION`` names the newest.

A table has one row per current (not removed) object, sorted by ``_id``, and a column per
field path of the documents (``"meta.clinical.diagnosis"``). JSON is not typed per field,
so each *kind* of value a path holds gets a column: the most common kind gets the path
itself as its name, the others the path and a suffix (``"b.c:text"``, ``"tags:number[]"``,
``"meta:object"``). A missing field and a JSON ``null`` are both SQL NULL (a ``:null``
column, true where the document holds a ``null``, lets an export list the field); a list fills
every list column of its path (its scalar elements of that kind, possibly none), so that
"is a list" is one ``IS NOT NULL``.

The builder is generic: per kind, an iterable of ``(object_id, name, document)`` rows. The
ISIC tables are fed from the index by :func:`index_tables`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import threading
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mirror.layout import SHARED_DIR_MODE, Layout

if TYPE_CHECKING:
    import numpy as np

FORMAT = 1  # of the tables: a new one rebuilds every table at the next publish
SCHEMA = "schema.json"
# Rows per Parquet row group: DuckDB scans row groups in parallel and skips those whose
# min/max rule a range out; 32,768 was faster than one group of 100,000 (2-7 ms selections)
ROW_GROUP = 32_768
# Documents walked before their columns are written out as a part (the table is then the
# parts joined): what bounds a publish's memory, about 100 MB for 16,384 ISIC images
PART = 16_384
POINTER = "PROJECTION"  # PostgreSQL mirrors: names the newest projection folder
TEXT, NUMBER, BOOLEAN, OBJECT, NULL = "text", "number", "boolean", "object", "null"
LIST_OF = {TEXT: "text[]", NUMBER: "number[]", BOOLEAN: "boolean[]"}
SQL_TYPE = {TEXT: "VARCHAR", NUMBER: "DOUBLE", BOOLEAN: "BOOLEAN", OBJECT: "BOOLEAN",
            NULL: "BOOLEAN",
            "text[]": "VARCHAR[]", "number[]": "DOUBLE[]", "boolean[]": "BOOLEAN[]"}
_ORDER = (TEXT, NUMBER, BOOLEAN, "text[]", "number[]", "boolean[]")  # ties: this order
_INT64 = 2**63
MAX_SHARED_TEXTS = 4096  # distinct texts of a column held once each; beyond, as they come
_SURROGATE = re.compile("[\ud800-\udfff]")

Row = tuple[str, str | None, dict]


def folder_name(number: int) -> str:
    return f"projection-{number:06d}"


def as_float(number: int | float) -> float:
    """A JSON number as a projection holds it. Integers beyond a float's range (JSON allows
    any length) become -inf or inf, which still order correctly against every other
    number; exact equality with such an integer is out of reach anyway."""
    try:
        return float(number)
    except OverflowError:
        return math.inf if number > 0 else -math.inf


def _text(value: str) -> str:
    """Text DuckDB can hold: a lone surrogate (JSON allows ``\\ud800``) becomes U+FFFD."""
    if value.isascii():
        return value
    try:
        value.encode()
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", value)
    return value


def _scalar_kind(value: Any) -> str | None:
    if isinstance(value, bool):
        return BOOLEAN
    if isinstance(value, (int, float)):
        return NUMBER
    return TEXT if isinstance(value, str) else None


class _Slot:
    """The values of one path and kind, one per row so far (None where it has none), and
    the distinct texts seen, so that a value repeated in many documents (a dataset's
    description in every image) is held once."""

    __slots__ = ("values", "count", "texts")

    def __init__(self) -> None:
        self.values: list = []
        self.count = 0
        self.texts: dict[str, str] | None = {}


class _Table:
    """The columns of one kind, filled a document at a time, then typed and written. The
    documents are not kept: a publish holds one column entry per value, not 100,000
    parsed documents."""

    def __init__(self) -> None:
        self.rows = 0
        self.slots: dict[tuple[str, str], _Slot] = {}  # by (path, kind)

    def add(self, doc: dict) -> None:
        self._walk(doc, "", self.rows)
        self.rows += 1

    def _walk(self, doc: dict, prefix: str, row: int) -> None:
        """Every value of ``doc`` into the slot of its path and kind: the inner loop of a
        publish (millions of values), hence exact type tests and one dict lookup each."""
        slots = self.slots
        for key, value in doc.items():
            path = prefix + key
            t = type(value)
            if t is str:
                kind = TEXT
                if not value.isascii():
                    value = _text(value)
            elif t is int or t is float:
                kind = NUMBER
            elif t is bool:
                kind = BOOLEAN
            elif t is dict:
                kind, value = OBJECT, True
                self._walk(doc[key], path + ".", row)
            elif t is list:
                kind = "list"
            elif value is None:  # to a query the same as missing; exports list its column
                kind, value = NULL, True
            else:
                continue
            slot = slots.get((path, kind))
            if slot is None:
                slot = slots[(path, kind)] = _Slot()
            if slot.texts is not None and kind == TEXT:
                value = slot.texts.setdefault(value, value)
                if len(slot.texts) > MAX_SHARED_TEXTS:  # names, dates: nothing to share
                    slot.texts = None
            values = slot.values
            if len(values) > row:  # "a.b" as a key and as a path: the last one counts
                values[row] = value
                continue
            if len(values) < row:
                values.extend([None] * (row - len(values)))
            values.append(value)
            slot.count += 1

    def flush(self, columns: _Columns) -> dict[str, tuple[str, np.ndarray]]:
        """This chunk's columns, named and counted by ``columns``; the chunk is emptied."""
        arrays = {}
        for (path, kind), slot in self.slots.items():
            values, slot.values = slot.values, []  # each value once: in a list or an array
            split = _lists(values) if kind == "list" else {kind: (slot.count, values)}
            for each, (count, column) in split.items():
                sql_type = _type(each, column)
                arrays[columns.add(path, each, count, sql_type)] = (sql_type,
                                                                    self._array(each, column))
        return arrays

    def _array(self, kind: str, values: list) -> np.ndarray:
        if kind == NUMBER:
            values = [v if v is None or type(v) is int and -_INT64 <= v < _INT64
                      else as_float(v) for v in values]
        elif kind == "number[]":
            values = [None if items is None else [as_float(v) for v in items]
                      for items in values]
        import numpy as np

        array = np.empty(self.rows, dtype=object)
        array[:len(values)] = _object_array(values)
        return array


def _lists(lists: list) -> dict[str, tuple[int, list]]:
    """A list's scalar elements by kind, each kind a column; every list column of a path
    holds each list (see :meth:`_Columns.select` for lists of other chunks)."""
    split: list[dict[str, list] | None] = []
    for items in lists:
        if items is None:
            split.append(None)
            continue
        by_kind: dict[str, list] = {}
        for item in items:
            kind = _scalar_kind(item)
            if kind is not None:
                by_kind.setdefault(kind, []).append(_text(item) if kind == TEXT else item)
        split.append(by_kind)
    found = {k for by_kind in split if by_kind for k in by_kind}
    count = sum(by_kind is not None for by_kind in split)
    return {LIST_OF[k]: (count, [None if b is None else b.get(k, []) for b in split])
            for k in sorted(found, key=_ORDER.index) or [TEXT]}


def _type(kind: str, values: list) -> str:
    """BIGINT for a number column of integers only (as SQL users expect), else DOUBLE."""
    if kind == NUMBER and all(type(v) is int and -_INT64 <= v < _INT64
                              for v in values if v is not None):
        return "BIGINT"
    return SQL_TYPE[kind]


class _Columns:
    """The columns of a table across its chunks: a part's name for each path and kind, how
    many values each holds, and its type (DOUBLE if any chunk's numbers needed one)."""

    def __init__(self) -> None:
        self.names: dict[tuple[str, str], str] = {}
        self.counts: dict[tuple[str, str], int] = {}
        self.types: dict[tuple[str, str], str] = {}

    def add(self, path: str, kind: str, count: int, sql_type: str) -> str:
        key = (path, kind)
        if key not in self.names:
            self.names[key], self.counts[key], self.types[key] = f"c{len(self.names)}", 0, sql_type
        self.counts[key] += count
        if sql_type == "DOUBLE":
            self.types[key] = sql_type
        return self.names[key]

    def select(self) -> tuple[dict[str, dict[str, str]], list[str]]:
        """The schema's fields and the final table's columns, as SQL over the parts: the
        path itself names its most common kind, a suffix the others; a list column is an
        empty list (not NULL) where another chunk's list had no element of its kind."""
        by_path: dict[str, list[str]] = {}
        for path, kind in self.names:
            by_path.setdefault(path, []).append(kind)
        used, fields, exprs = set(by_path), {}, []
        for path, kinds in by_path.items():
            ranked = [k for k in _ORDER if k in kinds]
            main = max(ranked, key=lambda k: self.counts[(path, k)]) if ranked else None
            lists = [self.names[(path, k)] for k in kinds if k in LIST_OF.values()]
            fields[path] = {}
            for kind in kinds:
                name = path if kind == main else _unique(f"{path}:{kind}", used)
                fields[path][kind] = name
                part, sql_type = self.names[(path, kind)], self.types[(path, kind)]
                value = f"CAST({part} AS {sql_type})"
                if kind in LIST_OF.values():
                    is_list = " OR ".join(f"{c} IS NOT NULL" for c in lists)
                    value = f"CASE WHEN {is_list} THEN coalesce({value}, []) END"
                exprs.append(f"{value} AS {quote(name)}")
        return fields, exprs


def _object_array(values: list) -> np.ndarray:
    """A 1-d object array of lists (``np.array`` would make a 2-d one of equal lengths)."""
    import numpy as np

    array = np.empty(len(values), dtype=object)
    array[:] = values
    return array


def _unique(name: str, used: set[str]) -> str:
    while name in used:
        name += "~"
    used.add(name)
    return name


def write_table(path: Path, rows: Iterable[Row]) -> dict:
    """Write the Parquet table of one kind; returns its schema entry.

    The rows are read once (a generator need not hold them) and :data:`PART` at a time,
    each chunk written as a part that DuckDB then joins into one table, in ``_id`` order
    (the object id, which replaces any ``_id`` in the document; rows that do not come in
    that order are sorted). A document without a ``name`` gets the row's name."""
    parts, columns, total = path.with_name(path.name + ".parts"), _Columns(), 0
    parts.mkdir()
    try:
        table, ordered, last = _Table(), True, ""
        for object_id, name, doc in rows:
            doc = {"_id": object_id, **doc}  # _id first, whatever the document's order
            doc["_id"] = object_id
            if doc.get("name") is None and name is not None:
                doc["name"] = name
            table.add(doc)
            ordered, last = ordered and object_id >= last, object_id
            if table.rows == PART:
                total += _part(parts, table, columns)
                table = _Table()
        order = "" if ordered else ' ORDER BY "_id"'
        if not total:  # one chunk (most tables): one COPY straight from memory, no part
            select, data = _chunk(table, columns)
            fields, exprs = columns.select()
            _copy(path, f"SELECT {', '.join(exprs)} FROM (SELECT {select} FROM data){order}",
                  data)
            return {"rows": table.rows, "fields": fields}
        if table.rows:
            total += _part(parts, table, columns)
        fields, exprs = columns.select()
        files = ", ".join(literal(str(p)) for p in sorted(parts.iterdir()))
        _copy(path, f"SELECT {', '.join(exprs)} FROM read_parquet([{files}], "
                    f"union_by_name = true){order}")
    finally:
        shutil.rmtree(parts, ignore_errors=True)
    return {"rows": total, "fields": fields}


def _chunk(table: _Table, columns: _Columns) -> tuple[str, dict]:
    """One chunk's columns as SQL over ``data`` (its numpy arrays), and the arrays."""
    if not table.rows:  # no rows at all: the columns a table always has
        table.slots = {("_id", TEXT): _Slot(), ("name", TEXT): _Slot()}
    arrays = table.flush(columns)
    names = list(arrays)
    data = {name: arrays[name][1] for name in names}
    return ", ".join(f"CAST({quote(n)} AS {arrays[n][0]}) AS {quote(n)}" for n in names), data


def _part(parts: Path, table: _Table, columns: _Columns) -> int:
    select, data = _chunk(table, columns)
    _copy(parts / f"part-{len(list(parts.iterdir())):06d}.parquet",
          f"SELECT {select} FROM data", data)
    return table.rows


_LOCAL = threading.local()


def warm_imports() -> None:
    """Import what a build needs (DuckDB, numpy: 0.15-0.3 s) ahead of the first build.
    They are imported where used, so a reader or a short command never pays for them; a
    sync calls this in a background thread while it waits on the network, so its
    publish does not wait for them at the end."""
    import duckdb  # noqa: F401
    import numpy  # noqa: F401


@contextmanager
def _one_connection() -> Iterator[None]:
    """Every :func:`_copy` of a build in this thread on one DuckDB connection: opening one
    costs about 20 ms, a small table's ``COPY`` about 3. Closed when the build ends, so no
    buffer outlives it."""
    import duckdb

    _LOCAL.duckdb = duckdb.connect(config={"threads": 1})
    try:
        yield
    finally:
        _LOCAL.duckdb.close()
        _LOCAL.duckdb = None


def _copy(path: Path, select: str, data: dict | None = None) -> None:
    """``COPY`` a query to Parquet with DuckDB (which scans ``data``, a dict of numpy
    arrays, as the table ``data``). One thread: more buffer row groups (+300 MB)."""
    import duckdb

    shared = getattr(_LOCAL, "duckdb", None)
    con = shared or duckdb.connect(config={"threads": 1})
    try:
        if data is not None:
            con.register("data", data)
        con.execute(f"COPY ({select}) TO {literal(str(path))} "
                    f"(FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE {ROW_GROUP})")
    finally:
        if shared is None:
            con.close()
        elif data is not None:
            con.unregister("data")


def write_links(path: Path, columns: tuple[str, ...], rows: Iterable[tuple]) -> dict:
    """A plain table of text columns (``study_images``: which images a study holds)."""
    rows = sorted(rows)
    data = {f"c{i}": _object_array([r[i] for r in rows]) for i in range(len(columns))}
    select = ", ".join(f"CAST(c{i} AS VARCHAR) AS {quote(c)}" for i, c in enumerate(columns))
    _copy(path, f"SELECT {select} FROM data", data)
    return {"rows": len(rows), "fields": {c: {TEXT: c} for c in columns}}


def quote(name: str) -> str:
    """A SQL identifier: field paths have dots and spaces, never double quotes."""
    return '"' + name.replace('"', '""') + '"'


def literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def digest(versions: Iterable[tuple[str, str]]) -> str:
    """What a table's content depends on: its ``(object id, document version)`` pairs in
    id order, and this module's format."""
    hashed = hashlib.sha256(f"mirror-projection/{FORMAT}\n".encode())
    for object_id, version in versions:
        hashed.update(f"{object_id}\x1f{version}\n".encode())
    return hashed.hexdigest()


def build(folder: Path, tables: dict[str, Iterable[Row]],
          links: dict[str, tuple[tuple[str, ...], Iterable[tuple]]] | None = None,
          digests: dict[str, str] | None = None, previous: Path | None = None) -> None:
    """Write every table and ``schema.json`` into a new ``folder``, each file synced.

    A table whose digest (see :func:`digest`) equals its digest in the ``previous``
    projection is that file again, hard-linked (Parquet files are never changed), and its
    rows are not read: a sync that changed no image does not rebuild the images."""
    folder.mkdir(parents=True)
    os.chmod(folder, SHARED_DIR_MODE)  # the lab group prunes it later (docs/layout.md)
    schema, digests = {}, digests or {}
    before = _schema_of(previous)
    for kind, rows in tables.items():
        target = folder / f"{kind}.parquet"
        known = digests.get(kind)
        if known and before.get(kind, {}).get("digest") == known:
            _link(previous / target.name, target)
            schema[kind] = before[kind]
        else:
            schema[kind] = {**write_table(target, rows), "digest": known}
    for name, (columns, rows) in (links or {}).items():
        schema[name] = write_links(folder / f"{name}.parquet", columns, rows)
    (folder / SCHEMA).write_text(json.dumps(schema, indent=1, sort_keys=True), encoding="utf-8")
    for path in folder.iterdir():
        _fsync(path)
    fsync_dir(folder)


def _schema_of(folder: Path | None) -> dict:
    try:
        return json.loads((folder / SCHEMA).read_text(encoding="utf-8")) if folder else {}
    except (OSError, ValueError):  # none, or unreadable: build everything
        return {}


def _link(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:  # a file system without hard links
        shutil.copyfile(source, target)


def fsync_dir(folder: Path) -> None:
    """As :func:`mirror.store.fsync_dir`, imported when a writer needs it: readers of a
    projection (``mirror query --count``) start without the object store's imports."""
    from mirror.store import fsync_dir as sync

    sync(folder)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def stage(index_dir: Path, tables: dict[str, Iterable[Row]],
          links: dict[str, tuple[tuple[str, ...], Iterable[tuple]]] | None = None,
          digests: dict[str, str] | None = None, previous: int | None = None) -> Path:
    """Build a projection under a temporary name in ``index_dir`` (see :func:`place`),
    reusing the unchanged tables of projection number ``previous``."""
    from mirror.files import remove_dead_temps, temp_beside  # writers only: readers start fast

    index_dir.mkdir(parents=True, exist_ok=True)
    remove_dead_temps(index_dir)  # a killed publish's staging folder
    tmp = temp_beside(index_dir / "projection")
    before = None if previous is None else index_dir / folder_name(previous)
    try:
        with _one_connection():
            build(tmp, tables, links, digests, before)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return tmp


def place(staged: Path, index_dir: Path, number: int) -> Path:
    """Rename a staged projection to number ``number``; call before that generation is
    made current. A folder of that number, left by a publish that died before it moved
    CURRENT, is replaced."""
    final = index_dir / folder_name(number)
    if final.exists():
        shutil.rmtree(final)
    os.rename(staged, final)
    fsync_dir(index_dir)
    return final


def prune(index_dir: Path, keep_from: int) -> None:
    """Remove projection folders older than ``keep_from``."""
    for path in index_dir.glob("projection-*"):
        if int(path.name.removeprefix("projection-")) < keep_from:
            shutil.rmtree(path, ignore_errors=True)


def current_number(index_dir: Path) -> int | None:
    """The newest projection a PostgreSQL mirror published (:data:`POINTER`), or None."""
    try:
        name = (index_dir / POINTER).read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return None
    return int(name.removeprefix("projection-"))


def reader_number(layout: Layout, url: str | None) -> int | None:
    """The projection a reader opening the mirror now reads: the current generation's, or
    (PostgreSQL, ``url`` set) the newest published. Read without the index database."""
    if url:
        return current_number(layout.index_dir)
    try:
        name = layout.current.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return None
    return int(name.removeprefix("index-").removesuffix(".sqlite"))


def write_pointer(index_dir: Path, number: int) -> None:
    tmp = index_dir / f".tmp-{uuid.uuid4().hex}.pointer"
    tmp.write_text(folder_name(number) + "\n", encoding="ascii")
    _fsync(tmp)
    os.replace(tmp, index_dir / POINTER)
    fsync_dir(index_dir)


# -- the ISIC tables, from the index ---------------------------------------------------------

def index_tables(conn, spec=None) -> tuple[dict[str, Iterator[Row]], dict, dict[str, str]]:
    """The projection rows of every kind of the source ``spec`` (current objects only, read
    when iterated, one table per kind named ``KindSpec.table``), the source's link tables
    (ISIC v1: ``study_images``), and the digest of each kind, from an index connection."""
    from sqlalchemy import Text, null, select, type_coerce

    from mirror.ingest import model_of

    def rows(model, where, shown=None) -> Iterator[Row]:
        # the document as text: json.loads is faster than the driver's JSON decoding
        name = getattr(model, "name", None)  # segmentations and annotations have none
        columns = [model.id, name if name is not None else null(), type_coerce(model.doc, Text)]
        for object_id, object_name, doc in conn.execution_options(stream_results=True).execute(
                select(*columns).where(model.removed.is_(False), *where).order_by(model.id)):
            doc = json.loads(doc) if isinstance(doc, str) else doc
            yield object_id, object_name, doc if shown is None else shown(doc)

    def versions(model, where) -> Iterator[tuple[str, str]]:
        return conn.execute(select(model.id, model.doc_sha256)
                            .where(model.removed.is_(False), *where).order_by(model.id))

    raw = conn.dialect.name == "sqlite"  # tuples from the driver: a million rows a publish
    tables, digests = {}, {}
    if spec is None:
        return tables, {}, digests
    for kind in spec.kinds:
        model, where = model_of(kind)
        if raw:
            tables[kind.table] = _raw_rows(conn, model, kind, bool(where))
            digests[kind.table] = digest(_raw_versions(conn, model, kind, bool(where)))
            continue
        tables[kind.table] = rows(model, where, kind.projected)
        digests[kind.table] = digest(versions(model, where))
    links = spec.links(conn) if spec.links is not None else {}
    return tables, links, digests


def _raw_select(conn, model, kind, by_kind: bool, columns: str) -> Iterator[tuple]:
    """``columns`` of ``model``'s current rows of ``kind`` in id order, as the SQLite
    driver's tuples (the SQL :func:`index_tables` builds with SQLAlchemy, without a Row
    object per row)."""
    where = ' AND "kind" = ?' if by_kind else ""
    cursor = conn.connection.cursor()
    try:
        cursor.execute(f'SELECT {columns} FROM "{model.__table__.name}" WHERE "removed" IS 0'
                       f'{where} ORDER BY "id"', (kind.name,) if by_kind else ())
        yield from cursor
    finally:
        cursor.close()


def _raw_rows(conn, model, kind, by_kind: bool) -> Iterator[Row]:
    name = '"name"' if "name" in model.__table__.columns else "NULL"
    shown = kind.projected
    for object_id, object_name, doc in _raw_select(conn, model, kind, by_kind,
                                                   f'"id", {name}, "doc"'):
        doc = json.loads(doc) if isinstance(doc, str | bytes) else doc
        yield object_id, object_name, doc if shown is None else shown(doc)


def _raw_versions(conn, model, kind, by_kind: bool) -> Iterator[tuple[str, str]]:
    return _raw_select(conn, model, kind, by_kind, '"id", "doc_sha256"')
