"""Phase 2 of a sync: files, for any source (images, masks, DICOM instances...).

The plan is the list of :class:`~mirror.sources.base.FileTask` the source asks for
(``Source.plan_files``), persisted as ``sync_items`` rows so that a killed run resumes
where it stopped. Each file is streamed into a temp file, checked as its
:class:`~mirror.sources.base.FileRole` says (size against Content-Length, magic bytes at
their offset, so an HTML error page is never stored as an image; whole-file end markers;
the role's validator), then published atomically; the role's derivations are made from
it; only then are index rows written, in batches, after one flush of the store.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Executor, Future, wait
from pathlib import Path

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from mirror.config import utc_now
from mirror.errors import ArchiveError, DiskFullError, MirrorError
from mirror.index import SyncItem
from mirror.ingest import blob_row, ingest_blobs, upsert
from mirror.sources.base import FileRole, FileTask, Source
from mirror.store import ObjectStore, StoredFile, blob_relpath, extension_for
from mirror.sync.estimate import Weights, check_disk_space, estimate_bytes  # noqa: F401
from mirror.sync.pool import completed
from mirror.sync.summary import SyncSummary

log = logging.getLogger("mirror.sync")
CONTENT_TYPES = {".jpg": "image/jpeg", ".png": "image/png", ".bmp": "image/bmp",
                 ".gif": "image/gif", ".npz": "application/x-npz", ".dcm": "application/dicom",
                 ".json.zst": "application/json"}
CHUNK = 256 * 1024
IN_MEMORY_BODY = 1 << 20  # a direct download this small is read whole before it is stored
COMMIT_EVERY = 200
# object id, role, file, content type, sha256 of the file it derives from, fetched (not adopted)
Result = tuple[str, str, StoredFile, str, "str | None", bool]


def persist_plan(session: Session, tasks: list[FileTask]) -> None:
    """Record the outstanding work so that a killed run can report and resume it."""
    query = select(SyncItem.kind, SyncItem.object_id, SyncItem.role)
    if len(tasks) <= 500:  # an early batch: its own rows, not the whole table each time
        query = query.where(SyncItem.object_id.in_({t.object_id for t in tasks}))
    known = {tuple(r) for r in session.execute(query)}
    fresh = {(t.kind, t.object_id, t.role) for t in tasks} - known
    # rows in bulk (ingest.upsert, as IDC plans), not one ORM object per file
    upsert(session, SyncItem, [{"kind": kind, "object_id": object_id, "role": role,
                                "state": "pending", "attempts": 0, "error": None}
                               for kind, object_id, role in sorted(fresh)])


def _content_length(value: str | None, task: FileTask, url: str) -> int | None:
    """The declared length; refused up front when malformed or beyond the file's limit."""
    if value is None:
        return None
    if not value.isdigit():
        raise ArchiveError(f"malformed Content-Length {value[:40]!r} from {url}")
    if int(value) > task.max_bytes:
        raise ArchiveError(f"{url} declares {int(value)} bytes, more than the "
                           f"{task.max_bytes} a {task.role} of this size can need")
    return int(value)


def _read_bounded(chunks, max_bytes: int) -> list[bytes]:
    """The body in memory, read one chunk past ``max_bytes`` at most (the store refuses it)."""
    body, size = [], 0
    for chunk in chunks:
        body.append(chunk)
        size += len(chunk)
        if size > max_bytes:
            break
    return body


