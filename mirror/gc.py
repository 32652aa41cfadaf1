"""``mirror gc``: remove what nothing needs any more, never what a snapshot pins.

Candidates are superseded document versions, the files of objects the archive
removed, and stray files no index row names (older than a grace period, so a
sync in progress is never touched). Anything whose SHA-256 appears in a snapshot
manifest under ``snapshots/`` is kept. The files of a removed object (its current
document and every file row) are also kept for ``MIRROR_GC_REMOVED_GRACE_DAYS`` after
the sync that marked it removed: a removal that was a mistake costs nothing to undo.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from sqlalchemy import delete, select

from mirror import progress, settings
from mirror.index import Blob, DocumentVersion, FileVersion
from mirror.ingest import model_of
from mirror.sources.base import SourceSpec, spec_of
from mirror.store import ObjectStore
from mirror.writer import writing

GRACE_SECONDS = 3600.0


def pinned_hashes(snapshots_dir: Path) -> set[str]:
    """Every SHA-256 named in any snapshot manifest (``*/snapshot.json``)."""
    pinned: set[str] = set()
    for manifest in sorted(snapshots_dir.glob("*/snapshot.json")):
        _collect_hashes(json.loads(manifest.read_text(encoding="utf-8")), pinned)
    return pinned


def _collect_hashes(node: object, out: set[str]) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "sha256" and isinstance(value, str):
                out.add(value)
            else:
                _collect_hashes(value, out)
    elif isinstance(node, list):
        for value in node:
            _collect_hashes(value, out)


def collect_garbage(root: Path | str, dry_run: bool = False,
                    grace: float = GRACE_SECONDS) -> dict:
    """Remove unreferenced files (or, with ``dry_run``, only list them)."""
    with writing(root, "gc") as w:
        store = w.store
        with w.index.session() as session:
            plan = _Plan(pinned_hashes(w.layout.snapshots), removed_grace_cutoff())
            doomed = _doomed(session, store, plan, grace, _published_at(w.layout.current),
                             spec_of(w.config.source))
            if not dry_run:
                _forget(session, [p for p, _ in doomed])
        # Publish before deleting: a published index must never name a deleted file. A
        # kill after the publish leaves files nothing names; the next gc removes them.
        generation = None if dry_run else w.index.publish()
        size = sum(_size(store, p) for p, _ in doomed)
        if not dry_run:
            _remove_files(store, [p for p, _ in doomed])
        removed_temp = [] if dry_run else store.clean_temp(max_age=grace)
    return {"dry_run": dry_run, "generation": generation,
            "files": sorted(p for p, _ in doomed), "temp_files": [str(p) for p in removed_temp],
            "bytes": size,
            "reasons": [{"path": p, "reason": r} for p, r in sorted(doomed)],
            "kept": [{"path": p, "reason": r} for p, r in sorted(plan.kept)]}


def removed_grace_cutoff(now: float | None = None) -> float:
    """The POSIX time before which an object's removal is old enough for gc to act on."""
    days = settings.GC_REMOVED_GRACE_DAYS.get()
    return (time.time() if now is None else now) - max(days, 0.0) * 86400


@dataclass
class _Plan:
    """What protects a file from gc: snapshot pins, and a recent removal (the grace)."""

    pinned: set[str]
    cutoff: float  # removals before this are past their grace
    kept: list[tuple[str, str]] = field(default_factory=list)  # (relpath, why), for the report

    def protects(self, relpath: str, sha256: str, removed_at: str | None) -> bool:
        """True (and noted, with every reason) when a candidate file must stay."""
        reasons = []
        when = _timestamp(removed_at)
        if when is not None and when > self.cutoff:
            days = settings.GC_REMOVED_GRACE_DAYS.get()
            until = datetime.fromtimestamp(when + days * 86400).astimezone()
            reasons.append(f"its object was removed on {removed_at[:10]}: kept until "
                           f"{until:%Y-%m-%d} (MIRROR_GC_REMOVED_GRACE_DAYS={days:g})")
        if sha256 in self.pinned:
            reasons.append("pinned by a snapshot")
        if reasons:
            self.kept.append((relpath, "; ".join(reasons)))
        return bool(reasons)


