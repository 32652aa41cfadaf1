"""The sandbox's IDC API v1: paging, 202 resubmits, today's 410, and its command line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

import mirror
from mirror.errors import ArchiveError
from mirror.sources.idc import sandbox as sandbox_module
from mirror.sources.idc import v1 as v1_client
from mirror.sources.idc.sandbox.api import DEPRECATED_MESSAGE

REPO_ROOT = str(Path(mirror.__file__).resolve().parents[1])  # for child processes

FIELDS = ["Collection_ID", "SeriesInstanceUID", "SOPInstanceUID", "CRDC_Instance_GUID",
          "GCS_URL"]


def _expected(sandbox, collection: str) -> list[tuple[str, str]]:
    return sorted((i.series_uid, i.sop_uid) for i in sandbox.filled.instances
                  if i.collection_id == collection)


def test_collections_need_no_auth(idc_sandbox, v1):
    answer = requests.get(idc_sandbox.v1_url + "/collections", timeout=10)
    assert answer.status_code == 200 and answer.json()["code"] == 200
    listed = {c["collection_id"]: c for c in answer.json()["collections"]}
    assert sorted(listed) == sorted(idc_sandbox.collections)
    assert listed["lung_phantom"]["image_types"] and listed["lung_phantom"]["subject_count"] >= 1


def test_manifest_pages_through_every_instance(idc_sandbox, v1):
    rows = list(v1_client.manifest(idc_sandbox.v1_url, {"collection_id": ["LUNG_PHANTOM"]},
                                   FIELDS, page_size=7))
    assert sorted((r["SeriesInstanceUID"], r["SOPInstanceUID"]) for r in rows) == \
        _expected(idc_sandbox, "lung_phantom")
    assert all(r["CRDC_Instance_GUID"].startswith("dg.4DFC/") for r in rows)
    assert all(r["GCS_URL"].startswith("gs://idc-open-data/") for r in rows)
    assert v1.stats["nextPage"] == -(-len(rows) // 7) - 1
    assert v1.stats["202"] == 0


def test_a_timed_out_page_answers_202_and_the_resubmit_returns_it(idc_sandbox, v1):
    v1.timeout_pages = {0, 2}
    rows = list(v1_client.manifest(idc_sandbox.v1_url, {"collection_id": ["lung_phantom"]},
                                   FIELDS, page_size=10))
    assert sorted((r["SeriesInstanceUID"], r["SOPInstanceUID"]) for r in rows) == \
        _expected(idc_sandbox, "lung_phantom")
    assert v1.stats["202"] == 2


def test_raw_202_carries_the_token_to_resubmit(idc_sandbox, v1):
    v1.timeout_pages = {0}
    first = requests.post(idc_sandbox.v1_url + "/cohorts/manifest/preview",
                          params={"SOPInstanceUID": "True", "_page_size": 5},
                          json={"filters": {"collection_id": ["lung_phantom"]}}, timeout=10)
    assert first.status_code == 202 and first.json()["code"] == 202
    assert "longer than the allowed time" in first.json()["message"]
    again = requests.get(idc_sandbox.v1_url + "/cohorts/manifest/nextPage",
                         params={"next_page": first.json()["next_page"], "page_size": 5},
                         timeout=10)
    assert again.status_code == 200 and again.json()["manifest"]["rowsReturned"] == 5


def test_forged_tokens_and_bad_requests_answer_400(idc_sandbox, v1):
    base = idc_sandbox.v1_url
    forged = requests.get(base + "/cohorts/manifest/nextPage",
                          params={"next_page": "eyJqb2IiOiAiMSJ9.00"}, timeout=10)
    assert forged.status_code == 400
    assert forged.json()["message"] == "Invalid next_page token eyJqb2IiOiAiMSJ9.00"
    assert requests.get(base + "/cohorts/manifest/preview", timeout=10).status_code == 405
    assert requests.get(base + "/dicomMetadata", timeout=10).status_code == 404
    no_fields = requests.post(base + "/cohorts/manifest/preview", json={}, timeout=10)
    assert no_fields.status_code == 400 and no_fields.json()["code"] == 400
    bad_filter = requests.post(base + "/cohorts/manifest/preview",
                               params={"SOPInstanceUID": "True"},
                               json={"filters": {"nonsense": ["x"]}}, timeout=10)
    assert bad_filter.json()["message"] == "Invalid filter nonsense"
    with pytest.raises(ArchiveError, match="HTTP 400: Invalid filter"):
        list(v1_client.manifest(base, {"nonsense": ["x"]}, FIELDS))


def test_switched_off_v1_answers_410_like_the_real_service(idc_sandbox, v1):
    v1.deprecated = True
    base = idc_sandbox.v1_url
    gone = requests.get(base + "/collections", timeout=10)
    assert gone.status_code == 410
    assert gone.json() == {"code": 410, "message": DEPRECATED_MESSAGE,
                           "documentation": gone.json()["documentation"]}
    assert requests.get(base + "/cohorts/manifest/nextPage", timeout=10).status_code == 410
    assert requests.post(base + "/cohorts/manifest/preview", timeout=10).status_code == 405
    assert requests.get(base + "/dicomMetadata", timeout=10).status_code == 404
    with pytest.raises(ArchiveError, match="switched off .HTTP 405.*410"):
        list(v1_client.manifest(base, {"collection_id": ["lung_phantom"]}, FIELDS))
    v1.deprecated = False
    assert requests.get(base + "/collections", timeout=10).status_code == 200


def test_main_prints_where_the_sandbox_answers(seaweed, tmp_path, monkeypatch, capsys):
    started, real_start = [], sandbox_module.start

    def start_here(*args, **kwargs):  # the session's SeaweedFS, not a second one
        sandbox = real_start(*args, **kwargs, seaweed=seaweed)
        started.append(sandbox)
        return sandbox

    monkeypatch.setattr(sandbox_module, "start", start_here)
    monkeypatch.setattr(sandbox_module, "_serve_until_signal", lambda: None)
    # another collection than the session sandbox's, whose planted faults must stay put
    code = sandbox_module.main(["--collections", "htan_tnp_sardana", "--max-instances", "1",
                                "--root", str(tmp_path)])
    lines = capsys.readouterr().out.splitlines()
    assert code == 0
    sandbox = started[0]
    assert lines[:3] == [f"s3: {sandbox.s3_endpoint}", f"v1: {sandbox.v1_url}",
                         "collections: htan_tnp_sardana"]
    assert sandbox._stopped and seaweed.running()  # stopped its own parts only


def test_main_refuses_an_unknown_collection_in_one_line(capsys):
    assert sandbox_module.main(["--collections", "lung_phantomm"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "lung_phantom" in err and "\n" not in err


@pytest.mark.slow
def test_the_sandbox_command_runs_and_stops_on_sigterm(tmp_path):
    env = dict(os.environ, PYTHONPATH=REPO_ROOT)
    process = subprocess.Popen(
        [sys.executable, "-m", "mirror.sources.idc.sandbox", "--collections", "lung_phantom",
         "--max-instances", "1", "--root", str(tmp_path)],
        stdout=subprocess.PIPE, text=True, env=env)
    try:
        lines = [process.stdout.readline().strip() for _ in range(3)]
        assert lines[0].startswith("s3: http://127.0.0.1:")
        assert lines[1].startswith("v1: http://127.0.0.1:") and lines[1].endswith("/v1")
        assert lines[2] == "collections: lung_phantom"
        url = lines[1].split(" ", 1)[1]
        assert requests.get(url + "/collections", timeout=10).status_code == 200
    finally:
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
        assert time.monotonic() - started < 40


@pytest.mark.slow
def test_a_sigterm_while_starting_leaves_no_weed_behind(tmp_path):
    env = dict(os.environ, PYTHONPATH=REPO_ROOT)
    process = subprocess.Popen(
        [sys.executable, "-m", "mirror.sources.idc.sandbox", "--collections", "lung_phantom",
         "--root", str(tmp_path)], stdout=subprocess.DEVNULL, env=env)
    log = tmp_path / "seaweed" / "weed-0.log"
    deadline = time.monotonic() + 60
    while not log.exists() and time.monotonic() < deadline:  # weed has been spawned
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0
    weeds = subprocess.run(["pgrep", "-f", f"weed server -dir={tmp_path}"],
                           capture_output=True, text=True)
    assert weeds.stdout == ""
