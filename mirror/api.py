"""The offline Python API: open a mirror and read images, superpixels, studies, annotations.

    >>> from mirror import Mirror
    >>> m = Mirror("~/isic")                  # read-only, offline
    >>> img = m.image("ISIC_0000000")         # by name or by _id
    >>> img.meta["clinical"]["diagnosis"]
    >>> img.data.shape                        # (H, W, 3) uint8, loaded on demand
    >>> sp = img.superpixels                  # {"idx", "map", "max", "shp"}, from spidx_<id>.npz
    >>> study = m.study("ISIC Annotation Study - All Features")
    >>> values = study.annotations[0].markups # {feature: per-superpixel values}

Nothing here touches the network; ``m.sync(...)`` is the one exception, on request.
Everything is read from the published index generation and the object store.
"""

from __future__ import annotations

import os
from collections.abc import Container, Iterator, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from mirror import query
from mirror.config import layout_for, load_config
from mirror.errors import MirrorError, MissingObjectError
from mirror.index import (
    Annotation,
    Blob,
    Dataset,
    Feature,
    Image,
    Segmentation,
    Study,
    StudyImage,
)
from mirror.index.database import current_generation, open_reader
from mirror.projection import current_number
from mirror.store import ObjectStore


class Mirror:
    """A mirror opened read-only. ``root`` defaults to ``$MIRROR_ROOT``."""

    def __init__(self, root: str | Path | None = None):
        root = root or os.environ.get("MIRROR_ROOT")
        if not root:
            raise MissingObjectError("no mirror root given; pass Mirror(root) or set MIRROR_ROOT")
        self.root = Path(root).expanduser()
        self.config = load_config(self.root)
        self.layout = layout_for(self.root, self.config)
        self.store = ObjectStore(self.layout)
        self.image_selection: ImageSelection | None = None
        self._projection: query.Projection | None = None
        self._open()

    def _open(self) -> None:
        """The index and the number of its projection: the generation's own, or (PostgreSQL)
        the newest the writer published."""
        url = self.config.index_url
        generation = None if url else current_generation(self.layout)
        self._engine = open_reader(self.layout, url, generation)
        self._projection_number = current_number(self.layout.index_dir) if url else generation

    @property
    def projection(self) -> query.Projection:
        """The Parquet projection of the index this mirror was opened on (opened once)."""
        if self._projection is None:
            self._projection = query.open_projection(self.layout.index_dir,
                                                     self._projection_number)
        return self._projection

    def __repr__(self) -> str:
        return f"Mirror({str(self.root)!r})"

    def close(self) -> None:
        self._engine.dispose()
        if self._projection is not None:
            self._projection.close()
            self._projection = None

    def __enter__(self) -> Mirror:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def sync(self, url: str | None = None, **options: Any):
        """Run the sync engine (the only call that uses the network), then reopen the index."""
        from mirror.sync import SyncOptions, sync

        summary = sync(self.root, url, SyncOptions(**options))
        self.close()
        self._open()
        return summary

    # -- queries ---------------------------------------------------------------------------

    def _one(self, statement):
        with self._engine.connect() as conn:
            return conn.execute(statement).first()

    def _all(self, statement) -> list:
        with self._engine.connect() as conn:
            return conn.execute(statement).all()

    def _rows(self, statement) -> list:
        """ORM objects (detached, fully loaded) for a ``select(Model)``."""
        with Session(self._engine) as session:
            return list(session.scalars(statement))

    def _find(self, model, key: str, what: str):
        """The row of ``model`` whose id or name is ``key``, or a clear error."""
        rows = self._rows(select(model).where((model.id == key) | (model.name == key)).limit(1))
        if not rows:
            raise MissingObjectError(
                f"no {what} {key!r} in the mirror at {self.root}; check the name, or run "
                f"'mirror sync --root {self.root}' to fetch it")
        return rows[0]

    def image(self, key: str) -> MirrorImage:
        """The image named ``key`` (``ISIC_0000000``) or with ``_id`` ``key``."""
        return MirrorImage(self, self._find(Image, key, "image"))

    def images(self, include_removed: bool = False) -> list[str]:
        """Names of every image in the mirror, sorted."""
        query = select(Image.name).order_by(Image.name)
        if not include_removed:
            query = query.where(Image.removed.is_(False))
        return [r[0] for r in self._all(query)]

    def select_images(self, criteria: Any = None, sub_select: bool = False,
                      dataset: str | None = None, study: str | None = None,
                      limit: int | None = None) -> ImageSelection:
        """Images whose documents meet ``criteria``, selected by DuckDB over the projection
        of the index (see :mod:`mirror.query`).

        ``criteria`` is ``[field, op, value]`` or a list of them (all must hold), e.g.
        ``[["meta.clinical.diagnosis", "==", "melanoma"], ["dataset.name", "ni", "HAM"]]``.
        With ``sub_select=True`` the previous selection (kept as ``m.image_selection``) is
        refined. The result is also stored as ``m.image_selection``.
        """
        items = query.criteria(criteria)
        previous = self.image_selection if sub_select else None
        if previous is not None:
            items = previous.criteria + items
            dataset, study = dataset or previous.dataset, study or previous.study
        ids = query.select_ids(self.projection, items, dataset=dataset, study=study, limit=limit)
        self.image_selection = ImageSelection(self, items, ids, dataset, study)
        return self.image_selection

    def select(self, kind: str, criteria: Any = None, limit: int | None = None) -> list[str]:
        """The sorted ``_id`` of the current objects of ``kind`` (``images``,
        ``segmentations``, ``studies``, ``datasets``, ``annotations``) whose documents meet
        ``criteria``, as in :meth:`select_images`."""
        return query.select_ids(self.projection, criteria, limit=limit, kind=kind)

    def sql(self, statement: str) -> tuple[list[str], list[tuple]]:
        """The header and rows of one read-only SQL statement over the projection's tables
        (``images``, ``segmentations``, ...; see ``mirror sql``)."""
        return query.run_sql(self.projection, statement)

    def images_frame(self, criteria: Any = None, columns: list[str] | None = None, **scope: Any):
        """A pandas DataFrame, one row per selected image (needs ``pip install mirror[pandas]``)."""
        try:
            import pandas
        except ImportError:
            raise MirrorError("images_frame needs pandas: pip install 'mirror[pandas]'") from None
        from mirror.export import metadata_table

        selection = self.select_images(criteria, **scope)
        header, rows = metadata_table(self, selection, columns)
        return pandas.DataFrame(list(rows), columns=header)

    def dataset(self, key: str) -> MirrorDataset:
        """The dataset named ``key`` or with ``_id`` ``key``."""
        return MirrorDataset(self, self._find(Dataset, key, "dataset"))

    def study(self, key: str) -> MirrorStudy:
        """The study named ``key`` or with ``_id`` ``key``."""
        return MirrorStudy(self, self._find(Study, key, "study"))

    def studies(self) -> list[str]:
        return [r[0] for r in self._all(select(Study.name).order_by(Study.name))]

    def _blob_relpath(self, object_id: str, role: str) -> str | None:
        row = self._one(select(Blob.path).where(Blob.object_id == object_id, Blob.role == role))
        return None if row is None else row[0]

    def _blob(self, object_id: str, role: str, what: str) -> Path:
        relpath = self._blob_relpath(object_id, role)
        if relpath is None:
            raise MissingObjectError(
                f"the {what} of {object_id} is not mirrored; run 'mirror sync --root "
                f"{self.root}' with --blobs including it")
        return self.store.path(relpath)

    def _blob_json(self, object_id: str, role: str) -> dict | None:
        relpath = self._blob_relpath(object_id, role)
        return None if relpath is None else self.store.read_json(relpath)


