"""Route by route, ``mirror serve`` of a synced mirror answers as the sandbox it was synced
from: same status, same body bytes, same Content-Type / Content-Disposition /
Content-Length. Both faces run the one route table (mirror/sources/isic_v1/shape.py); what
differs is the backend (generated data vs the index and the store)."""

from __future__ import annotations

import json

import pytest
import requests

HEADERS = ("Content-Type", "Content-Disposition", "Content-Length")


def both(pair, path: str, **kwargs) -> tuple[requests.Response, requests.Response]:
    sb, url, _ = pair
    return (requests.get(f"{sb.url}/{path}", timeout=30, **kwargs),
            requests.get(f"{url}/api/v1/{path}", timeout=30, **kwargs))


def assert_same(pair, path: str, **kwargs) -> requests.Response:
    ours, served = both(pair, path, **kwargs)
    assert (served.status_code, path) == (ours.status_code, path)
    assert served.content == ours.content, path
    for header in HEADERS:
        assert served.headers.get(header) == ours.headers.get(header), (path, header)
    return ours


@pytest.fixture(scope="module")
def ids(pair):
    sb = pair[0]
    images = requests.get(f"{sb.url}/image", params={"limit": 0}, timeout=30).json()
    segs = [s for i in images for s in requests.get(
        f"{sb.url}/segmentation", params={"imageId": i["_id"]}, timeout=30).json()]
    studies = requests.get(f"{sb.url}/study", timeout=30).json()
    annotations = requests.get(f"{sb.url}/annotation", params={
        "studyId": studies[0]["_id"], "detail": "true"}, timeout=30).json()
    return {"images": [i["_id"] for i in images], "segs": segs, "studies": studies,
            "annotations": annotations}


LISTINGS = [
    "image", "image?limit=0", "image?limit=4&offset=3&sort=_id",
    "image?limit=0&sort=created&sortdir=-1", "image?detail=true&limit=5",
    "image?sort=meta.clinical.age_approx", "image?sortdir=2", "image?limit=x",
    "image?limit=1&limit=2", "image/histogram",
    "image/not-an-id", "image/" + "0" * 24, "image/x/y/z", "nonexistent", "segmentation",
    "segmentation/" + "0" * 24, "dataset", "dataset?limit=0&detail=true",
    "dataset?sort=updated&sortdir=-1&limit=3", "study", "study?detail=true",
    "study?state=complete", "study?state=nope", "annotation", "user/authentication",
    "user/me",
]


@pytest.mark.parametrize("path", LISTINGS)
def test_listings_and_errors_agree(pair, path):
    assert_same(pair, path)


def test_wrong_login_is_refused_alike(pair):
    assert assert_same(pair, "user/authentication", auth=("someone", "wrong")).status_code == 401


def test_images_agree_document_and_file(pair, ids):
    for image_id in ids["images"][:6]:
        assert_same(pair, f"image/{image_id}")
        assert_same(pair, f"image/{image_id}/download")
        assert_same(pair, f"image/{image_id}/download?contentDisposition=inline")
        assert_same(pair, f"image/{image_id}/thumbnail")
        assert_same(pair, f"image/{image_id}/superpixels")
        assert_same(pair, f"segmentation?imageId={image_id}")
        assert_same(pair, f"segmentation?imageId={image_id}&limit=1&sortdir=1")
    chosen = json.dumps(ids["images"][2:5])
    assert_same(pair, f"image?imageIds={requests.utils.quote(chosen)}&detail=true")
    name = requests.get(f"{pair[0].url}/image/{ids['images'][3]}", timeout=30).json()["name"]
    assert_same(pair, f"image?name={name}")


def test_segmentations_agree_detail_and_mask(pair, ids):
    assert ids["segs"]
    for seg in ids["segs"]:
        assert_same(pair, f"segmentation/{seg['_id']}")
        assert_same(pair, f"segmentation/{seg['_id']}/mask")  # a failed one: 410 alike
        assert_same(pair, f"segmentation/{seg['_id']}/mask?contentDisposition=inline")


def test_datasets_and_studies_agree(pair, ids):
    for dataset in requests.get(f"{pair[0].url}/dataset", timeout=30).json()[:4]:
        assert_same(pair, f"dataset/{dataset['_id']}")
        assert_same(pair, f"dataset/{dataset['_id']}/access")  # anonymous: 401 alike
    for study in ids["studies"]:
        assert_same(pair, f"study/{study['_id']}")
        assert_same(pair, f"annotation?studyId={study['_id']}")
        assert_same(pair, f"annotation?studyId={study['_id']}&detail=true&state=complete")


def test_annotations_and_markups_agree(pair, ids):
    checked = 0
    for annotation in ids["annotations"][:12]:
        assert_same(pair, f"annotation/{annotation['_id']}")
        for feature, marked in (annotation.get("markups") or {}).items():
            quoted = requests.utils.quote(feature, safe="")
            assert_same(pair, f"annotation/{annotation['_id']}/markup/{quoted}/superpixels")
            assert_same(pair, f"annotation/{annotation['_id']}/{quoted}")  # deprecated alias
            if marked:
                assert_same(pair, f"annotation/{annotation['_id']}/markup/{quoted}")
                checked += 1
    assert checked  # at least one marked feature: its PNG mask is the same bytes


def test_what_the_mirror_does_not_implement_it_says_so_with_what_to_use(pair, ids):
    ours, served = both(pair, "image?filter=%5B%5D")
    assert ours.status_code == served.status_code == 400
    assert ours.json()["message"] == "The sandbox does not implement the filter query language."
    assert served.json() == {"type": "rest", "message": (
        "This mirror does not implement the filter query language. Select with the browse "
        "page (/) or 'mirror query --where FIELD OP VALUE' on the mirror's host.")}
    study = ids["studies"][0]["_id"]
    assert both(pair, f"study/{study}?format=csv")[1].json()["message"] == \
        "This mirror serves studies as JSON only."
