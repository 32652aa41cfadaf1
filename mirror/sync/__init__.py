"""The sync engine: make the mirror match the archive, incrementally and resumably.

A run is: take the writer lease, let the source list and store what changed (documents
phase, through a :class:`~mirror.sync.documents.DocumentRun`), state the file plan and
check disk space, fetch the files (:class:`~mirror.sync.files.FileFetcher`), then publish
a new read-only index generation. Every step can be killed; the next run finds a
consistent mirror and carries on from the persisted plan. The engine knows no archive:
the mirror's source (``mirror.json``, see :mod:`mirror.sources.base`) does the talking.
"""

from __future__ import annotations

import gc
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from mirror import ledger, progress, projection, settings
from mirror.config import MirrorConfig, layout_for, open_or_create, source_name, utc_now
from mirror.errors import MirrorError
from mirror.index import SyncRun
from mirror.index.database import IndexWriter
from mirror.layout import MARKER, Layout
from mirror.lease import WriterLease
from mirror.sources.base import FileTask, Source, SourceSpec, source_class
from mirror.sources.http import HttpClient
from mirror.store import ObjectStore
from mirror.sync.documents import DocumentRun
from mirror.sync.estimate import Weights, check_disk_space, estimate_bytes, sample_tasks
from mirror.sync.files import FileFetcher, persist_plan
from mirror.sync.summary import SyncSummary
from mirror.temps import clean_writer_temps

log = logging.getLogger("mirror.sync")


@dataclass
class SyncOptions:
    """What to mirror and how. The defaults mirror everything the source offers.

    ``what`` (document parts) and ``blobs`` (file choices) are the source's
    (``SourceSpec.parts`` and ``file_options``); None means all of them. ``dataset``,
    ``study``, ``limit`` and ``image_ids`` are scopes of the ISIC sources; ``scope`` holds
    any other source's (``collection``, ``search``, ``where``...).
    """

    what: frozenset[str] | None = None
    blobs: frozenset[str] | None = None
    workers: int = 8
    dataset: str | None = None
    study: str | None = None
    limit: int | None = None
    image_ids: frozenset[str] | None = None  # only these images (a snapshot build)
    scope: dict = field(default_factory=dict)
    dry_run: bool = False
    full: bool = False  # re-check now what a source re-checks a share of per run
    allow_mixed: bool = False
    allow_removals: bool = False
    rebase_url: bool = False  # a different url is the same archive at a new address
    space_check: bool = True  # False: --no-space-check (the estimate is reported, not enforced)
    source: str | None = None  # registry name; only when the mirror is created
    index_url: str | None = None  # e.g. postgresql://...; only when the mirror is created
    lease_wait: float | None = 0.0
    # progress(label, total) -> update(items, nbytes); the CLI passes tqdm bars
    progress: Callable[[str, int], Callable[[int, int], None]] | None = field(
        default=None, repr=False)
    on_plan: Callable[[dict], None] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.workers < 1 or self.workers > 64:
            raise MirrorError("--workers must be between 1 and 64")
        if self.limit is not None and self.limit < 0:
            raise MirrorError("--limit must be 0 or more")

    def resolve(self, spec: SourceSpec) -> None:
        """Fill the source's defaults and refuse choices it does not offer."""
        self.what = frozenset(spec.parts) if self.what is None else frozenset(self.what)
        self.blobs = (frozenset(spec.file_options) if self.blobs is None
                      else frozenset(self.blobs))
        bad = (set(self.what) - spec.parts) | (set(self.blobs) - spec.file_options)
        if bad:
            raise MirrorError(f"unknown sync choice(s) {', '.join(sorted(bad))} for "
                              f"{spec.title}; use --what {','.join(sorted(spec.parts))} and "
                              f"--blobs {','.join(sorted(spec.file_options))}")


