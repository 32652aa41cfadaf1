"""IDC exports: the series table with its licences and DOIs, citations, a DICOM tree.

``mirror export metadata OUT.csv --where 'collection_id == "lung_phantom"'`` writes one row
per selected series (its ``license_short_name`` and ``source_DOI`` among the columns) and
``OUT.attribution.txt`` beside it: per collection, its licences, DOIs and the citations IDC
gives for its sources, as a snapshot export's ``citations.txt`` says them
(:mod:`.snapshot`). ``mirror export files DEST`` places every mirrored instance of the
selected series at ``dicom/<collection_id>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm`` (the
snapshot export's layout) with ``series.csv`` and ``citations.txt``. Everything comes from
the index and the store; nothing is fetched. A name unsafe as a file name is not used: its
series is listed under ``skipped_names``.

Selections are of series (IDC's catalog is series-level): :class:`IdcObjects` gives the
mirror the ``select_images`` accessor the export commands call, over the ``series``
projection.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from mirror.errors import MirrorError
from mirror.export import attribution_path, csv_bytes, field_value, write_parquet
from mirror.files import place, remove_dead_temps, write_bytes_atomic
from mirror.index import Blob, ObjectRow
from mirror.sources.idc.snapshot import SERIES_COLUMNS, citations
from mirror.sources.idc.spec import CATALOG_ID, INSTANCE_UUID, UID
from mirror.store import UnsafeNameError, safe_name

if TYPE_CHECKING:
    from collections.abc import Iterator

    from mirror.api import Mirror

CHUNK = 500
ROLE = "instance"


@dataclass(frozen=True)
class SeriesSelection:
    """Selected series: their SeriesInstanceUIDs (sorted) and descriptions."""

    ids: list[str]
    names: list[str | None]

    def __len__(self) -> int:
        return len(self.ids)


class IdcObjects:
    """The accessors an IDC mirror adds to :class:`~mirror.api.Mirror`."""

    def __init__(self, mirror: Mirror):
        self._m = mirror

    def select_images(self, items: Any = None, dataset: str | None = None,
                      study: str | None = None, limit: int | None = None,
                      strict: bool = False) -> SeriesSelection:
        """The series the criteria select (what ``mirror export`` exports for IDC); a
        criterion that can never match is a ``CriterionWarning`` (``strict``: an error)."""
        if dataset or study:
            raise MirrorError("IDC has no datasets or studies to select by; use --where, "
                              "e.g. 'collection_id == \"lung_phantom\"'")
        from mirror.query import select_ids

        ids = select_ids(self._m.projection, items, None, None, limit, "series", strict)
        docs = _docs(self._m, "series", ids)
        return SeriesSelection(ids, [docs[i].get("SeriesDescription") for i in ids])


def _docs(mirror: Mirror, kind: str, ids: list[str]) -> dict[str, dict]:
    found: dict[str, dict] = {}
    with mirror._engine.connect() as conn:
        for start in range(0, len(ids), CHUNK):
            for object_id, doc in conn.execute(select(ObjectRow.id, ObjectRow.doc).where(
                    ObjectRow.kind == kind, ObjectRow.id.in_(ids[start:start + CHUNK]))):
                found[object_id] = json.loads(doc) if isinstance(doc, str) else doc
    return found


def metadata_table(mirror: Mirror, selection: SeriesSelection,
                   columns: list[str] | None = None) -> tuple[list[str], Iterator[list[Any]]]:
    """One row per selected series: ``columns`` (dotted fields of the catalog row), default
    the ids, counts, licence, DOI and bucket location."""
    columns = list(columns or SERIES_COLUMNS)
    docs = _docs(mirror, "series", selection.ids)
    return columns, ([field_value(docs[uid], c) for c in columns] for uid in selection.ids)


def attribution_text(mirror: Mirror, selection: SeriesSelection) -> bytes:
    """Per collection of the selection: licences, DOIs and citations (``citations.txt``)."""
    series = list(_docs(mirror, "series", selection.ids).values())
    wanted = sorted({s.get("collection_id") for s in series if s.get("collection_id")})
    collections = _docs(mirror, "collection", wanted)
    catalog = list(_docs(mirror, "catalog", [CATALOG_ID]).values())
    return citations(series, collections, catalog)


def export_metadata(mirror: Mirror, out: Path, selection: SeriesSelection,
                    columns: list[str] | None = None) -> dict:
    """Write ``out`` (``.csv`` or ``.parquet``) and ``OUT.attribution.txt`` beside it."""
    out = Path(out)
    if out.suffix not in (".csv", ".parquet"):
        raise MirrorError(f"cannot tell the format of {out.name}: name it .csv or .parquet")
    header, rows = metadata_table(mirror, selection, columns)
    if out.suffix == ".parquet":
        write_parquet(out, header, rows)
    else:
        write_bytes_atomic(out, csv_bytes(header, rows))
    attribution = attribution_path(out)
    write_bytes_atomic(attribution, attribution_text(mirror, selection))
    return {"images": len(selection), "unit": "series", "columns": len(header),
            "path": str(out), "attribution": str(attribution)}


def export_files(mirror: Mirror, dest: Path, selection: SeriesSelection,
                 blobs: list[str] | None = None, link: str = "hard") -> dict:
    """The selected series' instances as a DICOM tree, ``series.csv``, ``citations.txt``.
    ``blobs`` is accepted for the command's sake: IDC has one file per instance."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    remove_dead_temps(dest)
    summary: dict[str, Any] = {"images": len(selection), "unit": "series", "files": 0,
                               "linked": {}, "missing": [], "skipped_names": []}
    docs = _docs(mirror, "series", selection.ids)
    with mirror._engine.connect() as conn:
        for start in range(0, len(selection.ids), CHUNK):
            chunk = selection.ids[start:start + CHUNK]
            instances = conn.execute(select(ObjectRow.id, ObjectRow.name, ObjectRow.parent_id,
                                            Blob.path).outerjoin(
                Blob, (Blob.object_id == ObjectRow.id) & (Blob.role == ROLE)).where(
                ObjectRow.kind == "instance", ObjectRow.parent_id.in_(chunk),
                ObjectRow.removed.is_(False)).order_by(ObjectRow.id)).all()
            _place_instances(mirror, dest, docs, instances, link, summary)
            _count_missing(docs, chunk, instances, summary)
    header, rows = metadata_table(mirror, selection)
    write_bytes_atomic(dest / "series.csv", csv_bytes(header, rows))
    write_bytes_atomic(dest / "citations.txt", attribution_text(mirror, selection))
    return summary


