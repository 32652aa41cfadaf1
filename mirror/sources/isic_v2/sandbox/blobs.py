"""Real, small, deterministic JPEGs for the sandbox bucket.

Each image is a smooth skin-toned gradient with a darker "lesion" ellipse drawn from
``(isic_id, file_rev)`` at quality 90 and padded to a size drawn from the seed (10-16 kB);
its thumbnail (longest side at most 256, quality 75) is made from it as the archive makes
its own. ``files.*.size`` in the record is
the size *before* the credit block is embedded, as on the live archive, where publish embeds
IPTC/XMP credit (attribution at publish, ``ISIC Archive``, isic_id, licence) into the JPEG
and nothing updates the recorded size: the served bytes are longer than the record says.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from xml.sax.saxutils import escape

import numpy as np
from PIL import Image as PILImage

from mirror.sources.isic_v2.sandbox.data import Image, rng_for

# Served (full, thumbnail) byte pairs kept in memory (~22 kB each, so at most ~90 MB): a
# benchmark of a few thousand images then measures the client, not the drawing.
CACHE_ENTRIES = 4096
FULL_SIZES = (10_000, 16_000)  # recorded sizes are drawn in these ranges; drawn JPEGs are
THUMBNAIL_SIZES = (3_600, 6_000)  # at most ~7.2 kB and ~2.8 kB, padded up to them
XMP_HEADER = b"http://ns.adobe.com/xap/1.0/\x00"
_cache: OrderedDict[tuple, tuple[bytes, bytes]] = OrderedDict()
_lock = threading.Lock()


def _draw(isic_id: str, rev: int, width: int, height: int) -> PILImage.Image:
    """Drawn at an eighth of the size and scaled up: smooth, like skin, and cheap."""
    rng = rng_for("pixels", isic_id, rev)
    small_w, small_h = max(2, width // 8), max(2, height // 8)
    y, x = np.mgrid[0:small_h, 0:small_w].astype(np.float32)
    base = np.array([rng.uniform(180, 235), rng.uniform(130, 180), rng.uniform(110, 160)],
                    dtype=np.float32)
    shade = (x / small_w * rng.uniform(-25, 25) + y / small_h * rng.uniform(-25, 25))[..., None]
    cx, cy = rng.uniform(0.3, 0.7) * small_w, rng.uniform(0.3, 0.7) * small_h
    rx, ry = rng.uniform(0.12, 0.3) * small_w, rng.uniform(0.12, 0.3) * small_h
    inside = np.clip(1.2 - ((x - cx) / rx) ** 2 - ((y - cy) / ry) ** 2, 0, 1)[..., None]
    lesion = np.array([rng.uniform(60, 120), rng.uniform(35, 80), rng.uniform(25, 60)],
                      dtype=np.float32)
    pixels = (base + shade) * (1 - inside) + lesion * inside
    small = PILImage.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    return small.resize((width, height), PILImage.Resampling.BILINEAR)


def _encode(picture: PILImage.Image, quality: int) -> bytes:
    out = io.BytesIO()
    picture.save(out, "JPEG", quality=quality, optimize=False, progressive=False)
    return out.getvalue()


def _base_pair(image: Image) -> tuple[bytes, bytes]:
    """(full, thumbnail) JPEGs as stored before publish embeds credit."""
    width, height = image.size
    picture = _draw(image.isic_id, image.file_rev, width, height)
    full = _encode(picture, 90)
    picture.thumbnail((256, 256))
    return full, _encode(picture, 75)


def credit_segment(isic_id: str, attribution: str, license_: str) -> bytes:
    """An APP1 XMP segment with the credit the archive embeds at publish."""
    xmp = (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF '
        'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/" '
        'xmlns:photoshop="http://ns.adobe.com/photoshop/1.0/" '
        'xmlns:xmpRights="http://ns.adobe.com/xap/1.0/rights/">'
        f"<dc:title>{escape(isic_id)}</dc:title>"
        f"<photoshop:Credit>{escape(attribution)}</photoshop:Credit>"
        "<photoshop:Source>ISIC Archive</photoshop:Source>"
        f"<xmpRights:UsageTerms>{escape(license_)}</xmpRights:UsageTerms>"
        '</rdf:Description></rdf:RDF></x:xmpmeta><?xpacket end="w"?>'
    ).encode()
    payload = XMP_HEADER + xmp
    return b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload


def _embed(jpeg: bytes, segment: bytes) -> bytes:
    """``jpeg`` with ``segment`` after SOI and the JFIF APP0 segment."""
    at = 2
    if jpeg[2:4] == b"\xff\xe0":
        at = 4 + int.from_bytes(jpeg[4:6], "big")
    return jpeg[:at] + segment + jpeg[at:]


def recorded_sizes(image: Image) -> tuple[int, int]:
    """(files.full.size, files.thumbnail_256.size): the pre-credit byte counts.

    They are drawn from the seed, not measured, so a listing of a large sandbox never has to
    draw its JPEGs; each JPEG is padded (a COM segment) to exactly its planned size.
    """
    rng = rng_for("size", image.isic_id, image.file_rev)
    return rng.randrange(*FULL_SIZES), rng.randrange(*THUMBNAIL_SIZES)


def _pad(jpeg: bytes, size: int) -> bytes:
    need = size - len(jpeg)
    if need == 0:
        return jpeg
    if need < 4:  # the planned sizes leave a wide margin over any drawn JPEG
        raise RuntimeError(f"sandbox JPEG of {len(jpeg)} bytes exceeds its planned {size}")
    return _embed(jpeg, b"\xff\xfe" + (need - 2).to_bytes(2, "big") + b"\x00" * (need - 4))


def served(image: Image) -> tuple[bytes, bytes]:
    """(full bytes, thumbnail bytes) as the bucket serves them."""
    key = (image.isic_id, image.file_rev, image.size, image.frozen_attribution,
           image.frozen_license)
    with _lock:
        pair = _cache.get(key)
        if pair is not None:
            _cache.move_to_end(key)
            return pair
    full, thumb = _base_pair(image)
    full_size, thumb_size = recorded_sizes(image)
    segment = credit_segment(image.isic_id, image.frozen_attribution, image.frozen_license)
    pair = (_embed(_pad(full, full_size), segment), _embed(_pad(thumb, thumb_size), segment))
    with _lock:
        _cache[key] = pair
        while len(_cache) > CACHE_ENTRIES:
            _cache.popitem(last=False)
    return pair
