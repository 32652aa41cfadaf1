"""Synthetic image files: lesion-like JPEGs, superpixel PNGs, masks, all deterministic.

A lesion is drawn once at 1/8 scale (a skin-toned field with an irregular, darker
blob and some texture), then scaled to the image's real size; the segmentation
mask is the same blob, so masks and images agree. Superpixels are an irregular
grid of about 1,000 near-equal cells, encoded as the archive encodes them:
label = R + 256*G + 65536*B in an RGB PNG of the image's size.
"""

from __future__ import annotations

import io
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from functools import lru_cache

import numpy as np
from PIL import Image

from mirror.sources.isic_v1.sandbox.data import Archive, _rng

SCALE = 8
CACHE_BYTES = int(os.environ.get("MIRROR_SANDBOX_CACHE_MB", "512")) * 1024 * 1024


class _ByteCache:
    """Least-recently-used cache of generated files, bounded by total bytes."""

    def __init__(self, budget: int):
        self.budget, self.used = budget, 0
        self.items: OrderedDict[tuple, bytes] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, key: tuple, make: Callable[[], bytes]) -> bytes:
        with self.lock:
            if key in self.items:
                self.items.move_to_end(key)
                return self.items[key]
        data = make()  # generated outside the lock: threads work in parallel
        with self.lock:
            if key not in self.items:
                self.items[key] = data
                self.used += len(data)
            while self.used > self.budget and self.items:
                self.used -= len(self.items.popitem(last=False)[1])
        return data


_cache = _ByteCache(CACHE_BYTES)


def _key(archive: Archive, i: int, kind: str, *extra: int) -> tuple:
    # Everything a file depends on: shared safely by sandboxes of the same seed.
    return (kind, archive.seed, i, *archive.image_size(i), *extra)


def _lesion_field(seed: int, i: int, width: int, height: int) -> np.ndarray:
    """Signed distance-like field at 1/8 scale: > 0 inside the lesion."""
    rng = _rng(seed, "lesion", i)
    w, h = max(2, width // SCALE), max(2, height // SCALE)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    cx, cy = w * (0.4 + 0.2 * rng.random()), h * (0.4 + 0.2 * rng.random())
    rx, ry = w * (0.15 + 0.15 * rng.random()), h * (0.15 + 0.15 * rng.random())
    angle = np.arctan2(y - cy, x - cx)
    wobble = 1 + sum(0.12 * rng.random() * np.sin(k * angle + 6.28 * rng.random())
                     for k in (2, 3, 5))
    r = np.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2)
    return wobble - r


@lru_cache(maxsize=64)
def _render(seed: int, i: int, width: int, height: int) -> Image.Image:
    field = _lesion_field(seed, i, width, height)
    rng = np.random.default_rng(_rng(seed, "texture", i).randrange(2**32))
    h, w = field.shape
    skin = np.array([224, 172, 150], np.float32) * (0.9 + 0.2 * rng.random())
    lesion = np.array([110, 70, 50], np.float32) * (0.7 + 0.5 * rng.random())
    inside = np.clip(field * 4, 0, 1)[..., None]
    texture = rng.normal(0, 9, (h, w, 1)).astype(np.float32)
    shade = np.linspace(0.92, 1.05, w, dtype=np.float32)[None, :, None]
    rgb = (skin * (1 - inside) + lesion * inside) * shade + texture
    small = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB")
    return small


def image_jpeg(archive: Archive, i: int) -> bytes:
    def make() -> bytes:
        width, height = archive.image_size(i)
        img = _render(archive.seed, i, width, height).resize((width, height), Image.BILINEAR)
        return _encode(img, "JPEG", quality=85)
    return _cache.get(_key(archive, i, "image"), make)


def thumbnail_jpeg(archive: Archive, i: int, box: int = 256) -> bytes:
    def make() -> bytes:
        width, height = archive.image_size(i)
        scale = min(box / width, box / height)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        img = _render(archive.seed, i, width, height).resize(size, Image.BILINEAR)
        return _encode(img, "JPEG", quality=85)
    return _cache.get(_key(archive, i, "thumbnail", box), make)


