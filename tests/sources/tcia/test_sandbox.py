"""The TCIA sandbox as a client sees it: NBIA v4 and Bindaas v3 over HTTP, zips checked
with the shared DICOM layer, every mutation observed through the endpoints."""

from __future__ import annotations

import csv
import hashlib
import io
import os
import re
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pydicom
import pytest
import requests

from mirror.errors import DicomError, SeriesZipError, UnsafeZipEntryError
from mirror.sources.dicom import FolderSink, read_header, safe_unpack_zip
from mirror.sources.tcia.sandbox import start
from mirror.sources.tcia.sandbox.api import (
    V4_METADATA_COLUMNS,
    V4_PATIENT_COLUMNS,
    V4_SERIES_COLUMNS,
)
from mirror.sources.tcia.sandbox.server import ZIP_CASES

DATE = re.compile(r"^\d\d-\d\d-\d{4}$")
ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def sb():
    """A sandbox for read-only tests."""
    sandbox = start(collections=2, seed=0)
    yield sandbox
    sandbox.stop()


@pytest.fixture
def fresh():
    """A sandbox per test, for mutations."""
    sandbox = start(collections=2, seed=3)
    yield sandbox
    sandbox.stop()


def get(sandbox, endpoint: str, **params) -> requests.Response:
    return requests.get(f"{sandbox.v4_url}/{endpoint}", params=params, timeout=30)


def md5_of(sandbox, **form) -> str:
    r = requests.post(f"{sandbox.v4_url}/getMD5Hierarchy", data=form, timeout=30)
    assert r.status_code == 200
    return r.text


def series_list(sandbox, **params) -> list[dict]:
    r = get(sandbox, "getSeries", **params)
    assert r.status_code == 200
    return r.json() if r.content else []


def updated_since(sandbox, day: str) -> set[str]:
    r = get(sandbox, "getUpdatedSeries", fromDate=day)
    return {row["SeriesInstanceUID"] for row in r.json()} if r.content else set()


def md5(data: bytes | str) -> str:
    return hashlib.md5(data.encode() if isinstance(data, str) else data).hexdigest()


def download(sandbox, uid: str, tmp_path: Path, **params):
    """getImage?IncludeMD5=Yes, saved and verified the way a client must."""
    r = get(sandbox, "getImage", SeriesInstanceUID=uid, IncludeMD5="Yes", **params)
    assert r.status_code == 200, r.text
    folder = tmp_path / uid
    folder.mkdir()
    (tmp_path / f"{uid}.zip").write_bytes(r.content)
    return r, folder


def instance_hash(uid: str, folder: Path) -> str:
    """The series level of getMD5Hierarchy, computed from downloaded bytes."""
    return md5("".join(sorted(md5(p.read_bytes()) for p in folder.iterdir())))


# --- listings and formats --------------------------------------------------------------

def test_collection_values_json_is_an_array_of_one_key_objects(sb):
    r = get(sb, "getCollectionValues")
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/json"
    assert r.json() == [{"Collection": "Sandbox-Lung-CT"}, {"Collection": "Sandbox-Brain-MR"}]


def test_formats(sb):
    csv = get(sb, "getCollectionValues", format="CSV")
    assert csv.headers["Content-Type"] == "text/csv"
    assert csv.text == '"Collection"\n"Sandbox-Lung-CT"\n"Sandbox-Brain-MR"\n'
    xml = get(sb, "getCollectionValues", format="xml").text
    assert xml.startswith('<?xml version="1.0" encoding="UTF-8" standalone="yes"?><Results>')
    assert "<Row><Collection type='java.lang.String'>Sandbox-Lung-CT</Collection></Row>" in xml
    html = get(sb, "getCollectionValues", format="html")
    assert html.headers["Content-Type"] == "text/html"
    assert html.text.startswith("<P ALIGN='center'><TABLE BORDER=1><TR><TH>Collection</TH>")
    download_csv = get(sb, "getSeries", format="CSV-DOWNLOAD")
    assert download_csv.headers["Content-Disposition"] == \
        'attachment; filename="SeriesMetaData.csv"'
    assert download_csv.text.splitlines()[0] == ",".join(f'"{c}"' for c in V4_SERIES_COLUMNS)
    bogus = get(sb, "getCollectionValues", format="yaml")
    assert bogus.status_code == 500 and bogus.text == "Server was not able to process your request"


