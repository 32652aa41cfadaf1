"""The CI rule "a test that needs a server must run, never skip" holds: with ``CI`` set, a
skipped ``needs_server`` test fails the run; and ``.ci/run`` ends with ``make test`` and
passes its failure on."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.reliability.helpers import REPO

SKIPPING = '''
import pytest

@pytest.mark.needs_server
def test_wants_a_server():
    pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl) on this machine")

def test_plain_skip():
    pytest.skip("recorded data not present")

@pytest.mark.needs_server
def test_has_its_server():
    pass

@pytest.fixture(scope="module")
def server():
    pytest.skip("no server binaries")  # as tests/test_postgres.py's fixture does

@pytest.mark.needs_server
def test_skipped_by_its_fixture(server):
    pass
'''


def _run_pytest(folder: Path, **env: str) -> subprocess.CompletedProcess:
    (folder / "conftest.py").write_text("from tests.conftest import pytest_runtest_makereport"
                                        "  # noqa: F401\n")
    (folder / "test_skipping.py").write_text(SKIPPING)
    environ = {k: v for k, v in os.environ.items() if k != "CI"}
    environ.update(env, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "-o", "markers=needs_server", "-o", "addopts=", str(folder)],
                          cwd=folder, env=environ, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("ci", ["1", "true"])
def test_in_ci_a_skipped_server_test_fails_the_run(tmp_path, ci):
    result = _run_pytest(tmp_path, CI=ci)
    assert result.returncode == 1, result.stdout
    assert "1 failed, 1 passed, 1 skipped, 1 error" in result.stdout
    assert "test_wants_a_server needs a server but was skipped (no PostgreSQL" in result.stdout
    assert "test_skipped_by_its_fixture needs a server but was skipped" in result.stdout


@pytest.mark.parametrize("env", [{}, {"CI": ""}, {"CI": "false"}])
def test_outside_ci_it_is_a_skip(tmp_path, env):
    result = _run_pytest(tmp_path, **env)
    assert result.returncode == 0, result.stdout
    assert "1 passed, 3 skipped" in result.stdout


def test_the_postgres_tests_are_marked():
    import tests.test_postgres as module

    assert module.pytestmark.name == "needs_server"


@pytest.mark.parametrize("make_status", [0, 3])
def test_ci_run_ends_with_make_test_and_passes_its_status_on(tmp_path, make_status):
    """A stand-in ``make`` records how it was called; the machine's PostgreSQL (on PATH or
    under /usr/lib/postgresql) means nothing is installed."""
    if not (subprocess.run(["bash", "-c", "command -v initdb || compgen -G "
                            "'/usr/lib/postgresql/*/bin/initdb'"], capture_output=True)
            .returncode == 0):
        pytest.skip("this machine has no PostgreSQL: .ci/run would install it")
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "make").write_text(f'#!/bin/sh\necho "make $* CI=$CI" > {tmp_path}/called\n'
                               f"exit {make_status}\n")
    (fake / "make").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PATH"] = f"{fake}:{env['PATH']}"
    result = subprocess.run([str(REPO / ".ci" / "run")], env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == make_status, result.stderr
    called = (tmp_path / "called").read_text()
    assert called.startswith("make test PYTHON=python3") and called.strip().endswith("CI=1")
