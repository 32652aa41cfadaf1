"""Exports and snapshots of an ISIC v2 mirror, through the CLI: isic-cli's layout, each
image's licence and attribution, snapshot create / verify / export."""

from __future__ import annotations

import csv
import io
import json

import pytest
import requests
from click.testing import CliRunner

from mirror.api import Mirror
from mirror.cli import main
from mirror.sources.isic_v2.client import TOKEN_ENV
from mirror.sources.isic_v2.isiccli import attribution_txt, license_text, metadata_csv
from mirror.sources.isic_v2.sandbox import start
from mirror.sync import SyncOptions, sync


@pytest.fixture(scope="module")
def mirrored(tmp_path_factory):
    """A v2 mirror of 40 sandbox images with their full files (and the records, by id)."""
    tmp = tmp_path_factory.mktemp("v2exports")
    root = tmp / "m"
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv(TOKEN_ENV, raising=False)
        mp.setenv("MIRROR_STATE_DIR", str(tmp / "state"))
        with start(images=40, seed=5) as sb:
            assert sync(root, sb.url, SyncOptions(source="isic-v2", blobs=frozenset({"full"}),
                                                  what=frozenset({"images"}))).ok
            page = requests.get(f"{sb.url}/images/?limit=100", timeout=30).json()
            assert page["next"] is None
        with Mirror(root) as m:
            records = [m.document("image", i) for i in sorted(m.ids("image"))]
        published = [r["isic_id"] for r in page["results"]]  # isic-cli's row order
        yield root, records, sorted(records, key=lambda r: published.index(r["isic_id"]))


def _cli(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_export_files_writes_isic_clis_layout(mirrored, tmp_path):
    root, _, records = mirrored
    dest = tmp_path / "out"
    result = _cli("export", "files", "--root", str(root), str(dest))  # default --blobs: full
    assert result.exit_code == 0, result.output
    assert f"exported {len(records)} file(s) of {len(records)} image(s)" in result.output
    with Mirror(root) as m:
        for record in records:
            served = m.image(record["isic_id"]).path.read_bytes()
            assert (dest / f"{record['isic_id']}.jpg").read_bytes() == served
    assert (dest / "metadata.csv").read_bytes() == metadata_csv(records)
    assert (dest / "attribution.txt").read_bytes() == attribution_txt(records)
    licenses = sorted({r["copyright_license"] for r in records})
    assert sorted(p.name for p in (dest / "licenses").iterdir()) == sorted(
        f"{n}.txt" for n in licenses)
    for name in licenses:
        assert (dest / "licenses" / f"{name}.txt").read_bytes() == license_text(name)
    rows = list(csv.DictReader(io.StringIO((dest / "metadata.csv").read_text("utf-8"),
                                           newline="")))
    assert [(r["isic_id"], r["copyright_license"], r["attribution"]) for r in rows] == [
        (r["isic_id"], r["copyright_license"], r["attribution"]) for r in records]
    assert [r["isic_id"] for r in records] != sorted(r["isic_id"] for r in records)


def test_export_files_selects_with_where_and_refuses_v1_file_kinds(mirrored, tmp_path):
    root, _, records = mirrored
    wanted = records[0]["copyright_license"]
    dest = tmp_path / "sel"
    result = _cli("export", "files", "--root", str(root), str(dest), "--where",
                  f"copyright_license == {wanted}")
    assert result.exit_code == 0, result.output
    expected = [r for r in records if r["copyright_license"] == wanted]
    assert sorted(p.name for p in dest.glob("ISIC_*")) == sorted(f"{r['isic_id']}.jpg"
                                                                 for r in expected)
    assert (dest / "metadata.csv").read_bytes() == metadata_csv(expected)
    refused = CliRunner().invoke(main, ["export", "files", "--root", str(root),
                                        str(tmp_path / "masks"), "--blobs", "full,masks"])
    assert refused.exit_code == 2
    assert "no 'masks' files" in refused.output


def test_thumbnails_not_mirrored_are_reported_not_invented(mirrored, tmp_path):
    root, records, _ = mirrored
    dest = tmp_path / "thumbs"
    result = CliRunner().invoke(main, ["export", "files", "--root", str(root), str(dest),
                                       "--blobs", "full,thumbnail", "--json"])
    assert result.exit_code == 1
    summary = json.loads(result.output)
    assert summary["files"] == len(records)
    assert len(summary["missing"]) == len(records)
    assert not list(dest.glob("*_thumbnail*"))


def test_export_metadata_carries_licence_and_attribution(mirrored, tmp_path):
    root, records, _ = mirrored
    out = tmp_path / "meta.csv"
    result = _cli("export", "metadata", "--root", str(root), str(out))
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(out.read_text("utf-8"))))
    assert [(r["isic_id"], r["copyright_license"], r["attribution"]) for r in rows] == [
        (r["isic_id"], r["copyright_license"], r["attribution"]) for r in records]
    assert "diagnosis_1" in rows[0] and "pixels_x" in rows[0]
    assert (tmp_path / "meta.attribution.txt").read_bytes() == attribution_txt(records)


