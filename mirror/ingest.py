"""Turn stored documents and blobs into index rows.

Both the sync engine and ``mirror reindex`` go through these functions, so an
index rebuilt from the store is the index the sync would have written. Rows are
written with one bulk ``INSERT ... ON CONFLICT DO UPDATE`` per batch (SQLite and
PostgreSQL both have it): per-row ORM merges cost a SELECT and an INSERT each,
which dominated a 100,000-image sync.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import delete
from sqlalchemy.orm import Session

from mirror.index import (
    Annotation,
    Blob,
    Dataset,
    DocumentVersion,
    Feature,
    Image,
    Segmentation,
    Study,
    StudyImage,
)

KINDS = ("dataset", "image", "segmentation", "study", "annotation")
MODEL_OF = {"dataset": Dataset, "image": Image, "segmentation": Segmentation,
            "study": Study, "annotation": Annotation}


def _get(doc: dict, *path: str) -> Any:
    for key in path:
        if not isinstance(doc, dict):
            return None
        doc = doc.get(key)
    return doc


def _as_int(value: Any) -> int | None:
    """An integer that fits the index's INTEGER columns (32 bits on PostgreSQL), else None:
    the document (and so the query projection) keeps any other value."""
    if isinstance(value, int) and not isinstance(value, bool) and -2**31 <= value < 2**31:
        return value
    return None


def _as_bool(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


def _as_str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def image_columns(doc: dict) -> dict:
    """The flattened, typed columns of an image detail document."""
    clinical = _get(doc, "meta", "clinical") or {}
    acquisition = _get(doc, "meta", "acquisition") or {}
    dataset = doc.get("dataset") or {}
    return {
        "name": doc.get("name") or doc["_id"],
        "dataset_id": _as_str(dataset.get("_id")),
        "created": _as_str(doc.get("created")),
        "updated": _as_str(doc.get("updated")),
        "diagnosis": _as_str(clinical.get("diagnosis")),
        "benign_malignant": _as_str(clinical.get("benign_malignant")),
        "age_approx": _as_int(clinical.get("age_approx")),
        "sex": _as_str(clinical.get("sex")),
        "anatom_site_general": _as_str(clinical.get("anatom_site_general")),
        "melanocytic": _as_bool(clinical.get("melanocytic")),
        "diagnosis_confirm_type": _as_str(clinical.get("diagnosis_confirm_type")),
        "image_type": _as_str(acquisition.get("image_type")),
        "pixels_x": _as_int(acquisition.get("pixelsX")),
        "pixels_y": _as_int(acquisition.get("pixelsY")),
    }


def dataset_columns(doc: dict) -> dict:
    return {
        "name": doc.get("name") or doc["_id"],
        "license": _as_str(doc.get("license")),
        "attribution": _as_str(doc.get("attribution")),
        "description": _as_str(doc.get("description")),
        "access_level": _as_int(doc.get("_accessLevel")),
        "created": _as_str(doc.get("created")),
        "updated": _as_str(doc.get("updated")),
        "count": _as_int(doc.get("count")),
    }


def study_columns(doc: dict) -> dict:
    return {"name": doc.get("name") or doc["_id"], "description": _as_str(doc.get("description")),
            "created": _as_str(doc.get("created")), "updated": _as_str(doc.get("updated"))}


def segmentation_columns(doc: dict) -> dict:
    return {"image_id": doc.get("imageId") or "", "created": _as_str(doc.get("created")),
            "failed": bool(doc.get("failed")), "skill": _as_str(doc.get("skill"))}


def annotation_columns(doc: dict) -> dict:
    return {"study_id": doc.get("studyId") or "", "image_id": _as_str(_get(doc, "image", "_id")),
            "user_id": _as_str(_get(doc, "user", "_id")), "state": _as_str(doc.get("state")),
            "status": _as_str(doc.get("status"))}


COLUMNS_OF = {"dataset": dataset_columns, "image": image_columns,
              "segmentation": segmentation_columns, "study": study_columns,
              "annotation": annotation_columns}


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


def ingest_documents(session: Session, kind: str,
                     items: Iterable[tuple[dict, str, str, int]], fetched_at: str,
                     **extra: Any) -> None:
    """Record each ``(doc, sha256, path, size)`` as the current version of its object."""
    versions, objects = [], []
    for doc, sha256, path, size in items:
        versions.append({"kind": kind, "object_id": doc["_id"], "sha256": sha256, "path": path,
                         "size": size, "fetched_at": fetched_at})
        objects.append({"id": doc["_id"], "doc_sha256": sha256, "doc": doc, "removed": False,
                        "removed_at": None, "synced_at": fetched_at,
                        **COLUMNS_OF[kind](doc), **extra})
    upsert(session, DocumentVersion, versions)
    upsert(session, MODEL_OF[kind], objects)
    if kind == "study":
        for row in objects:
            _ingest_study_links(session, row["doc"])


def ingest_document(session: Session, kind: str, doc: dict, sha256: str, path: str, size: int,
                    fetched_at: str, **extra: Any) -> None:
    """One document: see :func:`ingest_documents`."""
    ingest_documents(session, kind, [(doc, sha256, path, size)], fetched_at, **extra)


def _ingest_study_links(session: Session, doc: dict) -> None:
    study_id = doc["_id"]
    session.execute(delete(StudyImage).where(StudyImage.study_id == study_id))
    session.execute(delete(Feature).where(Feature.study_id == study_id))
    image_ids = {img["_id"] for img in doc.get("images") or [] if isinstance(img, dict)}
    upsert(session, StudyImage, [{"study_id": study_id, "image_id": i}
                                 for i in sorted(image_ids)])
    features = {f["id"] for f in doc.get("features") or [] if isinstance(f, dict) and "id" in f}
    upsert(session, Feature, [{"study_id": study_id, "feature_id": f} for f in sorted(features)])


def blob_row(object_id: str, role: str, path: str, sha256: str, size: int,
             content_type: str | None, fetched_at: str, source_sha256: str | None = None
             ) -> dict:
    return {"object_id": object_id, "role": role, "path": path, "sha256": sha256, "size": size,
            "content_type": content_type, "fetched_at": fetched_at,
            "source_sha256": source_sha256}


def ingest_blobs(session: Session, rows: list[dict]) -> None:
    """Record verified blob files (rows from :func:`blob_row`)."""
    upsert(session, Blob, rows)


def ingest_blob(session: Session, *args: Any, **kwargs: Any) -> None:
    """One verified blob file: the arguments of :func:`blob_row`."""
    upsert(session, Blob, [blob_row(*args, **kwargs)])


def ingest_markup(session: Session, object_id: str, relpath: str, sha256: str, size: int,
                  fetched_at: str) -> None:
    """A markup file: the current one (its ``markups`` blob row) and a version row.

    Markup files are content-addressed documents like the others, so a changed study
    or annotation leaves the older file on disk; its ``document_versions`` row keeps it
    named (and hashed by ``mirror verify``) until ``mirror gc`` retires it.
    """
    ingest_blob(session, object_id, "markups", relpath, sha256, size, "application/json",
                fetched_at)
    upsert(session, DocumentVersion, [{"kind": "markup", "object_id": object_id,
                                       "sha256": sha256, "path": relpath, "size": size,
                                       "fetched_at": fetched_at}])


def mark_removed(session: Session, kind: str, object_ids: list[str], when: str) -> int:
    """Flag objects the archive no longer lists; their files stay for snapshots.

    A removed object is left out of the next projection, so selections never return it."""
    model = MODEL_OF[kind]
    count = 0
    for chunk_start in range(0, len(object_ids), 500):
        chunk = object_ids[chunk_start:chunk_start + 500]
        count += session.query(model).filter(model.id.in_(chunk)).update(
            {"removed": True, "removed_at": when}, synchronize_session=False)
    return count
