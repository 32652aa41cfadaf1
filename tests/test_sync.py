"""The sync engine against the sandbox archive: full, incremental, resumable, honest."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import zstandard
from PIL import Image as PILImage
from sqlalchemy import select

import mirror.sync as sync_module
from mirror.config import layout_for, load_config
from mirror.errors import MirrorModeError
from mirror.index import Blob, SyncItem
from mirror.index.database import open_reader
from mirror.sources.isic_v1.models import Image, Segmentation
from mirror.sources.isic_v1.sandbox import SANDBOX_LOGIN, SANDBOX_PASSWORD, serve
from mirror.sources.isic_v1.superpixels import decode_png, load_npz
from mirror.sync import SyncOptions, sync
from mirror.verify import verify_mirror

ALL_BLOB_ROLES = {"image", "thumbnail", "superpixels", "spidx", "mask"}


def _rows(root, model):
    layout = layout_for(root, load_config(root))
    engine = open_reader(layout)
    try:
        with engine.connect() as conn:
            return conn.execute(select(model)).all()
    finally:
        engine.dispose()


def _visible_images(url, token=None):
    import requests

    headers = {"Girder-Token": token} if token else {}
    return requests.get(f"{url}/image", params={"limit": 0}, headers=headers, timeout=30).json()


@pytest.fixture(scope="module")
def synced(tmp_path_factory):
    """One sandbox and one full mirror of it, shared by the read-only checks below."""
    root = tmp_path_factory.mktemp("m") / "mirror"
    with serve(images=24, seed=7, private_fraction=0.0) as sb:
        summary = sync(root, sb.url, SyncOptions(workers=4))
        yield root, sb, summary


def test_full_sync_stores_every_document_and_file(synced):
    root, sb, summary = synced
    assert summary.ok, summary.failures
    listed = _visible_images(sb.url)
    images = _rows(root, Image)
    assert sorted(r.id for r in images) == sorted(i["_id"] for i in listed)
    blobs = _rows(root, Blob)
    roles = {r.role for r in blobs}
    assert ALL_BLOB_ROLES <= roles
    store = layout_for(root, load_config(root)).base
    for blob in blobs:
        data = (store / blob.path).read_bytes()
        if blob.path.endswith(".zst"):  # documents hash their uncompressed payload
            data = zstandard.ZstdDecompressor().decompress(data)
        assert hashlib.sha256(data).hexdigest() == blob.sha256
        assert len(data) == blob.size
        assert blob.path.split("/")[1] == blob.object_id[-1]  # shard = last hex digit


def test_full_sync_files_match_the_archive_bytes(synced):
    root, sb, _ = synced
    import requests

    store = layout_for(root, load_config(root)).base
    for blob in _rows(root, Blob):
        if blob.role == "image":
            served = requests.get(f"{sb.url}/image/{blob.object_id}/download", timeout=30).content
            assert (store / blob.path).read_bytes() == served


def test_spidx_npz_equals_decoded_png(synced):
    root, _, _ = synced
    store = layout_for(root, load_config(root)).base
    blobs = {(b.object_id, b.role): b for b in _rows(root, Blob)}
    images = {r.id: r for r in _rows(root, Image)}
    for (object_id, role), blob in blobs.items():
        if role != "spidx":
            continue
        png = blobs[(object_id, "superpixels")]
        assert blob.source_sha256 == png.sha256
        idx = load_npz(store / blob.path)
        assert np.array_equal(idx, decode_png(store / png.path))
        assert idx.shape == (images[object_id].pixels_y, images[object_id].pixels_x)


def test_masks_are_single_channel_pngs_of_image_size(synced):
    root, _, _ = synced
    store = layout_for(root, load_config(root)).base
    segs = {s.id: s for s in _rows(root, Segmentation)}
    images = {r.id: r for r in _rows(root, Image)}
    masks = [b for b in _rows(root, Blob) if b.role == "mask"]
    assert masks
    for blob in masks:
        with PILImage.open(io.BytesIO((store / blob.path).read_bytes())) as img:
            image = images[segs[blob.object_id].image_id]
            assert img.mode == "L" and img.size == (image.pixels_x, image.pixels_y)


def test_verify_is_clean_after_sync(synced):
    root, _, _ = synced
    report = verify_mirror(root)
    assert report.ok, report.problems
    assert report.checked > 24


def test_noop_resync_costs_what_docs_sync_md_says(synced):
    """The archive changes documents without touching ``updated`` (issue 18), so a no-op
    re-sync lists every image detail (one page here), datasets, studies and each public
    study's annotations, and re-checks the segmentations of 1/7 of the images."""
    root, sb, _ = synced
    sb.reset_stats()
    again = sync(root, options=SyncOptions(workers=4))
    stats = sb.stats()
    assert again.ok
    assert stats["GET /image"] == 1 and stats["GET /dataset"] == stats["GET /study"] == 1
    assert stats["GET /annotation"] == 2
    assert stats["GET /segmentation"] == 4  # ceil(24 / 7)
    assert stats["GET /segmentation/{id}"] <= 3 * 4  # each checked image's documents
    assert again.requests == stats["total"] == 5 + 4 + stats["GET /segmentation/{id}"]
    assert again.bytes_downloaded == 0
    assert again.as_dict()["objects"]["image"] == {"unchanged": 24}


