"""TCIA (NBIA REST v4) as a mirror source: the two things the engine asks, plus series zips.

Documents: the ``getSeries`` rows of the mirrored collections (``--collection X``, repeatable;
default every collection), planned by :class:`ChangePlanner` (field diff, vanished series
probed, MD5 hierarchy checked against the mirror's own hashes). ``--where`` criteria over
the rows (:mod:`mirror.sources.tcia.scope`) pick the series whose files are fetched; every
row is stored. Files: one task per selected series whose instances the mirror lacks (or
that changed); :meth:`TciaSource.fetch_file` downloads its zip once, checks it whole
(:class:`SeriesZipReader`), streams each instance into the store (``put_stream`` publishes
it only after its MD5, CRC and UIDs passed), reads its header (the instance's document)
and adds the series' ``md5s`` file, from which the next sync computes its local hashes.
The verified zip is the instance listing: its entries matched ``ImageCount`` and
``md5hashes.csv``, so no ``getSOPInstanceUIDs`` is asked (only a metadata-only sync, which
fetches no zip, lists them); the instances are indexed in one batch per fetcher commit
(:meth:`TciaSource.flush_fetched`), not series by series.

A zip refused part-way (a duplicate SOPInstanceUID in its third entry, say) leaves the
instances before it on disk, each verified, but none is indexed: the task fails as a
whole, readers never see half a series, the next run's ``put_stream`` finds the same
bytes in place, and ``mirror gc`` removes them if the series never arrives.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable
from typing import Any, ClassVar

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from mirror import settings
from mirror.config import utc_now
from mirror.errors import MirrorError
from mirror.index import Blob, Listing, ObjectRow, SyncItem
from mirror.ingest import mark_removed
from mirror.sources.base import DocumentRun, FileTask, SourceSpec
from mirror.sources.dicom import ZIP_HEADER_PREFIX, open_series_zip, read_header
from mirror.sources.http import HttpClient
from mirror.sources.tcia.changes import ChangePlanner, KnownSeries
from mirror.sources.tcia.client import NbiaClient
from mirror.sources.tcia.hierarchy import sync_hierarchy
from mirror.sources.tcia.licenses import LicenseKeeper, series_to_refresh
from mirror.sources.tcia.scope import parse_scope
from mirror.sources.tcia.spec import SPEC
from mirror.store import TEMP_PREFIX
from mirror.sync.pool import completed

ABSENT = "absent:"
"""The ``listings`` key prefix of a series absent upstream (hidden by the archive); its
``fetched_at`` is when the mirror first found it hidden."""


def absent_upstream(session: Session) -> dict[str, str]:
    """``{SeriesInstanceUID: since}`` of the series the archive hides (see
    :meth:`TciaSource._absent_now`)."""
    rows = session.execute(select(Listing.key, Listing.fetched_at)
                           .where(Listing.key.like(ABSENT + "%"))).all()
    return {key[len(ABSENT):]: since for key, since in rows}


class TciaSource:
    """One sync run against NBIA v4."""

    spec: ClassVar[SourceSpec] = SPEC
    objects: ClassVar[str] = "mirror.sources.tcia.objects:TciaObjects"
    exports: ClassVar[str] = "mirror.sources.tcia.exports"
    snapshots: ClassVar[str] = "mirror.sources.tcia.snapshot"
    maintenance: ClassVar[str] = "mirror.sources.tcia.maintenance"  # status: absent series
    served: ClassVar[str] = "mirror.sources.tcia.served"  # mirror serve's NBIA v4 face

    def __init__(self, base_url: str, http: HttpClient):
        self.base_url = base_url.rstrip("/")
        self.http = http
        self.client = NbiaClient(http, self.base_url)
        self._expected: dict[str, tuple[int | None, list[str]]] = {}
        self.last_plan = None  # the ChangePlan of the last sync_documents (for reports)
        self._replace: set[str] = set()  # series whose files must be fetched again
        self._run: DocumentRun | None = None
        self._lock = threading.Lock()
        self._fetched: dict[str, list] = {}  # series -> its instance documents, stored
        self._pending: list[tuple[str, list]] = []  # fetched series not yet indexed
        self._headers = True  # index each fetched instance's header (--what headers)
        self.licenses = LicenseKeeper()  # each collection's LICENSE text, from the zips

    def login(self, username: str, password: str) -> None:
        raise MirrorError("TCIA's NBIA v4 API serves its public collections without a "
                          "login; run the sync without a user name")

    # --- documents ------------------------------------------------------------------

    def sync_documents(self, run: DocumentRun, options: Any) -> set[str] | None:
        """Returns the listed series of the mirrored collections (files are planned for
        those that lack instances or changed)."""
        scope_options = getattr(options, "scope", None) or {}
        self._headers = "headers" in (getattr(options, "what", None) or {"headers"})
        scope = parse_scope(scope_options.get("where"))
        wanted = _collections(scope_options.get("collection"))
        if not wanted:
            wanted = self.client.collections()
        known = self._known(run.session, run.store)
        absent = absent_upstream(run.session)
        plan = self._planner(run, options).plan(
            wanted, {uid: k for uid, k in known.items() if uid not in absent})
        self.last_plan = plan
        self._replace = set(plan.refetch) | self._returning_changed(run.session, run.store,
                                                                     plan.added)
        for shown, problem in plan.malformed:
            run.fail_document("series", shown, problem)
        run.record("series", run.store_docs("series", plan.rows.values()))
        names = set(wanted) | set(plan.renamed) | set(plan.renamed.values())
        within = {uid for uid, k in known.items() if k.row.get("Collection") in names}
        kept = self._absent_now(run.session, plan, absent, within)
        run.remove_missing("series", set(plan.rows) | kept, within=within,
                           where="the getSeries listings")
        sync_hierarchy(run, [*plan.rows.values(), *(known[u].row for u in kept if u in known)],
                       names)
        run.commit()
        self._run = run
        selected = scope.select(plan.rows.values()) if scope else set(plan.rows)
        if scope_options.get("series") is not None:  # a snapshot build: exactly these
            selected &= set(scope_options["series"])
        fetching = (set(plan.added) | set(plan.refetch) | self._replace) & selected
        self._replace |= series_to_refresh(plan, known, fetching) & selected
        if "dicom" in (getattr(options, "blobs", None) or ()):
            return selected  # the zips list the instances (see record_fetched)
        needing = [uid for uid in self._needing_instances(run.session, plan)
                   if uid in selected]
        for uid, future in completed(run.executor, self.client.sop_uids, needing, run.window):
            sops = future.result()  # listed in parallel; stored and indexed here
            docs = [{"SOPInstanceUID": sop, "SeriesInstanceUID": uid} for sop in sops]
            run.record("instance", run.store_docs("instance", docs))
            run.remove_missing("instance", set(sops), within=_instance_ids(run.session, uid),
                               where=f"getSOPInstanceUIDs of series {uid}")
        run.commit()
        return selected

    def _planner(self, run: DocumentRun, options: Any) -> ChangePlanner:
        return ChangePlanner(self.client, run.executor,
                             full=bool(getattr(options, "full", False)))

    def _absent_now(self, session: Session, plan, absent: dict[str, str],
                    within: set[str]) -> set[str]:
        """The series to keep although no listing shows them: hidden by the archive
        (re-processed or under review; their series hash still answers), now or since an
        earlier run. NBIA hides a resubmitted series from every listing, date endpoint,
        download and higher hash until a curator approves it again; it is *absent
        upstream*, not removed, so its row and files stay (``mirror status`` counts them).
        One series-hash request per series still absent tells whether it is still hidden;
        one listed again leaves the state (its bytes are compared on its return)."""
        now = utc_now()
        still = {}
        for uid, since in absent.items():
            if uid in plan.rows or uid not in within:
                continue
            plan.requests += 1
            if self.client.md5_hierarchy(series=uid):
                still[uid] = since
        still.update({uid: now for uid in plan.hidden if uid not in still})
        for uid in set(absent) - set(still):
            if uid in within:
                session.execute(delete(Listing).where(Listing.key == ABSENT + uid))
        for uid, since in still.items():
            session.merge(Listing(key=ABSENT + uid, digest="", count=0, fetched_at=since))
        return set(still)

    def _known(self, session: Session, store) -> dict[str, KnownSeries]:
        """The current series rows and, where the mirror has them, their instance MD5s."""
        rows = session.execute(select(ObjectRow.id, ObjectRow.doc).where(
            ObjectRow.kind == "series", ObjectRow.removed.is_(False))).all()
        md5_paths = self._md5_paths(session)
        return {uid: KnownSeries(doc, self._md5s(store, md5_paths.get(uid)))
                for uid, doc in rows}

    @staticmethod
    def _md5_paths(session: Session) -> dict[str, str]:
        return dict(session.execute(select(Blob.object_id, Blob.path).where(
            Blob.role == "md5s")).all())

    @staticmethod
    def _md5s(store, relpath: str | None) -> list[str] | None:
        if relpath is None:
            return None  # no bytes of the series held
        try:
            return list(json.loads(store.read_bytes(relpath)).values())
        except (OSError, ValueError, MirrorError):
            return []  # unreadable: the hierarchy check will refetch the series

    def _returning_changed(self, session: Session, store, added: list[str]) -> set[str]:
        """Series listed again after a time hidden (re-processed, say) whose bytes are not
        the ones the mirror kept: their series hash tells (one request each)."""
        md5_paths = self._md5_paths(session)
        changed = set()
        for uid in added:
            if uid in md5_paths:
                mine = KnownSeries({}, self._md5s(store, md5_paths[uid])).hash
                if self.client.md5_hierarchy(series=uid) != mine:
                    changed.add(uid)
        return changed

    @staticmethod
    def _needing_instances(session: Session, plan) -> list[str]:
        """New and changed series, and listed ones whose instance list was never stored."""
        listed = set(session.scalars(select(ObjectRow.parent_id).where(
            ObjectRow.kind == "instance", ObjectRow.removed.is_(False))))
        wanted = list(dict.fromkeys(plan.added + plan.refetch))
        wanted += [uid for uid in plan.rows if uid not in listed and uid not in wanted]
        return wanted

    # --- files ----------------------------------------------------------------------

    def plan_files(self, session: Session, scope: set[str] | None,
                   options: frozenset[str]) -> list[FileTask]:
        """A task per series that lacks a listed instance's file or its ``md5s`` file, or
        whose bytes changed: found so by this run's documents phase, or left pending by a
        run that stopped before fetching it (its ``sync_items`` row says so; the hashes
        alone might not, while NBIA's collection hash lags)."""
        if "dicom" not in options:
            return []
        series = session.execute(select(ObjectRow.id, ObjectRow.doc)
                                 .where(ObjectRow.kind == "series",
                                        ObjectRow.removed.is_(False))
                                 .order_by(ObjectRow.id)).all()
        instances: dict[str, list[str]] = {}
        for sop, parent in session.execute(select(ObjectRow.id, ObjectRow.parent_id).where(
                ObjectRow.kind == "instance", ObjectRow.removed.is_(False))):
            instances.setdefault(parent, []).append(sop)
        have = set(session.scalars(select(Blob.object_id).where(Blob.role == "dicom")))
        md5s_at = dict(session.execute(select(Blob.object_id, Blob.fetched_at).where(
            Blob.role == "md5s")).all())
        changed = self._replace | set(session.scalars(select(SyncItem.object_id).where(
            SyncItem.kind == "series", SyncItem.role == "dicom")))
        tasks = []
        for uid, doc in series:
            if scope is not None and uid not in scope:
                continue
            sops = instances.get(uid, [])
            count = doc.get("ImageCount")
            complete = (uid in md5s_at and all(s in have for s in sops)
                        and (count is None or len(sops) >= count))
            if complete and uid not in changed:
                continue
            self._expected[uid] = (doc.get("ImageCount"), sops)
            tasks.append(FileTask("series", uid, "dicom", "dicom", url=None,
                                  size=doc.get("FileSize"), replace=uid in changed))
        return tasks

    def fetch_file(self, task: FileTask, fetcher) -> list[tuple]:
        """Download the series zip, publish each verified instance and the MD5 list."""
        role = self.spec.role("dicom")
        count, _ = self._expected.get(task.object_id, (None, []))
        scratch = fetcher.store.path(fetcher.relpath(task, role, ".dcm")).parent
        zipped = self.client.spool_series_zip(
            task.object_id, scratch, max_bytes=task.max_bytes, prefix=TEMP_PREFIX,
            memory_limit=int(settings.ZIP_MEMORY_BYTES.get()))
        results: list[tuple] = []
        md5s: dict[str, str] = {}
        headers: dict[str, dict] = {}
        try:
            # the instances the index holds may be stale (the zip is the listing now):
            # checked against getSeries' ImageCount and md5hashes.csv instead
            with open_series_zip(zipped, expected_count=count, series_uid=task.object_id,
                                 max_total=task.max_bytes,  # from getSeries FileSize
                                 label=f"the zip of series {task.object_id}") as series:
                for entry in series:
                    # one parse gives the UIDs and, when asked for, the header
                    header = entry.peek_header() if self._headers else None
                    sop = (entry.peeked or entry.peek_uids())["SOPInstanceUID"]
                    one = FileTask("instance", sop, "dicom", "dicom", replace=True)
                    stored = fetcher.put(fetcher.relpath(one, role, ".dcm"), entry.chunks(),
                                         None, one, role, None)
                    md5s[sop] = entry.instance.md5
                    if header is not None and entry.size > ZIP_HEADER_PREFIX and \
                            not entry.header_complete:  # the header may go on past it
                        header = read_header(fetcher.store.path(stored.relpath))
                    headers[sop] = header
                    results.append((sop, "dicom", stored, "application/dicom", None, True))
                self.licenses.saw(task.object_id, series.license)
        finally:
            zipped.close()
        docs = [instance_document(sop, task.object_id, headers[sop]) for sop in md5s]
        stored_docs = self._run.store_docs("instance", docs) if self._run else []
        with self._lock:
            self._fetched[task.object_id] = stored_docs
        data = json.dumps(md5s, sort_keys=True).encode()
        md5_task = FileTask("series", task.object_id, "md5s", "dicom", replace=True)
        stored = fetcher.store.put_bytes(
            fetcher.relpath(md5_task, self.spec.role("md5s"), ".json"), data, new_version=True)
        results.append((task.object_id, "md5s", stored, "application/json", None, False))
        return results

    def record_fetched(self, task: FileTask, results: list[tuple]) -> None:
        """In the fetcher's thread: keep the series' instances, as its verified zip listed
        them, for :meth:`flush_fetched` (indexing them series by series costs the fetching
        thread a GIL hand-over per statement while the workers unzip)."""
        with self._lock:
            stored = self._fetched.pop(task.object_id, None)
        if stored is not None:
            self._pending.append((task.object_id, stored))
            row = self.last_plan.rows.get(task.object_id) if self.last_plan else None
            self.licenses.fetched(task.object_id, (row or {}).get("Collection"))

    def flush_fetched(self) -> None:
        """Before the fetcher commits its file rows: index the instances of the series
        fetched since the last commit and mark removed those a series no longer holds
        (its zip is complete: entries matched ImageCount and md5hashes.csv)."""
        pending, self._pending = self._pending, []
        self.licenses.flush(self._run)
        if not pending or self._run is None:
            return
        self._run.record("instance", [item for _, stored in pending for item in stored])
        gone = []
        for uid, stored in pending:
            _, before = self._expected.get(uid, (None, []))
            gone += sorted(set(before) - {doc["SOPInstanceUID"] for doc, _ in stored})
        if gone:
            mark_removed(self._run.session, self.spec.kind("instance"), gone, utc_now())
            self._run.summary.count("instance", "removed", len(gone))

def instance_document(sop: str, series_uid: str, header: dict | None) -> dict:
    """A fetched instance's document: its ids and its header as DICOM JSON (without
    ``--what headers``: its ids only, as a metadata-only sync lists them)."""
    if header is None:
        return {"SOPInstanceUID": sop, "SeriesInstanceUID": series_uid}
    study = ((header.get("0020000D") or {}).get("Value") or [None])[0]
    return {"SOPInstanceUID": sop, "SeriesInstanceUID": series_uid,
            "StudyInstanceUID": study, "dicom": header}


def _collections(value: str | Iterable[str] | None) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return list(value)


def _instance_ids(session: Session, series_uid: str) -> set[str]:
    return set(session.scalars(select(ObjectRow.id).where(
        ObjectRow.kind == "instance", ObjectRow.parent_id == series_uid,
        ObjectRow.removed.is_(False))))
