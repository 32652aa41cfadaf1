"""NBIA's response formats (``restAPI/v4/getData.formatResponse``, ``restUtil/FormatOutput``).

Rows are lists of values in column order, ``None`` for SQL NULL. JSON drops null keys
(Jettison) and escapes ``/``; CSV quotes every field (``toCsvQuoted``, bug for a null first
column included); XML and HTML HTML-encode strings the way OWASP ESAPI does. No rows gives
HTTP 200 with an empty body and no content type; an unknown ``format`` with rows gives 500.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

SERVER_ERROR = "Server was not able to process your request"
_ESAPI_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789,.-_ ")
_ESAPI_NAMED = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}


class Writer(Protocol):
    def write(self, data: bytes) -> object: ...


@dataclass
class Response:
    """A reply; ``stream`` (when set) writes the body itself and no Content-Length is sent.

    ``mirror serve`` reads the same reply: ``path`` is a stored file (streamed, its
    ``sha256`` the ETag) and ``chunks`` the body of a streamed one (the same bytes
    ``stream`` writes), sent without Content-Length as NBIA does."""

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    stream: object = None  # Callable[[Writer], None]
    path: Path | None = None
    sha256: str | None = None
    chunks: Iterator[bytes] | None = None

    @classmethod
    def text(cls, message: str, status: int = 200, content_type: str = "text/plain") -> Response:
        return cls(status, message.encode("utf-8"), {"Content-Type": content_type})


def esapi_html(value: str) -> str:
    """OWASP ESAPI ``encodeForHTML``: alphanumerics and ``,.-_`` and space pass."""
    out = []
    for char in value:
        if char in _ESAPI_SAFE:
            out.append(char)
        elif char in _ESAPI_NAMED:
            out.append(_ESAPI_NAMED[char])
        else:
            out.append(f"&#x{ord(char):x};")
    return "".join(out)


def _java_type(value: object) -> str:
    if isinstance(value, bool):
        return "java.lang.Boolean"
    if isinstance(value, int):
        return "java.lang.Long"
    if isinstance(value, float):
        return "java.lang.Double"
    return "java.lang.String"


def _java_str(value: object) -> str:
    return str(value) if not isinstance(value, bool) else str(value).lower()


def to_json(columns: list[str], rows: list[list]) -> str:
    objects = [{c: v for c, v in zip(columns, row, strict=True) if v is not None}
               for row in rows]
    return json.dumps(objects, separators=(",", ":"), ensure_ascii=False).replace("/", "\\/")


def to_csv_quoted(columns: list[str], rows: list[list]) -> str:
    def quote(v: object) -> str:
        return _java_str(v).replace('"', '""')

    lines = ['"' + '","'.join(quote(c) for c in columns) + '"\n']
    for row in rows:
        parts = []
        for i, value in enumerate(row):
            if value is None:
                parts.append('","')
            elif i == 0:
                parts.append('"' + quote(value))
            else:
                parts.append('","' + quote(value))
        lines.append("".join(parts) + '"\n')
    return "".join(lines)


def to_xml(columns: list[str], rows: list[list]) -> str:
    out = ['<?xml version="1.0" encoding="UTF-8" standalone="yes"?><Results>']
    for row in rows:
        out.append("<Row>")
        for column, value in zip(columns, row, strict=True):
            if value is None:
                continue
            text = esapi_html(value) if isinstance(value, str) else _java_str(value)
            out.append(f"<{column} type='{_java_type(value)}'>{text}</{column}>")
        out.append("</Row>")
    out.append("</Results>")
    return "".join(out)


def to_html(columns: list[str], rows: list[list]) -> str:
    out = ["<P ALIGN='center'><TABLE BORDER=1><TR>"]
    out.extend(f"<TH>{c}</TH>" for c in columns)
    out.append("</TR>")
    for row in rows:
        out.append("<TR>")
        for value in row:
            if value is None:
                out.append("<TD>&nbsp;</TD>")
            else:
                text = esapi_html(value) if isinstance(value, str) else _java_str(value)
                out.append(f"<TD>{text}</TD>")
        out.append("</TR>")
    out.append("</TABLE></P>")
    return "".join(out)


def format_rows(format_: str | None, columns: list[str], rows: list[list],
                empty: str = "nbia") -> Response:
    """Render like ``formatResponse``; ``empty="bindaas"`` answers ``[]`` for no rows."""
    fmt = (format_ or "json").lower()
    if not rows and empty == "nbia":
        return Response(200, b"", {})
    if fmt == "json":
        return Response.text(to_json(columns, rows), content_type="application/json")
    if fmt == "html":
        return Response.text(to_html(columns, rows), content_type="text/html")
    if fmt == "xml":
        return Response.text(to_xml(columns, rows), content_type="application/xml")
    if fmt in ("csv", "csvquoted"):
        return Response.text(to_csv_quoted(columns, rows), content_type="text/csv")
    if fmt == "csv-download":
        response = Response.text(to_csv_quoted(columns, rows), content_type="text/csv")
        response.headers["Content-Disposition"] = 'attachment; filename="SeriesMetaData.csv"'
        return response
    if not rows:
        return Response(200, b"", {})
    return Response.text(SERVER_ERROR, 500)
