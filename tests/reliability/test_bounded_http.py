"""Every answer is bounded in size, nesting and time, whatever the server does (issue #16).

Each case runs the real ``mirror sync`` against a loopback server that misbehaves in one
way (``tests/reliability/misbehaving.py``) and checks what a user sees: the exit code, the
one ``error:`` line naming the host, how long it took, the child's peak memory, and that
nothing was half-written. The library-level cases check what the CLI cannot reach alone
(a file download's throughput floor).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mirror.errors import (
    DeadlineExceededError,
    JsonTooDeepError,
    ResponseTooLargeError,
    SettingError,
)
from mirror.sources import http
from mirror.sources.http import HttpClient, parse_json
from tests.reliability.helpers import child_env, mirror_cmd, run_mirror
from tests.reliability.misbehaving import (
    endless_chunks,
    gzip_bomb,
    headers,
    misbehaving_server,
    self_signed,
    send_body,
    steady_body,
    trickle,
)

pytestmark = pytest.mark.timeout(120)
MiB = 1024 * 1024


# Runs a command as its own child and reports that child's peak RSS. Linux carries the
# high-water mark across fork and exec, so a child forked straight from a large pytest
# process would report the parent's size; forked from this small launcher, it is its own.
LAUNCHER = """
import os, subprocess, sys
child = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(child.pid, 0)
with open(sys.argv[1], "w") as out:
    out.write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def sync_against(url: str, root: Path, tmp_path: Path, **env: str
                 ) -> tuple[int, str, float, float]:
    """Run ``mirror sync`` to its end: (exit code, stderr, seconds, peak RSS in MiB)."""
    out, err, rss = tmp_path / "stdout", tmp_path / "stderr", tmp_path / "rss"
    started = time.monotonic()
    with open(out, "w") as stdout, open(err, "w") as stderr:
        done = subprocess.run(
            [sys.executable, "-c", LAUNCHER, str(rss),
             *mirror_cmd("sync", "--root", str(root), "--url", url, "--quiet")],
            env=child_env(**env), stdout=stdout, stderr=stderr)
    return (done.returncode, err.read_text(), time.monotonic() - started,
            int(rss.read_text()) / 1024)


def one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr[-2000:]
    return lines[0]


def no_document_stored(root: Path) -> None:
    store = root / "isic" / "store"
    assert not store.exists() or not any(p.is_file() for p in store.rglob("*"))


def test_a_gzip_bomb_fails_at_the_cap_with_bounded_memory(tmp_path):
    """2 MB on the wire, 2 GiB inflated: the sync stops at the 32 MiB cap, fast, and its
    memory never holds more than about the cap."""
    bomb = gzip_bomb(2 * 1024 * MiB)
    assert len(bomb) < 3 * MiB
    with misbehaving_server(send_body(bomb, Content_Encoding="gzip")) as url:
        code, stderr, seconds, peak = sync_against(
            url, tmp_path / "m", tmp_path, MIRROR_MAX_JSON_BYTES=str(32 * MiB))
    line = one_error_line(stderr)
    assert code == 2
    assert "127.0.0.1" in line and f"over {32 * MiB} bytes decoded" in line
    assert "MIRROR_MAX_JSON_BYTES" in line
    assert seconds < 30
    assert peak < 200, f"peak RSS {peak:.0f} MiB"  # ~80 MiB start-up + the 32 MiB cap
    no_document_stored(tmp_path / "m")


def test_a_chunked_body_that_never_ends_stops_at_the_cap(tmp_path):
    with misbehaving_server(endless_chunks()) as url:
        code, stderr, seconds, peak = sync_against(
            url, tmp_path / "m", tmp_path, MIRROR_MAX_JSON_BYTES=str(16 * MiB))
    line = one_error_line(stderr)
    assert code == 2 and f"over {16 * MiB} bytes decoded" in line
    assert seconds < 30 and peak < 250
    no_document_stored(tmp_path / "m")


