"""IDC with the seed's REST API v1 naming the series: ``--source idc-api-v1 --url …/v1``.

The v1 manifest (``POST /cohorts/manifest/preview``, paged through ``nextPage``, 202s
resubmitted; :mod:`.v1`) answers one question: *which* series. Everything else is the
``idc`` source's: their rows come from the idc-index-data catalog (v1 rows are per instance
and carry no ``crdc_series_uuid``, bucket or size), their bytes from the buckets at
``--s3-endpoint`` (default the public AWS endpoint; the mirror's base URL is the v1 root),
and change detection, completeness and the all-or-nothing series are the same.

Filters: ``--collection ID`` (repeatable) and ``--where 'FIELD == VALUE'`` /
``'FIELD in [...]'`` joined by AND become the manifest's ``filters`` (AND across
attributes, OR within one), as v1 matched them. A series the manifest names but the
installed catalog does not list is reported as not mirrored (the catalog may be older or
newer than the v1 service's release). The real v1 service is switched off: its 410 (405
on the POST) becomes a one-line error naming ``--source idc``.

Unlike ``idc``'s no-op re-sync (zero requests), a re-sync here costs the manifest's pages:
the scope is the service's answer, asked again each run; the buckets are not asked.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from mirror.errors import ScopeError
from mirror.sources.base import DocumentRun, SourceSpec
from mirror.sources.http import HttpClient
from mirror.sources.idc import v1
from mirror.sources.idc.catalog import as_scope
from mirror.sources.idc.source import IdcSource
from mirror.sources.idc.spec import AWS_ENDPOINT, UID, V1_SPEC

PAGE_SIZE = 1000
"""Manifest rows per v1 page (one row per instance; the service's own default)."""
FIELDS = ("SeriesInstanceUID",)


class IdcV1Source(IdcSource):
    """One sync run whose series are named by an IDC API v1 manifest at ``base_url``."""

    spec: ClassVar[SourceSpec] = V1_SPEC

    def __init__(self, base_url: str, http: HttpClient):
        super().__init__(base_url, http)
        self.endpoint = AWS_ENDPOINT  # the base URL is the v1 root, not the buckets'

    def sync_documents(self, run: DocumentRun, options: Any) -> set[str] | None:
        """Ask the manifest for the series, then sync them as ``idc`` does."""
        scope = dict(getattr(options, "scope", None) or {})
        if scope.get("series"):  # a snapshot rebuild names its series itself
            return super().sync_documents(run, options)
        named = self.manifest_series(scope)
        scope = {k: v for k, v in scope.items() if k not in ("where", "collection")}
        scope["series"] = sorted(named)
        found = super().sync_documents(run, dataclasses.replace(options, scope=scope))
        unlisted = sorted(named - (found or set()))
        for uid in unlisted:
            run.summary.fail("series", uid, "catalog", (
                f"the v1 manifest names series {uid}, which idc-index-data "
                f"{self.catalog.version.package} does not list; install the catalog of "
                "the v1 service's release or pass --catalog DIR"))
        return found

    def manifest_series(self, scope: dict) -> set[str]:
        """The SeriesInstanceUIDs of the manifest the scope's filters ask for."""
        if scope.get("sql"):
            raise ScopeError("--sql selects from the idc-index catalog; with --source "
                             "idc-api-v1 give v1 filters as --where 'FIELD == VALUE' or "
                             "--collection ID, or use --source idc")
        rows = v1.manifest(self.base_url, v1_filters(scope), FIELDS, page_size=PAGE_SIZE,
                           session=_Retrying(self.http))
        named: set[str] = set()
        for row in rows:
            uid = row.get("SeriesInstanceUID") if isinstance(row, dict) else None
            if not isinstance(uid, str) or not UID.fullmatch(uid):
                raise ScopeError(f"the v1 manifest holds a row without a valid "
                                 f"SeriesInstanceUID ({str(row)[:120]}); it is refused")
            named.add(uid)
        if not named:
            raise ScopeError("the v1 manifest of these filters names no series; check "
                             "--collection and --where (v1 matches values, % as a wildcard)")
        return named


def v1_filters(scope: dict) -> dict[str, list]:
    """The manifest ``filters`` of ``--collection`` and ``--where`` (== and in only)."""
    filters: dict[str, list] = {}
    collections = scope.get("collection")
    if collections:
        filters["collection_id"] = [c for c in str(collections).split(",") if c]
    where = scope.get("where")
    if isinstance(where, (list, tuple)):
        where = " AND ".join(where)
    parsed = as_scope(where or None)
    if parsed.sql is not None:
        raise ScopeError("--where takes FIELD == VALUE criteria joined by AND for v1; give a "
                         "SELECT with --source idc --sql")
    for crit in parsed.criteria:
        if crit.op == "==":
            values = [crit.value]
        elif crit.op == "in" and isinstance(crit.value, list):
            values = list(crit.value)
        else:
            raise ScopeError(f"IDC API v1 filters match values: {crit} cannot be asked; "
                             "use FIELD == VALUE or FIELD in [...], or --source idc")
        if crit.field in filters:  # v1 ORs the values of one attribute: AND is not askable
            raise ScopeError(f"{crit.field} is filtered twice; v1 takes one list of values "
                             f"per attribute: {crit.field} in [...]")
        filters[crit.field] = values
    return filters


class _Retrying:
    """The sync's counting, bounded HTTP client with its retries, as :func:`v1.manifest`
    expects a session (``get``/``post``)."""

    def __init__(self, http: HttpClient):
        self.http = http

    def get(self, url: str, **kwargs) -> Any:
        return self.http.retrying(lambda: self.http.get(url, **kwargs), f"GET {url}")

    def post(self, url: str, **kwargs) -> Any:
        return self.http.retrying(lambda: self.http.post(url, **kwargs), f"POST {url}")