def test_incremental_sync_after_add_update_remove(tmp_path):
    root = tmp_path / "m"
    with serve(images=12, seed=3, private_fraction=0.0) as sb:
        assert sync(root, sb.url, SyncOptions(workers=4)).ok
        changes = sb.mutate(add=2, update=3, remove=1)
        sb.reset_stats()
        summary = sync(root, options=SyncOptions(workers=4))
        assert summary.ok, summary.failures
        counts = summary.as_dict()["objects"]["image"]
        assert counts.get("new") == 2 and counts.get("changed") == 3
        assert counts.get("removed") == 1
        downloads = sum(n for k, n in sb.stats().items() if k.endswith("/download"))
        assert downloads == 2  # only the new images' files move
    images = {r.id: r for r in _rows(root, Image)}
    gone = changes["removed"][0]
    assert images[gone].removed is True
    store = layout_for(root, load_config(root)).base
    kept = [b for b in _rows(root, Blob) if b.object_id == gone]
    assert kept and all((store / b.path).exists() for b in kept)  # snapshots still resolve
    for image_id in changes["updated"]:
        assert images[image_id].removed is False
    _selections_reflect(root, added=changes["added"], gone=gone)


def _selections_reflect(root, added, gone):
    """The published projection was rebuilt: selections see new images, not the removed
    one, and agree with the index."""
    from mirror import Mirror

    with Mirror(root) as m:
        every = m.select_images([["_id", "is not", None]]).ids
        assert set(added) <= set(every) and gone not in every
        assert every == sorted(r.id for r in _rows(root, Image) if not r.removed)
        benign = m.select_images([["meta.clinical.benign_malignant", "==", "benign"]]).ids
        assert benign == sorted(r.id for r in _rows(root, Image) if not r.removed
                                and r.benign_malignant == "benign")


def test_sync_through_faults_completes_verified(tmp_path):
    root = tmp_path / "m"
    faults = "500=0.05,502=0.01,503=0.01,429=0.02,reset=0.02,truncate=0.02,retry_after=0"
    with serve(images=20, seed=5, private_fraction=0.0, faults=faults) as sb:
        summary = sync(root, sb.url, SyncOptions(workers=4))
        assert summary.ok, summary.failures
        assert summary.retries > 0
        listed = _visible_images_with_retry(sb.url)
    assert len(_rows(root, Image)) == len(listed)
    assert verify_mirror(root).ok


def _visible_images_with_retry(url):
    for _ in range(20):
        try:
            data = _visible_images(url)
            if isinstance(data, list):
                return data
        except Exception:  # noqa: BLE001 - the faulty sandbox may reset us too
            pass
    raise AssertionError("could not list images")


