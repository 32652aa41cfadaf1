"""Route by route, ``mirror serve`` of a synced ISIC v2 mirror answers as the v2 sandbox it
was synced from: same status, same JSON (file URLs compared by the bytes they serve, cursor
links by where they lead), same error bodies, same file bytes. Both faces run the one route
table (mirror/sources/isic_v2/shape.py); what differs is the backend."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from urllib.parse import parse_qsl, urlsplit

import pytest
import requests
from sqlalchemy import select

from mirror.index import Blob, ObjectRow
from mirror.reader import reading
from mirror.sources.isic_v2.client import TOKEN_ENV
from mirror.sources.isic_v2.sandbox import SANDBOX_TOKEN, start
from mirror.sync import SyncOptions, sync
from tests.serve.conftest import WORKTREE, serving

PLAIN = {"Accept-Encoding": "identity"}  # the sandbox gzips like Django; serve does not
SHA256 = {}  # file URL -> SHA-256 of its bytes (the sandbox's bucket URLs are per run)


@pytest.fixture(scope="module")
def v2(tmp_path_factory, monkeypatch_module):
    """(sandbox, serve URL, root): 24 images, some private, the search index current."""
    monkeypatch_module.setenv("MIRROR_STATE_DIR", str(tmp_path_factory.mktemp("state")))
    monkeypatch_module.delenv(TOKEN_ENV, raising=False)
    root = tmp_path_factory.mktemp("serve_v2") / "mirror"
    with start(images=24, seed=31) as sb:
        sb.mutate(midnight=True)  # the nightly index holds today's images: facets agree
        summary = sync(root, sb.url, SyncOptions(source="isic-v2", workers=2))
        assert summary.ok, summary.failures
        with serving(root) as url:
            yield sb, url, root


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def get(base: str, path: str, **kwargs) -> requests.Response:
    return requests.get(f"{base}/{path}", timeout=30, allow_redirects=False, **kwargs)


def file_sha(url: str) -> str:
    if url not in SHA256:
        reply = requests.get(url, timeout=30)
        assert reply.status_code == 200, url
        SHA256[url] = hashlib.sha256(reply.content).hexdigest()
    return SHA256[url]


def link(value: str | None) -> tuple | None:
    """A next/previous link without its host, its cursor decoded to whether it is set."""
    if value is None:
        return None
    parts = urlsplit(value)
    return parts.path, sorted((k, "<cursor>" if k == "cursor" else v)
                              for k, v in parse_qsl(parts.query, keep_blank_values=True))


def normal(value, links: bool = True):
    """JSON with each file URL replaced by the SHA-256 of what it serves."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if key == "url" and isinstance(item, str):
                out[key] = file_sha(item)
            elif key in ("next", "previous") and links:
                out[key] = link(item)
            else:
                out[key] = normal(item, links)
        return list(out.items())  # key order matters: the archive's clients may rely on it
    if isinstance(value, list):
        return [normal(v, links) for v in value]
    return value


def both(v2, path: str, **kwargs) -> tuple[requests.Response, requests.Response]:
    sb, url, _ = v2
    return get(sb.url, path, **kwargs), get(f"{url}/api/v2", path, **kwargs)


def assert_same(v2, path: str, **kwargs) -> requests.Response:
    ours, served = both(v2, path, headers=PLAIN, **kwargs)
    assert (served.status_code, path) == (ours.status_code, path)
    assert served.headers.get("Content-Type") == ours.headers.get("Content-Type"), path
    if ours.headers.get("Content-Type", "").startswith("application/json"):
        assert normal(served.json()) == normal(ours.json()), path
    else:
        assert served.content == ours.content, path
        assert served.headers.get("Content-Length") == ours.headers.get("Content-Length")
    return ours


