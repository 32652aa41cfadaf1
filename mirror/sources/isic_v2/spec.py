"""What ISIC API v2 holds, declared for the engine (see :mod:`mirror.sources.base`).

Kinds: images (``ISIC_nnnnnnn``), collections (integer ids, stored as their decimal
string) lesions (``IL_nnnnnnn``) and one ``listing`` (``images``: the isic_ids of the last complete
listing, in the archive's publish order; ``collections``: the collection ids in the
listing's order), all in the generic ``objects`` table: the records
are stored as the archive sends them (signed URL queries stripped), and columns are
derived later. Ids are not hex, so they are sharded by the last hex digit of their hash.

Files: the full image (``image_<isic_id>.jpg``) and its 256-pixel thumbnail
(``thumb_<isic_id>.jpg``). The archive serves JPEG or, for greyscale uploads, PNG; a
Cloud-Optimised GeoTIFF (images over 100 Mpx) is not yet storable (the store does not
know ``.tif``) and fails visibly.
"""

from __future__ import annotations

import re

from mirror.sources.base import FileRole, KindSpec, SourceSpec, shard_by_hash
from mirror.sources.isic_v2.client import DEFAULT_BASE_URL

JPEG, PNG = b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n"
ISIC_ID = re.compile(r"ISIC_\d{7}")
COLLECTION_ID = re.compile(r"\d{1,10}")
LESION_ID = re.compile(r"IL_\d{7}")
LISTING_ID = re.compile(r"images|collections")


def _collection_id(doc: dict) -> str | None:
    value = doc.get("id")
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else None


KINDS = (
    KindSpec("image", "images", ISIC_ID, shard=shard_by_hash,
             id_of=lambda doc: doc.get("isic_id"), name_of=lambda doc: doc.get("isic_id"),
             id_field="isic_id", name_field="isic_id"),
    KindSpec("collection", "collections", COLLECTION_ID, shard=shard_by_hash,
             id_of=_collection_id, name_of=lambda doc: doc.get("name"), id_field="id"),
    KindSpec("lesion", "lesions", LESION_ID, shard=shard_by_hash,
             id_of=lambda doc: doc.get("id"), name_of=lambda doc: doc.get("id"), id_field="id",
             name_field="id"),
    # The order of the last complete images/ listing (publish order, which no record
    # carries): what isic-cli orders its metadata.csv by. Queries see only its length.
    # ``collections``: the ids of the collections/ listing in its order (newest first).
    KindSpec("listing", "listings", LISTING_ID, shard=shard_by_hash,
             id_of=lambda doc: doc.get("id"), name_of=lambda doc: doc.get("id"),
             projected=lambda doc: {"id": doc.get("id"),
                                    "images": len(doc.get("isic_ids") or [])}),
)

ROLES = (
    FileRole("image", "image", "full", (JPEG, PNG), whole=True, exts=(".jpg", ".png"),
             bytes_per_pixel=0.35),
    FileRole("thumbnail", "thumb", "thumbnail", (JPEG,), whole=True, exts=(".jpg",),
             bytes_per_pixel=0, fixed_bytes=12_000),
)

SPEC = SourceSpec(
    name="isic-v2",
    archive="isic",
    api="v2",
    title="ISIC Archive API v2",
    namespace="isic-v2",
    organization="International Skin Imaging Collaboration (ISIC Archive)",
    url_pattern=re.compile(r"/api/v2/?$"),
    kinds=KINDS,
    roles=ROLES,
    main_kind="image",
    groups=(("collections", "collections", "name", None),),
    parts=frozenset({"images", "collections", "lesions"}),
    file_options=frozenset({"full", "thumbnail"}),
    default_url=DEFAULT_BASE_URL,
    source="mirror.sources.isic_v2.source:IsicV2Source",
    sandbox="mirror.sources.isic_v2.sandbox.server:main",
)
