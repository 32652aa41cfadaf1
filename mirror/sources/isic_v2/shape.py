"""The shape of the ISIC Archive API v2: routes, parameters, cursor paging, JSON, errors.

One route table serves two faces: the sandbox (a synthetic archive, for tests and demos)
and ``mirror serve`` (a synced mirror, for a lab). What differs between them is only where
the rows and records come from, a :class:`V2Backend`; everything a client can see — the
trailing-slash routes (301 for a slash-less GET), which parameters are accepted and how
django-ninja refuses the others (422 ``{"detail": [...]}``), the keyset cursor pagination
with the server's cursor encoding and links, 400 ``{"message": ...}`` for a bad search, 404
``{"detail": "Not Found"}``, 401 ``{"detail": "Unauthorized"}`` — is decided here, once, so
the two cannot drift apart. Behaviour follows the research note ``isic_v2_api.md``.
"""

from __future__ import annotations

import base64
import bisect
import re
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any, Protocol
from urllib.parse import parse_qs, parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from mirror.sources.isic_v2.sandbox import dsl
from mirror.sources.isic_v2.sandbox.data import ANONYMOUS
from mirror.sources.isic_v2.sandbox.http import DJANGO_404, DJANGO_500, Response

API_ROOT = "/api/v2"
MAX_PAGE = 100  # limit_max; every page query reads MAX_PAGE + 1 rows
OFFSET_CUTOFF = 100
LICENSE_NAMES = ("CC-0", "CC-BY", "CC-BY-NC")
NOT_FOUND = {"detail": "Not Found"}
UNAUTHORIZED = {"detail": "Unauthorized"}
BAD_SEARCH = {"message": "Could not parse search query."}
INT_MSG = "Input should be a valid integer, unable to parse string as an integer"
BOOL_MSG = "Input should be a valid boolean, unable to interpret input"
INTEGER = re.compile(r"^\s*[+-]?\d+\s*$")
TRUE_WORDS, FALSE_WORDS = {"1", "on", "t", "true", "y", "yes"}, {"0", "off", "f", "false", "n",
                                                                  "no"}


class HttpError(Exception):
    """An answer other than 200, raised from anywhere in a handler."""

    def __init__(self, response: Response):
        super().__init__(response.status)
        self.response = response


def _json_error(body: object, status: int) -> HttpError:
    return HttpError(Response.json(body, status))


def _invalid(errors: list[dict]) -> HttpError:
    return _json_error({"detail": errors}, 422)


def _value_error(loc: list, message: str) -> dict:
    return {"type": "value_error", "loc": loc, "msg": f"Value error, {message}",
            "ctx": {"error": message}}


BAD_POSITION = {"loc": ["query", "cursor"], "msg": "Value error, Invalid cursor."}


@dataclass
class Request:
    method: str
    path: str  # after /api/v2, percent-decoded, e.g. "/images/ISIC_0000000/"
    query: str  # raw query string
    host: str  # Host header (for next/previous links)
    who: str  # ANONYMOUS, USER or STAFF
    raw_path: str = ""  # the full request path as sent, for build_absolute_uri

    def values(self, key: str) -> list[str]:
        return [v for k, v in parse_qsl(self.query, keep_blank_values=True) if k == key]

    def get(self, key: str) -> str | None:
        """The last value of ``key``, as Django's ``QueryDict.get``."""
        found = self.values(key)
        return found[-1] if found else None


@dataclass
class Cursor:
    offset: int = 0
    reverse: bool = False
    position: str | None = None


@dataclass
class Ordering:
    """How one listing is ordered and how a cursor position maps onto it."""

    fields: tuple[tuple[Callable, bool, Callable], ...]  # (value of row, descending, parse)
    multi: bool  # PinnedFirstPagination: the position names every field, "|"-joined
    sorted_ascending: bool = False  # one ascending field with distinct values: may bisect

    def position(self, row) -> str:
        values = [str(get(row)) for get, _, _ in self.fields]
        return "|".join(values) if self.multi else values[0]

    def parse(self, position: str) -> tuple:
        parts = position.split("|") if self.multi else [position]
        if self.multi and len(parts) != len(self.fields):
            raise _invalid([BAD_POSITION])
        used = self.fields if self.multi else self.fields[:1]
        try:
            return tuple(parse(part) for (_, _, parse), part in zip(used, parts, strict=True))
        except ValueError:
            raise _invalid([BAD_POSITION]) from None

    def after(self, row, position: tuple, reverse: bool) -> bool:
        """Whether ``row`` lies strictly after ``position`` in the direction of travel."""
        used = self.fields if self.multi else self.fields[:1]
        for (get, descending, _), wanted in zip(used, position, strict=True):
            value = get(row)
            if value != wanted:
                return (value > wanted) == (reverse == descending)
        return False

    def sort(self, rows: list) -> list:
        for get, descending, _ in reversed(self.fields):
            rows = sorted(rows, key=get, reverse=descending)
        return rows


