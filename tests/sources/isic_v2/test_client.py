"""The ISIC API v2 client against the v2 sandbox."""

from __future__ import annotations

import pytest
import requests

from mirror.errors import ArchiveError
from mirror.sources.http import HttpClient
from mirror.sources.isic_v2.client import (
    TOKEN_ENV,
    IsicV2Client,
    Listing,
    document_hash,
    stable_document,
    strip_signed_query,
)
from mirror.sources.isic_v2.sandbox import SANDBOX_TOKEN, STAFF_TOKEN, start


@pytest.fixture(scope="module")
def sb():
    sandbox = start(images=230, seed=4)
    yield sandbox
    sandbox.stop()


@pytest.fixture
def fresh():
    sandbox = start(images=30, seed=8)
    yield sandbox
    sandbox.stop()


@pytest.fixture(autouse=True)
def _no_token(monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)


def client_for(sandbox, token: str | None = None, **http) -> IsicV2Client:
    return IsicV2Client(sandbox.url, HttpClient(backoff=0.01, max_backoff=0.05, **http),
                        token=token)


def server_listing(sandbox, token: str | None = None) -> list[dict]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    records, url = [], sandbox.url + "/images/"
    while url:
        page = requests.get(url, headers=headers, timeout=30).json()
        records += page["results"]
        url = page["next"]
    return records


