"""The object store: sharding, naming, atomic publishing, integrity."""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from mirror.errors import DiskFullError, IntegrityError, SymlinkError, UnsafeNameError
from mirror.layout import Layout
from mirror.store import (
    ObjectStore,
    blob_relpath,
    canonical_json,
    doc_relpath,
    extension_for,
    safe_name,
    shard_of,
)

JPEG = b"\xff\xd8\xff\xe0" + b"jpeg body" * 10
PNG = b"\x89PNG\r\n\x1a\n" + b"png body" * 10


@pytest.fixture
def store(tmp_path) -> ObjectStore:
    return ObjectStore(Layout(tmp_path / "root"))


def object_ids(n: int, seed: int = 0) -> list[str]:
    """ObjectId-like ids: 4-byte time 2014-2020, 5 random bytes, 3-byte counter."""
    rng = random.Random(seed)
    machine = rng.randbytes(5).hex()
    counter = rng.randrange(1 << 24)
    ids = []
    for n_ in range(n):
        ts = 1388534400 + n_ * (7 * 365 * 86400 // n)
        ids.append(f"{ts:08x}{machine}{(counter + n_) & 0xFFFFFF:06x}")
    return ids


# -- sharding and naming -----------------------------------------------------------------

def test_shard_is_last_hex_digit():
    assert shard_of("5436e3abbae478396759f0cf") == "f"
    assert shard_of("5436e3abbae478396759f0c0") == "0"


@given(st.text(min_size=1, max_size=80))
def test_any_id_shards_stably_into_one_of_16(object_id):
    assert shard_of(object_id) in "0123456789abcdef"
    assert shard_of(object_id) == shard_of(object_id)


def test_shards_are_balanced_on_objectid_like_ids():
    ids = object_ids(16_000)
    counts = Counter(shard_of(i) for i in ids)
    mean = len(ids) / 16
    assert len(counts) == 16
    assert all(abs(c - mean) <= 0.05 * mean for c in counts.values()), counts
    leading = Counter(i[0] for i in ids)  # a leading-digit rule piles everything up
    assert max(leading.values()) > 0.5 * len(ids)


@given(st.text(max_size=300))
@settings(max_examples=300)
def test_hostile_names_are_refused_or_safe(name):
    try:
        safe = safe_name(name)
    except UnsafeNameError:
        return
    assert safe == name and "/" not in safe and "\\" not in safe and "\x00" not in safe
    assert safe not in (".", "..") and len(safe) <= 128
    relpath = blob_relpath("image", "5436e3abbae478396759f0cf", name=safe, ext=".jpg")
    assert relpath.count("/") == 2 and relpath.startswith("store/f/image_")


@pytest.mark.parametrize("name", ["../../etc/passwd", "/abs", "a/b", "..", ".", "",
                                  "nul\x00byte", "tab\tname", "x" * 129, "ünïcode", "a\\b"])
def test_known_hostile_names_are_refused(name):
    with pytest.raises(UnsafeNameError):
        safe_name(name)


@pytest.mark.parametrize("relpath", ["store/../x", "store/f/../../x", "/etc/passwd",
                                     "store/g/x", "store/f/a/b", "other/f/x", "store/f/\x00"])
def test_paths_outside_the_store_are_refused(store, relpath):
    with pytest.raises(UnsafeNameError):
        store.put_bytes(relpath, b"x")


def test_file_names_follow_the_isicarchive_conventions():
    oid = "5436e3abbae478396759f0cf"
    assert blob_relpath("image", oid, name="ISIC_0000000", ext=".jpg") == \
        f"store/f/image_{oid}_ISIC_0000000.jpg"
    assert blob_relpath("spimg", oid, ext=".png") == f"store/f/spimg_{oid}.png"
    assert blob_relpath("spidx", oid, ext=".npz") == f"store/f/spidx_{oid}.npz"
    assert blob_relpath("thumb", oid, ext=".jpg") == f"store/f/thumb_{oid}.jpg"
    assert doc_relpath("image", oid, "ab" * 32) == f"store/f/image_{oid}.{'ab' * 8}.json.zst"
    with pytest.raises(UnsafeNameError):
        blob_relpath("image", "../" + oid, ext=".jpg")


def test_extension_comes_from_magic_bytes_and_must_agree_with_content_type():
    assert extension_for("image/jpeg", JPEG) == ".jpg"
    assert extension_for("image/png", PNG) == ".png"
    assert extension_for("application/octet-stream", PNG) == ".png"
    with pytest.raises(IntegrityError):
        extension_for("image/jpeg", PNG)
    with pytest.raises(IntegrityError, match="bytes are not .image/jpeg"):
        extension_for("image/jpeg", b"<!DOCTYPE html><html>error</html>")


# -- writing and reading -----------------------------------------------------------------

def test_put_stream_publishes_read_only_file_with_hash(store):
    relpath = blob_relpath("image", "5436e3abbae478396759f0cf", name="ISIC_0000000", ext=".jpg")
    stored = store.put_stream(relpath, [JPEG[:5], JPEG[5:]], expected_size=len(JPEG),
                              magic=b"\xff\xd8\xff")
    path = store.path(relpath)
    assert path.read_bytes() == JPEG
    assert stored.sha256 == hashlib.sha256(JPEG).hexdigest() and stored.size == len(JPEG)
    assert oct(path.stat().st_mode & 0o777) == "0o444"
    assert store.temp_files() == []


def test_short_body_and_html_instead_of_image_leave_nothing(store):
    relpath = blob_relpath("image", "5436e3abbae478396759f0cf", name="ISIC_0000000", ext=".jpg")
    with pytest.raises(IntegrityError, match="expected 1000"):
        store.put_stream(relpath, [JPEG], expected_size=1000, magic=b"\xff\xd8\xff")
    with pytest.raises(IntegrityError, match="HTML"):
        store.put_stream(relpath, [b"<html>502 Bad Gateway</html>"], magic=b"\xff\xd8\xff")
    assert not store.exists(relpath) and store.temp_files() == []


def test_bodies_beyond_the_limit_or_the_declared_length_stop_at_once(store):
    relpath = blob_relpath("image", "5436e3abbae478396759f0cf", ext=".jpg")
    read = []

    def endless():
        yield JPEG
        while True:
            read.append(1)
            yield bytes(1024)

    with pytest.raises(IntegrityError, match="larger than 4096"):
        store.put_stream(relpath, endless(), magic=b"\xff\xd8\xff", max_size=4096)
    assert len(read) <= 4  # refused as it arrived, not after the whole body
    with pytest.raises(IntegrityError, match="larger than 10"):
        store.put_stream(relpath, [JPEG], expected_size=10, magic=b"\xff\xd8\xff")
    assert not store.exists(relpath) and store.temp_files() == []


def test_whole_refuses_a_jpeg_or_png_cut_short_at_the_declared_length(store):
    jpeg, png = JPEG + b"\xff\xd9", PNG + b"\x00\x00\x00\x00IEND\xaeB`\x82"
    for name, data in (("a.jpg", jpeg), ("b.png", png)):
        relpath = blob_relpath("image", "5436e3abbae478396759f0cf", name=name[0], ext=name[1:])
        with pytest.raises(IntegrityError, match="incomplete"):
            store.put_stream(relpath, [data[:-5]], expected_size=len(data) - 5, whole=True)
        assert not store.exists(relpath)
        assert store.put_stream(relpath, [data], expected_size=len(data), whole=True).size
    assert store.temp_files() == []


def test_validate_refuses_before_publishing(store):
    relpath = blob_relpath("spimg", "5436e3abbae478396759f0cf", ext=".png")

    def refuse(path):
        assert path.read_bytes() == PNG  # the complete temp file
        raise ValueError("wrong size")

    with pytest.raises(ValueError, match="wrong size"):
        store.put_bytes(relpath, PNG, validate=refuse)
    assert not store.exists(relpath) and store.temp_files() == []


def test_same_bytes_twice_is_fine_different_bytes_is_a_collision(store):
    relpath = blob_relpath("spimg", "5436e3abbae478396759f0cf", ext=".png")
    store.put_bytes(relpath, PNG)
    store.put_bytes(relpath, PNG)
    with pytest.raises(IntegrityError, match="different content"):
        store.put_bytes(relpath, PNG + b"x")
    assert store.read_bytes(relpath) == PNG


def test_json_is_canonical_zstd_and_hashed_uncompressed(store):
    doc = {"b": [1, 2], "a": "ünï", "_id": "5436e3abbae478396759f0cf"}
    stored = store.put_json("image", doc["_id"], doc)
    raw = store.read_bytes(stored.relpath)
    payload = zstandard.ZstdDecompressor().decompress(raw)
    assert payload == canonical_json(doc) == b'{"_id":"5436e3abbae478396759f0cf","a":"\xc3\xbc' \
        b'n\xc3\xaf","b":[1,2]}'
    assert stored.sha256 == hashlib.sha256(payload).hexdigest()
    assert store.hash(stored.relpath) == (stored.sha256, len(payload))
    assert store.read_json(stored.relpath) == doc
    changed = store.put_json("image", doc["_id"], {**doc, "a": "new"})
    assert changed.relpath != stored.relpath and store.exists(stored.relpath)  # versions kept


def _doc_at(store: ObjectStore, doc: dict) -> Path:
    """Where ``doc`` would be stored (the shard folder made), without storing it."""
    relpath = doc_relpath("series", doc["_id"], hashlib.sha256(canonical_json(doc)).hexdigest())
    path = store.base / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


@pytest.mark.parametrize("left", [b"", b"(\xb5/\xfd", None], ids=["empty", "cut short", "other"])
def test_a_document_file_left_wrong_at_its_name_is_replaced_not_trusted(store, left):
    """Documents are created at their final name (no temp): a writer killed mid-write
    leaves a partial file there, and one may be planted. ``put_json`` re-hashes whatever
    it finds and replaces it atomically; it never counts a file it did not check."""
    doc = {"_id": "1.2.3", "n": 1, "text": "x" * 300}
    path = _doc_at(store, doc)
    whole = zstandard.ZstdCompressor(write_checksum=True).compress(canonical_json(doc))
    path.write_bytes(whole[:len(whole) // 2] if left is None else left)
    stored = store.put_json("series", "1.2.3", doc)
    assert store.base / stored.relpath == path
    assert store.read_json(stored.relpath) == doc
    assert store.hash(stored.relpath) == (stored.sha256, len(canonical_json(doc)))
    assert store.temp_files() == [] and oct(path.stat().st_mode & 0o777) == "0o444"


def test_an_equal_document_already_there_is_kept_as_is(store):
    doc = {"_id": "1.2.3", "n": 1}
    stored = store.put_json("series", "1.2.3", doc)
    inode = (store.base / stored.relpath).stat().st_ino
    assert store.put_json("series", "1.2.3", doc) == stored
    assert (store.base / stored.relpath).stat().st_ino == inode  # not rewritten


def test_a_link_at_a_documents_name_is_refused_and_not_followed(store, tmp_path):
    doc = {"_id": "1.2.3", "n": 1}
    path = _doc_at(store, doc)
    outside = tmp_path / "outside.json.zst"
    outside.write_bytes(b"not ours")
    path.symlink_to(outside)
    with pytest.raises(SymlinkError):
        store.put_json("series", "1.2.3", doc)
    assert outside.read_bytes() == b"not ours" and path.is_symlink()


def test_disk_full_while_writing_a_document_leaves_nothing_at_its_name(store, monkeypatch):
    import errno

    def full(self, fd, final, data):
        os.write(fd, data[:5])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ObjectStore, "_write_final", full)
    doc = {"_id": "1.2.3", "n": 1}
    with pytest.raises(DiskFullError, match="disk full"):
        store.put_json("series", "1.2.3", doc)
    assert list(store.iter_files()) == [] and store.temp_files() == []


def test_damaged_document_fails_its_checksum(store):
    stored = store.put_json("dataset", "5436e3abbae478396759f0cf", {"_id": "x", "n": 1})
    path = store.path(stored.relpath)
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[-6] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="damaged"):
        store.read_json(stored.relpath)
    with pytest.raises(IntegrityError):
        store.hash(stored.relpath)


def test_publish_order_fsync_then_link_then_unlink_then_dir_fsync(store, monkeypatch):
    calls: list[tuple[str, str]] = []
    real_fsync, real_link, real_unlink = os.fsync, os.link, Path.unlink

    def fsync(fd):
        calls.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def link(src, dst, *a, **kw):
        calls.append(("link", str(dst)))
        return real_link(src, dst, *a, **kw)

    def unlink(self, *a, **kw):
        calls.append(("unlink", str(self)))
        return real_unlink(self, *a, **kw)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "link", link)
    monkeypatch.setattr(Path, "unlink", unlink)
    relpath = blob_relpath("mask", "5436e3abbae478396759f0c3", ext=".png")
    store.put_bytes(relpath, PNG)
    store.flush()
    final = str(store.path(relpath))
    shard = str(store.path(relpath).parent)
    kinds = [(k, "tmp" if ".tmp-" in p else "final" if p == final else
              "shard" if p == shard else "other") for k, p in calls]
    order = [k for k in kinds if k[1] != "other"]
    assert order == [("fsync", "tmp"), ("link", "final"), ("unlink", "tmp"), ("fsync", "shard")]


