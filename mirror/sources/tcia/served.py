"""The mirror backend of the NBIA v4 API shape: a synced TCIA mirror's index and store.

``mirror serve`` answers ``/nbia-api/services/v4/...`` through
:class:`~mirror.sources.tcia.shape.V4Api` over this backend, so tcia_utils and other NBIA
clients see the archive's own parameters, rows, zips and error texts. What the mirror keeps
is what a sync stored: the ``getSeries`` rows (served as they were listed), each fetched
series' instances (verified against ``md5hashes.csv``) and their MD5s. From those it
answers everything else the way NBIA computes it: patients and studies grouped from the
series rows (fields only the archive's patient and study tables hold are left out, as NBIA
leaves out nulls), series zips built on the fly from the stored instances, and the MD5
hierarchy combined from the instance MD5s. The collection hash is computed live, where
NBIA serves its daily job's snapshot. The mirror does not keep the zips' ``LICENSE`` entry,
so its zips have none.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from mirror.api import Mirror
from mirror.errors import MirrorError
from mirror.index import Blob, ObjectRow
from mirror.sources.tcia.formats import Response
from mirror.sources.tcia.shape import (
    API_ROOT,
    V4_SERIES_COLUMNS,
    BadRequest,
    SeriesZip,
    V4Api,
    combine,
    entry_names,
    ordered,
    row_matches,
    single_image_response,
)

__all__ = ["API_ROOT", "MirrorBackend", "make_api"]
SANDBOX_ONLY = ("NewPatientsInCollection", "NewStudiesInPatientCollection", "getUpdatedSeries",
                "getMD5HashForImage", "getSeriesMetadata")
"""NBIA v4 endpoints the mirror does not answer (yet): a 404 naming the offline way."""


@dataclass
class Instance:
    """One stored instance of a series, with what orders it in a zip."""

    sop_uid: str
    instance_number: int
    acquisition_number: int | None
    path: Path
    sha256: str


def _tag(doc: dict, tag: str) -> object:
    value = ((doc.get("dicom") or {}).get(tag) or {}).get("Value") or [None]
    return value[0]


def _number(value: object) -> int | None:
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


class MirrorBackend:
    """A :class:`~mirror.sources.tcia.shape.V4Backend` over one opened :class:`Mirror`
    (one published generation: it never changes under this object, so the series rows
    are read once)."""

    def __init__(self, mirror: Mirror, token: str | None = None):
        self.m = mirror
        self.token = token
        self._rows: list[dict] | None = None
        self._by_uid: dict[str, dict] = {}
        self._series_md5: dict[str, str] = {}
        self._lock = threading.Lock()

    # -- series rows -------------------------------------------------------------------------

    def rows(self) -> list[dict]:
        """The listed series' ``getSeries`` rows, by SeriesInstanceUID."""
        with self._lock:
            if self._rows is None:
                self._rows = [r[0] for r in self.m._all(
                    select(ObjectRow.doc).where(ObjectRow.kind == "series",
                                                ObjectRow.removed.is_(False))
                    .order_by(ObjectRow.id))]
                self._by_uid = {r.get("SeriesInstanceUID"): r for r in self._rows}
            return self._rows

    def _matching(self, filters: dict[str, str]) -> list[dict]:
        return [row for row in self.rows() if row_matches(row, filters)]

    def _row(self, uid: str) -> dict | None:
        self.rows()
        return self._by_uid.get(uid)

    def collections(self) -> list[str]:
        return [c for c in dict.fromkeys(r.get("Collection") for r in self.rows()) if c]

    def series_rows(self, filters: dict[str, str]) -> list[list]:
        return [[row.get(c) for c in V4_SERIES_COLUMNS] for row in self._matching(filters)]

    def patient_rows(self, collection: str | None, patient_id: str | None) -> list[list]:
        filters = {k: v for k, v in (("Collection", collection), ("PatientID", patient_id))
                   if v is not None}
        patients: dict[tuple, dict] = {}
        for row in self._matching(filters):
            patients.setdefault((row.get("PatientID"), row.get("Collection")), row)
        return [[pid, None, row.get("PatientSex"), None, coll, None, None, None, 1]
                for (pid, coll), row in patients.items()]

    def study_rows(self, filters: dict[str, str]) -> list[list]:
        studies: dict[str, list[dict]] = {}
        for row in self._matching(filters):
            studies.setdefault(row.get("StudyInstanceUID"), []).append(row)
        return [[uid, r[0].get("StudyDate"), r[0].get("StudyDesc"),
                 r[0].get("AdmittingDiagnosisDescription"), None, r[0].get("PatientAge"),
                 r[0].get("PatientID"), None, r[0].get("PatientSex"), None,
                 r[0].get("Collection"), len(r), None, None, 1]
                for uid, r in studies.items()]

    def series_size(self, uid: str) -> list | None:
        row = self._row(uid)
        return [row.get("FileSize"), row.get("ImageCount")] if row else None

    # -- instances ---------------------------------------------------------------------------

    def _instances(self, uid: str) -> list[Instance]:
        """The series' stored instances by InstanceNumber (the order NBIA's database gives
        them is not kept; for series built in order it is the same)."""
        found = self.m._all(
            select(ObjectRow.id, ObjectRow.doc, Blob.path, Blob.sha256)
            .join(Blob, (Blob.object_id == ObjectRow.id) & (Blob.role == "dicom"))
            .where(ObjectRow.kind == "instance", ObjectRow.parent_id == uid,
                   ObjectRow.removed.is_(False)))
        instances = [Instance(sop, _number(_tag(doc, "00200013")) or 0,
                              _number(_tag(doc, "00200012")), self.m.store.path(path), sha)
                     for sop, doc, path, sha in found]
        return sorted(instances, key=lambda i: (i.instance_number, i.sop_uid))

    def _held(self, uid: str) -> list[Instance] | None:
        """The listed series' instances; None for a series NBIA would not serve; a clear
        404 for one the mirror lists but holds no bytes of."""
        row = self._row(uid)
        if row is None:
            return None
        instances = self._instances(uid)
        if not instances and row.get("ImageCount"):
            raise BadRequest(404, f"The instances of series {uid} are not in this mirror; "
                             "it was synced without --blobs dicom (or with a --where that "
                             "left this series out).", "text/plain")
        return instances

    def sop_uids(self, uid: str) -> list[str] | None:
        if self._row(uid) is None:
            return None
        listed = self.m._all(select(ObjectRow.id, ObjectRow.doc).where(
            ObjectRow.kind == "instance", ObjectRow.parent_id == uid,
            ObjectRow.removed.is_(False)))
        return [sop for _, sop in sorted((_number(_tag(doc, "00200013")) or 0, sop)
                                         for sop, doc in listed)]

    def series_zip(self, uid: str, new_names: bool) -> SeriesZip | None:
        instances = self._held(uid)
        if instances is None:
            return None
        names = entry_names(instances, new_names)
        return SeriesZip(None, [(name, i.path) for name, i in
                                zip(names, ordered(instances, new_names), strict=True)])

    def single_image(self, series_uid: str, sop_uid: str) -> Response | None:
        instances = self._held(series_uid)
        for instance in instances or []:
            if instance.sop_uid == sop_uid:
                return single_image_response(sop_uid, instance.path, instance.sha256)
        return None

    # -- the MD5 hierarchy -------------------------------------------------------------------

    def _md5s(self, uid: str) -> list[str]:
        found = self.m._one(select(Blob.path).where(Blob.object_id == uid,
                                                    Blob.role == "md5s"))
        if found is None:
            return []
        try:
            return list(json.loads(self.m.store.read_bytes(found[0])).values())
        except (OSError, ValueError, MirrorError):
            return []

    def series_md5(self, uid: str) -> str:
        """Kept once computed: the generation (and so every stored MD5) never changes."""
        if uid not in self._series_md5:
            held = self._row(uid) is not None
            self._series_md5[uid] = combine(self._md5s(uid)) if held else ""
        return self._series_md5[uid]

    def _study_hash(self, rows: list[dict]) -> str:
        return combine(self.series_md5(r["SeriesInstanceUID"]) for r in rows)

    def _patient_hash(self, rows: list[dict]) -> str:
        studies: dict[str, list[dict]] = {}
        for row in rows:
            studies.setdefault(row.get("StudyInstanceUID"), []).append(row)
        return combine(self._study_hash(group) for group in studies.values())

    def study_md5(self, uid: str) -> str:
        return self._study_hash(self._matching({"StudyInstanceUID": uid}))

    def patient_md5(self, patient_id: str, collection: str | None) -> str:
        if collection is None:
            return ""  # HQL ``gs.project = null`` matches nothing
        return self._patient_hash(self._matching({"PatientID": patient_id,
                                                  "Collection": collection}))

    def collection_md5(self, collection: str) -> str:
        """Live (NBIA answers its daily job's value): each row is looked at once."""
        patients: dict[str, list[dict]] = {}
        for row in self._matching({"Collection": collection}):
            patients.setdefault(str(row.get("PatientID") or "").upper(), []).append(row)
        return combine(self._patient_hash(group) for group in patients.values())


