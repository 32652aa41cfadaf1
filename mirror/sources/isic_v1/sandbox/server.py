"""The sandbox's HTTP face: a threaded ``http.server`` speaking HTTP/1.1 with keep-alive.

``http.server`` is used (rather than a framework) because fault injection needs the raw
socket: a reset closes it without a response, a truncated body sends a full
``Content-Length`` and then stops.
"""

from __future__ import annotations

import json
import logging
import signal
import socket
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from mirror.sources.faults import FaultPlan
from mirror.sources.isic_v1.sandbox.api import SandboxAPI
from mirror.sources.isic_v1.sandbox.data import Archive
from mirror.sources.isic_v1.sandbox.hostile import Hostile, RawReply
from mirror.sources.isic_v1.shape import API_ROOT, NOT_FOUND_HTML, Response

log = logging.getLogger("mirror.sandbox")
CONTROL_ROOT = "/__sandbox__"


class Sandbox:
    """One running sandbox archive: its URL, statistics and controls."""

    def __init__(self, archive: Archive, faults: FaultPlan, latency: float = 0.0,
                 hostile: Hostile | None = None):
        self.archive = archive
        self.hostile = hostile  # None: well-formed data; see hostile.py
        self.latency = latency  # seconds added to every API response: a network's round trip
        self.api = SandboxAPI(archive)
        self.faults = faults
        self._stats: Counter[str] = Counter()
        self._lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None

    @property
    def root_url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def url(self) -> str:
        return self.root_url + API_ROOT

    def count(self, pattern: str) -> None:
        with self._lock:
            self._stats[pattern] += 1
            self._stats["total"] += 1

    def stats(self) -> dict[str, int]:
        with self._lock:
            return dict(self._stats)

    def reset_stats(self) -> None:
        with self._lock:
            self._stats.clear()

    def mutate(self, **changes) -> dict:
        return self.archive.mutate(**changes)

    def stop(self) -> None:
        """Stop serving (and the hostile decoy server, if any)."""
        self.server.shutdown()
        self.server.server_close()
        if self.hostile is not None:
            self.hostile.close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; without TCP_NODELAY, Nagle's algorithm and
    # the client's delayed ACK add ~40 ms to every keep-alive response.
    disable_nagle_algorithm = True
    server_version = "CherryPy/18.6.1"  # what the real archive's Girder ran on
    sandbox: Sandbox  # set on the subclass made per server

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - stdlib signature
        log.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        self._dispatch()

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch()

    def _dispatch(self) -> None:
        url = urlsplit(self.path)
        if url.path.startswith(CONTROL_ROOT):
            return self._send(self._control(url.path[len(CONTROL_ROOT):]))
        if not (url.path == API_ROOT or url.path.startswith(API_ROOT + "/")):
            return self._send(Response(404, NOT_FOUND_HTML, {"Content-Type": "text/html"}))
        if self.sandbox.latency:
            time.sleep(self.sandbox.latency)
        fault = self.sandbox.faults.draw(url.path)
        if fault == "reset":
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return None
        if fault == "slow":
            time.sleep(self.sandbox.faults.slow_seconds)
        if fault in ("500", "502", "503", "429"):
            return self._send(self._fault_response(fault))
        path, query, hostile = url.path[len(API_ROOT):], url.query, self.sandbox.hostile
        if hostile is not None:
            query = hostile.rewrite_query(path, query)
        response = self._api(path, query)
        if hostile is not None:
            reply = hostile.respond(path, query, response)
            if isinstance(reply, RawReply):  # its headers lie: written by hand
                return reply.write(self)
            response = reply
        self._send(response, truncate=fault == "truncate")

    def _api(self, path: str, query: str) -> Response:
        pattern, response = self.sandbox.api.handle(self.command, path, query, self.headers)
        self.sandbox.count(pattern)
        return response

    def _fault_response(self, fault: str) -> Response:
        if fault == "429":
            response = Response.json({"message": "Too many requests.", "type": "rest"}, 429)
            response.headers["Retry-After"] = f"{self.sandbox.faults.retry_after:g}"
            return response
        if fault == "500":
            return Response.json({"message": "An unexpected error occurred on the server.",
                                  "type": "internal", "uid": str(uuid.uuid4())}, 500)
        body = f"<html><body><h1>{fault} Bad Gateway</h1></body></html>".encode()
        return Response(int(fault), body, {"Content-Type": "text/html"})

    def _control(self, path: str) -> Response:
        if path == "/stats" and self.command == "GET":
            return Response.json(self.sandbox.stats())
        if path == "/stats/reset" and self.command == "POST":
            self.sandbox.reset_stats()
            return Response.json({"ok": True})
        if path == "/mutate" and self.command == "POST":
            length = int(self.headers.get("Content-Length") or 0)
            try:
                changes = json.loads(self.rfile.read(length) or b"{}")
                allowed = {"add", "update", "remove", "update_ids", "remove_ids",
                           *Archive.SILENT}
                if not isinstance(changes, dict) or set(changes) - allowed:
                    raise ValueError(f"keys must be among {sorted(allowed)}")
                return Response.json(self.sandbox.mutate(**changes))
            except (ValueError, TypeError) as exc:
                return Response.json({"message": f"bad mutation: {exc}", "type": "rest"}, 400)
        return Response(404, NOT_FOUND_HTML, {"Content-Type": "text/html"})

    def _send(self, response: Response, truncate: bool = False) -> None:
        self.send_response(response.status)
        for key, value in response.headers.items():
            self.send_header(key, value)
        body = response.content()
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Girder-Request-Uid", str(uuid.uuid4()))
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        if truncate:
            self.wfile.write(body[:len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(body)


def make_sandbox(images: int = 100, seed: int = 0, faults: str = "",
                 private_fraction: float = 0.1, records: str | None = None,
                 segmentations: str | None = None, latency: float = 0.0,
                 hostile: str | bool | None = None) -> Sandbox:
    """A sandbox over generated data, or over recorded records when ``records`` is given.

    ``hostile`` is ``"all"``/``True`` or a comma list of :data:`hostile.CASES`.
    """
    if records:
        from mirror.sources.isic_v1.sandbox.records import RecordArchive

        archive: Archive = RecordArchive.load(records, segmentations, seed=seed)
    else:
        archive = Archive(images, seed=seed, private_fraction=private_fraction)
    faults_plan = FaultPlan.parse(faults, seed)
    return Sandbox(archive, faults_plan, latency, Hostile.parse(hostile, archive, seed))


def start(sandbox: Sandbox, host: str = "127.0.0.1", port: int = 0) -> threading.Thread:
    handler = type("SandboxHandler", (_Handler,), {"sandbox": sandbox})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    sandbox.server = server
    thread = threading.Thread(target=server.serve_forever, name="sandbox", daemon=True)
    thread.start()
    return thread


@contextmanager
def serve(images: int = 100, seed: int = 0, faults: str = "", private_fraction: float = 0.1,
          records: str | None = None, segmentations: str | None = None,
          host: str = "127.0.0.1", port: int = 0, latency: float = 0.0,
          hostile: str | bool | None = None) -> Iterator[Sandbox]:
    """Run a sandbox in a background thread for the duration of a ``with`` block."""
    sandbox = make_sandbox(images, seed, faults, private_fraction, records, segmentations,
                           latency, hostile)
    start(sandbox, host, port)
    try:
        yield sandbox
    finally:
        sandbox.stop()


def run_forever(host: str = "127.0.0.1", port: int = 0, images: int = 100, seed: int = 0,
                faults: str = "", private_fraction: float = 0.1, records: str | None = None,
                segmentations: str | None = None, hostile: str | bool | None = None,
                latency: float = 0.0) -> None:
    """``mirror sandbox``: serve until SIGINT or SIGTERM; the URL is the first stdout line."""
    try:
        sandbox = make_sandbox(images, seed, faults, private_fraction, records, segmentations,
                               latency, hostile)
    except ValueError as exc:
        from mirror.errors import MirrorError

        raise MirrorError(str(exc)) from None
    start(sandbox, host, port)
    print(f"sandbox: {sandbox.url}", flush=True)
    archive = sandbox.archive
    print(f"serving {len(archive.listed())} images (seed {seed}), "
          f"{len(archive.study_ids())} studies; login {SANDBOX_LOGIN_TEXT}", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    if sandbox.hostile is not None:
        print(f"hostile cases: {', '.join(sorted(sandbox.hostile.cases))}", flush=True)
    stop.wait()
    sandbox.stop()
    sys.stdout.flush()


SANDBOX_LOGIN_TEXT = "sandbox-user / sandbox-pass"
