"""``--where`` over getSeries fields: only matching series' files are fetched."""

from __future__ import annotations

import hashlib

import pytest
from click.testing import CliRunner

from mirror.cli import main
from mirror.errors import ScopeError
from mirror.sources.tcia.sandbox import start
from mirror.sources.tcia.scope import parse_scope
from tests.sources.tcia.test_source import blob_ids, sync


@pytest.fixture
def sb():
    sandbox = start(collections=2, seed=11)
    yield sandbox
    sandbox.stop()


def test_parse_scope_reads_the_criteria_language_and_names_bad_fields():
    scope = parse_scope("Modality == CT AND ImageCount >= 3")
    row = {"SeriesInstanceUID": "1.2", "Modality": "CT", "ImageCount": 3}
    assert scope.matches(row)
    assert not scope.matches({**row, "ImageCount": 2})
    assert not scope.matches({**row, "Modality": "MR"})
    assert parse_scope('SeriesDescription == "AX and COR"').criteria[0].value == "AX and COR"
    assert parse_scope("Modality in CT,MR").matches({"Modality": "MR"})
    assert parse_scope("ProtocolName is null").matches({"Modality": "CT"})  # a dropped null
    assert not parse_scope("ProtocolName == Routine").matches({"Modality": "CT"})
    assert parse_scope("SeriesDescription ~ ^AX").matches({"SeriesDescription": "AX 5mm"})
    with pytest.raises(ScopeError, match="getSeries has no field 'Modalty'"):
        parse_scope("Modalty == CT")
    with pytest.raises(ScopeError, match="FIELD OP VALUE"):
        parse_scope("Modality")


def test_where_fetches_only_matching_series_and_keeps_every_row(tmp_path, sb):
    root = tmp_path / "m"
    summary = sync(root, sb, scope={"where": "Modality == CT"})
    assert summary.ok
    ct = [s for s in sb.archive.series.values() if s.modality == "CT"]
    mr = [s for s in sb.archive.series.values() if s.modality == "MR"]
    assert ct and mr
    assert blob_ids(root, "dicom") == {sop for s in ct for sop in s.images}
    assert blob_ids(root, "md5s") == {s.uid for s in ct}
    assert summary.as_dict()["objects"]["series"]["new"] == len(ct) + len(mr)
    assert sb.stats()["GET v4/getImage"] == len(ct)
    sb.reset_stats()
    again = sync(root, sb, scope={"where": "Modality == CT"})
    assert again.ok and "GET v4/getImage" not in sb.stats()
    assert sb.stats()["total"] <= 1 + 3 * 2  # getCollectionValues, then <= 3 per collection


def test_where_within_a_collection_still_sees_changed_bytes(tmp_path, sb):
    """A scope that takes part of a study: the mirror cannot rebuild the collection,
    patient or study hash, so it asks at the series level, and finds the change."""
    root = tmp_path / "m"
    where = {"where": 'SeriesDescription == "AX 5mm"'}
    assert sync(root, sb, scope=where).ok
    picked = [s for s in sb.archive.series.values() if s.description == "AX 5mm"]
    assert picked and len(picked) < len(sb.archive.series)
    assert blob_ids(root, "md5s") == {s.uid for s in picked}
    target = picked[0]
    # the bytes change, every listed field stays
    for image in target.images.values():
        image.data = image.data[:-2] + b"\x00\x01"
        image.__post_init__()
    sb.reset_stats()
    assert sync(root, sb, scope=where).ok
    assert sb.stats()["GET v4/getImage"] == 1
    held = {hashlib.md5(p.read_bytes()).hexdigest()
            for sop in target.images for p in root.rglob(f"dicom_{sop}*.dcm")}
    assert {i.md5 for i in target.images.values()} <= held


def test_cli_where_with_a_bad_field_is_one_line_exit_2(tmp_path, sb):
    result = CliRunner().invoke(main, ["sync", "--root", str(tmp_path / "m"), "--url",
                                       sb.v4_url, "--where", "Modalty == CT", "--quiet"])
    assert result.exit_code == 2, result.output
    assert "getSeries has no field 'Modalty'" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "m").exists()


def test_what_series_fetches_the_files_without_header_documents(tmp_path, sb):
    from mirror.api import Mirror

    root = tmp_path / "m"
    assert sync(root, sb, what=frozenset({"series"}), scope={"collection": "Sandbox-Brain-MR"}).ok
    mr = [s for s in sb.archive.series.values() if s.collection == "Sandbox-Brain-MR"]
    assert blob_ids(root, "dicom") == {sop for s in mr for sop in s.images}
    with Mirror(root) as m:
        docs = [m.document("instance", sop) for s in mr for sop in s.images]
    assert docs and all(set(d) == {"SOPInstanceUID", "SeriesInstanceUID"} for d in docs)
