"""DICOM helpers shared by the TCIA and IDC sources (and their sandboxes).

* :func:`make_instance` builds real DICOM Part 10 bytes from pydicom's bundled test files,
  with the identity (patient, study, series, SOP UIDs) rewritten, so sandboxes serve files
  that any DICOM reader accepts and whose bytes depend only on the arguments.
* :func:`uid_for` makes deterministic UIDs, :func:`is_dicom` checks the Part 10 magic.
* :func:`read_header` / :func:`keyword_columns` turn a file's header (never its pixels) into
  DICOM JSON (PS3.18 F.2) and into ``{keyword: value}`` columns that selections can use.
* :func:`safe_unpack_zip` verifies and unpacks a series zip as NBIA's ``getImage`` sends it
  (``LICENSE``, the instances, ``md5hashes.csv``) without trusting anything inside it.

pydicom does all the DICOM parsing and writing and :mod:`zipfile` all the zip reading: the
code here only decides what is acceptable.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import re
import stat
import struct
import tempfile
import zipfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO, Protocol

import pydicom
from pydicom import datadict
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from mirror.errors import DicomError, SeriesZipError, UnsafeZipEntryError

DICOM_MAGIC_OFFSET = 128
"""A Part 10 file is a 128-byte preamble, then ``DICM``, then the file meta group."""
DICOM_MAGIC = b"DICM"
DICOM_HEAD_SIZE = DICOM_MAGIC_OFFSET + len(DICOM_MAGIC)

HEADER_VALUE_LIMIT = 4096
"""Bytes: :func:`read_header` omits any value longer than this (pixel data, overlays,
private blobs, curve data), so a header stays small whatever the file holds."""

TEMPLATES = ("CT_small.dcm", "MR_small.dcm", "rtdose.dcm", "SC_rgb_small_odd.dcm")
"""pydicom test files :func:`make_instance` accepts; all ship inside the pydicom wheel, so
building an instance never needs the network (pydicom downloads the others on demand)."""

UID_ROOT = "2.25."
"""PS3.5 B.2: a UID under ``2.25`` is the decimal form of a 128-bit number, no registration
needed; :func:`uid_for` derives that number from a hash instead of a random UUID."""

UID_PATTERN = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
"""PS3.5 9.1 (pydicom's ``RE_VALID_UID``); a valid UID is also at most 64 characters."""

# --- series zips (NBIA getImage) ---------------------------------------------------------

ZIP_MAX_TOTAL = 64 * 2**30
"""Bytes: the largest uncompressed series zip accepted (declared and actually read) when the
caller knows no better. TCIA's largest series are a few GiB. Callers that know the series'
size from the archive (``getSeries`` ``FileSize``) should pass a bound derived from it, as
the TCIA source does: that is the real zip-bomb guard."""
ZIP_MAX_RATIO = 1024.0
"""Uncompressed/compressed size above which an entry of at least :data:`ZIP_RATIO_MIN_SIZE`
is refused. Deflate cannot exceed ~1032x, so this refuses only entries that are almost
entirely one repeated byte, which no real instance is (CT/MR slices deflate 2-5x, mostly
empty SEG masks a few hundred times); a lower limit would refuse real masks."""
ZIP_RATIO_MIN_SIZE = 2**20
"""Entries smaller than this (bytes) skip the ratio check: tiny or blank files compress far
without being dangerous, and :data:`ZIP_MAX_TOTAL` bounds them anyway."""
ZIP_MAX_ENTRIES = 100_000
"""Entries per series zip; TCIA's largest series hold a few tens of thousands of images."""
ZIP_SIDE_FILE_LIMIT = 4 * 2**20
"""Bytes read at most from ``LICENSE`` and ``md5hashes.csv``."""
ZIP_HEADER_PREFIX = 2**20
"""Bytes of each instance kept in memory while it streams, to read its UIDs from."""
ZIP_CHUNK = 2**20

UID_TAGS = {"SOPInstanceUID": "00080018", "SeriesInstanceUID": "0020000E",
            "StudyInstanceUID": "0020000D"}
LICENSE_ENTRY = "LICENSE"
MD5_ENTRY = "md5hashes.csv"
_DRIVE = re.compile(r"^[A-Za-z]:")
_MD5_HEX = re.compile(r"^[0-9a-fA-F]{32}$")


# --- building instances -------------------------------------------------------------------

def uid_for(*parts: str) -> str:
    """A UID that depends only on ``parts``: ``2.25.<128 bits of SHA-256>``, at most 44 chars.

    Sandboxes and tests need UIDs that are stable across runs and machines (Python's
    ``hash`` is salted per process) and valid for every DICOM reader.
    """
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode("utf-8")).digest()
    return UID_ROOT + str(int.from_bytes(digest[:16], "big"))


