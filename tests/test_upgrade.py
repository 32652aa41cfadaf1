"""A mirror made by the previous release upgrades in place, with no download.

The previous release (the last commit before the engine became archive-neutral) is taken
from this repository's own history and run as it was; the current code then re-syncs the
same root: the index migrates, ``mirror.json`` names the source by its new name, and the
re-sync costs what a no-op re-sync costs, downloading nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from mirror.config import load_config
from mirror.sources.isic_v1.sandbox import serve
from mirror.verify import verify_mirror
from tests.reliability.helpers import REPO, child_env, run_mirror

PREVIOUS_RELEASE = "e900d70"  # main before the source seam (session 4's landing)


@pytest.fixture(scope="module")
def previous_release(tmp_path_factory) -> Path:
    """The previous release's package, laid out so ``python -m mirror`` runs it."""
    folder = tmp_path_factory.mktemp("previous")
    archive = subprocess.run(["git", "-C", str(REPO), "archive", PREVIOUS_RELEASE, "mirror",
                              "migrations"], capture_output=True)
    assert archive.returncode == 0, archive.stderr.decode()  # CI clones with history
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive.stdout, check=True)
    shutil.move(str(folder / "migrations"), str(folder / "mirror" / "migrations"))
    return folder


def _run_old(previous_release: Path, *args: str) -> subprocess.CompletedProcess:
    """``mirror ARGS --quiet --json`` as the previous release. ``-S`` skips site's ``.pth``
    files (the editable install's finder would import this checkout), so the dependencies'
    folders are named; the working folder is the old package's, not this checkout."""
    env = child_env()
    env["PYTHONPATH"] = os.pathsep.join([str(previous_release),
                                         sysconfig.get_paths()["purelib"],
                                         sysconfig.get_paths()["platlib"]])
    return subprocess.run([sys.executable, "-S", "-m", "mirror", *args, "--quiet", "--json"],
                          env=env, cwd=previous_release, capture_output=True, text=True,
                          timeout=300)


def test_a_previous_release_mirror_upgrades_in_place(previous_release, tmp_path):
    root = tmp_path / "m"
    with serve(images=12, seed=51, private_fraction=0.0) as sb:
        old = _run_old(previous_release, "sync", "--root", str(root), "--url", sb.url)
        assert old.returncode == 0, old.stderr
        assert json.loads((root / "mirror.json").read_text())["source"] == "isic"
        noop = _run_old(previous_release, "sync", "--root", str(root), "--url", sb.url)
        assert noop.returncode == 0, noop.stderr  # what a no-op re-sync costs there
        noop_requests = json.loads(noop.stdout)["requests"]
        files_before = sorted(p.name for p in root.rglob("store/*/*"))

        new = run_mirror("sync", "--root", str(root), "--url", sb.url, "--quiet", "--json")
        assert new.returncode == 0, new.stderr
        summary = json.loads(new.stdout)
        assert summary["requests"] <= noop_requests
        assert summary["bytes"] == 0 and summary["plan"]["files"] == 0
    assert load_config(root).source == "isic-v1"
    assert json.loads((root / "mirror.json").read_text())["source"] == "isic-v1"
    assert sorted(p.name for p in root.rglob("store/*/*")) == files_before
    assert verify_mirror(root).ok
