"""The sandbox's HTTP faces: the API port and the file-host port.

``http.server`` (threaded, HTTP/1.1 keep-alive) rather than a framework, because fault
injection needs the raw socket: a reset closes it without an answer, a truncated body
promises a full ``Content-Length`` and stops half way.

Control routes on the API port (not part of the archive):
``GET /__sandbox__/stats``, ``POST /__sandbox__/stats/reset``,
``POST /__sandbox__/mutate`` (a JSON object of :data:`data.MUTATIONS`),
``GET /__sandbox__/clock``, ``GET /__sandbox__/mutations``.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import logging
import signal
import socket
import sys
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

from mirror.sources.faults import FaultPlan
from mirror.sources.isic_v2.sandbox.api import TOKENS, SandboxAPI
from mirror.sources.isic_v2.sandbox.bucket import Bucket, _error
from mirror.sources.isic_v2.sandbox.data import ANONYMOUS, MUTATIONS, Archive
from mirror.sources.isic_v2.sandbox.hostile import Hostile, parse_cases
from mirror.sources.isic_v2.sandbox.http import DJANGO_404, DJANGO_500, Response

log = logging.getLogger("mirror.sandbox.isic_v2")
API_ROOT = "/api/v2"
CONTROL_ROOT = "/__sandbox__"
GZIP_MIN = 200  # Django's GZipMiddleware leaves shorter bodies alone
HEROKU_503 = (b"<!DOCTYPE html><html><head><meta name=\"viewport\" content=\"width=device-width"
              b"\"><title>Application Error</title></head><body><iframe "
              b"src=\"//www.herokucdn.com/error-pages/application-error.html\"></iframe>"
              b"</body></html>")


class SandboxV2:
    """One running ISIC API v2 sandbox: URLs, statistics, controls."""

    def __init__(self, archive: Archive, faults: FaultPlan, latency: float = 0.0,
                 hostile: Hostile | None = None, es_counts: bool = False):
        self.archive = archive
        self.bucket = Bucket(archive, hashlib.sha256(f"isic-v2:{archive.seed}".encode())
                             .digest())
        self.api = SandboxAPI(archive, self.bucket, es_counts)
        self.api.hostile = hostile
        self.hostile = hostile
        self.faults = faults
        self.latency = latency  # seconds added to every answer: a network's round trip
        self._stats: Counter[str] = Counter()
        self._lock = threading.Lock()
        self.servers: list[ThreadingHTTPServer] = []

    @property
    def root_url(self) -> str:
        host, port = self.servers[0].server_address[:2]
        return f"http://{host}:{port}"

    @property
    def url(self) -> str:
        """The API base, ``http://127.0.0.1:P/api/v2`` (no trailing slash)."""
        return self.root_url + API_ROOT

    @property
    def files_url(self) -> str:
        return self.bucket.root

    def count(self, pattern: str) -> None:
        with self._lock:
            self._stats[pattern] += 1
            self._stats["total"] += 1

    def stats(self) -> dict[str, int]:
        """Requests per route pattern (``GET /images/``, ``files /images/``), plus total."""
        with self._lock:
            return dict(self._stats)

    def reset_stats(self) -> None:
        with self._lock:
            self._stats.clear()

    def mutate(self, **changes) -> dict:
        """Change the archive (see :data:`data.MUTATIONS`); returns what changed."""
        return self.archive.mutate(**changes)

    def advance(self, seconds: float) -> None:
        """Move the sandbox clock (signed URLs expire; midnight re-indexes search)."""
        self.archive.advance(seconds)

    def stop(self) -> None:
        for server in self.servers:
            server.shutdown()
            server.server_close()

    def __enter__(self) -> SandboxV2:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in separate writes

    def version_string(self) -> str:
        return "AmazonS3" if self.files else "gunicorn"
    sandbox: SandboxV2  # set on the subclass made per server
    files = False  # True on the file host's port

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - stdlib signature
        log.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        self._dispatch()

    def do_HEAD(self) -> None:  # noqa: N802
        self._dispatch()

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch()

    def do_PUT(self) -> None:  # noqa: N802
        self._dispatch()

    def do_DELETE(self) -> None:  # noqa: N802
        self._dispatch()

    def _dispatch(self) -> None:
        url = urlsplit(self.path)
        sandbox = self.sandbox
        if not self.files and url.path.startswith(CONTROL_ROOT):
            return self._send(self._control(url.path[len(CONTROL_ROOT):]))
        if sandbox.latency:
            time.sleep(sandbox.latency)
        fault = sandbox.faults.draw(url.path)
        if fault == "reset":
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return None
        if fault == "slow":
            time.sleep(sandbox.faults.slow_seconds)
        if fault in ("500", "502", "503", "429"):
            return self._send(self._fault_response(fault))
        response = self._files(url) if self.files else self._api(url)
        self._send(response, truncate=fault == "truncate")

    def _api(self, url) -> Response:
        sandbox = self.sandbox
        if not url.path.startswith(API_ROOT + "/"):
            sandbox.count("other")
            return Response.html(DJANGO_404, 404)
        path = url.path[len(API_ROOT):]
        auth = self.headers.get("Authorization", "")
        token = auth[7:].strip() if auth[:7].lower() == "bearer " else None
        who = TOKENS.get(token, ANONYMOUS)  # a bad or expired token is anonymous, not a 401
        host = self.headers.get("Host") or "{}:{}".format(*self.server.server_address[:2])
        method = "GET" if self.command == "HEAD" else self.command
        try:
            with sandbox.archive.lock:
                response = sandbox.api.handle(method, path, url.query, host, who)
        except Exception:  # noqa: BLE001 - Django's production 500 page
            log.exception("sandbox error on %s", self.path)
            response = Response.html(DJANGO_500, 500)
        finally:
            sandbox.count(f"{self.command} {sandbox.api.route_name(_unquoted(path))}")
        response.head = response.head or self.command == "HEAD"
        return self._finish_api(response)

    def _finish_api(self, response: Response) -> Response:
        """Middleware the archive runs: gzip on request, CORS for any origin."""
        headers = response.headers
        headers.setdefault("X-Content-Type-Options", "nosniff")
        headers.setdefault("Referrer-Policy", "same-origin")
        headers.setdefault("Cross-Origin-Opener-Policy", "same-origin")
        if self.headers.get("Origin"):
            headers["Access-Control-Allow-Origin"] = "*"
            headers["Vary"] = "origin"
        accepts = self.headers.get("Accept-Encoding", "")
        if "gzip" in accepts.lower() and len(response.body) >= GZIP_MIN and response.status \
                != 304:
            response.body = gzip.compress(response.body, compresslevel=6, mtime=0)
            headers["Content-Encoding"] = "gzip"
            headers["Vary"] = ", ".join(filter(None, (headers.get("Vary"), "Accept-Encoding")))
        return response

    def _files(self, url) -> Response:
        sandbox = self.sandbox
        path = _unquoted(url.path)
        try:
            return sandbox.bucket.respond(self.command, path, url.query, self.headers)
        except Exception:  # noqa: BLE001
            log.exception("sandbox file error on %s", self.path)
            return _error(500, "InternalError", "We encountered an internal error.")
        finally:
            sandbox.count(sandbox.bucket.route_name(path))

    def _fault_response(self, fault: str) -> Response:
        if self.files:
            if fault == "503":
                return _error(503, "SlowDown", "Please reduce your request rate.")
            if fault == "429":
                response = _error(429, "TooManyRequests", "Too many requests.")
            else:
                response = _error(int(fault), "InternalError", "We encountered an internal "
                                  "error. Please try again.")
        elif fault == "500":
            return Response.html(DJANGO_500, 500)
        elif fault == "429":
            response = Response(429, b"Too Many Requests", {"Content-Type": "text/plain"})
        else:
            return Response(int(fault), HEROKU_503, {"Content-Type": "text/html; charset=utf-8"})
        response.headers["Retry-After"] = f"{self.sandbox.faults.retry_after:g}"
        return response

    def _control(self, path: str) -> Response:
        sandbox = self.sandbox
        if path == "/stats" and self.command == "GET":
            return Response.json(sandbox.stats())
        if path == "/stats/reset" and self.command == "POST":
            sandbox.reset_stats()
            return Response.json({"ok": True})
        if path == "/mutations" and self.command == "GET":
            return Response.json(MUTATIONS)
        if path == "/clock" and self.command == "GET":
            archive = sandbox.archive
            return Response.json({
                "now": datetime.fromtimestamp(archive.now, UTC).isoformat(),
                "search_index_synced_at": datetime.fromtimestamp(archive.es_synced_at,
                                                                 UTC).isoformat()})
        if path == "/mutate" and self.command == "POST":
            length = int(self.headers.get("Content-Length") or 0)
            try:
                changes = json.loads(self.rfile.read(length) or b"{}")
                if not isinstance(changes, dict):
                    raise ValueError("the body must be a JSON object")
                return Response.json(sandbox.mutate(**changes))
            except (ValueError, TypeError, KeyError) as exc:
                return Response.json({"message": f"bad mutation: {exc}"}, 400)
        return Response.html(DJANGO_404, 404)

    def _send(self, response: Response, truncate: bool = False) -> None:
        self.send_response(response.status)
        for key, value in response.headers.items():
            self.send_header(key, value)
        if response.status != 304:
            self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if response.head or response.status == 304 or self.command == "HEAD":
            return
        if truncate:
            self.wfile.write(response.body[:len(response.body) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(response.body)


def _unquoted(path: str) -> str:
    return unquote(path)


def _listen(sandbox: SandboxV2, host: str, port: int, files: bool) -> ThreadingHTTPServer:
    handler = type("SandboxV2Handler", (_Handler,), {"sandbox": sandbox, "files": files})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="isic-v2-sandbox", daemon=True).start()
    return server


def start(images: int = 100, seed: int = 0, latency: float = 0.0, faults: str | None = None,
          hostile: str | bool = False, host: str = "127.0.0.1", port: int = 0,
          file_port: int = 0, es_counts: bool = False) -> SandboxV2:
    """Start a sandbox in background threads; ``.stop()`` it (or use it as a context manager).

    ``faults`` is a :mod:`faults` spec, ``hostile`` ``True``/``"all"`` or a comma list of
    :data:`hostile.CASES`; ``es_counts`` takes image ``count`` from the nightly index (the
    archive before 2026-07), so it lags and overcounts.
    """
    cases = parse_cases(hostile)
    sandbox = SandboxV2(Archive(images, seed), FaultPlan.parse(faults, seed), latency,
                        Hostile(cases, seed) if cases else None, es_counts)
    sandbox.servers.append(_listen(sandbox, host, port, files=False))
    try:
        files = _listen(sandbox, host, file_port, files=True)
    except OSError:
        sandbox.stop()
        raise
    sandbox.servers.append(files)
    file_host, file_port_bound = files.server_address[:2]
    sandbox.bucket.root = f"http://{file_host}:{file_port_bound}"
    return sandbox


def run_forever(host: str = "127.0.0.1", port: int = 0, images: int = 100, seed: int = 0,
                faults: str = "", hostile: str | bool | None = None, latency: float = 0.0,
                file_port: int = 0, es_counts: bool = False, records: str | None = None,
                segmentations: str | None = None, **_v1_only) -> None:
    """The ISIC v1 sandbox's keyword interface (what ``mirror sandbox`` parses), for this
    sandbox: serve until SIGINT/SIGTERM, the base URL first on stdout. v1's
    ``private_fraction`` has no meaning here (visibility follows cohorts) and is ignored."""
    from mirror.errors import MirrorError

    if records or segmentations:
        raise MirrorError("the ISIC v2 sandbox generates its records; --records and "
                          "--segmentations are ISIC v1's")
    argv = ["--host", host, "--port", str(port), "--file-port", str(file_port),
            "--images", str(images), "--seed", str(seed), "--latency", str(latency),
            "--faults", faults or "", "--hostile", "all" if hostile is True else hostile or ""]
    code = main(argv + (["--es-counts"] if es_counts else []))
    if code:
        raise MirrorError("the ISIC v2 sandbox could not start (see the message above)")


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGINT/SIGTERM; the API base URL is the first line of stdout."""
    parser = argparse.ArgumentParser(prog="isic-v2-sandbox", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0,
                        help="API port (8000 is where isic-cli --dev looks)")
    parser.add_argument("--file-port", type=int, default=0)
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--faults", default="")
    parser.add_argument("--hostile", default="", help="all, or a comma list of cases")
    parser.add_argument("--es-counts", action="store_true")
    args = parser.parse_args(argv)
    try:
        sandbox = start(args.images, args.seed, args.latency, args.faults, args.hostile,
                        args.host, args.port, args.file_port, args.es_counts)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(sandbox.url, flush=True)
    print(f"files: {sandbox.files_url}; {len(sandbox.archive.images)} images (seed "
          f"{args.seed}); token sandbox-token (user), sandbox-staff-token (staff)", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    sandbox.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
