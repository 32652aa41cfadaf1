"""Anonymous, bounded S3 access to IDC's public buckets.

IDC serves every DICOM instance at ``s3://<aws_bucket>/<crdc_series_uuid>/<crdc_instance_uuid>
.dcm`` to unsigned requests. Its catalog is series-level only, so a client learns a series'
instance keys by listing the ``<crdc_series_uuid>/`` prefix (changes note §2.5); this module
lists that prefix and streams objects, and refuses what a broken or hostile endpoint could send:
listings longer than the catalog's ``instanceCount`` allows or that never end, keys that climb
out of the prefix or are not ``.dcm`` files, objects larger than their listing or a size cap.

Two maintained clients, each for what it does best (no hand-written S3 protocol):

- **boto3/botocore** lists: it is the AWS SDK itself, gives unsigned requests
  (``signature_version=UNSIGNED``), ``ListObjectsV2`` with continuation tokens and standard
  retries, and a listing is one request per 1,000 keys, so its cost per request hardly matters.
- **obstore** (the Python face of Rust's ``object_store``, the crate behind Arrow, Polars and
  DataFusion) reads the objects. A sync makes one GET per instance, and botocore spends about
  2 ms of Python per request on its event chain, models and parsing, under the GIL the
  header reader and the store need too; obstore does the HTTP in Rust outside the GIL. A
  5,800-instance sync from a loopback SeaweedFS took 20.4 s with boto3's GETs and 17.9 s
  with obstore's, the rest of the code the same (docs/performance.md). ``idc-index`` drives
  s5cmd instead, a separate Go binary with no Python API.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import urlsplit

import boto3
import obstore
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from obstore.exceptions import BaseError as ObstoreError
from obstore.exceptions import NotFoundError, PermissionDeniedError, UnauthenticatedError
from obstore.store import S3Store

from mirror.errors import (
    ArchiveError,
    IntegrityError,
    ListingError,
    ObjectMissingError,
    UnsafeNameError,
)
from mirror.sources.idc.spec import AWS_ENDPOINT

S3_REGION = "us-east-1"
"""The region of IDC's buckets (unsigned requests still name one)."""
S3_ATTEMPTS = 5
"""Attempts per request, with botocore's standard retry backoff."""
S3_CONNECT_TIMEOUT = 10.0
"""Seconds to wait for a connection."""
S3_READ_TIMEOUT = 60.0
"""Seconds to wait for the next bytes of an answer."""
S3_POOL = 16
"""Connections kept per client (the most concurrent requests it serves at once)."""
LIST_PAGE_KEYS = 1000
"""Keys asked for per ListObjectsV2 page (S3's own maximum)."""
LISTING_MARGIN = 0.10
"""Extra keys a listing may hold beyond the catalog's instanceCount before it is refused..."""
LISTING_MARGIN_MIN = 16
"""...but at least this many."""
LISTING_MAX_KEYS = 200_000
"""The bound when the catalog gives no instanceCount (IDC's largest series has 91,980)."""
EMPTY_PAGES = 3
"""Empty listing pages in a row that still claim more, before the listing is refused."""
MAX_OBJECT_BYTES = 16 * 2**30
"""No single object may be larger than this (IDC's largest instances are a few GB)."""
CHUNK_BYTES = 1 << 20
"""Bytes per streamed read."""

_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_INSTANCE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,250}\.dcm$")


@dataclass(frozen=True)
class S3Object:
    """One listed object: where it is, how large, and its ETag (quotes removed)."""

    bucket: str
    key: str
    size: int
    etag: str

    @property
    def name(self) -> str:
        """The file name in the series prefix: ``<crdc_instance_uuid>.dcm``."""
        return self.key.rsplit("/", 1)[-1]

    @property
    def md5(self) -> str | None:
        """The ETag as an MD5 when it is one (single-part uploads), else None."""
        return self.etag if re.fullmatch(r"[0-9a-f]{32}", self.etag) else None

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


