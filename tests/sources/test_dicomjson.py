"""read_header's fast scan and per-element cache give pydicom's own DICOM JSON, serialised
byte for byte (key order included), for every readable pydicom test file, read from a path,
from bytes and from a cut prefix, the first time and from the cache."""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_files
from pydicom.uid import ImplicitVRLittleEndian

from mirror.errors import DicomError
from mirror.sources import dicom, dicomjson


def _readable() -> list[tuple[str, dict]]:
    found = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in get_testdata_files("*.dcm"):
            try:
                found.append((path, dicom.pydicom_header(path)))
            except DicomError:
                continue
    return found


READABLE = _readable()
NAMES = [Path(p).name for p, _ in READABLE]


def _same(got: dict, expected: dict) -> None:
    assert json.dumps(got) == json.dumps(expected)


def test_there_are_many_kinds_of_file_to_compare():
    assert len(READABLE) > 40  # explicit and implicit VR, big endian, sequences, charsets
    scanned = 0
    for path, _ in READABLE:
        data = Path(path).read_bytes()
        try:
            dicomjson._fast(data, True)
            scanned += 1
        except dicomjson._Unusual:
            pass
    assert scanned > 25  # most take the fast scan, not pydicom's dcmread


@pytest.mark.parametrize("path,expected", READABLE, ids=NAMES)
def test_headers_equal_pydicoms_from_a_path_bytes_and_a_stream_twice(path, expected):
    data = Path(path).read_bytes()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for source in (path, data, data, io.BytesIO(data)):
            _same(dicom.read_header(source), expected)


@pytest.mark.parametrize("path", [p for p, _ in READABLE][::4], ids=NAMES[::4])
def test_a_cut_prefix_reads_as_pydicom_reads_it(path):
    data = Path(path).read_bytes()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for cut in (700, 3000):
            try:
                expected = dicom.pydicom_header(data[:cut])
            except DicomError:  # a sequence cut short, say: one line, not a traceback
                with pytest.raises(DicomError, match=r"^[^\n]*$"):
                    dicom.read_header(data[:cut])
                continue
            _same(dicom.read_header(data[:cut]), expected)


def test_instances_differing_in_values_keep_their_own_values():
    for template in dicom.TEMPLATES:
        for n in (1, 2, 3):
            data = dicom.make_instance(template, patient_id=f"p{n}", study_uid="1.2.3",
                                       series_uid="1.2.3.4", sop_uid=f"1.2.3.4.{n}",
                                       instance_number=n,
                                       extra={"SeriesDescription": f"series {n % 2}"})
            header = dicom.read_header(data)
            _same(header, dicom.pydicom_header(data))
            assert header["00080018"]["Value"] == [f"1.2.3.4.{n}"]
            assert header["00200013"]["Value"] == [n]


def test_a_full_cache_is_emptied_not_grown(monkeypatch):
    monkeypatch.setattr(dicomjson, "CACHE_ELEMENTS", 5)
    monkeypatch.setattr(dicomjson, "_cache", {})
    path, expected = READABLE[0]
    for _ in range(3):
        _same(dicom.read_header(path), expected)
        assert len(dicomjson._cache) <= max(5, len(expected)) + 5


@pytest.mark.parametrize("body", [b"", b"x" * 200, b"\0" * 128 + b"DICM" + b"\xff" * 40,
                                  b"\0" * 128 + b"DICM"])
def test_what_is_not_dicom_is_refused_in_one_line(body):
    with pytest.raises(DicomError) as info:
        dicom.read_header(body)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("path", [p for p, _ in READABLE], ids=NAMES)
def test_uids_are_pydicoms(path):
    keys = ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = dicom._parse(path, stop_before_pixels=True, specific_tags=list(keys))
        assert dicom.read_uids(Path(path).read_bytes()) == {k: str(ds.get(k, "")) for k in keys}


def _implicit(data: bytes) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    out = io.BytesIO()
    pydicom.dcmwrite(out, ds, enforce_file_format=True)
    return out.getvalue()


def test_implicit_vr_instances_differing_in_values_keep_their_own_values():
    """Implicit VR files go through dcmread; their elements are cached by the VR the
    dictionary (public tags) or the private creator (private tags) gives them."""
    for template in ("CT_small.dcm", "MR_small.dcm"):
        for n in (1, 2, 3):
            data = _implicit(dicom.make_instance(
                template, patient_id=f"p{n}", study_uid="1.2.3", series_uid="1.2.3.4",
                sop_uid=f"1.2.3.4.{n}", instance_number=n,
                extra={"SeriesDescription": f"series {n % 2}"}))
            header = dicom.read_header(data)
            _same(header, dicom.pydicom_header(data))
            assert header["00200013"]["Value"] == [n]
            assert header["0008103E"]["Value"] == [f"series {n % 2}"]


def test_the_cache_is_bounded_by_the_bytes_it_holds(monkeypatch):
    def fill(limit: int) -> int:
        monkeypatch.setattr(dicomjson, "CACHE_BYTES", limit)
        monkeypatch.setattr(dicomjson, "_cache", {})
        monkeypatch.setattr(dicomjson, "_cached_bytes", [0])
        for path, expected in READABLE[:10]:
            _same(dicom.read_header(path), expected)
        return len(dicomjson._cache)

    unbounded = fill(2**40)
    assert fill(20_000) < unbounded
    # emptied before each file once past the limit: at most one file's worth over it
    assert dicomjson._cached_bytes[0] < 20_000 + max(
        3 * len(Path(p).read_bytes()) + 200 * len(e) for p, e in READABLE[:10])


@pytest.mark.parametrize("prefix,complete", [(20_000, True), (3_000, False)])
def test_a_zip_entry_longer_than_the_peek_says_whether_its_header_was_all_there(
        tmp_path, monkeypatch, prefix, complete):
    """A TCIA instance longer than the peeked prefix is parsed a second time, from the
    stored file, only when its header did not end (at the pixel data) within the prefix."""
    import zipfile

    data = dicom.make_instance("CT_small.dcm", patient_id="p", study_uid="1.2.3",
                               series_uid="1.2.3.4", sop_uid="1.2.3.4.5")
    path = tmp_path / "series.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("1.dcm", data)
    monkeypatch.setattr(dicom, "ZIP_HEADER_PREFIX", prefix)  # CT_small is 39 kB
    with dicom.open_series_zip(path, require_md5=False) as series:
        for entry in series:
            header = entry.peek_header()
            assert entry.size > prefix and entry.header_complete is complete
            if complete:
                _same(header, dicom.pydicom_header(data))
            b"".join(entry.chunks())
