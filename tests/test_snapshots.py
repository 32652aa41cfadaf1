"""Snapshots: pin, export byte-identically, rebuild elsewhere, verify, diff, survive gc."""

from __future__ import annotations

import hashlib
import json
import os

import bagit
import pytest
from click.testing import CliRunner

from mirror import Mirror
from mirror.cli import main
from mirror.errors import MirrorError
from mirror.gc import collect_garbage
from mirror.snapshots import (
    create_snapshot,
    diff_snapshots,
    export,
    list_snapshots,
    load_manifest,
    open_snapshot,
    verify_snapshot,
)
from mirror.snapshots.build import build_snapshot
from mirror.sources.isic_v1.sandbox import serve
from mirror.sync import SyncOptions, sync

SEED, IMAGES = 9, 16
WHERE = [["meta.clinical.age_approx", ">=", 30]]


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture()
def sandbox():
    with serve(images=IMAGES, seed=SEED, private_fraction=0.0) as sb:
        yield sb


@pytest.fixture()
def root(tmp_path, sandbox):
    root = tmp_path / "mirror"
    assert sync(root, sandbox.url, SyncOptions(workers=4)).ok
    return root


def test_manifest_pins_exact_versions_and_is_immutable(root):
    snap = create_snapshot(root, "s1", WHERE)
    manifest = snap.manifest
    assert manifest["format"] == "mirror-snapshot/1" and manifest["selection"]["where"] == WHERE
    images = snap.of_kind("image")
    assert images and all(o["document"]["sha256"] and o["files"] for o in images)
    assert {o["kind"] for o in snap.objects} == {"image", "dataset", "segmentation"}
    assert [o for o in snap.objects if o["kind"] == "segmentation" and o["files"]]
    assert load_manifest(snap.path).manifest == manifest  # its id checks out
    with pytest.raises(MirrorError, match="exists and snapshots never change"):
        create_snapshot(root, "s1")
    with pytest.raises(MirrorError, match="bad snapshot name"):
        create_snapshot(root, "../escape")
    edited = root.parent / "edited.json"
    edited.write_text(json.dumps({**manifest, "name": "other"}))
    with pytest.raises(MirrorError, match="has been edited"):
        load_manifest(edited)
    assert [s["name"] for s in list_snapshots(root)] == ["s1"]


def test_export_is_byte_identical_and_self_checking(root, tmp_path):
    create_snapshot(root, "s1", WHERE)
    export(root, "s1", tmp_path / "a.tar", "tar")
    export(root, "s1", tmp_path / "b.tar", "tar")
    assert sha(tmp_path / "a.tar") == sha(tmp_path / "b.tar")
    export(root, "s1", tmp_path / "dir", "dir")
    sums = (tmp_path / "dir" / "SHA256SUMS").read_text().splitlines()
    for line in sums:
        digest, path = line.split("  ", 1)
        assert sha(tmp_path / "dir" / path) == digest
    names = {line.split("  ", 1)[1] for line in sums}
    assert {"metadata.csv", "attribution.txt", "snapshot.json"} <= names
    with pytest.raises(MirrorError, match="exists"):
        export(root, "s1", tmp_path / "dir", "dir")  # never overwrites an export
    with pytest.raises(MirrorError, match=r"\*\.tar"):
        export(root, "s1", tmp_path / "c.tar.gz", "tar")


def test_an_export_clears_what_a_killed_export_left_beside_it(root, tmp_path):
    import socket
    import subprocess
    import sys
    import uuid

    from mirror.files import TMP_PREFIX

    create_snapshot(root, "s1", WHERE)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    host = socket.gethostname()

    def temp(pid, owner, dest_name, folder=True):
        path = tmp_path / f"{TMP_PREFIX}{uuid.uuid4().hex}.{pid}@{owner}~{dest_name}"
        if folder:
            (path / "images").mkdir(parents=True)
        else:
            path.write_bytes(b"partial tar")
        return path

    killed_dir, killed_tar = temp(dead, host, "out"), temp(dead, host, "out", folder=False)
    running = temp(os.getpid(), host, "out")  # an export still running: kept
    elsewhere = temp(dead, "another-host", "out")  # its pid means nothing here: kept
    other_dest = temp(dead, host, "other")  # beside another DEST: not this export's
    legacy = tmp_path / f"{TMP_PREFIX}{uuid.uuid4().hex}-out"  # unowned (older versions)
    legacy.write_bytes(b"partial")
    export(root, "s1", tmp_path / "out", "dir")
    assert not killed_dir.exists() and not killed_tar.exists() and not legacy.exists()
    assert running.exists() and elsewhere.exists() and other_dest.exists()
    assert (tmp_path / "out" / "SHA256SUMS").exists()


def test_bagit_output_validates_with_an_independent_validator(root, tmp_path):
    create_snapshot(root, "s1", WHERE)
    export(root, "s1", tmp_path / "bag", "bagit")
    bag = bagit.Bag(str(tmp_path / "bag"))
    bag.validate()  # raises on any problem
    assert bag.info["External-Identifier"].startswith("sha256:")
    victim = next((tmp_path / "bag" / "data" / "images").iterdir())
    os.chmod(victim, 0o644)
    victim.write_bytes(victim.read_bytes() + b"x")
    with pytest.raises(bagit.BagValidationError):
        bagit.Bag(str(tmp_path / "bag")).validate()