def test_authenticated_sync_sees_private_images_and_modes_do_not_mix(tmp_path):
    with serve(images=30, seed=11, private_fraction=0.4) as sb:
        anon = tmp_path / "anon"
        assert sync(anon, sb.url, SyncOptions(blobs=frozenset())).ok
        auth = tmp_path / "auth"
        summary = sync(auth, sb.url, SyncOptions(blobs=frozenset()),
                       username=SANDBOX_LOGIN, password=SANDBOX_PASSWORD)
        assert summary.ok
        with pytest.raises(MirrorModeError, match="--allow-mixed"):
            sync(anon, sb.url, SyncOptions(blobs=frozenset()),
                 username=SANDBOX_LOGIN, password=SANDBOX_PASSWORD)
    n_anon, n_auth = len(_rows(anon, Image)), len(_rows(auth, Image))
    assert 0 < n_anon < n_auth == 30
    assert load_config(auth).authenticated and not load_config(anon).authenticated


def test_password_and_token_never_reach_disk_or_output(tmp_path):
    import requests

    root = tmp_path / "m"
    with serve(images=5, seed=2, private_fraction=0.2) as sb:
        token = requests.get(f"{sb.url}/user/authentication",
                             auth=(SANDBOX_LOGIN, SANDBOX_PASSWORD), timeout=10
                             ).json()["authToken"]["token"]
        env = dict(os.environ, MIRROR_PASSWORD=SANDBOX_PASSWORD)
        done = subprocess.run(
            [sys.executable, "-m", "mirror", "-vv", "sync", "--root", str(root), "--url", sb.url,
             "--username", SANDBOX_LOGIN, "--json", "--blobs", "thumbnail"],
            env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    output = done.stdout + done.stderr
    assert SANDBOX_PASSWORD not in output and token[:16] not in output
    state = os.environ["MIRROR_STATE_DIR"]
    for folder in (root, state):
        for dirpath, _, files in os.walk(folder):
            for name in files:
                data = open(os.path.join(dirpath, name), "rb").read()
                assert SANDBOX_PASSWORD.encode() not in data


def test_failures_are_reported_with_nonzero_exit_then_retried(tmp_path):
    root = tmp_path / "m"
    with serve(images=10, seed=4, private_fraction=0.0) as clean:
        with serve(images=10, seed=4, private_fraction=0.0,
                   faults="500=0.5,match=/download") as flaky:
            from mirror.sources import http

            original = http.HttpClient.__init__

            def one_try(self, *a, **kw):
                original(self, *a, **kw)
                self.attempts = 1

            http.HttpClient.__init__ = one_try
            try:
                first = sync(root, flaky.url, SyncOptions(workers=2))
            finally:
                http.HttpClient.__init__ = original
        assert not first.ok
        assert {f.role for f in first.failures} == {"image"}
        pending = _work_items(root)
        assert {(f.object_id, "failed") for f in first.failures} == set(pending)
        second = sync(root, clean.url, SyncOptions(workers=2, rebase_url=True))
        assert second.ok, second.failures
    assert verify_mirror(root).ok


def _work_items(root):
    from mirror.index.database import IndexWriter

    layout = layout_for(root, load_config(root))
    writer = IndexWriter(layout)
    try:
        with writer.session() as s:
            return s.execute(select(SyncItem.object_id, SyncItem.state)).all()
    finally:
        writer.close()


def test_resume_after_kill_does_not_download_again(tmp_path):
    root = tmp_path / "m"
    with serve(images=40, seed=9, private_fraction=0.0, faults="slow=0.3") as sb:
        cmd = [sys.executable, "-m", "mirror", "sync", "--root", str(root), "--url", sb.url,
               "--quiet", "--workers", "2", "--blobs", "full"]
        child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            got = sum(n for k, n in sb.stats().items() if k.endswith("/download"))
            if got >= 10:
                break
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
        child.wait()
        before = sum(n for k, n in sb.stats().items() if k.endswith("/download"))
        assert 10 <= before < 40
        summary = sync(root, options=SyncOptions(workers=2, blobs=frozenset({"full"})))
        assert summary.ok, summary.failures
        after = sum(n for k, n in sb.stats().items() if k.endswith("/download"))
    # Every file published before the kill is adopted, not fetched again; only the
    # downloads in flight at the moment of the kill (at most one per worker) repeat.
    assert after - before <= 40 - before + 2
    assert verify_mirror(root).ok
    assert len([b for b in _rows(root, Blob) if b.role == "image"]) == 40


def test_dry_run_plans_without_writing_files(tmp_path):
    root = tmp_path / "m"
    with serve(images=6, seed=1, private_fraction=0.0) as sb:
        summary = sync(root, sb.url, SyncOptions(dry_run=True))
        stats = sb.stats()
    assert summary.plan["files"] >= 6 * 3
    assert not any(k.endswith("/download") for k in stats)


def test_cli_json_summary_and_exit_code(tmp_path):
    root = tmp_path / "m"
    with serve(images=4, seed=1, private_fraction=0.0) as sb:
        done = subprocess.run([sys.executable, "-m", "mirror", "sync", "--root", str(root),
                               "--url", sb.url, "--json"], capture_output=True, text=True,
                              timeout=120)
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["ok"] is True and data["failures"] == []
    assert data["objects"]["image"]["new"] == 4
    assert data["requests"] > 0


def test_files_are_durable_before_the_index_rows_that_name_them(tmp_path, monkeypatch):
    """Recorder: a row naming a file is committed only after a flush that followed its link."""
    import itertools
    import threading

    from sqlalchemy.orm import Session

    import mirror.ingest
    from mirror.store import ObjectStore

    clock = itertools.count()
    linked: dict[str, int] = {}
    flushes: list[int] = [-1]
    pending: list[str] = []  # paths named by rows written since the last commit
    checked: list[str] = []
    lock = threading.Lock()
    real_link, real_flush, real_commit = os.link, ObjectStore.flush, Session.commit
    real_upsert = mirror.ingest.upsert

    def link(src, dst, *a, **kw):
        result = real_link(src, dst, *a, **kw)
        with lock:
            linked[str(dst)] = next(clock)
        return result

    def flush(self):
        with lock:
            stamp = next(clock)
        result = real_flush(self)
        flushes.append(stamp)
        return result

    def upsert(session, model, rows, *args):
        pending.extend(r["path"] for r in rows if "path" in r)
        return real_upsert(session, model, rows, *args)

    def commit(self):
        for path in pending:
            full = str(tmp_path / "m" / "isic" / path)
            if full in linked:  # written by this run (not an unchanged document)
                assert linked[full] < flushes[-1], f"{path} committed before its fsync"
                checked.append(path)
        pending.clear()
        return real_commit(self)

    monkeypatch.setattr(os, "link", link)
    monkeypatch.setattr(ObjectStore, "flush", flush)
    monkeypatch.setattr(Session, "commit", commit)
    monkeypatch.setattr(mirror.ingest, "upsert", upsert)
    with serve(images=6, seed=13, private_fraction=0.0) as sb:
        assert sync(tmp_path / "m", sb.url, SyncOptions(workers=3)).ok
    assert len(checked) > 20


def test_changed_study_refetches_annotations_but_not_unchanged_markups(tmp_path):
    root = tmp_path / "m"
    with serve(images=10, seed=6, private_fraction=0.0) as sb:
        assert sync(root, sb.url, SyncOptions(blobs=frozenset())).ok
        study_image = sb.archive.image_id(sb.archive.study_images(0)[0])
        sb.mutate(update_ids=[study_image])  # the study's image list shows the new `updated`
        sb.reset_stats()
        summary = sync(root, options=SyncOptions(blobs=frozenset()))
        stats = sb.stats()
    assert summary.ok
    assert summary.as_dict()["objects"]["study"].get("changed", 0) >= 1
    assert stats.get("GET /annotation", 0) >= 1
    assert not any("markup" in key for key in stats), stats


def test_a_mirror_deleted_and_made_anew_at_the_same_path_starts_clean(tmp_path):
    """The writer's local database of the old mirror must not leak into the new one."""
    import shutil

    root = tmp_path / "m"
    with serve(images=5, seed=14, private_fraction=0.0) as sb:
        assert sync(root, sb.url, SyncOptions(workers=2)).ok
        shutil.rmtree(root)
        again = sync(root, sb.url, SyncOptions(workers=2))
    assert again.ok, again.failures
    assert again.as_dict()["objects"]["image"] == {"new": 5}
    assert verify_mirror(root).ok


def test_a_bad_file_left_at_a_final_path_is_fetched_again_not_adopted(tmp_path):
    # What a power cut between publishing and the batch flush could leave behind.
    from mirror.store import blob_relpath

    root = tmp_path / "m"
    with serve(images=3, seed=21, private_fraction=0.0) as sb:
        assert sync(root, sb.url, SyncOptions(blobs=frozenset({"thumbnail"}))).ok
        layout = layout_for(root, load_config(root))
        with open_reader(layout).connect() as conn:
            first_id, name = conn.execute(select(Image.id, Image.name).order_by(Image.id)).first()
        bad = layout.base / blob_relpath("image", first_id, name=name, ext=".jpg")
        bad.write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 5000)  # a JPEG start, no end
        summary = sync(root, options=SyncOptions(blobs=frozenset({"full"})))
    assert summary.ok and summary.blobs[("image", "fetched")] == 3
    assert bad.read_bytes().rstrip(b"\x00").endswith(b"\xff\xd9")
    assert verify_mirror(root).ok


