"""A local IDC: SeaweedFS buckets with synthetic DICOM at real keys, its catalog, and API v1.

:func:`start` fills buckets named as IDC's (``idc-open-data``, ...) for whole real catalog
collections (:mod:`.fill`), writes the sandbox's catalog (the same rows, counts and sizes
made true), and serves IDC's REST API v1 and a hostile S3 listing endpoint (:mod:`.api`).
:meth:`IdcSandbox.next_release` publishes release N+1 with IDC's between-release edits
(:mod:`.releases`). Everything listens on 127.0.0.1 only.

    python -m mirror.sources.idc.sandbox --collections lung_phantom --max-instances 4

prints ``s3: <endpoint>``, ``v1: <base URL>``, ``collections: <id,...>`` as its first three
lines, then serves until interrupted.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from starlette.types import Receive, Scope, Send

from mirror.errors import MirrorError
from mirror.sources.idc.catalog import Catalog
from mirror.sources.idc.sandbox.api import (
    HttpServer,
    V1State,
    build_app,
)
from mirror.sources.idc.sandbox.fill import (
    DEFAULT_MAX_INSTANCES,
    HOSTILE,
    Filled,
    choose_collections,
    fill,
    gcs_url,
)
from mirror.sources.idc.sandbox.releases import Release, next_release
from mirror.sources.idc.sandbox.seaweed import SeaweedServer, start_seaweed

GUID_PREFIX = "dg.4DFC/"


@dataclass
class IdcSandbox:
    """A running sandbox: where its S3 and v1 answer, what it holds, and its switches."""

    seaweed: SeaweedServer
    http: HttpServer
    filled: Filled
    v1: V1State
    root: Path
    owns_seaweed: bool = True
    owns_root: bool = False
    releases: list[Release] = field(default_factory=list)
    _stopped: bool = field(default=False, repr=False)

    @property
    def s3_endpoint(self) -> str:
        return self.seaweed.endpoint

    @property
    def v1_url(self) -> str:
        return self.http.url + "/v1"

    @property
    def hostile_s3_endpoint(self) -> str:
        """An S3 endpoint whose buckets list faults (``api.HOSTILE_BUCKETS``) or read them
        (``api.HOSTILE_READS``)."""
        return self.http.url

    @property
    def collections(self) -> list[str]:
        return self.filled.collections

    @property
    def catalog(self) -> Catalog:
        """The newest catalog: the filled one, or the last :meth:`next_release`'s."""
        return self.releases[-1].catalog if self.releases else self.filled.catalog

    @property
    def catalogs(self) -> list[Catalog]:
        """Every release's catalog, oldest first."""
        return [self.filled.catalog, *(r.catalog for r in self.releases)]

    def next_release(self, **edits) -> Release:
        """Publish release N+1 (see :func:`.releases.next_release` for the edits)."""
        folder = self.root / f"catalog-{self.catalog.version.release + 1}"
        writer = self.seaweed.writer()
        try:
            release = next_release(self.catalog, writer, folder, **edits)
        finally:
            writer.close()
        self.releases.append(release)
        return release

    @property
    def hostile(self) -> dict[str, str]:
        """Planted bucket fault -> the SeriesInstanceUID it broke."""
        return self.filled.hostile

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self.http.stop()
        if self.owns_seaweed:
            self.seaweed.stop()
        if self.owns_root:
            shutil.rmtree(self.root, ignore_errors=True)


class _Switch:
    """ASGI app serving the live or the switched-off v1, as ``state.deprecated`` says now."""

    def __init__(self, state: V1State):
        self.state = state
        self.live = build_app(state, deprecated=False)
        self.gone = build_app(state, deprecated=True)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        app = self.gone if self.state.deprecated else self.live
        await app(scope, receive, send)


def start(collections: Sequence[str] | None = None, root: str | Path | None = None, *,
          max_instances: int | None = DEFAULT_MAX_INSTANCES, hostile: Sequence[str] = (),
          deprecated: bool = False, timeout_pages: Sequence[int] = (),
          catalog: Catalog | None = None, seaweed: SeaweedServer | None = None) -> IdcSandbox:
    """Start SeaweedFS (or reuse ``seaweed``), fill it, serve v1; return the sandbox.

    ``collections`` defaults to the few smallest catalog collections; ``root`` (default a
    new temporary folder, removed by :meth:`IdcSandbox.stop`) holds SeaweedFS's data and
    the sandbox catalog.
    """
    catalog = catalog or Catalog.installed()
    chosen = choose_collections(catalog, collections)
    owns_root = root is None
    root = Path(tempfile.mkdtemp(prefix="idc-sandbox-")) if root is None else Path(root)
    owns_seaweed = seaweed is None
    server = seaweed or start_seaweed(root / "seaweed")
    http = None
    try:
        writer = server.writer()
        filled = fill(catalog, writer, root / "catalog", chosen, max_instances, hostile)
        writer.close()
        state = V1State(rows=_manifest_rows(filled), collections=_v1_collections(filled),
                        release=catalog.version.release, deprecated=deprecated,
                        timeout_pages=set(timeout_pages))
        http = HttpServer(_Switch(state))
        return IdcSandbox(server, http, filled, state, root, owns_seaweed, owns_root)
    except BaseException:
        if http is not None:
            http.stop()
        if owns_seaweed:
            server.stop(grace=5)
        raise


