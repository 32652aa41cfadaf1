"""IDC REST API v1 manifests: paged, with the 202 "resubmit" rule, and its 410 today.

IDC switched v1 off: every route answers HTTP 410 (research note ``tcia_idc.md`` §2.1), so
the mirror reads IDC's catalog from idc-index-data. This client exists for old v1 manifests
and cohorts and for the sandbox; it turns 410 into a one-line error that says so.

Paging (seed ``idc-api-v1-access.md``): ``POST /cohorts/manifest/preview`` returns the first
page and a ``next_page`` token; ``GET /cohorts/manifest/nextPage?next_page=&page_size=`` the
rest; the end is ``""`` (the code) or ``null`` (the docs). A **202** means the query outlived
the request: resubmit through ``nextPage`` with the token it returned (top level for the
manifest endpoints, under ``query_info`` for the query ones).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import requests

from mirror.errors import ArchiveError, MirrorError

V1_TIMEOUT = 60.0
"""Seconds per v1 request."""
V1_RESUBMITS = 5
"""202 answers in a row accepted for one page before giving up."""
SWITCHED_OFF = ("IDC's REST API v1 is switched off ({what}); name the series from the "
                "idc-index-data catalog instead: mirror sync --source idc --where "
                "'collection_id == \"...\"'")


def _token(body: dict) -> str | None:
    token = body.get("next_page")
    if token is None and isinstance(body.get("query_info"), dict):
        token = body["query_info"].get("next_page")
    return token or None


def _switched_off(session: Any, base: str, timeout: float) -> bool:
    """Whether v1 is the switched-off service: its GET stubs answer 410."""
    try:
        return session.get(f"{base}/about", timeout=timeout).status_code == 410
    except (requests.RequestException, MirrorError):
        return False


def _json(answer: requests.Response, what: str) -> dict:
    if answer.status_code == 410:
        raise ArchiveError(SWITCHED_OFF.format(what=f"HTTP 410 on {what}"))
    try:
        body = answer.json()
    except ValueError:
        body = None
    if answer.status_code not in (200, 202) or not isinstance(body, dict):
        message = body.get("message") if isinstance(body, dict) else answer.text[:200]
        raise ArchiveError(f"IDC v1 {what} answered HTTP {answer.status_code}: {message}")
    return body


def manifest(base_url: str, filters: dict[str, list], fields: Sequence[str],
             page_size: int = 1000, session: Any = None,
             timeout: float = V1_TIMEOUT) -> Iterator[dict]:
    """Every manifest row of a cohort preview, page by page. ``session`` is anything with
    requests' ``get``/``post`` (a ``requests.Session``, the sync's counting ``HttpClient``)."""
    session = session or requests.Session()
    base = base_url.rstrip("/")
    params = {f: "True" for f in fields} | {"_page_size": page_size}
    answer = session.post(f"{base}/cohorts/manifest/preview", params=params,
                          json={"name": "mirror", "description": "", "filters": filters},
                          timeout=timeout)
    if answer.status_code == 405 and _switched_off(session, base, timeout):
        raise ArchiveError(SWITCHED_OFF.format(
            what="HTTP 405 on POST cohorts/manifest/preview, 410 on its GET routes"))
    body = _json(answer, "cohorts/manifest/preview")
    pages = resubmits = 0
    limit: int | None = None
    while True:
        if answer.status_code == 202:
            resubmits += 1
            if resubmits > V1_RESUBMITS:
                raise ArchiveError(f"IDC v1 answered 202 (timed out) {V1_RESUBMITS} times in a "
                                   "row for one page; retry later")
        else:
            resubmits = 0
            pages += 1
            found = body.get("manifest", {})
            if limit is None:
                limit = math.ceil(int(found.get("totalFound", 0)) / page_size) + 1
            yield from found.get("json_manifest", [])
        token = _token(body)
        if token is None:
            if answer.status_code == 202:
                raise ArchiveError("IDC v1 answered 202 without a next_page token; "
                                   "retry the query")
            return
        if limit is not None and pages >= limit:
            raise ArchiveError(f"IDC v1 kept paging past {limit} pages for "
                               f"{found.get('totalFound')} rows; the manifest is refused")
        answer = session.get(f"{base}/cohorts/manifest/nextPage",
                             params={"next_page": token, "page_size": page_size},
                             timeout=timeout)
        body = _json(answer, "cohorts/manifest/nextPage")