def test_a_sync_gives_the_callers_garbage_collector_back(synced, monkeypatch):
    """The run freezes the objects its imports made and collects the young generation less
    often (mirror.sync._long_lived_gc); a program calling sync() keeps its own settings,
    and objects it froze itself stay frozen."""
    import gc

    root, _, _ = synced
    original = gc.get_threshold()
    seen = []
    real_run = sync_module._run

    def spying_run(*args, **kwargs):
        seen.append((gc.get_threshold(), gc.get_freeze_count()))
        return real_run(*args, **kwargs)

    monkeypatch.setattr(sync_module, "_run", spying_run)
    gc.set_threshold(900, 11, 12)
    try:
        assert gc.get_freeze_count() == 0
        assert sync(root, options=SyncOptions(workers=2)).ok
        after = gc.get_threshold(), gc.get_freeze_count()
        gc.freeze()  # a caller that froze its own objects (a pre-fork server does)
        mine = gc.get_freeze_count()
        assert sync(root, options=SyncOptions(workers=2)).ok
        after_mine = gc.get_freeze_count()
    finally:
        gc.unfreeze()
        gc.set_threshold(*original)
    assert seen[0][0] == (sync_module.GC_YOUNG_THRESHOLD, 11, 12) and seen[0][1] > 0
    assert after == ((900, 11, 12), 0)
    assert seen[1][0] == (sync_module.GC_YOUNG_THRESHOLD, 11, 12)
    # not unfrozen (that would empty it); the count only falls as frozen objects are freed
    assert 0 < after_mine <= seen[1][1] <= mine


