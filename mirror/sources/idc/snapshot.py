"""IDC in snapshots: what a snapshot pins, what its files are called, the tables it makes.

A snapshot of an IDC mirror pins series (``--where`` over their catalog rows), every current
instance of them with its DICOM file, their collections and the ``catalog`` document, so
each manifest names the idc-index-data version it came from. An export holds
``dicom/<collection_id>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``, ``series.csv`` (one row
per series with its ``license_short_name`` and ``source_DOI``) and ``citations.txt`` (per
collection: licences, DOIs and the citations IDC gives for its sources), all made from the
manifest and the pinned bytes alone. The manifest says the same itself: each series entry
carries its ``license_short_name`` and ``source_DOI``, each collection entry a
``citations`` record (licences, DOIs, its sources' citations), so a manifest read without
the mirror still says what to cite.
"""

from __future__ import annotations

import csv
import io
import json
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from mirror.export import cell
from mirror.index import ObjectRow
from mirror.snapshots.manifest import Snapshot, entry, files_of
from mirror.sources.idc.spec import CATALOG_ID
from mirror.store import UnsafeNameError, safe_name

if TYPE_CHECKING:
    from mirror.snapshots.payload import Locator

SERIES_COLUMNS = ("SeriesInstanceUID", "collection_id", "PatientID", "StudyInstanceUID",
                  "Modality", "SeriesDescription", "instanceCount", "license_short_name",
                  "source_DOI", "crdc_series_uuid", "aws_bucket")
CHUNK = 500


def build_options(snap: Snapshot) -> dict:
    """The sync options that fetch exactly the pinned series (from the same catalog)."""
    return {"what": frozenset({"series"}),
            "scope": {"series": sorted(e["id"] for e in snap.of_kind("series"))}}


def pinned_objects(conn, series_ids: list[str], roles: list[str]) -> list[dict]:
    """Entries of the series, their current instances (with files), collections and the
    catalog document, sorted by kind and id."""
    objects: list[dict] = []
    collections: set[str] = set()
    for start in range(0, len(series_ids), CHUNK):
        chunk = series_ids[start:start + CHUNK]
        for uid, name, sha, parent, doc in conn.execute(select(
                ObjectRow.id, ObjectRow.name, ObjectRow.doc_sha256, ObjectRow.parent_id,
                ObjectRow.doc).where(ObjectRow.kind == "series", ObjectRow.id.in_(chunk))):
            pinned = entry(conn, "series", uid, sha, name, None, [])
            doc = _loaded(doc)
            pinned.update(collection_id=parent, license_short_name=doc.get(
                "license_short_name"), source_DOI=doc.get("source_DOI"))
            objects.append(pinned)
            collections.add(parent)
        instances = conn.execute(select(ObjectRow.id, ObjectRow.name, ObjectRow.doc_sha256,
                                        ObjectRow.parent_id).where(
            ObjectRow.kind == "instance", ObjectRow.parent_id.in_(chunk),
            ObjectRow.removed.is_(False))).all()
        files = files_of(conn, [r[0] for r in instances], roles) if roles else {}
        for uuid, sop, sha, parent in instances:
            pinned = entry(conn, "instance", uuid, sha, sop, None, files.get(uuid, []))
            pinned["series_id"] = parent
            objects.append(pinned)
    for kind, ids in (("collection", sorted(c for c in collections if c)),
                      ("catalog", [CATALOG_ID])):
        for object_id, name, sha, doc in conn.execute(select(
                ObjectRow.id, ObjectRow.name, ObjectRow.doc_sha256, ObjectRow.doc).where(
                ObjectRow.kind == kind, ObjectRow.id.in_(ids))):
            pinned = entry(conn, kind, object_id, sha, name, None, [])
            if kind == "collection":
                pinned["citations"] = collection_citations(_loaded(doc), objects, object_id)
            objects.append(pinned)
    return sorted(objects, key=lambda o: (o["kind"], o["id"]))