def test_build_on_a_fresh_root_gives_the_same_bytes(root, sandbox, tmp_path):
    snap = create_snapshot(root, "s1", WHERE)
    export(root, "s1", tmp_path / "original.tar", "tar")
    report = build_snapshot(snap.path, tmp_path / "fresh", sandbox.url)
    assert report["ok"] and not report["changed"] and not report["gone"]
    assert report["verified"] == sum(1 + len(o.get("files", [])) for o in snap.objects)
    assert verify_snapshot(tmp_path / "fresh", "s1")["ok"]
    export(tmp_path / "fresh", "s1", tmp_path / "rebuilt.tar", "tar")
    assert sha(tmp_path / "rebuilt.tar") == sha(tmp_path / "original.tar")


def test_build_after_upstream_changes_names_exactly_what_changed(root, sandbox, tmp_path):
    snap = create_snapshot(root, "s1", WHERE)
    pinned = [o for o in snap.of_kind("image")]
    changed, gone = pinned[0], pinned[1]
    sandbox.mutate(update_ids=[changed["id"]], remove_ids=[gone["id"]])
    report = build_snapshot(snap.path, tmp_path / "fresh", sandbox.url)
    assert not report["ok"]
    # the updated image, and the dataset that lost an image (its document carries a count)
    with Mirror(root) as m:
        gone_dataset = m.image(gone["id"]).json["dataset"]["name"]
    assert sorted(line.split(":")[0] for line in report["changed"]) == sorted(
        [f"image {changed['name']}", f"dataset {gone_dataset}"])
    gone_segmentations = [o for o in snap.of_kind("segmentation") if o["image_id"] == gone["id"]]
    assert len(report["gone"]) == 1 + len(gone_segmentations)
    assert f"image {gone['name']}: the archive no longer serves it" in report["gone"]
    assert "s1" not in [s["name"] for s in list_snapshots(tmp_path / "fresh")]
    # everything else verified and is kept
    lost = [gone, *gone_segmentations]
    total = sum(1 + len(o.get("files", [])) for o in snap.objects)
    assert report["verified"] == total - 2 - sum(1 + len(o.get("files", [])) for o in lost)
    result = CliRunner().invoke(main, ["snapshot", "build", str(snap.path), "--root",
                                       str(tmp_path / "cli"), "--url", sandbox.url])
    assert result.exit_code == 1 and f"2 changed, {len(lost)} gone" in result.output


def test_pinned_versions_survive_sync_and_gc(root, sandbox, tmp_path):
    snap = create_snapshot(root, "s1", WHERE)
    export(root, "s1", tmp_path / "before.tar", "tar")
    sandbox.mutate(update_ids=[o["id"] for o in snap.of_kind("image")][:3])
    assert sync(root, options=SyncOptions(workers=4)).ok
    collect_garbage(root, grace=0)
    assert verify_snapshot(root, "s1")["ok"]
    export(root, "s1", tmp_path / "after.tar", "tar")
    assert sha(tmp_path / "after.tar") == sha(tmp_path / "before.tar")


def test_diff_names_added_removed_and_changed_fields(root, sandbox):
    create_snapshot(root, "before")
    changes = sandbox.mutate(add=1, update=2, remove=1)
    assert sync(root, options=SyncOptions(workers=4)).ok
    create_snapshot(root, "after")
    diff = diff_snapshots(root, "before", "after")
    assert {o["id"] for o in diff["added"] if o["kind"] == "image"} == set(changes["added"])
    assert {o["id"] for o in diff["removed"] if o["kind"] == "image"} == set(changes["removed"])
    changed_images = {o["id"]: o for o in diff["changed"] if o["kind"] == "image"}
    assert set(changed_images) == set(changes["updated"])
    assert all("updated" in o["fields"] for o in changed_images.values())
    out = CliRunner().invoke(main, ["snapshot", "diff", "--root", str(root), "before", "after"])
    assert out.exit_code == 0
    assert f"{len(diff['removed'])} removed, {len(diff['changed'])} changed" in out.output
    assert any(line.startswith("~ image ") and "updated" in line
               for line in out.output.splitlines())


def test_verify_finds_a_damaged_pinned_file(root):
    snap = create_snapshot(root, "s1", WHERE)
    entry = snap.of_kind("image")[0]
    target = next(root.glob(f"isic/store/*/image_{entry['id']}_*"))
    os.chmod(target, 0o644)
    target.write_bytes(b"\xff\xd8\xff" + b"0" * 100)
    report = verify_snapshot(root, "s1")
    assert not report["ok"] and len(report["problems"]) == 1
    assert entry["name"] in report["problems"][0]
    result = CliRunner().invoke(main, ["snapshot", "verify", "--root", str(root), "s1"])
    assert result.exit_code == 1


def test_cli_create_list_show(root):
    runner = CliRunner()
    created = runner.invoke(main, ["snapshot", "create", "--root", str(root), "s1",
                                   "--where", "meta.clinical.age_approx >= 30"])
    assert created.exit_code == 0, created.output
    shown = json.loads(runner.invoke(main, ["snapshot", "show", "--root", str(root), "s1"]).output)
    assert shown == open_snapshot(root, "s1").manifest
    listed = runner.invoke(main, ["snapshot", "list", "--root", str(root)])
    assert listed.output.startswith("s1\t")
    again = runner.invoke(main, ["snapshot", "create", "--root", str(root), "s1"])
    assert again.exit_code == 2 and "never change" in again.output
