"""Route by route, ``mirror serve`` of a synced TCIA mirror answers as the sandbox it was
synced from: same status, same JSON, same error texts, same instance bytes inside the series
zips and the same ``md5hashes.csv``. Both faces run one route table
(mirror/sources/tcia/shape.py); what differs is the backend (generated data vs the index
and the store), and what the mirror cannot know (patient and study fields only NBIA's own
tables hold, the LICENSE entry) is asserted as the documented difference."""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile

import pytest
import requests

from mirror.sources.tcia.sandbox import start
from mirror.sync import SyncOptions, sync
from tests.serve.conftest import serving

V4 = "/nbia-api/services/v4"


@pytest.fixture(scope="module")
def nbia(tmp_path_factory):
    """(sandbox, serve's v4 URL, mirror root): one synced mirror for the module."""
    root = tmp_path_factory.mktemp("nbia") / "mirror"
    old = os.environ.get("MIRROR_STATE_DIR")
    os.environ["MIRROR_STATE_DIR"] = str(tmp_path_factory.mktemp("state"))
    sandbox = start(collections=2, seed=5)
    try:
        assert sync(root, sandbox.v4_url, SyncOptions(workers=2)).ok
        with serving(root) as url:
            yield sandbox, url + V4, root
    finally:
        sandbox.stop()
        if old is None:
            os.environ.pop("MIRROR_STATE_DIR", None)
        else:
            os.environ["MIRROR_STATE_DIR"] = old


def both(nbia, endpoint: str, method: str = "GET", **kwargs):
    sb, url, _ = nbia
    return (requests.request(method, f"{sb.v4_url}/{endpoint}", timeout=30, **kwargs),
            requests.request(method, f"{url}/{endpoint}", timeout=30, **kwargs))


def rows_of(response: requests.Response) -> list:
    return sorted(json.loads(response.content or b"[]"), key=json.dumps)


@pytest.fixture(scope="module")
def series(nbia):
    return requests.get(f"{nbia[0].v4_url}/getSeries", timeout=30).json()


def assert_same(nbia, endpoint: str, method: str = "GET", **kwargs) -> requests.Response:
    ours, served = both(nbia, endpoint, method, **kwargs)
    assert (served.status_code, endpoint) == (ours.status_code, endpoint)
    assert served.headers.get("Content-Type") == ours.headers.get("Content-Type"), endpoint
    if ours.status_code == 200 and ours.headers.get("Content-Type") == "application/json":
        assert rows_of(served) == rows_of(ours), endpoint  # NBIA's row order is its DB's
    else:
        assert served.content == ours.content, endpoint
    return ours


ERRORS = [
    "getSeries?Colection=x", "getSeries?Collection=x&format=json&bogus=1", "getSeriesSize",
    "getSOPInstanceUIDs", "getImage", "getImage?SeriesInstanceUID=1.2.3",
    "getSingleImage?SeriesInstanceUID=1.2.3", "getSingleImage?SeriesInstanceUID=1.2&"
    "SOPInstanceUID=3.4", "getPatientByCollectionAndModality?Collection=x", "nonexistent",
    "getMD5Hierarchy", "getSeries?Collection=nope", "getSeriesSize?SeriesInstanceUID=1.2.3",
    "getImageWithMD5Hash", "getImageWithMD5Hash?SeriesInstanceUID=1.2.3&IncludeMD5=Yes",
    "getImageWithMD5Hash?SeriesInstanceUID=1.2.3",
]


@pytest.mark.parametrize("endpoint", ERRORS)
def test_errors_and_empty_answers_agree(nbia, endpoint):
    assert_same(nbia, endpoint)


def test_listings_agree(nbia, series):
    first = series[0]
    for endpoint in [
            "getCollectionValues", "getSeries", f"getSeries?Collection={first['Collection']}",
            f"getSeries?Collection={first['Collection'].lower()}&Modality={first['Modality']}",
            f"getSeries?StudyInstanceUID={first['StudyInstanceUID']}",
            f"getSeries?SeriesInstanceUID={first['SeriesInstanceUID']}&format=csv",
            f"getSeries?PatientID={first['PatientID']}",
            f"getSeries?SeriesInstanceUID={first['SeriesInstanceUID']}&format=xml",
            f"getSeries?SeriesInstanceUID={first['SeriesInstanceUID']}&format=html",
            "getModalityValues", f"getBodyPartValues?Collection={first['Collection']}",
            "getManufacturerValues",
            f"getPatientByCollectionAndModality?Collection={first['Collection']}&"
            f"Modality={first['Modality']}",
            f"getSeriesSize?SeriesInstanceUID={first['SeriesInstanceUID']}",
            f"getSOPInstanceUIDs?SeriesInstanceUID={first['SeriesInstanceUID']}"]:
        ours = assert_same(nbia, endpoint)
        assert ours.status_code == 200 and ours.content, endpoint  # not two empty answers


