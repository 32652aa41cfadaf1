"""IDC as a mirror source: the catalog names the series, the buckets hold their instances.

**Documents.** The scope (``--where`` criteria over the catalog's columns, or one ``--sql``
SELECT of SeriesInstanceUIDs) is evaluated by DuckDB over the installed idc-index-data
(or ``--catalog DIR``, or ``$MIRROR_IDC_CATALOG``); each series row is the series
document, each collection's ``collections_index`` row its document, and the catalog's
version one ``catalog`` document. Rows are streamed in Arrow batches and compared by their
canonical hash with what the index holds: only new and changed rows are stored. A change
of ``crdc_series_uuid`` (a revised series) marks the series for a new fetch; a new bucket
(moved) or licence, DOI or collection (metadata) changes only the document, since the bytes
are the same. Series the catalog no longer lists are marked removed, within the engine's
removal guard. A re-sync with the catalog build and scope of an earlier run reads nothing
and asks nothing: the documents phase is skipped (zero requests).

**Files.** One task per series whose current version the mirror does not hold completely.
:meth:`IdcSource.fetch_file` lists ``<crdc_series_uuid>/`` (bounded by the catalog's
``instanceCount``), refuses the listing unless its count and bytes are the catalog's, then
fetches the instances in parallel on the source's own pool: each is streamed into the
store, checked as DICOM (magic at 128, a readable header) whose Series/Study UIDs are the
catalog's, and its header kept as the instance document (DICOM JSON). Instances already held
under the same instance uuid (the unchanged ones of a revised series) are not fetched
again. A series is indexed whole or not at all: a failure removes what this attempt
published, so readers never see half a series and ``mirror verify`` finds no strays.

Why one task per series, not per instance: the catalog is series-level, so a series' keys
are known only from its listing, and completeness (the listed count against
``instanceCount``) is a property of the series; a task per series lists once, checks the
whole, and then fans its instances out to the pool.
"""

from __future__ import annotations

import hashlib
import math
import os
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.compute as pc
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from mirror import settings
from mirror.config import utc_now
from mirror.errors import IntegrityError, MirrorError, ScopeError, UnsafeNameError
from mirror.index import Blob, Listing, ObjectRow, SyncItem
from mirror.ingest import mark_removed, upsert
from mirror.query import Criterion
from mirror.sources.base import DocumentRun, FileTask, SourceSpec
from mirror.sources.dicom import read_header
from mirror.sources.http import HttpClient
from mirror.sources.idc.catalog import Catalog, Scope, as_scope
from mirror.sources.idc.s3 import IdcS3, S3Object
from mirror.sources.idc.spec import CATALOG_ID, INSTANCE_UUID, SPEC
from mirror.store import StoredFile, canonical_json

ROLE = "instance"
OPTION = "dicom"
LOOKUP_CHUNK = 500  # ids per IN (...) query
# Series recorded between checkpoints of the documents phase (``DocumentRun.checkpoint``:
# the stored files made durable with one ``syncfs``, then the index committed, no
# interim publish). A commit per 8,192-row batch cost a second or more each on a busy
# disk; a run killed between checkpoints stores at most this many series again.
COMMIT_ROWS = 65_536
# Headers are read into DICOM JSON in the fetching thread. A process pool did it while
# pydicom's ``to_json_dict`` cost 5-20 ms an instance; the cached reader
# (:mod:`mirror.sources.dicomjson`) costs 0.1-1 ms, less than sending the path out and
# the header back: the whole pelvic_reference_data collection (13,644 instances) synced
# in 96-99 s in the thread against 122-124 s through the pool, same run.
SCOPE_KEY = "idc-scope:"  # Listing rows: scopes already synced with a catalog build


@dataclass
class PlannedSeries:
    """What fetching one series needs from the index (read in the calling thread)."""

    uid: str
    study_uid: str | None
    bucket: str
    series_uuid: str
    count: int | None
    nbytes: int | None
    have: dict[str, int] = field(default_factory=dict)  # instance uuid -> stored size