def walk(base: str, path: str) -> list[list]:
    """Every page of a listing, following ``next`` to the end (then ``previous`` back)."""
    pages, url = [], f"{base}/{path}"
    while url:
        page = requests.get(url, timeout=30).json()
        pages.append(normal(page["results"]) + [page["count"]])
        url = page["next"]
        assert len(pages) < 50, "the cursor does not advance"
    back = [] if page["previous"] is None else walk_back(page["previous"])
    return pages + back


def walk_back(url: str) -> list[list]:
    pages = []
    while url:
        page = requests.get(url, timeout=30).json()
        pages.append(normal(page["results"]) + ["back"])
        url = page["previous"]
        assert len(pages) < 50
    return pages


ROUTES = [
    "images/", "images/?limit=5", "images/?limit=0", "images/?limit=x", "images/?cursor=zz",
    "images/?cursor=cD1ub3Q%3D", "images/?limit=3&pin_sort=true",
    "images/search/?query=diagnosis_1:Malignant",
    "images/search/?query=age_approx:[20 TO 60] AND sex:female&limit=4",
    "images/search/?query=isic_id:ISIC_*", "images/search/?query=((",
    "images/search/?collections=62", "images/search/?collections=62,64&limit=2",
    "images/search/?collections=x", "images/search/?collections=1&collections=y",
    "images/search/size/?query=diagnosis_1:Benign", "images/search/size/?query=((",
    "images/facets/?query=((", "images/ISIC_0000000/",
    "images/ISIC_0000000/similar/", "images/not-an-id/", "images",
    "collections/", "collections/?limit=2", "collections/?sort=name",
    "collections/?sort=created&limit=3", "collections/?sort=size", "collections/?pinned=true",
    "collections/?pinned=maybe", "collections/62/", "collections/x/", "collections/999/",
    "collections/62/attribution/", "collections/201/", "lesions/", "lesions/?limit=2",
    "lesions/IL_0000000/", "zip-download/license-file/CC-BY/",
    "zip-download/license-file/CC-0/", "zip-download/license-file/MIT/", "users/me/",
    "nonexistent/", "images/ISIC_0000000/extra/",
]


@pytest.mark.parametrize("path", ROUTES)
def test_routes_and_errors_agree(v2, path):
    assert_same(v2, path)


def without_empty_terms(facets: dict) -> dict:
    """Term buckets that count nothing dropped: the archive lists every value its index
    holds (``min_doc_count: 0``), private images' too, which an anonymous mirror lacks."""
    return {name: {**facet, "buckets": [b for b in facet["buckets"]
                                        if b["doc_count"] or "from" in b]}
            for name, facet in facets.items()}


@pytest.mark.parametrize("query", ["", "sex:male", "diagnosis_1:Malignant OR age_approx:[0 TO 40]"])
def test_facets_agree_on_what_the_mirror_holds(v2, query):
    ours, served = both(v2, "images/facets/", params={"query": query} if query else None)
    assert ours.status_code == served.status_code == 200
    assert list(served.json()) == list(ours.json())
    assert without_empty_terms(served.json()) == without_empty_terms(ours.json())


def test_a_slashless_route_redirects_alike(v2):
    ours, served = both(v2, "images?limit=2")
    assert ours.status_code == served.status_code == 301
    assert served.headers["Location"] == ours.headers["Location"] == "/api/v2/images/?limit=2"


def test_every_image_and_lesion_agrees(v2):
    sb, url, _ = v2
    records = requests.get(f"{sb.url}/images/", params={"limit": 100}, timeout=30).json()
    assert records["count"] == len(records["results"]) > 10
    for record in records["results"]:
        assert_same(v2, f"images/{record['isic_id']}/")
    lesions = requests.get(f"{sb.url}/lesions/", timeout=30).json()["results"]
    assert lesions
    for lesion in lesions:
        assert_same(v2, f"lesions/{lesion['id']}/")


@pytest.mark.parametrize("path", ["images/?limit=5", "images/search/?query=diagnosis_1:Benign"
                                  "&limit=3", "collections/?limit=1", "collections/?sort=name"
                                  "&limit=2", "lesions/?limit=1"])
