"""A tiny loopback server whose every answer misbehaves in one chosen way.

Each test passes a ``reply(handler)`` function that writes straight to the socket
(``handler.wfile``), so headers can lie, trickle, or never end; ``http.server`` parses the
request. Writes to a client that gave up end the reply quietly.
"""

from __future__ import annotations

import gzip
import shutil
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

Reply = Callable[[BaseHTTPRequestHandler], None]


@contextmanager
def misbehaving_server(reply: Reply, certificate: tuple[Path, Path] | None = None
                       ) -> Iterator[str]:
    """Serve ``reply`` to every GET on 127.0.0.1; yields the base URL (``.../api/v1``),
    ``https://`` when a ``(certificate, key)`` is given (see :func:`self_signed`)."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            try:
                reply(self)
            except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
                pass  # the client hung up: what it should do
            self.close_connection = True

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    scheme = "http"
    if certificate is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*certificate)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        scheme = "https"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"{scheme}://127.0.0.1:{server.server_address[1]}/api/v1"
    finally:
        server.shutdown()
        server.server_close()


def self_signed(folder: Path) -> tuple[Path, Path] | None:
    """A certificate and key for 127.0.0.1 made with ``openssl`` (None without it)."""
    if shutil.which("openssl") is None:
        return None
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    return cert, key


def trickle(data: bytes, per_second: float = 1.0) -> Reply:
    """Send ``data`` (headers included) one byte at a time, ``per_second`` bytes a second."""

    def reply(handler: BaseHTTPRequestHandler) -> None:
        for i in range(len(data)):
            handler.wfile.write(data[i:i + 1])
            handler.wfile.flush()
            time.sleep(1 / per_second)

    return reply


def headers(status: str = "200 OK", **fields: str | int) -> bytes:
    lines = [f"HTTP/1.1 {status}"] + [f"{k.replace('_', '-')}: {v}" for k, v in fields.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def gzip_bomb(decoded_bytes: int, member: int = 64 * 1024 * 1024) -> bytes:
    """A gzip body of zeros that inflates to ``decoded_bytes``: one compressed member
    repeated (gzip allows several members), so it is quick to build (~1 KB per MB)."""
    one = gzip.compress(bytes(member), compresslevel=9)
    return one * (decoded_bytes // member)


def send_body(body: bytes, content_type: str = "application/json", **extra: str) -> Reply:
    def reply(handler: BaseHTTPRequestHandler) -> None:
        handler.wfile.write(headers(Content_Type=content_type, Content_Length=len(body),
                                    Connection="close", **extra))
        for start in range(0, len(body), 1 << 20):
            handler.wfile.write(body[start:start + (1 << 20)])

    return reply


def endless_chunks(chunk: bytes = b" " * 65536) -> Reply:
    """A chunked JSON body that never ends (until the client hangs up)."""

    def reply(handler: BaseHTTPRequestHandler) -> None:
        handler.wfile.write(headers(Content_Type="application/json",
                                    Transfer_Encoding="chunked"))
        frame = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
        handler.wfile.write(b"1\r\n[\r\n")
        while True:
            handler.wfile.write(frame)

    return reply


def steady_body(total: int, per_second: int, content_type: str = "image/png") -> Reply:
    """A declared ``total``-byte body sent at about ``per_second`` bytes a second."""

    def reply(handler: BaseHTTPRequestHandler) -> None:
        handler.wfile.write(headers(Content_Type=content_type, Content_Length=total))
        handler.wfile.flush()
        step = max(1, per_second // 20)
        sent = 0
        while sent < total:
            n = min(step, total - sent)
            handler.wfile.write(b"\x00" * n)
            handler.wfile.flush()
            sent += n
            time.sleep(0.05)

    return reply