@dataclass
class FetchedSeries:
    """What a finished series hands to :meth:`IdcSource.record_fetched`."""

    listed: set[str]
    docs: list[tuple[dict, StoredFile]]


class IdcSource:
    """One sync run against IDC: the catalog and the buckets at ``base_url`` (S3)."""

    spec: ClassVar[SourceSpec] = SPEC
    snapshots: ClassVar[str] = "mirror.sources.idc.snapshot"
    exports: ClassVar[str] = "mirror.sources.idc.exports"  # series table, citations, DICOM
    objects: ClassVar[str] = "mirror.sources.idc.exports:IdcObjects"  # series selections

    def __init__(self, base_url: str, http: HttpClient):
        self.base_url = base_url.rstrip("/")
        self.http = http
        self.endpoint = self.base_url
        self._s3: IdcS3 | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._workers = 8
        self._run: DocumentRun | None = None
        self._planned: dict[str, PlannedSeries] = {}
        self._fetched: dict[str, FetchedSeries] = {}
        self._lock = threading.Lock()
        self.catalog: Catalog | None = None
        self._uncommitted = 0  # series recorded since the documents phase last committed

    def login(self, username: str, password: str) -> None:
        raise MirrorError("IDC's buckets are public and need no login; run the sync without "
                          "--username")

    # --- set-up -------------------------------------------------------------------------

    def _configure(self, run: DocumentRun, options: Any) -> tuple[Scope, dict]:
        scope_options = dict(getattr(options, "scope", None) or {})
        self._run = run
        self._workers = getattr(options, "workers", 8) or 8
        if scope_options.get("s3_endpoint"):
            self.endpoint = str(scope_options["s3_endpoint"]).rstrip("/")
        self.catalog = open_catalog(scope_options.get("catalog"))
        return scope_of(scope_options), scope_options

    def s3(self) -> IdcS3:
        """The S3 client, made on first use; every request it sends is counted."""
        with self._lock:
            if self._s3 is None:
                self._s3 = IdcS3(self.endpoint, pool=max(self._workers * 2, 10),
                                 on_request=self.http.count_request)
                self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="idc-get")
                weakref.finalize(self, _close, self._s3, self._pool)
            return self._s3

    # --- documents ----------------------------------------------------------------------

    def sync_documents(self, run: DocumentRun, options: Any) -> set[str] | None:
        """Store the catalog rows of the scope (and of every series already mirrored);
        returns the SeriesInstanceUIDs whose files the run wants (None: every series)."""
        scope, scope_options = self._configure(run, options)
        catalog = self.catalog
        key = _scope_key(catalog, scope)
        if _already_synced(run.session, catalog, key):
            run.summary.count("catalog", "unchanged")
            return self._scope_uids(catalog, scope)
        session = run.session
        mirrored = _current_ids(session, "series")
        seen: set[str] = set()
        collections: set[str] = set()
        self._uncommitted, listed = 0, 0
        for batch in catalog.select(scope):
            self._take_series(run, batch.to_pylist(), seen, collections)
            listed += batch.num_rows
        # The scope's (valid) UIDs: a second million-entry set only when the scope is not
        # the whole catalog (the files phase then needs it; for the whole one, None).
        in_scope = None if scope == Scope() else set(seen)
        outside = sorted(mirrored - seen)
        for start in range(0, len(outside), 5000):
            chunk = outside[start:start + 5000]
            for batch in catalog.select(_uids_scope(chunk)):
                self._take_series(run, batch.to_pylist(), seen, collections)
        run.remove_missing("series", seen, within=mirrored,
                           where=f"idc-index-data {catalog.version.package}")
        self._take_collections(run, catalog, collections)
        run.record("catalog", run.store_docs("catalog", [catalog_document(catalog)]))
        upsert(session, Listing, [{"key": key[:512], "digest": hashlib.sha256(
            key.encode()).hexdigest(), "count": listed, "fetched_at": utc_now()}])
        # Durable, not published here: the engine's next publish (the files phase's first
        # due one, or the run's own at its end) publishes the catalog whole, once; a publish
        # here too would copy the index and digest a million versions twice in a row.
        run.checkpoint()
        return in_scope

    def _scope_uids(self, catalog: Catalog, scope: Scope) -> set[str] | None:
        if scope == Scope():
            return None
        uids: set[str] = set()
        for batch in catalog.select(scope, columns=["SeriesInstanceUID"]):
            uids.update(batch.column(0).to_pylist())
        return uids

    def _take_series(self, run: DocumentRun, rows: list[dict], seen: set[str],
                     collections: set[str]) -> None:
        """Store and index the rows that are new or changed; count the rest unchanged."""
        spec = self.spec.kind("series")
        docs = [series_document(row) for row in rows]
        docs = [d for d in docs if spec.valid_id(d.get("SeriesInstanceUID"))]
        ids = [d["SeriesInstanceUID"] for d in docs]
        seen.update(ids)
        collections.update(d["collection_id"] for d in docs if d.get("collection_id"))
        known = _known(run.session, ids)
        changed = [d for d in docs if d["SeriesInstanceUID"] not in known
                   or known[d["SeriesInstanceUID"]][0] !=
                   hashlib.sha256(canonical_json(d)).hexdigest()]  # new: no hash needed
        run.summary.count("series", "unchanged", len(docs) - len(changed))
        if not changed:
            return
        self._mark_revised(run.session, changed, known)
        run.record("series", run.store_docs("series", changed))  # on the pool, in chunks
        self._uncommitted += len(changed)
        if self._uncommitted >= COMMIT_ROWS:
            # No interim publish while the catalog loads: each would rebuild the series
            # projection of all loaded so far (the engine's rationing still lets that take
            # a fifth of the run); the phase's last commit publishes it whole.
            run.checkpoint()
            self._uncommitted = 0

    def _mark_revised(self, session: Session, changed: list[dict], known: dict) -> None:
        """A new ``crdc_series_uuid`` is a new version of the bytes: the series' files are
        fetched again, recorded now (a ``sync_items`` row) in the same transaction as the
        document, so a run killed before its file phase still refetches it next time."""
        revised = [d["SeriesInstanceUID"] for d in changed
                   if d["SeriesInstanceUID"] in known
                   and known[d["SeriesInstanceUID"]][1] != d.get("crdc_series_uuid")]
        if revised:
            upsert(session, SyncItem, [{"kind": "series", "object_id": uid, "role": ROLE,
                                        "state": "pending", "attempts": 0, "error": None}
                                       for uid in revised])

    def _take_collections(self, run: DocumentRun, catalog: Catalog,
                          collections: set[str]) -> None:
        docs = collection_documents(catalog, collections)
        run.record("collection", run.store_docs("collection", docs))
        catalog_ids = {r["collection_id"] for r in catalog.collections()}
        present = _current_ids(run.session, "collection")
        run.remove_missing("collection", present & catalog_ids, within=present,
                           where=f"idc-index-data {catalog.version.package}")

    # --- files --------------------------------------------------------------------------

    def plan_files(self, session: Session, scope: set[str] | None,
                   options: frozenset[str]) -> list[FileTask]:
        """A task per series (of the scope, or already holding files) whose current
        version the mirror lacks: fewer held instances than ``instanceCount``, or a
        revision or earlier failure pending in ``sync_items``."""
        if OPTION not in options:
            return []
        held = _held_instances(session)
        pending = set(session.scalars(select(SyncItem.object_id).where(
            SyncItem.kind == "series", SyncItem.role == ROLE)))
        wanted = set(held) | pending
        wanted = (wanted | scope) if scope is not None else None
        tasks = []
        for uid, doc in _series_docs(session, wanted):
            count = doc.get("instanceCount")
            have = held.get(uid, {})
            if uid not in pending and count is not None and len(have) == count:
                continue
            nbytes = _bytes_of(doc)
            self._planned[uid] = PlannedSeries(
                uid, doc.get("StudyInstanceUID"), doc.get("aws_bucket") or "",
                doc.get("crdc_series_uuid") or "", count, nbytes, dict(have))
            tasks.append(FileTask("series", uid, ROLE, OPTION, url=None, size=nbytes))
        return tasks

    def fetch_file(self, task: FileTask, fetcher) -> list[tuple]:
        """List the series, check the listing against the catalog, fetch its instances in
        parallel; all or nothing (see the module docstring)."""
        plan = self._planned.get(task.object_id)
        if plan is None:
            raise MirrorError(f"series {task.object_id} was not planned; run the sync again")
        s3 = self.s3()
        listing = s3.list_series(plan.bucket, plan.series_uuid, plan.count)
        listing.check(plan.nbytes)
        futures = [self._pool.submit(self._fetch_instance, fetcher, plan, obj)
                   for obj in listing.objects]
        done, errors = [], []
        for future in futures:
            try:
                done.append(future.result())
            except Exception as exc:  # noqa: BLE001 - the first is raised after cleanup
                errors.append(exc)
        if not errors:
            errors = _duplicate_sops(done, task.object_id)
        if errors:
            for item in done:
                if item is not None and item.published:
                    fetcher.store.remove(item.stored.relpath)
            raise errors[0]
        fresh = [item for item in done if item is not None]
        # the headers are stored once the whole series checked out (a failed series leaves
        # no document behind), on the pool: each is a file create that threads overlap
        docs = list(self._pool.map(lambda item: (item.doc, fetcher.store.put_json(
            "instance", item.uuid, item.doc, shard=self.spec.shard_of("instance", item.uuid),
            keep_text=True)), fresh))  # the index keeps the same text (KindSpec.ordered)
        with self._lock:
            self._fetched[task.object_id] = FetchedSeries({o.name[:-4] for o in
                                                           listing.objects}, docs)
        return [(item.uuid, ROLE, item.stored, "application/dicom", None, item.published)
                for item in fresh]

    def _fetch_instance(self, fetcher, plan: PlannedSeries, obj: S3Object):
        """One instance: skipped when held, adopted when published but not indexed,
        else streamed, checked and published. Runs on the source's pool."""
        uuid = obj.name[:-4]
        if not INSTANCE_UUID.fullmatch(uuid):
            raise UnsafeNameError(f"bucket key {obj.key!r} does not name an instance uuid; "
                                  "the series is skipped")
        if plan.have.get(uuid) == obj.size:
            return None
        role = self.spec.role(ROLE)
        one = FileTask("instance", uuid, ROLE, OPTION, size=obj.size,
                       replace=uuid in plan.have)
        relpath = fetcher.relpath(one, role, ".dcm")
        header: dict = {}

        def validate(path: Path) -> None:
            header["value"] = check_instance(read_header(str(path)), plan)

        if not one.replace and fetcher.store.exists(relpath):
            adopted = self._adopt(fetcher, relpath, obj, validate)
            if adopted is not None:
                return _Fetched(uuid, adopted, instance_document(uuid, header["value"]),
                                False)
        stored = fetcher.put(relpath, self.s3().stream(obj, max_bytes=one.max_bytes),
                             obj.size, one, role, validate)
        return _Fetched(uuid, stored, instance_document(uuid, header["value"]), True)

    @staticmethod
    def _adopt(fetcher, relpath: str, obj: S3Object, validate) -> StoredFile | None:
        """A file a killed run published but never indexed: kept if it still checks."""
        try:
            fetcher.store.check_file(relpath, b"DICM", magic_offset=128)
            validate(fetcher.store.path(relpath))
            sha256, size = fetcher.store.hash(relpath)
            if size != obj.size:
                raise IntegrityError(f"{relpath} holds {size} bytes, the bucket {obj.size}")
        except (MirrorError, ValueError, OSError):
            fetcher.store.remove(relpath)
            return None
        return StoredFile(relpath, sha256, size)

    def record_fetched(self, task: FileTask, results: list[tuple]) -> None:
        """In the calling thread, with the file rows: index the instance headers and mark
        removed the instances the series' current version no longer holds."""
        with self._lock:
            fetched = self._fetched.pop(task.object_id, None)
        if fetched is None or self._run is None:
            return
        run = self._run
        if fetched.docs:
            run.record("instance", fetched.docs)
        plan = self._planned.get(task.object_id)
        gone = sorted(set(plan.have if plan else ()) - fetched.listed)
        if gone:  # a complete listing (its count is the catalog's) is authoritative
            mark_removed(run.session, self.spec.kind("instance"), gone, utc_now())
            run.summary.count("instance", "removed", len(gone))


