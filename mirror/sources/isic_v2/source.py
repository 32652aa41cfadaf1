"""The :class:`IsicV2Source`: the engine's seam for this archive (see the package docstring)."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any, ClassVar

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from mirror.errors import AuthenticationError, LoginLostError, MirrorError, MirrorModeError
from mirror.index import Blob, FileVersion, ObjectRow
from mirror.sources.base import DocumentRun, FileTask, SourceSpec
from mirror.sources.http import HttpClient
from mirror.sources.isic_v2.client import (
    TOKEN_ENV,
    ImageRecord,
    IsicV2Client,
    Listing,
    stable_document,
    strip_signed_query,
)
from mirror.sources.isic_v2.spec import SPEC

log = logging.getLogger("mirror.isic_v2")
EXPIRED = "HTTP 403 for "  # how the file fetcher reports CloudFront's refusal of a stale URL
BATCH = 500  # image documents per commit
OFFER_EVERY = 100  # image documents stored, indexed and their files begun per step (a page)
PLAN_ROWS = 1000  # image rows read at a time when planning files
FILES = (("full", "image", "full"), ("thumbnail", "thumbnail", "thumbnail_256"))


class IsicV2Source:
    """The engine's view of ISIC API v2: documents phase and file plan."""

    spec: ClassVar[SourceSpec] = SPEC
    objects: ClassVar[str] = "mirror.sources.isic_v2.objects:IsicV2Objects"  # m.image(...)
    exports: ClassVar[str] = "mirror.sources.isic_v2.exports"  # isic-cli's folder, the table
    snapshots: ClassVar[str] = "mirror.sources.isic_v2.snapshot"
    served: ClassVar[str] = "mirror.sources.isic_v2.served"  # mirror serve's API face

    def __init__(self, base_url: str, http: HttpClient):
        self.http = http
        self.client = IsicV2Client(base_url, http)
        self._signed: dict[str, dict[str, str]] = {}  # isic_id -> role -> live signed URL
        self._token_checked = False

    def login(self, username: str, password: str) -> None:
        """A token, not a password: ``ISIC_TOKEN`` (or the password given) is the bearer
        token; ``username`` only marks the mirror as authenticated."""
        if not self.client.authenticated:
            if not password:
                raise AuthenticationError(
                    f"ISIC API v2 logs in with a token: set {TOKEN_ENV} to the access_token "
                    "that 'isic user print-token' shows")
            self.client.use_token(password)
        self._check_token()

    def _check_token(self) -> None:
        """``users/me/`` once per run: the archive serves a bad token as anonymous."""
        if self._token_checked:
            return
        try:
            self.client.whoami()
        except MirrorError as exc:
            raise AuthenticationError(str(exc)) from None
        self._token_checked = True

    def check_login(self) -> None:
        """Ask ``users/me/`` again (the engine does before marking anything removed): a
        token that expired during the run is served as anonymous on public routes."""
        if not self.client.authenticated:
            return
        try:
            me = self.client.whoami()
        except MirrorError as exc:
            raise LoginLostError(f"the login no longer holds ({exc}); nothing was marked "
                                 "removed") from None
        if not isinstance(me, dict):
            raise LoginLostError(
                "the archive answered users/me/ anonymously: the token expired or was "
                f"dropped, so listings may lack private images; nothing was marked removed. "
                f"Set {TOKEN_ENV} to a fresh access token and run 'mirror sync' again")

    # -- documents ---------------------------------------------------------------------------

    def sync_documents(self, run: DocumentRun, options: Any) -> set[str] | None:
        """Re-list the scope; returns the isic_ids whose files are in scope (None: all)."""
        if run.public and self.client.authenticated:
            raise MirrorModeError(f"{TOKEN_ENV} is set but this mirror is anonymous: its "
                                  f"records would mix with private ones; unset {TOKEN_ENV}, "
                                  "or use an authenticated mirror (--username)")
        if self.client.authenticated:
            self._check_token()
        query, keys = _scope_of(options)
        collections = None if keys is None else self._collection_ids(keys)
        complete = (query is None and collections is None and options.limit is None
                    and options.image_ids is None)
        listed: set[str] | None = None
        if "images" in options.what:
            listed = self._sync_images(run, query, collections, options, complete)
        if "collections" in options.what:
            self._sync_collections(run)
        if "lesions" in options.what:
            self._sync_lesions(run)
        return None if complete else listed

    def _collection_ids(self, keys: list[str]) -> list[int]:
        """Collection ids for ids or exact names (as ``isic collection list`` shows them);
        an unknown name is an error before anything is listed (the archive would answer an
        unknown id with an empty listing)."""
        names = [k for k in keys if not k.isdigit()]
        by_name: dict[str, int] = {}
        if names:
            by_name = {c["name"]: c["id"] for c in self.client.collections()}
        unknown = [n for n in names if n not in by_name]
        if unknown:
            raise MirrorError(f"no collection named {unknown[0]!r} is visible to this mirror; "
                              "give its id or exact name (isic collection list)")
        return [int(k) if k.isdigit() else by_name[k] for k in keys]

    def _sync_images(self, run: DocumentRun, query: str | None, collections: list[int] | None,
                     options: Any, complete: bool) -> set[str]:
        listing, listed, page, order = Listing(), set(), [], []
        wanted, blobs = options.image_ids, frozenset(options.blobs or ())
        for record in self.client.images(query, collections, listing):
            if wanted is not None and record.isic_id not in wanted:
                continue
            listed.add(record.isic_id)
            order.append(record.isic_id)
            page.append(record)
            if len(page) == OFFER_EVERY:  # a page: its files start while listing goes on
                self._store_images(run, page, blobs)
                page = []
            if len(order) % BATCH == 0:
                run.commit()  # a run killed now keeps what it stored
            if options.limit is not None and len(listed) >= options.limit:
                break
        self._store_images(run, page, blobs)
        for line in listing.rejected:
            run.summary.fail("image", "?", "document", line)
        if complete and not listing.rejected:
            run.remove_missing("image", listed, where="the images/ listing")
            run.record("listing", run.store_docs("listing", [{"id": "images",
                                                              "isic_ids": order}]))
        elif complete:
            log.warning("not marking images removed: %d record(s) were rejected",
                        len(listing.rejected))
        run.commit()
        return listed

    def _store_images(self, run: DocumentRun, records: list[ImageRecord],
                      blobs: frozenset[str] = frozenset()) -> None:
        if not records:
            return
        self._retire_changed_files(run.session, records)
        for record in records:
            live = {role: ref.url for role, ref in (("image", record.full),
                                                    ("thumbnail", record.thumbnail))
                    if ref.signed}
            if live:
                self._signed[record.isic_id] = live
            else:
                self._signed.pop(record.isic_id, None)
        run.record("image", run.store_docs("image", [r.document for r in records]))
        run.offer(self._tasks_of(run.session, records, blobs))

    def _tasks_of(self, session: Session, records: list[ImageRecord],
                  blobs: frozenset[str]) -> list[FileTask]:
        """The wanted files of just-recorded ``records`` that the index lacks: what
        :meth:`plan_files` will plan for them, known now (the listing goes on meanwhile)."""
        if not blobs & {option for option, _, _ in FILES}:
            return []
        ids = [r.isic_id for r in records]
        have = {tuple(r) for r in session.execute(
            select(Blob.object_id, Blob.role).where(Blob.object_id.in_(ids)))}
        had = {tuple(r) for r in session.execute(
            select(FileVersion.object_id, FileVersion.role).where(FileVersion.object_id.in_(ids)))}
        return [task for record in records
                for task in self._tasks(record.isic_id, record.document, blobs, have, had)]

    @staticmethod
    def _retire_changed_files(session: Session, records: list[ImageRecord]) -> None:
        """Drop the current-file row of every role whose file the archive replaced (its
        stable URL, recorded size or pixel size changed): the plan then fetches it again as
        a new version (the old one stays in ``file_versions`` for snapshots)."""
        ids = [r.isic_id for r in records]
        before = dict(session.execute(select(ObjectRow.id, ObjectRow.doc).where(
            ObjectRow.kind == "image", ObjectRow.id.in_(ids))).all())
        for record in records:
            old = before.get(record.isic_id)
            if old is None:
                continue
            for _, role, key in FILES:
                if _file_identity(old, key) != _file_identity(record.document, key):
                    session.execute(delete(Blob).where(Blob.object_id == record.isic_id,
                                                       Blob.role == role))

    def _sync_collections(self, run: DocumentRun) -> None:
        docs, listed, complete = [], Listing(), True
        for collection in self.client.collections(listed):
            listing = Listing()
            ids = self.client.collection_image_ids(collection["id"], listing)
            if listing.rejected:
                complete = False
                for line in listing.rejected:
                    run.summary.fail("collection", str(collection["id"]), "membership", line)
            docs.append({**collection, "isic_ids": ids})
        run.record("collection", run.store_docs("collection", docs))
        # the listing's order (newest first) is in no record: mirror serve pages by it
        kind = run.spec.kind("collection")
        order = [d["id"] for d in docs if isinstance(d, dict) and "id" in d
                 and kind.valid_id(kind.id_of(d))]
        run.record("listing", run.store_docs("listing", [{"id": "collections", "ids": order}]))
        if _complete(run, "collection", listed) and complete:
            run.remove_missing("collection", _ids(run, "collection", docs),
                               where="the collections/ listing")
        run.commit()

    def _sync_lesions(self, run: DocumentRun) -> None:
        listed = Listing()
        docs = [{**lesion, "images": [stable_document(i) if isinstance(i, dict) else i
                                      for i in _list(lesion.get("images"))]}
                for lesion in self.client.lesions(listed)]
        run.record("lesion", run.store_docs("lesion", docs))
        if _complete(run, "lesion", listed):
            run.remove_missing("lesion", _ids(run, "lesion", docs),
                               where="the lesions/ listing")
        run.commit()

    # -- files -------------------------------------------------------------------------------

    def plan_files(self, session: Session, scope: set[str] | None,
                   options: frozenset[str]) -> list[FileTask]:
        """Every wanted file the index lacks, in isic_id order; a file the archive replaced
        (see :meth:`_retire_changed_files`) is fetched as a new version."""
        if not options & {option for option, _, _ in FILES}:
            return []  # metadata only: no record need be read again
        have = {tuple(r) for r in session.execute(select(Blob.object_id, Blob.role))}
        had = {tuple(r) for r in session.execute(select(FileVersion.object_id,
                                                        FileVersion.role))}
        rows = session.execute(select(ObjectRow.id, ObjectRow.doc).where(
            ObjectRow.kind == "image", ObjectRow.removed.is_(False)).order_by(ObjectRow.id)
            .execution_options(yield_per=PLAN_ROWS))  # streamed: 200,000 parsed records
            # would be ~1 GB
        return [task for isic_id, doc in rows if scope is None or isic_id in scope
                for task in self._tasks(isic_id, doc, options, have, had)]

    def _tasks(self, isic_id: str, doc: dict, options: frozenset[str], have: set,
               had: set) -> list[FileTask]:
        """The wanted files of one image record the index lacks (``have``: its current
        files; ``had``: any version, so a missing one is fetched as a new version)."""
        tasks = []
        for option, role, key in FILES:
            if option in options and (isic_id, role) not in have:
                task = self._task(isic_id, doc, option, role, key, (isic_id, role) in had)
                if task is not None:
                    tasks.append(task)
        return tasks

    def _task(self, isic_id: str, doc: dict, option: str, role: str, key: str,
              replace: bool) -> FileTask | None:
        ref = (doc.get("files") or {}).get(key) or {}
        url = ref.get("url")
        if not isinstance(url, str):
            return None
        public = bool(doc.get("public", True))
        if not public:
            url = None  # signed when its turn comes (fetch_file): a signature can expire
        acquisition = (doc.get("metadata") or {}).get("acquisition") or {}
        px, py = acquisition.get("pixels_x"), acquisition.get("pixels_y")
        shape = (py, px) if role == "image" and isinstance(px, int) and isinstance(py, int) \
            else None
        size = ref.get("size") if isinstance(ref.get("size"), int) else None
        # a public image's URL is the bucket's, stable and unsigned, fetched with no header
        return FileTask("image", isic_id, role, option, url=url, shape=shape, replace=replace,
                        size=size, public_url=public)

    def fetch_file(self, task: FileTask, fetcher: Any) -> list[tuple]:
        """A private image's file through its signed URL (this run's, else the record's
        again). A signature that expired meanwhile (CloudFront answers 403; the archive
        renews URLs daily and they live 6-7 days, so a long or resumed sync meets this)
        makes the record be fetched again for a fresh URL, once; the sync does not fail."""
        key = "full" if task.role == "image" else "thumbnail_256"
        url = self._signed.get(task.object_id, {}).get(task.role)
        if url is not None:
            try:
                return fetcher.fetch(replace(task, url=url))
            except MirrorError as exc:
                if not str(exc).startswith(EXPIRED):
                    _unsigned(exc, url)
                log.info("%s of %s: the signed URL expired; asking for the record again",
                         task.role, task.object_id)
        url = self._fresh_signed_url(task.object_id, key)
        if url is None:
            raise MirrorError(f"{task.object_id} is no longer visible to this token (404); "
                              "the next sync marks it removed")
        self._signed.setdefault(task.object_id, {})[task.role] = url
        try:
            return fetcher.fetch(replace(task, url=url))
        except MirrorError as exc:
            _unsigned(exc, url)

    def _fresh_signed_url(self, isic_id: str, key: str) -> str | None:
        record = self.client.image(isic_id)
        if record is None:
            return None
        return record.full.url if key == "full" else record.thumbnail.url


