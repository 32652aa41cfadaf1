"""Decoding bombs are bad files, not a crash or a 2 GB allocation (issue 16).

A 0.5 MB PNG can declare 13000 x 13000 pixels (2 GB to decode), and a valid 14 KB label
PNG can ask ``img.superpixels`` for a 15 GiB pixel map. The mirror reads a file's declared
size first and checks it against the image's size and ``MIRROR_MAX_DECODE_PIXELS``, and
refuses a map over ``MIRROR_MAX_SUPERPIXEL_MAP_BYTES`` before allocating it. ``verify
--repair`` keeps a good superpixel file whose image's metadata changed size.
"""

from __future__ import annotations

import hashlib
import io
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image as PILImage

from mirror.api import Mirror
from mirror.cli import main
from mirror.errors import SuperpixelError
from mirror.sources.isic_v1.sandbox import blobs, serve
from mirror.sources.isic_v1.sandbox.data import Archive
from mirror.sources.isic_v1.superpixels import superpixel_map
from tests.reliability.helpers import child_env, indexed, mirror_cmd
from tests.reliability.test_bounded_http import LAUNCHER

pytestmark = pytest.mark.timeout(180)
MiB = 2**20


def bomb_png(width: int, height: int, mode: str = "RGB") -> bytes:
    """A valid PNG of ``width`` x ``height`` zero pixels, made a row at a time (small in
    memory and on disk: zeros compress a thousandfold)."""
    channels, colour = {"RGB": (3, 2), "L": (1, 0)}[mode]

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    packer, row, parts = zlib.compressobj(9), b"\x00" * (1 + width * channels), []
    for _ in range(height):
        parts.append(packer.compress(row))
    parts.append(packer.flush())
    header = struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(parts))
            + chunk(b"IEND", b""))


def sync_child(root: Path, tmp_path: Path, *args: str) -> tuple[int, str, float, float]:
    """``mirror sync`` in its own child: (exit code, stderr, seconds, peak RSS in MiB)."""
    rss = tmp_path / "rss"
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", LAUNCHER, str(rss),
                           *mirror_cmd("sync", "--root", str(root), "--quiet", *args)],
                          env=child_env(), capture_output=True, text=True, timeout=170)
    return (done.returncode, done.stdout + done.stderr, time.monotonic() - started,
            int(rss.read_text()) / 1024)


def test_superpixel_and_mask_bombs_fail_alone_in_bounded_memory(tmp_path, monkeypatch):
    root = tmp_path / "m"
    superpixel_bomb = bomb_png(13000, 13000)  # 2 GB as RGBX; under 1 MB here
    mask_bomb = bomb_png(20000, 20000, "L")
    assert len(superpixel_bomb) < MiB and len(mask_bomb) < MiB
    real_superpixels, real_mask = blobs.superpixels_png, blobs.mask_png
    with serve(images=6, seed=97, private_fraction=0.0) as sb:
        victim, masked = sb.archive.image_id(2), 4
        assert sb.archive.segmentation_count(masked)
        monkeypatch.setattr(blobs, "superpixels_png", lambda archive, i: superpixel_bomb
                            if i == 2 else real_superpixels(archive, i))
        monkeypatch.setattr(blobs, "mask_png", lambda archive, i, j: mask_bomb
                            if i == masked else real_mask(archive, i, j))
        code, out, seconds, peak = sync_child(root, tmp_path, "--url", sb.url,
                                              "--blobs", "superpixels,masks")
        assert code == 1, out
        assert "Traceback" not in out and "NOT mirrored" in out
        assert "superpixel PNG declares 13000x13000 pixels, more than MIRROR_MAX_DECODE" in out
        assert "mask file declares more pixels than" in out
        assert peak < 400, f"peak RSS {peak:.0f} MiB"  # a decode would take 2,000+
        assert not any(victim in p and "spimg" in p for p in indexed(root))
        assert "all good" in CliRunner().invoke(main, ["verify", "--root", str(root)]).output

        monkeypatch.setattr(blobs, "superpixels_png", real_superpixels)
        monkeypatch.setattr(blobs, "mask_png", real_mask)
        code, out, _, _ = sync_child(root, tmp_path, "--blobs", "superpixels,masks")
        assert code == 0, out
        assert any(victim in p and "spimg" in p for p in indexed(root))
        assert "all good" in CliRunner().invoke(main, ["verify", "--root", str(root)]).output


