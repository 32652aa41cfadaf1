"""TCIA through the seed's REST API v3 (Bindaas) as a sync source: its key, its re-list and
compare, its zips without md5hashes.csv, and what status says of the frozen data."""

from __future__ import annotations

import hashlib

import pytest
from click.testing import CliRunner

from mirror.api import Mirror
from mirror.cli import main
from mirror.errors import SeriesZipError
from mirror.sources.base import source_for_url
from mirror.sources.dicom import open_series_zip
from mirror.sources.http import HttpClient
from mirror.sources.tcia.sandbox import V3_API_KEY, start
from mirror.sources.tcia.v3_source import API_KEY_ENV, V3Client
from mirror.status import mirror_status


@pytest.fixture
def sb():
    sandbox = start(collections=2, seed=13)
    yield sandbox
    sandbox.stop()


@pytest.fixture
def key(monkeypatch):
    monkeypatch.setenv(API_KEY_ENV, V3_API_KEY)


def cli(*args: str):
    return CliRunner().invoke(main, list(args))


def sync(root, sb, *extra: str):
    done = cli("sync", "--root", str(root), "--url", sb.v3_url, "--quiet", *extra)
    assert done.exit_code == 0, done.output
    return done


def held(root) -> dict[str, str]:
    """SOPInstanceUID -> MD5 of its current DICOM file, as the index names it."""
    with Mirror(root) as m:
        return {sop: hashlib.md5(m.file(sop, "dicom").read_bytes()).hexdigest()
                for sop in m.ids("instance")}


def test_the_url_shape_picks_v3():
    assert source_for_url("https://services.cancerimagingarchive.net/services/v3/TCIA/query") \
        == "tcia-v3"
    assert source_for_url("https://nbia.cancerimagingarchive.net/nbia-api/services/v4") \
        == "tcia-v4"


def test_sync_stores_every_frozen_series_and_never_the_key(tmp_path, sb, key):
    root = tmp_path / "m"
    sync(root, sb, "--collection", "Sandbox-Lung-CT")
    frozen = [s for s in sb.api.frozen.series.values()
              if s.collection == "Sandbox-Lung-CT" and s.visible]
    want = {sop: image.md5 for s in frozen for sop, image in s.images.items()}
    assert want and held(root) == want  # bytes on disk are the archive's
    assert mirror_status(root)["source"] == "tcia-v3"
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert V3_API_KEY.encode() not in path.read_bytes(), path
    sb.reset_stats()
    sync(root, sb, "--collection", "Sandbox-Lung-CT", "--source", "tcia-v3")
    assert sb.stats() == {"GET v3/getSeries": 1, "total": 1}  # one listing, no zip


def test_missing_or_refused_key_is_one_line_naming_the_variable(tmp_path, sb, monkeypatch):
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    root = tmp_path / "m"
    done = cli("sync", "--root", str(root), "--url", sb.v3_url, "--quiet")
    assert done.exit_code == 2
    assert done.output.count("\n") == 1 and API_KEY_ENV in done.output
    assert not root.exists()  # nothing left behind
    monkeypatch.setenv(API_KEY_ENV, "not-the-key")
    done = cli("sync", "--root", str(root), "--url", sb.v3_url, "--quiet")
    assert done.exit_code == 2
    assert done.output.count("\n") == 1 and API_KEY_ENV in done.output
    assert "refused" in done.output and "not-the-key" not in done.output
    assert sb.stats().get("GET v3/getImage", 0) == 0


def test_relist_fetches_new_and_changed_series_and_keeps_a_vanished_one(tmp_path, sb, key):
    root = tmp_path / "m"
    sync(root, sb)
    series = sorted(sb.archive.series.values(), key=lambda s: s.uid)
    changed, vanished = series[0].uid, series[1].uid
    sb.mutate("reprocess", series=changed, add_instances=1)
    sb.mutate("approve", series=changed)
    sb.mutate("withdraw", series=vanished)
    new = sb.mutate("add_series", collection="Sandbox-Brain-MR")["series"]
    sb.refreeze()  # v3 never changes; this models a freeze after these changes
    before = held(root)
    sb.reset_stats()
    sync(root, sb)
    assert sb.stats()["GET v3/getImage"] == 2  # the changed series and the new one
    now = held(root)
    for uid in (changed, new):
        for sop, image in sb.archive.series[uid].images.items():
            assert now[sop] == image.md5
    kept = set(sb.archive.series[vanished].images)
    assert {sop: before[sop] for sop in kept} == {sop: now[sop] for sop in kept}
    status = mirror_status(root)
    assert status["checks"]["absent upstream"]["series"] == 1
    assert status["objects"]["series"]["removed"] == 0
    text = cli("status", "--root", str(root)).output
    assert "frozen upstream" in text and "no longer updated" in text
    sync(root, sb)  # the second listing without it: removed now
    status = mirror_status(root)
    assert status["objects"]["series"]["removed"] == 1
    assert "absent upstream" not in status["checks"]


def test_an_empty_zip_for_a_listed_series_is_refused(tmp_path, sb, key):
    """Bindaas answers an unknown series with an empty zip and status 200: the listing's
    ImageCount refuses it (never an empty series)."""
    http = HttpClient()
    try:
        client = V3Client(http, sb.v3_url)
        path = client.download_series_zip("1.2.3.4", tmp_path)
        with pytest.raises(SeriesZipError, match="holds 0 instances"):
            open_series_zip(path, expected_count=2, series_uid="1.2.3.4")
        uid, s = next(iter(sb.api.frozen.series.items()))
        path = client.download_series_zip(uid, tmp_path)
        with open_series_zip(path, expected_count=s.image_count, series_uid=uid) as zipped:
            assert zipped.md5s == {f"{i:06d}.dcm": image.md5
                                   for i, image in enumerate(s.images.values(), 1)}
    finally:
        http.close()
