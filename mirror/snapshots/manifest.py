"""Snapshot manifests: pin the exact versions of a selection of objects.

A manifest (``snapshot.json``, format ``mirror-snapshot/1``, described field by field in
``docs/snapshots.md``) names every pinned object by kind and id, with the SHA-256 of the
exact JSON version (canonical JSON bytes, as ``store.canonical_json`` writes them) and of
each file (the bytes as served). It lives at ``<root>/isic/snapshots/<name>/snapshot.json``,
is written once and never changed; ``mirror gc`` keeps every file whose hash it names.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select

from mirror import __version__, query
from mirror.config import MirrorConfig, layout_for, load_config, utc_now
from mirror.errors import MirrorError, MissingObjectError
from mirror.files import write_bytes_atomic
from mirror.index import Blob, DocumentVersion
from mirror.index.database import current_generation, open_reader
from mirror.layout import Layout, shared_mkdir
from mirror.lease import WriterLease
from mirror.projection import current_number
from mirror.sources.base import ALIASES, source_class, source_hooks, spec_of
from mirror.store import UnsafeNameError, safe_name

FORMAT = "mirror-snapshot/1"
DEFAULT_BLOBS = ("full", "masks", "superpixels")


def canonical(document: dict) -> bytes:
    """The manifest's bytes: sorted keys, compact, UTF-8, one trailing newline."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode() + b"\n"


def content_epoch(snap: Snapshot) -> int:
    """The time a snapshot's exports carry (tar mtimes, BagIt's Bagging-Date).

    Not the wall clock of its creation, which would make two mirrors of one archive state
    export different bytes: the manifest's ``created`` when it has one (older manifests,
    or ``SOURCE_DATE_EPOCH`` at creation), else the newest ``updated`` of what it pins,
    the time of the archive state it holds."""
    if snap.manifest.get("created"):
        return _epoch_of(snap.manifest["created"]) or 0
    times = (_epoch_of(o.get("updated")) for o in snap.objects)
    return max((t for t in times if t is not None), default=0)


