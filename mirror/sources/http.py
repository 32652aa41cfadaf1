"""A polite, retrying, bounded HTTP client shared by every source.

Transient failures (5xx, 429, connection resets, timeouts, bodies cut short)
are retried with exponential backoff and full jitter, honouring ``Retry-After``.
Retries wrap the *whole* operation, body verification included, which is why
this is a small loop here rather than a transport-level retry adapter: a body
that is cut short is only discovered while it is being stored.

Every response is bounded, whatever the server does:

- a body read into memory (JSON, error pages) stops at ``MAX_JSON_BYTES`` of *decoded*
  bytes, counted while it streams, so a small gzip reply that inflates to gigabytes, or a
  chunked body that never ends, fails at the cap with bounded memory;
- parsed JSON may nest at most ``MAX_JSON_DEPTH`` levels (Python's parser would raise
  ``RecursionError`` on deeply nested input);
- each request has an overall deadline (connect, headers and body together) on top of the
  idle ``timeout``, so a server trickling one byte a second fails in bounded time: a
  watchdog shuts the request's socket down when its time is up.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.poolmanager import ProxyManager

from mirror.errors import (
    ArchiveError,
    DeadlineExceededError,
    IntegrityError,
    JsonTooDeepError,
    OfflineError,
    ResponseTooLargeError,
    SettingError,
    TransferError,
    TransientHTTPError,
)

log = logging.getLogger("mirror.http")
T = TypeVar("T")

# -- bounds (defaults; each is overridden by its environment variable) ------------------------

MAX_JSON_BYTES = 256 * 1024 * 1024
"""Cap on the decoded size of a body read into memory (``MIRROR_MAX_JSON_BYTES``). The
largest ISIC answers (10,000 image summaries, 300 image details) are a few MB."""

MAX_JSON_DEPTH = 512
"""Deepest nesting of arrays and objects accepted in JSON (ISIC documents nest < 10)."""

REQUEST_DEADLINE = 300.0
"""Seconds a request may take from connect to the last byte of its body
(``MIRROR_REQUEST_DEADLINE``); a streamed download gets more time as bytes arrive (below)."""

MIN_BYTES_PER_SECOND = 16 * 1024
"""Slowest average throughput a streamed download (a file) may have
(``MIRROR_MIN_BYTES_PER_SECOND``): its deadline is ``REQUEST_DEADLINE`` plus one second per
this many bytes received, so any download averaging at least this rate completes."""

READ_CHUNK = 64 * 1024  # decoded bytes per read of a body kept in memory

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
TRANSIENT_ERRORS = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ContentDecodingError,
    IntegrityError,  # short body, HTML instead of an image: fetch again
    TransferError,  # the same below HTTP, from a direct download (mirror.sources.direct)
)


class HttpClient:
    """A pooled ``requests`` session with request counting, retries and bounds.

    At most ``pool_size`` requests are in flight at once (:meth:`fetching` holds a slot
    until the body is read), however many threads share the client: a sync runs a few
    more threads than that, so that one decoding a file it has downloaded never holds a
    connection the archive could be serving.

    ``max_json_bytes``, ``deadline`` and ``min_bytes_per_second`` default to their
    environment variables, else to the module constants (see the top of this module).
    """

    def __init__(self, pool_size: int = 8, attempts: int = 6, backoff: float = 0.5,
                 max_backoff: float = 30.0, timeout: float = 60.0, offline: bool = False,
                 max_json_bytes: int | None = None, deadline: float | None = None,
                 min_bytes_per_second: float | None = None):
        self.session = requests.Session()
        # requests reads proxies and CA bundle from the environment again for every request,
        # a scan of os.environ that cost more CPU than anything else in a sync; they are
        # read once per host instead (see _environment).
        self.session.trust_env = False
        self._environments: dict[str, dict] = {}
        adapter = _WatchedAdapter(pool_connections=4, pool_maxsize=max(pool_size, 4),
                                  max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.attempts = attempts
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.timeout = timeout
        self.offline = offline
        self.max_json_bytes = max_json_bytes or int(
            _setting("MIRROR_MAX_JSON_BYTES", MAX_JSON_BYTES, integer=True))
        self.deadline = deadline or _setting("MIRROR_REQUEST_DEADLINE", REQUEST_DEADLINE)
        self.min_bytes_per_second = min_bytes_per_second or _setting(
            "MIRROR_MIN_BYTES_PER_SECOND", MIN_BYTES_PER_SECOND)
        self.requests_made = 0
        self.retries = 0
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(pool_size)
        self._pool_size = pool_size
        self._direct = None  # DirectFiles, made at the first direct download

    def direct_files(self, url: str, declared_size: int | None):
        """The :class:`~mirror.sources.direct.DirectFiles` that may GET ``url`` (a public
        file URL of ``declared_size`` bytes), or None: requests fetches it. Use it inside
        :meth:`slot`."""
        from mirror import settings
        from mirror.sources import direct

        if not settings.DIRECT_DOWNLOADS.get() or not direct.available():
            return None
        environment = self._environment(url)
        if not direct.DirectFiles.accepts(url, declared_size, environment["proxies"],
                                          environment["verify"]):
            return None
        with self._lock:
            if self._direct is None:
                biggest = direct.DIRECT_MAX_BYTES / self.min_bytes_per_second
                self._direct = direct.DirectFiles(
                    connect_timeout=min(self.timeout, 30.0), idle_timeout=self.timeout,
                    total_timeout=self.deadline + biggest, pool=self._pool_size)
            return self._direct

    @contextmanager
    def slot(self, url: str) -> Iterator[None]:
        """One request sent by another client (a direct download): counted, refused when
        offline, and holding a connection slot like :meth:`fetching` until the block ends."""
        if self.offline:
            raise OfflineError(f"offline mode is on; refusing to fetch {url}")
        with self._lock:
            self.requests_made += 1
        log.info("GET %s (direct)", url)
        with self._slots:
            yield

    def count_request(self) -> None:
        """Count a request another client sent for this run (a source's S3 calls), so the
        sync summary's request count is every request the run made."""
        with self._lock:
            self.requests_made += 1

    @contextmanager
    def fetching(self, url: str, **kwargs) -> Iterator[requests.Response]:
        """A GET (see :meth:`get`) that holds one connection slot until the block ends;
        read the body inside the block, do slow work with it after.

        The request's deadline runs until the block ends; with ``stream=True`` it grows by
        a second per ``min_bytes_per_second`` bytes received. A deadline missed while the
        body is read raises :class:`DeadlineExceededError` from the read."""
        with self._slots, self._deadline(url, streamed=bool(kwargs.get("stream"))) as guard:
            response = self.get(url, **kwargs)
            try:
                yield response
            finally:
                guard.cancel()  # before the connection goes back to the pool
                response.close()

    def get(self, url: str, **kwargs) -> requests.Response:
        """One GET (no retry): counts it, raises :class:`TransientHTTPError` on 5xx/429.

        Unless ``stream=True`` the body is read here, at most ``max_json_bytes`` of it
        decoded (else :class:`ResponseTooLargeError`), all within the request's deadline
        (else :class:`DeadlineExceededError`). A streamed body outside :meth:`fetching` is
        bounded by the idle ``timeout`` only: the deadline ends with the headers."""
        return self._request("GET", url, **kwargs)

    def post(self, url: str, **kwargs) -> requests.Response:
        """One POST (no retry; e.g. a form, ``data={...}``) with :meth:`get`'s counting,
        bounds, deadline and errors: some archives answer queries only to POSTs (TCIA's
        ``getMD5Hierarchy``)."""
        return self._request("POST", url, **kwargs)

    def _request(self, method: str, url: str, **kwargs) -> requests.Response:
        if self.offline:
            raise OfflineError(f"offline mode is on; refusing to fetch {url}")
        with self._lock:
            self.requests_made += 1
        kwargs.setdefault("timeout", self.timeout)
        # The archive streams its files itself and never redirects; following a redirect
        # would send the Girder-Token to whatever host the Location names.
        kwargs.setdefault("allow_redirects", False)
        stream = bool(kwargs.pop("stream", False))
        log.info("%s %s %s", method, url, kwargs.get("params") or "")
        for key, value in self._environment(url).items():
            kwargs.setdefault(key, value)
        with self._deadline(url, streamed=stream) as guard:
            response = self.session.request(method, url, stream=True, **kwargs)
            guard.watch(response)
            _bound_body(response, guard, None if stream else self.max_json_bytes, url)
            if response.is_redirect:
                location = response.headers.get("Location", "")
                response.close()
                raise ArchiveError(
                    f"refusing to follow a redirect from {url} to {location[:200]!r}")
            if response.status_code in RETRY_STATUSES:
                retry_after = _parse_retry_after(response.headers.get("Retry-After"))
                response.close()
                raise TransientHTTPError(response.status_code, url, retry_after)
            if not stream:
                try:
                    response.content  # noqa: B018 - read (bounded) while the deadline runs
                except BaseException:
                    response.close()
                    raise
        return response

    def get_json(self, url: str, params: dict | None = None, *,
                 what: str | None = None) -> object:
        """GET ``url`` and parse its body as strict, bounded JSON (:func:`parse_json`),
        retrying transient failures. An answer other than 200 is an :class:`ArchiveError`
        naming the status and the server's ``message``; a body that is not valid JSON is
        retried (it is usually one cut short), one too large or too deep is not."""
        label = what or f"GET {url}"

        def fetch() -> object:
            with self.fetching(url, params=params or None) as response:
                if response.status_code != 200:
                    raise ArchiveError(f"{label} failed: HTTP {response.status_code} "
                                       f"{error_message(response)}")
                content = response.content
            try:
                return parse_json(content)
            except ValueError as exc:
                raise requests.exceptions.ContentDecodingError(
                    f"invalid JSON from {label}: {exc}") from exc
            except JsonTooDeepError as exc:
                raise JsonTooDeepError(f"{label}: {exc}") from None

        return self.retrying(fetch, label)

    @contextmanager
    def _deadline(self, url: str, streamed: bool) -> Iterator[_Guard]:
        """The request's deadline guard: the enclosing one (a :meth:`get` inside
        :meth:`fetching`), or a new one watched until the block ends."""
        enclosing = getattr(_current, "guard", None)
        if enclosing is not None:
            yield enclosing
            return
        guard = _Guard(url, self.deadline, self.min_bytes_per_second if streamed else None)
        _current.guard = guard
        _WATCHDOG.add(guard)
        try:
            yield guard
        except Exception as exc:
            if guard.expired and not isinstance(exc, DeadlineExceededError):
                raise guard.error() from exc
            raise
        else:
            guard.check()  # a body cut to EOF by the watchdog can look complete
        finally:
            guard.cancel()
            _current.guard = None

    def _environment(self, url: str) -> dict:
        """Proxies and CA bundle for ``url``'s host, taken from the environment as requests
        itself would (``HTTPS_PROXY``, ``NO_PROXY``, ``REQUESTS_CA_BUNDLE``,
        ``CURL_CA_BUNDLE``), once per host."""
        host = urlsplit(url)[:2]
        settings = self._environments.get(host)
        if settings is None:
            verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
            if host[0] != "https":
                verify = None  # plain HTTP verifies nothing (requests stats a bundle path)
            settings = {"proxies": requests.utils.get_environ_proxies(url),
                        "verify": verify or True}
            self._environments[host] = settings
        return settings

    def retrying(self, operation: Callable[[], T], what: str) -> T:
        """Run ``operation`` until it succeeds or attempts run out."""
        for attempt in range(1, self.attempts + 1):
            try:
                return operation()
            except (TransientHTTPError, *TRANSIENT_ERRORS) as exc:
                if attempt == self.attempts:
                    raise ArchiveError(f"{what}: gave up after {attempt} attempts: {exc}") from exc
                delay = self._delay(attempt, getattr(exc, "retry_after", None))
                with self._lock:
                    self.retries += 1
                log.info("%s: %s; retrying in %.2fs", what, exc, delay)
                time.sleep(delay)
        raise AssertionError("unreachable")

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.max_backoff)
        return random.uniform(0, min(self.max_backoff, self.backoff * 2 ** (attempt - 1)))

    def close(self) -> None:
        self.session.close()
        if self._direct is not None:
            self._direct.close()