@dataclass(frozen=True)
class SeriesListing:
    """Every object under ``<crdc_series_uuid>/``, and how many the catalog promised."""

    bucket: str
    series_uuid: str
    objects: tuple[S3Object, ...]
    expected: int | None = None

    @property
    def total_bytes(self) -> int:
        return sum(o.size for o in self.objects)

    @property
    def complete(self) -> bool:
        """True when the listing holds exactly the catalog's ``instanceCount`` objects."""
        return self.expected is None or len(self.objects) == self.expected

    def check(self, expected_bytes: int | None = None) -> None:
        """Refuse a listing that disagrees with the catalog (count, and bytes when given)."""
        where = f"s3://{self.bucket}/{self.series_uuid}/"
        if not self.complete:
            raise ListingError(f"{where} lists {len(self.objects)} objects but the catalog "
                               f"says {self.expected}; the series is skipped until they agree")
        if expected_bytes is not None and self.total_bytes != expected_bytes:
            raise ListingError(f"{where} lists {self.total_bytes} bytes but the catalog says "
                               f"{expected_bytes}; the series is skipped until they agree")


def listing_bound(expected: int | None) -> int:
    """The most keys a listing may hold before it is refused as runaway."""
    if expected is None:
        return LISTING_MAX_KEYS
    return expected + max(LISTING_MARGIN_MIN, math.ceil(expected * LISTING_MARGIN))


def series_key_name(prefix: str, key: str) -> str:
    """The instance file name of ``key`` under ``prefix``, or an error naming the key.

    Keys must be ``<prefix><name>.dcm`` with ``name`` one plain path segment: no ``..``, no
    empty or absolute segment, no backslash, nothing nested.
    """
    if not isinstance(key, str) or "\x00" in key:
        raise UnsafeNameError(f"bucket key {key!r} is not text; the series is skipped")
    segments = key.replace("\\", "/").split("/")
    if key.startswith("/") or ".." in segments or "." in segments or "" in segments[:-1]:
        raise UnsafeNameError(f"bucket key {key!r} has a '..', '.' or absolute part; "
                              "the series is skipped")
    if not key.startswith(prefix):
        raise ListingError(f"bucket key {key!r} is outside the listed prefix {prefix!r}; "
                           "the series is skipped")
    name = key[len(prefix):]
    if "/" in name or "\\" in name:
        raise UnsafeNameError(f"bucket key {key!r} is nested below {prefix!r}; "
                              "the series is skipped")
    if not _INSTANCE_NAME.match(name):
        raise ListingError(f"bucket key {key!r} is not a .dcm instance name; "
                           "the series is skipped")
    return name


def check_series_uuid(value: str) -> str:
    if not isinstance(value, str) or not _UUID.match(value):
        raise UnsafeNameError(f"crdc_series_uuid {value!r} is not a lowercase UUID; "
                              "check the catalog row")
    return value


def check_bucket(value: str) -> str:
    if not isinstance(value, str) or not _BUCKET.match(value) or ".." in value:
        raise UnsafeNameError(f"bucket name {value!r} is not an S3 bucket name; "
                              "check the catalog's aws_bucket")
    return value