@dataclass
class _Fetched:
    uuid: str
    stored: StoredFile
    doc: dict
    published: bool  # fetched by this attempt (False: adopted from a killed run)


# --- documents ----------------------------------------------------------------------------

def open_catalog(folder: str | None = None) -> Catalog:
    """The catalog to sync from: ``folder``, ``$MIRROR_IDC_CATALOG``, else the installed
    idc-index-data."""
    folder = folder or os.environ.get(settings.IDC_CATALOG_ENV) or None
    return Catalog.from_dir(folder) if folder else Catalog.installed()


def scope_of(options: dict) -> Scope:
    """The scope of ``--where`` / ``--sql`` / a snapshot's series list (one of them)."""
    given = [k for k in ("where", "sql", "series") if options.get(k)]
    if len(given) > 1:
        raise ScopeError(f"give one of --where and --sql, not {' and '.join(given)}")
    if options.get("sql"):
        scope = as_scope(str(options["sql"]))
        if scope.sql is None:
            raise ScopeError("--sql takes one SELECT SeriesInstanceUID FROM idc_index WHERE "
                             "...; use --where for FIELD OP VALUE criteria")
        return scope
    if options.get("series"):
        return _uids_scope(sorted(options["series"]))
    where = options.get("where")
    if isinstance(where, (list, tuple)):
        where = " AND ".join(where)
    scope = as_scope(where or None)
    if scope.sql is not None:
        raise ScopeError("--where takes FIELD OP VALUE criteria joined by AND; give a SELECT "
                         "with --sql")
    return scope


