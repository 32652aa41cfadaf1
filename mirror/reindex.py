"""``mirror reindex``: rebuild the index from the store alone.

The index is a cache: every document version and blob is a file whose name says
what it is (see ``docs/layout.md``). Rebuilding reads each document, re-hashes
each blob, picks the newest version of each object as current (largest
``updated``, then newest file), and publishes a new generation. What is lost:
removal marks and the sync bookkeeping (listings, plan), which the next sync
recomputes with a few more requests.
"""

from __future__ import annotations

import re
from pathlib import Path

from sqlalchemy import delete

from mirror.config import utc_now
from mirror.index import Base, Blob, DocumentVersion
from mirror.ingest import KINDS, ingest_blob, ingest_document
from mirror.store import ObjectStore
from mirror.writer import writing

DOC_NAME = re.compile(r"(?P<kind>[a-z]+)_(?P<id>[^._/]+)\.(?P<sha>[0-9a-f]{16})\.json\.zst")
BLOB_NAME = re.compile(
    r"(?P<prefix>image|thumb|spimg|spidx|mask)_(?P<id>[0-9a-zA-Z]+)(?:_[^/]*)?\.(?P<ext>\w+)")
ROLE_OF_PREFIX = {"image": "image", "thumb": "thumbnail", "spimg": "superpixels",
                  "spidx": "spidx", "mask": "mask"}
CONTENT_TYPES = {"jpg": "image/jpeg", "png": "image/png", "bmp": "image/bmp", "gif": "image/gif",
                 "npz": "application/x-npz"}


def reindex_mirror(root: Path | str) -> dict:
    """Rebuild the index of ``root`` from its files; returns counts of what was indexed."""
    with writing(root, "reindex") as w:
        with w.index.session() as session:
            for table in reversed(Base.metadata.sorted_tables):
                session.execute(delete(table))
            counts = _ingest_store(session, w.store, public=not w.config.authenticated)
        generation = w.index.publish()
    return {"generation": generation, **counts}


def _ingest_store(session, store: ObjectStore, public: bool) -> dict:
    counts = {"documents": 0, "blobs": 0, "skipped": 0}
    newest: dict[tuple[str, str], tuple[tuple, dict, str, str, int]] = {}
    now = utc_now()
    spidx_sources: dict[str, str] = {}
    for relpath in store.iter_files():
        name = relpath.rsplit("/", 1)[-1]
        if doc := DOC_NAME.fullmatch(name):
            counts["documents"] += 1
            _collect_doc(session, store, relpath, doc["kind"], now, newest, counts)
        elif blob := BLOB_NAME.fullmatch(name):
            counts["blobs"] += 1
            sha256, size = store.hash(relpath)
            role = ROLE_OF_PREFIX[blob["prefix"]]
            if role == "superpixels":
                spidx_sources[blob["id"]] = sha256
            ingest_blob(session, blob["id"], role, relpath, sha256, size,
                        CONTENT_TYPES.get(blob["ext"]), now)
        else:
            counts["skipped"] += 1
    for (kind, _), (_, doc, sha256, relpath, size) in sorted(newest.items()):
        if kind == "markup":
            ingest_blob(session, doc["_id"], "markups", relpath, sha256, size,
                        "application/json", now)
            continue
        ingest_document(session, kind, doc, sha256, relpath, size, now,
                        **({"public": public} if kind in ("image", "dataset") else {}))
    _link_spidx_sources(session, spidx_sources)
    return counts


def _collect_doc(session, store: ObjectStore, relpath: str, kind: str, now: str,
                 newest: dict, counts: dict) -> None:
    doc = store.read_json(relpath)
    sha256, size = store.hash(relpath)
    if kind not in KINDS and kind != "markup":
        counts["skipped"] += 1
        return
    session.merge(DocumentVersion(kind=kind, object_id=doc["_id"], sha256=sha256, path=relpath,
                                  size=size, fetched_at=now))
    # Markup documents carry no ``updated``: the newest file is the current one.
    rank = (doc.get("updated") or "", store.path(relpath).stat().st_mtime_ns)
    key = (kind, doc["_id"])
    if key not in newest or rank > newest[key][0]:
        newest[key] = (rank, doc, sha256, relpath, size)


def _link_spidx_sources(session, sources: dict[str, str]) -> None:
    for blob in session.query(Blob).filter(Blob.role == "spidx"):
        blob.source_sha256 = sources.get(blob.object_id)
