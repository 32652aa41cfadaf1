"""The browse page: search the mirror, page through thumbnails, look at one object.

Server-rendered HTML (no build step, no script): a form of field / operator / value (the
fields are the projection's, what ``mirror fields`` lists; the operators are
:data:`mirror.query.OPERATORS`), a grid of thumbnails with paging, and an object page with
its metadata, its files and the source's overlays (ISIC: the segmentation mask and the
superpixels over the image). Files are linked by content (``/blob/<sha256>``), so a browser
caches them for good.
"""

from __future__ import annotations

import html
import importlib
import json
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from sqlalchemy import select
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from mirror import query
from mirror.errors import MirrorError
from mirror.index import Blob, FileVersion
from mirror.sources.base import source_class

PER_PAGE = 24  # thumbnails per page (?per=N, at most MAX_PER_PAGE)
MAX_PER_PAGE = 200
COOKIE = "mirror_token"
STYLE = """body{font-family:sans-serif;margin:1em;background:#fff;color:#222}
.grid{display:flex;flex-wrap:wrap;gap:8px}.cell{width:140px;font-size:12px}
.cell img{width:128px;height:auto;display:block}table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px;text-align:left}
.error{color:#b00}.overlay img{display:block;margin:4px 0}"""


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>"
                        f"{html.escape(title)}</title><style>{STYLE}</style></head><body>"
                        f"<p><a href='/'>search</a></p>{body}</body></html>", status)


def _allowed(served: Any, request: Request) -> bool:
    """A private mirror's pages need the token: ``Authorization: Bearer``, or the cookie
    that visiting ``/?token=...`` once sets."""
    if not served.private:
        return True
    token = served.api.backend.token
    given = request.cookies.get(COOKIE) or request.query_params.get("token") or ""
    auth = request.headers.get("authorization", "")
    if auth.startswith("Bearer "):
        given = auth[7:].strip()
    return bool(token and given and secrets.compare_digest(given, token))


def _hooks(served: Any) -> Any:
    return importlib.import_module(source_class(served.mirror.config.source).served)


def _thumbnails(served: Any, ids: list[str]) -> dict[str, str]:
    rows = served.mirror._all(select(Blob.object_id, Blob.sha256).where(
        Blob.object_id.in_(ids), Blob.role == "thumbnail"))
    return dict(rows)