def is_valid_uid(value: str) -> bool:
    """Whether ``value`` is a PS3.5 UID (digits and dots, no leading zeros, <= 64 chars)."""
    return isinstance(value, str) and len(value) <= 64 and bool(UID_PATTERN.match(value))


@lru_cache(maxsize=len(TEMPLATES))
def _template_bytes(template: str) -> bytes:
    if template not in TEMPLATES:
        raise ValueError(f"unknown DICOM template {template!r}: use one of {', '.join(TEMPLATES)}")
    path = pydicom.data.get_testdata_file(template, download=False)
    if path is None:
        raise DicomError(f"pydicom's test file {template} is missing: reinstall pydicom")
    return Path(path).read_bytes()


def make_instance(template: str = "CT_small.dcm", *, patient_id: str, study_uid: str,
                  series_uid: str, sop_uid: str, instance_number: int = 1,
                  extra: dict | None = None) -> bytes:
    """Real DICOM bytes: ``template`` with its identity rewritten.

    The patient (ID and name), study, series and SOP instance UIDs, the frame of reference
    and the instance number are replaced; ``extra`` sets further attributes by keyword
    (e.g. ``{"SeriesDescription": "AX T1", "ImageComments": "reprocessed"}``). Nothing comes
    from the clock, so equal arguments give equal bytes.
    """
    for name, uid in (("study_uid", study_uid), ("series_uid", series_uid),
                      ("sop_uid", sop_uid)):
        if not is_valid_uid(uid):
            raise ValueError(f"{name} {uid!r} is not a DICOM UID (digits and dots, <= 64 chars)")
    ds = pydicom.dcmread(io.BytesIO(_template_bytes(template)))
    ds.PatientID = patient_id
    ds.PatientName = patient_id
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.SOPInstanceUID = sop_uid
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.InstanceNumber = instance_number
    if "FrameOfReferenceUID" in ds:
        ds.FrameOfReferenceUID = uid_for(study_uid, "frame-of-reference")
    for keyword, value in (extra or {}).items():
        if datadict.tag_for_keyword(keyword) is None:
            raise ValueError(f"extra attribute {keyword!r} is not a DICOM keyword")
        setattr(ds, keyword, value)
    out = io.BytesIO()
    pydicom.dcmwrite(out, ds, enforce_file_format=True)
    return out.getvalue()


# --- reading ------------------------------------------------------------------------------

def is_dicom(head: bytes) -> bool:
    """Whether ``head`` (a file's first 132 bytes or more) starts a DICOM Part 10 file."""
    return (len(head) >= DICOM_HEAD_SIZE
            and bytes(head[DICOM_MAGIC_OFFSET:DICOM_HEAD_SIZE]) == DICOM_MAGIC)


def _source(path_or_bytes) -> tuple[str, bytes, object]:
    """(a name for messages, the first 132 bytes, what pydicom should read)."""
    if isinstance(path_or_bytes, bytes | bytearray | memoryview):
        data = bytes(path_or_bytes)
        return "DICOM bytes", data[:DICOM_HEAD_SIZE], io.BytesIO(data)
    if isinstance(path_or_bytes, str | os.PathLike):
        with open(path_or_bytes, "rb") as f:
            head = f.read(DICOM_HEAD_SIZE)
        return os.fspath(path_or_bytes), head, os.fspath(path_or_bytes)
    start = path_or_bytes.tell()
    head = path_or_bytes.read(DICOM_HEAD_SIZE)
    path_or_bytes.seek(start)
    return getattr(path_or_bytes, "name", "DICOM stream"), head, path_or_bytes


_PARSE_ERRORS = (InvalidDicomError, EOFError, ValueError, TypeError, KeyError, IndexError,
                 NotImplementedError, AttributeError, struct.error, OSError)
"""What pydicom raises for bytes that are not a whole DICOM header; ``OSError`` too: it is
what pydicom 3 raises for a sequence cut short ("No tag to read at file position ...")."""


