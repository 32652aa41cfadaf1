"""Collections, patients and studies as objects, derived from the ``getSeries`` rows.

NBIA changes collections, patients and studies only through their series, and every
``getSeries`` row names its collection, patient and study (with ``PatientSex``,
``PatientAge``, ``StudyDate``, ``StudyDesc``... on v4), so a sync derives their documents
from the rows it already lists: no request is added, and the no-op re-sync stays at its
two requests per collection. The series the archive hides (absent upstream) count as
present, so a hidden series keeps its study and patient. A collection, patient or study
no row names any more is marked removed (kept, with its documents), as a series is.

Ids must be safe file names of at most 64 characters (:data:`mirror.store.SAFE_ID`).
Collection names have spaces at times (``QIN LUNG CT``) and PatientIDs are unique only
within a collection, so: a collection's id is its name when that is letters, digits,
``-`` and ``_``; a patient's is ``<collection id>.<PatientID>`` when both parts are and the
whole fits; otherwise a hash (``c.<sha256[:40]>``, ``p.h.<sha256[:40]>``), which no
readable id can equal. Documents carry the names themselves (``Collection``,
``PatientID``), so selections and ``mirror sql`` never need the ids.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Iterable

from sqlalchemy import select

from mirror.index import ObjectRow
from mirror.sources.base import DocumentRun
from mirror.sources.tcia.spec import UID

_PART = re.compile(r"[A-Za-z0-9_-]{1,64}")
COLLECTION_FIELDS = ("LicenseName", "LicenseURI", "DataDescriptionURI")
PATIENT_FIELDS = ("PatientSex",)
STUDY_FIELDS = ("StudyDate", "StudyDesc", "AdmittingDiagnosisDescription", "PatientAge")


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode("utf-8", "replace")).hexdigest()[:40]


def collection_key(name: str) -> str:
    """The collection's object id: its name when safe, else ``c.<hash>``."""
    return name if _PART.fullmatch(name) else f"c.{_digest(name)}"


def patient_key(collection: str, patient_id: str) -> str:
    """The patient's object id, unique across collections (see the module docstring)."""
    readable = f"{collection}.{patient_id}"
    if _PART.fullmatch(collection) and _PART.fullmatch(patient_id) and len(readable) <= 64:
        return readable
    return f"p.h.{_digest(collection, patient_id)}"


def _common(rows: list[dict], field: str) -> object:
    """The value most series of a group give ``field`` (ties: the smallest, as text)."""
    counts = Counter(r[field] for r in rows if r.get(field) is not None)
    if not counts:
        return None
    top = max(counts.values())
    return min((v for v, n in counts.items() if n == top), key=str)


def _with(doc: dict, rows: list[dict], fields: Iterable[str]) -> dict:
    for field in fields:
        value = _common(rows, field)
        if value is not None:
            doc[field] = value
    return doc


def derive(rows: Iterable[dict]) -> dict[str, list[dict]]:
    """``{"collection": [...], "patient": [...], "study": [...]}`` documents of the rows."""
    by_collection: dict[str, list[dict]] = {}
    by_patient: dict[tuple[str, str], list[dict]] = {}
    by_study: dict[str, list[dict]] = {}
    for row in rows:
        name, pid, study = row.get("Collection"), row.get("PatientID"), \
            row.get("StudyInstanceUID")
        if not isinstance(name, str) or not name:
            continue
        by_collection.setdefault(name, []).append(row)
        if isinstance(pid, str) and pid:
            by_patient.setdefault((name, pid), []).append(row)
            if isinstance(study, str) and UID.fullmatch(study):
                by_study.setdefault(study, []).append(row)
    collections = [_with({"collection_id": collection_key(n), "Collection": n}, r,
                         COLLECTION_FIELDS) for n, r in sorted(by_collection.items())]
    patients = [_with({"patient_key": patient_key(n, p), "PatientID": p, "Collection": n,
                       "collection_id": collection_key(n)}, r, PATIENT_FIELDS)
                for (n, p), r in sorted(by_patient.items())]
    studies = []
    for uid, group in sorted(by_study.items()):
        first = min(group, key=lambda r: r.get("SeriesInstanceUID") or "")  # one owner
        name, pid = first["Collection"], first["PatientID"]
        studies.append(_with({"StudyInstanceUID": uid, "patient_key": patient_key(name, pid),
                              "PatientID": pid, "Collection": name}, group, STUDY_FIELDS))
    return {"collection": collections, "patient": patients, "study": studies}


def sync_hierarchy(run: DocumentRun, rows: Iterable[dict], names: set[str]) -> None:
    """Store the derived documents and mark removed those of ``names`` (the collections
    this run listed) that no row names now."""
    derived = derive(rows)
    for kind in ("collection", "patient", "study"):
        docs = derived[kind]
        spec = run.spec.kind(kind)
        run.record(kind, run.store_docs(kind, docs))
        present = run.session.execute(select(ObjectRow.id, ObjectRow.doc).where(
            ObjectRow.kind == kind, ObjectRow.removed.is_(False))).all()
        within = {oid for oid, doc in present if (doc or {}).get("Collection") in names}
        run.remove_missing(kind, {spec.id_of(d) for d in docs}, within=within,
                           where=f"the getSeries listings ({spec.table})")
