"""The NBIA v4 and Bindaas v3 endpoints of the TCIA sandbox, independent of HTTP plumbing.

Behaviour follows the research notes ``tcia_idc.md`` §1 and ``tcia_idc_changes.md`` §1-§3
(NBIA ``restAPI/v4/V4_*.java`` and the DAOs): fixed column sets in server order, null keys
dropped, ``MM-DD-YYYY`` dates, 200 with an empty body for no rows, 400 texts for unknown
parameters, missing parameters and series the guest may not download, only visible
(``visibility = 1``) series in listings, and the MD5 hierarchy computed from instance MD5s.
Where the notes mark something unverified, the choice made here is said in a comment.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from datetime import datetime

from mirror.sources.tcia.formats import Response, format_rows
from mirror.sources.tcia.sandbox.data import Archive, Series, md5_hex
from mirror.sources.tcia.shape import (
    METHOD_NOT_ALLOWED_HTML,
    NOT_FOUND_HTML,
    PROXY_HTML,
    V4_PATIENT_COLUMNS,
    V4_SERIES_COLUMNS,
    V4_STUDY_COLUMNS,
    BadRequest,
    Route,
    SeriesZip,
    V4Api,
    entry_names,
    not_granted,
    ordered,
    parse_v4_date,
    single_image_response,
    v4_date,
    zip_chunks,
    zip_response,
)

__all__ = ["METHOD_NOT_ALLOWED_HTML", "NOT_FOUND_HTML", "V4_PATIENT_COLUMNS",
           "V4_SERIES_COLUMNS", "V4_STUDY_COLUMNS", "TciaAPI"]
V3_SERIES_COLUMNS = [
    "PatientID", "Collection", "StudyInstanceUID", "SeriesInstanceUID", "Modality",
    "ProtocolName", "SeriesDate", "SeriesDescription", "BodyPartExamined", "SeriesNumber",
    "AnnotationsFlag", "Manufacturer", "ManufacturerModelName", "SoftwareVersions",
    "ImageCount"]
V3_PATIENT_COLUMNS = ["PatientID", "PatientName", "PatientBirthDate", "PatientSex",
                      "EthnicGroup", "Collection"]
V3_STUDY_COLUMNS = V4_STUDY_COLUMNS[:12]
V4_METADATA_COLUMNS = [
    "PatientID", "PatientName", "PatientSex", "EthnicGroup", "Phantom", "SpeciesCode",
    "SpeciesDescription", "StudyInstanceUID", "StudyDate", "StudyDesc",
    "AdmittingDiagnosisDescription", "StudyID", "PatientAge", "LongitudinalTemporalEventType",
    "LongitudinalTemporalOffsetFromEvent", "SeriesInstanceUID", "Collection", "Site",
    "Modality", "ProtocolName", "SeriesDate", "SeriesDescription", "BodyPartExamined",
    "SeriesNumber", "AnnotationsFlag", "Manufacturer", "ManufacturerModelName",
    "PixelSpacing(mm)-Row", "SliceThickness(mm)", "SoftwareVersions", "ImageCount",
    "MaxSubmissionTimestamp", "LicenseName", "LicenseURI", "DataDescriptionURI", "FileSize",
    "ReleasedStatus", "DateReleased", "ThirdPartyAnalysis", "Authorized"]
V3_API_KEY = "sandbox-key"
"""The one key the sandbox's Bindaas v3 accepts (header ``api_key`` or query parameter)."""
LICENSE_TEMPLATE = ("The data in this download is part of the {collection} collection of The "
                    "Cancer Imaging Archive (sandbox).\nIt is licensed under the {name}\n"
                    "{uri}\nCite the collection: {doi}\n")
HTML_ENTRY = (b"<html><head><title>Error</title></head><body><h1>Server was not able to "
              b"process your request</h1></body></html>")
BOMB_SIZE = 64 * 2**20
"""Bytes of the ``bomb`` hostile instance: deflates to ~64 kB, a ~1000x ratio."""


def _ci(value: str | None, wanted: str | None) -> bool:
    return wanted is None or (value or "").upper() == wanted.upper()


def _exact(value: str | None, wanted: str | None) -> bool:
    return wanted is None or value == wanted


