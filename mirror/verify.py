"""``mirror verify``: re-hash everything and cross-check index and store.

Problems found:

- ``missing``: an index row names a file that is not there;
- ``corrupt``: a file's SHA-256 or size differs from its row (for documents, of the
  decompressed payload; a damaged zstd frame fails its checksum);
- ``malformed``: a superpixel PNG that cannot be this image's label image (wrong mode,
  size or labels), however well its hash matches;
- ``orphaned``: a published file no row names (files newer than the current index
  generation are a sync in progress, not orphans);
- ``temp``: leftover temp files of an interrupted writer (cleaned by the next writer).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from sqlalchemy import delete, select

from mirror import progress
from mirror.config import layout_for, load_config
from mirror.errors import MirrorError
from mirror.index import Blob, DocumentVersion, FileVersion
from mirror.index.database import open_reader
from mirror.sources.base import source_hooks, spec_of
from mirror.store import ObjectStore
from mirror.temps import writer_leftovers
from mirror.writer import writing


@dataclass
class Problem:
    problem: str  # missing, corrupt, malformed, disagrees, orphaned, temp
    path: str
    detail: str = ""


@dataclass
class VerifyReport:
    checked: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(p.problem != "temp" for p in self.problems)

    def as_dict(self) -> dict:
        return {"ok": self.ok, "checked": self.checked,
                "problems": [vars(p) for p in self.problems]}


def verify_mirror(root: Path | str, fast: bool = False) -> VerifyReport:
    """Check every document version and blob the published index names, and every file."""
    root = Path(root)
    config = load_config(root)
    layout = layout_for(root, config)
    store = ObjectStore(layout)
    engine = open_reader(layout, config.index_url)
    try:
        with engine.connect() as conn:
            rows = [(r.path, r.sha256, r.size) for r in conn.execute(select(Blob))]
            rows += [(r.path, r.sha256, r.size) for r in conn.execute(select(DocumentVersion))]
            # Older versions of replaced files stay until gc retires them: checked while
            # they exist, never orphans.
            current = {r[0] for r in rows}
            rows += [(r.path, r.sha256, r.size) for r in conn.execute(select(FileVersion))
                     if r.path not in current and store.exists(r.path)]
            hooks = _hooks(config.source)
            validation = getattr(hooks, "validation_tasks", None)
            checks = validation(conn) if validation is not None else {}
    finally:
        engine.dispose()
    report = VerifyReport()
    with progress.task("verify", total=len(rows), unit="file",
                       total_bytes=sum(size for _, _, size in rows)) as step:
        for relpath, sha256, size in sorted(rows):
            report.checked += 1
            problem = _check_file(store, relpath, sha256, size, fast)
            if problem is None and relpath in checks and not fast:
                problem = _check_valid(store, spec_of(config.source), relpath, checks[relpath])
            if problem:
                report.problems.append(problem)
            step.update(1, size, detail=f"{len(report.problems)} problem(s)")
    _find_strays(store, layout, {r[0] for r in rows}, report)
    return report


def _check_file(store: ObjectStore, relpath: str, sha256: str, size: int,
                fast: bool) -> Problem | None:
    if not store.exists(relpath):
        return Problem("missing", relpath, "named by the index but not on disk")
    if fast:
        if relpath.endswith(".zst"):
            return None  # the payload size needs decompression: left to the full check
        actual = store.path(relpath).stat().st_size
        return None if actual == size else Problem("corrupt", relpath,
                                                   f"size {actual}, expected {size}")
    try:
        actual_sha, actual_size = store.hash(relpath)
    except Exception as exc:  # noqa: BLE001 - a damaged zstd frame, unreadable file
        return Problem("corrupt", relpath, f"unreadable: {exc}")
    if actual_sha != sha256 or actual_size != size:
        return Problem("corrupt", relpath,
                       f"sha256 {actual_sha[:12]}… size {actual_size}, "
                       f"expected {sha256[:12]}… size {size}")
    return None


def _hooks(source: str):
    """The source's maintenance hooks (each optional), or None when it has none."""
    try:
        return source_hooks(source, "maintenance")
    except MirrorError:
        return None


