"""``--url`` is checked before anything is written: a credential in it is refused and never
stored or shown; a URL without ``http(s)://`` is one line suggesting ``https://``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mirror.config import check_archive_url, refuse_credentials_in_url
from mirror.errors import BadUrlError
from tests.reliability.helpers import child_env, run_mirror
from tests.reliability.misbehaving import misbehaving_server, send_body

SECRET = "s3cr3t-Pa55"


def _traces(folder: Path, text: str) -> list[str]:
    hits = []
    for dirpath, _, files in os.walk(folder):
        for name in files:
            path = Path(dirpath, name)
            if text.encode() in path.read_bytes():
                hits.append(str(path))
    return hits


def _one_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-2000:]
    return lines[0]


@pytest.mark.parametrize("userinfo", [f"reader:{SECRET}@", f"{SECRET}@"])
def test_a_credential_in_the_url_is_refused_and_left_nowhere(tmp_path, userinfo):
    root = tmp_path / "m"
    with misbehaving_server(send_body(b"[]")) as url:
        secret_url = url.replace("://", f"://{userinfo}")
        result = run_mirror("-vv", "sync", "--root", str(root), "--url", secret_url, "--json",
                            env=child_env())
    line = _one_line(result)
    assert result.returncode == 2
    assert "--username" in line and "MIRROR_PASSWORD" in line
    assert SECRET not in result.stdout + result.stderr
    assert not (root / "mirror.json").exists()
    assert _traces(tmp_path, SECRET) == [] and _traces(Path(os.environ["MIRROR_STATE_DIR"]),
                                                       SECRET) == []


def test_an_existing_mirror_keeps_its_url_when_a_credential_is_offered(tmp_path):
    root = tmp_path / "m"
    with misbehaving_server(send_body(b"[]")) as url:  # an empty archive: a quick sync
        first = run_mirror("sync", "--root", str(root), "--url", url, "--quiet")
        assert first.returncode == 0, first.stderr
        before = (root / "mirror.json").read_bytes()
        result = run_mirror("sync", "--root", str(root), "--quiet",
                            "--url", url.replace("://", f"://reader:{SECRET}@"))
    assert result.returncode == 2 and "MIRROR_PASSWORD" in _one_line(result)
    assert (root / "mirror.json").read_bytes() == before
    assert SECRET not in result.stdout + result.stderr
    assert _traces(root, SECRET) == []


def test_a_url_without_a_scheme_is_one_line_suggesting_https(tmp_path):
    root = tmp_path / "m"
    result = run_mirror("sync", "--root", str(root), "--url", "isic-archive.com/api/v1",
                        "--quiet")
    line = _one_line(result)
    assert result.returncode == 2
    assert "https://isic-archive.com/api/v1" in line
    assert not root.exists()


@pytest.mark.parametrize("url", ["ftp://host/api", "https://", "http://host:99999/api",
                                 "//host/api", "host:8080/api"])
def test_other_unusable_urls_are_refused(url):
    with pytest.raises(BadUrlError, match="http:// or https://"):
        check_archive_url(url)


@pytest.mark.parametrize("url", ["https://isic-archive.com/api/v1",
                                 "http://127.0.0.1:8080/api/v1?note=a@b",
                                 "https://host/api/v1/@odd-path"])
def test_ordinary_urls_pass(url):
    check_archive_url(url)


def test_credentials_without_a_scheme_are_still_refused_first():
    with pytest.raises(BadUrlError, match="MIRROR_PASSWORD") as caught:
        refuse_credentials_in_url(f"reader:{SECRET}@isic-archive.com/api/v1")
    assert SECRET not in str(caught.value)
