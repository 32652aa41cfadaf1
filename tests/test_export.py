"""Selections on a synced mirror, `mirror query`, and exports: what lands on disk."""

from __future__ import annotations

import csv
import hashlib
import json
import os

import pytest
from click.testing import CliRunner

from mirror import Mirror
from mirror.cli import main
from mirror.files import temp_beside
from mirror.sources.isic_v1.sandbox import serve
from mirror.sync import SyncOptions, sync


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("export") / "mirror"
    with serve(images=30, seed=5, private_fraction=0.0) as sb:
        assert sync(root, sb.url, SyncOptions(workers=4)).ok
    return root


@pytest.fixture()
def m(root):
    with Mirror(root) as mirror:
        yield mirror


def docs(m):
    return {name: m.image(name).json for name in m.images()}


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_select_and_sub_select_keep_the_selection(m):
    everything = docs(m)
    first = m.select_images([["meta.clinical.age_approx", ">=", 40]])
    assert m.image_selection is first
    expected = sorted(n for n, d in everything.items()
                      if isinstance(d["meta"]["clinical"].get("age_approx"), int)
                      and d["meta"]["clinical"]["age_approx"] >= 40)
    assert sorted(first.names) == expected and len(first) == len(expected) > 0
    refined = m.select_images(["meta.clinical.sex", "==", "female"], sub_select=True)
    assert set(refined.names) == {n for n in expected
                                  if everything[n]["meta"]["clinical"].get("sex") == "female"}
    assert all(img.meta["clinical"]["sex"] == "female" for img in refined)
    assert "1 images" not in repr(refined) and "age_approx >= 40" in repr(refined)


def test_dataset_scope_and_errors(m):
    ds = m.image("ISIC_0000000").json["dataset"]["name"]
    names = m.select_images(dataset=ds).names
    assert "ISIC_0000000" in names
    assert all(m.image(n).json["dataset"]["name"] == ds for n in names)
    with pytest.raises(KeyError, match="no dataset 'nope'"):
        m.select_images(dataset="nope")


def test_metadata_csv_has_provenance_and_every_clinical_field(m, tmp_path):
    from mirror.export import export_metadata

    selection = m.select_images([["meta.clinical.age_approx", ">=", 0]])
    export_metadata(m, tmp_path / "meta.csv", selection)
    rows = list(csv.DictReader(open(tmp_path / "meta.csv", encoding="utf-8")))
    assert [r["isic_id"] for r in rows] == selection.names
    clinical = set().union(*(m.image(n).meta["clinical"] for n in selection.names))
    assert clinical <= set(rows[0])
    for row in rows:
        img = m.image(row["isic_id"])
        assert row["copyright_license"] == m.dataset(img.json["dataset"]["_id"]).license
        assert row["age_approx"] == str(img.meta["clinical"]["age_approx"])
    attribution = (tmp_path / "meta.attribution.txt").read_text()
    assert sum(int(line.split("\t")[0]) for line in attribution.splitlines()[2:]) == len(rows)


def test_parquet_and_dataframe_match_the_csv(m, tmp_path):
    import pyarrow.parquet as pq

    from mirror.export import export_metadata

    selection = m.select_images()
    export_metadata(m, tmp_path / "meta.parquet", selection)
    table = pq.read_table(tmp_path / "meta.parquet").to_pylist()
    frame = m.images_frame()
    assert [r["isic_id"] for r in table] == list(frame["isic_id"]) == selection.names
    ages = {r["isic_id"]: r["age_approx"] for r in table}
    assert ages["ISIC_0000000"] == m.image("ISIC_0000000").meta["clinical"].get("age_approx")


def test_export_files_links_the_stored_bytes(m, root, tmp_path):
    from mirror.export import export_files

    selection = m.select_images([["meta.clinical.age_approx", ">=", 40]])
    dest = tmp_path / "out"
    summary = export_files(m, dest, selection, ["full", "masks", "superpixels"])
    assert not summary["missing"] and summary["linked"] == {"hard": summary["files"]}
    for name in selection.names:
        img = m.image(name)
        exported = dest / f"{name}{img.path.suffix}"
        assert exported.samefile(img.path)  # a hard link: no second copy of the bytes
        for seg in img.segmentations:
            assert sha(dest / f"{name}_mask_{seg.id}.png") == sha(m._blob(seg.id, "mask", ""))
    table = list(csv.DictReader(open(dest / "metadata.csv", encoding="utf-8")))
    assert [r["isic_id"] for r in table] == selection.names
    assert (dest / "attribution.txt").exists()
    # A killed export leaves only its staging folder beside DEST; the next one removes it.
    dead = temp_beside(dest).name.replace(f".{os.getpid()}@", ".999999999@")
    (tmp_path / dead).mkdir()
    (tmp_path / dead / "x.jpg").write_bytes(b"a killed export's partial file")
    again = export_files(m, dest, selection, ["full"], link="copy", replace=True)
    assert again["linked"] == {"copy": len(selection)}
    assert list(tmp_path.glob(".mirror-tmp-*")) == []
    assert not list(dest.glob("*_mask_*"))  # the older export is gone whole


def test_query_cli_formats(root):
    runner = CliRunner()
    base = ["query", "--root", str(root), "--where", "meta.clinical.age_approx >= 40"]
    ids = runner.invoke(main, [*base, "--format", "ids"])
    assert ids.exit_code == 0
    with Mirror(root) as m:
        assert ids.output.split() == m.select_images(["meta.clinical.age_approx", ">=", 40]).ids
    jsonl = runner.invoke(main, [*base, "--format", "jsonl", "--columns",
                                 "isic_id,meta.clinical.age_approx"])
    rows = [json.loads(line) for line in jsonl.output.splitlines()]
    assert rows and all(r["meta.clinical.age_approx"] >= 40 for r in rows)
    table = runner.invoke(main, [*base, "--columns", "isic_id,dataset"])
    assert table.output.splitlines()[0].split() == ["isic_id", "dataset"]
    count = runner.invoke(main, [*base, "--count"])
    assert int(count.output) == len(rows)


def test_query_cli_errors_are_one_line(root):
    runner = CliRunner()
    bad = runner.invoke(main, ["query", "--root", str(root), "--where", "name like x"])
    assert bad.exit_code == 2 and bad.output.count("\n") == 1 and "FIELD OP VALUE" in bad.output
    regex = runner.invoke(main, ["query", "--root", str(root), "--where", "name ~ ("])
    assert regex.exit_code == 2 and "bad regular expression" in regex.output


def test_export_files_cli_reports_what_is_not_mirrored(tmp_path):
    root = tmp_path / "thumbs"
    with serve(images=3, seed=5, private_fraction=0.0) as sb:
        assert sync(root, sb.url, SyncOptions(blobs=frozenset({"thumbnail"}))).ok
    result = CliRunner().invoke(main, ["export", "files", "--root", str(root),
                                       str(tmp_path / "out"), "--blobs", "full,thumbnail"])
    assert result.exit_code == 1
    assert "not mirrored, so not exported: 3 file(s)" in result.output
    assert len(list((tmp_path / "out").glob("*_thumbnail.jpg"))) == 3