def sync(root: Path | str, url: str | None = None, options: SyncOptions | None = None,
         username: str | None = None, password: str | None = None) -> SyncSummary:
    """Create or update the mirror at ``root`` from the archive at ``url``."""
    options = options or SyncOptions()
    root = Path(root)
    cls = source_class(source_name(root, url, options.source))
    options.resolve(cls.spec)  # a bad choice is refused before anything is written
    http = HttpClient(pool_size=options.workers)  # so are bad settings (MIRROR_* bounds)
    root_existed, fresh = root.exists(), not (root / MARKER).exists()
    try:
        config = open_or_create(root, url, authenticated=username is not None,
                                allow_mixed=options.allow_mixed, index_url=options.index_url,
                                source=options.source, rebase_url=options.rebase_url)
    except BaseException:
        http.close()
        raise
    layout = layout_for(root, config)
    started = time.monotonic()
    summary = SyncSummary(dry_run=options.dry_run)
    source = cls(config.base_url, http)
    undone = False
    # the publish's imports (DuckDB, numpy), done while the run waits on the network
    warm = threading.Thread(target=projection.warm_imports, name="warm-imports", daemon=True)
    try:
        with WriterLease(layout, command="sync", wait=options.lease_wait):
            try:
                if username is not None:
                    source.login(username, password or "")
                warm.start()
                with _long_lived_gc():
                    _run(layout, config, source, options, summary, started)
            except BaseException as exc:
                undone = fresh and _undo_empty_mirror(layout)
                if isinstance(exc, KeyboardInterrupt):  # the CLI's resume hint counts them
                    exc.files_kept = summary.files_kept
                raise
    finally:
        if warm.is_alive():
            warm.join()  # never leave an import under way at interpreter exit
        if undone:
            _remove_empty_folders(layout, root_existed)
        _measure(summary, http, started)
        http.close()
    return summary


JOURNAL = "published.journal"  # files published by syncs, with their hashes (store.py)


def _run(layout, config: MirrorConfig, source: Source, options: SyncOptions,
         summary: SyncSummary, started: float) -> None:
    store = ObjectStore(layout, batch_durability=True)
    store.keep_journal(layout.state_dir() / JOURNAL)
    store.clean_temp()
    clean_writer_temps(layout)  # index copies, CURRENT, mirror.json of aborted writers
    writer = IndexWriter(layout, config.index_url, mirror_id=config.id)
    threads = options.workers + _cpu_threads(options.workers)
    try:
        with writer.session() as session, ThreadPoolExecutor(threads) as pool, \
                ThreadPoolExecutor(STORE_THREADS, thread_name_prefix="store-docs") as writes:
            run = SyncRun(command="sync", started_at=utc_now())
            session.add(run)

            publisher = _Publisher(writer, layout, source.spec, summary)

            def commit(publish: bool = True) -> None:
                """``publish=False``: the run's own publish follows at once, so an interim
                one would only copy the index twice (a million-series catalog: a minute)."""
                store.flush()  # files durable before the rows that name them
                if options.dry_run:
                    # One transaction for the whole dry run, rolled back at its end: the
                    # working database keeps nothing the next run's report depends on.
                    session.flush()
                else:
                    session.commit()
                    if publish:
                        publisher.maybe()
                session.expunge_all()

            docs = DocumentRun(source.spec, store, session, pool, summary, commit,
                               public=not config.authenticated, window=4 * options.workers,
                               allow_removals=options.allow_removals, writes=writes)
            fetcher = FileFetcher(source, store, session, pool, summary, commit,
                                  window=4 * options.workers)
            early = _EarlyFiles(layout, options, session, fetcher)
            if not options.dry_run and options.blobs:
                docs.offer_files = early.offer
            if config.authenticated:
                docs.check_login = getattr(source, "check_login", None)
            with progress.task("documents", unit="document") as step:
                seen: dict[str, int] = {}

                def recorded(kind: str, n: int) -> None:
                    seen[kind] = seen.get(kind, 0) + n
                    step.update(n, detail=", ".join(f"{k} {v}" for k, v in sorted(seen.items())))

                docs.on_recorded = recorded
                try:
                    scope = source.sync_documents(docs, options)
                except KeyboardInterrupt:
                    pool.shutdown(cancel_futures=True)  # early files: only those under way end
                    raise
            docs.offer_files = None
            # documents a source records while its files arrive (IDC's DICOM headers) must
            # not update the closed documents step
            docs.on_recorded = lambda kind, n: None
            tasks = early.rest(source.plan_files(session, scope, frozenset(options.blobs)))
            weights = Weights.from_index(session, source.spec)
            sample = [] if options.dry_run else sample_tasks(tasks, weights)
            total = len(tasks) + early.count
            step = (progress.task("files", total=total, unit="file", total_bytes=0)
                    if total and not options.dry_run else nullcontext(None))
            with step as files_step:
                _files(layout, options, summary, session, pool, commit, fetcher, early,
                       tasks, weights, sample, files_step)
            if options.dry_run:
                session.rollback()
                return
            run = session.merge(run)
            _measure(summary, source.http, started)  # the record holds the true figures
            run.finished_at, run.ok, run.summary = utc_now(), summary.ok, summary.as_dict()
            commit(publish=False)
        summary.generation = writer.publish()
        with writer.session() as session:  # what this generation holds, for reindex
            ledger.record(layout, session, source.spec, summary.generation)
        store.clear_journal()  # the published index names every file it recorded
    finally:
        writer.close()


