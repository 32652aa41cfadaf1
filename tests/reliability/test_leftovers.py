"""What an aborted writer leaves is reported, cleared, and never kept for good (issue 16).

A ``kill -9`` during publish left a full-size copy of the index in ``index/`` (280 MB at
100,000 images) that nothing ever removed: only store and export temps were cleaned. Every
temp now names its owner (``mirror/temps.py``); ``mirror verify`` lists a dead writer's
temps, ``--repair`` removes them, and so does the next writer.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from click.testing import CliRunner

from mirror.cli import main
from mirror.sources.isic_v1.sandbox import serve
from mirror.temps import TMP_PREFIX
from tests.reliability.helpers import child_env, consistency_problems

pytestmark = pytest.mark.timeout(120)

# A sync that kills itself (SIGKILL) right after copying the index for publishing.
KILLED_IN_PUBLISH = textwrap.dedent("""
    import os, signal, sys
    from mirror.index.database import IndexWriter
    real = IndexWriter._vacuum_into
    def vacuum(self, tmp):
        real(self, tmp)
        os.kill(os.getpid(), signal.SIGKILL)
    IndexWriter._vacuum_into = vacuum
    from mirror.cli import main
    main(["sync", "--root", sys.argv[1], "--quiet", "--blobs", "thumbnail"])
""")


def _kill_during_publish(root) -> list:
    done = subprocess.run([sys.executable, "-c", KILLED_IN_PUBLISH, str(root)],
                          env=child_env(), capture_output=True, timeout=110)
    assert done.returncode == -9, done.stderr[-2000:]
    left = sorted((root / "isic" / "index").glob(f"{TMP_PREFIX}*"))
    copies = [p for p in left if p.name.endswith(".sqlite")]
    assert copies and copies[0].stat().st_size > 10_000  # the index copy, whole
    return left


def _cli(*args: str) -> tuple[int, str]:
    done = CliRunner().invoke(main, list(args))
    return done.exit_code, done.output


@pytest.mark.parametrize("cleaner", ["verify --repair", "next sync"])
def test_an_index_copy_left_by_a_kill_during_publish_is_removed(tmp_path, cleaner):
    root = tmp_path / "m"
    with serve(images=5, seed=102, private_fraction=0.0) as sb:
        code, out = _cli("sync", "--root", str(root), "--url", sb.url, "--quiet",
                         "--blobs", "thumbnail")
        assert code == 0, out
        sb.mutate(add=2)  # something to publish
        left = _kill_during_publish(root)
        code, out = _cli("verify", "--root", str(root))
        assert code == 0, out  # the published mirror is intact
        for path in left:
            assert f"index/{path.name}" in out and "left by an aborted writer" in out
        if cleaner == "verify --repair":
            code, out = _cli("verify", "--root", str(root), "--repair")
            assert code == 0 and "all good" in out, out
            assert not any(p.exists() for p in left)
        code, out = _cli("sync", "--root", str(root), "--quiet", "--blobs", "thumbnail")
        assert code == 0, out
        assert not any(p.exists() for p in left)
        code, out = _cli("verify", "--root", str(root))
        assert code == 0 and "aborted writer" not in out, out
        assert consistency_problems(root) == []