# -- JSON ------------------------------------------------------------------------------------


def parse_json(content: bytes, max_depth: int = MAX_JSON_DEPTH) -> object:
    """Strict, bounded JSON: UTF-8 (requests' ``.json()`` would replace bad bytes with
    U+FFFD), no ``NaN``/``Infinity`` or numbers beyond a float's range (which Python would
    accept but archives encoding with ``allow_nan=False`` never send, and no index or stored
    document could hold), and at most ``max_depth`` levels of nesting.

    Raises ``ValueError`` for input that is not such JSON, and :class:`JsonTooDeepError`
    (an :class:`ArchiveError`, not worth a retry) for nesting beyond ``max_depth``."""
    text = content.decode("utf-8") if isinstance(content, bytes | bytearray) else content
    try:
        value = json.loads(text, parse_constant=_not_a_number, parse_float=_finite)
    except RecursionError:
        raise _too_deep(max_depth) from None
    # Counting brackets (strings included) is a cheap upper bound on the depth.
    if text.count("[") + text.count("{") > max_depth:
        _check_depth(value, max_depth)
    return value


def error_message(response: requests.Response) -> str:
    """The ``message`` of a JSON error body (Girder's shape), else the HTTP reason; one
    line, at most 200 characters."""
    try:
        message = parse_json(response.content).get("message", "")
    except (ValueError, AttributeError, ArchiveError, requests.RequestException):
        message = response.reason or ""
    return " ".join(str(message).split())[:200]


