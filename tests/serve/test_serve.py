"""``mirror serve``: files (ETag, 304, Range), read-only, private refusal, the access log,
and the ISIC docs' own Python samples run against it."""

from __future__ import annotations

import csv
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import requests

from mirror.sources.isic_v1.sandbox import SANDBOX_LOGIN, SANDBOX_PASSWORD, serve
from mirror.sync import SyncOptions, sync
from tests.serve.conftest import WORKTREE, serving


def first_image(url: str) -> dict:
    return requests.get(f"{url}/api/v1/image", params={"limit": 1, "detail": "true"},
                        timeout=30).json()[0]


# -- files ------------------------------------------------------------------------------------

def test_files_carry_their_sha256_as_etag_and_answer_304(pair):
    _, url, _ = pair
    image = first_image(url)
    r = requests.get(f"{url}/api/v1/image/{image['_id']}/download", timeout=30)
    etag = r.headers["ETag"]
    assert etag == f'"{hashlib.sha256(r.content).hexdigest()}"'
    assert r.headers["Cache-Control"] == "no-cache"  # the URL is not versioned: revalidate
    again = requests.get(f"{url}/api/v1/image/{image['_id']}/download",
                         headers={"If-None-Match": etag}, timeout=30)
    assert again.status_code == 304 and again.content == b"" and again.headers["ETag"] == etag
    other = requests.get(f"{url}/api/v1/image/{image['_id']}/download",
                         headers={"If-None-Match": '"abc", W/' + etag}, timeout=30)
    assert other.status_code == 304
    stale = requests.get(f"{url}/api/v1/image/{image['_id']}/download",
                         headers={"If-None-Match": '"0000"'}, timeout=30)
    assert stale.status_code == 200 and stale.content == r.content


def test_range_requests_206_and_416(pair):
    _, url, _ = pair
    image = first_image(url)
    path = f"{url}/api/v1/image/{image['_id']}/download"
    whole = requests.get(path, timeout=30).content
    part = requests.get(path, headers={"Range": "bytes=100-199"}, timeout=30)
    assert part.status_code == 206 and part.content == whole[100:200]
    assert part.headers["Content-Range"] == f"bytes 100-199/{len(whole)}"
    tail = requests.get(path, headers={"Range": "bytes=-50"}, timeout=30)
    assert tail.status_code == 206 and tail.content == whole[-50:]
    beyond = requests.get(path, headers={"Range": f"bytes={len(whole) + 10}-"}, timeout=30)
    assert beyond.status_code == 416
    assert beyond.headers["Content-Range"] == f"bytes */{len(whole)}"


def test_content_addressed_blobs_are_immutable(pair):
    _, url, _ = pair
    image = first_image(url)
    data = requests.get(f"{url}/api/v1/image/{image['_id']}/superpixels", timeout=30).content
    sha = hashlib.sha256(data).hexdigest()
    blob = requests.get(f"{url}/blob/{sha}", timeout=30)
    assert blob.status_code == 200 and blob.content == data
    assert blob.headers["Content-Type"] == "image/png"
    assert blob.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    assert requests.get(f"{url}/blob/{'0' * 64}", timeout=30).status_code == 404


def test_serving_writes_nothing_under_the_root(pair):
    _, url, root = pair

    def tree() -> dict:
        return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}

    before = tree()
    image = first_image(url)
    for path in ("image?limit=0&detail=true", f"image/{image['_id']}/download", "study"):
        requests.get(f"{url}/api/v1/{path}", timeout=30)
    requests.get(f"{url}/", params={"field": "name", "op": "~", "value": "ISIC"}, timeout=30)
    assert tree() == before


# -- private mirrors -----------------------------------------------------------------------

