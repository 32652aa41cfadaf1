"""Superpixel index images: decode the archive's PNGs, build the pixel map, cache as .npz.

The archive stores each image's ~1,000 SLIC superpixels as an RGB PNG of the image's
size in which a pixel's *label* is ``R + 256*G + 65536*B``. Labels are 0-based and
contiguous (0..max).

The *map* has the isicarchive package's layout: an int32 matrix of shape
``(max+1, maxcount+1)`` whose row ``k`` lists the flat (row-major) pixel indices of
label ``k`` in ascending order, zero-padded, with the pixel count in the last
column. For a 2x3 image with labels ``[[0, 0, 1], [1, 1, 1]]``::

    map = [[0, 1, 0, 0, 2],     # label 0: pixels 0 and 1, count 2
           [2, 3, 4, 5, 4]]     # label 1: pixels 2..5, count 4

so ``map[k, :map[k, -1]]`` are the pixels of label ``k``. Everything is vectorised
numpy (no numba): decode is one integer combine of the three planes; the map sorts the
horizontal runs of each label (not the pixels) and expands them in one scatter.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np

from mirror.errors import SuperpixelError

NPZ_FORMAT = "mirror-spidx/1"
MAX_LABELS = 1 << 24
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed, so equal arrays give equal bytes


def decode_rgb(rgb: np.ndarray) -> np.ndarray:
    """int32 labels (H, W) from an (H, W, 3) uint8 array: R + 256*G + 65536*B."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise SuperpixelError(f"expected an (H, W, 3) uint8 array, got {rgb.shape} {rgb.dtype}")
    idx = rgb[..., 0].astype(np.int32)
    idx |= rgb[..., 1].astype(np.int32) << 8
    blue = rgb[..., 2]
    if blue.any():  # zero for fewer than 65,536 labels: skip the third plane
        idx |= blue.astype(np.int32) << 16
    return idx


def _decode_rgb_image(image) -> np.ndarray:
    """Like :func:`decode_rgb`, 3x faster: Pillow packs each pixel into 4 bytes (RGBX) in
    one pass, and a little-endian uint32 view of those bytes is the label plus X << 24."""
    width, height = image.size
    packed = np.frombuffer(image.tobytes("raw", "RGBX"), "<u4").reshape(height, width)
    return np.bitwise_and(packed, 0xFFFFFF).view(np.int32)


