"""DICOM JSON headers (PS3.18 F.2) fast: each distinct element converted once, by pydicom.

:func:`mirror.sources.dicom.pydicom_header` (``dcmread``, then ``Dataset.to_json_dict``)
costs 2-15 ms of CPU per instance, most of a TCIA or IDC sync's CPU, and those syncs run
on threads that share the GIL. But the instances of a series repeat nearly all their
elements byte for byte (patient, study, series, equipment, private groups); only a few
(SOPInstanceUID, InstanceNumber, positions, times) differ. :func:`read_header` gives the
same JSON in a fraction of the time:

* **Scanning** an Explicit VR Little Endian dataset (what nearly every archive file is,
  including all encapsulated transfer syntaxes) is done here, top level only, with
  :func:`struct.unpack_from` over the bytes: each element's tag, VR and value bytes,
  stopping before the pixel data and skipping values over
  :data:`~mirror.sources.dicom.HEADER_VALUE_LIMIT` as ``dcmread(stop_before_pixels=True,
  defer_size=...)`` does. A sequence of undefined length is read by pydicom's own
  ``read_sequence`` at that offset.
* **Converting**: each element's JSON is remembered by what determines it -- its tag,
  explicit VR, raw value bytes and the dataset's character set -- so a repeated element
  costs a dictionary lookup. What is not in the cache, pydicom converts, in a pydicom
  ``Dataset`` holding what that conversion reads (the character set and
  ``PixelRepresentation``; every element of the file when a miss is ``UN`` or another
  VR whose conversion looks at its neighbours), under
  ``config.strict_reading`` as ``to_json_dict(suppress_invalid_tags=True)`` does; an
  element that fails is dropped as it drops it. A sequence of defined length is cached by
  its bytes, the character set and ``PixelRepresentation`` (pydicom passes that to the
  items, for ``US or SS`` elements); everything an item's elements depend on else (their
  private creators, their own character set) is inside those bytes. Never cached:
  sequences of undefined length (pydicom parsed them already), ``UN`` and other VRs
  outside :data:`CACHED_VRS` (``UN`` looks up its private creator in the dataset).
* **Anything else** -- implicit VR, big endian, deflated, a VR that is not two letters, a
  value that runs past the end of the bytes at hand, no valid SOPInstanceUID -- is read
  by pydicom's ``dcmread`` (:func:`_read_parsed`), which also raises the one-line
  :class:`~mirror.errors.DicomError` for what is not DICOM, and converted with the same
  kind of cache: an implicit element is keyed by the VR it gets (the dictionary's for a
  public tag, what its private creator names or ``UN`` for a private one; ambiguous VRs
  are never cached), and by the byte order.

The output equals :func:`~mirror.sources.dicom.pydicom_header`'s, key order included
(``tests/sources/test_dicomjson.py`` compares them, serialised, on every readable pydicom
test file, and on instances that differ in one value). The cache lives in the process
and is bounded: it is emptied when it holds :data:`CACHE_ELEMENTS` entries or about
:data:`CACHE_BYTES` of values (a value is at most 4 KiB, so a stream of distinct private
blobs could otherwise hold a gigabyte).
"""

from __future__ import annotations

import io
import os
import struct
import threading
from functools import lru_cache

from pydicom import config
from pydicom.charset import convert_encodings
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement, empty_value_for_VR
from pydicom.dataset import Dataset
from pydicom.filereader import ENCODED_VR, read_sequence
from pydicom.hooks import _private_vr_for_tag
from pydicom.tag import BaseTag
from pydicom.uid import UID, ExplicitVRLittleEndian
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32
from pydicom.values import convert_string

from mirror.sources import dicom

CACHE_ELEMENTS = 100_000
"""Distinct element JSONs one process keeps."""
CACHE_BYTES = 32 * 2**20
"""Bytes of raw values (counted three times: the key's bytes and their JSON) after which
the cache is emptied."""
CACHED_VRS = frozenset({"AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO",
                        "LT", "OB", "OD", "OF", "OL", "OV", "OW", "PN", "SH", "SL", "SS",
                        "ST", "SV", "TM", "UC", "UI", "UL", "UR", "US", "UT", "UV"})
