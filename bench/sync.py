"""Sync throughput against the sandbox, with baselines measured in the same run.

    .venv/bin/python bench/sync.py [--images 1000] [--workers 8] [--rss-images 100000]

(a) a sequential loop like the archive's sample code: list, then one request per image detail,
    per segmentation and per file; (b) a plain parallel fetch of the same URLs with the same
    worker count (the floor: no verification, no index); (c) ``mirror sync``.
Then the peak RSS of a metadata-only ``mirror sync`` of a large archive, in a child process.
The sandbox adds ``--latency`` (default 30 ms) to each response, as a network would; on bare
loopback the sandbox's own CPU, not the client, would be what is measured.
Targets (docs/performance.md): (c) >= 8x faster than (a), within 1.5x of (b); RSS < 300 MB.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from mirror.sync import SyncOptions, sync


def work_urls(base: str) -> list[str]:
    """Every URL a full mirror fetches, discovered the way the sample code does."""
    s = requests.Session()
    images = s.get(f"{base}/image", params={"limit": 0}, timeout=60).json()
    urls = []
    for img in images:
        i = img["_id"]
        urls += [f"{base}/image/{i}", f"{base}/image/{i}/download",
                 f"{base}/image/{i}/thumbnail", f"{base}/image/{i}/superpixels"]
        for seg in s.get(f"{base}/segmentation", params={"imageId": i, "limit": 0},
                         timeout=60).json():
            urls.append(f"{base}/segmentation/{seg['_id']}")
            if not seg["failed"]:
                urls.append(f"{base}/segmentation/{seg['_id']}/mask")
    return urls


def fetch_to(session: requests.Session, url: str, folder: Path, n: int) -> int:
    data = session.get(url, timeout=60).content
    (folder / f"{n}.bin").write_bytes(data)
    return len(data)


def sequential(base: str, folder: Path) -> tuple[float, int]:
    started = time.perf_counter()
    s = requests.Session()
    urls = work_urls(base)  # listing is part of the sequential loop
    total = sum(fetch_to(s, u, folder, n) for n, u in enumerate(urls))
    return time.perf_counter() - started, total


def parallel(base: str, folder: Path, workers: int, urls: list[str]) -> tuple[float, int]:
    started = time.perf_counter()
    s = requests.Session()
    adapter = requests.adapters.HTTPAdapter(pool_maxsize=workers)
    s.mount("http://", adapter)
    with ThreadPoolExecutor(workers) as pool:
        total = sum(pool.map(lambda nu: fetch_to(s, nu[1], folder, nu[0]), enumerate(urls)))
    return time.perf_counter() - started, total


def mirror_sync(base: str, root: Path, workers: int) -> tuple[float, int, int]:
    started = time.perf_counter()
    summary = sync(root, base, SyncOptions(workers=workers,
                                           what=frozenset({"images", "datasets",
                                                           "segmentations"})))
    assert summary.ok, summary.failures[:3]
    return time.perf_counter() - started, summary.bytes_downloaded, summary.requests


# Runs the CLI and reports its own peak RSS (KiB) as the last line of stderr: VmHWM, the
# high-water mark of this process's memory. Not ru_maxrss: Linux carries that across
# fork and exec, so the child would report the benchmark's own peak when it is larger.
RSS_WRAPPER = """
import resource, sys
from mirror.cli import main
try:
    main(sys.argv[1:])
except SystemExit as exc:
    if exc.code:
        raise
try:
    with open("/proc/self/status") as status:
        peak = next(int(line.split()[1]) for line in status if line.startswith("VmHWM"))
except OSError:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(peak, file=sys.stderr)
"""


def start_sandbox(images: int, latency: float = 0.0) -> tuple[subprocess.Popen, str]:
    """The sandbox in its own process, so that it does not share the client's GIL."""
    env = dict(os.environ, MIRROR_SANDBOX_CACHE_MB="4096")
    sandbox = subprocess.Popen([sys.executable, "-m", "mirror", "sandbox", "--images",
                                str(images), "--seed", "1", "--private-fraction", "0",
                                "--latency", str(latency)],
                               stdout=subprocess.PIPE, text=True, env=env)
    return sandbox, sandbox.stdout.readline().split()[-1]