def _uids_scope(uids: list[str]) -> Scope:
    return Scope((Criterion("SeriesInstanceUID", "in", list(uids)),))


def _scope_key(catalog: Catalog, scope: Scope) -> str:
    """What the Listing row of a synced (catalog build, scope) pair is called."""
    build = catalog.version.build or catalog.version.package
    digest = hashlib.sha256(str(scope).encode()).hexdigest()
    return f"{SCOPE_KEY}{build}:{digest}"


def _already_synced(session: Session, catalog: Catalog, key: str) -> bool:
    """This catalog build is the mirror's, and this scope was synced from it."""
    doc = session.scalar(select(ObjectRow.doc).where(
        ObjectRow.kind == "catalog", ObjectRow.id == CATALOG_ID,
        ObjectRow.removed.is_(False)))
    if doc != catalog_document(catalog):
        return False
    return session.get(Listing, key[:512]) is not None


def catalog_document(catalog: Catalog) -> dict:
    return {"_id": CATALOG_ID, **catalog.version.as_dict()}


def series_document(row: dict) -> dict:
    """The catalog row as JSON: NaN (not JSON) becomes null."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in row.items()}


def collection_documents(catalog: Catalog, ids: set[str]) -> list[dict]:
    """The ``collections_index`` rows of ``ids`` (a bare id where the table lacks one)."""
    found: dict[str, dict] = {}
    if ids and "collections_index" in catalog.paths:
        with catalog.connect() as conn:
            table = conn.sql("SELECT * FROM collections_index").to_arrow_table()
        table = table.filter(pc.is_in(table.column("collection_id"),
                                      value_set=pa.array(sorted(ids), pa.string())))
        found = {r["collection_id"]: series_document(r) for r in table.to_pylist()}
    return [found.get(cid, {"collection_id": cid}) for cid in sorted(ids)]


def instance_document(uuid: str, header: dict) -> dict:
    """An instance's document: its ids and its header as DICOM JSON."""
    return {"crdc_instance_uuid": uuid, "SOPInstanceUID": _value(header, "00080018"),
            "SeriesInstanceUID": _value(header, "0020000E"),
            "StudyInstanceUID": _value(header, "0020000D"), "dicom": header}