"""Explicit VRs whose JSON depends only on the element's own bytes (and the charset)."""
READ_AHEAD = 2**20
"""Bytes of a file read for its header; a header that does not end (at the pixel data or
the end of the file) within them is read by pydicom instead."""

_CHARSET = 0x00080005
_SOP_UID = "00080018"
_UID_TAGS = {0x00080018: "SOPInstanceUID", 0x0020000E: "SeriesInstanceUID",
             0x0020000D: "StudyInstanceUID"}
_PIXEL_REPRESENTATION = 0x00280103
_CONTEXT = frozenset({_CHARSET, _PIXEL_REPRESENTATION})
_PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00009, 0x7FE00008})  # dcmread's stop_before_pixels
_ITEM_DELIMITER = 0xFFFEE00D
_SEQUENCE_DELIMITER = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
_LONG_VRS = frozenset(str(vr) for vr in EXPLICIT_VR_LENGTH_32)
_VRS = {vr: vr.decode("ascii") for vr in ENCODED_VR}
_ELEMENT = struct.Struct("<HH2sH")
_LENGTH_32 = struct.Struct("<L")
_SPECIAL_SYNTAXES = frozenset({"1.2.840.10008.1.2", "1.2.840.10008.1.2.2",
                               "1.2.840.10008.1.2.1.99"})  # implicit, big endian, deflated

_cache: dict[tuple, dict] = {}
_cached_bytes = [0]  # an estimate of what _cache holds
_DROPPED: dict = {}  # cached for an element read_header leaves out (a bulk value)
_converting = threading.Lock()
"""Held while pydicom converts: ``config.strict_reading`` sets a process-wide mode and
restores the previous one, so two threads inside it at once could leave it wrong."""


class _Unusual(Exception):
    """The bytes are not a plain Explicit VR Little Endian header: let pydicom read them."""


def _handler(element) -> str:
    return ""


def read_header(path_or_bytes) -> dict:
    """:func:`mirror.sources.dicom.pydicom_header`'s DICOM JSON, from the cache where the
    same element was seen before. Takes a path, bytes or a binary stream (read from its
    position, which is restored)."""
    data, whole = _head_bytes(path_or_bytes)
    if data is not None:
        try:
            return _fast(data, whole)
        except _Unusual:
            pass
    return _read_parsed(path_or_bytes)


def read_uids(path_or_bytes) -> dict[str, str] | None:
    """The instance's SOP, series and study UIDs (the only elements converted), or None
    when the fast scan cannot read it (:func:`mirror.sources.dicom.read_uids` then asks
    pydicom). Only valid UIDs are returned; anything else is left to pydicom's message."""
    data, whole = _head_bytes(path_or_bytes)
    if data is None:
        return None
    try:
        elements = _dataset(data, whole)[0]
    except _Unusual:
        return None
    wanted = {tag: elements[tag] for tag in _UID_TAGS if tag in elements}
    if _CHARSET in elements:
        wanted = {_CHARSET: elements[_CHARSET], **wanted}
    header = _convert(wanted)
    uids = {key: ((header.get(f"{tag:08X}") or {}).get("Value") or [""])[0]
            for tag, key in _UID_TAGS.items()}
    if not all(isinstance(v, str) and dicom.is_valid_uid(v) for v in uids.values()):
        return None
    return uids


def _head_bytes(source) -> tuple[bytes | None, bool]:
    """(the bytes to scan, whether they are the whole input)."""
    if isinstance(source, bytes | bytearray | memoryview):
        return bytes(source), True
    if isinstance(source, str | os.PathLike):
        try:
            with open(source, "rb") as f:
                data = f.read(READ_AHEAD + 1)
        except OSError:
            return None, False  # pydicom's read gives the message
        return data[:READ_AHEAD], len(data) <= READ_AHEAD
    try:
        start = source.tell()
        data = source.read(READ_AHEAD + 1)
        source.seek(start)
    except (OSError, AttributeError, io.UnsupportedOperation):
        return None, False
    return data[:READ_AHEAD], len(data) <= READ_AHEAD


