"""The sandbox's routes and data that issue 18 found missing or untrue to the real API."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import requests

from mirror.sources.isic_v1.sandbox import SANDBOX_LOGIN, SANDBOX_PASSWORD, serve

RECORDED = Path("/work/shared/data/isic-v1-recorded/images-sample.json.gz")


def _token(url: str) -> dict:
    auth = requests.get(f"{url}/user/authentication", auth=(SANDBOX_LOGIN, SANDBOX_PASSWORD),
                        timeout=10).json()
    return {"Girder-Token": auth["authToken"]["token"]}


@pytest.fixture(scope="module")
def sb():
    with serve(images=40, seed=5, private_fraction=0.3) as sandbox:
        yield sandbox


def test_histogram_is_routed_and_counts_what_the_caller_may_read(sb):
    anonymous = requests.get(f"{sb.url}/image/histogram", timeout=30).json()
    logged_in = requests.get(f"{sb.url}/image/histogram", headers=_token(sb.url),
                             timeout=30).json()
    public = sum(not sb.archive.is_private(i) for i in sb.archive.listed())
    assert anonymous["__passedFilters__"] == [{"count": public, "label": "count"}]
    assert logged_in["__passedFilters__"][0]["count"] == 40
    for facet in ("meta.datasetId", "meta.clinical.diagnosis", "meta.clinical.age_approx",
                  "meta.acquisition.image_type"):
        bins = anonymous[facet]
        assert sum(b["count"] for b in bins) == public  # every image in exactly one bin
        labels = [b["label"] for b in bins]
        assert None not in labels[:-1]  # null last
    ages = [b for b in anonymous["meta.clinical.age_approx"] if b["label"] is not None]
    assert all(b["label"] == f"[{b['lowBound']} - {b['highBound']})" for b in ages)
    assert sum(b["count"] for b in anonymous["meta.tags"]) >= public  # unwound


def test_logged_in_only_dataset_routes_answer_401_to_anonymous_callers(sb):
    dataset = sb.archive.datasets()[0]["_id"]
    for route in ("access", "metadata", "review"):
        anonymous = requests.get(f"{sb.url}/dataset/{dataset}/{route}", timeout=10)
        assert anonymous.status_code == 401
        assert anonymous.json() == {"message": "You must be logged in.", "type": "access"}
        user = requests.get(f"{sb.url}/dataset/{dataset}/{route}", headers=_token(sb.url),
                            timeout=10)
        assert user.status_code == 403 and user.json()["type"] == "access"


def test_segmentation_thumbnail_and_rendered_markups(sb):
    i = next(i for i in sb.archive.listed() if not sb.archive.is_private(i))
    seg = sb.archive.segmentation_id(i, 0)
    thumb = requests.get(f"{sb.url}/segmentation/{seg}/thumbnail", params={"width": 128},
                         timeout=30)
    assert thumb.status_code == 200 and thumb.content[:3] == b"\xff\xd8\xff"
    study = requests.get(f"{sb.url}/study", timeout=10).json()[0]
    annotations = requests.get(f"{sb.url}/annotation", params={
        "studyId": study["_id"], "detail": "true"}, timeout=30).json()
    marked = next(a for a in annotations if a["state"] == "complete" and any(a["markups"].values()))
    feature = requests.utils.quote(next(f for f, on in marked["markups"].items() if on), safe="")
    for path in (f"markup/{feature}/rendered", f"{feature}/render"):
        got = requests.get(f"{sb.url}/annotation/{marked['_id']}/{path}", timeout=30)
        assert got.status_code == 200 and got.headers["Content-Type"] == "image/jpeg"
        assert got.headers["Content-Disposition"].startswith("inline; filename=\"annotation_")


def test_public_studies_hold_public_images_only(sb):
    for study in requests.get(f"{sb.url}/study", params={"detail": "true"}, timeout=30).json():
        ids = [img["_id"] for img in study["images"]]
        assert ids and not any(sb.archive.is_private(sb.archive.image_index(x)) for x in ids)
        for image_id in ids:  # an anonymous caller may read every image of the study
            assert requests.get(f"{sb.url}/image/{image_id}", timeout=10).status_code == 200


def test_silent_changes_keep_updated_and_the_old_update_still_moves_it(sb):
    i = sb.archive.listed()[-1]
    image_id = sb.archive.image_id(i)
    before = sb.archive.image_detail(i)
    out = sb.mutate(metadata={image_id: {"sex": "female"}}, renames={image_id: "ISIC_7654321"},
                    reviews=[image_id], segment=[image_id])
    after = requests.get(f"{sb.url}/image/{image_id}", headers=_token(sb.url), timeout=10).json()
    assert after["updated"] == before["updated"] and after["name"] == "ISIC_7654321"
    assert after["notes"]["reviewed"] != before["notes"]["reviewed"]
    listed = requests.get(f"{sb.url}/segmentation", params={"imageId": image_id},
                          headers=_token(sb.url), timeout=10).json()
    assert listed[0]["_id"] == out["segmented"][0]  # newest first, as the archive sorts
    sb.mutate(update_ids=[image_id])
    assert sb.archive.image_detail(i)["updated"] != before["updated"]


@pytest.mark.skipif(not RECORDED.exists(), reason="no recorded sample here")
def test_records_keep_names_and_attribution_and_logging_in_adds_nothing(tmp_path):
    records = json.loads(gzip.decompress(RECORDED.read_bytes()))
    first = sorted(records)[:40]
    sample = {k: records[k] for k in first}
    carried = sample[first[0]]["dataset"]["_id"]
    for doc in sample.values():
        if doc["dataset"]["_id"] == carried:
            doc["dataset"]["attribution"] = "Recorded Attribution"
    path = tmp_path / "records.json"
    path.write_text(json.dumps(sample))
    with serve(records=str(path)) as sb:
        for image_id in first[::7]:
            got = requests.get(f"{sb.url}/image/{image_id}/download", timeout=30)
            assert got.headers["Content-Disposition"] == \
                f'attachment; filename="{records[image_id]["name"]}.jpg"'
        token = _token(sb.url)
        for resource in ("dataset", "study", "image"):
            params = {"limit": 0, "detail": "true"}
            anonymous = requests.get(f"{sb.url}/{resource}", params=params, timeout=30).json()
            logged_in = requests.get(f"{sb.url}/{resource}", params=params, headers=token,
                                     timeout=30).json()
            assert anonymous == logged_in
        datasets = {d["_id"]: d for d in anonymous_datasets(sb.url)}
    assert datasets[carried]["attribution"] == "Recorded Attribution"


def anonymous_datasets(url: str) -> list[dict]:
    return requests.get(f"{url}/dataset", params={"limit": 0, "detail": "true"},
                        timeout=30).json()


def test_the_bulk_detail_listing_serves_each_image_document_as_image_id_does(sb):
    """Research §4.1: ``image?detail=true`` renders ``Image.filter``, as ``image/{id}`` does;
    the sync's change detection rests on it. Paged by ``_id`` as the sync pages it."""
    pages = [requests.get(f"{sb.url}/image", params={"detail": "true", "limit": 7,
                                                     "offset": offset, "sort": "_id",
                                                     "sortdir": 1}, timeout=30).json()
             for offset in range(0, 40, 6)]
    for previous, page in zip(pages, pages[1:], strict=False):
        if page:
            assert page[0]["_id"] == previous[-1]["_id"]  # pages overlap by one item
    listed = {d["_id"]: d for page in pages for d in page}
    assert len(listed) == sum(not sb.archive.is_private(i) for i in sb.archive.listed())
    for image_id, doc in list(listed.items())[::5]:
        assert requests.get(f"{sb.url}/image/{image_id}", timeout=10).json() == doc