class TciaAPI(V4Api):
    """Both API generations over one :class:`Archive` (v3 over a frozen snapshot); the
    NBIA v4 routes shared with ``mirror serve`` are :class:`~mirror.sources.tcia.shape.V4Api`'s."""

    def __init__(self, archive: Archive, hostile: dict[str, str] | None = None,
                 listing_cases: frozenset[str] = frozenset()):
        self.archive = archive
        self.frozen = archive.snapshot()
        self.hostile = hostile or {}  # SeriesInstanceUID -> hostile zip case
        self.listing_cases = listing_cases  # see server.LISTING_CASES
        self._listings = 0
        self._listings_lock = threading.Lock()
        super().__init__(self)  # the sandbox is its own backend (V4Backend below)
        self.v4.update({  # the endpoints only the sandbox answers
            "NewPatientsInCollection": Route(self.v4_new_patients,
                                             ["Collection", "fromDate", "format"]),
            "NewStudiesInPatientCollection": Route(self.v4_new_studies,
                                                   ["Collection", "PatientID", "fromDate",
                                                    "format"]),
            "getUpdatedSeries": Route(self.v4_updated_series, ["fromDate", "format"]),
            "getMD5HashForImage": Route(self.v4_image_md5, ["SOPInstanceUID"]),
            "getSeriesMetadata": Route(self.v4_series_metadata, ["list", "format"], "POST"),
        })
        self.v3 = {
            "getCollectionValues": self.v3_collections,
            "getModalityValues": self.v3_modalities,
            "getBodyPartValues": self.v3_body_parts,
            "getManufacturerValues": self.v3_manufacturers,
            "getPatient": self.v3_patients,
            "PatientsByModality": self.v3_patients_by_modality,
            "getPatientStudy": self.v3_studies,
            "getSeries": self.v3_series,
            "getSeriesSize": self.v3_series_size,
            "getSOPInstanceUIDs": self.v3_sop_uids,
            "getImage": self.v3_image,
            "getSingleImage": self.v3_single_image,
            "NewPatientsInCollection": self.v3_new_patients,
            "NewStudiesInPatientCollection": self.v3_new_studies,
        }

    # --- dispatch -----------------------------------------------------------------------

    def before(self, endpoint: str, params: dict[str, str]) -> Response | None:
        if endpoint == "getSeries" and "Collection" in params and self.listing_cases:
            return self._listing_lie()
        return None

    def _listing_lie(self) -> Response | None:
        with self._listings_lock:
            self._listings += 1
            turn = self._listings % 3
        if turn == 2 and "html" in self.listing_cases:
            return Response.text(PROXY_HTML, 200, "text/html")
        if turn == 0 and "empty" in self.listing_cases:
            return Response(200, b"", {})
        return None

    def route_v3(self, endpoint: str, params: dict[str, str], api_key: str | None) -> Response:
        metadata = endpoint.endswith("/metadata")
        name = endpoint[:-len("/metadata")] if metadata else endpoint
        handler = self.v3.get(name)
        if handler is None:
            return Response.text(NOT_FOUND_HTML, 404, "text/html")
        if api_key != V3_API_KEY:
            # Bindaas's exact reply is not in any source read; a 401 with a text body here.
            return Response.text("Unauthorized: a valid api_key (HTTP header or query "
                                 "parameter) is required", 401)
        if metadata:
            return Response.text(json.dumps({"name": name, "returnTypes":
                                             ["CSV", "HTML", "XML", "JSON"]}),
                                 content_type="application/json")
        try:
            return handler({k: v for k, v in params.items() if v != ""})
        except BadRequest as err:
            return Response.text(str(err), err.status, "text/plain")

    @staticmethod
    def _require(params: dict[str, str], *names: str, comma: bool = False) -> None:
        for name in names:
            if name not in params:
                sep = "," if comma else ""
                raise BadRequest(400, f"A parameter, {name}{sep} is required for this API call.")

    # --- row builders -------------------------------------------------------------------

    def _context(self, archive: Archive, s: Series):
        return archive.studies[s.study_uid], archive.patients[(s.patient_id, s.collection)]

    def _series_row_v4(self, s: Series) -> list:
        study, patient = self._context(self.archive, s)
        day = study.day.strftime("%m-%d-%Y")
        return [s.uid, s.study_uid, s.modality, s.protocol, day, s.description, s.body_part,
                s.number, s.annotations_flag, s.collection, s.site, s.patient_id, patient.sex,
                patient.age, study.admitting_diagnosis, s.manufacturer, s.model, s.software,
                s.image_count, v4_date(s.max_submission), s.license_name, s.license_uri,
                s.description_uri, s.file_size, s.released_status, v4_date(s.date_released),
                study.description, day, s.third_party, 1]

    def _patient_row_v4(self, archive: Archive, key: tuple[str, str]) -> list:
        p = archive.patients[key]
        return [p.patient_id, p.name, p.sex, p.ethnic_group, p.collection, p.phantom,
                p.species_code, p.species_description, 1]

    def _study_row_v4(self, archive: Archive, study_uid: str, count: int) -> list:
        study = archive.studies[study_uid]
        p = archive.patients[(study.patient_id, study.collection)]
        return [study.uid, study.day.strftime("%m-%d-%Y"), study.description,
                study.admitting_diagnosis, study.study_id, p.age, p.patient_id, p.name, p.sex,
                p.ethnic_group, study.collection, count, None, None, 1]

    @staticmethod
    def _visible(archive: Archive, **filters) -> list[Series]:
        """Visible series matching case-insensitive text filters and exact UID filters."""
        with archive.lock:
            return [s for s in archive.series.values() if s.visible
                    and _ci(s.collection, filters.get("Collection"))
                    and _ci(s.patient_id, filters.get("PatientID"))
                    and _ci(s.modality, filters.get("Modality"))
                    and _ci(s.body_part, filters.get("BodyPartExamined"))
                    and _ci(s.manufacturer, filters.get("Manufacturer"))
                    and _ci(s.model, filters.get("ManufacturerModelName"))
                    and _exact(s.study_uid, filters.get("StudyInstanceUID"))
                    and _exact(s.uid, filters.get("SeriesInstanceUID"))]

    def _values(self, archive: Archive, attribute: str, params: dict,
                upper: bool = False) -> list[list]:
        values = dict.fromkeys(getattr(s, attribute).upper() if upper else getattr(s, attribute)
                               for s in self._visible(archive, **params))
        return [[v] for v in values if v is not None]

    # --- v4 handlers --------------------------------------------------------------------

    # --- the V4Backend the shape's routes read -------------------------------------------

    def collections(self) -> list[str]:
        return self.archive.collections()

    def series_rows(self, filters: dict[str, str]) -> list[list]:
        with self.archive.lock:
            return [self._series_row_v4(s) for s in self._visible(self.archive, **filters)]

    def patient_rows(self, collection: str | None, patient_id: str | None) -> list[list]:
        with self.archive.lock:
            series = self._visible(self.archive, Collection=collection, PatientID=patient_id)
            return [self._patient_row_v4(self.archive, k) for k in self._patient_keys(series)]

    def study_rows(self, filters: dict[str, str]) -> list[list]:
        with self.archive.lock:
            return self._study_rows(self._visible(self.archive, **filters))

    def series_size(self, uid: str) -> list | None:
        with self.archive.lock:
            s = self._listed(uid)
            return [s.file_size, s.image_count] if s else None

    def sop_uids(self, uid: str) -> list[str] | None:
        with self.archive.lock:
            s = self._listed(uid)
            return list(s.images) if s else None

    def series_zip(self, uid: str, new_names: bool) -> SeriesZip | None:
        with self.archive.lock:
            s = self._listed(uid)
            if s is None:
                return None
            images = list(s.images.values())
            license_text = self._license(s)
        return SeriesZip(license_text, [(name, image.data) for name, image in zip(
            entry_names(images, new_names), ordered(images, new_names), strict=True)])

    def single_image(self, series_uid: str, sop_uid: str) -> Response | None:
        with self.archive.lock:
            s = self._listed(series_uid)
            image = s.images.get(sop_uid) if s else None
        return single_image_response(image.sop_uid, image.data) if image else None

    def series_md5(self, uid: str) -> str:
        return self.archive.series_md5(uid)

    def study_md5(self, uid: str) -> str:
        return self.archive.study_md5(uid)

    def patient_md5(self, patient_id: str, collection: str | None) -> str:
        return self.archive.patient_md5(patient_id, collection)

    def collection_md5(self, collection: str) -> str:
        return self.archive.collection_md5_served(collection)

    # --- v4 handlers only the sandbox has ------------------------------------------------

    @staticmethod
    def _patient_keys(series: list[Series]) -> list[tuple[str, str]]:
        return list(dict.fromkeys((s.patient_id, s.collection) for s in series))

    def _released_since(self, params: dict, strict: bool) -> list[Series] | None:
        since = parse_v4_date(params.get("fromDate", "01-01-1900"))
        if since is None:
            return None
        series = self._visible(self.archive, Collection=params.get("Collection"),
                               PatientID=params.get("PatientID"))
        return [s for s in series if s.date_released is not None
                and (s.date_released > since if strict else s.date_released >= since)]

    def v4_new_patients(self, params: dict) -> Response:
        """Patients owning a visible series released on or after ``fromDate`` (old ones too)."""
        self._require(params, "Collection", "fromDate")
        with self.archive.lock:
            series = self._released_since(params, strict=False) or []
            rows = [self._patient_row_v4(self.archive, k)
                    for k in self._patient_keys(series)]
        return format_rows(params.get("format"), V4_PATIENT_COLUMNS, rows)

    def _study_rows(self, series: list[Series]) -> list[list]:
        counts: dict[str, int] = {}
        for s in series:
            counts[s.study_uid] = counts.get(s.study_uid, 0) + 1
        return [self._study_row_v4(self.archive, uid, n) for uid, n in counts.items()]

    def v4_new_studies(self, params: dict) -> Response:
        """``SeriesCount`` counts only the series that pass the date filter."""
        self._require(params, "Collection", "fromDate")
        with self.archive.lock:
            rows = self._study_rows(self._released_since(params, strict=False) or [])
        return format_rows(params.get("format"), V4_STUDY_COLUMNS, rows)

    def v4_updated_series(self, params: dict) -> Response:
        """``date_released > fromDate 00:00`` over every collection (strict)."""
        with self.archive.lock:
            rows = [self._series_row_v4(s) for s in self._released_since(params, strict=True)
                    or []]
        return format_rows(params.get("format"), V4_SERIES_COLUMNS, rows)

    def _listed(self, uid: str) -> Series | None:
        series = self.archive.get_series(uid)
        return series if series is not None and series.visible else None

    def v4_image(self, params: dict) -> Response:
        uid, new_names, include_md5 = self.image_options(params)
        case = self.hostile.get(uid)
        if case is None:
            return super().v4_image(params)
        with self.archive.lock:
            s = self._listed(uid)
        series_zip = self.series_zip(uid, new_names)
        if s is None or series_zip is None:
            raise not_granted(uid)
        if case == "htmlzip":  # a proxy's error page where the zip should be, status 200
            return Response.text(PROXY_HTML, 200, "text/html")
        response = zip_response(uid, iter(()))
        response.chunks = None  # the hostile zips are the sandbox's own (server.py streams)
        response.stream = _zip_stream(series_zip.license_text, series_zip.entries,
                                      include_md5, case, s)
        return response

    def _license(self, s: Series) -> str:
        return LICENSE_TEMPLATE.format(collection=s.collection, name=s.license_name,
                                       uri=s.license_uri, doi=s.description_uri)

    def v4_image_md5(self, params: dict) -> Response:
        self._require(params, "SOPInstanceUID")
        with self.archive.lock:
            for s in self.archive.series.values():
                image = s.images.get(params["SOPInstanceUID"])
                if image is not None:
                    return Response.text(image.md5)
        return Response(200, b"", {})

    def v4_series_metadata(self, params: dict) -> Response:
        """POST form ``list`` (comma-joined UIDs, as tcia_utils sends); CSV by default."""
        self._require(params, "list")
        wanted = dict.fromkeys(u.strip() for u in params["list"].split(",") if u.strip())
        rows = []
        with self.archive.lock:
            for uid in wanted:
                s = self._listed(uid)
                if s is None:
                    continue
                study, p = self._context(self.archive, s)
                day = study.day.strftime("%m-%d-%Y")
                rows.append([
                    p.patient_id, p.name, p.sex, p.ethnic_group, p.phantom, p.species_code,
                    p.species_description, s.study_uid, day, study.description,
                    study.admitting_diagnosis, study.study_id, p.age, None, None, s.uid,
                    s.collection, s.site, s.modality, s.protocol, day, s.description,
                    s.body_part, s.number, s.annotations_flag, s.manufacturer, s.model,
                    s.pixel_spacing, s.slice_thickness, s.software, s.image_count,
                    v4_date(s.max_submission), s.license_name, s.license_uri,
                    s.description_uri, s.file_size, s.released_status,
                    v4_date(s.date_released), s.third_party, 1])
        return format_rows(params.get("format", "CSV-DOWNLOAD"), V4_METADATA_COLUMNS, rows)

    # --- v3 (Bindaas) handlers: the frozen snapshot, [] for no rows, YYYY-MM-DD dates -----

    def _v3(self, params: dict, columns: list[str], rows: list[list]) -> Response:
        return format_rows(params.get("format"), columns, rows, empty="bindaas")

    def v3_collections(self, params: dict) -> Response:
        return self._v3(params, ["Collection"], [[c] for c in self.frozen.collections()])

    def v3_modalities(self, params: dict) -> Response:
        return self._v3(params, ["Modality"],
                        self._values(self.frozen, "modality", _filters(params)))

    def v3_body_parts(self, params: dict) -> Response:
        return self._v3(params, ["BodyPartExamined"],
                        self._values(self.frozen, "body_part",
                                     _filters(params), upper=True))

    def v3_manufacturers(self, params: dict) -> Response:
        return self._v3(params, ["Manufacturer"],
                        self._values(self.frozen, "manufacturer",
                                     _filters(params)))

    def _v3_patient_rows(self, series: list[Series]) -> list[list]:
        rows = []
        for key in self._patient_keys(series):
            p = self.frozen.patients[key]
            rows.append([p.patient_id, p.name, None, p.sex, p.ethnic_group, p.collection])
        return rows

    def v3_patients(self, params: dict) -> Response:
        series = self._visible(self.frozen, Collection=params.get("Collection"))
        return self._v3(params, V3_PATIENT_COLUMNS, self._v3_patient_rows(series))

    def v3_patients_by_modality(self, params: dict) -> Response:
        self._require(params, "Collection", "Modality")
        series = self._visible(self.frozen, Collection=params["Collection"],
                               Modality=params["Modality"])
        return self._v3(params, ["PatientID"],
                        [[pid] for pid, _ in self._patient_keys(series)])

    def _v3_study_rows(self, series: list[Series]) -> list[list]:
        counts: dict[str, int] = {}
        for s in series:
            counts[s.study_uid] = counts.get(s.study_uid, 0) + 1
        rows = []
        for uid, n in counts.items():
            study = self.frozen.studies[uid]
            p = self.frozen.patients[(study.patient_id, study.collection)]
            rows.append([uid, study.day.isoformat(), study.description,
                         study.admitting_diagnosis, study.study_id, p.age, p.patient_id, p.name,
                         p.sex, p.ethnic_group, study.collection, n])
        return rows

    def v3_studies(self, params: dict) -> Response:
        return self._v3(params, V3_STUDY_COLUMNS,
                        self._v3_study_rows(self._visible(self.frozen, **_filters(params))))

    def v3_series(self, params: dict) -> Response:
        rows = []
        for s in self._visible(self.frozen, **_filters(params)):
            study = self.frozen.studies[s.study_uid]
            rows.append([s.patient_id, s.collection, s.study_uid, s.uid, s.modality,
                         s.protocol, study.day.isoformat(), s.description, s.body_part,
                         s.number, s.annotations_flag, s.manufacturer, s.model, s.software,
                         s.image_count])
        return self._v3(params, V3_SERIES_COLUMNS, rows)

    def _v3_listed(self, uid: str) -> Series | None:
        s = self.frozen.series.get(uid)
        return s if s is not None and s.visible else None

    def v3_series_size(self, params: dict) -> Response:
        self._require(params, "SeriesInstanceUID")
        s = self._v3_listed(params["SeriesInstanceUID"])
        rows = [[s.file_size, s.image_count]] if s else [[None, 0]]  # Bindaas: no size key
        return self._v3(params, ["TotalSizeInBytes", "ObjectCount"], rows)

    def v3_sop_uids(self, params: dict) -> Response:
        # The key is reported as lower-case ``sop_instance_uid`` (unverified, research §1.8).
        self._require(params, "SeriesInstanceUID")
        s = self._v3_listed(params["SeriesInstanceUID"])
        return self._v3(params, ["sop_instance_uid"], [[sop] for sop in s.images] if s else [])

    def v3_image(self, params: dict) -> Response:
        """Bindaas: an unknown series "may still successfully return an empty zip file"."""
        self._require(params, "SeriesInstanceUID")
        s = self._v3_listed(params["SeriesInstanceUID"])
        images = list(s.images.values()) if s else []
        entries = [(f"{i:06d}.dcm", image.data) for i, image in enumerate(images, 1)]
        headers = {"Content-Type": "application/zip",
                   "Content-Disposition": 'attachment; filename="bindaas-blob-download.zip"'}
        return Response(200, b"", headers, stream=_zip_stream(None, entries, False, None, s))

    def v3_single_image(self, params: dict) -> Response:
        self._require(params, "SeriesInstanceUID")
        self._require(params, "SOPInstanceUID")
        s = self._v3_listed(params["SeriesInstanceUID"])
        image = s.images.get(params["SOPInstanceUID"]) if s else None
        if image is None:
            return Response.text("Not Found", 404)
        return Response(200, image.data, {
            "Content-Type": "application/dicom",
            "Content-Disposition": f'attachment; filename="{image.instance_number}.dcm"'})

    def _v3_since(self, params: dict) -> list[Series]:
        self._require(params, "Date", "Collection")
        try:
            since = datetime.strptime(params["Date"], "%Y-%m-%d")
        except ValueError:
            raise BadRequest(400, f"Date {params['Date']!r} must be YYYY-MM-DD") from None
        series = self._visible(self.frozen, Collection=params["Collection"],
                               PatientID=params.get("PatientID"))
        return [s for s in series if s.date_released is not None and s.date_released >= since]

    def v3_new_patients(self, params: dict) -> Response:
        return self._v3(params, V3_PATIENT_COLUMNS, self._v3_patient_rows(self._v3_since(params)))

    def v3_new_studies(self, params: dict) -> Response:
        return self._v3(params, V3_STUDY_COLUMNS, self._v3_study_rows(self._v3_since(params)))


