"""kill -9 at random moments: sync, snapshot export and gc leave a mirror that verifies.

Kill moments are seeded (by time since start and by bytes written into the store), so a
failure reproduces. The fast subset uses a few kill points; ``-m slow`` and
``bench/reliability.py`` run many more on more images.
"""

from __future__ import annotations

import pytest

from mirror.sources.isic_v1.sandbox import serve
from tests.reliability.cases import (
    crash_gc,
    crash_snapshot_export,
    crash_sync,
    matches_clean_sync,
)
from tests.reliability.helpers import run_mirror

pytestmark = pytest.mark.timeout(240)


def _assert_clean(tally) -> None:
    assert tally.failures == [], tally.failures
    assert tally.data_lost == 0
    assert tally.passed == tally.tried


def test_sync_killed_at_random_moments_resumes_to_a_clean_mirror(tmp_path):
    root = tmp_path / "m"
    with serve(images=12, seed=31, private_fraction=0.0) as sb:
        tally = crash_sync(root, sb, seed=31, kills=2, max_seconds=1.5, max_bytes=1_000_000)
        _assert_clean(tally)
        assert tally.killed >= 1  # the kills landed mid-run, not after the child finished
        # the crashed-and-resumed mirror holds what one uninterrupted sync would
        assert matches_clean_sync(root, tmp_path / "clean", sb.url) == []


@pytest.mark.slow
def test_sync_killed_at_many_moments(tmp_path):
    root = tmp_path / "m"
    with serve(images=40, seed=32, private_fraction=0.0) as sb:
        tally = crash_sync(root, sb, seed=32, kills=12, max_seconds=5.0, max_bytes=4_000_000)
        _assert_clean(tally)
        assert matches_clean_sync(root, tmp_path / "clean", sb.url) == []


@pytest.fixture(scope="module")
def pinned_mirror(tmp_path_factory):
    """A mirror with a snapshot pinned, then changed so that gc has work."""
    root = tmp_path_factory.mktemp("pinned") / "m"
    with serve(images=10, seed=33, private_fraction=0.0) as sb:
        for args in (("sync", "--root", str(root), "--url", sb.url, "--quiet"),
                     ("snapshot", "create", "--root", str(root), "pin")):
            done = run_mirror(*args)
            assert done.returncode == 0, done.stderr
        yield root, sb


@pytest.mark.parametrize("fmt", ["dir", "tar"])
def test_snapshot_export_killed_leaves_no_partial_dest(pinned_mirror, tmp_path, fmt):
    root, _ = pinned_mirror
    tally = crash_snapshot_export(root, "pin", tmp_path, seed=34, kills=3, fmt=fmt)
    _assert_clean(tally)


@pytest.mark.slow  # the fast subset kills gc at its riskiest point in test_superseded.py
def test_gc_killed_keeps_pinned_snapshot_and_verifies(pinned_mirror):
    root, sb = pinned_mirror
    sb.mutate(update=4, remove=2)  # superseded versions and removed objects: garbage
    done = run_mirror("sync", "--root", str(root), "--quiet")
    assert done.returncode == 0, done.stderr
    tally = crash_gc(root, "pin", seed=35, kills=2)
    _assert_clean(tally)
    assert tally.killed >= 1