def _parse(path_or_bytes, **options) -> Dataset:
    name, head, source = _source(path_or_bytes)
    if not is_dicom(head):
        raise DicomError(f"{name} is not a DICOM file (no 'DICM' at byte {DICOM_MAGIC_OFFSET}):"
                         " the archive sent something else; fetch it again")
    try:
        ds = pydicom.dcmread(source, **options)
        # pydicom reads leniently: "DICM" followed by garbage parses to almost nothing
        if not ds.file_meta.get("TransferSyntaxUID"):
            raise ValueError("no transfer syntax in the file meta group")
        if not is_valid_uid(str(ds.get("SOPInstanceUID", ""))):
            raise ValueError("no valid SOPInstanceUID")
    except _PARSE_ERRORS as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DicomError(f"{name} is not a readable DICOM file ({reason}); fetch it again") \
            from None
    return ds


def _drop_deferred(ds: Dataset) -> None:
    """Delete values pydicom deferred (longer than the limit) instead of reading them."""
    for tag in list(ds.keys()):
        element = ds.get_item(tag, keep_deferred=True)
        if isinstance(element, RawDataElement):
            if element.value is None and element.length:
                del ds[tag]
            continue
        if element.VR == "SQ":
            for item in element.value:
                _drop_deferred(item)


def pydicom_header(path_or_bytes) -> dict:
    """:func:`read_header`'s reference: the whole header through pydicom's own
    ``Dataset.to_json_dict``, element by element. :func:`read_header` must give exactly
    this (the tests compare them on every readable pydicom test file); it is 5-20x slower.
    """
    ds = _parse(path_or_bytes, stop_before_pixels=True, defer_size=HEADER_VALUE_LIMIT)
    _drop_deferred(ds)
    header = ds.to_json_dict(bulk_data_threshold=HEADER_VALUE_LIMIT,
                             bulk_data_element_handler=lambda element: "",
                             suppress_invalid_tags=True)
    return _drop_bulk(header)


def read_header(path_or_bytes) -> dict:
    """The file's header as DICOM JSON (PS3.18 F.2), without pixel data or bulk values.

    Reading stops before the pixel data and omits every value over
    :data:`HEADER_VALUE_LIMIT` (never read). Raises :class:`DicomError` when the input is
    not DICOM. The JSON is :func:`pydicom_header`'s, element for element, but repeated
    elements come from a cache (see :mod:`mirror.sources.dicomjson`): the instances of a
    series share nearly all their elements, and converting each with pydicom was the
    largest CPU cost of a TCIA or IDC sync.
    """
    from mirror.sources import dicomjson

    return dicomjson.read_header(path_or_bytes)


def _drop_bulk(header: dict) -> dict:
    out = {}
    for tag, element in header.items():
        if "BulkDataURI" in element:
            continue
        if element.get("vr") == "SQ" and "Value" in element:
            element = {**element, "Value": [_drop_bulk(item) for item in element["Value"]]}
        out[tag] = element
    return out


def read_uids(path_or_bytes) -> dict[str, str]:
    """``{"SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID"}`` read from the file
    (from the fast header scan when it can read the file, converting only those three)."""
    from mirror.sources import dicomjson

    uids = dicomjson.read_uids(path_or_bytes)
    if uids is not None:
        return uids
    keys = ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID")
    ds = _parse(path_or_bytes, stop_before_pixels=True, specific_tags=list(keys))
    return {k: str(ds.get(k, "")) for k in keys}


def _plain(vr: str, value: object) -> object:
    if vr == "PN":
        return value.get("Alphabetic") if isinstance(value, dict) else value
    if vr == "SQ":
        return keyword_columns(value) if isinstance(value, dict) else value
    return value


def keyword_columns(header_json: dict) -> dict[str, object]:
    """Flatten DICOM JSON to ``{keyword: value}``.

    Keys are pydicom's data-dictionary keywords (``Modality``, ``SliceThickness``, ...);
    tags without one (private, unknown) keep their 8-hex tag. Single values are unwrapped,
    multiple values become lists, empty elements None, person names their Alphabetic
    string, sequences lists of flattened items. Binary values are left out.
    """
    columns: dict[str, object] = {}
    for tag, element in header_json.items():
        if "InlineBinary" in element or "BulkDataURI" in element:
            continue
        vr = element.get("vr", "")
        values = [_plain(vr, v) for v in element.get("Value", [])]
        keyword = _keyword(tag) or tag
        if vr == "SQ":
            columns[keyword] = values
        else:
            columns[keyword] = None if not values else values[0] if len(values) == 1 else values
    return columns


