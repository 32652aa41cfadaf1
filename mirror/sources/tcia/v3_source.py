"""TCIA through the seed's REST API v3 (Bindaas): ``mirror sync --url …/services/v3/TCIA/query``.

The v3 API was deprecated on 2022-06-22 and no longer changes ("will receive no updates…
newer collections will not appear", seed ``tcia-rest-api-overview.md``), but it still
answers. Differences from NBIA v4 that shape this source:

- **A key on every request**, from the ``TCIA_API_KEY`` environment variable only, sent as
  the ``api_key`` header (never a URL parameter, so it is in no log line, run record or
  ``mirror.json``). A missing or refused key is one line naming the variable (exit 2).
- **No change endpoint but two date hints, and no hash.** Each run lists ``getSeries`` per
  collection (one request) and diffs the rows with the mirror's: new series are fetched, a
  changed ``ImageCount`` fetches the series again (v3 rows carry no ``FileSize`` or
  ``MaxSubmissionTimestamp``), other changed fields are stored. A vanished series is probed
  for a new collection name like v4's; listed nowhere, it is *absent upstream* (kept with
  its files, ``mirror status`` says so) on that first answer, and marked removed only when
  the next run's listing still lacks it: one answer never deletes.
- **15-key rows** (no licence, DOI, size or dates), ``[]`` for none, ``format=json`` asked.
- **Zips without ``md5hashes.csv`` or ``LICENSE``** (``bindaas-blob-download.zip``; an
  unknown series gives an *empty* zip with 200). The client adds an ``md5hashes.csv`` it
  computes from the entries after zipfile checked their CRCs, so the v4 source's fetch and
  unpack path (:meth:`TciaSource.fetch_file`, which requires one) is reused unchanged; on
  v3 an instance's integrity therefore rests on the zip's CRCs, the count against the
  listing's ``ImageCount`` (an empty zip fails it) and the DICOM and UID checks.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from pathlib import Path
from typing import Any, BinaryIO, ClassVar

import requests
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from mirror.config import utc_now
from mirror.errors import AuthenticationError, MirrorError
from mirror.index import Listing, ObjectRow
from mirror.sources.base import DocumentRun, SourceSpec
from mirror.sources.dicom import MD5_ENTRY, open_series_zip
from mirror.sources.http import HttpClient
from mirror.sources.tcia import maintenance
from mirror.sources.tcia.changes import ChangePlan, ChangePlanner, KnownSeries
from mirror.sources.tcia.client import NbiaClient
from mirror.sources.tcia.source import ABSENT, TciaSource
from mirror.sources.tcia.spec import V3_SPEC

API_KEY_ENV = "TCIA_API_KEY"
"""The environment variable holding the v3 API key (declared in :mod:`mirror.settings`)."""
FROZEN_LINE = ("frozen upstream: TCIA's REST API v3 was deprecated on 2022-06-22 and its "
               "data is no longer updated (newer collections and changes appear only "
               "through NBIA v4: --url https://nbia.cancerimagingarchive.net/nbia-api/"
               "services/v4 on a new root)")
ZIP_CHUNK = 1 << 20


def api_key() -> str:
    """The key from ``TCIA_API_KEY``, read when asked (never stored), or a one-line error."""
    key = os.environ.get(API_KEY_ENV, "").strip()
    if not key:
        raise AuthenticationError(f"TCIA's REST API v3 needs an API key: set {API_KEY_ENV} "
                                  "to your key (it is read from the environment only and "
                                  "never stored)")
    return key


class V3Client(NbiaClient):
    """Bindaas v3 behind :class:`NbiaClient`'s interface: the key header on every request,
    ``format=json`` on listings, a refused key as a one-line error, and zips completed with
    the ``md5hashes.csv`` v3 does not send."""

    def _request_options(self) -> dict:
        return {"headers": {"api_key": api_key()}}

    def _query_params(self, params: dict) -> dict:
        return {**params, "format": "json"}

    def _image_params(self, series_uid: str, new_file_names: bool) -> dict:
        return {"SeriesInstanceUID": series_uid}

    def _check(self, response: requests.Response, what: str) -> None:
        if response.status_code in (401, 403):
            raise AuthenticationError(f"{what}: TCIA's REST API v3 refused the key in "
                                      f"{API_KEY_ENV} (HTTP {response.status_code}); set "
                                      f"{API_KEY_ENV} to a valid key")
        super()._check(response, what)

    def md5_hierarchy(self, **scope: str | None) -> str:
        raise MirrorError("TCIA's REST API v3 has no getMD5Hierarchy")

    def _complete_zip(self, out: BinaryIO, series_uid: str, max_bytes: int) -> None:
        add_md5_list(out, max_bytes, f"the zip of series {series_uid}")


def add_md5_list(path: Path | BinaryIO, max_total: int, label: str) -> None:
    """Append ``md5hashes.csv`` (NBIA's ``Filename,MD5Hash`` rows) computed from the zip's
    own entries, unless it has one. The central directory is checked first (safe names,
    bounded total and ratio); zipfile reads each entry no further than its declared size
    and checks its CRC at the end."""
    with open_series_zip(path, require_md5=False, max_total=max_total, label=label) as zipped:
        if zipped.md5s is not None:
            return
        rows = []
        for info in zipped.entries:
            digest = hashlib.md5(usedforsecurity=False)
            with zipped.archive.open(info) as stream:
                for chunk in iter(lambda s=stream: s.read(ZIP_CHUNK), b""):
                    digest.update(chunk)
            rows.append(f"{info.filename},{digest.hexdigest()}\n")
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr(MD5_ENTRY, "Filename,MD5Hash\n" + "".join(rows))


class V3Planner(ChangePlanner):
    """v4's plan without hashes: the listing diff and the rename probe decide alone."""

    def _not_listed(self, plan: ChangePlan, uid: str) -> None:
        plan.hidden.append(uid)  # no hash tells hidden from deleted: absent for now

    def _settle_by_series_hash(self, plan: ChangePlan, known: KnownSeries) -> None:
        (plan.fields_only if known.md5s is None else plan.refetch).append(known.uid)

    def _walk_hierarchy(self, plan: ChangePlan, same_fields: list[str],
                        known: dict[str, KnownSeries]) -> None:
        plan.unchanged.extend(same_fields)  # frozen: equal rows, equal bytes


class TciaV3Source(TciaSource):
    """One sync run against the seed's TCIA REST API v3 (Bindaas)."""

    spec: ClassVar[SourceSpec] = V3_SPEC
    maintenance: ClassVar[str] = "mirror.sources.tcia.v3_source"  # status: frozen, absent
    served: ClassVar[str | None] = None  # mirror serve answers as NBIA v4 only

    def __init__(self, base_url: str, http: HttpClient):
        super().__init__(base_url, http)
        self.client = V3Client(http, self.base_url)

    def login(self, username: str, password: str) -> None:
        raise MirrorError(f"TCIA's REST API v3 takes an API key, not a login: set "
                          f"{API_KEY_ENV} and run the sync without a user name")

    def sync_documents(self, run: DocumentRun, options: Any) -> set[str] | None:
        api_key()  # a missing key is one line before anything is asked
        return super().sync_documents(run, options)

    def _planner(self, run: DocumentRun, options: Any) -> ChangePlanner:
        return V3Planner(self.client, run.executor)

    def _absent_now(self, session: Session, plan, absent: dict[str, str],
                    within: set[str]) -> set[str]:
        """Series vanished on this run's listing are kept (absent upstream); those absent
        since an earlier run and still unlisted are left to ``remove_missing``: the
        second answer without them. With no hash to ask, nothing else can tell."""
        now = utc_now()
        for uid in absent:
            if uid in within:
                session.execute(delete(Listing).where(Listing.key == ABSENT + uid))
        for uid in plan.hidden:
            session.merge(Listing(key=ABSENT + uid, digest="", count=0, fetched_at=now))
        return set(plan.hidden)

    def _returning_changed(self, session: Session, store, added: list[str]) -> set[str]:
        """A series listed again after an absence is fetched again if the mirror holds its
        bytes and its ``ImageCount`` moved (v3 has no series hash)."""
        plan = self.last_plan
        held = self._md5_paths(session)
        rows = dict(session.execute(select(ObjectRow.id, ObjectRow.doc).where(
            ObjectRow.kind == "series", ObjectRow.id.in_([u for u in added if u in held])
        )).all())
        return {uid for uid, before in rows.items()
                if (before or {}).get("ImageCount") != plan.rows[uid].get("ImageCount")}


def freshness(conn) -> dict[str, dict]:
    """What ``mirror status`` says of a v3 mirror: the frozen archive, and absent series."""
    checks = {"frozen upstream": {"line": FROZEN_LINE}}
    checks.update(maintenance.freshness(conn))
    return checks
