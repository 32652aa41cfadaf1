"""A logged-in sync leaves the password and the session token nowhere: not in the mirror,
not in the writer's state folder, not in -vv logs, not in --json output."""

from __future__ import annotations

import os

from mirror.sources.isic_v1.sandbox import SANDBOX_LOGIN, SANDBOX_PASSWORD, serve
from tests.reliability.helpers import child_env, run_mirror


def _files_containing(folder: str, secrets: list[bytes]) -> list[str]:
    hits = []
    for dirpath, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as fh:
                data = fh.read()
            hits += [f"{path} holds secret #{n}" for n, s in enumerate(secrets) if s in data]
    return hits


def test_password_and_token_leave_no_trace(tmp_path):
    root = tmp_path / "m"
    env = child_env(MIRROR_PASSWORD=SANDBOX_PASSWORD)
    with serve(images=6, seed=61, private_fraction=0.3) as sb:
        runs = [run_mirror("-vv", "sync", "--root", str(root), "--url", sb.url,
                           "--username", SANDBOX_LOGIN, "--json", *extra, env=env)
                for extra in ((), ("--dry-run",))]
        runs.append(run_mirror("-vv", "verify", "--root", str(root), "--json", env=env))
        tokens = sorted(sb.api.tokens)
    assert all(r.returncode == 0 for r in runs), [r.stderr[-300:] for r in runs]
    assert len(tokens) == 2  # each logged-in run got its own token
    secrets = [SANDBOX_PASSWORD.encode()] + [t.encode() for t in tokens]
    output = "".join(r.stdout + r.stderr for r in runs)
    assert "DEBUG" in output and '"ok": true' in output  # logs and JSON were captured
    assert [s for s in secrets if s.decode() in output] == []
    assert _files_containing(str(root), secrets) == []
    assert _files_containing(os.environ["MIRROR_STATE_DIR"], secrets) == []
