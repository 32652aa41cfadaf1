"""Selections over a 100,000-image mirror: DuckDB over the projection, beside the previous
engine and isicarchive's in-memory scan.

    .venv/bin/python bench/query.py [--images 100000] [--runs 7] [--keep DIR] [--old DIR]

Builds a metadata-only mirror of the sandbox archive (image details and datasets, no
files), then times twelve typical selections, each the median of ``--runs`` warm runs:

* ``duckdb``: ``Mirror.select_images(...).ids`` (a list of ``_id`` strings), compiled to
  DuckDB over the generation's Parquet projection (:mod:`mirror.query`), timed in a child
  process that does nothing else;
* ``old``: the engine this one replaced (value sets, value runs and ``image_fields`` in the
  SQLite index, ids handed out as an ``IdList``), run in a child process from a kept copy
  of the source (``--old DIR``, e.g. ``git archive e900d70 | tar -x -C DIR``) on the same
  archive, in the same run, likewise (its ids made a list too, as ``list(ids)``);
* ``in-memory``: a faithful re-implementation of isicarchive 0.4.11's ``select_images``
  (every document in a dict, a Python loop per image); the load is not timed.

All three must select the same ids. Then: the time to build the projections of the index
(what a publish adds; it replaced the value-set build), ``mirror query --count`` in a fresh
process, and the peak RSS (VmHWM) of a child process that opens the mirror and runs every
selection ``--runs`` times.

``--keep DIR`` builds the mirrors under DIR once and reuses them on later runs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mirror import Mirror
from mirror.config import open_or_create, utc_now
from mirror.errors import MirrorError
from mirror.index.database import current_generation, open_reader
from mirror.ingest import ingest_documents
from mirror.layout import Layout
from mirror.projection import index_tables, stage
from mirror.sources.isic_v1.sandbox.data import Archive
from mirror.sources.isic_v1.spec import SPEC
from mirror.store import canonical_json
from mirror.writer import writing

IMAGE = SPEC.kind("image")

SELECTIONS = {
    "diagnosis == melanoma": [["meta.clinical.diagnosis", "==", "melanoma"]],
    "age >= 60": [["meta.clinical.age_approx", ">=", 60]],
    "pixelsX >= 2048, dermoscopic, not nevus": [
        ["meta.acquisition.pixelsX", ">=", 2048],
        ["meta.acquisition.image_type", "==", "dermoscopic"],
        ["meta.clinical.diagnosis", "!=", "nevus"]],
    "dataset._accessLevel == 0": [["dataset._accessLevel", "==", 0]],
    "tags ni 'Challenge 2019: Training'": [["notes.tags", "ni", "Challenge 2019: Training"]],
    "melanocytic is True": [["meta.clinical.melanocytic", "is", True]],
    "sex in [female, null]": [["meta.clinical.sex", "in", ["female", None]]],
    "dataset.name ~ ^HAM": [["dataset.name", "~", "^HAM"]],
    "name < ISIC_0001000": [["name", "<", "ISIC_0001000"]],
    "created >= 2014-09-13": [["created", ">=", "2014-09-13"]],
    "female, 40-60, malignant": [
        ["meta.clinical.sex", "==", "female"], ["meta.clinical.age_approx", ">=", 40],
        ["meta.clinical.age_approx", "<", 60],
        ["meta.clinical.benign_malignant", "==", "malignant"]],
    "name ~ (1|7)3": [["name", "~", "(1|7)3"]],
}


# -- isicarchive's approach, re-implemented faithfully ---------------------------------------

def getxattr(obj, name: str, default=None):
    """isicarchive ``func.getxattr`` for plain dotted paths: walk one key at a time."""
    for part in name.split("."):
        if isinstance(obj, dict) and part in obj:
            obj = obj[part]
        else:
            return default
    return obj


def selected(item: dict, criteria: list) -> bool:
    """isicarchive ``func.selected``: all criteria hold; an exception means not selected."""
    for field, op, value in criteria:
        val = getxattr(item, field)
        try:
            if op == "==":
                ok = val == value
            elif op == "!=":
                ok = val != value
            elif op == "<":
                ok = val < value
            elif op == "<=":
                ok = val <= value
            elif op == ">":
                ok = val > value
            elif op == ">=":
                ok = val >= value
            elif op == "in":
                ok = val in value
            elif op == "ni":
                ok = value in val
            elif op == "~":
                ok = re.search(value, val) is not None
            elif op == "is":
                ok = val is value
            else:
                raise ValueError(op)
        except TypeError:
            return False
        if not ok:
            return False
    return True


def in_memory_select(images: dict, criteria: list) -> list[str]:
    return sorted(image_id for image_id, doc in images.items() if selected(doc, criteria))


# -- building ------------------------------------------------------------------------------

def build(root: Path, archive: Archive) -> None:
    open_or_create(root, "http://sandbox.invalid/api/v1", authenticated=False)
    now = utc_now()
    with writing(root, "bench") as w:
        with w.index.session() as session:
            datasets = [(d, hashlib.sha256(canonical_json(d)).hexdigest(), "x", 0)
                        for d in archive.datasets()]
            ingest_documents(session, SPEC.kind("dataset"), datasets, now, public=True)
        for start in range(0, archive.count, 2000):
            items = []
            for i in range(start, min(archive.count, start + 2000)):
                doc = archive.image_detail(i)
                items.append((doc, hashlib.sha256(canonical_json(doc)).hexdigest(), "x", 0))
            with w.index.session() as session:
                ingest_documents(session, IMAGE, items, now, public=True)
        w.index.publish()


def projection_seconds(root: Path) -> float:
    """Build the projections of the published index again (into a scratch folder), timed
    as a publish does it: read the documents from the index, write the Parquet files."""
    layout = Layout(root)
    engine = open_reader(layout, None, current_generation(layout))
    with tempfile.TemporaryDirectory() as scratch:
        started = time.perf_counter()
        with engine.connect() as conn:
            tables, links, digests = index_tables(conn, SPEC)
            stage(Path(scratch), tables, links, digests)
        seconds = time.perf_counter() - started
    engine.dispose()
    return seconds


# -- timing --------------------------------------------------------------------------------

def median_ms(fn, runs: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(runs):
        started = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), result


# A child process: open the mirror at argv[1], run every selection argv[3] times, print the
# median milliseconds and the ids of each, and the process's peak RSS. argv[2]: "old" builds
# the mirror first if it is not there (with the old engine's own bench build).
CHILD = r"""
import json, statistics, sys, time
from pathlib import Path
from mirror import Mirror
from mirror.errors import MirrorError
root, mode, runs = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
selections = json.loads(sys.argv[4])
if mode == "old":
    try:
        Mirror(root).close()
    except MirrorError:
        sys.path.insert(0, sys.argv[5])
        from query import build
        from mirror.sources.isic_v1.sandbox.data import Archive
        build(root, Archive(int(sys.argv[6]), seed=0, private_fraction=0.0))