def test_no_rows_is_200_with_an_empty_body(sb):
    for params in ({"Collection": "No-Such-Collection"}, {"SeriesInstanceUID": "1.2.3"},
                   {"Collection": "No-Such", "format": "yaml"}):
        r = get(sb, "getSeries", **params)
        assert r.status_code == 200 and r.content == b""
        assert "Content-Type" not in r.headers


def test_get_series_keys_types_dates_and_dropped_nulls(sb):
    rows = series_list(sb)
    assert len(rows) >= 8
    for row in rows:
        keys = list(row)
        assert keys == [c for c in V4_SERIES_COLUMNS if c in row]  # server order
        assert {"SeriesInstanceUID", "ImageCount", "FileSize", "DateReleased"} <= set(row)
        assert isinstance(row["ImageCount"], int) and isinstance(row["FileSize"], int)
        assert isinstance(row["SeriesNumber"], int) and row["Authorized"] == 1
        for key in ("SeriesDate", "StudyDate", "DateReleased", "MaxSubmissionTimestamp"):
            assert DATE.match(row[key]), (key, row[key])
    assert any("ProtocolName" not in row for row in rows)  # null columns are left out
    assert len({len(row) for row in rows}) > 1


def test_get_series_filters(sb):
    everything = series_list(sb)
    lung = series_list(sb, Collection="sandbox-LUNG-ct")  # case-insensitive
    assert lung and all(r["Collection"] == "Sandbox-Lung-CT" for r in lung)
    one = everything[0]
    assert series_list(sb, SeriesInstanceUID=one["SeriesInstanceUID"]) == [one]
    assert series_list(sb, StudyInstanceUID=one["StudyInstanceUID"].upper() + "9") == []
    assert series_list(sb, Modality="mr", PatientID=series_list(sb, Modality="MR")[0]
                       ["PatientID"].lower())


def test_unknown_and_missing_parameters_are_400_texts(sb):
    r = get(sb, "getSeries", collection="Sandbox-Lung-CT")  # names are case-sensitive
    assert r.status_code == 400
    assert r.text.startswith("Invalid query parameter: 'collection'. Allowed parameters are: "
                             "[Collection, PatientID,")
    r = get(sb, "getSOPInstanceUIDs")
    assert (r.status_code, r.text) == (400, "A parameter, SeriesInstanceUID is required for "
                                            "this API call.")
    r = get(sb, "getImage")
    assert (r.status_code, r.text) == (400, "A parameter, SeriesInstanceUID, is required for "
                                            "this API call.")
    r = get(sb, "NewPatientsInCollection", Collection="Sandbox-Lung-CT")
    assert r.status_code == 400 and "fromDate" in r.text
    assert get(sb, "getNothing").status_code == 404
    assert requests.get(f"{sb.v4_url}/getMD5Hierarchy", timeout=10).status_code == 405


def test_patients_and_studies(sb):
    patients = get(sb, "getPatient", Collection="Sandbox-Lung-CT").json()
    assert len(patients) == 3
    for row in patients:
        assert list(row) == [c for c in V4_PATIENT_COLUMNS if c in row]
        assert "PatientId" in row and "PatientID" not in row
        assert row["Collection"] == "Sandbox-Lung-CT"
    studies = get(sb, "getPatientStudy", Collection="Sandbox-Lung-CT",
                  PatientID=patients[0]["PatientId"]).json()
    series = series_list(sb, Collection="Sandbox-Lung-CT", PatientID=patients[0]["PatientId"])
    assert sum(s["SeriesCount"] for s in studies) == len(series)
    assert {s["StudyInstanceUID"] for s in studies} == {s["StudyInstanceUID"] for s in series}
    by_modality = get(sb, "getPatientByCollectionAndModality", Collection="Sandbox-Lung-CT",
                      Modality="CT").json()
    assert [r["PatientId"] for r in by_modality] == [p["PatientId"] for p in patients]
    assert get(sb, "getModalityValues").json() == [{"Modality": "CT"}, {"Modality": "MR"}]
    assert {"BodyPartExamined": "CHEST"} in get(sb, "getBodyPartValues").json()


