"""A login the archive stops honouring never marks private objects removed (issue 16).

Girder (ISIC v1) and ISIC API v2 answer a request whose token expired, or that a proxy
stripped, as anonymous, not with 401: the listings simply lack every private image. Before
marking anything removed the engine asks the source to re-check its login
(``check_login``); when it no longer holds, the sync stops with one line and marks nothing.
Here the removal guard is opened wide, so the login check is the only thing that stands
between the anonymous answer and the private images' removal.
"""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from mirror.cli import main
from mirror.sources.isic_v1.sandbox import SANDBOX_LOGIN, SANDBOX_PASSWORD, serve
from mirror.sources.isic_v1.source import IsicV1Source
from mirror.sources.isic_v2.client import TOKEN_ENV
from mirror.sources.isic_v2.sandbox import SANDBOX_TOKEN, start
from mirror.sources.isic_v2.sandbox.api import TOKENS
from mirror.sources.isic_v2.source import IsicV2Source
from mirror.status import mirror_status

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(autouse=True)
def _no_guard(monkeypatch):
    monkeypatch.setenv("MIRROR_REMOVAL_MAX_FRACTION", "1")
    monkeypatch.setenv("MIRROR_REMOVAL_MIN_COUNT", "100000")
    monkeypatch.delenv(TOKEN_ENV, raising=False)


def _cli(*args: str, env: dict) -> tuple[int, str]:
    done = CliRunner().invoke(main, list(args), env=env)
    return done.exit_code, done.output


def _lose_login_after_it(monkeypatch, cls, forget) -> None:
    """The archive accepts the login, then answers every request as anonymous."""
    real = cls.login

    def login(self, username, password):
        real(self, username, password)
        forget()

    monkeypatch.setattr(cls, "login", login)


def _assert_refused(code: int, output: str, root, kind: str, current: int) -> None:
    lines = output.strip().splitlines()
    assert code == 2, output
    assert len(lines) == 1 and lines[0].startswith("error: ") and "anonymous" in lines[0]
    assert "nothing was marked removed" in lines[0]
    assert mirror_status(root)["objects"][kind] == {"current": current, "removed": 0}


def test_isic_v1_user_me_null_stops_the_removal(tmp_path, monkeypatch):
    root, env = tmp_path / "m", {"MIRROR_PASSWORD": SANDBOX_PASSWORD}
    args = ["sync", "--root", str(root), "--username", SANDBOX_LOGIN, "--quiet",
            "--blobs", "thumbnail"]
    with serve(images=12, seed=81, private_fraction=0.3) as sb:
        code, out = _cli(*args, "--url", sb.url, env=env)
        assert code == 0, out
        total = mirror_status(root)["objects"]["image"]["current"]
        sb.mutate(add=1)  # something new to fetch: the run gets as far as removals
        with monkeypatch.context() as patch:
            _lose_login_after_it(patch, IsicV1Source, sb.api.tokens.clear)
            code, out = _cli(*args, env=env)
        _assert_refused(code, out, root, "image", total)
        assert "user/me" in out and "--username and MIRROR_PASSWORD" in out
        code, out = _cli(*args, env=env)  # the login holds again: a clean sync
        assert code == 0, out
        assert mirror_status(root)["objects"]["image"] == {"current": total + 1, "removed": 0}
        code, out = _cli("verify", "--root", str(root), env=env)
        assert code == 0 and "all good" in out, out


def test_isic_v2_users_me_refused_stops_the_removal(tmp_path, monkeypatch):
    root, env = tmp_path / "m", {"MIRROR_PASSWORD": SANDBOX_TOKEN}
    args = ["sync", "--root", str(root), "--username", "me", "--quiet", "--blobs", "",
            "--what", "images"]
    with start(images=40, seed=82) as sb:
        code, out = _cli(*args, "--url", sb.url, "--source", "isic-v2", env=env)
        assert code == 0, out
        total = mirror_status(root)["objects"]["image"]["current"]
        user = TOKENS[SANDBOX_TOKEN]
        with monkeypatch.context() as patch:
            _lose_login_after_it(patch, IsicV2Source, lambda: TOKENS.pop(SANDBOX_TOKEN))
            try:
                code, out = _cli(*args, env=env)
            finally:
                TOKENS[SANDBOX_TOKEN] = user
        _assert_refused(code, out, root, "image", total)
        assert TOKEN_ENV in out
        code, out = _cli(*args, env=env)
        assert code == 0, out
        assert mirror_status(root)["objects"]["image"] == {"current": total, "removed": 0}
        code, out = _cli("verify", "--root", str(root), env=env)
        assert code == 0 and "all good" in out, out
