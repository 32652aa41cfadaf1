"""One SeaweedFS and one filled IDC sandbox per test session, stopped by pid at the end.

SeaweedFS takes seconds to start and ~15 s to stop gracefully, so every IDC test shares one.
When ``CI`` is set and SeaweedFS cannot start, the tests that need it fail rather than skip:
CI must never pass by running nothing.
"""

from __future__ import annotations

import os

import pytest

from mirror.errors import SandboxError
from mirror.sources.idc import sandbox as idc_sandbox_module
from mirror.sources.idc.sandbox.fill import HOSTILE
from mirror.sources.idc.sandbox.seaweed import start_seaweed

SANDBOX_COLLECTIONS = ["lung_phantom", "nsclc_radiomics_interobserver1"]  # two buckets
TEST_STOP_GRACE = 5.0  # the data is throwaway: SIGKILL sooner than the default 20 s


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory):
    try:
        server = start_seaweed(tmp_path_factory.mktemp("seaweed"))
    except SandboxError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"SeaweedFS must start in CI: {exc}")
        pytest.skip(f"SeaweedFS is not available here: {exc}")
    yield server
    server.stop(grace=TEST_STOP_GRACE)
    assert not server.running()


@pytest.fixture(scope="session")
def idc_sandbox(seaweed, tmp_path_factory):
    sandbox = idc_sandbox_module.start(SANDBOX_COLLECTIONS, tmp_path_factory.mktemp("idc"),
                                       max_instances=2, hostile=HOSTILE, seaweed=seaweed)
    yield sandbox
    sandbox.stop()


@pytest.fixture
def v1(idc_sandbox):
    """The sandbox's v1 switches, reset after each test."""
    state = idc_sandbox.v1
    yield state
    state.deprecated = False
    state.timeout_pages = set()
    state.stats.clear()
