"""The shape of the ISIC Archive API v1: routes, parameters, paging, JSON and error bodies.

One route table serves two faces: the sandbox (a synthetic archive, for tests and demos)
and ``mirror serve`` (a synced mirror, for a lab). What differs between them is only where
the documents and files come from, a :class:`V1Backend`; everything a client can see —
which parameters are accepted, how a page is cut, which error body a bad id gets, which
headers a file carries — is decided here, once, so the two cannot drift apart.

Each handler takes a :class:`Request` and returns a :class:`Response`; Girder-style
errors are raised as :class:`RestError` and rendered the way Girder renders them
(``{"message", "type"[, "field"]}`` with Girder's status codes).
"""

from __future__ import annotations

import base64
import json
import logging
import re
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol
from urllib.parse import parse_qsl, unquote

log = logging.getLogger("mirror.isic_v1.shape")
API_ROOT = "/api/v1"
OBJECT_ID = re.compile(r"^[0-9a-f]{24}$")
TRUE = {"true", "on", "1", "yes"}
NOT_FOUND_HTML = (b"<!DOCTYPE html><html><head><title>404 Not Found</title></head><body>"
                  b"<h1>404 Not Found</h1><p>The path was not found.</p></body></html>")
IMAGE_SORTS = ("_id", "name", "created")


class RestError(Exception):
    def __init__(self, status: int, message: str, kind: str = "rest", **extra):
        super().__init__(message)
        self.status, self.body = status, {"message": message, "type": kind, **extra}


@dataclass
class Request:
    method: str
    parts: list[str]  # path segments after /api/v1, percent-decoded one by one
    params: dict[str, str]
    user: dict | None
    basic_auth: str | None = None


@dataclass
class Response:
    """A reply: ``body`` in memory, or ``path`` (a stored file, streamed by the server).

    ``sha256`` (a file's, when known) becomes the ETag of a served file."""

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    path: Path | None = None
    sha256: str | None = None

    @classmethod
    def json(cls, value: object, status: int = 200) -> Response:
        data = json.dumps(value, sort_keys=True, allow_nan=False).encode()
        return cls(status, data, {"Content-Type": "application/json"})

    @classmethod
    def file(cls, data: bytes | Path, content_type: str, filename: str | None = None,
             disposition: str | None = "attachment", sha256: str | None = None) -> Response:
        headers = {"Content-Type": content_type, "Accept-Ranges": "bytes"}
        if filename and disposition:
            headers["Content-Disposition"] = f'{disposition}; filename="{filename}"'
        if isinstance(data, Path):
            return cls(200, b"", headers, path=data, sha256=sha256)
        return cls(200, data, headers, sha256=sha256)

    def content(self) -> bytes:
        """The body's bytes (a stored file read whole: for the sandbox's plain server)."""
        return self.path.read_bytes() if self.path is not None else self.body


@dataclass(frozen=True)
class ImageQuery:
    """One image listing, checked: what the backend must list (``limit`` 0: no limit)."""

    limit: int
    offset: int
    sort: str
    sortdir: int
    name: str | None = None
    ids: frozenset[str] | None = None
    detail: bool = False


class V1Backend(Protocol):
    """Where an ISIC v1 face gets its documents and files. Every method works by id.

    ``private``: the caller may see non-public objects. Lookups return None for an
    unknown id; ``(doc, public)`` pairs let the shape refuse a private object with the
    archive's own 401. File methods return a :class:`Response` made by
    :meth:`Response.file` (or raise :class:`RestError`)."""

    def list_images(self, private: bool, query: ImageQuery) -> list[dict]: ...
    def image_details(self, private: bool) -> Iterable[dict]: ...
    def image(self, image_id: str) -> tuple[dict, bool] | None: ...
    def image_file(self, doc: dict, role: str, disposition: str) -> Response: ...
    def thumbnail(self, doc: dict, box: int) -> Response: ...
    def segmentations(self, image_id: str) -> list[dict]: ...
    def segmentation(self, seg_id: str) -> dict | None: ...
    def mask(self, seg: dict, image: dict, disposition: str) -> Response: ...
    def segmentation_thumbnail(self, seg: dict, image: dict, width: int,
                               disposition: str) -> Response: ...
    def datasets(self, private: bool) -> list[dict]: ...
    def dataset(self, dataset_id: str) -> tuple[dict, bool] | None: ...
    def dataset_detail(self, doc: dict) -> dict: ...
    def studies(self, private: bool) -> list[dict]: ...
    def study(self, study_id: str) -> tuple[dict, bool] | None: ...
    def annotations(self, study_id: str) -> list[dict]: ...
    def annotation(self, annotation_id: str) -> dict | None: ...
    def markup_values(self, annotation: dict, feature: str) -> list[float]: ...
    def markup_file(self, annotation: dict, feature: str, values: list[float],
                    rendered: bool, name: str, disposition: str) -> Response: ...
    def login(self, login: str, password: str) -> dict | None: ...
    def user_for_token(self, token: str | None) -> dict | None: ...


