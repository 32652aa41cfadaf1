"""Fill sandbox buckets with synthetic DICOM at IDC's real keys, and write the matching catalog.

For each chosen collection every catalog series is kept: its SeriesInstanceUID,
StudyInstanceUID, PatientID, ``crdc_series_uuid`` and ``aws_bucket`` are the real ones, so
objects sit at the real keys ``<aws_bucket>/<crdc_series_uuid>/<instance uuid>.dcm``. The
instances are synthetic (:func:`mirror.sources.dicom.make_instance`, a kilobytes-sized
template with the identity rewritten: study and series UIDs from the row, a SOP UID and an
instance uuid derived per instance), at most ``max_instances`` per series.

Because the bytes are synthetic, the sandbox writes its own catalog next to the buckets:
the same rows with ``instanceCount`` and ``series_size_MB`` (10^6 bytes, as IDC counts)
made true for what was stored, stamped ``<package>+sandbox``. A client tested against the
sandbox reads that catalog, exactly as it reads idc-index-data against AWS.

Hostile modes (:data:`HOSTILE`) break one series each, chosen deterministically, and are
recorded in :attr:`Filled.hostile` so tests know which series to expect refused.
"""

from __future__ import annotations

import difflib
import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from mirror.errors import ScopeError
from mirror.sources.dicom import is_valid_uid, make_instance, uid_for
from mirror.sources.idc.catalog import Catalog, quote, write_catalog

DEFAULT_COLLECTIONS = 4
"""How many collections a sandbox holds by default: the smallest by instance count (in v25:
htan_vanderbilt, cddp_eagle_1, htan_tnp_sardana, lung_phantom)."""
DEFAULT_MAX_INSTANCES = 8
"""Instances stored per series by default (the catalog is rewritten to agree)."""
INSTANCE_NAMESPACE = uuid.UUID("6d4f3c1e-2a7b-5e90-9c41-1d2b3a4c5e6f")
"""Namespace of the sandbox's instance uuids (uuid5 of series uuid and instance number)."""
HOSTILE = ("oversize", "not_dicom", "extra_object", "missing_object", "nested_key")
"""Bucket faults the filler can plant, one series each:
oversize: one object larger than the catalog's series_size_MB allows;
not_dicom: one object is an HTML error page, not DICOM;
extra_object: the bucket holds one instance more than the catalog's instanceCount;
missing_object: one instance the catalog (and the v1 manifest) promises is absent;
nested_key: one object sits in a sub-folder of the series prefix."""
NOT_DICOM = (b"<!DOCTYPE html><html><head><title>503 Service Unavailable</title></head>"
             b"<body><h1>503</h1><p>Try again later.</p></body></html>")
GCS_BUCKETS = {"idc-open-data": "idc-open-data", "idc-open-data-two": "idc-open-idc1",
               "idc-open-data-cr": "idc-open-cr"}
"""AWS bucket -> GCS bucket, as idc-index rewrites them (changes note §2.3)."""

_PROMISE_KEPT = ("oversize", "extra_object", "missing_object")  # catalog keeps the good size
_MODALITY = re.compile(r"^[A-Z0-9_ ]{1,16}$")


@dataclass(frozen=True)
class Instance:
    """One stored (or deliberately missing) object and the identity inside it."""

    collection_id: str
    patient_id: str
    study_uid: str
    series_uid: str
    sop_uid: str
    bucket: str
    series_uuid: str
    instance_uuid: str
    size: int

    @property
    def key(self) -> str:
        return f"{self.series_uuid}/{self.instance_uuid}.dcm"


@dataclass
class Filled:
    """What the filler stored: the catalog written, the instances, the planted faults."""

    catalog: Catalog
    collections: list[str]
    instances: list[Instance] = field(default_factory=list)
    hostile: dict[str, str] = field(default_factory=dict)  # mode -> SeriesInstanceUID
    buckets: list[str] = field(default_factory=list)


def choose_collections(catalog: Catalog, collections: Sequence[str] | None = None,
                       count: int = DEFAULT_COLLECTIONS) -> list[str]:
    """The named collections (checked against the catalog), or the ``count`` smallest."""
    known = catalog.collections()
    ids = [c["collection_id"] for c in known]
    if not collections:
        return ids[:count]
    for name in collections:
        if name not in ids:
            close = difflib.get_close_matches(name, ids, n=1, cutoff=0.0)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise ScopeError(f"unknown collection {name!r} in catalog "
                             f"{catalog.version.package}{hint}")
    return list(collections)


