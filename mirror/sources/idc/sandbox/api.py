"""The sandbox's HTTP face: IDC's REST API v1 (as it worked, and as it is now: 410) and a
hostile S3 listing endpoint for faults SeaweedFS cannot hold.

v1 (seed ``idc-api-v1-access.md``; research note ``tcia_idc.md`` §2.2, §2.4): ``GET
/v1/about``, ``/v1/versions``, ``/v1/collections`` (no auth), ``POST
/v1/cohorts/manifest/preview`` (filters in the body, fields as query booleans,
``_page_size``) and ``GET /v1/cohorts/manifest/nextPage`` (``next_page``, ``page_size``).
Every body carries ``"code"``; row values are strings, GUIDs ``dg.4DFC/<uuid>``; the last
page's ``next_page`` is ``""``. Tokens are opaque and signed: a forged one answers 400
``Invalid next_page token``. Pages listed in ``timeout_pages`` first answer **202** with the
token to resubmit through ``nextPage``, as a BigQuery job that outlived the request did.
With ``deprecated`` on, every v1 route answers as IDC's switched-off service does today:
GET 410 with its JSON message, POST 405, anything else 404.

Any other path is the hostile S3 endpoint: the bucket name picks the fault
(:data:`HOSTILE_BUCKETS` for listings, :data:`HOSTILE_READS` for GETs), and S3's own XML
answers. SeaweedFS refuses to store ``..`` keys and folds ``//``, no real store lists
forever, and none cuts a body short on purpose, so these live here.

Starlette (with uvicorn) serves both: the routes are plain request -> JSON functions, and
nothing here needs the raw socket.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import re
import secrets
import socket
import threading
import time
import uuid
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from xml.sax.saxutils import escape

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route

from mirror.errors import SandboxError

DEFAULT_PAGE_SIZE = 1000
MAX_PAGE_SIZE = 100_000
KEPT_JOBS = 64
"""Query jobs the v1 emulator remembers for nextPage (oldest dropped first)."""
DEPRECATED_MESSAGE = "IDC v1 API endpoints have been deprecated"
DOCUMENTATION = "https://learn.canceridc.dev/api/getting-started"
TIMEOUT_MESSAGE = ("[ERROR] API query took longer than the allowed time to execute. "
                   "Retry the query using the next_page token.")
V1_GET_STUBS = ("/about", "/versions", "/collections", "/analysis_results", "/attributes",
                "/cohorts", "/cohorts/manifest", "/cohorts/manifest/preview",
                "/cohorts/manifest/nextPage", "/cohorts/query", "/cohorts/query/preview")
MANIFEST_FIELDS = ("Collection_ID", "Patient_ID", "StudyInstanceUID", "SeriesInstanceUID",
                   "SOPInstanceUID", "Source_DOI", "CRDC_Study_GUID", "CRDC_Series_GUID",
                   "CRDC_Instance_GUID", "GCS_URL")
FILTERS = {"collection_id": "Collection_ID", "patientid": "Patient_ID",
           "studyinstanceuid": "StudyInstanceUID", "seriesinstanceuid": "SeriesInstanceUID",
           "sopinstanceuid": "SOPInstanceUID", "source_doi": "Source_DOI",
           "modality": "Modality", "license_short_name": "license_short_name"}
HOSTILE_BUCKETS = ("hostile-endless", "hostile-loop", "hostile-many", "hostile-traversal",
                   "hostile-absolute", "hostile-foreign", "hostile-notdcm")
"""Buckets of the hostile S3 endpoint, each listing one fault under any series prefix:
endless: every page claims more, with a new token; loop: the same token again and again;
many: 5,000 well-formed keys (more than any small series may hold); traversal: a
``<uuid>/../../etc/passwd.dcm`` key; absolute: a ``/<uuid>/x.dcm`` key; foreign: a key
outside the prefix; notdcm: a key not ending ``.dcm``."""
MANY_KEYS = 5000
HOSTILE_READS = ("hostile-short", "hostile-bigger", "hostile-denied", "hostile-stall",
                 "hostile-flaky")
"""Buckets whose listing is one well-formed 1,000-byte key and whose GETs misbehave:
short: announces 1,000 bytes, sends 500 and closes; bigger: sends 2,000; denied: 403
AccessDenied; stall: sends 100 bytes, then nothing for a minute; flaky: 503 SlowDown on the
first GET of each key, the 1,000 bytes on the next."""
READ_SIZE = 1000


@dataclass
class V1State:
    """What the v1 emulator serves and how it misbehaves."""

    rows: list[dict]  # one per instance: MANIFEST_FIELDS plus Modality, license_short_name
    collections: list[dict]
    release: int
    deprecated: bool = False
    timeout_pages: set[int] = field(default_factory=set)  # 0-based pages answering 202 once
    secret: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    jobs: OrderedDict = field(default_factory=OrderedDict)
    stats: Counter = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)


def error(status: int, message: str, **extra) -> JSONResponse:
    return JSONResponse({"code": status, "message": message, **extra}, status_code=status)


# -- tokens --------------------------------------------------------------------------------

def make_token(state: V1State, job: str, offset: int) -> str:
    body = base64.urlsafe_b64encode(json.dumps(
        {"email": "Anonymous", "job": job, "offset": offset}).encode()).decode().rstrip("=")
    sig = hmac.new(state.secret, body.encode(), hashlib.sha256).hexdigest()[:32]
    return f"{body}.{sig}"


def read_token(state: V1State, token: str) -> tuple[str, int] | None:
    body, _, sig = token.rpartition(".")
    good = hmac.new(state.secret, body.encode(), hashlib.sha256).hexdigest()[:32]
    if not body or not hmac.compare_digest(sig, good):
        return None
    try:
        data = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        return str(data["job"]), int(data["offset"])
    except (ValueError, KeyError, TypeError):
        return None


# -- v1 routes -----------------------------------------------------------------------------

def v1_app_routes(state: V1State) -> list[Route]:
    async def about(request: Request) -> Response:
        return JSONResponse({"code": 200, "message": "NCI IDC API (sandbox)",
                             "documentation": DOCUMENTATION})

    async def versions(request: Request) -> Response:
        return JSONResponse({"code": 200, "versions": [
            {"idc_data_version": f"{state.release}.0", "active": True,
             "version_number": state.release}]})

    async def collections(request: Request) -> Response:
        state.stats["collections"] += 1
        return JSONResponse({"code": 200, "collections": state.collections})

    async def preview(request: Request) -> Response:
        state.stats["preview"] += 1
        fields = _fields(request)
        if isinstance(fields, Response):
            return fields
        size = _page_size(request, "_page_size", "page_size")
        if isinstance(size, Response):
            return size
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError:
            return error(400, "The JSON provided in this request appears to be "
                              "improperly formatted.")
        filters = body.get("filters", {}) if isinstance(body, dict) else None
        if not isinstance(filters, dict):
            return error(400, "filters must be an object of attribute: [values]")
        matched = _filter(state.rows, filters)
        if isinstance(matched, Response):
            return matched
        job = uuid.uuid4().hex
        with state.lock:
            state.jobs[job] = {"rows": [{f: r[f] for f in fields} for r in matched],
                               "timed_out": set()}
            while len(state.jobs) > KEPT_JOBS:
                state.jobs.popitem(last=False)
        cohort = {"name": body.get("name", ""), "description": body.get("description", ""),
                  "filterSet": {"idc_data_version": f"{state.release}.0", "filters": filters}}
        return _page(state, job, 0, size, cohort=cohort)

    async def next_page(request: Request) -> Response:
        state.stats["nextPage"] += 1
        token = request.query_params.get("next_page")
        if not token:
            return error(400, "A next_page token is required")
        size = _page_size(request, "page_size", "_page_size")
        if isinstance(size, Response):
            return size
        parsed = read_token(state, token)
        if parsed is None or parsed[0] not in state.jobs:
            return error(400, f"Invalid next_page token {token}")
        return _page(state, parsed[0], parsed[1], size)

    return [Route("/about", about), Route("/versions", versions),
            Route("/collections", collections),
            Route("/cohorts/manifest/preview", preview, methods=["POST"]),
            Route("/cohorts/manifest/nextPage", next_page)]


def _page(state: V1State, job: str, offset: int, size: int, cohort: dict | None = None
          ) -> Response:
    """One page of a job's rows, or the 202 that stands in for a timed-out query."""
    with state.lock:
        record = state.jobs[job]
        page_number = offset // size if size else 0
        if page_number in state.timeout_pages and offset not in record["timed_out"]:
            record["timed_out"].add(offset)
            state.stats["202"] += 1
            return JSONResponse({"next_page": make_token(state, job, offset),
                                 "message": TIMEOUT_MESSAGE, "code": 202}, status_code=202)
        rows = record["rows"]
    chunk = rows[offset:offset + size]
    end = offset + len(chunk)
    body = {"code": 200,
            "manifest": {"totalFound": len(rows), "rowsReturned": len(chunk),
                         "json_manifest": chunk},
            "next_page": make_token(state, job, end) if end < len(rows) else ""}
    if cohort is not None:
        body = {"code": 200, "cohort": cohort, **{k: v for k, v in body.items() if k != "code"}}
    return JSONResponse(body)