def _place_instances(mirror: Mirror, dest: Path, docs: dict[str, dict], instances: list,
                     link: str, summary: dict) -> None:
    skipped = set(summary["skipped_names"])
    for uuid, sop, parent, relpath in instances:
        try:
            folder = _folder(docs[parent])
            if not UID.fullmatch(str(sop)) or not INSTANCE_UUID.fullmatch(uuid):
                raise UnsafeNameError(f"instance {uuid!r} names SOPInstanceUID {sop!r}")
        except UnsafeNameError:
            if parent not in skipped:
                skipped.add(parent)
                summary["skipped_names"].append(parent)
            continue
        if relpath is None:
            continue  # counted by _count_missing
        done = place(mirror.store.path(relpath), dest / folder / f"{sop}.dcm", link)
        summary["linked"][done] = summary["linked"].get(done, 0) + 1
        summary["files"] += 1


def _count_missing(docs: dict[str, dict], chunk: list[str], instances: list,
                   summary: dict) -> None:
    """Series of which fewer instance files are held than the catalog's ``instanceCount``
    (a catalog-only mirror holds none)."""
    held: dict[str, int] = {}
    for _, _, parent, relpath in instances:
        if relpath is not None:
            held[parent] = held.get(parent, 0) + 1
    for uid in chunk:
        count = docs[uid].get("instanceCount")
        if uid not in summary["skipped_names"] and isinstance(count, int) and \
                held.get(uid, 0) < count:
            summary["missing"].append(f"{uid} ({held.get(uid, 0)} of {count} instances)")


def _folder(doc: dict) -> Path:
    """``dicom/<collection_id>/<SeriesInstanceUID>``, both checked."""
    uid = str(doc.get("SeriesInstanceUID", ""))
    if not UID.fullmatch(uid):
        raise UnsafeNameError(f"SeriesInstanceUID {uid!r} is not a DICOM UID")
    return Path("dicom", safe_name(str(doc.get("collection_id") or "")), uid)


def export_files_lines(summary: dict, dest: Path) -> list[str]:
    """What ``mirror export files`` prints."""
    how = ", ".join(f"{n} {mode}" for mode, n in sorted(summary["linked"].items())) or "none"
    lines = [f"exported {summary['files']} file(s) of {summary['images']} series to {dest} "
             f"({how}), with series.csv and citations.txt"]
    if summary["missing"]:
        lines.append(f"not mirrored, so not exported: {len(summary['missing'])} series in "
                     f"part or whole ({summary['missing'][0]}, ...); run 'mirror sync --blobs "
                     "dicom' with the same scope")
    if summary["skipped_names"]:
        lines.append(f"skipped {len(summary['skipped_names'])} series whose names are unsafe "
                     "as file names")
    return lines
