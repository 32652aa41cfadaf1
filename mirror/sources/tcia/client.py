"""TCIA endpoint access: NBIA v4 (primary) and Bindaas v3 (legacy), over :class:`HttpClient`.

Only transport and NBIA's quirks live here, so the source class can reason in rows:
an empty 200 body means "no rows" (``[]``); a JSON body that is not a list of objects, or
HTML from a proxy with status 200, is an :class:`IntegrityError` and retried like a short
body; a 400 carries NBIA's text and is not retried; dates go out as ``MM-DD-YYYY``.
Series zips are downloaded whole before anything is unpacked (their central directory
comes last): in memory up to a limit, else to a temporary file next to where they will be
unpacked; retried when cut short, then verified and unpacked by
:func:`mirror.sources.dicom.safe_unpack_zip` or the source's own reader loop.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import zipfile
from collections.abc import Iterable
from datetime import date, datetime
from pathlib import Path
from typing import BinaryIO

import requests

from mirror.errors import ArchiveError, IntegrityError, SeriesZipError
from mirror.sources.dicom import (
    ZIP_MAX_TOTAL,
    InstanceSink,
    SeriesZip,
    is_dicom,
    safe_unpack_zip,
)
from mirror.sources.http import HttpClient, parse_json
from mirror.sources.tcia.spec import BINDAAS_V3_URL, NBIA_V4_URL

log = logging.getLogger("mirror.tcia")

DOWNLOAD_CHUNK = 1 << 20
MD5_OR_EMPTY = re.compile(r"([0-9a-f]{32})?")
SERIES_COLUMNS = [
    "SeriesInstanceUID", "StudyInstanceUID", "Modality", "ProtocolName", "SeriesDate",
    "SeriesDescription", "BodyPartExamined", "SeriesNumber", "AnnotationsFlag", "Collection",
    "Site", "PatientID", "PatientSex", "PatientAge", "AdmittingDiagnosisDescription",
    "Manufacturer", "ManufacturerModelName", "SoftwareVersions", "ImageCount",
    "MaxSubmissionTimestamp", "LicenseName", "LicenseURI", "DataDescriptionURI", "FileSize",
    "ReleasedStatus", "DateReleased", "StudyDesc", "StudyDate", "ThirdPartyAnalysis",
    "Authorized"]
"""NBIA v4 ``getSeries`` keys in the server's order (``V4_getSeries.java``); a null value's
key is left out of a row."""
SERIES_FILTERS = ("Collection", "PatientID", "StudyInstanceUID", "SeriesInstanceUID",
                  "Modality", "BodyPartExamined", "Manufacturer", "ManufacturerModelName")


def nbia_date(day: date | datetime | str) -> str:
    """``MM-DD-YYYY`` as NBIA v4 parses ``fromDate``; strings pass through unchanged."""
    return day if isinstance(day, str) else day.strftime("%m-%d-%Y")


def parse_rows(content: bytes, what: str) -> list[dict]:
    """NBIA rows from a body: ``b""`` is no rows; anything but a JSON list of objects is
    refused (an HTML page from a proxy, a body cut short)."""
    if not content.strip():
        return []
    try:
        rows = parse_json(content)  # strict and depth-bounded, as every source parses
    except ValueError as exc:
        raise IntegrityError(f"{what}: the archive sent something that is not JSON "
                             f"({exc}); retrying") from None
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise IntegrityError(f"{what}: expected a JSON list of objects, got "
                             f"{type(rows).__name__}")
    return rows


def _one_line(text: str, limit: int = 300) -> str:
    return " ".join(text.split())[:limit]


def _error_text(response: requests.Response, limit: int = 4096) -> str:
    """NBIA's error text (plain text, not JSON), one line; of a streamed body only the
    first ``limit`` bytes are read."""
    if getattr(response, "_content_consumed", False):
        raw = response.content or b""
    else:
        raw = next(response.iter_content(limit), b"")
    return _one_line(raw[:limit].decode("utf-8", "replace"))


class NbiaClient:
    """NBIA REST v4: listings, change detection (dates, MD5 hierarchy) and downloads."""

    def __init__(self, http: HttpClient, base_url: str = NBIA_V4_URL):
        self.http = http
        self.base_url = base_url.rstrip("/")

    # --- transport --------------------------------------------------------------------

    def _request_options(self) -> dict:
        """Keyword arguments every request carries besides its parameters (none for NBIA
        v4; Bindaas v3 adds its ``api_key`` header, see :mod:`.v3_source`)."""
        return {}

    def _query_params(self, params: dict) -> dict:
        """Parameters every listing sends besides its own (none for NBIA v4)."""
        return params

    def _image_params(self, series_uid: str, new_file_names: bool) -> dict:
        params = {"SeriesInstanceUID": series_uid, "IncludeMD5": "Yes"}
        if new_file_names:
            params["NewFileNames"] = "Yes"
        return params

    def _check(self, response: requests.Response, what: str) -> None:
        if response.status_code != 200:
            raise ArchiveError(f"{what} failed: HTTP {response.status_code} "
                               f"{_error_text(response)}")

    def query(self, endpoint: str, **params) -> list[dict]:
        """GET ``endpoint`` with ``params`` (None values left out) and return its rows."""
        params = self._query_params({k: v for k, v in params.items() if v is not None})
        url = f"{self.base_url}/{endpoint}"

        def fetch() -> list[dict]:
            with self.http.fetching(url, params=params or None,
                                    **self._request_options()) as response:
                self._check(response, f"GET {endpoint}")
                content = response.content
            return parse_rows(content, f"GET {endpoint}")

        return self.http.retrying(fetch, f"GET {endpoint}")

    def _post_text(self, endpoint: str, form: dict[str, str], shape: re.Pattern[str]) -> str:
        """A form POST's text body, which must have ``shape`` (a proxy's HTML page with
        200 is retried, never taken for an answer)."""
        url = f"{self.base_url}/{endpoint}"

        def post() -> str:
            response = self.http.post(url, data=form)
            try:
                self._check(response, f"POST {endpoint}")
                text = response.text.strip()
            finally:
                response.close()
            if not shape.fullmatch(text):
                raise IntegrityError(f"POST {endpoint}: unexpected answer "
                                     f"{_one_line(text, 60)!r}; retrying")
            return text

        return self.http.retrying(post, f"POST {endpoint}")

    # --- listings -----------------------------------------------------------------------

    def collections(self) -> list[str]:
        return [row["Collection"] for row in self.query("getCollectionValues")
                if "Collection" in row]

    def patients(self, collection: str) -> list[dict]:
        return self.query("getPatient", Collection=collection)

    def studies(self, collection: str, patient_id: str | None = None) -> list[dict]:
        return self.query("getPatientStudy", Collection=collection, PatientID=patient_id)

    def series(self, **filters: str) -> list[dict]:
        """``getSeries`` (30 keys, nulls left out) filtered by any of :data:`SERIES_FILTERS`."""
        unknown = set(filters) - set(SERIES_FILTERS)
        if unknown:
            raise ValueError(f"getSeries has no filter {sorted(unknown)[0]!r}; use "
                             f"{', '.join(SERIES_FILTERS)}")
        return self.query("getSeries", **filters)

    def updated_series(self, since: date | datetime | str) -> list[dict]:
        """Series released strictly after ``since`` (every collection). A hint only: it
        misses re-processing, removals, renames and licence changes."""
        return self.query("getUpdatedSeries", fromDate=nbia_date(since))

    def new_patients(self, collection: str, since: date | datetime | str) -> list[dict]:
        return self.query("NewPatientsInCollection", Collection=collection,
                          fromDate=nbia_date(since))

    def new_studies(self, collection: str, since: date | datetime | str,
                    patient_id: str | None = None) -> list[dict]:
        return self.query("NewStudiesInPatientCollection", Collection=collection,
                          PatientID=patient_id, fromDate=nbia_date(since))

    def series_size(self, series_uid: str) -> tuple[int, int] | None:
        """``(TotalSizeInBytes, ObjectCount)``, or None for an unknown or hidden series."""
        rows = self.query("getSeriesSize", SeriesInstanceUID=series_uid)
        if not rows or "TotalSizeInBytes" not in rows[0]:
            return None
        return int(rows[0]["TotalSizeInBytes"]), int(rows[0].get("ObjectCount", 0))

    def sop_uids(self, series_uid: str) -> list[str]:
        return [row["SOPInstanceUID"] for row in
                self.query("getSOPInstanceUIDs", SeriesInstanceUID=series_uid)
                if "SOPInstanceUID" in row]

    def md5_hierarchy(self, *, series: str | None = None, study: str | None = None,
                      patient: str | None = None, collection: str | None = None) -> str:
        """The archive's content hash of one scope ("" when empty or unknown).

        Give exactly one scope (a patient needs its collection too): the server evaluates
        every field and the last that applies wins, so mixing scopes is an error here.
        The collection level is refreshed by a daily job; use patient or study level for
        a live answer.
        """
        scopes = [s for s in (series, study, patient) if s is not None]
        if len(scopes) > 1 or (not scopes and collection is None):
            raise ValueError("give one of series, study, patient (with collection), or "
                             "collection")
        if patient is not None and collection is None:
            raise ValueError("a patient's hash needs its collection")
        form = {"SeriesInstanceUID": series, "StudyInstanceUID": study,
                "PatientID": patient, "Collection": collection}
        return self._post_text("getMD5Hierarchy", {k: v for k, v in form.items() if v},
                               MD5_OR_EMPTY)

    # --- downloads ----------------------------------------------------------------------

    def single_image(self, series_uid: str, sop_uid: str, max_bytes: int = 2**31) -> bytes:
        """One instance's bytes (at most ``max_bytes``), checked to be DICOM."""
        url = f"{self.base_url}/getSingleImage"
        params = {"SeriesInstanceUID": series_uid, "SOPInstanceUID": sop_uid}

        def fetch() -> bytes:
            with self.http.fetching(url, params=params, stream=True) as response:
                self._check(response, "GET getSingleImage")
                body, size = [], 0
                for chunk in response.iter_content(DOWNLOAD_CHUNK):
                    size += len(chunk)
                    if size > max_bytes:
                        raise ArchiveError(f"getSingleImage {sop_uid}: more than {max_bytes} "
                                           "bytes; refusing it")
                    body.append(chunk)
                data = b"".join(body)
            if not is_dicom(data):
                raise IntegrityError(f"getSingleImage {sop_uid}: the body is not DICOM")
            return data

        return self.http.retrying(fetch, f"GET getSingleImage {sop_uid}")

    def download_series_zip(self, series_uid: str, folder: str | os.PathLike, *,
                            new_file_names: bool = False, max_bytes: int = ZIP_MAX_TOTAL,
                            prefix: str = ".series.") -> Path:
        """``getImage?IncludeMD5=Yes`` into a temporary zip in ``folder`` (named
        ``<prefix>...zip``, so a store's temp sweeper finds leftovers); the caller deletes
        it. Retried until the zip has its central directory (a connection cut mid-stream
        still began with 200)."""

        def fetch() -> Path:
            handle, name = tempfile.mkstemp(prefix=prefix, suffix=".zip", dir=folder)
            path = Path(name)
            try:
                with os.fdopen(handle, "w+b") as out:
                    self._download_into(out, series_uid, new_file_names, max_bytes)
                return path
            except BaseException:
                path.unlink(missing_ok=True)
                raise

        return self.http.retrying(fetch, f"GET getImage {series_uid}")

    def spool_series_zip(self, series_uid: str, folder: str | os.PathLike, *,
                         max_bytes: int = ZIP_MAX_TOTAL,
                         memory_limit: int = 8 * 2**20, prefix: str = ".series.") -> BinaryIO:
        """:meth:`download_series_zip` into a spooled file the caller closes: in memory
        while the zip is at most ``memory_limit`` bytes, past that an unnamed file in
        ``folder`` (``O_TMPFILE``: nothing is left behind by a kill; where the file system
        has no ``O_TMPFILE``, a ``<prefix>`` name unlinked at once, for the sweeper).

        Most series zips are small (a few slices, a SEG, an SR); writing each to disk and
        reading it back cost a sync two file creations' worth of kernel time per series,
        and every zip read a seek and a read call."""

        def fetch() -> BinaryIO:
            out = tempfile.SpooledTemporaryFile(max_size=memory_limit, prefix=prefix,
                                                dir=folder)
            try:
                self._download_into(out, series_uid, False, max_bytes)
                return out
            except BaseException:
                out.close()
                raise

        return self.http.retrying(fetch, f"GET getImage {series_uid}")

    def _download_into(self, out: BinaryIO, series_uid: str, new_file_names: bool,
                       max_bytes: int) -> None:
        """One attempt: the zip's bytes into ``out`` (at its start), checked to be a whole
        zip (its central directory came) and not a page sent in its place."""
        url = f"{self.base_url}/getImage"
        params = self._image_params(series_uid, new_file_names)
        with self.http.fetching(url, params=params, stream=True,
                                **self._request_options()) as response:
            self._check(response, f"GET getImage {series_uid}")
            written = 0
            for chunk in response.iter_content(DOWNLOAD_CHUNK):
                written += len(chunk)
                if written > max_bytes:
                    raise SeriesZipError(f"series {series_uid}: the zip passed "
                                         f"{max_bytes} bytes; refusing it")
                out.write(chunk)
        out.flush()
        if not zipfile.is_zipfile(out):
            out.seek(0)
            head = out.read(256).lstrip().lower()
            if head.startswith((b"<", b"{")):
                raise SeriesZipError(f"series {series_uid}: the archive sent an "
                                     "HTML or JSON page instead of a zip; retrying")
            raise SeriesZipError(f"series {series_uid}: the zip is cut short (no "
                                 "central directory); retrying")
        self._complete_zip(out, series_uid, max_bytes)
        out.seek(0)

    def _complete_zip(self, out: BinaryIO, series_uid: str, max_bytes: int) -> None:
        """What a zip needs after it arrived whole: nothing for NBIA v4 (the v3 client
        adds the MD5 list Bindaas leaves out)."""

    def fetch_series(self, series_uid: str, sink: InstanceSink, scratch: str | os.PathLike,
                     *, expected_count: int | None = None,
                     expected_sop_uids: Iterable[str] | None = None,
                     max_bytes: int = ZIP_MAX_TOTAL) -> SeriesZip:
        """Download one series and hand its verified instances to ``sink``, all or nothing
        (see :func:`safe_unpack_zip`); ``scratch`` holds the zip meanwhile. ``max_bytes``
        bounds both the download and what it may expand to: derive it from the series'
        ``FileSize`` when known."""
        path = self.download_series_zip(series_uid, scratch, max_bytes=max_bytes)
        try:
            return safe_unpack_zip(path, sink, expected_count=expected_count,
                                   expected_sop_uids=expected_sop_uids, series_uid=series_uid,
                                   max_total=max_bytes, label=f"the zip of series {series_uid}")
        finally:
            path.unlink(missing_ok=True)


