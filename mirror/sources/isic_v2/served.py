"""The mirror backend of the ISIC v2 API shape: a synced mirror's index and store.

``mirror serve`` answers ``/api/v2/...`` through :class:`~mirror.sources.isic_v2.shape.V2Api`
over this backend, so a client (isic-cli, the ISIC docs' samples, our own sync) sees the
archive's routes, parameters, cursor paging and error bodies. Records are the stored ones
(what the archive served when the mirror synced) in the archive's key order; their file
URLs point back at this server (``/blob/<sha256>``, served with ETag and Range) when the
mirror holds the file. What the mirror cannot know differs, and ``docs/serve.md`` says
how: a cursor encodes the position in the synced listing (the archive's hidden
``created`` is in no record), counts and facets come from the mirror's records (the
archive's come from a nightly search index), stats count what the mirror holds.
"""

from __future__ import annotations

import contextvars
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from sqlalchemy import select

from mirror.api import Mirror
from mirror.index import Blob, ObjectRow
from mirror.sources.isic_v2.sandbox import dsl
from mirror.sources.isic_v2.sandbox.data import ACQUISITION_ORDER, ANONYMOUS, CLINICAL_ORDER
from mirror.sources.isic_v2.sandbox.http import Response
from mirror.sources.isic_v2.shape import API_ROOT, Ordering, V2Api, attribution_counts

TOKEN_HOLDER = "token"  # the caller that showed --token-file's token: sees everything held
PREFETCH = 2000  # image documents read at a time when a search walks the listing
LESIONS_READ = 200  # lesion records read at a time when a page is rendered
SEARCHES_KEPT = 16  # recent searches whose matching rows a generation keeps (cursor walks)
ROLE_KEYS = (("image", "full"), ("thumbnail", "thumbnail_256"))
IMAGE_KEYS = ("isic_id", "copyright_license", "attribution", "files", "metadata", "public")
COLLECTION_KEYS = ("doi", "doi_url", "id", "name", "description", "public", "pinned", "locked")
LESION_KEYS = ("images", "images_count", "longitudinally_monitored", "index_image_id",
               "outcome_diagnosis", "outcome_diagnosis_1", "id")
MIRROR_USER = {"created": None, "accepted_terms": None, "hash_id": "MIRROR", "full_name":
               "Mirror Token", "id": 0, "email": "", "first_name": "Mirror",
               "last_name": "Token"}
host_of_request: contextvars.ContextVar[str] = contextvars.ContextVar("host", default="")


@dataclass(frozen=True)
class Row:
    """An image in the synced listing: ``rank`` is its place there (the cursor position)."""

    rank: int
    isic_id: str
    public: bool


@dataclass(frozen=True)
class CollectionRow:
    rank: int  # place in the synced collections/ listing (newest first)
    doc: dict
    members: frozenset[str]

    @property
    def name(self) -> str:
        return self.doc.get("name") or ""

    @property
    def pinned(self) -> bool:
        return bool(self.doc.get("pinned"))


def _rank(row: Any) -> int:
    return row.rank


ORDERS = {
    "images": Ordering(((_rank, False, int),), multi=True, sorted_ascending=True),
    # no record says which images are pinned: pin_sort keeps the listing's order
    "pinned": Ordering(((_rank, False, int),), multi=True, sorted_ascending=True),
    "collections": Ordering(((_rank, False, int),), multi=False),
    "collections:created": Ordering(((_rank, True, int),), multi=False),
    "collections:name": Ordering(((lambda c: c.name, False, str),), multi=False),
    "lesions": Ordering(((lambda lesion: lesion[0], False, str),), multi=False),
}


def _ordered(doc: dict, keys: tuple[str, ...]) -> dict:
    """``doc`` with ``keys`` first, in the archive's order (the index need not keep it)."""
    out = {k: doc[k] for k in keys if k in doc}
    out.update((k, v) for k, v in doc.items() if k not in out)
    return out