def check_instance(header: dict, plan: PlannedSeries) -> dict:
    """``header`` (DICOM JSON), when its file belongs to the planned series; else an error."""
    series, study = _value(header, "0020000E"), _value(header, "0020000D")
    if series != plan.uid:
        raise IntegrityError(f"an instance of s3://{plan.bucket}/{plan.series_uuid}/ names "
                             f"series {series!r}, not the catalog's {plan.uid}; the series "
                             "is skipped")
    if plan.study_uid and study != plan.study_uid:
        raise IntegrityError(f"an instance of series {plan.uid} names study {study!r}, not "
                             f"the catalog's {plan.study_uid}; the series is skipped")
    return header


def _value(header: dict, tag: str) -> Any:
    values = (header.get(tag) or {}).get("Value") or [None]
    return values[0]


def _duplicate_sops(done: list, series_uid: str) -> list[Exception]:
    sops = [item.doc["SOPInstanceUID"] for item in done if item is not None]
    if len(sops) != len(set(sops)):
        return [IntegrityError(f"series {series_uid} holds one SOPInstanceUID twice; "
                               "the series is skipped")]
    return []


# --- index reads --------------------------------------------------------------------------

def _current_ids(session: Session, kind: str) -> set[str]:
    return set(session.scalars(select(ObjectRow.id).where(
        ObjectRow.kind == kind, ObjectRow.removed.is_(False))))


