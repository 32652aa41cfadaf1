"""``--source idc-api-v1``: the sandbox's v1 manifest names the series, the buckets hold them.

Paged (small pages, so nextPage runs), with 202s resubmitted, the series synced from the
sandbox catalog and its buckets exactly as ``--source idc`` would; a re-sync asks only v1;
the switched-off service's 410/405 is a one-line error naming ``--source idc``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from mirror.api import Mirror
from mirror.cli import main
from mirror.errors import ArchiveError, ScopeError
from mirror.sources.idc import v1_source
from mirror.status import mirror_status
from mirror.sync import SyncOptions, sync
from mirror.verify import verify_mirror

pytestmark = pytest.mark.timeout(240)
LUNG = "lung_phantom"  # the sandbox plants its bucket faults in the other collection


def _catalog_dir(sandbox) -> str:
    return str(sandbox.catalog.paths["idc_index"].parent)


def _sync(root: Path, sandbox, **scope) -> dict:
    scope.setdefault("s3_endpoint", sandbox.s3_endpoint)
    scope.setdefault("catalog", _catalog_dir(sandbox))
    return sync(root, sandbox.v1_url, SyncOptions(source="idc-api-v1", scope=scope)).as_dict()


def _lung_series(sandbox, extra: str = "") -> set[str]:
    return {r["SeriesInstanceUID"] for r in sandbox.catalog.rows(
        f'collection_id == "{LUNG}"' + extra)}


@pytest.fixture
def small_pages(monkeypatch):
    monkeypatch.setattr(v1_source, "PAGE_SIZE", 25)
    return 25


def test_the_manifest_names_the_series_and_the_buckets_fill_them(
        idc_sandbox, v1, small_pages, tmp_path):
    v1.timeout_pages = {0, 2}  # the first page and a later one time out once each
    root = tmp_path / "m"
    done = _sync(root, idc_sandbox, collection=LUNG)
    assert done["ok"], done["failures"]
    wanted = _lung_series(idc_sandbox)
    rows = sum(1 for r in idc_sandbox.v1.rows if r["Collection_ID"] == LUNG)
    assert v1.stats["202"] == 2 and v1.stats["preview"] == 1
    assert v1.stats["nextPage"] == -(-rows // small_pages) - 1 + 2  # + the two resubmits
    with Mirror(root) as m:
        assert set(m.ids("series")) == wanted
        held = {m.document("instance", i)["SeriesInstanceUID"] for i in m.ids("instance")}
        assert held == wanted
    count = sum(r["instanceCount"] for r in idc_sandbox.catalog.rows(f'collection_id == "{LUNG}"'))
    status = mirror_status(root)
    assert status["blobs"]["instance"]["files"] == count == done["blobs"]["instance"]["fetched"]
    assert verify_mirror(root).ok
    config = json.loads((root / "mirror.json").read_text())
    assert config["source"] == "idc-api-v1" and config["base_url"] == idc_sandbox.v1_url

    v1.stats.clear()
    before = idc_sandbox.seaweed.s3_requests()
    again = _sync(root, idc_sandbox, collection=LUNG)
    assert again["ok"] and again["plan"]["files"] == 0
    assert idc_sandbox.seaweed.s3_requests() == before  # the buckets are not asked
    assert again["requests"] == v1.stats["preview"] + v1.stats["nextPage"] > 0


def test_where_criteria_become_v1_filters(idc_sandbox, v1, tmp_path):
    done = _sync(tmp_path / "m", idc_sandbox,
                 where=f'collection_id == "{LUNG}" AND Modality == "CT"')
    assert done["ok"], done["failures"]
    ct = _lung_series(idc_sandbox, ' AND Modality == "CT"')
    assert ct and done["objects"]["series"]["new"] == len(ct)
    with Mirror(tmp_path / "m") as m:
        assert set(m.ids("series")) == ct


def test_filters_v1_cannot_ask_are_refused_before_any_request(idc_sandbox, v1, tmp_path):
    with pytest.raises(ScopeError, match="FIELD == VALUE"):
        _sync(tmp_path / "m", idc_sandbox, where="instanceCount > 3")
    with pytest.raises(ScopeError, match="--source idc"):
        _sync(tmp_path / "m", idc_sandbox, sql="SELECT SeriesInstanceUID FROM idc_index")
    with pytest.raises(ScopeError, match="filtered twice"):
        _sync(tmp_path / "m", idc_sandbox, collection=LUNG, where='collection_id == "x"')
    assert not v1.stats and not (tmp_path / "m").exists()
    with pytest.raises(ScopeError, match="names no series"):
        _sync(tmp_path / "m", idc_sandbox, collection="no_such_collection")
    with pytest.raises(ArchiveError, match="HTTP 400: Invalid filter"):
        _sync(tmp_path / "m", idc_sandbox, where='nonsense == "x"')
    assert not (tmp_path / "m").exists()  # a failed first sync leaves no mirror


def test_the_switched_off_service_is_one_line_pointing_to_source_idc(
        idc_sandbox, v1, tmp_path):
    v1.deprecated = True
    root = tmp_path / "m"
    result = CliRunner().invoke(main, [
        "sync", "--root", str(root), "--source", "idc-api-v1", "--url", idc_sandbox.v1_url,
        "--collection", LUNG, "--s3-endpoint", idc_sandbox.s3_endpoint,
        "--catalog", _catalog_dir(idc_sandbox)])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "switched off" in lines[0] and "--source idc " in lines[0]
    assert "Traceback" not in result.output
    assert idc_sandbox.seaweed.running() and not root.exists()


def test_a_series_the_catalog_lacks_is_reported_not_mirrored(idc_sandbox, v1, tmp_path):
    extra = dict(next(r for r in idc_sandbox.v1.rows if r["Collection_ID"] == LUNG),
                 SeriesInstanceUID="1.2.3.4.5.6.7.8.9")
    v1.rows.append(extra)
    try:
        done = _sync(tmp_path / "m", idc_sandbox, collection=LUNG)
    finally:
        v1.rows.remove(extra)
    assert not done["ok"]
    assert [(f["object_id"], f["role"]) for f in done["failures"]] == [
        ("1.2.3.4.5.6.7.8.9", "catalog")]
    assert "does not list" in done["failures"][0]["error"]
    assert done["objects"]["series"]["new"] == len(_lung_series(idc_sandbox))
