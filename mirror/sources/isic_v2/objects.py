"""ISIC v2 objects of an opened mirror, reached as attributes of :class:`mirror.api.Mirror`:

    >>> m = Mirror("/data/isic")
    >>> img = m.image("ISIC_0000000")
    >>> img.metadata["diagnosis_1"], img.path          # offline: the index and the store
    >>> m.collection_images("HAM10000")                 # isic_ids, in the archive's order

Everything reads the published index and the store; nothing touches the network.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

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


class IsicV2Objects:
    """The accessors a v2 mirror adds to :class:`~mirror.api.Mirror`."""

    def __init__(self, mirror: Mirror):
        self._m = mirror

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