def peak_rss_metadata_sync(images: int, workers: int) -> tuple[float, float]:
    """Peak RSS (MB) and seconds of a metadata-only sync in a child process."""
    sandbox, url = start_sandbox(images)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            env = dict(os.environ, MIRROR_STATE_DIR=f"{tmp}/state")
            started = time.perf_counter()
            done = subprocess.run([sys.executable, "-c", RSS_WRAPPER, "sync", "--root",
                                   f"{tmp}/m", "--url", url, "--blobs", "", "--what",
                                   "images,datasets", "--quiet", "--workers", str(workers)],
                                  check=True, env=env, capture_output=True, text=True)
            seconds = time.perf_counter() - started
            rss_kb = int(done.stderr.strip().splitlines()[-1])
    finally:
        sandbox.terminate()
        sandbox.wait()
    return rss_kb / 1024, seconds


def noop_resync(images: int, workers: int, resyncs: int = 1) -> list[tuple[float, int]]:
    """(seconds, requests) of a first metadata sync (``--blobs ''``, every document) and of
    ``resyncs`` re-syncs with nothing changed."""
    sandbox, url = start_sandbox(images)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            os.environ["MIRROR_STATE_DIR"] = f"{tmp}/state"
            options = SyncOptions(workers=workers, blobs=frozenset())
            runs = []
            for _ in range(1 + resyncs):
                summary = sync(f"{tmp}/m", url, options)
                assert summary.ok, summary.failures[:3]
                runs.append((summary.seconds, summary.requests))
    finally:
        sandbox.terminate()
        sandbox.wait()
    return runs


def print_noop(sizes: list[int], workers: int, resyncs: int) -> None:
    """The no-op re-sync cost at each archive size (docs/performance.md, docs/sync.md)."""
    for images in sizes:
        (first, n_first), *again = noop_resync(images, workers, resyncs)
        shown = ", ".join(f"{s:.1f} s ({n} requests)" for s, n in again)
        print(f"{images} images, all documents: first sync {first:.1f} s ({n_first} "
              f"requests); unchanged re-sync(s): {shown}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--rss-images", type=int, default=100_000)
    parser.add_argument("--noop", default="",
                        help="only the no-op re-sync cost at these sizes, e.g. 10000,30000")
    parser.add_argument("--resyncs", type=int, default=1,
                        help="unchanged re-syncs measured after each first sync (--noop)")
    parser.add_argument("--skip-sequential", action="store_true",
                        help="skip (a), the slow baseline (for quick iterations)")
    parser.add_argument("--latency", type=float, default=0.03,
                        help="sandbox round trip per request, seconds (a real archive's RTT)")
    args = parser.parse_args()
    if args.noop:
        print_noop([int(n) for n in args.noop.split(",")], args.workers, args.resyncs)
        return
    if args.images == 0:  # only the metadata figures
        print_noop([10_000], args.workers, args.resyncs)
        if args.rss_images:
            rss, seconds = peak_rss_metadata_sync(args.rss_images, args.workers)
            print(f"metadata-only sync of {args.rss_images} images: {seconds:.1f} s, "
                  f"peak RSS {rss:.0f} MB (target < 300)")
        return
    sandbox, url = start_sandbox(args.images, args.latency)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            os.environ.setdefault("MIRROR_STATE_DIR", f"{tmp}/state")
            tmp = Path(tmp)
            for name in ("warm", "a", "b"):
                (tmp / name).mkdir()
            urls = work_urls(url)
            parallel(url, tmp / "warm", args.workers, urls)  # fill the sandbox's file cache
            t_a, bytes_a = (float("nan"), 0) if args.skip_sequential else \
                sequential(url, tmp / "a")
            t_b, bytes_b = parallel(url, tmp / "b", args.workers, urls)
            t_c, bytes_c, requests_c = mirror_sync(url, tmp / "c", args.workers)
    finally:
        sandbox.terminate()
        sandbox.wait()
    print(f"{args.images} images, {len(urls)} URLs, {args.workers} workers, "
          f"{args.latency * 1000:.0f} ms sandbox latency")
    print(f"{'run':34} {'seconds':>8} {'MB':>8} {'ratio':>8}")
    print(f"{'(a) sequential sample-code loop':34} {t_a:8.2f} {bytes_a / 1e6:8.1f} "
          f"{t_a / t_c:7.1f}x  (a/c, target >= 8)")
    print(f"{'(b) plain parallel fetch (floor)':34} {t_b:8.2f} {bytes_b / 1e6:8.1f} "
          f"{t_c / t_b:7.2f}x  (c/b, target <= 1.5)")
    print(f"{'(c) mirror sync':34} {t_c:8.2f} {bytes_c / 1e6:8.1f} {requests_c:>8} requests")
    if args.rss_images:
        rss, seconds = peak_rss_metadata_sync(args.rss_images, args.workers)
        print(f"metadata-only sync of {args.rss_images} images: {seconds:.1f} s, "
              f"peak RSS {rss:.0f} MB (target < 300)")


if __name__ == "__main__":
    main()
