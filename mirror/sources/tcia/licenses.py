"""Each collection's ``LICENSE`` text, as NBIA's ``getImage`` zips carry it.

NBIA writes a ``LICENSE`` entry first in every series zip: its licence template filled
with the collection, licence name and URL (``tcia_idc.md`` §1.6). The text is the same for
every series of a collection, so the mirror keeps it once per collection, as the
collection object's ``license`` file (``license_<collection id>.txt``): content-addressed,
a changed text is a new version beside the old one (kept while a snapshot pins it, then
left to ``mirror gc``), the index naming the current one.

The text is read from a zip by its checked reader, and kept only when that series
passed every check (:meth:`LicenseKeeper.fetched`, in the fetcher's thread). A licence
change shows in no hash, only in the rows' ``LicenseName``/``LicenseURI``; when those move
and no series of the collection is fetched anyway, the collection's smallest held series
is fetched again to read the new text (:func:`series_to_refresh`, one zip per changed
collection). The seed's v3 zips have no ``LICENSE``: a v3 mirror has no licence files.
"""

from __future__ import annotations

import threading

from mirror.config import utc_now
from mirror.ingest import blob_row, ingest_blobs
from mirror.sources.tcia.hierarchy import COLLECTION_FIELDS, collection_key
from mirror.store import blob_relpath

ROLE = "license"


class LicenseKeeper:
    """Licence texts seen in zips, kept per collection once their series is stored."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: dict[str, str] = {}  # series -> text (zip downloaded, not yet checked)
        self._pending: dict[str, str] = {}  # collection name -> text (series stored)

    def saw(self, series_uid: str, text: str | None) -> None:
        """In a worker: the ``LICENSE`` text of a series zip that passed its checks."""
        if text is not None:
            with self._lock:
                self._seen[series_uid] = text

    def fetched(self, series_uid: str, collection: str | None) -> None:
        """In the fetcher's thread: the series passed; its collection's text is current."""
        with self._lock:
            text = self._seen.pop(series_uid, None)
            if text is not None and collection:
                self._pending[collection] = text

    def flush(self, run) -> None:
        """Store each pending text as its collection's ``license`` file and index it (in
        the commit that indexes the series it came with)."""
        with self._lock:
            pending, self._pending = self._pending, {}
        if not pending or run is None:
            return
        now, rows = utc_now(), []
        for name, text in sorted(pending.items()):
            cid = collection_key(name)
            relpath = blob_relpath(ROLE, cid, ext=".txt",
                                   shard=run.spec.shard_of("collection", cid))
            stored = run.store.put_bytes(relpath, text.encode("utf-8"), new_version=True)
            rows.append(blob_row(cid, ROLE, stored.relpath, stored.sha256, stored.size,
                                 "text/plain; charset=utf-8", now))
        ingest_blobs(run.session, rows)


def series_to_refresh(plan, known: dict, fetching: set[str]) -> set[str]:
    """One held series per collection whose licence fields changed while none of its
    series is fetched this run: its zip brings the new ``LICENSE`` text."""
    moved: dict[str, list[str]] = {}
    for uid in plan.fields_only:
        row, before = plan.rows[uid], known[uid].row if uid in known else {}
        if any(row.get(f) != before.get(f) for f in COLLECTION_FIELDS):
            moved.setdefault(row["Collection"], [])
    if not moved:
        return set()
    for uid, row in plan.rows.items():
        name = row["Collection"]
        if name not in moved:
            continue
        if uid in fetching:
            moved.pop(name)
        elif uid in known and known[uid].md5s is not None:
            moved[name].append(uid)
    return {min(uids, key=lambda u: (plan.rows[u].get("FileSize") or 0, u))
            for uids in moved.values() if uids}