def check_endpoint(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
        raise ArchiveError(f"S3 endpoint {url!r} is not http(s)://host[:port]; "
                           f"give e.g. {AWS_ENDPOINT}")
    return url.rstrip("/")


class IdcS3:
    """Unsigned S3 requests to one endpoint (AWS by default, a sandbox in tests).

    ``on_request`` is called once per request sent (a listing page or a GET), so a caller
    can count what a sync asked of the buckets.
    """

    def __init__(self, endpoint_url: str = AWS_ENDPOINT, *, attempts: int = S3_ATTEMPTS,
                 connect_timeout: float = S3_CONNECT_TIMEOUT,
                 read_timeout: float = S3_READ_TIMEOUT, pool: int = S3_POOL,
                 on_request: Callable[[], None] | None = None):
        self.endpoint_url = check_endpoint(endpoint_url)
        host = urlsplit(self.endpoint_url).hostname or ""
        style = "virtual" if host.endswith("amazonaws.com") else "path"
        config = Config(signature_version=UNSIGNED, region_name=S3_REGION,
                        retries={"max_attempts": attempts, "mode": "standard"},
                        connect_timeout=connect_timeout, read_timeout=read_timeout,
                        max_pool_connections=pool, s3={"addressing_style": style})
        self.client = boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint_url, config=config)
        self._on_request = on_request or (lambda: None)
        self._read_options = {
            "client_options": {"allow_http": self.endpoint_url.startswith("http:"),
                               "connect_timeout": timedelta(seconds=connect_timeout),
                               "read_timeout": timedelta(seconds=read_timeout),
                               "pool_max_idle_per_host": str(pool)},
            "retry_config": {"max_retries": max(attempts - 1, 0),
                             "retry_timeout": timedelta(seconds=read_timeout * attempts)}}
        self._stores: dict[str, S3Store] = {}
        self._stores_lock = threading.Lock()

    def _store(self, bucket: str) -> S3Store:
        """The obstore reader of ``bucket`` (one per bucket: obstore binds a store to one)."""
        with self._stores_lock:
            store = self._stores.get(bucket)
            if store is None:
                # Path-style at the endpoint: IDC's buckets are all in us-east-1, which
                # https://s3.amazonaws.com/<bucket>/ serves, and a sandbox takes no other.
                store = S3Store(check_bucket(bucket), endpoint=self.endpoint_url,
                                region=S3_REGION, skip_signature=True,
                                virtual_hosted_style_request=False, **self._read_options)
                self._stores[bucket] = store
            return store

    def list_series(self, bucket: str, series_uuid: str,
                    expected: int | None = None) -> SeriesListing:
        """All objects under ``<series_uuid>/``, bounded by the catalog's ``instanceCount``.

        Refuses (:class:`ListingError`) a listing that passes :func:`listing_bound`, repeats
        a continuation token or a key (it would never end), or claims more pages without a
        token; refuses (:class:`UnsafeNameError`) a key outside the prefix's plain names.
        """
        check_bucket(bucket)
        prefix = check_series_uuid(series_uuid) + "/"
        bound = listing_bound(expected)
        max_pages = bound + 2  # every page but the last must bring a new key...
        empty_run = 0  # ...or at most EMPTY_PAGES in a row may bring none
        objects: list[S3Object] = []
        seen_keys: set[str] = set()
        seen_tokens: set[str] = set()
        token = None
        for _page in range(max_pages):
            page = self._list_page(bucket, prefix, token)
            empty_run = 0 if page.get("Contents") else empty_run + 1
            if empty_run > EMPTY_PAGES:
                raise ListingError(f"s3://{bucket}/{prefix} sent {empty_run} empty pages in a "
                                   "row that claim more; the series is skipped")
            for item in page.get("Contents", []):
                key = item.get("Key")
                series_key_name(prefix, key)
                if key in seen_keys:
                    raise ListingError(f"s3://{bucket}/{prefix} lists {key} twice: the listing "
                                       "loops; the series is skipped")
                seen_keys.add(key)
                objects.append(S3Object(bucket, key, int(item.get("Size", -1)),
                                        str(item.get("ETag", "")).strip('"')))
                if len(objects) > bound:
                    raise ListingError(f"s3://{bucket}/{prefix} lists more than {bound} objects "
                                       f"(catalog: {expected}); the series is skipped")
            if not page.get("IsTruncated"):
                return SeriesListing(bucket, series_uuid, tuple(objects), expected)
            token = page.get("NextContinuationToken")
            if not token or token in seen_tokens:
                raise ListingError(f"s3://{bucket}/{prefix} never ends (continuation token "
                                   f"{'missing' if not token else 'repeated'}); the series "
                                   "is skipped")
            seen_tokens.add(token)
        raise ListingError(f"s3://{bucket}/{prefix} still had more after {max_pages} pages "
                           f"(catalog: {expected} objects); the series is skipped")

    def _list_page(self, bucket: str, prefix: str, token: str | None) -> dict:
        args = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": LIST_PAGE_KEYS}
        if token:
            args["ContinuationToken"] = token
        self._on_request()
        try:
            return self.client.list_objects_v2(**args)
        except ClientError as exc:
            raise _archive_error(exc, f"s3://{bucket}/{prefix}") from None
        except BotoCoreError as exc:
            raise ArchiveError(f"listing s3://{bucket}/{prefix} failed: {exc}; "
                               "check the endpoint and retry") from None

    def stream(self, obj: S3Object, max_bytes: int = MAX_OBJECT_BYTES,
               chunk: int = CHUNK_BYTES) -> Iterator[memoryview]:
        """Yield the object's bytes; refuse more than its listed size or ``max_bytes``.

        The listed size is what the bytes must be: an answer that announces or delivers more
        (or fewer) raises :class:`IntegrityError` before the extra reaches the caller.
        """
        limit = min(obj.size, max_bytes)
        if obj.size > max_bytes:
            raise IntegrityError(f"{obj.url} is {obj.size} bytes, over the {max_bytes}-byte "
                                 "cap; raise the cap to fetch it")
        store = self._store(obj.bucket)
        self._on_request()
        try:
            answer = obstore.get(store, obj.key)
            announced = int(answer.meta["size"])
            if announced != obj.size:
                raise IntegrityError(f"{obj.url} is announced as {announced} bytes but was "
                                     f"listed as {obj.size}; the instance is skipped")
            got = 0
            for part in answer.stream(min_chunk_size=chunk):
                got += len(part)
                if got > limit:
                    raise IntegrityError(f"{obj.url} sent more than its {limit} bytes; "
                                         "the instance is skipped")
                yield memoryview(part)  # obstore's Bytes, shared with Rust: no copy
            if got != obj.size:
                raise IntegrityError(f"{obj.url} ended after {got} of {obj.size} bytes; "
                                     "retry the series")
        except (ObstoreError, OSError) as exc:  # obstore raises builtins for 404 and 403
            raise _read_error(exc, obj.url) from None

    def get(self, obj: S3Object, max_bytes: int = MAX_OBJECT_BYTES) -> bytes:
        """The whole object in memory (small objects; use :meth:`stream` for files)."""
        return b"".join(self.stream(obj, max_bytes))

    def close(self) -> None:
        self.client.close()
        with self._stores_lock:
            self._stores.clear()  # obstore closes a store's connections when it is dropped


