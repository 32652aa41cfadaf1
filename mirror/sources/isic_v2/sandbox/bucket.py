"""The sandbox's file host: the public S3 bucket and the signing CDN in front of the private one.

Public images are served unsigned at stable URLs, ``/images/ISIC_nnnnnnn.jpg`` and
``/thumbnails/ISIC_nnnnnnn_thumbnail.jpg``, that never change (a reprocessed file keeps its
URL and gets new bytes). Private images (seen only with a token) get CloudFront-style signed
URLs ``/<uuid>/ISIC_nnnnnnn.jpg?Expires=E&Signature=S&Key-Pair-Id=K``: ``Expires`` is the
sandbox clock's last UTC midnight plus 7 days, the uuid key changes whenever the file is
reprocessed or the image made public (the old private objects are deleted), and an expired,
forged or stale URL is a 403 ``AccessDenied`` XML error, as CloudFront and S3 answer.

Responses carry S3's ``ETag`` (MD5 of the bytes), ``Last-Modified``, ``Content-Length`` and
``Accept-Ranges``, and honour ``Range``, ``If-None-Match`` and ``If-Modified-Since``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import uuid
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime
from urllib.parse import parse_qs

from mirror.sources.isic_v2.sandbox import blobs
from mirror.sources.isic_v2.sandbox.data import DAY, Archive, Image
from mirror.sources.isic_v2.sandbox.http import Response

KEY_PAIR_ID = "K2SANDBOXKEYPAIR"
SIGNED_DAYS = 7
PUBLIC_PATH = re.compile(r"^/(images|thumbnails)/(ISIC_\d{7})(_thumbnail)?\.jpg$")
PRIVATE_PATH = re.compile(r"^/([0-9a-f-]{36})/(ISIC_\d{7})(_thumbnail)?\.jpg$")
RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def _error(status: int, code: str, message: str) -> Response:
    body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
            f"<Message>{message}</Message><RequestId>SANDBOX</RequestId></Error>").encode()
    return Response(status, body, {"Content-Type": "application/xml", "Server": "AmazonS3"})


class Bucket:
    """URLs for image records, and the answers of the file host."""

    def __init__(self, archive: Archive, secret: bytes):
        self.archive = archive
        self.secret = secret
        self.root = ""  # http://host:port, set by the server once it listens

    # -- URLs handed out in records ------------------------------------------------------------

    def private_key(self, image: Image, thumbnail: bool) -> str:
        digest = hashlib.sha256(
            f"{self.archive.seed}:{image.isic_id}:{image.file_rev}:{thumbnail}".encode())
        return str(uuid.UUID(bytes=digest.digest()[:16], version=4))

    def _signature(self, path: str, expires: int) -> str:
        mac = hmac.new(self.secret, f"{path}|{expires}".encode(), hashlib.sha256).digest()
        # CloudFront's URL-safe base64: + -> -, = -> _, / -> ~
        return base64.b64encode(mac).decode().translate(str.maketrans("+=/", "-_~"))

    def urls(self, image: Image) -> tuple[str, str]:
        """(full, thumbnail) URLs of ``image`` as the API hands them out now."""
        if image.public:
            return (f"{self.root}/images/{image.isic_id}.jpg",
                    f"{self.root}/thumbnails/{image.isic_id}_thumbnail.jpg")
        now = self.archive.now
        expires = int(now - now % DAY) + SIGNED_DAYS * DAY
        out = []
        for thumbnail in (False, True):
            suffix = "_thumbnail" if thumbnail else ""
            path = f"/{self.private_key(image, thumbnail)}/{image.isic_id}{suffix}.jpg"
            out.append(f"{self.root}{path}?Expires={expires}&Signature="
                       f"{self._signature(path, expires)}&Key-Pair-Id={KEY_PAIR_ID}")
        return out[0], out[1]

    # -- serving -------------------------------------------------------------------------------

    def route_name(self, path: str) -> str:
        if PUBLIC_PATH.match(path):
            return f"files /{path.split('/')[1]}/"
        return "files /private/" if PRIVATE_PATH.match(path) else "files other"

    def respond(self, method: str, path: str, query: str, headers) -> Response:
        if method not in ("GET", "HEAD"):
            return _error(405, "MethodNotAllowed",
                          "The specified method is not allowed against this resource.")
        found = self._public(path) if PUBLIC_PATH.match(path) else self._private(path, query)
        if isinstance(found, Response):
            return found
        image, thumbnail = found
        full, thumb = blobs.served(image)
        return _object(full if not thumbnail else thumb, image, headers, method == "HEAD")

    def _public(self, path: str) -> tuple[Image, bool] | Response:
        folder, isic_id, suffix = PUBLIC_PATH.match(path).groups()
        if (folder == "thumbnails") != bool(suffix):
            return _error(403, "AccessDenied", "Access Denied")
        with self.archive.lock:
            n = self.archive.by_isic_id.get(isic_id)
            image = self.archive.images.get(n) if n is not None else None
            if image is None:  # no hook deletes a deleted image's public objects
                image = self.archive.deleted.get(isic_id)
        if image is None or not image.public:
            return _error(403, "AccessDenied", "Access Denied")  # no ListBucket: 403, not 404
        return image, bool(suffix)

    def _private(self, path: str, query: str) -> tuple[Image, bool] | Response:
        match = PRIVATE_PATH.match(path)
        params = {k: v[-1] for k, v in parse_qs(query).items()}
        if match is None:
            return _error(403, "AccessDenied", "Access Denied")
        if not {"Expires", "Signature", "Key-Pair-Id"} <= params.keys():
            return _error(403, "MissingKey", "Missing Key-Pair-Id query parameter or cookie "
                          "value")
        try:
            expires = int(params["Expires"])
        except ValueError:
            return _error(403, "AccessDenied", "Access denied")
        if not hmac.compare_digest(params["Signature"], self._signature(path, expires)):
            return _error(403, "AccessDenied", "Access denied")
        if expires <= self.archive.now:
            return _error(403, "AccessDenied", "Access denied")
        key, isic_id, suffix = match.groups()
        with self.archive.lock:
            n = self.archive.by_isic_id.get(isic_id)
            image = self.archive.images.get(n) if n is not None else None
        if image is None or image.public or self.private_key(image, bool(suffix)) != key:
            return _error(403, "AccessDenied", "Access Denied")  # the object was deleted
        return image, bool(suffix)


def _object(data: bytes, image: Image, headers, head: bool) -> Response:
    etag = f'"{hashlib.md5(data).hexdigest()}"'  # noqa: S324 - S3's ETag is an MD5
    modified = (image.file_modified or image.created).replace(microsecond=0)
    base = {"Content-Type": "image/jpeg", "ETag": etag, "Accept-Ranges": "bytes",
            "Last-Modified": format_datetime(modified.astimezone(UTC), usegmt=True),
            "Content-Disposition": "attachment", "Server": "AmazonS3"}
    if _not_modified(headers, etag, modified):
        return Response(304, b"", base, head=True)
    body, status = data, 200
    match = RANGE.match(headers.get("Range", "").strip())
    if match and match.group() != "bytes=-":
        first, last = match.groups()
        size = len(data)
        if first:
            start, end = int(first), min(int(last), size - 1) if last else size - 1
        else:
            start, end = max(0, size - int(last)), size - 1
        if start >= size or start > end:
            response = _error(416, "InvalidRange", "The requested range is not satisfiable")
            response.headers["Content-Range"] = f"bytes */{size}"
            return response
        body, status = data[start:end + 1], 206
        base["Content-Range"] = f"bytes {start}-{end}/{size}"
    return Response(status, body, base, head=head)


def _not_modified(headers, etag: str, modified: datetime) -> bool:
    tags = headers.get("If-None-Match")
    if tags is not None:
        return etag in {t.strip() for t in tags.split(",")} or tags.strip() == "*"
    since = headers.get("If-Modified-Since")
    if since:
        try:
            return modified <= parsedate_to_datetime(since)
        except (TypeError, ValueError):
            return False
    return False
