"""The IDC parser's DICOM JSON (the shared cached reader) is pydicom's, element for element,
and the projected keyword columns (IDC's and TCIA's) are what the full flattening gives once
lists and private tags are dropped."""

from __future__ import annotations

import re
import warnings

import pytest

from mirror.sources import dicom, dicomjson
from mirror.sources.idc.spec import _instance_columns
from mirror.sources.tcia.spec import _instance_columns as tcia_instance_columns
from tests.sources.test_dicomjson import NAMES, READABLE  # one reference set

TAG = re.compile(r"[0-9A-Fa-f]{8}")


def test_there_are_many_kinds_of_file_to_compare():
    assert len(READABLE) > 40  # explicit and implicit VR, big endian, sequences, charsets


@pytest.mark.parametrize("path,expected", READABLE, ids=NAMES)
def test_cached_headers_equal_pydicoms_first_and_second_time(path, expected):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert dicom.read_header(path) == expected
        assert dicom.read_header(path) == expected  # now from the cache


def test_a_full_cache_is_emptied_not_grown(monkeypatch):
    monkeypatch.setattr(dicomjson, "CACHE_ELEMENTS", 5)
    monkeypatch.setattr(dicomjson, "_cache", {})
    path, expected = READABLE[0]
    for _ in range(3):
        assert dicom.read_header(path) == expected
        assert len(dicomjson._cache) <= max(5, len(expected)) + 5


def test_instances_differing_in_one_value_keep_their_own_value(tmp_path):
    files = []
    for n in (1, 2):
        data = dicom.make_instance(patient_id="p", study_uid="1.2.3", series_uid="1.2.3.4",
                                   sop_uid=f"1.2.3.4.{n}", instance_number=n)
        files.append(tmp_path / f"{n}.dcm")
        files[-1].write_bytes(data)
    first, second = (dicom.read_header(f) for f in files)
    assert first["00080018"]["Value"] == ["1.2.3.4.1"]
    assert second["00080018"]["Value"] == ["1.2.3.4.2"]
    assert second["00200013"]["Value"] == [2] and first == dicom.pydicom_header(files[0])


def _flattened(doc: dict) -> dict:
    shown = {k: v for k, v in doc.items() if k != "dicom"}
    for keyword, value in dicom.keyword_columns(doc["dicom"]).items():
        if not TAG.fullmatch(keyword) and keyword not in shown and not isinstance(value, list):
            shown[keyword] = value
    return shown


@pytest.mark.parametrize("path,expected", READABLE[:30], ids=NAMES[:30])
def test_projected_columns_are_the_flattened_single_values(path, expected):
    doc = {"crdc_instance_uuid": "x", "SOPInstanceUID": "1.2", "Modality": "mine",
           "dicom": expected}
    assert _instance_columns(doc) == _flattened(doc)


@pytest.mark.parametrize("path,expected", READABLE[:30], ids=NAMES[:30])
def test_tcias_projected_columns_are_the_flattened_single_values(path, expected):
    doc = {"SOPInstanceUID": "1.2", "SeriesInstanceUID": "1.2.3", "Modality": "mine",
           "dicom": expected}
    assert tcia_instance_columns(doc) == _flattened(doc)
