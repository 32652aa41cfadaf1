"""The ISIC Archive REST API v1 (Girder), as a mirror needs it.

Shapes and quirks are documented in ``docs/sandbox.md`` and the research notes:
lists are bare JSON arrays with no total count (page until a short page),
``limit=0`` means "no limit", ``imageIds`` takes at most 300 ids, errors are
``{"message": ..., "type": ...}``, and the token travels in ``Girder-Token``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import requests

from mirror.errors import ArchiveError, AuthenticationError, LoginLostError
from mirror.sources.http import HttpClient, error_message

log = logging.getLogger("mirror.isic")

IMAGE_IDS_PER_REQUEST = 300  # server-side maximum (400 above it)
# Image details per page of the bulk listing (``image?detail=true``): what isicarchive's
# ``cache_images`` asks the real archive for (research §9), about 4.5 MB of JSON a page.
DETAIL_PAGE = 3000


@dataclass(frozen=True)
class BlobKind:
    """A binary the archive serves for an object."""

    role: str
    path: str  # format string with {id}
    magic: tuple[bytes, ...]


JPEG, PNG, BMP = b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"BM"
BLOB_KINDS = {
    "full": BlobKind("image", "image/{id}/download", (JPEG, PNG, BMP)),
    "thumbnail": BlobKind("thumbnail", "image/{id}/thumbnail", (JPEG, PNG)),
    "superpixels": BlobKind("superpixels", "image/{id}/superpixels", (PNG,)),
    "masks": BlobKind("mask", "segmentation/{id}/mask", (PNG,)),
}


class IsicClient:
    """Typed access to the ISIC v1 endpoints a mirror uses."""

    name = "isic"

    def __init__(self, base_url: str, http: HttpClient):
        self.base_url = base_url.rstrip("/")
        self.http = http
        self._token: str | None = None  # memory only: never logged, never written

    @property
    def authenticated(self) -> bool:
        return self._token is not None

    def login(self, username: str, password: str) -> None:
        """HTTP Basic on ``/user/authentication``; keeps ``authToken.token`` in memory."""
        url = f"{self.base_url}/user/authentication"
        response = self.http.retrying(
            lambda: self.http.get(url, auth=(username, password)), "login")
        if response.status_code != 200:
            raise AuthenticationError(
                f"login as {username!r} failed ({_message(response)}); check the user name "
                "and MIRROR_PASSWORD")
        self._token = response.json()["authToken"]["token"]
        self.http.session.headers["Girder-Token"] = self._token

    def check_login(self) -> None:
        """``user/me`` answers the logged-in user, or ``null`` when Girder took the request
        as anonymous (an expired token is not an error there: it is ignored). Raises
        :class:`LoginLostError` then; does nothing for an anonymous client."""
        if self._token is None:
            return
        me = self.get_json("user/me")
        if not isinstance(me, dict) or not me.get("_id"):
            raise LoginLostError(
                "the archive answered this sync's login anonymously (user/me is null: the "
                "session expired or a proxy dropped the token), so its listings may lack "
                "private images; nothing was marked removed. Run 'mirror sync' again with "
                "--username and MIRROR_PASSWORD")

    def get_json(self, path: str, **params) -> object:
        """GET ``path`` (relative to the API root) as strict, bounded JSON, with retries."""
        return self.http.get_json(f"{self.base_url}/{path}", params, what=f"GET {path}")

    def iter_pages(self, path: str, page: int, **params) -> Iterator[list[dict]]:
        """Pages of a list endpoint, sorted by ``_id``, until a short page.

        Pages overlap by one item: each must start with the previous page's last item.
        Anything else means items were repeated or skipped between pages (the listing
        shifted, or the archive pages wrongly), and a listing with a hole would make a
        sync mark the skipped images removed; so that is an error, not a page.
        """
        if page < 2:
            raise ValueError("pages overlap by one item: page must be at least 2")
        offset, last = 0, None
        while True:
            items = _require_list(self.get_json(path, limit=page, offset=offset, sort="_id",
                                                sortdir=1, **params), path)
            if last is not None:
                if not items or _id_of(items[0]) != last:
                    raise ArchiveError(f"{path} listing is inconsistent: items repeated or "
                                       f"skipped between pages at offset {offset}; run "
                                       "'mirror sync' again later")
                yield items[1:]
            else:
                yield items
            if len(items) < page:
                return
            last, offset = _id_of(items[-1]), offset + page - 1

    def image_summaries(self) -> Iterator[dict]:
        """Every listed image as ``{_id, name, updated}``."""
        for items in self.iter_pages("image", DETAIL_PAGE):
            yield from items

    def image_detail_pages(self) -> Iterator[list[dict]]:
        """Every listed image's detail document, a page at a time, sorted by ``_id``.

        The real archive serves ``Image.filter`` for each item with ``detail=true``, the
        document ``image/{id}`` and ``image?imageIds=`` serve (research §4.1), so this is
        the one way to see every change: the archive saves QC reviews, metadata and
        renames without touching ``updated``.
        """
        yield from self.iter_pages("image", DETAIL_PAGE, detail="true")

    def image_details(self, ids: list[str]) -> list[dict]:
        """Full detail documents for up to 300 ids in one request."""
        if len(ids) > IMAGE_IDS_PER_REQUEST:
            raise ValueError(f"at most {IMAGE_IDS_PER_REQUEST} ids per request")
        docs = self.get_json("image", imageIds=json.dumps(ids), detail="true", limit=0)
        return _require_list(docs, "image?imageIds")

    def datasets(self) -> list[dict]:
        return _require_list(self.get_json("dataset", limit=0, detail="true"), "dataset")

    def studies(self) -> list[dict]:
        return _require_list(self.get_json("study", limit=0, detail="true"), "study")

    def annotations(self, study_id: str) -> list[dict]:
        docs = self.get_json("annotation", studyId=study_id, detail="true")
        return _require_list(docs, "annotation")

    def segmentations(self, image_id: str) -> list[dict]:
        items = self.get_json("segmentation", imageId=image_id, limit=0)
        return _require_list(items, "segmentation")

    def segmentation(self, segmentation_id: str) -> dict:
        return _require_doc(self.get_json(f"segmentation/{segmentation_id}"), segmentation_id)

    def markup_superpixels(self, annotation_id: str, feature_id: str) -> list[float]:
        path = f"annotation/{annotation_id}/markup/{_quote(feature_id)}/superpixels"
        values = self.get_json(path)
        if not isinstance(values, list):
            raise ArchiveError(f"GET {path}: expected a JSON array")
        return values

    def blob_url(self, kind: BlobKind, object_id: str) -> str:
        return f"{self.base_url}/{kind.path.format(id=object_id)}"


def _quote(feature_id: str) -> str:
    return requests.utils.quote(feature_id, safe="")


def _message(response: requests.Response) -> str:
    return error_message(response)


def _require_list(items: object, what: str) -> list:
    if not isinstance(items, list):
        raise ArchiveError(f"{what}: expected a JSON array, got {type(items).__name__}")
    return items


def _id_of(item: object) -> object:
    return item.get("_id") if isinstance(item, dict) else None


def _require_doc(doc: object, object_id: str) -> dict:
    if not isinstance(doc, dict) or doc.get("_id") != object_id:
        raise ArchiveError(f"document {object_id}: the archive returned a different or no _id")
    return doc
