"""The TCIA client against the sandbox: rows, dates, hashes, verified series downloads."""

from __future__ import annotations

import hashlib
from datetime import date

import pydicom
import pytest

from mirror.errors import ArchiveError, IntegrityError, SeriesZipError
from mirror.sources.dicom import FolderSink
from mirror.sources.http import HttpClient
from mirror.sources.tcia.client import BindaasClient, NbiaClient, nbia_date, parse_rows
from mirror.sources.tcia.sandbox import start


@pytest.fixture(scope="module")
def sb():
    sandbox = start(collections=2, seed=1)
    yield sandbox
    sandbox.stop()


def client(sandbox, attempts: int = 3) -> NbiaClient:
    return NbiaClient(HttpClient(attempts=attempts, backoff=0.01, max_backoff=0.05),
                      sandbox.v4_url)


def test_parse_rows():
    assert parse_rows(b"", "x") == [] and parse_rows(b"  \n", "x") == []
    assert parse_rows(b'[{"a":"b\\/c"}]', "x") == [{"a": "b/c"}]
    with pytest.raises(IntegrityError, match="not JSON"):
        parse_rows(b"<html><body>Bad Gateway</body></html>", "x")
    with pytest.raises(IntegrityError, match="list of objects"):
        parse_rows(b'{"a": 1}', "x")
    assert nbia_date(date(2024, 3, 9)) == "03-09-2024"


def test_listings(sb):
    nbia = client(sb)
    assert nbia.collections() == ["Sandbox-Lung-CT", "Sandbox-Brain-MR"]
    series = nbia.series(Collection="Sandbox-Lung-CT")
    assert series and all(s["Collection"] == "Sandbox-Lung-CT" for s in series)
    assert nbia.series(Collection="No-Such") == []
    uid = series[0]["SeriesInstanceUID"]
    assert nbia.series_size(uid) == (series[0]["FileSize"], series[0]["ImageCount"])
    assert nbia.series_size("1.2.3") is None
    assert len(nbia.sop_uids(uid)) == series[0]["ImageCount"]
    assert len(nbia.patients("Sandbox-Lung-CT")) == 3
    assert nbia.studies("Sandbox-Lung-CT")
    with pytest.raises(ValueError, match="no filter"):
        nbia.series(collection="x")


def test_md5_hierarchy_needs_one_scope(sb):
    nbia = client(sb)
    uid = nbia.series()[0]["SeriesInstanceUID"]
    assert len(nbia.md5_hierarchy(series=uid)) == 32
    assert len(nbia.md5_hierarchy(collection="Sandbox-Lung-CT")) == 32
    assert nbia.md5_hierarchy(collection="No-Such") == ""
    with pytest.raises(ValueError):
        nbia.md5_hierarchy(series=uid, study="1.2")
    with pytest.raises(ValueError, match="collection"):
        nbia.md5_hierarchy(patient="LC-001")


