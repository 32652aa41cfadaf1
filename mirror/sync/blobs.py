"""Phase 2 of a sync: binary files (images, thumbnails, superpixels, masks).

The plan is the set of (object, role) pairs the index lacks, persisted as
``sync_items`` rows so that a killed run resumes where it stopped. Each file is
streamed into a temp file, checked (size against Content-Length, magic bytes
against the expected kind, so an HTML error page is never stored as an image),
then published atomically; only then is its index row written, in batches,
after one fsync per touched shard directory.
"""

from __future__ import annotations

import itertools
import logging
import shutil
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from mirror.config import utc_now
from mirror.errors import ArchiveError, DiskFullError, MirrorError
from mirror.index import Blob, Image, Segmentation, SyncItem
from mirror.ingest import blob_row, ingest_blobs
from mirror.sources.isic import BLOB_KINDS, IsicSource
from mirror.store import ObjectStore, StoredFile, blob_relpath, extension_for
from mirror.sync.pool import completed
from mirror.sync.summary import SyncSummary

log = logging.getLogger("mirror.sync")
CHUNK = 256 * 1024
# Rough bytes per pixel, to estimate a plan's size before anything is known.
BYTES_PER_PIXEL = {"image": 0.35, "superpixels": 0.12, "thumbnail": 0.0, "mask": 0.01}
FIXED_BYTES = {"thumbnail": 20_000}
COMMIT_EVERY = 200
# The most bytes a file may have: far above any real encoding of its pixels (raw RGB is 3
# bytes a pixel), but finite, so that an endless or absurd body is cut off, not stored.
MAX_BYTES_PER_PIXEL, MAX_OVERHEAD = 8, 16 * 2**20
MAX_BYTES_UNKNOWN_SHAPE = 2**30


@dataclass(frozen=True)
class BlobTask:
    """One file to fetch: the object it belongs to, its role, and what to name it."""

    kind: str  # "image" or "segmentation"
    object_id: str
    role: str  # image, thumbnail, superpixels, mask
    option: str  # the --blobs value that asked for it
    name: str | None
    shape: tuple[int, int] | None  # (height, width) of the image, when known

    @property
    def pixels(self) -> int:
        return self.shape[0] * self.shape[1] if self.shape else 0

    @property
    def max_bytes(self) -> int:
        """The size limit of this file (see ``MAX_BYTES_PER_PIXEL``)."""
        if not self.pixels:
            return MAX_BYTES_UNKNOWN_SHAPE
        return MAX_OVERHEAD + MAX_BYTES_PER_PIXEL * self.pixels


def plan_blobs(session: Session, image_ids: set[str] | None, blobs: set[str]) -> list[BlobTask]:
    """Every wanted file the index does not have yet, in a stable order."""
    have = {tuple(r) for r in session.execute(select(Blob.object_id, Blob.role))}
    tasks: list[BlobTask] = []
    images = session.execute(select(Image.id, Image.name, Image.pixels_x, Image.pixels_y)
                             .where(Image.removed.is_(False)).order_by(Image.id)).all()
    shape_of = {}
    for image_id, name, px, py in images:
        if image_ids is not None and image_id not in image_ids:
            continue
        shape_of[image_id] = (py, px) if px and py else None
        for option in ("full", "thumbnail", "superpixels"):
            role = BLOB_KINDS[option].role
            if option in blobs and (image_id, role) not in have:
                tasks.append(BlobTask("image", image_id, role, option, name, shape_of[image_id]))
    if "masks" in blobs:
        segs = session.execute(select(Segmentation.id, Segmentation.image_id).where(
            Segmentation.removed.is_(False), Segmentation.failed.is_(False))
            .order_by(Segmentation.id)).all()
        tasks += [BlobTask("segmentation", sid, "mask", "masks", None, shape_of[iid])
                  for sid, iid in segs if iid in shape_of and (sid, "mask") not in have]
    return tasks


def estimate_bytes(session: Session, tasks: list[BlobTask]) -> int:
    """Bytes the plan will need: mean size per pixel seen so far, else a rule of thumb."""
    total = 0
    for role, group in itertools.groupby(sorted(tasks, key=lambda t: t.role), lambda t: t.role):
        group = list(group)
        per_pixel = BYTES_PER_PIXEL.get(role, 0.1)
        total += sum(int(t.pixels * per_pixel) + FIXED_BYTES.get(role, 0) for t in group)
    return total


