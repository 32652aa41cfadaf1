"""Pin the sandbox to the documented ISIC v1 API, using plain requests like the sample code."""

from __future__ import annotations

import io
import json
import re
import signal
import subprocess
import sys

import numpy as np
import pytest
import requests
from PIL import Image

from mirror.sources.isic_v1.sandbox import SANDBOX_LOGIN, SANDBOX_PASSWORD, serve
from mirror.sources.isic_v1.superpixels import decode_png

OBJECT_ID = re.compile(r"^[0-9a-f]{24}$")


@pytest.fixture(scope="module")
def sb():
    with serve(images=90, seed=3, private_fraction=0.25) as sandbox:
        yield sandbox


@pytest.fixture(scope="module")
def token(sb):
    return requests.get(f"{sb.url}/user/authentication", auth=(SANDBOX_LOGIN, SANDBOX_PASSWORD),
                        timeout=10).json()["authToken"]["token"]


def get(sb, path, token=None, **params):
    headers = {"Girder-Token": token} if token else {}
    return requests.get(f"{sb.url}/{path}", params=params, headers=headers, timeout=30)


# -- lists, paging, sorting ----------------------------------------------------------------

def test_image_list_is_a_bare_array_of_summaries_with_default_limit_50(sb):
    r = get(sb, "image")
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/json"
    assert "Girder-Total-Count" not in r.headers and "Girder-Request-Uid" in r.headers
    items = r.json()
    assert isinstance(items, list) and len(items) == 50
    assert all(set(i) == {"_id", "name", "updated"} and OBJECT_ID.match(i["_id"]) for i in items)
    assert [i["name"] for i in items] == sorted(i["name"] for i in items)


def test_limit_zero_means_everything_and_paging_stops_on_a_short_page(sb):
    everything = get(sb, "image", limit=0).json()
    pages, offset = [], 0
    while True:
        page = get(sb, "image", limit=7, offset=offset, sort="_id").json()
        pages += page
        if len(page) < 7:
            break
        offset += 7
    assert [p["_id"] for p in pages] == sorted(i["_id"] for i in everything)


def test_sort_whitelist_and_sortdir(sb):
    down = get(sb, "image", limit=0, sort="created", sortdir=-1).json()
    assert [i["name"] for i in down] == sorted((i["name"] for i in down), reverse=True)
    bad = get(sb, "image", sort="meta.clinical.age_approx")
    assert bad.status_code == 400
    assert bad.json() == {"message": 'Sort may only be done on "_id", "name", or "created" '
                                     'fields.', "type": "rest"}
    assert get(sb, "image", sortdir=2).json()["message"] == "Invalid value for sortdir parameter."


def test_repeated_parameters_are_refused(sb):
    r = requests.get(f"{sb.url}/image?limit=1&limit=2", timeout=10)
    assert r.status_code == 400
    assert r.json()["message"] == 'Parameter "limit" must not be specified multiple times.'


def test_name_and_image_ids_filters(sb):
    first = get(sb, "image", limit=3).json()
    assert get(sb, "image", name=first[1]["name"]).json() == [first[1]]
    ids = json.dumps([f["_id"] for f in first])
    detail = get(sb, "image", imageIds=ids, detail="true", limit=0).json()
    assert [d["_id"] for d in detail] == [f["_id"] for f in first]
    assert all(d["_modelType"] == "image" for d in detail)
    too_many = get(sb, "image", imageIds=json.dumps([first[0]["_id"]] * 301))
    assert too_many.status_code == 400 and too_many.json()["field"] == "imageIds"


# -- details and errors ----------------------------------------------------------------------

def test_image_detail_shape(sb):
    summary = get(sb, "image", limit=1).json()[0]
    doc = get(sb, f"image/{summary['_id']}").json()
    assert list(doc) == sorted(doc)  # Girder sorts keys
    assert set(doc) == {"_id", "_modelType", "created", "creator", "dataset", "meta", "name",
                        "notes", "updated"}
    assert set(doc["dataset"]) == {"_accessLevel", "_id", "description", "license", "name",
                                   "updated"}
    assert set(doc["notes"]) == {"reviewed", "tags"} and doc["notes"]["reviewed"]["accepted"]
    assert {"acquisition", "clinical"} <= set(doc["meta"])
    assert doc["updated"] == summary["updated"]


def test_girder_errors(sb):
    assert get(sb, "image/not-an-id").json() == {
        "field": "id", "message": "Invalid ObjectId: not-an-id", "type": "validation"}
    unknown = get(sb, "image/" + "0" * 24)
    assert unknown.status_code == 400
    assert unknown.json() == {"message": f"Invalid item id ({'0' * 24}).", "type": "rest"}
    seg = get(sb, "segmentation/" + "0" * 24).json()
    assert seg == {"message": f"Invalid segmentation id ({'0' * 24}).", "type": "rest"}
    assert "_id" not in seg
    route = get(sb, "image/x/y/z")
    assert route.status_code == 400 and route.json()["message"] == 'No matching route for ' \
        '"GET x/y/z"'
    missing = get(sb, "nonexistent")
    assert missing.status_code == 404 and missing.headers["Content-Type"] == "text/html"
    required = get(sb, "segmentation")
    assert required.json() == {"message": 'Parameter "imageId" is required.', "type": "rest"}


