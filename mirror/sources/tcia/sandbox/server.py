"""The TCIA sandbox's HTTP face: NBIA v4 and Bindaas v3 on one threaded ``http.server``.

``http.server`` (as in the ISIC sandbox) because the faults need the raw socket: a reset
closes it without a reply, and ``getImage`` streams its zip with chunked transfer encoding
and no ``Content-Length``, as NBIA's JAX-RS ``StreamingOutput`` does, so a connection cut
mid-zip still began with status 200.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import socket
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

from mirror.sources.faults import FaultPlan
from mirror.sources.tcia.formats import SERVER_ERROR, Response
from mirror.sources.tcia.sandbox.api import NOT_FOUND_HTML, TciaAPI
from mirror.sources.tcia.sandbox.data import Archive

log = logging.getLogger("mirror.sandbox.tcia")
V4_ROOT = "/nbia-api/services/v4/"
V3_ROOT = "/services/v3/TCIA/query/"
CONTROL_ROOT = "/__sandbox__/"
ZIP_CASES = ("dotdot", "absolute", "bomb", "truncated", "md5", "duplicate", "nondicom",
             "changing", "htmlzip")
"""Each corrupts the ``getImage`` zip of one series (see :attr:`TciaSandbox.hostile`)."""
LISTING_CASES = ("html", "empty")
"""Every third ``getSeries?Collection=`` answer is, with status 200, a proxy's HTML page
(``html``, the 2nd of each three) or an empty body (``empty``, the 3rd): a client must
not take either for "no series"."""
HOSTILE_CASES = ZIP_CASES + LISTING_CASES
CHUNK = 64 * 1024
MAX_FORM = 1 << 20


def parse_hostile(spec: str | bool | None) -> tuple[str, ...]:
    if spec in (None, "", False):
        return ()
    if spec is True or spec == "all":
        return HOSTILE_CASES
    cases = tuple(c.strip() for c in str(spec).split(",") if c.strip())
    unknown = [c for c in cases if c not in HOSTILE_CASES]
    if unknown:
        raise ValueError(f"unknown hostile case {unknown[0]!r}: use all or a comma list of "
                         f"{', '.join(HOSTILE_CASES)}")
    return cases


class TciaSandbox:
    """One running TCIA sandbox: its two base URLs, statistics and controls."""

    def __init__(self, archive: Archive, faults: FaultPlan, latency: float = 0.0,
                 hostile: tuple[str, ...] = ()):
        self.archive = archive
        self.faults = faults
        self.latency = latency  # seconds added to every API response: a network's round trip
        series = [s.uid for s in archive.visible_series()]
        zip_cases = [c for c in hostile if c in ZIP_CASES]
        if len(zip_cases) > len(series):
            raise ValueError(f"{len(zip_cases)} hostile zip cases need as many series; "
                             f"raise --collections")
        self.hostile: dict[str, str] = dict(zip(zip_cases, series, strict=False))
        """hostile zip case -> the SeriesInstanceUID whose zip it corrupts."""
        self.listing_cases = frozenset(c for c in hostile if c in LISTING_CASES)
        self.api = TciaAPI(archive, {uid: case for case, uid in self.hostile.items()},
                           self.listing_cases)
        self._stats: Counter[str] = Counter()
        self._lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None
        self.thread: threading.Thread | None = None

    @property
    def root_url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def v4_url(self) -> str:
        return self.root_url + V4_ROOT.rstrip("/")

    @property
    def v3_url(self) -> str:
        return self.root_url + V3_ROOT.rstrip("/")

    def count(self, pattern: str) -> None:
        with self._lock:
            self._stats[pattern] += 1
            self._stats["total"] += 1

    def stats(self) -> dict[str, int]:
        """Requests per ``"<METHOD> v4/<endpoint>"`` (or ``v3/``), plus ``"total"``."""
        with self._lock:
            return dict(self._stats)

    def reset_stats(self) -> None:
        with self._lock:
            self._stats.clear()

    def mutate(self, op: str, **args) -> dict:
        """Change the archive (v4 only; v3 stays frozen): see :meth:`Archive.mutate`."""
        return self.archive.mutate(op, **args)

    def refreeze(self) -> None:
        """Let v3 show the archive as it is now: models a freeze that came after the
        mutations made so far, so tests can change what a v3 mirror re-lists."""
        self.api.frozen = self.archive.snapshot()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server_version = "Apache-Coyote/1.1"
    sys_version = ""
    sandbox: TciaSandbox  # set on the subclass made per server

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - stdlib signature
        log.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        self._dispatch()

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch()

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_FORM:
            raise ValueError("form too large")
        return self.rfile.read(length) if length else b""

    def _dispatch(self) -> None:
        url = urlsplit(self.path)
        try:
            body = self._read_body()
        except ValueError:
            return self._send(Response.text("request body too large", 413))
        if url.path.startswith(CONTROL_ROOT):
            return self._send(self._control(url.path[len(CONTROL_ROOT):], body))
        if url.path.startswith(V4_ROOT):
            generation, endpoint = "v4", url.path[len(V4_ROOT):]
        elif url.path.startswith(V3_ROOT):
            generation, endpoint = "v3", url.path[len(V3_ROOT):]
        else:
            return self._send(Response.text(NOT_FOUND_HTML, 404, "text/html"))
        if self.sandbox.latency:
            time.sleep(self.sandbox.latency)
        self.sandbox.count(f"{self.command} {generation}/{endpoint}")
        fault = self.sandbox.faults.draw(url.path)
        if fault == "reset":
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return None
        if fault == "slow":
            time.sleep(self.sandbox.faults.slow_seconds)
        if fault in ("500", "502", "503", "429"):
            return self._send(self._fault_response(fault))
        pairs = parse_qsl(url.query, keep_blank_values=True)
        if generation == "v4" and self.command == "POST":
            pairs = parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)
        params: dict[str, str] = {}
        for key, value in pairs:
            params.setdefault(key, value)  # JAX-RS @QueryParam takes the first value
        try:
            if generation == "v4":
                response = self.sandbox.api.route_v4(self.command, endpoint, params,
                                                     list(dict.fromkeys(k for k, _ in pairs)))
            else:
                key = self.headers.get("api_key") or params.pop("api_key", None)
                params.pop("api_key", None)
                response = self.sandbox.api.route_v3(endpoint, params, key)
        except Exception as exc:  # noqa: BLE001 - NBIA's UncaughtException mapper
            log.exception("sandbox error on %s", url.path)
            response = Response.text(f"{SERVER_ERROR}\n{exc}", 500)
        self._send(response, truncate=fault == "truncate")

    def _fault_response(self, fault: str) -> Response:
        if fault == "429":
            response = Response.text("Too Many Requests", 429, "text/html")
            response.headers["Retry-After"] = f"{self.sandbox.faults.retry_after:g}"
            return response
        if fault == "500":
            return Response.text(SERVER_ERROR, 500)
        return Response.text(f"<html><body><h1>{fault} Proxy Error</h1></body></html>",
                             int(fault), "text/html")

    def _control(self, path: str, body: bytes) -> Response:
        if path == "stats" and self.command == "GET":
            return Response.text(json.dumps(self.sandbox.stats()),
                                 content_type="application/json")
        if path == "stats/reset" and self.command == "POST":
            self.sandbox.reset_stats()
            return Response.text('{"ok": true}', content_type="application/json")
        if path == "mutate" and self.command == "POST":
            try:
                change = json.loads(body or b"{}")
                if not isinstance(change, dict) or "op" not in change:
                    raise ValueError('send {"op": NAME, ...arguments}')
                result = self.sandbox.mutate(change.pop("op"), **change)
                return Response.text(json.dumps(result), content_type="application/json")
            except (ValueError, TypeError) as exc:
                return Response.text(json.dumps({"message": f"bad mutation: {exc}"}), 400,
                                     "application/json")
        if path == "state" and self.command == "GET":
            state = {"today": self.sandbox.archive.today(), "hostile": self.sandbox.hostile,
                     "v4": self.sandbox.v4_url, "v3": self.sandbox.v3_url}
            return Response.text(json.dumps(state), content_type="application/json")
        return Response.text(NOT_FOUND_HTML, 404, "text/html")

    def _send(self, response: Response, truncate: bool = False) -> None:
        self.send_response(response.status)
        for key, value in response.headers.items():
            self.send_header(key, value)
        if response.stream is not None:
            return self._send_stream(response, truncate)
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if truncate:
            self.wfile.write(response.body[:len(response.body) // 2])
            self.wfile.flush()
            self._drop()
            return
        self.wfile.write(response.body)

    def _send_stream(self, response: Response, truncate: bool) -> None:
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        writer = _ChunkedWriter(self.wfile, stop_after=CHUNK if truncate else None)
        try:
            response.stream(writer)
            writer.close()
        except _Dropped:
            self._drop()
        except OSError:  # the client went away
            self.close_connection = True

    def _drop(self) -> None:
        self.close_connection = True
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class _Dropped(Exception):
    """The ``truncate`` fault: the connection goes away in the middle of the body."""


class _ChunkedWriter:
    """HTTP/1.1 chunked encoding over the socket, in chunks of :data:`CHUNK` bytes."""

    def __init__(self, wfile, stop_after: int | None = None):
        self.wfile, self.buffer, self.sent, self.stop_after = wfile, bytearray(), 0, stop_after

    def write(self, data: bytes) -> int:
        self.buffer += data
        while len(self.buffer) >= CHUNK:
            self._emit(bytes(self.buffer[:CHUNK]))
            del self.buffer[:CHUNK]
        return len(data)

    def flush(self) -> None:
        pass

    def _emit(self, chunk: bytes) -> None:
        if self.stop_after is not None and self.sent + len(chunk) > self.stop_after:
            raise _Dropped
        self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        self.sent += len(chunk)

    def close(self) -> None:
        if self.buffer:
            self._emit(bytes(self.buffer))
            self.buffer.clear()
        if self.stop_after is not None:
            raise _Dropped  # a truncated stream never sends its last chunk
        self.wfile.write(b"0\r\n\r\n")


def make_sandbox(collections: int = 2, seed: int = 0, latency: float = 0.0,
                 hostile: str | bool | None = None, faults: str = "") -> TciaSandbox:
    return TciaSandbox(Archive(collections, seed), FaultPlan.parse(faults, seed), latency,
                       parse_hostile(hostile))


def start(collections: int = 2, seed: int = 0, latency: float = 0.0,
          hostile: str | bool | None = None, host: str = "127.0.0.1", port: int = 0,
          faults: str = "") -> TciaSandbox:
    """Build and serve a sandbox in a background thread; call ``.stop()`` when done."""
    sandbox = make_sandbox(collections, seed, latency, hostile, faults)
    handler = type("TciaSandboxHandler", (_Handler,), {"sandbox": sandbox})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    sandbox.server = server
    sandbox.thread = threading.Thread(target=server.serve_forever, name="tcia-sandbox",
                                      daemon=True)
    sandbox.thread.start()
    return sandbox


SHARED_OPTIONS = ("host", "port", "seed", "faults", "hostile", "latency")
"""Options ``mirror sandbox`` parses itself for every archive; :func:`main` takes them as
keyword defaults (its ``argv`` still wins)."""


def main(argv: list[str] | None = None, **shared) -> int:
    """``mirror sandbox --archive tcia-v4``: serve until SIGINT/SIGTERM. The first stdout
    line is the NBIA v4 base URL, the second the Bindaas v3 base URL. ``shared`` holds the
    CLI's common options (:data:`SHARED_OPTIONS`; others, ISIC's, are ignored)."""
    parser = argparse.ArgumentParser(prog="mirror sandbox --archive tcia-v4")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--collections", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--faults", default="")
    parser.add_argument("--hostile", nargs="?", const="all", default=None)
    parser.set_defaults(**{k: v for k, v in shared.items()
                           if k in SHARED_OPTIONS and v is not None})
    options = parser.parse_args(argv)
    stop = threading.Event()  # handlers first: a caller may stop us as soon as it reads a URL
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        sandbox = start(options.collections, options.seed, options.latency, options.hostile,
                        options.host, options.port, options.faults)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(sandbox.v4_url, flush=True)
    print(sandbox.v3_url, flush=True)
    archive = sandbox.archive
    print(f"serving {len(archive.visible_series())} series in {len(archive.collections())} "
          f"collections (seed {options.seed}); v3 api_key sandbox-key", flush=True)
    if sandbox.hostile:
        print("hostile: " + ", ".join(f"{c}={u}" for c, u in sandbox.hostile.items()),
              flush=True)
    stop.wait()
    sandbox.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
