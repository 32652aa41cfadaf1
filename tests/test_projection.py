"""Parquet projections: what a publish writes, which generation a reader sees, `mirror sql`
and `mirror query --kind`."""

from __future__ import annotations

import csv
import io
import json

import duckdb
import pytest
from click.testing import CliRunner

from mirror import Mirror, projection
from mirror.cli import main
from mirror.config import utc_now
from mirror.errors import NoProjectionError, ReadOnlySqlError
from mirror.index.database import KEEP_GENERATIONS, IndexWriter, current_generation
from mirror.ingest import ingest_documents, mark_removed
from mirror.layout import Layout
from mirror.query import Projection, open_projection, run_sql, select_ids
from mirror.sources.isic_v1.sandbox import serve
from mirror.sources.isic_v1.spec import SPEC
from mirror.sync import SyncOptions, sync

IMAGE = SPEC.kind("image")

WHAT = frozenset({"images", "datasets", "segmentations", "studies", "annotations"})


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("projection") / "mirror"
    with serve(images=20, seed=9, private_fraction=0.0) as sb:
        assert sync(root, sb.url, SyncOptions(workers=4, what=WHAT, blobs=frozenset())).ok
    return root


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output


# -- what a publish writes -------------------------------------------------------------------

@pytest.mark.parametrize("part", [32_768, 1])
def test_a_generic_table_gets_a_typed_column_per_field_and_kind_of_value(tmp_path, part,
                                                                         monkeypatch):
    """One row per object in id order; a field of one kind is one typed column named by its
    path; other kinds of value at the same path get suffixed columns; any kind of rows can
    be fed (here DICOM-like series)."""
    rows = [("s2", None, {"Modality": "CT", "Slices": 120, "Thick": 1.25, "Tags": ["a", 2],
                          "Meta": {"ok": True}, "Odd": "text"}),
            ("s1", "first", {"Modality": "MR", "Slices": 2**70, "Tags": [], "Odd": 5,
                             "Bad": "\ud800x"}),
            ("s3", None, {"Modality": None, "Slices": 7, "Odd": None})]
    monkeypatch.setattr(projection, "PART", part)  # rows written in parts of this many
    schema = projection.write_table(tmp_path / "series.parquet", rows)
    fields = schema["fields"]
    assert schema["rows"] == 3
    assert fields["Odd"] == {"text": "Odd", "number": "Odd:number", "null": "Odd:null"}
    assert fields["Tags"] == {"text[]": "Tags", "number[]": "Tags:number[]"}
    assert fields["Meta"] == {"object": "Meta:object"}
    assert fields["Meta.ok"] == {"boolean": "Meta.ok"}
    con = duckdb.connect()
    table = f"read_parquet('{tmp_path / 'series.parquet'}')"
    types = {row[0]: row[1] for row in con.execute(f"DESCRIBE SELECT * FROM {table}").fetchall()}
    assert types["Slices"] == "DOUBLE"  # 2**70 does not fit a BIGINT
    assert types["Thick"] == "DOUBLE" and types["Modality"] == "VARCHAR"
    assert types["Tags"] == "VARCHAR[]" and types["Tags:number[]"] == "DOUBLE[]"
    got = con.execute(f'SELECT "_id", name, "Tags", "Tags:number[]", "Bad" FROM {table}').fetchall()
    assert got == [("s1", "first", [], [], "\ufffdx"), ("s2", None, ["a"], [2.0], None),
                   ("s3", None, None, None, None)]
    ints = projection.write_table(tmp_path / "ints.parquet", [("a", "a", {"n": 3})])
    assert ints["fields"]["n"] == {"number": "n"}
    assert con.execute(f"SELECT typeof(n) FROM read_parquet('{tmp_path / 'ints.parquet'}')"
                       ).fetchone() == ("BIGINT",)


def test_every_kind_is_published_beside_its_generation(root):
    layout = Layout(root)
    generation = current_generation(layout)
    folder = layout.index_dir / f"projection-{generation:06d}"
    assert sorted(p.name for p in folder.iterdir()) == [
        "annotations.parquet", "datasets.parquet", "images.parquet", "schema.json",
        "segmentations.parquet", "studies.parquet", "study_images.parquet"]
    with Mirror(root) as m:
        assert m.select("images") == sorted(m.select_images().ids) and len(m.select("images")) == 20
        assert m.select("segmentations") and m.select("studies") and m.select("datasets")
        study = m.study(m.studies()[0])
        in_study = m.select_images(study=study.name)
        assert in_study and sorted(in_study.names) == sorted(study.images)
        assert m.select_images(study=study.id).ids == in_study.ids