@lru_cache(maxsize=8192)
def _keyword(tag: str) -> str | None:
    """The data-dictionary keyword of an 8-hex tag (None: unknown or not hex); cached,
    since pydicom's lookup (masks for repeating groups) costs microseconds per element."""
    try:
        return datadict.keyword_for_tag(int(tag, 16)) or None
    except ValueError:
        return None


@lru_cache(maxsize=8192)
def _public_keyword(tag: str) -> str | None:
    """:func:`_keyword` of a public tag; None for private ones (odd groups)."""
    try:
        private = (int(tag, 16) >> 16) & 1
    except ValueError:
        return None
    return None if private else _keyword(tag)


def public_keyword_columns(header_json: dict) -> dict[str, object]:
    """The single-valued public attributes of a DICOM JSON header, by keyword: what
    :func:`keyword_columns` gives once private and unknown tags (kept there by number),
    sequences and multi-valued attributes (lists) are left out, without flattening what
    is left out. The TCIA and IDC projections read this for every instance at publish."""
    columns: dict[str, object] = {}
    for tag, element in header_json.items():
        keyword = _public_keyword(tag)
        vr = element.get("vr", "")
        if keyword is None or vr == "SQ" or "InlineBinary" in element or \
                "BulkDataURI" in element:
            continue
        values = element.get("Value", [])
        if len(values) > 1:
            continue
        columns[keyword] = _plain(vr, values[0]) if values else None
    return columns


# --- series zips --------------------------------------------------------------------------

class StagedFile(Protocol):
    """One instance being written: bytes go in with ``write``; nothing is visible until
    ``commit`` (atomic), and ``discard`` removes every trace."""

    def write(self, data: bytes) -> object: ...

    def commit(self, instance: VerifiedInstance) -> object: ...

    def discard(self) -> None: ...


class InstanceSink(Protocol):
    """Where :func:`safe_unpack_zip` puts instances; ``name`` is already checked safe."""

    def stage(self, name: str) -> StagedFile: ...


@dataclass(frozen=True)
class VerifiedInstance:
    """An instance whose bytes matched the zip's CRC and ``md5hashes.csv``."""

    name: str
    md5: str
    size: int
    sop_uid: str
    series_uid: str
    study_uid: str


@dataclass
class SeriesZip:
    """What :func:`safe_unpack_zip` found: the licence text and the committed instances
    (``stored[i]`` is what the sink's ``commit`` returned for ``instances[i]``)."""

    license: str | None
    instances: list[VerifiedInstance] = field(default_factory=list)
    stored: list[object] = field(default_factory=list)


class FolderSink:
    """Writes instances as ``<folder>/<entry name>``: a temporary file in the same folder,
    then ``fsync`` and ``os.replace``, so a reader never sees half a file."""

    def __init__(self, folder: str | os.PathLike, fsync: bool = True):
        self.folder = Path(folder)
        self.fsync = fsync

    def stage(self, name: str) -> _FolderStaged:
        target = self.folder / name
        if target.parent != self.folder or name in ("", ".", ".."):
            raise UnsafeZipEntryError(f"zip entry {name!r} is not a plain file name")
        handle, temp = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=self.folder)
        return _FolderStaged(os.fdopen(handle, "wb"), Path(temp), target, self.fsync)


class _FolderStaged:
    def __init__(self, file: BinaryIO, temp: Path, target: Path, fsync: bool):
        self.file, self.temp, self.target, self.fsync = file, temp, target, fsync

    def write(self, data: bytes) -> None:
        self.file.write(data)

    def commit(self, instance: VerifiedInstance) -> Path:
        self.file.flush()
        if self.fsync:
            os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.temp, self.target)
        return self.target

    def discard(self) -> None:
        self.file.close()
        self.temp.unlink(missing_ok=True)