def test_series_size_and_sop_uids_agree_with_get_series(sb):
    row = series_list(sb)[0]
    uid = row["SeriesInstanceUID"]
    size = get(sb, "getSeriesSize", SeriesInstanceUID=uid).json()
    assert size == [{"TotalSizeInBytes": row["FileSize"], "ObjectCount": row["ImageCount"]}]
    sops = get(sb, "getSOPInstanceUIDs", SeriesInstanceUID=uid).json()
    assert len(sops) == row["ImageCount"] and list(sops[0]) == ["SOPInstanceUID"]
    assert get(sb, "getSeriesSize", SeriesInstanceUID="1.2.3").content == b""


def test_series_metadata_is_a_quoted_csv_download(sb):
    rows = series_list(sb)[:2]
    uids = ",".join(r["SeriesInstanceUID"] for r in rows)
    r = requests.post(f"{sb.v4_url}/getSeriesMetadata", data={"list": uids + ",1.2.3"},
                      timeout=10)
    assert r.status_code == 200 and r.headers["Content-Type"] == "text/csv"
    assert r.headers["Content-Disposition"] == 'attachment; filename="SeriesMetaData.csv"'
    table = list(csv.DictReader(io.StringIO(r.text)))
    assert list(table[0]) == V4_METADATA_COLUMNS
    assert [t["SeriesInstanceUID"] for t in table] == [r["SeriesInstanceUID"] for r in rows]
    assert table[0]["SliceThickness(mm)"] == "5.0" and table[0]["ImageCount"] == \
        str(rows[0]["ImageCount"])
    assert requests.post(f"{sb.v4_url}/getSeriesMetadata", data={}, timeout=10).status_code \
        == 400


# --- downloads ---------------------------------------------------------------------------

def test_get_image_streams_a_verifiable_zip(sb, tmp_path):
    row = series_list(sb)[0]
    uid = row["SeriesInstanceUID"]
    r, folder = download(sb, uid, tmp_path)
    assert "Content-Length" not in r.headers
    assert r.headers["Transfer-Encoding"] == "chunked"
    assert r.headers["Content-Type"] == "application/octet-stream"
    assert r.headers["Content-Disposition"] == f'attachment; filename="{uid}.zip"'
    names = zipfile.ZipFile(io.BytesIO(r.content)).namelist()
    assert names[0] == "LICENSE" and names[-1] == "md5hashes.csv"
    assert names[1:-1] == [f"{n:08d}.dcm" for n in range(1, row["ImageCount"] + 1)]
    sops = [s["SOPInstanceUID"] for s in
            get(sb, "getSOPInstanceUIDs", SeriesInstanceUID=uid).json()]
    result = safe_unpack_zip(tmp_path / f"{uid}.zip", FolderSink(folder),
                             expected_count=row["ImageCount"], expected_sop_uids=sops,
                             series_uid=uid)
    assert row["LicenseName"] in result.license
    assert sum(i.size for i in result.instances) == row["FileSize"]
    for path in result.stored:
        ds = pydicom.dcmread(path)
        assert ds.SeriesInstanceUID == uid and ds.PatientID == row["PatientID"]
        assert ds.pixel_array.size > 0
        assert "7FE00010" not in read_header(path)
    assert md5_of(sb, SeriesInstanceUID=uid) == instance_hash(uid, folder)


def test_get_image_new_file_names_and_single_image(sb, tmp_path):
    uid = series_list(sb)[0]["SeriesInstanceUID"]
    r = get(sb, "getImage", SeriesInstanceUID=uid, NewFileNames="Yes")
    z = zipfile.ZipFile(io.BytesIO(r.content))
    instances = [n for n in z.namelist() if n.endswith(".dcm")]
    assert instances == [f"1-{i}.dcm" for i in range(1, len(instances) + 1)]
    assert "md5hashes.csv" not in z.namelist()  # only with IncludeMD5=Yes
    first = pydicom.dcmread(io.BytesIO(z.read(instances[0])))
    single = get(sb, "getSingleImage", SeriesInstanceUID=uid, SOPInstanceUID=first.SOPInstanceUID)
    assert single.headers["Content-Type"] == "application/dicom"
    assert single.headers["Content-Disposition"] == \
        f"attachment; filename={first.SOPInstanceUID}.dcm"
    assert single.content == z.read(instances[0])
    assert get(sb, "getMD5HashForImage", SOPInstanceUID=first.SOPInstanceUID).text == \
        md5(single.content)
    missing = get(sb, "getSingleImage", SeriesInstanceUID=uid, SOPInstanceUID="1.2.3")
    assert missing.status_code == 500 and missing.headers["Content-Type"] == "text/plain"