class MirrorApi(V4Api):
    """The NBIA v4 face of a mirror: an endpoint it does not answer says so."""

    request_uid = False  # no Girder-Request-Uid header: NBIA sends none

    def unknown(self, endpoint: str) -> Response:
        if endpoint in SANDBOX_ONLY:
            return Response.text(f"This mirror does not serve {endpoint}; select series "
                                 "offline with 'mirror query --where FIELD OP VALUE' on the "
                                 "mirror's host.", 404)
        return super().unknown(endpoint)


def make_api(mirror: Mirror, token: str | None) -> MirrorApi:
    """The NBIA v4 face ``mirror serve`` mounts at :data:`API_ROOT` for this mirror."""
    return MirrorApi(MirrorBackend(mirror, token))


# -- the browse page's picture ---------------------------------------------------------------

PREVIEW_WIDTH = 512  # pixels at most: a slice of a CT is 512 wide, a preview need not be more


def _middle(mirror: Mirror, uid: str) -> tuple[Instance, dict, int] | None:
    """The series' middle stored instance (by InstanceNumber), its header, and how many."""
    instances = MirrorBackend(mirror)._instances(uid)
    if not instances:
        return None
    middle = instances[len(instances) // 2]
    row = mirror._one(select(ObjectRow.doc).where(ObjectRow.kind == "instance",
                                                  ObjectRow.id == middle.sop_uid))
    return middle, (row[0] if row else {}) or {}, len(instances)


def overlays(mirror: Mirror, kind: str, object_id: str) -> list[tuple[str, str]]:
    """(name, title) of the pictures the object page shows: a series' middle slice, titled
    with a few of its tags."""
    found = _middle(mirror, object_id) if kind == "series" else None
    if found is None:
        return []
    middle, header, count = found
    tags = [f"{name} {_tag(header, tag)}" for name, tag in
            (("Modality", "00080060"), ("SliceThickness", "00180050"),
             ("Rows", "00280010"), ("Columns", "00280011"))
            if _tag(header, tag) is not None]
    return [("middle", f"middle slice: instance {middle.instance_number} "
                       f"({count // 2 + 1} of {count})"
                       + (f"; {', '.join(tags)}" if tags else ""))]


def overlay_png(mirror: Mirror, uid: str, name: str) -> bytes | None:
    """The middle slice of series ``uid`` as an 8-bit greyscale PNG: the modality LUT
    (rescale slope and intercept), then the stored window if there is one, scaled to 0-255.
    None when the series has no stored instance or pydicom cannot decode its pixels here
    (a compressed transfer syntax without its decoder installed)."""
    import io

    import numpy as np
    import pydicom
    from PIL import Image as Pil
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    found = _middle(mirror, uid) if name == "middle" else None
    if found is None:
        return None
    try:
        ds = pydicom.dcmread(found[0].path)
        pixels = ds.pixel_array
    except Exception:  # noqa: BLE001 - no decoder for this transfer syntax, damaged data
        return None
    if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:
        pixels = pixels[len(pixels) // 2]  # a multi-frame instance: its middle frame
    if pixels.ndim == 2:
        pixels = apply_modality_lut(pixels, ds)
        if "WindowCenter" in ds and "WindowWidth" in ds:
            pixels = apply_voi_lut(pixels, ds)
    pixels = pixels.astype(np.float64)
    low, high = float(pixels.min()), float(pixels.max())
    grey = ((pixels - low) * (255.0 / (high - low)) if high > low
            else np.zeros_like(pixels)).astype(np.uint8)
    image = Pil.fromarray(grey)
    if image.width > PREVIEW_WIDTH:
        image = image.resize((PREVIEW_WIDTH, max(1, round(image.height * PREVIEW_WIDTH
                                                          / image.width))))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()