def decode_cursor(raw: str) -> Cursor:
    """The server's cursor: standard base64 of ``o=..&r=1&p=..`` (each only when set)."""
    try:
        tokens = parse_qs(base64.b64decode(raw).decode(), keep_blank_values=True)
        offset = max(0, min(int(tokens.get("o", ["0"])[0]), OFFSET_CUTOFF))
        reverse = bool(int(tokens.get("r", ["0"])[0]))
        position = tokens.get("p", [None])[0]
    except (TypeError, ValueError):
        raise ValueError("Invalid cursor.") from None
    return Cursor(offset, reverse, position)


def encode_cursor(cursor: Cursor) -> str:
    tokens = {}
    if cursor.offset:
        tokens["o"] = str(cursor.offset)
    if cursor.reverse:
        tokens["r"] = "1"
    if cursor.position is not None:
        tokens["p"] = cursor.position
    return base64.b64encode(urlencode(tokens).encode()).decode()


def replace_query_param(url: str, key: str, value: str) -> str:
    """The server's link rewrite: keys sorted, values re-encoded, blank values kept."""
    scheme, netloc, path, query, fragment = urlsplit(url)
    params = parse_qs(query, keep_blank_values=True)
    params[key] = [value]
    return urlunsplit((scheme, netloc, path, urlencode(sorted(params.items()), doseq=True),
                       fragment))


def paging_input(request: Request) -> tuple[list[dict], int | None, Cursor]:
    """Validation errors of ``limit`` and ``cursor``, and their values."""
    errors, limit, cursor = [], None, Cursor()
    raw_limit = request.get("limit")
    if raw_limit is not None:
        if INTEGER.match(raw_limit):
            limit = int(raw_limit)
        else:
            errors.append({"type": "int_parsing", "loc": ["query", "limit"], "msg": INT_MSG})
    raw_cursor = request.get("cursor")
    if raw_cursor is not None:
        try:
            cursor = decode_cursor(raw_cursor)
        except ValueError:
            errors.append(_value_error(["query", "cursor"], "Invalid cursor."))
    return errors, limit, cursor


def paginate(request: Request, rows: list, ordering: Ordering, limit: int | None,
             cursor: Cursor, render: Callable, count: Callable[[], int] | None = None,
             custom_count: int | None = None) -> dict:
    """One page of ``rows`` (already in forward order) as the server's CursorPagination."""
    size = max(0, min(limit or MAX_PAGE, MAX_PAGE))
    if custom_count is not None:
        total = custom_count
    else:
        total = (count() if count else len(rows)) if cursor.position is None else None
    results = _window(rows, ordering, cursor)
    page = results[:size]
    following = ordering.position(results[-1]) if len(results) > len(page) else None
    if cursor.reverse:
        page.reverse()
        has_next = cursor.position is not None or cursor.offset > 0
        has_previous = following is not None
        next_position = cursor.position if has_next else None
        previous_position = following
    else:
        has_next = following is not None
        has_previous = cursor.position is not None or cursor.offset > 0
        next_position = following
        previous_position = cursor.position if has_previous else None
    base = f"http://{request.host}{request.raw_path}"
    positions = [ordering.position(r) for r in page]
    link = _Links(positions, cursor, size, next_position, previous_position)
    return {
        "results": [render(r) for r in page],
        "count": total,
        "next": replace_query_param(base, "cursor", encode_cursor(link.next(has_previous)))
        if has_next else None,
        "previous": replace_query_param(base, "cursor", encode_cursor(link.previous(has_next)))
        if has_previous else None,
    }


