"""verify and gc agree about superseded files (issue #8, item 6) and about gc's order.

A study whose images change gets a new study markup file; the older one stays on disk
(snapshots may name it) until ``mirror gc``. ``mirror verify`` must count it as a retained
version (hashed like any other), not as an orphan, and gc must retire it while keeping
the current one.
"""

from __future__ import annotations

import os
import signal
import subprocess

from sqlalchemy import select

from mirror.gc import collect_garbage
from mirror.index import Blob, DocumentVersion
from mirror.reindex import reindex_mirror
from mirror.sources.isic_v1.sandbox import serve
from mirror.sync import SyncOptions, sync
from mirror.verify import verify_mirror
from tests.reliability.cases import GC_KILLED_AT
from tests.reliability.helpers import child_env, consistency_problems, indexed, mirror_cmd


def _study_markups(root) -> tuple[dict[str, str], set[str]]:
    """(current markups blob path per study, every markup version path) in the index."""
    from mirror.config import layout_for, load_config
    from mirror.index.database import open_reader
    from mirror.sources.isic_v1.models import Study

    engine = open_reader(layout_for(root, load_config(root)))
    try:
        with engine.connect() as conn:
            studies = set(conn.scalars(select(Study.id)))
            current = dict(conn.execute(select(Blob.object_id, Blob.path).where(
                Blob.role == "markups", Blob.object_id.in_(studies))).all())
            versions = set(conn.scalars(select(DocumentVersion.path).where(
                DocumentVersion.kind == "markup", DocumentVersion.object_id.in_(studies))))
    finally:
        engine.dispose()
    return current, versions


def _changed_study_mirror(root):
    """Sync, remove an image of study 0 from the archive, sync again."""
    with serve(images=10, seed=6, private_fraction=0.0) as sb:
        assert sync(root, sb.url, SyncOptions(blobs=frozenset())).ok
        before, _ = _study_markups(root)
        sb.mutate(remove_ids=[sb.archive.image_id(sb.archive.study_images(0)[0])])
        assert sync(root, options=SyncOptions(blobs=frozenset())).ok
    after, versions = _study_markups(root)
    superseded = sorted(set(before.values()) - set(after.values()))
    assert superseded, "the study's markup file should have changed"
    return superseded, after, versions


def test_superseded_study_markup_is_kept_verified_not_orphaned(tmp_path):
    root = tmp_path / "m"
    superseded, current, versions = _changed_study_mirror(root)
    store = root / "isic"
    assert all((store / p).is_file() for p in superseded)  # retained for snapshots
    assert set(superseded) <= versions and set(current.values()) <= versions
    report = verify_mirror(root)
    assert report.ok, [(p.problem, p.path) for p in report.problems]
    # it is checked, not just tolerated: damage to the old version is reported
    old = store / superseded[0]
    os.chmod(old, 0o644)
    old.write_bytes(old.read_bytes()[:-4])
    assert [(p.problem, p.path) for p in verify_mirror(root).problems] == [
        ("corrupt", superseded[0])]


def test_gc_retires_superseded_markup_and_reindex_keeps_the_current_one(tmp_path):
    root = tmp_path / "m"
    superseded, current, _ = _changed_study_mirror(root)
    reindex_mirror(root)  # the newest file, not an arbitrary one, is current again
    assert _study_markups(root)[0] == current
    removed = collect_garbage(root)
    assert set(superseded) <= set(removed["files"])
    assert not set(current.values()) & set(removed["files"])
    assert removed["bytes"] > 0
    assert not any((root / "isic" / p).exists() for p in superseded)
    assert all((root / "isic" / p).is_file() for p in current.values())
    assert consistency_problems(root) == []


def test_gc_killed_after_publishing_never_leaves_an_index_naming_deleted_files(tmp_path):
    """gc publishes the index without the doomed rows before it deletes any file."""
    root = tmp_path / "m"
    superseded, _, _ = _changed_study_mirror(root)
    killed = subprocess.run(mirror_cmd()[:1] + ["-c", GC_KILLED_AT, "1", str(root)],
                            env=child_env(), capture_output=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL
    problems = {p.problem for p in verify_mirror(root).problems}
    assert problems <= {"orphaned"}  # leftovers nothing names; never "missing"
    assert not set(superseded) & set(indexed(root))
    collect_garbage(root)  # the next gc removes the leftovers at once (no 1 h grace)
    assert consistency_problems(root) == []