def _check_depth(value: object, max_depth: int) -> None:
    """Level by level (a 10,000-item page takes a fraction of its parse time)."""
    level, depth = [value], 1
    while level:
        if depth > max_depth:
            raise _too_deep(max_depth)
        below = []
        for node in level:
            for child in node.values() if type(node) is dict else node:
                if type(child) is dict or type(child) is list:  # what json.loads builds
                    below.append(child)
        level, depth = below, depth + 1


def _too_deep(max_depth: int) -> JsonTooDeepError:
    return JsonTooDeepError(f"the JSON is nested deeper than {max_depth} levels, which no "
                            "archive document is; refusing it")


def _not_a_number(text: str) -> float:
    raise ValueError(f"{text} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is beyond the range of a float")
    return value


# -- deadlines ---------------------------------------------------------------------------------


class _Guard:
    """One request's deadline: when it passes, the watchdog shuts the request's socket
    down, which ends any blocked read at once (an idle timeout never fires while a server
    trickles a byte now and then)."""

    def __init__(self, url: str, seconds: float, floor: float | None):
        self.url, self.seconds, self.floor = url, seconds, floor
        self.started = time.monotonic()
        self.expired = self.cancelled = False
        self._connection: HTTPConnection | None = None
        self._response: requests.Response | None = None
        self._lock = threading.Lock()

    def watch(self, response: requests.Response) -> None:
        """Count ``response``'s bytes on the wire towards a streamed deadline."""
        self._response = response

    def due_at(self) -> float:
        received = 0
        if self.floor and self._response is not None:
            try:
                received = self._response.raw.tell()
            except Exception:  # noqa: BLE001 - a closed or odd response: no extension
                received = 0
        return self.started + self.seconds + (received / self.floor if self.floor else 0.0)

    def attach(self, connection: HTTPConnection) -> None:
        with self._lock:
            self._connection = connection
            if self.expired:
                _shut_down(connection)

    def expire(self) -> None:
        with self._lock:
            if self.cancelled:
                return
            self.expired = True
            if self._connection is not None:
                _shut_down(self._connection)

    def cancel(self) -> None:
        with self._lock:
            self.cancelled = True
        _WATCHDOG.discard(self)

    def check(self) -> None:
        if self.expired:
            raise self.error()

    def error(self) -> DeadlineExceededError:
        allowed = f"{self.seconds:g} s"
        if self.floor:
            allowed += f" plus 1 s per {self.floor:g} bytes received"
        return DeadlineExceededError(
            f"GET {self.url}: {_host(self.url)} did not finish answering within {allowed} "
            "(stalled or too slow); try again later, or raise MIRROR_REQUEST_DEADLINE")


