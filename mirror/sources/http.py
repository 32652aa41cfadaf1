"""A polite, retrying HTTP client shared by every source.

Transient failures (5xx, 429, connection resets, timeouts, bodies cut short)
are retried with exponential backoff and full jitter, honouring ``Retry-After``.
Retries wrap the *whole* operation, body verification included, which is why
this is a small loop here rather than a transport-level retry adapter: a body
that is cut short is only discovered while it is being stored.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter

from mirror.errors import ArchiveError, IntegrityError, OfflineError, TransientHTTPError

log = logging.getLogger("mirror.http")
T = TypeVar("T")

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
TRANSIENT_ERRORS = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ContentDecodingError,
    IntegrityError,  # short body, HTML instead of an image: fetch again
)


class HttpClient:
    """A pooled ``requests`` session with request counting and retries.

    At most ``pool_size`` requests are in flight at once (:meth:`fetching` holds a slot
    until the body is read), however many threads share the client: a sync runs a few
    more threads than that, so that one decoding a file it has downloaded never holds a
    connection the archive could be serving.
    """

    def __init__(self, pool_size: int = 8, attempts: int = 6, backoff: float = 0.5,
                 max_backoff: float = 30.0, timeout: float = 60.0, offline: bool = False):
        self.session = requests.Session()
        # requests reads proxies and CA bundle from the environment again for every request,
        # a scan of os.environ that cost more CPU than anything else in a sync; they are
        # read once per host instead (see _environment).
        self.session.trust_env = False
        self._environments: dict[str, dict] = {}
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=max(pool_size, 4), max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.attempts = attempts
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.timeout = timeout
        self.offline = offline
        self.requests_made = 0
        self.retries = 0
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(pool_size)

    @contextmanager
    def fetching(self, url: str, **kwargs) -> Iterator[requests.Response]:
        """A GET (see :meth:`get`) that holds one connection slot until the block ends;
        read the body inside the block, do slow work with it after."""
        with self._slots:
            response = self.get(url, **kwargs)
            with response:
                yield response

    def get(self, url: str, **kwargs) -> requests.Response:
        """One GET (no retry): counts it, raises :class:`TransientHTTPError` on 5xx/429."""
        if self.offline:
            raise OfflineError(f"offline mode is on; refusing to fetch {url}")
        with self._lock:
            self.requests_made += 1
        kwargs.setdefault("timeout", self.timeout)
        # The archive streams its files itself and never redirects; following a redirect
        # would send the Girder-Token to whatever host the Location names.
        kwargs.setdefault("allow_redirects", False)
        log.info("GET %s %s", url, kwargs.get("params") or "")
        for key, value in self._environment(url).items():
            kwargs.setdefault(key, value)
        response = self.session.get(url, **kwargs)
        if response.is_redirect:
            location = response.headers.get("Location", "")
            response.close()
            raise ArchiveError(f"refusing to follow a redirect from {url} to {location[:200]!r}")
        if response.status_code in RETRY_STATUSES:
            retry_after = _parse_retry_after(response.headers.get("Retry-After"))
            response.close()
            raise TransientHTTPError(response.status_code, url, retry_after)
        return response

    def _environment(self, url: str) -> dict:
        """Proxies and CA bundle for ``url``'s host, taken from the environment as requests
        itself would (``HTTPS_PROXY``, ``NO_PROXY``, ``REQUESTS_CA_BUNDLE``,
        ``CURL_CA_BUNDLE``), once per host."""
        host = urlsplit(url)[:2]
        settings = self._environments.get(host)
        if settings is None:
            verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
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


def _parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff
