"""Collections, patients and studies as objects, derived from the getSeries rows."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from mirror.api import Mirror
from mirror.cli import main
from mirror.config import layout_for, load_config
from mirror.index import ObjectRow
from mirror.index.database import open_reader
from mirror.sources.tcia.hierarchy import collection_key, derive, patient_key
from mirror.sources.tcia.sandbox import start
from mirror.sources.tcia.spec import COLLECTION_ID, PATIENT_KEY
from mirror.store import SAFE_ID
from tests.sources.tcia.test_source import sync


@pytest.fixture
def sb():
    sandbox = start(collections=2, seed=23)
    yield sandbox
    sandbox.stop()


def objects(root, kind: str) -> dict[str, tuple]:
    """id -> (parent_id, removed, doc) of every object of ``kind`` in the published index."""
    engine = open_reader(layout_for(root, load_config(root)))
    try:
        with engine.connect() as conn:
            return {oid: (parent, removed, doc) for oid, parent, removed, doc in conn.execute(
                select(ObjectRow.id, ObjectRow.parent_id, ObjectRow.removed, ObjectRow.doc)
                .where(ObjectRow.kind == kind))}
    finally:
        engine.dispose()


def cli(*args: str):
    return CliRunner().invoke(main, list(args))


def test_ids_are_safe_distinct_and_readable_when_they_can_be():
    assert collection_key("LIDC-IDRI") == "LIDC-IDRI"
    assert patient_key("LIDC-IDRI", "LIDC-IDRI-0001") == "LIDC-IDRI.LIDC-IDRI-0001"
    keys = {patient_key(c, p) for c, p in [("A.B", "C"), ("A", "B.C"), ("A", "B"), ("B", "A"),
                                           ("QIN LUNG CT", "1"), ("x" * 60, "y" * 10)]}
    assert len(keys) == 6
    for key in keys:
        assert PATIENT_KEY.fullmatch(key) and SAFE_ID.fullmatch(key) and ".." not in key
    for name in ("QIN LUNG CT", "../../escape", "a" * 65, "LIDC-IDRI"):
        assert COLLECTION_ID.fullmatch(collection_key(name))
        assert SAFE_ID.fullmatch(collection_key(name))
    assert collection_key("QIN LUNG CT") != collection_key("QIN_LUNG_CT")


def test_documents_take_what_most_series_say():
    rows = [{"Collection": "C", "PatientID": "P", "StudyInstanceUID": "1.2", "LicenseName": n,
             "SeriesInstanceUID": f"1.2.{i}", "StudyDate": "01-02-2003"}
            for i, n in enumerate(["CC BY 4.0", "CC BY 4.0", "CC BY 3.0"])]
    derived = derive(rows)
    assert derived["collection"] == [{"collection_id": "C", "Collection": "C",
                                      "LicenseName": "CC BY 4.0"}]
    assert derived["patient"] == [{"patient_key": "C.P", "PatientID": "P", "Collection": "C",
                                   "collection_id": "C"}]
    assert derived["study"] == [{"StudyInstanceUID": "1.2", "patient_key": "C.P",
                                 "PatientID": "P", "Collection": "C", "StudyDate": "01-02-2003"}]


def test_sync_indexes_the_hierarchy_with_parents_and_sql_tables(tmp_path, sb):
    root = tmp_path / "m"
    assert sync(root, sb).ok
    series = [s for s in sb.archive.series.values() if s.visible]
    collections, patients, studies = (objects(root, k) for k in ("collection", "patient",
                                                                "study"))
    assert set(collections) == {collection_key(s.collection) for s in series}
    assert set(patients) == {patient_key(s.collection, s.patient_id) for s in series}
    assert set(studies) == {s.study_uid for s in series}
    for uid, (parent, _, _) in objects(root, "series").items():
        s = sb.archive.series[uid]
        assert parent == s.study_uid
        assert studies[parent][0] == patient_key(s.collection, s.patient_id)
        assert patients[studies[parent][0]][0] == collection_key(s.collection)
    study = sb.archive.studies[series[0].study_uid]
    assert studies[study.uid][2]["StudyDesc"] == study.description
    done = cli("sql", "--root", str(root), "SELECT count(*) AS n FROM studies")
    assert done.exit_code == 0, done.output
    assert done.output.split()[-1] == str(len(studies))
    done = cli("sql", "--root", str(root), "SELECT count(*) AS n FROM patients WHERE "
               f"Collection = '{series[0].collection}'")
    assert done.output.split()[-1] == str(len({s.patient_id for s in series
                                               if s.collection == series[0].collection}))


def test_selection_by_patient(tmp_path, sb):
    root = tmp_path / "m"
    assert sync(root, sb).ok
    one = sorted(sb.archive.series.values(), key=lambda s: s.uid)[0]
    wanted = {s.uid for s in sb.archive.series.values()
              if s.patient_id == one.patient_id and s.collection == one.collection}
    with Mirror(root) as m:
        assert set(m.select("series", f"PatientID == {one.patient_id}")) == wanted
        assert m.select("patients", f"PatientID == {one.patient_id}") == \
            [patient_key(one.collection, one.patient_id)]
    done = cli("query", "--root", str(root), "--kind", "studies", "--where",
               f"PatientID == {one.patient_id}", "--format", "ids")
    assert done.exit_code == 0, done.output
    assert set(done.output.split()) == {s.study_uid for s in sb.archive.series.values()
                                        if s.patient_id == one.patient_id
                                        and s.collection == one.collection}


def test_a_patient_removed_upstream_is_kept_and_marked(tmp_path, sb):
    root = tmp_path / "m"
    assert sync(root, sb).ok
    gone = sb.mutate("remove_patient", collection="Sandbox-Lung-CT")
    key = patient_key("Sandbox-Lung-CT", gone["patient"])
    studies = {sb_uid for sb_uid, (parent, _, _) in objects(root, "study").items()
               if parent == key}
    assert sync(root, sb, allow_removals=True).ok
    patient = objects(root, "patient")[key]
    assert patient[1] is True and patient[2]["PatientID"] == gone["patient"]  # kept, marked
    assert all(objects(root, "study")[uid][1] for uid in studies)
    assert not any(removed for oid, (_, removed, _) in objects(root, "patient").items()
                   if oid != key)
    assert objects(root, "collection")[collection_key("Sandbox-Lung-CT")][1] is False


def test_a_hidden_series_keeps_its_study_and_patient(tmp_path, sb):
    """Re-processing hides a series from every listing; its study and patient stay current
    (absent upstream is not removed)."""
    root = tmp_path / "m"
    assert sync(root, sb).ok
    lone = sorted(sb.archive.series.values(), key=lambda s: s.uid)[0]
    for s in list(sb.archive.series.values()):  # every series of the study hidden
        if s.study_uid == lone.study_uid:
            sb.mutate("reprocess", series=s.uid)
    assert sync(root, sb).ok
    assert objects(root, "study")[lone.study_uid][1] is False
    assert objects(root, "patient")[patient_key(lone.collection, lone.patient_id)][1] is False
