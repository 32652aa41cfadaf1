"""ISIC v1 documents as index rows: the typed columns of each kind, and the links.

These are the ``columns`` and ``index`` hooks of the ISIC v1 kinds (see
:mod:`mirror.sources.isic_v1.spec`); :mod:`mirror.ingest` calls them for the sync and for
``mirror reindex`` alike.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete
from sqlalchemy.orm import Session

from mirror.ingest import upsert
from mirror.sources.isic_v1.models import Feature, StudyImage


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


def _name(doc: dict) -> str:
    name = doc.get("name")
    return name if isinstance(name, str) and name else doc["_id"]


def image_columns(doc: dict) -> dict:
    """The flattened, typed columns of an image detail document."""
    clinical = _get(doc, "meta", "clinical") or {}
    acquisition = _get(doc, "meta", "acquisition") or {}
    dataset = doc.get("dataset") or {}
    if not isinstance(clinical, dict):
        clinical = {}
    if not isinstance(acquisition, dict):
        acquisition = {}
    return {
        "name": _name(doc),
        "dataset_id": _as_str(dataset.get("_id")) if isinstance(dataset, dict) else None,
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
        "name": _name(doc),
        "license": _as_str(doc.get("license")),
        "attribution": _as_str(doc.get("attribution")),
        "description": _as_str(doc.get("description")),
        "access_level": _as_int(doc.get("_accessLevel")),
        "created": _as_str(doc.get("created")),
        "updated": _as_str(doc.get("updated")),
        "count": _as_int(doc.get("count")),
    }


def study_columns(doc: dict) -> dict:
    return {"name": _name(doc), "description": _as_str(doc.get("description")),
            "created": _as_str(doc.get("created")), "updated": _as_str(doc.get("updated"))}


def segmentation_columns(doc: dict) -> dict:
    return {"image_id": _as_str(doc.get("imageId")) or "",
            "created": _as_str(doc.get("created")),
            "failed": bool(doc.get("failed")), "skill": _as_str(doc.get("skill"))}


def annotation_columns(doc: dict) -> dict:
    return {"study_id": _as_str(doc.get("studyId")) or "",
            "image_id": _as_str(_get(doc, "image", "_id")),
            "user_id": _as_str(_get(doc, "user", "_id")), "state": _as_str(doc.get("state")),
            "status": _as_str(doc.get("status"))}


def study_image_links(conn) -> dict:
    """``study_images`` for the projection: a study scope selects by it."""
    from sqlalchemy import select

    rows = conn.execute(select(StudyImage.study_id, StudyImage.image_id))
    return {"study_images": (("study_id", "image_id"), [tuple(r) for r in rows])}


def index_studies(session: Session, docs: list[dict]) -> None:
    """A study's image and feature links, replaced with each new version."""
    for doc in docs:
        study_id = doc["_id"]
        session.execute(delete(StudyImage).where(StudyImage.study_id == study_id))
        session.execute(delete(Feature).where(Feature.study_id == study_id))
        images = doc.get("images") if isinstance(doc.get("images"), list) else []
        image_ids = {img["_id"] for img in images
                     if isinstance(img, dict) and isinstance(img.get("_id"), str)}
        upsert(session, StudyImage, [{"study_id": study_id, "image_id": i}
                                     for i in sorted(image_ids)])
        features = doc.get("features") if isinstance(doc.get("features"), list) else []
        ids = {f["id"] for f in features if isinstance(f, dict) and isinstance(f.get("id"), str)}
        upsert(session, Feature, [{"study_id": study_id, "feature_id": f} for f in sorted(ids)])
