"""The read-only index engine under many threads (what ``mirror serve`` does to it)."""

from __future__ import annotations

import threading

from sqlalchemy import text

from mirror.index.database import open_reader
from mirror.sources.isic_v1.sandbox import serve
from mirror.sync import SyncOptions, sync


def test_twelve_threads_each_holding_a_connection_all_read(tmp_path):
    """SQLite's default SingletonThreadPool closed other threads' connections once more
    than five threads had one; every thread must read while the others hold theirs."""
    root = tmp_path / "m"
    with serve(images=3, seed=1, private_fraction=0.0) as sb:
        assert sync(root, sb.url, SyncOptions(blobs=frozenset())).ok
    from mirror.config import layout_for, load_config

    engine = open_reader(layout_for(root, load_config(root)))
    threads, errors, counts = 12, [], []
    barrier = threading.Barrier(threads)

    def work() -> None:
        try:
            with engine.connect() as conn:
                barrier.wait(timeout=20)  # all twelve hold a connection at once
                for _ in range(20):
                    counts.append(conn.execute(text("SELECT count(*) FROM images")).scalar())
                barrier.wait(timeout=20)
        except Exception as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(repr(exc))

    pool = [threading.Thread(target=work) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(timeout=60)
    engine.dispose()
    assert errors == []
    assert counts == [3] * (threads * 20)