def test_walks_every_image_in_pages_of_100(sb):
    client = client_for(sb)
    listing = Listing()
    records = list(client.images(listing=listing))
    assert [r.raw for r in records] == server_listing(sb)
    assert listing.pages == -(-len(records) // 100) and listing.first_count == len(records)
    assert listing.rejected == [] and listing.duplicates == 0
    assert all(r.public and not r.full.signed for r in records)
    assert client.http.requests_made == listing.pages


def test_a_lagging_count_does_not_truncate_the_listing():
    sandbox = start(images=25, seed=1, es_counts=True)
    try:
        listing = Listing()
        records = list(client_for(sandbox).images(listing=listing))
        assert listing.first_count < len(records) == len(server_listing(sandbox))
    finally:
        sandbox.stop()


def test_search_and_collections(sb):
    client = client_for(sb)
    males = list(client.images(query="sex:male"))
    assert males and all(r.metadata["clinical"]["sex"] == "male" for r in males)
    members = client.collection_image_ids(64)
    expected = requests.get(sb.url + "/images/search/?collections=64&limit=100",
                            timeout=30).json()
    assert members == [r["isic_id"] for r in expected["results"]]
    assert client.search_count("sex:male") == len(males)
    assert client.search_size() > 0
    assert {c["id"] for c in client.collections()} == {61, 62, 64, 66}
    assert client.collection(61)["doi"] == "10.34970/245161"
    assert client.collection(171) is None
    lesions = list(client.lesions())
    assert lesions and [x["id"] for x in lesions] == sorted(x["id"] for x in lesions)
    assert client.stats()["image"]["images_count"] == 230
    assert client.license_text("CC-0").startswith(b"Creative Commons Legal Code")


def test_single_image_and_missing_ones(sb):
    client = client_for(sb)
    first = next(client.images())
    assert client.image(first.isic_id) == first
    assert client.image("ISIC_0000000") is None
    with pytest.raises(ArchiveError, match="not an ISIC id"):
        client.image("../x")


def test_errors_are_one_line_with_a_fix(sb):
    client = client_for(sb)
    with pytest.raises(ArchiveError) as bad_query:
        list(client.images(query="sex:ma.le"))
    message = str(bad_query.value)
    assert "400" in message and "Could not parse search query." in message
    assert "fix the search query 'sex:ma.le'" in message and "\n" not in message
    with pytest.raises(ArchiveError, match=r"query\.cursor: Value error, Invalid cursor\."):
        client.get_json("images/", {"cursor": "xx"})
    with pytest.raises(ArchiveError, match="needs a login"):
        client.get_json("users/me/")


def test_token_from_the_environment(sb, monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, SANDBOX_TOKEN)
    client = IsicV2Client(sb.url, HttpClient(backoff=0.01))
    assert client.authenticated and client.whoami()["email"] == "sandbox-user@example.org"
    records = list(client.images())
    private = [r for r in records if not r.public]
    assert private and all(r.full.signed for r in private)
    assert len(records) == len(server_listing(sb, SANDBOX_TOKEN))
    assert SANDBOX_TOKEN not in repr(client.__dict__.get("http"))
    assert IsicV2Client(sb.url, use_env_token=False).authenticated is False


def test_a_refused_token_is_caught_by_whoami(sb):
    client = client_for(sb, token="expired-token")
    assert len(list(client.images())) == len(server_listing(sb))  # silently anonymous
    with pytest.raises(ArchiveError, match=f"set {TOKEN_ENV} to a valid access token"):
        client.whoami()


def test_document_hash_ignores_signature_renewal_but_not_edits(fresh):
    client = client_for(fresh, token=STAFF_TOKEN)
    private = next(r for r in client.images() if not r.public)
    assert "?" not in private.document["files"]["full"]["url"]
    assert private.document["files"]["full"]["url"] == private.full.stable_url
    fresh.advance(86400)
    renewed = client.image(private.isic_id)
    assert renewed.full.url != private.full.url
    assert renewed.document_hash == private.document_hash
    fresh.mutate(edit_ids=[private.isic_id])
    assert client.image(private.isic_id).document_hash != private.document_hash
    public = next(r for r in client.images() if r.public)
    assert public.document == public.raw  # nothing volatile in a public record


def test_strip_signed_query():
    assert strip_signed_query("https://c.example/u/ISIC_1.jpg?Expires=1&Signature=a~&"
                              "Key-Pair-Id=K") == "https://c.example/u/ISIC_1.jpg"
    assert strip_signed_query("https://b.example/x.jpg?X-Amz-Signature=1") == \
        "https://b.example/x.jpg"
    assert strip_signed_query("https://b.example/x.jpg?v=2") == "https://b.example/x.jpg?v=2"
    record = {"isic_id": "ISIC_0000001", "files": {"full": {"url": "https://h/a.jpg?Expires=1",
                                                            "size": 1}}}
    assert stable_document(record)["files"]["full"]["url"] == "https://h/a.jpg"
    assert document_hash(record) == document_hash(
        {"isic_id": "ISIC_0000001", "files": {"full": {"url": "https://h/a.jpg?Expires=2",
                                                       "size": 1}}})


def test_transient_faults_are_retried():
    sandbox = start(images=500, seed=3, faults="500=0.2,503=0.1,truncate=0.1,reset=0.1")
    try:
        client = client_for(sandbox, attempts=12)
        records = list(client.images())
        assert len(records) == len(server_listing_retrying(sandbox))
        assert client.http.retries > 0
    finally:
        sandbox.stop()


def server_listing_retrying(sandbox) -> list[str]:
    return [r.isic_id for r in client_for(sandbox, attempts=20).images()]


def test_hostile_records_are_rejected_and_the_rest_kept():
    sandbox = start(images=80, seed=6, hostile="ids,types")
    try:
        listing = Listing()
        records = list(client_for(sandbox).images(listing=listing))
        assert listing.rejected and records
        assert len(records) + len(listing.rejected) == listing.seen
        assert all(r.isic_id.startswith("ISIC_") and len(r.isic_id) == 12 for r in records)
        assert all(r.full.url.startswith(sandbox.files_url) for r in records)
        assert all("\n" not in line for line in listing.rejected)
    finally:
        sandbox.stop()


def test_endless_and_huge_listings_are_refused():
    endless = start(images=150, hostile="endless")
    try:
        with pytest.raises(ArchiveError, match="does not advance"):
            list(client_for(endless).images())
        with pytest.raises(ArchiveError, match="carries no cursor"):
            list(client_for(endless).images(query="sex:male"))  # one page: next = itself
    finally:
        endless.stop()
    huge = start(images=3, hostile="huge")
    try:
        with pytest.raises(ArchiveError, match="MiB"):
            list(client_for(huge).images())
    finally:
        huge.stop()


def test_next_links_to_elsewhere_are_not_followed(sb):
    client = client_for(sb)
    with pytest.raises(ArchiveError, match="points elsewhere"):
        client._next_cursor("images/", "http://example.invalid/other/?cursor=abc")
    assert client._next_cursor("images/", sb.url + "/images/?cursor=abc&limit=100") == "abc"