class ImageSelection:
    """The images a selection found, in ``_id`` order; names and images are read on demand.

    :attr:`ids` is the sorted list of their ``_id`` strings."""

    def __init__(self, mirror: Mirror, criteria: list, ids: Sequence[str],
                 dataset: str | None = None, study: str | None = None):
        self.mirror, self.criteria, self.dataset, self.study = mirror, criteria, dataset, study
        self.ids = ids

    @cached_property
    def names(self) -> list[str]:
        """The ISIC names, in the order of :attr:`ids`."""
        return self.mirror.projection.values("images", "name", self.ids)

    def __len__(self) -> int:
        return len(self.ids)

    def __iter__(self) -> Iterator[MirrorImage]:
        return (self.mirror.image(i) for i in self.ids)

    def __contains__(self, key: object) -> bool:
        return key in self._members or key in set(self.names)

    @cached_property
    def _members(self) -> Container[str]:
        return set(self.ids)

    def __repr__(self) -> str:
        shown = " and ".join(str(c) for c in self.criteria) or "all images"
        return f"<ImageSelection {len(self)} images: {shown}>"


class MirrorImage:
    """One image: metadata at once, pixels and superpixels on demand."""

    def __init__(self, mirror: Mirror, row: Image):
        self._mirror, self._row = mirror, row
        self.id: str = row.id
        self.name: str = row.name
        self.json: dict = row.doc
        self.meta: dict = row.doc.get("meta") or {}
        self.removed: bool = row.removed

    def __repr__(self) -> str:
        return f"<MirrorImage {self.name} {self.id}>"

    @property
    def shape(self) -> tuple[int, int]:
        return (self._row.pixels_y, self._row.pixels_x)

    @property
    def path(self) -> Path:
        """The original image file."""
        return self._mirror._blob(self.id, "image", "image file")

    @cached_property
    def data(self) -> np.ndarray:
        """RGB pixels, (H, W, 3) uint8."""
        return _read_rgb(self.path)

    def thumbnail(self) -> np.ndarray:
        return _read_rgb(self._mirror._blob(self.id, "thumbnail", "thumbnail"))

    @cached_property
    def superpixels(self) -> dict:
        """``{"idx", "map", "max", "shp"}``, isicarchive's semantics (see mirror.superpixels)."""
        from mirror.superpixels import load_superpixels

        png = self._mirror._blob(self.id, "superpixels", "superpixel image")
        try:
            npz = self._mirror._blob(self.id, "spidx", "decoded superpixels")
        except MissingObjectError:
            npz = None
        return load_superpixels(png, npz)

    @property
    def segmentations(self) -> list[MirrorSegmentation]:
        rows = self._mirror._rows(select(Segmentation).where(
            Segmentation.image_id == self.id, Segmentation.removed.is_(False))
            .order_by(Segmentation.created))
        return [MirrorSegmentation(self._mirror, row, self) for row in rows]