def test_a_private_mirror_refuses_to_start_then_serves_only_token_holders(tmp_path):
    root = tmp_path / "private"
    with serve(images=6, seed=8, private_fraction=0.5) as sb:
        assert sync(root, sb.url, SyncOptions(blobs=frozenset({"thumbnail"})),
                    username=SANDBOX_LOGIN, password=SANDBOX_PASSWORD).ok
        login = requests.get(f"{sb.url}/user/authentication",
                             auth=(SANDBOX_LOGIN, SANDBOX_PASSWORD), timeout=30).json()
        everything = requests.get(f"{sb.url}/image", params={"limit": 0}, timeout=30,
                                  headers={"Girder-Token": login["authToken"]["token"]}).json()
    env = {**os.environ, "PYTHONPATH": str(WORKTREE)}
    refused = subprocess.run([sys.executable, "-m", "mirror", "serve", "--root", str(root),
                              "--port", "0"], capture_output=True, text=True, env=env,
                             timeout=60)
    assert refused.returncode == 2 and refused.stdout == ""
    assert "non-public" in refused.stderr and "--allow-private --token-file" in refused.stderr
    assert "Traceback" not in refused.stderr
    no_file = subprocess.run([sys.executable, "-m", "mirror", "serve", "--root", str(root),
                              "--port", "0", "--allow-private"], capture_output=True,
                             text=True, env=env, timeout=60)
    assert no_file.returncode == 2 and "needs --token-file" in no_file.stderr
    token = "t0k3n-" + "a1b2c3d4" * 4
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o644)
    loose = subprocess.run([sys.executable, "-m", "mirror", "serve", "--root", str(root),
                            "--port", "0", "--allow-private", "--token-file", str(token_file)],
                           capture_output=True, text=True, env=env, timeout=60)
    assert loose.returncode == 2 and "chmod 600" in loose.stderr
    token_file.chmod(0o600)
    log = tmp_path / "access.log"
    with serving(root, "--allow-private", "--token-file", str(token_file), log=log) as url:
        anonymous = requests.get(f"{url}/api/v1/image", params={"limit": 0}, timeout=30)
        bearer = {"Authorization": f"Bearer {token}"}
        holder = requests.get(f"{url}/api/v1/image", params={"limit": 0}, headers=bearer,
                              timeout=30)
        wrong = requests.get(f"{url}/api/v1/image", params={"limit": 0},
                             headers={"Authorization": "Bearer " + "x" * 30}, timeout=30)
        private_id = everything[0]["_id"]
        denied = requests.get(f"{url}/api/v1/image/{private_id}", timeout=30)
        as_param = requests.get(f"{url}/api/v1/image/{private_id}", params={"token": token},
                                timeout=30)
        page = requests.get(f"{url}/", timeout=30)
        thumb = requests.get(f"{url}/api/v1/image/{private_id}/thumbnail", headers=bearer,
                             timeout=30)
        blob = requests.get(f"{url}/blob/{hashlib.sha256(thumb.content).hexdigest()}",
                            timeout=30)
    assert anonymous.json() == [] and wrong.json() == []
    assert {i["_id"] for i in holder.json()} == {i["_id"] for i in everything}
    assert denied.status_code == 401 and denied.json()["type"] == "access"
    assert as_param.status_code == 200 and as_param.json()["_id"] == private_id
    assert page.status_code == 401 and blob.status_code == 401
    written = log.read_text()
    assert token not in written  # the token in a query string is redacted
    assert f'"GET /api/v1/image/{private_id}?token=- HTTP/1.1" 200' in written


def test_access_log_is_in_common_log_format(pair, tmp_path):
    _, _, root = pair
    log = tmp_path / "access.log"
    with serving(root, log=log) as url:
        size = len(requests.get(f"{url}/api/v1/study", timeout=30).content)
        requests.get(f"{url}/api/v1/image/{'0' * 24}", timeout=30)
    lines = log.read_text().splitlines()
    import re

    clf = re.compile(r'^127\.0\.0\.1 - - \[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d \+0000\] '
                     r'"GET (\S+) HTTP/1\.1" (\d{3}) (\d+|-)$')
    parsed = [clf.match(line).groups() for line in lines]
    assert ("/api/v1/study", "200", str(size)) in parsed
    assert (f"/api/v1/image/{'0' * 24}", "400", parsed[-1][2]) in parsed


# -- the ISIC docs' Python samples ------------------------------------------------------------

class IsicApi:
    """The docs' ``ISICApi`` (scripts/isic_api.py) as its samples use it, in Python 3: the
    base URL is ``<hostname>/api/v1``; ``get`` sends ``Girder-Token`` once logged in. The
    samples use it without a login for public data."""

    def __init__(self, hostname: str):
        self.base = f"{hostname}/api/v1"

    def get(self, endpoint: str) -> requests.Response:
        return requests.get(f"{self.base}/{endpoint}", timeout=60)

    def getJson(self, endpoint: str):  # noqa: N802 - the docs' name
        return self.get(endpoint).json()


