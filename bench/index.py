"""Index insert rate and size for 100,000 image records, publish time, lookups.

    .venv/bin/python bench/index.py [--images 100000]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import tempfile
import time
from pathlib import Path

from sqlalchemy import func, select

from mirror.config import utc_now
from mirror.index.database import IndexWriter, open_reader
from mirror.ingest import ingest_documents
from mirror.layout import Layout
from mirror.sources.isic_v1.models import Image
from mirror.sources.isic_v1.sandbox.data import Archive
from mirror.sources.isic_v1.spec import SPEC
from mirror.store import canonical_json

IMAGE = SPEC.kind("image")

BATCH = 2000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=100_000)
    args = parser.parse_args()
    archive = Archive(args.images, seed=0, private_fraction=0.0)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MIRROR_STATE_DIR"] = f"{tmp}/state"
        layout = Layout(Path(tmp) / "root")
        writer = IndexWriter(layout)
        now = utc_now()
        insert = 0.0
        for start in range(0, args.images, BATCH):
            items = []  # documents are made outside the timed part
            for i in range(start, min(args.images, start + BATCH)):
                doc = archive.image_detail(i)
                payload = canonical_json(doc)
                items.append((doc, hashlib.sha256(payload).hexdigest(),
                              f"store/{doc['_id'][-1]}/image_{doc['_id']}.json.zst",
                              len(payload)))
            started = time.perf_counter()
            with writer.session() as session:  # one batch, as the sync engine commits them
                ingest_documents(session, IMAGE, items, now, public=True)
            insert += time.perf_counter() - started
        started = time.perf_counter()
        generation = writer.publish()
        publish = time.perf_counter() - started
        work_size = writer.path.stat().st_size
        writer.close()
        published = layout.generation_path(generation).stat().st_size
        engine = open_reader(layout)
        with engine.connect() as conn:
            lookups = {
                "by name": lambda: conn.execute(select(Image.id).where(
                    Image.name == "ISIC_0054321")).all(),
                "count diagnosis=melanoma": lambda: conn.execute(select(func.count()).where(
                    Image.diagnosis == "melanoma")).scalar(),
                "count by dataset": lambda: conn.execute(select(
                    Image.dataset_id, func.count()).group_by(Image.dataset_id)).all(),
            }
            timings = {}
            for name, fn in lookups.items():
                runs = []
                for _ in range(10):
                    t = time.perf_counter()
                    fn()
                    runs.append((time.perf_counter() - t) * 1000)
                timings[name] = statistics.median(runs)
    print(f"{args.images} image records (detail JSON + flattened columns, doc versions)")
    print(f"insert + commit, batches of {BATCH} {args.images / insert:8.0f} rows/s  "
          f"({insert:.1f} s)")
    print(f"publish (VACUUM INTO)        {publish:10.2f} s")
    print(f"work db size                 {work_size / 1e6:10.1f} MB")
    print(f"published generation size    {published / 1e6:10.1f} MB")
    for name, ms in timings.items():
        print(f"lookup {name:22} {ms:10.2f} ms (median of 10)")


if __name__ == "__main__":
    main()
