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

from collections.abc import Iterable
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from mirror.index import Blob, DocumentVersion, FileVersion, ObjectRow
from mirror.sources.base import KindSpec


def upsert(session: Session, model: type, rows: list[dict]) -> None:
    """Insert ``rows`` into ``model``'s table, replacing rows with the same primary key."""
    if not rows:
        return
    dialect = session.get_bind().dialect.name
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
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        found.update(session.execute(select(model.id, model.doc_sha256).where(
            model.id.in_(chunk), *where)).all())
    return found


def ingest_documents(session: Session, kind: KindSpec,
                     items: Iterable[tuple[dict, str, str, int]], fetched_at: str,
                     **extra: Any) -> None:
    """Record each ``(doc, sha256, path, size)`` as the current version of its object."""
    versions, objects = [], []
    for doc, sha256, path, size in items:
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