def _epoch_of(text: object) -> int | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return int((when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp())


def _source_date() -> str | None:
    """``SOURCE_DATE_EPOCH`` (the reproducible-builds convention) as ISO 8601, if set."""
    raw = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if not raw:
        return None
    if not raw.isdigit():
        raise MirrorError(f"SOURCE_DATE_EPOCH={raw!r} is not a number of seconds; unset it or "
                          "give e.g. 1767225600")
    return datetime.fromtimestamp(int(raw), UTC).isoformat()


def snapshot_id(manifest: dict) -> str:
    """SHA-256 of the canonical manifest without its ``snapshot_id`` field."""
    body = {k: v for k, v in manifest.items() if k != "snapshot_id"}
    return hashlib.sha256(canonical(body)).hexdigest()


@dataclass
class Snapshot:
    """A loaded manifest, with lookups by object."""

    manifest: dict
    path: Path | None = None
    by_key: dict[tuple[str, str], dict] = field(init=False)

    def __post_init__(self) -> None:
        if self.manifest.get("format") != FORMAT:
            raise MirrorError(f"{self.path or 'manifest'} is not a {FORMAT} manifest "
                              f"(format {self.manifest.get('format')!r})")
        self.by_key = {(o["kind"], o["id"]): o for o in self.manifest["objects"]}

    @property
    def name(self) -> str:
        return self.manifest["name"]

    @property
    def objects(self) -> list[dict]:
        return self.manifest["objects"]

    def of_kind(self, kind: str) -> list[dict]:
        return [o for o in self.objects if o["kind"] == kind]


def load_manifest(path: Path | str) -> Snapshot:
    """Read a manifest file and check its identity."""
    path = Path(path)
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MissingObjectError(f"no snapshot manifest at {path}") from None
    except ValueError as exc:
        raise MirrorError(f"{path} is not a JSON manifest ({exc})") from None
    snap = Snapshot(manifest, path)
    if manifest.get("snapshot_id") != snapshot_id(manifest):
        raise MirrorError(f"{path} has been edited: its snapshot_id does not match its content")
    return snap


def snapshot_source(snap: Snapshot) -> str:
    """The registry name of the source a manifest pins (older manifests: archive + api)."""
    source = snap.manifest.get("source") or {}
    name = source.get("name") or f"{source.get('archive')}-{source.get('api')}"
    return ALIASES.get(name, name)


def snapshot_hooks(snap: Snapshot):
    """The source's snapshot module for ``snap`` (file names, made files, pinning)."""
    source_class(snapshot_source(snap))  # a clear error for an unknown source
    return source_hooks(snapshot_source(snap), "snapshots")


def snapshot_dir(layout: Layout, name: str) -> Path:
    try:
        return layout.snapshots / safe_name(name)
    except UnsafeNameError:
        raise MirrorError(f"bad snapshot name {name!r}: use letters, digits, '.', '_' and '-'"
                          ) from None


def open_snapshot(root: Path | str, name: str) -> Snapshot:
    """The snapshot ``name`` of the mirror at ``root``."""
    config = load_config(Path(root))
    path = snapshot_dir(layout_for(Path(root), config), name) / "snapshot.json"
    if not path.exists():
        raise MissingObjectError(f"no snapshot {name!r} in {root}; 'mirror snapshot list' "
                                 "shows the names")
    return load_manifest(path)


def list_snapshots(root: Path | str) -> list[dict]:
    """Name, creation time, id and counts of every snapshot, oldest first."""
    layout = layout_for(Path(root), load_config(Path(root)))
    out = []
    for path in sorted(layout.snapshots.glob("*/snapshot.json")):
        snap = load_manifest(path)
        created = snap.manifest.get("created") or _read_created(path.parent)
        out.append({"name": snap.name, "created": created,
                    "snapshot_id": snap.manifest["snapshot_id"],
                    "images": len(snap.of_kind("image")),
                    "files": sum(len(o.get("files", [])) for o in snap.objects)})
    return sorted(out, key=lambda s: (s["created"], s["name"]))


# -- creating ------------------------------------------------------------------------------

def create_snapshot(root: Path | str, name: str, where: Any = None, dataset: str | None = None,
                    study: str | None = None, blobs: tuple[str, ...] = DEFAULT_BLOBS,
                    strict: bool = False) -> Snapshot:
    """Pin the current versions of the selected images, their datasets and segmentations.
    ``strict``: a criterion that can never match is an error, not a warning (a snapshot is
    permanent, so a typo's empty one is worth refusing)."""
    root = Path(root)
    config = load_config(root)
    layout = layout_for(root, config)
    spec = spec_of(config.source)
    roles = [spec.role_for_option(b).name for b in blobs]
    folder = snapshot_dir(layout, name)
    with WriterLease(layout, command="snapshot create"):  # gc must not run meanwhile
        if folder.exists():
            raise MirrorError(f"a snapshot named {name!r} exists and snapshots never change; "
                              "choose another name")
        generation = None if config.index_url else current_generation(layout)
        engine = open_reader(layout, config.index_url, generation)
        number = current_number(layout.index_dir) if config.index_url else generation
        projection = query.open_projection(layout.index_dir, number, spec)
        try:
            table = spec.kind(spec.main_kind).table
            items = query.resolve(projection, table, query.criteria(where), strict)
            ids = query.select_ids(projection, items, dataset=dataset, study=study,
                                   kind=table)
            with engine.connect() as conn:
                objects = source_hooks(config.source, "snapshots").pinned_objects(
                    conn, ids, roles)
        finally:
            projection.close()
            engine.dispose()
        manifest = _manifest(config, name, items, dataset, study, blobs, objects)
        save_manifest(folder, manifest)
    return Snapshot(manifest, folder / "snapshot.json")


def save_manifest(folder: Path, manifest: dict) -> None:
    """Write a new snapshot's manifest, read-only (call under the writer lease), and beside
    it when this mirror pinned it (``created``: local history, outside the manifest)."""
    shared_mkdir(folder, folder.parents[2])  # <root>/<namespace>/snapshots/<name>
    write_bytes_atomic(folder / CREATED, (utc_now() + "\n").encode())
    write_bytes_atomic(folder / "snapshot.json", canonical(manifest))
    os.chmod(folder / "snapshot.json", 0o444)


CREATED = "created"  # beside snapshot.json: when this mirror pinned or registered it


def _read_created(folder: Path) -> str:
    try:
        return (folder / CREATED).read_text(encoding="utf-8").strip()
    except OSError:
        return ""


def delete_snapshot(root: Path | str, name: str) -> dict:
    """Unpin snapshot ``name``: its manifest goes; the files it pinned stay until ``mirror
    gc`` removes those that nothing else needs (another snapshot, the current index)."""
    snap = open_snapshot(root, name)
    layout = layout_for(Path(root), load_config(Path(root)))
    folder = snapshot_dir(layout, name)
    with WriterLease(layout, command="snapshot delete"):  # not while gc reads the pins
        aside = folder.with_name(f".deleting-{folder.name}")
        os.rename(folder, aside)  # gone at once for gc and readers, whatever follows
        shutil.rmtree(aside)
    return {"name": name, "snapshot_id": snap.manifest["snapshot_id"],
            "objects": len(snap.objects)}


def _manifest(config: MirrorConfig, name: str, items: list, dataset: str | None,
              study: str | None, blobs: tuple[str, ...], objects: list[dict]) -> dict:
    manifest = {
        "format": FORMAT,
        "name": name,
        "tool": {"name": "mirror", "version": __version__},
        "source": {"archive": spec_of(config.source).archive,
                   "api": spec_of(config.source).api, "name": config.source,
                   "base_url": config.base_url, "authenticated": config.authenticated},
        "selection": {"where": [c.as_list() for c in items], "dataset": dataset,
                      "study": study, "blobs": sorted(blobs),
                      "images": sum(1 for o in objects if o["kind"] == "image")},
        "objects": objects,
    }
    if _source_date():  # reproducible builds: a fixed time is content, not wall clock
        manifest["created"] = _source_date()
    manifest["snapshot_id"] = snapshot_id(manifest)
    return manifest


def entry(conn, kind: str, object_id: str, sha: str, name: str | None, updated: str | None,
           files: list[dict]) -> dict:
    size = conn.execute(select(DocumentVersion.size).where(
        DocumentVersion.kind == kind, DocumentVersion.object_id == object_id,
        DocumentVersion.sha256 == sha)).scalar()
    entry = {"kind": kind, "id": object_id, "name": name, "updated": updated,
             "document": {"sha256": sha, "size": size}}
    if files:
        entry["files"] = files
    return entry


def files_of(conn, ids: list[str], roles: list[str]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for object_id, role, path, sha, size in conn.execute(
            select(Blob.object_id, Blob.role, Blob.path, Blob.sha256, Blob.size)
            .where(Blob.object_id.in_(ids), Blob.role.in_(roles))
            .order_by(Blob.object_id, Blob.role)):
        out.setdefault(object_id, []).append({"role": role, "sha256": sha, "size": size,
                                              "ext": Path(path).suffix})
    return out