def _fields(request: Request) -> list[str] | Response:
    chosen = []
    for key, value in request.query_params.items():
        if key in ("_page_size", "page_size", "sql"):
            continue
        if key not in MANIFEST_FIELDS:
            return error(400, f"Invalid key {key}")
        if value.lower() == "true":
            chosen.append(key)
        elif value.lower() != "false":
            return error(400, f"Invalid value {value} for {key}: use True or False")
    if not chosen:
        return error(400, "At least one of " + ", ".join(MANIFEST_FIELDS) + " must be True")
    return [f for f in MANIFEST_FIELDS if f in chosen]


def _page_size(request: Request, *names: str) -> int | Response:
    for name in names:
        raw = request.query_params.get(name)
        if raw is None:
            continue
        try:
            size = int(raw)
        except ValueError:
            return error(400, "Invalid page_size")
        if not 1 <= size <= MAX_PAGE_SIZE:
            return error(400, f"Invalid page_size: use 1 to {MAX_PAGE_SIZE}")
        return size
    return DEFAULT_PAGE_SIZE


def _filter(rows: list[dict], filters: dict) -> list[dict] | Response:
    """AND across attributes, OR within a list; case-insensitive, ``%`` as a wildcard."""
    tests = []
    for attr, values in filters.items():
        column = FILTERS.get(str(attr).lower())
        if column is None:
            return error(400, f"Invalid filter {attr}")
        values = values if isinstance(values, list) else [values]
        patterns = [re.compile("^" + ".*".join(re.escape(str(v)) for v in str(v).split("%"))
                               + "$", re.IGNORECASE | re.DOTALL) for v in values]
        tests.append((column, patterns))
    return [r for r in rows
            if all(any(p.match(str(r[c])) for p in pats) for c, pats in tests)]


