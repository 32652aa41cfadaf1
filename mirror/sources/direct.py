"""Public file GETs through obstore (Rust's ``object_store``): the HTTP outside the GIL.

Why a second HTTP client. A sync of many small files (ISIC's 10-300 KB JPEGs) spends
little of its time on the network and most in Python: requests' and ``http.client``'s work
per request (about 0.3 ms of CPU) and, worse, the GIL: each of ~20 socket and file calls a
download makes releases the GIL, and getting it back behind 32 other threads took so long
that a 33 ms round trip became a 53 ms download (``bench/sync_v2.py``, 1,000 images at
30 ms). With obstore a GET is one call that gives the GIL up until the body has arrived.
IDC's reads use obstore for the same reason (``mirror/sources/idc/s3.py``).

What may go this way (:meth:`DirectFiles.accepts`): a URL a source marked
:attr:`~mirror.sources.base.FileTask.public_url` (fetched with no header, token or cookie,
as ISIC's public bucket serves its images) that carries no query, user name or unusual
path character, of a declared size up to :data:`DIRECT_MAX_BYTES`, when nothing in the
environment would route it differently (a proxy for its host, a custom CA bundle for
HTTPS) and ``MIRROR_DIRECT_DOWNLOADS`` is not 0. Anything else, and every mirror without
obstore installed (``pip install 'mirror[fast]'``), downloads through
:class:`~mirror.sources.http.HttpClient` (requests) as before.

The checks are the engine's, whichever client fetched: the caller refuses a declared
length over the file's limit, and the store checks magic bytes, whole-file markers, the
size against the declared length and hashes while it writes. Bounds: one request in
flight per :class:`~mirror.sources.http.HttpClient` slot, connect and idle timeouts from
the client, a total time of ``deadline + DIRECT_MAX_BYTES / min_bytes_per_second`` (what
requests' streamed deadline allows the largest file that comes this way), obstore's own
retries off: the caller's retry loop decides, as for requests. One difference: obstore
follows a redirect (reqwest's default, at most 10), where :class:`HttpClient` refuses one
because it may carry a token; nothing on this path carries any credential, and what a
redirect leads to passes the same checks.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterator
from datetime import timedelta
from urllib.parse import urlsplit

from mirror.errors import MirrorError, TransferError, TransientHTTPError

DIRECT_MAX_BYTES = 16 * 2**20
"""Largest declared size a direct download may have: ISIC's images are mostly far smaller;
a larger file streams through requests, whose deadline grows with the bytes received."""
CHUNK = 256 * 1024
_PLAIN_PATH = re.compile(r"^(/[A-Za-z0-9._~-]+)+$")  # obstore re-encodes anything else
_STATUS = re.compile(r"non-2xx status code: (\d{3})")
_PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy")


def available() -> bool:
    """Whether obstore can be imported (the ``fast`` extra)."""
    try:
        import obstore  # noqa: F401
    except ImportError:
        return False
    return True


class DirectBody:
    """One answered GET: its declared length, Content-Type and bytes (read once)."""

    def __init__(self, answer, url: str):
        self.url = url
        self.size = int(answer.meta["size"])
        self.content_type = str((answer.attributes or {}).get("Content-Type", ""))
        self._answer = answer

    def chunks(self) -> Iterator[bytes]:
        try:
            yield from self._answer.stream(min_chunk_size=CHUNK)
        except Exception as exc:  # noqa: BLE001 - obstore's errors, mapped to the mirror's
            raise _mapped(exc, self.url) from None


class DirectFiles:
    """obstore readers of plain public URLs, one ``HTTPStore`` per scheme and host."""

    def __init__(self, *, connect_timeout: float, idle_timeout: float, total_timeout: float,
                 pool: int):
        self._options = {"connect_timeout": timedelta(seconds=connect_timeout),
                         "timeout": timedelta(seconds=total_timeout),
                         "read_timeout": timedelta(seconds=idle_timeout),
                         "pool_max_idle_per_host": str(max(pool, 1))}
        self._stores: dict[str, object] = {}
        self._lock = threading.Lock()

    @staticmethod
    def accepts(url: str, declared_size: int | None, proxies: dict, verify: object) -> bool:
        """Whether ``url`` may be fetched directly (see the module's docstring)."""
        if declared_size is None or declared_size > DIRECT_MAX_BYTES:
            return False
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or parts.query or parts.fragment \
                or parts.username or parts.password or not parts.hostname:
            return False
        if not _PLAIN_PATH.match(parts.path):
            return False
        if proxies or any(os.environ.get(v) or os.environ.get(v.upper())
                          for v in _PROXY_VARIABLES):
            return False
        return parts.scheme == "http" or verify is True

    def get(self, url: str) -> DirectBody:
        """GET ``url``: its headers have arrived when this returns; read ``chunks()``."""
        import obstore

        parts = urlsplit(url)
        store = self._store(f"{parts.scheme}://{parts.netloc}")
        try:
            return DirectBody(obstore.get(store, parts.path.lstrip("/")), url)
        except Exception as exc:  # noqa: BLE001 - obstore's errors, mapped to the mirror's
            raise _mapped(exc, url) from None

    def _store(self, base: str):
        from obstore.store import HTTPStore

        with self._lock:
            store = self._stores.get(base)
            if store is None:
                options = {**self._options, "allow_http": base.startswith("http:")}
                store = HTTPStore.from_url(base, client_options=options,
                                           retry_config={"max_retries": 0})
                self._stores[base] = store
            return store

    def close(self) -> None:
        with self._lock:
            self._stores.clear()  # obstore closes a store's connections when it is dropped


def _mapped(exc: Exception, url: str) -> Exception:
    """obstore's error as the requests path would raise it: a 4xx is final (the file is
    gone or refused), a 5xx or 429 and anything at the transport level (reset, timeout, a
    body cut short) is worth another attempt."""
    if isinstance(exc, FileNotFoundError):
        return MirrorError(f"HTTP 404 for {url}")
    text = str(exc).strip()
    status = _STATUS.search(text)
    code = int(status.group(1)) if status else (403 if isinstance(exc, PermissionError)
                                                else None)
    if code is not None and 400 <= code < 500 and code != 429:
        return MirrorError(f"HTTP {code} for {url}")
    if code is not None:
        return TransientHTTPError(code, url, None)
    first = text.splitlines()[0] if text else type(exc).__name__
    return TransferError(f"GET {url}: {first[:200]}")
