"""Every hostile case of the issue through ``mirror sync``: the series reported, the rest
synced, nothing written outside the root; and a query by tag keyword on what arrived."""

from __future__ import annotations

import functools
import io
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

import mirror.sync as sync_module
from mirror.cli import main
from mirror.sources.http import HttpClient
from mirror.sources.tcia.sandbox import HOSTILE_CASES, start
from tests.sources.tcia.test_source import blob_ids, sync


@pytest.fixture
def quick_retries(monkeypatch):
    """Four attempts and no backoff: the cases only retries settle fail fast."""
    monkeypatch.setattr(sync_module, "HttpClient",
                        functools.partial(HttpClient, attempts=4, backoff=0.001,
                                          max_backoff=0.001))


def test_every_hostile_case_fails_its_series_only(tmp_path, quick_retries):
    sandbox = start(collections=3, seed=5, hostile="all")
    assert set(HOSTILE_CASES) - set(sandbox.hostile) == {"html", "empty"}  # listing cases
    absolute = Path("/tmp")
    before = {p.name for p in absolute.iterdir()}
    try:
        root = tmp_path / "m"
        summary = sync(root, sandbox)
        assert not summary.ok
        failed = {f["object_id"]: f["error"] for f in summary.as_dict()["failures"]}
        assert set(failed) == set(sandbox.hostile.values())  # each one, and only those
        assert all("\n" not in error for error in failed.values())  # one line each
        good = [s for s in sandbox.archive.series.values()
                if s.uid not in sandbox.hostile.values()]
        indexed = blob_ids(root, "dicom")
        assert {sop for s in good for sop in s.images} <= indexed  # the rest synced
        for uid in sandbox.hostile.values():
            assert not indexed & set(sandbox.archive.series[uid].images), uid
        assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
        new_in_tmp = {p.name for p in absolute.iterdir()} - before
        assert not [n for n in new_in_tmp if n.endswith(".dcm")]  # the "/tmp/..." entry
        assert not [p for p in root.rglob("*") if p.suffix == ".zip" or p.is_symlink()]
        again = sync(root, sandbox)  # a re-run retries exactly the failed series
        assert {f["object_id"] for f in again.as_dict()["failures"]} == set(failed)
    finally:
        sandbox.stop()


def test_query_and_sql_by_tag_keyword(tmp_path):
    sandbox = start(collections=2, seed=11)
    try:
        root = tmp_path / "m"
        assert sync(root, sandbox).ok
    finally:
        sandbox.stop()
    ct = sorted(s.uid for s in sandbox.archive.series.values() if s.modality == "CT")
    runner = CliRunner()
    done = runner.invoke(main, ["query", "--root", str(root), "--kind", "series", "--where",
                                "Modality == CT", "--columns", "SeriesInstanceUID,Modality",
                                "--format", "json"])
    assert done.exit_code == 0, done.output
    found = [json.loads(line) for line in done.output.splitlines() if line.strip()] \
        if not done.output.lstrip().startswith("[") else json.loads(done.output)
    assert sorted(r["SeriesInstanceUID"] for r in found) == ct
    assert {r["Modality"] for r in found} == {"CT"}
    done = runner.invoke(main, ["sql", "--root", str(root), "SELECT BodyPartExamined, "
                                "count(*) AS n FROM series WHERE Modality = 'CT' GROUP BY 1"])
    assert done.exit_code == 0, done.output
    assert "CHEST" in done.output and str(len(ct)) in done.output


def test_instances_are_queried_by_their_header_keywords(tmp_path):
    import pydicom

    sandbox = start(collections=2, seed=11)
    try:
        root = tmp_path / "m"
        assert sync(root, sandbox).ok
    finally:
        sandbox.stop()
    ct = [sop for s in sandbox.archive.series.values() if s.modality == "CT" for sop in s.images]
    some = next(s for s in sandbox.archive.series.values() if s.modality == "CT")
    thickness = float(pydicom.dcmread(io.BytesIO(
        next(iter(some.images.values())).data)).SliceThickness)
    done = CliRunner().invoke(main, [
        "sql", "--root", str(root), "SELECT count(*) AS n, min(SliceThickness) AS t FROM "
        f"instances WHERE Modality = 'CT' AND SliceThickness = {thickness}", "--format", "csv"])
    assert done.exit_code == 0, done.output
    assert done.output.splitlines()[-1].split(",")[0] == str(len(ct)), done.output
