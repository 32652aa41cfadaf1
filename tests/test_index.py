"""Index generations: a local working database, immutable published copies, fenced publish."""

from __future__ import annotations

import os
import threading

import pytest
from sqlalchemy import func, select

from mirror.errors import MirrorError
from mirror.index import Meta
from mirror.index.database import (
    IndexFenceError,
    IndexWriter,
    current_generation,
    open_reader,
)
from mirror.layout import Layout
from mirror.sources.isic_v1.models import Dataset


def _add_datasets(writer: IndexWriter, n: int, start: int = 0) -> None:
    with writer.session() as s:
        for k in range(start, start + n):
            s.add(Dataset(id=f"{k:024x}", name=f"d{k}", doc_sha256="0" * 64, doc={"_id": k},
                          synced_at="2026-01-01T00:00:00+00:00"))


def _count(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(Dataset)).scalar_one()


@pytest.fixture
def layout(tmp_path) -> Layout:
    return Layout(tmp_path / "root")


def test_reader_without_generation_gets_a_clear_error(layout):
    with pytest.raises(MirrorError, match="no index published yet.*mirror sync"):
        open_reader(layout)


def test_publish_makes_rows_visible_and_old_readers_keep_their_generation(layout):
    writer = IndexWriter(layout)
    _add_datasets(writer, 3)
    assert writer.publish() == 1
    first = open_reader(layout)
    assert _count(first) == 3
    _add_datasets(writer, 2, start=3)
    assert writer.publish() == 2
    assert _count(open_reader(layout)) == 5
    assert _count(first) == 3  # a reader holding generation 1 is undisturbed
    assert layout.current.read_text() == "index-000002.sqlite\n"
    writer.close()


def test_working_database_never_lives_under_the_root(layout):
    writer = IndexWriter(layout)
    _add_datasets(writer, 1)
    writer.publish()
    writer.close()
    under_root = {p.name for p in layout.root.rglob("*") if p.is_file()}
    assert not any(n.endswith(("-wal", "-shm", "-journal")) or n == "work.sqlite"
                   for n in under_root)
    assert str(writer.path).startswith(os.environ["MIRROR_STATE_DIR"])


def test_published_generation_is_immutable_and_read_only(layout):
    writer = IndexWriter(layout)
    _add_datasets(writer, 2)
    writer.publish()
    writer.close()
    path = layout.generation_path(1)
    assert oct(path.stat().st_mode & 0o777) == "0o444"
    before = sorted(p.name for p in layout.index_dir.iterdir())
    engine = open_reader(layout)
    for _ in range(3):
        assert _count(engine) == 2
    engine.dispose()
    assert sorted(p.name for p in layout.index_dir.iterdir()) == before  # no -wal/-shm


def test_only_the_newest_generations_are_kept(layout):
    writer = IndexWriter(layout)
    for n in range(5):
        _add_datasets(writer, 1, start=n)
        writer.publish()
    writer.close()
    assert sorted(p.name for p in layout.index_dir.glob("index-*.sqlite")) == [
        "index-000003.sqlite", "index-000004.sqlite", "index-000005.sqlite"]


def test_fence_refuses_to_publish_over_another_writer(layout):
    writer = IndexWriter(layout)
    _add_datasets(writer, 1)
    writer.publish()
    other = layout.generation_path(2)
    other.write_bytes(layout.generation_path(1).read_bytes())
    layout.current.write_text("index-000002.sqlite\n")  # someone else published
    _add_datasets(writer, 1, start=1)
    with pytest.raises(IndexFenceError, match="another writer"):
        writer.publish()
    assert current_generation(layout) == 2
    writer.close()


def test_lost_working_database_is_seeded_from_the_last_generation(layout):
    writer = IndexWriter(layout)
    _add_datasets(writer, 4)
    writer.publish()
    writer.close()
    writer.path.unlink()
    again = IndexWriter(layout)
    assert _count(again.engine) == 4
    with again.session() as s:
        assert s.get(Meta, "generation").value == "1"
    again.close()


def test_readers_during_publishes_always_see_a_consistent_generation(layout):
    writer = IndexWriter(layout)
    _add_datasets(writer, 1)
    writer.publish()
    errors: list[str] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            try:
                engine = open_reader(layout)
                with engine.connect() as conn:
                    generation = int(conn.execute(select(Meta.value).where(
                        Meta.key == "generation")).scalar_one())
                    rows = conn.execute(select(func.count()).select_from(Dataset)).scalar_one()
                engine.dispose()
                if rows != generation:  # generation N holds exactly N rows
                    errors.append(f"generation {generation} has {rows} rows")
            except Exception as exc:  # noqa: BLE001
                errors.append(repr(exc))

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for t in threads:
        t.start()
    for n in range(1, 11):
        _add_datasets(writer, 1, start=n)
        writer.publish()
    stop.set()
    for t in threads:
        t.join()
    writer.close()
    assert errors == []


def test_working_database_of_another_mirror_is_dropped(layout):
    writer = IndexWriter(layout, mirror_id="a" * 32)
    _add_datasets(writer, 3)
    writer.close()
    same = IndexWriter(layout, mirror_id="a" * 32)  # a crash before publishing: resume
    assert _count(same.engine) == 3
    same.close()
    other = IndexWriter(layout, mirror_id="b" * 32)  # made anew at the same path
    assert _count(other.engine) == 0
    other.close()


def test_working_database_ahead_of_current_is_replaced_by_it(layout):
    writer = IndexWriter(layout)
    _add_datasets(writer, 2)
    writer.publish()
    _add_datasets(writer, 1, start=2)
    with writer.session() as s:  # as if it had published generation 2, now gone
        s.merge(Meta(key="generation", value="2"))
    writer.close()
    again = IndexWriter(layout)
    assert _count(again.engine) == 2  # the published truth, generation 1
    again.close()
