"""A file planted at a final store path is never adopted (issue 16).

Shard folders are group-writable, so anyone in the lab can put a file where the next
sync will look for an image. A sync adopts a file already at its final path only when an
earlier sync recorded its hash in the publish journal (it is what a killed sync leaves);
any other file is replaced by the archive's bytes, and ``mirror verify`` never calls the
planted bytes good.
"""

from __future__ import annotations

import hashlib
import io

import pytest
from click.testing import CliRunner
from PIL import Image as PILImage

from mirror.cli import main
from mirror.sources.isic_v1.sandbox import blobs, serve
from tests.reliability.helpers import indexed

pytestmark = pytest.mark.timeout(120)


def _jpeg() -> bytes:
    out = io.BytesIO()
    PILImage.new("RGB", (32, 32), (0, 255, 0)).save(out, "JPEG")
    return out.getvalue()


def test_a_planted_thumbnail_is_replaced_by_the_archives_bytes(tmp_path):
    root = tmp_path / "m"
    args = ["sync", "--root", str(root), "--quiet", "--blobs", "thumbnail"]
    with serve(images=4, seed=101, private_fraction=0.0) as sb:
        assert CliRunner().invoke(main, [*args, "--url", sb.url]).exit_code == 0
        new = sb.mutate(add=1)["added"][0]
        planted = root / "isic" / "store" / new[-1] / f"thumb_{new}.jpg"
        planted.write_bytes(_jpeg())  # a valid JPEG: magic and end marker pass
        done = CliRunner().invoke(main, args)
        assert done.exit_code == 0, done.output
        real = blobs.thumbnail_jpeg(sb.archive, sb.archive.image_index(new))
    digest = hashlib.sha256(planted.read_bytes()).hexdigest()
    assert digest == hashlib.sha256(real).hexdigest(), "the planted bytes were adopted"
    assert indexed(root)[f"store/{new[-1]}/thumb_{new}.jpg"] == digest
    assert "all good" in CliRunner().invoke(main, ["verify", "--root", str(root)]).output
