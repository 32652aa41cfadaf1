"""TCIA: ``mirror sync`` against tcia_utils and a plain parallel fetch, same sandbox, same run.

    .venv/bin/python bench/sync_tcia.py [--collections 26] [--latency 0.03] [--workers 10]
        [--runs 1]

The TCIA sandbox runs in its own process (``mirror sandbox --archive tcia-v4``) with
``--latency`` (default 30 ms) added to each response, as a network would. ``--collections
26`` serves about 210 series (some 640 real DICOM instances). Then, in this order:

(a) tcia_utils 3.3.5 ``nbia.downloadSeries(uids, input_type="list")`` with its default 10
    threads, in the Python of ``$MIRROR_BENCH_TCIA_VENV`` (default ``/work/venv-tcia``;
    create it with ``python -m venv /work/venv-tcia && /work/venv-tcia/bin/pip install
    tcia_utils==3.3.5``). tcia_utils builds every URL from ``setApiUrl()``, which knows
    only TCIA's two hosts, so the driver replaces that one function to point at the
    sandbox; the download code (``requests.get`` of ``getImage``, ``extractall``) is its
    own. Only the ``downloadSeries`` call is timed (not importing pandas);
(b) a plain parallel fetch of the same ``getImage?IncludeMD5=Yes`` URLs with ``--workers``
    threads, each zip written to disk (the floor: no check, no unzip, no index);
(c) ``mirror sync`` of every collection with ``--workers`` (list, fetch each series zip,
    check it whole, unpack each instance into the store, read its header with pydicom
    into its document, index, publish), in process; (c') the same with ``--what series``
    (no header documents: the instances' ids only), on another root.

Then a no-op re-sync of (c), whose requests the sandbox counts: the target is at most 3
per collection. Targets: (c) <= (a) / 1.5 and (c) <= 1.3 x (b).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mirror.sync import SyncOptions, sync  # noqa: E402

VENV_ENV = "MIRROR_BENCH_TCIA_VENV"
DEFAULT_VENV = "/work/venv-tcia"
TCIA_UTILS_DRIVER = """
import json, sys, time
from tcia_utils import nbia
base, dest, uids = sys.argv[1], sys.argv[2], json.load(open(sys.argv[3]))
nbia.setApiUrl = lambda endpoint, api_url="nbia": base + "/"
nbia._log.setLevel("WARNING")
started = time.perf_counter()
nbia.downloadSeries(uids, input_type="list", path=dest)
print(json.dumps({"seconds": time.perf_counter() - started}))
"""


def tcia_utils_python() -> str:
    venv = Path(os.environ.get(VENV_ENV) or DEFAULT_VENV)
    python = venv / "bin" / "python"
    if not python.exists():
        raise SystemExit(f"no tcia_utils venv at {venv} (set {VENV_ENV}); create it: "
                         f"python -m venv {venv} && {venv}/bin/pip install tcia_utils==3.3.5")
    return str(python)


def start_sandbox(collections: int, latency: float) -> tuple[subprocess.Popen, str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    proc = subprocess.Popen([sys.executable, "-m", "mirror", "sandbox", "--archive", "tcia-v4",
                             "--collections", str(collections), "--latency", str(latency)],
                            stdout=subprocess.PIPE, text=True, env=env)
    return proc, proc.stdout.readline().strip()


def series_uids(base: str) -> tuple[list[str], list[str]]:
    s = requests.Session()
    names = [r["Collection"] for r in s.get(f"{base}/getCollectionValues", timeout=60).json()]
    uids = [r["SeriesInstanceUID"] for name in names
            for r in s.get(f"{base}/getSeries", params={"Collection": name}, timeout=60).json()]
    return names, uids


def tcia_utils_download(base: str, uids: list[str], dest: Path) -> float:
    listing = dest.parent / f"{dest.name}.json"
    listing.write_text(json.dumps(uids))
    done = subprocess.run([tcia_utils_python(), "-c", TCIA_UTILS_DRIVER, base, str(dest),
                           str(listing)], capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise SystemExit(f"tcia_utils failed: {done.stderr.strip()[-2000:]}")
    got = sum(1 for p in dest.iterdir() if p.is_dir())
    assert got == len(uids), f"tcia_utils fetched {got} of {len(uids)} series"
    return json.loads(done.stdout.strip().splitlines()[-1])["seconds"]


def parallel_fetch(base: str, uids: list[str], dest: Path, workers: int) -> float:
    dest.mkdir()
    session = requests.Session()
    session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=workers))

    def one(uid: str) -> int:
        response = session.get(f"{base}/getImage", params={"SeriesInstanceUID": uid,
                                                            "IncludeMD5": "Yes"}, timeout=120)
        response.raise_for_status()
        (dest / f"{uid}.zip").write_bytes(response.content)
        return len(response.content)

    started = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, uids))
    return time.perf_counter() - started


def mirror_sync(base: str, root: Path, workers: int, what: frozenset[str] | None = None):
    started = time.perf_counter()
    summary = sync(root, base, SyncOptions(workers=workers, what=what))
    assert summary.ok, summary.failures[:3]
    return time.perf_counter() - started, summary


def sandbox_requests(root_url: str) -> dict[str, int]:
    return requests.get(f"{root_url}/__sandbox__/stats", timeout=30).json()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--collections", type=int, default=26)
    parser.add_argument("--latency", type=float, default=0.03)
    parser.add_argument("--workers", type=int, default=10)
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    tcia_utils_python()  # fail early when the baseline's venv is missing
    proc, base = start_sandbox(args.collections, args.latency)
    root_url = base.split("/nbia-api/")[0]
    try:
        with tempfile.TemporaryDirectory(prefix="bench-tcia-") as tmp:
            tmp = Path(tmp)
            os.environ["MIRROR_STATE_DIR"] = str(tmp / "state")
            names, uids = series_uids(base)
            print(f"sandbox: {len(names)} collections, {len(uids)} series, latency "
                  f"{args.latency * 1000:.0f} ms ({base})", flush=True)
            a, b, c, c2 = [], [], [], []
            for n in range(args.runs):
                a.append(tcia_utils_download(base, uids, tmp / f"tcia-utils-{n}"))
                b.append(parallel_fetch(base, uids, tmp / f"plain-{n}", args.workers))
                c2.append(mirror_sync(base, tmp / f"bare-{n}", args.workers,
                                      frozenset({"series"}))[0])
                root = tmp / f"mirror-{n}"
                seconds, summary = mirror_sync(base, root, args.workers)
                c.append(seconds)
            requests.post(f"{root_url}/__sandbox__/stats/reset", timeout=30)
            noop_seconds, noop = mirror_sync(base, root, args.workers)
            counted = sandbox_requests(root_url)
    finally:
        proc.terminate()
        proc.wait(30)
    report(args, len(uids), a, b, c, c2, summary, noop_seconds, counted, len(names))


def _runs(values: list[float]) -> str:
    return f"median {statistics.median(values):6.2f} s  runs " + \
        ", ".join(f"{v:.2f}" for v in values)


def report(args, series: int, a, b, c, c2, summary, noop_seconds, counted,
           collections) -> None:
    ma, mb, mc = (statistics.median(x) for x in (a, b, c))
    data = summary.as_dict()
    instances = data["blobs"].get("dicom", {}).get("fetched", "?")
    print(f"(a) tcia_utils downloadSeries (10 threads)  {_runs(a)}")
    print(f"(b) plain parallel getImage ({args.workers} threads)   {_runs(b)}")
    print(f"(c) mirror sync ({args.workers} workers)             {_runs(c)}  "
          f"({instances} files, {data['requests']} requests)")
    mc2 = statistics.median(c2)
    print(f"(c') mirror sync --what series (no header documents) {_runs(c2)}")
    print(f"    (c) = (a) / {ma / mc:.2f}  [target >= 1.5]   (c) = {mc / mb:.2f} x (b)  "
          f"[target <= 1.3]")
    print(f"    (c') = (a) / {ma / mc2:.2f}   (c') = {mc2 / mb:.2f} x (b)")
    total = counted.get("total", 0)
    detail = ", ".join(f"{k} {v}" for k, v in sorted(counted.items()) if k != "total")
    print(f"no-op re-sync: {noop_seconds:.2f} s, {total} requests for {collections} "
          f"collections = {total / collections:.2f} per collection [target <= 3] ({detail})")


if __name__ == "__main__":
    main()