def test_fetch_series_verifies_and_unpacks(sb, tmp_path):
    nbia = client(sb)
    row = nbia.series()[0]
    uid = row["SeriesInstanceUID"]
    out = tmp_path / "out"
    out.mkdir()
    result = nbia.fetch_series(uid, FolderSink(out), tmp_path,
                               expected_count=row["ImageCount"],
                               expected_sop_uids=nbia.sop_uids(uid))
    assert len(result.stored) == row["ImageCount"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # the zip is gone
    digests = sorted(hashlib.md5(p.read_bytes()).hexdigest() for p in result.stored)
    assert nbia.md5_hierarchy(series=uid) == hashlib.md5("".join(digests).encode()).hexdigest()
    first = pydicom.dcmread(result.stored[0])
    assert nbia.single_image(uid, first.SOPInstanceUID) == result.stored[0].read_bytes()


def test_updated_series_after_a_mutation(sb):
    nbia = client(sb)
    day = sb.archive.today()
    new = sb.mutate("add_series", collection="Sandbox-Brain-MR")["series"]
    assert [s["SeriesInstanceUID"] for s in nbia.updated_series(day)] == [new]
    assert nbia.new_patients("Sandbox-Brain-MR", day)


def test_errors_and_retries(sb, tmp_path):
    nbia = client(sb)
    with pytest.raises(ArchiveError, match="HTTP 400 The user has not been granted"):
        nbia.download_series_zip("1.2.3", tmp_path)
    flaky = start(collections=1, seed=1, faults="truncate=0.5,500=0.2,match=getImage")
    try:
        retried = client(flaky, attempts=12)
        uid = retried.series()[0]["SeriesInstanceUID"]
        out = tmp_path / "flaky"
        out.mkdir()
        for _ in range(3):
            retried.fetch_series(uid, FolderSink(out), tmp_path)
        assert retried.http.retries > 0
    finally:
        flaky.stop()
    broken = start(collections=1, seed=1, faults="truncate=1,match=getImage")
    try:
        uid = client(broken).series()[0]["SeriesInstanceUID"]
        with pytest.raises(ArchiveError, match="gave up"):
            client(broken).download_series_zip(uid, tmp_path)
        assert [p.name for p in tmp_path.iterdir() if p.suffix == ".zip"] == []
    finally:
        broken.stop()


def test_an_html_page_instead_of_a_zip_is_named_as_such(tmp_path):
    sandbox = start(collections=1, seed=0, hostile="htmlzip")
    try:
        with pytest.raises(ArchiveError, match="HTML or JSON page instead of a zip"):
            client(sandbox, attempts=2).download_series_zip(sandbox.hostile["htmlzip"],
                                                            tmp_path)
        assert list(tmp_path.iterdir()) == []
    finally:
        sandbox.stop()


def test_hostile_zip_is_refused_by_fetch_series(tmp_path):
    sandbox = start(collections=1, seed=0, hostile="dotdot,md5")
    try:
        nbia = client(sandbox)
        out = tmp_path / "out"
        out.mkdir()
        for uid in sandbox.hostile.values():
            with pytest.raises(SeriesZipError):
                nbia.fetch_series(uid, FolderSink(out), tmp_path)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
        assert list(out.iterdir()) == []
    finally:
        sandbox.stop()


def test_bindaas_client(sb):
    http = HttpClient(attempts=2, backoff=0.01)
    good = BindaasClient(http, "sandbox-key", sb.v3_url)
    assert good.collections() == ["Sandbox-Lung-CT", "Sandbox-Brain-MR"]
    assert good.series(Collection="none") == []
    assert len(good.new_patients("Sandbox-Lung-CT", date(2000, 1, 1))) == 3
    with pytest.raises(ArchiveError, match="api_key was refused"):
        BindaasClient(http, "wrong", sb.v3_url).collections()


def test_posts_are_counted_retried_and_refused_offline(tmp_path):
    from mirror.errors import OfflineError

    sandbox = start(collections=1, seed=1, faults="500=0.5,match=getMD5Hierarchy")
    try:
        nbia = client(sandbox, attempts=10)
        before = nbia.http.requests_made
        for _ in range(4):
            assert len(nbia.md5_hierarchy(collection="Sandbox-Lung-CT")) == 32
        assert nbia.http.retries > 0
        assert nbia.http.requests_made == before + 4 + nbia.http.retries
        offline = NbiaClient(HttpClient(offline=True), sandbox.v4_url)
        with pytest.raises(OfflineError):
            offline.md5_hierarchy(collection="Sandbox-Lung-CT")
    finally:
        sandbox.stop()


def test_an_html_page_is_never_taken_for_a_hash(sb, monkeypatch):
    nbia = client(sb, attempts=2)
    real = nbia.http.post
    calls = []

    def proxy_page_once(url, **kwargs):
        response = real(url, **kwargs)
        if not calls:
            calls.append(url)
            response._content = b"<html><body>Maintenance</body></html>"
        return response

    monkeypatch.setattr(nbia.http, "post", proxy_page_once)
    assert len(nbia.md5_hierarchy(collection="Sandbox-Lung-CT")) == 32
    assert calls and nbia.http.retries == 1


def test_peek_header_is_read_header_of_the_entry_in_one_parse(tmp_path):
    import io
    import zipfile

    from mirror.sources.dicom import open_series_zip, read_header

    sandbox = start(collections=1, seed=3)
    try:
        nbia = client(sandbox)
        row = nbia.series()[0]
        path = nbia.download_series_zip(row["SeriesInstanceUID"], tmp_path)
    finally:
        sandbox.stop()
    raw = zipfile.ZipFile(path)
    with open_series_zip(path, expected_count=row["ImageCount"],
                         series_uid=row["SeriesInstanceUID"]) as series:
        for entry in series:
            header = entry.peek_header()
            data = b"".join(entry.chunks())
            assert data == raw.read(entry.name)
            assert header == read_header(io.BytesIO(data))
            assert header["00080018"]["Value"] == [entry.instance.sop_uid]
            assert entry.peeked["SOPInstanceUID"] == entry.instance.sop_uid
