"""Who may read what, and what ``mirror serve`` writes down about it.

A mirror synced with a login holds objects the archive shows only to that login. Serving
them to a whole network by accident would undo the archive's access control, so the
server refuses to start on such a mirror unless ``--allow-private`` is given, and then
shows them only to requests carrying the token of ``--token-file``. The access log is in
the common log format; a token in a query string is never written to it.
"""

from __future__ import annotations

import importlib
import logging
import re
import stat
import time
from pathlib import Path
from typing import Any

from mirror.errors import PrivateMirrorError

log = logging.getLogger("mirror.serve.access")
TOKEN_PARAM = re.compile(r"((?:^|[?&])token=)[^&\s]*", re.IGNORECASE)


def holds_private(mirror: Any) -> bool:
    """The source's own answer (``served.holds_private``), else: synced with a login."""
    from mirror.sources.base import source_class

    module = importlib.import_module(source_class(mirror.config.source).served)
    check = getattr(module, "holds_private", None)
    return check(mirror) if check else bool(mirror.config.authenticated)


def read_token(path: Path) -> str:
    """The bearer token in ``path``: one line, not readable by others (it is a password)."""
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise PrivateMirrorError(f"cannot read the token file {path} ({exc}); give a file "
                                 "holding one token line") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise PrivateMirrorError(f"the token file {path} can be read by others; run "
                                 f"'chmod 600 {path}'")
    if not text or len(text.split()) != 1 or len(text) < 16:
        raise PrivateMirrorError(f"the token file {path} must hold one token of at least 16 "
                                 "characters and no spaces (e.g. 'openssl rand -hex 32')")
    return text


def check_start(private: bool, allow_private: bool, token_file: str | None) -> str | None:
    """Refuse a private mirror without ``--allow-private``; the token (or None) to use."""
    if private and not allow_private:
        raise PrivateMirrorError(
            "this mirror holds non-public objects (it was synced with a login); serving them "
            "needs --allow-private --token-file FILE, and then only requests with that "
            "token see them")
    if allow_private and not token_file:
        raise PrivateMirrorError("--allow-private needs --token-file FILE (the bearer token "
                                 "that may read non-public objects)")
    return read_token(Path(token_file)) if token_file else None


class AccessLog:
    """ASGI middleware: one common-log-format line per request (bytes = body sent)."""

    def __init__(self, app: Any):
        self.app = app

    def __getattr__(self, name: str) -> Any:
        return getattr(self.app, name)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        state = {"status": 0, "bytes": 0}

        async def counting(message) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
            elif message["type"] == "http.response.body":
                state["bytes"] += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, counting)
        finally:
            log.info(clf_line(scope, state["status"] or 500, state["bytes"]))


def clf_line(scope: dict, status: int, size: int) -> str:
    """``host ident authuser [date] "request" status bytes``, the token redacted."""
    client = (scope.get("client") or ("-",))[0]
    target = scope.get("raw_path", b"").decode("latin-1") or scope.get("path", "")
    query = scope.get("query_string", b"").decode("latin-1")
    if query:
        target += "?" + TOKEN_PARAM.sub(r"\1-", query)
    request = f'{scope.get("method", "-")} {target} HTTP/{scope.get("http_version", "1.1")}'
    when = time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime())
    return f'{client} - - [{when}] "{request}" {status} {size if size else "-"}'