def read_prefix_header(data: bytes) -> tuple[dict, bool]:
    """:func:`read_header` of a file's first bytes, and whether its header ends within
    them (the scan reached the pixel data): then the whole file gives the same header
    and need not be read again (a series zip's large instances)."""
    try:
        elements, ended = _dataset(data, True)
        return _checked(_convert(elements)), ended
    except _Unusual:
        return _read_parsed(data), False


def _fast(data: bytes, whole: bool) -> dict:
    return _checked(_convert(_dataset(data, whole)[0]))


def _checked(header: dict) -> dict:
    sop = ((header.get(_SOP_UID) or {}).get("Value") or [""])[0]
    if not dicom.is_valid_uid(sop):
        raise _Unusual  # pydicom's read says why
    return header


def _dataset(data: bytes, whole: bool) -> tuple[dict, bool]:
    """The raw top-level elements of the dataset (after the file meta group), and whether
    the scan stopped at the pixel data (not at the end of ``data``)."""
    if not dicom.is_dicom(data):
        raise _Unusual
    meta, pos = _scan(data, dicom.DICOM_HEAD_SIZE, whole, meta=True)
    syntax = meta.get(0x00020010)
    if syntax is None or syntax.__class__ is not tuple or not _explicit_little(syntax[2]):
        raise _Unusual
    elements, pos = _scan(data, pos, whole, meta=False)
    return elements, pos < len(data)


def _explicit_little(value: bytes | None) -> bool:
    """Whether pydicom reads a dataset of this transfer syntax as Explicit VR Little Endian
    (``read_partial``: every syntax but implicit, big endian, deflated and private ones)."""
    syntax = (value or b"").rstrip(b"\x00 ").decode("ascii", "replace")
    if syntax == ExplicitVRLittleEndian:
        return True
    if not syntax or syntax in _SPECIAL_SYNTAXES:
        return False
    try:
        uid = UID(syntax)
        return uid.is_transfer_syntax and uid.is_compressed and not uid.is_deflated
    except (ValueError, AttributeError):
        return False


def _scan(data: bytes, pos: int, whole: bool, *, meta: bool) -> tuple[dict, int]:
    """The raw elements from ``pos``, as pydicom's ``data_element_generator`` reads them
    (top level, Explicit VR Little Endian): ``({tag: (vr, length, value, offset) or a
    sequence's DataElement}, where it stopped)``. The file meta group stops at the first
    tag of another group; the dataset at the pixel data or the end. Raises
    :class:`_Unusual` for what that reader would read otherwise."""
    elements: dict = {}
    encoding: str | list[str] = "iso8859"  # pydicom's default_encoding
    end = len(data)
    unpack, unpack_32, vrs, long_vrs = _ELEMENT.unpack_from, _LENGTH_32.unpack_from, _VRS, \
        _LONG_VRS
    limit = dicom.HEADER_VALUE_LIMIT
    while pos + 8 <= end:
        group, number, vr_bytes, length = unpack(data, pos)
        tag = group << 16 | number
        if (group != 2) if meta else (tag in _PIXEL_TAGS):
            return elements, pos
        vr = vrs.get(vr_bytes)
        if vr is None or tag == _ITEM_DELIMITER:
            raise _Unusual
        if vr in long_vrs:
            if pos + 12 > end:
                raise _Unusual
            length = unpack_32(data, pos + 8)[0]
            pos += 12
        else:
            pos += 8
        if length == 0xFFFFFFFF:
            elements[tag], pos = _undefined_sequence(data, pos, tag, vr, encoding)
            continue
        if pos + length > end:
            raise _Unusual  # the value runs past the bytes at hand
        value_tell, pos = pos, pos + length
        if length > limit and tag != _CHARSET:
            elements.pop(tag, None)  # deferred by dcmread, then omitted by read_header
            continue
        value = data[value_tell:pos] if length else empty_value_for_VR(vr, raw=True)
        if tag == _CHARSET:
            encoding = convert_encodings(convert_string(value or b"", True))
        elements[tag] = (vr, length, value, value_tell)
    if pos != end or not whole:
        raise _Unusual  # cut inside an element header, or more bytes than we read
    return elements, pos


