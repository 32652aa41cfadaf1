"""What an IDC export and snapshot say to cite: licence and DOI per series, citations per
collection, in the manifest itself, in ``mirror export metadata`` / ``files`` and in a
snapshot export; and the exported DICOM tree holds the mirrored bytes."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from mirror.api import Mirror
from mirror.cli import main
from mirror.snapshots import create_snapshot, export
from mirror.sync import SyncOptions, sync

pytestmark = pytest.mark.timeout(240)
LUNG = 'collection_id == "lung_phantom"'


@pytest.fixture(scope="module")
def mirrored(idc_sandbox, tmp_path_factory):
    """lung_phantom with its files, and both collections' rows catalog-only."""
    root = tmp_path_factory.mktemp("exports") / "m"
    catalog = str(idc_sandbox.catalog.paths["idc_index"].parent)
    scope = {"s3_endpoint": idc_sandbox.s3_endpoint, "catalog": catalog}
    done = sync(root, None, SyncOptions(source="idc", scope={**scope, "where": LUNG}))
    assert done.ok, done.failures
    rows = {r["SeriesInstanceUID"]: r for r in idc_sandbox.catalog.rows(LUNG)}
    return root, rows, idc_sandbox.catalog


def _csv(data: bytes | str) -> list[dict]:
    text = data.decode() if isinstance(data, bytes) else data
    return list(csv.DictReader(io.StringIO(text)))


def _cited(catalog, collection_id: str) -> list[str]:
    with catalog.connect() as conn:
        sources = conn.sql("SELECT sources FROM collections_index WHERE collection_id = "
                           f"'{collection_id}'").fetchall()[0][0]
    return [" ".join(s["citation"].split()) for s in sources]


def test_the_manifest_carries_licence_doi_and_citations(mirrored):
    root, rows, catalog = mirrored
    snap = create_snapshot(root, "lung", blobs=("dicom",))
    series = snap.of_kind("series")
    assert {e["id"] for e in series} == set(rows)
    for pinned in series:
        row = rows[pinned["id"]]
        assert pinned["license_short_name"] == row["license_short_name"]
        assert pinned["source_DOI"] == row["source_DOI"]
    [collection] = snap.of_kind("collection")
    cited = collection["citations"]
    assert cited["licenses"] == sorted({r["license_short_name"] for r in rows.values()})
    assert cited["source_DOIs"] == sorted({r["source_DOI"] for r in rows.values()})
    assert [s["citation"] for s in cited["sources"]] == _cited(catalog, "lung_phantom")
    assert all(s["license"] and s["source_doi"] for s in cited["sources"])


def test_a_snapshot_export_holds_series_csv_and_citations(mirrored, tmp_path):
    root, rows, catalog = mirrored
    create_snapshot(root, "lung2", blobs=("dicom",))
    export(root, "lung2", tmp_path / "out")
    table = _csv((tmp_path / "out" / "series.csv").read_bytes())
    assert {r["SeriesInstanceUID"]: (r["license_short_name"], r["source_DOI"])
            for r in table} == {u: (r["license_short_name"], r["source_DOI"])
                                for u, r in rows.items()}
    text = (tmp_path / "out" / "citations.txt").read_text()
    for citation in _cited(catalog, "lung_phantom"):
        assert f"cite: {citation}" in text


def test_export_metadata_is_one_row_per_series_with_its_attribution(mirrored, tmp_path):
    root, rows, catalog = mirrored
    out = tmp_path / "series.csv"
    ct = {u for u, r in rows.items() if r["Modality"] == "CT"}
    result = CliRunner().invoke(main, ["export", "metadata", "--root", str(root), str(out),
                                       "--where", "Modality == CT"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"wrote {len(ct)} series x ")
    table = _csv(out.read_text())
    assert {r["SeriesInstanceUID"] for r in table} == ct
    assert all(r["license_short_name"] == rows[r["SeriesInstanceUID"]]["license_short_name"]
               and r["source_DOI"] == rows[r["SeriesInstanceUID"]]["source_DOI"]
               for r in table)
    attribution = out.with_name("series.attribution.txt").read_text()
    assert f"({'lung_phantom'}): {len(ct)} series" in attribution
    assert _cited(catalog, "lung_phantom")[0] in attribution
    refused = CliRunner().invoke(main, ["export", "metadata", "--root", str(root),
                                        str(tmp_path / "x.csv"), "--dataset", "d"])
    assert refused.exit_code == 2 and "--where" in refused.output


def test_export_files_is_a_dicom_tree_of_the_mirrored_bytes(mirrored, tmp_path):
    root, rows, _ = mirrored
    dest = tmp_path / "tree"
    result = CliRunner().invoke(main, ["export", "files", "--root", str(root), str(dest),
                                       "--where", LUNG, "--link", "copy", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    files = sorted(p for p in (dest / "dicom").rglob("*.dcm"))
    assert summary["files"] == len(files) == sum(r["instanceCount"] for r in rows.values())
    with Mirror(root) as m:
        by_sop = {m.document("instance", i)["SOPInstanceUID"]: i for i in m.ids("instance")}
        for path in files[:20]:
            collection, series = path.parent.parent.name, path.parent.name
            assert collection == "lung_phantom" and series in rows
            stored = m.file(by_sop[path.stem], "instance")
            assert hashlib.sha256(path.read_bytes()).digest() == \
                hashlib.sha256(Path(stored).read_bytes()).digest()
    assert (dest / "series.csv").exists() and "cite:" in (dest / "citations.txt").read_text()


def test_export_files_of_a_catalog_only_selection_names_what_is_missing(
        idc_sandbox, tmp_path):
    root = tmp_path / "m"
    catalog = str(idc_sandbox.catalog.paths["idc_index"].parent)
    sync(root, None, SyncOptions(source="idc", blobs=frozenset(), scope={
        "catalog": catalog, "s3_endpoint": idc_sandbox.s3_endpoint, "where": LUNG}))
    result = CliRunner().invoke(main, ["export", "files", "--root", str(root),
                                       str(tmp_path / "tree"), "--json"])
    summary = json.loads(result.output)
    assert result.exit_code == 1 and summary["files"] == 0
    assert len(summary["missing"]) == summary["images"] == idc_sandbox.catalog.count(LUNG)
    assert len(_csv((tmp_path / "tree" / "series.csv").read_bytes())) == summary["images"]
