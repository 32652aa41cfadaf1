"""IsicV2Source through the sync engine, against the v2 sandbox."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from mirror.errors import MirrorModeError
from mirror.index import Blob, FileVersion, ObjectRow
from mirror.reader import reading
from mirror.reindex import reindex_mirror
from mirror.sources import base
from mirror.sources.isic_v2.client import TOKEN_ENV
from mirror.sources.isic_v2.sandbox import SANDBOX_TOKEN, start
from mirror.sources.isic_v2.source import IsicV2Source
from mirror.sync import SyncOptions, sync
from mirror.verify import verify_mirror


@pytest.fixture(autouse=True)
def _anonymous(monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)


@pytest.fixture
def sb():
    sandbox = start(images=40, seed=12)
    yield sandbox
    sandbox.stop()


def run(root, sandbox, **options):
    options.setdefault("source", "isic-v2")
    summary = sync(root, sandbox.url, SyncOptions(**options))
    assert summary.ok, summary.failures
    return summary.as_dict()


def rows(root, model, **where) -> list[dict]:
    with reading(root) as r:
        query = select(*model.__table__.columns)
        for key, value in where.items():
            query = query.where(getattr(model, key) == value)
        return [dict(row._mapping) for row in r.conn.execute(query)]


def objects(root, kind: str) -> dict[str, dict]:
    return {r["id"]: r for r in rows(root, ObjectRow, kind=kind)}


def test_first_sync_then_a_noop_resync(sb, tmp_path):
    root = tmp_path / "m"
    first = run(root, sb)
    public = len([r for r in sb.archive.images.values() if r.public])
    assert first["objects"]["image"] == {"new": public}
    assert first["blobs"]["image"] == {"fetched": public}
    assert first["blobs"]["thumbnail"] == {"fetched": public}
    assert first["objects"]["collection"]["new"] == 4
    assert verify_mirror(root).ok
    images = objects(root, "image")
    assert all("?" not in doc["doc"]["files"]["full"]["url"] for doc in images.values())
    members = objects(root, "collection")["64"]["doc"]["isic_ids"]
    assert members == [r["isic_id"] for r in _search(sb, "collections=64")]
    sb.reset_stats()
    again = run(root, sb)
    assert again["bytes"] == 0 and again["plan"]["files"] == 0
    assert set(again["objects"]["image"]) == {"unchanged"}
    pages = -(-public // 100)
    collections = sum(-(-max(len(c["doc"]["isic_ids"]), 1) // 100)
                      for c in objects(root, "collection").values())
    assert sb.stats()["total"] == pages + 1 + collections + 1  # images, collections, lesions


def _search(sandbox, query: str) -> list[dict]:
    import requests

    out, url = [], f"{sandbox.url}/images/search/?{query}"
    while url:
        page = requests.get(url, timeout=30).json()
        out += page["results"]
        url = page["next"]
    return out


def test_changes_are_seen_by_the_next_sync(sb, tmp_path):
    root = tmp_path / "m"
    run(root, sb)
    staff_private = [i.isic_id for i in sb.archive.images.values() if not i.public]
    listing = sorted(objects(root, "image"))
    edited, replaced, deleted = listing[0], listing[1], listing[2]
    before = {r["object_id"]: r for r in rows(root, Blob, role="image")}
    before_members = {c: _search(sb, f"collections={c}") for c in ("61", "62", "64", "66")}
    changed = sb.mutate(edit_ids=[edited], replace_ids=[replaced], delete_ids=[deleted],
                        publish_ids=staff_private[:1], collection=64, collect=1, add=2)
    summary = run(root, sb)
    counts = summary["objects"]["image"]
    assert counts["new"] == 3 and counts["changed"] == 2 and counts["removed"] == 1
    collections = objects(root, "collection")
    assert changed["collected"][0] in collections["64"]["doc"]["isic_ids"]
    assert not any(deleted in c["doc"]["isic_ids"] for c in collections.values())
    assert summary["objects"]["collection"]["changed"] == sum(  # 64, and those that held
        1 for c in ("61", "62", "64", "66") if c == "64" or deleted in  # the deleted image
        [r["isic_id"] for r in before_members[c]])
    assert summary["blobs"]["image"] == {"fetched": 4}  # 2 added, 1 published, 1 replaced
    images = objects(root, "image")
    assert images[deleted]["removed"] is True
    assert staff_private[0] in images and images[staff_private[0]]["doc"]["public"] is True
    after = {r["object_id"]: r for r in rows(root, Blob, role="image")}
    assert after[replaced]["sha256"] != before[replaced]["sha256"]
    assert after[edited]["sha256"] == before[edited]["sha256"]
    versions = rows(root, FileVersion, object_id=replaced, role="image")
    assert len(versions) == 2  # the old file stays for snapshots
    assert verify_mirror(root).ok


def test_reindex_rebuilds_objects_and_files(sb, tmp_path):
    root = tmp_path / "m"
    run(root, sb)
    before = (objects(root, "image"), {(r["object_id"], r["role"]): r["sha256"]
                                       for r in rows(root, Blob)})
    reindex_mirror(root)
    after = (objects(root, "image"), {(r["object_id"], r["role"]): r["sha256"]
                                      for r in rows(root, Blob)})
    assert {k: v["doc"] for k, v in after[0].items()} == {k: v["doc"] for k, v in
                                                          before[0].items()}
    assert after[1] == before[1]


def test_search_scope_limits_files_and_skips_removals(sb, tmp_path):
    root = tmp_path / "m"
    summary = run(root, sb, scope={"search": "sex:male"}, what=frozenset({"images"}))
    males = _search(sb, "query=sex:male")
    assert summary["objects"]["image"] == {"new": len(males)}
    assert summary["blobs"]["image"] == {"fetched": len(males)}


def test_a_token_needs_an_authenticated_mirror(sb, tmp_path, monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, SANDBOX_TOKEN)
    with pytest.raises(MirrorModeError, match=TOKEN_ENV):
        sync(tmp_path / "anon", sb.url, SyncOptions(source="isic-v2"))
    root = tmp_path / "auth"
    summary = sync(root, sb.url, SyncOptions(source="isic-v2"), username="me", password="")
    assert summary.ok, summary.failures
    private = [i for i in objects(root, "image").values() if not i["doc"]["public"]]
    assert private and all("Signature" not in i["doc"]["files"]["full"]["url"]
                           for i in private)
    fetched = {r["object_id"] for r in rows(root, Blob, role="image")}
    assert {i["id"] for i in private} <= fetched  # signed URLs were used for the bytes
    sb.advance(86400)  # every signature renewed: not a change
    again = sync(root, sb.url, SyncOptions(), username="me", password="")
    assert set(again.as_dict()["objects"]["image"]) == {"unchanged"}


def test_source_satisfies_the_protocol(sb):
    from mirror.sources.http import HttpClient

    assert isinstance(IsicV2Source(sb.url, HttpClient()), base.Source)
    assert base.source_for_url(sb.url) == "isic-v2"


def test_the_offline_api_reads_a_v2_mirror(sb, tmp_path):
    from PIL import Image as PILImage

    from mirror.api import Mirror

    root = tmp_path / "m"
    run(root, sb)
    with Mirror(root) as m:
        ids = m.ids("image")
        image = m.image(ids[0])
        assert image.isic_id == ids[0] and image.public
        assert "pixels_x" in image.metadata and image.document["isic_id"] == ids[0]
        assert PILImage.open(image.path).size == (image.metadata["pixels_x"],
                                                  image.metadata["pixels_y"])
        assert image.thumbnail is not None and m.file(ids[0], "thumbnail") == image.thumbnail
        members = m.collection_images(64)
        assert members == m.collection("Melanoma examples")["isic_ids"]
        assert set(members) <= set(ids)
        lesion = m.ids("lesion")[0]
        assert m.lesion(lesion)["id"] == lesion


def test_login_takes_the_token_as_password_and_checks_it(sb, tmp_path):
    from mirror.errors import AuthenticationError

    with pytest.raises(AuthenticationError, match=f"set {TOKEN_ENV} to a valid access token"):
        sync(tmp_path / "bad", sb.url, SyncOptions(source="isic-v2"), username="me",
             password="expired")
    with pytest.raises(AuthenticationError, match="logs in with a token"):
        sync(tmp_path / "none", sb.url, SyncOptions(source="isic-v2"), username="me",
             password="")
    summary = sync(tmp_path / "ok", sb.url, SyncOptions(source="isic-v2"), username="me",
                   password=SANDBOX_TOKEN)
    assert summary.ok and summary.as_dict()["objects"]["image"]["new"] > len(
        [i for i in sb.archive.images.values() if i.public])


def test_a_sync_through_faults_ends_complete_and_verified(tmp_path):
    with start(images=30, seed=5, faults="500=0.08,503=0.04,reset=0.04,truncate=0.04") as sb:
        root = tmp_path / "m"
        summary = sync(root, sb.url, SyncOptions(source="isic-v2")).as_dict()
        assert summary["ok"], summary["failures"]
        assert summary["retries"] > 0
        public = len([i for i in sb.archive.images.values() if i.public])
        assert summary["blobs"]["image"] == {"fetched": public}
        assert verify_mirror(root).ok


def test_hostile_records_are_reported_and_nothing_is_marked_removed(tmp_path):
    root = tmp_path / "m"
    with start(images=60, seed=6) as clean:
        assert sync(root, clean.url, SyncOptions(source="isic-v2")).ok
    with start(images=60, seed=6, hostile="ids,types") as sb:  # the same archive, lying
        summary = sync(root, sb.url, SyncOptions(rebase_url=True)).as_dict()
    assert not summary["ok"]
    failures = [f for f in summary["failures"] if f["role"] == "document"]
    assert failures and all(f["kind"] == "image" for f in failures)
    assert "removed" not in summary["objects"]["image"]
    assert verify_mirror(root).ok


def test_files_begin_while_the_listing_goes_on(sb, tmp_path, monkeypatch):
    """A page's files start as soon as it is stored, not after the whole listing: the
    downloads overlap the listing's round trips (and a dry run still fetches nothing)."""
    from mirror.sources.isic_v2 import client, source
    from mirror.sources.isic_v2.client import IsicV2Client
    from mirror.sync.files import FileFetcher

    monkeypatch.setattr(client, "PAGE_SIZE", 10)
    monkeypatch.setattr(source, "OFFER_EVERY", 10)
    events: list[str] = []
    get_json, download = IsicV2Client.get_json, FileFetcher._download

    def listed(self, path, *args, **kwargs):
        if path == "images/":
            events.append("page")
        return get_json(self, path, *args, **kwargs)

    def fetched(self, *args, **kwargs):
        events.append("file")
        return download(self, *args, **kwargs)

    monkeypatch.setattr(IsicV2Client, "get_json", listed)
    monkeypatch.setattr(FileFetcher, "_download", fetched)
    dry = run(tmp_path / "dry", sb, dry_run=True, what=frozenset({"images"}))
    assert "file" not in events and dry["plan"]["files"] > 0
    events.clear()
    summary = run(tmp_path / "m", sb, what=frozenset({"images"}), blobs=frozenset({"full"}))
    public = len([r for r in sb.archive.images.values() if r.public])
    assert events.count("page") >= 4 and events.count("file") == public
    last_page = len(events) - 1 - events[::-1].index("page")
    assert events.index("file") < last_page, events
    assert summary["blobs"]["image"] == {"fetched": public}
    assert summary["plan"]["files"] == public  # the early files are in the plan's count
    assert verify_mirror(tmp_path / "m").ok
    assert len(rows(tmp_path / "m", Blob, role="image")) == public
