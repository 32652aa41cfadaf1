"""Hostile mode: the sandbox lies, the way a broken proxy or a malicious archive would.

Each *case* corrupts a small, deterministic subset of images (every ``PERIOD``-th image,
at an offset drawn from the seed, different for each case), so the rest of the archive stays
well-formed and a sync can show that it mirrors the good items while it skips and reports
the bad ones. Victims alternate between two *variants* of their case (``variant``), so a
handful of images covers both directions of a lie (Content-Length too long and too short,
say). The cases:

- ``names``: image names ``../../escaped``, ``/etc/passwd``, NUL and control characters,
  and one public dataset renamed likewise (in listings, details and studies alike);
- ``html``: an HTML error page with status 200 for a full image (``text/html``, or lying
  ``image/jpeg``);
- ``length``: ``Content-Length`` twice the body, or half of it (the whole body is sent);
- ``endless``: a body that never ends (no ``Content-Length``, or a 50 GB one);
- ``json``: a segmentation list cut mid-JSON, or a segmentation document with invalid UTF-8;
- ``ids``: non-hex ``_id`` entries and duplicates in the image and segmentation listings;
- ``paging``: image listing pages that start early (repeat items) or late (skip items);
- ``superpixels``: superpixel PNGs of half the image's size, or in mode ``L``;
- ``redirect``: a 302 for a full image, to ``http://example.invalid/`` or to a *decoy*
  loopback server that records whether it was asked (and with which token).

The server calls :meth:`Hostile.rewrite_query` before the API and :meth:`Hostile.respond`
after it; a :class:`RawReply` is written by hand because its headers lie.
"""

from __future__ import annotations

import io
import json
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlencode

import numpy as np
from PIL import Image

from mirror.sources.isic_v1.sandbox import blobs
from mirror.sources.isic_v1.sandbox.api import Response, split_path
from mirror.sources.isic_v1.sandbox.data import Archive, _rng

CASES = ("names", "html", "length", "endless", "json", "ids", "paging", "superpixels",
         "redirect")
PERIOD = 10  # one image in ten is a victim of each case; no image of two cases
HOSTILE_NAMES = ("../../escaped", "/etc/passwd", "ISIC_\x00nul", "ISIC_\x1b[2J\r\nctl", "..",
                 "..\\..\\windows", "ISIC_" + "A" * 300)
HOSTILE_DATASET_NAME = "../../../tmp/\x00dataset\x07"
BAD_IDS = ("../../../../tmp/escaped", "not-an-object-id", "ZZZZZZZZZZZZZZZZZZZZZZZZ")
PAGING_SHIFT = 2
ENDLESS_CAP = 4 << 30  # the server stops anyway after 4 GiB: a test must not fill a disk
HUGE_LENGTH = 50 * 10**9
HTML_PAGE = (b"<!DOCTYPE html><html><head><title>Service Unavailable</title></head><body>"
             b"<h1>Our servers are busy</h1><p>Please try again later.</p></body></html>")


def parse_cases(spec: str | bool | None) -> frozenset[str]:
    """Case names from ``"all"``/``True``, a comma list, or nothing (``None``/``""``)."""
    if spec is True or (isinstance(spec, str) and spec.strip().lower() == "all"):
        return frozenset(CASES)
    if not spec:
        return frozenset()
    names = {part.strip() for part in str(spec).split(",") if part.strip()}
    unknown = sorted(names - set(CASES))
    if unknown:
        raise ValueError(f"unknown hostile case(s) {', '.join(unknown)}; "
                         f"cases are all, {', '.join(CASES)}")
    return frozenset(names)


@dataclass
class RawReply:
    """A reply written straight to the socket, because its headers lie."""

    write: Callable[[BaseHTTPRequestHandler], None]


