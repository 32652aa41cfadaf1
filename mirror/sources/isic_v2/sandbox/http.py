"""Responses as the archive's stack renders them (django-ninja JSON, Django error pages)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime

JSON_TYPE = "application/json; charset=utf-8"
# Django's production (DEBUG off) pages: not JSON.
DJANGO_404 = (b'<!doctype html>\n<html lang="en">\n<head>\n  <title>Not Found</title>\n</head>\n'
              b"<body>\n  <h1>Not Found</h1><p>The requested resource was not found on this "
              b"server.</p>\n</body>\n</html>\n")
DJANGO_500 = (b'<!doctype html>\n<html lang="en">\n<head>\n  <title>Server Error (500)</title>\n'
              b"</head>\n<body>\n  <h1>Server Error (500)</h1><p></p>\n</body>\n</html>\n")


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    head: bool = False  # headers only (a HEAD, a 304): Content-Length still says the body's

    @classmethod
    def json(cls, value: object, status: int = 200) -> Response:
        return cls(status, dumps(value).encode("ascii"), {"Content-Type": JSON_TYPE})

    @classmethod
    def html(cls, body: bytes, status: int) -> Response:
        return cls(status, body, {"Content-Type": "text/html; charset=utf-8"})


def dumps(value: object) -> str:
    """``json.dumps`` as django-ninja calls it: default separators ``", "``/``": "``,
    ``ensure_ascii``, datetimes as ``2021-03-04T17:22:10.123Z``, key order as given."""
    return json.dumps(value, default=_default, allow_nan=False)


def _default(value: object) -> object:
    if isinstance(value, datetime):
        return django_datetime(value)
    raise TypeError(f"cannot encode {type(value).__name__}")


def django_datetime(value: datetime) -> str:
    """Django's JSON encoder: ISO 8601, milliseconds, ``Z`` for UTC."""
    text = value.isoformat()
    if value.microsecond:
        text = text[:23] + text[26:]
    return text.removesuffix("+00:00") + "Z" if text.endswith("+00:00") else text
