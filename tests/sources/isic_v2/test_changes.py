"""Each way the archive changes (research note §7.1), then one sync: the mirror must hold
exactly what the archive now serves (records, collection membership, lesions, file bytes),
with exact counts. Plus the scopes (collection, search), the anonymous and the token views,
and a signed URL that expires in the middle of a sync."""

from __future__ import annotations

import hashlib
import threading

import pytest
import requests
from click.testing import CliRunner
from sqlalchemy import select

from mirror.index import Blob, ObjectRow
from mirror.reader import reading
from mirror.sources.isic_v2.client import TOKEN_ENV, stable_document
from mirror.sources.isic_v2.sandbox import SANDBOX_TOKEN, start
from mirror.sources.isic_v2.source import IsicV2Source
from mirror.sync import SyncOptions, sync
from mirror.verify import verify_mirror

WHAT = frozenset({"images", "collections", "lesions"})


@pytest.fixture(autouse=True)
def _anonymous(monkeypatch, tmp_path):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    monkeypatch.setenv("MIRROR_STATE_DIR", str(tmp_path / "state"))


@pytest.fixture
def sb():
    with start(images=40, seed=12) as sandbox:
        yield sandbox


def run(root, sandbox, token: str | None = None, **options) -> dict:
    options.setdefault("source", "isic-v2")
    options.setdefault("blobs", frozenset({"full"}))
    options.setdefault("what", WHAT)
    login = {"username": "me", "password": token} if token else {}
    summary = sync(root, sandbox.url, SyncOptions(**options), **login)
    assert summary.ok, summary.failures
    return summary.as_dict()


def listing(sandbox, path: str, token: str | None = None) -> list[dict]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    out, url = [], f"{sandbox.url}/{path}{'&' if '?' in path else '?'}limit=100"
    while url:
        page = requests.get(url, headers=headers, timeout=30).json()
        out += page["results"]
        url = page["next"]
    return out


def mirrored(root, kind: str) -> dict[str, dict]:
    with reading(root) as r:
        return {i: doc for i, doc in r.conn.execute(select(ObjectRow.id, ObjectRow.doc).where(
            ObjectRow.kind == kind, ObjectRow.removed.is_(False)))}


def file_shas(root) -> dict[str, str]:
    """The current full file of every current image (a removed image's stays until gc)."""
    current = set(mirrored(root, "image"))
    with reading(root) as r:
        return {i: sha for i, sha in r.conn.execute(select(Blob.object_id, Blob.sha256).where(
            Blob.role == "image")) if i in current}


def assert_exact(root, sandbox, token: str | None = None) -> None:
    """The mirror is what the archive serves now, as this caller sees it."""
    images = {r["isic_id"]: r for r in listing(sandbox, "images/", token)}
    assert mirrored(root, "image") == {i: stable_document(r) for i, r in images.items()}
    assert mirrored(root, "listing")["images"]["isic_ids"] == list(images)  # publish order
    collections = {str(c["id"]): {**c, "isic_ids": [
        r["isic_id"] for r in listing(sandbox, f"images/search/?collections={c['id']}", token)]}
        for c in listing(sandbox, "collections/", token)}
    assert mirrored(root, "collection") == collections
    lesions = {le["id"]: {**le, "images": [stable_document(i) for i in le["images"]]}
               for le in listing(sandbox, "lesions/", token)}
    assert mirrored(root, "lesion") == lesions
    served = {i: hashlib.sha256(requests.get(r["files"]["full"]["url"], timeout=30).content
                                ).hexdigest() for i, r in images.items()}
    assert file_shas(root) == served


def _private(sandbox) -> list[str]:
    return sorted(i.isic_id for i in sandbox.archive.images.values() if not i.public)


def _public(root) -> list[str]:
    return sorted(mirrored(root, "image"))


EVENTS = {  # name -> (mutation from the mirror's state, expected image counts, files fetched)
    "new public images": (lambda sb, ids: {"add": 2}, {"new": 2}, 2),
    "new private images": (lambda sb, ids: {"add_private": 2}, {}, 0),
    "private made public": (lambda sb, ids: {"publish_ids": _private(sb)[:1]}, {"new": 1}, 1),
    "metadata edit": (lambda sb, ids: {"edit_ids": ids[:1]}, {"changed": 1}, 0),
    "licence change": (lambda sb, ids: {"relicense": 1}, {"changed": 1}, 0),
    "collection membership": (lambda sb, ids: {"collection": 64, "collect": 2,
                                               "uncollect": 1}, {}, 0),
    "collection edited": (lambda sb, ids: {"edit_collections": [61]}, {}, 0),
    "file replaced": (lambda sb, ids: {"replace_ids": ids[:1]}, {"changed": 1}, 1),
    "image deleted": (lambda sb, ids: {"delete_ids": ids[:1]}, {"removed": 1}, 0),
    "nothing (a night passes)": (lambda sb, ids: {"midnight": True}, {}, 0),
}


@pytest.mark.parametrize("event", list(EVENTS))
def test_each_change_event_is_reflected_exactly(sb, tmp_path, event):
    root = tmp_path / "m"
    run(root, sb)
    assert_exact(root, sb)
    mutation, counts, fetched = EVENTS[event]
    sb.mutate(**mutation(sb, _public(root)))
    summary = run(root, sb)
    images = summary["objects"]["image"]
    assert {k: v for k, v in images.items() if k != "unchanged"} == counts
    assert summary["blobs"].get("image", {}).get("fetched", 0) == fetched
    assert_exact(root, sb)
    assert verify_mirror(root).ok


