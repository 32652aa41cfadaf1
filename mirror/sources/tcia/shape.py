"""The shape of NBIA's REST API v4: routes, parameter checks, JSON/CSV rows, zips, errors.

One route table serves two faces: the TCIA sandbox (a synthetic archive, for tests and
demos) and ``mirror serve`` (a synced mirror, for a lab). What differs is only where rows
and bytes come from, a :class:`V4Backend`; everything a client can see is decided here
once: which parameters each endpoint accepts (``Invalid query parameter: ...`` 400 texts,
checked before anything else, as every ``V4_*.java`` does), the ``A parameter, X is
required`` 400s, 200 with an empty body for no rows, null keys dropped, ``MM-DD-YYYY``
dates, the series zip (``LICENSE`` first, ``%08d.dcm`` entries, ``md5hashes.csv`` last)
and ``getMD5Hierarchy``'s "last field that applies wins" (research notes
``tcia_idc.md`` §1, ``tcia_idc_changes.md`` C1).
"""

from __future__ import annotations

import hashlib
import logging
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol
from urllib.parse import parse_qsl

from mirror.sources.tcia.client import SERIES_COLUMNS
from mirror.sources.tcia.formats import SERVER_ERROR, Response, format_rows

log = logging.getLogger("mirror.tcia.shape")
API_ROOT = "/nbia-api/services/v4"
V4_SERIES_COLUMNS = SERIES_COLUMNS
V4_PATIENT_COLUMNS = ["PatientId", "PatientName", "PatientSex", "EthnicGroup", "Collection",
                      "Phantom", "SpeciesCode", "SpeciesDescription", "Authorized"]
V4_STUDY_COLUMNS = [
    "StudyInstanceUID", "StudyDate", "StudyDescription", "AdmittingDiagnosesDescription",
    "StudyID", "PatientAge", "PatientID", "PatientName", "PatientSex", "EthnicGroup",
    "Collection", "SeriesCount", "LongitudinalTemporalEventType",
    "LongitudinalTemporalOffsetFromEvent", "Authorized"]
SERIES_FILTERS = ["Collection", "PatientID", "StudyInstanceUID", "SeriesInstanceUID",
                  "Modality", "BodyPartExamined", "Manufacturer", "ManufacturerModelName"]
UID_FILTERS = ("StudyInstanceUID", "SeriesInstanceUID")
"""Compared exactly; the other filters ignore case (NBIA's ``upper(...) = upper(:x)``)."""
MD5_FORM_FIELDS = ["SeriesInstanceUID", "StudyInstanceUID", "PatientID", "Collection"]
ZIP_TIME = (1980, 1, 1, 0, 0, 0)
READ_CHUNK = 1 << 20  # bytes read from a stored instance at a time
PROXY_HTML = ("<html><head><title>Maintenance</title></head><body><h1>The service is "
              "temporarily unavailable</h1><p>Please try again later.</p></body></html>")
NOT_FOUND_HTML = ("<!doctype html><html lang=\"en\"><head><title>HTTP Status 404 – Not Found"
                  "</title></head><body><h1>HTTP Status 404 – Not Found</h1></body></html>")
METHOD_NOT_ALLOWED_HTML = ("<!doctype html><html lang=\"en\"><head><title>HTTP Status 405 – "
                           "Method Not Allowed</title></head><body><h1>HTTP Status 405 – "
                           "Method Not Allowed</h1></body></html>")


class BadRequest(Exception):
    def __init__(self, status: int, message: str, content_type: str = "application/json"):
        super().__init__(message)
        self.status, self.content_type = status, content_type


def v4_date(value: datetime | None) -> str | None:
    return value.strftime("%m-%d-%Y") if value is not None else None


def parse_v4_date(value: str) -> datetime | None:
    """``STR_TO_DATE(:d, '%m-%d-%Y')``: NULL (no rows) when it does not parse."""
    try:
        return datetime.strptime(value.strip(), "%m-%d-%Y")
    except ValueError:
        return None