def test_readers_of_generation_n_see_its_projection_only(tmp_path):
    """A mirror opened at generation 1 keeps selecting from projection 1 while generations
    2 and 3 are published; one opened later sees the newest; folders older than the kept
    generations go with them."""
    writer = IndexWriter(Layout(tmp_path / "m"), spec=SPEC)
    docs = [{"_id": f"{i:024x}", "name": f"ISIC_{i:07d}", "n": i} for i in range(5)]

    def put(items):
        with writer.session() as session:
            ingest_documents(session, IMAGE, [(d, "0" * 64, "x", 0) for d in items],
                             utc_now())

    (tmp_path / "m" / "mirror.json").parent.mkdir(parents=True)
    put(docs)
    assert writer.publish() == 1
    first = open_projection(writer.layout.index_dir, 1)
    put([{**docs[0], "n": 100}, {"_id": "f" * 24, "name": "ISIC_9", "n": 9}])
    assert writer.publish() == 2
    with writer.session() as session:
        mark_removed(session, IMAGE, [docs[1]["_id"]], utc_now())
    assert writer.publish() == 3
    newest = open_projection(writer.layout.index_dir, 3)
    assert select_ids(first, [["n", ">=", 0]]) == [d["_id"] for d in docs]
    assert select_ids(first, [["n", "==", 100]]) == []
    assert select_ids(newest, [["n", "==", 100]]) == [docs[0]["_id"]]
    assert docs[1]["_id"] not in select_ids(newest) and "f" * 24 in select_ids(newest)
    for _ in range(KEEP_GENERATIONS):
        writer.publish()
    folders = sorted(p.name for p in writer.layout.index_dir.glob("projection-*"))
    assert folders == [f"projection-{n:06d}" for n in range(4, 7)]
    with pytest.raises(NoProjectionError, match="open it again"):  # as SQLite readers that
        select_ids(first, [["n", "<", 0]])  # held an old generation, a reader must reopen
    first.close()
    newest.close()
    writer.close()


def test_a_failed_projection_build_publishes_nothing(tmp_path, monkeypatch):
    writer = IndexWriter(Layout(tmp_path / "m"), spec=SPEC)
    with writer.session() as session:
        ingest_documents(session, IMAGE, [({"_id": "a" * 24, "name": "x"}, "0" * 64, "x", 0)],
                         utc_now())

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(projection, "write_links", broken)
    with pytest.raises(OSError, match="disk full"):
        writer.publish()
    index_dir = writer.layout.index_dir
    assert current_generation(writer.layout) is None and not list(index_dir.iterdir())
    monkeypatch.undo()
    assert writer.publish() == 1
    writer.close()


def test_an_index_without_a_projection_says_how_to_get_one(tmp_path):
    folder = tmp_path / "index" / "projection-000007"
    with pytest.raises(NoProjectionError, match="mirror reindex"):
        Projection(folder)
    with pytest.raises(NoProjectionError, match="no query projection published yet"):
        open_projection(tmp_path / "index", None)


# -- mirror sql ------------------------------------------------------------------------------

@pytest.mark.parametrize("statement, refused", [
    ("INSERT INTO images VALUES (1)", "INSERT statement is refused"),
    ("COPY images TO 'out.csv'", "COPY statement is refused"),
    ("ATTACH 'other.db' AS other", "ATTACH statement is refused"),
    ("PRAGMA version", "PRAGMA statement is refused"),
    ("SET threads = 1", "SET statement is refused"),
    ("CREATE TABLE t AS SELECT 1", "CREATE statement is refused"),
    ("DROP VIEW images", "DROP statement is refused"),
    ("SELECT 1; SELECT 2", "exactly one statement, not 2"),
    ("SELECT 1; DELETE FROM images", "exactly one statement, not 2"),
    ("", "exactly one statement, not 0"),
    ("SELEKT 1", "cannot parse the SQL"),
    ("SELECT * FROM read_csv('/etc/passwd')", "the SQL failed: Permission Error"),
    ("SELECT * FROM nope", "the SQL failed: Catalog Error"),
])
def test_mirror_sql_runs_reads_only(root, statement, refused):
    with Mirror(root) as m:
        with pytest.raises(ReadOnlySqlError, match=refused):
            m.sql(statement)
    code, output = run("sql", "--root", root, statement)
    assert code != 0 and output.startswith("error: ") and len(output.strip().splitlines()) == 1
    assert "Traceback" not in output


