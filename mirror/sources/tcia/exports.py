"""TCIA exports: the mirrored instances as a DICOM tree, the series table, the licences.

``mirror export files --root R DEST [--where 'Modality == CT'] [--link hard|sym|copy]``
(or :func:`export_dicom_tree`) lays out

    DEST/<Collection>/<PatientID>/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm

(the layout tcia_utils and most DICOM tools expect), made of hard links into the store
(a copy where the store is on another file system), plus ``series.csv`` (every selected
series' ``getSeries`` row, licence and DOI included) and ``citations.txt`` (per collection:
its licences, their URIs and the DOI to cite, from ``LicenseName``, ``LicenseURI`` and
``DataDescriptionURI``). Everything comes from the index and the store; nothing is fetched.

Collection names and PatientIDs come from the archive: :func:`folder_name` makes them safe
as one folder name (no separator, no ``..``, no control character); a name it had to alter
gets a short hash of the original, so two names never meet in one folder.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from mirror.errors import MirrorError
from mirror.export import csv_bytes, object_table, write_metadata
from mirror.files import place, remove_dead_temps, write_bytes_atomic
from mirror.index import Blob, ObjectRow
from mirror.sources.tcia.client import SERIES_COLUMNS
from mirror.sources.tcia.spec import UID
from mirror.store import UnsafeNameError

if TYPE_CHECKING:
    from mirror.api import Mirror

CHUNK = 500
_UNSAFE = re.compile(r"[\x00-\x1f\x7f/\\:*?\"<>|]")
MAX_NAME = 100


def folder_name(text: Any, fallback: str = "unknown") -> str:
    """``text`` as one safe folder name: unchanged when it already is one; else its unsafe
    characters become ``_`` and ``~`` plus 8 hex digits of its SHA-256 are added."""
    text = "" if text is None else str(text)
    clean = _UNSAFE.sub("_", text).strip(" .")[:MAX_NAME] or fallback
    if clean == text:
        return clean
    return f"{clean}~{hashlib.sha256(text.encode('utf-8', 'replace')).hexdigest()[:8]}"


def series_folder(doc: dict) -> Path:
    """``Collection/PatientID/StudyUID/SeriesUID`` of a getSeries row, every part safe."""
    for key in ("StudyInstanceUID", "SeriesInstanceUID"):
        if not UID.fullmatch(str(doc.get(key, ""))):
            raise UnsafeNameError(f"{key} {doc.get(key)!r} is not a DICOM UID")
    return Path(folder_name(doc.get("Collection"), "unknown_collection"),
                folder_name(doc.get("PatientID"), "unknown_patient"),
                doc["StudyInstanceUID"], doc["SeriesInstanceUID"])


def license_member(collection: str) -> str:
    """Where an export or snapshot puts a collection's LICENSE text."""
    return f"licenses/{folder_name(collection, 'unknown_collection')}/LICENSE.txt"


def citations(rows: Iterable[dict], license_texts: dict[str, str] | None = None) -> bytes:
    """Per collection: series count, licences (name and URI), the file holding the
    archive's LICENSE text (``license_texts``: collection -> path) and DOIs."""
    by_collection: dict[str, list[dict]] = {}
    for row in rows:
        by_collection.setdefault(row.get("Collection") or "", []).append(row)
    lines = ["Data from The Cancer Imaging Archive (TCIA). Each collection's licence and the "
             "DOI to cite, as its series list them:", ""]
    for name in sorted(by_collection):
        series = by_collection[name]
        licences = sorted({(r.get("LicenseName") or "not recorded", r.get("LicenseURI") or "")
                           for r in series})
        dois = sorted({r["DataDescriptionURI"] for r in series if r.get("DataDescriptionURI")})
        lines.append(f"{name or 'unnamed collection'}: {len(series)} series")
        lines += [f"  licence: {lic}" + (f" <{uri}>" if uri else "") for lic, uri in licences]
        if name in (license_texts or {}):
            lines.append(f"  licence text: {license_texts[name]}")
        lines.append(f"  cite: {', '.join(dois) or 'no DOI recorded'}")
        lines.append("")
    return "\n".join(lines).encode()


def series_csv(rows: Iterable[dict]) -> bytes:
    ordered = sorted(rows, key=lambda d: d.get("SeriesInstanceUID") or "")
    return b"".join(csv_bytes(list(SERIES_COLUMNS), ([d.get(c) for c in SERIES_COLUMNS]
                                                     for d in ordered)))


def _series(conn, ids: list[str] | None) -> list[tuple[str, dict]]:
    query = select(ObjectRow.id, ObjectRow.doc).where(ObjectRow.kind == "series",
                                                      ObjectRow.removed.is_(False))
    if ids is None:
        return list(conn.execute(query.order_by(ObjectRow.id)).all())
    out = []
    for start in range(0, len(ids), CHUNK):
        out += conn.execute(query.where(ObjectRow.id.in_(ids[start:start + CHUNK]))).all()
    return sorted(out)