def test_readers_never_see_partial_files(store, tmp_path):
    """Four readers poll while a writer publishes; every file they see is whole."""
    import threading

    payloads = {f"5436e3abbae478396759f{n:03x}": os.urandom(200_000) for n in range(40)}
    seen_bad = []
    done = threading.Event()

    def reader():
        while not done.is_set():
            for oid, data in payloads.items():
                path = store.path(blob_relpath("spidx", oid, ext=".npz"))
                try:
                    got = path.read_bytes()
                except FileNotFoundError:
                    continue
                if got != data:
                    seen_bad.append(oid)

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for t in threads:
        t.start()
    for oid, data in payloads.items():
        store.put_stream(blob_relpath("spidx", oid, ext=".npz"),
                         (data[i:i + 4096] for i in range(0, len(data), 4096)))
    done.set()
    for t in threads:
        t.join()
    assert seen_bad == []


def test_killed_writer_leaves_no_final_file_and_temp_is_cleaned(tmp_path):
    root = tmp_path / "root"
    relpath = blob_relpath("image", "5436e3abbae478396759f0cf", name="ISIC_0000000", ext=".jpg")
    script = textwrap.dedent(f"""
        import time, sys
        from pathlib import Path
        from mirror.layout import Layout
        from mirror.store import ObjectStore
        def slow():
            yield b"\\xff\\xd8\\xff" + b"x" * 1000
            print("streaming", flush=True)
            while True:
                time.sleep(0.01)
                yield b"y" * 1000
        ObjectStore(Layout(Path({str(root)!r}))).put_stream({relpath!r}, slow())
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "streaming"
    time.sleep(0.2)
    child.kill()
    child.wait()
    store = ObjectStore(Layout(root))
    assert not store.exists(relpath)
    assert list(store.iter_files()) == []
    leftovers = store.temp_files()
    assert len(leftovers) == 1
    live = leftovers[0].parent / ".tmp-0123456789abcdef0123456789abcdef.1"  # pid 1 runs
    live.write_bytes(b"a live writer's")
    # the killed writer's temp goes at once (its pid is gone); a live pid's waits while young
    assert store.clean_temp(max_age=3600) == leftovers and store.temp_files() == [live]
    assert store.clean_temp(max_age=0) == [live] and store.temp_files() == []