def test_mirror_sql_answers_in_every_format_of_mirror_query(root):
    statement = ('SELECT "_id", name, "meta.clinical.age_approx" AS age FROM images '
                 'WHERE "meta.clinical.age_approx" >= 40 ORDER BY "_id"')
    with Mirror(root) as m:
        expected = m.select_images([["meta.clinical.age_approx", ">=", 40]])
        header, rows = m.sql(statement)
    assert header == ["_id", "name", "age"] and [r[0] for r in rows] == expected.ids
    assert [r[1] for r in rows] == expected.names and expected.ids
    code, out = run("sql", "--root", root, statement, "--format", "ids")
    assert code == 0 and out.split() == expected.ids
    code, out = run("sql", "--root", root, statement, "--format", "csv")
    table = list(csv.reader(io.StringIO(out)))
    assert table[0] == header and [r[0] for r in table[1:]] == expected.ids
    code, out = run("sql", "--root", root, statement, "--format", "json")
    assert [o["_id"] for o in json.loads(out)] == expected.ids
    code, out = run("sql", "--root", root, statement, "--format", "jsonl")
    assert [json.loads(line)["name"] for line in out.splitlines()] == expected.names
    code, out = run("sql", "--root", root, statement)
    assert code == 0 and out.splitlines()[0].split() == header
    code, out = run("sql", "--root", root, "SELECT s.name, count(*) AS n FROM studies s JOIN "
                    "study_images l ON l.study_id = s._id GROUP BY 1 ORDER BY 1",
                    "--format", "json")
    assert code == 0 and all(o["n"] > 0 for o in json.loads(out))
    code, out = run("sql", "--root", root, "SELECT DATE '2020-01-02' AS d, 1.5::DECIMAL(4,2) AS x",
                    "--format", "json")
    assert json.loads(out) == [{"d": "2020-01-02", "x": "1.50"}]


# -- mirror query --kind ---------------------------------------------------------------------

def test_mirror_query_selects_any_kind(root):
    with Mirror(root) as m:
        failed = m.select("segmentations", [["failed", "==", True]])
        every = m.select("segmentations")
        assert set(failed) < set(every)
        images = m.select_images([["meta.clinical.age_approx", ">=", 40]]).ids
    code, out = run("query", "--root", root, "--kind", "segmentations", "--format", "ids")
    assert code == 0 and out.split() == every
    code, out = run("query", "--root", root, "--kind", "segmentation", "--where",
                    "failed == true", "--columns", "_id,imageId,failed", "--format", "json")
    assert code == 0 and [o["_id"] for o in json.loads(out)] == failed
    assert all(o["failed"] is True for o in json.loads(out))
    code, out = run("query", "--root", root, "--kind", "segmentations", "--count")
    assert code == 0 and out.strip() == str(len(every))
    code, out = run("query", "--root", root, "--where", "meta.clinical.age_approx >= 40",
                    "--count")
    assert code == 0 and out.strip() == str(len(images))
    code, out = run("query", "--root", root, "--kind", "series")
    assert code != 0 and "no kind 'series'" in out and "segmentations" in out
    code, out = run("query", "--root", root, "--kind", "studies", "--dataset", "x")
    assert code != 0 and "scope images only" in out


def test_sql_sees_only_the_projection_folder(root):
    with Mirror(root) as m:
        header, rows = run_sql(m.projection, "SELECT count(*) FROM images")
        assert rows == [(20,)]
        with pytest.raises(ReadOnlySqlError, match="Permission Error"):
            run_sql(m.projection, f"SELECT * FROM read_parquet('{root}/../*.parquet')")


def test_a_publish_links_the_tables_that_did_not_change(tmp_path):
    """A sync that changed no image does not rebuild the images table: the new projection
    holds the same file (a hard link); a changed document rebuilds its kind only."""
    writer = IndexWriter(Layout(tmp_path / "m"), spec=SPEC)
    image = {"_id": "a" * 24, "name": "ISIC_1", "n": 1}
    dataset = {"_id": "d" * 24, "name": "D"}
    with writer.session() as session:
        ingest_documents(session, IMAGE, [(image, "1" * 64, "x", 0)], utc_now())
        ingest_documents(session, SPEC.kind("dataset"), [(dataset, "2" * 64, "x", 0)], utc_now())
    index_dir = writer.layout.index_dir

    def inode(number, kind):
        return (index_dir / f"projection-{number:06d}" / f"{kind}.parquet").stat().st_ino

    assert writer.publish() == 1
    assert writer.publish() == 2
    assert inode(1, "images") == inode(2, "images") and inode(1, "datasets") == inode(2, "datasets")
    with writer.session() as session:
        ingest_documents(session, IMAGE, [({**image, "n": 2}, "3" * 64, "x", 0)], utc_now())
    assert writer.publish() == 3
    assert inode(3, "images") != inode(2, "images") and inode(3, "datasets") == inode(2, "datasets")
    third = open_projection(index_dir, 3)
    assert select_ids(third, [["n", "==", 2]]) == [image["_id"]]
    assert select_ids(third, kind="datasets") == [dataset["_id"]]
    third.close()
    writer.close()


def test_a_killed_publish_leaves_a_staging_folder_the_next_one_removes(tmp_path):
    writer = IndexWriter(Layout(tmp_path / "m"), spec=SPEC)
    index_dir = writer.layout.index_dir
    dead = index_dir / ".mirror-tmp-0123456789abcdef0123456789abcdef.999999999@nohost~projection"
    dead.mkdir(parents=True)
    from mirror.temps import host as _host

    dead = dead.rename(dead.with_name(dead.name.replace("nohost", _host())))
    (dead / "images.parquet").write_bytes(b"half")
    assert writer.publish() == 1
    assert not dead.exists() and (index_dir / "projection-000001" / "images.parquet").exists()
    writer.close()