def split_path(raw_path: str) -> list[str]:
    """Split on '/' first, then decode each segment (so %2F stays inside a feature id)."""
    return [unquote(p) for p in raw_path.split("/") if p]


def _bool(params: dict, key: str) -> bool:
    return params.get(key, "").strip().lower() in TRUE


def paging(params: dict, default_sort: str, default_dir: int = 1) -> tuple[int, int, str, int]:
    """Girder's ``limit``/``offset``/``sort``/``sortdir``, checked (``limit`` 0: all)."""
    try:
        limit, offset = int(params.get("limit", 50)), int(params.get("offset", 0))
        sortdir = int(params.get("sortdir", default_dir))
    except ValueError:
        raise RestError(400, "Invalid value for offset, limit, or sortdir parameter.") from None
    if sortdir not in (1, -1):
        raise RestError(400, "Invalid value for sortdir parameter.")
    if limit < 0 or offset < 0:
        raise RestError(400, "Invalid value for offset, limit, or sortdir parameter.")
    return limit, offset, params.get("sort", default_sort).strip(), sortdir


def page(items: list, limit: int, offset: int) -> list:
    """One page of an in-memory listing, as Girder cuts it (``limit`` 0: the rest)."""
    return items[offset:offset + limit] if limit else items[offset:]


def _object_id(value: str, field_name: str = "id") -> str:
    if not OBJECT_ID.match(value):
        raise RestError(400, f"Invalid ObjectId: {value}", "validation", field=field_name)
    return value


def _require(params: dict, key: str) -> str:
    if key not in params:
        raise RestError(400, f'Parameter "{key}" is required.')
    return params[key]


def _disposition(params: dict, default: str = "attachment") -> str:
    value = params.get("contentDisposition", default)
    if value not in ("inline", "attachment"):
        raise RestError(400, f'Unallowed contentDisposition type "{value}".', "validation",
                        field="contentDisposition")
    return value


def summary_fields(dataset: dict) -> dict:
    """A dataset summary as the archive lists it (``filterSummary``)."""
    return {k: dataset[k] for k in ("_accessLevel", "_id", "description", "license", "name",
                                    "updated") if k in dataset}


def segmentation_summary(detail: dict) -> dict:
    expert = any(r.get("skill") == "expert" for r in detail.get("reviews") or [])
    return {"_id": detail["_id"], "created": detail.get("created"),
            "failed": detail.get("failed"), "skill": "expert" if expert else "novice"}


def annotation_summary(detail: dict) -> dict:
    return {"_id": detail["_id"], "imageId": (detail.get("image") or {}).get("_id"),
            "state": detail.get("state"), "studyId": detail.get("studyId"),
            "userId": (detail.get("user") or {}).get("_id")}


def markup_name(feature: str) -> str:
    return feature.replace(" : ", " ; ").replace("/", ",")


def study_features(study: dict) -> list[str]:
    return [f.get("id") for f in study.get("features") or [] if isinstance(f, dict)]