def _window(rows: list, ordering: Ordering, cursor: Cursor) -> list:
    """The up to MAX_PAGE + 1 rows after the cursor, in the direction of travel."""
    position = ordering.parse(cursor.position) if cursor.position is not None else None
    width = MAX_PAGE + 1
    if ordering.sorted_ascending:  # one ascending field: bisect instead of scanning
        get = ordering.fields[0][0]
        keys = _Keys(rows, get)
        if not cursor.reverse:
            start = bisect.bisect_right(keys, position[0]) if position else 0
            return rows[start + cursor.offset:start + cursor.offset + width]
        end = bisect.bisect_left(keys, position[0]) if position else len(rows)
        end -= cursor.offset
        return rows[max(0, end - width):max(0, end)][::-1]
    if cursor.reverse:
        rows = rows[::-1]
    if position is not None:
        rows = [r for r in rows if ordering.after(r, position, cursor.reverse)]
    return rows[cursor.offset:cursor.offset + width]


class _Keys:
    """A read-only sequence view of one field of sorted rows, for :mod:`bisect`."""

    def __init__(self, rows: list, get: Callable):
        self.rows, self.get = rows, get

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int):
        return self.get(self.rows[index])


@dataclass
class _Links:
    """The boundary a next/previous link encodes: the last (first) row of the page whose
    position differs from its neighbour's, plus an offset over trailing ties."""

    positions: list[str]
    cursor: Cursor
    size: int
    next_position: str | None
    previous_position: str | None

    def next(self, has_previous: bool) -> Cursor:
        page, cursor = self.positions, self.cursor
        compare = page[-1] if page and cursor.reverse and cursor.offset else self.next_position
        offset, position, unique = 0, None, False
        for position in reversed(page):
            if position != compare:
                unique = True
                break
            compare = position
            offset += 1
        if page and not unique:
            if not has_previous:
                offset, position = self.size, None
            elif cursor.reverse:
                offset, position = 0, self.previous_position
            else:
                offset, position = cursor.offset + self.size, self.previous_position
        if not page:
            position = self.next_position
        return Cursor(offset, False, position)

    def previous(self, has_next: bool) -> Cursor:
        page, cursor = self.positions, self.cursor
        compare = page[0] if page and not cursor.reverse and cursor.offset else \
            self.previous_position
        offset, position, unique = 0, None, False
        for position in page:
            if position != compare:
                unique = True
                break
            compare = position
            offset += 1
        if page and not unique:
            if not has_next:
                offset, position = self.size, None
            elif cursor.reverse:
                offset, position = cursor.offset + self.size, self.next_position
            else:
                offset, position = 0, self.next_position
        if not page:
            position = self.previous_position
        return Cursor(offset, True, position)




def license_text(name: str) -> bytes | None:
    """A licence file as the archive's zip downloads carry it (package data), or None."""
    if name not in LICENSE_NAMES:
        return None
    return resources.files("mirror.sources.isic_v2").joinpath("licenses", f"{name}.txt"
                                                              ).read_bytes()


class V2Backend(Protocol):
    """Where an ISIC v2 face gets its rows and records.

    ``who`` is :data:`~mirror.sources.isic_v2.sandbox.data.ANONYMOUS` or a caller the
    backend recognised from its token. A *row* is whatever the backend's orderings read
    (:class:`Ordering` turns it into a cursor position); records are the JSON the
    archive serves, in its key order."""

    def ordering(self, listing: str) -> Ordering:
        """The order of ``images``, ``pinned`` (``pin_sort``), ``collections`` (and
        ``collections:name``, ``collections:created``) or ``lesions``."""
        ...

    def images(self, who: str, pin_sort: bool, collections: list[int] | None) -> list: ...
    def search_record(self, row: Any) -> dict: ...
    def image_record(self, row: Any) -> dict: ...
    def image(self, isic_id: str, who: str) -> Any | None: ...
    def image_count(self, who: str, tree: Any, collections: list[int] | None
                    ) -> Callable[[], int] | None:
        """How a first page counts its listing (None: the rows it pages)."""
        ...

    def indexed(self, who: str, tree: Any, collections: list[int] | None) -> list: ...
    def all_indexed(self) -> list: ...
    def collections(self, who: str) -> list: ...
    def collection(self, collection_id: int, who: str) -> Any | None: ...
    def collection_record(self, row: Any) -> dict: ...
    def attribution(self, row: Any) -> list[dict]: ...
    def lesions(self, who: str) -> list: ...
    def lesion(self, lesion_id: str, who: str) -> Any | None: ...
    def lesion_record(self, row: Any) -> dict: ...
    def lesion_count(self, who: str) -> int | None: ...
    def user(self, who: str) -> dict: ...
    def stats(self) -> dict: ...