def test_a_server_trickling_one_byte_a_second_fails_by_the_deadline(tmp_path):
    """Each byte arrives well inside the 60 s idle timeout, so only the overall deadline
    (2 s here, 300 s by default) ends it, with one line naming the host."""
    body = b"[]"
    reply = trickle(headers(Content_Type="application/json", Content_Length=2) + body, 1)
    with misbehaving_server(reply) as url:
        code, stderr, seconds, _ = sync_against(url, tmp_path / "m", tmp_path,
                                                MIRROR_REQUEST_DEADLINE="2")
    line = one_error_line(stderr)
    assert code == 2
    assert f"{url.split('/')[2]} did not finish answering within 2 s" in line
    assert "MIRROR_REQUEST_DEADLINE" in line
    assert seconds < 15  # 2 s deadline, not retried, plus the child's start-up


@pytest.mark.parametrize("name, value", [("MIRROR_REQUEST_DEADLINE", "soon"),
                                         ("MIRROR_MAX_JSON_BYTES", "-5"),
                                         ("MIRROR_MIN_BYTES_PER_SECOND", "0")])
def test_a_bad_bound_setting_is_one_line(tmp_path, name, value):
    with misbehaving_server(send_body(b"[]")) as url:
        code, stderr, _, _ = sync_against(url, tmp_path / "m", tmp_path, **{name: value})
    line = one_error_line(stderr)
    assert code == 2 and name in line and "positive" in line


def test_json_nested_100000_deep_is_one_archive_error():
    deep = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(JsonTooDeepError, match="nested deeper than 512 levels"):
        parse_json(deep)
    with misbehaving_server(send_body(deep)) as url:
        client = HttpClient(attempts=1)
        with pytest.raises(JsonTooDeepError) as caught:
            client.get_json(f"{url}/dataset")
    assert "\n" not in str(caught.value) and "/dataset" in str(caught.value)


def test_json_at_the_depth_limit_is_accepted_and_one_deeper_is_not():
    assert parse_json(b"[" * 512 + b"]" * 512) is not None
    # 600 levels: Python's parser manages, so only the depth check refuses it.
    with pytest.raises(JsonTooDeepError):
        parse_json(b'{"a":' * 600 + b"1" + b"}" * 600)
    # Brackets inside strings are not nesting.
    assert parse_json(b'["' + b"[" * 1000 + b'"]') == ["[" * 1000]


def test_deep_json_from_the_archive_stops_a_sync_with_one_line(tmp_path):
    with misbehaving_server(send_body(b"[" * 100_000 + b"]" * 100_000)) as url:
        code, stderr, _, _ = sync_against(url, tmp_path / "m", tmp_path)
    assert code == 2 and "nested deeper than 512" in one_error_line(stderr)


def test_a_download_below_the_throughput_floor_fails_by_its_deadline():
    """A file: 1 s, plus 1 s per 1000 bytes received; the server sends 20 bytes a second."""
    with misbehaving_server(steady_body(10_000, 20)) as url:
        client = HttpClient(attempts=1, deadline=1, min_bytes_per_second=1000)
        started = time.monotonic()
        with pytest.raises(DeadlineExceededError, match="127.0.0.1") as caught:
            with client.fetching(f"{url}/image/x/download", stream=True) as response:
                for _ in response.iter_content(4096):
                    pass
    assert time.monotonic() - started < 5
    assert "plus 1 s per 1000 bytes received" in str(caught.value)


@pytest.mark.needs_server  # openssl makes the certificate: .ci/run installs it
@pytest.mark.parametrize("reply", [
    trickle(headers(Content_Type="application/json", Content_Length=2) + b"[]", 2),
    steady_body(100_000, 20)], ids=["headers", "body"])
def test_the_deadline_holds_over_https(tmp_path, monkeypatch, reply):
    """The archive is HTTPS: the watchdog's shutdown must end a blocked TLS read too."""
    certificate = self_signed(tmp_path)
    if certificate is None:
        pytest.skip("no openssl to make a test certificate")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(certificate[0]))
    with misbehaving_server(reply, certificate) as url:
        assert url.startswith("https://")
        client = HttpClient(attempts=1, deadline=1.5, min_bytes_per_second=1000)
        started = time.monotonic()
        with pytest.raises(DeadlineExceededError, match="within 1.5 s"):
            with client.fetching(f"{url}/image/x/download", stream=True) as response:
                for _ in response.iter_content(4096):
                    pass
    assert time.monotonic() - started < 5