def _unsigned(exc: MirrorError, url: str) -> None:
    """Re-raise ``exc``; a message naming the signed URL names it unsigned instead (a
    signature is a capability: it stays out of reports and logs)."""
    if url in str(exc):
        raise MirrorError(str(exc).replace(url, strip_signed_query(url))) from None
    raise exc


def _file_identity(doc: dict, key: str) -> tuple:
    ref = (doc.get("files") or {}).get(key) or {}
    url = ref.get("url")
    identity: tuple = (strip_signed_query(url) if isinstance(url, str) else None,
                       ref.get("size"))
    if key == "full":
        acquisition = (doc.get("metadata") or {}).get("acquisition") or {}
        identity += (acquisition.get("pixels_x"), acquisition.get("pixels_y"))
    return identity


def _scope_of(options: Any) -> tuple[str | None, list[str] | None]:
    """The search query and collections (ids or names) a run is limited to
    (``options.scope``)."""
    scope = getattr(options, "scope", None) or {}
    query = scope.get("search") or None
    raw = scope.get("collections", scope.get("collection"))
    if raw is None or raw == "":
        return query, None
    if isinstance(raw, str):
        items = raw.split(",")
    elif isinstance(raw, list | tuple | set | frozenset):
        items = list(raw)
    else:
        items = [raw]
    return query, [str(x).strip() for x in items if str(x).strip()]


__all__ = ["SPEC", "IsicV2Source"]


def _ids(run: DocumentRun, kind: str, docs: list) -> set[str]:
    """The valid ids among listed documents (a malformed one is a failure of its own)."""
    spec = run.spec.kind(kind)
    return {spec.id_of(d) for d in docs if isinstance(d, dict) and spec.valid_id(spec.id_of(d))}


def _complete(run: DocumentRun, kind: str, listing: Listing) -> bool:
    """Fail each record the client rejected; True when there were none (a listing with a
    malformed record may not mark anything removed: it could have been any object)."""
    for line in listing.rejected:
        run.summary.fail(kind, "?", "document", line)
    return not listing.rejected


def _list(value: object) -> list:
    return value if isinstance(value, list) else []