def md5_hex(data: bytes | str) -> str:
    if isinstance(data, str):
        data = data.encode()
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def row_matches(row: Mapping[str, object], filters: Mapping[str, str]) -> bool:
    """A ``getSeries`` row against the series filters given (UIDs exact, text any case)."""
    for name, wanted in filters.items():
        value = row.get(name)
        if name in UID_FILTERS:
            if value != wanted:
                return False
        elif str(value or "").upper() != wanted.upper():
            return False
    return True


def series_filters(params: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in params.items() if k in SERIES_FILTERS}


@dataclass
class SeriesZip:
    """What ``getImage`` zips: the collection's licence text (None: no ``LICENSE`` entry)
    and the instances as ``(entry name, bytes or stored file)`` in entry order."""

    license_text: str | None
    entries: list[tuple[str, bytes | Path]]


class V4Backend(Protocol):
    """Where an NBIA v4 face gets its rows and bytes. Only visible (listed) series count;
    an unknown series is None (or no rows)."""

    def collections(self) -> list[str]: ...
    def series_rows(self, filters: dict[str, str]) -> list[list]: ...
    def patient_rows(self, collection: str | None, patient_id: str | None) -> list[list]: ...
    def study_rows(self, filters: dict[str, str]) -> list[list]: ...
    def series_size(self, uid: str) -> list | None: ...
    def sop_uids(self, uid: str) -> list[str] | None: ...
    def series_zip(self, uid: str, new_names: bool) -> SeriesZip | None: ...
    def single_image(self, series_uid: str, sop_uid: str) -> Response | None: ...
    def series_md5(self, uid: str) -> str: ...
    def study_md5(self, uid: str) -> str: ...
    def patient_md5(self, patient_id: str, collection: str | None) -> str: ...
    def collection_md5(self, collection: str) -> str: ...


@dataclass
class Route:
    handler: Callable[[dict[str, str]], Response]
    allowed: list[str]
    method: str = "GET"


class _Sink:
    """What :class:`zipfile.ZipFile` writes, taken out piece by piece (not seekable: the
    entries get data descriptors, as ``ZipOutputStream`` writes them)."""

    def __init__(self):
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        data = b"".join(self.parts)
        self.parts.clear()
        return data


def _read(source: bytes | Path) -> Iterator[bytes]:
    if isinstance(source, bytes | bytearray):
        yield bytes(source)
        return
    with open(source, "rb") as f:
        while chunk := f.read(READ_CHUNK):
            yield chunk


