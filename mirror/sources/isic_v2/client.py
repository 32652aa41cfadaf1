"""Typed access to the ISIC Archive API v2, as a mirror needs it.

What the archive does and what this client therefore does (research note
``isic_v2_api.md``):

- Listings are keyset-paginated (``{"count", "next", "previous", "results"}``). ``count`` is
  advisory (it has come from a nightly index and lagged); a listing ends at ``next: null``
  and only there. The client re-issues its own request with the ``cursor`` taken from
  ``next`` rather than following the URL verbatim, so a ``next`` naming another host cannot
  redirect it and a query's ``+`` is always encoded (isic-cli's f-string bug). A listing
  that stops making progress (a cursor seen before, pages of nothing new) is an error, not
  an endless loop.
- Pages are bounded: at most 100 records are asked for and a body larger than
  :data:`MAX_BODY_BYTES` (after gzip) is refused.
- Error bodies (422 ``{"detail": [...]}``, 400 ``{"message": ...}``, 401, 404) become one-line
  :class:`~mirror.errors.ArchiveError` messages naming the problem and the fix.
- A bearer token, from :data:`TOKEN_ENV` or the constructor, is kept in memory and sent only
  to the API, never to file URLs. An invalid or expired token is *not* rejected by the
  archive on public routes (it answers as for anonymous callers), so :meth:`whoami` checks it.
- Private images carry CloudFront-signed URLs whose query changes every UTC day;
  :func:`stable_document` strips it, so a document hash changes only when the record does.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import os
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from urllib.parse import parse_qs, urlsplit, urlunsplit

from mirror.errors import ArchiveError, InvalidRecordError
from mirror.sources.http import HttpClient, parse_json

log = logging.getLogger("mirror.isic_v2")

DEFAULT_BASE_URL = "https://api.isic-archive.com/api/v2"
# Environment variable holding an ISIC access token (``isic user print-token``'s
# ``access_token``); read once, kept in memory, never logged or written.
TOKEN_ENV = "ISIC_TOKEN"
# Largest page body accepted, decoded: 100 records are ~100 kB; a page of this size is an
# archive (or proxy) gone wrong, not data.
MAX_BODY_BYTES = 16 << 20
PAGE_SIZE = 100  # the archive's maximum
STALL_PAGES = 3  # consecutive pages with nothing new before a listing is declared stuck
LICENSES = ("CC-0", "CC-BY", "CC-BY-NC")
# Where the archive serves files: the public bucket (unsigned) and the private CDN (signed).
FILE_HOSTS = frozenset({"isic-archive.s3.amazonaws.com", "isic-archive.s3.us-east-1.amazonaws.com",
                        "content.isic-archive.com"})
ISIC_ID = re.compile(r"^ISIC_\d{7}$")
LESION_ID = re.compile(r"^IL_\d{7}$")
SIGNED_QUERY_KEYS = frozenset({"Expires", "Signature", "Key-Pair-Id", "Policy"})


@dataclass(frozen=True)
class FileRef:
    url: str  # as served now (a private URL is signed and expires)
    size: int  # bytes *before* the archive embedded its credit block: not the served size

    @property
    def stable_url(self) -> str:
        return strip_signed_query(self.url)

    @property
    def signed(self) -> bool:
        return self.url != self.stable_url


@dataclass(frozen=True)
class ImageRecord:
    """One validated ``ImageOut``; ``raw`` is the JSON as the archive sent it."""

    isic_id: str
    public: bool
    copyright_license: str
    attribution: str
    full: FileRef
    thumbnail: FileRef
    metadata: dict
    raw: dict = field(repr=False, compare=False)

    @cached_property
    def document(self) -> dict:
        """The record as stored: signed queries stripped (see :func:`stable_document`);
        made once (the sync reads it to store, hash and compare file identities)."""
        return stable_document(self.raw)

    @property
    def document_hash(self) -> str:
        return document_hash(self.raw)


@dataclass
class Listing:
    """What one walk of a listing saw, besides its records."""

    pages: int = 0
    first_count: int | None = None  # the advisory count of page 1
    seen: int = 0
    duplicates: int = 0
    rejected: list[str] = field(default_factory=list)  # one line per skipped record


def strip_signed_query(url: str) -> str:
    """``url`` without a CloudFront/S3 signature query (``Expires``, ``Signature``, ...)."""
    parts = urlsplit(url)
    keys = set(parse_qs(parts.query, keep_blank_values=True))
    if keys & SIGNED_QUERY_KEYS or any(k.lower().startswith("x-amz-") for k in keys):
        return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
    return url


def stable_document(record: dict) -> dict:
    """``record`` with every ``files.*.url`` stripped of its volatile signed query."""
    files = record.get("files")
    if not isinstance(files, dict):
        return record
    stable = {name: {**ref, "url": strip_signed_query(ref["url"])}
              if isinstance(ref, dict) and isinstance(ref.get("url"), str) else ref
              for name, ref in files.items()}
    return {**record, "files": stable}


def canonical_json(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def document_hash(record: dict) -> str:
    """SHA-256 of the stable document: moves when the record changes, not when a signature
    is renewed."""
    return hashlib.sha256(canonical_json(stable_document(record))).hexdigest()


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class IsicV2Client:
    """The ISIC API v2 endpoints a mirror uses, over one :class:`HttpClient`."""

    def __init__(self, base_url: str = DEFAULT_BASE_URL, http: HttpClient | None = None,
                 token: str | None = None, use_env_token: bool = True,
                 file_hosts: frozenset[str] = FILE_HOSTS):
        self.base_url = base_url.rstrip("/")
        self.http = http or HttpClient()
        self._token = token or (os.environ.get(TOKEN_ENV) or None if use_env_token else None)
        api = urlsplit(self.base_url)
        self._origin = (api.scheme, api.netloc)
        self._loopback = _is_loopback(api.hostname)
        self.file_hosts = file_hosts

    @property
    def authenticated(self) -> bool:
        return self._token is not None

    def use_token(self, token: str) -> None:
        """Send ``token`` from now on (memory only)."""
        self._token = token or None

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        return headers

    # -- transport -------------------------------------------------------------------------

    def get_json(self, path: str, params: dict | None = None, missing_ok: bool = False) -> object:
        """GET ``path`` (relative to the API root, trailing slash included) and parse JSON,
        with retries; ``missing_ok``: a 404 returns None."""
        url = f"{self.base_url}/{path.lstrip('/')}"

        def fetch() -> object:
            with self.http.fetching(url, params=params, headers=self._headers(),
                                    stream=True) as response:
                if response.status_code == 404 and missing_ok:
                    return None
                body = _read_bounded(response, url)
                if response.status_code != 200:
                    raise ArchiveError(_error_line(path, params, response.status_code, body,
                                                   self.authenticated))
            try:
                return parse_json(body)  # strict: UTF-8, no NaN, bounded depth
            except ValueError:
                raise ArchiveError(f"{path}: the archive answered 200 with a body that is not "
                                   "JSON; retry later, or check base_url points at the API "
                                   f"(now {self.base_url})") from None

        return self.http.retrying(fetch, f"GET {path}")

    def get_text(self, path: str) -> bytes:
        url = f"{self.base_url}/{path.lstrip('/')}"

        def fetch() -> bytes:
            with self.http.fetching(url, headers=self._headers(), stream=True) as response:
                body = _read_bounded(response, url)
                if response.status_code != 200:
                    raise ArchiveError(_error_line(path, None, response.status_code, body,
                                                   self.authenticated))
                return body

        return self.http.retrying(fetch, f"GET {path}")

    # -- listings ----------------------------------------------------------------------------

    def pages(self, path: str, params: dict | None = None,
              listing: Listing | None = None) -> Iterator[list]:
        """The ``results`` of each page of a listing until ``next`` is null.

        The next page is requested before this one is handed over: a cursor listing is a
        chain of round trips, and while the caller stores one page the next is on its way
        (at 100 ms a round trip that hides a second of every 1,000 images)."""
        listing = listing if listing is not None else Listing()
        params = {k: v for k, v in (params or {}).items() if v is not None}
        params["limit"] = PAGE_SIZE
        seen_cursors: set[str] = set()
        with ThreadPoolExecutor(1, thread_name_prefix="next-page") as ahead:
            upcoming = ahead.submit(self.get_json, path, params)
            try:
                while True:
                    page = upcoming.result()
                    if not isinstance(page, dict) or not isinstance(page.get("results"), list):
                        raise ArchiveError(f"{path}: a listing page is not {{'results': [...]}}"
                                           "; the archive's API may have changed: update mirror")
                    listing.pages += 1
                    if listing.pages == 1:
                        count = page.get("count")
                        listing.first_count = count if isinstance(count, int) and not \
                            isinstance(count, bool) else None
                    cursor, refused = self._advance(path, page, seen_cursors)
                    if cursor is not None:
                        params = {**params, "cursor": cursor}
                        upcoming = ahead.submit(self.get_json, path, params)
                    yield page["results"]
                    if refused is not None:
                        raise refused  # after the page: what it brought is kept
                    if cursor is None:
                        return
            finally:
                upcoming.cancel()  # a caller that stops early (--limit) waits for no page

    def _advance(self, path: str, page: dict, seen: set[str]
                 ) -> tuple[str | None, ArchiveError | None]:
        """The next page's cursor (None at the end), or the error that refuses to follow."""
        try:
            cursor = self._next_cursor(path, page.get("next"))
        except ArchiveError as exc:
            return None, exc
        if cursor is not None and cursor in seen:
            return None, ArchiveError(f"{path}: the listing does not advance (a next cursor "
                                      "came back twice); the archive is misbehaving: retry "
                                      "later")
        if cursor is not None:
            seen.add(cursor)
        return cursor, None

    def _next_cursor(self, path: str, next_url: object) -> str | None:
        if next_url is None:
            return None
        if not isinstance(next_url, str):
            raise ArchiveError(f"{path}: 'next' is not a URL ({type(next_url).__name__})")
        parts = urlsplit(next_url)
        if not parts.path.endswith("/" + path.strip("/") + "/"):
            raise ArchiveError(f"{path}: 'next' points elsewhere ({next_url[:120]!r}); refusing "
                               "to follow it")
        cursors = parse_qs(parts.query, keep_blank_values=True).get("cursor")
        if not cursors or not cursors[-1]:
            raise ArchiveError(f"{path}: 'next' carries no cursor ({next_url[:120]!r})")
        return cursors[-1]

    def records(self, path: str, params: dict | None = None,
                listing: Listing | None = None) -> Iterator[dict]:
        """Raw records of a listing, each once (duplicates counted in ``listing``); stops
        with an error after :data:`STALL_PAGES` pages in a row bring nothing new."""
        listing = listing if listing is not None else Listing()
        seen: set[str] = set()
        stalled = 0
        for results in self.pages(path, params, listing):
            fresh = 0
            for raw in results:
                key = _identity(raw)
                if key is not None and key in seen:
                    listing.duplicates += 1
                    continue
                if key is not None:
                    seen.add(key)
                fresh += 1
                listing.seen += 1
                yield raw
            stalled = 0 if fresh else stalled + 1
            if stalled >= STALL_PAGES:
                raise ArchiveError(f"{path}: {STALL_PAGES} pages in a row brought nothing "
                                   "new; the listing does not end: retry later")

    def images(self, query: str | None = None, collections: list[int] | None = None,
               listing: Listing | None = None) -> Iterator[ImageRecord]:
        """Every visible image (matching ``query`` and in any of ``collections``), in
        ``created`` order; malformed records are skipped and noted in ``listing.rejected``."""
        listing = listing if listing is not None else Listing()
        if query is None and collections is None:
            path, params = "images/", {}
        else:
            path = "images/search/"
            params = {"query": query or "",
                      "collections": ",".join(str(int(c)) for c in collections or [])}
        for raw in self.records(path, params, listing):
            try:
                yield self.parse_image(raw)
            except InvalidRecordError as exc:
                log.warning("%s", exc)
                listing.rejected.append(str(exc))

    def collections(self, listing: Listing | None = None) -> Iterator[dict]:
        """Every collection record; malformed ones are skipped and noted in
        ``listing.rejected`` (the caller fails them and marks nothing removed)."""
        listing = listing if listing is not None else Listing()
        for raw in self.records("collections/", {}, listing):
            try:
                yield _check_collection(raw)
            except InvalidRecordError as exc:
                listing.rejected.append(str(exc))

    def collection_image_ids(self, collection_id: int,
                             listing: Listing | None = None) -> list[str]:
        """The isic_ids in one collection (one search listing), in ``created`` order; the
        archive has no ``collections/{id}/images/`` route."""
        return [r.isic_id for r in self.images(collections=[collection_id], listing=listing)]

    def lesions(self, listing: Listing | None = None) -> Iterator[dict]:
        """Every lesion record; malformed ones go to ``listing.rejected`` (as above)."""
        listing = listing if listing is not None else Listing()
        for raw in self.records("lesions/", {}, listing):
            if not isinstance(raw, dict) or not isinstance(raw.get("id"), str) or \
                    not LESION_ID.fullmatch(raw["id"]):
                listing.rejected.append(f"lesions/: a lesion with id {_short(raw)} is not "
                                        "IL_nnnnnnn")
                continue
            yield raw

    # -- single objects ----------------------------------------------------------------------

    def image(self, isic_id: str) -> ImageRecord | None:
        """One image, or None when it is unknown, private to others, or deleted."""
        if not ISIC_ID.match(isic_id):
            raise ArchiveError(f"{isic_id!r} is not an ISIC id (ISIC_ and 7 digits)")
        raw = self.get_json(f"images/{isic_id}/", missing_ok=True)
        return None if raw is None else self.parse_image(raw)

    def collection(self, collection_id: int) -> dict | None:
        raw = self.get_json(f"collections/{int(collection_id)}/", missing_ok=True)
        return None if raw is None else _check_collection(raw)

    def search_count(self, query: str = "", collections: list[int] | None = None) -> int | None:
        """The advisory ``count`` of a search (one request for one record)."""
        page = self.get_json("images/search/", {
            "query": query, "collections": ",".join(map(str, collections or [])), "limit": 1})
        count = page.get("count") if isinstance(page, dict) else None
        return count if isinstance(count, int) and not isinstance(count, bool) else None

    def search_size(self, query: str = "", collections: list[int] | None = None) -> int:
        """Bytes of the matching images as of the archive's last nightly index."""
        body = self.get_json("images/search/size/", {
            "query": query, "collections": ",".join(map(str, collections or []))})
        size = body.get("size") if isinstance(body, dict) else None
        if not isinstance(size, int) or isinstance(size, bool):
            raise ArchiveError("images/search/size/: no integer 'size' in the answer")
        return size

    def stats(self) -> dict:
        """``stats/``: archive-wide counts; ``image.public_images_count`` is a cheap change
        signal (publishes, unembargoes, deletions; not edits)."""
        body = self.get_json("stats/")
        if not isinstance(body, dict):
            raise ArchiveError("stats/: the answer is not a JSON object")
        return body

    def whoami(self) -> dict | None:
        """The logged-in user, None when anonymous; an error when the token is refused."""
        if not self.authenticated:
            return None
        return self.get_json("users/me/")

    def license_text(self, name: str) -> bytes:
        if name not in LICENSES:
            raise ArchiveError(f"unknown licence {name!r}; the archive has {', '.join(LICENSES)}")
        return self.get_text(f"zip-download/license-file/{name}/")

    # -- validation --------------------------------------------------------------------------

    def parse_image(self, raw: object) -> ImageRecord:
        """A validated :class:`ImageRecord`, or :class:`InvalidRecordError` naming the flaw."""
        if not isinstance(raw, dict):
            raise InvalidRecordError(f"an image record is a {type(raw).__name__}, not an object")
        isic_id = raw.get("isic_id")
        if not isinstance(isic_id, str) or not ISIC_ID.match(isic_id):
            raise InvalidRecordError(f"skipped an image record with unsafe id {_short(isic_id)}")

        def bad(what: str) -> InvalidRecordError:
            return InvalidRecordError(f"skipped {isic_id}: {what}")

        public = raw.get("public")
        if not isinstance(public, bool):
            raise bad(f"'public' is {_short(public)}, not a boolean")
        license_ = raw.get("copyright_license")
        if not isinstance(license_, str) or not re.fullmatch(r"[A-Za-z0-9.-]{1,32}", license_):
            raise bad(f"'copyright_license' is {_short(license_)}")
        attribution = raw.get("attribution")
        if not isinstance(attribution, str) or len(attribution) > 10_000:
            raise bad("'attribution' is not a string of at most 10,000 characters")
        metadata = raw.get("metadata")
        if not isinstance(metadata, dict) or not all(
                isinstance(metadata.get(k), dict) for k in ("acquisition", "clinical")):
            raise bad("'metadata' is not {'acquisition': {...}, 'clinical': {...}}")
        files = raw.get("files")
        if not isinstance(files, dict):
            raise bad("'files' is not an object")
        full = self._file(files.get("full"), bad, "full")
        thumbnail = self._file(files.get("thumbnail_256"), bad, "thumbnail_256")
        return ImageRecord(isic_id, public, license_, attribution, full, thumbnail, metadata, raw)

    def _file(self, ref: object, bad, name: str) -> FileRef:
        if not isinstance(ref, dict):
            raise bad(f"files.{name} is not an object")
        url, size = ref.get("url"), ref.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise bad(f"files.{name}.size is {_short(size)}, not a byte count")
        if not isinstance(url, str):
            raise bad(f"files.{name}.url is not a string")
        parts = urlsplit(url)
        host = parts.hostname
        allowed = host in self.file_hosts or (self._loopback and _is_loopback(host)) or (
            (parts.scheme, parts.netloc) == self._origin)
        if parts.scheme not in ("http", "https") or not allowed:
            raise bad(f"files.{name}.url points off the archive's file hosts ({url[:80]!r})")
        return FileRef(url, size)


