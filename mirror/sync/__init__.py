"""The sync engine: make the mirror match the archive, incrementally and resumably.

A run is: take the writer lease, list what changed (documents phase), state the
plan and check disk space, fetch the files (blobs phase), then publish a new
read-only index generation. Every step can be killed; the next run finds a
consistent mirror and carries on from the persisted plan.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select

from mirror.config import MirrorConfig, layout_for, open_or_create, utc_now
from mirror.errors import MirrorError
from mirror.index import Image, Study, StudyImage, SyncRun
from mirror.index.database import IndexWriter
from mirror.lease import WriterLease
from mirror.sources.http import HttpClient
from mirror.sources.isic import IsicSource
from mirror.store import ObjectStore
from mirror.sync.blobs import (
    BlobFetcher,
    check_disk_space,
    estimate_bytes,
    persist_plan,
    plan_blobs,
)
from mirror.sync.documents import DocumentSync, dataset_filter
from mirror.sync.summary import SyncSummary

log = logging.getLogger("mirror.sync")

ALL_WHAT = frozenset({"images", "datasets", "segmentations", "studies", "annotations"})
ALL_BLOBS = frozenset({"full", "thumbnail", "superpixels", "masks"})


@dataclass
class SyncOptions:
    """What to mirror and how. The defaults mirror everything."""

    what: frozenset[str] = ALL_WHAT
    blobs: frozenset[str] = ALL_BLOBS
    workers: int = 8
    dataset: str | None = None
    study: str | None = None
    limit: int | None = None
    image_ids: frozenset[str] | None = None  # only these images (a snapshot build)
    dry_run: bool = False
    allow_mixed: bool = False
    index_url: str | None = None  # e.g. postgresql://...; only when the mirror is created
    lease_wait: float | None = 0.0
    # progress(label, total) -> update(items, nbytes); the CLI passes tqdm bars
    progress: Callable[[str, int], Callable[[int, int], None]] | None = field(
        default=None, repr=False)
    on_plan: Callable[[dict], None] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        bad = (set(self.what) - ALL_WHAT) | (set(self.blobs) - ALL_BLOBS)
        if bad:
            raise MirrorError(f"unknown sync choice(s) {', '.join(sorted(bad))}; use "
                              f"--what {','.join(sorted(ALL_WHAT))} and "
                              f"--blobs {','.join(sorted(ALL_BLOBS))}")
        if self.workers < 1 or self.workers > 64:
            raise MirrorError("--workers must be between 1 and 64")


def sync(root: Path | str, url: str | None = None, options: SyncOptions | None = None,
         username: str | None = None, password: str | None = None) -> SyncSummary:
    """Create or update the mirror at ``root`` from the archive at ``url``."""
    options = options or SyncOptions()
    root = Path(root)
    config = open_or_create(root, url, authenticated=username is not None,
                            allow_mixed=options.allow_mixed, index_url=options.index_url)
    layout = layout_for(root, config)
    started = time.monotonic()
    summary = SyncSummary(dry_run=options.dry_run)
    http = HttpClient(pool_size=options.workers)
    source = IsicSource(config.base_url, http)
    try:
        if username is not None:
            source.login(username, password or "")
        with WriterLease(layout, command="sync", wait=options.lease_wait):
            _run(layout, config, source, options, summary)
    finally:
        summary.requests, summary.retries = http.requests_made, http.retries
        summary.seconds = time.monotonic() - started
        http.close()
    return summary


def _run(layout, config: MirrorConfig, source: IsicSource, options: SyncOptions,
         summary: SyncSummary) -> None:
    store = ObjectStore(layout, batch_durability=True)
    store.clean_temp()
    writer = IndexWriter(layout, config.index_url, mirror_id=config.id)
    threads = options.workers + _cpu_threads()
    try:
        with writer.session() as session, ThreadPoolExecutor(threads) as pool:
            run = SyncRun(command="sync", started_at=utc_now())
            session.add(run)

            def commit() -> None:
                store.flush()  # files durable before the rows that name them
                session.commit()
                session.expunge_all()

            docs = DocumentSync(source, store, session, pool, summary, commit,
                                public=not config.authenticated, window=4 * options.workers)
            scope = _sync_documents(docs, options)
            tasks = plan_blobs(session, scope, set(options.blobs))
            needed = estimate_bytes(session, tasks)
            free = check_disk_space(layout.root, needed)
            summary.plan = {"files": len(tasks), "estimated_bytes": needed, "free_bytes": free}
            if options.on_plan:
                options.on_plan(summary.plan)
            if options.dry_run:
                session.rollback()
                return
            persist_plan(session, tasks)
            commit()
            BlobFetcher(source, store, session, pool, summary, commit,
                        _progress(options, len(tasks)), window=4 * options.workers).run(tasks)
            run = session.merge(run)
            run.finished_at, run.ok, run.summary = utc_now(), summary.ok, summary.as_dict()
            commit()
        summary.generation = writer.publish()
    finally:
        writer.close()


def _sync_documents(docs: DocumentSync, options: SyncOptions) -> set[str] | None:
    """Phase 1. Returns the image ids in scope for files (None = every image)."""
    what = options.what
    datasets = docs.sync_datasets() if {"datasets", "images"} & what else []
    docs.commit()
    study_images: set[str] | None = None
    if "studies" in what or options.study:
        changed = docs.sync_studies(options.study)
        if options.study:
            study_images = _study_image_ids(docs, options.study)
        if "annotations" in what:
            docs.sync_annotations(changed, markups=True)
    restrict = study_images
    if options.image_ids is not None:
        restrict = set(options.image_ids) & (restrict if restrict is not None
                                             else set(options.image_ids))
    scope = restrict
    if "images" in what:
        todo, listed, complete = docs.plan_images(restrict, options.limit)
        keep = dataset_filter(datasets, options.dataset)
        docs.sync_images(todo, keep)
        if complete and options.dataset is None:
            docs.remove_missing("image", listed)
        scope = _scope(docs, listed, keep, options)
        docs.commit()
    if "segmentations" in what:
        docs.sync_segmentations(docs.images_needing_segmentations(scope))
    return scope


def _scope(docs: DocumentSync, listed: set[str], keep, options: SyncOptions) -> set[str] | None:
    """Image ids whose files this run fetches: all, or the listed ones that were kept."""
    if (options.dataset is None and options.limit is None and options.study is None
            and options.image_ids is None):
        return None
    rows = docs.session.execute(select(Image.id, Image.dataset_id)).all()
    return {i for i, d in rows if i in listed and keep({"dataset": {"_id": d}})}


def _study_image_ids(docs: DocumentSync, study: str) -> set[str]:
    row = docs.session.execute(select(Study.id).where(
        (Study.name == study) | (Study.id == study))).scalar()
    if row is None:
        names = ", ".join(sorted(docs.session.scalars(select(Study.name)))) or "none"
        raise MirrorError(f"no study named {study!r}; the mirror knows: {names}")
    return set(docs.session.scalars(select(StudyImage.image_id).where(
        StudyImage.study_id == row)))


def _cpu_threads() -> int:
    """Threads beyond ``--workers``: while some decode what they fetched (a superpixel PNG
    takes ~15 ms of CPU), ``--workers`` requests stay in flight (HttpClient bounds them)."""
    return min(4, os.cpu_count() or 1)


def _progress(options: SyncOptions, total: int):
    if options.progress is None:
        return None
    return options.progress("files", total)


__all__ = ["ALL_BLOBS", "ALL_WHAT", "SyncOptions", "SyncSummary", "sync"]
