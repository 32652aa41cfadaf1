"""The sandbox's ISIC v1 endpoints: the shared API shape over the synthetic archive.

The routes, parameters, paging and error bodies live in :mod:`mirror.sources.isic_v1.shape`
(shared with ``mirror serve``); this module is the *synthetic backend* behind them — ids
mapped to the generated archive's image numbers, files drawn on demand — plus the
sandbox's own login.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterable

from mirror.sources.isic_v1.sandbox import blobs
from mirror.sources.isic_v1.sandbox.data import USERS, Archive, iso
from mirror.sources.isic_v1.shape import (
    ImageQuery,
    Request,
    Response,
    RestError,
    V1Api,
    histogram,
    page,
    split_path,
    summary_fields,
)

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
TOKEN_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


class SyntheticBackend:
    """A :class:`~mirror.sources.isic_v1.shape.V1Backend` over one generated
    :class:`Archive` (ids ↔ numbers in O(1): nothing is generated until asked for)."""

    def __init__(self, archive: Archive):
        self.archive = archive
        self.tokens: set[str] = set()

    # -- images ------------------------------------------------------------------------------

    def _visible(self, i: int, private: bool) -> bool:
        return private or not self.archive.is_private(i)

    def list_images(self, private: bool, query: ImageQuery) -> list[dict]:
        a = self.archive
        if query.ids is not None:  # look the ids up: never scan the whole archive per batch
            indices = [i for i in map(a.image_index, query.ids) if i is not None]
        else:
            indices = a.listed()
        indices = [i for i in indices if self._visible(i, private)]
        if query.name is not None:
            indices = [i for i in indices if a.image_summary(i)["name"] == query.name]
        indices.sort(key=lambda i: a.sort_key(i, query.sort), reverse=query.sortdir == -1)
        render = a.image_detail if query.detail else a.image_summary
        return [render(i) for i in page(indices, query.limit, query.offset)]

    def image_details(self, private: bool) -> Iterable[dict]:
        return (self.archive.image_detail(i) for i in self.archive.listed()
                if self._visible(i, private))

    def image(self, image_id: str) -> tuple[dict, bool] | None:
        i = self.archive.image_index(image_id)
        if i is None:
            return None
        return self.archive.image_detail(i), not self.archive.is_private(i)

    def _index(self, doc: dict) -> int:
        return self.archive.image_index(doc["_id"])

    def image_file(self, doc: dict, role: str, disposition: str) -> Response:
        i, name = self._index(doc), self.archive.image_name(self._index(doc))
        if role == "superpixels":
            return Response.file(blobs.superpixels_png(self.archive, i), "image/png",
                                 f"{name}_superpixels_v3.0.png")
        return Response.file(blobs.image_jpeg(self.archive, i), "image/jpeg", f"{name}.jpg",
                             disposition)

    def thumbnail(self, doc: dict, box: int) -> Response:
        return Response.file(blobs.thumbnail_jpeg(self.archive, self._index(doc), box),
                             "image/jpeg")

    # -- segmentations -------------------------------------------------------------------------

    def segmentations(self, image_id: str) -> list[dict]:
        i = self.archive.image_index(image_id)
        return [self.archive.segmentation_detail(i, j)
                for j in range(self.archive.segmentation_count(i))]

    def segmentation(self, seg_id: str) -> dict | None:
        found = self.archive.segmentation_index(seg_id)
        return None if found is None else self.archive.segmentation_detail(*found)

    def mask(self, seg: dict, image: dict, disposition: str) -> Response:
        i, j = self.archive.segmentation_index(seg["_id"])
        return Response.file(blobs.mask_png(self.archive, i, j), "image/png",
                             f"{self.archive.image_name(i)}_segmentation.png", disposition)

    def segmentation_thumbnail(self, seg: dict, image: dict, width: int,
                               disposition: str) -> Response:
        i, j = self.archive.segmentation_index(seg["_id"])
        return Response.file(blobs.segmentation_thumbnail(self.archive, i, j, width),
                             "image/jpeg", f"{self.archive.image_name(i)}_segmentation.jpg",
                             disposition)

    # -- datasets ------------------------------------------------------------------------------

    def datasets(self, private: bool) -> list[dict]:
        return self.archive.datasets() + (self.archive.private_datasets() if private else [])

    def dataset(self, dataset_id: str) -> tuple[dict, bool] | None:
        private = self.archive.private_datasets()
        for summary in self.archive.datasets() + private:
            if summary["_id"] == dataset_id:
                return summary, summary not in private
        return None

    def dataset_detail(self, summary: dict) -> dict:
        count = sum(1 for i in self.archive.listed()
                    if self.archive.dataset_summary(i)["_id"] == summary["_id"])
        return {**summary_fields(summary), "_modelType": "dataset",
                "attribution": self.archive.dataset_attribution(summary),
                "count": count, "created": summary["updated"], "creator": USERS[0]}

    # -- studies and annotations -----------------------------------------------------------------

    def studies(self, private: bool) -> list[dict]:
        return [self.archive.study_detail(k) for k in range(len(self.archive.study_ids()))
                if private or self.archive.study_public(k)]

    def study(self, study_id: str) -> tuple[dict, bool] | None:
        k = self.archive.study_index(study_id)
        if k is None:
            return None
        return self.archive.study_detail(k), self.archive.study_public(k)

    def annotations(self, study_id: str) -> list[dict]:
        k = self.archive.study_index(study_id)
        return [self.archive.annotation_detail(k, pos, u)
                for pos in range(len(self.archive.study_images(k))) for u in range(2)]

    def annotation(self, annotation_id: str) -> dict | None:
        found = self.archive.annotation_index(annotation_id)
        return None if found is None else self.archive.annotation_detail(*found)

    def markup_values(self, annotation: dict, feature: str) -> list[float]:
        return self.archive.markup_values(*self.archive.annotation_index(annotation["_id"]),
                                          feature)

    def markup_file(self, annotation: dict, feature: str, values: list[float],
                    rendered: bool, name: str, disposition: str) -> Response:
        k, pos, _ = self.archive.annotation_index(annotation["_id"])
        i = self.archive.study_images(k)[pos]
        if rendered:
            return Response.file(blobs.markup_rendered(self.archive, i, values), "image/jpeg",
                                 name, disposition)
        return Response.file(blobs.markup_png(self.archive, i, values), "image/png", name,
                             disposition)

    # -- users ---------------------------------------------------------------------------------

    def login(self, login: str, password: str) -> dict | None:
        if login != SANDBOX_LOGIN or not secrets.compare_digest(password, SANDBOX_PASSWORD):
            return None
        token = "".join(secrets.choice(TOKEN_CHARS) for _ in range(64))
        self.tokens.add(token)
        expires = iso(time.time() + 180 * 86400)
        return {"authToken": {"expires": expires, "scope": ["core.user_auth"], "token": token},
                "message": "Login succeeded.", "user": SANDBOX_USER}

    def user_for_token(self, token: str | None) -> dict | None:
        return SANDBOX_USER if token and token in self.tokens else None  # unknown: anonymous


class SandboxAPI(V1Api):
    """The shared ISIC v1 routes over the synthetic archive."""

    def __init__(self, archive: Archive):
        super().__init__(SyntheticBackend(archive))
        self.archive = archive

    @property
    def tokens(self) -> set[str]:
        return self.backend.tokens


__all__ = ["SANDBOX_LOGIN", "SANDBOX_PASSWORD", "SANDBOX_USER", "Request", "Response",
           "RestError", "SandboxAPI", "SyntheticBackend", "histogram", "split_path"]