def _undefined_sequence(data: bytes, pos: int, tag: int, vr: str,
                        encoding) -> tuple[DataElement, int]:
    """A sequence of undefined length, read by pydicom as ``dcmread`` reads it."""
    if vr != "SQ":
        raise _Unusual  # UN of undefined length, encapsulated values: pydicom decides
    fp = io.BytesIO(data)
    fp.seek(pos)
    try:
        sequence = read_sequence(fp, False, True, 0xFFFFFFFF, encoding)
    except Exception:  # noqa: BLE001 - truncated or odd: the whole file goes to pydicom
        raise _Unusual from None
    end = fp.tell()
    if data[end - 8:end] != _SEQUENCE_DELIMITER:
        raise _Unusual
    return DataElement(BaseTag(tag), "SQ", sequence, pos, is_undefined_length=True), end


def _charset_key(charset: object) -> object:
    value = getattr(charset, "value", charset)
    return value if isinstance(value, bytes | None) else repr(value)


def _convert(elements: dict) -> dict:
    """Each element's JSON, in file order: cached, else converted by pydicom in a dataset
    of this file's elements. Bulk values (``BulkDataURI``) are left out at any depth, as
    :func:`~mirror.sources.dicom._drop_bulk` leaves them out."""
    charset = elements.get(_CHARSET)
    charset = _charset_key(charset[2] if charset is not None else None)
    pixel_rep = elements.get(_PIXEL_REPRESENTATION)
    pixel_rep = pixel_rep[2] if pixel_rep.__class__ is tuple else None
    header: dict = {}
    todo: list[tuple[int, tuple | None]] = []
    cached, get = CACHED_VRS, _cache.get
    for tag, raw in elements.items():
        key = None
        if raw.__class__ is tuple and (raw[0] in cached or raw[0] == "SQ"):
            # a sequence's items read the dataset's PixelRepresentation (US or SS)
            key = (tag, raw[0], raw[2], charset) if raw[0] != "SQ" else \
                (tag, "SQ", raw[2], charset, pixel_rep)
            hit = get(key)
            if hit is not None:
                if hit is not _DROPPED:
                    header[f"{tag:08X}"] = hit
                continue
        header[f"{tag:08X}"] = None  # its place in the order
        todo.append((tag, key))
    if todo:
        _convert_missing(elements, header, todo)
    return header


def _convert_missing(elements: dict, header: dict, todo: list) -> None:
    _bound_cache()
    ds = Dataset({BaseTag(tag): _raw(tag, elements[tag]) for tag in _context(elements, todo)})
    charset = elements.get(_CHARSET)
    encoding = (convert_encodings(convert_string(charset[2] or b"", True))
                if charset is not None else "iso8859")
    ds.set_original_encoding(False, True, encoding)
    with _converting, config.strict_reading():
        for tag, key in todo:
            name = f"{tag:08X}"
            try:
                element = ds[tag].to_json_dict(bulk_data_element_handler=_handler,
                                               bulk_data_threshold=dicom.HEADER_VALUE_LIMIT)
            except Exception:  # noqa: BLE001 - dropped, as suppress_invalid_tags drops it
                del header[name]
                continue
            if "BulkDataURI" in element:
                del header[name]
                element = _DROPPED
            elif element.get("vr") == "SQ" and "Value" in element:
                header[name] = element = {**element, "Value": [
                    dicom._drop_bulk(item) for item in element["Value"]]}
            else:
                header[name] = element
            if key is not None:
                _remember(key, element)