def _loaded(doc: Any) -> dict:
    doc = json.loads(doc) if isinstance(doc, str) else doc
    return doc if isinstance(doc, dict) else {}


def collection_citations(doc: dict, pinned: list[dict], collection_id: str) -> dict:
    """What a manifest says to cite for one collection: the licences and DOIs of its pinned
    series and the citation of each of its sources (``collections_index.sources``)."""
    series = [p for p in pinned if p["kind"] == "series"
              and p.get("collection_id") == collection_id]
    sources = []
    for source in doc.get("sources") or []:
        if isinstance(source, dict):
            licence = source.get("license")
            if isinstance(licence, dict):
                licence = licence.get("license_short_name")
            sources.append({"source_doi": source.get("source_doi"), "license": licence,
                            "source_type": source.get("source_type"),
                            "citation": " ".join(str(source.get("citation") or "").split())})
    return {"licenses": sorted({p.get("license_short_name") or "not recorded"
                                for p in series}),
            "source_DOIs": sorted({p["source_DOI"] for p in series if p.get("source_DOI")}),
            "sources": sources}


def _safe(text: str | None, fallback: str) -> str:
    try:
        return safe_name(text or "")
    except UnsafeNameError:
        return fallback


def file_member_path(snap: Snapshot, entry: dict, file: dict) -> str:
    """``dicom/<collection>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``."""
    series = snap.by_key.get(("series", entry.get("series_id")), {})
    collection = _safe(series.get("collection_id"), "unknown_collection")
    series_id = _safe(entry.get("series_id"), "unknown_series")
    return f"dicom/{collection}/{series_id}/{_safe(entry.get('name'), entry['id'])}{file['ext']}"


def generated_files(snap: Snapshot, locator: Locator) -> list[tuple[str, bytes]]:
    """``series.csv`` and ``citations.txt``, from the pinned documents alone."""
    def doc(e: dict) -> dict[str, Any]:
        return json.loads(locator.document_bytes(e["kind"], e["id"], e["document"]["sha256"]))

    series = [doc(e) for e in snap.of_kind("series")]
    collections = {e["id"]: doc(e) for e in snap.of_kind("collection")}
    catalog = [doc(e) for e in snap.of_kind("catalog")]
    return [("series.csv", series_csv(series)),
            ("citations.txt", citations(series, collections, catalog))]


def series_csv(series: list[dict]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(SERIES_COLUMNS)
    for row in sorted(series, key=lambda d: d.get("SeriesInstanceUID") or ""):
        writer.writerow([cell(row.get(c)) for c in SERIES_COLUMNS])
    return buffer.getvalue().encode()


def citations(series: list[dict], collections: dict[str, dict], catalog: list[dict]) -> bytes:
    """Per collection: series count, licences, DOIs, and the citations of its sources."""
    lines = []
    for doc in catalog:
        lines += [f"Catalog: idc-index-data {doc.get('package')} (IDC release "
                  f"{doc.get('release')}, build {doc.get('build')})", ""]
    by_collection: dict[str, list[dict]] = {}
    for row in series:
        by_collection.setdefault(row.get("collection_id") or "", []).append(row)
    for cid in sorted(by_collection):
        rows = by_collection[cid]
        info = collections.get(cid, {})
        licences = sorted({r.get("license_short_name") or "not recorded" for r in rows})
        dois = sorted({r.get("source_DOI") for r in rows if r.get("source_DOI")})
        lines.append(f"{info.get('collection_name') or cid} ({cid}): {len(rows)} series")
        lines.append(f"  licences: {', '.join(licences)}")
        lines.append(f"  DOIs: {', '.join(dois) or 'none recorded'}")
        for source in info.get("sources") or []:
            citation = " ".join(str(source.get("citation") or "").split())
            if citation:
                lines.append(f"  cite: {citation}")
        lines.append("")
    return ("\n".join(lines) + "\n").encode()
