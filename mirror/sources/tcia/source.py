"""TCIA (NBIA REST v4) as a mirror source: the two things the engine asks, plus series zips.

Documents: the ``getSeries`` rows of the mirrored collections (``--collection X``, repeatable;
default every collection), planned by :class:`ChangePlanner` (field diff, vanished series
probed, MD5 hierarchy checked against the mirror's own hashes); the SOPInstanceUIDs of
every series that is new or whose bytes changed. Files: one task per series whose
instances the mirror lacks (or that changed); :meth:`TciaSource.fetch_file` downloads its
zip once, checks it whole (:class:`SeriesZipReader`), streams each instance into the store
(``put_stream`` publishes it only after its MD5, CRC and UIDs passed) and adds the
series' ``md5s`` file, from which the next sync computes its local hashes.

A zip refused part-way (a duplicate SOPInstanceUID in its third entry, say) leaves the
instances before it on disk, each verified, but none is indexed: the task fails as a
whole, readers never see half a series, the next run's ``put_stream`` finds the same
bytes in place, and ``mirror gc`` removes them if the series never arrives.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, ClassVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from mirror.errors import MirrorError
from mirror.index import Blob, ObjectRow, SyncItem
from mirror.sources.base import DocumentRun, FileTask, SourceSpec
from mirror.sources.dicom import open_series_zip
from mirror.sources.http import HttpClient
from mirror.sources.tcia.changes import ChangePlanner, KnownSeries
from mirror.sources.tcia.client import NbiaClient
from mirror.sources.tcia.spec import SPEC
from mirror.store import TEMP_PREFIX
from mirror.sync.pool import completed


class TciaSource:
    """One sync run against NBIA v4."""

    spec: ClassVar[SourceSpec] = SPEC

    def __init__(self, base_url: str, http: HttpClient):
        self.base_url = base_url.rstrip("/")
        self.http = http
        self.client = NbiaClient(http, self.base_url)
        self._expected: dict[str, tuple[int | None, list[str]]] = {}
        self.last_plan = None  # the ChangePlan of the last sync_documents (for reports)
        self._replace: set[str] = set()  # series whose files must be fetched again

    def login(self, username: str, password: str) -> None:
        raise MirrorError("TCIA's NBIA v4 API serves its public collections without a "
                          "login; run the sync without a user name")

    # --- documents ------------------------------------------------------------------

    def sync_documents(self, run: DocumentRun, options: Any) -> set[str] | None:
        """Returns the listed series of the mirrored collections (files are planned for
        those that lack instances or changed)."""
        wanted = _collections(getattr(options, "scope", {}).get("collection"))
        if not wanted:
            wanted = self.client.collections()
        known = self._known(run.session, run.store)
        plan = ChangePlanner(self.client, run.executor).plan(wanted, known)
        self.last_plan = plan
        self._replace = set(plan.refetch) | self._returning_changed(run.session, run.store,
                                                                     plan.added)
        for shown, problem in plan.malformed:
            run.fail_document("series", shown, problem)
        run.record("series", run.store_docs("series", plan.rows.values()))
        names = set(wanted) | set(plan.renamed) | set(plan.renamed.values())
        within = {uid for uid, k in known.items() if k.row.get("Collection") in names}
        run.remove_missing("series", set(plan.rows), within=within,
                           where="the getSeries listings")
        run.commit()
        needing = self._needing_instances(run.session, plan)
        for uid, future in completed(run.executor, self.client.sop_uids, needing, run.window):
            sops = future.result()  # listed in parallel; stored and indexed here
            docs = [{"SOPInstanceUID": sop, "SeriesInstanceUID": uid} for sop in sops]
            run.record("instance", run.store_docs("instance", docs))
            run.remove_missing("instance", set(sops), within=_instance_ids(run.session, uid),
                               where=f"getSOPInstanceUIDs of series {uid}")
        run.commit()
        return set(plan.rows)

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
    def _md5s(store, relpath: str | None) -> list[str]:
        if relpath is None:
            return []
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
            complete = uid in md5s_at and all(s in have for s in sops)
            if complete and uid not in changed:
                continue
            self._expected[uid] = (doc.get("ImageCount"), sops)
            tasks.append(FileTask("series", uid, "dicom", "dicom", url=None,
                                  size=doc.get("FileSize"), replace=uid in changed))
        return tasks

    def fetch_file(self, task: FileTask, fetcher) -> list[tuple]:
        """Download the series zip, publish each verified instance and the MD5 list."""
        role = self.spec.role("dicom")
        count, sops = self._expected.get(task.object_id, (None, []))
        scratch = fetcher.store.path(fetcher.relpath(task, role, ".dcm")).parent
        path = self.client.download_series_zip(task.object_id, scratch, prefix=TEMP_PREFIX,
                                               max_bytes=task.max_bytes)
        results: list[tuple] = []
        md5s: dict[str, str] = {}
        try:
            with open_series_zip(path, expected_count=count,
                                 expected_sop_uids=sops or None, series_uid=task.object_id,
                                 max_total=task.max_bytes,  # from getSeries FileSize
                                 label=f"the zip of series {task.object_id}") as series:
                for entry in series:
                    sop = entry.peek_uids()["SOPInstanceUID"]
                    one = FileTask("instance", sop, "dicom", "dicom", replace=True)
                    stored = fetcher.put(fetcher.relpath(one, role, ".dcm"), entry.chunks(),
                                         None, one, role, None)
                    md5s[sop] = entry.instance.md5
                    results.append((sop, "dicom", stored, "application/dicom", None, True))
        finally:
            path.unlink(missing_ok=True)
        data = json.dumps(md5s, sort_keys=True).encode()
        md5_task = FileTask("series", task.object_id, "md5s", "dicom", replace=True)
        stored = fetcher.store.put_bytes(
            fetcher.relpath(md5_task, self.spec.role("md5s"), ".json"), data, new_version=True)
        results.append((task.object_id, "md5s", stored, "application/json", None, False))
        return results


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