def _manifest_rows(filled: Filled) -> list[dict]:
    """One v1 manifest row per instance the catalog promises (string values, GUIDs)."""
    index = {r["SeriesInstanceUID"]: r for r in filled.catalog.rows(
        columns=["SeriesInstanceUID", "source_DOI", "Modality", "license_short_name"])}
    rows = []
    for inst in filled.instances:
        meta = index[inst.series_uid]
        rows.append({
            "Collection_ID": inst.collection_id, "Patient_ID": inst.patient_id,
            "StudyInstanceUID": inst.study_uid, "SeriesInstanceUID": inst.series_uid,
            "SOPInstanceUID": inst.sop_uid, "Source_DOI": meta["source_DOI"] or "",
            "CRDC_Study_GUID": GUID_PREFIX + str(uuid.uuid5(uuid.NAMESPACE_OID,
                                                            inst.study_uid)),
            "CRDC_Series_GUID": GUID_PREFIX + inst.series_uuid,
            "CRDC_Instance_GUID": GUID_PREFIX + inst.instance_uuid,
            "GCS_URL": gcs_url(inst), "Modality": meta["Modality"] or "",
            "license_short_name": meta["license_short_name"] or ""})
    rows.sort(key=lambda r: (r["Collection_ID"], r["Patient_ID"], r["StudyInstanceUID"],
                             r["SeriesInstanceUID"], r["SOPInstanceUID"]))
    return rows


def _v1_collections(filled: Filled) -> list[dict]:
    """``/v1/collections`` entries, from the sandbox catalog's collections and series."""
    described = {}
    if "collections_index" in filled.catalog.paths:
        with filled.catalog.connect() as conn:
            table = conn.sql("SELECT collection_id, cancer_types, tumor_locations, species, "
                             "subjects, supporting_data, description FROM collections_index")
            described = {r["collection_id"]: r for r in table.to_arrow_table().to_pylist()}
    with filled.catalog.connect() as conn:
        series = conn.sql("SELECT collection_id, string_agg(DISTINCT Modality, ', ' ORDER BY "
                          "Modality) AS image_types, min(source_DOI) AS doi, "
                          "count(DISTINCT PatientID) AS subjects FROM idc_index GROUP BY 1 "
                          "ORDER BY 1").to_arrow_table().to_pylist()
    out = []
    for row in series:
        info = described.get(row["collection_id"], {})
        out.append({"collection_id": row["collection_id"],
                    "cancer_type": info.get("cancer_types") or "",
                    "description": info.get("description") or "",
                    "doi": row["doi"] or "", "image_types": row["image_types"] or "",
                    "location": info.get("tumor_locations") or "",
                    "species": info.get("species") or "",
                    "subject_count": int(info.get("subjects") or row["subjects"]),
                    "supporting_data": info.get("supporting_data") or ""})
    return out


# -- command line --------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    """Run a sandbox until interrupted; the first three lines say where it answers."""
    parser = argparse.ArgumentParser(prog="python -m mirror.sources.idc.sandbox",
                                     description="A local IDC: S3 buckets and API v1.")
    parser.add_argument("--collections", help="comma-separated collection ids "
                        "(default: the smallest few)")
    parser.add_argument("--root", help="folder for SeaweedFS data and the sandbox catalog "
                        "(default: a temporary folder, removed on exit)")
    parser.add_argument("--max-instances", type=int, default=DEFAULT_MAX_INSTANCES,
                        help="instances stored per series (0: as many as the catalog says)")
    parser.add_argument("--hostile", default="", help=f"faults to plant: {','.join(HOSTILE)}")
    parser.add_argument("--deprecated", action="store_true",
                        help="v1 answers 410 on every route, as IDC's does today")
    parser.add_argument("--timeout-pages", default="",
                        help="comma-separated 0-based v1 pages that first answer 202")
    args = parser.parse_args(argv)
    previous = _stop_on_signals()  # before starting: a SIGTERM at any point cleans up
    try:
        return _run(args)
    except _Stop:
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class _Stop(BaseException):
    """Raised by the SIGINT/SIGTERM handler: unwinds start() or serving, with cleanup."""


def _stop_on_signals() -> dict:
    """Make SIGINT/SIGTERM raise :class:`_Stop` once (later ones are ignored meanwhile)."""
    def handler(signum, frame):
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)  # let the cleanup finish
        raise _Stop()
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, handler)
    return previous


def _run(args: argparse.Namespace) -> int:
    try:
        sandbox = start(
            [c for c in (args.collections or "").split(",") if c] or None, args.root,
            max_instances=args.max_instances or None,
            hostile=[h for h in args.hostile.split(",") if h], deprecated=args.deprecated,
            timeout_pages=[int(p) for p in args.timeout_pages.split(",") if p])
    except (MirrorError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        print(f"s3: {sandbox.s3_endpoint}")
        print(f"v1: {sandbox.v1_url}")
        print(f"collections: {','.join(sandbox.collections)}")
        print(f"catalog: {sandbox.catalog.paths['idc_index'].parent}")
        print(f"hostile-s3: {sandbox.hostile_s3_endpoint}")
        for mode, series in sandbox.hostile.items():
            print(f"hostile {mode}: {series}")
        sys.stdout.flush()
        _serve_until_signal()
    finally:
        sandbox.stop()
    return 0


def _serve_until_signal() -> None:
    """Block until a signal handler raises :class:`_Stop`."""
    threading.Event().wait()