def _context(elements: dict, todo: list) -> list[int]:
    """The elements pydicom's conversion of ``todo`` may read: the character set and
    ``PixelRepresentation`` (which sequences pass to their items for ``US or SS``) for
    explicit VRs and sequences; every element for the rest (``UN`` looks up its private
    creator, ambiguous VRs other attributes)."""
    if all(_self_contained(elements[tag]) for tag, _ in todo):
        return [tag for tag in elements if tag in _CONTEXT] + [tag for tag, _ in todo
                                                               if tag not in _CONTEXT]
    return list(elements)


def _self_contained(raw) -> bool:
    vr = raw[0] if raw.__class__ is tuple else raw.VR
    return vr in CACHED_VRS or vr == "SQ"


def _bound_cache() -> None:
    if len(_cache) >= CACHE_ELEMENTS or _cached_bytes[0] >= CACHE_BYTES:
        _cache.clear()
        _cached_bytes[0] = 0


def _remember(key: tuple, element: dict) -> None:
    _cache[key] = element
    _cached_bytes[0] += 3 * len(key[2] or b"") + 200  # key[2]: the raw bytes (or None)


def _raw(tag: int, raw) -> RawDataElement | DataElement:
    if raw.__class__ is not tuple:
        return raw
    vr, length, value, value_tell = raw
    return RawDataElement(BaseTag(tag), vr, length, value, value_tell, False, True)


def _read_parsed(path_or_bytes) -> dict:
    """The same JSON for what :func:`_fast` does not read: pydicom's ``dcmread``, then the
    same cached conversion of its elements."""
    ds = dicom._parse(path_or_bytes, stop_before_pixels=True,
                      defer_size=dicom.HEADER_VALUE_LIMIT)
    dicom._drop_deferred(ds)
    charset = _charset_key(ds.get_item(_CHARSET, keep_deferred=True))
    pixel_rep = ds.get_item(_PIXEL_REPRESENTATION, keep_deferred=True)
    pixel_rep = getattr(pixel_rep, "value", None)
    header: dict = {}
    _bound_cache()
    with _converting, config.strict_reading():
        for tag in ds.keys():
            key = _parsed_key(ds, ds.get_item(tag, keep_deferred=True), charset, pixel_rep)
            if key is not None:
                hit = _cache.get(key)
                if hit is not None and hit is not _DROPPED:  # (never stored by these keys)
                    header[f"{tag:08X}"] = hit
                    continue
            try:
                element = ds[tag].to_json_dict(bulk_data_element_handler=_handler,
                                               bulk_data_threshold=dicom.HEADER_VALUE_LIMIT)
            except Exception:  # noqa: BLE001 - dropped, as suppress_invalid_tags drops it
                continue
            header[f"{tag:08X}"] = element
            if key is not None:
                _remember(key, element)
    return dicom._drop_bulk(header)


def _parsed_key(ds: Dataset, raw, charset, pixel_rep) -> tuple | None:
    """The cache key of one element as ``dcmread`` left it, or None (never cached). The
    VR an implicit element gets is part of its key: for a public tag the dictionary's,
    for a private one what its private creator names (or ``UN``); ambiguous VRs (``US or
    SS``...) depend on other elements and are not cached."""
    if not isinstance(raw, RawDataElement) or raw.value is None:
        return None
    tag, value, little = int(raw.tag), raw.value, raw.is_little_endian
    if not raw.is_implicit_VR:
        vr = raw.VR
    elif (tag >> 16) & 1:
        try:
            vr = _private_vr_for_tag(ds, raw.tag)
        except Exception:  # noqa: BLE001 - an odd creator: converted, not cached
            return None
        if vr == "SQ":
            return None
    else:
        vr = _dictionary_vr(tag)
    if vr == "SQ":
        return (tag, "SQ", bytes(value), little, charset, pixel_rep, raw.is_implicit_VR)
    if vr in CACHED_VRS or (vr == "UN" and raw.is_implicit_VR):
        return (tag, vr, bytes(value), little, charset, raw.is_implicit_VR)
    return None


@lru_cache(maxsize=8192)
def _dictionary_vr(tag: int) -> str | None:
    try:
        return dictionary_VR(tag)
    except KeyError:
        return None
