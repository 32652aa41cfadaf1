"""``mirror snapshot build``: fetch exactly what a manifest pins, on a fresh machine.

The sync engine fetches the pinned images (with their datasets and segmentations) and the
pinned kinds of file; then every pinned hash is checked against what arrived. What the
archive now serves differently is reported as *changed*, what it no longer serves as
*gone*; everything that did verify is kept. Only a complete build registers the snapshot
in the new mirror (with the manifest's exact bytes), so ``export`` there gives the same
bytes as on the original machine.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from mirror.config import layout_for, load_config
from mirror.index import Blob, DocumentVersion
from mirror.ingest import model_of
from mirror.lease import WriterLease
from mirror.reader import reading
from mirror.snapshots.manifest import (
    Snapshot,
    load_manifest,
    save_manifest,
    snapshot_dir,
    snapshot_hooks,
    snapshot_source,
)
from mirror.sources.base import spec_of
from mirror.sync import SyncOptions, sync


def build_snapshot(manifest_path: Path | str, root: Path | str, url: str | None = None,
                   username: str | None = None, password: str | None = None,
                   workers: int = 8, rebase_url: bool = False) -> dict:
    """Rebuild the snapshot of ``manifest_path`` into ``root``; returns a report.

    ``rebase_url``: ``root`` is a mirror that remembers another address of the archive."""
    snap = load_manifest(manifest_path)
    selection = snap.manifest["selection"]
    options = SyncOptions(blobs=frozenset(selection["blobs"]), workers=workers,
                          source=snapshot_source(snap), rebase_url=rebase_url,
                          **snapshot_hooks(snap).build_options(snap))
    summary = sync(root, url or snap.manifest["source"]["base_url"], options,
                   username=username, password=password)
    report = compare(snap, Path(root))
    report["sync"] = {"requests": summary.requests, "failures": len(summary.failures),
                      "bytes": summary.bytes_downloaded}
    if report["ok"]:
        _register(snap, Path(root))
    return report


def compare(snap: Snapshot, root: Path) -> dict:
    """Each pinned object of ``snap``: verified, changed or gone in ``root`` (one line each)."""
    verified, changed, gone = 0, [], []
    spec = spec_of(snapshot_source(snap))
    with reading(root) as r:
        for entry in snap.objects:
            state, text, good = _check_entry(r.conn, spec, entry)
            verified += good
            if state == "changed":
                changed.append(text)
            elif state == "gone":
                gone.append(text)
    return {"name": snap.name, "verified": verified, "changed": changed, "gone": gone,
            "ok": not changed and not gone}


def _shown(entry: dict) -> str:
    shown = f"{entry['kind']} {entry.get('name') or entry['id']}"
    return shown + (f" (of image {entry['image_id']})" if "image_id" in entry else "")


def _check_entry(conn, spec, entry: dict) -> tuple[str, str, int]:
    """``(state, report line, pinned items that verified)`` for one pinned object."""
    kind, object_id, pinned = entry["kind"], entry["id"], entry["document"]["sha256"]
    model, where = model_of(spec.kind(kind))
    current = conn.execute(select(model.removed, model.doc_sha256).where(
        model.id == object_id, *where)).first()
    if current is None or current[0]:
        return "gone", f"{_shown(entry)}: the archive no longer serves it", 0
    differences = []
    has_version = conn.execute(select(DocumentVersion.sha256).where(
        DocumentVersion.kind == kind, DocumentVersion.object_id == object_id,
        DocumentVersion.sha256 == pinned)).first()
    if not has_version:
        differences.append(f"document (pinned {pinned[:12]}, served {current[1][:12]}; "
                           f"pinned version updated {entry.get('updated')})")
    for file in entry.get("files", []):
        served = conn.execute(select(Blob.sha256).where(
            Blob.object_id == object_id, Blob.role == file["role"])).scalar()
        if served != file["sha256"]:
            differences.append(f"{file['role']} file (pinned {file['sha256'][:12]}, served "
                               f"{served[:12] if served else 'nothing'})")
    good = 1 + len(entry.get("files", [])) - len(differences)
    if not differences:
        return "verified", "", good
    return "changed", f"{_shown(entry)}: changed upstream: {'; '.join(differences)}", good


def _register(snap: Snapshot, root: Path) -> None:
    layout = layout_for(root, load_config(root))
    folder = snapshot_dir(layout, snap.name)
    with WriterLease(layout, command="snapshot build"):
        if not (folder / "snapshot.json").exists():
            save_manifest(folder, snap.manifest)