def _instances(conn, series_ids: list[str]) -> tuple[dict[str, list[str]], dict[str, str]]:
    """Current instances per series and the store path of each one's DICOM file."""
    instances: dict[str, list[str]] = {}
    paths: dict[str, str] = {}
    for start in range(0, len(series_ids), CHUNK):
        chunk = series_ids[start:start + CHUNK]
        rows = conn.execute(select(ObjectRow.id, ObjectRow.parent_id).where(
            ObjectRow.kind == "instance", ObjectRow.parent_id.in_(chunk),
            ObjectRow.removed.is_(False))).all()
        for sop, parent in rows:
            instances.setdefault(parent, []).append(sop)
        sops = [sop for sop, _ in rows]
        for at in range(0, len(sops), CHUNK):
            paths.update(conn.execute(select(Blob.object_id, Blob.path).where(
                Blob.role == "dicom", Blob.object_id.in_(sops[at:at + CHUNK]))).all())
    return instances, paths


def export_dicom_tree(mirror: Mirror, dest: str | Path,
                      collections: Iterable[str] | None = None, link: str = "hard",
                      series_ids: Iterable[str] | None = None) -> dict:
    """Place every mirrored instance of the series (of ``collections`` or ``series_ids``,
    default all) under ``dest``; with ``series.csv`` and ``citations.txt``."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    remove_dead_temps(dest)
    wanted = set(collections) if collections is not None else None
    summary: dict[str, Any] = {"series": 0, "files": 0, "linked": {}, "missing": [],
                               "skipped_names": []}
    with mirror._engine.connect() as conn:
        series = [(uid, doc) for uid, doc in _series(
            conn, sorted(series_ids) if series_ids is not None else None)
            if wanted is None or doc.get("Collection") in wanted]
        instances, paths = _instances(conn, [uid for uid, _ in series])
    for uid, doc in series:
        try:
            folder = dest / series_folder(doc)
        except UnsafeNameError:
            summary["skipped_names"].append(uid)
            continue
        summary["series"] += 1
        for sop in sorted(instances.get(uid, [])):
            if sop not in paths or not UID.fullmatch(sop):
                summary["missing"].append(sop)
                continue
            done = place(mirror.store.path(paths[sop]), folder / f"{sop}.dcm", link)
            summary["linked"][done] = summary["linked"].get(done, 0) + 1
            summary["files"] += 1
    docs = [doc for _, doc in series]
    texts = _place_licenses(mirror, dest, {d.get("Collection") for d in docs}, link)
    write_bytes_atomic(dest / "series.csv", series_csv(docs))
    write_bytes_atomic(dest / "citations.txt", citations(docs, texts))
    return summary


def _place_licenses(mirror: Mirror, dest: Path, names: set, link: str) -> dict[str, str]:
    """Each collection's current LICENSE text beside the tree; ``{name: member path}``."""
    from mirror.sources.tcia.hierarchy import collection_key

    keys = {collection_key(n): n for n in names if isinstance(n, str) and n}
    with mirror._engine.connect() as conn:
        paths = dict(conn.execute(select(Blob.object_id, Blob.path).where(
            Blob.role == "license", Blob.object_id.in_(sorted(keys)))).all())
    placed = {}
    for cid, relpath in sorted(paths.items()):
        member = license_member(keys[cid])
        place(mirror.store.path(relpath), dest / member, link)
        placed[keys[cid]] = member
    return placed


# --- the engine's export hooks (mirror/export.py) ---------------------------------------

def export_files(mirror: Mirror, dest: Path, selection, blobs: list[str],
                 link: str = "hard") -> dict:
    """``mirror export files``: the DICOM tree of the selected series."""
    unknown = sorted(set(blobs) - {"dicom"})
    if unknown:
        raise MirrorError(f"a TCIA mirror has no {unknown[0]!r} files; use --blobs dicom")
    return export_dicom_tree(mirror, dest, link=link, series_ids=list(selection.ids))


def export_files_lines(summary: dict, dest: Path) -> list[str]:
    how = ", ".join(f"{n} {mode}" for mode, n in sorted(summary["linked"].items())) or "none"
    lines = [f"exported {summary['files']} instance(s) of {summary['series']} series to "
             f"{dest} as Collection/PatientID/StudyInstanceUID/SeriesInstanceUID/ ({how}), "
             "with series.csv and citations.txt"]
    if summary["missing"]:
        lines.append(f"not mirrored, so not exported: {len(summary['missing'])} instance(s) "
                     f"({', '.join(summary['missing'][:3])}...); run 'mirror sync'")
    if summary["skipped_names"]:
        lines.append(f"skipped {len(summary['skipped_names'])} series whose UIDs are not "
                     "valid DICOM UIDs")
    return lines


def metadata_table(mirror: Mirror, selection, columns: list[str] | None = None):
    """The series table of the selection (every getSeries field, by default)."""
    return object_table(mirror, "series", list(selection.ids),
                        columns or list(SERIES_COLUMNS))


def export_metadata(mirror: Mirror, out: Path, selection,
                    columns: list[str] | None = None) -> dict:
    """``out`` (``.csv`` or ``.parquet``) and ``OUT.attribution.txt`` (the licences)."""
    header, rows = metadata_table(mirror, selection, columns)
    with mirror._engine.connect() as conn:
        docs = [doc for _, doc in _series(conn, list(selection.ids))]
    attribution = write_metadata(out, header, rows, citations(docs))
    return {"images": len(selection), "columns": len(header), "attribution": str(attribution)}
