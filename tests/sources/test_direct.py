"""Direct downloads (obstore) of public file URLs: taken when allowed, the same bytes and
rows as requests gives, and the same errors for the retry loop."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import obstore
import pytest
from sqlalchemy import select

from mirror.errors import MirrorError, OfflineError, TransferError, TransientHTTPError
from mirror.index import Blob
from mirror.reader import reading
from mirror.sources.direct import DIRECT_MAX_BYTES, DirectFiles
from mirror.sources.http import HttpClient
from mirror.sources.isic_v2.client import TOKEN_ENV
from mirror.sources.isic_v2.sandbox import start
from mirror.sync import SyncOptions, sync
from mirror.verify import verify_mirror

JPEG = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 40 + b"\xff\xd9"
BIG = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8192 + b"\xff\xd9"  # 2 MiB: streamed


@pytest.fixture(autouse=True)
def _anonymous(monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)


@pytest.fixture
def gets(monkeypatch):
    """The paths obstore was asked for."""
    asked: list[str] = []
    real = obstore.get

    def counted(store, path, *args, **kwargs):
        asked.append(path)
        return real(store, path, *args, **kwargs)

    monkeypatch.setattr(obstore, "get", counted)
    return asked


def _files(root) -> dict[str, bytes]:
    with reading(root) as r:
        return {path: (r.layout.base / path).read_bytes() for path, in r.conn.execute(
            select(Blob.path).where(Blob.role.in_(("image", "thumbnail"))))}


def test_public_images_come_direct_with_the_bytes_requests_would_store(tmp_path, gets,
                                                                        monkeypatch):
    with start(images=30, seed=4) as sb:
        public = [i for i in sb.archive.images.values() if i.public]
        direct = sync(tmp_path / "direct", sb.url, SyncOptions(source="isic-v2"))
        assert direct.ok, direct.failures
        taken = len(gets)
        monkeypatch.setenv("MIRROR_DIRECT_DOWNLOADS", "0")
        plain = sync(tmp_path / "plain", sb.url, SyncOptions(source="isic-v2"))
        assert plain.ok, plain.failures
    assert taken == 2 * len(public)  # each public image's full file and thumbnail
    assert len(gets) == taken  # with the setting at 0, none
    assert direct.as_dict()["requests"] == plain.as_dict()["requests"]
    ours, theirs = _files(tmp_path / "direct"), _files(tmp_path / "plain")
    assert ours == theirs and len(ours) == 2 * len(public)


def test_a_proxy_or_a_query_or_a_large_file_goes_through_requests(monkeypatch):
    accepts = DirectFiles.accepts
    assert accepts("http://h:1/images/ISIC_0000001.jpg", 1000, {}, True)
    assert not accepts("http://h:1/images/ISIC_0000001.jpg?Expires=1", 1000, {}, True)
    assert not accepts("http://u:p@h:1/images/a.jpg", 1000, {}, True)
    assert not accepts("http://h:1/images/a%20b.jpg", 1000, {}, True)
    assert not accepts("http://h:1/images/", 1000, {}, True)
    assert not accepts("http://h:1/images/a.jpg", None, {}, True)
    assert not accepts("http://h:1/images/a.jpg", DIRECT_MAX_BYTES + 1, {}, True)
    assert not accepts("https://h/images/a.jpg", 1000, {}, "/etc/custom-ca.pem")
    assert not accepts("http://h:1/images/a.jpg", 1000, {"http": "http://proxy:3128"}, True)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy:3128")
    assert not accepts("https://h/images/a.jpg", 1000, {}, True)


class _Files(BaseHTTPRequestHandler):
    """A file host that misbehaves by path."""

    hits: dict[str, int] = {}

    def do_GET(self):  # noqa: N802 - http.server's name
        _Files.hits[self.path] = _Files.hits.get(self.path, 0) + 1
        if self.path == "/missing.jpg":
            return self._send(404, b"<Error>NoSuchKey</Error>")
        if self.path == "/denied.jpg":
            return self._send(403, b"<Error>AccessDenied</Error>")
        if self.path == "/moved.jpg":  # a redirect: no credential rides on this path
            self.send_response(302)
            self.send_header("Location", "/ok.jpg")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        if self.path == "/busy.jpg":
            return self._send(503, b"slow down")
        if self.path in ("/short.jpg", "/bigshort.jpg"):  # it ends under its Content-Length
            whole = JPEG if self.path == "/short.jpg" else BIG
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(whole)))
            self.end_headers()
            self.wfile.write(whole[:len(whole) // 2])
            self.wfile.flush()
            self.close_connection = True
            return None
        return self._send(200, BIG if self.path == "/big.jpg" else JPEG, "image/jpeg")

    def _send(self, status: int, body: bytes, content_type: str = "application/xml"):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def host():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Files)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _direct() -> DirectFiles:
    return DirectFiles(connect_timeout=5, idle_timeout=5, total_timeout=10, pool=4)


def test_answers_map_to_the_errors_the_retry_loop_knows(host):
    direct = _direct()
    body = direct.get(f"{host}/ok.jpg")
    assert (body.size, body.content_type) == (len(JPEG), "image/jpeg")
    assert b"".join(bytes(c) for c in body.chunks()) == JPEG
    moved = direct.get(f"{host}/moved.jpg")  # followed, then checked like any body
    assert b"".join(bytes(c) for c in moved.chunks()) == JPEG
    with pytest.raises(MirrorError, match=r"^HTTP 404 for .*/missing\.jpg$"):
        direct.get(f"{host}/missing.jpg")
    with pytest.raises(MirrorError, match=r"^HTTP 403 for "):
        direct.get(f"{host}/denied.jpg")
    with pytest.raises(TransientHTTPError, match="HTTP 503"):
        direct.get(f"{host}/busy.jpg")
    with pytest.raises((TransferError, TransientHTTPError)):
        b"".join(bytes(c) for c in direct.get(f"{host}/short.jpg").chunks())
    direct.close()


def test_retries_are_the_callers_and_offline_refuses(host):
    http = HttpClient(attempts=3, backoff=0.01)
    _Files.hits.clear()
    assert http.direct_files(f"{host}/ok.jpg", len(JPEG)) is not None

    def fetch_busy():
        with http.slot(f"{host}/busy.jpg"):
            return http.direct_files(f"{host}/busy.jpg", 10).get(f"{host}/busy.jpg")

    with pytest.raises(MirrorError, match="gave up after 3 attempts"):
        http.retrying(fetch_busy, "busy")
    assert _Files.hits["/busy.jpg"] == 3  # obstore's own retries are off
    assert http.requests_made == 3
    offline = HttpClient(offline=True)
    with pytest.raises(OfflineError), offline.slot(f"{host}/ok.jpg"):
        pass
    http.close()


def test_bodies_cut_short_are_fetched_again_and_never_published_short(tmp_path, gets):
    """The bucket cuts a third of its answers under their Content-Length: every file
    ends up whole (verify re-hashes each), after retries the engine made."""
    with start(images=30, seed=4, faults="truncate=0.3,reset=0.1,match=/images/ISIC") as sb:
        summary = sync(tmp_path / "m", sb.url, SyncOptions(source="isic-v2", blobs=["full"]))
        public = [i for i in sb.archive.images.values() if i.public]
    assert summary.ok, summary.failures
    assert summary.as_dict()["retries"] > 0
    assert len(gets) > len(public)  # the retries went direct too
    assert verify_mirror(tmp_path / "m").ok
    assert not [p for p in (tmp_path / "m").rglob(".tmp-*")]


@pytest.mark.parametrize("name, body", [("ok", JPEG), ("big", BIG)],
                         ids=["read-whole", "streamed"])
def test_the_engine_stores_direct_bodies_whole_or_not_at_all(tmp_path, host, name, body):
    """A small body is read whole and stored after its request slot is free; a large one
    streams into the store inside its slot; cut short, neither leaves a file."""
    from mirror.layout import Layout
    from mirror.sources.base import FileTask
    from mirror.sources.isic_v2.spec import SPEC
    from mirror.store import ObjectStore
    from mirror.sync.files import FileFetcher

    class Source:
        spec = SPEC
        http = HttpClient(attempts=1)

    store = ObjectStore(Layout(tmp_path / "m", "isic-v2"))
    fetcher = FileFetcher(Source(), store, None, None, None, lambda: None)
    role = SPEC.role("image")
    good = FileTask("image", "ISIC_0000001", "image", "full", url=f"{host}/{name}.jpg",
                    size=len(body), public_url=True)
    stored, content_type = fetcher._download(good, role, {})
    assert (content_type, store.read_bytes(stored.relpath)) == ("image/jpeg", body)
    short = "short" if name == "ok" else "bigshort"
    cut = FileTask("image", "ISIC_0000002", "image", "full", url=f"{host}/{short}.jpg",
                   size=len(body), public_url=True)
    with pytest.raises((TransferError, TransientHTTPError, MirrorError)):
        fetcher._download(cut, role, {})
    left = [p.name for p in (tmp_path / "m").rglob("*") if not p.is_dir()]
    assert left == [stored.relpath.rsplit("/", 1)[1]]
    assert Source.http.requests_made == 2