@pytest.mark.needs_server  # openssl, as above
def test_an_ordinary_https_answer_passes(tmp_path, monkeypatch):
    certificate = self_signed(tmp_path)
    if certificate is None:
        pytest.skip("no openssl to make a test certificate")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(certificate[0]))
    with misbehaving_server(send_body(b'[{"_id": "a"}]'), certificate) as url:
        client = HttpClient(attempts=1, deadline=1.5)
        assert [client.get_json(f"{url}/image") for _ in range(2)] == [[{"_id": "a"}]] * 2


def test_a_download_above_the_floor_may_outlast_the_base_deadline():
    """60 kB at 20 kB/s takes 3 s: longer than the 1 s base, within the floor's allowance."""
    with misbehaving_server(steady_body(60_000, 20_000)) as url:
        client = HttpClient(attempts=1, deadline=1, min_bytes_per_second=10_000)
        started = time.monotonic()
        with client.fetching(f"{url}/image/x/download", stream=True) as response:
            size = sum(len(c) for c in response.iter_content(4096))
    assert size == 60_000 and time.monotonic() - started > 2


def test_the_deadline_does_not_outlive_its_request():
    """A finished request's deadline never fires on the connection the next one reuses."""
    with misbehaving_server(send_body(b"[1]")) as url:
        client = HttpClient(attempts=1, deadline=0.5)
        for _ in range(3):
            assert client.get_json(f"{url}/dataset") == [1]
            time.sleep(0.6)


def test_defaults_and_environment(monkeypatch):
    client = HttpClient()
    assert (client.max_json_bytes, client.deadline, client.min_bytes_per_second) == (
        256 * MiB, 300.0, 16 * 1024)
    assert http.MAX_JSON_DEPTH == 512
    monkeypatch.setenv("MIRROR_MAX_JSON_BYTES", "1000")
    monkeypatch.setenv("MIRROR_REQUEST_DEADLINE", "2.5")
    monkeypatch.setenv("MIRROR_MIN_BYTES_PER_SECOND", "100")
    client = HttpClient()
    assert (client.max_json_bytes, client.deadline, client.min_bytes_per_second) == (
        1000, 2.5, 100)
    monkeypatch.setenv("MIRROR_MAX_JSON_BYTES", "1.5")
    with pytest.raises(SettingError, match="positive whole number"):
        HttpClient()


def test_a_body_over_the_cap_is_refused_in_the_library_too():
    with misbehaving_server(send_body(b"[" + b"0," * 5000 + b"0]")) as url:
        client = HttpClient(attempts=1, max_json_bytes=1000)
        with pytest.raises(ResponseTooLargeError, match="over 1000 bytes"):
            client.get_json(f"{url}/dataset")
        assert HttpClient(attempts=1).get_json(f"{url}/dataset")[-1] == 0


def test_a_stalled_file_download_is_a_reported_failure_and_the_next_run_fetches_it(tmp_path):
    """Every image download stalls 6 s before answering; with a 1 s deadline each one fails
    in about a second, the run says so, and a run against a healthy archive completes."""
    from mirror.sources.isic_v1.sandbox import serve

    root = tmp_path / "m"
    args = ["sync", "--root", str(root), "--quiet", "--blobs", "full", "--workers", "4",
            "--json"]
    with serve(images=4, seed=7, private_fraction=0.0,
               faults="slow=1.0,slow_seconds=6,match=/download") as sb:
        started = time.monotonic()
        stalled = run_mirror(*args, "--url", sb.url,
                             env=child_env(MIRROR_REQUEST_DEADLINE="1"))
        seconds = time.monotonic() - started
    assert seconds < 20, seconds
    assert stalled.returncode == 1, stalled.stderr[-2000:]
    summary = json.loads(stalled.stdout)
    assert len(summary["failures"]) == 4
    assert all("did not finish answering within 1 s" in f["error"]
               for f in summary["failures"]), summary["failures"]
    with serve(images=4, seed=7, private_fraction=0.0) as sb:
        healthy = run_mirror(*args, "--url", sb.url, "--rebase-url")  # same archive, new port
    assert healthy.returncode == 0, healthy.stderr[-2000:]
    assert json.loads(healthy.stdout)["failures"] == []