# -- auth ------------------------------------------------------------------------------------

def test_login_and_me(sb, token):
    assert re.fullmatch(r"[A-Za-z0-9]{64}", token)
    body = requests.get(f"{sb.url}/user/authentication", auth=(SANDBOX_LOGIN, SANDBOX_PASSWORD),
                        timeout=10).json()
    assert body["message"] == "Login succeeded."
    assert set(body["authToken"]) == {"expires", "scope", "token"}
    assert body["user"]["login"] == SANDBOX_LOGIN and "permissions" in body["user"]
    assert get(sb, "user/me").json() is None
    assert get(sb, "user/me", token=token).json()["login"] == SANDBOX_LOGIN
    bad = requests.get(f"{sb.url}/user/authentication", auth=(SANDBOX_LOGIN, "wrong"), timeout=10)
    assert bad.status_code == 401 and bad.json() == {"message": "Login failed.",
                                                     "type": "access"}
    none = get(sb, "user/authentication")
    assert none.status_code == 401 and none.json()["message"] == "Use HTTP Basic Authentication"


def test_private_images_need_a_token_and_bad_tokens_are_anonymous(sb, token):
    anon = {i["_id"] for i in get(sb, "image", limit=0).json()}
    auth = {i["_id"] for i in get(sb, "image", limit=0, token=token).json()}
    via_param = {i["_id"] for i in get(sb, "image", limit=0, token=token).json()}
    assert anon < auth and auth == via_param
    assert {i["_id"] for i in get(sb, "image", limit=0, token="x" * 64).json()} == anon
    private = sorted(auth - anon)[0]
    denied = get(sb, f"image/{private}")
    assert denied.status_code == 401 and denied.json()["type"] == "access"
    assert get(sb, f"image/{private}", token=token).status_code == 200
    query = requests.get(f"{sb.url}/image/{private}", params={"token": token}, timeout=10)
    assert query.status_code == 200
    names = {d["name"] for d in get(sb, "dataset", limit=0, token=token).json()}
    assert names - {d["name"] for d in get(sb, "dataset", limit=0).json()}


# -- files -----------------------------------------------------------------------------------

def test_download_is_a_jpeg_of_the_advertised_size(sb):
    doc = get(sb, "image", limit=1, detail="true").json()[0]
    r = get(sb, f"image/{doc['_id']}/download")
    assert r.headers["Content-Type"] == "image/jpeg"
    assert r.headers["Content-Disposition"] == f'attachment; filename="{doc["name"]}.jpg"'
    assert int(r.headers["Content-Length"]) == len(r.content)
    assert r.content[:3] == b"\xff\xd8\xff"
    with Image.open(io.BytesIO(r.content)) as img:
        assert img.size == (doc["meta"]["acquisition"]["pixelsX"],
                            doc["meta"]["acquisition"]["pixelsY"])
    thumb = get(sb, f"image/{doc['_id']}/thumbnail")
    with Image.open(io.BytesIO(thumb.content)) as img:
        assert max(img.size) == 256 and thumb.headers["Content-Type"] == "image/jpeg"


def test_superpixels_are_about_1000_contiguous_labels_of_image_size(sb):
    for doc in get(sb, "image", limit=3, detail="true").json():
        r = get(sb, f"image/{doc['_id']}/superpixels")
        assert r.headers["Content-Type"] == "image/png"
        assert r.headers["Content-Disposition"].endswith(f'{doc["name"]}_superpixels_v3.0.png"')
        acq = doc["meta"]["acquisition"]
        idx = decode_png(r.content, expected_shape=(acq["pixelsY"], acq["pixelsX"]))
        assert 900 <= idx.max() + 1 <= 1100
        assert np.unique(idx).size == idx.max() + 1


def test_segmentations_list_detail_and_mask(sb):
    doc = get(sb, "image", limit=1, detail="true").json()[0]
    items = get(sb, "segmentation", imageId=doc["_id"]).json()
    assert items and all(set(s) == {"_id", "created", "failed", "skill"} for s in items)
    assert [s["created"] for s in items] == sorted((s["created"] for s in items), reverse=True)
    for item in items:
        detail = get(sb, f"segmentation/{item['_id']}").json()
        assert set(detail) == {"_id", "created", "creator", "failed", "imageId", "meta",
                               "reviews"}
        mask = get(sb, f"segmentation/{item['_id']}/mask")
        if item["failed"]:
            assert mask.status_code == 410
            continue
        with Image.open(io.BytesIO(mask.content)) as img:
            assert img.mode == "L"
            assert img.size == (doc["meta"]["acquisition"]["pixelsX"],
                                doc["meta"]["acquisition"]["pixelsY"])
            assert set(np.unique(np.asarray(img))) <= {0, 255}


# -- studies and annotations -------------------------------------------------------------------

