"""ISIC v1 hooks for ``mirror verify`` and its repair.

``validation_tasks``: the files whose role has a validator (the superpixel PNG) with what
the validator needs (the image's size), so verify re-checks them as the sync did.
``forget``: what to undo in the index so that the next sync fetches a bad document again
(ISIC v1's change detection trusts ``updated`` and listing digests).
"""

from __future__ import annotations

from sqlalchemy import delete, select, update

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
        session.execute(update(Image).where(Image.id == version.object_id).values(updated=None))
    elif version.kind == "study":
        session.execute(update(Study).where(Study.id == version.object_id)
                        .values(doc_sha256=""))
    elif version.kind == "segmentation":
        image_id = session.scalar(select(Segmentation.image_id)
                                  .where(Segmentation.id == version.object_id))
        session.execute(delete(Listing).where(Listing.key == f"segmentation:{image_id}"))
    elif version.kind in ("annotation", "markup"):
        session.execute(delete(Listing).where(Listing.key.like("annotation:%")))