def _missing(where: str, detail: str = "") -> ObjectMissingError:
    return ObjectMissingError(f"{where} is missing{detail}; the catalog is newer or older "
                              "than the bucket: update idc-index-data and retry")


def _denied(where: str, detail: str = "") -> ArchiveError:
    return ArchiveError(f"{where}: access denied{detail}; IDC's buckets are public, so check "
                        "the endpoint URL")


def _read_error(exc: Exception, where: str) -> ArchiveError:
    """obstore's error of a GET as the mirror's: missing, refused, or worth a retry."""
    if isinstance(exc, (NotFoundError, FileNotFoundError)):
        return _missing(where)
    if isinstance(exc, (PermissionDeniedError, UnauthenticatedError, PermissionError)):
        return _denied(where)
    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    return ArchiveError(f"GET {where} failed: {first[:200]}; retry later")


def _archive_error(exc: ClientError, where: str) -> ArchiveError:
    """botocore's error of a listing as the mirror's, by the same rules."""
    code = str(exc.response.get("Error", {}).get("Code", ""))
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if code in ("NoSuchKey", "NoSuchBucket", "404", "NotFound"):
        return _missing(where, f" ({code})")
    if code in ("AccessDenied", "403"):
        return _denied(where, f" (HTTP {status})")
    return ArchiveError(f"{where}: {code or 'error'} (HTTP {status}); retry later")
