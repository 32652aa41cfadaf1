"""Reproducible snapshots: pin a selection, export it byte-identically, rebuild and verify it.

    create_snapshot(root, "melanoma-2026", where=[["meta.clinical.diagnosis", "==", "melanoma"]])
    export(root, "melanoma-2026", "out.tar", "tar")     # same bytes on every machine
    verify_snapshot(root, "melanoma-2026")               # re-hash everything it pins
    build_snapshot("snapshot.json", new_root)            # fetch exactly the pinned objects

See ``docs/snapshots.md`` for the manifest format.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mirror.errors import MirrorError
from mirror.reader import reading
from mirror.snapshots.export import FORMATS, export_snapshot
from mirror.snapshots.manifest import (
    Snapshot,
    create_snapshot,
    delete_snapshot,
    list_snapshots,
    load_manifest,
    open_snapshot,
)
from mirror.snapshots.payload import Locator, all_members, stored_members
from mirror.store import ObjectStore

__all__ = ["FORMATS", "Snapshot", "create_snapshot", "delete_snapshot", "diff_lines",
           "diff_snapshots", "export", "list_snapshots", "load_manifest", "open_snapshot",
           "verify_snapshot"]


@contextmanager
def locating(root: Path | str) -> Iterator[Locator]:
    """A :class:`Locator` on the mirror at ``root`` (read-only, like every reader)."""
    with reading(root) as r:
        yield Locator(ObjectStore(r.layout), r.conn)


def export(root: Path | str, name: str, dest: Path | str, fmt: str = "dir") -> dict:
    """Export snapshot ``name`` of ``root`` to ``dest`` as ``dir``, ``tar`` or ``bagit``."""
    snap = open_snapshot(root, name)
    with locating(root) as locator:
        return export_snapshot(snap, all_members(snap, locator), Path(dest), fmt)


def verify_snapshot(root: Path | str, name: str) -> dict:
    """Re-hash every pinned document and file; lists what is missing or damaged."""
    snap = open_snapshot(root, name)
    problems: list[str] = []
    checked = 0
    with locating(root) as locator:
        for member in stored_members(snap, locator):
            try:
                for _ in member.read():
                    pass
                checked += 1
            except MirrorError as exc:
                problems.append(f"{member.path}: {exc}")
    return {"name": name, "checked": checked, "problems": problems, "ok": not problems}


def _doc(locator: Locator, entry: dict) -> dict | None:
    try:
        return json.loads(locator.document_bytes(entry["kind"], entry["id"],
                                                 entry["document"]["sha256"]))
    except MirrorError:
        return None


def changed_fields(old: object, new: object, prefix: str = "") -> list[str]:
    """Dotted paths whose values differ between two documents."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            out += changed_fields(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    return [] if old == new else [prefix.rstrip(".")]


def diff_snapshots(root: Path | str, first: str, second: str) -> dict:
    """Objects added, removed and changed from snapshot ``first`` to ``second``."""
    a, b = open_snapshot(root, first), open_snapshot(root, second)
    added = sorted(k for k in b.by_key if k not in a.by_key)
    removed = sorted(k for k in a.by_key if k not in b.by_key)
    changed = []
    with locating(root) as locator:
        for key in sorted(set(a.by_key) & set(b.by_key)):
            old, new = a.by_key[key], b.by_key[key]
            if old == new:
                continue
            entry = {"kind": key[0], "id": key[1], "name": new.get("name")}
            if old["document"] != new["document"]:
                before, after = _doc(locator, old), _doc(locator, new)
                entry["fields"] = (changed_fields(before, after) if before and after
                                   else ["(document versions not both in this mirror)"])
            if old.get("files") != new.get("files"):
                entry["files"] = sorted({f["role"] for f in old.get("files", []) + new.get(
                    "files", []) if f not in old.get("files", []) or f not in new.get("files", [])})
            changed.append(entry)
    show = [{"kind": k, "id": i, "name": (b.by_key.get((k, i)) or a.by_key[(k, i)]).get("name")}
            for k, i in added + removed]
    return {"from": first, "to": second, "added": show[:len(added)],
            "removed": show[len(added):], "changed": changed}


def diff_lines(diff: dict) -> list[str]:
    """What ``mirror snapshot diff`` prints."""
    lines = [f"+ {o['kind']} {o['name'] or o['id']}" for o in diff["added"]]
    lines += [f"- {o['kind']} {o['name'] or o['id']}" for o in diff["removed"]]
    for o in diff["changed"]:
        what = ", ".join(o.get("fields", []) + [f"{r} file" for r in o.get("files", [])])
        lines.append(f"~ {o['kind']} {o['name'] or o['id']}: {what}")
    lines.append(f"{diff['from']} -> {diff['to']}: {len(diff['added'])} added, "
                 f"{len(diff['removed'])} removed, {len(diff['changed'])} changed")
    return lines