class MirrorBackend:
    """A :class:`~mirror.sources.isic_v2.shape.V2Backend` over one opened :class:`Mirror`.

    ``token``: the one bearer token that may read non-public objects (None: nobody)."""

    def __init__(self, mirror: Mirror, token: str | None = None):
        self.m = mirror
        self.token = token
        self._lock = threading.Lock()
        self._rows: list[Row] | None = None
        self._local = threading.local()
        self._searches: OrderedDict[tuple, list] = OrderedDict()
        self._collections: list[CollectionRow] | None = None
        self._lesions: list[tuple[str, bool]] | None = None

    @staticmethod
    def ordering(listing: str) -> Ordering:
        return ORDERS[listing]

    def cached_rows(self, key: tuple, compute: Callable[[], list]) -> list:
        """A recent search's rows (the generation is immutable, so they stay right): the
        pages after the first cost a bisect, not a scan of every record."""
        with self._lock:
            if key in self._searches:
                self._searches.move_to_end(key)
                return self._searches[key]
        rows = compute()
        with self._lock:
            self._searches[key] = rows
            while len(self._searches) > SEARCHES_KEPT:
                self._searches.popitem(last=False)
        return rows

    # -- documents -----------------------------------------------------------------------------

    def _doc(self, kind: str, key: str) -> dict | None:
        row = self.m._one(select(ObjectRow.doc).where(
            ObjectRow.kind == kind, ObjectRow.id == key, ObjectRow.removed.is_(False)))
        return None if row is None else row[0]

    def _docs(self, kind: str) -> list[dict]:
        return [r[0] for r in self.m._all(select(ObjectRow.doc).where(
            ObjectRow.kind == kind, ObjectRow.removed.is_(False)).order_by(ObjectRow.id))]

    def _listing(self, key: str, field: str) -> list:
        doc = self._doc("listing", key)
        return list((doc or {}).get(field) or [])

    def all_rows(self) -> list[Row]:
        """Every current image in the synced listing's order (images the listing lacks,
        from a partial sync, after it by isic_id); read once per generation."""
        with self._lock:
            if self._rows is None:
                found = dict(self.m._all(select(ObjectRow.id, ObjectRow.doc["public"]).where(
                    ObjectRow.kind == "image", ObjectRow.removed.is_(False))))
                order = [i for i in self._listing("images", "isic_ids") if i in found]
                seen = set(order)
                order += sorted(i for i in found if i not in seen)
                self._rows = [Row(n, i, found[i] is True or found[i] == 1)
                              for n, i in enumerate(order)]
            return self._rows

    def _image_doc(self, row: Row) -> dict:
        """The stored record of ``row``, read with the next :data:`PREFETCH` of the listing
        (a search reads the rows in order: one query per chunk, bounded memory)."""
        cache = getattr(self._local, "docs", None)
        if cache is None or row.isic_id not in cache:
            rows = self.all_rows()
            ids = [r.isic_id for r in rows[row.rank:row.rank + PREFETCH]]
            cache = dict(self.m._all(select(ObjectRow.id, ObjectRow.doc).where(
                ObjectRow.kind == "image", ObjectRow.id.in_(ids))))
            self._local.docs = cache
            self._local.shas = None
        return cache[row.isic_id]

    def _prefetch_files(self, ids: list[str]) -> None:
        """The stored files of ``ids`` in one query (a page renders up to 100 records)."""
        shas: dict[str, dict[str, str]] = {i: {} for i in ids}
        for object_id, role, sha in self.m._all(select(Blob.object_id, Blob.role, Blob.sha256)
                                                .where(Blob.object_id.in_(ids))):
            shas[object_id][role] = sha
        self._local.shas = shas

    # -- records -------------------------------------------------------------------------------

    def _file_urls(self, isic_id: str) -> dict[str, str]:
        known = getattr(self._local, "shas", None)
        if known is None or isic_id not in known:
            docs = getattr(self._local, "docs", None) or {}
            self._prefetch_files(sorted({isic_id, *docs}))
        shas = self._local.shas[isic_id]
        host = host_of_request.get()
        return {key: f"http://{host}/blob/{shas[role]}" for role, key in ROLE_KEYS
                if role in shas}

    def _record(self, doc: dict) -> dict:
        """A stored record as the archive serves it, its files at this server."""
        urls = self._file_urls(doc.get("isic_id", ""))
        files = {k: ({**ref, "url": urls[k]} if k in urls and isinstance(ref, dict) else ref)
                 for k, ref in (doc.get("files") or {}).items()}
        meta = doc.get("metadata") or {}
        metadata = {**meta, "acquisition": _ordered(meta.get("acquisition") or {},
                                                    ACQUISITION_ORDER),
                    "clinical": _ordered(meta.get("clinical") or {}, CLINICAL_ORDER)}
        return _ordered({**doc, "files": _ordered(files, ("full", "thumbnail_256")),
                         "metadata": _ordered(metadata, ("acquisition", "clinical"))},
                        IMAGE_KEYS)

    def image_record(self, row: Row) -> dict:
        return self._record(self._image_doc(row))

    def collection_record(self, row: CollectionRow) -> dict:
        return {k: row.doc.get(k) for k in COLLECTION_KEYS}

    def _lesion_doc(self, lesion_id: str) -> dict:
        """A lesion's record, read with the next lesions of the listing (and their images'
        files): a page of 100 lesions costs two queries, not two hundred."""
        cache = getattr(self._local, "lesions", None)
        if cache is None or lesion_id not in cache:
            ids = [x[0] for x in self._lesion_rows()]
            at = ids.index(lesion_id) if lesion_id in ids else 0
            wanted = [lesion_id, *ids[at:at + LESIONS_READ]]
            cache = dict(self.m._all(select(ObjectRow.id, ObjectRow.doc).where(
                ObjectRow.kind == "lesion", ObjectRow.id.in_(wanted))))
            self._local.lesions = cache
            self._prefetch_files(sorted({i.get("isic_id", "") for d in cache.values()
                                         for i in d.get("images") or [] if isinstance(i, dict)}))
        return cache.get(lesion_id) or {}

    def lesion_record(self, lesion: tuple[str, bool]) -> dict:
        doc = self._lesion_doc(lesion[0])
        images = [self._record(i) if isinstance(i, dict) else i for i in doc.get("images") or []]
        return _ordered({**doc, "images": images}, LESION_KEYS)

    # -- images --------------------------------------------------------------------------------

    def _sees(self, who: str, public: bool) -> bool:
        return public or who != ANONYMOUS

    def images(self, who: str, pin_sort: bool, collections: list[int] | None) -> list[Row]:
        rows = [r for r in self.all_rows() if self._sees(who, r.public)]
        if collections is not None:
            members: set[str] = set()
            for cid in collections:
                found = self.collection(cid, who)
                if found is not None:
                    members |= found.members
            rows = [r for r in rows if r.isic_id in members]
        return rows

    def search_record(self, row: Row) -> dict:
        """The flat field -> value record the search language evaluates (as the sandbox's)."""
        doc = self._image_doc(row)
        meta = doc.get("metadata") or {}
        flat = {k: v for part in ("acquisition", "clinical")
                for k, v in (meta.get(part) or {}).items() if k not in ("pixels_x", "pixels_y")}
        return {**flat, "isic_id": row.isic_id, "public": row.public,
                "copyright_license": doc.get("copyright_license")}

    def image(self, isic_id: str, who: str) -> Row | None:
        doc = self._doc("image", isic_id)
        if doc is None or not self._sees(who, doc.get("public") is True):
            return None
        rows = self.all_rows()
        rank = next((r.rank for r in rows if r.isic_id == isic_id), 0)
        self._local.docs, self._local.shas = {isic_id: doc}, None
        return Row(rank, isic_id, doc.get("public") is True)

    @staticmethod
    def image_count(who: str, tree: Any, collections: list[int] | None) -> None:
        return None  # the mirror's records are its only index: count the rows paged

    def indexed(self, who: str, tree: Any, collections: list[int] | None) -> list:
        """Matching images as the facets and size routes read them (``record``,
        ``blob_size``): from the records, not a nightly index."""
        out = []
        for row in self.images(who, False, collections):
            record = self.search_record(row)
            if dsl.matches(tree, record, mode="es"):
                size = ((self._image_doc(row).get("files") or {}).get("full") or {}).get("size")
                out.append(SimpleNamespace(record=record, blob_size=size or 0))
        return out

    def all_indexed(self) -> list:
        return [SimpleNamespace(record=self.search_record(r)) for r in self.all_rows()]

    # -- collections ---------------------------------------------------------------------------

    def _collection_rows(self) -> list[CollectionRow]:
        """Every collection in the synced listing's order, read once per generation."""
        with self._lock:
            if self._collections is None:
                docs = {str(d.get("id")): d for d in self._docs("collection")}
                order = [str(i) for i in self._listing("collections", "ids") if str(i) in docs]
                listed = set(order)
                order += sorted((k for k in docs if k not in listed), key=int, reverse=True)
                self._collections = [
                    CollectionRow(n, {k: docs[key].get(k) for k in COLLECTION_KEYS},
                                  frozenset(docs[key].get("isic_ids") or []))
                    for n, key in enumerate(order)]
            return self._collections

    def collections(self, who: str) -> list[CollectionRow]:
        return [c for c in self._collection_rows() if self._sees(who, c.doc.get("public") is True)]

    def collection(self, collection_id: int, who: str) -> CollectionRow | None:
        return next((c for c in self.collections(who) if c.doc.get("id") == collection_id),
                    None)

    def attribution(self, row: CollectionRow) -> list[dict]:
        """Counted by each member's recorded attribution (the archive counts the one frozen
        in the bytes, which only differs after a cohort is re-attributed)."""
        members, pairs = sorted(row.members), []
        for start in range(0, len(members), PREFETCH):
            pairs += [tuple(r) for r in self.m._all(select(
                ObjectRow.doc["copyright_license"].as_string(),
                ObjectRow.doc["attribution"].as_string()).where(
                ObjectRow.kind == "image", ObjectRow.removed.is_(False),
                ObjectRow.id.in_(members[start:start + PREFETCH])))]
        return attribution_counts(pairs)

    # -- lesions, users, stats -------------------------------------------------------------------

    def _lesion_rows(self) -> list[tuple[str, bool]]:
        """(lesion id, whether an anonymous caller sees it: all its images public), read
        once per generation; the records are read for the page shown."""
        with self._lock:
            if self._lesions is None:
                self._lesions = [(d["id"], all(isinstance(i, dict) and i.get("public") is True
                                               for i in d.get("images") or []))
                                 for d in self._docs("lesion")]
            return self._lesions

    def lesions(self, who: str) -> list[tuple[str, bool]]:
        return [x for x in self._lesion_rows() if who != ANONYMOUS or x[1]]

    def lesion(self, lesion_id: str, who: str) -> tuple[str, bool] | None:
        return next((x for x in self.lesions(who) if x[0] == lesion_id), None)

    def lesion_count(self, who: str) -> int:
        return len(self.lesions(who))

    @staticmethod
    def user(who: str) -> dict:
        return MIRROR_USER

    def stats(self) -> dict:
        """Counts of what the mirror holds (the archive counts everything it has)."""
        rows = self.all_rows()
        collections = self._collection_rows()
        return {
            "image": {"images_count": len(rows),
                      "public_images_count": sum(r.public for r in rows),
                      "annotated_images_count": 0},
            "collection": {"collections_count": len(collections),
                           "public_collections_count": sum(c.doc.get("public") is True
                                                           for c in collections)},
            "doi": {"dois_count": sum(bool(c.doc.get("doi")) for c in collections)},
            "study": {"studies_count": 0, "public_studies_count": 0,
                      "study_annotations_count": 0},
            "user": {"users_count": 0, "uploading_users_count": 0, "annotating_users_count": 0},
            "engagement": {"30_day_sessions_count": 0},
        }

    def who(self, authorization: str) -> str:
        """The token holder for ``Authorization: Bearer <token>``; anyone else is anonymous
        (as the archive serves a bad token: anonymous, not refused)."""
        given = authorization[7:].strip() if authorization[:7].lower() == "bearer " else ""
        if self.token and given and secrets.compare_digest(given, self.token):
            return TOKEN_HOLDER
        return ANONYMOUS


