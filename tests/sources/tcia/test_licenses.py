"""Each collection's LICENSE text, kept once per collection from the getImage zips."""

from __future__ import annotations

import io
import zipfile

import pytest
import requests

from mirror.api import Mirror
from mirror.gc import collect_garbage
from mirror.snapshots import create_snapshot, export
from mirror.snapshots.manifest import delete_snapshot
from mirror.sources.tcia.hierarchy import collection_key
from mirror.sources.tcia.sandbox import start
from tests.sources.tcia.test_source import sync


@pytest.fixture
def sb():
    sandbox = start(collections=2, seed=17)
    yield sandbox
    sandbox.stop()


def served_license(sb, collection: str) -> bytes:
    """The LICENSE entry of a zip the sandbox serves for the collection now."""
    uid = next(s.uid for s in sb.archive.series.values()
               if s.collection == collection and s.visible)
    body = requests.get(f"{sb.v4_url}/getImage", params={"SeriesInstanceUID": uid},
                        timeout=30).content
    return zipfile.ZipFile(io.BytesIO(body)).read("LICENSE")


def license_file(root, collection: str):
    with Mirror(root) as m:
        return m.file(collection_key(collection), "license")


def test_each_collection_keeps_the_zips_license_text(tmp_path, sb):
    root = tmp_path / "m"
    assert sync(root, sb).ok
    names = sorted({s.collection for s in sb.archive.series.values()})
    for name in names:
        assert license_file(root, name).read_bytes() == served_license(sb, name)
    assert len(list(root.rglob("license_*.txt"))) == len(names)  # once per collection


def test_a_changed_licence_is_a_new_version_and_a_snapshot_keeps_the_old(tmp_path, sb,
                                                                         monkeypatch):
    monkeypatch.setenv("MIRROR_GC_REMOVED_GRACE_DAYS", "0")
    root = tmp_path / "m"
    assert sync(root, sb).ok
    name = "Sandbox-Lung-CT"
    old_path, old = license_file(root, name), served_license(sb, name)
    create_snapshot(root, "before", where=[f"Collection == {name}"], blobs=("dicom",))
    sb.mutate("set_license", collection=name)
    sb.reset_stats()
    assert sync(root, sb).ok
    assert sb.stats()["GET v4/getImage"] == 1  # one zip brings the new text
    new_path = license_file(root, name)
    assert new_path != old_path and new_path.read_bytes() == served_license(sb, name) != old
    collect_garbage(root, grace=0)
    assert old_path.read_bytes() == old  # pinned by the snapshot: kept
    export(root, "before", tmp_path / "before")
    assert (tmp_path / "before" / "licenses" / name / "LICENSE.txt").read_bytes() == old
    assert f"licence text: licenses/{name}/LICENSE.txt" in \
        (tmp_path / "before" / "citations.txt").read_text()
    delete_snapshot(root, "before")
    collect_garbage(root, grace=0)
    assert not old_path.exists() and new_path.read_bytes() == served_license(sb, name)