class MirrorSegmentation:
    def __init__(self, mirror: Mirror, row: Segmentation, image: MirrorImage):
        self._mirror, self.image = mirror, image
        self.id, self.json = row.id, row.doc
        self.failed: bool = row.failed
        self.created: str | None = row.created
        reviews = row.doc.get("reviews") or []
        self.skill = "expert" if any(r.get("skill") == "expert" for r in reviews) else "novice"

    def __repr__(self) -> str:
        return f"<MirrorSegmentation {self.id} of {self.image.name}>"

    def mask(self) -> np.ndarray:
        """The lesion mask as a boolean (H, W) array."""
        if self.failed:
            raise MissingObjectError(f"segmentation {self.id} failed in the archive: no mask")
        from PIL import Image as PILImage

        with PILImage.open(self._mirror._blob(self.id, "mask", "mask")) as img:
            return np.asarray(img.convert("L")) > 127


class MirrorDataset:
    def __init__(self, mirror: Mirror, row: Dataset):
        self._mirror = mirror
        self.id, self.name, self.json = row.id, row.name, row.doc
        self.license, self.attribution = row.license, row.attribution

    def __repr__(self) -> str:
        return f"<MirrorDataset {self.name!r} {self.license}>"

    @property
    def images(self) -> list[str]:
        return [r[0] for r in self._mirror._all(select(Image.name).where(
            Image.dataset_id == self.id, Image.removed.is_(False)).order_by(Image.name))]


