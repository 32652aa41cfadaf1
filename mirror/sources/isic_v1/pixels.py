"""Decode bounds: an image file's declared size is checked before any pixel is allocated.

A PNG or JPEG header says how many pixels the file decodes to, whatever its size on disk:
a 0.5 MB PNG can declare 13000 x 13000 (2 GB to decode as RGBX). Every decoder of ISIC
v1 files (the superpixel check and derivation in sync, verify, the image, mask and
superpixel accessors) opens the file lazily (Pillow reads the header only), checks the
declared size against the object's pixel size when the index knows it and against
``MIRROR_MAX_DECODE_PIXELS``, and only then decodes.
"""

from __future__ import annotations

import io
from pathlib import Path

from mirror import settings
from mirror.errors import DecodeBombError


def open_checked(source: str | Path | bytes, shape: tuple[int, int] | None = None,
                 what: str = "image", transposed_ok: bool = False):
    """A lazily opened Pillow image whose declared size passed the checks.

    ``shape`` is the object's (height, width); ``transposed_ok`` accepts (width, height)
    too (a full image whose EXIF orientation the archive applied in its metadata).
    """
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():  # our cap decides, below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    except Image.DecompressionBombError:
        raise DecodeBombError(f"{what} declares more pixels than Pillow's decompression-bomb "
                              "limit (and than MIRROR_MAX_DECODE_PIXELS); not decoded") from None
    try:
        check_size(image.size, shape, what, transposed_ok)
    except DecodeBombError:
        image.close()
        raise
    return image


def check_size(size: tuple[int, int], shape: tuple[int, int] | None, what: str,
               transposed_ok: bool = False) -> None:
    """Raise :class:`DecodeBombError` when ``size`` (width, height) is over the cap or is
    not the object's ``shape`` (height, width)."""
    width, height = size
    cap = int(settings.MAX_DECODE_PIXELS.get())
    if width * height > cap:
        raise DecodeBombError(f"{what} declares {width}x{height} pixels, more than "
                              f"MIRROR_MAX_DECODE_PIXELS ({cap:,}); not decoded")
    if shape is None:
        return
    expected = {(shape[1], shape[0])} | ({(shape[0], shape[1])} if transposed_ok else set())
    if (width, height) not in expected:
        raise DecodeBombError(f"{what} is {width}x{height}, but the image is "
                              f"{shape[1]}x{shape[0]}; not decoded")
