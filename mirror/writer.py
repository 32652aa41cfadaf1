"""One way in for maintenance commands that write: lease first, then the index writer."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from mirror.config import MirrorConfig, layout_for, load_config
from mirror.index.database import IndexWriter
from mirror.layout import Layout
from mirror.lease import WriterLease
from mirror.store import ObjectStore
from mirror.temps import clean_writer_temps


@dataclass
class Writing:
    """What a writing command works with, all under the writer lease."""

    config: MirrorConfig
    layout: Layout
    store: ObjectStore
    index: IndexWriter


@contextmanager
def writing(root: Path | str, command: str) -> Iterator[Writing]:
    """Hold the writer lease of ``root`` and an open index writer for ``command``."""
    root = Path(root)
    config = load_config(root)
    layout = layout_for(root, config)
    with WriterLease(layout, command=command):
        clean_writer_temps(layout)  # what aborted writers left (mirror/temps.py)
        index = IndexWriter(layout, config.index_url, mirror_id=config.id,
                            rebuild=command == "reindex")
        try:
            yield Writing(config, layout, ObjectStore(layout), index)
        finally:
            index.close()
