"""Further sandbox data releases: each edit IDC makes between releases, applied to buckets
and catalog alike (changes note ``tcia_idc_changes.md`` §2.2, §3 "IDC sandbox").

:func:`next_release` writes catalog ``N+1`` beside catalog ``N`` and changes the buckets the
way IDC does:

* **revise**: a new ``crdc_series_uuid``; the unchanged instances are copied under the new
  prefix with their instance uuids, one instance is changed (new bytes, new uuid); the old
  prefix stays readable; ``series_revised_idc_version = N+1``; the old uuid gets a
  ``prior_versions_index`` row ending at ``N``.
* **remove**: the row leaves ``idc_index``, a prior row ends at ``N``, the objects stay.
* **move**: same uuid, another ``aws_bucket`` (objects copied there; the old ones stay); a
  prior row records the old bucket. (In v25 no current uuid is also in the prior table, since
  recorded moves there were GCS-side; the sandbox keeps the §2.2 rule instead.)
* **relicense**: ``license_short_name`` changes, nothing else (mutable metadata).
* **rename**: another ``collection_id`` with a new uuid, as IDC's v25 collection merges did.
* **add**: new series (cloned identities with fresh UIDs), ``init = revised = N+1``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import pyarrow as pa

from mirror.errors import ScopeError
from mirror.sources.dicom import uid_for
from mirror.sources.idc.catalog import Catalog, read_table, write_catalog
from mirror.sources.idc.sandbox.fill import GCS_BUCKETS, INSTANCE_NAMESPACE, _instance

PRIOR_COLUMNS = ("collection_id", "PatientID", "SeriesInstanceUID", "StudyInstanceUID",
                 "Modality", "gcs_bucket", "crdc_series_uuid", "series_size_MB",
                 "series_aws_url", "aws_bucket", "min_idc_version", "max_idc_version")


@dataclass
class Release:
    """The catalog a release wrote, and what it did to which series (kind -> uids)."""

    catalog: Catalog
    release: int
    edits: dict[str, list[str]] = field(default_factory=dict)


def next_release(catalog: Catalog, writer, folder, *, revise: Iterable[str] = (),
                 remove: Iterable[str] = (), move: Mapping[str, str] | None = None,
                 relicense: Mapping[str, str] | None = None,
                 rename: Mapping[str, str] | None = None, add: int = 0) -> Release:
    """Apply the edits to the buckets (through ``writer``) and write catalog N+1 in ``folder``."""
    move, relicense, rename = dict(move or {}), dict(relicense or {}), dict(rename or {})
    revise, remove = list(revise), list(remove)
    release = catalog.version.release + 1
    rows = {r["SeriesInstanceUID"]: r for r in read_table(catalog).to_pylist()}
    for uid in [*revise, *remove, *move, *relicense, *rename]:
        if uid not in rows:
            raise ScopeError(f"series {uid} is not in sandbox catalog {catalog.version.package}")
    prior = (read_table(catalog, "prior_versions_index").to_pylist()
             if "prior_versions_index" in catalog.paths else [])
    for uid in revise:
        prior.append(_prior(rows[uid], release))
        rows[uid] = _revised(writer, rows[uid], release)
    for uid, collection in rename.items():
        prior.append(_prior(rows[uid], release))
        rows[uid] = _revised(writer, dict(rows[uid], collection_id=collection), release)
    for uid in remove:
        prior.append(_prior(rows.pop(uid), release))
    for uid, bucket in move.items():
        prior.append(_prior(rows[uid], release))
        rows[uid] = _moved(writer, rows[uid], bucket)
    for uid, licence in relicense.items():
        rows[uid] = dict(rows[uid], license_short_name=licence)
    added = [_added(writer, template, release, n) for n, template in
             zip(range(add), list(rows.values()), strict=False)]
    for row in added:
        rows[row["SeriesInstanceUID"]] = row
    index = pa.Table.from_pylist(list(rows.values()), schema=read_table(catalog).schema)
    tables = {"idc_index": index}
    if "prior_versions_index" in catalog.paths:
        tables["prior_versions_index"] = pa.Table.from_pylist(
            prior, schema=read_table(catalog, "prior_versions_index").schema)
    for name in ("collections_index", "version_metadata_index"):
        if name in catalog.paths:
            tables[name] = read_table(catalog, name)
    if "version_metadata_index" in tables:
        versions = tables["version_metadata_index"].to_pylist()
        versions.append({"idc_version": release,
                         "version_timestamp": f"2099-01-{release % 28 + 1:02d}"})
        tables["version_metadata_index"] = pa.Table.from_pylist(
            versions, schema=tables["version_metadata_index"].schema)
    new = write_catalog(folder, tables, build=f"{release}.0.0+sandbox")
    edits = {"revised": revise + list(rename), "removed": remove, "moved": list(move),
             "metadata": list(relicense), "new": [r["SeriesInstanceUID"] for r in added]}
    return Release(new, release, edits)


def _prior(row: dict, release: int) -> dict:
    """The prior_versions_index row that closes ``row``'s version at release - 1."""
    out = {c: row.get(c) for c in PRIOR_COLUMNS}
    out.update(gcs_bucket=GCS_BUCKETS.get(row["aws_bucket"], row["aws_bucket"]),
               series_size_MB=round(row["series_size_MB"], 2),  # IDC rounds prior sizes
               min_idc_version=row.get("series_revised_idc_version") or 1,
               max_idc_version=release - 1)
    return out


