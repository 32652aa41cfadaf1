"""What changed in TCIA since the mirror last looked: the loop of ``tcia_idc_changes.md`` §1.4.

Date endpoints miss re-processing, removals, renames and licence changes, and the
collection-level hash lags by up to a day, so the plan is built from three sources of truth
in order of cost:

1. ``getSeries?Collection=X`` per mirrored collection, diffed by SeriesInstanceUID against
   the rows the mirror stored: new rows, vanished rows, changed fields. A vanished row is
   probed once: still listed under another collection (a rename), hidden (its series-level
   hash still answers: withdrawn or being re-processed), or deleted (empty hash).
2. Rows whose content fields (``ImageCount``, ``FileSize``, ``MaxSubmissionTimestamp``)
   changed: one series-level hash each decides between "refetch" and "fields only".
3. Rows with identical fields: the MD5 hierarchy, walked down only where it disagrees with
   the hash the mirror computes from the instance MD5s it holds (NBIA's construction, see
   :func:`combine`). The collection level answers first (one request); because it lags, a
   mismatch there is settled at the live patient level before anything is refetched.

The mirror's own hashes come from bytes it verified, so "equal" means byte-identical.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from concurrent.futures import Executor
from dataclasses import dataclass, field

from mirror.errors import ArchiveError
from mirror.sources.tcia.client import NbiaClient
from mirror.sources.tcia.spec import UID

CONTENT_FIELDS = ("ImageCount", "FileSize", "MaxSubmissionTimestamp")
"""getSeries fields that move when a series' images change (day granularity for the last)."""
IGNORED_FIELDS = ("Authorized",)
MAX_RELISTS = 3
"""Times a collection is listed again when a series it left out is still served under its
name (an empty or partial 200 from a proxy) before the plan gives up."""
MAX_RENAME_PROBES = 20
"""Vanished series probed one by one for a new collection name before the rest are taken
as hidden or removed (a rename is found by its first probe; the new listing covers all)."""


def combine(hashes: Iterable[str]) -> str:
    """NBIA's ``getMD5Hierarchy`` step: md5 of the sorted, non-empty child hashes, or ""."""
    joined = "".join(sorted(h for h in hashes if h))
    return hashlib.md5(joined.encode("ascii"), usedforsecurity=False).hexdigest() \
        if joined else ""


@dataclass
class KnownSeries:
    """What the mirror holds for a series: the getSeries row it stored, and the MD5 of
    each instance it verified."""

    row: dict
    md5s: list[str] | None = field(default_factory=list)  # None: the mirror holds no
    #                                 bytes of it (outside a --where scope, metadata only)

    @property
    def uid(self) -> str:
        return self.row["SeriesInstanceUID"]

    @property
    def hash(self) -> str | None:
        return None if self.md5s is None else combine(self.md5s)


@dataclass
class ChangePlan:
    """Series to act on. ``rows`` holds the archive's current row of every listed series."""

    added: list[str] = field(default_factory=list)
    refetch: list[str] = field(default_factory=list)  # bytes changed: download again
    fields_only: list[str] = field(default_factory=list)  # store the new row, keep the files
    unchanged: list[str] = field(default_factory=list)
    hidden: list[str] = field(default_factory=list)  # not listed, still hashes (withdrawn,
    #                                                  re-processing): mark removed for now
    removed: list[str] = field(default_factory=list)  # not listed, no images left
    renamed: dict[str, str] = field(default_factory=dict)  # old collection -> new
    rows: dict[str, dict] = field(default_factory=dict)
    requests: int = 0
    # rows the plan cannot use, as (series shown, problem): the source fails each
    malformed: list[tuple[object, str]] = field(default_factory=list)

    def add_rows(self, rows: list[dict]) -> None:
        """Key ``rows`` by their SeriesInstanceUID; a row without a valid one, or without
        the text fields the change walk keys on, is noted in ``malformed``, never a
        KeyError or a bogus key."""
        for row in rows:
            uid = row.get("SeriesInstanceUID")
            problem = _row_problem(row)
            if problem is None:
                self.rows[uid] = row
            else:
                self.malformed.append((uid, problem))


KEY_FIELDS = ("Collection", "PatientID", "StudyInstanceUID")


def _row_problem(row: dict) -> str | None:
    uid = row.get("SeriesInstanceUID")
    if not isinstance(uid, str) or not UID.fullmatch(uid):
        return "field 'SeriesInstanceUID' is missing or not a DICOM UID"
    for name in KEY_FIELDS:
        if not isinstance(row.get(name), str):
            return f"field {name!r} is missing or not text"
    return None


