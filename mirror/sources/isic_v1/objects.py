"""ISIC v1 objects offline: images, segmentations, datasets, studies, annotations.

:class:`IsicV1Objects` is what ``Mirror`` offers for an ISIC v1 mirror
(``m.image(...)``, ``m.select_images(...)``, ``m.study(...)``...); see
:mod:`mirror.api`. Everything is read from the published index and the store.
"""

from __future__ import annotations

from collections.abc import Container, Iterator, Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import select

from mirror import query
from mirror.errors import MirrorError, MissingObjectError
from mirror.sources.isic_v1.models import (
    Annotation,
    Dataset,
    Feature,
    Image,
    Segmentation,
    Study,
    StudyImage,
)

if TYPE_CHECKING:
    from mirror.api import Mirror


class IsicV1Objects:
    """The ISIC v1 accessors of a :class:`~mirror.api.Mirror` (found through it)."""

    def __init__(self, mirror: Mirror):
        self._mirror = mirror
        self.image_selection: ImageSelection | None = None

    def __getattr__(self, name: str):
        # the accessors below were methods of Mirror: they reach its helpers unchanged
        if name.startswith("_") and name not in ("_mirror",):
            return getattr(self._mirror, name)
        raise AttributeError(name)

    @property
    def root(self) -> Path:
        return self._mirror.root

    def image(self, key: str) -> MirrorImage:
        """The image named ``key`` (``ISIC_0000000``) or with ``_id`` ``key``."""
        return MirrorImage(self._mirror, self._find(Image, key, "image"))

    def images(self, include_removed: bool = False) -> list[str]:
        """Names of every image in the mirror, sorted."""
        query = select(Image.name).order_by(Image.name)
        if not include_removed:
            query = query.where(Image.removed.is_(False))
        return [r[0] for r in self._all(query)]

    def select_images(self, criteria: Any = None, sub_select: Any = False,
                      add_to_selection: bool = False, remove_from_selection: bool = False,
                      dataset: str | None = None, study: str | None = None,
                      limit: int | None = None, strict: bool = False) -> ImageSelection:
        """Images whose documents meet ``criteria``, selected by DuckDB over the projection
        of the index (see :mod:`mirror.query`).

        ``criteria`` is ``[field, op, value]`` or a list of them (all must hold), e.g.
        ``[["meta.clinical.diagnosis", "==", "melanoma"], ["dataset.name", "ni", "HAM"]]``.
        As in isicarchive's ``select_images``: ``sub_select=True`` refines the previous
        selection (kept as ``m.image_selection``; none yet: nothing is selected);
        ``sub_select`` a list (of ids or image documents) or a dict (keyed by id) selects
        among those images only; ``add_to_selection`` adds what is found to the previous
        selection, ``remove_from_selection`` removes it from it. The result is also stored
        as ``m.image_selection``. A criterion that can never match (a misspelt field, a
        number against a text field) is a ``CriterionWarning``; ``strict=True`` raises.
        """
        query.check_limit(limit)
        items = query.resolve(self._mirror.projection, "images", query.criteria(criteria),
                              strict)
        previous = self.image_selection
        if isinstance(sub_select, (list, tuple, set, frozenset, dict)):
            items = items + [query.criterion("_id", "in", _ids_of(sub_select))]
        elif sub_select:
            if previous is None:
                self.image_selection = ImageSelection(self._mirror, items, [], dataset, study)
                return self.image_selection
            items = previous.criteria + items
            dataset, study = dataset or previous.dataset, study or previous.study
            add_to_selection = False  # isicarchive: a refinement replaces the selection
        ids = query.select_ids(self._mirror.projection, items, dataset=dataset, study=study,
                               limit=limit)
        selection = ImageSelection(self._mirror, items, ids, dataset, study)
        if add_to_selection or remove_from_selection:
            selection = self._combined(previous, ids, add_to_selection)
        self.image_selection = selection
        return selection

    def _combined(self, previous: ImageSelection | None, found: Sequence[str],
                  add: bool) -> ImageSelection:
        """The previous selection with ``found`` added or removed, as an id criterion (so
        exports and snapshots can state it again)."""
        before = list(previous.ids) if previous is not None else []
        if add:
            ids = sorted(set(before).union(found))
        else:
            drop = set(found)
            ids = [i for i in before if i not in drop]
        return ImageSelection(self._mirror, [query.criterion("_id", "in", ids)], ids)

    def images_frame(self, criteria: Any = None, columns: list[str] | None = None, **scope: Any):
        """A pandas DataFrame, one row per selected image (needs ``pip install mirror[pandas]``)."""
        try:
            import pandas
        except ImportError:
            raise MirrorError("images_frame needs pandas: pip install 'mirror[pandas]'") from None
        from mirror.export import metadata_table

        selection = self.select_images(criteria, **scope)
        header, rows = metadata_table(self._mirror, selection, columns)
        return pandas.DataFrame(list(rows), columns=header)

    def dataset(self, key: str) -> MirrorDataset:
        """The dataset named ``key`` or with ``_id`` ``key``."""
        return MirrorDataset(self._mirror, self._find(Dataset, key, "dataset"))

    def study(self, key: str) -> MirrorStudy:
        """The study named ``key`` or with ``_id`` ``key``."""
        return MirrorStudy(self._mirror, self._find(Study, key, "study"))

    def studies(self) -> list[str]:
        return [r[0] for r in self._all(select(Study.name).order_by(Study.name))]


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
        shown = " and ".join(_short(c) for c in self.criteria) or "all images"
        return f"<ImageSelection {len(self)} images: {shown}>"


def _short(criterion: query.Criterion) -> str:
    """A criterion as text, a long list of values cut to its length."""
    if isinstance(criterion.value, list) and len(criterion.value) > 5:
        return f"{criterion.field} {criterion.op} [{len(criterion.value)} values]"
    return str(criterion)


def _ids_of(images: Any) -> list[str]:
    """The ids of isicarchive's ``sub_select``: a dict's keys, or a list's ids (strings, or
    image documents with an ``_id``)."""
    if isinstance(images, dict):
        images = list(images)
    ids = [item.get("_id") if isinstance(item, dict) else item for item in images]
    bad = [i for i in ids if not isinstance(i, str)]
    if bad:
        raise query.QueryError(f"sub_select holds {bad[0]!r}, not an image id; give a list "
                               "of ids or image documents, or a dict keyed by id")
    return sorted(set(ids))


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
        """``{"idx", "map", "max", "shp"}``, isicarchive's semantics (see ``superpixels``)."""
        from mirror.sources.isic_v1.superpixels import load_superpixels

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
        from mirror.sources.isic_v1.pixels import open_checked

        # the cap only: the sync checked the size against the metadata of its day
        with open_checked(self._mirror._blob(self.id, "mask", "mask"), None, "mask") as img:
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
    """RGB pixels, once the declared size is under the decode cap (see ``pixels``; the
    sync checked it against the image's metadata when the file arrived)."""
    from mirror.sources.isic_v1.pixels import open_checked

    with open_checked(path, None, "image") as img:
        return np.asarray(img.convert("RGB"))