def _check_entry(info: zipfile.ZipInfo) -> None:
    """Refuse any entry that is not a plain, flat, unencrypted file (NBIA zips are flat)."""
    name = info.filename
    problem = None
    if not name or "\x00" in name:
        problem = "has an empty name or a NUL byte"
    elif name.startswith(("/", "\\")):
        problem = "has an absolute path"
    elif _DRIVE.match(name):
        problem = "names a drive letter"
    elif ".." in re.split(r"[/\\]", name):
        problem = "climbs out of the folder with '..'"
    elif "\\" in name or "/" in name or name in (".",):
        problem = "is not a plain file name (series zips are flat)"
    else:
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            problem = "is a symbolic link"
        elif stat.S_IFMT(mode) not in (0, stat.S_IFREG):
            problem = "is not a regular file"
        elif info.flag_bits & 0x1:
            problem = "is encrypted"
        elif info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            problem = f"uses compression method {info.compress_type} (NBIA stores or deflates)"
    if problem:
        raise UnsafeZipEntryError(f"series zip entry {name!r} {problem}: refusing the whole "
                                  "zip; report the series to the archive")


def _check_directory(infos: list[zipfile.ZipInfo], label: str, max_total: int,
                     max_ratio: float, max_entries: int) -> None:
    if len(infos) > max_entries:
        raise SeriesZipError(f"{label} holds {len(infos)} entries, more than the limit "
                             f"{max_entries}; raise max_entries if the series is that large")
    seen: set[str] = set()
    total = 0
    for info in infos:
        _check_entry(info)
        key = info.filename.casefold()
        if key in seen:
            raise UnsafeZipEntryError(f"{label} holds {info.filename!r} twice: refusing it "
                                      "(the second copy would overwrite the first)")
        seen.add(key)
        total += info.file_size
        if (info.file_size >= ZIP_RATIO_MIN_SIZE
                and info.file_size > max_ratio * max(info.compress_size, 1)):
            raise SeriesZipError(f"{label} entry {info.filename!r} expands "
                                 f"{info.file_size / max(info.compress_size, 1):.0f}x "
                                 f"(limit {max_ratio:g}x): refusing a likely zip bomb")
    if total > max_total:
        raise SeriesZipError(f"{label} expands to {total} bytes, more than the limit "
                             f"{max_total}: refusing a likely zip bomb")


def _read_side(archive: zipfile.ZipFile, info: zipfile.ZipInfo, label: str) -> str:
    if info.file_size > ZIP_SIDE_FILE_LIMIT:
        raise SeriesZipError(f"{label} entry {info.filename} is {info.file_size} bytes, more "
                             f"than {ZIP_SIDE_FILE_LIMIT}")
    with archive.open(info) as f:
        return f.read(ZIP_SIDE_FILE_LIMIT + 1).decode("utf-8", "replace")


def _parse_md5s(text: str, label: str) -> dict[str, str]:
    rows = list(csv.reader(io.StringIO(text)))
    if not rows or [c.strip() for c in rows[0]] != ["Filename", "MD5Hash"]:
        raise SeriesZipError(f"{label}: {MD5_ENTRY} lacks its 'Filename,MD5Hash' header")
    md5s: dict[str, str] = {}
    for row in rows[1:]:
        if not row:
            continue
        if len(row) != 2 or not _MD5_HEX.match(row[1].strip()):
            raise SeriesZipError(f"{label}: {MD5_ENTRY} has a bad row {row!r}")
        name = row[0].strip()
        if name in md5s:
            raise SeriesZipError(f"{label}: {MD5_ENTRY} lists {name!r} twice")
        md5s[name] = row[1].strip().lower()
    return md5s


