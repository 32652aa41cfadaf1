"""The recorded 2019 sample (1-in-12 of the real archive's public images) served by
``mirror sandbox --records``: a metadata sync stores every document exactly as recorded;
then the archive changes the way the real one did (no ``updated`` moves) and the mirror
finds every changed document, and every new or reviewed segmentation."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from mirror.sources.isic_v1.models import Dataset, Image, Segmentation
from mirror.sync import SyncOptions, sync
from tests.sources.isic_v1.test_changes import _current

RECORDED = Path("/work/shared/data/isic-v1-recorded")
IMAGES = RECORDED / "images-sample.json.gz"
SEGMENTATIONS = RECORDED / "segmentations-sample.json.gz"
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300),
              pytest.mark.skipif(not IMAGES.exists(), reason="no recorded sample here")]


def _load(path: Path) -> dict[str, dict]:
    return json.loads(gzip.decompress(path.read_bytes()))


@pytest.fixture(scope="module")
def recorded_sandbox():
    child = subprocess.Popen([sys.executable, "-m", "mirror", "sandbox", "--records", str(IMAGES),
                              "--segmentations", str(SEGMENTATIONS), "--seed", "1"],
                             stdout=subprocess.PIPE, text=True, env=dict(os.environ))
    try:
        first = child.stdout.readline()
        assert first.startswith("sandbox: "), "the sandbox did not start"
        yield first.split()[-1]
    finally:
        child.terminate()
        child.wait(timeout=30)


def _control(url: str, what: str, body: dict | None = None) -> dict:
    root = url.rsplit("/api/v1", 1)[0] + "/__sandbox__/"
    if body is None:
        return requests.get(root + what, timeout=30).json()
    response = requests.post(root + what, json=body, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def test_recorded_sample_then_a_silently_changed_copy(recorded_sandbox, tmp_path):
    url, root = recorded_sandbox, tmp_path / "m"
    images, segmentations = _load(IMAGES), _load(SEGMENTATIONS)
    first = sync(root, url, SyncOptions(workers=8, blobs=frozenset()))
    assert first.ok, first.failures[:3]
    assert _current(root, Image) == images  # every document as recorded
    served = {k: {f: v for f, v in d.items() if f != "skill"} for k, d in segmentations.items()
              if d.get("imageId") in images}
    assert _current(root, Segmentation) == served
    datasets = _current(root, Dataset)
    assert {d["_id"] for d in datasets.values()} == {d["dataset"]["_id"] for d in images.values()}

    ids = sorted(images, key=lambda i: (images[i]["meta"]["clinical"].get("diagnosis")
                                        == "melanoma", i))  # melanomas last: each edit changes
    with_segs = sorted({d["imageId"] for d in served.values()})
    changes = {"metadata": {i: {"diagnosis": "melanoma"} for i in ids[:10]},
               "tags": {i: "Mirror test tag" for i in ids[10:20]},
               "renames": {ids[20]: "ISIC_9999990", ids[21]: "ISIC_9999991"},
               "reviews": ids[22:30], "segment": ids[100:105],
               "review_segmentations": sorted(served)[:3]}
    done = _control(url, "mutate", changes)
    assert len(done["changed"]) == 30 and len(done["segmented"]) == 5
    _control(url, "stats/reset", {})
    again = sync(root, options=SyncOptions(workers=8, blobs=frozenset()))
    stats = _control(url, "stats")
    assert again.ok, again.failures[:3]
    assert again.as_dict()["objects"]["image"] == {"changed": 30, "unchanged": len(ids) - 30}
    archive = {d["_id"]: d for d in requests.get(f"{url}/image", params={
        "limit": 0, "detail": "true"}, timeout=120).json()}
    assert _current(root, Image) == archive  # every changed document found
    assert stats["GET /image"] == 1  # 1,993 details in one page

    full = sync(root, options=SyncOptions(workers=8, blobs=frozenset(), full=True))
    assert full.ok, full.failures[:3]
    mirrored = _current(root, Segmentation)
    assert set(done["segmented"]) <= set(mirrored)  # every new segmentation found
    for seg_id in changes["review_segmentations"]:
        assert len(mirrored[seg_id]["reviews"]) == len(served[seg_id]["reviews"]) + 1
    assert len(mirrored) == len(served) + 5
    assert len(with_segs) < len(ids)
    # the costs, for docs/performance.md (pytest -s shows them)
    print(f"\nrecorded sample: first sync {first.requests} requests {first.seconds:.1f} s; "
          f"changed re-sync {again.requests} requests {again.seconds:.1f} s "
          f"(segmentation lists {stats['GET /segmentation']}); "
          f"--full {full.requests} requests {full.seconds:.1f} s")
