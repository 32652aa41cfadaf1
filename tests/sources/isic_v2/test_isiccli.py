"""isic-cli's output layout from a mirror (research note §9), byte for byte."""

from __future__ import annotations

import hashlib

import pytest

from mirror.api import Mirror
from mirror.sources.isic_v2.client import TOKEN_ENV
from mirror.sources.isic_v2.isiccli import (
    attribution_txt,
    export_isic_cli,
    license_text,
    metadata_csv,
)
from mirror.sources.isic_v2.sandbox import start
from mirror.sync import SyncOptions, sync

RECORDS = [
    {"isic_id": "ISIC_0000000", "attribution": "Hospital Cl\u00ednic de Barcelona",
     "copyright_license": "CC-BY",
     "metadata": {"acquisition": {"pixels_x": 1022, "pixels_y": 767, "image_type": "dermoscopic"},
                  "clinical": {"age_approx": 55, "diagnosis_1": "Malignant",
                               "diagnosis_3": "Nevus, Spitz", "mel_thick_mm": "0.50",
                               "melanocytic": True}}},
    {"isic_id": "ISIC_0000001", "attribution": "Anonymous", "copyright_license": "CC-0",
     "metadata": {"acquisition": {"pixels_x": 10, "pixels_y": 20},
                  "clinical": {"melanocytic": False, "sex": "female"}}},
    {"isic_id": "ISIC_0000002", "attribution": "ViDIR Group", "copyright_license": "CC-BY-NC",
     "metadata": {"acquisition": {"pixels_x": 10, "pixels_y": 20}, "clinical": {}}},
]


def test_metadata_csv_matches_the_measured_isic_cli_bytes():
    assert metadata_csv(RECORDS) == (
        "isic_id,attribution,copyright_license,age_approx,diagnosis_1,diagnosis_3,image_type,"
        "mel_thick_mm,melanocytic,pixels_x,pixels_y,sex\r\n"
        'ISIC_0000000,Hospital Cl\u00ednic de Barcelona,CC-BY,55,Malignant,"Nevus, Spitz",'
        "dermoscopic,0.50,True,1022,767,\r\n"
        "ISIC_0000001,Anonymous,CC-0,,,,,,False,10,20,female\r\n"
        "ISIC_0000002,ViDIR Group,CC-BY-NC,,,,,,,10,20,\r\n").encode("utf-8")
    assert metadata_csv([]) == b"isic_id,attribution,copyright_license\r\n"


def test_attribution_txt_orders_by_count_then_name_with_anonymous_last():
    assert attribution_txt(RECORDS) == \
        "Hospital Cl\u00ednic de Barcelona\n\nViDIR Group\n\nAnonymous".encode()
    many = RECORDS + [dict(RECORDS[2]), dict(RECORDS[1]), dict(RECORDS[1])]
    assert attribution_txt(many) == \
        "ViDIR Group\n\nHospital Cl\u00ednic de Barcelona\n\nAnonymous".encode()
    assert attribution_txt([]) == b""


def test_license_texts_are_the_archive_templates():
    assert hashlib.sha256(license_text("CC-0")).hexdigest() == \
        "a2010f343487d3f7618affe54f789f5487602331c0a8d03f49e9a7c547cf0499"


def test_export_of_a_collection_follows_its_publish_order(tmp_path, monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    root, out = tmp_path / "m", tmp_path / "out"
    with start(images=40, seed=12) as sb:
        assert sync(root, sb.url, SyncOptions(source="isic-v2")).ok
    with Mirror(root) as m:
        members = m.collection_images(64)
        done = export_isic_cli(m, out, collection=64)
        assert done == {"images": len(members), "files": len(members), "missing_files": 0,
                        "licenses": sorted({m.image(i).copyright_license for i in members})}
        rows = (out / "metadata.csv").read_bytes().split(b"\r\n")[1:-1]
        assert [r.split(b",")[0].decode() for r in rows] == members
        for isic_id in members:
            assert (out / f"{isic_id}.jpg").read_bytes() == m.image(isic_id).path.read_bytes()
        assert sorted(p.name for p in (out / "licenses").iterdir()) == sorted(
            f"{name}.txt" for name in done["licenses"])


def test_an_unknown_licence_is_a_clear_error():
    from mirror.errors import MirrorError

    with pytest.raises(MirrorError, match="unknown licence"):
        license_text("CC-BY-SA")
