"""Two images with one name: every export holds both, under ``<name>_<id>`` (issue 16).

The archive does not forbid two images one name (a rename, a re-upload). Before, ``export
files`` reported success with one file fewer, the tar got duplicate members and folder
and BagIt exports were short. Now every export names both files ``<name>_<id>``, says so,
and holds one file per image.
"""

from __future__ import annotations

import tarfile

import pytest
from click.testing import CliRunner

from mirror.cli import main
from mirror.sources.isic_v1.sandbox import serve

pytestmark = pytest.mark.timeout(120)


def _ok(*args: str) -> str:
    done = CliRunner().invoke(main, list(args))
    assert done.exit_code == 0, done.output[-2000:]
    return done.output


def test_every_export_keeps_both_files_of_a_shared_name(tmp_path):
    root = str(tmp_path / "m")
    with serve(images=6, seed=95, private_fraction=0.0) as sb:
        first, second = sb.archive.image_id(1), sb.archive.image_id(4)
        shared = sb.archive.image_detail(1)["name"]
        sb.mutate(renames={second: shared.lower()})  # differs only by case: one file on SMB
        _ok("sync", "--root", root, "--url", sb.url, "--quiet", "--blobs", "thumbnail")

        out = _ok("export", "files", str(tmp_path / "files"), "--root", root, "--blobs",
                  "thumbnail", "--link", "copy")
        assert "2 image(s) share a name with another" in out and "<name>_<id>" in out
        names = sorted(p.name for p in (tmp_path / "files").glob("*_thumbnail*"))
        assert len(names) == 6, names
        assert f"{shared}_{first}_thumbnail.jpg" in names
        assert f"{shared.lower()}_{second}_thumbnail.jpg" in names

        _ok("snapshot", "create", "--root", root, "s1", "--blobs", "thumbnail")
        for fmt, dest in (("tar", "s1.tar"), ("dir", "s1"), ("bagit", "bag")):
            out = _ok("snapshot", "export", "--root", root, "s1", str(tmp_path / dest),
                      "--format", fmt)
            assert "2 file(s) share a name with another object's" in out, out
        with tarfile.open(tmp_path / "s1.tar") as tar:
            members = [m.name for m in tar.getmembers() if m.isfile()]
        assert len(members) == len(set(members))
        thumbs = [m for m in members if m.endswith(".jpg")]
        assert len(thumbs) == 6 and f"s1/images/{shared}_{first}_thumbnail.jpg" in thumbs
        assert f"s1/images/{shared.lower()}_{second}_thumbnail.jpg" in thumbs
        folder = sorted(p.name for p in (tmp_path / "s1").rglob("*.jpg"))
        bag = sorted(p.name for p in (tmp_path / "bag").rglob("*.jpg"))
        assert len(folder) == len(bag) == 6 and folder == bag
        _ok("snapshot", "verify", "--root", root, "s1")
        assert "all good" in _ok("verify", "--root", root)
