"""ENOSPC in the middle of a sync: one clear line, nothing corrupted, the next run resumes.

The child process's store writer is patched to run out of space after ``allowed`` files
(a few bytes of the next one land first, as on a real full disk).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from mirror.sources.isic_v1.sandbox import serve
from tests.reliability.helpers import (
    child_env,
    consistency_problems,
    indexed,
    lost,
    published_files,
    run_mirror,
    temp_files,
)

FULL_AFTER = textwrap.dedent("""
    import errno, os, sys, threading
    from mirror.store import ObjectStore
    from mirror.cli import main
    allowed, real, count, lock = int(sys.argv[1]), ObjectStore._write_temp, [0], threading.Lock()
    real_final = ObjectStore._write_final
    def full():
        with lock:
            count[0] += 1
            return count[0] > allowed
    def write_temp(self, tmp, chunks, *args, **kwargs):
        if full():
            with open(tmp, "xb") as fh:
                fh.write(b"\\0" * 10)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp))
        return real(self, tmp, chunks, *args, **kwargs)
    def write_final(self, fd, final, data):  # documents: created at their final name
        if full():
            os.write(fd, data[:10])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), final)
        return real_final(self, fd, final, data)
    ObjectStore._write_temp, ObjectStore._write_final = write_temp, write_final
    main(sys.argv[2:])
""")


def disk_full_then_resume(root, url: str, allowed: int) -> list[str]:
    """Sync until the disk fills after ``allowed`` files, then resume; broken invariants."""
    full = subprocess.run([sys.executable, "-c", FULL_AFTER, str(allowed), "sync", "--root",
                           str(root), "--url", url, "--quiet"], env=child_env(),
                          capture_output=True, text=True, timeout=120)
    problems = []
    lines = full.stderr.strip().splitlines()
    if full.returncode != 2 or len(lines) != 1 or not lines[0].startswith("error: disk full"):
        problems.append(f"after {allowed} files: exit {full.returncode}, stderr {lines[-3:]}")
    if temp_files(root):
        problems.append(f"partial temp files left: {temp_files(root)}")
    visible = published_files(root)
    before = indexed(root) if (root / "isic" / "index" / "CURRENT").exists() else {}
    resumed = run_mirror("sync", "--root", str(root), "--url", url, "--quiet")
    if resumed.returncode:
        return problems + [f"resume: exit {resumed.returncode}: {resumed.stderr[-300:]}"]
    after = indexed(root)
    return problems + [f"lost {p}" for p in lost(visible, after) + lost(before, after)] + \
        consistency_problems(root)


@pytest.mark.parametrize("allowed", [3, 40])  # in the documents phase; among the files
def test_disk_full_mid_sync_is_one_clear_error_and_resumes(tmp_path, allowed):
    with serve(images=8, seed=71, private_fraction=0.0) as sb:
        assert disk_full_then_resume(tmp_path / "m", sb.url, allowed) == []


def test_disk_full_during_an_incremental_sync_keeps_the_published_mirror(tmp_path):
    root = tmp_path / "m"
    with serve(images=6, seed=72, private_fraction=0.0) as sb:
        assert run_mirror("sync", "--root", str(root), "--url", sb.url, "--quiet"
                          ).returncode == 0
        sb.mutate(add=6, update=2)
        assert disk_full_then_resume(root, sb.url, 10) == []