def test_get_image_for_an_unknown_series_is_400(sb):
    r = get(sb, "getImage", SeriesInstanceUID="1.2.3")
    assert r.status_code == 400
    assert r.text == ("The user has not been granted the access to image with given "
                      "SeriesInstanceUID,1.2.3. Please contact System Admin to resolve this "
                      "issue.")


# --- MD5 hierarchy ------------------------------------------------------------------------

def test_md5_hierarchy_is_built_from_sorted_child_hashes(sb):
    rows = series_list(sb, Collection="Sandbox-Lung-CT")
    row = rows[0]
    study_series = [r["SeriesInstanceUID"] for r in rows
                    if r["StudyInstanceUID"] == row["StudyInstanceUID"]]
    study = md5("".join(sorted(md5_of(sb, SeriesInstanceUID=u) for u in study_series)))
    assert md5_of(sb, StudyInstanceUID=row["StudyInstanceUID"]) == study
    studies = {r["StudyInstanceUID"] for r in rows if r["PatientID"] == row["PatientID"]}
    patient = md5("".join(sorted(md5_of(sb, StudyInstanceUID=u) for u in studies)))
    assert md5_of(sb, PatientID=row["PatientID"], Collection="Sandbox-Lung-CT") == patient
    pids = dict.fromkeys(r["PatientID"] for r in rows)
    collection = md5("".join(sorted(md5_of(sb, PatientID=p, Collection="Sandbox-Lung-CT")
                                    for p in pids)))
    assert md5_of(sb, Collection="Sandbox-Lung-CT") == collection
    # the last matching field wins; PatientID needs Collection; unknown scopes are empty
    assert md5_of(sb, SeriesInstanceUID=row["SeriesInstanceUID"],
                  StudyInstanceUID=row["StudyInstanceUID"]) == study
    assert md5_of(sb, PatientID=row["PatientID"]) == ""
    assert md5_of(sb, Collection="No-Such") == "" and md5_of(sb) == ""
    bad = requests.post(f"{sb.v4_url}/getMD5Hierarchy", data={"Series": "1"}, timeout=10)
    assert bad.status_code == 400
    assert bad.text == ("Invalid form parameter: 'Series'. Allowed parameters are: "
                        "[SeriesInstanceUID, StudyInstanceUID, PatientID, Collection]")


# --- mutations ----------------------------------------------------------------------------

def test_new_series_shows_in_dates_and_live_hashes_but_the_collection_hash_lags(fresh):
    before_day = fresh.archive.today()
    collection_hash = md5_of(fresh, Collection="Sandbox-Lung-CT")
    pid = get(fresh, "getPatient", Collection="Sandbox-Lung-CT").json()[0]["PatientId"]
    patient_hash = md5_of(fresh, PatientID=pid, Collection="Sandbox-Lung-CT")
    new = fresh.mutate("add_series", collection="Sandbox-Lung-CT", patient=pid)["series"]
    assert new in {r["SeriesInstanceUID"] for r in series_list(fresh)}
    assert updated_since(fresh, before_day) == {new}
    assert updated_since(fresh, fresh.archive.today()) == set()  # strict '>' on the day
    patients = get(fresh, "NewPatientsInCollection", Collection="Sandbox-Lung-CT",
                   fromDate=fresh.archive.today()).json()  # '>=': the same day counts
    assert [p["PatientId"] for p in patients] == [pid]  # an old patient, listed as "new"
    studies = get(fresh, "NewStudiesInPatientCollection", Collection="Sandbox-Lung-CT",
                  fromDate=before_day).json()
    assert [s["SeriesCount"] for s in studies] == [1]  # only the matching series count
    assert md5_of(fresh, PatientID=pid, Collection="Sandbox-Lung-CT") != patient_hash
    assert md5_of(fresh, Collection="Sandbox-Lung-CT") == collection_hash  # not yet
    fresh.mutate("md5_job")
    assert md5_of(fresh, Collection="Sandbox-Lung-CT") != collection_hash


