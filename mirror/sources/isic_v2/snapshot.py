"""ISIC v2 in snapshots: what a snapshot pins, what its files are called in an export, and
the files made from the pinned records.

A snapshot pins the selected image records with their files (``--blobs full``, and
``thumbnail`` if asked). Its export is isic-cli's layout (research note §9) beside the
generic members: ``ISIC_n.jpg`` (``ISIC_n_thumbnail.jpg``), ``metadata.csv``,
``attribution.txt`` and ``licenses/<L>.txt``, made from the pinned records alone, so every
image's ``copyright_license`` and ``attribution`` travel with it and the export reads as
an isic-cli download of the same images (rows by isic_id).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import TYPE_CHECKING

from sqlalchemy import select

from mirror.index import ObjectRow
from mirror.snapshots.manifest import Snapshot, entry, files_of
from mirror.sources.isic_v2.isiccli import (
    attribution_bytes,
    license_text,
    metadata_csv_chunks,
    survey,
)
from mirror.sources.isic_v2.spec import ISIC_ID

if TYPE_CHECKING:
    from mirror.snapshots.payload import Locator

CHUNK = 500
FILE_SUFFIX = {"image": "", "thumbnail": "_thumbnail"}


def build_options(snap: Snapshot) -> dict:
    """The sync options that fetch exactly the pinned images again."""
    return {"what": frozenset({"images"}),
            "image_ids": frozenset(e["id"] for e in snap.of_kind("image"))}


def pinned_objects(conn, image_ids: list[str], roles: list[str]) -> list[dict]:
    """Manifest entries of the images (current versions, with their files), by id."""
    objects: list[dict] = []
    for start in range(0, len(image_ids), CHUNK):
        chunk = image_ids[start:start + CHUNK]
        files = files_of(conn, chunk, roles) if roles else {}
        for isic_id, name, sha in conn.execute(select(
                ObjectRow.id, ObjectRow.name, ObjectRow.doc_sha256).where(
                ObjectRow.kind == "image", ObjectRow.id.in_(chunk),
                ObjectRow.removed.is_(False))):
            objects.append(entry(conn, "image", isic_id, sha, name, None,
                                 files.get(isic_id, [])))
    return sorted(objects, key=lambda o: (o["kind"], o["id"]))


def file_member_path(snap: Snapshot, entry: dict, file: dict) -> str:
    """``ISIC_n<suffix><ext>`` at the top, as isic-cli names a download; a manifest from
    elsewhere whose id is not an isic_id cannot name a file outside the export."""
    isic_id = entry["id"] if ISIC_ID.fullmatch(str(entry["id"])) else "unsafe_id"
    ext = file["ext"] if file.get("ext") in (".jpg", ".png") else ".bin"
    return f"{isic_id}{FILE_SUFFIX.get(file['role'], '_' + file['role'])}{ext}"


def generated_files(snap: Snapshot, locator: Locator) -> list[tuple[str, bytes]]:
    """isic-cli's ``metadata.csv``, ``attribution.txt`` and ``licenses/``, from the pinned
    records (read twice, never all held)."""
    images = sorted(snap.of_kind("image"), key=lambda e: e["id"])

    def docs() -> Iterator[dict]:
        for e in images:
            yield json.loads(locator.document_bytes("image", e["id"], e["document"]["sha256"]))

    found = survey(docs())
    made = [("metadata.csv", b"".join(metadata_csv_chunks(docs(), found.keys))),
            ("attribution.txt", attribution_bytes(found.attributions))]
    return made + [(f"licenses/{name}.txt", license_text(name))
                   for name in sorted(found.licenses)]