class MirrorStudy:
    def __init__(self, mirror: Mirror, row: Study):
        self._mirror = mirror
        self.id, self.name, self.json = row.id, row.name, row.doc

    def __repr__(self) -> str:
        return f"<MirrorStudy {self.name!r}>"

    @property
    def images(self) -> list[str]:
        """Names of the study's images that are in the mirror."""
        return [r[0] for r in self._mirror._all(
            select(Image.name).join(StudyImage, StudyImage.image_id == Image.id)
            .where(StudyImage.study_id == self.id).order_by(Image.name))]

    @property
    def features(self) -> list[str]:
        return [r[0] for r in self._mirror._all(select(Feature.feature_id).where(
            Feature.study_id == self.id).order_by(Feature.feature_id))]

    @property
    def questions(self) -> list[dict]:
        return self.json.get("questions") or []

    @cached_property
    def annotations(self) -> list[MirrorAnnotation]:
        rows = self._mirror._rows(select(Annotation).where(
            Annotation.study_id == self.id, Annotation.removed.is_(False))
            .order_by(Annotation.id))
        return [MirrorAnnotation(self._mirror, row) for row in rows]

    def load_annotations(self) -> dict[str, dict[str, np.ndarray]]:
        """Every complete annotation's markups at once: ``{annotation id: {feature: values}}``.

        Read from the study's single markup file (like isicarchive's ``stann_`` cache) when
        the sync wrote one, else annotation by annotation.
        """
        bundle = self._mirror._blob_json(self.id, "markups")
        if bundle is not None:
            return {aid: {f: np.asarray(v, np.float32) for f, v in features.items()}
                    for aid, features in bundle["annotations"].items()}
        return {a.id: a.markups for a in self.annotations
                if a.state == "complete" and a.markups}

    def __iter__(self) -> Iterator[MirrorAnnotation]:
        return iter(self.annotations)


class MirrorAnnotation:
    def __init__(self, mirror: Mirror, row: Annotation):
        self._mirror = mirror
        self.id, self.json = row.id, row.doc
        self.study_id, self.image_id, self.user_id = row.study_id, row.image_id, row.user_id
        self.state, self.status = row.state, row.status
        self.responses: dict = row.doc.get("responses") or {}

    def __repr__(self) -> str:
        return f"<MirrorAnnotation {self.id} {self.state}>"

    @property
    def image(self) -> MirrorImage:
        return self._mirror.image(self.image_id)

    @cached_property
    def markups(self) -> dict[str, np.ndarray]:
        """Per feature present, the float value of each superpixel (0, 0.5 possible, 1 definite)."""
        doc = self._mirror._blob_json(self.id, "markups")
        if doc is None:
            present = [f for f, on in (self.json.get("markups") or {}).items() if on]
            if present:
                raise MissingObjectError(f"the markups of annotation {self.id} are not "
                                         "mirrored; run 'mirror sync' with annotations")
            return {}
        return {f: np.asarray(v, np.float32) for f, v in doc["markups"].items()}

    def feature_mask(self, feature: str, threshold: float = 0.5) -> np.ndarray:
        """Pixels of the image whose superpixel has ``value >= threshold`` for ``feature``."""
        if feature not in self.markups:
            known = ", ".join(sorted(self.markups)) or "none"
            raise MissingObjectError(f"annotation {self.id} has no markup for {feature!r} "
                                     f"(marked: {known})")
        idx = self.image.superpixels["idx"]
        values = self.markups[feature]
        if values.size != idx.max() + 1:
            raise MissingObjectError(f"markup of {feature!r} has {values.size} values but the "
                                     f"image has {idx.max() + 1} superpixels")
        return values[idx] >= threshold


def _read_rgb(path: Path) -> np.ndarray:
    from PIL import Image as PILImage

    with PILImage.open(path) as img:
        return np.asarray(img.convert("RGB"))