class _Watchdog:
    """One thread for every client: expires guards whose deadline has passed."""

    def __init__(self) -> None:
        self._wake = threading.Condition()
        self._guards: set[_Guard] = set()
        self._thread: threading.Thread | None = None
        self._next_check: float | None = None  # when the thread wakes next (None: when told)

    def add(self, guard: _Guard) -> None:
        with self._wake:
            self._guards.add(guard)
            if self._thread is None or not self._thread.is_alive():  # first use, or forked
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name="mirror-http-deadlines")
                self._thread.start()
            if self._next_check is None or guard.due_at() < self._next_check:
                self._wake.notify()  # the new deadline comes before the thread's next look

    def discard(self, guard: _Guard) -> None:
        with self._wake:
            self._guards.discard(guard)

    def _run(self) -> None:
        while True:
            with self._wake:
                now, due, wait = time.monotonic(), [], None
                for guard in self._guards:
                    at = guard.due_at()
                    if at <= now:
                        due.append(guard)
                    else:
                        wait = at - now if wait is None else min(wait, at - now)
                self._guards.difference_update(due)
                if not due:
                    self._next_check = None if wait is None else now + wait
                    self._wake.wait(wait)
                    continue
            for guard in due:
                guard.expire()


_WATCHDOG = _Watchdog()
_current = threading.local()  # .guard: the deadline of this thread's request in flight


