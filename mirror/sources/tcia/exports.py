"""TCIA exports: the mirrored instances as a DICOM tree, and the series table.

``<dest>/<Collection>/<PatientID>/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``
(the layout idc-index and most DICOM tools expect; research note ``tcia_idc.md`` §3.4), made
of hard links into the store (or symlinks, or copies), plus ``series.csv`` with every
series' ``getSeries`` row. Everything comes from the index and the store; nothing is
fetched. Collection names and PatientIDs come from the archive, so a name that is not safe
as a file name (``..``, ``/``, control characters) is not used: its series is listed under
``skipped_names`` and left out.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from mirror.export import csv_bytes
from mirror.files import place, remove_dead_temps, write_bytes_atomic
from mirror.index import Blob, ObjectRow
from mirror.sources.tcia.client import SERIES_COLUMNS
from mirror.sources.tcia.spec import UID
from mirror.store import UnsafeNameError, safe_name

if TYPE_CHECKING:
    from mirror.api import Mirror


def _series(conn, collections: set[str] | None) -> list[tuple[str, dict]]:
    rows = conn.execute(select(ObjectRow.id, ObjectRow.doc).where(
        ObjectRow.kind == "series", ObjectRow.removed.is_(False)).order_by(ObjectRow.id)).all()
    return [(uid, doc) for uid, doc in rows
            if collections is None or doc.get("Collection") in collections]


def _folder(doc: dict) -> Path:
    """``Collection/PatientID/StudyUID/SeriesUID``, every part checked."""
    for key in ("StudyInstanceUID", "SeriesInstanceUID"):
        if not UID.fullmatch(str(doc.get(key, ""))):
            raise UnsafeNameError(f"{key} {doc.get(key)!r} is not a DICOM UID")
    return Path(safe_name(str(doc.get("Collection", ""))), safe_name(str(doc.get("PatientID",
                                                                                   ""))),
                doc["StudyInstanceUID"], doc["SeriesInstanceUID"])


def export_dicom_tree(mirror: Mirror, dest: str | Path,
                      collections: Iterable[str] | None = None, link: str = "hard") -> dict:
    """Place every mirrored instance (of ``collections``, default all) under ``dest``."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    remove_dead_temps(dest)
    wanted = set(collections) if collections is not None else None
    summary: dict[str, Any] = {"series": 0, "files": 0, "linked": {}, "missing": [],
                               "skipped_names": []}
    with mirror._engine.connect() as conn:
        series = _series(conn, wanted)
        instances: dict[str, list[str]] = {}
        for sop, parent in conn.execute(select(ObjectRow.id, ObjectRow.parent_id).where(
                ObjectRow.kind == "instance", ObjectRow.removed.is_(False))):
            instances.setdefault(parent, []).append(sop)
        paths = dict(conn.execute(select(Blob.object_id, Blob.path).where(
            Blob.role == "dicom")).all())
    for uid, doc in series:
        try:
            folder = dest / _folder(doc)
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
    rows = ([doc.get(c) for c in SERIES_COLUMNS] for _, doc in series)
    write_bytes_atomic(dest / "series.csv", csv_bytes(list(SERIES_COLUMNS), rows))
    return summary
