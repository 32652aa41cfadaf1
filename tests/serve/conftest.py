"""A synced mirror and ``mirror serve`` over it, beside the sandbox it was synced from."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from mirror.sources.isic_v1.sandbox import serve
from mirror.sync import SyncOptions, sync

WORKTREE = Path(__file__).resolve().parents[2]


@contextmanager
def serving(root: Path, *args: str, log: Path | None = None) -> Iterator[str]:
    """``mirror serve --root ROOT --port 0 ARGS`` in a child; yields its base URL."""
    env = {**os.environ, "PYTHONPATH": f"{WORKTREE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    err = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115 - closed below
    child = subprocess.Popen([sys.executable, "-m", "mirror", "serve", "--root", str(root),
                              "--port", "0", *args], stdout=subprocess.PIPE, stderr=err,
                             text=True, env=env)
    try:
        url = child.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), url
        yield url
    finally:
        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=20) == 0
        if log:
            err.close()


@pytest.fixture(scope="package")
def pair(tmp_path_factory):
    """(sandbox, serve URL) for the same archive state: 14 images, a fifth private."""
    root = tmp_path_factory.mktemp("serve") / "mirror"
    state = tmp_path_factory.mktemp("state")
    old = os.environ.get("MIRROR_STATE_DIR")
    os.environ["MIRROR_STATE_DIR"] = str(state)
    try:
        with serve(images=14, seed=21, private_fraction=0.2) as sb:
            assert sync(root, sb.url, SyncOptions(workers=4)).ok
            with serving(root) as url:
                yield sb, url, root
    finally:
        if old is None:
            os.environ.pop("MIRROR_STATE_DIR", None)
        else:
            os.environ["MIRROR_STATE_DIR"] = old
