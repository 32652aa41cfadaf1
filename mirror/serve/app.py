"""The ASGI application of ``mirror serve``: the source's own API, stored files, browse page.

Read-only by construction: the index is opened through the published generation
(:class:`mirror.api.Mirror`, ``mode=ro&immutable=1``) and files are opened for reading
from the store; nothing here writes under the root. When a sync publishes a new
generation, the next request opens it (CURRENT is looked at on every request, one
``stat``), so a lab's server follows its mirror without a restart and a request never
sees half of a generation.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, Response, StreamingResponse
from starlette.routing import Route

from mirror.api import Mirror
from mirror.sources.base import source_class

access_log = logging.getLogger("mirror.serve.access")
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"
SMALL_FILE = 1 << 20  # bytes: stored files up to this size are sent from one read


@dataclass
class Served:
    """One opened generation: the mirror and the API face over it."""

    mirror: Mirror
    api: Any  # the source's V1Api-like object: handle(method, path, query, headers)
    api_root: str
    private: bool


class Current:
    """The generation requests are answered from, reopened when CURRENT changes.

    The previous generation stays open (requests in flight finish on it); the one
    before is closed."""

    def __init__(self, root: Path, token: str | None):
        self.root, self.token = root, token
        self.lock = threading.Lock()
        self.key: tuple | None = None
        self.served: Served | None = None
        self.previous: Served | None = None
        self.get()

    def _key(self, mirror: Mirror | None) -> tuple:
        layout = mirror.layout if mirror else None
        path = layout.current if layout else None
        try:
            st = os.stat(path) if path else None
        except FileNotFoundError:
            return (None,)
        return (st.st_ino, st.st_mtime_ns, st.st_size) if st else (None,)

    def fresh(self) -> Served | None:
        """The current generation when it is already open (one ``stat``), else None."""
        served = self.served
        if served is not None and self._key(served.mirror) == self.key:
            return served
        return None

    async def aget(self) -> Served:
        """:meth:`get` for the event loop: opening a generation runs in a thread."""
        return self.fresh() or await run_in_threadpool(self.get)

    def get(self) -> Served:
        served = self.fresh()
        if served is not None:
            return served
        with self.lock:
            if self.served is not None and self._key(self.served.mirror) == self.key:
                return self.served
            mirror = Mirror(self.root)
            key = self._key(mirror)
            source = source_class(mirror.config.source)
            module = importlib.import_module(source.served)
            from mirror.serve.access import holds_private

            fresh = Served(mirror, module.make_api(mirror, self.token), module.API_ROOT,
                           holds_private(mirror))
            if self.previous is not None:
                self.previous.mirror.close()
            self.previous, self.served, self.key = self.served, fresh, key
            return fresh

    def close(self) -> None:
        for served in (self.previous, self.served):
            if served is not None:
                served.mirror.close()


def etag_matches(header: str | None, etag: str) -> bool:
    """``If-None-Match`` against a strong ETag (weak comparison, as RFC 9110 asks)."""
    if not header:
        return False
    tags = [t.strip().removeprefix("W/") for t in header.split(",")]
    return "*" in tags or etag in tags


def to_starlette(reply: Any, request: Request, cache: str = REVALIDATE) -> Response:
    """A source's reply (status, headers, body or path, sha256) as a Starlette one:
    a stored file streamed (Range, 304 on its ETag), anything else as bytes."""
    headers = dict(reply.headers)  # Content-Type as given: Starlette adds no charset then
    headers["Girder-Request-Uid"] = str(uuid.uuid4())
    headers["Cache-Control"] = cache if reply.sha256 else REVALIDATE
    if reply.sha256:
        headers["ETag"] = f'"{reply.sha256}"'
        if reply.status == 200 and etag_matches(request.headers.get("if-none-match"),
                                                headers["ETag"]):
            headers.pop("Content-Disposition", None)
            return Response(status_code=304, headers=headers)
    if reply.path is not None:
        return FileResponse(reply.path, status_code=reply.status, headers=headers)
    if getattr(reply, "chunks", None) is not None:  # built while sent (NBIA's series zip)
        body = iter(()) if request.method == "HEAD" else reply.chunks  # HEAD: not built
        return StreamingResponse(body, status_code=reply.status, headers=headers)
    return Response(reply.body, status_code=reply.status, headers=headers)


def answer(served: Served, path: str, query: str, headers: Any, body: bytes | None = None
           ) -> Any:
    """The source's reply, in a worker thread; a small stored file is read here whole
    (one thread hop instead of one per 64 KiB chunk). Range requests and big files are
    streamed by :class:`FileResponse`. ``body``: a POST's form (NBIA's getMD5Hierarchy)."""
    if body is not None:
        _, reply = served.api.handle("POST", path, query, headers, body=body)
    else:
        _, reply = served.api.handle("GET", path, query, headers)
    return inline_small(reply, headers)


def inline_small(reply: Any, headers: Any) -> Any:
    """``reply`` with a small stored file read into its body (not for a Range request)."""
    if reply.path is not None and "range" not in headers:
        try:
            if reply.path.stat().st_size <= SMALL_FILE:
                reply.body, reply.path = reply.path.read_bytes(), None
        except OSError:
            pass  # FileResponse reports it
    return reply


def create_app(root: str | Path, token: str | None = None) -> Starlette:
    """The application over the mirror at ``root``; ``token`` reads non-public objects."""
    from mirror.serve import browse
    from mirror.serve.access import AccessLog

    current = Current(Path(root), token)

    async def api(request: Request) -> Response:
        served = await current.aget()
        raw = request.scope.get("raw_path") or request.url.path.encode()
        path = raw.decode("latin-1").split("?", 1)[0][len(served.api_root):]
        query = request.scope.get("query_string", b"").decode("latin-1")
        body = await request.body() if request.method == "POST" else None
        reply = await run_in_threadpool(answer, served, path, query, request.headers, body)
        response = to_starlette(reply, request)
        if not getattr(served.api, "request_uid", True):  # a Girder header, not NBIA's
            del response.headers["girder-request-uid"]
        return response

    async def blob(request: Request) -> Response:
        served = await current.aget()
        reply = await run_in_threadpool(
            lambda: inline_small(browse.blob_reply(served, request), request.headers))
        return to_starlette(reply, request, IMMUTABLE)

    first = current.get()  # a mirror's source never changes under it
    api_root = first.api_root
    methods = list(getattr(first.api, "methods", ("GET", "HEAD")))  # NBIA: POST too
    routes = [Route(api_root, api, methods=methods),
              Route(api_root + "/{rest:path}", api, methods=methods),
              Route("/blob/{sha256}", blob, methods=["GET", "HEAD"]),
              *browse.routes(current)]
    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        current.close()

    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.current = current
    return AccessLog(app)


def app_from_env() -> Any:
    """The factory ``--workers N`` processes call: root and token file from the parent."""
    import json

    from mirror.serve import _access_log
    from mirror.serve.access import read_token

    _access_log()
    given = json.loads(os.environ["MIRROR_SERVE_CONFIG"])
    token = read_token(Path(given["token_file"])) if given.get("token_file") else None
    return create_app(given["root"], token)
