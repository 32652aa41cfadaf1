"""The IDC catalog layer against the installed idc-index-data, and diffs of edited copies."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from importlib.metadata import version
from pathlib import Path

import pyarrow as pa
import pytest

import mirror
from mirror.errors import CatalogError, ScopeError
from mirror.sources.idc.catalog import (
    Catalog,
    changes_since,
    compile_criteria,
    diff,
    diff_counts,
    parse_scope,
    read_table,
    write_catalog,
)

REPO_ROOT = str(Path(mirror.__file__).resolve().parents[1])  # for child processes

LUNG = "collection_id == lung_phantom"


@pytest.fixture(scope="module")
def installed():
    return Catalog.installed()


@pytest.fixture(scope="module")
def lung_rows(installed):
    return read_table(installed, scope=LUNG)


def test_installed_catalog_records_its_version(installed):
    assert installed.version.package == version("idc-index-data")
    assert installed.version.release == int(version("idc-index-data").split(".")[0])
    assert installed.version.build.startswith(installed.version.package)
    assert set(installed.paths) >= {"idc_index", "prior_versions_index", "collections_index",
                                    "version_metadata_index"}
    assert installed.release_dates()[installed.version.release]


def test_criteria_scopes_select_the_same_series_as_plain_sql(installed):
    with installed.connect() as conn:
        expected = conn.sql("SELECT count(*) FROM idc_index WHERE collection_id = "
                            "'lung_phantom' AND Modality = 'CT'").fetchall()[0][0]
        many = conn.sql("SELECT count(*) FROM idc_index WHERE instanceCount > 1000"
                        ).fetchall()[0][0]
    assert 0 < expected < 109
    assert installed.count(f"{LUNG} AND Modality == CT") == expected
    assert installed.count("collection_id == 'lung_phantom' AND modality == 'CT'") == expected
    assert installed.count(LUNG) == 109
    assert installed.count("collection_id in lung_phantom,no_such_collection") == 109
    assert installed.count("instanceCount > 1000") == many
    assert installed.count("instanceCount > '1000'") == many  # coerced to the column's type
    not_lung = installed.count("collection_id != lung_phantom")
    assert not_lung + 109 == installed.count()


def test_values_are_bound_parameters_never_sql(installed):
    where, params = compile_criteria(parse_scope("collection_id == \"x' OR '1'='1\"").criteria,
                                     installed.columns())
    assert where == 'COALESCE("collection_id" = ?, FALSE)'
    assert params == ["x' OR '1'='1"]
    assert installed.count("collection_id == \"x' OR '1'='1\"") == 0


@pytest.mark.parametrize("scope, fragment", [
    ("modalty == CT", "did you mean Modality?"),
    ("collection == lung_phantom", "did you mean collection_id?"),
    ("Modality ni CT", "use == or in"),
    ("instanceCount == many", "holds numbers"),
    ("DROP TABLE idc_index", "only a read-only SELECT"),
    ("COPY idc_index TO '/tmp/out.csv'", "only a read-only SELECT"),
    ("ATTACH '/tmp/other.db' AS other", "only a read-only SELECT"),
    ("SELECT SeriesInstanceUID FROM idc_index; DROP TABLE idc_index", "2 statements"),
    ("SELECT PatientID FROM idc_index", "select the SeriesInstanceUID column"),
    ("SELECT * FROM read_csv('/etc/passwd')", "Permission Error"),
    ("SELECT SeriesInstanceUID FROM read_parquet('/etc/hostname')", "Permission Error"),
    ("SELECT SeriesInstanceUID FROM idc_index WHERE nosuch = 1", "nosuch"),
])
def test_bad_scopes_are_refused_in_one_line(installed, scope, fragment):
    with pytest.raises(ScopeError) as caught:
        installed.count(scope)
    assert fragment in str(caught.value)
    assert "\n" not in str(caught.value)


def test_sql_scope_runs_read_only_and_joins_back_to_the_catalog(installed):
    sql = ("SELECT SeriesInstanceUID FROM idc_index WHERE collection_id = 'lung_phantom' "
           "AND Modality = 'CT'")
    assert installed.count(sql) == installed.count(f"{LUNG} AND Modality == CT")
    rows = list(installed.rows(sql, columns=["SeriesInstanceUID", "crdc_series_uuid"]))
    assert rows and all(set(r) == {"SeriesInstanceUID", "crdc_series_uuid"} for r in rows)


@pytest.mark.slow  # a budget check (the figures live in bench/ and docs/performance.md)
def test_full_catalog_stream_fits_time_and_memory():
    """Every series, every column, to Python dicts, in a fresh process: time and peak RSS.

    The peak is the child's own VmHWM: ``ru_maxrss`` carries across fork and exec, so a
    child of a large pytest process would report its parent's size."""
    code = (
        "import json, re, time\n"
        "from mirror.sources.idc.catalog import Catalog\n"
        "t = time.monotonic(); n = 0\n"
        "for batch in Catalog.installed().select():\n"
        "    n += len(batch.to_pylist())\n"
        "print(json.dumps({'rows': n, 'seconds': time.monotonic() - t,\n"
        "    'rss_mb': int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read())"
        "[1]) / 1024}))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=300, env=dict(os.environ, PYTHONPATH=REPO_ROOT))
    figures = json.loads(out.stdout)
    print("full catalog stream:", figures)
    assert figures["rows"] == Catalog.installed().count() > 1_000_000
    assert figures["seconds"] < 300
    assert figures["rss_mb"] < 1024


# -- diffs ---------------------------------------------------------------------------------

def _edited(table: pa.Table) -> tuple[pa.Table, dict[str, str]]:
    """A second catalog derived from ``table`` by one edit of each kind."""
    rows = table.to_pylist()
    uid = [r["SeriesInstanceUID"] for r in rows]
    expected = {uid[0]: "removed", uid[1]: "revised", uid[2]: "moved", uid[3]: "metadata",
                uid[4]: "metadata", uid[5]: "revised"}
    new = [dict(r) for r in rows[1:]]
    by_uid = {r["SeriesInstanceUID"]: r for r in new}
    by_uid[uid[1]]["crdc_series_uuid"] = str(uuid.uuid4())
    by_uid[uid[1]]["series_revised_idc_version"] = 26
    by_uid[uid[2]]["aws_bucket"] = "idc-open-data-two"
    by_uid[uid[3]]["license_short_name"] = "CC BY-NC 4.0"
    by_uid[uid[4]]["source_DOI"] = "10.0000/renamed"
    by_uid[uid[5]]["collection_id"] = "lung_phantom_2"  # renamed, with a new uuid
    by_uid[uid[5]]["crdc_series_uuid"] = str(uuid.uuid4())
    added = dict(rows[6], SeriesInstanceUID="1.2.3.4.5.6.7.8.9", crdc_series_uuid=str(
        uuid.uuid4()), series_init_idc_version=26, series_revised_idc_version=26)
    new.append(added)
    expected[added["SeriesInstanceUID"]] = "new"
    return pa.Table.from_pylist(new, schema=table.schema), expected


@pytest.fixture(scope="module")
def two_catalogs(lung_rows, tmp_path_factory):
    old = write_catalog(tmp_path_factory.mktemp("old"), {"idc_index": lung_rows}, "25.0.5-0-x")
    table, expected = _edited(lung_rows)
    rows = lung_rows.to_pylist()
    prior = pa.table({"SeriesInstanceUID": [rows[1]["SeriesInstanceUID"]],
                      "crdc_series_uuid": [rows[1]["crdc_series_uuid"]],
                      "min_idc_version": pa.array([3], pa.int64()),
                      "max_idc_version": pa.array([25], pa.int64())})
    new = write_catalog(tmp_path_factory.mktemp("new"),
                        {"idc_index": table, "prior_versions_index": prior}, "26.0.0-0-y")
    return old, new, expected


def test_diff_classifies_each_edit(two_catalogs, lung_rows):
    old, new, expected = two_catalogs
    assert (old.version.package, new.version.package) == ("25.0.5", "26.0.0")
    changes = {c.series_uid: c for c in diff(old, new)}
    assert {uid: c.kind for uid, c in changes.items()} == expected
    rows = lung_rows.to_pylist()
    revised, moved = changes[rows[1]["SeriesInstanceUID"]], changes[rows[2]["SeriesInstanceUID"]]
    assert revised.changed == ("crdc_series_uuid",) and revised.old_in_prior is True
    assert moved.changed == ("aws_bucket",)
    assert moved.old["crdc_series_uuid"] == moved.new["crdc_series_uuid"]
    assert changes[rows[3]["SeriesInstanceUID"]].changed == ("license_short_name",)
    assert changes[rows[4]["SeriesInstanceUID"]].changed == ("source_DOI",)
    renamed = changes[rows[5]["SeriesInstanceUID"]]
    assert renamed.changed == ("crdc_series_uuid", "collection_id")
    removed = changes[rows[0]["SeriesInstanceUID"]]
    assert removed.new is None and removed.old_in_prior is False
    assert diff_counts(old, new) == {"new": 1, "revised": 2, "moved": 1, "metadata": 2,
                                     "removed": 1}
    assert diff_counts(old, old) == dict.fromkeys(diff_counts(old, old), 0)


def test_diff_applies_a_criteria_scope_to_both_sides(two_catalogs):
    old, new, _ = two_catalogs
    counts = diff_counts(old, new, LUNG)
    assert counts["removed"] == 2  # the deleted series, and the one renamed out of scope
    assert counts["revised"] == 1
    with pytest.raises(ScopeError, match="criteria, not SQL"):
        list(diff(old, new, "SELECT SeriesInstanceUID FROM idc_index"))


def test_changes_since_needs_the_version_columns(two_catalogs, lung_rows, tmp_path):
    _, new, expected = two_catalogs
    since = changes_since(new, 25)
    assert since["new"] == ["1.2.3.4.5.6.7.8.9"]
    assert since["revised"] == [u for u, k in expected.items() if k == "revised"][:1]
    stripped = lung_rows.drop_columns(["series_init_idc_version", "series_revised_idc_version"])
    old_style = write_catalog(tmp_path, {"idc_index": stripped}, "24.0.0-0-z")
    with pytest.raises(CatalogError, match="24.1.0"):
        changes_since(old_style, 24)


def test_a_folder_without_a_catalog_is_refused(tmp_path):
    with pytest.raises(CatalogError, match="no idc_index.parquet"):
        Catalog.from_dir(tmp_path)


def test_and_splits_criteria_only_outside_quotes(installed):
    scope = parse_scope('collection_id == lung_phantom and SeriesDescription == "A AND B"')
    assert [(c.field, c.value) for c in scope.criteria] == [
        ("collection_id", "lung_phantom"), ("SeriesDescription", "A AND B")]
    assert parse_scope("StudyDescription == 'it''s and more'").criteria[0].value == \
        "it's and more"
    assert installed.count(f"{LUNG} and Modality == CT") == \
        installed.count(f"{LUNG} AND Modality == CT")


def test_a_damaged_catalog_file_is_refused_in_one_line(tmp_path):
    (tmp_path / "idc_index.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(CatalogError, match="cannot read") as caught:
        Catalog.from_dir(tmp_path)
    assert "\n" not in str(caught.value)
