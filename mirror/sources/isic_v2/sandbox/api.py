"""The sandbox's ``/api/v2/`` backend: the synthetic :class:`Archive` behind the API shape.

Routes, parameters, cursor paging, JSON and error bodies live in
:mod:`mirror.sources.isic_v2.shape` (shared with ``mirror serve``); this module supplies
the rows and records a live archive would: hidden ``created`` times as cursor positions,
the nightly "Elasticsearch" copy behind ``search/size/``, ``facets/`` and some counts,
attributions frozen in the bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from mirror.sources.isic_v2.sandbox import blobs, dsl
from mirror.sources.isic_v2.sandbox.bucket import Bucket
from mirror.sources.isic_v2.sandbox.data import (
    ACQUISITION_ORDER,
    ANONYMOUS,
    CLINICAL_ORDER,
    IMAGE_TYPE_RANK,
    SANDBOX_USER,
    STAFF,
    STAFF_USER,
    USER,
    Archive,
    Collection,
    Image,
)
from mirror.sources.isic_v2.sandbox.http import Response
from mirror.sources.isic_v2.shape import (
    MAX_PAGE,
    Cursor,
    Ordering,
    Request,
    V2Api,
    attribution_counts,
    decode_cursor,
    encode_cursor,
    facets,
    paginate,
)

SANDBOX_TOKEN = "sandbox-token"  # noqa: S105 - the sandbox's logged-in user
STAFF_TOKEN = "sandbox-staff-token"  # noqa: S105 - sees everything
TOKENS = {SANDBOX_TOKEN: USER, STAFF_TOKEN: STAFF}


def parse_datetime(text: str) -> datetime:
    """Django's ``DateTimeField.to_python``: an ISO datetime, or a date (midnight), as UTC."""
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        value = datetime.fromisoformat(text.strip()[:10]) if len(text.strip()) == 10 else None
        if value is None:
            raise
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _created(row) -> datetime:
    return row.created


IMAGE_ORDER = Ordering(((_created, False, parse_datetime),), multi=True, sorted_ascending=True)
PINNED_ORDER = Ordering(((lambda r: r.pinned, True, int), (_created, False, parse_datetime)),
                        multi=True)
COLLECTION_ORDERS = {
    "collections": Ordering(((_created, True, parse_datetime),), multi=False),
    "collections:created": Ordering(((_created, False, parse_datetime),), multi=False),
    "collections:name": Ordering(((lambda c: c.name, False, str),), multi=False),
}
LESION_ORDER = Ordering(((lambda lesion: lesion[0], False, str),), multi=False)
ORDERS = {"images": IMAGE_ORDER, "pinned": PINNED_ORDER, "lesions": LESION_ORDER,
          **COLLECTION_ORDERS}


