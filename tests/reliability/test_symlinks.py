"""Nothing outside the root after resolving links (issue #16): a symbolic link where the
store expects a shard folder or a file is refused with one line, never followed.

A shard folder linked to a folder elsewhere would have ``gc`` delete, ``verify --repair``
remove, ``export`` hand out and ``sync`` write files outside the mirror root.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from pathlib import Path

import pytest

from mirror.sources.isic_v1.sandbox import serve
from tests.reliability.helpers import run_mirror
from tests.reliability.misbehaving import misbehaving_server, send_body

pytestmark = pytest.mark.timeout(120)
STRAY = "image_5436e3abbae478396759f0c3.jpg"  # a stray file gc would remove after the grace
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 64 + b"\xff\xd9"


def _snapshot(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.iterdir())}


def _refused(result, link: Path) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: refusing to follow the symbolic "
                                                   f"link {link}"), result.stderr[-2000:]


def _empty_mirror(root: Path) -> Path:
    with misbehaving_server(send_body(b"[]")) as url:  # an empty archive: a quick sync
        result = run_mirror("sync", "--root", str(root), "--url", url, "--quiet")
    assert result.returncode == 0, result.stderr
    store = root / "isic" / "store"
    store.mkdir(parents=True, exist_ok=True)
    return store


def _plant_outside(tmp_path: Path) -> Path:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / STRAY).write_bytes(JPEG)
    day_ago = time.time() - 86400
    os.utime(outside / STRAY, (day_ago, day_ago))
    return outside


def test_gc_does_not_delete_through_a_linked_shard_folder(tmp_path):
    store = _empty_mirror(tmp_path / "m")
    outside = _plant_outside(tmp_path)
    shutil.rmtree(store / "3", ignore_errors=True)
    (store / "3").symlink_to(outside, target_is_directory=True)
    for args in (("gc", "--dry-run"), ("gc",), ("verify", "--repair")):
        _refused(run_mirror(*args, "--root", str(tmp_path / "m")), store / "3")
    assert (outside / STRAY).read_bytes() == JPEG


def test_gc_does_not_follow_a_linked_file(tmp_path):
    store = _empty_mirror(tmp_path / "m")
    outside = _plant_outside(tmp_path)
    (store / "3").mkdir(exist_ok=True)
    (store / "3" / STRAY).symlink_to(outside / STRAY)
    os.utime(store / "3" / STRAY, (0, 0), follow_symlinks=False)
    _refused(run_mirror("gc", "--root", str(tmp_path / "m")), store / "3" / STRAY)
    assert (outside / STRAY).read_bytes() == JPEG
    assert (store / "3" / STRAY).is_symlink()


def test_sync_does_not_write_through_linked_shard_folders(tmp_path):
    root = tmp_path / "m"
    store = _empty_mirror(root)
    outside = _plant_outside(tmp_path)
    for shard in "0123456789abcdef":
        shutil.rmtree(store / shard, ignore_errors=True)
        (store / shard).symlink_to(outside, target_is_directory=True)
    with serve(images=6, seed=5, private_fraction=0.0) as sb:
        result = run_mirror("sync", "--root", str(root), "--url", sb.url, "--quiet",
                            "--rebase-url")  # the same root, now at the sandbox's address
    _refused(result, store / "0")  # refused before any request: the first shard looked at
    assert _snapshot(outside) == {STRAY: hashlib.sha256(JPEG).hexdigest()}


def test_export_and_repair_refuse_a_shard_folder_moved_out_and_linked_back(tmp_path):
    """A whole mirror, then one shard folder moved elsewhere and linked back in its place:
    the same bytes, but every command that would use them refuses instead of following."""
    root = tmp_path / "m"
    with serve(images=12, seed=5, private_fraction=0.0) as sb:
        result = run_mirror("sync", "--root", str(root), "--url", sb.url, "--quiet",
                            "--blobs", "full")
    assert result.returncode == 0, result.stderr
    store = root / "isic" / "store"
    shard = max((p for p in store.iterdir()), key=lambda p: len(os.listdir(p)))
    moved = tmp_path / "moved"
    shard.rename(moved)
    shard.symlink_to(moved, target_is_directory=True)
    before = _snapshot(moved)
    for args in (("export", "files", str(tmp_path / "out")), ("verify", "--repair"), ("gc",),
                 ("reindex",)):
        _refused(run_mirror(*args, "--root", str(root)), shard)
    assert _snapshot(moved) == before
    # Files of the real shards may have been exported before the linked one was reached;
    # none of the linked one's were.
    linked = {os.stat(p).st_ino for p in moved.iterdir()}
    exported = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert not {os.stat(p).st_ino for p in exported} & linked
