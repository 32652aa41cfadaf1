"""Object store throughput for JSON documents: zstd vs plain, with and without a dictionary.

    .venv/bin/python bench/store.py [--docs 5000]

Documents are real ISIC image records (``shared/data/isic-v1-recorded``), perturbed so that
every one is distinct. Each write is a full atomic publish (temp file, fsync, link).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import tempfile
import time
from pathlib import Path

import zstandard

from mirror.layout import Layout
from mirror.store import ObjectStore, blob_relpath, canonical_json

RECORDED = Path(__file__).resolve().parents[2] / "shared/data/isic-v1-recorded"


def documents(n: int) -> list[dict]:
    try:
        real = list(json.load(gzip.open(RECORDED / "images-sample.json.gz")).values())
    except FileNotFoundError:
        from mirror.sources.isic_v1.sandbox.data import Archive

        archive = Archive(2000, seed=0)
        real = [archive.image_detail(i) for i in range(2000)]
    docs = []
    for k in range(n):
        doc = json.loads(json.dumps(real[k % len(real)]))
        doc["_id"] = hashlib.sha256(str(k).encode()).hexdigest()[:24]
        doc["name"] = f"ISIC_{k:07d}"
        docs.append(doc)
    return docs


def run_store(docs: list[dict], compress: bool) -> tuple[float, float, int]:
    with tempfile.TemporaryDirectory() as tmp:
        store = ObjectStore(Layout(Path(tmp)))
        started = time.perf_counter()
        paths = []
        for doc in docs:
            if compress:
                paths.append(store.put_json("image", doc["_id"], doc).relpath)
            else:
                relpath = blob_relpath("thumb", doc["_id"], ext=".json")
                store.put_bytes(relpath, canonical_json(doc))
                paths.append(relpath)
        store.flush()
        write = time.perf_counter() - started
        started = time.perf_counter()
        for relpath in paths:
            store.read_json(relpath) if compress else json.loads(store.read_bytes(relpath))
        read = time.perf_counter() - started
        size = sum(store.path(p).stat().st_size for p in paths)
    return write, read, size


def dictionary_figures(docs: list[dict]) -> tuple[int, int, float, float]:
    payloads = [canonical_json(d) for d in docs]
    plain = zstandard.ZstdCompressor(level=3, write_checksum=True)
    samples = payloads[:1000]
    dictionary = zstandard.train_dictionary(32 * 1024, samples)
    with_dict = zstandard.ZstdCompressor(level=3, dict_data=dictionary, write_checksum=True)
    test = payloads[1000:] or payloads
    started = time.perf_counter()
    size_plain = sum(len(plain.compress(p)) for p in test)
    t_plain = time.perf_counter() - started
    started = time.perf_counter()
    size_dict = sum(len(with_dict.compress(p)) for p in test)
    t_dict = time.perf_counter() - started
    return size_plain, size_dict, t_plain, t_dict


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--docs", type=int, default=5000)
    args = parser.parse_args()
    docs = documents(args.docs)
    raw = sum(len(canonical_json(d)) for d in docs)
    print(f"{args.docs} image documents, {raw / 1e6:.1f} MB canonical JSON "
          f"({raw / len(docs):.0f} B each)")
    print(f"{'format':22} {'write docs/s':>13} {'read docs/s':>12} {'on disk MB':>11} "
          f"{'ratio':>6}")
    for name, compress in (("plain JSON", False), ("zstd-3 (mirror)", True)):
        write, read, size = run_store(docs, compress)
        print(f"{name:22} {len(docs) / write:13.0f} {len(docs) / read:12.0f} "
              f"{size / 1e6:11.2f} {raw / size:6.2f}")
    plain, with_dict, t_plain, t_dict = dictionary_figures(docs)
    print(f"zstd-3 without dictionary: {plain / 1e6:.2f} MB, {t_plain * 1e3:.0f} ms to compress")
    print(f"zstd-3 with 32 KiB dictionary: {with_dict / 1e6:.2f} MB ({plain / with_dict:.2f}x "
          f"smaller), {t_dict * 1e3:.0f} ms")
    print("(files also occupy whole 4 KiB blocks on most filesystems)")


if __name__ == "__main__":
    main()