class ChangePlanner:
    """Builds a :class:`ChangePlan` for some collections with as few requests as it can."""

    def __init__(self, client: NbiaClient, executor: Executor | None = None,
                 full: bool = False):
        """``executor`` (optional) runs the per-collection requests side by side: with a
        few hundred collections a no-op plan is otherwise a few hundred round trips.
        ``full`` (``mirror sync --full``) skips the lagging collection hash and asks the
        live hash of every patient: a change of bytes the daily job has not folded into
        the collection hash yet is found now, for one request per patient."""
        self.client = client
        self.executor = executor
        self.full = full

    def _map(self, fn: Callable, items: list) -> list:
        return list(self.executor.map(fn, items) if self.executor else map(fn, items))

    def plan(self, collections: Iterable[str], known: dict[str, KnownSeries]) -> ChangePlan:
        plan = ChangePlan()
        wanted = list(dict.fromkeys(collections))
        for rows, requests in self._map(self._listing, wanted):
            plan.requests += requests
            plan.add_rows(rows)
        mirrored = {uid for uid, k in known.items() if k.row.get("Collection") in wanted}
        self._probe_vanished(plan, sorted(mirrored - set(plan.rows)), known)
        same_fields = []
        for uid, row in plan.rows.items():
            if uid not in known:
                plan.added.append(uid)
                continue
            before = known[uid].row
            changed = {k for k in set(row) | set(before)
                       if k not in IGNORED_FIELDS and row.get(k) != before.get(k)}
            if changed & set(CONTENT_FIELDS):
                self._settle_by_series_hash(plan, known[uid])
            elif changed:
                plan.fields_only.append(uid)
            else:
                same_fields.append(uid)
        self._walk_hierarchy(plan, same_fields, known)
        return plan

    def _listing(self, collection: str) -> tuple[list[dict], int]:
        """One collection's rows and the requests they took. A collection that
        getCollectionValues names has visible series, so an empty answer (a proxy's empty
        200) is asked again a few times."""
        requests = 0
        while True:
            requests += 1
            rows = self.client.series(Collection=collection)
            if rows or requests > MAX_RELISTS:
                return rows, requests

    def _list(self, plan: ChangePlan, collection: str) -> None:
        rows, requests = self._listing(collection)
        plan.requests += requests
        plan.add_rows(rows)

    def _probe_vanished(self, plan: ChangePlan, vanished: list[str],
                        known: dict[str, KnownSeries]) -> None:
        pending = list(vanished)
        probes = 0
        relisted: dict[str, int] = {}
        while pending:
            uid = pending.pop(0)
            if uid in plan.rows:
                continue
            if probes < MAX_RENAME_PROBES:
                probes += 1
                plan.requests += 1
                rows = self.client.series(SeriesInstanceUID=uid)
                rows = [r for r in rows if _row_problem(r) is None]
                if rows:
                    old, new = known[uid].row.get("Collection", ""), rows[0]["Collection"]
                    if new == old:  # the listing left it out: an empty or partial answer
                        relisted[old] = relisted.get(old, 0) + 1
                        if relisted[old] > MAX_RELISTS:
                            raise ArchiveError(
                                f"the getSeries listing of {old} leaves out series {uid}, "
                                "which the archive still serves; run the sync again later")
                        pending.insert(0, uid)
                    else:
                        plan.renamed[old] = new
                    self._list(plan, new)
                    continue
            self._not_listed(plan, uid)

    def _not_listed(self, plan: ChangePlan, uid: str) -> None:
        """A vanished series listed under no collection: its series hash (which ignores
        visibility) tells hidden from deleted."""
        plan.requests += 1
        hidden = self.client.md5_hierarchy(series=uid)
        (plan.hidden if hidden else plan.removed).append(uid)

    def _settle_by_series_hash(self, plan: ChangePlan, known: KnownSeries) -> None:
        if known.md5s is None:  # no bytes held: nothing to compare, nothing to refetch
            plan.fields_only.append(known.uid)
            return
        plan.requests += 1
        if self.client.md5_hierarchy(series=known.uid) == known.hash:
            plan.fields_only.append(known.uid)
        else:
            plan.refetch.append(known.uid)

    def _walk_hierarchy(self, plan: ChangePlan, same_fields: list[str],
                        known: dict[str, KnownSeries]) -> None:
        """Collection → patient → study → series, descending only where hashes differ."""
        local = {uid: (known[uid].hash if uid in known else None) for uid in plan.rows}
        candidates = {uid for uid in same_fields if local[uid] is not None}
        plan.unchanged.extend(sorted(set(same_fields) - candidates))
        tree: dict[str, dict[str, dict[str, list[str]]]] = {}
        for uid, row in plan.rows.items():
            tree.setdefault(row["Collection"], {}).setdefault(row["PatientID"], {}) \
                .setdefault(row["StudyInstanceUID"], []).append(uid)

        def study_hash(uids: list[str]) -> str | None:
            hashes = [local[u] for u in uids]
            return None if None in hashes else combine(hashes)

        def patient_hash(studies: dict[str, list[str]]) -> str | None:
            hashes = [study_hash(u) for u in studies.values()]
            return None if None in hashes else combine(hashes)

        mine: dict[str, str] = {}  # collection -> the mirror's hash, where it has all
        for collection, patients in tree.items():
            if candidates & {u for s in patients.values() for us in s.values() for u in us}:
                hashes = [patient_hash(s) for s in patients.values()]
                if None not in hashes:
                    mine[collection] = combine(hashes)
        names = [] if self.full else list(mine)
        served = dict(zip(names, self._map(
            lambda c: self.client.md5_hierarchy(collection=c), names), strict=True))
        plan.requests += len(names)
        for collection, patients in tree.items():
            if not candidates & {u for s in patients.values() for us in s.values() for u in us}:
                continue
            if collection in served and served[collection] == mine[collection]:
                continue  # (may lag by a day: the field diff above caught the rest)
            for pid, studies in patients.items():
                uids = [u for us in studies.values() for u in us]
                if not candidates & set(uids):
                    continue
                mine_patient = patient_hash(studies)  # None: some series' bytes not held
                if mine_patient is not None:
                    plan.requests += 1
                    if self.client.md5_hierarchy(patient=pid, collection=collection) == \
                            mine_patient:
                        continue
                for study, study_uids in studies.items():
                    if not candidates & set(study_uids):
                        continue
                    mine_study = study_hash(study_uids)
                    if mine_study is not None:
                        plan.requests += 1
                        if self.client.md5_hierarchy(study=study) == mine_study:
                            continue
                    for uid in candidates & set(study_uids):
                        plan.requests += 1
                        if self.client.md5_hierarchy(series=uid) != local[uid]:
                            plan.refetch.append(uid)
                            candidates.discard(uid)
        plan.unchanged.extend(sorted(candidates - set(plan.refetch)))