def test_reprocessed_series_hides_until_re_approved_and_keeps_its_sop_uids(fresh, tmp_path):
    row = series_list(fresh, Collection="Sandbox-Lung-CT")[0]
    uid, study = row["SeriesInstanceUID"], row["StudyInstanceUID"]
    sops = get(fresh, "getSOPInstanceUIDs", SeriesInstanceUID=uid).json()
    old_series_hash = md5_of(fresh, SeriesInstanceUID=uid)
    old_study_hash = md5_of(fresh, StudyInstanceUID=study)
    day = fresh.archive.today()
    fresh.mutate("reprocess", series=uid)
    # hidden: gone from listings, dates, downloads and the higher hashes ...
    assert uid not in {r["SeriesInstanceUID"] for r in series_list(fresh)}
    assert get(fresh, "getImage", SeriesInstanceUID=uid).status_code == 400
    assert get(fresh, "getSeriesSize", SeriesInstanceUID=uid).content == b""
    assert md5_of(fresh, StudyInstanceUID=study) != old_study_hash
    # ... while the series level still answers, with the new bytes' hash
    hidden_hash = md5_of(fresh, SeriesInstanceUID=uid)
    assert hidden_hash not in ("", old_series_hash)
    fresh.mutate("approve", series=uid)  # date_released kept: invisible to date endpoints
    assert uid not in updated_since(fresh, day)
    again = series_list(fresh, SeriesInstanceUID=uid)[0]
    assert again["ImageCount"] == row["ImageCount"]
    assert again["DateReleased"] == row["DateReleased"]
    assert again["MaxSubmissionTimestamp"] != row["MaxSubmissionTimestamp"]
    assert get(fresh, "getSOPInstanceUIDs", SeriesInstanceUID=uid).json() == sops
    _, folder = download(fresh, uid, tmp_path)
    result = safe_unpack_zip(tmp_path / f"{uid}.zip", FolderSink(folder),
                             expected_count=again["ImageCount"], series_uid=uid)
    assert sum(i.size for i in result.instances) == again["FileSize"]
    assert instance_hash(uid, folder) == hidden_hash
    assert md5_of(fresh, StudyInstanceUID=study) not in (old_study_hash, "")
    fresh.mutate("approve", series=uid, date_released="today")
    assert uid in updated_since(fresh, day)


def test_not_released_series_stays_listed_without_a_release_date(fresh):
    uid = series_list(fresh)[0]["SeriesInstanceUID"]
    fresh.mutate("approve", series=uid, released=False)
    row = series_list(fresh, SeriesInstanceUID=uid)[0]
    assert "DateReleased" not in row and row["ReleasedStatus"] == "No"
    assert uid not in updated_since(fresh, "01-01-1900")


def test_withdrawn_series_vanishes_but_its_series_hash_answers(fresh):
    uid = series_list(fresh)[0]["SeriesInstanceUID"]
    series_hash = md5_of(fresh, SeriesInstanceUID=uid)
    fresh.mutate("withdraw", series=uid)
    assert series_list(fresh, SeriesInstanceUID=uid) == []
    assert md5_of(fresh, SeriesInstanceUID=uid) == series_hash


