"""The files of a snapshot: where each pinned object's bytes are, and what they are called.

Every export format (folder, tar, BagIt) writes the same members, in the same order, with
the same bytes; only the container differs. Members are computed from the manifest and
the pinned bytes alone, never from the current index rows, so an export made months later
(or on another machine that rebuilt the snapshot) is byte-identical.
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import zstandard
from sqlalchemy import select

from mirror.errors import IntegrityError, MissingObjectError
from mirror.export import FILE_SUFFIX, cell, field_value
from mirror.index import Blob, DocumentVersion
from mirror.snapshots.manifest import Snapshot, canonical
from mirror.store import ObjectStore, UnsafeNameError, safe_name

CHUNK = 1 << 20
FIXED_COLUMNS = ["isic_id", "image_id", "attribution", "copyright_license", "dataset"]
META_GROUPS = ("acquisition", "clinical")


@dataclass(frozen=True)
class Member:
    """One file of an export: its path inside the export, size, hash and a byte reader."""

    path: str
    size: int
    sha256: str
    read: Callable[[], Iterator[bytes]]


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
        if row is None or row[1] != sha256:
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


def _file_name(entry: dict) -> str:
    """A safe file stem for an object: its name when that is safe, else its id."""
    try:
        return safe_name(entry.get("name") or "")
    except UnsafeNameError:
        return entry["id"]


def file_member_path(snap: Snapshot, entry: dict, file: dict) -> str:
    """Where a pinned file goes in an export."""
    if entry["kind"] == "segmentation":
        image = snap.by_key.get(("image", entry["image_id"]), {"id": entry["image_id"]})
        return f"masks/{_file_name(image)}_{entry['id']}{file['ext']}"
    return f"images/{_file_name(entry)}{FILE_SUFFIX[file['role']]}{file['ext']}"


def stored_members(snap: Snapshot, locator: Locator) -> list[Member]:
    """Members for every pinned document and file, read from the store when written."""
    members = []
    for entry in snap.objects:
        kind, object_id, doc = entry["kind"], entry["id"], entry["document"]
        members.append(Member(
            f"documents/{kind}/{object_id}.json", doc["size"], doc["sha256"],
            lambda k=kind, i=object_id, s=doc["sha256"]: iter([locator.document_bytes(k, i, s)])))
        for file in entry.get("files", []):
            members.append(Member(
                file_member_path(snap, entry, file), file["size"], file["sha256"],
                lambda i=object_id, f=file: locator.file_chunks(i, f["role"], f["sha256"])))
    return members


def _generated(path: str, data: bytes) -> Member:
    return Member(path, len(data), hashlib.sha256(data).hexdigest(), lambda: iter([data]))


def generated_members(snap: Snapshot, locator: Locator) -> list[Member]:
    """``metadata.csv``, ``attribution.txt`` and ``snapshot.json``, made from pinned bytes."""
    import json

    datasets = {e["id"]: json.loads(locator.document_bytes("dataset", e["id"],
                                                            e["document"]["sha256"]))
                for e in snap.of_kind("dataset")}
    images = snap.of_kind("image")

    def docs() -> Iterator[dict]:
        for e in sorted(images, key=lambda e: (e.get("name") or "", e["id"])):
            yield json.loads(locator.document_bytes("image", e["id"], e["document"]["sha256"]))

    keys, counts = _survey(docs())
    return [_generated("metadata.csv", metadata_csv(docs(), datasets, keys)),
            _generated("attribution.txt", attribution(counts, datasets)),
            _generated("snapshot.json", canonical(snap.manifest))]


def _survey(docs: Iterator[dict]) -> tuple[set[str], dict[Any, int]]:
    """One pass: every acquisition and clinical field present, and images per dataset."""
    keys: set[str] = set()
    counts: dict[Any, int] = {}
    for doc in docs:
        for group in META_GROUPS:
            keys |= {f"meta.{group}.{k}" for k in (field_value(doc, f"meta.{group}") or {})}
        dataset = field_value(doc, "dataset._id")
        counts[dataset] = counts.get(dataset, 0) + 1
    return keys, counts


def metadata_csv(docs: Iterator[dict], datasets: dict[str, dict], keys: set[str]) -> bytes:
    """One row per image; ``keys`` (from :func:`_survey`) are the meta columns."""
    columns = sorted(keys, key=lambda p: (p.split(".")[2], p))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(FIXED_COLUMNS + [c.split(".", 2)[2] for c in columns])
    for doc in docs:
        ds = datasets.get(field_value(doc, "dataset._id"), {})
        writer.writerow([cell(v) for v in [doc.get("name"), doc["_id"], ds.get("attribution"),
                                           ds.get("license"), ds.get("name")]] +
                        [cell(field_value(doc, c)) for c in columns])
    return buffer.getvalue().encode()


def attribution(counts: dict[Any, int], datasets: dict[str, dict]) -> bytes:
    lines = ["Images in this snapshot, by dataset (count, dataset, license, attribution):", ""]
    for key, count in sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0]))):
        ds = datasets.get(key, {})
        lines.append(f"{count}\t{ds.get('name', key)}\t{ds.get('license') or 'not recorded'}\t"
                     f"{ds.get('attribution') or 'Anonymous'}")
    return ("\n".join(lines) + "\n").encode()


def sums_member(members: list[Member]) -> Member:
    """``SHA256SUMS`` in the format ``sha256sum -c`` reads."""
    text = "".join(f"{m.sha256}  {m.path}\n" for m in sorted(members, key=lambda m: m.path))
    return _generated("SHA256SUMS", text.encode())


def all_members(snap: Snapshot, locator: Locator) -> list[Member]:
    """Every member of an export, sorted by path (byte order)."""
    members = stored_members(snap, locator) + generated_members(snap, locator)
    members.append(sums_member(members))
    return sorted(members, key=lambda m: m.path.encode())
