"""The sources the contract suite runs against: one :class:`SourceCase` each.

A case starts its source's sandbox and says how to sync it (the URL and CLI options of a
small, complete mirror) and what a no-op re-sync may cost. Adding a source to the suite is
adding one case here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Archive:
    """A running sandbox, as the contract suite sees it."""

    url: str
    requests: Callable[[], int]  # requests served so far
    sync_args: tuple[str, ...] = ()


@dataclass(frozen=True)
class SourceCase:
    name: str
    start: Callable[[], AbstractContextManager[Archive]]
    noop_requests: int  # the most requests a no-op re-sync may make
    snapshot_args: tuple[str, ...] = field(default=())
    snapshots: str | None = None  # why snapshots are not offered yet (None: they are)


@contextmanager
def _isic_v1() -> Iterator[Archive]:
    from mirror.sources.isic_v1.sandbox import serve

    with serve(images=16, seed=41, private_fraction=0.0) as sb:
        yield Archive(sb.url, lambda: sb.stats().get("total", 0))


@contextmanager
def _idc() -> Iterator[Archive]:
    """SeaweedFS holding one real collection at its real keys, and its own catalog (which
    the CLI children read through $MIRROR_IDC_CATALOG); requests are SeaweedFS's count."""
    import os

    from mirror import settings
    from mirror.sources.idc import sandbox

    sb = sandbox.start(["lung_phantom"], max_instances=2)
    before = os.environ.get(settings.IDC_CATALOG_ENV)
    os.environ[settings.IDC_CATALOG_ENV] = str(sb.catalog.paths["idc_index"].parent)
    try:
        yield Archive(sb.s3_endpoint, sb.seaweed.s3_requests,
                      ("--source", "idc", "--where", 'collection_id == "lung_phantom"'))
    finally:
        if before is None:
            os.environ.pop(settings.IDC_CATALOG_ENV, None)
        else:
            os.environ[settings.IDC_CATALOG_ENV] = before
        sb.stop()


@contextmanager
def _tcia_v4() -> Iterator[Archive]:
    from mirror.sources.tcia.sandbox import start

    sb = start(collections=2, seed=41)
    try:
        yield Archive(sb.v4_url, lambda: sb.stats().get("total", 0))
    finally:
        sb.stop()


@contextmanager
def _tcia_v3() -> Iterator[Archive]:
    """The sandbox's frozen Bindaas v3; the CLI children read the key from TCIA_API_KEY."""
    import os

    from mirror.sources.tcia.sandbox import V3_API_KEY, start

    sb = start(collections=2, seed=41)
    before = os.environ.get("TCIA_API_KEY")
    os.environ["TCIA_API_KEY"] = V3_API_KEY
    try:
        yield Archive(sb.v3_url, lambda: sb.stats().get("total", 0))
    finally:
        if before is None:
            os.environ.pop("TCIA_API_KEY", None)
        else:
            os.environ["TCIA_API_KEY"] = before
        sb.stop()


@contextmanager
def _isic_v2() -> Iterator[Archive]:
    from mirror.sources.isic_v2.sandbox import start

    with start(images=16, seed=41) as sb:
        yield Archive(sb.url, lambda: sb.stats().get("total", 0))


CASES = [
    # ISIC v1 (docs/sync.md): datasets, studies, one annotation listing per public study (2),
    # one page of image details, and the segmentation check of ceil(16 / 7) = 3 images: a
    # listing and each document (at most 3 an image)
    SourceCase("isic-v1", _isic_v1, noop_requests=1 + 1 + 2 + 1 + 3 * (1 + 3)),
    # collections, one getSeries and one collection hash per collection
    SourceCase("tcia-v4", _tcia_v4, noop_requests=5, snapshot_args=("--blobs", "dicom")),
    # collections and one getSeries per collection (v3 has no hash)
    SourceCase("tcia-v3", _tcia_v3, noop_requests=3, snapshot_args=("--blobs", "dicom")),
    # image pages, collections and their membership listings, lesions, stats
    SourceCase("isic-v2", _isic_v2, noop_requests=7),
    # the same catalog build and scope: nothing to ask the buckets
    SourceCase("idc", _idc, noop_requests=0, snapshot_args=("--blobs", "dicom")),
]