class SeriesZipReader:
    """A series zip checked as a whole, whose instances are then read one at a time.

        with open_series_zip(path, expected_count=n, series_uid=uid) as series:
            series.license                       # the LICENSE text, or None
            for entry in series:                 # ZipEntry, in zip order
                store(entry.name, entry.chunks())
        series.instances                         # VerifiedInstance of each, in order

    Opening checks everything the central directory can tell before a byte is unpacked:
    it reads (a truncated download fails here, even after a 200), every entry is a plain
    flat file name (no ``..``, absolute path, drive letter, backslash, symlink, encryption
    or case-insensitive duplicate), entry count, declared total and per-entry ratio are
    within the limits, ``md5hashes.csv`` lists exactly the instance entries, and their
    number equals ``expected_count``.

    ``entry.chunks()`` yields an instance's bytes only after its first 132 show the DICOM
    magic, and raises at its end, *before* returning normally, when the MD5 disagrees
    with ``md5hashes.csv``, the zip CRC fails, the bytes pass the total limit, the UIDs in
    its header are missing, belong to another series than ``series_uid`` or repeat an
    earlier entry's SOPInstanceUID. A consumer that publishes only after the iterator is
    exhausted (``ObjectStore.put_stream`` does) therefore never publishes a bad instance.
    The loop itself raises when an entry was not read to its end, and, after the last,
    when the SOPInstanceUIDs are not exactly ``expected_sop_uids``. Every error is a
    :class:`SeriesZipError` or :class:`DicomError` with a one-line message.
    """

    def __init__(self, path: str | os.PathLike, *, expected_count: int | None = None,
                 expected_sop_uids: Iterable[str] | None = None, series_uid: str | None = None,
                 require_md5: bool = True, max_total: int = ZIP_MAX_TOTAL,
                 max_ratio: float = ZIP_MAX_RATIO, max_entries: int = ZIP_MAX_ENTRIES,
                 label: str | None = None):
        self.label = label or f"series zip {os.path.basename(os.fspath(path))}"
        self.expected_sop_uids = (set(expected_sop_uids) if expected_sop_uids is not None
                                  else None)
        self.series_uid = series_uid
        self.max_total = max_total
        self.instances: list[VerifiedInstance] = []
        self._sop_seen: dict[str, str] = {}
        self._read_total = 0
        try:
            self.archive = zipfile.ZipFile(path)
        except zipfile.BadZipFile as exc:
            raise self._damaged(exc) from None
        try:
            self._check(expected_count, require_md5, max_ratio, max_entries)
        except zipfile.BadZipFile as exc:
            self.archive.close()
            raise self._damaged(exc) from None
        except BaseException:
            self.archive.close()
            raise

    def _damaged(self, exc: Exception) -> SeriesZipError:
        return SeriesZipError(f"{self.label} is truncated or damaged ({exc}); download it "
                              "again")

    def _check(self, expected_count: int | None, require_md5: bool, max_ratio: float,
               max_entries: int) -> None:
        infos = self.archive.infolist()
        _check_directory(infos, self.label, self.max_total, max_ratio, max_entries)
        by_name = {info.filename: info for info in infos}
        self.entries = [i for i in infos if i.filename not in (LICENSE_ENTRY, MD5_ENTRY)]
        if expected_count is not None and len(self.entries) != expected_count:
            raise SeriesZipError(f"{self.label} holds {len(self.entries)} instances but the "
                                 f"archive listed {expected_count}: the series changed or the "
                                 "zip is incomplete; list the series again")
        self.md5s: dict[str, str] | None = None
        if MD5_ENTRY in by_name:
            self.md5s = _parse_md5s(_read_side(self.archive, by_name[MD5_ENTRY], self.label),
                                    self.label)
            names = {info.filename for info in self.entries}
            if set(self.md5s) != names:
                odd = sorted(set(self.md5s) ^ names)[0]
                raise SeriesZipError(f"{self.label}: {MD5_ENTRY} and the zip disagree about "
                                     f"{odd!r}")
        elif require_md5:
            raise SeriesZipError(f"{self.label} has no {MD5_ENTRY}: request it with "
                                 "IncludeMD5=Yes")
        self.license = (_read_side(self.archive, by_name[LICENSE_ENTRY], self.label)
                        if LICENSE_ENTRY in by_name else None)

    def __enter__(self) -> SeriesZipReader:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        self.archive.close()

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[ZipEntry]:
        for info in self.entries:
            entry = ZipEntry(info.filename, self.md5s.get(info.filename) if self.md5s else None,
                             info.file_size, self, info)
            yield entry
            if entry.instance is None:
                raise SeriesZipError(f"{self.label}: {info.filename} was not read to its end")
        if self.expected_sop_uids is not None and self.expected_sop_uids != set(self._sop_seen):
            odd = sorted(self.expected_sop_uids ^ set(self._sop_seen))[0]
            raise SeriesZipError(f"{self.label} and the archive's SOPInstanceUID list disagree "
                                 f"about {odd}: the series changed; list it again")

    def _read(self, entry: ZipEntry) -> Iterator[bytes]:
        try:
            yield from self._read_checked(entry)
        except zipfile.BadZipFile as exc:
            raise self._damaged(exc) from None

    @contextmanager
    def _chunks_of(self, entry: ZipEntry) -> Iterator[Iterator[bytes]]:
        """The entry's bytes: what :meth:`ZipEntry.peek_uids` already unpacked whole (and
        zipfile CRC-checked, having reached its end), else a fresh stream."""
        whole, entry.whole = entry.whole, None
        if whole is not None:
            yield iter([whole] if whole else [])
            return
        with self.archive.open(entry.info) as stream:
            yield iter(lambda: stream.read(ZIP_CHUNK), b"")

    def _read_checked(self, entry: ZipEntry) -> Iterator[bytes]:
        label, name = self.label, entry.name
        digest = hashlib.md5(usedforsecurity=False)
        prefix = bytearray()  # kept to read the UIDs from
        held: bytearray | None = bytearray()  # not yielded until the magic is seen
        size = 0
        with self._chunks_of(entry) as chunks:
            for chunk in chunks:
                size += len(chunk)
                digest.update(chunk)
                if self._read_total + size > self.max_total:
                    raise SeriesZipError(f"{label} expands past its limit while reading {name}:"
                                         " refusing a likely zip bomb")
                if len(prefix) < ZIP_HEADER_PREFIX:
                    prefix += chunk[:ZIP_HEADER_PREFIX - len(prefix)]
                if held is not None:
                    held += chunk
                    if len(held) < DICOM_HEAD_SIZE and size < entry.size:
                        continue  # the magic is not in yet
                    if not is_dicom(held):
                        raise DicomError(f"{label} entry {name} is not DICOM (no 'DICM' at "
                                         f"byte {DICOM_MAGIC_OFFSET})")
                    chunk, held = bytes(held), None
                yield chunk
        if held is not None:
            raise DicomError(f"{label} entry {name} is not DICOM (too short)")
        md5 = digest.hexdigest()
        if entry.md5 is not None and md5 != entry.md5:
            raise SeriesZipError(f"{label} entry {name} has MD5 {md5}, but {MD5_ENTRY} says "
                                 f"{entry.md5}; download it again")
        # the same first bytes as peek_uids parsed hold the same UIDs: not parsed twice
        # (compared byte for byte: cheaper than hashing them again)
        same_head = entry.peeked is not None and entry.peeked_head == prefix
        uids = dict(entry.peeked) if same_head else read_uids(bytes(prefix))
        missing = [k for k, v in uids.items() if not is_valid_uid(v)]
        if missing:
            raise DicomError(f"{label} entry {name} has no valid {missing[0]} in its first "
                             f"{ZIP_HEADER_PREFIX} bytes")
        if entry.peeked is not None and entry.peeked != uids:
            raise SeriesZipError(f"{label} entry {name}: its header changed between reads")
        sop = uids["SOPInstanceUID"]
        if sop in self._sop_seen:
            raise SeriesZipError(f"{label}: {name} and {self._sop_seen[sop]} share "
                                 f"SOPInstanceUID {sop}")
        if self.series_uid is not None and uids["SeriesInstanceUID"] != self.series_uid:
            raise SeriesZipError(f"{label}: {name} belongs to series "
                                 f"{uids['SeriesInstanceUID']}, not {self.series_uid}")
        self._sop_seen[sop] = name
        self._read_total += size
        entry.instance = VerifiedInstance(name, md5, size, sop, uids["SeriesInstanceUID"],
                                          uids["StudyInstanceUID"])
        self.instances.append(entry.instance)


