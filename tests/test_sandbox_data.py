"""Generated records against the real recorded ones, field by field."""

from __future__ import annotations

import gzip
import json
import re
from collections import Counter
from pathlib import Path

import pytest

from mirror.sources.isic_v1.sandbox.data import Archive

RECORDED = Path(__file__).resolve().parents[2] / "shared" / "data" / "isic-v1-recorded"
DATE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3}000)?\+00:00$")
pytestmark = pytest.mark.skipif(not RECORDED.is_dir(), reason=f"{RECORDED} not present")


@pytest.fixture(scope="module")
def recorded_images() -> list[dict]:
    return list(json.load(gzip.open(RECORDED / "images-sample.json.gz")).values())


@pytest.fixture(scope="module")
def recorded_segmentations() -> list[dict]:
    return list(json.load(gzip.open(RECORDED / "segmentations-sample.json.gz")).values())


@pytest.fixture(scope="module")
def generated() -> list[dict]:
    archive = Archive(2000, seed=0, private_fraction=0.0)
    return [archive.image_detail(i) for i in range(2000)]


def _shapes(docs, path):
    """Key sets found at ``path`` (a tuple of keys) across documents."""
    found = Counter()
    for doc in docs:
        node = doc
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict):
            found[frozenset(node)] += 1
    return found


def _types(docs, path):
    found: dict[str, set[str]] = {}
    for doc in docs:
        node = doc
        for key in path:
            node = node[key]
        for key, value in node.items():
            found.setdefault(key, set()).add(type(value).__name__)
    return found


@pytest.mark.parametrize("path", [(), ("meta",), ("notes",), ("notes", "reviewed"),
                                  ("dataset",), ("creator",), ("meta", "acquisition")])
def test_key_sets_are_those_of_real_records(recorded_images, generated, path):
    real, ours = _shapes(recorded_images, path), _shapes(generated, path)
    assert set(ours) <= set(real), set(ours) - set(real)


def test_clinical_fields_have_real_key_sets_and_types(recorded_images, generated):
    real_sets = set(_shapes(recorded_images, ("meta", "clinical")))
    assert set(_shapes(generated, ("meta", "clinical"))) <= real_sets
    real_types = _types(recorded_images, ("meta", "clinical"))
    for key, kinds in _types(generated, ("meta", "clinical")).items():
        assert kinds <= real_types[key], key


def test_value_distributions_are_plausible(recorded_images, generated):
    def share(docs, key, value):
        return sum(d["meta"]["clinical"].get(key) == value for d in docs) / len(docs)

    for key, value in [("diagnosis", "nevus"), ("diagnosis", "melanoma"), ("sex", "male"),
                       ("benign_malignant", "malignant"), ("anatom_site_general", None)]:
        assert abs(share(generated, key, value) - share(recorded_images, key, value)) < 0.05
    nulls = sum(d["meta"]["clinical"].get("age_approx", 0) is None for d in generated)
    assert nulls > 0  # some nulls, as in the real data


def test_dates_use_girders_format_and_sometimes_drop_a_zero_fraction(generated):
    dates = [d[k] for d in generated for k in ("created", "updated")]
    assert all(DATE.match(x) for x in dates)
    dropped = sum("." not in x for x in dates)
    assert 0 < dropped < 0.01 * len(dates)  # real: 39 of 47,812


def test_tags_and_datasets_come_from_the_real_archive(recorded_images, generated):
    real_tags = {t for d in recorded_images for t in d["notes"]["tags"]}
    assert {t for d in generated for t in d["notes"]["tags"]} <= real_tags
    real_sets = {(d["dataset"]["_id"], d["dataset"]["license"]) for d in recorded_images}
    assert {(d["dataset"]["_id"], d["dataset"]["license"]) for d in generated} <= real_sets


def test_sizes_match_the_issue_range_and_ids_are_objectid_like(generated):
    for doc in generated:
        acq = doc["meta"]["acquisition"]
        assert 600 <= acq["pixelsX"] <= 2000 and acq["pixelsY"] > 0
        assert re.fullmatch(r"[0-9a-f]{24}", doc["_id"])
    assert Counter(d["_id"][-1] for d in generated).most_common()[-1][1] >= 100


def test_segmentation_details_match_real_shapes(recorded_segmentations):
    archive = Archive(400, seed=0, private_fraction=0.0)
    ours = [archive.segmentation_detail(i, j) for i in range(400)
            for j in range(archive.segmentation_count(i))]
    # The recording's "skill" was added by the isicarchive package's cache, not the API.
    real = [{k: v for k, v in s.items() if k != "skill"} for s in recorded_segmentations]
    assert {frozenset(s) for s in ours} == {frozenset(s) for s in real}
    real_meta = {frozenset(s["meta"]) for s in real}
    ok_meta = {frozenset(s["meta"]) for s in ours if not s["failed"]}
    assert ok_meta <= real_meta
    assert any(isinstance(s["meta"].get("startTime"), list) for s in ours)  # the 2017 quirk
    counts = Counter(archive.segmentation_count(i) for i in range(400))
    assert counts[1] > counts[2] > counts[3]


def test_records_mode_serves_the_recorded_documents():
    import io

    import requests
    from PIL import Image

    from mirror.sources.isic_v1.sandbox import serve

    images = json.load(gzip.open(RECORDED / "images-sample.json.gz"))
    segs = json.load(gzip.open(RECORDED / "segmentations-sample.json.gz"))
    with serve(records=str(RECORDED / "images-sample.json.gz"),
               segmentations=str(RECORDED / "segmentations-sample.json.gz")) as sb:
        listed = requests.get(f"{sb.url}/image", params={"limit": 0}, timeout=30).json()
        assert len(listed) == len(images)
        assert [i["name"] for i in listed] == sorted(d["name"] for d in images.values())
        small = min(images.values(), key=lambda d: d["meta"]["acquisition"]["pixelsX"])
        served = requests.get(f"{sb.url}/image/{small['_id']}", timeout=10).json()
        assert served == small
        blob = requests.get(f"{sb.url}/image/{small['_id']}/download", timeout=30).content
        with Image.open(io.BytesIO(blob)) as img:
            acq = small["meta"]["acquisition"]
            assert img.size == (acq["pixelsX"], acq["pixelsY"])
        seg_items = requests.get(f"{sb.url}/segmentation", params={"imageId": small["_id"]},
                                 timeout=10).json()
        for item in seg_items:
            detail = requests.get(f"{sb.url}/segmentation/{item['_id']}", timeout=10).json()
            assert detail == {k: v for k, v in segs[item["_id"]].items() if k != "skill"}
        names = {d["name"] for d in requests.get(f"{sb.url}/dataset", params={"limit": 0},
                                                   timeout=10).json()}
        assert names == {d["dataset"]["name"] for d in images.values()}