def test_removed_patient_vanishes_everywhere_and_the_collection_hash_lags(fresh):
    patients = get(fresh, "getPatient", Collection="Sandbox-Brain-MR").json()
    pid = patients[0]["PatientId"]
    uids = [r["SeriesInstanceUID"] for r in series_list(fresh, PatientID=pid,
                                                        Collection="Sandbox-Brain-MR")]
    collection_hash = md5_of(fresh, Collection="Sandbox-Brain-MR")
    fresh.mutate("remove_patient", collection="Sandbox-Brain-MR", patient=pid)
    assert pid not in {p["PatientId"] for p in
                       get(fresh, "getPatient", Collection="Sandbox-Brain-MR").json()}
    assert series_list(fresh, PatientID=pid) == []
    assert all(md5_of(fresh, SeriesInstanceUID=u) == "" for u in uids)
    assert updated_since(fresh, "01-01-1900").isdisjoint(uids)  # no endpoint lists removals
    assert md5_of(fresh, Collection="Sandbox-Brain-MR") == collection_hash
    fresh.mutate("md5_job")
    assert md5_of(fresh, Collection="Sandbox-Brain-MR") not in ("", collection_hash)


def test_rename_and_licence_change_touch_fields_only(fresh, tmp_path):
    rows = series_list(fresh, Collection="Sandbox-Lung-CT")
    hashes = {r["SeriesInstanceUID"]: md5_of(fresh, SeriesInstanceUID=r["SeriesInstanceUID"])
              for r in rows}
    day = fresh.archive.today()
    fresh.mutate("set_license", collection="Sandbox-Lung-CT", name="CC BY-NC 4.0",
                 uri="https://creativecommons.org/licenses/by-nc/4.0/")
    fresh.mutate("rename_collection", old="Sandbox-Lung-CT", new="Sandbox-Lung-CT-v2")
    assert {"Collection": "Sandbox-Lung-CT-v2"} in get(fresh, "getCollectionValues").json()
    assert {"Collection": "Sandbox-Lung-CT"} not in get(fresh, "getCollectionValues").json()
    assert series_list(fresh, Collection="Sandbox-Lung-CT") == []
    renamed = series_list(fresh, Collection="Sandbox-Lung-CT-v2")
    assert {r["SeriesInstanceUID"] for r in renamed} == set(hashes)
    assert {r["LicenseName"] for r in renamed} == {"CC BY-NC 4.0"}
    assert updated_since(fresh, day) == set()
    assert {u: md5_of(fresh, SeriesInstanceUID=u) for u in hashes} == hashes
    assert md5_of(fresh, PatientID=renamed[0]["PatientID"], Collection="Sandbox-Lung-CT") == ""
    uid = renamed[0]["SeriesInstanceUID"]
    _, folder = download(fresh, uid, tmp_path)
    result = safe_unpack_zip(tmp_path / f"{uid}.zip", FolderSink(folder))
    assert "CC BY-NC 4.0" in result.license and "Sandbox-Lung-CT-v2" in result.license


def test_bad_mutations_are_value_errors(fresh):
    with pytest.raises(ValueError, match="unknown mutation"):
        fresh.mutate("explode")
    day = fresh.archive.today()
    with pytest.raises(ValueError, match="no series"):
        fresh.mutate("reprocess", series="1.2.3")
    with pytest.raises(ValueError, match="no patient"):
        fresh.mutate("add_series", collection="Sandbox-Lung-CT", patient="NOBODY")
    with pytest.raises(ValueError, match="bad arguments"):
        fresh.mutate("withdraw", serie="x")
    assert fresh.archive.today() == day  # refused changes take no time
    r = requests.post(f"{fresh.root_url}/__sandbox__/mutate", json={"op": "withdraw"},
                      timeout=10)
    assert r.status_code == 200 and r.json()["op"] == "withdraw"
    r = requests.post(f"{fresh.root_url}/__sandbox__/mutate", json={"nope": 1}, timeout=10)
    assert r.status_code == 400


# --- Bindaas v3 ----------------------------------------------------------------------------

def test_v3_needs_the_api_key_as_header_or_parameter(sb):
    url = f"{sb.v3_url}/getCollectionValues"
    assert requests.get(url, timeout=10).status_code == 401
    assert requests.get(url, params={"api_key": "wrong"}, timeout=10).status_code == 401
    by_header = requests.get(url, headers={"api_key": "sandbox-key"}, timeout=10)
    by_param = requests.get(url, params={"api_key": "sandbox-key", "format": "json"},
                            timeout=10)
    assert by_header.json() == by_param.json() == get(sb, "getCollectionValues").json()
    assert requests.get(f"{sb.v3_url}/getNothing", timeout=10).status_code == 404


