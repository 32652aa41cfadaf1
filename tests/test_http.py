"""The HTTP client: environment proxies honoured, requests in flight bounded."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from mirror.sources.http import HttpClient
from mirror.sources.isic_v1.sandbox import serve

DEAD_PROXY = "http://127.0.0.1:9"  # the discard port: nothing listens there


@pytest.fixture(scope="module")
def sandbox():
    with serve(images=4, seed=3, private_fraction=0.0) as sb:
        yield sb


def test_proxy_from_the_environment_is_used(sandbox, monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", DEAD_PROXY)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    client = HttpClient()
    with pytest.raises(requests.exceptions.ProxyError):
        client.get(f"{sandbox.url}/dataset")


def test_no_proxy_from_the_environment_bypasses_it(sandbox, monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", DEAD_PROXY)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    client = HttpClient()
    assert client.get(f"{sandbox.url}/dataset").status_code == 200


def test_fetching_keeps_at_most_pool_size_requests_in_flight(sandbox):
    client = HttpClient(pool_size=3)
    lock, in_flight, peak = threading.Lock(), [0], [0]

    def one(_):
        with client.fetching(f"{sandbox.url}/dataset") as response:
            with lock:
                in_flight[0] += 1
                peak[0] = max(peak[0], in_flight[0])
            time.sleep(0.02)  # the body is being read
            body = response.content
            with lock:
                in_flight[0] -= 1
        return len(body)

    with ThreadPoolExecutor(8) as pool:
        assert all(list(pool.map(one, range(24))))
    assert peak[0] == 3
    assert client.requests_made == 24


@pytest.mark.parametrize("body, problem", [
    (b'[{"_id": "a", "age": NaN}]', "NaN is not a JSON number"),
    (b'[{"_id": "a", "age": -Infinity}]', "-Infinity is not a JSON number"),
    (b'[{"_id": "a", "age": 1e400}]', "beyond the range of a float"),
    (b'[{"_id": "a", "name": "\xff"}]', "utf-8"),
])
def test_json_the_api_never_sends_is_refused(body, problem):
    """Python's json module accepts NaN, Infinity and 1e400 (as inf); the ISIC API encodes
    with allow_nan=False, and the store could not write them back, so they are invalid."""
    from mirror.sources.http import parse_json

    with pytest.raises(ValueError, match=problem):
        parse_json(body)
    assert parse_json(b'[{"age": 1e300, "n": 12345678901234567890123}]') == [
        {"age": 1e300, "n": 12345678901234567890123}]


@pytest.mark.parametrize("body, problem", [
    (b'[{"_id": "a", "age": NaN}]', "NaN is not a JSON number"),
    (b'[{"_id": "a", "age": Infinity}]', "Infinity is not a JSON number"),
    (b'[{"_id": "a", "age": -1e400}]', "beyond the range of a float"),
    (b'[{"_id": "a", "name": "\xff"}]', "utf-8"),
    (b'\xef\xbb\xbf[1]', "BOM"),
    (b'[1', "Expecting"),
])
def test_the_shared_json_parser_is_as_strict(body, problem):
    """mirror.sources.http.parse_json: the same rules, for every source."""
    from mirror.sources.http import parse_json

    with pytest.raises(ValueError, match=problem):
        parse_json(body)
    assert parse_json(b'{"n": 12345678901234567890123, "x": [1.5, null]}') == {
        "n": 12345678901234567890123, "x": [1.5, None]}
