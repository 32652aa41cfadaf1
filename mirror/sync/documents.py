"""What the engine gives a source's documents phase: store, index, count, remove safely.

A source lists and fetches documents its own way (see ``Source.sync_documents``); every
document then goes through a :class:`DocumentRun`: stored content-addressed in the object
store (sharded by the kind's rule), indexed as the current version of its object, and
counted as new, changed or unchanged by its canonical hash. Objects a complete listing no
longer shows are marked removed, never deleted, and only within the removal guard.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Executor
from typing import Any

from sqlalchemy.orm import Session

from mirror import settings
from mirror.config import utc_now
from mirror.errors import RemovalGuardError
from mirror.ingest import current_ids, ingest_documents, known_hashes, mark_removed
from mirror.sources.base import FileTask, SourceSpec, document_problem
from mirror.store import ObjectStore, StoredFile
from mirror.sync.summary import SyncSummary

Stored = tuple[dict, StoredFile]
STORE_CHUNK = 64  # documents a pool task stores (below two chunks: in this thread)
LOGIN_RECHECK_SECONDS = 30.0  # a removal after a check this recent needs no new one


class DocumentRun:
    """One sync run's documents: the engine's side of ``Source.sync_documents``."""

    def __init__(self, spec: SourceSpec, store: ObjectStore, session: Session,
                 executor: Executor, summary: SyncSummary, commit: Callable[..., None],
                 public: bool, window: int = 32, allow_removals: bool = False,
                 writes: Executor | None = None):
        """``executor`` runs the source's requests (and the engine's downloads);
        ``writes`` (default: ``executor``) stores batches of documents."""
        self.spec, self.store, self.session = spec, store, session
        self.executor, self.summary, self._commit = executor, summary, commit
        self.writes = writes or executor
        self.public = public
        self.window = window  # tasks in flight: bounds memory, keeps workers busy
        self.allow_removals = allow_removals
        self.on_recorded: Callable[[str, int], None] = lambda kind, n: None  # progress
        # The source's ``check_login`` (the engine sets it for a logged-in run): asked before
        # anything is marked removed, since an archive that stopped honouring the login
        # answers anonymously, and an anonymous listing lacks every private object.
        self.check_login: Callable[[], None] | None = None
        self._login_checked_at = -LOGIN_RECHECK_SECONDS
        # kind -> ids whose document this run refused as malformed ("" when it had no
        # usable id): the archive still lists them, so they are never marked removed
        self.malformed: dict[str, set[str]] = {}
        # The engine's: begin these files now, while the listing goes on (None: the files
        # wait for the plan after the documents phase, as in a dry run)
        self.offer_files: Callable[[list[FileTask]], None] | None = None

    def commit(self) -> None:
        """Make what was stored durable, commit the index, and publish if one is due."""
        self._commit()

    def offer(self, tasks: list[FileTask]) -> None:
        """Files of documents this run just recorded, which the source knows it wants:
        fetched at once when the engine allows it (the plan after the documents phase
        leaves them out), else planned as usual then. Optional for a source."""
        if self.offer_files is not None and tasks:
            self.offer_files(tasks)

    def checkpoint(self) -> None:
        """Commit without considering a publish: the engine's commit (files made durable,
        then the index rows that name them; a dry run's one transaction only flushed) with
        ``publish=False``. For a source loading one bulk listing (IDC's catalog, a million
        rows in minutes) whose interim publishes would each rebuild the projection of
        everything loaded so far; its last :meth:`commit` publishes as usual."""
        self._commit(publish=False)

    def store_docs(self, kind: str, docs: Iterable[dict]) -> list[Stored]:
        """Store each well-formed document (an equal version is not rewritten).

        A malformed one (see :func:`~mirror.sources.base.document_problem`) is a failed
        item naming the object and the field; it is neither stored nor indexed, and the
        object keeps the version it had.
        """
        spec = self.spec.kind(kind)
        good = self.screen(kind, docs)

        def put(chunk: list[dict]) -> list[Stored]:
            return [(doc, self.store.put_json(kind, spec.id_of(doc), doc,
                                              shard=spec.shard(spec.id_of(doc)),
                                              keep_text=not spec.ordered))
                    for doc in chunk]

        chunks = [good[i:i + STORE_CHUNK] for i in range(0, len(good), STORE_CHUNK)]
        if len(chunks) < 2 or threading.current_thread() is not threading.main_thread():
            return put(good)  # a worker (TCIA's instances) never waits on its own pool
        # each document is its own small file, and creating files is most of the cost
        # (a few hundred us each); threads overlap it, as the GIL is free in system calls
        return [pair for part in self.writes.map(put, chunks) for pair in part]

    def screen(self, kind: str, docs: Iterable[object]) -> list[dict]:
        """The documents of ``docs`` that are well-formed; each other one fails."""
        spec, depth = self.spec.kind(kind), int(settings.MAX_DOCUMENT_DEPTH.get())
        good = []
        for doc in docs:
            problem = document_problem(spec, doc, depth)
            if problem is None:
                good.append(doc)
                continue
            shown = spec.id_of(doc) if isinstance(doc, dict) else None
            self.fail_document(kind, shown, problem)
        return good

    def fail_document(self, kind: str, object_id: object, problem: str) -> None:
        """One malformed document: a failed item naming the object and the field; the
        object is never marked removed by this run (it is still listed)."""
        valid = self.spec.kind(kind).valid_id(object_id)
        self.malformed.setdefault(kind, set()).add(object_id if valid else "")
        self.summary.fail(kind, object_id if valid else ascii(object_id)[:60], "document",
                          f"malformed {kind} document: {problem}; skipped")

    def record(self, kind: str, stored: list[Stored], **extra: Any) -> None:
        """Index stored documents, counting new / changed / unchanged by content hash."""
        spec = self.spec.kind(kind)
        known = known_hashes(self.session, spec, [spec.id_of(doc) for doc, _ in stored])
        for doc, info in stored:
            before = known.get(spec.id_of(doc))
            outcome = ("new" if before is None
                       else "unchanged" if before == info.sha256 else "changed")
            self.summary.count(kind, outcome)
        ingest_documents(self.session, spec,
                         [(doc, info.sha256, info.relpath, info.size, info.text)
                          for doc, info in stored],
                         utc_now(), **extra)
        self.on_recorded(kind, len(stored))

    def remove_missing(self, kind: str, listed: set[str], *,
                       within: set[str] | None = None, where: str | None = None) -> None:
        """Mark removed the objects of ``kind`` (of ``within``, when given) not ``listed``.

        Refused whole, before anything is marked, when it would remove more than the
        removal guard allows (see :mod:`mirror.settings`): nothing is removed because of
        one suspicious answer. ``where`` names the listing in the message.
        """
        spec = self.spec.kind(kind)
        if within is not None and not within:
            return  # nothing it could remove (a first sync): no need to read every id
        present = current_ids(self.session, spec)
        if within is not None:
            present &= within
        gone = sorted(present - listed - self.malformed.get(kind, set()))
        if not gone:
            return
        if "" in self.malformed.get(kind, set()):  # some listed object went unnamed
            self.summary.fail(kind, "?", "listing", f"{len(gone)} {spec.table} not marked "
                              "removed: the listing held a malformed document without a "
                              "usable id, so it may have been any of them")
            return
        self.check_removals(kind, len(gone), len(present), where)
        self.confirm_login()
        mark_removed(self.session, spec, gone, utc_now())
        self.summary.count(kind, "removed", len(gone))

    def confirm_login(self) -> None:
        """Re-check the login (at most every ``LOGIN_RECHECK_SECONDS``) before a removal;
        the source raises :class:`~mirror.errors.LoginLostError` when it no longer holds."""
        if self.check_login is None:
            return
        now = time.monotonic()
        if now - self._login_checked_at < LOGIN_RECHECK_SECONDS:
            return
        self.check_login()
        self._login_checked_at = time.monotonic()

    def check_removals(self, kind: str, gone: int, present: int, where: str | None) -> None:
        """Raise :class:`RemovalGuardError` when ``gone`` of ``present`` is too many."""
        if self.allow_removals or not too_many_removals(gone, present):
            return
        listing = where or f"the {self.spec.kind(kind).table} listing"
        raise RemovalGuardError(
            f"{listing} shrank: {gone} of {present} {self.spec.kind(kind).table} would be "
            "marked removed, more than the removal guard allows; nothing was marked. If "
            "the archive really removed them, run the same command with --allow-removals")


def too_many_removals(gone: int, present: int) -> bool:
    """The removal guard's rule (defaults: more than 10 % and more than 2, or over 100)."""
    if gone <= settings.REMOVAL_MIN_COUNT.get():
        return False
    return (gone > settings.REMOVAL_MAX_FRACTION.get() * present
            or gone > settings.REMOVAL_MAX_COUNT.get())