def test_cursor_paging_walked_to_the_end_and_back_agrees(v2, path):
    sb, url, _ = v2
    ours = walk(sb.url, path)
    assert len(ours) > 2
    assert walk(f"{url}/api/v2", path) == ours


def test_lesion_and_name_cursors_are_the_archives_own(v2):
    """Where the position is in the record (lesion id, collection name), serve's cursor
    is the sandbox's byte for byte; an image cursor encodes the synced listing's rank."""
    sb, url, _ = v2
    for path in ("lesions/?limit=1", "collections/?sort=name&limit=2"):
        ours, served = (requests.get(f"{b}/{path}", timeout=30).json() for b in
                        (sb.url, f"{url}/api/v2"))
        assert urlsplit(served["next"]).query == urlsplit(ours["next"]).query


def test_files_are_the_same_bytes_with_etag_and_range(v2):
    sb, url, root = v2
    record = requests.get(f"{url}/api/v2/images/", params={"limit": 1}, timeout=30
                          ).json()["results"][0]
    theirs = requests.get(f"{sb.url}/images/{record['isic_id']}/", timeout=30).json()
    for key in ("full", "thumbnail_256"):
        served_url, sandbox_url = record["files"][key]["url"], theirs["files"][key]["url"]
        assert served_url.startswith(f"{url}/blob/")
        original = requests.get(sandbox_url, timeout=30)
        data = original.content
        got = requests.get(served_url, timeout=30)
        assert got.content == data and got.headers["Content-Length"] == str(len(data))
        assert got.headers["Content-Type"] == original.headers["Content-Type"]
        sha = hashlib.sha256(data).hexdigest()
        assert got.headers["ETag"] == f'"{sha}"' and served_url.endswith(sha)
        assert requests.get(served_url, headers={"If-None-Match": f'"{sha}"'},
                            timeout=30).status_code == 304
        part = requests.get(served_url, headers={"Range": "bytes=10-99"}, timeout=30)
        assert part.status_code == 206 and part.content == data[10:100]


def test_private_images_are_not_served_anonymously(v2):
    sb, url, _ = v2
    staff = {"Authorization": f"Bearer {SANDBOX_TOKEN}"}
    everything = requests.get(f"{sb.url}/images/", headers=staff, timeout=30).json()
    hidden = [r["isic_id"] for r in everything["results"] if not r["public"]]
    assert hidden  # the sandbox holds private images; this anonymous mirror does not
    for isic_id in hidden:
        assert_same(v2, f"images/{isic_id}/")  # 404 alike


def test_a_sync_from_serve_gives_the_same_documents_and_files(v2, tmp_path):
    _, url, root = v2
    second = tmp_path / "second"
    summary = sync(second, f"{url}/api/v2", SyncOptions(source="isic-v2", workers=2))
    assert summary.ok, summary.failures

    def held(path):
        with reading(path) as r:
            docs = {(k, i): d for k, i, d in r.conn.execute(select(
                ObjectRow.kind, ObjectRow.id, ObjectRow.doc).where(
                ObjectRow.removed.is_(False)))}
            blobs = set(r.conn.execute(select(Blob.object_id, Blob.role, Blob.sha256)))
        for doc in docs.values():
            for ref in (doc.get("files") or {}).values():
                ref.pop("url", None)  # the first points at the archive, the second at serve
            for image in doc.get("images") or []:
                for ref in (image.get("files") or {}).values():
                    ref.pop("url", None)
        return docs, blobs

    first_docs, first_blobs = held(root)
    second_docs, second_blobs = held(second)
    assert len(first_docs) > 30 and second_docs == first_docs
    images = sum(kind == "image" for kind, _ in first_docs)
    assert second_blobs == first_blobs and len(first_blobs) == 2 * images > 0


