"""DICOM JSON headers of many instances of the same series, converted once per distinct value.

:func:`mirror.sources.dicom.read_header` converts every element of every instance with
pydicom (``Dataset.to_json_dict``): 10-20 ms of CPU per instance, the largest cost of an IDC
bucket sync and more than its download. The instances of one series repeat nearly all
their elements byte for byte (patient, study, series, equipment, private groups); only a
few (SOPInstanceUID, InstanceNumber, positions, times) differ. :func:`read_header` here
gives the same JSON, but remembers each element's JSON by what determines it -- its tag,
explicit VR, raw value bytes, byte order and the dataset's character set -- so a repeated
element costs a dictionary lookup instead of a conversion. pydicom still converts every
distinct element, so the output is pydicom's own (the tests compare them on pydicom's
bundled files).

Elements whose conversion depends on more than those bytes are never cached: sequences,
``UN`` and implicit-VR elements (their VR comes from a dictionary, for private tags from
the private creator), and VRs pydicom resolves from other elements (``US or SS``...).
The cache lives in the parser process (one per CPU, :data:`.source.PARSER_PROCESSES`) and
is bounded: it is emptied when it holds :data:`CACHE_ELEMENTS` entries.
"""

from __future__ import annotations

from functools import lru_cache

from pydicom import config, datadict
from pydicom.dataelem import RawDataElement

from mirror.sources import dicom

CACHE_ELEMENTS = 100_000
"""Distinct element JSONs one parser process keeps (about 30 MB at most)."""
CACHED_VRS = frozenset({"AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO",
                        "LT", "OB", "OD", "OF", "OL", "OV", "OW", "PN", "SH", "SL", "SS",
                        "ST", "SV", "TM", "UC", "UI", "UL", "UR", "US", "UT", "UV"})
"""Explicit VRs whose JSON depends only on the element's own bytes (and the charset)."""
_CHARSET = 0x00080005

_cache: dict[tuple, dict] = {}


def _handler(element) -> str:
    return ""


def read_header(path) -> dict:
    """:func:`mirror.sources.dicom.read_header`'s DICOM JSON, repeated elements from cache."""
    ds = dicom._parse(path, stop_before_pixels=True, defer_size=dicom.HEADER_VALUE_LIMIT)
    dicom._drop_deferred(ds)
    charset = ds.get_item(_CHARSET, keep_deferred=True)
    charset = getattr(charset, "value", charset)
    charset = charset if isinstance(charset, bytes | None) else repr(charset)
    header: dict = {}
    if len(_cache) >= CACHE_ELEMENTS:
        _cache.clear()
    with config.strict_reading():  # as to_json_dict(suppress_invalid_tags=True) reads
        for tag in ds.keys():
            raw = ds.get_item(tag, keep_deferred=True)
            key = None
            if isinstance(raw, RawDataElement) and raw.VR in CACHED_VRS and \
                    raw.value is not None:
                key = (int(raw.tag), raw.VR, bytes(raw.value), raw.is_little_endian, charset)
                hit = _cache.get(key)
                if hit is not None:
                    header[f"{tag:08X}"] = hit
                    continue
            try:
                element = ds[tag].to_json_dict(bulk_data_element_handler=_handler,
                                               bulk_data_threshold=dicom.HEADER_VALUE_LIMIT)
            except Exception:  # noqa: BLE001 - dropped, as suppress_invalid_tags drops it
                continue
            header[f"{tag:08X}"] = element
            if key is not None:
                _cache[key] = element
    return dicom._drop_bulk(header)


@lru_cache(maxsize=8192)
def _keyword(tag: str) -> str | None:
    """The data-dictionary keyword of a public 8-hex tag (None: private or unknown)."""
    try:
        number = int(tag, 16)
    except ValueError:
        return None
    if (number >> 16) & 1:  # odd group: private
        return None
    return datadict.keyword_for_tag(number) or None


def public_keyword_columns(header_json: dict) -> dict[str, object]:
    """The single-valued public attributes of a DICOM JSON header, by keyword: what
    :func:`mirror.sources.dicom.keyword_columns` gives once private and unknown tags (kept
    there by number), sequences and multi-valued attributes (lists) are left out, without
    flattening what is left out. A projection reads this for every instance at publish."""
    columns: dict[str, object] = {}
    for tag, element in header_json.items():
        keyword = _keyword(tag)
        vr = element.get("vr", "")
        if keyword is None or vr == "SQ" or "InlineBinary" in element or \
                "BulkDataURI" in element:
            continue
        values = element.get("Value", [])
        if len(values) > 1:
            continue
        columns[keyword] = dicom._plain(vr, values[0]) if values else None
    return columns