class SandboxBackend:
    """A :class:`~mirror.sources.isic_v2.shape.V2Backend` over the synthetic archive."""

    def __init__(self, archive: Archive, bucket: Bucket, es_counts: bool = False):
        self.archive = archive
        self.bucket = bucket
        self.es_counts = es_counts  # image count from the nightly index (before 2026-07)
        self.hostile = None  # set by the server in hostile mode

    @staticmethod
    def ordering(listing: str) -> Ordering:
        return ORDERS[listing]

    # -- records -------------------------------------------------------------------------------

    def image_record(self, image: Image) -> dict:
        full_url, thumb_url = self.bucket.urls(image)
        full_size, thumb_size = blobs.recorded_sizes(image)
        width, height = image.size
        meta = image.metadata
        acquisition = {"pixels_x": width, "pixels_y": height}
        acquisition.update((k, meta[k]) for k in ACQUISITION_ORDER[2:] if k in meta)
        record = {
            "isic_id": image.isic_id,
            "copyright_license": image.license,
            "attribution": self.archive.attribution(image),
            "files": {"full": {"url": full_url, "size": full_size},
                      "thumbnail_256": {"url": thumb_url, "size": thumb_size}},
            "metadata": {"acquisition": acquisition,
                         "clinical": {k: meta[k] for k in CLINICAL_ORDER if k in meta}},
            "public": image.public,
        }
        return self.hostile.record(record) if self.hostile else record

    @staticmethod
    def collection_record(collection: Collection) -> dict:
        return {"doi": collection.doi,
                "doi_url": f"https://doi.org/{collection.doi}" if collection.doi else None,
                "id": collection.id, "name": collection.name,
                "description": collection.description, "public": collection.public,
                "pinned": collection.pinned, "locked": collection.locked}

    def lesion_record(self, lesion: tuple[str, list[Image]]) -> dict:
        lesion_id, images = lesion

        def rank(image: Image) -> tuple:
            meta = image.metadata
            day = meta.get("acquisition_day")
            return (not meta.get("concomitant_biopsy", False), day is None, day or 0,
                    IMAGE_TYPE_RANK.get(meta.get("image_type"), 9), image.n)

        index = min(images, key=rank)
        levels = [index.metadata[f"diagnosis_{n}"] for n in range(1, 6)
                  if f"diagnosis_{n}" in index.metadata]
        days = {i.metadata.get("acquisition_day") for i in images} - {None}
        return {"images": [self.image_record(i) for i in images], "images_count": len(images),
                "longitudinally_monitored": len(days) > 1, "index_image_id": index.isic_id,
                "outcome_diagnosis": ":".join(levels) if levels else None,
                "outcome_diagnosis_1": index.metadata.get("diagnosis_1"), "id": lesion_id}

    # -- images --------------------------------------------------------------------------------

    def images(self, who: str, pin_sort: bool, collections: list[int] | None) -> list[Image]:
        rows = self.archive.visible_images(who)
        if pin_sort:
            rows = PINNED_ORDER.sort(rows)
        if collections is not None:
            members = self._members(collections, who)
            rows = [r for r in rows if r.n in members]
        return rows

    @staticmethod
    def search_record(image: Image) -> dict:
        return image.search_record()

    def image(self, isic_id: str, who: str) -> Image | None:
        return self.archive.image(isic_id, who)

    def _members(self, ids: list[int], who: str) -> set[int]:
        """Images in any of the collections ``who`` may see among ``ids``."""
        members: set[int] = set()
        for cid in ids:
            collection = self.archive.collections.get(cid)
            if collection is not None and self.archive.can_see_collection(collection, who):
                members |= collection.images
        return members

    def image_count(self, who: str, tree, collections: list[int] | None
                    ) -> Callable[[], int] | None:
        if not self.es_counts:
            return None
        return lambda: len(self.indexed(who, tree, collections))

    def indexed(self, who: str, tree, collections: list[int] | None) -> list:
        """The nightly index's documents ``who`` may see that match (it never drops a
        deleted image)."""
        visible = None
        if collections is not None:
            visible = {c for c in collections if c in self.archive.collections and
                       self.archive.can_see_collection(self.archive.collections[c], who)}
        with self.archive.lock:
            docs = list(self.archive.es.values())
        return [d for d in docs if self.archive.es_visible(d, who)
                and (visible is None or d.collections & visible)
                and dsl.matches(tree, d.record, mode="es")]

    def all_indexed(self) -> list:
        return list(self.archive.es.values())

    # -- collections ---------------------------------------------------------------------------

    def collections(self, who: str) -> list[Collection]:
        with self.archive.lock:
            return [c for c in self.archive.collections.values()
                    if self.archive.can_see_collection(c, who)]

    def collection(self, collection_id: int, who: str) -> Collection | None:
        collection = self.archive.collections.get(collection_id)
        if collection is None or not self.archive.can_see_collection(collection, who):
            return None
        return collection

    def attribution(self, collection: Collection) -> list[dict]:
        """Counted by the attribution frozen in each image's bytes, not the live one."""
        with self.archive.lock:
            images = [self.archive.images.get(n) for n in collection.images]
        return attribution_counts([(i.license, i.frozen_attribution) for i in images if i])

    # -- lesions, users, stats -------------------------------------------------------------------

    def lesions(self, who: str) -> list[tuple[str, list[Image]]]:
        return list(self.archive.lesions(who).items())

    def lesion(self, lesion_id: str, who: str) -> tuple[str, list[Image]] | None:
        images = self.archive.lesions(who).get(lesion_id)
        return None if images is None else (lesion_id, images)

    def lesion_count(self, who: str) -> int:
        return self.archive.es_lesions[who]

    @staticmethod
    def user(who: str) -> dict:
        return STAFF_USER if who == STAFF else SANDBOX_USER

    def stats(self) -> dict:
        return self.archive.stats()


class SandboxAPI(V2Api):
    """The v2 shape over the sandbox's archive (``hostile``: the server's hostile mode)."""

    def __init__(self, archive: Archive, bucket: Bucket, es_counts: bool = False):
        super().__init__(SandboxBackend(archive, bucket, es_counts))
        self.archive, self.bucket = archive, bucket

    @property
    def hostile(self):
        return self.backend.hostile

    @hostile.setter
    def hostile(self, value) -> None:
        self.backend.hostile = value
        self.page_hook = value.page if value else None

    def image_out(self, image: Image) -> dict:
        return self.backend.image_record(image)


__all__ = ["ANONYMOUS", "MAX_PAGE", "SANDBOX_TOKEN", "STAFF_TOKEN", "TOKENS", "Cursor",
           "Request", "Response", "SandboxAPI", "SandboxBackend", "decode_cursor",
           "encode_cursor", "facets", "paginate"]
