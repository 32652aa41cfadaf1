"""One way in for commands that only read: the published index, opened read-only."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Connection

from mirror.config import MirrorConfig, layout_for, load_config
from mirror.index.database import open_reader
from mirror.layout import Layout


@dataclass
class Reading:
    """What a reading command works with: no lease, no writes."""

    config: MirrorConfig
    layout: Layout
    conn: Connection


@contextmanager
def reading(root: Path | str) -> Iterator[Reading]:
    """The mirror at ``root``: its config, layout and a connection to the current index."""
    root = Path(root)
    config = load_config(root)
    layout = layout_for(root, config)
    engine = open_reader(layout, config.index_url)
    try:
        with engine.connect() as conn:
            yield Reading(config, layout, conn)
    finally:
        engine.dispose()