def _check_valid(store: ObjectStore, spec, relpath: str, task) -> Problem | None:
    """The role's validator on a stored file: well hashed is not enough (a superpixel PNG
    must be this image's label image)."""
    try:
        decoded = spec.role(task.role).validate(store.path(relpath), replace(task, shape=None))
    except ValueError as exc:  # SuperpixelError and other decoders' refusals
        return Problem("malformed", relpath, str(exc))
    shape = getattr(decoded, "shape", None)
    if task.shape is not None and shape is not None and tuple(shape[:2]) != tuple(task.shape):
        # Well hashed and well formed, but not the size the image's metadata says now: the
        # file is as the archive served it (the sync checked it against the metadata of
        # then). Reported, never deleted by --repair: the archive would serve it again.
        return Problem("disagrees", relpath,
                       f"is {shape[1]}x{shape[0]}, but the image is {task.shape[1]}x"
                       f"{task.shape[0]} (the archive's metadata and file disagree; kept)")
    return None


def _find_strays(store: ObjectStore, layout, indexed: set[str], report: VerifyReport) -> None:
    generation = layout.current
    since = generation.stat().st_mtime if generation.exists() else float("inf")
    for relpath in store.iter_files():
        if relpath not in indexed and os.stat(store.path(relpath)).st_mtime < since:
            report.problems.append(Problem("orphaned", relpath, "on disk but not in the index"))
    for path in store.temp_files():
        report.problems.append(Problem("temp", str(path.relative_to(layout.base)),
                                       "leftover temp file of an interrupted write"))
    for path in writer_leftovers(layout):  # index copies, CURRENT, mirror.json temps
        report.problems.append(Problem("temp", str(path.relative_to(layout.root)),
                                       "left by an aborted writer; 'mirror verify --repair' "
                                       "or the next sync removes it"))


def verify_lines(report: VerifyReport) -> list[str]:
    lines = [f"{p.problem:9} {p.path}  {p.detail}" for p in report.problems]
    bad = sum(p.problem != "temp" for p in report.problems)
    lines.append(f"checked {report.checked} file(s): "
                 + ("all good" if report.ok else f"{bad} problem(s); "
                    "run 'mirror verify --repair' to fetch them again"))
    return lines


def repair_mirror(root: Path | str, report: VerifyReport) -> VerifyReport:
    """Forget bad files, fetch them again with a sync, and verify once more."""
    from mirror.sync import sync

    bad = sorted(p.path for p in report.problems
                 if p.problem in ("missing", "corrupt", "malformed"))
    with writing(root, "repair") as w:  # which removes aborted writers' temps outside
        w.store.clean_temp()  # ... and dead writers' store temps
        if not bad:
            return verify_mirror(root)
        with w.index.session() as session:
            _forget(session, w.store, bad, _hooks(w.config.source))
        w.index.publish()
    sync(root)
    return verify_mirror(root)


def needs_repair(report: VerifyReport) -> bool:
    """Anything ``--repair`` acts on: a problem, or temps an aborted writer left."""
    return not report.ok or any(p.problem == "temp" for p in report.problems)


def _forget(session, store: ObjectStore, bad: list[str], hooks) -> None:
    """Drop rows (and damaged files) so that the next sync fetches them again."""
    for version in session.scalars(select(DocumentVersion).where(DocumentVersion.path.in_(bad))):
        if getattr(hooks, "forget", None) is not None:
            hooks.forget(session, version)
    session.execute(delete(DocumentVersion).where(DocumentVersion.path.in_(bad)))
    session.execute(delete(Blob).where(Blob.path.in_(bad)))
    session.commit()
    for relpath in bad:
        if store.exists(relpath):
            store.remove(relpath)