class V1Api:
    """Routes ``/api/v1/...`` requests to handlers over one :class:`V1Backend`."""

    accepts_bearer = False  # ``mirror serve`` takes its --token-file token this way too
    face = "The sandbox"  # who says what it does not implement (mirror serve: "This mirror")
    instead = ""  # ... and what to use instead

    def __init__(self, backend: V1Backend):
        self.backend = backend
        self.routes: list[tuple[str, tuple[str, ...], Callable[..., Response]]] = [
            ("image", (), self.list_images),
            ("image", ("histogram",), self.image_histogram),
            ("image", ("{id}",), self.get_image),
            ("image", ("{id}", "download"), self.download_image),
            ("image", ("{id}", "thumbnail"), self.image_thumbnail),
            ("image", ("{id}", "superpixels"), self.image_superpixels),
            ("segmentation", (), self.list_segmentations),
            ("segmentation", ("{id}",), self.get_segmentation),
            ("segmentation", ("{id}", "mask"), self.segmentation_mask),
            ("segmentation", ("{id}", "thumbnail"), self.segmentation_thumbnail),
            ("dataset", (), self.list_datasets),
            ("dataset", ("{id}",), self.get_dataset),
            ("dataset", ("{id}", "access"), self.dataset_admin_only),
            ("dataset", ("{id}", "metadata"), self.dataset_admin_only),
            ("dataset", ("{id}", "review"), self.dataset_admin_only),
            ("study", (), self.list_studies),
            ("study", ("{id}",), self.get_study),
            ("annotation", (), self.list_annotations),
            ("annotation", ("{id}",), self.get_annotation),
            ("annotation", ("{id}", "markup", "{f}", "superpixels"), self.markup_values),
            ("annotation", ("{id}", "markup", "{f}", "rendered"), self.markup_rendered),
            ("annotation", ("{id}", "markup", "{f}"), self.markup_mask),
            ("annotation", ("{id}", "{f}", "mask"), self.markup_mask),
            ("annotation", ("{id}", "{f}", "render"), self.markup_rendered),
            ("annotation", ("{id}", "{f}"), self.markup_values),
            ("user", ("authentication",), self.authenticate),
            ("user", ("me",), self.me),
        ]

    # -- routing -----------------------------------------------------------------------------

    def route(self, request: Request) -> tuple[str, Response]:
        """(route pattern for statistics, response)."""
        resource, rest = request.parts[0], request.parts[1:]
        for name, shape, handler in self.routes:
            if name != resource or len(shape) != len(rest) or request.method != "GET":
                continue
            args = [v for s, v in zip(shape, rest, strict=True) if s.startswith("{")]
            if all(s.startswith("{") or s == v for s, v in zip(shape, rest, strict=True)):
                pattern = "GET /" + "/".join((name, *shape))
                return pattern, handler(request, *args)
        raise RestError(400, f'No matching route for "{request.method} {"/".join(rest)}"')

    def resources(self) -> set[str]:
        return {name for name, _, _ in self.routes}

    def user_for_token(self, token: str | None) -> dict | None:
        return self.backend.user_for_token(token)

    def handle(self, method: str, path: str, query: str,
               headers: Mapping[str, str]) -> tuple[str, Response]:
        """One request below ``/api/v1`` as both faces parse it: (pattern, response).

        Repeated parameters are refused, an unknown resource is Girder's HTML 404, the
        token comes from ``Girder-Token``, the ``token`` parameter or (``mirror serve``)
        ``Authorization: Bearer``, and an unexpected exception is Girder's production-mode
        500 with a request uid."""
        pairs = parse_qsl(query, keep_blank_values=True)
        keys = [k for k, _ in pairs]
        parts = split_path(path)
        pattern = f"{method} /{parts[0] if parts else ''}"
        try:
            repeated = sorted({k for k in keys if keys.count(k) > 1})
            if repeated:
                raise RestError(400, f'Parameter "{repeated[0]}" must not be specified '
                                "multiple times.")
            params = dict(pairs)
            if not parts or parts[0] not in self.resources():
                return pattern, Response(404, NOT_FOUND_HTML, {"Content-Type": "text/html"})
            auth = headers.get("Authorization", "") or ""
            token = headers.get("Girder-Token") or params.pop("token", None)
            if not token and self.accepts_bearer and auth.startswith("Bearer "):
                token = auth[7:].strip()
            request = Request(method, parts, params, self.user_for_token(token),
                              auth[6:] if auth.startswith("Basic ") else None)
            return self.route(request)
        except RestError as err:
            return pattern, Response.json(err.body, err.status)
        except Exception:  # noqa: BLE001 - Girder's production-mode internal error
            log.exception("error on %s", path)
            return pattern, Response.json({
                "message": "An unexpected error occurred on the server.",
                "type": "internal", "uid": str(uuid.uuid4())}, 500)

    # -- images ------------------------------------------------------------------------------

    def _image(self, image_id: str, user: dict | None) -> dict:
        _object_id(image_id)
        found = self.backend.image(image_id)
        if found is None:
            raise RestError(400, f"Invalid item id ({image_id}).")
        doc, public = found
        if not public and user is None:
            raise RestError(401, f"Read access denied for item {image_id} (user None).",
                            "access")
        return doc

    def list_images(self, req: Request) -> Response:
        p = req.params
        limit, offset, sort, sortdir = paging(p, "name")
        if sort not in IMAGE_SORTS:
            raise RestError(400, 'Sort may only be done on "_id", "name", or "created" fields.')
        if sum(k in p for k in ("name", "filter", "imageIds")) > 1:
            raise RestError(400, 'Only one of "name", "filter", or "imageIds" may be given.')
        if "filter" in p:
            raise RestError(400, f"{self.face} does not implement the filter query "
                            f"language.{self.instead}")
        ids = frozenset(self._image_ids(p["imageIds"])) if "imageIds" in p else None
        query = ImageQuery(limit, offset, sort, sortdir, p.get("name"), ids, _bool(p, "detail"))
        return Response.json(self.backend.list_images(req.user is not None, query))

    @staticmethod
    def _image_ids(raw: str) -> set[str]:
        try:
            ids = json.loads(raw)
        except ValueError:
            ids = None
        if not isinstance(ids, list) or len(ids) > 300 or not all(
                isinstance(x, str) and OBJECT_ID.match(x) for x in ids):
            raise RestError(400, "Invalid value for imageIds: a JSON list of at most 300 "
                            "ObjectIds is required.", "validation", field="imageIds")
        return set(ids)

    def image_histogram(self, req: Request) -> Response:
        """Facet counts over the images the caller may read (research §5.8)."""
        if "filter" in req.params:
            raise RestError(400, f"{self.face} does not implement the filter query "
                            f"language.{self.instead}")
        return Response.json(histogram(list(self.backend.image_details(req.user is not None))))

    def get_image(self, req: Request, image_id: str) -> Response:
        return Response.json(self._image(image_id, req.user))

    def download_image(self, req: Request, image_id: str) -> Response:
        doc = self._image(image_id, req.user)
        return self.backend.image_file(doc, "image", _disposition(req.params))

    def image_thumbnail(self, req: Request, image_id: str) -> Response:
        doc = self._image(image_id, req.user)
        try:
            box = min(int(req.params.get("width", 256)), int(req.params.get("height", 256)))
        except ValueError:
            raise RestError(400, "Invalid value for width or height.") from None
        return self.backend.thumbnail(doc, max(1, box))

    def image_superpixels(self, req: Request, image_id: str) -> Response:
        doc = self._image(image_id, req.user)
        return self.backend.image_file(doc, "superpixels", "attachment")

    # -- segmentations -------------------------------------------------------------------------

    def list_segmentations(self, req: Request) -> Response:
        image_id = _object_id(_require(req.params, "imageId"), "imageId")
        self._image(image_id, req.user)
        limit, offset, sort, sortdir = paging(req.params, "created", -1)
        items = [segmentation_summary(d) for d in self.backend.segmentations(image_id)]
        items.sort(key=lambda s: (s.get(sort) is None, s.get(sort)), reverse=sortdir == -1)
        return Response.json(page(items, limit, offset))

    def _segmentation(self, seg_id: str, user: dict | None) -> tuple[dict, dict]:
        _object_id(seg_id)
        seg = self.backend.segmentation(seg_id)
        found = seg and self.backend.image(seg.get("imageId") or "")
        if not found:
            raise RestError(400, f"Invalid segmentation id ({seg_id}).")
        if not found[1] and user is None:
            raise RestError(401, f"Read access denied for item {seg['imageId']} (user None).",
                            "access")
        return seg, found[0]

    def get_segmentation(self, req: Request, seg_id: str) -> Response:
        return Response.json(self._segmentation(seg_id, req.user)[0])

    def segmentation_mask(self, req: Request, seg_id: str) -> Response:
        seg, image = self._segmentation(seg_id, req.user)
        if seg.get("failed"):
            raise RestError(410, "This segmentation is failed, and thus has no mask.")
        return self.backend.mask(seg, image, _disposition(req.params))

    def segmentation_thumbnail(self, req: Request, seg_id: str) -> Response:
        """The image with the mask's outline (the real one draws it green), as JPEG."""
        seg, image = self._segmentation(seg_id, req.user)
        if seg.get("failed"):
            raise RestError(410, "This segmentation is failed, and thus has no thumbnail.")
        try:
            width = max(1, int(req.params.get("width", 256)))
        except ValueError:
            raise RestError(400, "Invalid value for width.") from None
        return self.backend.segmentation_thumbnail(seg, image, width,
                                                   _disposition(req.params, "inline"))

    # -- datasets ------------------------------------------------------------------------------

    def list_datasets(self, req: Request) -> Response:
        limit, offset, sort, sortdir = paging(req.params, "name")
        items = sorted(self.backend.datasets(req.user is not None),
                       key=lambda d: str(d.get(sort, "")), reverse=sortdir == -1)
        chosen = page(items, limit, offset)
        detail = _bool(req.params, "detail")
        return Response.json([self.backend.dataset_detail(d) if detail else summary_fields(d)
                              for d in chosen])

    def _dataset(self, dataset_id: str, user: dict | None) -> dict:
        _object_id(dataset_id)
        found = self.backend.dataset(dataset_id)
        if found is None:
            raise RestError(400, f"Invalid dataset id ({dataset_id}).")
        if not found[1] and user is None:
            raise RestError(401, f"Read access denied for folder {dataset_id} (user None).",
                            "access")
        return found[0]

    def get_dataset(self, req: Request, dataset_id: str) -> Response:
        return Response.json(self.backend.dataset_detail(self._dataset(dataset_id, req.user)))

    def dataset_admin_only(self, req: Request, dataset_id: str) -> Response:
        """``access``, ``metadata``, ``review``: ``@access.user`` routes for dataset admins
        and QC reviewers. Anonymous callers get 401; a logged-in reader is neither (403)."""
        if req.user is None:
            raise RestError(401, "You must be logged in.", "access")
        self._dataset(dataset_id, req.user)
        raise RestError(403, f"Admin access denied for dataset {dataset_id} (user "
                        f"{req.user['_id']}).", "access")

    # -- studies and annotations -----------------------------------------------------------------

    def _study(self, study_id: str, user: dict | None) -> dict:
        _object_id(study_id)
        found = self.backend.study(study_id)
        if found is None:
            raise RestError(400, f"Invalid folder id ({study_id}).")
        if not found[1] and user is None:
            raise RestError(401, f"Read access denied for folder {study_id} (user None).",
                            "access")
        return found[0]

    def list_studies(self, req: Request) -> Response:
        p = req.params
        limit, offset, sort, sortdir = paging(p, "lowerName")
        state = p.get("state")
        if state is not None and state not in ("active", "complete"):
            raise RestError(400, 'Value for state must be one of ["active", "complete"].',
                            "validation", field="state")
        user_id = p.get("userId")
        if user_id == "me" and req.user:
            user_id = req.user["_id"]
        docs = self.backend.studies(req.user is not None)
        if state or user_id:
            docs = [d for d in docs if self._has_annotation(d, state, user_id)]
        docs.sort(key=lambda d: d["name"].lower() if sort == "lowerName" else str(d.get(sort)),
                  reverse=sortdir == -1)
        chosen = page(docs, limit, offset)
        keys = ("_id", "description", "name", "updated")
        return Response.json(chosen if _bool(p, "detail") else [{k: d[k] for k in keys}
                                                                 for d in chosen])

    def _has_annotation(self, study: dict, state: str | None, user_id: str | None) -> bool:
        return any((state is None or a["state"] == state) and
                   (user_id is None or a["userId"] == user_id)
                   for a in map(annotation_summary, self.backend.annotations(study["_id"])))

    def get_study(self, req: Request, study_id: str) -> Response:
        if req.params.get("format", "json") != "json":
            raise RestError(400, f"{self.face} serves studies as JSON only.")
        return Response.json(self._study(study_id, req.user))

    def list_annotations(self, req: Request) -> Response:
        p = req.params
        study = self._study(_object_id(_require(p, "studyId"), "studyId"), req.user)
        details = self.backend.annotations(study["_id"])
        pairs = [(annotation_summary(d), d) for d in details]
        for key in ("userId", "imageId", "state"):
            if key in p:
                pairs = [(s, d) for s, d in pairs if s[key] == p[key]]
        return Response.json([d if _bool(p, "detail") else s for s, d in pairs])

    def _annotation(self, annotation_id: str, user: dict | None) -> tuple[dict, dict]:
        _object_id(annotation_id)
        found = self.backend.annotation(annotation_id)
        if found is None:
            raise RestError(400, f"Invalid annotation id ({annotation_id}).")
        return found, self._study(found.get("studyId") or "", user)

    def get_annotation(self, req: Request, annotation_id: str) -> Response:
        return Response.json(self._annotation(annotation_id, req.user)[0])

    def _markup(self, req: Request, annotation_id: str, feature: str) -> tuple[dict, list]:
        detail, study = self._annotation(annotation_id, req.user)
        if detail.get("state") != "complete":
            raise RestError(400, "Annotation is incomplete.")
        if feature not in study_features(study):
            raise RestError(400, f'Feature "{feature}" is not in this study.')
        return detail, self.backend.markup_values(detail, feature)

    def markup_values(self, req: Request, annotation_id: str, feature: str) -> Response:
        return Response.json(self._markup(req, annotation_id, feature)[1])

    def markup_rendered(self, req: Request, annotation_id: str, feature: str) -> Response:
        """The image with possible (250, 250, 0) and definite (0, 0, 255) superpixels."""
        detail, values = self._markup(req, annotation_id, feature)
        name = f"annotation_{annotation_id}_{markup_name(feature)}.jpg"
        return self.backend.markup_file(detail, feature, values, True, name,
                                        _disposition(req.params, "inline"))

    def markup_mask(self, req: Request, annotation_id: str, feature: str) -> Response:
        detail, values = self._markup(req, annotation_id, feature)
        name = f"annotation_{annotation_id}_{markup_name(feature)}.png"
        return self.backend.markup_file(detail, feature, values, False, name, "inline")

    # -- users ---------------------------------------------------------------------------------

    def authenticate(self, req: Request) -> Response:
        if not req.basic_auth:
            raise RestError(401, "Use HTTP Basic Authentication")
        try:
            login, _, password = base64.b64decode(req.basic_auth).decode().partition(":")
        except ValueError:
            raise RestError(401, "Login failed.", "access") from None
        body = self.backend.login(login, password)
        if body is None:
            raise RestError(401, "Login failed.", "access")
        return Response.json(body)

    def me(self, req: Request) -> Response:
        return Response.json(req.user)