def test_a_declared_size_over_the_cap_is_refused_even_when_the_metadata_agrees(
        tmp_path, monkeypatch):
    """The metadata is the archive's too: a cap holds whatever it says."""
    monkeypatch.setenv("MIRROR_MAX_DECODE_PIXELS", "50000")
    root = tmp_path / "m"
    with serve(images=3, seed=98, private_fraction=0.0) as sb:
        done = CliRunner().invoke(main, ["sync", "--root", str(root), "--url", sb.url,
                                         "--quiet", "--blobs", "superpixels"])
        sizes = [sb.archive.image_size(i) for i in range(3)]
    big = [w * h > 50000 for w, h in sizes]
    assert any(big) and done.exit_code == 1, done.output
    assert done.output.count("more than MIRROR_MAX_DECODE_PIXELS (50,000)") == sum(big)


def _many_labels_png() -> tuple[bytes, tuple[int, int]]:
    """A valid 1000x1000 label image: one big label, 200,000 one-pixel ones (a 14 KB PNG
    whose map is 200,001 x 800,000 int32: 600 GiB)."""
    idx = np.zeros((1000, 1000), np.int32)
    idx.ravel()[np.arange(1, 400_000, 2)] = np.arange(1, 200_001)
    rgb = np.stack([idx & 0xFF, (idx >> 8) & 0xFF, (idx >> 16) & 0xFF], -1).astype(np.uint8)
    out = io.BytesIO()
    PILImage.fromarray(rgb, "RGB").save(out, "PNG")
    return out.getvalue(), idx.shape


def test_a_superpixel_map_over_its_bound_is_refused_before_it_is_allocated(tmp_path,
                                                                          monkeypatch):
    png, (height, width) = _many_labels_png()
    real_detail = Archive.image_detail

    def detail(self, i):
        doc = real_detail(self, i)
        doc["meta"]["acquisition"].update(pixelsX=width, pixelsY=height)
        return doc

    monkeypatch.setattr(Archive, "image_detail", detail)
    monkeypatch.setattr(blobs, "superpixels_png", lambda archive, i: png)
    root = tmp_path / "m"
    with serve(images=1, seed=99, private_fraction=0.0) as sb:
        done = CliRunner().invoke(main, ["sync", "--root", str(root), "--url", sb.url,
                                         "--quiet", "--blobs", "superpixels"])
        assert done.exit_code == 0, done.output  # a valid label image: mirrored
        image = Mirror(root).image(sb.archive.image_id(0))
        started = time.monotonic()
        with pytest.raises(SuperpixelError, match="MIRROR_MAX_SUPERPIXEL_MAP_BYTES"):
            image.superpixels  # noqa: B018 - the property builds the map
        assert time.monotonic() - started < 10
    small = np.array([[0, 0, 1], [1, 1, 1]], np.int32)
    assert superpixel_map(small).tolist() == [[0, 1, 0, 0, 2], [2, 3, 4, 5, 4]]


def test_verify_repair_keeps_a_good_superpixel_file_after_a_pixel_size_change(
        tmp_path, monkeypatch):
    root = tmp_path / "m"
    args = ["sync", "--root", str(root), "--quiet", "--blobs", "superpixels"]
    with serve(images=3, seed=100, private_fraction=0.0) as sb:
        assert CliRunner().invoke(main, [*args, "--url", sb.url]).exit_code == 0
        victim = sb.archive.image_id(1)
        spimg = next(p for p in indexed(root) if victim in p and "spimg" in p)
        path = root / "isic" / spimg
        before = hashlib.sha256(path.read_bytes()).hexdigest()
        real_detail = Archive.image_detail

        def detail(self, i):
            doc = real_detail(self, i)
            if i == 1:  # the archive corrects the metadata, not the file
                doc["meta"]["acquisition"]["pixelsX"] += 2
            return doc

        with monkeypatch.context() as patch:
            patch.setattr(Archive, "image_detail", detail)
            assert CliRunner().invoke(main, args).exit_code == 0
            done = CliRunner().invoke(main, ["verify", "--root", str(root), "--repair"])
        assert done.exit_code == 1 and "disagrees" in done.output, done.output
        assert "all good" not in done.output
        assert hashlib.sha256(path.read_bytes()).hexdigest() == before  # kept, unchanged
        assert CliRunner().invoke(main, args).exit_code == 0  # the metadata is put back
        assert "all good" in CliRunner().invoke(main, ["verify", "--root", str(root)]).output