def _pinned_error(pinned: str | None) -> list[dict]:
    if pinned is not None and pinned.lower() not in TRUE_WORDS | FALSE_WORDS:
        return [{"type": "bool_parsing", "loc": ["query", "pinned"], "msg": BOOL_MSG}]
    return []


def _sort_error(sort: str | None) -> list[dict]:
    if sort is not None and sort not in ("name", "created"):
        return [{"type": "literal_error", "loc": ["query", "sort"],
                 "msg": "Input should be 'name' or 'created'",
                 "ctx": {"expected": "'name' or 'created'"}}]
    return []


class V2Api:
    """Routes ``/api/v2/...`` requests to handlers over one :class:`V2Backend`.

    ``page_hook`` (the sandbox's hostile mode) may rewrite an image listing page."""

    def __init__(self, backend: V2Backend):
        self.backend = backend
        self.page_hook: Callable[[Request, dict], dict] | None = None
        self.routes: list[tuple[tuple[str, ...], Callable, bool]] = [  # (shape, handler, login)
            (("images",), self.image_list, False),
            (("images", "search"), self.image_search, False),
            (("images", "search", "size"), self.image_search_size, False),
            (("images", "facets"), self.image_facets, False),
            (("images", "{}"), self.image_detail, False),
            (("images", "{}", "similar"), self.image_similar, True),
            (("collections",), self.collection_list, False),
            (("collections", "{}"), self.collection_detail, False),
            (("collections", "{}", "attribution"), self.collection_attribution, False),
            (("lesions",), self.lesion_list, False),
            (("lesions", "{}"), self.lesion_detail, False),
            (("zip-download", "license-file", "{}"), self.license_file, False),
            (("users", "me"), self.user_me, True),
            (("stats",), self.stats, False),
        ]

    # -- routing -------------------------------------------------------------------------------

    def match(self, path: str) -> tuple[tuple[str, ...], Callable, bool, list[str]] | None:
        if not path.endswith("/"):
            return None
        parts = path[1:-1].split("/") if path.strip("/") else []
        for shape, handler, login in self.routes:
            if len(shape) == len(parts) and all(s == "{}" and p or s == p
                                                for s, p in zip(shape, parts, strict=True)):
                return shape, handler, login, [p for s, p in zip(shape, parts, strict=True)
                                               if s == "{}"]
        return None

    def route_name(self, path: str) -> str:
        """The pattern a request counts under in the statistics."""
        found = self.match(path)
        if found is None:
            return "other"
        names = iter(("isic_id",) if found[0][0] == "images" else ("id",) if found[0][0] in (
            "collections", "lesions") else ("license",))
        return "/" + "/".join(f"{{{next(names)}}}" if s == "{}" else s for s in found[0]) + "/"

    def handle(self, method: str, raw_path: str, query: str, host: str, who: str) -> Response:
        """One request below ``/api/v2`` (``raw_path`` as sent, not yet decoded)."""
        path = unquote(raw_path)
        found = self.match(path)
        if found is None:
            if not path.endswith("/") and self.match(path + "/") is not None:
                location = raw_path + "/" + (f"?{query}" if query else "")
                return Response(301, b"", {"Location": API_ROOT + location,
                                           "Content-Type": "text/html; charset=utf-8"})
            return Response.html(DJANGO_404, 404)
        _, handler, login, args = found
        if method != "GET":
            return Response(405, b"", {"Allow": "GET", "Content-Type": "text/html; charset=utf-8"})
        request = Request(method, path, query, host, who,
                          API_ROOT + raw_path + (f"?{query}" if query else ""))
        try:
            if login and who == ANONYMOUS:
                raise _json_error(UNAUTHORIZED, 401)
            return handler(request, *args)
        except HttpError as err:
            return err.response
        except dsl.UnstoredFieldError:
            return Response.html(DJANGO_500, 500)

    # -- images --------------------------------------------------------------------------------

    def _image_rows(self, request: Request, tree, collections: list[int] | None) -> list:
        """The listing's rows; a backend whose rows cannot change under it (a mirror's
        generation) may keep a search's rows (``cached_rows``), so walking its pages
        scans the records once, not once per page."""
        pin_sort = bool(request.get("pin_sort"))

        def compute() -> list:
            rows = self.backend.images(request.who, pin_sort, collections)
            if tree is not None:
                record = self.backend.search_record
                rows = [r for r in rows if dsl.matches(tree, record(r))]
            return rows

        cached = getattr(self.backend, "cached_rows", None)
        if cached is None:
            return compute()
        key = (request.who, pin_sort, tuple(collections or ()), request.get("query") or "")
        return cached(key, compute)

    def _list(self, request: Request, tree, collections, errors: list[dict]) -> Response:
        paging_errors, limit, cursor = paging_input(request)
        if errors or paging_errors:
            raise _invalid(errors + paging_errors)
        if tree == "bad":
            raise _json_error(BAD_SEARCH, 400)
        rows = self._image_rows(request, tree, collections)
        ordering = self.backend.ordering("pinned" if request.get("pin_sort") else "images")
        count = self.backend.image_count(request.who, tree, collections)
        page = paginate(request, rows, ordering, limit, cursor, self.backend.image_record,
                        count)
        if self.page_hook:
            page = self.page_hook(request, page)
        return Response.json(page)

    def image_list(self, request: Request) -> Response:
        return self._list(request, None, None, [])

    def _search_input(self, request: Request) -> tuple[object, list[int] | None, list[dict]]:
        """(parse tree, "bad" or None; collection ids or None; validation errors)."""
        errors: list[dict] = []
        raw = request.get("query")
        try:
            tree = dsl.parse(raw) if raw else None
        except dsl.SearchParseError:
            tree = "bad"
        values = request.values("collections")
        collections = None
        if len(values) == 1 and values[0]:
            try:
                collections = [int(x) for x in values[0].split(",")]
            except ValueError as exc:
                errors.append(_value_error(["query", "collections"], str(exc)))
        elif len(values) > 1:
            collections = []
            for k, value in enumerate(values):
                if INTEGER.match(value):
                    collections.append(int(value))
                else:
                    errors.append({"type": "int_parsing", "loc": ["query", "collections", k],
                                   "msg": INT_MSG})
        return tree, collections or None, errors

    def _checked_search(self, request: Request) -> tuple[object, list[int] | None]:
        tree, collections, errors = self._search_input(request)
        if errors:
            raise _invalid(errors)
        if tree == "bad":
            raise _json_error(BAD_SEARCH, 400)
        return tree, collections

    def image_search(self, request: Request) -> Response:
        tree, collections, errors = self._search_input(request)
        return self._list(request, tree, collections, errors)

    def image_search_size(self, request: Request) -> Response:
        tree, collections = self._checked_search(request)
        docs = self.backend.indexed(request.who, tree, collections)
        return Response.json({"size": sum(d.blob_size for d in docs)})

    def image_facets(self, request: Request) -> Response:
        tree, collections = self._checked_search(request)
        return Response.json(facets(self.backend.indexed(request.who, tree, collections),
                                    self.backend.all_indexed()))

    def image_detail(self, request: Request, isic_id: str) -> Response:
        image = self.backend.image(isic_id, request.who)
        if image is None:
            raise _json_error(NOT_FOUND, 404)
        return Response.json(self.backend.image_record(image))

    def image_similar(self, request: Request, isic_id: str) -> Response:
        raw = request.get("limit")
        if raw is not None and not INTEGER.match(raw):
            raise _invalid([{"type": "int_parsing", "loc": ["query", "limit"], "msg": INT_MSG}])
        if raw is not None and int(raw) > 50:
            raise _invalid([{"type": "less_than_equal", "loc": ["query", "limit"],
                             "msg": "Input should be less than or equal to 50",
                             "ctx": {"le": 50}}])
        if self.backend.image(isic_id, request.who) is None:
            raise _json_error(NOT_FOUND, 404)
        return Response.json([])  # neither face holds image embeddings

    # -- collections ---------------------------------------------------------------------------

    def collection_list(self, request: Request) -> Response:
        pinned, sort = request.get("pinned"), request.get("sort")
        errors = _pinned_error(pinned) + _sort_error(sort)
        paging_errors, limit, cursor = paging_input(request)
        if errors or paging_errors:
            raise _invalid(errors + paging_errors)
        rows = self.backend.collections(request.who)
        if pinned is not None:
            rows = [c for c in rows if c.pinned == (pinned.lower() in TRUE_WORDS)]
        ordering = self.backend.ordering(f"collections:{sort}" if sort else "collections")
        page = paginate(request, ordering.sort(rows), ordering, limit, cursor,
                        self.backend.collection_record)
        return Response.json(page)

    def _collection(self, request: Request, raw_id: str) -> Any:
        if not INTEGER.match(raw_id):
            raise _invalid([{"type": "int_parsing", "loc": ["path", "id"], "msg": INT_MSG}])
        collection = self.backend.collection(int(raw_id), request.who)
        if collection is None:
            raise _json_error(NOT_FOUND, 404)
        return collection

    def collection_detail(self, request: Request, raw_id: str) -> Response:
        return Response.json(self.backend.collection_record(self._collection(request, raw_id)))

    def collection_attribution(self, request: Request, raw_id: str) -> Response:
        return Response.json(self.backend.attribution(self._collection(request, raw_id)))

    # -- lesions, licences, users, stats ---------------------------------------------------------

    def lesion_list(self, request: Request) -> Response:
        paging_errors, limit, cursor = paging_input(request)
        if paging_errors:
            raise _invalid(paging_errors)
        rows = self.backend.lesions(request.who)
        return Response.json(paginate(request, rows, self.backend.ordering("lesions"), limit,
                                      cursor, self.backend.lesion_record,
                                      custom_count=self.backend.lesion_count(request.who)))

    def lesion_detail(self, request: Request, lesion_id: str) -> Response:
        lesion = self.backend.lesion(lesion_id, request.who)
        if lesion is None:
            raise _json_error(NOT_FOUND, 404)
        return Response.json(self.backend.lesion_record(lesion))

    @staticmethod
    def license_file(request: Request, name: str) -> Response:
        text = license_text(name)
        if text is None:
            raise _json_error(NOT_FOUND, 404)
        return Response(200, text, {"Content-Type": "text/plain"})

    def user_me(self, request: Request) -> Response:
        return Response.json(self.backend.user(request.who))

    def stats(self, request: Request) -> Response:
        return Response.json(self.backend.stats())