@dataclass
class Hostile:
    """Which images each case corrupts, and how their responses are rewritten."""

    cases: frozenset[str]
    archive: Archive
    seed: int = 0
    decoy: Decoy | None = None

    @classmethod
    def parse(cls, spec: str | bool | None, archive: Archive, seed: int = 0) -> Hostile | None:
        """A plan for ``spec`` (see :func:`parse_cases`), or None when it names no case."""
        cases = parse_cases(spec)
        if not cases:
            return None
        plan = cls(cases, archive, seed)
        if "redirect" in cases:
            plan.decoy = Decoy.start()
        return plan

    def close(self) -> None:
        if self.decoy is not None:
            self.decoy.stop()

    # -- victims -----------------------------------------------------------------------------

    def variant(self, case: str, image_id: str | None) -> int | None:
        """0 or 1 when ``image_id`` is a victim of ``case`` (which way it lies), else None."""
        if case not in self.cases or image_id is None:
            return None
        i = self.archive.image_index(image_id)
        if i is None:
            return None
        start = _rng(self.seed, "hostile").randrange(PERIOD)
        if (i + start + CASES.index(case)) % PERIOD:  # each case its own victims
            return None
        return (i // PERIOD) % 2

    def victims(self, case: str) -> list[str]:
        """Ids of the images (listed now) that ``case`` corrupts."""
        ids = [self.archive.image_id(i) for i in self.archive.listed()]
        return [x for x in ids if self.variant(case, x) is not None]

    def hostile_name(self, image_id: str) -> str:
        i = self.archive.image_index(image_id) or 0
        return HOSTILE_NAMES[(i // PERIOD) % len(HOSTILE_NAMES)]

    def dataset_victim(self) -> str | None:
        datasets = self.archive.datasets()
        return datasets[self.seed % len(datasets)]["_id"] if datasets else None

    # -- hooks -------------------------------------------------------------------------------

    def rewrite_query(self, path: str, query: str) -> str:
        """``paging``: shift the offset of image listing pages after the first."""
        if "paging" not in self.cases or split_path(path) != ["image"]:
            return query
        params = dict(parse_qsl(query, keep_blank_values=True))
        if "imageIds" in params:
            return query
        try:
            offset, limit = int(params.get("offset", 0)), int(params.get("limit", 50))
        except ValueError:
            return query
        if offset <= 0 or limit <= 0:
            return query
        repeat = (offset // limit) % 2 == 1
        params["offset"] = str(max(0, offset - PAGING_SHIFT if repeat else offset + PAGING_SHIFT))
        return urlencode(params)

    def respond(self, path: str, query: str, response: Response) -> Response | RawReply:
        """The response a hostile archive sends instead of ``response``."""
        if response.status != 200:
            return response
        parts = split_path(path)
        params = dict(parse_qsl(query, keep_blank_values=True))
        if len(parts) == 3 and parts[0] == "image":
            return self._image_file(parts[1], parts[2], response)
        if parts[0] == "segmentation":
            return self._segmentation_json(parts, params, response)
        if parts == ["image"] and "ids" in self.cases and "imageIds" not in params:
            response = self._bad_listing(response)
        return self._rename(response)

    # -- files -------------------------------------------------------------------------------

    def _image_file(self, image_id: str, what: str, response: Response) -> Response | RawReply:
        if what == "superpixels" and (v := self.variant("superpixels", image_id)) is not None:
            return Response.file(_bad_superpixels(self.archive, image_id, v), "image/png")
        if what != "download":
            return response
        if (v := self.variant("html", image_id)) is not None:
            return Response(200, HTML_PAGE, {"Content-Type": ("text/html", "image/jpeg")[v]})
        if (v := self.variant("length", image_id)) is not None:
            declared = len(response.body) * 2 if v == 0 else len(response.body) // 2
            return RawReply(lambda h: _lying_length(h, response.body, declared))
        if (v := self.variant("endless", image_id)) is not None:
            return RawReply(lambda h: _endless(h, response.body[:2048],
                                               HUGE_LENGTH if v else None))
        if (v := self.variant("redirect", image_id)) is not None:
            target = ("http://example.invalid/ISIC.jpg" if v == 0
                      else f"{self.decoy.url}/api/v1/image/{image_id}/download")
            return Response(302, b"", {"Location": target})
        return response

    # -- JSON --------------------------------------------------------------------------------

    def _segmentation_json(self, parts: list[str], params: dict,
                           response: Response) -> Response:
        if len(parts) == 1:  # the list for one image
            image_id = params.get("imageId")
            if self.variant("json", image_id) == 0:
                return Response(200, response.body[:len(response.body) // 2],
                                {"Content-Type": "application/json"})
            if self.variant("ids", image_id) is not None:
                items = json.loads(response.body)
                items += items[:1] + [{**(items[:1] or [{}])[0], "_id": BAD_IDS[0]}]
                return Response.json(items)
            return response
        if len(parts) == 2:
            found = self.archive.segmentation_index(parts[1])
            image_id = self.archive.image_id(found[0]) if found else None
            if self.variant("json", image_id) == 1:  # a stray Latin-1 byte in a string
                body = response.body.replace(b'"created": "', b'"created": "\xff\xfe', 1)
                return Response(200, body, {"Content-Type": "application/json"})
        return response

    def _bad_listing(self, response: Response) -> Response:
        """``ids``: garbage ids and a duplicate of every victim in the image listing."""
        items = json.loads(response.body)
        dupes = [dict(s) for s in items if self.variant("ids", s.get("_id")) is not None]
        garbage = [{"_id": bad, "name": "ISIC_9999999", "updated": "2020-01-01T00:00:00+00:00"}
                   for bad in BAD_IDS]
        return Response.json(items + dupes + garbage)

    def _rename(self, response: Response) -> Response:
        """``names``: hostile names for victim images and one dataset, wherever they appear."""
        if "names" not in self.cases or "json" not in response.headers.get("Content-Type", ""):
            return response
        dataset = self.dataset_victim()

        def walk(value: object) -> object:
            if isinstance(value, list):
                return [walk(v) for v in value]
            if not isinstance(value, dict):
                return value
            out = {k: walk(v) for k, v in value.items()}
            if "name" in out and out.get("_id") == dataset:
                out["name"] = HOSTILE_DATASET_NAME
            elif "name" in out and self.variant("names", out.get("_id")) is not None:
                out["name"] = self.hostile_name(out["_id"])
            return out

        return Response.json(walk(json.loads(response.body)), response.status)


# -- raw replies -------------------------------------------------------------------------------


def _start_raw(handler: BaseHTTPRequestHandler, headers: dict[str, str]) -> None:
    handler.close_connection = True
    handler.send_response(200)
    for key, value in {"Content-Type": "image/jpeg", "Connection": "close", **headers}.items():
        handler.send_header(key, value)
    handler.end_headers()


def _close(handler: BaseHTTPRequestHandler) -> None:
    try:
        handler.wfile.flush()
        handler.connection.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # the client went first


def _lying_length(handler: BaseHTTPRequestHandler, body: bytes, declared: int) -> None:
    """The whole body under a wrong ``Content-Length``, then close (no keep-alive reuse)."""
    _start_raw(handler, {"Content-Length": str(declared)})
    try:
        handler.wfile.write(body)
    except OSError:
        pass
    _close(handler)


def _endless(handler: BaseHTTPRequestHandler, head: bytes, declared: int | None) -> None:
    """A JPEG start, then zeros until the client hangs up (or ``ENDLESS_CAP``)."""
    _start_raw(handler, {"Content-Length": str(declared)} if declared else {})
    chunk, sent = bytes(64 * 1024), 0
    try:
        handler.wfile.write(head)
        while sent < ENDLESS_CAP:
            handler.wfile.write(chunk)
            sent += len(chunk)
    except OSError:
        pass  # the client refused the body: what we hoped for
    _close(handler)


def _bad_superpixels(archive: Archive, image_id: str, variant: int) -> bytes:
    """Half the image's size (variant 0) or a grey ``L`` PNG of the right size (1)."""
    labels = blobs.superpixel_labels(archive, archive.image_index(image_id))
    if variant == 0:
        labels = labels[::2, ::2]
        rgb = np.stack([labels & 0xFF, (labels >> 8) & 0xFF, (labels >> 16) & 0xFF], axis=-1)
        image = Image.fromarray(rgb.astype(np.uint8), "RGB")
    else:
        image = Image.fromarray((labels & 0xFF).astype(np.uint8), "L")
    out = io.BytesIO()
    image.save(out, "PNG", compress_level=1)
    return out.getvalue()


# -- the decoy ---------------------------------------------------------------------------------


class Decoy:
    """Another loopback 'host' that redirects point to: serves a JPEG, records every hit."""

    def __init__(self, server: ThreadingHTTPServer, hits: list[dict]):
        self.server = server
        self.hits = hits  # {"path", "token"} per request

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    @classmethod
    def start(cls) -> Decoy:
        hits: list[dict] = []
        out = io.BytesIO()
        Image.new("RGB", (8, 8), (200, 40, 40)).save(out, "JPEG")
        jpeg = out.getvalue()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - stdlib naming
                hits.append({"path": self.path, "token": self.headers.get("Girder-Token")})
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(len(jpeg)))
                self.end_headers()
                self.wfile.write(jpeg)

            def log_message(self, *args) -> None:
                pass  # the test reads ``hits``

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, name="decoy", daemon=True).start()
        return cls(server, hits)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


__all__ = ["CASES", "Decoy", "Hostile", "RawReply", "parse_cases"]
