"""ISIC v2 objects of an opened mirror, reached as attributes of :class:`mirror.api.Mirror`:

    >>> m = Mirror("/data/isic")
    >>> img = m.image("ISIC_0000000")
    >>> img.metadata["diagnosis_1"], img.path          # offline: the index and the store
    >>> m.collection_images("HAM10000")                 # isic_ids, in the archive's order
    >>> m.select_images([["metadata.clinical.diagnosis_1", "==", "Malignant"]])

Everything reads the published index and the store; nothing touches the network.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mirror import query
from mirror.errors import MirrorError

if TYPE_CHECKING:
    from mirror.api import Mirror


@dataclass(frozen=True)
class V2Image:
    """One mirrored image record; ``metadata`` merges ``acquisition`` and ``clinical``."""

    isic_id: str
    public: bool
    copyright_license: str
    attribution: str
    metadata: dict
    document: dict
    path: Path | None  # the full image file, when mirrored
    thumbnail: Path | None


class V2Selection:
    """The images a selection found, sorted by isic_id (which is also their name): what
    ``mirror export`` and ``mirror snapshot create`` take."""

    def __init__(self, mirror: Mirror, criteria: list, ids: list[str]):
        self.mirror, self.criteria, self.ids = mirror, criteria, ids
        self.names = ids  # an image's name is its isic_id
        self.dataset = self.study = None  # ISIC v1's scopes; v2 has none

    def __len__(self) -> int:
        return len(self.ids)

    def __iter__(self) -> Iterator[V2Image]:
        return (self.mirror.image(i) for i in self.ids)

    def __contains__(self, key: object) -> bool:
        return key in set(self.ids)

    def __repr__(self) -> str:
        shown = " and ".join(str(c) for c in self.criteria) or "all images"
        return f"<V2Selection {len(self)} images: {shown}>"


class IsicV2Objects:
    """The accessors a v2 mirror adds to :class:`~mirror.api.Mirror`."""

    def __init__(self, mirror: Mirror):
        self._m = mirror

    def select_images(self, criteria: Any = None, dataset: str | None = None,
                      study: str | None = None, limit: int | None = None,
                      strict: bool = False) -> V2Selection:
        """Current images whose records meet ``criteria`` (``[field, op, value]`` or a list
        of them, fields dotted as in the record: ``metadata.clinical.diagnosis_1``),
        selected by DuckDB over the projection (:mod:`mirror.query`), like ISIC v1's. A
        criterion that can never match is a ``CriterionWarning`` (``strict``: an error)."""
        if dataset or study:
            raise MirrorError("ISIC API v2 has no datasets or studies; select with --where, "
                              "e.g. 'metadata.clinical.diagnosis_1 == Malignant'")
        items = query.criteria(criteria)
        ids = query.select_ids(self._m.projection, items, limit=limit, kind="images",
                               strict=strict)
        return V2Selection(self._m, items, ids)

    def image(self, isic_id: str) -> V2Image:
        doc = self._m.document("image", isic_id)
        meta = doc.get("metadata") or {}
        flat = {**(meta.get("acquisition") or {}), **(meta.get("clinical") or {})}
        return V2Image(doc["isic_id"], doc.get("public") is True,
                       doc.get("copyright_license", ""), doc.get("attribution", ""), flat, doc,
                       self._path(doc["isic_id"], "image"),
                       self._path(doc["isic_id"], "thumbnail"))

    def _path(self, isic_id: str, role: str) -> Path | None:
        relpath = self._m._blob_relpath(isic_id, role)
        return None if relpath is None else self._m.store.path(relpath)

    def collection(self, key: str | int) -> dict:
        """A collection's record (by id or name), with its members as ``isic_ids``."""
        return self._m.document("collection", str(key))

    def collection_images(self, key: str | int) -> list[str]:
        return list(self.collection(key).get("isic_ids") or [])

    def lesion(self, lesion_id: str) -> dict:
        return self._m.document("lesion", lesion_id)