def _known(session: Session, ids: list[str]) -> dict[str, tuple[str, str | None]]:
    """``{uid: (doc_sha256, crdc_series_uuid)}`` of the series the index holds."""
    found: dict[str, tuple[str, str | None]] = {}
    uuid = func.json_extract(ObjectRow.doc, "$.crdc_series_uuid") \
        if session.get_bind().dialect.name == "sqlite" else \
        ObjectRow.doc["crdc_series_uuid"].as_string()
    for start in range(0, len(ids), LOOKUP_CHUNK):
        chunk = ids[start:start + LOOKUP_CHUNK]
        for uid, sha, series_uuid in session.execute(select(
                ObjectRow.id, ObjectRow.doc_sha256, uuid).where(
                ObjectRow.kind == "series", ObjectRow.id.in_(chunk))):
            found[uid] = (sha, series_uuid)
    return found


def _held_instances(session: Session) -> dict[str, dict[str, int]]:
    """Series uid -> {instance uuid: size} of the current instances with a file."""
    held: dict[str, dict[str, int]] = {}
    for uuid, parent, size in session.execute(
            select(ObjectRow.id, ObjectRow.parent_id, Blob.size)
            .join(Blob, (Blob.object_id == ObjectRow.id) & (Blob.role == ROLE))
            .where(ObjectRow.kind == "instance", ObjectRow.removed.is_(False))):
        held.setdefault(parent, {})[uuid] = size
    return held


def _series_docs(session: Session, wanted: set[str] | None):
    """``(uid, doc)`` of the current series (of ``wanted``), in uid order."""
    base = select(ObjectRow.id, ObjectRow.doc).where(
        ObjectRow.kind == "series", ObjectRow.removed.is_(False))
    if wanted is None:
        yield from session.execute(base.order_by(ObjectRow.id))
        return
    ordered = sorted(wanted)
    for start in range(0, len(ordered), LOOKUP_CHUNK):
        yield from session.execute(base.where(
            ObjectRow.id.in_(ordered[start:start + LOOKUP_CHUNK])).order_by(ObjectRow.id))


def _bytes_of(doc: dict) -> int | None:
    size = doc.get("series_size_MB")
    return round(size * 1e6) if isinstance(size, (int, float)) else None


def _close(s3: IdcS3, pool: ThreadPoolExecutor) -> None:
    pool.shutdown(wait=False)
    s3.close()
