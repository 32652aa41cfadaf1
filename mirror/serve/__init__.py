"""``mirror serve``: a read-only HTTP server that speaks the mirrored archive's own API.

A lab with one shared mirror points its existing scripts and clients at it by changing
only their base URL. The application (:mod:`mirror.serve.app`) is a Starlette ASGI app run
by uvicorn: many concurrent clients, ``--workers`` processes sharing one listening socket,
an access log in the common log format on stderr. Starlette and uvicorn are the ``serve``
extra and are imported only here, so other commands do not load them.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
from pathlib import Path

from mirror.errors import MirrorError


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before the URL is printed (``--port 0`` picks one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are TCP,
    # and without it every keep-alive response after the first waits ~40 ms (uvicorn writes
    # headers and body separately: Nagle's algorithm meets the client's delayed ACK)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise MirrorError(f"cannot listen on {host}:{port} ({exc.strerror}); choose another "
                          "--port or --host") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _served_titles() -> list[str]:
    """The titles of the registered sources that name a ``served`` module."""
    from mirror.sources.base import REGISTRY, source_class, spec_of

    return [spec_of(name).title for name in sorted(REGISTRY)
            if getattr(source_class(name), "served", None) is not None]


def check(root: str | Path, allow_private: bool, token_file: str | None
          ) -> tuple[str | None, str]:
    """Open the mirror once before listening: refuse a private one without
    ``--allow-private``; return the token (None without ``--token-file``) and the path the
    source's API answers under (its served module's ``API_ROOT``)."""
    import importlib

    from mirror.api import Mirror
    from mirror.serve.access import check_start, holds_private
    from mirror.sources.base import source_class

    with Mirror(root) as m:
        served = getattr(source_class(m.config.source), "served", None)
        if served is None:
            raise MirrorError(f"mirror serve does not speak {m.source.title} yet; it serves "
                              f"mirrors of {', '.join(_served_titles())}")
        private = holds_private(m)
    return (check_start(private, allow_private, token_file),
            importlib.import_module(served).API_ROOT)


def run(root: str | Path, host: str = "127.0.0.1", port: int = 8000, workers: int = 1,
        allow_private: bool = False, token_file: str | None = None) -> None:
    """Serve until SIGINT/SIGTERM. The base URL is the first line of stdout."""
    import uvicorn

    if workers < 1:
        raise MirrorError(f"--workers {workers}: give at least 1")
    root = Path(root).expanduser().resolve()
    token, api_root = check(root, allow_private, token_file)
    _access_log()
    sock = bind(host, port)
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{sock.getsockname()[1]}"
    print(url, flush=True)
    print(f"API at {url}{api_root}, browse at {url}/ ({workers} worker"
          f"{'s' if workers > 1 else ''})", flush=True)
    options = dict(log_level="warning", access_log=False, lifespan="on",
                   timeout_graceful_shutdown=5)
    _stop_quietly()
    if workers == 1:
        from mirror.serve.app import create_app

        config = uvicorn.Config(create_app(root, token), **options)
        uvicorn.Server(config).run(sockets=[sock])
        return
    from uvicorn.supervisors import Multiprocess

    os.environ["MIRROR_SERVE_CONFIG"] = json.dumps(
        {"root": str(root), "token_file": str(Path(token_file).resolve()) if token_file
         else None})
    config = uvicorn.Config("mirror.serve.app:app_from_env", factory=True, workers=workers,
                            **options)
    Multiprocess(config, sockets=[sock]).run()


def _stop_quietly() -> None:
    """SIGINT/SIGTERM stop the server cleanly (exit 0): uvicorn handles them and, when it
    has shut down, raises the signal again for the handler it found; that handler is this
    no-op, not the CLI's "interrupted" one."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: None)


def _access_log() -> None:
    logger = logging.getLogger("mirror.serve.access")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