def _keys(writer, bucket: str, prefix: str) -> list[str]:
    pages = writer.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(item["Key"] for page in pages for item in page.get("Contents", []))


def _revised(writer, row: dict, release: int) -> dict:
    """A new version of the series: unchanged instances copied, instance 1 changed."""
    old_uuid, bucket = row["crdc_series_uuid"], row["aws_bucket"]
    new_uuid = str(uuid.uuid5(INSTANCE_NAMESPACE, f"{old_uuid}/release-{release}"))
    new_row = dict(row, crdc_series_uuid=new_uuid, series_revised_idc_version=release,
                   series_aws_url=f"s3://{bucket}/{new_uuid}/*")
    keys = _keys(writer, bucket, old_uuid + "/")
    changed = str(uuid.uuid5(INSTANCE_NAMESPACE, f"{old_uuid}/1"))
    size = 0
    for key in keys:
        if key.endswith(f"/{changed}.dcm"):
            continue
        name = key.rsplit("/", 1)[-1]
        writer.copy_object(Bucket=bucket, Key=f"{new_uuid}/{name}",
                           CopySource={"Bucket": bucket, "Key": key})
        size += writer.head_object(Bucket=bucket, Key=key)["ContentLength"]
    inst, body = _instance(new_row, 1, comment=f"revised in sandbox release {release}")
    writer.put_object(Bucket=bucket, Key=inst.key, Body=body)
    size += len(body)
    new_row["series_size_MB"] = size / 1e6
    return new_row


def _moved(writer, row: dict, bucket: str) -> dict:
    """The same version in another bucket (copied; the old bucket keeps its objects)."""
    old_bucket, series_uuid = row["aws_bucket"], row["crdc_series_uuid"]
    if bucket not in {b["Name"] for b in writer.list_buckets().get("Buckets", [])}:
        writer.create_bucket(Bucket=bucket)
    for key in _keys(writer, old_bucket, series_uuid + "/"):
        writer.copy_object(Bucket=bucket, Key=key, CopySource={"Bucket": old_bucket, "Key": key})
    return dict(row, aws_bucket=bucket, series_aws_url=f"s3://{bucket}/{series_uuid}/*")


def _added(writer, template: dict, release: int, number: int) -> dict:
    """A new series cloned from ``template``'s patient and study, with fresh UIDs."""
    series_uid = uid_for("idc-sandbox-added", template["SeriesInstanceUID"], release, number)
    series_uuid = str(uuid.uuid5(INSTANCE_NAMESPACE, f"added/{series_uid}"))
    row = dict(template, SeriesInstanceUID=series_uid, crdc_series_uuid=series_uuid,
               series_init_idc_version=release, series_revised_idc_version=release,
               series_aws_url=f"s3://{template['aws_bucket']}/{series_uuid}/*",
               instanceCount=1)
    inst, body = _instance(row, 1)
    writer.put_object(Bucket=row["aws_bucket"], Key=inst.key, Body=body)
    row["series_size_MB"] = len(body) / 1e6
    return row
