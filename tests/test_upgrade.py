"""A mirror made by the previous release upgrades in place, with no download.

The previous release (the last commit before the engine became archive-neutral) is taken
from this repository's own history and run as it was; the current code then re-syncs the
same root: the index migrates, ``mirror.json`` names the source by its new name, the
re-sync downloads nothing and costs at most the one-off segmentation check docs/sync.md
states, and the next re-sync is an ordinary no-op.
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
from mirror.status import mirror_status
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
        files_before = sorted(p.name for p in root.rglob("store/*/*"))

        new = run_mirror("sync", "--root", str(root), "--url", sb.url, "--quiet", "--json")
        assert new.returncode == 0, new.stderr
        summary = json.loads(new.stdout)
        assert summary["bytes"] == 0 and summary["plan"]["files"] == 0  # nothing downloaded
        # The one-off cost docs/sync.md states: the older release kept no segmentation
        # checks, so each image's segmentation list (and its segmentations) is checked once.
        status = mirror_status(root)["objects"]
        one_off = status["image"]["current"] + status["segmentation"]["current"]
        fresh = tmp_path / "fresh"  # what a normal no-op re-sync costs this release
        assert run_mirror("sync", "--root", str(fresh), "--url", sb.url, "--quiet").returncode == 0
        noop = json.loads(run_mirror("sync", "--root", str(fresh), "--url", sb.url, "--quiet",
                                     "--json").stdout)["requests"]
        assert summary["requests"] <= noop + one_off
        again = json.loads(run_mirror("sync", "--root", str(root), "--url", sb.url, "--quiet",
                                      "--json").stdout)
        assert again["requests"] <= noop and again["bytes"] == 0  # then a normal no-op
    assert load_config(root).source == "isic-v1"
    assert json.loads((root / "mirror.json").read_text())["source"] == "isic-v1"
    assert sorted(p.name for p in root.rglob("store/*/*")) == files_before
    assert verify_mirror(root).ok