@dataclass
class Reply:
    """What :func:`mirror.serve.app.to_starlette` sends."""

    status: int
    body: bytes
    headers: dict[str, str]
    path: None = None
    sha256: None = None


class ServedApi:
    """The v2 shape as ``mirror serve`` calls a source's face: ``handle(method, path,
    query, headers)`` -> (pattern, reply)."""

    def __init__(self, backend: MirrorBackend):
        self.backend = backend
        self.shape = V2Api(backend)

    def handle(self, method: str, path: str, query: str, headers: Any) -> tuple[str, Reply]:
        host = headers.get("host") or "localhost"
        token = host_of_request.set(host)
        try:
            who = self.backend.who(headers.get("authorization") or "")
            response: Response = self.shape.handle(method, path, query, host, who)
        finally:
            host_of_request.reset(token)
        return self.shape.route_name(path), Reply(response.status, response.body,
                                                  dict(response.headers))


def holds_private(mirror: Mirror) -> bool:
    """True when the mirror may hold objects an anonymous caller must not see: synced with
    a token, or some image or collection record says it is not public."""
    if mirror.config.authenticated:
        return True
    for kind in ("image", "collection"):
        row = mirror._one(select(ObjectRow.id).where(
            ObjectRow.kind == kind, ObjectRow.removed.is_(False),
            ObjectRow.doc["public"].as_boolean().is_not(True)).limit(1))
        if row is not None:
            return True
    return False


def make_api(mirror: Mirror, token: str | None) -> ServedApi:
    """The ISIC v2 face ``mirror serve`` mounts at :data:`API_ROOT` for this mirror."""
    return ServedApi(MirrorBackend(mirror, token))


__all__ = ["API_ROOT", "MirrorBackend", "ServedApi", "holds_private", "make_api"]
