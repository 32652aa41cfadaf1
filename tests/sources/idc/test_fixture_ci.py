"""The SeaweedFS fixture fails under CI when SeaweedFS cannot start, and skips elsewhere."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import mirror

REPO_ROOT = str(Path(mirror.__file__).resolve().parents[1])  # for child processes


NEEDS_SEAWEED = "tests/sources/idc/test_s3.py::test_anonymous_requests_read_but_cannot_write"


def _run(tmp_path, ci: bool) -> subprocess.CompletedProcess:
    fake = tmp_path / "weed"
    fake.write_text("#!/bin/sh\necho 'fake weed: cannot start' >&2\nexit 1\n")
    fake.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env.update(MIRROR_WEED=str(fake), PYTHONPATH=REPO_ROOT)
    if ci:
        env["CI"] = "true"
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           NEEDS_SEAWEED], capture_output=True, text=True, env=env,
                          timeout=120, cwd=REPO_ROOT)


@pytest.mark.parametrize("ci", [True, False])
def test_seaweed_fixture_fails_in_ci_and_skips_elsewhere(tmp_path, ci):
    run = _run(tmp_path, ci)
    if ci:
        assert run.returncode != 0
        assert "SeaweedFS must start in CI" in run.stdout
    else:
        assert run.returncode == 0 and "1 skipped" in run.stdout
