"""ISIC v1 change detection against the real change model (issue 18).

The archive saves QC reviews, metadata and renames without touching an image's
``updated``, and a segmentation on itself only. The sandbox's ``change_silently`` does the
same; these tests show that the next sync (images, studies, annotations) or the rotation's
next full pass (segmentations, which can only be listed per image) makes the mirror equal
the archive exactly, and what that costs in requests.
"""

from __future__ import annotations

import math

import pytest
import requests
from sqlalchemy import select

from mirror.config import layout_for, load_config
from mirror.index.database import open_reader
from mirror.sources.isic_v1.models import Annotation, Image, Segmentation
from mirror.sources.isic_v1.sandbox import serve
from mirror.status import mirror_status, status_lines
from mirror.sync import SyncOptions, sync

NO_FILES = frozenset()
pytestmark = pytest.mark.timeout(120)


def _current(root, model) -> dict[str, dict]:
    engine = open_reader(layout_for(root, load_config(root)))
    try:
        with engine.connect() as conn:
            return dict(conn.execute(select(model.id, model.doc)
                                     .where(model.removed.is_(False))).all())
    finally:
        engine.dispose()


def _archive_images(url: str) -> dict[str, dict]:
    docs = requests.get(f"{url}/image", params={"limit": 0, "detail": "true"},
                        timeout=60).json()
    return {d["_id"]: d for d in docs}


def _archive_segmentations(url: str, image_ids) -> dict[str, dict]:
    out = {}
    with requests.Session() as s:
        for image_id in image_ids:
            for item in s.get(f"{url}/segmentation", params={"imageId": image_id, "limit": 0},
                              timeout=60).json():
                out[item["_id"]] = s.get(f"{url}/segmentation/{item['_id']}", timeout=60).json()
    return out


def _assert_mirror_equals_archive(root, url) -> None:
    images = _archive_images(url)
    assert _current(root, Image) == images
    assert _current(root, Segmentation) == _archive_segmentations(url, images)


def _sync(root, url=None, **options):
    summary = sync(root, url, SyncOptions(workers=4, blobs=NO_FILES, **options))
    assert summary.ok, summary.failures
    return summary


def test_metadata_tags_renames_and_reviews_without_updated_reach_the_next_sync(tmp_path):
    root = tmp_path / "m"
    with serve(images=21, seed=18, private_fraction=0.0) as sb:
        _sync(root, sb.url)
        ids = [sb.archive.image_id(i) for i in sb.archive.listed()]
        before = _archive_images(sb.url)
        changed = sb.mutate(metadata={i: {"diagnosis": "melanoma"} for i in ids[:3]},
                            tags={ids[3]: "Mirror test tag"}, renames={ids[4]: "ISIC_9999998"},
                            reviews=[ids[5]])
        after = _archive_images(sb.url)
        assert changed["changed"] == sorted(ids[:6])
        assert all(after[i]["updated"] == before[i]["updated"] for i in ids)  # no sign
        sb.reset_stats()
        summary = _sync(root)
        stats = sb.stats()
    counts = summary.as_dict()["objects"]["image"]
    assert counts == {"changed": 6, "unchanged": 15}
    assert _current(root, Image) == after  # every document as the archive serves it now
    # the cost: one page of image details, datasets, studies, one annotation listing per
    # public study, and the segmentation lists of the 6 changed images plus 3 (21/7) others
    assert stats["GET /image"] == 1
    assert stats["GET /segmentation"] == 6 + math.ceil(21 / 7)
    assert stats["GET /annotation"] == 2 and stats["GET /study"] == stats["GET /dataset"] == 1
    assert summary.requests == stats["total"] == 5 + stats["GET /segmentation"] + \
        stats["GET /segmentation/{id}"]


def test_queries_see_the_silent_metadata_change(tmp_path):
    from mirror import Mirror

    root = tmp_path / "m"
    where = [["meta.clinical.diagnosis", "==", "melanoma"]]
    with serve(images=30, seed=19, private_fraction=0.0) as sb:
        _sync(root, sb.url)
        with Mirror(root) as m:
            melanomas = len(m.select_images(where))
        others = [i for i, d in _archive_images(sb.url).items()
                  if d["meta"]["clinical"].get("diagnosis") != "melanoma"]
        sb.mutate(metadata={i: {"diagnosis": "melanoma"} for i in others[:10]},
                  tags={i: "Mirror tag" for i in others[:10]})
        _sync(root)
        archive = _archive_images(sb.url)
    with Mirror(root) as m:
        assert len(m.select_images(where)) == melanomas + 10 == sum(
            d["meta"]["clinical"].get("diagnosis") == "melanoma" for d in archive.values())
        assert len(m.select_images([["notes.tags", "ni", "Mirror tag"]])) == 10