def test_overlapping_syncs_give_the_settings_back_once_both_end():
    """Two syncs in one process (a lab script syncing two mirrors in threads): the first
    to start saves the caller's settings and the last to end restores them."""
    import gc

    original = gc.get_threshold()
    gc.set_threshold(900, 11, 12)
    try:
        first, second = sync_module._long_lived_gc(), sync_module._long_lived_gc()
        first.__enter__()
        second.__enter__()
        first.__exit__(None, None, None)  # the first ends while the second still runs
        assert gc.get_threshold()[0] == sync_module.GC_YOUNG_THRESHOLD
        second.__exit__(None, None, None)
        assert gc.get_threshold() == (900, 11, 12) and gc.get_freeze_count() == 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*original)


@pytest.mark.parametrize("min_seconds, interim", [("30", False), ("0", True)])
def test_a_short_sync_publishes_once_unless_told_otherwise(tmp_path, monkeypatch, min_seconds,
                                                           interim):
    """An interim publish waits MIRROR_PUBLISH_MIN_SECONDS after the run began: with the
    object count due after every object, a short sync still publishes only at its end
    (generation 1) unless the minimum is 0."""
    monkeypatch.setenv("MIRROR_PUBLISH_EVERY_OBJECTS", "1")
    monkeypatch.setenv("MIRROR_PUBLISH_MIN_SECONDS", min_seconds)
    with serve(images=6, seed=31) as sb:
        summary = sync(tmp_path / "m", sb.url, SyncOptions(workers=2, blobs=frozenset()))
    assert summary.ok
    assert (summary.generation > 1) is interim, summary.generation
