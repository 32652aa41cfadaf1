"""``mirror reindex``: rebuild the index from the store alone.

The index is a cache: every document version and file is a file whose name says what it
is (see ``docs/layout.md``): ``<kind>_<id>.<sha16>.json.zst`` for documents and
``<prefix>_<id>[_<name>][.<sha16>].<ext>`` for files, the prefix naming one of the
source's file roles. Rebuilding reads each document, re-hashes each file, picks the
current version of each object, and publishes a new generation.

Which version is current, which objects are marked removed, and the digests of the
listings the last sync fetched come from the ledger (:mod:`mirror.ledger`), which every
publish appends to: so a reindex brings back exactly what the last sync published, and the
sync after it costs what a normal re-sync costs. Objects the ledger does not name (a
mirror older than the ledger) fall back to the largest ``updated``, then the newest file;
what is lost then is removal marks and the listing digests, which the next sync
recomputes with more requests.
"""

from __future__ import annotations

import re
from pathlib import Path

from sqlalchemy import delete

from mirror import ledger, progress
from mirror.config import utc_now
from mirror.index import Base, Blob, DocumentVersion, Listing
from mirror.ingest import ingest_blob, ingest_document_file, ingest_documents, mark_removed
from mirror.sources.base import SourceSpec, spec_of
from mirror.store import ObjectStore
from mirror.sync.files import CONTENT_TYPES
from mirror.writer import writing

DOC_NAME = re.compile(r"(?P<kind>[a-z][a-z0-9]*)_(?P<id>[^/]+?)\.(?P<sha>[0-9a-f]{16})\.json\.zst")
FILE_NAME = re.compile(r"(?P<prefix>[a-z][a-z0-9]*)_(?P<id>[0-9A-Za-z.-]+?)"
                       r"(?:_[^/]*?)?(?:\.[0-9a-f]{16})?(?P<ext>\.[a-z0-9]{1,5})")
# Roles without a name part (``thumb_<id>.jpg``): the id may hold '_' (ISIC_nnnnnnn).
UNNAMED_FILE = re.compile(r"(?P<prefix>[a-z][a-z0-9]*)_(?P<id>[0-9A-Za-z._-]+?)"
                          r"(?:\.[0-9a-f]{16})?(?P<ext>\.[a-z0-9]{1,5})")


def reindex_mirror(root: Path | str) -> dict:
    """Rebuild the index of ``root`` from its files; returns counts of what was indexed."""
    with writing(root, "reindex") as w:
        spec = spec_of(w.config.source)
        published = ledger.replay(w.layout)
        with w.index.session() as session:
            for table in reversed(Base.metadata.sorted_tables):
                session.execute(delete(table))
            counts = _ingest_store(session, w.store, spec, public=not w.config.authenticated,
                                   published=published)
            counts["from_ledger"] = _restore_from_ledger(session, spec, published)
        generation = w.index.publish()
        with w.index.session() as session:
            ledger.record(w.layout, session, spec, generation)
    return {"generation": generation, **counts}


def _restore_from_ledger(session, spec: SourceSpec, published: ledger.Ledger) -> int:
    """Removal marks and listings (digests, and when each was fetched: the re-check
    rotation's order) as the last publish left them; returns how many objects the ledger
    named."""
    removed: dict[str, list[str]] = {}
    for (kind, object_id), sha in published.documents.items():
        if sha is None and spec.has_kind(kind):
            removed.setdefault(kind, []).append(object_id)
    for kind, ids in removed.items():
        mark_removed(session, spec.kind(kind), sorted(ids), utc_now())
    now = utc_now()
    session.add_all(Listing(key=key, digest=digest, count=count, fetched_at=at or now)
                    for key, (digest, count, at) in published.listings.items())
    return len(published.documents)


