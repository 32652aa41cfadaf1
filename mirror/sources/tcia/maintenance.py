"""TCIA's maintenance hooks: what ``mirror status`` says beyond counts."""

from __future__ import annotations

from sqlalchemy import func, select

from mirror.index import Listing
from mirror.sources.tcia.source import ABSENT


def freshness(conn) -> dict[str, dict]:
    """``{"absent upstream": {...}}``: the series NBIA hides (re-processed, awaiting review)
    that the mirror keeps with their files, and since when the oldest is hidden."""
    count, oldest = conn.execute(select(func.count(), func.min(Listing.fetched_at))
                                 .where(Listing.key.like(ABSENT + "%"))).one()
    if not count:
        return {}
    return {"absent upstream": {
        "series": count, "oldest": oldest,
        "line": f"absent upstream: {count} series hidden by the archive (re-processed or "
                f"under review) kept with their files, the oldest since {oldest}"}}