def _open_png(source: str | Path | bytes, expected_shape: tuple[int, int] | None = None):
    """The decoded PNG, once its declared size passed the decode bounds (header only)."""
    from mirror.errors import DecodeBombError
    from mirror.sources.isic_v1.pixels import open_checked

    try:
        image = open_checked(source, expected_shape, "superpixel PNG")
    except DecodeBombError as exc:
        raise SuperpixelError(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - Pillow raises many kinds
        raise SuperpixelError(f"not a readable PNG ({exc})") from None
    if image.format != "PNG":
        raise SuperpixelError(f"expected a PNG, got {image.format}")
    try:
        image.load()
    except Exception as exc:  # noqa: BLE001
        raise SuperpixelError(f"not a readable PNG ({exc})") from None
    return image


def decode_png(source: str | Path | bytes,
               expected_shape: tuple[int, int] | None = None) -> np.ndarray:
    """Decode and check a superpixel PNG; int32 labels of shape (H, W). The declared size
    is checked against ``expected_shape`` and ``MIRROR_MAX_DECODE_PIXELS`` first."""
    image = _open_png(source, expected_shape)
    if image.mode == "RGBA":
        rgba = np.asarray(image)
        if not (rgba[..., 3] == 255).all():
            raise SuperpixelError("superpixel PNG has transparent pixels; expected RGB")
        rgb = np.ascontiguousarray(rgba[..., :3])
        idx = decode_rgb(rgb)
    elif image.mode == "RGB":
        idx = _decode_rgb_image(image)
    else:
        raise SuperpixelError(f"superpixel PNG has mode {image.mode}; expected RGB "
                              "(label = R + 256*G + 65536*B)")
    if expected_shape is not None and tuple(idx.shape) != tuple(expected_shape):
        raise SuperpixelError(f"superpixel PNG is {idx.shape[1]}x{idx.shape[0]}, but the image "
                              f"is {expected_shape[1]}x{expected_shape[0]}")
    check_labels(idx)
    return idx


def _runs(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Runs of equal labels in a flat label array: (starts, lengths, labels).

    Superpixels are compact regions, so a row-major scan meets each one as a few dozen
    horizontal runs: ~25,000 runs for ~780,000 pixels. Counting and sorting runs instead
    of pixels is what makes the map cheap without a compiled kernel.
    """
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    starts = np.concatenate(([0], change))
    lengths = np.diff(np.append(starts, flat.size))
    return starts, lengths, flat[starts]


def _label_counts(labels: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Pixels per label, from the runs."""
    return np.bincount(labels, weights=lengths).astype(np.int64)


def check_labels(idx: np.ndarray) -> int:
    """Labels must be 0..max with none missing; returns the label count."""
    if idx.size == 0:
        raise SuperpixelError("superpixel image is empty")
    top = int(idx.max())
    if int(idx.min()) < 0 or top >= MAX_LABELS or top + 1 > idx.size:
        raise SuperpixelError(f"impossible superpixel labels (0..{top} in {idx.size} pixels)")
    _, _, labels = _runs(idx.ravel())
    present = np.bincount(labels, minlength=top + 1)
    missing = np.flatnonzero(present == 0)
    if missing.size:
        raise SuperpixelError(f"superpixel labels are not contiguous: {missing.size} of 0..{top} "
                              f"missing (first {int(missing[0])})")
    return top + 1


def superpixel_map(idx: np.ndarray) -> np.ndarray:
    """The (max+1, maxcount+1) int32 pixel map described in the module docstring.

    Its size is labels x (largest label's pixels + 1) x 4 bytes, which a small, valid label
    image can make enormous (a million one-pixel labels beside one big one); over
    ``MIRROR_MAX_SUPERPIXEL_MAP_BYTES`` it is refused before it is allocated.
    """
    from mirror import settings

    flat = idx.ravel()
    starts, lengths, run_labels = _runs(flat)
    counts = _label_counts(run_labels, lengths)
    labels, width = counts.size, int(counts.max()) + 1
    cap = int(settings.MAX_SUPERPIXEL_MAP_BYTES.get())
    if labels * width * 4 > cap:
        raise SuperpixelError(
            f"the superpixel map of {labels:,} labels (the largest {width - 1:,} pixels) "
            f"would take {labels * width * 4 / 2**20:,.0f} MiB, more than "
            f"MIRROR_MAX_SUPERPIXEL_MAP_BYTES ({cap / 2**20:,.0f} MiB); not built")
    # Runs grouped by label, each label's runs in pixel order (stable sort of ~25k runs),
    # then expanded: the pixels of sorted run j are starts[j] .. starts[j] + lengths[j] - 1.
    by_label = np.argsort(run_labels, kind="stable")
    starts, lengths = starts[by_label], lengths[by_label]
    offsets = np.cumsum(lengths) - lengths  # where each sorted run begins in the output
    order = np.repeat((starts - offsets).astype(np.int32), lengths)
    order += np.arange(flat.size, dtype=np.int32)
    result = np.zeros((labels, width), np.int32)
    # Row-major boolean assignment fills row 0's first counts[0] cells, then row 1's...:
    # exactly the label-grouped order, with the padding left zero.
    result[:, :-1][np.arange(width - 1) < counts[:, None]] = order
    result[:, -1] = counts
    return result


def encode_npz(idx: np.ndarray) -> bytes:
    """A deterministic .npz holding ``idx`` and a format marker.

    ``idx`` is stored as uint16 when it has fewer than 65,536 labels (always, for the
    archive's ~1,000): half the bytes to inflate, so loading is about twice as fast as
    int32, and several times faster than decoding the PNG. :func:`load_npz` returns int32.
    """
    narrow = int(idx.max()) < 65536 if idx.size else True
    stored = np.ascontiguousarray(idx, np.uint16 if narrow else np.int32)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for name, array in (("idx", stored),
                            ("format", np.array(NPZ_FORMAT))):
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, array, allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, buffer.getvalue(), compresslevel=1)
    return out.getvalue()


def load_npz(source: str | Path | bytes) -> np.ndarray:
    """The label image from an .npz written by :func:`encode_npz`."""
    try:
        with np.load(io.BytesIO(source) if isinstance(source, bytes) else source,
                     allow_pickle=False) as data:
            idx = data["idx"]
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise SuperpixelError(f"not a superpixel npz ({exc})") from None
    if idx.ndim != 2 or idx.dtype not in (np.uint16, np.int32):
        raise SuperpixelError(f"superpixel npz holds {idx.dtype} {idx.shape}; expected a 2-D "
                              "uint16 or int32 array")
    return idx.astype(np.int32, copy=False)


def encode_png(idx: np.ndarray) -> bytes:
    """RGB PNG bytes of a label image (the inverse of :func:`decode_png`)."""
    from PIL import Image

    check_labels(idx)
    rgb = np.stack([idx & 0xFF, (idx >> 8) & 0xFF, (idx >> 16) & 0xFF], axis=-1).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(out, "PNG")
    return out.getvalue()


def load_superpixels(png_path: str | Path, npz_path: str | Path | None = None) -> dict:
    """``{"idx", "map", "max", "shp"}`` like isicarchive; from the npz when there is one."""
    if npz_path is not None and Path(npz_path).exists():
        idx = load_npz(npz_path)
    else:
        idx = decode_png(png_path)
    return {"idx": idx, "map": superpixel_map(idx), "max": int(idx.max()),
            "shp": tuple(idx.shape)}


def markup_png(labels: np.ndarray, values: list[float]) -> bytes:
    """The archive's markup mask: 0 / 128 / 255 per pixel from per-superpixel values
    0.0 / 0.5 / 1.0 (one function for the sandbox and ``mirror serve``: same bytes)."""
    from PIL import Image

    lut = np.array([0 if v == 0 else 128 if v < 1 else 255 for v in values], np.uint8)
    out = io.BytesIO()
    Image.fromarray(lut[labels], "L").save(out, "PNG")
    return out.getvalue()


def markup_rendered(rgb: np.ndarray, labels: np.ndarray, values: list[float]) -> bytes:
    """The image with possible superpixels (250, 250, 0) and definite ones (0, 0, 255),
    as the archive's ``markup/{feature}/rendered`` JPEG."""
    from PIL import Image

    rgb = rgb.copy()
    marks = np.asarray(values, np.float32)[labels]
    rgb[(marks > 0) & (marks < 1)] = (250, 250, 0)
    rgb[marks >= 1] = (0, 0, 255)
    out = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(out, "JPEG", quality=85)
    return out.getvalue()
