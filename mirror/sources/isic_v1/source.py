"""The :class:`IsicV1Source`: the engine's seam for this archive (see the package docstring)."""

from __future__ import annotations

from typing import Any, ClassVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from mirror.errors import MirrorError
from mirror.index import Blob
from mirror.sources.base import DocumentRun, FileTask, SourceSpec
from mirror.sources.isic_v1.client import BLOB_KINDS, IsicClient
from mirror.sources.isic_v1.documents import DocumentSync, dataset_filter
from mirror.sources.isic_v1.models import Image, Segmentation, Study, StudyImage
from mirror.sources.isic_v1.spec import SPEC


class IsicV1Source(IsicClient):
    """The ISIC v1 client, plus the two things the engine asks of a source."""

    spec: ClassVar[SourceSpec] = SPEC
    objects: ClassVar[str] = "mirror.sources.isic_v1.objects:IsicV1Objects"  # Mirror's accessors
    snapshots: ClassVar[str] = "mirror.sources.isic_v1.snapshot"  # pinning, member names
    exports: ClassVar[str] = "mirror.sources.isic_v1.exports"  # metadata table, files
    maintenance: ClassVar[str] = "mirror.sources.isic_v1.maintenance"  # verify, repair
    served: ClassVar[str] = "mirror.sources.isic_v1.served"  # mirror serve's API face

    def sync_documents(self, run: DocumentRun, options: Any) -> set[str] | None:
        """Returns the image ids in scope for files (None = every image)."""
        docs = DocumentSync(self, run)
        what = options.what
        datasets = docs.sync_datasets() if {"datasets", "images"} & what else []
        docs.commit()
        study_images: set[str] | None = None
        if "studies" in what or options.study:
            studies = docs.sync_studies(options.study)
            if options.study:
                study_images = _study_image_ids(run.session, options.study)
            if "annotations" in what:
                docs.sync_annotations(studies, markups=True)
        restrict = study_images
        if options.image_ids is not None:
            restrict = set(options.image_ids) & (restrict if restrict is not None
                                                 else set(options.image_ids))
        scope = restrict
        if "images" in what:
            keep = dataset_filter(datasets, options.dataset)
            listed, complete = docs.sync_images(restrict, options.limit, keep)
            if complete and options.dataset is None:
                docs.remove_missing("image", listed)
            scope = _scope(run.session, listed, keep, options)
            docs.commit()
        if "segmentations" in what:
            full = bool(getattr(options, "full", False))
            docs.sync_segmentations(docs.images_needing_segmentations(scope, full=full))
        return scope

    def plan_files(self, session: Session, scope: set[str] | None,
                   options: frozenset[str]) -> list[FileTask]:
        """Every wanted file the index does not have yet, in a stable order."""
        have = {tuple(r) for r in session.execute(select(Blob.object_id, Blob.role))}
        tasks: list[FileTask] = []
        images = session.execute(select(Image.id, Image.name, Image.pixels_x, Image.pixels_y)
                                 .where(Image.removed.is_(False)).order_by(Image.id)).all()
        shape_of = {}
        for image_id, name, px, py in images:
            if scope is not None and image_id not in scope:
                continue
            shape_of[image_id] = (py, px) if px and py else None
            for option in ("full", "thumbnail", "superpixels"):
                role = BLOB_KINDS[option].role
                if option in options and (image_id, role) not in have:
                    tasks.append(self._task("image", image_id, option, name,
                                            shape_of[image_id]))
        if "masks" in options:
            segs = session.execute(select(Segmentation.id, Segmentation.image_id).where(
                Segmentation.removed.is_(False), Segmentation.failed.is_(False))
                .order_by(Segmentation.id)).all()
            tasks += [self._task("segmentation", sid, "masks", None, shape_of[iid])
                      for sid, iid in segs if iid in shape_of and (sid, "mask") not in have]
        return tasks

    def _task(self, kind: str, object_id: str, option: str, name: str | None,
              shape: tuple[int, int] | None) -> FileTask:
        blob = BLOB_KINDS[option]
        return FileTask(kind, object_id, blob.role, option, name=name,
                        url=self.blob_url(blob, object_id), shape=shape)


def _scope(session: Session, listed: set[str], keep, options: Any) -> set[str] | None:
    """Image ids whose files this run fetches: all, or the listed ones that were kept."""
    if (options.dataset is None and options.limit is None and options.study is None
            and options.image_ids is None):
        return None
    rows = session.execute(select(Image.id, Image.dataset_id)).all()
    return {i for i, d in rows if i in listed and keep({"dataset": {"_id": d}})}


def _study_image_ids(session: Session, study: str) -> set[str]:
    row = session.execute(select(Study.id).where(
        (Study.name == study) | (Study.id == study))).scalar()
    if row is None:
        names = ", ".join(sorted(session.scalars(select(Study.name)))) or "none"
        raise MirrorError(f"no study named {study!r}; the mirror knows: {names}")
    return set(session.scalars(select(StudyImage.image_id).where(
        StudyImage.study_id == row)))


__all__ = ["SPEC", "IsicV1Source"]