def _filters(params: dict) -> dict:
    return {k: v for k, v in params.items() if k != "format"}


def _hostile_entries(case: str, entries: list[tuple[str, bytes]],
                     series: Series) -> list[tuple[str, bytes]]:
    entries = list(entries)
    name, data = entries[0]
    if case == "dotdot":
        entries[0] = ("../" + name, data)
    elif case == "absolute":
        entries[0] = ("/tmp/" + name, data)
    elif case == "bomb":
        entries[-1] = (entries[-1][0], data[:132] + b"\x00" * BOMB_SIZE)
    elif case == "duplicate" and len(entries) > 1:
        entries[1] = (entries[1][0], data)  # a second file with the first's SOPInstanceUID
    elif case == "nondicom":
        entries[-1] = (entries[-1][0], HTML_ENTRY)
    elif case == "changing":  # an instance submitted after the client listed the series
        from mirror.sources.dicom import make_instance, uid_for

        extra = make_instance(series.template, patient_id=series.patient_id,
                              study_uid=series.study_uid, series_uid=series.uid,
                              sop_uid=uid_for(series.uid, "late"), instance_number=999)
        entries.append((f"{len(entries) + 1:08d}.dcm", extra))
    return entries


def _zip_stream(license_text: str | None, entries: list[tuple[str, bytes]], include_md5: bool,
                case: str | None, series: Series | None) -> Callable:
    """A writer of the zip as ``ZipOutputStream`` streams it (the shape's
    :func:`~mirror.sources.tcia.shape.zip_chunks`), corrupted by a hostile ``case``."""
    if case is not None and series is not None:
        entries = _hostile_entries(case, entries, series)

    def tamper(rows: list[tuple[str, str]]) -> None:
        if case == "md5":
            rows[0] = (rows[0][0], md5_hex(b"not these bytes"))

    def write(out) -> None:
        target = _Cut(out) if case == "truncated" else out
        for chunk in zip_chunks(SeriesZip(license_text, list(entries)), include_md5, tamper):
            if chunk:
                target.write(chunk)
        if isinstance(target, _Cut):
            target.finish()

    return write


class _Cut:
    """Keeps the first ~60% of what is written: a zip without its central directory that
    the server still ends cleanly (status 200, a complete chunked body)."""

    def __init__(self, out):
        self.out, self.buffer = out, bytearray()

    def write(self, data: bytes) -> int:
        self.buffer += data
        return len(data)

    def flush(self) -> None:
        pass

    def finish(self) -> None:
        self.out.write(bytes(self.buffer[:len(self.buffer) * 3 // 5]))