def attribution_counts(pairs: list[tuple[str, str]]) -> list[dict]:
    """``collections/{id}/attribution/``: (licence, attribution) pairs counted, most first."""
    counts: dict[tuple[str, str], int] = {}
    for key in pairs:
        counts[key] = counts.get(key, 0) + 1
    rows = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return [{"license": lic, "attribution": attribution, "count": n}
            for (lic, attribution), n in rows]


# -- facets (Elasticsearch aggregations over the nightly index) ----------------------------------

RANGES = {
    "age_approx": [(a, a + 10) for a in range(0, 90, 10)],
    "clin_size_long_diam_mm": [(0.0, 5.0), (5.0, 10.0), (10.0, 20.0), (20.0, None)],
    "mel_thick_mm": [(0.0, 0.5), (0.5, 1.0), (1.0, 2.0), (2.0, 4.0), (4.0, None)],
}
TERM_FACETS = ("diagnosis_1", "diagnosis_2", "diagnosis_3", "diagnosis_4", "diagnosis_5",
               "anatom_site_1", "anatom_site_2", "anatom_site_3", "anatom_site_special",
               "sex", "image_type", "dermoscopic_type", "tbp_tile_type", "image_manipulation",
               "diagnosis_confirm_type", "fitzpatrick_skin_type", "mel_mitotic_index",
               "melanocytic", "mel_ulcer", "personal_hx_mm", "family_hx_mm",
               "concomitant_biopsy", "copyright_license")