def test_studies_annotations_and_markups(sb, token):
    public = get(sb, "study").json()
    everything = get(sb, "study", token=token, detail="true").json()
    assert len(public) < len(everything)
    assert all(set(s) == {"_id", "description", "name", "updated"} for s in public)
    study = next(s for s in everything if s["name"] == public[0]["name"])
    assert {"features", "images", "questions", "users", "userCompletion"} <= set(study)
    annotations = get(sb, "annotation", studyId=study["_id"], detail="true").json()
    done = [a for a in annotations if a["state"] == "complete"]
    assert done and all({"markups", "responses", "status", "startTime"} <= set(a) for a in done)
    marked = next(a for a in done if any(a["markups"].values()))
    feature = next(f for f, present in marked["markups"].items() if present)
    path = requests.utils.quote(feature, safe="")
    values = get(sb, f"annotation/{marked['_id']}/markup/{path}/superpixels").json()
    assert set(values) <= {0.0, 0.5, 1.0} and 1.0 in values
    assert get(sb, f"annotation/{marked['_id']}/{path}").json() == values  # deprecated alias
    image = get(sb, f"image/{marked['image']['_id']}/superpixels")
    assert len(values) == decode_png(image.content).max() + 1
    png = get(sb, f"annotation/{marked['_id']}/markup/{path}")
    with Image.open(io.BytesIO(png.content)) as img:
        assert set(np.unique(np.asarray(img))) <= {0, 128, 255}
    summary = get(sb, "annotation", studyId=study["_id"]).json()[0]
    assert set(summary) == {"_id", "imageId", "state", "studyId", "userId"}


# -- faults, mutations, determinism, CLI -------------------------------------------------------

def test_faults_happen_at_about_the_configured_rates():
    spec = "500=0.1,429=0.1,retry_after=0"
    with serve(images=5, seed=1, faults=spec) as sandbox:
        codes = [requests.get(f"{sandbox.url}/dataset", timeout=10).status_code
                 for _ in range(400)]
        control = requests.get(f"{sandbox.root_url}/__sandbox__/stats", timeout=10)
    assert 20 <= codes.count(500) <= 60 and 20 <= codes.count(429) <= 60
    assert control.status_code == 200


def test_resets_and_truncated_bodies_break_the_connection():
    with serve(images=5, seed=1, faults="truncate=0.5,reset=0.5") as sandbox:
        errors = 0
        for _ in range(20):
            try:
                requests.get(f"{sandbox.url}/image", params={"limit": 0}, timeout=10).json()
            except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError,
                    ValueError):
                errors += 1
    assert errors == 20


def test_mutations_are_visible_over_http(sb):
    with serve(images=10, seed=2, private_fraction=0.0) as sandbox:
        before = {i["_id"]: i for i in get(sandbox, "image", limit=0).json()}
        changes = requests.post(f"{sandbox.root_url}/__sandbox__/mutate",
                                json={"add": 2, "update": 1, "remove": 1}, timeout=10).json()
        after = {i["_id"]: i for i in get(sandbox, "image", limit=0).json()}
    assert set(after) == set(before) - set(changes["removed"]) | set(changes["added"])
    changed = changes["updated"][0]
    assert after[changed]["updated"] > before[changed]["updated"]
    assert get(sb, f"image/{changes['removed'][0]}").status_code == 400


def test_same_seed_serves_the_same_bytes():
    def fingerprint(sandbox):
        import hashlib

        h = hashlib.sha256()
        images = get(sandbox, "image", limit=0, detail="true")
        h.update(images.content)
        for doc in images.json()[:4]:
            for suffix in ("", "/download", "/thumbnail", "/superpixels"):
                h.update(get(sandbox, f"image/{doc['_id']}{suffix}").content)
            for seg in get(sandbox, "segmentation", imageId=doc["_id"]).json():
                h.update(get(sandbox, f"segmentation/{seg['_id']}/mask").content)
        h.update(get(sandbox, "study", detail="true").content)
        return h.hexdigest()

    with serve(images=12, seed=5) as a, serve(images=12, seed=5) as b, \
            serve(images=12, seed=6) as c:
        assert fingerprint(a) == fingerprint(b) != fingerprint(c)


def test_cli_prints_the_url_first_and_stops_on_sigterm():
    child = subprocess.Popen([sys.executable, "-m", "mirror", "sandbox", "--port", "0",
                              "--images", "10"], stdout=subprocess.PIPE, text=True)
    try:
        first = child.stdout.readline().strip()
        assert re.fullmatch(r"sandbox: http://127\.0\.0\.1:\d+/api/v1", first)
        url = first.split()[-1]
        assert len(requests.get(f"{url}/image", params={"limit": 0}, timeout=10).json()) > 0
    finally:
        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=10) == 0


def test_a_large_archive_starts_at_once_and_is_generated_lazily():
    import time

    started = time.monotonic()
    with serve(images=100_000, seed=9, private_fraction=0.0) as big:
        first = get(big, "image", limit=5).json()
        last = get(big, "image", limit=1, sortdir=-1).json()[0]
        detail = get(big, f"image/{last['_id']}").json()
    assert time.monotonic() - started < 20
    assert first[0]["name"] == "ISIC_0000000" and detail["name"] == "ISIC_0099999"
