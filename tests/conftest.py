"""Shared fixtures: every test gets its own state dir (the writer's local database)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _isolated_state(tmp_path_factory, monkeypatch):
    # The writer's live database lives on local disk outside the mirror root;
    # keep each test's copy out of the user's home.
    monkeypatch.setenv("MIRROR_STATE_DIR", str(tmp_path_factory.mktemp("state")))
    monkeypatch.delenv("MIRROR_ROOT", raising=False)
    monkeypatch.delenv("MIRROR_PASSWORD", raising=False)