class BindaasClient:
    """The legacy Bindaas v3 API: same row shape, an ``api_key`` header, ``[]`` for none."""

    def __init__(self, http: HttpClient, api_key: str, base_url: str = BINDAAS_V3_URL):
        self.http = http
        self.api_key = api_key
        self.base_url = base_url.rstrip("/")

    def query(self, endpoint: str, **params) -> list[dict]:
        params = {k: v for k, v in params.items() if v is not None}
        params.setdefault("format", "json")
        url = f"{self.base_url}/{endpoint}"

        def fetch() -> list[dict]:
            with self.http.fetching(url, params=params,
                                    headers={"api_key": self.api_key}) as response:
                if response.status_code in (401, 403):
                    raise ArchiveError(f"GET {endpoint}: the api_key was refused (HTTP "
                                       f"{response.status_code}); check the key")
                if response.status_code != 200:
                    raise ArchiveError(f"GET {endpoint} failed: HTTP {response.status_code} "
                                       f"{_error_text(response)}")
                content = response.content
            return parse_rows(content, f"GET {endpoint}")

        return self.http.retrying(fetch, f"GET {endpoint}")

    def collections(self) -> list[str]:
        return [row["Collection"] for row in self.query("getCollectionValues")]

    def series(self, **filters: str) -> list[dict]:
        return self.query("getSeries", **filters)

    def new_patients(self, collection: str, since: date) -> list[dict]:
        return self.query("NewPatientsInCollection", Collection=collection,
                          Date=since.strftime("%Y-%m-%d"))
