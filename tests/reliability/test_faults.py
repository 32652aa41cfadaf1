"""A full sync through a faulty archive: every object arrives verified, once."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from mirror.config import layout_for, load_config
from mirror.index import Blob
from mirror.index.database import open_reader
from mirror.sources.isic_v1.models import Image
from mirror.sources.isic_v1.sandbox import serve
from mirror.sync import SyncOptions, sync
from tests.reliability.helpers import consistency_problems

FAULTS = "500=0.05,reset=0.02,truncate=0.02,429=0.02,retry_after=0.05"


def faulty_sync(root, images: int, seed: int) -> list[str]:
    """Sync through :data:`FAULTS`; every broken invariant (empty: all hold)."""
    with serve(images=images, seed=seed, private_fraction=0.0, faults=FAULTS) as sb:
        summary = sync(root, sb.url, SyncOptions(workers=4))
        expected = sorted(sb.archive.image_id(i) for i in sb.archive.listed())
    problems = [f"failed: {f}" for f in summary.failures]
    if summary.retries == 0:
        problems.append("no retries: the faults were not exercised")
    engine = open_reader(layout_for(root, load_config(root)))
    with engine.connect() as conn:
        ids = sorted(conn.scalars(select(Image.id)))
        roles = set(conn.execute(select(Blob.object_id, Blob.role)).all())
    engine.dispose()
    if ids != expected:
        problems.append(f"images {len(ids)} in the index, {len(expected)} in the archive")
    problems += [f"{i} has no {role}" for i in expected
                 for role in ("image", "thumbnail", "superpixels", "spidx")
                 if (i, role) not in roles]
    return problems + consistency_problems(root)


def test_full_sync_through_faults_is_complete_and_verified(tmp_path):
    assert faulty_sync(tmp_path / "m", images=16, seed=41) == []


@pytest.mark.slow
def test_full_sync_through_faults_at_scale(tmp_path):
    assert faulty_sync(tmp_path / "m", images=120, seed=42) == []