class _EarlyFiles:
    """Files a source offers while it still lists (``DocumentRun.offer_files``): their
    downloads overlap the listing's round trips instead of waiting for its end. Each batch
    is recorded in the plan (``sync_items``) and checked against the free disk space
    before it starts; the whole plan is checked again once the listing ends."""

    def __init__(self, layout: Layout, options: SyncOptions, session, fetcher: FileFetcher):
        self.layout, self.options, self.session, self.fetcher = layout, options, session, fetcher
        self.offered: set[tuple[str, str, str]] = set()
        self.bytes = 0  # what the offered files declare (their records' sizes)

    @property
    def count(self) -> int:
        return len(self.offered)

    def offer(self, tasks: list[FileTask]) -> None:
        tasks = [t for t in tasks if (t.kind, t.object_id, t.role) not in self.offered]
        if not tasks:
            return
        declared = sum(t.size or 0 for t in tasks)
        check_disk_space(self.layout.root, self.bytes + declared, self.options.space_check)
        persist_plan(self.session, tasks)
        self.offered.update((t.kind, t.object_id, t.role) for t in tasks)
        self.bytes += declared
        self.fetcher.start(tasks)

    def rest(self, tasks: list[FileTask]) -> list[FileTask]:
        """The plan without what was offered (under way, or done but not yet indexed)."""
        return [t for t in tasks if (t.kind, t.object_id, t.role) not in self.offered]


def _files(layout, options, summary, session, pool, commit, fetcher, early, tasks, weights,
           sample, files_step) -> None:
    """The size sample, the plan and its disk check, then the files (and the early ones)."""
    legacy = _progress(options, len(tasks) + early.count) if not options.dry_run else None

    def report(items: int, nbytes: int) -> None:
        if files_step is not None:
            files_step.update(items, nbytes)
        if legacy is not None:
            legacy(items, nbytes)

    fetcher.progress = report
    done_early = summary.files_kept
    if done_early:  # the early files that finished before the files step began
        report(done_early, 0)
    try:
        if sample:  # weigh a few of each new role first: the estimate uses them
            persist_plan(session, tasks)  # the whole plan: a failure stays in it
            fetcher.weights = weights
            fetcher.run(sample)
            fetcher.weights = None
        picked = {id(t) for t in sample}
        rest = [t for t in tasks if id(t) not in picked]
        needed, basis = estimate_bytes(fetcher.spec, rest, weights)
        free = check_disk_space(layout.root, needed, options.space_check)
        weighed = sum(w.bytes for w in weights.sampled.values())  # already on disk
        summary.plan = {"files": len(tasks) + early.count,
                        "estimated_bytes": needed + weighed + early.bytes,
                        "free_bytes": free, "basis": basis}
        if files_step is not None:
            files_step.expect_bytes(needed + weighed + early.bytes)
        if options.on_plan:
            options.on_plan(summary.plan)
        if options.dry_run or not (rest or early.count):
            return  # nothing to fetch: no commit (and no interim publish) before the run's
        persist_plan(session, rest)
        commit()
        fetcher.run(rest, finish=True)
    except KeyboardInterrupt:
        pool.shutdown(cancel_futures=True)  # stop soon: only downloads under way end
        raise


GC_YOUNG_THRESHOLD = 10_000
"""Allocations between two young-generation collections during a sync (Python's default:
700); see :func:`_long_lived_gc`."""


_gc_lock = threading.Lock()
_gc_state: dict = {"runs": 0}  # syncs running in this process; the settings the first found


@contextmanager
def _long_lived_gc():
    """The garbage collector told that a sync's modules live for good, and to look less often.

    A sync allocates many small objects (documents, rows, responses), so the collector runs
    often, and each full pass walked every object the imports made (SQLAlchemy, requests,
    DuckDB, numpy: hundreds of thousands): ``perf`` put 10 % of a 1,000-image ISIC v2 sync's
    CPU in the collector. ``gc.freeze`` moves what exists now out of its reach, and the
    young generation is collected every :data:`GC_YOUNG_THRESHOLD` allocations instead of
    700. Both are undone when the last sync running in the process ends: a program that
    calls :func:`sync` gets its own settings back (and one that froze objects itself is
    left to its own freezing).
    """
    with _gc_lock:
        if _gc_state["runs"] == 0:
            thresholds = gc.get_threshold()
            freezing = gc.get_freeze_count() == 0  # a caller's frozen objects stay its own
            if freezing:
                gc.freeze()
            gc.set_threshold(GC_YOUNG_THRESHOLD, *thresholds[1:])
            _gc_state.update(thresholds=thresholds, freezing=freezing)
        _gc_state["runs"] += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_state["runs"] -= 1
            if _gc_state["runs"] == 0:
                gc.set_threshold(*_gc_state["thresholds"])
                if _gc_state["freezing"]:
                    gc.unfreeze()


