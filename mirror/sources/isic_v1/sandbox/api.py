"""The ISIC v1 endpoints of the sandbox, independent of HTTP plumbing.

Each handler takes a :class:`Request` and returns a :class:`Response`; Girder-style
errors are raised as :class:`RestError` and rendered the way Girder renders them
(``{"message", "type"[, "field"]}`` with Girder's status codes).
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import unquote

from mirror.sources.isic_v1.sandbox import blobs
from mirror.sources.isic_v1.sandbox.data import USERS, Archive, iso

OBJECT_ID = re.compile(r"^[0-9a-f]{24}$")
TRUE = {"true", "on", "1", "yes"}
SANDBOX_LOGIN = "sandbox-user"
SANDBOX_PASSWORD = "sandbox-pass"
SANDBOX_USER = {
    "_accessLevel": 2, "_id": "5b0e1a7f1165976c0a1f00aa", "_modelType": "user",
    "acceptTerms": True, "admin": False, "created": "2018-05-30T10:00:00+00:00",
    "email": "sandbox-user@example.org", "emailVerified": True, "firstName": "Sandbox",
    "groupInvites": [], "groups": [], "lastName": "User", "login": SANDBOX_LOGIN, "otp": False,
    "permissions": {"acceptTerms": True, "adminStudy": False, "createDataset": False,
                    "reviewDataset": False, "segmentationSkill": None},
    "public": False, "size": 0, "status": "enabled",
}


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
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, value: object, status: int = 200) -> Response:
        data = json.dumps(value, sort_keys=True, allow_nan=False).encode()
        return cls(status, data, {"Content-Type": "application/json"})

    @classmethod
    def file(cls, data: bytes, content_type: str, filename: str | None = None,
             disposition: str | None = "attachment") -> Response:
        headers = {"Content-Type": content_type, "Accept-Ranges": "bytes"}
        if filename and disposition:
            headers["Content-Disposition"] = f'{disposition}; filename="{filename}"'
        return cls(200, data, headers)


def split_path(raw_path: str) -> list[str]:
    """Split on '/' first, then decode each segment (so %2F stays inside a feature id)."""
    return [unquote(p) for p in raw_path.split("/") if p]


def _bool(params: dict, key: str) -> bool:
    return params.get(key, "").strip().lower() in TRUE


def _paging(params: dict, default_sort: str, default_dir: int = 1) -> tuple[int, int, str, int]:
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


def _page(items: list, limit: int, offset: int) -> list:
    return items[offset:offset + limit] if limit else items[offset:]


def _object_id(value: str, field_name: str = "id") -> str:
    if not OBJECT_ID.match(value):
        raise RestError(400, f"Invalid ObjectId: {value}", "validation", field=field_name)
    return value


def _require(params: dict, key: str) -> str:
    if key not in params:
        raise RestError(400, f'Parameter "{key}" is required.')
    return params[key]


class SandboxAPI:
    """Routes ``/api/v1/...`` requests to handlers over one :class:`Archive`."""

    def __init__(self, archive: Archive):
        self.archive = archive
        self.tokens: set[str] = set()
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
        return SANDBOX_USER if token and token in self.tokens else None  # unknown: anonymous

    # -- images ------------------------------------------------------------------------------

    def _visible(self, i: int, user: dict | None) -> bool:
        return user is not None or not self.archive.is_private(i)

    def _image(self, image_id: str, user: dict | None) -> int:
        _object_id(image_id)
        i = self.archive.image_index(image_id)
        if i is None:
            raise RestError(400, f"Invalid item id ({image_id}).")
        if not self._visible(i, user):
            raise RestError(401, f"Read access denied for item {image_id} (user None).",
                            "access")
        return i

    def list_images(self, req: Request) -> Response:
        p = req.params
        limit, offset, sort, sortdir = _paging(p, "name")
        if sort not in ("_id", "name", "created"):
            raise RestError(400, 'Sort may only be done on "_id", "name", or "created" fields.')
        if sum(k in p for k in ("name", "filter", "imageIds")) > 1:
            raise RestError(400, 'Only one of "name", "filter", or "imageIds" may be given.')
        if "filter" in p:
            raise RestError(400, "The sandbox does not implement the filter query language.")
        if "imageIds" in p:  # look the ids up: never scan the whole archive per batch
            found = (self.archive.image_index(x) for x in self._image_ids(p["imageIds"]))
            indices = [i for i in found if i is not None]
        else:
            indices = self.archive.listed()
        indices = [i for i in indices if self._visible(i, req.user)]
        if "name" in p:
            indices = [i for i in indices if self.archive.image_summary(i)["name"] == p["name"]]
        indices.sort(key=lambda i: self.archive.sort_key(i, sort), reverse=sortdir == -1)
        page = _page(indices, limit, offset)
        render = self.archive.image_detail if _bool(p, "detail") else self.archive.image_summary
        return Response.json([render(i) for i in page])

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
            raise RestError(400, "The sandbox does not implement the filter query language.")
        docs = [self.archive.image_detail(i) for i in self.archive.listed()
                if self._visible(i, req.user)]
        return Response.json(histogram(docs))

    def get_image(self, req: Request, image_id: str) -> Response:
        return Response.json(self.archive.image_detail(self._image(image_id, req.user)))

    def download_image(self, req: Request, image_id: str) -> Response:
        i = self._image(image_id, req.user)
        disposition = req.params.get("contentDisposition", "attachment")
        if disposition not in ("inline", "attachment"):
            raise RestError(400, f'Unallowed contentDisposition type "{disposition}".',
                            "validation", field="contentDisposition")
        return Response.file(blobs.image_jpeg(self.archive, i), "image/jpeg",
                             f"{self.archive.image_name(i)}.jpg", disposition)

    def image_thumbnail(self, req: Request, image_id: str) -> Response:
        i = self._image(image_id, req.user)
        try:
            box = min(int(req.params.get("width", 256)), int(req.params.get("height", 256)))
        except ValueError:
            raise RestError(400, "Invalid value for width or height.") from None
        return Response.file(blobs.thumbnail_jpeg(self.archive, i, max(1, box)), "image/jpeg")

    def image_superpixels(self, req: Request, image_id: str) -> Response:
        i = self._image(image_id, req.user)
        return Response.file(blobs.superpixels_png(self.archive, i), "image/png",
                             f"{self.archive.image_name(i)}_superpixels_v3.0.png")

    # -- segmentations -------------------------------------------------------------------------

    def list_segmentations(self, req: Request) -> Response:
        image_id = _object_id(_require(req.params, "imageId"), "imageId")
        i = self._image(image_id, req.user)
        limit, offset, sort, sortdir = _paging(req.params, "created", -1)
        items = [self.archive.segmentation_summary(i, j)
                 for j in range(self.archive.segmentation_count(i))]
        items.sort(key=lambda s: (s.get(sort) is None, s.get(sort)), reverse=sortdir == -1)
        return Response.json(_page(items, limit, offset))

    def _segmentation(self, seg_id: str, user: dict | None) -> tuple[int, int]:
        _object_id(seg_id)
        found = self.archive.segmentation_index(seg_id)
        if found is None:
            raise RestError(400, f"Invalid segmentation id ({seg_id}).")
        if not self._visible(found[0], user):
            raise RestError(401, f"Read access denied for item {self.archive.image_id(found[0])}"
                            " (user None).", "access")
        return found

    def get_segmentation(self, req: Request, seg_id: str) -> Response:
        return Response.json(self.archive.segmentation_detail(*self._segmentation(seg_id,
                                                                                   req.user)))

    def segmentation_mask(self, req: Request, seg_id: str) -> Response:
        i, j = self._segmentation(seg_id, req.user)
        if self.archive.segmentation_failed(i, j):
            raise RestError(410, "This segmentation is failed, and thus has no mask.")
        return Response.file(blobs.mask_png(self.archive, i, j), "image/png",
                             f"{self.archive.image_name(i)}_segmentation.png",
                             _disposition(req.params))

    def segmentation_thumbnail(self, req: Request, seg_id: str) -> Response:
        """The image with the mask's outline (the real one draws it green), as JPEG."""
        i, j = self._segmentation(seg_id, req.user)
        if self.archive.segmentation_failed(i, j):
            raise RestError(410, "This segmentation is failed, and thus has no thumbnail.")
        try:
            width = max(1, int(req.params.get("width", 256)))
        except ValueError:
            raise RestError(400, "Invalid value for width.") from None
        return Response.file(blobs.segmentation_thumbnail(self.archive, i, j, width),
                             "image/jpeg", f"{self.archive.image_name(i)}_segmentation.jpg",
                             _disposition(req.params, "inline"))

    # -- datasets ------------------------------------------------------------------------------

    def _datasets(self, user: dict | None) -> list[dict]:
        return self.archive.datasets() + (self.archive.private_datasets() if user else [])

    def _dataset_detail(self, summary: dict) -> dict:
        count = sum(1 for i in self.archive.listed()
                    if self.archive.dataset_summary(i)["_id"] == summary["_id"])
        return {**_summary_fields(summary), "_modelType": "dataset",
                "attribution": self.archive.dataset_attribution(summary),
                "count": count, "created": summary["updated"], "creator": USERS[0]}

    def list_datasets(self, req: Request) -> Response:
        limit, offset, sort, sortdir = _paging(req.params, "name")
        items = sorted(self._datasets(req.user), key=lambda d: str(d.get(sort, "")),
                       reverse=sortdir == -1)
        page = _page(items, limit, offset)
        detail = _bool(req.params, "detail")
        return Response.json([self._dataset_detail(d) if detail else _summary_fields(d)
                              for d in page])

    def _dataset(self, dataset_id: str, user: dict | None) -> dict:
        _object_id(dataset_id)
        private = self.archive.private_datasets()
        for summary in self._datasets(None) + private:
            if summary["_id"] == dataset_id:
                if summary in private and user is None:
                    raise RestError(401, f"Read access denied for folder {dataset_id} "
                                    "(user None).", "access")
                return summary
        raise RestError(400, f"Invalid dataset id ({dataset_id}).")

    def get_dataset(self, req: Request, dataset_id: str) -> Response:
        return Response.json(self._dataset_detail(self._dataset(dataset_id, req.user)))

    def dataset_admin_only(self, req: Request, dataset_id: str) -> Response:
        """``access``, ``metadata``, ``review``: ``@access.user`` routes for dataset admins
        and QC reviewers. Anonymous callers get 401; the sandbox user is neither (403)."""
        if req.user is None:
            raise RestError(401, "You must be logged in.", "access")
        self._dataset(dataset_id, req.user)
        raise RestError(403, f"Admin access denied for dataset {dataset_id} (user "
                        f"{req.user['_id']}).", "access")

    # -- studies and annotations -----------------------------------------------------------------

    def _study(self, study_id: str, user: dict | None) -> int:
        _object_id(study_id)
        k = self.archive.study_index(study_id)
        if k is None:
            raise RestError(400, f"Invalid folder id ({study_id}).")
        if not self.archive.study_public(k) and user is None:
            raise RestError(401, f"Read access denied for folder {study_id} (user None).",
                            "access")
        return k

    def list_studies(self, req: Request) -> Response:
        p = req.params
        limit, offset, sort, sortdir = _paging(p, "lowerName")
        state = p.get("state")
        if state is not None and state not in ("active", "complete"):
            raise RestError(400, 'Value for state must be one of ["active", "complete"].',
                            "validation", field="state")
        user_id = SANDBOX_USER["_id"] if p.get("userId") == "me" and req.user else p.get("userId")
        visible = [k for k in range(len(self.archive.study_ids()))
                   if self.archive.study_public(k) or req.user]
        docs = [self.archive.study_detail(k) for k in visible]
        if state or user_id:
            docs = [d for d in docs if self._has_annotation(d, state, user_id)]
        docs.sort(key=lambda d: d["name"].lower() if sort == "lowerName" else str(d.get(sort)),
                  reverse=sortdir == -1)
        page = _page(docs, limit, offset)
        keys = ("_id", "description", "name", "updated")
        return Response.json(page if _bool(p, "detail") else [{k: d[k] for k in keys}
                                                               for d in page])

    def _has_annotation(self, study: dict, state: str | None, user_id: str | None) -> bool:
        k = self.archive.study_index(study["_id"])
        return any((state is None or a["state"] == state) and
                   (user_id is None or a["userId"] == user_id)
                   for a in self._annotations(k))

    def get_study(self, req: Request, study_id: str) -> Response:
        if req.params.get("format", "json") != "json":
            raise RestError(400, "The sandbox serves studies as JSON only.")
        return Response.json(self.archive.study_detail(self._study(study_id, req.user)))

    def _annotations(self, k: int) -> list[dict]:
        return [self.archive.annotation_summary(k, pos, u)
                for pos in range(len(self.archive.study_images(k))) for u in range(2)]

    def list_annotations(self, req: Request) -> Response:
        p = req.params
        k = self._study(_object_id(_require(p, "studyId"), "studyId"), req.user)
        items = self._annotations(k)
        for key, name in (("userId", "userId"), ("imageId", "imageId"), ("state", "state")):
            if key in p:
                items = [a for a in items if a[name] == p[key]]
        if _bool(p, "detail"):
            items = [self.archive.annotation_detail(*self.archive.annotation_index(a["_id"]))
                     for a in items]
        return Response.json(items)

    def _annotation(self, annotation_id: str, user: dict | None) -> tuple[int, int, int]:
        _object_id(annotation_id)
        found = self.archive.annotation_index(annotation_id)
        if found is None:
            raise RestError(400, f"Invalid annotation id ({annotation_id}).")
        self._study(self.archive.study_id(found[0]), user)
        return found

    def get_annotation(self, req: Request, annotation_id: str) -> Response:
        found = self._annotation(annotation_id, req.user)
        return Response.json(self.archive.annotation_detail(*found))

    def _markup(self, req: Request, annotation_id: str, feature: str) -> tuple:
        found = self._annotation(annotation_id, req.user)
        detail = self.archive.annotation_detail(*found)
        if detail["state"] != "complete":
            raise RestError(400, "Annotation is incomplete.")
        if feature not in self.archive.study_features(found[0]):
            raise RestError(400, f'Feature "{feature}" is not in this study.')
        return found, self.archive.markup_values(*found, feature)

    def markup_values(self, req: Request, annotation_id: str, feature: str) -> Response:
        return Response.json(self._markup(req, annotation_id, feature)[1])

    def markup_rendered(self, req: Request, annotation_id: str, feature: str) -> Response:
        """The image with possible (250, 250, 0) and definite (0, 0, 255) superpixels."""
        (k, pos, _), values = self._markup(req, annotation_id, feature)
        i = self.archive.study_images(k)[pos]
        return Response.file(blobs.markup_rendered(self.archive, i, values), "image/jpeg",
                             f"annotation_{annotation_id}_{_markup_name(feature)}.jpg",
                             _disposition(req.params, "inline"))

    def markup_mask(self, req: Request, annotation_id: str, feature: str) -> Response:
        (k, pos, _), values = self._markup(req, annotation_id, feature)
        i = self.archive.study_images(k)[pos]
        return Response.file(blobs.markup_png(self.archive, i, values), "image/png",
                             f"annotation_{annotation_id}_{_markup_name(feature)}.png",
                             "inline")

    # -- users ---------------------------------------------------------------------------------

    def authenticate(self, req: Request) -> Response:
        if not req.basic_auth:
            raise RestError(401, "Use HTTP Basic Authentication")
        try:
            login, _, password = base64.b64decode(req.basic_auth).decode().partition(":")
        except ValueError:
            raise RestError(401, "Login failed.", "access") from None
        if login != SANDBOX_LOGIN or not secrets.compare_digest(password, SANDBOX_PASSWORD):
            raise RestError(401, "Login failed.", "access")
        token = "".join(secrets.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                                       "0123456789") for _ in range(64))
        self.tokens.add(token)
        expires = iso(time.time() + 180 * 86400)
        return Response.json({"authToken": {"expires": expires, "scope": ["core.user_auth"],
                                            "token": token},
                              "message": "Login succeeded.", "user": SANDBOX_USER})

    def me(self, req: Request) -> Response:
        return Response.json(req.user)


def _summary_fields(dataset: dict) -> dict:
    """A dataset summary as the archive lists it (``filterSummary``)."""
    return {k: dataset[k] for k in ("_accessLevel", "_id", "description", "license", "name",
                                    "updated") if k in dataset}


def _disposition(params: dict, default: str = "attachment") -> str:
    value = params.get("contentDisposition", default)
    if value not in ("inline", "attachment"):
        raise RestError(400, f'Unallowed contentDisposition type "{value}".', "validation",
                        field="contentDisposition")
    return value


def _markup_name(feature: str) -> str:
    return feature.replace(" : ", " ; ").replace("/", ",")


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
    from collections import Counter

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
