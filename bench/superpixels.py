"""Superpixel decode, map and npz load on 1022x767 images with about 1,000 superpixels.

    .venv/bin/python bench/superpixels.py [--runs 30]

Baseline, measured in the same run: the isicarchive (0.4.11) algorithm written in plain
numpy (its numba kernels loop over pixels; run as Python loops they would be unfairly
slow, so the baseline keeps their logic with numpy primitives): decode by a per-plane
multiply-add, map by one ``np.flatnonzero`` per label. Published reference: isicarchive
with numba, 0.63 ms decode + 4.0 ms map after a 14 s JIT compile at import.
Targets: our PNG -> idx+map within 1.5x of (0.63 + 4.0 ms + the PNG decode itself),
npz load >= 3x faster than decoding the PNG, ``import mirror`` < 0.5 s.
"""

from __future__ import annotations

import argparse
import io
import statistics
import subprocess
import sys
import time

import numpy as np
from PIL import Image

from mirror.sources.isic_v1.sandbox.blobs import superpixel_labels
from mirror.sources.isic_v1.sandbox.data import Archive
from mirror.sources.isic_v1.superpixels import (
    decode_png,
    encode_npz,
    encode_png,
    load_npz,
    superpixel_map,
)

PK_NUMBA_DECODE_MS, PK_NUMBA_MAP_MS = 0.63, 4.0


def median_ms(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def pk_style(png: bytes) -> np.ndarray:
    rgb = np.asarray(Image.open(io.BytesIO(png)))
    idx = rgb[..., 0].astype(np.int32) + rgb[..., 1].astype(np.int32) * 256 \
        + rgb[..., 2].astype(np.int32) * 65536
    flat = idx.ravel()
    counts = np.bincount(flat)
    out = np.zeros((counts.size, counts.max() + 1), np.int32)
    for label in range(counts.size):  # isicarchive fills the map label by label
        pixels = np.flatnonzero(flat == label)
        out[label, :pixels.size] = pixels
        out[label, -1] = pixels.size
    return out


def image_1022x767() -> np.ndarray:
    archive = Archive(1, seed=0)
    archive.image_size = lambda i: (1022, 767)  # the size of ISIC_0000000
    return superpixel_labels(archive, 0)


def import_seconds(module: str) -> float:
    def run(code: str) -> float:
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        return time.perf_counter() - started
    base = statistics.median(run("pass") for _ in range(5))
    return statistics.median(run(f"import {module}") for _ in range(5)) - base


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    idx = image_1022x767()
    png, npz = encode_png(idx), encode_npz(idx)
    pillow_ms = median_ms(lambda: np.asarray(Image.open(io.BytesIO(png))), args.runs)
    decode_ms = median_ms(lambda: decode_png(png), args.runs)
    map_ms = median_ms(lambda: superpixel_map(idx), args.runs)
    npz_ms = median_ms(lambda: load_npz(npz), args.runs)
    pk_ms = median_ms(lambda: pk_style(png), max(3, args.runs // 10))
    ours = decode_ms + map_ms
    target = PK_NUMBA_DECODE_MS + PK_NUMBA_MAP_MS + pillow_ms
    print(f"1022x767, {idx.max() + 1} superpixels, median of {args.runs} runs")
    print(f"{'step':42} {'ms':>8}")
    print(f"{'PNG decode (Pillow only)':42} {pillow_ms:8.2f}")
    print(f"{'decode_png (Pillow + combine + checks)':42} {decode_ms:8.2f}")
    print(f"{'superpixel_map':42} {map_ms:8.2f}")
    print(f"{'ours: PNG -> idx + map':42} {ours:8.2f}")
    print(f"{'isicarchive algorithm in numpy (baseline)':42} {pk_ms:8.2f}  "
          f"ours is {pk_ms / ours:.1f}x faster")
    print(f"{'isicarchive+numba published + PNG decode':42} {target:8.2f}  "
          f"ratio ours/that {ours / target:.2f} (target <= 1.5)")
    print(f"{'load_npz':42} {npz_ms:8.2f}  {decode_ms / npz_ms:.1f}x faster than the PNG "
          "(target >= 3)")
    print(f"{'sizes: PNG / npz bytes':42} {len(png):>8} / {len(npz)}")
    print(f"{'import mirror (s)':42} {import_seconds('mirror'):8.3f}  (target < 0.5)")
    module = "mirror.sources.isic_v1.superpixels"
    print(f"{'import ' + module + ' (s)':42} {import_seconds(module):8.3f}")


if __name__ == "__main__":
    main()