STORE_THREADS = 4
"""Threads that store a batch of documents (:meth:`DocumentRun.store_docs`): their own, as
on the download pool the batch would queue behind up to ``4 x workers`` early files, and
the listing (which waits for it) with it: an ISIC v2 page of 100 images waited 120 ms so."""

PUBLISH_SHARE = 4
"""An interim publish waits at least this many times the last one's duration after it."""


class _Publisher:
    """Publishes the index during a long run (``settings.PUBLISH_EVERY_*``), so readers can
    work during a first sync instead of waiting hours for its end.

    Each publish copies the index and rebuilds the projections of what changed, a cost that
    grows with what the run has stored so far; at a fixed interval a million-object first
    sync would publish 200 times and spend most of its time doing so (a 70,000-series IDC
    catalog sync spent 79 % of its main thread in them). So a publish is also never due
    sooner than :data:`PUBLISH_SHARE` times the last one took after it: publishing takes at
    most a fifth of the run, and a run whose publishes are cheap publishes as before. Nor
    is one due within ``PUBLISH_MIN_SECONDS`` of the run's start or the last publish: a
    short sync publishes once, at its end."""

    def __init__(self, writer: IndexWriter, layout: Layout, spec: SourceSpec,
                 summary: SyncSummary):
        self.writer, self.layout, self.spec, self.summary = writer, layout, spec, summary
        self.last_time, self.last_count, self.last_cost = time.monotonic(), 0, 0.0

    def _count(self) -> int:
        return sum(self.summary.objects.values()) + self.summary.files_kept

    def maybe(self) -> None:
        count = self._count()
        since = time.monotonic() - self.last_time
        due = (count - self.last_count >= settings.PUBLISH_EVERY_OBJECTS.get()
               or since >= settings.PUBLISH_EVERY_SECONDS.get())
        if not due or count == self.last_count or since < PUBLISH_SHARE * self.last_cost \
                or since < settings.PUBLISH_MIN_SECONDS.get():
            return
        started = time.monotonic()
        generation = self.writer.publish()
        with self.writer.session() as session:
            ledger.record(self.layout, session, self.spec, generation)
        log.info("published index generation %s during the run (%s objects and files so "
                 "far)", generation, count)
        self.last_time, self.last_count = time.monotonic(), count
        self.last_cost = self.last_time - started


def _measure(summary: SyncSummary, http: HttpClient, started: float) -> None:
    summary.requests, summary.retries = http.requests_made, http.retries
    summary.seconds = time.monotonic() - started


def _undo_empty_mirror(layout: Layout) -> bool:
    """Remove what a first sync made when it failed before storing any file (under the
    lease, so no other writer is at work); True when it did.

    Otherwise ``mirror.json`` would remember a URL that never worked (the wrong server, a
    typo), and the next attempt with the right one would be refused as a re-point.
    """
    if layout.store.exists() and any(p.is_file() for p in layout.store.rglob("*")):
        return False  # something was kept: the next run resumes from it
    layout.marker.unlink(missing_ok=True)
    if layout.base.is_dir():
        for child in layout.base.iterdir():
            if child != layout.locks:  # the lease, released on the way out
                shutil.rmtree(child, ignore_errors=True)
    return True


def _remove_empty_folders(layout: Layout, root_existed: bool) -> None:
    """After the lease is released: the folders an undone first sync made, if empty."""
    folders = [layout.locks, layout.base] + ([] if root_existed else [layout.root])
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            break  # not empty (another writer came) or already gone


def _cpu_threads(workers: int) -> int:
    """Threads beyond ``--workers``: while some decode or store what they fetched (a
    superpixel PNG takes ~15 ms of CPU; storing a small file a few ms, its request slot
    already given back), ``--workers`` requests stay in flight (HttpClient bounds them).
    A quarter of the workers at least: with 2 extra threads, 1,000 small ISIC images at
    32 workers kept the requests 10 % below their bound."""
    return max(min(4, os.cpu_count() or 1), workers // 4)


def _progress(options: SyncOptions, total: int):
    if options.progress is None:
        return None
    return options.progress("files", total)


__all__ = ["SyncOptions", "SyncSummary", "sync"]
