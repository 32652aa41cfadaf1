"""TCIA in snapshots: what a snapshot pins, what its files are called, the tables it makes.

A snapshot of a TCIA mirror pins series (``--where`` over their ``getSeries`` rows, e.g.
``'Modality == CT'``) and every current instance of them with its DICOM file. Each pinned
series carries its collection, patient and study, so an export lays the files out as
``dicom/<Collection>/<PatientID>/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``
(names made safe by :func:`mirror.sources.tcia.exports.folder_name`), beside
``series.csv`` (every pinned row, with ``LicenseName``, ``LicenseURI`` and
``DataDescriptionURI``) and ``citations.txt`` (each collection's licences and DOI), all
made from the manifest and the pinned bytes alone. The collections of the pinned series
are pinned too, each with its ``LICENSE`` text as the zips carried it when the snapshot
was made (``licenses/<Collection>/LICENSE.txt``): a later licence text is a new version of
the file, and the pinned one stays in the store as long as the snapshot does.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from sqlalchemy import select

from mirror.index import ObjectRow
from mirror.snapshots.manifest import Snapshot, entry, files_of
from mirror.sources.tcia.exports import citations, folder_name, license_member, series_csv
from mirror.sources.tcia.hierarchy import collection_key
from mirror.sources.tcia.licenses import ROLE as LICENSE_ROLE
from mirror.sources.tcia.spec import UID

if TYPE_CHECKING:
    from mirror.snapshots.payload import Locator

CHUNK = 500


def build_options(snap: Snapshot) -> dict:
    """The sync options that fetch exactly the pinned series (their collections listed)."""
    series = snap.of_kind("series")
    collections = sorted({e.get("collection") for e in series if e.get("collection")})
    return {"what": frozenset({"series", "headers"}),
            "scope": {"collection": collections, "series": sorted(e["id"] for e in series)}}


def pinned_objects(conn, series_ids: list[str], roles: list[str]) -> list[dict]:
    """Entries of the series and their current instances (with files), sorted."""
    objects: list[dict] = []
    names: set[str] = set()
    for start in range(0, len(series_ids), CHUNK):
        chunk = series_ids[start:start + CHUNK]
        for uid, name, sha, doc in conn.execute(select(
                ObjectRow.id, ObjectRow.name, ObjectRow.doc_sha256, ObjectRow.doc).where(
                ObjectRow.kind == "series", ObjectRow.id.in_(chunk))):
            doc = json.loads(doc) if isinstance(doc, str) else doc
            pinned = entry(conn, "series", uid, sha, name, None, [])
            pinned.update(collection=doc.get("Collection"), patient_id=doc.get("PatientID"),
                          study_uid=doc.get("StudyInstanceUID"))
            objects.append(pinned)
            if isinstance(doc.get("Collection"), str):
                names.add(doc["Collection"])
        instances = conn.execute(select(ObjectRow.id, ObjectRow.doc_sha256,
                                        ObjectRow.parent_id).where(
            ObjectRow.kind == "instance", ObjectRow.parent_id.in_(chunk),
            ObjectRow.removed.is_(False))).all()
        files = files_of(conn, [r[0] for r in instances], roles) if roles else {}
        for sop, sha, parent in instances:
            pinned = entry(conn, "instance", sop, sha, None, None, files.get(sop, []))
            pinned["series_id"] = parent
            objects.append(pinned)
    objects += _collections(conn, sorted(names))
    return sorted(objects, key=lambda o: (o["kind"], o["id"]))


def _collections(conn, names: list[str]) -> list[dict]:
    """Entries of the pinned series' collections, each with its licence text file."""
    keys = [collection_key(n) for n in names]
    rows = conn.execute(select(ObjectRow.id, ObjectRow.name, ObjectRow.doc_sha256).where(
        ObjectRow.kind == "collection", ObjectRow.id.in_(keys))).all()
    files = files_of(conn, [r[0] for r in rows], [LICENSE_ROLE])
    return [entry(conn, "collection", cid, sha, name, None, files.get(cid, []))
            for cid, name, sha in rows]


def _uid(value, fallback: str) -> str:
    return value if isinstance(value, str) and UID.fullmatch(value) else fallback


def file_member_path(snap: Snapshot, entry: dict, file: dict) -> str:
    """``dicom/<Collection>/<PatientID>/<StudyUID>/<SeriesUID>/<SOPInstanceUID>.dcm``;
    a collection's licence text ``licenses/<Collection>/LICENSE.txt``."""
    if entry["kind"] == "collection":
        return license_member(entry.get("name") or entry["id"])
    series = snap.by_key.get(("series", entry.get("series_id")), {})
    parts = [folder_name(series.get("collection"), "unknown_collection"),
             folder_name(series.get("patient_id"), "unknown_patient"),
             _uid(series.get("study_uid"), "unknown_study"),
             _uid(entry.get("series_id"), "unknown_series")]
    return f"dicom/{'/'.join(parts)}/{_uid(entry['id'], 'unknown_instance')}{file['ext']}"


def generated_files(snap: Snapshot, locator: Locator) -> list[tuple[str, bytes]]:
    """``series.csv`` and ``citations.txt``, from the pinned series documents alone."""
    rows = [json.loads(locator.document_bytes("series", e["id"], e["document"]["sha256"]))
            for e in snap.of_kind("series")]
    texts = {e.get("name"): license_member(e.get("name") or e["id"])
             for e in snap.of_kind("collection") if e.get("files")}
    return [("series.csv", series_csv(rows)), ("citations.txt", citations(rows, texts))]
