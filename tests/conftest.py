"""Shared fixtures: every test gets its own state dir (the writer's local database).

And the CI rule: "in CI a test that needs a server must run, never skip". When the
environment variable ``CI`` is set (``.ci/run`` sets it), a skip of a test marked
``needs_server`` is reported as a failure, so a CI machine without the server fails loudly
instead of passing with the tests unrun.
"""

from __future__ import annotations

import os

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    if (report.skipped and not hasattr(report, "wasxfail") and in_ci()
            and item.get_closest_marker("needs_server") is not None):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        reason = str(reason).removeprefix("Skipped: ")
        report.outcome = "failed"
        report.longrepr = (f"{item.nodeid} needs a server but was skipped ({reason}); in CI "
                           "(CI is set) that is a failure: install the server (.ci/run "
                           "installs PostgreSQL) or unset CI")
    return report


@pytest.fixture(autouse=True)
def _isolated_state(tmp_path_factory, monkeypatch):
    # The writer's live database lives on local disk outside the mirror root;
    # keep each test's copy out of the user's home.
    monkeypatch.setenv("MIRROR_STATE_DIR", str(tmp_path_factory.mktemp("state")))
    monkeypatch.delenv("MIRROR_ROOT", raising=False)
    monkeypatch.delenv("MIRROR_PASSWORD", raising=False)