def _new_watchdog_after_fork() -> None:
    # The child has no watchdog thread, and its lock may have been held when it forked.
    global _WATCHDOG
    _WATCHDOG = _Watchdog()


os.register_at_fork(after_in_child=_new_watchdog_after_fork)


def _attach(connection: HTTPConnection) -> None:
    guard = getattr(_current, "guard", None)
    if guard is not None:
        guard.attach(connection)


def _shut_down(connection: HTTPConnection) -> None:
    sock = getattr(connection, "sock", None)
    if sock is None:
        return  # still connecting (bounded by the connect timeout); attach() shuts it
    try:
        # The plain socket's shutdown, even for TLS: SSLSocket.shutdown would drop the TLS
        # state under the thread that is reading.
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except (OSError, TypeError):
        pass  # already closed


class _WatchedHTTPConnection(HTTPConnection):
    """Tells this thread's deadline guard which connection carries its request."""

    def connect(self) -> None:
        super().connect()
        _attach(self)

    def request(self, *args, **kwargs) -> None:  # a reused connection is not reconnected
        _attach(self)
        super().request(*args, **kwargs)


class _WatchedHTTPSConnection(HTTPSConnection):
    def connect(self) -> None:
        super().connect()
        _attach(self)

    def request(self, *args, **kwargs) -> None:
        _attach(self)
        super().request(*args, **kwargs)


class _WatchedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


_WATCHED_POOLS = {"http": _WatchedHTTPPool, "https": _WatchedHTTPSPool}


class _WatchedAdapter(HTTPAdapter):
    """requests' adapter, with connections the deadline watchdog can shut down."""

    def init_poolmanager(self, *args, **kwargs) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _WATCHED_POOLS

    def proxy_manager_for(self, proxy, **proxy_kwargs):
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if isinstance(manager, ProxyManager):  # not SOCKS, whose pools are its own
            manager.pool_classes_by_scheme = _WATCHED_POOLS
        return manager


def _bound_body(response: requests.Response, guard: _Guard, cap: int | None,
                url: str) -> None:
    """Make ``response``'s body reads (``iter_content``, hence ``content`` and ``json``)
    stop past ``cap`` decoded bytes, and fail rather than end if the deadline cut them."""
    chunks = response.iter_content

    def iter_content(chunk_size: int | None = 1, decode_unicode: bool = False):
        size = 0
        for chunk in chunks(chunk_size, decode_unicode):
            size += len(chunk)
            if cap is not None and size > cap:
                raise ResponseTooLargeError(
                    f"GET {url}: the response is over {cap} bytes decoded (a runaway or "
                    "compressed-bomb body); refusing it (the cap is MIRROR_MAX_JSON_BYTES)")
            yield chunk
        guard.cancel()  # the body is complete: nothing is left to time
        guard.check()  # but a body the watchdog cut to EOF can look complete

    response.iter_content = iter_content


# -- helpers -----------------------------------------------------------------------------------


def _host(url: str) -> str:
    """``host[:port]`` of ``url``, never its user name or password."""
    parts = urlsplit(url)
    host = parts.hostname or "the server"
    try:
        port = parts.port
    except ValueError:
        port = None
    return f"{host}:{port}" if port else host


def _setting(name: str, default: float, integer: bool = False) -> float:
    """A positive number from the environment variable ``name``, else ``default``."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        value = 0
    if not (math.isfinite(value) and value > 0):
        kind = "whole number" if integer else "number"
        raise SettingError(f"{name}={raw[:40]!r} is not a positive {kind}; unset it or set "
                           f"e.g. {name}={default:g}")
    return value


def _parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff
