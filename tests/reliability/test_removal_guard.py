"""One shrunken listing never empties a mirror: the removal guard (issue 16)."""

from __future__ import annotations

import pytest

from mirror.errors import RemovalGuardError
from mirror.sources.isic_v1.sandbox import serve
from mirror.status import mirror_status
from mirror.sync import SyncOptions, sync
from mirror.sync.documents import too_many_removals
from tests.reliability.helpers import run_mirror

METADATA = SyncOptions(blobs=frozenset(), what=frozenset({"images", "datasets"}))


def test_a_listing_that_shrinks_to_3_of_15_marks_nothing_removed(tmp_path):
    root = tmp_path / "m"
    with serve(images=15, seed=61, private_fraction=0.0) as sb:
        assert sync(root, sb.url, METADATA).ok
        sb.mutate(remove=12)
        done = run_mirror("sync", "--root", str(root), "--what", "images,datasets",
                          "--blobs", "", "--quiet")
        assert done.returncode == 2
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "12 of 15 images would be marked removed" in lines[0]
        assert "--allow-removals" in lines[0]
        assert mirror_status(root)["objects"]["image"] == {"current": 15, "removed": 0}
        done = run_mirror("sync", "--root", str(root), "--what", "images,datasets",
                          "--blobs", "", "--quiet", "--allow-removals")
        assert done.returncode == 0, done.stderr
        assert mirror_status(root)["objects"]["image"] == {"current": 3, "removed": 12}


def test_an_ordinary_removal_goes_through(tmp_path):
    root = tmp_path / "m"
    with serve(images=15, seed=62, private_fraction=0.0) as sb:
        assert sync(root, sb.url, METADATA).ok
        sb.mutate(remove=1)
        assert sync(root, sb.url, METADATA).ok
        assert mirror_status(root)["objects"]["image"] == {"current": 14, "removed": 1}


def test_the_guard_can_be_tuned(tmp_path, monkeypatch):
    root = tmp_path / "m"
    with serve(images=15, seed=63, private_fraction=0.0) as sb:
        assert sync(root, sb.url, METADATA).ok
        sb.mutate(remove=4)
        with pytest.raises(RemovalGuardError):
            sync(root, sb.url, METADATA)
        monkeypatch.setenv("MIRROR_REMOVAL_MAX_FRACTION", "0.5")
        assert sync(root, sb.url, METADATA).ok


@pytest.mark.parametrize(("gone", "present", "refused"), [
    (1, 1, False), (2, 3, False), (3, 3, True), (12, 15, True), (99, 1000, False),
    (101, 100_000, True), (150, 1000, True)])
def test_the_rule(gone, present, refused):
    assert too_many_removals(gone, present) is refused