def fill(catalog: Catalog, writer, dest: str | Path, collections: Sequence[str],
         max_instances: int | None = DEFAULT_MAX_INSTANCES,
         hostile: Iterable[str] = ()) -> Filled:
    """Create the buckets, store the instances, write the sandbox catalog into ``dest``."""
    hostile = list(hostile)
    for mode in hostile:
        if mode not in HOSTILE:
            raise ScopeError(f"unknown hostile mode {mode!r}; use one of {', '.join(HOSTILE)}")
    table = _collection_rows(catalog, collections)
    rows = table.to_pylist()
    if not rows:
        raise ScopeError(f"collections {', '.join(collections)} hold no series in the catalog")
    targets = _hostile_targets(rows, hostile)
    buckets = sorted({r["aws_bucket"] for r in rows})
    existing = {b["Name"] for b in writer.list_buckets().get("Buckets", [])}
    for bucket in buckets:
        if bucket not in existing:
            writer.create_bucket(Bucket=bucket)
    filled = Filled(catalog, list(collections), buckets=buckets,
                    hostile={mode: rows[i]["SeriesInstanceUID"] for mode, i in targets.items()})
    counts, sizes = [], []
    by_row = {i: mode for mode, i in targets.items()}
    for index, row in enumerate(rows):
        n = row["instanceCount"] or 1
        if max_instances is not None:
            n = min(n, max_instances)
        mode = by_row.get(index)
        if mode in ("missing_object", "extra_object", "nested_key", "not_dicom") and n < 2:
            n = 2  # these faults need a second, good instance beside the broken one
        series = [_instance(row, i) for i in range(1, n + 1)]
        filled.instances.extend(inst for inst, _ in series)
        stored = _store(writer, series, mode, row)
        promised = sum(len(body) for _, body in series)
        counts.append(n)  # the catalog's promise: what a faithful bucket would hold
        sizes.append((promised if mode in _PROMISE_KEPT else stored) / 1e6)
    table = table.set_column(table.schema.get_field_index("instanceCount"), "instanceCount",
                             pa.array(counts, pa.int64()))
    table = table.set_column(table.schema.get_field_index("series_size_MB"), "series_size_MB",
                             pa.array(sizes, pa.float64()))
    filled.catalog = write_catalog(dest, _catalog_tables(catalog, table),
                                   build=f"{catalog.version.package}+sandbox")
    return filled


def _collection_rows(catalog: Catalog, collections: Sequence[str]) -> pa.Table:
    with catalog.connect() as conn:
        marks = ", ".join("?" * len(collections))
        return conn.sql(f"SELECT * FROM idc_index WHERE collection_id IN ({marks}) "
                        "ORDER BY collection_id, PatientID, StudyInstanceUID, SeriesInstanceUID",
                        params=list(collections)).to_arrow_table()


def _catalog_tables(catalog: Catalog, index: pa.Table) -> dict[str, pa.Table]:
    """The sandbox's tables: its ``idc_index``, and the other tables cut to its series."""
    tables = {"idc_index": index}
    series = pa.array(index.column("SeriesInstanceUID").to_pylist(), pa.string())
    ids = pa.array(sorted(set(index.column("collection_id").to_pylist())), pa.string())
    with catalog.connect() as conn:
        for name, key, values in (("prior_versions_index", "SeriesInstanceUID", series),
                                  ("collections_index", "collection_id", ids),
                                  ("version_metadata_index", None, None)):
            if name not in catalog.paths:
                continue
            table = conn.sql(f"SELECT * FROM {quote(name)}").to_arrow_table()
            if key is not None:
                table = table.filter(pc.is_in(table.column(key), value_set=values))
            tables[name] = table
    return tables


def _instance(row: dict, number: int, comment: str | None = None) -> tuple[Instance, bytes]:
    """Instance ``number`` of the series in ``row``; ``comment`` (ImageComments) varies it."""
    series_uuid = row["crdc_series_uuid"]
    study = row["StudyInstanceUID"]
    series = row["SeriesInstanceUID"]
    study = study if is_valid_uid(study) else uid_for("study", study)
    series_in_file = series if is_valid_uid(series) else uid_for("series", series)
    sop = uid_for("idc-sandbox", series, number)
    extra = {}
    if isinstance(row.get("Modality"), str) and _MODALITY.match(row["Modality"]):
        extra["Modality"] = row["Modality"]
    if comment:
        extra["ImageComments"] = comment
    body = make_instance(patient_id=row["PatientID"] or "UNKNOWN", study_uid=study,
                         series_uid=series_in_file, sop_uid=sop, instance_number=number,
                         extra=extra)
    inst = Instance(row["collection_id"], row["PatientID"], row["StudyInstanceUID"], series,
                    sop, row["aws_bucket"], series_uuid,
                    str(uuid.uuid5(INSTANCE_NAMESPACE, f"{series_uuid}/{number}")), len(body))
    return inst, body


def _clear(writer, bucket: str, prefix: str) -> None:
    """Delete whatever an earlier fill left under ``prefix``, so the bucket holds this fill."""
    pages = writer.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    for page in pages:
        keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
        if keys:
            writer.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})


def _store(writer, series: list[tuple[Instance, bytes]], mode: str | None, row: dict) -> int:
    """Put a series' objects, planting ``mode``'s fault in it; return the bytes stored."""
    _clear(writer, row["aws_bucket"], row["crdc_series_uuid"] + "/")
    stored = 0
    for position, (inst, body) in enumerate(series):
        key = inst.key
        if mode == "missing_object" and position == 0:
            continue
        if mode == "oversize" and position == 0:
            body = body + b"\x00" * 4096
        if mode == "not_dicom" and position == 0:
            body = NOT_DICOM
        if mode == "nested_key" and position == 0:
            key = f"{inst.series_uuid}/nested/{inst.instance_uuid}.dcm"
        writer.put_object(Bucket=inst.bucket, Key=key, Body=body)
        stored += len(body)
    if mode == "extra_object":
        inst, body = _instance(row, len(series) + 1)
        writer.put_object(Bucket=inst.bucket, Key=inst.key, Body=body)
        stored += len(body)
    return stored


def _hostile_targets(rows: list[dict], modes: list[str]) -> dict[str, int]:
    """One distinct series per mode (the last rows, so the first collection stays clean)."""
    if len(modes) > len(rows):
        raise ScopeError(f"{len(modes)} hostile modes need as many series; the chosen "
                         f"collections hold {len(rows)}: add collections")
    return {mode: len(rows) - 1 - i for i, mode in enumerate(modes)}


def gcs_url(inst: Instance) -> str:
    return f"gs://{GCS_BUCKETS.get(inst.bucket, inst.bucket)}/{inst.key}"