def mask_png(archive: Archive, i: int, j: int) -> bytes:
    def make() -> bytes:
        width, height = archive.image_size(i)
        field = _lesion_field(archive.seed, i, width, height) + 0.05 * j
        small = Image.fromarray(np.where(field > 0, 255, 0).astype(np.uint8), "L")
        return _encode(small.resize((width, height), Image.NEAREST), "PNG")
    return _cache.get(_key(archive, i, "mask", j), make)


def superpixel_labels(archive: Archive, i: int) -> np.ndarray:
    """int32 (H, W) labels 0..nx*ny-1: rows of cells whose column borders wander."""
    width, height = archive.image_size(i)
    nx, ny = archive.superpixel_grid(i)
    rng = np.random.default_rng(_rng(archive.seed, "superpixels", i).randrange(2**32))
    row_edges = np.linspace(0, height, ny + 1)
    jitter = rng.uniform(-0.3, 0.3, ny - 1) * (height / ny)
    row_edges[1:-1] += jitter
    row_of_y = np.searchsorted(row_edges[1:-1], np.arange(height), side="right")
    cell = width / nx
    col_edges = np.arange(1, nx)[None, :] * cell + rng.uniform(-0.3, 0.3, (ny, nx - 1)) * cell
    labels = np.empty((height, width), np.int32)
    xs = np.arange(width)
    for r in range(ny):
        cols = np.searchsorted(col_edges[r], xs, side="right").astype(np.int32)
        labels[row_of_y == r] = r * nx + cols
    return labels


def superpixels_png(archive: Archive, i: int) -> bytes:
    def make() -> bytes:
        labels = superpixel_labels(archive, i)
        rgb = np.stack([labels & 0xFF, (labels >> 8) & 0xFF, (labels >> 16) & 0xFF], axis=-1)
        return _encode(Image.fromarray(rgb.astype(np.uint8), "RGB"), "PNG", compress_level=1)
    return _cache.get(_key(archive, i, "superpixels"), make)


def markup_png(archive: Archive, i: int, values: list[float]) -> bytes:
    """0 / 128 / 255 per pixel from per-superpixel values 0.0 / 0.5 / 1.0."""
    from mirror.sources.isic_v1.superpixels import markup_png as encode

    return encode(superpixel_labels(archive, i), values)


def segmentation_thumbnail(archive: Archive, i: int, j: int, width: int = 256) -> bytes:
    """The image at ``width`` with the mask's boundary drawn green, as JPEG."""
    def make() -> bytes:
        full_w, full_h = archive.image_size(i)
        size = (width, max(1, round(full_h * width / full_w)))
        rgb = np.array(_render(archive.seed, i, full_w, full_h).resize(size, Image.BILINEAR))
        field = _lesion_field(archive.seed, i, full_w, full_h) + 0.05 * j
        inside = np.array(Image.fromarray((field > 0).astype(np.uint8) * 255, "L")
                          .resize(size, Image.NEAREST)) > 0
        edge = inside & ~(np.roll(inside, 1, 0) & np.roll(inside, -1, 0)
                          & np.roll(inside, 1, 1) & np.roll(inside, -1, 1))
        rgb[edge] = (0, 255, 0)
        return _encode(Image.fromarray(rgb, "RGB"), "JPEG", quality=85)
    return _cache.get(_key(archive, i, "segthumb", j, width), make)


def markup_rendered(archive: Archive, i: int, values: list[float]) -> bytes:
    """The image with possible superpixels (250, 250, 0) and definite ones (0, 0, 255)."""
    from mirror.sources.isic_v1.superpixels import markup_rendered as render

    width, height = archive.image_size(i)
    rgb = np.array(_render(archive.seed, i, width, height).resize((width, height),
                                                                  Image.BILINEAR))
    return render(rgb, superpixel_labels(archive, i), values)


def _encode(img: Image.Image, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    img.save(out, fmt, **options)
    return out.getvalue()


__all__ = ["image_jpeg", "markup_png", "markup_rendered", "mask_png", "segmentation_thumbnail",
           "superpixel_labels",
           "superpixels_png", "thumbnail_jpeg"]