def test_patients_and_studies_hold_what_the_series_rows_hold(nbia, series):
    """The mirror keeps getSeries rows only: its patient and study rows are NBIA's minus
    the fields only NBIA's patient/study tables hold (docs/serve.md)."""
    collection = series[0]["Collection"]
    for endpoint, dropped in [
            (f"getPatient?Collection={collection}",
             {"PatientName", "EthnicGroup", "Phantom", "SpeciesCode", "SpeciesDescription"}),
            (f"getPatientStudy?Collection={collection}",
             {"StudyID", "PatientName", "EthnicGroup"})]:
        ours, served = both(nbia, endpoint)
        assert served.status_code == ours.status_code == 200
        expected = [{k: v for k, v in row.items() if k not in dropped} for row in ours.json()]
        assert rows_of_list(served.json()) == rows_of_list(expected), endpoint


def rows_of_list(rows: list) -> list:
    return sorted(rows, key=json.dumps)


def zip_members(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        assert z.testzip() is None
        return {name: z.read(name) for name in z.namelist()}


@pytest.mark.parametrize("options", ["", "&IncludeMD5=Yes", "&NewFileNames=Yes&IncludeMD5=Yes",
                                     "WithMD5Hash"])
def test_series_zips_hold_the_same_instances(nbia, series, options):
    for row in series[:3]:
        uid = row["SeriesInstanceUID"]
        endpoint = (f"getImageWithMD5Hash?SeriesInstanceUID={uid}" if options == "WithMD5Hash"
                    else f"getImage?SeriesInstanceUID={uid}{options}")
        ours, served = both(nbia, endpoint)
        assert served.status_code == ours.status_code == 200
        for header in ("Content-Type", "Content-Disposition"):
            assert served.headers[header] == ours.headers[header]
        assert "Content-Length" not in served.headers  # streamed, as NBIA does
        head = requests.head(f"{nbia[1]}/{endpoint}", timeout=30)
        assert (head.status_code, head.content) == (200, b"")
        assert head.headers["Content-Disposition"] == served.headers["Content-Disposition"]
        mine, theirs = zip_members(served.content), zip_members(ours.content)
        if options != "WithMD5Hash":  # getImage's LICENSE: not kept by the mirror
            assert "LICENSE" in theirs and "LICENSE" not in mine
            theirs.pop("LICENSE")
        assert mine == theirs  # same names, same instance bytes, same md5hashes.csv
        assert ("md5hashes.csv" in mine) == ("MD5" in options)
        assert len(mine) == row["ImageCount"] + ("MD5" in options)


def test_single_images_and_md5_hierarchy_agree(nbia, series):
    row = series[-1]
    uid = row["SeriesInstanceUID"]
    sops = requests.get(f"{nbia[0].v4_url}/getSOPInstanceUIDs",
                        params={"SeriesInstanceUID": uid}, timeout=30).json()
    for sop in (sops[0]["SOPInstanceUID"], sops[-1]["SOPInstanceUID"]):
        ours = assert_same(nbia, f"getSingleImage?SeriesInstanceUID={uid}&SOPInstanceUID={sop}")
        assert ours.content[128:132] == b"DICM"
        _, served = both(nbia, f"getSingleImage?SeriesInstanceUID={uid}&SOPInstanceUID={sop}")
        assert served.headers["Content-Disposition"] == ours.headers["Content-Disposition"]
    for form in [{"SeriesInstanceUID": uid}, {"StudyInstanceUID": row["StudyInstanceUID"]},
                 {"PatientID": row["PatientID"], "Collection": row["Collection"]},
                 {"Collection": row["Collection"]}, {"PatientID": row["PatientID"]},
                 {"SeriesInstanceUID": uid, "Collection": row["Collection"]},
                 {"SeriesInstanceUID": "1.2.3"}, {"bogus": "1"}]:
        ours = assert_same(nbia, "getMD5Hierarchy", "POST", data=form)
        if set(form) in ({"SeriesInstanceUID"}, {"Collection"}) and form.get(
                "SeriesInstanceUID") != "1.2.3":
            assert len(ours.text) == 32, form
    assert_same(nbia, f"getMD5Hierarchy?SeriesInstanceUID={uid}")  # a GET: 405


def test_an_endpoint_the_mirror_does_not_answer_says_so(nbia):
    _, served = both(nbia, "getUpdatedSeries?fromDate=01-01-2000")
    assert served.status_code == 404
    assert "This mirror does not serve getUpdatedSeries" in served.text


def test_a_sync_from_serve_gives_the_same_instances(nbia, tmp_path):
    from sqlalchemy import select

    from mirror.api import Mirror
    from mirror.index import Blob

    _, url, root = nbia
    second = tmp_path / "second"
    assert sync(second, url, SyncOptions(workers=2)).ok

    def held(path):
        with Mirror(path) as m:
            return dict(m._all(select(Blob.object_id, Blob.sha256).where(
                Blob.role == "dicom")))

    first = held(root)
    assert first and held(second) == first


def test_a_stored_instance_has_its_etag_304_and_ranges(nbia, series):
    sb, url, _ = nbia
    uid = series[0]["SeriesInstanceUID"]
    sop = requests.get(f"{sb.v4_url}/getSOPInstanceUIDs", params={"SeriesInstanceUID": uid},
                       timeout=30).json()[0]["SOPInstanceUID"]
    params = {"SeriesInstanceUID": uid, "SOPInstanceUID": sop}
    whole = requests.get(f"{url}/getSingleImage", params=params, timeout=30)
    assert whole.headers["ETag"] == f'"{hashlib.sha256(whole.content).hexdigest()}"'
    assert "Girder-Request-Uid" not in whole.headers
    again = requests.get(f"{url}/getSingleImage", params=params, timeout=30,
                         headers={"If-None-Match": whole.headers["ETag"]})
    assert again.status_code == 304 and again.content == b""
    part = requests.get(f"{url}/getSingleImage", params=params, timeout=30,
                        headers={"Range": "bytes=128-131"})
    assert (part.status_code, part.content) == (206, b"DICM")


def test_a_mirror_without_the_instances_says_so(nbia, series, tmp_path):
    """A metadata-only sync lists the series (and their instances) but holds no bytes: the
    zip and the single image are a 404 naming --blobs dicom, the series hash is empty."""
    from mirror.api import Mirror
    from mirror.sources.tcia.served import make_api

    root = tmp_path / "bare"
    assert sync(root, nbia[0].v4_url, SyncOptions(workers=2, blobs=frozenset())).ok
    uid = series[0]["SeriesInstanceUID"]
    with Mirror(root) as m:
        api = make_api(m, None)
        _, listed = api.handle("GET", "/getSeries", f"SeriesInstanceUID={uid}", {})
        assert json.loads(listed.body)[0]["SeriesInstanceUID"] == uid
        _, sops = api.handle("GET", "/getSOPInstanceUIDs", f"SeriesInstanceUID={uid}", {})
        assert len(json.loads(sops.body)) == series[0]["ImageCount"]
        for endpoint in ("getImage", "getImageWithMD5Hash"):
            _, zipped = api.handle("GET", f"/{endpoint}", f"SeriesInstanceUID={uid}", {})
            assert zipped.status == 404 and b"--blobs dicom" in zipped.body
        _, md5 = api.handle("POST", "/getMD5Hierarchy", "", {},
                            body=f"SeriesInstanceUID={uid}".encode())
        assert (md5.status, md5.body) == (200, b"")


def test_the_browse_page_lists_and_shows_a_series(nbia, series):
    base = nbia[1][:-len(V4)]
    front = requests.get(f"{base}/", timeout=30)
    assert front.status_code == 200
    uid = sorted(r["SeriesInstanceUID"] for r in series)[0]
    assert f"/browse/series/{uid}" in front.text
    page = requests.get(f"{base}/browse/series/{uid}", timeout=30)
    assert page.status_code == 200 and series[0]["Collection"].split("-")[0] in page.text
    assert "md5s" in page.text  # its files are listed


def test_the_series_page_previews_its_middle_slice_with_a_few_tags(nbia, series):
    """The object page of a series shows its middle instance's pixels (as the instance's
    own DICOM decodes them) and a few of its tags."""
    import numpy as np
    import pydicom
    from PIL import Image

    base = nbia[1][:-len(V4)]
    uid = sorted(r["SeriesInstanceUID"] for r in series)[0]
    page = requests.get(f"{base}/browse/series/{uid}", timeout=30).text
    assert "id='overlay-middle'" in page and "middle slice: instance" in page
    assert "Modality" in page and "Rows" in page
    preview = requests.get(f"{base}/browse/overlay/{uid}/middle.png", timeout=30)
    assert preview.status_code == 200 and preview.headers["content-type"] == "image/png"
    shown = np.asarray(Image.open(io.BytesIO(preview.content)).convert("L"), dtype=float)
    sops = requests.get(f"{nbia[1]}/getSOPInstanceUIDs",
                        params={"SeriesInstanceUID": uid}, timeout=30).json()
    slices = []
    for row in sops:
        one = requests.get(f"{nbia[1]}/getSingleImage", timeout=30, params={
            "SeriesInstanceUID": uid, "SOPInstanceUID": row["SOPInstanceUID"]})
        slices.append(pydicom.dcmread(io.BytesIO(one.content)))
    slices.sort(key=lambda ds: int(ds.InstanceNumber))
    middle = slices[len(slices) // 2].pixel_array.astype(float)
    assert shown.shape == middle.shape and shown.std() > 0
    assert np.corrcoef(shown.ravel(), middle.ravel())[0, 1] > 0.9  # the same picture