def zip_chunks(series_zip: SeriesZip, include_md5: bool,
               tamper: Callable[[list[tuple[str, str]]], None] | None = None
               ) -> Iterator[bytes]:
    """The series zip as NBIA streams it, piece by piece, in bounded memory: ``LICENSE``
    first, the instances, ``md5hashes.csv`` last (rows in a hash-map-like order: neither
    zip nor name order). ``tamper`` may change the MD5 rows (the sandbox's hostile case)."""
    sink = _Sink()
    rows: list[tuple[str, str]] = []
    with zipfile.ZipFile(sink, "w", zipfile.ZIP_DEFLATED) as z:
        if series_zip.license_text is not None:
            z.writestr("LICENSE", series_zip.license_text)
        for name, source in series_zip.entries:
            info = zipfile.ZipInfo(name, ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            digest = hashlib.md5(usedforsecurity=False)
            with z.open(info, "w") as out:
                for chunk in _read(source):
                    digest.update(chunk)
                    out.write(chunk)
                    yield sink.take()
            rows.append((name, digest.hexdigest()))
        if include_md5:
            if tamper is not None:
                tamper(rows)
            rows.sort(key=lambda row: md5_hex(row[0]))
            z.writestr(zipfile.ZipInfo("md5hashes.csv", ZIP_TIME),
                       "Filename,MD5Hash\n" + "".join(f"{n},{h}\n" for n, h in rows))
    yield sink.take()


def zip_response(uid: str, chunks: Iterator[bytes]) -> Response:
    """``getImage``'s reply: a streamed body (no Content-Length) named ``<uid>.zip``."""
    headers = {"Content-Type": "application/octet-stream",
               "Content-Disposition": f'attachment; filename="{uid}.zip"'}

    def stream(out) -> None:
        for chunk in chunks:
            if chunk:
                out.write(chunk)

    return Response(200, b"", headers, stream=stream, chunks=(c for c in chunks if c))


def require(params: Mapping[str, str], *names: str, comma: bool = False) -> None:
    for name in names:
        if name not in params:
            sep = "," if comma else ""
            raise BadRequest(400, f"A parameter, {name}{sep} is required for this API call.")


def not_granted(uid: str) -> BadRequest:
    return BadRequest(400, "The user has not been granted the access to image with given "
                      f"SeriesInstanceUID,{uid}. Please contact System Admin to resolve this "
                      "issue.")


class V4Api:
    """Routes NBIA v4 requests (the part after ``/nbia-api/services/v4/``) to handlers over
    one :class:`V4Backend`. A face adds its own routes to :attr:`v4`."""

    methods = ("GET", "HEAD", "POST")  # what mirror serve routes here (getMD5Hierarchy)

    def __init__(self, backend: V4Backend):
        self.backend = backend
        self.v4: dict[str, Route] = {
            "getCollectionValues": Route(self.v4_collections, ["format"]),
            "getModalityValues": Route(self.v4_modalities,
                                       ["Collection", "BodyPartExamined", "format"]),
            "getBodyPartValues": Route(self.v4_body_parts, ["Collection", "Modality", "format"]),
            "getManufacturerValues": Route(self.v4_manufacturers,
                                           ["Collection", "Modality", "BodyPartExamined",
                                            "format"]),
            "getPatient": Route(self.v4_patients, ["Collection", "PatientId", "format"]),
            "getPatientByCollectionAndModality": Route(self.v4_patients_by_modality,
                                                       ["Collection", "Modality", "format"]),
            "getPatientStudy": Route(self.v4_studies,
                                     ["Collection", "PatientID", "StudyInstanceUID", "format"]),
            "getSeries": Route(self.v4_series, [*SERIES_FILTERS, "format"]),
            "getSeriesSize": Route(self.v4_series_size, ["SeriesInstanceUID", "format"]),
            "getSOPInstanceUIDs": Route(self.v4_sop_uids, ["SeriesInstanceUID", "format"]),
            "getImage": Route(self.v4_image, ["SeriesInstanceUID", "NewFileNames", "IncludeMD5"]),
            "getImageWithMD5Hash": Route(self.v4_image_with_md5, ["SeriesInstanceUID"]),
            "getSingleImage": Route(self.v4_single_image,
                                    ["SeriesInstanceUID", "SOPInstanceUID"]),
            "getMD5Hierarchy": Route(self.v4_md5_hierarchy, MD5_FORM_FIELDS, "POST"),
        }

    # --- dispatch -----------------------------------------------------------------------

    def before(self, endpoint: str, params: dict[str, str]) -> Response | None:
        """A face's chance to answer first (the sandbox's hostile listings); None: go on."""
        return None

    def unknown(self, endpoint: str) -> Response:
        return Response.text(NOT_FOUND_HTML, 404, "text/html")

    def route_v4(self, method: str, endpoint: str, params: dict[str, str],
                 names: list[str]) -> Response:
        """One request: ``params`` the first value of each name, ``names`` every name given
        (in order: the first unknown one is named in the 400)."""
        route = self.v4.get(endpoint)
        if route is None:
            return self.unknown(endpoint)
        if method != route.method:
            return Response.text(METHOD_NOT_ALLOWED_HTML, 405, "text/html")
        kind = "form" if route.method == "POST" else "query"
        for name in names:  # every V4_*.java checks before anything else
            if name not in route.allowed:
                return Response.text(f"Invalid {kind} parameter: '{name}'. Allowed parameters "
                                     f"are: [{', '.join(route.allowed)}]", 400)
        first = self.before(endpoint, params)
        if first is not None:
            return first
        try:
            return route.handler({k: v for k, v in params.items() if v != ""})
        except BadRequest as err:
            return Response.text(str(err), err.status, err.content_type)

    def handle(self, method: str, path: str, query: str, headers: Mapping[str, str],
               body: bytes = b"") -> tuple[str, Response]:
        """One request below :data:`API_ROOT` as ``mirror serve`` passes it: (pattern,
        response). A POST's parameters are its form body, a GET's its query (JAX-RS
        ``@QueryParam`` takes the first value); an unexpected exception is NBIA's 500."""
        endpoint = path.lstrip("/")
        raw = body.decode("utf-8", "replace") if method == "POST" else query
        pairs = parse_qsl(raw, keep_blank_values=True)
        params: dict[str, str] = {}
        for key, value in pairs:
            params.setdefault(key, value)
        try:
            response = self.route_v4(method, endpoint, params,
                                     list(dict.fromkeys(k for k, _ in pairs)))
        except Exception as exc:  # noqa: BLE001 - NBIA's UncaughtException mapper
            log.exception("error on %s", path)
            response = Response.text(f"{SERVER_ERROR}\n{exc}", 500)
        return f"{method} v4/{endpoint}", response

    # --- handlers -----------------------------------------------------------------------

    def v4_collections(self, params: dict) -> Response:
        return format_rows(params.get("format"), ["Collection"],
                           [[c] for c in self.backend.collections()])

    def _distinct(self, column: str, params: dict, upper: bool = False) -> list[list]:
        """The distinct non-null ``column`` of the visible series the filters match."""
        at = V4_SERIES_COLUMNS.index(column)
        values = dict.fromkeys(
            (row[at].upper() if upper and isinstance(row[at], str) else row[at])
            for row in self.backend.series_rows(series_filters(params)))
        return [[v] for v in values if v is not None]

    def v4_modalities(self, params: dict) -> Response:
        return format_rows(params.get("format"), ["Modality"], self._distinct("Modality", params))

    def v4_body_parts(self, params: dict) -> Response:
        return format_rows(params.get("format"), ["BodyPartExamined"],
                           self._distinct("BodyPartExamined", params, upper=True))

    def v4_manufacturers(self, params: dict) -> Response:
        return format_rows(params.get("format"), ["Manufacturer"],
                           self._distinct("Manufacturer", params))

    def v4_patients_by_modality(self, params: dict) -> Response:
        require(params, "Collection", "Modality")
        at = V4_SERIES_COLUMNS.index("PatientID")
        filters = {"Collection": params["Collection"], "Modality": params["Modality"]}
        patients = dict.fromkeys(row[at] for row in self.backend.series_rows(filters))
        return format_rows(params.get("format"), ["PatientId", "Authorized"],
                           [[pid, 1] for pid in patients])

    def v4_patients(self, params: dict) -> Response:
        rows = self.backend.patient_rows(params.get("Collection"), params.get("PatientId"))
        return format_rows(params.get("format"), V4_PATIENT_COLUMNS, rows)

    def v4_studies(self, params: dict) -> Response:
        rows = self.backend.study_rows(series_filters(params))
        return format_rows(params.get("format"), V4_STUDY_COLUMNS, rows)

    def v4_series(self, params: dict) -> Response:
        rows = self.backend.series_rows(series_filters(params))
        return format_rows(params.get("format"), V4_SERIES_COLUMNS, rows)

    def v4_series_size(self, params: dict) -> Response:
        # Visible series only (the DAO filters authorized = 1; hidden series are treated
        # like unknown ones, the same as in getSeries and getImage).
        require(params, "SeriesInstanceUID")
        row = self.backend.series_size(params["SeriesInstanceUID"])
        return format_rows(params.get("format"), ["TotalSizeInBytes", "ObjectCount"],
                           [row] if row else [])

    def v4_sop_uids(self, params: dict) -> Response:
        require(params, "SeriesInstanceUID")
        sops = self.backend.sop_uids(params["SeriesInstanceUID"]) or []
        return format_rows(params.get("format"), ["SOPInstanceUID"], [[s] for s in sops])

    @staticmethod
    def image_options(params: dict) -> tuple[str, bool, bool]:
        """(SeriesInstanceUID, NewFileNames=Yes, IncludeMD5=Yes) of a ``getImage``."""
        require(params, "SeriesInstanceUID", comma=True)
        return (params["SeriesInstanceUID"], params.get("NewFileNames", "").lower() == "yes",
                params.get("IncludeMD5", "").lower() == "yes")

    def v4_image(self, params: dict) -> Response:
        uid, new_names, include_md5 = self.image_options(params)
        series_zip = self.backend.series_zip(uid, new_names)
        if series_zip is None:
            raise not_granted(uid)
        return zip_response(uid, zip_chunks(series_zip, include_md5))

    def v4_image_with_md5(self, params: dict) -> Response:
        """``V4_getImageWithMD5Hash.java`` (what tcia_utils asks with ``hash="y"``): the
        ``%08d.dcm`` entries and ``md5hashes.csv``, no ``LICENSE``."""
        uid, _, _ = self.image_options(params)
        series_zip = self.backend.series_zip(uid, False)
        if series_zip is None:
            raise not_granted(uid)
        return zip_response(uid, zip_chunks(SeriesZip(None, series_zip.entries), True))

    def v4_single_image(self, params: dict) -> Response:
        require(params, "SeriesInstanceUID")
        require(params, "SOPInstanceUID")
        found = self.backend.single_image(params["SeriesInstanceUID"], params["SOPInstanceUID"])
        if found is None:  # the DAO returns null and the handler throws
            return Response.text(f"{SERVER_ERROR}\njava.lang.NullPointerException", 500)
        return found

    def v4_md5_hierarchy(self, params: dict) -> Response:
        """Every field is evaluated in turn and the last that applies wins (research note
        ``tcia_idc_changes.md`` C1); the collection level is the backend's stored value."""
        md5 = ""
        b = self.backend
        if "SeriesInstanceUID" in params:
            md5 = b.series_md5(params["SeriesInstanceUID"])
        if "StudyInstanceUID" in params:
            md5 = b.study_md5(params["StudyInstanceUID"])
        if "PatientID" in params:
            md5 = b.patient_md5(params["PatientID"], params.get("Collection"))
        elif "Collection" in params:
            md5 = b.collection_md5(params["Collection"])
        return Response.text(md5) if md5 else Response(200, b"", {"Content-Type": "text/plain"})


def single_image_response(sop_uid: str, data: bytes | Path, sha256: str | None = None
                          ) -> Response:
    """``getSingleImage``'s reply: the instance as ``application/dicom``."""
    headers = {"Content-Type": "application/dicom",
               "Content-Disposition": f"attachment; filename={sop_uid}.dcm"}
    if isinstance(data, Path):
        return Response(200, b"", headers, path=data, sha256=sha256)
    return Response(200, data, headers)


def combine(hashes: Iterable[str]) -> str:
    """NBIA's ``getMD5Hierarchy`` step: md5 of the sorted, non-empty child hashes, or ""."""
    joined = "".join(sorted(h for h in hashes if h))
    return md5_hex(joined) if joined else ""


def ordered(images: list, new_names: bool) -> list:
    """The instances in zip order; each has ``instance_number`` and ``acquisition_number``."""
    # ImageDTO2.compareTo compares instance numbers for both keys (a bug kept as is)
    return sorted(images, key=lambda i: i.instance_number) if new_names else images


def entry_names(images: list, new_names: bool) -> list[str]:
    """``%08d.dcm`` in database order, or ``<acquisition group>-<index>.dcm``."""
    if not new_names:
        return [f"{n:08d}.dcm" for n in range(1, len(images) + 1)]
    groups: list[list] = []
    for image in ordered(images, True):
        if not groups or groups[-1][-1].acquisition_number != image.acquisition_number:
            groups.append([])
        groups[-1].append(image)
    width_a = len(str(len(groups)))
    names = []
    for a, group in enumerate(groups, 1):
        width_i = len(str(len(group)))
        names.extend(f"{a:0{width_a}d}-{i:0{width_i}d}.dcm" for i in range(1, len(group) + 1))
    return names