def run_samples(hostname: str, out: Path) -> None:
    """The docs' samples, ported: metadata CSV, image download, superpixels, segmentation
    masks, a study's images as CSV. Only the Python 3 changes (``keys()`` for
    ``viewkeys()``, text CSV) and one fix: the mask sample names files after
    ``segmentation['name']``, which the API's segmentation list does not carry; the
    port uses ``_id``."""
    api = IsicApi(hostname)
    out.mkdir(parents=True)
    image_list = api.getJson("image?limit=100&offset=0&sort=name")
    details = [api.getJson(f"image/{image['_id']}") for image in image_list]
    fields = ["isic_id"] + sorted({f for d in details for f in d["meta"]["clinical"].keys()})
    with open(out / "imagedata.csv", "w", newline="") as stream:
        writer = csv.DictWriter(stream, fields)
        writer.writeheader()
        for detail in details:
            writer.writerow({**detail["meta"]["clinical"], "isic_id": detail["name"]})
    for image in image_list:
        for route, name in (("download", f"{image['name']}.jpg"),
                            ("superpixels", f"{image['name']}_superpixels.jpg")):
            response = api.get(f"image/{image['_id']}/{route}")
            response.raise_for_status()
            with open(out / name, "wb") as stream:
                for chunk in response:
                    stream.write(chunk)
    image_id = image_list[0]["_id"]
    for segmentation in api.getJson(f"segmentation?imageId={image_id}"):
        response = api.get(f"segmentation/{segmentation['_id']}/mask")
        response.raise_for_status()
        (out / f"{segmentation['_id']}_segmentationMask.jpg").write_bytes(response.content)
    studies = api.getJson("study?limit=50&state=complete")
    study = api.getJson(f"study/{studies[0]['_id']}")
    with open(out / "studyDataImages.csv", "w", newline="") as stream:
        writer = csv.DictWriter(stream, ["_id", "name", "updated"])
        writer.writeheader()
        writer.writerows(study["images"])


def test_the_docs_python_samples_make_the_same_files_against_serve(pair, tmp_path):
    sb, url, _ = pair
    run_samples(sb.root_url, tmp_path / "sandbox")
    run_samples(url, tmp_path / "serve")

    def files(folder: Path) -> dict[str, str]:
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}

    made = files(tmp_path / "sandbox")
    assert len(made) > 20 and "imagedata.csv" in made and "studyDataImages.csv" in made
    assert files(tmp_path / "serve") == made


def test_the_listening_socket_says_it_is_tcp_so_asyncio_sets_nodelay():
    """asyncio turns Nagle off (TCP_NODELAY) only for sockets whose protocol is
    IPPROTO_TCP; a socket made with protocol 0 made every keep-alive response after the
    first wait for the client's delayed ACK (~40 ms)."""
    import socket

    from mirror.serve import bind

    sock = bind("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP
        client = socket.create_connection(sock.getsockname())
        accepted, _ = sock.accept()
        from asyncio import base_events

        base_events._set_nodelay(accepted)  # what asyncio does to each accepted socket
        assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        accepted.close()
        client.close()
    finally:
        sock.close()


def test_workers_share_one_socket_and_stop_cleanly(pair):
    sb, _, root = pair
    with serving(root, "--workers", "2") as url:  # the exit code 0 is checked on leaving
        expected = requests.get(f"{sb.url}/image", params={"limit": 0}, timeout=30).content
        session, bodies = requests.Session(), []
        for _ in range(60):  # workers start in their own processes: wait for them
            try:
                bodies.append(session.get(f"{url}/api/v1/image", params={"limit": 0},
                                          timeout=30).content)
            except (requests.ConnectionError, requests.Timeout):  # a loaded machine
                import time

                time.sleep(0.2)
            if len(bodies) >= 10:
                break
    assert bodies and all(b == expected for b in bodies)


def test_serve_follows_the_generation_a_sync_publishes(tmp_path):
    root = tmp_path / "follow"
    with serve(images=4, seed=12, private_fraction=0.0) as sb:
        assert sync(root, sb.url, SyncOptions(blobs=frozenset({"thumbnail"}))).ok
        with serving(root) as url:
            session = requests.Session()
            before = session.get(f"{url}/api/v1/image", params={"limit": 0}, timeout=30).json()
            added = sb.mutate(add=3)["added"]
            assert sync(root, sb.url, SyncOptions(blobs=frozenset({"thumbnail"}))).ok
            after = session.get(f"{url}/api/v1/image", params={"limit": 0}, timeout=30)
            new = session.get(f"{url}/api/v1/image/{added[0]}/thumbnail", timeout=30)
            expected = requests.get(f"{sb.url}/image/{added[0]}/thumbnail", timeout=30)
    assert len(before) == 4
    assert {i["_id"] for i in after.json()} == {i["_id"] for i in before} | set(added)
    assert new.status_code == 200 and new.content == expected.content