def _timestamp(value: str | None) -> float | None:
    """POSIX time of an ISO-8601 ``removed_at`` (None when absent or unreadable: no grace
    can be computed, so the object counts as removed long ago; old mirrors set it)."""
    if not value:
        return None
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        return None


def _published_at(current: Path) -> float:
    """When the current index generation was published (0 when none is)."""
    try:
        return current.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def _doomed(session, store: ObjectStore, plan: _Plan, grace: float,
            published: float, spec: SourceSpec) -> list[tuple[str, str]]:
    """(relpath, reason) of every file gc may delete; ``plan`` notes what it keeps.

    A file no row names is a stray once it is older than ``grace`` or than the current
    index generation (``published``): the rule ``mirror verify`` uses for "orphaned",
    so the two agree. Newer ones may belong to a sync in progress.
    """
    doomed: list[tuple[str, str]] = []
    current: set[str] = set()
    removed: dict[str, str | None] = {}  # object id -> removed_at
    removed_docs: dict[str, str | None] = {}  # "id:sha" of a removed object's last version
    for kind in spec.kinds:
        model, where = model_of(kind)
        for object_id, sha, is_removed, removed_at in session.execute(
                select(model.id, model.doc_sha256, model.removed, model.removed_at)
                .where(*where)):
            if is_removed:
                removed[object_id] = removed_at
                removed_docs[f"{object_id}:{sha}"] = removed_at
            else:
                current.add(f"{object_id}:{sha}")
    # A JSON file that is a file role (ISIC's markups): its current version is the one
    # its file row names.
    for object_id, sha in session.execute(
            select(Blob.object_id, Blob.sha256).where(Blob.path.like("%.json.zst"))):
        if object_id not in removed:
            current.add(f"{object_id}:{sha}")
        else:
            removed_docs[f"{object_id}:{sha}"] = removed[object_id]
    for version in session.scalars(select(DocumentVersion)):
        key = f"{version.object_id}:{version.sha256}"
        if key in current or plan.protects(version.path, version.sha256,
                                           removed_docs.get(key)):
            continue
        doomed.append((version.path, "removed object's document, past its grace"
                       if key in removed_docs else "superseded document version"))
    for blob in session.scalars(select(Blob)):
        if blob.object_id in removed and not plan.protects(blob.path, blob.sha256,
                                                           removed[blob.object_id]):
            doomed.append((blob.path, "file of an object the archive removed, past its "
                                      "grace"))
    indexed = set(session.scalars(select(Blob.path))) | set(
        session.scalars(select(DocumentVersion.path)))
    # a file replaced since (a new version beside it) is named by its version row only:
    # a snapshot that pins it keeps it
    versions = dict(session.execute(select(FileVersion.path, FileVersion.sha256)).all())
    cutoff = max(time.time() - grace, published)
    with progress.task("gc: scanning", unit="file") as step:
        for relpath in store.iter_files():
            if relpath not in indexed and os.lstat(store.path(relpath)).st_mtime < cutoff:
                if relpath in versions and plan.protects(relpath, versions[relpath], None):
                    continue
                doomed.append((relpath, "not named by the index"))
            step.update(1)
    return doomed


def _forget(session, paths: list[str]) -> None:
    """Drop the rows naming ``paths`` (committed; published before any file goes)."""
    for start in range(0, len(paths), 500):
        chunk = paths[start:start + 500]
        session.execute(delete(Blob).where(Blob.path.in_(chunk)))
        session.execute(delete(DocumentVersion).where(DocumentVersion.path.in_(chunk)))
        session.execute(delete(FileVersion).where(FileVersion.path.in_(chunk)))
    session.commit()


def _remove_files(store: ObjectStore, paths: list[str]) -> None:
    with progress.task("gc: removing", total=len(paths), unit="file") as step:
        for relpath in paths:
            if store.exists(relpath):
                store.remove(relpath)
            step.update(1)
    store.flush()  # the removals are durable before gc reports them


def _size(store: ObjectStore, relpath: str) -> int:
    try:
        return os.lstat(store.path(relpath)).st_size
    except FileNotFoundError:
        return 0
