"""ISIC v1 hooks for ``mirror verify`` and its repair.

``validation_tasks``: the files whose role has a validator (the superpixel PNG) with what
the validator needs (the image's size), so verify re-checks them as the sync did.
``forget``: what to undo in the index so that the next sync fetches a bad document again
(ISIC v1's change detection compares document hashes and listing digests).
``freshness``: for ``mirror status``, how stale the oldest per-image segmentation check is
(those listings are re-checked in rotation, see :mod:`.documents`).
"""

from __future__ import annotations

from sqlalchemy import delete, func, select, update

from mirror.index import Blob, DocumentVersion, Listing
from mirror.sources.base import FileTask
from mirror.sources.isic_v1.models import Image, Segmentation, Study


def validation_tasks(conn) -> dict[str, FileTask]:
    """``{path: task}`` of every superpixel file, with its image's shape."""
    return {path: FileTask("image", image_id, "superpixels", "superpixels",
                           shape=(py, px) if px and py else None)
            for path, image_id, py, px in conn.execute(
                select(Blob.path, Blob.object_id, Image.pixels_y, Image.pixels_x)
                .join(Image, Image.id == Blob.object_id).where(Blob.role == "superpixels"))}


def forget(session, version: DocumentVersion) -> None:
    """Make the next sync fetch the object of a bad document version again."""
    if version.kind == "image":
        session.execute(update(Image).where(Image.id == version.object_id)
                        .values(doc_sha256=""))
    elif version.kind == "study":
        session.execute(update(Study).where(Study.id == version.object_id)
                        .values(doc_sha256=""))
    elif version.kind == "segmentation":
        image_id = session.scalar(select(Segmentation.image_id)
                                  .where(Segmentation.id == version.object_id))
        session.execute(delete(Listing).where(Listing.key == f"segmentation:{image_id}"))
    elif version.kind in ("annotation", "markup"):
        session.execute(delete(Listing).where(Listing.key.like("annotation:%")))


def freshness(conn) -> dict[str, dict]:
    """``{"segmentation listings": {"images", "checked", "never", "oldest"}}``: of the
    current images, how many had their segmentation list checked, and the oldest check."""
    key = func.substr(Listing.key, len("segmentation:") + 1)
    images = conn.execute(select(func.count()).select_from(Image)
                          .where(Image.removed.is_(False))).scalar()
    checked, oldest = conn.execute(
        select(func.count(), func.min(Listing.fetched_at)).select_from(Listing)
        .join(Image, Image.id == key)
        .where(Listing.key.like("segmentation:%"), Image.removed.is_(False))).one()
    return {"segmentation listings": {"images": images, "checked": checked,
                                      "never": images - checked, "oldest": oldest}}

