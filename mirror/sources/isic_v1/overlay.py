"""Paint masks, superpixels and annotation features over images, and save PNGs.

People would rather look than read: these helpers turn what the API returns into
pictures. All work on ``(H, W, 3) uint8`` arrays and boolean ``(H, W)`` masks and
return new arrays; :func:`save_png` writes one.

    >>> from mirror.sources.isic_v1.overlay import outline_mask, save_png
    >>> img = m.image("ISIC_0000000")
    >>> save_png(outline_mask(img.data, img.segmentations[0].mask()), "seg.png")
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

GREEN, YELLOW, BLUE = (0, 255, 0), (250, 250, 0), (0, 0, 255)


def boundary(mask: np.ndarray, width: int = 2) -> np.ndarray:
    """Pixels of ``mask`` that touch a pixel outside it (4-neighbourhood), ``width`` thick."""
    inner = mask.copy()
    for _ in range(width):
        eroded = inner.copy()
        eroded[1:, :] &= inner[:-1, :]
        eroded[:-1, :] &= inner[1:, :]
        eroded[:, 1:] &= inner[:, :-1]
        eroded[:, :-1] &= inner[:, 1:]
        inner = eroded
    return mask & ~inner


def _check(rgb: np.ndarray, mask: np.ndarray) -> None:
    if rgb.ndim != 3 or rgb.shape[2] != 3 or mask.shape != rgb.shape[:2]:
        raise ValueError(f"image {rgb.shape} and mask {mask.shape} do not match")


def fill_mask(rgb: np.ndarray, mask: np.ndarray, color=YELLOW, alpha: float = 0.5
              ) -> np.ndarray:
    """Blend ``color`` into the pixels of ``mask``."""
    _check(rgb, mask)
    out = rgb.astype(np.float32)
    out[mask] = (1 - alpha) * out[mask] + alpha * np.asarray(color, np.float32)
    return out.round().astype(np.uint8)


def outline_mask(rgb: np.ndarray, mask: np.ndarray, color=GREEN, width: int = 2) -> np.ndarray:
    """Draw the outline of ``mask`` in ``color``."""
    _check(rgb, mask)
    out = rgb.copy()
    out[boundary(mask, width)] = color
    return out


def paint_superpixels(rgb: np.ndarray, superpixel_map: np.ndarray, labels: Iterable[int],
                      color=BLUE) -> np.ndarray:
    """Colour whole superpixels through the isicarchive-style map (row k: pixels of k)."""
    out = rgb.copy()
    flat = out.reshape(-1, 3)
    for label in labels:
        count = superpixel_map[label, -1]
        flat[superpixel_map[label, :count]] = color
    return out


def annotation_overlay(annotation, feature: str) -> np.ndarray:
    """The annotated image with "possible" superpixels in yellow and "definite" in blue.

    The colours are the archive's own rendering (possible = (250, 250, 0), definite = (0, 0, 255)).
    """
    image = annotation.image
    idx = image.superpixels["idx"]
    values = annotation.markups[feature][idx]
    rgb = fill_mask(image.data, values >= 0.5, YELLOW, 0.45)
    return fill_mask(rgb, values >= 1.0, BLUE, 0.45)


def save_png(rgb: np.ndarray, path: str | Path) -> Path:
    """Write an RGB array as a PNG and return its path."""
    from PIL import Image

    path = Path(path)
    Image.fromarray(rgb).save(path, "PNG")
    return path