def deprecated_routes() -> list[Route]:
    """Today's v1: the GET stubs answer 410, POST 405 (Starlette), other paths 404."""
    async def gone(request: Request) -> Response:
        return JSONResponse({"code": 410, "message": DEPRECATED_MESSAGE,
                             "documentation": DOCUMENTATION}, status_code=410)
    return [Route(path, gone, methods=["GET"]) for path in V1_GET_STUBS]


# -- hostile S3 ----------------------------------------------------------------------------

def hostile_s3(state: V1State):
    flaky: set[str] = set()

    async def listing(request: Request) -> Response:
        bucket = request.path_params["bucket"]
        if bucket not in HOSTILE_BUCKETS + HOSTILE_READS:
            return _s3_error(404, "NoSuchBucket", f"/{bucket}")
        if request.query_params.get("list-type") != "2":
            return _s3_error(400, "InvalidRequest", f"/{bucket}")
        state.stats[f"s3:{bucket}"] += 1
        prefix = request.query_params.get("prefix", "")
        token = request.query_params.get("continuation-token")
        return _hostile_page(bucket, prefix, token)

    async def get_object(request: Request) -> Response:
        bucket, key = request.path_params["bucket"], request.path_params["key"]
        state.stats[f"s3get:{bucket}"] += 1
        if bucket == "hostile-flaky" and key not in flaky:
            flaky.add(key)
            return _s3_error(503, "SlowDown", request.url.path)
        if bucket in HOSTILE_READS:
            return _hostile_read(bucket, request.url.path)
        return _s3_error(404, "NoSuchKey", request.url.path)

    return [Route("/{bucket}", listing), Route("/{bucket}/", listing),
            Route("/{bucket}/{key:path}", get_object)]