@dataclass
class ZipEntry:
    """One instance entry of a :class:`SeriesZipReader`; read it once with :meth:`chunks`."""

    name: str
    md5: str | None  # what md5hashes.csv promises
    size: int  # what the central directory declares
    reader: SeriesZipReader = field(repr=False)
    info: zipfile.ZipInfo = field(repr=False)
    instance: VerifiedInstance | None = None  # set once chunks() ran to its end
    peeked: dict[str, str] | None = None
    peeked_head: bytes | None = field(default=None, repr=False)  # the bytes it parsed
    whole: bytes | None = field(default=None, repr=False)  # all of it, when peek read all
    header: dict | None = field(default=None, repr=False)  # set by peek_header
    header_complete: bool = False  # peek_header's bytes reached the pixel data

    def chunks(self) -> Iterator[bytes]:
        return self.reader._read(self)

    def peek_uids(self) -> dict[str, str]:
        """The entry's SOP/series/study UIDs, read from its first bytes before streaming
        it, for a store that names files by SOPInstanceUID. Unverified until
        :meth:`chunks` has run (which then checks they are the same)."""
        label = self.reader.label
        try:
            with self.reader.archive.open(self.info) as stream:
                head = stream.read(ZIP_HEADER_PREFIX + 1)
            if len(head) <= ZIP_HEADER_PREFIX:  # the end was reached: not unpacked twice
                self.whole = head
            head = head[:ZIP_HEADER_PREFIX]
        except zipfile.BadZipFile as exc:
            raise self.reader._damaged(exc) from None
        if not is_dicom(head):
            raise DicomError(f"{label} entry {self.name} is not DICOM (no 'DICM' at byte "
                             f"{DICOM_MAGIC_OFFSET})")
        if self.header is None:
            uids = read_uids(head)
        else:  # one parse gives both
            from mirror.sources.dicomjson import read_prefix_header

            self.header, self.header_complete = read_prefix_header(head)
            uids = {key: str(((self.header.get(tag) or {}).get("Value") or [""])[0])
                    for key, tag in UID_TAGS.items()}
        missing = [k for k, v in uids.items() if not is_valid_uid(v)]
        if missing:
            raise DicomError(f"{label} entry {self.name} has no valid {missing[0]}")
        self.peeked, self.peeked_head = uids, head
        return uids

    def peek_header(self) -> dict:
        """:meth:`peek_uids`, and the header (DICOM JSON, as :func:`read_header` gives
        it) read from the same first bytes in the same parse; ``header_complete`` says
        whether those bytes held all of it (the pixel data began within them), else an
        entry longer than them must have its header read again from the whole file."""
        self.header = {}
        self.peek_uids()
        return self.header