def test_new_segmentations_and_reviews_are_found_within_one_rotation(tmp_path):
    root = tmp_path / "m"
    with serve(images=21, seed=20, private_fraction=0.0) as sb:
        _sync(root, sb.url)
        live = sb.archive.listed()
        old_segs = set(_current(root, Segmentation))
        reviewed = sorted(old_segs)[:2]
        out = sb.mutate(segment=[sb.archive.image_id(i) for i in live[::5]],
                        review_segmentations=reviewed)
        assert len(out["segmented"]) == 5
        found_after = None
        for run in range(1, 8):  # the default MIRROR_RECHECK_PERIOD: 7 runs
            sb.reset_stats()
            summary = _sync(root)
            assert sb.stats()["GET /segmentation"] == 3  # ceil(21 / 7) images a run
            assert summary.as_dict()["objects"]["image"] == {"unchanged": 21}
            mirrored = _current(root, Segmentation)
            if set(out["segmented"]) <= set(mirrored) and all(
                    len(mirrored[s]["reviews"]) == len(sb.archive.segmentation_detail(
                        *sb.archive.segmentation_index(s))["reviews"]) for s in reviewed):
                found_after = run
                break
        assert found_after is not None and found_after <= 7
        _assert_mirror_equals_archive(root, sb.url)


def test_full_checks_every_segmentation_list_now(tmp_path):
    root = tmp_path / "m"
    with serve(images=14, seed=21, private_fraction=0.0) as sb:
        _sync(root, sb.url)
        live = sb.archive.listed()
        out = sb.mutate(segment=[sb.archive.image_id(live[-1])])
        sb.reset_stats()
        summary = _sync(root, full=True)
        stats = sb.stats()
        _assert_mirror_equals_archive(root, sb.url)
        segments = sum(sb.archive.segmentation_count(i) for i in live)
    assert out["segmented"][0] in _current(root, Segmentation)
    assert summary.as_dict()["objects"]["segmentation"] == {"new": 1, "unchanged": segments - 1}
    assert stats["GET /segmentation"] == 14 and stats["GET /segmentation/{id}"] == segments


def test_recheck_period_of_one_checks_every_image_each_run(tmp_path, monkeypatch):
    root = tmp_path / "m"
    monkeypatch.setenv("MIRROR_RECHECK_PERIOD", "1")
    with serve(images=9, seed=22, private_fraction=0.0) as sb:
        _sync(root, sb.url)
        sb.reset_stats()
        _sync(root)
        assert sb.stats()["GET /segmentation"] == 9
    monkeypatch.setenv("MIRROR_RECHECK_PERIOD", "0")
    from mirror.errors import MirrorError

    with serve(images=3, seed=22, private_fraction=0.0) as sb, \
            pytest.raises(MirrorError, match="MIRROR_RECHECK_PERIOD"):
        sync(tmp_path / "other", sb.url, SyncOptions(blobs=NO_FILES))


def test_a_rename_reaches_studies_and_annotations(tmp_path):
    root = tmp_path / "m"
    with serve(images=12, seed=23, private_fraction=0.0) as sb:
        _sync(root, sb.url)
        image_id = sb.archive.image_id(sb.archive.study_images(0)[0])
        sb.mutate(renames={image_id: "ISIC_9999997"})
        summary = _sync(root).as_dict()["objects"]
        annotations = _current(root, Annotation)
        served = {a["_id"]: a for s in requests.get(f"{sb.url}/study", params={
            "limit": 0}, timeout=30).json() for a in requests.get(
            f"{sb.url}/annotation", params={"studyId": s["_id"], "detail": "true"},
            timeout=30).json()}
    assert summary["image"]["changed"] == 1 and summary["study"]["changed"] >= 1
    assert summary["annotation"]["changed"] >= 2  # both annotators' annotations of it
    assert annotations == served


def test_status_reports_how_stale_the_oldest_segmentation_check_is(tmp_path):
    root = tmp_path / "m"
    with serve(images=8, seed=24, private_fraction=0.0) as sb:
        _sync(root, sb.url)
        checks = mirror_status(root)["checks"]["segmentation listings"]
        assert checks["images"] == checks["checked"] == 8 and checks["never"] == 0
        assert checks["oldest"] is not None
        sb.mutate(add=3)
        _sync(root, what=frozenset({"images", "datasets"}))
    status = mirror_status(root)
    assert status["checks"]["segmentation listings"]["never"] == 3
    line = [x for x in status_lines(status) if x.startswith("segmentation listings")]
    assert line and "8 of 11 images checked" in line[0] and "ago" in line[0]


def test_cli_full_flag_and_status_line(tmp_path):
    import json

    from click.testing import CliRunner

    from mirror.cli import main

    root = tmp_path / "m"
    with serve(images=10, seed=25, private_fraction=0.0) as sb:
        _sync(root, sb.url)
        sb.reset_stats()
        done = CliRunner().invoke(main, ["sync", "--root", str(root), "--blobs", "",
                                         "--full", "--json"])
        assert done.exit_code == 0, done.output
        assert sb.stats()["GET /segmentation"] == 10
        assert json.loads(done.output)["ok"] is True
    status = CliRunner().invoke(main, ["status", "--root", str(root)])
    assert "segmentation listings: 10 of 10 images checked" in status.output
