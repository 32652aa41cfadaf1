"""A second sandbox release: each IDC edit, seen through the catalog diff and the buckets."""

from __future__ import annotations

import pytest

from mirror.sources import dicom
from mirror.sources.idc.catalog import changes_since, diff, read_table
from mirror.sources.idc.s3 import IdcS3


@pytest.fixture(scope="module")
def release(idc_sandbox):
    hostile = set(idc_sandbox.hostile.values())
    rows = [r for r in idc_sandbox.catalog.rows("instanceCount >= 2")
            if r["SeriesInstanceUID"] not in hostile and r["instanceCount"] >= 2]
    uid = [r["SeriesInstanceUID"] for r in rows]
    before = {r["SeriesInstanceUID"]: r for r in rows}
    made = idc_sandbox.next_release(
        revise=[uid[0]], remove=[uid[1]], move={uid[2]: "idc-open-data-two"},
        relicense={uid[3]: "CC BY-NC 4.0"}, rename={uid[4]: "lung_phantom_merged"}, add=1)
    yield made, before, uid
    idc_sandbox.releases.remove(made)  # later tests see the filled catalog again


def test_the_diff_sees_every_edit(idc_sandbox, release):
    made, _, uid = release
    old, new = idc_sandbox.catalogs[0], made.catalog
    assert new.version.release == old.version.release + 1
    kinds = {c.series_uid: c.kind for c in diff(old, new)}
    assert kinds == {uid[0]: "revised", uid[1]: "removed", uid[2]: "moved",
                     uid[3]: "metadata", uid[4]: "revised", made.edits["new"][0]: "new"}
    since = changes_since(new, old.version.release)
    assert since["new"] == made.edits["new"]
    assert sorted(since["revised"]) == sorted([uid[0], uid[4]])
    assert since["removed"] == [uid[1]]
    prior = read_table(new, "prior_versions_index").to_pylist()
    assert all(p["max_idc_version"] == old.version.release for p in prior
               if p["SeriesInstanceUID"] in uid[:5])


def test_old_versions_stay_readable_and_new_ones_share_unchanged_instances(idc_sandbox,
                                                                           release):
    made, before, uid = release
    client = IdcS3(idc_sandbox.s3_endpoint)
    new_rows = {r["SeriesInstanceUID"]: r for r in made.catalog.rows()}
    old, new = before[uid[0]], new_rows[uid[0]]
    old_listing = client.list_series(old["aws_bucket"], old["crdc_series_uuid"],
                                     old["instanceCount"])
    new_listing = client.list_series(new["aws_bucket"], new["crdc_series_uuid"],
                                     new["instanceCount"])
    old_listing.check(round(old["series_size_MB"] * 1e6))
    new_listing.check(round(new["series_size_MB"] * 1e6))
    shared = {o.name: o.etag for o in old_listing.objects}.items() & \
        {o.name: o.etag for o in new_listing.objects}.items()
    assert len(shared) == len(new_listing.objects) - 1  # one instance changed
    moved = new_rows[uid[2]]
    assert moved["crdc_series_uuid"] == before[uid[2]]["crdc_series_uuid"]
    listing = client.list_series("idc-open-data-two", moved["crdc_series_uuid"],
                                 moved["instanceCount"])
    assert all(dicom.is_dicom(client.get(o)[:132]) for o in listing.objects)
    removed = before[uid[1]]
    assert client.list_series(removed["aws_bucket"], removed["crdc_series_uuid"],
                              removed["instanceCount"]).complete  # IDC keeps old bytes
    client.close()