def facets(docs: list, all_docs: list) -> dict:
    """The shape of ``images/facets/``: ``meta`` counts and ``buckets`` per field; term
    buckets list every value the index holds (``min_doc_count: 0``); ranges end in ``*``."""
    out: dict = {}
    for name in TERM_FACETS:
        present = [d.record[name] for d in docs if d.record.get(name) is not None]
        known = {d.record[name] for d in all_docs if d.record.get(name) is not None}
        counts = {k: 0 for k in known}
        for value in present:
            counts[value] += 1
        buckets = sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0])))
        out[name] = {"meta": {"missing_count": len(docs) - len(present),
                              "present_count": len(present)},
                     "buckets": [{"key": k, "doc_count": n} for k, n in buckets]}
    for name, ranges in RANGES.items():
        values = [float(d.record[name]) for d in docs if d.record.get(name) is not None]
        buckets = []
        for lo, hi in ranges:
            bucket = {"key": f"{lo:.1f}-{'*' if hi is None else f'{hi:.1f}'}", "from": lo,
                      "doc_count": sum(v >= lo and (hi is None or v < hi) for v in values)}
            bucket["to"] = "*" if hi is None else hi
            buckets.append(bucket)
        out[name] = {"meta": {"missing_count": len(docs) - len(values),
                              "present_count": len(values)}, "buckets": buckets}
    return out
