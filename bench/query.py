"""Selections over a 100,000-image index against isicarchive's in-memory scan.

    .venv/bin/python bench/query.py [--images 100000] [--small 10000] [--runs 10] [--keep DIR]

Builds a metadata-only mirror of the sandbox archive (image details and datasets, no
files), then times eleven typical selections, each the median of ``--runs``:

* ``mirror``: ``Mirror.select_images`` over the published index, which reads value sets
  (``mirror.valuesets``) and hands the ids out as an ``IdList`` (strings made on demand);
* ``as list``: the same, then ``list(selection.ids)``: every id made a Python string;
* ``fields``: the same selection through ``image_fields`` alone (value sets bypassed), for
  comparison with the previous design;
* ``in-memory``: a faithful re-implementation of isicarchive 0.4.11's ``select_images``:
  every image document held in a dict, a Python loop that walks the dotted path of each
  criterion for each image (``func.getxattr``) and applies the operator (``func.selected``),
  an exception meaning "not selected". The load of the documents is not timed.

Memory: the peak Python allocation (``tracemalloc``) of each ``mirror`` selection on a
``--small`` index and on the full one. The target is that it does not grow with the
archive beyond the ids it returns.

``--keep DIR`` builds the indexes under DIR once and reuses them on later runs.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import statistics
import tempfile
import time
import tracemalloc
from pathlib import Path

from mirror import Mirror
from mirror.config import open_or_create, utc_now
from mirror.errors import MirrorError
from mirror.ingest import ingest_documents
from mirror.query import select_ids
from mirror.sources.isic_v1.sandbox.data import Archive
from mirror.sources.isic_v1.spec import SPEC
from mirror.store import canonical_json
from mirror.valuesets import refresh
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
    return [image_id for image_id, doc in images.items() if selected(doc, criteria)]


# -- the benchmark -------------------------------------------------------------------------

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
        started = time.perf_counter()
        with w.index.session() as session:
            refresh(session)
        print(f"  value sets of {archive.count} images built in "
              f"{time.perf_counter() - started:.1f} s")
        w.index.publish()


def median_ms(fn, runs: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(runs):
        started = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), result


def peak_kb(mirror: Mirror, criteria: list) -> float:
    tracemalloc.start()
    mirror.select_images(criteria)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--keep", type=Path, help="build the indexes here once, then reuse")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        where = args.keep or Path(tmp)
        os.environ["MIRROR_STATE_DIR"] = f"{where}/state"
        mirrors = {}
        for n in (args.small, args.images):
            root = where / f"m{n}"
            try:
                mirrors[n] = Mirror(root)
            except MirrorError:  # not built, or a build killed before it published
                started = time.perf_counter()
                build(root, Archive(n, seed=0, private_fraction=0.0))
                print(f"built a {n}-image index in {time.perf_counter() - started:.0f} s")
                mirrors[n] = Mirror(root)
        archive = Archive(args.images, seed=0, private_fraction=0.0)
        docs = {d["_id"]: d for d in (archive.image_detail(i) for i in range(args.images))}
        report(mirrors[args.small], mirrors[args.images], docs, args)


def report(small: Mirror, big: Mirror, docs: dict, args) -> None:
    print(f"\n{args.images} images; median of {args.runs} runs; peak memory of one selection"
          f" at {args.small} and {args.images} images")
    print(f"{'selection':42} {'found':>6} {'mirror':>8} {'as list':>8} {'fields':>8}"
          f" {'in-memory':>9} {'ratio':>6} {'(list)':>6} {'mem small':>9} {'mem big':>8}")
    worst, slowest_ratio = 0.0, float("inf")
    for name, criteria in SELECTIONS.items():
        ours, selection = median_ms(lambda c=criteria: big.select_images(c).ids, args.runs)
        listed, _ = median_ms(lambda c=criteria: list(big.select_images(c).ids), args.runs)
        fields, by_fields = median_ms(lambda c=criteria: fields_select(big, c), args.runs)
        theirs, ids = median_ms(lambda c=criteria: in_memory_select(docs, c), args.runs)
        assert sorted(ids) == selection == by_fields, f"{name}: the approaches disagree"
        worst, slowest_ratio = max(worst, ours), min(slowest_ratio, theirs / ours)
        print(f"{name:42} {len(ids):6} {ours:6.1f}ms {listed:6.1f}ms {fields:6.1f}ms"
              f" {theirs:7.1f}ms {theirs / ours:5.1f}x {theirs / listed:5.1f}x"
              f" {peak_kb(small, criteria):7.0f}KB {peak_kb(big, criteria):6.0f}KB")
    print(f"\nslowest selection: {worst:.1f} ms (target < 50 ms); smallest ratio "
          f"{slowest_ratio:.1f}x (target >= 10x)")


def fields_select(mirror: Mirror, criteria: list) -> list[str]:
    with mirror._engine.connect() as conn:
        return select_ids(conn, criteria, method="sql")


if __name__ == "__main__":
    main()