def test_snapshot_create_verify_export_on_a_v2_mirror(mirrored, tmp_path):
    root, records, _ = mirrored
    created = _cli("snapshot", "create", "--root", str(root), "pin1")
    assert created.exit_code == 0, created.output
    assert f"{len(records)} image(s), {len(records)} document(s), {len(records)} file(s)" \
        in created.output
    verified = _cli("snapshot", "verify", "--root", str(root), "pin1")
    assert verified.exit_code == 0, verified.output
    assert "0 problem(s)" in verified.output
    dest = tmp_path / "snap"
    exported = _cli("snapshot", "export", "--root", str(root), "pin1", str(dest))
    assert exported.exit_code == 0, exported.output
    with Mirror(root) as m:
        for record in records:
            assert (dest / f"{record['isic_id']}.jpg").read_bytes() == \
                m.image(record["isic_id"]).path.read_bytes()
    assert (dest / "metadata.csv").read_bytes() == metadata_csv(records)
    assert (dest / "attribution.txt").read_bytes() == attribution_txt(records)
    for name in {r["copyright_license"] for r in records}:
        assert (dest / "licenses" / f"{name}.txt").read_bytes() == license_text(name)
    sums = (dest / "SHA256SUMS").read_text()
    assert "  metadata.csv\n" in sums and "  licenses/" in sums
    again = tmp_path / "snap2"
    assert _cli("snapshot", "export", "--root", str(root), "pin1", str(again)).exit_code == 0
    assert (again / "SHA256SUMS").read_bytes() == (dest / "SHA256SUMS").read_bytes()


def test_a_pinned_record_keeps_its_licence_after_a_relicence(tmp_path, monkeypatch):
    """The snapshot's metadata.csv is made from the pinned record, not the current one."""
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    monkeypatch.setenv("MIRROR_STATE_DIR", str(tmp_path / "state"))
    root = tmp_path / "m"
    options = SyncOptions(source="isic-v2", blobs=frozenset(), what=frozenset({"images"}))
    with start(images=20, seed=9) as sb:
        assert sync(root, sb.url, options).ok
        assert _cli("snapshot", "create", "--root", str(root), "before").exit_code == 0
        with Mirror(root) as m:
            candidates = [i for i in sorted(m.ids("image"))
                          if m.image(i).copyright_license != "CC-0"]
        changed = sb.mutate(relicense_ids=[candidates[0]])
        assert changed
        assert sync(root, sb.url, options).ok
    with Mirror(root) as m:
        now = m.image(candidates[0]).copyright_license
    dest = tmp_path / "snap"
    assert _cli("snapshot", "export", "--root", str(root), "before", str(dest)).exit_code == 0
    rows = {r["isic_id"]: r for r in csv.DictReader(io.StringIO(
        (dest / "metadata.csv").read_text("utf-8"), newline=""))}
    assert rows[candidates[0]]["copyright_license"] != now