def _hostile_page(bucket: str, prefix: str, token: str | None) -> Response:
    name = f"{uuid.uuid4()}.dcm"
    truncated, next_token, keys = False, None, [prefix + name]
    if bucket == "hostile-endless":
        truncated, next_token = True, uuid.uuid4().hex
    elif bucket == "hostile-loop":
        truncated, next_token = True, "the-same-token"
    elif bucket == "hostile-many":
        start = int(token or 0)
        keys = [f"{prefix}{uuid.UUID(int=i)}.dcm" for i in range(start, min(start + 1000,
                                                                            MANY_KEYS))]
        truncated = start + 1000 < MANY_KEYS
        next_token = str(start + 1000) if truncated else None
    elif bucket == "hostile-traversal":
        keys = [prefix + name, prefix + "../../etc/passwd.dcm"]
    elif bucket == "hostile-absolute":
        keys = ["/" + prefix + name]
    elif bucket == "hostile-foreign":
        keys = [prefix + name, f"{uuid.uuid4()}/{name}"]
    elif bucket == "hostile-notdcm":
        keys = [prefix + name, prefix + "index.html"]
    contents = "".join(
        f"<Contents><Key>{escape(k)}</Key><LastModified>2026-09-26T00:00:00.000Z</LastModified>"
        f"<ETag>&quot;{hashlib.md5(k.encode()).hexdigest()}&quot;</ETag><Size>{READ_SIZE}</Size>"
        "<StorageClass>STANDARD</StorageClass></Contents>" for k in keys)
    more = f"<NextContinuationToken>{escape(next_token)}</NextContinuationToken>" \
        if next_token else ""
    xml = ('<?xml version="1.0" encoding="UTF-8"?>\n<ListBucketResult xmlns="http://s3.'
           f'amazonaws.com/doc/2006-03-01/"><Name>{escape(bucket)}</Name><Prefix>'
           f'{escape(prefix)}</Prefix><KeyCount>{len(keys)}</KeyCount><MaxKeys>1000</MaxKeys>'
           f'<IsTruncated>{"true" if truncated else "false"}</IsTruncated>{more}{contents}'
           "</ListBucketResult>")
    return Response(xml, media_type="application/xml")


def _hostile_read(bucket: str, resource: str) -> Response:
    body = bytes(range(256)) * 8
    if bucket == "hostile-denied":
        return _s3_error(403, "AccessDenied", resource)
    if bucket == "hostile-bigger":
        return Response(body[:2 * READ_SIZE], media_type="application/dicom")
    if bucket in ("hostile-short", "hostile-stall"):
        async def cut() -> AsyncIterator[bytes]:
            yield body[:READ_SIZE // 2 if bucket == "hostile-short" else 100]
            if bucket == "hostile-stall":
                await asyncio.sleep(60)
        # The declared length is a lie the server cannot keep: it closes the connection.
        return StreamingResponse(cut(), headers={"content-length": str(READ_SIZE)},
                                 media_type="application/dicom")
    return Response(body[:READ_SIZE], media_type="application/dicom")


def _s3_error(status: int, code: str, resource: str) -> Response:
    xml = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>'
           f"{code}</Message><Resource>{escape(resource)}</Resource></Error>")
    return Response(xml, status_code=status, media_type="application/xml")


# -- serving -------------------------------------------------------------------------------

def build_app(state: V1State, deprecated: bool | None = None) -> Starlette:
    """The v1 routes (live, or switched off) and the hostile S3 routes over ``state``."""
    gone = state.deprecated if deprecated is None else deprecated
    v1 = deprecated_routes() if gone else v1_app_routes(state)
    # Mounted, so a v1 path never reaches the S3 routes: wrong methods get 405, others 404.
    return Starlette(routes=[Mount("/v1", routes=v1), *hostile_s3(state)])


class HttpServer:
    """A uvicorn server on a free loopback port, in a daemon thread."""

    def __init__(self, app: Starlette):
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind(("127.0.0.1", 0))
        self.port = self.socket.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run,
                                       kwargs={"sockets": [self.socket]},
                                       name="idc-sandbox-http", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise SandboxError("the IDC sandbox's HTTP server did not start within 10 s")
            time.sleep(0.02)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.socket.close()
