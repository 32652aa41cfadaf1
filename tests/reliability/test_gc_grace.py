"""``mirror gc`` never deletes a removed object's files at once (issue 16).

A removal confirmed by mistake (a broken listing, ``--allow-removals`` typed in haste) must
cost nothing to undo: gc keeps the removed object's document and files for
``MIRROR_GC_REMOVED_GRACE_DAYS`` (default 30) and for as long as a snapshot pins them, and
``gc --dry-run`` says what it would delete and what it keeps, and why.
"""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from mirror.cli import main
from mirror.config import layout_for, load_config
from mirror.sources.isic_v1.sandbox import serve
from tests.reliability.helpers import consistency_problems, indexed

pytestmark = pytest.mark.timeout(120)


def _removed_files(root, image_id: str) -> list:
    """Files (on disk) of ``image_id``: its document versions and its file rows."""
    base = layout_for(root, load_config(root)).base
    found = [base / path for path in indexed(root) if image_id in path]
    assert found and all(p.is_file() for p in found)
    return found


def _ok(*args: str, env: dict | None = None) -> str:
    done = CliRunner().invoke(main, list(args), env=env)
    assert done.exit_code == 0, done.output[-2000:]
    return done.output


def test_removed_objects_files_wait_for_the_grace_and_for_every_pin(tmp_path):
    root = str(tmp_path / "m")
    with serve(images=8, seed=71, private_fraction=0.0) as sb:
        _ok("sync", "--root", root, "--url", sb.url, "--quiet", "--blobs", "thumbnail")
        _ok("snapshot", "create", "--root", root, "pin", "--blobs", "thumbnail")
        gone = sb.mutate(remove=1)["removed"][0]
        _ok("sync", "--root", root, "--quiet", "--blobs", "thumbnail")
        files = _removed_files(root, gone)

        # default grace (30 days): kept, and the dry run says until when
        dry = _ok("gc", "--root", root, "--dry-run")
        assert all(f"would keep {layout_rel(root, f)} (its object was removed on " in dry
                   for f in files), dry
        assert "MIRROR_GC_REMOVED_GRACE_DAYS=30" in dry
        _ok("gc", "--root", root)
        assert all(f.is_file() for f in files)

        # grace over, but a snapshot pins them: still kept, and the reason is the pin
        no_grace = {"MIRROR_GC_REMOVED_GRACE_DAYS": "0"}
        dry = _ok("gc", "--root", root, "--dry-run", env=no_grace)
        assert all(f"{layout_rel(root, f)} (pinned by a snapshot)" in dry
                   for f in files), dry
        _ok("gc", "--root", root, env=no_grace)
        assert all(f.is_file() for f in files)

        # no pin, no grace: the dry run names each file and why, deletes nothing; gc does
        _ok("snapshot", "delete", "--root", root, "pin")
        dry = _ok("gc", "--root", root, "--dry-run", env=no_grace)
        for f in files:
            assert f"would remove {layout_rel(root, f)} (" in dry
        assert "past its grace" in dry
        assert all(f.is_file() for f in files)
        _ok("gc", "--root", root, env=no_grace)
        assert not any(f.exists() for f in files)
        assert consistency_problems(tmp_path / "m") == []

        # the archive serves it again: a clean sync restores a verified mirror
        sb.archive.removed.clear()
        _ok("sync", "--root", root, "--quiet", "--blobs", "thumbnail")
        assert "all good" in _ok("verify", "--root", root)
        assert _removed_files(root, gone)


def layout_rel(root, path) -> str:
    return str(path.relative_to(layout_for(root, load_config(root)).base))
