"""The writer lease across processes: fail fast naming the holder, recover from kill -9."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest

from mirror.errors import WriterBusyError
from mirror.layout import Layout
from mirror.lease import WriterLease, break_lease, lease_holder


def _hold(root, seconds: float) -> subprocess.Popen:
    script = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from mirror.layout import Layout
        from mirror.lease import WriterLease
        with WriterLease(Layout(Path({str(root)!r})), command="sync"):
            print("held", flush=True)
            time.sleep({seconds})
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                             env=os.environ.copy())
    assert child.stdout.readline().strip() == "held"
    return child


def test_second_writer_fails_fast_naming_the_holder(tmp_path):
    layout = Layout(tmp_path / "root")
    child = _hold(layout.root, 30)
    try:
        holder = lease_holder(layout)
        assert holder["pid"] == child.pid and holder["command"] == "sync"
        started = time.monotonic()
        with pytest.raises(WriterBusyError, match=f"pid {child.pid} on host") as err:
            with WriterLease(layout, command="gc", wait=0):
                pass
        assert time.monotonic() - started < 5
        assert "mirror lock break" in str(err.value)
    finally:
        child.kill()
        child.wait()


def test_lease_of_a_killed_holder_is_recovered_at_once(tmp_path):
    layout = Layout(tmp_path / "root")
    child = _hold(layout.root, 60)
    child.kill()
    child.wait()
    started = time.monotonic()
    with WriterLease(layout, command="sync", wait=10):
        assert lease_holder(layout)["pid"] == os.getpid()
    assert time.monotonic() - started < 5
    assert lease_holder(layout) is None


def test_waiting_writer_gets_the_lease_when_released(tmp_path):
    layout = Layout(tmp_path / "root")
    child = _hold(layout.root, 1.0)
    try:
        with WriterLease(layout, command="sync", wait=30):
            assert lease_holder(layout)["pid"] == os.getpid()
    finally:
        child.wait()


def test_break_lease_removes_a_foreign_marker(tmp_path):
    layout = Layout(tmp_path / "root")
    layout.locks.mkdir(parents=True)
    (layout.locks / "writer.lease").write_text("filelock/2\npid=1\nhost=elsewhere\n")
    (layout.locks / "writer.json").write_text('{"host": "elsewhere", "pid": 1, '
                                              '"command": "sync", "started": "t"}')
    assert lease_holder(layout)["host"] == "elsewhere"
    assert break_lease(layout) is True
    assert lease_holder(layout) is None