def test_v3_shapes_formats_and_empty_results(sb):
    key = {"api_key": "sandbox-key"}
    series = requests.get(f"{sb.v3_url}/getSeries", params=key, timeout=10).json()
    assert len(series[0]) <= 15 and "PatientID" in series[0]
    empty = requests.get(f"{sb.v3_url}/getSeries", params={**key, "Collection": "none"},
                         timeout=10)
    assert empty.status_code == 200 and empty.json() == []
    patients = requests.get(f"{sb.v3_url}/getPatient",
                            params={**key, "Collection": "Sandbox-Lung-CT"}, timeout=10).json()
    assert "PatientID" in patients[0] and "PatientId" not in patients[0]
    for fmt, start_text in (("csv", '"PatientID"'), ("xml", "<?xml"), ("html", "<P ALIGN")):
        r = requests.get(f"{sb.v3_url}/getSeries", params={**key, "format": fmt}, timeout=10)
        assert r.text.startswith(start_text)
    new = requests.get(f"{sb.v3_url}/NewPatientsInCollection",
                       params={**key, "Collection": "Sandbox-Lung-CT", "Date": "2000-01-01"},
                       timeout=10).json()
    assert len(new) == 3
    sops = requests.get(f"{sb.v3_url}/getSOPInstanceUIDs",
                        params={**key, "SeriesInstanceUID": series[0]["SeriesInstanceUID"]},
                        timeout=10).json()
    assert len(sops) == series[0]["ImageCount"]
    zipped = requests.get(f"{sb.v3_url}/getImage",
                          params={**key, "SeriesInstanceUID": series[0]["SeriesInstanceUID"]},
                          timeout=10)
    assert "bindaas-blob-download.zip" in zipped.headers["Content-Disposition"]
    assert len(zipfile.ZipFile(io.BytesIO(zipped.content)).namelist()) == len(sops)
    meta = requests.get(f"{sb.v3_url}/getSeries/metadata", params=key, timeout=10)
    assert meta.json()["name"] == "getSeries"


def test_v3_is_frozen(fresh):
    key = {"api_key": "sandbox-key"}
    before = requests.get(f"{fresh.v3_url}/getSeries", params=key, timeout=10).json()
    fresh.mutate("add_patient", collection="Sandbox-Lung-CT")
    fresh.mutate("rename_collection", old="Sandbox-Brain-MR", new="Renamed")
    assert requests.get(f"{fresh.v3_url}/getSeries", params=key, timeout=10).json() == before
    assert len(series_list(fresh)) > len(before)


# --- hostile, faults, latency, determinism, CLI ------------------------------------------

EXPECTED = {
    "dotdot": (UnsafeZipEntryError, "'..'"),
    "absolute": (UnsafeZipEntryError, "absolute"),
    "bomb": (SeriesZipError, "zip bomb"),
    "truncated": (SeriesZipError, "truncated"),
    "md5": (SeriesZipError, "has MD5"),
    "duplicate": (SeriesZipError, "share SOPInstanceUID"),
    "nondicom": (DicomError, "is not DICOM"),
    "changing": (SeriesZipError, "the archive listed"),
    "htmlzip": (SeriesZipError, "truncated or damaged"),
}


def test_every_hostile_zip_is_refused_and_nothing_escapes(tmp_path):
    sandbox = start(collections=2, seed=0, hostile="all")
    try:
        assert set(sandbox.hostile) == set(ZIP_CASES) == set(EXPECTED)
        for case, uid in sandbox.hostile.items():
            row = series_list(sandbox, SeriesInstanceUID=uid)[0]
            r = get(sandbox, "getImage", SeriesInstanceUID=uid, IncludeMD5="Yes")
            assert r.status_code == 200, case
            zpath = tmp_path / f"{case}.zip"
            zpath.write_bytes(r.content)
            out = tmp_path / "box" / case
            out.mkdir(parents=True)
            error, text = EXPECTED[case]
            with pytest.raises(error, match=text):  # bounded as the TCIA source bounds it
                safe_unpack_zip(zpath, FolderSink(out), expected_count=row["ImageCount"],
                                series_uid=uid, max_total=2**24 + 4 * row["FileSize"])
            assert list(out.iterdir()) == [], case
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
            ["box"] + [f"{c}.zip" for c in EXPECTED])
        clean = [r for r in series_list(sandbox)
                 if r["SeriesInstanceUID"] not in sandbox.hostile.values()][0]
        r = get(sandbox, "getImage", SeriesInstanceUID=clean["SeriesInstanceUID"],
                IncludeMD5="Yes")
        (tmp_path / "clean.zip").write_bytes(r.content)
        (tmp_path / "clean").mkdir()
        assert len(safe_unpack_zip(tmp_path / "clean.zip", FolderSink(tmp_path / "clean"),
                                   expected_count=clean["ImageCount"]).instances) == \
            clean["ImageCount"]
    finally:
        sandbox.stop()


