"""TCIA snapshots and exports: the DICOM tree, and each collection's licence and DOI."""

from __future__ import annotations

import csv
import io
import os

import pytest
from click.testing import CliRunner

from mirror.cli import main
from mirror.sources.tcia.exports import folder_name
from mirror.sources.tcia.sandbox import start
from tests.sources.tcia.test_source import sync


@pytest.fixture
def sb():
    sandbox = start(collections=2, seed=11)
    yield sandbox
    sandbox.stop()


def cli(*args: str):
    return CliRunner().invoke(main, list(args))


def rows(path) -> list[dict]:
    return list(csv.DictReader(io.StringIO(path.read_text())))


def test_folder_name_keeps_safe_names_and_makes_others_safe_and_distinct():
    assert folder_name("LIDC-IDRI") == "LIDC-IDRI"
    assert folder_name("QIN LUNG CT") == "QIN LUNG CT"
    for hostile in ("..", ".", "../../x", "a/b", "a\\b", "/abs", "x\x00y", ""):
        name = folder_name(hostile)
        assert "/" not in name and "\\" not in name and "\x00" not in name
        assert name not in (".", "..", "") and not name.startswith(".")
    assert folder_name("a/b") != folder_name("a_b") != folder_name("a:b")


def test_snapshot_pins_series_by_where_and_its_export_carries_licence_and_doi(tmp_path, sb):
    from mirror.snapshots import create_snapshot, export, verify_snapshot

    root = tmp_path / "m"
    assert sync(root, sb).ok
    snap = create_snapshot(root, "ct", where=["Modality == CT"], blobs=("dicom",))
    ct = [s for s in sb.archive.series.values() if s.modality == "CT"]
    assert sorted(e["id"] for e in snap.of_kind("series")) == sorted(s.uid for s in ct)
    assert len(snap.of_kind("instance")) == sum(len(s.images) for s in ct)
    assert verify_snapshot(root, "ct")["ok"]
    sb.mutate("set_license", collection=ct[0].collection)  # the licence changes upstream
    assert sync(root, sb).ok
    dest = tmp_path / "export"
    export(root, "ct", dest)
    for s in ct:
        for sop, image in s.images.items():
            path = (dest / "dicom" / s.collection / s.patient_id / s.study_uid / s.uid /
                    f"{sop}.dcm")
            assert path.read_bytes() == image.data
    table = rows(dest / "series.csv")
    assert sorted(r["SeriesInstanceUID"] for r in table) == sorted(s.uid for s in ct)
    assert {r["LicenseName"] for r in table} == {
        "Creative Commons Attribution 4.0 International License"}  # as pinned, not as now
    assert {r["DataDescriptionURI"] for r in table} == {s.description_uri for s in ct}
    text = (dest / "citations.txt").read_text()
    assert f"{ct[0].collection}: {len(ct)} series" in text
    assert "licence: Creative Commons Attribution 4.0 International License " \
           "<https://creativecommons.org/licenses/by/4.0/>" in text
    assert f"cite: {ct[0].description_uri}" in text
    create_snapshot(root, "now", where=["Modality == CT"], blobs=("dicom",))
    export(root, "now", tmp_path / "now")
    assert "Creative Commons Attribution 3.0 Unported License" in \
        (tmp_path / "now" / "citations.txt").read_text()


def test_cli_snapshot_create_verify_export(tmp_path, sb):
    root = tmp_path / "m"
    assert sync(root, sb).ok
    done = cli("snapshot", "create", "--root", str(root), "mr", "--where", "Modality == MR",
               "--blobs", "dicom")
    assert done.exit_code == 0, done.output
    done = cli("snapshot", "verify", "--root", str(root), "mr")
    assert done.exit_code == 0, done.output
    done = cli("snapshot", "export", "--root", str(root), "mr", str(tmp_path / "out"))
    assert done.exit_code == 0, done.output
    mr = [s for s in sb.archive.series.values() if s.modality == "MR"]
    files = sorted((tmp_path / "out" / "dicom").rglob("*.dcm"))
    assert len(files) == sum(len(s.images) for s in mr)


def test_cli_export_files_lays_out_the_dicom_tree_by_hard_links(tmp_path, sb):
    root = tmp_path / "m"
    assert sync(root, sb).ok
    dest = tmp_path / "tree"
    done = cli("export", "files", "--root", str(root), str(dest), "--where",
               "Modality == CT", "--blobs", "dicom")
    assert done.exit_code == 0, done.output
    assert "Collection/PatientID/StudyInstanceUID/SeriesInstanceUID" in done.output
    ct = [s for s in sb.archive.series.values() if s.modality == "CT"]
    for s in ct:
        for sop, image in s.images.items():
            path = dest / s.collection / s.patient_id / s.study_uid / s.uid / f"{sop}.dcm"
            assert path.read_bytes() == image.data
            assert os.stat(path).st_nlink >= 2  # a hard link into the store, not a copy
    assert sorted(p.name for p in dest.iterdir()) == sorted(
        {s.collection for s in ct} | {"series.csv", "citations.txt", "licenses"})
    for name in {s.collection for s in ct}:  # the zips' LICENSE text, once per collection
        text = (dest / "licenses" / name / "LICENSE.txt").read_text()
        assert f"part of the {name} collection" in text
        assert f"licence text: licenses/{name}/LICENSE.txt" in \
            (dest / "citations.txt").read_text()
    assert {r["LicenseURI"] for r in rows(dest / "series.csv")} == {s.license_uri for s in ct}
    done = cli("export", "files", "--root", str(root), str(tmp_path / "x"), "--blobs", "full")
    assert done.exit_code == 2 and "use --blobs dicom" in done.output


def test_export_of_hostile_names_stays_inside_dest(tmp_path, sb):
    root = tmp_path / "m"
    sb.mutate("rename_collection", old="Sandbox-Lung-CT", new="../../escape")
    assert sync(root, sb).ok
    dest = tmp_path / "out" / "tree"
    done = cli("export", "files", "--root", str(root), str(dest), "--blobs", "dicom")
    assert done.exit_code == 0, done.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m", "out"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["tree"]
    folders = sorted(p.name for p in dest.iterdir() if p.is_dir())
    assert folders == sorted(["Sandbox-Brain-MR", folder_name("../../escape"), "licenses"])
    assert (dest / "licenses" / folder_name("../../escape") / "LICENSE.txt").is_file()
    instances = sum(len(s.images) for s in sb.archive.series.values())
    assert len(list(dest.rglob("*.dcm"))) == instances


def test_cli_export_metadata_writes_series_rows_and_their_licences(tmp_path, sb):
    root = tmp_path / "m"
    assert sync(root, sb).ok
    out = tmp_path / "series.csv"
    done = cli("export", "metadata", "--root", str(root), str(out), "--where", "Modality == MR")
    assert done.exit_code == 0, done.output
    mr = [s for s in sb.archive.series.values() if s.modality == "MR"]
    table = rows(out)
    assert sorted(r["SeriesInstanceUID"] for r in table) == sorted(s.uid for s in mr)
    assert {r["LicenseName"] for r in table} == {s.license_name for s in mr}
    attribution = (tmp_path / "series.attribution.txt").read_text()
    assert f"cite: {mr[0].description_uri}" in attribution