def check_disk_space(root, needed: int) -> int:
    """Free bytes under ``root``; a clear error when ``needed`` (+10 %) does not fit."""
    free = shutil.disk_usage(root).free
    if needed * 1.1 > free:
        raise MirrorError(
            f"not enough disk space under {root}: the plan needs about {needed / 1e9:.2f} GB, "
            f"{free / 1e9:.2f} GB are free; free space or narrow the sync with --blobs/--limit")
    return free


def persist_plan(session: Session, tasks: list[BlobTask]) -> None:
    """Record the outstanding work so that a killed run can report and resume it."""
    known = {tuple(r) for r in session.execute(
        select(SyncItem.kind, SyncItem.object_id, SyncItem.role))}
    session.add_all(SyncItem(kind=t.kind, object_id=t.object_id, role=t.role, state="pending",
                             attempts=0) for t in tasks
                    if (t.kind, t.object_id, t.role) not in known)


def _content_length(value: str | None, task: BlobTask, url: str) -> int | None:
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


class BlobFetcher:
    """Runs the blob plan on a worker pool; the calling thread alone writes the index."""

    def __init__(self, source: IsicSource, store: ObjectStore, session: Session,
                 executor: Executor, summary: SyncSummary, commit: Callable[[], None],
                 progress: Callable[[int, int], None] | None = None, window: int = 32):
        self.source, self.store, self.session = source, store, session
        self.executor, self.summary, self._commit = executor, summary, commit
        self.progress = progress or (lambda items, nbytes: None)
        self.window = window
        self.rows: list[dict] = []  # blob rows waiting for the next commit
        self.done: list[BlobTask] = []

    def run(self, tasks: list[BlobTask]) -> None:
        last_commit = time.monotonic()
        for n, (task, future) in enumerate(
                completed(self.executor, self.fetch, tasks, self.window), 1):
            try:
                results = future.result()
            except DiskFullError:
                self.commit()  # keep what arrived: the next run resumes after it
                raise
            except Exception as exc:  # noqa: BLE001 - recorded and retried next run
                self._record_failure(task, exc)
                continue
            self._record_success(task, results)
            if n % COMMIT_EVERY == 0 or time.monotonic() - last_commit > 5:
                self.commit()
                last_commit = time.monotonic()
        self.commit()

    def commit(self) -> None:
        """Write the buffered rows in bulk, then make files and rows durable, in that order."""
        ingest_blobs(self.session, self.rows)
        by_kind = sorted(self.done, key=lambda t: (t.kind, t.role))
        for kind, group in itertools.groupby(by_kind, lambda t: (t.kind, t.role)):
            ids = [t.object_id for t in group]
            self.session.execute(delete(SyncItem).where(
                SyncItem.kind == kind[0], SyncItem.role == kind[1],
                SyncItem.object_id.in_(ids)))
        self.rows, self.done = [], []
        self._commit()

    def fetch(self, task: BlobTask) -> list[tuple[str, StoredFile, str, str | None, bool]]:
        """Download (or adopt an already published file) and derive; runs in a worker."""
        kind = BLOB_KINDS[task.option]
        url = self.source.blob_url(kind, task.object_id)
        http = self.source.http

        decoded: dict = {}  # the superpixel labels, decoded once to check the PNG

        validate = self._validator(task, decoded)

        def attempt() -> tuple[StoredFile, str, bool]:
            with http.fetching(url, stream=True) as response:
                if response.status_code != 200:
                    raise MirrorError(f"HTTP {response.status_code} for {url}")
                content_type = response.headers.get("Content-Type", "")
                length = _content_length(response.headers.get("Content-Length"), task, url)
                chunks = response.iter_content(CHUNK)
                first = next(chunks, b"")
                ext = extension_for(content_type, first)
                relpath = blob_relpath(task.role, task.object_id, name=task.name, ext=ext)
                body = itertools.chain([first], chunks)
                if validate is not None:  # small (a superpixel PNG): decode it after the slot
                    body = _read_bounded(body, task.max_bytes)
                else:
                    return self._put(relpath, body, length, task, None), content_type, True
            return self._put(relpath, body, length, task, validate), content_type, True

        adopted = self._adopt_published(task, decoded)
        if adopted is not None:
            stored, content_type, fetched = *adopted, False
        else:
            stored, content_type, fetched = http.retrying(
                attempt, f"{task.role} of {task.object_id}")
        results = [(task.role, stored, content_type, None, fetched)]
        if task.role == "superpixels":
            results.append(self._derive_spidx(task, stored, decoded.get("labels")))
        return results

    def _put(self, relpath: str, body, length: int | None, task: BlobTask,
             validate: Callable | None) -> StoredFile:
        return self.store.put_stream(relpath, body, expected_size=length,
                                     magic=BLOB_KINDS[task.option].magic,
                                     max_size=task.max_bytes, whole=True, validate=validate)

    @staticmethod
    def _validator(task: BlobTask, decoded: dict) -> Callable | None:
        """For superpixels: decode and check the PNG before it is published (a wrong size
        or mode must not become a stray file, nor be adopted by the next run)."""
        if task.role != "superpixels":
            return None
        from mirror.superpixels import decode_png

        def validate(path) -> None:
            decoded["labels"] = decode_png(path, expected_shape=task.shape)

        return validate

    def _adopt_published(self, task: BlobTask, decoded: dict
                         ) -> tuple[StoredFile, str] | None:
        """A file published by a run that stopped before indexing it: check it, keep it.

        Files are published only complete and verified, so an existing final path needs no
        new download (this is what makes resume after ``kill -9`` cheap). It is checked
        again all the same, because a power cut can leave a file published but not yet
        flushed (see ``ObjectStore.batch_durability``): a bad one is removed and fetched.
        """
        for ext in (".jpg", ".png", ".bmp", ".gif"):
            relpath = blob_relpath(task.role, task.object_id, name=task.name, ext=ext)
            if not self.store.exists(relpath):
                continue
            try:
                self.store.check_file(relpath, BLOB_KINDS[task.option].magic, whole=True)
                validate = self._validator(task, decoded)
                if validate is not None:
                    validate(self.store.path(relpath))
            except (MirrorError, ValueError, OSError) as exc:  # SuperpixelError is a ValueError
                log.warning("refetching %s: the published file is bad (%s)", relpath, exc)
                self.store.remove(relpath)
                return None
            sha256, size = self.store.hash(relpath)
            content_type = "image/" + ext.lstrip(".").replace("jpg", "jpeg")
            return StoredFile(relpath, sha256, size), content_type
        return None

    def _derive_spidx(self, task: BlobTask, png: StoredFile, idx=None):
        """Keep the superpixel labels (decoded here unless given) as ``spidx_<id>.npz``."""
        from mirror.superpixels import decode_png, encode_npz

        if idx is None:  # an adopted file
            idx = decode_png(self.store.path(png.relpath), expected_shape=task.shape)
        relpath = blob_relpath("spidx", task.object_id, ext=".npz")
        stored = self.store.put_bytes(relpath, encode_npz(idx))
        return ("spidx", stored, "application/x-npz", png.sha256, False)

    def _record_success(self, task: BlobTask, results) -> None:
        now = utc_now()
        for role, stored, content_type, source_sha, fetched in results:
            self.rows.append(blob_row(task.object_id, role, stored.relpath, stored.sha256,
                                      stored.size, content_type, now, source_sha))
            outcome = "fetched" if fetched else "derived" if role == "spidx" else "adopted"
            self.summary.blobs[(role, outcome)] += 1
            if fetched and role != "spidx":
                self.summary.bytes_downloaded += stored.size
                self.progress(1, stored.size)
        self.done.append(task)

    def _record_failure(self, task: BlobTask, exc: Exception) -> None:
        log.warning("%s %s %s: %s", task.kind, task.object_id, task.role, exc)
        self.summary.fail(task.kind, task.object_id, task.role, exc)
        self.summary.blobs[(task.role, "failed")] += 1
        item = self.session.get(SyncItem, (task.kind, task.object_id, task.role))
        if item is not None:
            item.state, item.attempts, item.error = "failed", item.attempts + 1, str(exc)[:500]
        self.progress(1, 0)


