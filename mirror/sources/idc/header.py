"""DICOM JSON headers for the IDC source: now :mod:`mirror.sources.dicomjson`, shared with TCIA.

The per-element cache that started here (each distinct element converted once per
process) moved to :mod:`mirror.sources.dicomjson`, behind
:func:`mirror.sources.dicom.read_header`, so both DICOM sources use it; the cached
keyword lookups of the projection moved to :func:`mirror.sources.dicom.public_keyword_columns`.
These names stay for the IDC source's parser pool and older imports.
"""

from __future__ import annotations

from mirror.sources.dicom import public_keyword_columns, read_header
from mirror.sources.dicomjson import CACHE_ELEMENTS, CACHED_VRS

__all__ = ["CACHED_VRS", "CACHE_ELEMENTS", "public_keyword_columns", "read_header"]
