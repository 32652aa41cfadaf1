"""A local, faithful imitation of TCIA's NBIA v4 API (and the frozen Bindaas v3 one).

    from mirror.sources.tcia.sandbox import start
    sb = start(collections=2, seed=0)
    sb.v4_url        # "http://127.0.0.1:PORT/nbia-api/services/v4"
    sb.v3_url        # "http://127.0.0.1:PORT/services/v3/TCIA/query" (api_key: sandbox-key)
    sb.mutate("reprocess", series=uid)   # see Archive.mutate for every operation
    sb.stats(); sb.reset_stats(); sb.stop()

Data are real DICOM instances built from pydicom's test files; the state model, endpoints
and MD5 hierarchy follow the research notes (``tcia_idc.md`` §1, ``tcia_idc_changes.md`` §1).
"""

from mirror.sources.tcia.sandbox.api import V3_API_KEY
from mirror.sources.tcia.sandbox.data import Archive
from mirror.sources.tcia.sandbox.server import (
    HOSTILE_CASES,
    TciaSandbox,
    main,
    make_sandbox,
    start,
)

__all__ = ["HOSTILE_CASES", "V3_API_KEY", "Archive", "TciaSandbox", "main", "make_sandbox",
           "start"]
