"""What the NCI Imaging Data Commons holds, declared for the engine (see
:mod:`mirror.sources.base`).

Kinds (all in the generic ``objects`` table, no migration):

* ``catalog``: one document, the idc-index-data version the mirror was last synced from
  (package, build stamp, IDC release). Snapshots pin it, so every manifest names its catalog.
* ``collection``: the ``collections_index`` row (name, licences, citations per source).
* ``series``: the ``idc_index`` row, as the catalog ships it (31 columns in v25). Its id is
  the SeriesInstanceUID; DICOM UIDs are digits and dots, so they shard by hash.
* ``instance``: one DICOM file. Its id is the ``crdc_instance_uuid`` of its bucket key
  (``<crdc_series_uuid>/<crdc_instance_uuid>.dcm``), known from the listing before the bytes
  arrive; the document holds the SOPInstanceUID and the header as DICOM JSON (PS3.18 F.2).
  A revised series copies its unchanged instances under the new prefix with the same
  instance uuid, so they are never fetched twice. Instance uuids are random hex: they shard
  by their last digit.

Patients and studies are fields of the series rows, not objects: the catalog is series-level
and PatientIDs are neither unique across collections nor safe file names.

One file role, ``instance`` (``dcm_<crdc_instance_uuid>.dcm``), asked for by ``--blobs
dicom``; ``--blobs ''`` mirrors the catalog rows only. IDC has no API URL: the mirror's base
URL is the S3 endpoint of the buckets (the public AWS one by default).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from mirror.sources.base import (
    FileRole,
    FileTask,
    KindSpec,
    SourceSpec,
    shard_by_hash,
    shard_by_hex_suffix,
)

UID = re.compile(r"(?=[0-9.]{1,64}$)(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
"""PS3.5 9.1: digits and dots, no leading zeros, at most 64 characters (every v25 series)."""
INSTANCE_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
COLLECTION_ID = re.compile(r"[a-z0-9][a-z0-9_]{0,63}")
CATALOG_ID = "idc-index-data"
DICM = b"DICM"
NEVER = re.compile(r"(?!)")  # IDC has no API URL: --source idc picks it


def _check_instance_file(path: Path, task: FileTask) -> dict:
    """A stored instance must read as DICOM (magic, file meta, a SOPInstanceUID); what the
    sync checks beyond that (its UIDs against the catalog) needs the catalog row."""
    from mirror.sources.dicom import read_header

    return read_header(path)


def _instance_columns(doc: dict) -> dict:
    """An instance as selections and ``mirror sql`` see it: its ids and its header's public
    single-valued attributes by keyword (``Modality``, ``SliceThickness``...), not the
    DICOM JSON's per-tag objects (one column per tag and field, thousands over IDC)."""
    from mirror.sources.dicom import public_keyword_columns

    shown = {k: v for k, v in doc.items() if k != "dicom"}
    for keyword, value in public_keyword_columns(doc.get("dicom") or {}).items():
        shown.setdefault(keyword, value)
    return shown


KINDS = (
    KindSpec(name="catalog", table="catalogs", id_pattern=re.compile(re.escape(CATALOG_ID)),
             id_of=lambda doc: doc.get("_id"),
             name_of=lambda doc: f"{CATALOG_ID} {doc.get('package')}"),
    KindSpec(name="collection", table="collections", id_pattern=COLLECTION_ID,
             id_of=lambda doc: doc.get("collection_id"),
             name_of=lambda doc: doc.get("collection_name"), id_field="collection_id",
             name_field="collection_name"),
    KindSpec(name="series", table="series", id_pattern=UID, parent="collection",
             shard=shard_by_hash, id_of=lambda doc: doc.get("SeriesInstanceUID"),
             name_of=lambda doc: doc.get("SeriesDescription"),
             parent_of=lambda doc: doc.get("collection_id"), id_field="SeriesInstanceUID",
             name_field="SeriesDescription", parent_field="collection_id"),
    KindSpec(name="instance", table="instances", id_pattern=INSTANCE_UUID, parent="series",
             shard=shard_by_hex_suffix, id_of=lambda doc: doc.get("crdc_instance_uuid"),
             name_of=lambda doc: doc.get("SOPInstanceUID"),
             parent_of=lambda doc: doc.get("SeriesInstanceUID"),
             projected=_instance_columns, ordered=False, id_field="crdc_instance_uuid",
             name_field="SOPInstanceUID", parent_field="SeriesInstanceUID"),
)

ROLES = (
    FileRole("instance", "dcm", "dicom", (DICM,), magic_offset=128, exts=(".dcm",),
             validate=_check_instance_file, bytes_per_pixel=0, fixed_bytes=0),
)

#: the public AWS S3 endpoint IDC's buckets answer on (anonymous access)
AWS_ENDPOINT = "https://s3.amazonaws.com"

SPEC = SourceSpec(
    name="idc",
    archive="idc",
    api="idc-index",
    title="NCI Imaging Data Commons (idc-index catalog, public S3 buckets)",
    namespace="idc",
    organization="NCI Imaging Data Commons (IDC)",
    url_pattern=NEVER,
    kinds=KINDS,
    roles=ROLES,
    main_kind="series",
    groups=(("collections", "collections", "name", "collection_id"),),
    parts=frozenset({"series"}),
    file_options=frozenset({"dicom"}),
    default_url=AWS_ENDPOINT,
    source="mirror.sources.idc.source:IdcSource",
    sandbox="mirror.sources.idc.sandbox:main",
)

#: IDC's REST API v1 root (switched off: every route answers 410)
V1_URL = "https://api.imaging.datacommons.cancer.gov/v1"

V1_SPEC = dataclasses.replace(
    SPEC, name="idc-api-v1", api="idc-api-v1",
    title="NCI Imaging Data Commons (series named by an IDC API v1 manifest, public S3 "
          "buckets)",
    url_pattern=re.compile(r"imaging\.datacommons\.cancer\.gov/v1/?$"),
    default_url=V1_URL, source="mirror.sources.idc.v1_source:IdcV1Source")
"""The seed's v1 API as a second way to name the series: the same kinds, files and folder as
``idc`` (a v1 manifest only says *which* series; their rows still come from idc-index-data
and their bytes from the buckets), but the mirror's base URL is the v1 root."""
