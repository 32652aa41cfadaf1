"""The files of a snapshot: where each pinned object's bytes are, and what they are called.

What members are called and which tables are made from the pinned documents is the
source's (its ``snapshots`` hooks module, e.g. the ISIC v1 source's ``snapshot``);
the rest is the same for every source.

Every export format (folder, tar, BagIt) writes the same members, in the same order, with
the same bytes; only the container differs. Members are computed from the manifest and
the pinned bytes alone, never from the current index rows, so an export made months later
(or on another machine that rebuilt the snapshot) is byte-identical.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import zstandard
from sqlalchemy import select

from mirror.errors import IntegrityError, MissingObjectError
from mirror.index import Blob, DocumentVersion, FileVersion
from mirror.snapshots.manifest import Snapshot, canonical, snapshot_hooks
from mirror.store import ObjectStore

CHUNK = 1 << 20


@dataclass(frozen=True)
class Member:
    """One file of an export: its path inside the export, size, hash and a byte reader."""

    path: str
    size: int
    sha256: str
    read: Callable[[], Iterator[bytes]]
    renamed_from: str | None = None  # the shared name this member was renamed away from


class Locator:
    """Finds the pinned bytes of each object in a mirror's store, through its index."""

    def __init__(self, store: ObjectStore, conn):
        self.store, self.conn = store, conn

    def document_path(self, kind: str, object_id: str, sha256: str) -> str:
        path = self.conn.execute(select(DocumentVersion.path).where(
            DocumentVersion.kind == kind, DocumentVersion.object_id == object_id,
            DocumentVersion.sha256 == sha256)).scalar()
        if path is None:
            raise MissingObjectError(f"the pinned version of {kind} {object_id} "
                                     f"({sha256[:12]}) is not in this mirror")
        return path

    def file_path(self, object_id: str, role: str, sha256: str) -> str:
        row = self.conn.execute(select(Blob.path, Blob.sha256).where(
            Blob.object_id == object_id, Blob.role == role)).first()
        if row is None or row[1] != sha256:  # replaced since: the pinned older version
            row = self.conn.execute(select(FileVersion.path, FileVersion.sha256).where(
                FileVersion.object_id == object_id, FileVersion.role == role,
                FileVersion.sha256 == sha256)).first()
        if row is None:
            raise MissingObjectError(f"the pinned {role} file of {object_id} "
                                     f"({sha256[:12]}) is not in this mirror")
        return row[0]

    def document_bytes(self, kind: str, object_id: str, sha256: str) -> bytes:
        raw = self.store.read_bytes(self.document_path(kind, object_id, sha256))
        payload = zstandard.ZstdDecompressor().decompress(raw)
        if hashlib.sha256(payload).hexdigest() != sha256:
            raise IntegrityError(f"{kind} {object_id}: stored document does not match its "
                                 "pinned SHA-256; run 'mirror verify --repair'")
        return payload

    def file_chunks(self, object_id: str, role: str, sha256: str) -> Iterator[bytes]:
        path = self.file_path(object_id, role, sha256)
        hasher = hashlib.sha256()
        with self.store.open(path) as handle:
            while chunk := handle.read(CHUNK):
                hasher.update(chunk)
                yield chunk
        if hasher.hexdigest() != sha256:
            raise IntegrityError(f"{path} does not match its pinned SHA-256; run "
                                 "'mirror verify --repair'")


def stored_members(snap: Snapshot, locator: Locator) -> list[Member]:
    """Members for every pinned document and file, read from the store when written."""
    members, owners = [], []  # owners: (entry, file) of each file member, for renames
    hooks = snapshot_hooks(snap)
    for entry in snap.objects:
        kind, object_id, doc = entry["kind"], entry["id"], entry["document"]
        members.append(Member(
            f"documents/{kind}/{object_id}.json", doc["size"], doc["sha256"],
            lambda k=kind, i=object_id, s=doc["sha256"]: iter([locator.document_bytes(k, i, s)])))
        owners.append(None)  # document paths hold the id: unique already
        for file in entry.get("files", []):
            members.append(Member(
                hooks.file_member_path(snap, entry, file), file["size"], file["sha256"],
                lambda i=object_id, f=file: locator.file_chunks(i, f["role"], f["sha256"])))
            owners.append((entry, file))
    return _unique_paths(snap, hooks, members, owners)


def _unique_paths(snap: Snapshot, hooks, members: list[Member],
                  owners: list[tuple[dict, dict] | None]) -> list[Member]:
    """Members whose paths collide (two objects with one name; compared case-folded, for
    case-insensitive folders) are named as if the object were called ``<name>_<id>``, all
    of them, so a tar never holds duplicate members and a folder or bag is never a file
    short. A source whose member paths ignore the name gets ``_<id>`` before the
    extension."""
    def fold(member: Member) -> str:
        return member.path.casefold()

    counts: dict[str, int] = {}
    for member in members:
        counts[fold(member)] = counts.get(fold(member), 0) + 1
    out = []
    for member, owner in zip(members, owners, strict=True):
        if owner is not None and counts[fold(member)] > 1:
            entry, file = owner
            stem = f"{entry.get('name') or entry['id']}_{entry['id']}"
            path = hooks.file_member_path(snap, {**entry, "name": stem}, file)
            if path.casefold() == fold(member):
                ext = file.get("ext") or ""
                cut = len(path) - len(ext) if ext and path.endswith(ext) else len(path)
                path = f"{path[:cut]}_{entry['id']}{path[cut:]}"
            member = Member(path, member.size, member.sha256, member.read, member.path)
        out.append(member)
    return out


def generated(path: str, data: bytes) -> Member:
    return Member(path, len(data), hashlib.sha256(data).hexdigest(), lambda: iter([data]))


def generated_members(snap: Snapshot, locator: Locator) -> list[Member]:
    """The source's made files (ISIC: ``metadata.csv``, ``attribution.txt``) and
    ``snapshot.json``, all made from pinned bytes."""
    made = [generated(path, data) for path, data in
            snapshot_hooks(snap).generated_files(snap, locator)]
    return made + [generated("snapshot.json", canonical(snap.manifest))]


def sums_member(members: list[Member]) -> Member:
    """``SHA256SUMS`` in the format ``sha256sum -c`` reads."""
    text = "".join(f"{m.sha256}  {m.path}\n" for m in sorted(members, key=lambda m: m.path))
    return generated("SHA256SUMS", text.encode())


def all_members(snap: Snapshot, locator: Locator) -> list[Member]:
    """Every member of an export, sorted by path (byte order)."""
    members = stored_members(snap, locator) + generated_members(snap, locator)
    members.append(sums_member(members))
    return sorted(members, key=lambda m: m.path.encode())
