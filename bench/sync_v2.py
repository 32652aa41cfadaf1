"""ISIC API v2: ``mirror sync`` beside isic-cli and a plain parallel fetch, in the same run.

    /work/venv/bin/python bench/sync_v2.py --isic-cli /work/venv-isiccli/bin/isic \\
        [--images 1000] [--latency 0.03,0.1] [--workers 32] [--runs 1] [--rss-images 200000]

For each sandbox latency (added to every answer of the API and of the file host, as a
network round trip would be), with a sandbox (its own process, on 127.0.0.1:8000 where
``isic --dev`` looks) serving ``--images`` public images, times:

(a) isic-cli 12.7 ``isic --dev --no-version-check image download OUT`` into an empty
    folder (its own listing, 10 download threads, ``metadata.csv``, licences);
(b) a plain parallel fetch (the floor): the same listing walked page by page, then every
    ``files.full.url`` fetched with ``--workers`` threads on one keep-alive pool and
    written to disk, no checks, no index;
(c) ``mirror sync --url http://127.0.0.1:8000/api/v2 --what images --blobs full``
    (CLI process wall time, interpreter start-up included, as for (a));

then (c)'s no-op re-sync (requests counted by the sandbox, and seconds), and
``mirror export files`` of (c)'s mirror compared byte for byte with (a)'s folder. Targets
(issue 19): c <= a/2 and c <= 1.3 x b.

Last, ``--rss-images``: the peak RSS of a metadata-only sync (``--blobs ''``) of that many
public images, no latency, read from ``os.wait4`` for the mirror's own process (target
< 400 MB). ``--rss-images 0`` skips it.

Nothing is deleted before the end (see ``bench/sync_idc.py``: on an ext4 without a
journal, files created after a removal pay for it).

isic-cli needs Python >= 3.12 and is not a dependency of mirror; make a venv for it and
pass its ``isic`` with ``--isic-cli`` (``--skip-isic-cli`` measures (b) and (c) only)::

    python3.12 -m venv /work/venv-isiccli
    /work/venv-isiccli/bin/pip install 'isic-cli==12.7.*'

isic-cli runs with ``XDG_DATA_HOME`` pointing into a temporary folder (no saved login:
anonymous) and ``--no-version-check`` (no request to PyPI). When port 8000 is taken, the
bench says so and stops: ``--dev`` cannot be pointed anywhere else.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
DEV_PORT = 8000  # isic-cli's --dev: http://127.0.0.1:8000/api/v2/
PUBLIC_SHARE = 0.855  # anonymous-visible share of a large sandbox (171,911 of 200,000)
ISIC_CLI_SETUP = ("python3.12 -m venv /work/venv-isiccli && "
                  "/work/venv-isiccli/bin/pip install 'isic-cli==12.7.*'; then pass "
                  "--isic-cli /work/venv-isiccli/bin/isic")


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, **extra)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def images_for(public: int, seed: int) -> int:
    """The sandbox size whose anonymous view holds exactly ``public`` images (or the first
    above it): a prefix of the seeded archive, found by bisection."""
    sys.path.insert(0, str(REPO))
    from mirror.sources.isic_v2.sandbox.data import ANONYMOUS, Archive

    def visible(n: int) -> int:
        return len(Archive(n, seed).visible_images(ANONYMOUS))

    low, high = public, math.ceil(public * 1.4) + 10
    while low < high:
        mid = (low + high) // 2
        if visible(mid) >= public:
            high = mid
        else:
            low = mid + 1
    return low


class Sandbox:
    """``mirror sandbox --archive isic-v2`` in its own process (it must not share our GIL)."""

    def __init__(self, images: int, latency: float, port: int, seed: int):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mirror", "sandbox", "--archive", "isic-v2", "--port",
             str(port), "--images", str(images), "--seed", str(seed), "--latency",
             str(latency)], stdout=subprocess.PIPE, text=True, env=_env())
        first = self.process.stdout.readline().strip()
        if not first.startswith("http"):
            self.stop()
            raise SystemExit(f"the sandbox did not start (printed {first!r})")
        self.url = first
        self.root = first.rsplit("/api/v2", 1)[0]

    def stats(self) -> dict[str, int]:
        return requests.get(f"{self.root}/__sandbox__/stats", timeout=30).json()

    def reset_stats(self) -> None:
        requests.post(f"{self.root}/__sandbox__/stats/reset", timeout=30)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait()


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def run_isic_cli(isic: str, dest: Path, xdg: Path) -> float:
    started = time.perf_counter()
    done = subprocess.run([isic, "--dev", "--no-version-check", "image", "download", str(dest)],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          env=dict(os.environ, XDG_DATA_HOME=str(xdg)))
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"isic-cli failed ({done.returncode}): {done.stderr.strip()[-1500:]}")
    return seconds


def list_urls(session: requests.Session, url: str) -> list[tuple[str, str]]:
    """(isic_id, files.full.url) of every listed image, following ``next`` to its end."""
    pairs, page = [], f"{url}/images/?limit=100"
    while page:
        body = session.get(page, timeout=60).json()
        pairs += [(r["isic_id"], r["files"]["full"]["url"]) for r in body["results"]]
        page = body["next"]
    return pairs


def plain_fetch(url: str, dest: Path, workers: int) -> tuple[float, int]:
    """The floor: list, then fetch every file in parallel and write it; (seconds, files)."""
    started = time.perf_counter()
    session = requests.Session()
    adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=workers)
    session.mount("http://", adapter)
    pairs = list_urls(session, url)

    def fetch(pair: tuple[str, str]) -> int:
        body = session.get(pair[1], timeout=60).content
        (dest / f"{pair[0]}.jpg").write_bytes(body)
        return len(body)

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(fetch, pairs))
    return time.perf_counter() - started, len(pairs)


def mirror_sync(root: Path, url: str, state: Path, *args: str) -> tuple[float, dict, int]:
    """Wall seconds, the JSON summary and the peak RSS (KiB) of one CLI sync. The RSS is
    the child's own ``ru_maxrss`` from ``os.wait4`` (this process stays small, so what the
    child inherits at its start does not decide the figure)."""
    out, err = state.with_suffix(".out"), state.with_suffix(".err")
    started = time.perf_counter()
    with out.open("w") as stdout, err.open("w") as stderr:
        child = subprocess.Popen([sys.executable, "-m", "mirror", "sync", "--root", str(root),
                                  "--url", url, "--what", "images", "--quiet", "--json",
                                  *args], stdout=stdout, stderr=stderr,
                                 env=_env(MIRROR_STATE_DIR=str(state)))
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - started
    if child.returncode != 0:
        raise SystemExit(f"mirror sync failed: {err.read_text().strip()[-2000:]}")
    return seconds, json.loads(out.read_text()), usage.ru_maxrss


def same_as_isic_cli(root: Path, state: Path, theirs: Path, ours: Path) -> str:
    """``mirror export files`` of the synced mirror against isic-cli's folder, byte for
    byte (every file, the CSV, attribution.txt, licenses/): what differs, or "identical"."""
    done = subprocess.run([sys.executable, "-m", "mirror", "export", "files", "--root",
                           str(root), str(ours)], capture_output=True, text=True,
                          env=_env(MIRROR_STATE_DIR=str(state)))
    if done.returncode != 0:
        return f"export failed: {done.stderr.strip()[-300:]}"
    names = {p.relative_to(theirs) for p in theirs.rglob("*") if p.is_file()}
    mine = {p.relative_to(ours) for p in ours.rglob("*") if p.is_file()}
    differ = sorted(str(n) for n in names & mine
                    if (theirs / n).read_bytes() != (ours / n).read_bytes())
    if names != mine or differ:
        return (f"differs: only isic-cli {sorted(map(str, names - mine))[:3]}, only mirror "
                f"{sorted(map(str, mine - names))[:3]}, different {differ[:3]}")
    return f"identical ({len(names)} files)"


def bench_latency(args: argparse.Namespace, latency: float, images: int, tmp: Path) -> dict:
    sandbox = Sandbox(images, latency, DEV_PORT, args.seed)
    try:
        warm = tmp / f"warm-{latency}"  # the sandbox draws each JPEG once, then caches it
        warm.mkdir()
        plain_fetch(sandbox.url, warm, args.workers)
        result = {"latency": latency, "a": [], "b": [], "c": []}
        scope = ("--blobs", "full", "--workers", str(args.workers))
        for n in range(args.runs):  # the contestants in turn, each run into a new folder
            if args.isic_cli:
                dest = tmp / f"isic-cli-{latency}-{n}"
                result["a"].append(run_isic_cli(args.isic_cli, dest, tmp / "xdg"))
                result["a_files"] = sum(1 for p in dest.glob("ISIC_*"))
            dest = tmp / f"plain-{latency}-{n}"
            dest.mkdir()
            seconds, result["b_files"] = plain_fetch(sandbox.url, dest, args.workers)
            result["b"].append(seconds)
            root, state = tmp / f"mirror-{latency}-{n}", tmp / f"state-{latency}-{n}"
            seconds, summary, _ = mirror_sync(root, sandbox.url, state, *scope)
            result["c"].append(seconds)
        result["c_files"] = summary["blobs"]["image"]["fetched"]
        sandbox.reset_stats()
        result["noop"], noop, _ = mirror_sync(root, sandbox.url, state, *scope)
        result["noop_requests"] = sandbox.stats().get("total", 0)
        result["noop_requests_mirror"] = noop["requests"]
        if args.isic_cli:
            result["same"] = same_as_isic_cli(root, state, tmp / f"isic-cli-{latency}-{n}",
                                              tmp / f"export-{latency}")
    finally:
        sandbox.stop()
    return result


def report(r: dict, workers: int) -> None:
    ms = r["latency"] * 1000
    print(f"-- {ms:.0f} ms sandbox latency, {workers} workers for (b) and (c)")
    a, b, c = (statistics.median(r[k]) if r[k] else None for k in "abc")
    if a is not None:
        print(f"(a) isic-cli image download       {a:7.2f} s  {r['a_files']} files"
              f"{_runs(r['a'])}")
    print(f"(b) plain parallel fetch (floor)  {b:7.2f} s  {r['b_files']} files{_runs(r['b'])}")
    line = f"(c) mirror sync                   {c:7.2f} s  {r['c_files']} files{_runs(r['c'])}"
    if a is not None:
        line += f"  c/a = {c / a:.2f} (target <= 0.5)"
    print(line + f"  c/b = {c / b:.2f} (target <= 1.3)")
    if "same" in r:
        print(f"    'mirror export files' vs isic-cli's folder: {r['same']}")
    print(f"    no-op re-sync: {r['noop']:.2f} s, {r['noop_requests']} requests at the "
          f"sandbox ({r['noop_requests_mirror']} counted by the mirror)", flush=True)


def _runs(values: list[float]) -> str:
    """Every run beside the median, when there was more than one."""
    return "" if len(values) < 2 else f" (median; runs {', '.join(f'{v:.2f}' for v in values)})"


def bench_rss(args: argparse.Namespace, tmp: Path) -> None:
    # ~86% of the sandbox's images are public (seed 0): no bisection here, it would build
    # the big archive in this process, whose memory a child's ru_maxrss may inherit.
    images = math.ceil(args.rss_images / PUBLIC_SHARE)
    started = time.perf_counter()
    sandbox = Sandbox(images, 0.0, 0, args.seed)
    print(f"-- metadata-only sync: sandbox of {images} images up in "
          f"{time.perf_counter() - started:.0f} s", flush=True)
    try:
        seconds, summary, rss_kb = mirror_sync(tmp / "rss", sandbox.url, tmp / "rss-state",
                                               "--blobs", "", "--workers", str(args.workers))
    finally:
        sandbox.stop()
    docs = summary["objects"]["image"]
    print(f"metadata-only sync of {sum(docs.values())} images: {seconds:.1f} s, peak RSS "
          f"{rss_kb / 1024:.0f} MB (wait4; target < 400)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--isic-cli", help="isic-cli 12.7's 'isic' executable (see the "
                        "module docstring to make one)")
    parser.add_argument("--skip-isic-cli", action="store_true")
    parser.add_argument("--images", type=int, default=1000, help="public images to fetch")
    parser.add_argument("--latency", default="0.03,0.1", help="seconds, comma separated")
    parser.add_argument("--workers", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", type=int, default=1,
                        help="runs of each contestant, in turn (medians are reported)")
    parser.add_argument("--rss-images", type=int, default=200_000)
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if args.skip_isic_cli:
        args.isic_cli = None
    elif not args.isic_cli or not Path(args.isic_cli).is_file():
        raise SystemExit(f"isic-cli not found ({args.isic_cli or 'no --isic-cli given'}); make "
                         f"it: {ISIC_CLI_SETUP}; or pass --skip-isic-cli")
    latencies = [float(x) for x in args.latency.split(",") if x]
    if latencies and not port_free(DEV_PORT):
        raise SystemExit(f"port {DEV_PORT} is in use: isic-cli --dev looks only there; "
                         "stop what listens on it and run again")
    images = images_for(args.images, args.seed) if latencies else 0
    with tempfile.TemporaryDirectory(prefix="bench-v2-") as tmp:
        tmp = Path(tmp)
        if latencies:
            print(f"sandbox: {images} images, {args.images} of them public (seed {args.seed})")
        for latency in latencies:
            report(bench_latency(args, latency, images, tmp), args.workers)
        if args.rss_images:
            bench_rss(args, tmp)


if __name__ == "__main__":
    main()
