"""Superpixel decoding, the isicarchive-style map, npz caching and malformed input."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from mirror.sources.isic_v1.superpixels import (
    SuperpixelError,
    decode_png,
    decode_rgb,
    encode_npz,
    encode_png,
    load_npz,
    load_superpixels,
    superpixel_map,
)

REAL_PNG = (Path(__file__).resolve().parents[2] / "shared" / "data" / "isic-v1-recorded"
            / "ISIC_0000000_superpixels.png")


def brute_force_map(idx: np.ndarray) -> np.ndarray:
    """The isicarchive map, by the book, one pixel at a time."""
    flat = idx.ravel().tolist()
    labels = max(flat) + 1
    rows: list[list[int]] = [[] for _ in range(labels)]
    for pixel, label in enumerate(flat):
        rows[label].append(pixel)
    width = max(len(r) for r in rows) + 1
    out = np.zeros((labels, width), np.int32)
    for label, pixels in enumerate(rows):
        out[label, :len(pixels)] = pixels
        out[label, -1] = len(pixels)
    return out


def _png(array: np.ndarray, mode: str) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array, mode).save(out, "PNG")
    return out.getvalue()


def test_tiny_example_from_the_docstring():
    idx = np.array([[0, 0, 1], [1, 1, 1]], np.int32)
    assert superpixel_map(idx).tolist() == [[0, 1, 0, 0, 2], [2, 3, 4, 5, 4]]


@pytest.mark.skipif(not REAL_PNG.exists(), reason="recorded data not present")
def test_real_superpixel_png():
    idx = decode_png(REAL_PNG)
    # The file is the isicarchive demo PNG: 640x480, 996 labels (the data README's
    # 1022x767 describes the full image it belongs to, not this file).
    assert idx.dtype == np.int32 and idx.shape == (480, 640)
    assert idx.max() == 995 and np.unique(idx).size == 996
    m = superpixel_map(idx)
    assert m.shape == (996, 517)  # as the research notes record for isicarchive
    assert np.array_equal(m, brute_force_map(idx))  # every row, on real SLIC shapes


@given(arrays(np.int32, st.tuples(st.integers(1, 12), st.integers(1, 12)),
              elements=st.integers(0, 6)))
@settings(max_examples=150, deadline=None)
def test_map_equals_brute_force(raw):
    _, idx = np.unique(raw, return_inverse=True)  # make labels contiguous 0..max
    idx = idx.reshape(raw.shape).astype(np.int32)
    assert np.array_equal(superpixel_map(idx), brute_force_map(idx))


@given(arrays(np.int32, st.tuples(st.integers(1, 9), st.integers(1, 9)),
              elements=st.integers(0, 70000)))
@settings(max_examples=60, deadline=None)
def test_png_and_npz_round_trips(raw):
    _, idx = np.unique(raw, return_inverse=True)
    idx = idx.reshape(raw.shape).astype(np.int32)
    assert np.array_equal(decode_png(encode_png(idx)), idx)
    assert np.array_equal(load_npz(encode_npz(idx)), idx)


def test_npz_bytes_are_deterministic():
    idx = np.arange(12, dtype=np.int32).reshape(3, 4)
    assert encode_npz(idx) == encode_npz(idx.copy())


def test_load_superpixels_prefers_the_npz(tmp_path):
    idx = np.array([[0, 1], [2, 2]], np.int32)
    png, npz = tmp_path / "s.png", tmp_path / "s.npz"
    png.write_bytes(encode_png(idx))
    npz.write_bytes(encode_npz(idx))
    sp = load_superpixels(png, npz)
    assert sp["max"] == 2 and sp["shp"] == (2, 2) and np.array_equal(sp["idx"], idx)
    png.write_bytes(b"broken")  # proves the PNG was not read
    assert np.array_equal(load_superpixels(png, npz)["idx"], idx)


@pytest.mark.parametrize("make, message", [
    (lambda: b"not a png at all", "not a readable PNG"),
    (lambda: _png(np.zeros((4, 4), np.uint8), "L"), "mode L"),
    (lambda: _png(np.zeros((4, 4, 4), np.uint8), "RGBA"), "transparent"),
    (lambda: _png(np.zeros((4, 4, 3), np.uint8), "RGB"), "is 4x4, but the image is 5x4"),
    (lambda: encode_png_raw(np.array([[0, 2], [2, 2]])), "not contiguous"),
    (lambda: encode_png_raw(np.array([[0, 1], [2, 200000]])), "impossible"),
])
def test_malformed_pngs_raise_clear_errors(make, message):
    with pytest.raises(SuperpixelError, match=message):
        decode_png(make(), expected_shape=(4, 5) if "image is" in message else None)


def encode_png_raw(idx: np.ndarray) -> bytes:
    rgb = np.stack([idx & 255, (idx >> 8) & 255, (idx >> 16) & 255], -1).astype(np.uint8)
    return _png(rgb, "RGB")


def test_malformed_npz_and_arrays():
    with pytest.raises(SuperpixelError):
        load_npz(b"PK\x03\x04 nope")
    buf = io.BytesIO()
    np.savez(buf, idx=np.zeros((2, 2), np.float64))
    with pytest.raises(SuperpixelError, match="float64"):
        load_npz(buf.getvalue())
    with pytest.raises(SuperpixelError):
        decode_rgb(np.zeros((2, 2), np.uint8))
