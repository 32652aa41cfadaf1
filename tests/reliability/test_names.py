"""Ids, names and snapshot names are checked whole: ``"abc\\n"`` is not ``"abc"``.

``re.match`` with ``^...$`` accepts a trailing newline (``$`` matches before it), which
would put a newline into a file name, a shard, or an index row.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mirror.config import MirrorConfig, layout_for
from mirror.errors import MirrorError, UnsafeNameError
from mirror.query import QueryError, criterion
from mirror.snapshots.manifest import snapshot_dir
from mirror.sources.isic_v1.documents import checked_listing
from mirror.store import HEX_ID, SAFE_NAME, blob_relpath, safe_name, shard_of
from tests.reliability.helpers import indexed, run_mirror
from tests.reliability.misbehaving import misbehaving_server, send_body

IMAGE_ID = "5436e3abbae478396759f0cf"
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 64 + b"\xff\xd9"


@pytest.mark.parametrize("ending", ["\n", "\r\n", "\x00"])
def test_names_and_ids_with_a_trailing_control_character_are_refused(ending):
    with pytest.raises(UnsafeNameError):
        safe_name("ISIC_0000001" + ending)
    with pytest.raises(UnsafeNameError):
        blob_relpath("image", IMAGE_ID + ending, ext=".jpg")
    with pytest.raises(UnsafeNameError):
        blob_relpath("image", IMAGE_ID, name="ISIC_0000001" + ending, ext=".jpg")
    assert not HEX_ID.match(IMAGE_ID + ending) and not SAFE_NAME.match("a" + ending)
    assert blob_relpath("image", IMAGE_ID, name="ISIC_0000001", ext=".jpg") == (
        f"store/f/image_{IMAGE_ID}_ISIC_0000001.jpg")


def test_a_hex_id_with_a_newline_is_not_sharded_by_its_newline():
    assert shard_of(IMAGE_ID + "\n") in "0123456789abcdef"


def test_a_listing_entry_whose_id_ends_in_a_newline_is_reported_not_kept():
    good, bad = checked_listing([{"_id": IMAGE_ID}, {"_id": IMAGE_ID[:-1] + "0\n"}])
    assert [d["_id"] for d in good] == [IMAGE_ID]
    assert bad == [ascii(IMAGE_ID[:-1] + "0\n")]


def test_a_snapshot_name_ending_in_a_newline_is_refused(tmp_path):
    layout = layout_for(tmp_path, MirrorConfig())
    with pytest.raises(MirrorError, match="bad snapshot name"):
        snapshot_dir(layout, "release-1\n")
    assert snapshot_dir(layout, "release-1").name == "release-1"


def test_a_query_field_ending_in_a_newline_is_refused():
    with pytest.raises(QueryError, match="bad field"):
        criterion("meta.clinical.diagnosis\n", "==", "nevus")
    assert criterion("meta.clinical.diagnosis", "==", "nevus").field == (
        "meta.clinical.diagnosis")


def test_reindex_skips_a_file_whose_name_ends_in_a_newline(tmp_path):
    root = tmp_path / "m"
    with misbehaving_server(send_body(b"[]")) as url:  # an empty archive: a quick sync
        assert run_mirror("sync", "--root", str(root), "--url", url, "--quiet").returncode == 0
    shard = Path(root, "isic", "store", "f")
    shard.mkdir(parents=True, exist_ok=True)
    (shard / f"image_{IMAGE_ID}.jpg").write_bytes(JPEG)
    (shard / f"image_{IMAGE_ID}.jpg\n").write_bytes(JPEG)
    (shard / f"thumb_{IMAGE_ID}.jpg\n").write_bytes(JPEG)
    result = run_mirror("reindex", "--root", str(root), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["blobs"] == 1
    assert list(indexed(root)) == [f"store/f/image_{IMAGE_ID}.jpg"]