def _ingest_store(session, store: ObjectStore, spec: SourceSpec, public: bool,
                  published: ledger.Ledger | None = None) -> dict:
    counts = {"documents": 0, "blobs": 0, "skipped": 0}
    newest: dict[tuple[str, str], tuple[tuple, dict, str, str, int]] = {}
    now = utc_now()
    sources: dict[tuple[str, str], str] = {}  # (object, role) -> sha256, for derived files
    with progress.task("reindex", unit="file") as step:
        for relpath in store.iter_files():
            _ingest_one(session, store, spec, relpath, now, newest, counts, sources,
                        published or ledger.Ledger())
            step.update(1, detail=f"{counts['documents']} document(s), "
                                  f"{counts['blobs']} file(s)")
    _ingest_newest(session, spec, newest, public, now)
    _link_derived(session, spec, sources)
    return counts


def _ingest_one(session, store: ObjectStore, spec: SourceSpec, relpath: str, now: str,
                newest: dict, counts: dict, sources: dict, published: ledger.Ledger) -> None:
    name = relpath.rsplit("/", 1)[-1]
    if doc := DOC_NAME.fullmatch(name):
        counts["documents"] += 1
        _collect_doc(session, store, spec, relpath, doc["kind"], now, newest, counts, published)
    elif (found := _file_name(spec, name)) is not None:
        counts["blobs"] += 1
        sha256, size = store.hash(relpath)
        role = spec.role_for_prefix(found["prefix"]).name
        sources[(found["id"], role)] = sha256
        ingest_blob(session, found["id"], role, relpath, sha256, size,
                    CONTENT_TYPES.get(found["ext"]), now)
    else:
        counts["skipped"] += 1


def _ingest_newest(session, spec: SourceSpec, newest: dict, public: bool, now: str) -> None:
    """Index the chosen version of each object as its current one."""
    document_roles = {r.prefix: r.name for r in spec.roles if ".json.zst" in r.exts}
    for (kind, _), (_, doc, sha256, relpath, size) in sorted(newest.items()):
        if kind in document_roles:
            ingest_document_file(session, kind, doc["_id"], document_roles[kind], relpath,
                                 sha256, size, now)
            continue
        extra = {"public": public} if hasattr(spec.kind(kind).model, "public") else {}
        ingest_documents(session, spec.kind(kind), [(doc, sha256, relpath, size)], now, **extra)


def _file_name(spec: SourceSpec, name: str) -> re.Match | None:
    """The parts of a file name in the store, when a role of ``spec`` made it."""
    found = FILE_NAME.fullmatch(name)
    role = spec.role_for_prefix(found["prefix"]) if found else None
    if role is not None and not role.named:
        found = UNNAMED_FILE.fullmatch(name)
    return found if role is not None else None


def _collect_doc(session, store: ObjectStore, spec: SourceSpec, relpath: str, kind: str,
                 now: str, newest: dict, counts: dict, published: ledger.Ledger) -> None:
    doc = store.read_json(relpath)
    sha256, size = store.hash(relpath)
    is_role = any(r.prefix == kind and ".json.zst" in r.exts for r in spec.roles)
    if not (spec.has_kind(kind) or is_role):
        counts["skipped"] += 1
        return
    object_id = spec.kind(kind).id_of(doc) if spec.has_kind(kind) else doc.get("_id")
    session.merge(DocumentVersion(kind=kind, object_id=object_id, sha256=sha256, path=relpath,
                                  size=size, fetched_at=now))
    # The version the last publish made current wins; else the largest ``updated``, and
    # for document files (markups), which carry none, the newest file.
    chosen = published.documents.get((kind, object_id)) == sha256
    rank = (chosen, str(doc.get("updated") or ""), store.path(relpath).stat().st_mtime_ns)
    key = (kind, object_id)
    if key not in newest or rank > newest[key][0]:
        newest[key] = (rank, doc, sha256, relpath, size)


def _link_derived(session, spec: SourceSpec, sources: dict[tuple[str, str], str]) -> None:
    """A derived file's row names the file it was made from (``source_sha256``)."""
    for role in spec.roles:
        if role.derived_from is None:
            continue
        for blob in session.query(Blob).filter(Blob.role == role.name):
            blob.source_sha256 = sources.get((blob.object_id, role.derived_from))