def _identity(raw: object) -> str | None:
    if isinstance(raw, dict):
        for key in ("isic_id", "id"):
            value = raw.get(key)
            if isinstance(value, (str, int)) and not isinstance(value, bool):
                return f"{key}:{value}"
    return None


def _check_collection(raw: object) -> dict:
    if not isinstance(raw, dict) or not isinstance(raw.get("id"), int) or isinstance(
            raw.get("id"), bool) or not isinstance(raw.get("name"), str):
        raise InvalidRecordError(f"collections/: a collection record is malformed "
                                 f"({_short(raw)})")
    return raw


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _read_bounded(response, url: str) -> bytes:
    declared = response.headers.get("Content-Length")
    if declared and declared.isdigit() and "Content-Encoding" not in response.headers and \
            int(declared) > MAX_BODY_BYTES:
        raise ArchiveError(f"{url}: the answer is {int(declared):,} bytes, more than the "
                           f"{MAX_BODY_BYTES >> 20} MiB a page may be; refusing it")
    chunks, total = [], 0
    for chunk in response.iter_content(64 << 10):
        total += len(chunk)
        if total > MAX_BODY_BYTES:
            raise ArchiveError(f"{url}: the answer is more than the {MAX_BODY_BYTES >> 20} MiB "
                               "a page may be; refusing it")
        chunks.append(chunk)
    return b"".join(chunks)


