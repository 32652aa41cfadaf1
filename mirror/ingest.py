"""Turn stored documents and files into index rows, for any source.

Both the sync engine and ``mirror reindex`` go through these functions, so an index
rebuilt from the store is the index the sync would have written. What a document becomes
is the source's :class:`~mirror.sources.base.KindSpec`: its typed table and columns when
it declares one (ISIC v1 does), else a row of the generic ``objects`` table; plus any
extra rows its ``index`` hook writes (links between objects). Rows are written with one
bulk ``INSERT ... ON CONFLICT DO UPDATE`` per batch (SQLite and PostgreSQL both have it):
per-row ORM merges cost a SELECT and an INSERT each, which dominated a 100,000-image sync.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from sqlalchemy import JSON, Boolean, Integer, String, Table, select, update
from sqlalchemy.orm import Session

from mirror.index import Blob, DocumentVersion, FileVersion, ObjectRow
from mirror.index.models import ArchiveText
from mirror.sources.base import KindSpec


def upsert(session: Session, model: type, rows: list[dict],
           encoded: dict[str, list[str | None]] | None = None) -> None:
    """Insert ``rows`` into ``model``'s table, replacing rows with the same primary key.

    ``encoded``: for a JSON column, the JSON text of each row's value where the caller
    already has it (None where not), used instead of encoding the value again."""
    if not rows:
        return
    dialect = session.get_bind().dialect.name
    if dialect == "sqlite" and _sqlite_upsert(session, model.__table__, rows, encoded or {}):
        return
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    table = model.__table__
    keys = [c.name for c in table.primary_key]
    statement = insert(table)
    updates = {c.name: statement.excluded[c.name] for c in table.columns if c.name not in keys}
    if updates:
        statement = statement.on_conflict_do_update(index_elements=keys, set_=updates)
    else:  # a link table: the row is all key
        statement = statement.on_conflict_do_nothing(index_elements=keys)
    session.execute(statement, rows)


_PLAIN = (String, Integer, Boolean)  # SQLite takes these values as Python has them
_STATEMENTS: dict[tuple[str, tuple[str, ...]], tuple[str, list[int]]] = {}


def _sqlite_upsert(session: Session, table: Table, rows: list[dict],
                   encoded: dict[str, list[str | None]]) -> bool:
    """:func:`upsert` as one ``executemany`` of a statement built once per table and
    column set, the same values SQLAlchemy would bind (JSON as ``json.dumps`` gives it,
    the engine's serialiser), without its per-row statement compilation and parameter
    processing: a whole-catalog IDC sync upserts two million rows. False (nothing done)
    when a row lacks a column with a Python-side default or a column's type is not one
    whose value SQLite takes as is; :func:`upsert` then goes the ORM way."""
    keys = tuple(rows[0])
    built = _STATEMENTS.get((table.name, keys))
    if built is None:
        built = _statement(table, keys)
        if built is None:
            return False
        _STATEMENTS[(table.name, keys)] = built
    sql, json_at = built
    dumps, values = json.dumps, []
    texts = [(at, encoded.get(keys[at])) for at in json_at]
    try:
        for n, row in enumerate(rows):
            if len(row) != len(keys):
                return False
            value = [row[k] for k in keys]
            for at, text in texts:
                value[at] = dumps(value[at]) if text is None or text[n] is None else text[n]
            values.append(tuple(value))
    except KeyError:  # a row with other columns than the first
        return False
    if session.autoflush:  # as session.execute would: pending ORM rows first, in order
        session.flush()
    session.connection().exec_driver_sql(sql, values)
    return True


def _statement(table: Table, keys: tuple[str, ...]) -> tuple[str, list[int]] | None:
    columns = {c.name: c for c in table.columns}
    if any(k not in columns for k in keys) or any(
            c.default is not None and name not in keys for name, c in columns.items()):
        return None
    encoded = []  # where the JSON values are
    for at, key in enumerate(keys):
        kind = columns[key].type
        if isinstance(kind, JSON):
            encoded.append(at)
        elif not isinstance(kind, (*_PLAIN, ArchiveText)):
            return None
    primary = [c.name for c in table.primary_key]
    if any(k not in keys for k in primary):
        return None
    quoted = ", ".join(f'"{k}"' for k in keys)
    sets = ", ".join(f'"{k}" = excluded."{k}"' for k in keys if k not in primary)
    conflict = (f"DO UPDATE SET {sets}" if sets else "DO NOTHING")
    sql = (f'INSERT INTO "{table.name}" ({quoted}) VALUES ({", ".join("?" * len(keys))}) '
           f'ON CONFLICT ({", ".join(chr(34) + k + chr(34) for k in primary)}) {conflict}')
    return sql, encoded


def model_of(kind: KindSpec) -> tuple[type, list]:
    """The table holding ``kind``'s current objects and the clauses that pick the kind."""
    if kind.model is not None:
        return kind.model, []
    return ObjectRow, [ObjectRow.kind == kind.name]


def current_ids(session: Session, kind: KindSpec, *, removed: bool = False) -> set[str]:
    """Ids of ``kind``'s objects that are (or, with ``removed``, were) in the archive."""
    model, where = model_of(kind)
    return set(session.scalars(select(model.id).where(model.removed.is_(removed), *where)))


def known_hashes(session: Session, kind: KindSpec, ids: list[str]) -> dict[str, str]:
    """``{id: doc_sha256}`` of the current versions of those of ``ids`` the index has."""
    model, where = model_of(kind)
    found: dict[str, str] = {}
    if session.get_bind().dialect.name == "sqlite":  # no statement compiled per chunk
        if session.autoflush:  # as session.execute would
            session.flush()
        connection = session.connection()
        table, extra = model.__table__.name, ' AND "kind" = ?' if where else ""
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            found.update(connection.exec_driver_sql(
                f'SELECT "id", "doc_sha256" FROM "{table}" WHERE "id" IN '
                f'({", ".join("?" * len(chunk))}){extra}',
                tuple(chunk) + ((kind.name,) if where else ())).all())
        return found
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        found.update(session.execute(select(model.id, model.doc_sha256).where(
            model.id.in_(chunk), *where)).all())
    return found


def ingest_documents(session: Session, kind: KindSpec,
                     items: Iterable[tuple], fetched_at: str, **extra: Any) -> None:
    """Record each ``(doc, sha256, path, size[, text])`` as the current version of its
    object (``text``: the document's canonical JSON, kept as the index's copy when the
    kind is not :attr:`~mirror.sources.base.KindSpec.ordered`)."""
    versions, objects, texts = [], [], []
    for doc, sha256, path, size, *text in items:
        texts.append(text[0] if text and not kind.ordered else None)
        object_id = kind.id_of(doc)
        versions.append({"kind": kind.name, "object_id": object_id, "sha256": sha256,
                         "path": path, "size": size, "fetched_at": fetched_at})
        row = {"id": object_id, "doc_sha256": sha256, "doc": doc, "removed": False,
               "removed_at": None, "synced_at": fetched_at}
        if kind.model is not None:
            row.update(kind.columns(doc) if kind.columns else {}, **extra)
        else:
            name = kind.name_of(doc)
            parent = kind.parent_of(doc) if kind.parent_of else None
            row.update(kind=kind.name, name=name if isinstance(name, str) else object_id,
                       parent_id=parent if isinstance(parent, str) else None)
        objects.append(row)
    upsert(session, DocumentVersion, versions)
    if any(text is not None for text in texts):
        upsert(session, model_of(kind)[0], objects, {"doc": texts})
    else:
        upsert(session, model_of(kind)[0], objects)
    if kind.index is not None:
        kind.index(session, [row["doc"] for row in objects])


def mark_removed(session: Session, kind: KindSpec, object_ids: list[str], when: str) -> int:
    """Flag objects the archive no longer lists; their files stay for snapshots (and
    ``mirror gc`` keeps them through its grace period)."""
    model, where = model_of(kind)
    count = 0
    for start in range(0, len(object_ids), 500):
        chunk = object_ids[start:start + 500]
        count += session.execute(update(model).where(model.id.in_(chunk), *where).values(
            removed=True, removed_at=when)).rowcount
    if kind.on_removed is not None:
        kind.on_removed(session, object_ids)
    return count


def blob_row(object_id: str, role: str, path: str, sha256: str, size: int,
             content_type: str | None, fetched_at: str, source_sha256: str | None = None
             ) -> dict:
    return {"object_id": object_id, "role": role, "path": path, "sha256": sha256, "size": size,
            "content_type": content_type, "fetched_at": fetched_at,
            "source_sha256": source_sha256}


def ingest_blobs(session: Session, rows: list[dict]) -> None:
    """Record verified files (rows from :func:`blob_row`) as current, and as versions."""
    upsert(session, Blob, rows)
    upsert(session, FileVersion, [{k: r[k] for k in ("object_id", "role", "sha256", "path",
                                                     "size", "fetched_at")} for r in rows])


def ingest_blob(session: Session, *args: Any, **kwargs: Any) -> None:
    """One verified file: the arguments of :func:`blob_row`."""
    ingest_blobs(session, [blob_row(*args, **kwargs)])


def ingest_document_file(session: Session, kind: str, object_id: str, role: str,
                         relpath: str, sha256: str, size: int, fetched_at: str) -> None:
    """A JSON file that is a file role of an object (ISIC's markups): the current file of
    the role, and a document version, so ``mirror verify`` hashes it and gc retires it."""
    ingest_blob(session, object_id, role, relpath, sha256, size, "application/json",
                fetched_at)
    upsert(session, DocumentVersion, [{"kind": kind, "object_id": object_id,
                                       "sha256": sha256, "path": relpath, "size": size,
                                       "fetched_at": fetched_at}])
