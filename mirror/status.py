"""``mirror status``: what a mirror holds, read from the published index only."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from sqlalchemy import func, select

from mirror.index import Blob, DocumentVersion, SyncRun
from mirror.index.database import current_generation
from mirror.ingest import model_of
from mirror.reader import reading
from mirror.sources.base import source_class, spec_of


def mirror_status(root: Path | str) -> dict:
    """Counts by kind and blob role, bytes, last sync and source of the mirror at ``root``."""
    with reading(root) as r:
        conn, config, layout = r.conn, r.config, r.layout
        objects = {}
        for kind in spec_of(config.source).kinds:
            model, where = model_of(kind)
            rows = dict(conn.execute(select(model.removed, func.count()).where(*where)
                                     .group_by(model.removed)).all())
            objects[kind.name] = {"current": rows.get(False, 0), "removed": rows.get(True, 0)}
        blobs = {role: {"files": n, "bytes": int(size or 0)} for role, n, size in conn.execute(
            select(Blob.role, func.count(), func.sum(Blob.size)).group_by(Blob.role))}
        versions = conn.execute(select(func.count(), func.sum(DocumentVersion.size))).one()
        last = conn.execute(select(SyncRun).order_by(SyncRun.id.desc()).limit(1)).first()
        checks = _freshness(config.source, conn)
        disk = disk_usage(Path(root), layout)
    return {
        "root": str(root), "source": config.source, "base_url": config.base_url,
        "authenticated": config.authenticated, "generation": current_generation(layout),
        "objects": objects, "blobs": blobs,
        "documents": {"versions": versions[0], "bytes": int(versions[1] or 0)},
        "indexed_bytes": sum(b["bytes"] for b in blobs.values()) + int(versions[1] or 0),
        "disk": disk,
        "bytes": sum(disk.values()),
        "checks": checks,
        "last_sync": None if last is None else {
            "started_at": last.started_at, "finished_at": last.finished_at, "ok": last.ok,
            **{k: (last.summary or {}).get(k) for k in ("requests", "seconds", "bytes")}},
    }


def disk_usage(root: Path, layout) -> dict[str, int]:
    """Bytes of every file under ``root``, by area: the store, the index generations,
    snapshots, and the rest (locks, ledger, temp files, anything else). A file with several
    hard links counts once; symbolic links are not followed."""
    areas = {"store": layout.store, "index": layout.index_dir, "snapshots": layout.snapshots}
    usage = dict.fromkeys([*areas, "other"], 0)
    seen: set[tuple[int, int]] = set()
    for folder, _dirs, files in os.walk(root):
        here = Path(folder)
        area = next((name for name, path in areas.items()
                     if here == path or path in here.parents), "other")
        for name in files:
            try:
                info = os.lstat(here / name)
            except FileNotFoundError:
                continue  # removed meanwhile (a writer at work)
            if not stat.S_ISREG(info.st_mode) or (info.st_dev, info.st_ino) in seen:
                continue
            seen.add((info.st_dev, info.st_ino))
            usage[area] += info.st_size
    return usage


def status_lines(status: dict) -> list[str]:
    """Human-readable ``mirror status``."""
    lines = [f"mirror   {status['root']}",
             f"source   {status['source']} {status['base_url']}"
             f" ({'authenticated' if status['authenticated'] else 'anonymous'})",
             f"index    generation {status['generation']}"]
    for kind, counts in status["objects"].items():
        lines.append(f"{kind:13} {counts['current']:>8} current {counts['removed']:>6} removed")
    for role, info in sorted(status["blobs"].items()):
        lines.append(f"{role + ' files':18} {info['files']:>8} {info['bytes'] / 1e6:>10.1f} MB")
    disk = status["disk"]
    lines.append(f"total    {status['bytes'] / 1e6:.1f} MB under the root: store "
                 f"{disk['store'] / 1e6:.1f} MB, index {disk['index'] / 1e6:.1f} MB, snapshots "
                 f"{disk['snapshots'] / 1e6:.1f} MB, other {disk['other'] / 1e6:.1f} MB")
    last = status["last_sync"]
    if last:
        state = ("ok" if last["ok"] else "incomplete" if last["ok"] is False
                 else "running or interrupted")
        figures = ""
        if last.get("requests") is not None:
            figures = f", {last['requests']} requests, {(last['seconds'] or 0):.1f} s"
        lines.append(f"last sync {last['finished_at'] or last['started_at']} ({state}{figures})")
    for name, check in status.get("checks", {}).items():
        if "line" in check:  # a source's own wording
            lines.append(check["line"])
            continue
        lines.append(f"{name}: {check['checked']} of {check['images']} images checked, "
                     f"oldest check {check['oldest'] or 'never'}"
                     f"{_ago(check['oldest'])}; {check['never']} never")
    return lines


def _freshness(source: str, conn) -> dict:
    """The source's ``maintenance.freshness(conn)``: listings it re-checks in rotation."""
    path = getattr(source_class(source), "maintenance", None)
    if path is None:
        return {}
    import importlib

    hook = getattr(importlib.import_module(path), "freshness", None)
    return hook(conn) if hook is not None else {}


def _ago(when: str | None) -> str:
    if not when:
        return ""
    from datetime import UTC, datetime

    seconds = (datetime.now(UTC) - datetime.fromisoformat(when)).total_seconds()
    unit, size = next((u, s) for u, s in (("days", 86400), ("hours", 3600), ("minutes", 60),
                                          ("seconds", 1)) if seconds >= s or s == 1)
    return f" ({seconds / size:.1f} {unit} ago)"