def _error_line(path: str, params: dict | None, status: int, body: bytes,
                authenticated: bool) -> str:
    """One line for an error answer: what the archive said, and what to do."""
    try:
        payload = json.loads(body)
    except ValueError:
        payload = None
    said = ""
    if isinstance(payload, dict):
        detail = payload.get("detail")
        if isinstance(detail, list):
            said = "; ".join(
                f"{'.'.join(str(p) for p in item.get('loc', []))}: {item.get('msg', '?')}"
                if isinstance(item, dict) else str(item) for item in detail[:5])
        elif isinstance(detail, str):
            said = detail
        elif isinstance(payload.get("message"), str):
            said = payload["message"]
        elif isinstance(payload.get("error"), str):
            said = payload["error"]
    said = (said or body[:120].decode("utf-8", "replace")).replace("\n", " ").strip()
    if status == 400 and params and params.get("query"):
        fix = (f"fix the search query {params['query']!r} (field:value terms, AND/OR in "
               "capitals, quote values with spaces)")
    elif status == 401:
        fix = (f"the token was refused: set {TOKEN_ENV} to a valid access token, or unset it "
               "to mirror anonymously" if authenticated else "this needs a login: set "
               f"{TOKEN_ENV}")
    elif status == 404:
        fix = "it does not exist or is not visible to this caller"
    elif status == 422:
        fix = "the request was malformed; this is a bug in mirror or an API change: report it"
    else:
        fix = "retry later"
    return f"{path}: the archive answered {status} ({said}); {fix}"