CATEGORICAL_FACETS = (
    "meta.datasetId", "meta.clinical.benign_malignant", "meta.clinical.sex",
    "meta.clinical.diagnosis_confirm_type", "meta.clinical.diagnosis",
    "meta.clinical.nevus_type", "meta.clinical.melanocytic", "meta.clinical.personal_hx_mm",
    "meta.clinical.family_hx_mm", "meta.clinical.mel_class", "meta.clinical.mel_type",
    "meta.clinical.mel_mitotic_index", "meta.clinical.mel_ulcer",
    "meta.clinical.anatom_site_general", "meta.acquisition.image_type",
    "meta.acquisition.dermoscopic_type", "meta.acquisition.blurry",
    "meta.acquisition.color_tint", "meta.acquisition.hairy", "meta.acquisition.marker_pen")
ORDINAL_FACETS = (
    ("meta.clinical.age_approx", (0, 10, 20, 30, 40, 50, 60, 70, 80, 90)),
    ("meta.clinical.clin_size_long_diam_mm",
     (0.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 100.0, 110.0)),
    ("meta.clinical.mel_thick_mm", (0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0)),
)


def histogram(docs: list[dict]) -> dict:
    """``Image.getHistograms`` (isic_archive/models/image.py) over image details: Mongo's
    ``$sortByCount`` per categorical facet, ``$unwind`` + count for tags, ``$bucket`` with a
    null default for ordinal facets; bins sorted by label, null last."""

    def value(doc: dict, path: str) -> object:
        if path == "meta.datasetId":
            return (doc.get("dataset") or {}).get("_id")
        node: object = doc
        for key in path.split("."):
            node = node.get(key) if isinstance(node, dict) else None
        return node

    def bins(counts: Counter) -> list[dict]:
        ordered = sorted(counts.items(), key=lambda kv: (kv[0] is None, kv[0]))
        return [{"count": n, "label": label} for label, n in ordered]

    out: dict = {"__passedFilters__": [{"count": len(docs), "label": "count"}]}
    for facet in CATEGORICAL_FACETS:
        out[facet] = bins(Counter(value(d, facet) for d in docs))
    tags: Counter = Counter()
    for doc in docs:
        tags.update((doc.get("notes") or {}).get("tags") or [None])
    out["meta.tags"] = bins(tags)
    for facet, bounds in ORDINAL_FACETS:
        low: Counter = Counter()
        for doc in docs:
            v = value(doc, facet)
            numeric = isinstance(v, int | float) and not isinstance(v, bool)
            low[next((lo for lo, hi in zip(bounds, bounds[1:], strict=False)
                      if numeric and lo <= v < hi), None)] += 1
        out[facet] = [{"count": n, "highBound": bounds[bounds.index(lo) + 1],
                       "label": f"[{lo} - {bounds[bounds.index(lo) + 1]})", "lowBound": lo}
                      if lo is not None else {"count": n, "label": None}
                      for lo, n in sorted(low.items(), key=lambda kv: (kv[0] is None, kv[0]))]
    return out