m = Mirror(root)
out = {}
for name, criteria in selections.items():
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        ids = list(m.select_images(criteria).ids)
        times.append((time.perf_counter() - started) * 1000)
    out[name] = [statistics.median(times), ids]
status = Path("/proc/self/status").read_text()
out["_peak_mb"] = int(status.split("VmHWM:")[1].split()[0]) / 1024
print(json.dumps(out))
"""


def child(root: Path, mode: str, runs: int, python_path: Path, images: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(python_path)}
    args = [sys.executable, "-c", CHILD, str(root), mode, str(runs), json.dumps(SELECTIONS),
            str(python_path / "bench"), str(images)]
    done = subprocess.run(args, env=env, cwd=python_path, capture_output=True, text=True,
                          check=False)
    if done.returncode:
        raise SystemExit(f"the {mode} child failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def fresh_count_seconds(root: Path, runs: int = 3) -> float:
    """``mirror query --count`` in a new process, wall time (median of ``runs``)."""
    args = [sys.executable, "-m", "mirror", "query", "--root", str(root), "--where",
            "meta.clinical.diagnosis == melanoma", "--count"]
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(args, check=True, capture_output=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--keep", type=Path, help="build the mirrors here once, then reuse")
    parser.add_argument("--old", type=Path, help="a copy of the previous engine's source")
    args = parser.parse_args()
    here = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        where = args.keep or Path(tmp)
        os.environ["MIRROR_STATE_DIR"] = f"{where}/state"
        root = where / f"m{args.images}"
        try:
            Mirror(root).close()
        except MirrorError:  # not built, or a build killed before it published
            started = time.perf_counter()
            build(root, Archive(args.images, seed=0, private_fraction=0.0))
            print(f"built a {args.images}-image mirror in {time.perf_counter() - started:.0f} s")
        publish = projection_seconds(root)
        old = child(where / f"old{args.images}", "old", args.runs, args.old.resolve(),
                    args.images) if args.old else {}
        ours = child(root, "new", args.runs, here, args.images)
        archive = Archive(args.images, seed=0, private_fraction=0.0)
        docs = {d["_id"]: d for d in (archive.image_detail(i) for i in range(args.images))}
        report(Mirror(root), docs, old, ours, args)
        print(f"projections of {args.images} images built in {publish:.1f} s")
        print(f"'mirror query --count' in a fresh process: {fresh_count_seconds(root):.2f} s")


def report(mirror: Mirror, docs: dict, old: dict, ours: dict, args) -> None:
    """The engines' figures come from their child processes (a process like a user's: the
    benchmark's own holds every document, and its garbage collector's passes over them
    would be charged to the selection); here their ids are checked against the scan."""
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\n{args.images} images; median of {args.runs} warm runs (ms); load average {load}")
    print(f"{'selection':42} {'found':>6} {'duckdb':>8} {'old':>8} {'in-memory':>10}")
    worst = 0.0
    for name, criteria in SELECTIONS.items():
        theirs, expected = median_ms(lambda c=criteria: in_memory_select(docs, c), args.runs)
        ms, ids = ours[name]
        assert ids == expected == mirror.select_images(criteria).ids, f"{name}: disagree"
        before = "-"
        if old:
            assert old[name][1] == ids, f"{name}: the old engine disagrees"
            before = f"{old[name][0]:6.1f}"
        worst = max(worst, ms)
        print(f"{name:42} {len(ids):6} {ms:8.1f} {before:>8} {theirs:10.1f}")
    print(f"\nslowest selection: {worst:.1f} ms (target < 20 ms)")
    print(f"peak RSS of a process running every selection: {ours['_peak_mb']:.0f} MB"
          + (f" (old engine: {old['_peak_mb']:.0f} MB)" if old else "") + " (target < 200 MB)")


if __name__ == "__main__":
    main()
