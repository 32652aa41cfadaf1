"""What TCIA's NBIA v4 holds, declared for the engine (see :mod:`mirror.sources.base`).

Kinds: series (the ``getSeries`` row, the unit NBIA lists, hashes and zips) and their
instances: once fetched, an instance's document is its ids and its DICOM header as DICOM
JSON (PS3.18 F.2, no pixel data or bulk values), projected by tag keyword; a metadata-only
mirror holds only the ids ``getSOPInstanceUIDs`` lists. Above them, collection → patient →
study → series: objects of their own (indexed, selectable, tables ``collections``,
``patients``, ``studies``), whose documents are *derived* from the series rows each sync
lists anyway (:mod:`mirror.sources.tcia.hierarchy`): NBIA changes them only through their
series, so deriving them costs no request and cannot disagree with the rows. Series,
study and instance ids are DICOM UIDs (digits and dots), whose last character would fill
ten shard folders unevenly, so objects shard by the SHA-256 of the id; collection and
patient ids are the names when safe, else hashes (:data:`COLLECTION_ID`,
:data:`PATIENT_KEY`).

Files: each instance's DICOM bytes (``dicom_<SOPInstanceUID>.dcm``, magic ``DICM`` at byte
128), fetched a series at a time from one ``getImage`` zip; and per series the MD5 of every
instance it holds (``md5s_<SeriesInstanceUID>.json``), which lets the next sync compare
its own hashes with NBIA's ``getMD5Hierarchy`` without reading the DICOM files again.
Per collection, the ``LICENSE`` text its zips carry (``license_<collection id>.txt``,
:mod:`mirror.sources.tcia.licenses`).
"""

from __future__ import annotations

import dataclasses
import re

from mirror.sources.base import FileRole, KindSpec, SourceSpec, shard_by_hash

UID = re.compile(r"(?=[0-9.]{1,64}$)(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
"""PS3.5 9.1: digits and dots, no leading zeros, at most 64 characters."""
DICM = b"DICM"

def _instance_columns(doc: dict) -> dict:
    """An instance as selections and ``mirror sql`` see it: its ids and its header's
    public single-valued attributes by keyword (``SliceThickness``, ``KVP``...), not the
    DICOM JSON's per-tag objects. Keywords come from a cached lookup
    (:func:`~mirror.sources.dicom.public_keyword_columns`): this runs for every instance
    at every publish that rebuilds the kind."""
    from mirror.sources.dicom import public_keyword_columns

    shown = {k: v for k, v in doc.items() if k != "dicom"}
    for keyword, value in public_keyword_columns(doc.get("dicom") or {}).items():
        shown.setdefault(keyword, value)
    return shown


COLLECTION_ID = re.compile(r"[A-Za-z0-9_-]{1,64}|c\.[0-9a-f]{40}")
"""A collection's name when safe, else ``c.<hash>`` (:mod:`mirror.sources.tcia.hierarchy`)."""
PATIENT_KEY = re.compile(r"(?=.{1,64}$)[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+|\.h\.[0-9a-f]{40})")
"""``<collection>.<PatientID>`` when both are safe, else ``p.h.<hash>``."""

KINDS = (
    KindSpec(name="series", table="series", id_pattern=UID, shard=shard_by_hash,
             parent="study",
             id_of=lambda doc: doc.get("SeriesInstanceUID"),
             name_of=lambda doc: doc.get("SeriesDescription"),
             parent_of=lambda doc: doc.get("StudyInstanceUID"), id_field="SeriesInstanceUID",
             name_field="SeriesDescription", parent_field="StudyInstanceUID"),
    KindSpec(name="instance", table="instances", id_pattern=UID, parent="series",
             shard=shard_by_hash, id_of=lambda doc: doc.get("SOPInstanceUID"),
             name_of=lambda doc: None, parent_of=lambda doc: doc.get("SeriesInstanceUID"),
             projected=_instance_columns, ordered=False, id_field="SOPInstanceUID",
             parent_field="SeriesInstanceUID"),
    KindSpec(name="collection", table="collections", id_pattern=COLLECTION_ID,
             shard=shard_by_hash, id_of=lambda doc: doc.get("collection_id"),
             name_of=lambda doc: doc.get("Collection"), id_field="collection_id",
             name_field="Collection"),
    KindSpec(name="patient", table="patients", id_pattern=PATIENT_KEY, parent="collection",
             shard=shard_by_hash, id_of=lambda doc: doc.get("patient_key"),
             name_of=lambda doc: doc.get("PatientID"),
             parent_of=lambda doc: doc.get("collection_id"), id_field="patient_key",
             name_field="PatientID", parent_field="collection_id"),
    KindSpec(name="study", table="studies", id_pattern=UID, parent="patient",
             shard=shard_by_hash, id_of=lambda doc: doc.get("StudyInstanceUID"),
             name_of=lambda doc: doc.get("StudyDesc"),
             parent_of=lambda doc: doc.get("patient_key"), id_field="StudyInstanceUID",
             name_field="StudyDesc", parent_field="patient_key"),
)

ROLES = (
    FileRole("dicom", "dicom", "dicom", (DICM,), magic_offset=128, exts=(".dcm",),
             bytes_per_pixel=0, fixed_bytes=0),
    FileRole("md5s", "md5s", None, exts=(".json",), exported=False),
    FileRole("license", "license", None, exts=(".txt",), exported=False),
)

NBIA_V4_URL = "https://nbia.cancerimagingarchive.net/nbia-api/services/v4"
"""NBIA v4, what tcia_utils 3.3 calls; public collections need no authentication."""

SPEC = SourceSpec(
    name="tcia-v4",
    archive="tcia",
    api="nbia-v4",
    title="TCIA NBIA REST API v4",
    namespace="tcia",
    organization="The Cancer Imaging Archive (TCIA)",
    url_pattern=re.compile(r"/nbia-api/services/v4/?$"),
    kinds=KINDS,
    roles=ROLES,
    main_kind="series",
    groups=(("collections", "series", "Collection", "Collection"),),
    parts=frozenset({"series", "headers"}),
    file_options=frozenset({"dicom"}),
    default_url=NBIA_V4_URL,
    source="mirror.sources.tcia.source:TciaSource",
    sandbox="mirror.sources.tcia.sandbox.server:main",
)

BINDAAS_V3_URL = "https://services.cancerimagingarchive.net/services/v3/TCIA/query"
"""The seed's TCIA REST API v3 (Bindaas): deprecated 2022-06-22, frozen, needs an api_key."""

V3_SPEC = dataclasses.replace(
    SPEC, name="tcia-v3", api="bindaas-v3",
    title="TCIA REST API v3 (Bindaas, deprecated 2022, frozen)",
    url_pattern=re.compile(r"/services/v3/TCIA/query/?$"),
    default_url=BINDAAS_V3_URL, source="mirror.sources.tcia.v3_source:TciaV3Source")
"""The seed's v3 API as a second way in: the same kinds, files and folder layout as
``tcia-v4`` (v3 rows are the 15-key subset of v4's), its key from ``TCIA_API_KEY``."""