def open_series_zip(path: str | os.PathLike, **checks) -> SeriesZipReader:
    """See :class:`SeriesZipReader` (the keyword arguments are its checks and limits)."""
    return SeriesZipReader(path, **checks)


def safe_unpack_zip(path: str | os.PathLike, sink: InstanceSink, *,
                    expected_count: int | None = None,
                    expected_sop_uids: Iterable[str] | None = None,
                    series_uid: str | None = None,
                    require_md5: bool = True,
                    max_total: int = ZIP_MAX_TOTAL, max_ratio: float = ZIP_MAX_RATIO,
                    max_entries: int = ZIP_MAX_ENTRIES, label: str | None = None) -> SeriesZip:
    """Verify the series zip at ``path`` and hand its instances to ``sink``, all or nothing.

    Every check of :class:`SeriesZipReader` applies (``label`` names the zip in messages,
    e.g. ``"series <uid>"``; default: its file name). Each instance is written to a staged
    file of ``sink``; only when every instance has passed are the staged files committed,
    in zip order. On any failure every staged file is discarded and the error (one line)
    propagates. The sink alone decides where bytes go, so nothing is ever written anywhere
    it was not told. For a store that publishes from an iterator itself (and indexes only
    whole series), iterate :func:`open_series_zip` instead and skip the staging copy.
    """
    staged: list[StagedFile] = []
    try:
        with open_series_zip(path, expected_count=expected_count,
                             expected_sop_uids=expected_sop_uids, series_uid=series_uid,
                             require_md5=require_md5, max_total=max_total,
                             max_ratio=max_ratio, max_entries=max_entries,
                             label=label) as series:
            for entry in series:
                handle = None
                for chunk in entry.chunks():
                    if handle is None:
                        handle = sink.stage(entry.name)
                        staged.append(handle)
                    handle.write(chunk)
            result = SeriesZip(series.license)
            instances = list(series.instances)
    except BaseException:
        for handle in staged:
            handle.discard()
        raise
    committed = 0
    try:
        for handle, instance in zip(staged, instances, strict=True):
            result.stored.append(handle.commit(instance))
            result.instances.append(instance)
            committed += 1
    except BaseException:
        for handle in staged[committed + 1:]:
            handle.discard()
        raise
    return result


__all__ = ["DICOM_MAGIC", "DICOM_MAGIC_OFFSET", "FolderSink", "HEADER_VALUE_LIMIT",
           "InstanceSink", "SeriesZip", "SeriesZipReader", "StagedFile", "TEMPLATES",
           "VerifiedInstance", "ZipEntry", "is_dicom", "is_valid_uid", "keyword_columns",
           "make_instance", "open_series_zip", "public_keyword_columns", "pydicom_header",
           "read_header", "read_uids", "safe_unpack_zip", "uid_for"]
