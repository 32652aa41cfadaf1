"""One writer, many readers, across processes: busy writers, waiting writers, dead holders.

Readers are separate processes using the public API (``Mirror(root).select_images``,
``img.data``, ``img.superpixels``) and re-hashing every file the index they opened names,
while a sync adds and changes images: they must never see an error or a partial file.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

import pytest

from mirror.sources.isic_v1.sandbox import serve
from tests.reliability.helpers import (
    child_env,
    consistency_problems,
    kill_when,
    run_mirror,
    start_sync,
)

pytestmark = pytest.mark.timeout(180)

READER = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from sqlalchemy import select
    from mirror.api import Mirror
    from mirror.index import Blob
    root, stop = sys.argv[1], Path(sys.argv[2])
    done = {"rounds": 0, "images": 0, "files": 0, "errors": []}
    while not stop.exists() or done["rounds"] == 0:
        try:
            with Mirror(root) as m:
                for img in m.select_images([["meta.clinical.age_approx", ">=", 0]]):
                    assert img.data.ndim == 3 and img.data.shape[:2] == img.shape
                    assert img.superpixels["idx"].shape == img.shape
                    done["images"] += 1
                for path, sha in m._all(select(Blob.path, Blob.sha256)):
                    assert m.store.hash(path)[0] == sha, f"partial {path}"
                    done["files"] += 1
            done["rounds"] += 1
        except Exception as exc:
            done["errors"].append(f"{type(exc).__name__}: {exc}")
            if len(done["errors"]) > 20:
                break
    print(json.dumps(done))
""")


@pytest.fixture()
def mirrored(tmp_path):
    root = tmp_path / "m"
    with serve(images=10, seed=51, private_fraction=0.0, latency=0.01) as sb:
        done = run_mirror("sync", "--root", str(root), "--url", sb.url, "--quiet")
        assert done.returncode == 0, done.stderr
        yield root, sb


def _wait_for_holder(root, child, timeout=60.0) -> None:
    holder = root / "isic" / "locks" / "writer.json"
    deadline = time.monotonic() + timeout
    while not holder.exists():
        assert child.poll() is None and time.monotonic() < deadline, "the sync never held it"
        time.sleep(0.01)


def test_second_sync_is_refused_naming_the_holder_then_waits(mirrored):
    root, sb = mirrored
    sb.mutate(add=12)
    first = start_sync(root, None, "--workers", "1")
    _wait_for_holder(root, first)
    busy = run_mirror("sync", "--root", str(root), "--quiet")
    waiting = start_sync(root, None, "--wait", "-1")
    assert first.wait(120) == 0, first.stderr.read()
    assert waiting.wait(120) == 0, waiting.stderr.read()
    assert busy.returncode == 2
    assert busy.stderr.strip().startswith("error: ")
    assert f"is being written by pid {first.pid} on host" in busy.stderr
    assert "(mirror sync)" in busy.stderr and "--wait" in busy.stderr
    assert len(busy.stderr.strip().splitlines()) == 1  # one clear line, no traceback
    assert consistency_problems(root) == []


def test_lease_of_a_killed_sync_is_recovered_at_once(mirrored):
    root, sb = mirrored
    sb.mutate(add=12)
    holder = start_sync(root, None, "--workers", "1")
    _wait_for_holder(root, holder)
    assert kill_when(holder, lambda: True)
    started = time.monotonic()
    again = run_mirror("sync", "--root", str(root), "--quiet")
    assert again.returncode == 0, again.stderr
    assert time.monotonic() - started < 60  # not the 120 s remote lease expiry
    assert not (root / "isic" / "locks" / "writer.json").exists()
    assert consistency_problems(root) == []


def test_eight_readers_during_a_sync_never_see_an_error_or_partial_file(mirrored, tmp_path):
    root, sb = mirrored
    sb.mutate(add=8, update=3)
    stop = tmp_path / "stop"
    readers = [subprocess.Popen([sys.executable, "-c", READER, str(root), str(stop)],
                                env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True) for _ in range(8)]
    try:
        writer = start_sync(root, None, "--workers", "2")
        assert writer.wait(120) == 0, writer.stderr.read()
    finally:
        stop.touch()
    results = []
    for reader in readers:
        out, err = reader.communicate(timeout=120)
        assert reader.returncode == 0, err
        results.append(json.loads(out))
    assert [r["errors"] for r in results] == [[]] * 8
    assert all(r["rounds"] >= 1 and r["images"] >= 10 for r in results)
    assert sum(r["files"] for r in results) > 8 * 40
    assert consistency_problems(root) == []
