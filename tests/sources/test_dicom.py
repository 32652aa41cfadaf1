"""The shared DICOM layer: real bytes, headers without pixels, and hostile series zips."""

from __future__ import annotations

import hashlib
import io
import stat
import warnings
import zipfile
from pathlib import Path

import pydicom
import pytest

from mirror.errors import DicomError, IntegrityError, SeriesZipError, UnsafeZipEntryError
from mirror.sources import dicom
from mirror.sources.dicom import (
    DICOM_MAGIC_OFFSET,
    FolderSink,
    is_dicom,
    is_valid_uid,
    keyword_columns,
    make_instance,
    read_header,
    safe_unpack_zip,
    uid_for,
)

SERIES = uid_for("test", "series")
STUDY = uid_for("test", "study")


def instance(n: int, template: str = "CT_small.dcm", series: str = SERIES, **extra) -> bytes:
    return make_instance(template, patient_id="SB-001", study_uid=STUDY, series_uid=series,
                         sop_uid=uid_for("test", "sop", str(n)), instance_number=n,
                         extra=extra or None)


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def series_zip(path: Path, entries: list[tuple[str, bytes]], *, md5_rows=None,
               license_text: str | None = "Creative Commons\n", infos=None) -> Path:
    """A zip laid out as NBIA getImage?IncludeMD5=Yes sends it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zipfile warns about duplicate names
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
            if license_text is not None:
                z.writestr("LICENSE", license_text)
            for name, data in entries:
                z.writestr((infos or {}).get(name, zipfile.ZipInfo(name)), data,
                           compress_type=zipfile.ZIP_DEFLATED)
            rows = md5_rows if md5_rows is not None else [(n, md5(d)) for n, d in entries]
            z.writestr("md5hashes.csv",
                       "Filename,MD5Hash\n" + "".join(f"{n},{h}\n" for n, h in rows))
    return path


def good_entries(count: int = 3) -> list[tuple[str, bytes]]:
    return [(f"1-{i:02d}.dcm", instance(i)) for i in range(1, count + 1)]


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


# --- building and reading ----------------------------------------------------------------

def test_uid_for_is_deterministic_valid_and_distinct():
    uid = uid_for("collection", "patient", "1")
    assert uid == uid_for("collection", "patient", "1")
    assert uid != uid_for("collection", "patient", "2")
    assert uid != uid_for("collectionpatient", "1")  # parts are separated, not concatenated
    assert uid.startswith("2.25.") and len(uid) <= 64 and is_valid_uid(uid)
    assert not is_valid_uid("1.02.3") and not is_valid_uid("1." + "2" * 64)


@pytest.mark.parametrize("template", dicom.TEMPLATES)
def test_make_instance_round_trips_through_pydicom(template):
    data = instance(7, template, SeriesDescription="AX T1")
    assert data == instance(7, template, SeriesDescription="AX T1")  # no clock in the bytes
    assert is_dicom(data[:DICOM_MAGIC_OFFSET + 4])
    ds = pydicom.dcmread(io.BytesIO(data))
    assert ds.PatientID == "SB-001" and str(ds.PatientName) == "SB-001"
    assert ds.StudyInstanceUID == STUDY and ds.SeriesInstanceUID == SERIES
    assert ds.SOPInstanceUID == uid_for("test", "sop", "7")
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert ds.InstanceNumber == 7 and ds.SeriesDescription == "AX T1"
    assert ds.pixel_array.size > 0  # the pixels are real and decodable


def test_make_instance_refuses_bad_input():
    with pytest.raises(ValueError, match="not a DICOM UID"):
        make_instance(patient_id="P", study_uid="abc", series_uid=SERIES, sop_uid=SERIES)
    with pytest.raises(ValueError, match="unknown DICOM template"):
        make_instance("emri_small.dcm", patient_id="P", study_uid=STUDY, series_uid=SERIES,
                      sop_uid=SERIES)
    with pytest.raises(ValueError, match="not a DICOM keyword"):
        instance(1, NotAKeyword="x")


def test_is_dicom():
    data = instance(1)
    assert is_dicom(data) and is_dicom(data[:132])
    assert not is_dicom(data[:131])
    assert not is_dicom(b"<!DOCTYPE html>" + b" " * 200)


def test_read_header_has_no_pixel_data_and_flattens_to_keywords(tmp_path):
    data = instance(3, SeriesDescription="Lung 5mm")
    path = tmp_path / "x.dcm"
    path.write_bytes(data)
    for source in (data, path, str(path), io.BytesIO(data)):
        header = read_header(source)
        assert "7FE00010" not in header  # PixelData
        assert header["00080060"] == {"vr": "CS", "Value": ["CT"]}
        assert len(str(header)) < len(data)
    columns = keyword_columns(read_header(data))
    assert columns["Modality"] == "CT"
    assert columns["SliceThickness"] == 5.0
    assert columns["SeriesDescription"] == "Lung 5mm"
    assert columns["PatientID"] == "SB-001"
    assert columns["PatientName"] == "SB-001"  # PN: its Alphabetic string
    assert columns["StudyInstanceUID"] == STUDY
    assert columns["SeriesInstanceUID"] == SERIES
    assert columns["SOPInstanceUID"] == uid_for("test", "sop", "3")
    assert columns["InstanceNumber"] == 3
    assert columns["ImagePositionPatient"] == pytest.approx([-158.135803, -179.035797,
                                                             -75.699997])
    assert "PixelData" not in columns


def test_read_header_omits_bulk_values():
    big = b"\x01\x02" * 5000  # 10 kB, over HEADER_VALUE_LIMIT
    data = instance(1, EncapsulatedDocument=big, ImageComments="kept")
    header = read_header(data)
    assert "00420011" not in header  # EncapsulatedDocument left out, not inlined
    assert keyword_columns(header)["ImageComments"] == "kept"
    assert len(str(header)) < 20_000


def test_keyword_columns_sequences_and_unknown_tags():
    columns = keyword_columns({
        "00081140": {"vr": "SQ", "Value": [{"00081155": {"vr": "UI", "Value": ["1.2.3"]}}]},
        "00091001": {"vr": "LO", "Value": ["private"]},
        "00100010": {"vr": "PN"},
        "00280030": {"vr": "DS", "Value": [0.5, 0.5]},
        "7FE00010": {"vr": "OW", "InlineBinary": "AAAA"},
    })
    assert columns == {"ReferencedImageSequence": [{"ReferencedSOPInstanceUID": "1.2.3"}],
                       "00091001": "private", "PatientName": None, "PixelSpacing": [0.5, 0.5]}


@pytest.mark.filterwarnings("ignore:End of file reached")
@pytest.mark.parametrize("body", [b"<html><body>502 Bad Gateway</body></html>" * 5, b"",
                                  b"\x00" * 128 + b"DICM" + b"\xff" * 40])
def test_read_header_refuses_non_dicom_in_one_line(body):
    with pytest.raises(DicomError) as err:
        read_header(body)
    assert "\n" not in str(err.value) and "DICOM" in str(err.value)
    assert isinstance(err.value, IntegrityError)


# --- series zips: the good case ----------------------------------------------------------

def test_safe_unpack_zip_good_series(tmp_path):
    entries = good_entries(3)
    zpath = series_zip(tmp_path / "s.zip", entries)
    out = tmp_path / "out"
    out.mkdir()
    result = safe_unpack_zip(zpath, FolderSink(out), expected_count=3, series_uid=SERIES,
                             expected_sop_uids=[uid_for("test", "sop", str(i))
                                                for i in (1, 2, 3)])
    assert result.license == "Creative Commons\n"
    assert [i.name for i in result.instances] == [n for n, _ in entries]
    assert [i.md5 for i in result.instances] == [md5(d) for _, d in entries]
    assert result.stored == [out / n for n, _ in entries]
    for name, data in entries:
        assert (out / name).read_bytes() == data
    assert tree(out) == sorted(n for n, _ in entries)  # no temp files left behind


def test_safe_unpack_zip_without_md5_list_needs_opt_out(tmp_path):
    zpath = tmp_path / "s.zip"
    with zipfile.ZipFile(zpath, "w") as z:
        z.writestr("00000001.dcm", instance(1))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(SeriesZipError, match="IncludeMD5=Yes"):
        safe_unpack_zip(zpath, FolderSink(out))
    assert len(safe_unpack_zip(zpath, FolderSink(out), require_md5=False).instances) == 1


# --- series zips: hostile cases ----------------------------------------------------------

def _symlink(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


HOSTILE = {
    "dotdot": ([("../evil.dcm", 1)], UnsafeZipEntryError, "'..'"),
    "nested-dotdot": ([("a/../../evil.dcm", 1)], UnsafeZipEntryError, "'..'"),
    "absolute": ([("/tmp/evil.dcm", 1)], UnsafeZipEntryError, "absolute"),
    "backslash-absolute": ([("\\evil.dcm", 1)], UnsafeZipEntryError, "absolute"),
    "drive": ([("C:evil.dcm", 1)], UnsafeZipEntryError, "drive letter"),
    "nested": ([("sub/evil.dcm", 1)], UnsafeZipEntryError, "plain file name"),
    "duplicate": ([("1.dcm", 1), ("1.dcm", 2)], UnsafeZipEntryError, "twice"),
    "case-duplicate": ([("a.dcm", 1), ("A.dcm", 2)], UnsafeZipEntryError, "twice"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_names_are_refused_and_nothing_is_written(tmp_path, case):
    spec, error, text = HOSTILE[case]
    zpath = series_zip(tmp_path / "s.zip", [(n, instance(i)) for n, i in spec])
    out = tmp_path / "a" / "out"
    out.mkdir(parents=True)
    with pytest.raises(error, match=text) as err:
        safe_unpack_zip(zpath, FolderSink(out))
    assert "\n" not in str(err.value)
    assert tree(tmp_path) == ["a", "a/out", "s.zip"]


def test_symlink_entry_is_refused(tmp_path):
    data = instance(1)
    zpath = series_zip(tmp_path / "s.zip", [("1.dcm", data)], infos={"1.dcm": _symlink("1.dcm")})
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(UnsafeZipEntryError, match="symbolic link"):
        safe_unpack_zip(zpath, FolderSink(out))
    assert tree(out) == []


def test_zip_bomb_is_refused_by_ratio_and_by_total(tmp_path):
    zeros = b"\x00" * (8 * 2**20)
    bomb = dicom.DICOM_MAGIC.rjust(132, b"\x00") + zeros  # looks like DICOM, expands ~1000x
    zpath = series_zip(tmp_path / "s.zip", [("1.dcm", bomb)])
    assert zpath.stat().st_size < 100_000
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(SeriesZipError, match="expands .*x .limit 1024x.: refusing a likely"):
        safe_unpack_zip(zpath, FolderSink(out))  # zeros deflate ~1030x: one repeated byte
    with pytest.raises(SeriesZipError, match="limit 200x"):
        safe_unpack_zip(zpath, FolderSink(out), max_ratio=200)
    with pytest.raises(SeriesZipError, match="expands to .* bytes, more than the limit"):
        safe_unpack_zip(zpath, FolderSink(out), max_total=2**20, max_ratio=10_000)
    good = series_zip(tmp_path / "g.zip", good_entries(3))
    with pytest.raises(SeriesZipError, match="zip bomb"):
        safe_unpack_zip(good, FolderSink(out), max_total=50_000)
    with pytest.raises(SeriesZipError, match="entries"):
        safe_unpack_zip(good, FolderSink(out), max_entries=3)
    assert tree(out) == []


def test_truncated_zip_is_refused(tmp_path):
    zpath = series_zip(tmp_path / "s.zip", good_entries(3))
    data = zpath.read_bytes()
    out = tmp_path / "out"
    out.mkdir()
    for cut in (len(data) // 2, len(data) - 10, 0):
        zpath.write_bytes(data[:cut])
        with pytest.raises(SeriesZipError, match="truncated or damaged"):
            safe_unpack_zip(zpath, FolderSink(out))
    assert tree(out) == []


def test_corrupted_entry_bytes_are_refused(tmp_path):
    entries = [("1.dcm", instance(1))]
    with zipfile.ZipFile(tmp_path / "s.zip", "w", zipfile.ZIP_STORED) as z:
        z.writestr("1.dcm", entries[0][1])
        z.writestr("md5hashes.csv", f"Filename,MD5Hash\n1.dcm,{md5(entries[0][1])}\n")
    data = bytearray((tmp_path / "s.zip").read_bytes())
    data[2000] ^= 0xFF  # inside the stored instance: the CRC no longer matches
    (tmp_path / "s.zip").write_bytes(bytes(data))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(SeriesZipError, match="truncated or damaged"):
        safe_unpack_zip(tmp_path / "s.zip", FolderSink(out))
    assert tree(out) == []


def test_wrong_md5_refuses_the_whole_series(tmp_path):
    entries = good_entries(3)
    rows = [(n, md5(d)) for n, d in entries]
    rows[2] = (rows[2][0], "0" * 32)
    zpath = series_zip(tmp_path / "s.zip", entries, md5_rows=rows)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(SeriesZipError, match="has MD5"):
        safe_unpack_zip(zpath, FolderSink(out))
    assert tree(out) == []  # the first two (good) instances were staged, then discarded


@pytest.mark.parametrize("rows, text", [
    ([("1-01.dcm", "a" * 32)], "disagree"),                       # a row missing
    ([("1-01.dcm", "a" * 32), ("1-02.dcm", "b" * 32), ("x.dcm", "c" * 32)], "disagree"),
    ([("1-01.dcm", "not-a-hash"), ("1-02.dcm", "b" * 32)], "bad row"),
    ([("1-01.dcm", "a" * 32), ("1-01.dcm", "a" * 32), ("1-02.dcm", "b" * 32)], "twice"),
])
def test_md5_list_must_match_the_entries(tmp_path, rows, text):
    zpath = series_zip(tmp_path / "s.zip", good_entries(2), md5_rows=rows)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(SeriesZipError, match=text):
        safe_unpack_zip(zpath, FolderSink(out))
    assert tree(out) == []


def test_non_dicom_entry_is_refused(tmp_path):
    html = b"<html><body>Server was not able to process your request</body></html>"
    entries = good_entries(2) + [("1-03.dcm", html)]
    zpath = series_zip(tmp_path / "s.zip", entries)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(DicomError, match="1-03.dcm is not DICOM"):
        safe_unpack_zip(zpath, FolderSink(out))
    assert tree(out) == []


def test_count_mismatch_is_refused(tmp_path):
    zpath = series_zip(tmp_path / "s.zip", good_entries(2))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(SeriesZipError, match="holds 2 instances but the archive listed 3"):
        safe_unpack_zip(zpath, FolderSink(out), expected_count=3)
    assert tree(out) == []


def test_duplicate_sop_uids_wrong_series_and_changed_listing_are_refused(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    same = instance(1)
    dup = series_zip(tmp_path / "d.zip", [("1.dcm", same), ("2.dcm", same)])
    with pytest.raises(SeriesZipError, match="share SOPInstanceUID"):
        safe_unpack_zip(dup, FolderSink(out))
    other = series_zip(tmp_path / "o.zip", [("1.dcm", instance(1, series=uid_for("other")))])
    with pytest.raises(SeriesZipError, match="belongs to series"):
        safe_unpack_zip(other, FolderSink(out), series_uid=SERIES)
    good = series_zip(tmp_path / "g.zip", good_entries(2))
    with pytest.raises(SeriesZipError, match="series changed"):
        safe_unpack_zip(good, FolderSink(out), expected_sop_uids=[uid_for("test", "sop", "1"),
                                                                 uid_for("test", "sop", "9")])
    assert tree(out) == []


def test_a_failing_sink_leaves_nothing_staged(tmp_path):
    """A sink error in the middle (disk full) discards what the sink had staged."""
    zpath = series_zip(tmp_path / "s.zip", good_entries(3))
    out = tmp_path / "out"
    out.mkdir()

    class FullSink(FolderSink):
        calls = 0

        def stage(self, name):
            self.calls += 1
            if self.calls == 3:
                raise OSError(28, "No space left on device")
            return super().stage(name)

    with pytest.raises(OSError, match="No space"):
        safe_unpack_zip(zpath, FullSink(out))
    assert tree(out) == []


# --- series zips read entry by entry (for a store that publishes from an iterator) -------

def publish_after_exhaustion(chunks, target: Path) -> None:
    """What ObjectStore.put_stream does: write a temp file, publish only at the end."""
    temp = target.with_suffix(".part")
    with open(temp, "wb") as f:
        try:
            for chunk in chunks:
                f.write(chunk)
        except BaseException:
            f.close()
            temp.unlink()
            raise
    temp.rename(target)


def test_open_series_zip_streams_verified_instances(tmp_path):
    entries = good_entries(3)
    zpath = series_zip(tmp_path / "s.zip", entries)
    out = tmp_path / "out"
    out.mkdir()
    with dicom.open_series_zip(zpath, expected_count=3, series_uid=SERIES) as series:
        assert series.license == "Creative Commons\n" and len(series) == 3
        for entry in series:
            assert entry.md5 == md5(dict(entries)[entry.name])
            publish_after_exhaustion(entry.chunks(), out / entry.name)
    assert [i.sop_uid for i in series.instances] == [uid_for("test", "sop", str(i))
                                                     for i in (1, 2, 3)]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == dict(entries)


def test_peek_uids_names_an_entry_before_it_streams(tmp_path):
    entries = good_entries(2) + [("x.dcm", b"<html>" + b" " * 200)]
    zpath = series_zip(tmp_path / "s.zip", entries)
    with dicom.open_series_zip(zpath) as series:
        entries_seen = []
        with pytest.raises(DicomError, match="x.dcm is not DICOM"):
            for entry in series:
                uids = entry.peek_uids()
                assert uids["SeriesInstanceUID"] == SERIES
                entries_seen.append(uids["SOPInstanceUID"])
                b"".join(entry.chunks())
        assert entries_seen == [uid_for("test", "sop", "1"), uid_for("test", "sop", "2")]


def test_open_series_zip_raises_before_a_bad_instance_is_published(tmp_path):
    entries = good_entries(2)
    rows = [(entries[0][0], md5(entries[0][1])), (entries[1][0], "f" * 32)]
    zpath = series_zip(tmp_path / "s.zip", entries, md5_rows=rows)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(SeriesZipError, match="has MD5"):
        with dicom.open_series_zip(zpath) as series:
            for entry in series:
                publish_after_exhaustion(entry.chunks(), out / entry.name)
    assert tree(out) == [entries[0][0]]  # the good one was published, the bad one never


def test_open_series_zip_requires_each_entry_to_be_read(tmp_path):
    zpath = series_zip(tmp_path / "s.zip", good_entries(2))
    with pytest.raises(SeriesZipError, match="not read to its end"):
        with dicom.open_series_zip(zpath) as series:
            for entry in series:
                next(entry.chunks())


def test_tiny_first_chunks_are_held_back_until_the_magic(tmp_path, monkeypatch):
    monkeypatch.setattr(dicom, "ZIP_CHUNK", 50)  # the magic arrives in the third chunk
    entries = good_entries(1)
    zpath = series_zip(tmp_path / "s.zip", entries)
    with dicom.open_series_zip(zpath) as series:
        for entry in series:
            assert b"".join(entry.chunks()) == entries[0][1]
