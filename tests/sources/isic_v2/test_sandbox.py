"""The ISIC API v2 sandbox against the research note ``isic_v2_api.md`` (exact bodies)."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import signal
import subprocess
import sys
from datetime import datetime
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from PIL import Image as PILImage

from mirror.sources.isic_v2.sandbox import SANDBOX_TOKEN, STAFF_TOKEN, dsl, start
from mirror.sources.isic_v2.sandbox.api import decode_cursor, encode_cursor

INVALID_CURSOR = {"detail": [{"type": "value_error", "loc": ["query", "cursor"],
                              "msg": "Value error, Invalid cursor.",
                              "ctx": {"error": "Invalid cursor."}}]}
BAD_POSITION = {"detail": [{"loc": ["query", "cursor"], "msg": "Value error, Invalid cursor."}]}
INT_MSG = "Input should be a valid integer, unable to parse string as an integer"
LICENSE_SHA256 = {
    "CC-0": (7048, "a2010f343487d3f7618affe54f789f5487602331c0a8d03f49e9a7c547cf0499"),
    "CC-BY": (18662, "adbf59d25a84bc40ff7560013ddf9a32c369bcbe25fd3775c3b9e63b409822eb"),
    "CC-BY-NC": (19352, "c099de4e7ae71269a11d9e331a42653772e7f24fee54137c7118d00af40d208d"),
}
IMAGE_KEYS = ["isic_id", "copyright_license", "attribution", "files", "metadata", "public"]


@pytest.fixture(scope="module")
def sb():
    sandbox = start(images=130, seed=3)
    yield sandbox
    sandbox.stop()


@pytest.fixture
def fresh():
    sandbox = start(images=40, seed=5)
    yield sandbox
    sandbox.stop()


def get(sandbox, path: str, token: str | None = None, headers: dict | None = None,
        **kwargs) -> requests.Response:
    headers = {**(headers or {}), **({"Authorization": f"Bearer {token}"} if token else {})}
    url = path if path.startswith("http") else sandbox.url + path
    return requests.get(url, headers=headers, timeout=30, allow_redirects=False, **kwargs)


def walk(sandbox, path: str, token: str | None = None) -> list[dict]:
    """Every record of a listing, following ``next`` until null."""
    records, url = [], sandbox.url + path
    while url:
        page = get(sandbox, url, token).json()
        records += page["results"]
        url = page["next"]
    return records


def cursor_of(url: str) -> str:
    return parse_qs(urlsplit(url).query)["cursor"][0]


# -- envelope, encoding, key order ------------------------------------------------------------

def test_first_page_envelope_key_order_and_encoding(sb):
    response = get(sb, "/images/?limit=2")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json; charset=utf-8"
    text = response.text
    assert text.startswith('{"results": [{"isic_id": "ISIC_')
    page = response.json()
    assert list(page) == ["results", "count", "next", "previous"]
    assert page["count"] == 130 - sum(not r["public"] for r in walk(sb, "/images/", STAFF_TOKEN))
    assert page["previous"] is None
    for record in page["results"]:
        assert list(record) == IMAGE_KEYS
        assert list(record["files"]) == ["full", "thumbnail_256"]
        assert list(record["metadata"]) == ["acquisition", "clinical"]
        assert list(record["metadata"]["acquisition"])[:2] == ["pixels_x", "pixels_y"]
        assert re.fullmatch(r"ISIC_\d{7}", record["isic_id"])
    assert ", " in text and '": ' in text and "\n" not in text


def test_non_ascii_is_escaped_and_decimals_are_strings(sb):
    records = walk(sb, "/images/")
    barcelona = next(r for r in records if r["attribution"].startswith("Hospital Cl"))
    raw = get(sb, f"/images/{barcelona['isic_id']}/").text
    assert "Hospital Cl\\u00ednic de Barcelona" in raw
    assert raw.isascii()
    decimals = [r["metadata"]["clinical"][k] for r in records for k in
                ("mel_thick_mm", "clin_size_long_diam_mm") if k in r["metadata"]["clinical"]]
    assert decimals and all(re.fullmatch(r"\d+\.\d\d", d) for d in decimals)
    assert all(None not in r["metadata"]["clinical"].values() for r in records)


def test_gzip_and_cors_middleware(sb):
    plain = get(sb, "/images/?limit=5", headers={"Accept-Encoding": "identity"})
    assert "Content-Encoding" not in plain.headers
    zipped = requests.get(sb.url + "/images/?limit=5", headers={"Origin": "https://x.org"},
                          timeout=30)
    assert zipped.headers["Content-Encoding"] == "gzip"
    assert zipped.headers["Access-Control-Allow-Origin"] == "*"
    assert zipped.json() == plain.json()
    assert "ETag" not in plain.headers and "Last-Modified" not in plain.headers


# -- cursor pagination ----------------------------------------------------------------------

def test_cursor_walk_covers_every_image_in_created_order(sb):
    staff = walk(sb, "/images/", STAFF_TOKEN)
    public_ids = [r["isic_id"] for r in staff if r["public"]]
    pages, url = [], sb.url + "/images/?limit=7"
    while url:
        page = get(sb, url).json()
        pages.append(page)
        url = page["next"]
    ids = [r["isic_id"] for p in pages for r in p["results"]]
    assert ids == public_ids and len(set(ids)) == len(ids)
    assert pages[0]["count"] == len(ids)
    assert all(p["count"] is None for p in pages[1:])
    assert pages[-1]["next"] is None and pages[0]["previous"] is None
    assert all(len(p["results"]) == 7 for p in pages[:-1])
    assert all("limit=7" in p["next"] for p in pages[:-1])


def test_cursor_encoding_is_standard_base64_of_a_created_position(sb):
    page = get(sb, "/images/?limit=3").json()
    raw = cursor_of(page["next"])
    decoded = base64.b64decode(raw).decode()
    assert decoded.startswith("p=") and decoded.endswith("%2B00%3A00")
    position = parse_qs(decoded)["p"][0]
    created = datetime.fromisoformat(position)
    assert str(created) == position  # Python str(datetime): "2016-... 09:00:00.123456+00:00"
    assert decode_cursor(raw).position == position
    assert encode_cursor(decode_cursor(raw)) == raw


def test_previous_link_returns_the_first_page_without_count(sb):
    first = get(sb, "/images/?limit=4").json()
    second = get(sb, first["next"]).json()
    assert base64.b64decode(cursor_of(second["previous"])).startswith(b"r=1&p=")
    back = get(sb, second["previous"]).json()
    assert back["results"] == first["results"]
    assert back["count"] is None and back["previous"] is None
    assert back["next"] is not None


def test_limit_clamping(sb):
    rows = [r["isic_id"] for r in walk(sb, "/images/")]
    assert len(get(sb, "/images/?limit=500").json()["results"]) == 100
    assert len(get(sb, "/images/?limit=0").json()["results"]) == 100
    assert len(get(sb, "/images/").json()["results"]) == 100
    negative = get(sb, "/images/?limit=-3").json()
    assert negative["results"] == [] and negative["next"] is not None
    skipped = get(sb, f"/images/?cursor={cursor_of(negative['next'])}").json()
    assert skipped["results"][0]["isic_id"] == rows[101]  # 100 rows silently skipped


def test_empty_and_offset_only_cursors(sb):
    rows = [r["isic_id"] for r in walk(sb, "/images/")]
    assert get(sb, "/images/?cursor=").json()["results"][0]["isic_id"] == rows[0]
    page = get(sb, "/images/?cursor=bz0xMDAw").json()  # o=1000, clamped to 100
    assert page["results"][0]["isic_id"] == rows[100]
    assert page["count"] == len(rows)  # no position: counted


def test_next_link_sorts_keys_and_keeps_blank_values(sb):
    page = get(sb, "/images/search/?query=sex:male&collections=61,62&limit=1").json()
    assert re.fullmatch(re.escape(sb.url) + r"/images/search/\?collections=61%2C62&cursor="
                        r"[A-Za-z0-9%]+&limit=1&query=sex%3Amale", page["next"])
    blank = get(sb, "/images/search/?query=&collections=").json()
    assert re.fullmatch(re.escape(sb.url) + r"/images/search/\?collections=&cursor=[^&]+&query=",
                        blank["next"])


def test_pin_sort_positions_and_cross_mode_cursors(sb):
    page = get(sb, "/images/?pin_sort=false&limit=2").json()  # any non-empty value pins
    assert base64.b64decode(cursor_of(page["next"])).startswith(b"p=0%7C")
    assert page["next"].endswith("&limit=2&pin_sort=false")
    assert get(sb, page["next"].replace("&pin_sort=false", "")).json() == BAD_POSITION
    plain = get(sb, "/images/?limit=2").json()
    assert get(sb, plain["next"] + "&pin_sort=1").json() == BAD_POSITION


# -- errors ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("path", "status", "body"), [
    ("/images/?cursor=not-a-cursor", 422, INVALID_CURSOR),
    ("/images/?cursor=cj0xJnA9MjAyMC0wMy0yOSsxOSUzQTM1JTNBNTIu", 422, BAD_POSITION),
    ("/images/?limit=abc", 422,
     {"detail": [{"type": "int_parsing", "loc": ["query", "limit"], "msg": INT_MSG}]}),
    ("/images/search/?collections=abc", 422, {"detail": [{
        "type": "value_error", "loc": ["query", "collections"],
        "msg": "Value error, invalid literal for int() with base 10: 'abc'",
        "ctx": {"error": "invalid literal for int() with base 10: 'abc'"}}]}),
    ("/images/search/?collections=1,,2", 422, {"detail": [{
        "type": "value_error", "loc": ["query", "collections"],
        "msg": "Value error, invalid literal for int() with base 10: ''",
        "ctx": {"error": "invalid literal for int() with base 10: ''"}}]}),
    ("/collections/?sort=bogus", 422, {"detail": [{
        "type": "literal_error", "loc": ["query", "sort"],
        "msg": "Input should be 'name' or 'created'",
        "ctx": {"expected": "'name' or 'created'"}}]}),
    ("/collections/abc/", 422,
     {"detail": [{"type": "int_parsing", "loc": ["path", "id"], "msg": INT_MSG}]}),
    ("/images/search/?query=Sex:male", 400, {"message": "Could not parse search query."}),
    ("/images/search/size/?query=sex:male)", 400, {"message": "Could not parse search query."}),
    ("/images/facets/?query=NOT sex:male", 400, {"message": "Could not parse search query."}),
    ("/images/ISIC_0000000x/", 404, {"detail": "Not Found"}),
    ("/images/..%2Fx/", 404, None),
    ("/collections/99999/", 404, {"detail": "Not Found"}),
    ("/collections/171/", 404, {"detail": "Not Found"}),  # private
    ("/lesions/IL_nope/", 404, {"detail": "Not Found"}),
    ("/zip-download/license-file/CC-BY-SA/", 404, {"detail": "Not Found"}),
    ("/users/me/", 401, {"detail": "Unauthorized"}),
    ("/images/ISIC_0000000/similar/", 401, {"detail": "Unauthorized"}),
])
def test_error_bodies(sb, path, status, body):
    response = get(sb, path)
    assert response.status_code == status
    if body is None:
        assert response.headers["Content-Type"].startswith("text/html")
    else:
        assert response.headers["Content-Type"] == "application/json; charset=utf-8"
        assert response.json() == body


def test_parameter_errors_come_before_search_errors(sb):
    response = get(sb, "/images/search/?query=bad&cursor=xx")
    assert response.status_code == 422 and response.json() == INVALID_CURSOR


def test_unstored_registry_field_parses_then_fails_in_the_database(sb):
    assert get(sb, "/images/search/?query=blurry:true").status_code == 500
    assert get(sb, "/images/search/size/?query=blurry:true").json() == {"size": 0}


def test_trailing_slash_redirect_and_unknown_paths(sb):
    response = get(sb, "/images?limit=1")
    assert response.status_code == 301
    assert response.headers["Location"] == "/api/v2/images/?limit=1"
    assert get(sb, "/images/ISIC_0000000").headers["Location"] == "/api/v2/images/ISIC_0000000/"
    assert get(sb, "/nothing/").status_code == 404
    assert requests.get(sb.root_url + "/api/v3/images/", timeout=30).status_code == 404
    assert requests.post(sb.url + "/images/", timeout=30).status_code == 405


def test_bad_tokens_are_anonymous_on_public_routes(sb):
    anonymous = get(sb, "/images/?limit=100").json()
    assert get(sb, "/images/?limit=100", token="garbage").json() == anonymous
    assert get(sb, "/users/me/", token="garbage").status_code == 401


# -- search ---------------------------------------------------------------------------------

PARSES = [
    "sex:male", "age_approx:[20 TO 40] AND sex:male", "sex:male age_approx:50",
    "sex:male OR sex:female age_approx:50", "sex:male AND age_approx:50 OR sex:female",
    "(sex:male OR sex:female) AND age_approx:50", "-sex:male", "- sex:male", "sex : male",
    "((sex:male))", 'diagnosis_3:"Melanoma Invasive"', "diagnosis_3:Melanoma*",
    "diagnosis_3:*Invasive", 'diagnosis_3:"Nevus, Spitz"', 'image_type:"TBP tile: close-up"',
    'diagnosis_2:"Malignant melanocytic proliferations (Melanoma)" AND -diagnosis_3:"Melanoma '
    'in situ"', 'diagnosis_4:"Primary cutaneous CD30+ lymphoproliferative disease"',
    "age_approx:{20 TO 40]", "age_approx:[* TO 40]", "age_approx:[20TO40]", "age_approx:*",
    "age_approx:-5", "age_approx:50.5", "mel_thick_mm:[0 TO 0.5]", "clin_size_long_diam_mm:1e1",
    "melanocytic:true", "melanocytic:*", "public:false", "isic_id:ISIC_000000*",
    "lesion_id:IL_0000001", "copyright_license:CC-BY-NC", "copyright_license:CC-BY*",
    "sex:-male", "anatom_site_1:*torso", "blurry:true", "color_tint:blue",
]
FAILS = [
    "Sex:male", "sex:male and age_approx:50", "NOT sex:male", "-(sex:male)",
    "diagnosis_3:Melanoma Invasive", "image_type:TBP tile: close-up", "age_approx:[20 to 40]",
    "age_approx:fifty", "melanocytic:True", "melanocytic:yes", "sex:ma.le", 'sex:"ma\\"le"',
    "diagnosis_2:'Malignant'", "sex:", ":male", "sex:male)", "()", "sex:male OR OR sex:female",
    "(sex:male OR sex:female) age_approx:50", "age_approx:50 (sex:male OR sex:female)",
    "acquisition_day:1", "diagnosis:melanoma", "anatom_site_general:*torso",
]


@pytest.mark.parametrize("query", PARSES)
def test_dsl_accepts(query):
    assert dsl.parse(query) is not None


@pytest.mark.parametrize("query", FAILS)
def test_dsl_rejects(query):
    with pytest.raises(dsl.SearchParseError):
        dsl.parse(query)


def test_dsl_precedence_and_wildcard_back_ends():
    tree = dsl.parse("sex:male OR sex:female age_approx:50")
    assert tree.op == "or" and tree.children[1].op == "and"
    tree = dsl.parse("sex:male AND age_approx:50 OR sex:female")
    assert tree.op == "or" and tree.children[0].op == "and"
    record = {"diagnosis_3": "Melanoma Invasive"}
    contains = dsl.parse("diagnosis_3:*noma*")
    assert dsl.matches(contains, record, "es") and not dsl.matches(contains, record, "sql")
    assert dsl.matches(dsl.parse('diagnosis_3:"*noma Invasive"'), record)
    suffix = dsl.parse("-diagnosis_3:*Invasive")  # SQL negates with startswith (server bug)
    assert dsl.matches(suffix, record, "sql") and not dsl.matches(suffix, record, "es")
    assert dsl.matches(dsl.parse("-sex:male"), {})  # negation matches missing values
    assert not dsl.matches(dsl.parse("sex:*"), {}) and dsl.matches(dsl.parse("-sex:*"), {})
    assert dsl.matches(dsl.parse("age_approx:[20 TO 40}"), {"age_approx": 20})
    assert not dsl.matches(dsl.parse("age_approx:[20 TO 40}"), {"age_approx": 40})
    assert dsl.matches(dsl.parse("mel_thick_mm:[0 TO 0.5]"), {"mel_thick_mm": "0.50"})
    assert dsl.matches(dsl.parse("image_type:clinical"), {"image_type": "clinical: close-up"})


def test_search_results_match_the_query(sb):
    everything = walk(sb, "/images/")
    males = walk(sb, "/images/search/?query=sex:male")
    assert males and all(r["metadata"]["clinical"]["sex"] == "male" for r in males)
    not_male = walk(sb, "/images/search/?query=-sex:male")
    assert len(males) + len(not_male) == len(everything)
    assert any("sex" not in r["metadata"]["clinical"] for r in not_male)
    ranged = walk(sb, "/images/search/?query=age_approx:[20 TO 40]")
    assert ranged and all(20 <= r["metadata"]["clinical"]["age_approx"] <= 40 for r in ranged)
    by = walk(sb, "/images/search/?query=copyright_license:CC-BY*")
    assert {r["copyright_license"] for r in by} == {"CC-BY", "CC-BY-NC"}
    prefix = everything[0]["isic_id"][:8]
    assert {r["isic_id"] for r in walk(sb, f"/images/search/?query=isic_id:{prefix}*")} == {
        r["isic_id"] for r in everything if r["isic_id"].startswith(prefix)}
    spitz = walk(sb, '/images/search/?query=diagnosis_4:"Nevus, Spitz"')
    assert all(r["metadata"]["clinical"]["diagnosis_4"] == "Nevus, Spitz" for r in spitz)
    clinical = walk(sb, "/images/search/?query=image_type:clinical")
    assert clinical and {r["metadata"]["acquisition"]["image_type"] for r in clinical} == {
        "clinical: close-up"}
    assert get(sb, "/images/search/?query=%20%20").json()["count"] == len(everything)


def test_collection_filter_is_a_union_and_drops_invisible_ids(sb):
    a = {r["isic_id"] for r in walk(sb, "/images/search/?collections=62")}
    b = {r["isic_id"] for r in walk(sb, "/images/search/?collections=64")}
    both = [r["isic_id"] for r in walk(sb, "/images/search/?collections=62,64")]
    assert set(both) == a | b and len(both) == len(set(both))
    assert [r["isic_id"] for r in walk(sb, "/images/search/?collections=62&collections=64")] \
        == both
    hidden = get(sb, "/images/search/?collections=171").json()
    assert hidden["results"] == [] and hidden["count"] == 0
    assert get(sb, "/images/search/?collections=171", SANDBOX_TOKEN).json()["count"] == 0
    assert get(sb, "/images/search/?collections=172", SANDBOX_TOKEN).json()["count"] > 0


def test_search_size_and_facets_come_from_the_nightly_index(sb):
    size = get(sb, "/images/search/size/").json()
    listed = walk(sb, "/images/")
    today = {r["isic_id"] for r in walk(sb, "/images/", STAFF_TOKEN)[-2:]}  # after midnight
    indexed = [r for r in listed if r["isic_id"] not in today]
    assert len(indexed) < len(listed)
    assert size == {"size": sum(r["files"]["full"]["size"] for r in indexed)}
    assert get(sb, "/images/search/size/?query=isic_id:NOPE").json() == {"size": 0}
    facets = get(sb, "/images/facets/").json()
    assert facets["sex"]["meta"]["present_count"] + facets["sex"]["meta"]["missing_count"] == \
        len(indexed)
    assert facets["mel_thick_mm"]["buckets"][-1]["to"] == "*"


# -- collections, lesions, licences, users, stats ------------------------------------------------

def test_collections_listing_orders_and_visibility(sb):
    public = walk(sb, "/collections/")
    assert all(list(c) == ["doi", "doi_url", "id", "name", "description", "public", "pinned",
                           "locked"] for c in public)
    assert all(c["public"] for c in public)
    assert public[0]["id"] == 66  # default: newest first
    names = [c["name"] for c in walk(sb, "/collections/?sort=name")]
    assert names == sorted(names)
    assert [c["id"] for c in walk(sb, "/collections/?sort=created")] == [
        c["id"] for c in reversed(public)]
    assert {c["id"] for c in walk(sb, "/collections/?pinned=true")} == {61, 62}
    doi = get(sb, "/collections/61/").json()
    assert doi["doi"] == "10.34970/245161" and doi["doi_url"] == "https://doi.org/10.34970/245161"
    mine = {c["id"] for c in walk(sb, "/collections/", SANDBOX_TOKEN)}
    assert {170, 172, 206} <= mine and 171 not in mine and 201 not in mine
    assert len(walk(sb, "/collections/", STAFF_TOKEN)) == 14
    page = get(sb, "/collections/?limit=2").json()
    assert page["count"] == len(public) and base64.b64decode(cursor_of(page["next"])).startswith(
        b"p=20")
    named = get(sb, "/collections/?sort=name&limit=1").json()
    assert base64.b64decode(cursor_of(named["next"])) == f"p={names[0]}".replace(
        " ", "+").replace(":", "%3A").replace("'", "%27").encode()


def test_lesions_have_a_count_on_every_page(sb):
    first = get(sb, "/lesions/?limit=2").json()
    second = get(sb, first["next"]).json()
    assert first["count"] == second["count"] and isinstance(first["count"], int)
    lesion = first["results"][0]
    assert list(lesion) == ["images", "images_count", "longitudinally_monitored",
                            "index_image_id", "outcome_diagnosis", "outcome_diagnosis_1", "id"]
    assert re.fullmatch(r"IL_\d{7}", lesion["id"])
    assert lesion["images_count"] == len(lesion["images"])
    assert all(image["public"] for lesion in walk(sb, "/lesions/") for image in lesion["images"])
    ids = [lesion["id"] for lesion in walk(sb, "/lesions/")]
    assert ids == sorted(ids)
    assert get(sb, f"/lesions/{ids[0]}/").json()["id"] == ids[0]


@pytest.mark.parametrize("name", sorted(LICENSE_SHA256))
def test_license_files_are_the_server_templates(sb, name):
    response = get(sb, f"/zip-download/license-file/{name}/",
                   headers={"Accept-Encoding": "identity"})
    assert response.headers["Content-Type"] == "text/plain"
    size, digest = LICENSE_SHA256[name]
    assert len(response.content) == size
    assert hashlib.sha256(response.content).hexdigest() == digest


def test_users_me_and_stats(sb):
    me = get(sb, "/users/me/", SANDBOX_TOKEN)
    assert me.text == ('{"created": "2021-03-04T17:22:10.123Z", "accepted_terms": null, '
                       '"hash_id": "SB2XK", "full_name": "Sandbox User", "id": 7, '
                       '"email": "sandbox-user@example.org", "first_name": "Sandbox", '
                       '"last_name": "User"}')
    stats = get(sb, "/stats/").json()
    assert list(stats) == ["image", "collection", "doi", "study", "user", "engagement"]
    assert stats["image"]["images_count"] == 130
    assert stats["image"]["public_images_count"] == get(sb, "/images/").json()["count"]
    assert get(sb, "/stats/", SANDBOX_TOKEN).json() == stats


# -- anonymous vs logged in; the file host ------------------------------------------------------

def test_token_sees_private_images_with_signed_urls(sb):
    anonymous = walk(sb, "/images/")
    mine = walk(sb, "/images/", SANDBOX_TOKEN)
    private = [r for r in mine if not r["public"]]
    assert private and len(mine) == len(anonymous) + len(private)
    assert [r["isic_id"] for r in mine if r["public"]] == [r["isic_id"] for r in anonymous]
    url = private[0]["files"]["full"]["url"]
    query = parse_qs(urlsplit(url).query)
    expires = int(query["Expires"][0])
    now = datetime.fromisoformat(get(sb, sb.root_url + "/__sandbox__/clock").json()["now"])
    assert expires % 86400 == 0 and 6 * 86400 < expires - now.timestamp() <= 7 * 86400
    assert set(query) == {"Expires", "Signature", "Key-Pair-Id"}
    assert get(sb, f"/images/{private[0]['isic_id']}/").status_code == 404
    assert get(sb, f"/images/{private[0]['isic_id']}/", SANDBOX_TOKEN).json() == private[0]
    for record in anonymous:
        assert record["files"]["full"]["url"] == (f"{sb.files_url}/images/"
                                                  f"{record['isic_id']}.jpg")
        assert record["files"]["thumbnail_256"]["url"] == (
            f"{sb.files_url}/thumbnails/{record['isic_id']}_thumbnail.jpg")
    assert len(walk(sb, "/images/", STAFF_TOKEN)) == 130


def test_public_files_are_real_jpegs_larger_than_the_recorded_size(sb):
    record = get(sb, "/images/?limit=1").json()["results"][0]
    response = requests.get(record["files"]["full"]["url"], timeout=30)
    assert response.status_code == 200
    data = response.content
    assert len(data) > record["files"]["full"]["size"]  # the credit block, as on the archive
    assert int(response.headers["Content-Length"]) == len(data)
    assert response.headers["ETag"] == f'"{hashlib.md5(data).hexdigest()}"'
    picture = PILImage.open(io.BytesIO(data))
    assert picture.format == "JPEG"
    assert picture.size == (record["metadata"]["acquisition"]["pixels_x"],
                            record["metadata"]["acquisition"]["pixels_y"])
    assert b"<photoshop:Source>ISIC Archive</photoshop:Source>" in data
    thumb = requests.get(record["files"]["thumbnail_256"]["url"], timeout=30)
    assert max(PILImage.open(io.BytesIO(thumb.content)).size) <= 256
    assert len(thumb.content) > record["files"]["thumbnail_256"]["size"]
    head = requests.head(record["files"]["full"]["url"], timeout=30)
    assert head.headers["Content-Length"] == str(len(data)) and head.content == b""
    part = requests.get(record["files"]["full"]["url"], headers={"Range": "bytes=10-19"},
                        timeout=30)
    assert part.status_code == 206 and part.content == data[10:20]
    assert part.headers["Content-Range"] == f"bytes 10-19/{len(data)}"
    same = requests.get(record["files"]["full"]["url"],
                        headers={"If-None-Match": response.headers["ETag"]}, timeout=30)
    assert same.status_code == 304 and same.content == b""
    missing = requests.get(f"{sb.files_url}/images/ISIC_0000000.jpg", timeout=30)
    assert missing.status_code == 403 and b"<Code>AccessDenied</Code>" in missing.content


def test_signed_urls_expire_with_the_sandbox_clock(fresh):
    private = [r for r in walk(fresh, "/images/", SANDBOX_TOKEN) if not r["public"]]
    url = private[0]["files"]["full"]["url"]
    assert requests.get(url, timeout=30).status_code == 200
    forged = re.sub(r"Signature=[^&]+", "Signature=AAAA", url)
    assert requests.get(forged, timeout=30).status_code == 403
    assert requests.get(url.split("?")[0], timeout=30).status_code == 403
    fresh.advance(6 * 86400)
    assert requests.get(url, timeout=30).status_code == 200  # valid more than six days
    fresh.advance(86400)
    expired = requests.get(url, timeout=30)
    assert expired.status_code == 403 and b"AccessDenied" in expired.content
    renewed = get(fresh, f"/images/{private[0]['isic_id']}/", SANDBOX_TOKEN).json()
    assert renewed["files"]["full"]["url"] != url  # Expires moved on: a new string
    assert requests.get(renewed["files"]["full"]["url"], timeout=30).status_code == 200


# -- mutations (§7.3) ---------------------------------------------------------------------------

def test_publicity_flip_lands_in_the_past(fresh):
    before = [r["isic_id"] for r in walk(fresh, "/images/")]
    second_to_last = get(fresh, "/images/?limit=10").json()
    saved_next = None
    while second_to_last["next"]:
        saved_next, second_to_last = second_to_last["next"], get(
            fresh, second_to_last["next"]).json()
    private = next(r for r in walk(fresh, "/images/", SANDBOX_TOKEN) if not r["public"])
    old_url = private["files"]["full"]["url"]
    stats = get(fresh, "/stats/").json()["image"]["public_images_count"]
    changed = fresh.mutate(publish_ids=[private["isic_id"]])
    assert changed["published"] == [private["isic_id"]]
    after = [r["isic_id"] for r in walk(fresh, "/images/")]
    assert len(after) == len(before) + 1
    assert after.index(private["isic_id"]) < len(after) - 1  # not appended: in the past
    replay = [r["isic_id"] for r in walk(fresh, saved_next.replace(fresh.url, ""))]
    assert private["isic_id"] not in replay  # a "new since" probe never sees it
    record = get(fresh, f"/images/{private['isic_id']}/").json()
    assert record["public"] is True
    assert record["files"]["full"]["url"] == f"{fresh.files_url}/images/{private['isic_id']}.jpg"
    assert requests.get(old_url, timeout=30).status_code == 403  # private objects deleted
    assert requests.get(record["files"]["full"]["url"], timeout=30).status_code == 200
    assert get(fresh, "/stats/").json()["image"]["public_images_count"] == stats + 1


def test_new_images_are_appended_and_found_by_a_saved_cursor(fresh):
    page = get(fresh, "/images/?limit=10").json()
    while get(fresh, page["next"]).json()["next"]:
        page = get(fresh, page["next"]).json()
    saved = page["next"]  # the next link of the second-to-last page
    count = get(fresh, "/images/").json()["count"]
    added = fresh.mutate(add=3)["added"]
    ids = [r["isic_id"] for r in walk(fresh, "/images/")]
    assert ids[-3:] == added
    assert [r["isic_id"] for r in walk(fresh, saved.replace(fresh.url, ""))][-3:] == added
    assert get(fresh, "/images/").json()["count"] == count + 3


def test_edits_happen_in_place(fresh):
    order = [r["isic_id"] for r in walk(fresh, "/images/")]
    victim = order[5]
    before = get(fresh, f"/images/{victim}/").json()
    fresh.mutate(edit_ids=[victim])
    after = get(fresh, f"/images/{victim}/").json()
    assert after["metadata"] != before["metadata"] and after["files"] == before["files"]
    assert [r["isic_id"] for r in walk(fresh, "/images/")] == order


def test_attribution_follows_the_cohort_and_licences_relax(fresh):
    records = walk(fresh, "/images/")
    barcelona = [r for r in records if r["attribution"] == "Hospital Cl\u00ednic de Barcelona"]
    assert barcelona
    fresh.mutate(reattribute_cohorts=[1])
    after = {r["isic_id"]: r for r in walk(fresh, "/images/")}
    assert all(after[r["isic_id"]]["attribution"].startswith("Hospital Cl\u00ednic de Barcelona "
                                                             "(rev ") for r in barcelona)
    strict = next(r for r in records if r["copyright_license"] == "CC-BY-NC")
    data = requests.get(strict["files"]["full"]["url"], timeout=30).content
    fresh.mutate(relicense_ids=[strict["isic_id"]])
    relaxed = get(fresh, f"/images/{strict['isic_id']}/").json()
    assert relaxed["copyright_license"] == "CC-BY"
    assert requests.get(strict["files"]["full"]["url"], timeout=30).content == data  # no re-embed


def test_collection_membership_changes_never_touch_records(fresh):
    before = {r["isic_id"]: r for r in walk(fresh, "/images/")}
    members = {r["isic_id"] for r in walk(fresh, "/images/search/?collections=64")}
    changed = fresh.mutate(collection=64, collect=2)
    assert len(changed["collected"]) == 2
    now = {r["isic_id"] for r in walk(fresh, "/images/search/?collections=64")}
    assert now == members | set(changed["collected"])
    gone = fresh.mutate(collection=64, uncollect_ids=changed["collected"][:1])["uncollected"]
    assert {r["isic_id"] for r in walk(fresh, "/images/search/?collections=64")} == now - set(gone)
    assert {r["isic_id"]: r for r in walk(fresh, "/images/")} == before
    private = next(r for r in walk(fresh, "/images/", STAFF_TOKEN) if not r["public"])
    with pytest.raises(ValueError, match="public"):
        fresh.mutate(collection=64, collect_ids=[private["isic_id"]])


def test_replaced_file_keeps_its_url(fresh):
    record = get(fresh, "/images/?limit=1").json()["results"][0]
    old = requests.get(record["files"]["full"]["url"], timeout=30)
    fresh.mutate(replace_ids=[record["isic_id"]])
    new_record = get(fresh, f"/images/{record['isic_id']}/").json()
    assert new_record["files"]["full"]["url"] == record["files"]["full"]["url"]
    assert new_record["files"]["full"]["size"] != record["files"]["full"]["size"]
    new = requests.get(record["files"]["full"]["url"], timeout=30)
    assert new.content != old.content and new.headers["ETag"] != old.headers["ETag"]


def test_deletion_is_a_404_and_the_id_is_never_reused(fresh):
    records = walk(fresh, "/images/")
    victim = records[3]
    size_before = get(fresh, "/images/search/size/").json()["size"]
    fresh.mutate(delete_ids=[victim["isic_id"]])
    assert get(fresh, f"/images/{victim['isic_id']}/").status_code == 404
    assert victim["isic_id"] not in {r["isic_id"] for r in walk(fresh, "/images/")}
    assert get(fresh, "/images/").json()["count"] == len(records) - 1
    added = fresh.mutate(add=30)["added"]
    assert victim["isic_id"] not in added
    fresh.mutate(midnight=True)
    size_after = get(fresh, "/images/search/size/").json()["size"]
    new_sizes = sum(r["files"]["full"]["size"] for r in walk(fresh, "/images/")
                    if r["isic_id"] in added)
    today = sum(r["files"]["full"]["size"] for r in records[-2:])
    assert size_after == size_before + new_sizes + today  # the deleted image still counts


def test_search_size_lags_until_midnight_and_es_counts_lag(fresh):
    size = get(fresh, "/images/search/size/").json()["size"]
    fresh.mutate(add=2)
    assert get(fresh, "/images/search/size/").json()["size"] == size
    fresh.mutate(advance=3600)  # same day
    assert get(fresh, "/images/search/size/").json()["size"] == size
    fresh.mutate(midnight=True)
    assert get(fresh, "/images/search/size/").json()["size"] > size
    lagging = start(images=20, seed=1, es_counts=True)
    try:
        listed = walk(lagging, "/images/")
        today = {r["isic_id"] for r in walk(lagging, "/images/", STAFF_TOKEN)[-2:]}
        true_count = len(listed)
        lag = sum(r["isic_id"] in today for r in listed)
        assert lag and get(lagging, "/images/").json()["count"] == true_count - lag
        lagging.mutate(midnight=True)
        assert get(lagging, "/images/").json()["count"] == true_count
    finally:
        lagging.stop()


def test_doi_publish_opens_the_collection_and_its_images(fresh):
    hidden = walk(fresh, "/images/search/?collections=171", STAFF_TOKEN)
    assert hidden and not any(r["public"] for r in hidden)
    published = fresh.mutate(doi=171)["doi_published"]
    assert set(published) == {r["isic_id"] for r in hidden}
    collection = get(fresh, "/collections/171/").json()
    assert collection["public"] is True and collection["doi"].startswith("10.34970/")
    assert {r["isic_id"] for r in walk(fresh, "/images/search/?collections=171")} == set(
        published)


def test_control_routes(fresh):
    control = fresh.root_url + "/__sandbox__"
    requests.post(control + "/stats/reset", timeout=30)
    get(fresh, "/images/?limit=1")
    get(fresh, "/images/?limit=2")
    stats = requests.get(control + "/stats", timeout=30).json()
    assert stats == {"GET /images/": 2, "total": 2}
    changed = requests.post(control + "/mutate", json={"add": 1}, timeout=30).json()
    assert len(changed["added"]) == 1
    bad = requests.post(control + "/mutate", json={"explode": 1}, timeout=30)
    assert bad.status_code == 400 and "explode" in bad.json()["message"]
    assert "publish" in requests.get(control + "/mutations", timeout=30).json()


def test_same_seed_same_archive():
    one, two = start(images=15, seed=9), start(images=15, seed=9)
    try:
        a = get(one, "/images/").text.replace(one.files_url, "F").replace(one.url, "U")
        b = get(two, "/images/").text.replace(two.files_url, "F").replace(two.url, "U")
        assert a == b
        first = json.loads(a)["results"][0]["isic_id"]
        assert requests.get(f"{one.files_url}/images/{first}.jpg", timeout=30).content == \
            requests.get(f"{two.files_url}/images/{first}.jpg", timeout=30).content
    finally:
        one.stop()
        two.stop()


# -- faults, hostile answers, the command line ---------------------------------------------------

def test_faults_and_latency():
    failing = start(images=5, faults="500=1", latency=0.05)
    try:
        response = get(failing, "/images/")
        assert response.status_code == 500 and b"Server Error (500)" in response.content
        assert response.elapsed.total_seconds() >= 0.05
    finally:
        failing.stop()
    resetting = start(images=5, faults="reset=1,match=/images/")
    try:
        with pytest.raises(requests.ConnectionError):
            get(resetting, "/images/")
        assert get(resetting, "/collections/").status_code == 200
    finally:
        resetting.stop()
    with pytest.raises(ValueError, match="bad fault"):
        start(images=1, faults="teapot=1")


def test_hostile_answers():
    hostile = start(images=60, seed=2, hostile="types,ids,endless")
    try:
        first = get(hostile, "/images/?limit=100").json()
        assert isinstance(first["count"], str)
        assert first["next"] == hostile.url + "/images/?limit=100"  # never ends
        records = first["results"]
        assert any(isinstance(r.get("metadata"), list) or isinstance(r.get("public"), str)
                   or isinstance(r["files"]["full"]["size"], str) for r in records)
        assert any(r["isic_id"] in ("../x", "ISIC_1\n", "..\\..\\x", "/etc/passwd",
                                    "ISIC_\x000000001", "ISIC_0000001/../../escaped")
                   or not r["files"]["full"]["url"].startswith(hostile.files_url)
                   for r in records)
    finally:
        hostile.stop()
    huge = start(images=3, hostile="huge")
    try:
        assert len(get(huge, "/images/").json()["results"][0]["attribution"]) == 32 << 20
    finally:
        huge.stop()


def test_main_prints_the_url_first_and_stops_on_sigterm():
    process = subprocess.Popen([sys.executable, "-m", "mirror.sources.isic_v2.sandbox",
                                "--images", "5"], stdout=subprocess.PIPE, text=True)
    try:
        url = process.stdout.readline().strip()
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/api/v2", url)
        assert requests.get(url + "/images/", timeout=30).json()["count"] >= 1
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        process.kill()
        process.stdout.close()


def test_bucket_ranges_and_methods(fresh):
    record = get(fresh, "/images/?limit=1").json()["results"][0]
    url = record["files"]["full"]["url"]
    data = requests.get(url, timeout=30).content
    tail = requests.get(url, headers={"Range": "bytes=-5"}, timeout=30)
    assert tail.status_code == 206 and tail.content == data[-5:]
    beyond = requests.get(url, headers={"Range": f"bytes={len(data)}-"}, timeout=30)
    assert beyond.status_code == 416 and beyond.headers["Content-Range"] == f"bytes */{len(data)}"
    assert requests.put(url, data=b"x", timeout=30).status_code == 405
    fresh.mutate(delete_ids=[record["isic_id"]])
    assert requests.get(url, timeout=30).content == data  # nothing deletes the S3 objects


def test_run_forever_takes_the_v1_keyword_interface():
    code = ("from mirror.sources.isic_v2.sandbox import run_forever; "
            "run_forever(images=3, seed=2, faults='', hostile=None, private_fraction=0.1)")
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        url = process.stdout.readline().strip()
        assert url.endswith("/api/v2")
        assert requests.get(url + "/stats/", timeout=30).json()["image"]["images_count"] == 3
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=10) == 0
    finally:
        process.kill()
        process.stdout.close()


def test_every_edit_changes_its_record(fresh):
    before = {r["isic_id"]: r for r in walk(fresh, "/images/")}
    edited = fresh.mutate(edit=len(before))["edited"]
    after = {r["isic_id"]: r for r in walk(fresh, "/images/")}
    public = [i for i in edited if i in before]
    assert public and all(after[i]["metadata"] != before[i]["metadata"] for i in public)