def test_an_attribution_change_reaches_every_image_of_the_cohort(sb, tmp_path):
    root = tmp_path / "m"
    run(root, sb)
    before = mirrored(root, "image")
    changed = sb.mutate(reattribute=1)["reattributed_cohorts"]
    summary = run(root, sb)
    after = mirrored(root, "image")
    moved = {i for i in after if after[i]["attribution"] != before[i]["attribution"]}
    assert moved and summary["objects"]["image"]["changed"] == len(moved)
    cohort = {i.isic_id for i in sb.archive.images.values() if i.cohort in changed}
    assert moved == cohort & set(after)
    assert "image" not in summary["blobs"]  # the bytes keep the credit frozen at publish
    assert_exact(root, sb)


def test_a_doi_publish_opens_its_collection_and_its_images(sb, tmp_path):
    root = tmp_path / "m"
    token_root = tmp_path / "t"
    run(root, sb)
    run(token_root, sb, token=SANDBOX_TOKEN)
    private = {c["id"] for c in listing(sb, "collections/", SANDBOX_TOKEN)} - {
        c["id"] for c in listing(sb, "collections/")}
    assert private, "the sandbox user sees a private collection"
    cid = sorted(private)[0]
    opened = sb.mutate(doi=cid)["doi_published"]
    summary = run(root, sb)
    assert summary["objects"]["image"].get("new", 0) == len(opened)
    assert str(cid) in mirrored(root, "collection")
    assert_exact(root, sb)


def test_a_collection_scope_mirrors_its_members_and_never_removes(sb, tmp_path):
    root = tmp_path / "m"
    members = [r["isic_id"] for r in listing(sb, "images/search/?collections=64")]
    result = CliRunner().invoke(__import__("mirror.cli", fromlist=["main"]).main, [
        "sync", "--root", str(root), "--url", sb.url, "--collection", "64", "--what",
        "images", "--blobs", "full", "--quiet"])
    assert result.exit_code == 0, result.output
    assert sorted(mirrored(root, "image")) == sorted(members)
    assert sorted(file_shas(root)) == sorted(members)
    sb.mutate(collection=64, uncollect_ids=members[:1])
    summary = run(root, sb, scope={"collections": ["64"]}, what=frozenset({"images"}))
    assert "removed" not in summary["objects"]["image"]  # left the scope, not the archive
    assert members[0] in mirrored(root, "image")


def test_a_collection_is_found_by_its_name(sb, tmp_path):
    name = next(c["name"] for c in listing(sb, "collections/") if c["id"] == 64)
    members = [r["isic_id"] for r in listing(sb, "images/search/?collections=64")]
    root = tmp_path / "m"
    run(root, sb, scope={"collections": [name]}, what=frozenset({"images"}))
    assert sorted(mirrored(root, "image")) == sorted(members)
    with pytest.raises(Exception, match="no collection named 'No such thing'"):
        run(tmp_path / "n", sb, scope={"collections": ["No such thing"]})


def test_a_search_scope_mirrors_what_the_archive_finds(sb, tmp_path):
    root = tmp_path / "m"
    query = 'sex:female AND diagnosis_1:"Benign"'
    found = [r["isic_id"] for r in listing(
        sb, f"images/search/?query={requests.utils.quote(query)}")]
    assert found
    summary = run(root, sb, scope={"search": query}, what=frozenset({"images"}))
    assert summary["objects"]["image"] == {"new": len(found)}
    assert sorted(mirrored(root, "image")) == sorted(found)
    assert sorted(file_shas(root)) == sorted(found)


def test_anonymous_and_token_views(sb, tmp_path):
    anon, token = tmp_path / "a", tmp_path / "t"
    run(anon, sb)
    run(token, sb, token=SANDBOX_TOKEN)
    seen = {r["isic_id"] for r in listing(sb, "images/", SANDBOX_TOKEN)}
    private = {i for i in seen if not sb.archive.images[sb.archive.by_isic_id[i]].public}
    assert private and not private & set(mirrored(anon, "image"))
    assert set(mirrored(token, "image")) == seen
    docs = mirrored(token, "image")
    assert all(docs[i]["public"] is False and "?" not in docs[i]["files"]["full"]["url"]
               for i in private)  # stored without the signature
    assert_exact(token, sb, SANDBOX_TOKEN)
    assert_exact(anon, sb)
    sb.advance(86_400)  # a new UTC day: every signed URL string changes
    summary = run(token, sb, token=SANDBOX_TOKEN)
    assert set(summary["objects"]["image"]) == {"unchanged"} and summary["bytes"] == 0


def test_a_signed_url_that_expires_mid_sync_is_signed_again(sb, tmp_path, monkeypatch):
    root = tmp_path / "t"
    fetch, expired, lock = IsicV2Source.fetch_file, [], threading.Lock()

    def expire_then_fetch(self, *args, **kwargs):
        with lock:
            if not expired:  # after the listing signed them, before any private download
                sb.advance(8 * 86_400)
                expired.append(True)
        return fetch(self, *args, **kwargs)

    monkeypatch.setattr(IsicV2Source, "fetch_file", expire_then_fetch)
    sb.reset_stats()
    summary = run(root, sb, token=SANDBOX_TOKEN)
    private = [i for i in mirrored(root, "image")
               if not sb.archive.images[sb.archive.by_isic_id[i]].public]
    assert private
    assert summary["blobs"]["image"]["fetched"] == len(mirrored(root, "image"))
    stats = sb.stats()
    assert stats.get("GET /images/{isic_id}/", 0) == len(private)  # one re-fetch each
    monkeypatch.undo()
    assert_exact(root, sb, SANDBOX_TOKEN)