def test_hostile_listings_lie_with_status_200():
    sandbox = start(collections=1, hostile="html,empty")
    try:
        answers = [get(sandbox, "getSeries", Collection="Sandbox-Lung-CT") for _ in range(6)]
        assert [r.status_code for r in answers] == [200] * 6
        kinds = [r.headers.get("Content-Type") for r in answers]
        assert kinds == ["application/json", "text/html", None] * 2
        assert answers[2].content == b"" and answers[1].text.startswith("<html>")
        assert get(sandbox, "getSeries").headers["Content-Type"] == "application/json"
        assert sandbox.hostile == {}  # no zip is corrupted
    finally:
        sandbox.stop()


def test_faults_reset_500_and_a_zip_cut_mid_stream():
    sandbox = start(collections=1, faults="truncate=1,match=getImage")
    try:
        uid = series_list(sandbox)[0]["SeriesInstanceUID"]
        with pytest.raises(requests.exceptions.ChunkedEncodingError):
            get(sandbox, "getImage", SeriesInstanceUID=uid)
    finally:
        sandbox.stop()
    sandbox = start(collections=1, faults="500=1")
    try:
        r = get(sandbox, "getCollectionValues")
        assert (r.status_code, r.text) == (500, "Server was not able to process your request")
    finally:
        sandbox.stop()
    sandbox = start(collections=1, faults="reset=1")
    try:
        with pytest.raises(requests.ConnectionError):
            get(sandbox, "getCollectionValues")
        assert sandbox.stats()["total"] == 1
    finally:
        sandbox.stop()


def test_latency_and_stats():
    sandbox = start(collections=1, latency=0.2)
    try:
        began = time.monotonic()
        get(sandbox, "getCollectionValues")
        assert time.monotonic() - began >= 0.2
        assert sandbox.stats() == {"GET v4/getCollectionValues": 1, "total": 1}
        sandbox.reset_stats()
        assert sandbox.stats() == {}
    finally:
        sandbox.stop()


def test_same_seed_same_archive(tmp_path):
    a, b = start(collections=2, seed=7), start(collections=2, seed=7)
    try:
        assert get(a, "getSeries").content == get(b, "getSeries").content
        uid = series_list(a)[0]["SeriesInstanceUID"]
        za = get(a, "getImage", SeriesInstanceUID=uid, IncludeMD5="Yes").content
        zb = get(b, "getImage", SeriesInstanceUID=uid, IncludeMD5="Yes").content
        assert za == zb
        assert md5_of(a, Collection="Sandbox-Lung-CT") == md5_of(b, Collection="Sandbox-Lung-CT")
    finally:
        a.stop()
        b.stop()


@pytest.mark.parametrize("command", [
    ["-m", "mirror.sources.tcia.sandbox.server", "--collections", "1"],
    ["-m", "mirror", "sandbox", "--archive", "tcia-v4", "--seed", "0", "--collections", "1"],
])
def test_main_prints_the_v4_then_the_v3_url(command):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, *command], stdout=subprocess.PIPE, text=True,
                            env=env)
    try:
        v4 = proc.stdout.readline().strip()
        v3 = proc.stdout.readline().strip()
        assert v4.endswith("/nbia-api/services/v4") and v3.endswith("/services/v3/TCIA/query")
        assert requests.get(f"{v4}/getCollectionValues", timeout=10).json() == \
            [{"Collection": "Sandbox-Lung-CT"}]
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0
