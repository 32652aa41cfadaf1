"""``mirror serve`` under load: metadata requests/s, file bytes/s, and a sync meanwhile.

    PYTHONPATH=. python bench/serve.py [--images 300] [--seconds 3] [--workers 1]

1. Metadata requests/s (``image/{id}`` and ``image?limit=50&offset=k``, half each) with 1,
   8 and 32 concurrent clients (threads, keep-alive sessions), median of three rounds;
   beside it the same requests to the sandbox (the stdlib threaded server of the same
   route table over generated documents), measured in the same run.
2. File bytes/s: every full image through ``image/{id}/download`` with 8 clients, beside a
   plain file copy (``shutil.copyfile``) of the same store files.
3. During a ``mirror sync`` of the same mirror (the sandbox changed: images added and
   updated; a publish every 40 objects), clients keep reading documents and files; every
   error and every partial response (a body shorter than its Content-Length, a file whose
   SHA-256 is not its ETag) is counted. Both must be 0, and serve must end on the new
   generation.

Clients and server share the machine's cores, so the figures are a floor, not a ceiling.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

from mirror.sources.isic_v1.sandbox import serve
from mirror.sync import SyncOptions, sync

ROOT = Path(__file__).resolve().parents[1]


def start_serve(root: Path, workers: int) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, "-m", "mirror", "serve", "--root", str(root),
                              "--port", "0", "--workers", str(workers)],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                             env=env)
    url = child.stdout.readline().strip()
    time.sleep(1.0 if workers > 1 else 0.2)
    return child, url + "/api/v1"


def load(base: str, ids: list[str], clients: int, seconds: float) -> float:
    """Requests per second of ``clients`` threads for ``seconds``."""
    done, stop = [0] * clients, time.monotonic() + seconds

    def client(n: int) -> None:
        session, rng = requests.Session(), random.Random(n)
        while time.monotonic() < stop:
            if rng.random() < 0.5:
                r = session.get(f"{base}/image/{rng.choice(ids)}", timeout=60)
            else:
                r = session.get(f"{base}/image", params={
                    "limit": 50, "offset": rng.randrange(len(ids))}, timeout=60)
            r.raise_for_status()
            done[n] += 1

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done) / (time.monotonic() - started)


def median_rate(base: str, ids: list[str], clients: int, seconds: float) -> float:
    return statistics.median(load(base, ids, clients, seconds) for _ in range(3))


def download_all(base: str, ids: list[str], clients: int = 8) -> tuple[int, float]:
    total, lock, queue = [0], threading.Lock(), list(ids)

    def client() -> None:
        session = requests.Session()
        while True:
            with lock:
                if not queue:
                    return
                image_id = queue.pop()
            data = session.get(f"{base}/image/{image_id}/download", timeout=60).content
            with lock:
                total[0] += len(data)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return total[0], time.monotonic() - started


def copy_all(root: Path, into: Path) -> tuple[int, float]:
    files = sorted(root.rglob("image_*.jpg"))
    into.mkdir()
    started = time.monotonic()
    total = 0
    for n, path in enumerate(files):
        shutil.copyfile(path, into / f"{n}.jpg")
        total += path.stat().st_size
    return total, time.monotonic() - started


def during_sync(base: str, root: Path, sb, ids: list[str], clients: int = 8) -> dict:
    """Read while a sync runs on the same root; count errors and partial responses."""
    counts = {"requests": 0, "errors": 0, "partial": 0, "files": 0}
    lock, stop = threading.Lock(), threading.Event()

    def client(n: int) -> None:
        session, rng = requests.Session(), random.Random(100 + n)
        while not stop.is_set():
            image_id, kind = rng.choice(ids), rng.random()
            path = (f"image/{image_id}/download" if kind < 0.3 else
                    f"image/{image_id}" if kind < 0.7 else "image?limit=0")
            bad = partial = 0
            try:
                r = session.get(f"{base}/{path}", timeout=60)
                bad = r.status_code != 200
                expected = int(r.headers.get("Content-Length", -1))
                partial = expected != len(r.content)
                if path.endswith("download") and not bad:
                    partial |= r.headers["ETag"] != f'"{hashlib.sha256(r.content).hexdigest()}"'
            except requests.RequestException:
                bad = 1
            with lock:
                counts["requests"] += 1
                counts["errors"] += int(bad)
                counts["partial"] += int(partial)
                counts["files"] += int(path.endswith("download"))

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for t in threads:
        t.start()
    os.environ["MIRROR_PUBLISH_EVERY_OBJECTS"] = "40"
    os.environ["MIRROR_PUBLISH_MIN_SECONDS"] = "0"
    started = time.monotonic()
    summary = sync(root, sb.url, SyncOptions(workers=4, blobs=frozenset({"full", "thumbnail"})))
    counts["sync_seconds"] = round(time.monotonic() - started, 1)
    counts["sync_ok"] = summary.ok
    time.sleep(1.0)
    stop.set()
    for t in threads:
        t.join()
    return counts


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, \
            serve(images=args.images, seed=7, private_fraction=0.0) as sb:
        os.environ["MIRROR_STATE_DIR"] = f"{tmp}/state"
        root = Path(tmp) / "mirror"
        assert sync(root, sb.url, SyncOptions(workers=8,
                                              blobs=frozenset({"full", "thumbnail"}))).ok
        ids = [i["_id"] for i in requests.get(f"{sb.url}/image", params={"limit": 0},
                                              timeout=60).json()]
        child, base = start_serve(root, args.workers)
        try:
            print(f"{args.images} images, {os.cpu_count()} cores, serve --workers "
                  f"{args.workers}; median of 3 rounds of {args.seconds:g} s")
            print("clients  serve req/s  sandbox req/s (baseline)")
            for clients in (1, 8, 32):
                ours = median_rate(base, ids, clients, args.seconds)
                theirs = median_rate(sb.url, ids, clients, args.seconds)
                print(f"{clients:7d}  {ours:11.0f}  {theirs:13.0f}")
            served, seconds = download_all(base, ids)
            copied, copy_seconds = copy_all(root, Path(tmp) / "copy")
            print(f"files: serve {served / seconds / 1e6:.0f} MB/s ({served / 1e6:.0f} MB, 8 "
                  f"clients); plain copy {copied / copy_seconds / 1e6:.0f} MB/s (baseline)")
            before = len(requests.get(f"{base}/image", params={"limit": 0}, timeout=60).json())
            sb.mutate(add=max(60, args.images // 5), update=20)
            counts = during_sync(base, root, sb, ids)
            after = len(requests.get(f"{base}/image", params={"limit": 0}, timeout=60).json())
            print(f"during a sync ({counts['sync_seconds']} s, ok={counts['sync_ok']}): "
                  f"{counts['requests']} requests ({counts['files']} files), "
                  f"{counts['errors']} errors, {counts['partial']} partial; serve saw "
                  f"{before} -> {after} images")
        finally:
            child.terminate()
            child.wait(timeout=20)


if __name__ == "__main__":
    main()
