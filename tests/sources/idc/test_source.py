"""The IDC source through the engine, against SeaweedFS holding real collections at real keys.

A first sync of the whole sandbox catalog (two collections, two buckets, five planted bucket
faults), its verify and reindex, the no-op re-sync's request count (zero), a catalog-only
mirror, a new IDC release (each kind of edit changes exactly its series), and a hostile S3
endpoint (keys climbing out, listings that never end) that must write nothing anywhere.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from mirror.api import Mirror
from mirror.reindex import reindex_mirror
from mirror.snapshots import create_snapshot, export
from mirror.sources.dicom import keyword_columns
from mirror.sources.idc.catalog import read_table, write_catalog
from mirror.sources.idc.sandbox.api import HOSTILE_BUCKETS
from mirror.status import mirror_status
from mirror.sync import SyncOptions, sync
from mirror.verify import verify_mirror
from tests.reliability.helpers import child_env

pytestmark = pytest.mark.timeout(240)
CLEAN = 'collection_id == "lung_phantom"'  # the sandbox plants its faults in the last rows


def _catalog_dir(catalog) -> str:
    return str(catalog.paths["idc_index"].parent)


def _sync(root: Path, sandbox, catalog=None, **scope) -> dict:
    options = dict(scope.pop("options", {}))
    scope.setdefault("s3_endpoint", sandbox.s3_endpoint)
    scope.setdefault("catalog", _catalog_dir(catalog or sandbox.catalog))
    return sync(root, None, SyncOptions(source="idc", scope=scope, **options)).as_dict()


def _files(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def whole(idc_sandbox, tmp_path_factory):
    """The whole sandbox catalog, mirrored once (hostile series included)."""
    folder = tmp_path_factory.mktemp("whole")
    root = folder / "m"
    return folder, root, _sync(root, idc_sandbox)


def test_every_clean_series_is_mirrored_and_each_planted_fault_fails_its_series(
        idc_sandbox, whole):
    folder, root, summary = whole
    failed = {f["object_id"]: f["error"] for f in summary["failures"]}
    assert set(failed) == set(idc_sandbox.hostile.values())
    assert "nested" in failed[idc_sandbox.hostile["nested_key"]]
    assert "catalog says" in failed[idc_sandbox.hostile["extra_object"]]
    assert "catalog says" in failed[idc_sandbox.hostile["missing_object"]]
    assert "bytes" in failed[idc_sandbox.hostile["oversize"]]
    assert "DICM" in failed[idc_sandbox.hostile["not_dicom"]]
    rows = list(idc_sandbox.catalog.rows())
    clean = [r for r in rows if r["SeriesInstanceUID"] not in failed]
    status = mirror_status(root)
    assert status["objects"]["series"]["current"] == len(rows)
    assert status["objects"]["collection"]["current"] == 2
    assert status["objects"]["catalog"]["current"] == 1
    assert status["objects"]["instance"]["current"] == sum(r["instanceCount"] for r in clean)
    assert status["blobs"]["instance"]["files"] == sum(r["instanceCount"] for r in clean)
    assert status["blobs"]["instance"]["bytes"] == sum(round(r["series_size_MB"] * 1e6)
                                                       for r in clean)
    report = verify_mirror(root)
    assert report.ok and not report.problems, report.problems  # a failed series left nothing
    assert [p.name for p in folder.iterdir()] == ["m"]


def test_instances_are_indexed_by_their_headers_and_belong_to_their_catalog_series(
        idc_sandbox, whole):
    _, root, _ = whole
    rows = {r["SeriesInstanceUID"]: r for r in idc_sandbox.catalog.rows()}
    with Mirror(root) as m:
        instances = m.ids("instance")
        assert instances
        sops = set()
        for uuid in instances[:40]:
            doc = m.document("instance", uuid)
            tags = keyword_columns(doc["dicom"])  # the header, queryable by keyword
            row = rows[doc["SeriesInstanceUID"]]
            assert tags["SeriesInstanceUID"] == row["SeriesInstanceUID"]
            assert tags["StudyInstanceUID"] == row["StudyInstanceUID"]
            assert tags["SOPInstanceUID"] == doc["SOPInstanceUID"]
            assert tags.get("Modality") == row["Modality"]
            assert m.file(uuid, "instance").read_bytes()[128:132] == b"DICM"
            sops.add(doc["SOPInstanceUID"])
        assert len(sops) == min(40, len(instances))
        ct = {i for i in instances if rows[m.document("instance", i)[
            "SeriesInstanceUID"]]["Modality"] == "CT"}
        assert ct and set(m.select("instances", ["Modality", "==", "CT"])) == ct  # by keyword
        header, found = m.sql("SELECT count(*) AS n FROM instances WHERE Modality = 'CT'")
        assert found == [(len(ct),)]
        lung = m.select("series", ["collection_id", "==", "lung_phantom"])
        assert len(lung) == sum(1 for r in rows.values() if r["collection_id"] == "lung_phantom")
        series = m.document("series", next(iter(rows)))
        assert series == rows[series["SeriesInstanceUID"]]  # the catalog row, as shipped
        catalog = m.document("catalog", "idc-index-data")
        assert catalog["package"] == idc_sandbox.catalog.version.package


def test_reindex_from_the_store_alone_gives_the_same_counts(whole, tmp_path):
    _, root, _ = whole
    before = mirror_status(root)
    reindex_mirror(root)
    after = mirror_status(root)
    assert after["objects"] == before["objects"] and after["blobs"] == before["blobs"]
    assert verify_mirror(root).ok


def test_a_resync_with_the_same_catalog_makes_zero_requests(idc_sandbox, tmp_path):
    root = tmp_path / "m"
    first = _sync(root, idc_sandbox, where=CLEAN)
    assert first["ok"] and first["requests"] > 0
    before = idc_sandbox.seaweed.s3_requests()
    again = _sync(root, idc_sandbox, where=CLEAN)
    assert again["ok"] and again["requests"] == 0
    assert idc_sandbox.seaweed.s3_requests() == before  # counted by SeaweedFS itself
    assert again["plan"]["files"] == 0 and again["objects"] == {"catalog": {"unchanged": 1}}
    sql = _sync(root, idc_sandbox, sql="SELECT SeriesInstanceUID FROM idc_index WHERE "
                "collection_id = 'lung_phantom'")
    assert sql["requests"] == 0 and sql["objects"]["series"] == {
        "unchanged": first["objects"]["series"]["new"]}


def test_catalog_only_mirrors_the_rows_and_asks_the_buckets_nothing(idc_sandbox, tmp_path):
    root = tmp_path / "m"
    before = idc_sandbox.seaweed.s3_requests()
    done = _sync(root, idc_sandbox, options={"blobs": frozenset()})
    assert done["ok"] and done["requests"] == 0
    assert idc_sandbox.seaweed.s3_requests() == before
    status = mirror_status(root)
    assert status["objects"]["series"]["current"] == idc_sandbox.catalog.count()
    assert status["objects"]["instance"]["current"] == 0 and not status["blobs"]


def test_the_cli_takes_where_sql_endpoint_and_catalog(idc_sandbox, tmp_path):
    root = tmp_path / "m"
    args = [sys.executable, "-m", "mirror", "sync", "--root", str(root), "--source", "idc",
            "--s3-endpoint", idc_sandbox.s3_endpoint, "--catalog",
            _catalog_dir(idc_sandbox.catalog), "--json", "--quiet"]
    done = subprocess.run([*args, "--where", CLEAN + ' AND Modality == "CT"'],
                          capture_output=True, text=True, env=child_env(), timeout=120)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    ct = idc_sandbox.catalog.count(CLEAN + " AND Modality == CT")
    assert summary["objects"]["series"]["new"] == ct > 0
    bad = subprocess.run([*args, "--sql", "DELETE FROM idc_index"], capture_output=True,
                         text=True, env=child_env(), timeout=120)
    assert bad.returncode != 0 and "SELECT" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr
    both = subprocess.run([*args, "--sql", "SELECT SeriesInstanceUID FROM idc_index",
                           "--where", CLEAN], capture_output=True, text=True, env=child_env(),
                          timeout=120)
    assert both.returncode != 0 and len(both.stderr.strip().splitlines()) == 1


def test_a_new_release_changes_exactly_its_series(idc_sandbox, tmp_path):
    root = tmp_path / "m"
    first = _sync(root, idc_sandbox, where=CLEAN)
    assert first["ok"]
    snap = create_snapshot(root, "before", blobs=("dicom",))
    export(root, "before", tmp_path / "export-before")
    hostile = set(idc_sandbox.hostile.values())
    rows = sorted((r for r in idc_sandbox.catalog.rows(CLEAN)
                   if r["SeriesInstanceUID"] not in hostile),
                  key=lambda r: -r["instanceCount"])  # revise the one with two instances
    uid = [r["SeriesInstanceUID"] for r in rows[:5]]
    with Mirror(root) as m:
        old_instances = {u: set(i for i in m.ids("instance")
                                if m.document("instance", i)["SeriesInstanceUID"] == u)
                         for u in uid}
    release = idc_sandbox.next_release(
        revise=[uid[0]], remove=[uid[1]], move={uid[2]: "idc-open-data-two"},
        relicense={uid[3]: "CC BY-NC 4.0"}, rename={uid[4]: "lung_phantom_merged"}, add=1)
    try:
        before = idc_sandbox.seaweed.s3_requests()
        done = _sync(root, idc_sandbox, catalog=release.catalog, where=CLEAN)
        spent = idc_sandbox.seaweed.s3_requests() - before
    finally:
        idc_sandbox.releases.remove(release)
    assert done["ok"], done["failures"]
    series = done["objects"]["series"]
    assert series["changed"] == 4 and series["new"] == 1 and series["removed"] == 1
    # revised, renamed and new: one listing and one changed instance each; moved: nothing
    assert done["blobs"]["instance"] == {"fetched": 3}
    assert done["requests"] == spent == 6
    with Mirror(root) as m:
        assert uid[1] not in m.ids("series")
        assert uid[1] in m.ids("series", include_removed=True)
        assert m.document("series", uid[2])["aws_bucket"] == "idc-open-data-two"
        assert m.document("series", uid[3])["license_short_name"] == "CC BY-NC 4.0"
        assert m.document("series", uid[4])["collection_id"] == "lung_phantom_merged"
        current = set(m.ids("instance"))
        for revised in (uid[0], uid[4]):
            kept = old_instances[revised] & current
            assert len(kept) == len(old_instances[revised]) - 1  # one instance changed
    assert verify_mirror(root).ok
    export(root, "before", tmp_path / "export-after")  # the pinned old versions
    assert _files(tmp_path / "export-before") == _files(tmp_path / "export-after")
    assert len(snap.of_kind("instance")) == first["blobs"]["instance"]["fetched"]
    again = _sync(root, idc_sandbox, catalog=release.catalog, where=CLEAN)
    assert again["requests"] == 0 and again["plan"]["files"] == 0


def test_a_hostile_endpoint_fails_each_series_and_writes_nothing_anywhere(
        idc_sandbox, tmp_path):
    template = read_table(idc_sandbox.catalog, scope=CLEAN).slice(0, 1).to_pylist()[0]
    rows = []
    for n, bucket in enumerate(HOSTILE_BUCKETS):
        rows.append(dict(template, aws_bucket=bucket, instanceCount=1,
                         SeriesInstanceUID=f"{template['SeriesInstanceUID']}.{n + 1}",
                         crdc_series_uuid=f"00000000-0000-4000-8000-{n:012d}"))
    schema = read_table(idc_sandbox.catalog).schema
    catalog = write_catalog(tmp_path / "catalog", {"idc_index": pa.Table.from_pylist(
        rows, schema=schema)}, build="25.0.5+hostile")
    folder = tmp_path / "mirror"
    folder.mkdir()
    done = _sync(folder / "m", idc_sandbox, catalog=catalog,
                 s3_endpoint=idc_sandbox.hostile_s3_endpoint)
    assert {f["object_id"] for f in done["failures"]} == {r["SeriesInstanceUID"] for r in rows}
    errors = " | ".join(f["error"] for f in done["failures"])
    for word in ("never ends", "'..'", "outside the listed prefix", "not a .dcm", "more than"):
        assert word in errors
    assert [p.name for p in folder.iterdir()] == ["m"]
    assert not list((folder / "m").rglob("dcm_*"))
    assert not (tmp_path / "etc").exists()
    assert verify_mirror(folder / "m").ok