def search_page(served: Any, request: Request) -> HTMLResponse:
    m, p = served.mirror, request.query_params
    table = m.source.kind(m.source.main_kind).table
    fields = sorted(m.projection.fields(table))
    field, op, value = p.get("field", ""), p.get("op", "=="), p.get("value", "")
    criteria, error = [], ""
    if field:
        try:
            criteria = [query.criterion(field, op, query.parse_value(value))]
        except MirrorError as exc:
            error = str(exc)
    try:
        ids = [] if error else m.select(table, criteria)
    except MirrorError as exc:
        ids, error = [], str(exc)
    number, per = _int(p.get("page"), 1, 10**9), _int(p.get("per"), PER_PAGE, MAX_PER_PAGE)
    pages = max(1, -(-len(ids) // per))
    number = min(number, pages)
    shown = ids[(number - 1) * per:number * per]
    names = dict(m._all(select(_model(m).id, _model(m).name).where(_model(m).id.in_(shown))))
    thumbs = _thumbnails(served, shown)
    body = [f"<h1>{html.escape(m.source.title)} mirror</h1>", _form(fields, field, op, value, per)]
    if error:
        body.append(f"<p class='error' id='error'>{html.escape(error)}</p>")
    body.append(f"<p id='count'>{len(ids)} {html.escape(table)}; page {number} of {pages}</p>")
    body.append(_pager(p, number, pages))
    cells = []
    for object_id in shown:
        name = html.escape(str(names.get(object_id) or object_id))
        img = (f"<img src='/blob/{thumbs[object_id]}' alt='{name}'>" if object_id in thumbs
               else "<div>(no thumbnail)</div>")
        cells.append(f"<div class='cell'><a class='object' href='/browse/{m.source.main_kind}/"
                     f"{object_id}'>{img}{name}</a></div>")
    body.append(f"<div class='grid' id='grid'>{''.join(cells)}</div>")
    response = _page(m.source.title, "".join(body), 400 if error else 200)
    token = request.query_params.get("token")
    if served.private and token:
        response.set_cookie(COOKIE, token, httponly=True, samesite="strict")
    return response


def _model(m: Any) -> Any:
    from mirror.ingest import model_of

    return model_of(m.source.kind(m.source.main_kind))[0]


def _int(text: str | None, default: int, most: int) -> int:
    try:
        return min(most, max(1, int(text))) if text else default
    except ValueError:
        return default


def _form(fields: list[str], field: str, op: str, value: str, per: int) -> str:
    options = "".join(f"<option{' selected' if f == field else ''}>{html.escape(f)}</option>"
                      for f in ["", *fields])
    ops = "".join(f"<option{' selected' if o == op else ''}>{html.escape(o)}</option>"
                  for o in query.OPERATORS)
    return (f"<form method='get' action='/' id='search'><select name='field' id='field'>"
            f"{options}</select> <select name='op' id='op'>{ops}</select> "
            f"<input name='value' id='value' value='{html.escape(value, quote=True)}'> "
            f"<input type='hidden' name='per' value='{per}'>"
            "<button type='submit' id='go'>search</button></form>")


def _pager(params: Any, number: int, pages: int) -> str:
    def link(to: int, text: str, anchor: str) -> str:
        keep = {k: v for k, v in params.items() if k not in ("page", "token")}
        return f"<a id='{anchor}' href='/?{html.escape(urlencode({**keep, 'page': to}))}'>" \
               f"{text}</a>"

    parts = []
    if number > 1:
        parts.append(link(number - 1, "previous", "prev"))
    if number < pages:
        parts.append(link(number + 1, "next", "next"))
    return f"<p class='pager'>{' '.join(parts)}</p>"


def object_page(served: Any, request: Request) -> HTMLResponse:
    m = served.mirror
    kind, object_id = request.path_params["kind"], request.path_params["object_id"]
    try:
        doc = m.document(kind, object_id)
    except (MirrorError, KeyError) as exc:
        return _page("not found", f"<p class='error'>{html.escape(str(exc))}</p>", 404)
    oid = doc.get("_id", object_id)  # ISIC v1 documents name their id _id; v2's do not
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
                   for k, v in _flat(doc))
    oid = doc.get("_id", object_id)  # a TCIA row has no _id: its UID is the object id
    blobs = m._all(select(Blob.role, Blob.size, Blob.sha256).where(
        Blob.object_id == oid).order_by(Blob.role))
    files = "".join(f"<tr><td>{html.escape(role)}</td><td>{size}</td><td><a href='/blob/"
                    f"{sha}'>{sha[:16]}</a></td></tr>" for role, size, sha in blobs)
    overlays = getattr(_hooks(served), "overlays", lambda *_: [])(m, kind, oid)
    shown = "".join(f"<div class='overlay'><h3>{html.escape(title)}</h3><img id='overlay-"
                    f"{name}' src='/browse/overlay/{oid}/{name}.png' alt='"
                    f"{html.escape(title)}'></div>" for name, title in overlays)
    title = f"{kind} {doc.get('name') or oid}"
    body = (f"<h1>{html.escape(title)}</h1>{shown}<h2>files</h2><table id='files'>"
            f"<tr><th>role</th><th>bytes</th><th>sha256</th></tr>{files}</table>"
            f"<h2>metadata</h2><table id='metadata'>{rows}</table>")
    return _page(title, body)


def _flat(doc: Any, prefix: str = "") -> list[tuple[str, str]]:
    if isinstance(doc, dict) and doc:
        return [row for k in sorted(doc) for row in _flat(doc[k], f"{prefix}{k}.")]
    return [(prefix.rstrip("."), json.dumps(doc) if not isinstance(doc, str) else doc)]


def overlay(served: Any, request: Request) -> Response:
    hooks = _hooks(served)
    render = getattr(hooks, "overlay_png", None)
    try:
        data = render(served.mirror, request.path_params["object_id"],
                      request.path_params["name"]) if render else None
    except (MirrorError, KeyError, ValueError) as exc:
        return Response(str(exc), 404, media_type="text/plain")
    if data is None:
        return Response("no such overlay", 404, media_type="text/plain")
    return Response(data, media_type="image/png", headers={"Cache-Control": "no-cache"})


@dataclass
class Reply:
    """What :func:`mirror.serve.app.to_starlette` sends (the shape of a source's replies)."""

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    path: Path | None = None
    sha256: str | None = None

    @classmethod
    def json(cls, value: object, status: int) -> Reply:
        return cls(status, json.dumps(value).encode(), {"Content-Type": "application/json"})


def blob_reply(served: Any, request: Request) -> Reply:
    """A stored file by its SHA-256 (current or older version): immutable content."""
    sha = request.path_params["sha256"]
    if not _allowed(served, request):
        return Reply.json({"message": "this mirror's files need its token", "type": "access"},
                          401)
    row = served.mirror._one(select(Blob.path, Blob.content_type).where(
        Blob.sha256 == sha).limit(1))
    if row is None:
        old = served.mirror._one(select(FileVersion.path).where(
            FileVersion.sha256 == sha).limit(1))
        row = (old[0], None) if old else None
    if row is None:
        return Reply.json({"message": f"no stored file has SHA-256 {sha[:64]}",
                           "type": "rest"}, 404)
    path = served.mirror.store.path(row[0])
    return Reply(200, b"", {"Content-Type": row[1] or _guess(path.name)}, path, sha)


def _guess(name: str) -> str:
    import mimetypes

    return mimetypes.guess_type(name)[0] or "application/octet-stream"


def routes(current: Any) -> list[Route]:
    """The browse routes over ``current`` (see :class:`mirror.serve.app.Current`)."""

    def page(render):
        async def endpoint(request: Request) -> Response:
            served = await current.aget()
            if not _allowed(served, request):
                return _page("token needed", "<p class='error'>This mirror holds non-public "
                             "objects: open /?token=YOUR_TOKEN once.</p>", 401)
            return await run_in_threadpool(render, served, request)
        return endpoint

    return [Route("/", page(search_page)),
            Route("/browse/overlay/{object_id}/{name}.png", page(overlay)),
            Route("/browse/{kind}/{object_id}", page(object_page))]