def test_a_private_v2_mirror_serves_its_private_images_only_with_the_token(tmp_path,
                                                                            monkeypatch):
    monkeypatch.setenv("MIRROR_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv(TOKEN_ENV, SANDBOX_TOKEN)
    root = tmp_path / "private"
    with start(images=24, seed=31) as sb:
        summary = sync(root, sb.url, SyncOptions(source="isic-v2", what={"images"}),
                       username="me", password="")
        assert summary.ok, summary.failures
        user = {"Authorization": f"Bearer {SANDBOX_TOKEN}"}
        theirs = requests.get(f"{sb.url}/images/?limit=100", headers=user, timeout=30).json()
    monkeypatch.delenv(TOKEN_ENV)
    env = {**os.environ, "PYTHONPATH": str(WORKTREE)}
    refused = subprocess.run([sys.executable, "-m", "mirror", "serve", "--root", str(root),
                              "--port", "0"], capture_output=True, text=True, env=env,
                             timeout=60)
    assert refused.returncode == 2 and "--allow-private --token-file" in refused.stderr
    token = "v2-" + "f00dfeed" * 4
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    hidden = [r["isic_id"] for r in theirs["results"] if not r["public"]]
    assert hidden
    with serving(root, "--allow-private", "--token-file", str(token_file)) as url:
        anonymous = requests.get(f"{url}/api/v2/images/?limit=100", timeout=30).json()
        assert {r["isic_id"] for r in anonymous["results"]}.isdisjoint(hidden)
        assert anonymous["count"] == theirs["count"] - len(hidden)
        bearer = {"Authorization": f"Bearer {token}"}
        mine = requests.get(f"{url}/api/v2/images/?limit=100", headers=bearer,
                            timeout=30).json()
        assert [r["isic_id"] for r in mine["results"]] == \
            [r["isic_id"] for r in theirs["results"]]
        assert requests.get(f"{url}/api/v2/images/{hidden[0]}/", timeout=30).status_code == 404
        assert requests.get(f"{url}/api/v2/images/{hidden[0]}/", headers=bearer,
                            timeout=30).json()["public"] is False
        assert requests.get(f"{url}/api/v2/users/me/", timeout=30).status_code == 401
        blob = mine["results"][0]["files"]["full"]["url"]
        assert requests.get(blob, timeout=30).status_code == 401
        assert requests.get(blob, headers=bearer, timeout=30).status_code == 200


def test_the_browse_page_lists_and_shows_a_v2_image(v2):
    _, url, root = v2
    grid = requests.get(f"{url}/", timeout=30)
    assert grid.status_code == 200 and "/browse/image/ISIC_" in grid.text
    isic_id = grid.text.split("/browse/image/", 1)[1][:12]
    page = requests.get(f"{url}/browse/image/{isic_id}", timeout=30)
    assert page.status_code == 200 and isic_id in page.text
    with reading(root) as r:
        sha = r.conn.execute(select(Blob.sha256).where(Blob.object_id == isic_id,
                                                       Blob.role == "image")).scalar_one()
    assert f"/blob/{sha}" in page.text  # its files, linked by SHA-256


def test_serve_follows_a_resync_and_agrees_again(v2):
    """Last in this module: it changes the shared archive. A re-sync publishes a new
    generation; the running server answers from it (its cached rows are per generation)."""
    sb, url, root = v2
    before = requests.get(f"{url}/api/v2/images/?limit=100", timeout=30).json()["count"]
    sb.mutate(add=2, delete=1, edit=2, midnight=True)
    summary = sync(root, sb.url, SyncOptions(source="isic-v2", workers=2))
    assert summary.ok, summary.failures
    after = requests.get(f"{url}/api/v2/images/?limit=100", timeout=30).json()["count"]
    assert after == before + 1
    for path in ("images/?limit=100", "images/search/?query=diagnosis_1:Benign",
                 "collections/", "lesions/"):
        assert_same(v2, path)
    assert walk(f"{url}/api/v2", "images/?limit=7") == walk(sb.url, "images/?limit=7")