class FileFetcher:
    """Runs the file plan on a worker pool; the calling thread alone writes the index."""

    def __init__(self, source: Source, store: ObjectStore, session: Session,
                 executor: Executor, summary: SyncSummary, commit: Callable[[], None],
                 progress: Callable[[int, int], None] | None = None, window: int = 32):
        self.source, self.spec, self.store, self.session = source, source.spec, store, session
        self.executor, self.summary, self._commit = executor, summary, commit
        self.progress = progress or (lambda items, nbytes: None)
        self.window = window
        self.weights: Weights | None = None  # set to weigh what arrives (the size sample)
        self.rows: list[dict] = []  # file rows waiting for the next commit
        self.done: list[FileTask] = []
        self._journal = store.journaled()  # {relpath: sha256} published by earlier runs
        self._started: dict[Future, FileTask] = {}  # early files under way (start)
        self._taken, self._last_commit = 0, time.monotonic()

    def run(self, tasks: list[FileTask], finish: bool = False) -> None:
        """Fetch ``tasks`` (``finish``: and wait for what :meth:`start` began), then commit."""
        try:
            self._run(tasks)
            if finish:
                self.finish()
        except (DiskFullError, KeyboardInterrupt):
            self.collect()  # early files that finished count too
            self.commit()  # keep what arrived (Ctrl-C, SIGTERM): the next run resumes after it
            raise
        self.commit()

    def _run(self, tasks: list[FileTask]) -> None:
        for task, future in completed(self.executor, self.fetch, tasks, self.window):
            self._take(task, future)

    def _take(self, task: FileTask, future: Future) -> None:
        """Record one finished task; commit every :data:`COMMIT_EVERY` or 5 s."""
        try:
            results = future.result()
        except DiskFullError:
            raise
        except Exception as exc:  # noqa: BLE001 - recorded and retried next run
            self._record_failure(task, exc)
        else:
            self._record_success(task, results)
        self._taken += 1
        if self._taken % COMMIT_EVERY == 0 or time.monotonic() - self._last_commit > 5:
            self.commit()

    # -- early files: fetched while the documents phase still lists -------------------------

    def start(self, tasks: list[FileTask]) -> None:
        """Begin ``tasks`` now, without waiting (the documents phase goes on meanwhile); at
        most :attr:`window` of them stay unfinished, so a listing faster than the downloads
        waits here instead of queueing the whole archive in memory."""
        for task in tasks:
            while len(self._started) >= self.window:
                self.collect(block=True)
            self._started[self.executor.submit(self.fetch, task)] = task
        self.collect()

    def collect(self, block: bool = False) -> None:
        """Record the started tasks that have finished (``block``: wait for one at least)."""
        if not self._started:
            return
        if block:
            done, _ = wait(self._started, return_when=FIRST_COMPLETED)
        else:
            done = [f for f in self._started if f.done()]
        for future in done:
            self._take(self._started.pop(future), future)

    def finish(self) -> None:
        """Wait for every started task and record it."""
        while self._started:
            self.collect(block=True)

    def commit(self) -> None:
        """Write the buffered rows in bulk, then make files and rows durable, in that order."""
        flush = getattr(self.source, "flush_fetched", None)
        if flush is not None:  # what record_fetched buffered (TCIA's instances), same commit
            flush()
        ingest_blobs(self.session, self.rows)
        by_kind = sorted(self.done, key=lambda t: (t.kind, t.role))
        for kind, group in itertools.groupby(by_kind, lambda t: (t.kind, t.role)):
            ids = [t.object_id for t in group]
            self.session.execute(delete(SyncItem).where(
                SyncItem.kind == kind[0], SyncItem.role == kind[1],
                SyncItem.object_id.in_(ids)))
        self.rows, self.done = [], []
        self._commit()
        self._last_commit = time.monotonic()

    def fetch(self, task: FileTask) -> list[Result]:
        """Download (or adopt an already published file) and derive; runs in a worker."""
        fetch_file = getattr(self.source, "fetch_file", None)
        if fetch_file is not None and task.url is None:
            return fetch_file(task, self)  # one request, many files (a series zip)
        role = self.spec.role(task.role)
        checked: dict = {}  # what the role's validator returned (decoded once)
        adopted = None if task.replace else self._adopt_published(task, role, checked)
        if adopted is not None:
            stored, content_type = adopted
            fetched = False
        else:
            stored, content_type = self.source.http.retrying(
                lambda: self._download(task, role, checked), f"{task.role} of {task.object_id}")
            fetched = True
        results: list[Result] = [(task.object_id, task.role, stored, content_type, None,
                                  fetched)]
        if role.derive is not None:
            results += self._derive(task, role, stored, checked.get("value"))
        return results

    def _download(self, task: FileTask, role: FileRole, checked: dict
                  ) -> tuple[StoredFile, str]:
        url, http = task.url, self.source.http
        direct = (http.direct_files(url, task.size)
                  if task.public_url and role.validate is None else None)
        if direct is not None:
            return self._download_direct(direct, task, role)
        with http.fetching(url, stream=True) as response:
            if response.status_code != 200:
                raise MirrorError(f"HTTP {response.status_code} for {url}")
            content_type = response.headers.get("Content-Type", "")
            length = _content_length(response.headers.get("Content-Length"), task, url)
            relpath, body = self._named(response.iter_content(CHUNK), content_type, task,
                                        role)
            validate = self._validator(task, role, checked)
            if validate is not None:  # small (a superpixel PNG): decode it after the slot
                body = _read_bounded(body, task.max_bytes)
            else:
                return self.put(relpath, body, length, task, role, None), content_type
        return self.put(relpath, body, length, task, role, validate), content_type

    def _download_direct(self, direct, task: FileTask, role: FileRole
                         ) -> tuple[StoredFile, str]:
        """:meth:`_download` through obstore (:mod:`mirror.sources.direct`): the same
        checks, the GET one call that holds no GIL while it waits."""
        url = task.url
        with self.source.http.slot(url):
            body = direct.get(url)
            length = _content_length(str(body.size), task, url)
            if length > IN_MEMORY_BODY:  # streamed into the store while the slot is held
                relpath, chunks = self._named(body.chunks(), body.content_type, task, role)
                return self.put(relpath, chunks, length, task, role, None), body.content_type
            # small: read whole, so the slot is free for the next GET while this thread
            # stores it (the store's checks see the same bytes either way)
            data = b"".join(bytes(c) for c in body.chunks())
        relpath, chunks = self._named(iter([data]), body.content_type, task, role)
        return self.put(relpath, chunks, length, task, role, None), body.content_type

    def _named(self, chunks, content_type: str, task: FileTask, role: FileRole
               ) -> tuple[str, Iterator[bytes]]:
        """Where the body goes (its extension from the Content-Type and its first bytes)
        and the body again, first chunk included."""
        first = next(chunks, b"")
        if len(first) < role.magic_offset + 4:  # DICOM's magic sits at byte 128
            first = bytes(first) + bytes(next(chunks, b""))
        relpath = self.relpath(task, role, extension_for(content_type, first))
        return relpath, itertools.chain([first], chunks)

    def relpath(self, task: FileTask, role: FileRole, ext: str) -> str:
        """Where ``task``'s file goes: the role's prefix, the kind's shard."""
        return blob_relpath(role.prefix, task.object_id, name=task.name if role.named else None,
                            ext=ext, shard=self.spec.shard_of(task.kind, task.object_id))

    def put(self, relpath: str, body, length: int | None, task: FileTask, role: FileRole,
            validate: Callable | None) -> StoredFile:
        """Store one file of ``task`` as its role requires (sources' ``fetch_file`` too)."""
        return self.store.put_stream(relpath, body, expected_size=length, magic=role.magic or None,
                                     magic_offset=role.magic_offset, max_size=task.max_bytes,
                                     whole=role.whole, validate=validate,
                                     new_version=task.replace)

    @staticmethod
    def _validator(task: FileTask, role: FileRole, checked: dict) -> Callable | None:
        """The role's check of the complete temp file, keeping what it decoded."""
        if role.validate is None:
            return None

        def validate(path: Path) -> None:
            checked["value"] = role.validate(path, task)

        return validate

    def _adopt_published(self, task: FileTask, role: FileRole, checked: dict
                         ) -> tuple[StoredFile, str] | None:
        """A file published by a run that stopped before indexing it: check it, keep it.

        Files are published only complete and verified, so an existing final path needs no
        new download (this is what makes resume after ``kill -9`` cheap). It is checked
        again all the same, because a power cut can leave a file published but not yet
        flushed (see ``ObjectStore.batch_durability``): a bad one is removed and fetched.
        """
        for ext in role.exts:
            relpath = self.relpath(task, role, ext)
            if not self.store.exists(relpath):
                continue
            sha256, size = self.store.hash(relpath)
            if sha256 not in self._known_hashes(relpath):
                # Not written by a sync of this mirror (planted, or a journal lost with the
                # state folder): its bytes are unknown, so the archive's are fetched.
                log.warning("refetching %s: no earlier run recorded its hash", relpath)
                self.store.remove(relpath)
                return None
            try:
                self.store.check_file(relpath, role.magic or None, whole=role.whole,
                                      magic_offset=role.magic_offset)
                validate = self._validator(task, role, checked)
                if validate is not None:
                    validate(self.store.path(relpath))
            except (MirrorError, ValueError, OSError) as exc:  # SuperpixelError is a ValueError
                log.warning("refetching %s: the published file is bad (%s)", relpath, exc)
                self.store.remove(relpath)
                return None
            return StoredFile(relpath, sha256, size), CONTENT_TYPES.get(ext, "")
        return None

    def _known_hashes(self, relpath: str) -> set[str]:
        """Hashes a sync recorded for ``relpath`` in the publish journal (a file, not the
        index: workers never touch the session)."""
        recorded = self._journal.get(relpath)
        if recorded is None:  # published since the snapshot (this run)? read it again
            self._journal = self.store.journaled()
            recorded = self._journal.get(relpath)
        return {recorded} if recorded else set()

    def _derive(self, task: FileTask, role: FileRole, stored: StoredFile, value) -> list[Result]:
        """The role's derived files (ISIC's decoded superpixels), linked to ``stored``."""
        results: list[Result] = []
        for derived in role.derive(task, value, self.store.path(stored.relpath)):
            derived_role = self.spec.role(derived.role)
            relpath = self.relpath(task, derived_role, derived.ext)
            info = self.store.put_bytes(relpath, derived.data, new_version=task.replace)
            results.append((task.object_id, derived.role, info, derived.content_type,
                            stored.sha256, False))
        return results

    def _record_success(self, task: FileTask, results: list[Result]) -> None:
        now = utc_now()
        if self.weights is not None:
            self.weights.weigh(task, sum(stored.size for _, _, stored, *_ in results))
        for object_id, role, stored, content_type, source_sha, fetched in results:
            self.rows.append(blob_row(object_id, role, stored.relpath, stored.sha256,
                                      stored.size, content_type, now, source_sha))
            outcome = "fetched" if fetched else "derived" if source_sha else "adopted"
            self.summary.blobs[(role, outcome)] += 1
            self.summary.files_kept += 1
            if fetched:
                self.summary.bytes_downloaded += stored.size
                self.progress(1, stored.size)
        record = getattr(self.source, "record_fetched", None)
        if record is not None:  # what the files said (IDC: DICOM headers), in this thread
            record(task, results)
        self.done.append(task)

    def _record_failure(self, task: FileTask, exc: Exception) -> None:
        log.warning("%s %s %s: %s", task.kind, task.object_id, task.role, exc)
        self.summary.fail(task.kind, task.object_id, task.role, exc)
        self.summary.blobs[(task.role, "failed")] += 1
        item = self.session.get(SyncItem, (task.kind, task.object_id, task.role))
        if item is not None:
            item.state, item.attempts, item.error = "failed", item.attempts + 1, str(exc)[:500]
        self.progress(1, 0)


